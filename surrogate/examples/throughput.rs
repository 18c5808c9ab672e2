//! Evaluation speed of a model, for `bench/surrogate_vs_numpy.py`: one evaluation (median of
//! many), batches on one thread, and batches on two threads side by side (as two workers run).
//! Prints JSON. Run with `RAYON_NUM_THREADS=1`, as the `beamflow` binary sets it.
//!
//! usage: throughput [MODEL]   (default builtin:lcls_cu_injector; BATCH=n sets the batch, 256)

use std::path::Path;
use std::time::Instant;

use beamflow_surrogate::Model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let location = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "builtin:lcls_cu_injector".to_owned());
    let model = Model::open(Path::new(&location))?;
    let defaults: Vec<f64> = model.spec().inputs.iter().map(|i| i.default).collect();
    // Single evaluations: the median of 2,000.
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let start = Instant::now();
        std::hint::black_box(model.evaluate(std::slice::from_ref(&defaults))?);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let single_us = times[times.len() / 2] * 1e6;
    let batch: usize = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(256);
    let rows = vec![defaults.clone(); batch];
    let per_thread = |model: &Model| -> Result<f64, String> {
        let start = Instant::now();
        let rounds = 40;
        for _ in 0..rounds {
            std::hint::black_box(model.evaluate(&rows).map_err(|e| e.to_string())?);
        }
        Ok((rounds * batch) as f64 / start.elapsed().as_secs_f64())
    };
    let one_thread = per_thread(&model)?;
    let start = Instant::now();
    let two: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|_| scope.spawn(|| per_thread(&model))).collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "panicked".to_owned()).and_then(|r| r))
            .collect::<Result<_, _>>()
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let two_threads = (2 * 40 * batch) as f64 / elapsed;
    let _ = two;
    println!(
        "{}",
        serde_json::json!({
            "model": model.spec().name,
            "single_eval_us": single_us,
            "batch": batch,
            "batched_evals_per_s_one_thread": one_thread,
            "batched_evals_per_s_two_threads": two_threads,
        })
    );
    Ok(())
}
