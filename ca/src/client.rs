//! A Channel Access client that monitors PVs: it finds each name by UDP search, opens one TCP
//! circuit per server, subscribes to the TIME form of each PV's native type, and reports every
//! update, connection and loss. A lost circuit sends its PVs back to searching, so a restarted
//! IOC is picked up without anyone's help. Monitored PVs can also be written ([`Put`], answered
//! once the server has applied the value) and asked for their control limits ([`ReadControl`]).
//!
//! A server whose circuits keep failing (it closes them, or sends what cannot be read) is
//! reconnected to with back-off: [`RETRY_MIN`] after the first failure, doubling up to
//! [`RETRY_MAX`], and back to the start once a circuit has stayed up for [`HEALTHY_AFTER`]. The
//! first failure of a run is logged, the others only counted ([`MonitorEvent::CircuitLost`]), so
//! a hostile or broken server costs a few connections a minute and a line, not a storm.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::CaError;
use crate::dbr::{CTRL_DOUBLE, CtrlDouble, Native, TimeValue, Values};
use crate::wire::{
    self, DEFAULT_PORT, DONT_REPLY, ECA_NORMAL, Header, MINOR_VERSION, command, name_payload,
    put_message, split_message,
};

/// Where to search for PVs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Search destinations (`EPICS_CA_ADDR_LIST`, with broadcast addresses allowed).
    pub addr_list: Vec<SocketAddr>,
}

impl ClientConfig {
    /// `EPICS_CA_ADDR_LIST` (`host[:port]`, whitespace-separated; port `EPICS_CA_SERVER_PORT`
    /// or 5064), plus the local broadcast address unless `EPICS_CA_AUTO_ADDR_LIST=NO`.
    pub fn from_env() -> Self {
        let port = std::env::var("EPICS_CA_SERVER_PORT")
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(DEFAULT_PORT);
        let mut addr_list = parse_addr_list(
            &std::env::var("EPICS_CA_ADDR_LIST").unwrap_or_default(),
            port,
        );
        let auto = std::env::var("EPICS_CA_AUTO_ADDR_LIST")
            .map(|v| !v.trim().eq_ignore_ascii_case("no"))
            .unwrap_or(true);
        if auto {
            addr_list.push(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, port)));
        }
        Self { addr_list }
    }
}

/// Parses `host[:port] ...` (IPv4 addresses or resolvable names), skipping what does not parse.
pub fn parse_addr_list(text: &str, default_port: u16) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.split_whitespace()
        .filter_map(|entry| {
            let with_port = if entry.contains(':') {
                entry.to_owned()
            } else {
                format!("{entry}:{default_port}")
            };
            let resolved = with_port.to_socket_addrs().ok()?.find(SocketAddr::is_ipv4);
            if resolved.is_none() {
                warn!(
                    entry,
                    "EPICS_CA_ADDR_LIST entry ignored: not an IPv4 host[:port]."
                );
            }
            resolved
        })
        .collect()
}

/// What a monitor reports, by the PV's index in the list it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    /// The PV was found and subscribed to.
    Connected {
        /// The PV.
        pv: usize,
        /// The server.
        server: SocketAddr,
        /// Its native type.
        native: Native,
        /// Its element count (maximum, for arrays).
        count: u32,
    },
    /// A new value (the first one right after connecting).
    Update {
        /// The PV.
        pv: usize,
        /// The value with its alarm and time stamp.
        value: TimeValue,
    },
    /// The PV's server went away or dropped it; it is searched for again.
    Disconnected {
        /// The PV.
        pv: usize,
    },
    /// An update of the PV was skipped: it could not be read (a payload too short for its type
    /// and count, a type beamflow does not read) or carried an error status.
    Malformed {
        /// The PV.
        pv: usize,
        /// What was wrong with it.
        error: String,
    },
    /// A circuit to a server failed or closed; its PVs follow as [`MonitorEvent::Disconnected`]
    /// and are searched for again once `retry_in` has passed.
    CircuitLost {
        /// The server.
        server: SocketAddr,
        /// The PVs the circuit carried.
        pvs: Vec<usize>,
        /// Why it ended.
        error: String,
        /// Failures of circuits to this server in a row, this one included.
        failures: u64,
        /// How long the client waits before it connects to the server again.
        retry_in: Duration,
    },
}

