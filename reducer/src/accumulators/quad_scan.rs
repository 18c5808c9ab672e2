//! `quad_scan`: a live quad-scan emittance measurement. Shots (results of `beam_image`) are
//! grouped into steps by the quad setting each carries (the readback PV's value, attached to
//! the shot); accepted shots are averaged per step with the error of their mean as the size
//! error; after every shot both planes are fitted with the thick-quad model
//! (`beamflow_optics::quad_scan`) and the view shows εn, ε, β, α at the quad entrance, BMAG,
//! a-priori and χ²-scaled error bars, the measured points and the fitted curve.
//!
//! Nothing is dropped silently: each step lists its shots, accepted shots and the reasons the
//! others were rejected, and says why it is not in the fit when it is not.

use std::collections::BTreeMap;

use beamflow_optics::quad_scan::{DesignTwissXy, ScanPoint, ScanReport, ScanSetup};
use beamflow_protocol::{AnalysisName, Parameters, ResultData, Value};
use serde::{Deserialize, Serialize};

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
}

impl QuadScanConfig {
    /// The number paths it reads from shots, each with its key.
    pub fn result_paths(&self) -> Vec<(String, &str)> {
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

/// The `quad_scan` accumulator.
pub struct QuadScan {
    config: QuadScanConfig,
    setup: ScanSetup,
    steps: Vec<Step>,
    without_setting: u64,
    beyond_step_limit: u64,
    report: Option<ScanReport>,
}

impl QuadScan {
    /// Builds the accumulator; the optics must be finite and the energy and length positive.
    pub fn new(config: QuadScanConfig) -> Result<Self, String> {
        if !(config.energy_ev > 0.0 && config.quad_length_m > 0.0) {
            return Err("energy_ev and quad_length_m must be positive".to_owned());
        }
        if !(config.tolerance_kg.is_finite() && config.tolerance_kg > 0.0) {
            return Err("tolerance_kg must be a positive number".to_owned());
        }
        if config.min_shots < 2 {
            return Err(
                "min_shots must be at least 2: a step's size error is its spread".to_owned(),
            );
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
            steps: Vec::new(),
            without_setting: 0,
            beyond_step_limit: 0,
            report: None,
        })
    }

    fn why_not_fitted(&self, step: &Step) -> Option<String> {
        if step.x.n < self.config.min_shots {
            return Some(format!(
                "{} accepted shots of {} needed",
                step.x.n, self.config.min_shots
            ));
        }
        // Identical sizes give no error bar, and a zero error would weigh the point infinitely.
        (!(step.x.spread() > 0.0 && step.y.spread() > 0.0))
            .then(|| "the accepted sizes do not spread: no error bar".to_owned())
    }

    fn refit(&mut self) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for step in self
            .steps
            .iter()
            .filter(|s| self.why_not_fitted(s).is_none())
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
        self.report = Some(self.setup.report(x, y));
    }
}

/// The reason's kind without its numbers, so "x: signal to noise 3.2 below 5" counts with
/// every other x signal-to-noise rejection.
fn reason_kind(reason: &str) -> String {
    let end = reason
        .find(|c: char| c.is_ascii_digit() || c == '(')
        .unwrap_or(reason.len());
    reason[..end]
        .trim_end_matches(|c: char| c == 'σ' || c == ':' || c.is_whitespace())
        .to_owned()
}

impl Accumulator for QuadScan {
    fn process_result(
        &mut self,
        result: &ResultData,
        _: &Parameters,
    ) -> Result<(), AccumulatorError> {
        let payload = &result.payload;
        let Some(setting) = payload
            .pointer(&self.config.setting)
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite())
        else {
            self.without_setting += 1;
            return Err(AccumulatorError::Invalid(format!(
                "no quad setting at {:?} in the shot",
                self.config.setting
            )));
        };
        let tolerance = self.config.tolerance_kg;
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
        match (
            accepted,
            size(&self.config.size_x),
            size(&self.config.size_y),
        ) {
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
        self.refit();
        Ok(())
    }

    fn publish(&self) -> Value {
        let steps: Vec<StepView> = self
            .steps
            .iter()
            .map(|step| {
                let not_fitted = self.why_not_fitted(step);
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
            .collect();
        #[derive(Serialize)]
        struct View<'a> {
            steps: Vec<StepView>,
            fit: Option<&'a ScanReport>,
            shots_without_setting: u64,
            shots_beyond_step_limit: u64,
        }
        Value::from_serialize(&View {
            steps,
            fit: self.report.as_ref(),
            shots_without_setting: self.without_setting,
            shots_beyond_step_limit: self.beyond_step_limit,
        })
        .unwrap_or_else(|error| Value::Text(format!("quad_scan view failed: {error}")))
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
        let mut scan = QuadScan::new(config()).expect("valid");
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

    fn shot_at(n: &mut u64, setting: f64, x: f64, y: f64) -> ResultData {
        *n += 1;
        shot(*n, setting, x, y, &[])
    }

    #[test]
    fn two_settings_are_too_few_and_a_shot_without_a_setting_is_an_error() {
        let mut scan = QuadScan::new(config()).expect("valid");
        let mut n = 0;
        for bctrl in [1.0, 2.0] {
            for shot in 0..3 {
                let (x, y) = sizes(bctrl, shot);
                scan.process_result(&shot_at(&mut n, bctrl, x, y), &Parameters::default())
                    .expect("used");
            }
        }
        let view = serde_json::to_value(scan.publish()).expect("json");
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
        assert_eq!(view["shots_without_setting"], 1);
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
    }
}
