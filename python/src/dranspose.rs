//! A dranspose 0.2.0 worker payload, run unchanged: the class named `module.path:Class`,
//! imported relative to the payload's folder, instantiated per scan with `parameters`,
//! `context` and `state` keywords, and called as dranspose calls it,
//! `process_event(event, parameters, tick)`, on dranspose's own `EventData` whose frames are
//! `bytes` that also have `.bytes` (as live `zmq.Frame`s do), so dranspose's parsers take them.
//!
//! The Python side of this (building dranspose's objects) is `dranspose.py`, loaded into the
//! payload's interpreter.

use std::path::Path;

use beamflow_protocol::{EventData, ParameterValue, Parameters};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyModule, PyTuple};

use crate::Frame;
use crate::payload::{PayloadError, call_hook, glue_module, load_class};

/// beamflow's side of dranspose's objects.
fn glue(py: Python<'_>) -> Result<Bound<'_, PyModule>, PayloadError> {
    glue_module(py, include_str!("dranspose.py"), "dranspose")
}

/// A payload's instance for one scan, with what it is called with.
struct Instance {
    /// beamflow's leaner contract (`api = "beamflow"`) instead of dranspose's.
    lean: bool,
    glue: Py<PyModule>,
    instance: Py<PyAny>,
    parameters: Py<PyAny>,
}

impl Instance {
    /// Imports `class` relative to `folder` and has the glue's `maker` (`worker`, `reducer`)
    /// instantiate it with the parameters, `context` and `extra` arguments.
    fn new<'py>(
        py: Python<'py>,
        class: &str,
        folder: &Path,
        parameters: &Parameters,
        lean: bool,
        maker: &str,
        arguments: impl FnOnce(Bound<'py, PyAny>, &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>>,
    ) -> Result<Self, PayloadError> {
        let glue = glue(py)?;
        let cls = load_class(py, class, folder)?;
        let work_parameters = work_parameters(&glue, parameters, lean)
            .map_err(|error| PayloadError::from_python(py, "building the parameters", error))?;
        let instance = arguments(cls, &work_parameters)
            .and_then(|arguments| glue.getattr(maker)?.call1(arguments))
            .map_err(|error| {
                PayloadError::from_python(py, format!("instantiating {class}"), error)
            })?;
        Ok(Self {
            lean,
            glue: glue.unbind(),
            instance: instance.unbind(),
            parameters: work_parameters.unbind(),
        })
    }

    /// New parameter values, passed to every call from now on (the instance stays).
    fn set_parameters(
        &mut self,
        py: Python<'_>,
        parameters: &Parameters,
    ) -> Result<(), PayloadError> {
        let glue = self.glue.bind(py);
        self.parameters = work_parameters(glue, parameters, self.lean)
            .map_err(|error| PayloadError::from_python(py, "building the parameters", error))?
            .unbind();
        Ok(())
    }

    /// Calls `hook(parameters)` if the payload has it.
    fn optional<'py>(
        &self,
        py: Python<'py>,
        hook: &str,
    ) -> Result<Option<Bound<'py, PyAny>>, PayloadError> {
        self.call_optional(py, hook, self.parameters.bind(py))
    }

    /// Calls `hook(argument)` if the payload has it.
    fn call_optional<'py>(
        &self,
        py: Python<'py>,
        hook: &str,
        argument: &Bound<'py, PyAny>,
    ) -> Result<Option<Bound<'py, PyAny>>, PayloadError> {
        call_hook(self.instance.bind(py), hook, argument)
    }
}

/// Methods every payload instance has, whichever contract.
macro_rules! lifecycle {
    ($type:ty) => {
        impl $type {
            /// The payload's instance.
            pub(crate) fn instance(&self) -> &Py<PyAny> {
                &self.0.instance
            }

            /// New parameter values, passed to every call from now on.
            pub fn set_parameters(
                &mut self,
                py: Python<'_>,
                parameters: &Parameters,
            ) -> Result<(), PayloadError> {
                self.0.set_parameters(py, parameters)
            }

            /// `finish(parameters)` at the scan's end, if the payload has it.
            pub fn finish(&self, py: Python<'_>) -> Result<(), PayloadError> {
                self.0.optional(py, "finish").map(drop)
            }

            /// `close(context)` when the process ends, if the payload has it.
            pub fn close(
                &self,
                py: Python<'_>,
                context: &Bound<'_, PyDict>,
            ) -> Result<(), PayloadError> {
                self.0
                    .call_optional(py, "close", context.as_any())
                    .map(drop)
            }
        }
    };
}

