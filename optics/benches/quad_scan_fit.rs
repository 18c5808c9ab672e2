//! The fit after each step of a live quad scan: one plane, 9 settings (the reference scan).

use beamflow_optics::quad_scan::{DesignTwiss, ScanOptics, ScanPoint, fit_plane};
use beamflow_optics::{BeamMatrix, Energy, Matrix, Plane, Twiss};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let optics = ScanOptics {
        energy: Energy { total_ev: 135e6 },
        quad_length_m: 0.108,
        rmat: Matrix::drift(2.26),
        plane: Plane::X,
    };
    let beam = BeamMatrix::from_twiss(Twiss {
        emittance: 1.89e-9,
        beta: 10.0,
        alpha: -1.0,
    });
    let points: Vec<ScanPoint> = (1..=9)
        .map(|i| {
            let bctrl_kg = 0.5 * f64::from(i);
            let size_m = optics.screen_size(beam, bctrl_kg);
            ScanPoint {
                bctrl_kg,
                size_m,
                error_m: 0.03 * size_m,
            }
        })
        .collect();
    let design = Some(DesignTwiss {
        beta: 1.113,
        alpha: -0.069,
    });
    c.bench_function("quad_scan_fit_9_settings_with_bmag", |b| {
        b.iter(|| fit_plane(&optics, std::hint::black_box(&points), design))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
