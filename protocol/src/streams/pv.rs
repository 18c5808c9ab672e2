//! Process-variable frames (stream `typ` [`TYP`]): one EPICS value as the `epics_ca` ingester
//! read it, with its alarm and its own CA time stamp. Two frames, like STINS: a CBOR header
//! (PV name, dtype, shape, alarm status and severity, time stamp), then the values'
//! little-endian bytes, so images travel and are recorded without conversion.

use bytes::Bytes;
use minicbor::{Decode, Encode};

use crate::array::{DType, NdArray, ShapeMismatch};
use crate::event::StreamData;

/// The `typ` of PV streams.
pub const TYP: &str = "EPICS_PV";

/// Seconds from the Unix epoch to the EPICS epoch (1990-01-01 UTC).
pub const EPICS_EPOCH_UNIX: i64 = 631_152_000;

/// Low bits of a CA time stamp's nanoseconds that carry LCLS's pulse id.
pub const PULSE_ID_MASK: u32 = 0x1FFFF;

/// The pulse id of a time stamp without beam.
pub const PULSE_ID_INVALID: u32 = 0x1FFFF;

/// LCLS's beam-synchronous pulse id in a time stamp's nanoseconds, when it carries one.
pub fn pulse_id(nanos: u32) -> Option<u32> {
    let id = nanos & PULSE_ID_MASK;
    (id != PULSE_ID_INVALID).then_some(id)
}

/// One PV value.
#[derive(Debug, Clone, PartialEq)]
pub struct PvFrame {
    /// The PV's name.
    pub pv: String,
    /// EPICS alarm status (0: none).
    pub status: u16,
    /// EPICS alarm severity (0 none, 1 minor, 2 major, 3 invalid).
    pub severity: u16,
    /// CA time stamp: seconds past the EPICS epoch.
    pub secs: u32,
    /// CA time stamp: nanoseconds (at LCLS the low 17 bits are the pulse id).
    pub nanos: u32,
    /// The value: shape `[]` for a scalar, `[n]` for a waveform, `[height, width]` for an image.
    pub value: NdArray,
}

#[derive(Debug, Encode, Decode)]
#[cbor(map)]
struct Header {
    #[n(0)]
    pv: String,
    #[n(1)]
    dtype: String,
    #[n(2)]
    shape: Vec<u64>,
    #[n(3)]
    status: u16,
    #[n(4)]
    severity: u16,
    #[n(5)]
    secs: u32,
    #[n(6)]
    nanos: u32,
}

/// A PV stream that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PvError {
    /// Not `[header, values]`.
    #[error("a PV frame is [header, values], got {0} frames")]
    Frames(usize),
    /// The header is not a PV header.
    #[error("PV header: {0}")]
    Header(String),
    /// An unknown dtype.
    #[error("PV {pv}: unknown dtype {dtype:?}")]
    DType {
        /// The PV.
        pv: String,
        /// The dtype named.
        dtype: String,
    },
    /// Values that do not fill the shape.
    #[error("PV {pv}: {error}")]
    Shape {
        /// The PV.
        pv: String,
        /// What is wrong.
        error: ShapeMismatch,
    },
}

/// An EPICS time stamp (seconds past 1990-01-01 UTC, nanoseconds) as a Unix-epoch timestamp.
pub fn epics_timestamp(secs: u32, nanos: u32) -> jiff::Timestamp {
    jiff::Timestamp::new(
        i64::from(secs) + EPICS_EPOCH_UNIX,
        nanos.min(999_999_999) as i32,
    )
    .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

impl PvFrame {
    /// The time stamp as a Unix-epoch timestamp.
    pub fn timestamp(&self) -> jiff::Timestamp {
        epics_timestamp(self.secs, self.nanos)
    }

    /// The stream frames: `[header, values]`.
    pub fn frames(&self) -> Vec<Bytes> {
        let header = Header {
            pv: self.pv.clone(),
            dtype: self.value.dtype().name().to_owned(),
            shape: self.value.shape().iter().map(|&n| n as u64).collect(),
            status: self.status,
            severity: self.severity,
            secs: self.secs,
            nanos: self.nanos,
        };
        // Encoding into a Vec cannot fail.
        let encoded = minicbor::to_vec(&header).unwrap_or_default();
        vec![Bytes::from(encoded), self.value.data().clone()]
    }

    /// The stream data of this value.
    pub fn stream(&self) -> StreamData {
        StreamData {
            typ: TYP.into(),
            frames: self.frames(),
        }
    }

    /// Reads a PV stream's frames.
    pub fn parse(frames: &[Bytes]) -> Result<Self, PvError> {
        let [header, data] = frames else {
            return Err(PvError::Frames(frames.len()));
        };
        let header: Header =
            minicbor::decode(header).map_err(|e| PvError::Header(e.to_string()))?;
        let dtype = DType::from_name(&header.dtype).ok_or_else(|| PvError::DType {
            pv: header.pv.clone(),
            dtype: header.dtype.clone(),
        })?;
        let shape = header.shape.iter().map(|&n| n as usize).collect();
        let value = NdArray::new(shape, dtype, data.clone()).map_err(|error| PvError::Shape {
            pv: header.pv.clone(),
            error,
        })?;
        Ok(Self {
            pv: header.pv,
            status: header.status,
            severity: header.severity,
            secs: header.secs,
            nanos: header.nanos,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> PvFrame {
        let pixels: Vec<u8> = [1u16, 2, 65535, 4, 5, 6]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        PvFrame {
            pv: "OTRS:IN20:571:Image:ArrayData".into(),
            status: 0,
            severity: 0,
            secs: 1_000_000_000,
            nanos: 123_456_789,
            value: NdArray::new(vec![2, 3], DType::Uint16, Bytes::from(pixels)).unwrap(),
        }
    }

    #[test]
    fn a_pv_frame_round_trips() {
        let frame = image();
        assert_eq!(PvFrame::parse(&frame.frames()).unwrap(), frame);
        assert_eq!(frame.stream().typ.as_str(), TYP);
        assert_eq!(
            frame.timestamp().to_string(),
            "2021-09-09T01:46:40.123456789Z",
            "EPICS seconds 1e9 are 2021-09-09 (Unix 1,631,152,000)"
        );
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let frame = image();
        let mut frames = frame.frames();
        assert_eq!(
            PvFrame::parse(&frames[..1]).unwrap_err(),
            PvError::Frames(1)
        );
        frames[1] = frames[1].slice(..4);
        assert!(matches!(
            PvFrame::parse(&frames),
            Err(PvError::Shape { .. })
        ));
        frames[0] = Bytes::from_static(b"\xff");
        assert!(matches!(PvFrame::parse(&frames), Err(PvError::Header(_))));
    }
}
