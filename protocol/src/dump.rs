//! `.cbors` dumps, the ingesters' recording format, byte-compatible with dranspose 0.2.0.
//!
//! A dump is an RFC 8742 CBOR sequence with one item per event:
//!
//! ```text
//! tag 55799 ( tag 42877 ( [ event_number,
//!                           { stream: tag 42878 ( [ typ, [ frame bytes, ... ] ] ) },
//!                           created_at ] ) )          ; created_at: tag 0 RFC 3339 text, optional
//! ```
//!
//! [`DumpReader`] streams records from any reader: it reads exactly one record at a time (the
//! record's length is measured before it is decoded, see `scan.rs`), so memory is bounded by the
//! largest record, not the file. Frames are slices of the record's buffer: no byte is copied after
//! the read itself. A record whose CBOR is valid but whose content is not an event is reported and
//! skipped; bytes that are not CBOR at all end the file, since no later record boundary can be
//! trusted. A stream whose first bytes are not the self-describe tag is not a dump at all (a text
//! file, an HDF5 file) and is refused as a whole, rather than read as one long bad record.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jiff::Timestamp;
use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};

use crate::event::{EventData, StreamData};
use crate::ids::{EventNumber, StreamName, StreamType};
use crate::scan::{Scan, item_len};

/// RFC 8949 "self-described CBOR" tag that opens every record.
pub const SELF_DESCRIBE_TAG: u64 = 55799;
/// [`SELF_DESCRIBE_TAG`] as encoded: the first three bytes of every dump.
pub const SELF_DESCRIBE_BYTES: [u8; 3] = [0xd9, 0xd9, 0xf7];
/// dranspose's tag for an `InternalWorkerMessage` (event number, streams, created_at).
pub const EVENT_TAG: u64 = 42877;
/// dranspose's tag for a `StreamData` (typ, frames).
pub const STREAM_TAG: u64 = 42878;
/// RFC 8949 tag for an RFC 3339 date/time string.
const DATETIME_TAG: u64 = 0;
/// RFC 8949 tag for seconds since the epoch.
const EPOCH_TAG: u64 = 1;

/// Records larger than this are refused, so that a corrupt length cannot make the reader
/// allocate without bound.
pub const MAX_RECORD_BYTES: usize = 1 << 30;
/// How much the reader asks the source for at a time when records are small.
const READ_CHUNK: usize = 64 * 1024;
/// A record's length is only a claim until its bytes arrive: buffers grow by at most this much
/// (or fourfold) per read, so a corrupt length cannot make the reader allocate a gigabyte.
const GROWTH: usize = 16 << 20;

/// What went wrong reading a dump, with the record's index and byte offset in the stream.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The stream does not start with [`SELF_DESCRIBE_BYTES`]: it is not a dump.
    #[error(
        "not a .cbors dump (it does not start with the CBOR self-describe tag d9 d9 f7 but with {})",
        hex(found)
    )]
    NotADump {
        /// The stream's first bytes (at most three).
        found: Vec<u8>,
    },
    /// The source could not be read.
    #[error("record {record} at byte {offset}: read failed: {error}")]
    Io {
        /// Index of the record being read (0-based).
        record: u64,
        /// Byte offset of the record in the (uncompressed) stream.
        offset: u64,
        /// The I/O error.
        error: io::Error,
    },
    /// The stream ends inside a record.
    #[error(
        "record {record} at byte {offset}: truncated: the file ends after {available} of at least {needed} bytes"
    )]
    Truncated {
        /// Index of the record.
        record: u64,
        /// Byte offset of the record.
        offset: u64,
        /// Bytes present.
        available: usize,
        /// Bytes the record's CBOR heads promise.
        needed: usize,
    },
    /// The bytes are not CBOR; nothing after them can be read.
    #[error("record {record} at byte {offset}: not CBOR: {message} at byte {at} of the record")]
    Malformed {
        /// Index of the record.
        record: u64,
        /// Byte offset of the record.
        offset: u64,
        /// Offset of the bad byte within the record.
        at: usize,
        /// What was wrong.
        message: &'static str,
    },
    /// A record larger than [`MAX_RECORD_BYTES`].
    #[error(
        "record {record} at byte {offset}: claims {len} bytes, more than the {MAX_RECORD_BYTES} allowed"
    )]
    TooLarge {
        /// Index of the record.
        record: u64,
        /// Byte offset of the record.
        offset: u64,
        /// Claimed length.
        len: usize,
    },
    /// Valid CBOR that is not an event record; the reader continues with the next record.
    #[error("record {record} at byte {offset}: {message}")]
    BadRecord {
        /// Index of the record.
        record: u64,
        /// Byte offset of the record.
        offset: u64,
        /// Expected versus found, with the event number when it was already read.
        message: String,
    },
}

