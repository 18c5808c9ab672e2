//! beamflow's PVA server as other implementations see it: p4p 4.3.0 (pvxs 1.5.3, through
//! `server_peers.py`) and EPICS 7's `pvget`, `pvmonitor`, `pvput` and `pvinfo` (pvAccessCPP),
//! all from the workspace's `.venv` (or `BEAMFLOW_PYTHON`'s), on loopback with free ports.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beamflow_pva::pvdata::{
    ArrayValue, BitSet, FieldDesc, PvStructure, ScalarType, StructDesc, Value,
};
use beamflow_pva::server::{
    Access, PutRequest, PvStore, Server, ServerConfig, ServerCounters, WriteRule,
};
use serde_json::Value as Json;

/// The venv's `bin` directory: `BEAMFLOW_PYTHON`'s, else the workspace's `.venv/bin`.
fn venv_bin() -> PathBuf {
    let python = std::env::var_os("BEAMFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run .ci/run once or set BEAMFLOW_PYTHON",
        python.display()
    );
    python.parent().expect("a bin directory").to_path_buf()
}

fn tool(name: &str) -> PathBuf {
    let path = venv_bin().join(name);
    assert!(
        path.exists(),
        "{} not found: run .ci/run once",
        path.display()
    );
    path
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/server_peers.py")
}

/// A UDP port nobody uses now: clients get their own broadcast port, so that their
/// beacon socket does not share the server's search port (unless a test wants it to).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server running on its own runtime until dropped.
struct Running {
    runtime: tokio::runtime::Runtime,
    tcp: SocketAddr,
    udp: SocketAddr,
    store: PvStore,
    counters: ServerCounters,
}

fn serve(store: PvStore) -> Running {
    serve_with(ServerConfig::loopback(), store)
}

fn serve_with(config: ServerConfig, store: PvStore) -> Running {
    // RUST_LOG=beamflow_pva=debug shows what the server saw.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime
        .block_on(Server::bind(config, store.clone()))
        .unwrap();
    let (tcp, udp, counters) = (server.tcp_addr(), server.udp_addr(), server.counters());
    runtime.spawn(server.run());
    Running {
        runtime,
        tcp,
        udp,
        store,
        counters,
    }
}

impl Running {
    /// Environment for a pvAccessCPP tool: search this server only, its own broadcast port.
    fn cpp_tool(&self, name: &str) -> Command {
        let mut command = Command::new(tool(name));
        self.cpp_env(&mut command);
        command
    }

    fn cpp_env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("EPICS_PVA_ADDR_LIST", self.udp.to_string())
            .env("EPICS_PVA_AUTO_ADDR_LIST", "NO")
            .env("EPICS_PVA_BROADCAST_PORT", free_udp_port().to_string())
    }

    fn tool_output(&self, name: &str, args: &[&str]) -> (bool, String) {
        let output = self.cpp_tool(name).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// Runs `server_peers.py` with this server in its address list; its JSON lines.
    fn p4p(&self, args: &[&str]) -> Vec<Json> {
        p4p(&self.udp.to_string(), &free_udp_port().to_string(), args)
    }
}

