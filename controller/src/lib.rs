//! The controller: turns a scan's mapping into assignments under its constraints, leases them in
//! batches to workers with capacity, tracks liveness and progress, and serves the
//! dranspose-compatible REST API.
//!
//! # Layout
//!
//! - [`mapping`]: the dranspose mapping/sequence JSON, validated, and questions about it.
//! - [`route`]: which real workers get each stream's frame of each event.
//! - [`scan`]: a scan's leases, window, liveness and re-routing after a worker dies.
//!
//! Leasing, liveness and the REST API arrive with the rest of the runtime (issue #3).

pub mod mapping;
pub mod route;
pub mod ensemble;
pub mod scan;