impl DumpError {
    /// Whether the reader can go on to the next record after this error.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, DumpError::BadRecord { .. })
    }
}

/// `d9 d9 f7`: bytes as an operator compares them with `xxd` output.
fn hex(bytes: &[u8]) -> String {
    let pairs: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    pairs.join(" ")
}

/// Read buffers come back here once every frame sliced from them is dropped, so a long replay
/// reuses memory the kernel has already mapped instead of faulting in fresh pages for every
/// record (measured here: copying into fresh 4 MiB buffers ran at 1.3-2 GB/s, into reused ones
/// at over 10 GB/s).
#[derive(Default)]
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// The largest buffer handed out, for tests of what a hostile length costs.
    #[cfg(test)]
    largest: std::sync::atomic::AtomicUsize,
}

/// Most bytes of idle buffers the pool keeps; beyond it buffers go back to the allocator.
const POOL_BYTES: usize = 256 << 20;

impl BufferPool {
    /// A buffer of at least `len` initialized bytes. Buffers stay initialized while pooled, so
    /// only memory never used before is zeroed.
    fn take(&self, len: usize) -> Vec<u8> {
        #[cfg(test)]
        self.largest
            .fetch_max(len, std::sync::atomic::Ordering::Relaxed);
        // The smallest that fits, so that a small read does not take a large record's buffer.
        let reused = self.free.lock().ok().and_then(|mut free| {
            let (index, _) = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len)
                .min_by_key(|(_, b)| b.len())?;
            Some(free.swap_remove(index))
        });
        let mut buffer = reused.unwrap_or_default();
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        buffer
    }

    fn give(&self, buffer: Vec<u8>) {
        if let Ok(mut free) = self.free.lock() {
            let kept: usize = free.iter().map(Vec::len).sum();
            if kept + buffer.len() <= POOL_BYTES {
                free.push(buffer);
            }
        }
    }
}

/// A pooled buffer as the owner of a `Bytes`: returned to its pool when the last slice drops.
struct Pooled {
    data: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

/// The stream names and types seen so far: every record repeats them, and sharing one `Arc`
/// per name saves two allocations per stream and record.
#[derive(Default)]
struct Names {
    streams: Vec<StreamName>,
    types: Vec<StreamType>,
}

impl Names {
    fn stream(&mut self, name: &str) -> StreamName {
        intern(&mut self.streams, name)
    }

    fn typ(&mut self, name: &str) -> StreamType {
        intern(&mut self.types, name)
    }
}

fn intern<T: Clone + std::borrow::Borrow<str> + for<'a> From<&'a str>>(
    seen: &mut Vec<T>,
    name: &str,
) -> T {
    if let Some(known) = seen.iter().find(|known| (*known).borrow() == name) {
        return known.clone();
    }
    let new = T::from(name);
    // A hostile file could name a new stream in every record; stop remembering after a few.
    if seen.len() < 64 {
        seen.push(new.clone());
    }
    new
}

/// Reads events from a `.cbors` stream; an iterator of records.
pub struct DumpReader<R> {
    source: R,
    names: Names,
    pool: Arc<BufferPool>,
    /// Bytes read but not yet returned; records are sliced off its front.
    window: Bytes,
    /// Index of the next record.
    record: u64,
    /// Stream offset of `window`'s first byte.
    offset: u64,
    /// Set after an error that makes the rest of the stream unreadable, or at the end.
    finished: bool,
    /// Set once the stream's start was found to be a dump's (see [`DumpReader::check_start`]).
    checked: bool,
    /// The stream's length when known (a plain file): a record claiming more than is left is
    /// truncated before any buffer is sized for it.
    len: Option<u64>,
}

impl DumpReader<Box<dyn Read + Send>> {
    /// Opens a dump file; names ending in `.gz` are decompressed on the fly.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        if path.extension().is_some_and(|ext| ext == "gz") {
            // Multi-member: dranspose appends each scan to the same file.
            return Ok(Self::new(Box::new(flate2::read::MultiGzDecoder::new(file))));
        }
        let len = file.metadata()?.len();
        Ok(Self {
            len: Some(len),
            ..Self::new(Box::new(file))
        })
    }
}

