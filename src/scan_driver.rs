//! The quad-scan driver of `beamflow scan quad` and `POST /api/v1/scan/quad`: for each value it
//! puts the quad's setpoint over Channel Access, waits for the readback to arrive and settle,
//! then lets the pipeline's `quad_scan` accumulator collect the requested number of accepted
//! shots at that setting, reading its progress from the reducer's HTTP view.
//!
//! The scan leaves the machine as it found it:
//!
//! - Before the first put it checks everything it will need: the controller and the reducer
//!   answer, the reducer has a `quad_scan` accumulator of the requested name with no measurement
//!   open, and the setpoint and readback PVs connect. The readback must be another PV than the
//!   setpoint (waiting for the setpoint itself would check nothing): it is derived only from a
//!   name ending in `BCTRL` (→ `BACT`) and must be given otherwise.
//! - It measures inside a `quad_scan` *measurement* (see
//!   `beamflow_reducer::accumulators::quad_scan`), opened once the quad has settled at the first
//!   value and closed before the quad moves back, through the controller's parameter
//!   `quad_scan_measurement`. The pipeline's scan runs on: live histories keep their events.
//! - Asked to stop ([`ScanStop`]: a signal for the CLI, `DELETE /api/v1/scan/quad` for the
//!   API), it stops stepping, closes the measurement (its partial fit is the report) and, like
//!   at the end, puts the setpoint back to where it was and waits for the readback. When the
//!   process must exit at once, [`ScanStop::rescue`] tries that put once without waiting.
//!
//! A step that does not reach its shots within `step_timeout_s` is reported as incomplete and
//! the scan goes on.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use beamflow_ca::client::{ClientConfig, MonitorEvent, Put, monitor_and_put};
use beamflow_ca::convert::numbers;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A quad scan as the CLI and the controller's API take it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuadScanRequest {
    /// The quad's setpoint PV, e.g. `QUAD:IN20:525:BCTRL`.
    pub pv: String,
    /// Its readback; needed unless the setpoint's name ends in `BCTRL` (then `BACT`).
    #[serde(default)]
    pub readback: Option<String>,
    /// The settings, kG, in scan order.
    pub values: Vec<f64>,
    /// Seconds to wait once the readback arrived.
    #[serde(default = "settle")]
    pub settle_s: f64,
    /// Accepted shots per step.
    #[serde(default = "shots")]
    pub shots: u64,
    /// The readback has arrived within this, kG (also the accumulator's step width).
    #[serde(default = "tolerance")]
    pub tolerance_kg: f64,
    /// The `quad_scan` accumulator's name.
    #[serde(default = "result")]
    pub result: String,
    /// Seconds a step may take before it is reported incomplete (also the longest wait for the
    /// readback when restoring).
    #[serde(default = "step_timeout")]
    pub step_timeout_s: f64,
    /// Put the setpoint back to its value before the scan at the end, or when stopped.
    #[serde(default = "yes")]
    pub restore: bool,
    /// The measurement's id in the accumulator (default `qs-` and the start time in ms); no `/`
    /// or white space, so it reads as a path.
    #[serde(default)]
    pub measurement: Option<String>,
}

fn settle() -> f64 {
    1.0
}
fn shots() -> u64 {
    5
}
fn tolerance() -> f64 {
    0.01
}
fn result() -> String {
    "quad_scan".to_owned()
}
fn step_timeout() -> f64 {
    60.0
}
fn yes() -> bool {
    true
}

/// How long the reducer may take to show a measurement opened or closed (it publishes every
/// 250 ms; the parameter travels controller → reducer in milliseconds).
const REDUCER_CONFIRMS: Duration = Duration::from_secs(10);

/// How long the setpoint and readback PVs may take to connect.
const PVS_CONNECT: Duration = Duration::from_secs(10);

/// Parses `A:B:N` into N settings from A to B inclusive; the ends may be negative.
pub fn parse_values(text: &str) -> anyhow::Result<Vec<f64>> {
    let parts: Vec<&str> = text.split(':').collect();
    let [from, to, count] = parts.as_slice() else {
        anyhow::bail!("--values takes FROM:TO:COUNT, e.g. 0.5:4.5:9 or -6:-2:5, got {text:?}");
    };
    let from: f64 = from.trim().parse().context("FROM is not a number")?;
    let to: f64 = to.trim().parse().context("TO is not a number")?;
    let count: usize = count
        .trim()
        .parse()
        .context("COUNT is not a whole number")?;
    anyhow::ensure!(
        from.is_finite() && to.is_finite() && count >= 1,
        "--values {text}: finite ends and a count of at least 1"
    );
    if count == 1 {
        return Ok(vec![from]);
    }
    Ok((0..count)
        .map(|i| from + (to - from) * i as f64 / (count - 1) as f64)
        .collect())
}

