//! `beamflow replay` as a user runs it: output, determinism across thread counts, bad input,
//! and the HTTP view.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use beamflow_protocol::dump::DumpWriter;
use beamflow_protocol::streams::stins;
use beamflow_protocol::{DType, EventData, EventNumber, NdArray, StreamData};
use bytes::Bytes;
use serde_json::Value as Json;

use crate::util::{Running, beamflow_output, beamflow_output_allowing, data, http_get, root};

/// What a replay logs at ERROR for the first bad record it skips.
const BAD_RECORD: &str = "Skipped a bad record";

/// What a replay logs at ERROR for the first analysis that fails.
const ANALYSIS_FAILED: &str = "Analysis failed";

fn example_pipeline() -> String {
    root().join("examples/pipeline.toml").display().to_string()
}

/// Writes `count` STINS events with images that differ per event (some bslz4).
fn write_stins_dump(path: &Path, count: u64) {
    write_stins_events(path, 0..count);
}

fn write_stins_events(path: &Path, numbers: std::ops::Range<u64>) {
    let mut writer = DumpWriter::new(BufWriter::new(File::create(path).unwrap()));
    for n in numbers {
        let pixels: Vec<u8> = (0..64u16)
            .flat_map(|i| ((i * 7 + n as u16 * 13) % 4096).to_le_bytes())
            .collect();
        let image = NdArray::new(vec![8, 8], DType::Uint16, Bytes::from(pixels)).unwrap();
        let mut event = stins::image_event(EventNumber(n), "det", &image, n % 3 == 0);
        event.created_at =
            Some(beamflow_protocol::Timestamp::from_second(1_800_000_000 + n as i64).unwrap());
        writer.write_event(&event).unwrap();
    }
    writer.into_inner().unwrap();
}

