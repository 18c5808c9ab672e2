//! ZeroMQ at the edge: sockets with bounded queues, and the multipart messages beamflow sends on
//! them. Everything inside the components is typed; only this module sees frames and bytes.
//!
//! `zmq` (libzmq 4.3.4) was chosen by measurement (docs/design.md): it has high-water marks, so a
//! stalled receiver makes the sender block instead of filling memory. Received frames become
//! `Bytes` that own libzmq's buffer, so no frame is copied after the kernel's read.

use beamflow_protocol::message::{decode_part, decode_report, encode_part_header, encode_report};
use beamflow_protocol::{CborError, EventData, EventReport};
use bytes::Bytes;

/// Messages a socket queues per peer before it pushes back (libzmq counts messages, not bytes).
pub const DEFAULT_HWM: i32 = 64;

/// A socket operation that failed, with what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// libzmq refused an operation.
    #[error("{operation} {endpoint}: {error}")]
    Zmq {
        /// What was being done (`bind`, `connect`, `send`, `receive`, ...).
        operation: &'static str,
        /// The endpoint, if known.
        endpoint: String,
        /// libzmq's error.
        error: zmq::Error,
    },
    /// The peer's queue is full (only with a non-blocking send): try again later.
    #[error("send queue full")]
    Full,
    /// Nothing arrived within the receive timeout.
    #[error("receive timed out")]
    TimedOut,
    /// A message that is not what this socket carries.
    #[error("malformed message: {0}")]
    Malformed(#[from] CborError),
    /// A multipart message without its first part.
    #[error("empty message")]
    Empty,
}

fn zmq_error<'a>(
    operation: &'static str,
    endpoint: &'a str,
) -> impl FnOnce(zmq::Error) -> TransportError + 'a {
    move |error| match error {
        zmq::Error::EAGAIN if operation == "send" => TransportError::Full,
        zmq::Error::EAGAIN => TransportError::TimedOut,
        error => TransportError::Zmq {
            operation,
            endpoint: endpoint.to_owned(),
            error,
        },
    }
}

/// A socket of `kind` with bounded queues, no linger on close, and a receive timeout so that
/// loops can notice shutdown.
pub fn socket(
    context: &zmq::Context,
    kind: zmq::SocketType,
    hwm: i32,
    receive_timeout_ms: i32,
) -> Result<zmq::Socket, TransportError> {
    let socket = context
        .socket(kind)
        .map_err(zmq_error("create socket", ""))?;
    socket
        .set_sndhwm(hwm)
        .map_err(zmq_error("set SNDHWM", ""))?;
    socket
        .set_rcvhwm(hwm)
        .map_err(zmq_error("set RCVHWM", ""))?;
    socket.set_linger(0).map_err(zmq_error("set LINGER", ""))?;
    socket
        .set_rcvtimeo(receive_timeout_ms)
        .map_err(zmq_error("set RCVTIMEO", ""))?;
    Ok(socket)
}

/// Binds to a free port on `host` and returns the endpoint peers connect to.
pub fn bind_any(socket: &zmq::Socket, host: &str) -> Result<String, TransportError> {
    let wanted = format!("tcp://{host}:*");
    socket.bind(&wanted).map_err(zmq_error("bind", &wanted))?;
    match socket
        .get_last_endpoint()
        .map_err(zmq_error("read endpoint of", &wanted))?
    {
        Ok(endpoint) => Ok(endpoint),
        Err(_) => Err(TransportError::Zmq {
            operation: "read endpoint of",
            endpoint: wanted,
            error: zmq::Error::EINVAL,
        }),
    }
}

/// Sends an event part as `[header, frames...]`. With `wait == false` a full queue is
/// [`TransportError::Full`] instead of blocking.
pub fn send_part(
    socket: &zmq::Socket,
    event: &EventData,
    wait: bool,
) -> Result<(), TransportError> {
    let flags = if wait { 0 } else { zmq::DONTWAIT };
    let frames: Vec<&Bytes> = event.streams.values().flat_map(|s| &s.frames).collect();
    let more = if frames.is_empty() { 0 } else { zmq::SNDMORE };
    socket
        .send(encode_part_header(event), flags | more)
        .map_err(zmq_error("send", ""))?;
    for (index, frame) in frames.iter().enumerate() {
        let more = if index + 1 < frames.len() {
            zmq::SNDMORE
        } else {
            0
        };
        // Once the first part is queued, libzmq queues the rest of the message atomically.
        socket
            .send(&frame[..], more)
            .map_err(zmq_error("send", ""))?;
    }
    Ok(())
}

