//! Typed parameters: what analyses and accumulators declare, what users set as raw bytes
//! (`POST /api/v1/parameter/{name}`, or a `--params` file), and the typed values they see.
//!
//! Values travel as bytes exactly as in dranspose (`str(value).encode()`, booleans as
//! `True`/`False`, binaries raw), so a parameter file written for dranspose works here.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::ParameterName;

/// The parameter every ingester understands, as in dranspose: record each handled event to
/// `{prefix}{ingester}-{scan uuid}.cbors` (a folder prefix ends in `/`); empty: no recording.
pub const DUMP_PREFIX: &str = "dump_prefix";

/// The size in MB (10^6 bytes) at which an ingester closes a dump file and goes on in the next
/// (`-1`, `-2`, ...); 0: no limit.
pub const DUMP_MAX_MB: &str = "dump_max_mb";

/// [`DUMP_MAX_MB`]'s default: a gigabyte.
pub const DEFAULT_DUMP_MAX_MB: i64 = 1000;

/// The type of a parameter's value, named as in dranspose's descriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    /// UTF-8 text.
    Str,
    /// A 64-bit signed integer.
    Int,
    /// A 64-bit float.
    Float,
    /// `True` or `False`.
    Bool,
    /// Raw bytes, e.g. a whole file such as a dark frame or a mask.
    Binary,
}

/// A parameter's typed value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParameterValue {
    /// Text.
    Str(String),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// Bytes.
    Binary(#[serde(serialize_with = "serialize_len")] Bytes),
}

fn serialize_len<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("<{} bytes>", bytes.len()))
}

impl ParameterValue {
    /// The bytes form, as dranspose writes it.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            ParameterValue::Str(s) => Bytes::from(s.clone()),
            ParameterValue::Int(i) => Bytes::from(i.to_string()),
            ParameterValue::Float(f) => Bytes::from(format!("{f:?}")),
            ParameterValue::Bool(true) => Bytes::from_static(b"True"),
            ParameterValue::Bool(false) => Bytes::from_static(b"False"),
            ParameterValue::Binary(b) => b.clone(),
        }
    }

    /// Parses the bytes form as `dtype`.
    pub fn parse(dtype: ParameterType, data: &Bytes) -> Result<Self, ValueError> {
        let text = || std::str::from_utf8(data).map_err(|_| ValueError::NotText);
        Ok(match dtype {
            ParameterType::Str => ParameterValue::Str(text()?.to_owned()),
            ParameterType::Int => {
                let t = text()?.trim();
                ParameterValue::Int(
                    t.parse()
                        .map_err(|_| ValueError::NotInteger(t.to_owned()))?,
                )
            }
            ParameterType::Float => {
                let t = text()?.trim();
                ParameterValue::Float(t.parse().map_err(|_| ValueError::NotNumber(t.to_owned()))?)
            }
            ParameterType::Bool => match text()?.trim() {
                "True" | "true" | "1" => ParameterValue::Bool(true),
                "False" | "false" | "0" | "" => ParameterValue::Bool(false),
                other => return Err(ValueError::NotBool(other.to_owned())),
            },
            ParameterType::Binary => ParameterValue::Binary(data.clone()),
        })
    }
}

/// A parameter an analysis or accumulator declares, with its default.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParameterDescription {
    /// The parameter's name.
    pub name: ParameterName,
    /// Its type.
    pub dtype: ParameterType,
    /// The value used until a user sets one.
    pub default: ParameterValue,
    /// What it does, for `GET /api/v1/parameters`.
    pub description: String,
}

/// Bytes that are not a value of the parameter's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Text was expected.
    #[error("value is not UTF-8 text")]
    NotText,
    /// An integer was expected.
    #[error("{0:?} is not an integer")]
    NotInteger(String),
    /// A number was expected.
    #[error("{0:?} is not a number")]
    NotNumber(String),
    /// A boolean was expected.
    #[error("{0:?} is not True or False")]
    NotBool(String),
}

