//! The tests' embedded interpreter is the one PyO3 was configured with (`PYO3_PYTHON`, else
//! `python3`): its libpython is found through RUNPATH, so the system's libpython of the same
//! soname (Debian's 3.11.2 beside pyenv's 3.11.7) is not picked silently.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
