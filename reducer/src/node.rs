//! The reducer process's socket loop around [`ReducerCore`]: reports arrive on a PULL socket it
//! binds, expectations and scans on its control DEALER; "reduced up to" goes back to the
//! controller, which releases the ingesters' retained frames. The state is published to the
//! HTTP [`View`] every [`PUBLISH`] and at the end of a scan.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use beamflow_net::{
    ControlLink, Early, Introduction, Malformed, Stop, TransportError, bind_any, recv_reports,
    socket,
};
use beamflow_protocol::control::{
    ComponentStatus, FromController, ReducerStatus, Role, ToController,
};
use beamflow_protocol::{EventNumber, Parameters};
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
    /// The folder where each scan's checkpoint is kept, so a restarted reducer resumes the
    /// scan where its checkpoint ends; `None`: no checkpoint, a restart loses the state.
    pub checkpoint: Option<std::path::PathBuf>,
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
    let introduction = Introduction {
        role: Role::Reducer,
        name: "reducer".to_owned(),
        tags: Vec::new(),
        streams: Vec::new(),
        endpoint: Some(endpoint.clone()),
    };
    let mut control = ControlLink::connect(
        context,
        &settings.controller,
        introduction,
        settings.reachable.clone(),
    )?;
    let descriptions =
        Reducer::new(&settings.accumulators, Parameters::default())?.describe_parameters();
    let mut live: Option<Live> = None;
    let mut early = Early::new(CAPACITY);
    let mut malformed = Malformed::new("report");
    let mut published = Instant::now();
    info!(%endpoint, "Reducer up.");
    while !stop.is_stopped() {
        let now = Instant::now();
        control.heartbeat(now, || {
            ComponentStatus::Reducer(ReducerStatus {
                scan: live.as_ref().map(|l| l.scan),
                counts: live.as_ref().map(|l| l.core.counts()),
                stale_reports: early.stale(),
                malformed_reports: malformed.total(),
                ..ReducerStatus::default()
            })
        });
        let mut items = [control.poll_item(), reports.as_poll_item(zmq::POLLIN)];
        if let Err(error) = zmq::poll(&mut items, control.wait_ms(now).min(50)) {
            warn!(%error, "Reducer poll failed.");
        }
        while let Some(message) = control.receive() {
            match message {
                // The state so far stays.
                FromController::Scan { scan, .. } if !control.new_scan(scan) => {}
                FromController::Scan {
                    scan,
                    parameters: values,
                    ..
                } => {
                    let parameters = beamflow_net::parameters(values, &descriptions);
                    let reducer = Reducer::new(&settings.accumulators, parameters)?;
                    let mut core = ReducerCore::new(reducer, EventNumber(0), CAPACITY);
                    for report in early.release(scan) {
                        core.handle(ReducerInput::Report(report));
                    }
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
                        let current = live.as_ref().map(|l| l.scan);
                        if let (Some(live), Some(report)) =
                            (live.as_mut(), early.sort(current, scan, report))
                        {
                            live.core.handle(ReducerInput::Report(report));
                        }
                    }
                }
                Err(TransportError::TimedOut) => break,
                Err(TransportError::Malformed(error)) => malformed.count(&error),
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(live) = live.as_mut() {
            let next = live.core.next_event();
            if next > live.reduced {
                live.reduced = next;
                control.send(&ToController::Reduced {
                    scan: live.scan,
                    up_to: next,
                });
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
