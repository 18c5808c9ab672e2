//! A scan's life: started over a sequence, leased in windows, re-routed when a worker dies,
//! finished; and the live scan that resumes whenever none runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beamflow_protocol::control::{FromController, LeasedEvent, LeasedFrame, Role};
use beamflow_protocol::{EventNumber, StreamName, WorkerName, WorkerTag};
use tracing::{info, warn};

use super::{Ensemble, Member};
use crate::mapping::Sequence;
use crate::route::{Assignment, Route};
use crate::scan::{Progress, Reassignment, Scan};

/// How long the live scan waits to resume after a posted sequence finished: scan software that
/// polls `/api/v1/progress` every second or so sees its sequence `finished` before the live scan
/// takes over the progress again.
pub const LIVE_RESUME_AFTER: Duration = Duration::from_secs(5);

/// Why a scan cannot start (answered as HTTP 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// No reducer has said hello.
    #[error("no reducer is connected")]
    NoReducer,
    /// The mapping names streams no ingester offers.
    #[error("streams {0:?} not available")]
    StreamsUnavailable(Vec<String>),
    /// More distinct constraints in one event than live workers.
    #[error("only {available} workers available, but {required} required")]
    TooFewWorkers {
        /// Live workers.
        available: usize,
        /// Needed by the mapping.
        required: usize,
    },
    /// The mapping asks for tags that no live worker carries.
    #[error("no live worker carries the tag {0}")]
    NoWorkerWithTag(String),
}

/// The current (or last) scan.
pub(crate) struct Current {
    pub(crate) number: u64,
    pub(crate) uuid: String,
    pub(crate) live: bool,
    pub(crate) scan: Scan,
    pub(crate) started: Instant,
    pub(crate) finish_sent: bool,
    pub(super) released: EventNumber,
    pub(crate) done: BTreeMap<WorkerName, u64>,
    pub(crate) error: Option<String>,
    /// A reducer joined mid-scan (restarted, or met by a restarted controller): nothing is
    /// leased until it says where it resumes, and the scan is rewound to there.
    pub(crate) awaiting_reducer: bool,
    /// Where the reducer said it resumes, until the scan is rewound to there.
    pub(super) resume_at: Option<EventNumber>,
    /// A restarted controller rewinds no sooner than this: everyone has said hello by then.
    pub(super) rejoin_until: Option<Instant>,
    /// Where the scan was last rewound to, for a component that joins afterwards.
    pub(super) rewound_from: Option<EventNumber>,
}

/// The scan `beamflow run --live` resumes whenever no other scan runs.
pub(super) struct LiveScan {
    pub(super) sequence: Sequence,
    /// Since when no scan has run.
    pub(super) idle_since: Option<Instant>,
    /// The last reason it could not resume, logged once.
    pub(super) error: Option<String>,
}

impl Ensemble {
    /// Resume `sequence` as the live scan [`LIVE_RESUME_AFTER`] after any scan ends (or none
    /// runs), so the control room's histories go on between the sequences scan software posts.
    pub fn resume_live(&mut self, sequence: Sequence) {
        self.live = Some(LiveScan {
            sequence,
            idle_since: None,
            error: None,
        });
    }

    /// Starts the live scan now (it then resumes whenever no other scan runs, if
    /// [`Ensemble::resume_live`] asked for it).
    pub fn start_live(&mut self, sequence: Sequence, now: Instant) -> Result<String, StartError> {
        let uuid = self.start(sequence, now)?;
        if let Some(current) = self.current.as_mut() {
            current.live = true;
        }
        Ok(uuid)
    }

    /// What a component needs to know of the running scan when it joins.
    pub(super) fn scan_message_for(&self, key: &(Role, String)) -> Option<FromController> {
        let current = self.current.as_ref().filter(|c| !c.finish_sent)?;
        let member = self.members.get(key)?;
        let sequence = current.scan.sequence();
        // The reducer's files record the whole scan: every stream, and the mapping.
        let reducer = key.0 == Role::Reducer;
        let streams = if reducer {
            sequence.streams()
        } else {
            member.streams.iter().cloned().collect()
        };
        Some(FromController::Scan {
            scan: current.number,
            uuid: current.uuid.clone(),
            frames: streams
                .into_iter()
                .map(|s| {
                    let count = sequence.frame_count(&s);
                    (s, count)
                })
                .collect(),
            reducer: self.reducer_endpoint(),
            parameters: self.parameter_values(),
            first_frames: Vec::new(),
            mapping: reducer
                .then(|| sequence.record_json_within(beamflow_protocol::control::MAPPING_IN_SCAN))
                .flatten(),
        })
    }

