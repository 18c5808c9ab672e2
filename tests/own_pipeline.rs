//! Issue 13, "your own pipeline": what a user meets the moment they leave the demo, run as they
//! run it (the `beamflow` binary, the simulated injector or a softIoc over real Channel Access,
//! ZeroMQ between the components, HTTP to drive and read it).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::epics::{Ioc, ca_env, free_ca_port};
use crate::util::{
    Running, RunningPipeline, any_ports, beamflow, eventually, finished_status, http_address,
    http_get, http_post, root, start_run,
};

/// Events in the live scan `beamflow run` starts (`beamflow::components::LIVE_SCAN_EVENTS`).
const LIVE: u64 = beamflow::components::LIVE_SCAN_EVENTS;

/// `examples/injector.toml` copied as README says, with `extra` appended.
fn copied_injector(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/injector.toml")).unwrap();
    let path = dir.join("my.toml");
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

fn json(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn progress(pipeline: &RunningPipeline) -> Value {
    json(pipeline.rest, "/api/v1/progress")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Symptoms 1 and 2: the copied pipeline starts the live scan and its PVs connect; then three
/// sequences posted one after another (some naming only a few of the ingester's PVs) each finish
/// with every event reduced, none of them made of updates queued before it was posted, and
/// with `--live` the live scan resumes.
#[test]
fn a_copied_pipeline_runs_live_and_sequence_after_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = copied_injector(
        dir.path(),
        "[accumulators.stamps]\nkind = \"history\"\nanalysis = \"pvs\"\nvalues = { xrms_time = \"xrms/time\" }\n",
    );
    let port = free_ca_port();
    let mut command = beamflow();
    ca_env(&mut command, port)
        .args(["run", "--pipeline"])
        .arg(&pipeline)
        .args(["--sim-ioc", "--live"]);
    let running = start_run(command);
    let live = eventually(30, "live events", || {
        let p = progress(&running);
        (p["completed_events"].as_u64()? >= 3).then_some(p)
    });
    assert_eq!(live["total_events"], LIVE, "{live}");
    assert_eq!(live["finished"], false, "{live}");
    // The ingester's status comes with its next hello.
    let pvs = eventually(10, "every PV connected in the status", || {
        let status = json(running.rest, "/api/v1/status");
        let pvs = status["ingesters"]["injector"]["source"]["pvs"].clone();
        let pvs = pvs.as_object()?.clone();
        pvs.values()
            .all(|pv| pv["state"] == "connected")
            .then_some(pvs)
    });
    assert_eq!(pvs.len(), 14);

    // The ingester's clock event carries all 14 PVs; these name two, then one.
    let otr2_and_xrms = |n: u64| {
        let slots: Vec<Value> = (0..n)
            .map(|i| serde_json::json!([{ "constraint": i }]))
            .collect();
        serde_json::json!({"parts": {"p": {"otr2": slots, "xrms": slots}}, "sequence": ["p"]})
    };
    let xrms_only = |n: u64| {
        let slots: Vec<Value> = (0..n)
            .map(|i| serde_json::json!([{ "constraint": i }]))
            .collect();
        serde_json::json!({"parts": {"p": {"xrms": slots}}, "sequence": ["p"]})
    };
    for (round, sequence) in [otr2_and_xrms(20), xrms_only(15), otr2_and_xrms(10)]
        .into_iter()
        .enumerate()
    {
        let posted_at = unix_now();
        let (code, body) = http_post(running.rest, "/api/v1/sequence", &sequence.to_string());
        assert_eq!(code, 200, "round {round}: {body}");
        let uuid: String = serde_json::from_str(&body).unwrap();
        let done = eventually(60, "the posted sequence to finish", || {
            let p = progress(&running);
            (p["finished"] == true).then_some(p)
        });
        assert_eq!(
            done["completed_events"], done["total_events"],
            "round {round}: {done}"
        );
        let reduced = eventually(10, "the reducer's final state", || {
            let status = json(running.state, "/api/v1/status");
            (status["finished"] == true).then_some(status)
        });
        assert_eq!(
            reduced["events"], done["total_events"],
            "round {round}: every event reduced: {reduced}"
        );
        let status = json(running.rest, "/api/v1/status");
        assert_eq!(status["uuid"], uuid.as_str());
        // Every CA time stamp is the machine's after the post: nothing queued before it (a
        // second of slack for the sim's clock against this one).
        let stamps = json(running.state, "/api/v1/result/stamps/values/xrms_time");
        let stamps: Vec<f64> = stamps
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert!(!stamps.is_empty(), "round {round}");
        let oldest = stamps.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(
            oldest > posted_at - 1.0,
            "round {round}: an update {:.1} s older than the post became an event",
            posted_at - oldest
        );
    }
    let resumed = eventually(30, "the live scan to resume", || {
        let status = json(running.rest, "/api/v1/status");
        (status["live"] == true && status["finished"] == false).then_some(status)
    });
    assert_eq!(resumed["total_events"], LIVE, "{resumed}");
}

/// Symptom 1 for the detector example: its live scan starts and runs.
#[test]
fn the_detector_example_starts_its_live_scan() {
    let mut command = beamflow();
    command
        .args(["run", "--pipeline"])
        .arg(root().join("examples/sim.toml"));
    let running = start_run(command);
    let p = eventually(30, "live events", || {
        let p = progress(&running);
        (p["completed_events"].as_u64()? >= 20).then_some(p)
    });
    assert_eq!(p["total_events"], LIVE + 2, "wrapped in start and end: {p}");
}

/// `--events N` and `--no-scan` say what they started.
#[test]
fn run_says_which_scan_it_started() {
    let mut command = beamflow();
    command
        .args(["run", "--pipeline"])
        .arg(root().join("examples/sim.toml"))
        .args(["--no-scan"]);
    let running = start_run(command);
    assert_eq!(progress(&running)["total_events"], 0);
    let mut command = beamflow();
    command
        .args(["run", "--pipeline"])
        .arg(root().join("examples/sim.toml"))
        .args(["--events", "30"]);
    let running = start_run(command);
    let status = finished_status(&running);
    assert_eq!(
        status["events"], 32,
        "30 frames and the start and end events"
    );
}

/// A pipeline watching the simulated injector's XRMS at 10 Hz and one more PV, `second`.
fn two_pv_pipeline(dir: &Path, second: &str) -> PathBuf {
    let path = dir.join("two.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[ingesters.machine]
kind = "epics_ca"
clock = {{ kind = "period", rate_hz = 10 }}
[ingesters.machine.pvs]
xrms = {{ pv = "OTRS:IN20:571:XRMS" }}
{second}

[analyses.pvs]
kind = "pv_values"

[accumulators.last]
kind = "last"
analysis = "pvs"
"#
        ),
    )
    .unwrap();
    path
}

/// Symptom 3: a misspelled PV is named, with the addresses searched, within seconds; it is
/// `never_found` in the status, distinct from disconnected; marked optional, events flow
/// without it and carry it as INVALID.
#[test]
fn a_misspelled_pv_is_named_and_an_optional_one_lets_events_flow() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ca_port();
    let pipeline = two_pv_pipeline(dir.path(), r#"typo = { pv = "OTRS:IN20:571:XRMZ" }"#);
    let mut command = beamflow();
    ca_env(&mut command, port)
        .env("RUST_LOG", "warn")
        .args(["run", "--pipeline"])
        .arg(&pipeline)
        .arg("--sim-ioc");
    any_ports(&mut command);
    let mut run = Running::start(command);
    let line = run.wait_for_line("beamflow is running.");
    let rest = http_address(line.split("Progress:").nth(1).unwrap());
    let warning = run.wait_for_line("No server answered");
    assert!(warning.contains("OTRS:IN20:571:XRMZ"), "{warning}");
    assert!(
        warning.contains(&format!("127.0.0.1:{port}")),
        "the addresses searched: {warning}"
    );
    assert!(!warning.contains("OTRS:IN20:571:XRMS "), "{warning}");
    // The status comes with the ingester's next hello.
    let pvs = eventually(5, "the status to say never_found", || {
        let status = json(rest, "/api/v1/status");
        let pvs = status["ingesters"]["machine"]["source"]["pvs"].clone();
        (pvs["typo"]["state"] == "never_found").then_some(pvs)
    });
    assert_eq!(pvs["xrms"]["state"], "connected", "{pvs}");
    assert_eq!(json(rest, "/api/v1/progress")["completed_events"], 0);
    drop(run);

    let pipeline = two_pv_pipeline(
        dir.path(),
        r#"typo = { pv = "OTRS:IN20:571:XRMZ", optional = true }"#,
    );
    let mut command = beamflow();
    ca_env(&mut command, port)
        .args(["run", "--pipeline"])
        .arg(&pipeline)
        .arg("--sim-ioc");
    let running = start_run(command);
    let typo = eventually(30, "events without the optional PV", || {
        let (code, body) = http_get(running.state, "/api/v1/result/last/values/typo");
        (code == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
    });
    assert_eq!(typo["severity"], 3, "INVALID: {typo}");
    assert_eq!(typo["value"], serde_json::json!([]), "{typo}");
    let xrms = json(running.state, "/api/v1/result/last/values/xrms/value");
    assert!(xrms.as_f64().is_some_and(|x| x > 0.0), "{xrms}");
}

/// Symptom 3: a component that cannot reach its controller says so and is not ready.
#[test]
fn a_worker_without_its_controller_says_so_and_is_not_ready() {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp://{}", nobody.local_addr().unwrap());
    drop(nobody);
    let mut command = beamflow();
    command
        .env("RUST_LOG", "warn")
        .args(["worker", "--pipeline"])
        .arg(root().join("examples/sim.toml"))
        .args(["--name", "w1", "--controller", &endpoint])
        .args(["--health", "127.0.0.1:0"]);
    let mut worker = Running::start(command);
    let health = http_address(&worker.wait_for_line("Health: http://"));
    let line = worker.wait_for_line("Cannot reach the controller");
    assert!(line.contains(&endpoint), "{line}");
    let (code, body) = http_get(health, "/readyz");
    assert_eq!(code, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["controller_unreachable"],
        serde_json::json!(["worker w1"])
    );
    assert_eq!(http_get(health, "/healthz").0, 200, "alive, just not ready");
}

/// Everything `beamflow` writes to standard error until it prints `needle`, then stops it.
fn stderr_until(mut command: std::process::Command, needle: &str) -> String {
    use std::io::BufRead as _;
    let mut run = Running::start({
        command.env("RUST_LOG", "info");
        command
    });
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = run.stderr.read_line(&mut line).unwrap();
        assert!(n > 0, "beamflow exited before {needle:?}:\n{text}");
        text.push_str(&line);
        if line.contains(needle) {
            return text;
        }
    }
}

/// Symptom 6: a log written to a pipe carries no colour codes, says which component wrote a
/// line and names ids as they are written; `--log-format json` writes one JSON object a line.
#[test]
fn logs_carry_no_colour_name_their_component_and_speak_json() {
    let run = |format: &str| {
        let mut command = beamflow();
        command
            .args(["run", "--pipeline"])
            .arg(root().join("examples/sim.toml"))
            .args(["--events", "5", "--log-format", format]);
        any_ports(&mut command);
        stderr_until(command, "Scan finished.")
    };
    let text = run("text");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a piped log:\n{text}"
    );
    assert!(text.contains("component{id=worker w1}"), "{text}");
    assert!(text.contains("streams=det"), "{text}");
    assert!(!text.contains("StreamName("), "{text}");
    let text = run("json");
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(entry["fields"]["message"].is_string(), "{line}");
        if let Some(id) = entry["span"]["id"].as_str() {
            spans.push(id.to_owned());
        }
    }
    assert!(
        spans.iter().any(|s| s == "ingester det"),
        "{spans:?}\n{text}"
    );
}

