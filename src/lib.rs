//! The `beamflow` command and its shared pieces. The stock binary (`main.rs`) and the Python
//! wheel's `beamflow` (`python/wheel`) both run [`cli::main`].
//!
//! # Layout
//!
//! - [`cli`]: the command line: parses arguments and calls the component libraries.
//! - [`python`]: handing a command with Python payloads over to their environment's `beamflow`.
//! - [`pipeline`]: the one TOML file that describes a beamline's pipeline.
//! - [`components`]: starting components from it, in one process or one each.
//! - [`sim_ioc`]: the simulated LCLS injector served over Channel Access (`beamflow_sim::ioc`).

pub mod cli;
pub mod components;
pub mod pipeline;
pub mod python;
// The simulated injector's old path in this crate, which the integration tests use.
pub use beamflow_sim::ioc as sim_ioc;
