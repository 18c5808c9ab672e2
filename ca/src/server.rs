//! A Channel Access server for PVs beamflow owns: it answers searches for them over UDP, serves
//! reads, monitors and writes over TCP circuits, and converts to whatever type and form a client
//! asks for. `caget`, `camonitor`, `caput` and Phoebus talk to it as to any IOC.
//!
//! PVs live in a [`PvStore`], each with the units, precision and limits its GR and CTRL answers
//! carry ([`Metadata`]); posting a value there reaches every subscriber. Each client
//! circuit receives its monitor updates in the order they were posted (as an IOC's event queue
//! does), so a client triggered by one PV finds the values posted before it already there. A
//! slow client gets the latest value, not a growing queue: past a few waiting updates, a
//! subscription's newest one is replaced in its place in line.
//!
//! Every circuit has an output budget ([`CircuitLimits`]): replies and updates queued for a client
//! take bytes of it until they are written to its socket. A client whose backlog reaches the
//! budget has its requests left unread until it reads (back-pressure, as RSRV does), so a client
//! that sends `READ_NOTIFY`s and never reads costs the budget, not a reply per request; its
//! monitors meanwhile coalesce to the newest values. A circuit whose socket takes no byte for
//! [`CircuitLimits::stalled_after`] is dropped. Both are counted ([`CircuitCounters`]) and logged
//! once per circuit with the client's address.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, watch};
use tracing::{debug, warn};

use crate::convert;
use crate::dbr::{Metadata, Native, TimeValue, Values};
use crate::wire::{
    self, ECA_NORMAL, Header, MINOR_VERSION, command, put_message, split_message,
    split_message_within,
};

/// A PV's current value, whether clients may write it, what its GR and CTRL forms carry, and
/// the circuits subscribed to it.
struct Pv {
    native: Native,
    max_count: usize,
    writable: bool,
    metadata: Arc<Metadata>,
    value: watch::Sender<Arc<TimeValue>>,
    subscribers: Mutex<Vec<(Weak<Updates>, u32)>>,
}

impl Pv {
    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<(Weak<Updates>, u32)>> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One circuit's monitor updates in post order. Each subscription holds up to
/// [`PENDING_PER_SUBSCRIPTION`] updates in line (a burst of posts while the client reads
/// slowly is absorbed, as an IOC's event queue does); beyond that its newest one is replaced,
/// so a slow client costs bounded memory and still gets the latest value.
#[derive(Default)]
struct Updates {
    queue: Mutex<UpdateQueue>,
    ready: Notify,
}

/// Updates a subscription keeps waiting at most (EPICS RSRV keeps four).
const PENDING_PER_SUBSCRIPTION: usize = 4;

#[derive(Default)]
struct UpdateQueue {
    /// One entry per waiting update: whose it is.
    order: VecDeque<u32>,
    pending: HashMap<u32, VecDeque<Arc<TimeValue>>>,
    /// Per subscription id: the DBR type and count it asked for, and its PV's metadata.
    forms: HashMap<u32, Form>,
}

/// What a subscription asked for and what its answers carry besides the value.
#[derive(Clone)]
struct Form {
    dbr_type: u16,
    count: u32,
    metadata: Arc<Metadata>,
}

impl Updates {
    fn lock(&self) -> std::sync::MutexGuard<'_, UpdateQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, subid: u32, value: Arc<TimeValue>) {
        let mut queue = self.lock();
        if !queue.forms.contains_key(&subid) {
            return;
        }
        let waiting = queue.pending.entry(subid).or_default();
        if waiting.len() >= PENDING_PER_SUBSCRIPTION {
            if let Some(newest) = waiting.back_mut() {
                *newest = value;
            }
        } else {
            waiting.push_back(value);
            queue.order.push_back(subid);
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// The next update: subscription id, its form and value.
    fn pop(&self) -> Option<(u32, Form, Arc<TimeValue>)> {
        let mut queue = self.lock();
        while let Some(subid) = queue.order.pop_front() {
            let value = queue.pending.get_mut(&subid).and_then(VecDeque::pop_front);
            if let (Some(value), Some(form)) = (value, queue.forms.get(&subid).cloned()) {
                return Some((subid, form, value));
            }
        }
        None
    }
}

/// The PVs a server serves, shared with whoever posts their values.
#[derive(Clone, Default)]
pub struct PvStore {
    pvs: Arc<Mutex<HashMap<String, Arc<Pv>>>>,
}

/// The largest message a client may send (writes of waveforms included); a larger announcement
/// closes the circuit.
const CLIENT_PAYLOAD_LIMIT: usize = 16 << 20;
/// What a client may always send: names, and writes of scalars and short strings.
const CLIENT_PAYLOAD_MIN: usize = 16 << 10;

/// `ECA_PUTFAIL`: a write that could not be applied.
const ECA_PUTFAIL: u32 = 160;
/// `ECA_NOWTACCESS`: a write to a read-only PV.
const ECA_NOWTACCESS: u32 = 376;
/// `ECA_BADTYPE`: a DBR type the server cannot serve.
const ECA_BADTYPE: u32 = 114;

impl PvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pv>>> {
        self.pvs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (or replaces) a PV with its first value; `max_count` bounds its element count. Its
    /// GR and CTRL forms carry no units and no limits.
    pub fn add(&self, name: &str, value: TimeValue, max_count: usize, writable: bool) {
        self.add_with_metadata(name, value, max_count, writable, Metadata::default());
    }