impl<R: Read> DumpReader<R> {
    /// Reads records from `source`. Pass the raw file: the reader does its own buffering.
    pub fn new(source: R) -> Self {
        Self {
            source,
            names: Names::default(),
            pool: Arc::default(),
            window: Bytes::new(),
            record: 0,
            offset: 0,
            finished: false,
            checked: false,
            len: None,
        }
    }

    /// Checks that the stream starts with the self-describe tag, as every dump does; reading
    /// records checks it too, this lets a caller refuse a file before it starts any work. An
    /// empty stream passes: it is a dump of a scan without events.
    ///
    /// Only the first record must carry the tag: records after it are still read without one,
    /// since the tag is what tells a dump from another file, not what makes a record valid.
    pub fn check_start(&mut self) -> Result<(), DumpError> {
        if self.checked {
            return Ok(());
        }
        if self.window.len() < SELF_DESCRIBE_BYTES.len() {
            // One fill reads up to a chunk or the end, whichever comes first.
            self.fill(SELF_DESCRIBE_BYTES.len())?;
        }
        let head = &self.window[..self.window.len().min(SELF_DESCRIBE_BYTES.len())];
        // A stream shorter than the tag but starting like it is a truncated dump, reported as
        // such by the record reader.
        if head != &SELF_DESCRIBE_BYTES[..head.len()] {
            return Err(DumpError::NotADump {
                found: head.to_vec(),
            });
        }
        self.checked = true;
        Ok(())
    }

    /// Bytes consumed so far (uncompressed).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record's bytes, or `None` at a clean end of the stream.
    fn next_record_bytes(&mut self) -> Result<Option<Bytes>, DumpError> {
        loop {
            let needed = match item_len(&self.window) {
                Scan::Complete(len) => {
                    let record = self.window.split_to(len);
                    return Ok(Some(record));
                }
                Scan::Incomplete(needed) => needed,
                Scan::Malformed(at, message) => {
                    return Err(DumpError::Malformed {
                        record: self.record,
                        offset: self.offset,
                        at,
                        message,
                    });
                }
            };
            if needed > MAX_RECORD_BYTES {
                return Err(DumpError::TooLarge {
                    record: self.record,
                    offset: self.offset,
                    len: needed,
                });
            }
            let left = self
                .len
                .map(|len| usize::try_from(len.saturating_sub(self.offset)).unwrap_or(usize::MAX));
            if let Some(left) = left
                && needed > left
            {
                if left == 0 {
                    return Ok(None);
                }
                return Err(DumpError::Truncated {
                    record: self.record,
                    offset: self.offset,
                    available: left,
                    needed,
                });
            }
            if !self.fill(needed)? {
                let available = self.window.len();
                if available == 0 {
                    return Ok(None);
                }
                return Err(DumpError::Truncated {
                    record: self.record,
                    offset: self.offset,
                    available,
                    needed,
                });
            }
        }
    }

    /// Reads towards `needed` bytes in the window (a chunk at least, see `GROWTH` for at most).
    /// Returns false when the source ended before `needed`.
    fn fill(&mut self, needed: usize) -> Result<bool, DumpError> {
        let target = needed
            .max(READ_CHUNK)
            .min(self.window.len().saturating_mul(4).max(GROWTH));
        let mut buffer = self.pool.take(target);
        let mut filled = self.window.len();
        buffer[..filled].copy_from_slice(&self.window);
        let mut ended = false;
        // Fill the whole buffer (one large read per record from a file; the kernel copies straight
        // into the record's memory), so that a source giving a few bytes per read still costs one
        // buffer per chunk rather than one per read.
        while filled < target {
            match self.source.read(&mut buffer[filled..target]) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(DumpError::Io {
                        record: self.record,
                        offset: self.offset,
                        error,
                    });
                }
            }
        }
        self.window = Bytes::from_owner(Pooled {
            data: buffer,
            pool: Arc::clone(&self.pool),
        })
        .slice(..filled);
        Ok(!ended || filled >= needed.min(target))
    }
}

