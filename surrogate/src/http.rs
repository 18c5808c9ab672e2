//! The reducer's model endpoints, as lume-visualizations' interactive tab uses them:
//!
//! - `GET /api/v1/model`: every model with its inputs (unit, default, range, read-only) and
//!   outputs, and which base a what-if would start from.
//! - `GET /api/v1/model/{name}`: one model's description.
//! - `POST /api/v1/model/{name}/evaluate`: a what-if. The body is `{"base": "live"|"default",
//!   "inputs": {input: value}}` (both keys optional) or, as before, a flat `{input: value}`.
//!   Inputs not given take the base's value: with `live`, the inputs the `surrogate` analysis
//!   last evaluated (each keeping its provenance: `live`, `stale` with its age, or `default`
//!   where the analysis had no reading); with `default`, the model's defaults. Without a base
//!   it is `live` once the analysis has evaluated an event, else `default`: an operator asking
//!   "what if QE04 were −4 kG" means the machine as it is, not a design point. The answer is
//!   the evaluation plus `base`; each input says its provenance (`request`, `live`, `stale`,
//!   `default`). The request's own out-of-range, read-only-violating or unknown inputs answer
//!   422 with every reason; live values outside the range are only flagged in `issues`, as the
//!   live analysis flags them. `base: live` before any live evaluation answers 409; a
//!   non-finite output answers 500, never a number.
//! - `GET /api/v1/model/{name}/inputs`: the latest live values the `surrogate` analysis `name`
//!   used, with their provenance ("apply current machine values").
//!
//! `{name}` is the `surrogate` analysis's name in the pipeline file. The live inputs live in
//! the reducer's results; the reducer's process passes a closure that reads them
//! ([`LatestResult`]), so this crate knows nothing of the reducer.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Json, Router};
use beamflow_net::http::{ApiError, Route};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Base, EvaluationError, Model, Provenance};

/// The latest result the `surrogate` analysis of a name published, as JSON (an
/// [`Evaluation`](crate::Evaluation)); `None` before its first.
pub type LatestResult = Arc<dyn Fn(&str) -> Option<Value> + Send + Sync>;

/// The models of a pipeline's `surrogate` analyses, by analysis name, and where their latest
/// results are read.
#[derive(Clone)]
pub struct ModelService {
    models: Arc<BTreeMap<String, Arc<Model>>>,
    latest: LatestResult,
}

impl ModelService {
    /// Serves `models` (analysis name → its model); `latest` reads an analysis's latest result.
    pub fn new(
        models: BTreeMap<String, Model>,
        latest: impl Fn(&str) -> Option<Value> + Send + Sync + 'static,
    ) -> Self {
        Self {
            models: Arc::new(
                models
                    .into_iter()
                    .map(|(name, model)| (name, Arc::new(model)))
                    .collect(),
            ),
            latest: Arc::new(latest),
        }
    }

    /// The routes above, serving these models.
    pub fn router(self) -> Router {
        beamflow_net::http::router(routes()).with_state(self)
    }

    /// The model `name`, or the 404 naming the pipeline's models.
    fn model(&self, name: &str) -> Result<Arc<Model>, ApiError> {
        self.models.get(name).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "no model {name:?}; the pipeline's models: {:?}",
                self.models.keys().collect::<Vec<_>>()
            ))
        })
    }
}

/// The model endpoints, as a table: [`ModelService::router`] serves it, and the OpenAPI
/// document of the server it is merged into is checked against it.
pub fn routes() -> Vec<Route<ModelService>> {
    vec![
        Route::get("/api/v1/model", list),
        Route::get("/api/v1/model/{name}", describe),
        Route::post("/api/v1/model/{name}/evaluate", evaluate),
        Route::get("/api/v1/model/{name}/inputs", inputs),
    ]
}

/// Which inputs a what-if starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum BaseKind {
    /// The inputs the live analysis last evaluated, with their provenance.
    Live,
    /// The model's defaults.
    Default,
}

/// The structured what-if body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhatIf {
    #[serde(default)]
    base: Option<BaseKind>,
    #[serde(default)]
    inputs: BTreeMap<String, f64>,
}

