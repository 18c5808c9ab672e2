//! Python payloads as beamflow's analyses and accumulators: what `kind = "python"` builds in
//! a `beamflow` that runs inside a Python environment ([`install`]).
//!
//! One interpreter per process, so every call holds its lock: a worker process runs one
//! payload call at a time, as a dranspose worker does, and parallelism comes from worker
//! processes. A payload's own mutex is waited for with the interpreter's lock let go.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use beamflow_protocol::payload::PayloadApi;
use beamflow_protocol::{EventData, ParameterDescription, Parameters, ResultData, Value};
use beamflow_reducer::accumulators::python as reducer_side;
use beamflow_workers::analyses::python::{self as worker_side, ResultForm};
use beamflow_workers::{AnalysisError, DynAnalysis};
use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::sync::MutexExt as _;
use pyo3::types::PyDict;
use tracing::{error, info};

use crate::analysis::PythonAnalysis;
use crate::dranspose::{DransposeReducer, DransposeWorker, pickle, unpickle};
use crate::{PayloadError, from_value, load_class, to_value};

/// The key of a result that travels pickled (`results = "python"`): `{python_pickle: bytes}`.
pub const PICKLE_KEY: &str = "python_pickle";

/// Makes `kind = "python"` analyses and accumulators run in this process's interpreter.
pub fn install() {
    static RUNTIME: Runtime = Runtime;
    worker_side::install(&RUNTIME);
    reducer_side::install(&RUNTIME);
}

/// Calls `close(context)` on the latest instance of every payload class, as dranspose does
/// when its process ends.
pub fn close_all() {
    Python::attach(|py| {
        let contexts = std::mem::take(&mut *lock(&CONTEXTS));
        for (payload, context) in contexts {
            let Some(instance) = context.latest else {
                continue;
            };
            let closed = crate::payload::call_hook(
                instance.bind(py),
                "close",
                context.dict.bind(py).as_any(),
            );
            if let Err(error) = closed {
                error!(%payload, %error, "The payload's close failed.");
            }
        }
    });
}

struct Runtime;

/// A payload's `context`: one dict for the process's lifetime, as a dranspose worker or
/// reducer process keeps one, and its latest instance, for `close`. Keyed by the payload:
/// `beamflow run` has several workers in one process, each with its own, as if apart.
struct Context {
    dict: Py<PyDict>,
    latest: Option<Py<PyAny>>,
}

static CONTEXTS: Mutex<BTreeMap<String, Context>> = Mutex::new(BTreeMap::new());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A payload call that panicked in Rust left nothing half-written that matters here.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn context<'py>(py: Python<'py>, key: &str) -> Bound<'py, PyDict> {
    lock(&CONTEXTS)
        .entry(key.to_owned())
        .or_insert_with(|| Context {
            dict: PyDict::new(py).unbind(),
            latest: None,
        })
        .dict
        .bind(py)
        .clone()
}

fn remember(py: Python<'_>, key: &str, instance: &Py<PyAny>) {
    if let Some(context) = lock(&CONTEXTS).get_mut(key) {
        context.latest = Some(instance.clone_ref(py));
    }
}

/// Every parameter a payload class of this process's pipeline describes: the pipeline file is
/// checked when it is loaded, which reads every class's descriptions, worker's and reducer's.
static DESCRIPTIONS: Mutex<BTreeMap<String, ParameterDescription>> = Mutex::new(BTreeMap::new());

fn describe(class: &str, folder: &Path) -> Result<Vec<ParameterDescription>, PayloadError> {
    let described = Python::attach(|py| {
        let cls = load_class(py, class, folder)?;
        crate::describe_parameters(&cls)
    })?;
    let mut known = lock(&DESCRIPTIONS);
    for description in &described {
        known.insert(description.name.to_string(), description.clone());
    }
    Ok(described)
}

