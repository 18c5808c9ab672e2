//! The controller's state, without sockets: who is connected, the parameters, the current scan,
//! and the control messages all of that makes it send. The socket loop ([`crate::node`]) feeds it
//! what arrives and sends what it queues; the REST API reads and changes it under a lock. Time is
//! passed in, so liveness is tested without sleeping.
//!
//! The state is one struct because one control message touches several concerns at once (a
//! worker's hello may re-route the running scan's events); its methods are split by concern:
//!
//! - `membership`: who is connected, liveness, and sending to them.
//! - `parameters`: the parameters, their versions and what is written beside the dumps.
//! - `lifecycle`: starting, leasing, re-routing and finishing a scan; the live scan.
//! - `recovery`: going on after a reducer, ingester or the controller itself restarted.
//!
//! The REST API's views of it (`config`, `status`, `load`) are in [`crate::http`].

mod lifecycle;
mod membership;
mod parameters;
mod recovery;

use std::collections::BTreeMap;
use std::time::Instant;

use beamflow_protocol::control::{FromController, Role, ToController};
use beamflow_protocol::{ParameterDescription, ParameterName, WorkerName};
use serde::Serialize;

pub(crate) use lifecycle::Current;
use lifecycle::LiveScan;
pub use lifecycle::{LIVE_RESUME_AFTER, StartError};
pub(crate) use membership::Member;
use parameters::Versioned;
pub use parameters::{ParameterLimits, SetParameterError};
pub use recovery::RecordError;

/// How a scan is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Events leased ahead of the reducer at most (bounds every queue and the retention).
    pub window: u64,
    /// Unfinished events per worker at most.
    pub worker_limit: u64,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            window: 1024,
            worker_limit: 256,
        }
    }
}

/// Counters for `/api/v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EnsembleCounts {
    /// Workers declared dead (silent for 2 s) or replaced by a restart.
    pub dead_workers: u64,
    /// Events re-routed from dead workers.
    pub reassigned_events: u64,
    /// Control messages that did not decode.
    pub bad_messages: u64,
    /// Times a reducer or ingester fell silent past 2 s and was waited for.
    pub stalls: u64,
    /// Reducers that restarted mid-scan.
    pub reducer_restarts: u64,
    /// Ingesters that restarted mid-scan.
    pub ingester_restarts: u64,
    /// Scans resumed from the record a previous controller left.
    pub resumed_scans: u64,
    /// Rewinds: the scan went on from where the reducer resumed.
    pub rewinds: u64,
    /// Events leased again by rewinds.
    pub rewound_events: u64,
    /// Events the reducer's state lacks: released before any checkpoint covered them.
    pub lost_events: u64,
}

/// The controller's state.
pub struct Ensemble {
    members: BTreeMap<(Role, String), Member>,
    parameters: BTreeMap<ParameterName, Versioned>,
    descriptions: Vec<ParameterDescription>,
    pacing: Pacing,
    current: Option<Current>,
    scans: u64,
    outbox: Vec<(Vec<u8>, FromController)>,
    counts: EnsembleCounts,
    live: Option<LiveScan>,
    /// Records the running scan in the state folder, for a restarted controller.
    state: Option<recovery::Recorder>,
    /// The last turn of the controller's loop: a long gap is its own absence.
    last_tick: Option<Instant>,
    /// How large and how many parameters may be.
    limits: ParameterLimits,
    /// Where `dump_prefix` may point.
    roots: beamflow_net::files::Roots,
}

impl Ensemble {
    /// A controller whose pipeline declares `descriptions` (the analyses' and accumulators'
    /// parameters; the ingesters' `dump_prefix` and `dump_max_mb` are added).
    pub fn new(pacing: Pacing, descriptions: Vec<ParameterDescription>) -> Self {
        let descriptions = parameters::with_recording(descriptions);
        Self {
            members: BTreeMap::new(),
            parameters: BTreeMap::new(),
            descriptions,
            pacing,
            current: None,
            scans: 0,
            outbox: Vec::new(),
            counts: EnsembleCounts::default(),
            live: None,
            state: None,
            last_tick: None,
            limits: ParameterLimits::default(),
            roots: beamflow_net::files::Roots::default_roots(),
        }
    }

    /// With these parameter limits instead of the defaults.
    pub fn with_parameter_limits(mut self, limits: ParameterLimits) -> Self {
        self.limits = limits;
        self
    }

