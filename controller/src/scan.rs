//! One scan's bookkeeping in the controller: which workers are alive, which events are leased,
//! how far the reducer has got, and what to re-send when a worker dies. Pure: time is passed in,
//! so the liveness rules are tested without sleeping.
//!
//! Flow control is a window: events are leased only while they are fewer than `window` ahead of
//! the reducer, and a lease stops at the first event that takes a worker past its limit of
//! unfinished events. Nothing downstream can therefore queue more than a window of events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beamflow_protocol::{EventNumber, WorkerName, WorkerTag};
use serde::Serialize;

use crate::mapping::Sequence;
use crate::route::{Assignment, RouteError, Router, Worker};

/// A worker silent this long is dead (the bound).
pub const DEAD_AFTER: Duration = Duration::from_secs(2);

/// How far a scan has got, as dranspose's `GET /api/v1/progress` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Events leased so far (a count, as dranspose reports it).
    pub last_assigned: u64,
    /// Events the reducer has applied.
    pub completed_events: u64,
    /// Events in the scan.
    pub total_events: u64,
    /// Whether every event has been applied (or the scan was stopped).
    pub finished: bool,
}

#[derive(Debug)]
struct Live {
    tags: BTreeSet<WorkerTag>,
    last_seen: Instant,
}

/// A re-lease after a worker died: the event's new routes, and the workers that are new to it
/// (the ingesters re-send only to those; the others already have the frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    /// The event's routes now.
    pub assignment: Assignment,
    /// Workers that did not have the event before.
    pub new_workers: BTreeSet<WorkerName>,
}

/// The controller's state for one scan.
#[derive(Debug)]
pub struct Scan {
    /// Shared, so `GET /api/v1/sequence` serialises it without holding the controller's lock.
    sequence: Arc<Sequence>,
    router: Router,
    workers: BTreeMap<WorkerName, Live>,
    /// Next event to lease.
    next: u64,
    /// Events the reducer has applied: all below this number.
    reduced: u64,
    /// Leased and not yet reduced, to re-route if a worker dies.
    outstanding: BTreeMap<EventNumber, Assignment>,
    window: u64,
    worker_limit: u64,
    stopped: bool,
}

impl Scan {
    /// A scan over `sequence`, at most `window` events ahead of the reducer and `worker_limit`
    /// unfinished events per worker.
    pub fn new(sequence: Sequence, window: u64, worker_limit: u64) -> Self {
        Self {
            sequence: Arc::new(sequence),
            router: Router::new(),
            workers: BTreeMap::new(),
            next: 0,
            reduced: 0,
            outstanding: BTreeMap::new(),
            window: window.max(1),
            worker_limit: worker_limit.max(1),
            stopped: false,
        }
    }

    /// A worker said it is alive (first hello or heartbeat).
    pub fn heartbeat(&mut self, name: WorkerName, tags: BTreeSet<WorkerTag>, now: Instant) {
        self.workers.insert(
            name,
            Live {
                tags,
                last_seen: now,
            },
        );
    }

    /// The live workers as the router sees them.
    fn live(&self) -> Vec<Worker> {
        self.workers
            .iter()
            .map(|(name, live)| Worker {
                name: name.clone(),
                tags: live.tags.clone(),
            })
            .collect()
    }

    /// Leases as many next events as the window and the workers' limits allow.
    pub fn lease(&mut self) -> Result<Vec<Assignment>, RouteError> {
        let workers = self.live();
        let mut leased = Vec::new();
        let total = self.sequence.total_events();
        while !self.stopped && self.next < total && self.next < self.reduced + self.window {
            let assignment = self
                .router
                .route(&self.sequence, EventNumber(self.next), &workers)?;
            self.next += 1;
            let saturated = assignment
                .workers()
                .iter()
                .any(|w| self.router.load(w) >= self.worker_limit);
            self.outstanding
                .insert(assignment.event_number, assignment.clone());
            leased.push(assignment);
            if saturated {
                break;
            }
        }
        Ok(leased)
    }

