//! Python results as beamflow's `Value`, so Rust accumulators (`history`, `last`) and the JSON
//! view read what a Python analysis returns: `None`, `bool`, `int`, `float`, `str`, `bytes`,
//! `dict`, `list`/`tuple`, numeric numpy arrays and scalars. Anything else is an error naming
//! its type and where it was found.

use std::collections::BTreeMap;

use beamflow_protocol::Value;
use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Nesting deeper than this is refused: a result is a few levels deep, and conversion
/// recurses.
const MAX_DEPTH: usize = 64;

/// Why a result cannot be a `Value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the result at {path} is {what}, which beamflow's accumulators cannot read (use None, bool, int, float, str, bytes, dict, list, tuple or a numeric numpy array)"
)]
pub struct ConvertError {
    /// Where in the result, as `/`-separated keys (`/` for the whole result).
    pub path: String,
    /// What was found there.
    pub what: String,
}

/// Converts a Python object.
pub fn to_value(object: &Bound<'_, PyAny>) -> Result<Value, ConvertError> {
    convert(object, &mut Vec::new())
}

fn at(path: &[String]) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        format!("/{}", path.join("/"))
    }
}

fn refuse(object: &Bound<'_, PyAny>, path: &[String]) -> ConvertError {
    let what = object
        .get_type()
        .name()
        .map_or_else(|_| "an object".to_owned(), |name| format!("a {name}"));
    ConvertError {
        path: at(path),
        what,
    }
}

fn convert(object: &Bound<'_, PyAny>, path: &mut Vec<String>) -> Result<Value, ConvertError> {
    if path.len() > MAX_DEPTH {
        return Err(ConvertError {
            path: at(path),
            what: format!("nested deeper than {MAX_DEPTH}"),
        });
    }
    if object.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: True is an int in Python.
    if let Ok(flag) = object.cast::<PyBool>() {
        return Ok(Value::Bool(flag.is_true()));
    }
    if let Ok(int) = object.cast::<PyInt>() {
        return Ok(match int.extract::<i64>() {
            Ok(n) => Value::Int(n),
            // Beyond i64, as JSON readers would take it.
            Err(_) => Value::Float(int.extract::<f64>().unwrap_or(f64::NAN)),
        });
    }
    if let Ok(float) = object.cast::<PyFloat>() {
        return Ok(Value::Float(float.value()));
    }
    if let Ok(text) = object.cast::<PyString>() {
        return text
            .to_str()
            .map(|text| Value::Text(text.to_owned()))
            .map_err(|_| refuse(object, path));
    }
    if let Ok(bytes) = object.cast::<PyBytes>() {
        return Ok(Value::Bytes(Bytes::copy_from_slice(bytes.as_bytes())));
    }
    if let Ok(dict) = object.cast::<PyDict>() {
        let mut entries = BTreeMap::new();
        for (key, value) in dict.iter() {
            let key = match key.cast::<PyString>() {
                Ok(text) => text
                    .to_str()
                    .map(str::to_owned)
                    .map_err(|_| refuse(&key, path))?,
                Err(_) => key.str().map_err(|_| refuse(&key, path))?.to_string(),
            };
            path.push(key.clone());
            let value = convert(&value, path)?;
            path.pop();
            entries.insert(key, value);
        }
        return Ok(Value::Map(entries));
    }
    if object.cast::<PyList>().is_ok() || object.cast::<PyTuple>().is_ok() {
        let mut items = Vec::new();
        for (i, item) in object
            .try_iter()
            .map_err(|_| refuse(object, path))?
            .enumerate()
        {
            let item = item.map_err(|_| refuse(object, path))?;
            path.push(i.to_string());
            items.push(convert(&item, path)?);
            path.pop();
        }
        return Ok(Value::Array(items));
    }
    numpy(object, path)
}

/// A numpy array as `{dtype, shape, data}` (its bytes, little-endian, C order: one copy), a
/// numpy scalar as its Python value. Duck-typed, so no numpy is needed to build beamflow.
fn numpy(object: &Bound<'_, PyAny>, path: &mut Vec<String>) -> Result<Value, ConvertError> {
    let Ok(dtype) = object.getattr("dtype") else {
        return Err(refuse(object, path));
    };
    let kind: String = dtype
        .getattr("kind")
        .and_then(|kind| kind.extract())
        .map_err(|_| refuse(object, path))?;
    if !matches!(kind.as_str(), "b" | "i" | "u" | "f") {
        return Err(ConvertError {
            path: at(path),
            what: format!("a numpy value of kind {kind:?} (numbers and booleans only)"),
        });
    }
    if object.hasattr("shape").unwrap_or(false)
        && object
            .getattr("ndim")
            .and_then(|n| n.extract::<usize>())
            .unwrap_or(0)
            > 0
    {
        let little = dtype
            .call_method1("newbyteorder", ("<",))
            .map_err(|_| refuse(object, path))?;
        let bytes: Vec<u8> = object
            .call_method1("astype", (&little,))
            .and_then(|array| array.call_method1("tobytes", ("C",)))
            .and_then(|bytes| bytes.extract())
            .map_err(|_| refuse(object, path))?;
        let shape: Vec<usize> = object
            .getattr("shape")
            .and_then(|shape| shape.extract())
            .map_err(|_| refuse(object, path))?;
        let name: String = little
            .getattr("str")
            .and_then(|name| name.extract())
            .map_err(|_| refuse(object, path))?;
        return Ok(Value::typed_array(name, &shape, Bytes::from(bytes)));
    }
    let item = object
        .call_method0("item")
        .map_err(|_| refuse(object, path))?;
    convert(&item, path)
}

