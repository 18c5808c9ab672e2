//! `beamflow sim-ioc`: a simulated LCLS injector served over Channel Access by beamflow's own
//! CA server, so the whole EPICS path runs with nothing else installed.
//!
//! - The 15 injector inputs of `physics.md` §1.2 (solenoid, quads, correctors, L0A/L0B phases)
//!   move in the shape lume-visualizations' fake IOC gives them: centre + A·sin(2πt/period +
//!   phase) + uniform noise of 3 % of A, with its periods, phases and amplitude rule. For the
//!   LCLS surrogate's inputs the defaults and ranges are read from the built-in model, the
//!   centre is the model's default and A is [`SimIocConfig::swing`] (a tenth) of the fake IOC's
//!   amplitude, kept inside the range. The fake IOC's full swing stays in every input's range
//!   too, but moves ten inputs far from their defaults at once, where the surrogate predicts
//!   OTR2 sizes from 43 to 4,500 µm (and a negative y size): a demo of extrapolation, not of
//!   a machine. Magnets (`…:BCTRL`) also serve a `…:BACT`.
//! - The scan quad `QUAD:IN20:525:BCTRL` (QE04) is writable and holds its setting (at start
//!   [`SCAN_QUAD_START_KG`]); its `BACT` ramps to it at [`RAMP_KG_PER_S`]. Like an `ao` record
//!   with DRVL/DRVH it serves control limits ([`SCAN_QUAD_LIMITS_KG`], in its DBR_CTRL form)
//!   and its magnet goes no further than them, whatever is written.
//! - The OTR2 screen `OTRS:IN20:571` shows the beam of the quad-scan reference dataset
//!   (`../shared/data/quadscan/reference.json`: 135 MeV, thick 0.108 m quad, 2.26 m drift, the
//!   truth Twiss below) at the current `BACT`: a Gaussian spot on a 640×480 12-bit image with a
//!   pedestal and read noise, plus `XRMS`/`YRMS`, the true rms sizes in µm.
//!
//! Every value of one shot (image, counter, sizes, QE04 readback) carries the same CA time
//! stamp, with an LCLS-style pulse id (360 Hz count) in the low 17 bits of its nanoseconds.
//!
//! The IOC binds loopback by default: simulated PVs named like the real machine's must not
//! answer searches on a control-room network.

use std::f64::consts::PI;
use std::time::{Duration, Instant};

use beamflow_ca::dbr::{Limits, Metadata};
use beamflow_ca::server::PvStore;
use beamflow_ca::{EpicsTime, TimeValue, Values};
use beamflow_net::Stop;
use beamflow_optics::{BeamMatrix, Energy, Matrix, Plane, Twiss};
use beamflow_surrogate::{LCLS_CU_INJECTOR, ModelSpec};

use crate::camera::{Camera, Sensor, Spot};
use crate::random::SplitMix;

/// The scan quad's setpoint.
pub const SCAN_QUAD: &str = "QUAD:IN20:525:BCTRL";
/// The scan quad's setting at start: LCLS's QE04 as `physics.md` quotes it (the surrogate's
/// default, −3.218399988942528 kG, rounded), so a reading shows which of the two it is.
pub const SCAN_QUAD_START_KG: f64 = -3.2184;
/// The scan quad's control limits (its DRVL and DRVH), kG: they hold the LCLS surrogate's trained
/// range (−7.56 to −1.08 kG) and the quad-scan reference dataset's settings (0.5 to 4.5 kG, the
/// x waist near +0.95 kG) with room on either side, and are the ±10 kG the injector pipeline's
/// `QE04:BACT` result PV displays.
pub const SCAN_QUAD_LIMITS_KG: Limits = Limits {
    low: -10.0,
    high: 10.0,
};
/// The scan quad's readback.
pub const SCAN_QUAD_READBACK: &str = "QUAD:IN20:525:BACT";
/// The OTR2 screen's PV prefix.
pub const SCREEN: &str = "OTRS:IN20:571";

