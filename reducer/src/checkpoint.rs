//! A scan's checkpoint: the inputs the reducer applied, in order, in an append-only file, so a
//! restarted reducer rebuilds its state by applying them again (the state is a pure function of
//! them, as `beamflow replay` relies on) and the scan goes on from the event after the last one.
//!
//! # Layout
//!
//! One file per scan, `reducer-<uuid>.checkpoint` in the checkpoint folder:
//!
//! ```text
//! file    = MAGIC record*                    MAGIC = "BFCKPT\0\x01" (8 bytes)
//! record  = length:u32 LE, crc:u32 LE, payload[length]     crc = CRC-32 (IEEE) of the payload
//! payload = one CBOR array, the first item saying which record it is:
//!   [0, scan, uuid, parameters]              Start: always first; the scan's parameters at its start
//!   [1, parameters]                          Parameters: new values, applied from the next event on
//!   [2, event, [result...], [stream...]]     Event: the results applied for the event (each as
//!                                            `encode_result` writes it), and the streams it lacked
//!   [3, from, to]                            Lost: events from..to were skipped, not in the state
//!   [4]                                      Finish: the scan ended
//! parameters = [[name, bytes]...]            dranspose's bytes form, as the controller sends them
//! ```
//!
//! A crash mid-write leaves a torn last record: its length runs past the end of the file or its
//! checksum does not match. Reading stops at the first such record and ignores the rest, which
//! is never misread, and the writer truncates the file there before it appends again.
//!
//! Records are buffered and written once per loop turn ([`Checkpoint::flush`]), before the
//! reducer says `Reduced`: what it announces is in the file. A write reaches the operating
//! system, not the disk: it survives a killed reducer, not a power cut (a sync per turn would
//! cost more than the whole event).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use beamflow_protocol::control::ByteVec;
use beamflow_protocol::message::{decode_result, encode_result};
use beamflow_protocol::{CborError, EventNumber, ParameterName, ResultData, StreamName};
use minicbor::{Decoder, Encoder};
use tracing::{error, warn};

/// The first bytes of every checkpoint file; the last byte is the layout's version.
pub const MAGIC: &[u8; 8] = b"BFCKPT\0\x01";

/// The file name's extension.
pub const EXTENSION: &str = "checkpoint";

const PREFIX: &str = "reducer-";

/// Parameter values as the controller sends them.
pub type ParameterValues = Vec<(ParameterName, ByteVec)>;

/// One record of a checkpoint, as read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The first record: which scan, and its parameters at the start.
    Start {
        /// The scan's number.
        scan: u64,
        /// The scan's uuid.
        uuid: String,
        /// Its parameters at the start.
        parameters: ParameterValues,
    },
    /// New parameter values, applied from the next event on.
    Parameters(ParameterValues),
    /// An event applied.
    Event {
        /// The event.
        event: EventNumber,
        /// Its results, in the order they were applied.
        results: Vec<ResultData>,
        /// The streams it lacked (empty: it was complete).
        missing: Vec<StreamName>,
    },
    /// Events `from..to` were skipped: released without a checkpoint covering them.
    Lost {
        /// The first event lost.
        from: EventNumber,
        /// The event after the last one lost.
        to: EventNumber,
    },
    /// The scan ended.
    Finish,
}

