//! `quad_scan`: a live quad-scan emittance measurement. Shots (results of `beam_image`) are
//! grouped into steps by the quad setting each carries (the readback PV's value, attached to
//! the shot); accepted shots are averaged per step with the error of their mean as the size
//! error; after every shot both planes are fitted with the thick-quad model
//! (`beamflow_optics::quad_scan`) and the view shows εn, ε, β, α at the quad entrance, BMAG,
//! a-priori and χ²-scaled error bars, the measured points and the fitted curve.
//!
//! Nothing is dropped silently: each step lists its shots, accepted shots and the reasons the
//! others were rejected, and says why it is not in the fit when it is not.
//!
//! # Measurements
//!
//! Shots are grouped only inside a *measurement*, opened and closed by a text parameter
//! (`measurement_parameter`, default `quad_scan_measurement`): a non-empty value opens a
//! measurement of that id, an empty value closes it, another id closes it and opens the new one.
//! Shots outside a measurement are counted and otherwise left alone, so the pipeline's scan (and
//! every live history) runs on across quad scans while each fit holds its own shots only.
//!
//! The rule for which shots a measurement holds: those the reducer applies between learning that
//! it opened and learning that it closed, and that were taken (the event's `created_at`, the
//! ingester's clock) after it opened. Parameters reach the reducer beside the results, not
//! inside them, and a loaded pipeline applies shots seconds after they were taken: without the
//! second condition, shots from before the quad moved (at the setting the scan started from)
//! entered the fit as a step of their own. `beamflow scan quad` opens a measurement only once the
//! quad has settled at its first value and closes it (and waits for the reducer to say so)
//! before moving the quad again. A parameter is a better channel than a write endpoint on
//! the reducer because it is versioned and recorded by the controller and reaches a reducer that
//! restarts; a new pipeline scan builds the accumulator afresh, an open measurement then opens
//! again empty.
//!
//! A closed measurement is frozen (its steps, fit, times and how it ended) and kept with the
//! previous ones, the oldest dropped beyond `keep_measurements`; the view's `fit` and `steps` are
//! the last closed measurement's, so a result PV on `quad_scan/fit/...` holds still between quad
//! scans, and `live` is the open one.

use std::collections::{BTreeMap, VecDeque};

use beamflow_optics::quad_scan::{DesignTwissXy, ScanPoint, ScanReport, ScanSetup};
use beamflow_protocol::{
    AnalysisName, ParameterDescription, ParameterType, ParameterValue, Parameters, ResultData,
    Timestamp, Value,
};
use serde::{Deserialize, Serialize};

use crate::accumulators::{AccumulatorKind, TableError, map};
use crate::dashboard::Panel;
use crate::{Accumulator, AccumulatorError};

/// Configuration of `quad_scan`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuadScanConfig {
    /// The `beam_image` analysis whose results are the shots.
    #[serde(default)]
    pub analysis: Option<AnalysisName>,
    /// Path of the quad setting (kG) in a shot, e.g. `attached/qe04` (the BACT readback).
    pub setting: String,
    /// Path of the x size (m) in a shot.
    #[serde(default = "size_x")]
    pub size_x: String,
    /// Path of the y size (m) in a shot.
    #[serde(default = "size_y")]
    pub size_y: String,
    /// Readbacks closer than this are one step, kG.
    #[serde(default = "tolerance")]
    pub tolerance_kg: f64,
    /// Accepted shots a step needs to be fitted (at least 2: the error is their spread).
    #[serde(default = "min_shots")]
    pub min_shots: u64,
    /// Total beam energy, eV.
    pub energy_ev: f64,
    /// Effective quad length, m.
    pub quad_length_m: f64,
    /// Quad exit → screen, x.
    pub rmat_x: [[f64; 2]; 2],
    /// Quad exit → screen, y.
    pub rmat_y: [[f64; 2]; 2],
    /// Design Twiss at the screen, for BMAG.
    #[serde(default)]
    pub design_twiss: Option<DesignTwissXy>,
    /// The text parameter that opens (an id) and closes (empty) a measurement.
    #[serde(default = "measurement_parameter")]
    pub measurement_parameter: String,
    /// Closed measurements kept, the oldest dropped first (at least 1).
    #[serde(default = "keep_measurements")]
    pub keep_measurements: usize,
}

impl AccumulatorKind for QuadScanConfig {
    const KIND: &str = "quad_scan";
    const SUMMARY: &str = "live quad-scan emittance: `{steps: [..], shots_without_setting, fit}` \
        (εn, β, α, BMAG, error bars per plane)";

    fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
        Ok(Box::new(QuadScan::new(self.clone())?))
    }

    /// σ² against k per plane, with the fit.
    fn panel(&self) -> Panel {
        Panel::QuadScan {}
    }

    fn analysis(&self) -> Option<&AnalysisName> {
        self.analysis.as_ref()
    }

    fn describe_parameters(&self) -> Vec<ParameterDescription> {
        vec![ParameterDescription {
            name: self.measurement_parameter.as_str().into(),
            dtype: ParameterType::Str,
            default: ParameterValue::Str(String::new()),
            description: "quad_scan: the open measurement's id (shots are fitted only inside \
                one); empty closes it, another id closes it and opens that one"
                .to_owned(),
        }]
    }

    /// The number paths it reads from shots, each with its key.
    fn result_paths(&self) -> Vec<(String, &str)> {
        [
            ("setting", &self.setting),
            ("size_x", &self.size_x),
            ("size_y", &self.size_y),
        ]
        .into_iter()
        .map(|(key, path)| (key.to_owned(), path.as_str()))
        .collect()
    }
}

fn size_x() -> String {
    "x/sigma_m".to_owned()
}
fn size_y() -> String {
    "y/sigma_m".to_owned()
}
fn tolerance() -> f64 {
    0.01
}
fn min_shots() -> u64 {
    3
}
fn measurement_parameter() -> String {
    DEFAULT_MEASUREMENT_PARAMETER.to_owned()
}
fn keep_measurements() -> usize {
    10
}

/// The parameter that opens and closes measurements unless the table names another.
pub const DEFAULT_MEASUREMENT_PARAMETER: &str = "quad_scan_measurement";

/// Running sums of one plane's accepted sizes at a step.
#[derive(Debug, Clone, Default)]
struct Sizes {
    n: u64,
    sum: f64,
    sum2: f64,
}

impl Sizes {
    fn add(&mut self, size: f64) {
        self.n += 1;
        self.sum += size;
        self.sum2 += size * size;
    }

    fn mean(&self) -> f64 {
        self.sum / self.n as f64
    }

    fn spread(&self) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        let n = self.n as f64;
        ((self.sum2 - self.sum * self.sum / n) / (n - 1.0))
            .max(0.0)
            .sqrt()
    }
}

#[derive(Debug, Clone, Default)]
struct Step {
    setting_sum: f64,
    shots: u64,
    x: Sizes,
    y: Sizes,
    rejected: BTreeMap<String, u64>,
}

impl Step {
    fn setting(&self) -> f64 {
        self.setting_sum / self.shots as f64
    }
}

/// One step as the view shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// Mean quad readback of its shots, kG.
    pub bctrl_kg: f64,
    /// Shots seen.
    pub shots: u64,
    /// Shots every gate accepted.
    pub accepted: u64,
    /// Mean accepted x size, m.
    pub size_x_m: f64,
    /// Error of that mean (spread / √n), m.
    pub error_x_m: f64,
    /// Spread of the accepted x sizes, m.
    pub spread_x_m: f64,
    /// Mean accepted y size, m.
    pub size_y_m: f64,
    /// Error of that mean, m.
    pub error_y_m: f64,
    /// Spread of the accepted y sizes, m.
    pub spread_y_m: f64,
    /// Rejected shots by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Whether it is in the fit.
    pub fitted: bool,
    /// Why not, when it is not.
    pub not_fitted: Option<String>,
}

/// Steps kept at most: beyond, a shot whose readback matches none is counted, not grouped (a
/// readback drifting for a day would otherwise make a step per shot).
const MAX_STEPS: usize = 500;

/// One measurement's shots, grouped into steps, and their fit.
#[derive(Debug, Clone, Default)]
struct Steps {
    steps: Vec<Step>,
    without_setting: u64,
    beyond_step_limit: u64,
    report: Option<ScanReport>,
}

/// How a measurement ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasurementState {
    /// Open: shots go into it.
    Running,
    /// Closed by an empty parameter.
    Finished,
    /// Closed because another measurement opened.
    Replaced,
    /// Closed because the pipeline's scan ended.
    Ended,
}

/// An open measurement.
#[derive(Debug, Clone)]
struct Measurement {
    id: String,
    started_at: Timestamp,
    steps: Steps,
}

/// One measurement as the view shows it.
#[derive(Debug, Clone, Serialize)]
struct MeasurementView<'a> {
    id: &'a str,
    state: MeasurementState,
    started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<String>,
    steps: Vec<StepView>,
    fit: Option<&'a ScanReport>,
    shots_without_setting: u64,
    shots_beyond_step_limit: u64,
}

/// A closed measurement, frozen as its view.
#[derive(Debug, Clone)]
struct Frozen {
    id: String,
    view: Value,
}

/// The `quad_scan` accumulator.
pub struct QuadScan {
    config: QuadScanConfig,
    setup: ScanSetup,
    live: Option<Measurement>,
    /// Oldest first.
    frozen: VecDeque<Frozen>,
    outside: u64,
}

