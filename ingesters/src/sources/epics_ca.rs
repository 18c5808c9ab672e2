//! EPICS process variables over Channel Access: scalars, waveforms and areaDetector images,
//! each a stream of [`PvFrame`]s (value, alarm, CA time stamp), numbered into events by an
//! [`EventClock`].
//!
//! Images: `ArrayData` is a flat waveform; its shape comes from `width_pv`/`height_pv`
//! (`ArraySize0_RBV`/`ArraySize1_RBV`) or a configured `shape`. With `dtype = "uint16"`, both
//! encodings real servers send become the same u16 frame: caproto's big-endian int16 (the raw
//! bits) and EPICS 7's 32-bit LONG for USHORT waveforms. `counter_pv` (`ArrayCounter_RBV`)
//! reveals images the monitor did not deliver, which are counted.
//!
//! The Channel Access client runs on its own thread; updates reach the source through a
//! bounded queue (`queue`), and what does not fit is counted, never buffered without bound.
//!
//! Speaking up: a PV that no server answers is logged within [`NOT_FOUND_AFTER`] with the
//! addresses searched, again at doubling intervals, and is `never_found` in the status (not
//! `disconnected`, which needs a server that once answered). Connections that come and go
//! together (an IOC restarting) are one line per server. Trigger and period clocks wait for a
//! first value of every PV but those marked `optional`, whose events carry an INVALID/UDF
//! placeholder until a value comes.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use beamflow_ca::client::{ClientConfig, MonitorEvent, monitor, parse_addr_list};
use beamflow_ca::convert::numbers;
use beamflow_ca::dbr::alarm;
use beamflow_ca::wire::DEFAULT_PORT;
use beamflow_ca::{TimeValue, Values};
use beamflow_protocol::streams::pv::PvFrame;
use beamflow_protocol::{DType, NdArray, StreamName};
use bytes::Bytes;
use serde::Deserialize;
use tracing::{info, warn};

use crate::sources::event_clock::{ClockConfig, ClockEvent, EventClock};
use crate::{Source, SourceError, SourceFrame, SourceKind};

/// `[ingesters.<name>]` with `kind = "epics_ca"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpicsCaConfig {
    /// The streams: one PV each.
    pub pvs: BTreeMap<StreamName, PvConfig>,
    /// How updates become events.
    pub clock: ClockConfig,
    /// Where to search (`host[:port] ...`); default: `EPICS_CA_ADDR_LIST` and friends.
    #[serde(default)]
    pub addr_list: Option<String>,
    /// Updates buffered between the Channel Access client and the ingester at most.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_queue() -> usize {
    1024
}

/// One stream's PV.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvConfig {
    /// The PV name, e.g. `OTRS:IN20:571:Image:ArrayData`.
    pub pv: String,
    /// Image shape `[height, width]`, when no size PVs say it.
    #[serde(default)]
    pub shape: Option<[usize; 2]>,
    /// The PV holding the image width (`...:ArraySize0_RBV`).
    #[serde(default)]
    pub width_pv: Option<String>,
    /// The PV holding the image height (`...:ArraySize1_RBV`).
    #[serde(default)]
    pub height_pv: Option<String>,
    /// The image counter (`...:ArrayCounter_RBV`): its jumps count images not delivered.
    #[serde(default)]
    pub counter_pv: Option<String>,
    /// Element type of the frames (numpy name); default: the PV's own type. `uint16` reads
    /// 16-bit detector images from either encoding.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Events flow without this PV: until it has a value, its frame is an INVALID/UDF
    /// placeholder with no elements (as EPICS shows a record that was never processed).
    #[serde(default)]
    pub optional: bool,
}

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

#[derive(Debug, Clone, Copy)]
enum Role {
    Value(usize),
    Width(usize),
    Height(usize),
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

/// The source.
pub struct EpicsCa {
    streams: Vec<StreamName>,
    configs: Vec<PvConfig>,
    roles: Vec<Role>,
    dtypes: Vec<Option<DType>>,
    status: Vec<PvStatus>,
    clock: EventClock,
    updates: Receiver<MonitorEvent>,
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
}

#[derive(Debug, Default)]
struct ConnectionChanges {
    connected: Vec<usize>,
    reconnected: Vec<(usize, f64)>,
    lost: Vec<usize>,
}

impl SourceKind for EpicsCaConfig {
    const KIND: &str = "epics_ca";
    const SUMMARY: &str = "EPICS PVs over Channel Access (scalars, waveforms, areaDetector \
        images), cut into events by a trigger PV, a period or the LCLS pulse id";
    const BRACKETS_SERIES: bool = false;

