//! A PV Access client: monitors PVs for the epics_pva ingester ([`monitor`]), and reads or
//! writes one PV at a time ([`get`], [`put`]).
//!
//! Names are found by UDP search to `addr_list` (fast at first, then backing off while a name
//! stays unresolved) and by TCP search to `name_servers`. One TCP connection is opened per
//! server, and all of that server's PVs share it. Each PV gets a monitor, pipelined by default
//! (`record[queueSize=4,pipeline=true]`): the server sends at most the queue's worth of updates
//! before the client acknowledges them, and the client acknowledges an update once its event
//! was handed to the watcher, so a slow watcher holds back the server instead of filling
//! memory here. The client keeps each PV's whole value and applies every partial update to it.
//!
//! A lost connection sends its PVs back to searching, so a restarted server is picked up
//! without anyone's help. A server whose connections keep failing is reconnected to with
//! back-off, as in `beamflow-ca`'s client: [`RETRY_MIN`] after the first failure, doubling up
//! to [`RETRY_MAX`], and back to the start once a connection has stayed up for
//! [`HEALTHY_AFTER`]. The first failure of a run is logged, the others only counted
//! ([`MonitorEvent::ConnectionLost`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::PvaError;
use crate::pvdata::{
    BitSet, ByteOrder, Decoder, Encoder, FieldDesc, PvStructure, ScalarType, StructDesc, TypeCache,
    Value,
};
use crate::request::Request;
use crate::wire::{self, Frame, Framer, command, control, subcommand};

/// The UDP port servers listen on for searches when the environment names none.
pub const DEFAULT_BROADCAST_PORT: u16 = 5076;
/// The TCP port of a server (and name server) when the environment names none.
pub const DEFAULT_SERVER_PORT: u16 = 5075;
/// The largest message accepted when the environment names none: room for a 16 MiB detector
/// image several times over, and a bound on what a broken server can make the client hold.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// Where to look for PVs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// UDP search destinations (`EPICS_PVA_ADDR_LIST`; broadcast addresses allowed).
    pub addr_list: Vec<SocketAddr>,
    /// Servers searched over TCP (`EPICS_PVA_NAME_SERVERS`).
    pub name_servers: Vec<SocketAddr>,
    /// The largest message (its segments joined) accepted from a server.
    pub max_message: usize,
}

impl ClientConfig {
    /// `EPICS_PVA_ADDR_LIST` (`host[:port]`, whitespace-separated, port
    /// `EPICS_PVA_BROADCAST_PORT` or 5076), plus the broadcast address unless
    /// `EPICS_PVA_AUTO_ADDR_LIST=NO`; `EPICS_PVA_NAME_SERVERS` (port `EPICS_PVA_SERVER_PORT`
    /// or 5075).
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`ClientConfig::from_env`] with the variables from `lookup`.
    fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).unwrap_or_default();
        let port = |name: &str, default: u16| var(name).trim().parse().unwrap_or(default);
        let udp = port("EPICS_PVA_BROADCAST_PORT", DEFAULT_BROADCAST_PORT);
        let tcp = port("EPICS_PVA_SERVER_PORT", DEFAULT_SERVER_PORT);
        let mut addr_list = parse_addr_list(&var("EPICS_PVA_ADDR_LIST"), udp);
        if !var("EPICS_PVA_AUTO_ADDR_LIST")
            .trim()
            .eq_ignore_ascii_case("no")
        {
            addr_list.push(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, udp)));
        }
        Self {
            addr_list,
            name_servers: parse_addr_list(&var("EPICS_PVA_NAME_SERVERS"), tcp),
            max_message: DEFAULT_MAX_MESSAGE,
        }
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
            let resolved = with_port
                .to_socket_addrs()
                .ok()
                .and_then(|mut all| all.find(SocketAddr::is_ipv4));
            if resolved.is_none() {
                warn!(
                    entry,
                    "PVA address list entry ignored: not an IPv4 host[:port]."
                );
            }
            resolved
        })
        .collect()
}

/// What a monitor reports, by the PV's index in the list it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    /// The PV was found and its monitor created; updates follow.
    Connected {
        /// The PV.
        pv: usize,
        /// The server.
        server: SocketAddr,
        /// The PV's type (as the pvRequest selects it).
        desc: Arc<StructDesc>,
    },
    /// A new value (the first one right after connecting).
    Update {
        /// The PV.
        pv: usize,
        /// The whole current value (the client keeps it and applies each partial update).
        value: Arc<PvStructure>,
        /// What changed in this update.
        changed: BitSet,
        /// What changed more than once since the last update (the server squashed them).
        overrun: BitSet,
    },
    /// The PV's server went away or dropped it; it is searched for again.
    Disconnected {
        /// The PV.
        pv: usize,
    },
    /// The server refused the PV's channel or monitor, or an update could not be read.
    Malformed {
        /// The PV.
        pv: usize,
        /// What was wrong.
        error: String,
    },
    /// A connection to a server failed or closed; its PVs follow as
    /// [`MonitorEvent::Disconnected`] and are searched for again once `retry_in` has passed.
    ConnectionLost {
        /// The server.
        server: SocketAddr,
        /// The PVs the connection carried.
        pvs: Vec<usize>,
        /// Why it ended.
        error: String,
        /// Failures of connections to this server in a row, this one included.
        failures: u64,
        /// How long the client waits before it connects to the server again.
        retry_in: Duration,
    },
}

/// Why a [`get`] or [`put`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing came in time; `stage` says what was being waited for.
    #[error("PVA {name:?}: no answer within {timeout:?} while {stage}")]
    Timeout {
        /// The PV.
        name: String,
        /// The timeout.
        timeout: Duration,
        /// What the client was waiting for.
        stage: &'static str,
    },
    /// The server answered with an error status: its message.
    #[error("the server refused: {0}")]
    Server(String),
    /// The connection failed.
    #[error("PVA connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent what the protocol does not allow, or a value did not fit its type.
    #[error(transparent)]
    Protocol(#[from] PvaError),
}

/// Search period bounds: fast at first, then backing off while a name stays unresolved.
const SEARCH_MIN: Duration = Duration::from_millis(50);
const SEARCH_MAX: Duration = Duration::from_secs(2);
/// An ECHO goes to each server this often, whatever else is sent: a server drops a client it
/// has not heard from for its timeout (pvxs: 40 s), and a busy monitor that is not pipelined
/// sends nothing else.
const ECHO_EVERY: Duration = Duration::from_secs(10);
/// A connection silent this long (through two echoes) is dropped.
const SILENT_AFTER: Duration = Duration::from_secs(25);
/// How long a server may take to accept a connection and validate it.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of names in one search datagram at most: a datagram stays under a typical MTU.
const SEARCH_DATAGRAM: usize = 1200;
/// Bytes read from a connection at once at least.
const READ_CHUNK: usize = 256 * 1024;
/// Search flag: the datagram went to one host (pvxs forwards such searches to the other
/// servers sharing the host's UDP port).
const UNICAST: u8 = 0x80;

/// The wait before connecting again to a server whose connection just failed for the first
/// time (a restarting server is back almost at once).
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between failing connections to one server.
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// A connection that stayed up this long was healthy: the next failure starts the back-off over.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// One server's record of failing connections.
#[derive(Debug, Clone, Copy)]
struct Retry {
    failures: u64,
    delay: Duration,
    not_before: Instant,
}