impl QuadScan {
    /// Builds the accumulator; the optics must be finite and the energy and length positive.
    pub fn new(config: QuadScanConfig) -> Result<Self, TableError> {
        let key = if config.energy_ev > 0.0 {
            "quad_length_m"
        } else {
            "energy_ev"
        };
        if !(config.energy_ev > 0.0 && config.quad_length_m > 0.0) {
            return Err(TableError::new(
                key,
                "energy_ev and quad_length_m must be positive",
            ));
        }
        if !(config.tolerance_kg.is_finite() && config.tolerance_kg > 0.0) {
            return Err(TableError::new(
                "tolerance_kg",
                "tolerance_kg must be a positive number",
            ));
        }
        if config.min_shots < 2 {
            return Err(TableError::new(
                "min_shots",
                "min_shots must be at least 2: a step's size error is its spread",
            ));
        }
        if config.keep_measurements == 0 {
            return Err(TableError::new(
                "keep_measurements",
                "keep_measurements must be at least 1: the last one is the view's fit",
            ));
        }
        if config.measurement_parameter.trim().is_empty() {
            return Err(TableError::new(
                "measurement_parameter",
                "measurement_parameter must name a parameter",
            ));
        }
        let setup = ScanSetup {
            energy_ev: config.energy_ev,
            quad_length_m: config.quad_length_m,
            rmat_x: config.rmat_x,
            rmat_y: config.rmat_y,
            design_twiss: config.design_twiss,
        };
        Ok(Self {
            config,
            setup,
            live: None,
            frozen: VecDeque::new(),
            outside: 0,
        })
    }

    /// Closes the open measurement, if any, and keeps it frozen.
    fn close(&mut self, state: MeasurementState) {
        let Some(measurement) = self.live.take() else {
            return;
        };
        let view = self
            .view_of(&measurement, state, Some(Timestamp::now()))
            .unwrap_or_else(|error| Value::Text(format!("quad_scan view failed: {error}")));
        // An id measured again replaces its earlier measurement: ids name measurements.
        self.frozen.retain(|f| f.id != measurement.id);
        self.frozen.push_back(Frozen {
            id: measurement.id,
            view,
        });
        while self.frozen.len() > self.config.keep_measurements {
            self.frozen.pop_front();
        }
    }

    fn view_of(
        &self,
        measurement: &Measurement,
        state: MeasurementState,
        ended_at: Option<Timestamp>,
    ) -> Result<Value, beamflow_protocol::value::SerializeError> {
        Value::from_serialize(&MeasurementView {
            id: &measurement.id,
            state,
            started_at: measurement.started_at.to_string(),
            ended_at: ended_at.map(|t| t.to_string()),
            steps: measurement.steps.view(&self.config),
            fit: measurement.steps.report.as_ref(),
            shots_without_setting: measurement.steps.without_setting,
            shots_beyond_step_limit: measurement.steps.beyond_step_limit,
        })
    }
}

impl Steps {
    fn why_not_fitted(step: &Step, config: &QuadScanConfig) -> Option<String> {
        if step.x.n < config.min_shots {
            return Some(format!(
                "{} accepted shots of {} needed",
                step.x.n, config.min_shots
            ));
        }
        // Identical sizes give no error bar, and a zero error would weigh the point infinitely.
        (!(step.x.spread() > 0.0 && step.y.spread() > 0.0))
            .then(|| "the accepted sizes do not spread: no error bar".to_owned())
    }

