//! The reducer process's socket loop around [`ReducerCore`]: reports arrive on a PULL socket it
//! binds, expectations and scans on its control DEALER; "reduced up to" goes back to the
//! controller, which releases the ingesters' retained frames. The state is published to the
//! HTTP [`View`] every [`PUBLISH`] and at the end of a scan.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use beamflow_net::{
    Heartbeat, Stop, TransportError, bind_any, control_client, instance_id, recv_reports,
    send_to_controller, socket, try_recv_from_controller,
};
use beamflow_protocol::control::{
    ComponentStatus, FromController, Hello, ReducerStatus, Role, ToController,
};
use beamflow_protocol::{EventNumber, EventReport, Parameters};
use tracing::{info, warn};

use crate::http::{Status, View};
use crate::live::{ReducerCore, ReducerInput};
use crate::{AccumulatorConfig, ConfigError, Reducer};

/// How often the state is published while a scan runs.
pub const PUBLISH: Duration = Duration::from_millis(250);

/// Events held in the reorder buffer at most (above the controller's window, so the buffer
/// never refuses an event the controller leased).
const CAPACITY: usize = 1 << 16;

/// Reports received per loop turn at most.
const BURST: usize = 1024;

/// The reducer's settings.
#[derive(Debug, Clone)]
pub struct ReducerSettings {
    /// The controller's control endpoint.
    pub controller: String,
    /// The host (address) to bind the reports socket on.
    pub host: String,
    /// The pipeline's accumulators.
    pub accumulators: BTreeMap<String, AccumulatorConfig>,
    /// Kept current for the readiness probe.
    pub reachable: beamflow_net::Reachable,
}

struct Live {
    scan: u64,
    core: ReducerCore,
    started: Instant,
    finished: bool,
    reduced: EventNumber,
}