/// Search period bounds: fast at first, then backing off while a name stays unresolved.
const SEARCH_MIN: Duration = Duration::from_millis(50);
const SEARCH_MAX: Duration = Duration::from_secs(2);

/// A circuit silent this long is sent an ECHO; one silent twice this long is dropped.
const ECHO_AFTER: Duration = Duration::from_secs(5);

/// The wait before connecting again to a server whose circuit just failed for the first time
/// (an IOC restarting is back almost at once).
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between failing circuits to one server.
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// A circuit that stayed up this long was healthy: the next failure starts the back-off over.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// The highest command code of the protocol (`SERVER_DISCONN`); a server sending a higher one
/// speaks something else, and its circuit is dropped, as libca does.
const LAST_COMMAND: u16 = command::SERVER_DISCONN;

enum Circuit {
    Event(MonitorEvent),
    Closed {
        server: SocketAddr,
        pvs: Vec<usize>,
        error: String,
    },
}

/// One server's record of failing circuits.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// Failures in a row.
    failures: u64,
    /// The last wait.
    delay: Duration,
    /// No circuit to the server before this.
    not_before: Instant,
}

impl Retry {
    /// The back-off after a circuit that lived `lived` failed, following `previous`.
    fn after(previous: Option<Self>, lived: Duration, now: Instant) -> Self {
        let (failures, delay) = match previous {
            Some(retry) if lived < HEALTHY_AFTER => {
                (retry.failures + 1, (retry.delay * 2).min(RETRY_MAX))
            }
            _ => (1, RETRY_MIN),
        };
        Self {
            failures,
            delay,
            not_before: now + delay,
        }
    }
}

/// A write of one number to a monitored PV (by its index), as DBR_DOUBLE with WRITE_NOTIFY.
#[derive(Debug)]
pub struct Put {
    /// The PV.
    pub pv: usize,
    /// The value.
    pub value: f64,
    /// Answered with `Ok` once the server applied it, or why not.
    pub done: oneshot::Sender<Result<(), PutError>>,
}

/// A read of a monitored PV (by its index) as DBR_CTRL_DOUBLE with READ_NOTIFY: its control
/// limits (an `ao` record's DRVL/DRVH), alarm limits, units and value, for a writer to check
/// what it is about to write.
#[derive(Debug)]
pub struct ReadControl {
    /// The PV.
    pub pv: usize,
    /// Answered with what the server sent, or why not.
    pub done: oneshot::Sender<Result<CtrlDouble, PutError>>,
}

/// What [`monitor_and_put`] is asked to do with a monitored PV.
#[derive(Debug)]
pub enum Command {
    /// Write a value.
    Put(Put),
    /// Read its control limits.
    ReadControl(ReadControl),
}

impl Command {
    fn pv(&self) -> usize {
        match self {
            Command::Put(put) => put.pv,
            Command::ReadControl(read) => read.pv,
        }
    }

    /// Answers the asker that the command failed.
    fn fail(self, error: PutError) {
        match self {
            Command::Put(put) => {
                let _ = put.done.send(Err(error));
            }
            Command::ReadControl(read) => {
                let _ = read.done.send(Err(error));
            }
        }
    }
}