/// The readback PV: the one given, or the setpoint's name with its `BCTRL` ending as `BACT`.
/// Anything else is an error: a readback that is the setpoint would make every wait pass.
pub fn readback_pv(setpoint: &str, given: Option<&str>) -> anyhow::Result<String> {
    let readback = match given {
        Some(readback) => readback.trim().to_owned(),
        None => match setpoint.strip_suffix("BCTRL") {
            Some(base) => format!("{base}BACT"),
            None => anyhow::bail!(
                "{setpoint:?} does not end in BCTRL, so its readback cannot be derived: give it (--readback, \"readback\")"
            ),
        },
    };
    anyhow::ensure!(!readback.is_empty(), "the readback PV is empty");
    anyhow::ensure!(
        readback != setpoint.trim(),
        "the readback {readback:?} is the setpoint itself: waiting for it would check nothing"
    );
    Ok(readback)
}

/// Where the driver finds the pipeline and the machine.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The controller's REST address.
    pub controller: SocketAddr,
    /// The reducer's HTTP address.
    pub reducer: SocketAddr,
    /// Where to search for the quad's PVs.
    pub ca: ClientConfig,
}

/// How one step went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepOutcome {
    /// The setpoint, kG.
    pub value: f64,
    /// The readback when the step ended, kG.
    pub readback: f64,
    /// Accepted shots the accumulator holds at this setting.
    pub accepted: u64,
    /// Whether it reached the requested shots.
    pub complete: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Where the quad was put back to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Restored {
    /// The setpoint before the scan, put back, kG.
    pub setpoint: f64,
    /// The readback when the driver stopped waiting, kG.
    pub readback: f64,
    /// Whether the readback came back (within the tolerance of the setpoint or of the readback
    /// before the scan) in time.
    pub arrived: bool,
}

/// What a scan did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanOutcome {
    /// `done`, or `stopped` when asked to stop before its last step.
    pub state: String,
    /// The setpoint PV.
    pub pv: String,
    /// The measurement's id in the accumulator.
    pub measurement: String,
    /// The steps, the one interrupted by a stop included.
    pub steps: Vec<StepOutcome>,
    /// Where the quad went back to, without `restore` none.
    pub restored: Option<Restored>,
    /// The measurement's fit as the accumulator froze it (the same object `beamflow emittance`
    /// prints).
    pub fit: Value,
}

/// The driver's state, for `GET /api/v1/scan/quad` and the CLI's log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// `idle`, `running`, `stopping`, `done`, `stopped` or `failed`.
    pub state: String,
    /// The request being run.
    pub request: Option<QuadScanRequest>,
    /// The measurement's id, once it opened.
    pub measurement: Option<String>,
    /// Steps finished.
    pub steps: Vec<StepOutcome>,
    /// What it is doing now, or why it failed.
    pub message: String,
    /// Where the quad went back to.
    pub restored: Option<Restored>,
    /// The measurement's fit at the end (partial when stopped).
    pub fit: Option<Value>,
}

/// Shared progress.
pub type SharedProgress = Arc<Mutex<Progress>>;