/// How fast the scan quad's readback follows its setpoint, kG/s.
pub const RAMP_KG_PER_S: f64 = 5.0;
/// OTR2's pixel size, µm (virtual-accelerator's profile monitor table).
pub const PIXEL_UM: f64 = 12.66;
/// Camera counts at the image's dark level.
pub const PEDESTAL: f64 = 100.0;
/// Read noise, counts rms.
pub const READ_NOISE: f64 = 4.0;
/// Counts in the whole spot: peaks stay below 12 bits at the reference scan's waist.
pub const SPOT_COUNTS: f64 = 300_000.0;
/// The camera's largest count (12 bits).
pub const FULL_SCALE: f64 = 4095.0;

/// OTR2's camera.
const OTR2: Sensor = Sensor {
    pedestal: PEDESTAL,
    read_noise: READ_NOISE,
    full_scale: FULL_SCALE,
};

/// The beam at the scan quad's entrance and the optics to the screen, from the quad-scan
/// reference dataset.
const ENERGY: Energy = Energy { total_ev: 135.0e6 };
const QUAD_LENGTH_M: f64 = 0.108;
const DRIFT_TO_SCREEN_M: f64 = 2.26;
const TRUTH_X: (f64, f64, f64) = (0.5e-6, 10.0, -1.0);
const TRUTH_Y: (f64, f64, f64) = (0.4e-6, 4.0, 2.5);

/// An injector input of `physics.md` §1.2 as the simulation moves it: name, default, range,
/// period (s).
#[derive(Debug, Clone, PartialEq)]
struct Input {
    name: &'static str,
    default: f64,
    min: f64,
    max: f64,
    period_s: f64,
}

/// Where an input's default and range come from.
#[derive(Debug, Clone, Copy)]
enum Domain {
    /// An input of the LCLS surrogate: its `model.yaml`.
    Model,
    /// Not a surrogate input (Bmad's): default, min and max as the fake IOC sets them.
    Given(f64, f64, f64),
}

/// The fake IOC's inputs in its table order (which sets their phases) with their periods.
const TABLE: [(&str, f64, Domain); 15] = [
    ("SOLN:IN20:121:BCTRL", 29.0, Domain::Model),
    ("QUAD:IN20:121:BCTRL", 17.0, Domain::Model),
    ("QUAD:IN20:122:BCTRL", 21.0, Domain::Model),
    ("ACCL:IN20:300:L0A_PDES", 37.0, Domain::Model),
    ("ACCL:IN20:400:L0B_PDES", 33.0, Domain::Model),
    ("QUAD:IN20:361:BCTRL", 27.0, Domain::Model),
    ("QUAD:IN20:371:BCTRL", 25.0, Domain::Model),
    ("QUAD:IN20:425:BCTRL", 35.0, Domain::Model),
    ("QUAD:IN20:441:BCTRL", 22.0, Domain::Model),
    ("QUAD:IN20:511:BCTRL", 39.0, Domain::Model),
    (SCAN_QUAD, 15.0, Domain::Model),
    // Bmad inputs without a trained range: the fake IOC swings them ±25 %.
    (
        "QUAD:IN20:631:BCTRL",
        1.0,
        Domain::Given(7.33536, 7.33536 * 0.75, 7.33536 * 1.25),
    ),
    (
        "QUAD:IN20:651:BCTRL",
        29.0,
        Domain::Given(-5.82109, -5.82109 * 1.25, -5.82109 * 0.75),
    ),
    ("XCOR:IN20:641:BCTRL", 1.0, Domain::Given(0.0, 0.0, 0.0)),
    ("YCOR:IN20:642:BCTRL", 1.0, Domain::Given(0.0, 0.0, 0.0)),
];

