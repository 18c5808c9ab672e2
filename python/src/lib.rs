//! Python payloads in beamflow (issue 20): dranspose's workers and reducers, and Python
//! analyses, called from beamflow's Rust worker and reducer in the same process.
//!
//! # Layout
//!
//! - [`frame`]: a received frame lent to Python without a copy.
//! - [`convert`]: a Python result as beamflow's `Value`.
//! - [`dranspose`]: a dranspose 0.2.0 worker or reducer payload, run unchanged.
//! - [`payload`]: what every payload kind shares: importing its class, the error it fails with.
//! - [`runtime`]: the two as beamflow's analyses and accumulators (`kind = "python"`).
//! - [`analysis`]: beamflow's own contract for Python analyses: frames and images without a
//!   copy, results as `Value`.

pub mod analysis;
pub mod convert;
pub mod dranspose;
pub mod frame;
pub mod payload;
pub mod runtime;

pub use convert::{ConvertError, from_value, to_value};
pub use frame::Frame;
pub use payload::{PayloadError, describe_parameters, load_class};

/// The tests' interpreter: the embedded one, with the site-packages of the environment the
/// tests name (`BEAMFLOW_PYTHON`, else the repository's `.venv`, where `.ci/run` installs
/// numpy and dranspose), so payloads import what they import there.
#[cfg(test)]
pub(crate) fn test_python<T>(body: impl FnOnce(pyo3::Python<'_>) -> T) -> T {
    use std::sync::OnceLock;

    static SITE: OnceLock<String> = OnceLock::new();
    let site = SITE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = std::env::var_os("BEAMFLOW_PYTHON")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join(".venv/bin/python"));
        let output = std::process::Command::new(&python)
            .args(["-c", "import site; print(site.getsitepackages()[0])"])
            .output()
            .unwrap_or_else(|error| panic!("{}: {error} (run .ci/run once)", python.display()));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    });
    use pyo3::prelude::PyAnyMethods;
    pyo3::Python::attach(|py| {
        py.import("site")
            .and_then(|site_module| site_module.call_method1("addsitedir", (site.as_str(),)))
            .unwrap_or_else(|error| panic!("site-packages {site}: {error}"));
        body(py)
    })
}
