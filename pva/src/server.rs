//! A PV Access server for PVs beamflow owns: it answers searches over UDP (also those another
//! server on this host forwards), sends beacons, and serves get, put, monitor and the type
//! (`pvinfo`) over TCP to p4p, pvxs and pvAccessCPP clients.
//!
//! PVs live in a [`PvStore`], each a structure (a normative type) with its current value;
//! posting there reaches every monitor. As in `beamflow-ca`'s server, every connection has an
//! output budget ([`ConnectionLimits`]): replies and updates queued for a client take bytes of
//! it until written. A client whose backlog reaches the budget has its requests left unread
//! until it reads, and its monitors meanwhile squash to the newest value (the changed bits
//! merged, the overrun bits set), never a growing queue. A connection whose socket takes no
//! byte for [`ConnectionLimits::stalled_after`] is dropped.
//!
//! Several PVA processes may share the search port on one host (pvxs does it by default): the
//! kernel hands a unicast datagram to one of them only, so a unicast search received here is
//! forwarded, tagged with `ORIGIN_TAG`, to the local multicast group 224.0.0.128, where every
//! process sharing the port (this one too) listens, as pvxs does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tracing::{debug, warn};

use crate::PvaError;
use crate::pvdata::{
    BitSet, ByteOrder, Decoder, Encoder, FieldDesc, PvStructure, StructDesc, TypeCache, Value,
};
use crate::request::{Request, Selection};
use crate::wire::{self, Frame, Framer, HEADER, command, control, datagram_messages, subcommand};

/// The search (UDP) port PV Access uses unless told otherwise.
pub const DEFAULT_UDP_PORT: u16 = 5076;
/// The server (TCP) port PV Access uses unless told otherwise.
pub const DEFAULT_TCP_PORT: u16 = 5075;
/// The host-local multicast group where servers sharing a search port see each other's
/// unicast searches.
pub const LOCAL_MULTICAST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 128);

/// Search flag: the client wants an answer even if nothing is found (`pvlist`).
const SEARCH_MUST_REPLY: u8 = 0x01;
/// Search flag: the datagram was sent to one host, not broadcast.
const SEARCH_UNICAST: u8 = 0x80;

/// Segment flags of a message header (bits 4–5).
const SEGMENT_FIRST: u8 = 0x10;
const SEGMENT_LAST: u8 = 0x20;
const SEGMENT_MIDDLE: u8 = 0x30;

/// What a client may always send at once: requests, and puts of images.
const CLIENT_MESSAGE_MIN: usize = 64 << 10;
/// The receive buffer the server announces: a client may segment what it sends beyond it.
const SERVER_RECEIVE_BUFFER: u32 = 1 << 20;
/// Monitor updates a subscription holds for a slow client when its pvRequest names no
/// `queueSize` (pvxs's default).
const DEFAULT_QUEUE_SIZE: usize = 4;
/// Replies gathered from one batch of requests are queued once they reach this size, so that a
/// burst of requests waits for the budget request by request.
const QUEUE_AT: usize = 64 << 10;

/// Who may put to a PV, and what a put does.
#[derive(Clone)]
pub enum Access {
    /// No puts: each is answered with an error status.
    ReadOnly,
    /// Puts allowed from these peers; each accepted put is handed to `on_put`, which may
    /// refuse it with a message (sent back to the client as an error status); if it accepts,
    /// the put's value is applied (merged by the put's BitSet) and posted.
    Writable {
        /// Who may put.
        allow: WriteRule,
        /// Sees each allowed put before it is applied; an error refuses it.
        on_put: PutHandler,
    },
}

/// What a writable PV calls for each allowed put.
pub type PutHandler = Arc<dyn Fn(&PutRequest) -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ReadOnly => f.write_str("ReadOnly"),
            Self::Writable { allow, .. } => {
                f.debug_struct("Writable").field("allow", allow).finish()
            }
        }
    }
}

/// The peers a writable PV accepts puts from: an empty list lets anyone in for that criterion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteRule {
    /// Client addresses (the TCP peer's, not what the client claims).
    pub hosts: Vec<IpAddr>,
    /// User names the client gave with the `ca` authentication (`anonymous` without it).
    pub users: Vec<String>,
}

impl WriteRule {
    fn allows(&self, ip: IpAddr, user: &str) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&ip))
            && (self.users.is_empty() || self.users.iter().any(|u| u == user))
    }
}

/// A put as the owner sees it.
#[derive(Debug, Clone)]
pub struct PutRequest {
    /// The PV's name.
    pub pv: String,
    /// The current value with the put applied.
    pub value: PvStructure,
    /// What the put changed, numbered as the PV's full type.
    pub changed: BitSet,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user the client named (`anonymous` without `ca` authentication).
    pub user: String,
    /// The host the client named.
    pub host: String,
}

/// A PV: its value, who may put, and the monitors that see its posts.
struct Pv {
    access: Access,
    state: Mutex<PvState>,
    /// A post of another type was logged already.
    wrong_type_logged: AtomicBool,
}

struct PvState {
    value: Arc<PvStructure>,
    subscribers: Vec<(Weak<Updates>, u32)>,
}

impl Pv {
    fn lock(&self) -> MutexGuard<'_, PvState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn value(&self) -> Arc<PvStructure> {
        Arc::clone(&self.lock().value)
    }
}

/// PVs this server serves: each a structure (an NT type) with its current value. Cheap to
/// clone: clones share the PVs.
#[derive(Clone, Default)]
pub struct PvStore {
    pvs: Arc<Mutex<HashMap<String, Arc<Pv>>>>,
}

impl PvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Pv>>> {
        self.pvs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, name: &str) -> Option<Arc<Pv>> {
        self.lock().get(name).cloned()
    }

    /// Adds (or replaces) a PV with its initial value; `access` says who may put. Monitors of
    /// a replaced PV see no more updates.
    pub fn add(&self, name: &str, initial: PvStructure, access: Access) {
        let pv = Pv {
            access,
            state: Mutex::new(PvState {
                value: Arc::new(initial),
                subscribers: Vec::new(),
            }),
            wrong_type_logged: AtomicBool::new(false),
        };
        self.lock().insert(name.to_owned(), Arc::new(pv));
    }

    /// Posts a new value: `changed` marks what changed ([`BitSet::all`] for everything);
    /// every monitor of the PV gets it. Returns false if there is no such PV, or if the value's
    /// type is not the PV's (logged once per PV).
    pub fn post(&self, name: &str, value: PvStructure, changed: &BitSet) -> bool {
        let Some(pv) = self.get(name) else {
            return false;
        };
        let mut state = pv.lock();
        if !Arc::ptr_eq(&state.value.desc, &value.desc) && *state.value.desc != *value.desc {
            drop(state);
            if !pv.wrong_type_logged.swap(true, Ordering::Relaxed) {
                warn!(
                    pv = name,
                    id = value.id(),
                    "PVA post of another type than the PV's refused."
                );
            }
            return false;
        }
        publish(&mut state, Arc::new(value), changed);
        true
    }

    /// Changes members in place: `f` gets the value and a BitSet to mark what it changed; the
    /// result is then posted. Returns false if there is no such PV. `f` runs with the PV
    /// locked: it must not post to the same PV.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut PvStructure, &mut BitSet)) -> bool {
        let Some(pv) = self.get(name) else {
            return false;
        };
        let mut state = pv.lock();
        let mut value = (*state.value).clone();
        let mut changed = BitSet::new();
        f(&mut value, &mut changed);
        publish(&mut state, Arc::new(value), &changed);
        true
    }

    /// The current value of a PV.
    pub fn value(&self, name: &str) -> Option<PvStructure> {
        self.get(name).map(|pv| (*pv.value()).clone())
    }

    /// The names of the PVs served.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// The largest message a client needs to send: a put of the largest writable PV (its
    /// current value, twice for slack), at least [`CLIENT_MESSAGE_MIN`], at most `max`.
    fn client_message_limit(&self, max: usize) -> usize {
        let largest = self
            .lock()
            .values()
            .filter(|pv| matches!(pv.access, Access::Writable { .. }))
            .map(|pv| {
                let value = pv.value();
                let mut out = Encoder::new(ByteOrder::Little);
                // An unencodable value costs nothing here; its puts are refused anyway.
                let _ = out.partial(&value, &BitSet::all());
                out.buf.len().saturating_mul(2)
            })
            .max()
            .unwrap_or(0);
        largest.clamp(CLIENT_MESSAGE_MIN, max.max(CLIENT_MESSAGE_MIN))
    }
}

/// Sets the PV's value and hands it to every monitor (dropping those whose connection ended).
fn publish(state: &mut PvState, value: Arc<PvStructure>, changed: &BitSet) {
    state.value = Arc::clone(&value);
    state
        .subscribers
        .retain(|(updates, ioid)| match updates.upgrade() {
            Some(updates) => updates.push(*ioid, &value, changed),
            None => false,
        });
}

/// What one client connection may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Reply and update bytes queued for one client at most. A backlog this large leaves the
    /// client's further requests unread until it has read some, and squashes its monitors'
    /// updates (a single message larger than the budget is sent alone).
    pub output_budget: usize,
    /// The largest message (its segments together) a client may send; puts of writable PVs
    /// raise what is needed up to this.
    pub max_message: usize,
    /// A connection whose socket accepts no byte for this long is dropped.
    pub stalled_after: Duration,
}

impl Default for ConnectionLimits {
    /// 16 MiB (a few camera images in flight), 64 MiB, 30 s.
    fn default() -> Self {
        Self {
            output_budget: 16 << 20,
            max_message: 64 << 20,
            stalled_after: Duration::from_secs(30),
        }
    }
}

/// Where a server listens and what it announces.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The TCP address (port 0: any free port).
    pub tcp: SocketAddr,
    /// The search port's address (5076 by default; port 0: any). Bound with `SO_REUSEADDR`,
    /// so that several servers (and clients) on one host share it.
    pub udp: SocketAddr,
    /// Where beacons go (empty: none).
    pub beacon_to: Vec<SocketAddr>,
    /// Time between beacons.
    pub beacon_period: Duration,
    /// What one connection may cost.
    pub limits: ConnectionLimits,
}

impl ServerConfig {
    /// Loopback only, any free ports, no beacons: for tests and tools.
    pub fn loopback() -> Self {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Self {
            tcp: SocketAddr::new(local, 0),
            udp: SocketAddr::new(local, 0),
            beacon_to: Vec::new(),
            beacon_period: Duration::from_secs(15),
            limits: ConnectionLimits::default(),
        }
    }

