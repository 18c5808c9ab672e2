//! An ingester's state, without sockets: which frame of which stream belongs to which leased
//! event and goes to which workers, the gaps in the source's numbering, and the frames kept until
//! the reducer has their event, to re-send to whoever takes over a dead worker's events or
//! recomputes them after a rewind.
//!
//! Memory is bounded twice: in events by the controller's window (leases and retained events
//! never exceed the events leased ahead of the reducer), and in bytes by [`RETAIN_BYTES`] (the
//! window alone would allow 4 GiB of 4 MiB frames): past it the source is not read until the
//! reducer catches up, so a PULL source blocks. A lease outlives its event's release only until
//! its frame is read or skipped, as that is how a late frame is recognised: an ingester behind
//! the others holds one per frame it lags, a few dozen bytes each, and no frame bytes.

use std::collections::{BTreeMap, BTreeSet};

use beamflow_protocol::control::LeasedEvent;
use beamflow_protocol::{EventData, EventNumber, StreamData, StreamName, Timestamp, WorkerName};
use tracing::{info, warn};

use crate::SourceFrame;

/// Frame bytes an ingester retains at most before it stops reading its source.
pub const RETAIN_BYTES: usize = 1 << 30;

/// Frames a source may skip at once. 2^20 frames are 105 s of a 10 kHz detector, far more
/// than any real loss before a scan is given up; a number further past the last frame placed
/// is a corrupt counter (a STINS `msg_number` of 2^63), and placing it would make every real
/// frame after it look stale, which wedges the stream for the rest of the scan.
pub const MAX_SKIP: u64 = 1 << 20;

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
    /// Its event was completed without it (this ingester fell behind the others by more than
    /// the workers' event timeout): dropped and counted, and reading goes on.
    Late,
    /// Numbered more than [`MAX_SKIP`] frames past the last one placed: rejected and counted.
    Implausible,
}

/// What [`IngesterCore::rewind`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewound {
    /// Leases of frames not read yet, dropped: they are placed when their new lease comes.
    pub leases_dropped: usize,
    /// Retained frames whose routes were forgotten: sent to the workers of their new lease.
    pub frames_kept: usize,
}

pub use beamflow_protocol::control::IngesterCounts;

#[derive(Debug, Default)]
struct Retained {
    expected: BTreeSet<StreamName>,
    /// Each frame, and whether its lease's workers have it: not after a rewind, until it is
    /// leased again.
    streams: BTreeMap<StreamName, (StreamData, bool)>,
    created_at: Option<Timestamp>,
}

/// How a restarted ingester numbers its source's frames of a stream: the first frame read takes
/// `first`, later ones keep their distance to it.
#[derive(Debug, Clone, Copy)]
struct Renumber {
    first: u64,
    /// The source's own index of its first frame, once read.
    source_first: Option<u64>,
}

