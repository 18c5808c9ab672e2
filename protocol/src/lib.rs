//! beamflow's wire types and their encodings: what every other crate agrees on.
//!
//! Typed inside, bytes only at the edge: every function here is a pure conversion between bytes
//! and values; no sockets, no threads.
//!
//! # Why minicbor
//!
//! Dumps must keep CBOR tags (55799, 42877, 42878) and carry large frames. `minicbor`'s native
//! decoder exposes tags directly and borrows byte strings from the input, so a frame in a dump is
//! a `Bytes` slice of the read buffer, never copied; it was also the fastest of the surveyed
//! crates. `ciborium` is simpler through serde but copies every byte string, and
//! `serde_cbor` is archived and drops tags. Analysis outputs become [`Value`] trees through serde
//! and travel as CBOR written by the same crate, so one CBOR implementation serves everything.
//!
//! # Layout
//!
//! - [`ids`]: `EventNumber`, `StreamName`, `WorkerName`, ... newtypes.
//! - [`event`]: `StreamData`, `EventData` with its readers (`image`, `scalar`, ...),
//!   `ResultData`.
//! - [`value`]: `Value`, the self-describing tree results and reducer state are made of.
//! - [`parameters`]: typed parameters and dranspose parameter files.
//! - [`payload`]: how a pipeline names a Python payload's class and contract.
//! - [`mod@array`]: `NdArray`, typed shaped frames.
//! - [`dump`]: `.cbors` dump reading (streaming, zero-copy) and writing.
//! - [`message`]: CBOR encoding of event parts, reports and results.
//! - [`control`]: the control messages between components and the controller.
//! - [`streams`]: stream protocol parsers (`stins`, `bslz4`).

pub mod array;
pub mod control;
pub mod dump;
pub mod error;
pub mod event;
pub mod ids;
pub mod message;
pub mod parameters;
pub mod payload;
mod scan;
pub mod streams;
pub mod value;

pub use array::{DType, NdArray, bin_mean};
pub use error::CborError;
pub use event::{EventData, EventReport, ReadError, ResultData, StreamData};
pub use ids::{
    AnalysisName, EventNumber, IngesterName, ParameterName, StreamName, StreamType, WorkerName,
    WorkerTag,
};
/// Time stamps (`created_at`) are `jiff` timestamps: UTC instants with RFC 3339 text forms.
pub use jiff::Timestamp;
pub use parameters::{ParameterDescription, ParameterType, ParameterValue, Parameters};
pub use value::Value;
