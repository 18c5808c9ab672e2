//! Routing throughput: assignments per second for a 10,000-event part with ten events per
//! constraint, routed among four workers (DESIGN.md's goal: at least 100k assignments/s); and
//! the parse of a large mapping.

use std::hint::black_box;

use beamflow_controller::mapping::Sequence;
use beamflow_controller::route::{Router, Worker};
use beamflow_protocol::{EventNumber, WorkerTag};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn route(c: &mut Criterion) {
    let events = 10_000u64;
    let slots: Vec<serde_json::Value> = (0..events)
        .map(|i| serde_json::json!([{"constraint": i / 10}]))
        .collect();
    let body = serde_json::json!({"parts": {"main": {"det": slots}}, "sequence": ["main"]});
    let sequence = Sequence::from_json(body.to_string().as_bytes(), true).expect("valid mapping");
    let workers: Vec<Worker> = (0..4)
        .map(|i| Worker {
            name: format!("w{i}").into(),
            tags: [WorkerTag::from("generic")].into(),
        })
        .collect();
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(sequence.total_events()));
    group.bench_function("10k_events_4_workers", |b| {
        b.iter(|| {
            let mut router = Router::new();
            for n in 0..sequence.total_events() {
                let assignment = router
                    .route(&sequence, EventNumber(n), &workers)
                    .expect("routable");
                for worker in assignment.workers() {
                    router.finished(worker);
                }
                black_box(assignment);
            }
        })
    });
    group.finish();
}

/// Accepting a scan: `POST /api/v1/sequence`'s parse and validation of a 100,000-event mapping,
/// which the runtime benchmark's clock includes.
fn parse(c: &mut Criterion) {
    let slots: Vec<serde_json::Value> = (0..100_000u64)
        .map(|i| serde_json::json!([{"constraint": i}]))
        .collect();
    let body =
        serde_json::json!({"parts": {"main": {"det": slots}}, "sequence": ["main"]}).to_string();
    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(100_000));
    group.sample_size(10);
    group.bench_function("parse_100k_events", |b| {
        b.iter(|| Sequence::from_json(black_box(body.as_bytes()), true).expect("valid mapping"))
    });
    group.finish();
}

criterion_group!(benches, route, parse);
criterion_main!(benches);
