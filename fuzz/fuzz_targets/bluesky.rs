//! Bluesky documents (`streams::bluesky`) as a RunEngine's 0MQ Publisher, or anyone who can
//! reach the proxy, sends them: one frame, `prefix name payload`, JSON or msgpack; each one
//! read then travels to the workers as a `RunDocument` and must arrive whole. The same bytes
//! as a Kafka message value (bluesky-kafka's msgpack `[name, doc]`).
#![no_main]

use beamflow_fuzz::Budget;
use beamflow_protocol::streams::bluesky::{self, RunDocument};
use libfuzzer_sys::fuzz_target;

/// A tree costs tens of bytes per node, and a node can be one byte of msgpack (or, with the
/// JSON parser's own tree alive beside ours, two of JSON).
const BUDGET: Budget = Budget {
    per_byte: 160,
    flat: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(document) = beamflow_fuzz::within(data, BUDGET, || bluesky::parse(data)) {
        assert!(matches!(document.body, beamflow_protocol::Value::Map(_)));
        let forwarded = RunDocument {
            name: document.name,
            run: Some(document.prefix),
            stream: None,
            doc: document.body,
        };
        // Compared as sent, so that a NaN reading (msgpack has them) compares equal.
        let sent = forwarded.stream_data();
        let received = RunDocument::parse(&sent).map(|document| document.stream_data().frames);
        assert_eq!(received, Ok(sent.frames));
    }
    if let Ok(document) = beamflow_fuzz::within(data, BUDGET, || bluesky::parse_kafka(data)) {
        assert!(matches!(document.body, beamflow_protocol::Value::Map(_)));
    }
});
