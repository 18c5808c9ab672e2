//! Event assembly keyed by event number: a worker gets each event's streams from several
//! ingesters, in any order, possibly before the controller's lease that says which streams the
//! event has. An event is ready when every expected stream has arrived; one whose streams do not
//! all arrive before its deadline is released as incomplete, with the missing streams named, and
//! never merged with another event's frames (dranspose's positional FIFO can do that).
//!
//! The deadline starts when the source has reached the event: its first part arrives, or a part
//! of a later event (the sources have moved past it), or an ingester's empty part saying its
//! source skipped the event's frame. Not at the lease: leases run ahead of a slow source by up to
//! the controller's window, and an event must not expire before its frames could exist.
//!
//! Pure: time is passed in, so tests need no sleeps. Memory is bounded by `capacity` events; the
//! caller stops reading its sockets while [`Assembler::is_full`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use beamflow_protocol::{EventData, EventNumber, StreamName};

/// An event released for processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// The event with every stream that arrived.
    pub event: EventData,
    /// Expected streams that did not arrive in time; empty for a complete event.
    pub missing: BTreeSet<StreamName>,
}

/// What became of an arriving part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// Kept.
    Accepted,
    /// The event was already released; the part is dropped.
    Late,
    /// A stream of this event had already arrived; the first copy is kept.
    Duplicate(StreamName),
}

#[derive(Debug)]
struct Partial {
    event: EventData,
    expected: Option<BTreeSet<StreamName>>,
    /// Started when the source reaches the event (see the module docs); a part whose lease never
    /// comes is dropped at its deadline, so it cannot hold memory for ever.
    deadline: Option<Instant>,
}

impl Partial {
    fn new(event: EventNumber) -> Self {
        Self {
            event: EventData::new(event),
            expected: None,
            deadline: None,
        }
    }

    fn is_complete(&self) -> bool {
        self.expected
            .as_ref()
            .is_some_and(|expected| expected.iter().all(|s| self.event.streams.contains_key(s)))
    }
}

/// Assembles events from their parts.
///
/// Complete events and deadlines are indexed as they change, so [`Assembler::ready`] costs what
/// it releases, not what it holds (a worker holds up to its lease limit of events).
#[derive(Debug)]
pub struct Assembler {
    partial: BTreeMap<EventNumber, Partial>,
    /// Leased events whose deadline has not started.
    unstarted: BTreeSet<EventNumber>,
    complete: BTreeSet<EventNumber>,
    deadlines: BTreeSet<(Instant, EventNumber)>,
    /// Events released, so a late part is recognised (pruned below the oldest partial event).
    released: BTreeSet<EventNumber>,
    timeout: Duration,
    capacity: usize,
    orphaned: u64,
}

impl Assembler {
    /// Events not complete `timeout` after the source reached them are released incomplete; at
    /// most `capacity` events are held.
    pub fn new(timeout: Duration, capacity: usize) -> Self {
        Self {
            partial: BTreeMap::new(),
            unstarted: BTreeSet::new(),
            complete: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            released: BTreeSet::new(),
            timeout,
            capacity: capacity.max(1),
            orphaned: 0,
        }
    }

    /// The lease: `event` has these streams for this worker.
    pub fn expect(&mut self, event: EventNumber, streams: BTreeSet<StreamName>) {
        if self.released.contains(&event) {
            return;
        }
        let partial = self
            .partial
            .entry(event)
            .or_insert_with(|| Partial::new(event));
        partial.expected = Some(streams);
        if partial.is_complete() {
            self.complete.insert(event);
        }
        if partial.deadline.is_none() {
            self.unstarted.insert(event);
        }
    }

