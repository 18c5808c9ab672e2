//! What the EPICS sources share (`epics_ca`, `epics_pva`): each stream's PV, the client on a
//! thread of its own behind a bounded queue, how connections are reported, and the event
//! clock that numbers the updates into events. The protocol's own part ([`Protocol`]) turns an
//! update into a [`PvFrame`].
//!
//! Speaking up: a PV that no server answers is logged within [`NOT_FOUND_AFTER`] with the
//! addresses searched, again at doubling intervals, and is `never_found` in the status (not
//! `disconnected`, which needs a server that once answered). Connections that come and go
//! together (an IOC restarting) are one line per server. Trigger and period clocks wait for a
//! first value of every PV but those marked `optional`, whose events carry an INVALID/UDF
//! placeholder until a value comes.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use beamflow_protocol::streams::pv::PvFrame;
use beamflow_protocol::{DType, NdArray, StreamName};
use bytes::Bytes;
use tracing::{info, warn};

use crate::sources::event_clock::{ClockConfig, ClockEvent, EventClock};
use crate::{Source, SourceError, SourceFrame};

/// CA's alarm severity and status codes, which every PV frame carries (a PV Access alarm is
/// translated to them).
use beamflow_ca::dbr::alarm;

/// What a client reports, by the PV's index in the list it was given, in either protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum PvEvent<V> {
    /// The PV was found and subscribed to.
    Connected {
        /// The PV.
        pv: usize,
        /// Its server.
        server: SocketAddr,
    },
    /// Its server went away or dropped it; it is searched for again.
    Disconnected {
        /// The PV.
        pv: usize,
    },
    /// An update could not be read, or the server refused the PV.
    Malformed {
        /// The PV.
        pv: usize,
        /// Why.
        error: String,
    },
    /// A connection to a server failed or closed (each is counted for its PVs).
    ConnectionLost {
        /// The PVs it carried.
        pvs: Vec<usize>,
    },
    /// A new value.
    Update {
        /// The PV.
        pv: usize,
        /// The value as the protocol gives it.
        value: V,
    },
}

/// The protocol's own part of an EPICS source.
pub trait Protocol: Send + 'static {
    /// A value as the protocol's client gives it.
    type Value: Send + 'static;
    /// The protocol's name, for logs and errors.
    const NAME: &'static str;

    /// A value PV's update as a frame. `shape` is an image's `[height, width]` from its size
    /// PVs or the configuration (Channel Access images are flat); `dtype` the configured
    /// element type.
    fn frame(
        pv: &str,
        value: Self::Value,
        shape: Option<[usize; 2]>,
        dtype: Option<DType>,
    ) -> Result<PvFrame, String>;

    /// The number a size or counter PV holds (`ArraySize0_RBV`, `ArrayCounter_RBV`).
    fn number(value: &Self::Value) -> Option<f64>;

    /// The image counter a value carries itself (NTNDArray's `uniqueId`).
    fn counter(_value: &Self::Value) -> Option<i64> {
        None
    }
}

/// One stream's PV, as the shared source needs it.
#[derive(Debug, Clone)]
pub struct StreamPv {
    /// The PV's name.
    pub pv: String,
    /// The frames' element type; default the PV's own.
    pub dtype: Option<DType>,
    /// Events flow without it until it has a value.
    pub optional: bool,
    /// A configured image shape `[height, width]`.
    pub shape: Option<[usize; 2]>,
}

/// A stream's configured `dtype` (a numpy name), or the error naming its key.
pub(crate) fn configured_dtype(
    stream: &StreamName,
    name: Option<&String>,
) -> Result<Option<DType>, SourceError> {
    name.map(|name| {
        DType::from_name(name).ok_or_else(|| SourceError::Table {
            key: format!("pvs.{:?}.dtype", stream.as_str()),
            message: format!(
                "unknown dtype {name:?}; expected a numpy type name: uint8, uint16, uint32, uint64, int8, int16, int32, int64, float32 or float64"
            ),
        })
    })
    .transpose()
}

