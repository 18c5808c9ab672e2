//! Recording handled events to `.cbors` dumps, as dranspose's `dump_prefix` does: one file per
//! ingester and scan, `{prefix}{ingester}-{scan uuid}.cbors`, which `beamflow replay` reads.
//!
//! Unlike dranspose, where a new prefix waits for the next scan, setting `dump_prefix` takes
//! effect at once: the open file is closed and, while a scan runs, the next event goes to the
//! new prefix's file; clearing it stops recording. A file that reaches `dump_max_mb` is closed
//! and the scan goes on in `{prefix}{ingester}-{uuid}-1.cbors`, `-2`, ... (replay merges them by
//! event number), so a day-long live scan does not fill the disk with one file.
//!
//! The prefix comes over HTTP: before a file is opened it is checked against the roots
//! ([`Roots::confine`]) again, though the controller checked it, because this process may have
//! other roots than the controller's. A refused prefix records nothing; it is logged once and
//! counted.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use beamflow_net::files::Roots;
use beamflow_protocol::EventData;
use beamflow_protocol::dump::DumpWriter;
use beamflow_protocol::parameters::{DEFAULT_DUMP_MAX_MB, DUMP_MAX_MB, DUMP_PREFIX};
use serde::Serialize;
use tracing::{info, warn};

struct Open {
    path: PathBuf,
    writer: DumpWriter<BufWriter<File>>,
    bytes: u64,
}

/// What an ingester records, and where.
pub struct Recorder {
    ingester: String,
    prefix: String,
    max_bytes: u64,
    /// The scan being recorded and how many files of it were closed at the size limit.
    scan: Option<(String, u32)>,
    open: Option<Open>,
    last: Option<PathBuf>,
    files: u64,
    roots: Roots,
    /// Files not opened because the prefix was refused.
    refused: u64,
    /// The refused prefix last logged, so a refused prefix is logged once, not at every scan
    /// or rotation.
    refused_logged: Option<String>,
}

/// The recorder's state for the ingester's status.
#[derive(Debug, Serialize)]
pub struct RecordingStatus {
    /// The file being written.
    pub recording: Option<String>,
    /// The last file closed.
    pub last_recording: Option<String>,
    /// Files written so far.
    pub files: u64,
    /// Files not opened because the prefix was outside the roots.
    pub refused: u64,
}

impl Recorder {
    /// Records nothing until a prefix is set; then only under `roots`.
    pub fn new(ingester: &str, roots: Roots) -> Self {
        Self {
            ingester: ingester.to_owned(),
            prefix: String::new(),
            max_bytes: DEFAULT_DUMP_MAX_MB.unsigned_abs() * 1_000_000,
            scan: None,
            open: None,
            last: None,
            files: 0,
            roots,
            refused: 0,
            refused_logged: None,
        }
    }

