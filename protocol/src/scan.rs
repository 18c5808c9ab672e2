//! Finding where one CBOR item ends without decoding it, so that a reader of a CBOR sequence
//! can read exactly one record from a stream, however large its byte strings are.

/// Deepest container nesting accepted; real dump records nest four levels.
const MAX_DEPTH: usize = 256;

/// What [`item_len`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The first item is complete and this many bytes long.
    Complete(usize),
    /// The buffer ends inside the item; it is at least this many bytes long.
    Incomplete(usize),
    /// The bytes are not CBOR; the message says what was wrong at the offset.
    Malformed(usize, &'static str),
}

/// Measures the first CBOR item in `buf`.
pub(crate) fn item_len(buf: &[u8]) -> Scan {
    // Items still owed by each open container; `None` = indefinite, ends at a break byte.
    let mut open: Vec<Option<u64>> = Vec::new();
    let mut pos = 0usize;
    loop {
        let Some(&initial) = buf.get(pos) else {
            return Scan::Incomplete(pos + 1);
        };
        let major = initial >> 5;
        let info = initial & 0x1f;
        let head = pos;
        pos += 1;
        if initial == 0xff {
            // A break closes the innermost indefinite container (or string).
            match open.last() {
                Some(None) => {
                    open.pop();
                    if close_one(&mut open) {
                        return Scan::Complete(pos);
                    }
                    continue;
                }
                _ => return Scan::Malformed(head, "break byte outside an indefinite item"),
            }
        }
        let argument = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let width = 1usize << (info - 24);
                let Some(bytes) = buf.get(pos..pos + width) else {
                    return Scan::Incomplete(pos + width);
                };
                pos += width;
                Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
            }
            31 => None,
            _ => return Scan::Malformed(head, "reserved additional information value"),
        };
        match (major, argument) {
            // Integers, tags' numbers, simple values and floats: the head is the whole item.
            (0 | 1 | 7, Some(_)) => {}
            (0 | 1 | 6, None) => {
                return Scan::Malformed(head, "indefinite length on a non-container");
            }
            (7, None) => return Scan::Malformed(head, "break byte outside an indefinite item"),
            (2 | 3, Some(len)) => {
                let Some(end) = usize::try_from(len)
                    .ok()
                    .and_then(|len| pos.checked_add(len))
                else {
                    return Scan::Malformed(head, "string length does not fit in memory");
                };
                if end > buf.len() {
                    return Scan::Incomplete(end);
                }
                pos = end;
            }
            (2..=5, None) => {
                if open.len() >= MAX_DEPTH {
                    return Scan::Malformed(head, "nesting too deep");
                }
                open.push(None);
                continue;
            }
            (4 | 5, Some(len)) => {
                let items = if major == 5 {
                    len.saturating_mul(2)
                } else {
                    len
                };
                if items > 0 {
                    if open.len() >= MAX_DEPTH {
                        return Scan::Malformed(head, "nesting too deep");
                    }
                    open.push(Some(items));
                    continue;
                }
            }
            // A tag is followed by exactly one item.
            (6, Some(_)) => {
                if open.len() >= MAX_DEPTH {
                    return Scan::Malformed(head, "nesting too deep");
                }
                open.push(Some(1));
                continue;
            }
            _ => return Scan::Malformed(head, "invalid initial byte"),
        }
        if close_one(&mut open) {
            return Scan::Complete(pos);
        }
    }
}

/// Records that one item finished inside the innermost container; true when nothing is open.
fn close_one(open: &mut Vec<Option<u64>>) -> bool {
    loop {
        match open.last_mut() {
            None => return true,
            Some(None) => return false,
            Some(Some(remaining)) => {
                *remaining -= 1;
                if *remaining > 0 {
                    return false;
                }
                open.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use proptest::prelude::*;

    #[test]
    fn measures_nested_items() {
        // tag 55799 ( [1, {"a": h'0102'}] ) followed by junk
        let item = [0xd9, 0xd9, 0xf7, 0x82, 0x01, 0xa1, 0x61, b'a', 0x42, 1, 2];
        let mut buf = item.to_vec();
        buf.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(item_len(&buf), Scan::Complete(item.len()));
        assert_eq!(item_len(&item[..9]), Scan::Incomplete(11));
    }

    #[test]
    fn reports_the_size_a_large_byte_string_needs() {
        let mut head = vec![0x5a];
        head.extend_from_slice(&(4u32 << 20).to_be_bytes());
        assert_eq!(item_len(&head), Scan::Incomplete(5 + (4 << 20)));
    }

    #[test]
    fn indefinite_containers() {
        // [_ 1, [_ ], "x"] then a break-terminated map {_ 1: 2}
        let buf = [0x9f, 0x01, 0x9f, 0xff, 0x61, b'x', 0xff];
        assert_eq!(item_len(&buf), Scan::Complete(buf.len()));
        let map = [0xbf, 0x01, 0x02, 0xff];
        assert_eq!(item_len(&map), Scan::Complete(map.len()));
    }

    #[test]
    fn rejects_stray_break_and_reserved_info() {
        assert!(matches!(item_len(&[0xff]), Scan::Malformed(0, _)));
        assert!(matches!(item_len(&[0x1c]), Scan::Malformed(0, _)));
    }

    proptest! {
        #[test]
        fn agrees_with_the_encoder(items in proptest::collection::vec(any::<i64>(), 0..50), text in ".{0,40}") {
            let value = Value::Array(vec![Value::from(items.into_iter().map(Value::Int).collect::<Vec<_>>()), Value::Text(text)]);
            let bytes = value.to_cbor();
            prop_assert_eq!(item_len(&bytes), Scan::Complete(bytes.len()));
            for cut in 0..bytes.len() {
                prop_assert!(matches!(item_len(&bytes[..cut]), Scan::Incomplete(n) if n > cut));
            }
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = item_len(&bytes);
        }
    }
}
