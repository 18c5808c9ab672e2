//! Control messages (`protocol::control`): what components send the controller and what it
//! sends them, from anyone who can reach the control socket. A message that decodes must encode
//! to bytes that decode to the same encoding.
#![no_main]

use beamflow_fuzz::Budget;
use beamflow_protocol::control::{self, FromController, ToController};
use libfuzzer_sys::fuzz_target;

/// A one-byte CBOR item can become a 40-byte value, in a vector that grows by doubling.
const BUDGET: Budget = Budget {
    per_byte: 128,
    flat: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let to = beamflow_fuzz::within(data, BUDGET, || control::decode::<ToController>(data));
    let from = beamflow_fuzz::within(data, BUDGET, || control::decode::<FromController>(data));
    if let Ok(message) = to {
        let bytes = control::encode(&message);
        let again: ToController = control::decode(&bytes)
            .unwrap_or_else(|error| panic!("own ToController does not decode: {error}"));
        assert!(
            control::encode(&again) == bytes,
            "ToController changed in a round trip"
        );
    }
    if let Ok(message) = from {
        let bytes = control::encode(&message);
        let again: FromController = control::decode(&bytes)
            .unwrap_or_else(|error| panic!("own FromController does not decode: {error}"));
        assert!(
            control::encode(&again) == bytes,
            "FromController changed in a round trip"
        );
    }
});
