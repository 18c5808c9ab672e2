//! The control plane: what components and the controller tell each other over their
//! DEALER → ROUTER sockets, as CBOR. Frames never travel here, only numbers and names, so these
//! messages stay small: a lease of a thousand events is a few tens of kilobytes.
//!
//! Every message that belongs to a scan carries the scan's number, so anything left over from an
//! earlier scan is recognised and dropped instead of being mistaken for the same event number of
//! the next one.

pub use minicbor::bytes::ByteVec;
use minicbor::{Decode, Encode};
use serde::Serialize;

use crate::error::CborError;
use crate::ids::{EventNumber, ParameterName, StreamName, WorkerName, WorkerTag};
use crate::value::Value;

/// The part a component plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize)]
#[cbor(index_only)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads a source and sends frames to workers.
    #[n(0)]
    Ingester,
    /// Assembles events and runs analyses.
    #[n(1)]
    Worker,
    /// Applies results in order and serves the state.
    #[n(2)]
    Reducer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Ingester => "ingester",
            Role::Worker => "worker",
            Role::Reducer => "reducer",
        })
    }
}

/// A component introducing itself; sent again every [`HEARTBEAT_MS`] as its heartbeat.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Hello {
    /// Its role.
    #[n(0)]
    pub role: Role,
    /// Its name (unique per role).
    #[n(1)]
    pub name: String,
    /// Random per process start: a restarted component is recognised at once, even when it
    /// comes back before the old one would have been declared dead.
    #[n(2)]
    pub instance: u64,
    /// A worker's tags.
    #[n(3)]
    pub tags: Vec<WorkerTag>,
    /// An ingester's streams.
    #[n(4)]
    pub streams: Vec<StreamName>,
    /// Where a worker receives event parts, or the reducer receives reports.
    #[n(5)]
    pub endpoint: Option<String>,
    /// The component's counters, for the controller's `/api/v1/status`.
    #[n(6)]
    pub status: ComponentStatus,
}

