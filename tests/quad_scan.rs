//! `beamflow scan quad` and `/api/v1/scan/quad` against the simulated injector (issue 14): a
//! scan leaves the machine as it found it. Nothing is put before the pipeline and the PVs
//! answer; a signal or `DELETE` stops the scan, puts the quad back and reports the partial fit;
//! the pipeline's scan runs on across a quad scan, whose frozen fit then holds still.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};

use serde_json::Value;

use crate::epics::{Camonitor, ca_env, free_ca_port, tool_output};
use crate::util::{RunningPipeline, eventually, http_get, http_post, run_python, start_run};

/// The scan quad QE04 and its readback on the simulated injector.
const QE04: &str = "QUAD:IN20:525:BCTRL";
const QE04_READBACK: &str = "QUAD:IN20:525:BACT";

/// The sim's QE04 setting before anyone writes to it, kG.
const QE04_DEFAULT: f64 = -3.2184;

fn caget(port: u16, pv: &str) -> f64 {
    // caget waits 1 s for a search answer by default; a loaded CI box can take longer.
    let text = tool_output(port, "caget", &["-w", "10", "-t", pv]);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("caget {pv}: {text:?}"))
}

/// `beamflow run` with the simulated injector on CA `port`.
fn pipeline(port: u16) -> RunningPipeline {
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port).arg("run");
    start_run(command)
}

/// `beamflow scan quad` on QE04 against `pipeline`, with `args` after the addresses.
fn scan_command(port: u16, controller: SocketAddr, reducer: SocketAddr, args: &[&str]) -> Command {
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port)
        .args(["scan", "quad", "--pv", QE04, "--controller"])
        .arg(controller.to_string())
        .arg("--reducer")
        .arg(reducer.to_string())
        .args(args);
    command
}

/// A `beamflow scan quad` whose standard error is read line by line and whose report is read
/// at its end.
struct Scan {
    child: Child,
    stderr: BufReader<ChildStderr>,
    seen: String,
}

