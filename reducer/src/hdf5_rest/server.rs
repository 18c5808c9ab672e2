//! The HDF5-REST (HSDS) routes h5pyd reads, over the [`View`]'s [`Hdf5File`]: the subset h5pyd
//! 1.0.0 and 0.24 need (the reference's table), read-only. h5pyd's `GET /` (the domain) is
//! answered by the dashboard's index, which hands it here ([`is_domain_request`], [`domain`]).
//!
//! 1.0.0 reads links and attributes inline from `GET /groups/{id}?include_links=1&include_attrs=1`;
//! 0.24 reads them from `/links` and `/attributes`, and needs `id`, `lastModified` and
//! `linkCount` on every object and `title` on links. No response carries `domain_objs`: 1.0.0
//! would cache those for the life of the `File`, and the state is live.

use std::collections::HashMap;
use std::io::Write as _;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use beamflow_net::http::{ApiError, Route};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue, json};

use super::select::{self, Dim};
use super::{Attribute, Data, Hdf5File, Node, object_id, shape_json, type_json};
use crate::http::View;

/// A value response is compressed when asked for and larger than this, as dranspose does.
const GZIP_ABOVE: usize = 1000;

/// The routes, beside the reducer's JSON API (see [`crate::http::routes`]).
pub fn routes() -> Vec<Route<View>> {
    vec![
        Route::get("/about", about),
        Route::get("/groups/{id}", group),
        Route::get("/groups/{id}/links", links),
        Route::get("/groups/{id}/links/{name}", link),
        Route::get("/groups/{id}/attributes", group_attributes),
        Route::get("/groups/{id}/attributes/{name}", group_attribute),
        Route::get("/datasets/{id}", dataset),
        Route::get("/datasets/{id}/attributes", dataset_attributes),
        Route::get("/datasets/{id}/attributes/{name}", dataset_attribute),
        Route::get("/datasets/{id}/value", value),
        Route::post("/datasets/{id}/value", value_by_post),
    ]
}

/// Whether a `GET /` is h5pyd asking for the domain (it always sends `domain`, and `getobjs`),
/// not a browser asking for the dashboard.
pub fn is_domain_request(query: &HashMap<String, String>) -> bool {
    query.contains_key("domain") || query.contains_key("getobjs")
}

/// The domain: the file's root group.
pub fn domain(view: &View) -> Response {
    let file = view.hdf5();
    Json(json!({
        "root": object_id("/", file.root()),
        "class": "domain",
        "owner": "beamflow",
        "created": file.modified(),
        "lastModified": file.modified(),
    }))
    .into_response()
}

async fn about() -> Json<JsonValue> {
    Json(json!({
        "state": "READY",
        "name": "beamflow",
        "about": "beamflow's reducer: its live state, read-only, as HDF5-REST",
        "beamflow_version": env!("CARGO_PKG_VERSION"),
    }))
}

type ObjectQuery = Query<HashMap<String, String>>;

/// `1`, `T` or `true`: h5pyd 1.0.0 sends `1`, 0.24 `T`.
fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query
        .get(key)
        .is_some_and(|v| matches!(v.as_str(), "1" | "T" | "t" | "true" | "True"))
}

/// What a route reads: `/groups/{id}` or `/datasets/{id}`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Group,
    Dataset,
}

fn missing(kind: Kind, id: &str) -> ApiError {
    let what = match kind {
        Kind::Group => "group",
        Kind::Dataset => "dataset",
    };
    ApiError::not_found(format!(
        "no {what} {id:?} (the state has changed, or never had it)"
    ))
}

/// The group or dataset `id`, and its path.
fn find<'a>(file: &'a Hdf5File, id: &str, kind: Kind) -> Result<(&'a str, &'a Node), ApiError> {
    let found = file.object(id).filter(|(_, node)| match kind {
        Kind::Group => matches!(node, Node::Group { .. }),
        Kind::Dataset => matches!(node, Node::Dataset { .. }),
    });
    found.ok_or_else(|| missing(kind, id))
}

