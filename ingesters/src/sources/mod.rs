//! One file per source. To add one: write `sources/<transport>_<protocol>.rs` with a config and
//! an `impl Source`, then add one variant to [`crate::IngesterConfig`] and one arm in its `build`.

pub mod dump;
pub mod sim;
pub mod zmq_stins;
