//! The controller's REST API, path for path dranspose's (DESIGN.md §2), so scan software that
//! drives dranspose drives beamflow. Errors are [`ApiError`]s, `{"detail": "..."}` with the
//! status code, as dranspose's FastAPI answers them, because its clients read that field.

mod views;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use beamflow_net::http::ApiError;

use crate::ensemble::{Ensemble, ParameterError, StartError};
use crate::mapping::{MappingError, Sequence};

/// The controller's state as the API and the socket loop share it.
pub type Shared = Arc<Mutex<Ensemble>>;

/// The router.
pub fn app(ensemble: Shared) -> Router {
    Router::new()
        .route("/api/v1/sequence", post(post_sequence).get(get_sequence))
        .route("/api/v1/mapping", post(post_mapping).get(get_sequence))
        .route("/api/v1/stop", post(stop))
        .route("/api/v1/progress", get(progress))
        .route("/api/v1/status", get(status))
        .route("/api/v1/config", get(config))
        .route("/api/v1/load", get(load))
        .route("/api/v1/parameters", get(parameters))
        .route(
            "/api/v1/parameter/{name}",
            post(post_parameter).get(get_parameter),
        )
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

impl From<ParameterError> for ApiError {
    fn from(error: ParameterError) -> Self {
        ApiError::bad_request(error.to_string())
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
    axum::Json(json!(lock(&ensemble).sequence())).into_response()
}

async fn stop(State(ensemble): State<Shared>) -> Response {
    lock(&ensemble).stop();
    axum::Json(json!(null)).into_response()
}

async fn progress(State(ensemble): State<Shared>) -> Response {
    axum::Json(lock(&ensemble).progress()).into_response()
}

async fn status(State(ensemble): State<Shared>) -> Response {
    axum::Json(lock(&ensemble).status()).into_response()
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

async fn post_parameter(
    State(ensemble): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hash = lock(&ensemble).set_parameter(name.into(), body)?;
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

async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::Pacing;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
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
}