/// A parameter that is not what its description says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParameterError {
    /// The value does not parse as the declared type.
    #[error("parameter {name}: {error}")]
    Invalid {
        /// The parameter.
        name: ParameterName,
        /// What was wrong.
        error: ValueError,
    },
    /// The parameter file is not a list of `{name, data}`.
    #[error("parameter file: {0}")]
    File(String),
}

/// The parameters in force for a scan: every described parameter (set or default) plus any set
/// but undescribed ones as text or bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameters {
    values: BTreeMap<ParameterName, ParameterValue>,
}

impl Parameters {
    /// Types the raw values by their descriptions and fills in defaults.
    pub fn resolve(
        raw: impl IntoIterator<Item = (ParameterName, Bytes)>,
        descriptions: &[ParameterDescription],
    ) -> Result<Self, ParameterError> {
        let mut values = BTreeMap::new();
        for (name, data) in raw {
            let value = match descriptions.iter().find(|d| d.name == name) {
                Some(description) => {
                    ParameterValue::parse(description.dtype, &data).map_err(|error| {
                        ParameterError::Invalid {
                            name: name.clone(),
                            error,
                        }
                    })?
                }
                None => match std::str::from_utf8(&data) {
                    Ok(text) => ParameterValue::Str(text.to_owned()),
                    Err(_) => ParameterValue::Binary(data),
                },
            };
            values.insert(name, value);
        }
        for description in descriptions {
            values
                .entry(description.name.clone())
                .or_insert_with(|| description.default.clone());
        }
        Ok(Self { values })
    }

