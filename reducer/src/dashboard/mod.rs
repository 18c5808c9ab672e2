//! The live dashboard: the page at `GET /` (from the `beamflow-dashboard` crate), its panels at
//! `GET /api/v1/dashboard`, one Server-Sent Events stream per page at `GET /api/v1/events`, and
//! each screen's latest frame as a PNG. Served on the reducer's port, so the page reads only
//! its own origin; a Content-Security-Policy keeps it there, offline.
//!
//! - [`panels`]: what each accumulator kind shows, and what a panel is sent per update.
//! - [`stream`]: the [`Hub`] holding the newest messages, and the pages' streams.
//! - [`health`]: the controller's side of the health, read over its HTTP API.
//! - [`png`]: a frame as an indexed PNG with a colormap.

pub mod health;
pub mod panels;
pub mod png;
pub mod stream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use beamflow_net::Stop;
use beamflow_net::http::{ApiError, Route, router};
use beamflow_net::token::Token;
use beamflow_protocol::Value;
use serde::Serialize;

use crate::http::View;
pub use panels::{Panel, PanelEntry};
pub use stream::{Hub, Message};

/// What the page may load: only from its own origin, no inline code, nothing from elsewhere
/// (a control-room network has no internet; a stray CDN link must fail loudly, not hang).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; font-src 'none'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often the view is looked at for a new update: twice per period of the reducer's
/// publishing (`node::PUBLISH`), so that pages get every one it publishes.
const STATE_PERIOD: Duration = Duration::from_millis(50);

/// How often the health is sent.
const HEALTH_PERIOD: Duration = Duration::from_secs(1);

/// The page's panels: what `GET /api/v1/dashboard` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Description {
    /// The page's title.
    pub title: String,
    /// The controller's HTTP address, for links.
    pub controller: Option<String>,
    /// One per accumulator (in the pipeline's order) and per surrogate model.
    pub panels: Vec<PanelEntry>,
}

/// The dashboard of one reducer: its description, the hub its pages listen to, and the view
/// updates are taken from.
#[derive(Clone)]
pub struct Dashboard {
    view: View,
    hub: Hub,
    description: Arc<Description>,
    /// The PNG rendered last, reused while the same frame is asked for the same way: several
    /// pages showing one screen cost one rendering per frame.
    rendered: Arc<std::sync::Mutex<Option<CachedPng>>>,
    /// The HDF5 output whose files the health panel lists.
    files: Option<crate::hdf5_output::Hdf5Output>,
}

/// A rendered PNG and what it was rendered from.
type CachedPng = (PngKey, Arc<png::Rendered>);

/// What a rendered PNG depends on.
#[derive(Debug, Clone, PartialEq)]
struct PngKey {
    name: String,
    event: u64,
    options: png::RenderOptions,
}

/// One `state` message.
#[derive(Serialize)]
struct StateMessage<'a> {
    seq: u64,
    event: Option<u64>,
    scan: Option<u64>,
    finished: bool,
    panels: BTreeMap<&'a str, Value>,
}

/// One `health` message.
#[derive(Serialize)]
struct HealthMessage<'a> {
    seq: u64,
    reducer: &'a crate::http::Status,
    pages: usize,
    /// The HDF5 files written, with `[reducer.hdf5]`.
    files: Option<crate::hdf5_output::FilesStatus>,
    #[serde(flatten)]
    controller: &'a health::ControllerHealth,
}

impl Dashboard {
    /// The dashboard of `view`, showing `description`'s panels.
    pub fn new(view: View, description: Description) -> Self {
        Self {
            view,
            hub: Hub::new(),
            description: Arc::new(description),
            rendered: Arc::default(),
            files: None,
        }
    }

    /// Lists the files `output` writes in the health panel.
    pub fn with_files(mut self, output: Option<crate::hdf5_output::Hdf5Output>) -> Self {
        self.files = output;
        self
    }

