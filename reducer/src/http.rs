//! The reducer's HTTP view: `GET /api/v1/result[/{path}]`, `GET /api/v1/status`, the OpenAPI
//! document and the same state as HDF5-REST ([`crate::hdf5_rest::server`]); errors are [`ApiError`]s. Handlers only read a snapshot behind a std lock that is never held across `.await`
//! (mini-redis `db.rs`); the task applying results publishes new snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use beamflow_net::http::{Access, ApiError, Route, router};
use beamflow_protocol::{AnalysisName, Value};
use serde::{Deserialize, Serialize};

use crate::hdf5_rest::Hdf5File;
use crate::nexus::ScanInfo;

/// The OpenAPI 3.1 description of the reducer's server: these routes and the model endpoints,
/// which the reducer of `beamflow run` and `beamflow reducer` serves beside them (`beamflow
/// replay` serves only these).
pub const OPENAPI: &str = include_str!("openapi.json");

/// What `GET /api/v1/status` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// Who serves the state: `replay` or `reducer`.
    pub source: String,
    /// Whether the scan (or replay) has ended; the state is final.
    pub finished: bool,
    /// Events seen.
    pub events: u64,
    /// Results applied.
    pub results: u64,
    /// The highest event number applied.
    pub last_event: Option<u64>,
    /// Input records that could not be read and were skipped.
    pub bad_records: u64,
    /// Events an analysis failed on, per analysis.
    pub analysis_errors: std::collections::BTreeMap<String, u64>,
    /// Results an accumulator rejected, per accumulator.
    pub accumulator_errors: std::collections::BTreeMap<String, u64>,
    /// Per accumulator, its configured paths (`history` columns) that matched none of the first
    /// results: the column stays empty, most likely a misspelt path.
    pub unmatched_columns: std::collections::BTreeMap<String, Vec<crate::Unmatched>>,
    /// Events per second so far.
    pub events_per_second: f64,
    /// The live scan's number (none in a replay).
    pub scan: Option<u64>,
    /// Events applied with streams missing (their frames did not all arrive in time).
    pub incomplete_events: u64,
    /// Results dropped as duplicates of an (event, analysis) already applied.
    pub duplicates: u64,
    /// Live only: reports from a worker whose event had been re-assigned (it was thought dead).
    pub unexpected_reports: u64,
    /// Live only: from an ingester reading an event to its results being applied, over the last
    /// 10,000 events (the ingesters' and the reducer's clocks must agree across hosts).
    pub latency_ms: Option<crate::live::Latency>,
    /// Live only: the last 1,000 of the incomplete events, each with the streams it lacked
    /// (frames that did not arrive in time, or that a restarted ingester's predecessor read and
    /// never sent).
    pub incomplete: Vec<crate::live::IncompleteEvents>,
    /// Live only: events of the scan restored from its checkpoint when this reducer took the
    /// scan over (it restarted).
    pub restored_events: u64,
    /// Live only: events released without a checkpoint covering them, skipped when the scan
    /// went on past them (a restart without a checkpoint): they are not in the state.
    pub lost_events: u64,
    /// Live only: the scan's checkpoint file, while one is kept.
    pub checkpoint: Option<String>,
    /// Live only: checkpoint writes that failed; the checkpoint is then given up for the scan.
    pub checkpoint_failures: u64,
}

struct Snapshot {
    state: Arc<Value>,
    status: Arc<Status>,
    latest: Arc<BTreeMap<AnalysisName, Arc<Value>>>,
    frames: Arc<BTreeMap<String, Arc<crate::Frame>>>,
    hdf5_attributes: Arc<BTreeMap<String, Value>>,
    scan: Option<Arc<ScanInfo>>,
}

/// A shared, cheaply cloned handle on the latest published state and status.
#[derive(Clone)]
pub struct View {
    inner: Arc<RwLock<Snapshot>>,
    /// The state as HDF5, built when first asked for after each publish (h5pyd reads one
    /// object a request, a dozen requests per `File`).
    hdf5: Arc<Mutex<Option<Arc<Hdf5File>>>>,
}

impl Default for View {
    fn default() -> Self {
        Self::new()
    }
}

