//! Ingesters: one per source (a ZeroMQ detector stream, EPICS process variables, a dump file,
//! a simulator).
//! Each numbers its source's frames by the source's own counter, sends each frame to the
//! workers the controller leased its event to, keeps it until the reducer has the event (so a
//! dead worker's events can be re-sent), and can record every handled event to a `.cbors` dump.
//!
//! # Layout
//!
//! - [`Source`]: what a source implements; [`SourceKind`], what its config knows before it
//!   connects; [`sources`], one file per source and the registry, [`IngesterConfig`], keyed
//!   by the pipeline file's `kind`.
//! - [`core`]: leases, frame placement, gaps, retention and re-sending, without sockets.
//! - [`node`]: the ingester process's loop around a source and the core.
//! - [`recording`]: handled events to `.cbors` dumps (`dump_prefix`).

pub mod core;
pub mod node;
pub mod recording;
pub mod sources;

pub use sources::{IngesterConfig, KINDS};

use std::collections::BTreeMap;
use std::time::Duration;

use beamflow_net::TransportError;
use beamflow_protocol::{StreamData, StreamName, Timestamp};

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
    /// When the source says the frame was taken (an `epics_ca` trigger PV's time stamp); its
    /// event's `created_at`. `None`: when the ingester places it, which for a lagging source
    /// is later than the truth.
    pub taken_at: Option<Timestamp>,
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
    /// One key of the `[ingesters.<name>]` table cannot be used.
    #[error("{key}: {message}")]
    Table {
        /// The key in the table, dotted as TOML writes it (`pvs."otr2".dtype`).
        key: String,
        /// What is wrong there.
        message: String,
    },
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

    /// A scan starts with these frames of each stream: `0..count`, or, for an ingester that
    /// restarted mid-scan, what is left of it (a simulator produces them, numbered so; a live
    /// detector ignores it). What the source holds from before the scan is not the scan's.
    fn start_scan(
        &mut self,
        _frames: &BTreeMap<StreamName, std::ops::Range<u64>>,
    ) -> Result<(), SourceError> {
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

/// What a source's config knows about its kind before anything connects. Implemented by each
/// `<Name>Config` in the source's own file; its line in the registry in [`sources`] does the
/// rest.
pub trait SourceKind {
    /// The pipeline file's `kind`, the file stem.
    const KIND: &'static str;
    /// What it reads, in one line: the crate README's row for it says exactly this.
    const SUMMARY: &'static str;
    /// Whether the source opens and closes a series with messages of their own (STINS header
    /// and end), which a wrapped sequence's start and end events are for. PV sources have none.
    /// No default: a wrong answer either way breaks sequences silently.
    const BRACKETS_SERIES: bool;

    /// Builds the source, after [`check`](Self::check); `name` is the ingester's name (the
    /// default stream name).
    fn build(&self, name: &str, context: &zmq::Context) -> Result<Box<dyn Source>, SourceError>;

    /// The streams the source offers, `name` being the ingester's; `None` when only the source
    /// knows (a dump without `streams`: its first record says, and the file may be on another
    /// host than the one checking the pipeline).
    fn stream_names(&self, name: &str) -> Option<Vec<StreamName>>;

    /// The streams the table names, each with its key (`clock.stream`): each must be one this
    /// ingester offers.
    fn streams_named(&self) -> Vec<(String, StreamName)> {
        Vec::new()
    }

    /// What building refuses before it connects: unknown `dtype` names, a clock rate out of
    /// range. The error names the key.
    fn check(&self) -> Result<(), SourceError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> IngesterConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn each_kind_is_its_variant_in_snake_case() {
        let error = toml::from_str::<IngesterConfig>("kind = \"no_such_kind\"").unwrap_err();
        let accepted: Vec<&str> = KINDS.iter().map(|(kind, _)| *kind).collect();
        let listed = error.to_string();
        let listed: Vec<&str> = listed.split('`').skip(3).step_by(2).collect();
        assert_eq!(listed, accepted, "{error}");
    }

    #[test]
    fn only_pv_sources_do_not_bracket_a_series() {
        let brackets = |text: &str| config(text).brackets_series();
        assert!(brackets("kind = \"sim\""));
        assert!(brackets("kind = \"dump\"\npath = \"x.cbors\""));
        assert!(brackets("kind = \"zmq_stins\"\nupstream = \"tcp://h:1\""));
        assert!(!brackets(
            "kind = \"epics_ca\"\nclock = { kind = \"period\", rate_hz = 10 }\npvs = {}"
        ));
    }

    #[test]
    fn streams_are_known_without_building_but_for_a_dump_that_does_not_list_them() {
        let names = |text: &str| config(text).stream_names("det");
        let det = Some(vec![StreamName::from("det")]);
        assert_eq!(names("kind = \"zmq_stins\"\nupstream = \"tcp://h:1\""), det);
        assert_eq!(
            names("kind = \"zmq_stins\"\nupstream = \"tcp://h:1\"\nstream = \"eiger\""),
            Some(vec!["eiger".into()])
        );
        assert_eq!(names("kind = \"sim\""), det);
        assert_eq!(names("kind = \"dump\"\npath = \"x.cbors\""), None);
        assert_eq!(
            names("kind = \"dump\"\npath = \"x.cbors\"\nstreams = [\"a\"]"),
            Some(vec!["a".into()])
        );
        let ca = config(
            "kind = \"epics_ca\"\nclock = { kind = \"trigger\", stream = \"img\" }\npvs = { img = { pv = \"I\" }, q = { pv = \"Q\" } }",
        );
        assert_eq!(ca.stream_names("x"), Some(vec!["img".into(), "q".into()]));
        assert_eq!(
            ca.streams_named(),
            [("clock.stream".to_owned(), StreamName::from("img"))]
        );
    }

    #[test]
    fn a_bad_dtype_or_clock_rate_is_refused_at_its_key_before_connecting() {
        let error = config(
            "kind = \"epics_ca\"\nclock = { kind = \"period\", rate_hz = 10 }\npvs = { img = { pv = \"I\", dtype = \"uint61\" } }",
        )
        .check()
        .unwrap_err();
        assert!(
            error.to_string().starts_with(
                "pvs.\"img\".dtype: unknown dtype \"uint61\"; expected a numpy type name"
            ),
            "{error}"
        );
        let error = config(
            "kind = \"epics_ca\"\nclock = { kind = \"period\", rate_hz = 0 }\npvs = { img = { pv = \"I\" } }",
        )
        .build("ca", &zmq::Context::new())
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "clock.rate_hz: must be above 0 and at most 100000, got 0"
        );
    }
}
