//! EPICS PV Access end to end (issue 22): the FHI collector and a processing device driven over
//! PV Access by p4p (pvxs) and EPICS 7's `pvput`/`pvget` (pvAccessCPP), with `beamflow run`
//! watching the simulated injector.

use std::path::Path;
use std::process::Command;

use crate::epics::{ca_env, epics_tool, free_ca_port};
use crate::util::{beamflow, eventually, free_ports, python, root, scratch_dir, start_run};

/// The injector's beam size and scan quad over Channel Access, a collector of the PV values,
/// the quad's readback through `pv_linear` (the processing device), and its result and every
/// parameter as PVs; files to `folder`.
fn collector_pipeline(dir: &Path, folder: &Path) -> std::path::PathBuf {
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[ingesters.injector]
kind = "epics_ca"
clock = {{ kind = "period", rate_hz = 20 }}

[ingesters.injector.pvs]
xrms = {{ pv = "OTRS:IN20:571:XRMS" }}
qe04 = {{ pv = "QUAD:IN20:511:BACT" }}

[analyses.pvs]
kind = "pv_values"

[analyses.calibrated]
kind = "pv_linear"
stream = "qe04"

[accumulators.collector]
kind = "collector"
analysis = "pvs"

[accumulators.last]
kind = "last"
analysis = "calibrated"

[reducer.pvs]
prefix = "T:"
parameters = true

[reducer.pvs.values]
"QE04:CAL" = "last/values/value"
"QE04:IN" = "last/values/input"

[reducer.hdf5]
folder = {folder:?}
"#,
            folder = folder.display().to_string()
        ),
    )
    .unwrap();
    path
}

/// EPICS 7's `pvput`/`pvget` on loopback, searching `port`.
fn pv_tool(tool: &str, port: u16, args: &[&str]) -> (bool, String) {
    let output = Command::new(epics_tool(tool))
        .env("EPICS_PVA_ADDR_LIST", format!("127.0.0.1:{port}"))
        .env("EPICS_PVA_AUTO_ADDR_LIST", "NO")
        .env("EPICS_PVA_BROADCAST_PORT", port.to_string())
        .args(["-w", "10"])
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("run {tool}: {error}"));
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The collector as the FHI device is driven: CONFIG, ENABLE, STATE, the history as an array PV
/// and as a table of time, value, severity and status, EXPORT to HDF5 and CLEAR; and the
/// processing device: a put of `pv_linear`'s gain (p4p) and offset (`pvput`) changes its result
/// PV to exactly gain × input + offset.
#[test]
fn the_collector_and_a_processing_device_are_driven_over_pv_access() {
    let dir = scratch_dir();
    let folder = dir.path().join("files");
    let pipeline = collector_pipeline(dir.path(), &folder);
    let ca_port = free_ca_port();
    let [pva_tcp, pva_udp] = free_ports();
    let mut command = beamflow();
    ca_env(&mut command, ca_port)
        .env("EPICS_PVAS_SERVER_PORT", pva_tcp.to_string())
        .env("EPICS_PVAS_BROADCAST_PORT", pva_udp.to_string())
        .args(["run", "--sim-ioc", "--pipeline"])
        .arg(&pipeline);
    let _run = start_run(command);

    let output = Command::new(python())
        .arg(root().join("tests/python/pva_collector.py"))
        .args([&pva_udp.to_string(), "T:"])
        .output()
        .expect("run the p4p collector client");
    assert!(
        output.status.success(),
        "p4p collector client: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).expect("its JSON line");
    assert_eq!(seen["state_before"], "idle", "{seen}");
    let [calibrated, input] = [0, 1].map(|i| seen["calibrated"][i].as_f64().unwrap());
    assert_eq!(calibrated, 2.0 * input, "gain 2, offset 0: {seen}");
    assert_eq!(seen["gain"], 2.0);
    assert_eq!(seen["config"], serde_json::json!(["xrms"]));
    assert_eq!(seen["not_recorded"], true, "only xrms is recorded: {seen}");
    // The sim's beam at the quad's default: ~403 µm.
    let first = seen["history"]["first"].as_f64().unwrap();
    assert!((300.0..500.0).contains(&first), "{seen}");
    let table = &seen["table"];
    assert_eq!(table["id"], "epics:nt/NTTable:1.0");
    assert_eq!(
        table["labels"],
        serde_json::json!(["time", "value", "severity", "status"])
    );
    let times: Vec<f64> = table["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert!(times.len() >= 10, "{seen}");
    assert!(
        times.windows(2).all(|w| w[1] >= w[0]),
        "samples in time order: {times:?}"
    );
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        (now - times[0]).abs() < 120.0,
        "each sample's own POSIX time stamp: {times:?}"
    );
    assert_eq!(seen["cleared"], true);

    // The export wrote a NeXus file holding the recorded history.
    let file = eventually(30, "the exported file", || {
        std::fs::read_dir(&folder)
            .ok()?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|e| e == "h5"))
    });
    let check = Command::new(python())
        .args([
            "-c",
            "import h5py, sys; f = h5py.File(sys.argv[1]); \
             v = f['entry/collector/pvs/xrms/value']; print(len(v))",
        ])
        .arg(&file)
        .output()
        .expect("run h5py");
    let samples: usize = String::from_utf8_lossy(&check.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("h5py: {}", String::from_utf8_lossy(&check.stderr)));
    assert!(samples >= 10, "the export holds the history: {samples}");

    // EPICS 7's pvput sets the offset; pvget reads it back and the result follows.
    let (ok, text) = pv_tool("pvput", pva_udp, &["T:PARAM:qe04_offset", "1.5"]);
    assert!(ok, "pvput: {text}");
    eventually(30, "the result with offset 1.5", || {
        let (_, cal) = pv_tool("pvget", pva_udp, &["-r", "value", "T:QE04:CAL"]);
        let (_, input) = pv_tool("pvget", pva_udp, &["-r", "value", "T:QE04:IN"]);
        let number = |text: &str| text.split_whitespace().last()?.parse::<f64>().ok();
        let (cal, input) = (number(&cal)?, number(&input)?);
        ((cal - (2.0 * input + 1.5)).abs() < 1e-9).then_some(())
    });
}
