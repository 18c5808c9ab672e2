//! `Value`: the self-describing tree that analysis outputs travel as and that the reducer's state
//! is made of.
//!
//! Analyses produce typed Rust outputs; [`Value::from_serialize`] turns them into this tree (see
//! `value/serializer.rs` for the mapping), which workers send as CBOR.
//!
//! Unlike `serde_json::Value` it keeps non-finite floats and byte strings; they only become
//! `null` (and arrays of numbers) when the tree is written as JSON.

use std::collections::BTreeMap;

use bytes::Bytes;
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::error::CborError;

mod serializer;

pub use serializer::SerializeError;

/// Deepest nesting accepted when decoding, so that hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// A tree of named values.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// No value (also what non-finite floats become in JSON).
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float; may be NaN or infinite.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Bytes(Bytes),
    /// An ordered list.
    Array(Vec<Value>),
    /// Named children, sorted by name.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// Converts any serializable output into a tree.
    pub fn from_serialize<T: Serialize + ?Sized>(output: &T) -> Result<Self, SerializeError> {
        output.serialize(serializer::ValueSerializer)
    }

    /// Decodes one CBOR item. Tags are dropped (their content kept); integer map keys become text.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, CborError> {
        let mut decoder = Decoder::new(bytes);
        let value = Self::decode(&mut decoder)?;
        if decoder.position() != bytes.len() {
            return Err(CborError::new(
                decoder.position(),
                "trailing bytes after the value",
            ));
        }
        Ok(value)
    }

    /// Decodes one CBOR item from a decoder positioned at it.
    pub fn decode(decoder: &mut Decoder<'_>) -> Result<Self, CborError> {
        decode_at_depth(decoder, 0)
    }

    /// Encodes the tree as one CBOR item.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut encoder = Encoder::new(Vec::new());
        // Writing into a Vec cannot fail, and every variant is representable in CBOR.
        let _ = self.encode(&mut encoder);
        encoder.into_writer()
    }

    /// Encodes the tree into any CBOR encoder.
    pub fn encode<W: minicbor::encode::Write>(
        &self,
        encoder: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        match self {
            Value::Null => encoder.null().map(drop),
            Value::Bool(b) => encoder.bool(*b).map(drop),
            Value::Int(i) => encoder.i64(*i).map(drop),
            Value::Float(f) => encoder.f64(*f).map(drop),
            Value::Text(s) => encoder.str(s).map(drop),
            Value::Bytes(b) => encoder.bytes(b).map(drop),
            Value::Array(items) => {
                encoder.array(items.len() as u64)?;
                items.iter().try_for_each(|item| item.encode(encoder))
            }
            Value::Map(entries) => {
                encoder.map(entries.len() as u64)?;
                entries.iter().try_for_each(|(key, item)| {
                    encoder.str(key)?;
                    item.encode(encoder)
                })
            }
        }
    }

    /// The subtree at `/`-separated keys; numeric segments index arrays. The empty path is the
    /// whole tree.
    pub fn pointer(&self, path: &str) -> Option<&Value> {
        path.split('/')
            .filter(|segment| !segment.is_empty())
            .try_fold(self, |node, segment| match node {
                Value::Map(entries) => entries.get(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Named children, if this is a map.
    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// A typed array as results carry numpy arrays: `{dtype, shape, data}`, the type as numpy
    /// names it (`<u2`, `int64`), `data` the elements' bytes in row-major order.
    pub fn typed_array(dtype: impl Into<String>, shape: &[usize], data: Bytes) -> Value {
        Value::Map(BTreeMap::from([
            ("dtype".to_owned(), Value::Text(dtype.into())),
            (
                "shape".to_owned(),
                Value::Array(shape.iter().map(|&n| Value::Int(n as i64)).collect()),
            ),
            ("data".to_owned(), Value::Bytes(data)),
        ]))
    }

    /// The parts of a [`Value::typed_array`] (a map of exactly those three keys): the type's
    /// name, not interpreted, the shape and the bytes; `None` for anything else.
    pub fn as_typed_array(&self) -> Option<(&str, Vec<usize>, &Bytes)> {
        let entries = self.as_map()?;
        let (Some(Value::Text(dtype)), Some(Value::Array(shape)), Some(Value::Bytes(data)), 3) = (
            entries.get("dtype"),
            entries.get("shape"),
            entries.get("data"),
            entries.len(),
        ) else {
            return None;
        };
        let shape = shape
            .iter()
            .map(|n| match n {
                Value::Int(n) => usize::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>()?;
        Some((dtype, shape, data))
    }

    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }
}

fn decode_at_depth(d: &mut Decoder<'_>, depth: usize) -> Result<Value, CborError> {
    let at = d.position();
    if depth > MAX_DEPTH {
        return Err(CborError::new(at, "nesting deeper than 128 levels"));
    }
    let ty = d.datatype().map_err(|e| CborError::from_decode(at, &e))?;
    let wrap = |e: minicbor::decode::Error| CborError::from_decode(at, &e);
    let value = match ty {
        Type::Null | Type::Undefined => {
            d.skip().map_err(wrap)?;
            Value::Null
        }
        Type::Bool => Value::Bool(d.bool().map_err(wrap)?),
        Type::U8 | Type::U16 | Type::U32 | Type::U64 | Type::I8 | Type::I16 | Type::I32 => {
            Value::Int(d.i64().map_err(wrap)?)
        }
        Type::I64 | Type::Int => {
            let int = d.int().map_err(wrap)?;
            match i64::try_from(int) {
                Ok(i) => Value::Int(i),
                // Outside i64: keep the magnitude rather than fail the whole result.
                Err(_) => Value::Float(i128::from(int) as f64),
            }
        }
        Type::F16 => Value::Float(f64::from(d.f16().map_err(wrap)?)),
        Type::F32 => Value::Float(f64::from(d.f32().map_err(wrap)?)),
        Type::F64 => Value::Float(d.f64().map_err(wrap)?),
        Type::Bytes => Value::Bytes(Bytes::copy_from_slice(d.bytes().map_err(wrap)?)),
        Type::String => Value::Text(d.str().map_err(wrap)?.to_owned()),
        Type::BytesIndef => {
            let mut all = Vec::new();
            for chunk in d.bytes_iter().map_err(wrap)? {
                all.extend_from_slice(chunk.map_err(wrap)?);
            }
            Value::Bytes(Bytes::from(all))
        }
        Type::StringIndef => {
            let mut all = String::new();
            for chunk in d.str_iter().map_err(wrap)? {
                all.push_str(chunk.map_err(wrap)?);
            }
            Value::Text(all)
        }
        Type::Array | Type::ArrayIndef => {
            let len = d.array().map_err(wrap)?;
            // Grown as items arrive, never reserved from the claimed length: with nesting, any
            // reservation is paid at every level (128 claims of 4,096 held 20 MiB for 384 bytes).
            let mut items = Vec::new();
            match len {
                Some(n) => {
                    for _ in 0..n {
                        items.push(decode_at_depth(d, depth + 1)?);
                    }
                }
                None => {
                    while d.datatype().map_err(wrap)? != Type::Break {
                        items.push(decode_at_depth(d, depth + 1)?);
                    }
                    d.skip().map_err(wrap)?;
                }
            }
            Value::Array(items)
        }
        Type::Map | Type::MapIndef => {
            let len = d.map().map_err(wrap)?;
            let mut entries = BTreeMap::new();
            let mut remaining = len;
            loop {
                match remaining {
                    Some(0) => break,
                    Some(ref mut n) => *n -= 1,
                    None => {
                        if d.datatype().map_err(wrap)? == Type::Break {
                            d.skip().map_err(wrap)?;
                            break;
                        }
                    }
                }
                let key_at = d.position();
                let key = match decode_at_depth(d, depth + 1)? {
                    Value::Text(s) => s,
                    Value::Int(i) => i.to_string(),
                    other => {
                        return Err(CborError::new(
                            key_at,
                            format!("map key must be text or an integer, found {}", other.kind()),
                        ));
                    }
                };
                let item = decode_at_depth(d, depth + 1)?;
                entries.insert(key, item);
            }
            Value::Map(entries)
        }
        Type::Tag => {
            d.tag().map_err(wrap)?;
            decode_at_depth(d, depth + 1)?
        }
        Type::Simple | Type::Break | Type::Unknown(_) => {
            return Err(CborError::new(at, format!("unexpected CBOR item {ty}")));
        }
    };
    Ok(value)
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Float(f) if f.is_finite() => serializer.serialize_f64(*f),
            // JSON has no NaN or infinity; a fake number would be worse than none.
            Value::Float(_) => serializer.serialize_unit(),
            Value::Text(s) => serializer.serialize_str(s),
            Value::Bytes(b) => {
                let mut seq = serializer.serialize_seq(Some(b.len()))?;
                for byte in b.iter() {
                    seq.serialize_element(byte)?;
                }
                seq.end()
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, item) in entries {
                    map.serialize_entry(key, item)?;
                }
                map.end()
            }
        }
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<u64> for Value {
    fn from(i: u64) -> Self {
        i64::try_from(i).map_or(Value::Float(i as f64), Value::Int)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Self {
        Value::Array(items.into_iter().map(Into::into).collect())
    }
}

impl From<BTreeMap<String, Value>> for Value {
    fn from(entries: BTreeMap<String, Value>) -> Self {
        Value::Map(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            ".{0,8}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| Value::Bytes(b.into())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..8).prop_map(Value::Map),
            ]
        })
    }

    /// NaN != NaN, so compare through the bit patterns of floats.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Map(x), Value::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, a), (kb, b))| ka == kb && same(a, b))
            }
            _ => a == b,
        }
    }

    proptest! {
        #[test]
        fn cbor_round_trip(value in arb_value()) {
            let decoded = Value::from_cbor(&value.to_cbor()).unwrap();
            prop_assert!(same(&value, &decoded), "{value:?} != {decoded:?}");
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Value::from_cbor(&bytes);
        }
    }

    #[test]
    fn non_finite_floats_are_null_in_json() {
        let value = Value::Array(vec![
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(1.5),
        ]);
        assert_eq!(serde_json::to_string(&value).unwrap(), "[null,null,1.5]");
    }

    #[test]
    fn serializable_outputs_become_trees() {
        #[derive(Serialize)]
        struct Stats {
            shape: Vec<usize>,
            mean: f64,
            label: Option<String>,
        }
        let tree = Value::from_serialize(&Stats {
            shape: vec![2, 3],
            mean: f64::NAN,
            label: None,
        })
        .unwrap();
        assert_eq!(tree.pointer("shape/1"), Some(&Value::Int(3)));
        assert!(
            tree.pointer("mean")
                .and_then(Value::as_f64)
                .unwrap()
                .is_nan()
        );
        assert_eq!(tree.pointer("label"), Some(&Value::Null));
        assert_eq!(tree.pointer("missing"), None);
    }

    #[test]
    fn enums_and_keys_map_as_documented() {
        #[derive(Serialize)]
        enum Verdict {
            Accepted,
            Rejected { reason: String },
            Size(f32),
        }
        let tree = Value::from_serialize(&vec![
            Verdict::Accepted,
            Verdict::Rejected {
                reason: "saturated".into(),
            },
            Verdict::Size(1.5),
        ])
        .unwrap();
        assert_eq!(
            serde_json::to_string(&tree).unwrap(),
            r#"["Accepted",{"Rejected":{"reason":"saturated"}},{"Size":1.5}]"#
        );
        let keyed: BTreeMap<u32, u64> = [(3, u64::MAX)].into();
        assert_eq!(
            Value::from_serialize(&keyed).unwrap(),
            Value::Map([("3".to_owned(), Value::Float(u64::MAX as f64))].into())
        );
        let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert_eq!(
            Value::from_serialize(&bad).unwrap_err().to_string(),
            "cannot convert the output: map key must be text or an integer, found array"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let bytes = vec![0x81; 10_000];
        let error = Value::from_cbor(&bytes).unwrap_err();
        assert!(error.to_string().contains("nesting"), "{error}");
    }
}
