//! Who is connected: hellos, liveness, and sending to every component of a role.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use beamflow_protocol::control::{
    ComponentStatus, FromController, Hello, IngesterStatus, Role, WorkerStatus,
};
use beamflow_protocol::{StreamName, WorkerName, WorkerTag};
use tracing::{info, warn};

use super::Ensemble;
use crate::scan::DEAD_AFTER;

/// A connected component, as its latest hello describes it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(super) identity: Vec<u8>,
    pub(crate) instance: u64,
    pub(crate) tags: BTreeSet<WorkerTag>,
    pub(crate) streams: BTreeSet<StreamName>,
    pub(crate) endpoint: Option<String>,
    pub(super) last_seen: Instant,
    pub(crate) status: ComponentStatus,
    /// Since when a reducer or ingester has been silent past [`DEAD_AFTER`]: it is waited for,
    /// never declared dead, since nothing else can take its place in the scan.
    pub(crate) stalled_since: Option<Instant>,
}

impl Ensemble {
    pub(super) fn name_of(&self, role: Role, identity: &[u8]) -> Option<String> {
        self.members
            .iter()
            .find(|((r, _), m)| *r == role && m.identity == identity)
            .map(|((_, name), _)| name.clone())
    }

    pub(super) fn hello(&mut self, identity: &[u8], hello: Hello, now: Instant) {
        let key = (hello.role, hello.name.clone());
        let previous = self
            .members
            .get(&key)
            .map(|m| (m.instance, m.stalled_since));
        // Where a restarted ingester's predecessor had got to, by its last hello.
        let running = self.running_scan().map(|(scan, _)| scan);
        let predecessor_next = match self.members.get(&key).map(|m| &m.status) {
            Some(ComponentStatus::Ingester(status)) if Some(status.scan) == running => {
                status.next_frames.clone()
            }
            _ => Vec::new(),
        };
        // The scan a joining worker or ingester says it is in, already.
        let in_scan = match &hello.status {
            ComponentStatus::Ingester(status) => Some(status.scan),
            ComponentStatus::Worker(status) => Some(status.scan),
            ComponentStatus::Reducer(_) => None,
        };
        let member = Member {
            identity: identity.to_vec(),
            instance: hello.instance,
            tags: hello.tags.into_iter().collect(),
            streams: hello.streams.into_iter().collect(),
            endpoint: hello.endpoint,
            last_seen: now,
            status: hello.status,
            stalled_since: None,
        };
        let tags = member.tags.clone();
        self.outbox.push((identity.to_vec(), FromController::Heard));
        self.members.insert(key.clone(), member);
        let restarted = previous.is_some_and(|(instance, _)| instance != hello.instance);
        let joined = previous.is_none() || restarted;
        if joined {
            // A new component, or a restarted one (which lost whatever it held).
            info!(role = %hello.role, name = %hello.name, restarted, "Component joined.");
        } else if let Some((_, Some(since))) = previous {
            info!(role = %hello.role, name = %hello.name, silent_s = now.saturating_duration_since(since).as_secs_f64() + DEAD_AFTER.as_secs_f64(),
                "Stalled component is back; the scan goes on where it was.");
        }
        match hello.role {
            Role::Worker => {
                let name = WorkerName::from(hello.name.as_str());
                if restarted {
                    self.counts.dead_workers += 1;
                    let reassigned = match self.current.as_mut() {
                        Some(current) => {
                            current.scan.remove_workers(&BTreeSet::from([name.clone()]))
                        }
                        None => Ok(Vec::new()),
                    };
                    self.after_reassignment(reassigned);
                }
                if let Some(current) = self.current.as_mut() {
                    current.scan.heartbeat(name, tags, now);
                }
            }
            Role::Reducer if joined => self.reducer_joined(restarted),
            Role::Ingester if restarted => {
                return self.ingester_restarted(&key, identity, &predecessor_next);
            }
            Role::Reducer | Role::Ingester => {}
        }
        if !joined {
            return;
        }
        if hello.role == Role::Worker {
            self.send_worker_endpoints();
        }
        if let Some(message) = self.scan_message_for(&key) {
            self.outbox.push((identity.to_vec(), message));
            if hello.role == Role::Ingester {
                self.send_worker_endpoints();
            }
        }
        if let Some(scan) = in_scan {
            self.rejoined_after_rewind(&key, identity, scan);
        }
    }

    pub(super) fn reducer_endpoint(&self) -> Option<String> {
        self.members
            .iter()
            .find(|((role, _), _)| *role == Role::Reducer)
            .and_then(|(_, m)| m.endpoint.clone())
    }

    pub(crate) fn members_with(&self, role: Role) -> impl Iterator<Item = (&String, &Member)> {
        self.members
            .iter()
            .filter(move |((r, _), _)| *r == role)
            .map(|((_, name), member)| (name, member))
    }

    /// Each worker's counters, as its latest hello carried them.
    pub fn worker_statuses(&self) -> impl Iterator<Item = (&String, &WorkerStatus)> {
        self.members_with(Role::Worker)
            .filter_map(|(name, m)| match &m.status {
                ComponentStatus::Worker(status) => Some((name, status)),
                _ => None,
            })
    }

    /// Each ingester's counters and its source's state, as its latest hello carried them.
    pub fn ingester_statuses(&self) -> impl Iterator<Item = (&String, &IngesterStatus)> {
        self.members_with(Role::Ingester)
            .filter_map(|(name, m)| match &m.status {
                ComponentStatus::Ingester(status) => Some((name, status)),
                _ => None,
            })
    }