/// A component's counters as its hello carries them. Serialized, each is the JSON object the
/// controller's `/api/v1/status` shows for that component, so the variant adds no level.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize)]
#[serde(untagged)]
pub enum ComponentStatus {
    /// An ingester's.
    #[n(0)]
    Ingester(#[n(0)] IngesterStatus),
    /// A worker's.
    #[n(1)]
    Worker(#[n(0)] WorkerStatus),
    /// The reducer's.
    #[n(2)]
    Reducer(#[n(0)] ReducerStatus),
}

impl ComponentStatus {
    /// What a component of `role` says before it has counted anything.
    pub fn empty(role: Role) -> Self {
        match role {
            Role::Ingester => Self::Ingester(IngesterStatus::default()),
            Role::Worker => Self::Worker(WorkerStatus::default()),
            Role::Reducer => Self::Reducer(ReducerStatus::default()),
        }
    }
}

/// An ingester's status.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode, Serialize)]
pub struct IngesterStatus {
    /// The scan it is in (0 before the first).
    #[n(0)]
    pub scan: u64,
    /// Its counters for the scan.
    #[n(1)]
    pub counts: IngesterCounts,
    /// Events whose frames it keeps for re-sending.
    #[n(2)]
    pub retained_events: usize,
    /// The bytes of those frames.
    #[n(3)]
    pub retained_bytes: usize,
    /// The source's own state (connections, per-stream counters), as each kind of source
    /// reports it.
    #[n(4)]
    #[cbor(with = "value_cbor")]
    pub source: Value,
    /// Frames from the source that did not parse.
    #[n(5)]
    pub malformed_frames: u64,
    /// The dump file being written.
    #[n(6)]
    pub recording: Option<String>,
    /// The last dump file closed.
    #[n(7)]
    pub last_recording: Option<String>,
    /// Dump files written so far.
    #[n(8)]
    pub recorded_files: u64,
    /// Per stream, the index of the next frame it will place in the scan: where a restarted
    /// successor takes up the stream.
    #[n(9)]
    pub next_frames: Vec<(StreamName, u64)>,
    /// Recordings refused: the `dump_prefix` named a place outside the roots.
    #[n(10)]
    #[cbor(default)]
    pub refused_recordings: u64,
}

/// Counters of an ingester's scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct IngesterCounts {
    /// Frames placed in events.
    #[n(0)]
    pub frames: u64,
    /// Parts sent to workers (a broadcast frame counts once per worker).
    #[n(1)]
    pub parts_sent: u64,
    /// Parts sent again after a worker died.
    #[n(2)]
    pub parts_resent: u64,
    /// Frames the source's numbering skipped (lost upstream); their events lack the stream.
    #[n(3)]
    pub gap_frames: u64,
    /// Gaps, each one or more frames.
    #[n(4)]
    pub gaps: u64,
    /// Frames numbered before one already placed, dropped.
    #[n(5)]
    pub stale_frames: u64,
    /// Frames read and dropped as the mapping says (`[]`).
    #[n(6)]
    pub discarded_frames: u64,
    /// Frames of streams the scan's mapping does not name, dropped.
    #[n(7)]
    pub unmapped_frames: u64,
    /// Frames numbered past the scan's end, dropped.
    #[n(8)]
    pub frames_beyond_scan: u64,
    /// Frames whose event the reducer had already completed without them (this ingester fell
    /// behind the others by more than the workers' event timeout), dropped.
    #[n(9)]
    pub late_frames: u64,
    /// Frames numbered implausibly far past the last one placed (a corrupt counter), rejected.
    #[n(10)]
    pub implausible_frames: u64,
    /// Frames leased to this ingester's predecessor (it restarted mid-scan), which no source can
    /// send again: their events lack the stream wherever the predecessor had not sent them.
    #[n(11)]
    pub predecessor_frames: u64,
}

/// A worker's status.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode, Serialize)]
pub struct WorkerStatus {
    /// The scan it is in (0 before the first).
    #[n(0)]
    pub scan: u64,
    /// Its counters since it started.
    #[n(1)]
    pub counts: WorkerCounts,
    /// Time spent in analyses, in seconds (the autoscaler's load).
    #[n(2)]
    pub busy_seconds: f64,
    /// The last event processed.
    #[n(3)]
    pub last_event: Option<u64>,
    /// Parts of a scan already over, dropped.
    #[n(4)]
    pub stale_parts: u64,
    /// Parts that did not decode.
    #[n(5)]
    pub malformed_parts: u64,
    /// Peers refused at the handshake: without the pipeline's keys, nothing they send arrives.
    #[n(6)]
    pub refused_peers: u64,
}

/// A worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct WorkerCounts {
    /// Events processed.
    #[n(0)]
    pub processed: u64,
    /// Of those, processed with streams missing.
    #[n(1)]
    pub incomplete: u64,
    /// Parts that came after their event was processed, or twice.
    #[n(2)]
    pub late_or_duplicate: u64,
    /// Parts whose lease never came.
    #[n(3)]
    pub orphaned: u64,
    /// Analyses that failed on an event.
    #[n(4)]
    pub analysis_errors: u64,
    /// The last event processed.
    #[n(5)]
    pub last_event: Option<u64>,
    /// Time spent in analyses, in microseconds.
    #[n(6)]
    pub busy_micros: u64,
}

/// The reducer's status.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode, Serialize)]
pub struct ReducerStatus {
    /// The scan it reduces, once one started.
    #[n(0)]
    pub scan: Option<u64>,
    /// Its counters for that scan.
    #[n(1)]
    pub counts: Option<LiveCounts>,
    /// Reports of a scan already over, dropped.
    #[n(2)]
    pub stale_reports: u64,
    /// Reports that did not decode.
    #[n(3)]
    pub malformed_reports: u64,
    /// Events of the scan restored from its checkpoint when this reducer took it over.
    #[n(4)]
    pub restored_events: u64,
    /// The checkpoint file of the scan, if the reducer keeps one.
    #[n(5)]
    pub checkpoint: Option<String>,
    /// Peers refused at the handshake: without the pipeline's keys, nothing they send arrives.
    #[n(6)]
    pub refused_peers: u64,
}

/// The reducer's counters of a scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct LiveCounts {
    /// Events applied in order, and duplicates dropped.
    #[n(0)]
    pub order: OrderCounts,
    /// Events some worker processed with streams missing.
    #[n(1)]
    pub incomplete_events: u64,
    /// Reports from a worker its event had been taken away from (kept, in case it is given back).
    #[n(2)]
    pub unexpected_reports: u64,
}

/// The reorder buffer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct OrderCounts {
    /// Events released in order.
    #[n(0)]
    pub released: u64,
    /// Results dropped because an equal (event, analysis) result was already kept or applied.
    #[n(1)]
    pub duplicates: u64,
}

/// A [`Value`] inside a derived message: it has its own CBOR coding, not minicbor's traits.
mod value_cbor {
    use minicbor::encode::{Error, Write};
    use minicbor::{Decoder, Encoder};

    use crate::value::Value;

    pub(super) fn encode<C, W: Write>(
        value: &Value,
        encoder: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), Error<W::Error>> {
        value.encode(encoder)
    }

    pub(super) fn decode<C>(
        decoder: &mut Decoder<'_>,
        _: &mut C,
    ) -> Result<Value, minicbor::decode::Error> {
        Value::decode(decoder).map_err(|error| minicbor::decode::Error::message(error.message))
    }
}

/// How often components say hello.
pub const HEARTBEAT_MS: u64 = 500;

