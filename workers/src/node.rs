//! A worker process's socket loop around [`WorkerCore`]: event parts arrive on a PULL socket it
//! binds, leases and scans on its control DEALER; reports leave on a PUSH to the reducer.
//!
//! Back-pressure: reports that find the reducer's queue full wait in an `Outbox`, and while
//! any wait the worker reads no parts, so its own PULL queue fills and the ingesters' sends to it
//! wait in turn. It never blocks on the reducer: it keeps saying hello and taking control
//! messages (a paused reducer must not make its workers look dead), and retries each turn.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use beamflow_net::{
    ControlLink, Early, Introduction, Malformed, Stop, TransportError, bind_any, push_to,
    recv_parts, send_reports, socket,
};
use beamflow_protocol::control::{
    ComponentStatus, FromController, Role, ToController, WorkerStatus,
};
use beamflow_protocol::{
    AnalysisName, EventNumber, EventReport, Parameters, WorkerName, WorkerTag,
};
use tracing::{info, warn};

use crate::AnalysisConfig;
use crate::process::Analyses;
use crate::worker::{Processed, WorkerCore, WorkerInput};

/// A worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Its name (unique among workers).
    pub name: WorkerName,
    /// Its tags (`generic` by default; a debug worker carries `debug`).
    pub tags: BTreeSet<WorkerTag>,
    /// The controller's control endpoint.
    pub controller: String,
    /// The host (address) to bind the parts socket on, as other hosts reach this one.
    pub host: String,
    /// The pipeline's analyses.
    pub analyses: BTreeMap<AnalysisName, AnalysisConfig>,
    /// How long after its lease an event may wait for its streams before it is processed
    /// incomplete.
    pub event_timeout: Duration,
    /// Kept current for the readiness probe.
    pub reachable: beamflow_net::Reachable,
}

/// Events assembled at once at most (and early parts held for a scan not yet announced).
const CAPACITY: usize = 4096;

/// Parts received per loop turn at most, so heartbeats and control messages are never starved.
const BURST: usize = 256;

/// Time a turn spends taking parts (and processing the events they complete) at most.
const TURN_BUDGET: Duration = Duration::from_millis(100);

/// Reports waiting this long for the reducer's queue are worth a warning (once per wait).
const SLOW_REDUCER: Duration = Duration::from_secs(2);

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Its sockets failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An analysis of the pipeline cannot be built.
    #[error(transparent)]
    Build(#[from] crate::BuildError),
}

