//! The reducer's state as an HDF5 file, for the HDF5-REST (HSDS) view h5pyd and silx read
//! and the NeXus files a scan ends with.
//!
//! Each accumulator's view is a tree of [`Value`]s; here it becomes groups and datasets:
//!
//! - a map is a group, except a typed array `{dtype, shape, data}` (how results carry numpy
//!   arrays), which is a dataset of that type and shape;
//! - a number, a flag or a string is a scalar dataset (`int64`, `float64`, `uint8`, UTF-8);
//! - a list of numbers is a 1-D dataset (`int64` when all are integers, else `float64` with
//!   null as NaN), a rectangular list of such lists an N-D one, a list of strings a string
//!   dataset, bytes a `uint8` dataset; any other list a group of its items named `0`, `1`, ...;
//! - a null scalar is left out (HDF5 has no null);
//! - dranspose's convention for attributes holds: the map under `<name>_attrs` holds the
//!   attributes of its sibling `<name>`, and `_attrs` those of the group itself, so a Python
//!   reducer's `publish` reads as it does under dranspose.
//!
//! Ids are `g-`/`d-` and a UUID-shaped hash of the object's path: stable while the state grows,
//! and 36 characters, as h5pyd 1.0.0 checks.
//!
//! Accumulators add what JSON leaves out: NeXus attributes
//! ([`Accumulator::hdf5_attributes`](crate::Accumulator::hdf5_attributes)), so silx plots them
//! unconfigured, and the frame they keep for display as a `pixels` dataset.
//!
//! # Layout
//!
//! - this file: [`Node`], [`tree`], [`Hdf5File`], [`object_id`], the HDF5 type and shape as JSON.
//! - [`select`]: `select=[a:b:s, i, [j, k]]`, applied as numpy does.
//! - [`server`]: the HDF5-REST routes h5pyd 1.0.0 and 0.24 read.

pub mod select;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use beamflow_protocol::{DType, NdArray, Value};
use bytes::Bytes;
use serde_json::json;

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    /// A string.
    Text(String),
    /// A list of strings (`axes`).
    Texts(Vec<String>),
    /// A number.
    Number(f64),
    /// An integer.
    Integer(i64),
}

/// A dataset's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Fixed-size numbers, row-major little-endian.
    Numbers(NdArray),
    /// Variable-length UTF-8 strings, row-major; `shape` empty for a scalar.
    Strings {
        /// The dataset's shape.
        shape: Vec<usize>,
        /// The strings.
        values: Vec<String>,
    },
}

impl Data {
    /// The dataset's shape (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        match self {
            Data::Numbers(array) => array.shape(),
            Data::Strings { shape, .. } => shape,
        }
    }
}

/// A group or a dataset, with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A group of named members.
    Group {
        /// Its members by name.
        members: BTreeMap<String, Node>,
        /// Its attributes.
        attributes: BTreeMap<String, Attribute>,
    },
    /// A dataset.
    Dataset {
        /// Its values.
        data: Data,
        /// Its attributes.
        attributes: BTreeMap<String, Attribute>,
    },
}

impl Node {
    /// The member at a `/`-separated path below this node (`""` is the node itself).
    pub fn at(&self, path: &str) -> Option<&Node> {
        path.split('/')
            .filter(|part| !part.is_empty())
            .try_fold(self, |node, part| match node {
                Node::Group { members, .. } => members.get(part),
                Node::Dataset { .. } => None,
            })
    }

    /// Every object below and including this one, with its path from here (`/` for itself),
    /// parents before children.
    pub fn walk(&self) -> Vec<(String, &Node)> {
        let mut found = vec![("/".to_owned(), self)];
        let mut index = 0;
        while index < found.len() {
            let (path, node) = (found[index].0.clone(), found[index].1);
            if let Node::Group { members, .. } = node {
                for (name, member) in members {
                    let child = if path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{path}/{name}")
                    };
                    found.push((child, member));
                }
            }
            index += 1;
        }
        found
    }
}

