//! End-to-end tests of the `beamflow` binary and its interoperability with dranspose, one module
//! per area (ripgrep's `tests/tests.rs`).

// Test code may panic on what it set up itself.
#![allow(clippy::unwrap_used)]

mod bluesky;
mod curve;
mod dashboard;
mod docs;
mod emittance;
mod epics;
mod faults;
mod hdf5;
mod helm;
mod interop;
mod mapping;
mod model_cli;
mod own_pipeline;
mod pipeline_check;
mod pva;
mod python_payloads;
mod quad_scan;
mod replay_cli;
mod result_pvs;
mod runtime;
mod scan_view_page;
mod security;
mod util;
mod what_if;
