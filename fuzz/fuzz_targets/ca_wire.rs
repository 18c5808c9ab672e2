//! Channel Access (`beamflow-ca`): a TCP stream from a client or a server, cut into messages
//! (`wire::split_message`), each payload read as the client reads monitor updates
//! (`TimeValue::read`) and as the server reads puts (`Values::read`), then served back in the
//! form and type the header's parameters ask for (`convert::write`), as the server answers a
//! get in another type.
#![no_main]

use beamflow_ca::convert;
use beamflow_ca::dbr::{Metadata, Native, TimeValue, Values};
use beamflow_ca::wire::{self, Message};
use beamflow_fuzz::Budget;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// The elements a served PV holds at most here (the server caps a request's count by its PV's).
const MAX_COUNT: usize = 4096;

/// A circuit's buffer reserves up to 4 MiB for an announced payload; a 1-byte `DBR_CHAR` read as
/// a `DBR_STRING` becomes a 40-byte string.
const BUDGET: Budget = Budget {
    per_byte: 64,
    flat: 5 << 20,
};

fuzz_target!(|data: &[u8]| {
    beamflow_fuzz::within(data, BUDGET, || {
        let mut buffer = BytesMut::from(data);
        while let Ok(Some(message)) = wire::split_message(&mut buffer) {
            read(&message);
        }
    });
});

fn read(message: &Message) {
    let h = message.header;
    let payload = &message.payload[..];
    let count = h.count as usize;
    if let Some(native) = Native::of(h.data_type).filter(|_| h.data_type < 7)
        && let Ok(values) = Values::read(native, count, payload)
    {
        assert_eq!(values.len(), count);
        let _ = convert::numbers(&values);
    }
    let Ok(value) = TimeValue::read(h.data_type, count, payload) else {
        return;
    };
    assert_eq!(value.values.len(), count);
    if value.values.native() != Native::String {
        // What the client read, written and read again, is the same bytes (strings are cut to
        // 39 bytes and lossily decoded, so they are not).
        let mut once = Vec::new();
        value.write(&mut once);
        let again = TimeValue::read(h.data_type, count, &once)
            .unwrap_or_else(|error| panic!("own TIME payload does not read back: {error}"));
        let mut twice = Vec::new();
        again.write(&mut twice);
        assert!(
            once == twice,
            "a TIME payload changed when written and read"
        );
    }
    if value.values.len() > MAX_COUNT {
        return;
    }
    let metadata = Metadata {
        units: wire::payload_name(payload),
        precision: h.p2 as i16,
        ..Metadata::default()
    };
    let dbr_type = (h.p1 % 40) as u16;
    let asked = (h.p2 as usize) % (MAX_COUNT + 1);
    let mut out = Vec::new();
    let written = convert::write(&value, &metadata, dbr_type, asked, &mut out);
    if convert::requested(dbr_type).is_some() {
        let expected = if asked == 0 {
            value.values.len()
        } else {
            asked
        };
        assert_eq!(written, expected, "count written for DBR type {dbr_type}");
    } else {
        assert_eq!(written, 0, "an unknown DBR type {dbr_type} writes nothing");
    }
}
