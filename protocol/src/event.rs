//! Events as workers see them and results as the reducer sees them.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use jiff::Timestamp;

use crate::ids::{AnalysisName, EventNumber, StreamName, StreamType, WorkerName};
use crate::value::Value;

/// One stream's part of an event: the frames exactly as the source sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamData {
    /// Parser tag, e.g. `STINS`; tells analyses how to read `frames`.
    pub typ: StreamType,
    /// The unmodified upstream frames (a STINS image is a JSON part plus its buffer).
    pub frames: Vec<Bytes>,
}

impl StreamData {
    /// Total payload bytes of all frames.
    pub fn byte_len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum()
    }
}

/// Everything that belongs to one event number: the merge of every ingester's part.
///
/// This is also the unit of a dump record and of the ingester→worker message, which is why it
/// carries `created_at` (dranspose's `InternalWorkerMessage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// The event's number, the key by which its parts are assembled.
    pub event_number: EventNumber,
    /// Frames per stream; a stream with no frame in this event is absent.
    pub streams: BTreeMap<StreamName, StreamData>,
    /// When the ingester formed the event; older dumps do not have it.
    pub created_at: Option<Timestamp>,
}

impl EventData {
    /// An event with no streams yet.
    pub fn new(event_number: EventNumber) -> Self {
        Self {
            event_number,
            streams: BTreeMap::new(),
            created_at: None,
        }
    }

    /// Total payload bytes of all streams.
    pub fn byte_len(&self) -> usize {
        self.streams.values().map(StreamData::byte_len).sum()
    }
}

/// One analysis' output for one event, on its way to the reducer.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultData {
    /// The event the result belongs to; the reducer applies results in this order.
    pub event_number: EventNumber,
    /// Which analysis produced it (with the event number, the key for exactly-once).
    pub analysis: AnalysisName,
    /// Which worker produced it.
    pub worker: WorkerName,
    /// The event's `created_at`, carried along so accumulators can time stamp histories with
    /// acquisition time rather than arrival time.
    pub created_at: Option<Timestamp>,
    /// The analysis' output as a self-describing tree; shared, so accumulators keep it without
    /// copying.
    pub payload: Arc<Value>,
}

/// One worker's outcome for one event: every result its analyses produced (maybe none). The
/// reducer counts an event complete when every worker it went to has reported.
#[derive(Debug, Clone, PartialEq)]
pub struct EventReport {
    /// The event.
    pub event_number: EventNumber,
    /// The worker that processed it.
    pub worker: WorkerName,
    /// Its results, one per analysis that had something to say.
    pub results: Vec<ResultData>,
    /// Streams the event should have had but that did not arrive in time: the event was
    /// processed incomplete (flagged, never filled with another event's frames).
    pub missing: Vec<StreamName>,
}
