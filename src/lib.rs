//! The `beamflow` binary's shared pieces: the pipeline file. The binary itself (`main.rs`) only
//! parses arguments and calls the component libraries.
//!
//! # Layout
//!
//! - [`pipeline`]: the one TOML file that describes a beamline's pipeline.
//! - [`components`]: starting components from it, in one process or one each.
//! - [`sim_ioc`]: the simulated LCLS injector served over Channel Access (`beamflow_sim::ioc`).

pub mod components;
pub mod pipeline;
// The simulated injector's old path in this crate, which the integration tests use.
pub use beamflow_sim::ioc as sim_ioc;
