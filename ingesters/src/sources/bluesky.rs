//! Bluesky documents from bluesky's 0MQ proxy (`bluesky.callbacks.zmq.Proxy`'s out address):
//! every document of a run becomes an event of its own, in the order the RunEngine sent them,
//! so the start, descriptors and stop reach accumulators between the run's events. An event
//! page becomes one event per row.
//!
//! The ingester places each document in its run ([`RunDocument`]): an event names only its
//! descriptor, a datum only its resource, and workers see one event at a time. A subscriber
//! that joins mid-run has missed the start and descriptors, so the documents it cannot place
//! are counted (`late`) and skipped, never guessed: the next run is read whole.
//!
//! PUB/SUB never blocks the RunEngine: a pipeline that falls behind by more than `hwm`
//! documents loses them in libzmq (as bluesky's own `RemoteDispatcher` would); a run's `stop`
//! says how many events each stream had, and the scan view compares.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use beamflow_net::{TransportError, connect, recv_frames_within, socket};
use beamflow_protocol::streams::bluesky::{self, BlueskyError, DocumentName, RunDocument};
use beamflow_protocol::{StreamName, Value};
use serde::Deserialize;
use tracing::{info, warn};

use crate::{Source, SourceError, SourceFrame, SourceKind};

/// Runs open at once at most: a RunEngine runs one at a time (a few with nested runs); the
/// oldest is forgotten past it (its stop was lost).
const MAX_OPEN_RUNS: usize = 64;
/// Descriptors and resources tracked at most, over all open runs.
const MAX_TRACKED: usize = 65_536;

/// `[ingesters.<name>]` with `kind = "bluesky"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueskyConfig {
    /// The proxy's out address (`bluesky-0MQ-proxy --out-address`), or a Publisher bound
    /// directly.
    #[serde(default = "default_upstream")]
    pub upstream: String,
    /// Only documents published with this prefix (`Publisher(..., prefix=b"...")`); default:
    /// every prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The stream name (default: the ingester's name).
    #[serde(default)]
    pub stream: Option<String>,
    /// Documents queued from the proxy at most; beyond it libzmq drops (PUB/SUB).
    #[serde(default = "default_hwm")]
    pub hwm: i32,
}

fn default_upstream() -> String {
    "tcp://127.0.0.1:5578".to_owned()
}

fn default_hwm() -> i32 {
    100_000
}

impl SourceKind for BlueskyConfig {
    const KIND: &str = "bluesky";
    const SUMMARY: &str = "bluesky documents off its 0MQ proxy (JSON or msgpack), one event per \
        document in its run; event pages unpacked; late joiners counted and skipped";
    const BRACKETS_SERIES: bool = false;