/// The table's inputs, the surrogate's with the default and range of the built-in model.
///
/// # Panics
///
/// If the built-in model's description does not parse or lacks one of the table's inputs:
/// both are compiled in, and the tests below load them.
fn inputs() -> Vec<Input> {
    let spec = ModelSpec::builtin(LCLS_CU_INJECTOR)
        .and_then(Result::ok)
        .expect("the built-in model's description is valid");
    TABLE
        .iter()
        .map(|&(name, period_s, domain)| {
            let (default, min, max) = match domain {
                Domain::Given(default, min, max) => (default, min, max),
                Domain::Model => {
                    let input = spec
                        .input(name)
                        .expect("every surrogate input of the table is the model's");
                    (input.default, input.range[0], input.range[1])
                }
            };
            Input {
                name,
                default,
                min,
                max,
                period_s,
            }
        })
        .collect()
}

/// An input's motion.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Motion {
    centre: f64,
    amplitude: f64,
    phase: f64,
}

/// The noise's full width, in units of the amplitude (the fake IOC's `--noise-scale`).
const NOISE: f64 = 0.03;

impl Motion {
    /// The fake IOC's rule: the swing is 0.45 of the room on the near side of the default;
    /// where that room is under 15 % of the half range, the centre moves to mid-range.
    fn fake_ioc(input: &Input, index: usize) -> Self {
        let half_span = (input.max - input.min) / 2.0;
        let mut centre = input.default;
        let mut room = (input.default - input.min).min(input.max - input.default);
        if room < 0.15 * half_span {
            centre = (input.min + input.max) / 2.0;
            room = half_span;
        }
        Self {
            centre,
            amplitude: 0.45 * room,
            // The fake IOC's phases: 1.0 to 5.6 rad in table order.
            phase: 1.0 + index as f64 * 4.6 / (TABLE.len() - 1) as f64,
        }
    }

    /// The fake IOC's motion with its amplitude scaled by `swing`, centred on the default and
    /// moved inward just enough that the sine and its noise stay inside the range (QE01's
    /// default is the top of its range; the fake IOC moved its centre 3 kG away instead).
    fn scaled(input: &Input, index: usize, swing: f64) -> Self {
        let fake = Self::fake_ioc(input, index);
        let amplitude = swing * fake.amplitude;
        // Sine plus half the noise's width, plus a little for rounding.
        let reach = amplitude * (1.0 + NOISE / 2.0) * (1.0 + 1e-9);
        let centre = if input.max - input.min > 2.0 * reach {
            input.default.clamp(input.min + reach, input.max - reach)
        } else {
            (input.min + input.max) / 2.0
        };
        Self {
            centre,
            amplitude,
            phase: fake.phase,
        }
    }

    /// The value at `t` seconds with `noise` uniform in [0, 1), clamped to the input's range.
    fn at(&self, input: &Input, t: f64, noise: f64) -> f64 {
        let jitter = NOISE * self.amplitude * (noise - 0.5);
        (self.centre + self.amplitude * (2.0 * PI * t / input.period_s + self.phase).sin() + jitter)
            .clamp(input.min, input.max)
    }
}

/// How fast the simulation publishes.
#[derive(Debug, Clone)]
pub struct SimIocConfig {
    /// OTR2 images per second.
    pub image_rate_hz: f64,
    /// Updates of the moving injector inputs per second.
    pub input_rate_hz: f64,
    /// Image width and height, pixels.
    pub shape: [usize; 2],
    /// The inputs' swing as a fraction of the fake IOC's amplitude (1: its full amplitude,
    /// though still centred on the defaults). At 0.1 the surrogate's OTR2 prediction moves
    /// over about 190 to 620 µm (x) and 95 to 190 µm (y) around its defaults' 305 × 124 µm;
    /// at 1, over 30 to 4,300 µm (x) and −16 to 2,300 µm (y).
    pub swing: f64,
}

impl Default for SimIocConfig {
    fn default() -> Self {
        Self {
            image_rate_hz: 10.0,
            input_rate_hz: 2.0,
            shape: [640, 480],
            swing: 0.1,
        }
    }
}

