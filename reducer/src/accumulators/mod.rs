//! The accumulator registry: one variant per accumulator, keyed by the pipeline file's `kind`.
//!
//! To add one: write `accumulators/<name>.rs` with a `<Name>Config` that implements
//! [`AccumulatorKind`] and a struct that implements [`Accumulator`], then add its line in
//! `registry!` below (which declares the module too).

use beamflow_protocol::{AnalysisName, ParameterDescription};
use serde::Deserialize;

use crate::Accumulator;
use crate::dashboard::Panel;

/// A mistake in one `[accumulators.<name>]` table, found when building it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TableError {
    /// The key at fault, as TOML writes it.
    pub key: &'static str,
    /// What is wrong, naming the key.
    pub message: String,
}

impl TableError {
    /// A mistake at `key`.
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// What an accumulator's config knows about its kind before anything is built. Implemented by
/// each `<Name>Config` in the accumulator's own file; the registry line in `registry!` does
/// the rest.
pub trait AccumulatorKind {
    /// The pipeline file's `kind`, the file stem.
    const KIND: &'static str;
    /// What it publishes, in one line: the crate README's row for it says exactly this.
    const SUMMARY: &'static str;

    /// Builds the accumulator; the error says what is wrong with the table.
    fn build(&self) -> Result<Box<dyn Accumulator>, TableError>;

    /// What a pipeline check finds wrong with the table; by default, what building it finds.
    fn check(&self) -> Result<(), TableError> {
        self.build().map(drop)
    }

    /// The analysis whose results it takes; all analyses when `None`.
    fn analysis(&self) -> Option<&AnalysisName>;

    /// An analysis whose results only this accumulator reads: the reducer gives them to no
    /// other accumulator and keeps them out of the checkpoint (a display frame, not state).
    fn claims(&self) -> Option<&AnalysisName> {
        None
    }

    /// The paths of numbers it reads from its analysis's results, each with its key in the
    /// table (`values.mean`): each must be one the analysis can produce.
    fn result_paths(&self) -> Vec<(String, &str)> {
        Vec::new()
    }

    /// The parameters it reads, with their types and defaults, from the table alone.
    fn describe_parameters(&self) -> Vec<ParameterDescription> {
        Vec::new()
    }

    /// How the dashboard shows its view: by default as JSON.
    fn panel(&self) -> Panel {
        Panel::Json {}
    }
}

/// From one line per accumulator, `Variant(module::Config)`, the `[accumulators.<name>]`
/// config enum (its `kind` is the variant in snake_case, checked against
/// [`AccumulatorKind::KIND`] by a test), the dispatch to [`AccumulatorKind`], and [`KINDS`].
macro_rules! registry {
    ($($variant:ident($module:ident::$config:ident)),+ $(,)?) => {
        $(pub mod $module;)+

        /// One `[accumulators.<name>]` table of the pipeline file; `kind` picks the accumulator.
        ///
        /// Non-exhaustive: code outside the crate that matches on kinds says what it does for
        /// one added later, so adding one touches only its file and its registry line.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum AccumulatorConfig {
            $(
                #[doc = concat!("`", stringify!($module), "`: [`", stringify!($module), "::",
                    stringify!($config), "`].")]
                $variant($module::$config),
            )+
        }

        /// Every accumulator `kind` with its summary, in registry order.
        pub const KINDS: &[(&str, &str)] = &[
            $((<$module::$config as AccumulatorKind>::KIND,
                <$module::$config as AccumulatorKind>::SUMMARY),)+
        ];

        impl AccumulatorConfig {
            /// The `kind` name.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(AccumulatorConfig::$variant(_) => <$module::$config as AccumulatorKind>::KIND,)+
                }
            }

            /// See [`AccumulatorKind::build`].
            pub fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
                match self {
                    $(AccumulatorConfig::$variant(config) => config.build(),)+
                }
            }

            /// See [`AccumulatorKind::check`].
            pub fn check(&self) -> Result<(), TableError> {
                match self {
                    $(AccumulatorConfig::$variant(config) => config.check(),)+
                }
            }

            /// See [`AccumulatorKind::analysis`].
            pub fn analysis(&self) -> Option<&AnalysisName> {
                match self {
                    $(AccumulatorConfig::$variant(config) => config.analysis(),)+
                }
            }

            /// See [`AccumulatorKind::claims`].
            pub fn claims(&self) -> Option<&AnalysisName> {
                match self {
                    $(AccumulatorConfig::$variant(config) => config.claims(),)+
                }
            }

            /// See [`AccumulatorKind::result_paths`].
            pub fn result_paths(&self) -> Vec<(String, &str)> {
                match self {
                    $(AccumulatorConfig::$variant(config) => config.result_paths(),)+
                }
            }

            /// See [`AccumulatorKind::panel`].
            pub fn panel(&self) -> Panel {
                match self {
                    $(AccumulatorConfig::$variant(config) => config.panel(),)+
                }
            }

            /// See [`AccumulatorKind::describe_parameters`].
            pub fn describe_parameters(&self) -> Vec<ParameterDescription> {
                match self {
                    $(AccumulatorConfig::$variant(config) => config.describe_parameters(),)+
                }
            }
        }
    };
}

