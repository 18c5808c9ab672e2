//! ZeroMQ at the edge: sockets with bounded queues, and the multipart messages beamflow sends on
//! them. Everything inside the components is typed; only this crate sees frames and bytes.
//!
//! `zmq` (libzmq 4.3.4) was chosen by measurement (docs/design.md): it has high-water marks, so a
//! stalled receiver makes the sender block instead of filling memory. Received frames become
//! `Bytes` that own libzmq's buffer, so no frame is copied after the kernel's read, and large
//! frames are sent by lending libzmq the `Bytes` (`ffi.rs`), so an ingester forwards
//! upstream frames, to one worker or many, and keeps them for re-sending, without a copy.
//!
//! | hop | pattern |
//! | --- | --- |
//! | ingester → worker | PUSH (one per worker) → PULL (the worker binds) |
//! | worker → reducer | PUSH → PULL (the reducer binds) |
//! | component ↔ controller | DEALER → ROUTER (the controller binds), [`control`] messages |
//!
//! What every component loop does besides its own work (hello on time, the controller's
//! reachability, a repeated scan, messages ahead of their scan, malformed ones) is one shape in
//! `link.rs`: [`ControlLink`], [`Early`], [`Malformed`].
//!
//! Who may come in over HTTP and where names from outside may lead are edges too: [`http`]
//! (the route tables, the one error body, and the [`http::Access`] guard with the bearer token),
//! [`token`] (where the token comes from), [`files`] (the roots files named from outside are
//! confined to).

pub mod curve;
mod ffi;
pub mod files;
pub mod http;
mod link;
pub mod token;

pub use ffi::reuse_large_buffers;
pub use link::{
    ControlLink, Early, FirstSeen, Introduction, Malformed, Reachable, UNREACHABLE_AFTER,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use beamflow_protocol::control;
use beamflow_protocol::message::{decode_parts, decode_report, encode_part_header, encode_report};
use beamflow_protocol::{
    CborError, EventData, EventReport, ParameterDescription, ParameterName, Parameters,
};
use bytes::Bytes;

/// Messages a control socket queues per peer. A ROUTER drops (rather than blocks) past its
/// high-water mark, so this is far above what a window of leases can produce.
pub const CONTROL_HWM: i32 = 100_000;

/// A number that differs for every component started, in this process or another: the process
/// id, the start time and a counter, mixed.
pub fn instance_id() -> u64 {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = STARTED.fetch_add(1, Ordering::Relaxed);
    nanos ^ (u64::from(std::process::id()) << 40) ^ count.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A shared "please stop" flag for component loops, which check it between receive timeouts.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A flag not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every loop holding a clone to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether stopping was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

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

/// Makes `socket` a server of beamflow's own peers on `plane`: with the pipeline's keys
/// ([`curve::use_keys`]) it admits only peers that hold them, and counts the others. Call before
/// binding.
pub fn as_server(
    context: &zmq::Context,
    socket: &zmq::Socket,
    plane: curve::Plane,
) -> Result<(), TransportError> {
    curve::serve(context, socket, plane).map_err(zmq_error("secure", ""))
}

/// Binds to a free port on `host` and returns the endpoint peers connect to.
pub fn bind_any(socket: &zmq::Socket, host: &str) -> Result<String, TransportError> {
    if !curve::is_secured() && !is_loopback(host) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                host,
                "ZeroMQ sockets bind beyond loopback without keys: whoever reaches them can join the pipeline. Make keys with `beamflow keys --out DIR` and pass --keys DIR (or BEAMFLOW_KEYS) to every component."
            );
        });
    }
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

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Sends event parts of scan `scan` as one message, `[header, frames..., header, frames...]`.
/// Frames of 32 KiB or more are lent to libzmq, not copied. With
/// `wait == false` a full queue is [`TransportError::Full`] instead of blocking.
pub fn send_parts<'a>(
    socket: &mut zmq::Socket,
    scan: u64,
    parts: impl IntoIterator<Item = &'a EventData>,
    wait: bool,
) -> Result<(), TransportError> {
    enum Frame<'a> {
        Header(Vec<u8>),
        Data(&'a Bytes),
    }
    let mut flags = if wait { 0 } else { zmq::DONTWAIT };
    let frames = parts.into_iter().flat_map(|part| {
        let data = part.streams.values().flat_map(|s| &s.frames);
        std::iter::once(Frame::Header(encode_part_header(scan, part))).chain(data.map(Frame::Data))
    });
    let mut frames = frames.peekable();
    while let Some(frame) = frames.next() {
        let more = if frames.peek().is_some() {
            zmq::SNDMORE
        } else {
            0
        };
        let sent = match frame {
            Frame::Header(header) => socket.send(header, flags | more),
            Frame::Data(data) if data.len() >= ffi::MIN_SHARED => {
                ffi::send(socket, data, flags | more)
            }
            Frame::Data(data) => socket.send(&data[..], flags | more),
        };
        sent.map_err(zmq_error("send", ""))?;
        // Once the first frame is queued, libzmq queues the rest of the message atomically.
        flags = 0;
    }
    Ok(())
}

