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
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
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
    /// The component's counters, as JSON, for the controller's `/api/v1/status`.
    #[n(6)]
    pub status: String,
}

/// How often components say hello.
pub const HEARTBEAT_MS: u64 = 500;

/// Component → controller.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
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
            status: "{}".into(),
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
        };
        assert_eq!(decode::<FromController>(&encode(&scan)).unwrap(), scan);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<FromController>(b"\xff\x00garbage").is_err());
        assert!(decode::<ToController>(&[]).is_err());
    }
}
