//! Bluesky documents as bluesky's 0MQ `Publisher` sends them: one frame per document,
//! `prefix SP name SP payload`, the payload as the RunEngine side's `serializer=` wrote it.
//! JSON and msgpack (with msgpack-numpy's arrays) are read into a [`Value`] tree, arrays as
//! nested lists whatever the serializer; a pickle payload, bluesky's default, is refused with
//! the line a beamline profile adds instead: pickle from the network runs code.
//!
//! Between the ingester and the workers a document travels as a [`RunDocument`]: placed in its
//! run by the ingester, which has seen the run's start and descriptors (an event names only its
//! descriptor, and workers are stateless).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::{StreamData, Value};

/// The stream type of the documents the `bluesky` ingester forwards.
pub const TYP: &str = "bluesky";

/// The line that makes a RunEngine's documents readable here, for error messages and README.
pub const SERIALIZER_LINE: &str = "RE.subscribe(Publisher(\"HOST:5577\", serializer=msgpack_numpy.packb))  # import msgpack_numpy";

/// Nesting deeper than this is refused: a document is a few levels deep, and decoding
/// recurses.
const MAX_DEPTH: usize = 64;

/// The document kinds of the event model (event-model 1.24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocumentName {
    /// `start`: a run begins.
    Start,
    /// `descriptor`: a stream's data keys.
    Descriptor,
    /// `event`: one reading of a stream.
    Event,
    /// `event_page`: several events of one stream, column-wise.
    EventPage,
    /// `resource`: an external file (legacy).
    Resource,
    /// `datum`: a reference into a resource (legacy).
    Datum,
    /// `datum_page`: several datums, column-wise.
    DatumPage,
    /// `stream_resource`: an external dataset of one data key.
    StreamResource,
    /// `stream_datum`: which frames of a stream resource are which events.
    StreamDatum,
    /// `stop`: a run ends.
    Stop,
    /// `bmm`: a control message of NSLS-II BMM's plans (`{"linescan": "start", ...}`), not an
    /// event-model document; BMM sends it as `("bmm", dict)` beside the documents.
    Bmm,
}

impl DocumentName {
    /// Every kind, in the order a run sends them first.
    pub const ALL: [DocumentName; 11] = [
        DocumentName::Start,
        DocumentName::Descriptor,
        DocumentName::Event,
        DocumentName::EventPage,
        DocumentName::Resource,
        DocumentName::Datum,
        DocumentName::DatumPage,
        DocumentName::StreamResource,
        DocumentName::StreamDatum,
        DocumentName::Stop,
        DocumentName::Bmm,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentName::Start => "start",
            DocumentName::Descriptor => "descriptor",
            DocumentName::Event => "event",
            DocumentName::EventPage => "event_page",
            DocumentName::Resource => "resource",
            DocumentName::Datum => "datum",
            DocumentName::DatumPage => "datum_page",
            DocumentName::StreamResource => "stream_resource",
            DocumentName::StreamDatum => "stream_datum",
            DocumentName::Stop => "stop",
            DocumentName::Bmm => "bmm",
        }
    }

    /// The kind named `name` on the wire.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// How the payload was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serializer {
    /// `json.dumps(...).encode()`.
    Json,
    /// `msgpack.packb` or `msgpack_numpy.packb`.
    Msgpack,
}

/// One document off the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The publisher's prefix (empty by default).
    pub prefix: String,
    /// Its kind.
    pub name: DocumentName,
    /// How its payload was written.
    pub serializer: Serializer,
    /// The document.
    pub body: Value,
}