    fn build(&self, name: &str, context: &zmq::Context) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(Bluesky::connect(self, name, context)?))
    }

    fn stream_names(&self, name: &str) -> Option<Vec<StreamName>> {
        Some(vec![StreamName::from(
            self.stream.as_deref().unwrap_or(name),
        )])
    }

    fn check(&self) -> Result<(), SourceError> {
        match &self.prefix {
            Some(prefix) if prefix.contains(' ') => Err(SourceError::Table {
                key: "prefix".to_owned(),
                message: "a prefix cannot contain a space (bluesky's Publisher refuses one)"
                    .to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// What the ingester knows of the runs it has seen start.
#[derive(Debug, Default)]
struct Runs {
    /// Open runs by start uid, with the order they started in.
    open: BTreeMap<String, u64>,
    started: u64,
    /// Descriptor uid → (run, stream name).
    descriptors: BTreeMap<String, (String, Option<String>)>,
    /// Resource and stream-resource uid → run.
    resources: BTreeMap<String, String>,
}

impl Runs {
    fn start(&mut self, uid: String) -> Option<String> {
        let forgotten = (self.open.len() >= MAX_OPEN_RUNS)
            .then(|| {
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, order)| **order)
                    .map(|(uid, _)| uid.clone())?;
                self.stop(&oldest);
                Some(oldest)
            })
            .flatten();
        self.started += 1;
        self.open.insert(uid, self.started);
        forgotten
    }

    fn stop(&mut self, run: &str) {
        self.open.remove(run);
        self.descriptors.retain(|_, (owner, _)| owner != run);
        self.resources.retain(|_, owner| owner != run);
    }

    fn tracked(&self) -> usize {
        self.descriptors.len() + self.resources.len()
    }

    /// The run a resource names, or the only open one when it names none (ophyd v1's
    /// resources may lack `run_start`).
    fn run_of_resource(&self, doc: &Value) -> Option<String> {
        match text(doc, "run_start") {
            Some(run) => self.open.contains_key(run).then(|| run.to_owned()),
            None if self.open.len() == 1 => self.open.keys().next().cloned(),
            None => None,
        }
    }
}

/// What places documents in their runs and hands them out as frames, whatever the transport
/// (this 0MQ subscriber, or `kafka_bluesky`).
pub(crate) struct Placer {
    stream: StreamName,
    /// Where the documents come from, for the logs.
    origin: String,
    runs: Runs,
    /// Documents placed, waiting to be handed out (the rows of an event page).
    pending: VecDeque<RunDocument>,
    next_index: u64,
    counts: Counts,
    /// Documents skipped since the last run read whole (logged when one starts).
    late_since_logged: u64,
    logged_pickle: bool,
}

/// What the ingester counted, for its status.
#[derive(Debug, Default, serde::Serialize)]
struct Counts {
    /// Documents forwarded, by name (pages counted as the events they hold).
    forwarded: BTreeMap<&'static str, u64>,
    /// Documents of runs whose start (or descriptor) this subscriber never saw.
    late: u64,
    /// Documents of another prefix.
    other_prefix: u64,
    /// Frames that were no document (pickles among them).
    malformed: u64,
    /// Runs forgotten while open (more than 64 at once, or too many descriptors).
    forgotten_runs: u64,
    /// Documents read while no scan ran: they update the runs, nothing is forwarded.
    while_idle: u64,
}

impl Placer {
    /// Places the documents of `stream`, read from `origin`.
    pub(crate) fn new(stream: StreamName, origin: String) -> Self {
        Self {
            stream,
            origin,
            runs: Runs::default(),
            pending: VecDeque::new(),
            next_index: 0,
            counts: Counts::default(),
            late_since_logged: 0,
            logged_pickle: false,
        }
    }

    /// Counts a payload that is no document, as the error to return.
    pub(crate) fn malformed(&mut self, error: BlueskyError) -> SourceError {
        self.counts.malformed += 1;
        if matches!(error, BlueskyError::Pickle) {
            // Every document of such a RunEngine is a pickle: say it once, loudly.
            if !self.logged_pickle {
                self.logged_pickle = true;
                warn!(origin = %self.origin, "{error}");
            }
        }
        SourceError::Malformed {
            stream: self.stream.clone(),
            message: error.to_string(),
        }
    }

    /// Counts a document of another prefix.
    fn other_prefix(&mut self) {
        self.counts.other_prefix += 1;
    }

    /// The one stream it makes.
    pub(crate) fn streams(&self) -> Vec<StreamName> {
        vec![self.stream.clone()]
    }

    /// Whether documents wait to be handed out.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A scan starts at these frames: documents are numbered from its first frame of the
    /// stream (later for an ingester restarted mid-scan); what was queued belongs to no scan.
    pub(crate) fn start_scan(&mut self, frames: &BTreeMap<StreamName, Range<u64>>) {
        self.next_index = frames.get(&self.stream).map_or(0, |range| range.start);
        self.pending.clear();
    }

    /// No scan runs: the runs were kept up to date, the documents are let go.
    pub(crate) fn drop_pending(&mut self) {
        self.counts.while_idle += self.pending.len() as u64;
        self.pending.clear();
    }

    /// The next placed document as a frame of the scan.
    pub(crate) fn next_frame(&mut self) -> Option<SourceFrame> {
        let document = self.pending.pop_front()?;
        *self
            .counts
            .forwarded
            .entry(document.name.as_str())
            .or_default() += 1;
        let index = self.next_index;
        self.next_index += 1;
        Some(SourceFrame {
            stream: self.stream.clone(),
            index,
            data: document.stream_data(),
            taken_at: None,
        })
    }

    /// The counts and the open runs, with `origin` named as `key`.
    pub(crate) fn status(&self, key: &str) -> serde_json::Value {
        let mut status = serde_json::to_value(&self.counts).unwrap_or_default();
        if let Some(status) = status.as_object_mut() {
            status.insert(key.to_owned(), self.origin.clone().into());
            status.insert(
                "open_runs".to_owned(),
                self.runs.open.keys().cloned().collect::<Vec<_>>().into(),
            );
        }
        status
    }

    /// Counts a document that cannot be placed; the first of a series is logged, and the
    /// series' length when the next run starts.
    fn late(&mut self, name: DocumentName, reference: &str) {
        self.counts.late += 1;
        if self.late_since_logged == 0 {
            info!(origin = %self.origin, document = name.as_str(), reference,
                "Skipping the documents of a run whose start this subscriber did not see (it joined mid-run); the next run is read whole.");
        }
        self.late_since_logged += 1;
    }

    /// Places a document in its run and queues it (an event page as its rows).
    pub(crate) fn place(&mut self, name: DocumentName, doc: Value) {
        let placed = |run: String, stream: Option<String>, doc: Value| RunDocument {
            name,
            run: Some(run),
            stream,
            doc,
        };
        match name {
            DocumentName::Start => {
                let Some(uid) = text(&doc, "uid").map(str::to_owned) else {
                    self.late(name, "a start without uid");
                    return;
                };
                if self.late_since_logged > 0 {
                    info!(origin = %self.origin, skipped = self.late_since_logged, run = %uid,
                        "A run starts: read whole, after skipping documents it could not place.");
                    self.late_since_logged = 0;
                }
                if let Some(forgotten) = self.runs.start(uid.clone()) {
                    self.counts.forgotten_runs += 1;
                    warn!(run = %forgotten, "Forgot a run that never stopped: {MAX_OPEN_RUNS} runs were open.");
                }
                self.pending.push_back(placed(uid, None, doc));
            }
            DocumentName::Descriptor => {
                let (Some(uid), Some(run)) = (text(&doc, "uid"), text(&doc, "run_start")) else {
                    self.late(name, "a descriptor without uid or run_start");
                    return;
                };
                if !self.runs.open.contains_key(run) || self.runs.tracked() >= MAX_TRACKED {
                    self.late(name, run);
                    return;
                }
                let (uid, run) = (uid.to_owned(), run.to_owned());
                let stream = text(&doc, "name").map(str::to_owned);
                self.runs
                    .descriptors
                    .insert(uid, (run.clone(), stream.clone()));
                self.pending.push_back(placed(run, stream, doc));
            }
            DocumentName::Event | DocumentName::EventPage | DocumentName::StreamDatum => {
                let descriptor = text(&doc, "descriptor").unwrap_or_default();
                let Some((run, stream)) = self.runs.descriptors.get(descriptor).cloned() else {
                    self.late(name, descriptor);
                    return;
                };
                if name == DocumentName::EventPage {
                    match unpack_page(&doc) {
                        Ok(events) => self.pending.extend(events.into_iter().map(|event| {
                            RunDocument {
                                name: DocumentName::Event,
                                run: Some(run.clone()),
                                stream: stream.clone(),
                                doc: event,
                            }
                        })),
                        Err(message) => {
                            self.counts.malformed += 1;
                            warn!(origin = %self.origin, run, "Skipped an event page: {message}");
                        }
                    }
                } else {
                    self.pending.push_back(placed(run, stream, doc));
                }
            }
            DocumentName::Resource | DocumentName::StreamResource => {
                let (Some(uid), Some(run)) = (text(&doc, "uid"), self.runs.run_of_resource(&doc))
                else {
                    self.late(name, text(&doc, "run_start").unwrap_or("no run_start"));
                    return;
                };
                if self.runs.tracked() >= MAX_TRACKED {
                    self.late(name, &run);
                    return;
                }
                self.runs.resources.insert(uid.to_owned(), run.clone());
                self.pending.push_back(placed(run, None, doc));
            }
            DocumentName::Datum | DocumentName::DatumPage => {
                let resource = text(&doc, "resource").unwrap_or_default();
                let Some(run) = self.runs.resources.get(resource).cloned() else {
                    self.late(name, resource);
                    return;
                };
                self.pending.push_back(placed(run, None, doc));
            }
            DocumentName::Stop => {
                let Some(run) = text(&doc, "run_start").map(str::to_owned) else {
                    self.late(name, "a stop without run_start");
                    return;
                };
                if !self.runs.open.contains_key(&run) {
                    self.late(name, &run);
                    return;
                }
                self.runs.stop(&run);
                self.pending.push_back(placed(run, None, doc));
            }
            DocumentName::Bmm => self.pending.push_back(RunDocument {
                name,
                run: None,
                stream: None,
                doc,
            }),
        }
    }
}

/// The 0MQ source.
pub struct Bluesky {
    socket: zmq::Socket,
    upstream: String,
    prefix: Option<String>,
    placer: Placer,
}

impl Bluesky {
    /// Subscribes to the proxy.
    pub fn connect(
        config: &BlueskyConfig,
        name: &str,
        context: &zmq::Context,
    ) -> Result<Self, SourceError> {
        let sub = socket(context, zmq::SUB, config.hwm, 0)?;
        // Subscribing to the prefix would also pass `prefixed...`: the whole first word is
        // compared after parsing instead.
        sub.set_subscribe(b"")
            .map_err(|error| TransportError::Zmq {
                operation: "subscribe",
                endpoint: config.upstream.clone(),
                error,
            })?;
        connect(&sub, &config.upstream)?;
        info!(upstream = %config.upstream, "Subscribed to bluesky documents.");
        let stream = config.stream.as_deref().unwrap_or(name).into();
        Ok(Self {
            socket: sub,
            upstream: config.upstream.clone(),
            prefix: config.prefix.clone(),
            placer: Placer::new(stream, config.upstream.clone()),
        })
    }

    /// One frame, waiting at most `timeout`.
    fn receive(&self, timeout: Duration) -> Result<Option<bytes::Bytes>, SourceError> {
        let Some(frames) = recv_frames_within(&self.socket, &self.upstream, timeout)? else {
            return Ok(None);
        };
        // bluesky sends one frame per document; a multipart message is no document.
        match <[bytes::Bytes; 1]>::try_from(frames) {
            Ok([frame]) => Ok(Some(frame)),
            Err(frames) => Err(SourceError::Malformed {
                stream: self.placer.stream.clone(),
                message: format!(
                    "a message of {} frames; bluesky sends one per document",
                    frames.len()
                ),
            }),
        }
    }

    /// Reads one frame and queues what it places; `Ok(false)` if none came.
    fn read(&mut self, timeout: Duration) -> Result<bool, SourceError> {
        let Some(frame) = self.receive(timeout)? else {
            return Ok(false);
        };
        let document = bluesky::parse(&frame).map_err(|error| self.placer.malformed(error))?;
        if self
            .prefix
            .as_ref()
            .is_some_and(|prefix| *prefix != document.prefix)
        {
            self.placer.other_prefix();
            return Ok(true);
        }
        self.placer.place(document.name, document.body);
        Ok(true)
    }
}

/// A document's text field.
fn text<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    match doc.pointer(key) {
        Some(Value::Text(text)) => Some(text),
        _ => None,
    }
}

/// An event page's rows as events (what event-model's `unpack_event_page` gives).
fn unpack_page(page: &Value) -> Result<Vec<Value>, String> {
    let column = |key: &str| match page.pointer(key) {
        Some(Value::Array(items)) => Ok(items.as_slice()),
        _ => Err(format!("{key} is not a list")),
    };
    let uids = column("uid")?;
    let rows = uids.len();
    let seq_nums = column("seq_num")?;
    let times = column("time")?;
    let fields = |key: &str| -> Result<Vec<(&String, &[Value])>, String> {
        match page.pointer(key) {
            None => Ok(Vec::new()),
            Some(Value::Map(fields)) => fields
                .iter()
                .map(|(field, values)| match values {
                    Value::Array(values) if values.len() == rows => Ok((field, values.as_slice())),
                    _ => Err(format!("{key}.{field} does not have one value per row")),
                })
                .collect(),
            Some(_) => Err(format!("{key} is not a map")),
        }
    };
    let (data, timestamps, filled) = (fields("data")?, fields("timestamps")?, fields("filled")?);
    if seq_nums.len() != rows || times.len() != rows {
        return Err(format!(
            "{rows} uids, {} seq_nums, {} times",
            seq_nums.len(),
            times.len()
        ));
    }
    let descriptor = page.pointer("descriptor").cloned().unwrap_or_default();
    let row = |columns: &[(&String, &[Value])], i: usize| {
        Value::Map(
            columns
                .iter()
                .map(|(field, values)| ((*field).clone(), values[i].clone()))
                .collect(),
        )
    };
    Ok((0..rows)
        .map(|i| {
            Value::Map(BTreeMap::from([
                ("uid".to_owned(), uids[i].clone()),
                ("descriptor".to_owned(), descriptor.clone()),
                ("seq_num".to_owned(), seq_nums[i].clone()),
                ("time".to_owned(), times[i].clone()),
                ("data".to_owned(), row(&data, i)),
                ("timestamps".to_owned(), row(&timestamps, i)),
                ("filled".to_owned(), row(&filled, i)),
            ]))
        })
        .collect())
}

impl Source for Bluesky {
    fn streams(&self) -> Vec<StreamName> {
        self.placer.streams()
    }

    fn start_scan(&mut self, frames: &BTreeMap<StreamName, Range<u64>>) -> Result<(), SourceError> {
        self.placer.start_scan(frames);
        Ok(())
    }

    fn idle(&mut self) {
        // Runs go on between beamflow's scans: keep up with their starts and descriptors, so
        // the next scan places their events, and let the documents go.
        while let Ok(true) = self.read(Duration::ZERO) {
            self.placer.drop_pending();
        }
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<SourceFrame>, SourceError> {
        let deadline = Instant::now() + timeout;
        while !self.placer.has_pending() {
            if !self.read(deadline.saturating_duration_since(Instant::now()))? {
                return Ok(None);
            }
        }
        Ok(self.placer.next_frame())
    }

    fn status(&self) -> serde_json::Value {
        self.placer.status("upstream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn runs_of(documents: &[RunDocument]) -> BTreeSet<Option<String>> {
        documents.iter().map(|d| d.run.clone()).collect()
    }

    fn source() -> Placer {
        Placer::new("bluesky".into(), "test".to_owned())
    }

    fn json(text: &str) -> Value {
        let tree: serde_json::Value = serde_json::from_str(text).unwrap();
        Value::from_serialize(&tree).unwrap()
    }

    fn feed(source: &mut Placer, documents: &[(&str, &str)]) -> Vec<RunDocument> {
        for (name, doc) in documents {
            source.place(DocumentName::parse(name).unwrap(), json(doc));
        }
        source.pending.drain(..).collect()
    }

    #[test]
    fn documents_are_placed_in_their_run_and_pages_unpacked() {
        let mut source = source();
        let placed = feed(
            &mut source,
            &[
                ("start", r#"{"uid": "r1", "time": 1}"#),
                (
                    "descriptor",
                    r#"{"uid": "d1", "run_start": "r1", "name": "primary", "data_keys": {}}"#,
                ),
                (
                    "event_page",
                    r#"{"descriptor": "d1", "uid": ["e1", "e2"], "seq_num": [1, 2], "time": [5, 6],
                        "data": {"det": [0.5, 0.25]}, "timestamps": {"det": [5, 6]}, "filled": {}}"#,
                ),
                ("resource", r#"{"uid": "res", "run_start": "r1", "spec": "NPY"}"#),
                ("datum", r#"{"datum_id": "res/0", "resource": "res"}"#),
                ("stop", r#"{"run_start": "r1", "exit_status": "success"}"#),
                ("event", r#"{"descriptor": "d1", "seq_num": 3, "data": {}}"#),
            ],
        );
        let names: Vec<&str> = placed.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["start", "descriptor", "event", "event", "resource", "datum", "stop"]
        );
        assert_eq!(runs_of(&placed), BTreeSet::from([Some("r1".to_owned())]));
        assert_eq!(placed[3].stream.as_deref(), Some("primary"));
        assert_eq!(placed[3].doc.pointer("data/det"), Some(&Value::Float(0.25)));
        assert_eq!(placed[3].doc.pointer("seq_num"), Some(&Value::Int(2)));
        assert_eq!(placed[3].doc.pointer("uid"), Some(&Value::Text("e2".into())));
        // The event after its run's stop cannot be placed.
        assert_eq!(source.counts.late, 1);
        assert!(source.runs.descriptors.is_empty() && source.runs.open.is_empty());
    }

    #[test]
    fn a_late_joiner_skips_the_run_it_joined_and_reads_the_next_whole() {
        let mut source = source();
        let placed = feed(
            &mut source,
            &[
                ("event", r#"{"descriptor": "d0", "seq_num": 7, "data": {}}"#),
                ("stop", r#"{"run_start": "r0", "exit_status": "success"}"#),
                ("start", r#"{"uid": "r1", "time": 1}"#),
                ("descriptor", r#"{"uid": "d1", "run_start": "r1", "name": "primary"}"#),
                ("event", r#"{"descriptor": "d1", "seq_num": 1, "data": {}}"#),
            ],
        );
        assert_eq!(source.counts.late, 2);
        assert_eq!(placed.len(), 3);
        assert_eq!(runs_of(&placed), BTreeSet::from([Some("r1".to_owned())]));
    }

    #[test]
    fn a_page_with_ragged_columns_is_refused_whole() {
        let page = json(
            r#"{"descriptor": "d", "uid": ["a", "b"], "seq_num": [1, 2], "time": [1, 2],
                "data": {"det": [1.0]}, "timestamps": {}}"#,
        );
        let error = unpack_page(&page).unwrap_err();
        assert!(error.contains("data.det"), "{error}");
    }

    #[test]
    fn a_prefix_with_a_space_is_refused_at_its_key() {
        let config: BlueskyConfig = toml::from_str("prefix = \"a b\"").unwrap();
        let error = config.check().unwrap_err().to_string();
        assert!(error.starts_with("prefix:"), "{error}");
    }
}
