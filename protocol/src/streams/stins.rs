//! STINS, MAX IV's detector stream (`typ = "STINS"`, dranspose's `stream1`).
//!
//! Per series: a header message `{"htype": "header", "msg_number": 0, ...}` (optionally followed
//! by a meta part), then per image a JSON part `{"htype": "image", "frame": i, "shape": [h, w],
//! "type": "uint16", "compression": "none" | "bslz4", "msg_number": k}` and the image buffer, then
//! `{"htype": "series_end", "msg_number": k}`. One message is one stream's frames in one event.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

use crate::array::{DType, NdArray, ShapeMismatch};
use crate::event::{EventData, StreamData};
use crate::ids::EventNumber;
use crate::streams::bslz4::{self, Bslz4Error};

/// The `typ` of STINS stream data.
pub const TYP: &str = "STINS";

/// A parsed STINS message.
#[derive(Debug, Clone, PartialEq)]
pub enum StinsMessage {
    /// Start of a series.
    Header {
        /// The source's message counter, 0 for a header.
        msg_number: Option<u64>,
        /// The JSON part as sent, for fields beyond the standard ones (parsed only on demand).
        json: Bytes,
    },
    /// One image.
    Image {
        /// The detector's frame index within the series.
        frame: u64,
        /// The source's message counter.
        msg_number: Option<u64>,
        /// The (decompressed) image.
        data: NdArray,
        /// The JSON part as sent, e.g. with `timestamps` (parsed only on demand).
        json: Bytes,
    },
    /// End of a series.
    End {
        /// The source's message counter.
        msg_number: Option<u64>,
    },
}

impl StinsMessage {
    /// The source's message counter, which ingesters validate for gaps.
    pub fn msg_number(&self) -> Option<u64> {
        match self {
            StinsMessage::Header { msg_number, .. }
            | StinsMessage::Image { msg_number, .. }
            | StinsMessage::End { msg_number } => *msg_number,
        }
    }
}

/// Why frames are not a valid STINS message.
#[derive(Debug, thiserror::Error)]
pub enum StinsError {
    /// The stream has no frames.
    #[error("STINS message has no frames")]
    NoFrames,
    /// The first frame is not a JSON object with the standard fields' types.
    #[error("STINS JSON part is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A field an image needs is missing.
    #[error("STINS {htype} message: missing field `{field}`")]
    Missing {
        /// The message's `htype`.
        htype: String,
        /// The missing field.
        field: &'static str,
    },
    /// `htype` is not header, image or series_end.
    #[error("STINS htype {0:?} is not header, image or series_end")]
    UnknownHtype(String),
    /// An image message without its buffer.
    #[error("STINS image {frame} has no data frame (message has {frames} frame)")]
    MissingBuffer {
        /// The image's frame index.
        frame: u64,
        /// Frames in the message.
        frames: usize,
    },
    /// A `type` that is not a numpy dtype name.
    #[error("STINS image {frame}: unknown type {dtype:?}")]
    UnknownDtype {
        /// The image's frame index.
        frame: u64,
        /// The type as sent.
        dtype: String,
    },
    /// A compression other than none and bslz4.
    #[error(
        "STINS image {frame}: unknown compression {compression:?} (none and bslz4 are supported)"
    )]
    UnknownCompression {
        /// The image's frame index.
        frame: u64,
        /// The compression as sent.
        compression: String,
    },
    /// The buffer does not match shape and type.
    #[error("STINS image {frame}: {error}")]
    Shape {
        /// The image's frame index.
        frame: u64,
        /// Expected and found lengths.
        error: ShapeMismatch,
    },
    /// The bslz4 buffer is corrupt.
    #[error("STINS image {frame}: {error}")]
    Bslz4 {
        /// The image's frame index.
        frame: u64,
        /// What the decompressor found.
        error: Bslz4Error,
    },
}

/// The standard fields, borrowed from the JSON part; everything else is left unparsed, because
/// this runs once per frame.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    htype: Cow<'a, str>,
    #[serde(default)]
    msg_number: Option<u64>,
    #[serde(default)]
    frame: Option<u64>,
    #[serde(default)]
    shape: Option<Vec<usize>>,
    #[serde(default, borrow, rename = "type")]
    dtype: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    compression: Option<Cow<'a, str>>,
}

