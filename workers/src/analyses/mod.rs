//! The analysis registry: one variant per analysis, keyed by the pipeline file's `kind`.
//!
//! To add an analysis: write `analyses/<name>.rs` with a `<Name>Config` and an `impl Analysis`,
//! then add one variant here and one arm in [`AnalysisConfig::build`].

pub mod beam_image;
pub mod frame_stats;
pub mod pv_values;
pub mod surrogate;

use beamflow_protocol::streams::pv::{self, PvFrame};
use beamflow_protocol::streams::stins::{self, StinsMessage};
use beamflow_protocol::{EventNumber, NdArray, StreamData, StreamName};
use serde::Deserialize;

use crate::check::{ResultKeys, TableError};
use crate::{AnalysisError, DynAnalysis};

/// The array a stream carries in this event, with its frame number: a STINS image (its
/// `frame`) or a PV's value (the event's number). `None` for STINS header and end messages and
/// for streams of other types.
pub(crate) fn array_of(
    name: &StreamName,
    stream: &StreamData,
    event: EventNumber,
) -> Result<Option<(u64, NdArray)>, AnalysisError> {
    match stream.typ.as_str() {
        stins::TYP => match stins::parse(stream).map_err(|error| AnalysisError::Stins {
            stream: name.clone(),
            error,
        })? {
            StinsMessage::Image { frame, data, .. } => Ok(Some((frame, data))),
            _ => Ok(None),
        },
        pv::TYP => PvFrame::parse(&stream.frames)
            .map(|frame| Some((event.0, frame.value)))
            .map_err(|error| AnalysisError::Invalid(format!("stream {name}: {error}"))),
        _ => Ok(None),
    }
}

/// The first element of a PV stream's value, with its frame: how analyses read a scalar PV
/// carried in the event (a quad readback, a model input). The error says why there is none.
pub(crate) fn pv_scalar(stream: &StreamData) -> Result<(f64, PvFrame), String> {
    if stream.typ.as_str() != pv::TYP {
        return Err(format!("a {} stream, not a PV", stream.typ));
    }
    let frame = PvFrame::parse(&stream.frames).map_err(|error| error.to_string())?;
    let value = frame.value.to_f64().first().copied().ok_or("no elements")?;
    Ok((value, frame))
}

/// One `[analyses.<name>]` table of the pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnalysisConfig {
    /// Per stream and frame: shape, sum, mean, min, max.
    FrameStats(frame_stats::FrameStatsConfig),
    /// EPICS PV values with alarm and time stamp.
    PvValues(pv_values::PvValuesConfig),
    /// Beam sizes and centroids from a screen image, with per-shot gates.
    BeamImage(beam_image::BeamImageConfig),
    /// A surrogate model evaluated on the event's PV values.
    Surrogate(surrogate::SurrogateConfig),
}

impl AnalysisConfig {
    /// Builds the analysis this table describes; the error says why it cannot be.
    pub fn build(&self) -> Result<Box<dyn DynAnalysis>, String> {
        Ok(match self {
            AnalysisConfig::FrameStats(config) => {
                Box::new(frame_stats::FrameStats::new(config.clone()))
            }
            AnalysisConfig::PvValues(config) => Box::new(pv_values::PvValues::new(config.clone())),
            AnalysisConfig::BeamImage(config) => {
                Box::new(beam_image::BeamImage::new(config.clone())?)
            }
            AnalysisConfig::Surrogate(config) => Box::new(surrogate::Surrogate::new(config)?),
        })
    }

    /// The `kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            AnalysisConfig::FrameStats(_) => "frame_stats",
            AnalysisConfig::PvValues(_) => "pv_values",
            AnalysisConfig::BeamImage(_) => "beam_image",
            AnalysisConfig::Surrogate(_) => "surrogate",
        }
    }
}

/// What a pipeline check asks of a table before anything runs.
impl AnalysisConfig {
    /// The streams this table names, each with its key in the table (`attach[0]`): each must be
    /// one the pipeline's ingesters offer.
    pub fn streams_named(&self) -> Vec<(String, StreamName)> {
        match self {
            AnalysisConfig::FrameStats(config) => config.streams_named(),
            AnalysisConfig::PvValues(config) => config.streams_named(),
            AnalysisConfig::BeamImage(config) => config.streams_named(),
            AnalysisConfig::Surrogate(config) => config.streams_named(),
        }
    }

    /// Runs the checks [`build`](Self::build) runs (a surrogate loads its model) and says what
    /// the results can hold; the error names the key at fault.
    pub fn check(&self) -> Result<ResultKeys, TableError> {
        Ok(match self {
            AnalysisConfig::FrameStats(config) => config.result_keys(),
            AnalysisConfig::PvValues(config) => config.result_keys(),
            AnalysisConfig::BeamImage(config) => {
                config.check()?;
                config.result_keys()
            }
            AnalysisConfig::Surrogate(config) => {
                surrogate::Surrogate::checked(config)?.result_keys()
            }
        })
    }
}
