//! Who is connected: hellos, liveness, and sending to every component of a role.

use std::collections::BTreeSet;
use std::time::Instant;

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
        let previous = self.members.get(&key).map(|m| m.instance);
        let member = Member {
            identity: identity.to_vec(),
            instance: hello.instance,
            tags: hello.tags.into_iter().collect(),
            streams: hello.streams.into_iter().collect(),
            endpoint: hello.endpoint,
            last_seen: now,
            status: hello.status,
        };
        let tags = member.tags.clone();
        self.outbox.push((identity.to_vec(), FromController::Heard));
        self.members.insert(key.clone(), member);
        let joined = previous != Some(hello.instance);
        if joined {
            // A new component, or a restarted one (which lost whatever it held).
            info!(role = %hello.role, name = %hello.name, restarted = previous.is_some(), "Component joined.");
        }
        if hello.role == Role::Worker {
            let name = WorkerName::from(hello.name.as_str());
            if joined && previous.is_some() {
                self.counts.dead_workers += 1;
                let reassigned = match self.current.as_mut() {
                    Some(current) => current.scan.remove_workers(&BTreeSet::from([name.clone()])),
                    None => Ok(Vec::new()),
                };
                self.after_reassignment(reassigned);
            }
            if let Some(current) = self.current.as_mut() {
                current.scan.heartbeat(name, tags, now);
            }
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

    /// Declares components silent for [`DEAD_AFTER`] dead, and re-routes the events of dead
    /// workers.
    pub(super) fn remove_silent(&mut self, now: Instant) {
        let silent: Vec<(Role, String)> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) >= DEAD_AFTER)
            .map(|(key, _)| key.clone())
            .collect();
        let mut dead_workers = BTreeSet::new();
        for key in silent {
            warn!(role = %key.0, name = %key.1, "No heartbeat for {DEAD_AFTER:?}: declared dead.");
            self.members.remove(&key);
            if key.0 == Role::Worker {
                dead_workers.insert(WorkerName::from(key.1.as_str()));
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ensemble::tests::{ensemble, hello, leased_to, sequence};

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
        ensemble.tick(t0 + DEAD_AFTER);
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