/// A `Value` as Python objects, for a Python accumulator reading a Rust analysis's results: the
/// inverse of [`to_value`], `{dtype, shape, data}` maps becoming read-only numpy arrays over a
/// copy of the bytes.
pub fn from_value<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(flag) => PyBool::new(py, *flag).to_owned().into_any(),
        Value::Int(n) => n.into_pyobject(py)?.into_any(),
        Value::Float(x) => x.into_pyobject(py)?.into_any(),
        Value::Text(text) => text.into_pyobject(py)?.into_any(),
        Value::Bytes(bytes) => PyBytes::new(py, bytes).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(from_value(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(entries) => {
            if let Some(array) = numpy_array(py, value)? {
                return Ok(array);
            }
            let dict = PyDict::new(py);
            for (key, item) in entries {
                dict.set_item(key, from_value(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A [`Value::typed_array`] (as [`to_value`] writes numpy arrays) as a numpy array.
fn numpy_array<'py>(py: Python<'py>, value: &Value) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some((dtype, shape, data)) = value.as_typed_array() else {
        return Ok(None);
    };
    let numpy = py.import("numpy")?;
    let array = numpy
        .call_method1("frombuffer", (PyBytes::new(py, data), dtype))?
        .call_method1("reshape", (shape,))?;
    Ok(Some(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_python;
    use pyo3::ffi::c_str;

    fn eval(py: Python<'_>, code: &std::ffi::CStr) -> Result<Value, ConvertError> {
        let object = py
            .eval(code, None, None)
            .unwrap_or_else(|error| panic!("{code:?}: {error}"));
        to_value(&object)
    }

    #[test]
    fn results_become_values_type_for_type() {
        test_python(|py| {
            let value = eval(
                py,
                c_str!("{'n': 3, 'ok': True, 'x': 0.5, 's': 'a', 'b': b'\\x01', 'l': [1, (2, None)], 7: 'seven', 'big': 2**70}"),
            )
            .unwrap();
            let json = serde_json::to_value(&value).unwrap();
            assert_eq!(json["n"], 3);
            assert_eq!(json["ok"], true);
            assert_eq!(json["x"], 0.5);
            assert_eq!(json["l"], serde_json::json!([1, [2, null]]));
            assert_eq!(json["7"], "seven");
            assert_eq!(json["big"], 2f64.powi(70));
            assert_eq!(
                value.pointer("b"),
                Some(&Value::Bytes(Bytes::from_static(b"\x01")))
            );
        });
    }

    #[test]
    fn numpy_arrays_keep_their_type_and_shape_and_scalars_their_value() {
        test_python(|py| {
            let value = eval(
                py,
                c_str!("__import__('numpy').arange(6, dtype='>u2').reshape(2, 3)"),
            )
            .unwrap();
            assert_eq!(value.pointer("dtype"), Some(&Value::Text("<u2".into())));
            assert_eq!(
                value.pointer("shape"),
                Some(&Value::Array(vec![Value::Int(2), Value::Int(3)]))
            );
            let Some(Value::Bytes(data)) = value.pointer("data") else {
                panic!("{value:?}");
            };
            assert_eq!(data[..], [0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0]);
            let scalar = eval(py, c_str!("__import__('numpy').float32(0.5)")).unwrap();
            assert_eq!(scalar, Value::Float(0.5));
        });
    }

    #[test]
    fn what_cannot_be_read_is_named_with_its_place() {
        test_python(|py| {
            let error = eval(py, c_str!("{'a': [1, object()]}")).unwrap_err();
            assert_eq!(error.path, "/a/1");
            assert_eq!(error.what, "a object");
            let error = eval(py, c_str!("{'s': __import__('numpy').array(['x'])}")).unwrap_err();
            assert_eq!(error.path, "/s");
            assert!(error.what.contains("kind \"U\""), "{}", error.what);
        });
    }
}
