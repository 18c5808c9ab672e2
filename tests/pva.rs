//! EPICS PV Access end to end (issue 22): the FHI collector and a processing device driven over
//! PV Access by p4p (pvxs) and EPICS 7's `pvput`/`pvget` (pvAccessCPP), with `beamflow run`
//! watching the simulated injector.

use std::path::Path;
use std::process::Command;

use crate::epics::{ca_env, epics_tool, free_ca_port};
use crate::util::{
    beamflow, eventually, free_ports, http_post, python, root, scratch_dir, start_run,
};

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
    let run = start_run(command);

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

    // A change made over REST, not through a PV, shows on the parameter's PV too.
    let (code, body) = http_post(run.rest, "/api/v1/parameter/qe04_offset", "-0.5");
    assert_eq!(code, 200, "{body}");
    eventually(30, "the offset set over REST on its PV", || {
        let (_, text) = pv_tool("pvget", pva_udp, &["-r", "value", "T:PARAM:qe04_offset"]);
        (text.split_whitespace().last()? == "-0.5").then_some(())
    });
}

/// `tests/python/pva_camera.py`: a p4p camera on loopback, stopped when dropped.
struct Camera {
    child: std::process::Child,
    _stdin: std::process::ChildStdin,
}

impl Camera {
    /// Serves on `tcp` and `udp`, its first image numbered `first`, at 5 Hz: three images an
    /// event, decompressed by a debug build beside the rest of the suite, with room to spare
    /// (`pva/tests/client_peers.rs` takes every image at 10 Hz; at 10 Hz here a loaded CI box
    /// lost a few after the restart).
    fn start(tcp: u16, udp: u16, first: u64) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(python())
            .arg(root().join("tests/python/pva_camera.py"))
            .args([
                tcp.to_string(),
                udp.to_string(),
                first.to_string(),
                "5".to_owned(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the p4p camera");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("tcp"), "the camera printed {line:?}");
        Self {
            child,
            _stdin: stdin,
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `epics_pva` ingester takes a 5 Hz p4p camera's 1392×1040 NTNDArray images (plain, lz4
/// and bslz4), its counter (NTScalar) and a waveform (NTScalarArray), one event per image with
/// no image lost, and goes on through a restart of the camera's server on the same ports.
#[test]
fn epics_pva_takes_every_image_of_a_p4p_camera_through_its_restart() {
    let dir = scratch_dir();
    let [cam_tcp, cam_udp] = free_ports();
    let pipeline = dir.path().join("camera.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[ingesters.camera]
kind = "epics_pva"
clock = {{ kind = "trigger", stream = "img" }}
addr_list = "127.0.0.1:{cam_udp}"

[ingesters.camera.pvs]
img = {{ pv = "CAM:IMG" }}
lz4 = {{ pv = "CAM:IMG:LZ4" }}
bslz4 = {{ pv = "CAM:IMG:BSLZ4" }}
count = {{ pv = "CAM:COUNT" }}
wave = {{ pv = "CAM:WAVE" }}

[analyses.stats]
kind = "frame_stats"
streams = ["img", "lz4", "bslz4"]

[analyses.pvs]
kind = "pv_values"
streams = ["count", "wave"]

[accumulators.images]
kind = "history"
analysis = "stats"
capacity = 100000
values = {{ img_min = "img/0/min", img_max = "img/0/max", img_mean = "img/0/mean", lz4_min = "lz4/0/min", lz4_max = "lz4/0/max", lz4_mean = "lz4/0/mean", bslz4_min = "bslz4/0/min", bslz4_max = "bslz4/0/max", bslz4_mean = "bslz4/0/mean" }}

[accumulators.machine]
kind = "history"
analysis = "pvs"
capacity = 100000
values = {{ count = "count/value", wave = "wave/value/2" }}
"#
        ),
    )
    .unwrap();
    let mut camera = Camera::start(cam_tcp, cam_udp, 1);
    let mut command = beamflow();
    command.args(["run", "--pipeline"]).arg(&pipeline);
    let run = start_run(command);
    let column = |accumulator: &str, name: &str| -> Vec<f64> {
        let path = format!("/api/v1/result/{accumulator}/values/{name}");
        let body = crate::util::http_get(run.state, &path).1;
        serde_json::from_str::<Vec<Option<f64>>>(&body)
            .map(|v| v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
            .unwrap_or_default()
    };
    eventually(180, "20 images", || {
        (column("images", "img_min").len() >= 20).then_some(())
    });
    drop(camera);
    let before = column("images", "img_min").len();
    camera = Camera::start(cam_tcp, cam_udp, 10_000);
    eventually(180, "20 images from the restarted camera", || {
        let after = column("images", "img_min");
        (after.iter().filter(|&&n| n >= 10_000.0).count() >= 20).then_some(())
    });
    drop(camera);

    let img = column("images", "img_min");
    assert!(img.len() > before, "events went on after the restart");
    let last_before = img
        .iter()
        .copied()
        .filter(|&n| n < 10_000.0)
        .fold(0.0, f64::max);
    let beside = |n: f64, trigger: f64| {
        let stale = trigger >= 10_000.0 && (last_before - 1.0..=last_before).contains(&n);
        n == trigger || n == trigger - 1.0 || stale
    };
    // Every image, in order: consecutive numbers before the restart and after it.
    let (old, new): (Vec<f64>, Vec<f64>) = img.iter().partition(|&&n| n < 10_000.0);
    for (run, images) in [("before", &old), ("after", &new)] {
        let gaps: Vec<(f64, f64)> = images
            .windows(2)
            .filter(|w| w[1] != w[0] + 1.0)
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(
            gaps.is_empty(),
            "images lost or repeated {run} the restart: {gaps:?}"
        );
    }
    // Each image decoded exactly, compressed or not: min n, max n + 1391, mean n + 695.5.
    for stream in ["img", "lz4", "bslz4"] {
        let min = column("images", &format!("{stream}_min"));
        let max = column("images", &format!("{stream}_max"));
        let mean = column("images", &format!("{stream}_mean"));
        for ((n, top), average) in min.iter().zip(&max).zip(&mean) {
            assert_eq!(*top, n + 1391.0, "{stream}");
            assert_eq!(*average, n + 695.5, "{stream}");
        }
        // Posted with the image that triggers: the same image or the one before, or, in the
        // first events after the restart, the last one before it (a PV reconnects a moment
        // after another, and an event carries each stream's latest value).
        for (n, trigger) in min.iter().zip(&img) {
            assert!(beside(*n, *trigger), "{stream} {n} beside image {trigger}");
        }
    }
    let count = column("machine", "count");
    let wave = column("machine", "wave");
    assert_eq!(
        count.len(),
        img.len(),
        "the scalar and waveform in every event"
    );
    for ((c, w), trigger) in count.iter().zip(&wave).zip(&img) {
        assert!(beside(*c, *trigger), "count {c} beside image {trigger}");
        assert!(beside(w / 3.0, *trigger), "wave {w} beside image {trigger}");
    }
}