impl<R: Read> Iterator for DumpReader<R> {
    type Item = Result<EventData, DumpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        if let Err(error) = self.check_start() {
            self.finished = true;
            return Some(Err(error));
        }
        let (record, offset) = (self.record, self.offset);
        let result = match self.next_record_bytes() {
            Ok(Some(bytes)) => {
                self.record += 1;
                self.offset += bytes.len() as u64;
                decode_with(&bytes, &mut self.names).map_err(|error| DumpError::BadRecord {
                    record,
                    offset,
                    message: error.to_string(),
                })
            }
            Ok(None) => {
                self.finished = true;
                return None;
            }
            Err(error) => Err(error),
        };
        if result.as_ref().is_err_and(|error| !error.is_recoverable()) {
            self.finished = true;
        }
        Some(result)
    }
}

/// Decodes one record; frames share `record`'s memory. The error says what was expected.
pub fn decode_record(record: &Bytes) -> Result<EventData, RecordError> {
    decode_with(record, &mut Names::default())
}

fn decode_with(record: &Bytes, names: &mut Names) -> Result<EventData, RecordError> {
    let mut d = Decoder::new(record);
    let mut tag = expect_tag(&mut d, "record")?;
    if tag == SELF_DESCRIBE_TAG {
        tag = expect_tag(&mut d, "record after tag 55799")?;
    }
    if tag != EVENT_TAG {
        return Err(RecordError::new(format!(
            "expected tag {EVENT_TAG} (event), found tag {tag}"
        )));
    }
    let fields = match d.array() {
        Ok(Some(n @ (2 | 3))) => n,
        Ok(Some(n)) => {
            return Err(RecordError::new(format!(
                "expected an event array of 2 or 3 items, found {n}"
            )));
        }
        Ok(None) => return Err(RecordError::new("expected a definite-length event array")),
        Err(_) => return Err(found("an event array", &d)),
    };
    let event_number = d
        .u64()
        .map(EventNumber)
        .map_err(|_| found("an unsigned event number", &d))?;
    let context = |error: RecordError| error.within(format_args!("event {event_number}"));
    let streams = decode_streams(&mut d, record, names).map_err(context)?;
    let created_at = if fields == 3 {
        decode_created_at(&mut d).map_err(context)?
    } else {
        None
    };
    if d.position() != record.len() {
        return Err(context(RecordError::new(format!(
            "{} bytes after the event",
            record.len() - d.position()
        ))));
    }
    Ok(EventData {
        event_number,
        streams,
        created_at,
    })
}

fn decode_streams(
    d: &mut Decoder<'_>,
    record: &Bytes,
    names: &mut Names,
) -> Result<BTreeMap<StreamName, StreamData>, RecordError> {
    let count = match d.map() {
        Ok(Some(n)) => n,
        _ => return Err(found("a definite-length map of streams", d)),
    };
    let mut streams = BTreeMap::new();
    for _ in 0..count {
        let name = names.stream(d.str().map_err(|_| found("a stream name", d))?);
        let in_stream = |error: RecordError| error.within(format_args!("stream {name}"));
        let tag = expect_tag(d, "stream").map_err(in_stream)?;
        if tag != STREAM_TAG {
            return Err(in_stream(RecordError::new(format!(
                "expected tag {STREAM_TAG} (stream data), found tag {tag}"
            ))));
        }
        if !matches!(d.array(), Ok(Some(2))) {
            return Err(in_stream(RecordError::new(
                "expected a [typ, frames] array",
            )));
        }
        let typ = names.typ(d.str().map_err(|_| in_stream(found("a typ string", d)))?);
        let frame_count = match d.array() {
            Ok(Some(n)) => n,
            _ => return Err(in_stream(found("a definite-length array of frames", d))),
        };
        let mut frames = Vec::with_capacity(frame_count.min(64) as usize);
        for index in 0..frame_count {
            let frame = d.bytes().map_err(|_| {
                in_stream(found("a byte string", d).within(format_args!("frame {index}")))
            })?;
            frames.push(record.slice_ref(frame));
        }
        if streams
            .insert(name.clone(), StreamData { typ, frames })
            .is_some()
        {
            return Err(RecordError::new(format!("stream {name} appears twice")));
        }
    }
    Ok(streams)
}