const START: u8 = 0;
const PARAMETERS: u8 = 1;
const EVENT: u8 = 2;
const LOST: u8 = 3;
const FINISH: u8 = 4;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be opened or read.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`]: not a checkpoint, or of another layout version.
    #[error("checkpoint {path}: not a checkpoint of this version")]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
    },
}

/// The file of the scan with `uuid` in `folder`. Characters of the uuid other than letters,
/// digits, `-` and `_` become `_`: the uuid comes over the network and must not name a path.
pub fn path(folder: &Path, uuid: &str) -> PathBuf {
    let name: String = uuid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    folder.join(format!("{PREFIX}{name}.{EXTENSION}"))
}

/// Removes the checkpoints in `folder` other than `keep` and the newest of the others (the last
/// scan's, so a restarted reducer can still serve it). Only files named as [`path`] names them
/// are touched: the folder may hold other components' state. Failures are logged and skipped.
pub fn prune(folder: &Path, keep: &Path) {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
        Err(error) => {
            warn!(folder = %folder.display(), %error, "Cannot list the checkpoint folder; old checkpoints stay.");
            return;
        }
    };
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path != keep
                && path.extension().is_some_and(|e| e == EXTENSION)
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX))
        })
        .map(|path| {
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (modified, path)
        })
        .collect();
    others.sort();
    others.pop();
    for (_, path) in others {
        if let Err(error) = std::fs::remove_file(&path) {
            warn!(file = %path.display(), %error, "Cannot remove an old checkpoint.");
        }
    }
}

/// Where reading a checkpoint stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadEnd {
    /// Bytes of whole, valid records (with the magic): where appending goes on.
    pub valid: u64,
    /// Bytes after them, ignored (a torn last record).
    pub ignored: u64,
}

/// Reads the records of the checkpoint at `path` in order, handing each to `each`, up to the
/// first torn or unreadable one.
pub fn read(path: &Path, mut each: impl FnMut(Record)) -> Result<ReadEnd, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 8];
    if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(CheckpointError::NotACheckpoint {
            path: path.to_owned(),
        });
    }
    let mut valid = MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 8];
        if reader.read_exact(&mut head).is_err() {
            break;
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
        let length = u64::from(u32::from_le_bytes([l0, l1, l2, l3]));
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        // A torn length can be anything: never allocate past what the file holds.
        if valid + 8 + length > size {
            break;
        }
        payload.resize(length as usize, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        match decode(&payload) {
            Ok(record) => each(record),
            Err(error) => {
                // A sound checksum over a record that does not decode: written by another
                // version. Everything after it is ignored like a torn tail.
                warn!(file = %path.display(), offset = valid, %error, "Checkpoint record does not decode; the rest is ignored.");
                break;
            }
        }
        valid += 8 + length;
    }
    Ok(ReadEnd {
        valid,
        ignored: size - valid,
    })
}

fn decode(payload: &[u8]) -> Result<Record, CborError> {
    let mut d = Decoder::new(payload);
    let fail = |d: &Decoder<'_>, what: &str| {
        CborError::new(d.position(), format!("checkpoint record: expected {what}"))
    };
    d.array().map_err(|_| fail(&d, "an array"))?;
    let kind = d.u8().map_err(|_| fail(&d, "a record kind"))?;
    let record = match kind {
        START => Record::Start {
            scan: d.u64().map_err(|_| fail(&d, "a scan number"))?,
            uuid: d.str().map_err(|_| fail(&d, "a uuid"))?.to_owned(),
            parameters: d.decode().map_err(|_| fail(&d, "parameters"))?,
        },
        PARAMETERS => Record::Parameters(d.decode().map_err(|_| fail(&d, "parameters"))?),
        EVENT => {
            let event = EventNumber(d.u64().map_err(|_| fail(&d, "an event number"))?);
            let count = d
                .array()
                .ok()
                .flatten()
                .ok_or_else(|| fail(&d, "an array of results"))?;
            let mut results = Vec::with_capacity(count.min(64) as usize);
            for _ in 0..count {
                let start = d.position();
                d.skip().map_err(|_| fail(&d, "a result"))?;
                results.push(decode_result(&payload[start..d.position()])?);
            }
            let missing: Vec<String> = d.decode().map_err(|_| fail(&d, "stream names"))?;
            Record::Event {
                event,
                results,
                missing: missing.into_iter().map(StreamName::from).collect(),
            }
        }
        LOST => Record::Lost {
            from: EventNumber(d.u64().map_err(|_| fail(&d, "an event number"))?),
            to: EventNumber(d.u64().map_err(|_| fail(&d, "an event number"))?),
        },
        FINISH => Record::Finish,
        _ => return Err(fail(&d, "a known record kind")),
    };
    if d.position() != payload.len() {
        return Err(CborError::new(
            d.position(),
            "checkpoint record: trailing bytes",
        ));
    }
    Ok(record)
}

/// The writing end of a scan's checkpoint. It never fails its caller: a write that fails is
/// logged once with the path and counted, and the checkpoint is given up for the scan (the
/// reducer goes on reducing without one).
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    /// `None` once given up.
    file: Option<File>,
    buffer: Vec<u8>,
    failures: u64,
}

impl Checkpoint {
    /// Starts the checkpoint of a scan at `path` (replacing any file there), with its first
    /// parameters; the folder is created if missing.
    pub fn create(path: &Path, scan: u64, uuid: &str, parameters: &ParameterValues) -> Self {
        let file = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| File::create(path));
        let mut checkpoint = Self::with(path, file);
        checkpoint.buffer.extend_from_slice(MAGIC);
        checkpoint.record(|e| {
            e.array(4)?.u8(START)?.u64(scan)?.str(uuid)?;
            e.encode(parameters)?;
            Ok(())
        });
        checkpoint
    }

    /// Goes on appending to the checkpoint at `path`, whose valid records end at `end` (what
    /// [`read`] found): anything after is cut off first.
    pub fn append(path: &Path, end: u64) -> Self {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|file| file.set_len(end).map(|()| file));
        Self::with(path, file)
    }

    fn with(path: &Path, file: std::io::Result<File>) -> Self {
        let mut checkpoint = Self {
            path: path.to_owned(),
            file: None,
            buffer: Vec::new(),
            failures: 0,
        };
        match file {
            Ok(file) => checkpoint.file = Some(file),
            Err(error) => checkpoint.give_up(&error),
        }
        checkpoint
    }

    /// Records new parameter values.
    pub fn parameters(&mut self, parameters: &ParameterValues) {
        self.record(|e| {
            e.array(2)?.u8(PARAMETERS)?;
            e.encode(parameters)?;
            Ok(())
        });
    }

    /// Records an event applied with these results, lacking these streams.
    pub fn event(&mut self, event: EventNumber, results: &[&ResultData], missing: &[StreamName]) {
        self.record(|e| {
            e.array(4)?.u8(EVENT)?.u64(event.0)?;
            e.array(results.len() as u64)?;
            for result in results {
                // `encode_result` writes one whole CBOR item: it goes in as it is.
                e.writer_mut().extend_from_slice(&encode_result(result));
            }
            e.array(missing.len() as u64)?;
            for stream in missing {
                e.str(stream.as_str())?;
            }
            Ok(())
        });
    }

    /// Records that events `from..to` were skipped.
    pub fn lost(&mut self, from: EventNumber, to: EventNumber) {
        self.record(|e| {
            e.array(3)?.u8(LOST)?.u64(from.0)?.u64(to.0)?;
            Ok(())
        });
    }

    /// Records the end of the scan.
    pub fn finish(&mut self) {
        self.record(|e| {
            e.array(1)?.u8(FINISH)?;
            Ok(())
        });
    }

    /// Frames one record: length and checksum in front of the payload `write` encodes.
    fn record(
        &mut self,
        write: impl FnOnce(
            &mut Encoder<&mut Vec<u8>>,
        ) -> Result<(), minicbor::encode::Error<std::convert::Infallible>>,
    ) {
        if self.file.is_none() {
            return;
        }
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 8]);
        // Encoding into a Vec cannot fail.
        let _ = write(&mut Encoder::new(&mut self.buffer));
        let payload = &self.buffer[start + 8..];
        let length = (payload.len() as u32).to_le_bytes();
        let crc = crc32fast::hash(payload).to_le_bytes();
        self.buffer[start..start + 4].copy_from_slice(&length);
        self.buffer[start + 4..start + 8].copy_from_slice(&crc);
    }

    /// Writes what was recorded since the last flush; whether the checkpoint covers everything
    /// recorded (false once it was given up).
    pub fn flush(&mut self) -> bool {
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        if self.buffer.is_empty() {
            return true;
        }
        match file.write_all(&self.buffer) {
            Ok(()) => {
                self.buffer.clear();
                true
            }
            Err(error) => {
                self.give_up(&error);
                false
            }
        }
    }

    fn give_up(&mut self, error: &std::io::Error) {
        self.failures += 1;
        self.file = None;
        self.buffer = Vec::new();
        error!(file = %self.path.display(), %error,
            "Cannot write the checkpoint; going on without one for this scan: a restarted reducer would lose its state.");
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the checkpoint is still kept (not given up after a failure).
    pub fn is_kept(&self) -> bool {
        self.file.is_some()
    }

    /// Writes that failed (at most one: the checkpoint is given up at the first).
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::Value;
    use std::sync::Arc;

    fn result(event: u64, value: f64) -> ResultData {
        ResultData {
            event_number: EventNumber(event),
            analysis: "stats".into(),
            worker: "w1".into(),
            created_at: None,
            payload: Arc::new(Value::Map(
                [("mean".to_owned(), Value::Float(value))].into(),
            )),
        }
    }

    fn records(path: &Path) -> (Vec<Record>, ReadEnd) {
        let mut records = Vec::new();
        let end = read(path, |r| records.push(r)).unwrap();
        (records, end)
    }

    fn parameters(value: &str) -> ParameterValues {
        vec![("p".into(), ByteVec::from(value.as_bytes().to_vec()))]
    }

    #[test]
    fn records_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path(), "1234-abcd");
        let mut checkpoint = Checkpoint::create(&path, 3, "1234-abcd", &parameters("a"));
        checkpoint.event(EventNumber(0), &[&result(0, 1.5)], &[]);
        checkpoint.parameters(&parameters("b"));
        checkpoint.event(EventNumber(1), &[], &["pcap".into()]);
        checkpoint.lost(EventNumber(2), EventNumber(5));
        checkpoint.finish();
        assert!(checkpoint.flush());
        let (read_back, end) = records(&path);
        assert_eq!(
            read_back,
            [
                Record::Start {
                    scan: 3,
                    uuid: "1234-abcd".into(),
                    parameters: parameters("a")
                },
                Record::Event {
                    event: EventNumber(0),
                    results: vec![result(0, 1.5)],
                    missing: vec![]
                },
                Record::Parameters(parameters("b")),
                Record::Event {
                    event: EventNumber(1),
                    results: vec![],
                    missing: vec!["pcap".into()]
                },
                Record::Lost {
                    from: EventNumber(2),
                    to: EventNumber(5)
                },
                Record::Finish,
            ]
        );
        assert_eq!(end.ignored, 0);
        assert_eq!(end.valid, std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn a_torn_tail_is_ignored_and_cut_off_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path(), "u");
        let mut checkpoint = Checkpoint::create(&path, 1, "u", &parameters("a"));
        checkpoint.event(EventNumber(0), &[&result(0, 1.0)], &[]);
        checkpoint.event(EventNumber(1), &[&result(1, 2.0)], &[]);
        assert!(checkpoint.flush());
        let whole = std::fs::read(&path).unwrap();
        // Every cut inside the last record, and a flipped byte in it, leave the first two records.
        let (_, two) = {
            let mut c = Checkpoint::create(&path, 1, "u", &parameters("a"));
            c.event(EventNumber(0), &[&result(0, 1.0)], &[]);
            c.flush();
            records(&path)
        };
        for cut in two.valid as usize..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let (read_back, end) = records(&path);
            assert_eq!(read_back.len(), 2, "cut at {cut}");
            assert_eq!(end.valid, two.valid);
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let (read_back, end) = records(&path);
        assert_eq!(
            (read_back.len(), end.ignored),
            (2, whole.len() as u64 - two.valid)
        );
        // Appending goes on after the last valid record, not after the garbage.
        let mut checkpoint = Checkpoint::append(&path, end.valid);
        checkpoint.event(EventNumber(1), &[&result(1, 3.0)], &[]);
        assert!(checkpoint.flush());
        let (read_back, end) = records(&path);
        assert_eq!(end.ignored, 0);
        assert_eq!(
            read_back.last(),
            Some(&Record::Event {
                event: EventNumber(1),
                results: vec![result(1, 3.0)],
                missing: vec![]
            })
        );
    }

    #[test]
    fn a_file_that_is_no_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.checkpoint");
        std::fs::write(&path, b"hello, world").unwrap();
        assert!(matches!(
            read(&path, |_| {}),
            Err(CheckpointError::NotACheckpoint { .. })
        ));
    }

    #[test]
    fn a_uuid_cannot_name_a_path_outside_the_folder() {
        let folder = Path::new("/state");
        assert_eq!(
            path(folder, "../../etc/passwd"),
            Path::new("/state/reducer-______etc_passwd.checkpoint")
        );
    }

    #[test]
    fn pruning_keeps_the_current_and_the_last_scan_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = path(dir.path(), "old");
        let last = path(dir.path(), "last");
        let current = path(dir.path(), "current");
        let other = dir.path().join("controller-scan.json");
        for file in [&old, &last, &current, &other] {
            std::fs::write(file, b"").unwrap();
        }
        let earlier = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(earlier)
            .unwrap();
        prune(dir.path(), &current);
        assert!(!old.exists());
        assert!(last.exists() && current.exists() && other.exists());
    }

    #[test]
    fn a_write_failure_is_counted_and_the_checkpoint_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path(), "u");
        let mut checkpoint = Checkpoint::create(&path, 1, "u", &parameters("a"));
        assert!(checkpoint.flush());
        // A write that fails as on a full disk: the file is swapped for one opened read-only.
        checkpoint.file = Some(File::open(&path).unwrap());
        checkpoint.event(EventNumber(0), &[&result(0, 1.0)], &[]);
        assert!(!checkpoint.flush());
        assert!(!checkpoint.is_kept());
        assert_eq!(checkpoint.failures(), 1);
        checkpoint.event(EventNumber(1), &[&result(1, 1.0)], &[]);
        assert!(!checkpoint.flush(), "given up: never claims coverage again");
        assert_eq!(checkpoint.failures(), 1, "logged and counted once");
        let unwritable = Checkpoint::create(
            Path::new("/proc/no/such/folder/x.checkpoint"),
            1,
            "u",
            &parameters("a"),
        );
        assert!(!unwritable.is_kept());
        assert_eq!(unwritable.failures(), 1);
    }
}
