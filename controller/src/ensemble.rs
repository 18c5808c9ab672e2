//! The controller's state, without sockets: who is connected, the parameters, the current scan,
//! and the control messages all of that makes it send. The socket loop ([`crate::node`]) feeds it
//! what arrives and sends what it queues; the REST API reads and changes it under a lock. Time is
//! passed in, so liveness is tested without sleeping.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use beamflow_protocol::control::{
    ByteVec, FromController, Hello, LeasedEvent, LeasedFrame, Role, ToController,
};
use beamflow_protocol::{
    EventNumber, ParameterDescription, ParameterName, ParameterValue, StreamName, WorkerName,
    WorkerTag,
};
use bytes::Bytes;

use serde::Serialize;
use serde_json::json;
use sha2::Digest as _;
use tracing::{info, warn};

use beamflow_protocol::parameters::{DEFAULT_DUMP_MAX_MB, DUMP_MAX_MB, DUMP_PREFIX};

use crate::mapping::Sequence;
use crate::route::{Assignment, Route};
use crate::scan::{DEAD_AFTER, Progress, Reassignment, Scan};

/// How long the live scan waits to resume after a posted sequence finished: scan software that
/// polls `/api/v1/progress` every second or so sees its sequence `finished` before the live scan
/// takes over the progress again.
pub const LIVE_RESUME_AFTER: Duration = Duration::from_secs(5);

/// How a scan is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Events leased ahead of the reducer at most (bounds every queue and the retention).
    pub window: u64,
    /// Unfinished events per worker at most.
    pub worker_limit: u64,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            window: 1024,
            worker_limit: 256,
        }
    }
}

/// Why a scan cannot start (answered as HTTP 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// No reducer has said hello.
    #[error("no reducer is connected")]
    NoReducer,
    /// The mapping names streams no ingester offers.
    #[error("streams {0:?} not available")]
    StreamsUnavailable(Vec<String>),
    /// More distinct constraints in one event than live workers.
    #[error("only {available} workers available, but {required} required")]
    TooFewWorkers {
        /// Live workers.
        available: usize,
        /// Needed by the mapping.
        required: usize,
    },
    /// The mapping asks for tags that no live worker carries.
    #[error("no live worker carries the tag {0}")]
    NoWorkerWithTag(String),
}

/// A parameter value with its version, as dranspose keeps them.
#[derive(Debug, Clone)]
struct Versioned {
    data: Bytes,
    version: uuid::Uuid,
}

#[derive(Debug, Clone)]
struct Member {
    identity: Vec<u8>,
    instance: u64,
    tags: BTreeSet<WorkerTag>,
    streams: BTreeSet<StreamName>,
    endpoint: Option<String>,
    last_seen: Instant,
    status: serde_json::Value,
}

struct Current {
    number: u64,
    uuid: String,
    live: bool,
    scan: Scan,
    started: Instant,
    finish_sent: bool,
    released: EventNumber,
    done: BTreeMap<WorkerName, u64>,
    error: Option<String>,
}

/// Counters for `/api/v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EnsembleCounts {
    /// Workers declared dead (silent for 2 s) or replaced by a restart.
    pub dead_workers: u64,
    /// Events re-routed from dead workers.
    pub reassigned_events: u64,
    /// Control messages that did not decode.
    pub bad_messages: u64,
}

/// The controller's state.
pub struct Ensemble {
    members: BTreeMap<(Role, String), Member>,
    parameters: BTreeMap<ParameterName, Versioned>,
    descriptions: Vec<ParameterDescription>,
    pacing: Pacing,
    current: Option<Current>,
    scans: u64,
    outbox: Vec<(Vec<u8>, FromController)>,
    counts: EnsembleCounts,
    live: Option<LiveScan>,
}

/// The scan `beamflow run --live` resumes whenever no other scan runs.
struct LiveScan {
    sequence: Sequence,
    /// Since when no scan has run.
    idle_since: Option<Instant>,
    /// The last reason it could not resume, logged once.
    error: Option<String>,
}

