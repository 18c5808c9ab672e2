//! The reducer process's socket loop around [`ReducerCore`]: reports arrive on a PULL socket it
//! binds, expectations and scans on its control DEALER; "reduced up to" goes back to the
//! controller, which releases the ingesters' retained frames. The state is published to the
//! HTTP [`View`] every [`PUBLISH`] and at the end of a scan.
//!
//! With a checkpoint folder, each scan's applied inputs go to its [`checkpoint`],
//! written once per loop turn before `Reduced`; a restarted reducer given the scan again rebuilds
//! its state from there, answers `Resumed` with where it ends, and the controller rewinds the scan
//! to there.

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
use tracing::{error, info, warn};

use crate::checkpoint::{self, ParameterValues};
use crate::http::{Status, View};
use crate::live::{ReducerCore, ReducerInput, RestoreError};
use crate::nexus::ScanInfo;
use crate::{AccumulatorConfig, ConfigError, Reducer};

/// How often the state is published while a scan runs: every event of a 10 Hz pipeline reaches
/// the dashboard's pages (bench/dashboard.py measures what it costs).
pub const PUBLISH: Duration = Duration::from_millis(100);

/// Events held in the reorder buffer at most (above the controller's window, so the buffer
/// never refuses an event the controller leased).
const CAPACITY: usize = 1 << 16;

/// How often "reduced up to" is said to the controller when it has not changed.
const REDUCED_REPEAT: Duration = Duration::from_secs(1);

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
    /// What its files say of it.
    info: ScanInfo,
    core: ReducerCore,
    started: Instant,
    reduced: EventNumber,
    /// When `reduced` was last said to the controller.
    reduced_said: Instant,
}

impl Live {
    /// The checkpoint file, while one is kept.
    fn checkpoint(&self) -> Option<String> {
        self.core
            .checkpoint()
            .filter(|c| c.is_kept())
            .map(|c| c.path().display().to_string())
    }
}

/// A scan new to this process: restored from its checkpoint if the folder holds one, else from
/// event 0 (with a new checkpoint, if a folder is configured).
fn start_scan(
    settings: &ReducerSettings,
    scan: u64,
    uuid: &str,
    parameters: ParameterValues,
) -> Result<ReducerCore, ReducerError> {
    let Some(folder) = &settings.checkpoint else {
        return Ok(ReducerCore::start(
            &settings.accumulators,
            parameters,
            CAPACITY,
        )?);
    };
    let path = checkpoint::path(folder, uuid);
    checkpoint::prune(folder, &path);
    if path.exists() {
        match ReducerCore::restore(&settings.accumulators, &path, uuid, CAPACITY) {
            Ok(mut core) => {
                info!(scan, restored_events = core.restored_events(), next = %core.next_event(),
                    lost_events = core.lost_events(), checkpoint = %path.display(),
                    "Resumed the scan from its checkpoint.");
                // Values changed while no reducer ran apply from here on.
                if core.parameters() != &parameters {
                    core.set_parameters(parameters);
                }
                return Ok(core);
            }
            Err(RestoreError::Config(error)) => return Err(error.into()),
            Err(error) => {
                warn!(scan, %error, "Checkpoint unusable; the scan's state starts from event 0.");
            }
        }
    }
    let mut core = ReducerCore::start(&settings.accumulators, parameters, CAPACITY)?;
    core.keep_checkpoint(&path, scan, uuid);
    Ok(core)
}