lifecycle!(DransposeWorker);
lifecycle!(DransposeReducer);

/// dranspose's `{name: WorkParameter}` of the scan's parameters; `{name: value}` for the
/// leaner contract.
fn work_parameters<'py>(
    glue: &Bound<'py, PyModule>,
    parameters: &Parameters,
    lean: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = glue.py();
    let items = PyList::empty(py);
    for (name, value) in parameters.iter() {
        let data = PyBytes::new(py, &value.to_bytes());
        let typed = match value {
            ParameterValue::Str(text) => text.into_pyobject(py)?.into_any(),
            ParameterValue::Int(n) => n.into_pyobject(py)?.into_any(),
            ParameterValue::Float(x) => x.into_pyobject(py)?.into_any(),
            ParameterValue::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
            ParameterValue::Binary(bytes) => PyBytes::new(py, bytes).into_any(),
        };
        items.append(PyTuple::new(
            py,
            [
                name.as_str().into_pyobject(py)?.into_any(),
                data.into_any(),
                typed,
            ],
        )?)?;
    }
    glue.getattr("parameters")?.call1((items, lean))
}

/// A worker payload, instantiated for one scan.
pub struct DransposeWorker(Instance);

impl DransposeWorker {
    /// Imports `class` (`module.path:Class`) relative to `folder` and instantiates it for a
    /// scan with its parameters; `context` is the process's own dict, kept across scans.
    pub fn new(
        py: Python<'_>,
        class: &str,
        folder: &Path,
        parameters: &Parameters,
        context: &Bound<'_, PyDict>,
        name: &str,
    ) -> Result<Self, PayloadError> {
        Instance::new(
            py,
            class,
            folder,
            parameters,
            false,
            "worker",
            |cls, parameters| {
                PyTuple::new(
                    py,
                    [
                        cls,
                        parameters.clone(),
                        context.clone().into_any(),
                        name.into_pyobject(py)?.into_any(),
                    ],
                )
            },
        )
        .map(Self)
    }

    /// `get_tick_interval(parameters)` in seconds, if the payload has it (a number ≥ 0).
    pub fn tick_interval(&self, py: Python<'_>) -> Result<Option<f64>, PayloadError> {
        let Some(interval) = self.0.optional(py, "get_tick_interval")? else {
            return Ok(None);
        };
        Ok(interval
            .extract::<f64>()
            .ok()
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0))
    }

    /// Calls `process_event(event, parameters, tick)`; `None` when the payload returned
    /// `None` (nothing to report).
    pub fn process_event<'py>(
        &self,
        py: Python<'py>,
        event: &EventData,
        tick: bool,
    ) -> Result<Option<Bound<'py, PyAny>>, PayloadError> {
        let number = event.event_number.0;
        let doing = || format!("process_event of event {number}");
        let streams = PyList::empty(py);
        for (name, stream) in &event.streams {
            let frames = PyList::empty(py);
            for frame in &stream.frames {
                let frame = Bound::new(py, Frame::new(frame.clone()))
                    .map_err(|error| PayloadError::from_python(py, doing(), error))?;
                frames
                    .append(frame)
                    .map_err(|error| PayloadError::from_python(py, doing(), error))?;
            }
            let triple = (name.as_str(), stream.typ.as_str(), frames);
            streams
                .append(triple)
                .map_err(|error| PayloadError::from_python(py, doing(), error))?;
        }
        let glue = self.0.glue.bind(py);
        // Positionally, with three arguments, as dranspose calls it.
        let result = glue
            .getattr("event")
            .and_then(|make| make.call1((number, streams)))
            .and_then(|event| {
                self.0
                    .instance
                    .bind(py)
                    .call_method1("process_event", (event, self.0.parameters.bind(py), tick))
            })
            .map_err(|error| PayloadError::from_python(py, doing(), error))?;
        Ok((!result.is_none()).then_some(result))
    }
}

