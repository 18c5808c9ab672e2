//! Runs one `epics_ca` source for a while and reports what it ingested, for `bench/ca_ingest.py`.
//!
//! usage: ca_ingest CONFIG.toml SECONDS
//!
//! CONFIG.toml is an `[ingesters.<name>]` table's body (`pvs`, `clock`, `addr_list`). Prints one
//! JSON object: frames per stream, the source's status (updates, dropped images, clock counts)
//! and the process's CPU seconds over the measured time (from /proc/self/stat).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use beamflow_ingesters::Source;
use beamflow_ingesters::sources::epics_ca::{EpicsCa, EpicsCaConfig};

/// CPU seconds (user + system) of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line; clock ticks are 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, seconds] = args.as_slice() else {
        return Err("usage: ca_ingest CONFIG.toml SECONDS".into());
    };
    let config: EpicsCaConfig = toml::from_str(&std::fs::read_to_string(config)?)?;
    let seconds: f64 = seconds.parse()?;
    let mut source = EpicsCa::connect(&config)?;
    source.start_scan(&BTreeMap::new())?;
    // Until every PV has delivered a value; then the measured time starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while source.status()["waiting_for_first_value"]
        .as_array()
        .is_none_or(|missing| !missing.is_empty())
        || source.status()["clock"]["events"] == 0
    {
        if Instant::now() > deadline {
            return Err(format!("PVs did not all deliver within 30 s: {}", source.status()).into());
        }
        source.next_frame(Duration::from_millis(10))?;
    }
    let before = source.status();
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let mut frames: BTreeMap<String, u64> = BTreeMap::new();
    while start.elapsed().as_secs_f64() < seconds {
        if let Some(frame) = source.next_frame(Duration::from_millis(50))? {
            *frames.entry(frame.stream.to_string()).or_default() += 1;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    println!(
        "{}",
        serde_json::json!({
            "seconds": wall,
            "cpu_seconds": cpu,
            "frames": frames,
            "before": before,
            "after": source.status(),
        })
    );
    Ok(())
}