    /// The hub its pages listen to; close it before the HTTP server stops.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Its routes: they build [`router`](Self::router); the reducer's OpenAPI test holds the
    /// document to them.
    pub fn routes() -> Vec<Route<Dashboard>> {
        vec![
            Route::get("/", index),
            Route::get("/assets/{file}", asset),
            Route::get("/api/v1/dashboard", description),
            Route::get("/api/v1/events", events),
            Route::get("/api/v1/image/{file}", image),
            Route::get("/api/v1/colorbar.png", colorbar),
        ]
    }

    /// The router, to merge into the reducer's.
    pub fn router(&self) -> Router {
        router(Self::routes()).with_state(self.clone())
    }

    /// Publishes a `state` message when the view changed since `last` (a result applied, a
    /// scan begun or ended); returns what it compared, for the next call.
    fn publish_state(&self, last: Option<StateKey>) -> Option<StateKey> {
        let status = self.view.status();
        let key = StateKey::of(&status);
        if last == Some(key) {
            return last;
        }
        let state = self.view.state();
        let panels = self
            .description
            .panels
            .iter()
            .filter_map(|entry| {
                let view = state.pointer(&entry.path)?;
                Some((entry.name.as_str(), entry.panel.update(view)?))
            })
            .collect();
        let seq = self.hub.next_id();
        let message = StateMessage {
            seq,
            event: status.last_event,
            scan: status.scan,
            finished: status.finished,
            panels,
        };
        if let Some(message) = encode(seq, &message) {
            self.hub.publish_state(message);
        }
        Some(key)
    }

    /// Publishes a `health` message: the reducer's status and what the controller said.
    fn publish_health(&self, controller: &health::ControllerHealth) {
        let seq = self.hub.next_id();
        let status = self.view.status();
        let message = HealthMessage {
            seq,
            reducer: &status,
            pages: self.hub.pages(),
            files: self
                .files
                .as_ref()
                .map(crate::hdf5_output::Hdf5Output::status),
            controller,
        };
        if let Some(message) = encode(seq, &message) {
            self.hub.publish_health(message);
        }
    }

    /// Publishes the state as it changes until `stop`, then closes the hub (every page's
    /// stream ends with a `bye`).
    pub fn publish_until(&self, stop: &Stop) {
        let mut last = None;
        while !stop.is_stopped() {
            last = self.publish_state(last);
            // Sampling the published view at a fixed rate is the point: a page is sent no more
            // updates than the reducer publishes views, however fast results come.
            std::thread::sleep(STATE_PERIOD);
        }
        self.hub.close();
    }

    /// Publishes the health once a second until `stop`, asking the controller at `controller`
    /// (with `token`) for its part; without one (a replay) the reducer's status alone.
    pub fn publish_health_until(
        &self,
        controller: Option<SocketAddr>,
        token: Option<&Token>,
        stop: &Stop,
    ) {
        let client = controller.map(|address| health::ControllerClient::new(address, token));
        let mut logged = false;
        while !stop.is_stopped() {
            let started = Instant::now();
            let health = client
                .as_ref()
                .map(health::ControllerClient::poll)
                .unwrap_or_default();
            match (&health.controller_error, logged) {
                (Some(error), false) => {
                    tracing::warn!(%error, "The dashboard cannot read the controller's health; it will say so until it can.");
                    logged = true;
                }
                (None, true) => logged = false,
                _ => {}
            }
            self.publish_health(&health);
            std::thread::sleep(HEALTH_PERIOD.saturating_sub(started.elapsed()));
        }
    }
}

/// Message `seq` as JSON; logged and `None` if it cannot be encoded (it cannot: every map key
/// is text).
fn encode(seq: u64, message: &impl Serialize) -> Option<Message> {
    match serde_json::to_string(message) {
        Ok(data) => Some(Message {
            id: seq,
            data: data.into(),
        }),
        Err(error) => {
            tracing::error!(%error, "Cannot encode a dashboard message as JSON.");
            None
        }
    }
}

/// What says the state changed: results applied, events, the scan and whether it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StateKey {
    results: u64,
    events: u64,
    scan: Option<u64>,
    finished: bool,
}

