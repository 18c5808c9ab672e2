//! probe
use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let n: usize = beamflow_protocol::dump::DumpReader::open(std::path::Path::new(&path)).unwrap().map(|r| r.unwrap().byte_len()).sum();
        let dt = t.elapsed().as_secs_f64();
        println!("{} MB in {:.3} s = {:.2} GB/s", n / 1_000_000, dt, n as f64 / dt / 1e9);
    }
}