fn update(progress: &SharedProgress, change: impl FnOnce(&mut Progress)) {
    change(&mut progress.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Asks a running scan to stop: it stops stepping, closes its measurement, restores the quad and
/// reports. Clones share one flag.
#[derive(Clone, Default)]
pub struct ScanStop(Arc<StopShared>);

#[derive(Default)]
struct StopShared {
    stopped: Mutex<bool>,
    changed: Condvar,
    rescue: Mutex<Rescue>,
}

/// What [`ScanStop::rescue`] needs: set as the scan gets there, cleared once done properly.
#[derive(Default, Clone)]
struct Rescue {
    /// The quad's put channel, its client's runtime and the setting to put back.
    restore: Option<(tokio::sync::mpsc::Sender<Put>, tokio::runtime::Handle, f64)>,
    /// The controller and the parameter to empty while a measurement is open.
    close: Option<(SocketAddr, String)>,
}

impl ScanStop {
    /// A flag not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the scan to stop; it goes on to close, restore and report.
    pub fn stop(&self) {
        *self
            .0
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.0.changed.notify_all();
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        *self
            .0
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps for `duration` unless stopped first; false when stopped.
    fn sleep(&self, duration: Duration) -> bool {
        let guard = self
            .0
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .0
            .changed
            .wait_timeout_while(guard, duration, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        !*guard
    }

    fn set_rescue(&self, change: impl FnOnce(&mut Rescue)) {
        change(&mut self.0.rescue.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The last resort when the process must exit now (a second Ctrl-C): one put of the
    /// setting before the scan, waiting at most 2 s for the server to take it but not for the
    /// readback, and the measurement closed. Returns a line per thing it did or failed to do.
    /// Call it from outside any async runtime.
    pub fn rescue(&self) -> Vec<String> {
        let rescue = self
            .0
            .rescue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut done = Vec::new();
        if let Some((puts, runtime, value)) = rescue.restore {
            let (answer_tx, answer) = tokio::sync::oneshot::channel();
            let put = Put {
                pv: 0,
                value,
                done: answer_tx,
            };
            let answered = puts
                .try_send(put)
                .map_err(|_| "the CA client is busy or gone".to_owned())
                .and_then(|()| {
                    // The timer is made inside the runtime: it needs the runtime's clock.
                    runtime
                        .block_on(async {
                            tokio::time::timeout(Duration::from_secs(2), answer).await
                        })
                        .map_err(|_| "no answer within 2 s".to_owned())?
                        .map_err(|_| "the CA client stopped".to_owned())?
                        .map_err(|error| error.to_string())
                });
            done.push(match answered {
                Ok(()) => {
                    format!("Put the quad back to {value} kG (not waiting for its readback).")
                }
                Err(why) => format!("Could not put the quad back to {value} kG: {why}."),
            });
        }
        if let Some((controller, parameter)) = rescue.close {
            let closed = http_within(
                controller,
                "POST",
                &format!("/api/v1/parameter/{parameter}"),
                "",
                Duration::from_secs(2),
            );
            done.push(match closed {
                Ok((200, _)) => "Closed the measurement.".to_owned(),
                Ok((status, body)) => format!("Could not close the measurement: {status} {body}"),
                Err(error) => format!("Could not close the measurement: {error:#}"),
            });
        }
        done
    }
}

/// Runs the scan; blocks until it is done or stopped and restored. `say` receives a line for
/// the operator at each stage. The outcome is also left in `progress`.
pub fn run(
    request: &QuadScanRequest,
    endpoints: &Endpoints,
    progress: &SharedProgress,
    stop: &ScanStop,
    say: &dyn Fn(&str),
) -> anyhow::Result<ScanOutcome> {
    update(progress, |p| {
        *p = Progress {
            state: "running".to_owned(),
            request: Some(request.clone()),
            message: "checking the pipeline and the PVs".to_owned(),
            ..Progress::default()
        };
    });
    let outcome = drive(request, endpoints, progress, stop, say);
    update(progress, |p| match &outcome {
        Ok(outcome) => {
            p.state.clone_from(&outcome.state);
            p.message.clone_from(&outcome.state);
            p.fit = Some(outcome.fit.clone());
        }
        Err(error) => {
            p.state = "failed".to_owned();
            p.message = format!("{error:#}");
        }
    });
    outcome
}

fn validate(request: &QuadScanRequest) -> anyhow::Result<()> {
    anyhow::ensure!(!request.values.is_empty(), "no values to scan");
    anyhow::ensure!(
        (0.0..=3600.0).contains(&request.settle_s),
        "settle_s must be 0 to 3600 s, got {}",
        request.settle_s
    );
    anyhow::ensure!(
        request.step_timeout_s > 0.0 && request.step_timeout_s <= 86_400.0,
        "step_timeout_s must be above 0 and at most a day, got {}",
        request.step_timeout_s
    );
    anyhow::ensure!(
        request.tolerance_kg.is_finite() && request.tolerance_kg > 0.0,
        "tolerance_kg must be a positive number, got {}",
        request.tolerance_kg
    );
    anyhow::ensure!(request.shots >= 1, "shots must be at least 1");
    anyhow::ensure!(
        request.values.iter().all(|v| v.is_finite()),
        "values must be finite numbers"
    );
    if let Some(id) = &request.measurement {
        anyhow::ensure!(
            !id.is_empty()
                && id.len() <= 100
                && !id.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control()),
            "the measurement id {id:?} must be 1 to 100 characters without '/' or white space"
        );
    }
    Ok(())
}

/// The reducer's `quad_scan` accumulator as the driver needs it: its measurement parameter.
fn check_pipeline(request: &QuadScanRequest, endpoints: &Endpoints) -> anyhow::Result<String> {
    let (status, body) = http(endpoints.controller, "GET", "/api/v1/config", "")
        .context("the controller does not answer; nothing was put")?;
    anyhow::ensure!(
        status == 200,
        "the controller at {} answers {status} to /api/v1/config: {body}",
        endpoints.controller
    );
    let (status, body) = http(
        endpoints.reducer,
        "GET",
        &format!("/api/v1/result/{}", request.result),
        "",
    )
    .context("the reducer does not answer; nothing was put")?;
    if status == 404 {
        let names = http(endpoints.reducer, "GET", "/api/v1/result", "")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|state| {
                state
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
            })
            .unwrap_or_default();
        anyhow::bail!(
            "the reducer at {} has no accumulator {:?} (it has: {}; is a pipeline scan running?)",
            endpoints.reducer,
            request.result,
            names.join(", ")
        );
    }
    anyhow::ensure!(
        status == 200,
        "the reducer at {} answers {status}: {body}",
        endpoints.reducer
    );
    let view: Value = serde_json::from_str(&body).context("the reducer's view")?;
    let Some(parameter) = view["measurement_parameter"].as_str() else {
        anyhow::bail!(
            "the reducer's {:?} is not a quad_scan accumulator (no measurement_parameter in its view)",
            request.result
        );
    };
    if let Some(open) = view["live"]["id"].as_str() {
        anyhow::bail!(
            "measurement {open:?} is open in {:?}: another quad scan runs (or was killed; empty the parameter {parameter} to close it)",
            request.result
        );
    }
    Ok(parameter.to_owned())
}

fn drive(
    request: &QuadScanRequest,
    endpoints: &Endpoints,
    progress: &SharedProgress,
    stop: &ScanStop,
    say: &dyn Fn(&str),
) -> anyhow::Result<ScanOutcome> {
    validate(request)?;
    let readback = readback_pv(&request.pv, request.readback.as_deref())?;
    let parameter = check_pipeline(request, endpoints)?;
    let mut quad =
        Quad::connect(&endpoints.ca, &request.pv, &readback).context("nothing was put")?;
    let (original, original_readback) = (quad.setpoint, quad.readback);
    if request.restore {
        let handle = quad.runtime.handle().clone();
        stop.set_rescue(|r| r.restore = Some((quad.puts.clone(), handle, original)));
    }
    let id = request.measurement.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("qs-{ms}")
    });
    say(&format!(
        "{} is at {original} kG (readback {original_readback} kG); measurement {id}.",
        request.pv
    ));
    let mut opened = false;
    let mut steps = Vec::new();
    let scanned = (|| -> anyhow::Result<()> {
        // At the first setting before the measurement opens: the ramp there is not a step.
        let first = request.values[0];
        update(progress, |p| p.message = format!("moving to {first} kG"));
        quad.put(first)?;
        let deadline = Instant::now() + Duration::from_secs_f64(request.step_timeout_s);
        if quad.wait_readback(&[first], request.tolerance_kg, deadline, Some(stop)) {
            stop.sleep(Duration::from_secs_f64(request.settle_s));
        }
        if stop.is_stopped() {
            return Ok(());
        }
        update(progress, |p| {
            p.message = "opening the measurement".to_owned()
        });
        stop.set_rescue(|r| r.close = Some((endpoints.controller, parameter.clone())));
        set_parameter(endpoints.controller, &parameter, &id)?;
        opened = true;
        await_reducer(
            endpoints.reducer,
            &format!("{}/live/id", request.result),
            |v| v.as_str() == Some(&id),
        )
        .context("the reducer did not open the measurement")?;
        update(progress, |p| p.measurement = Some(id.clone()));
        for (index, &value) in request.values.iter().enumerate() {
            if stop.is_stopped() {
                break;
            }
            update(progress, |p| {
                p.message = format!("step {} of {}: {value} kG", index + 1, request.values.len());
            });
            let outcome = step(&mut quad, request, endpoints, value, stop)?;
            say(&format!(
                "Step {} of {} at {value} kG: {} accepted shots{}.",
                index + 1,
                request.values.len(),
                outcome.accepted,
                outcome
                    .problem
                    .as_ref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            ));
            tracing::debug!(?outcome, "Quad-scan step done.");
            steps.push(outcome.clone());
            update(progress, |p| p.steps.push(outcome));
        }
        Ok(())
    })();
    let stopped = stop.is_stopped();
    if stopped {
        say("Stopping: closing the measurement and putting the quad back.");
        update(progress, |p| p.state = "stopping".to_owned());
    }
    // Closed before the quad moves back, so the way back is in no step; waited for, so the fit
    // read next is the frozen one.
    let frozen = if opened {
        update(progress, |p| {
            p.message = "closing the measurement".to_owned()
        });
        let closed = set_parameter(endpoints.controller, &parameter, "").and_then(|()| {
            await_reducer(
                endpoints.reducer,
                &format!("{}/measurements/{id}", request.result),
                |v| v.is_object(),
            )
        });
        if closed.is_ok() {
            stop.set_rescue(|r| r.close = None);
        }
        Some(closed.context("the measurement did not close"))
    } else {
        None
    };
    let restored = if request.restore {
        update(progress, |p| {
            p.message = format!("putting the quad back to {original} kG")
        });
        let restored = quad.put(original).map(|()| {
            let deadline = Instant::now() + Duration::from_secs_f64(request.step_timeout_s);
            let arrived = quad.wait_readback(
                &[original, original_readback],
                request.tolerance_kg,
                deadline,
                None,
            );
            Restored {
                setpoint: original,
                readback: quad.readback,
                arrived,
            }
        });
        match restored {
            Ok(restored) => {
                stop.set_rescue(|r| r.restore = None);
                say(&format!(
                    "{} is back at {original} kG (readback {} kG{}).",
                    request.pv,
                    restored.readback,
                    if restored.arrived {
                        ""
                    } else {
                        ", not there yet"
                    }
                ));
                update(progress, |p| p.restored = Some(restored.clone()));
                Some(restored)
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), original, pv = %request.pv, "Could not put the quad back.");
                say(&format!(
                    "Could not put {} back to {original} kG: {error:#}",
                    request.pv
                ));
                None
            }
        }
    } else {
        None
    };
    scanned?;
    let Some(frozen) = frozen else {
        anyhow::bail!("stopped before the measurement opened; no shots were taken");
    };
    let frozen = frozen?;
    Ok(ScanOutcome {
        state: if stopped { "stopped" } else { "done" }.to_owned(),
        pv: request.pv.clone(),
        measurement: id,
        steps,
        restored,
        fit: frozen["fit"].clone(),
    })
}