    pub(super) fn send_to_all(&mut self, role: Role, message: &FromController) {
        let identities: Vec<Vec<u8>> = self
            .members_with(role)
            .map(|(_, m)| m.identity.clone())
            .collect();
        for identity in identities {
            self.outbox.push((identity, message.clone()));
        }
    }

    pub(super) fn send_worker_endpoints(&mut self) {
        let endpoints: Vec<(WorkerName, String)> = self
            .members_with(Role::Worker)
            .filter_map(|(name, m)| Some((name.as_str().into(), m.endpoint.clone()?)))
            .collect();
        self.send_to_all(Role::Ingester, &FromController::Workers { endpoints });
    }

    /// Declares workers silent for [`DEAD_AFTER`] dead and re-routes their events; a silent
    /// reducer or ingester is marked stalled and waited for (the scan pauses until it is back or
    /// restarted), since no other component can take its place.
    pub(super) fn remove_silent(&mut self, now: Instant) {
        let silent: Vec<(Role, String)> = self
            .members
            .iter()
            .filter(|(_, m)| m.stalled_since.is_none())
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) >= DEAD_AFTER)
            .map(|(key, _)| key.clone())
            .collect();
        let mut dead_workers = BTreeSet::new();
        for key in silent {
            if key.0 == Role::Worker {
                warn!(role = %key.0, name = %key.1, "No heartbeat for {DEAD_AFTER:?}: declared dead.");
                self.members.remove(&key);
                dead_workers.insert(WorkerName::from(key.1.as_str()));
            } else if let Some(member) = self.members.get_mut(&key) {
                warn!(role = %key.0, name = %key.1,
                    "No heartbeat for {DEAD_AFTER:?}: stalled; the scan waits for it to come back or restart.");
                member.stalled_since = Some(now);
                self.counts.stalls += 1;
            }
        }
        if !dead_workers.is_empty() {
            self.counts.dead_workers += dead_workers.len() as u64;
            let reassigned = match self.current.as_mut() {
                Some(current) => current.scan.remove_workers(&dead_workers),
                None => Ok(Vec::new()),
            };
            self.after_reassignment(reassigned);
            self.send_worker_endpoints();
        }
    }

    /// Time the controller itself did not run (paused, or its lock held by slow work) does not
    /// count against anyone: every member is credited with it, so messages that queued while it
    /// was away are read before anyone is judged silent.
    pub(super) fn forgive_own_absence(&mut self, now: Instant) {
        let last = self.last_tick.replace(now);
        let Some(away) = last.map(|last| now.saturating_duration_since(last)) else {
            return;
        };
        if away < OWN_ABSENCE {
            return;
        }
        warn!(
            away_s = away.as_secs_f64(),
            "The controller did not run for a while; nobody is judged silent for that time."
        );
        for member in self.members.values_mut() {
            member.last_seen = member.last_seen.checked_add(away).unwrap_or(now).min(now);
        }
    }

    /// The components waited for: stalled reducers and ingesters, with their silence so far.
    pub(crate) fn stalled(&self, now: Instant) -> Vec<(Role, &String, f64)> {
        self.members
            .iter()
            .filter(|(_, m)| m.stalled_since.is_some())
            .map(|((role, name), m)| {
                let silent = now.saturating_duration_since(m.last_seen).as_secs_f64();
                (*role, name, silent)
            })
            .collect()
    }
}

/// A gap between two of the controller's own turns this long is its own absence, not its
/// members' (it normally turns every few milliseconds).
const OWN_ABSENCE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ensemble::tests::{ensemble, hello, leased_to, sequence, tick_through};

    #[test]
    fn a_silent_worker_is_dead_after_two_seconds_and_its_events_go_elsewhere() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        let outbox = ensemble.take_outbox();
        let on_w2 = leased_to(&outbox, "w2");
        assert!(!on_w2.is_empty());
        let later = t0 + DEAD_AFTER - Duration::from_millis(100);
        for (id, role, name) in [
            (&b"w1"[..], Role::Worker, "w1"),
            (b"i", Role::Ingester, "det"),
            (b"r", Role::Reducer, "reducer"),
        ] {
            ensemble.receive(id, hello(role, name, 1), later);
        }
        tick_through(&mut ensemble, t0, t0 + DEAD_AFTER);
        assert_eq!(ensemble.counts().dead_workers, 1);
        let outbox = ensemble.take_outbox();
        let resent: Vec<u64> = outbox
            .iter()
            .filter_map(|(_, m)| match m {
                FromController::Lease { events, .. } => Some(events),
                _ => None,
            })
            .flatten()
            .filter(|e| e.resend_to == vec![WorkerName::from("w1")])
            .map(|e| e.event.0)
            .collect();
        assert_eq!(resent, on_w2);
    }

    #[test]
    fn a_restarted_worker_gives_up_its_events_at_once() {
        let t0 = Instant::now();
        let mut ensemble = ensemble(t0);
        ensemble.start(sequence(10), t0).unwrap();
        let on_w2 = leased_to(&ensemble.take_outbox(), "w2");
        ensemble.receive(b"w2b", hello(Role::Worker, "w2", 2), t0);
        let outbox = ensemble.take_outbox();
        let moved = outbox
            .iter()
            .filter_map(|(_, m)| match m {
                FromController::Lease { events, .. } => Some(events),
                _ => None,
            })
            .flatten()
            .filter(|e| !e.resend_to.is_empty())
            .count();
        assert_eq!(moved, on_w2.len());
        assert!(
            outbox
                .iter()
                .any(|(id, m)| id == b"w2b" && matches!(m, FromController::Scan { .. })),
            "the restarted worker rejoins the running scan"
        );
    }
}