/// What an ingester needs of a STINS message without decoding the image: its kind and the
/// source's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// The message's kind.
    pub kind: Kind,
    /// The source's message counter.
    pub msg_number: Option<u64>,
    /// The detector's frame index (images only).
    pub frame: Option<u64>,
}

/// The kind of a STINS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `header`.
    Header,
    /// `image`.
    Image,
    /// `series_end`.
    End,
}

/// Reads a message's kind and counters from its JSON part only.
pub fn peek(frames: &[Bytes]) -> Result<Peek, StinsError> {
    let json = frames.first().ok_or(StinsError::NoFrames)?;
    let fields: Fields<'_> = serde_json::from_slice(json)?;
    let kind = match fields.htype.as_ref() {
        "header" => Kind::Header,
        "image" => Kind::Image,
        "series_end" => Kind::End,
        other => return Err(StinsError::UnknownHtype(other.to_owned())),
    };
    Ok(Peek {
        kind,
        msg_number: fields.msg_number,
        frame: fields.frame,
    })
}

/// Parses one STINS message (one stream's frames of one event).
pub fn parse(stream: &StreamData) -> Result<StinsMessage, StinsError> {
    parse_frames(&stream.frames)
}

/// Parses the frames of one STINS message.
pub fn parse_frames(frames: &[Bytes]) -> Result<StinsMessage, StinsError> {
    let json = frames.first().ok_or(StinsError::NoFrames)?;
    let fields: Fields<'_> = serde_json::from_slice(json)?;
    let msg_number = fields.msg_number;
    match fields.htype.as_ref() {
        "header" => Ok(StinsMessage::Header {
            msg_number,
            json: json.clone(),
        }),
        "series_end" => Ok(StinsMessage::End { msg_number }),
        "image" => {
            let missing = |field| StinsError::Missing {
                htype: "image".to_owned(),
                field,
            };
            let frame = fields.frame.ok_or_else(|| missing("frame"))?;
            let shape = fields.shape.ok_or_else(|| missing("shape"))?;
            let dtype_name = fields.dtype.ok_or_else(|| missing("type"))?;
            let buffer = frames.get(1).ok_or(StinsError::MissingBuffer {
                frame,
                frames: frames.len(),
            })?;
            let dtype = DType::from_name(&dtype_name).ok_or_else(|| StinsError::UnknownDtype {
                frame,
                dtype: dtype_name.into_owned(),
            })?;
            let data = match fields.compression.as_deref() {
                None | Some("none") => buffer.clone(),
                Some("bslz4") => {
                    // The shape is the sender's: a product that overflows needs more bytes
                    // than any buffer has (as `NdArray::new` reckons).
                    let expected = shape
                        .iter()
                        .try_fold(dtype.size(), |bytes, &n| bytes.checked_mul(n))
                        .unwrap_or(usize::MAX);
                    bslz4::decompress(buffer, dtype.size(), Some(expected))
                        .map(Bytes::from)
                        .map_err(|error| StinsError::Bslz4 { frame, error })?
                }
                Some(other) => {
                    return Err(StinsError::UnknownCompression {
                        frame,
                        compression: other.to_owned(),
                    });
                }
            };
            let data = NdArray::new(shape, dtype, data)
                .map_err(|error| StinsError::Shape { frame, error })?;
            Ok(StinsMessage::Image {
                frame,
                msg_number,
                data,
                json: json.clone(),
            })
        }
        other => Err(StinsError::UnknownHtype(other.to_owned())),
    }
}

/// Builds the frames of a STINS image message (for simulators, tests and benches).
pub fn image_frames(frame: u64, msg_number: u64, data: &NdArray, compressed: bool) -> Vec<Bytes> {
    let compression = if compressed { "bslz4" } else { "none" };
    let header = serde_json::json!({
        "htype": "image",
        "frame": frame,
        "shape": data.shape(),
        "type": data.dtype().name(),
        "compression": compression,
        "msg_number": msg_number,
    });
    let buffer = if compressed {
        Bytes::from(bslz4::compress(data.data(), data.dtype().size()))
    } else {
        data.data().clone()
    };
    vec![Bytes::from(header.to_string()), buffer]
}