    /// [`PvStore::add`], with the units, precision and limits its GR and CTRL forms carry.
    pub fn add_with_metadata(
        &self,
        name: &str,
        value: TimeValue,
        max_count: usize,
        writable: bool,
        metadata: Metadata,
    ) {
        let pv = Pv {
            native: value.values.native(),
            max_count: max_count.max(value.values.len()).max(1),
            writable,
            metadata: Arc::new(metadata),
            value: watch::Sender::new(Arc::new(value)),
            subscribers: Mutex::new(Vec::new()),
        };
        self.lock().insert(name.to_owned(), Arc::new(pv));
    }

    /// Posts a new value (converted to the PV's native type) to the PV and its subscribers.
    /// Returns false for an unknown name.
    pub fn post(&self, name: &str, mut value: TimeValue) -> bool {
        let Some(pv) = self.get(name) else {
            return false;
        };
        if value.values.native() != pv.native {
            value.values = convert::convert(&value.values, pv.native);
        }
        let value = Arc::new(value);
        pv.value.send_replace(Arc::clone(&value));
        pv.subscribers()
            .retain(|(updates, subid)| match updates.upgrade() {
                Some(updates) => {
                    updates.push(*subid, Arc::clone(&value));
                    true
                }
                None => false,
            });
        true
    }

    /// The current value of a PV.
    pub fn value(&self, name: &str) -> Option<TimeValue> {
        self.get(name).map(|pv| (**pv.value.borrow()).clone())
    }

    /// The units, precision and limits a PV's GR and CTRL forms carry.
    pub fn metadata(&self, name: &str) -> Option<Arc<Metadata>> {
        self.get(name).map(|pv| Arc::clone(&pv.metadata))
    }

    /// A receiver that sees every value posted to the PV from now on (the latest one at least).
    pub fn watch(&self, name: &str) -> Option<watch::Receiver<Arc<TimeValue>>> {
        self.get(name).map(|pv| pv.value.subscribe())
    }

    fn get(&self, name: &str) -> Option<Arc<Pv>> {
        self.lock().get(name).cloned()
    }

    /// The largest message a client needs to send: a write of the largest writable PV in its
    /// widest form (strings), within [`CLIENT_PAYLOAD_MIN`] and [`CLIENT_PAYLOAD_LIMIT`]. A
    /// client announcing more is closed at once rather than buffered (a store of read-only
    /// PVs takes no more than 16 KiB of partial message per client).
    fn client_payload_limit(&self) -> u64 {
        let largest = self
            .lock()
            .values()
            .filter(|pv| pv.writable)
            .map(|pv| pv.max_count.saturating_mul(crate::dbr::STRING_SIZE))
            .max()
            .unwrap_or(0);
        largest.clamp(CLIENT_PAYLOAD_MIN, CLIENT_PAYLOAD_LIMIT) as u64
    }
}

/// The port a server binds when its address names none: `EPICS_CAS_SERVER_PORT`, else
/// `EPICS_CA_SERVER_PORT`, else 5064, as EPICS servers choose it.
pub fn default_port() -> u16 {
    ["EPICS_CAS_SERVER_PORT", "EPICS_CA_SERVER_PORT"]
        .iter()
        .find_map(|key| std::env::var(key).ok()?.trim().parse().ok())
        .unwrap_or(wire::DEFAULT_PORT)
}

/// A server address that is neither `host:port` nor an IP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither host:port nor an IP address")]
pub struct AddressError(pub String);

/// `host:port`, or a bare IP address on [`default_port`].
pub fn resolve_address(spec: &str) -> Result<SocketAddr, AddressError> {
    let spec = spec.trim();
    if let Ok(address) = spec.parse::<SocketAddr>() {
        return Ok(address);
    }
    spec.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port()))
        .map_err(|_| AddressError(spec.to_owned()))
}

