//! STINS messages (`streams::stins`), as a detector or anyone who can reach the ingester's
//! socket sends them: a JSON part, then for images the (maybe bslz4) buffer. The input is split
//! into frames by `beamflow_fuzz::split`.
#![no_main]

use beamflow_fuzz::Budget;
use beamflow_protocol::streams::stins::{self, Kind, StinsMessage};
use libfuzzer_sys::fuzz_target;

/// A bslz4 image expands up to 256 times.
const BUDGET: Budget = Budget {
    per_byte: 512,
    flat: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let frames = beamflow_fuzz::split(data);
    let peeked = stins::peek(&frames);
    let Ok(message) = beamflow_fuzz::within(data, BUDGET, || stins::parse_frames(&frames)) else {
        return;
    };
    // The ingester routes by `peek` and workers decode with `parse`: they must agree.
    let peeked = peeked.unwrap_or_else(|error| panic!("parsed, but peek fails: {error}"));
    assert_eq!(peeked.msg_number, message.msg_number());
    match message {
        StinsMessage::Header { .. } => assert_eq!(peeked.kind, Kind::Header),
        StinsMessage::End { .. } => assert_eq!(peeked.kind, Kind::End),
        StinsMessage::Image { frame, data, .. } => {
            assert_eq!(peeked.kind, Kind::Image);
            assert_eq!(peeked.frame, Some(frame));
            assert_eq!(data.data().len(), data.len() * data.dtype().size());
        }
    }
});
