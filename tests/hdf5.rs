//! The HDF5-REST view as users meet it: h5pyd 1.0.0 and 0.24 (the release dranspose sites have)
//! and silx, each from PyPI in its own venv, browse `beamflow run`'s live state at the reducer's
//! base URL, the dashboard's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::dashboard::{browser_available, browser_dir};
use crate::epics::{ca_env, free_ca_port};
use crate::util::{
    TOKEN, beamflow, eventually, finished_status, http_get, python, root, run_python, scratch_dir,
    start_run,
};

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
    let stdout =
        String::from_utf8(run_python("silx_default_plot.py", &[&endpoint])).expect("UTF-8");
    assert!(stdout.contains("default plot: /beam"), "{stdout}");
}

/// The embedded pipeline with `extra` TOML after it, written in `dir`.
fn injector_with(dir: &Path, extra: &str) -> PathBuf {
    let pipeline = dir.join("injector.toml");
    let text = format!("{}\n{extra}", include_str!("../examples/injector.toml"));
    std::fs::write(&pipeline, text).unwrap();
    pipeline
}

/// The embedded pipeline with `[reducer.hdf5]` writing into `folder`.
fn pipeline_writing_to(dir: &Path, folder: &Path) -> PathBuf {
    injector_with(
        dir,
        &format!(
            "[reducer.hdf5]\nfolder = {:?}\naccumulators = [\"beam\", \"machine\", \"otr2_image\"]\n",
            folder.display().to_string()
        ),
    )
}

/// `beamflow run --pipeline pipeline` with the simulated injector (on a free CA port) and a
/// scan of `events` events.
fn run_injector(pipeline: &Path, events: u32) -> crate::util::RunningPipeline {
    let port = free_ca_port();
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port)
        .args([
            "run",
            "--sim-ioc",
            "--events",
            &events.to_string(),
            "--pipeline",
        ])
        .arg(pipeline);
    start_run(command)
}

