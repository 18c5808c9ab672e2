//! A worker process's socket loop around [`WorkerCore`]: event parts arrive on a PULL socket it
//! binds, leases and scans on its control DEALER; reports leave on a PUSH to the reducer.
//!
//! Back-pressure: the worker blocks on a full reducer queue, and while it blocks it reads no
//! parts, so its own PULL queue fills and the ingesters' sends to it wait in turn.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use beamflow_net::{
    ControlLink, Early, Introduction, Malformed, Stop, TransportError, bind_any, push_to,
    recv_parts, send_reports, socket,
};
use beamflow_protocol::control::{
    ComponentStatus, FromController, Role, ToController, WorkerStatus,
};
use beamflow_protocol::{AnalysisName, EventReport, Parameters, WorkerName, WorkerTag};
use tracing::{info, warn};

use crate::AnalysisConfig;
use crate::process::Analyses;
use crate::worker::{WorkerCore, WorkerInput};

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
            })
        });
        let wait = control.wait_ms(now).min(50);
        let mut items = [
            control.poll_item(),
            parts.as_poll_item(if core.is_full() {
                zmq::PollEvents::empty()
            } else {
                zmq::POLLIN
            }),
        ];
        if let Err(error) = zmq::poll(&mut items, wait) {
            warn!(%error, "Worker poll failed.");
        }
        let mut processed = Vec::new();
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
                    }
                    if let Some(endpoint) = endpoint
                        && reducer
                            .as_ref()
                            .is_none_or(|(current, _)| *current != endpoint)
                    {
                        let push = push_to(context, &endpoint, 200)?;
                        reducer = Some((endpoint, push));
                    }
                    for part in early.release(scan) {
                        processed.extend(core.handle(WorkerInput::Part(part), now));
                    }
                }
                FromController::Expect { scan, events } if control.scan() == Some(scan) => {
                    for (event_number, streams) in events {
                        processed.extend(core.handle(
                            WorkerInput::Expect {
                                event_number,
                                streams: streams.into_iter().collect(),
                            },
                            now,
                        ));
                    }
                }
                FromController::Parameters { values } => {
                    core.set_parameters(beamflow_net::parameters(values, &descriptions));
                }
                FromController::Finish { scan } if control.scan() == Some(scan) => core.finish(),
                _ => {}
            }
        }
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
                            processed.extend(core.handle(WorkerInput::Part(part), now));
                        }
                    }
                }
                Err(TransportError::TimedOut) => break,
                Err(TransportError::Malformed(error)) => malformed.count(&error),
                Err(error) => return Err(error.into()),
            }
        }
        processed.extend(core.poll(now));
        for outcome in &processed {
            for failure in &outcome.failures {
                warn!(event = %outcome.report.event_number, analysis = %failure.analysis, error = %failure.error, "Analysis failed.");
            }
        }
        if processed.is_empty() {
            continue;
        }
        let scan = control.scan().unwrap_or(0);
        if let Some((_, push)) = &reducer {
            let reports: Vec<&EventReport> = processed.iter().map(|o| &o.report).collect();
            send_blocking(push, scan, &reports, stop)?;
        }
        let events = processed.len() as u64;
        control.send(&ToController::Done { scan, events });
    }
    Ok(())
}

/// Sends reports as one message, waiting while the reducer's queue is full (back-pressure)
/// until `stop`.
fn send_blocking(
    push: &zmq::Socket,
    scan: u64,
    reports: &[&EventReport],
    stop: &Stop,
) -> Result<(), TransportError> {
    loop {
        match send_reports(push, scan, reports.iter().copied()) {
            Ok(()) => return Ok(()),
            Err(TransportError::Full) if !stop.is_stopped() => continue,
            Err(TransportError::Full) => return Ok(()),
            Err(error) => return Err(error),
        }
    }
}