fn replay_to_json(dumps: &[&Path], threads: usize, out: &Path) -> String {
    let mut args = vec![
        "replay".to_owned(),
        "--pipeline".to_owned(),
        example_pipeline(),
    ];
    for dump in dumps {
        args.extend(["--dump".to_owned(), dump.display().to_string()]);
    }
    args.extend([
        "--threads".to_owned(),
        threads.to_string(),
        "--out".to_owned(),
        out.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = beamflow_output(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn final_state_is_identical_for_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("many.cbors");
    // Several batches, so events really are spread over threads and batches.
    write_stins_dump(&dump, 5000);
    let one = replay_to_json(&[&dump], 1, &dir.path().join("1.json"));
    let two = replay_to_json(&[&dump], 2, &dir.path().join("2.json"));
    let three = replay_to_json(&[&dump], 3, &dir.path().join("3.json"));
    assert_eq!(one, two);
    assert_eq!(one, three);
    let state: Json = serde_json::from_str(&one).unwrap();
    let numbers = state["history"]["event_number"].as_array().unwrap();
    assert_eq!(numbers.len(), 5000);
    assert!(
        numbers.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()),
        "history is in event order"
    );
    assert_eq!(state["last"]["event_number"]["det"], 4999);
}

#[test]
fn replays_the_shipped_capture_with_numpy_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let out = replay_to_json(
        &[&data("det.cbors"), &data("pcap.cbors")],
        2,
        &dir.path().join("s.json"),
    );
    let state: Json = serde_json::from_str(&out).unwrap();
    let numpy: Json =
        serde_json::from_str(&std::fs::read_to_string(data("stats.json")).unwrap()).unwrap();
    let history = &state["history"];
    for (row, event) in history["event_number"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let reference = &numpy[event.to_string()];
        assert_eq!(history["values"]["det_max"][row], reference["max"]);
        let mean = history["values"]["det_mean"][row].as_f64().unwrap();
        assert!((mean - reference["mean"].as_f64().unwrap()).abs() < 1e-12);
    }
    assert_eq!(state["last"]["values"]["det"][0]["frame"], 49);
}

/// A dump with a record of the wrong tag in the middle and a truncated last record.
fn damaged_dump(dir: &Path) -> PathBuf {
    let (head, tail) = (dir.join("head.cbors"), dir.join("tail.cbors"));
    write_stins_events(&head, 0..5);
    write_stins_events(&tail, 5..10);
    let path = dir.join("damaged.cbors");
    let mut file = File::create(&path).unwrap();
    file.write_all(&std::fs::read(&head).unwrap()).unwrap();
    // tag 55799 ( tag 42879 ( [] ) ): valid CBOR, not an event.
    file.write_all(&[0xd9, 0xd9, 0xf7, 0xd9, 0xa7, 0x7f, 0x80])
        .unwrap();
    let tail = std::fs::read(&tail).unwrap();
    file.write_all(&tail[..tail.len() - 3]).unwrap();
    path
}

#[test]
fn bad_records_are_counted_and_skipped_or_fatal_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let path = damaged_dump(dir.path());
    let dump = path.display().to_string();
    let pipeline = example_pipeline();
    let output = beamflow_output_allowing(
        &["replay", "--pipeline", &pipeline, "--dump", &dump],
        &[BAD_RECORD],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("replayed 9 events"), "{stderr}");
    assert!(stderr.contains("2 bad records skipped"), "{stderr}");

    let output = beamflow_output(&[
        "replay",
        "--pipeline",
        &pipeline,
        "--dump",
        &dump,
        "--strict",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("beamflow: bad record (without --strict it would be skipped): ")
            && last.contains("damaged.cbors: record 5 at byte")
            && last.ends_with("expected tag 42877 (event), found tag 42879"),
        "{stderr}"
    );
}

#[test]
fn a_frame_that_is_not_stins_is_an_analysis_error_with_its_event_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_stins.cbors");
    let mut writer = DumpWriter::new(BufWriter::new(File::create(&path).unwrap()));
    for n in 0..3u64 {
        let mut event = EventData::new(EventNumber(n));
        let frames = if n == 1 {
            vec![
                Bytes::from_static(br#"{"htype":"image","frame":0,"shape":[2,2],"type":"uint16"}"#),
                Bytes::from_static(b"short"),
            ]
        } else {
            stins::header_frames(n)
        };
        event.streams.insert(
            "det".into(),
            StreamData {
                typ: "STINS".into(),
                frames,
            },
        );
        writer.write_event(&event).unwrap();
    }
    writer.into_inner().unwrap();
    let dump = path.display().to_string();
    let pipeline = example_pipeline();

    let output = beamflow_output_allowing(
        &["replay", "--pipeline", &pipeline, "--dump", &dump],
        &[ANALYSIS_FAILED],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("replayed 3 events") && stderr.contains("1 analysis errors"),
        "{stderr}"
    );

    let output = beamflow_output(&[
        "replay",
        "--pipeline",
        &pipeline,
        "--dump",
        &dump,
        "--strict",
    ]);
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "beamflow: event 1: analysis stats: stream det: STINS image 0: shape [2, 2] of uint16 needs 8 bytes, found 5"
    );
}

#[test]
fn user_errors_are_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("bad.toml");
    std::fs::write(&pipeline, "[analyses.s]\nkind = \"frame_statz\"\n").unwrap();
    let det = data("det.cbors").display().to_string();
    let output = beamflow_output(&[
        "replay",
        "--pipeline",
        &pipeline.display().to_string(),
        "--dump",
        &det,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // One line, naming the file, the place and the kinds there are.
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.trim().starts_with(&format!(
            "beamflow: {}: line 2, column 8: unknown variant `frame_statz`, expected one of `frame_stats`",
            pipeline.display()
        )),
        "{stderr}"
    );

    let pickle = dir.path().join("params.pkl");
    std::fs::write(&pickle, [0x80, 0x04, 0x95]).unwrap();
    let output = beamflow_output(&[
        "replay",
        "--pipeline",
        &example_pipeline(),
        "--dump",
        &det,
        "--params",
        &pickle.display().to_string(),
    ]);
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        format!(
            "beamflow: {}: parameter file: this is a pickle; beamflow does not read pickle, write the list as JSON [{{\"name\": ..., \"data\": ...}}] instead",
            pickle.display()
        )
    );

    let output = beamflow_output(&[
        "replay",
        "--pipeline",
        &example_pipeline(),
        "--dump",
        "/nonexistent.cbors",
    ]);
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "beamflow: /nonexistent.cbors: cannot open: No such file or directory (os error 2)"
    );
}