/// The parameters as dranspose gives them to every payload: typed, and with defaults, by the
/// descriptions of all the pipeline's payloads (a worker reads what its reducer describes),
/// where beamflow's own resolution knew only this process's side.
fn as_dranspose_gives(parameters: &Parameters) -> Parameters {
    let known: Vec<ParameterDescription> = lock(&DESCRIPTIONS).values().cloned().collect();
    if known.is_empty() {
        return parameters.clone();
    }
    let raw = parameters
        .iter()
        .map(|(name, value)| (name.clone(), value.to_bytes()));
    Parameters::resolve(raw, &known).unwrap_or_else(|_| parameters.clone())
}

impl worker_side::PythonRuntime for Runtime {
    fn build(
        &self,
        config: &worker_side::PythonConfig,
    ) -> Result<Box<dyn DynAnalysis>, beamflow_workers::check::TableError> {
        // Imported now, so a typo in the class fails the worker at its start.
        Python::attach(|py| load_class(py, config.class.as_str(), &config.folder()).map(drop))
            .map_err(|error| {
                beamflow_workers::check::TableError::value("class", error.to_string())
            })?;
        static WORKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let number = WORKERS.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(PythonWorker {
            config: config.clone(),
            name: format!("beamflow-{}-{number}", std::process::id()),
            context: format!("worker {number} {}", config.class),
            state: Mutex::new(WorkerState::default()),
        }))
    }

    fn describe_parameters(
        &self,
        config: &worker_side::PythonConfig,
    ) -> Result<Vec<ParameterDescription>, beamflow_workers::check::TableError> {
        describe(config.class.as_str(), &config.folder())
            .map_err(|error| beamflow_workers::check::TableError::value("class", error.to_string()))
    }
}

impl reducer_side::PythonRuntime for Runtime {
    fn build(
        &self,
        config: &reducer_side::PythonConfig,
    ) -> Result<Box<dyn beamflow_reducer::Accumulator>, beamflow_reducer::accumulators::TableError>
    {
        Python::attach(|py| load_class(py, config.class.as_str(), &config.folder()).map(drop))
            .map_err(|error| {
                beamflow_reducer::accumulators::TableError::new("class", error.to_string())
            })?;
        Ok(Box::new(PythonReducer {
            config: config.clone(),
            payload: None,
            failed: None,
            publish_failed: AtomicBool::new(false),
        }))
    }

    fn describe_parameters(
        &self,
        config: &reducer_side::PythonConfig,
    ) -> Result<Vec<ParameterDescription>, beamflow_reducer::accumulators::TableError> {
        describe(config.class.as_str(), &config.folder()).map_err(|error| {
            beamflow_reducer::accumulators::TableError::new("class", error.to_string())
        })
    }
}

/// A worker payload under either contract.
enum WorkerPayload {
    Dranspose(DransposeWorker),
    Beamflow(PythonAnalysis),
}

#[derive(Default)]
struct WorkerState {
    /// The scan's instance.
    payload: Option<WorkerPayload>,
    /// Why the scan's instance could not be made: every event of the scan fails with it.
    failed: Option<String>,
    /// The parameters the instance has.
    parameters: Parameters,
    /// `get_tick_interval`, seconds.
    tick_interval: Option<f64>,
    /// When the last ticked event was made, µs since 1970.
    last_tick: Option<i64>,
}

/// A Python analysis: its class instantiated at every scan's start.
struct PythonWorker {
    config: worker_side::PythonConfig,
    /// The name dranspose's `state.name` gives.
    name: String,
    /// Its `context`'s key.
    context: String,
    state: Mutex<WorkerState>,
}