fn attributes_of(node: &Node) -> &std::collections::BTreeMap<String, Attribute> {
    let (Node::Group { attributes, .. } | Node::Dataset { attributes, .. }) = node;
    attributes
}

/// The fields every object has (0.24 needs `id`, `lastModified` and `linkCount`).
fn object_json(
    file: &Hdf5File,
    path: &str,
    node: &Node,
    query: &HashMap<String, String>,
) -> JsonValue {
    let mut object = Map::new();
    object.insert("id".into(), object_id(path, node).into());
    object.insert("root".into(), object_id("/", file.root()).into());
    object.insert("domain".into(), "/".into());
    object.insert("created".into(), file.modified().into());
    object.insert("lastModified".into(), file.modified().into());
    let attributes = attributes_of(node);
    object.insert("attributeCount".into(), attributes.len().into());
    match node {
        Node::Group { members, .. } => {
            object.insert("linkCount".into(), members.len().into());
            if flag(query, "include_links") {
                let links = members
                    .iter()
                    .map(|(name, member)| (name.clone(), link_json(file, path, name, member)))
                    .collect::<Map<_, _>>();
                object.insert("links".into(), links.into());
            }
        }
        Node::Dataset { data, .. } => {
            object.insert("type".into(), type_json(data));
            object.insert("shape".into(), shape_json(data.shape()));
            object.insert(
                "creationProperties".into(),
                json!({"layout": {"class": "H5D_CONTIGUOUS"}}),
            );
        }
    }
    if flag(query, "include_attrs") {
        let attributes = attributes
            .iter()
            .map(|(name, attribute)| (name.clone(), attribute_json(file, name, attribute)))
            .collect::<Map<_, _>>();
        object.insert("attributes".into(), attributes.into());
    }
    object.into()
}

fn child_path(path: &str, name: &str) -> String {
    if path == "/" {
        format!("/{name}")
    } else {
        format!("{path}/{name}")
    }
}

fn link_json(file: &Hdf5File, path: &str, name: &str, member: &Node) -> JsonValue {
    let collection = match member {
        Node::Group { .. } => "groups",
        Node::Dataset { .. } => "datasets",
    };
    json!({
        "class": "H5L_TYPE_HARD",
        "id": object_id(&child_path(path, name), member),
        "title": name,
        "collection": collection,
        "created": file.modified(),
    })
}

fn attribute_json(file: &Hdf5File, name: &str, attribute: &Attribute) -> JsonValue {
    let string = json!({
        "class": "H5T_STRING",
        "length": "H5T_VARIABLE",
        "charSet": "H5T_CSET_UTF8",
        "strPad": "H5T_STR_NULLTERM",
    });
    let (kind, shape, value) = match attribute {
        Attribute::Text(text) => (string, shape_json(&[]), json!(text)),
        Attribute::Texts(texts) => (string, shape_json(&[texts.len()]), json!(texts)),
        Attribute::Number(x) => (
            json!({"class": "H5T_FLOAT", "base": "H5T_IEEE_F64LE"}),
            shape_json(&[]),
            json!(x),
        ),
        Attribute::Integer(n) => (
            json!({"class": "H5T_INTEGER", "base": "H5T_STD_I64LE"}),
            shape_json(&[]),
            json!(n),
        ),
    };
    json!({
        "name": name,
        "type": kind,
        "shape": shape,
        "value": value,
        "created": file.modified(),
        "lastModified": file.modified(),
    })
}

/// `/{collection}/{id}`: the object, with its links and attributes inline when asked.
fn object(
    view: &View,
    id: &str,
    kind: Kind,
    query: &HashMap<String, String>,
) -> Result<Json<JsonValue>, ApiError> {
    let file = view.hdf5();
    let (path, node) = find(&file, id, kind)?;
    Ok(Json(object_json(&file, path, node, query)))
}

async fn group(
    State(view): State<View>,
    Path(id): IdPath,
    Query(query): ObjectQuery,
) -> Result<Json<JsonValue>, ApiError> {
    object(&view, &id, Kind::Group, &query)
}

