//! Channel Access messages: a 16-byte header (command, payload size, data type, count, two
//! parameters), or a 24-byte extended one for payloads or counts of 0xFFFF and more, then a
//! payload padded to 8 bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::CaError;

/// The default server port (UDP searches and TCP).
pub const DEFAULT_PORT: u16 = 5064;

/// The minor protocol version beamflow speaks (that of EPICS 7 and caproto).
pub const MINOR_VERSION: u16 = 13;

/// Payloads beamflow accepts at most (a 4k × 4k image of 32-bit pixels, with room).
pub const MAX_PAYLOAD: u64 = 256 << 20;

/// Command codes.
pub mod command {
    /// First message of every circuit and search datagram.
    pub const VERSION: u16 = 0;
    /// Subscribe (monitor); also each update and a cancel's confirmation.
    pub const EVENT_ADD: u16 = 1;
    /// Unsubscribe.
    pub const EVENT_CANCEL: u16 = 2;
    /// Put without confirmation.
    pub const WRITE: u16 = 4;
    /// Name resolution.
    pub const SEARCH: u16 = 6;
    /// An error, with the offending request's header.
    pub const ERROR: u16 = 11;
    /// Close a channel.
    pub const CLEAR_CHANNEL: u16 = 12;
    /// A server's beacon.
    pub const RSRV_IS_UP: u16 = 13;
    /// Get.
    pub const READ_NOTIFY: u16 = 15;
    /// Open a channel by name.
    pub const CREATE_CHAN: u16 = 18;
    /// Put with confirmation.
    pub const WRITE_NOTIFY: u16 = 19;
    /// The client's user name.
    pub const CLIENT_NAME: u16 = 20;
    /// The client's host name.
    pub const HOST_NAME: u16 = 21;
    /// A channel's access rights.
    pub const ACCESS_RIGHTS: u16 = 22;
    /// Liveness.
    pub const ECHO: u16 = 23;
    /// A channel could not be created.
    pub const CREATE_CH_FAIL: u16 = 26;
    /// The server dropped a channel.
    pub const SERVER_DISCONN: u16 = 27;
}

/// `data_type` of a SEARCH request: the server answers only if it has the name.
pub const DONT_REPLY: u16 = 5;

/// The status parameter of successful replies (`ECA_NORMAL`).
pub const ECA_NORMAL: u32 = 1;

/// A message header. `payload_size` is the padded size on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Command code ([`command`]).
    pub command: u16,
    /// Payload bytes that follow (a multiple of 8).
    pub payload_size: u32,
    /// DBR type, or what the command puts there.
    pub data_type: u16,
    /// Element count, or what the command puts there.
    pub count: u32,
    /// First parameter (cid, sid, status...).
    pub p1: u32,
    /// Second parameter (ioid, subscription id...).
    pub p2: u32,
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its header.
    pub header: Header,
    /// Its payload, padding included.
    pub payload: Bytes,
}

/// `len` rounded up to a multiple of 8.
pub fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

impl Header {
    /// A header without payload.
    pub fn new(command: u16, data_type: u16, count: u32, p1: u32, p2: u32) -> Self {
        Self {
            command,
            payload_size: 0,
            data_type,
            count,
            p1,
            p2,
        }
    }

    /// Appends the header (extended when the payload or count does not fit 16 bits).
    pub fn put(&self, out: &mut impl BufMut) {
        out.put_u16(self.command);
        if self.payload_size >= 0xFFFF || self.count >= 0xFFFF {
            out.put_u16(0xFFFF);
            out.put_u16(self.data_type);
            out.put_u16(0);
            out.put_u32(self.p1);
            out.put_u32(self.p2);
            out.put_u32(self.payload_size);
            out.put_u32(self.count);
        } else {
            out.put_u16(self.payload_size as u16);
            out.put_u16(self.data_type);
            out.put_u16(self.count as u16);
            out.put_u32(self.p1);
            out.put_u32(self.p2);
        }
    }
}

/// Appends a message: `header` with `payload` padded to 8 bytes (the header's `payload_size` is
/// set here).
pub fn put_message(out: &mut BytesMut, mut header: Header, payload: &[u8]) {
    let size = padded(payload.len());
    header.payload_size = size as u32;
    header.put(out);
    out.put_slice(payload);
    out.put_bytes(0, size - payload.len());
}

/// A NUL-terminated name as a payload (padded by [`put_message`]).
pub fn name_payload(name: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(name.len() + 1);
    payload.extend_from_slice(name.as_bytes());
    payload.push(0);
    payload
}