/// What one client circuit may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitLimits {
    /// Reply and update bytes queued for one client at most. A backlog this large leaves the
    /// client's further requests unread until it has read some (a single reply larger than the
    /// budget is sent alone). It bounds what one client costs: without it, each 16-byte
    /// `READ_NOTIFY` of an image queued the whole image.
    pub output_budget: usize,
    /// A circuit whose socket accepts no byte for this long is dropped (its client reads
    /// nothing, or its network is gone).
    pub stalled_after: Duration,
}

impl Default for CircuitLimits {
    /// 4 MiB (several images of a typical camera in flight, so a client reading at full speed
    /// is never held up) and 30 s (longer than any network hiccup a display rides out).
    fn default() -> Self {
        Self {
            output_budget: 4 << 20,
            stalled_after: Duration::from_secs(30),
        }
    }
}

/// What a server's circuits have cost, shared with whoever reports it.
#[derive(Debug, Clone, Default)]
pub struct CircuitCounters(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    throttled: AtomicU64,
    dropped: AtomicU64,
    queued_bytes: AtomicU64,
}

/// A snapshot of [`CircuitCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CircuitStats {
    /// Circuits open now.
    pub open: u64,
    /// Circuits whose requests had to wait for their client to read (each counted once).
    pub throttled: u64,
    /// Circuits dropped because their socket took nothing for
    /// [`CircuitLimits::stalled_after`].
    pub dropped: u64,
    /// Bytes queued for all circuits now (each circuit holds at most its budget).
    pub queued_bytes: u64,
}