    /// With `dump_prefix` confined to `roots` instead of the temporary folder and the working
    /// directory.
    pub fn with_roots(mut self, roots: beamflow_net::files::Roots) -> Self {
        self.roots = roots;
        self
    }

    /// The parameter limits.
    pub fn parameter_limits(&self) -> ParameterLimits {
        self.limits
    }

    /// Where `dump_prefix` may point.
    pub fn roots(&self) -> &beamflow_net::files::Roots {
        &self.roots
    }

    /// Takes one control message from the component with socket identity `identity`.
    pub fn receive(&mut self, identity: &[u8], message: ToController, now: Instant) {
        match message {
            ToController::Hello(hello) => self.hello(identity, hello, now),
            ToController::Done { scan, events } => {
                if let Some(name) = self.name_of(Role::Worker, identity)
                    && let Some(current) = self.current.as_mut()
                    && current.number == scan
                {
                    let name = WorkerName::from(name);
                    current.scan.done(&name, events);
                    *current.done.entry(name).or_default() += events;
                }
            }
            ToController::Reduced { scan, up_to } => {
                if self.name_of(Role::Reducer, identity).is_some()
                    && let Some(current) = self.current.as_mut()
                    && current.number == scan
                    && !current.awaiting_reducer
                {
                    current.scan.reduced(up_to);
                }
            }
            ToController::Resumed { scan, at } => self.resumed(identity, scan, at, now),
        }
    }

    /// Counts a control message that did not decode.
    pub fn bad_message(&mut self) {
        self.counts.bad_messages += 1;
    }

    /// Messages to send, with the recipients' identities.
    pub fn take_outbox(&mut self) -> Vec<(Vec<u8>, FromController)> {
        std::mem::take(&mut self.outbox)
    }

    /// The counters so far.
    pub fn counts(&self) -> EnsembleCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::control::Hello;
    use serde_json::json;

    use crate::mapping::Sequence;

    pub(super) fn hello(role: Role, name: &str, instance: u64) -> ToController {
        ToController::Hello(Hello {
            role,
            name: name.into(),
            instance,
            tags: if role == Role::Worker {
                vec!["generic".into()]
            } else {
                vec![]
            },
            streams: if role == Role::Ingester {
                vec!["det".into()]
            } else {
                vec![]
            },
            endpoint: Some(format!("tcp://{name}")),
            status: beamflow_protocol::control::ComponentStatus::empty(role),
        })
    }

    pub(super) fn sequence(events: u64) -> Sequence {
        let slots: Vec<serde_json::Value> =
            (0..events).map(|i| json!([{"constraint": i}])).collect();
        let body = json!({"parts": {"main": {"det": slots}}, "sequence": ["main"]});
        Sequence::from_json(body.to_string().as_bytes(), false).unwrap()
    }

    pub(super) fn ensemble(t0: Instant) -> Ensemble {
        let mut ensemble = Ensemble::new(Pacing::default(), Vec::new());
        ensemble.receive(b"i", hello(Role::Ingester, "det", 1), t0);
        ensemble.receive(b"r", hello(Role::Reducer, "reducer", 1), t0);
        ensemble.receive(b"w1", hello(Role::Worker, "w1", 1), t0);
        ensemble.receive(b"w2", hello(Role::Worker, "w2", 1), t0);
        ensemble.take_outbox();
        ensemble
    }

    /// Ticks every 100 ms from `from` to `to`, as the control loop does (a longer gap between
    /// ticks is the controller's own absence, which counts against nobody).
    pub(super) fn tick_through(ensemble: &mut Ensemble, from: Instant, to: Instant) {
        let mut now = from;
        while now < to {
            ensemble.tick(now);
            now += std::time::Duration::from_millis(100);
        }
        ensemble.tick(to);
    }

    pub(super) fn leased_to(outbox: &[(Vec<u8>, FromController)], worker: &str) -> Vec<u64> {
        outbox
            .iter()
            .filter_map(|(_, m)| match m {
                FromController::Lease { events, .. } => Some(events),
                _ => None,
            })
            .flatten()
            .filter(|e| {
                e.frames
                    .iter()
                    .any(|f| f.workers.contains(&WorkerName::from(worker)))
            })
            .map(|e| e.event.0)
            .collect()
    }
}