impl StateKey {
    fn of(status: &crate::http::Status) -> Self {
        Self {
            results: status.results,
            events: status.events,
            scan: status.scan,
            finished: status.finished,
        }
    }
}

/// An embedded file of the page, with the policy that keeps the page on this server. The
/// files change only with the binary, which `no-cache` lets the browser find out cheaply.
fn serve(asset: &beamflow_dashboard::Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.bytes,
    )
        .into_response()
}

fn find(path: &str) -> Option<&'static beamflow_dashboard::Asset> {
    beamflow_dashboard::assets()
        .iter()
        .find(|asset| asset.path == path)
}

/// The page; or, asked by h5pyd (silx) with its `domain` query, the HDF5-REST domain: both
/// live at the server's root, as h5pyd's endpoint and the page's address are the same URL.
async fn index(
    State(dashboard): State<Dashboard>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if crate::hdf5_rest::server::is_domain_request(&query) {
        return Ok(crate::hdf5_rest::server::domain(&dashboard.view));
    }
    find("index.html")
        .map(serve)
        .ok_or_else(|| ApiError::internal("the page is not in this build"))
}

async fn asset(
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    find(&file)
        .map(serve)
        .ok_or_else(|| ApiError::not_found(format!("no asset {file:?}")))
}

async fn description(State(dashboard): State<Dashboard>) -> Response {
    axum::Json(&*dashboard.description).into_response()
}

async fn events(State(dashboard): State<Dashboard>) -> Response {
    (
        // An nginx ingress would otherwise buffer the stream.
        [
            ("x-accel-buffering", "no"),
            (header::CACHE_CONTROL.as_str(), "no-cache"),
        ],
        dashboard.hub.response(),
    )
        .into_response()
}

/// The query of `GET /api/v1/image/{name}.png`.
#[derive(Debug, Default, serde::Deserialize)]
struct ImageQuery {
    cmap: Option<String>,
    scale: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    bin: Option<usize>,
}

impl ImageQuery {
    fn options(&self) -> Result<png::RenderOptions, png::RenderError> {
        let defaults = png::RenderOptions::default();
        Ok(png::RenderOptions {
            colormap: match &self.cmap {
                Some(name) => name.parse()?,
                None => defaults.colormap,
            },
            scale: match &self.scale {
                Some(name) => png::Scale::parse(name, self.min, self.max)?,
                None => defaults.scale,
            },
            bin: self.bin.unwrap_or(defaults.bin),
        })
    }
}

/// The latest frame of the image accumulator `{name}` (`file` is `name.png`) as an indexed PNG,
/// with the counts its colours span and the frame's event in headers.
async fn image(
    State(dashboard): State<Dashboard>,
    axum::extract::Path(file): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<ImageQuery>,
) -> Result<Response, ApiError> {
    let name = file
        .strip_suffix(".png")
        .ok_or_else(|| ApiError::not_found(format!("{file:?}: images are NAME.png")))?;
    let frame = dashboard.view.frame(name).ok_or_else(|| {
        ApiError::not_found(format!("no frame of image accumulator {name:?} yet"))
    })?;
    let options = query
        .options()
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let key = PngKey {
        name: name.to_owned(),
        event: frame.event_number.0,
        options,
    };
    let cached = {
        let rendered = dashboard
            .rendered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rendered
            .as_ref()
            .filter(|(cached, _)| *cached == key)
            .map(|(_, png)| Arc::clone(png))
    };
    let rendered = match cached {
        Some(rendered) => rendered,
        None => {
            // A few milliseconds of work: off the runtime's one thread.
            let rendered = tokio::task::spawn_blocking(move || png::render(&frame, &options))
                .await
                .map_err(|error| ApiError::internal(format!("rendering failed: {error}")))?
                .map_err(|error| ApiError::bad_request(error.to_string()))?;
            let rendered = Arc::new(rendered);
            *dashboard
                .rendered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((key.clone(), Arc::clone(&rendered)));
            rendered
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE.as_str(), "image/png".to_owned()),
            (header::CACHE_CONTROL.as_str(), "no-store".to_owned()),
            ("x-frame-event", key.event.to_string()),
            ("x-scale-min", rendered.low.to_string()),
            ("x-scale-max", rendered.high.to_string()),
        ],
        rendered.png.clone(),
    )
        .into_response())
}