    /// All interfaces, ports from `EPICS_PVAS_SERVER_PORT` (else `EPICS_PVA_SERVER_PORT`, else
    /// 5075) and `EPICS_PVAS_BROADCAST_PORT` (else `EPICS_PVA_BROADCAST_PORT`, else 5076);
    /// beacons to `EPICS_PVAS_BEACON_ADDR_LIST` (addresses without a port get the search
    /// port), as EPICS servers read them. Entries that do not parse are skipped.
    pub fn from_env() -> Self {
        let var = |keys: &[&str]| keys.iter().find_map(|k| std::env::var(k).ok());
        let port = |keys: &[&str], default: u16| {
            var(keys)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        let udp_port = port(
            &["EPICS_PVAS_BROADCAST_PORT", "EPICS_PVA_BROADCAST_PORT"],
            DEFAULT_UDP_PORT,
        );
        let tcp_port = port(
            &["EPICS_PVAS_SERVER_PORT", "EPICS_PVA_SERVER_PORT"],
            DEFAULT_TCP_PORT,
        );
        let beacon_to = var(&["EPICS_PVAS_BEACON_ADDR_LIST"])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|entry| {
                entry.parse::<SocketAddr>().ok().or_else(|| {
                    entry
                        .parse::<IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, udp_port))
                })
            })
            .collect();
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Self {
            tcp: SocketAddr::new(any, tcp_port),
            udp: SocketAddr::new(any, udp_port),
            beacon_to,
            beacon_period: Duration::from_secs(15),
            limits: ConnectionLimits::default(),
        }
    }
}

/// What a server's connections have cost, shared with whoever reports it.
#[derive(Debug, Clone, Default)]
pub struct ServerCounters(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    refused_puts: AtomicU64,
    dropped: AtomicU64,
    bad_messages: AtomicU64,
    throttled: AtomicU64,
    queued_bytes: AtomicU64,
}

/// A snapshot of [`ServerCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub open: u64,
    /// Puts refused (by the write rule, a read-only PV, or the owner's `on_put`).
    pub refused_puts: u64,
    /// Connections dropped because their socket took nothing for
    /// [`ConnectionLimits::stalled_after`].
    pub dropped: u64,
    /// Messages that could not be read or served (UDP and TCP).
    pub bad_messages: u64,
    /// Connections whose requests had to wait for their client to read (each counted once).
    pub throttled: u64,
    /// Bytes queued for all connections now.
    pub queued_bytes: u64,
}

