//! Helpers shared by the end-to-end tests.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `tests/data/`.
pub(crate) fn data(name: &str) -> PathBuf {
    root().join("tests/data").join(name)
}

/// The Python interpreter of the venv `.ci/run` creates, with dranspose 0.2.0 installed.
/// Missing it is a failure, not a skip: the interop tests are part of the bar.
pub(crate) fn python() -> PathBuf {
    let path = std::env::var_os("BEAMFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "{} not found: run .ci/run once (it creates .venv with dranspose 0.2.0) or set BEAMFLOW_PYTHON",
        path.display()
    );
    path
}

/// Runs a script from `tests/python/` and returns its standard output; fails the test with its
/// standard error otherwise.
pub(crate) fn run_python<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> Vec<u8> {
    let output = Command::new(python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("start python");
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The HTTP token every process under test is given (as `BEAMFLOW_TOKEN`), so none of them
/// reads or makes the user's own token file.
pub(crate) const TOKEN: &str = "beamflow-test-token";

/// The access in-process components are started behind: [`TOKEN`].
pub(crate) fn access() -> beamflow_net::http::Access {
    beamflow_net::http::Access::with_token(beamflow_net::token::Token::new(TOKEN).unwrap())
}

/// A temporary folder that is not hidden (`tempfile`'s are named `.tmpXXXX`): recordings may go
/// under it with the default roots, which refuse hidden folders below the temporary folder.
pub(crate) fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("beamflow-test-")
        .tempdir()
        .unwrap()
}

/// The `beamflow` binary under test, with [`TOKEN`] as its HTTP token.
pub(crate) fn beamflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_beamflow"));
    command.env("RUST_LOG", "warn");
    command.env(beamflow_net::token::TOKEN_ENV, TOKEN);
    command.env_remove(beamflow_net::token::TOKEN_FILE_ENV);
    command
}

/// Runs `beamflow` to completion; fails the test if it logged at ERROR (see [`Running`]).
pub(crate) fn beamflow_output(args: &[&str]) -> Output {
    beamflow_output_allowing(args, &[])
}

/// Runs `beamflow` to completion; fails the test if it logged at ERROR, but for lines that
/// contain one of `allowed`.
pub(crate) fn beamflow_output_allowing(args: &[&str], allowed: &[&str]) -> Output {
    let output = beamflow().args(args).output().expect("run beamflow");
    let unexpected: Vec<_> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| is_error(line) && !allowed.iter().any(|allowed| line.contains(allowed)))
        .map(str::to_owned)
        .collect();
    assert!(
        unexpected.is_empty(),
        "beamflow {} logged at ERROR (declare expected errors):\n{}",
        args.join(" "),
        unexpected.join("\n")
    );
    output
}