/// Runs the reducer until `stop` is raised; publishes into `view`.
pub fn run(
    settings: &ReducerSettings,
    context: &zmq::Context,
    view: &View,
    stop: &Stop,
) -> Result<(), ReducerError> {
    let reports = socket(context, zmq::PULL, beamflow_net::DEFAULT_HWM, 0)?;
    beamflow_net::as_server(context, &reports, beamflow_net::curve::Plane::Data)?;
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
    // Accumulators that cannot be built fail the reducer at its start, not at the first scan.
    Reducer::new(&settings.accumulators, Parameters::default())?;
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
                refused_peers: beamflow_net::curve::refused_peers(),
                restored_events: live.as_ref().map_or(0, |l| l.core.restored_events()),
                checkpoint: live.as_ref().and_then(Live::checkpoint),
            })
        });
        let mut items = [control.poll_item(), reports.as_poll_item(zmq::POLLIN)];
        if let Err(error) = zmq::poll(&mut items, control.wait_ms(now).min(50)) {
            warn!(%error, "Reducer poll failed.");
        }
        while let Some(message) = control.receive() {
            match message {
                FromController::Scan {
                    scan,
                    uuid,
                    parameters,
                    frames,
                    mapping,
                    ..
                } => {
                    // A scan repeated to this process keeps the state so far.
                    if control.new_scan(scan) || live.as_ref().is_none_or(|l| l.scan != scan) {
                        // The last scan's records of this turn (its `Finish`) go out first.
                        if let Some(last) = live.as_mut() {
                            last.core.flush_checkpoint();
                        }
                        let mut core = start_scan(settings, scan, &uuid, parameters)?;
                        for report in early.release(scan) {
                            core.handle(ReducerInput::Report(report));
                        }
                        let info = ScanInfo {
                            number: Some(scan),
                            uuid: Some(uuid.clone()),
                            started: Some(jiff::Timestamp::now()),
                            streams: frames
                                .iter()
                                .map(|(stream, count)| (stream.to_string(), *count))
                                .collect(),
                            mapping: mapping.map(Into::into),
                            source: "reducer".to_owned(),
                            ..ScanInfo::default()
                        };
                        live = Some(Live {
                            scan,
                            info,
                            core,
                            started: now,
                            reduced: EventNumber(0),
                            reduced_said: now,
                        });
                        publish(view, live.as_ref(), now);
                        published = now;
                    }
                    // Every `Scan` is answered: the controller rewinds the scan to here.
                    if let Some(live) = live.as_mut() {
                        live.core.flush_checkpoint();
                        control.send(&ToController::Resumed {
                            scan,
                            at: live.core.next_event(),
                        });
                    }
                }
                FromController::Rewind { scan, from, .. } => {
                    if let Some(live) = live.as_mut().filter(|l| l.scan == scan) {
                        let next = live.core.next_event();
                        if from < next {
                            warn!(scan, %from, %next, "Rewound to events already applied: they stay applied, and their reports come again as duplicates.");
                        }
                        if let Some(lost) = live.core.rewind(from) {
                            error!(scan, first = %lost.start, last = lost.end.0 - 1, events = lost.end.0 - lost.start.0,
                                "Events lost: they were released without a checkpoint covering them and are not in the state.");
                        }
                        info!(scan, %from, "Scan rewound; the events from here on are recomputed.");
                    }
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
                        live.core.set_parameters(values);
                    }
                }
                FromController::Finish { scan } => {
                    if let Some(live) = live.as_mut().filter(|l| l.scan == scan) {
                        live.core.finish();
                        live.info.ended = Some(jiff::Timestamp::now());
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
            live.core.run_timers(now);
            // Before `Reduced`: the controller releases the ingesters' frames at it, so what it
            // announces must be in the checkpoint. Without one (none configured, or given up
            // after a write failed) `Reduced` goes out all the same: holding it back would stall
            // the scan for good, and the controller logs what a later restart loses.
            live.core.flush_checkpoint();
            // Said again every REDUCED_REPEAT though unchanged: a `Reduced` the controller
            // missed (sent while it was restarting, or while it awaited this reducer's resume
            // point) would otherwise leave a scan whose last events are all applied unfinished.
            let next = live.core.next_event();
            if next > live.reduced || now.duration_since(live.reduced_said) >= REDUCED_REPEAT {
                live.reduced = next;
                live.reduced_said = now;
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
        finished: live.core.is_finished(),
        events: counts.order.released,
        results: reducer.counts().results,
        last_event: live.core.last_event().map(|e| e.0),
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
        incomplete: live.core.incomplete_listed(),
        restored_events: live.core.restored_events(),
        lost_events: live.core.lost_events(),
        checkpoint: live.checkpoint(),
        checkpoint_failures: live.core.checkpoint().map_or(0, |c| c.failures()),
        ..Status::default()
    };
    view.publish_reducer(reducer, status);
    // After the state: a scan seen ended has its final state published.
    view.publish_scan(ScanInfo {
        parameters: live
            .core
            .parameters()
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect(),
        ..live.info.clone()
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_net::{send_reports, send_to_component, try_recv_from_component};
    use beamflow_protocol::{EventReport, ResultData, Value};
    use std::sync::Arc;

    /// The controller's end of the control plane, in the test's hands.
    struct Controller {
        router: zmq::Socket,
        endpoint: String,
    }

    impl Controller {
        fn new(context: &zmq::Context) -> Self {
            let router = socket(context, zmq::ROUTER, 1000, 0).unwrap();
            let endpoint = bind_any(&router, "127.0.0.1").unwrap();
            Self { router, endpoint }
        }

        /// The first message `pick` takes, with its sender, within 10 s.
        fn wait_for<T>(
            &self,
            mut pick: impl FnMut(&[u8], &ToController) -> Option<T>,
        ) -> (Vec<u8>, T) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match try_recv_from_component(&self.router).unwrap() {
                    Some((identity, Ok(message))) => {
                        if let Some(found) = pick(&identity, &message) {
                            return (identity.to_vec(), found);
                        }
                    }
                    Some((_, Err(error))) => panic!("{error}"),
                    None => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            panic!("no such message within 10 s");
        }
    }

    fn start(
        context: &zmq::Context,
        controller: &str,
        folder: &std::path::Path,
    ) -> (Stop, View, std::thread::JoinHandle<()>) {
        let settings = ReducerSettings {
            controller: controller.to_owned(),
            host: "127.0.0.1".to_owned(),
            accumulators: toml::from_str(
                "[history]\nkind = \"history\"\nvalues = { mean = \"mean\" }",
            )
            .unwrap(),
            reachable: beamflow_net::Reachable::default(),
            checkpoint: Some(folder.to_owned()),
        };
        let (stop, view) = (Stop::new(), View::new());
        let (context, thread_stop, thread_view) = (context.clone(), stop.clone(), view.clone());
        let thread = std::thread::spawn(move || {
            run(&settings, &context, &thread_view, &thread_stop).unwrap();
        });
        (stop, view, thread)
    }

    fn report(event: u64) -> EventReport {
        EventReport {
            event_number: EventNumber(event),
            worker: "w1".into(),
            results: vec![ResultData {
                event_number: EventNumber(event),
                analysis: "stats".into(),
                worker: "w1".into(),
                created_at: None,
                payload: Arc::new(Value::Map(
                    [("mean".to_owned(), Value::Float(event as f64))].into(),
                )),
            }],
            missing: if event == 3 {
                vec!["pcap".into()]
            } else {
                vec![]
            },
        }
    }

    fn scan(uuid: &str) -> FromController {
        FromController::Scan {
            scan: 1,
            uuid: uuid.to_owned(),
            frames: vec![],
            reducer: None,
            parameters: vec![],
            first_frames: vec![],
            mapping: None,
        }
    }

    /// The identity and reports endpoint of a reducer other than `before` saying hello.
    fn join(controller: &Controller, before: &[u8]) -> (Vec<u8>, String) {
        controller.wait_for(|identity, message| match message {
            ToController::Hello(hello) if identity != before => hello.endpoint.clone(),
            _ => None,
        })
    }

    fn feed(
        context: &zmq::Context,
        controller: &Controller,
        identity: &[u8],
        reports: &str,
        events: std::ops::Range<u64>,
    ) {
        let expect = FromController::ExpectWorkers {
            scan: 1,
            events: events
                .clone()
                .map(|n| (EventNumber(n), vec!["w1".into()]))
                .collect(),
        };
        send_to_component(&controller.router, identity, &expect).unwrap();
        let push = beamflow_net::push_to(context, reports, 5_000).unwrap();
        let sent: Vec<EventReport> = events.clone().map(report).collect();
        send_reports(&push, 1, &sent).unwrap();
        let end = EventNumber(events.end);
        controller.wait_for(|_, message| {
            matches!(message, ToController::Reduced { up_to, .. } if *up_to == end).then_some(())
        });
    }

    /// A reducer that stops mid-scan and a new one in its place: the new one answers the scan
    /// with where the old one's checkpoint ends, and goes on from there with the whole state.
    #[test]
    fn a_restarted_reducer_resumes_the_scan_from_its_checkpoint() {
        let context = zmq::Context::new();
        let folder = tempfile::tempdir().unwrap();
        let controller = Controller::new(&context);
        let (stop, _, thread) = start(&context, &controller.endpoint, folder.path());
        let (first, reports) = join(&controller, b"");
        send_to_component(&controller.router, &first, &scan("u-1")).unwrap();
        let (_, at) = controller.wait_for(|_, message| match message {
            ToController::Resumed { scan: 1, at } => Some(*at),
            _ => None,
        });
        assert_eq!(at, EventNumber(0));
        // `Reduced` is said only once the checkpoint holds the events.
        feed(&context, &controller, &first, &reports, 0..5);
        // And said again though nothing changed, for a controller that missed it.
        controller.wait_for(|_, message| {
            matches!(message, ToController::Reduced { up_to, .. } if *up_to == EventNumber(5))
                .then_some(())
        });
        stop.stop();
        thread.join().unwrap();

        let (stop, view, thread) = start(&context, &controller.endpoint, folder.path());
        let (identity, reports) = join(&controller, &first);
        send_to_component(&controller.router, &identity, &scan("u-1")).unwrap();
        let (_, at) = controller.wait_for(|_, message| match message {
            ToController::Resumed { scan: 1, at } => Some(*at),
            _ => None,
        });
        assert_eq!(at, EventNumber(5));
        let (_, status) = controller.wait_for(|_, message| match message {
            ToController::Hello(hello) => match &hello.status {
                ComponentStatus::Reducer(status) if status.scan == Some(1) => Some(status.clone()),
                _ => None,
            },
            _ => None,
        });
        assert_eq!(status.restored_events, 5);
        let file = checkpoint::path(folder.path(), "u-1");
        assert_eq!(status.checkpoint, Some(file.display().to_string()));
        send_to_component(
            &controller.router,
            &identity,
            &FromController::Rewind {
                scan: 1,
                from: EventNumber(5),
                reducer: None,
            },
        )
        .unwrap();
        feed(&context, &controller, &identity, &reports, 5..8);
        send_to_component(
            &controller.router,
            &identity,
            &FromController::Finish { scan: 1 },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !view.status().finished {
            assert!(Instant::now() < deadline, "the scan never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
        let state = view.state();
        assert_eq!(
            serde_json::to_string(state.pointer("history/values/mean").unwrap()).unwrap(),
            "[0.0,1.0,2.0,3.0,4.0,5.0,6.0,7.0]"
        );
        let status = view.status();
        assert_eq!(
            (status.events, status.restored_events, status.lost_events),
            (8, 5, 0)
        );
        assert_eq!(
            serde_json::to_value(&status.incomplete).unwrap(),
            serde_json::json!([{"first": 3, "last": 3, "missing": ["pcap"]}])
        );
        stop.stop();
        thread.join().unwrap();
    }
}
