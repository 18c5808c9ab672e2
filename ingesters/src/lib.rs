//! Ingesters: one per source (EPICS PVs, a ZeroMQ detector stream, a dump file, a simulator).
//! Each cuts its input into numbered events, validates the source's own frame numbers, records a
//! `.cbors` dump and forwards frames unmodified to the worker(s) the controller assigned.
//!
//! Nothing lives here yet: the runtime (issue #3) adds the `Ingester` trait and
//! `sources/<transport>_<protocol>.rs`. Stream parsers already live in
//! `beamflow_protocol::streams`, and dumps in `beamflow_protocol::dump`.
