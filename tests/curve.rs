//! Issue 17's authenticated sockets: with the pipeline's CURVE keys (`beamflow keys`, then
//! `--keys` for every process), a process without them cannot join, report, or send event parts.
//! The forgeries are those of the reliability probe: a `Hello` that claims the reducer's role and
//! a `Reduced` that says the scan is done, sent to the controller; event parts sent to every
//! worker; reports sent to the reducer.

use std::path::Path;

use beamflow_protocol::control::{ComponentStatus, Hello, Role, ToController};
use beamflow_protocol::{EventData, EventNumber, EventReport};
use serde_json::Value;

use crate::faults::{Cluster, assert_every_event_once, poll, scan_of, sim};
use crate::util::beamflow_output;

/// A forger's socket: linger 0, so the test's context ends although nothing is ever delivered.
fn forger(context: &zmq::Context, kind: zmq::SocketType, endpoint: &str) -> zmq::Socket {
    let socket = context.socket(kind).unwrap();
    socket.set_linger(0).unwrap();
    socket.set_sndtimeo(0).unwrap();
    socket.connect(endpoint).unwrap();
    socket
}

fn make_keys(folder: &Path) -> String {
    let output = beamflow_output(&["keys", "--out", folder.to_str().unwrap()]);
    assert!(output.status.success(), "beamflow keys: {output:?}");
    let public = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(public.len(), 40, "the public key, in Z85: {public:?}");
    assert_eq!(
        std::fs::read_to_string(folder.join("beamflow.pub"))
            .unwrap()
            .trim(),
        public
    );
    public
}

fn refused(status: &Value) -> u64 {
    status["refused_peers"].as_u64().unwrap_or(0)
}

#[test]
fn forged_hello_reduced_parts_and_reports_from_peers_without_the_keys_are_dropped_and_counted() {
    forgeries_change_nothing("encrypted");
}

#[test]
fn with_an_authenticated_data_plane_forgeries_are_dropped_and_counted_too() {
    forgeries_change_nothing("authenticated");
}

/// Runs the probe's forgeries against a cluster with keys and the data plane `data_plane`.
fn forgeries_change_nothing(data_plane: &str) {
    let folder = tempfile::tempdir().unwrap();
    let keys = folder.path().join("keys");
    make_keys(&keys);
    let args = ["--keys", keys.to_str().unwrap(), "--data-plane", data_plane];
    let cluster = Cluster::start_with(
        &[("det", sim(200))],
        args.iter().map(|&a| a.to_owned()).collect(),
    );
    let config = cluster.controller_get("/api/v1/config").unwrap();
    let reducer_url = config["reducer"]["url"].as_str().unwrap().to_owned();
    let worker_urls: Vec<String> = config["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["url"].as_str().unwrap().to_owned())
        .collect();

    let context = zmq::Context::new();
    // Plain ZeroMQ, as the probe's forger was.
    let control = forger(&context, zmq::DEALER, &cluster.control);
    let hello = ToController::Hello(Hello {
        role: Role::Reducer,
        name: "reducer".into(),
        instance: 1,
        tags: vec![],
        streams: vec![],
        endpoint: Some("tcp://127.0.0.1:1".into()),
        status: ComponentStatus::empty(Role::Reducer),
    });
    let _ = control.send(beamflow_protocol::control::encode(&hello), 0);
    let reduced = ToController::Reduced {
        scan: 1,
        up_to: EventNumber(300),
    };
    let _ = control.send(beamflow_protocol::control::encode(&reduced), 0);
    // CURVE with the public key, which is no secret, but keys of its own.
    let stranger = context.socket(zmq::DEALER).unwrap();
    stranger.set_linger(0).unwrap();
    let own = zmq::CurveKeyPair::new().unwrap();
    let public = std::fs::read_to_string(folder.path().join("keys/beamflow.pub")).unwrap();
    stranger
        .set_curve_serverkey(&zmq::z85_decode(public.trim()).unwrap())
        .unwrap();
    stranger.set_curve_publickey(&own.public_key).unwrap();
    stranger.set_curve_secretkey(&own.secret_key).unwrap();
    stranger.connect(&cluster.control).unwrap();
    let _ = stranger.send(beamflow_protocol::control::encode(&hello), 0);
    let parts: Vec<EventData> = (0..20)
        .map(|n| EventData::new(EventNumber(100 + n)))
        .collect();
    let mut part_forgers: Vec<zmq::Socket> = worker_urls
        .iter()
        .map(|url| forger(&context, zmq::PUSH, url))
        .collect();
    for socket in &mut part_forgers {
        let _ = beamflow_net::send_parts(socket, 1, &parts, false);
    }
    let reports: Vec<EventReport> = (0..20)
        .map(|n| EventReport {
            event_number: EventNumber(100 + n),
            worker: "w1".into(),
            results: vec![],
            missing: vec![],
        })
        .collect();
    let report_forger = forger(&context, zmq::PUSH, &reducer_url);
    let _ = beamflow_net::send_reports(&report_forger, 1, &reports);

    poll(30, "every forger refused and counted", || {
        let status = cluster.status().ok_or("no answer")?;
        let workers = status["workers"].as_object().cloned().unwrap_or_default();
        let counted = refused(&status) >= 2
            && workers.len() == 3
            && workers.values().all(|w| refused(w) >= 1)
            && refused(&status["reducer"]) >= 1;
        counted.then_some(()).ok_or_else(|| status.to_string())
    });

    // Nothing forged arrived: the reducer is where it was, and the scan is every event once.
    let config = cluster.controller_get("/api/v1/config").unwrap();
    assert_eq!(config["reducer"]["url"], reducer_url.as_str());
    let status = cluster.status().unwrap();
    assert_eq!(status["curve"], true);
    let scan = cluster.post(&scan_of(50, &["det"]));
    cluster.finished(scan, 52);
    assert_every_event_once(&cluster.history(), 50);
    let status = cluster.status().unwrap();
    let reducer = &status["reducer"];
    assert_eq!(reducer["malformed_reports"], 0, "{reducer}");
    assert_eq!(reducer["stale_reports"], 0, "{reducer}");
    for (name, worker) in status["workers"].as_object().unwrap() {
        assert_eq!(worker["malformed_parts"], 0, "{name}: {worker}");
        assert_eq!(worker["stale_parts"], 0, "{name}: {worker}");
    }
}

#[test]
fn keys_are_never_overwritten_and_a_process_with_a_broken_key_folder_does_not_start() {
    let folder = tempfile::tempdir().unwrap();
    let keys = folder.path().join("keys");
    let public = make_keys(&keys);
    let again = beamflow_output(&["keys", "--out", keys.to_str().unwrap()]);
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(keys.join("beamflow.pub"))
            .unwrap()
            .trim(),
        public
    );

    std::fs::write(keys.join("beamflow.key"), "not a key\n").unwrap();
    let elsewhere = folder.path().join("elsewhere");
    let output = crate::util::beamflow_output_allowing(
        &[
            "--keys",
            keys.to_str().unwrap(),
            "keys",
            "--out",
            elsewhere.to_str().unwrap(),
        ],
        &["not a CURVE key"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("not a CURVE key"), "{stderr}");
    assert!(!elsewhere.exists(), "nothing runs with broken keys");
}