/// Sets a controller parameter; the controller passes it on to the reducer.
fn set_parameter(controller: SocketAddr, name: &str, value: &str) -> anyhow::Result<()> {
    let (status, body) = http(
        controller,
        "POST",
        &format!("/api/v1/parameter/{name}"),
        value,
    )?;
    anyhow::ensure!(
        status == 200,
        "the controller refused the parameter {name}: {status} {body}"
    );
    Ok(())
}

/// Polls the reducer's view at `path` until `ok` holds; returns that value.
fn await_reducer(
    reducer: SocketAddr,
    path: &str,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + REDUCER_CONFIRMS;
    loop {
        let (status, body) = http(reducer, "GET", &format!("/api/v1/result/{path}"), "")?;
        if status == 200
            && let Ok(value) = serde_json::from_str::<Value>(&body)
            && ok(&value)
        {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the reducer did not show {path} within {} s",
            REDUCER_CONFIRMS.as_secs()
        );
        // The reducer publishes its view every 250 ms; polling is all its HTTP offers.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn step(
    quad: &mut Quad,
    request: &QuadScanRequest,
    endpoints: &Endpoints,
    value: f64,
    stop: &ScanStop,
) -> anyhow::Result<StepOutcome> {
    quad.put(value)?;
    let deadline = Instant::now() + Duration::from_secs_f64(request.step_timeout_s);
    let arrived = quad.wait_readback(&[value], request.tolerance_kg, deadline, Some(stop));
    let incomplete = |quad: &Quad, accepted, problem: String| StepOutcome {
        value,
        readback: quad.readback,
        accepted,
        complete: false,
        problem: Some(problem),
    };
    if stop.is_stopped() {
        return Ok(incomplete(quad, 0, "stopped".to_owned()));
    }
    if !arrived {
        return Ok(incomplete(
            quad,
            0,
            format!("the readback stayed at {} kG", quad.readback),
        ));
    }
    // Settling: the magnet's field follows its readback with a delay; a pause, not a sync.
    stop.sleep(Duration::from_secs_f64(request.settle_s));
    loop {
        let accepted = accepted_at(
            endpoints.reducer,
            &request.result,
            value,
            request.tolerance_kg,
        )?;
        if accepted >= request.shots {
            return Ok(StepOutcome {
                value,
                readback: quad.readback,
                accepted,
                complete: true,
                problem: None,
            });
        }
        if stop.is_stopped() {
            return Ok(incomplete(quad, accepted, "stopped".to_owned()));
        }
        if Instant::now() > deadline {
            return Ok(incomplete(
                quad,
                accepted,
                format!("{accepted} of {} accepted shots in time", request.shots),
            ));
        }
        // Polling the reducer's view, which it publishes a few times a second.
        stop.sleep(Duration::from_millis(100));
    }
}

/// Accepted shots at `value` in the open measurement's steps.
fn accepted_at(
    reducer: SocketAddr,
    result: &str,
    value: f64,
    tolerance: f64,
) -> anyhow::Result<u64> {
    let (status, body) = http(
        reducer,
        "GET",
        &format!("/api/v1/result/{result}/live/steps"),
        "",
    )?;
    if status == 404 {
        return Ok(0);
    }
    anyhow::ensure!(status == 200, "reducer: {status} {body}");
    let steps: Value = serde_json::from_str(&body)?;
    Ok(steps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["bctrl_kg"]
                .as_f64()
                .is_some_and(|b| (b - value).abs() <= tolerance)
        })
        .filter_map(|s| s["accepted"].as_u64())
        .sum())
}

