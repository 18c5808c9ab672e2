//! The reorder buffer: results arrive from many workers in any order, possibly twice (a worker
//! thought dead that was only slow, an event re-sent after a failure); accumulators must see each
//! event's results once, in event order.
//!
//! The reducer learns from the controller which workers an event was assigned to
//! ([`Reorder::expect`], again with the new set when an event is re-assigned) and from each of
//! those workers one report per event, with zero or more results. An event is complete when every
//! expected worker has reported; complete events leave the buffer in order. Results are kept once
//! per (event, analysis): the first to arrive wins, later copies are counted as duplicates. The
//! buffer holds at most `capacity` events; the caller stops reading (so that the sockets push
//! back) while [`Reorder::is_full`].

use std::collections::{BTreeMap, BTreeSet};

use beamflow_protocol::{AnalysisName, EventNumber, EventReport, ResultData, WorkerName};

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Buffered.
    Accepted,
    /// The worker had already reported this event, or the event was already applied.
    Duplicate,
    /// The event was assigned to other workers (it was taken away from this one, thought dead);
    /// the results are kept in case a re-assignment names it again.
    Unexpected,
}

#[derive(Debug, Default)]
struct Pending {
    expected: Option<BTreeSet<WorkerName>>,
    reported: BTreeSet<WorkerName>,
    results: BTreeMap<AnalysisName, ResultData>,
}

impl Pending {
    fn complete(&self) -> bool {
        self.expected
            .as_ref()
            .is_some_and(|expected| expected.is_subset(&self.reported))
    }
}

pub use beamflow_protocol::control::OrderCounts;

/// The reorder buffer.
#[derive(Debug)]
pub struct Reorder {
    next: EventNumber,
    pending: BTreeMap<EventNumber, Pending>,
    capacity: usize,
    counts: OrderCounts,
}

impl Reorder {
    /// A buffer that releases events from `first` on and holds at most `capacity` events.
    pub fn new(first: EventNumber, capacity: usize) -> Self {
        Self {
            next: first,
            pending: BTreeMap::new(),
            capacity: capacity.max(1),
            counts: OrderCounts::default(),
        }
    }

    /// Sets (or, after a re-assignment, replaces) the workers `event` was sent to.
    pub fn expect(&mut self, event: EventNumber, workers: BTreeSet<WorkerName>) {
        if event >= self.next {
            self.pending.entry(event).or_default().expected = Some(workers);
        }
    }

    /// Takes one worker's report.
    pub fn offer(&mut self, report: EventReport) -> Offer {
        if report.event_number < self.next {
            self.counts.duplicates += report.results.len() as u64;
            return Offer::Duplicate;
        }
        let pending = self.pending.entry(report.event_number).or_default();
        if !pending.reported.insert(report.worker.clone()) {
            self.counts.duplicates += report.results.len() as u64;
            return Offer::Duplicate;
        }
        for result in report.results {
            if pending.results.contains_key(&result.analysis) {
                self.counts.duplicates += 1;
            } else {
                pending.results.insert(result.analysis.clone(), result);
            }
        }
        // With no assignment yet the report merely beat the controller's message: not unexpected.
        match &pending.expected {
            Some(expected) if !expected.contains(&report.worker) => Offer::Unexpected,
            _ => Offer::Accepted,
        }
    }

    /// The next event's results if it is complete, in analysis-name order.
    pub fn pop_ready(&mut self) -> Option<(EventNumber, Vec<ResultData>)> {
        let entry = self.pending.first_entry()?;
        if *entry.key() != self.next || !entry.get().complete() {
            return None;
        }
        let results = entry.remove().results.into_values().collect();
        let event = self.next;
        self.next = EventNumber(event.0 + 1);
        self.counts.released += 1;
        Some((event, results))
    }

    /// Drops what is buffered (reports, expectations) of events from `from` on: they will be
    /// recomputed and expected again. With `from` past the next event, the events between are
    /// skipped too, and released no more; returns how many were skipped.
    pub fn rewind(&mut self, from: EventNumber) -> u64 {
        drop(self.pending.split_off(&from));
        if from <= self.next {
            return 0;
        }
        self.pending.clear();
        let skipped = from.0 - self.next.0;
        self.next = from;
        skipped
    }

    /// Counts `event` as released without it passing through the buffer (restored from a
    /// checkpoint): the buffer goes on from the event after it.
    pub fn restored(&mut self, event: EventNumber) {
        if event >= self.next {
            self.pending = self.pending.split_off(&EventNumber(event.0 + 1));
            self.next = EventNumber(event.0 + 1);
            self.counts.released += 1;
        }
    }