/// The keys that make a body the structured form; no model input is called either (they are
/// PV names), so a flat body cannot be mistaken for it.
const STRUCTURED_KEYS: [&str; 2] = ["base", "inputs"];

/// Why a what-if body was refused (400).
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// Not JSON at all.
    #[error("the body is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// Has `base` or `inputs`, but is not the structured form.
    #[error(
        "the body must be {{\"base\": \"live\"|\"default\", \"inputs\": {{input: number}}}}: {0}"
    )]
    Structured(serde_json::Error),
    /// Neither form.
    #[error(
        "the body must be an object {{input: number}} or {{\"base\": ..., \"inputs\": {{...}}}}: {0}"
    )]
    Flat(serde_json::Error),
}

impl WhatIf {
    /// Either form of the body; an empty body is `{}`.
    fn parse(body: &[u8]) -> Result<Self, BodyError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self {
                base: None,
                inputs: BTreeMap::new(),
            });
        }
        let value: Value = serde_json::from_slice(body).map_err(BodyError::NotJson)?;
        let structured = value
            .as_object()
            .is_some_and(|o| STRUCTURED_KEYS.iter().any(|key| o.contains_key(*key)));
        if structured {
            serde_json::from_value(value).map_err(BodyError::Structured)
        } else {
            let inputs = serde_json::from_value(value).map_err(BodyError::Flat)?;
            Ok(Self { base: None, inputs })
        }
    }
}

/// The inputs in the latest result of the analysis `name`, each with the provenance it had
/// there; `None` before its first result.
fn live_base(latest: &LatestResult, name: &str) -> Option<Base> {
    let latest = latest(name)?;
    let inputs = latest.get("inputs")?.as_object()?;
    Some(
        inputs
            .iter()
            .filter_map(|(input, entry)| {
                let value = entry.get("value")?.as_f64()?;
                let provenance = match entry.get("provenance")? {
                    Value::String(text) => match text.as_str() {
                        "live" => Provenance::Live,
                        "stale" => Provenance::Stale {
                            age_s: entry
                                .get("age_s")
                                .and_then(Value::as_f64)
                                .unwrap_or(f64::NAN),
                        },
                        "request" => Provenance::Request,
                        // The analysis had no reading: the default stands in, and says so.
                        _ => Provenance::Default,
                    },
                    _ => return None,
                };
                Some((input.clone(), (value, provenance)))
            })
            .collect(),
    )
}

fn description(name: &str, model: &Model, live: bool) -> Value {
    let spec = model.spec();
    json!({
        "name": name,
        "model": spec.name,
        "description": spec.description,
        "inputs": spec.inputs,
        "outputs": spec.outputs,
        "layers": spec.network.len(),
        "default_base": if live { BaseKind::Live } else { BaseKind::Default },
    })
}

async fn list(State(service): State<ModelService>) -> Json<Value> {
    let models: Vec<Value> = service
        .models
        .iter()
        .map(|(name, model)| description(name, model, (service.latest)(name).is_some()))
        .collect();
    Json(json!({ "models": models }))
}

async fn describe(
    State(service): State<ModelService>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = service.model(&name)?;
    Ok(Json(description(
        &name,
        &model,
        (service.latest)(&name).is_some(),
    )))
}

async fn evaluate(
    State(service): State<ModelService>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let model = service.model(&name)?;
    let request = WhatIf::parse(&body).map_err(|why| ApiError::bad_request(why.to_string()))?;
    let live = live_base(&service.latest, &name);
    let (kind, base) = match (request.base, live) {
        (Some(BaseKind::Live) | None, Some(live)) => (BaseKind::Live, live),
        (Some(BaseKind::Live), None) => {
            return Err(ApiError::conflict(format!(
                "no live inputs yet: the analysis {name} has evaluated no event; ask with \"base\": \"default\" or wait"
            )));
        }
        (Some(BaseKind::Default), _) | (None, None) => (BaseKind::Default, Base::new()),
    };
    // One evaluation is ~60 µs: no need to leave the async thread.
    match model.what_if_from(&base, &request.inputs) {
        Ok(evaluation) => {
            let mut answer = json!(evaluation);
            if let Some(object) = answer.as_object_mut() {
                object.insert("base".to_owned(), json!(kind));
            }
            Ok(Json(answer))
        }
        Err(EvaluationError::Inputs(issues)) => {
            let listed = json!(issues);
            let detail = EvaluationError::Inputs(issues).to_string();
            Err(ApiError::unprocessable(detail).with("issues", listed))
        }
        Err(other) => Err(ApiError::internal(other.to_string())),
    }
}