/// The fit as a short table for people: per plane εn ± its χ²-scaled error, β, α, the smallest
/// BMAG and χ²/dof, then the fit's warnings.
pub fn fit_summary(fit: &Value) -> String {
    let number = |v: &Value, digits: usize| match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".to_owned(),
    };
    let mut out = format!(
        "{:<6}{:>22}{:>10}{:>9}{:>8}{:>9}\n",
        "plane", "εn (µm)", "β (m)", "α", "BMAG", "χ²/dof"
    );
    for plane in ["x", "y"] {
        let p = &fit[plane];
        if let Some(error) = p["error"].as_str() {
            out.push_str(&format!("{plane:<6}not fitted: {error}\n"));
            continue;
        }
        let micro = |v: &Value| Value::from(v.as_f64().map(|x| x * 1e6));
        let error = micro(&p["errors_chi2_scaled"]["norm_emit"]);
        // Two significant digits of the error, and the value to the same place: a clean
        // simulated scan's 0.0003 µm must not print as "± 0.000".
        let digits = error
            .as_f64()
            .filter(|e| e.is_finite() && *e > 0.0)
            .map_or(3, |e| (1 - e.log10().floor() as i64).clamp(3, 6) as usize);
        let emit = format!(
            "{} ± {}",
            number(&micro(&p["norm_emit"]), digits),
            number(&error, digits)
        );
        out.push_str(&format!(
            "{plane:<6}{emit:>22}{:>10}{:>9}{:>8}{:>9}\n",
            number(&p["beta"], 3),
            number(&p["alpha"], 3),
            number(&p["bmag"]["min"], 3),
            number(&p["reduced_chi2"], 2),
        ));
    }
    for warning in fit["warnings"].as_array().into_iter().flatten() {
        if let Some(warning) = warning.as_str() {
            out.push_str(&format!("warning: {warning}\n"));
        }
    }
    out
}