/// The simulated injector: its PVs live in a [`PvStore`] that a CA server serves.
pub struct SimIoc {
    config: SimIocConfig,
    store: PvStore,
    inputs: Vec<Input>,
    motions: Vec<Motion>,
    random: SplitMix,
    camera: Camera,
    started: Instant,
    quad_setpoint: f64,
    quad_readback: f64,
    ramped_at: Instant,
    shots: u64,
}

/// Pulse ids count at LCLS's 360 Hz base rate.
const PULSE_RATE_HZ: f64 = 360.0;

impl SimIoc {
    /// Adds the injector's PVs to `store` with their first values.
    ///
    /// # Panics
    ///
    /// If the built-in surrogate's description is broken (it is compiled in and tested).
    pub fn new(config: SimIocConfig, store: &PvStore) -> Self {
        let now = Instant::now();
        let stamp = EpicsTime::now();
        let inputs = inputs();
        let motions: Vec<Motion> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| Motion::scaled(input, i, config.swing))
            .collect();
        for input in &inputs {
            let writable = input.name == SCAN_QUAD;
            let first = if writable {
                SCAN_QUAD_START_KG
            } else {
                input.default
            };
            if writable {
                let metadata = Metadata {
                    units: "kG".to_owned(),
                    precision: 4,
                    display: SCAN_QUAD_LIMITS_KG,
                    control: SCAN_QUAD_LIMITS_KG,
                    ..Metadata::default()
                };
                store.add_with_metadata(input.name, double(first, stamp), 1, true, metadata);
            } else {
                store.add(input.name, double(first, stamp), 1, false);
            }
            if let Some(readback) = readback_name(input.name) {
                store.add(&readback, double(first, stamp), 1, false);
            }
        }
        let [width, height] = config.shape;
        let pixels = width * height;
        for (suffix, value) in [
            ("Image:ArraySize0_RBV", width as f64),
            ("Image:ArraySize1_RBV", height as f64),
        ] {
            store.add(
                &format!("{SCREEN}:{suffix}"),
                long(value as i32, stamp),
                1,
                false,
            );
        }
        store.add(
            &format!("{SCREEN}:Image:ArrayCounter_RBV"),
            long(0, stamp),
            1,
            false,
        );
        store.add(
            &format!("{SCREEN}:RESOLUTION"),
            double(PIXEL_UM, stamp),
            1,
            false,
        );
        store.add(&format!("{SCREEN}:XRMS"), double(f64::NAN, stamp), 1, false);
        store.add(&format!("{SCREEN}:YRMS"), double(f64::NAN, stamp), 1, false);
        store.add(
            &format!("{SCREEN}:Image:ArrayData"),
            TimeValue {
                status: 0,
                severity: 0,
                stamp,
                values: Values::Short(vec![0; pixels]),
            },
            pixels,
            false,
        );
        let default = SCAN_QUAD_START_KG;
        Self {
            config,
            store: store.clone(),
            inputs,
            motions,
            random: SplitMix::new(2719),
            camera: Camera::new(OTR2, 2720),
            started: now,
            quad_setpoint: default,
            quad_readback: default,
            ramped_at: now,
            shots: 0,
        }
    }

    /// Publishes until `stop` is raised.
    pub fn run(mut self, stop: &Stop) {
        let image_period = period(self.config.image_rate_hz);
        let input_period = period(self.config.input_rate_hz);
        let mut next_image = Instant::now();
        let mut next_inputs = next_image;
        while !stop.is_stopped() {
            let now = Instant::now();
            if now >= next_inputs {
                self.move_inputs(now);
                next_inputs = next_due(next_inputs, input_period, now);
            }
            if now >= next_image {
                // Stamped with its slot, not the wake-up: pulse ids step evenly.
                self.shoot(next_image);
                next_image = next_due(next_image, image_period, now);
            }
            let wake = next_image.min(next_inputs);
            // Pacing a simulator; 100 ms at most so a stop is seen promptly.
            std::thread::sleep(
                wake.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
        }
    }

    /// The time stamp of `now`, with the pulse id of `now` since the start.
    fn stamp(&self, now: Instant) -> EpicsTime {
        let pulses = ((now - self.started).as_secs_f64() * PULSE_RATE_HZ).round() as u64;
        let id = (pulses % u64::from(beamflow_ca::dbr::PULSE_ID_INVALID)) as u32;
        EpicsTime::now().with_pulse_id(id)
    }

    /// Moves every injector input but the scan quad.
    pub fn move_inputs(&mut self, now: Instant) {
        let stamp = self.stamp(now);
        let t = (now - self.started).as_secs_f64();
        for (input, motion) in self.inputs.iter().zip(&self.motions) {
            if input.name == SCAN_QUAD {
                continue;
            }
            let value = motion.at(input, t, self.random.uniform());
            self.store.post(input.name, double(value, stamp));
            if let Some(readback) = readback_name(input.name) {
                self.store.post(&readback, double(value, stamp));
            }
        }
    }

    /// One shot: follows the scan quad's setpoint, renders the screen, posts the image, its
    /// counter, the true sizes and the readback, all with one time stamp.
    pub fn shoot(&mut self, now: Instant) {
        let stamp = self.stamp(now);
        if let Some(setpoint) = self
            .store
            .value(SCAN_QUAD)
            .and_then(|v| beamflow_ca::convert::numbers(&v.values).first().copied())
            .filter(|v| v.is_finite())
        {
            // As an `ao` record drives its output: never beyond DRVL/DRVH.
            self.quad_setpoint = setpoint.clamp(SCAN_QUAD_LIMITS_KG.low, SCAN_QUAD_LIMITS_KG.high);
        }
        let step = RAMP_KG_PER_S * (now - self.ramped_at).as_secs_f64();
        self.ramped_at = now;
        self.quad_readback += (self.quad_setpoint - self.quad_readback).clamp(-step, step);
        let (x_m, y_m) = screen_sizes(self.quad_readback);
        let image = self.render(x_m * 1e6 / PIXEL_UM, y_m * 1e6 / PIXEL_UM);
        self.shots += 1;
        let at = |values| TimeValue {
            status: 0,
            severity: 0,
            stamp,
            values,
        };
        // The image last: a client triggered by it finds its shot's readback and sizes there.
        self.store
            .post(SCAN_QUAD_READBACK, double(self.quad_readback, stamp));
        self.store
            .post(&format!("{SCREEN}:XRMS"), double(x_m * 1e6, stamp));
        self.store
            .post(&format!("{SCREEN}:YRMS"), double(y_m * 1e6, stamp));
        self.store.post(
            &format!("{SCREEN}:Image:ArrayCounter_RBV"),
            at(Values::Long(vec![self.shots as i32])),
        );
        self.store.post(
            &format!("{SCREEN}:Image:ArrayData"),
            at(Values::Short(image)),
        );
    }

    /// A Gaussian spot of rms `sigma_x` × `sigma_y` pixels near the centre on OTR2's camera;
    /// row-major, as the camera sends it (raw u16 bits in DBR_SHORT, as caproto serves them).
    fn render(&mut self, sigma_x: f64, sigma_y: f64) -> Vec<i16> {
        let [width, height] = self.config.shape;
        // A little pointing jitter, as a real beam has.
        let x = width as f64 / 2.0 + 0.3 * self.camera.random().normal();
        let y = height as f64 / 2.0 + 0.3 * self.camera.random().normal();
        let spot = Spot {
            x,
            y,
            sigma_x,
            sigma_y,
            counts: SPOT_COUNTS,
        };
        self.camera
            .render_as(self.config.shape, spot, |count| count as i16)
    }
}