    /// `worker` finished these events (its credit comes back).
    pub fn done(&mut self, worker: &WorkerName, events: u64) {
        for _ in 0..events {
            self.router.finished(worker);
        }
    }

    /// The reducer has applied every event below `up_to`.
    pub fn reduced(&mut self, up_to: EventNumber) {
        self.reduced = self.reduced.max(up_to.0);
        self.outstanding = self.outstanding.split_off(&EventNumber(self.reduced));
    }

    /// Declares workers silent for [`DEAD_AFTER`] dead, and re-routes their unreduced events
    /// among the living.
    pub fn reap(
        &mut self,
        now: Instant,
    ) -> Result<(BTreeSet<WorkerName>, Vec<Reassignment>), RouteError> {
        let dead: BTreeSet<WorkerName> = self
            .workers
            .iter()
            .filter(|(_, live)| now.duration_since(live.last_seen) >= DEAD_AFTER)
            .map(|(name, _)| name.clone())
            .collect();
        let reassigned = self.remove_workers(&dead)?;
        Ok((dead, reassigned))
    }

    /// Takes workers out (dead, or restarted and so without the events they held), and
    /// re-routes their unreduced events among the living.
    pub fn remove_workers(
        &mut self,
        gone: &BTreeSet<WorkerName>,
    ) -> Result<Vec<Reassignment>, RouteError> {
        let mut reassigned = Vec::new();
        if gone.is_empty() {
            return Ok(reassigned);
        }
        for name in gone {
            self.workers.remove(name);
            self.router.forget(name);
        }
        let workers = self.live();
        let affected: Vec<EventNumber> = self
            .outstanding
            .iter()
            .filter(|(_, a)| a.workers().iter().any(|w| gone.contains(*w)))
            .map(|(event, _)| *event)
            .collect();
        for event in affected {
            let before: BTreeSet<WorkerName> = self.outstanding[&event]
                .workers()
                .into_iter()
                .cloned()
                .collect();
            let assignment = self.router.route(&self.sequence, event, &workers)?;
            let new_workers = assignment
                .workers()
                .into_iter()
                .filter(|w| !before.contains(*w))
                .cloned()
                .collect();
            self.outstanding.insert(event, assignment.clone());
            reassigned.push(Reassignment {
                assignment,
                new_workers,
            });
        }
        Ok(reassigned)
    }

    /// Goes on from event `from`: everything leased from there on is forgotten, to be leased
    /// again (the reducer restarted, or the controller did and lost its leases). The workers'
    /// unfinished counts restart from zero, since none of their events is awaited any more.
    pub fn rewind(&mut self, from: EventNumber) {
        self.next = from.0;
        self.reduced = from.0;
        self.outstanding.clear();
        self.router.reset_load();
    }

    /// Events leased and not yet reduced, in order.
    pub fn outstanding(&self) -> impl Iterator<Item = &Assignment> {
        self.outstanding.values()
    }

    /// The next event to lease.
    pub fn next_event(&self) -> EventNumber {
        EventNumber(self.next)
    }

    /// The scan's mapping.
    pub fn sequence(&self) -> &Arc<Sequence> {
        &self.sequence
    }

    /// Unfinished events per live worker.
    pub fn load(&self) -> BTreeMap<WorkerName, u64> {
        self.workers
            .keys()
            .map(|name| (name.clone(), self.router.load(name)))
            .collect()
    }

