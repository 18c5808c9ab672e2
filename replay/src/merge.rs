//! Merging several dumps into one stream of events ordered by event number.
//!
//! Each ingester writes its own dump, so one event's streams are spread over files, and an event
//! may be in only some of them (a slow stream has no frame in most events). Every dump is read in
//! its own order; the merge repeatedly takes the smallest event number at the heads of the files
//! and joins the records that carry it.

use std::path::{Path, PathBuf};

use beamflow_protocol::dump::{DumpError, DumpReader};
use beamflow_protocol::{EventData, EventNumber};
use tracing::info;

/// A record that could not be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The dump could not be opened.
    #[error("{path}: cannot open: {error}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A record could not be read.
    #[error("{path}: {error}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What the reader found.
        error: DumpError,
    },
    /// Two files carry the same stream for the same event; the first file's frames are kept.
    #[error(
        "{path}: event {event}: stream {stream} is also in {first}; kept the frames from {first}"
    )]
    DuplicateStream {
        /// The file whose frames were dropped.
        path: PathBuf,
        /// The event.
        event: u64,
        /// The stream.
        stream: String,
        /// The file whose frames were kept.
        first: PathBuf,
    },
}

type Reader = DumpReader<Box<dyn std::io::Read + Send>>;

struct Source {
    path: PathBuf,
    reader: Reader,
    head: Option<EventData>,
    done: bool,
    /// The last event number read, to notice a second scan appended to the same file.
    previous: Option<EventNumber>,
}

/// Events from several dumps, merged by event number.
pub struct Merged {
    sources: Vec<Source>,
    /// Errors found while filling heads, handed out before the next event.
    pending: Vec<InputError>,
}

impl InputError {
    /// Whether the file is not a dump at all: the command line named the wrong file, which
    /// `beamflow replay` reports with its own exit code.
    pub fn is_not_a_dump(&self) -> bool {
        matches!(
            self,
            InputError::Record {
                error: DumpError::NotADump { .. },
                ..
            }
        )
    }
}

impl Merged {
    /// Opens every dump; a file that cannot be opened, or is not a dump, is an error for the
    /// whole replay. The check reads each file's first bytes now, so that a wrong file fails
    /// before any work rather than replaying as one skipped record.
    pub fn open(paths: &[PathBuf]) -> Result<Self, InputError> {
        let sources = paths
            .iter()
            .map(|path| {
                let mut reader = DumpReader::open(path).map_err(|error| InputError::Open {
                    path: path.clone(),
                    error,
                })?;
                reader.check_start().map_err(|error| InputError::Record {
                    path: path.clone(),
                    error,
                })?;
                Ok(Source {
                    path: path.clone(),
                    reader,
                    head: None,
                    done: false,
                    previous: None,
                })
            })
            .collect::<Result<_, InputError>>()?;
        Ok(Self {
            sources,
            pending: Vec::new(),
        })
    }

    /// Uncompressed bytes read so far from all files.
    pub fn bytes_read(&self) -> u64 {
        self.sources.iter().map(|s| s.reader.offset()).sum()
    }

    fn fill_heads(&mut self) {
        for source in &mut self.sources {
            while source.head.is_none() && !source.done {
                match source.reader.next() {
                    Some(Ok(event)) => {
                        if source
                            .previous
                            .is_some_and(|previous| event.event_number <= previous)
                        {
                            // dranspose opens DUMP_PATH in append mode, so one file can hold
                            // several scans; they replay one after the other, in file order.
                            info!(file = %source.path.display(), event = %event.event_number,
                                "Event numbers restart: a further scan appended to this dump.");
                        }
                        source.previous = Some(event.event_number);
                        source.head = Some(event);
                    }
                    Some(Err(error)) => self.pending.push(InputError::Record {
                        path: source.path.clone(),
                        error,
                    }),
                    None => source.done = true,
                }
            }
        }
    }
}

