//! Dump decoding: tiny STINS records (events per second) and 4 MiB frames (bytes per second),
//! from memory so that only decoding is measured; plus bslz4 decompression of an image.

use std::hint::black_box;

use beamflow_protocol::dump::{DumpReader, DumpWriter};
use beamflow_protocol::streams::{bslz4, stins};
use beamflow_protocol::{DType, EventNumber, NdArray};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn dump(count: u64, pixels: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..pixels as u32)
        .flat_map(|i| ((i % 251) as u16).to_le_bytes())
        .collect();
    let image = NdArray::new(vec![pixels], DType::Uint16, Bytes::from(data)).expect("shape");
    let mut writer = DumpWriter::new(Vec::new());
    for n in 0..count {
        let mut event = stins::image_event(EventNumber(n), "det", &image, false);
        event.created_at = Some(beamflow_protocol::Timestamp::UNIX_EPOCH);
        writer.write_event(&event).expect("write to memory");
    }
    writer.into_inner().expect("flush memory")
}

fn decode(c: &mut Criterion) {
    let tiny = dump(10_000, 4);
    let mut group = c.benchmark_group("dump_decode");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("tiny_10k_events", |b| {
        b.iter(|| {
            DumpReader::new(black_box(tiny.as_slice()))
                .map(|r| r.map(|e| e.byte_len()))
                .sum::<Result<usize, _>>()
        })
    });
    let big = dump(8, 2 << 20);
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("4MiB_frames", |b| {
        b.iter(|| {
            DumpReader::new(black_box(big.as_slice()))
                .map(|r| r.map(|e| e.byte_len()))
                .sum::<Result<usize, _>>()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("stins");
    let image: Vec<u8> = (0..1024 * 1024u32)
        .flat_map(|i| ((i * 7 % 4096) as u16).to_le_bytes())
        .collect();
    let compressed = bslz4::compress(&image, 2);
    group.throughput(Throughput::Bytes(image.len() as u64));
    group.bench_function("bslz4_decompress_1Mpx_u16", |b| {
        b.iter(|| bslz4::decompress(black_box(&compressed), 2, Some(image.len())))
    });
    let frames = stins::image_frames(
        0,
        1,
        &NdArray::new(vec![4], DType::Uint16, Bytes::from(vec![0u8; 8])).expect("shape"),
        false,
    );
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_tiny_image", |b| {
        b.iter(|| stins::parse_frames(black_box(&frames)))
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