/// A worker's result as it travels to the reducer's process: a pickle, as dranspose sends
/// it, so the reducer gets the worker's own objects back. Unpickling runs code the pickle
/// names: the reducer takes results only from the pipeline's own workers, the same trust as
/// dranspose's.
pub fn pickle(result: &Bound<'_, PyAny>) -> Result<bytes::Bytes, PayloadError> {
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = result.py();
    DUMPS
        .import(py, "pickle", "dumps")
        .and_then(|dumps| dumps.call1((result,)))
        .and_then(|pickled| {
            Ok(bytes::Bytes::copy_from_slice(
                pickled.cast::<PyBytes>()?.as_bytes(),
            ))
        })
        .map_err(|error| PayloadError::from_python(py, "pickling the result", error))
}

/// The worker's object back from [`pickle`], read from the received bytes without a copy.
pub fn unpickle<'py>(
    py: Python<'py>,
    pickled: &bytes::Bytes,
) -> Result<Bound<'py, PyAny>, PayloadError> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOADS
        .import(py, "pickle", "loads")
        .and_then(|loads| loads.call1((Bound::new(py, Frame::new(pickled.clone()))?,)))
        .map_err(|error| PayloadError::from_python(py, "unpickling a result", error))
}

/// A reducer payload, instantiated for one scan: `process_result` with dranspose's
/// `ResultData`, `timer`, `finish`, and its `publish` dict read as a `Value`.
pub struct DransposeReducer(Instance);

/// What a reducer's `timer` asks: call it again after this long (dranspose's default, 1 s,
/// when it returns no number).
pub const DEFAULT_TIMER: std::time::Duration = std::time::Duration::from_secs(1);

impl DransposeReducer {
    /// Imports `class` relative to `folder` and instantiates it for a scan; `lean` for
    /// beamflow's contract (`Class(parameters=, context=)`, parameters as values, results as
    /// dicts) instead of dranspose's.
    pub fn new(
        py: Python<'_>,
        class: &str,
        folder: &Path,
        parameters: &Parameters,
        context: &Bound<'_, PyDict>,
        lean: bool,
    ) -> Result<Self, PayloadError> {
        Instance::new(
            py,
            class,
            folder,
            parameters,
            lean,
            if lean { "lean_reducer" } else { "reducer" },
            |cls, parameters| {
                PyTuple::new(py, [cls, parameters.clone(), context.clone().into_any()])
            },
        )
        .map(Self)
    }

    /// `process_result(ResultData(event_number, worker, payload), parameters)`; the leaner
    /// contract's result is a dict that also names the analysis.
    pub fn process_result(
        &self,
        py: Python<'_>,
        event_number: u64,
        analysis: &str,
        worker: &str,
        payload: &Bound<'_, PyAny>,
    ) -> Result<(), PayloadError> {
        let glue = self.0.glue.bind(py);
        let make = if self.0.lean { "lean_result" } else { "result" };
        glue.getattr(make)
            .and_then(|make| make.call1((event_number, analysis, worker, payload)))
            .and_then(|result| {
                self.0
                    .instance
                    .bind(py)
                    .call_method1("process_result", (result, self.0.parameters.bind(py)))
            })
            .map(drop)
            .map_err(|error| {
                PayloadError::from_python(
                    py,
                    format!("process_result of event {event_number}"),
                    error,
                )
            })
    }

    /// `timer(parameters)` if the payload has one; how long until the next call.
    pub fn timer(&self, py: Python<'_>) -> Result<Option<std::time::Duration>, PayloadError> {
        let Some(next) = self.0.optional(py, "timer")? else {
            return Ok(None);
        };
        let seconds: Option<f64> = next.extract().ok();
        Ok(Some(
            seconds
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map_or(DEFAULT_TIMER, std::time::Duration::from_secs_f64),
        ))
    }