/// The client's task: runs until dropped, reporting through the function it is given.
pub type ClientTask<V> = Box<
    dyn FnOnce(
            Box<dyn FnMut(PvEvent<V>) + Send>,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>
        + Send,
>;

/// How long a PV may go unanswered before it is reported; the report repeats at doubling
/// intervals up to ten minutes.
pub const NOT_FOUND_AFTER: Duration = Duration::from_secs(5);
const NOT_FOUND_REPEAT_MAX: Duration = Duration::from_secs(600);

/// Connection changes are gathered into one line per server until none has come for this long
/// (the PVs of a restarted IOC are found again over a few search rounds), or for
/// [`GATHER_AT_MOST`].
const GATHER_CHANGES: Duration = Duration::from_millis(300);
const GATHER_AT_MOST: Duration = Duration::from_secs(3);

/// Updates handled per call while no scan needs frames (each image is converted), so the
/// ingester's loop still says hello to the controller in time.
const IDLE_BURST: usize = 64;

/// Where a PV's connection stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Connection {
    /// Searched for, for less than [`NOT_FOUND_AFTER`].
    #[default]
    Searching,
    /// No server has answered for [`NOT_FOUND_AFTER`] or more: a wrong name or address list.
    NeverFound,
    Connected,
    /// Its server answered once and went away.
    Disconnected,
}

/// What a monitored PV is to its stream.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// The stream's own value.
    Value(usize),
    /// Its image width.
    Width(usize),
    /// Its image height.
    Height(usize),
    /// Its camera's image counter.
    Counter(usize),
}

impl Role {
    /// The stream the PV belongs to.
    fn stream(&self) -> usize {
        match *self {
            Role::Value(stream)
            | Role::Width(stream)
            | Role::Height(stream)
            | Role::Counter(stream) => stream,
        }
    }
}

#[derive(Debug, Default, serde::Serialize)]
struct PvStatus {
    pv: String,
    state: Connection,
    connected: bool,
    optional: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<SocketAddr>,
    updates: u64,
    disconnects: u64,
    /// Seconds spent disconnected, summed over every loss.
    down_seconds: f64,
    #[serde(skip)]
    down_since: Option<Instant>,
    dropped_images: u64,
    /// Images dropped before the camera's last restart.
    #[serde(skip)]
    dropped_before: u64,
    /// Updates skipped because they could not be read (a payload short of its count, a wrong
    /// type, an error status, a frame that does not fit the shape); the first is logged.
    malformed: u64,
    /// Circuits to the PV's server that failed or closed (each reconnect with back-off).
    circuit_failures: u64,
    #[serde(skip)]
    width: Option<usize>,
    #[serde(skip)]
    height: Option<usize>,
    /// The camera's image counter, last seen.
    array_counter: Option<i64>,
    /// The counter and images received when counting started.
    #[serde(skip)]
    counted_from: Option<(i64, u64)>,
}

/// An EPICS source: the streams' PVs over protocol `P`, numbered into events by an
/// [`EventClock`].
pub struct Epics<P: Protocol> {
    streams: Vec<StreamName>,
    pvs: Vec<StreamPv>,
    roles: Vec<Role>,
    status: Vec<PvStatus>,
    pub(crate) clock: EventClock,
    pub(crate) updates: Receiver<PvEvent<P::Value>>,
    overflow: Arc<AtomicU64>,
    outbox: VecDeque<SourceFrame>,
    waiting_logged: bool,
    /// What the client searches, for the not-found report.
    searched: String,
    started: Instant,
    /// When the not-found report is next due, and the interval after it.
    not_found_report: (Instant, Duration),
    /// Connections made and lost since the last log line, by server; when the first and the
    /// last of them came, and how many there were then.
    connection_changes: BTreeMap<SocketAddr, ConnectionChanges>,
    changes_seen: Option<(Instant, Instant, usize)>,
    queue_capacity: usize,
    /// Updates go to the latest values only, making no events.
    draining: bool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    protocol: PhantomData<P>,
}

#[derive(Debug, Default)]
struct ConnectionChanges {
    connected: Vec<usize>,
    reconnected: Vec<(usize, f64)>,
    lost: Vec<usize>,
}

