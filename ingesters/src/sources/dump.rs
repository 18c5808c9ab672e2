//! A recorded `.cbors` dump played as a live source: each scan plays the file from its start,
//! every stream's frames in record order, numbered per stream as they were recorded.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use beamflow_protocol::StreamName;
use beamflow_protocol::dump::DumpReader;
use serde::Deserialize;
use tracing::warn;

use crate::sources::Pace;
use crate::{Source, SourceError, SourceFrame, SourceKind};

/// `[ingesters.<name>]` with `kind = "dump"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpConfig {
    /// The dump (`.cbors` or `.cbors.gz`).
    pub path: PathBuf,
    /// The streams it holds that this ingester offers (default: those of its first record).
    #[serde(default)]
    pub streams: Vec<StreamName>,
    /// Records per second; 0 = as fast as the pipeline takes them.
    #[serde(default)]
    pub rate_hz: f64,
}

/// The source.
pub struct Dump {
    config: DumpConfig,
    streams: Vec<StreamName>,
    reader: Option<DumpReader<Box<dyn std::io::Read + Send>>>,
    pending: VecDeque<SourceFrame>,
    counters: BTreeMap<StreamName, u64>,
    pace: Pace,
    bad_records: u64,
}

impl SourceKind for DumpConfig {
    const KIND: &str = "dump";
    const SUMMARY: &str = "a recorded `.cbors` dump played as a live source";
    const BRACKETS_SERIES: bool = true;

    fn build(&self, _: &str, _: &zmq::Context) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(Dump::new(self)?))
    }

    /// Unknown without `streams`: the first record says, and the file may be on another host
    /// than the one checking the pipeline.
    fn stream_names(&self, _: &str) -> Option<Vec<StreamName>> {
        (!self.streams.is_empty()).then(|| self.streams.clone())
    }
}

impl Dump {
    /// Opens the dump to learn its streams.
    pub fn new(config: &DumpConfig) -> Result<Self, SourceError> {
        let streams = if config.streams.is_empty() {
            let mut reader = open(config)?;
            match reader.next() {
                Some(Ok(event)) => event.streams.into_keys().collect(),
                _ => Vec::new(),
            }
        } else {
            config.streams.clone()
        };
        Ok(Self {
            config: config.clone(),
            streams,
            reader: None,
            pending: VecDeque::new(),
            counters: BTreeMap::new(),
            pace: Pace::new(config.rate_hz),
            bad_records: 0,
        })
    }
}

fn open(config: &DumpConfig) -> Result<DumpReader<Box<dyn std::io::Read + Send>>, SourceError> {
    DumpReader::open(&config.path).map_err(|error| SourceError::Open {
        path: config.path.display().to_string(),
        error,
    })
}

impl Source for Dump {
    fn streams(&self) -> Vec<StreamName> {
        self.streams.clone()
    }

    fn start_scan(
        &mut self,
        _frames: &BTreeMap<StreamName, std::ops::Range<u64>>,
    ) -> Result<(), SourceError> {
        self.reader = Some(open(&self.config)?);
        self.pending.clear();
        self.counters.clear();
        self.pace.restart();
        Ok(())
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<SourceFrame>, SourceError> {
        while self.pending.is_empty() {
            let Some(reader) = self.reader.as_mut() else {
                std::thread::sleep(timeout);
                return Ok(None);
            };
            if !self.pace.wait(timeout) {
                return Ok(None);
            }
            match reader.next() {
                None => {
                    self.reader = None;
                }
                Some(Err(error)) => {
                    self.bad_records += 1;
                    if self.bad_records == 1 {
                        warn!(path = %self.config.path.display(), %error, "Bad dump record skipped (counted from now on).");
                    }
                    if !error.is_recoverable() {
                        self.reader = None;
                    }
                }
                Some(Ok(event)) => {
                    for (stream, data) in event.streams {
                        if !self.streams.contains(&stream) {
                            continue;
                        }
                        let counter = self.counters.entry(stream.clone()).or_default();
                        self.pending.push_back(SourceFrame {
                            stream,
                            index: *counter,
                            data,
                            taken_at: None,
                        });
                        *counter += 1;
                    }
                }
            }
        }
        Ok(self.pending.pop_front())
    }
}