/// The tree of a value (the reducer's state: each accumulator's view under its name).
pub fn tree(value: &Value) -> Node {
    match value {
        Value::Map(entries) => match typed_array(value) {
            Some(array) => dataset(Data::Numbers(array)),
            None => group(entries),
        },
        other => member(other).unwrap_or_else(|| group(&BTreeMap::new())),
    }
}

fn dataset(data: Data) -> Node {
    Node::Dataset {
        data,
        attributes: BTreeMap::new(),
    }
}

fn group(entries: &BTreeMap<String, Value>) -> Node {
    let mut members = BTreeMap::new();
    for (name, value) in entries {
        if name.ends_with("_attrs") {
            continue;
        }
        if let Some(mut node) = member(value) {
            if let Some(Value::Map(attributes)) = entries.get(&format!("{name}_attrs")) {
                set_attributes(&mut node, attributes);
            }
            members.insert(name.clone(), node);
        }
    }
    let mut node = Node::Group {
        members,
        attributes: BTreeMap::new(),
    };
    if let Some(Value::Map(attributes)) = entries.get("_attrs") {
        set_attributes(&mut node, attributes);
    }
    node
}

fn set_attributes(node: &mut Node, given: &BTreeMap<String, Value>) {
    let (Node::Group { attributes, .. } | Node::Dataset { attributes, .. }) = node;
    for (name, value) in given {
        let attribute = match value {
            Value::Text(text) => Attribute::Text(text.clone()),
            Value::Int(n) => Attribute::Integer(*n),
            Value::Float(x) => Attribute::Number(*x),
            Value::Bool(flag) => Attribute::Integer(i64::from(*flag)),
            Value::Array(items) => match texts(items) {
                Some(texts) => Attribute::Texts(texts),
                None => continue,
            },
            _ => continue,
        };
        attributes.insert(name.clone(), attribute);
    }
}

/// A member's node; `None` for a null (left out).
fn member(value: &Value) -> Option<Node> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(flag) => dataset(numbers(DType::Uint8, vec![], vec![u8::from(*flag)])?),
        Value::Int(n) => dataset(numbers(DType::Int64, vec![], n.to_le_bytes().to_vec())?),
        Value::Float(x) => dataset(numbers(DType::Float64, vec![], x.to_le_bytes().to_vec())?),
        Value::Text(text) => dataset(Data::Strings {
            shape: vec![],
            values: vec![text.clone()],
        }),
        Value::Bytes(bytes) => dataset(Data::Numbers(
            NdArray::new(vec![bytes.len()], DType::Uint8, bytes.clone()).ok()?,
        )),
        Value::Map(_) => tree(value),
        Value::Array(items) => match list(items) {
            Some(data) => dataset(data),
            None if let Some(columns) = columns(items) => Node::Group {
                members: columns,
                attributes: BTreeMap::new(),
            },
            None => {
                let entries = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| (i.to_string(), item.clone()))
                    .collect();
                group(&entries)
            }
        },
    })
}