    /// Starts a scan over `sequence`; answers its uuid.
    pub fn start(&mut self, sequence: Sequence, now: Instant) -> Result<String, StartError> {
        if self.reducer_endpoint().is_none() {
            return Err(StartError::NoReducer);
        }
        let offered: BTreeSet<StreamName> = self
            .members_with(Role::Ingester)
            .flat_map(|(_, m)| m.streams.iter().cloned())
            .collect();
        let missing: Vec<String> = sequence
            .streams()
            .difference(&offered)
            .map(|s| s.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(StartError::StreamsUnavailable(missing));
        }
        let workers: Vec<(String, BTreeSet<WorkerTag>)> = self
            .members_with(Role::Worker)
            .map(|(name, m)| (name.clone(), m.tags.clone()))
            .collect();
        let required = sequence.min_workers();
        if workers.len() < required {
            return Err(StartError::TooFewWorkers {
                available: workers.len(),
                required,
            });
        }
        for tag in sequence.tags() {
            if !workers.iter().any(|(_, tags)| tags.contains(&tag)) {
                return Err(StartError::NoWorkerWithTag(tag.to_string()));
            }
        }
        if let Some(old) = &self.current
            && !old.finish_sent
        {
            let finish = FromController::Finish { scan: old.number };
            for role in [Role::Ingester, Role::Worker, Role::Reducer] {
                self.send_to_all(role, &finish);
            }
        }
        self.scans += 1;
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut scan = Scan::new(sequence, self.pacing.window, self.pacing.worker_limit);
        for (name, tags) in workers {
            scan.heartbeat(name.into(), tags, now);
        }
        info!(scan = self.scans, %uuid, events = scan.progress().total_events, "Scan started.");
        self.write_mapping_and_parameters(&uuid, scan.sequence());
        self.current = Some(Current {
            number: self.scans,
            uuid: uuid.clone(),
            live: false,
            scan,
            started: now,
            finish_sent: false,
            released: EventNumber(0),
            done: BTreeMap::new(),
            error: None,
            awaiting_reducer: false,
            resume_at: None,
            rejoin_until: None,
            rewound_from: None,
        });
        self.record_scan();
        let keys: Vec<(Role, String)> = self.members.keys().cloned().collect();
        for key in keys {
            if let (Some(message), Some(member)) =
                (self.scan_message_for(&key), self.members.get(&key))
            {
                self.outbox.push((member.identity.clone(), message));
            }
        }
        self.send_worker_endpoints();
        self.tick(now);
        Ok(uuid)
    }

    /// Ends the current scan early (`POST /api/v1/stop`).
    pub fn stop(&mut self) {
        if let Some(current) = self.current.as_mut() {
            current.scan.stop();
        }
    }

    /// Periodic work: declares silent components dead, leases what the window allows, tells
    /// ingesters what they may release, and ends a finished scan.
    pub fn tick(&mut self, now: Instant) {
        self.forgive_own_absence(now);
        self.resume_live_when_idle(now);
        self.remove_silent(now);
        self.rewind_when_ready(now);
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if current.finish_sent || current.awaiting_reducer {
            return;
        }
        match current.scan.lease() {
            Ok(leased) => {
                current.error = None;
                if !leased.is_empty() {
                    self.distribute(&leased, None);
                }
            }
            Err(error) => {
                if current.error.as_deref() != Some(&error.to_string()) {
                    warn!(%error, "Cannot lease events; waiting for workers.");
                    current.error = Some(error.to_string());
                }
            }
        }
        let Some(current) = self.current.as_mut() else {
            return;
        };
        let progress = current.scan.progress();
        let reduced = EventNumber(progress.completed_events);
        if reduced > current.released {
            current.released = reduced;
            let message = FromController::Released {
                scan: current.number,
                up_to: reduced,
            };
            self.send_to_all(Role::Ingester, &message);
        }
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if progress.finished {
            current.finish_sent = true;
            let message = FromController::Finish {
                scan: current.number,
            };
            info!(
                scan = current.number,
                completed = progress.completed_events,
                "Scan finished."
            );
            for role in [Role::Ingester, Role::Worker, Role::Reducer] {
                self.send_to_all(role, &message);
            }
            self.record_scan();
        }
    }

