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
use beamflow_protocol::{EventNumber, NdArray, StreamData, StreamName, StreamType};
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

    /// Whether this analysis reads `stream` (of type `typ`) when an event carries it, from its
    /// table alone: by name where the table names streams, else by type. A stream it picks by
    /// content (a PV image, a long waveform) counts as read, so a stream said to be read by no
    /// analysis really is not.
    pub fn reads_stream(&self, stream: &StreamName, typ: &StreamType) -> bool {
        match self {
            AnalysisConfig::FrameStats(config) => config.reads_stream(stream, typ),
            AnalysisConfig::PvValues(config) => config.reads_stream(stream, typ),
            AnalysisConfig::BeamImage(config) => config.reads_stream(stream),
            AnalysisConfig::Surrogate(config) => config.reads_stream(stream),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_analysis_says_which_streams_it_reads() {
        let analyses: std::collections::BTreeMap<String, AnalysisConfig> = toml::from_str(
            r#"
all_images = { kind = "frame_stats" }
listed = { kind = "frame_stats", streams = ["otr2"] }
pvs = { kind = "pv_values" }
some_pvs = { kind = "pv_values", streams = ["qe04"] }
beam = { kind = "beam_image", stream = "otr2", attach = ["qe04"] }
model = { kind = "surrogate", model = "builtin:lcls_cu_injector", inputs = { "QUAD:IN20:121:BCTRL" = "cq01" } }
"#,
        )
        .unwrap();
        let streams = [
            ("otr2", "EPICS_PV"),
            ("det", "STINS"),
            ("qe04", "EPICS_PV"),
            ("cq01", "EPICS_PV"),
            ("pcap", "PCAP"),
        ];
        let read: Vec<(&str, Vec<&str>)> = analyses
            .iter()
            .map(|(name, config)| {
                let read = streams
                    .iter()
                    .filter(|(stream, typ)| {
                        config.reads_stream(&StreamName::from(*stream), &StreamType::from(*typ))
                    })
                    .map(|(stream, _)| *stream)
                    .collect();
                (name.as_str(), read)
            })
            .collect();
        assert_eq!(
            read,
            [
                ("all_images", vec!["otr2", "det", "qe04", "cq01"]),
                ("beam", vec!["otr2", "qe04"]),
                ("listed", vec!["otr2"]),
                ("model", vec!["cq01"]),
                ("pvs", vec!["otr2", "qe04", "cq01"]),
                ("some_pvs", vec!["qe04"]),
            ]
        );
    }
}
