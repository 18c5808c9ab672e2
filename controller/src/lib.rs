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
//! - `kubernetes` and `autoscale` (feature `kubernetes`): the Helm release's pods and worker
//!   Deployment, and the autoscaler that sizes it from [`scaling`]'s policy.
//! - [`quad_scan`]: the quad-scan driver (`beamflow scan quad`, `/api/v1/scan/quad`).
//! - [`recording`]: the mapping and parameter files written beside the dumps.

#[cfg(feature = "kubernetes")]
pub mod autoscale;
pub mod ensemble;
pub mod http;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod mapping;
pub mod node;
pub mod quad_scan;
pub mod recording;
pub mod route;
pub mod scaling;
pub mod scan;