registry! {
    History(history::HistoryConfig),
    Last(last::LastConfig),
    QuadScan(quad_scan::QuadScanConfig),
    Mean(mean::MeanConfig),
    Image(image::ImageConfig),
    ScanView(scan_view::ScanViewConfig),
    Python(python::PythonConfig),
    Collector(collector::CollectorConfig),
}

/// A map value of `entries`, for building views and their HDF5 attributes.
pub(crate) fn map<const N: usize>(
    entries: [(&str, beamflow_protocol::Value); N],
) -> beamflow_protocol::Value {
    beamflow_protocol::Value::Map(
        entries
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_its_variant_in_snake_case() {
        let error = toml::from_str::<AccumulatorConfig>("kind = \"no_such_kind\"").unwrap_err();
        let accepted: Vec<&str> = KINDS.iter().map(|(kind, _)| *kind).collect();
        let listed = error.to_string();
        let listed: Vec<&str> = listed.split('`').skip(3).step_by(2).collect();
        assert_eq!(listed, accepted, "{error}");
    }

    /// Every kind declares its panel; a kind added without one is shown as JSON, and this
    /// test names it so that the choice is made, not forgotten.
    #[test]
    fn every_kind_has_its_panel() {
        let tables = [
            (
                "history",
                "kind = \"history\"\nvalues = { a = \"x/a\" }\ntime_zone = \"UTC\"",
            ),
            ("last", "kind = \"last\""),
            (
                "quad_scan",
                "kind = \"quad_scan\"\nsetting = \"q\"\nenergy_ev = 1e8\nquad_length_m = 0.1\n\
                 rmat_x = [[1.0, 2.0], [0.0, 1.0]]\nrmat_y = [[1.0, 2.0], [0.0, 1.0]]",
            ),
            ("mean", "kind = \"mean\"\nvalue = \"x\""),
            (
                "image",
                "kind = \"image\"\nframes = \"otr2_frame\"\nbeam = \"otr2\"",
            ),
            (
                "scan_view",
                "kind = \"scan_view\"\ndocuments = \"documents\"",
            ),
            (
                "python",
                "kind = \"python\"\nclass = \"src.reducer:Reducer\"",
            ),
            ("collector", "kind = \"collector\"\nanalysis = \"pvs\""),
        ];
        let panels: Vec<(&str, Panel)> = tables
            .iter()
            .map(|(kind, table)| {
                let config: AccumulatorConfig = toml::from_str(table).unwrap();
                assert_eq!(config.kind(), *kind);
                (*kind, config.panel())
            })
            .collect();
        assert_eq!(
            panels.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(),
            KINDS.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(),
            "a table per kind, in registry order"
        );
        assert_eq!(
            panels,
            [
                (
                    "history",
                    Panel::History {
                        columns: vec!["a".to_owned()],
                        time_zone: Some("UTC".to_owned())
                    }
                ),
                ("last", Panel::Table {}),
                ("quad_scan", Panel::QuadScan {}),
                ("mean", Panel::Json {}),
                ("image", Panel::Image {}),
                ("scan_view", Panel::ScanView {}),
                // A payload's `publish` is whatever it builds.
                ("python", Panel::Json {}),
                // Its histories are plotted by the displays that read them as PVs.
                ("collector", Panel::Json {}),
            ]
        );
    }
}
