//! The analysis registry: one variant per analysis, keyed by the pipeline file's `kind`.
//!
//! To add an analysis: write `analyses/<name>.rs` with a `<Name>Config` that implements
//! [`AnalysisKind`] and a struct that implements [`Analysis`](crate::Analysis), then add its
//! line in `registry!` below (which declares the module too).

use beamflow_protocol::streams::pv::{self, PvFrame};
use beamflow_protocol::streams::stins::{self, StinsMessage};
use beamflow_protocol::{
    EventNumber, NdArray, ParameterDescription, StreamData, StreamName, StreamType,
};
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

/// The `[height, width]` of an image array: `[h, w]`, or `[1, h, w]` (a stack of one frame). The
/// error names the stream and the shape it has instead (a waveform, a stack).
pub(crate) fn image_size(name: &StreamName, image: &NdArray) -> Result<[usize; 2], AnalysisError> {
    match image.shape() {
        [h, w] | [1, h, w] => Ok([*h, *w]),
        other => Err(AnalysisError::Invalid(format!(
            "stream {name}: a 2-D image is needed, got shape {other:?} of {}",
            image.dtype().name()
        ))),
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

/// What an analysis's config knows about its kind before anything is built: the facts the
/// registry, a pipeline check and the controller ask for. Implemented by each `<Name>Config`
/// in the analysis's own file; the registry line in `registry!` does the rest.
pub trait AnalysisKind {
    /// The pipeline file's `kind`, the file stem.
    const KIND: &'static str;
    /// What it gives per event, in one line: the crate README's row for it says exactly this.
    const SUMMARY: &'static str;

    /// Builds the analysis; the error names the key at fault.
    fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError>;

    /// Whether it reads `stream` (of type `typ`) when an event carries it, from its table
    /// alone: by name where the table names streams, else by type. A stream it picks by content
    /// (a PV image, a long waveform) counts as read, so a stream said to be read by no analysis
    /// really is not. By default every stream counts as read.
    fn reads_stream(&self, _stream: &StreamName, _typ: &StreamType) -> bool {
        true
    }

    /// The streams the table names, each with its key in the table (`attach[0]`): each must be
    /// one the pipeline's ingesters offer.
    fn streams_named(&self) -> Vec<(String, StreamName)> {
        Vec::new()
    }

    /// Runs the checks [`build`](Self::build) runs (a surrogate loads its model) and says what
    /// the results can hold; the error names the key at fault. By default nothing is refused
    /// and the results can hold anything.
    fn check(&self) -> Result<ResultKeys, TableError> {
        Ok(ResultKeys::Unknown)
    }

    /// The parameters it reads, with their types and defaults: from the table, so describing
    /// them builds nothing (and loads no model).
    fn describe_parameters(&self) -> Vec<ParameterDescription> {
        Vec::new()
    }
}

/// From one line per analysis, `Variant(module::Config)`, the `[analyses.<name>]` config enum
/// (its `kind` is the variant in snake_case, checked against [`AnalysisKind::KIND`] by a test),
/// the dispatch to [`AnalysisKind`], and [`KINDS`].
macro_rules! registry {
    ($($variant:ident($module:ident::$config:ident)),+ $(,)?) => {
        $(pub mod $module;)+

        /// One `[analyses.<name>]` table of the pipeline file; `kind` picks the analysis.
        ///
        /// Non-exhaustive: code outside the crate that matches on kinds says what it does for
        /// one added later, so adding one touches only its file and its registry line.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum AnalysisConfig {
            $(
                #[doc = concat!("`", stringify!($module), "`: [`", stringify!($module), "::",
                    stringify!($config), "`].")]
                $variant($module::$config),
            )+
        }

        /// Every analysis `kind` with its summary, in registry order.
        pub const KINDS: &[(&str, &str)] = &[
            $((<$module::$config as AnalysisKind>::KIND, <$module::$config as AnalysisKind>::SUMMARY),)+
        ];

        impl AnalysisConfig {
            /// The `kind` name.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(AnalysisConfig::$variant(_) => <$module::$config as AnalysisKind>::KIND,)+
                }
            }

            /// See [`AnalysisKind::build`].
            pub fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError> {
                match self {
                    $(AnalysisConfig::$variant(config) => config.build(),)+
                }
            }

            /// See [`AnalysisKind::reads_stream`].
            pub fn reads_stream(&self, stream: &StreamName, typ: &StreamType) -> bool {
                match self {
                    $(AnalysisConfig::$variant(config) => config.reads_stream(stream, typ),)+
                }
            }

            /// See [`AnalysisKind::streams_named`].
            pub fn streams_named(&self) -> Vec<(String, StreamName)> {
                match self {
                    $(AnalysisConfig::$variant(config) => config.streams_named(),)+
                }
            }

            /// See [`AnalysisKind::check`].
            pub fn check(&self) -> Result<ResultKeys, TableError> {
                match self {
                    $(AnalysisConfig::$variant(config) => config.check(),)+
                }
            }

            /// See [`AnalysisKind::describe_parameters`].
            pub fn describe_parameters(&self) -> Vec<ParameterDescription> {
                match self {
                    $(AnalysisConfig::$variant(config) => config.describe_parameters(),)+
                }
            }
        }
    };
}

registry! {
    FrameStats(frame_stats::FrameStatsConfig),
    PvValues(pv_values::PvValuesConfig),
    PvLinear(pv_linear::PvLinearConfig),
    BeamImage(beam_image::BeamImageConfig),
    Surrogate(surrogate::SurrogateConfig),
    Centroid(centroid::CentroidConfig),
    Frame(frame::FrameConfig),
    Bluesky(bluesky::BlueskyConfig),
    Python(python::PythonConfig),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_its_variant_in_snake_case() {
        let error = toml::from_str::<AnalysisConfig>("kind = \"no_such_kind\"").unwrap_err();
        let accepted: Vec<&str> = KINDS.iter().map(|(kind, _)| *kind).collect();
        let listed = error.to_string();
        let listed: Vec<&str> = listed.split('`').skip(3).step_by(2).collect();
        assert_eq!(listed, accepted, "{error}");
    }

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