/// Receives one event part.
pub fn recv_part(socket: &zmq::Socket) -> Result<EventData, TransportError> {
    let mut parts = recv_frames(socket)?.into_iter();
    let header = parts.next().ok_or(TransportError::Empty)?;
    Ok(decode_part(&header, parts.collect())?)
}

/// Sends a worker's report of one event.
pub fn send_report(socket: &zmq::Socket, report: &EventReport) -> Result<(), TransportError> {
    socket
        .send(encode_report(report), 0)
        .map_err(zmq_error("send", ""))
}

/// Receives a worker's report.
pub fn recv_report(socket: &zmq::Socket) -> Result<EventReport, TransportError> {
    let frames = recv_frames(socket)?;
    let first = frames.first().ok_or(TransportError::Empty)?;
    Ok(decode_report(first)?)
}

/// A received libzmq message as the owner of a `Bytes`, so frames are never copied.
struct Received(zmq::Message);

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn recv_frames(socket: &zmq::Socket) -> Result<Vec<Bytes>, TransportError> {
    let mut frames = Vec::new();
    loop {
        let message = socket.recv_msg(0).map_err(zmq_error("receive", ""))?;
        let more = message.get_more();
        frames.push(Bytes::from_owner(Received(message)));
        if !more {
            return Ok(frames);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::{EventNumber, StreamData};

    fn event(n: u64, frame_len: usize) -> EventData {
        let mut event = EventData::new(EventNumber(n));
        event.streams.insert(
            "det".into(),
            StreamData {
                typ: "STINS".into(),
                frames: vec![Bytes::from("{}"), Bytes::from(vec![7u8; frame_len])],
            },
        );
        event.streams.insert(
            "pcap".into(),
            StreamData {
                typ: "PCAP".into(),
                frames: vec![],
            },
        );
        event
    }

    #[test]
    fn event_parts_cross_a_real_socket_unchanged() {
        let context = zmq::Context::new();
        let push = socket(&context, zmq::PUSH, DEFAULT_HWM, 5_000).unwrap();
        let endpoint = bind_any(&push, "127.0.0.1").unwrap();
        let pull = socket(&context, zmq::PULL, DEFAULT_HWM, 5_000).unwrap();
        pull.connect(&endpoint).unwrap();
        let sent: Vec<EventData> = (0..3).map(|n| event(n, 1000 * n as usize)).collect();
        for e in &sent {
            send_part(&push, e, true).unwrap();
        }
        let received: Vec<EventData> = (0..3).map(|_| recv_part(&pull).unwrap()).collect();
        assert_eq!(received, sent);
    }

    #[test]
    fn a_stalled_receiver_pushes_back_instead_of_filling_memory() {
        let context = zmq::Context::new();
        let push = socket(&context, zmq::PUSH, 2, 5_000).unwrap();
        let endpoint = bind_any(&push, "127.0.0.1").unwrap();
        let pull = socket(&context, zmq::PULL, 2, 5_000).unwrap();
        pull.connect(&endpoint).unwrap();
        // The first send waits for the connection; later ones must hit the high-water mark long
        // before 1,000 MiB are queued (queues plus kernel buffers hold a few MiB).
        send_part(&push, &event(0, 1 << 20), true).unwrap();
        let full_after = (1..1000).find(|&n| {
            matches!(
                send_part(&push, &event(n, 1 << 20), false),
                Err(TransportError::Full)
            )
        });
        assert!(
            full_after.is_some_and(|n| n < 100),
            "sent {full_after:?} MiB before pushing back"
        );
        // Reading again drains the queue.
        assert_eq!(recv_part(&pull).unwrap().event_number, EventNumber(0));
    }

    #[test]
    fn garbage_is_a_malformed_message_not_a_crash() {
        let context = zmq::Context::new();
        let push = socket(&context, zmq::PUSH, DEFAULT_HWM, 5_000).unwrap();
        let endpoint = bind_any(&push, "127.0.0.1").unwrap();
        let pull = socket(&context, zmq::PULL, DEFAULT_HWM, 5_000).unwrap();
        pull.connect(&endpoint).unwrap();
        push.send("not cbor", 0).unwrap();
        assert!(matches!(
            recv_part(&pull),
            Err(TransportError::Malformed(_))
        ));
        push.send("not cbor", 0).unwrap();
        assert!(matches!(
            recv_report(&pull),
            Err(TransportError::Malformed(_))
        ));
    }

    #[test]
    fn receive_times_out_so_loops_can_stop() {
        let context = zmq::Context::new();
        let pull = socket(&context, zmq::PULL, DEFAULT_HWM, 10).unwrap();
        bind_any(&pull, "127.0.0.1").unwrap();
        assert!(matches!(recv_part(&pull), Err(TransportError::TimedOut)));
    }
}
