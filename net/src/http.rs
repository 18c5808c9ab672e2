//! What every beamflow HTTP server shares: the one error body, and route tables.
//!
//! Every error is `{"detail": "..."}` with its status code, the shape dranspose's FastAPI
//! answers, because dranspose's clients (scan software posting sequences and parameters) read
//! `detail`; one shape everywhere spares a client from guessing which server it asked.
//!
//! A server's routes are declared once, as a table of [`Route`]s that builds the router and that
//! its test compares with the server's OpenAPI document: axum cannot list a router's routes, so
//! without the table nothing would notice a route the document leaves out.
//!
//! Who may call a server is one [`Access`] value, checked by one layer ([`guard`]) around the
//! whole router, so no handler can forget it: every method other than `GET` and `HEAD` needs
//! the bearer token, and reads need it too when the operator says so.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use subtle::ConstantTimeEq as _;

use crate::FirstSeen;
use crate::token::Token;

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

    /// 413: the body is larger than the server takes.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, detail)
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

/// Who may call a server: the bearer token that writes (and, if asked, reads) need, or none
/// when the operator opened writes to a trusted network; and the count of refusals. Clones
/// share the count.
#[derive(Clone, Debug)]
pub struct Access {
    inner: Arc<AccessInner>,
}

#[derive(Debug)]
struct AccessInner {
    /// `None`: writes are open (`[security] open_writes`).
    token: Option<Token>,
    protect_reads: bool,
    refused: AtomicU64,
    /// Addresses already warned about.
    logged: Mutex<FirstSeen<IpAddr>>,
}

impl Access {
    /// Writes need `token`; reads are open.
    pub fn with_token(token: Token) -> Self {
        Self::build(Some(token), false)
    }

    /// Anyone may write: for dranspose's clients, which send no token, on a trusted network.
    pub fn open_writes() -> Self {
        Self::build(None, false)
    }

    /// The same rule with counts of its own: for another server of the same process, so each
    /// server's status counts its own refusals.
    pub fn for_another_server(&self) -> Self {
        Self::build(self.inner.token.clone(), self.inner.protect_reads)
    }

    /// Reads need the token too (when there is one).
    pub fn protect_reads(self, protect: bool) -> Self {
        Self::build(self.inner.token.clone(), protect)
    }

    fn build(token: Option<Token>, protect_reads: bool) -> Self {
        Self {
            inner: Arc::new(AccessInner {
                token,
                protect_reads,
                refused: AtomicU64::new(0),
                logged: Mutex::new(FirstSeen::new()),
            }),
        }
    }

    /// The token requests need, if any.
    pub fn token(&self) -> Option<&Token> {
        self.inner.token.as_ref()
    }

    /// Whether writes are open to anyone.
    pub fn writes_open(&self) -> bool {
        self.inner.token.is_none()
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// What a server's status shows: `{"open_writes", "protect_reads", "refused"}`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "open_writes": self.writes_open(),
            "protect_reads": self.inner.protect_reads,
            "refused": self.refused(),
        })
    }

    /// Whether a request with `method` and `authorization` header may go on.
    fn admits(&self, method: &Method, path: &str, authorization: Option<&HeaderValue>) -> bool {
        let Some(token) = &self.inner.token else {
            return true;
        };
        // HDF5-REST clients POST a selection too long for a URL: a read all the same.
        let reads = method == Method::GET
            || method == Method::HEAD
            || (method == Method::POST
                && path.starts_with("/datasets/")
                && path.ends_with("/value"));
        if reads && !self.inner.protect_reads {
            return true;
        }
        let Some(given) = authorization
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return false;
        };
        // In constant time: how long a wrong token took to refuse says nothing of the right one.
        bool::from(given.trim().as_bytes().ct_eq(token.as_str().as_bytes()))
    }

    /// Counts a refusal; whether `client` is new, so that it is logged (once per address).
    fn refuse(&self, client: IpAddr) -> bool {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        self.inner
            .logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_new(client)
    }
}