    fn refit(&mut self, config: &QuadScanConfig, setup: &ScanSetup) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for step in self
            .steps
            .iter()
            .filter(|s| Self::why_not_fitted(s, config).is_none())
        {
            let point = |sizes: &Sizes| ScanPoint {
                bctrl_kg: step.setting(),
                size_m: sizes.mean(),
                error_m: sizes.spread() / (sizes.n as f64).sqrt(),
            };
            x.push(point(&step.x));
            y.push(point(&step.y));
        }
        let by_setting = |a: &ScanPoint, b: &ScanPoint| a.bctrl_kg.total_cmp(&b.bctrl_kg);
        x.sort_by(by_setting);
        y.sort_by(by_setting);
        self.report = Some(setup.report(x, y));
    }

    /// Groups one shot into its step and refits.
    fn add(
        &mut self,
        payload: &Value,
        config: &QuadScanConfig,
        setup: &ScanSetup,
    ) -> Result<(), AccumulatorError> {
        let Some(setting) = payload
            .pointer(&config.setting)
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite())
        else {
            self.without_setting += 1;
            return Err(AccumulatorError::Invalid(format!(
                "no quad setting at {:?} in the shot",
                config.setting
            )));
        };
        let tolerance = config.tolerance_kg;
        let index = match self
            .steps
            .iter()
            .position(|s| (s.setting() - setting).abs() <= tolerance)
        {
            Some(index) => index,
            None if self.steps.len() < MAX_STEPS => {
                self.steps.push(Step::default());
                self.steps.len() - 1
            }
            None => {
                self.beyond_step_limit += 1;
                return Err(AccumulatorError::Invalid(format!(
                    "{MAX_STEPS} steps already: the shot at {setting} kG is not grouped"
                )));
            }
        };
        let step = &mut self.steps[index];
        step.shots += 1;
        step.setting_sum += setting;
        let accepted = matches!(payload.pointer("accepted"), Some(Value::Bool(true)));
        let size = |path: &str| payload.pointer(path).and_then(Value::as_f64);
        match (accepted, size(&config.size_x), size(&config.size_y)) {
            (true, Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                step.x.add(x);
                step.y.add(y);
            }
            (true, _, _) => {
                *step
                    .rejected
                    .entry("accepted without finite sizes".to_owned())
                    .or_default() += 1;
            }
            (false, _, _) => {
                let reasons = match payload.pointer("rejected") {
                    Some(Value::Array(reasons)) if !reasons.is_empty() => reasons
                        .iter()
                        .map(|r| match r {
                            Value::Text(text) => reason_kind(text),
                            _ => "unknown".to_owned(),
                        })
                        .collect(),
                    _ => vec!["not accepted".to_owned()],
                };
                for reason in reasons {
                    *step.rejected.entry(reason).or_default() += 1;
                }
            }
        }
        self.refit(config, setup);
        Ok(())
    }

    fn view(&self, config: &QuadScanConfig) -> Vec<StepView> {
        self.steps
            .iter()
            .map(|step| {
                let not_fitted = Self::why_not_fitted(step, config);
                let error = |s: &Sizes| s.spread() / (s.n as f64).sqrt();
                let mean = |s: &Sizes| if s.n > 0 { s.mean() } else { f64::NAN };
                StepView {
                    bctrl_kg: step.setting(),
                    shots: step.shots,
                    accepted: step.x.n,
                    size_x_m: mean(&step.x),
                    error_x_m: error(&step.x),
                    spread_x_m: step.x.spread(),
                    size_y_m: mean(&step.y),
                    error_y_m: error(&step.y),
                    spread_y_m: step.y.spread(),
                    rejected: step.rejected.clone(),
                    fitted: not_fitted.is_none(),
                    not_fitted,
                }
            })
            .collect()
    }
}

/// What a step counts a rejected shot under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RejectionKind<'a> {
    /// One of `beam_image`'s gates, named as its `Rejection::kind` names it (the gate and its
    /// plane, without numbers), so "x: signal to noise 3.2 below 5" counts with every other x
    /// signal-to-noise rejection.
    Gate(&'static str),
    /// Another analysis's reason: its text up to the first number or parenthesis.
    Other(&'a str),
}

/// `beam_image`'s gates, as `beamflow_workers::analyses::beam_image::Rejection::kind` names
/// them; its reasons' texts start with these (the reducer reads results, not that crate).
const BEAM_IMAGE_GATES: [&str; 9] = [
    "saturated",
    "x: signal to noise",
    "y: signal to noise",
    "x: no Gaussian fits the projection",
    "y: no Gaussian fits the projection",
    "x: size",
    "y: size",
    "x: beam not fully on screen",
    "y: beam not fully on screen",
];

impl<'a> RejectionKind<'a> {
    fn of(reason: &'a str) -> Self {
        if let Some(gate) = BEAM_IMAGE_GATES
            .iter()
            .find(|gate| reason.starts_with(*gate))
        {
            return RejectionKind::Gate(gate);
        }
        let end = reason
            .find(|c: char| c.is_ascii_digit() || c == '(')
            .unwrap_or(reason.len());
        RejectionKind::Other(
            reason[..end].trim_end_matches(|c: char| c == 'σ' || c == ':' || c.is_whitespace()),
        )
    }

    fn as_str(self) -> &'a str {
        match self {
            RejectionKind::Gate(gate) => gate,
            RejectionKind::Other(text) => text,
        }
    }
}

/// The key a reason is counted under in a step's `rejected`.
fn reason_kind(reason: &str) -> String {
    RejectionKind::of(reason).as_str().to_owned()
}

impl Accumulator for QuadScan {
    fn process_result(
        &mut self,
        result: &ResultData,
        _: &Parameters,
    ) -> Result<(), AccumulatorError> {
        let Some(measurement) = self.live.as_mut() else {
            self.outside += 1;
            return Ok(());
        };
        // Taken before the measurement opened, applied after: not part of it.
        if result
            .created_at
            .is_some_and(|taken| taken < measurement.started_at)
        {
            self.outside += 1;
            return Ok(());
        }
        measurement
            .steps
            .add(&result.payload, &self.config, &self.setup)
    }