impl PythonWorker {
    /// Its state, waited for with the interpreter's lock let go: a payload call that lets it go
    /// (numpy, h5py) must be able to take it back while another thread waits here.
    fn lock_state(&self, py: Python<'_>) -> MutexGuard<'_, WorkerState> {
        self.state
            .lock_py_attached(py)
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn instantiate(&self, py: Python<'_>, state: &mut WorkerState, given: &Parameters) {
        let parameters = &as_dranspose_gives(given);
        let class = self.config.class.as_str();
        let context = context(py, &self.context);
        let folder = self.config.folder();
        let made = match self.config.api {
            PayloadApi::Dranspose => {
                DransposeWorker::new(py, class, &folder, parameters, &context, &self.name)
                    .map(WorkerPayload::Dranspose)
            }
            PayloadApi::Beamflow => PythonAnalysis::new(py, class, &folder, parameters, &context)
                .map(WorkerPayload::Beamflow),
        };
        state.parameters = given.clone();
        state.last_tick = None;
        state.tick_interval = None;
        match made {
            Ok(payload) => {
                let instance = match &payload {
                    WorkerPayload::Dranspose(worker) => worker.instance(),
                    WorkerPayload::Beamflow(analysis) => analysis.instance(),
                };
                remember(py, &self.context, instance);
                state.payload = Some(payload);
                state.failed = None;
                self.read_tick_interval(py, state);
            }
            Err(failure) => {
                error!(class, error = %failure, "The payload cannot be instantiated; every event of this scan fails.");
                state.payload = None;
                state.failed = Some(failure.to_string());
            }
        }
    }

    fn read_tick_interval(&self, py: Python<'_>, state: &mut WorkerState) {
        if let Some(WorkerPayload::Dranspose(worker)) = &state.payload {
            state.tick_interval = worker.tick_interval(py).unwrap_or_else(|failure| {
                error!(class = %self.config.class, error = %failure, "get_tick_interval failed; no event ticks.");
                None
            });
        }
    }

    /// dranspose's tick: at most one event per interval gets `tick = True`, the first one
    /// first. Decided by the events' own times, so a replay ticks the same events every time.
    fn tick(state: &mut WorkerState, event: &EventData) -> bool {
        let Some(interval) = state.tick_interval else {
            return false;
        };
        let now = event
            .created_at
            .map(|at| at.as_microsecond())
            .unwrap_or_else(wall_clock_micros);
        let due = state
            .last_tick
            .is_none_or(|last| (now - last) as f64 >= interval * 1e6);
        if due {
            state.last_tick = Some(now);
        }
        due
    }

    fn run(
        &self,
        py: Python<'_>,
        event: &EventData,
        parameters: &Parameters,
    ) -> Result<Option<Value>, AnalysisError> {
        let mut state = self.lock_state(py);
        if state.payload.is_none() && state.failed.is_none() {
            self.instantiate(py, &mut state, parameters);
        } else if state.parameters != *parameters {
            let completed = as_dranspose_gives(parameters);
            let changed = match &mut state.payload {
                Some(WorkerPayload::Dranspose(worker)) => worker.set_parameters(py, &completed),
                Some(WorkerPayload::Beamflow(analysis)) => analysis.set_parameters(py, &completed),
                None => Ok(()),
            };
            if let Err(failure) = changed {
                return Err(AnalysisError::Invalid(failure.to_string()));
            }
            state.parameters = parameters.clone();
            self.read_tick_interval(py, &mut state);
        }
        if let Some(failed) = &state.failed {
            return Err(AnalysisError::Invalid(format!(
                "the payload could not be instantiated for this scan: {failed}"
            )));
        }
        let tick = Self::tick(&mut state, event);
        let failed = |failure: PayloadError| AnalysisError::Invalid(failure.to_string());
        match &state.payload {
            Some(WorkerPayload::Dranspose(worker)) => {
                let Some(result) = worker.process_event(py, event, tick).map_err(failed)? else {
                    return Ok(None);
                };
                match self.config.result_form() {
                    ResultForm::Python => Ok(Some(Value::Map(BTreeMap::from([(
                        PICKLE_KEY.to_owned(),
                        Value::Bytes(pickle(&result).map_err(failed)?),
                    )])))),
                    ResultForm::Value => to_value(&result)
                        .map(Some)
                        .map_err(|error| AnalysisError::Invalid(error.to_string())),
                }
            }
            Some(WorkerPayload::Beamflow(analysis)) => {
                analysis.process_event(py, event).map_err(failed)
            }
            None => Ok(None),
        }
    }
}

/// Wall-clock time for events that carry none, µs since 1970.
fn wall_clock_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as i64)
}

