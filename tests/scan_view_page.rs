//! Issue 19's scan view on the dashboard, in a real headless Chromium:
//! `tests/browser/scan_view.mjs` (Playwright's `playwright-core` driving Debian's `chromium`)
//! watches `beamflow run --pipeline examples/bluesky.toml` while a real RunEngine
//! (`tests/python/bluesky_runs.py`, through bluesky's own 0MQ Proxy) runs its plans.
//!
//! Without Chromium or the script's `node_modules` (`npm ci --prefix tests/browser`) the test
//! says so and passes, except under CI (`CI` set), where it must run.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::bluesky::RunEngine;
use crate::dashboard::{Killed, answer, browser_available, browser_dir};
use crate::util::{
    TOKEN, beamflow, eventually, free_ports, http_get, root, scratch_dir, start_run,
};

/// The checks the script prints, each `ok - NAME: ...` when it passed.
const CHECKS: [&str; 7] = [
    "page",
    "latest",
    "peak-stats",
    "map",
    "follow",
    "requests",
    "console",
];

/// The runs `bluesky_runs.py` makes after "go".
const RUNS: usize = 9;

/// The panel of the scan views in Chromium while a RunEngine runs `scan`, `rel_scan`, `count`,
/// `grid_scan`, an aborted scan and a last scan: the page follows the latest run (its points
/// and series on the chart), shows the `scan` run's PeakStats as the JSON view has them with
/// cen and com drawn, the grid_scan as a coloured map, follows again when asked; nothing leaves
/// the host, no console error. With `BEAMFLOW_SCREENSHOT=1` the `scan` run's picture goes to
/// docs/scan_view.png.
#[test]
fn gh_19_the_scan_view_panel_in_chromium() {
    if !browser_available() {
        return;
    }
    let [in_port, out_port] = free_ports::<2>();
    let mut engine = RunEngine::start(&["zmq", &in_port.to_string(), &out_port.to_string()]);
    assert_eq!(engine.next()["proxy"], "ready");
    engine.next(); // the run the pipeline joins mid-way

    let dir = scratch_dir();
    let pipeline = std::fs::read_to_string(root().join("examples/bluesky.toml"))
        .unwrap()
        .replace(
            "tcp://127.0.0.1:5578",
            &format!("tcp://127.0.0.1:{out_port}"),
        )
        // BMM's xafsscan, the last run, on the simulated motor and detector.
        + "\n[accumulators.scans.bmm]\nenergy = \"motor\"\nmodes = { transmission = \"det\" }\n";
    let path = dir.path().join("bluesky.toml");
    std::fs::write(&path, pipeline).unwrap();
    let mut command = beamflow();
    command.arg("run").arg("--pipeline").arg(&path);
    let pipeline = start_run(command);
    // The ingester is subscribed once it skips the run under way: the runs to come are seen.
    eventually(60, "the ingester to skip the run under way", || {
        let (_, body) = http_get(pipeline.rest, "/api/v1/status");
        let status: Value = serde_json::from_str(&body).ok()?;
        (status["ingesters"]["bluesky"]["source"]["late"].as_u64()? > 0).then_some(())
    });

    let out = scratch_dir();
    let url = format!("http://{}/#token={TOKEN}", pipeline.state);
    let mut node = Killed(
        Command::new("node")
            .arg(browser_dir().join("scan_view.mjs"))
            .arg(&url)
            .arg(out.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start node"),
    );
    let mut stdin = node.0.stdin.take().expect("stdin");
    let stdout = BufReader::new(node.0.stdout.take().expect("stdout"));

    let mut printed = Vec::new();
    for line in stdout.lines() {
        let line = line.expect("read the browser script");
        eprintln!("{line}");
        if line != "READY-FOR-RUNS" {
            printed.push(line);
            continue;
        }
        // The page is open: the runs come while it watches.
        let runs = engine.go();
        assert_eq!(runs.len(), RUNS);
        let uid = |run: &Value| run["uid"].as_str().unwrap().to_owned();
        eventually(120, "every run to stop in the scan view", || {
            let (_, body) = http_get(pipeline.state, "/api/v1/result/scans");
            let view: Value = serde_json::from_str(&body).ok()?;
            runs.iter()
                .all(|run| {
                    let status = &view["runs"][uid(run)]["status"];
                    status.is_string() && status != "running"
                })
                .then_some(())
        });
        let plan = |name: &str| {
            runs.iter()
                .find(|run| run["plan"] == name)
                .map(uid)
                .unwrap()
        };
        let latest = runs.last().unwrap();
        let facts = json!({
            "latest": {
                "uid": uid(latest),
                "points": latest["streams"]["primary"].as_array().unwrap().len(),
            },
            "scan": plan("scan"),
            "grid": plan("grid_scan"),
        });
        answer(&mut stdin, &format!("RUNS-DONE {facts}"));
    }
    let status = node.0.wait().expect("wait for node");
    let passed = |check: &str| {
        printed
            .iter()
            .any(|line| line.starts_with(&format!("ok - {check}:")))
    };
    assert!(
        status.success()
            && CHECKS.into_iter().all(passed)
            && !printed.iter().any(|line| line.starts_with("FAIL")),
        "the scan view in Chromium failed ({status}); the script printed:\n{}",
        printed.join("\n")
    );

    if std::env::var_os("BEAMFLOW_SCREENSHOT").is_some_and(|v| v == "1") {
        std::fs::copy(
            out.path().join("scan_view.png"),
            root().join("docs/scan_view.png"),
        )
        .expect("copy the screenshot to docs/");
    }
}
