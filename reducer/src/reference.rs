//! Readers nobody here wrote, for the tests that check what the reducer writes: a Python script
//! run under `$BEAMFLOW_PYTHON`, else the repository's `.venv`.

use std::path::{Path, PathBuf};

/// The exit code a script uses when a module it needs (numpy, h5py, xraylarch) is missing.
pub(crate) const SKIP: i32 = 77;

/// Runs Python `script` with `args`; its standard output. `None` (said on standard error) when
/// the interpreter or the script's modules are missing, except under CI, where that fails. A
/// script that fails fails the test with its output and `context`.
pub(crate) fn run(script: &str, args: &[&Path], context: &str) -> Option<String> {
    let python = std::env::var_os("BEAMFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let in_ci = std::env::var_os("CI").is_some();
    if !python.exists() {
        assert!(!in_ci, "{} is missing", python.display());
        eprintln!("skipped: no {}", python.display());
        return None;
    }
    let output = std::process::Command::new(&python)
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(SKIP) {
        assert!(!in_ci, "{stdout}{stderr}");
        eprintln!("skipped: {stdout}");
        return None;
    }
    assert!(output.status.success(), "{stdout}\n{stderr}\n{context}");
    Some(stdout)
}
