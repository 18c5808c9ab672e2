//! Going on after a restart: a reducer or ingester that restarted mid-scan, and the controller's
//! own restart, which finds the running scan in its record.
//!
//! The rule is one rewind: once the reducer says where it resumes (its checkpoint's end, or where
//! it simply is when only the controller restarted), everything leased from there on is
//! forgotten by everyone and leased again, and the ingesters re-send the frames they retained.
//! The reducer's `Reduced` only announces events its checkpoint covers, and ingesters keep frames
//! until then, so a rewind finds every frame it needs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use beamflow_protocol::control::{FromController, HEARTBEAT_MS, Role};
use beamflow_protocol::{EventNumber, StreamName};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::{Ensemble, Member};
use crate::mapping::Sequence;
use crate::route::Assignment;

/// The controller's record of its latest scan, in its state folder.
#[derive(Debug, Serialize, Deserialize)]
struct ScanRecord {
    number: u64,
    uuid: String,
    live: bool,
    finished: bool,
    /// The sequence as it was asked for ([`Sequence::to_record`]); none once finished.
    sequence: Option<serde_json::Value>,
}

/// Why the state folder's record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// It cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// It is not a record this controller wrote.
    #[error("{path} is not a scan record: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
}

/// How long a restarted controller waits for every component to say hello before it rewinds
/// the scan: three heartbeats.
const REJOIN: Duration = Duration::from_millis(3 * HEARTBEAT_MS);

fn record_path(folder: &Path) -> PathBuf {
    folder.join("controller").join("scan.json")
}

/// A record to write.
struct Job {
    number: u64,
    uuid: String,
    live: bool,
    /// The running scan's sequence; none once it finished.
    sequence: Option<Arc<Sequence>>,
}

