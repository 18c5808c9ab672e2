//! The accumulator registry: one variant per accumulator, keyed by the pipeline file's `kind`.
//!
//! To add one: write `accumulators/<name>.rs` with a `<Name>Config` and an `impl Accumulator`,
//! then add one variant and one arm in each match below.

pub mod history;
pub mod last;
pub mod quad_scan;

use beamflow_protocol::AnalysisName;
use serde::Deserialize;

use crate::Accumulator;

/// One `[accumulators.<name>]` table of the pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccumulatorConfig {
    /// Bounded time series of named scalars.
    History(history::HistoryConfig),
    /// Latest value per key.
    Last(last::LastConfig),
    /// Live quad-scan emittance from beam sizes and quad readbacks.
    QuadScan(quad_scan::QuadScanConfig),
}

impl AccumulatorConfig {
    /// Builds the accumulator; the error says what is wrong with the table.
    pub fn build(&self) -> Result<Box<dyn Accumulator>, String> {
        Ok(match self {
            AccumulatorConfig::History(config) => Box::new(history::History::new(config.clone())?),
            AccumulatorConfig::Last(config) => Box::new(last::Last::new(config.clone())),
            AccumulatorConfig::QuadScan(config) => {
                Box::new(quad_scan::QuadScan::new(config.clone())?)
            }
        })
    }

    /// The analysis whose results it takes; all analyses when `None`.
    pub fn analysis(&self) -> Option<&AnalysisName> {
        match self {
            AccumulatorConfig::History(config) => config.analysis.as_ref(),
            AccumulatorConfig::Last(config) => config.analysis.as_ref(),
            AccumulatorConfig::QuadScan(config) => config.analysis.as_ref(),
        }
    }

    /// The `kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            AccumulatorConfig::History(_) => "history",
            AccumulatorConfig::Last(_) => "last",
            AccumulatorConfig::QuadScan(_) => "quad_scan",
        }
    }
}

/// What a pipeline check asks of a table before anything runs.
impl AccumulatorConfig {
    /// The paths of numbers it reads from its analysis's results, each with its key in the
    /// table (`values.mean`): each must be one the analysis can produce.
    pub fn result_paths(&self) -> Vec<(String, &str)> {
        match self {
            AccumulatorConfig::History(config) => config.result_paths(),
            AccumulatorConfig::Last(_) => Vec::new(),
            AccumulatorConfig::QuadScan(config) => config.result_paths(),
        }
    }
}
