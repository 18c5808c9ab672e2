//! The controller: turns a scan's mapping into assignments under its constraints, leases them in
//! batches to workers with capacity, tracks liveness and progress, and serves the
//! dranspose-compatible REST API.
//!
//! # Layout
//!
//! - [`mapping`]: the dranspose mapping/sequence JSON, validated, and questions about it.
//! - [`route`]: which real workers get each stream's frame of each event.
//! - [`scan`]: a scan's leases, window, liveness and re-routing after a worker dies.
//! - [`ensemble`]: the connected components, parameters and the current scan; what to tell whom
//!   (its methods split by concern: membership, parameters, the scan lifecycle).
//! - [`node`]: the ROUTER socket loop around the ensemble.
//! - [`http`]: the dranspose-compatible REST API over the same ensemble, and its views of it.
//! - [`recording`]: the mapping and parameter files written beside the dumps.

pub mod ensemble;
pub mod http;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod mapping;
pub mod node;
pub mod recording;
pub mod route;
pub mod scaling;
pub mod scan;
