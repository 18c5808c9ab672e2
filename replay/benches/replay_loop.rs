//! The replay loop end to end in-process: dump file → frame_stats → history and last, for tiny
//! events (events per second) and 4 MiB frames (bytes per second, from the page cache).

use std::path::Path;

use beamflow_protocol::dump::DumpWriter;
use beamflow_protocol::streams::stins;
use beamflow_protocol::{DType, EventNumber, NdArray};
use beamflow_reducer::http::View;
use beamflow_replay::ReplayConfig;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PIPELINE: &str = r#"
[analyses.stats]
kind = "frame_stats"
[accumulators.history]
kind = "history"
analysis = "stats"
values = { mean = "det/0/mean" }
[accumulators.last]
kind = "last"
analysis = "stats"
"#;

#[derive(serde::Deserialize)]
struct Pipeline {
    analyses: std::collections::BTreeMap<
        beamflow_protocol::AnalysisName,
        beamflow_workers::AnalysisConfig,
    >,
    accumulators: std::collections::BTreeMap<String, beamflow_reducer::AccumulatorConfig>,
}

fn write_dump(path: &Path, count: u64, pixels: usize) {
    let data: Vec<u8> = (0..pixels as u32)
        .flat_map(|i| ((i % 251) as u16).to_le_bytes())
        .collect();
    let image = NdArray::new(vec![pixels], DType::Uint16, Bytes::from(data)).expect("shape");
    let file = std::fs::File::create(path).expect("create dump");
    let mut writer = DumpWriter::new(std::io::BufWriter::new(file));
    for n in 0..count {
        let event = stins::image_event(EventNumber(n), "det", &image, false);
        writer.write_event(&event).expect("write dump");
    }
    writer.into_inner().expect("flush dump");
}

fn replay(c: &mut Criterion) {
    let pipeline: Pipeline = toml::from_str(PIPELINE).expect("pipeline");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("replay_loop");
    group.sample_size(10);
    for (name, count, pixels, by_bytes) in [
        ("tiny_10k_events", 10_000u64, 4usize, false),
        ("4MiB_frames_x32", 32, 2 << 20, true),
    ] {
        let path = dir.path().join(format!("{name}.cbors"));
        write_dump(&path, count, pixels);
        let size = std::fs::metadata(&path).expect("dump size").len();
        group.throughput(if by_bytes {
            Throughput::Bytes(size)
        } else {
            Throughput::Elements(count)
        });
        let config = ReplayConfig {
            analyses: pipeline.analyses.clone(),
            accumulators: pipeline.accumulators.clone(),
            parameters: Vec::new(),
            dumps: vec![path],
            threads: 2,
            strict: true,
            progress: None,
        };
        group.bench_function(name, |b| {
            b.iter(|| beamflow_replay::run(&config, &View::new()).expect("replay"))
        });
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