/// The quad over Channel Access: setpoint written, readback followed.
struct Quad {
    runtime: tokio::runtime::Runtime,
    puts: tokio::sync::mpsc::Sender<Put>,
    events: std::sync::mpsc::Receiver<MonitorEvent>,
    setpoint: f64,
    readback: f64,
}

impl Quad {
    fn connect(ca: &ClientConfig, pv: &str, readback: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (events_tx, events) = std::sync::mpsc::channel();
        let (puts, puts_rx) = tokio::sync::mpsc::channel(4);
        runtime.spawn(monitor_and_put(
            ca.clone(),
            vec![pv.to_owned(), readback.to_owned()],
            puts_rx,
            move |event| {
                let _ = events_tx.send(event);
            },
        ));
        let mut quad = Self {
            runtime,
            puts,
            events,
            setpoint: f64::NAN,
            readback: f64::NAN,
        };
        let deadline = Instant::now() + PVS_CONNECT;
        while quad.setpoint.is_nan() || quad.readback.is_nan() {
            if !quad.next_event(deadline) && Instant::now() >= deadline {
                let missing: Vec<&str> = [(pv, quad.setpoint), (readback, quad.readback)]
                    .into_iter()
                    .filter(|(_, v)| v.is_nan())
                    .map(|(name, _)| name)
                    .collect();
                anyhow::bail!(
                    "{} did not answer within {} s (EPICS_CA_ADDR_LIST?)",
                    missing.join(" and "),
                    PVS_CONNECT.as_secs()
                );
            }
        }
        Ok(quad)
    }

    /// Takes the next event before `deadline`; false when none came.
    fn next_event(&mut self, deadline: Instant) -> bool {
        match self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(MonitorEvent::Update { pv, value }) => {
                let number = numbers(&value.values).first().copied().unwrap_or(f64::NAN);
                match pv {
                    0 => self.setpoint = number,
                    _ => self.readback = number,
                }
                true
            }
            Ok(_) => true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The client is gone: nothing will come, but the caller's deadline still holds.
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                false
            }
        }
    }

    fn put(&mut self, value: f64) -> anyhow::Result<()> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.puts
            .blocking_send(Put { pv: 0, value, done })
            .map_err(|_| anyhow::anyhow!("the CA client stopped"))?;
        self.runtime
            .block_on(answer)
            .map_err(|_| anyhow::anyhow!("the CA client stopped"))?
            .map_err(|why| anyhow::anyhow!("writing {value}: {why}"))
    }

    /// Follows the readback until it is within `tolerance` of one of `values`; false at
    /// `deadline` or once `stop` is raised.
    fn wait_readback(
        &mut self,
        values: &[f64],
        tolerance: f64,
        deadline: Instant,
        stop: Option<&ScanStop>,
    ) -> bool {
        // A NaN readback is never within the tolerance: it has not arrived.
        let there = |readback: f64| values.iter().any(|v| (readback - v).abs() <= tolerance);
        while !there(self.readback) {
            if stop.is_some_and(ScanStop::is_stopped) {
                return false;
            }
            // Woken at least every 100 ms to see a stop.
            let wake = deadline.min(Instant::now() + Duration::from_millis(100));
            if !self.next_event(wake) && Instant::now() >= deadline {
                return false;
            }
        }
        true
    }
}