impl<P: Protocol> Epics<P> {
    /// Starts `client` on a thread of its own, monitoring the PVs `roles` describes (in the
    /// client's order), and numbers their updates by `clock`. `searched` says where the client
    /// looks, for the not-found report; at most `queue` updates wait between the client and
    /// the source.
    pub(crate) fn start(
        clock: ClockConfig,
        streams: Vec<StreamName>,
        pvs: Vec<StreamPv>,
        roles: Vec<Role>,
        searched: String,
        queue: usize,
        client: ClientTask<P::Value>,
    ) -> Result<Self, SourceError> {
        if let ClockConfig::Trigger { stream } = &clock
            && !streams.contains(stream)
        {
            return Err(SourceError::Config(format!(
                "the trigger stream {stream} is not one of the PVs"
            )));
        }
        let (sender, updates) = sync_channel(queue.max(1));
        let overflow = Arc::new(AtomicU64::new(0));
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| SourceError::Config(format!("{} runtime: {error}", P::NAME)))?;
        let counted = overflow.clone();
        std::thread::Builder::new()
            .name(format!(
                "epics-{}",
                P::NAME.to_lowercase().replace(' ', "-")
            ))
            .spawn(move || {
                runtime.block_on(async move {
                    let on_event =
                        Box::new(
                            move |event: PvEvent<P::Value>| match sender.try_send(event) {
                                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                                Err(TrySendError::Full(_)) => {
                                    counted.fetch_add(1, Ordering::Relaxed);
                                }
                            },
                        );
                    tokio::select! {
                        result = client(on_event) => {
                            if let Err(error) = result {
                                warn!(%error, "{} client failed.", P::NAME);
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|error| SourceError::Config(format!("{} thread: {error}", P::NAME)))?;
        let status = pvs
            .iter()
            .map(|pv| PvStatus {
                pv: pv.pv.clone(),
                optional: pv.optional,
                ..PvStatus::default()
            })
            .collect();
        let mut clock = EventClock::new(clock, streams.iter().cloned().collect());
        let now = Instant::now();
        for (stream, pv) in streams.iter().zip(&pvs) {
            if pv.optional {
                clock.update(stream.clone(), placeholder(&pv.pv)?, now);
            }
        }
        clock.restart(now);
        Ok(Self {
            streams,
            pvs,
            roles,
            status,
            clock,
            updates,
            overflow,
            outbox: VecDeque::new(),
            waiting_logged: false,
            searched,
            started: now,
            not_found_report: (now + NOT_FOUND_AFTER, NOT_FOUND_AFTER),
            connection_changes: BTreeMap::new(),
            changes_seen: None,
            queue_capacity: queue.max(1),
            draining: false,
            shutdown: Some(shutdown),
            protocol: PhantomData,
        })
    }

    fn handle(&mut self, event: PvEvent<P::Value>, now: Instant) {
        match event {
            PvEvent::Connected { pv, server, .. } => {
                if let Some(Role::Value(stream)) = self.roles.get(pv).copied() {
                    let status = &mut self.status[stream];
                    status.connected = true;
                    status.state = Connection::Connected;
                    status.server = Some(server);
                    let changes = self.connection_changes.entry(server).or_default();
                    match status.down_since.take() {
                        Some(since) => {
                            let down = now.duration_since(since).as_secs_f64();
                            status.down_seconds += down;
                            // A restarted camera counts its images anew: dropped images are
                            // counted from its first one, added to those before.
                            status.dropped_before = status.dropped_images;
                            status.counted_from = None;
                            changes.reconnected.push((stream, down));
                        }
                        None => changes.connected.push(stream),
                    }
                }
            }
            PvEvent::Disconnected { pv } => {
                if let Some(Role::Value(stream)) = self.roles.get(pv).copied() {
                    let status = &mut self.status[stream];
                    if status.connected {
                        status.disconnects += 1;
                        status.down_since = Some(now);
                        status.state = Connection::Disconnected;
                        if let Some(server) = status.server {
                            self.connection_changes
                                .entry(server)
                                .or_default()
                                .lost
                                .push(stream);
                        }
                    }
                    status.connected = false;
                }
            }
            PvEvent::Malformed { pv, error } => {
                if let Some(stream) = self.roles.get(pv).map(Role::stream) {
                    self.malformed(stream, &error);
                }
            }
            PvEvent::ConnectionLost { pvs } => {
                // The client logs the first failure of a run; here each is counted.
                for pv in pvs {
                    if let Some(Role::Value(stream)) = self.roles.get(pv).copied() {
                        self.status[stream].circuit_failures += 1;
                    }
                }
            }
            PvEvent::Update { pv, value } => match self.roles.get(pv).copied() {
                Some(Role::Value(stream)) => self.value(stream, value, now),
                Some(Role::Width(stream)) => self.status[stream].width = size(P::number(&value)),
                Some(Role::Height(stream)) => self.status[stream].height = size(P::number(&value)),
                Some(Role::Counter(stream)) => {
                    self.status[stream].array_counter = P::number(&value).map(|n| n as i64);
                }
                None => {}
            },
        }
    }

    fn value(&mut self, stream: usize, value: P::Value, now: Instant) {
        let status = &mut self.status[stream];
        status.updates += 1;
        if let Some(counter) = P::counter(&value) {
            status.array_counter = Some(counter);
        }
        // Images the camera counted but the monitor did not deliver. Whether a counter update
        // arrives before or after its image is the same for every image, so the difference of
        // advances is exact once both have arrived (and off by one at most in between).
        if let Some(counter) = status.array_counter {
            match status.counted_from {
                None => status.counted_from = Some((counter, status.updates)),
                Some((first, images)) => {
                    let announced = counter - first;
                    let received = (status.updates - images) as i64;
                    status.dropped_images =
                        status.dropped_before + (announced - received).max(0) as u64;
                }
            }
        }
        let shape = self.pvs[stream]
            .shape
            .or(status.width.zip(status.height).map(|(w, h)| [h, w]));
        match P::frame(&status.pv, value, shape, self.pvs[stream].dtype) {
            Ok(frame) if self.draining => self.clock.remember(self.streams[stream].clone(), frame),
            Ok(frame) => {
                let events = self.clock.update(self.streams[stream].clone(), frame, now);
                self.queue(events);
            }
            Err(error) => self.malformed(stream, &error),
        }
    }

    /// Counts a skipped update of `stream`'s PVs; the first is logged.
    fn malformed(&mut self, stream: usize, error: &dyn std::fmt::Display) {
        let status = &mut self.status[stream];
        if status.malformed == 0 {
            warn!(stream = %self.streams[stream], pv = %status.pv, %error, "PV value skipped (counted from now on).");
        }
        status.malformed += 1;
    }

    fn queue(&mut self, events: Vec<ClockEvent>) {
        if !self.waiting_logged && self.clock.counts().waiting > 0 {
            let missing: Vec<&str> = self
                .clock
                .without_value()
                .iter()
                .map(|s| s.as_str())
                .collect();
            info!(missing = %missing.join(" "), "Events start once every PV has had a value.");
            self.waiting_logged = true;
        }
        for event in events {
            for (stream, frame) in event.frames {
                self.outbox.push_back(SourceFrame {
                    stream,
                    index: event.index,
                    data: frame.stream(),
                    taken_at: event.taken_at,
                });
            }
        }
    }
}

impl<P: Protocol> Epics<P> {
    /// Handles up to `at_most` of what the client has sent, making no events of it (it came
    /// before the scan, or while none needs frames), then says what changed.
    fn drain_waiting(&mut self, at_most: usize) {
        self.draining = true;
        for _ in 0..at_most {
            let Ok(event) = self.updates.try_recv() else {
                break;
            };
            self.handle(event, Instant::now());
        }
        self.draining = false;
        self.speak_up(Instant::now());
    }

    /// One line per server whose PVs connected, came back or went away (an IOC restarting is
    /// two lines, not one per PV), and the not-found report when due.
    fn speak_up(&mut self, now: Instant) {
        let count: usize = self
            .connection_changes
            .values()
            .map(|c| c.connected.len() + c.reconnected.len() + c.lost.len())
            .sum();
        let gathered = match self.changes_seen {
            _ if count == 0 => false,
            Some((first, last, seen)) if seen == count => {
                now.duration_since(last) >= GATHER_CHANGES
                    || now.duration_since(first) >= GATHER_AT_MOST
            }
            Some((first, _, _)) => {
                self.changes_seen = Some((first, now, count));
                now.duration_since(first) >= GATHER_AT_MOST
            }
            None => {
                self.changes_seen = Some((now, now, count));
                false
            }
        };
        let changes = if gathered {
            self.changes_seen = None;
            std::mem::take(&mut self.connection_changes)
        } else {
            BTreeMap::new()
        };
        for (server, changes) in changes {
            let names = |streams: &[usize]| -> String {
                streams
                    .iter()
                    .map(|&s| self.status[s].pv.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let on_server = self
                .status
                .iter()
                .filter(|s| s.server == Some(server))
                .count();
            if !changes.lost.is_empty() {
                let lost = changes.lost.len();
                let whole = if lost == on_server { "all its" } else { "" };
                warn!(%server, lost, pvs = %names(&changes.lost),
                    "IOC at {server} lost {whole} {lost} PVs; reconnecting when it is back.");
            }
            if !changes.reconnected.is_empty() {
                let streams: Vec<usize> = changes.reconnected.iter().map(|(s, _)| *s).collect();
                let down_seconds = changes
                    .reconnected
                    .iter()
                    .map(|(_, d)| *d)
                    .fold(0.0, f64::max);
                info!(%server, pvs = %names(&streams), down_seconds,
                    "IOC at {server} back: {} PVs reconnected; their values resume.", streams.len());
            }
            if !changes.connected.is_empty() {
                info!(%server, pvs = %names(&changes.connected),
                    "Connected to {} PVs on {server}.", changes.connected.len());
            }
        }
        let (due, interval) = self.not_found_report;
        if now < due {
            return;
        }
        let mut never_found = Vec::new();
        for status in &mut self.status {
            if status.state == Connection::Searching {
                status.state = Connection::NeverFound;
            }
            if status.state == Connection::NeverFound {
                never_found.push((status.pv.as_str(), status.optional));
            }
        }
        if never_found.is_empty() {
            // Reported again only if a PV is still unanswered at the next interval.
            self.not_found_report = (now + interval, interval);
            return;
        }
        let required: Vec<&str> = never_found
            .iter()
            .filter(|(_, o)| !o)
            .map(|(p, _)| *p)
            .collect();
        let optional: Vec<&str> = never_found
            .iter()
            .filter(|(_, o)| *o)
            .map(|(p, _)| *p)
            .collect();
        let seconds = now.duration_since(self.started).as_secs();
        let consequence = if required.is_empty() {
            "events flow without these optional PVs"
        } else {
            "no events until every PV not marked optional has a value"
        };
        warn!(
            pvs = %required.join(" "),
            optional = %optional.join(" "),
            searched = %self.searched,
            "No server answered for {seconds} s: {consequence}. Check the PV names and the address list."
        );
        let next = (interval * 2).min(NOT_FOUND_REPEAT_MAX);
        self.not_found_report = (now + next, next);
    }
}

impl<P: Protocol> Drop for Epics<P> {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl<P: Protocol> Source for Epics<P> {
    fn streams(&self) -> Vec<StreamName> {
        self.streams.clone()
    }

    fn start_scan(
        &mut self,
        _frames: &BTreeMap<StreamName, std::ops::Range<u64>>,
    ) -> Result<(), SourceError> {
        // What arrived before the scan only updates the latest values: it must not become the
        // new scan's first events (a stalled scan leaves the queue full of old updates).
        self.drain_waiting(self.queue_capacity);
        self.outbox.clear();
        self.clock.restart(Instant::now());
        Ok(())
    }

    fn idle(&mut self) {
        self.drain_waiting(IDLE_BURST);
        self.outbox.clear();
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<SourceFrame>, SourceError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.outbox.pop_front() {
                return Ok(Some(frame));
            }
            let now = Instant::now();
            let events = self.clock.tick(now);
            if !events.is_empty() {
                self.queue(events);
                continue;
            }
            if now >= deadline {
                return Ok(None);
            }
            let wake = self
                .clock
                .next_due()
                .map_or(deadline, |due| due.min(deadline));
            match self
                .updates
                .recv_timeout(wake.saturating_duration_since(now))
            {
                Ok(event) => {
                    self.handle(event, Instant::now());
                    self.speak_up(Instant::now());
                }
                Err(RecvTimeoutError::Timeout) => self.speak_up(Instant::now()),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(SourceError::Config(format!(
                        "the {} client stopped",
                        P::NAME
                    )));
                }
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        let pvs: BTreeMap<String, &PvStatus> = self
            .streams
            .iter()
            .map(|s| s.to_string())
            .zip(&self.status)
            .collect();
        serde_json::json!({
            "pvs": pvs,
            "clock": self.clock.counts(),
            "waiting_for_first_value": self.clock.without_value(),
            "updates_dropped_full_queue": self.overflow.load(Ordering::Relaxed),
        })
    }
}

/// An optional PV's frame until its first value: no elements, INVALID/UDF, no time stamp.
fn placeholder(pv: &str) -> Result<PvFrame, SourceError> {
    let value = NdArray::new(vec![0], DType::Float64, Bytes::new())
        .map_err(|error| SourceError::Config(error.to_string()))?;
    Ok(PvFrame {
        pv: pv.to_owned(),
        status: alarm::status::UDF,
        severity: alarm::severity::INVALID,
        secs: 0,
        nanos: 0,
        value,
    })
}

/// A size PV's number as a size (none for negative or non-finite numbers).
fn size(number: Option<f64>) -> Option<usize> {
    number
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n as usize)
}
