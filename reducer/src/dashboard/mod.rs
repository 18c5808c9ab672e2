//! The live dashboard's server side.

pub mod png;
