//! A worker process's socket loop around [`WorkerCore`]: event parts arrive on a PULL socket it
//! binds, leases and scans on its control DEALER; reports leave on a PUSH to the reducer.
//!
//! Back-pressure: the worker blocks on a full reducer queue, and while it blocks it reads no
//! parts, so its own PULL queue fills and the ingesters' sends to it wait in turn.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use beamflow_net::{
    Heartbeat, Stop, TransportError, bind_any, control_client, instance_id, push_to, recv_parts,
    send_reports, send_to_controller, socket, try_recv_from_controller,
};
use beamflow_protocol::control::{
    ComponentStatus, FromController, Hello, Role, ToController, WorkerStatus,
};
use beamflow_protocol::{AnalysisName, EventData, EventReport, Parameters, WorkerName, WorkerTag};
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
    let instance = instance_id();
    let control = control_client(
        context,
        &settings.controller,
        &format!("worker:{}:{instance:x}", settings.name),
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
    let mut scan = 0u64;
    let mut early: Vec<(u64, EventData)> = Vec::new();
    let mut stale = 0u64;
    let mut malformed = 0u64;
    let mut done = 0u64;
    let mut heartbeat = Heartbeat::new(&settings.controller, settings.reachable.clone());
    info!(worker = %settings.name, %endpoint, "Worker up.");
    while !stop.is_stopped() {
        let now = Instant::now();
        if heartbeat.due(now) {
            let counts = core.counts();
            let status = WorkerStatus {
                scan,
                counts,
                busy_seconds: counts.busy_micros as f64 / 1e6,
                last_event: counts.last_event,
                stale_parts: stale,
                malformed_parts: malformed,
            };
            let hello = ToController::Hello(Hello {
                role: Role::Worker,
                name: settings.name.to_string(),
                instance,
                tags: settings.tags.iter().cloned().collect(),
                streams: Vec::new(),
                endpoint: Some(endpoint.clone()),
                status: ComponentStatus::Worker(status),
            });
            let _ = send_to_controller(&control, &hello);
        }
        let wait = heartbeat.wait_ms(now).min(50);
        let mut items = [
            control.as_poll_item(zmq::POLLIN),
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
        while let Some(message) = try_recv_from_controller(&control).unwrap_or_else(|error| {
            warn!(%error, "Bad control message dropped.");
            None
        }) {
            heartbeat.heard(Instant::now());
            match message {
                FromController::Scan {
                    scan: number,
                    reducer: endpoint,
                    parameters,
                    ..
                } => {
                    // The same scan again (the controller took this worker for dead and it
                    // rejoined): its events are under way here, so nothing restarts.
                    if number != scan {
                        scan = number;
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
                    let held = std::mem::take(&mut early);
                    for (part_scan, part) in held {
                        if part_scan == scan {
                            processed.extend(core.handle(WorkerInput::Part(part), now));
                        } else if part_scan > scan {
                            early.push((part_scan, part));
                        } else {
                            // Held for a scan that was superseded before it started here.
                            stale += 1;
                        }
                    }
                }
                FromController::Expect {
                    scan: number,
                    events,
                } if number == scan => {
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
                FromController::Finish { scan: number } if number == scan => core.finish(),
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
                        if part_scan == scan {
                            processed.extend(core.handle(WorkerInput::Part(part), now));
                        } else if part_scan > scan && early.len() < CAPACITY {
                            early.push((part_scan, part));
                        } else {
                            stale += 1;
                        }
                    }
                }
                Err(TransportError::TimedOut) => break,
                Err(TransportError::Malformed(error)) => {
                    if malformed == 0 {
                        warn!(%error, "Malformed event part dropped (counted from now on).");
                    }
                    malformed += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
        processed.extend(core.poll(now));
        for outcome in &processed {
            for failure in &outcome.failures {
                warn!(event = %outcome.report.event_number, analysis = %failure.analysis, error = %failure.error, "Analysis failed.");
            }
        }
        if let Some((_, push)) = &reducer
            && !processed.is_empty()
        {
            let reports: Vec<&EventReport> = processed.iter().map(|o| &o.report).collect();
            send_blocking(push, scan, &reports, stop)?;
        }
        done += processed.len() as u64;
        if done > 0 {
            let _ = send_to_controller(&control, &ToController::Done { scan, events: done });
            done = 0;
        }
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
