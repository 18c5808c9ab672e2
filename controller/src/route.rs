//! Routing: which real workers get each stream's frame of each event. A pure function of the
//! sequence, the live workers and the bindings made so far, used like timely's exchange closure;
//! the controller leases its output to ingesters and workers in batches.
//!
//! Binding is lazy, as in dranspose: a constraint number is bound to a real worker the first time
//! an event needs it, and every later slot with that number in the same part occurrence goes to
//! the same worker. Unlike dranspose, which binds a constraint to whichever worker asks first,
//! the router picks the eligible worker with the fewest unfinished events, so faster workers get
//! more work without a round trip per event, and requires the tags of *every* slot carrying the
//! number (dranspose checks only the first slot's, so a later slot can land on a worker without
//! its tags). A broadcast slot goes to every live worker carrying its tags.

use std::collections::{BTreeMap, BTreeSet};

use beamflow_protocol::{EventNumber, StreamName, WorkerName, WorkerTag};

use crate::mapping::{Sequence, Slot};

/// A live worker as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Its name.
    pub name: WorkerName,
    /// Its tags (`generic` by default).
    pub tags: BTreeSet<WorkerTag>,
}

/// Where one stream's frame of one event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Read and dropped (`[]` in the mapping).
    Drop,
    /// Sent to these workers.
    To(BTreeSet<WorkerName>),
}

/// One event's routes, for every stream that has a frame in it (dranspose's `WorkAssignment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The event.
    pub event_number: EventNumber,
    /// Per stream with a frame in this event.
    pub routes: BTreeMap<StreamName, Route>,
}

impl Assignment {
    /// Every worker that gets at least one frame of the event.
    pub fn workers(&self) -> BTreeSet<&WorkerName> {
        self.routes
            .values()
            .filter_map(|route| match route {
                Route::To(workers) => Some(workers),
                Route::Drop => None,
            })
            .flatten()
            .collect()
    }
}

/// Why an event cannot be routed now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The event is past the end of the sequence.
    #[error("event {0} is past the end of the sequence")]
    PastEnd(EventNumber),
    /// No live worker carries the tags a slot needs.
    #[error("event {event}, stream {stream}: no live worker carries the tags {tags:?}")]
    NoWorker {
        /// The event.
        event: EventNumber,
        /// The stream.
        stream: StreamName,
        /// The tags needed.
        tags: Vec<String>,
    },
}

/// The routing state of one scan.
#[derive(Debug, Default)]
pub struct Router {
    /// (part occurrence, constraint) → worker.
    bindings: BTreeMap<(usize, u64), WorkerName>,
    /// Unfinished events per worker; a new binding goes to the least loaded eligible worker.
    load: BTreeMap<WorkerName, u64>,
}

impl Router {
    /// A router with no bindings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `event` among the live `workers` and counts it as unfinished for every worker it
    /// goes to, until [`Router::finished`].
    pub fn route(
        &mut self,
        sequence: &Sequence,
        event: EventNumber,
        workers: &[Worker],
    ) -> Result<Assignment, RouteError> {
        let (occurrence, part, offset) =
            sequence.locate(event).ok_or(RouteError::PastEnd(event))?;
        let mut routes = BTreeMap::new();
        for (stream, slots) in part {
            let route = match slots.get(offset) {
                None | Some(Slot::Absent) => continue,
                Some(Slot::Discard) => Route::Drop,
                Some(Slot::Workers(virtual_workers)) => {
                    let mut to = BTreeSet::new();
                    for vw in virtual_workers {
                        match vw.constraint {
                            None => to.extend(
                                workers
                                    .iter()
                                    .filter(|w| vw.tags.is_subset(&w.tags))
                                    .map(|w| w.name.clone()),
                            ),
                            Some(constraint) => {
                                let bound = match self.bindings.get(&(occurrence, constraint)) {
                                    Some(name) if workers.iter().any(|w| &w.name == name) => {
                                        name.clone()
                                    }
                                    // Unbound, or bound to a worker that has gone: (re)bind, to
                                    // a worker with the tags of every slot with this number.
                                    _ => {
                                        let needed = sequence
                                            .constraint_tags(occurrence, constraint)
                                            .unwrap_or(&vw.tags);
                                        let least = workers
                                            .iter()
                                            .filter(|w| needed.is_subset(&w.tags))
                                            .min_by_key(|w| {
                                                (
                                                    self.load.get(&w.name).copied().unwrap_or(0),
                                                    &w.name,
                                                )
                                            })
                                            .ok_or_else(|| no_worker(event, stream, needed))?;
                                        self.bindings
                                            .insert((occurrence, constraint), least.name.clone());
                                        least.name.clone()
                                    }
                                };
                                to.insert(bound);
                            }
                        }
                    }
                    if let (true, Some(first)) = (to.is_empty(), virtual_workers.first()) {
                        return Err(no_worker(event, stream, &first.tags));
                    }
                    Route::To(to)
                }
            };
            routes.insert(stream.clone(), route);
        }
        let assignment = Assignment {
            event_number: event,
            routes,
        };
        for worker in assignment.workers() {
            *self.load.entry(worker.clone()).or_default() += 1;
        }
        Ok(assignment)
    }

