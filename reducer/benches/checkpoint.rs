//! The checkpoint's cost on the tiny-event rate: 100k one-result events through `ReducerCore`
//! (expectation, report, applied by `history` and `last`), with the checkpoint flushed every
//! 1024 events as the reducer's loop does once per turn, and without a checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use beamflow_protocol::{EventNumber, EventReport, ResultData, Value};
use beamflow_reducer::AccumulatorConfig;
use beamflow_reducer::live::{ReducerCore, ReducerInput};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: u64 = 100_000;

/// Reports per loop turn at most, as the reducer's loop reads them.
const TURN: u64 = 1024;

const ACCUMULATORS: &str = r#"
[history]
kind = "history"
values = { mean = "mean" }
[last]
kind = "last"
"#;

fn inputs() -> Vec<ReducerInput> {
    (0..EVENTS)
        .flat_map(|n| {
            let event = EventNumber(n);
            [
                ReducerInput::Expect {
                    event_number: event,
                    workers: ["w1".into()].into(),
                },
                ReducerInput::Report(EventReport {
                    event_number: event,
                    worker: "w1".into(),
                    results: vec![ResultData {
                        event_number: event,
                        analysis: "stats".into(),
                        worker: "w1".into(),
                        created_at: None,
                        payload: Arc::new(Value::Map(
                            [("mean".to_owned(), Value::Float(n as f64))].into(),
                        )),
                    }],
                    missing: Vec::new(),
                }),
            ]
        })
        .collect()
}

fn run(mut core: ReducerCore, inputs: Vec<ReducerInput>) -> EventNumber {
    for (i, input) in inputs.into_iter().enumerate() {
        core.handle(input);
        if (i as u64).is_multiple_of(2 * TURN) {
            core.flush_checkpoint();
        }
    }
    core.flush_checkpoint();
    core.next_event()
}

fn checkpoint(c: &mut Criterion) {
    let configs: BTreeMap<String, AccumulatorConfig> =
        toml::from_str(ACCUMULATORS).expect("accumulators");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.checkpoint");
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));
    for with_checkpoint in [false, true] {
        let name = if with_checkpoint {
            "tiny_100k_events_checkpointed"
        } else {
            "tiny_100k_events"
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut core =
                        ReducerCore::start(&configs, Vec::new(), 1 << 16).expect("reducer");
                    if with_checkpoint {
                        core.keep_checkpoint(&path, 1, "bench");
                    }
                    (core, inputs())
                },
                |(core, inputs)| run(core, inputs),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
