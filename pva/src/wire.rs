//! PV Access messages: the 8-byte header, control messages, segmentation, and a framer that
//! cuts a TCP byte stream (or a UDP datagram) into whole messages.
//!
//! Every message starts with `0xCA`, the protocol version, flags and a command, then the
//! payload's size (`u32` in the message's byte order). Flags: bit 0 marks a control message
//! (no payload; its size field carries data), bits 4–5 a segment (01 first, 11 middle, 10 last),
//! bit 6 a message from a server, bit 7 big-endian.

use bytes::{Buf, BytesMut};

use crate::PvaError;
use crate::pvdata::{ByteOrder, Encoder};

/// The header's first byte.
pub const MAGIC: u8 = 0xCA;
/// The protocol version beamflow speaks (pvxs and pvAccessCPP speak 2).
pub const VERSION: u8 = 2;
/// Bytes of a header.
pub const HEADER: usize = 8;

/// Application commands.
pub mod command {
    /// A server's periodic announcement (UDP).
    pub const BEACON: u8 = 0;
    /// Connection validation: the server's offer, the client's choice.
    pub const CONNECTION_VALIDATION: u8 = 1;
    /// Keep-alive.
    pub const ECHO: u8 = 2;
    /// Who has these channels (UDP, or TCP to a name server).
    pub const SEARCH: u8 = 3;
    /// I have them.
    pub const SEARCH_RESPONSE: u8 = 4;
    /// Open channels by name.
    pub const CREATE_CHANNEL: u8 = 7;
    /// Close a channel.
    pub const DESTROY_CHANNEL: u8 = 8;
    /// The server's verdict on validation.
    pub const CONNECTION_VALIDATED: u8 = 9;
    /// Read.
    pub const GET: u8 = 10;
    /// Write.
    pub const PUT: u8 = 11;
    /// Subscribe.
    pub const MONITOR: u8 = 13;
    /// End an operation.
    pub const DESTROY_REQUEST: u8 = 15;
    /// A channel's type only (`pvinfo`).
    pub const GET_FIELD: u8 = 17;
    /// A server's message to the client about an operation.
    pub const MESSAGE: u8 = 18;
    /// Remote procedure call.
    pub const RPC: u8 = 20;
    /// Cancel an operation.
    pub const CANCEL_REQUEST: u8 = 21;
    /// Prefixes a search that a server forwarded to the local multicast group: where it came
    /// from (pvxs, for several servers sharing UDP port 5076 on one host).
    pub const ORIGIN_TAG: u8 = 22;
}

/// Control commands (flag bit 0).
pub mod control {
    /// The server's first message on a connection: the byte order it sends (flag bit 7).
    pub const SET_BYTE_ORDER: u8 = 2;
    /// An echo request.
    pub const ECHO_REQUEST: u8 = 3;
    /// Its answer.
    pub const ECHO_RESPONSE: u8 = 4;
}

/// Subcommand bits of an operation's request.
pub mod subcommand {
    /// Create the operation (its pvRequest follows).
    pub const INIT: u8 = 0x08;
    /// Destroy it after this request.
    pub const DESTROY: u8 = 0x10;
    /// Put, then get (PUT's get part).
    pub const GET: u8 = 0x40;
    /// Process (PUT), or start/stop a monitor with [`START`].
    pub const PROCESS: u8 = 0x04;
    /// A monitor's start (with [`PROCESS`]); without it, stop.
    pub const START: u8 = 0x40;
    /// A pipelined monitor's acknowledgement of consumed updates.
    pub const PIPELINE_ACK: u8 = 0x80;
}

const CONTROL: u8 = 0x01;
const SEGMENT_MASK: u8 = 0x30;
const FIRST: u8 = 0x10;
const LAST: u8 = 0x20;
const MIDDLE: u8 = 0x30;
/// Flag bit 6: from a server.
pub const FROM_SERVER: u8 = 0x40;
const BIG_ENDIAN: u8 = 0x80;

/// A message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The flags byte.
    pub flags: u8,
    /// The command.
    pub command: u8,
    /// Payload bytes; a control message's data.
    pub size: u32,
}

impl Header {
    /// Reads a header from the first [`HEADER`] bytes; none if fewer arrived.
    pub fn parse(bytes: &[u8]) -> Result<Option<Self>, PvaError> {
        let Some(head) = bytes.get(..HEADER) else {
            return Ok(None);
        };
        if head[0] != MAGIC {
            return Err(PvaError::Malformed("not a PV Access message (no 0xCA)"));
        }
        let flags = head[2];
        let size = [head[4], head[5], head[6], head[7]];
        let size = if flags & BIG_ENDIAN != 0 {
            u32::from_be_bytes(size)
        } else {
            u32::from_le_bytes(size)
        };
        Ok(Some(Self {
            flags,
            command: head[3],
            size,
        }))
    }

