//! The pipeline file: one TOML file describes a beamline: its ingesters, analyses, accumulators,
//! and the controller's, workers' and reducer's settings. The same file drives `run`, the
//! separate processes, `replay`, and the Helm chart's values.
//!
//! ```toml
//! [ingesters.det]             # an ingester named "det" (its stream is "det" too)
//! kind = "zmq_stins"
//! upstream = "tcp://eiger-dcu:9999"
//!
//! [analyses.stats]            # an analysis named "stats"
//! kind = "frame_stats"
//!
//! [accumulators.history]      # served under /api/v1/result/history
//! kind = "history"
//! analysis = "stats"
//! values = { det_mean = "det/0/mean" }
//!
//! [controller]                # all optional; these are the defaults
//! control = "tcp://127.0.0.1:5555"
//! http = "127.0.0.1:5000"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use beamflow_ingesters::IngesterConfig;
use beamflow_protocol::{AnalysisName, IngesterName, WorkerTag};
use beamflow_reducer::AccumulatorConfig;
use beamflow_reducer::result_pvs::ResultPvsConfig;
use beamflow_workers::AnalysisConfig;
use serde::Deserialize;

/// A parsed pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// `[analyses.<name>]` tables: what workers compute per event.
    #[serde(default)]
    pub analyses: BTreeMap<AnalysisName, AnalysisConfig>,
    /// `[accumulators.<name>]` tables: what the reducer keeps, served under `<name>`.
    #[serde(default)]
    pub accumulators: BTreeMap<String, AccumulatorConfig>,
    /// `[ingesters.<name>]` tables: the sources.
    #[serde(default)]
    pub ingesters: BTreeMap<IngesterName, IngesterConfig>,
    /// `[controller]`: where it listens and how it paces scans.
    #[serde(default)]
    pub controller: ControllerSection,
    /// `[workers]`: how many `beamflow run` starts, and their settings.
    #[serde(default)]
    pub workers: WorkersSection,
    /// `[reducer]`: where it serves its state.
    #[serde(default)]
    pub reducer: ReducerSection,
}

/// `[controller]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSection {
    /// The control socket every component connects to (`tcp://host:port`; port 0 = any).
    pub control: String,
    /// The REST API's address (`host:port`; port 0 = any).
    pub http: String,
    /// Events leased ahead of the reducer at most: bounds every queue and the ingesters'
    /// retention.
    pub window: u64,
    /// Unfinished events per worker at most.
    pub worker_limit: u64,
}

impl Default for ControllerSection {
    fn default() -> Self {
        Self {
            control: "tcp://127.0.0.1:5555".to_owned(),
            http: "127.0.0.1:5000".to_owned(),
            window: 1024,
            worker_limit: 256,
        }
    }
}

/// `[workers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersSection {
    /// Workers `beamflow run` starts.
    pub count: usize,
    /// Their tags.
    pub tags: Vec<WorkerTag>,
    /// Milliseconds an event may wait for all its frames before it is processed incomplete.
    pub event_timeout_ms: u64,
    /// The address other hosts reach workers at (they bind a free port on it).
    pub host: String,
}

impl Default for WorkersSection {
    fn default() -> Self {
        Self {
            count: 2,
            tags: vec![WorkerTag::from("generic")],
            event_timeout_ms: 2000,
            host: "127.0.0.1".to_owned(),
        }
    }
}

/// `[reducer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReducerSection {
    /// The HTTP address of the state (`host:port`; port 0 = any).
    pub http: String,
    /// The address workers reach the reducer at (it binds a free port on it).
    pub host: String,
    /// `[reducer.pvs]`: state paths served as EPICS PVs.
    pub pvs: Option<ResultPvsConfig>,
}

impl Default for ReducerSection {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:5001".to_owned(),
            host: "127.0.0.1".to_owned(),
            pvs: None,
        }
    }
}

impl Pipeline {
    /// Reads and checks a pipeline file; errors name the file, line and column.
    /// A `.json` file is read as JSON (the Helm chart renders the pipeline so), anything else
    /// as TOML.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the pipeline file", path.display()))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Self::parse_json(&text)
        } else {
            Self::parse(&text)
        };
        parsed.with_context(|| format!("{}", path.display()))
    }

    /// Parses and checks a pipeline written as JSON (the same keys as the TOML).
    pub fn parse_json(text: &str) -> anyhow::Result<Self> {
        let pipeline: Pipeline = serde_json::from_str(text).map_err(|error| {
            anyhow::anyhow!("line {}, column {}: {error}", error.line(), error.column())
        })?;
        pipeline.check()
    }

    /// Parses and checks pipeline TOML.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let pipeline: Pipeline = toml::from_str(text).map_err(|error| {
            let place = error.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            });
            anyhow::anyhow!("{}{}", place.unwrap_or_default(), error.message())
        })?;
        pipeline.check()
    }

    /// What the types cannot say: accumulators name analyses that exist.
    fn check(self) -> anyhow::Result<Self> {
        let pipeline = self;
        for (name, accumulator) in &pipeline.accumulators {
            if let Some(source) = accumulator.analysis()
                && !pipeline.analyses.contains_key(source)
            {
                anyhow::bail!(
                    "accumulator {name} takes results from analysis {source}, which the file does not define"
                );
            }
        }
        Ok(pipeline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_place_and_what_was_expected() {
        let error = Pipeline::parse("[analyses.stats]\nkind = \"frame_statz\"\n").unwrap_err();
        // The list of kinds grows with every analysis; the place and the first are what matter.
        let text = format!("{error:#}");
        assert!(
            text.starts_with(
                "line 2, column 8: unknown variant `frame_statz`, expected one of `frame_stats`"
            ),
            "{text}"
        );
        let error = Pipeline::parse("[analyses.stats]\nkind = \"frame_stats\"\nstreamz = []\n")
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `streamz`"),
            "{error:#}"
        );
        let error = Pipeline::parse("[accumulators.h]\nkind = \"last\"\nanalysis = \"nope\"\n")
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "accumulator h takes results from analysis nope, which the file does not define"
        );
    }

    #[test]
    fn the_example_pipeline_parses() {
        let pipeline = Pipeline::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/pipeline.toml"
        )))
        .unwrap();
        assert_eq!(pipeline.analyses.len(), 1);
        assert_eq!(pipeline.accumulators.len(), 2);
    }
}