fn p4p(addr_list: &str, port: &str, args: &[&str]) -> Vec<Json> {
    let output = Command::new(venv_bin().join("python"))
        .arg(script())
        .args([addr_list, port])
        .args(args)
        .output()
        .unwrap();
    eprintln!("p4p {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "p4p {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn scalar(t: ScalarType) -> FieldDesc {
    FieldDesc::Scalar(t)
}

fn alarm_t() -> FieldDesc {
    FieldDesc::structure(
        "alarm_t",
        vec![
            ("severity", scalar(ScalarType::Int)),
            ("status", scalar(ScalarType::Int)),
            ("message", scalar(ScalarType::String)),
        ],
    )
}

fn time_t() -> FieldDesc {
    FieldDesc::structure(
        "time_t",
        vec![
            ("secondsPastEpoch", scalar(ScalarType::Long)),
            ("nanoseconds", scalar(ScalarType::Int)),
            ("userTag", scalar(ScalarType::Int)),
        ],
    )
}

/// NTScalar double with alarm, timeStamp, display and control.
fn nt_scalar_double() -> Arc<StructDesc> {
    let display = FieldDesc::structure(
        "display_t",
        vec![
            ("limitLow", scalar(ScalarType::Double)),
            ("limitHigh", scalar(ScalarType::Double)),
            ("description", scalar(ScalarType::String)),
            ("units", scalar(ScalarType::String)),
            ("precision", scalar(ScalarType::Int)),
        ],
    );
    let control = FieldDesc::structure(
        "control_t",
        vec![
            ("limitLow", scalar(ScalarType::Double)),
            ("limitHigh", scalar(ScalarType::Double)),
            ("minStep", scalar(ScalarType::Double)),
        ],
    );
    Arc::new(StructDesc::new(
        "epics:nt/NTScalar:1.0",
        vec![
            ("value", scalar(ScalarType::Double)),
            ("alarm", alarm_t()),
            ("timeStamp", time_t()),
            ("display", display),
            ("control", control),
        ],
    ))
}

fn nt_scalar_array_double() -> Arc<StructDesc> {
    Arc::new(StructDesc::new(
        "epics:nt/NTScalarArray:1.0",
        vec![
            ("value", FieldDesc::ScalarArray(ScalarType::Double)),
            ("alarm", alarm_t()),
            ("timeStamp", time_t()),
        ],
    ))
}

/// NTNDArray's layout (the lead's `nt.rs` builds it for real).
fn nt_ndarray() -> Arc<StructDesc> {
    let kinds = [
        ("booleanValue", ScalarType::Boolean),
        ("byteValue", ScalarType::Byte),
        ("shortValue", ScalarType::Short),
        ("intValue", ScalarType::Int),
        ("longValue", ScalarType::Long),
        ("ubyteValue", ScalarType::UByte),
        ("ushortValue", ScalarType::UShort),
        ("uintValue", ScalarType::UInt),
        ("ulongValue", ScalarType::ULong),
        ("floatValue", ScalarType::Float),
        ("doubleValue", ScalarType::Double),
    ];
    let value = FieldDesc::Union(Arc::new(StructDesc::new(
        "",
        kinds
            .iter()
            .map(|(n, t)| (*n, FieldDesc::ScalarArray(*t)))
            .collect(),
    )));
    let codec = FieldDesc::structure(
        "codec_t",
        vec![
            ("name", scalar(ScalarType::String)),
            ("parameters", FieldDesc::Any),
        ],
    );
    let dimension = FieldDesc::StructureArray(Arc::new(StructDesc::new(
        "dimension_t",
        vec![
            ("size", scalar(ScalarType::Int)),
            ("offset", scalar(ScalarType::Int)),
            ("fullSize", scalar(ScalarType::Int)),
            ("binning", scalar(ScalarType::Int)),
            ("reverse", scalar(ScalarType::Boolean)),
        ],
    )));
    let attribute = FieldDesc::StructureArray(Arc::new(StructDesc::new(
        "epics:nt/NTAttribute:1.0",
        vec![
            ("name", scalar(ScalarType::String)),
            ("value", FieldDesc::Any),
            ("descriptor", scalar(ScalarType::String)),
            ("sourceType", scalar(ScalarType::Int)),
            ("source", scalar(ScalarType::String)),
        ],
    )));
    Arc::new(StructDesc::new(
        "epics:nt/NTNDArray:1.0",
        vec![
            ("value", value),
            ("codec", codec),
            ("compressedSize", scalar(ScalarType::Long)),
            ("uncompressedSize", scalar(ScalarType::Long)),
            ("dimension", dimension),
            ("uniqueId", scalar(ScalarType::Int)),
            ("dataTimeStamp", time_t()),
            ("alarm", alarm_t()),
            ("timeStamp", time_t()),
            ("attribute", attribute),
        ],
    ))
}

const WIDTH: usize = 1392;
const HEIGHT: usize = 1040;

fn image(unique_id: i32) -> PvStructure {
    let mut pv = PvStructure::new(nt_ndarray());
    let pixels: Vec<u16> = (0..WIDTH * HEIGHT).map(|i| (i % 65536) as u16).collect();
    let mut changed = BitSet::new();
    pv.set(
        "value",
        Value::Union(Some((
            6,
            Box::new(Value::Array(ArrayValue::UShort(pixels))),
        ))),
        &mut changed,
    )
    .unwrap();
    let dim = |size: usize| {
        Some(vec![
            Value::Int(size as i32),
            Value::Int(0),
            Value::Int(size as i32),
            Value::Int(1),
            Value::Boolean(false),
        ])
    };
    pv.set(
        "dimension",
        Value::StructureArray(vec![dim(WIDTH), dim(HEIGHT)]),
        &mut changed,
    )
    .unwrap();
    let bytes = (WIDTH * HEIGHT * 2) as i64;
    pv.set("compressedSize", Value::Long(bytes), &mut changed)
        .unwrap();
    pv.set("uncompressedSize", Value::Long(bytes), &mut changed)
        .unwrap();
    pv.set("uniqueId", Value::Int(unique_id), &mut changed)
        .unwrap();
    pv
}

fn sample_store() -> PvStore {
    let store = PvStore::new();
    let mut temperature = PvStructure::new(nt_scalar_double());
    let mut changed = BitSet::new();
    temperature
        .set("value", Value::Double(21.5), &mut changed)
        .unwrap();
    temperature
        .set(
            "display.units",
            Value::String("degC".to_owned()),
            &mut changed,
        )
        .unwrap();
    temperature
        .set("display.precision", Value::Int(2), &mut changed)
        .unwrap();
    temperature
        .set("control.limitHigh", Value::Double(100.0), &mut changed)
        .unwrap();
    temperature
        .set("alarm.severity", Value::Int(1), &mut changed)
        .unwrap();
    store.add("BF:T:SCALAR", temperature, Access::ReadOnly);
    let mut wave = PvStructure::new(nt_scalar_array_double());
    wave.set(
        "value",
        Value::Array(ArrayValue::Double((0..1000).map(f64::from).collect())),
        &mut changed,
    )
    .unwrap();
    store.add("BF:T:ARRAY", wave.clone(), Access::ReadOnly);
    store.add("BF:T:IMAGE", image(1), Access::ReadOnly);
    // 4.8 MB: more than pvAccessCPP's receive buffer (3.9 MB here), so sent in segments.
    wave.set(
        "value",
        Value::Array(ArrayValue::Double((0..600_000).map(f64::from).collect())),
        &mut changed,
    )
    .unwrap();
    store.add("BF:T:LONG", wave, Access::ReadOnly);
    store
}

#[test]
fn p4p_gets_scalar_array_and_image() {
    let server = serve(sample_store());
    let got = server.p4p(&["get", "BF:T:SCALAR"]);
    assert_eq!(got[0]["id"], "epics:nt/NTScalar:1.0");
    assert_eq!(got[0]["value"]["value"], 21.5);
    assert_eq!(got[0]["value"]["display"]["units"], "degC");
    assert_eq!(got[0]["value"]["control"]["limitHigh"], 100.0);
    assert_eq!(got[0]["value"]["alarm"]["severity"], 1);

    let got = server.p4p(&["get", "BF:T:ARRAY"]);
    assert_eq!(got[0]["value"]["value"]["len"], 1000);
    assert_eq!(got[0]["value"]["value"]["last"], 999.0);

    let got = server.p4p(&["get", "BF:T:IMAGE"]);
    assert_eq!(got[0]["id"], "epics:nt/NTNDArray:1.0");
    let value = &got[0]["value"];
    assert_eq!(value["value"]["len"], WIDTH * HEIGHT);
    assert_eq!(value["value"]["dtype"], "uint16");
    assert_eq!(
        value["value"]["last"],
        ((WIDTH * HEIGHT - 1) % 65536) as u64
    );
    assert_eq!(value["dimension"][0]["size"], WIDTH);
    assert_eq!(value["dimension"][1]["size"], HEIGHT);
    assert_eq!(value["uniqueId"], 1);

    // A selection: only the value.
    let got = server.p4p(&["get", "BF:T:SCALAR", "field(value)"]);
    assert_eq!(got[0]["keys"], serde_json::json!(["value"]));

    // Found by a search over TCP (the server as a name server), no UDP.
    let name_server = format!("tcp:{}", server.tcp);
    let got = p4p(
        &name_server,
        &free_udp_port().to_string(),
        &["get", "BF:T:ARRAY"],
    );
    assert_eq!(got[0]["value"]["value"]["len"], 1000);
    assert_eq!(server.counters.snapshot().bad_messages, 0);
}

#[test]
fn pvget_and_pvinfo_read_scalar_array_and_image() {
    let server = serve(sample_store());
    let (ok, text) = server.tool_output("pvget", &["-w", "10", "BF:T:SCALAR"]);
    assert!(ok, "{text}");
    assert!(text.contains("21.5"), "{text}");

    let (ok, text) =
        server.tool_output("pvget", &["-w", "10", "-r", "field(value)", "BF:T:SCALAR"]);
    assert!(ok, "{text}");
    assert!(text.contains("21.5"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "10", "-v", "BF:T:SCALAR"]);
    assert!(ok, "{text}");
    assert!(text.contains("degC") && text.contains("display"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "10", "BF:T:ARRAY"]);
    assert!(ok, "{text}");
    assert!(text.contains("999"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "20", "BF:T:LONG"]);
    assert!(ok, "{}", &text[..text.len().min(400)]);
    assert!(
        text.trim_end().ends_with("599999]"),
        "{}",
        &text[text.len().saturating_sub(400)..]
    );

    let (ok, text) = server.tool_output("pvinfo", &["-w", "10", "BF:T:IMAGE"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("epics:nt/NTNDArray:1.0") && text.contains("ushort[] ushortValue"),
        "{text}"
    );

    let (ok, text) = server.tool_output(
        "pvget",
        &["-w", "20", "-r", "field(uniqueId,dimension)", "BF:T:IMAGE"],
    );
    assert!(ok, "{text}");
    assert!(text.contains("1392"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "20", "-r", "field(value)", "BF:T:IMAGE"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("ushort[]") || text.contains("65535"),
        "{}",
        &text[..text.len().min(400)]
    );
    assert_eq!(server.counters.snapshot().bad_messages, 0);
}

/// Posts a counter at 10 Hz to the scalar, the array (its first element) and the image (its
/// `uniqueId`, the whole image posted each time) until the server is dropped.
fn post_counters(server: &Running) {
    let store = server.store.clone();
    server.runtime.spawn(async move {
        let mut image = image(0);
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        for n in 1.. {
            ticks.tick().await;
            store.update("BF:T:SCALAR", |pv, changed| {
                pv.set("value", Value::Double(f64::from(n)), changed)
                    .unwrap();
            });
            store.update("BF:T:ARRAY", |pv, changed| {
                pv.set(
                    "value",
                    Value::Array(ArrayValue::Double(vec![f64::from(n); 100])),
                    changed,
                )
                .unwrap();
            });
            image
                .set("uniqueId", Value::Int(n), &mut BitSet::new())
                .unwrap();
            assert!(store.post("BF:T:IMAGE", image.clone(), &BitSet::all()));
        }
    });
}

/// Whether `values` count up by one.
fn consecutive(values: &[f64]) -> bool {
    values.windows(2).all(|w| w[1] == w[0] + 1.0)
}

fn numbers(json: &Json, pick: impl Fn(&Json) -> Option<f64>) -> Vec<f64> {
    json.as_array()
        .unwrap()
        .iter()
        .map(|v| pick(v).unwrap_or_else(|| panic!("{v}")))
        .collect()
}

#[test]
fn p4p_monitors_see_every_value_posted_at_10_hz() {
    let server = serve(sample_store());
    post_counters(&server);
    // Room for 2 s of updates: a client held up that long on a loaded machine still sees
    // every one (with less, the server squashes them, as it must for a slow client).
    for request in [
        "record[queueSize=20]field()",
        "record[queueSize=20,pipeline=true]field()",
    ] {
        // Two clients: p4p calls back one update at a time, and turning an image into numpy
        // takes long enough on a loaded machine to hold up the scalars behind it.
        let specs = [
            &["BF:T:SCALAR:value", "BF:T:ARRAY:value"][..],
            &["BF:T:IMAGE:uniqueId"][..],
        ];
        let clients: Vec<_> = specs
            .iter()
            .map(|specs| {
                let (udp, request) = (server.udp.to_string(), request.to_owned());
                let specs: Vec<String> = specs.iter().map(|s| (*s).to_owned()).collect();
                std::thread::spawn(move || {
                    let mut args = vec!["monitor", "25", &request];
                    args.extend(specs.iter().map(String::as_str));
                    p4p(&udp, &free_udp_port().to_string(), &args)
                })
            })
            .collect();
        for client in clients {
            let got = client.join().unwrap();
            let result = &got[0];
            assert_eq!(result["complete"], true, "{result}");
            for (name, values) in result["seen"].as_object().unwrap() {
                let values = numbers(values, |v| v.as_f64().or_else(|| v["first"].as_f64()));
                // The first update is the value when the monitor started; every one after it
                // counts up. Images in a debug build on a loaded machine may fall behind:
                // then they are squashed, never queued or reordered.
                if name == "BF:T:IMAGE" {
                    assert!(
                        values.windows(2).all(|w| w[1] > w[0]),
                        "{request:?} {name}: {values:?}"
                    );
                    let skipped = values.last().unwrap() - values[1] + 2.0 - values.len() as f64;
                    eprintln!("{request:?}: {skipped} images squashed of {}", values.len());
                } else {
                    assert!(consecutive(&values[1..]), "{request:?} {name}: {values:?}");
                }
            }
        }
    }
    let stats = server.counters.snapshot();
    assert_eq!((stats.bad_messages, stats.dropped), (0, 0), "{stats:?}");
}

/// Reads `pvmonitor`'s lines until `count` carry `marker`; their last numbers. A pvmonitor
/// that prints nothing for 15 s is replaced by a new one (at most twice): once, on a machine
/// loaded by a workspace build, pvAccessCPP's monitor thread waited for ever while the server's
/// updates kept arriving on its socket (seen with strace and gdb).
fn pvmonitor_values(server: &Running, args: &[&str], marker: &str, count: usize) -> Vec<f64> {
    for attempt in 1..=3 {
        match pvmonitor_attempt(server, args, marker, count) {
            Ok(values) => return values,
            Err(values) => {
                eprintln!("pvmonitor {args:?} stalled after {values:?} (attempt {attempt})")
            }
        }
    }
    panic!("pvmonitor {args:?} stalled three times");
}

fn pvmonitor_attempt(
    server: &Running,
    args: &[&str],
    marker: &str,
    count: usize,
) -> Result<Vec<f64>, (Vec<f64>, Vec<String>)> {
    // pvmonitor writes lines into a block buffer when not on a terminal: `stdbuf` lines them.
    let mut command = Command::new("stdbuf");
    command.arg("-oL").arg(tool("pvmonitor"));
    // Its own process group: the launcher script starts the real pvmonitor as its child, which
    // killing the script alone would leave running.
    let mut child = server
        .cpp_env(&mut command)
        .args(args)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut values = Vec::new();
    let mut other = Vec::new();
    let result = loop {
        let Ok(line) = received.recv_timeout(Duration::from_secs(15)) else {
            break Err((values, other));
        };
        if !line.contains(marker) && other.len() < 10 {
            other.push(line.clone());
        }
        if line.contains(marker)
            && let Some(value) = line.split_whitespace().rev().find_map(|v| v.parse().ok())
        {
            values.push(value);
            if values.len() == count {
                break Ok(values);
            }
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .status();
    stop(&mut child);
    result
}

#[test]
fn pvmonitor_sees_every_value_posted_at_10_hz() {
    let server = serve(sample_store());
    post_counters(&server);
    let scalar = pvmonitor_values(&server, &["BF:T:SCALAR"], "BF:T:SCALAR", 20);
    assert_eq!(scalar.len(), 20);
    assert!(consecutive(&scalar[1..]), "{scalar:?}");
    let piped = pvmonitor_values(
        &server,
        &[
            "-r",
            "record[queueSize=4,pipeline=true]field()",
            "BF:T:SCALAR",
        ],
        "BF:T:SCALAR",
        20,
    );
    assert!(consecutive(&piped[1..]), "{piped:?}");
    let image = pvmonitor_values(
        &server,
        // Not the pixels: pvmonitor would print all 1.4 M of them each time.
        &["-r", "field(uniqueId)", "BF:T:IMAGE"],
        "uniqueId",
        15,
    );
    assert_eq!(image.len(), 15);
    assert!(consecutive(&image[1..]), "{image:?}");
    let stats = server.counters.snapshot();
    assert_eq!((stats.bad_messages, stats.dropped), (0, 0), "{stats:?}");
}

/// A store with a writable setpoint (its owner refuses values of 100 and more), one only user
/// `operator` may write, and the read-only sample PVs.
fn writable_store(puts: &Arc<Mutex<Vec<PutRequest>>>) -> PvStore {
    let store = sample_store();
    let seen = Arc::clone(puts);
    let on_put: beamflow_pva::server::PutHandler = Arc::new(move |put: &PutRequest| {
        seen.lock().unwrap().push(put.clone());
        match put.value.value("value").and_then(Value::as_f64) {
            Some(x) if x < 100.0 => Ok(()),
            _ => Err("setpoint too large".to_owned()),
        }
    });
    let anyone = Access::Writable {
        allow: WriteRule::default(),
        on_put: Arc::clone(&on_put),
    };
    store.add("BF:T:SET", PvStructure::new(nt_scalar_double()), anyone);
    let operator_only = Access::Writable {
        allow: WriteRule {
            hosts: Vec::new(),
            users: vec!["operator-who-is-not-here".to_owned()],
        },
        on_put,
    };
    store.add(
        "BF:T:LOCKED",
        PvStructure::new(nt_scalar_double()),
        operator_only,
    );
    store
}

fn value_of(store: &PvStore, name: &str) -> f64 {
    store
        .value(name)
        .unwrap()
        .value("value")
        .unwrap()
        .as_f64()
        .unwrap()
}

#[test]
fn p4p_puts_are_applied_or_refused_with_an_error() {
    let puts = Arc::new(Mutex::new(Vec::new()));
    let server = serve(writable_store(&puts));
    let got = server.p4p(&["put", "BF:T:SET", "42"]);
    assert_eq!(got[0]["ok"], true, "{got:?}");
    assert_eq!(value_of(&server.store, "BF:T:SET"), 42.0);
    {
        let puts = puts.lock().unwrap();
        let put = puts.last().unwrap();
        assert_eq!(put.pv, "BF:T:SET");
        assert_eq!(put.peer.ip(), server.tcp.ip());
        // pvxs authenticates as `ca` with the user it runs as.
        assert!(!put.user.is_empty() && put.user != "anonymous", "{put:?}");
        assert!(
            put.changed.get(put.value.bit_of("value").unwrap()),
            "{put:?}"
        );
    }

    let got = server.p4p(&["put", "BF:T:SET", "500"]);
    assert_eq!(got[0]["ok"], false, "{got:?}");
    assert!(
        got[0]["error"]
            .as_str()
            .unwrap()
            .contains("setpoint too large"),
        "{got:?}"
    );
    assert_eq!(value_of(&server.store, "BF:T:SET"), 42.0);

    let got = server.p4p(&["put", "BF:T:SCALAR", "1"]);
    assert_eq!(got[0]["ok"], false, "{got:?}");
    assert!(
        got[0]["error"].as_str().unwrap().contains("read-only"),
        "{got:?}"
    );

    let got = server.p4p(&["put", "BF:T:LOCKED", "1"]);
    assert_eq!(got[0]["ok"], false, "{got:?}");
    assert!(
        got[0]["error"].as_str().unwrap().contains("no put access"),
        "{got:?}"
    );
    // The write rule refused it before the owner saw it.
    assert_eq!(puts.lock().unwrap().len(), 2);
    assert_eq!(server.counters.snapshot().refused_puts, 3);
}

#[test]
fn pvput_puts_are_applied_or_refused_with_an_error() {
    let puts = Arc::new(Mutex::new(Vec::new()));
    let server = serve(writable_store(&puts));
    let (ok, text) = server.tool_output("pvput", &["-w", "10", "BF:T:SET", "43"]);
    assert!(ok, "{text}");
    assert_eq!(value_of(&server.store, "BF:T:SET"), 43.0);
    assert_eq!(puts.lock().unwrap().len(), 1);

    let (ok, text) = server.tool_output("pvput", &["-w", "10", "BF:T:SET", "143"]);
    assert!(!ok || text.contains("setpoint too large"), "{text}");
    assert!(text.contains("setpoint too large"), "{text}");
    assert_eq!(value_of(&server.store, "BF:T:SET"), 43.0);

    let (ok, text) = server.tool_output("pvput", &["-w", "10", "BF:T:SCALAR", "1"]);
    assert!(text.contains("read-only"), "{ok} {text}");
    assert_eq!(server.counters.snapshot().refused_puts, 2);
}

/// A p4p server, p4p clients and beamflow's server share one UDP search port on this host
/// (all bind it with `SO_REUSEADDR`). The kernel hands each unicast search to one socket only;
/// forwarding it to 224.0.0.128 with an ORIGIN_TAG lets the others answer too, so the client
/// finds both servers' PVs. Both ways are tested: beamflow's server bound to 0.0.0.0 first
/// (it sees what pvxs forwards), and bound to 127.0.0.1 after the p4p server (it takes the
/// unicast searches and must forward them for the p4p server to be found).
#[test]
fn a_shared_search_port_finds_p4p_and_beamflow_servers() {
    // beamflow's server first, on every interface.
    let config = ServerConfig {
        udp: "0.0.0.0:0".parse().unwrap(),
        ..ServerConfig::loopback()
    };
    let server = serve_with(config, sample_store());
    let port = server.udp.port().to_string();
    let mut other = start_p4p_server(&port);
    find_both(&port);
    stop(&mut other);
    drop(server);

    // The p4p server first; beamflow's server on 127.0.0.1 takes the unicast searches.
    let port = free_udp_port();
    let mut other = start_p4p_server(&port.to_string());
    let config = ServerConfig {
        udp: SocketAddr::from(([127, 0, 0, 1], port)),
        ..ServerConfig::loopback()
    };
    let server = serve_with(config, sample_store());
    find_both(&port.to_string());
    stop(&mut other);
    assert_eq!(server.counters.snapshot().bad_messages, 0);
}

fn start_p4p_server(port: &str) -> Child {
    let mut child = Command::new(venv_bin().join("python"))
        .arg(script())
        .args(["127.0.0.1", port, "serve", "P4P:T:SHARED"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.contains("serving"), "{ready}");
    child
}

/// p4p clients searching 127.0.0.1 on the shared port (and bound to it) find both PVs.
fn find_both(port: &str) {
    let ours = p4p("127.0.0.1", port, &["get", "BF:T:SCALAR"]);
    assert_eq!(ours[0]["value"]["value"], 21.5);
    let theirs = p4p("127.0.0.1", port, &["get", "P4P:T:SHARED"]);
    assert_eq!(theirs[0]["value"]["value"], 7.5);
}

fn stop(child: &mut Child) {
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
}
