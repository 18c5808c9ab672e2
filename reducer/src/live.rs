//! The live reducer's loop body, without sockets: expectations from the controller and reports
//! from workers in, results applied in event order, a view published. The binary feeds it from
//! ZeroMQ; tests feed it directly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::path::Path;

use beamflow_protocol::{EventNumber, EventReport, ResultData, StreamName, WorkerName};
use serde::Serialize;
use tracing::warn;

use crate::checkpoint::{self, Checkpoint, CheckpointError, ParameterValues, Record};
use crate::order::{Offer, Reorder};
use crate::{AccumulatorConfig, ConfigError, Reducer};

/// What reaches the reducer.
#[derive(Debug, Clone, PartialEq)]
pub enum ReducerInput {
    /// From the controller: the workers an event went to (again after a re-assignment).
    Expect {
        /// The event.
        event_number: EventNumber,
        /// Its workers.
        workers: BTreeSet<WorkerName>,
    },
    /// From a worker: its outcome for one event.
    Report(EventReport),
}

pub use beamflow_protocol::control::LiveCounts;

/// Runs of incomplete events the status names, the latest ones.
pub const INCOMPLETE_LISTED: usize = 1000;

/// Consecutive events applied with the same streams missing, as the status names them: one
/// run, however long, for what one fault took (a restarted ingester loses up to a window of
/// events), so the status names every lost event in little space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncompleteEvents {
    /// The first event.
    pub first: EventNumber,
    /// The last event.
    pub last: EventNumber,
    /// The streams they lacked.
    pub missing: Vec<StreamName>,
}

/// The reducer's state: the reorder buffer in front of the accumulators, and the checkpoint of
/// what they were given.
pub struct ReducerCore {
    reorder: Reorder,
    reducer: Reducer,
    /// Per buffered event, the streams some worker lacked.
    incomplete: BTreeMap<EventNumber, BTreeSet<StreamName>>,
    incomplete_events: u64,
    /// The last [`INCOMPLETE_LISTED`] runs of incomplete events.
    incomplete_listed: VecDeque<IncompleteEvents>,
    unexpected_reports: u64,
    /// Microseconds from the ingester reading each event to its results being applied, for the
    /// last [`LATENCY_WINDOW`] events with results.
    latencies: VecDeque<u32>,
    checkpoint: Option<Checkpoint>,
    /// The parameter values last set, as the controller sent them.
    parameters: ParameterValues,
    restored_events: u64,
    lost_events: u64,
    /// The last event applied: with events lost, not the one before the next.
    last_event: Option<EventNumber>,
    finished: bool,
}

/// Events whose latency the status summarises.
pub const LATENCY_WINDOW: usize = 10_000;

/// End-to-end latency percentiles over the last [`LATENCY_WINDOW`] events, in milliseconds:
/// from the ingester reading the frame (`created_at`) to the reducer applying its results.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Events measured.
    pub events: usize,
}