/// `router` behind `access`: a request it does not admit is a 401 with `WWW-Authenticate:
/// Bearer`, counted, and logged at WARN the first time its client address is refused. Every
/// request carries `access` as an extension, for the server's status. The client address is
/// known when the router is served with `into_make_service_with_connect_info::<SocketAddr>`.
pub fn guard(router: Router, access: &Access) -> Router {
    router.layer(axum::middleware::from_fn_with_state(access.clone(), check))
}

async fn check(State(access): State<Access>, mut request: Request, next: Next) -> Response {
    if access.admits(
        request.method(),
        request.uri().path(),
        request.headers().get(header::AUTHORIZATION),
    ) {
        request.extensions_mut().insert(access);
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(address)| {
            address.ip()
        });
    let detail = if request.headers().contains_key(header::AUTHORIZATION) {
        "wrong bearer token"
    } else {
        "this request needs a bearer token (Authorization: Bearer <token>)"
    };
    if access.refuse(client) {
        tracing::warn!(
            %client,
            method = %request.method(),
            path = request.uri().path(),
            reason = detail,
            "Refused an HTTP request without the right token; further refusals of this client are only counted."
        );
    }
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, detail).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
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

    #[tokio::test]
    async fn writes_need_the_token_and_each_client_is_logged_once() {
        let access = Access::with_token(Token::new("s3cret").unwrap());
        let app = guard(
            router([
                Route::get("/a", || async { "got" }),
                Route::post("/a", || async { "posted" }),
            ]),
            &access,
        );
        let call = |method: Method, authorization: Option<&str>, client: [u8; 4]| {
            let mut request = Request::builder().method(method).uri("/a");
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let mut request = request.body(Body::empty()).unwrap();
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::from((client, 4000))));
            app.clone().oneshot(request)
        };
        assert_eq!(
            body(call(Method::GET, None, [10, 0, 0, 1]).await.unwrap()).await,
            (StatusCode::OK, "got".to_owned())
        );
        let refused = call(Method::POST, None, [10, 0, 0, 1]).await.unwrap();
        assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let (status, detail) = body(refused).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(detail.starts_with(r#"{"detail":"this request needs a bearer token"#));
        assert_eq!(
            call(Method::POST, Some("Bearer s3creT"), [10, 0, 0, 1])
                .await
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            body(
                call(Method::POST, Some("Bearer s3cret"), [10, 0, 0, 1])
                    .await
                    .unwrap()
            )
            .await,
            (StatusCode::OK, "posted".to_owned())
        );
        assert_eq!(access.refused(), 2);
        // Logged once per address: the second refusal of 10.0.0.1 is only counted.
        assert!(!access.refuse(IpAddr::from([10, 0, 0, 1])));
        assert!(access.refuse(IpAddr::from([10, 0, 0, 2])));
        assert_eq!(access.status()["refused"], 4);

        let reads = access.clone().protect_reads(true);
        let app = guard(router([Route::get("/a", || async { "got" })]), &reads);
        let request = Request::builder().uri("/a").body(Body::empty()).unwrap();
        assert_eq!(
            app.oneshot(request).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        let open = Access::open_writes();
        assert!(open.admits(&Method::POST, "/a", None));
        // An HDF5-REST selection sent by POST reads; other POSTs under /datasets write.
        let token = Access::with_token(Token::new("t").unwrap());
        assert!(token.admits(&Method::POST, "/datasets/d-1/value", None));
        assert!(!token.admits(&Method::POST, "/datasets/d-1", None));
        assert_eq!(open.status()["open_writes"], true);
    }

    #[test]
    fn the_set_of_logged_clients_is_bounded() {
        let access = Access::with_token(Token::new("t").unwrap());
        let limit = FirstSeen::<IpAddr>::LIMIT;
        let new = (0..limit as u32 + 10)
            .filter(|n| access.refuse(IpAddr::from(n.to_be_bytes())))
            .count();
        assert_eq!(new, limit);
        assert_eq!(access.refused(), limit as u64 + 10);
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
