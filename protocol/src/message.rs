//! The CBOR encoding of what beamflow sends itself (no pickle anywhere): events' parts on their
//! way from ingesters to workers, and results from workers to the reducer.
//!
//! An event part travels as `[header, frame, frame, ...]`: the header says the event number, each
//! stream's `typ` and frame count, and `created_at`; the frames follow unmodified, stream by
//! stream in name order, so an ingester forwards upstream frames without copying them
//! (dranspose's `InternalWorkerMessage` framing, with a CBOR header). One multipart message
//! carries one or more parts back to back ([`decode_parts`]): batching the parts read in one burst
//! saves a message, a queue flush and often a wake-up per event.

use std::sync::Arc;

use jiff::Timestamp;
use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};

use bytes::Bytes;

use crate::error::CborError;
use crate::event::{EventData, EventReport, ResultData, StreamData};
use crate::ids::{AnalysisName, EventNumber, StreamName, StreamType, WorkerName};
use crate::value::Value;

/// Tag of a result: `[event_number, analysis, worker, created_at | null, payload]`. Next to
/// dranspose's 42877/42878 and unassigned by IANA.
pub const RESULT_TAG: u64 = 42880;

/// Tag of an event part header:
/// `[event_number, {stream: [typ, frame_count]}, created_at | null, scan]`.
pub const PART_TAG: u64 = 42881;

/// The header of an event part of scan `scan`; send it followed by every stream's frames in name
/// order.
pub fn encode_part_header(scan: u64, event: &EventData) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = write_part_header(&mut e, scan, event);
    e.into_writer()
}

fn write_part_header(
    e: &mut Encoder<Vec<u8>>,
    scan: u64,
    event: &EventData,
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    e.tag(Tag::new(PART_TAG))?.array(4)?;
    e.u64(event.event_number.0)?;
    e.map(event.streams.len() as u64)?;
    for (name, stream) in &event.streams {
        e.str(name.as_str())?.array(2)?;
        e.str(stream.typ.as_str())?
            .u64(stream.frames.len() as u64)?;
    }
    write_created_at(e, event.created_at)?;
    e.u64(scan).map(drop)
}

/// Rebuilds the event parts of one message, `[header, frames..., header, frames...]`, each with
/// its scan.
pub fn decode_parts(frames: Vec<Bytes>) -> Result<Vec<(u64, EventData)>, CborError> {
    let mut frames = frames.into_iter();
    let mut parts = Vec::new();
    while let Some(header) = frames.next() {
        let (scan, mut event, layout) = read_part_header(&header)?;
        for (name, typ, count) in layout {
            let stream_frames: Vec<Bytes> = frames.by_ref().take(count as usize).collect();
            if stream_frames.len() as u64 != count {
                return Err(CborError::new(
                    0,
                    format!(
                        "event part {}: header announces {count} frames of {name}, {} arrived",
                        event.event_number,
                        stream_frames.len()
                    ),
                ));
            }
            let data = StreamData {
                typ,
                frames: stream_frames,
            };
            if event.streams.insert(name.clone(), data).is_some() {
                return Err(CborError::new(
                    0,
                    format!(
                        "event part {}: stream {name} appears twice",
                        event.event_number
                    ),
                ));
            }
        }
        parts.push((scan, event));
    }
    Ok(parts)
}

type Layout = Vec<(StreamName, StreamType, u64)>;

fn read_part_header(header: &[u8]) -> Result<(u64, EventData, Layout), CborError> {
    let mut d = Decoder::new(header);
    let fail = |d: &Decoder<'_>, what: &str| {
        CborError::new(d.position(), format!("event part: expected {what}"))
    };
    match d.tag() {
        Ok(tag) if tag.as_u64() == PART_TAG => {}
        _ => {
            return Err(CborError::new(
                0,
                format!("event part: expected tag {PART_TAG}"),
            ));
        }
    }
    if !matches!(d.array(), Ok(Some(4))) {
        return Err(fail(&d, "an array of 4 items"));
    }
    let event_number = EventNumber(d.u64().map_err(|_| fail(&d, "an event number"))?);
    let count = match d.map() {
        Ok(Some(n)) => n,
        _ => return Err(fail(&d, "a map of streams")),
    };
    let mut layout = Vec::with_capacity(count.min(64) as usize);
    for _ in 0..count {
        let name = StreamName::from(d.str().map_err(|_| fail(&d, "a stream name"))?);
        if !matches!(d.array(), Ok(Some(2))) {
            return Err(fail(&d, "[typ, frame_count]"));
        }
        let typ = StreamType::from(d.str().map_err(|_| fail(&d, "a typ"))?);
        let frames = d.u64().map_err(|_| fail(&d, "a frame count"))?;
        layout.push((name, typ, frames));
    }
    let mut event = EventData::new(event_number);
    event.created_at = read_created_at(&mut d, "event part")?;
    let scan = d.u64().map_err(|_| fail(&d, "a scan number"))?;
    Ok((scan, event, layout))
}

