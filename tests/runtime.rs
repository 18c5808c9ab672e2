//! End-to-end scans through the distributed runtime: real ZeroMQ sockets on loopback (ports bound
//! to 0), a STINS source pushing frames, the controller's REST API, the reducer's HTTP view.
//! In one process here (components on threads, as `beamflow run`), and as separate `beamflow`
//! processes in `processes_*` below.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use beamflow::components::Components;
use beamflow::pipeline::Pipeline;
use beamflow_protocol::streams::stins;
use beamflow_protocol::{DType, NdArray, WorkerTag};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::util::{Running, eventually, http_address, http_get, http_post, numbers, root};

/// A STINS detector: header (msg 0), `frames` images (frame i, msg i + 1, every pixel = i), and
/// series_end; `lost` msg_numbers are not sent; `pace` between images.
fn stins_source(frames: u64, lost: &[u64], pace: Duration) -> (String, JoinHandle<()>) {
    let (endpoint, _next, thread) = stins_series(vec![frames], lost, pace);
    (endpoint, thread)
}

/// A STINS detector sending one series per entry of `series` (its image count), the first at
/// once and each next one when told to over the returned channel.
fn stins_series(
    series: Vec<u64>,
    lost: &[u64],
    pace: Duration,
) -> (String, std::sync::mpsc::Sender<()>, JoinHandle<()>) {
    let context = zmq::Context::new();
    let push = context.socket(zmq::PUSH).unwrap();
    push.set_linger(10_000).unwrap();
    push.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = push.get_last_endpoint().unwrap().unwrap();
    let lost = lost.to_vec();
    let (next, go) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let send = |parts: Vec<Bytes>| {
            let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
            push.send_multipart(parts, 0).unwrap();
        };
        for (n, frames) in series.into_iter().enumerate() {
            if n > 0 && go.recv().is_err() {
                break;
            }
            send(stins::header_frames(0));
            for i in 0..frames {
                let msg = i + 1;
                if lost.contains(&msg) {
                    continue;
                }
                let pixels: Vec<u8> = std::iter::repeat_n((i as u16).to_le_bytes(), 4)
                    .flatten()
                    .collect();
                let image = NdArray::new(vec![2, 2], DType::Uint16, Bytes::from(pixels)).unwrap();
                send(stins::image_frames(i, msg, &image, false));
                // Pacing the simulated detector, so that a scan is still running when a test
                // acts on it; not a synchronisation.
                std::thread::sleep(pace);
            }
            send(stins::end_frames(frames + 1));
        }
        drop(push);
        drop(context);
    });
    (endpoint, next, thread)
}

fn pipeline(ingesters: &[(&str, &str)], workers: usize) -> String {
    let mut text = String::new();
    // One history column per stream: a column for a stream no ingester offers is refused.
    let mut columns = Vec::new();
    for (name, endpoint) in ingesters {
        text.push_str(&format!(
            "[ingesters.{name}]\nkind = \"zmq_stins\"\nupstream = \"{endpoint}\"\n\n"
        ));
        columns.push(format!("{name} = \"{name}/0/mean\""));
    }
    let columns = columns.join(", ");
    text.push_str(&format!(
        r#"
[analyses.stats]
kind = "frame_stats"

[accumulators.history]
kind = "history"
analysis = "stats"
values = {{ {columns} }}
worker_column = true

[controller]
control = "tcp://127.0.0.1:0"
http = "127.0.0.1:0"

[workers]
count = {workers}
event_timeout_ms = 500

[reducer]
http = "127.0.0.1:0"
"#
    ));
    text
}

/// Every component in this process.
struct Beamline {
    components: Option<Components>,
    pipeline: Pipeline,
    control: String,
    rest: SocketAddr,
    state: SocketAddr,
}

impl Beamline {
    fn start(text: &str) -> Self {
        let pipeline = Pipeline::parse(text).unwrap();
        let mut components = Components::new()
            .unwrap()
            .with_access(crate::util::access());
        let (control, rest, state) = components.start_all(&pipeline).unwrap();
        components.wait_until_connected(&pipeline).unwrap();
        Self {
            components: Some(components),
            pipeline,
            control,
            rest,
            state,
        }
    }

