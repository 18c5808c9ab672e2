//! PV Access (`beamflow-pva`): a TCP stream from a client or a server, cut into messages
//! (`wire::Framer`, segments joined), each payload read as both read what the other sends: a
//! type and a value (with the connection's introspection cache), a change mark and the marked
//! members of that value, a pvRequest selecting from it, and an NTNDArray's image. What was
//! read, written again, reads back the same.
#![no_main]

use beamflow_fuzz::Budget;
use beamflow_pva::nt;
use beamflow_pva::pvdata::{BitSet, ByteOrder, Decoder, Encoder, PvStructure, TypeCache};
use beamflow_pva::request::Request;
use beamflow_pva::wire::{Frame, Framer};
use libfuzzer_sys::fuzz_target;

/// A connection's framer holds what arrived; decoded values take more than their bytes (a
/// `Value` per element of a structure array).
const BUDGET: Budget = Budget {
    per_byte: 96,
    flat: 4 << 20,
};

fuzz_target!(|data: &[u8]| {
    beamflow_fuzz::within(data, BUDGET, || {
        let mut framer = Framer::new(1 << 20);
        framer.buf.extend_from_slice(data);
        let mut cache = TypeCache::default();
        while let Ok(Some(frame)) = framer.next_frame() {
            if let Frame::Message { flags, payload, .. } = frame {
                let order = if flags & 0x80 != 0 {
                    ByteOrder::Big
                } else {
                    ByteOrder::Little
                };
                read(&payload, order, &mut cache);
            }
        }
    });
});

fn read(payload: &[u8], order: ByteOrder, cache: &mut TypeCache) {
    let mut input = Decoder::new(payload, order);
    let Ok(Some(desc)) = input.field_desc(cache) else {
        return;
    };
    let Ok(value) = input.value(&desc, cache) else {
        return;
    };
    // Written with the full type and read back: the same type and value.
    let mut out = Encoder::new(order);
    out.field_desc(&desc);
    out.value(&desc, &value)
        .unwrap_or_else(|error| panic!("a value read does not write: {error}"));
    let mut again = Decoder::new(&out.buf, order);
    let mut fresh = TypeCache::default();
    let desc_again = again.field_desc(&mut fresh).ok().flatten();
    assert_eq!(desc_again.as_ref(), Some(&desc), "the type reads back");
    let value_again = again.value(&desc, &mut fresh).ok();
    if value_again.as_ref() != Some(&value) {
        // NaNs differ from themselves: compare the bytes instead.
        let mut twice = Encoder::new(order);
        twice.field_desc(&desc);
        if let Some(value_again) = &value_again {
            let _ = twice.value(&desc, value_again);
        }
        assert_eq!(twice.buf, out.buf, "the value reads back");
    }
    let Ok(mut pv) = PvStructure::from_parts(&desc, value) else {
        return;
    };
    // The rest of the payload as a change mark and the members it marks.
    if let Ok(changed) = BitSet::decode(&mut input) {
        let _ = input.partial(&mut pv, &changed, cache);
    }
    let request = Request::from_pv(&pv);
    if let Ok(selection) = request.select(&pv.desc) {
        let projected = selection.project(&pv);
        let marks = selection.project_changes(&BitSet::all());
        let mut out = Encoder::new(order);
        out.partial(&projected, &marks)
            .unwrap_or_else(|error| panic!("a selection does not write: {error}"));
    }
    if pv.id() == nt::NT_NDARRAY
        && let Ok(image) = nt::ndarray_image(&pv)
    {
        assert_eq!(image.data().len(), image.len() * image.dtype().size());
    }
}
