//! Parsers for the stream protocols beamflow ingests, one file each (dranspose `middlewares/`).

pub mod bluesky;
pub mod bslz4;
pub mod pv;
pub mod stins;
