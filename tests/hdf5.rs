//! The HDF5-REST view as users meet it: h5pyd 1.0.0 and 0.24 (the release dranspose sites have)
//! and silx, each from PyPI in its own venv, browse `beamflow run`'s live state at the reducer's
//! base URL, the dashboard's.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::epics::{ca_env, free_ca_port};
use crate::util::{python, root, start_run};

/// h5pyd 0.24.0's venv (`.ci/run` makes it: h5pyd 1.0.0 needs h5json 2, 0.24 cannot live beside it).
fn python_h5pyd_024() -> PathBuf {
    let path = root().join(".venv-h5pyd024/bin/python");
    assert!(
        path.exists(),
        "{} not found: run .ci/run once (it creates the venv with h5pyd 0.24.0)",
        path.display()
    );
    path
}

/// Both h5pyd releases browse the same live scan at once: a history grows between two reads
/// after `refresh()`; once the scan has finished, every group is walked, every dataset read
/// whole and equal to the JSON view at its path, int, float, string and image datasets
/// sliced; then silx finds the NeXus default plot and the image.
#[test]
fn h5pyd_1_0_and_0_24_and_silx_browse_the_live_state() {
    let port = free_ca_port();
    let mut command = crate::util::beamflow();
    // 30 s at the simulated injector's 10 Hz: long enough to see the history grow.
    ca_env(&mut command, port).args(["run", "--events", "300"]);
    let pipeline = start_run(command);
    let endpoint = format!("http://{}/", pipeline.state);
    let script = root().join("tests/python/h5pyd_browse.py");
    let browsers: Vec<(&str, std::process::Child)> = [
        ("h5pyd 1.0.0", python()),
        ("h5pyd 0.24.0", python_h5pyd_024()),
    ]
    .into_iter()
    .map(|(name, python)| {
        let child = Command::new(python)
            .arg(&script)
            .arg(&endpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python");
        (name, child)
    })
    .collect();
    for (name, child) in browsers {
        let output = child.wait_with_output().expect("wait for python");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name}:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("growth: beam/event_number"),
            "{name}: {stdout}"
        );
    }
    let silx = Command::new(python())
        .arg(root().join("tests/python/silx_default_plot.py"))
        .arg(&endpoint)
        .output()
        .expect("start python");
    let stdout = String::from_utf8_lossy(&silx.stdout);
    assert!(
        silx.status.success(),
        "silx:\n{stdout}\n{}",
        String::from_utf8_lossy(&silx.stderr)
    );
    assert!(stdout.contains("default plot: /beam"), "{stdout}");
}