#[test]
fn serve_keeps_the_http_view_up_after_the_replay() {
    let det = data("det.cbors").display().to_string();
    let pipeline = example_pipeline();
    let mut running = Running::spawn(&[
        "replay",
        "--pipeline",
        &pipeline,
        "--dump",
        &det,
        "--serve",
        "127.0.0.1:0",
    ]);
    let line = running.wait_for_line("Serving the reducer's state on http://");
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches("/api/v1/result")
        .parse()
        .unwrap();
    running.wait_for_line("Replay done; still serving");

    let (code, body) = http_get(addr, "/api/v1/status");
    assert_eq!(code, 200);
    let status: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(status["finished"], true);
    assert_eq!(status["events"], 52);
    assert_eq!(status["last_event"], 51);

    let (code, body) = http_get(addr, "/api/v1/result/history/event_number?slice=0:3");
    assert_eq!((code, body.as_str()), (200, "[1,2,3]"));
    let (code, body) = http_get(addr, "/api/v1/result/history/values/nope");
    assert_eq!(code, 404);
    assert!(body.contains("no result at"), "{body}");
    let (code, body) = http_get(addr, "/api/v1/result");
    assert_eq!(code, 200);
    let state: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state["history"]["values"]["det_mean"]
            .as_array()
            .unwrap()
            .len(),
        50
    );

    // SIGTERM shuts the server down cleanly.
    let pid = running.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = running.child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// Runs `beamflow replay` of `dump` through the example pipeline; it may log the ERROR lines
/// `allowed` names.
fn replay_example(dump: &Path, allowed: &[&str]) -> std::process::Output {
    beamflow_output_allowing(
        &[
            "replay",
            "--pipeline",
            &example_pipeline(),
            "--dump",
            &dump.display().to_string(),
        ],
        allowed,
    )
}

