//! Counts Channel Access monitor updates: `ca_count SECONDS NAME...` monitors the names (found
//! through `EPICS_CA_ADDR_LIST`) and prints `{"connected": n, "updates": n, "seconds": s}` once
//! every PV has connected and SECONDS have passed. Used by `bench/ca_monitor.py`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use beamflow_ca::client::{ClientConfig, MonitorEvent, monitor};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("usage: ca_count SECONDS NAME...");
    let names: Vec<String> = args.collect();
    let connected = Arc::new(AtomicU64::new(0));
    let updates = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (c, u) = (connected.clone(), updates.clone());
    let all = names.len() as u64;
    runtime.spawn(monitor(ClientConfig::from_env(), names, move |event| {
        match event {
            MonitorEvent::Connected { .. } => c.fetch_add(1, Ordering::Relaxed),
            MonitorEvent::Update { .. } => u.fetch_add(1, Ordering::Relaxed),
            MonitorEvent::Disconnected { .. } => c.fetch_sub(1, Ordering::Relaxed),
            MonitorEvent::Malformed { .. } | MonitorEvent::CircuitLost { .. } => 0,
        };
    }));
    runtime.block_on(async {
        while connected.load(Ordering::Relaxed) < all {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let start = Instant::now();
        let before = updates.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let counted = updates.load(Ordering::Relaxed) - before;
        println!(
            "{{\"connected\": {}, \"updates\": {counted}, \"seconds\": {:.3}}}",
            connected.load(Ordering::Relaxed),
            start.elapsed().as_secs_f64()
        );
    });
}