/// Why a frame is not a document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlueskyError {
    /// Not `prefix SP name SP payload`.
    #[error("not a bluesky 0MQ frame (prefix, space, name, space, payload): {0}")]
    Framing(&'static str),
    /// A name that is no document kind.
    #[error(
        "{0:?} is not a document name (start, descriptor, event, event_page, resource, datum, datum_page, stream_resource, stream_datum, stop, or BMM's bmm)"
    )]
    Name(String),
    /// The payload is a Python pickle, the Publisher's default.
    #[error(
        "a pickled document: bluesky's Publisher pickles by default, which cannot be read safely from the network; in the beamline profile publish with {SERIALIZER_LINE}"
    )]
    Pickle,
    /// JSON that does not parse.
    #[error("JSON: {0}")]
    Json(String),
    /// msgpack that does not parse.
    #[error("msgpack at byte {offset}: {reason}")]
    Msgpack {
        /// Where in the payload.
        offset: usize,
        /// What is wrong there.
        reason: String,
    },
    /// A document that is not a map.
    #[error("a {0} document is {1}, not a map")]
    NotAMap(&'static str, &'static str),
    /// A forwarded document that is not a [`RunDocument`].
    #[error("not a forwarded document: {0}")]
    Forwarded(String),
}

/// A document placed in its run, as the `bluesky` ingester forwards it: one CBOR frame of
/// `{name, run, stream, doc}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDocument {
    /// Its kind.
    pub name: DocumentName,
    /// The run's start uid; `None` for a `bmm` control message, which belongs to no run.
    pub run: Option<String>,
    /// The stream (`primary`, `baseline`, ...) of a descriptor, event or stream datum.
    pub stream: Option<String>,
    /// The document; an event page arrives as its events, one each.
    pub doc: Value,
}

impl RunDocument {
    /// As a stream of an event.
    pub fn stream_data(&self) -> StreamData {
        let text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Text);
        let envelope = Value::Map(BTreeMap::from([
            (
                "name".to_owned(),
                Value::Text(self.name.as_str().to_owned()),
            ),
            ("run".to_owned(), text(&self.run)),
            ("stream".to_owned(), text(&self.stream)),
            ("doc".to_owned(), self.doc.clone()),
        ]));
        StreamData {
            typ: TYP.into(),
            frames: vec![Bytes::from(envelope.to_cbor())],
        }
    }

    /// Reads one back.
    pub fn parse(stream: &StreamData) -> Result<Self, BlueskyError> {
        let bad = |message: &str| BlueskyError::Forwarded(message.to_owned());
        if stream.typ.as_str() != TYP {
            return Err(BlueskyError::Forwarded(format!(
                "a {} stream, not {TYP}",
                stream.typ
            )));
        }
        let [frame] = stream.frames.as_slice() else {
            return Err(BlueskyError::Forwarded(format!(
                "{} frames, not one",
                stream.frames.len()
            )));
        };
        let Value::Map(mut envelope) =
            Value::from_cbor(frame).map_err(|error| BlueskyError::Forwarded(error.to_string()))?
        else {
            return Err(bad("the envelope is not a map"));
        };
        let mut text = |key: &str| match envelope.remove(key) {
            Some(Value::Text(text)) => Ok(Some(text)),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(BlueskyError::Forwarded(format!("{key} is not text"))),
        };
        let name = text("name")?.ok_or_else(|| bad("no name"))?;
        let name = DocumentName::parse(&name).ok_or(BlueskyError::Name(name))?;
        let run = text("run")?;
        let stream = text("stream")?;
        let doc = envelope.remove("doc").ok_or_else(|| bad("no doc"))?;
        if !matches!(doc, Value::Map(_)) {
            return Err(BlueskyError::NotAMap(name.as_str(), doc.kind()));
        }
        Ok(Self {
            name,
            run,
            stream,
            doc,
        })
    }
}