impl DynAnalysis for PythonWorker {
    fn process(
        &self,
        event: &EventData,
        parameters: &Parameters,
    ) -> Result<Option<Value>, AnalysisError> {
        Python::attach(|py| self.run(py, event, parameters))
    }

    fn process_batch(
        &self,
        events: &[&EventData],
        parameters: &Parameters,
    ) -> Vec<Result<Option<Value>, AnalysisError>> {
        Python::attach(|py| {
            events
                .iter()
                .map(|event| self.run(py, event, parameters))
                .collect()
        })
    }

    fn start_scan(&self, parameters: &Parameters) {
        Python::attach(|py| {
            let mut state = self.lock_state(py);
            self.instantiate(py, &mut state, parameters);
        });
    }

    fn finish(&self, _parameters: &Parameters) {
        Python::attach(|py| {
            let state = self.lock_state(py);
            let finished = match &state.payload {
                Some(WorkerPayload::Dranspose(worker)) => worker.finish(py),
                Some(WorkerPayload::Beamflow(analysis)) => analysis.finish(py),
                None => Ok(()),
            };
            if let Err(failure) = finished {
                error!(class = %self.config.class, error = %failure, "The payload's finish failed.");
            }
        });
    }

    fn in_order(&self) -> bool {
        true
    }
}

/// A Python accumulator: its class instantiated with the scan's first parameters (the reducer
/// is built anew for every scan).
struct PythonReducer {
    config: reducer_side::PythonConfig,
    payload: Option<DransposeReducer>,
    failed: Option<String>,
    /// Whether a failure to read `publish` was logged already.
    publish_failed: AtomicBool,
}

impl PythonReducer {
    fn log_failure(&self, hook: &str, failure: &PayloadError) {
        error!(class = %self.config.class, hook, error = %failure, "The payload's hook failed.");
    }
}

impl beamflow_reducer::Accumulator for PythonReducer {
    fn process_result(
        &mut self,
        result: &ResultData,
        _parameters: &Parameters,
    ) -> Result<(), beamflow_reducer::AccumulatorError> {
        let invalid = |text: String| beamflow_reducer::AccumulatorError::Invalid(text);
        let Some(payload) = &self.payload else {
            return Err(invalid(format!(
                "the payload could not be instantiated for this scan: {}",
                self.failed.as_deref().unwrap_or("no parameters yet")
            )));
        };
        Python::attach(|py| {
            let object = match pickled(&result.payload) {
                Some(bytes) => {
                    unpickle(py, bytes).map_err(|failure| invalid(failure.to_string()))?
                }
                None => from_value(py, &result.payload).map_err(|error| {
                    invalid(
                        PayloadError::from_python(py, "converting the result", error).to_string(),
                    )
                })?,
            };
            payload
                .process_result(
                    py,
                    result.event_number.0,
                    result.analysis.as_str(),
                    result.worker.as_str(),
                    &object,
                )
                .map_err(|failure| invalid(failure.to_string()))
        })
    }

    fn publish(&self) -> Value {
        let Some(payload) = &self.payload else {
            return Value::Null;
        };
        Python::attach(|py| match payload.publish(py) {
            Ok(value) => value,
            Err(failure) => {
                if !self.publish_failed.swap(true, Ordering::Relaxed) {
                    self.log_failure("publish", &failure);
                }
                Value::Map(BTreeMap::from([(
                    "error".to_owned(),
                    Value::Text(failure.to_string()),
                )]))
            }
        })
    }

    fn parameters_changed(&mut self, given: &Parameters) {
        let parameters = &as_dranspose_gives(given);
        Python::attach(|py| match &mut self.payload {
            Some(payload) => {
                if let Err(failure) = payload.set_parameters(py, parameters) {
                    self.log_failure("parameters", &failure);
                }
            }
            None if self.failed.is_none() => {
                let class = self.config.class.as_str();
                let key = format!("reducer {class}");
                let context = context(py, &key);
                let lean = self.config.api == PayloadApi::Beamflow;
                match DransposeReducer::new(
                    py,
                    class,
                    &self.config.folder(),
                    parameters,
                    &context,
                    lean,
                ) {
                    Ok(payload) => {
                        remember(py, &key, payload.instance());
                        info!(class, "Payload instantiated for the scan.");
                        self.payload = Some(payload);
                    }
                    Err(failure) => {
                        self.log_failure("__init__", &failure);
                        self.failed = Some(failure.to_string());
                    }
                }
            }
            None => {}
        });
    }