impl CircuitCounters {
    /// The counts now.
    pub fn snapshot(&self) -> CircuitStats {
        let c = &self.0;
        CircuitStats {
            open: c.open.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            queued_bytes: c.queued_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A bound server: its TCP address is also the UDP search port.
pub struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
    store: PvStore,
    limits: CircuitLimits,
    counters: CircuitCounters,
}

impl Server {
    /// Binds UDP and TCP on `address` (port 0: a free port for both), with the default
    /// [`CircuitLimits`].
    pub async fn bind(address: SocketAddr, store: PvStore) -> std::io::Result<Self> {
        let (udp, tcp) = bind_both(address).await?;
        Ok(Self {
            udp,
            tcp,
            store,
            limits: CircuitLimits::default(),
            counters: CircuitCounters::default(),
        })
    }

    /// The same server with other limits per circuit.
    pub fn with_limits(mut self, limits: CircuitLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The address clients search and connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// What its circuits cost, counted while it runs.
    pub fn counters(&self) -> CircuitCounters {
        self.counters.clone()
    }

    /// Serves until the future is dropped.
    pub async fn run(self) {
        let port = self.tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        let search = answer_searches(self.udp, self.store.clone(), port);
        let accept = async {
            loop {
                match self.tcp.accept().await {
                    Ok((stream, peer)) => {
                        let store = self.store.clone();
                        let (limits, counters) = (self.limits, self.counters.clone());
                        tokio::spawn(async move {
                            counters.0.open.fetch_add(1, Ordering::Relaxed);
                            let served = serve_client(stream, peer, store, limits, &counters).await;
                            counters.0.open.fetch_sub(1, Ordering::Relaxed);
                            if let Err(error) = served {
                                debug!(%peer, %error, "CA client circuit ended.");
                            }
                        });
                    }
                    Err(error) => warn!(%error, "CA accept failed."),
                }
            }
        };
        tokio::join!(search, accept);
    }
}

async fn bind_both(address: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    if address.port() != 0 {
        let tcp = TcpListener::bind(address).await?;
        let udp = UdpSocket::bind(address).await?;
        return Ok((udp, tcp));
    }
    // One port for both: take a free TCP port and try the same for UDP.
    let mut last_error = None;
    for _ in 0..64 {
        let tcp = TcpListener::bind(address).await?;
        match UdpSocket::bind(tcp.local_addr()?).await {
            Ok(udp) => return Ok((udp, tcp)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free CA port")))
}

/// Replies gathered from one client's requests are queued once they reach this size, so that a
/// burst of requests read in one go waits for the budget request by request, not all at once.
const QUEUE_AT: usize = 64 << 10;

/// One circuit's way to its socket: bytes wait here, each chunk holding its size in permits of
/// the circuit's budget until it is written.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::UnboundedSender<(BytesMut, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    limit: usize,
    counters: CircuitCounters,
}

/// The circuit's writer has stopped (the client went away, or it was dropped).
struct Closed;

impl Outbox {
    /// Queues `bytes`, first waiting until the budget has room for them.
    async fn send(&self, bytes: BytesMut) -> Result<(), Closed> {
        let permit = self.reserve(bytes.len()).await?;
        self.queue_reserved(bytes, permit)
    }

    /// [`Outbox::send`], telling the caller whether it had to wait.
    async fn send_or_wait(&self, bytes: BytesMut) -> Result<bool, Closed> {
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

    fn queue_reserved(&self, bytes: BytesMut, permit: OwnedSemaphorePermit) -> Result<(), Closed> {
        let len = bytes.len() as u64;
        self.counters
            .0
            .queued_bytes
            .fetch_add(len, Ordering::Relaxed);
        self.queue.send((bytes, permit)).map_err(|_| {
            self.counters
                .0
                .queued_bytes
                .fetch_sub(len, Ordering::Relaxed);
            Closed
        })
    }

    /// Resolves once the writer has stopped.
    async fn closed(&self) {
        self.queue.closed().await;
    }
}

/// Writes `bytes`; false when the client has gone, an error when the socket took nothing for
/// `stalled_after`.
async fn write_chunk(
    writer: &mut OwnedWriteHalf,
    mut rest: &[u8],
    stalled_after: Duration,
) -> Result<bool, tokio::time::error::Elapsed> {
    while !rest.is_empty() {
        // Each write returns as soon as the socket took some bytes: a client that reads slowly
        // keeps its circuit, one that reads nothing loses it.
        match tokio::time::timeout(stalled_after, writer.write(rest)).await? {
            Ok(0) | Err(_) => return Ok(false),
            Ok(n) => rest = &rest[n..],
        }
    }
    Ok(true)
}

/// Writes what the circuit queues. Returns once the queue is closed and written, the client is
/// gone, or its socket took nothing for `stalled_after` (true: it stalled).
async fn write_out(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<(BytesMut, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    stalled_after: Duration,
    counters: &CircuitCounters,
) -> bool {
    let mut stalled = false;
    while let Some((bytes, permit)) = queue.recv().await {
        let written = write_chunk(&mut writer, &bytes, stalled_after).await;
        counters
            .0
            .queued_bytes
            .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
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
    // Whatever still waits is dropped with the circuit; a request waiting for room learns it.
    budget.close();
    queue.close();
    while let Ok((bytes, _)) = queue.try_recv() {
        counters
            .0
            .queued_bytes
            .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
    }
    stalled
}

async fn answer_searches(udp: UdpSocket, store: PvStore, port: u16) {
    let mut buffer = vec![0u8; 65536];
    loop {
        let Ok((len, from)) = udp.recv_from(&mut buffer).await else {
            continue;
        };
        let mut input = BytesMut::from(&buffer[..len]);
        let mut reply = BytesMut::new();
        while let Ok(Some(message)) = split_message(&mut input) {
            let h = message.header;
            if h.command != command::SEARCH {
                continue;
            }
            if store.get(&wire::payload_name(&message.payload)).is_none() {
                continue;
            }
            if reply.is_empty() {
                Header::new(command::VERSION, 0, MINOR_VERSION.into(), 0, 0).put(&mut reply);
            }
            let mut version = [0u8; 2];
            version.copy_from_slice(&MINOR_VERSION.to_be_bytes());
            put_message(
                &mut reply,
                Header::new(command::SEARCH, port, 0, u32::MAX, h.p2),
                &version,
            );
        }
        if !reply.is_empty()
            && let Err(error) = udp.send_to(&reply, from).await
        {
            debug!(%from, %error, "CA search reply not sent.");
        }
    }
}

struct Channel {
    cid: u32,
    name: String,
    pv: Arc<Pv>,
}

struct Subscription {
    pv: Arc<Pv>,
    sid: u32,
    dbr_type: u16,
    count: u32,
}

impl Subscription {
    /// Stops updates of subscription `subid` of the circuit `updates`.
    fn cancel(&self, updates: &Arc<Updates>, subid: u32) {
        self.pv
            .subscribers()
            .retain(|(u, id)| !(*id == subid && std::ptr::eq(u.as_ptr(), Arc::as_ptr(updates))));
        let mut queue = updates.lock();
        queue.forms.remove(&subid);
        queue.pending.remove(&subid);
    }
}

/// Queues the replies gathered in `out`; the first time the client's requests must wait for it
/// to read, the circuit is counted and logged as throttled.
async fn queue_replies(
    outbox: &Outbox,
    out: &mut BytesMut,
    throttled: &mut bool,
    peer: SocketAddr,
) -> Result<(), Closed> {
    if out.is_empty() {
        return Ok(());
    }
    let waited = outbox.send_or_wait(out.split()).await?;
    if waited && !*throttled {
        *throttled = true;
        outbox.counters.0.throttled.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, output_budget = outbox.limit,
            "CA client asks for more than it reads: its requests wait until it has read its replies.");
    }
    Ok(())
}

async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    store: PvStore,
    limits: CircuitLimits,
    counters: &CircuitCounters,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, writer) = stream.into_split();
    // Replies and monitor updates reach the socket through the outbox, within the budget.
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
                counters.0.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(%peer, stalled_s = limits.stalled_after.as_secs_f64(),
                    "CA client read nothing for too long: its circuit is dropped.");
            }
        })
    };
    let mut out = BytesMut::new();
    Header::new(command::VERSION, 0, MINOR_VERSION.into(), 0, 0).put(&mut out);
    let _ = outbox.send(out.split()).await;
    // Monitor updates, in post order, encoded and queued by one task. While the budget is
    // spent it waits, and the updates posted meanwhile coalesce (see `Updates`).
    let updates = Arc::new(Updates::default());
    let monitor_task = {
        let updates = Arc::clone(&updates);
        let outbox = outbox.clone();
        tokio::spawn(async move {
            loop {
                while let Some((subid, form, value)) = updates.pop() {
                    let mut bytes = BytesMut::new();
                    reply_value(&mut bytes, command::EVENT_ADD, &value, &form, subid);
                    if outbox.send(bytes).await.is_err() {
                        return;
                    }
                }
                updates.ready.notified().await;
            }
        })
    };
    let mut throttled = false;
    // The store's limit when the circuit opens, looked at again before a message is refused
    // (a writable PV may have been added since).
    let mut payload_limit = store.client_payload_limit();
    let mut channels: HashMap<u32, Channel> = HashMap::new();
    let mut subscriptions: HashMap<u32, Subscription> = HashMap::new();
    let mut next_sid = 1u32;
    let mut input = BytesMut::with_capacity(1 << 16);
    let result = loop {
        let read = tokio::select! {
            read = reader.read_buf(&mut input) => read,
            // The writer dropped the circuit: nothing the client asks can reach it.
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
            // Requests are answered a batch at a time, each batch waiting for room in the
            // budget: the rest of what the client sent stays unread meanwhile.
            if out.len() >= QUEUE_AT
                && queue_replies(&outbox, &mut out, &mut throttled, peer)
                    .await
                    .is_err()
            {
                gone = true;
                break;
            }
            let message = match split_message_within(&mut input, payload_limit) {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(error) => {
                    let limit = store.client_payload_limit();
                    if limit > payload_limit {
                        payload_limit = limit;
                        continue;
                    }
                    failed = Some(std::io::Error::new(std::io::ErrorKind::InvalidData, error));
                    break;
                }
            };
            let h = message.header;
            match h.command {
                command::CREATE_CHAN => {
                    let name = wire::payload_name(&message.payload);
                    match store.get(&name) {
                        Some(pv) => {
                            let sid = next_sid;
                            next_sid = next_sid.wrapping_add(1);
                            let rights = if pv.writable { 3 } else { 1 };
                            Header::new(command::ACCESS_RIGHTS, 0, 0, h.p1, rights).put(&mut out);
                            Header::new(
                                command::CREATE_CHAN,
                                pv.native.code(),
                                pv.max_count as u32,
                                h.p1,
                                sid,
                            )
                            .put(&mut out);
                            channels.insert(
                                sid,
                                Channel {
                                    cid: h.p1,
                                    name,
                                    pv,
                                },
                            );
                        }
                        None => Header::new(command::CREATE_CH_FAIL, 0, 0, h.p1, 0).put(&mut out),
                    }
                }
                command::READ_NOTIFY => match channels.get(&h.p1) {
                    Some(channel) => {
                        let value = channel.pv.value.borrow().clone();
                        // Never more than the PV holds: the count comes from the client.
                        let form = Form {
                            dbr_type: h.data_type,
                            count: h.count.min(channel.pv.max_count as u32),
                            metadata: Arc::clone(&channel.pv.metadata),
                        };
                        reply_value(&mut out, command::READ_NOTIFY, &value, &form, h.p2);
                    }
                    None => error(&mut out, &h, u32::MAX, ECA_BADTYPE, "unknown channel"),
                },
                command::EVENT_ADD => {
                    let Some(channel) = channels.get(&h.p1) else {
                        error(&mut out, &h, u32::MAX, ECA_BADTYPE, "unknown channel");
                        continue;
                    };
                    if convert::requested(h.data_type).is_none() {
                        error(
                            &mut out,
                            &h,
                            channel.cid,
                            ECA_BADTYPE,
                            "unsupported DBR type",
                        );
                        continue;
                    }
                    let count = h.count.min(channel.pv.max_count as u32);
                    let (dbr_type, subid) = (h.data_type, h.p2);
                    if let Some(old) = subscriptions.remove(&subid) {
                        old.cancel(&updates, subid);
                    }
                    updates.lock().forms.insert(
                        subid,
                        Form {
                            dbr_type,
                            count,
                            metadata: Arc::clone(&channel.pv.metadata),
                        },
                    );
                    channel
                        .pv
                        .subscribers()
                        .push((Arc::downgrade(&updates), subid));
                    // The first update is the current value.
                    updates.push(subid, channel.pv.value.borrow().clone());
                    subscriptions.insert(
                        subid,
                        Subscription {
                            pv: Arc::clone(&channel.pv),
                            sid: h.p1,
                            dbr_type,
                            count,
                        },
                    );
                }
                command::EVENT_CANCEL => {
                    if let Some(subscription) = subscriptions.remove(&h.p2) {
                        subscription.cancel(&updates, h.p2);
                        Header::new(
                            command::EVENT_ADD,
                            subscription.dbr_type,
                            subscription.count,
                            subscription.sid,
                            h.p2,
                        )
                        .put(&mut out);
                    }
                }
                command::WRITE | command::WRITE_NOTIFY => {
                    let status = match channels.get(&h.p1) {
                        Some(channel) => write_value(&store, channel, &h, &message.payload),
                        None => ECA_BADTYPE,
                    };
                    if h.command == command::WRITE_NOTIFY {
                        Header::new(command::WRITE_NOTIFY, h.data_type, h.count, status, h.p2)
                            .put(&mut out);
                    } else if status != ECA_NORMAL {
                        let cid = channels.get(&h.p1).map_or(u32::MAX, |c| c.cid);
                        error(&mut out, &h, cid, status, "write failed");
                    }
                }
                command::CLEAR_CHANNEL => {
                    channels.remove(&h.p1);
                    subscriptions.retain(|subid, s| {
                        let keep = s.sid != h.p1;
                        if !keep {
                            s.cancel(&updates, *subid);
                        }
                        keep
                    });
                    h.put(&mut out);
                }
                command::ECHO => h.put(&mut out),
                // VERSION, names, EVENTS_OFF/ON: nothing to answer (a slow client already gets
                // only the latest value of each subscription).
                _ => {}
            }
        }
        if gone
            || queue_replies(&outbox, &mut out, &mut throttled, peer)
                .await
                .is_err()
        {
            break Ok(());
        }
        if let Some(error) = failed {
            break Err(error);
        }
    };
    for (subid, subscription) in subscriptions {
        subscription.cancel(&updates, subid);
    }
    monitor_task.abort();
    // The writer ends once the monitor task's copy of the outbox is gone too.
    drop(outbox);
    let _ = writer_task.await;
    result
}

fn reply_value(out: &mut BytesMut, cmd: u16, value: &TimeValue, form: &Form, id: u32) {
    let mut payload = Vec::new();
    let written = convert::write(
        value,
        &form.metadata,
        form.dbr_type,
        form.count as usize,
        &mut payload,
    );
    let mut header = Header::new(cmd, form.dbr_type, written as u32, ECA_NORMAL, id);
    if convert::requested(form.dbr_type).is_none() {
        header.p1 = ECA_BADTYPE;
    }
    put_message(out, header, &payload);
}

fn write_value(store: &PvStore, channel: &Channel, h: &Header, payload: &[u8]) -> u32 {
    if !channel.pv.writable {
        return ECA_NOWTACCESS;
    }
    let Some(native) = Native::of(h.data_type).filter(|_| h.data_type < 7) else {
        return ECA_BADTYPE;
    };
    let count = h.count as usize;
    // Clients send a scalar string shorter than 40 bytes: read up to what arrived.
    let values = if native == Native::String && payload.len() < 40 * count.max(1) {
        Ok(Values::String(vec![wire::payload_name(payload)]))
    } else {
        Values::read(native, count, payload)
    };
    let Ok(values) = values else {
        return ECA_PUTFAIL;
    };
    if values.len() > channel.pv.max_count {
        return ECA_PUTFAIL;
    }
    let value = TimeValue {
        status: 0,
        severity: 0,
        stamp: crate::dbr::EpicsTime::now(),
        values,
    };
    if store.post(&channel.name, value) {
        ECA_NORMAL
    } else {
        ECA_PUTFAIL
    }
}

/// An ERROR message quoting the request.
fn error(out: &mut BytesMut, request: &Header, cid: u32, status: u32, text: &str) {
    let mut payload = BytesMut::new();
    request.put(&mut payload);
    payload.extend_from_slice(&wire::name_payload(text));
    put_message(
        out,
        Header::new(command::ERROR, 0, 0, cid, status),
        &payload,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EpicsTime;

    fn value(x: f64) -> Arc<TimeValue> {
        Arc::new(TimeValue {
            status: 0,
            severity: 0,
            stamp: EpicsTime::default(),
            values: Values::Double(vec![x]),
        })
    }

    fn drain(updates: &Updates) -> Vec<(u32, f64)> {
        std::iter::from_fn(|| updates.pop())
            .map(|(subid, _, v)| match &v.values {
                Values::Double(x) => (subid, x[0]),
                _ => (subid, f64::NAN),
            })
            .collect()
    }

    #[test]
    fn updates_leave_in_post_order_and_a_backlog_keeps_the_latest() {
        let updates = Updates::default();
        let form = Form {
            dbr_type: 20,
            count: 1,
            metadata: Arc::default(),
        };
        updates.lock().forms.insert(1, form.clone());
        updates.lock().forms.insert(2, form);
        updates.push(1, value(1.0));
        updates.push(2, value(10.0));
        updates.push(1, value(2.0));
        assert_eq!(drain(&updates), [(1, 1.0), (2, 10.0), (1, 2.0)]);
        // Six posts while the client reads nothing: four wait, the last replaced by the newest.
        for x in 1..=6 {
            updates.push(1, value(f64::from(x)));
        }
        assert_eq!(drain(&updates), [(1, 1.0), (1, 2.0), (1, 3.0), (1, 6.0)]);
        // A cancelled subscription's waiting updates go with it; unknown ids are ignored.
        updates.push(2, value(11.0));
        updates.lock().forms.remove(&2);
        updates.lock().pending.remove(&2);
        updates.push(3, value(0.0));
        assert_eq!(drain(&updates), []);
    }

    /// Issue #17: a client that asks for a large PV again and again and never reads used to
    /// queue a reply per request. Now what waits for it never exceeds its budget, its requests
    /// wait (counted once as throttled), and once its socket has taken nothing for
    /// `stalled_after` the circuit is dropped and its queue freed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_costs_its_budget_and_is_dropped() {
        use crate::wire::name_payload;

        let store = PvStore::new();
        let big = TimeValue {
            status: 0,
            severity: 0,
            stamp: EpicsTime::default(),
            values: Values::Double(vec![1.5; 100_000]),
        };
        store.add("BIG", big, 100_000, false);
        let limits = CircuitLimits {
            output_budget: 1 << 20,
            stalled_after: Duration::from_secs(1),
        };
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), store)
            .await
            .unwrap()
            .with_limits(limits);
        let address = server.local_addr().unwrap();
        let counters = server.counters();
        let serving = tokio::spawn(server.run());