/// Reads one frame.
pub fn parse(frame: &[u8]) -> Result<Document, BlueskyError> {
    let (prefix, rest) = split_space(frame).ok_or(BlueskyError::Framing("no space"))?;
    let (name, payload) = split_space(rest).ok_or(BlueskyError::Framing("one space only"))?;
    let prefix = std::str::from_utf8(prefix)
        .map_err(|_| BlueskyError::Framing("the prefix is not UTF-8"))?
        .to_owned();
    let name =
        std::str::from_utf8(name).map_err(|_| BlueskyError::Framing("the name is not UTF-8"))?;
    let name = DocumentName::parse(name).ok_or_else(|| BlueskyError::Name(name.to_owned()))?;
    let (serializer, body) = match payload.first() {
        // A pickle starts with PROTO (0x80) and its protocol (2 to 5); a msgpack map of no
        // entries is 0x80 alone, and no document is empty.
        Some(0x80) if payload.get(1).is_some_and(|p| (2..=5).contains(p)) => {
            return Err(BlueskyError::Pickle);
        }
        Some(b'{' | b'[') => (Serializer::Json, json(payload)?),
        _ => (Serializer::Msgpack, msgpack(payload)?),
    };
    if !matches!(body, Value::Map(_)) {
        return Err(BlueskyError::NotAMap(name.as_str(), body.kind()));
    }
    Ok(Document {
        prefix,
        name,
        serializer,
        body,
    })
}

/// Reads one Kafka message value as bluesky-kafka's Publisher writes it: msgpack (with
/// msgpack-numpy's arrays) of `[name, doc]`; BMM's control topic carries `["bmm", {...}]` the
/// same way. The prefix is empty.
pub fn parse_kafka(value: &[u8]) -> Result<Document, BlueskyError> {
    if value.first() == Some(&0x80) && value.get(1).is_some_and(|p| (2..=5).contains(p)) {
        return Err(BlueskyError::Pickle);
    }
    let Value::Array(pair) = msgpack(value)? else {
        return Err(BlueskyError::Framing(
            "a Kafka value that is not a [name, doc] pair",
        ));
    };
    let Ok([Value::Text(name), body]) = <[Value; 2]>::try_from(pair) else {
        return Err(BlueskyError::Framing(
            "a Kafka value that is not a [name, doc] pair",
        ));
    };
    let name = DocumentName::parse(&name).ok_or(BlueskyError::Name(name))?;
    if !matches!(body, Value::Map(_)) {
        return Err(BlueskyError::NotAMap(name.as_str(), body.kind()));
    }
    Ok(Document {
        prefix: String::new(),
        name,
        serializer: Serializer::Msgpack,
        body,
    })
}

fn split_space(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b' ')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn json(payload: &[u8]) -> Result<Value, BlueskyError> {
    // serde_json's float_roundtrip: every float as Python wrote it, to the last bit (PeakStats
    // is compared bit for bit).
    let tree: serde_json::Value =
        serde_json::from_slice(payload).map_err(|error| BlueskyError::Json(error.to_string()))?;
    Value::from_serialize(&tree).map_err(|error| BlueskyError::Json(error.to_string()))
}

/// A whole msgpack payload as a tree; msgpack-numpy's arrays become nested lists.
fn msgpack(payload: &[u8]) -> Result<Value, BlueskyError> {
    let mut reader = Msgpack {
        bytes: payload,
        at: 0,
    };
    let value = reader.value(0)?;
    if reader.at != payload.len() {
        return Err(reader.error("trailing bytes after the document"));
    }
    Ok(value)
}

