//! The driver: checks the pipeline and the quad, steps the quad over Channel Access, follows
//! the accumulator's progress over the reducer's HTTP view, and leaves the machine as it found
//! it (see the module above).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use beamflow_ca::client::{ClientConfig, Command, MonitorEvent, Put, ReadControl, monitor_and_put};
use beamflow_ca::convert::numbers;
use beamflow_net::token::Token;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::WRITABLE_PATH;
use super::limits::{AllowedRange, ScanDriverConfig, WritableLimits};
use super::request::{QuadScanRequest, readback_pv, validate};
use super::{Context as _, ScanError, bail, ensure};

/// How long the reducer may take to show a measurement opened or closed (it publishes every
/// 250 ms; the parameter travels controller → reducer in milliseconds).
const REDUCER_CONFIRMS: Duration = Duration::from_secs(10);

/// How long the setpoint and readback PVs may take to connect, and the setpoint's server to
/// answer the read of its control limits.
const PVS_CONNECT: Duration = Duration::from_secs(10);

/// Where the driver finds the pipeline and the machine.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The controller's REST address.
    pub controller: SocketAddr,
    /// The reducer's HTTP address.
    pub reducer: SocketAddr,
    /// Where to search for the quad's PVs.
    pub ca: ClientConfig,
    /// The bearer token the controller's and reducer's HTTP servers take.
    pub token: Option<Token>,
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
    /// Scans refused so far by what the pipeline allows: a PV not listed, or a value outside
    /// the range it may be put in. Kept from one scan to the next.
    pub refused: u64,
}

/// Shared progress.
pub type SharedProgress = Arc<Mutex<Progress>>;

