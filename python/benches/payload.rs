//! What running a Python payload costs beamflow per event, beside the payload's own time:
//! a dranspose worker (dranspose's `stream1.parse` and a sum of a 2×2 image) and its reducer,
//! with the result pickled between them as between processes; the same worker's
//! `process_event` alone, timed by Python on an `EventData` built once (the payload's own
//! cost); and beamflow's own contract on the same image.
//!
//! Needs the test environment: `BEAMFLOW_PYTHON` (else `.venv`) with numpy and dranspose 0.2.0.

use std::path::PathBuf;

use beamflow_protocol::streams::stins;
use beamflow_protocol::{DType, EventData, EventNumber, NdArray, Parameters, StreamData};
use beamflow_python::analysis::PythonAnalysis;
use beamflow_python::dranspose::{DransposeReducer, DransposeWorker, pickle, unpickle};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pyo3::prelude::*;
use pyo3::types::PyDict;

const PAYLOAD: &str = r#"
from dranspose.middlewares import stream1
from dranspose.data.stream1 import Stream1Data


class SumWorker:
    def __init__(self, **kwargs):
        pass

    def process_event(self, event, parameters=None, tick=False, *args, **kwargs):
        message = stream1.parse(event.streams["det"])
        if isinstance(message, Stream1Data):
            return {"frame": message.frame, "sum": int(message.data.sum())}


class SumReducer:
    def __init__(self, **kwargs):
        self.publish = {"sums": []}

    def process_result(self, result, parameters=None):
        self.publish["sums"].append(result.payload["sum"])


class Sum:
    def __init__(self, parameters, context):
        pass

    def process_event(self, event, parameters):
        return {"sum": int(event.streams["det"].image.sum())}
"#;

fn site_packages() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("BEAMFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let output = std::process::Command::new(python)
        .args(["-c", "import site; print(site.getsitepackages()[0])"])
        .output()
        .expect("the test environment's python");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn event(number: u64) -> EventData {
    let pixels: Vec<u8> = [1u16, 2, 3, 4]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let image = NdArray::new(vec![2, 2], DType::Uint16, Bytes::from(pixels)).expect("2×2");
    let mut event = EventData::new(EventNumber(number));
    event.streams.insert(
        "det".into(),
        StreamData {
            typ: stins::TYP.into(),
            frames: stins::image_frames(number, number + 1, &image, false),
        },
    );
    event
}

fn payloads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a folder");
    std::fs::write(dir.path().join("bench_payload.py"), PAYLOAD).expect("the payload");
    let site = site_packages();
    let parameters = Parameters::default();
    let event = event(3);
    Python::attach(|py| {
        py.import("site")
            .and_then(|m| m.call_method1("addsitedir", (site.as_str(),)))
            .expect("site-packages");
        let context = PyDict::new(py);
        let worker = DransposeWorker::new(
            py,
            "bench_payload:SumWorker",
            dir.path(),
            &parameters,
            &context,
            "w1",
        )
        .expect("the worker");
        let reducer = DransposeReducer::new(
            py,
            "bench_payload:SumReducer",
            dir.path(),
            &parameters,
            &context,
            false,
        )
        .expect("the reducer");
        let analysis =
            PythonAnalysis::new(py, "bench_payload:Sum", dir.path(), &parameters, &context)
                .expect("the analysis");
        let mut group = c.benchmark_group("python_payload_tiny");
        group.throughput(Throughput::Elements(1));
        group.bench_function("dranspose_worker_pickle_reducer", |b| {
            b.iter(|| {
                let result = worker
                    .process_event(py, &event, false)
                    .expect("ran")
                    .expect("a result");
                let result = unpickle(py, &pickle(&result).expect("pickled")).expect("unpickled");
                reducer
                    .process_result(py, 3, "sums", "w1", &result)
                    .expect("reduced");
            });
        });
        group.bench_function("dranspose_worker_only", |b| {
            b.iter(|| worker.process_event(py, &event, false).expect("ran"));
        });
        group.bench_function("beamflow_api", |b| {
            b.iter(|| analysis.process_event(py, &event).expect("ran"));
        });
        group.finish();
        // The payload's own time: process_event on an EventData built once, timed in Python.
        // One namespace for the whole script, so the timed lambda sees its names.
        let locals = PyDict::new(py);
        locals
            .set_item("folder", dir.path().display().to_string())
            .expect("set");
        py.run(
            c"import sys, timeit\n\
              sys.path.append(folder)\n\
              import bench_payload\n\
              from dranspose.data.stream1 import Stream1Data\n\
              from dranspose.event import EventData, StreamData\n\
              import numpy as np, json\n\
              header = json.dumps({'htype': 'image', 'frame': 3, 'shape': [2, 2], 'type': 'uint16', 'compression': 'none', 'msg_number': 4}).encode()\n\
              event = EventData(event_number=3, streams={'det': StreamData(typ='STINS', frames=[header, np.arange(1, 5, dtype='<u2').tobytes()])})\n\
              worker = bench_payload.SumWorker()\n\
              n = 20000\n\
              seconds = timeit.timeit(lambda: worker.process_event(event, {}, False), number=n)\n\
              per_event_us = 1e6 * seconds / n",
            Some(&locals),
            None,
        )
        .expect("timed the payload alone");
        let alone: f64 = locals
            .get_item("per_event_us")
            .ok()
            .flatten()
            .and_then(|v| v.extract().ok())
            .unwrap_or(f64::NAN);
        println!(
            "python_payload_tiny/payload_alone: {alone:.2} µs per event (process_event on a prebuilt EventData)"
        );
    });
}

criterion_group!(benches, payloads);
criterion_main!(benches);
