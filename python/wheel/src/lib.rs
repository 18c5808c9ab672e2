//! `beamflow._native`: the whole `beamflow` command as a Python extension module, so that it
//! runs inside a Python environment's own interpreter (the wheel's `beamflow` console script)
//! and `kind = "python"` payloads import what that environment has. Built for CPython's
//! stable ABI from 3.11; it links no libpython, so it cannot pick a wrong one.

use pyo3::prelude::*;

// As in the stock binary (src/main.rs): Rust's allocations only; Python keeps its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The extension module.
#[pymodule]
mod _native {
    use std::ffi::OsString;

    use pyo3::prelude::*;

    /// Runs the `beamflow` command line `argv` (the program first) with Python payloads
    /// enabled; its exit status. The interpreter's lock is let go while beamflow runs and
    /// taken only for payload calls.
    #[pyfunction]
    fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
        beamflow_python::runtime::install();
        let status = py.detach(|| beamflow::cli::main(argv));
        py.detach(beamflow_python::runtime::close_all);
        status
    }
}
