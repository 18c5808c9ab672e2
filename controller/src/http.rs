//! The controller's REST API, path for path dranspose's (DESIGN.md §2), so scan software that
//! drives dranspose drives beamflow. Errors are [`ApiError`]s, `{"detail": "..."}` with the
//! status code, as dranspose's FastAPI answers them, because its clients read that field. The
//! routes are one table, [`routes`], which the OpenAPI document is tested against.

mod views;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde_json::json;

use beamflow_net::http::{Access, ApiError, Route, router};

use crate::ensemble::{Ensemble, SetParameterError, StartError};
use crate::mapping::{MappingError, Sequence};

/// The controller's state as the API and the socket loop share it.
pub type Shared = Arc<Mutex<Ensemble>>;

/// The OpenAPI 3.1 description of the controller's server: these routes and the quad-scan
/// service's, which `beamflow run` serves beside them.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The controller's routes: they build [`app`], and the test below holds [`OPENAPI`] to them.
pub fn routes() -> Vec<Route<Shared>> {
    vec![
        Route::post("/api/v1/sequence", post_sequence),
        Route::get("/api/v1/sequence", get_sequence),
        Route::post("/api/v1/mapping", post_mapping),
        Route::get("/api/v1/mapping", get_sequence),
        Route::post("/api/v1/stop", stop),
        Route::get("/api/v1/progress", progress),
        Route::get("/api/v1/status", status),
        Route::get("/api/v1/config", config),
        Route::get("/api/v1/load", load),
        Route::get("/api/v1/parameters", parameters),
        Route::post("/api/v1/parameter/{name}", post_parameter),
        Route::get("/api/v1/parameter/{name}", get_parameter),
        Route::get("/api/v1/openapi.json", openapi),
    ]
}

/// The router.
pub fn app(ensemble: Shared) -> Router {
    router(routes())
        .fallback(not_found)
        // A mapping of a long scan is large (about 20 bytes per slot): 10^6 events fit.
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(ensemble)
}

impl From<MappingError> for ApiError {
    fn from(error: MappingError) -> Self {
        ApiError::bad_request(error.to_string())
    }
}

impl From<SetParameterError> for ApiError {
    fn from(error: SetParameterError) -> Self {
        match error {
            SetParameterError::Invalid(_) => ApiError::bad_request(error.to_string()),
            SetParameterError::Confined(_) => ApiError::unprocessable(error.to_string()),
            SetParameterError::TooLarge { .. } | SetParameterError::TooMany { .. } => {
                ApiError::too_large(error.to_string())
            }
        }
    }
}

impl From<StartError> for ApiError {
    fn from(error: StartError) -> Self {
        ApiError::bad_request(error.to_string())
    }
}

/// The lock, even if a panicking holder poisoned it: the state is plain data, still usable.
pub fn lock(ensemble: &Shared) -> MutexGuard<'_, Ensemble> {
    ensemble
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Deserialize)]
struct WrapQuery {
    #[serde(default = "yes")]
    all_wrap: bool,
}

fn yes() -> bool {
    true
}

async fn post_sequence(
    State(ensemble): State<Shared>,
    Query(query): Query<WrapQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    start(&ensemble, Sequence::from_json(&body, query.all_wrap)?)
}

async fn post_mapping(
    State(ensemble): State<Shared>,
    Query(query): Query<WrapQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    start(
        &ensemble,
        Sequence::from_mapping_json(&body, query.all_wrap)?,
    )
}

fn start(ensemble: &Shared, sequence: Sequence) -> Result<Response, ApiError> {
    let uuid = lock(ensemble).start(sequence, Instant::now())?;
    Ok(axum::Json(uuid).into_response())
}

async fn get_sequence(State(ensemble): State<Shared>) -> Response {
    // A sequence can hold millions of slots: it is serialised after the lock is let go, off
    // the async threads, so the control loop never waits for it.
    let sequence = lock(&ensemble).sequence();
    match tokio::task::spawn_blocking(move || serde_json::to_vec(&sequence)).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(error)) => ApiError::internal(error.to_string()).into_response(),
        Err(error) => ApiError::internal(error.to_string()).into_response(),
    }
}

async fn stop(State(ensemble): State<Shared>) -> Response {
    lock(&ensemble).stop();
    axum::Json(json!(null)).into_response()
}

async fn progress(State(ensemble): State<Shared>) -> Response {
    axum::Json(lock(&ensemble).progress()).into_response()
}

async fn status(State(ensemble): State<Shared>, access: Option<Extension<Access>>) -> Response {
    let mut status = lock(&ensemble).status();
    if let (Some(Extension(access)), Some(object)) = (access, status.as_object_mut()) {
        object.insert("http".to_owned(), access.status());
    }
    axum::Json(status).into_response()
}

async fn config(State(ensemble): State<Shared>) -> Response {
    axum::Json(lock(&ensemble).config()).into_response()
}

async fn load(State(ensemble): State<Shared>) -> Response {
    axum::Json(lock(&ensemble).load()).into_response()
}

async fn parameters(State(ensemble): State<Shared>) -> Response {
    axum::Json(json!(lock(&ensemble).describe_parameters())).into_response()
}