    fn components(&mut self) -> &mut Components {
        self.components.as_mut().unwrap()
    }

    fn add_worker(&mut self, name: &str, tags: &[&str]) {
        let tags: Vec<WorkerTag> = tags.iter().map(|t| WorkerTag::from(*t)).collect();
        let (pipeline, control) = (self.pipeline.clone(), self.control.clone());
        self.components()
            .start_worker(&pipeline, name, &tags, &control)
            .unwrap();
        let rest = self.rest;
        eventually(10, "the new worker to connect", || {
            let config: Value = serde_json::from_str(&http_get(rest, "/api/v1/config").1).ok()?;
            config["workers"]
                .as_array()?
                .iter()
                .any(|w| w["name"] == name)
                .then_some(())
        });
    }

    fn post_sequence(&self, sequence: &Value) -> String {
        let (status, body) = http_post(self.rest, "/api/v1/sequence", &sequence.to_string());
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn progress(&self) -> Value {
        serde_json::from_str(&http_get(self.rest, "/api/v1/progress").1).unwrap()
    }

    /// Waits for the controller to finish the current scan and the reducer to publish its final
    /// state; returns `(state, reducer status, controller status)`.
    fn finished(&self) -> (Value, Value, Value) {
        let scan = eventually(60, "the scan to finish", || {
            let status: Value =
                serde_json::from_str(&http_get(self.rest, "/api/v1/status").1).ok()?;
            (status["finished"] == true).then(|| status["scan"].as_u64())?
        });
        let status = eventually(10, "the reducer's final state", || {
            let status: Value =
                serde_json::from_str(&http_get(self.state, "/api/v1/status").1).ok()?;
            (status["finished"] == true && status["scan"] == scan).then_some(status)
        });
        let state = serde_json::from_str(&http_get(self.state, "/api/v1/result").1).unwrap();
        let controller = serde_json::from_str(&http_get(self.rest, "/api/v1/status").1).unwrap();
        (state, status, controller)
    }
}

impl Drop for Beamline {
    fn drop(&mut self) {
        if let Some(components) = self.components.take() {
            components.shutdown();
        }
    }
}

fn slots(n: u64, slot: impl Fn(u64) -> Value) -> Value {
    Value::Array((0..n).map(slot).collect())
}

fn sequence(part: Value) -> Value {
    json!({"parts": {"main": part}, "sequence": ["main"]})
}

fn column(state: &Value, name: &str) -> Vec<Value> {
    state["history"]["values"][name].as_array().unwrap().clone()
}

#[test]
fn every_event_is_reduced_once_in_event_order() {
    let (endpoint, source) = stins_source(200, &[], Duration::ZERO);
    let beamline = Beamline::start(&pipeline(&[("det", &endpoint)], 2));
    beamline.post_sequence(&sequence(json!({
        "det": slots(200, |i| json!([{"constraint": i}]))
    })));
    let (state, status, controller) = beamline.finished();
    source.join().unwrap();
    // Event 0 is the series header and 201 its end (all_wrap); images are events 1..=200.
    assert_eq!(
        numbers(&state, "/history/event_number"),
        (1..=200).collect::<Vec<_>>()
    );
    let means: Vec<f64> = column(&state, "det")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(means, (0..200).map(|i| i as f64).collect::<Vec<_>>());
    assert_eq!(
        (&status["incomplete_events"], &status["duplicates"]),
        (&json!(0), &json!(0))
    );
    let workers: Vec<&str> = state["history"]["worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        workers.contains(&"w1") && workers.contains(&"w2"),
        "both workers took events"
    );
    assert_eq!(controller["completed_events"], 202);
}

#[test]
fn two_streams_at_different_rates_and_pairs_on_one_worker() {
    // det has a frame in every event, pcap in every other one; events 2k and 2k+1 share a worker.
    let (det, det_source) = stins_source(100, &[], Duration::ZERO);
    let (pcap, pcap_source) = stins_source(50, &[], Duration::ZERO);
    let beamline = Beamline::start(&pipeline(&[("det", &det), ("pcap", &pcap)], 2));
    beamline.post_sequence(&sequence(json!({
        "det": slots(100, |i| json!([{"constraint": i / 2}])),
        "pcap": slots(100, |i| if i % 2 == 0 { json!([{"constraint": i / 2}]) } else { json!(null) }),
    })));
    let (state, status, _) = beamline.finished();
    det_source.join().unwrap();
    pcap_source.join().unwrap();
    assert_eq!(status["incomplete_events"], 0);
    let events = numbers(&state, "/history/event_number");
    assert_eq!(events, (1..=100).collect::<Vec<_>>());
    let det = column(&state, "det");
    let pcap = column(&state, "pcap");
    let workers = state["history"]["worker"].as_array().unwrap();
    for (row, event) in events.iter().enumerate() {
        let k = event - 1; // the event's index in the part
        assert_eq!(det[row], json!(k as f64), "event {event}: det frame");
        if k % 2 == 0 {
            assert_eq!(
                pcap[row],
                json!((k / 2) as f64),
                "event {event}: pcap frame"
            );
        } else {
            assert_eq!(pcap[row], Value::Null, "event {event}: pcap has no frame");
            assert_eq!(
                workers[row],
                workers[row - 1],
                "events {} and {event} share constraint {}",
                event - 1,
                k / 2
            );
        }
    }
}

#[test]
fn broadcast_discard_and_a_debug_worker() {
    let (endpoint, source) = stins_source(60, &[], Duration::ZERO);
    let mut beamline = Beamline::start(&pipeline(&[("det", &endpoint)], 2));
    beamline.add_worker("debugger", &["debug"]);
    // Every 10th event goes to every generic worker, every 7th is read and dropped, and the
    // debug worker sees a copy of every event.
    beamline.post_sequence(&sequence(json!({
        "det": slots(60, |i| match i {
            i if i % 10 == 0 => json!([{"constraint": null}, {"tags": ["debug"], "constraint": null}]),
            i if i % 7 == 3 => json!([]),
            i => json!([{"constraint": i}, {"tags": ["debug"], "constraint": null}]),
        })
    })));
    let (state, status, controller) = beamline.finished();
    source.join().unwrap();
    let dropped: Vec<u64> = (0..60).filter(|i| i % 10 != 0 && i % 7 == 3).collect();
    let expected: Vec<u64> = (0..60)
        .filter(|i| !dropped.contains(i))
        .map(|i| i + 1)
        .collect();
    assert_eq!(numbers(&state, "/history/event_number"), expected);
    // A broadcast event's second worker's result (and the debug copy) are duplicates.
    assert!(status["duplicates"].as_u64().unwrap() >= 6 + expected.len() as u64 - 6);
    drop(controller);
    // The debug worker reports its counters with its next heartbeat.
    let rest = beamline.rest;
    eventually(
        5,
        "the debug worker to count every kept event plus the start and end",
        || {
            let status: Value = serde_json::from_str(&http_get(rest, "/api/v1/status").1).ok()?;
            let processed = status["workers"]["debugger"]["counts"]["processed"].as_u64()?;
            (processed == expected.len() as u64 + 2).then_some(())
        },
    );
}

#[test]
fn a_lost_frame_is_a_gap_and_later_events_stay_intact() {
    // msg_number 6 (image frame 5, event 6) never arrives.
    let (endpoint, source) = stins_source(30, &[6], Duration::ZERO);
    let beamline = Beamline::start(&pipeline(&[("det", &endpoint)], 2));
    beamline.post_sequence(&sequence(json!({
        "det": slots(30, |i| json!([{"constraint": i}]))
    })));
    let (state, status, controller) = beamline.finished();
    source.join().unwrap();
    let events = numbers(&state, "/history/event_number");
    assert_eq!(
        events,
        (1..=30).filter(|&e| e != 6).collect::<Vec<_>>(),
        "event 6 has no image, nothing shifted into it"
    );
    for (row, event) in events.iter().enumerate() {
        assert_eq!(
            column(&state, "det")[row],
            json!((event - 1) as f64),
            "event {event} holds its own frame"
        );
    }
    assert_eq!(status["incomplete_events"], 1);
    let ingester = &controller["ingesters"]["det"]["counts"];
    assert_eq!(
        (&ingester["gaps"], &ingester["gap_frames"]),
        (&json!(1), &json!(1))
    );
}

#[test]
fn a_malformed_or_impossible_mapping_is_refused_with_the_reason() {
    let (endpoint, _source) = stins_source(0, &[], Duration::ZERO);
    let beamline = Beamline::start(&pipeline(&[("det", &endpoint)], 2));
    let post = |body: &str| http_post(beamline.rest, "/api/v1/sequence", body);
    let (status, body) = post("{\"parts\": ");
    assert_eq!(status, 400);
    assert!(body.contains("mapping is not valid"), "{body}");
    let (status, body) = post(&sequence(json!({"eiger": [[{"constraint": 0}]]})).to_string());
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"detail":"streams [\"eiger\"] not available"}"#)
    );
    let three = json!({"det": [[{"constraint": 0}, {"constraint": 1}, {"constraint": 2}]]});
    let (status, body) = post(&sequence(three).to_string());
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            r#"{"detail":"only 2 workers available, but 3 required"}"#
        )
    );
    let (status, body) =
        post(&sequence(json!({"det": [[{"tags": ["gpu"], "constraint": 0}]]})).to_string());
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"detail":"no live worker carries the tag gpu"}"#)
    );
    assert_eq!(beamline.progress()["total_events"], 0, "no scan started");
}

