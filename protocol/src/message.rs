//! The CBOR encoding of what beamflow sends itself (no pickle anywhere): results on their way
//! from workers to the reducer. Events use the dump record layout (`dump::encode_record`).

use std::sync::Arc;

use jiff::Timestamp;
use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};

use crate::error::CborError;
use crate::event::ResultData;
use crate::ids::{AnalysisName, EventNumber, WorkerName};
use crate::value::Value;

/// Tag of a result: `[event_number, analysis, worker, created_at | null, payload]`. Next to
/// dranspose's 42877/42878 and unassigned by IANA.
pub const RESULT_TAG: u64 = 42880;

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
    match result.created_at {
        Some(t) => e.tag(Tag::new(0))?.str(&format!("{t:.6}"))?,
        None => e.null()?,
    };
    result.payload.encode(e)
}

/// Decodes a result; the error says which field was wrong and where.
pub fn decode_result(bytes: &[u8]) -> Result<ResultData, CborError> {
    let mut d = Decoder::new(bytes);
    let fail = |d: &Decoder<'_>, what: &str| {
        CborError::new(d.position(), format!("result: expected {what}"))
    };
    match d.tag() {
        Ok(tag) if tag.as_u64() == RESULT_TAG => {}
        _ => {
            return Err(CborError::new(
                0,
                format!("result: expected tag {RESULT_TAG}"),
            ));
        }
    }
    if !matches!(d.array(), Ok(Some(5))) {
        return Err(fail(&d, "an array of 5 items"));
    }
    let event_number = EventNumber(d.u64().map_err(|_| fail(&d, "an event number"))?);
    let analysis = AnalysisName::from(d.str().map_err(|_| fail(&d, "an analysis name"))?);
    let worker = WorkerName::from(d.str().map_err(|_| fail(&d, "a worker name"))?);
    let created_at = if d.datatype().map_err(|_| fail(&d, "created_at"))? == Type::Null {
        let _ = d.skip();
        None
    } else {
        let _ = d.tag().map_err(|_| fail(&d, "created_at tag 0"))?;
        let text = d.str().map_err(|_| fail(&d, "created_at text"))?;
        Some(
            text.parse::<Timestamp>()
                .map_err(|e| fail(&d, &format!("RFC 3339 created_at: {e}")))?,
        )
    };
    let payload = Arc::new(Value::decode(&mut d)?);
    if d.position() != bytes.len() {
        return Err(CborError::new(d.position(), "result: trailing bytes"));
    }
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
