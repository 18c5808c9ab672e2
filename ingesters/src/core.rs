//! An ingester's state, without sockets: which frame of which stream belongs to which leased
//! event and goes to which workers, the gaps in the source's numbering, and the frames kept until
//! the reducer has their event, to re-send to whoever takes over a dead worker's events.
//!
//! Memory is bounded twice: in events by the controller's window (leases and retained events
//! never exceed the events leased ahead of the reducer), and in bytes by [`RETAIN_BYTES`] (the
//! window alone would allow 4 GiB of 4 MiB frames): past it the source is not read until the
//! reducer catches up, so a PULL source blocks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use beamflow_protocol::control::LeasedEvent;
use beamflow_protocol::{EventData, EventNumber, StreamData, StreamName, Timestamp, WorkerName};
use tracing::warn;

use crate::SourceFrame;

/// Frame bytes an ingester retains at most before it stops reading its source.
pub const RETAIN_BYTES: usize = 1 << 30;

/// A part to send to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    /// The worker.
    pub worker: WorkerName,
    /// One stream's frames of one event.
    pub part: EventData,
}

/// What became of a frame offered to [`IngesterCore::place`].
#[derive(Debug, PartialEq)]
pub enum Placed {
    /// Placed in its event: the parts to send, and the event's whole record (this ingester's
    /// streams) once every stream of it is in, for the dump.
    Sent {
        /// Parts for workers.
        sends: Vec<Send>,
        /// The event, complete.
        complete: Option<EventData>,
    },
    /// Its event is not leased yet: hold the frame and offer it again after the next lease.
    Hold(SourceFrame),
    /// Numbered before a frame already placed (repeated or out of order): dropped and counted.
    Stale,
    /// Of a stream the scan's mapping does not name (an `epics_ca` clock event carries every
    /// PV, a mapping may name a few): dropped and counted. Holding it would wait for a lease
    /// that never comes and stop the source.
    Unmapped,
    /// Numbered past the scan's frames of its stream (a live source runs on after its scan):
    /// dropped and counted, for the same reason.
    BeyondScan,
}

pub use beamflow_protocol::control::IngesterCounts;

#[derive(Debug, Default)]
struct Retained {
    expected: BTreeSet<StreamName>,
    streams: BTreeMap<StreamName, (StreamData, Vec<WorkerName>)>,
    created_at: Option<Timestamp>,
}

/// An ingester's state for the current scan.
#[derive(Debug)]
pub struct IngesterCore {
    scan: u64,
    frame_counts: BTreeMap<StreamName, u64>,
    leases: HashMap<(StreamName, u64), (EventNumber, Vec<WorkerName>)>,
    next: BTreeMap<StreamName, u64>,
    retained: BTreeMap<EventNumber, Retained>,
    retained_bytes: usize,
    retain_limit: usize,
    released: EventNumber,
    counts: IngesterCounts,
}

impl Default for IngesterCore {
    fn default() -> Self {
        Self::with_retain_limit(RETAIN_BYTES)
    }
}

impl IngesterCore {
    /// No scan yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// No scan yet; reading stops while `limit` bytes of frames are retained.
    pub fn with_retain_limit(limit: usize) -> Self {
        Self {
            scan: 0,
            frame_counts: BTreeMap::new(),
            leases: HashMap::new(),
            next: BTreeMap::new(),
            retained: BTreeMap::new(),
            retained_bytes: 0,
            retain_limit: limit,
            released: EventNumber::default(),
            counts: IngesterCounts::default(),
        }
    }

    /// A new scan with `frames` frames of each stream: everything of the last one is dropped.
    pub fn start_scan(&mut self, scan: u64, frames: BTreeMap<StreamName, u64>) {
        *self = Self {
            scan,
            frame_counts: frames,
            counts: self.counts,
            ..Self::with_retain_limit(self.retain_limit)
        };
    }

    /// The current scan.
    pub fn scan(&self) -> u64 {
        self.scan
    }

