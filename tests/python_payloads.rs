//! Python payloads (issue 20): dranspose 0.2.0 payloads written as beamlines write theirs
//! (`tests/python/payloads`: stream1 and bslz4 images, a motor from contrast's start message,
//! dataclasses dispatched by `isinstance`, all five parameter types, a tick preview, `timer`,
//! `finish` writing HDF5, hooks that raise) give, through beamflow's replay and through a live
//! scan of separate processes with a worker killed mid-scan, the same `publish` as dranspose's
//! own replay of the same dumps, leaf for leaf, and the same HDF5 file.
//!
//! The payloads run in the `beamflow` wheel installed in `.venv` (`.ci/run` builds it with
//! maturin); the stock binary hands commands over to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::faults::{poll, scan_of};
use crate::util::{
    Running, beamflow, free_ports, http_address, http_post, python, root, run_python, try_get_json,
};

const WORKER: &str = "src.worker:ImagingWorker";
const REDUCER: &str = "src.reducer:ImagingReducer";
const STREAMS: [&str; 3] = ["contrast", "pilatus", "eiger"];
/// Events of the test scan, without its start and end.
const EVENTS: u64 = 40;

/// The payloads' folder: dranspose runs them from there (`src.worker:...`).
fn payloads() -> PathBuf {
    root().join("tests/python/payloads")
}

/// The Python environment with dranspose, numpy, h5py and the beamflow wheel.
fn venv() -> PathBuf {
    let venv = root().join(".venv");
    assert!(
        venv.join("bin/beamflow").exists(),
        "{}/bin/beamflow not found: run .ci/run once (it installs the beamflow wheel there with \
         maturin develop)",
        venv.display()
    );
    venv
}

/// The project's dumps of one scan and what dranspose's own replay makes of them.
struct Scan {
    dir: tempfile::TempDir,
    /// dranspose's `publish`, normalised as beamflow's state.json gives it.
    reference: PathBuf,
    /// The HDF5 file dranspose's run of the reducer's `finish` wrote.
    reference_h5: PathBuf,
}

impl Scan {
    fn new(worker: &str, reducer: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        run_python(
            "payload_dumps.py",
            &[
                dir.path(),
                Path::new("--events"),
                Path::new(&EVENTS.to_string()),
            ],
        );
        let reference = at("reference.json");
        let mut args: Vec<PathBuf> = vec![
            "reference".into(),
            payloads(),
            worker.into(),
            reducer.into(),
            at("params.json"),
            reference.clone(),
        ];
        args.extend(STREAMS.iter().map(|s| at(&format!("{s}.cbors"))));
        let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
        run_python("dranspose_publish.py", &args);
        let reference_h5 = at("reference.h5");
        if at("reduced.h5").exists() {
            std::fs::rename(at("reduced.h5"), &reference_h5).unwrap();
        }
        Self {
            dir,
            reference,
            reference_h5,
        }
    }