    /// Whether it is a control message.
    pub fn is_control(&self) -> bool {
        self.flags & CONTROL != 0
    }

    /// The byte order of its payload.
    pub fn order(&self) -> ByteOrder {
        if self.flags & BIG_ENDIAN != 0 {
            ByteOrder::Big
        } else {
            ByteOrder::Little
        }
    }
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A control message and its data.
    Control {
        /// The command.
        command: u8,
        /// The header's size field.
        data: u32,
        /// The flags (bit 7 of `SET_BYTE_ORDER` names the byte order).
        flags: u8,
    },
    /// An application message, its segments joined.
    Message {
        /// The command.
        command: u8,
        /// The flags of its first segment.
        flags: u8,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// Cuts a byte stream into [`Frame`]s, joining segments; refuses any message (segments
/// together) larger than its limit.
#[derive(Debug)]
pub struct Framer {
    /// Bytes received, not yet framed.
    pub buf: BytesMut,
    limit: usize,
    /// A segmented message being joined: its command, flags and payload so far.
    joining: Option<(u8, u8, Vec<u8>)>,
}

impl Framer {
    /// A framer accepting messages of up to `limit` payload bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            limit,
            joining: None,
        }
    }

    /// The next whole message in the buffer, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, PvaError> {
        loop {
            let Some(header) = Header::parse(&self.buf)? else {
                return Ok(None);
            };
            if header.is_control() {
                self.buf.advance(HEADER);
                return Ok(Some(Frame::Control {
                    command: header.command,
                    data: header.size,
                    flags: header.flags,
                }));
            }
            let size = header.size as usize;
            let joined = self.joining.as_ref().map_or(0, |(_, _, p)| p.len());
            if joined.saturating_add(size) > self.limit {
                return Err(PvaError::TooLarge {
                    size: (joined + size) as u64,
                    limit: self.limit as u64,
                });
            }
            if self.buf.len() < HEADER + size {
                // Nothing is reserved for what the header announces: the buffer grows with
                // what arrives.
                return Ok(None);
            }
            self.buf.advance(HEADER);
            let payload = self.buf.split_to(size);
            match header.flags & SEGMENT_MASK {
                0 => {
                    if self.joining.is_some() {
                        return Err(PvaError::Malformed(
                            "unsegmented message inside a segmented one",
                        ));
                    }
                    return Ok(Some(Frame::Message {
                        command: header.command,
                        flags: header.flags,
                        payload: payload.to_vec(),
                    }));
                }
                FIRST => {
                    if self.joining.is_some() {
                        return Err(PvaError::Malformed(
                            "a first segment inside a segmented message",
                        ));
                    }
                    self.joining = Some((header.command, header.flags, payload.to_vec()));
                }
                MIDDLE | LAST => {
                    let Some((command, flags, mut joined)) = self.joining.take() else {
                        return Err(PvaError::Malformed("a segment with no first one"));
                    };
                    if command != header.command {
                        return Err(PvaError::Malformed("segments of different commands"));
                    }
                    joined.extend_from_slice(&payload);
                    if header.flags & SEGMENT_MASK == LAST {
                        return Ok(Some(Frame::Message {
                            command,
                            flags,
                            payload: joined,
                        }));
                    }
                    self.joining = Some((command, flags, joined));
                }
                _ => unreachable!("two bits"),
            }
        }
    }
}

/// Starts an application message in `out`; [`end`] writes its size.
pub fn begin(out: &mut Encoder, command: u8, from_server: bool) -> usize {
    let start = out.buf.len();
    let mut flags = if from_server { FROM_SERVER } else { 0 };
    if out.order == ByteOrder::Big {
        flags |= BIG_ENDIAN;
    }
    out.buf
        .extend_from_slice(&[MAGIC, VERSION, flags, command, 0, 0, 0, 0]);
    start
}

/// Ends the message [`begin`] started at `start`: its payload's size goes into its header.
pub fn end(out: &mut Encoder, start: usize) {
    let size = (out.buf.len() - start - HEADER) as u32;
    let bytes = match out.order {
        ByteOrder::Little => size.to_le_bytes(),
        ByteOrder::Big => size.to_be_bytes(),
    };
    out.buf[start + 4..start + HEADER].copy_from_slice(&bytes);
}

