//! Issue 17, "no one in who does not belong": the HTTP token, bounded parameters and confined
//! recordings, against the `beamflow` binary over real sockets.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    Running, TOKEN, any_ports, beamflow, eventually, http_address, http_as, http_get, http_post,
    root, scratch_dir,
};

/// `beamflow run` of the simulated detector, started with `command`'s environment.
struct Run {
    _process: Running,
    /// The controller's REST address.
    rest: SocketAddr,
    /// The reducer's.
    state: SocketAddr,
    /// The line saying where the token is.
    token_line: String,
}

fn run(mut command: std::process::Command) -> Run {
    command
        .args(["run", "--pipeline"])
        .arg(root().join("examples/sim.toml"));
    any_ports(&mut command);
    let mut running = Running::start(command);
    let line = running.wait_for_line("beamflow is running.");
    let state = http_address(&line);
    let rest = http_address(line.split("Progress:").nth(1).unwrap());
    let token_line = running.wait_for_line("HTTP writes");
    Run {
        _process: running,
        rest,
        state,
        token_line,
    }
}

fn status(rest: SocketAddr) -> Value {
    let (code, body) = http_get(rest, "/api/v1/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Writes need the token, from the file `BEAMFLOW_TOKEN_FILE` names; reads do not; refusals
/// are a 401 with the reason and are counted in the status.
#[test]
fn writes_need_the_token_from_the_file_and_reads_do_not() {
    let dir = scratch_dir();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-the-file\n").unwrap();
    let mut command = beamflow();
    command
        .env_remove("BEAMFLOW_TOKEN")
        .env("BEAMFLOW_TOKEN_FILE", &file);
    let running = run(command);
    let (rest, line) = (running.rest, &running.token_line);
    assert!(
        line.contains(&format!("$(cat {})", file.display())),
        "run says where the token is: {line}"
    );

    let (code, body) = http_as(rest, "POST", "/api/v1/stop", "", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("needs a bearer token"), "{body}");
    let (code, _) = http_as(rest, "POST", "/api/v1/stop", "", Some(TOKEN));
    assert_eq!(code, 401, "the environment's token is not the file's");
    let (code, body) = http_as(rest, "GET", "/api/v1/progress", "", None);
    assert_eq!(code, 200, "reads stay open: {body}");
    let (code, body) = http_as(rest, "POST", "/api/v1/stop", "", Some("from-the-file"));
    assert_eq!(code, 200, "{body}");
    let http = &status(rest)["http"];
    assert_eq!(http["refused"], 2, "{http}");
    assert_eq!(http["open_writes"], false, "{http}");
    // The reducer's writes (model evaluations) too; its reads stay open.
    let evaluate = "/api/v1/model/none/evaluate";
    let (code, body) = http_as(running.state, "POST", evaluate, "{}", None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = http_as(running.state, "POST", evaluate, "{}", Some("from-the-file"));
    assert_eq!(code, 404, "past the guard, no such model: {body}");
    let (code, body) = http_as(running.state, "GET", "/api/v1/status", "", None);
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["http"]["refused"], 1, "{status}");
}

/// With no token given, the first process makes one in the user's configuration folder,
/// readable by its owner only, and says where it is.
#[test]
fn without_a_token_one_is_made_in_the_users_folder() {
    let dir = scratch_dir();
    let mut command = beamflow();
    command
        .env_remove("BEAMFLOW_TOKEN")
        .env("XDG_CONFIG_HOME", dir.path());
    let running = run(command);
    let file = dir.path().join("beamflow/token");
    assert!(
        running
            .token_line
            .contains(&format!("$(cat {})", file.display())),
        "{}",
        running.token_line
    );
    let token = std::fs::read_to_string(&file).unwrap();
    assert_eq!(token.trim().len(), 64, "32 random bytes in hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, body) = http_as(running.rest, "POST", "/api/v1/stop", "", Some(token.trim()));
    assert_eq!(code, 200, "{body}");
}

/// A parameter of 2 GB is refused with 413 on its header alone, before a byte of it is read; a
/// chunked one once it passes the limit; the controller answers on.
#[test]
fn a_two_gigabyte_parameter_is_refused_at_once() {
    let running = run(beamflow());
    let rest = running.rest;

    let mut stream = TcpStream::connect(rest).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /api/v1/parameter/huge HTTP/1.1\r\nHost: {rest}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 2000000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[b'x'; 65536]).unwrap();
    let answer = status_line(&mut stream);
    // Within the read timeout, with 64 KiB of the 2 GB sent: answered at once, not after
    // reading.
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");

    // Chunked, no length declared: refused once past the 64 MiB limit. Read while writing: the
    // server answers, then closes, while the client may still be sending.
    let stream = TcpStream::connect(rest).unwrap();
    let mut reader = stream.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let answered = std::thread::spawn(move || status_line(&mut reader));
    let mut writer = stream;
    let head = format!(
        "POST /api/v1/parameter/huge HTTP/1.1\r\nHost: {rest}\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = [b'y'; 1 << 20];
    let mut sent = 0_u64;
    let _ = writer.write_all(head.as_bytes());
    while sent < 80 << 20 && !answered.is_finished() {
        let written = writer
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| writer.write_all(&chunk))
            .and_then(|()| writer.write_all(b"\r\n"));
        if written.is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let answer = answered.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");

    let (code, _) = http_get(rest, "/api/v1/parameter/huge");
    assert_eq!(code, 404, "nothing was kept");
    let (code, body) = http_post(rest, "/api/v1/parameter/small", "1");
    assert_eq!(code, 200, "still answering: {body}");
}

/// The status line of the HTTP answer on `stream` (empty if the connection closed first).
fn status_line(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A `dump_prefix` that climbs out with `..` is a 422 naming the roots, and no file is written
/// while events flow.
#[test]
fn a_dump_prefix_with_dot_dot_is_refused_and_no_file_written() {
    let dir = scratch_dir();
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let running = run(beamflow());
    let rest = running.rest;
    let prefix = format!("{}/../escaped-", inner.display());
    let (code, body) = http_post(rest, "/api/v1/parameter/dump_prefix", &prefix);
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains(r#""roots":"#),
        "the answer names the roots: {body}"
    );
    let (code, body) = http_post(rest, "/api/v1/parameter/dump_prefix", "/etc/");
    assert_eq!(code, 422, "outside the roots: {body}");
    let seen = status(rest)["completed_events"].as_u64().unwrap_or(0);
    eventually(30, "events to flow", || {
        (status(rest)["completed_events"].as_u64().unwrap_or(0) > seen + 10).then_some(())
    });
    assert_eq!(files_in(dir.path()), ["inner"], "no file was written");
    assert_eq!(files_in(&inner), Vec::<String>::new());
    let det = &status(rest)["ingesters"]["det"];
    assert!(det["recording"].is_null(), "{det}");
}

fn files_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