/// Runs a worker until `stop` is raised.
pub fn run(
    settings: &WorkerSettings,
    context: &zmq::Context,
    stop: &Stop,
) -> Result<(), WorkerError> {
    let analyses = Analyses::build(&settings.analyses)?;
    let parts = socket(context, zmq::PULL, beamflow_net::DEFAULT_HWM, 0)?;
    beamflow_net::as_server(context, &parts, beamflow_net::curve::Plane::Data)?;
    let endpoint = bind_any(&parts, &settings.host)?;
    let introduction = Introduction {
        role: Role::Worker,
        name: settings.name.to_string(),
        tags: settings.tags.iter().cloned().collect(),
        streams: Vec::new(),
        endpoint: Some(endpoint.clone()),
    };
    let mut control = ControlLink::connect(
        context,
        &settings.controller,
        introduction,
        settings.reachable.clone(),
    )?;
    let mut core = WorkerCore::new(
        settings.name.clone(),
        analyses,
        Parameters::default(),
        settings.event_timeout,
        CAPACITY,
    );
    let descriptions = core.describe_parameters();
    let mut reducer: Option<(String, zmq::Socket)> = None;
    let mut outbox = Outbox::default();
    let mut early = Early::new(CAPACITY);
    let mut malformed = Malformed::new("event part");
    info!(worker = %settings.name, %endpoint, "Worker up.");
    while !stop.is_stopped() {
        let now = Instant::now();
        let scan = control.scan().unwrap_or(0);
        control.heartbeat(now, || {
            let counts = core.counts();
            ComponentStatus::Worker(WorkerStatus {
                scan,
                counts,
                busy_seconds: counts.busy_micros as f64 / 1e6,
                last_event: counts.last_event,
                stale_parts: early.stale(),
                malformed_parts: malformed.total(),
                refused_peers: beamflow_net::curve::refused_peers(),
            })
        });
        let wait = control.wait_ms(now).min(50);
        let reading = !core.is_full() && outbox.is_empty();
        {
            let mut items = vec![
                control.poll_item(),
                parts.as_poll_item(if reading {
                    zmq::POLLIN
                } else {
                    zmq::PollEvents::empty()
                }),
            ];
            // Wake as soon as the reducer takes reports again.
            if let Some((_, push)) = &reducer
                && !outbox.is_empty()
            {
                items.push(push.as_poll_item(zmq::POLLOUT));
            }
            if let Err(error) = zmq::poll(&mut items, wait) {
                warn!(%error, "Worker poll failed.");
            }
        }
        while let Some(message) = control.receive() {
            match message {
                FromController::Scan {
                    scan,
                    reducer: endpoint,
                    parameters,
                    ..
                } => {
                    // A scan repeated to this worker (it rejoined) is under way here: nothing
                    // restarts.
                    if control.new_scan(scan) {
                        core.new_scan(beamflow_net::parameters(parameters, &descriptions));
                        // Reports of the scan before are of no use to anyone now.
                        outbox.clear();
                    }
                    replace_reducer(context, &mut reducer, endpoint);
                    for part in early.release(scan) {
                        outbox.extend(core.handle(WorkerInput::Part(part), now));
                    }
                }
                FromController::Expect { scan, events } if control.scan() == Some(scan) => {
                    for (event_number, streams) in events {
                        outbox.extend(core.handle(
                            WorkerInput::Expect {
                                event_number,
                                streams: streams.into_iter().collect(),
                            },
                            now,
                        ));
                    }
                }
                FromController::Rewind {
                    scan,
                    from,
                    reducer: endpoint,
                } if control.scan() == Some(scan) => {
                    let forgotten = core.rewind(from);
                    let dropped = outbox.rewind(from);
                    let moved = replace_reducer(context, &mut reducer, endpoint);
                    info!(
                        scan,
                        from = %from,
                        forgotten_events = forgotten,
                        dropped_reports = dropped,
                        reducer = reducer.as_ref().map(|(endpoint, _)| endpoint.as_str()),
                        reducer_moved = moved,
                        "Scan rewound: events from here on are processed again."
                    );
                }
                FromController::Parameters { values } => {
                    core.set_parameters(beamflow_net::parameters(values, &descriptions));
                }
                FromController::Finish { scan } if control.scan() == Some(scan) => core.finish(),
                _ => {}
            }
        }
        if outbox.is_empty() {
            let turn = Instant::now();
            for _ in 0..BURST {
                // Heavy analyses run inside this loop: bounding its time keeps hellos (liveness)
                // and control messages flowing whatever an event costs.
                if core.is_full() || turn.elapsed() > TURN_BUDGET {
                    break;
                }
                match recv_parts(&parts) {
                    Ok(received) => {
                        for (part_scan, part) in received {
                            if let Some(part) = early.sort(control.scan(), part_scan, part) {
                                outbox.extend(core.handle(WorkerInput::Part(part), now));
                            }
                        }
                    }
                    Err(TransportError::TimedOut) => break,
                    Err(TransportError::Malformed(error)) => malformed.count(&error),
                    Err(error) => return Err(error.into()),
                }
            }
            outbox.extend(core.poll(now));
        }
        let scan = control.scan().unwrap_or(0);
        if let Some((endpoint, push)) = &reducer
            && let Some(events) = outbox.send(push, scan, endpoint, Instant::now())?
        {
            control.send(&ToController::Done { scan, events });
        }
    }
    Ok(())
}

/// Points the reports' PUSH at `endpoint` if it names another one than today's (a restarted
/// reducer binds a new port). Reports still queued for the old endpoint go with the old socket:
/// the controller rewinds the scan to where the new reducer stands, so they are computed again.
/// An endpoint that cannot be connected to is logged and the old socket kept. Returns whether
/// the socket was replaced.
fn replace_reducer(
    context: &zmq::Context,
    reducer: &mut Option<(String, zmq::Socket)>,
    endpoint: Option<String>,
) -> bool {
    let Some(endpoint) = endpoint else {
        return false;
    };
    if reducer
        .as_ref()
        .is_some_and(|(current, _)| *current == endpoint)
    {
        return false;
    }
    match push_to(context, &endpoint, 200) {
        Ok(push) => {
            *reducer = Some((endpoint, push));
            true
        }
        Err(error) => {
            warn!(%endpoint, %error, "Cannot reach the reducer's new endpoint; reports keep going to the one before.");
            false
        }
    }
}

/// Processed events whose reports have not gone to the reducer yet. They wait here while the
/// reducer's queue is full; the worker reads no parts meanwhile, so at most what one turn
/// processes waits (bounded by the assembler's capacity).
#[derive(Debug, Default)]
struct Outbox {
    reports: Vec<EventReport>,
    /// When the reports began to wait, and whether that wait was reported.
    waiting: Option<(Instant, bool)>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    fn extend(&mut self, processed: Vec<Processed>) {
        for outcome in processed {
            for failure in &outcome.failures {
                warn!(event = %outcome.report.event_number, analysis = %failure.analysis, error = %failure.error, "Analysis failed.");
            }
            self.reports.push(outcome.report);
        }
    }