/// Tag of an event report:
/// `[event_number, worker, [result, ...], [missing stream, ...], scan]`, each result as
/// [`encode_result`] writes it.
pub const REPORT_TAG: u64 = 42882;

/// `created_at` as a tag-0 RFC 3339 string with microseconds (what Python's datetime keeps),
/// or null.
fn write_created_at(
    e: &mut Encoder<Vec<u8>>,
    created_at: Option<Timestamp>,
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    match created_at {
        Some(t) => write_timestamp(e, t),
        None => e.null().map(drop),
    }
}

/// A time stamp as dumps and messages carry it: tag 0 with an RFC 3339 string to the
/// microsecond, as Python's datetime has it, so dranspose reads back what was written.
pub(crate) fn write_timestamp<W: minicbor::encode::Write>(
    e: &mut Encoder<W>,
    t: Timestamp,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    e.tag(Tag::new(0))?.str(&format!("{t:.6}")).map(drop)
}

fn read_created_at(d: &mut Decoder<'_>, what: &str) -> Result<Option<Timestamp>, CborError> {
    let fail = |d: &Decoder<'_>, expected: &str| {
        CborError::new(d.position(), format!("{what}: expected {expected}"))
    };
    if d.datatype().map_err(|_| fail(d, "created_at"))? == Type::Null {
        let _ = d.skip();
        return Ok(None);
    }
    let _ = d.tag().map_err(|_| fail(d, "created_at tag 0"))?;
    let text = d.str().map_err(|_| fail(d, "created_at text"))?;
    text.parse::<Timestamp>()
        .map(Some)
        .map_err(|e| fail(d, &format!("RFC 3339 created_at: {e}")))
}

/// Encodes a worker's report of one event of scan `scan`.
pub fn encode_report(scan: u64, report: &EventReport) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = write_report(&mut e, scan, report);
    e.into_writer()
}

fn write_report(
    e: &mut Encoder<Vec<u8>>,
    scan: u64,
    report: &EventReport,
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    e.tag(Tag::new(REPORT_TAG))?.array(5)?;
    e.u64(report.event_number.0)?.str(report.worker.as_str())?;
    e.array(report.results.len() as u64)?;
    for result in &report.results {
        write_result(e, result)?;
    }
    e.array(report.missing.len() as u64)?;
    report
        .missing
        .iter()
        .try_for_each(|stream| e.str(stream.as_str()).map(drop))?;
    e.u64(scan).map(drop)
}

/// Decodes a worker's report; returns its scan too.
pub fn decode_report(bytes: &[u8]) -> Result<(u64, EventReport), CborError> {
    let mut d = Decoder::new(bytes);
    let fail = |d: &Decoder<'_>, what: &str| {
        CborError::new(d.position(), format!("report: expected {what}"))
    };
    match d.tag() {
        Ok(tag) if tag.as_u64() == REPORT_TAG => {}
        _ => {
            return Err(CborError::new(
                0,
                format!("report: expected tag {REPORT_TAG}"),
            ));
        }
    }
    if !matches!(d.array(), Ok(Some(5))) {
        return Err(fail(&d, "an array of 5 items"));
    }
    let event_number = EventNumber(d.u64().map_err(|_| fail(&d, "an event number"))?);
    let worker = WorkerName::from(d.str().map_err(|_| fail(&d, "a worker name"))?);
    let count = match d.array() {
        Ok(Some(n)) => n,
        _ => return Err(fail(&d, "an array of results")),
    };
    let mut results = Vec::with_capacity(count.min(64) as usize);
    for _ in 0..count {
        results.push(read_result(&mut d)?);
    }
    let missing_count = match d.array() {
        Ok(Some(n)) => n,
        _ => return Err(fail(&d, "an array of missing streams")),
    };
    let mut missing = Vec::with_capacity(missing_count.min(64) as usize);
    for _ in 0..missing_count {
        missing.push(StreamName::from(
            d.str().map_err(|_| fail(&d, "a stream name"))?,
        ));
    }
    let scan = d.u64().map_err(|_| fail(&d, "a scan number"))?;
    if d.position() != bytes.len() {
        return Err(CborError::new(d.position(), "report: trailing bytes"));
    }
    Ok((
        scan,
        EventReport {
            event_number,
            worker,
            results,
            missing,
        },
    ))
}

/// Encodes a result.
pub fn encode_result(result: &ResultData) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = write_result(&mut e, result);
    e.into_writer()
}