/// Decodes lowercase hex.
pub(crate) fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A running `beamflow` whose standard error is read line by line.
///
/// Like dranspose's `fail_on_error_log`, a process that logged at ERROR fails the test when it
/// is dropped, unless the test declared those errors with [`Running::allow_errors`]: an
/// ERROR means data loss or that an operator must act, which no test expects by accident.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) stderr: Stderr,
    errors: Arc<Mutex<Vec<String>>>,
    allowed: Vec<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub(crate) fn spawn(args: &[&str]) -> Self {
        let mut command = beamflow();
        command.args(args);
        Self::start(command)
    }

    /// Starts `command` (a `beamflow()` with arguments and environment).
    pub(crate) fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start beamflow");
        let pipe = BufReader::new(child.stderr.take().expect("stderr"));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (lines, receiver) = mpsc::channel();
        // Every line is read as it comes, whether or not the test reads it, so an ERROR logged
        // after the test's last read is still seen.
        let reader = std::thread::spawn({
            let errors = Arc::clone(&errors);
            move || {
                for line in pipe.split(b'\n') {
                    let Ok(mut line) = line else { break };
                    let text = String::from_utf8_lossy(&line);
                    if is_error(&text) {
                        errors.lock().unwrap().push(text.into_owned());
                    }
                    line.push(b'\n');
                    // The test may have stopped reading; the lines are still checked.
                    let _ = lines.send(line);
                }
            }
        });
        Self {
            child,
            stderr: Stderr {
                lines: receiver,
                line: Vec::new(),
                at: 0,
            },
            errors,
            allowed: Vec::new(),
            reader: Some(reader),
        }
    }

    /// Declares the ERROR lines this test provokes, each by a part of its text.
    pub(crate) fn allow_errors(&mut self, substrings: &[&str]) {
        self.allowed
            .extend(substrings.iter().map(|&substring| substring.to_owned()));
    }

    /// Reads standard error until a line contains `needle`; returns that line.
    pub(crate) fn wait_for_line(&mut self, needle: &str) -> String {
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = self.stderr.read_line(&mut line).expect("read stderr");
            assert!(
                n > 0,
                "beamflow exited before printing {needle:?}; it printed:\n{seen}"
            );
            if line.contains(needle) {
                return line;
            }
            seen.push_str(&line);
        }
    }

    /// Stops the process and returns the ERROR lines it logged that the test did not allow.
    fn unexpected_errors(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            // The pipe closes with the process, unless something it started still holds it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !reader.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors
            .iter()
            .filter(|line| !self.allowed.iter().any(|allowed| line.contains(allowed)))
            .cloned()
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let unexpected = self.unexpected_errors();
        // A test already failing says why; a second panic would abort instead.
        if !unexpected.is_empty() && !std::thread::panicking() {
            panic!(
                "beamflow logged at ERROR (declare expected errors with allow_errors):\n{}",
                unexpected.join("\n")
            );
        }
    }
}

/// Whether a log line is at ERROR, in the text or the JSON format.
fn is_error(line: &str) -> bool {
    line.contains(" ERROR ") || line.contains("\"level\":\"ERROR\"")
}

/// A running `beamflow`'s standard error, line by line as [`Running`]'s reader passes it on.
pub(crate) struct Stderr {
    lines: mpsc::Receiver<Vec<u8>>,
    line: Vec<u8>,
    at: usize,
}

impl Read for Stderr {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Stderr {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at == self.line.len() {
            // A closed channel is the end of the output.
            self.line = self.lines.recv().unwrap_or_default();
            self.at = 0;
        }
        Ok(&self.line[self.at..])
    }

    fn consume(&mut self, amount: usize) {
        self.at = (self.at + amount).min(self.line.len());
    }
}

/// The answer to an HTTP request with [`TOKEN`]: the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_as(addr, method, path, body, Some(TOKEN))
}

/// The answer to an HTTP request with `token` (or none): the status code and the body.
pub(crate) fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    fn authorized<B>(
        request: ureq::RequestBuilder<B>,
        token: Option<&str>,
    ) -> ureq::RequestBuilder<B> {
        match token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }
    let response = match method {
        "GET" => authorized(agent.get(&url), token).call(),
        "DELETE" => authorized(agent.delete(&url), token).call(),
        "POST" => authorized(agent.post(&url), token).send(body),
        "PUT" => authorized(agent.put(&url), token).send(body),
        other => panic!("no {other} requests in these tests"),
    };
    let mut response = response.unwrap_or_else(|error| panic!("{method} {url}: {error}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .unwrap_or_else(|error| panic!("{method} {url}: reading the body: {error}"));
    (status, body)
}

/// A GET; returns the status code and body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

/// A POST of `body`; returns the status code and body.
pub(crate) fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, body)
}

/// A request of any method (`GET`, `POST`, `PUT`, `DELETE`); returns the status code and body.
pub(crate) fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    http(addr, method, path, body)
}