    fn finish(&mut self, _parameters: &Parameters) {
        if let Some(payload) = &self.payload {
            Python::attach(|py| {
                if let Err(failure) = payload.finish(py) {
                    self.log_failure("finish", &failure);
                }
            });
        }
    }

    fn timer(&mut self, _parameters: &Parameters) -> Option<Duration> {
        let payload = self.payload.as_ref()?;
        Python::attach(|py| match payload.timer(py) {
            Ok(next) => next,
            Err(failure) => {
                self.log_failure("timer", &failure);
                Some(crate::dranspose::DEFAULT_TIMER)
            }
        })
    }
}

/// The pickle of a result that travels as one.
fn pickled(payload: &Value) -> Option<&Bytes> {
    match payload {
        Value::Map(entries) if entries.len() == 1 => match entries.get(PICKLE_KEY) {
            Some(Value::Bytes(bytes)) => Some(bytes),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use beamflow_protocol::streams::stins;
    use beamflow_protocol::{
        AnalysisName, DType, EventNumber, NdArray, ParameterName, StreamData, WorkerName,
    };
    use beamflow_reducer::AccumulatorConfig;
    use beamflow_reducer::Reducer;
    use beamflow_workers::AnalysisConfig;

    use super::*;
    use crate::test_python;

    /// Payloads written as beamlines write theirs: state from the scan's first event, a
    /// dataclass result, a tick preview, a typed parameter, a hook that raises.
    const WORKER: &str = r#"
from dataclasses import dataclass

import numpy as np
from dranspose.parameters import IntParameter


@dataclass
class Frame:
    number: int
    total: int
    tick: bool
    motor: str


class Worker:
    def __init__(self, parameters=None, context=None, state=None, **kwargs):
        context["instances"] = context.get("instances", 0) + 1
        self.instance = context["instances"]
        self.motor = None

    @staticmethod
    def describe_parameters():
        return [IntParameter(name="offset", default=5)]

    def get_tick_interval(self, parameters):
        return 10.0

    def process_event(self, event, parameters=None, tick=False, *args, **kwargs):
        frames = event.streams["det"].frames
        if event.event_number == 0:
            self.motor = frames[0].decode()
            return None
        if event.event_number == 3:
            raise ValueError("a bad frame")
        total = int(np.frombuffer(frames[0].bytes, dtype=np.uint8).sum())
        return Frame(event.event_number, total + parameters["offset"].value, tick,
                     f"{self.motor} #{self.instance}")


class Plain(Worker):
    def process_event(self, event, parameters=None, tick=False, *args, **kwargs):
        frame = super().process_event(event, parameters, tick)
        return None if frame is None else {"total": frame.total, "values": np.arange(3)}
"#;

    const REDUCER: &str = r#"
import threading

from .worker import Frame


class Reducer:
    def __init__(self, parameters=None, context=None, state=None, **kwargs):
        self.publish = {"totals": {}, "ticks": [], "timer": 0, "finished": False, "other": []}
        self.publish_rlock = threading.RLock()
        self.offset = parameters["offset"].value

    def process_result(self, result, parameters=None):
        with self.publish_rlock:
            if isinstance(result.payload, Frame):
                self.publish["totals"][str(result.event_number)] = [result.payload.total,
                                                                   result.payload.motor]
                if result.payload.tick:
                    self.publish["ticks"].append(result.event_number)
            else:
                self.publish["other"].append(result.payload)
        if result.event_number == 4:
            raise RuntimeError("cannot reduce four")

    def timer(self, parameters):
        self.publish["timer"] += 1
        return 3600

    def finish(self, parameters=None):
        self.publish["finished"] = parameters["offset"].value


class Lean:
    def __init__(self, parameters, context):
        self.publish = {"seen": [], "offset": parameters["offset"]}

    def process_result(self, result, parameters):
        self.publish["seen"].append([result["analysis"], result["payload"]["total"],
                                     result["payload"]["values"].tolist()])
"#;

    fn payloads(package: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join(package);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("__init__.py"), "").unwrap();
        std::fs::write(folder.join("worker.py"), WORKER).unwrap();
        std::fs::write(folder.join("reducer.py"), REDUCER).unwrap();
        dir
    }

    fn analysis(dir: &tempfile::TempDir, table: &str) -> Box<dyn DynAnalysis> {
        install();
        let table = format!("kind = \"python\"\npath = {:?}\n{table}", dir.path());
        let config: AnalysisConfig = toml::from_str(&table).unwrap();
        config.build().unwrap()
    }

    fn reducer(dir: &tempfile::TempDir, table: &str, parameters: Parameters) -> Reducer {
        let table = format!("kind = \"python\"\npath = {:?}\n{table}", dir.path());
        let config: AccumulatorConfig = toml::from_str(&table).unwrap();
        Reducer::new(
            &BTreeMap::from([("payload".to_owned(), config)]),
            parameters,
        )
        .unwrap()
    }

    fn parameters(analysis: &dyn DynAnalysis, dir: &tempfile::TempDir, class: &str) -> Parameters {
        let _ = analysis;
        let table = format!(
            "kind = \"python\"\npath = {:?}\nclass = {class:?}",
            dir.path()
        );
        let config: AnalysisConfig = toml::from_str(&table).unwrap();
        let descriptions = config.describe_parameters();
        assert_eq!(descriptions.len(), 1, "the payload's own description");
        Parameters::resolve(
            [(ParameterName::from("offset"), Bytes::from_static(b"100"))],
            &descriptions,
        )
        .unwrap()
    }

    /// Event `n` made `seconds` after the scan's start, with one frame.
    fn event(number: u64, seconds: i64, frame: &'static [u8]) -> EventData {
        let mut event = EventData::new(EventNumber(number));
        event.created_at = Some(jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap());
        event.streams.insert(
            "det".into(),
            StreamData {
                typ: "raw".into(),
                frames: vec![Bytes::from_static(frame)],
            },
        );
        event
    }

    fn apply(reducer: &mut Reducer, number: u64, analysis: &str, payload: Value) {
        reducer.apply(&ResultData {
            event_number: EventNumber(number),
            analysis: AnalysisName::from(analysis),
            worker: WorkerName::from("w1"),
            created_at: None,
            payload: Arc::new(payload),
        });
    }

    #[test]
    fn a_dranspose_worker_and_reducer_run_a_scan_as_dranspose_runs_them() {
        let dir = payloads("runtime_scan");
        test_python(|_| {});
        let worker = analysis(&dir, "class = \"runtime_scan.worker:Worker\"");
        assert!(worker.in_order());
        let parameters = parameters(&*worker, &dir, "runtime_scan.worker:Worker");
        let mut reducer = reducer(
            &dir,
            "class = \"runtime_scan.reducer:Reducer\"",
            parameters.clone(),
        );
        reducer.run_timers(std::time::Instant::now());

        for scan in 1..=2 {
            worker.start_scan(&parameters);
            let events = [
                event(0, 0, b"sx"),
                event(1, 1, &[1, 2]),
                event(2, 5, &[3]),
                event(3, 6, &[0]),
                event(4, 12, &[4]),
            ];
            let mut errors = Vec::new();
            for event in &events {
                match worker.process(event, &parameters) {
                    Ok(Some(result)) => {
                        assert!(
                            pickled(&result).is_some(),
                            "results travel pickled: {result:?}"
                        );
                        apply(&mut reducer, event.event_number.0, "frames", result);
                    }
                    Ok(None) => {}
                    Err(error) => errors.push(error.to_string()),
                }
            }
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].contains("ValueError: a bad frame"),
                "{}",
                errors[0]
            );
            assert!(
                errors[0].contains("Traceback"),
                "with its traceback: {}",
                errors[0]
            );
            let published = serde_json::to_value(reducer.state()).unwrap();
            let motor = format!("sx #{scan}");
            assert_eq!(
                published["payload"]["totals"],
                serde_json::json!({"1": [103, motor], "2": [103, motor], "4": [104, motor]}),
                "a new instance per scan, state from the scan's first event, the parameter typed"
            );
            // The first event ticks (the start, which reports nothing), then the first one
            // 10 s after it, by the events' own times.
            // (One reducer for both scans here: the ticks add up.)
            assert_eq!(
                published["payload"]["ticks"],
                serde_json::json!(vec![4; scan])
            );
        }
        assert_eq!(
            reducer.counts().accumulator_errors.get("payload"),
            Some(&2),
            "the reducer's exception is counted, not fatal"
        );
        reducer.run_timers(std::time::Instant::now());
        reducer.finish();
        let published = serde_json::to_value(reducer.state()).unwrap();
        assert_eq!(
            published["payload"]["timer"], 1,
            "called at the start, then after 3600 s"
        );
        assert_eq!(published["payload"]["finished"], 100);
    }

    #[test]
    fn converted_results_reach_rust_readers_and_the_leaner_contract() {
        let dir = payloads("runtime_values");
        test_python(|_| {});
        let worker = analysis(
            &dir,
            "class = \"runtime_values.worker:Plain\"\nresults = \"value\"",
        );
        let parameters = parameters(&*worker, &dir, "runtime_values.worker:Plain");
        worker.start_scan(&parameters);
        assert_eq!(
            worker.process(&event(0, 0, b"sx"), &parameters).unwrap(),
            None
        );
        let result = worker
            .process(&event(1, 1, &[1, 2]), &parameters)
            .unwrap()
            .unwrap();
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["total"], 103);
        assert_eq!(json["values"]["dtype"], "<i8");
        assert_eq!(json["values"]["shape"], serde_json::json!([3]));

        let mut lean = reducer(
            &dir,
            "class = \"runtime_values.reducer:Lean\"\napi = \"beamflow\"",
            parameters,
        );
        apply(&mut lean, 1, "plain", result);
        let published = serde_json::to_value(lean.state()).unwrap();
        assert_eq!(
            published["payload"],
            serde_json::json!({"seen": [["plain", 103, [0, 1, 2]]], "offset": 100}),
            "numpy arrays come back as arrays"
        );
    }

    #[test]
    fn a_class_that_does_not_import_fails_the_build_with_its_traceback() {
        let dir = payloads("runtime_missing");
        test_python(|_| {});
        install();
        let table = format!(
            "kind = \"python\"\npath = {:?}\nclass = \"runtime_missing.nowhere:Worker\"",
            dir.path()
        );
        let config: AnalysisConfig = toml::from_str(&table).unwrap();
        let error = config.build().err().unwrap();
        assert_eq!(error.key, "class");
        assert!(error.message.contains("No module named"), "{error}");
    }

    #[test]
    fn the_numpy_form_of_a_value_is_an_array_again() {
        test_python(|py| {
            let image = NdArray::new(
                vec![2, 2],
                DType::Uint16,
                Bytes::from_static(&[1, 0, 2, 0, 3, 0, 4, 0]),
            )
            .unwrap();
            let frames = stins::image_frames(0, 1, &image, false);
            let array = py
                .import("numpy")
                .unwrap()
                .call_method1(
                    "frombuffer",
                    (pyo3::types::PyBytes::new(py, &frames[1]), "<u2"),
                )
                .unwrap()
                .call_method1("reshape", ((2, 2),))
                .unwrap();
            let value = to_value(&array).unwrap();
            let back = from_value(py, &value).unwrap();
            assert!(
                back.call_method1("__eq__", (&array,))
                    .unwrap()
                    .call_method0("all")
                    .unwrap()
                    .is_truthy()
                    .unwrap()
            );
            assert_eq!(to_value(&back).unwrap(), value);
        });
    }
}
