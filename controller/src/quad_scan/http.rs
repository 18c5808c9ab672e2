//! `/api/v1/scan/quad` on the controller: one driver at a time, run on its own thread; and
//! `/api/v1/scan/writable`, the PVs scans may write.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use beamflow_net::http::{ApiError, Route};
use serde_json::{Value, json};

use super::driver::{Endpoints, Progress, ScanStop, SharedProgress, run, update};
use super::limits::ScanDriverConfig;
use super::request::QuadScanRequest;

/// Where the controller says which PVs scans may write; `beamflow scan quad` asks it there.
pub const WRITABLE_PATH: &str = "/api/v1/scan/writable";

/// The controller's `/api/v1/scan/quad`: one driver at a time, run on its own thread. The
/// default lets scans write nothing.
#[derive(Clone, Default)]
pub struct ScanService {
    /// The pipeline's `[controller.scan]`.
    writable: Arc<ScanDriverConfig>,
    progress: SharedProgress,
    endpoints: Arc<Mutex<Option<Endpoints>>>,
    /// The running scan's stop.
    stop: Arc<Mutex<ScanStop>>,
}

impl ScanService {
    /// A service whose scans write only what `writable` allows.
    pub fn new(writable: ScanDriverConfig) -> Self {
        Self {
            writable: Arc::new(writable),
            ..Self::default()
        }
    }

    /// Where scans find the pipeline and the machine (known once everything is bound).
    pub fn set_endpoints(&self, endpoints: Endpoints) {
        *self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(endpoints);
    }

    /// The reducer's address, when it is learnt after the controller started.
    /// The reducer's HTTP address, once known.
    pub fn reducer(&self) -> Option<SocketAddr> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|endpoints| endpoints.reducer)
    }

    /// Sets the reducer's HTTP address (it may bind after the controller).
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

    /// `POST /api/v1/scan/quad` (a [`QuadScanRequest`]; 202, 403 for a PV the pipeline does not
    /// let scans write, 409 while one runs), `GET /api/v1/scan/quad` ([`Progress`]),
    /// `DELETE /api/v1/scan/quad` (stops the running scan, which then closes its measurement and
    /// restores the quad; 202, 409 when none runs) and `GET /api/v1/scan/writable`
    /// ([`ScanDriverConfig`]).
    pub fn router(self) -> axum::Router {
        beamflow_net::http::router(routes()).with_state(self)
    }
}

/// `/api/v1/scan/quad`, as a table: [`ScanService::router`] serves it, and the OpenAPI document
/// of the controller it is merged into is checked against it.
pub fn routes() -> Vec<Route<ScanService>> {
    vec![
        Route::get("/api/v1/scan/quad", scan_progress),
        Route::post("/api/v1/scan/quad", start_scan),
        Route::delete("/api/v1/scan/quad", stop_scan),
        Route::get(WRITABLE_PATH, writable),
    ]
}

async fn writable(State(service): State<ScanService>) -> Json<ScanDriverConfig> {
    Json(ScanDriverConfig::clone(&service.writable))
}

async fn scan_progress(State(service): State<ScanService>) -> Json<Progress> {
    Json(
        service
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    )
}

async fn stop_scan(
    State(service): State<ScanService>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        }
        "stopping" => {}
        _ => return Err(ApiError::conflict("no quad scan is running")),
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "stopping": true }))))
}

async fn start_scan(
    State(service): State<ScanService>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // JSON whatever the Content-Type says, as the controller's other endpoints take it.
    let request: QuadScanRequest = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("quad scan request: {error}")))?;
    // Answered here, before a thread or a CA client exists; the driver checks again, and the
    // PV's limits, before its first put.
    if let Err(error) = service.writable.limits_of(&request.pv) {
        tracing::warn!(pv = %request.pv, "Quad scan of a PV the pipeline does not allow refused.");
        update(&service.progress, |p| p.refused += 1);
        return Err(ApiError::new(StatusCode::FORBIDDEN, error.to_string()));
    }
    let endpoints = service
        .endpoints
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| ApiError::unavailable("the controller is still starting"))?;
    {
        let mut progress = service
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if matches!(progress.state.as_str(), "running" | "stopping") {
            return Err(ApiError::conflict("a quad scan is running"));
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
                    tracing::warn!(%error, "Quad scan failed.")
                }
                Err(_) => update(&progress, |p| {
                    p.state = "failed".to_owned();
                    p.message = "the scan driver panicked".to_owned();
                }),
            }
        });
    match spawned {
        Ok(_) => Ok((StatusCode::ACCEPTED, Json(json!({ "started": true })))),
        Err(error) => {
            service
                .progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state = "failed".to_owned();
            Err(ApiError::internal(format!(
                "cannot start the scan: {error}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    async fn call(service: &ScanService, method: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri("/api/v1/scan/quad")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = service.clone().router().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn refusals_answer_a_detail_and_start_nothing() {
        let service = ScanService::default();
        assert_eq!(
            call(&service, "DELETE", "").await,
            (
                StatusCode::CONFLICT,
                json!({"detail": "no quad scan is running"})
            )
        );
        let (status, answer) = call(&service, "POST", "[]").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("quad scan request: ")),
            "{answer}"
        );
        let request = json!({"pv": "Q:BCTRL", "values": [1.0]}).to_string();
        let (status, answer) = call(&service, "POST", &request).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "nothing is writable by default"
        );
        assert!(
            answer["detail"]
                .as_str()
                .is_some_and(|d| d.contains("[controller.scan.writable.\"Q:BCTRL\"]")),
            "{answer}"
        );
        let service = ScanService::new(
            serde_json::from_value(json!({"writable": {"Q:BCTRL": {"high": 2.0}}})).unwrap(),
        );
        let (status, answer) = call(&service, "POST", &request.replace("Q:", "R:")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(
            answer["detail"]
                .as_str()
                .is_some_and(|d| d.contains("lists only Q:BCTRL")),
            "{answer}"
        );
        assert_eq!(
            call(&service, "POST", &request).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"detail": "the controller is still starting"})
            )
        );
        assert_eq!(call(&service, "GET", "").await.1["refused"], 1);
        let request = Request::builder()
            .uri(WRITABLE_PATH)
            .body(Body::empty())
            .unwrap();
        let response = service.clone().router().oneshot(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"writable": {"Q:BCTRL": {"high": 2.0}}})
        );
        let (status, progress) = call(&service, "GET", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(progress["state"], "running", "{progress}");
    }
}