    /// Whether some leased frame is still to be read and there is room to retain it: read the
    /// source only then, so a stalled pipeline stops the reading and the source blocks (or, for
    /// SUB sources, drops).
    pub fn wants_frames(&self) -> bool {
        !self.leases.is_empty() && self.retained_bytes < self.retain_limit
    }

    /// Whether every frame the scan asks of the source has been read (or no scan runs): a live
    /// source may then let go of what it receives, since it is stale by the next scan.
    pub fn finished_reading(&self) -> bool {
        self.frame_counts
            .iter()
            .all(|(stream, count)| self.next.get(stream).copied().unwrap_or(0) >= *count)
    }

    /// Takes leased events; for events re-leased after a worker died, returns the retained
    /// frames to re-send.
    pub fn lease(&mut self, events: Vec<LeasedEvent>) -> Vec<Send> {
        let mut sends = Vec::new();
        for leased in events {
            if leased.event < self.released {
                continue;
            }
            let retained = self.retained.entry(leased.event).or_default();
            for frame in leased.frames {
                retained.expected.insert(frame.stream.clone());
                match retained.streams.get_mut(&frame.stream) {
                    Some((data, workers)) => {
                        for worker in &frame.workers {
                            if leased.resend_to.contains(worker) {
                                sends.push(Send {
                                    worker: worker.clone(),
                                    part: part(
                                        leased.event,
                                        &frame.stream,
                                        data,
                                        retained.created_at,
                                    ),
                                });
                            }
                        }
                        *workers = frame.workers;
                    }
                    None => {
                        self.leases
                            .insert((frame.stream, frame.frame), (leased.event, frame.workers));
                    }
                }
            }
        }
        self.counts.parts_resent += sends.len() as u64;
        self.counts.parts_sent += sends.len() as u64;
        sends
    }

    /// Places a frame from the source.
    pub fn place(&mut self, frame: SourceFrame, now: Timestamp) -> Placed {
        let Some(&count) = self.frame_counts.get(&frame.stream).filter(|c| **c > 0) else {
            self.counts.unmapped_frames += 1;
            return Placed::Unmapped;
        };
        if frame.index >= count {
            self.counts.frames_beyond_scan += 1;
            return Placed::BeyondScan;
        }
        let next = self.next.get(&frame.stream).copied().unwrap_or(0);
        if frame.index < next {
            self.counts.stale_frames += 1;
            return Placed::Stale;
        }
        let Some((event, workers)) = self.leases.remove(&(frame.stream.clone(), frame.index))
        else {
            return Placed::Hold(frame);
        };
        let mut sends = Vec::new();
        if frame.index > next {
            let missing = frame.index - next;
            self.counts.gaps += 1;
            self.counts.gap_frames += missing;
            warn!(scan = self.scan, stream = %frame.stream, first_missing = next, missing, %event,
                "Source skipped frames; their events lack this stream, later events are unaffected.");
            // The skipped frames' workers get an empty part: the source has passed the event, so
            // its deadline starts now instead of waiting for a frame that will not come.
            for index in next..frame.index {
                if let Some((skipped, workers)) = self.leases.remove(&(frame.stream.clone(), index))
                {
                    sends.extend(workers.into_iter().map(|worker| Send {
                        worker,
                        part: EventData::new(skipped),
                    }));
                }
            }
        }
        self.next.insert(frame.stream.clone(), frame.index + 1);
        self.counts.frames += 1;
        if workers.is_empty() {
            self.counts.discarded_frames += 1;
        }
        let retained = self.retained.entry(event).or_default();
        let created_at = *retained.created_at.get_or_insert(now);
        let placed = workers.iter().map(|worker| Send {
            worker: worker.clone(),
            part: part(event, &frame.stream, &frame.data, Some(created_at)),
        });
        sends.extend(placed);
        self.counts.parts_sent += workers.len() as u64;
        self.retained_bytes += frame.data.byte_len();
        retained.streams.insert(frame.stream, (frame.data, workers));
        let complete = (retained.expected.len() == retained.streams.len()).then(|| {
            let mut record = EventData::new(event);
            record.created_at = retained.created_at;
            record.streams = retained
                .streams
                .iter()
                .map(|(stream, (data, _))| (stream.clone(), data.clone()))
                .collect();
            record
        });
        Placed::Sent { sends, complete }
    }