/// The true rms beam sizes (x, y) on OTR2, m, with the scan quad at `bact_kg`.
pub fn screen_sizes(bact_kg: f64) -> (f64, f64) {
    let size = |plane: Plane, (norm_emit, beta, alpha): (f64, f64, f64)| {
        let beam = BeamMatrix::from_twiss(Twiss {
            emittance: norm_emit / ENERGY.beta_gamma(),
            beta,
            alpha,
        });
        let k = ENERGY.quad_k(bact_kg, QUAD_LENGTH_M, plane);
        let optics =
            Matrix::drift(DRIFT_TO_SCREEN_M).then_after(Matrix::thick_quad(k, QUAD_LENGTH_M));
        beam.transport(optics).rms_size()
    };
    (size(Plane::X, TRUTH_X), size(Plane::Y, TRUTH_Y))
}

fn readback_name(name: &str) -> Option<String> {
    name.strip_suffix(":BCTRL")
        .map(|base| format!("{base}:BACT"))
}

fn double(value: f64, stamp: EpicsTime) -> TimeValue {
    TimeValue {
        status: 0,
        severity: 0,
        stamp,
        values: Values::Double(vec![value]),
    }
}

fn long(value: i32, stamp: EpicsTime) -> TimeValue {
    TimeValue {
        status: 0,
        severity: 0,
        stamp,
        values: Values::Long(vec![value]),
    }
}