async fn dataset(
    State(view): State<View>,
    Path(id): IdPath,
    Query(query): ObjectQuery,
) -> Result<Json<JsonValue>, ApiError> {
    object(&view, &id, Kind::Dataset, &query)
}

async fn links(
    State(view): State<View>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    let file = view.hdf5();
    let (path, node) = find(&file, &id, Kind::Group)?;
    let Node::Group { members, .. } = node else {
        return Err(missing(Kind::Group, &id));
    };
    let links: Vec<JsonValue> = members
        .iter()
        .map(|(name, member)| link_json(&file, path, name, member))
        .collect();
    Ok(Json(json!({ "links": links })))
}

async fn link(
    State(view): State<View>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<JsonValue>, ApiError> {
    let file = view.hdf5();
    let (path, node) = find(&file, &id, Kind::Group)?;
    let member = match node {
        Node::Group { members, .. } => members.get(&name),
        Node::Dataset { .. } => None,
    };
    let member = member.ok_or_else(|| ApiError::not_found(format!("no link {name:?}")))?;
    Ok(Json(
        json!({ "link": link_json(&file, path, &name, member) }),
    ))
}

/// `/{collection}/{id}/attributes`: names, types and shapes, without values.
fn attribute_list(view: &View, id: &str, kind: Kind) -> Result<Json<JsonValue>, ApiError> {
    let file = view.hdf5();
    let (_, node) = find(&file, id, kind)?;
    let attributes: Vec<JsonValue> = attributes_of(node)
        .iter()
        .map(|(name, attribute)| {
            let mut entry = attribute_json(&file, name, attribute);
            if let Some(entry) = entry.as_object_mut() {
                entry.remove("value");
            }
            entry
        })
        .collect();
    Ok(Json(json!({ "attributes": attributes })))
}

/// `/{collection}/{id}/attributes/{name}`, with its value.
fn one_attribute(
    view: &View,
    id: &str,
    name: &str,
    kind: Kind,
) -> Result<Json<JsonValue>, ApiError> {
    let file = view.hdf5();
    let (_, node) = find(&file, id, kind)?;
    let attribute = attributes_of(node)
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no attribute {name:?}")))?;
    Ok(Json(attribute_json(&file, name, attribute)))
}

type IdPath = Path<String>;
type AttributePath = Path<(String, String)>;

async fn group_attributes(
    State(view): State<View>,
    Path(id): IdPath,
) -> Result<Json<JsonValue>, ApiError> {
    attribute_list(&view, &id, Kind::Group)
}

async fn group_attribute(
    State(view): State<View>,
    Path((id, name)): AttributePath,
) -> Result<Json<JsonValue>, ApiError> {
    one_attribute(&view, &id, &name, Kind::Group)
}

async fn dataset_attributes(
    State(view): State<View>,
    Path(id): IdPath,
) -> Result<Json<JsonValue>, ApiError> {
    attribute_list(&view, &id, Kind::Dataset)
}

async fn dataset_attribute(
    State(view): State<View>,
    Path((id, name)): AttributePath,
) -> Result<Json<JsonValue>, ApiError> {
    one_attribute(&view, &id, &name, Kind::Dataset)
}

async fn value(
    State(view): State<View>,
    Path(id): Path<String>,
    Query(query): ObjectQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read(
        &view,
        &id,
        query.get("select").map(String::as_str),
        &headers,
    )
}

/// h5pyd POSTs a selection too long for a URL; what it asks is still a read.
#[derive(Deserialize)]
struct SelectBody {
    select: Option<String>,
}

async fn value_by_post(
    State(view): State<View>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: SelectBody = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(format!(
            "the body must be JSON {{\"select\": \"[...]\"}} (point selections are not served): {error}"
        ))
    })?;
    read(&view, &id, body.select.as_deref(), &headers)
}

