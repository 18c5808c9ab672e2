//! beamflow's PVA server as other implementations see it: p4p 4.3.0 (pvxs 1.5.3, through
//! `server_peers.py`) and EPICS 7's `pvget`, `pvmonitor`, `pvput` and `pvinfo` (pvAccessCPP),
//! all from the workspace's `.venv` (or `BEAMFLOW_PYTHON`'s), on loopback with free ports.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beamflow_pva::pvdata::{ArrayValue, BitSet, FieldDesc, PvStructure, ScalarType, StructDesc, Value};
use beamflow_pva::server::{Access, PutRequest, PvStore, Server, ServerConfig, ServerCounters, WriteRule};
use serde_json::Value as Json;

/// The venv's `bin` directory: `BEAMFLOW_PYTHON`'s, else the workspace's `.venv/bin`.
fn venv_bin() -> PathBuf {
    let python = std::env::var_os("BEAMFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(python.exists(), "{} not found: run .ci/run once or set BEAMFLOW_PYTHON", python.display());
    python.parent().expect("a bin directory").to_path_buf()
}

fn tool(name: &str) -> PathBuf {
    let path = venv_bin().join(name);
    assert!(path.exists(), "{} not found: run .ci/run once", path.display());
    path
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/server_peers.py")
}

/// A UDP port nobody uses now: clients get their own broadcast port, so that their
/// beacon socket does not share the server's search port (unless a test wants it to).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(Server::bind(config, store.clone())).unwrap();
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
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("EPICS_PVA_ADDR_LIST", self.udp.to_string())
            .env("EPICS_PVA_AUTO_ADDR_LIST", "NO")
            .env("EPICS_PVA_BROADCAST_PORT", free_udp_port().to_string());
        command
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
        kinds.iter().map(|(n, t)| (*n, FieldDesc::ScalarArray(*t))).collect(),
    )));
    let codec = FieldDesc::structure(
        "codec_t",
        vec![("name", scalar(ScalarType::String)), ("parameters", FieldDesc::Any)],
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
        Value::Union(Some((6, Box::new(Value::Array(ArrayValue::UShort(pixels)))))),
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
    pv.set("dimension", Value::StructureArray(vec![dim(WIDTH), dim(HEIGHT)]), &mut changed)
        .unwrap();
    let bytes = (WIDTH * HEIGHT * 2) as i64;
    pv.set("compressedSize", Value::Long(bytes), &mut changed).unwrap();
    pv.set("uncompressedSize", Value::Long(bytes), &mut changed).unwrap();
    pv.set("uniqueId", Value::Int(unique_id), &mut changed).unwrap();
    pv
}

fn sample_store() -> PvStore {
    let store = PvStore::new();
    let mut temperature = PvStructure::new(nt_scalar_double());
    let mut changed = BitSet::new();
    temperature.set("value", Value::Double(21.5), &mut changed).unwrap();
    temperature
        .set("display.units", Value::String("degC".to_owned()), &mut changed)
        .unwrap();
    temperature.set("display.precision", Value::Int(2), &mut changed).unwrap();
    temperature.set("control.limitHigh", Value::Double(100.0), &mut changed).unwrap();
    temperature.set("alarm.severity", Value::Int(1), &mut changed).unwrap();
    store.add("BF:T:SCALAR", temperature, Access::ReadOnly);
    let mut wave = PvStructure::new(nt_scalar_array_double());
    wave.set(
        "value",
        Value::Array(ArrayValue::Double((0..1000).map(f64::from).collect())),
        &mut changed,
    )
    .unwrap();
    store.add("BF:T:ARRAY", wave, Access::ReadOnly);
    store.add("BF:T:IMAGE", image(1), Access::ReadOnly);
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
    assert_eq!(value["value"]["last"], ((WIDTH * HEIGHT - 1) % 65536) as u64);
    assert_eq!(value["dimension"][0]["size"], WIDTH);
    assert_eq!(value["dimension"][1]["size"], HEIGHT);
    assert_eq!(value["uniqueId"], 1);

    // A selection: only the value.
    let got = server.p4p(&["get", "BF:T:SCALAR", "field(value)"]);
    assert_eq!(got[0]["keys"], serde_json::json!(["value"]));
    assert_eq!(server.counters.snapshot().bad_messages, 0);
}

#[test]
fn pvget_and_pvinfo_read_scalar_array_and_image() {
    let server = serve(sample_store());
    let (ok, text) = server.tool_output("pvget", &["-w", "10", "BF:T:SCALAR"]);
    assert!(ok, "{text}");
    assert!(text.contains("21.5"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "10", "-r", "field(value)", "BF:T:SCALAR"]);
    assert!(ok, "{text}");
    assert!(text.contains("21.5"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "10", "-v", "BF:T:SCALAR"]);
    assert!(ok, "{text}");
    assert!(text.contains("degC") && text.contains("display"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "10", "BF:T:ARRAY"]);
    assert!(ok, "{text}");
    assert!(text.contains("999"), "{text}");

    let (ok, text) = server.tool_output("pvinfo", &["-w", "10", "BF:T:IMAGE"]);
    assert!(ok, "{text}");
    assert!(text.contains("epics:nt/NTNDArray:1.0") && text.contains("ushort[] ushortValue"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "20", "-r", "field(uniqueId,dimension)", "BF:T:IMAGE"]);
    assert!(ok, "{text}");
    assert!(text.contains("1392"), "{text}");

    let (ok, text) = server.tool_output("pvget", &["-w", "20", "-r", "field(value)", "BF:T:IMAGE"]);
    assert!(ok, "{text}");
    assert!(text.contains("ushort[]") || text.contains("65535"), "{}", &text[..text.len().min(400)]);
    assert_eq!(server.counters.snapshot().bad_messages, 0);
}