/// Symptom 6: an IOC that goes away and comes back is one line each, not one per PV.
#[test]
fn losing_an_ioc_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("three.db");
    std::fs::write(
        &db,
        (1..=3)
            .map(|i| format!(r#"record(ai, "LOSS:PV{i}") {{ field(VAL, "{i}") }}"#))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let pipeline = dir.path().join("three.toml");
    std::fs::write(
        &pipeline,
        r#"
[ingesters.ioc]
kind = "epics_ca"
clock = { kind = "period", rate_hz = 5 }
pvs = { a = { pv = "LOSS:PV1" }, b = { pv = "LOSS:PV2" }, c = { pv = "LOSS:PV3" } }
[analyses.pvs]
kind = "pv_values"
"#,
    )
    .unwrap();
    let port = free_ca_port();
    let ioc = Ioc::start(&db, port);
    let mut command = beamflow();
    ca_env(&mut command, port)
        .env("RUST_LOG", "info")
        .args(["run", "--pipeline"])
        .arg(&pipeline);
    any_ports(&mut command);
    let mut run = Running::start(command);
    let connected = run.wait_for_line("Connected to 3 PVs");
    assert!(
        connected.contains("LOSS:PV1 LOSS:PV2 LOSS:PV3"),
        "{connected}"
    );
    drop(ioc);
    let lost = run.wait_for_line("IOC at");
    assert!(lost.contains("lost all its 3 PVs"), "{lost}");
    let _ioc = Ioc::start(&db, port);
    let back = run.wait_for_line("IOC at");
    assert!(back.contains("back: 3 PVs reconnected"), "{back}");
}

/// Symptom 7: `dump_prefix` takes effect at once (the live scan starts recording, its mapping
/// and parameters written beside as dranspose names them), clearing it stops the file, and a
/// size limit rotates files that replay together to the whole scan.
#[test]
fn dump_prefix_takes_effect_at_once_and_files_rotate() {
    let dir = crate::util::scratch_dir();
    let prefix = format!("{}/", dir.path().display());
    let mut command = beamflow();
    command
        .args(["run", "--pipeline"])
        .arg(root().join("examples/sim.toml"));
    let running = start_run(command);
    let uuid = json(running.rest, "/api/v1/status")["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, body) = http_post(running.rest, "/api/v1/parameter/dump_prefix", &prefix);
    assert_eq!(code, 200, "{body}");
    let dump = dir.path().join(format!("det-{uuid}.cbors"));
    eventually(10, "the live scan to be recorded", || {
        let status = json(running.rest, "/api/v1/status");
        (status["ingesters"]["det"]["recording"] == dump.display().to_string()).then_some(())
    });
    let mapping: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("mapping-{uuid}.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        mapping["parts"]["main"]["mapping"]["det"].is_array(),
        "{mapping}"
    );
    let parameters: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("parameters-{uuid}.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        parameters
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "dump_prefix" && p["data"] == prefix.as_str()),
        "{parameters}"
    );
    let (code, _) = http_post(running.rest, "/api/v1/parameter/dump_prefix", "");
    assert_eq!(code, 200);
    let frames_then = eventually(10, "the recording to stop", || {
        let status = json(running.rest, "/api/v1/status");
        let det = &status["ingesters"]["det"];
        (det["recording"].is_null() && det["last_recording"] == dump.display().to_string())
            .then(|| det["counts"]["frames"].as_u64())
            .flatten()
    });
    let size = std::fs::metadata(&dump).unwrap().len();
    eventually(10, "more frames after the recording stopped", || {
        let status = json(running.rest, "/api/v1/status");
        (status["ingesters"]["det"]["counts"]["frames"].as_u64()? > frames_then + 50).then_some(())
    });
    assert_eq!(
        std::fs::metadata(&dump).unwrap().len(),
        size,
        "the file stopped"
    );

    // 64×64 u16 frames are 8 KiB: 300 of them make three files of at most a megabyte.
    assert_eq!(
        http_post(running.rest, "/api/v1/parameter/dump_max_mb", "1").0,
        200
    );
    assert_eq!(
        http_post(running.rest, "/api/v1/parameter/dump_prefix", &prefix).0,
        200
    );
    let slots: Vec<Value> = (0..300)
        .map(|i| serde_json::json!([{ "constraint": i }]))
        .collect();
    let sequence = serde_json::json!({"parts": {"p": {"det": slots}}, "sequence": ["p"]});
    let (code, body) = http_post(running.rest, "/api/v1/sequence", &sequence.to_string());
    assert_eq!(code, 200, "{body}");
    let uuid: String = serde_json::from_str(&body).unwrap();
    finished_status(&running);
    let files: Vec<PathBuf> = ["", "-1", "-2"]
        .iter()
        .map(|suffix| dir.path().join(format!("det-{uuid}{suffix}.cbors")))
        .collect();
    for file in &files {
        let size = std::fs::metadata(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .len();
        assert!(size <= 1_100_000, "{}: {size} bytes", file.display());
    }
    let mut replay = beamflow();
    replay
        .args(["replay", "--pipeline"])
        .arg(root().join("examples/sim.toml"))
        .args(["--out", "-"]);
    for file in &files {
        replay.arg("--dump").arg(file);
    }
    let output = replay.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let state: Value = serde_json::from_slice(&output.stdout).unwrap();
    let events = state["history"]["event_number"].as_array().unwrap();
    assert_eq!(
        events.len(),
        300,
        "every image of the scan, from three files"
    );
}
