//! `python`: a Python payload as an analysis, a dranspose worker class run unchanged
//! (`api = "dranspose"`) or beamflow's leaner contract (`api = "beamflow"`).
//!
//! The interpreter is not in this crate: the `beamflow` of a Python environment (the wheel,
//! `python/wheel`) installs its [`PythonRuntime`] at start-up. A `beamflow` without one refuses
//! the table with how to get one, so the stock binary needs no Python.

use std::path::PathBuf;
use std::sync::OnceLock;

use beamflow_protocol::payload::{PayloadApi, PayloadClass};
use beamflow_protocol::{ParameterDescription, StreamName, StreamType};
use serde::Deserialize;

use crate::DynAnalysis;
use crate::analyses::AnalysisKind;
use crate::check::{ResultKeys, TableError};

/// How a dranspose worker's results travel to the reducer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultForm {
    /// Pickled, as dranspose sends them: a Python accumulator gets the worker's own objects
    /// back (dataclasses, pydantic models), and only a Python accumulator can read them.
    #[default]
    Python,
    /// Converted to beamflow's value tree (dicts, lists, numbers, strings, numpy arrays; an
    /// error names anything else), so Rust accumulators and the JSON view read them.
    Value,
}

/// Configuration of `python`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonConfig {
    /// The payload's class.
    pub class: PayloadClass,
    /// The contract the class follows.
    #[serde(default)]
    pub api: PayloadApi,
    /// The folder the module is imported from; the working directory by default, as dranspose
    /// imports it.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How the results travel: for `api = "dranspose"` pickled unless `"value"` is asked
    /// for; beamflow's contract always converts.
    #[serde(default)]
    pub results: Option<ResultForm>,
}

impl PythonConfig {
    /// The folder the class is imported from.
    pub fn folder(&self) -> PathBuf {
        match &self.path {
            Some(path) => path.clone(),
            None => PathBuf::from("."),
        }
    }

    /// How its results travel.
    pub fn result_form(&self) -> ResultForm {
        match self.api {
            PayloadApi::Dranspose => self.results.unwrap_or_default(),
            PayloadApi::Beamflow => ResultForm::Value,
        }
    }
}

/// What runs Python analyses: installed once per process by a `beamflow` that has an
/// interpreter.
pub trait PythonRuntime: Send + Sync {
    /// Imports the class and builds the analysis (instantiated at each scan's start).
    fn build(&self, config: &PythonConfig) -> Result<Box<dyn DynAnalysis>, TableError>;
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

/// The process's Python runtime, or the error a table of kind `python` gets without one.
pub fn runtime() -> Result<&'static dyn PythonRuntime, TableError> {
    RUNTIME.get().copied().ok_or_else(|| {
        TableError::value(
            "kind",
            "this beamflow runs no Python: run the `beamflow` installed in the payload's Python \
             environment (pip install the beamflow wheel there, see python/README.md), or give \
             `--python <env>` to the stock binary so that it hands over to it",
        )
    })
}

/// Whether a Python runtime is installed in this process.
pub fn has_runtime() -> bool {
    RUNTIME.get().is_some()
}

impl PythonConfig {
    /// What the table alone can get wrong.
    fn check_table(&self) -> Result<(), TableError> {
        if self.api == PayloadApi::Beamflow && self.results == Some(ResultForm::Python) {
            return Err(TableError::value(
                "results",
                "beamflow's contract returns values, never pickles: drop `results`",
            ));
        }
        Ok(())
    }
}

impl AnalysisKind for PythonConfig {
    const KIND: &str = "python";
    const SUMMARY: &str = "a Python payload: a dranspose worker class unchanged (`api = \
        \"dranspose\"`, results pickled for a Python accumulator or converted) or beamflow's \
        contract (`api = \"beamflow\"`, frames without a copy, results as values)";

    fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError> {
        self.check_table()?;
        runtime()?.build(self)
    }

    fn reads_stream(&self, _: &StreamName, _: &StreamType) -> bool {
        true
    }

    fn check(&self) -> Result<ResultKeys, TableError> {
        self.check_table()?;
        if let Ok(runtime) = runtime() {
            runtime.describe_parameters(self)?;
        }
        Ok(ResultKeys::Unknown)
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
        let config: PythonConfig =
            toml::from_str("class = \"src.worker:Worker\"\napi = \"dranspose\"").unwrap();
        let error = config.build().err().unwrap();
        assert_eq!(error.key, "kind");
        assert!(error.message.contains("beamflow wheel"), "{error}");
        assert!(config.describe_parameters().is_empty());
    }

    #[test]
    fn a_class_without_its_module_is_refused_at_its_key() {
        let error = toml::from_str::<PythonConfig>("class = \"Worker\"").unwrap_err();
        assert!(error.to_string().contains("module.path:Class"), "{error}");
    }

    #[test]
    fn the_contract_is_dranspose_by_default_and_unknown_keys_are_refused() {
        let config: PythonConfig = toml::from_str("class = \"src.worker:W\"").unwrap();
        assert_eq!(config.api, PayloadApi::Dranspose);
        assert_eq!(config.result_form(), ResultForm::Python);
        let lean: PythonConfig =
            toml::from_str("class = \"a:B\"\napi = \"beamflow\"\nresults = \"python\"").unwrap();
        assert_eq!(lean.check().unwrap_err().key, "results");
        assert!(toml::from_str::<PythonConfig>("class = \"a:B\"\nclas = 1").is_err());
        assert!(toml::from_str::<PythonConfig>("class = \"a:B\"\napi = \"flask\"").is_err());
    }
}
