//! Dumps interoperate both ways with the real dranspose 0.2.0 (from PyPI, in `.venv`).

use std::fs::File;
use std::io::BufWriter;

use beamflow_protocol::dump::{DumpReader, DumpWriter};
use beamflow_protocol::streams::stins;
use beamflow_protocol::{DType, EventData, EventNumber, NdArray, StreamData, Timestamp};
use beamflow_reducer::http::View;
use beamflow_replay::ReplayConfig;
use bytes::Bytes;
use serde_json::Value as Json;

use crate::util::{run_python, unhex};

/// dranspose's `Dumper` writes; beamflow reads every record identically and replays it, and
/// `frame_stats` agrees with numpy on every image (half of them bslz4 from the real bitshuffle).
#[test]
fn dump_written_by_dranspose_replays_in_beamflow() {
    let dir = tempfile::tempdir().unwrap();
    run_python("dranspose_write.py", &[dir.path()]);
    let manifest: Json =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();

    let mut read = Vec::new();
    for file in ["det.cbors", "pcap.cbors"] {
        for record in DumpReader::open(&dir.path().join(file)).unwrap() {
            let event = record.unwrap();
            for (stream, data) in &event.streams {
                read.push((
                    event.event_number.0,
                    stream.to_string(),
                    data.typ.to_string(),
                    data.frames.clone(),
                    event.created_at,
                ));
            }
        }
    }
    let expected: Vec<_> = manifest["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let created_at: Timestamp = r["created_at"].as_str().unwrap().parse().unwrap();
            let frames: Vec<Bytes> = r["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| Bytes::from(unhex(f.as_str().unwrap())))
                .collect();
            (
                r["event_number"].as_u64().unwrap(),
                r["stream"].as_str().unwrap().to_owned(),
                r["typ"].as_str().unwrap().to_owned(),
                frames,
                Some(created_at),
            )
        })
        .collect();
    read.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert_eq!(read.len(), 52 + 11);
    assert_eq!(read, expected_sorted);

    let pipeline = beamflow::pipeline::Pipeline::parse(
        r#"
        [analyses.stats]
        kind = "frame_stats"
        [accumulators.history]
        kind = "history"
        values = { sum = "det/0/sum", mean = "det/0/mean", min = "det/0/min", max = "det/0/max", frame = "det/0/frame" }
        "#,
    )
    .unwrap();
    let view = View::new();
    let summary = beamflow_replay::run(
        &ReplayConfig {
            analyses: pipeline.analyses,
            accumulators: pipeline.accumulators,
            parameters: Vec::new(),
            dumps: vec![dir.path().join("det.cbors"), dir.path().join("pcap.cbors")],
            threads: 2,
            strict: true,
            progress: None,
        },
        &view,
    )
    .unwrap();
    assert_eq!(
        summary.events, 52,
        "events 0..=51, pcap merged into every 5th"
    );
    assert_eq!(summary.results, 50, "one result per image");

    let state = view.state();
    let history = state.pointer("history").unwrap();
    let numbers: Vec<u64> = match history.pointer("event_number").unwrap() {
        beamflow_protocol::Value::Array(items) => {
            items.iter().map(|v| v.as_f64().unwrap() as u64).collect()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(numbers, (1..=50).collect::<Vec<_>>());
    let stats = &manifest["stats"];
    for (row, event) in numbers.iter().enumerate() {
        let reference = &stats[event.to_string()];
        for column in ["sum", "mean", "min", "max", "frame"] {
            let ours = history
                .pointer(&format!("values/{column}/{row}"))
                .unwrap()
                .as_f64()
                .unwrap();
            let numpy = reference[column].as_f64().unwrap();
            assert!(
                (ours - numpy).abs() <= 1e-12 * numpy.abs(),
                "event {event} {column}: beamflow {ours}, numpy {numpy}"
            );
        }
    }
}

/// beamflow writes; dranspose's `get_internals` reads identical event numbers, stream names,
/// types, frame bytes and time stamps, and its STINS middleware parses beamflow's STINS frames.
#[test]
fn dump_written_by_beamflow_reads_in_dranspose() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("beamflow.cbors");
    let pixels: Vec<u8> = (0..12u16).flat_map(|v| (v * 300).to_le_bytes()).collect();
    let image = NdArray::new(vec![3, 4], DType::Uint16, Bytes::from(pixels)).unwrap();
    let t0: Timestamp = "2026-11-21T12:00:00.25Z".parse().unwrap();
    let stream = |typ: &str, frames: Vec<Bytes>| StreamData {
        typ: typ.into(),
        frames,
    };
    let mut events = Vec::new();
    for n in 0..6u64 {
        let mut event = EventData::new(EventNumber(n));
        let frames = match n {
            0 => stins::header_frames(0),
            5 => stins::end_frames(5),
            _ => stins::image_frames(n - 1, n, &image, n % 2 == 0),
        };
        event.streams.insert("det".into(), stream("STINS", frames));
        if n % 2 == 1 {
            // Binary frames with every byte value, and a stream with no frames.
            event.streams.insert(
                "raw".into(),
                stream(
                    "RAW",
                    vec![Bytes::from((0..=255u8).collect::<Vec<_>>()), Bytes::new()],
                ),
            );
            event.streams.insert("empty".into(), stream("JSON", vec![]));
        }
        // Older dumps have no created_at; both forms must read.
        event.created_at = (n != 3).then(|| t0 + jiff::SignedDuration::from_millis(n as i64 * 10));
        events.push(event);
    }
    let mut writer = DumpWriter::new(BufWriter::new(File::create(&path).unwrap()));
    for event in &events {
        writer.write_event(event).unwrap();
    }
    writer.into_inner().unwrap();

    let seen: Json = serde_json::from_slice(&run_python("dranspose_read.py", &[&path])).unwrap();
    let seen = seen.as_array().unwrap();
    assert_eq!(seen.len(), events.len());
    for (event, record) in events.iter().zip(seen) {
        assert_eq!(record["event_number"].as_u64(), Some(event.event_number.0));
        match event.created_at {
            Some(t) => {
                let theirs: Timestamp = record["created_at"].as_str().unwrap().parse().unwrap();
                assert_eq!(theirs, t, "event {}", event.event_number);
            }
            // dranspose fills in "now" for a record without created_at.
            None => assert!(record["created_at"].is_string()),
        }
        let streams = record["streams"].as_object().unwrap();
        let names: Vec<&str> = streams.keys().map(String::as_str).collect();
        let ours: Vec<&str> = event.streams.keys().map(|s| s.as_str()).collect();
        let mut names_sorted = names.clone();
        names_sorted.sort_unstable();
        assert_eq!(names_sorted, ours);
        for (name, data) in &event.streams {
            let theirs = &streams[name.as_str()];
            assert_eq!(theirs["typ"].as_str(), Some(data.typ.as_str()));
            let frames: Vec<Vec<u8>> = theirs["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| unhex(f.as_str().unwrap()))
                .collect();
            let expected: Vec<Vec<u8>> = data.frames.iter().map(|f| f.to_vec()).collect();
            assert_eq!(
                frames, expected,
                "event {} stream {name}",
                event.event_number
            );
        }
        let parsed = streams["det"]["parsed"].as_str().unwrap();
        let expected_kind = match event.event_number.0 {
            0 => "Stream1Start",
            5 => "Stream1End",
            _ => "Stream1Data",
        };
        assert_eq!(parsed, expected_kind);
        if expected_kind == "Stream1Data" {
            assert_eq!(streams["det"]["shape"], serde_json::json!([3, 4]));
            assert_eq!(
                streams["det"]["frame"].as_u64(),
                Some(event.event_number.0 - 1)
            );
        }
    }
}
