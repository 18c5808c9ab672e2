//! `bslz4` (`streams::bslz4`): bitshuffle + LZ4 buffers from a detector. The first byte picks
//! the element size; the rest is decompressed, and compressed and decompressed again, which
//! must give it back.
#![no_main]

use beamflow_fuzz::Budget;
use beamflow_protocol::streams::bslz4;
use libfuzzer_sys::fuzz_target;

/// LZ4 expands at most about 255 times.
const BUDGET: Budget = Budget {
    per_byte: 260,
    flat: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Some((&select, buffer)) = data.split_first() else {
        return;
    };
    let elem_size = [1, 2, 4, 8][usize::from(select & 3)];
    if let Ok(out) =
        beamflow_fuzz::within(data, BUDGET, || bslz4::decompress(buffer, elem_size, None))
    {
        assert!(out.len().is_multiple_of(elem_size));
    }
    // Whole elements only: `compress` keeps a partial one as tail bytes the header does not count.
    if buffer.len().is_multiple_of(elem_size) {
        let compressed = bslz4::compress(buffer, elem_size);
        let back = bslz4::decompress(&compressed, elem_size, Some(buffer.len()))
            .unwrap_or_else(|error| panic!("own output does not decompress: {error}"));
        assert!(back == buffer, "compress then decompress changed the data");
    }
});