    fn parameters_changed(&mut self, parameters: &Parameters) {
        let wanted = parameters
            .str(&self.config.measurement_parameter)
            .map(str::trim)
            .unwrap_or_default();
        if self.live.as_ref().is_some_and(|m| m.id == wanted) {
            return;
        }
        if wanted.is_empty() {
            self.close(MeasurementState::Finished);
            return;
        }
        self.close(MeasurementState::Replaced);
        self.live = Some(Measurement {
            id: wanted.to_owned(),
            started_at: Timestamp::now(),
            steps: Steps::default(),
        });
    }

    fn finish(&mut self, _: &Parameters) {
        self.close(MeasurementState::Ended);
    }

    /// Each measurement's steps plot as silx draws a quad scan: the x size against the quad's
    /// setting, the y size beside it.
    fn hdf5_attributes(&self) -> Value {
        let plot = map([(
            "_attrs",
            map([
                ("NX_class", Value::from("NXdata")),
                ("signal", Value::from("size_x_m")),
                ("axes", Value::from("bctrl_kg")),
                ("auxiliary_signals", Value::Array(vec![Value::from("size_y_m")])),
            ]),
        )]);
        // Only steps that are there: no steps is an empty dataset, not a group to plot.
        let has_steps = |view: &Value| {
            matches!(view.pointer("steps"), Some(Value::Array(steps)) if !steps.is_empty())
        };
        let mut entries = BTreeMap::new();
        if self.frozen.back().is_some_and(|f| has_steps(&f.view)) {
            entries.insert("steps".to_owned(), plot.clone());
            entries.insert("_attrs".to_owned(), map([("default", Value::from("steps"))]));
        }
        let measurements: BTreeMap<String, Value> = self
            .frozen
            .iter()
            .filter(|f| has_steps(&f.view))
            .map(|f| (f.id.clone(), map([("steps", plot.clone())])))
            .collect();
        if !measurements.is_empty() {
            entries.insert("measurements".to_owned(), Value::Map(measurements));
        }
        if self.live.as_ref().is_some_and(|live| !live.steps.steps.is_empty()) {
            entries.insert("live".to_owned(), map([("steps", plot)]));
        }
        if entries.is_empty() {
            Value::Null
        } else {
            Value::Map(entries)
        }
    }