/// Component → controller.
// A hello goes out twice a second per component: its size is no cost worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum ToController {
    /// Introduction and heartbeat.
    #[n(0)]
    Hello(#[n(0)] Hello),
    /// A worker finished this many events of the scan (its credit comes back).
    #[n(1)]
    Done {
        /// The scan.
        #[n(0)]
        scan: u64,
        /// Events finished since the last `Done`.
        #[n(1)]
        events: u64,
    },
    /// The reducer has applied every event of the scan below `up_to`.
    #[n(2)]
    Reduced {
        /// The scan.
        #[n(0)]
        scan: u64,
        /// The next event it will apply.
        #[n(1)]
        up_to: EventNumber,
    },
    /// The reducer's answer to every `Scan`: the next event it will apply. A reducer that had
    /// the scan already says where it is; a restarted one says where its checkpoint ends (0
    /// without one). The controller rewinds the scan to there.
    #[n(3)]
    Resumed {
        /// The scan.
        #[n(0)]
        scan: u64,
        /// The next event it will apply.
        #[n(1)]
        at: EventNumber,
    },
}

/// One stream's frame of a leased event, as an ingester needs it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LeasedFrame {
    /// The stream.
    #[n(0)]
    pub stream: StreamName,
    /// The frame's index within the stream in this scan (0-based, by the source's own counter).
    #[n(1)]
    pub frame: u64,
    /// The workers that get it; empty: read and dropped (`[]` in the mapping).
    #[n(2)]
    pub workers: Vec<WorkerName>,
}

/// An event as leased to ingesters.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LeasedEvent {
    /// The event.
    #[n(0)]
    pub event: EventNumber,
    /// Its frames.
    #[n(1)]
    pub frames: Vec<LeasedFrame>,
    /// After a worker died: the workers new to this event. An ingester that has already sent
    /// the event re-sends its retained frames to these; one that has not just uses the new routes.
    #[n(2)]
    pub resend_to: Vec<WorkerName>,
}

/// The largest mapping a [`FromController::Scan`] carries to the reducer, in bytes of JSON.
pub const MAPPING_IN_SCAN: usize = 1 << 20;

/// Controller → component.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum FromController {
    /// A scan starts (the previous one, if any, is over).
    #[n(0)]
    Scan {
        /// Its number, increasing.
        #[n(0)]
        scan: u64,
        /// Its id, as `POST /api/v1/sequence` answered (names dump files, as dranspose's).
        #[n(1)]
        uuid: String,
        /// For ingesters: each stream's frame count in the scan.
        #[n(2)]
        frames: Vec<(StreamName, u64)>,
        /// For workers: where the reducer takes reports.
        #[n(3)]
        reducer: Option<String>,
        /// Every parameter's current value (dranspose's bytes form).
        #[n(4)]
        parameters: Vec<(ParameterName, ByteVec)>,
        /// For an ingester that restarted mid-scan: per stream, the frame index its source's
        /// first frame takes. Leased frames below it were its predecessor's and cannot be sent
        /// again: they are gaps. Empty when the scan is new to the ingester.
        #[n(5)]
        first_frames: Vec<(StreamName, u64)>,
        /// For the reducer: the scan's mapping sequence as it was asked for (JSON, the
        /// controller's record of it), which its NeXus files keep; `None` above
        /// [`MAPPING_IN_SCAN`] bytes (the live scan's million events).
        #[n(6)]
        mapping: Option<String>,
    },
    /// For ingesters: where each live worker takes event parts.
    #[n(1)]
    Workers {
        /// Worker name → endpoint.
        #[n(0)]
        endpoints: Vec<(WorkerName, String)>,
    },
    /// For ingesters: events to send, in order.
    #[n(2)]
    Lease {
        /// The scan.
        #[n(0)]
        scan: u64,
        /// The events.
        #[n(1)]
        events: Vec<LeasedEvent>,
    },
    /// For a worker: the streams it will get of each event.
    #[n(3)]
    Expect {
        /// The scan.
        #[n(0)]
        scan: u64,
        /// Event → its streams for this worker.
        #[n(1)]
        events: Vec<(EventNumber, Vec<StreamName>)>,
    },
    /// For the reducer: the workers each event went to (again, after a re-assignment).
    #[n(4)]
    ExpectWorkers {
        /// The scan.
        #[n(0)]
        scan: u64,
        /// Event → its workers.
        #[n(1)]
        events: Vec<(EventNumber, Vec<WorkerName>)>,
    },
    /// For ingesters: the reducer has every event below `up_to`; drop retained frames.
    #[n(5)]
    Released {
        /// The scan.
        #[n(0)]
        scan: u64,
        /// Events below this are done.
        #[n(1)]
        up_to: EventNumber,
    },
    /// New parameter values, during a scan or between scans.
    #[n(6)]
    Parameters {
        /// Every parameter's current value.
        #[n(0)]
        values: Vec<(ParameterName, ByteVec)>,
    },
    /// The scan is over (finished or stopped): ingesters close their dumps, analyses and
    /// accumulators finish.
    #[n(7)]
    Finish {
        /// The scan.
        #[n(0)]
        scan: u64,
    },
    /// The answer to every hello: a component that hears nothing from the controller for
    /// several heartbeats knows it cannot reach it (a component between scans hears nothing else).
    #[n(8)]
    Heard,
    /// The scan goes on from event `from` (the reducer restarted, or the controller did):
    /// everything downstream of `from` is recomputed from the ingesters' retained frames.
    /// Workers forget the events from `from` on and send reports to `reducer`; ingesters forget
    /// the routes of those events (keeping the frames) and wait for their leases again; the
    /// reducer drops what it buffered of them.
    #[n(9)]
    Rewind {
        /// The scan.
        #[n(0)]
        scan: u64,
        /// The first event recomputed.
        #[n(1)]
        from: EventNumber,
        /// Where the reducer takes reports now.
        #[n(2)]
        reducer: Option<String>,
    },
}

