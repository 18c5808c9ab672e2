//! The analysis registry: one variant per analysis, keyed by the pipeline file's `kind`.
//!
//! To add an analysis: write `analyses/<name>.rs` with a `<Name>Config` and an `impl Analysis`,
//! then add one variant here and one arm in [`AnalysisConfig::build`].

pub mod frame_stats;
pub mod pv_values;

use serde::Deserialize;

use crate::DynAnalysis;

/// One `[analyses.<name>]` table of the pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnalysisConfig {
    /// Per stream and frame: shape, sum, mean, min, max.
    FrameStats(frame_stats::FrameStatsConfig),
    /// EPICS PV values with alarm and time stamp.
    PvValues(pv_values::PvValuesConfig),
}

impl AnalysisConfig {
    /// Builds the analysis this table describes.
    pub fn build(&self) -> Box<dyn DynAnalysis> {
        match self {
            AnalysisConfig::FrameStats(config) => {
                Box::new(frame_stats::FrameStats::new(config.clone()))
            }
            AnalysisConfig::PvValues(config) => Box::new(pv_values::PvValues::new(config.clone())),
        }
    }

    /// The `kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            AnalysisConfig::FrameStats(_) => "frame_stats",
            AnalysisConfig::PvValues(_) => "pv_values",
        }
    }
}