/// An ingester's state for the current scan.
#[derive(Debug)]
pub struct IngesterCore {
    scan: u64,
    frame_counts: BTreeMap<StreamName, u64>,
    /// Ordered by stream and frame, so the leases a gap skips are a range, never a loop over
    /// frame numbers the source chose.
    leases: BTreeMap<(StreamName, u64), (EventNumber, Vec<WorkerName>)>,
    next: BTreeMap<StreamName, u64>,
    renumber: BTreeMap<StreamName, Renumber>,
    retained: BTreeMap<EventNumber, Retained>,
    retained_bytes: usize,
    retain_limit: usize,
    released: EventNumber,
    /// Streams whose late or implausible frames were logged this scan (once each).
    logged_late: BTreeSet<StreamName>,
    logged_implausible: BTreeSet<StreamName>,
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
            leases: BTreeMap::new(),
            next: BTreeMap::new(),
            renumber: BTreeMap::new(),
            retained: BTreeMap::new(),
            retained_bytes: 0,
            retain_limit: limit,
            released: EventNumber::default(),
            logged_late: BTreeSet::new(),
            logged_implausible: BTreeSet::new(),
            counts: IngesterCounts::default(),
        }
    }

    /// A new scan with `frames` frames of each stream: everything of the last one is dropped.
    ///
    /// `first_frames` is empty unless this ingester restarted mid-scan: then, per stream, the
    /// index its source's first frame takes. Leased frames below it were the predecessor's.
    pub fn start_scan(
        &mut self,
        scan: u64,
        frames: BTreeMap<StreamName, u64>,
        first_frames: BTreeMap<StreamName, u64>,
    ) {
        *self = Self {
            scan,
            frame_counts: frames,
            next: first_frames.clone(),
            renumber: first_frames
                .into_iter()
                .map(|(stream, first)| {
                    let renumber = Renumber {
                        first,
                        source_first: None,
                    };
                    (stream, renumber)
                })
                .collect(),
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

    /// Takes leased events. Returns the parts to send at once: retained frames of events
    /// re-leased after a worker died or a rewind, and empty parts for frames leased to this
    /// ingester's predecessor, which no source can send again.
    pub fn lease(&mut self, events: Vec<LeasedEvent>) -> Vec<Send> {
        let mut sends = Vec::new();
        let mut resent = 0;
        let mut lost: BTreeMap<StreamName, u64> = BTreeMap::new();
        for leased in events {
            if leased.event < self.released {
                continue;
            }
            let retained = self.retained.entry(leased.event).or_default();
            for frame in leased.frames {
                retained.expected.insert(frame.stream.clone());
                match retained.streams.get_mut(&frame.stream) {
                    Some((data, routed)) => {
                        // After a rewind nobody has the frame; after a worker died, only the
                        // workers new to the event lack it.
                        let to: Vec<&WorkerName> = frame
                            .workers
                            .iter()
                            .filter(|w| !*routed || leased.resend_to.contains(w))
                            .collect();
                        for worker in to {
                            resent += 1;
                            sends.push(Send {
                                worker: worker.clone(),
                                part: part(leased.event, &frame.stream, data, retained.created_at),
                            });
                        }
                        *routed = true;
                    }
                    // The source has passed the frame: its predecessor's (a restarted
                    // ingester starts at its first frame), or skipped and leased again after a
                    // rewind. Its workers get an empty part and stop waiting for it now.
                    None if frame.frame < self.next.get(&frame.stream).copied().unwrap_or(0) => {
                        if self
                            .renumber
                            .get(&frame.stream)
                            .is_some_and(|r| frame.frame < r.first)
                        {
                            *lost.entry(frame.stream).or_default() += 1;
                        }
                        sends.extend(frame.workers.into_iter().map(|worker| Send {
                            worker,
                            part: EventData::new(leased.event),
                        }));
                    }
                    None => {
                        self.leases
                            .insert((frame.stream, frame.frame), (leased.event, frame.workers));
                    }
                }
            }
        }
        if !lost.is_empty() {
            let total: u64 = lost.values().sum();
            self.counts.predecessor_frames += total;
            let streams = lost
                .iter()
                .map(|(stream, n)| format!("{stream}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            warn!(scan = self.scan, lost = total, %streams,
                "Frames leased to this ingester before it restarted were lost with it; their events lack them.");
        }
        self.counts.parts_resent += resent;
        self.counts.parts_sent += resent;
        sends
    }

    /// The frame's index in the scan: the source's own, or shifted for a restarted ingester.
    /// `Err` is what became of a frame that has none.
    fn index(&mut self, frame: &SourceFrame) -> Result<u64, Placed> {
        let Some(renumber) = self.renumber.get_mut(&frame.stream) else {
            return Ok(frame.index);
        };
        let source_first = *renumber.source_first.get_or_insert(frame.index);
        let Some(distance) = frame.index.checked_sub(source_first) else {
            self.counts.stale_frames += 1;
            return Err(Placed::Stale);
        };
        renumber
            .first
            .checked_add(distance)
            .ok_or(Placed::Implausible)
    }

    /// Places a frame from the source.
    pub fn place(&mut self, frame: SourceFrame, now: Timestamp) -> Placed {
        let Some(&count) = self.frame_counts.get(&frame.stream).filter(|c| **c > 0) else {
            self.counts.unmapped_frames += 1;
            return Placed::Unmapped;
        };
        let index = match self.index(&frame) {
            Ok(index) => index,
            Err(Placed::Implausible) => return self.implausible(&frame.stream, u64::MAX),
            Err(other) => return other,
        };
        let next = self.next.get(&frame.stream).copied().unwrap_or(0);
        if index < next {
            self.counts.stale_frames += 1;
            return Placed::Stale;
        }
        if index - next > MAX_SKIP {
            return self.implausible(&frame.stream, index);
        }
        if index >= count {
            self.counts.frames_beyond_scan += 1;
            return Placed::BeyondScan;
        }
        let Some((event, workers)) = self.leases.remove(&(frame.stream.clone(), index)) else {
            return Placed::Hold(frame);
        };
        let mut sends = Vec::new();
        if index > next {
            let missing = index - next;
            self.counts.gaps += 1;
            self.counts.gap_frames += missing;
            warn!(scan = self.scan, stream = %frame.stream, first_missing = next, missing, %event,
                "Source skipped frames; their events lack this stream, later events are unaffected.");
            // The skipped frames' workers get an empty part: the source has passed the event, so
            // its deadline starts now instead of waiting for a frame that will not come. Only
            // leases that exist are visited: the range of numbers is the source's to choose.
            let skipped: Vec<(StreamName, u64)> = self
                .leases
                .range((frame.stream.clone(), next)..(frame.stream.clone(), index))
                .map(|(key, _)| key.clone())
                .collect();
            for key in skipped {
                let Some((skipped, workers)) = self.leases.remove(&key) else {
                    continue;
                };
                if skipped >= self.released {
                    sends.extend(workers.into_iter().map(|worker| Send {
                        worker,
                        part: EventData::new(skipped),
                    }));
                }
            }
        }
        self.next.insert(frame.stream.clone(), index + 1);
        if event < self.released {
            // Frames are leased in event order, so the frames this one skipped were of events
            // released too: `sends` is empty.
            self.counts.late_frames += 1;
            if self.logged_late.insert(frame.stream.clone()) {
                warn!(scan = self.scan, stream = %frame.stream, %event, released = %self.released,
                    "Frame came after its event was completed without it (this ingester is behind the others); dropped and counted as late from now on.");
            }
            return Placed::Late;
        }
        self.counts.frames += 1;
        if workers.is_empty() {
            self.counts.discarded_frames += 1;
        }
        let retained = self.retained.entry(event).or_default();
        let created_at = *retained
            .created_at
            .get_or_insert(frame.taken_at.unwrap_or(now));
        let placed = workers.iter().map(|worker| Send {
            worker: worker.clone(),
            part: part(event, &frame.stream, &frame.data, Some(created_at)),
        });
        sends.extend(placed);
        self.counts.parts_sent += workers.len() as u64;
        self.retained_bytes += frame.data.byte_len();
        retained.streams.insert(frame.stream, (frame.data, true));
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

    fn implausible(&mut self, stream: &StreamName, index: u64) -> Placed {
        self.counts.implausible_frames += 1;
        if self.logged_implausible.insert(stream.clone()) {
            let next = self.next.get(stream).copied().unwrap_or(0);
            warn!(scan = self.scan, %stream, index, next, max_skip = MAX_SKIP,
                "Frame numbered implausibly far past the last one placed (a corrupt counter?); rejected and counted from now on.");
        }
        Placed::Implausible
    }

    /// The reducer has every event below `up_to` (covered by its checkpoint): their frames are
    /// no longer needed. Leases of frames not read yet stay, so those frames are recognised as
    /// late when they come instead of being held for a lease that never comes.
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
    }

    /// The scan goes on from event `from`, recomputed downstream: leases of events from `from`
    /// on are dropped (their frames are placed when leased again), and retained frames of them
    /// forget their routes, so their next lease sends them to all its workers.
    pub fn rewind(&mut self, from: EventNumber) -> Rewound {
        if from < self.released {
            // Their frames are gone: the reducer said it had them. The controller never asks
            // this; if it did, those events stay as the reducer has them.
            warn!(scan = self.scan, %from, released = %self.released,
                "Rewind to before the events already released; those cannot be sent again.");
        }
        let before = self.leases.len();
        self.leases.retain(|_, (event, _)| *event < from);
        let mut rewound = Rewound {
            leases_dropped: before - self.leases.len(),
            frames_kept: 0,
        };
        // Events leased but not read yet are leased again, expectations and all.
        self.retained
            .retain(|event, retained| *event < from || !retained.streams.is_empty());
        for retained in self.retained.range_mut(from..).map(|(_, r)| r) {
            for (_, routed) in retained.streams.values_mut() {
                *routed = false;
                rewound.frames_kept += 1;
            }
        }
        info!(scan = self.scan, %from, leases_dropped = rewound.leases_dropped,
            frames_kept = rewound.frames_kept,
            "Rewound: retained frames go to their events' new workers, unread ones when leased again.");
        rewound
    }

    /// Events retained now.
    pub fn retained(&self) -> usize {
        self.retained.len()
    }

    /// Frame bytes retained now.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// Per stream, the index of the next frame it will place.
    pub fn next_frames(&self) -> Vec<(StreamName, u64)> {
        self.next.iter().map(|(s, n)| (s.clone(), *n)).collect()
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
            taken_at: None,
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
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]), BTreeMap::new());
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
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]), BTreeMap::new());
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
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]), BTreeMap::new());
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
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]), BTreeMap::new());
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
        core.start_scan(1, frames(&[("det", 10), ("pcap", 10)]), BTreeMap::new());
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
        core.start_scan(1, frames(&[("det", 2)]), BTreeMap::new());
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

    /// Issue 16 (probe 1g): two ingesters, one two seconds behind. The reducer completes events
    /// without the slow stream and releases them; the slow ingester's leases of frames not read
    /// yet must survive, or its next frame waits for a lease that never comes and it stops.
    #[test]
    fn a_slow_ingester_drops_frames_of_events_completed_without_them_and_reads_on() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 10)]), BTreeMap::new());
        core.lease((0..5).map(|n| leased(n, n, &["w1"], &[])).collect());
        assert_eq!(sent_to(&core.place(frame(0), now)), [("w1".to_owned(), 0)]);
        core.release(EventNumber(4));
        assert!(core.wants_frames(), "frames 1 to 4 are still to be read");
        assert_eq!(core.place(frame(1), now), Placed::Late);
        // Frame 2 was lost upstream as well: a gap, but nobody waits for its event any more.
        assert_eq!(core.place(frame(3), now), Placed::Late);
        assert_eq!(sent_to(&core.place(frame(4), now)), [("w1".to_owned(), 4)]);
        let counts = core.counts();
        assert_eq!((counts.late_frames, counts.gap_frames), (2, 1));
        assert_eq!(counts.frames, 2, "late frames are not placed");
        assert!(
            !core.wants_frames(),
            "a late lease goes once its frame is read"
        );
        assert_eq!(core.retained(), 1, "event 4");
    }

    /// Issue 16 (probe 3c): one STINS image numbered 2^63 wedged the scan.
    #[test]
    fn an_absurd_frame_number_is_rejected_and_the_stream_goes_on() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        // A live scan: as many frames as the source gives.
        core.start_scan(1, frames(&[("det", u64::MAX)]), BTreeMap::new());
        core.lease((0..3).map(|n| leased(n, n, &["w1"], &[])).collect());
        assert_eq!(sent_to(&core.place(frame(0), now)), [("w1".to_owned(), 0)]);
        assert_eq!(core.place(frame(1 << 63), now), Placed::Implausible);
        assert_eq!(core.place(frame(u64::MAX), now), Placed::Implausible);
        assert_eq!(sent_to(&core.place(frame(1), now)), [("w1".to_owned(), 1)]);
        let counts = core.counts();
        assert_eq!((counts.implausible_frames, counts.gaps), (2, 0));
        // The furthest a source may skip is still a gap, found among the leases that exist.
        core.lease(vec![leased(3, 2 + MAX_SKIP, &["w1"], &[])]);
        assert_eq!(
            sent_to(&core.place(frame(2 + MAX_SKIP), now)),
            [("w1".to_owned(), 2), ("w1".to_owned(), 3)]
        );
        assert_eq!(core.counts().gap_frames, MAX_SKIP);
    }

    /// Issue 16: after a reducer restart the scan goes on from the reducer's checkpoint, with
    /// fresh routes. Frames sent before are re-sent to the new workers; frames not read yet
    /// (and a frame held for its lease) are placed when their new lease comes.
    #[test]
    fn a_rewind_resends_retained_frames_to_the_new_lease_and_places_the_rest_when_leased() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 10)]), BTreeMap::new());
        core.lease((0..4).map(|n| leased(n, n, &["w1"], &[])).collect());
        for n in 0..3 {
            core.place(frame(n), now);
        }
        core.release(EventNumber(1));
        let rewound = core.rewind(EventNumber(1));
        assert_eq!(
            rewound,
            Rewound {
                leases_dropped: 1,
                frames_kept: 2
            }
        );
        assert!(!core.wants_frames());
        let Placed::Hold(held) = core.place(frame(3), now) else {
            panic!("frame 3 lost its lease")
        };
        let resent = core.lease((1..5).map(|n| leased(n, n, &["w2"], &[])).collect());
        assert_eq!(
            resent
                .iter()
                .map(|s| (s.worker.to_string(), s.part.event_number.0))
                .collect::<Vec<_>>(),
            [("w2".to_owned(), 1), ("w2".to_owned(), 2)]
        );
        assert_eq!(core.counts().parts_resent, 2);
        assert_eq!(sent_to(&core.place(held, now)), [("w2".to_owned(), 3)]);
        // Frames 4 and 5 were lost upstream; after another rewind, 5's new worker hears so at once.
        core.lease(vec![leased(5, 5, &["w2"], &[]), leased(6, 6, &["w2"], &[])]);
        assert_eq!(
            sent_to(&core.place(frame(6), now)),
            [
                ("w2".to_owned(), 4),
                ("w2".to_owned(), 5),
                ("w2".to_owned(), 6)
            ]
        );
        core.rewind(EventNumber(5));
        let resent = core.lease(vec![leased(5, 5, &["w3"], &[]), leased(6, 6, &["w3"], &[])]);
        let resent: Vec<(&str, u64, usize)> = resent
            .iter()
            .map(|s| {
                (
                    s.worker.as_str(),
                    s.part.event_number.0,
                    s.part.streams.len(),
                )
            })
            .collect();
        assert_eq!(resent, [("w3", 5, 0), ("w3", 6, 1)]);
        assert!(
            !core.wants_frames(),
            "no lease waits for a frame the source has passed"
        );
        // A later re-lease (a worker died) re-sends only to the workers new to the event.
        let resent = core.lease(vec![leased(2, 2, &["w2", "w3"], &["w3"])]);
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].worker.as_str(), "w3");
    }

    /// Issue 16 (probe 1e): a restarted ingester's source starts over; its frames continue the
    /// scan from where the controller says, and what the predecessor was leased below that is
    /// a gap its workers hear of at once.
    #[test]
    fn a_restarted_ingester_numbers_from_its_first_frame_and_gives_up_its_predecessors() {
        let now = Timestamp::now();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 10)]), frames(&[("det", 4)]));
        let sends = core.lease((2..8).map(|n| leased(n, n, &["w1"], &[])).collect());
        let empty: Vec<(String, u64, usize)> = sends
            .iter()
            .map(|s| {
                (
                    s.worker.to_string(),
                    s.part.event_number.0,
                    s.part.streams.len(),
                )
            })
            .collect();
        assert_eq!(empty, [("w1".to_owned(), 2, 0), ("w1".to_owned(), 3, 0)]);
        assert_eq!(core.counts().predecessor_frames, 2);
        assert_eq!(core.counts().parts_resent, 0);
        // The source starts its series over at 0: that is frame 4 of the scan.
        assert_eq!(sent_to(&core.place(frame(0), now)), [("w1".to_owned(), 4)]);
        assert_eq!(
            sent_to(&core.place(frame(2), now)),
            [("w1".to_owned(), 5), ("w1".to_owned(), 6)],
            "the source's own gaps still count"
        );
        assert_eq!(core.counts().gap_frames, 1);
    }

    /// Issue 16: an event's time is when its source took it, not when a lagging ingester got
    /// to it.
    #[test]
    fn an_event_is_stamped_when_its_source_took_it() {
        let taken = Timestamp::from_second(1_700_000_000).unwrap();
        let mut core = IngesterCore::new();
        core.start_scan(1, frames(&[("det", 10)]), BTreeMap::new());
        core.lease((0..2).map(|n| leased(n, n, &["w1"], &[])).collect());
        let mut first = frame(0);
        first.taken_at = Some(taken);
        let created_at = |placed: Placed| match placed {
            Placed::Sent { sends, .. } => sends[0].part.created_at,
            other => panic!("not sent: {other:?}"),
        };
        let now = Timestamp::now();
        assert_eq!(created_at(core.place(first, now)), Some(taken));
        assert_eq!(created_at(core.place(frame(1), now)), Some(now));
    }
}