pub(crate) fn update(progress: &SharedProgress, change: impl FnOnce(&mut Progress)) {
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
    /// The quad's command channel, its client's runtime, the setting to put back and the range
    /// it is checked against once more.
    restore: Option<(
        tokio::sync::mpsc::Sender<Command>,
        tokio::runtime::Handle,
        f64,
        AllowedRange,
    )>,
    /// The controller and the parameter to empty while a measurement is open.
    close: Option<(SocketAddr, Option<Token>, String)>,
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
        if let Some((puts, runtime, value, range)) = rescue.restore {
            let (answer_tx, answer) = tokio::sync::oneshot::channel();
            let put = Command::Put(Put {
                pv: 0,
                value,
                done: answer_tx,
            });
            let answered = range
                .check("the setting before the scan", value)
                .map_err(|error| error.to_string())
                .and_then(|()| {
                    puts.try_send(put)
                        .map_err(|_| "the CA client is busy or gone".to_owned())
                })
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
        if let Some((controller, token, parameter)) = rescue.close {
            let closed = post(
                controller,
                token.as_ref(),
                &format!("/api/v1/parameter/{parameter}"),
                "",
                Duration::from_secs(2),
            );
            done.push(match closed {
                Ok((200, _)) => "Closed the measurement.".to_owned(),
                Ok((status, body)) => format!("Could not close the measurement: {status} {body}"),
                Err(error) => format!("Could not close the measurement: {error}"),
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
) -> Result<ScanOutcome, ScanError> {
    update(progress, |p| {
        *p = Progress {
            state: "running".to_owned(),
            request: Some(request.clone()),
            message: "checking the pipeline and the PVs".to_owned(),
            refused: p.refused,
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
            p.message = error.to_string();
            if error.is_refusal() {
                p.refused += 1;
            }
        }
    });
    outcome
}

/// The reducer's `quad_scan` accumulator as the driver needs it: its measurement parameter.
fn check_pipeline(request: &QuadScanRequest, endpoints: &Endpoints) -> Result<String, ScanError> {
    let (status, body) = get(
        endpoints.controller,
        endpoints.token.as_ref(),
        "/api/v1/config",
    )
    .context("the controller does not answer; nothing was put")?;
    ensure!(
        Answer,
        status == 200,
        "the controller at {} answers {status} to /api/v1/config: {body}",
        endpoints.controller
    );
    let (status, body) = get(
        endpoints.reducer,
        endpoints.token.as_ref(),
        &format!("/api/v1/result/{}", request.result),
    )
    .context("the reducer does not answer; nothing was put")?;
    if status == 404 {
        let names = get(
            endpoints.reducer,
            endpoints.token.as_ref(),
            "/api/v1/result",
        )
        .ok()
        .and_then(|(_, body)| serde_json::from_str::<BTreeMap<String, IgnoredAny>>(&body).ok())
        .map(|state| state.into_keys().collect::<Vec<_>>())
        .unwrap_or_default();
        bail!(
            Answer,
            "the reducer at {} has no accumulator {:?} (it has: {}; is a pipeline scan running?)",
            endpoints.reducer,
            request.result,
            names.join(", ")
        );
    }
    ensure!(
        Answer,
        status == 200,
        "the reducer at {} answers {status}: {body}",
        endpoints.reducer
    );
    let view: Value = serde_json::from_str(&body)
        .map_err(|error| ScanError::Answer(format!("the reducer's view: {error}")))?;
    // Any other accumulator's view reads as one without the parameter.
    let view: QuadScanView = serde_json::from_value(view).unwrap_or_default();
    let Some(parameter) = view.measurement_parameter else {
        bail!(
            Answer,
            "the reducer's {:?} is not a quad_scan accumulator (no measurement_parameter in its view)",
            request.result
        );
    };
    if let Some(open) = view.live.and_then(|live| live.id) {
        bail!(
            Answer,
            "measurement {open:?} is open in {:?}: another quad scan runs (or was killed; empty the parameter {parameter} to close it)",
            request.result
        );
    }
    Ok(parameter)
}

fn drive(
    request: &QuadScanRequest,
    endpoints: &Endpoints,
    progress: &SharedProgress,
    stop: &ScanStop,
    say: &dyn Fn(&str),
) -> Result<ScanOutcome, ScanError> {
    validate(request)?;
    let readback = readback_pv(&request.pv, request.readback.as_deref())?;
    // The allow-list before anything else reaches out: a PV not listed meets no CA connection.
    let configured =
        writable(endpoints.controller, endpoints.token.as_ref())?.limits_of(&request.pv)?;
    let parameter = check_pipeline(request, endpoints)?;
    let mut quad =
        Quad::connect(&endpoints.ca, &request.pv, &readback).context("nothing was put")?;
    let (original, original_readback) = (quad.setpoint, quad.readback);
    let range = quad.allow(configured, request)?;
    say(&format!(
        "{} may be put within [{}, {}] ({}).",
        request.pv, range.low, range.high, range.from
    ));
    if request.restore {
        let handle = quad.runtime.handle().clone();
        stop.set_rescue(|r| r.restore = Some((quad.puts.clone(), handle, original, range)));
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
    let scanned = (|| -> Result<(), ScanError> {
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
        stop.set_rescue(|r| {
            r.close = Some((
                endpoints.controller,
                endpoints.token.clone(),
                parameter.clone(),
            ))
        });
        set_parameter(endpoints, &parameter, &id)?;
        opened = true;
        await_reducer(
            endpoints,
            &format!("{}/live/id", request.result),
            |open: &Option<String>| open.as_deref() == Some(&id),
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
        let closed = set_parameter(endpoints, &parameter, "").and_then(|()| {
            await_reducer(
                endpoints,
                &format!("{}/measurements/{id}", request.result),
                |_: &FrozenMeasurement| true,
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
                tracing::error!(%error, original, pv = %request.pv, "Could not put the quad back.");
                say(&format!(
                    "Could not put {} back to {original} kG: {error}",
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
        bail!(
            Answer,
            "stopped before the measurement opened; no shots were taken"
        );
    };
    let frozen = frozen?;
    Ok(ScanOutcome {
        state: if stopped { "stopped" } else { "done" }.to_owned(),
        pv: request.pv.clone(),
        measurement: id,
        steps,
        restored,
        fit: frozen.fit,
    })
}

/// What the controller lets scans write (`GET /api/v1/scan/writable`: its pipeline's
/// `[controller.scan]`). Asked even by the driver the controller runs itself, so that the
/// command and the API obey one list, the controller's.
fn writable(controller: SocketAddr, token: Option<&Token>) -> Result<ScanDriverConfig, ScanError> {
    let (status, body) = get(controller, token, WRITABLE_PATH)
        .context("the controller does not answer; nothing was put")?;
    ensure!(
        Answer,
        status == 200,
        "the controller at {controller} answers {status} to {WRITABLE_PATH}, so it does not say which PVs scans may write (is it older than this command?); nothing was put: {body}"
    );
    serde_json::from_str(&body).map_err(|error| {
        ScanError::Answer(format!(
            "the controller's {WRITABLE_PATH}: {error}; nothing was put"
        ))
    })
}

/// Sets a controller parameter; the controller passes it on to the reducer.
fn set_parameter(endpoints: &Endpoints, name: &str, value: &str) -> Result<(), ScanError> {
    let (status, body) = post(
        endpoints.controller,
        endpoints.token.as_ref(),
        &format!("/api/v1/parameter/{name}"),
        value,
        HTTP_LIMIT,
    )?;
    ensure!(
        Answer,
        status == 200,
        "the controller refused the parameter {name}: {status} {body}"
    );
    Ok(())
}

/// Polls the reducer's view at `path` until it reads as a `T` for which `ok` holds; returns it.
fn await_reducer<T: DeserializeOwned>(
    endpoints: &Endpoints,
    path: &str,
    ok: impl Fn(&T) -> bool,
) -> Result<T, ScanError> {
    let deadline = Instant::now() + REDUCER_CONFIRMS;
    loop {
        let (status, body) = get(
            endpoints.reducer,
            endpoints.token.as_ref(),
            &format!("/api/v1/result/{path}"),
        )?;
        if status == 200
            && let Ok(value) = serde_json::from_str::<T>(&body)
            && ok(&value)
        {
            return Ok(value);
        }
        ensure!(
            Answer,
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
) -> Result<StepOutcome, ScanError> {
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
        let accepted = accepted_at(endpoints, &request.result, value, request.tolerance_kg)?;
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
    endpoints: &Endpoints,
    result: &str,
    value: f64,
    tolerance: f64,
) -> Result<u64, ScanError> {
    let (status, body) = get(
        endpoints.reducer,
        endpoints.token.as_ref(),
        &format!("/api/v1/result/{result}/live/steps"),
    )?;
    if status == 404 {
        return Ok(0);
    }
    ensure!(Answer, status == 200, "reducer: {status} {body}");
    let steps: Vec<LiveStep> = serde_json::from_str(&body)
        .map_err(|error| ScanError::Answer(format!("the reducer's steps: {error}")))?;
    Ok(steps
        .iter()
        .filter(|s| s.bctrl_kg.is_some_and(|b| (b - value).abs() <= tolerance))
        .filter_map(|s| s.accepted)
        .sum())
}

/// The fit as a short table for people: per plane εn ± its χ²-scaled error, β, α, the smallest
/// BMAG and χ²/dof, then the fit's warnings.
///
/// Not optics' `ScanReport::summary`: this one reads the fit the reducer froze, as JSON, and
/// gives εn to two significant digits of its error, which a clean simulated scan needs (its
/// 0.0003 µm error would print as ± 0.000 at the report's fixed three decimals).
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
    puts: tokio::sync::mpsc::Sender<Command>,
    events: std::sync::mpsc::Receiver<MonitorEvent>,
    /// The setpoint PV.
    pv: String,
    setpoint: f64,
    readback: f64,
    /// Where puts may go; none until [`Quad::allow`] read it, and until then nothing is put.
    range: Option<AllowedRange>,
}

impl Quad {
    fn connect(ca: &ClientConfig, pv: &str, readback: &str) -> Result<Self, ScanError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|error| ScanError::Quad(format!("the CA client's runtime: {error}")))?;
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
            pv: pv.to_owned(),
            setpoint: f64::NAN,
            readback: f64::NAN,
            range: None,
        };
        let deadline = Instant::now() + PVS_CONNECT;
        while quad.setpoint.is_nan() || quad.readback.is_nan() {
            if !quad.next_event(deadline) && Instant::now() >= deadline {
                let missing: Vec<&str> = [(pv, quad.setpoint), (readback, quad.readback)]
                    .into_iter()
                    .filter(|(_, v)| v.is_nan())
                    .map(|(name, _)| name)
                    .collect();
                bail!(
                    Quad,
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

    /// Reads the setpoint's control limits, makes the range puts may go in of them and
    /// `configured`, and checks every value `request` would put in it: each setting, and the
    /// setting before the scan when it is to be put back. Puts are possible only once this
    /// passed.
    fn allow(
        &mut self,
        configured: WritableLimits,
        request: &QuadScanRequest,
    ) -> Result<AllowedRange, ScanError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.puts
            .blocking_send(Command::ReadControl(ReadControl { pv: 0, done }))
            .map_err(|_| ScanError::Quad("the CA client stopped; nothing was put".to_owned()))?;
        let control = self
            .runtime
            .block_on(async { tokio::time::timeout(PVS_CONNECT, answer).await })
            .map_err(|_| {
                ScanError::Quad(format!(
                    "{} did not answer the read of its control limits within {} s; nothing was put",
                    self.pv,
                    PVS_CONNECT.as_secs()
                ))
            })?
            .map_err(|_| ScanError::Quad("the CA client stopped; nothing was put".to_owned()))?
            .map_err(|why| {
                ScanError::Quad(format!(
                    "reading the control limits of {}: {why}; nothing was put",
                    self.pv
                ))
            })?;
        let range = AllowedRange::new(&self.pv, configured, control.metadata.control)?;
        let values = request.values.iter().map(|&value| ("the setting", value));
        let restored = request.restore.then_some((
            "the setting before the scan, which it would put back,",
            self.setpoint,
        ));
        for (what, value) in values.chain(restored) {
            range
                .check(what, value)
                .context("the scan is refused; nothing was put")?;
        }
        self.range = Some(range.clone());
        Ok(range)
    }

    fn put(&mut self, value: f64) -> Result<(), ScanError> {
        // Checked again right before the put: whatever the scan's loop does, a value outside
        // the range never leaves this process.
        let Some(range) = &self.range else {
            bail!(Quad, "no range was read for {}, so nothing is put", self.pv);
        };
        range.check("the setting", value)?;
        let (done, answer) = tokio::sync::oneshot::channel();
        self.puts
            .blocking_send(Command::Put(Put { pv: 0, value, done }))
            .map_err(|_| ScanError::Quad("the CA client stopped".to_owned()))?;
        self.runtime
            .block_on(answer)
            .map_err(|_| ScanError::Quad("the CA client stopped".to_owned()))?
            .map_err(|why| ScanError::Quad(format!("writing {value}: {why}")))
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

/// The fields of a `quad_scan` accumulator's view that the driver reads.
#[derive(Debug, Default, Deserialize)]
struct QuadScanView {
    /// The controller parameter that opens and closes a measurement; only a `quad_scan`
    /// accumulator's view has one.
    #[serde(default)]
    measurement_parameter: Option<String>,
    /// The open measurement, if any.
    #[serde(default)]
    live: Option<OpenMeasurement>,
}

/// `live` in a [`QuadScanView`].
#[derive(Debug, Default, Deserialize)]
struct OpenMeasurement {
    #[serde(default)]
    id: Option<String>,
}

/// One setting of the open measurement (`…/live/steps`).
#[derive(Debug, Deserialize)]
struct LiveStep {
    #[serde(default)]
    bctrl_kg: Option<f64>,
    #[serde(default)]
    accepted: Option<u64>,
}

/// A closed measurement (`…/measurements/{id}`): its frozen fit.
#[derive(Debug, Deserialize)]
struct FrozenMeasurement {
    #[serde(default)]
    fit: Value,
}

/// How long one exchange with the controller or the reducer may take.
const HTTP_LIMIT: Duration = Duration::from_secs(30);

/// `GET`; the status and the body, whatever the status.
fn get(addr: SocketAddr, token: Option<&Token>, path: &str) -> Result<(u16, String), ScanError> {
    exchange(addr, token, path, None, HTTP_LIMIT)
}

/// `POST` of a JSON `body`; the status and the body, whatever the status.
fn post(
    addr: SocketAddr,
    token: Option<&Token>,
    path: &str,
    body: &str,
    limit: Duration,
) -> Result<(u16, String), ScanError> {
    exchange(addr, token, path, Some(body), limit)
}

/// One exchange, connecting within 5 s at most and done within `limit`; with the token when
/// there is one (the servers want it for writes, and for reads when so configured).
fn exchange(
    addr: SocketAddr,
    token: Option<&Token>,
    path: &str,
    body: Option<&str>,
    limit: Duration,
) -> Result<(u16, String), ScanError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(limit.min(Duration::from_secs(5))))
        .timeout_global(Some(limit))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let unreachable = |error| ScanError::Unreachable {
        url: url.clone(),
        error: Box::new(error),
    };
    let authorization = token.map(Token::header_value);
    let response = match body {
        None => {
            let mut request = agent.get(&url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.call()
        }
        Some(body) => {
            let mut request = agent.post(&url).content_type("application/json");
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.send(body)
        }
    }
    .map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.into_body().read_to_string().map_err(unreachable)?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
