//! Serves PVs for a benchmark: `pva_serve SCALARS RATE_HZ IMAGE_PIXELS IMAGE_HZ` serves SCALARS
//! NTScalar doubles `BF:s<i>`, each posted RATE_HZ times a second, and an NTNDArray `BF:img` of
//! IMAGE_PIXELS u16 pixels posted IMAGE_HZ times a second, on the ports `EPICS_PVAS_SERVER_PORT`
//! and `EPICS_PVAS_BROADCAST_PORT` of loopback; prints `{"tcp": port, "udp": port}` once
//! serving and serves until stdin closes. Used by `bench/pva_monitor.py`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use beamflow_protocol::{DType, NdArray};
use beamflow_pva::nt::{self, TimeStamp};
use beamflow_pva::pvdata::{BitSet, PvStructure, ScalarType, Value};
use beamflow_pva::server::{Access, PvStore, Server, ServerConfig};
use bytes::Bytes;

fn main() {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("usage: pva_serve SCALARS RATE_HZ IMAGE_PIXELS IMAGE_HZ")
        })
        .collect();
    let [scalars, rate, pixels, image_rate] = args[..] else {
        panic!("usage: pva_serve SCALARS RATE_HZ IMAGE_PIXELS IMAGE_HZ");
    };
    let store = PvStore::new();
    let names: Vec<String> = (0..scalars as usize).map(|i| format!("BF:s{i}")).collect();
    for name in &names {
        store.add(
            name,
            PvStructure::new(nt::nt_scalar(ScalarType::Double, false)),
            Access::ReadOnly,
        );
    }
    let side = (pixels as usize).max(1);
    let image = move |n: u64| {
        let data: Vec<u8> = (0..side)
            .flat_map(|i| ((i as u64 + n) as u16).to_le_bytes())
            .collect();
        NdArray::new(vec![side], DType::Uint16, Bytes::from(data)).expect("a flat image")
    };
    store.add(
        "BF:img",
        nt::ndarray_value(&image(0), 0, TimeStamp::now()),
        Access::ReadOnly,
    );
    let env = ServerConfig::from_env();
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let config = ServerConfig {
        tcp: SocketAddr::new(local, env.tcp.port()),
        udp: SocketAddr::new(local, env.udp.port()),
        beacon_to: Vec::new(),
        ..env
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = runtime
        .block_on(Server::bind(config, store.clone()))
        .expect("bind");
    println!(
        "{{\"tcp\": {}, \"udp\": {}}}",
        server.tcp_addr().port(),
        server.udp_addr().port()
    );
    runtime.spawn(server.run());
    let posting = store.clone();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        let mut n = 0.0;
        loop {
            tick.tick().await;
            n += 1.0;
            for name in &names {
                posting.update(name, |pv, changed| {
                    let _ = pv.set("value", Value::Double(n), changed);
                });
            }
        }
    });
    // Made before, as a camera's driver has its frames: the server's cost is measured, not
    // this program's.
    let frames: Vec<PvStructure> = (0..8)
        .map(|n| nt::ndarray_value(&image(n), n as i32, TimeStamp::now()))
        .collect();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / image_rate.max(0.001)));
        for frame in frames.iter().cycle() {
            tick.tick().await;
            store.post("BF:img", frame.clone(), &BitSet::all());
        }
    });
    let mut line = String::new();
    while std::io::stdin()
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}