/// The body is read up to the parameter limit and no further: a declared length beyond it is
/// refused before a byte is read, and a chunked body once it grows past it, so an upload of
/// gigabytes costs the controller nothing.
async fn post_parameter(
    State(ensemble): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (limits, roots) = {
        let ensemble = lock(&ensemble);
        (ensemble.parameter_limits(), ensemble.roots().clone())
    };
    let too_large = |bytes: Option<u64>| {
        let size = bytes.map_or_else(|| "the body is".to_owned(), |b| format!("{b} bytes are"));
        ApiError::too_large(format!(
            "parameter {name}: {size} more than the limit of {} bytes ([security] max_parameter_bytes)",
            limits.max_bytes
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|d| *d > limits.max_bytes) {
        return Err(too_large(Some(declared)));
    }
    let limit = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
    let body = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                too_large(None)
            } else {
                ApiError::bad_request(format!("parameter {name}: cannot read the body: {error}"))
            }
        })?
        .to_bytes();
    let hash = lock(&ensemble)
        .set_parameter(name.clone().into(), body)
        .map_err(|error| {
            let confined = matches!(error, SetParameterError::Confined(_));
            let refused = ApiError::from(error);
            if confined {
                refused.with("roots", json!(roots.folders()))
            } else {
                refused
            }
        })?;
    Ok(axum::Json(hash).into_response())
}

async fn get_parameter(
    State(ensemble): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let data = lock(&ensemble)
        .parameter(&name)
        .ok_or_else(|| ApiError::not_found("Parameter not found"))?;
    Ok(([(header::CONTENT_TYPE, "application/x.bytes")], data).into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::Pacing;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    fn fresh_app() -> Router {
        app(Arc::new(Mutex::new(Ensemble::new(
            Pacing::default(),
            Vec::new(),
        ))))
    }

    async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_malformed_or_impossible_mapping_is_a_400_with_the_reason() {
        let app = fresh_app();
        let (status, body) = call(&app, "POST", "/api/v1/sequence", "{\"parts\": 3}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("mapping is not valid"), "{body}");
        let mapping =
            r#"{"parts": {"main": {"det": [[{"constraint": 1}]]}}, "sequence": ["main"]}"#;
        let (status, body) = call(&app, "POST", "/api/v1/sequence", mapping).await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::BAD_REQUEST,
                r#"{"detail":"no reducer is connected"}"#
            )
        );
        let (status, body) = call(&app, "GET", "/api/v1/progress", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"last_assigned":0,"completed_events":0,"total_events":0,"finished":true}"#
        );
    }

    #[tokio::test]
    async fn parameters_round_trip_as_raw_bytes() {
        let app = fresh_app();
        let (status, hash) = call(&app, "POST", "/api/v1/parameter/roi", "[1, 2]").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(hash.len(), 66, "a JSON string of 64 hex digits: {hash}");
        assert_eq!(
            call(&app, "GET", "/api/v1/parameter/roi", "").await,
            (StatusCode::OK, "[1, 2]".to_owned())
        );
        assert_eq!(
            call(&app, "GET", "/api/v1/parameter/nope", "").await.0,
            StatusCode::NOT_FOUND
        );
        let (_, described) = call(&app, "GET", "/api/v1/parameters", "").await;
        assert!(described.contains("dump_prefix"), "{described}");
    }

    #[tokio::test]
    async fn a_parameter_beyond_the_limit_is_a_413_before_it_is_read() {
        let app = app(Arc::new(Mutex::new(
            Ensemble::new(Pacing::default(), Vec::new()).with_parameter_limits(
                crate::ensemble::ParameterLimits {
                    max_bytes: 8,
                    max_names: 2,
                },
            ),
        )));
        // Declared 2 GB, nothing sent: refused on the header alone.
        let request = Request::builder()
            .method("POST")
            .uri("/api/v1/parameter/big")
            .header(header::CONTENT_LENGTH, "2000000000")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // No length declared: refused once the body grows past the limit.
        let (status, body) = call(&app, "POST", "/api/v1/parameter/big", "123456789").await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(body.contains("max_parameter_bytes"), "{body}");
        let (status, body) = call(&app, "POST", "/api/v1/parameter/dump_prefix", "../").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains(r#""roots":["#), "{body}");
        assert_eq!(
            call(&app, "POST", "/api/v1/parameter/a", "1").await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "POST", "/api/v1/parameter/b", "2").await.0,
            StatusCode::OK
        );
        let (status, body) = call(&app, "POST", "/api/v1/parameter/c", "3").await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("max_parameters"), "{body}");
    }

    /// The document also describes the quad-scan service's routes, which `beamflow run`
    /// merges into this server.
    #[tokio::test]
    async fn the_openapi_document_describes_every_route_the_server_serves() {
        let served: std::collections::BTreeSet<beamflow_net::http::Operation> = routes()
            .iter()
            .map(Route::operation)
            .chain(
                crate::quad_scan::http::routes()
                    .iter()
                    .map(Route::operation),
            )
            .collect();
        let documented = beamflow_net::http::documented(OPENAPI).unwrap();
        assert_eq!(documented, served);
        assert_eq!(
            beamflow_net::http::dangling_refs(OPENAPI).unwrap(),
            Vec::<String>::new()
        );
        let (status, body) = call(&fresh_app(), "GET", "/api/v1/openapi.json", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, OPENAPI));
    }
}
