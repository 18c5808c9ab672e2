//! Events as workers see them and results as the reducer sees them.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use jiff::Timestamp;

use crate::array::{DType, NdArray};
use crate::ids::{AnalysisName, EventNumber, StreamName, StreamType, WorkerName};
use crate::streams::pv::{self, PvError, PvFrame};
use crate::streams::stins::{self, StinsError, StinsMessage};
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

/// Readers: what an analysis asks of an event, by stream name. Each answers `Ok(None)` when the
/// event does not carry the stream (streams arrive at their own rates), and an error when it
/// does but the frames are not what the reader reads.
///
/// ```
/// use beamflow_protocol::{DType, EventData, EventNumber, NdArray};
///
/// let image = NdArray::new(vec![1, 2], DType::Uint16, vec![1, 0, 2, 0].into()).unwrap();
/// let event = EventData::new(EventNumber(7))
///     .with_image("det", &image)
///     .with_scalar("qe04", -1.5);
/// assert_eq!(event.image("det").unwrap(), Some(image));
/// assert_eq!(event.scalar("qe04").unwrap(), Some(-1.5));
/// assert_eq!(event.scalar("absent").unwrap(), None);
/// ```
impl EventData {
    /// The frames of `stream`, as the source sent them.
    pub fn stream(&self, stream: &str) -> Option<&StreamData> {
        self.streams.get(stream)
    }

    /// The image `stream` carries: a STINS image or a PV's value (an areaDetector image, a
    /// waveform). `None` also for STINS header and end messages and streams of other types,
    /// which carry no image.
    pub fn image(&self, stream: &str) -> Result<Option<NdArray>, ReadError> {
        let Some(data) = self.stream(stream) else {
            return Ok(None);
        };
        match data.typ.as_str() {
            stins::TYP => match stins::parse(data).map_err(|error| ReadError::Stins {
                stream: stream.into(),
                error,
            })? {
                StinsMessage::Image { data, .. } => Ok(Some(data)),
                _ => Ok(None),
            },
            pv::TYP => Ok(self.pv(stream)?.map(|frame| frame.value)),
            _ => Ok(None),
        }
    }

    /// The PV value `stream` carries, with its alarm and time stamp.
    pub fn pv(&self, stream: &str) -> Result<Option<PvFrame>, ReadError> {
        let Some(data) = self.stream(stream) else {
            return Ok(None);
        };
        if data.typ.as_str() != pv::TYP {
            return Err(ReadError::NotPv {
                stream: stream.into(),
                typ: data.typ.clone(),
            });
        }
        PvFrame::parse(&data.frames)
            .map(Some)
            .map_err(|error| ReadError::Pv {
                stream: stream.into(),
                error,
            })
    }

    /// The first element of the PV value `stream` carries, as a float: a quad readback, a
    /// model input.
    pub fn scalar(&self, stream: &str) -> Result<Option<f64>, ReadError> {
        let Some(frame) = self.pv(stream)? else {
            return Ok(None);
        };
        match frame.value.to_f64().first() {
            Some(&value) => Ok(Some(value)),
            None => Err(ReadError::Empty {
                stream: stream.into(),
            }),
        }
    }

    /// With `stream` carrying `image` as a STINS image message (frame and message number are
    /// the event's), for hand-built events in tests.
    #[must_use]
    pub fn with_image(mut self, stream: &str, image: &NdArray) -> Self {
        let n = self.event_number.0;
        let data = StreamData {
            typ: stins::TYP.into(),
            frames: stins::image_frames(n, n, image, false),
        };
        self.streams.insert(stream.into(), data);
        self
    }

    /// With `stream` carrying `value` as a scalar `float64` PV of that name, without alarm,
    /// time stamped at the EPICS epoch; for hand-built events in tests.
    ///
    /// # Panics
    ///
    /// Never: eight bytes are one `float64`.
    #[must_use]
    pub fn with_scalar(mut self, stream: &str, value: f64) -> Self {
        let bytes = Bytes::copy_from_slice(&value.to_le_bytes());
        let frame = PvFrame {
            pv: stream.to_owned(),
            status: 0,
            severity: 0,
            secs: 0,
            nanos: 0,
            // A scalar's shape is `[]`: one element, which the bytes are.
            value: NdArray::new(Vec::new(), DType::Float64, bytes)
                .unwrap_or_else(|_| unreachable!("8 bytes are one float64")),
        };
        self.streams.insert(stream.into(), frame.stream());
        self
    }
}

/// Why a stream of an event could not be read as asked.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Its frames are not valid STINS.
    #[error("stream {stream}: {error}")]
    Stins {
        /// The stream.
        stream: StreamName,
        /// What the parser found.
        #[source]
        error: StinsError,
    },
    /// Its frames are not a valid PV value.
    #[error("stream {stream}: {error}")]
    Pv {
        /// The stream.
        stream: StreamName,
        /// What the parser found.
        #[source]
        error: PvError,
    },
    /// A PV was asked for and the stream is of another type.
    #[error("stream {stream}: a {typ} stream, not a PV")]
    NotPv {
        /// The stream.
        stream: StreamName,
        /// Its type.
        typ: StreamType,
    },
    /// A scalar was asked for and the value has no elements.
    #[error("stream {stream}: no elements")]
    Empty {
        /// The stream.
        stream: StreamName,
    },
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