        // A small receive buffer: the kernel holds little of what the server sends.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        let mut out = BytesMut::new();
        Header::new(command::VERSION, 0, MINOR_VERSION.into(), 0, 0).put(&mut out);
        put_message(
            &mut out,
            Header::new(command::CREATE_CHAN, 0, 0, 1, MINOR_VERSION.into()),
            &name_payload("BIG"),
        );
        stream.write_all(&out).await.unwrap();
        let mut input = BytesMut::new();
        let sid = loop {
            if let Some(message) = split_message(&mut input).unwrap() {
                if message.header.command == command::CREATE_CHAN {
                    break message.header.p2;
                }
                continue;
            }
            assert!(stream.read_buf(&mut input).await.unwrap() > 0, "closed");
        };
        // 1,000 reads of 800 kB each (16 kB of requests), never read.
        let mut requests = BytesMut::new();
        for ioid in 0..1000 {
            Header::new(command::READ_NOTIFY, 6, 0, sid, ioid).put(&mut requests);
        }
        stream.write_all(&requests).await.unwrap();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut most = 0;
        let stats = loop {
            let stats = counters.snapshot();
            most = most.max(stats.queued_bytes);
            assert!(
                stats.queued_bytes <= limits.output_budget as u64,
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
        assert!(most > 0, "something was queued");
        // The dropped circuit's queue is freed and the circuit closed.
        while counters.snapshot()
            != (CircuitStats {
                throttled: 1,
                dropped: 1,
                ..CircuitStats::default()
            })
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                counters.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        serving.abort();
    }

    /// Issue #17: 20 clients each sending 15 MiB of a write announced as 16 MiB held 330 MB of
    /// partial messages. A store whose writable PVs are scalars closes a client announcing
    /// more than 16 KiB at once, and the server goes on serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_larger_than_any_writable_pv_closes_the_circuit_at_once() {
        let store = PvStore::new();
        store.add("SET", (*value(1.0)).clone(), 1, true);
        store.add("RO", (*value(2.0)).clone(), 100_000, false);
        assert_eq!(store.client_payload_limit(), 16 << 10);
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), store.clone())
            .await
            .unwrap();
        let address = server.local_addr().unwrap();
        let serving = tokio::spawn(server.run());
        let mut stream = TcpStream::connect(address).await.unwrap();
        let mut out = BytesMut::new();
        Header::new(command::VERSION, 0, MINOR_VERSION.into(), 0, 0).put(&mut out);
        // WRITE_NOTIFY of 1 MiB: an extended header, and none of the payload.
        Header {
            command: command::WRITE_NOTIFY,
            payload_size: 1 << 20,
            data_type: 6,
            count: 1 << 17,
            p1: 1,
            p2: 1,
        }
        .put(&mut out);
        stream.write_all(&out).await.unwrap();
        let mut input = BytesMut::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read_buf(&mut input).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the circuit stayed open");
        // A writable waveform added later raises the limit for what it needs.
        store.add("WAVE", (*value(0.0)).clone(), 100_000, true);
        assert_eq!(store.client_payload_limit(), 4_000_000);
        serving.abort();
    }
}
