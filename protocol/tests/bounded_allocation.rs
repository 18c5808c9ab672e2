//! Decoders hold memory in proportion to what they received, not to what a header claims:
//! measured with a counting allocator, which only a test binary of its own can install.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use beamflow_protocol::value::Value;

thread_local! {
    // Per thread, so that tests running side by side do not count each other. `const` and
    // `Cell`: touching it never allocates, which an allocator's own bookkeeping must not.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

fn count(delta: isize) {
    let live = LIVE.with(|live| {
        live.set(live.get() + delta);
        live.get()
    });
    PEAK.with(|peak| peak.set(peak.get().max(live)));
}

// SAFETY (all four): forwarded unchanged to `System`; the counts are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most this thread held at once while `f` ran, above what it held before.
fn peak_while<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let out = f();
    let peak = PEAK.with(Cell::get) - before;
    (out, peak.max(0) as usize)
}

/// Issue 17: an array header claiming 4,096 items reserved 4,096 values before reading one, at
/// every level of nesting (the fuzz targets' allocation budget, `fuzz/src/lib.rs`, flags it too).
#[test]
fn nested_array_claims_reserve_no_more_than_the_input_holds() {
    // 128 levels of "an array of 4,096 items" (0x99 0x1000), then 4 KiB that are not an item.
    let mut input: Vec<u8> = std::iter::repeat_n([0x99, 0x10, 0x00], 128)
        .flatten()
        .collect();
    input.extend([0xff; 4096]);
    let (decoded, peak) = peak_while(|| Value::from_cbor(&input));
    assert!(decoded.is_err(), "the arrays' items never arrive");
    assert!(
        peak < 64 * input.len(),
        "{peak} bytes held at once decoding {} bytes",
        input.len()
    );
}
