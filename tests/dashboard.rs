//! Issue 18's dashboard in a real headless Chromium: `tests/browser/dashboard.mjs` (Playwright's
//! `playwright-core` driving Debian's `chromium`) against `beamflow run`'s embedded demo. This
//! side starts the pipeline, the quad scan and the restart when the script asks for them.
//!
//! Without Chromium or the script's `node_modules` (`npm ci --prefix tests/browser`) the test
//! says so and passes, except under CI (`CI` set), where it must run: `.ci/run` installs both.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::epics::{ca_env, free_ca_port};
use crate::util::{Running, TOKEN, beamflow, free_ports, root, scratch_dir};

/// Debian's Chromium, which `.ci/run` installs.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The checks the script prints, each `ok - NAME: ...` when it passed.
const CHECKS: [&str; 9] = [
    "page",
    "requests",
    "console",
    "history",
    "image",
    "what-if",
    "quad-scan",
    "reconnect",
    "screenshot",
];

/// The quad scan the script watches: five settings of QE04 across the sim's waist in x (so the
/// screenshot shows a fit, not an extrapolation), few shots each,
/// and long to wait for them: a debug build on a busy machine runs the pipeline late.
const SCAN_ARGS: [&str; 8] = [
    "--values",
    "0.5:4.5:5",
    "--settle",
    "0.2",
    "--shots",
    "2",
    "--step-timeout",
    "120",
];

/// How long `beamflow run` may take to stop after Ctrl-C.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn browser_dir() -> PathBuf {
    root().join("tests/browser")
}

/// Whether a browser test can run here; when it cannot, says why and lets the test pass,
/// except under CI (`CI` set), where it fails: `.ci/run` installs everything.
pub(crate) fn browser_available() -> bool {
    match missing() {
        None => true,
        Some(reason) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the browser tests, but {reason}"
            );
            eprintln!("skipped: {reason}");
            false
        }
    }
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "{CHROMIUM} is not installed (apt-get install chromium)"
        ));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some(
            "tests/browser/node_modules is missing (npm ci --prefix tests/browser)".into(),
        );
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed (apt-get install nodejs npm)".into());
    }
    None
}

/// `beamflow run` of the embedded demo on fixed ports, so a second one takes the first's place.
struct Pipeline {
    ca_port: u16,
    http: SocketAddr,
    reducer: SocketAddr,
    control: SocketAddr,
}

impl Pipeline {
    fn new() -> Self {
        let [http, reducer, control] =
            free_ports().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        Self {
            ca_port: free_ca_port(),
            http,
            reducer,
            control,
        }
    }

    fn start(&self) -> Running {
        let mut command = beamflow();
        ca_env(&mut command, self.ca_port)
            .arg("run")
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--reducer-http")
            .arg(self.reducer.to_string())
            .arg("--control")
            .arg(format!("tcp://{}", self.control));
        let mut run = Running::start(command);
        run.wait_for_line("beamflow is running.");
        run.wait_for_line("started");
        run
    }

    /// Ctrl-C, as an operator restarting the reducer would: the pages are told `bye`.
    fn stop(&self, mut run: Running) {
        let status = Command::new("kill")
            .args(["-INT", &run.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT beamflow run");
        let deadline = Instant::now() + STOP_TIMEOUT;
        // Polls the exit: the process is outside the test, nothing else tells.
        while run
            .child
            .try_wait()
            .expect("wait for beamflow run")
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "beamflow run did not stop within {STOP_TIMEOUT:?} of Ctrl-C with a page attached"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `beamflow scan quad` on QE04, its output collected by a thread.
    fn scan(&self) -> std::thread::JoinHandle<std::process::Output> {
        let mut command = beamflow();
        ca_env(&mut command, self.ca_port)
            .args(["scan", "quad", "--pv", "QUAD:IN20:525:BCTRL"])
            .args(SCAN_ARGS)
            .arg("--controller")
            .arg(self.http.to_string())
            .arg("--reducer")
            .arg(self.reducer.to_string());
        std::thread::spawn(move || command.output().expect("run beamflow scan quad"))
    }
}

/// A child in its own process group, the whole group killed when the test ends, however it
/// ends: Chromium is node's child.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// Answers the browser script's question on its standard input.
pub(crate) fn answer(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").expect("answer the browser script");
    stdin.flush().expect("answer the browser script");
}

/// The page's checks in Chromium, against `beamflow run` as README's first command starts it:
/// nothing leaves the host, no console error, a history in Los Angeles time, the OTR2 image
/// following the beam, the what-if's "apply current machine values", a quad scan from the CLI
/// point by point, the page reconnecting after a restart; and the screenshot README shows
/// (written to docs/dashboard.png when `BEAMFLOW_SCREENSHOT=1`).
#[test]
fn gh_18_the_dashboard_in_chromium() {
    if !browser_available() {
        return;
    }
    let pipeline = Pipeline::new();
    let mut run = Some(pipeline.start());
    let out = scratch_dir();
    let url = format!("http://{}/#token={TOKEN}", pipeline.reducer);
    let mut node = Killed(
        Command::new("node")
            .arg(browser_dir().join("dashboard.mjs"))
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

    let mut scan = None;
    let mut printed = Vec::new();
    for line in stdout.lines() {
        let line = line.expect("read the browser script");
        eprintln!("{line}");
        match line.as_str() {
            "READY-FOR-SCAN" => {
                scan = Some(pipeline.scan());
                answer(&mut stdin, "SCAN-STARTED");
            }
            "SCAN-SEEN" => {
                let output = scan.take().expect("a scan started").join().expect("scan");
                assert!(
                    output.status.success(),
                    "beamflow scan quad failed:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                // The page plots the steps that had shots.
                let report: serde_json::Value =
                    serde_json::from_slice(&output.stdout).expect("the scan's JSON report");
                let measured = report["steps"]
                    .as_array()
                    .expect("the report's steps")
                    .iter()
                    .filter(|step| step["accepted"].as_u64().unwrap_or(0) > 0)
                    .count();
                answer(&mut stdin, &format!("SCAN-DONE {measured}"));
            }
            "READY-FOR-RESTART" => {
                // A scan the page did not see to the end still finishes before the restart.
                if let Some(scan) = scan.take() {
                    let _ = scan.join();
                }
                pipeline.stop(run.take().expect("running"));
                run = Some(pipeline.start());
                answer(&mut stdin, "RESTARTED");
            }
            _ => printed.push(line),
        }
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
        "the dashboard in Chromium failed ({status}); the script printed:\n{}",
        printed.join("\n")
    );

    if std::env::var_os("BEAMFLOW_SCREENSHOT").is_some_and(|v| v == "1") {
        std::fs::copy(
            out.path().join("dashboard.png"),
            root().join("docs/dashboard.png"),
        )
        .expect("copy the screenshot to docs/");
    }
}