    /// The value of `name`, if set or described.
    pub fn get(&self, name: &str) -> Option<&ParameterValue> {
        self.values.get(name)
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            ParameterValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A float parameter (integers are accepted).
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            ParameterValue::Float(f) => Some(*f),
            ParameterValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// A text parameter.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            ParameterValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            ParameterValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A binary parameter.
    pub fn binary(&self, name: &str) -> Option<&Bytes> {
        match self.get(name)? {
            ParameterValue::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// All values by name.
    pub fn iter(&self) -> impl Iterator<Item = (&ParameterName, &ParameterValue)> {
        self.values.iter()
    }
}

#[derive(Deserialize)]
struct JsonEntry {
    name: String,
    data: String,
}

/// Reads a dranspose parameter file: a JSON list `[{"name": ..., "data": ...}]`, or the same list
/// as CBOR (data as text or bytes). Pickle files are refused: beamflow never unpickles.
pub fn parse_parameter_file(bytes: &[u8]) -> Result<Vec<(ParameterName, Bytes)>, ParameterError> {
    if bytes.first() == Some(&0x80) {
        return Err(ParameterError::File(
            "this is a pickle; beamflow does not read pickle, write the list as JSON \
             [{\"name\": ..., \"data\": ...}] instead"
                .to_owned(),
        ));
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let entries: Vec<JsonEntry> = serde_json::from_str(text).map_err(|error| {
            ParameterError::File(format!("expected a JSON list of {{name, data}}: {error}"))
        })?;
        return Ok(entries
            .into_iter()
            .map(|e| (ParameterName::from(e.name), Bytes::from(e.data)))
            .collect());
    }
    let list = crate::value::Value::from_cbor(bytes)
        .map_err(|error| ParameterError::File(format!("neither JSON nor CBOR: {error}")))?;
    let crate::value::Value::Array(items) = list else {
        return Err(ParameterError::File(format!(
            "expected a CBOR list, found {}",
            list.kind()
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let name = match item.pointer("name") {
                Some(crate::value::Value::Text(name)) => ParameterName::from(name.as_str()),
                _ => {
                    return Err(ParameterError::File(format!(
                        "entry {index} has no text name"
                    )));
                }
            };
            let data = match item.pointer("data") {
                Some(crate::value::Value::Bytes(b)) => b.clone(),
                Some(crate::value::Value::Text(t)) => Bytes::from(t.clone()),
                _ => {
                    return Err(ParameterError::File(format!(
                        "entry {index} ({name}) has no data"
                    )));
                }
            };
            Ok((name, data))
        })
        .collect()
}

/// Writes a dranspose parameter file, as its controller does beside the dumps: a JSON list
/// `[{"name": ..., "data": "text"}]`, or, when some value holds a NUL byte (which its JSON text
/// cannot carry), the same list as CBOR with that value as bytes. Returns the file's extension
/// (`json` or `cbor`) and its bytes; [`parse_parameter_file`] reads both.
pub fn encode_parameter_file(parameters: &[(String, Bytes)]) -> (&'static str, Vec<u8>) {
    use crate::value::Value;
    let binary = parameters.iter().any(|(_, data)| data.contains(&0));
    let entry = |(name, data): &(String, Bytes)| {
        let data = match std::str::from_utf8(data) {
            Ok(text) if !data.contains(&0) => Value::Text(text.to_owned()),
            _ => Value::Bytes(data.clone()),
        };
        Value::Map(
            [
                ("name".to_owned(), Value::Text(name.clone())),
                ("data".to_owned(), data),
            ]
            .into(),
        )
    };
    let list = Value::Array(parameters.iter().map(entry).collect());
    if binary {
        ("cbor", list.to_cbor())
    } else {
        let json: Vec<serde_json::Value> = parameters
            .iter()
            .map(|(name, data)| {
                serde_json::json!({ "name": name, "data": String::from_utf8_lossy(data) })
            })
            .collect();
        ("json", serde_json::to_vec(&json).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_files_round_trip_as_json_or_cbor() {
        let text = vec![("dump_prefix".to_owned(), Bytes::from("/data/x-"))];
        let (ext, bytes) = encode_parameter_file(&text);
        assert_eq!(ext, "json");
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"[{"data":"/data/x-","name":"dump_prefix"}]"#
        );
        let mut binary = text.clone();
        binary.push(("mask".to_owned(), Bytes::from_static(b"\x00\x01")));
        let (ext, bytes) = encode_parameter_file(&binary);
        assert_eq!(ext, "cbor");
        let read = parse_parameter_file(&bytes).unwrap();
        assert_eq!(
            read,
            binary
                .iter()
                .map(|(n, d)| (ParameterName::from(n.as_str()), d.clone()))
                .collect::<Vec<_>>()
        );
    }

    fn describe(name: &str, dtype: ParameterType, default: ParameterValue) -> ParameterDescription {
        ParameterDescription {
            name: name.into(),
            dtype,
            default,
            description: String::new(),
        }
    }

    #[test]
    fn typed_values_defaults_and_errors() {
        let descriptions = [
            describe(
                "threshold",
                ParameterType::Float,
                ParameterValue::Float(0.5),
            ),
            describe("enabled", ParameterType::Bool, ParameterValue::Bool(false)),
            describe("roi", ParameterType::Int, ParameterValue::Int(0)),
        ];
        let raw = parse_parameter_file(
            br#"[{"name":"enabled","data":"True"},{"name":"note","data":"hi"}]"#,
        )
        .unwrap();
        let parameters = Parameters::resolve(raw, &descriptions).unwrap();
        assert_eq!(parameters.float("threshold"), Some(0.5));
        assert_eq!(parameters.bool("enabled"), Some(true));
        assert_eq!(parameters.str("note"), Some("hi"));
        let error =
            Parameters::resolve([("roi".into(), Bytes::from("ten"))], &descriptions).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"parameter roi: "ten" is not an integer"#
        );
    }

    #[test]
    fn bytes_form_round_trips() {
        for (dtype, value) in [
            (ParameterType::Float, ParameterValue::Float(1.0)),
            (ParameterType::Int, ParameterValue::Int(-3)),
            (ParameterType::Bool, ParameterValue::Bool(true)),
            (ParameterType::Str, ParameterValue::Str("x y".into())),
        ] {
            assert_eq!(
                ParameterValue::parse(dtype, &value.to_bytes()).unwrap(),
                value
            );
        }
    }

    #[test]
    fn pickle_is_refused_with_advice() {
        let error = parse_parameter_file(&[0x80, 0x04, 0x95]).unwrap_err();
        assert!(
            error.to_string().contains("does not read pickle"),
            "{error}"
        );
    }
}
