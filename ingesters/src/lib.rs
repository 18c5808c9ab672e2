//! Ingesters: one per source (a ZeroMQ detector stream, EPICS process variables, a dump file,
//! a simulator).
//! Each numbers its source's frames by the source's own counter, sends each frame to the
//! workers the controller leased its event to, keeps it until the reducer has the event (so a
//! dead worker's events can be re-sent), and can record every handled event to a `.cbors` dump.
//!
//! # Layout
//!
//! - [`Source`]: what a source implements; [`IngesterConfig`], the registry keyed by the
//!   pipeline file's `kind`, with one file per source in [`sources`].
//! - [`core`]: leases, frame placement, gaps, retention and re-sending, without sockets.
//! - [`node`]: the ingester process's loop around a source and the core.
//! - [`recording`]: handled events to `.cbors` dumps (`dump_prefix`).

pub mod core;
pub mod node;
pub mod recording;
pub mod sources;

use std::collections::BTreeMap;
use std::time::Duration;

use beamflow_net::TransportError;
use beamflow_protocol::{StreamData, StreamName};
use serde::Deserialize;

/// One frame of one stream, numbered by the source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFrame {
    /// The stream.
    pub stream: StreamName,
    /// Its index in the stream's series (0-based) by the source's own counter (STINS
    /// `msg_number` relative to the series header), so a lost frame leaves a gap.
    pub index: u64,
    /// The frames as the source sent them.
    pub data: StreamData,
}

/// Why a source could not give a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source sent something that is not a frame of its protocol: counted and skipped.
    #[error("stream {stream}: {message}")]
    Malformed {
        /// The stream.
        stream: StreamName,
        /// What was wrong.
        message: String,
    },
    /// The source cannot be read at all.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The source's configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// A dump cannot be opened.
    #[error("{path}: {error}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

/// A source of frames.
pub trait Source: Send {
    /// The streams it provides.
    fn streams(&self) -> Vec<StreamName>;

    /// A scan starts with this many frames per stream (a simulator starts a series that long;
    /// a live detector ignores it).
    fn start_scan(&mut self, _frames: &BTreeMap<StreamName, u64>) -> Result<(), SourceError> {
        Ok(())
    }

    /// No scan needs frames now. A live source keeps its connections and status current and
    /// lets go of what arrives, which would be stale by the next scan; a detector stream is
    /// left unread, so that it blocks (its frames belong to its series).
    fn idle(&mut self) {}

    /// The next frame, waiting at most `timeout`; `None` if none came.
    fn next_frame(&mut self, timeout: Duration) -> Result<Option<SourceFrame>, SourceError>;

    /// The source's own state for the ingester's status (connections, drops).
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// One `[ingesters.<name>]` table of the pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IngesterConfig {
    /// PULL from a STINS detector stream (MAX IV's `stream1`).
    ZmqStins(sources::zmq_stins::ZmqStinsConfig),
    /// Synthetic STINS images of a configured shape and rate.
    Sim(sources::sim::SimConfig),
    /// A recorded `.cbors` dump played as a live source.
    Dump(sources::dump::DumpConfig),
    /// EPICS process variables over Channel Access.
    EpicsCa(sources::epics_ca::EpicsCaConfig),
}

impl IngesterConfig {
    /// Builds the source; `name` is the ingester's name (the default stream name).
    pub fn build(
        &self,
        name: &str,
        context: &zmq::Context,
    ) -> Result<Box<dyn Source>, SourceError> {
        Ok(match self {
            IngesterConfig::ZmqStins(config) => Box::new(sources::zmq_stins::ZmqStins::connect(
                config, name, context,
            )?),
            IngesterConfig::Sim(config) => Box::new(sources::sim::Sim::new(config, name)),
            IngesterConfig::Dump(config) => Box::new(sources::dump::Dump::new(config)?),
            IngesterConfig::EpicsCa(config) => {
                Box::new(sources::epics_ca::EpicsCa::connect(config)?)
            }
        })
    }

    /// Whether the source opens and closes a series with messages of their own (STINS header
    /// and end), which a wrapped sequence's start and end events are for. PV sources have none.
    pub fn brackets_series(&self) -> bool {
        !matches!(self, IngesterConfig::EpicsCa(_))
    }

    /// The `kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            IngesterConfig::ZmqStins(_) => "zmq_stins",
            IngesterConfig::Sim(_) => "sim",
            IngesterConfig::Dump(_) => "dump",
            IngesterConfig::EpicsCa(_) => "epics_ca",
        }
    }
}