#[test]
fn a_file_that_is_not_a_dump_is_a_usage_error_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notadump.txt");
    std::fs::write(&path, "event,mean\n1,2.5\n").unwrap();
    let output = replay_example(&path, &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        format!(
            "beamflow: {}: not a .cbors dump (it does not start with the CBOR self-describe tag d9 d9 f7 but with 65 76 65)",
            path.display()
        )
    );

    // Other failures keep exit code 1: a missing file is not "not a dump".
    let output = replay_example(&dir.path().join("missing.cbors"), &[]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_replay_that_reads_no_event_fails() {
    let dir = tempfile::tempdir().unwrap();
    // A scan without events leaves an empty dump: valid, but nothing to replay.
    let empty = dir.path().join("empty.cbors");
    File::create(&empty).unwrap();
    let output = replay_example(&empty, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        format!(
            "beamflow: no events to replay: {} holds none",
            empty.display()
        )
    );

    // A dump whose every record is bad: tag 55799 ( tag 42879 ( [] ) ), twice.
    let bad = dir.path().join("bad.cbors");
    let record = [0xd9, 0xd9, 0xf7, 0xd9, 0xa7, 0x7f, 0x80];
    std::fs::write(&bad, [record, record].concat()).unwrap();
    let output = replay_example(&bad, &[BAD_RECORD]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.lines().last(),
        Some(
            "beamflow: no events to replay: all 2 records read were bad and skipped (the first is logged above)"
        ),
        "{stderr}"
    );
}

#[test]
fn the_summary_names_unread_streams_and_a_misspelt_history_column() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        r#"
[analyses.stats]
kind = "frame_stats"

[accumulators.history]
kind = "history"
analysis = "stats"
values = { det_mean = "det/0/mean", det_max = "dte/0/max" }
"#,
    )
    .unwrap();
    let images = dir.path().join("det.cbors");
    write_stins_events(&images, 0..20);
    // Two streams of a type no analysis reads, recorded beside the images. Which streams a
    // dump holds is known only when it is read: the load-time check cannot see the typo in
    // "dte/0/max", so the replay reports it.
    let pvs = dir.path().join("pvs.cbors");
    let mut writer = DumpWriter::new(BufWriter::new(File::create(&pvs).unwrap()));
    for n in 0..20 {
        let mut event = EventData::new(EventNumber(n));
        for stream in ["sq01", "cq01"] {
            event.streams.insert(
                stream.into(),
                StreamData {
                    typ: "pcap".into(),
                    frames: vec![Bytes::from_static(b"not read")],
                },
            );
        }
        writer.write_event(&event).unwrap();
    }
    writer.into_inner().unwrap();

    let mut running = Running::spawn(&[
        "replay",
        "--pipeline",
        &pipeline.display().to_string(),
        "--dump",
        &images.display().to_string(),
        "--dump",
        &pvs.display().to_string(),
        "--serve",
        "127.0.0.1:0",
    ]);
    let line = running.wait_for_line("Serving the reducer's state on http://");
    let addr = crate::util::http_address(&line);
    let mut stderr = String::new();
    while !stderr.contains("Replay done; still serving") {
        let n = std::io::BufRead::read_line(&mut running.stderr, &mut stderr).unwrap();
        assert!(n > 0, "beamflow exited early:\n{stderr}");
    }
    let summary: Vec<&str> = stderr
        .lines()
        .skip_while(|line| !line.starts_with("replayed 20 events"))
        .collect();
    assert_eq!(
        summary[1..3],
        [
            "streams no analysis reads: cq01, sq01",
            r#"accumulator history: column det_max path "dte/0/max" matched none of the first 20 results; "dte" is not a key of the result; keys there: det"#,
        ],
        "{stderr}"
    );
    // Logged once, at warn, and never for the column that matched.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("Column path matched no result"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        // Field names may be styled, so only values are looked for.
        warnings[0].contains("WARN") && warnings[0].contains("dte/0/max"),
        "{stderr}"
    );

    let (code, body) = http_get(addr, "/api/v1/status");
    assert_eq!(code, 200);
    let status: Json = serde_json::from_str(&body).unwrap();
    let unmatched = &status["unmatched_columns"]["history"];
    assert_eq!(unmatched.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(unmatched[0]["column"], "det_max");
    assert_eq!(unmatched[0]["path"], "dte/0/max");
    assert_eq!(unmatched[0]["keys"][0], "det");
}

/// Issue 15: a process that logs at ERROR fails the test that ran it, unless the test declared
/// that error. A replay over a damaged dump logs its first bad record at ERROR.
#[test]
fn gh_15_an_error_log_fails_the_test_unless_it_is_declared() {
    let dir = tempfile::tempdir().unwrap();
    let dump = damaged_dump(dir.path()).display().to_string();
    let pipeline = example_pipeline();
    let serve = |allowed: &[&str]| {
        let mut running = Running::spawn(&[
            "replay",
            "--pipeline",
            &pipeline,
            "--dump",
            &dump,
            "--serve",
            "127.0.0.1:0",
        ]);
        running.allow_errors(allowed);
        running.wait_for_line("Replay done; still serving");
        running
    };
    let undeclared = serve(&[]);
    let failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(undeclared)))
        .expect_err("an undeclared ERROR fails the test");
    let message = failure.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("logged at ERROR") && message.contains(BAD_RECORD),
        "{message}"
    );
    drop(serve(&[BAD_RECORD]));
}