fn write_result(
    e: &mut Encoder<Vec<u8>>,
    result: &ResultData,
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    e.tag(Tag::new(RESULT_TAG))?.array(5)?;
    e.u64(result.event_number.0)?;
    e.str(result.analysis.as_str())?;
    e.str(result.worker.as_str())?;
    write_created_at(e, result.created_at)?;
    result.payload.encode(e)
}

/// Decodes a result; the error says which field was wrong and where.
pub fn decode_result(bytes: &[u8]) -> Result<ResultData, CborError> {
    let mut d = Decoder::new(bytes);
    let result = read_result(&mut d)?;
    if d.position() != bytes.len() {
        return Err(CborError::new(d.position(), "result: trailing bytes"));
    }
    Ok(result)
}

fn read_result(d: &mut Decoder<'_>) -> Result<ResultData, CborError> {
    let fail = |d: &Decoder<'_>, what: &str| {
        CborError::new(d.position(), format!("result: expected {what}"))
    };
    let at = d.position();
    match d.tag() {
        Ok(tag) if tag.as_u64() == RESULT_TAG => {}
        _ => {
            return Err(CborError::new(
                at,
                format!("result: expected tag {RESULT_TAG}"),
            ));
        }
    }
    if !matches!(d.array(), Ok(Some(5))) {
        return Err(fail(d, "an array of 5 items"));
    }
    let event_number = EventNumber(d.u64().map_err(|_| fail(d, "an event number"))?);
    let analysis = AnalysisName::from(d.str().map_err(|_| fail(d, "an analysis name"))?);
    let worker = WorkerName::from(d.str().map_err(|_| fail(d, "a worker name"))?);
    let created_at = read_created_at(d, "result")?;
    let payload = Arc::new(Value::decode(d)?);
    Ok(ResultData {
        event_number,
        analysis,
        worker,
        created_at,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_parts_round_trip_and_frame_counts_are_checked() {
        let mut event = EventData::new(EventNumber(9));
        event.created_at = Some("2026-11-21T10:00:00.5Z".parse().unwrap());
        for (name, typ, frames) in [
            ("det", "STINS", vec!["a", "bb"]),
            ("pcap", "PCAP", vec![]),
            ("x", "RAW", vec!["c"]),
        ] {
            event.streams.insert(
                name.into(),
                StreamData {
                    typ: typ.into(),
                    frames: frames.into_iter().map(Bytes::from).collect(),
                },
            );
        }
        let message = |events: &[&EventData]| -> Vec<Bytes> {
            events
                .iter()
                .flat_map(|event| {
                    let header = Bytes::from(encode_part_header(3, event));
                    std::iter::once(header)
                        .chain(event.streams.values().flat_map(|s| s.frames.clone()))
                })
                .collect()
        };
        let empty = EventData::new(EventNumber(10));
        assert_eq!(
            decode_parts(message(&[&event, &empty])).unwrap(),
            [(3, event.clone()), (3, empty)],
            "two parts back to back in one message"
        );
        let mut short = message(&[&event]);
        short.pop();
        assert_eq!(
            decode_parts(short).unwrap_err().to_string(),
            "event part 9: header announces 1 frames of x, 0 arrived (at byte 0)"
        );
        let mut long = message(&[&event]);
        long.push(Bytes::from_static(b"stray"));
        assert!(decode_parts(long).is_err(), "a stray frame is not a header");
        assert!(decode_parts(vec![Bytes::from_static(b"garbage")]).is_err());
    }

    #[test]
    fn report_round_trip() {
        let result = ResultData {
            event_number: EventNumber(3),
            analysis: "stats".into(),
            worker: "w1".into(),
            created_at: None,
            payload: Arc::new(Value::from("x")),
        };
        for results in [vec![], vec![result.clone(), result]] {
            let report = EventReport {
                event_number: EventNumber(3),
                worker: "w1".into(),
                results,
                missing: vec!["pcap".into()],
            };
            assert_eq!(
                decode_report(&encode_report(4, &report)).unwrap(),
                (4, report)
            );
        }
        assert_eq!(
            decode_report(&[0xf6]).unwrap_err().to_string(),
            "report: expected tag 42882 (at byte 0)"
        );
    }

    #[test]
    fn result_round_trip() {
        let result = ResultData {
            event_number: EventNumber(42),
            analysis: "stats".into(),
            worker: "w1".into(),
            created_at: Some("2026-11-21T10:00:00.5Z".parse().unwrap()),
            payload: Arc::new(Value::from(vec![1.5, 2.5])),
        };
        assert_eq!(decode_result(&encode_result(&result)).unwrap(), result);
        let error = decode_result(&[0x01]).unwrap_err();
        assert_eq!(error.to_string(), "result: expected tag 42880 (at byte 0)");
    }
}
