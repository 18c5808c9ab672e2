//! Writing a scan's NeXus file: 4 history columns of 100,000 float64 rows plus their event
//! numbers (int64), and 100 images of 1024×1024 uint16 as one `[100, 1024, 1024]` dataset,
//! chunked and compressed as `nexus::write` does (shuffle + deflate 4), synced to disk.
//! Throughput is the data's bytes. `bench/hdf5_write.py` runs this beside h5py writing the
//! same data.

use std::collections::BTreeMap;

use beamflow_protocol::{DType, NdArray};
use beamflow_reducer::hdf5_rest::{Attribute, Data, Node};
use beamflow_reducer::nexus::{self, ScanInfo};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ROWS: usize = 100_000;
const IMAGES: usize = 100;
const SIDE: usize = 1024;

/// Six bits of noise per index (a splitmix-style mix: a plain multiplicative hash repeats
/// and deflates 60:1), the same formula `bench/hdf5_write.py` uses in numpy.
fn noise(i: usize) -> u64 {
    let mut h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 32;
    h = h.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^= h >> 32;
    h >> 58
}

fn dataset(shape: Vec<usize>, dtype: DType, bytes: Vec<u8>) -> Node {
    Node::Dataset {
        data: Data::Numbers(NdArray::new(shape, dtype, Bytes::from(bytes)).expect("sizes match")),
        attributes: BTreeMap::new(),
    }
}

fn group(members: BTreeMap<String, Node>, signal: &str) -> Node {
    Node::Group {
        members,
        attributes: BTreeMap::from([
            ("NX_class".to_owned(), Attribute::Text("NXdata".to_owned())),
            ("signal".to_owned(), Attribute::Text(signal.to_owned())),
        ]),
    }
}

/// The tree and its data's size in bytes.
fn tree() -> (Node, u64) {
    let mut history = BTreeMap::new();
    for k in 0..4 {
        let column: Vec<u8> = (0..ROWS)
            .flat_map(|i| (i as f64 * 0.5 + k as f64 + noise(i) as f64 / 64.0).to_le_bytes())
            .collect();
        history.insert(
            format!("column{k}"),
            dataset(vec![ROWS], DType::Float64, column),
        );
    }
    let events: Vec<u8> = (0..ROWS as i64).flat_map(i64::to_le_bytes).collect();
    history.insert(
        "event_number".to_owned(),
        dataset(vec![ROWS], DType::Int64, events),
    );
    let frames: Vec<u8> = (0..IMAGES * SIDE * SIDE)
        .flat_map(|i| (100 + noise(i) as u16).to_le_bytes())
        .collect();
    let images = BTreeMap::from([(
        "frames".to_owned(),
        dataset(vec![IMAGES, SIDE, SIDE], DType::Uint16, frames),
    )]);
    let bytes = (5 * ROWS * 8 + IMAGES * SIDE * SIDE * 2) as u64;
    let root = Node::Group {
        members: BTreeMap::from([
            ("history".to_owned(), group(history, "column0")),
            ("images".to_owned(), group(images, "frames")),
        ]),
        attributes: BTreeMap::new(),
    };
    (root, bytes)
}

fn write(c: &mut Criterion) {
    let (root, bytes) = tree();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("scan.h5");
    let scan = ScanInfo {
        number: Some(1),
        source: "reducer".to_owned(),
        ..ScanInfo::default()
    };
    let size = nexus::write(&path, &root, &scan).expect("written");
    eprintln!(
        "data {bytes} bytes, file {size} bytes (ratio {:.2})",
        bytes as f64 / size as f64
    );
    let mut group = c.benchmark_group("nexus");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("write", |b| {
        b.iter(|| nexus::write(&path, &root, &scan).expect("written"))
    });
    group.finish();
}

criterion_group!(benches, write);
criterion_main!(benches);