/// A dataset's values, or the `select`ed part: fixed-size numbers as bytes in the declared type
/// (`Content-Type` exactly `application/octet-stream`, which h5pyd checks), strings as JSON.
fn read(
    view: &View,
    id: &str,
    select: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let file = view.hdf5();
    let (_, node) = find(&file, id, Kind::Dataset)?;
    let Node::Dataset { data, .. } = node else {
        return Err(missing(Kind::Dataset, id));
    };
    let selection = select
        .map(|select| select::parse(select, data.shape()))
        .transpose()
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    match data {
        Data::Numbers(array) => {
            let bytes = match &selection {
                None => array.data().clone(),
                Some(selection) => Bytes::from(
                    select::gather(array.data(), array.dtype().size(), array.shape(), selection).0,
                ),
            };
            Ok(binary(bytes, headers))
        }
        Data::Strings { shape, values } => {
            let (picked, shape) = match &selection {
                None => (values.iter().collect::<Vec<_>>(), shape.clone()),
                Some(selection) => pick_strings(values, shape, selection),
            };
            Ok(Json(json!({ "value": nest(&picked, &shape) })).into_response())
        }
    }
}

/// The selected strings, in order, and the result's shape: the selection applied to the
/// strings' indices.
fn pick_strings<'a>(
    values: &'a [String],
    shape: &[usize],
    selection: &[Dim],
) -> (Vec<&'a String>, Vec<usize>) {
    let indices: Vec<u8> = (0..values.len() as u64)
        .flat_map(u64::to_le_bytes)
        .collect();
    let (picked, shape) = select::gather(&indices, 8, shape, selection);
    let strings = picked
        .chunks_exact(8)
        .filter_map(|index| {
            let index = u64::from_le_bytes(index.try_into().ok()?);
            values.get(usize::try_from(index).ok()?)
        })
        .collect();
    (strings, shape)
}

/// Row-major strings as nested JSON lists of `shape` (a scalar for an empty shape).
fn nest(values: &[&String], shape: &[usize]) -> JsonValue {
    match shape.split_first() {
        None => values.first().map_or(JsonValue::Null, |v| json!(v)),
        Some((&rows, rest)) => {
            let size: usize = rest.iter().product();
            let rows: Vec<JsonValue> = (0..rows)
                .map(|row| {
                    let from = (row * size).min(values.len());
                    let to = (from + size).min(values.len());
                    nest(&values[from..to], rest)
                })
                .collect();
            JsonValue::Array(rows)
        }
    }
}

