//! Bench helper (run by `bench/runtime_vs_dranspose.py`): a STINS detector source, and the raw
//! ZeroMQ PUSH → PULL baseline for the same frames.
//!
//!     stins_source source ENDPOINT FRAMES BYTES [RATE_HZ]
//!         binds PUSH on ENDPOINT and sends a header, FRAMES images of BYTES (u16 pixels) and a
//!         series_end, as fast as the receiver takes them or at RATE_HZ; prints JSON timing.
//!     stins_source raw FRAMES BYTES [RATE_HZ]
//!         the same messages PUSH → PULL on loopback inside this process; prints JSON with
//!         events/s, GB/s and, per message, send-to-receive latency percentiles.

use std::time::{Duration, Instant};

use beamflow_protocol::streams::stins;
use beamflow_protocol::{DType, NdArray};
use bytes::Bytes;

fn image(bytes: usize) -> NdArray {
    let pixels = (bytes / 2).max(1);
    let data: Vec<u8> = (0..pixels)
        .flat_map(|i| ((i % 251) as u16).to_le_bytes())
        .collect();
    NdArray::new(vec![pixels], DType::Uint16, Bytes::from(data)).expect("built to its shape")
}

/// Sends one series; the image JSON carries the send time (µs since the epoch) as `sent_us`.
fn send_series(push: &zmq::Socket, frames: u64, bytes: usize, rate: f64) -> Duration {
    let image = image(bytes);
    let buffer = image.data().clone();
    let send = |parts: &[&[u8]]| push.send_multipart(parts, 0).expect("send");
    let start = Instant::now();
    send(&[&stins::header_frames(0)[0]]);
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    for i in 0..frames {
        if let Some(period) = period {
            let due = start + period.mul_f64(i as f64);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        }
        let header = serde_json::json!({
            "htype": "image", "frame": i, "shape": image.shape(), "type": "uint16",
            "compression": "none", "msg_number": i + 1, "sent_us": now_us(),
        })
        .to_string();
        send(&[header.as_bytes(), &buffer]);
    }
    send(&[&stins::end_frames(frames + 1)[0]]);
    start.elapsed()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn main() {
    // As every beamflow process does: libzmq's per-frame buffers are reused, not faulted in anew.
    beamflow_net::reuse_large_buffers();
    // `cargo bench`-style flags are ignored.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let number = |i: usize| -> f64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("argument {i}: a number expected; see the file's docs"))
    };
    let context = zmq::Context::new();
    match args.first().map(String::as_str) {
        Some("source") => {
            let endpoint = &args[1];
            let (frames, bytes) = (number(2) as u64, number(3) as usize);
            let rate = if args.len() > 4 { number(4) } else { 0.0 };
            let push = context.socket(zmq::PUSH).expect("socket");
            push.set_sndhwm(1000).expect("hwm");
            push.set_linger(-1).expect("linger");
            push.bind(endpoint).expect("bind");
            let elapsed = send_series(&push, frames, bytes, rate);
            println!(
                "{}",
                serde_json::json!({"frames": frames, "bytes": bytes, "seconds": elapsed.as_secs_f64()})
            );
        }
        Some("raw") => {
            let (frames, bytes) = (number(1) as u64, number(2) as usize);
            let rate = if args.len() > 3 { number(3) } else { 0.0 };
            let push = context.socket(zmq::PUSH).expect("socket");
            push.set_sndhwm(1000).expect("hwm");
            push.bind("tcp://127.0.0.1:*").expect("bind");
            let endpoint = push.get_last_endpoint().expect("endpoint").expect("utf-8");
            let pull = context.socket(zmq::PULL).expect("socket");
            pull.set_rcvhwm(1000).expect("hwm");
            pull.connect(&endpoint).expect("connect");
            let receiver = std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(frames as usize);
                let mut first = None;
                for _ in 0..frames + 2 {
                    let parts = pull.recv_multipart(0).expect("receive");
                    first.get_or_insert_with(Instant::now);
                    let sent = serde_json::from_slice::<serde_json::Value>(&parts[0])
                        .ok()
                        .and_then(|v| v["sent_us"].as_u64());
                    if let Some(sent) = sent {
                        latencies.push(now_us().saturating_sub(sent));
                    }
                }
                (first.map(|t| t.elapsed()), latencies)
            });
            let sent = send_series(&push, frames, bytes, rate);
            let (received, mut latencies) = receiver.join().expect("receiver");
            let seconds = received
                .unwrap_or(sent)
                .as_secs_f64()
                .max(sent.as_secs_f64());
            latencies.sort_unstable();
            let at = |q: f64| {
                latencies
                    .get(((latencies.len().saturating_sub(1)) as f64 * q) as usize)
                    .map_or(0.0, |&us| us as f64 / 1000.0)
            };
            println!(
                "{}",
                serde_json::json!({
                    "frames": frames, "bytes": bytes, "seconds": seconds,
                    "events_per_second": frames as f64 / seconds,
                    "gb_per_second": (frames as f64 * bytes as f64) / seconds / 1e9,
                    "latency_ms": {"p50": at(0.5), "p99": at(0.99)},
                })
            );
        }
        _ => eprintln!(
            "usage: stins_source source ENDPOINT FRAMES BYTES [RATE_HZ] | raw FRAMES BYTES [RATE_HZ]"
        ),
    }
}