/// The query of `GET /api/v1/colorbar.png`.
#[derive(Debug, Default, serde::Deserialize)]
struct ColorbarQuery {
    cmap: Option<String>,
}

/// A 256×1 PNG of the colormap, which the page stretches into its colourbar.
async fn colorbar(
    axum::extract::Query(query): axum::extract::Query<ColorbarQuery>,
) -> Result<Response, ApiError> {
    let colormap = match &query.cmap {
        Some(name) => name
            .parse()
            .map_err(|error: png::RenderError| ApiError::bad_request(error.to_string()))?,
        None => png::Colormap::default(),
    };
    Ok((
        [(header::CONTENT_TYPE, "image/png")],
        png::colorbar(colormap),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Status;

    fn dashboard() -> Dashboard {
        let view = View::new();
        let description = Description {
            title: "test".to_owned(),
            controller: None,
            panels: vec![
                PanelEntry::accumulator("table", Panel::Table {}),
                PanelEntry::accumulator("absent", Panel::QuadScan {}),
            ],
        };
        Dashboard::new(view, description)
    }

    #[test]
    fn a_state_message_is_published_only_when_the_view_changed() {
        let dashboard = dashboard();
        let mut receiver = dashboard.hub.inner_state_for_tests();
        let state = serde_json::json!({"table": {"values": {"a": 1}, "event_number": {"a": 3}}});
        let status = Status {
            results: 1,
            events: 1,
            last_event: Some(3),
            scan: Some(2),
            ..Status::default()
        };
        dashboard
            .view
            .publish(Value::from_serialize(&state).unwrap(), status.clone());
        let key = dashboard.publish_state(None);
        let first = receiver.borrow_and_update().clone();
        let message: serde_json::Value = serde_json::from_str(&first.data).unwrap();
        assert_eq!(message["seq"], first.id);
        assert_eq!(
            (&message["event"], &message["scan"]),
            (&3.into(), &2.into())
        );
        assert_eq!(message["panels"]["table"]["rows"][0]["value"], 1);
        assert!(message["panels"].get("absent").is_none(), "{message}");
        assert_eq!(dashboard.publish_state(key), key);
        assert!(
            !receiver.has_changed().unwrap(),
            "nothing new, nothing sent"
        );
        dashboard.view.publish_status(Status {
            results: 2,
            ..status
        });
        dashboard.publish_state(key);
        assert!(receiver.has_changed().unwrap());
    }

    /// A page's stream never ends by itself, and a graceful shutdown waits for every response
    /// (axum#2673): closing the hub must let the server stop with a page attached.
    #[tokio::test]
    async fn the_server_stops_with_a_page_attached_once_the_hub_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dashboard = dashboard();
        dashboard.publish_state(None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(tokio::sync::Notify::new());
        let server = tokio::spawn({
            let stop = Arc::clone(&stop);
            let app = dashboard.router();
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.notified().await })
                    .await
            }
        });
        let mut page = tokio::net::TcpStream::connect(address).await.unwrap();
        page.write_all(b"GET /api/v1/events HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut received = Vec::new();
        let mut buffer = [0; 4096];
        while !String::from_utf8_lossy(&received).contains("event: state") {
            let n = page.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the stream ended before its first state");
            received.extend_from_slice(&buffer[..n]);
        }
        let head = String::from_utf8_lossy(&received).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(head.contains("x-accel-buffering: no"), "{head}");
        stop.notify_waiters();
        dashboard.hub().close();
        // The page reads the rest: the bye, then the end of the stream.
        loop {
            let n = page.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..n]);
        }
        assert!(String::from_utf8_lossy(&received).contains("event: bye"));
        server.await.unwrap().unwrap();
    }

    async fn get(dashboard: &Dashboard, uri: &str) -> axum::response::Response {
        use tower::ServiceExt;
        dashboard
            .router()
            .oneshot(
                axum::http::Request::get(uri)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
    }

    async fn body(response: axum::response::Response) -> Vec<u8> {
        use http_body_util::BodyExt;
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn the_latest_frame_is_served_as_a_png_of_its_shape_and_scaling() {
        let dashboard = dashboard();
        let response = get(&dashboard, "/api/v1/image/screen.png").await;
        assert_eq!(response.status(), axum::http::StatusCode::NOT_FOUND);
        // A 3×4 ramp 0..11.
        let frame = crate::Frame {
            event_number: beamflow_protocol::EventNumber(42),
            width: 4,
            height: 3,
            bin: 2,
            pixels: (0..12).map(|i| i as f32).collect(),
        };
        dashboard
            .view
            .publish_frames([("screen".to_owned(), Arc::new(frame))].into());
        let response = get(
            &dashboard,
            "/api/v1/image/screen.png?cmap=greys&scale=fixed&min=0&max=11",
        )
        .await;
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "image/png");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["x-frame-event"], "42");
        assert_eq!(
            (&headers["x-scale-min"], &headers["x-scale-max"]),
            (&"0".parse().unwrap(), &"11".parse().unwrap())
        );
        let png = body(response).await;
        let decoder = ::png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), (4, 3));
        assert_eq!(info.color_type, ::png::ColorType::Indexed);
        // Fixed 0..11 puts the ramp's ends on the palette's ends.
        assert_eq!((pixels[0], pixels[11]), (0, 255));
        for (uri, why) in [
            ("/api/v1/image/screen.png?cmap=jet", "unknown colormap"),
            ("/api/v1/image/screen.png?scale=fixed&min=3", "fixed needs"),
            ("/api/v1/image/screen.png?bin=99", "bin 99"),
        ] {
            let response = get(&dashboard, uri).await;
            assert_eq!(
                response.status(),
                axum::http::StatusCode::BAD_REQUEST,
                "{uri}"
            );
            let text = String::from_utf8(body(response).await).unwrap();
            assert!(text.contains(why), "{uri}: {text}");
        }
        let response = get(&dashboard, "/api/v1/colorbar.png?cmap=viridis").await;
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        let reader = ::png::Decoder::new(std::io::Cursor::new(body(response).await))
            .read_info()
            .unwrap();
        assert_eq!((reader.info().width, reader.info().height), (256, 1));
    }

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_the_policy_and_nothing_from_elsewhere() {
        let dashboard = dashboard();
        let response = get(&dashboard, "/").await;
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            response.headers()["content-security-policy"],
            CONTENT_SECURITY_POLICY
        );
        let page = String::from_utf8(body(response).await).unwrap();
        for file in beamflow_dashboard::assets() {
            let response = get(&dashboard, &format!("/assets/{}", file.path)).await;
            assert_eq!(
                response.status(),
                axum::http::StatusCode::OK,
                "{}",
                file.path
            );
            assert_eq!(response.headers()["content-type"], file.content_type);
            assert_eq!(
                response.headers()["content-security-policy"],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(body(response).await, file.bytes);
        }
        // Everything the page loads is one of ours.
        for (attribute, rest) in page
            .split(" src=\"")
            .skip(1)
            .map(|s| ("src", s))
            .chain(page.split(" href=\"").skip(1).map(|s| ("href", s)))
        {
            let target = rest.split('"').next().unwrap();
            assert!(
                target.starts_with("/assets/")
                    || target.starts_with("/api/")
                    || target.starts_with('#')
                    // An empty icon: no request for /favicon.ico.
                    || target == "data:,",
                "{attribute}={target:?} leaves the server"
            );
        }
        let response = get(&dashboard, "/assets/nowhere.js").await;
        assert_eq!(response.status(), axum::http::StatusCode::NOT_FOUND);
        // The policy allows this origin only: no host, no scheme but blob: and data: images.
        assert!(!CONTENT_SECURITY_POLICY.contains("http"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