impl Retry {
    /// The back-off after a connection that lived `lived` failed, following `previous`.
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

fn invalid(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
}

fn order_of(flags: u8) -> ByteOrder {
    if flags & 0x80 != 0 {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    }
}

/// Appends one application message to `out`, its body written by `body`.
fn push(out: &mut Encoder, cmd: u8, body: impl FnOnce(&mut Encoder)) {
    let start = wire::begin(out, cmd, false);
    body(out);
    wire::end(out, start);
}

/// Writes a structure with its type (a pvRequest, credentials).
fn typed_structure(out: &mut Encoder, pv: &PvStructure) {
    out.field_desc(&pv.field_desc());
    // A structure built here always matches its own type.
    let _ = out.partial(pv, &BitSet::all());
}

/// Reads a status: none for success (OK or a warning), else the server's message.
fn status(input: &mut Decoder<'_>) -> Result<Option<String>, PvaError> {
    let kind = input.u8()?;
    if kind == 0xFF {
        return Ok(None);
    }
    let message = input.string()?;
    let _call_tree = input.string()?;
    Ok(match kind {
        0 | 1 => None,
        _ if message.is_empty() => Some(format!("error status {kind}")),
        _ => Some(message),
    })
}

/// A SEARCH message for `names` (`(cid, name)`), replies to `reply_port` of the sender.
fn search_message(
    out: &mut Encoder,
    seq: u32,
    unicast: bool,
    reply_port: u16,
    names: &[(u32, &str)],
) {
    push(out, command::SEARCH, |out| {
        out.u32(seq);
        out.u8(if unicast { UNICAST } else { 0 });
        out.buf.extend_from_slice(&[0, 0, 0]);
        // Zeros: reply to the address the search came from.
        wire::put_address(out, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        out.u16(reply_port);
        out.size(1);
        out.string("tcp");
        out.u16(names.len() as u16);
        for (cid, name) in names {
            out.u32(*cid);
            out.string(name);
        }
    });
}

/// The `(cid, server)` pairs a SEARCH_RESPONSE from `from` announces.
fn search_response(
    payload: &[u8],
    order: ByteOrder,
    from: SocketAddr,
) -> Result<Vec<(u32, SocketAddr)>, PvaError> {
    let mut input = Decoder::new(payload, order);
    input.take(12)?; // the server's GUID
    let _seq = input.u32()?;
    let address = wire::get_address(&mut input)?;
    let port = input.u16()?;
    let protocol = input.string()?;
    let found = input.u8()? != 0;
    let count = input.u16()?;
    if !found || protocol != "tcp" {
        return Ok(Vec::new());
    }
    let ip = if address.is_unspecified() {
        from.ip()
    } else {
        address
    };
    (0..count)
        .map(|_| Ok((input.u32()?, SocketAddr::new(ip, port))))
        .collect()
}

/// The `(cid, server)` pairs of a UDP datagram from `from`.
fn datagram_responses(datagram: &[u8], from: SocketAddr) -> Vec<(u32, SocketAddr)> {
    let Ok(messages) = wire::datagram_messages(datagram) else {
        return Vec::new();
    };
    messages
        .into_iter()
        .filter(|(header, _)| header.command == command::SEARCH_RESPONSE)
        .flat_map(|(header, payload)| {
            search_response(payload, header.order(), from).unwrap_or_default()
        })
        .collect()
}

/// Whether a search destination is one host (not a broadcast or multicast address).
fn is_unicast(address: &SocketAddr) -> bool {
    match address.ip() {
        IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_multicast() || v4.octets()[3] == 255),
        IpAddr::V6(v6) => !v6.is_multicast(),
    }
}

/// Sends searches for `names` to every UDP destination, in datagrams of bounded size.
async fn send_udp_searches(
    udp: &UdpSocket,
    addr_list: &[SocketAddr],
    seq: u32,
    names: &[(u32, &str)],
) {
    let reply_port = udp.local_addr().map_or(0, |a| a.port());
    let mut start = 0;
    while start < names.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < names.len()
            && (end == start || bytes + names[end].1.len() + 8 < SEARCH_DATAGRAM)
        {
            bytes += names[end].1.len() + 8;
            end += 1;
        }
        for address in addr_list {
            let mut out = Encoder::new(ByteOrder::Little);
            search_message(
                &mut out,
                seq,
                is_unicast(address),
                reply_port,
                &names[start..end],
            );
            if let Err(error) = udp.send_to(&out.buf, address).await {
                debug!(%address, %error, "PVA search not sent.");
            }
        }
        start = end;
    }
}

/// A message received on a connection.
struct Message {
    command: u8,
    order: ByteOrder,
    payload: Vec<u8>,
}

/// A validated TCP connection to a server.
struct Link {
    server: SocketAddr,
    stream: TcpStream,
    framer: Framer,
    cache: TypeCache,
    /// What is to be sent.
    out: Encoder,
}