    /// One ingester's part of an event (one or more streams; none: the ingester's source
    /// skipped the event's frame).
    pub fn add(&mut self, part: EventData, now: Instant) -> Arrival {
        let event = part.event_number;
        if self.released.contains(&event) {
            return Arrival::Late;
        }
        let deadline = now + self.timeout;
        // Every leased event up to this one has been reached by the sources.
        let later = self.unstarted.split_off(&EventNumber(event.0 + 1));
        for reached in std::mem::replace(&mut self.unstarted, later) {
            if let Some(partial) = self.partial.get_mut(&reached)
                && partial.deadline.is_none()
            {
                partial.deadline = Some(deadline);
                self.deadlines.insert((deadline, reached));
            }
        }
        let partial = self
            .partial
            .entry(event)
            .or_insert_with(|| Partial::new(event));
        if partial.deadline.is_none() {
            partial.deadline = Some(deadline);
            self.deadlines.insert((deadline, event));
        }
        let mut arrival = Arrival::Accepted;
        for (stream, data) in part.streams {
            if partial.event.streams.contains_key(&stream) {
                arrival = Arrival::Duplicate(stream);
                continue;
            }
            partial.event.streams.insert(stream, data);
        }
        partial.event.created_at = match (partial.event.created_at, part.created_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if partial.is_complete() {
            self.complete.insert(event);
        }
        arrival
    }

    /// Releases every complete event, and every expected event past its deadline as incomplete.
    /// Parts whose lease has not come by their deadline are dropped and counted.
    pub fn ready(&mut self, now: Instant) -> Vec<Assembled> {
        let mut done = std::mem::take(&mut self.complete);
        while let Some(&(deadline, event)) = self.deadlines.first()
            && deadline <= now
        {
            self.deadlines.pop_first();
            done.insert(event);
        }
        let mut out = Vec::with_capacity(done.len());
        for event in done {
            let Some(partial) = self.partial.remove(&event) else {
                continue;
            };
            self.unstarted.remove(&event);
            if let Some(deadline) = partial.deadline {
                self.deadlines.remove(&(deadline, event));
            }
            let Some(expected) = partial.expected else {
                self.orphaned += 1;
                continue;
            };
            let missing = expected
                .into_iter()
                .filter(|s| !partial.event.streams.contains_key(s))
                .collect();
            self.released.insert(event);
            out.push(Assembled {
                event: partial.event,
                missing,
            });
        }
        // Remember enough releases to recognise late parts, not all of them.
        while self.released.len() > 4 * self.capacity {
            self.released.pop_first();
        }
        out
    }

    /// The scan goes on from `from` (a rewind): every event from `from` on is forgotten, its
    /// parts, lease, deadline and release alike, so its parts are taken again when they are
    /// re-sent. Returns how many events held or released were forgotten.
    pub fn rewind(&mut self, from: EventNumber) -> usize {
        let forgotten = self.partial.split_off(&from).len() + self.released.split_off(&from).len();
        self.unstarted.retain(|event| *event < from);
        self.complete.retain(|event| *event < from);
        self.deadlines.retain(|(_, event)| *event < from);
        forgotten
    }

    /// Parts dropped because no lease for their event came in time.
    pub fn orphaned(&self) -> u64 {
        self.orphaned
    }

    /// Whether as many events are held as allowed.
    pub fn is_full(&self) -> bool {
        self.partial.len() >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::StreamData;
    use bytes::Bytes;

    fn part(event: u64, streams: &[&str]) -> EventData {
        let mut data = EventData::new(EventNumber(event));
        for s in streams {
            data.streams.insert(
                (*s).into(),
                StreamData {
                    typ: "T".into(),
                    frames: vec![Bytes::from(format!("{s}{event}"))],
                },
            );
        }
        data
    }

    fn names(streams: &[&str]) -> BTreeSet<StreamName> {
        streams.iter().map(|s| StreamName::from(*s)).collect()
    }

    #[test]
    fn assembles_by_number_in_any_order() {
        let t0 = Instant::now();
        let mut assembler = Assembler::new(Duration::from_secs(1), 16);
        // Parts arrive before the lease and out of order.
        assert_eq!(assembler.add(part(2, &["pcap"]), t0), Arrival::Accepted);
        assert_eq!(assembler.add(part(1, &["det"]), t0), Arrival::Accepted);
        assembler.expect(EventNumber(1), names(&["det"]));
        assembler.expect(EventNumber(2), names(&["det", "pcap"]));
        let ready = assembler.ready(t0);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].event.event_number, EventNumber(1));
        assert!(ready[0].missing.is_empty());
        assert_eq!(assembler.add(part(2, &["det"]), t0), Arrival::Accepted);
        let ready = assembler.ready(t0);
        assert_eq!(ready[0].event.streams.len(), 2);
        assert_eq!(
            ready[0].event.streams[&StreamName::from("det")].frames[0],
            Bytes::from("det2")
        );
        assert_eq!(assembler.add(part(2, &["det"]), t0), Arrival::Late);
    }

