//! Reports and results (`message::decode_report`, `decode_result`): what workers send the
//! reducer, from anyone who can reach its socket, and what its checkpoint holds. What decodes
//! must encode to bytes that decode to the same encoding.
#![no_main]

use beamflow_fuzz::Budget;
use beamflow_protocol::message::{decode_report, decode_result, encode_report, encode_result};
use libfuzzer_sys::fuzz_target;

/// A one-byte CBOR item can become a 40-byte value, in a vector that grows by doubling.
const BUDGET: Budget = Budget {
    per_byte: 128,
    flat: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let report = beamflow_fuzz::within(data, BUDGET, || decode_report(data));
    let result = beamflow_fuzz::within(data, BUDGET, || decode_result(data));
    if let Ok((scan, report)) = report {
        let bytes = encode_report(scan, &report);
        let (scan_again, again) = decode_report(&bytes)
            .unwrap_or_else(|error| panic!("own report does not decode: {error}"));
        assert_eq!(scan, scan_again);
        assert!(
            encode_report(scan, &again) == bytes,
            "a report changed in a round trip"
        );
    }
    if let Ok(result) = result {
        let bytes = encode_result(&result);
        let again = decode_result(&bytes)
            .unwrap_or_else(|error| panic!("own result does not decode: {error}"));
        assert!(
            encode_result(&again) == bytes,
            "a result changed in a round trip"
        );
    }
});