/// A scan of `beamflow run` ends with its NeXus file: listed with its size, read by h5py equal
/// to the JSON view of the same final state (tests/python/nexus_check.py), read by Debian's
/// `h5dump`, and downloaded whole from the reducer.
#[test]
fn a_scan_ends_with_a_nexus_file_equal_to_its_json_view() {
    let dir = scratch_dir();
    let folder = dir.path().join("files");
    let pipeline = pipeline_writing_to(dir.path(), &folder);
    let run = run_injector(&pipeline, 20);
    finished_status(&run);
    let listed = eventually(30, "the scan's file", || {
        let files: serde_json::Value =
            serde_json::from_str(&http_get(run.state, "/api/v1/files").1).ok()?;
        let file = files["files"].get(0)?.clone();
        (file["complete"] == true).then_some(file)
    });
    let name = listed["name"].as_str().unwrap();
    assert!(
        name.starts_with("scan-000001-") && name.ends_with(".h5"),
        "{listed}"
    );
    let path = folder.join(name);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        listed["size"].as_u64().unwrap()
    );
    // Nothing but the final file: the temporary name is gone.
    let names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [name]);

    let state = dir.path().join("state.json");
    std::fs::write(&state, http_get(run.state, "/api/v1/result").1).unwrap();
    let said = run_python(
        "nexus_check.py",
        &[
            &path,
            &state,
            Path::new("beam"),
            Path::new("machine"),
            Path::new("otr2_image"),
        ],
    );
    // The scan's mapping and every stream's frame count, as the controller had them.
    let said = String::from_utf8_lossy(&said);
    assert!(
        said.contains("mapping: parts ['") && said.contains("'otr2'"),
        "{said}"
    );

    let dump = h5dump(&path);
    for object in [
        r#"GROUP "entry""#,
        r#"DATASET "event_number""#,
        r#"DATASET "pixels""#,
    ] {
        assert!(dump.contains(object), "h5dump -H names {object}:\n{dump}");
    }

    let downloaded = ureq::get(&format!("http://{}/api/v1/files/{name}", run.state))
        .call()
        .unwrap()
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    assert!(
        downloaded == std::fs::read(&path).unwrap(),
        "the download is the file"
    );
    assert_eq!(http_get(run.state, "/api/v1/files/injector.toml").0, 404);

    // The dashboard lists it with its size and links it, in Chromium.
    if browser_available() {
        let output = Command::new("node")
            .arg(browser_dir().join("files.mjs"))
            .arg(format!("http://{}/#token={TOKEN}", run.state))
            .arg(name)
            .arg(listed["size"].to_string())
            .output()
            .expect("start node");
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && said.matches("ok - ").count() == 2,
            "{said}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Debian's `h5dump -H` of `path` (required under CI; `.ci/run` installs hdf5-tools).
fn h5dump(path: &std::path::Path) -> String {
    let output = Command::new("h5dump")
        .arg("-H")
        .arg(path)
        .output()
        .expect("h5dump (Debian's hdf5-tools) is needed");
    assert!(output.status.success(), "h5dump failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A folder that cannot be written: each write fails with the folder named, once logged, the
/// failure counted in `/api/v1/files`; the scan goes on to its end.
#[test]
fn a_folder_that_cannot_be_written_is_an_error_and_the_scan_goes_on() {
    let dir = scratch_dir();
    // Under a regular file: no folder can be made there, whoever runs the test (root too).
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"").unwrap();
    let pipeline = pipeline_writing_to(dir.path(), &blocker.join("files"));
    let mut run = run_injector(&pipeline, 20);
    run.process.allow_errors(&["HDF5 file not written"]);
    let status = finished_status(&run);
    assert_eq!(status["events"], 20, "{status}");
    let files = eventually(30, "the failed write", || {
        let files: serde_json::Value =
            serde_json::from_str(&http_get(run.state, "/api/v1/files").1).ok()?;
        (files["failures"].as_u64()? >= 1).then_some(files)
    });
    assert_eq!(files["files"], serde_json::json!([]));
    let reason = files["last_error"].as_str().unwrap();
    assert!(reason.contains("not-a-folder"), "{reason}");
}

/// `beamflow replay --hdf5`: a writer killed while it writes leaves nothing under the final name
/// (only its hidden partial file), the next write replaces that leftover, and its file equals
/// the JSON state of the same replay (read by h5py, tests/python/nexus_check.py).
#[test]
fn a_replay_killed_while_writing_leaves_no_file_and_the_next_write_is_whole() {
    let dir = scratch_dir();
    // Megapixel frames: the write lasts long enough to be caught in the middle.
    run_python(
        "payload_dumps.py",
        &[
            dir.path(),
            Path::new("--events"),
            Path::new("3"),
            Path::new("--shape"),
            Path::new("1024"),
            Path::new("1024"),
        ],
    );
    let pipeline = dir.path().join("frames.toml");
    std::fs::write(
        &pipeline,
        r#"
[analyses.stats]
kind = "frame_stats"
streams = ["pilatus"]

[analyses.frame]
kind = "frame"
stream = "pilatus"

[accumulators.history]
kind = "history"
analysis = "stats"
values = { mean = "pilatus/0/mean", max = "pilatus/0/max", sum = "pilatus/0/sum" }

[accumulators.image]
kind = "image"
frames = "frame"
"#,
    )
    .unwrap();
    let dump = dir.path().join("pilatus.cbors");
    let out = dir.path().join("state.h5");
    let partial = dir.path().join(".state.h5.partial");
    let state = dir.path().join("state.json");
    let replay = |command: &mut Command| {
        command
            .arg("replay")
            .arg("--pipeline")
            .arg(&pipeline)
            .arg("--dump")
            .arg(&dump)
            .arg("--hdf5")
            .arg(&out)
            .arg("--out")
            .arg(&state);
    };

    let mut command = beamflow();
    replay(&mut command);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Polls the folder: the writer is another process, nothing else tells when it is mid-write.
    loop {
        if partial.exists() {
            child.kill().unwrap();
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the replay ended ({status}) before its write was seen in progress");
        }
        std::thread::yield_now();
    }
    child.wait().unwrap();
    assert!(!out.exists(), "a killed write left {}", out.display());
    assert!(
        partial.exists(),
        "the killed write's partial file stays, hidden"
    );

    let mut command = beamflow();
    replay(&mut command);
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        out.exists() && !partial.exists(),
        "the leftover is replaced"
    );
    run_python(
        "nexus_check.py",
        &[&out, &state, Path::new("history"), Path::new("image")],
    );
}

/// With `[security] protect_reads`, both h5pyd releases are refused without the token and read
/// with it given as h5pyd's `api_key`.
#[test]
fn h5pyd_reads_a_protected_reducer_with_the_token_as_its_api_key() {
    let dir = scratch_dir();
    let pipeline = injector_with(dir.path(), "[security]\nprotect_reads = true\n");
    let run = run_injector(&pipeline, 5);
    eventually(60, "a first row", || {
        let (code, body) = crate::util::http_as(
            run.state,
            "GET",
            "/api/v1/result/beam/event_number",
            "",
            Some(TOKEN),
        );
        (code == 200 && body.len() > 2).then_some(())
    });
    let endpoint = format!("http://{}/", run.state);
    for python in [python(), python_h5pyd_024()] {
        let output = Command::new(&python)
            .arg(root().join("tests/python/h5pyd_token.py"))
            .args([&endpoint, TOKEN])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && said.contains("refused without the token"),
            "{}: {said}{}",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