/// Writes the records, in the order they are made, on a thread of its own: serialising a
/// sequence of millions of slots takes seconds, which the controller's lock must not wait for.
/// Dropped, it writes what is queued before it goes.
pub(crate) struct Recorder {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(path: PathBuf) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("scan-record".to_owned())
            .spawn(move || {
                for job in queue {
                    if let Err(error) = write_record(&path, &job) {
                        warn!(path = %path.display(), %error, "Cannot record the scan; a restarted controller will not resume it.");
                    }
                }
            })
            .map_err(|error| warn!(%error, "Cannot start the scan recorder; scans are not recorded."))
            .ok();
        Self {
            jobs: thread.is_some().then_some(jobs),
            thread,
        }
    }

    fn record(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes atomically: a crash leaves the old record or the new one, never half of one.
fn write_record(path: &Path, job: &Job) -> std::io::Result<()> {
    let record = ScanRecord {
        number: job.number,
        uuid: job.uuid.clone(),
        live: job.live,
        finished: job.sequence.is_none(),
        sequence: job.sequence.as_ref().map(|s| s.to_record()),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec(&record)?)?;
    std::fs::rename(&temporary, path)
}

impl Ensemble {
    /// Keeps the running scan in `folder`, and resumes the scan recorded there if the last
    /// controller did not finish it.
    pub fn with_state(mut self, folder: PathBuf) -> Result<Self, RecordError> {
        let path = record_path(&folder);
        self.state = Some(Recorder::start(path.clone()));
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(error) => return Err(RecordError::Read { path, error }),
        };
        let invalid = |error: String| RecordError::Invalid {
            path: path.clone(),
            error,
        };
        let record: ScanRecord =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        self.scans = record.number;
        let Some(sequence) = record.sequence.filter(|_| !record.finished) else {
            return Ok(self);
        };
        let sequence = Sequence::from_record(sequence).map_err(|e| invalid(e.to_string()))?;
        let now = Instant::now();
        info!(scan = record.number, uuid = %record.uuid, events = sequence.total_events(),
            "Resuming the scan the last controller left running; waiting for the reducer to say where it is.");
        self.current = Some(super::Current {
            number: record.number,
            uuid: record.uuid,
            live: record.live,
            scan: crate::scan::Scan::new(sequence, self.pacing.window, self.pacing.worker_limit),
            started: now,
            finish_sent: false,
            released: EventNumber(0),
            done: Default::default(),
            error: None,
            awaiting_reducer: true,
            resume_at: None,
            rejoin_until: Some(now + REJOIN),
            rewound_from: None,
        });
        self.counts.resumed_scans += 1;
        Ok(self)
    }

    /// Records the current scan: the writing happens on the recorder's thread, off the lock.
    pub(super) fn record_scan(&self) {
        let (Some(recorder), Some(current)) = (&self.state, &self.current) else {
            return;
        };
        recorder.record(Job {
            number: current.number,
            uuid: current.uuid.clone(),
            live: current.live,
            sequence: (!current.finish_sent).then(|| Arc::clone(current.scan.sequence())),
        });
    }

    /// A reducer joined while a scan runs: nothing more is leased until it says where it
    /// resumes ([`Ensemble::resumed`]).
    pub(super) fn reducer_joined(&mut self, restarted: bool) {
        if restarted {
            self.counts.reducer_restarts += 1;
        }
        let Some(current) = self.current.as_mut().filter(|c| !c.finish_sent) else {
            return;
        };
        current.awaiting_reducer = true;
        info!(
            scan = current.number,
            restarted, "Reducer joined mid-scan; waiting for it to say where it resumes."
        );
    }

    /// The reducer resumes the scan at `at`: everything from there on is leased again, once
    /// everyone can hear it ([`Ensemble::rewind_when_ready`]).
    pub(super) fn resumed(&mut self, identity: &[u8], scan: u64, at: EventNumber, now: Instant) {
        if self.name_of(Role::Reducer, identity).is_none() {
            return;
        }
        if let Some(current) = self
            .current
            .as_mut()
            .filter(|c| c.number == scan && c.awaiting_reducer && !c.finish_sent)
        {
            current.resume_at = Some(at);
        }
        self.rewind_when_ready(now);
    }

    /// Rewinds the scan to where the reducer resumes. A restarted controller first gives every
    /// component [`REJOIN`] to say hello: one that joins after the rewind would keep the old
    /// controller's leases and expectations.
    pub(super) fn rewind_when_ready(&mut self, now: Instant) {
        let Some(current) = self.current.as_mut().filter(|c| {
            c.awaiting_reducer && !c.finish_sent && c.rejoin_until.is_none_or(|t| now >= t)
        }) else {
            return;
        };
        let Some(at) = current.resume_at.take() else {
            return;
        };
        let scan = current.number;
        current.awaiting_reducer = false;
        // Frames below `released` are gone from the ingesters: a reducer whose checkpoint ends
        // before them cannot have them again.
        let from = at.max(current.released);
        if at < from {
            let lost = from.0 - at.0;
            self.counts.lost_events += lost;
            error!(
                scan,
                first = at.0,
                last = from.0 - 1,
                lost,
                "The reducer's state lacks these events: no checkpoint covered them (set the pipeline's `state` folder) and the ingesters no longer hold their frames."
            );
        }
        let leased = current.scan.next_event();
        let recomputed = leased.0.saturating_sub(from.0);
        current.scan.rewind(from);
        current.released = from;
        current.rewound_from = Some(from);
        self.counts.rewinds += 1;
        self.counts.rewound_events += recomputed;
        info!(
            scan,
            from = from.0,
            recomputed,
            "Scan rewound: events from here on are recomputed from the frames the ingesters retained."
        );
        let message = FromController::Rewind {
            scan,
            from,
            reducer: self.reducer_endpoint(),
        };
        for role in [Role::Ingester, Role::Worker, Role::Reducer] {
            self.send_to_all(role, &message);
        }
    }

    /// A worker or ingester that was in the running scan joined after it was rewound (it was
    /// silent through a restarted controller's [`REJOIN`]): it hears the rewind too, and an
    /// ingester is given the leases of every event not yet reduced.
    pub(super) fn rejoined_after_rewind(
        &mut self,
        key: &(Role, String),
        identity: &[u8],
        scan: u64,
    ) {
        let Some(current) = self
            .current
            .as_ref()
            .filter(|c| c.number == scan && !c.finish_sent)
        else {
            return;
        };
        let (Some(from), Some(member)) = (current.rewound_from, self.members.get(key)) else {
            return;
        };
        let message = FromController::Rewind {
            scan,
            from,
            reducer: self.reducer_endpoint(),
        };
        let lease = (key.0 == Role::Ingester)
            .then(|| self.unreduced_leases(member))
            .flatten();
        self.outbox.push((identity.to_vec(), message));
        self.outbox
            .extend(lease.map(|lease| (identity.to_vec(), lease)));
    }

    /// The running scan's unreduced events, as a lease for `ingester` (none if it reads no
    /// frame of them).
    fn unreduced_leases(&self, ingester: &Member) -> Option<FromController> {
        let current = self.current.as_ref()?;
        let outstanding: Vec<Assignment> = current.scan.outstanding().cloned().collect();
        let events = self.leases_for(ingester, &outstanding, None);
        (!events.is_empty()).then_some(FromController::Lease {
            scan: current.number,
            events,
        })
    }

    /// An ingester restarted mid-scan: it takes up its predecessor's place. It starts each
    /// stream where the predecessor had got to by its last hello (`predecessor_next`; at the
    /// first frame not yet leased if that is unknown). The predecessor's leased frames below
    /// that are gaps: the ones it had sent are with their workers, the others are gone, since no
    /// source sends them again, and their events are completed without them.
    pub(super) fn ingester_restarted(
        &mut self,
        key: &(Role, String),
        identity: &[u8],
        predecessor_next: &[(StreamName, u64)],
    ) {
        self.counts.ingester_restarts += 1;
        let Some(mut message) = self.scan_message_for(key) else {
            self.send_worker_endpoints();
            return;
        };
        let (Some(current), Some(member)) = (self.current.as_ref(), self.members.get(key)) else {
            return;
        };
        let next = current.scan.next_event();
        let reduced = EventNumber(current.scan.progress().completed_events);
        let sequence = current.scan.sequence();
        let starts: Vec<(StreamName, u64)> = member
            .streams
            .iter()
            .map(|stream| {
                // Frames of reduced events have no lease any more: a first frame among them
                // would wait for one for ever.
                let reduced = sequence.frames_before(stream, reduced);
                let leased = sequence.frames_before(stream, next);
                let reached = predecessor_next
                    .iter()
                    .find(|(s, _)| s == stream)
                    .map_or(leased, |(_, reached)| *reached);
                (stream.clone(), reached.clamp(reduced, leased.max(reduced)))
            })
            .collect();
        let lease = self.unreduced_leases(member);
        warn!(ingester = %key.1, scan = current.number, first_frames = ?starts,
            "Ingester restarted mid-scan: it goes on from where its predecessor's last hello said it was; leased frames below that are gaps where the predecessor had not sent them.");
        if let FromController::Scan { first_frames, .. } = &mut message {
            *first_frames = starts;
        }
        self.outbox.push((identity.to_vec(), message));
        self.send_worker_endpoints();
        self.outbox
            .extend(lease.map(|lease| (identity.to_vec(), lease)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use beamflow_protocol::control::{ComponentStatus, IngesterStatus, ToController, WorkerStatus};

    use super::*;
    use crate::ensemble::Pacing;
    use crate::ensemble::tests::{ensemble, hello, leased_to, sequence, tick_through};
    use crate::scan::DEAD_AFTER;

    fn rewinds(outbox: &[(Vec<u8>, FromController)]) -> Vec<(Vec<u8>, u64, Option<String>)> {
        outbox
            .iter()
            .filter_map(|(id, m)| match m {
                FromController::Rewind { from, reducer, .. } => {
                    Some((id.clone(), from.0, reducer.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn scans_to(outbox: &[(Vec<u8>, FromController)], identity: &[u8]) -> usize {
        outbox
            .iter()
            .filter(|(id, m)| id == identity && matches!(m, FromController::Scan { .. }))
            .count()
    }

    /// Keeps the workers alive at `now`; the reducer and ingester stay silent.
    fn workers_beat(ensemble: &mut Ensemble, now: Instant) {
        ensemble.receive(b"w1", hello(Role::Worker, "w1", 1), now);
        ensemble.receive(b"w2", hello(Role::Worker, "w2", 1), now);
    }

    #[test]
    fn a_silent_reducer_or_ingester_is_waited_for_not_declared_dead() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        ensemble.take_outbox();
        let later = t0 + DEAD_AFTER + Duration::from_millis(100);
        workers_beat(&mut ensemble, later);
        tick_through(&mut ensemble, t0, later);
        let stalled: Vec<String> = ensemble
            .stalled(later)
            .into_iter()
            .map(|(role, name, _)| format!("{role} {name}"))
            .collect();
        assert_eq!(stalled, ["ingester det", "reducer reducer"]);
        assert_eq!(ensemble.counts().stalls, 2);
        // Back with the same instance: nothing is reset, the scan goes on.
        ensemble.receive(b"i", hello(Role::Ingester, "det", 1), later);
        ensemble.receive(b"r", hello(Role::Reducer, "reducer", 1), later);
        let outbox = ensemble.take_outbox();
        assert_eq!(scans_to(&outbox, b"i") + scans_to(&outbox, b"r"), 0);
        assert!(ensemble.stalled(later).is_empty());
        ensemble.receive(
            b"r",
            ToController::Reduced {
                scan: 1,
                up_to: EventNumber(10),
            },
            later,
        );
        ensemble.tick(later);
        assert!(ensemble.progress().finished);
    }

    #[test]
    fn time_the_controller_did_not_run_counts_against_nobody() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        ensemble.tick(t0);
        // Paused for 3 s: the hellos that queued meanwhile have not been read yet.
        let resumed = t0 + Duration::from_secs(3);
        ensemble.tick(resumed);
        assert_eq!(ensemble.counts().dead_workers, 0);
        assert!(ensemble.stalled(resumed).is_empty());
        // Silence after the controller is back still counts.
        tick_through(&mut ensemble, resumed, resumed + DEAD_AFTER);
        assert_eq!(ensemble.counts().dead_workers, 2);
    }

    #[test]
    fn a_restarted_reducer_resumes_where_its_checkpoint_ends() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        ensemble.receive(
            b"r",
            ToController::Reduced {
                scan: 1,
                up_to: EventNumber(4),
            },
            t0,
        );
        ensemble.tick(t0);
        ensemble.take_outbox();
        // A new reducer process, on a new port.
        let mut restarted = hello(Role::Reducer, "reducer", 2);
        if let ToController::Hello(hello) = &mut restarted {
            hello.endpoint = Some("tcp://reducer-2".into());
        }
        ensemble.receive(b"r2", restarted, t0);
        assert_eq!(scans_to(&ensemble.take_outbox(), b"r2"), 1);
        assert_eq!(ensemble.counts().reducer_restarts, 1);
        // The old process's last words are not the new one's.
        ensemble.receive(
            b"r",
            ToController::Reduced {
                scan: 1,
                up_to: EventNumber(10),
            },
            t0,
        );
        ensemble.tick(t0);
        assert!(!ensemble.progress().finished);
        assert!(ensemble.take_outbox().iter().all(|(_, m)| !matches!(
            m,
            FromController::Lease { .. } | FromController::Finish { .. }
        )));
        // Its checkpoint covers events 0..4: the rest is leased again, to everyone's knowledge.
        ensemble.receive(
            b"r2",
            ToController::Resumed {
                scan: 1,
                at: EventNumber(4),
            },
            t0,
        );
        ensemble.tick(t0);
        let outbox = ensemble.take_outbox();
        let rewinds = rewinds(&outbox);
        assert_eq!(rewinds.len(), 4, "ingester, two workers and the reducer");
        assert!(
            rewinds
                .iter()
                .all(|(_, from, reducer)| *from == 4
                    && reducer.as_deref() == Some("tcp://reducer-2"))
        );
        let mut leased = leased_to(&outbox, "w1");
        leased.extend(leased_to(&outbox, "w2"));
        leased.sort_unstable();
        assert_eq!(leased, (4..10).collect::<Vec<_>>());
        assert_eq!(ensemble.counts().rewound_events, 6);
        assert_eq!(ensemble.progress().completed_events, 4);
    }

    #[test]
    fn a_restarted_reducer_without_checkpoint_is_told_what_its_state_lacks() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        ensemble.receive(
            b"r",
            ToController::Reduced {
                scan: 1,
                up_to: EventNumber(4),
            },
            t0,
        );
        ensemble.tick(t0);
        ensemble.receive(b"r2", hello(Role::Reducer, "reducer", 2), t0);
        ensemble.receive(
            b"r2",
            ToController::Resumed {
                scan: 1,
                at: EventNumber(0),
            },
            t0,
        );
        let outbox = ensemble.take_outbox();
        assert!(rewinds(&outbox).iter().all(|(_, from, _)| *from == 4));
        assert_eq!(ensemble.counts().lost_events, 4);
    }

    #[test]
    fn a_restarted_ingester_takes_up_its_predecessors_leases_from_the_next_frame() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        ensemble.receive(
            b"r",
            ToController::Reduced {
                scan: 1,
                up_to: EventNumber(3),
            },
            t0,
        );
        ensemble.tick(t0);
        ensemble.take_outbox();
        ensemble.receive(b"i2", hello(Role::Ingester, "det", 2), t0);
        let outbox = ensemble.take_outbox();
        let first_frames = outbox.iter().find_map(|(id, m)| match m {
            FromController::Scan { first_frames, .. } if id == b"i2" => Some(first_frames.clone()),
            _ => None,
        });
        assert_eq!(
            first_frames,
            Some(vec![("det".into(), 10)]),
            "its predecessor said nothing of its frames: after the 10 leased"
        );
        let leased: Vec<u64> = outbox
            .iter()
            .filter(|(id, _)| id == b"i2")
            .filter_map(|(_, m)| match m {
                FromController::Lease { events, .. } => Some(events),
                _ => None,
            })
            .flatten()
            .map(|e| e.event.0)
            .collect();
        assert_eq!(leased, (3..10).collect::<Vec<_>>(), "the unreduced ones");
        assert_eq!(ensemble.counts().ingester_restarts, 1);
        // Restarted again, after its last hello said it had placed frames 0..5: it goes on
        // from frame 5, and the leased frames below are its predecessor's.
        let mut said = hello(Role::Ingester, "det", 2);
        if let ToController::Hello(hello) = &mut said {
            hello.status = ComponentStatus::Ingester(IngesterStatus {
                scan: 1,
                next_frames: vec![("det".into(), 5)],
                ..IngesterStatus::default()
            });
        }
        ensemble.receive(b"i2", said, t0);
        ensemble.take_outbox();
        ensemble.receive(b"i3", hello(Role::Ingester, "det", 3), t0);
        let first_frames = ensemble
            .take_outbox()
            .into_iter()
            .find_map(|(id, m)| match m {
                FromController::Scan { first_frames, .. } if id == b"i3" => Some(first_frames),
                _ => None,
            });
        assert_eq!(first_frames, Some(vec![("det".into(), 5)]));
    }

    #[test]
    fn a_restarted_controller_resumes_the_recorded_scan_where_the_reducer_is() {
        let folder = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut first = ensemble(t0).with_state(folder.path().to_owned()).unwrap();
        let uuid = first.start(sequence(10), t0).unwrap();
        drop(first);
        let mut second = Ensemble::new(Pacing::default(), Vec::new())
            .with_state(folder.path().to_owned())
            .unwrap();
        assert_eq!(second.counts().resumed_scans, 1);
        assert!(!second.progress().finished);
        assert_eq!(second.progress().total_events, 10);
        for (id, role, name) in [
            (&b"i"[..], Role::Ingester, "det"),
            (b"w1", Role::Worker, "w1"),
            (b"w2", Role::Worker, "w2"),
            (b"r", Role::Reducer, "reducer"),
        ] {
            second.receive(id, hello(role, name, 1), t0);
        }
        second.tick(t0);
        let outbox = second.take_outbox();
        assert!(outbox.iter().any(|(id, m)| id == b"r"
            && matches!(m, FromController::Scan { scan: 1, uuid: u, .. } if *u == uuid)));
        assert!(
            leased_to(&outbox, "w1").is_empty(),
            "nothing leased before the reducer says where it is"
        );
        second.receive(
            b"r",
            ToController::Resumed {
                scan: 1,
                at: EventNumber(6),
            },
            t0,
        );
        second.tick(t0);
        assert!(
            rewinds(&second.take_outbox()).is_empty(),
            "everyone gets time to say hello first"
        );
        let rejoined = Instant::now() + REJOIN;
        for (id, role, name) in [
            (&b"i"[..], Role::Ingester, "det"),
            (b"w1", Role::Worker, "w1"),
            (b"r", Role::Reducer, "reducer"),
        ] {
            second.receive(id, hello(role, name, 1), rejoined);
        }
        tick_through(&mut second, t0, rejoined);
        let outbox = second.take_outbox();
        assert_eq!(rewinds(&outbox).len(), 4);
        let mut leased = leased_to(&outbox, "w1");
        leased.extend(leased_to(&outbox, "w2"));
        leased.sort_unstable();
        assert_eq!(leased, (6..10).collect::<Vec<_>>());
        // A worker of the scan that comes back only now hears of the rewind too.
        let mut late = hello(Role::Worker, "w3", 1);
        if let ToController::Hello(hello) = &mut late {
            hello.status = ComponentStatus::Worker(WorkerStatus {
                scan: 1,
                ..WorkerStatus::default()
            });
        }
        second.receive(b"w3", late, rejoined);
        let outbox = second.take_outbox();
        assert_eq!(
            rewinds(&outbox),
            [(b"w3".to_vec(), 6, Some("tcp://reducer".to_owned()))]
        );
        second.receive(
            b"r",
            ToController::Reduced {
                scan: 1,
                up_to: EventNumber(10),
            },
            t0,
        );
        second.tick(t0);
        assert!(second.progress().finished);
        // The next scan is numbered after the resumed one, and a third controller resumes nothing.
        second.start(sequence(2), t0).unwrap();
        assert_eq!(second.running_scan(), Some((2, false)));
        drop(second);
        let third = Ensemble::new(Pacing::default(), Vec::new())
            .with_state(folder.path().to_owned())
            .unwrap();
        assert_eq!(
            third.counts().resumed_scans,
            1,
            "scan 2 still runs in its record"
        );
    }
}
