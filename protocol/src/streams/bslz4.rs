//! `bslz4`: bitshuffle + LZ4 block compression, as Dectris detectors, MAX IV's receivers and the
//! HDF5 bitshuffle filter (id 32008) write it.
//!
//! Layout: a 12-byte header (total uncompressed bytes as big-endian u64, block size in bytes as
//! big-endian u32), then per block a big-endian u32 compressed length and an LZ4 block holding the
//! bit-transposed elements. A final partial block is rounded down to a multiple of 8 elements;
//! the remaining (< 8) elements follow uncompressed.

/// Default block size in elements when compressing (bitshuffle's choice for 8 KiB L1 caches).
const DEFAULT_BLOCK_BYTES: usize = 8192;

/// Why a `bslz4` buffer could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Bslz4Error {
    /// Fewer than the 12 header bytes.
    #[error("bslz4 buffer of {0} bytes is shorter than its 12-byte header")]
    NoHeader(usize),
    /// The header disagrees with the element size or the expected length.
    #[error("bslz4 header: {0}")]
    BadHeader(String),
    /// A block's length field or data runs past the end of the buffer.
    #[error("bslz4 block {block} at byte {offset} runs past the end of the {len}-byte buffer")]
    Truncated {
        /// Index of the block.
        block: usize,
        /// Where its length field starts.
        offset: usize,
        /// Length of the whole buffer.
        len: usize,
    },
    /// LZ4 rejected a block, or it decompressed to the wrong size.
    #[error("bslz4 block {block}: {message}")]
    Block {
        /// Index of the block.
        block: usize,
        /// What LZ4 reported.
        message: String,
    },
    /// Bytes left over after the last block.
    #[error("bslz4 buffer has {0} bytes after its last block")]
    TrailingBytes(usize),
}

/// Decompresses a `bslz4` buffer of `elem_size`-byte elements. `expected_len`, when known from the
/// message's shape, must equal the header's total.
pub fn decompress(
    data: &[u8],
    elem_size: usize,
    expected_len: Option<usize>,
) -> Result<Vec<u8>, Bslz4Error> {
    let header: &[u8; 12] = data
        .get(..12)
        .and_then(|h| h.try_into().ok())
        .ok_or(Bslz4Error::NoHeader(data.len()))?;
    let total = u64::from_be_bytes([
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7],
    ]);
    let block_bytes = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let total = usize::try_from(total)
        .map_err(|_| Bslz4Error::BadHeader(format!("total of {total} bytes does not fit")))?;
    if let Some(expected) = expected_len
        && expected != total
    {
        return Err(Bslz4Error::BadHeader(format!(
            "total of {total} bytes, but the shape needs {expected}"
        )));
    }
    if elem_size == 0 || !total.is_multiple_of(elem_size) {
        return Err(Bslz4Error::BadHeader(format!(
            "total of {total} bytes is not a multiple of the {elem_size}-byte element"
        )));
    }
    let block_elems = block_bytes / elem_size;
    if !block_bytes.is_multiple_of(elem_size) || block_elems == 0 || !block_elems.is_multiple_of(8)
    {
        return Err(Bslz4Error::BadHeader(format!(
            "block size of {block_bytes} bytes is not a positive multiple of 8 {elem_size}-byte elements"
        )));
    }
    let elems = total / elem_size;
    // Cap the allocation by what the input can possibly expand to (LZ4 expands at most ~255x),
    // so a hostile header cannot make us allocate without bound.
    if total > data.len().saturating_mul(256).saturating_add(64) {
        return Err(Bslz4Error::BadHeader(format!(
            "total of {total} bytes is impossible from a {}-byte buffer",
            data.len()
        )));
    }
    let mut out = vec![0u8; total];
    // A block never holds more than the whole buffer: the header's block size alone (a 13-byte
    // input can claim 832 MiB blocks) must not size an allocation.
    let mut scratch = vec![0u8; block_bytes.min(total)];
    let mut pos = 12;
    let mut done = 0; // elements written
    let mut block = 0;
    while elems - done >= 8 {
        let count = block_elems.min((elems - done) / 8 * 8);
        let len_field = data.get(pos..pos + 4).ok_or(Bslz4Error::Truncated {
            block,
            offset: pos,
            len: data.len(),
        })?;
        let compressed =
            u32::from_be_bytes([len_field[0], len_field[1], len_field[2], len_field[3]]) as usize;
        let input = data
            .get(pos + 4..pos + 4 + compressed)
            .ok_or(Bslz4Error::Truncated {
                block,
                offset: pos,
                len: data.len(),
            })?;
        let shuffled = &mut scratch[..count * elem_size];
        let written = lz4_flex::block::decompress_into(input, shuffled).map_err(|error| {
            Bslz4Error::Block {
                block,
                message: error.to_string(),
            }
        })?;
        if written != shuffled.len() {
            return Err(Bslz4Error::Block {
                block,
                message: format!(
                    "decompressed to {written} bytes, expected {}",
                    shuffled.len()
                ),
            });
        }
        let target = &mut out[done * elem_size..(done + count) * elem_size];
        unshuffle(shuffled, target, count, elem_size);
        pos += 4 + compressed;
        done += count;
        block += 1;
    }
    let rest = (elems - done) * elem_size;
    let tail = data.get(pos..pos + rest).ok_or(Bslz4Error::Truncated {
        block,
        offset: pos,
        len: data.len(),
    })?;
    out[done * elem_size..].copy_from_slice(tail);
    if pos + rest != data.len() {
        return Err(Bslz4Error::TrailingBytes(data.len() - pos - rest));
    }
    Ok(out)
}