/// `beamflow replay --pipeline PIPELINE --dump DUMP --out -`: the final state it prints; fails
/// the test with replay's standard error otherwise.
pub(crate) fn replayed_state(pipeline: &Path, dump: &Path) -> serde_json::Value {
    let output = beamflow_output(&[
        "replay",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--dump",
        dump.to_str().unwrap(),
        "--out",
        "-",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Polls `probe` every 20 ms until it gives a value, failing the test after `seconds`. For
/// conditions only observable from outside (an HTTP endpoint), never as a stand-in for a
/// synchronisation the code offers.
pub(crate) fn eventually<T>(seconds: u64, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The `http://host:port` address in a line `beamflow` printed.
pub(crate) fn http_address(line: &str) -> SocketAddr {
    line.split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no http://host:port/ in {line:?}"))
}

/// The unsigned integers of the array at `path`.
pub(crate) fn numbers(state: &serde_json::Value, path: &str) -> Vec<u64> {
    state
        .pointer(path)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// `beamflow run` as README's first command starts it, its HTTP ports and control socket bound
/// to 0, once it says its scan started.
pub(crate) struct RunningPipeline {
    /// The process, killed (and checked for ERROR lines) when this is dropped.
    pub(crate) process: Running,
    /// The reducer's HTTP address.
    pub(crate) state: SocketAddr,
    /// The controller's REST address.
    pub(crate) rest: SocketAddr,
}

/// `beamflow run`'s HTTP ports and control socket bound to 0 on loopback.
pub(crate) fn any_ports(command: &mut Command) -> &mut Command {
    command.args([
        "--http",
        "127.0.0.1:0",
        "--reducer-http",
        "127.0.0.1:0",
        "--control",
        "tcp://127.0.0.1:0",
    ])
}

/// Starts `command` (a `beamflow()` with `run` and its own arguments and environment).
pub(crate) fn start_run(mut command: Command) -> RunningPipeline {
    any_ports(&mut command);
    let mut run = Running::start(command);
    let line = run.wait_for_line("beamflow is running.");
    let state = http_address(&line);
    let rest = http_address(line.split("Progress:").nth(1).unwrap());
    run.wait_for_line("started");
    RunningPipeline {
        process: run,
        state,
        rest,
    }
}

/// Waits for the controller to finish the scan and the reducer to publish its final status;
/// returns that status.
pub(crate) fn finished_status(pipeline: &RunningPipeline) -> serde_json::Value {
    let (rest, state) = (pipeline.rest, pipeline.state);
    eventually(60, "the scan to finish", || {
        let progress: serde_json::Value =
            serde_json::from_str(&http_get(rest, "/api/v1/progress").1).ok()?;
        (progress["finished"] == true).then_some(())
    });
    eventually(10, "the reducer's final state", || {
        let status: serde_json::Value =
            serde_json::from_str(&http_get(state, "/api/v1/status").1).ok()?;
        (status["finished"] == true).then_some(status)
    })
}

/// A GET of a JSON document that may not be served right now (the server is being restarted,
/// or answers slowly): `None` on any failure, after at most `timeout`.
pub(crate) fn try_get_json(
    addr: SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> Option<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut response = agent.get(&format!("http://{addr}{path}")).call().ok()?;
    if response.status() != 200 {
        return None;
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// `N` distinct free TCP ports on loopback, for servers that must bind the same ports again
/// after a restart. Another process may take one between this call and the bind; on a test
/// machine that is rare enough.
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    // All bound at once, so no port is answered twice.
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

impl Running {
    /// The lines of standard error printed since the test last read it, without waiting for
    /// more.
    pub(crate) fn printed_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.stderr.at < self.stderr.line.len() {
            lines.push(String::from_utf8_lossy(&self.stderr.line[self.stderr.at..]).into_owned());
            self.stderr.at = self.stderr.line.len();
        }
        while let Ok(line) = self.stderr.lines.try_recv() {
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        lines
            .into_iter()
            .map(|line| line.trim_end().to_owned())
            .collect()
    }
}