/// Appends a control message.
pub fn control_message(out: &mut Encoder, command: u8, data: u32, from_server: bool) {
    let mut flags = CONTROL | if from_server { FROM_SERVER } else { 0 };
    if out.order == ByteOrder::Big {
        flags |= BIG_ENDIAN;
    }
    out.buf.extend_from_slice(&[MAGIC, VERSION, flags, command]);
    let bytes = match out.order {
        ByteOrder::Little => data.to_le_bytes(),
        ByteOrder::Big => data.to_be_bytes(),
    };
    out.buf.extend_from_slice(&bytes);
}

/// The messages of one UDP datagram, in order: header and payload of each.
pub fn datagram_messages(datagram: &[u8]) -> Result<Vec<(Header, &[u8])>, PvaError> {
    let mut messages = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let header = Header::parse(rest)?.ok_or(PvaError::Truncated)?;
        let size = if header.is_control() {
            0
        } else {
            header.size as usize
        };
        let payload = rest.get(HEADER..HEADER + size).ok_or(PvaError::Truncated)?;
        messages.push((header, payload));
        rest = &rest[HEADER + size..];
    }
    Ok(messages)
}

/// A 16-byte address field: IPv4 as an IPv4-mapped IPv6 address (zeros for "the sender's").
pub fn put_address(out: &mut Encoder, address: std::net::IpAddr) {
    let v6 = match address {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    out.buf.extend_from_slice(&v6.octets());
}

/// Reads a 16-byte address field.
pub fn get_address(input: &mut crate::pvdata::Decoder<'_>) -> Result<std::net::IpAddr, PvaError> {
    let bytes: [u8; 16] = input
        .take(16)?
        .try_into()
        .map_err(|_| PvaError::Truncated)?;
    let v6 = std::net::Ipv6Addr::from(bytes);
    Ok(v6
        .to_ipv4_mapped()
        .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(command: u8, segment: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Encoder::new(ByteOrder::Little);
        let start = begin(&mut out, command, true);
        out.buf.extend_from_slice(payload);
        end(&mut out, start);
        out.buf[2] |= segment;
        out.buf
    }

    #[test]
    fn segments_are_joined_and_control_messages_pass_between() {
        let mut framer = Framer::new(1024);
        framer
            .buf
            .extend_from_slice(&message(command::MONITOR, FIRST, b"ab"));
        let mut out = Encoder::new(ByteOrder::Big);
        control_message(&mut out, control::SET_BYTE_ORDER, 0, true);
        framer.buf.extend_from_slice(&out.buf);
        framer
            .buf
            .extend_from_slice(&message(command::MONITOR, MIDDLE, b"cd"));
        let last = message(command::MONITOR, LAST, b"e");
        framer.buf.extend_from_slice(&last[..5]);
        assert!(matches!(
            framer.next_frame().unwrap(),
            Some(Frame::Control { command: control::SET_BYTE_ORDER, flags, .. }) if flags & BIG_ENDIAN != 0
        ));
        assert_eq!(
            framer.next_frame().unwrap(),
            None,
            "the last segment is incomplete"
        );
        framer.buf.extend_from_slice(&last[5..]);
        let Some(Frame::Message {
            command, payload, ..
        }) = framer.next_frame().unwrap()
        else {
            panic!("a message");
        };
        assert_eq!((command, &payload[..]), (command::MONITOR, &b"abcde"[..]));
    }

    #[test]
    fn a_message_past_the_limit_is_refused_before_its_payload_arrives() {
        let mut framer = Framer::new(16);
        let mut big = message(command::GET, 0, &[0; 17]);
        big.truncate(HEADER);
        framer.buf.extend_from_slice(&big);
        assert!(matches!(
            framer.next_frame(),
            Err(PvaError::TooLarge {
                size: 17,
                limit: 16
            })
        ));
        let mut framer = Framer::new(16);
        framer.buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert!(matches!(framer.next_frame(), Err(PvaError::Malformed(_))));
    }

    #[test]
    fn a_datagram_holds_several_messages() {
        let mut bytes = message(command::ORIGIN_TAG, 0, &[0; 16]);
        bytes.extend(message(command::SEARCH, 0, b"xyz"));
        let messages = datagram_messages(&bytes).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].0.command, command::SEARCH);
        assert_eq!(messages[1].1, b"xyz");
        assert!(datagram_messages(&bytes[..bytes.len() - 1]).is_err());
    }
}