/// Compresses `data` (elements of `elem_size` bytes) as `bslz4`, for simulators and tests.
pub fn compress(data: &[u8], elem_size: usize) -> Vec<u8> {
    let elem_size = elem_size.max(1);
    let elems = data.len() / elem_size;
    let block_elems = (DEFAULT_BLOCK_BYTES / elem_size).max(8) / 8 * 8;
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(&((block_elems * elem_size) as u32).to_be_bytes());
    let mut shuffled = vec![0u8; block_elems * elem_size];
    let mut done = 0;
    while elems - done >= 8 {
        let count = block_elems.min((elems - done) / 8 * 8);
        let block = &data[done * elem_size..(done + count) * elem_size];
        let target = &mut shuffled[..count * elem_size];
        shuffle(block, target, count, elem_size);
        let compressed = lz4_flex::block::compress(target);
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&compressed);
        done += count;
    }
    out.extend_from_slice(&data[done * elem_size..]);
    out
}

/// Transposes an 8×8 bit matrix held as 8 bytes (Hacker's Delight 7-3); its own inverse.
fn transpose8(mut x: u64) -> u64 {
    let mut t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// Bit plane `b * 8 + j` holds bit `j` of byte `b` of every element, element `k` at bit `k % 8`
/// of the plane's byte `k / 8`.
fn unshuffle(shuffled: &[u8], out: &mut [u8], count: usize, elem_size: usize) {
    let plane_len = count / 8;
    for byte in 0..elem_size {
        let planes = &shuffled[byte * 8 * plane_len..(byte + 1) * 8 * plane_len];
        for group in 0..plane_len {
            let mut x = 0u64;
            for bit in 0..8 {
                x |= u64::from(planes[bit * plane_len + group]) << (8 * bit);
            }
            let x = transpose8(x).to_le_bytes();
            for (k, value) in x.iter().enumerate() {
                out[(group * 8 + k) * elem_size + byte] = *value;
            }
        }
    }
}

fn shuffle(data: &[u8], shuffled: &mut [u8], count: usize, elem_size: usize) {
    let plane_len = count / 8;
    for byte in 0..elem_size {
        for group in 0..plane_len {
            let mut bytes = [0u8; 8];
            for (k, value) in bytes.iter_mut().enumerate() {
                *value = data[(group * 8 + k) * elem_size + byte];
            }
            let x = transpose8(u64::from_le_bytes(bytes));
            for bit in 0..8 {
                shuffled[(byte * 8 + bit) * plane_len + group] = (x >> (8 * bit)) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, one bit at a time, to check the fast transpose against.
    fn unshuffle_bitwise(shuffled: &[u8], count: usize, elem_size: usize) -> Vec<u8> {
        let plane_len = count / 8;
        let mut out = vec![0u8; count * elem_size];
        for k in 0..count {
            for byte in 0..elem_size {
                for bit in 0..8 {
                    let plane = shuffled[(byte * 8 + bit) * plane_len + k / 8];
                    out[k * elem_size + byte] |= ((plane >> (k % 8)) & 1) << bit;
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn fast_unshuffle_matches_the_definition(
            elem_size in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
            groups in 1usize..20,
            seed in proptest::collection::vec(any::<u8>(), 8 * 20 * 8),
        ) {
            let count = groups * 8;
            let shuffled = &seed[..count * elem_size];
            let mut fast = vec![0u8; count * elem_size];
            unshuffle(shuffled, &mut fast, count, elem_size);
            prop_assert_eq!(fast, unshuffle_bitwise(shuffled, count, elem_size));
        }

        #[test]
        fn round_trip(elem_size in prop_oneof![Just(1usize), Just(2), Just(4)], data in proptest::collection::vec(any::<u8>(), 0..40_000)) {
            let data = &data[..data.len() / elem_size * elem_size];
            let compressed = compress(data, elem_size);
            prop_assert_eq!(decompress(&compressed, elem_size, Some(data.len())).unwrap(), data);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decompress(&data, 2, None);
        }
    }

    /// Found by fuzzing with a 256 MiB allocation limit: total 52 bytes, blocks of 0x34000000.
    #[test]
    fn a_hostile_block_size_is_a_clean_error() {
        let data = [0, 0, 0, 0, 0, 0, 0, 0x34, 0x34, 0, 0, 0];
        assert!(matches!(
            decompress(&data, 2, None),
            Err(Bslz4Error::Truncated { block: 0, .. })
        ));
    }

    #[test]
    fn hostile_header_does_not_allocate() {
        let mut data = u64::MAX.to_be_bytes().to_vec();
        data.extend_from_slice(&8192u32.to_be_bytes());
        assert!(matches!(
            decompress(&data, 2, None),
            Err(Bslz4Error::BadHeader(_))
        ));
    }
}