/// Encodes a control message.
pub fn encode<T: Encode<()>>(message: &T) -> Vec<u8> {
    // Writing into a Vec cannot fail.
    minicbor::to_vec(message).unwrap_or_default()
}

/// Decodes a control message; the error says what was wrong and where.
pub fn decode<'b, T: Decode<'b, ()>>(bytes: &'b [u8]) -> Result<T, CborError> {
    minicbor::decode(bytes).map_err(|error| {
        CborError::new(
            error.position().unwrap_or(0),
            format!("control message: {error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        let hello = ToController::Hello(Hello {
            role: Role::Worker,
            name: "w1".into(),
            instance: 7,
            tags: vec!["generic".into()],
            streams: vec![],
            endpoint: Some("tcp://127.0.0.1:5000".into()),
            status: ComponentStatus::Worker(WorkerStatus {
                scan: 3,
                busy_seconds: 0.25,
                last_event: Some(9),
                ..WorkerStatus::default()
            }),
        });
        assert_eq!(decode::<ToController>(&encode(&hello)).unwrap(), hello);
        let source = Value::Map(
            [(
                "pvs".to_owned(),
                Value::from(vec![Value::Null, Value::from(1.5)]),
            )]
            .into(),
        );
        let hello = ToController::Hello(Hello {
            role: Role::Ingester,
            name: "i1".into(),
            instance: 8,
            tags: vec![],
            streams: vec!["det".into()],
            endpoint: None,
            status: ComponentStatus::Ingester(IngesterStatus {
                source,
                recording: Some("/tmp/x-i1.cbors".into()),
                ..IngesterStatus::default()
            }),
        });
        assert_eq!(decode::<ToController>(&encode(&hello)).unwrap(), hello);
        let lease = FromController::Lease {
            scan: 2,
            events: vec![LeasedEvent {
                event: EventNumber(5),
                frames: vec![LeasedFrame {
                    stream: "det".into(),
                    frame: 5,
                    workers: vec!["w1".into()],
                }],
                resend_to: vec![],
            }],
        };
        assert_eq!(decode::<FromController>(&encode(&lease)).unwrap(), lease);
        let scan = FromController::Scan {
            scan: 1,
            uuid: "u".into(),
            frames: vec![("det".into(), 10)],
            reducer: None,
            parameters: vec![("dump_prefix".into(), ByteVec::from(b"/tmp/x-".to_vec()))],
            first_frames: vec![("det".into(), 4)],
            mapping: Some(r#"{"parts": {}}"#.into()),
        };
        assert_eq!(decode::<FromController>(&encode(&scan)).unwrap(), scan);
        let rewind = FromController::Rewind {
            scan: 1,
            from: EventNumber(7),
            reducer: Some("tcp://127.0.0.1:9".into()),
        };
        assert_eq!(decode::<FromController>(&encode(&rewind)).unwrap(), rewind);
        assert_eq!(decode::<FromController>(&encode(&scan)).unwrap(), scan);
    }

    #[test]
    fn a_status_serializes_as_the_components_own_object() {
        let status = ComponentStatus::Reducer(ReducerStatus {
            scan: Some(2),
            counts: Some(LiveCounts::default()),
            stale_reports: 1,
            malformed_reports: 0,
            restored_events: 0,
            checkpoint: None,
            refused_peers: 0,
        });
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"scan":2,"counts":{"order":{"released":0,"duplicates":0},"incomplete_events":0,"unexpected_reports":0},"stale_reports":1,"malformed_reports":0,"restored_events":0,"checkpoint":null,"refused_peers":0}"#
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<FromController>(b"\xff\x00garbage").is_err());
        assert!(decode::<ToController>(&[]).is_err());
    }
}
