//! What every payload kind shares: a payload's class, imported as dranspose imports it, our
//! own glue modules loaded into the payload's interpreter, and the error a failing payload is.

use std::ffi::CString;
use std::path::Path;

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
