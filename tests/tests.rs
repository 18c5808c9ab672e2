//! End-to-end tests of the `beamflow` binary and its interoperability with dranspose, one module
//! per area (ripgrep's `tests/tests.rs`).

mod interop;
mod replay_cli;
mod util;
