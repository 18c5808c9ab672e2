//! The mapping module agrees with dranspose 0.2.0's `MappingSequence` (the contract's owner).

use std::io::Write;
use std::process::{Command, Stdio};

use beamflow_controller::mapping::Sequence;
use serde_json::Value as Json;

use crate::util::{python, root};

fn dranspose_answer(body: &str, all_wrap: bool) -> Json {
    let mut child = Command::new(python())
        .arg(root().join("tests/python/dranspose_mapping.py"))
        .arg(if all_wrap { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn sequences_agree_with_dranspose() {
    let bodies = [
        r#"{"parts": {"main": {"det": [[{"constraint": 0}], [{"constraint": 0}], [], [{"constraint": 1}, {"tags": ["debug"]}]], "pcap": [null, [{"constraint": 0}], null, [{"constraint": 2}]]}, "slow": {"temp": [[{"constraint": 5}]]}}, "sequence": ["main", "slow", "main"]}"#,
        r#"{"parts": {"a": {"x": [[{"constraint": 0}, {"constraint": 1}, {"constraint": 2}], [{"constraint": null}]]}}, "sequence": ["a", "a", "a"]}"#,
        r#"{"parts": {"a": {"x": [[{"tags": ["fast", "gpu"], "constraint": 0}]], "y": [[]]}}, "sequence": []}"#,
    ];
    for body in bodies {
        for all_wrap in [true, false] {
            let theirs = dranspose_answer(body, all_wrap);
            let ours = Sequence::from_json(body.as_bytes(), all_wrap);
            if theirs.get("error").is_some() {
                assert!(
                    ours.is_err(),
                    "dranspose rejects {body} ({}), beamflow accepts it",
                    theirs["error"]
                );
                continue;
            }
            let ours = ours.unwrap();
            assert_eq!(theirs["total_events"], ours.total_events(), "{body}");
            assert_eq!(theirs["min_workers"], ours.min_workers(), "{body}");
            let streams: Vec<String> = ours.streams().iter().map(ToString::to_string).collect();
            assert_eq!(theirs["streams"], serde_json::json!(streams), "{body}");
            let tags: Vec<String> = ours.tags().iter().map(ToString::to_string).collect();
            assert_eq!(theirs["tags"], serde_json::json!(tags), "{body}");
            assert_eq!(
                theirs["sequence"],
                serde_json::json!(ours.sequence()),
                "{body}"
            );
        }
    }
}