fn decode_created_at(d: &mut Decoder<'_>) -> Result<Option<Timestamp>, RecordError> {
    match d.datatype() {
        Ok(Type::Null | Type::Undefined) => {
            let _ = d.skip();
            return Ok(None);
        }
        Ok(Type::Tag) => {}
        _ => return Err(found("created_at (tag 0 or 1)", d)),
    }
    let tag = expect_tag(d, "created_at")?;
    match tag {
        DATETIME_TAG => {
            let text = d.str().map_err(|_| found("an RFC 3339 string", d))?;
            text.parse::<Timestamp>().map(Some).map_err(|error| {
                RecordError::new(format!("created_at {text:?} is not RFC 3339: {error}"))
            })
        }
        EPOCH_TAG => {
            let seconds = match d.datatype() {
                Ok(Type::F16 | Type::F32 | Type::F64) => d.f64().ok(),
                _ => d.i64().ok().map(|s| s as f64),
            }
            .ok_or_else(|| found("epoch seconds", d))?;
            Timestamp::from_microsecond((seconds * 1e6).round() as i64)
                .map(Some)
                .map_err(|error| {
                    RecordError::new(format!("created_at {seconds} is out of range: {error}"))
                })
        }
        other => Err(RecordError::new(format!(
            "expected created_at tag 0 or 1, found tag {other}"
        ))),
    }
}

fn expect_tag(d: &mut Decoder<'_>, what: &str) -> Result<u64, RecordError> {
    d.tag()
        .map(Tag::as_u64)
        .map_err(|_| found("a tag", d).within(what))
}

/// "expected X, found <type> at byte N" for the item at the decoder's position.
fn found(expected: &str, d: &Decoder<'_>) -> RecordError {
    RecordError::new(match d.datatype() {
        Ok(ty) => format!("expected {expected}, found {ty} at byte {}", d.position()),
        Err(_) => format!("expected {expected} at byte {}", d.position()),
    })
}

/// Why a record is not an event: what was expected and what was found, prefixed by where
/// (`event 3: stream det: frame 0: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RecordError {
    message: String,
}

impl RecordError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The same error inside `place` (an event, a stream, a frame).
    fn within(self, place: impl std::fmt::Display) -> Self {
        Self::new(format!("{place}: {}", self.message))
    }
}

/// Writes events as `.cbors` records, frames straight from their buffers.
pub struct DumpWriter<W: Write> {
    encoder: Encoder<minicbor::encode::write::Writer<W>>,
}

impl<W: Write> DumpWriter<W> {
    /// Writes to `sink`; wrap files in a `BufWriter`.
    pub fn new(sink: W) -> Self {
        Self {
            encoder: Encoder::new(minicbor::encode::write::Writer::new(sink)),
        }
    }

    /// Appends one record.
    pub fn write_event(&mut self, event: &EventData) -> io::Result<()> {
        encode_record(&mut self.encoder, event).map_err(|error| match error.into_write() {
            Some(io) => io,
            None => io::Error::other("unencodable event"),
        })
    }

    /// Flushes and returns the sink.
    pub fn into_inner(self) -> io::Result<W> {
        let mut sink = self.encoder.into_writer().into_inner();
        sink.flush()?;
        Ok(sink)
    }
}

/// Encodes one event as a dump record (also the body of the ingester→worker message).
pub fn encode_record<W: minicbor::encode::Write>(
    e: &mut Encoder<W>,
    event: &EventData,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    e.tag(Tag::new(SELF_DESCRIBE_TAG))?
        .tag(Tag::new(EVENT_TAG))?;
    e.array(if event.created_at.is_some() { 3 } else { 2 })?;
    e.u64(event.event_number.0)?;
    e.map(event.streams.len() as u64)?;
    for (name, stream) in &event.streams {
        e.str(name.as_str())?.tag(Tag::new(STREAM_TAG))?.array(2)?;
        e.str(stream.typ.as_str())?
            .array(stream.frames.len() as u64)?;
        for frame in &stream.frames {
            e.bytes(frame)?;
        }
    }
    match event.created_at {
        Some(created_at) => crate::message::write_timestamp(e, created_at),
        None => Ok(()),
    }
}

