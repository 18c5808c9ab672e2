//! The quad-scan driver of `beamflow scan quad` and `POST /api/v1/scan/quad`: for each value it
//! puts the quad's setpoint over Channel Access, waits for the readback to arrive and settle,
//! then lets the pipeline's `quad_scan` accumulator collect the requested number of accepted
//! shots at that setting, reading its progress from the reducer's HTTP view. The fit is live
//! in the reducer throughout; the driver returns it at the end.
//!
//! The first value is set before a new pipeline scan starts, so the fit holds the requested
//! settings only. A step that does not reach its shots within `step_timeout_s` is reported as
//! incomplete and the scan goes on. With `restore`, the quad is put back at the end.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// Its readback (default: the setpoint's name with `BCTRL` → `BACT`).
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
    /// Seconds a step may take before it is reported incomplete.
    #[serde(default = "step_timeout")]
    pub step_timeout_s: f64,
    /// Start a new pipeline scan first, so the fit holds this scan's steps only.
    #[serde(default = "yes")]
    pub new_scan: bool,
    /// Put the setpoint back to its value before the scan at the end. The restored setting then
    /// becomes a step of the live fit too, until a new pipeline scan starts.
    #[serde(default)]
    pub restore: bool,
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

/// Parses `A:B:N` into N settings from A to B inclusive.
pub fn parse_values(text: &str) -> anyhow::Result<Vec<f64>> {
    let parts: Vec<&str> = text.split(':').collect();
    let [from, to, count] = parts.as_slice() else {
        anyhow::bail!("--values takes FROM:TO:COUNT, e.g. 0.5:4.5:9, got {text:?}");
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

/// The driver's state, for `GET /api/v1/scan/quad` and the CLI's log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// `idle`, `running`, `done` or `failed`.
    pub state: String,
    /// The request being run.
    pub request: Option<QuadScanRequest>,
    /// Steps finished.
    pub steps: Vec<StepOutcome>,
    /// What it is doing now, or why it failed.
    pub message: String,
    /// The reducer's fit at the end.
    pub fit: Option<Value>,
}

/// Shared progress.
pub type SharedProgress = Arc<Mutex<Progress>>;

fn update(progress: &SharedProgress, change: impl FnOnce(&mut Progress)) {
    change(&mut progress.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Runs the scan; blocks until it is done. The fit (the accumulator's `fit`) is returned and
/// also left in `progress`.
pub fn run(
    request: &QuadScanRequest,
    endpoints: &Endpoints,
    progress: &SharedProgress,
) -> anyhow::Result<Value> {
    update(progress, |p| {
        *p = Progress {
            state: "running".to_owned(),
            request: Some(request.clone()),
            message: "connecting".to_owned(),
            ..Progress::default()
        };
    });
    let outcome = drive(request, endpoints, progress);
    update(progress, |p| match &outcome {
        Ok(fit) => {
            p.state = "done".to_owned();
            p.message = "done".to_owned();
            p.fit = Some(fit.clone());
        }
        Err(error) => {
            p.state = "failed".to_owned();
            p.message = format!("{error:#}");
        }
    });
    outcome
}

fn drive(
    request: &QuadScanRequest,
    endpoints: &Endpoints,
    progress: &SharedProgress,
) -> anyhow::Result<Value> {
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
    let readback = request
        .readback
        .clone()
        .unwrap_or_else(|| request.pv.replace("BCTRL", "BACT"));
    let mut quad = Quad::connect(&endpoints.ca, &request.pv, &readback)?;
    let original = quad.setpoint;
    let result = (|| -> anyhow::Result<()> {
        if request.new_scan {
            // At the first setting before the new scan: the ramp there is not a step of it.
            let first = request.values[0];
            update(progress, |p| p.message = format!("moving to {first} kG"));
            quad.put(first)?;
            let deadline = Instant::now() + Duration::from_secs_f64(request.step_timeout_s);
            if quad.wait_readback(first, request.tolerance_kg, deadline) {
                std::thread::sleep(Duration::from_secs_f64(request.settle_s.max(0.0)));
            }
            update(progress, |p| {
                p.message = "starting a new pipeline scan".to_owned()
            });
            start_live_scan(endpoints)?;
        }
        for (index, &value) in request.values.iter().enumerate() {
            update(progress, |p| {
                p.message = format!("step {} of {}: {value} kG", index + 1, request.values.len());
            });
            let outcome = step(&mut quad, request, endpoints, value)?;
            tracing::info!(?outcome, "Quad-scan step done.");
            update(progress, |p| p.steps.push(outcome));
        }
        Ok(())
    })();
    if request.restore
        && let Err(error) = quad.put(original)
    {
        tracing::warn!(%error, original, "Could not put the quad back.");
    }
    result?;
    let (status, body) = http(
        endpoints.reducer,
        "GET",
        &format!("/api/v1/result/{}/fit", request.result),
        "",
    )?;
    anyhow::ensure!(
        status == 200,
        "the reducer has no fit at {}: {body}",
        request.result
    );
    Ok(serde_json::from_str(&body)?)
}

fn step(
    quad: &mut Quad,
    request: &QuadScanRequest,
    endpoints: &Endpoints,
    value: f64,
) -> anyhow::Result<StepOutcome> {
    quad.put(value)?;
    let deadline = Instant::now() + Duration::from_secs_f64(request.step_timeout_s);
    let arrived = quad.wait_readback(value, request.tolerance_kg, deadline);
    let incomplete = |quad: &Quad, accepted, problem: String| StepOutcome {
        value,
        readback: quad.readback,
        accepted,
        complete: false,
        problem: Some(problem),
    };
    if !arrived {
        return Ok(incomplete(
            quad,
            0,
            format!("the readback stayed at {} kG", quad.readback),
        ));
    }
    // Settling: the magnet's field follows its readback with a delay; a pause, not a sync.
    std::thread::sleep(Duration::from_secs_f64(request.settle_s.max(0.0)));
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
        if Instant::now() > deadline {
            return Ok(incomplete(
                quad,
                accepted,
                format!("{accepted} of {} accepted shots in time", request.shots),
            ));
        }
        // Polling the reducer's view, which it publishes a few times a second.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Accepted shots at `value` in the accumulator's steps.
fn accepted_at(
    reducer: SocketAddr,
    result: &str,
    value: f64,
    tolerance: f64,
) -> anyhow::Result<u64> {
    let (status, body) = http(
        reducer,
        "GET",
        &format!("/api/v1/result/{result}/steps"),
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

/// Starts a live scan over every ingester's streams (a day at 10 Hz, not wrapped: PV sources
/// have no series headers) and waits until the reducer runs it.
fn start_live_scan(endpoints: &Endpoints) -> anyhow::Result<()> {
    let (_, config) = http(endpoints.controller, "GET", "/api/v1/config", "")?;
    let config: Value = serde_json::from_str(&config).context("the controller's config")?;
    let streams: Vec<String> = config["ingesters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["streams"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(!streams.is_empty(), "no ingester offers a stream");
    let slots: Vec<Value> = (0..1000)
        .map(|i| serde_json::json!([{ "constraint": i }]))
        .collect();
    let part: serde_json::Map<String, Value> = streams
        .into_iter()
        .map(|s| (s, Value::Array(slots.clone())))
        .collect();
    let body = serde_json::json!({"parts": {"main": part}, "sequence": vec!["main"; 1000]});
    let before = reducer_scan(endpoints.reducer)?;
    let (status, answer) = http(
        endpoints.controller,
        "POST",
        "/api/v1/sequence?all_wrap=false",
        &body.to_string(),
    )?;
    anyhow::ensure!(status == 200, "the controller refused the scan: {answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reducer_scan(endpoints.reducer)? == before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the reducer did not start the new scan"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn reducer_scan(reducer: SocketAddr) -> anyhow::Result<Option<u64>> {
    let (_, body) = http(reducer, "GET", "/api/v1/status", "")?;
    let status: Value = serde_json::from_str(&body).context("the reducer's status")?;
    Ok(status["scan"].as_u64())
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while quad.setpoint.is_nan() || quad.readback.is_nan() {
            anyhow::ensure!(
                quad.next_event(deadline),
                "{pv} and {readback} did not both answer within 10 s (EPICS_CA_ADDR_LIST?)"
            );
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
            Err(_) => false,
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

    /// Follows the readback until it is within `tolerance` of `value`; false at `deadline`.
    fn wait_readback(&mut self, value: f64, tolerance: f64, deadline: Instant) -> bool {
        // A NaN readback has not arrived.
        while (self.readback - value).abs() > tolerance || self.readback.is_nan() {
            if !self.next_event(deadline) && Instant::now() >= deadline {
                return false;
            }
        }
        true
    }
}

/// A plain HTTP/1.1 request; returns the status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach http://{addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
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

    /// `POST /api/v1/scan/quad` (a [`QuadScanRequest`]) and `GET /api/v1/scan/quad`
    /// ([`Progress`]).
    pub fn router(self) -> axum::Router {
        use axum::routing::get;
        axum::Router::new()
            .route("/api/v1/scan/quad", get(scan_progress).post(start_scan))
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
        if progress.state == "running" {
            return detail(StatusCode::CONFLICT, "a quad scan is running".to_owned());
        }
        progress.state = "running".to_owned();
    }
    let progress = service.progress.clone();
    let spawned = std::thread::Builder::new()
        .name("quad-scan".to_owned())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&request, &endpoints, &progress)
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
