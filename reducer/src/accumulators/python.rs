//! `python`: a Python payload as an accumulator, a dranspose reducer class run unchanged
//! (`api = "dranspose"`: `process_result`, `timer`, `finish`, its `publish` dict served live)
//! or beamflow's leaner contract (`api = "beamflow"`).
//!
//! As for analyses, the interpreter is not in this crate: the `beamflow` of a Python
//! environment installs its [`PythonRuntime`] at start-up, and a `beamflow` without one refuses
//! the table with how to get one.

use std::path::PathBuf;
use std::sync::OnceLock;

use beamflow_protocol::payload::{PayloadApi, PayloadClass};
use beamflow_protocol::{AnalysisName, ParameterDescription};
use serde::Deserialize;

use crate::Accumulator;
use crate::accumulators::{AccumulatorKind, TableError};

/// Configuration of `python`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonConfig {
    /// The payload's class.
    pub class: PayloadClass,
    /// The contract the class follows: for `beamflow`'s, `process_result` gets a dict
    /// `{event_number, analysis, worker, payload}` and the parameters are plain values.
    #[serde(default)]
    pub api: PayloadApi,
    /// The folder the module is imported from; the working directory by default.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Take results only from this analysis (default: all).
    #[serde(default)]
    pub analysis: Option<AnalysisName>,
}

impl PythonConfig {
    /// The folder the class is imported from.
    pub fn folder(&self) -> PathBuf {
        match &self.path {
            Some(path) => path.clone(),
            None => PathBuf::from("."),
        }
    }
}

/// What runs Python accumulators: installed once per process by a `beamflow` that has an
/// interpreter.
pub trait PythonRuntime: Send + Sync {
    /// Imports the class and builds the accumulator (instantiated with the scan's first
    /// parameters).
    fn build(&self, config: &PythonConfig) -> Result<Box<dyn Accumulator>, TableError>;
    /// Imports the class and reads its `describe_parameters`.
    fn describe_parameters(
        &self,
        config: &PythonConfig,
    ) -> Result<Vec<ParameterDescription>, TableError>;
}

static RUNTIME: OnceLock<&'static dyn PythonRuntime> = OnceLock::new();

/// Installs the process's Python runtime; a second call is ignored (there is one interpreter).
pub fn install(runtime: &'static dyn PythonRuntime) {
    let _ = RUNTIME.set(runtime);
}

fn runtime() -> Result<&'static dyn PythonRuntime, TableError> {
    RUNTIME.get().copied().ok_or_else(|| {
        TableError::new(
            "kind",
            "this beamflow runs no Python: run the `beamflow` installed in the payload's Python \
             environment (pip install the beamflow wheel there, see python/README.md), or give \
             `--python <env>` to the stock binary so that it hands over to it",
        )
    })
}

impl AccumulatorKind for PythonConfig {
    const KIND: &str = "python";
    const SUMMARY: &str = "a Python payload: a dranspose reducer class unchanged (`api = \
        \"dranspose\"`) or beamflow's contract; its `publish` dict, converted";

    fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
        runtime()?.build(self)
    }

    /// The class imported where there is an interpreter: a controller checks the pipeline
    /// without one.
    fn check(&self) -> Result<(), TableError> {
        match RUNTIME.get() {
            Some(runtime) => runtime.describe_parameters(self).map(drop),
            None => Ok(()),
        }
    }

    fn analysis(&self) -> Option<&AnalysisName> {
        self.analysis.as_ref()
    }

    fn describe_parameters(&self) -> Vec<ParameterDescription> {
        // An import error here is reported by `build`, with its traceback.
        runtime()
            .and_then(|runtime| runtime.describe_parameters(self))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_runtime_the_table_is_refused_with_the_way_to_run_it() {
        let config: PythonConfig = toml::from_str("class = \"src.reducer:Reducer\"").unwrap();
        let error = config.build().err().unwrap();
        assert_eq!(error.key, "kind");
        assert!(error.message.contains("beamflow wheel"), "{error}");
        assert!(toml::from_str::<PythonConfig>("class = \"Reducer\"").is_err());
        assert_eq!(config.check(), Ok(()), "a pipeline check needs no interpreter");
    }
}
