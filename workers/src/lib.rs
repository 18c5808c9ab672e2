//! The analyses workers run on each event, behind one trait and one registry.
//!
//! # Layout
//!
//! - [`Analysis`]: what an analysis implements; [`DynAnalysis`], the object-safe form runtimes
//!   hold, which turns outputs into [`Value`] trees exactly as they travel to the reducer.
//! - [`analyses`]: the registry ([`AnalysisConfig`], keyed by the pipeline file's `kind`, one line
//!   per [`AnalysisKind`]) and one file per analysis.
//! - [`check`]: what a pipeline check learns from an analysis's table: the keys its results can
//!   hold, and mistakes located at a key.
//! - [`assembly`]: events assembled from ingesters' parts by event number, with deadlines.
//! - [`process`]: a pipeline's analyses run on one event, giving its report; shared by the live
//!   worker and replay.
//! - [`testing`]: an analysis run over a recorded `.cbors` dump, for tests.
//! - [`worker`]: a worker's loop body without sockets: leases and parts in, reports out.
//! - [`node`]: the worker process's socket loop around it.

pub mod analyses;
pub mod assembly;
pub mod check;
pub mod node;
pub mod process;
pub mod testing;
pub mod worker;

use beamflow_protocol::streams::stins::StinsError;
use beamflow_protocol::value::SerializeError;
use beamflow_protocol::{EventData, Parameters, ReadError, StreamName, Value};
use serde::Serialize;

pub use analyses::{AnalysisConfig, AnalysisKind};
pub use process::{Analyses, BuildError, Failure};

/// An analysis: turns one event into at most one output, with no state that matters across
/// events, so any worker (or replay thread) can process any event.
///
/// `process_event` takes `&self`: the issue's "workers are stateless" made a type-level rule, and
/// what lets replay run one instance on every thread and still produce identical results for any
/// thread count. (STYLE.md shows `&mut self`; the issue wins.)
///
/// The smallest analysis, and the template for new ones:
///
/// ```
/// use beamflow_protocol::{EventData, Parameters};
/// use beamflow_workers::{Analysis, AnalysisError};
///
/// /// Counts the streams present in each event.
/// struct StreamCount;
///
/// impl Analysis for StreamCount {
///     type Output = usize;
///
///     fn process_event(&self, event: &EventData, _: &Parameters) -> Result<Option<usize>, AnalysisError> {
///         Ok(Some(event.streams.len()))
///     }
/// }
///
/// let output = StreamCount.process_event(&EventData::new(beamflow_protocol::EventNumber(1)), &Parameters::default());
/// assert_eq!(output.unwrap(), Some(0));
/// ```
pub trait Analysis: Send + Sync + 'static {
    /// What the analysis produces per event; sent to the reducer as CBOR.
    type Output: Serialize;

    /// Processes one event. `Ok(None)` means "nothing to report for this event".
    fn process_event(
        &self,
        event: &EventData,
        parameters: &Parameters,
    ) -> Result<Option<Self::Output>, AnalysisError>;

    /// Processes several events queued together, one outcome each, in order. The default runs
    /// them one by one; a model overrides it to evaluate them as one batch.
    fn process_batch(
        &self,
        events: &[&EventData],
        parameters: &Parameters,
    ) -> Vec<Result<Option<Self::Output>, AnalysisError>> {
        events
            .iter()
            .map(|event| self.process_event(event, parameters))
            .collect()
    }

    /// Called once when a scan ends.
    fn finish(&self, _parameters: &Parameters) {}
}

/// Why an analysis could not process an event. The runtime logs it with the event number, counts
/// it and goes on with the next event.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// A stream's frames are not valid STINS.
    #[error("stream {stream}: {error}")]
    Stins {
        /// The stream.
        stream: StreamName,
        /// What the parser found.
        error: StinsError,
    },
    /// A stream could not be read as the analysis asked ([`EventData::image`], ...).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The output could not become a result tree.
    #[error("{0}")]
    Output(#[from] SerializeError),
    /// Anything else an analysis rejects, with its reason.
    #[error("{0}")]
    Invalid(String),
}

/// The object-safe form of [`Analysis`] that runtimes hold, producing outputs as [`Value`] trees.
pub trait DynAnalysis: Send + Sync {
    /// Processes one event and converts the output as a worker sends it.
    fn process(
        &self,
        event: &EventData,
        parameters: &Parameters,
    ) -> Result<Option<Value>, AnalysisError>;
    /// [`Analysis::process_batch`], converted as [`DynAnalysis::process`] converts.
    fn process_batch(
        &self,
        events: &[&EventData],
        parameters: &Parameters,
    ) -> Vec<Result<Option<Value>, AnalysisError>>;
    /// See [`Analysis::finish`].
    fn finish(&self, parameters: &Parameters);
    /// Called when a scan starts, before its first event, with its parameters. Rust analyses
    /// have nothing to do; a Python payload is instantiated per scan, as dranspose does.
    fn start_scan(&self, _parameters: &Parameters) {}
    /// Whether it must see events one at a time, in event order, from one thread: a Python
    /// payload keeps state between events (a scan's start message) and holds the one
    /// interpreter's lock anyway. Replay then runs the pipeline on one thread.
    fn in_order(&self) -> bool {
        false
    }
}

impl<A: Analysis> DynAnalysis for A {
    fn process(
        &self,
        event: &EventData,
        parameters: &Parameters,
    ) -> Result<Option<Value>, AnalysisError> {
        match self.process_event(event, parameters)? {
            Some(output) => Ok(Some(Value::from_serialize(&output)?)),
            None => Ok(None),
        }
    }

    fn process_batch(
        &self,
        events: &[&EventData],
        parameters: &Parameters,
    ) -> Vec<Result<Option<Value>, AnalysisError>> {
        Analysis::process_batch(self, events, parameters)
            .into_iter()
            .map(|outcome| match outcome? {
                Some(output) => Ok(Some(Value::from_serialize(&output)?)),
                None => Ok(None),
            })
            .collect()
    }

    fn finish(&self, parameters: &Parameters) {
        Analysis::finish(self, parameters);
    }
}
