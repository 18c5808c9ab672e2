//! Writes the seed corpora, `corpus/<target>/`, from the project's own encoders: small but
//! real messages of every kind each target reads, so the fuzzer starts past the first checks.
//! Run from `fuzz/`: `cargo run --example seeds`. The seeds are committed; what the fuzzer finds
//! beyond them is not.

use std::fs;
use std::path::Path;

use beamflow_ca::dbr::{EpicsTime, TimeValue, Values};
use beamflow_ca::wire::{self, Header, command};
use beamflow_fuzz::join;
use beamflow_protocol::control::{
    self, ByteVec, ComponentStatus, FromController, Hello, LeasedEvent, LeasedFrame, Role,
    ToController,
};
use beamflow_protocol::dump::{self, DumpWriter};
use beamflow_protocol::event::{EventData, EventReport, ResultData};
use beamflow_protocol::ids::EventNumber;
use beamflow_protocol::message::{encode_part_header, encode_report, encode_result};
use beamflow_protocol::streams::{bslz4, stins};
use beamflow_protocol::value::Value;
use beamflow_protocol::{DType, NdArray};
use bytes::{Bytes, BytesMut};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)
    };

    // An 8 × 8 uint16 ramp: one bslz4 block and a tail-free image.
    let pixels: Vec<u8> = (0u16..64).flat_map(|x| (x * 37).to_le_bytes()).collect();
    let image = NdArray::new(vec![8, 8], DType::Uint16, Bytes::from(pixels.clone()))
        .unwrap_or_else(|error| panic!("an 8 × 8 uint16 image: {error}"));
    let created_at = "2026-11-30T12:00:00.123456Z"
        .parse()
        .unwrap_or_else(|error| panic!("a time stamp: {error}"));
    let stins_event = |n: u64, compressed: bool| {
        let mut event = EventData::new(EventNumber(n));
        event.created_at = Some(created_at);
        event.streams.insert(
            "det".into(),
            beamflow_protocol::event::StreamData {
                typ: stins::TYP.into(),
                frames: stins::image_frames(n, n + 1, &image, compressed),
            },
        );
        event.with_scalar("quad", -1.25)
    };
    let events = [
        stins_event(0, true),
        stins_event(1, false),
        EventData::new(EventNumber(2)),
    ];

    // Dumps: three events, and the same cut inside its last record.
    let mut dump = DumpWriter::new(Vec::new());
    for event in &events {
        dump.write_event(event)?;
    }
    let dump = dump.into_inner()?;
    write("dump_reader", "three_events.cbors", &dump)?;
    write("dump_reader", "truncated.cbors", &dump[..dump.len() - 5])?;

    // STINS: a header, images with and without bslz4, the end of the series.
    write("stins", "header", &join(&stins::header_frames(0)))?;
    write(
        "stins",
        "image_bslz4",
        &join(&stins::image_frames(3, 4, &image, true)),
    )?;
    write(
        "stins",
        "image_raw",
        &join(&stins::image_frames(3, 4, &image, false)),
    )?;
    write("stins", "series_end", &join(&stins::end_frames(5)))?;

    // bslz4: the selector byte (element size 1, 2, 4, 8 by its low bits), then the buffer.
    for (select, elem_size) in [(1u8, 2usize), (2, 4)] {
        let mut seed = vec![select];
        seed.extend(bslz4::compress(&pixels, elem_size));
        write("bslz4", &format!("ramp_{elem_size}"), &seed)?;
    }

    // Channel Access: a client's greeting and channel, a monitor update, a put, and a large
    // waveform's extended header.
    let mut circuit = BytesMut::new();
    wire::put_message(
        &mut circuit,
        Header::new(command::VERSION, 0, u32::from(wire::MINOR_VERSION), 0, 0),
        &[],
    );
    wire::put_message(
        &mut circuit,
        Header::new(
            command::CREATE_CHAN,
            0,
            0,
            1,
            u32::from(wire::MINOR_VERSION),
        ),
        &wire::name_payload("QUAD:IN20:525:BACT"),
    );
    let value = TimeValue {
        status: 0,
        severity: 0,
        stamp: EpicsTime {
            secs: 1_000_000_000,
            nanos: 123_456_789,
        },
        values: Values::Double(vec![3.5, -1.0]),
    };
    let mut update = Vec::new();
    value.write(&mut update);
    wire::put_message(
        &mut circuit,
        Header::new(command::EVENT_ADD, 20, 2, 1, 7),
        &update,
    );
    wire::put_message(
        &mut circuit,
        Header::new(command::WRITE_NOTIFY, 6, 1, 2, 8),
        &2.5f64.to_be_bytes(),
    );
    write("ca_wire", "circuit", &circuit)?;
    let strings = TimeValue {
        values: Values::String(vec!["ON".to_owned(), "kG".to_owned()]),
        ..value.clone()
    };
    let mut reply = Vec::new();
    strings.write(&mut reply);
    let mut read = BytesMut::new();
    wire::put_message(
        &mut read,
        Header::new(command::READ_NOTIFY, 14, 2, 29, 3),
        &reply,
    );
    write("ca_wire", "read_strings", &read)?;
    let waveform = TimeValue {
        values: Values::Short((0..70_000).map(|x| x as i16).collect()),
        ..value
    };
    let mut wave = Vec::new();
    waveform.write(&mut wave);
    let mut extended = BytesMut::new();
    wire::put_message(
        &mut extended,
        Header::new(command::EVENT_ADD, 15, 70_000, 1, 9),
        &wave[..16],
    );
    write("ca_wire", "extended_header", &extended)?;

    // PV Access: messages holding a type and a value (an NTScalar with its change marks and
    // members, an NTNDArray of the ramp, lz4-compressed, big-endian), one in two segments.
    {
        use beamflow_pva::nt;
        use beamflow_pva::pvdata::{
            BitSet, ByteOrder, Encoder, PvStructure, ScalarType, Value as PvValue,
        };
        use beamflow_pva::wire::{begin, command as pva_command, end};
        let message = |order: ByteOrder, pv: &PvStructure, changed: &BitSet| {
            let mut out = Encoder::new(order);
            let start = begin(&mut out, pva_command::MONITOR, true);
            out.field_desc(&pv.field_desc());
            let _ = out.value(&pv.field_desc(), &PvValue::Structure(pv.fields.clone()));
            changed.encode(&mut out);
            let _ = out.partial(pv, changed);
            end(&mut out, start);
            out.buf
        };
        let mut scalar = PvStructure::new(nt::nt_scalar(ScalarType::Double, true));
        let mut changed = BitSet::new();
        let _ = scalar.set("value", PvValue::Double(2.5), &mut changed);
        write(
            "pva_wire",
            "scalar",
            &message(ByteOrder::Little, &scalar, &changed),
        )?;
        let mut ndarray = nt::ndarray_value(&image, 3, nt::TimeStamp::default());
        let compressed = lz4_flex::block::compress(&pixels);
        let mut marks = BitSet::new();
        let _ = ndarray.set(
            "value",
            PvValue::Union(Some((
                5,
                Box::new(PvValue::Array(beamflow_pva::pvdata::ArrayValue::UByte(
                    compressed,
                ))),
            ))),
            &mut marks,
        );
        let _ = ndarray.set("codec.name", PvValue::String("lz4".into()), &mut marks);
        let _ = ndarray.set(
            "codec.parameters",
            PvValue::Any(Some(Box::new((
                beamflow_pva::pvdata::FieldDesc::Scalar(ScalarType::Int),
                PvValue::Int(3),
            )))),
            &mut marks,
        );
        let whole = message(ByteOrder::Big, &ndarray, &BitSet::all());
        // Segmented: the first half flagged first, the rest last.
        let (head, tail) = whole[8..].split_at((whole.len() - 8) / 2);
        let mut segmented = Vec::new();
        for (flag, part) in [(0x10u8, head), (0x20u8, tail)] {
            segmented.extend_from_slice(&[0xCA, 2, 0xC0 | flag, pva_command::MONITOR]);
            segmented.extend_from_slice(&(part.len() as u32).to_be_bytes());
            segmented.extend_from_slice(part);
        }
        write("pva_wire", "ndarray_lz4_segmented", &segmented)?;
    }

    // Control messages, both ways.
    let hello = Hello {
        role: Role::Worker,
        name: "worker-0".to_owned(),
        instance: 0x1234_5678,
        tags: vec!["gpu".into()],
        streams: vec!["det".into()],
        endpoint: Some("tcp://127.0.0.1:6000".to_owned()),
        status: ComponentStatus::empty(Role::Worker),
    };
    let to_controller = [
        ("hello", ToController::Hello(hello)),
        (
            "done",
            ToController::Done {
                scan: 3,
                events: 10,
            },
        ),
        (
            "reduced",
            ToController::Reduced {
                scan: 3,
                up_to: EventNumber(300),
            },
        ),
        (
            "resumed",
            ToController::Resumed {
                scan: 3,
                at: EventNumber(0),
            },
        ),
    ];
    for (name, message) in to_controller {
        write("control", name, &control::encode(&message))?;
    }
    let from_controller = [
        (
            "scan",
            FromController::Scan {
                scan: 3,
                uuid: "6f1c".to_owned(),
                frames: vec![("det".into(), 100)],
                reducer: Some("tcp://127.0.0.1:7000".to_owned()),
                parameters: vec![("roi".into(), ByteVec::from(b"[0, 8]".to_vec()))],
                first_frames: Vec::new(),
                mapping: None,
            },
        ),
        (
            "lease",
            FromController::Lease {
                scan: 3,
                events: vec![LeasedEvent {
                    event: EventNumber(4),
                    frames: vec![LeasedFrame {
                        stream: "det".into(),
                        frame: 4,
                        workers: vec!["worker-0".into()],
                    }],
                    resend_to: Vec::new(),
                }],
            },
        ),
        (
            "rewind",
            FromController::Rewind {
                scan: 3,
                from: EventNumber(7),
                reducer: None,
            },
        ),
    ];
    for (name, message) in from_controller {
        write("control", name, &control::encode(&message))?;
    }

    // Event parts: two parts back to back in one message, as an ingester batches them.
    let mut message = Vec::new();
    for event in &events[..2] {
        message.push(Bytes::from(encode_part_header(3, event)));
        message.extend(
            event
                .streams
                .values()
                .flat_map(|s| s.frames.iter().cloned()),
        );
    }
    write("event_parts", "two_parts", &join(&message))?;

    // A report with one result, and that result alone (as the reducer's checkpoint keeps it).
    let payload = Value::Map(
        [
            ("mean".to_owned(), Value::Float(12.5)),
            (
                "shape".to_owned(),
                Value::Array(vec![Value::Int(8), Value::Int(8)]),
            ),
            (
                "roi".to_owned(),
                Value::Bytes(Bytes::from_static(b"\x00\x01")),
            ),
            ("name".to_owned(), Value::Text("det".to_owned())),
            ("ok".to_owned(), Value::Bool(true)),
            ("none".to_owned(), Value::Null),
        ]
        .into_iter()
        .collect(),
    );
    let result = ResultData {
        event_number: EventNumber(4),
        analysis: "stats".into(),
        worker: "worker-0".into(),
        created_at: Some(created_at),
        payload: payload.into(),
    };
    let report = EventReport {
        event_number: EventNumber(4),
        worker: "worker-0".into(),
        results: vec![result.clone()],
        missing: vec!["quad".into()],
    };
    write("report", "report", &encode_report(3, &report))?;
    write("report", "result", &encode_result(&result))?;
    // Regression (#17): a payload of 128 nested arrays each claiming 4,096 items, which used to
    // reserve 20 MiB before reading one.
    let empty = ResultData {
        payload: Value::Null.into(),
        ..result
    };
    let mut nested = encode_result(&empty);
    nested.pop(); // the null payload
    nested.extend([0x99, 0x10, 0x00].repeat(128));
    write("report", "nested_claims", &nested)?;

    // Regression (#17): 22-byte dumps whose one frame claims 4 GiB (over the record limit) and
    // 256 MiB (under it).
    for (name, claim) in [("4gib", [0xff; 4]), ("256mib", [0x10, 0, 0, 0])] {
        let mut dump = dump::SELF_DESCRIBE_BYTES.to_vec();
        // tag 42877 [0, {"d": tag 42878 ["", [bytes of the claimed length]]}]
        dump.extend([
            0xd9, 0xa7, 0x7d, 0x82, 0x00, 0xa1, 0x61, b'd', 0xd9, 0xa7, 0x7e, 0x82,
        ]);
        dump.extend([0x60, 0x81, 0x5a]);
        dump.extend(claim);
        write("dump_reader", &format!("frame_claims_{name}.cbors"), &dump)?;
    }

    // Pipeline files: the repository's examples as an operator writes them, and one as JSON, as
    // the Helm chart renders it.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in ["pipeline.toml", "sim.toml", "injector.toml"] {
        write("pipeline", name, &fs::read(examples.join(name))?)?;
    }
    write("pipeline", "sim.json", SIM_JSON.as_bytes())?;
    Ok(())
}

/// `examples/sim.toml` as the Helm chart's JSON.
const SIM_JSON: &str = r#"{
  "ingesters": {"det": {"kind": "sim", "shape": [64, 64], "rate_hz": 100}},
  "analyses": {"stats": {"kind": "frame_stats"}},
  "accumulators": {
    "history": {"kind": "history", "analysis": "stats",
                "values": {"det_mean": "det/0/mean", "det_max": "det/0/max"}, "capacity": 10000},
    "last": {"kind": "last", "analysis": "stats"}
  },
  "workers": {"count": 2}
}
"#;
