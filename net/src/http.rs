//! What every beamflow HTTP server shares: the one error body, and route tables.
//!
//! Every error is `{"detail": "..."}` with its status code, the shape dranspose's FastAPI
//! answers, because dranspose's clients (scan software posting sequences and parameters) read
//! `detail`; one shape everywhere spares a client from guessing which server it asked.
//!
//! A server's routes are declared once, as a table of [`Route`]s that builds the router and that
//! its test compares with the server's OpenAPI document: axum cannot list a router's routes, so
//! without the table nothing would notice a route the document leaves out.

use std::collections::BTreeSet;

use axum::Json;
use axum::Router;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

/// An HTTP error: its status code and the reason, answered as `{"detail": reason}`, with any
/// further fields beside `detail`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{detail}")]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            fields: serde_json::Map::new(),
        }
    }

    /// 400: the request cannot be understood or cannot be done as asked.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404: nothing at that path or with that name.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 409: the request clashes with the server's state (something runs, or has not yet).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    /// 422: the request is well formed but its values are not acceptable.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    /// 500: the server failed.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    /// 503: the server cannot answer yet.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    /// Adds `name: value` beside `detail` (say, every reason a request was refused).
    pub fn with(mut self, name: &str, value: serde_json::Value) -> Self {
        self.fields.insert(name.to_owned(), value);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The reason.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::with_capacity(1 + self.fields.len());
        body.insert("detail".to_owned(), self.detail.into());
        body.extend(self.fields);
        (self.status, Json(body)).into_response()
    }
}

/// One method on one path, with its handler.
pub struct Route<S> {
    path: &'static str,
    method: Method,
    handler: MethodRouter<S>,
}

impl<S: Clone + Send + Sync + 'static> Route<S> {
    /// `GET path`.
    pub fn get<H: Handler<T, S>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self {
            path,
            method: Method::GET,
            handler: axum::routing::get(handler),
        }
    }

    /// `POST path`.
    pub fn post<H: Handler<T, S>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self {
            path,
            method: Method::POST,
            handler: axum::routing::post(handler),
        }
    }

    /// `DELETE path`.
    pub fn delete<H: Handler<T, S>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self {
            path,
            method: Method::DELETE,
            handler: axum::routing::delete(handler),
        }
    }
}

impl<S> Route<S> {
    /// The operation as an OpenAPI document names it: the method in lower case and the path
    /// with axum's catch-all `{*name}` written `{name}`.
    pub fn operation(&self) -> Operation {
        (
            self.path.replace("{*", "{"),
            self.method.as_str().to_lowercase(),
        )
    }
}

/// A path and a method in lower case, as OpenAPI's `paths` keys them.
pub type Operation = (String, String);

/// The router serving `routes`; routes on one path share it, each with its method.
///
/// # Panics
///
/// If two routes have the same path and method: a table that says two things for one request
/// is a programming error, found by the first test that builds the router.
pub fn router<S: Clone + Send + Sync + 'static>(
    routes: impl IntoIterator<Item = Route<S>>,
) -> Router<S> {
    routes.into_iter().fold(Router::new(), |router, route| {
        router.route(route.path, route.handler)
    })
}

/// The operations an OpenAPI document describes (every method under every `paths` entry).
pub fn documented(document: &str) -> Result<BTreeSet<Operation>, serde_json::Error> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let document: serde_json::Value = serde_json::from_str(document)?;
    let paths = document
        .get("paths")
        .and_then(serde_json::Value::as_object)
        .into_iter()
        .flatten();
    Ok(paths
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(move |method| (path.clone(), (*method).to_owned()))
        })
        .collect())
}

/// The `$ref`s of an OpenAPI document that point nowhere in it.
pub fn dangling_refs(document: &str) -> Result<Vec<String>, serde_json::Error> {
    fn refs<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|v| refs(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let document: serde_json::Value = serde_json::from_str(document)?;
    let mut found = Vec::new();
    refs(&document, &mut found);
    Ok(found
        .into_iter()
        .filter(|target| {
            target
                .strip_prefix('#')
                .is_none_or(|pointer| document.pointer(pointer).is_none())
        })
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn body(response: Response) -> (StatusCode, String) {
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn an_error_is_its_status_and_a_detail() {
        assert_eq!(
            body(ApiError::not_found("no result at \"x\"").into_response()).await,
            (
                StatusCode::NOT_FOUND,
                r#"{"detail":"no result at \"x\""}"#.to_owned()
            )
        );
        let refused = ApiError::unprocessable("2 inputs out of range")
            .with("issues", serde_json::json!(["a", "b"]));
        assert_eq!(
            body(refused.into_response()).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"detail":"2 inputs out of range","issues":["a","b"]}"#.to_owned()
            )
        );
    }

    #[tokio::test]
    async fn a_table_builds_the_router_and_names_its_operations() {
        let routes = || {
            [
                Route::get("/a/{*path}", || async { "got" }),
                Route::post("/a/{*path}", || async { "posted" }),
                Route::delete("/b", || async { "deleted" }),
            ]
        };
        let app: Router = router(routes());
        let call = |method: Method, uri: &str| {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(request)
        };
        assert_eq!(
            body(call(Method::GET, "/a/x/y").await.unwrap()).await.1,
            "got"
        );
        assert_eq!(
            body(call(Method::POST, "/a/x").await.unwrap()).await.1,
            "posted"
        );
        assert_eq!(
            call(Method::GET, "/b").await.unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let operations: BTreeSet<Operation> = routes().iter().map(Route::operation).collect();
        let document = r#"{"paths": {
            "/a/{path}": {"get": {}, "post": {}, "parameters": []},
            "/b": {"delete": {}}
        }}"#;
        assert_eq!(operations, documented(document).unwrap());
    }

    #[test]
    fn a_ref_to_nothing_is_found() {
        let document = r##"{"paths": {"/a": {"get": {"responses": {
            "200": {"$ref": "#/components/responses/Fine"},
            "404": {"$ref": "#/components/responses/Missing"}
        }}}}, "components": {"responses": {"Fine": {}}}}"##;
        assert_eq!(
            dangling_refs(document).unwrap(),
            ["#/components/responses/Missing"]
        );
    }
}