/// Why a checkpoint could not be restored; the scan then starts over.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The file holds no start record of this scan (torn at its first record, or another
    /// scan's).
    #[error("checkpoint {path}: no start of scan {uuid}")]
    NotThisScan {
        /// The file.
        path: std::path::PathBuf,
        /// The scan's uuid.
        uuid: String,
    },
    /// The accumulators cannot be built.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ReducerCore {
    /// A reducer applying events from `first` on, buffering at most `capacity` events.
    pub fn new(reducer: Reducer, first: EventNumber, capacity: usize) -> Self {
        Self {
            reorder: Reorder::new(first, capacity),
            reducer,
            incomplete: BTreeMap::new(),
            incomplete_events: 0,
            incomplete_listed: VecDeque::new(),
            unexpected_reports: 0,
            latencies: VecDeque::with_capacity(LATENCY_WINDOW),
            checkpoint: None,
            parameters: ParameterValues::new(),
            restored_events: 0,
            lost_events: 0,
            last_event: None,
            finished: false,
        }
    }

    /// A scan's reducer from event 0: the accumulators built with the scan's first parameters.
    pub fn start(
        configs: &BTreeMap<String, AccumulatorConfig>,
        parameters: ParameterValues,
        capacity: usize,
    ) -> Result<Self, ConfigError> {
        let descriptions = crate::describe_parameters(configs);
        let resolved = beamflow_net::parameters(parameters.clone(), &descriptions);
        let mut core = Self::new(Reducer::new(configs, resolved)?, EventNumber(0), capacity);
        core.parameters = parameters;
        Ok(core)
    }

    /// Starts the scan's checkpoint at `path` (replacing any file there); from now on
    /// everything applied is recorded.
    pub fn keep_checkpoint(&mut self, path: &Path, scan: u64, uuid: &str) {
        self.checkpoint = Some(Checkpoint::create(path, scan, uuid, &self.parameters));
    }

    /// Rebuilds a scan's reducer from its checkpoint at `path`: the records applied in order,
    /// through the same methods live inputs take, then the checkpoint appended to from where
    /// its valid records end.
    pub fn restore(
        configs: &BTreeMap<String, AccumulatorConfig>,
        path: &Path,
        uuid: &str,
        capacity: usize,
    ) -> Result<Self, RestoreError> {
        let mut core: Option<Self> = None;
        let mut failed = None;
        let end = checkpoint::read(path, |record| {
            if failed.is_some() {
                return;
            }
            match (record, core.as_mut()) {
                (
                    Record::Start {
                        uuid: u,
                        parameters,
                        ..
                    },
                    None,
                ) if u == uuid => match Self::start(configs, parameters, capacity) {
                    Ok(started) => core = Some(started),
                    Err(error) => failed = Some(error),
                },
                (_, None) => {}
                (Record::Start { .. }, Some(_)) => {}
                (Record::Parameters(values), Some(core)) => core.set_parameters(values),
                (
                    Record::Event {
                        event,
                        results,
                        missing,
                    },
                    Some(core),
                ) => {
                    core.reorder.restored(event);
                    core.apply(event, &results, missing);
                    core.restored_events += 1;
                }
                (Record::Lost { from: _, to }, Some(core)) => {
                    core.rewind(to);
                }
                (Record::Finish, Some(core)) => core.finish(),
            }
        })?;
        if let Some(error) = failed {
            return Err(error.into());
        }
        let mut core = core.ok_or_else(|| RestoreError::NotThisScan {
            path: path.to_owned(),
            uuid: uuid.to_owned(),
        })?;
        core.checkpoint = Some(Checkpoint::append(path, end.valid));
        Ok(core)
    }

    /// Takes one input and applies every event it completes; returns the next event to apply
    /// (the controller's "reduced up to", which releases the ingesters' retained frames).
    pub fn handle(&mut self, input: ReducerInput) -> EventNumber {
        match input {
            ReducerInput::Expect {
                event_number,
                workers,
            } => self.reorder.expect(event_number, workers),
            ReducerInput::Report(report) => {
                if !report.missing.is_empty() {
                    self.incomplete
                        .entry(report.event_number)
                        .or_default()
                        .extend(report.missing.iter().cloned());
                }
                let (event, worker) = (report.event_number, report.worker.clone());
                if self.reorder.offer(report) == Offer::Unexpected {
                    if self.unexpected_reports == 0 {
                        warn!(%event, %worker, "Report from a worker the event was taken from; kept (counted from now on).");
                    }
                    self.unexpected_reports += 1;
                }
            }
        }
        while let Some((event, results)) = self.reorder.pop_ready() {
            if let Some(created_at) = results.iter().find_map(|r| r.created_at) {
                let micros = beamflow_protocol::Timestamp::now()
                    .duration_since(created_at)
                    .as_micros()
                    .clamp(0, i128::from(u32::MAX));
                if self.latencies.len() == LATENCY_WINDOW {
                    self.latencies.pop_front();
                }
                self.latencies.push_back(micros as u32);
            }
            let missing: Vec<StreamName> = self
                .incomplete
                .remove(&event)
                .map(|m| m.into_iter().collect())
                .unwrap_or_default();
            if let Some(checkpoint) = self.checkpoint.as_mut() {
                // A display frame is not state: a restarted reducer shows the next one.
                let kept: Vec<&ResultData> = results
                    .iter()
                    .filter(|result| !self.reducer.is_claimed(&result.analysis))
                    .collect();
                checkpoint.event(event, &kept, &missing);
            }
            self.apply(event, &results, missing);
        }
        self.reorder.next_event()
    }

    /// Applies one event's results; the one path for live and restored events.
    fn apply(&mut self, event: EventNumber, results: &[ResultData], missing: Vec<StreamName>) {
        self.last_event = Some(event);
        if !missing.is_empty() {
            self.incomplete_events += 1;
            match self.incomplete_listed.back_mut() {
                Some(run) if run.last.0 + 1 == event.0 && run.missing == missing => {
                    run.last = event;
                }
                _ => {
                    if self.incomplete_listed.len() == INCOMPLETE_LISTED {
                        self.incomplete_listed.pop_front();
                    }
                    self.incomplete_listed.push_back(IncompleteEvents {
                        first: event,
                        last: event,
                        missing,
                    });
                }
            }
        }
        for result in results {
            self.reducer.apply(result);
        }
    }

    /// Sets the parameters (dranspose's bytes form, as the controller sends them) the
    /// accumulators see from the next result on.
    pub fn set_parameters(&mut self, values: ParameterValues) {
        if let Some(checkpoint) = self.checkpoint.as_mut() {
            checkpoint.parameters(&values);
        }
        let resolved =
            beamflow_net::parameters(values.clone(), &self.reducer.describe_parameters());
        self.reducer.set_parameters(resolved);
        self.parameters = values;
    }

    /// The parameter values last set.
    pub fn parameters(&self) -> &ParameterValues {
        &self.parameters
    }

    /// Runs the accumulators' timers that are due (see [`Reducer::run_timers`]); not after
    /// the scan ended.
    pub fn run_timers(&mut self, now: std::time::Instant) {
        if !self.finished {
            self.reducer.run_timers(now);
        }
    }

    /// Ends the scan: the accumulators' `finish`, once.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(checkpoint) = self.checkpoint.as_mut() {
            checkpoint.finish();
        }
        self.reducer.finish();
    }

    /// Whether the scan has ended.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The scan goes on from `from`: what is buffered of events from there on is dropped (they
    /// are recomputed and expected again). With `from` past the next event, the events between
    /// were released without a checkpoint covering them: they are skipped, counted as lost and
    /// returned. Events already applied stay applied; their reports come again as duplicates.
    pub fn rewind(&mut self, from: EventNumber) -> Option<Range<EventNumber>> {
        let next = self.reorder.next_event();
        // Every buffered event is at or past the next one: from there on it is dropped, and
        // before it (when skipped) lost.
        self.incomplete.clear();
        let skipped = self.reorder.rewind(from);
        if skipped == 0 {
            return None;
        }
        self.lost_events += skipped;
        if let Some(checkpoint) = self.checkpoint.as_mut() {
            checkpoint.lost(next, from);
        }
        Some(next..from)
    }

    /// Writes what the checkpoint recorded since the last call; whether it covers every event
    /// applied (false without a checkpoint, or once it failed).
    pub fn flush_checkpoint(&mut self) -> bool {
        self.checkpoint.as_mut().is_some_and(Checkpoint::flush)
    }

    /// The checkpoint, if one is kept or was given up during the scan.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// Events restored from the checkpoint.
    pub fn restored_events(&self) -> u64 {
        self.restored_events
    }

    /// Events skipped by a rewind past the next event: not in the state.
    pub fn lost_events(&self) -> u64 {
        self.lost_events
    }

    /// The last [`INCOMPLETE_LISTED`] runs of events applied with streams missing, oldest first.
    pub fn incomplete_listed(&self) -> Vec<IncompleteEvents> {
        self.incomplete_listed.iter().cloned().collect()
    }

    /// The accumulators, for publishing their state.
    pub fn reducer(&self) -> &Reducer {
        &self.reducer
    }

    /// The last event applied.
    pub fn last_event(&self) -> Option<EventNumber> {
        self.last_event
    }

    /// The next event to apply.
    pub fn next_event(&self) -> EventNumber {
        self.reorder.next_event()
    }

    /// Latency percentiles over the last events, if any had results.
    pub fn latency(&self) -> Option<Latency> {
        let mut sorted: Vec<u32> = self.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| {
            let index = ((sorted.len() - 1) as f64 * q).round() as usize;
            f64::from(sorted[index]) / 1000.0
        };
        (!sorted.is_empty()).then(|| Latency {
            p50: at(0.5),
            p99: at(0.99),
            events: sorted.len(),
        })
    }

    /// The counters so far.
    pub fn counts(&self) -> LiveCounts {
        LiveCounts {
            order: self.reorder.counts(),
            incomplete_events: self.incomplete_events,
            unexpected_reports: self.unexpected_reports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AccumulatorConfig;
    use beamflow_protocol::{Parameters, ResultData, Value};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn report(event: u64, worker: &str, mean: f64, missing: &[&str]) -> ReducerInput {
        ReducerInput::Report(EventReport {
            event_number: EventNumber(event),
            worker: worker.into(),
            results: vec![ResultData {
                event_number: EventNumber(event),
                analysis: "stats".into(),
                worker: worker.into(),
                created_at: None,
                payload: Arc::new(Value::Map([("mean".to_owned(), Value::Float(mean))].into())),
            }],
            missing: missing.iter().map(|s| (*s).into()).collect(),
        })
    }

    const ACCUMULATORS: &str = r#"
[history]
kind = "history"
analysis = "stats"
values = { mean = "mean" }

[qs]
kind = "quad_scan"
analysis = "shots"
setting = "qe04"
energy_ev = 135e6
quad_length_m = 0.108
rmat_x = [[1.0, 2.26], [0.0, 1.0]]
rmat_y = [[1.0, 2.26], [0.0, 1.0]]
"#;

    fn configs() -> BTreeMap<String, AccumulatorConfig> {
        toml::from_str(ACCUMULATORS).unwrap()
    }

    fn measuring(id: &str) -> ParameterValues {
        vec![(
            "quad_scan_measurement".into(),
            beamflow_protocol::control::ByteVec::from(
                beamflow_protocol::ParameterValue::Str(id.to_owned())
                    .to_bytes()
                    .to_vec(),
            ),
        )]
    }

    /// The inputs of a scan of `events` events, with the measurement parameter set at event 5
    /// and cleared at event 8; every third event lacks `pcap`.
    fn feed(core: &mut ReducerCore, events: std::ops::Range<u64>) {
        for n in events {
            match n {
                5 => core.set_parameters(measuring("m1")),
                8 => core.set_parameters(measuring("")),
                _ => {}
            }
            let missing: &[&str] = if n % 3 == 0 { &["pcap"] } else { &[] };
            core.handle(report(n, "w1", n as f64, missing));
            core.handle(ReducerInput::Expect {
                event_number: EventNumber(n),
                workers: [WorkerName::from("w1")].into(),
            });
        }
    }

    /// The state as JSON, without `quad_scan`'s wall-clock times (when a measurement was
    /// opened and closed), the one part that is not a function of the inputs.
    fn state_json(core: &ReducerCore) -> String {
        fn strip(value: &mut serde_json::Value) {
            match value {
                serde_json::Value::Object(map) => {
                    map.retain(|key, _| !matches!(key.as_str(), "started_at" | "ended_at"));
                    map.values_mut().for_each(strip);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut state = serde_json::to_value(core.reducer().state()).unwrap();
        strip(&mut state);
        state.to_string()
    }

    #[test]
    fn a_reducer_rebuilt_from_its_checkpoint_goes_on_as_if_never_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::checkpoint::path(dir.path(), "scan-uuid");
        let mut whole = ReducerCore::start(&configs(), measuring(""), 64).unwrap();
        feed(&mut whole, 0..12);
        whole.finish();
        assert!(
            whole
                .reducer()
                .state()
                .pointer("qs/measurements/m1/state")
                .is_some(),
            "the parameters took effect"
        );
        for stop_at in [0, 4, 6, 9] {
            let mut first = ReducerCore::start(&configs(), measuring(""), 64).unwrap();
            first.keep_checkpoint(&path, 1, "scan-uuid");
            feed(&mut first, 0..stop_at);
            // Reports past the last flush are in no checkpoint: the controller rewinds to where
            // the checkpoint ends and they come again.
            assert!(first.flush_checkpoint());
            first.handle(report(stop_at, "w1", -1.0, &[]));
            drop(first);
            let mut resumed = ReducerCore::restore(&configs(), &path, "scan-uuid", 64).unwrap();
            assert_eq!(resumed.next_event(), EventNumber(stop_at));
            assert_eq!(resumed.restored_events(), stop_at);
            feed(&mut resumed, stop_at..12);
            resumed.finish();
            assert_eq!(
                state_json(&resumed),
                state_json(&whole),
                "stopped at {stop_at}"
            );
            assert_eq!(resumed.counts().order.released, 12);
            assert_eq!(resumed.counts().incomplete_events, 4);
            assert_eq!(resumed.incomplete_listed(), whole.incomplete_listed());
            assert!(resumed.flush_checkpoint());
            // And once more, from the whole scan's checkpoint.
            let again = ReducerCore::restore(&configs(), &path, "scan-uuid", 64).unwrap();
            assert_eq!(state_json(&again), state_json(&whole));
            assert!(again.is_finished());
        }
        assert_eq!(
            serde_json::to_value(&whole.incomplete_listed()[..2]).unwrap(),
            serde_json::json!([
                {"first": 0, "last": 0, "missing": ["pcap"]},
                {"first": 3, "last": 3, "missing": ["pcap"]}
            ])
        );
        assert!(matches!(
            ReducerCore::restore(&configs(), &path, "another-scan", 64),
            Err(RestoreError::NotThisScan { .. })
        ));
    }

    #[test]
    fn a_rewind_drops_buffered_reports_and_counts_skipped_events_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::checkpoint::path(dir.path(), "u");
        let mut core = ReducerCore::start(&configs(), measuring(""), 64).unwrap();
        core.keep_checkpoint(&path, 1, "u");
        feed(&mut core, 0..3);
        core.handle(report(4, "w1", 99.0, &["pcap"]));
        core.handle(report(3, "w1", 99.0, &[]));
        assert_eq!(core.rewind(EventNumber(3)), None);
        // Recomputed: the reports from before the rewind are gone.
        feed(&mut core, 3..5);
        let means = core.reducer().state();
        assert_eq!(
            serde_json::to_string(means.pointer("history/values/mean").unwrap()).unwrap(),
            "[0.0,1.0,2.0,3.0,4.0]"
        );
        assert_eq!(core.counts().incomplete_events, 2, "events 0 and 3 only");
        assert_eq!(
            core.rewind(EventNumber(9)),
            Some(EventNumber(5)..EventNumber(9))
        );
        assert_eq!(core.lost_events(), 4);
        feed(&mut core, 9..10);
        assert_eq!(core.next_event(), EventNumber(10));
        assert!(core.flush_checkpoint());
        let restored = ReducerCore::restore(&configs(), &path, "u", 64).unwrap();
        assert_eq!(
            (
                restored.next_event(),
                restored.lost_events(),
                restored.restored_events()
            ),
            (EventNumber(10), 4, 6)
        );
        assert_eq!(state_json(&restored), state_json(&core));
    }

    #[test]
    fn a_checkpoint_write_failure_leaves_the_reducer_reducing() {
        let mut core = ReducerCore::start(&configs(), measuring(""), 64).unwrap();
        core.keep_checkpoint(Path::new("/proc/no/such/folder/x.checkpoint"), 1, "u");
        feed(&mut core, 0..3);
        assert!(!core.flush_checkpoint());
        assert_eq!(core.next_event(), EventNumber(3));
        assert_eq!(core.checkpoint().map(Checkpoint::failures), Some(1));
    }

    #[test]
    fn applies_reports_in_event_order_and_counts_incomplete_events() {
        let config: AccumulatorConfig =
            toml::from_str("kind = \"history\"\nvalues = { mean = \"mean\" }").unwrap();
        let reducer = Reducer::new(
            &BTreeMap::from([("history".to_owned(), config)]),
            Parameters::default(),
        )
        .unwrap();
        let mut core = ReducerCore::new(reducer, EventNumber(0), 16);
        let expect = |n: u64, worker: &str| ReducerInput::Expect {
            event_number: EventNumber(n),
            workers: [WorkerName::from(worker)].into(),
        };
        core.handle(expect(0, "w1"));
        core.handle(expect(1, "w2"));
        assert_eq!(
            core.handle(report(1, "w2", 1.0, &["pcap"])),
            EventNumber(0),
            "event 0 still open"
        );
        assert_eq!(core.handle(report(0, "w1", 0.0, &[])), EventNumber(2));
        let state = core.reducer().state();
        assert_eq!(
            serde_json::to_string(state.pointer("history/values/mean").unwrap()).unwrap(),
            "[0.0,1.0]"
        );
        assert_eq!(core.counts().incomplete_events, 1);
        assert_eq!(core.counts().order.released, 2);
    }
}