/// The text of a NUL-terminated payload.
pub fn payload_name(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// Takes the first whole message off `buffer`; `None` until one has arrived.
pub fn split_message(buffer: &mut BytesMut) -> Result<Option<Message>, CaError> {
    split_message_within(buffer, MAX_PAYLOAD)
}

/// What a partial message reserves beyond the bytes that have arrived, at least.
const READ_AHEAD: usize = 64 << 10;

/// [`split_message`] refusing payloads over `limit` bytes.
pub fn split_message_within(buffer: &mut BytesMut, limit: u64) -> Result<Option<Message>, CaError> {
    if buffer.len() < 16 {
        return Ok(None);
    }
    let mut peek = &buffer[..];
    let command = peek.get_u16();
    let short_size = peek.get_u16();
    let data_type = peek.get_u16();
    let short_count = peek.get_u16();
    let p1 = peek.get_u32();
    let p2 = peek.get_u32();
    let (header_len, payload_size, count) = if short_size == 0xFFFF {
        if buffer.len() < 24 {
            return Ok(None);
        }
        (24, peek.get_u32(), peek.get_u32())
    } else {
        (16, u32::from(short_size), u32::from(short_count))
    };
    if u64::from(payload_size) > limit {
        return Err(CaError::TooLarge {
            size: payload_size.into(),
            limit,
        });
    }
    let total = header_len + payload_size as usize;
    if buffer.len() < total {
        // Room for what is announced, at most as much again as has arrived (and a read's worth
        // to start with): the announcement alone reserves nothing large, what arrives grows
        // the buffer geometrically.
        let room = (total - buffer.len()).min(buffer.len().max(READ_AHEAD));
        buffer.reserve(room);
        return Ok(None);
    }
    let mut message = buffer.split_to(total);
    message.advance(header_len);
    Ok(Some(Message {
        header: Header {
            command,
            payload_size,
            data_type,
            count,
            p1,
            p2,
        },
        payload: message.freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// The search datagram for "TEST:PV" with id 1, byte for byte as the protocol specification
    /// and libca have it.
    #[test]
    fn a_search_datagram_is_version_then_search() {
        let mut out = BytesMut::new();
        Header::new(command::VERSION, 0, MINOR_VERSION.into(), 1, 0).put(&mut out);
        put_message(
            &mut out,
            Header::new(command::SEARCH, DONT_REPLY, MINOR_VERSION.into(), 1, 1),
            &name_payload("TEST:PV"),
        );
        assert_eq!(
            out.to_vec(),
            hex("00 00 00 00 00 00 00 0d 00 00 00 01 00 00 00 00
                 00 06 00 08 00 05 00 0d 00 00 00 01 00 00 00 01
                 54 45 53 54 3a 50 56 00")
        );
        let version = split_message(&mut out).unwrap().unwrap();
        assert_eq!(version.header.count, 13);
        let search = split_message(&mut out).unwrap().unwrap();
        assert_eq!(payload_name(&search.payload), "TEST:PV");
        assert!(out.is_empty());
    }

    #[test]
    fn large_payloads_use_the_extended_header() {
        // A READ_NOTIFY reply of DBR_LONG × 1,048,576.
        let header = Header {
            command: command::READ_NOTIFY,
            payload_size: 4 << 20,
            data_type: 5,
            count: 1 << 20,
            p1: ECA_NORMAL,
            p2: 9,
        };
        let mut out = BytesMut::new();
        header.put(&mut out);
        assert_eq!(
            out.to_vec(),
            hex("00 0f ff ff 00 05 00 00 00 00 00 01 00 00 00 09 00 40 00 00 00 10 00 00")
        );
        out.put_bytes(7, 4 << 20);
        // Bytes arrive in pieces; the message is whole only at the end.
        let mut buffer = BytesMut::new();
        let mut pieces = out.chunks(1 << 16);
        let message = loop {
            buffer.extend_from_slice(pieces.next().unwrap());
            if let Some(message) = split_message(&mut buffer).unwrap() {
                break message;
            }
        };
        assert_eq!(message.header, header);
        assert_eq!(message.payload.len(), 4 << 20);
        assert!(pieces.next().is_none());
    }

    /// Issue #17: a header announcing 200 MiB (within the limit) reserved 4 MiB before any
    /// of it came; now the room grows with what has arrived.
    #[test]
    fn an_announcement_reserves_no_more_than_what_has_arrived() {
        let mut announced = BytesMut::new();
        Header {
            command: command::WRITE_NOTIFY,
            payload_size: 200 << 20,
            data_type: 6,
            count: 25 << 20,
            p1: 1,
            p2: 2,
        }
        .put(&mut announced);
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&announced);
        assert_eq!(split_message(&mut buffer).unwrap(), None);
        assert!(buffer.capacity() <= 2 * READ_AHEAD, "{}", buffer.capacity());
        buffer.put_bytes(0, 1 << 20);
        assert_eq!(split_message(&mut buffer).unwrap(), None);
        assert!(buffer.capacity() <= 4 << 20, "{}", buffer.capacity());
    }

    #[test]
    fn an_absurd_size_is_an_error_not_an_allocation() {
        let mut buffer = BytesMut::from(
            &hex("00 0f ff ff 00 05 00 00 00 00 00 01 00 00 00 09 ff ff ff f0 00 10 00 00")[..],
        );
        assert!(matches!(
            split_message(&mut buffer),
            Err(CaError::TooLarge { .. })
        ));
    }
}