/// Receives one message of event parts, each with its scan.
pub fn recv_parts(socket: &zmq::Socket) -> Result<Vec<(u64, EventData)>, TransportError> {
    Ok(decode_parts(recv_frames(socket)?)?)
}

/// Sends worker reports of scan `scan` as one message, a report per frame.
pub fn send_reports<'a>(
    socket: &zmq::Socket,
    scan: u64,
    reports: impl IntoIterator<Item = &'a EventReport>,
) -> Result<(), TransportError> {
    let mut reports = reports.into_iter().peekable();
    let mut flags = 0;
    while let Some(report) = reports.next() {
        let more = if reports.peek().is_some() {
            zmq::SNDMORE
        } else {
            0
        };
        socket
            .send(encode_report(scan, report), flags | more)
            .map_err(zmq_error("send", ""))?;
        flags = 0;
    }
    Ok(())
}

/// Receives one message of worker reports, each with its scan.
pub fn recv_reports(socket: &zmq::Socket) -> Result<Vec<(u64, EventReport)>, TransportError> {
    recv_frames(socket)?
        .iter()
        .map(|frame| Ok(decode_report(frame)?))
        .collect()
}

/// A received libzmq message as the owner of a `Bytes`, so frames are never copied.
struct Received(zmq::Message);

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Receives one multipart message as frames that own libzmq's buffers.
pub fn recv_frames(socket: &zmq::Socket) -> Result<Vec<Bytes>, TransportError> {
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

/// Receives one multipart message if one arrives within `timeout`; `None` if none did.
/// `endpoint` names the peer in errors.
pub fn recv_frames_within(
    socket: &zmq::Socket,
    endpoint: &str,
    timeout: std::time::Duration,
) -> Result<Option<Vec<Bytes>>, TransportError> {
    let mut items = [socket.as_poll_item(zmq::POLLIN)];
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    if zmq::poll(&mut items, timeout_ms).map_err(zmq_error("poll", endpoint))? == 0 {
        return Ok(None);
    }
    match recv_frames(socket) {
        Ok(frames) => Ok(Some(frames)),
        Err(TransportError::TimedOut) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Connects `socket` to `endpoint`.
pub fn connect(socket: &zmq::Socket, endpoint: &str) -> Result<(), TransportError> {
    socket
        .connect(endpoint)
        .map_err(zmq_error("connect", endpoint))
}

/// A PUSH socket connected to `endpoint` whose sends wait at most `send_timeout_ms` on a full
/// queue before answering [`TransportError::Full`], so the sending loop can see to other things
/// (the controller, a stop) while a receiver is slow.
pub fn push_to(
    context: &zmq::Context,
    endpoint: &str,
    send_timeout_ms: i32,
) -> Result<zmq::Socket, TransportError> {
    let push = socket(context, zmq::PUSH, DEFAULT_HWM, 0)?;
    push.set_sndtimeo(send_timeout_ms)
        .map_err(zmq_error("set SNDTIMEO", endpoint))?;
    curve::join(&push, curve::Plane::Data).map_err(zmq_error("secure", endpoint))?;
    connect(&push, endpoint)?;
    Ok(push)
}

/// Parameter values as the controller sends them, typed by `descriptions`. If one does not
/// parse, every parameter keeps its default, and the error is logged.
pub fn parameters(
    values: Vec<(ParameterName, control::ByteVec)>,
    descriptions: &[ParameterDescription],
) -> Parameters {
    let raw = values
        .into_iter()
        .map(|(name, data)| (name, Bytes::from(Vec::from(data))));
    Parameters::resolve(raw, descriptions).unwrap_or_else(|error| {
        tracing::warn!(%error, "Parameters rejected; using defaults.");
        Parameters::resolve(std::iter::empty(), descriptions).unwrap_or_default()
    })
}

/// A component's control socket: a DEALER connected to the controller's ROUTER, whose identity
/// names the component's role, name and process instance.
pub fn control_client(
    context: &zmq::Context,
    controller: &str,
    identity: &str,
) -> Result<zmq::Socket, TransportError> {
    let socket = socket(context, zmq::DEALER, CONTROL_HWM, 0)?;
    socket
        .set_identity(identity.as_bytes())
        .map_err(zmq_error("set IDENTITY", controller))?;
    curve::join(&socket, curve::Plane::Control).map_err(zmq_error("secure", controller))?;
    connect(&socket, controller)?;
    Ok(socket)
}

/// Sends a control message to the controller. Control messages are small and the queue is
/// deep; a full queue means the controller is gone, and the message is dropped (the next
/// heartbeat says it all again).
pub fn send_to_controller(
    socket: &zmq::Socket,
    message: &control::ToController,
) -> Result<(), TransportError> {
    socket
        .send(control::encode(message), zmq::DONTWAIT)
        .map_err(zmq_error("send", ""))
}

/// Receives a control message from the controller, if one is waiting.
pub fn try_recv_from_controller(
    socket: &zmq::Socket,
) -> Result<Option<control::FromController>, TransportError> {
    match recv_frames_nowait(socket)? {
        None => Ok(None),
        Some(frames) => {
            let first = frames.first().ok_or(TransportError::Empty)?;
            Ok(Some(control::decode(first)?))
        }
    }
}

/// The controller's end: sends `message` to the component with `identity`.
pub fn send_to_component(
    router: &zmq::Socket,
    identity: &[u8],
    message: &control::FromController,
) -> Result<(), TransportError> {
    router
        .send(identity, zmq::SNDMORE | zmq::DONTWAIT)
        .map_err(zmq_error("send", ""))?;
    router
        .send(control::encode(message), zmq::DONTWAIT)
        .map_err(zmq_error("send", ""))
}

/// A message from a component as the controller's ROUTER gets it: the sender's identity, and
/// the message or why it did not decode.
pub type FromComponent = (Bytes, Result<control::ToController, CborError>);

/// The controller's end: the next message from a component, if one is waiting.
pub fn try_recv_from_component(
    router: &zmq::Socket,
) -> Result<Option<FromComponent>, TransportError> {
    let Some(frames) = recv_frames_nowait(router)? else {
        return Ok(None);
    };
    let mut frames = frames.into_iter();
    let identity = frames.next().ok_or(TransportError::Empty)?;
    let body = frames.next().ok_or(TransportError::Empty)?;
    Ok(Some((identity, control::decode(&body))))
}

fn recv_frames_nowait(socket: &zmq::Socket) -> Result<Option<Vec<Bytes>>, TransportError> {
    match socket.recv_msg(zmq::DONTWAIT) {
        Ok(first) => {
            let more = first.get_more();
            let mut frames = vec![Bytes::from_owner(Received(first))];
            if more {
                // The rest of a multipart message is already here: libzmq delivers it whole.
                frames.extend(recv_frames(socket)?);
            }
            Ok(Some(frames))
        }
        Err(zmq::Error::EAGAIN) => Ok(None),
        Err(error) => Err(zmq_error("receive", "")(error)),
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
        let mut push = socket(&context, zmq::PUSH, DEFAULT_HWM, 5_000).unwrap();
        let endpoint = bind_any(&push, "127.0.0.1").unwrap();
        let pull = socket(&context, zmq::PULL, DEFAULT_HWM, 5_000).unwrap();
        pull.connect(&endpoint).unwrap();
        // Frames below and above the size from which they are lent instead of copied.
        let sent: Vec<EventData> = (0..4).map(|n| event(n, 20_000 * n as usize)).collect();
        send_parts(&mut push, 7, &sent[..1], true).unwrap();
        send_parts(&mut push, 7, &sent[1..], true).unwrap();
        let one = recv_parts(&pull).unwrap();
        let batch = recv_parts(&pull).unwrap();
        assert_eq!(
            batch.len(),
            3,
            "one message carries the three parts sent together"
        );
        let received: Vec<EventData> = one
            .into_iter()
            .chain(batch)
            .map(|(scan, event)| {
                assert_eq!(scan, 7);
                event
            })
            .collect();
        assert_eq!(received, sent);
    }

    #[test]
    fn reports_cross_a_real_socket_as_one_message() {
        let context = zmq::Context::new();
        let push = socket(&context, zmq::PUSH, DEFAULT_HWM, 5_000).unwrap();
        let endpoint = bind_any(&push, "127.0.0.1").unwrap();
        let pull = socket(&context, zmq::PULL, DEFAULT_HWM, 5_000).unwrap();
        pull.connect(&endpoint).unwrap();
        let reports: Vec<EventReport> = (0..3)
            .map(|n| EventReport {
                event_number: EventNumber(n),
                worker: "w1".into(),
                results: vec![],
                missing: vec![],
            })
            .collect();
        send_reports(&push, 2, &reports).unwrap();
        let received = recv_reports(&pull).unwrap();
        assert_eq!(
            received,
            reports.into_iter().map(|r| (2, r)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_stalled_receiver_pushes_back_instead_of_filling_memory() {
        let context = zmq::Context::new();
        let mut push = socket(&context, zmq::PUSH, 2, 5_000).unwrap();
        let endpoint = bind_any(&push, "127.0.0.1").unwrap();
        let pull = socket(&context, zmq::PULL, 2, 5_000).unwrap();
        pull.connect(&endpoint).unwrap();
        // The first send waits for the connection; later ones must hit the high-water mark long
        // before 1,000 MiB are queued (queues plus kernel buffers hold a few MiB).
        send_parts(&mut push, 1, [&event(0, 1 << 20)], true).unwrap();
        let full_after = (1..1000).find(|&n| {
            matches!(
                send_parts(&mut push, 1, [&event(n, 1 << 20)], false),
                Err(TransportError::Full)
            )
        });
        assert!(
            full_after.is_some_and(|n| n < 100),
            "sent {full_after:?} MiB before pushing back"
        );
        // Reading again drains the queue.
        assert_eq!(recv_parts(&pull).unwrap()[0].1.event_number, EventNumber(0));
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
            recv_parts(&pull),
            Err(TransportError::Malformed(_))
        ));
        push.send("not cbor", 0).unwrap();
        assert!(matches!(
            recv_reports(&pull),
            Err(TransportError::Malformed(_))
        ));
    }

    #[test]
    fn control_messages_reach_the_controller_and_back_by_identity() {
        use beamflow_protocol::control::{FromController, Hello, Role, ToController};
        let context = zmq::Context::new();
        let router = socket(&context, zmq::ROUTER, CONTROL_HWM, 5_000).unwrap();
        let endpoint = bind_any(&router, "127.0.0.1").unwrap();
        let dealer = control_client(&context, &endpoint, "worker:w1:1").unwrap();
        let hello = ToController::Hello(Hello {
            role: Role::Worker,
            name: "w1".into(),
            instance: 1,
            tags: vec![],
            streams: vec![],
            endpoint: None,
            status: control::ComponentStatus::empty(Role::Worker),
        });
        send_to_controller(&dealer, &hello).unwrap();
        // Blocking receive (5 s timeout) of the first message, then a non-blocking one.
        let frames = recv_frames(&router).unwrap();
        assert_eq!(&frames[0][..], b"worker:w1:1");
        assert_eq!(control::decode::<ToController>(&frames[1]).unwrap(), hello);
        assert!(try_recv_from_component(&router).unwrap().is_none());
        let finish = FromController::Finish { scan: 3 };
        send_to_component(&router, b"worker:w1:1", &finish).unwrap();
        dealer.set_rcvtimeo(5_000).unwrap();
        let frames = recv_frames(&dealer).unwrap();
        assert_eq!(
            control::decode::<FromController>(&frames[0]).unwrap(),
            finish
        );
    }

    #[test]
    fn receive_times_out_so_loops_can_stop() {
        let context = zmq::Context::new();
        let pull = socket(&context, zmq::PULL, DEFAULT_HWM, 10).unwrap();
        bind_any(&pull, "127.0.0.1").unwrap();
        assert!(matches!(recv_parts(&pull), Err(TransportError::TimedOut)));
    }
}