impl Scan {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start beamflow scan quad");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        Self {
            child,
            stderr,
            seen: String::new(),
        }
    }

    /// Reads standard error until a line contains `needle`.
    fn wait_for_line(&mut self, needle: &str) {
        loop {
            let mut line = String::new();
            let n = self.stderr.read_line(&mut line).expect("read stderr");
            assert!(
                n > 0,
                "the scan exited before printing {needle:?}; it printed:\n{}",
                self.seen
            );
            self.seen.push_str(&line);
            if line.contains(needle) {
                return;
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {name}");
    }

    /// Waits for the exit; the exit status, the report on standard output (null when there is
    /// none) and all of standard error.
    fn finish(mut self) -> (ExitStatus, Value, String) {
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).expect("read stderr");
        self.seen.push_str(&rest);
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout)
            .expect("read stdout");
        let status = self.child.wait().expect("wait");
        let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (status, report, std::mem::take(&mut self.seen))
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn result(state: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(state, &format!("/api/v1/result/{path}"));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Ctrl-C in the middle of a scan: stepping stops, the measurement closes with the steps so
/// far, the quad goes back to where it was and waits there, the partial fit is printed and the
/// command says it was stopped. A second Ctrl-C exits at once, the quad's old setting put once.
#[test]
fn a_signal_stops_the_scan_and_puts_the_quad_back() {
    let port = free_ca_port();
    let pipeline = pipeline(port);
    let (state, rest) = (pipeline.state, pipeline.rest);
    let initial = caget(port, QE04_READBACK);
    assert!((initial - QE04_DEFAULT).abs() < 1e-9, "{initial}");

    // A settle of 1 s: steps 4 and 5 take seconds, the signal lands well before the end.
    let args = [
        "--values",
        "-6:-2:5",
        "--settle",
        "1",
        "--shots",
        "3",
        "--tolerance",
        "0.01",
    ];
    let mut scan = Scan::start(scan_command(port, rest, state, &args));
    scan.wait_for_line("Step 3 of 5");
    scan.signal("-INT");
    let (status, report, stderr) = scan.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by SIGINT"), "{stderr}");
    assert!(stderr.contains("plane"), "the summary table: {stderr}");
    assert_eq!(report["state"], "stopped", "{report}");
    let steps = report["steps"].as_array().unwrap();
    assert!((3..5).contains(&steps.len()), "{steps:?}");
    assert!(
        steps[..3].iter().all(|s| s["complete"] == true),
        "{steps:?}"
    );
    assert!(
        report["fit"]["x"]["settings"].as_u64().unwrap() >= 3,
        "the partial fit: {report}"
    );
    assert!(report["fit"]["x"]["points"].as_array().unwrap().len() >= 3);
    assert!(
        report["fit"]["x"].get("curve").is_none(),
        "no curves without --curves"
    );
    let restored = &report["restored"];
    assert_eq!(restored["arrived"], true, "{report}");
    assert!(
        (restored["readback"].as_f64().unwrap() - initial).abs() <= 0.01,
        "{restored}"
    );
    assert_eq!(caget(port, QE04), initial, "the setpoint is back");
    assert!((caget(port, QE04_READBACK) - initial).abs() <= 0.01);
    let id = report["measurement"].as_str().unwrap();
    let frozen = result(state, &format!("quad_scan/measurements/{id}"));
    assert_eq!(
        frozen["fit"]["x"]["norm_emit"],
        report["fit"]["x"]["norm_emit"]
    );
    assert_eq!(result(state, "quad_scan/live"), Value::Null);

    // Twice: out at once (130), the old setting put without waiting, the measurement closed.
    let mut scan = Scan::start(scan_command(port, rest, state, &args));
    scan.wait_for_line("Step 1 of 5");
    scan.signal("-INT");
    scan.wait_for_line("SIGINT: stopping");
    scan.signal("-INT");
    let (status, _, stderr) = scan.finish();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("exiting now"), "{stderr}");
    assert_eq!(caget(port, QE04), initial, "the setpoint is back: {stderr}");
    eventually(20, "the readback back", || {
        ((caget(port, QE04_READBACK) - initial).abs() <= 0.01).then_some(())
    });
    eventually(10, "no measurement open", || {
        (result(state, "quad_scan/live") == Value::Null).then_some(())
    });
}

/// `DELETE /api/v1/scan/quad` does for an API scan what Ctrl-C does for the command.
#[test]
fn delete_stops_an_api_scan_and_puts_the_quad_back() {
    let port = free_ca_port();
    let pipeline = pipeline(port);
    let rest = pipeline.rest;
    let initial = caget(port, QE04_READBACK);
    let delete = || crate::util::http_request(rest, "DELETE", "/api/v1/scan/quad", "");
    assert_eq!(delete().0, 409, "nothing to stop yet");
    let request = serde_json::json!({
        "pv": QE04, "values": [-6.0, -5.0, -4.0, -3.5, -2.0], "settle_s": 1.0, "shots": 3,
    });
    let (status, body) = http_post(rest, "/api/v1/scan/quad", &request.to_string());
    assert_eq!(status, 202, "{body}");
    let progress =
        || -> Value { serde_json::from_str(&http_get(rest, "/api/v1/scan/quad").1).unwrap() };
    eventually(90, "three steps", || {
        (progress()["steps"].as_array()?.len() >= 3).then_some(())
    });
    let (status, body) = delete();
    assert_eq!(status, 202, "{body}");
    let done = eventually(60, "the scan to stop", || {
        let p = progress();
        (p["state"] != "running" && p["state"] != "stopping").then_some(p)
    });
    assert_eq!(done["state"], "stopped", "{done}");
    assert!(done["steps"].as_array().unwrap().len() < 5, "{done}");
    assert!(
        done["fit"]["x"]["settings"].as_u64().unwrap() >= 3,
        "{done}"
    );
    assert_eq!(done["restored"]["arrived"], true, "{done}");
    assert_eq!(caget(port, QE04), initial);
    assert!((caget(port, QE04_READBACK) - initial).abs() <= 0.01);
    assert_eq!(delete().0, 409, "nothing left to stop");
}

/// Stopping `beamflow run` while an API scan moves the quad puts the quad back first: the sim
/// runs in its own process, so its QE04 is read after the pipeline's process has ended.
#[test]
fn stopping_the_pipeline_mid_scan_puts_the_quad_back() {
    let sim_port = free_ca_port();
    let mut sim = crate::util::beamflow();
    ca_env(&mut sim, sim_port).args(["sim-ioc", "--address", &format!("127.0.0.1:{sim_port}")]);
    let mut sim = crate::util::Running::start(sim);
    sim.wait_for_line("beamflow sim-ioc:");
    // The result PVs move to a port of their own: the sim's process serves its own.
    let embedded =
        std::fs::read_to_string(crate::util::root().join("examples/injector.toml")).unwrap();
    let served_at = r#"server = "127.0.0.1"  "#;
    assert_eq!(embedded.matches(served_at).count(), 1, "{served_at}");
    let text = embedded.replacen(
        served_at,
        &format!(r#"server = "127.0.0.1:{}"  "#, free_ca_port()),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("injector.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = crate::util::beamflow();
    ca_env(&mut command, sim_port)
        .args(["run", "--pipeline"])
        .arg(&path);
    crate::util::any_ports(&mut command);
    let mut run = crate::util::Running::start(command);
    let line = run.wait_for_line("beamflow is running.");
    let rest = crate::util::http_address(line.split("Progress:").nth(1).unwrap());
    run.wait_for_line("started");
    let initial = caget(sim_port, QE04);
    let request = serde_json::json!({
        "pv": QE04, "values": [-6.0, -5.5, -5.0, -4.5], "settle_s": 1.0, "shots": 3,
    });
    let (status, body) = http_post(rest, "/api/v1/scan/quad", &request.to_string());
    assert_eq!(status, 202, "{body}");
    eventually(90, "the quad away from its setting", || {
        let progress: Value = serde_json::from_str(&http_get(rest, "/api/v1/scan/quad").1).ok()?;
        (!progress["steps"].as_array()?.is_empty()).then_some(())
    });
    assert_ne!(caget(sim_port, QE04), initial, "the scan moved the quad");
    let pid = run.child.id().to_string();
    let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let exit = run.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(caget(sim_port, QE04), initial, "the setpoint put back");
    assert!((caget(sim_port, QE04_READBACK) - initial).abs() <= 0.01);
}

/// A port nobody listens on.
fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// With the controller unreachable, with no such accumulator, or with a setpoint whose readback
/// cannot be derived, the command fails before anything reaches the magnet.
#[test]
fn nothing_is_put_unless_the_pipeline_and_the_pvs_answer() {
    let port = free_ca_port();
    let pipeline = pipeline(port);
    let (state, rest) = (pipeline.state, pipeline.rest);
    let untouched = |stderr: &str| {
        assert_eq!(
            caget(port, QE04),
            QE04_DEFAULT,
            "a put reached QE04: {stderr}"
        );
    };
    let fails = |command: Command, needle: &str| {
        let (status, report, stderr) = Scan::start(command).finish();
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
        assert_eq!(report, Value::Null, "no report: {report}");
        untouched(&stderr);
        stderr
    };
    let values = ["--values", "-6:-2:3"];
    let stderr = fails(
        scan_command(port, dead_port(), state, &values),
        "controller",
    );
    assert!(stderr.contains("nothing was put"), "{stderr}");
    fails(scan_command(port, rest, dead_port(), &values), "reducer");
    let mut missing = scan_command(port, rest, state, &values);
    missing.args(["--result", "quad_scna"]);
    fails(missing, "no accumulator \"quad_scna\"");
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port).args([
        "scan",
        "quad",
        "--pv",
        "QUAD:IN20:525:BDES",
        "--values",
        "-6:-2:3",
        "--controller",
    ]);
    command
        .arg(rest.to_string())
        .arg("--reducer")
        .arg(state.to_string());
    fails(command, "--readback");
}

/// `--values -4:-2:3` (QE04 runs at negative kG) scans those settings; the pipeline's scan runs
/// on across the quad scan (same scan, event numbers going on), and the measurement's fit,
/// frozen when the command returns, holds still while live shots go on.
#[test]
fn a_negative_scan_keeps_the_histories_and_freezes_its_fit() {
    let port = free_ca_port();
    let pipeline = pipeline(port);
    let (state, rest) = (pipeline.state, pipeline.rest);
    let status =
        || -> Value { serde_json::from_str(&http_get(state, "/api/v1/status").1).unwrap() };
    // None until the reducer publishes its first state.
    let events = || -> Option<Vec<u64>> {
        let (status, body) = http_get(state, "/api/v1/result/machine/event_number");
        let events: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        events.as_array()?.iter().map(Value::as_u64).collect()
    };
    let before = eventually(30, "live events", || events().filter(|e| e.len() >= 5));
    let scan_before = status()["scan"].clone();
    assert!(scan_before.is_u64(), "{scan_before}");

    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("scan.json");
    let mut command = scan_command(port, rest, state, &["--values", "-4:-2:3"]);
    command
        .args(["--settle", "0.2", "--shots", "3", "--out"])
        .arg(&file);
    let (exit, printed, stderr) = Scan::start(command).finish();
    assert!(exit.success(), "{stderr}");
    assert_eq!(printed, Value::Null, "the report goes to --out only");
    let report: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let fit_at_return = result(state, "quad_scan/fit");
    let values: Vec<f64> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [-4.0, -3.0, -2.0], "{report}");
    assert_eq!(report["state"], "done");
    assert_eq!(fit_at_return["x"]["settings"], 3, "{fit_at_return}");
    assert_eq!(
        fit_at_return["x"]["norm_emit"],
        report["fit"]["x"]["norm_emit"]
    );
    assert!(stderr.contains("plane"), "the summary table: {stderr}");
    // -4 … -2 kG never reaches x's waist (at about +0.95 kG): the fit says so.
    let warnings = report["fit"]["warnings"].to_string();
    assert!(warnings.contains("x: no waist"), "{warnings}");
    assert!(
        stderr.contains("no waist"),
        "the table shows the warning: {stderr}"
    );
    // silx, on the reducer's HDF5-REST view, plots the steps: x size against the setting.
    let url = format!("http://{state}/");
    let silx_said = String::from_utf8(run_python(
        "silx_default_plot.py",
        &[url.as_str(), "quad_scan"],
    ))
    .expect("UTF-8");
    // The frozen steps: the three set, and the readbacks seen on the way.
    let steps = result(state, "quad_scan/steps")
        .as_array()
        .map_or(0, Vec::len);
    assert!(steps >= 3, "{steps}");
    assert!(
        silx_said.contains(&format!("size_x_m against bctrl_kg, {steps} points")),
        "{silx_said}"
    );

    // The same pipeline scan, its event numbers going on from before the quad scan.
    assert_eq!(status()["scan"], scan_before);
    let after = events().unwrap();
    let last_before = *before.last().unwrap();
    assert!(
        after.contains(&last_before),
        "{last_before} not in {after:?}"
    );
    assert!(after.last().unwrap() > &last_before, "{after:?}");

    // Twenty more live shots (the quad back at its default) leave the frozen fit alone.
    let later = last_before.max(*after.last().unwrap()) + 20;
    eventually(30, "twenty more events", || {
        (events()?.last().copied()? >= later).then_some(())
    });
    assert_eq!(result(state, "quad_scan/fit"), fit_at_return);
    assert!(
        result(state, "quad_scan/shots_outside_measurement")
            .as_u64()
            .unwrap()
            >= 20
    );

    // `--values=-6:-2:5` parses too (checked by clap; the scan itself is refused: wrong
    // accumulator, so nothing moves).
    let mut equals = scan_command(
        port,
        rest,
        state,
        &["--values=-6:-2:5", "--result", "machine"],
    );
    equals.env("RUST_LOG", "warn");
    let (exit, _, stderr) = Scan::start(equals).finish();
    assert!(!exit.success());
    assert!(stderr.contains("not a quad_scan accumulator"), "{stderr}");
}

/// Issue 17: a scan writes only the PVs the pipeline lists under `[controller.scan.writable]`,
/// and only within the PV's control limits (DRVL/DRVH) narrowed by the listed ones. A softIoc's
/// `ao` records are watched by `camonitor` from before the first request: a PV not listed (over
/// the API and from the command), a value below DRVL, a value above the pipeline's `high`, and
/// a PV with no limits at all are refused with nothing put; a scan inside the range puts each
/// setting and the old one back. Over the API, the sim's QE04 refuses a setting beyond its
/// ±10 kG before any put.
#[test]
fn gh_17_scans_write_only_listed_pvs_within_their_limits() {
    let ioc_port = free_ca_port();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quads.db");
    std::fs::write(
        &db,
        r#"
record(ao, "GH17:Q1:BCTRL") { field(DRVL, "-2") field(DRVH, "2") field(VAL, "0.5") field(PINI, "YES") }
record(ai, "GH17:Q1:BACT") { field(INP, "GH17:Q1:BCTRL CP") field(PINI, "YES") }
record(ao, "GH17:Q2:BCTRL") { field(DRVL, "-2") field(DRVH, "2") field(VAL, "0.5") field(PINI, "YES") }
record(ai, "GH17:Q2:BACT") { field(INP, "GH17:Q2:BCTRL CP") field(PINI, "YES") }
record(ao, "GH17:Q3:BCTRL") { field(VAL, "0.5") field(PINI, "YES") }
record(ai, "GH17:Q3:BACT") { field(INP, "GH17:Q3:BCTRL CP") field(PINI, "YES") }
"#,
    )
    .unwrap();
    let _ioc = crate::epics::Ioc::start(&db, ioc_port);
    let quads = ["GH17:Q1:BCTRL", "GH17:Q2:BCTRL", "GH17:Q3:BCTRL"];
    let monitor = Camonitor::start(ioc_port, &quads);
    for quad in quads {
        assert_eq!(monitor.of(quad), [0.5], "{quad}");
    }

    // The embedded pipeline (its QE04 listed), plus Q1 narrowed to 1.5 and Q3 without limits.
    let embedded =
        std::fs::read_to_string(crate::util::root().join("examples/injector.toml")).unwrap();
    let pipeline_file = dir.path().join("injector.toml");
    std::fs::write(
        &pipeline_file,
        format!(
            "{embedded}\n[controller.scan.writable.\"GH17:Q1:BCTRL\"]\nhigh = 1.5\n\
             [controller.scan.writable.\"GH17:Q3:BCTRL\"]\n"
        ),
    )
    .unwrap();
    let sim_port = free_ca_port();
    let mut command = crate::util::beamflow();
    ca_env(&mut command, sim_port)
        .args(["run", "--sim-ioc", "--pipeline"])
        .arg(&pipeline_file);
    let pipeline = start_run(command);
    let (state, rest) = (pipeline.state, pipeline.rest);

    // Not listed: 403 over the API, before any thread or CA client exists.
    let request = serde_json::json!({"pv": "GH17:Q2:BCTRL", "values": [1.0]});
    let (status, body) = http_post(rest, "/api/v1/scan/quad", &request.to_string());
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(r#"[controller.scan.writable.\"GH17:Q2:BCTRL\"]"#),
        "says how to allow it: {body}"
    );
    let (_, writable) = http_get(rest, "/api/v1/scan/writable");
    let writable: Value = serde_json::from_str(&writable).unwrap();
    assert_eq!(
        writable["writable"],
        serde_json::json!({
            "GH17:Q1:BCTRL": {"high": 1.5}, "GH17:Q3:BCTRL": {}, "QUAD:IN20:525:BCTRL": {},
        })
    );

    // From the command, against the softIoc: each refused, with the reason.
    let refused = |pv: &str, values: &str, needles: &[&str]| {
        let mut command = crate::util::beamflow();
        ca_env(&mut command, ioc_port)
            .args([
                "scan",
                "quad",
                "--pv",
                pv,
                "--values",
                values,
                "--controller",
            ])
            .arg(rest.to_string())
            .arg("--reducer")
            .arg(state.to_string());
        let (status, report, stderr) = Scan::start(command).finish();
        assert!(!status.success(), "{pv} {values}: {stderr}");
        assert_eq!(report, Value::Null, "no report: {report}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} in {stderr}");
        }
    };
    refused(
        "GH17:Q2:BCTRL",
        "0:1:2",
        &["not writable by scans", "lists only GH17:Q1:BCTRL"],
    );
    refused(
        "GH17:Q1:BCTRL",
        "-3:1:3",
        &[
            "the setting -3 is outside",
            "[-2, 1.5]",
            "the PV's control limits [-2, 2] and the pipeline's high 1.5",
            "nothing was put",
        ],
    );
    refused(
        "GH17:Q1:BCTRL",
        "0:1.8:2",
        &["the setting 1.8 is outside", "nothing was put"],
    );
    refused(
        "GH17:Q3:BCTRL",
        "0:1:2",
        &["has no range", "DRVL and DRVH", "Nothing was put"],
    );

    // Inside the range: each setting put, then the old one (steps end without shots: the
    // pipeline's images follow the sim's quad, not these).
    let mut command = crate::util::beamflow();
    ca_env(&mut command, ioc_port)
        .args([
            "scan",
            "quad",
            "--pv",
            "GH17:Q1:BCTRL",
            "--values",
            "-1:1:2",
        ])
        .args(["--settle", "0", "--shots", "1", "--step-timeout", "1"])
        .arg("--controller")
        .arg(rest.to_string())
        .arg("--reducer")
        .arg(state.to_string());
    let (status, report, stderr) = Scan::start(command).finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(report["state"], "done", "{report}");
    assert!(
        stderr.contains("GH17:Q1:BCTRL may be put within [-2, 1.5]"),
        "{stderr}"
    );
    // camonitor sees values in the order they were put: nothing before the scan's first.
    assert_eq!(monitor.until("GH17:Q1:BCTRL", 0.5), [0.5, -1.0, 1.0, 0.5]);
    // A marker put by caput: nothing reached Q2 or Q3 before it.
    for quad in ["GH17:Q2:BCTRL", "GH17:Q3:BCTRL"] {
        tool_output(ioc_port, "caput", &[quad, "1.25"]);
        assert_eq!(monitor.until(quad, 1.25), [0.5, 1.25], "{quad}");
    }

    // Over the API, the sim's QE04 (±10 kG): refused before its first put, the quad untouched.
    let request = serde_json::json!({"pv": QE04, "values": [-4.0, -12.0], "settle_s": 0.1});
    let (status, body) = http_post(rest, "/api/v1/scan/quad", &request.to_string());
    assert_eq!(status, 202, "{body}");
    let progress = eventually(30, "the scan to be refused", || {
        let progress: Value = serde_json::from_str(&http_get(rest, "/api/v1/scan/quad").1).ok()?;
        (progress["state"] == "failed").then_some(progress)
    });
    let message = progress["message"].as_str().unwrap();
    assert!(
        message.contains("the setting -12 is outside") && message.contains("[-10, 10]"),
        "{message}"
    );
    assert!(progress["steps"].as_array().unwrap().is_empty());
    assert_eq!(progress["refused"], 2, "the 403 and this one: {progress}");
    assert_eq!(caget(sim_port, QE04), QE04_DEFAULT, "no put reached QE04");
}