impl Ensemble {
    /// A controller whose pipeline declares `descriptions` (the analyses' and accumulators'
    /// parameters; the ingesters' `dump_prefix` and `dump_max_mb` are added).
    pub fn new(pacing: Pacing, mut descriptions: Vec<ParameterDescription>) -> Self {
        let recording = [
            ParameterDescription {
                name: DUMP_PREFIX.into(),
                dtype: beamflow_protocol::ParameterType::Str,
                default: ParameterValue::Str(String::new()),
                description: "Record every handled event to {prefix}{ingester}-{scan uuid}.cbors, \
                    with mapping-{uuid}.json and parameters-{uuid}.json beside them; takes effect at once"
                    .to_owned(),
            },
            ParameterDescription {
                name: DUMP_MAX_MB.into(),
                dtype: beamflow_protocol::ParameterType::Int,
                default: ParameterValue::Int(DEFAULT_DUMP_MAX_MB),
                description: "Close a dump file at this many MB and go on in the next (-1, -2, ...); 0: no limit"
                    .to_owned(),
            },
        ];
        for description in recording {
            if !descriptions.iter().any(|d| d.name == description.name) {
                descriptions.push(description);
            }
        }
        descriptions.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            members: BTreeMap::new(),
            parameters: BTreeMap::new(),
            descriptions,
            pacing,
            current: None,
            scans: 0,
            outbox: Vec::new(),
            counts: EnsembleCounts::default(),
            live: None,
        }
    }

    /// Resume `sequence` as the live scan [`LIVE_RESUME_AFTER`] after any scan ends (or none
    /// runs), so the control room's histories go on between the sequences scan software posts.
    pub fn resume_live(&mut self, sequence: Sequence) {
        self.live = Some(LiveScan {
            sequence,
            idle_since: None,
            error: None,
        });
    }

    /// Starts the live scan now (it then resumes whenever no other scan runs, if
    /// [`Ensemble::resume_live`] asked for it).
    pub fn start_live(&mut self, sequence: Sequence, now: Instant) -> Result<String, StartError> {
        let uuid = self.start(sequence, now)?;
        if let Some(current) = self.current.as_mut() {
            current.live = true;
        }
        Ok(uuid)
    }

    /// Takes one control message from the component with socket identity `identity`.
    pub fn receive(&mut self, identity: &[u8], message: ToController, now: Instant) {
        match message {
            ToController::Hello(hello) => self.hello(identity, hello, now),
            ToController::Done { scan, events } => {
                if let Some(name) = self.name_of(Role::Worker, identity)
                    && let Some(current) = self.current.as_mut()
                    && current.number == scan
                {
                    let name = WorkerName::from(name);
                    current.scan.done(&name, events);
                    *current.done.entry(name).or_default() += events;
                }
            }
            ToController::Reduced { scan, up_to } => {
                if let Some(current) = self.current.as_mut()
                    && current.number == scan
                {
                    current.scan.reduced(up_to);
                }
            }
        }
    }

    /// Counts a control message that did not decode.
    pub fn bad_message(&mut self) {
        self.counts.bad_messages += 1;
    }

    fn name_of(&self, role: Role, identity: &[u8]) -> Option<String> {
        self.members
            .iter()
            .find(|((r, _), m)| *r == role && m.identity == identity)
            .map(|((_, name), _)| name.clone())
    }

    fn hello(&mut self, identity: &[u8], hello: Hello, now: Instant) {
        let key = (hello.role, hello.name.clone());
        let status = serde_json::to_value(&hello.status).unwrap_or(serde_json::Value::Null);
        let previous = self.members.get(&key).map(|m| m.instance);
        let member = Member {
            identity: identity.to_vec(),
            instance: hello.instance,
            tags: hello.tags.into_iter().collect(),
            streams: hello.streams.into_iter().collect(),
            endpoint: hello.endpoint,
            last_seen: now,
            status,
        };
        let tags = member.tags.clone();
        self.outbox.push((identity.to_vec(), FromController::Heard));
        self.members.insert(key.clone(), member);
        let joined = previous != Some(hello.instance);
        if joined {
            // A new component, or a restarted one (which lost whatever it held).
            info!(role = %hello.role, name = %hello.name, restarted = previous.is_some(), "Component joined.");
        }
        if hello.role == Role::Worker {
            let name = WorkerName::from(hello.name.as_str());
            if joined && previous.is_some() {
                self.counts.dead_workers += 1;
                let reassigned = match self.current.as_mut() {
                    Some(current) => current.scan.remove_workers(&BTreeSet::from([name.clone()])),
                    None => Ok(Vec::new()),
                };
                self.after_reassignment(reassigned);
            }
            if let Some(current) = self.current.as_mut() {
                current.scan.heartbeat(name, tags, now);
            }
        }
        if !joined {
            return;
        }
        if hello.role == Role::Worker {
            self.send_worker_endpoints();
        }
        if let Some(message) = self.scan_message_for(&key) {
            self.outbox.push((identity.to_vec(), message));
            if hello.role == Role::Ingester {
                self.send_worker_endpoints();
            }
        }
    }

    /// What a component needs to know of the running scan when it joins.
    fn scan_message_for(&self, key: &(Role, String)) -> Option<FromController> {
        let current = self.current.as_ref().filter(|c| !c.finish_sent)?;
        let member = self.members.get(key)?;
        let sequence = current.scan.sequence();
        Some(FromController::Scan {
            scan: current.number,
            uuid: current.uuid.clone(),
            frames: member
                .streams
                .iter()
                .map(|s| (s.clone(), sequence.frame_count(s)))
                .collect(),
            reducer: self.reducer_endpoint(),
            parameters: self.parameter_values(),
        })
    }

    fn reducer_endpoint(&self) -> Option<String> {
        self.members
            .iter()
            .find(|((role, _), _)| *role == Role::Reducer)
            .and_then(|(_, m)| m.endpoint.clone())
    }

    fn parameter_values(&self) -> Vec<(ParameterName, ByteVec)> {
        self.parameters
            .iter()
            .map(|(name, p)| (name.clone(), ByteVec::from(p.data.to_vec())))
            .collect()
    }

    fn members_with(&self, role: Role) -> impl Iterator<Item = (&String, &Member)> {
        self.members
            .iter()
            .filter(move |((r, _), _)| *r == role)
            .map(|((_, name), member)| (name, member))
    }

    fn send_to_all(&mut self, role: Role, message: &FromController) {
        let identities: Vec<Vec<u8>> = self
            .members_with(role)
            .map(|(_, m)| m.identity.clone())
            .collect();
        for identity in identities {
            self.outbox.push((identity, message.clone()));
        }
    }

    fn send_worker_endpoints(&mut self) {
        let endpoints: Vec<(WorkerName, String)> = self
            .members_with(Role::Worker)
            .filter_map(|(name, m)| Some((name.as_str().into(), m.endpoint.clone()?)))
            .collect();
        self.send_to_all(Role::Ingester, &FromController::Workers { endpoints });
    }

    /// Starts a scan over `sequence`; answers its uuid.
    pub fn start(&mut self, sequence: Sequence, now: Instant) -> Result<String, StartError> {
        if self.reducer_endpoint().is_none() {
            return Err(StartError::NoReducer);
        }
        let offered: BTreeSet<StreamName> = self
            .members_with(Role::Ingester)
            .flat_map(|(_, m)| m.streams.iter().cloned())
            .collect();
        let missing: Vec<String> = sequence
            .streams()
            .difference(&offered)
            .map(|s| s.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(StartError::StreamsUnavailable(missing));
        }
        let workers: Vec<(String, BTreeSet<WorkerTag>)> = self
            .members_with(Role::Worker)
            .map(|(name, m)| (name.clone(), m.tags.clone()))
            .collect();
        let required = sequence.min_workers();
        if workers.len() < required {
            return Err(StartError::TooFewWorkers {
                available: workers.len(),
                required,
            });
        }
        for tag in sequence.tags() {
            if !workers.iter().any(|(_, tags)| tags.contains(&tag)) {
                return Err(StartError::NoWorkerWithTag(tag.to_string()));
            }
        }
        if let Some(old) = &self.current
            && !old.finish_sent
        {
            let finish = FromController::Finish { scan: old.number };
            for role in [Role::Ingester, Role::Worker, Role::Reducer] {
                self.send_to_all(role, &finish);
            }
        }
        self.scans += 1;
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut scan = Scan::new(sequence, self.pacing.window, self.pacing.worker_limit);
        for (name, tags) in workers {
            scan.heartbeat(name.into(), tags, now);
        }
        info!(scan = self.scans, %uuid, events = scan.progress().total_events, "Scan started.");
        self.write_mapping_and_parameters(&uuid, scan.sequence());
        self.current = Some(Current {
            number: self.scans,
            uuid: uuid.clone(),
            live: false,
            scan,
            started: now,
            finish_sent: false,
            released: EventNumber(0),
            done: BTreeMap::new(),
            error: None,
        });
        let keys: Vec<(Role, String)> = self.members.keys().cloned().collect();
        for key in keys {
            if let (Some(message), Some(member)) =
                (self.scan_message_for(&key), self.members.get(&key))
            {
                self.outbox.push((member.identity.clone(), message));
            }
        }
        self.send_worker_endpoints();
        self.tick(now);
        Ok(uuid)
    }

    /// With `dump_prefix` set, writes the scan's mapping and every parameter beside the dumps
    /// under dranspose's names: `{prefix}mapping-{uuid}.json` (`{"parts", "sequence"}`) and
    /// `{prefix}parameters-{uuid}.json` (`[{"name", "data"}]`; `.cbor` when a value holds a NUL
    /// byte, which JSON text cannot carry), so a recording replays with what made it.
    fn write_mapping_and_parameters(&self, uuid: &str, sequence: &Sequence) {
        let prefix = self
            .parameter(DUMP_PREFIX)
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default();
        if prefix.is_empty() {
            return;
        }
        let parameters: Vec<(String, Bytes)> = self
            .descriptions
            .iter()
            .filter_map(|d| Some((d.name.to_string(), self.parameter(d.name.as_str())?)))
            .chain(
                self.parameters
                    .iter()
                    .filter(|(name, _)| !self.descriptions.iter().any(|d| d.name == **name))
                    .map(|(name, p)| (name.to_string(), p.data.clone())),
            )
            .collect();
        for (path, written) in crate::recording::write(&prefix, uuid, sequence, &parameters) {
            match written {
                Ok(()) => info!(path = %path.display(), "Written beside the dumps."),
                Err(error) => {
                    warn!(path = %path.display(), %error, "Cannot write beside the dumps.")
                }
            }
        }
    }

    /// Ends the current scan early (`POST /api/v1/stop`).
    pub fn stop(&mut self) {
        if let Some(current) = self.current.as_mut() {
            current.scan.stop();
        }
    }

    /// Periodic work: declares silent components dead, leases what the window allows, tells
    /// ingesters what they may release, and ends a finished scan.
    pub fn tick(&mut self, now: Instant) {
        self.resume_live_when_idle(now);
        let silent: Vec<(Role, String)> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) >= DEAD_AFTER)
            .map(|(key, _)| key.clone())
            .collect();
        let mut dead_workers = BTreeSet::new();
        for key in silent {
            warn!(role = %key.0, name = %key.1, "No heartbeat for {DEAD_AFTER:?}: declared dead.");
            self.members.remove(&key);
            if key.0 == Role::Worker {
                dead_workers.insert(WorkerName::from(key.1.as_str()));
            }
        }
        if !dead_workers.is_empty() {
            self.counts.dead_workers += dead_workers.len() as u64;
            let reassigned = match self.current.as_mut() {
                Some(current) => current.scan.remove_workers(&dead_workers),
                None => Ok(Vec::new()),
            };
            self.after_reassignment(reassigned);
            self.send_worker_endpoints();
        }
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if current.finish_sent {
            return;
        }
        match current.scan.lease() {
            Ok(leased) => {
                current.error = None;
                if !leased.is_empty() {
                    self.distribute(&leased, None);
                }
            }
            Err(error) => {
                if current.error.as_deref() != Some(&error.to_string()) {
                    warn!(%error, "Cannot lease events; waiting for workers.");
                    current.error = Some(error.to_string());
                }
            }
        }
        let Some(current) = self.current.as_mut() else {
            return;
        };
        let progress = current.scan.progress();
        let reduced = EventNumber(progress.completed_events);
        if reduced > current.released {
            current.released = reduced;
            let message = FromController::Released {
                scan: current.number,
                up_to: reduced,
            };
            self.send_to_all(Role::Ingester, &message);
        }
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if progress.finished {
            current.finish_sent = true;
            let message = FromController::Finish {
                scan: current.number,
            };
            info!(
                scan = current.number,
                completed = progress.completed_events,
                "Scan finished."
            );
            for role in [Role::Ingester, Role::Worker, Role::Reducer] {
                self.send_to_all(role, &message);
            }
        }
    }

    /// Starts the live scan again once no scan has run for [`LIVE_RESUME_AFTER`].
    fn resume_live_when_idle(&mut self, now: Instant) {
        let running = self.current.as_ref().is_some_and(|c| !c.finish_sent);
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if running {
            live.idle_since = None;
            return;
        }
        let since = *live.idle_since.get_or_insert(now);
        if now.duration_since(since) < LIVE_RESUME_AFTER {
            return;
        }
        let sequence = live.sequence.clone();
        match self.start_live(sequence, now) {
            Ok(uuid) => {
                info!(%uuid, "Live scan resumed.");
                if let Some(live) = self.live.as_mut() {
                    live.error = None;
                }
            }
            Err(error) => {
                if let Some(live) = self.live.as_mut()
                    && live.error.as_deref() != Some(&error.to_string())
                {
                    warn!(%error, "Cannot resume the live scan; trying again.");
                    live.error = Some(error.to_string());
                }
            }
        }
    }

    fn after_reassignment(
        &mut self,
        reassigned: Result<Vec<Reassignment>, crate::route::RouteError>,
    ) {
        match reassigned {
            Ok(reassigned) if !reassigned.is_empty() => {
                self.counts.reassigned_events += reassigned.len() as u64;
                info!(
                    events = reassigned.len(),
                    "Re-routed a dead worker's events."
                );
                let assignments: Vec<Assignment> =
                    reassigned.iter().map(|r| r.assignment.clone()).collect();
                let new: Vec<BTreeSet<WorkerName>> =
                    reassigned.into_iter().map(|r| r.new_workers).collect();
                self.distribute(&assignments, Some(&new));
            }
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "Cannot re-route a dead worker's events.");
                if let Some(current) = self.current.as_mut() {
                    current.error = Some(error.to_string());
                }
            }
        }
    }

    /// Sends leases to ingesters, expectations to workers and the reducer. With `new_workers`
    /// (a re-assignment), workers hear only of events new to them.
    fn distribute(
        &mut self,
        assignments: &[Assignment],
        new_workers: Option<&[BTreeSet<WorkerName>]>,
    ) {
        let Some(current) = self.current.as_ref() else {
            return;
        };
        let scan = current.number;
        let sequence = current.scan.sequence();
        let mut messages = Vec::new();
        for (_, ingester) in self.members_with(Role::Ingester) {
            let events: Vec<LeasedEvent> = assignments
                .iter()
                .enumerate()
                .filter_map(|(i, assignment)| {
                    let frames: Vec<LeasedFrame> = assignment
                        .routes
                        .iter()
                        .filter(|(stream, _)| ingester.streams.contains(*stream))
                        .filter_map(|(stream, route)| {
                            Some(LeasedFrame {
                                stream: stream.clone(),
                                frame: sequence.frame_of_event(stream, assignment.event_number)?,
                                workers: match route {
                                    Route::Drop => Vec::new(),
                                    Route::To(workers) => workers.iter().cloned().collect(),
                                },
                            })
                        })
                        .collect();
                    (!frames.is_empty()).then(|| LeasedEvent {
                        event: assignment.event_number,
                        frames,
                        resend_to: new_workers
                            .and_then(|n| n.get(i))
                            .map(|n| n.iter().cloned().collect())
                            .unwrap_or_default(),
                    })
                })
                .collect();
            if !events.is_empty() {
                messages.push((
                    ingester.identity.clone(),
                    FromController::Lease { scan, events },
                ));
            }
        }
        for (name, worker) in self.members_with(Role::Worker) {
            let name = WorkerName::from(name.as_str());
            let events: Vec<(EventNumber, Vec<StreamName>)> = assignments
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    new_workers
                        .and_then(|n| n.get(*i))
                        .is_none_or(|n| n.contains(&name))
                })
                .filter_map(|(_, assignment)| {
                    let streams: Vec<StreamName> = assignment
                        .routes
                        .iter()
                        .filter(|(_, route)| {
                            matches!(route, Route::To(workers) if workers.contains(&name))
                        })
                        .map(|(stream, _)| stream.clone())
                        .collect();
                    (!streams.is_empty()).then_some((assignment.event_number, streams))
                })
                .collect();
            if !events.is_empty() {
                messages.push((
                    worker.identity.clone(),
                    FromController::Expect { scan, events },
                ));
            }
        }
        let expect = FromController::ExpectWorkers {
            scan,
            events: assignments
                .iter()
                .map(|a| (a.event_number, a.workers().into_iter().cloned().collect()))
                .collect(),
        };
        self.outbox.extend(messages);
        self.send_to_all(Role::Reducer, &expect);
    }

    /// Messages to send, with the recipients' identities.
    pub fn take_outbox(&mut self) -> Vec<(Vec<u8>, FromController)> {
        std::mem::take(&mut self.outbox)
    }

    /// Sets a parameter (validated against its description, if any); answers the new
    /// parameters hash, as dranspose does.
    pub fn set_parameter(&mut self, name: ParameterName, data: Bytes) -> Result<String, String> {
        let name_is_dump_prefix = name.as_str() == DUMP_PREFIX;
        if let Some(description) = self.descriptions.iter().find(|d| d.name == name) {
            ParameterValue::parse(description.dtype, &data)
                .map_err(|message| format!("parameter {name}: {message}"))?;
        }
        self.parameters.insert(
            name,
            Versioned {
                data,
                version: uuid::Uuid::new_v4(),
            },
        );
        let message = FromController::Parameters {
            values: self.parameter_values(),
        };
        for role in [Role::Ingester, Role::Worker, Role::Reducer] {
            self.send_to_all(role, &message);
        }
        // The ingesters start recording the running scan at once; its mapping goes beside.
        if name_is_dump_prefix
            && let Some(current) = self.current.as_ref().filter(|c| !c.finish_sent)
        {
            self.write_mapping_and_parameters(&current.uuid, current.scan.sequence());
        }
        Ok(self.parameters_hash())
    }

    /// A parameter's bytes: its value, or its default when it is described but unset.
    pub fn parameter(&self, name: &str) -> Option<Bytes> {
        self.parameters
            .get(name)
            .map(|p| p.data.clone())
            .or_else(|| {
                self.descriptions
                    .iter()
                    .find(|d| d.name.as_str() == name)
                    .map(|d| d.default.to_bytes())
            })
    }

    /// The parameter descriptions, sorted by name.
    pub fn describe_parameters(&self) -> &[ParameterDescription] {
        &self.descriptions
    }

    /// sha256 over the sorted parameters' version uuids (dranspose's `parameters_hash`).
    pub fn parameters_hash(&self) -> String {
        let mut hasher = sha2::Sha256::new();
        for versioned in self.parameters.values() {
            hasher.update(versioned.version.as_bytes());
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The current scan's progress (a finished, empty one before any scan).
    pub fn progress(&self) -> Progress {
        self.current.as_ref().map_or(
            Progress {
                last_assigned: 0,
                completed_events: 0,
                total_events: 0,
                finished: true,
            },
            |c| {
                let mut progress = c.scan.progress();
                progress.finished = c.finish_sent;
                progress
            },
        )
    }

    /// The current scan's mapping, as `GET /api/v1/sequence` returns it.
    pub fn sequence(&self) -> Option<&Sequence> {
        self.current.as_ref().map(|c| c.scan.sequence())
    }

    /// `GET /api/v1/config`: the components and the parameters' versions.
    pub fn config(&self) -> serde_json::Value {
        let describe = |role: Role| -> Vec<serde_json::Value> {
            self.members_with(role)
                .map(|(name, m)| {
                    json!({
                        "name": name,
                        "tags": m.tags,
                        "streams": m.streams,
                        "url": m.endpoint,
                        "instance": m.instance,
                    })
                })
                .collect()
        };
        json!({
            "ingesters": describe(Role::Ingester),
            "workers": describe(Role::Worker),
            "reducer": describe(Role::Reducer).into_iter().next(),
            "controller_version": env!("CARGO_PKG_VERSION"),
            "parameters_version": self.parameters.iter().map(|(n, p)| (n.to_string(), p.version.to_string())).collect::<BTreeMap<_, _>>(),
            "parameters_hash": self.parameters_hash(),
        })
    }

    /// `GET /api/v1/status`: the scan, the counters, and every component's own counters.
    pub fn status(&self) -> serde_json::Value {
        let components = |role: Role| -> BTreeMap<String, serde_json::Value> {
            self.members_with(role)
                .map(|(name, m)| (name.clone(), m.status.clone()))
                .collect()
        };
        let progress = self.progress();
        json!({
            "scan": self.current.as_ref().map(|c| c.number),
            "uuid": self.current.as_ref().map(|c| c.uuid.clone()),
            "live": self.current.as_ref().is_some_and(|c| c.live),
            "resumes_live": self.live.is_some(),
            "last_assigned": progress.last_assigned,
            "completed_events": progress.completed_events,
            "total_events": progress.total_events,
            "finished": progress.finished,
            "error": self.current.as_ref().and_then(|c| c.error.clone()),
            "counts": self.counts,
            "ingesters": components(Role::Ingester),
            "workers": components(Role::Worker),
            "reducer": components(Role::Reducer).into_values().next(),
        })
    }

    /// `GET /api/v1/load`: per worker, unfinished and finished events in the scan and the time
    /// it spent processing them (dranspose's shape, with the `scan` interval).
    pub fn load(&self) -> serde_json::Value {
        let Some(current) = self.current.as_ref() else {
            return json!({});
        };
        let unfinished = current.scan.load();
        let elapsed = Instant::now()
            .saturating_duration_since(current.started)
            .as_secs_f64();
        let loads: BTreeMap<String, serde_json::Value> = self
            .members_with(Role::Worker)
            .map(|(name, m)| {
                let worker = WorkerName::from(name.as_str());
                let busy = m.status.get("busy_seconds").cloned().unwrap_or(json!(0.0));
                let last = m.status.get("last_event").cloned().unwrap_or(json!(null));
                (
                    name.clone(),
                    json!({
                        "last_event": last,
                        "unfinished": unfinished.get(&worker).copied().unwrap_or(0),
                        "intervals": {"scan": {
                            "total": elapsed,
                            "active": busy,
                            "events": current.done.get(&worker).copied().unwrap_or(0),
                        }},
                    }),
                )
            })
            .collect();
        json!(loads)
    }

    /// The counters so far.
    pub fn counts(&self) -> EnsembleCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hello(role: Role, name: &str, instance: u64) -> ToController {
        ToController::Hello(Hello {
            role,
            name: name.into(),
            instance,
            tags: if role == Role::Worker {
                vec!["generic".into()]
            } else {
                vec![]
            },
            streams: if role == Role::Ingester {
                vec!["det".into()]
            } else {
                vec![]
            },
            endpoint: Some(format!("tcp://{name}")),
            status: beamflow_protocol::control::ComponentStatus::empty(role),
        })
    }

    fn sequence(events: u64) -> Sequence {
        let slots: Vec<serde_json::Value> =
            (0..events).map(|i| json!([{"constraint": i}])).collect();
        let body = json!({"parts": {"main": {"det": slots}}, "sequence": ["main"]});
        Sequence::from_json(body.to_string().as_bytes(), false).unwrap()
    }

    fn ensemble(t0: Instant) -> Ensemble {
        let mut ensemble = Ensemble::new(Pacing::default(), Vec::new());
        ensemble.receive(b"i", hello(Role::Ingester, "det", 1), t0);
        ensemble.receive(b"r", hello(Role::Reducer, "reducer", 1), t0);
        ensemble.receive(b"w1", hello(Role::Worker, "w1", 1), t0);
        ensemble.receive(b"w2", hello(Role::Worker, "w2", 1), t0);
        ensemble.take_outbox();
        ensemble
    }

    fn leased_to(outbox: &[(Vec<u8>, FromController)], worker: &str) -> Vec<u64> {
        outbox
            .iter()
            .filter_map(|(_, m)| match m {
                FromController::Lease { events, .. } => Some(events),
                _ => None,
            })
            .flatten()
            .filter(|e| {
                e.frames
                    .iter()
                    .any(|f| f.workers.contains(&WorkerName::from(worker)))
            })
            .map(|e| e.event.0)
            .collect()
    }

    #[test]
    fn a_scan_is_refused_with_reasons() {
        let t0 = Instant::now();
        let mut ensemble = Ensemble::new(Pacing::default(), Vec::new());
        assert_eq!(ensemble.start(sequence(2), t0), Err(StartError::NoReducer));
        ensemble.receive(b"r", hello(Role::Reducer, "reducer", 1), t0);
        assert_eq!(
            ensemble.start(sequence(2), t0).unwrap_err().to_string(),
            "streams [\"det\"] not available"
        );
        ensemble.receive(b"i", hello(Role::Ingester, "det", 1), t0);
        assert_eq!(
            ensemble.start(sequence(2), t0).unwrap_err().to_string(),
            "only 0 workers available, but 1 required"
        );
    }

    #[test]
    fn a_scan_leases_every_event_to_ingesters_workers_and_reducer() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        let outbox = ensemble.take_outbox();
        let (mut w1, mut w2) = (leased_to(&outbox, "w1"), leased_to(&outbox, "w2"));
        assert_eq!(w1.len() + w2.len(), 10);
        w1.append(&mut w2);
        w1.sort_unstable();
        assert_eq!(w1, (0..10).collect::<Vec<_>>());
        let scans = outbox
            .iter()
            .filter(|(_, m)| matches!(m, FromController::Scan { .. }))
            .count();
        assert_eq!(scans, 4, "every component hears of the scan");
        ensemble.receive(
            b"r",
            ToController::Reduced {
                scan: 1,
                up_to: EventNumber(10),
            },
            t0,
        );
        ensemble.tick(t0);
        assert!(ensemble.progress().finished);
        let outbox = ensemble.take_outbox();
        assert!(
            outbox
                .iter()
                .any(|(_, m)| matches!(m, FromController::Released { up_to, .. } if up_to.0 == 10))
        );
        assert_eq!(
            outbox
                .iter()
                .filter(|(_, m)| matches!(m, FromController::Finish { scan: 1 }))
                .count(),
            4
        );
    }

    #[test]
    fn a_silent_worker_is_dead_after_two_seconds_and_its_events_go_elsewhere() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        let outbox = ensemble.take_outbox();
        let on_w2 = leased_to(&outbox, "w2");
        assert!(!on_w2.is_empty());
        let later = t0 + DEAD_AFTER - Duration::from_millis(100);
        for (id, role, name) in [
            (&b"w1"[..], Role::Worker, "w1"),
            (b"i", Role::Ingester, "det"),
            (b"r", Role::Reducer, "reducer"),
        ] {
            ensemble.receive(id, hello(role, name, 1), later);
        }
        ensemble.tick(t0 + DEAD_AFTER);
        assert_eq!(ensemble.counts().dead_workers, 1);
        let outbox = ensemble.take_outbox();
        let resent: Vec<u64> = outbox
            .iter()
            .filter_map(|(_, m)| match m {
                FromController::Lease { events, .. } => Some(events),
                _ => None,
            })
            .flatten()
            .filter(|e| e.resend_to == vec![WorkerName::from("w1")])
            .map(|e| e.event.0)
            .collect();
        assert_eq!(resent, on_w2);
    }

    #[test]
    fn a_restarted_worker_gives_up_its_events_at_once() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        let on_w2 = leased_to(&ensemble.take_outbox(), "w2");
        ensemble.receive(b"w2b", hello(Role::Worker, "w2", 2), t0);
        let outbox = ensemble.take_outbox();
        let moved = outbox
            .iter()
            .filter_map(|(_, m)| match m {
                FromController::Lease { events, .. } => Some(events),
                _ => None,
            })
            .flatten()
            .filter(|e| !e.resend_to.is_empty())
            .count();
        assert_eq!(moved, on_w2.len());
        assert!(
            outbox
                .iter()
                .any(|(id, m)| id == b"w2b" && matches!(m, FromController::Scan { .. })),
            "the restarted worker rejoins the running scan"
        );
    }

    #[test]
    fn parameters_are_typed_versioned_and_have_defaults() {
        let mut ensemble = Ensemble::new(
            Pacing::default(),
            vec![ParameterDescription {
                name: "threshold".into(),
                dtype: beamflow_protocol::ParameterType::Int,
                default: ParameterValue::Int(5),
                description: String::new(),
            }],
        );
        assert_eq!(ensemble.parameter("threshold").as_deref(), Some(&b"5"[..]));
        assert_eq!(ensemble.parameter("dump_prefix").as_deref(), Some(&b""[..]));
        assert!(ensemble.parameter("nope").is_none());
        let empty = ensemble.parameters_hash();
        assert!(
            ensemble
                .set_parameter("threshold".into(), Bytes::from("x"))
                .is_err()
        );
        let first = ensemble
            .set_parameter("threshold".into(), Bytes::from("7"))
            .unwrap();
        let second = ensemble
            .set_parameter("threshold".into(), Bytes::from("7"))
            .unwrap();
        assert_ne!(empty, first);
        assert_ne!(first, second, "every set is a new version");
        assert_eq!(ensemble.parameter("threshold").as_deref(), Some(&b"7"[..]));
    }
}