/// Why a [`Put`] was not applied, or a [`ReadControl`] not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The circuit to the PV's server closed before the answer.
    #[error("the circuit closed")]
    CircuitClosed,
    /// The PV has no server yet.
    #[error("the PV is not connected")]
    NotConnected,
    /// The server has not created the PV's channel yet.
    #[error("the channel is not created yet")]
    NotCreated,
    /// The server answered with this CA status instead of `ECA_NORMAL`.
    #[error("the server refused the request (CA status {0})")]
    Refused(u32),
    /// The server's answer to a read does not decode.
    #[error("the server's answer does not decode: {0}")]
    Malformed(CaError),
}

/// What a circuit is asked to do.
enum Request {
    Create(usize, String),
    Command(Command),
}

/// A command sent to the server, waiting for its answer by I/O id.
enum Waiting {
    Put(oneshot::Sender<Result<(), PutError>>),
    Control(oneshot::Sender<Result<CtrlDouble, PutError>>),
}

impl Waiting {
    /// Answers the asker with the server's answer (a WRITE_NOTIFY or READ_NOTIFY).
    fn answer(self, message: &wire::Message) {
        let status = message.header.p1;
        match self {
            Waiting::Put(done) => {
                let _ = done.send(if status == ECA_NORMAL {
                    Ok(())
                } else {
                    Err(PutError::Refused(status))
                });
            }
            Waiting::Control(done) => {
                let _ = done.send(if status == ECA_NORMAL {
                    CtrlDouble::read(&message.payload).map_err(PutError::Malformed)
                } else {
                    Err(PutError::Refused(status))
                });
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PvState {
    Searching { next: Instant, period: Duration },
    Found,
}

/// Monitors `names` until the returned future is dropped, calling `on_event` for every event.
pub async fn monitor(
    config: ClientConfig,
    names: Vec<String>,
    on_event: impl FnMut(MonitorEvent) + Send,
) -> std::io::Result<()> {
    let (_no_puts, puts) = mpsc::channel(1);
    monitor_and_put(config, names, puts, on_event).await
}

/// [`monitor`], and sends what arrives on `commands` (writes, reads of control limits) to the
/// PVs' servers.
pub async fn monitor_and_put(
    config: ClientConfig,
    names: Vec<String>,
    mut commands: mpsc::Receiver<Command>,
    mut on_event: impl FnMut(MonitorEvent) + Send,
) -> std::io::Result<()> {
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    udp.set_broadcast(true)?;
    let now = Instant::now();
    let mut states = vec![
        PvState::Searching {
            next: now,
            period: SEARCH_MIN,
        };
        names.len()
    ];
    // Open circuits with when they were opened, and each failing server's back-off.
    let mut circuits: HashMap<SocketAddr, (mpsc::Sender<Request>, Instant)> = HashMap::new();
    let mut retries: HashMap<SocketAddr, Retry> = HashMap::new();
    let mut servers: Vec<Option<SocketAddr>> = vec![None; names.len()];
    let mut puts_open = true;
    let (circuit_tx, mut circuit_rx) = mpsc::channel::<Circuit>(1024);
    let mut buffer = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        send_searches(&udp, &config, &names, &mut states, now).await;
        let wake = states
            .iter()
            .filter_map(|s| match s {
                PvState::Searching { next, .. } => Some(*next),
                PvState::Found => None,
            })
            .min()
            .unwrap_or(now + SEARCH_MAX);
        tokio::select! {
            received = udp.recv_from(&mut buffer) => {
                let Ok((len, from)) = received else { continue };
                let now = Instant::now();
                for (pv, server) in search_replies(&buffer[..len], from) {
                    let Some(state) = states.get_mut(pv) else { continue };
                    if *state == PvState::Found {
                        continue;
                    }
                    // A failing server is not connected to again before its back-off is over:
                    // the PV stays searching (its next search is due by then).
                    if let Some(retry) = retries.get(&server)
                        && retry.not_before > now
                        && !circuits.contains_key(&server)
                    {
                        continue;
                    }
                    *state = PvState::Found;
                    servers[pv] = Some(server);
                    let name = names[pv].clone();
                    match circuits.get(&server) {
                        Some((circuit, _)) if circuit.send(Request::Create(pv, name.clone())).await.is_ok() => {}
                        _ => {
                            let (tx, rx) = mpsc::channel(names.len().max(1) + 16);
                            let _ = tx.send(Request::Create(pv, name)).await;
                            circuits.insert(server, (tx, now));
                            tokio::spawn(run_circuit(server, rx, circuit_tx.clone()));
                        }
                    }
                }
            }
            Some(message) = circuit_rx.recv() => match message {
                Circuit::Event(event) => {
                    if let MonitorEvent::Disconnected { pv } = event
                        && let Some(state) = states.get_mut(pv)
                    {
                        *state = PvState::Searching { next: Instant::now(), period: SEARCH_MIN };
                        servers[pv] = None;
                    }
                    on_event(event);
                }
                Circuit::Closed { server, pvs, error } => {
                    let now = Instant::now();
                    let lived = circuits
                        .remove(&server)
                        .map_or(Duration::ZERO, |(_, opened)| now.duration_since(opened));
                    let retry = Retry::after(retries.get(&server).copied(), lived, now);
                    retries.insert(server, retry);
                    let Retry { failures, delay, not_before } = retry;
                    // The first failure of a run is news; the ones after it, while the server
                    // keeps failing, are counted by whoever watches the events.
                    if failures == 1 {
                        warn!(%server, %error, retry_in_ms = delay.as_millis() as u64,
                            "CA circuit lost; its PVs are searched for again (with back-off while it keeps failing).");
                    } else {
                        debug!(%server, %error, failures, retry_in_ms = delay.as_millis() as u64,
                            "CA circuit failed again.");
                    }
                    on_event(MonitorEvent::CircuitLost {
                        server,
                        pvs: pvs.clone(),
                        error,
                        failures,
                        retry_in: delay,
                    });
                    for pv in pvs {
                        if let Some(state) = states.get_mut(pv) {
                            *state = PvState::Searching { next: not_before, period: SEARCH_MIN };
                            servers[pv] = None;
                        }
                        on_event(MonitorEvent::Disconnected { pv });
                    }
                }
            },
            command = commands.recv(), if puts_open => match command {
                Some(command) => {
                    let circuit = servers
                        .get(command.pv())
                        .copied()
                        .flatten()
                        .and_then(|server| circuits.get(&server));
                    match circuit {
                        Some((circuit, _)) => {
                            if let Err(mpsc::error::SendError(Request::Command(command))) =
                                circuit.send(Request::Command(command)).await
                            {
                                command.fail(PutError::CircuitClosed);
                            }
                        }
                        None => command.fail(PutError::NotConnected),
                    }
                }
                None => puts_open = false,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

async fn send_searches(
    udp: &UdpSocket,
    config: &ClientConfig,
    names: &[String],
    states: &mut [PvState],
    now: Instant,
) {
    let mut datagram = BytesMut::new();
    let flush = |datagram: &mut BytesMut| {
        let bytes = datagram.split().freeze();
        let addresses = config.addr_list.clone();
        async move {
            for address in addresses {
                if let Err(error) = udp.send_to(&bytes, address).await {
                    debug!(%address, %error, "CA search not sent.");
                }
            }
        }
    };
    for (pv, state) in states.iter_mut().enumerate() {
        let PvState::Searching { next, period } = state else {
            continue;
        };
        if *next > now {
            continue;
        }
        *next = now + *period;
        *period = (*period * 2).min(SEARCH_MAX);
        if datagram.is_empty() {
            Header::new(command::VERSION, 0, MINOR_VERSION.into(), 0, 0).put(&mut datagram);
        }
        let id = pv as u32;
        put_message(
            &mut datagram,
            Header::new(command::SEARCH, DONT_REPLY, MINOR_VERSION.into(), id, id),
            &name_payload(&names[pv]),
        );
        if datagram.len() > 1024 {
            flush(&mut datagram).await;
        }
    }
    if !datagram.is_empty() {
        flush(&mut datagram).await;
    }
}

/// The (PV index, server) pairs a search-reply datagram from `from` announces.
fn search_replies(datagram: &[u8], from: SocketAddr) -> Vec<(usize, SocketAddr)> {
    let mut buffer = BytesMut::from(datagram);
    let mut found = Vec::new();
    while let Ok(Some(message)) = split_message(&mut buffer) {
        if message.header.command != command::SEARCH {
            continue;
        }
        let ip = match message.header.p1 {
            u32::MAX => from.ip(),
            raw => Ipv4Addr::from(raw).into(),
        };
        found.push((
            message.header.p2 as usize,
            SocketAddr::new(ip, message.header.data_type),
        ));
    }
    found
}

struct Channel {
    pv: usize,
    sid: Option<u32>,
}

/// One TCP circuit: creates channels as they are handed to it, subscribes, forwards updates.
async fn run_circuit(
    server: SocketAddr,
    mut requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Circuit>,
) {
    let mut channels: HashMap<u32, Channel> = HashMap::new();
    let result = circuit(server, &mut requests, &events, &mut channels).await;
    let error = match result {
        Ok(()) => "closed by the client".to_owned(),
        Err(error) => error.to_string(),
    };
    // Names handed over but not yet read are lost with the circuit too.
    requests.close();
    let mut pvs: Vec<usize> = channels.values().map(|c| c.pv).collect();
    while let Ok(request) = requests.try_recv() {
        match request {
            Request::Create(pv, _) => pvs.push(pv),
            Request::Command(command) => command.fail(PutError::CircuitClosed),
        }
    }
    let _ = events.send(Circuit::Closed { server, pvs, error }).await;
}

async fn circuit(
    server: SocketAddr,
    requests: &mut mpsc::Receiver<Request>,
    events: &mpsc::Sender<Circuit>,
    channels: &mut HashMap<u32, Channel>,
) -> std::io::Result<()> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(server)).await??;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    Header::new(command::VERSION, 0, MINOR_VERSION.into(), 0, 0).put(&mut out);
    let user = std::env::var("USER").unwrap_or_else(|_| "beamflow".to_owned());
    put_message(
        &mut out,
        Header::new(command::CLIENT_NAME, 0, 0, 0, 0),
        &name_payload(&user),
    );
    let host = hostname();
    put_message(
        &mut out,
        Header::new(command::HOST_NAME, 0, 0, 0, 0),
        &name_payload(&host),
    );
    stream.write_all(&out).await?;
    out.clear();
    let mut input = BytesMut::with_capacity(1 << 16);
    let mut last_heard = Instant::now();
    let mut echo_sent = false;
    // Writes and reads waiting for their WRITE_NOTIFY or READ_NOTIFY answer, by I/O id; dropped
    // with the circuit.
    let mut pending: HashMap<u32, Waiting> = HashMap::new();
    let mut next_ioid = 1u32;
    // ERROR messages the server sent on this circuit: the first is logged, the rest counted.
    let mut server_errors = 0u64;
    loop {
        tokio::select! {
            request = requests.recv() => match request {
                None => return Ok(()),
                Some(Request::Create(pv, name)) => {
                    let cid = pv as u32;
                    channels.insert(cid, Channel { pv, sid: None });
                    put_message(
                        &mut out,
                        Header::new(command::CREATE_CHAN, 0, 0, cid, MINOR_VERSION.into()),
                        &name_payload(&name),
                    );
                }
                Some(Request::Command(asked)) => {
                    match channels.get(&(asked.pv() as u32)).and_then(|c| c.sid) {
                        Some(sid) => {
                            let ioid = next_ioid;
                            next_ioid = next_ioid.wrapping_add(1);
                            let waiting = match asked {
                                Command::Put(put) => {
                                    let mut payload = BytesMut::new();
                                    Values::Double(vec![put.value]).write(&mut payload);
                                    put_message(
                                        &mut out,
                                        Header::new(command::WRITE_NOTIFY, Native::Double.code(), 1, sid, ioid),
                                        &payload,
                                    );
                                    Waiting::Put(put.done)
                                }
                                Command::ReadControl(read) => {
                                    put_message(
                                        &mut out,
                                        Header::new(command::READ_NOTIFY, CTRL_DOUBLE, 1, sid, ioid),
                                        &[],
                                    );
                                    Waiting::Control(read.done)
                                }
                            };
                            pending.insert(ioid, waiting);
                        }
                        None => asked.fail(PutError::NotCreated),
                    }
                }
            },
            read = stream.read_buf(&mut input) => {
                if read? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the circuit",
                    ));
                }
                last_heard = Instant::now();
                echo_sent = false;
                while let Some(message) = split_message(&mut input)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
                {
                    if matches!(message.header.command, command::WRITE_NOTIFY | command::READ_NOTIFY) {
                        if let Some(waiting) = pending.remove(&message.header.p2) {
                            waiting.answer(&message);
                        }
                        continue;
                    }
                    handle(server, message, channels, events, &mut out, &mut server_errors).await?;
                }
            }
            () = tokio::time::sleep_until(last_heard + ECHO_AFTER) => {
                if echo_sent {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer to ECHO",
                    ));
                }
                Header::new(command::ECHO, 0, 0, 0, 0).put(&mut out);
                echo_sent = true;
                last_heard = Instant::now();
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Acts on one message from the server; an error (a command the protocol does not have) ends
/// the circuit.
async fn handle(
    server: SocketAddr,
    message: wire::Message,
    channels: &mut HashMap<u32, Channel>,
    events: &mpsc::Sender<Circuit>,
    out: &mut BytesMut,
    server_errors: &mut u64,
) -> std::io::Result<()> {
    let h = message.header;
    match h.command {
        command::CREATE_CHAN => {
            let Some(channel) = channels.get_mut(&h.p1) else {
                return Ok(());
            };
            let Some(native) = Native::of(h.data_type) else {
                warn!(%server, pv = channel.pv, dbr_type = h.data_type, "PV of a type beamflow does not read.");
                return Ok(());
            };
            channel.sid = Some(h.p2);
            // Subscribe to value and alarm changes, count 0: each update carries its own size.
            put_message(
                out,
                Header::new(command::EVENT_ADD, native.time_code(), 0, h.p2, h.p1),
                &monitor_mask(),
            );
            let event = MonitorEvent::Connected {
                pv: channel.pv,
                server,
                native,
                count: h.count,
            };
            let _ = events.send(Circuit::Event(event)).await;
        }
        command::EVENT_ADD if h.payload_size > 0 => {
            let Some(channel) = channels.get(&h.p2) else {
                return Ok(());
            };
            // Skipped updates are the watcher's to count and log (once), not one line each.
            let event = if h.p1 != ECA_NORMAL {
                MonitorEvent::Malformed {
                    pv: channel.pv,
                    error: format!("the server sent CA status {} instead of a value", h.p1),
                }
            } else {
                match TimeValue::read(h.data_type, h.count as usize, &message.payload) {
                    Ok(value) => MonitorEvent::Update {
                        pv: channel.pv,
                        value,
                    },
                    Err(error) => MonitorEvent::Malformed {
                        pv: channel.pv,
                        error: error.to_string(),
                    },
                }
            };
            let _ = events.send(Circuit::Event(event)).await;
        }
        command::SERVER_DISCONN | command::CREATE_CH_FAIL => {
            if let Some(channel) = channels.remove(&h.p1) {
                let event = MonitorEvent::Disconnected { pv: channel.pv };
                let _ = events.send(Circuit::Event(event)).await;
            }
        }
        command::ERROR => {
            *server_errors += 1;
            let text = message.payload.get(16..).map(wire::payload_name);
            let text = text.as_deref().unwrap_or("");
            if *server_errors == 1 {
                warn!(%server, status = h.p2, message = text,
                    "CA server reported an error (further ones on this circuit are logged at debug).");
            } else {
                debug!(%server, status = h.p2, message = text, errors = *server_errors,
                    "CA server reported an error.");
            }
        }
        unknown if unknown > LAST_COMMAND => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unknown CA command {unknown}"),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// EVENT_ADD's payload: no dead bands, mask VALUE | ALARM.
fn monitor_mask() -> [u8; 16] {
    let mut payload = [0u8; 16];
    let mut view = &mut payload[12..];
    view.put_u16(1 | 4);
    payload
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers every search with its TCP port, and on every circuit sends a
    /// command the protocol does not have and closes. Returns its search address and the
    /// number of circuits it has accepted.
    async fn hostile_server() -> (SocketAddr, Arc<AtomicU64>) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let search = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65536];
            while let Ok((len, from)) = udp.recv_from(&mut buffer).await {
                let mut input = BytesMut::from(&buffer[..len]);
                let mut reply = BytesMut::new();
                while let Ok(Some(message)) = split_message(&mut input) {
                    if message.header.command == command::SEARCH {
                        let answer =
                            Header::new(command::SEARCH, port, 0, u32::MAX, message.header.p2);
                        put_message(&mut reply, answer, &MINOR_VERSION.to_be_bytes());
                    }
                }
                let _ = udp.send_to(&reply, from).await;
            }
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let mut garbage = BytesMut::new();
                Header::new(0x7777, 0, 0, 0, 0).put(&mut garbage);
                let _ = stream.write_all(&garbage).await;
            }
        });
        (search, accepted)
    }

    /// Issue #17 (probe 3f): a server that sends what cannot be read and closes made the client
    /// reconnect thousands of times a second (10,200 circuits in this test's 3 s, before the
    /// back-off). With the back-off (100 ms doubling) a 3 s window holds
    /// the circuits at about 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s: at most 6, and 8 leaves room for
    /// a slow machine's searches. Each failure is an event, with the wait doubling.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hostile_server_is_reconnected_to_with_back_off() {
        let (search, accepted) = hostile_server().await;
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let config = ClientConfig {
            addr_list: vec![search],
        };
        let client = tokio::spawn(monitor(config, vec!["X".to_owned()], move |event| {
            let _ = events_tx.send(event);
        }));
        let window = Duration::from_secs(3);
        let start = Instant::now();
        let mut lost = Vec::new();
        while start.elapsed() < window {
            let wait = window.saturating_sub(start.elapsed());
            if let Ok(Some(MonitorEvent::CircuitLost {
                failures, retry_in, ..
            })) = tokio::time::timeout(wait, events.recv()).await
            {
                lost.push((failures, retry_in));
            }
        }
        client.abort();
        let accepted = accepted.load(Ordering::Relaxed);
        assert!(
            (3..=8).contains(&accepted),
            "{accepted} circuits in {window:?}"
        );
        let ms = Duration::from_millis;
        assert_eq!(lost[..3], [(1, ms(100)), (2, ms(200)), (3, ms(400))]);
    }

    #[test]
    fn the_back_off_doubles_to_its_ceiling_and_a_healthy_circuit_starts_it_over() {
        let now = Instant::now();
        let mut retry = None;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let next = Retry::after(retry, Duration::ZERO, now);
            delays.push(next.delay.as_millis());
            retry = Some(next);
        }
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
        let again = Retry::after(retry, HEALTHY_AFTER, now);
        assert_eq!((again.failures, again.delay), (1, RETRY_MIN));
        assert_eq!(again.not_before, now + RETRY_MIN);
    }
}