    /// Whether the buffer holds as many events as it may; stop reading reports until it drains.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity
    }

    /// The next event to be released.
    pub fn next_event(&self) -> EventNumber {
        self.next
    }

    /// The counters so far.
    pub fn counts(&self) -> OrderCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::Value;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn report(event: u64, worker: &str, analyses: &[&str]) -> EventReport {
        EventReport {
            event_number: EventNumber(event),
            worker: worker.into(),
            results: analyses
                .iter()
                .map(|a| ResultData {
                    event_number: EventNumber(event),
                    analysis: (*a).into(),
                    worker: worker.into(),
                    created_at: None,
                    payload: Arc::new(Value::from(worker)),
                })
                .collect(),
            missing: Vec::new(),
        }
    }

    fn workers(names: &[&str]) -> BTreeSet<WorkerName> {
        names.iter().map(|n| WorkerName::from(*n)).collect()
    }

    #[test]
    fn releases_in_order_once_every_worker_reported() {
        let mut order = Reorder::new(EventNumber(0), 16);
        order.expect(EventNumber(0), workers(&["w1", "w2"]));
        order.expect(EventNumber(1), workers(&["w2"]));
        order.expect(EventNumber(2), workers(&[]));
        assert_eq!(order.offer(report(1, "w2", &["stats"])), Offer::Accepted);
        assert_eq!(order.pop_ready(), None, "event 0 is not complete");
        assert_eq!(order.offer(report(0, "w1", &["stats"])), Offer::Accepted);
        assert_eq!(order.pop_ready(), None, "w2 has not reported event 0");
        assert_eq!(order.offer(report(0, "w2", &["stats"])), Offer::Accepted);
        let released: Vec<(u64, usize)> = std::iter::from_fn(|| order.pop_ready())
            .map(|(e, r)| (e.0, r.len()))
            .collect();
        // Broadcast event 0: one result per analysis, the first that arrived. Event 2 had no workers.
        assert_eq!(released, [(0, 1), (1, 1), (2, 0)]);
        assert_eq!(
            order.counts(),
            OrderCounts {
                released: 3,
                duplicates: 1
            }
        );
        assert_eq!(
            order.offer(report(1, "w3", &["stats"])),
            Offer::Duplicate,
            "already applied"
        );
    }

    #[test]
    fn a_reassigned_event_completes_with_its_new_worker() {
        let mut order = Reorder::new(EventNumber(0), 16);
        order.expect(EventNumber(0), workers(&["dead"]));
        order.expect(EventNumber(0), workers(&["w2"]));
        assert_eq!(order.offer(report(0, "w2", &["stats"])), Offer::Accepted);
        assert_eq!(order.pop_ready().map(|(e, _)| e), Some(EventNumber(0)));
    }

    #[test]
    fn a_rewind_drops_what_is_buffered_from_there_on() {
        let mut order = Reorder::new(EventNumber(0), 16);
        for event in 0..3 {
            order.expect(EventNumber(event), workers(&["w1"]));
        }
        order.offer(report(0, "w1", &["stats"]));
        assert_eq!(order.pop_ready().map(|(e, _)| e), Some(EventNumber(0)));
        order.offer(report(2, "w1", &["stats"]));
        assert_eq!(order.rewind(EventNumber(1)), 0);
        order.offer(report(1, "w1", &["stats"]));
        assert_eq!(
            order.pop_ready(),
            None,
            "event 1 waits for its new expectation"
        );
        order.expect(EventNumber(1), workers(&["w1"]));
        assert_eq!(order.pop_ready().map(|(e, _)| e), Some(EventNumber(1)));
        assert_eq!(
            order.offer(report(2, "w1", &["stats"])),
            Offer::Accepted,
            "its report from before the rewind was dropped"
        );
        // Past the next event: the events between are skipped.
        assert_eq!(order.rewind(EventNumber(10)), 8);
        assert_eq!(order.next_event(), EventNumber(10));
        assert_eq!(order.pop_ready(), None);
        assert_eq!(
            order.counts().released,
            2,
            "skipped events are not released"
        );
    }

    #[test]
    fn is_full_at_capacity() {
        let mut order = Reorder::new(EventNumber(0), 2);
        order.expect(EventNumber(5), workers(&["w"]));
        assert!(!order.is_full());
        order.expect(EventNumber(6), workers(&["w"]));
        assert!(order.is_full());
    }

    proptest! {
        /// Whatever the arrival order and however many copies arrive, every event is released
        /// once, in order, with one result per analysis.
        #[test]
        fn exactly_once_in_order(
            plan in proptest::collection::vec(proptest::collection::btree_set(0usize..3, 0..3), 1..20),
            shuffle in proptest::collection::vec(any::<proptest::sample::Index>(), 0..200),
            copies in 1usize..3,
        ) {
            let names = ["w0", "w1", "w2"];
            let mut order = Reorder::new(EventNumber(0), plan.len());
            let mut reports = Vec::new();
            for (event, assigned) in plan.iter().enumerate() {
                let assigned: Vec<&str> = assigned.iter().map(|i| names[*i]).collect();
                order.expect(EventNumber(event as u64), workers(&assigned));
                for worker in assigned {
                    for _ in 0..copies {
                        reports.push(report(event as u64, worker, &["a", "b"]));
                    }
                }
            }
            for index in &shuffle {
                if reports.len() > 1 {
                    let i = index.index(reports.len());
                    let last = reports.len() - 1;
                    reports.swap(i, last);
                }
            }
            let mut released = Vec::new();
            for r in reports {
                order.offer(r);
                while let Some((event, results)) = order.pop_ready() {
                    released.push((event.0, results.len()));
                }
            }
            let expected: Vec<(u64, usize)> = plan.iter().enumerate().map(|(e, assigned)| (e as u64, if assigned.is_empty() { 0 } else { 2 })).collect();
            // Events with no workers are complete at once; the rest as their reports arrive.
            while let Some((event, results)) = order.pop_ready() {
                released.push((event.0, results.len()));
            }
            prop_assert_eq!(released, expected);
        }
    }
}
