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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, watch};
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
const CLIENT_PAYLOAD_LIMIT: u64 = 16 << 20;

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

/// A bound server: its TCP address is also the UDP search port.
pub struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
    store: PvStore,
}

impl Server {
    /// Binds UDP and TCP on `address` (port 0: a free port for both).
    pub async fn bind(address: SocketAddr, store: PvStore) -> std::io::Result<Self> {
        if address.port() != 0 {
            let tcp = TcpListener::bind(address).await?;
            let udp = UdpSocket::bind(address).await?;
            return Ok(Self { udp, tcp, store });
        }
        // One port for both: take a free TCP port and try the same for UDP.
        let mut last_error = None;
        for _ in 0..64 {
            let tcp = TcpListener::bind(address).await?;
            match UdpSocket::bind(tcp.local_addr()?).await {
                Ok(udp) => return Ok(Self { udp, tcp, store }),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no free CA port")))
    }

    /// The address clients search and connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
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
                        tokio::spawn(async move {
                            if let Err(error) = serve_client(stream, store).await {
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

async fn serve_client(stream: TcpStream, store: PvStore) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    // Replies and monitor updates reach the socket through this queue.
    let (out_tx, mut out_rx) = mpsc::channel::<BytesMut>(256);
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut out = BytesMut::new();
    Header::new(command::VERSION, 0, MINOR_VERSION.into(), 0, 0).put(&mut out);
    let _ = out_tx.send(out.split()).await;
    // Monitor updates, in post order, encoded and queued by one task.
    let updates = Arc::new(Updates::default());
    let monitor_task = {
        let updates = Arc::clone(&updates);
        let queue = out_tx.clone();
        tokio::spawn(async move {
            loop {
                while let Some((subid, form, value)) = updates.pop() {
                    let mut bytes = BytesMut::new();
                    reply_value(&mut bytes, command::EVENT_ADD, &value, &form, subid);
                    if queue.send(bytes).await.is_err() {
                        return;
                    }
                }
                updates.ready.notified().await;
            }
        })
    };
    let mut channels: HashMap<u32, Channel> = HashMap::new();
    let mut subscriptions: HashMap<u32, Subscription> = HashMap::new();
    let mut next_sid = 1u32;
    let mut input = BytesMut::with_capacity(1 << 16);
    let result = loop {
        match reader.read_buf(&mut input).await {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(error) => break Err(error),
        }
        let mut failed = None;
        loop {
            let message = match split_message_within(&mut input, CLIENT_PAYLOAD_LIMIT) {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(error) => {
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
        if !out.is_empty() && out_tx.send(out.split()).await.is_err() {
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
    drop(out_tx);
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
}