/// A msgpack reader that never reserves more than the bytes left can fill.
struct Msgpack<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Msgpack<'a> {
    fn error(&self, reason: impl Into<String>) -> BlueskyError {
        BlueskyError::Msgpack {
            offset: self.at,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BlueskyError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                self.error(format!(
                    "{n} bytes announced, {} left",
                    self.bytes.len() - self.at
                ))
            })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn uint(&mut self, n: usize) -> Result<u64, BlueskyError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0, |v, &b| (v << 8) | u64::from(b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, BlueskyError> {
        let len = self.uint(n)?;
        usize::try_from(len).map_err(|_| self.error(format!("a length of {len}")))
    }

    fn value(&mut self, depth: usize) -> Result<Value, BlueskyError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH}")));
        }
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Value::Int(i64::from(marker)),
            0xe0..=0xff => Value::Int(i64::from(marker as i8)),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(marker & 0x0f), depth)?,
            0xa0..=0xbf => self.text(usize::from(marker & 0x1f))?,
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                Value::Bytes(bytes::Bytes::copy_from_slice(self.take(n)?))
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                self.take(1 + n)?;
                return Err(self.error("an extension type"));
            }
            0xca => Value::Float(f64::from(f32::from_bits(self.uint(4)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.uint(8)?)),
            0xcc..=0xcf => {
                let v = self.uint(1 << (marker - 0xcc))?;
                i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
            }
            0xd0..=0xd3 => {
                let n = 1 << (marker - 0xd0);
                let v = self.uint(n)?;
                // Sign-extend from n bytes.
                let shift = 64 - 8 * n as u32;
                Value::Int(((v << shift) as i64) >> shift)
            }
            0xd4..=0xd8 => return Err(self.error("an extension type")),
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                self.text(n)?
            }
            0xdc | 0xdd => {
                let n = self.len(if marker == 0xdc { 2 } else { 4 })?;
                self.array(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.len(if marker == 0xde { 2 } else { 4 })?;
                self.map(n, depth)?
            }
            0xc1 => return Err(self.error("the unused marker 0xc1")),
        })
    }

    fn text(&mut self, n: usize) -> Result<Value, BlueskyError> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(|text| Value::Text(text.to_owned()))
            .map_err(|_| self.error("a string that is not UTF-8"))
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value, BlueskyError> {
        // Nothing reserved on the length's word: nested arrays each claiming the rest of the
        // input would reserve it once per level (the fuzz target found it); items grow the list
        // as they arrive, each at least a byte.
        let mut items = Vec::new();
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, BlueskyError> {
        let mut entries = BTreeMap::new();
        for _ in 0..n {
            let key = match self.value(depth + 1)? {
                Value::Text(text) => text,
                // msgpack-numpy's keys are bytes (b"nd", b"type", ...).
                Value::Bytes(bytes) => String::from_utf8(bytes.to_vec())
                    .map_err(|_| self.error("a map key that is not UTF-8"))?,
                Value::Int(i) => i.to_string(),
                other => return Err(self.error(format!("a map key that is {}", other.kind()))),
            };
            let value = self.value(depth + 1)?;
            entries.insert(key, value);
        }
        if entries
            .get("nd")
            .is_some_and(|nd| matches!(nd, Value::Bool(_)))
        {
            return numpy(&entries).map_err(|reason| self.error(reason));
        }
        Ok(Value::Map(entries))
    }
}