impl Iterator for Merged {
    type Item = Result<EventData, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.fill_heads();
        if !self.pending.is_empty() {
            return Some(Err(self.pending.remove(0)));
        }
        let smallest = self
            .sources
            .iter()
            .filter_map(|s| s.head.as_ref().map(|e| e.event_number))
            .min()?;
        let mut merged: Option<(EventData, Vec<(String, &Path)>)> = None;
        for source in &mut self.sources {
            if source
                .head
                .as_ref()
                .is_none_or(|e| e.event_number != smallest)
            {
                continue;
            }
            let Some(event) = source.head.take() else {
                continue;
            };
            match &mut merged {
                None => {
                    let owners = event
                        .streams
                        .keys()
                        .map(|s| (s.to_string(), source.path.as_path()))
                        .collect();
                    merged = Some((event, owners));
                }
                Some((into, owners)) => {
                    for (stream, data) in event.streams {
                        if let Some((_, first)) =
                            owners.iter().find(|(name, _)| *name == stream.as_str())
                        {
                            self.pending.push(InputError::DuplicateStream {
                                path: source.path.clone(),
                                event: smallest.0,
                                stream: stream.to_string(),
                                first: first.to_path_buf(),
                            });
                            continue;
                        }
                        owners.push((stream.to_string(), source.path.as_path()));
                        into.streams.insert(stream, data);
                    }
                    into.created_at = match (into.created_at, event.created_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        merged.map(|(event, _)| Ok(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::dump::DumpWriter;
    use beamflow_protocol::{EventNumber, StreamData};
    use bytes::Bytes;

    fn write(dir: &Path, name: &str, stream: &str, numbers: &[u64]) -> PathBuf {
        let path = dir.join(name);
        let mut writer = DumpWriter::new(std::fs::File::create(&path).unwrap());
        for &n in numbers {
            let mut event = EventData::new(EventNumber(n));
            event.streams.insert(
                stream.into(),
                StreamData {
                    typ: "T".into(),
                    frames: vec![Bytes::from(format!("{stream}{n}"))],
                },
            );
            writer.write_event(&event).unwrap();
        }
        writer.into_inner().unwrap();
        path
    }

    #[test]
    fn merges_by_event_number_with_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.cbors", "det", &[0, 1, 2, 3]);
        let b = write(dir.path(), "b.cbors", "pcap", &[1, 3, 5]);
        let events: Vec<_> = Merged::open(&[a, b]).unwrap().map(Result::unwrap).collect();
        let shape: Vec<(u64, Vec<String>)> = events
            .iter()
            .map(|e| {
                (
                    e.event_number.0,
                    e.streams.keys().map(ToString::to_string).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, vec!["det".into()]),
                (1, vec!["det".into(), "pcap".into()]),
                (2, vec!["det".into()]),
                (3, vec!["det".into(), "pcap".into()]),
                (5, vec!["pcap".into()]),
            ]
        );
    }

    #[test]
    fn duplicate_streams_are_reported_and_the_first_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.cbors", "det", &[1]);
        let b = write(dir.path(), "b.cbors", "det", &[1]);
        let items: Vec<_> = Merged::open(&[a, b]).unwrap().collect();
        let event = items.iter().find_map(|i| i.as_ref().ok()).unwrap();
        assert_eq!(event.streams["det"].frames[0], Bytes::from("det1"));
        let error = items
            .iter()
            .find_map(|i| i.as_ref().err())
            .unwrap()
            .to_string();
        assert!(
            error.contains("stream det is also in") && error.contains("a.cbors"),
            "{error}"
        );
    }

    #[test]
    fn scans_appended_to_one_file_replay_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = std::fs::read(write(dir.path(), "a.cbors", "det", &[0, 1, 2])).unwrap();
        let path = dir.path().join("appended.cbors");
        std::fs::write(&path, [first.clone(), first].concat()).unwrap();
        let numbers: Vec<u64> = Merged::open(&[path])
            .unwrap()
            .map(|e| e.unwrap().event_number.0)
            .collect();
        assert_eq!(numbers, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_file_that_is_not_a_dump_fails_the_open_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "a.cbors", "det", &[0]);
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello\n").unwrap();
        let error = Merged::open(&[good.clone(), text.clone()]).err().unwrap();
        assert!(error.is_not_a_dump());
        assert_eq!(
            error.to_string(),
            format!(
                "{}: not a .cbors dump (it does not start with the CBOR self-describe tag d9 d9 f7 but with 68 65 6c)",
                text.display()
            )
        );
        // An empty file is a dump of a scan without events.
        let empty = dir.path().join("empty.cbors");
        std::fs::write(&empty, b"").unwrap();
        let events: Vec<_> = Merged::open(&[good, empty]).unwrap().collect();
        assert_eq!(events.len(), 1);
        assert!(
            !Merged::open(&[PathBuf::from("/nonexistent/x.cbors")])
                .err()
                .unwrap()
                .is_not_a_dump()
        );
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let error = Merged::open(&[PathBuf::from("/nonexistent/x.cbors")])
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("/nonexistent/x.cbors: cannot open:"),
            "{error}"
        );
    }
}