fn period(rate_hz: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate_hz.max(1e-3))
}

/// The next slot after `due`; a simulator that fell behind skips slots instead of bursting.
fn next_due(due: Instant, period: Duration, now: Instant) -> Instant {
    let next = due + period;
    if next < now { now + period } else { next }
}

#[cfg(test)]
mod tests {
    use beamflow_surrogate::{Base, Model, Provenance};

    use super::*;

    fn reference() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/quadscan_reference.json"
        );
        let text = std::fs::read_to_string(path).expect("the shared reference dataset");
        serde_json::from_str(&text).expect("valid JSON")
    }

    #[test]
    fn screen_sizes_are_the_reference_datasets() {
        let reference = reference();
        let settings = reference["scan"]["bctrl_kG"].as_array().expect("settings");
        for (i, setting) in settings.iter().enumerate() {
            let (x, y) = screen_sizes(setting.as_f64().expect("a number"));
            for (ours, key) in [(x, "x"), (y, "y")] {
                let truth = reference["exact_sizes_m"][key][i].as_f64().expect("a size");
                assert!(
                    ((ours - truth) / truth).abs() < 1e-9,
                    "{key}[{i}]: {ours} vs {truth}"
                );
            }
        }
    }

    #[test]
    fn inputs_move_as_the_fake_iocs_table_says() {
        // Centres and amplitudes of physics.md §1.2's table.
        let expected = [
            ("SOLN:IN20:121:BCTRL", 0.4780, 0.00918),
            ("ACCL:IN20:400:L0B_PDES", -7.50, 7.87),
            ("QUAD:IN20:425:BCTRL", -4.32, 1.46),
            ("QUAD:IN20:631:BCTRL", 7.33536, 0.825),
            ("QUAD:IN20:525:BCTRL", -3.2184, 0.962),
        ];
        let inputs = inputs();
        for (name, centre, amplitude) in expected {
            let index = inputs.iter().position(|i| i.name == name).expect("listed");
            let motion = Motion::fake_ioc(&inputs[index], index);
            assert!((motion.centre - centre).abs() < 0.006, "{name}: {motion:?}");
            assert!(
                (motion.amplitude - amplitude).abs() / amplitude < 0.006,
                "{name}: {motion:?}"
            );
        }
    }

    /// The surrogate's inputs as the pipeline reads them from the sim (readbacks for magnets).
    fn surrogate_inputs(store: &PvStore, model: &Model) -> Base {
        model
            .spec()
            .inputs
            .iter()
            .filter_map(|input| {
                let pv = readback_name(&input.name).unwrap_or_else(|| input.name.clone());
                let value = store
                    .value(&pv)
                    .and_then(|v| beamflow_ca::convert::numbers(&v.values).first().copied())?;
                Some((input.name.clone(), (value, Provenance::Live)))
            })
            .collect()
    }

    /// Issue 14: over 10 minutes of simulated input updates every surrogate input stays in the
    /// model's range, the model never flags one, and its OTR2 prediction stays a beam around
    /// its defaults' rather than swinging over two orders of magnitude.
    #[test]
    fn gh_14_the_sims_inputs_stay_where_the_surrogate_is_trained() {
        let model =
            Model::open(std::path::Path::new("builtin:lcls_cu_injector")).expect("built in");
        let store = PvStore::new();
        let mut ioc = SimIoc::new(SimIocConfig::default(), &store);
        let start = ioc.started;
        let mut rows = Vec::new();
        // 2 updates a second, as `beamflow sim-ioc` makes them, for 10 minutes: every period
        // (15 to 39 s) many times over, in many combinations.
        for step in 0..1200u64 {
            ioc.move_inputs(start + Duration::from_millis(500 * step));
            let given = surrogate_inputs(&store, &model);
            assert_eq!(given.len(), 11, "the sim serves 11 surrogate inputs");
            for (name, (value, _)) in &given {
                let [low, high] = model.spec().input(name).expect("an input").range;
                assert!(
                    (low..=high).contains(value),
                    "{name} = {value} at step {step}"
                );
            }
            let (inputs, issues) = model.prepare(&given);
            assert_eq!(issues, [], "step {step}");
            rows.push((inputs, issues));
        }
        let evaluations = model.evaluate_named(rows).expect("evaluates");
        let (mut x, mut y) = ((f64::INFINITY, 0f64), (f64::INFINITY, 0f64));
        for evaluation in evaluations {
            let evaluation = evaluation.expect("finite");
            assert!(evaluation.issues.is_empty());
            let xrms = evaluation.outputs["OTRS:IN20:571:XRMS"].value;
            let yrms = evaluation.outputs["OTRS:IN20:571:YRMS"].value;
            x = (x.0.min(xrms), x.1.max(xrms));
            y = (y.0.min(yrms), y.1.max(yrms));
        }
        // The defaults give 304.6 × 124.3 µm.
        assert!(x.0 > 150.0 && x.1 < 700.0, "XRMS over {x:?} µm");
        assert!(y.0 > 80.0 && y.1 < 250.0, "YRMS over {y:?} µm");
        // The scan quad is the operator's: the sim never moves it.
        let qe04 = store
            .value(SCAN_QUAD_READBACK)
            .and_then(|v| beamflow_ca::convert::numbers(&v.values).first().copied());
        assert_eq!(qe04, Some(SCAN_QUAD_START_KG));
    }

    #[test]
    fn the_motions_keep_the_fake_iocs_shape_scaled_into_the_range() {
        let inputs = inputs();
        for (index, input) in inputs.iter().enumerate() {
            let fake = Motion::fake_ioc(input, index);
            let scaled = Motion::scaled(input, index, 0.1);
            assert_eq!(scaled.phase, fake.phase, "{}", input.name);
            assert!(
                (scaled.amplitude - 0.1 * fake.amplitude).abs() <= 1e-12 * fake.amplitude.abs(),
                "{}",
                input.name
            );
            for noise in [0.0, 0.999_999] {
                for t in 0..400 {
                    let value = scaled.at(input, f64::from(t) * 0.25, noise);
                    // Inside without the clamp's help.
                    let unclamped = scaled.centre
                        + scaled.amplitude
                            * (2.0 * PI * f64::from(t) * 0.25 / input.period_s + scaled.phase)
                                .sin()
                        + NOISE * scaled.amplitude * (noise - 0.5);
                    assert_eq!(value, unclamped, "{} at {t}", input.name);
                }
            }
        }
        // QE01's default is the top of its range: the centre moves down just enough.
        let qe01 = inputs
            .iter()
            .position(|i| i.name == "QUAD:IN20:425:BCTRL")
            .expect("listed");
        let motion = Motion::scaled(&inputs[qe01], qe01, 0.1);
        assert!(motion.centre < inputs[qe01].default);
        assert!(inputs[qe01].default - motion.centre < 1.02 * motion.amplitude);
    }

    #[test]
    fn the_rendered_spot_has_the_true_size_and_stays_in_twelve_bits() {
        let store = PvStore::new();
        let mut ioc = SimIoc::new(SimIocConfig::default(), &store);
        let (sigma_x, sigma_y) = (20.0, 9.0);
        let image = ioc.render(sigma_x, sigma_y);
        let [width, height] = [640usize, 480];
        assert_eq!(image.len(), width * height);
        assert!(image.iter().all(|&p| (0..=4095).contains(&p)));
        // Second moments of the pedestal-subtracted projections within ±5σ: over the whole
        // frame, read noise alone would move them by tens of per cent.
        let (cols, rows) = (320 - 100..320 + 100, 240 - 45..240 + 45);
        let mut px = vec![0.0; width];
        let mut py = vec![0.0; height];
        for (i, &p) in image.iter().enumerate() {
            let (col, row) = (i % width, i / width);
            if cols.contains(&col) && rows.contains(&row) {
                let signal = f64::from(p) - PEDESTAL;
                px[col] += signal;
                py[row] += signal;
            }
        }
        let (total, x) = crate::camera::moments(&px);
        let (_, y) = crate::camera::moments(&py);
        assert!((total - SPOT_COUNTS).abs() / SPOT_COUNTS < 0.01, "{total}");
        assert!((x - sigma_x).abs() / sigma_x < 0.02, "{x}");
        assert!((y - sigma_y).abs() / sigma_y < 0.02, "{y}");
    }

    #[test]
    fn the_readback_ramps_to_a_written_setpoint_and_the_screen_follows() {
        let store = PvStore::new();
        let mut ioc = SimIoc::new(SimIocConfig::default(), &store);
        store.post(SCAN_QUAD, double(2.5, EpicsTime::now()));
        let start = ioc.ramped_at;
        ioc.shoot(start + Duration::from_millis(100));
        let readback = |store: &PvStore, name: &str| {
            store
                .value(name)
                .and_then(|v| beamflow_ca::convert::numbers(&v.values).first().copied())
                .expect("a value")
        };
        let moved = readback(&store, SCAN_QUAD_READBACK);
        assert!((moved - (-3.2184 + 0.5)).abs() < 1e-9, "{moved}");
        ioc.shoot(start + Duration::from_secs(3));
        assert_eq!(readback(&store, SCAN_QUAD_READBACK), 2.5);
        let (x, y) = screen_sizes(2.5);
        assert!((readback(&store, "OTRS:IN20:571:XRMS") - x * 1e6).abs() < 1e-9);
        assert!((readback(&store, "OTRS:IN20:571:YRMS") - y * 1e6).abs() < 1e-9);
        assert_eq!(
            readback(&store, "OTRS:IN20:571:Image:ArrayCounter_RBV"),
            2.0
        );
        let image = store
            .value("OTRS:IN20:571:Image:ArrayData")
            .expect("an image");
        let stamp = store.value("OTRS:IN20:571:XRMS").expect("a size").stamp;
        assert_eq!(image.stamp, stamp, "one time stamp per shot");
    }

    /// The scan quad serves DRVL/DRVH as its control limits, and its magnet stops there
    /// whatever a client writes (the issue's probe wrote 1e300 and saw the readback reach
    /// 23.5 kG).
    #[test]
    fn the_scan_quad_serves_its_control_limits_and_stays_inside_them() {
        let store = PvStore::new();
        let mut ioc = SimIoc::new(SimIocConfig::default(), &store);
        let metadata = store.metadata(SCAN_QUAD).expect("the scan quad");
        assert_eq!(metadata.control, SCAN_QUAD_LIMITS_KG);
        assert_eq!(metadata.units, "kG");
        store.post(SCAN_QUAD, double(1e300, EpicsTime::now()));
        let start = ioc.ramped_at;
        ioc.shoot(start + Duration::from_secs(60));
        let readback = store
            .value(SCAN_QUAD_READBACK)
            .and_then(|v| beamflow_ca::convert::numbers(&v.values).first().copied());
        assert_eq!(readback, Some(SCAN_QUAD_LIMITS_KG.high));
    }
}