    /// A new scan: what waits belongs to the one before.
    fn clear(&mut self) {
        self.reports.clear();
        self.waiting = None;
    }

    /// The scan is rewound to `from`: reports of events from there on are dropped (they will be
    /// computed again). Returns how many were dropped.
    fn rewind(&mut self, from: EventNumber) -> usize {
        let before = self.reports.len();
        self.reports.retain(|report| report.event_number < from);
        if self.reports.is_empty() {
            self.waiting = None;
        }
        before - self.reports.len()
    }

    /// Sends every waiting report as one message if the reducer's queue takes it, without
    /// waiting for room. Returns how many events went (for the controller's `Done`), or `None`
    /// when nothing went.
    fn send(
        &mut self,
        push: &zmq::Socket,
        scan: u64,
        endpoint: &str,
        now: Instant,
    ) -> Result<Option<u64>, TransportError> {
        if self.reports.is_empty() {
            return Ok(None);
        }
        let room = push
            .get_events()
            .map_or(true, |events| events.contains(zmq::POLLOUT));
        let sent = if room {
            send_reports(push, scan, &self.reports)
        } else {
            Err(TransportError::Full)
        };
        match sent {
            Ok(()) => {
                if let Some((since, true)) = self.waiting {
                    info!(reducer = %endpoint, waited_s = now.duration_since(since).as_secs_f64(), "The reducer takes reports again.");
                }
                self.waiting = None;
                let events = self.reports.len() as u64;
                self.reports.clear();
                Ok(Some(events))
            }
            Err(TransportError::Full) => {
                let (since, warned) = self.waiting.get_or_insert((now, false));
                if !*warned && now.duration_since(*since) >= SLOW_REDUCER {
                    *warned = true;
                    warn!(reducer = %endpoint, reports = self.reports.len(), "The reducer's queue has been full for 2 s: reports wait, parts are not read.");
                }
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_net::recv_reports;

    fn report(n: u64) -> EventReport {
        EventReport {
            event_number: EventNumber(n),
            worker: "w1".into(),
            results: vec![],
            missing: vec![],
        }
    }

    #[test]
    fn reports_wait_for_a_full_reducer_without_blocking_and_a_rewind_drops_its_events() {
        let context = zmq::Context::new();
        let pull = socket(&context, zmq::PULL, 1, 5_000).unwrap();
        pull.bind("inproc://reducer").unwrap();
        let push = socket(&context, zmq::PUSH, 1, 0).unwrap();
        push.set_sndtimeo(5_000).unwrap();
        push.connect("inproc://reducer").unwrap();
        // Fill the reducer's queue.
        let mut filled = 0;
        while push.get_events().unwrap().contains(zmq::POLLOUT) {
            send_reports(&push, 1, &[report(0)]).unwrap();
            filled += 1;
            assert!(filled < 100, "the queue never fills");
        }
        let mut outbox = Outbox {
            reports: (1..=5).map(report).collect(),
            waiting: None,
        };
        let t0 = Instant::now();
        assert_eq!(outbox.send(&push, 1, "inproc://reducer", t0).unwrap(), None);
        assert!(t0.elapsed() < Duration::from_secs(1), "the send waited");
        assert!(outbox.waiting.is_some());
        assert_eq!(outbox.rewind(EventNumber(3)), 3);
        for _ in 0..filled {
            recv_reports(&pull).unwrap();
        }
        assert_eq!(
            outbox.send(&push, 1, "inproc://reducer", t0).unwrap(),
            Some(2)
        );
        assert!(outbox.is_empty() && outbox.waiting.is_none());
        let received: Vec<u64> = recv_reports(&pull)
            .unwrap()
            .into_iter()
            .map(|(_, report)| report.event_number.0)
            .collect();
        assert_eq!(received, [1, 2]);
    }

    #[test]
    fn the_reducer_socket_follows_a_new_endpoint_and_keeps_the_old_one_for_a_bad_one() {
        let context = zmq::Context::new();
        let mut reducer = None;
        let endpoint = |reducer: &Option<(String, zmq::Socket)>| {
            reducer.as_ref().map(|(endpoint, _)| endpoint.clone())
        };
        assert!(replace_reducer(
            &context,
            &mut reducer,
            Some("inproc://a".into())
        ));
        assert!(!replace_reducer(
            &context,
            &mut reducer,
            Some("inproc://a".into())
        ));
        assert!(!replace_reducer(&context, &mut reducer, None));
        assert!(!replace_reducer(
            &context,
            &mut reducer,
            Some("no endpoint".into())
        ));
        assert_eq!(endpoint(&reducer).as_deref(), Some("inproc://a"));
        assert!(replace_reducer(
            &context,
            &mut reducer,
            Some("inproc://b".into())
        ));
        assert_eq!(endpoint(&reducer).as_deref(), Some("inproc://b"));
    }
}