impl ServerCounters {
    /// The counts now.
    pub fn snapshot(&self) -> ServerStats {
        let c = &self.0;
        ServerStats {
            open: c.open.load(Ordering::Relaxed),
            refused_puts: c.refused_puts.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            bad_messages: c.bad_messages.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            queued_bytes: c.queued_bytes.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bound server.
pub struct Server {
    tcp: TcpListener,
    udp: UdpSocket,
    /// Listens on 224.0.0.128 for searches other processes forward (none if the host
    /// refused the group).
    multicast: Option<UdpSocket>,
    /// Sends forwarded searches and beacons (its own port: its datagrams are recognised when
    /// they come back through the group).
    sender: UdpSocket,
    store: PvStore,
    config: ServerConfig,
    counters: ServerCounters,
    guid: [u8; 12],
}

impl Server {
    /// Binds the TCP and search ports.
    pub async fn bind(config: ServerConfig, store: PvStore) -> std::io::Result<Self> {
        let tcp = TcpListener::bind(config.tcp).await?;
        let udp = bind_shared_udp(config.udp)?;
        let udp_addr = udp.local_addr()?;
        let multicast = match join_local_multicast(udp_addr.port()) {
            Ok(socket) => Some(socket),
            Err(error) => {
                debug!(%error, "PVA server does not see searches forwarded on this host.");
                None
            }
        };
        // On the search port's interface (all of them for 0.0.0.0): beacons may go to other
        // hosts.
        let sender = UdpSocket::bind(SocketAddr::new(udp_addr.ip(), 0)).await?;
        sender.set_broadcast(true)?;
        // Forwarded searches stay on this host (an IPv6 socket has no such option: it
        // forwards nothing anyone hears, and says so at debug level).
        let s = socket2::SockRef::from(&sender);
        if let Err(error) = s
            .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
            .and_then(|()| s.set_multicast_loop_v4(true))
        {
            debug!(%error, "PVA server cannot forward searches on this host.");
        }
        let guid = make_guid(tcp.local_addr()?.port());
        Ok(Self {
            tcp,
            udp,
            multicast,
            sender,
            store,
            config,
            counters: ServerCounters::default(),
            guid,
        })
    }

    /// The address clients connect to.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The search port's address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// What its connections cost, counted while it runs.
    pub fn counters(&self) -> ServerCounters {
        self.counters.clone()
    }

    /// Serves until the future is dropped.
    pub async fn run(self) {
        let tcp_addr = self.tcp_addr();
        let searches = Searches {
            store: self.store.clone(),
            guid: self.guid,
            tcp_addr,
            udp_addr: self.udp_addr(),
            own: self.sender.local_addr().ok(),
            tagged_elsewhere: self.multicast.is_some(),
            counters: self.counters.clone(),
        };
        let unicast = searches.answer(&self.udp, &self.sender, true);
        let forwarded = async {
            match &self.multicast {
                Some(socket) => searches.answer(socket, &self.sender, false).await,
                None => std::future::pending().await,
            }
        };
        let beacons = send_beacons(
            &self.sender,
            self.guid,
            tcp_addr,
            &self.config.beacon_to,
            self.config.beacon_period,
        );
        let accept = async {
            loop {
                match self.tcp.accept().await {
                    Ok((stream, peer)) => {
                        let store = self.store.clone();
                        let limits = self.config.limits;
                        let counters = self.counters.clone();
                        tokio::spawn(async move {
                            counters.0.open.fetch_add(1, Ordering::Relaxed);
                            let served = serve_client(stream, peer, store, limits, &counters).await;
                            counters.0.open.fetch_sub(1, Ordering::Relaxed);
                            if let Err(error) = served {
                                debug!(%peer, %error, "PVA client connection ended.");
                            }
                        });
                    }
                    Err(error) => {
                        warn!(%error, "PVA accept failed.");
                        // Out of descriptors, say: give the others a moment to close.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        tokio::join!(unicast, forwarded, beacons, accept);
    }
}

/// A UDP socket on `address` that other processes may bind too (`SO_REUSEADDR`), as EPICS
/// servers and clients bind the search port.
fn bind_shared_udp(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// A socket receiving what is sent to 224.0.0.128 on `port` over loopback.
fn join_local_multicast(port: u16) -> std::io::Result<UdpSocket> {
    let socket = bind_shared_udp(SocketAddr::new(IpAddr::V4(LOCAL_MULTICAST), port))?;
    socket.join_multicast_v4(LOCAL_MULTICAST, Ipv4Addr::LOCALHOST)?;
    Ok(socket)
}

/// A server id that differs between processes, ports and starts (clients tell servers apart
/// by it).
fn make_guid(port: u16) -> [u8; 12] {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u16(port);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    let a = hasher.finish();
    hasher.write_u64(a);
    let b = hasher.finish();
    let mut guid = [0u8; 12];
    guid[..8].copy_from_slice(&a.to_le_bytes());
    guid[8..].copy_from_slice(&b.to_le_bytes()[..4]);
    guid
}

/// A parsed SEARCH.
#[derive(Debug, Clone, PartialEq)]
struct Search {
    seq: u32,
    flags: u8,
    reply_to: SocketAddr,
    tcp: bool,
    channels: Vec<(u32, String)>,
}

/// Reads a SEARCH payload; an all-zero reply address means the sender's (`from`).
fn parse_search(payload: &[u8], order: ByteOrder, from: SocketAddr) -> Result<Search, PvaError> {
    let mut input = Decoder::new(payload, order);
    let seq = input.u32()?;
    let flags = input.u8()?;
    input.take(3)?;
    let ip = wire::get_address(&mut input)?;
    let port = input.u16()?;
    let ip = if ip.is_unspecified() { from.ip() } else { ip };
    let protocols = input.size()?.unwrap_or(0);
    let mut tcp = protocols == 0;
    for _ in 0..protocols {
        tcp |= input.string()? == "tcp";
    }
    let count = input.u16()?;
    let mut channels = Vec::new();
    for _ in 0..count {
        let cid = input.u32()?;
        channels.push((cid, input.string()?));
    }
    Ok(Search {
        seq,
        flags,
        reply_to: SocketAddr::new(ip, port),
        tcp,
        channels,
    })
}

/// What answers searches.
struct Searches {
    store: PvStore,
    guid: [u8; 12],
    tcp_addr: SocketAddr,
    /// The search socket's address (its IP goes into the ORIGIN_TAG of forwarded searches).
    udp_addr: SocketAddr,
    /// The sending socket's address: our own forwarded searches coming back.
    own: Option<SocketAddr>,
    /// A listener on 224.0.0.128 answers forwarded searches: the search socket, when bound
    /// to every interface, receives them too and leaves them to it (one answer, not two).
    tagged_elsewhere: bool,
    counters: ServerCounters,
}

impl Searches {
    /// Whether `from` is this server's sending socket (bound to 0.0.0.0, it sends from
    /// loopback to the local group).
    fn is_own(&self, from: SocketAddr) -> bool {
        self.own.is_some_and(|own| {
            own.port() == from.port() && (own.ip() == from.ip() || own.ip().is_unspecified())
        })
    }

    /// Answers the searches arriving on `socket`; with `forward`, also passes unicast ones
    /// to the host's other processes through the local multicast group.
    async fn answer(&self, socket: &UdpSocket, sender: &UdpSocket, forward: bool) {
        let mut buffer = vec![0u8; 65536];
        let mut bad_logged = HashSet::new();
        loop {
            let (len, from) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(error) => {
                    // An ICMP error reported for an earlier answer, say: nothing to do, but
                    // never a busy loop.
                    debug!(%error, "PVA search socket error.");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            if self.is_own(from) {
                continue;
            }
            match self.datagram(&buffer[..len], from, forward) {
                Ok(out) => {
                    for (bytes, to) in out {
                        let via = if to.ip() == IpAddr::V4(LOCAL_MULTICAST) {
                            sender
                        } else {
                            socket_for_reply(socket, sender)
                        };
                        if let Err(error) = via.send_to(&bytes, to).await {
                            debug!(%to, %error, "PVA search answer not sent.");
                        } else {
                            debug!(%to, len = bytes.len(), "PVA search answer sent.");
                        }
                    }
                }
                Err(error) => {
                    ServerCounters::add(&self.counters.0.bad_messages);
                    // Once per sender address: a flood of junk is not a flood of logs.
                    if bad_logged.len() < 1024 && bad_logged.insert(from.ip()) {
                        warn!(%from, %error, "PVA search datagram not understood.");
                    }
                }
            }
        }
    }

    /// The datagrams to send for one received: search answers, and the forwarded search.
    fn datagram(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        forward: bool,
    ) -> Result<Vec<(Vec<u8>, SocketAddr)>, PvaError> {
        let mut out = Vec::new();
        let mut tagged = false;
        let mut offset = 0;
        for (header, payload) in datagram_messages(datagram)? {
            let at = offset;
            offset += HEADER
                + if header.is_control() {
                    0
                } else {
                    payload.len()
                };
            match header.command {
                command::ORIGIN_TAG if !header.is_control() => tagged = true,
                command::SEARCH if !header.is_control() => {
                    if tagged && forward && self.tagged_elsewhere {
                        continue;
                    }
                    let search = parse_search(payload, header.order(), from)?;
                    if let Some(reply) = self.reply(&search) {
                        out.push((reply, search.reply_to));
                    }
                    if forward && !tagged && search.flags & SEARCH_UNICAST != 0 {
                        let message = &datagram[at..offset];
                        out.push((
                            self.forwarded(message, &search),
                            SocketAddr::new(IpAddr::V4(LOCAL_MULTICAST), self.udp_addr.port()),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The SEARCH_RESPONSE, if one is due: something found, or the client insists.
    fn reply(&self, search: &Search) -> Option<Vec<u8>> {
        if !search.tcp {
            return None;
        }
        let found: Vec<u32> = search
            .channels
            .iter()
            .filter(|(_, name)| self.store.get(name).is_some())
            .map(|(cid, _)| *cid)
            .collect();
        if found.is_empty() && search.flags & SEARCH_MUST_REPLY == 0 {
            return None;
        }
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, command::SEARCH_RESPONSE, true);
        out.buf.extend_from_slice(&self.guid);
        out.u32(search.seq);
        wire::put_address(&mut out, self.tcp_addr.ip());
        out.u16(self.tcp_addr.port());
        out.string("tcp");
        out.u8(u8::from(!found.is_empty()));
        let cids = if found.is_empty() {
            search.channels.iter().map(|(cid, _)| *cid).collect()
        } else {
            found
        };
        out.u16(u16::try_from(cids.len()).unwrap_or(u16::MAX));
        for cid in cids.iter().take(usize::from(u16::MAX)) {
            out.u32(*cid);
        }
        wire::end(&mut out, start);
        Some(out.buf)
    }

    /// `message` (one SEARCH) tagged with its origin, its reply address made explicit and its
    /// unicast flag cleared (a receiver must not forward it again).
    fn forwarded(&self, message: &[u8], search: &Search) -> Vec<u8> {
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, command::ORIGIN_TAG, false);
        wire::put_address(&mut out, self.udp_addr.ip());
        wire::end(&mut out, start);
        let mut search_bytes = message.to_vec();
        // Payload: seq (4), flags (1), reserved (3), reply address (16), port (2).
        if let Some(flags) = search_bytes.get_mut(HEADER + 4) {
            *flags &= !SEARCH_UNICAST;
        }
        let mut address = Encoder::new(ByteOrder::Little);
        wire::put_address(&mut address, search.reply_to.ip());
        if let Some(slot) = search_bytes.get_mut(HEADER + 8..HEADER + 24) {
            slot.copy_from_slice(&address.buf);
        }
        out.buf.extend_from_slice(&search_bytes);
        out.buf
    }
}

/// Answers go out of the socket the search came in on, unless that is the multicast
/// listener (bound to the group's address, it cannot send).
fn socket_for_reply<'a>(socket: &'a UdpSocket, sender: &'a UdpSocket) -> &'a UdpSocket {
    match socket.local_addr() {
        Ok(addr) if addr.ip() == IpAddr::V4(LOCAL_MULTICAST) => sender,
        _ => socket,
    }
}

/// Sends a BEACON to every destination each `period` (the first at once).
async fn send_beacons(
    sender: &UdpSocket,
    guid: [u8; 12],
    tcp: SocketAddr,
    to: &[SocketAddr],
    period: Duration,
) {
    if to.is_empty() {
        return;
    }
    let mut ticks = tokio::time::interval(period.max(Duration::from_millis(100)));
    let mut seq = 0u8;
    let mut failed = HashSet::new();
    loop {
        ticks.tick().await;
        let bytes = beacon(&guid, seq, tcp);
        seq = seq.wrapping_add(1);
        for dest in to {
            if let Err(error) = sender.send_to(&bytes, dest).await
                && failed.insert(*dest)
            {
                warn!(%dest, %error, "PVA beacon not sent.");
            }
        }
    }
}

fn beacon(guid: &[u8; 12], seq: u8, tcp: SocketAddr) -> Vec<u8> {
    let mut out = Encoder::new(ByteOrder::Little);
    let start = wire::begin(&mut out, command::BEACON, true);
    out.buf.extend_from_slice(guid);
    out.u8(0);
    out.u8(seq);
    out.u16(0);
    wire::put_address(&mut out, tcp.ip());
    out.u16(tcp.port());
    out.string("tcp");
    // No server status.
    out.null_size();
    wire::end(&mut out, start);
    out.buf
}

/// One connection's monitor updates, in post order. Each subscription holds up to its
/// queue size of updates (for a pipelined monitor: those the client has not acknowledged room
/// for); beyond that its newest one absorbs the next post, its changed bits merged and the
/// bits changed twice marked as overrun.
#[derive(Default)]
struct Updates {
    queue: Mutex<UpdateQueue>,
    ready: Notify,
}

#[derive(Default)]
struct UpdateQueue {
    /// One entry per waiting update: whose it is.
    order: VecDeque<u32>,
    monitors: HashMap<u32, MonitorState>,
}

struct MonitorState {
    selection: Arc<Selection>,
    pending: VecDeque<Pending>,
    queue_size: usize,
    /// Pipelined: updates the client has room for (`None`: not pipelined).
    window: Option<usize>,
    running: bool,
}

struct Pending {
    value: Arc<PvStructure>,
    changed: BitSet,
    overrun: BitSet,
}

/// An update ready to go: the monitor's id, what it selects, and the update.
type Ready = (u32, Arc<Selection>, Pending);

impl Updates {
    fn lock(&self) -> MutexGuard<'_, UpdateQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a post for monitor `ioid`; false if the monitor is gone.
    fn push(&self, ioid: u32, value: &Arc<PvStructure>, changed: &BitSet) -> bool {
        let mut queue = self.lock();
        let Some(monitor) = queue.monitors.get_mut(&ioid) else {
            return false;
        };
        // A stopped monitor keeps only the latest value, for when it starts.
        let room = if monitor.running {
            monitor.queue_size.max(1)
        } else {
            1
        };
        if monitor.pending.len() >= room
            && let Some(newest) = monitor.pending.back_mut()
        {
            for bit in changed.iter() {
                if newest.changed.get(bit) {
                    newest.overrun.set(bit);
                }
            }
            newest.changed.union_with(changed);
            newest.value = Arc::clone(value);
        } else {
            monitor.pending.push_back(Pending {
                value: Arc::clone(value),
                changed: changed.clone(),
                overrun: BitSet::new(),
            });
            queue.order.push_back(ioid);
        }
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// The next update the client may be sent.
    fn pop(&self) -> Option<Ready> {
        let mut queue = self.lock();
        let UpdateQueue { order, monitors } = &mut *queue;
        let mut index = 0;
        while index < order.len() {
            let ioid = order[index];
            let Some(monitor) = monitors.get_mut(&ioid) else {
                order.remove(index);
                continue;
            };
            if monitor.pending.is_empty() {
                order.remove(index);
                continue;
            }
            if !monitor.running || monitor.window == Some(0) {
                index += 1;
                continue;
            }
            order.remove(index);
            if let Some(window) = &mut monitor.window {
                *window -= 1;
            }
            let pending = monitor.pending.pop_front()?;
            return Some((ioid, Arc::clone(&monitor.selection), pending));
        }
        None
    }

    /// Changes a monitor under the lock, then wakes the sender (it may send now).
    fn with_monitor(&self, ioid: u32, f: impl FnOnce(&mut MonitorState)) {
        if let Some(monitor) = self.lock().monitors.get_mut(&ioid) {
            f(monitor);
        }
        self.ready.notify_one();
    }

    fn remove(&self, ioid: u32) {
        self.lock().monitors.remove(&ioid);
    }
}

/// One connection's way to its socket: bytes wait here, each chunk holding its size in permits
/// of the connection's budget until it is written.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::UnboundedSender<(Vec<u8>, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    limit: usize,
    counters: ServerCounters,
}

/// The connection's writer has stopped.
struct Closed;

impl Outbox {
    async fn send(&self, bytes: Vec<u8>) -> Result<(), Closed> {
        let permit = self.reserve(bytes.len()).await?;
        self.queue_reserved(bytes, permit)
    }

    /// [`Outbox::send`], telling whether it had to wait for room.
    async fn send_or_wait(&self, bytes: Vec<u8>) -> Result<bool, Closed> {
        let (permit, waited) = match self.try_reserve(bytes.len())? {
            Some(permit) => (permit, false),
            None => (self.reserve(bytes.len()).await?, true),
        };
        self.queue_reserved(bytes, permit)?;
        Ok(waited)
    }

    /// Permits for `len` bytes: a chunk larger than the whole budget takes all of it.
    fn permits(&self, len: usize) -> u32 {
        u32::try_from(len.clamp(1, self.limit)).unwrap_or(u32::MAX)
    }

    fn try_reserve(&self, len: usize) -> Result<Option<OwnedSemaphorePermit>, Closed> {
        match Arc::clone(&self.budget).try_acquire_many_owned(self.permits(len)) {
            Ok(permit) => Ok(Some(permit)),
            Err(TryAcquireError::NoPermits) => Ok(None),
            Err(TryAcquireError::Closed) => Err(Closed),
        }
    }

    async fn reserve(&self, len: usize) -> Result<OwnedSemaphorePermit, Closed> {
        Arc::clone(&self.budget)
            .acquire_many_owned(self.permits(len))
            .await
            .map_err(|_| Closed)
    }

    fn queue_reserved(&self, bytes: Vec<u8>, permit: OwnedSemaphorePermit) -> Result<(), Closed> {
        let len = bytes.len() as u64;
        let queued = &self.counters.0.queued_bytes;
        queued.fetch_add(len, Ordering::Relaxed);
        self.queue.send((bytes, permit)).map_err(|_| {
            queued.fetch_sub(len, Ordering::Relaxed);
            Closed
        })
    }

    async fn closed(&self) {
        self.queue.closed().await;
    }
}

/// Writes `rest`; false when the client has gone, an error when the socket took nothing for
/// `stalled_after`.
async fn write_chunk(
    writer: &mut OwnedWriteHalf,
    mut rest: &[u8],
    stalled_after: Duration,
) -> Result<bool, tokio::time::error::Elapsed> {
    while !rest.is_empty() {
        // Each write returns once the socket took some bytes: a client that reads slowly
        // keeps its connection, one that reads nothing loses it.
        match tokio::time::timeout(stalled_after, writer.write(rest)).await? {
            Ok(0) | Err(_) => return Ok(false),
            Ok(n) => rest = &rest[n..],
        }
    }
    Ok(true)
}

/// Writes what the connection queues; returns once the queue is closed and written, the client
/// is gone, or its socket took nothing for `stalled_after` (true: it stalled).
async fn write_out(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<(Vec<u8>, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    stalled_after: Duration,
    counters: &ServerCounters,
) -> bool {
    let queued = &counters.0.queued_bytes;
    let mut stalled = false;
    while let Some((bytes, permit)) = queue.recv().await {
        let written = write_chunk(&mut writer, &bytes, stalled_after).await;
        queued.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
        drop(permit);
        match written {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    budget.close();
    queue.close();
    while let Ok((bytes, _)) = queue.try_recv() {
        queued.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
    }
    stalled
}

/// Ends the message begun at `start` and, if its payload is larger than `segment`, cuts it
/// into segments of at most that many payload bytes (pvAccessCPP and pvxs join them).
fn finish(out: &mut Encoder, start: usize, segment: usize) {
    wire::end(out, start);
    let size = out.buf.len() - start - HEADER;
    let segment = segment.max(1024);
    if size <= segment {
        return;
    }
    let message = out.buf.split_off(start);
    let (flags, command) = (message[2], message[3]);
    let payload = &message[HEADER..];
    let count = payload.len().div_ceil(segment);
    for (i, chunk) in payload.chunks(segment).enumerate() {
        let position = match i {
            0 => SEGMENT_FIRST,
            i if i + 1 == count => SEGMENT_LAST,
            _ => SEGMENT_MIDDLE,
        };
        out.buf
            .extend_from_slice(&[wire::MAGIC, wire::VERSION, flags | position, command]);
        let len = chunk.len() as u32;
        match out.order {
            ByteOrder::Little => out.buf.extend_from_slice(&len.to_le_bytes()),
            ByteOrder::Big => out.buf.extend_from_slice(&len.to_be_bytes()),
        }
        out.buf.extend_from_slice(chunk);
    }
}

/// A success status.
fn status_ok(out: &mut Encoder) {
    out.u8(0xFF);
}

/// An error status with its message (and no call tree).
fn status_error(out: &mut Encoder, message: &str) {
    out.u8(2);
    out.string(message);
    out.string("");
}

struct Channel {
    name: String,
    pv: Arc<Pv>,
}

enum OpKind {
    Get,
    Put,
    Monitor,
}

struct Op {
    sid: u32,
    kind: OpKind,
    selection: Arc<Selection>,
    pv: Arc<Pv>,
}

/// One client connection's state.
struct Connection {
    peer: SocketAddr,
    /// The server's end of the connection: where a TCP search's answer points.
    local: SocketAddr,
    store: PvStore,
    counters: ServerCounters,
    user: String,
    host: String,
    /// The client's receive buffer: larger messages go in segments.
    segment: Arc<AtomicUsize>,
    cache: TypeCache,
    channels: HashMap<u32, Channel>,
    next_sid: u32,
    ops: HashMap<u32, Op>,
    updates: Arc<Updates>,
    /// PVs whose refused puts from this client were logged.
    refusals_logged: HashSet<String>,
    bad_logged: bool,
    out: Encoder,
}

async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    store: PvStore,
    limits: ConnectionLimits,
    counters: &ServerCounters,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let (mut reader, writer) = stream.into_split();
    let limit = limits.output_budget.clamp(1, Semaphore::MAX_PERMITS);
    let budget = Arc::new(Semaphore::new(limit));
    let (queue, queued) = mpsc::unbounded_channel();
    let outbox = Outbox {
        queue,
        budget: Arc::clone(&budget),
        limit,
        counters: counters.clone(),
    };
    let writer_task = {
        let counters = counters.clone();
        tokio::spawn(async move {
            if write_out(writer, queued, budget, limits.stalled_after, &counters).await {
                ServerCounters::add(&counters.0.dropped);
                warn!(%peer, stalled_s = limits.stalled_after.as_secs_f64(),
                    "PVA client read nothing for too long: its connection is dropped.");
            }
        })
    };
    let mut connection = Connection {
        peer,
        local,
        store,
        counters: counters.clone(),
        user: "anonymous".to_owned(),
        host: String::new(),
        segment: Arc::new(AtomicUsize::new(usize::MAX)),
        cache: TypeCache::default(),
        channels: HashMap::new(),
        next_sid: 1,
        ops: HashMap::new(),
        updates: Arc::new(Updates::default()),
        refusals_logged: HashSet::new(),
        bad_logged: false,
        out: Encoder::new(ByteOrder::Little),
    };
    connection.greet();
    let _ = outbox.send(std::mem::take(&mut connection.out.buf)).await;
    let monitor_task = {
        let updates = Arc::clone(&connection.updates);
        let outbox = outbox.clone();
        let segment = Arc::clone(&connection.segment);
        tokio::spawn(async move {
            let mut unencodable_logged = false;
            loop {
                while let Some((ioid, selection, pending)) = updates.pop() {
                    let mut out = Encoder::new(ByteOrder::Little);
                    if let Err(error) =
                        monitor_update(&mut out, ioid, &selection, &pending, &segment)
                    {
                        // Once per connection: every later update of that PV would say the same.
                        if !unencodable_logged {
                            unencodable_logged = true;
                            warn!(%peer, %error, "PVA monitor update not encoded.");
                        }
                        continue;
                    }
                    if outbox.send(out.buf).await.is_err() {
                        return;
                    }
                }
                updates.ready.notified().await;
            }
        })
    };
    let max_message = limits.max_message;
    let mut framer = Framer::new(connection.store.client_message_limit(max_message));
    let mut throttled = false;
    let result = loop {
        let read = tokio::select! {
            read = reader.read_buf(&mut framer.buf) => read,
            () = outbox.closed() => break Ok(()),
        };
        match read {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(error) => break Err(error),
        }
        let mut failed = None;
        let mut gone = false;
        loop {
            if connection.out.buf.len() >= QUEUE_AT
                && queue_replies(&outbox, &mut connection.out, &mut throttled, peer)
                    .await
                    .is_err()
            {
                gone = true;
                break;
            }
            let frame = match framer.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(PvaError::TooLarge { size, limit }) => {
                    // A writable PV added since may need more: look again before refusing.
                    let now = connection.store.client_message_limit(max_message);
                    if now > limit as usize {
                        let buf = std::mem::take(&mut framer.buf);
                        framer = Framer::new(now);
                        framer.buf = buf;
                        continue;
                    }
                    connection.bad_message(&PvaError::TooLarge { size, limit });
                    failed = Some(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "message too large",
                    ));
                    break;
                }
                Err(error) => {
                    connection.bad_message(&error);
                    failed = Some(std::io::Error::new(std::io::ErrorKind::InvalidData, error));
                    break;
                }
            };
            connection.handle(frame);
        }
        if gone
            || queue_replies(&outbox, &mut connection.out, &mut throttled, peer)
                .await
                .is_err()
        {
            break Ok(());
        }
        if let Some(error) = failed {
            break Err(error);
        }
    };
    connection.close();
    monitor_task.abort();
    drop(outbox);
    let _ = writer_task.await;
    result
}

/// Queues the replies gathered in `out`; the first time the client's requests must wait for it
/// to read, the connection is counted and logged as throttled.
async fn queue_replies(
    outbox: &Outbox,
    out: &mut Encoder,
    throttled: &mut bool,
    peer: SocketAddr,
) -> Result<(), Closed> {
    if out.buf.is_empty() {
        return Ok(());
    }
    let waited = outbox.send_or_wait(std::mem::take(&mut out.buf)).await?;
    if waited && !*throttled {
        *throttled = true;
        ServerCounters::add(&outbox.counters.0.throttled);
        warn!(%peer, output_budget = outbox.limit,
            "PVA client asks for more than it reads: its requests wait until it has read its replies.");
    }
    Ok(())
}

fn monitor_update(
    out: &mut Encoder,
    ioid: u32,
    selection: &Selection,
    pending: &Pending,
    segment: &AtomicUsize,
) -> Result<(), PvaError> {
    let start = wire::begin(out, command::MONITOR, true);
    out.u32(ioid);
    out.u8(0);
    // Everything selected: the marks as posted (projecting them would mark the whole
    // structure, and send a whole image for a changed counter).
    let whole = Arc::ptr_eq(&selection.desc, &pending.value.desc);
    let project = |bits: &BitSet| {
        if whole {
            bits.clone()
        } else {
            selection.project_changes(bits)
        }
    };
    let changed = project(&pending.changed);
    changed.encode(out);
    out.partial(&selected(selection, &pending.value), &changed)?;
    project(&pending.overrun).encode(out);
    finish(out, start, segment.load(Ordering::Relaxed));
    Ok(())
}

/// The members of `full` that `selection` selects; `full` itself (not a copy of an image) when
/// it selects everything.
fn selected<'a>(selection: &Selection, full: &'a PvStructure) -> std::borrow::Cow<'a, PvStructure> {
    if Arc::ptr_eq(&selection.desc, &full.desc) {
        std::borrow::Cow::Borrowed(full)
    } else {
        std::borrow::Cow::Owned(selection.project(full))
    }
}

/// Bit paths `changed` marks in `desc` (a marked structure as one path), `.`-separated.
fn marked_paths(desc: &StructDesc, changed: &BitSet) -> Vec<String> {
    fn walk(
        desc: &StructDesc,
        changed: &BitSet,
        prefix: &str,
        bit: &mut usize,
        out: &mut Vec<String>,
    ) {
        for (name, member) in &desc.fields {
            let path = format!("{prefix}{name}");
            if changed.get(*bit) {
                *bit += member.bit_count();
                out.push(path);
                continue;
            }
            *bit += 1;
            if let FieldDesc::Structure(inner) = member {
                walk(inner, changed, &format!("{path}."), bit, out);
            }
        }
    }
    let mut out = Vec::new();
    if changed.get(0) {
        out.extend(desc.fields.iter().map(|(name, _)| name.clone()));
    } else {
        walk(desc, changed, "", &mut 1, &mut out);
    }
    out
}

/// The full value with the members `changed` marks in `put` (a value of a selection of its
/// type) applied, and what changed numbered as the full type.
fn merge_put(
    full: &PvStructure,
    put: &PvStructure,
    changed: &BitSet,
) -> Result<(PvStructure, BitSet), PvaError> {
    let mut merged = full.clone();
    let mut full_changed = BitSet::new();
    for path in marked_paths(&put.desc, changed) {
        let value = put
            .value(&path)
            .ok_or_else(|| PvaError::NoSuchField(path.clone()))?;
        merged.set(&path, value.clone(), &mut full_changed)?;
    }
    Ok((merged, full_changed))
}

impl Connection {
    /// The server's first words: its byte order, then what validation it offers.
    fn greet(&mut self) {
        wire::control_message(&mut self.out, control::SET_BYTE_ORDER, 0, true);
        let start = wire::begin(&mut self.out, command::CONNECTION_VALIDATION, true);
        self.out.u32(SERVER_RECEIVE_BUFFER);
        self.out.u16(0x7FFF);
        self.out.size(2);
        self.out.string("anonymous");
        self.out.string("ca");
        wire::end(&mut self.out, start);
    }

    /// Counts a message that could not be served; logs the first per connection.
    fn bad_message(&mut self, error: &PvaError) {
        ServerCounters::add(&self.counters.0.bad_messages);
        if !self.bad_logged {
            self.bad_logged = true;
            warn!(peer = %self.peer, %error, "PVA client sent a message that cannot be served.");
        }
    }

    fn segment(&self) -> usize {
        self.segment.load(Ordering::Relaxed)
    }

    fn handle(&mut self, frame: Frame) {
        match frame {
            Frame::Control {
                command: control::ECHO_REQUEST,
                data,
                ..
            } => wire::control_message(&mut self.out, control::ECHO_RESPONSE, data, true),
            Frame::Control { .. } => {}
            Frame::Message {
                command,
                flags,
                payload,
            } => {
                let order = if flags & 0x80 != 0 {
                    ByteOrder::Big
                } else {
                    ByteOrder::Little
                };
                let mark = self.out.buf.len();
                if let Err(error) = self.message(command, &payload, order) {
                    // A reply half written is no reply.
                    self.out.buf.truncate(mark);
                    self.bad_message(&error);
                }
            }
        }
    }

    fn message(&mut self, cmd: u8, payload: &[u8], order: ByteOrder) -> Result<(), PvaError> {
        let mut input = Decoder::new(payload, order);
        match cmd {
            command::CONNECTION_VALIDATION => self.validation(&mut input),
            command::ECHO => {
                let start = wire::begin(&mut self.out, command::ECHO, true);
                self.out.buf.extend_from_slice(payload);
                wire::end(&mut self.out, start);
                Ok(())
            }
            command::CREATE_CHANNEL => self.create_channels(&mut input),
            command::DESTROY_CHANNEL => {
                let sid = input.u32()?;
                let cid = input.u32()?;
                if self.channels.remove(&sid).is_some() {
                    let gone: Vec<u32> = self
                        .ops
                        .iter()
                        .filter(|(_, op)| op.sid == sid)
                        .map(|(ioid, _)| *ioid)
                        .collect();
                    for ioid in gone {
                        self.end_op(ioid);
                    }
                }
                let start = wire::begin(&mut self.out, command::DESTROY_CHANNEL, true);
                self.out.u32(sid);
                self.out.u32(cid);
                wire::end(&mut self.out, start);
                Ok(())
            }
            command::GET_FIELD => self.get_field(&mut input),
            command::GET => self.get(&mut input),
            command::PUT => self.put(&mut input),
            command::MONITOR => self.monitor(&mut input),
            command::DESTROY_REQUEST | command::CANCEL_REQUEST => {
                let _sid = input.u32()?;
                let ioid = input.u32()?;
                if cmd == command::DESTROY_REQUEST {
                    self.end_op(ioid);
                }
                Ok(())
            }
            command::SEARCH => self.tcp_search(payload, order),
            // Anything else (RPC, PUT_GET, …) is not served: the client learns it by silence
            // for an operation, as from a server without the feature.
            _ => Ok(()),
        }
    }

    /// The client's validation: its receive buffer, and for `ca` who it says it is.
    fn validation(&mut self, input: &mut Decoder<'_>) -> Result<(), PvaError> {
        let buffer = input.u32()?;
        let _registry = input.u16()?;
        let _qos = input.u16()?;
        let method = input.string()?;
        if method == "ca"
            && !input.is_empty()
            && let Some(desc) = input.field_desc(&mut self.cache)?
        {
            let value = input.value(&desc, &mut self.cache)?;
            if let Ok(info) = PvStructure::from_parts(&desc, value) {
                if let Some(Value::String(user)) = info.value("user") {
                    self.user = user.clone();
                }
                if let Some(Value::String(host)) = info.value("host") {
                    self.host = host.clone();
                }
            }
        }
        // A client announcing a tiny buffer still gets sensible segments.
        self.segment
            .store((buffer as usize).max(16 << 10), Ordering::Relaxed);
        let start = wire::begin(&mut self.out, command::CONNECTION_VALIDATED, true);
        status_ok(&mut self.out);
        wire::end(&mut self.out, start);
        debug!(peer = %self.peer, user = %self.user, host = %self.host, %method, buffer, "PVA client validated.");
        Ok(())
    }

    fn create_channels(&mut self, input: &mut Decoder<'_>) -> Result<(), PvaError> {
        let count = input.u16()?;
        for _ in 0..count {
            let cid = input.u32()?;
            let name = input.string()?;
            let start = wire::begin(&mut self.out, command::CREATE_CHANNEL, true);
            self.out.u32(cid);
            match self.store.get(&name) {
                Some(pv) => {
                    let sid = self.next_sid;
                    self.next_sid = self.next_sid.wrapping_add(1);
                    self.out.u32(sid);
                    status_ok(&mut self.out);
                    self.channels.insert(sid, Channel { name, pv });
                }
                None => {
                    self.out.u32(u32::MAX);
                    status_error(&mut self.out, &format!("no PV {name:?} here"));
                }
            }
            wire::end(&mut self.out, start);
        }
        Ok(())
    }

    fn get_field(&mut self, input: &mut Decoder<'_>) -> Result<(), PvaError> {
        let sid = input.u32()?;
        let ioid = input.u32()?;
        let sub = input.string().unwrap_or_default();
        let start = wire::begin(&mut self.out, command::GET_FIELD, true);
        self.out.u32(ioid);
        let desc = self.channels.get(&sid).map(|c| c.pv.value().field_desc());
        match desc {
            Some(desc) => match if sub.is_empty() {
                Some(&desc)
            } else {
                desc.at(&sub)
            } {
                Some(field) => {
                    status_ok(&mut self.out);
                    self.out.field_desc(field);
                }
                None => status_error(&mut self.out, &format!("no field {sub:?}")),
            },
            None => status_error(&mut self.out, "no such channel"),
        }
        wire::end(&mut self.out, start);
        Ok(())
    }

    /// Reads an INIT's pvRequest and resolves it against the channel's type: the selection,
    /// or the error to answer with.
    fn init(
        &mut self,
        sid: u32,
        input: &mut Decoder<'_>,
    ) -> Result<Result<(Request, Selection), String>, PvaError> {
        let request = match input.field_desc(&mut self.cache)? {
            Some(desc) => {
                let value = input.value(&desc, &mut self.cache)?;
                match PvStructure::from_parts(&desc, value) {
                    Ok(pv) => Request::from_pv(&pv),
                    Err(_) => Request::default(),
                }
            }
            None => Request::default(),
        };
        let Some(channel) = self.channels.get(&sid) else {
            return Ok(Err("no such channel".to_owned()));
        };
        let desc = Arc::clone(&channel.pv.value().desc);
        Ok(match request.select(&desc) {
            Ok(selection) => Ok((request, selection)),
            Err(error) => Err(error.to_string()),
        })
    }

    fn reply_init(&mut self, cmd: u8, ioid: u32, subcmd: u8, result: Result<&Selection, &str>) {
        let start = wire::begin(&mut self.out, cmd, true);
        self.out.u32(ioid);
        self.out.u8(subcmd);
        match result {
            Ok(selection) => {
                status_ok(&mut self.out);
                self.out
                    .field_desc(&FieldDesc::Structure(Arc::clone(&selection.desc)));
            }
            Err(message) => status_error(&mut self.out, message),
        }
        wire::end(&mut self.out, start);
    }

    fn reply_status(&mut self, cmd: u8, ioid: u32, subcmd: u8, error: Option<&str>) {
        let start = wire::begin(&mut self.out, cmd, true);
        self.out.u32(ioid);
        self.out.u8(subcmd);
        match error {
            None => status_ok(&mut self.out),
            Some(message) => status_error(&mut self.out, message),
        }
        wire::end(&mut self.out, start);
    }

    /// The op `ioid` on channel `sid`, if it is of this kind; else an error reply is written.
    fn op(
        &mut self,
        cmd: u8,
        sid: u32,
        ioid: u32,
        subcmd: u8,
    ) -> Option<(Arc<Selection>, Arc<Pv>, String)> {
        let found = self.ops.get(&ioid).and_then(|op| {
            let kind_ok = matches!(
                (&op.kind, cmd),
                (OpKind::Get, command::GET)
                    | (OpKind::Put, command::PUT)
                    | (OpKind::Monitor, command::MONITOR)
            );
            let channel = self
                .channels
                .get(&op.sid)
                .filter(|_| kind_ok && op.sid == sid)?;
            Some((
                Arc::clone(&op.selection),
                Arc::clone(&channel.pv),
                channel.name.clone(),
            ))
        });
        if found.is_none() {
            self.reply_status(cmd, ioid, subcmd, Some("no such operation"));
        }
        found
    }

    /// Writes a GET-style reply: status, changed bits and the selected value (all of it).
    fn reply_value(
        &mut self,
        cmd: u8,
        ioid: u32,
        subcmd: u8,
        selection: &Selection,
        pv: &Pv,
    ) -> Result<(), PvaError> {
        let start = wire::begin(&mut self.out, cmd, true);
        self.out.u32(ioid);
        self.out.u8(subcmd);
        status_ok(&mut self.out);
        let all = BitSet::all();
        all.encode(&mut self.out);
        self.out.partial(&selected(selection, &pv.value()), &all)?;
        let segment = self.segment();
        finish(&mut self.out, start, segment);
        Ok(())
    }

    fn get(&mut self, input: &mut Decoder<'_>) -> Result<(), PvaError> {
        let sid = input.u32()?;
        let ioid = input.u32()?;
        let subcmd = input.u8()?;
        if subcmd & subcommand::INIT != 0 {
            return self.init_op(command::GET, OpKind::Get, sid, ioid, subcmd, input);
        }
        let Some((selection, pv, _)) = self.op(command::GET, sid, ioid, subcmd) else {
            return Ok(());
        };
        self.reply_value(command::GET, ioid, subcmd, &selection, &pv)?;
        if subcmd & subcommand::DESTROY != 0 {
            self.end_op(ioid);
        }
        Ok(())
    }

    fn init_op(
        &mut self,
        cmd: u8,
        kind: OpKind,
        sid: u32,
        ioid: u32,
        subcmd: u8,
        input: &mut Decoder<'_>,
    ) -> Result<(), PvaError> {
        match self.init(sid, input)? {
            Ok((_, selection)) => {
                self.reply_init(cmd, ioid, subcmd, Ok(&selection));
                self.end_op(ioid);
                if let Some(channel) = self.channels.get(&sid) {
                    let pv = Arc::clone(&channel.pv);
                    let selection = Arc::new(selection);
                    self.ops.insert(
                        ioid,
                        Op {
                            sid,
                            kind,
                            selection,
                            pv,
                        },
                    );
                }
            }
            Err(message) => self.reply_init(cmd, ioid, subcmd, Err(&message)),
        }
        Ok(())
    }

    fn put(&mut self, input: &mut Decoder<'_>) -> Result<(), PvaError> {
        let sid = input.u32()?;
        let ioid = input.u32()?;
        let subcmd = input.u8()?;
        if subcmd & subcommand::INIT != 0 {
            return self.init_op(command::PUT, OpKind::Put, sid, ioid, subcmd, input);
        }
        let Some((selection, pv, name)) = self.op(command::PUT, sid, ioid, subcmd) else {
            return Ok(());
        };
        if subcmd & subcommand::GET != 0 {
            // The client fetches the current value to fill in before it puts.
            self.reply_value(command::PUT, ioid, subcmd, &selection, &pv)?;
        } else {
            let changed = BitSet::decode(input)?;
            let current = pv.value();
            let mut put = selection.project(&current);
            input.partial(&mut put, &changed, &mut self.cache)?;
            let verdict = self.apply_put(&name, &pv, &current, &put, &changed);
            self.reply_status(command::PUT, ioid, subcmd, verdict.err().as_deref());
        }
        if subcmd & subcommand::DESTROY != 0 {
            self.end_op(ioid);
        }
        Ok(())
    }

    /// Checks and applies a put; the error message for the client if it is refused.
    fn apply_put(
        &mut self,
        name: &str,
        pv: &Pv,
        current: &PvStructure,
        put: &PvStructure,
        changed: &BitSet,
    ) -> Result<(), String> {
        let verdict = match &pv.access {
            Access::ReadOnly => Err(format!("{name} is read-only")),
            Access::Writable { allow, .. } if !allow.allows(self.peer.ip(), &self.user) => Err(
                format!("{name}: no put access for {}@{}", self.user, self.peer.ip()),
            ),
            Access::Writable { on_put, .. } => match merge_put(current, put, changed) {
                Err(error) => Err(error.to_string()),
                Ok((merged, full_changed)) => {
                    let request = PutRequest {
                        pv: name.to_owned(),
                        value: merged,
                        changed: full_changed,
                        peer: self.peer,
                        user: self.user.clone(),
                        host: self.host.clone(),
                    };
                    on_put(&request).map(|()| {
                        self.store.post(name, request.value, &request.changed);
                    })
                }
            },
        };
        if let Err(message) = &verdict {
            ServerCounters::add(&self.counters.0.refused_puts);
            if self.refusals_logged.len() < 1024 && self.refusals_logged.insert(name.to_owned()) {
                warn!(peer = %self.peer, user = %self.user, host = %self.host, pv = name,
                    reason = %message, "PVA put refused.");
            }
        }
        verdict
    }

    fn monitor(&mut self, input: &mut Decoder<'_>) -> Result<(), PvaError> {
        let sid = input.u32()?;
        let ioid = input.u32()?;
        let subcmd = input.u8()?;
        if subcmd & subcommand::INIT != 0 {
            let (request, selection) = match self.init(sid, input)? {
                Ok(chosen) => chosen,
                Err(message) => {
                    self.reply_init(command::MONITOR, ioid, subcmd, Err(&message));
                    return Ok(());
                }
            };
            // pvAccessCPP and pvxs send the room they have after the request when pipelined.
            let acked = if subcmd & subcommand::PIPELINE_ACK != 0 {
                input.u32().ok().map(|n| n as usize)
            } else {
                None
            };
            let queue_size = request.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE).max(1);
            let pipelined = request.pipeline || acked.is_some();
            let window = pipelined.then(|| acked.unwrap_or(queue_size));
            self.reply_init(command::MONITOR, ioid, subcmd, Ok(&selection));
            self.end_op(ioid);
            let selection = Arc::new(selection);
            let Some(pv) = self.channels.get(&sid).map(|c| Arc::clone(&c.pv)) else {
                return Ok(());
            };
            self.updates.lock().monitors.insert(
                ioid,
                MonitorState {
                    selection: Arc::clone(&selection),
                    pending: VecDeque::new(),
                    queue_size: window.unwrap_or(queue_size).max(queue_size),
                    window,
                    running: false,
                },
            );
            {
                // The first update is the whole current value, sent once started.
                let mut state = pv.lock();
                let value = Arc::clone(&state.value);
                self.updates.push(ioid, &value, &BitSet::all());
                state
                    .subscribers
                    .push((Arc::downgrade(&self.updates), ioid));
            }
            self.ops.insert(
                ioid,
                Op {
                    sid,
                    kind: OpKind::Monitor,
                    selection,
                    pv,
                },
            );
            return Ok(());
        }
        if self.op(command::MONITOR, sid, ioid, subcmd).is_none() {
            return Ok(());
        }
        if subcmd & subcommand::PIPELINE_ACK != 0 {
            let freed = input.u32()? as usize;
            self.updates.with_monitor(ioid, |m| {
                if let Some(window) = &mut m.window {
                    *window = window.saturating_add(freed);
                }
            });
        }
        if subcmd & subcommand::PROCESS != 0 {
            let start = subcmd & subcommand::START != 0;
            self.updates.with_monitor(ioid, |m| m.running = start);
        }
        if subcmd & subcommand::DESTROY != 0 {
            self.end_op(ioid);
        }
        Ok(())
    }

    /// A SEARCH over TCP (a client using this server as a name server): answered on the
    /// connection.
    fn tcp_search(&mut self, payload: &[u8], order: ByteOrder) -> Result<(), PvaError> {
        let search = parse_search(payload, order, self.peer)?;
        let mut found = Vec::new();
        for (cid, name) in &search.channels {
            if self.store.get(name).is_some() {
                found.push(*cid);
            }
        }
        if found.is_empty() && search.flags & SEARCH_MUST_REPLY == 0 {
            return Ok(());
        }
        let start = wire::begin(&mut self.out, command::SEARCH_RESPONSE, true);
        self.out.buf.extend_from_slice(&[0; 12]);
        self.out.u32(search.seq);
        wire::put_address(&mut self.out, self.local.ip());
        self.out.u16(self.local.port());
        self.out.string("tcp");
        self.out.u8(u8::from(!found.is_empty()));
        self.out.u16(u16::try_from(found.len()).unwrap_or(u16::MAX));
        for cid in found.iter().take(usize::from(u16::MAX)) {
            self.out.u32(*cid);
        }
        wire::end(&mut self.out, start);
        Ok(())
    }

    fn end_op(&mut self, ioid: u32) {
        if let Some(op) = self.ops.remove(&ioid)
            && matches!(op.kind, OpKind::Monitor)
        {
            // Its id may be reused for another PV's monitor: this PV must not feed that one.
            let updates = Arc::as_ptr(&self.updates);
            op.pv
                .lock()
                .subscribers
                .retain(|(u, id)| !(*id == ioid && std::ptr::eq(u.as_ptr(), updates)));
            self.updates.remove(ioid);
        }
    }

    /// Ends every operation (the PVs' subscriber lists drop this connection on their next
    /// post).
    fn close(&mut self) {
        let ioids: Vec<u32> = self.ops.keys().copied().collect();
        for ioid in ioids {
            self.end_op(ioid);
        }
        self.channels.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pvdata::ScalarType;

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

    fn scalar(x: f64) -> PvStructure {
        let mut pv = PvStructure::new(scalar_desc());
        pv.set("value", Value::Double(x), &mut BitSet::new())
            .unwrap();
        pv
    }

    /// A SEARCH as pvxs sends it (big-endian): unicast, reply to the sender's address.
    fn search_datagram(flags: u8, names: &[(u32, &str)]) -> Vec<u8> {
        let mut out = Encoder::new(ByteOrder::Big);
        let start = wire::begin(&mut out, command::SEARCH, false);
        out.u32(0x6669_6E64);
        out.u8(flags);
        out.buf.extend_from_slice(&[0; 3]);
        wire::put_address(&mut out, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        out.u16(47802);
        out.size(1);
        out.string("tcp");
        out.u16(names.len() as u16);
        for (cid, name) in names {
            out.u32(*cid);
            out.string(name);
        }
        wire::end(&mut out, start);
        out.buf
    }

    fn searches(store: PvStore) -> Searches {
        Searches {
            store,
            guid: [7; 12],
            tcp_addr: "127.0.0.1:5075".parse().unwrap(),
            udp_addr: "0.0.0.0:5076".parse().unwrap(),
            own: None,
            tagged_elsewhere: false,
            counters: ServerCounters::default(),
        }
    }

    /// The found flag and cids of a SEARCH_RESPONSE.
    fn response(bytes: &[u8]) -> (bool, Vec<u32>) {
        let messages = datagram_messages(bytes).unwrap();
        assert_eq!(messages.len(), 1);
        let (header, payload) = messages[0];
        assert_eq!(header.command, command::SEARCH_RESPONSE);
        let mut input = Decoder::new(payload, header.order());
        input.take(12 + 4).unwrap();
        assert_eq!(
            wire::get_address(&mut input).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(input.u16().unwrap(), 5075);
        assert_eq!(input.string().unwrap(), "tcp");
        let found = input.u8().unwrap() != 0;
        let cids = (0..input.u16().unwrap())
            .map(|_| input.u32().unwrap())
            .collect();
        (found, cids)
    }

    #[test]
    fn searches_are_answered_and_unicast_ones_forwarded_once() {
        let store = PvStore::new();
        store.add("A", scalar(1.0), Access::ReadOnly);
        let searches = searches(store);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let datagram = search_datagram(SEARCH_UNICAST, &[(7, "A"), (8, "B")]);
        let out = searches.datagram(&datagram, from, true).unwrap();
        assert_eq!(out.len(), 2, "an answer and the forwarded search");
        assert_eq!(out[0].1, "127.0.0.1:47802".parse().unwrap());
        assert_eq!(response(&out[0].0), (true, vec![7]));
        let (forwarded, to) = &out[1];
        assert_eq!(*to, SocketAddr::new(IpAddr::V4(LOCAL_MULTICAST), 5076));
        let messages = datagram_messages(forwarded).unwrap();
        assert_eq!(messages[0].0.command, command::ORIGIN_TAG);
        let search = parse_search(messages[1].1, messages[1].0.order(), from).unwrap();
        assert_eq!(search.flags & SEARCH_UNICAST, 0);
        assert_eq!(search.reply_to, "127.0.0.1:47802".parse().unwrap());
        assert_eq!(search.channels, [(7, "A".to_owned()), (8, "B".to_owned())]);

        // Another process's copy: answered, not forwarded again (also not from a tagged
        // datagram that kept its unicast flag).
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let out = searches.datagram(forwarded, other, true).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, "127.0.0.1:47802".parse().unwrap());
        let mut tagged = forwarded.clone();
        tagged[HEADER + 16 + HEADER + 4] |= SEARCH_UNICAST;
        assert_eq!(searches.datagram(&tagged, other, true).unwrap().len(), 1);

        // Nothing found: silence, unless the client insists (`pvlist`).
        let none = search_datagram(0, &[(9, "B")]);
        assert!(searches.datagram(&none, from, true).unwrap().is_empty());
        let must = search_datagram(SEARCH_MUST_REPLY, &[(9, "B")]);
        let out = searches.datagram(&must, from, true).unwrap();
        assert_eq!(response(&out[0].0), (false, vec![9]));

        // Junk is an error (counted by the caller), a truncated search too.
        assert!(
            searches
                .datagram(b"GET / HTTP/1.0\r\n", from, true)
                .is_err()
        );
        let mut short = search_datagram(0, &[(9, "B")]);
        short.truncate(short.len() - 1);
        assert!(searches.datagram(&short, from, true).is_err());
    }

    fn monitor(updates: &Updates, ioid: u32, queue_size: usize, window: Option<usize>) {
        let selection = Request::default().select(&scalar_desc()).unwrap();
        updates.lock().monitors.insert(
            ioid,
            MonitorState {
                selection: Arc::new(selection),
                pending: VecDeque::new(),
                queue_size,
                window,
                running: true,
            },
        );
    }

    fn post(updates: &Updates, ioid: u32, x: f64, bits: &[usize]) {
        let mut changed = BitSet::new();
        bits.iter().for_each(|&b| changed.set(b));
        assert!(updates.push(ioid, &Arc::new(scalar(x)), &changed));
    }

    fn drain(updates: &Updates) -> Vec<(u32, f64, Vec<usize>, Vec<usize>)> {
        std::iter::from_fn(|| updates.pop())
            .map(|(ioid, _, p)| {
                let x = p.value.value("value").and_then(Value::as_f64).unwrap();
                (
                    ioid,
                    x,
                    p.changed.iter().collect(),
                    p.overrun.iter().collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_slow_client_gets_squashed_updates_with_overrun_bits() {
        let updates = Updates::default();
        monitor(&updates, 1, 2, None);
        monitor(&updates, 2, 2, None);
        post(&updates, 1, 1.0, &[1]);
        post(&updates, 2, 10.0, &[1]);
        post(&updates, 1, 2.0, &[1]);
        // Monitor 1 is full: these squash into its newest update.
        post(&updates, 1, 3.0, &[1]);
        post(&updates, 1, 4.0, &[3]);
        assert_eq!(
            drain(&updates),
            [
                (1, 1.0, vec![1], vec![]),
                (2, 10.0, vec![1], vec![]),
                (1, 4.0, vec![1, 3], vec![1]),
            ]
        );
        // A gone monitor takes no more, and its waiting updates go with it.
        post(&updates, 2, 11.0, &[1]);
        updates.remove(2);
        assert!(!updates.push(2, &Arc::new(scalar(0.0)), &BitSet::all()));
        assert_eq!(drain(&updates), []);
    }

    #[test]
    fn a_pipelined_monitor_sends_only_what_the_client_has_room_for() {
        let updates = Updates::default();
        monitor(&updates, 1, 2, Some(1));
        for x in 1..=4 {
            post(&updates, 1, f64::from(x), &[1]);
        }
        // One sent; two wait (queue size), the newest holding posts 2 to 4.
        assert_eq!(drain(&updates), [(1, 1.0, vec![1], vec![])]);
        updates.with_monitor(1, |m| m.window = Some(5));
        assert_eq!(drain(&updates), [(1, 4.0, vec![1], vec![1])]);
        // Stopped: nothing goes, the latest waits.
        updates.with_monitor(1, |m| m.running = false);
        post(&updates, 1, 5.0, &[1]);
        assert_eq!(drain(&updates), []);
        updates.with_monitor(1, |m| m.running = true);
        assert_eq!(drain(&updates), [(1, 5.0, vec![1], vec![])]);
    }

    #[test]
    fn a_put_of_a_selection_merges_into_the_full_value() {
        let full = scalar(1.0);
        let request = Request::parse("field(value,alarm.message)").unwrap();
        let selection = request.select(&full.desc).unwrap();
        let mut put = selection.project(&full);
        let mut changed = BitSet::new();
        put.set(
            "alarm.message",
            Value::String("set by hand".to_owned()),
            &mut changed,
        )
        .unwrap();
        let (merged, full_changed) = merge_put(&full, &put, &changed).unwrap();
        assert_eq!(merged.value("value"), Some(&Value::Double(1.0)));
        assert_eq!(
            merged.value("alarm.message"),
            Some(&Value::String("set by hand".to_owned()))
        );
        assert_eq!(
            full_changed.iter().collect::<Vec<_>>(),
            [full.bit_of("alarm.message").unwrap()]
        );
        // Bit 0: every selected member.
        put.set("value", Value::Double(2.0), &mut BitSet::new())
            .unwrap();
        let (merged, _) = merge_put(&full, &put, &BitSet::all()).unwrap();
        assert_eq!(merged.value("value"), Some(&Value::Double(2.0)));
        assert_eq!(marked_paths(&put.desc, &BitSet::all()), ["value", "alarm"]);
    }

    #[test]
    fn a_large_message_goes_in_segments_that_join() {
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, command::MONITOR, true);
        out.buf.extend((0..5000u32).map(|i| i as u8));
        finish(&mut out, start, 1024);
        // Five segments of at most 1024 bytes: five headers.
        assert_eq!(out.buf.len(), 5000 + 5 * HEADER);
        let mut framer = Framer::new(1 << 20);
        framer.buf.extend_from_slice(&out.buf);
        let Some(Frame::Message {
            payload, command, ..
        }) = framer.next_frame().unwrap()
        else {
            panic!("a message");
        };
        assert_eq!(command, command::MONITOR);
        assert_eq!(payload, (0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
        // A small one stays whole.
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, command::GET, true);
        out.buf.extend_from_slice(&[1, 2, 3]);
        finish(&mut out, start, 1024);
        assert_eq!(out.buf.len(), HEADER + 3);
    }

    #[test]
    fn posts_of_another_type_are_refused() {
        let store = PvStore::new();
        store.add("A", scalar(1.0), Access::ReadOnly);
        assert!(store.post("A", scalar(2.0), &BitSet::all()));
        let other = PvStructure::new(Arc::new(StructDesc::new(
            "x",
            vec![("value", FieldDesc::Scalar(ScalarType::Int))],
        )));
        assert!(!store.post("A", other, &BitSet::all()));
        assert!(!store.post("B", scalar(2.0), &BitSet::all()));
        assert!(store.update("A", |pv, changed| {
            pv.set("value", Value::Double(3.0), changed).unwrap();
        }));
        assert_eq!(
            store.value("A").unwrap().value("value"),
            Some(&Value::Double(3.0))
        );
        assert_eq!(store.names(), ["A"]);
    }

    /// A raw client: validates, opens `name`, and returns its channel id.
    async fn open(stream: &mut TcpStream, framer: &mut Framer, name: &str) -> u32 {
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, command::CONNECTION_VALIDATION, false);
        out.u32(1 << 16);
        out.u16(0x7FFF);
        out.u16(0);
        out.string("anonymous");
        wire::end(&mut out, start);
        let start = wire::begin(&mut out, command::CREATE_CHANNEL, false);
        out.u16(1);
        out.u32(1);
        out.string(name);
        wire::end(&mut out, start);
        stream.write_all(&out.buf).await.unwrap();
        loop {
            while let Some(frame) = framer.next_frame().unwrap() {
                if let Frame::Message {
                    command: command::CREATE_CHANNEL,
                    payload,
                    ..
                } = frame
                {
                    let mut input = Decoder::new(&payload, ByteOrder::Little);
                    assert_eq!(input.u32().unwrap(), 1);
                    return input.u32().unwrap();
                }
            }
            assert!(
                stream.read_buf(&mut framer.buf).await.unwrap() > 0,
                "closed"
            );
        }
    }

    /// A client that asks for a large PV again and again and never reads costs its budget,
    /// not a reply per request; once its socket has taken nothing for `stalled_after`, the
    /// connection is dropped and its queue freed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_costs_its_budget_and_is_dropped() {
        let store = PvStore::new();
        let desc = Arc::new(StructDesc::new(
            "epics:nt/NTScalarArray:1.0",
            vec![("value", FieldDesc::ScalarArray(ScalarType::Double))],
        ));
        let mut big = PvStructure::new(desc);
        big.set(
            "value",
            Value::Array(crate::pvdata::ArrayValue::Double(vec![1.5; 100_000])),
            &mut BitSet::new(),
        )
        .unwrap();
        store.add("BIG", big, Access::ReadOnly);
        let limits = ConnectionLimits {
            output_budget: 1 << 20,
            max_message: 1 << 20,
            stalled_after: Duration::from_secs(1),
        };
        let config = ServerConfig {
            limits,
            ..ServerConfig::loopback()
        };
        let server = Server::bind(config, store).await.unwrap();
        let address = server.tcp_addr();
        let counters = server.counters();
        let serving = tokio::spawn(server.run());

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        let mut framer = Framer::new(1 << 24);
        let sid = open(&mut stream, &mut framer, "BIG").await;
        // A GET INIT with no pvRequest, then 1,000 gets of 800 kB each, never read.
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, command::GET, false);
        out.u32(sid);
        out.u32(1);
        out.u8(subcommand::INIT);
        out.null_size();
        wire::end(&mut out, start);
        for _ in 0..1000 {
            let start = wire::begin(&mut out, command::GET, false);
            out.u32(sid);
            out.u32(1);
            out.u8(0);
            wire::end(&mut out, start);
        }
        stream.write_all(&out.buf).await.unwrap();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let stats = loop {
            let stats = counters.snapshot();
            // One reply beyond the budget may wait while it is written.
            assert!(
                stats.queued_bytes <= 2 * limits.output_budget as u64,
                "{stats:?}"
            );
            if stats.dropped == 1 {
                break stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never dropped: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(stats.throttled, 1, "{stats:?}");
        while counters.snapshot().open != 0 || counters.snapshot().queued_bytes != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                counters.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        serving.abort();
    }

    /// Bad messages are counted, logged once, and the connection goes on where it can.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_message_is_counted_and_the_connection_goes_on() {
        let store = PvStore::new();
        store.add("A", scalar(1.0), Access::ReadOnly);
        let server = Server::bind(ServerConfig::loopback(), store).await.unwrap();
        let address = server.tcp_addr();
        let counters = server.counters();
        let serving = tokio::spawn(server.run());
        let mut stream = TcpStream::connect(address).await.unwrap();
        let mut framer = Framer::new(1 << 24);
        let sid = open(&mut stream, &mut framer, "A").await;
        // A GET with a truncated header, then an echo that must still be answered.
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, command::GET, false);
        out.u32(sid);
        wire::end(&mut out, start);
        let start = wire::begin(&mut out, command::ECHO, false);
        out.buf.extend_from_slice(b"ping");
        wire::end(&mut out, start);
        stream.write_all(&out.buf).await.unwrap();
        loop {
            if let Some(Frame::Message {
                command: command::ECHO,
                payload,
                ..
            }) = framer.next_frame().unwrap()
            {
                assert_eq!(payload, b"ping");
                break;
            }
            if framer.buf.len() < HEADER {
                assert!(stream.read_buf(&mut framer.buf).await.unwrap() > 0);
            }
        }
        assert_eq!(counters.snapshot().bad_messages, 1);
        serving.abort();
    }

    #[tokio::test]
    async fn beacons_name_the_server_and_count_up() {
        let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let config = ServerConfig {
            beacon_to: vec![listener.local_addr().unwrap()],
            beacon_period: Duration::from_millis(100),
            ..ServerConfig::loopback()
        };
        let server = Server::bind(config, PvStore::new()).await.unwrap();
        let tcp = server.tcp_addr();
        let serving = tokio::spawn(server.run());
        let mut seqs = Vec::new();
        let mut guids = HashSet::new();
        let mut buffer = [0u8; 1024];
        while seqs.len() < 3 {
            let (len, _) =
                tokio::time::timeout(Duration::from_secs(10), listener.recv_from(&mut buffer))
                    .await
                    .unwrap()
                    .unwrap();
            let messages = datagram_messages(&buffer[..len]).unwrap();
            let (header, payload) = messages[0];
            assert_eq!(header.command, command::BEACON);
            let mut input = Decoder::new(payload, header.order());
            guids.insert(input.take(12).unwrap().to_vec());
            assert_eq!(input.u8().unwrap(), 0);
            seqs.push(input.u8().unwrap());
            input.u16().unwrap();
            assert_eq!(wire::get_address(&mut input).unwrap(), tcp.ip());
            assert_eq!(input.u16().unwrap(), tcp.port());
            assert_eq!(input.string().unwrap(), "tcp");
            assert_eq!(input.remaining(), [0xFF]);
        }
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(guids.len(), 1);
        serving.abort();
    }

    /// A monitor whose client reads nothing while 50 images are posted: what waits for it
    /// stays within the budget, and once it reads it gets the newest image, with fewer
    /// updates than posts and the squashed ones marked as overrun.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_monitor_gets_the_newest_value_with_overrun_bits() {
        let store = PvStore::new();
        let desc = Arc::new(StructDesc::new(
            "epics:nt/NTScalarArray:1.0",
            vec![
                ("value", FieldDesc::ScalarArray(ScalarType::Double)),
                ("counter", FieldDesc::Scalar(ScalarType::Int)),
            ],
        ));
        store.add("IMG", PvStructure::new(desc), Access::ReadOnly);
        let limits = ConnectionLimits {
            output_budget: 1 << 20,
            ..ConnectionLimits::default()
        };
        let config = ServerConfig {
            limits,
            ..ServerConfig::loopback()
        };
        let server = Server::bind(config, store.clone()).await.unwrap();
        let address = server.tcp_addr();
        let counters = server.counters();
        let serving = tokio::spawn(server.run());

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        let mut framer = Framer::new(1 << 24);
        let sid = open(&mut stream, &mut framer, "IMG").await;
        let mut out = Encoder::new(ByteOrder::Little);
        let start = wire::begin(&mut out, command::MONITOR, false);
        out.u32(sid);
        out.u32(5);
        out.u8(subcommand::INIT);
        out.null_size();
        wire::end(&mut out, start);
        let start = wire::begin(&mut out, command::MONITOR, false);
        out.u32(sid);
        out.u32(5);
        out.u8(subcommand::START | subcommand::PROCESS);
        wire::end(&mut out, start);
        stream.write_all(&out.buf).await.unwrap();
        // The monitor exists once its INIT is answered.
        loop {
            if let Some(Frame::Message {
                command: command::MONITOR,
                payload,
                ..
            }) = framer.next_frame().unwrap()
            {
                assert_eq!(payload[4], subcommand::INIT);
                break;
            }
            assert!(stream.read_buf(&mut framer.buf).await.unwrap() > 0);
        }

        // 50 posts of 400 kB while the client reads nothing.
        for n in 1..=50 {
            store.update("IMG", |pv, changed| {
                pv.set(
                    "value",
                    Value::Array(crate::pvdata::ArrayValue::Double(vec![
                        f64::from(n);
                        50_000
                    ])),
                    changed,
                )
                .unwrap();
                pv.set("counter", Value::Int(n), changed).unwrap();
            });
            let queued = counters.snapshot().queued_bytes;
            assert!(queued <= 2 * limits.output_budget as u64, "{queued}");
            tokio::task::yield_now().await;
        }
        // Now it reads: updates until the last post's.
        let mut updates = 0;
        let mut overrun_seen = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let frame = loop {
                if let Some(frame) = framer.next_frame().unwrap() {
                    break frame;
                }
                assert!(tokio::time::Instant::now() < deadline);
                assert!(stream.read_buf(&mut framer.buf).await.unwrap() > 0);
            };
            let Frame::Message {
                command: command::MONITOR,
                payload,
                ..
            } = frame
            else {
                continue;
            };
            let mut input = Decoder::new(&payload, ByteOrder::Little);
            assert_eq!(input.u32().unwrap(), 5);
            assert_eq!(input.u8().unwrap(), 0);
            updates += 1;
            let mut pv = store.value("IMG").unwrap();
            let changed = BitSet::decode(&mut input).unwrap();
            input
                .partial(&mut pv, &changed, &mut TypeCache::default())
                .unwrap();
            let overrun = BitSet::decode(&mut input).unwrap();
            overrun_seen |= !overrun.is_empty();
            if pv.value("counter") == Some(&Value::Int(50)) {
                break;
            }
        }
        assert!(updates < 50, "{updates} updates: none squashed");
        assert!(overrun_seen, "squashed updates carry overrun bits");
        assert_eq!(counters.snapshot().dropped, 0);
        serving.abort();
    }

    #[test]
    fn a_monitor_update_carries_only_what_changed() {
        let mut full = scalar(1.0);
        full.set(
            "alarm.message",
            Value::String("x".repeat(1000)),
            &mut BitSet::new(),
        )
        .unwrap();
        let full = Arc::new(full);
        let mut changed = BitSet::new();
        changed.set(full.bit_of("value").unwrap());
        let pending = Pending {
            value: Arc::clone(&full),
            changed: changed.clone(),
            overrun: BitSet::new(),
        };
        for request in ["field()", "field(value,alarm)"] {
            let selection = Request::parse(request).unwrap().select(&full.desc).unwrap();
            let mut out = Encoder::new(ByteOrder::Little);
            monitor_update(
                &mut out,
                3,
                &selection,
                &pending,
                &AtomicUsize::new(usize::MAX),
            )
            .unwrap();
            let mut input = Decoder::new(&out.buf[HEADER..], ByteOrder::Little);
            assert_eq!(input.u32().unwrap(), 3);
            assert_eq!(input.u8().unwrap(), 0);
            let bits = BitSet::decode(&mut input).unwrap();
            assert_eq!(bits, changed, "{request}");
            // The double, and an empty overrun set: not the 1000-byte message.
            assert_eq!(input.remaining().len(), 8 + 1, "{request}");
        }
    }
}