#[test]
fn a_second_scan_starts_fresh() {
    let (endpoint, next_series, source) = stins_series(vec![20, 10], &[], Duration::ZERO);
    let beamline = Beamline::start(&pipeline(&[("det", &endpoint)], 2));
    beamline.post_sequence(&sequence(
        json!({"det": slots(20, |i| json!([{"constraint": i}]))}),
    ));
    let (first, _, _) = beamline.finished();
    assert_eq!(numbers(&first, "/history/event_number").len(), 20);
    // The detector's next series, through the same components: a new scan.
    beamline.post_sequence(&sequence(
        json!({"det": slots(10, |i| json!([{"constraint": i}]))}),
    ));
    next_series.send(()).unwrap();
    let (second, status, _) = beamline.finished();
    source.join().unwrap();
    assert_eq!(status["scan"], 2);
    assert_eq!(
        numbers(&second, "/history/event_number"),
        (1..=10).collect::<Vec<_>>()
    );
}

#[test]
fn a_killed_worker_loses_no_event_and_doubles_none() {
    let (endpoint, source) = stins_source(300, &[], Duration::from_millis(5));
    let mut beamline = Beamline::start(&pipeline(&[("det", &endpoint)], 3));
    beamline.post_sequence(&sequence(
        json!({"det": slots(300, |i| json!([{"constraint": i}]))}),
    ));
    eventually(30, "the scan to be under way", || {
        (beamline.progress()["completed_events"].as_u64()? > 30).then_some(())
    });
    assert!(beamline.components().kill("worker w2"));
    let (state, status, controller) = beamline.finished();
    source.join().unwrap();
    assert_eq!(
        numbers(&state, "/history/event_number"),
        (1..=300).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(status["incomplete_events"], 0);
    assert_eq!(controller["counts"]["dead_workers"], 1);
    assert!(controller["counts"]["reassigned_events"].as_u64().unwrap() > 0);
}

#[test]
fn processes_a_killed_worker_process_loses_no_event() {
    let (endpoint, source) = stins_source(300, &[], Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, pipeline(&[("det", &endpoint)], 2)).unwrap();
    let file = file.to_str().unwrap();
    let mut controller = Running::spawn(&["controller", "--pipeline", file]);
    let line = controller.wait_for_line("beamflow controller:");
    let control = line.split_whitespace().nth(3).unwrap().to_owned();
    let rest = http_address(&line);
    let connect = ["--pipeline", file, "--controller", &control];
    let mut reducer = Running::spawn(&[&["reducer"][..], &connect].concat());
    let line = reducer.wait_for_line("state on http://");
    let state = http_address(&line);
    let mut workers: Vec<Running> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| Running::spawn(&[&["worker", "--name", name][..], &connect].concat()))
        .collect();
    let _ingester = Running::spawn(&[&["ingester", "--name", "det"][..], &connect].concat());
    eventually(30, "every process to connect", || {
        let config: Value = serde_json::from_str(&http_get(rest, "/api/v1/config").1).ok()?;
        (config["workers"].as_array()?.len() == 3
            && config["ingesters"].as_array()?.len() == 1
            && !config["reducer"].is_null())
        .then_some(())
    });
    let (status, body) = http_post(
        rest,
        "/api/v1/sequence",
        &sequence(json!({"det": slots(300, |i| json!([{"constraint": i}]))})).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    eventually(30, "the scan to be under way", || {
        let progress: Value = serde_json::from_str(&http_get(rest, "/api/v1/progress").1).ok()?;
        (progress["completed_events"].as_u64()? > 30).then_some(())
    });
    workers[1].child.kill().unwrap();
    eventually(60, "the scan to finish", || {
        let progress: Value = serde_json::from_str(&http_get(rest, "/api/v1/progress").1).ok()?;
        (progress["finished"] == true).then_some(())
    });
    let reduced = eventually(10, "the reducer's final state", || {
        let status: Value = serde_json::from_str(&http_get(state, "/api/v1/status").1).ok()?;
        (status["finished"] == true).then_some(status)
    });
    source.join().unwrap();
    let result: Value = serde_json::from_str(&http_get(state, "/api/v1/result").1).unwrap();
    assert_eq!(
        numbers(&result, "/history/event_number"),
        (1..=300).collect::<Vec<_>>(),
        "every event once, in order, after a worker process was killed"
    );
    assert_eq!(reduced["incomplete_events"], 0);
    let status: Value = serde_json::from_str(&http_get(rest, "/api/v1/status").1).unwrap();
    assert_eq!(status["counts"]["dead_workers"], 1);
}

#[test]
fn a_recorded_live_scan_replays_to_the_same_state() {
    let (endpoint, source) = stins_source(50, &[], Duration::ZERO);
    let text = pipeline(&[("det", &endpoint)], 2).replace("worker_column = true\n", "");
    let beamline = Beamline::start(&text);
    let dir = crate::util::scratch_dir();
    let prefix = format!("{}/rec-", dir.path().display());
    let (status, _) = http_post(beamline.rest, "/api/v1/parameter/dump_prefix", &prefix);
    assert_eq!(status, 200);
    let uuid = beamline.post_sequence(&sequence(json!({
        "det": slots(50, |i| json!([{"constraint": i}]))
    })));
    let (live, _, _) = beamline.finished();
    source.join().unwrap();
    let rest = beamline.rest;
    let dump = dir.path().join(format!("rec-det-{uuid}.cbors"));
    eventually(5, "the ingester to close its dump", || {
        let status: Value = serde_json::from_str(&http_get(rest, "/api/v1/status").1).ok()?;
        (status["ingesters"]["det"]["last_recording"] == dump.display().to_string()).then_some(())
    });
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, &text).unwrap();
    let replayed = crate::util::replayed_state(&file, &dump);
    assert_eq!(numbers(&live, "/history/event_number").len(), 50);
    assert_eq!(
        replayed, live,
        "replay of the recording equals the live state"
    );
}

/// The simulated STINS detector example as README shows it (with ports bound to 0): it scans
/// by itself and says where to look.
#[test]
fn processes_the_simulated_detector_example_by_itself() {
    let file = root().join("examples/sim.toml");
    let mut command = crate::util::beamflow();
    command.args([
        "run",
        "--pipeline",
        file.to_str().unwrap(),
        "--events",
        "40",
    ]);
    let pipeline = crate::util::start_run(command);
    let state = pipeline.state;
    let status = crate::util::finished_status(&pipeline);
    assert_eq!(
        status["events"], 42,
        "40 images, the start and the end: {status}"
    );
    assert_eq!(status["incomplete_events"], 0, "{status}");
    let result: Value = serde_json::from_str(&http_get(state, "/api/v1/result").1).unwrap();
    assert_eq!(
        numbers(&result, "/history/event_number"),
        (1..=40).collect::<Vec<_>>(),
        "every simulated image once, in order"
    );
}