/// An event whose stream `stream` holds one STINS image message (for simulators, tests and
/// benches).
pub fn image_event(
    event_number: EventNumber,
    stream: &str,
    image: &NdArray,
    compressed: bool,
) -> EventData {
    let mut event = EventData::new(event_number);
    event.streams.insert(
        stream.into(),
        StreamData {
            typ: TYP.into(),
            frames: image_frames(event_number.0, event_number.0, image, compressed),
        },
    );
    event
}

/// Builds the frame of a STINS header message.
pub fn header_frames(msg_number: u64) -> Vec<Bytes> {
    let header = serde_json::json!({"htype": "header", "filename": "", "msg_number": msg_number});
    vec![Bytes::from(header.to_string())]
}

/// Builds the frame of a STINS series_end message.
pub fn end_frames(msg_number: u64) -> Vec<Bytes> {
    let end = serde_json::json!({"htype": "series_end", "msg_number": msg_number});
    vec![Bytes::from(end.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn parses_header_image_and_end() {
        assert!(matches!(
            parse_frames(&header_frames(0)).unwrap(),
            StinsMessage::Header {
                msg_number: Some(0),
                ..
            }
        ));
        let pixels: Vec<u8> = (0u16..6).flat_map(u16::to_le_bytes).collect();
        let array = NdArray::new(vec![2, 3], DType::Uint16, Bytes::from(pixels)).unwrap();
        for compressed in [false, true] {
            match parse_frames(&image_frames(4, 5, &array, compressed)).unwrap() {
                StinsMessage::Image {
                    frame,
                    msg_number,
                    data,
                    ..
                } => {
                    assert_eq!((frame, msg_number), (4, Some(5)));
                    assert_eq!(data, array);
                }
                other => panic!("not an image: {other:?}"),
            }
        }
        assert_eq!(
            parse_frames(&end_frames(7)).unwrap(),
            StinsMessage::End {
                msg_number: Some(7)
            }
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let cases: Vec<(Vec<Bytes>, &str)> = vec![
            (vec![], "STINS message has no frames"),
            (frames(&[b"not json"]), "STINS JSON part is not valid: expected ident at line 1 column 2"),
            (frames(&[br#"{"htype":"bogus"}"#]), r#"STINS htype "bogus" is not header, image or series_end"#),
            (frames(&[br#"{"htype":"image","frame":3,"shape":[2,2],"type":"uint16"}"#]), "STINS image 3 has no data frame (message has 1 frame)"),
            (frames(&[br#"{"htype":"image","frame":3,"shape":[2,2],"type":"uint16"}"#, b"123"]), "STINS image 3: shape [2, 2] of uint16 needs 8 bytes, found 3"),
            (frames(&[br#"{"htype":"image","frame":3,"shape":[2],"type":"complex"}"#, b"1234"]), r#"STINS image 3: unknown type "complex""#),
            (frames(&[br#"{"htype":"image","frame":3,"shape":[2],"type":"uint16","compression":"zstd"}"#, b"1234"]), r#"STINS image 3: unknown compression "zstd" (none and bslz4 are supported)"#),
            (frames(&[br#"{"htype":"image","frame":3,"shape":[2],"type":"uint16","compression":"bslz4"}"#, b"1234"]), "STINS image 3: bslz4 buffer of 4 bytes is shorter than its 12-byte header"),
            (frames(&[br#"{"htype":"image","shape":[2],"type":"uint16"}"#, b"1234"]), "STINS image message: missing field `frame`"),
            (frames(&[br#"{"htype":"image","frame":3,"shape":[1099511627776,1099511627776],"type":"uint16","compression":"bslz4"}"#, b"\0\0\0\0\0\0\0\x08\0\0\x20\0"]), "STINS image 3: bslz4 header: total of 8 bytes, but the shape needs 18446744073709551615"),
        ];
        for (frames, expected) in cases {
            assert_eq!(parse_frames(&frames).unwrap_err().to_string(), expected);
        }
    }
}