async fn inputs(
    State(service): State<ModelService>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    service.model(&name)?;
    let latest = (service.latest)(&name).ok_or_else(|| {
        ApiError::not_found(format!("the analysis {name} has evaluated no event yet"))
    })?;
    match latest.get("inputs") {
        Some(inputs) => Ok(Json(inputs.clone())),
        None => Err(ApiError::not_found(format!(
            "the latest result of {name} has no inputs"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path as FilePath;
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    const NAME: &str = "lcls_injector";

    /// The service and the analysis's latest result, which the test publishes.
    fn service() -> (ModelService, Arc<Mutex<Option<Value>>>) {
        let model = Model::open(FilePath::new("builtin:lcls_cu_injector")).expect("built in");
        let published: Arc<Mutex<Option<Value>>> = Arc::default();
        let read = Arc::clone(&published);
        let service = ModelService::new(BTreeMap::from([(NAME.to_owned(), model)]), move |name| {
            (name == NAME)
                .then(|| read.lock().expect("not poisoned").clone())
                .flatten()
        });
        (service, published)
    }

    /// Publishes what the `surrogate` analysis publishes after an event: QE04 live at −3.0 kG,
    /// the solenoid stale, the rest defaults.
    fn live((service, published): &(ModelService, Arc<Mutex<Option<Value>>>)) {
        let model = &service.models[NAME];
        let given = Base::from([
            ("QUAD:IN20:525:BCTRL".to_owned(), (-3.0, Provenance::Live)),
            (
                "SOLN:IN20:121:BCTRL".to_owned(),
                (0.47, Provenance::Stale { age_s: 12.5 }),
            ),
        ]);
        let evaluation = model
            .evaluate_named(vec![model.prepare(&given)])
            .expect("runs")
            .pop()
            .expect("one")
            .expect("finite");
        *published.lock().expect("not poisoned") = Some(json!(evaluation));
    }

    async fn call(
        (service, _): &(ModelService, Arc<Mutex<Option<Value>>>),
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .expect("a request");
        let response = service
            .clone()
            .router()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    async fn evaluate(
        service: &(ModelService, Arc<Mutex<Option<Value>>>),
        body: &str,
    ) -> (StatusCode, Value) {
        call(
            service,
            "POST",
            "/api/v1/model/lcls_injector/evaluate",
            body,
        )
        .await
    }

    fn input<'a>(answer: &'a Value, name: &str) -> &'a Value {
        &answer["inputs"][name]
    }

    #[tokio::test]
    async fn the_default_base_is_live_once_there_are_live_inputs() {
        let service = service();
        // Before any event: the defaults, and the flat body of old still works.
        let (status, answer) = evaluate(&service, r#"{"QUAD:IN20:371:BCTRL": 2.5}"#).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["base"], "default");
        assert_eq!(
            input(&answer, "QUAD:IN20:525:BCTRL")["provenance"],
            "default"
        );
        assert_eq!(
            input(&answer, "QUAD:IN20:371:BCTRL")["provenance"],
            "request"
        );
        let (status, answer) = evaluate(&service, r#"{"base": "live"}"#).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert!(
            answer["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("no live inputs yet")),
            "{answer}"
        );

        live(&service);
        let (status, answer) = evaluate(&service, r#"{"QUAD:IN20:371:BCTRL": 2.5}"#).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["base"], "live");
        assert_eq!(input(&answer, "QUAD:IN20:525:BCTRL")["value"], -3.0);
        assert_eq!(input(&answer, "QUAD:IN20:525:BCTRL")["provenance"], "live");
        assert_eq!(input(&answer, "SOLN:IN20:121:BCTRL")["provenance"], "stale");
        assert_eq!(input(&answer, "SOLN:IN20:121:BCTRL")["age_s"], 12.5);
        assert_eq!(
            input(&answer, "QUAD:IN20:371:BCTRL")["provenance"],
            "request"
        );
        assert_eq!(
            input(&answer, "QUAD:IN20:361:BCTRL")["provenance"],
            "default"
        );

        // The structured form, either base; the default base ignores the machine.
        let (status, answer) = evaluate(
            &service,
            r#"{"base": "default", "inputs": {"QUAD:IN20:371:BCTRL": 2.5}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["base"], "default");
        assert_eq!(
            input(&answer, "QUAD:IN20:525:BCTRL")["provenance"],
            "default"
        );
        let (status, live_answer) = evaluate(&service, r#"{"base": "live"}"#).await;
        assert_eq!(status, StatusCode::OK, "{live_answer}");
        assert_eq!(input(&live_answer, "QUAD:IN20:525:BCTRL")["value"], -3.0);
        // Nothing requested on the live base: the live analysis's own prediction.
        let latest = service.1.lock().expect("not poisoned").clone();
        let xrms = latest
            .as_ref()
            .and_then(|l| l.pointer("/outputs/OTRS:IN20:571:XRMS/value"))
            .and_then(Value::as_f64)
            .expect("a prediction");
        assert_eq!(live_answer["outputs"]["OTRS:IN20:571:XRMS"]["value"], xrms);
    }

    #[tokio::test]
    async fn bad_bodies_and_the_requests_out_of_range_values_are_refused() {
        let service = service();
        live(&service);
        let (status, answer) = evaluate(&service, r#"{"base": "machine"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["detail"]
                .as_str()
                .is_some_and(|e| e.contains("unknown variant `machine`")),
            "{answer}"
        );
        let (status, answer) = evaluate(&service, r#"{"inputs": {}, "extra": 1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let (status, answer) = evaluate(&service, r#"[1, 2]"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let (status, answer) = evaluate(
            &service,
            r#"{"inputs": {"QUAD:IN20:525:BCTRL": 2.5, "TYPO": 1}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(
            answer["issues"].as_array().map(Vec::len),
            Some(2),
            "{answer}"
        );
        assert!(answer["detail"].is_string(), "{answer}");
        // An empty body is a what-if with nothing changed.
        let (status, answer) = evaluate(&service, "").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["base"], "live");
    }

    #[tokio::test]
    async fn the_model_list_names_inputs_ranges_defaults_units_and_outputs() {
        let service = service();
        let (status, answer) = call(&service, "GET", "/api/v1/model", "").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let models = answer["models"].as_array().expect("a list");
        assert_eq!(models.len(), 1);
        let model = &models[0];
        assert_eq!(model["name"], NAME);
        assert_eq!(model["model"], "lcls_cu_injector");
        assert_eq!(model["default_base"], "default");
        let inputs = model["inputs"].as_array().expect("inputs");
        assert_eq!(inputs.len(), 16);
        let qe04 = inputs
            .iter()
            .find(|i| i["name"] == "QUAD:IN20:525:BCTRL")
            .expect("QE04");
        assert_eq!(qe04["unit"], "kG");
        assert_eq!(qe04["default"], -3.218399988942528);
        assert_eq!(
            qe04["range"],
            json!([-7.557932980106783, -1.0800286565992732])
        );
        assert_eq!(qe04["read_only"], false);
        let outputs: Vec<&str> = model["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .filter_map(|o| o["name"].as_str())
            .collect();
        assert_eq!(
            outputs,
            [
                "OTRS:IN20:571:XRMS",
                "OTRS:IN20:571:YRMS",
                "sigma_z",
                "norm_emit_x",
                "norm_emit_y"
            ]
        );
        live(&service);
        let (_, answer) = call(&service, "GET", "/api/v1/model", "").await;
        assert_eq!(answer["models"][0]["default_base"], "live");
        let (status, answer) = call(&service, "GET", "/api/v1/model/nothing", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            answer,
            json!({"detail": "no model \"nothing\"; the pipeline's models: [\"lcls_injector\"]"})
        );
    }
}
