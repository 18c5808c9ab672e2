//! `/api/v1/scan/quad` on the controller: one driver at a time, run on its own thread.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::driver::{Endpoints, Progress, ScanStop, SharedProgress, run, update};
use super::request::QuadScanRequest;

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
                    tracing::warn!(%error, "Quad scan failed.")
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