    /// Its `publish` as a `Value`, read under its `publish_rlock` when it has one (as
    /// dranspose's server reads it); `Null` without a `publish`.
    pub fn publish(&self, py: Python<'_>) -> Result<beamflow_protocol::Value, PayloadError> {
        let doing = "reading publish";
        let glue = self.0.glue.bind(py);
        let pair = glue
            .getattr("publish")
            .and_then(|publish| publish.call1((self.0.instance.bind(py),)))
            .map_err(|error| PayloadError::from_python(py, doing, error))?;
        let (publish, lock): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair
            .extract()
            .map_err(|error| PayloadError::from_python(py, doing, error))?;
        let convert = || {
            crate::to_value(&publish).map_err(|error| PayloadError {
                doing: doing.to_owned(),
                traceback: error.to_string(),
            })
        };
        if lock.is_none() {
            return convert();
        }
        lock.call_method0("__enter__")
            .map_err(|error| PayloadError::from_python(py, doing, error))?;
        let value = convert();
        let none = py.None();
        lock.call_method1("__exit__", (&none, &none, &none))
            .map_err(|error| PayloadError::from_python(py, doing, error))?;
        value
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use beamflow_protocol::streams::stins;
    use beamflow_protocol::{DType, EventNumber, NdArray, ParameterDescription, ParameterType};
    use bytes::Bytes;

    use super::*;
    use crate::{test_python, to_value};

    /// A payload written as MAX IV's beamlines write theirs: dranspose's own STINS parser,
    /// a typed parameter, state from the constructor, the process-wide context.
    const WORKER: &str = r#"
from dranspose.middlewares import stream1
from dranspose.data.stream1 import Stream1Data


class SumWorker:
    def __init__(self, parameters=None, context=None, state=None, **kwargs):
        self.offset = parameters["offset"].value
        self.name = state.name
        context["instances"] = context.get("instances", 0) + 1

    def process_event(self, event, parameters=None, tick=False, *args, **kwargs):
        message = stream1.parse(event.streams["det"])
        if not isinstance(message, Stream1Data):
            return None
        frames = event.streams["det"].frames
        return {
            "frame": message.frame,
            "sum": int(message.data.sum()) + self.offset,
            "tick": tick,
            "worker": self.name,
            "frames_are_bytes": all(isinstance(f, bytes) for f in frames),
            "bytes_attribute": len(frames[1].bytes),
        }


class Described:
    @staticmethod
    def describe_parameters():
        from dranspose.parameters import (BinaryParameter, BoolParameter, FloatParameter,
                                          IntParameter, StrParameter)
        return [
            StrParameter(name="roi_name", default="peak", description="the ROI's name"),
            IntParameter(name="offset", default=7),
            FloatParameter(name="threshold", default=0.5),
            BoolParameter(name="subtract", default=True),
            BinaryParameter(name="mask", default=b"\x00\x01"),
        ]

    def __init__(self, parameters=None, **kwargs):
        self.seen = {name: (p.value, p.data) for name, p in parameters.items()}

    def process_event(self, event, parameters=None, tick=False):
        return {name: [repr(value), data] for name, (value, data) in self.seen.items()}


class Broken:
    def __init__(self, **kwargs):
        pass

    def process_event(self, event, parameters, tick):
        return 1 / 0


from dataclasses import dataclass


@dataclass
class Total:
    frame: int
    total: int


class TotalWorker(SumWorker):
    def process_event(self, event, parameters=None, tick=False, *args, **kwargs):
        result = super().process_event(event, parameters, tick)
        return None if result is None else Total(frame=result["frame"], total=result["sum"])
"#;

    /// A reducer as beamlines write theirs: `isinstance` on the worker's dataclass (imported
    /// from the worker module, relative), a `publish` dict under a lock, `timer` and `finish`.
    const REDUCER: &str = r#"
import threading

from .worker import Total


class TotalReducer:
    def __init__(self, parameters=None, context=None, state=None, **kwargs):
        self.publish = {"frames": [], "totals": [], "timer_calls": 0, "finished": False}
        self.publish_rlock = threading.Lock()
        self.version = state.dranspose_version

    def process_result(self, result, parameters=None):
        if isinstance(result.payload, Total):
            with self.publish_rlock:
                self.publish["frames"].append(result.payload.frame)
                self.publish["totals"].append(result.payload.total)

    def timer(self, parameters):
        self.publish["timer_calls"] += 1
        return 0.25

    def finish(self, parameters=None):
        self.publish["finished"] = True
"#;

    /// The payloads as a package of their own name in a folder of their own: each test gets
    /// its own, as the tests share one interpreter (and its imported modules).
    fn payload_folder(package: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join(package);
        std::fs::create_dir(&package).unwrap();
        std::fs::write(package.join("__init__.py"), "").unwrap();
        std::fs::write(package.join("worker.py"), WORKER).unwrap();
        std::fs::write(package.join("reducer.py"), REDUCER).unwrap();
        dir
    }

    fn image_event(number: u64) -> EventData {
        let pixels: Vec<u8> = [1u16, 2, 3, 4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let image = NdArray::new(vec![2, 2], DType::Uint16, Bytes::from(pixels)).unwrap();
        let mut event = EventData::new(EventNumber(number));
        event.streams.insert(
            "det".into(),
            beamflow_protocol::StreamData {
                typ: stins::TYP.into(),
                frames: stins::image_frames(number, number + 1, &image, false),
            },
        );
        event
    }

    fn parameters() -> Parameters {
        let offset = ParameterDescription {
            name: "offset".into(),
            dtype: ParameterType::Int,
            default: ParameterValue::Int(0),
            description: String::new(),
        };
        Parameters::resolve([("offset".into(), Bytes::from_static(b"100"))], &[offset]).unwrap()
    }

    #[test]
    fn a_dranspose_worker_runs_unchanged_on_beamflow_events() {
        let folder = payload_folder("runs_unchanged");
        test_python(|py| {
            let context = PyDict::new(py);
            let worker = DransposeWorker::new(
                py,
                "runs_unchanged.worker:SumWorker",
                folder.path(),
                &parameters(),
                &context,
                "w1",
            )
            .unwrap();
            let result = worker
                .process_event(py, &image_event(7), true)
                .unwrap()
                .unwrap();
            let json = serde_json::to_value(to_value(&result).unwrap()).unwrap();
            assert_eq!(
                json,
                serde_json::json!({"frame": 7, "sum": 110, "tick": true, "worker": "w1",
                    "frames_are_bytes": true, "bytes_attribute": 8})
            );
            // A new scan makes a new instance; the context is the process's.
            DransposeWorker::new(
                py,
                "runs_unchanged.worker:SumWorker",
                folder.path(),
                &parameters(),
                &context,
                "w1",
            )
            .unwrap();
            let instances: i64 = context
                .get_item("instances")
                .unwrap()
                .unwrap()
                .extract()
                .unwrap();
            assert_eq!(instances, 2);
            let header = {
                let mut event = EventData::new(EventNumber(0));
                event.streams.insert(
                    "det".into(),
                    beamflow_protocol::StreamData {
                        typ: stins::TYP.into(),
                        frames: stins::header_frames(0),
                    },
                );
                event
            };
            assert!(worker.process_event(py, &header, false).unwrap().is_none());
        });
    }

    #[test]
    fn a_payload_that_raises_or_cannot_be_found_says_where_with_its_traceback() {
        let folder = payload_folder("raises");
        test_python(|py| {
            let context = PyDict::new(py);
            let empty = Parameters::resolve(BTreeMap::new(), &[]).unwrap();
            let broken = DransposeWorker::new(
                py,
                "raises.worker:Broken",
                folder.path(),
                &empty,
                &context,
                "w",
            )
            .unwrap();
            let error = broken
                .process_event(py, &image_event(3), false)
                .unwrap_err();
            assert_eq!(error.doing, "process_event of event 3");
            assert!(
                error.traceback.contains("ZeroDivisionError"),
                "{}",
                error.traceback
            );
            assert!(error.traceback.contains("worker.py"), "{}", error.traceback);
            let missing = DransposeWorker::new(
                py,
                "raises.nope:Worker",
                folder.path(),
                &empty,
                &context,
                "w",
            )
            .err()
            .unwrap();
            assert_eq!(missing.doing, "importing raises.nope:Worker");
            assert!(
                missing.traceback.contains("ModuleNotFoundError"),
                "{}",
                missing.traceback
            );
        });
    }

    #[test]
    fn a_dranspose_reducer_dispatches_the_workers_dataclasses_and_publishes() {
        let folder = payload_folder("reduces");
        test_python(|py| {
            let context = PyDict::new(py);
            let worker = DransposeWorker::new(
                py,
                "reduces.worker:TotalWorker",
                folder.path(),
                &parameters(),
                &context,
                "w1",
            )
            .unwrap();
            let reducer = DransposeReducer::new(
                py,
                "reduces.reducer:TotalReducer",
                folder.path(),
                &parameters(),
                &context,
                false,
            )
            .unwrap();
            for number in [1, 2] {
                let result = worker
                    .process_event(py, &image_event(number), false)
                    .unwrap()
                    .unwrap();
                // As it travels between the processes.
                let result = unpickle(py, &pickle(&result).unwrap()).unwrap();
                reducer
                    .process_result(py, number, "sums", "w1", &result)
                    .unwrap();
            }
            assert_eq!(
                reducer.timer(py).unwrap(),
                Some(std::time::Duration::from_millis(250))
            );
            reducer.finish(py).unwrap();
            let published = serde_json::to_value(reducer.publish(py).unwrap()).unwrap();
            assert_eq!(
                published,
                serde_json::json!({"frames": [1, 2], "totals": [110, 110], "timer_calls": 1, "finished": true})
            );
        });
    }

    #[test]
    fn all_five_parameter_types_are_described_and_reach_the_payload_typed() {
        use crate::{describe_parameters, load_class};

        let folder = payload_folder("described");
        test_python(|py| {
            let class = load_class(py, "described.worker:Described", folder.path()).unwrap();
            let descriptions = describe_parameters(&class).unwrap();
            let typed: Vec<(String, ParameterType, ParameterValue)> = descriptions
                .iter()
                .map(|d| (d.name.to_string(), d.dtype, d.default.clone()))
                .collect();
            assert_eq!(
                typed,
                [
                    (
                        "roi_name".to_owned(),
                        ParameterType::Str,
                        ParameterValue::Str("peak".into())
                    ),
                    (
                        "offset".to_owned(),
                        ParameterType::Int,
                        ParameterValue::Int(7)
                    ),
                    (
                        "threshold".to_owned(),
                        ParameterType::Float,
                        ParameterValue::Float(0.5)
                    ),
                    (
                        "subtract".to_owned(),
                        ParameterType::Bool,
                        ParameterValue::Bool(true)
                    ),
                    (
                        "mask".to_owned(),
                        ParameterType::Binary,
                        ParameterValue::Binary(Bytes::from_static(b"\x00\x01"))
                    ),
                ]
            );
            assert_eq!(descriptions[0].description, "the ROI's name");
            // Set as a user sets them (bytes), typed by the descriptions, as dranspose types them.
            let parameters = Parameters::resolve(
                [
                    ("offset".into(), Bytes::from_static(b"12")),
                    ("subtract".into(), Bytes::from_static(b"False")),
                    ("mask".into(), Bytes::from_static(b"\xff")),
                ],
                &descriptions,
            )
            .unwrap();
            let context = PyDict::new(py);
            let worker = DransposeWorker::new(
                py,
                "described.worker:Described",
                folder.path(),
                &parameters,
                &context,
                "w",
            )
            .unwrap();
            let seen = worker
                .process_event(py, &image_event(1), false)
                .unwrap()
                .unwrap();
            let seen = serde_json::to_value(to_value(&seen).unwrap()).unwrap();
            assert_eq!(seen["offset"][0], "12");
            assert_eq!(seen["subtract"][0], "False");
            assert_eq!(seen["threshold"][0], "0.5");
            assert_eq!(seen["roi_name"][0], "'peak'");
            assert_eq!(seen["mask"][0], "b'\\xff'");
        });
    }
}
