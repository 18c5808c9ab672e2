//! The analyses of a pipeline, built once and run on each event: the one code path that a live
//! worker and a replay share, so both turn an event into the same report.

use std::collections::BTreeMap;
use std::sync::Arc;

use beamflow_protocol::{
    AnalysisName, EventData, EventReport, ParameterDescription, Parameters, ResultData, WorkerName,
};

use crate::check::TableError;
use crate::{AnalysisConfig, AnalysisError, DynAnalysis};

/// The parameters the analyses of these tables read, from the tables alone: nothing is built,
/// so the controller describes a surrogate's parameters without loading its model.
pub fn describe_parameters(
    configs: &BTreeMap<AnalysisName, AnalysisConfig>,
) -> Vec<ParameterDescription> {
    configs
        .values()
        .flat_map(AnalysisConfig::describe_parameters)
        .collect()
}

/// Every analysis of a pipeline, by name.
pub struct Analyses {
    list: Vec<(AnalysisName, Box<dyn DynAnalysis>)>,
    parameters: Vec<ParameterDescription>,
}

/// An analysis that failed on an event: logged and counted by the caller, never fatal.
#[derive(Debug)]
pub struct Failure {
    /// The analysis.
    pub analysis: AnalysisName,
    /// Why.
    pub error: AnalysisError,
}

/// An `[analyses.<name>]` table that cannot be built (a model that does not load, ...).
#[derive(Debug, thiserror::Error)]
#[error("analysis {name}: {error}")]
pub struct BuildError {
    /// The analysis.
    pub name: AnalysisName,
    /// The key at fault and why.
    #[source]
    pub error: TableError,
}

impl Analyses {
    /// Builds every analysis of the pipeline file.
    pub fn build(configs: &BTreeMap<AnalysisName, AnalysisConfig>) -> Result<Self, BuildError> {
        let list = configs
            .iter()
            .map(|(name, config)| {
                config
                    .build()
                    .map(|analysis| (name.clone(), analysis))
                    .map_err(|error| BuildError {
                        name: name.clone(),
                        error,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            list,
            parameters: describe_parameters(configs),
        })
    }

    /// The parameters every analysis declares.
    pub fn describe_parameters(&self) -> Vec<ParameterDescription> {
        self.parameters.clone()
    }

    /// Runs every analysis on `event`: one report with every result, and the failures.
    pub fn process(
        &self,
        event: &EventData,
        parameters: &Parameters,
        worker: &WorkerName,
    ) -> (EventReport, Vec<Failure>) {
        let mut processed = self.process_many(&[event], parameters, worker);
        processed.pop().unwrap_or_else(|| {
            let report = EventReport {
                event_number: event.event_number,
                worker: worker.clone(),
                results: Vec::new(),
                missing: Vec::new(),
            };
            (report, Vec::new())
        })
    }

    /// Runs every analysis on several events at once (each analysis sees the whole batch, so a
    /// model can evaluate them together): one report and its failures per event, in order.
    pub fn process_many(
        &self,
        events: &[&EventData],
        parameters: &Parameters,
        worker: &WorkerName,
    ) -> Vec<(EventReport, Vec<Failure>)> {
        let mut out: Vec<(EventReport, Vec<Failure>)> = events
            .iter()
            .map(|event| {
                let report = EventReport {
                    event_number: event.event_number,
                    worker: worker.clone(),
                    results: Vec::new(),
                    missing: Vec::new(),
                };
                (report, Vec::new())
            })
            .collect();
        for (name, analysis) in &self.list {
            let outcomes = analysis.process_batch(events, parameters);
            for ((event, (report, failures)), outcome) in
                events.iter().zip(out.iter_mut()).zip(outcomes)
            {
                match outcome {
                    Ok(Some(payload)) => report.results.push(ResultData {
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
        }
        out
    }

    /// Calls every analysis' `start_scan`.
    pub fn start_scan(&self, parameters: &Parameters) {
        for (_, analysis) in &self.list {
            analysis.start_scan(parameters);
        }
    }

    /// Whether an analysis needs events in order from one thread ([`DynAnalysis::in_order`]).
    pub fn in_order(&self) -> bool {
        self.list.iter().any(|(_, analysis)| analysis.in_order())
    }

    /// Calls every analysis' `finish`.
    pub fn finish(&self, parameters: &Parameters) {
        for (_, analysis) in &self.list {
            analysis.finish(parameters);
        }
    }
}
