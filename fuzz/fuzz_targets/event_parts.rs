//! Event parts (`message::decode_parts`): the multipart messages ingesters send workers, from
//! anyone who can reach a worker's socket. The input is split into frames by
//! `beamflow_fuzz::split`. Decoded parts are read as workers read them, and must encode to a
//! message that decodes to the same encoding.
#![no_main]

use beamflow_fuzz::Budget;
use beamflow_protocol::message::{decode_parts, encode_part_header};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// A bslz4 image expands up to 256 times, and is read as `f64`: 8 bytes an element.
const BUDGET: Budget = Budget {
    per_byte: 4096,
    flat: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let decoded = beamflow_fuzz::within(data, BUDGET, || {
        let parts = decode_parts(beamflow_fuzz::split(data));
        for (_, event) in parts.iter().flatten() {
            beamflow_fuzz::read_streams(event);
        }
        parts
    });
    let Ok(parts) = decoded else {
        return;
    };
    let mut message = Vec::new();
    for (scan, event) in &parts {
        message.push(Bytes::from(encode_part_header(*scan, event)));
        message.extend(
            event
                .streams
                .values()
                .flat_map(|s| s.frames.iter().cloned()),
        );
    }
    let again = decode_parts(message.clone())
        .unwrap_or_else(|error| panic!("own event parts do not decode: {error}"));
    assert_eq!(again.len(), parts.len());
    for ((scan, event), (scan_again, event_again)) in parts.iter().zip(&again) {
        assert_eq!(scan, scan_again);
        assert_eq!(event.streams, event_again.streams);
        assert_eq!(
            encode_part_header(*scan, event),
            encode_part_header(*scan_again, event_again)
        );
    }
});
