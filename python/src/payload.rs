//! What every payload kind shares: a payload's class, imported as dranspose imports it, our
//! own glue modules loaded into the payload's interpreter, and the error a failing payload is.

use std::ffi::CString;
use std::path::Path;

use beamflow_protocol::{ParameterDescription, ParameterType, ParameterValue};
use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyModule};

/// A payload that could not be loaded or failed in a hook: what it was doing and Python's
/// traceback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{doing}: {traceback}")]
pub struct PayloadError {
    /// What beamflow asked of it (`importing src.worker:Worker`, `process_event of event 12`).
    pub doing: String,
    /// Python's traceback, as it prints it.
    pub traceback: String,
}

impl PayloadError {
    /// What was being done, and Python's exception with its traceback.
    pub fn from_python(py: Python<'_>, doing: impl Into<String>, error: PyErr) -> Self {
        let traceback = error
            .traceback(py)
            .and_then(|traceback| traceback.format().ok())
            .unwrap_or_default();
        Self {
            doing: doing.into(),
            traceback: format!("{traceback}{error}"),
        }
    }
}

/// `module.path:Class`, imported relative to `folder` as dranspose imports it (it appends the
/// working directory to `sys.path`).
pub fn load_class<'py>(
    py: Python<'py>,
    class: &str,
    folder: &Path,
) -> Result<Bound<'py, PyAny>, PayloadError> {
    let doing = || format!("importing {class}");
    let Some((module, name)) = class
        .split_once(':')
        .filter(|(m, n)| !m.is_empty() && !n.is_empty())
    else {
        return Err(PayloadError {
            doing: doing(),
            traceback: format!("{class:?} is not module.path:Class"),
        });
    };
    let imported = || -> PyResult<Bound<'py, PyAny>> {
        let path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
        let folder = folder.display().to_string();
        if !path.contains(&folder)? {
            path.append(folder)?;
        }
        py.import(module)?.getattr(name)
    };
    imported().map_err(|error| PayloadError::from_python(py, doing(), error))
}

/// Calls `hook(argument)` on a payload instance if it has the hook (dranspose calls `finish`,
/// `timer`, `close`, `get_tick_interval` only then); `None` without it.
pub(crate) fn call_hook<'py>(
    instance: &Bound<'py, PyAny>,
    hook: &str,
    argument: &Bound<'py, PyAny>,
) -> Result<Option<Bound<'py, PyAny>>, PayloadError> {
    let py = instance.py();
    let called = || -> PyResult<Option<Bound<'py, PyAny>>> {
        match instance.getattr(hook) {
            Ok(method) => method.call1((argument,)).map(Some),
            Err(error) if error.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    };
    called().map_err(|error| PayloadError::from_python(py, hook, error))
}

/// One of our glue modules (`dranspose.py`, `analysis.py`), loaded into the interpreter.
pub(crate) fn glue_module<'py>(
    py: Python<'py>,
    code: &str,
    name: &str,
) -> Result<Bound<'py, PyModule>, PayloadError> {
    let failed = |message: String| PayloadError {
        doing: format!("loading beamflow's {name}"),
        traceback: message,
    };
    let c = |text: String| CString::new(text).map_err(|error| failed(error.to_string()));
    PyModule::from_code(
        py,
        &c(code.to_owned())?,
        &c(format!("beamflow_{name}.py"))?,
        &c(format!("beamflow_{name}"))?,
    )
    .map_err(|error| PayloadError::from_python(py, format!("loading beamflow's {name}"), error))
}

/// The parameters a payload class describes (`@staticmethod describe_parameters()`, a list of
/// dranspose's `StrParameter`, `IntParameter`, `FloatParameter`, `BoolParameter`,
/// `BinaryParameter`), as beamflow's descriptions; none when the class has no such method.
pub fn describe_parameters(
    class: &Bound<'_, PyAny>,
) -> Result<Vec<ParameterDescription>, PayloadError> {
    let py = class.py();
    let doing = "describe_parameters";
    if !class.hasattr(doing).unwrap_or(false) {
        return Ok(Vec::new());
    }
    let described = class
        .call_method0(doing)
        .and_then(|list| list.try_iter()?.collect::<PyResult<Vec<_>>>())
        .map_err(|error| PayloadError::from_python(py, doing, error))?;
    described
        .iter()
        .map(|parameter| {
            description(parameter).map_err(|error| PayloadError::from_python(py, doing, error))
        })
        .collect()
}

fn description(parameter: &Bound<'_, PyAny>) -> PyResult<ParameterDescription> {
    let name: String = parameter.getattr("name")?.extract()?;
    let dtype: String = parameter.getattr("dtype")?.extract()?;
    let default = parameter.getattr("default")?;
    let (dtype, default) = match dtype.as_str() {
        "str" => (ParameterType::Str, ParameterValue::Str(default.extract()?)),
        "int" => (ParameterType::Int, ParameterValue::Int(default.extract()?)),
        "float" => (
            ParameterType::Float,
            ParameterValue::Float(default.extract()?),
        ),
        "bool" => (
            ParameterType::Bool,
            ParameterValue::Bool(default.extract()?),
        ),
        "binary" => (
            ParameterType::Binary,
            ParameterValue::Binary(Bytes::from(default.extract::<Vec<u8>>()?)),
        ),
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "parameter {name:?} has the dtype {other:?} (str, int, float, bool or binary)"
            )));
        }
    };
    let description = parameter
        .getattr("description")?
        .extract::<Option<String>>()?
        .unwrap_or_default();
    Ok(ParameterDescription {
        name: name.into(),
        dtype,
        default,
        description,
    })
}