/// Runs the reducer until `stop` is raised; publishes into `view`.
pub fn run(
    settings: &ReducerSettings,
    context: &zmq::Context,
    view: &View,
    stop: &Stop,
) -> Result<(), ReducerError> {
    let reports = socket(context, zmq::PULL, beamflow_net::DEFAULT_HWM, 0)?;
    let endpoint = bind_any(&reports, &settings.host)?;
    let instance = instance_id();
    let control = control_client(
        context,
        &settings.controller,
        &format!("reducer:{instance:x}"),
    )?;
    let descriptions =
        Reducer::new(&settings.accumulators, Parameters::default())?.describe_parameters();
    let mut live: Option<Live> = None;
    let mut early: Vec<(u64, EventReport)> = Vec::new();
    let mut stale = 0u64;
    let mut malformed = 0u64;
    let mut heartbeat = Heartbeat::new(&settings.controller, settings.reachable.clone());
    let mut published = Instant::now();
    info!(%endpoint, "Reducer up.");
    while !stop.is_stopped() {
        let now = Instant::now();
        if heartbeat.due(now) {
            let status = ReducerStatus {
                scan: live.as_ref().map(|l| l.scan),
                counts: live.as_ref().map(|l| l.core.counts()),
                stale_reports: stale,
                malformed_reports: malformed,
            };
            let hello = ToController::Hello(Hello {
                role: Role::Reducer,
                name: "reducer".to_owned(),
                instance,
                tags: Vec::new(),
                streams: Vec::new(),
                endpoint: Some(endpoint.clone()),
                status: ComponentStatus::Reducer(status),
            });
            let _ = send_to_controller(&control, &hello);
        }
        let mut items = [
            control.as_poll_item(zmq::POLLIN),
            reports.as_poll_item(zmq::POLLIN),
        ];
        if let Err(error) = zmq::poll(&mut items, heartbeat.wait_ms(now).min(50)) {
            warn!(%error, "Reducer poll failed.");
        }
        while let Some(message) = try_recv_from_controller(&control).unwrap_or_else(|error| {
            warn!(%error, "Bad control message dropped.");
            None
        }) {
            heartbeat.heard(Instant::now());
            match message {
                // The same scan again (the controller took the reducer for dead and it
                // rejoined): the state so far stays.
                FromController::Scan { scan, .. }
                    if live.as_ref().is_some_and(|l| l.scan == scan) => {}
                FromController::Scan {
                    scan,
                    parameters: values,
                    ..
                } => {
                    let parameters = beamflow_net::parameters(values, &descriptions);
                    let reducer = Reducer::new(&settings.accumulators, parameters)?;
                    let mut core = ReducerCore::new(reducer, EventNumber(0), CAPACITY);
                    for (_, report) in early.extract_if(.., |(s, _)| *s == scan) {
                        core.handle(ReducerInput::Report(report));
                    }
                    early.retain(|(s, _)| *s > scan);
                    live = Some(Live {
                        scan,
                        core,
                        started: now,
                        finished: false,
                        reduced: EventNumber(0),
                    });
                    publish(view, live.as_ref(), now);
                    published = now;
                }
                FromController::ExpectWorkers { scan, events } => {
                    if let Some(live) = live.as_mut().filter(|l| l.scan == scan) {
                        for (event_number, workers) in events {
                            live.core.handle(ReducerInput::Expect {
                                event_number,
                                workers: workers.into_iter().collect(),
                            });
                        }
                    }
                }
                FromController::Parameters { values } => {
                    if let Some(live) = live.as_mut() {
                        live.core
                            .reducer_mut()
                            .set_parameters(beamflow_net::parameters(values, &descriptions));
                    }
                }
                FromController::Finish { scan } => {
                    if let Some(live) = live.as_mut().filter(|l| l.scan == scan) {
                        live.core.reducer_mut().finish();
                        live.finished = true;
                    }
                    publish(view, live.as_ref(), now);
                    published = now;
                }
                _ => {}
            }
        }
        for _ in 0..BURST {
            match recv_reports(&reports) {
                Ok(received) => {
                    for (scan, report) in received {
                        match live.as_mut() {
                            Some(live) if live.scan == scan => {
                                live.core.handle(ReducerInput::Report(report));
                            }
                            Some(live) if live.scan > scan => stale += 1,
                            _ if early.len() < CAPACITY => early.push((scan, report)),
                            _ => stale += 1,
                        }
                    }
                }
                Err(TransportError::TimedOut) => break,
                Err(TransportError::Malformed(error)) => {
                    if malformed == 0 {
                        warn!(%error, "Malformed report dropped (counted from now on).");
                    }
                    malformed += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(live) = live.as_mut() {
            let next = live.core.next_event();
            if next > live.reduced {
                live.reduced = next;
                let reduced = ToController::Reduced {
                    scan: live.scan,
                    up_to: next,
                };
                let _ = send_to_controller(&control, &reduced);
            }
        }
        if now.duration_since(published) >= PUBLISH {
            publish(view, live.as_ref(), now);
            published = now;
        }
    }
    Ok(())
}

fn publish(view: &View, live: Option<&Live>, now: Instant) {
    let Some(live) = live else {
        return;
    };
    let counts = live.core.counts();
    let reducer = live.core.reducer();
    let seconds = now.duration_since(live.started).as_secs_f64();
    let status = Status {
        source: "reducer".to_owned(),
        finished: live.finished,
        events: counts.order.released,
        results: reducer.counts().results,
        last_event: counts.order.released.checked_sub(1),
        accumulator_errors: reducer.counts().accumulator_errors.clone(),
        unmatched_columns: reducer.unmatched(),
        events_per_second: if seconds > 0.0 {
            counts.order.released as f64 / seconds
        } else {
            0.0
        },
        scan: Some(live.scan),
        incomplete_events: counts.incomplete_events,
        duplicates: counts.order.duplicates,
        unexpected_reports: counts.unexpected_reports,
        latency_ms: live.core.latency(),
        ..Status::default()
    };
    view.publish(reducer.state(), status);
    view.publish_latest(reducer.latest_results());
}

/// Why the reducer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReducerError {
    /// A socket failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The pipeline's accumulators cannot be built.
    #[error(transparent)]
    Config(#[from] ConfigError),
}