    fn build(&self, _: &str, _: &zmq::Context) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(EpicsCa::connect(self)?))
    }

    fn stream_names(&self, _: &str) -> Option<Vec<StreamName>> {
        Some(self.pvs.keys().cloned().collect())
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        self.clock
            .trigger()
            .map(|stream| ("clock.stream".to_owned(), stream.clone()))
            .into_iter()
            .collect()
    }

    /// What the table cannot say by its types: dtype names and the clock's rate (the trigger
    /// stream's existence is the pipeline's check, which knows every stream).
    fn check(&self) -> Result<(), SourceError> {
        for (stream, pv) in &self.pvs {
            if let Some(name) = &pv.dtype
                && DType::from_name(name).is_none()
            {
                return Err(SourceError::Table {
                    key: format!("pvs.{:?}.dtype", stream.as_str()),
                    message: format!(
                        "unknown dtype {name:?}; expected a numpy type name: uint8, uint16, uint32, uint64, int8, int16, int32, int64, float32 or float64"
                    ),
                });
            }
        }
        self.clock.check()
    }
}

impl EpicsCa {
    /// Starts monitoring the configured PVs.
    pub fn connect(config: &EpicsCaConfig) -> Result<Self, SourceError> {
        config.check()?;
        let streams: Vec<StreamName> = config.pvs.keys().cloned().collect();
        let configs: Vec<PvConfig> = config.pvs.values().cloned().collect();
        let mut names = Vec::new();
        let mut roles = Vec::new();
        let mut dtypes = Vec::new();
        for (index, pv) in configs.iter().enumerate() {
            let dtype = match &pv.dtype {
                Some(name) => Some(DType::from_name(name).ok_or_else(|| {
                    SourceError::Config(format!("{}: unknown dtype {name:?}", streams[index]))
                })?),
                None => None,
            };
            dtypes.push(dtype);
            names.push(pv.pv.clone());
            roles.push(Role::Value(index));
            for (name, role) in [
                (&pv.width_pv, Role::Width(index)),
                (&pv.height_pv, Role::Height(index)),
                (&pv.counter_pv, Role::Counter(index)),
            ] {
                if let Some(name) = name {
                    names.push(name.clone());
                    roles.push(role);
                }
            }
        }
        if let ClockConfig::Trigger { stream } = &config.clock
            && !config.pvs.contains_key(stream)
        {
            return Err(SourceError::Config(format!(
                "the trigger stream {stream} is not one of the PVs"
            )));
        }
        let client = match &config.addr_list {
            Some(list) => ClientConfig {
                addr_list: parse_addr_list(list, DEFAULT_PORT),
            },
            None => ClientConfig::from_env(),
        };
        let searched = match &config.addr_list {
            Some(_) => "addr_list",
            None => "EPICS_CA_ADDR_LIST",
        };
        let searched = format!(
            "{} ({searched})",
            client
                .addr_list
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
        let (sender, updates) = sync_channel(config.queue.max(1));
        let overflow = Arc::new(AtomicU64::new(0));
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        spawn_client(client, names, sender, overflow.clone(), stopped)?;
        let status = configs
            .iter()
            .map(|pv| PvStatus {
                pv: pv.pv.clone(),
                optional: pv.optional,
                ..PvStatus::default()
            })
            .collect();
        let mut clock = EventClock::new(config.clock.clone(), streams.iter().cloned().collect());
        let now = Instant::now();
        for (stream, pv) in streams.iter().zip(&configs) {
            if pv.optional {
                clock.update(stream.clone(), placeholder(&pv.pv)?, now);
            }
        }
        clock.restart(now);
        Ok(Self {
            streams,
            configs,
            roles,
            dtypes,
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
            queue_capacity: config.queue.max(1),
            draining: false,
            shutdown: Some(shutdown),
        })
    }

    fn handle(&mut self, event: MonitorEvent, now: Instant) {
        match event {
            MonitorEvent::Connected { pv, server, .. } => {
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
                            changes.reconnected.push((stream, down));
                        }
                        None => changes.connected.push(stream),
                    }
                }
            }
            MonitorEvent::Disconnected { pv } => {
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
            MonitorEvent::Malformed { pv, error } => {
                if let Some(stream) = self.roles.get(pv).map(Role::stream) {
                    self.malformed(stream, &error);
                }
            }
            MonitorEvent::CircuitLost { pvs, .. } => {
                // The client logs the first failure of a run; here each is counted.
                for pv in pvs {
                    if let Some(Role::Value(stream)) = self.roles.get(pv).copied() {
                        self.status[stream].circuit_failures += 1;
                    }
                }
            }
            MonitorEvent::Update { pv, value } => match self.roles.get(pv).copied() {
                Some(Role::Value(stream)) => self.value(stream, value, now),
                Some(Role::Width(stream)) => self.status[stream].width = first_size(&value),
                Some(Role::Height(stream)) => self.status[stream].height = first_size(&value),
                Some(Role::Counter(stream)) => {
                    self.status[stream].array_counter =
                        numbers(&value.values).first().map(|&n| n as i64);
                }
                None => {}
            },
        }
    }

    fn value(&mut self, stream: usize, value: TimeValue, now: Instant) {
        let status = &mut self.status[stream];
        status.updates += 1;
        // Images the camera counted but the monitor did not deliver. Whether a counter update
        // arrives before or after its image is the same for every image, so the difference of
        // advances is exact once both have arrived (and off by one at most in between).
        if let Some(counter) = status.array_counter {
            match status.counted_from {
                None => status.counted_from = Some((counter, status.updates)),
                Some((first, images)) => {
                    let announced = counter - first;
                    let received = (status.updates - images) as i64;
                    status.dropped_images = (announced - received).max(0) as u64;
                }
            }
        }
        let shape = self.configs[stream]
            .shape
            .or(status.width.zip(status.height).map(|(w, h)| [h, w]));
        match frame(&status.pv, value, shape, self.dtypes[stream]) {
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

impl EpicsCa {
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

impl Drop for EpicsCa {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl Source for EpicsCa {
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
                    return Err(SourceError::Config(
                        "the Channel Access client stopped".to_owned(),
                    ));
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

fn spawn_client(
    client: ClientConfig,
    names: Vec<String>,
    sender: SyncSender<MonitorEvent>,
    overflow: Arc<AtomicU64>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), SourceError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| SourceError::Config(format!("Channel Access runtime: {error}")))?;
    std::thread::Builder::new()
        .name("epics-ca".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let on_event = move |event: MonitorEvent| match sender.try_send(event) {
                    Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                    Err(TrySendError::Full(_)) => {
                        overflow.fetch_add(1, Ordering::Relaxed);
                    }
                };
                tokio::select! {
                    result = monitor(client, names, on_event) => {
                        if let Err(error) = result {
                            warn!(%error, "Channel Access client failed.");
                        }
                    }
                    _ = stopped => {}
                }
            });
        })
        .map_err(|error| SourceError::Config(format!("Channel Access thread: {error}")))?;
    Ok(())
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

fn first_size(value: &TimeValue) -> Option<usize> {
    numbers(&value.values)
        .first()
        .filter(|n| n.is_finite() && **n >= 0.0)
        .map(|&n| n as usize)
}

/// A PV value that cannot become a frame.
#[derive(Debug, thiserror::Error)]
enum ValueError {
    #[error("an image of {height}x{width} is not a size")]
    ImageSize { height: usize, width: usize },
    #[error("an image of {height}x{width} needs {needed} elements, the PV sent {elements}")]
    TooFewElements {
        height: usize,
        width: usize,
        needed: usize,
        elements: usize,
    },
    #[error("{used} bytes needed, {decoded} decoded")]
    TooFewBytes { used: usize, decoded: usize },
    #[error("a string PV cannot be read as {}", .0.name())]
    StringAs(DType),
    #[error(transparent)]
    Shape(#[from] beamflow_protocol::array::ShapeMismatch),
}

/// A PV update as a frame: its values as `dtype` (or their own type), shaped as an image when
/// `shape` is known, a scalar for one element, a waveform otherwise.
fn frame(
    pv: &str,
    value: TimeValue,
    shape: Option<[usize; 2]>,
    dtype: Option<DType>,
) -> Result<PvFrame, ValueError> {
    let (natural, bytes) = little_endian(&value.values, dtype)?;
    // A string is its bytes; anything else, its elements.
    let elements = match value.values {
        Values::String(_) => bytes.len(),
        _ => value.values.len(),
    };
    let shape = match shape {
        Some([height, width]) => {
            // Sizes come from the camera's PVs: a product that overflows is not an image.
            let needed = height
                .checked_mul(width)
                .ok_or(ValueError::ImageSize { height, width })?;
            if needed > elements {
                return Err(ValueError::TooFewElements {
                    height,
                    width,
                    needed,
                    elements,
                });
            }
            vec![height, width]
        }
        None if elements == 1 && !matches!(value.values, Values::String(_)) => vec![],
        None => vec![elements],
    };
    let used = shape.iter().product::<usize>() * natural.size();
    if used > bytes.len() {
        return Err(ValueError::TooFewBytes {
            used,
            decoded: bytes.len(),
        });
    }
    let data = Bytes::from(bytes).slice(..used);
    let value_array = NdArray::new(shape, natural, data)?;
    Ok(PvFrame {
        pv: pv.to_owned(),
        status: value.status,
        severity: value.severity,
        secs: value.stamp.secs,
        nanos: value.stamp.nanos,
        value: value_array,
    })
}

/// The values' little-endian bytes as `dtype` (integers keep their low bits, as a u16 image
/// served as int16 or int32 needs), or in their own type.
fn little_endian(values: &Values, dtype: Option<DType>) -> Result<(DType, Vec<u8>), ValueError> {
    let natural = match values {
        Values::String(_) => DType::Uint8,
        Values::Short(_) => DType::Int16,
        Values::Float(_) => DType::Float32,
        Values::Enum(_) => DType::Uint16,
        Values::Char(_) => DType::Uint8,
        Values::Long(_) => DType::Int32,
        Values::Double(_) => DType::Float64,
    };
    let target = dtype.unwrap_or(natural);
    if let Values::String(strings) = values {
        if target != DType::Uint8 {
            return Err(ValueError::StringAs(target));
        }
        return Ok((
            target,
            strings
                .first()
                .map(|s| s.as_bytes().to_vec())
                .unwrap_or_default(),
        ));
    }
    let integers: Option<Vec<i64>> = match values {
        Values::Short(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Values::Enum(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Values::Char(v) => Some(v.iter().map(|&x| x.into()).collect()),
        Values::Long(v) => Some(v.iter().map(|&x| x.into()).collect()),
        _ => None,
    };
    let floats = || numbers(values);
    let mut out = Vec::with_capacity(values.len() * target.size());
    macro_rules! put {
        ($t:ty) => {
            match &integers {
                Some(v) => v
                    .iter()
                    .for_each(|&x| out.extend_from_slice(&(x as $t).to_le_bytes())),
                None => floats()
                    .iter()
                    .for_each(|&x| out.extend_from_slice(&(x as $t).to_le_bytes())),
            }
        };
    }
    match target {
        DType::Uint8 => put!(u8),
        DType::Uint16 => put!(u16),
        DType::Uint32 => put!(u32),
        DType::Uint64 => put!(u64),
        DType::Int8 => put!(i8),
        DType::Int16 => put!(i16),
        DType::Int32 => put!(i32),
        DType::Int64 => put!(i64),
        DType::Float32 => put!(f32),
        DType::Float64 => put!(f64),
    }
    Ok((target, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_ca::EpicsTime;

    fn time_value(values: Values) -> TimeValue {
        TimeValue {
            status: 0,
            severity: 1,
            stamp: EpicsTime { secs: 5, nanos: 6 },
            values,
        }
    }

    /// caproto's int16 image and EPICS 7's LONG image of the same u16 pixels give one frame.
    #[test]
    fn both_image_encodings_become_the_same_u16_frame() {
        let pixels = [0u16, 1, 40_000, 65_535, 7, 8];
        let caproto = Values::Short(pixels.iter().map(|&p| p as i16).collect());
        let epics7 = Values::Long(pixels.iter().map(|&p| i32::from(p)).collect());
        let uint16 = Some(DType::Uint16);
        let a = frame("IMG", time_value(caproto), Some([2, 3]), uint16).unwrap();
        let b = frame("IMG", time_value(epics7), Some([2, 3]), uint16).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.value.shape(), [2, 3]);
        let expected: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
        assert_eq!(&a.value.data()[..], &expected[..]);
        assert_eq!((a.severity, a.secs, a.nanos), (1, 5, 6));
    }

    #[test]
    fn scalars_waveforms_and_short_images() {
        let scalar = frame("X", time_value(Values::Double(vec![2.5])), None, None).unwrap();
        assert!(scalar.value.shape().is_empty());
        assert_eq!(&scalar.value.data()[..], &2.5f64.to_le_bytes());
        let wave = frame("W", time_value(Values::Float(vec![1.0, 2.0])), None, None).unwrap();
        assert_eq!(
            (wave.value.shape(), wave.value.dtype()),
            (&[2][..], DType::Float32)
        );
        // areaDetector's NELM may exceed the image: the first height × width elements are it.
        let longer = frame(
            "I",
            time_value(Values::Long(vec![1, 2, 3, 4, 5])),
            Some([2, 2]),
            None,
        )
        .unwrap();
        assert_eq!(longer.value.data().len(), 4 * 4);
        let error = frame(
            "I",
            time_value(Values::Long(vec![1, 2])),
            Some([2, 2]),
            None,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "an image of 2x2 needs 4 elements, the PV sent 2"
        );
    }

    #[test]
    fn string_pvs_and_absurd_image_sizes_never_panic() {
        let text = |s: &str| TimeValue {
            status: 0,
            severity: 0,
            stamp: beamflow_ca::EpicsTime::default(),
            values: Values::String(vec![s.to_owned()]),
        };
        let empty = frame("S", text(""), None, None).expect("an empty string is an empty array");
        assert_eq!(empty.value.shape(), [0]);
        let word = frame("S", text("OPEN"), None, None).expect("bytes");
        assert_eq!(&word.value.data()[..], b"OPEN");
        let huge = frame(
            "I",
            time_value(Values::Short(vec![1, 2])),
            Some([usize::MAX, 2]),
            None,
        );
        assert!(huge.is_err());
    }

    /// Issue 16 (probe 2b): updates queued while a scan stalled became the next scan's events.
    /// At a scan's start they only become the latest values; the first event is the first
    /// trigger after it, taken when the trigger's stamp says.
    #[test]
    fn updates_queued_before_a_scan_make_none_of_its_events() {
        let config: EpicsCaConfig = toml::from_str(
            r#"
            addr_list = "127.0.0.1:9"
            clock = { kind = "trigger", stream = "img" }
            pvs = { bact = { pv = "BACT" }, img = { pv = "IMG" } }
            "#,
        )
        .unwrap();
        let mut source = EpicsCa::connect(&config).unwrap();
        let (sender, updates) = sync_channel(16);
        source.updates = updates;
        // PVs in stream order: bact 0, img 1.
        let update = |pv, secs, value| MonitorEvent::Update {
            pv,
            value: TimeValue {
                status: 0,
                severity: 0,
                stamp: EpicsTime { secs, nanos: 0 },
                values: Values::Double(vec![value]),
            },
        };
        sender.send(update(0, 10, 1.0)).unwrap();
        for secs in 11..15 {
            sender.send(update(1, secs, f64::from(secs))).unwrap();
        }
        source.start_scan(&BTreeMap::new()).unwrap();
        assert_eq!(source.next_frame(Duration::ZERO).unwrap(), None);
        sender.send(update(1, 20, 20.0)).unwrap();
        let mut frames = Vec::new();
        while let Some(frame) = source.next_frame(Duration::from_secs(5)).unwrap() {
            frames.push(frame);
            if frames.len() == 2 {
                break;
            }
        }
        let taken = Some(beamflow_protocol::streams::pv::epics_timestamp(20, 0));
        let summary: Vec<(&str, u64, _)> = frames
            .iter()
            .map(|f| (f.stream.as_str(), f.index, f.taken_at))
            .collect();
        assert_eq!(summary, [("bact", 0, taken), ("img", 0, taken)]);
        assert_eq!(source.clock.counts().events, 1);
    }

    /// Issue 17 (probe 3f): updates the client could not read were logged but not counted, and
    /// a failing server's circuits showed nowhere. Both are counted in the PV's status now.
    #[test]
    fn unreadable_updates_and_failed_circuits_are_counted() {
        let config: EpicsCaConfig = toml::from_str(
            r#"
            addr_list = "127.0.0.1:9"
            clock = { kind = "trigger", stream = "img" }
            pvs = { img = { pv = "IMG", width_pv = "IMG:W" } }
            "#,
        )
        .unwrap();
        let mut source = EpicsCa::connect(&config).unwrap();
        let (sender, updates) = sync_channel(16);
        source.updates = updates;
        let server = SocketAddr::from(([127, 0, 0, 1], 5064));
        // PVs: IMG 0, IMG:W 1 (the width of img).
        for pv in [0, 1, 0] {
            let error = "DBR type 19 × 4294967295 needs 17179869192 bytes, payload has 16".into();
            sender.send(MonitorEvent::Malformed { pv, error }).unwrap();
        }
        for failures in 1..=2 {
            sender
                .send(MonitorEvent::CircuitLost {
                    server,
                    pvs: vec![0, 1],
                    error: "unknown CA command 30583".to_owned(),
                    failures,
                    retry_in: Duration::from_millis(100),
                })
                .unwrap();
        }
        source.idle();
        let status = &source.status()["pvs"]["img"];
        assert_eq!(status["malformed"], 3, "{status}");
        assert_eq!(status["circuit_failures"], 2, "{status}");
    }
}
