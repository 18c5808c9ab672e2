//! The controller: turns a scan's mapping into assignments under its constraints, leases them in
//! batches to workers with capacity, tracks liveness and progress, and serves the
//! dranspose-compatible REST API.
//!
//! Nothing lives here yet: it arrives with the runtime (issue #3).