/// Bytes as h5pyd takes them, gzipped when the client accepts it and it is worth it.
fn binary(bytes: Bytes, headers: &HeaderMap) -> Response {
    let octets = HeaderValue::from_static("application/octet-stream");
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if gzip && bytes.len() > GZIP_ABOVE {
        // The fastest level: a live view favours latency, and a frame of counts still
        // shrinks several times.
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(bytes.len() / 4),
            flate2::Compression::fast(),
        );
        if encoder.write_all(&bytes).is_ok()
            && let Ok(compressed) = encoder.finish()
        {
            return (
                [
                    (header::CONTENT_TYPE, octets),
                    (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
                ],
                compressed,
            )
                .into_response();
        }
    }
    ([(header::CONTENT_TYPE, octets)], bytes).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use beamflow_protocol::Value;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::http::{Status, app};

    fn view_of(rows: i64) -> View {
        let view = View::new();
        let history = Value::Map(BTreeMap::from([
            (
                "event_number".to_owned(),
                Value::Array((0..rows).map(Value::Int).collect()),
            ),
            (
                "names".to_owned(),
                Value::Array(vec![Value::from("a"), Value::from("b"), Value::from("c")]),
            ),
            (
                "_attrs".to_owned(),
                Value::Map(BTreeMap::from([
                    ("NX_class".to_owned(), Value::from("NXdata")),
                    ("signal".to_owned(), Value::from("event_number")),
                ])),
            ),
        ]));
        view.publish(
            Value::Map(BTreeMap::from([("history".to_owned(), history)])),
            Status::default(),
        );
        view
    }

    async fn get(view: &View, uri: &str, gzip: bool) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::get(uri);
        if gzip {
            request = request.header(header::ACCEPT_ENCODING, "deflate, gzip");
        }
        let response = app(view.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }

    async fn json_of(view: &View, uri: &str) -> JsonValue {
        let (status, _, body) = get(view, uri, false).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body:?}");
        serde_json::from_slice(&body).unwrap()
    }

    fn id_of(view: &View, path: &str) -> String {
        let file = view.hdf5();
        object_id(path, file.root().at(path).unwrap())
    }

    #[tokio::test]
    async fn groups_list_their_links_and_attributes_inline_and_apart() {
        let view = view_of(4);
        let root = id_of(&view, "/");
        let group = json_of(
            &view,
            &format!("/groups/{root}?include_links=1&include_attrs=1"),
        )
        .await;
        assert_eq!(group["linkCount"], 1);
        assert_eq!(group["id"], root.as_str());
        // The state's own `_attrs` make the group plottable, so the root defaults to it.
        assert_eq!(group["attributes"]["default"]["value"], "history");
        let history = group["links"]["history"]["id"].as_str().unwrap().to_owned();
        assert_eq!(history, id_of(&view, "/history"));
        let listed = json_of(&view, &format!("/groups/{history}/links")).await;
        let titles: Vec<&str> = listed["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["title"].as_str().unwrap())
            .collect();
        assert_eq!(titles, ["event_number", "names"]);
        let signal = json_of(&view, &format!("/groups/{history}/attributes/signal")).await;
        assert_eq!(signal["value"], "event_number");
        let (status, _, _) = get(&view, &format!("/groups/{history}/attributes/nope"), false).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn values_are_bytes_in_their_type_selected_as_numpy_selects() {
        let view = view_of(2000);
        let id = id_of(&view, "/history/event_number");
        let dataset = json_of(&view, &format!("/datasets/{id}")).await;
        assert_eq!(dataset["type"]["base"], "H5T_STD_I64LE");
        assert_eq!(dataset["shape"]["dims"], json!([2000]));
        let (_, headers, body) = get(
            &view,
            &format!("/datasets/{id}/value?select=[10:20:3]"),
            false,
        )
        .await;
        assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
        let values: Vec<i64> = body
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, [10, 13, 16, 19]);
        // Asked for gzip, a large read comes compressed and decodes to the whole dataset.
        let (_, headers, body) = get(&view, &format!("/datasets/{id}/value"), true).await;
        assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
        let mut whole = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut whole)
            .unwrap();
        assert_eq!(whole.len(), 2000 * 8);
        assert_eq!(
            i64::from_le_bytes(whole[1999 * 8..].try_into().unwrap()),
            1999
        );
        let names = id_of(&view, "/history/names");
        assert_eq!(
            json_of(&view, &format!("/datasets/{names}/value?select=[1:3]")).await,
            json!({"value": ["b", "c"]})
        );
        let (status, _, body) = get(
            &view,
            &format!("/datasets/{id}/value?select=[1:2,3]"),
            false,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    }

    #[tokio::test]
    async fn ids_stay_while_the_state_grows_and_the_new_length_is_served() {
        let view = view_of(3);
        let id = id_of(&view, "/history/event_number");
        let grown = view_of(5);
        assert_eq!(id_of(&grown, "/history/event_number"), id);
        let dataset = json_of(&grown, &format!("/datasets/{id}")).await;
        assert_eq!(dataset["shape"]["dims"], json!([5]));
    }

    #[tokio::test]
    async fn the_root_url_is_the_page_for_browsers_and_the_domain_for_h5pyd() {
        let view = view_of(1);
        let dashboard = crate::dashboard::Dashboard::new(view.clone(), Default::default());
        let call = |uri: &'static str| {
            let router = app(view.clone()).merge(dashboard.router());
            async move {
                let response = router
                    .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                response.headers()[header::CONTENT_TYPE].clone()
            }
        };
        assert!(call("/").await.to_str().unwrap().starts_with("text/html"));
        assert_eq!(call("/?domain=/&getobjs=1").await, "application/json");
        let domain = json_of(&view, "/about").await;
        assert_eq!(domain["state"], "READY");
    }
}