    /// Records that `worker` finished one event.
    pub fn finished(&mut self, worker: &WorkerName) {
        if let Some(load) = self.load.get_mut(worker) {
            *load = load.saturating_sub(1);
        }
    }

    /// Forgets a worker that has gone: its unfinished count, so it cannot skew the balance if a
    /// worker of the same name joins again. Its bindings are replaced when next used.
    pub fn forget(&mut self, worker: &WorkerName) {
        self.load.remove(worker);
    }

    /// Forgets every worker's unfinished events (a rewind: none of them is awaited any more).
    /// The bindings stay, so a constraint keeps its worker across the rewind.
    pub fn reset_load(&mut self) {
        self.load.clear();
    }

    /// Unfinished events of `worker`.
    pub fn load(&self, worker: &WorkerName) -> u64 {
        self.load.get(worker).copied().unwrap_or(0)
    }
}

fn no_worker(event: EventNumber, stream: &StreamName, tags: &BTreeSet<WorkerTag>) -> RouteError {
    RouteError::NoWorker {
        event,
        stream: stream.clone(),
        tags: tags.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn worker(name: &str, tags: &[&str]) -> Worker {
        Worker {
            name: name.into(),
            tags: tags.iter().map(|t| WorkerTag::from(*t)).collect(),
        }
    }

    fn names(route: &Route) -> Vec<String> {
        match route {
            Route::To(workers) => workers.iter().map(ToString::to_string).collect(),
            Route::Drop => vec!["<drop>".to_owned()],
        }
    }

    #[test]
    fn pairs_broadcasts_debug_and_discards() {
        // Events 2n and 2n+1 on one worker; event 3 also to the debug worker; a pcap frame in
        // event 2 dropped.
        let body = r#"{"parts": {"main": {
            "det": [[{"constraint": 0}], [{"constraint": 0}], [{"constraint": 1}], [{"constraint": 1}, {"tags": ["debug"]}]],
            "pcap": [null, null, [], [{"constraint": 1}]]
        }}, "sequence": ["main"]}"#;
        let sequence = Sequence::from_json(body.as_bytes(), true).unwrap();
        let workers = [
            worker("w1", &["generic"]),
            worker("w2", &["generic"]),
            worker("dbg", &["debug"]),
        ];
        let mut router = Router::new();
        let all: Vec<Assignment> = (0..sequence.total_events())
            .map(|n| router.route(&sequence, EventNumber(n), &workers).unwrap())
            .collect();
        let det = StreamName::from("det");
        let pcap = StreamName::from("pcap");
        assert_eq!(
            names(&all[0].routes[&det]),
            ["dbg", "w1", "w2"],
            "start event goes to every worker"
        );
        assert_eq!(
            names(&all[1].routes[&det]),
            names(&all[2].routes[&det]),
            "constraint 0 on one worker"
        );
        assert_ne!(
            names(&all[1].routes[&det]),
            names(&all[3].routes[&det]),
            "constraint 1 on the less loaded worker"
        );
        assert_eq!(all[3].routes[&pcap], Route::Drop);
        assert!(!all[1].routes.contains_key(&pcap), "null slot: no frame");
        let four = names(&all[4].routes[&det]);
        assert!(
            four.contains(&"dbg".to_owned()) && four.len() == 2,
            "{four:?}"
        );
        assert_eq!(names(&all[4].routes[&pcap]), names(&all[3].routes[&det]));
        assert_eq!(
            names(&all[5].routes[&det]),
            ["dbg", "w1", "w2"],
            "end event goes to every worker"
        );
    }

    #[test]
    fn no_eligible_worker_is_an_error_naming_the_tags() {
        let sequence = Sequence::from_json(br#"{"parts": {"m": {"det": [[{"tags": ["gpu"], "constraint": 0}]]}}, "sequence": ["m"]}"#, false).unwrap();
        let error = Router::new()
            .route(&sequence, EventNumber(0), &[worker("w1", &["generic"])])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"event 0, stream det: no live worker carries the tags ["gpu"]"#
        );
    }

    proptest! {
        /// Every slot bound once; equal constraints in one occurrence on one worker; broadcasts
        /// reach every worker with the tags; every worker has the slot's tags.
        #[test]
        fn routing_invariants(
            slots in proptest::collection::vec(proptest::option::of(proptest::collection::vec((0u64..4, any::<bool>(), any::<bool>()), 0..3)), 1..12),
            repeats in 1usize..3,
            workers in proptest::collection::vec(any::<bool>(), 1..5),
        ) {
            // Each virtual worker: (constraint, broadcast?, needs the "fast" tag?).
            let to_json = |(c, broadcast, fast): &(u64, bool, bool)| {
                let tags = if *fast { serde_json::json!(["generic", "fast"]) } else { serde_json::json!(["generic"]) };
                serde_json::json!({"tags": tags, "constraint": if *broadcast { serde_json::Value::Null } else { serde_json::json!(c) }})
            };
            let det: Vec<serde_json::Value> = slots.iter().map(|s| match s {
                None => serde_json::Value::Null,
                Some(vws) => serde_json::Value::Array(vws.iter().map(to_json).collect()),
            }).collect();
            let body = serde_json::json!({"parts": {"p": {"det": det}}, "sequence": vec!["p"; repeats]});
            let Ok(sequence) = Sequence::from_json(body.to_string().as_bytes(), false) else { return Ok(()) };
            // Worker 0 always carries "fast" so every slot has an eligible worker.
            let workers: Vec<Worker> = workers.iter().enumerate().map(|(i, fast)| {
                worker(&format!("w{i}"), if *fast || i == 0 { &["generic", "fast"] } else { &["generic"] })
            }).collect();
            let mut router = Router::new();
            // Per (occurrence, constraint): the workers every slot carrying it went to. A single
            // binding means this never becomes empty.
            let mut common: BTreeMap<(usize, u64), BTreeSet<WorkerName>> = BTreeMap::new();
            let stream = StreamName::from("det");
            for n in 0..sequence.total_events() {
                let event = EventNumber(n);
                let assignment = router.route(&sequence, event, &workers).unwrap();
                let (occurrence, _, offset) = sequence.locate(event).unwrap();
                match &slots[offset] {
                    None => prop_assert!(!assignment.routes.contains_key(&stream)),
                    Some(vws) if vws.is_empty() => prop_assert_eq!(&assignment.routes[&stream], &Route::Drop),
                    Some(vws) => {
                        let Route::To(to) = &assignment.routes[&stream] else { panic!("not routed") };
                        for (c, broadcast, fast) in vws {
                            let eligible: BTreeSet<WorkerName> = workers.iter()
                                .filter(|w| !*fast || w.tags.contains("fast"))
                                .map(|w| w.name.clone()).collect();
                            if *broadcast {
                                prop_assert!(eligible.is_subset(to), "broadcast missed a worker");
                            } else {
                                let candidates: BTreeSet<WorkerName> = to.intersection(&eligible).cloned().collect();
                                let entry = common.entry((occurrence, *c)).or_insert_with(|| candidates.clone());
                                *entry = entry.intersection(&candidates).cloned().collect();
                                prop_assert!(!entry.is_empty(), "constraint {} split over workers in one occurrence", c);
                            }
                        }
                    }
                }
            }
        }
    }
}