fn numbers(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Option<Data> {
    NdArray::new(shape, dtype, Bytes::from(bytes))
        .ok()
        .map(Data::Numbers)
}

/// A [`Value::typed_array`] of a type beamflow knows, its length consistent with its shape.
fn typed_array(value: &Value) -> Option<NdArray> {
    let (dtype, shape, data) = value.as_typed_array()?;
    NdArray::new(shape, DType::from_name(dtype)?, data.clone()).ok()
}

fn texts(items: &[Value]) -> Option<Vec<String>> {
    items
        .iter()
        .map(|item| match item {
            Value::Text(text) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// A table given as rows (maps with the same keys, as a quad scan's steps) as its columns,
/// each a member as that list of values would be (a dataset where it can be): the shape a
/// history's columns have, so a plot reads one column. `None` unless every row is a map with
/// the first one's keys.
fn columns(rows: &[Value]) -> Option<BTreeMap<String, Node>> {
    let first = match rows.first() {
        Some(row @ Value::Map(first)) if typed_array(row).is_none() => first,
        _ => return None,
    };
    let mut columns = BTreeMap::new();
    for key in first.keys() {
        let column: Vec<Value> = rows
            .iter()
            .map(|row| match row {
                Value::Map(row) if row.len() == first.len() => row.get(key).cloned(),
                _ => None,
            })
            .collect::<Option<_>>()?;
        if let Some(node) = member(&Value::Array(column)) {
            columns.insert(key.clone(), node);
        }
    }
    Some(columns)
}

/// A list as one dataset: numbers (N-D when rectangular) or strings; `None` otherwise.
fn list(items: &[Value]) -> Option<Data> {
    if !items.is_empty()
        && let Some(values) = texts(items)
    {
        return Some(Data::Strings {
            shape: vec![values.len()],
            values,
        });
    }
    let mut shape = Vec::new();
    let mut flat = Vec::new();
    flatten(items, 0, &mut shape, &mut flat)?;
    let integers = flat.iter().all(|v| matches!(v, Value::Int(_)));
    let bytes: Vec<u8> = if integers {
        flat.iter()
            .flat_map(|v| match v {
                Value::Int(n) => n.to_le_bytes(),
                _ => [0; 8],
            })
            .collect()
    } else {
        flat.iter()
            .flat_map(|v| {
                let x = match v {
                    Value::Int(n) => *n as f64,
                    Value::Float(x) => *x,
                    Value::Bool(flag) => f64::from(u8::from(*flag)),
                    _ => f64::NAN,
                };
                x.to_le_bytes()
            })
            .collect()
    };
    let dtype = if integers {
        DType::Int64
    } else {
        DType::Float64
    };
    numbers(dtype, shape, bytes)
}

/// Walks a nested list of numbers, recording its shape; `None` if it is ragged or holds
/// anything but numbers, flags and nulls.
fn flatten<'a>(
    items: &'a [Value],
    depth: usize,
    shape: &mut Vec<usize>,
    flat: &mut Vec<&'a Value>,
) -> Option<()> {
    match shape.get(depth) {
        Some(&len) if len != items.len() => return None,
        Some(_) => {}
        None => shape.push(items.len()),
    }
    for item in items {
        match item {
            Value::Array(inner) => flatten(inner, depth + 1, shape, flat)?,
            Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Null
                if shape.len() == depth + 1 =>
            {
                flat.push(item)
            }
            _ => return None,
        }
    }
    Some(())
}

/// The reducer's state as one HDF5 file: each accumulator a group, with its attributes and its
/// frame; objects found by id.
#[derive(Debug)]
pub struct Hdf5File {
    state: Arc<Value>,
    frames: Arc<BTreeMap<String, Arc<crate::Frame>>>,
    root: Node,
    paths: HashMap<String, String>,
    built: f64,
}

impl Hdf5File {
    /// The file of `state`, with each accumulator's `attributes` and `frames`.
    pub fn new(
        state: Arc<Value>,
        frames: Arc<BTreeMap<String, Arc<crate::Frame>>>,
        attributes: &BTreeMap<String, Value>,
    ) -> Self {
        let mut root = tree(&state);
        if let Node::Group { members, .. } = &mut root {
            for (name, frame) in frames.iter() {
                if let Some(Node::Group { members, .. }) = members.get_mut(name) {
                    members.insert("pixels".to_owned(), pixels(frame));
                }
            }
            for (name, attributes) in attributes {
                if let Some(member) = members.get_mut(name) {
                    apply_attributes(member, attributes);
                }
            }
        }
        set_default(&mut root);
        let paths = root
            .walk()
            .into_iter()
            .map(|(path, node)| (object_id(&path, node), path))
            .collect();
        let built = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            state,
            frames,
            root,
            paths,
            built,
        }
    }

    /// Whether it was built of this state and these frames.
    pub(crate) fn is_of(
        &self,
        state: &Arc<Value>,
        frames: &Arc<BTreeMap<String, Arc<crate::Frame>>>,
    ) -> bool {
        Arc::ptr_eq(&self.state, state) && Arc::ptr_eq(&self.frames, frames)
    }

    /// The root group.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The object with `id`, and its path.
    pub fn object(&self, id: &str) -> Option<(&str, &Node)> {
        let path = self.paths.get(id)?;
        Some((path, self.root.at(path)?))
    }

    /// When it was built, in seconds since the epoch (every object's `lastModified`).
    pub fn modified(&self) -> f64 {
        self.built
    }
}

/// A frame kept for display as a `float32` dataset of its rows and columns.
fn pixels(frame: &crate::Frame) -> Node {
    let bytes: Vec<u8> = frame.pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
    numbers(DType::Float32, vec![frame.height, frame.width], bytes)
        .map_or_else(|| group(&BTreeMap::new()), dataset)
}

/// Applies attributes given in dranspose's convention (see [`crate::Accumulator::hdf5_attributes`]).
fn apply_attributes(node: &mut Node, given: &Value) {
    let Some(entries) = given.as_map() else {
        return;
    };
    if let Some(Value::Map(own)) = entries.get("_attrs") {
        set_attributes(node, own);
    }
    let Node::Group { members, .. } = node else {
        return;
    };
    for (key, value) in entries {
        if let Some(name) = key.strip_suffix("_attrs").filter(|name| !name.is_empty()) {
            if let (Some(member), Value::Map(attributes)) = (members.get_mut(name), value) {
                set_attributes(member, attributes);
            }
        } else if let Some(member) = members.get_mut(key) {
            apply_attributes(member, value);
        }
    }
}

/// The root's `default`: the first accumulator that says what to plot, so silx opens on it.
fn set_default(root: &mut Node) {
    let Node::Group {
        members,
        attributes,
    } = root
    else {
        return;
    };
    let plotted = members.iter().find_map(|(name, member)| match member {
        Node::Group { attributes, .. } if attributes.contains_key("signal") => Some(name.clone()),
        _ => None,
    });
    if let Some(name) = plotted {
        attributes
            .entry("default".to_owned())
            .or_insert(Attribute::Text(name));
    }
}

/// The object's id: `g-` or `d-` and 36 characters of a hash of its path, shaped as a UUID.
pub fn object_id(path: &str, node: &Node) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(path.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let prefix = match node {
        Node::Group { .. } => "g",
        Node::Dataset { .. } => "d",
    };
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A dataset's HDF5 type as HDF5-REST writes it.
pub fn type_json(data: &Data) -> serde_json::Value {
    match data {
        Data::Strings { .. } => json!({
            "class": "H5T_STRING",
            "length": "H5T_VARIABLE",
            "charSet": "H5T_CSET_UTF8",
            "strPad": "H5T_STR_NULLTERM",
        }),
        Data::Numbers(array) => {
            let base = match array.dtype() {
                DType::Uint8 => "H5T_STD_U8LE",
                DType::Uint16 => "H5T_STD_U16LE",
                DType::Uint32 => "H5T_STD_U32LE",
                DType::Uint64 => "H5T_STD_U64LE",
                DType::Int8 => "H5T_STD_I8LE",
                DType::Int16 => "H5T_STD_I16LE",
                DType::Int32 => "H5T_STD_I32LE",
                DType::Int64 => "H5T_STD_I64LE",
                DType::Float32 => "H5T_IEEE_F32LE",
                DType::Float64 => "H5T_IEEE_F64LE",
            };
            let class = if base.starts_with("H5T_IEEE") {
                "H5T_FLOAT"
            } else {
                "H5T_INTEGER"
            };
            json!({"class": class, "base": base})
        }
    }
}

/// A shape as HDF5-REST writes it.
pub fn shape_json(shape: &[usize]) -> serde_json::Value {
    if shape.is_empty() {
        json!({"class": "H5S_SCALAR"})
    } else {
        json!({"class": "H5S_SIMPLE", "dims": shape})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn a_history_becomes_groups_and_typed_datasets() {
        let history = map(&[
            (
                "event_number",
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
            ),
            ("time", Value::Array(vec![Value::Float(1.5), Value::Null])),
            (
                "values",
                map(&[(
                    "xrms",
                    Value::Array(vec![Value::Float(0.1), Value::Float(0.2)]),
                )]),
            ),
            ("note", Value::Text("ok".into())),
            ("missing", Value::Null),
        ]);
        let root = tree(&map(&[("history", history)]));
        let Some(Node::Dataset {
            data: Data::Numbers(events),
            ..
        }) = root.at("history/event_number")
        else {
            panic!("{root:?}")
        };
        assert_eq!((events.dtype(), events.shape()), (DType::Int64, &[2][..]));
        let Some(Node::Dataset {
            data: Data::Numbers(time),
            ..
        }) = root.at("/history/time")
        else {
            panic!()
        };
        let time = time.to_f64();
        assert_eq!(time[0], 1.5);
        assert!(time[1].is_nan(), "null in a list of numbers is NaN");
        assert!(matches!(
            root.at("history/values/xrms"),
            Some(Node::Dataset { .. })
        ));
        assert!(matches!(
            root.at("history/note"),
            Some(Node::Dataset { data: Data::Strings { shape, .. }, .. }) if shape.is_empty()
        ));
        assert!(
            root.at("history/missing").is_none(),
            "a null scalar is left out"
        );
        let paths: Vec<String> = root.walk().into_iter().map(|(path, _)| path).collect();
        assert_eq!(paths[..2], ["/".to_owned(), "/history".to_owned()]);
        assert!(paths.contains(&"/history/values/xrms".to_owned()));
    }

    #[test]
    fn typed_arrays_nested_lists_and_dranspose_attributes() {
        let image = map(&[
            ("dtype", Value::Text("<u2".into())),
            ("shape", Value::Array(vec![Value::Int(2), Value::Int(2)])),
            (
                "data",
                Value::Bytes(Bytes::from_static(&[1, 0, 2, 0, 3, 0, 4, 0])),
            ),
        ]);
        let publish = map(&[
            ("image", image),
            (
                "image_attrs",
                map(&[
                    ("units", Value::Text("counts".into())),
                    (
                        "axes",
                        Value::Array(vec![Value::Text("y".into()), Value::Text("x".into())]),
                    ),
                ]),
            ),
            ("_attrs", map(&[("NX_class", Value::Text("NXdata".into()))])),
            (
                "grid",
                Value::Array(vec![
                    Value::Array(vec![Value::Int(1), Value::Float(2.5)]),
                    Value::Array(vec![Value::Int(3), Value::Int(4)]),
                ]),
            ),
            (
                "ragged",
                Value::Array(vec![Value::Array(vec![Value::Int(1)]), Value::Int(2)]),
            ),
            (
                "names",
                Value::Array(vec![Value::Text("a".into()), Value::Text("b".into())]),
            ),
        ]);
        let root = tree(&publish);
        let Node::Group {
            attributes,
            members,
        } = &root
        else {
            panic!()
        };
        assert_eq!(attributes["NX_class"], Attribute::Text("NXdata".into()));
        assert!(!members.contains_key("image_attrs"));
        let Some(Node::Dataset {
            data: Data::Numbers(image),
            attributes,
        }) = root.at("image")
        else {
            panic!()
        };
        assert_eq!((image.dtype(), image.shape()), (DType::Uint16, &[2, 2][..]));
        assert_eq!(
            attributes["axes"],
            Attribute::Texts(vec!["y".into(), "x".into()])
        );
        let Some(Node::Dataset {
            data: Data::Numbers(grid),
            ..
        }) = root.at("grid")
        else {
            panic!()
        };
        assert_eq!(
            (grid.dtype(), grid.to_f64()),
            (DType::Float64, vec![1.0, 2.5, 3.0, 4.0])
        );
        assert_eq!(grid.shape(), [2, 2]);
        assert!(
            matches!(root.at("ragged"), Some(Node::Group { .. })),
            "a ragged list is a group of its items"
        );
        assert!(matches!(root.at("ragged/1"), Some(Node::Dataset { .. })));
        assert_eq!(
            type_json(match root.at("names") {
                Some(Node::Dataset { data, .. }) => data,
                _ => panic!(),
            })["class"],
            "H5T_STRING"
        );
        assert_eq!(
            type_json(&Data::Numbers(image.clone()))["base"],
            "H5T_STD_U16LE"
        );
        assert_eq!(shape_json(&[]), json!({"class": "H5S_SCALAR"}));
    }

    /// A quad scan's steps arrive as rows; each column is a member a plot reads alone.
    #[test]
    fn a_list_of_rows_is_a_dataset_per_column_and_mixed_rows_stay_items() {
        let step = |k: f64, size: Option<f64>, accepted: bool| {
            map(&[
                ("bctrl_kg", Value::Float(k)),
                ("size_x_m", size.map_or(Value::Null, Value::Float)),
                ("accepted", Value::Bool(accepted)),
                ("screen", Value::Text("OTR2".into())),
                ("bins", Value::Array(vec![Value::Int(1), Value::Int(2)])),
                (
                    "not_fitted",
                    if accepted {
                        Value::Null
                    } else {
                        Value::Text("no shots".into())
                    },
                ),
            ])
        };
        let state = map(&[
            (
                "steps",
                Value::Array(vec![step(-1.0, Some(2e-4), true), step(1.0, None, false)]),
            ),
            (
                "mixed",
                Value::Array(vec![
                    map(&[("a", Value::Int(1))]),
                    map(&[("b", Value::Int(2))]),
                ]),
            ),
            (
                "nested",
                Value::Array(vec![map(&[("fit", map(&[("emit", Value::Float(1.0))]))])]),
            ),
        ]);
        let root = tree(&state);
        let column = |path: &str| match root.at(path) {
            Some(Node::Dataset { data, .. }) => data.clone(),
            other => panic!("{path}: {other:?}"),
        };
        let Data::Numbers(size) = column("steps/size_x_m") else {
            panic!()
        };
        assert_eq!(size.dtype(), DType::Float64);
        assert_eq!(size.to_f64()[0], 2e-4);
        assert!(size.to_f64()[1].is_nan(), "a missing size is NaN");
        let Data::Numbers(bins) = column("steps/bins") else {
            panic!()
        };
        assert_eq!(
            bins.shape(),
            [2, 2],
            "a row's array is a row of the dataset"
        );
        assert_eq!(
            column("steps/screen"),
            Data::Strings {
                shape: vec![2],
                values: vec!["OTR2".into(), "OTR2".into()]
            }
        );
        assert!(matches!(column("steps/accepted"), Data::Numbers(_)));
        // A column of maps is a table again; one of nulls and texts a group of its items.
        assert!(matches!(column("nested/fit/emit"), Data::Numbers(_)));
        assert!(matches!(
            root.at("steps/not_fitted/1"),
            Some(Node::Dataset { .. })
        ));
        assert!(
            root.at("steps/not_fitted/0").is_none(),
            "a null is left out"
        );
        // Rows of different keys are a group of their items.
        assert!(matches!(root.at("mixed/1/b"), Some(Node::Dataset { .. })));
    }

    #[test]
    fn ids_are_stable_uuid_shaped_and_name_their_kind() {
        let group = tree(&map(&[]));
        let id = object_id("/", &group);
        assert_eq!(id, object_id("/", &group), "stable");
        assert!(id.starts_with("g-"));
        let uuid = &id[2..];
        assert_eq!(uuid.len(), 36, "h5pyd 1.0.0 checks 36 characters: {id}");
        assert!(uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        assert_eq!(uuid.matches('-').count(), 4);
        let dataset = tree(&Value::Int(1));
        assert!(object_id("/x", &dataset).starts_with("d-"));
        assert_ne!(object_id("/x", &group), object_id("/y", &group));
    }
}