    /// Starts the live scan again once no scan has run for [`LIVE_RESUME_AFTER`].
    fn resume_live_when_idle(&mut self, now: Instant) {
        let running = self.current.as_ref().is_some_and(|c| !c.finish_sent);
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if running {
            live.idle_since = None;
            return;
        }
        let since = *live.idle_since.get_or_insert(now);
        if now.duration_since(since) < LIVE_RESUME_AFTER {
            return;
        }
        let sequence = live.sequence.clone();
        match self.start_live(sequence, now) {
            Ok(uuid) => {
                info!(%uuid, "Live scan resumed.");
                if let Some(live) = self.live.as_mut() {
                    live.error = None;
                }
            }
            Err(error) => {
                if let Some(live) = self.live.as_mut()
                    && live.error.as_deref() != Some(&error.to_string())
                {
                    warn!(%error, "Cannot resume the live scan; trying again.");
                    live.error = Some(error.to_string());
                }
            }
        }
    }

    pub(super) fn after_reassignment(
        &mut self,
        reassigned: Result<Vec<Reassignment>, crate::route::RouteError>,
    ) {
        match reassigned {
            Ok(reassigned) if !reassigned.is_empty() => {
                self.counts.reassigned_events += reassigned.len() as u64;
                info!(
                    events = reassigned.len(),
                    "Re-routed a dead worker's events."
                );
                let assignments: Vec<Assignment> =
                    reassigned.iter().map(|r| r.assignment.clone()).collect();
                let new: Vec<BTreeSet<WorkerName>> =
                    reassigned.into_iter().map(|r| r.new_workers).collect();
                self.distribute(&assignments, Some(&new));
            }
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "Cannot re-route a dead worker's events.");
                if let Some(current) = self.current.as_mut() {
                    current.error = Some(error.to_string());
                }
            }
        }
    }

    /// Sends expectations to the reducer and workers, then leases to ingesters. With
    /// `new_workers` (a re-assignment), workers hear only of events new to them.
    ///
    /// Downstream first: a worker whose parts come before its expectation drops them after the
    /// event timeout, and a controller stopped between the two sends (or one whose sends to the
    /// ingester went out first) would make those events incomplete.
    fn distribute(
        &mut self,
        assignments: &[Assignment],
        new_workers: Option<&[BTreeSet<WorkerName>]>,
    ) {
        let Some(current) = self.current.as_ref() else {
            return;
        };
        let scan = current.number;
        let mut messages = Vec::new();
        for (name, worker) in self.members_with(Role::Worker) {
            let name = WorkerName::from(name.as_str());
            let events: Vec<(EventNumber, Vec<StreamName>)> = assignments
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    new_workers
                        .and_then(|n| n.get(*i))
                        .is_none_or(|n| n.contains(&name))
                })
                .filter_map(|(_, assignment)| {
                    let streams: Vec<StreamName> = assignment
                        .routes
                        .iter()
                        .filter(|(_, route)| {
                            matches!(route, Route::To(workers) if workers.contains(&name))
                        })
                        .map(|(stream, _)| stream.clone())
                        .collect();
                    (!streams.is_empty()).then_some((assignment.event_number, streams))
                })
                .collect();
            if !events.is_empty() {
                messages.push((
                    worker.identity.clone(),
                    FromController::Expect { scan, events },
                ));
            }
        }
        for (_, ingester) in self.members_with(Role::Ingester) {
            let events = self.leases_for(ingester, assignments, new_workers);
            if !events.is_empty() {
                messages.push((
                    ingester.identity.clone(),
                    FromController::Lease { scan, events },
                ));
            }
        }
        let expect = FromController::ExpectWorkers {
            scan,
            events: assignments
                .iter()
                .map(|a| (a.event_number, a.workers().into_iter().cloned().collect()))
                .collect(),
        };
        self.send_to_all(Role::Reducer, &expect);
        self.outbox.extend(messages);
    }

    /// The frames of `assignments` that `ingester` reads, as leases.
    pub(super) fn leases_for(
        &self,
        ingester: &Member,
        assignments: &[Assignment],
        new_workers: Option<&[BTreeSet<WorkerName>]>,
    ) -> Vec<LeasedEvent> {
        let Some(current) = self.current.as_ref() else {
            return Vec::new();
        };
        let sequence = current.scan.sequence();
        assignments
            .iter()
            .enumerate()
            .filter_map(|(i, assignment)| {
                let frames: Vec<LeasedFrame> = assignment
                    .routes
                    .iter()
                    .filter(|(stream, _)| ingester.streams.contains(*stream))
                    .filter_map(|(stream, route)| {
                        Some(LeasedFrame {
                            stream: stream.clone(),
                            frame: sequence.frame_of_event(stream, assignment.event_number)?,
                            workers: match route {
                                Route::Drop => Vec::new(),
                                Route::To(workers) => workers.iter().cloned().collect(),
                            },
                        })
                    })
                    .collect();
                (!frames.is_empty()).then(|| LeasedEvent {
                    event: assignment.event_number,
                    frames,
                    resend_to: new_workers
                        .and_then(|n| n.get(i))
                        .map(|n| n.iter().cloned().collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The current scan's progress (a finished, empty one before any scan).
    pub fn progress(&self) -> Progress {
        self.current.as_ref().map_or(
            Progress {
                last_assigned: 0,
                completed_events: 0,
                total_events: 0,
                finished: true,
            },
            |c| {
                let mut progress = c.scan.progress();
                progress.finished = c.finish_sent;
                progress
            },
        )
    }

    /// The scan running now, if one is: its number and whether it is a live scan.
    pub fn running_scan(&self) -> Option<(u64, bool)> {
        self.current
            .as_ref()
            .filter(|c| !c.finish_sent)
            .map(|c| (c.number, c.live))
    }

    /// The current scan's mapping, as `GET /api/v1/sequence` returns it: shared, to be
    /// serialised after the lock is let go.
    pub fn sequence(&self) -> Option<Arc<Sequence>> {
        self.current.as_ref().map(|c| Arc::clone(c.scan.sequence()))
    }

    /// The current (or last) scan.
    pub(crate) fn current(&self) -> Option<&Current> {
        self.current.as_ref()
    }

    /// Whether the live scan resumes when no other scan runs.
    pub(crate) fn resumes_live(&self) -> bool {
        self.live.is_some()
    }
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::control::ToController;

    use super::*;
    use crate::ensemble::Pacing;
    use crate::ensemble::tests::{ensemble, hello, leased_to, sequence};

    #[test]
    fn a_scan_is_refused_with_reasons() {
        let t0 = Instant::now();
        let mut ensemble = Ensemble::new(Pacing::default(), Vec::new());
        assert_eq!(ensemble.start(sequence(2), t0), Err(StartError::NoReducer));
        ensemble.receive(b"r", hello(Role::Reducer, "reducer", 1), t0);
        assert_eq!(
            ensemble.start(sequence(2), t0).unwrap_err().to_string(),
            "streams [\"det\"] not available"
        );
        ensemble.receive(b"i", hello(Role::Ingester, "det", 1), t0);
        assert_eq!(
            ensemble.start(sequence(2), t0).unwrap_err().to_string(),
            "only 0 workers available, but 1 required"
        );
    }

    #[test]
    fn a_scan_leases_every_event_to_ingesters_workers_and_reducer() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        let outbox = ensemble.take_outbox();
        let (mut w1, mut w2) = (leased_to(&outbox, "w1"), leased_to(&outbox, "w2"));
        assert_eq!(w1.len() + w2.len(), 10);
        w1.append(&mut w2);
        w1.sort_unstable();
        assert_eq!(w1, (0..10).collect::<Vec<_>>());
        let scans = outbox
            .iter()
            .filter(|(_, m)| matches!(m, FromController::Scan { .. }))
            .count();
        assert_eq!(scans, 4, "every component hears of the scan");
        // Downstream hears of the events before an ingester may send their frames.
        let first_lease = outbox
            .iter()
            .position(|(_, m)| matches!(m, FromController::Lease { .. }))
            .unwrap();
        let last_expectation = outbox
            .iter()
            .rposition(|(_, m)| {
                matches!(
                    m,
                    FromController::Expect { .. } | FromController::ExpectWorkers { .. }
                )
            })
            .unwrap();
        assert!(
            last_expectation < first_lease,
            "expectations before leases: {outbox:?}"
        );
        ensemble.receive(
            b"r",
            ToController::Reduced {
                scan: 1,
                up_to: EventNumber(10),
            },
            t0,
        );
        ensemble.tick(t0);
        assert!(ensemble.progress().finished);
        let outbox = ensemble.take_outbox();
        assert!(
            outbox
                .iter()
                .any(|(_, m)| matches!(m, FromController::Released { up_to, .. } if up_to.0 == 10))
        );
        assert_eq!(
            outbox
                .iter()
                .filter(|(_, m)| matches!(m, FromController::Finish { scan: 1 }))
                .count(),
            4
        );
    }
}
