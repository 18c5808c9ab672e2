//! Counts PV Access monitor updates: `pva_count SECONDS NAME...` monitors the names (found
//! through `EPICS_PVA_ADDR_LIST`) and prints `{"connected": n, "updates": n, "bytes": n,
//! "seconds": s}` once every PV has connected and SECONDS have passed; `bytes` counts the
//! elements of array values. Used by `bench/pva_monitor.py`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use beamflow_pva::client::{ClientConfig, MonitorEvent, monitor};
use beamflow_pva::pvdata::Value;
use beamflow_pva::request::Request;

/// Bytes of an array value (an image's pixels), 8 for a number.
fn value_bytes(value: &Value) -> u64 {
    match value {
        Value::Array(array) => (array.len() * array.scalar_type().width()) as u64,
        Value::Union(Some((_, inner))) => value_bytes(inner),
        _ => 8,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("usage: pva_count SECONDS NAME...");
    let names: Vec<String> = args.collect();
    let connected = Arc::new(AtomicU64::new(0));
    let updates = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (c, u, b) = (connected.clone(), updates.clone(), bytes.clone());
    let all = names.len() as u64;
    runtime.spawn(monitor(
        ClientConfig::from_env(),
        names,
        Request::default(),
        move |event| match event {
            MonitorEvent::Connected { .. } => {
                c.fetch_add(1, Ordering::Relaxed);
            }
            MonitorEvent::Update { value, .. } => {
                u.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(
                    value.value("value").map_or(0, value_bytes),
                    Ordering::Relaxed,
                );
            }
            MonitorEvent::Disconnected { .. } => {
                c.fetch_sub(1, Ordering::Relaxed);
            }
            MonitorEvent::Malformed { .. } | MonitorEvent::ConnectionLost { .. } => {}
        },
    ));
    runtime.block_on(async {
        while connected.load(Ordering::Relaxed) < all {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let start = Instant::now();
        let (updates_before, bytes_before) = (
            updates.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
        );
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        println!(
            "{{\"connected\": {}, \"updates\": {}, \"bytes\": {}, \"seconds\": {:.3}}}",
            connected.load(Ordering::Relaxed),
            updates.load(Ordering::Relaxed) - updates_before,
            bytes.load(Ordering::Relaxed) - bytes_before,
            start.elapsed().as_secs_f64()
        );
    });
}