impl Link {
    /// Connects to `server` and validates the connection (offering `ca` credentials if the
    /// server asks for them).
    async fn open(server: SocketAddr, max_message: usize) -> std::io::Result<Self> {
        tokio::time::timeout(OPEN_TIMEOUT, Self::open_now(server, max_message))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server did not validate the connection",
                )
            })?
    }

    async fn open_now(server: SocketAddr, max_message: usize) -> std::io::Result<Self> {
        let stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        let mut link = Self {
            server,
            stream,
            framer: Framer::new(max_message),
            cache: TypeCache::default(),
            out: Encoder::new(ByteOrder::Little),
        };
        loop {
            let message = link.recv().await?;
            match message.command {
                command::CONNECTION_VALIDATION => {
                    let mut input = Decoder::new(&message.payload, message.order);
                    let methods = validation_methods(&mut input).map_err(invalid)?;
                    link.validate(&methods, max_message);
                    link.flush().await?;
                }
                command::CONNECTION_VALIDATED => {
                    let mut input = Decoder::new(&message.payload, message.order);
                    if let Some(refused) = status(&mut input).map_err(invalid)? {
                        // As pvxs: go on without credentials; the server decides per PV.
                        debug!(%server, refused, "PVA server refused the credentials.");
                    }
                    return Ok(link);
                }
                _ => {}
            }
        }
    }

    /// The client's CONNECTION_VALIDATION: `ca` (user and host) if offered, else anonymous.
    fn validate(&mut self, methods: &[String], receive_buffer: usize) {
        let ca = methods.iter().any(|m| m == "ca");
        push(&mut self.out, command::CONNECTION_VALIDATION, |out| {
            // The receive buffer: servers that segment by it (beamflow's) send a message up to
            // the size the framer takes whole in one piece.
            out.u32(u32::try_from(receive_buffer).unwrap_or(u32::MAX));
            out.u16(0x7fff); // introspection registry size
            out.u16(0); // quality of service
            if ca {
                out.string("ca");
                let desc = Arc::new(StructDesc::new(
                    "",
                    vec![
                        ("user", FieldDesc::Scalar(ScalarType::String)),
                        ("host", FieldDesc::Scalar(ScalarType::String)),
                    ],
                ));
                let credentials = PvStructure {
                    desc,
                    fields: vec![Value::String(user()), Value::String(hostname())],
                };
                typed_structure(out, &credentials);
            } else {
                out.string("anonymous");
                out.null_size(); // no credentials: the null type
            }
        });
    }

    /// Sends what was queued.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.buf.is_empty() {
            self.stream.write_all(&self.out.buf).await?;
            self.out.buf.clear();
        }
        Ok(())
    }

    /// The next application message already received, answering echo requests on the way.
    fn take(&mut self) -> std::io::Result<Option<Message>> {
        while let Some(frame) = self.framer.next_frame().map_err(invalid)? {
            match frame {
                Frame::Control {
                    command: control::ECHO_REQUEST,
                    data,
                    ..
                } => wire::control_message(&mut self.out, control::ECHO_RESPONSE, data, false),
                Frame::Control { .. } => {}
                Frame::Message {
                    command,
                    flags,
                    payload,
                } => {
                    return Ok(Some(Message {
                        command,
                        order: order_of(flags),
                        payload,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Reads more from the server; an error at its end.
    async fn read(&mut self) -> std::io::Result<()> {
        // Room for a good read: a full buffer would otherwise be grown a few bytes at a time.
        self.framer.buf.reserve(READ_CHUNK);
        if self.stream.read_buf(&mut self.framer.buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(())
    }

    /// The next application message.
    async fn recv(&mut self) -> std::io::Result<Message> {
        loop {
            if let Some(message) = self.take()? {
                return Ok(message);
            }
            self.flush().await?;
            self.read().await?;
        }
    }

    /// Creates the channel `name` (as `cid`): its server id.
    async fn create_channel(&mut self, name: &str) -> Result<u32, ClientError> {
        push(&mut self.out, command::CREATE_CHANNEL, |out| {
            out.u16(1);
            out.u32(1);
            out.string(name);
        });
        self.flush().await?;
        loop {
            let message = self.recv().await?;
            if message.command == command::CREATE_CHANNEL {
                let mut input = Decoder::new(&message.payload, message.order);
                let _cid = input.u32()?;
                let sid = input.u32()?;
                return match status(&mut input)? {
                    None => Ok(sid),
                    Some(refused) => Err(ClientError::Server(refused)),
                };
            }
        }
    }

    /// Sends an operation's INIT and waits for its answer: the type the server will send.
    async fn init(
        &mut self,
        cmd: u8,
        sid: u32,
        ioid: u32,
        request: &PvStructure,
    ) -> Result<Arc<StructDesc>, ClientError> {
        push(&mut self.out, cmd, |out| {
            out.u32(sid);
            out.u32(ioid);
            out.u8(subcommand::INIT);
            typed_structure(out, request);
        });
        self.flush().await?;
        let message = self.reply(cmd, ioid).await?;
        let mut input = Decoder::new(&message.payload, message.order);
        input.take(5)?; // ioid, subcommand
        if let Some(refused) = status(&mut input)? {
            return Err(ClientError::Server(refused));
        }
        match input.field_desc(&mut self.cache)? {
            Some(FieldDesc::Structure(desc)) => Ok(desc),
            _ => Err(PvaError::Malformed("the operation's type is not a structure").into()),
        }
    }

    /// The next message of `cmd` for operation `ioid`.
    async fn reply(&mut self, cmd: u8, ioid: u32) -> Result<Message, ClientError> {
        loop {
            let message = self.recv().await?;
            let mut input = Decoder::new(&message.payload, message.order);
            if message.command == cmd && input.u32()? == ioid {
                return Ok(message);
            }
        }
    }
}

/// The authentication methods a server offers in its CONNECTION_VALIDATION.
fn validation_methods(input: &mut Decoder<'_>) -> Result<Vec<String>, PvaError> {
    let _buffer = input.u32()?;
    let _registry = input.u16()?;
    let n = input.size()?.unwrap_or(0);
    (0..n).map(|_| input.string()).collect()
}

fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "beamflow".to_owned())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// Keeps a TCP connection to a name server and searches over it: batches of `(cid, name)`
/// come in on `searches`, found `(cid, server)` pairs go out on `found`. Reconnects with
/// back-off; ends when `searches` closes.
async fn name_server(
    address: SocketAddr,
    max_message: usize,
    mut searches: mpsc::Receiver<Names>,
    found: mpsc::Sender<(u32, SocketAddr)>,
) {
    let mut retry: Option<Retry> = None;
    let mut seq = 0u32;
    loop {
        let opened = Instant::now();
        let error = match Link::open(address, max_message).await {
            Err(error) => error,
            Ok(mut link) => loop {
                tokio::select! {
                    batch = searches.recv() => {
                        let Some(batch) = batch else { return };
                        seq = seq.wrapping_add(1);
                        let names: Vec<(u32, &str)> =
                            batch.iter().map(|(cid, name)| (*cid, name.as_str())).collect();
                        search_message(&mut link.out, seq, true, 0, &names);
                        if let Err(error) = link.flush().await {
                            break error;
                        }
                    }
                    read = link.read() => {
                        if let Err(error) = read {
                            break error;
                        }
                        loop {
                            match link.take() {
                                Ok(Some(message)) if message.command == command::SEARCH_RESPONSE => {
                                    let pairs = search_response(&message.payload, message.order, address)
                                        .unwrap_or_default();
                                    for pair in pairs {
                                        if found.send(pair).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                Ok(Some(_)) => {}
                                Ok(None) => break,
                                Err(error) => return warn!(%address, %error, "PVA name server sent what cannot be read."),
                            }
                        }
                        if let Err(error) = link.flush().await {
                            break error;
                        }
                    }
                }
            },
        };
        let now = Instant::now();
        let next = Retry::after(retry, now.duration_since(opened), now);
        if next.failures == 1 {
            warn!(%address, %error, "PVA name server connection failed; retrying with back-off.");
        }
        retry = Some(next);
        // Searches asked for meanwhile are dropped: whoever asked repeats them.
        let wait = tokio::time::sleep_until(next.not_before);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                batch = searches.recv() => if batch.is_none() { return },
            }
        }
    }
}

/// A batch of `(cid, name)` to search for.
type Names = Vec<(u32, String)>;

/// Starts a [`name_server`] task per address: their search inputs and a common output.
fn start_name_servers(
    config: &ClientConfig,
) -> (Vec<mpsc::Sender<Names>>, mpsc::Receiver<(u32, SocketAddr)>) {
    let (found_tx, found_rx) = mpsc::channel(1024);
    let senders = config
        .name_servers
        .iter()
        .map(|address| {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(name_server(
                *address,
                config.max_message,
                rx,
                found_tx.clone(),
            ));
            tx
        })
        .collect();
    (senders, found_rx)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PvState {
    Searching { next: Instant, period: Duration },
    Found,
}

/// What the monitor asks of a connection task.
enum LinkRequest {
    /// Create a channel for this PV (index and name) and monitor it.
    Create(usize, String),
    /// An update of the PV's monitor `ioid` was consumed: acknowledge it (pipelining).
    Ack { pv: usize, ioid: u32 },
}

/// Where a connection task gets its requests. Unbounded, yet bounded by the protocol: a
/// create per PV, and acknowledgements no more than the updates the server's window allows.
type LinkInput = mpsc::UnboundedSender<LinkRequest>;

/// What a connection task tells the monitor.
enum Report {
    Event(MonitorEvent),
    /// An update (or an unreadable one) of a pipelined monitor: acknowledged once the event
    /// was handed to the watcher, so a slow watcher holds back the server, not memory here.
    Update {
        event: MonitorEvent,
        server: SocketAddr,
        link: u64,
        pv: usize,
        ioid: u32,
    },
    /// The PV's channel is gone from a live connection (the server refused or destroyed it):
    /// search again after `after`.
    Lost {
        pv: usize,
        after: Duration,
    },
    /// A connection ended (`link` tells it from a newer one to the same server).
    Closed {
        server: SocketAddr,
        link: u64,
        pvs: Vec<usize>,
        error: String,
    },
}

/// Monitors `names` (each with the same pvRequest, e.g. `field()` or
/// `record[queueSize=4,pipeline=true]field()`), reconnecting after a server restart, until
/// dropped. A request that names neither a queue size nor pipelining is pipelined with a queue
/// of 4.
///
/// `on_event` runs on the monitor's task, and a pipelined update is acknowledged when it
/// returns: a slow `on_event` holds the servers back. It must not block the runtime's thread
/// (hand events on through a channel; one that must wait uses `tokio::task::block_in_place`),
/// or the connections' tasks queued on that thread wait with it.
pub async fn monitor(
    config: ClientConfig,
    names: Vec<String>,
    request: Request,
    mut on_event: impl FnMut(MonitorEvent) + Send,
) -> std::io::Result<()> {
    let mut request = request;
    if request.queue_size.is_none() && !request.pipeline {
        request.queue_size = Some(4);
        request.pipeline = true;
    }
    let request = Arc::new(request);
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    udp.set_broadcast(true)?;
    let (name_servers, mut found_rx) = start_name_servers(&config);
    let now = Instant::now();
    let mut states = vec![
        PvState::Searching {
            next: now,
            period: SEARCH_MIN,
        };
        names.len()
    ];
    // Open connections: where to hand PVs, when each opened, and its number.
    let mut links: HashMap<SocketAddr, (LinkInput, Instant, u64)> = HashMap::new();
    let mut link_count = 0u64;
    let mut retries: HashMap<SocketAddr, Retry> = HashMap::new();
    // Small: a connection whose reports wait stops reading, and its server holds back.
    let (report_tx, mut report_rx) = mpsc::channel::<Report>(64);
    let mut buffer = vec![0u8; 65536];
    let mut seq = 0u32;
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        for (pv, state) in states.iter_mut().enumerate() {
            if let PvState::Searching { next, period } = state
                && *next <= now
            {
                *next = now + *period;
                *period = (*period * 2).min(SEARCH_MAX);
                due.push((pv as u32, names[pv].as_str()));
            }
        }
        if !due.is_empty() {
            seq = seq.wrapping_add(1);
            send_udp_searches(&udp, &config.addr_list, seq, &due).await;
            let batch: Names = due
                .iter()
                .map(|(cid, name)| (*cid, (*name).to_owned()))
                .collect();
            for server in &name_servers {
                let _ = server.try_send(batch.clone());
            }
        }
        let wake = states
            .iter()
            .filter_map(|s| match s {
                PvState::Searching { next, .. } => Some(*next),
                PvState::Found => None,
            })
            .min()
            .unwrap_or(now + SEARCH_MAX);
        let found: Vec<(u32, SocketAddr)> = tokio::select! {
            received = udp.recv_from(&mut buffer) => match received {
                Ok((len, from)) => datagram_responses(&buffer[..len], from),
                Err(_) => Vec::new(),
            },
            Some(pair) = found_rx.recv() => vec![pair],
            Some(report) = report_rx.recv() => {
                match report {
                    Report::Event(event) => on_event(event),
                    Report::Update { event, server, link, pv, ioid } => {
                        on_event(event);
                        if let Some((input, _, id)) = links.get(&server)
                            && *id == link
                        {
                            let _ = input.send(LinkRequest::Ack { pv, ioid });
                        }
                    }
                    Report::Lost { pv, after } => {
                        if let Some(state) = states.get_mut(pv) {
                            *state = PvState::Searching { next: Instant::now() + after, period: SEARCH_MIN.max(after) };
                        }
                        on_event(MonitorEvent::Disconnected { pv });
                    }
                    Report::Closed { server, link, pvs, error } => {
                        let now = Instant::now();
                        // A connection that ended before the newer one to its server took
                        // over leaves the newer one in place.
                        let lived = match links.get(&server) {
                            Some(&(_, opened, id)) if id == link => {
                                links.remove(&server);
                                now.duration_since(opened)
                            }
                            _ => Duration::ZERO,
                        };
                        let retry = Retry::after(retries.get(&server).copied(), lived, now);
                        retries.insert(server, retry);
                        let Retry { failures, delay, not_before } = retry;
                        if failures == 1 {
                            warn!(%server, %error, retry_in_ms = delay.as_millis() as u64,
                                "PVA connection lost; its PVs are searched for again (with back-off while it keeps failing).");
                        } else {
                            debug!(%server, %error, failures, retry_in_ms = delay.as_millis() as u64,
                                "PVA connection failed again.");
                        }
                        on_event(MonitorEvent::ConnectionLost {
                            server,
                            pvs: pvs.clone(),
                            error,
                            failures,
                            retry_in: delay,
                        });
                        for pv in pvs {
                            if let Some(state) = states.get_mut(pv) {
                                *state = PvState::Searching { next: not_before, period: SEARCH_MIN };
                            }
                            on_event(MonitorEvent::Disconnected { pv });
                        }
                    }
                }
                Vec::new()
            }
            () = tokio::time::sleep_until(wake) => Vec::new(),
        };
        let now = Instant::now();
        for (cid, server) in found {
            let pv = cid as usize;
            let Some(state) = states.get_mut(pv) else {
                continue;
            };
            if *state == PvState::Found {
                continue;
            }
            // A failing server is not connected to again before its back-off is over: the PV
            // stays searching (its next search is due by then).
            if let Some(retry) = retries.get(&server)
                && retry.not_before > now
                && !links.contains_key(&server)
            {
                continue;
            }
            *state = PvState::Found;
            let name = names[pv].clone();
            match links.get(&server) {
                Some((link, _, _)) if link.send(LinkRequest::Create(pv, name.clone())).is_ok() => {}
                _ => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let _ = tx.send(LinkRequest::Create(pv, name));
                    link_count += 1;
                    links.insert(server, (tx, now, link_count));
                    tokio::spawn(run_link(
                        server,
                        link_count,
                        config.max_message,
                        Arc::clone(&request),
                        rx,
                        report_tx.clone(),
                    ));
                }
            }
        }
    }
}

/// A PV's channel on a connection.
struct Channel {
    pv: usize,
    sid: Option<u32>,
    ioid: Option<u32>,
    /// The whole current value, once the monitor's INIT answered.
    value: Option<Arc<PvStructure>>,
}

/// One connection: creates channels as they are handed to it, monitors them, reports.
async fn run_link(
    server: SocketAddr,
    link: u64,
    max_message: usize,
    request: Arc<Request>,
    mut asked: mpsc::UnboundedReceiver<LinkRequest>,
    reports: mpsc::Sender<Report>,
) {
    let mut channels: HashMap<u32, Channel> = HashMap::new();
    let result = link_loop(
        server,
        link,
        max_message,
        &request,
        &mut asked,
        &reports,
        &mut channels,
    )
    .await;
    let error = match result {
        Ok(()) => "closed by the client".to_owned(),
        Err(error) => error.to_string(),
    };
    // Names handed over but not yet read are lost with the connection too.
    asked.close();
    let mut pvs: Vec<usize> = channels.values().map(|c| c.pv).collect();
    while let Ok(request) = asked.try_recv() {
        if let LinkRequest::Create(pv, _) = request {
            pvs.push(pv);
        }
    }
    pvs.sort_unstable();
    let _ = reports
        .send(Report::Closed {
            server,
            link,
            pvs,
            error,
        })
        .await;
}

async fn link_loop(
    server: SocketAddr,
    link_id: u64,
    max_message: usize,
    request: &Request,
    asked: &mut mpsc::UnboundedReceiver<LinkRequest>,
    reports: &mpsc::Sender<Report>,
    channels: &mut HashMap<u32, Channel>,
) -> std::io::Result<()> {
    // Names asked for while connecting wait in the channel.
    let mut link = Link::open(server, max_message).await?;
    let request_pv = request.to_pv();
    let queue = request.queue_size.unwrap_or(4).max(1) as u32;
    let mut ops: HashMap<u32, u32> = HashMap::new();
    let mut next_ioid = 1u32;
    let mut last_heard = Instant::now();
    let mut next_echo = last_heard + ECHO_EVERY;
    // MESSAGEs the server sent on this connection: the first is logged, the rest counted.
    let mut server_messages = 0u64;
    loop {
        tokio::select! {
            next = asked.recv() => match next {
                None => return Ok(()),
                Some(LinkRequest::Create(pv, name)) => {
                    let cid = pv as u32;
                    channels.insert(cid, Channel { pv, sid: None, ioid: None, value: None });
                    push(&mut link.out, command::CREATE_CHANNEL, |out| {
                        out.u16(1);
                        out.u32(cid);
                        out.string(&name);
                    });
                }
                Some(LinkRequest::Ack { pv, ioid }) => {
                    // Only for the monitor the update came from, not a newer one.
                    if let Some(channel) = channels.get(&(pv as u32))
                        && channel.ioid == Some(ioid)
                        && let Some(sid) = channel.sid
                    {
                        push(&mut link.out, command::MONITOR, |out| {
                            out.u32(sid);
                            out.u32(ioid);
                            out.u8(subcommand::PIPELINE_ACK);
                            out.u32(1);
                        });
                    }
                }
            },
            read = link.read() => {
                read?;
                last_heard = Instant::now();
                while let Some(message) = link.take()? {
                    let mut context = LinkContext {
                        link: &mut link,
                        channels,
                        ops: &mut ops,
                        reports,
                        request: &request_pv,
                        pipeline: request.pipeline,
                        queue,
                        next_ioid: &mut next_ioid,
                        server_messages: &mut server_messages,
                        link_id,
                    };
                    context.handle(message).await?;
                }
            }
            () = tokio::time::sleep_until(next_echo) => {
                if last_heard.elapsed() >= SILENT_AFTER {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the server was silent, even to ECHO",
                    ));
                }
                push(&mut link.out, command::ECHO, |_| {});
                next_echo = Instant::now() + ECHO_EVERY;
            }
        }
        link.flush().await?;
    }
}

/// What handling one message on a connection needs.
struct LinkContext<'a> {
    link: &'a mut Link,
    channels: &'a mut HashMap<u32, Channel>,
    /// Monitor ioid → channel cid.
    ops: &'a mut HashMap<u32, u32>,
    reports: &'a mpsc::Sender<Report>,
    request: &'a PvStructure,
    pipeline: bool,
    queue: u32,
    next_ioid: &'a mut u32,
    server_messages: &'a mut u64,
    link_id: u64,
}

impl LinkContext<'_> {
    async fn report(&self, report: Report) {
        let _ = self.reports.send(report).await;
    }

    /// Acts on one message; an error ends the connection (the server sent what the protocol
    /// does not allow where the connection's state depends on it).
    async fn handle(&mut self, message: Message) -> std::io::Result<()> {
        let mut input = Decoder::new(&message.payload, message.order);
        match message.command {
            command::CREATE_CHANNEL => {
                let cid = input.u32().map_err(invalid)?;
                let sid = input.u32().map_err(invalid)?;
                let refused = status(&mut input).map_err(invalid)?;
                let Some(channel) = self.channels.get_mut(&cid) else {
                    return Ok(());
                };
                if let Some(refused) = refused {
                    let pv = channel.pv;
                    self.channels.remove(&cid);
                    warn!(server = %self.link.server, pv, refused, "PVA server refused the channel.");
                    self.report(Report::Event(MonitorEvent::Malformed {
                        pv,
                        error: format!("the server refused the channel: {refused}"),
                    }))
                    .await;
                    self.report(Report::Lost {
                        pv,
                        after: SEARCH_MAX,
                    })
                    .await;
                    return Ok(());
                }
                channel.sid = Some(sid);
                let ioid = *self.next_ioid;
                *self.next_ioid = self.next_ioid.wrapping_add(1);
                channel.ioid = Some(ioid);
                self.ops.insert(ioid, cid);
                let (pipeline, queue, request) = (self.pipeline, self.queue, self.request);
                push(&mut self.link.out, command::MONITOR, |out| {
                    out.u32(sid);
                    out.u32(ioid);
                    if pipeline {
                        out.u8(subcommand::INIT | subcommand::PIPELINE_ACK);
                        typed_structure(out, request);
                        // The window the server may fill before the first acknowledgement.
                        out.u32(queue);
                    } else {
                        out.u8(subcommand::INIT);
                        typed_structure(out, request);
                    }
                });
            }
            command::MONITOR => self.monitor(&mut input).await?,
            command::DESTROY_CHANNEL => {
                let sid = input.u32().map_err(invalid)?;
                let cid = input.u32().map_err(invalid)?;
                if let Some(channel) = self.channels.get(&cid)
                    && channel.sid == Some(sid)
                {
                    let pv = channel.pv;
                    self.forget(cid);
                    self.report(Report::Lost {
                        pv,
                        after: Duration::ZERO,
                    })
                    .await;
                }
            }
            command::MESSAGE => {
                let ioid = input.u32().unwrap_or(0);
                let _level = input.u8().unwrap_or(0);
                let text = input.string().unwrap_or_default();
                *self.server_messages += 1;
                if *self.server_messages == 1 {
                    warn!(server = %self.link.server, ioid, message = text,
                        "PVA server sent a message (further ones on this connection are logged at debug).");
                } else {
                    debug!(server = %self.link.server, ioid, message = text, "PVA server message.");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Drops a channel and its monitor.
    fn forget(&mut self, cid: u32) {
        if let Some(channel) = self.channels.remove(&cid)
            && let Some(ioid) = channel.ioid
        {
            self.ops.remove(&ioid);
        }
    }

    async fn monitor(&mut self, input: &mut Decoder<'_>) -> std::io::Result<()> {
        let ioid = input.u32().map_err(invalid)?;
        let sub = input.u8().map_err(invalid)?;
        let Some(&cid) = self.ops.get(&ioid) else {
            // A monitor already forgotten: its data cannot be read without its type.
            return Ok(());
        };
        let Some(channel) = self.channels.get_mut(&cid) else {
            return Ok(());
        };
        let pv = channel.pv;
        let Some(sid) = channel.sid else {
            return Ok(());
        };
        if sub & subcommand::INIT != 0 {
            if let Some(refused) = status(input).map_err(invalid)? {
                self.report(Report::Event(MonitorEvent::Malformed {
                    pv,
                    error: format!("the server refused the monitor: {refused}"),
                }))
                .await;
                return Ok(());
            }
            let desc = match input.field_desc(&mut self.link.cache).map_err(invalid)? {
                Some(FieldDesc::Structure(desc)) => desc,
                _ => return Err(invalid("a monitor's type is not a structure")),
            };
            channel.value = Some(Arc::new(PvStructure::new(Arc::clone(&desc))));
            push(&mut self.link.out, command::MONITOR, |out| {
                out.u32(sid);
                out.u32(ioid);
                out.u8(subcommand::START | subcommand::PROCESS);
            });
            self.report(Report::Event(MonitorEvent::Connected {
                pv,
                server: self.link.server,
                desc,
            }))
            .await;
            return Ok(());
        }
        if sub & subcommand::DESTROY != 0 {
            // The server ended the monitor: the PV is searched for and subscribed to again.
            let reason = status(input).ok().flatten();
            debug!(server = %self.link.server, pv, reason, "PVA server ended a monitor.");
            push(&mut self.link.out, command::DESTROY_CHANNEL, |out| {
                out.u32(sid);
                out.u32(cid);
            });
            self.forget(cid);
            self.report(Report::Lost {
                pv,
                after: SEARCH_MIN,
            })
            .await;
            return Ok(());
        }
        let Some(value) = channel.value.as_mut() else {
            return Err(invalid("a monitor update before the monitor's type"));
        };
        let decoded = (|| {
            let changed = BitSet::decode(input)?;
            input.partial(Arc::make_mut(value), &changed, &mut self.link.cache)?;
            let overrun = if input.is_empty() {
                BitSet::new()
            } else {
                BitSet::decode(input)?
            };
            Ok::<_, PvaError>((changed, overrun))
        })();
        let event = match decoded {
            Ok((changed, overrun)) => MonitorEvent::Update {
                pv,
                value: Arc::clone(value),
                changed,
                overrun,
            },
            Err(error) => MonitorEvent::Malformed {
                pv,
                error: error.to_string(),
            },
        };
        let report = if self.pipeline {
            Report::Update {
                event,
                server: self.link.server,
                link: self.link_id,
                pv,
                ioid,
            }
        } else {
            Report::Event(event)
        };
        self.report(report).await;
        Ok(())
    }
}

/// Finds the server of `name`: UDP search to `addr_list` and TCP search to `name_servers`,
/// fast at first, then backing off; until found (the caller bounds the time).
async fn find(config: &ClientConfig, name: &str) -> std::io::Result<SocketAddr> {
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    udp.set_broadcast(true)?;
    let (name_servers, mut found_rx) = start_name_servers(config);
    let mut period = SEARCH_MIN;
    let mut seq = 0u32;
    let mut buffer = vec![0u8; 65536];
    loop {
        seq = seq.wrapping_add(1);
        send_udp_searches(&udp, &config.addr_list, seq, &[(0, name)]).await;
        for server in &name_servers {
            let _ = server.try_send(vec![(0, name.to_owned())]);
        }
        let deadline = Instant::now() + period;
        period = (period * 2).min(SEARCH_MAX);
        loop {
            tokio::select! {
                received = udp.recv_from(&mut buffer) => {
                    if let Ok((len, from)) = received
                        && let Some((_, server)) = datagram_responses(&buffer[..len], from).first()
                    {
                        return Ok(*server);
                    }
                }
                Some((_, server)) = found_rx.recv() => return Ok(server),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
}

/// Runs `operation` against `name`'s server within `timeout`, naming the stage it was in if
/// time runs out.
async fn within<T>(
    config: &ClientConfig,
    name: &str,
    timeout: Duration,
    operation: impl AsyncFnOnce(&mut Link, u32) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let stage = std::cell::Cell::new("searching");
    let run = async {
        let server = find(config, name).await?;
        stage.set("connecting");
        let mut link = Link::open(server, config.max_message).await?;
        stage.set("creating the channel");
        let sid = link.create_channel(name).await?;
        stage.set("waiting for the server's answer");
        operation(&mut link, sid).await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            name: name.to_owned(),
            timeout,
            stage: stage.get(),
        }),
    }
}

/// One get (with a timeout): the PV's value as `request` selects it.
pub async fn get(
    config: &ClientConfig,
    name: &str,
    request: &Request,
    timeout: Duration,
) -> Result<PvStructure, ClientError> {
    within(config, name, timeout, async |link: &mut Link, sid| {
        let ioid = 1;
        let desc = link.init(command::GET, sid, ioid, &request.to_pv()).await?;
        push(&mut link.out, command::GET, |out| {
            out.u32(sid);
            out.u32(ioid);
            // A plain exec: the connection closes after the answer, which ends the operation.
            out.u8(0);
        });
        link.flush().await?;
        let message = link.reply(command::GET, ioid).await?;
        let mut input = Decoder::new(&message.payload, message.order);
        input.take(5)?;
        if let Some(refused) = status(&mut input)? {
            return Err(ClientError::Server(refused));
        }
        let changed = BitSet::decode(&mut input)?;
        let mut value = PvStructure::new(desc);
        input.partial(&mut value, &changed, &mut link.cache)?;
        Ok(value)
    })
    .await
}

/// Sets the members of `pv` at `values`' paths, converting scalars to the members' types;
/// what was set.
fn assign(pv: &mut PvStructure, values: &[(&str, Value)]) -> Result<BitSet, PvaError> {
    let mut changed = BitSet::new();
    for (path, value) in values {
        let (bit, desc, slot) = pv
            .get_mut(path)
            .ok_or_else(|| PvaError::NoSuchField((*path).to_owned()))?;
        *slot = match desc {
            FieldDesc::Scalar(t) => value.convert_to(*t).ok_or_else(|| {
                PvaError::Mismatch(format!("{path}: {value:?} is not a {}", t.name()))
            })?,
            _ => value.clone(),
        };
        changed.set(bit);
    }
    Ok(changed)
}

/// One put (with a timeout): sets the members at `values`' paths (e.g. `("value",
/// Value::Double(1.5))`); scalars are converted to the members' types. A put the server
/// refuses is [`ClientError::Server`] with its message.
pub async fn put(
    config: &ClientConfig,
    name: &str,
    values: &[(&str, Value)],
    timeout: Duration,
) -> Result<(), ClientError> {
    within(config, name, timeout, async |link: &mut Link, sid| {
        let ioid = 1;
        let request = Request::default().to_pv();
        let desc = link.init(command::PUT, sid, ioid, &request).await?;
        let mut value = PvStructure::new(desc);
        let changed = assign(&mut value, values)?;
        let mut body = Encoder::new(link.out.order);
        changed.encode(&mut body);
        body.partial(&value, &changed)?;
        push(&mut link.out, command::PUT, |out| {
            out.u32(sid);
            out.u32(ioid);
            out.u8(0);
            out.buf.extend_from_slice(&body.buf);
        });
        link.flush().await?;
        let message = link.reply(command::PUT, ioid).await?;
        let mut input = Decoder::new(&message.payload, message.order);
        input.take(5)?;
        match status(&mut input)? {
            None => Ok(()),
            Some(refused) => Err(ClientError::Server(refused)),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    fn scalar_desc() -> Arc<StructDesc> {
        Arc::new(StructDesc::new(
            "epics:nt/NTScalar:1.0",
            vec![
                ("value", FieldDesc::Scalar(ScalarType::Double)),
                (
                    "alarm",
                    FieldDesc::structure(
                        "alarm_t",
                        vec![
                            ("severity", FieldDesc::Scalar(ScalarType::Int)),
                            ("message", FieldDesc::Scalar(ScalarType::String)),
                        ],
                    ),
                ),
            ],
        ))
    }

    /// A server's message (flag "from server").
    fn server_message(cmd: u8, body: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, cmd, true);
        body(&mut out);
        wire::end(&mut out, start);
        out.buf
    }

    fn search_response_payload(address: Ipv4Addr, port: u16, found: bool, cids: &[u32]) -> Vec<u8> {
        let mut out = Encoder::new(ByteOrder::Little);
        out.buf.extend_from_slice(&[7; 12]);
        out.u32(1);
        wire::put_address(&mut out, IpAddr::V4(address));
        out.u16(port);
        out.string("tcp");
        out.u8(u8::from(found));
        out.u16(cids.len() as u16);
        for cid in cids {
            out.u32(*cid);
        }
        out.buf
    }

    #[test]
    fn a_search_has_the_protocol_layout() {
        let mut out = Encoder::new(ByteOrder::Little);
        search_message(&mut out, 9, true, 1234, &[(7, "a:b"), (8, "c")]);
        let messages = wire::datagram_messages(&out.buf).unwrap();
        assert_eq!(messages.len(), 1);
        let (header, payload) = messages[0];
        assert_eq!(header.command, command::SEARCH);
        let mut input = Decoder::new(payload, header.order());
        assert_eq!(input.u32().unwrap(), 9);
        assert_eq!(input.u8().unwrap(), UNICAST);
        assert_eq!(input.take(3).unwrap(), &[0, 0, 0]);
        assert!(wire::get_address(&mut input).unwrap().is_unspecified());
        assert_eq!(input.u16().unwrap(), 1234);
        assert_eq!(input.size().unwrap(), Some(1));
        assert_eq!(input.string().unwrap(), "tcp");
        assert_eq!(input.u16().unwrap(), 2);
        assert_eq!(
            (input.u32().unwrap(), input.string().unwrap()),
            (7, "a:b".to_owned())
        );
        assert_eq!(
            (input.u32().unwrap(), input.string().unwrap()),
            (8, "c".to_owned())
        );
        assert!(input.is_empty());
        assert!(!is_unicast(&"255.255.255.255:5076".parse().unwrap()));
        assert!(!is_unicast(&"10.1.2.255:5076".parse().unwrap()));
        assert!(is_unicast(&"127.0.0.1:5076".parse().unwrap()));
    }

    /// Many names go out in several datagrams, each under a typical MTU, all names in order.
    #[tokio::test]
    async fn many_names_are_searched_in_datagrams_of_bounded_size() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let names: Vec<String> = (0..200)
            .map(|i| format!("beamline:device{i:03}:value"))
            .collect();
        let asked: Vec<(u32, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32, n.as_str()))
            .collect();
        send_udp_searches(&sender, &[receiver.local_addr().unwrap()], 1, &asked).await;
        let mut seen = Vec::new();
        let mut buffer = vec![0u8; 65536];
        while seen.len() < names.len() {
            let (len, _) = receiver.recv_from(&mut buffer).await.unwrap();
            assert!(len <= 1400, "a datagram of {len} bytes");
            for (header, payload) in wire::datagram_messages(&buffer[..len]).unwrap() {
                let mut input = Decoder::new(payload, header.order());
                input.take(4 + 4 + 16 + 2).unwrap();
                input.size().unwrap();
                input.string().unwrap();
                for _ in 0..input.u16().unwrap() {
                    seen.push((input.u32().unwrap(), input.string().unwrap()));
                }
            }
        }
        let expected: Vec<(u32, String)> =
            asked.iter().map(|(c, n)| (*c, (*n).to_owned())).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_search_response_names_the_sender_when_its_address_is_zero() {
        let from: SocketAddr = "127.0.0.9:5076".parse().unwrap();
        let any = search_response_payload(Ipv4Addr::UNSPECIFIED, 4000, true, &[3, 4]);
        assert_eq!(
            search_response(&any, ByteOrder::Little, from).unwrap(),
            [
                (3, "127.0.0.9:4000".parse().unwrap()),
                (4, "127.0.0.9:4000".parse().unwrap())
            ]
        );
        let named = search_response_payload(Ipv4Addr::new(10, 0, 0, 1), 4000, true, &[3]);
        assert_eq!(
            search_response(&named, ByteOrder::Little, from).unwrap(),
            [(3, "10.0.0.1:4000".parse().unwrap())]
        );
        let not_found = search_response_payload(Ipv4Addr::UNSPECIFIED, 4000, false, &[3]);
        assert!(
            search_response(&not_found, ByteOrder::Little, from)
                .unwrap()
                .is_empty()
        );
        assert!(search_response(&any[..any.len() - 1], ByteOrder::Little, from).is_err());
        // In a datagram, after a message of another kind; garbage gives nothing.
        let mut datagram = server_message(command::BEACON, |_| {});
        datagram.extend(server_message(command::SEARCH_RESPONSE, |out| {
            out.buf.extend_from_slice(&any)
        }));
        assert_eq!(datagram_responses(&datagram, from).len(), 2);
        assert!(datagram_responses(b"GET / HTTP/1.1", from).is_empty());
    }

    #[test]
    fn statuses_read_as_success_or_the_servers_message() {
        let read = |bytes: &[u8]| status(&mut Decoder::new(bytes, ByteOrder::Little));
        assert_eq!(read(&[0xFF]).unwrap(), None);
        let mut out = Encoder::new(ByteOrder::Little);
        out.u8(1);
        out.string("just a warning");
        out.string("");
        assert_eq!(read(&out.buf).unwrap(), None);
        let mut out = Encoder::new(ByteOrder::Little);
        out.u8(2);
        out.string("refused");
        out.string("at line 3");
        assert_eq!(read(&out.buf).unwrap(), Some("refused".to_owned()));
        assert_eq!(read(&[3, 0, 0]).unwrap(), Some("error status 3".to_owned()));
        assert!(read(&[2, 5, b'a']).is_err());
    }

    #[test]
    fn a_put_converts_scalars_and_refuses_unknown_members() {
        let mut pv = PvStructure::new(scalar_desc());
        let changed = assign(
            &mut pv,
            &[
                ("value", Value::Int(3)),
                ("alarm.message", Value::String("set".to_owned())),
            ],
        )
        .unwrap();
        assert_eq!(pv.value("value"), Some(&Value::Double(3.0)));
        assert_eq!(changed.iter().collect::<Vec<_>>(), [1, 4]);
        assert!(matches!(
            assign(&mut pv, &[("nothing", Value::Int(1))]),
            Err(PvaError::NoSuchField(_))
        ));
        assert!(matches!(
            assign(&mut pv, &[("value", Value::String("x".to_owned()))]),
            Err(PvaError::Mismatch(_))
        ));
    }

    #[test]
    fn the_environment_names_search_addresses_and_name_servers() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let config = ClientConfig::from_vars(vars(&[
            ("EPICS_PVA_ADDR_LIST", "127.0.0.1 10.0.0.2:7000"),
            ("EPICS_PVA_AUTO_ADDR_LIST", "NO"),
            ("EPICS_PVA_BROADCAST_PORT", "6076"),
            ("EPICS_PVA_NAME_SERVERS", "127.0.0.1 10.0.0.3:7001"),
            ("EPICS_PVA_SERVER_PORT", "6075"),
        ]));
        let addresses = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        assert_eq!(
            config.addr_list,
            addresses(&["127.0.0.1:6076", "10.0.0.2:7000"])
        );
        assert_eq!(
            config.name_servers,
            addresses(&["127.0.0.1:6075", "10.0.0.3:7001"])
        );
        assert_eq!(config.max_message, DEFAULT_MAX_MESSAGE);
        let defaults = ClientConfig::from_vars(vars(&[]));
        assert_eq!(defaults.addr_list, addresses(&["255.255.255.255:5076"]));
        assert!(defaults.name_servers.is_empty());
    }

    #[test]
    fn addresses_parse_with_a_default_port() {
        assert_eq!(
            parse_addr_list("127.0.0.1 10.0.0.255:6000 not..an..address", 5076),
            [
                "127.0.0.1:5076".parse::<SocketAddr>().unwrap(),
                "10.0.0.255:6000".parse().unwrap()
            ]
        );
    }

    #[test]
    fn the_back_off_doubles_to_its_ceiling_and_a_healthy_connection_starts_it_over() {
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
    }

    /// Answers every search with `tcp_port`; returns the search address.
    async fn search_answerer(tcp_port: u16) -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65536];
            while let Ok((len, from)) = udp.recv_from(&mut buffer).await {
                let Ok(messages) = wire::datagram_messages(&buffer[..len]) else {
                    continue;
                };
                let mut reply = Vec::new();
                for (header, payload) in messages {
                    if header.command != command::SEARCH {
                        continue;
                    }
                    let mut input = Decoder::new(payload, header.order());
                    input.take(4 + 4 + 16 + 2).unwrap();
                    input.size().unwrap();
                    input.string().unwrap();
                    let n = input.u16().unwrap();
                    let cids: Vec<u32> = (0..n)
                        .map(|_| {
                            let cid = input.u32().unwrap();
                            input.string().unwrap();
                            cid
                        })
                        .collect();
                    let body =
                        search_response_payload(Ipv4Addr::UNSPECIFIED, tcp_port, true, &cids);
                    reply.extend(server_message(command::SEARCH_RESPONSE, |out| {
                        out.buf.extend_from_slice(&body)
                    }));
                }
                let _ = udp.send_to(&reply, from).await;
            }
        });
        address
    }

    /// The next application message a client sent.
    async fn client_message(stream: &mut TcpStream, framer: &mut Framer) -> (u8, Vec<u8>) {
        loop {
            if let Some(Frame::Message {
                command, payload, ..
            }) = framer.next_frame().unwrap()
            {
                return (command, payload);
            }
            assert!(
                stream.read_buf(&mut framer.buf).await.unwrap() > 0,
                "client closed"
            );
        }
    }

    /// Accepts a connection and validates it (offering `ca`, which the client must choose).
    async fn accept_validated(tcp: &TcpListener) -> (TcpStream, Framer) {
        let (mut stream, _) = tcp.accept().await.unwrap();
        let mut framer = Framer::new(1 << 20);
        let mut out = Encoder::new(ByteOrder::Little);
        wire::control_message(&mut out, control::SET_BYTE_ORDER, 0, true);
        out.buf
            .extend(server_message(command::CONNECTION_VALIDATION, |out| {
                out.u32(1 << 16);
                out.u16(0x7fff);
                out.size(2);
                out.string("anonymous");
                out.string("ca");
            }));
        stream.write_all(&out.buf).await.unwrap();
        let (cmd, payload) = client_message(&mut stream, &mut framer).await;
        assert_eq!(cmd, command::CONNECTION_VALIDATION);
        let mut input = Decoder::new(&payload, ByteOrder::Little);
        input.take(8).unwrap();
        assert_eq!(input.string().unwrap(), "ca");
        let credentials = input
            .field_desc(&mut TypeCache::default())
            .unwrap()
            .unwrap();
        assert!(credentials.at("user").is_some() && credentials.at("host").is_some());
        let validated = server_message(command::CONNECTION_VALIDATED, |out| out.u8(0xFF));
        stream.write_all(&validated).await.unwrap();
        (stream, framer)
    }

    /// A server that validates the connection and then says nothing, not even to ECHO: the
    /// client sends ECHOes every 10 s and drops the connection after 25 s of silence.
    #[tokio::test]
    async fn a_silent_server_is_dropped_after_its_echoes_go_unanswered() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let search = search_answerer(tcp.local_addr().unwrap().port()).await;
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (mut stream, mut framer) = accept_validated(&tcp).await;
            let _ = ready_tx.send(());
            let mut echoes = 0;
            loop {
                match framer.next_frame().unwrap() {
                    Some(Frame::Message { command, .. }) => {
                        echoes += usize::from(command == command::ECHO);
                    }
                    Some(_) => {}
                    None => {
                        if stream.read_buf(&mut framer.buf).await.unwrap_or(0) == 0 {
                            return echoes;
                        }
                    }
                }
            }
        });
        let (tx, mut events) = mpsc::unbounded_channel();
        let config = ClientConfig {
            addr_list: vec![search],
            name_servers: Vec::new(),
            max_message: 1 << 20,
        };
        let client = tokio::spawn(monitor(
            config,
            vec!["quiet".to_owned()],
            Request::default(),
            move |event| {
                let _ = tx.send(event);
            },
        ));
        ready.await.unwrap();
        // From here on the clock runs only as far as the client's timers need.
        tokio::time::pause();
        let error = loop {
            match events.recv().await {
                Some(MonitorEvent::ConnectionLost { error, .. }) => break error,
                Some(_) => {}
                None => panic!("the monitor ended"),
            }
        };
        client.abort();
        assert!(error.contains("silent"), "{error}");
        assert_eq!(server.await.unwrap(), 2, "ECHOes at 10 and 20 s");
    }

    /// Answers the client's CREATE_CHANNEL and its monitor's INIT (with `desc`) and START;
    /// the monitor's ioid and sid.
    async fn serve_monitor(
        stream: &mut TcpStream,
        framer: &mut Framer,
        desc: &Arc<StructDesc>,
    ) -> (u32, u32) {
        let (cmd, payload) = client_message(stream, framer).await;
        assert_eq!(cmd, command::CREATE_CHANNEL);
        let cid = u32::from_le_bytes(payload[2..6].try_into().unwrap());
        let sid = 5;
        let created = server_message(command::CREATE_CHANNEL, |out| {
            out.u32(cid);
            out.u32(sid);
            out.u8(0xFF);
        });
        stream.write_all(&created).await.unwrap();
        let (cmd, payload) = client_message(stream, framer).await;
        assert_eq!(cmd, command::MONITOR);
        let ioid = u32::from_le_bytes(payload[4..8].try_into().unwrap());
        let init = server_message(command::MONITOR, |out| {
            out.u32(ioid);
            out.u8(subcommand::INIT);
            out.u8(0xFF);
            out.field_desc(&FieldDesc::Structure(Arc::clone(desc)));
        });
        stream.write_all(&init).await.unwrap();
        let (cmd, payload) = client_message(stream, framer).await;
        assert_eq!(
            (cmd, payload[8]),
            (command::MONITOR, subcommand::START | subcommand::PROCESS)
        );
        (ioid, sid)
    }

    /// Pipelining: an update is acknowledged only once the watcher has had it, so a watcher
    /// that is stuck holds the server back (the server sends a window of 4 and waits).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updates_are_acknowledged_only_once_the_watcher_had_them() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let search = search_answerer(tcp.local_addr().unwrap().port()).await;
        let (no_ack_tx, no_ack) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (mut stream, mut framer) = accept_validated(&tcp).await;
            let desc = scalar_desc();
            let (ioid, _) = serve_monitor(&mut stream, &mut framer, &desc).await;
            let mut value = PvStructure::new(Arc::clone(&desc));
            for i in 0..4 {
                let mut changed = BitSet::new();
                value
                    .set("value", Value::Double(f64::from(i)), &mut changed)
                    .unwrap();
                let update = server_message(command::MONITOR, |out| {
                    out.u32(ioid);
                    out.u8(0);
                    changed.encode(out);
                    out.partial(&value, &changed).unwrap();
                    BitSet::new().encode(out);
                });
                stream.write_all(&update).await.unwrap();
            }
            // The watcher is stuck on the first update: nothing is acknowledged.
            let early = tokio::time::timeout(
                Duration::from_millis(300),
                client_message(&mut stream, &mut framer),
            )
            .await;
            assert!(
                early.is_err(),
                "acknowledged before the watcher had it: {early:?}"
            );
            let _ = no_ack_tx.send(());
            let mut acks = 0;
            while acks < 4 {
                let (cmd, payload) = client_message(&mut stream, &mut framer).await;
                if cmd == command::MONITOR && payload[8] == subcommand::PIPELINE_ACK {
                    acks += u32::from_le_bytes(payload[9..13].try_into().unwrap());
                }
            }
            acks
        });
        let (gate_tx, gate) = std::sync::mpsc::channel::<()>();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let config = ClientConfig {
            addr_list: vec![search],
            name_servers: Vec::new(),
            max_message: 1 << 20,
        };
        let client = tokio::spawn(monitor(
            config,
            vec!["slow".to_owned()],
            Request::default(),
            move |event| {
                if let MonitorEvent::Update { value, .. } = event {
                    let _ = seen_tx.send(value.value("value").cloned());
                    // A watcher stuck until the test lets it go; `block_in_place` hands the
                    // runtime thread's other tasks (the connection's) to another thread, as a
                    // watcher that blocks must.
                    let _ = tokio::task::block_in_place(|| gate.recv());
                }
            },
        ));
        assert_eq!(seen.recv().await.unwrap(), Some(Value::Double(0.0)));
        no_ack.await.unwrap();
        for i in 1..4 {
            gate_tx.send(()).unwrap();
            assert_eq!(
                seen.recv().await.unwrap(),
                Some(Value::Double(f64::from(i)))
            );
        }
        gate_tx.send(()).unwrap();
        assert_eq!(server.await.unwrap(), 4);
        client.abort();
    }

    /// A server speaking the protocol by hand: validation, one channel, a pipelined monitor
    /// whose type is sent through the introspection cache, then a whole update, a partial
    /// one and a segmented one, each acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_monitor_keeps_the_whole_value_and_acknowledges_updates() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let search = search_answerer(tcp.local_addr().unwrap().port()).await;
        let server = tokio::spawn(async move {
            let (mut stream, mut framer) = accept_validated(&tcp).await;

            let (cmd, payload) = client_message(&mut stream, &mut framer).await;
            assert_eq!(cmd, command::CREATE_CHANNEL);
            let mut input = Decoder::new(&payload, ByteOrder::Little);
            assert_eq!(input.u16().unwrap(), 1);
            let cid = input.u32().unwrap();
            assert_eq!(input.string().unwrap(), "fake:pv");
            let created = server_message(command::CREATE_CHANNEL, |out| {
                out.u32(cid);
                out.u32(77);
                out.u8(0xFF);
            });
            stream.write_all(&created).await.unwrap();

            let (cmd, payload) = client_message(&mut stream, &mut framer).await;
            assert_eq!(cmd, command::MONITOR);
            let mut input = Decoder::new(&payload, ByteOrder::Little);
            assert_eq!(input.u32().unwrap(), 77);
            let ioid = input.u32().unwrap();
            assert_eq!(
                input.u8().unwrap(),
                subcommand::INIT | subcommand::PIPELINE_ACK
            );
            let mut cache = TypeCache::default();
            let desc = input.field_desc(&mut cache).unwrap().unwrap();
            let request = input.value(&desc, &mut cache).unwrap();
            let request = Request::from_pv(&PvStructure::from_parts(&desc, request).unwrap());
            assert_eq!((request.queue_size, request.pipeline), (Some(4), true));
            assert_eq!(input.u32().unwrap(), 4, "the first window");

            let desc = scalar_desc();
            let init = server_message(command::MONITOR, |out| {
                out.u32(ioid);
                out.u8(subcommand::INIT);
                out.u8(0xFF);
                // Defined in the introspection cache as id 1.
                out.u8(0xFD);
                out.u16(1);
                out.field_desc(&FieldDesc::Structure(Arc::clone(&desc)));
            });
            stream.write_all(&init).await.unwrap();
            let (cmd, payload) = client_message(&mut stream, &mut framer).await;
            assert_eq!(cmd, command::MONITOR);
            assert_eq!(payload[8], subcommand::START | subcommand::PROCESS);

            let mut value = PvStructure::new(Arc::clone(&desc));
            let mut changed = BitSet::new();
            value
                .set("value", Value::Double(1.5), &mut changed)
                .unwrap();
            value
                .set(
                    "alarm.message",
                    Value::String("first".to_owned()),
                    &mut changed,
                )
                .unwrap();
            let update = |value: &PvStructure, changed: &BitSet| {
                server_message(command::MONITOR, |out| {
                    out.u32(ioid);
                    out.u8(0);
                    changed.encode(out);
                    out.partial(value, changed).unwrap();
                    BitSet::new().encode(out);
                })
            };
            stream
                .write_all(&update(&value, &BitSet::all()))
                .await
                .unwrap();
            let mut changed = BitSet::new();
            value
                .set("value", Value::Double(2.5), &mut changed)
                .unwrap();
            stream.write_all(&update(&value, &changed)).await.unwrap();
            // The third in two segments (first, last).
            let mut changed = BitSet::new();
            value
                .set("value", Value::Double(3.5), &mut changed)
                .unwrap();
            let whole = update(&value, &changed);
            let body = &whole[wire::HEADER..];
            let (a, b) = body.split_at(3);
            for (part, flag) in [(a, 0x10u8), (b, 0x20)] {
                let mut segment =
                    server_message(command::MONITOR, |out| out.buf.extend_from_slice(part));
                segment[2] |= flag;
                stream.write_all(&segment).await.unwrap();
            }
            let mut acks = 0;
            while acks < 3 {
                let (cmd, payload) = client_message(&mut stream, &mut framer).await;
                if cmd == command::MONITOR && payload[8] == subcommand::PIPELINE_ACK {
                    acks += u32::from_le_bytes(payload[9..13].try_into().unwrap());
                }
            }
            acks
        });
        let (tx, mut events) = mpsc::unbounded_channel();
        let config = ClientConfig {
            addr_list: vec![search],
            name_servers: Vec::new(),
            max_message: 1 << 20,
        };
        let client = tokio::spawn(monitor(
            config,
            vec!["fake:pv".to_owned()],
            Request::parse("field()").unwrap(),
            move |event| {
                let _ = tx.send(event);
            },
        ));
        let mut values = Vec::new();
        while values.len() < 3 {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(MonitorEvent::Update { value, changed, .. })) => {
                    values.push((value, changed))
                }
                Ok(Some(MonitorEvent::Connected { desc, .. })) => assert_eq!(desc, scalar_desc()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(server.await.unwrap(), 3);
        client.abort();
        let message = |v: &PvStructure| v.value("alarm.message").cloned();
        let first = Some(Value::String("first".to_owned()));
        assert_eq!(values[0].0.value("value"), Some(&Value::Double(1.5)));
        assert_eq!(message(&values[0].0), first);
        assert!(values[0].1.get(0));
        // Partial updates leave the rest as it was.
        assert_eq!(values[1].0.value("value"), Some(&Value::Double(2.5)));
        assert_eq!(message(&values[1].0), first);
        assert_eq!(values[1].1.iter().collect::<Vec<_>>(), [1]);
        assert_eq!(values[2].0.value("value"), Some(&Value::Double(3.5)));
        assert_eq!(message(&values[2].0), first);
    }

    /// A server that accepts connections and closes them at once is reconnected to with
    /// back-off, each failure an event with the wait doubling.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_server_is_reconnected_to_with_back_off() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let search = search_answerer(tcp.local_addr().unwrap().port()).await;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let _ = stream.write_all(b"not PV Access").await;
            }
        });
        let (tx, mut events) = mpsc::unbounded_channel();
        let config = ClientConfig {
            addr_list: vec![search],
            name_servers: Vec::new(),
            max_message: 1 << 20,
        };
        let client = tokio::spawn(monitor(
            config,
            vec!["X".to_owned()],
            Request::default(),
            move |event| {
                let _ = tx.send(event);
            },
        ));
        let mut lost = Vec::new();
        while lost.len() < 3 {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(MonitorEvent::ConnectionLost {
                    failures,
                    retry_in,
                    pvs,
                    ..
                })) => {
                    assert_eq!(pvs, [0]);
                    lost.push((failures, retry_in));
                }
                Ok(Some(MonitorEvent::Disconnected { pv: 0 })) => {}
                other => panic!("{other:?}"),
            }
        }
        client.abort();
        let ms = Duration::from_millis;
        assert_eq!(lost, [(1, ms(100)), (2, ms(200)), (3, ms(400))]);
    }
}