/// Encodes one event record into a new buffer.
pub fn record_to_vec(event: &EventData) -> Vec<u8> {
    let mut encoder = Encoder::new(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = encode_record(&mut encoder, event);
    encoder.into_writer()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(n: u64, streams: &[(&str, &str, &[&[u8]])]) -> EventData {
        EventData {
            event_number: EventNumber(n),
            streams: streams
                .iter()
                .map(|(name, typ, frames)| {
                    (
                        StreamName::from(*name),
                        StreamData {
                            typ: StreamType::from(*typ),
                            frames: frames.iter().map(|f| Bytes::copy_from_slice(f)).collect(),
                        },
                    )
                })
                .collect(),
            created_at: Some("2026-11-21T10:00:00.123456Z".parse().unwrap()),
        }
    }

    fn write_all(events: &[EventData]) -> Vec<u8> {
        let mut writer = DumpWriter::new(Vec::new());
        for e in events {
            writer.write_event(e).unwrap();
        }
        writer.into_inner().unwrap()
    }

    #[test]
    fn round_trip_with_small_reads() {
        let events = vec![
            event(0, &[("det", "STINS", &[b"{\"htype\":\"header\"}"])]),
            event(
                1,
                &[
                    ("det", "STINS", &[b"{}", &[7u8; 100_000]]),
                    ("pcap", "PCAP", &[]),
                ],
            ),
        ];
        let bytes = write_all(&events);
        // A reader that returns 3 bytes at a time exercises every partial-record path.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(3).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let read: Vec<_> = DumpReader::new(Trickle(&bytes))
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, events);
    }

    #[test]
    fn truncated_file_names_the_record() {
        let bytes = write_all(&[
            event(0, &[("det", "STINS", &[b"abc"])]),
            event(1, &[("det", "STINS", &[&[1u8; 64]])]),
        ]);
        let cut = &bytes[..bytes.len() - 10];
        let results: Vec<_> = DumpReader::new(cut).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        insta::assert_snapshot!(results[1].as_ref().unwrap_err(), @"record 1 at byte 58: truncated: the file ends after 110 of at least 120 bytes");
    }

    /// Issue #17: a 29-byte file whose one frame claims 768 MiB is truncated before a buffer is
    /// sized for the claim (it took a 16 MiB buffer; a 4 GiB claim is refused as too large).
    #[test]
    fn a_tiny_file_claiming_a_huge_frame_allocates_nothing_large() {
        let mut bytes = SELF_DESCRIBE_BYTES.to_vec();
        // tag 42877 [0, {"det": tag 42878 ["STINS", [h'...' of 0x30000000 bytes]]}]
        bytes.extend_from_slice(&[0xd9, 0xa7, 0x7d, 0x82, 0x00, 0xa1, 0x63]);
        bytes.extend_from_slice(b"det");
        bytes.extend_from_slice(&[0xd9, 0xa7, 0x7e, 0x82, 0x65]);
        bytes.extend_from_slice(b"STINS");
        bytes.extend_from_slice(&[0x81, 0x5a, 0x30, 0x00, 0x00, 0x00]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.cbors");
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = DumpReader::open(&path).unwrap();
        let error = reader.next().unwrap().unwrap_err();
        insta::assert_snapshot!(error, @"record 0 at byte 0: truncated: the file ends after 29 of at least 805306397 bytes");
        let largest = reader
            .pool
            .largest
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(largest <= READ_CHUNK, "a buffer of {largest} bytes");
        assert!(reader.next().is_none());
    }

    #[test]
    fn wrong_tag_is_skipped_and_reading_goes_on() {
        let mut bytes = Vec::new();
        let mut e = Encoder::new(&mut bytes);
        e.tag(Tag::new(SELF_DESCRIBE_TAG))
            .unwrap()
            .tag(Tag::new(42879))
            .unwrap()
            .array(0)
            .unwrap();
        bytes.extend(write_all(&[event(5, &[("det", "X", &[b"1"])])]));
        let results: Vec<_> = DumpReader::new(bytes.as_slice()).collect();
        insta::assert_snapshot!(results[0].as_ref().unwrap_err(), @"record 0 at byte 0: expected tag 42877 (event), found tag 42879");
        assert_eq!(results[1].as_ref().unwrap().event_number, EventNumber(5));
    }

    #[test]
    fn garbage_ends_the_file_with_a_clear_error() {
        let mut bytes = write_all(&[event(0, &[("det", "STINS", &[b"abc"])])]);
        bytes.extend_from_slice(&[0xff, 0x00]);
        let results: Vec<_> = DumpReader::new(bytes.as_slice()).collect();
        assert_eq!(results.len(), 2);
        insta::assert_snapshot!(results[1].as_ref().unwrap_err(), @"record 1 at byte 58: not CBOR: break byte outside an indefinite item at byte 0 of the record");
    }

    #[test]
    fn accepts_records_without_created_at_and_later_records_without_the_tag() {
        let mut bytes = Vec::new();
        let mut e = Encoder::new(&mut bytes);
        for (n, tagged) in [(9, true), (10, false)] {
            if tagged {
                e.tag(Tag::new(SELF_DESCRIBE_TAG)).unwrap();
            }
            e.tag(Tag::new(EVENT_TAG))
                .unwrap()
                .array(2)
                .unwrap()
                .u64(n)
                .unwrap()
                .map(0)
                .unwrap();
        }
        let read: Vec<_> = DumpReader::new(bytes.as_slice())
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            read,
            vec![
                EventData::new(EventNumber(9)),
                EventData::new(EventNumber(10))
            ]
        );
    }

    #[test]
    fn a_stream_without_the_self_describe_tag_is_not_a_dump() {
        let mut reader = DumpReader::new(&b"event,mean\n1,2.5\n"[..]);
        insta::assert_snapshot!(reader.check_start().unwrap_err(), @"not a .cbors dump (it does not start with the CBOR self-describe tag d9 d9 f7 but with 65 76 65)");
        // Reading says so once and stops, instead of skipping the file as one bad record.
        let results: Vec<_> = DumpReader::new(&b"event,mean\n1,2.5\n"[..]).collect();
        assert_eq!(results.len(), 1);
        assert!(matches!(
            results[0],
            Err(DumpError::NotADump { ref found }) if found == b"eve"
        ));

        // Valid CBOR, even an event record, without the tag is not a dump either.
        let mut untagged = record_to_vec(&EventData::new(EventNumber(1)));
        untagged.drain(..SELF_DESCRIBE_BYTES.len());
        assert!(matches!(
            DumpReader::new(untagged.as_slice()).next(),
            Some(Err(DumpError::NotADump { .. }))
        ));
        // Shorter than the tag: named by what is there.
        insta::assert_snapshot!(DumpReader::new(&[0x0a][..]).check_start().unwrap_err(), @"not a .cbors dump (it does not start with the CBOR self-describe tag d9 d9 f7 but with 0a)");
    }

    #[test]
    fn a_dump_cut_inside_its_first_tag_is_truncated_not_a_foreign_file() {
        let results: Vec<_> = DumpReader::new(&SELF_DESCRIBE_BYTES[..2]).collect();
        assert!(
            matches!(results[..], [Err(DumpError::Truncated { .. })]),
            "{results:?}"
        );
    }

    #[test]
    fn a_gzip_file_is_checked_after_decompression() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.cbors.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(b"not a dump").unwrap();
        gz.finish().unwrap();
        let error = DumpReader::open(&path).unwrap().check_start().unwrap_err();
        assert!(
            matches!(error, DumpError::NotADump { ref found } if found == b"not"),
            "{error}"
        );
    }

    #[test]
    fn gzip_files_are_read_through() {
        use std::io::Write as _;
        let events = vec![
            event(1, &[("det", "STINS", &[b"a"])]),
            event(2, &[("det", "STINS", &[b"b"])]),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump.cbors.gz");
        // Two gzip members, as when a scan is appended to an existing file.
        let mut file = std::fs::File::create(&path).unwrap();
        for event in &events {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&record_to_vec(event)).unwrap();
            file.write_all(&gz.finish().unwrap()).unwrap();
        }
        drop(file);
        let read: Vec<_> = DumpReader::open(&path)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, events);
    }

    #[test]
    fn empty_input_is_an_empty_dump() {
        assert!(DumpReader::new(&[][..]).check_start().is_ok());
        assert_eq!(DumpReader::new(&[][..]).count(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_events_round_trip(
            numbers in proptest::collection::btree_set(any::<u64>(), 0..6),
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..4),
        ) {
            let events: Vec<EventData> = numbers.iter().map(|&n| {
                let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                event(n, &[("s", "T", &frames)])
            }).collect();
            let bytes = write_all(&events);
            let read: Vec<_> = DumpReader::new(bytes.as_slice()).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(read, events);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for result in DumpReader::new(bytes.as_slice()) {
                let _ = result;
            }
        }
    }
}
