//! `.cbors` dumps (`DumpReader`): a recording replayed or a dranspose dump handed over may be
//! cut short, corrupt or not a dump at all. Every record is read, and every stream of the
//! events that decode is read as workers read it.
#![no_main]

use beamflow_fuzz::Budget;
use beamflow_protocol::dump::DumpReader;
use libfuzzer_sys::fuzz_target;

/// A bslz4 image expands up to 256 times, and is read as `f64`: 8 bytes an element. The flat
/// part is the reader's read step: a record that claims more than has arrived is read towards
/// its claim 16 MiB at a time (`GROWTH` in `protocol/src/dump.rs`), so a 22-byte dump holds
/// 16 MiB (`corpus/dump_reader/frame_claims_256mib.cbors`). Lower it to 1 MiB once the reader
/// grows its buffer by what arrives.
const BUDGET: Budget = Budget {
    per_byte: 4096,
    flat: 17 << 20,
};

fuzz_target!(|data: &[u8]| {
    beamflow_fuzz::within(data, BUDGET, || {
        let mut records = 0usize;
        for event in DumpReader::new(data) {
            records += 1;
            // Every record is at least a few bytes: an iterator that outlives the input loops.
            assert!(records <= data.len(), "more records than bytes");
            if let Ok(event) = event {
                beamflow_fuzz::read_streams(&event);
            }
        }
    });
});