/// A msgpack-numpy map (`nd`, `type`, `shape`, `data`) as nested lists, or a scalar.
fn numpy(entries: &BTreeMap<String, Value>) -> Result<Value, String> {
    let Some(Value::Text(dtype)) = entries.get("type") else {
        return Err("a numpy value without its type".to_owned());
    };
    let Some(Value::Bytes(data)) = entries.get("data") else {
        return Err("a numpy value without its data".to_owned());
    };
    let (size, read): (usize, fn(&[u8]) -> Value) = match dtype.as_str() {
        "<f8" => (8, |b| {
            Value::Float(f64::from_le_bytes(b.try_into().unwrap_or_default()))
        }),
        "<f4" => (4, |b| {
            Value::Float(f64::from(f32::from_le_bytes(
                b.try_into().unwrap_or_default(),
            )))
        }),
        "<i8" => (8, |b| {
            Value::Int(i64::from_le_bytes(b.try_into().unwrap_or_default()))
        }),
        "<i4" => (4, |b| {
            Value::Int(i64::from(i32::from_le_bytes(
                b.try_into().unwrap_or_default(),
            )))
        }),
        "<i2" => (2, |b| {
            Value::Int(i64::from(i16::from_le_bytes(
                b.try_into().unwrap_or_default(),
            )))
        }),
        "|i1" => (1, |b| Value::Int(i64::from(b[0] as i8))),
        "<u8" => (8, |b| {
            let v = u64::from_le_bytes(b.try_into().unwrap_or_default());
            i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
        }),
        "<u4" => (4, |b| {
            Value::Int(i64::from(u32::from_le_bytes(
                b.try_into().unwrap_or_default(),
            )))
        }),
        "<u2" => (2, |b| {
            Value::Int(i64::from(u16::from_le_bytes(
                b.try_into().unwrap_or_default(),
            )))
        }),
        "|u1" => (1, |b| Value::Int(i64::from(b[0]))),
        "|b1" => (1, |b| Value::Bool(b[0] != 0)),
        other => {
            return Err(format!(
                "the numpy type {other:?} (numbers and booleans only)"
            ));
        }
    };
    if data.len() % size != 0 {
        return Err(format!("{} bytes of {dtype} data", data.len()));
    }
    let flat: Vec<Value> = data.chunks_exact(size).map(read).collect();
    if entries.get("nd") == Some(&Value::Bool(false)) {
        return match <[Value; 1]>::try_from(flat) {
            Ok([scalar]) => Ok(scalar),
            Err(flat) => Err(format!("a numpy scalar of {} values", flat.len())),
        };
    }
    let shape: Vec<usize> = match entries.get("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| match d {
                Value::Int(n) => usize::try_from(*n).map_err(|_| format!("a dimension of {n}")),
                other => Err(format!("a dimension that is {}", other.kind())),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("a numpy array without its shape".to_owned()),
    };
    if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(flat.len()) {
        return Err(format!("shape {shape:?} for {} values", flat.len()));
    }
    Ok(nest(&mut flat.into_iter(), &shape))
}