impl View {
    /// An empty state.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Snapshot {
                state: Arc::new(Value::Map(Default::default())),
                status: Arc::new(Status::default()),
                latest: Arc::default(),
                frames: Arc::default(),
                hdf5_attributes: Arc::default(),
                scan: None,
            })),
            hdf5: Arc::default(),
        }
    }

    /// Publishes what `reducer` holds: its state with `status`, each analysis's latest result,
    /// the frames kept for display and the HDF5 attributes of its accumulators.
    pub fn publish_reducer(&self, reducer: &crate::Reducer, status: Status) {
        let state = reducer.state();
        let latest = reducer.latest_results();
        let frames = reducer.frames();
        let hdf5_attributes = reducer.hdf5_attributes();
        let mut snapshot = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        snapshot.state = Arc::new(state);
        snapshot.status = Arc::new(status);
        snapshot.latest = Arc::new(latest);
        snapshot.frames = Arc::new(frames);
        snapshot.hdf5_attributes = Arc::new(hdf5_attributes);
    }

    /// Replaces what is known of the scan (its files' metadata).
    pub fn publish_scan(&self, scan: ScanInfo) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .scan = Some(Arc::new(scan));
    }

    /// The scan whose state is served, once one has begun.
    pub fn scan(&self) -> Option<Arc<ScanInfo>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .scan
            .clone()
    }

    /// The latest state as an HDF5 file: the same object until the next publish.
    pub fn hdf5(&self) -> Arc<Hdf5File> {
        let (state, frames, attributes) = {
            let snapshot = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            (
                snapshot.state.clone(),
                snapshot.frames.clone(),
                snapshot.hdf5_attributes.clone(),
            )
        };
        // Held while building, so concurrent readers of a new state build it once.
        let mut cached = self.hdf5.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = cached.as_ref().filter(|file| file.is_of(&state, &frames)) {
            return file.clone();
        }
        let file = Arc::new(Hdf5File::new(state, frames, &attributes));
        *cached = Some(file.clone());
        file
    }

    /// Replaces the served state and status.
    pub fn publish(&self, state: Value, status: Status) {
        let mut snapshot = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        snapshot.state = Arc::new(state);
        snapshot.status = Arc::new(status);
    }

    /// Replaces the latest frame of each accumulator that keeps one.
    pub fn publish_frames(&self, frames: BTreeMap<String, Arc<crate::Frame>>) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .frames = Arc::new(frames);
    }

    /// The latest frame the accumulator `name` keeps.
    pub fn frame(&self, name: &str) -> Option<Arc<crate::Frame>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .frames
            .get(name)
            .cloned()
    }

    /// The latest result of `analysis`.
    pub fn latest(&self, analysis: &str) -> Option<Arc<Value>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .latest
            .get(analysis)
            .cloned()
    }

    /// Replaces only the status.
    pub fn publish_status(&self, status: Status) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .status = Arc::new(status);
    }

    /// The latest state.
    pub fn state(&self) -> Arc<Value> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .state
            .clone()
    }

    /// The latest status.
    pub fn status(&self) -> Arc<Status> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .status
            .clone()
    }
}

/// The reducer's routes: they build [`app`], and the test below holds [`OPENAPI`] to them.
pub fn routes() -> Vec<Route<View>> {
    let mut routes = vec![
        Route::get("/api/v1/result", whole_result),
        Route::get("/api/v1/result/", whole_result),
        Route::get("/api/v1/result/{*path}", result_at),
        Route::get("/api/v1/status", status),
        Route::get("/api/v1/openapi.json", openapi),
    ];
    routes.extend(crate::hdf5_rest::server::routes());
    routes
}

/// The router; the same for replay and the live reducer.
pub fn app(view: View) -> Router {
    router(routes()).fallback(not_found).with_state(view)
}

/// Why `?slice=` cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    /// The spec has no `:`.
    #[error("slice {spec:?} is not of the form a:b")]
    NotARange {
        /// The spec as given.
        spec: String,
    },
    /// One end is neither empty nor an integer.
    #[error("slice bound {bound:?} is not an integer")]
    NotAnInteger {
        /// The end as given.
        bound: String,
    },
}

impl From<SliceError> for ApiError {
    fn from(error: SliceError) -> Self {
        ApiError::bad_request(error.to_string())
    }
}

#[derive(Deserialize)]
struct SliceQuery {
    slice: Option<String>,
}

async fn whole_result(State(view): State<View>) -> Response {
    json_response(&view.state())
}

async fn result_at(
    State(view): State<View>,
    Path(path): Path<String>,
    Query(query): Query<SliceQuery>,
) -> Result<Response, ApiError> {
    let state = view.state();
    let node = state
        .pointer(&path)
        .ok_or_else(|| ApiError::not_found(format!("no result at {path:?}")))?;
    match query.slice {
        None => Ok(json_response(node)),
        Some(spec) => {
            let Value::Array(items) = node else {
                return Err(ApiError::bad_request(format!(
                    "{path:?} is {}, only arrays can be sliced",
                    node.kind()
                )));
            };
            let range = parse_slice(&spec, items.len())?;
            Ok(json_response(&Value::Array(items[range].to_vec())))
        }
    }
}

/// The view's status, with who was refused (when served behind an [`Access`]).
async fn status(State(view): State<View>, access: Option<Extension<Access>>) -> Response {
    let Some(Extension(access)) = access else {
        return json_response(&*view.status());
    };
    match serde_json::to_value(&*view.status()) {
        Ok(mut status) => {
            if let Some(object) = status.as_object_mut() {
                object.insert("http".to_owned(), access.status());
            }
            json_response(&status)
        }
        Err(error) => {
            ApiError::internal(format!("cannot encode the status as JSON: {error}")).into_response()
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/v1/openapi.json")
}

fn json_response<T: Serialize + ?Sized>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => {
            ApiError::internal(format!("cannot encode the state as JSON: {error}")).into_response()
        }
    }
}