    fn at(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn dump_args(&self) -> Vec<String> {
        STREAMS
            .iter()
            .flat_map(|s| {
                [
                    "--dump".to_owned(),
                    self.at(&format!("{s}.cbors")).display().to_string(),
                ]
            })
            .collect()
    }

    /// `beamflow replay` of the dumps with `pipeline`, by `program`, from the payloads' folder.
    fn replay(&self, program: &Path, pipeline: &str, extra: &[&str]) -> Output {
        let out = self.at("state.json");
        let output = Command::new(program)
            .current_dir(payloads())
            .env("RUST_LOG", "warn")
            .args(extra)
            .args(["replay", "--pipeline", pipeline, "--params"])
            .arg(self.at("params.json"))
            .args(self.dump_args())
            .arg("--out")
            .arg(&out)
            .arg("--hdf5")
            .arg(self.at("state.h5"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "replay failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Asserts that `state` (state.json's form) holds `accumulator`'s publish equal to
    /// dranspose's, leaf for leaf.
    fn assert_same_publish(&self, state: &Path, accumulator: &str) {
        let output = Command::new(python())
            .arg(root().join("tests/python/dranspose_publish.py"))
            .arg("compare")
            .arg(state)
            .arg(accumulator)
            .arg(&self.reference)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && said.contains("agree"),
            "{said}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Asserts that the reducer's `finish` wrote the same HDF5 file as under dranspose.
    fn assert_same_file(&self) {
        let args = [
            Path::new("h5compare"),
            &self.at("reduced.h5"),
            &self.reference_h5,
        ];
        run_python("dranspose_publish.py", &args);
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn replay_gives_dranspose_s_publish_and_file_leaf_for_leaf() {
    let scan = Scan::new(WORKER, REDUCER);
    let output = scan.replay(&venv().join("bin/beamflow"), "pipeline.toml", &[]);
    let said = stderr(&output);
    assert!(
        said.contains(&format!("replayed {} events", EVENTS + 2))
            && said.contains("0 analysis errors, 0 accumulator errors"),
        "{said}"
    );
    scan.assert_same_publish(&scan.at("state.json"), "imaging");
    scan.assert_same_file();
    // The same publish as HDF5 (the tree h5pyd browses): numpy arrays in their own dtype.
    run_python(
        "nexus_check.py",
        &[
            &scan.at("state.h5"),
            &scan.at("state.json"),
            Path::new("--no-plot"),
            Path::new("imaging"),
        ],
    );
}

#[test]
fn a_raising_payload_is_logged_with_its_traceback_counted_and_never_fatal() {
    let scan = Scan::new("src.raising:RaisingWorker", "src.raising:RaisingReducer");
    // The stock binary, handing over to the environment named.
    let venv = venv();
    let output = scan.replay(
        Path::new(env!("CARGO_BIN_EXE_beamflow")),
        "raising.toml",
        &["--python", venv.to_str().unwrap()],
    );
    let said = stderr(&output);
    // Every 7th event raises in the worker (3, 10, ...), every 5th result in the reducer.
    assert!(
        said.contains("6 analysis errors, 8 accumulator errors"),
        "{said}"
    );
    for raised in [
        "ValueError: event 3",
        "Traceback (most recent call last)",
        "finish",
    ] {
        assert!(said.contains(raised), "{raised:?} logged:\n{said}");
    }
    scan.assert_same_publish(&scan.at("state.json"), "raising");
}

#[test]
fn the_stock_binary_says_which_environment_a_python_pipeline_needs() {
    let output = beamflow()
        .current_dir(payloads())
        .env_remove("VIRTUAL_ENV")
        .env_remove("CONDA_PREFIX")
        .args([
            "replay",
            "--pipeline",
            "pipeline.toml",
            "--dump",
            "none.cbors",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = stderr(&output);
    assert!(
        said.contains("analysis imaging is a Python payload")
            && said.contains("VIRTUAL_ENV or CONDA_PREFIX")
            && said.contains("--python"),
        "{said}"
    );
    // An environment without the wheel (the system's Python) is named as such.
    let output = beamflow()
        .current_dir(payloads())
        .args([
            "replay",
            "--python",
            "/usr/bin/python3",
            "--pipeline",
            "pipeline.toml",
        ])
        .args(["--dump", "none.cbors"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no beamflow wheel"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_live_scan_with_a_worker_killed_gives_dranspose_s_publish() {
    let scan = Scan::new(WORKER, REDUCER);
    live_scan_with_a_worker_killed(&scan, WORKER, REDUCER, &[]);
    scan.assert_same_file();
}

#[test]
fn a_live_scan_of_a_raising_payload_gives_dranspose_s_publish() {
    let (worker, reducer) = ("src.raising:RaisingWorker", "src.raising:RaisingReducer");
    let scan = Scan::new(worker, reducer);
    live_scan_with_a_worker_killed(
        &scan,
        worker,
        reducer,
        &["Accumulator rejected a result", "The payload's hook failed"],
    );
}

/// A live scan: the dumps played by three ingesters, two worker processes running the worker
/// payload (one killed mid-scan), the reducer running the reducer payload, which logs only the
/// ERROR lines `reducer_errors` names; its `publish` must be dranspose's.
fn live_scan_with_a_worker_killed(
    scan: &Scan,
    worker: &str,
    reducer: &str,
    reducer_errors: &[&str],
) {
    let venv = venv();
    let [control, rest] = free_ports();
    let control = format!("tcp://127.0.0.1:{control}");
    let rest = std::net::SocketAddr::from(([127, 0, 0, 1], rest));
    let mut text = String::new();
    for stream in STREAMS {
        // Paced, so that the scan is still running when a worker dies.
        text.push_str(&format!(
            "[ingesters.{stream}]\nkind = \"dump\"\npath = {:?}\nrate_hz = 20\n\n",
            scan.at(&format!("{stream}.cbors"))
        ));
    }
    let payloads = payloads();
    text.push_str(&format!(
        "[analyses.imaging]\nkind = \"python\"\nclass = \"{worker}\"\npath = {payloads:?}\n\n\
         [accumulators.imaging]\nkind = \"python\"\nclass = \"{reducer}\"\npath = {payloads:?}\n\
         analysis = \"imaging\"\n\n\
         [controller]\ncontrol = \"{control}\"\nhttp = \"{rest}\"\n\n\
         [reducer]\nhttp = \"127.0.0.1:0\"\n"
    ));
    let file = scan.at("pipeline.toml");
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();
    let python = ["--python", venv.to_str().unwrap()];
    let connect = ["--pipeline", file, "--controller", &control];

    let mut controller = Running::spawn(&["controller", "--pipeline", file]);
    controller.wait_for_line("beamflow controller:");
    let mut reducer = Running::spawn(&[&python[..], &["reducer"], &connect].concat());
    reducer.allow_errors(reducer_errors);
    let reducer_http = http_address(&reducer.wait_for_line("state on http://"));
    let mut workers: Vec<Running> = ["w1", "w2"]
        .iter()
        .map(|name| {
            let mut worker =
                Running::spawn(&[&python[..], &["worker", "--name", name], &connect].concat());
            worker.wait_for_line("beamflow worker");
            worker
        })
        .collect();
    let _ingesters: Vec<Running> = STREAMS
        .iter()
        .map(|name| {
            let mut ingester =
                Running::spawn(&[&["ingester", "--name", name][..], &connect].concat());
            ingester.wait_for_line("beamflow ingester");
            ingester
        })
        .collect();
    poll(60, "every process to connect", || {
        let config = try_get_json(rest, "/api/v1/config", std::time::Duration::from_secs(5))
            .ok_or("no answer")?;
        let connected = config["workers"].as_array().map_or(0, Vec::len) == 2
            && config["ingesters"].as_array().map_or(0, Vec::len) == STREAMS.len()
            && !config["reducer"].is_null();
        connected.then_some(()).ok_or_else(|| config.to_string())
    });

    // The parameter file's values, set as a dranspose user sets them.
    let parameters: Value =
        serde_json::from_slice(&std::fs::read(scan.at("params.json")).unwrap()).unwrap();
    for parameter in parameters.as_array().unwrap() {
        let name = parameter["name"].as_str().unwrap();
        let data = parameter["data"].as_str().unwrap();
        let (code, body) = http_post(rest, &format!("/api/v1/parameter/{name}"), data);
        assert_eq!(code, 200, "{name}: {body}");
    }
    let (code, body) = http_post(
        rest,
        "/api/v1/sequence",
        &scan_of(EVENTS, &STREAMS).to_string(),
    );
    assert_eq!(code, 200, "{body}");

    let completed = poll(60, "a third of the scan", || {
        let progress = try_get_json(rest, "/api/v1/progress", std::time::Duration::from_secs(5))
            .ok_or("no answer")?;
        let completed = progress["completed_events"].as_u64().unwrap_or(0);
        (completed >= EVENTS / 3)
            .then_some(completed)
            .ok_or_else(|| progress.to_string())
    });
    let mut killed = workers.pop().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let progress =
        try_get_json(rest, "/api/v1/progress", std::time::Duration::from_secs(5)).unwrap();
    assert_ne!(
        progress["finished"], true,
        "killed mid-scan ({completed} events completed then): {progress}"
    );

    poll(120, "the scan to finish", || {
        let status = try_get_json(
            reducer_http,
            "/api/v1/status",
            std::time::Duration::from_secs(5),
        )
        .ok_or("no answer")?;
        (status["finished"] == true)
            .then_some(())
            .ok_or_else(|| status.to_string())
    });
    let publish = try_get_json(
        reducer_http,
        "/api/v1/result/imaging",
        std::time::Duration::from_secs(10),
    )
    .expect("the reducer serves the payload's publish");
    let state = scan.at("live.json");
    std::fs::write(&state, json!({ "imaging": publish }).to_string()).unwrap();
    scan.assert_same_publish(&state, "imaging");
}