/// Row-major values as nested lists of `shape`.
fn nest(values: &mut impl Iterator<Item = Value>, shape: &[usize]) -> Value {
    match shape {
        [] => values.next().unwrap_or_default(),
        [n, rest @ ..] => Value::Array((0..*n).map(|_| nest(values, rest)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_prefix_name_and_payload() {
        let document = parse(b" event {\"seq_num\": 1, \"data\": {\"det\": 0.1}}").unwrap();
        assert_eq!(
            (document.prefix.as_str(), document.name, document.serializer),
            ("", DocumentName::Event, Serializer::Json)
        );
        assert_eq!(document.body.pointer("seq_num"), Some(&Value::Int(1)));
        assert_eq!(
            parse(b"mp stop \x81\xa3uid\xa1a").unwrap().prefix,
            "mp".to_owned()
        );
        assert_eq!(parse(b"event{}"), Err(BlueskyError::Framing("no space")));
        assert_eq!(
            parse(b" event"),
            Err(BlueskyError::Framing("one space only"))
        );
        assert!(matches!(
            parse(b" bulk_events {}"),
            Err(BlueskyError::Name(_))
        ));
        assert!(matches!(
            parse(b" start [1]"),
            Err(BlueskyError::NotAMap("start", _))
        ));
    }

    #[test]
    fn a_pickle_is_refused_with_the_line_to_add() {
        let error = parse(b" start \x80\x04\x95\x10\x00").unwrap_err();
        assert_eq!(error, BlueskyError::Pickle);
        assert!(error.to_string().contains("msgpack_numpy.packb"), "{error}");
    }

    #[test]
    fn json_floats_keep_their_last_bit() {
        // PeakStats' fwhm on bluesky's 20-point reference scan: one ulp off without
        // correctly rounded parsing.
        let document =
            parse(b" event {\"x\": 2.4213457417759847, \"y\": 3.726653172078671e-06}").unwrap();
        assert_eq!(
            document.body.pointer("x"),
            Some(&Value::Float(2.4213457417759847))
        );
        assert_eq!(
            document.body.pointer("y"),
            Some(&Value::Float(3.726653172078671e-06))
        );
    }

    #[test]
    fn msgpack_numpy_arrays_become_nested_lists_and_scalars_numbers() {
        // {"data": {"img": <2×3 <u2>, "n": <np.int64 7>}}, keys of the numpy maps as bin.
        let mut frame = b" event \x81\xa4data\x82\xa3img\x85".to_vec();
        frame.extend(b"\xc4\x02nd\xc3\xc4\x04type\xa3<u2\xc4\x04kind\xc4\x00");
        frame.extend(b"\xc4\x05shape\x92\x02\x03\xc4\x04data\xc4\x0c");
        for v in [1u16, 2, 3, 4, 5, 600] {
            frame.extend(v.to_le_bytes());
        }
        frame.extend(
            b"\xa1n\x84\xc4\x02nd\xc2\xc4\x04type\xa3<i8\xc4\x04kind\xc4\x00\xc4\x04data\xc4\x08",
        );
        frame.extend(7i64.to_le_bytes());
        let document = parse(&frame).unwrap();
        assert_eq!(document.serializer, Serializer::Msgpack);
        let json = serde_json::to_value(&document.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"data": {"img": [[1, 2, 3], [4, 5, 600]], "n": 7}})
        );
    }

    #[test]
    fn msgpack_lengths_are_bounded_by_what_arrived() {
        // An array32 claiming 4 billion items, then nothing: refused, nothing reserved.
        let error = parse(b" event \xdd\xff\xff\xff\xff").unwrap_err();
        assert!(matches!(error, BlueskyError::Msgpack { .. }), "{error}");
        let error = parse(b" event \xdb\xff\xff\xff\xffab").unwrap_err();
        assert!(error.to_string().contains("bytes announced"), "{error}");
        let deep = [b" event ".to_vec(), vec![0x91; 100], vec![0xc0]].concat();
        assert!(
            parse(&deep)
                .unwrap_err()
                .to_string()
                .contains("nested deeper")
        );
        let error = parse(b" event \x81\xa1a\x01\x02").unwrap_err();
        assert!(error.to_string().contains("trailing"), "{error}");
    }

    #[test]
    fn a_run_document_travels_as_one_frame_and_comes_back_equal() {
        let document =
            parse(b" event {\"seq_num\": 3, \"data\": {\"det\": 0.25, \"n\": 2}}").unwrap();
        let forwarded = RunDocument {
            name: document.name,
            run: Some("run-uid".to_owned()),
            stream: Some("primary".to_owned()),
            doc: document.body,
        };
        let stream = forwarded.stream_data();
        assert_eq!(stream.frames.len(), 1);
        assert_eq!(RunDocument::parse(&stream).unwrap(), forwarded);
        let control = RunDocument {
            name: DocumentName::Bmm,
            run: None,
            stream: None,
            doc: parse(b" bmm {\"linescan\": \"start\"}").unwrap().body,
        };
        assert_eq!(RunDocument::parse(&control.stream_data()).unwrap(), control);
        let mut wrong = stream.clone();
        wrong.frames.push(Bytes::new());
        assert!(
            RunDocument::parse(&wrong)
                .unwrap_err()
                .to_string()
                .contains("2 frames")
        );
        wrong.frames = vec![Bytes::from_static(b"\x01")];
        assert!(matches!(
            RunDocument::parse(&wrong),
            Err(BlueskyError::Forwarded(_))
        ));
    }

    #[test]
    fn a_kafka_value_is_a_name_and_a_document() {
        // msgpack of ["stop", {"exit_status": "success"}], as bluesky-kafka's Publisher packs it.
        let value = b"\x92\xa4stop\x81\xabexit_status\xa7success";
        let document = parse_kafka(value).unwrap();
        assert_eq!(document.name, DocumentName::Stop);
        assert_eq!(
            document.body.pointer("exit_status"),
            Some(&Value::Text("success".into()))
        );
        assert!(matches!(
            parse_kafka(b"\x91\xa4stop"),
            Err(BlueskyError::Framing(_))
        ));
        assert!(matches!(
            parse_kafka(b"\x92\xa4stop\x01"),
            Err(BlueskyError::NotAMap("stop", _))
        ));
        assert_eq!(parse_kafka(b"\x80\x04K."), Err(BlueskyError::Pickle));
    }
}
