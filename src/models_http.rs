//! The reducer's model endpoints, as lume-visualizations' interactive tab uses them:
//!
//! - `GET /api/v1/model/{name}`: the model's description (inputs with units, defaults, ranges,
//!   read-only flags; outputs with units).
//! - `POST /api/v1/model/{name}/evaluate` with `{input: value, ...}`: the outputs, defaults
//!   filling the rest; out-of-range, read-only-violating or unknown inputs answer 422 with every
//!   reason; a non-finite output answers 500, never a number.
//! - `GET /api/v1/model/{name}/inputs`: the latest live values the `surrogate` analysis `name`
//!   used, with their provenance ("apply current machine values").
//!
//! `{name}` is the `surrogate` analysis's name in the pipeline file.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use beamflow_reducer::http::View;
use beamflow_surrogate::{EvaluationError, Model};
use beamflow_workers::AnalysisConfig;
use serde_json::json;

/// The models of a pipeline's `surrogate` analyses, and the reducer's view for their inputs.
#[derive(Clone)]
pub struct ModelService {
    models: Arc<BTreeMap<String, Arc<Model>>>,
    view: View,
}

impl ModelService {
    /// Loads the model of every `surrogate` analysis in `analyses`.
    pub fn load(
        analyses: &BTreeMap<beamflow_protocol::AnalysisName, AnalysisConfig>,
        view: View,
    ) -> anyhow::Result<Self> {
        let mut models = BTreeMap::new();
        for (name, config) in analyses {
            if let AnalysisConfig::Surrogate(config) = config {
                let model = Model::open(&config.model)
                    .map_err(|error| anyhow::anyhow!("analysis {name}: {error}"))?;
                models.insert(name.to_string(), Arc::new(model));
            }
        }
        Ok(Self {
            models: Arc::new(models),
            view,
        })
    }

    /// The routes above.
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/v1/model/{name}", get(describe))
            .route("/api/v1/model/{name}/evaluate", post(evaluate))
            .route("/api/v1/model/{name}/inputs", get(inputs))
            .with_state(self)
    }

    fn unknown(&self, name: &str) -> Response {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "no model {name:?}; the pipeline's models: {:?}",
                self.models.keys().collect::<Vec<_>>()
            ),
        )
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn describe(State(service): State<ModelService>, Path(name): Path<String>) -> Response {
    match service.models.get(&name) {
        Some(model) => {
            let spec = model.spec();
            Json(json!({
                "name": name,
                "model": spec.name,
                "description": spec.description,
                "inputs": spec.inputs,
                "outputs": spec.outputs,
                "layers": spec.network.len(),
            }))
            .into_response()
        }
        None => service.unknown(&name),
    }
}

async fn evaluate(
    State(service): State<ModelService>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(model) = service.models.get(&name).cloned() else {
        return service.unknown(&name);
    };
    let given: BTreeMap<String, f64> = match serde_json::from_slice(&body) {
        Ok(given) => given,
        Err(why) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be an object {{input: number}}: {why}"),
            );
        }
    };
    // One evaluation is ~60 µs: no need to leave the async thread.
    match model.what_if(&given) {
        Ok(evaluation) => Json(evaluation).into_response(),
        Err(EvaluationError::Inputs(issues)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": EvaluationError::Inputs(issues.clone()).to_string(),
                "issues": issues,
            })),
        )
            .into_response(),
        Err(other) => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn inputs(State(service): State<ModelService>, Path(name): Path<String>) -> Response {
    if !service.models.contains_key(&name) {
        return service.unknown(&name);
    }
    let Some(latest) = service.view.latest(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("the analysis {name} has evaluated no event yet"),
        );
    };
    match latest.pointer("inputs") {
        Some(inputs) => Json(inputs).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("the latest result of {name} has no inputs"),
        ),
    }
}