/// A plain HTTP/1.1 request; returns the status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    http_within(addr, method, path, body, Duration::from_secs(30))
}

/// [`http`] with a time limit on connecting (5 s at most) and on each read.
fn http_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    limit: Duration,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, limit.min(Duration::from_secs(5)))
        .with_context(|| format!("cannot reach http://{addr}"))?;
    stream.set_read_timeout(Some(limit))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("http://{addr}{path}: not an HTTP answer"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let body = &response[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("http://{addr}{path}: no status"))?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of a chunked answer; stops at the last chunk or at anything malformed.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[line_end + 2..];
        let Some(size) = size.filter(|&n| n > 0 && n <= rest.len()) else {
            break;
        };
        out.extend_from_slice(&rest[..size]);
        body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_from_to_count_inclusive() {
        assert_eq!(
            parse_values("0.5:4.5:9").unwrap(),
            [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
        );
        assert_eq!(parse_values("-1:1:1").unwrap(), [-1.0]);
        assert!(parse_values("1:2").is_err());
        assert!(parse_values("1:x:3").is_err());
    }

    #[test]
    fn values_may_be_negative() {
        assert_eq!(
            parse_values("-6:-2:5").unwrap(),
            [-6.0, -5.0, -4.0, -3.0, -2.0]
        );
        assert_eq!(parse_values("-4:-2:3").unwrap(), [-4.0, -3.0, -2.0]);
        assert_eq!(parse_values("-1:1:3").unwrap(), [-1.0, 0.0, 1.0]);
        assert!(parse_values("-1:-inf:3").is_err());
        assert!(parse_values("--1:1:3").is_err());
    }

    #[test]
    fn the_readback_is_derived_from_bctrl_only_and_never_the_setpoint() {
        assert_eq!(
            readback_pv("QUAD:IN20:525:BCTRL", None).unwrap(),
            "QUAD:IN20:525:BACT"
        );
        assert_eq!(readback_pv("MAG:SET", Some("MAG:RBV")).unwrap(), "MAG:RBV");
        let no_bctrl = readback_pv("MAG:SET", None).unwrap_err().to_string();
        assert!(no_bctrl.contains("--readback"), "{no_bctrl}");
        assert!(readback_pv("MAG:SET", Some("MAG:SET")).is_err());
        assert!(readback_pv("MAG:SET", Some(" ")).is_err());
    }

    #[test]
    fn measurement_ids_read_as_paths() {
        let request = |id: &str| QuadScanRequest {
            measurement: Some(id.to_owned()),
            ..serde_json::from_value(serde_json::json!({"pv": "Q:BCTRL", "values": [1.0]})).unwrap()
        };
        assert!(validate(&request("qs-1")).is_ok());
        assert!(validate(&request("a/b")).is_err());
        assert!(validate(&request("a b")).is_err());
        assert!(validate(&request("")).is_err());
        let defaults = request("qs-1");
        assert!(defaults.restore, "restoring is the default");
    }

    #[test]
    fn the_summary_is_a_row_per_plane() {
        let fit = serde_json::json!({
            "x": {"norm_emit": 0.5e-6, "errors_chi2_scaled": {"norm_emit": 0.012e-6},
                  "beta": 10.0, "alpha": -1.0, "bmag": {"min": 1.02}, "reduced_chi2": 0.8},
            "y": {"error": "fewer than 3 settings", "points": []},
            "warnings": ["y: fewer than 3 settings"],
        });
        let summary = fit_summary(&fit);
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines.len(), 4, "{summary}");
        assert!(lines[0].starts_with("plane"), "{summary}");
        for part in ["0.500 ± 0.012", "10.000", "-1.000", "1.020", "0.80"] {
            assert!(lines[1].contains(part), "{part} in {summary}");
        }
        assert!(lines[2].contains("not fitted: fewer than 3 settings"));
        assert_eq!(lines[3], "warning: y: fewer than 3 settings");
    }

    #[test]
    fn a_small_error_keeps_two_significant_digits() {
        let fit = serde_json::json!({
            "x": {"norm_emit": 0.500053e-6, "errors_chi2_scaled": {"norm_emit": 0.00031e-6}},
            "y": {"norm_emit": 0.4e-6, "errors_chi2_scaled": {"norm_emit": 0.05e-6}},
        });
        let summary = fit_summary(&fit);
        assert!(summary.contains("0.50005 ± 0.00031"), "{summary}");
        assert!(summary.contains("0.400 ± 0.050"), "{summary}");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"), b"abcdef");
        // A chunk may end inside a multi-byte character: bytes are joined, then decoded.
        let sigma = "σ".as_bytes();
        let body = [
            b"1\r\n".as_slice(),
            &sigma[..1],
            b"\r\n1\r\n",
            &sigma[1..],
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(dechunk(&body), sigma);
    }
}

/// The controller's `/api/v1/scan/quad`: one driver at a time, run on its own thread.
#[derive(Clone, Default)]
pub struct ScanService {
    progress: SharedProgress,
    endpoints: Arc<Mutex<Option<Endpoints>>>,
    /// The running scan's stop.
    stop: Arc<Mutex<ScanStop>>,
}

impl ScanService {
    /// Where scans find the pipeline and the machine (known once everything is bound).
    pub fn set_endpoints(&self, endpoints: Endpoints) {
        *self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(endpoints);
    }

    /// The reducer's address, when it is learnt after the controller started.
    pub fn set_reducer(&self, reducer: SocketAddr) {
        if let Some(endpoints) = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            endpoints.reducer = reducer;
        }
    }

    /// Stops a running scan as `DELETE` does and waits up to `patience` for it to close its
    /// measurement and restore the quad; whether it did. For a shutdown of the process that
    /// runs it: the magnet must not be left at an intermediate setting.
    pub fn stop_and_wait(&self, patience: Duration) -> bool {
        let state = || {
            self.progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state
                .clone()
        };
        if !matches!(state().as_str(), "running" | "stopping") {
            return true;
        }
        tracing::warn!(
            "Stopping the running quad scan before shutting down; the quad is restored."
        );
        self.stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop();
        let deadline = Instant::now() + patience;
        while matches!(state().as_str(), "running" | "stopping") {
            if Instant::now() >= deadline {
                return false;
            }
            // The driver runs on its own thread and reports through its progress.
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// `POST /api/v1/scan/quad` (a [`QuadScanRequest`]; 202, 409 while one runs),
    /// `GET /api/v1/scan/quad` ([`Progress`]) and `DELETE /api/v1/scan/quad` (stops the running
    /// scan, which then closes its measurement and restores the quad; 202, 409 when none runs).
    pub fn router(self) -> axum::Router {
        use axum::routing::get;
        axum::Router::new()
            .route(
                "/api/v1/scan/quad",
                get(scan_progress).post(start_scan).delete(stop_scan),
            )
            .with_state(self)
    }
}

async fn scan_progress(
    axum::extract::State(service): axum::extract::State<ScanService>,
) -> axum::Json<Progress> {
    axum::Json(
        service
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    )
}

async fn stop_scan(
    axum::extract::State(service): axum::extract::State<ScanService>,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    use axum::http::StatusCode;
    let mut progress = service
        .progress
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match progress.state.as_str() {
        "running" => {
            progress.state = "stopping".to_owned();
            service
                .stop
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stop();
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "stopping": true })),
            )
        }
        "stopping" => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "stopping": true })),
        ),
        _ => (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({ "detail": "no quad scan is running" })),
        ),
    }
}