/// Parses `a:b` with Python's rules: either end may be omitted, negatives count from the end,
/// out-of-range ends are clamped.
fn parse_slice(spec: &str, len: usize) -> Result<std::ops::Range<usize>, SliceError> {
    let (start, end) = spec.split_once(':').ok_or_else(|| SliceError::NotARange {
        spec: spec.to_owned(),
    })?;
    let bound = |text: &str, default: usize| -> Result<usize, SliceError> {
        if text.trim().is_empty() {
            return Ok(default);
        }
        let i: i64 = text.trim().parse().map_err(|_| SliceError::NotAnInteger {
            bound: text.to_owned(),
        })?;
        let len = len as i64;
        Ok((if i < 0 { len + i } else { i }).clamp(0, len) as usize)
    };
    let start = bound(start, 0)?;
    let end = bound(end, len)?;
    Ok(start..end.max(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(view: &View, uri: &str) -> (StatusCode, String) {
        let response = app(view.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn sample() -> View {
        let view = View::new();
        let state = Value::Map(
            [(
                "history".to_owned(),
                Value::Map(
                    [
                        (
                            "mean".to_owned(),
                            Value::from(vec![1.0, f64::NAN, 3.0, 4.0]),
                        ),
                        ("name".to_owned(), Value::from("det")),
                    ]
                    .into(),
                ),
            )]
            .into(),
        );
        view.publish(
            state,
            Status {
                source: "replay".into(),
                events: 4,
                ..Status::default()
            },
        );
        view
    }

    #[tokio::test]
    async fn whole_state_subtrees_and_slices() {
        let view = sample();
        assert_eq!(
            get(&view, "/api/v1/result").await,
            (
                StatusCode::OK,
                r#"{"history":{"mean":[1.0,null,3.0,4.0],"name":"det"}}"#.to_owned()
            )
        );
        assert_eq!(
            get(&view, "/api/v1/result/history/mean").await.1,
            "[1.0,null,3.0,4.0]"
        );
        assert_eq!(get(&view, "/api/v1/result/history/mean/2").await.1, "3.0");
        assert_eq!(
            get(&view, "/api/v1/result/history/mean?slice=1:3").await.1,
            "[null,3.0]"
        );
        assert_eq!(
            get(&view, "/api/v1/result/history/mean?slice=-2:").await.1,
            "[3.0,4.0]"
        );
        assert_eq!(
            get(&view, "/api/v1/result/history/mean?slice=:99").await.1,
            "[1.0,null,3.0,4.0]"
        );
    }

    #[tokio::test]
    async fn errors_are_json_with_a_reason() {
        let view = sample();
        insta::assert_debug_snapshot!(get(&view, "/api/v1/result/history/nope").await, @r#"
        (
            404,
            "{\"detail\":\"no result at \\\"history/nope\\\"\"}",
        )
        "#);
        insta::assert_debug_snapshot!(get(&view, "/api/v1/result/history/name?slice=0:1").await, @r#"
        (
            400,
            "{\"detail\":\"\\\"history/name\\\" is text, only arrays can be sliced\"}",
        )
        "#);
        insta::assert_debug_snapshot!(get(&view, "/api/v1/result/history/mean?slice=x:1").await, @r#"
        (
            400,
            "{\"detail\":\"slice bound \\\"x\\\" is not an integer\"}",
        )
        "#);
        assert_eq!(get(&view, "/nowhere").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn status_and_openapi() {
        let view = sample();
        let (code, body) = get(&view, "/api/v1/status").await;
        assert_eq!(code, StatusCode::OK);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["events"], 4);
        assert_eq!(status["source"], "replay");
        let (code, body) = get(&view, "/api/v1/openapi.json").await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, OPENAPI));
    }

    /// The document also describes the model endpoints, the dashboard and the HDF5 files, which
    /// the reducer of `beamflow run` serves beside these routes.
    #[test]
    fn the_openapi_document_describes_every_route_the_server_serves() {
        let served: std::collections::BTreeSet<beamflow_net::http::Operation> = routes()
            .iter()
            .map(Route::operation)
            .chain(
                beamflow_surrogate::http::routes()
                    .iter()
                    .map(Route::operation),
            )
            .chain(
                crate::dashboard::Dashboard::routes()
                    .iter()
                    .map(Route::operation),
            )
            .chain(
                crate::hdf5_output::Hdf5Output::routes()
                    .iter()
                    .map(Route::operation),
            )
            .collect();
        assert_eq!(beamflow_net::http::documented(OPENAPI).unwrap(), served);
        assert_eq!(
            beamflow_net::http::dangling_refs(OPENAPI).unwrap(),
            Vec::<String>::new()
        );
    }
}