    /// Ends the scan early (`POST /api/v1/stop`).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The scan's progress.
    pub fn progress(&self) -> Progress {
        let total = self.sequence.total_events();
        Progress {
            last_assigned: self.next,
            completed_events: self.reduced,
            total_events: total,
            finished: self.stopped || self.reduced >= total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(events: u64, per_constraint: u64) -> Sequence {
        let slots: Vec<serde_json::Value> = (0..events)
            .map(|i| serde_json::json!([{"constraint": i / per_constraint}]))
            .collect();
        let body = serde_json::json!({"parts": {"main": {"det": slots}}, "sequence": ["main"]});
        Sequence::from_json(body.to_string().as_bytes(), false).unwrap()
    }

    fn generic() -> BTreeSet<WorkerTag> {
        BTreeSet::from([WorkerTag::from("generic")])
    }

    #[test]
    fn leases_stay_inside_the_window_and_the_worker_limit() {
        let t0 = Instant::now();
        let mut scan = Scan::new(sequence(100, 1), 10, 3);
        scan.heartbeat("w1".into(), generic(), t0);
        scan.heartbeat("w2".into(), generic(), t0);
        // Two workers with a limit of 3: the lease stops once one of them reaches it.
        let first = scan.lease().unwrap();
        assert_eq!(
            first.len(),
            5,
            "alternating w1, w2: the fifth takes w1 to 3"
        );
        // Finishing events frees credit; the window (10 ahead of the reducer) still binds.
        scan.done(&"w1".into(), 3);
        scan.done(&"w2".into(), 2);
        let second = scan.lease().unwrap();
        assert_eq!(second.first().map(|a| a.event_number), Some(EventNumber(5)));
        scan.done(&"w1".into(), 10);
        scan.done(&"w2".into(), 10);
        scan.lease().unwrap();
        assert_eq!(
            scan.progress().last_assigned,
            10,
            "window of 10, nothing reduced yet"
        );
        scan.reduced(EventNumber(10));
        scan.lease().unwrap();
        assert!(scan.progress().last_assigned > 10);
    }

    #[test]
    fn a_dead_workers_events_go_to_the_living_exactly_where_needed() {
        let t0 = Instant::now();
        let mut scan = Scan::new(sequence(6, 2), 100, 100);
        scan.heartbeat("w1".into(), generic(), t0);
        scan.heartbeat("w2".into(), generic(), t0);
        let leased = scan.lease().unwrap();
        assert_eq!(leased.len(), 6);
        let on_w2: Vec<EventNumber> = leased
            .iter()
            .filter(|a| a.workers().contains(&WorkerName::from("w2")))
            .map(|a| a.event_number)
            .collect();
        assert!(!on_w2.is_empty());
        scan.reduced(EventNumber(1));
        // w1 keeps beating; w2 falls silent.
        let later = t0 + DEAD_AFTER;
        scan.heartbeat("w1".into(), generic(), later);
        let (dead, reassigned) = scan.reap(later).unwrap();
        assert_eq!(dead, BTreeSet::from([WorkerName::from("w2")]));
        let moved: Vec<EventNumber> = reassigned
            .iter()
            .map(|r| r.assignment.event_number)
            .collect();
        let expected: Vec<EventNumber> = on_w2.into_iter().filter(|e| e.0 >= 1).collect();
        assert_eq!(
            moved, expected,
            "only unreduced events of the dead worker move"
        );
        for r in &reassigned {
            assert_eq!(r.new_workers, BTreeSet::from([WorkerName::from("w1")]));
        }
        assert!(!scan.progress().finished);
        scan.reduced(EventNumber(6));
        assert!(scan.progress().finished);
    }

    #[test]
    fn heartbeats_within_the_deadline_keep_a_worker_alive() {
        let t0 = Instant::now();
        let mut scan = Scan::new(sequence(2, 1), 10, 10);
        scan.heartbeat("w1".into(), generic(), t0);
        let (dead, _) = scan
            .reap(t0 + DEAD_AFTER - Duration::from_millis(1))
            .unwrap();
        assert!(dead.is_empty());
    }

    #[test]
    fn stop_finishes_the_scan_and_stops_leasing() {
        let t0 = Instant::now();
        let mut scan = Scan::new(sequence(10, 1), 10, 10);
        scan.heartbeat("w1".into(), generic(), t0);
        scan.stop();
        assert!(scan.lease().unwrap().is_empty());
        assert!(scan.progress().finished);
    }
}
