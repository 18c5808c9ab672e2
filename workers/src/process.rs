//! The analyses of a pipeline, built once and run on each event: the one code path that a live
//! worker and a replay share, so both turn an event into the same report.

use std::collections::BTreeMap;
use std::sync::Arc;

use beamflow_protocol::{
    AnalysisName, EventData, EventReport, ParameterDescription, Parameters, ResultData, WorkerName,
};

use crate::{AnalysisConfig, AnalysisError, DynAnalysis};

/// Every analysis of a pipeline, by name.
pub struct Analyses {
    list: Vec<(AnalysisName, Box<dyn DynAnalysis>)>,
}

/// An analysis that failed on an event: logged and counted by the caller, never fatal.
#[derive(Debug)]
pub struct Failure {
    /// The analysis.
    pub analysis: AnalysisName,
    /// Why.
    pub error: AnalysisError,
}

impl Analyses {
    /// Builds every analysis of the pipeline file.
    pub fn build(configs: &BTreeMap<AnalysisName, AnalysisConfig>) -> Self {
        Self {
            list: configs
                .iter()
                .map(|(name, config)| (name.clone(), config.build()))
                .collect(),
        }
    }

    /// The parameters every analysis declares.
    pub fn describe_parameters(&self) -> Vec<ParameterDescription> {
        self.list
            .iter()
            .flat_map(|(_, a)| a.describe_parameters())
            .collect()
    }

    /// Runs every analysis on `event`: one report with every result, and the failures.
    pub fn process(
        &self,
        event: &EventData,
        parameters: &Parameters,
        worker: &WorkerName,
    ) -> (EventReport, Vec<Failure>) {
        let mut results = Vec::new();
        let mut failures = Vec::new();
        for (name, analysis) in &self.list {
            match analysis.process(event, parameters) {
                Ok(Some(payload)) => results.push(ResultData {
                    event_number: event.event_number,
                    analysis: name.clone(),
                    worker: worker.clone(),
                    created_at: event.created_at,
                    payload: Arc::new(payload),
                }),
                Ok(None) => {}
                Err(error) => failures.push(Failure {
                    analysis: name.clone(),
                    error,
                }),
            }
        }
        let report = EventReport {
            event_number: event.event_number,
            worker: worker.clone(),
            results,
            missing: Vec::new(),
        };
        (report, failures)
    }

    /// Calls every analysis' `finish`.
    pub fn finish(&self, parameters: &Parameters) {
        for (_, analysis) in &self.list {
            analysis.finish(parameters);
        }
    }
}