    fn publish(&self) -> Value {
        let last = self.frozen.back();
        let of_last = |key: &str| {
            last.and_then(|f| f.view.pointer(key))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let live = match &self.live {
            Some(measurement) => self
                .view_of(measurement, MeasurementState::Running, None)
                .unwrap_or_else(|error| Value::Text(format!("quad_scan view failed: {error}"))),
            None => Value::Null,
        };
        let entries = [
            (
                "measurement_parameter",
                Value::Text(self.config.measurement_parameter.clone()),
            ),
            (
                "last_measurement",
                last.map_or(Value::Null, |f| Value::Text(f.id.clone())),
            ),
            ("fit", of_last("fit")),
            (
                "steps",
                last.and_then(|f| f.view.pointer("steps"))
                    .cloned()
                    .unwrap_or(Value::Array(Vec::new())),
            ),
            ("live", live),
            (
                "measurements",
                Value::Map(
                    self.frozen
                        .iter()
                        .map(|f| (f.id.clone(), f.view.clone()))
                        .collect(),
                ),
            ),
            ("shots_outside_measurement", Value::Int(self.outside as i64)),
        ];
        Value::Map(
            entries
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use beamflow_optics::{BeamMatrix, Energy, Matrix, Plane, Twiss};
    use beamflow_protocol::EventNumber;

    use super::*;

    fn config() -> QuadScanConfig {
        toml::from_str(
            r#"
setting = "attached/qe04"
energy_ev = 135e6
quad_length_m = 0.108
rmat_x = [[1.0, 2.26], [0.0, 1.0]]
rmat_y = [[1.0, 2.26], [0.0, 1.0]]
design_twiss = { beta_x = 1.113, alpha_x = -0.069, beta_y = 1.113, alpha_y = -0.070 }
"#,
        )
        .expect("valid")
    }

    fn shot(n: u64, setting: f64, x: f64, y: f64, rejected: &[&str]) -> ResultData {
        let payload = serde_json::json!({
            "x": {"sigma_m": x}, "y": {"sigma_m": y},
            "accepted": rejected.is_empty(), "rejected": rejected,
            "attached": {"qe04": setting},
        });
        ResultData {
            event_number: EventNumber(n),
            analysis: "otr2".into(),
            worker: "w1".into(),
            created_at: None,
            payload: Arc::new(Value::from_serialize(&payload).expect("a value")),
        }
    }

    /// Exact sizes of the reference beam, with a ±0.5 % alternation between shots.
    fn sizes(bctrl: f64, shot: u64) -> (f64, f64) {
        let energy = Energy { total_ev: 135e6 };
        let size = |plane, (emit_n, beta, alpha): (f64, f64, f64)| {
            let beam = BeamMatrix::from_twiss(Twiss {
                emittance: emit_n / energy.beta_gamma(),
                beta,
                alpha,
            });
            let k = energy.quad_k(bctrl, 0.108, plane);
            beam.transport(Matrix::drift(2.26).then_after(Matrix::thick_quad(k, 0.108)))
                .rms_size()
        };
        let wobble = if shot.is_multiple_of(2) { 1.005 } else { 0.995 };
        (
            size(Plane::X, (0.5e-6, 10.0, -1.0)) * wobble,
            size(Plane::Y, (0.4e-6, 4.0, 2.5)) * wobble,
        )
    }

    #[test]
    fn steps_group_by_readback_and_the_fit_finds_the_beam() {
        let mut scan = opened("m1");
        let mut n = 0;
        for step in 1..=9 {
            let bctrl = 0.5 * f64::from(step);
            for shot in 0..4 {
                // Readback noise well inside the tolerance.
                let readback = bctrl + 0.001 * (f64::from(shot) - 1.5);
                let (x, y) = sizes(bctrl, shot as u64);
                scan.process_result(&shot_at(&mut n, readback, x, y), &Parameters::default())
                    .expect("used");
            }
        }
        // A shot while the quad ramped and a rejected shot.
        scan.process_result(&shot_at(&mut n, 1.234, 1e-4, 1e-4), &Parameters::default())
            .expect("used");
        scan.process_result(
            &shot(
                n + 1,
                2.5,
                1e-4,
                1e-4,
                &["saturated: 12 pixels at the camera maximum (4095)"],
            ),
            &Parameters::default(),
        )
        .expect("used");
        let view = serde_json::to_value(scan.publish()).expect("json");
        let view = &view["live"];
        assert_eq!(view["id"], "m1");
        assert_eq!(view["state"], "running");
        let steps = view["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 10);
        assert_eq!(steps[9]["fitted"], false);
        assert_eq!(steps[9]["not_fitted"], "1 accepted shots of 3 needed");
        assert_eq!(steps[4]["rejected"]["saturated"], 1, "{}", steps[4]);
        assert_eq!(
            (steps[4]["shots"].as_u64(), steps[4]["accepted"].as_u64()),
            (Some(5), Some(4))
        );
        let fit = &view["fit"];
        for (plane, truth) in [("x", 0.5e-6), ("y", 0.4e-6)] {
            let emit = fit[plane]["norm_emit"].as_f64().expect("fitted");
            assert!((emit - truth).abs() / truth < 0.01, "{plane}: {emit}");
            assert_eq!(fit[plane]["settings"], 9);
            assert!(
                fit[plane]["errors_chi2_scaled"]["norm_emit"]
                    .as_f64()
                    .expect("error")
                    > 0.0
            );
            assert_eq!(fit[plane]["points"].as_array().map(Vec::len), Some(9));
        }
        assert_eq!(fit["warnings"], serde_json::json!([]));
    }

    /// The parameters with the measurement parameter at `id` ("" closes).
    fn measuring(id: &str) -> Parameters {
        let value = ParameterValue::Str(id.to_owned()).to_bytes();
        Parameters::resolve([(DEFAULT_MEASUREMENT_PARAMETER.into(), value)], &[]).expect("text")
    }

    /// A scan with measurement `id` open.
    fn opened(id: &str) -> QuadScan {
        let mut scan = QuadScan::new(config()).expect("valid");
        scan.parameters_changed(&measuring(id));
        scan
    }

    fn shot_at(n: &mut u64, setting: f64, x: f64, y: f64) -> ResultData {
        *n += 1;
        shot(*n, setting, x, y, &[])
    }

    #[test]
    fn two_settings_are_too_few_and_a_shot_without_a_setting_is_an_error() {
        let mut scan = opened("m1");
        let mut n = 0;
        for bctrl in [1.0, 2.0] {
            for shot in 0..3 {
                let (x, y) = sizes(bctrl, shot);
                scan.process_result(&shot_at(&mut n, bctrl, x, y), &Parameters::default())
                    .expect("used");
            }
        }
        let view = serde_json::to_value(scan.publish()).expect("json");
        let view = &view["live"];
        let warnings = view["fit"]["warnings"].as_array().expect("warnings");
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains("at least 3"))),
            "{warnings:?}"
        );
        assert!(view["fit"]["x"]["norm_emit"].is_null());
        let mut bare = shot(99, 1.0, 1e-4, 1e-4, &[]);
        bare.payload = Arc::new(
            Value::from_serialize(&serde_json::json!({"accepted": true})).expect("a value"),
        );
        assert!(scan.process_result(&bare, &Parameters::default()).is_err());
        let view = serde_json::to_value(scan.publish()).expect("json");
        assert_eq!(view["live"]["shots_without_setting"], 1);
    }

    /// Three settings with three shots each of the reference beam, from event `*n` on.
    fn three_steps(scan: &mut QuadScan, n: &mut u64, settings: [f64; 3]) {
        for bctrl in settings {
            for shot in 0..3 {
                let (x, y) = sizes(bctrl, shot);
                scan.process_result(&shot_at(n, bctrl, x, y), &Parameters::default())
                    .expect("used");
            }
        }
    }

    #[test]
    fn shots_outside_a_measurement_are_counted_not_fitted() {
        let mut scan = QuadScan::new(config()).expect("valid");
        let mut n = 0;
        three_steps(&mut scan, &mut n, [1.0, 2.0, 3.0]);
        let view = serde_json::to_value(scan.publish()).expect("json");
        assert_eq!(view["shots_outside_measurement"], 9);
        assert_eq!(view["live"], serde_json::Value::Null);
        assert_eq!(view["fit"], serde_json::Value::Null);
        assert_eq!(view["steps"], serde_json::json!([]));
        assert_eq!(view["measurement_parameter"], "quad_scan_measurement");
        assert_eq!(
            config().describe_parameters()[0].name.as_str(),
            "quad_scan_measurement"
        );
    }

    #[test]
    fn a_closed_measurement_is_frozen_and_the_view_fit_is_the_last_closed() {
        let mut scan = opened("m1");
        let mut n = 0;
        three_steps(&mut scan, &mut n, [1.0, 2.0, 3.0]);
        // Another parameter changing leaves the measurement open.
        scan.parameters_changed(&measuring("m1"));
        assert!(scan.live.is_some());
        scan.parameters_changed(&measuring(""));
        let closed = serde_json::to_value(scan.publish()).expect("json");
        assert_eq!(closed["live"], serde_json::Value::Null);
        assert_eq!(closed["last_measurement"], "m1");
        let m1 = &closed["measurements"]["m1"];
        assert_eq!(m1["state"], "finished");
        assert_eq!(m1["id"], "m1");
        let (started, ended) = (
            m1["started_at"].as_str().expect("a time"),
            m1["ended_at"].as_str().expect("a time"),
        );
        let time = |t: &str| t.parse::<Timestamp>().expect("RFC 3339");
        assert!(time(started) <= time(ended), "{started} {ended}");
        assert_eq!(m1["fit"]["x"]["settings"], 3);
        assert_eq!(closed["fit"], m1["fit"]);
        assert_eq!(closed["steps"], m1["steps"]);

        // Shots after the close (the ramp back, the quad at rest) change nothing.
        three_steps(&mut scan, &mut n, [1.5, 2.5, 3.5]);
        let later = serde_json::to_value(scan.publish()).expect("json");
        assert_eq!(later["fit"], closed["fit"]);
        assert_eq!(later["measurements"], closed["measurements"]);
        assert_eq!(later["shots_outside_measurement"], 9);

        // The next measurement starts empty; while it runs the view's fit is still m1's.
        scan.parameters_changed(&measuring("m2"));
        three_steps(&mut scan, &mut n, [0.5, 1.5, 4.0]);
        let running = serde_json::to_value(scan.publish()).expect("json");
        assert_eq!(running["fit"], closed["fit"]);
        assert_eq!(running["live"]["id"], "m2");
        assert_eq!(running["live"]["fit"]["x"]["settings"], 3);
        let points = |fit: &serde_json::Value| fit["x"]["points"].clone();
        assert_ne!(points(&running["live"]["fit"]), points(&closed["fit"]));
        // Opening m3 closes m2 as replaced.
        scan.parameters_changed(&measuring("m3"));
        let replaced = serde_json::to_value(scan.publish()).expect("json");
        assert_eq!(replaced["measurements"]["m2"]["state"], "replaced");
        assert_eq!(replaced["last_measurement"], "m2");
        assert_eq!(replaced["live"]["id"], "m3");
        assert_eq!(replaced["live"]["steps"], serde_json::json!([]));
        // The pipeline's scan ending closes it too.
        scan.finish(&Parameters::default());
        let ended = serde_json::to_value(scan.publish()).expect("json");
        assert_eq!(ended["measurements"]["m3"]["state"], "ended");
    }

    /// As HDF5 (what h5pyd and silx read), a measurement's steps are an `NXdata` of the x
    /// size against the quad's setting, a column each; the accumulator's default names them.
    #[test]
    fn steps_are_an_nxdata_of_size_against_setting() {
        use crate::hdf5_rest::{Attribute, Hdf5File, Node};
        let file = |scan: &QuadScan| {
            let state = Value::Map(BTreeMap::from([("qs".to_owned(), scan.publish())]));
            let attributes = BTreeMap::from([("qs".to_owned(), scan.hdf5_attributes())]);
            Hdf5File::new(Arc::new(state), Arc::default(), &attributes)
        };
        let mut scan = opened("m1");
        assert_eq!(scan.hdf5_attributes(), Value::Null, "no steps, nothing to plot");
        let mut n = 0;
        three_steps(&mut scan, &mut n, [1.0, 2.0, 3.0]);
        let running = file(&scan);
        let Some(Node::Group { attributes, .. }) = running.root().at("qs/live/steps") else {
            panic!("no live steps group");
        };
        assert_eq!(attributes["signal"], Attribute::Text("size_x_m".into()));
        scan.parameters_changed(&measuring(""));
        let closed = file(&scan);
        for steps in ["qs/steps", "qs/measurements/m1/steps"] {
            let Some(Node::Group { attributes, .. }) = closed.root().at(steps) else {
                panic!("no {steps} group");
            };
            assert_eq!(attributes["NX_class"], Attribute::Text("NXdata".into()));
            for key in ["signal", "axes"] {
                let Attribute::Text(column) = &attributes[key] else {
                    panic!("{key}: {:?}", attributes[key]);
                };
                let Some(Node::Dataset { data, .. }) = closed.root().at(&format!("{steps}/{column}"))
                else {
                    panic!("{steps}: {key} names no dataset");
                };
                assert_eq!(data.shape(), [3], "a value per step");
            }
        }
        let Some(Node::Group { attributes, .. }) = closed.root().at("qs") else {
            panic!()
        };
        assert_eq!(attributes["default"], Attribute::Text("steps".into()));
    }

    #[test]
    fn closed_measurements_are_bounded_oldest_dropped_first() {
        let mut scan = QuadScan::new(config()).expect("valid");
        for i in 0..13 {
            scan.parameters_changed(&measuring(&format!("m{i:02}")));
            scan.parameters_changed(&measuring(""));
        }
        let view = serde_json::to_value(scan.publish()).expect("json");
        let kept: Vec<&String> = view["measurements"]
            .as_object()
            .expect("a map")
            .keys()
            .collect();
        assert_eq!(kept.len(), 10, "{kept:?}");
        assert_eq!(kept[0], "m03");
        assert_eq!(view["last_measurement"], "m12");
        // An id measured again replaces its earlier measurement.
        scan.parameters_changed(&measuring("m05"));
        scan.parameters_changed(&measuring(""));
        let view = serde_json::to_value(scan.publish()).expect("json");
        assert_eq!(view["measurements"].as_object().map(|m| m.len()), Some(10));
        assert_eq!(view["last_measurement"], "m05");
        assert!(
            QuadScan::new(QuadScanConfig {
                keep_measurements: 0,
                ..config()
            })
            .is_err()
        );
    }

    #[test]
    fn reasons_are_counted_by_kind() {
        assert_eq!(
            reason_kind("x: signal to noise 3.2 below 5"),
            "x: signal to noise"
        );
        assert_eq!(
            reason_kind("saturated: 12 pixels at the camera maximum (4095)"),
            "saturated"
        );
        assert_eq!(
            reason_kind("y: size σ 0.50 px outside [1, 120] px"),
            "y: size"
        );
        assert_eq!(
            reason_kind(
                "x: beam not fully on screen (centre 620.1 px ± 3 σ leaves the 640 px ROI)"
            ),
            "x: beam not fully on screen"
        );
        assert_eq!(
            RejectionKind::of("y: no Gaussian fits the projection"),
            RejectionKind::Gate("y: no Gaussian fits the projection")
        );
        assert_eq!(
            RejectionKind::of("dark frame: 3 pixels missing"),
            RejectionKind::Other("dark frame")
        );
    }

    /// Issue 14: on a loaded box the reducer applied shots taken at the scan's starting setting
    /// after the measurement opened, and they became a fitted step of their own.
    #[test]
    fn shots_taken_before_the_measurement_opened_are_outside_it() {
        let mut scan = opened("m1");
        let opened_at = scan.live.as_ref().map(|m| m.started_at).expect("open");
        let mut early = shot(1, -3.2184, 4e-4, 1.6e-4, &[]);
        early.created_at = Some(opened_at - jiff::SignedDuration::from_secs(2));
        scan.process_result(&early, &Parameters::default())
            .expect("counted, not an error");
        let mut late = shot(2, -4.0, 4.6e-4, 1.9e-4, &[]);
        late.created_at = Some(opened_at + jiff::SignedDuration::from_millis(10));
        scan.process_result(&late, &Parameters::default())
            .expect("a shot");
        let view = scan.publish();
        let Some(Value::Array(steps)) = view.pointer("live/steps") else {
            panic!("no live steps: {view:?}")
        };
        assert_eq!(steps.len(), 1, "{view:?}");
        assert_eq!(
            view.pointer("shots_outside_measurement"),
            Some(&Value::Int(1))
        );
    }
}