    /// New parameter values (every parameter, as the controller sends them): a changed prefix
    /// takes effect at once.
    pub fn parameters<'a>(&mut self, values: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
        for (name, value) in values {
            let text = String::from_utf8_lossy(value);
            match name {
                DUMP_PREFIX if text != self.prefix => {
                    self.close();
                    if text.is_empty() {
                        info!("Recording stopped: dump_prefix cleared.");
                    }
                    self.prefix = text.into_owned();
                    self.open_file();
                }
                DUMP_MAX_MB => match text.trim().parse::<u64>() {
                    Ok(mb) => self.max_bytes = mb.saturating_mul(1_000_000),
                    Err(_) => {
                        warn!(value = %text, "dump_max_mb is not a whole number; kept {} MB.", self.max_bytes / 1_000_000)
                    }
                },
                _ => {}
            }
        }
    }

    /// A scan starts: its events go to a new file (if a prefix is set).
    pub fn start_scan(&mut self, uuid: &str) {
        self.close();
        self.scan = Some((uuid.to_owned(), 0));
        self.open_file();
    }

    /// The scan is over: its file is closed.
    pub fn finish_scan(&mut self) {
        self.close();
        self.scan = None;
    }

    /// Records one event (this ingester's streams of it).
    pub fn write(&mut self, event: &EventData) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if let Err(error) = open.writer.write_event(event) {
            warn!(path = %open.path.display(), %error, "Dump write failed; recording stopped.");
            self.open = None;
            return;
        }
        // Frame bytes plus a little framing: close enough for a size limit.
        open.bytes += event
            .streams
            .values()
            .map(|s| s.byte_len() as u64 + 32)
            .sum::<u64>()
            + 16;
        if self.max_bytes > 0 && open.bytes >= self.max_bytes {
            self.close();
            if let Some((_, rotations)) = self.scan.as_mut() {
                *rotations += 1;
            }
            self.open_file();
        }
    }

    /// The files written and being written.
    pub fn status(&self) -> RecordingStatus {
        RecordingStatus {
            recording: self.open.as_ref().map(|o| o.path.display().to_string()),
            last_recording: self.last.as_ref().map(|p| p.display().to_string()),
            files: self.files,
            refused: self.refused,
        }
    }

    fn open_file(&mut self) {
        let Some((uuid, rotations)) = &self.scan else {
            return;
        };
        if self.prefix.is_empty() {
            return;
        }
        if let Err(error) = self.roots.confine(&self.prefix) {
            self.refused += 1;
            if self.refused_logged.as_deref() != Some(self.prefix.as_str()) {
                warn!(%error, "Not recording: dump_prefix is refused.");
                self.refused_logged = Some(self.prefix.clone());
            }
            return;
        }
        let suffix = if *rotations == 0 {
            String::new()
        } else {
            format!("-{rotations}")
        };
        let path = PathBuf::from(format!(
            "{}{}-{uuid}{suffix}.cbors",
            self.prefix, self.ingester
        ));
        // Append, as dranspose does: a prefix set, cleared and set again in one scan goes on
        // in the same file instead of truncating what was recorded.
        match File::options().create(true).append(true).open(&path) {
            Ok(file) => {
                info!(path = %path.display(), "Recording.");
                self.files += 1;
                self.open = Some(Open {
                    path,
                    writer: DumpWriter::new(BufWriter::new(file)),
                    bytes: 0,
                });
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "Cannot record: the dump file cannot be opened.")
            }
        }
    }

    fn close(&mut self) {
        if let Some(open) = self.open.take() {
            match open.writer.into_inner() {
                Ok(_) => {
                    info!(path = %open.path.display(), "Recording closed.");
                    self.last = Some(open.path);
                }
                Err(error) => {
                    warn!(path = %open.path.display(), %error, "Dump not completely written.");
                }
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::dump::DumpReader;
    use beamflow_protocol::{EventNumber, StreamData};
    use bytes::Bytes;

    fn event(n: u64, bytes: usize) -> EventData {
        let mut event = EventData::new(EventNumber(n));
        event.streams.insert(
            "det".into(),
            StreamData {
                typ: "STINS".into(),
                frames: vec![Bytes::from(vec![7u8; bytes])],
            },
        );
        event
    }

    fn events_in(path: &std::path::Path) -> Vec<u64> {
        DumpReader::open(path)
            .unwrap()
            .map(|event| event.unwrap().event_number.0)
            .collect()
    }

    fn set(recorder: &mut Recorder, name: &str, value: &str) {
        recorder.parameters([(name, value.as_bytes())]);
    }

    #[test]
    fn a_prefix_takes_effect_at_once_and_clearing_it_stops_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("{}/", dir.path().display());
        let mut recorder = Recorder::new("det", Roots::new([dir.path().to_owned()]));
        recorder.start_scan("u1");
        recorder.write(&event(0, 10));
        set(&mut recorder, DUMP_PREFIX, &prefix);
        recorder.write(&event(1, 10));
        set(&mut recorder, DUMP_PREFIX, "");
        assert!(recorder.status().recording.is_none());
        recorder.write(&event(2, 10));
        let path = dir.path().join("det-u1.cbors");
        assert_eq!(
            events_in(&path),
            [1],
            "only what came while the prefix was set"
        );
        assert_eq!(
            recorder.status().last_recording,
            Some(path.display().to_string())
        );
    }

    #[test]
    fn files_rotate_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut recorder = Recorder::new("det", Roots::new([dir.path().to_owned()]));
        set(&mut recorder, DUMP_MAX_MB, "1");
        set(
            &mut recorder,
            DUMP_PREFIX,
            &format!("{}/", dir.path().display()),
        );
        recorder.start_scan("u2");
        for n in 0..5 {
            recorder.write(&event(n, 400_000));
        }
        recorder.finish_scan();
        assert_eq!(events_in(&dir.path().join("det-u2.cbors")), [0, 1, 2]);
        assert_eq!(events_in(&dir.path().join("det-u2-1.cbors")), [3, 4]);
        assert_eq!(recorder.status().files, 2);
    }

    #[test]
    fn a_prefix_outside_the_roots_records_nothing_and_is_counted() {
        let root = tempfile::tempdir().unwrap();
        let mut recorder = Recorder::new("det", Roots::new([root.path().join("runs")]));
        std::fs::create_dir(root.path().join("runs")).unwrap();
        // `runs/../` resolves to the root's parent folder: outside `runs`, and refused for its
        // `..` before that.
        for prefix in [
            format!("{}/runs/../", root.path().display()),
            format!("{}/", root.path().display()),
        ] {
            set(&mut recorder, DUMP_PREFIX, &prefix);
            recorder.start_scan("u3");
            recorder.write(&event(0, 10));
            recorder.finish_scan();
        }
        assert_eq!(recorder.status().refused, 2);
        assert!(recorder.status().recording.is_none());
        let written: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(written, ["runs"], "no file was written");
    }
}
