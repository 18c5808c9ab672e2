//! `beam_image` per frame: OTR2's 640×480 (the sim's) and the real OTR2 camera's 1392×1040.
//! Run with `RAYON_NUM_THREADS=1` for the one-core figure (frames of 1 Mpixel and more split
//! their projections over rayon's threads).

use beamflow_workers::analyses::beam_image::{BeamImage, synthetic_image};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let analysis = BeamImage::new(
        toml::from_str("stream = \"otr2\"\npixel_um = 12.66\nmax_count = 4095")
            .expect("a valid configuration"),
    )
    .expect("a valid analysis");
    let mut group = c.benchmark_group("beam_image");
    for [width, height] in [[640, 480], [1392, 1040]] {
        let image = synthetic_image(
            [width, height],
            (width as f64 / 2.0, height as f64 / 2.0),
            (31.8, 13.1),
            300_000.0,
            1,
        );
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{width}x{height}"), |b| {
            b.iter(|| analysis.measure(std::hint::black_box(&image), None))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