    /// The reducer has every event below `up_to`: their frames are no longer needed.
    pub fn release(&mut self, up_to: EventNumber) {
        if up_to <= self.released {
            return;
        }
        self.released = up_to;
        let kept = self.retained.split_off(&up_to);
        let freed: usize = std::mem::replace(&mut self.retained, kept)
            .values()
            .flat_map(|retained| retained.streams.values())
            .map(|(data, _)| data.byte_len())
            .sum();
        self.retained_bytes = self.retained_bytes.saturating_sub(freed);
        self.leases.retain(|_, (event, _)| *event >= up_to);
    }

    /// Events retained now.
    pub fn retained(&self) -> usize {
        self.retained.len()
    }

    /// Frame bytes retained now.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// The counters so far (over every scan).
    pub fn counts(&self) -> IngesterCounts {
        self.counts
    }
}

fn part(
    event: EventNumber,
    stream: &StreamName,
    data: &StreamData,
    created_at: Option<Timestamp>,
) -> EventData {
    let mut part = EventData::new(event);
    part.created_at = created_at;
    part.streams.insert(stream.clone(), data.clone());
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::control::LeasedFrame;
    use bytes::Bytes;

    fn frames(counts: &[(&str, u64)]) -> BTreeMap<StreamName, u64> {
        counts.iter().map(|(s, n)| ((*s).into(), *n)).collect()
    }

    fn frame(index: u64) -> SourceFrame {
        SourceFrame {
            stream: "det".into(),
            index,
            data: StreamData {
                typ: "STINS".into(),
                frames: vec![Bytes::from(format!("{index}"))],
            },
        }
    }

    fn leased(event: u64, index: u64, workers: &[&str], resend_to: &[&str]) -> LeasedEvent {
        LeasedEvent {
            event: EventNumber(event),
            frames: vec![LeasedFrame {
                stream: "det".into(),
                frame: index,
                workers: workers.iter().map(|w| (*w).into()).collect(),
            }],
            resend_to: resend_to.iter().map(|w| (*w).into()).collect(),
        }
    }

    fn sent_to(placed: &Placed) -> Vec<(String, u64)> {
        match placed {
            Placed::Sent { sends, .. } => sends
                .iter()
                .map(|s| (s.worker.to_string(), s.part.event_number.0))
                .collect(),
            other => panic!("not sent: {other:?}"),
        }
    }

    #[test]
    fn frames_wait_for_their_lease_and_go_to_its_workers() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]));
        assert!(!core.wants_frames());
        let Placed::Hold(held) = core.place(frame(0), now) else {
            panic!("no lease yet")
        };
        core.lease(vec![
            leased(0, 0, &["w1", "w2"], &[]),
            leased(1, 1, &[], &[]),
        ]);
        assert!(core.wants_frames());
        assert_eq!(
            sent_to(&core.place(held, now)),
            [("w1".to_owned(), 0), ("w2".to_owned(), 0)]
        );
        assert_eq!(sent_to(&core.place(frame(1), now)), []);
        assert_eq!(core.counts().discarded_frames, 1);
        assert_eq!(core.place(frame(1), now), Placed::Stale);
    }

    #[test]
    fn a_gap_in_the_source_numbering_leaves_later_events_intact() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]));
        core.lease((0..5).map(|n| leased(n, n, &["w1"], &[])).collect());
        core.place(frame(0), now);
        core.place(frame(1), now);
        // Frames 2 and 3 were lost upstream: their worker hears that the source passed them.
        assert_eq!(
            sent_to(&core.place(frame(4), now)),
            [
                ("w1".to_owned(), 2),
                ("w1".to_owned(), 3),
                ("w1".to_owned(), 4)
            ]
        );
        assert_eq!((core.counts().gaps, core.counts().gap_frames), (1, 2));
        assert!(!core.wants_frames(), "the lost frames' leases are given up");
    }

    #[test]
    fn reading_stops_at_the_retention_limit_until_the_reducer_catches_up() {
        // Each test frame is one or two bytes ("0".."9", "10"...): a limit of 3 bytes.
        let mut core = IngesterCore::with_retain_limit(3);
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]));
        core.lease((0..10).map(|n| leased(n, n, &["w1"], &[])).collect());
        let mut placed = 0;
        while core.wants_frames() {
            assert!(matches!(
                core.place(frame(placed), Timestamp::now()),
                Placed::Sent { .. }
            ));
            placed += 1;
        }
        assert_eq!(
            (placed, core.retained_bytes()),
            (3, 3),
            "three frames of one byte"
        );
        core.release(EventNumber(2));
        assert_eq!(core.retained_bytes(), 1);
        assert!(
            core.wants_frames(),
            "room again once the reducer has events 0 and 1"
        );
    }

    #[test]
    fn a_dead_workers_events_are_resent_from_retention_until_released() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]));
        core.lease((0..3).map(|n| leased(n, n, &["w2"], &[])).collect());
        core.place(frame(0), now);
        core.place(frame(1), now);
        core.release(EventNumber(1));
        assert_eq!(core.retained(), 2);
        // w2 died: events 1 and 2 move to w1. Event 1 was sent; event 2 not yet read.
        let resent = core.lease(vec![
            leased(1, 1, &["w1"], &["w1"]),
            leased(2, 2, &["w1"], &["w1"]),
        ]);
        assert_eq!(
            resent
                .iter()
                .map(|s| (s.worker.to_string(), s.part.event_number.0))
                .collect::<Vec<_>>(),
            [("w1".to_owned(), 1)]
        );
        assert_eq!(sent_to(&core.place(frame(2), now)), [("w1".to_owned(), 2)]);
        core.release(EventNumber(3));
        assert_eq!(core.retained(), 0);
    }

    #[test]
    fn an_event_record_is_complete_once_every_stream_is_in() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]));
        let mut event = leased(0, 0, &["w1"], &[]);
        event.frames.push(LeasedFrame {
            stream: "pcap".into(),
            frame: 0,
            workers: vec!["w1".into()],
        });
        core.lease(vec![event]);
        let Placed::Sent { complete, .. } = core.place(frame(0), now) else {
            panic!()
        };
        assert!(complete.is_none());
        let mut pcap = frame(0);
        pcap.stream = "pcap".into();
        let Placed::Sent { complete, .. } = core.place(pcap, now) else {
            panic!()
        };
        assert_eq!(complete.map(|e| e.streams.len()), Some(2));
    }

    /// Issue 13: a second sequence naming a few of an `epics_ca` ingester's PVs stalled, since
    /// a frame of an unnamed stream was held for a lease that never came.
    #[test]
    fn frames_of_unmapped_streams_and_past_the_scan_are_dropped_not_held() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 2)]));
        core.lease((0..2).map(|n| leased(n, n, &["w1"], &[])).collect());
        let mut other = frame(0);
        other.stream = "cq01".into();
        assert_eq!(core.place(other, now), Placed::Unmapped);
        assert_eq!(sent_to(&core.place(frame(0), now)), [("w1".to_owned(), 0)]);
        assert!(!core.finished_reading());
        assert_eq!(sent_to(&core.place(frame(1), now)), [("w1".to_owned(), 1)]);
        assert!(core.finished_reading());
        assert_eq!(core.place(frame(2), now), Placed::BeyondScan);
        let counts = core.counts();
        assert_eq!((counts.unmapped_frames, counts.frames_beyond_scan), (1, 1));
        assert!(
            IngesterCore::new().finished_reading(),
            "no scan: nothing to read"
        );
    }
}