    #[test]
    fn a_missing_stream_releases_the_event_incomplete_at_its_deadline() {
        let t0 = Instant::now();
        let mut assembler = Assembler::new(Duration::from_millis(500), 16);
        assembler.expect(EventNumber(7), names(&["det", "pcap"]));
        assert_eq!(assembler.add(part(7, &["det"]), t0), Arrival::Accepted);
        assert!(assembler.ready(t0 + Duration::from_millis(499)).is_empty());
        let ready = assembler.ready(t0 + Duration::from_millis(500));
        assert_eq!(ready[0].missing, names(&["pcap"]));
        assert_eq!(ready[0].event.streams.len(), 1);
    }

    #[test]
    fn a_leased_event_waits_for_a_slow_source_and_expires_once_passed() {
        let t0 = Instant::now();
        let mut assembler = Assembler::new(Duration::from_millis(500), 16);
        for n in 1..=3 {
            assembler.expect(EventNumber(n), names(&["det"]));
        }
        // Long after the lease, nothing has expired: the source has not got there yet.
        assert!(assembler.ready(t0 + Duration::from_secs(60)).is_empty());
        // Event 3's frame arrives; event 1's never will, event 2's is skipped (empty part).
        let t1 = t0 + Duration::from_secs(60);
        assembler.add(part(3, &["det"]), t1);
        assembler.add(part(2, &[]), t1);
        assert_eq!(assembler.ready(t1).len(), 1, "event 3 is complete");
        let expired = assembler.ready(t1 + Duration::from_millis(500));
        let numbers: Vec<u64> = expired.iter().map(|a| a.event.event_number.0).collect();
        assert_eq!(numbers, [1, 2]);
        assert!(expired.iter().all(|a| a.missing == names(&["det"])));
    }

    #[test]
    fn parts_without_a_lease_are_dropped_at_their_deadline() {
        let t0 = Instant::now();
        let mut assembler = Assembler::new(Duration::from_secs(1), 16);
        assembler.add(part(3, &["det"]), t0);
        assert!(assembler.ready(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(assembler.orphaned(), 1);
        assert!(!assembler.is_full());
    }

    #[test]
    fn duplicate_streams_keep_the_first_copy() {
        let t0 = Instant::now();
        let mut assembler = Assembler::new(Duration::from_secs(1), 16);
        assembler.add(part(1, &["det"]), t0);
        assert_eq!(
            assembler.add(part(1, &["det"]), t0),
            Arrival::Duplicate("det".into())
        );
    }

    #[test]
    fn a_rewind_forgets_the_events_from_its_start_so_their_parts_are_taken_again() {
        let t0 = Instant::now();
        let mut assembler = Assembler::new(Duration::from_millis(500), 16);
        for n in 1..=4 {
            assembler.expect(EventNumber(n), names(&["det", "pcap"]));
        }
        for n in 1..=3 {
            assembler.add(part(n, &["det", "pcap"]), t0);
        }
        assembler.add(part(4, &["det"]), t0);
        assert_eq!(assembler.ready(t0).len(), 3);
        assert_eq!(
            assembler.rewind(EventNumber(2)),
            3,
            "2 and 3 released, 4 held"
        );
        // Event 4's deadline went with it: nothing is released incomplete.
        assert!(assembler.ready(t0 + Duration::from_secs(1)).is_empty());
        assert!(!assembler.is_full());
        // Event 1 stays released; 2 is taken again, and waits for its lease again.
        assert_eq!(assembler.add(part(1, &["det"]), t0), Arrival::Late);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(assembler.add(part(2, &["det"]), t1), Arrival::Accepted);
        assert!(assembler.ready(t1).is_empty());
        assembler.expect(EventNumber(2), names(&["det"]));
        let ready = assembler.ready(t1);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].event.event_number, EventNumber(2));
        assert!(ready[0].missing.is_empty());
    }

    #[test]
    fn is_full_at_capacity() {
        let t0 = Instant::now();
        let mut assembler = Assembler::new(Duration::from_secs(1), 2);
        assembler.add(part(1, &["det"]), t0);
        assert!(!assembler.is_full());
        assembler.add(part(2, &["det"]), t0);
        assert!(assembler.is_full());
    }
}