async fn start_scan(
    axum::extract::State(service): axum::extract::State<ScanService>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    use axum::http::StatusCode;
    let detail = |status, text: String| (status, axum::Json(serde_json::json!({ "detail": text })));
    // JSON whatever the Content-Type says, as the controller's other endpoints take it.
    let request: QuadScanRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return detail(
                StatusCode::BAD_REQUEST,
                format!("quad scan request: {error}"),
            );
        }
    };
    let Some(endpoints) = service
        .endpoints
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    else {
        return detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller is still starting".to_owned(),
        );
    };
    {
        let mut progress = service
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if matches!(progress.state.as_str(), "running" | "stopping") {
            return detail(StatusCode::CONFLICT, "a quad scan is running".to_owned());
        }
        progress.state = "running".to_owned();
    }
    let stop = ScanStop::new();
    *service.stop.lock().unwrap_or_else(PoisonError::into_inner) = stop.clone();
    let progress = service.progress.clone();
    let spawned = std::thread::Builder::new()
        .name("quad-scan".to_owned())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&request, &endpoints, &progress, &stop, &|line| {
                    tracing::debug!(line, "Quad scan.");
                })
            }));
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(error = %format!("{error:#}"), "Quad scan failed.")
                }
                Err(_) => update(&progress, |p| {
                    p.state = "failed".to_owned();
                    p.message = "the scan driver panicked".to_owned();
                }),
            }
        });
    match spawned {
        Ok(_) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "started": true })),
        ),
        Err(error) => {
            service
                .progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state = "failed".to_owned();
            detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start the scan: {error}"),
            )
        }
    }
}
