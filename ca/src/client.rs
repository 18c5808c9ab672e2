//! A Channel Access client that monitors PVs: it finds each name by UDP search, opens one TCP
//! circuit per server, subscribes to the TIME form of each PV's native type, and reports every
//! update, connection and loss. A lost circuit sends its PVs back to searching, so a restarted
//! IOC is picked up without anyone's help. Monitored PVs can also be written ([`Put`], answered
//! once the server has applied the value) and asked for their control limits ([`ReadControl`]).

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
}

/// Search period bounds: fast at first, then backing off while a name stays unresolved.
const SEARCH_MIN: Duration = Duration::from_millis(50);
const SEARCH_MAX: Duration = Duration::from_secs(2);

/// A circuit silent this long is sent an ECHO; one silent twice this long is dropped.
const ECHO_AFTER: Duration = Duration::from_secs(5);

enum Circuit {
    Event(MonitorEvent),
    Closed(SocketAddr, Vec<usize>),
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
    let mut circuits: HashMap<SocketAddr, mpsc::Sender<Request>> = HashMap::new();
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
                for (pv, server) in search_replies(&buffer[..len], from) {
                    let Some(state) = states.get_mut(pv) else { continue };
                    if *state == PvState::Found {
                        continue;
                    }
                    *state = PvState::Found;
                    servers[pv] = Some(server);
                    let name = names[pv].clone();
                    match circuits.get(&server) {
                        Some(circuit) if circuit.send(Request::Create(pv, name.clone())).await.is_ok() => {}
                        _ => {
                            let (tx, rx) = mpsc::channel(names.len().max(1) + 16);
                            let _ = tx.send(Request::Create(pv, name)).await;
                            circuits.insert(server, tx);
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
                Circuit::Closed(server, pvs) => {
                    circuits.remove(&server);
                    for pv in pvs {
                        if let Some(state) = states.get_mut(pv) {
                            *state = PvState::Searching { next: Instant::now(), period: SEARCH_MIN };
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
                        Some(circuit) => {
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
    if let Err(error) = result {
        warn!(%server, %error, "CA circuit lost; its PVs are searched for again.");
    }
    // Names handed over but not yet read are lost with the circuit too.
    requests.close();
    let mut pvs: Vec<usize> = channels.values().map(|c| c.pv).collect();
    while let Ok(request) = requests.try_recv() {
        match request {
            Request::Create(pv, _) => pvs.push(pv),
            Request::Command(command) => command.fail(PutError::CircuitClosed),
        }
    }
    let _ = events.send(Circuit::Closed(server, pvs)).await;
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
                    handle(server, message, channels, events, &mut out).await;
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

async fn handle(
    server: SocketAddr,
    message: wire::Message,
    channels: &mut HashMap<u32, Channel>,
    events: &mpsc::Sender<Circuit>,
    out: &mut BytesMut,
) {
    let h = message.header;
    match h.command {
        command::CREATE_CHAN => {
            let Some(channel) = channels.get_mut(&h.p1) else {
                return;
            };
            let Some(native) = Native::of(h.data_type) else {
                warn!(%server, pv = channel.pv, dbr_type = h.data_type, "PV of a type beamflow does not read.");
                return;
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
                return;
            };
            if h.p1 != ECA_NORMAL {
                warn!(%server, pv = channel.pv, status = h.p1, "CA monitor update with an error status skipped.");
                return;
            }
            match TimeValue::read(h.data_type, h.count as usize, &message.payload) {
                Ok(value) => {
                    let event = MonitorEvent::Update {
                        pv: channel.pv,
                        value,
                    };
                    let _ = events.send(Circuit::Event(event)).await;
                }
                Err(error) => {
                    warn!(%server, pv = channel.pv, %error, "Malformed CA monitor update skipped.");
                }
            }
        }
        command::SERVER_DISCONN | command::CREATE_CH_FAIL => {
            if let Some(channel) = channels.remove(&h.p1) {
                let event = MonitorEvent::Disconnected { pv: channel.pv };
                let _ = events.send(Circuit::Event(event)).await;
            }
        }
        command::ERROR => {
            let text = message.payload.get(16..).map(wire::payload_name);
            warn!(%server, status = h.p2, message = text.as_deref().unwrap_or(""), "CA server reported an error.");
        }
        _ => {}
    }
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
