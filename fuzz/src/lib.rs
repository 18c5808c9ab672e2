//! What the fuzz targets share: how one fuzz input carries several frames (a STINS message, an
//! event part's multipart message), reading every stream of a decoded event as a worker would,
//! and the allocation budget every decoder keeps.
//!
//! libFuzzer's own limits (`-malloc_limit_mb`, `-rss_limit_mb`) catch a decoder that allocates
//! hundreds of MiB; a 400-byte message that makes it hold 20 MiB passes them, yet a thousand of
//! them a second is an attack. So every binary of this package counts its heap (the global
//! allocator here), and [`within`] fails an input that made the decoder hold more at once than a
//! fixed multiple of its size.
//!
//! # Layout
//!
//! - `fuzz_targets/<target>.rs`: one decoder each, with the invariants it must keep.
//! - `examples/seeds.rs`: writes `corpus/<target>/` from the project's own encoders.
//! - `run`: builds the targets and runs each for a while.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use beamflow_protocol::event::EventData;
use bytes::Bytes;

/// Bytes allocated now, and the most since [`within`] last reset it.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting what is live.
struct Counting;

// The one unsafe impl of this package: a global allocator cannot be written without it. It only
// forwards to `System` and counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller keeps `GlobalAlloc::alloc`'s contract.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator with `layout`, as the caller guarantees.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`, and `new_size` is the caller's valid size.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        moved
    }
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What a decoder may hold at once for one input: `per_byte` bytes for each byte of the input,
/// plus `flat`. `per_byte` is what the format itself can expand to (bslz4: 256; an image read
/// as `f64`: 8 times that); anything beyond is memory the sender did not pay for.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bytes per input byte.
    pub per_byte: usize,
    /// Bytes whatever the input.
    pub flat: usize,
}

/// Runs `decode` on `data` and fails (panics, which libFuzzer reports with the input) if the
/// heap grew by more than `budget` allows for `data` at any moment while it ran.
///
/// # Panics
///
/// On a decoder over budget: that is the finding.
pub fn within<T>(data: &[u8], budget: Budget, decode: impl FnOnce() -> T) -> T {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = decode();
    let held = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let allowed = data
        .len()
        .saturating_mul(budget.per_byte)
        .saturating_add(budget.flat);
    assert!(
        held <= allowed,
        "a {}-byte input made the decoder hold {held} bytes at once (budget {allowed})",
        data.len()
    );
    out
}

/// Splits a fuzz input into frames: each is a little-endian `u16` length and that many bytes. A
/// length that runs past the end takes what is left, so every input is some message; a last
/// lone byte is ignored.
pub fn split(data: &[u8]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut rest = data;
    while let [low, high, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*low, *high])).min(tail.len());
        let (frame, after) = tail.split_at(len);
        frames.push(Bytes::copy_from_slice(frame));
        rest = after;
    }
    frames
}

/// The inverse of [`split`], for writing seeds.
///
/// # Panics
///
/// On a frame longer than `u16::MAX` bytes: seeds are kept small.
pub fn join<F: AsRef<[u8]>>(frames: &[F]) -> Vec<u8> {
    let mut data = Vec::new();
    for frame in frames {
        let frame = frame.as_ref();
        let len = u16::try_from(frame.len()).unwrap_or_else(|_| {
            panic!(
                "a seed frame of {} bytes does not fit a u16 length",
                frame.len()
            )
        });
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(frame);
    }
    data
}

/// Reads every stream of `event` as what its `typ` says, as workers do: STINS images (bslz4
/// included) and PV values, converted to numbers. Errors are the decoders' answers to bad
/// input and are dropped; only a panic or an allocation out of bounds is a finding.
pub fn read_streams(event: &EventData) {
    for name in event.streams.keys() {
        if let Ok(Some(image)) = event.image(name.as_str()) {
            let numbers = image.to_f64();
            assert_eq!(
                numbers.len(),
                image.len(),
                "an image's numbers are its elements"
            );
        }
        let _ = event.scalar(name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, not two: the counters are the process's, and tests run side by side.
    #[test]
    fn the_budget_counts_what_is_held_at_once() {
        let budget = Budget {
            per_byte: 2,
            flat: 1 << 20,
        };
        let within_budget = within(&[0; 100], budget, || {
            // Freed before the next: at most 600 KB at once.
            (0..10)
                .map(|_| std::hint::black_box(vec![1u8; 600_000]).len())
                .sum::<usize>()
        });
        assert_eq!(within_budget, 6_000_000);
        let over = std::panic::catch_unwind(|| {
            within(&[0; 100], budget, || {
                std::hint::black_box(vec![1u8; 2 << 20]);
            })
        });
        assert!(
            over.is_err(),
            "2 MiB held for 100 bytes is over a 1 MiB budget"
        );
    }

    #[test]
    fn split_undoes_join_and_takes_any_input() {
        let frames = [&b"{\"htype\":\"image\"}"[..], b"", b"\x00\x01"];
        assert_eq!(split(&join(&frames)), frames);
        // A length past the end takes the rest; a last lone byte is dropped.
        assert_eq!(split(b"\xff\x00abc"), [&b"abc"[..]]);
        assert_eq!(split(b"\x01\x00a\x07"), [&b"a"[..]]);
        assert!(split(b"").is_empty());
    }
}
