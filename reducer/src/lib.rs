//! The reducer: the one place with state. Results are applied to accumulators in event order;
//! their published views form one tree, served read-only over HTTP.
//!
//! # Layout
//!
//! - [`Accumulator`]: what an accumulator implements.
//! - [`accumulators`]: the registry ([`AccumulatorConfig`], keyed by `kind`) and one file each.
//! - [`Reducer`]: routes results to accumulators, counts failures, assembles the state tree.
//! - [`http`]: the axum [`app`](http::app) over a [`View`](http::View) snapshot.
//! - [`live`]: the live reducer's loop body without sockets: expectations and reports in,
//!   results applied in event order.
//! - [`peak_stats`]: bluesky's `PeakStats` of a 1-D scan, as bluesky computes it.
//! - [`plot`]: line plots and maps as PNG, headless (the scan views' snapshots).
//! - [`column_file`]: a run's data as a column text file or XDI, written atomically.
//! - [`order`]: the reorder buffer that turns reports from many workers into events in order,
//!   each (event, analysis) result once.
//! - [`checkpoint`]: a scan's applied inputs in an append-only file, to resume it after a restart.
//! - [`dashboard`]: the live dashboard's server side ([`dashboard::png`]: a frame as a PNG).
//! - [`result_pvs`]: chosen paths of the state served as EPICS PVs.
//! - [`control_pvs`]: parameters and collector controls as writable PV Access PVs.
//! - [`hdf5_rest`]: the state as HDF5 groups and datasets, served as HDF5-REST for h5pyd and silx.
//! - [`nexus`]: that tree as a NeXus file; [`hdf5_output`]: one per scan (`[reducer.hdf5]`).
//! - [`unmatched`]: configured paths that match no result, reported once with the keys there.

pub mod accumulators;
pub mod checkpoint;
pub mod column_file;
pub mod control_pvs;
pub mod dashboard;
pub mod hdf5_output;
pub mod hdf5_rest;
pub mod http;
pub mod live;
pub mod nexus;
pub mod node;
pub mod order;
pub mod peak_stats;
pub mod plot;
pub mod result_pvs;
pub mod unmatched;

use std::collections::BTreeMap;

use beamflow_protocol::{AnalysisName, ParameterDescription, Parameters, ResultData, Value};
use serde::Serialize;
use tracing::{debug, error, warn};

#[cfg(test)]
pub(crate) mod reference;

pub use accumulators::image::Frame;
pub use accumulators::{AccumulatorConfig, AccumulatorKind};
pub use unmatched::Unmatched;

/// An accumulator: folds results, in event order, into a view it publishes.
///
/// The smallest accumulator, and the template for new ones:
///
/// ```
/// use beamflow_protocol::{Parameters, ResultData, Value};
/// use beamflow_reducer::{Accumulator, AccumulatorError};
///
/// /// Counts results.
/// #[derive(Default)]
/// struct Count(i64);
///
/// impl Accumulator for Count {
///     fn process_result(&mut self, _: &ResultData, _: &Parameters) -> Result<(), AccumulatorError> {
///         self.0 += 1;
///         Ok(())
///     }
///
///     fn publish(&self) -> Value {
///         Value::Int(self.0)
///     }
/// }
///
/// assert_eq!(Count::default().publish(), Value::Int(0));
/// ```
pub trait Accumulator: Send + 'static {
    /// Folds one result in. Results arrive in event order, each once.
    fn process_result(
        &mut self,
        result: &ResultData,
        parameters: &Parameters,
    ) -> Result<(), AccumulatorError>;

    /// The current view, served under the accumulator's name.
    fn publish(&self) -> Value;

    /// Called when the parameters change (and once with the first ones), between two results:
    /// what it changes applies from the next result on. `quad_scan` opens and closes its
    /// measurements here, so a measurement closed while no shots arrive still closes.
    fn parameters_changed(&mut self, _parameters: &Parameters) {}

    /// Called once when a scan ends, before the last publish.
    fn finish(&mut self, _parameters: &Parameters) {}

    /// Called when the scan's reducer starts and then when the delay it last returned is
    /// over, between two results: a dranspose reducer's `timer`. `None`: not again.
    fn timer(&mut self, _parameters: &Parameters) -> Option<std::time::Duration> {
        None
    }

    /// Configured paths that matched none of the first results (see [`unmatched`]); the
    /// reducer logs each new one once and serves them in the status.
    fn unmatched(&self) -> &[Unmatched] {
        &[]
    }

    /// The latest frame it keeps for display, if it keeps one (`image` does): the dashboard
    /// renders it as a PNG.
    fn frame(&self) -> Option<std::sync::Arc<Frame>> {
        None
    }

    /// The attributes its view carries as HDF5 (the HDF5-REST view and the NeXus files), so
    /// that silx and NeXus readers plot it unconfigured: dranspose's convention, `_attrs` for
    /// the group itself and `<member>_attrs` for a member, a map under a member's name for the
    /// member's own members (`{"_attrs": {"NX_class": "NXdata", "signal": "mean"}}`).
    fn hdf5_attributes(&self) -> Value {
        Value::Null
    }
}

/// Why an accumulator could not use a result; the reducer logs it with the event number, counts
/// it and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccumulatorError {
    /// The result lacks what the accumulator needs, or has the wrong type there.
    #[error("{0}")]
    Invalid(String),
}

/// A pipeline-file accumulator table that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("accumulator {name}: {error}")]
pub struct ConfigError {
    /// The accumulator's name.
    pub name: String,
    /// What is wrong with its table.
    #[source]
    pub error: accumulators::TableError,
}

struct Slot {
    name: String,
    source: Option<AnalysisName>,
    /// The analysis whose results it alone reads.
    claims: Option<AnalysisName>,
    accumulator: Box<dyn Accumulator>,
    errors: u64,
    /// How many of the accumulator's unmatched paths have been logged.
    unmatched_logged: usize,
    /// When its [`Accumulator::timer`] is due next; `None` once it asked for no more calls.
    timer_due: Option<std::time::Instant>,
}

impl Slot {
    /// Logs the unmatched paths the accumulator found since the last call.
    fn log_unmatched(&mut self) {
        let unmatched = self.accumulator.unmatched();
        for found in unmatched.iter().skip(self.unmatched_logged) {
            warn!(accumulator = %self.name, column = %found.column, path = %found.path,
                results = found.results, reason = %found.reason, keys = %found.keys.join(", "),
                "Column path matched no result; the column stays empty.");
        }
        self.unmatched_logged = unmatched.len();
    }
}

/// Counters the reducer keeps; served in `/api/v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReducerCounts {
    /// Results applied.
    pub results: u64,
    /// Results an accumulator rejected, per accumulator.
    pub accumulator_errors: BTreeMap<String, u64>,
}

/// The parameters the accumulators of these tables read, from the tables alone (nothing is
/// built).
pub fn describe_parameters(
    configs: &BTreeMap<String, AccumulatorConfig>,
) -> Vec<ParameterDescription> {
    configs
        .values()
        .flat_map(AccumulatorConfig::describe_parameters)
        .collect()
}

/// Applies results to the configured accumulators.
pub struct Reducer {
    slots: Vec<Slot>,
    descriptions: Vec<ParameterDescription>,
    parameters: Parameters,
    counts: ReducerCounts,
    latest: BTreeMap<AnalysisName, std::sync::Arc<Value>>,
    /// Analyses whose results only the accumulator claiming them reads.
    claimed: std::collections::BTreeSet<AnalysisName>,
}

impl Reducer {
    /// Builds every accumulator of the pipeline file.
    pub fn new(
        configs: &BTreeMap<String, AccumulatorConfig>,
        parameters: Parameters,
    ) -> Result<Self, ConfigError> {
        let slots = configs
            .iter()
            .map(|(name, config)| {
                Ok(Slot {
                    name: name.clone(),
                    source: config.analysis().cloned(),
                    claims: config.claims().cloned(),
                    accumulator: config.build().map_err(|error| ConfigError {
                        name: name.clone(),
                        error,
                    })?,
                    errors: 0,
                    unmatched_logged: 0,
                    timer_due: Some(std::time::Instant::now()),
                })
            })
            .collect::<Result<_, _>>()?;
        let claimed = configs
            .values()
            .filter_map(AccumulatorConfig::claims)
            .cloned()
            .collect();
        let mut reducer = Self {
            slots,
            claimed,
            descriptions: describe_parameters(configs),
            parameters: Parameters::default(),
            counts: ReducerCounts::default(),
            latest: BTreeMap::new(),
        };
        reducer.set_parameters(parameters);
        Ok(reducer)
    }

    /// The parameters every accumulator declares.
    pub fn describe_parameters(&self) -> Vec<ParameterDescription> {
        self.descriptions.clone()
    }

    /// Applies one result to every accumulator that takes results from its analysis. A failing
    /// accumulator is logged (first time at error, then at debug) and counted; the others go on.
    pub fn apply(&mut self, result: &ResultData) {
        let claimed = self.claimed.contains(&result.analysis);
        for slot in &mut self.slots {
            let other_source = slot
                .source
                .as_ref()
                .is_some_and(|source| *source != result.analysis);
            if other_source || (claimed && slot.claims.as_ref() != Some(&result.analysis)) {
                continue;
            }
            if let Err(error) = slot.accumulator.process_result(result, &self.parameters) {
                slot.errors += 1;
                if slot.errors == 1 {
                    error!(accumulator = %slot.name, event = %result.event_number, analysis = %result.analysis, %error,
                        "Accumulator rejected a result; further rejections are counted in status.");
                } else {
                    debug!(accumulator = %slot.name, event = %result.event_number, %error, "Accumulator rejected a result.");
                }
                self.counts
                    .accumulator_errors
                    .insert(slot.name.clone(), slot.errors);
            }
            slot.log_unmatched();
        }
        self.counts.results += 1;
        if !claimed {
            self.latest.insert(
                result.analysis.clone(),
                std::sync::Arc::clone(&result.payload),
            );
        }
    }

    /// Whether the results of `analysis` are read only by the accumulator claiming them (see
    /// [`AccumulatorKind::claims`]): they are not state, and not checkpointed.
    pub fn is_claimed(&self, analysis: &AnalysisName) -> bool {
        self.claimed.contains(analysis)
    }

    /// The latest frame of each accumulator that keeps one, by accumulator name.
    pub fn frames(&self) -> BTreeMap<String, std::sync::Arc<Frame>> {
        self.slots
            .iter()
            .filter_map(|slot| Some((slot.name.clone(), slot.accumulator.frame()?)))
            .collect()
    }

    /// Each accumulator's [`Accumulator::hdf5_attributes`], by name (those with none left out).
    pub fn hdf5_attributes(&self) -> BTreeMap<String, Value> {
        self.slots
            .iter()
            .map(|slot| (slot.name.clone(), slot.accumulator.hdf5_attributes()))
            .filter(|(_, attributes)| !matches!(attributes, Value::Null))
            .collect()
    }

    /// The latest result of each analysis (for views such as a model's live inputs).
    pub fn latest_results(&self) -> BTreeMap<AnalysisName, std::sync::Arc<Value>> {
        self.latest.clone()
    }

    /// Sets the parameters accumulators see from the next result on, and tells each
    /// accumulator (its [`Accumulator::parameters_changed`]).
    pub fn set_parameters(&mut self, parameters: Parameters) {
        self.parameters = parameters;
        for slot in &mut self.slots {
            slot.accumulator.parameters_changed(&self.parameters);
        }
    }

    /// Calls the [`Accumulator::timer`] of every accumulator whose delay is over at `now`:
    /// between results, so a timer never runs while a result is being applied.
    pub fn run_timers(&mut self, now: std::time::Instant) {
        for slot in &mut self.slots {
            if slot.timer_due.is_some_and(|due| due <= now) {
                slot.timer_due = slot
                    .accumulator
                    .timer(&self.parameters)
                    .map(|delay| now + delay);
            }
        }
    }

    /// Calls every accumulator's `finish`.
    pub fn finish(&mut self) {
        for slot in &mut self.slots {
            slot.accumulator.finish(&self.parameters);
            slot.log_unmatched();
        }
    }

    /// Per accumulator, its configured paths that matched none of the first results.
    pub fn unmatched(&self) -> BTreeMap<String, Vec<Unmatched>> {
        self.slots
            .iter()
            .filter(|slot| !slot.accumulator.unmatched().is_empty())
            .map(|slot| (slot.name.clone(), slot.accumulator.unmatched().to_vec()))
            .collect()
    }

    /// The whole state: each accumulator's view under its name.
    pub fn state(&self) -> Value {
        Value::Map(
            self.slots
                .iter()
                .map(|slot| (slot.name.clone(), slot.accumulator.publish()))
                .collect(),
        )
    }

    /// The counters so far.
    pub fn counts(&self) -> &ReducerCounts {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::EventNumber;
    use std::sync::Arc;

    #[test]
    fn unmatched_columns_are_collected_per_accumulator_for_the_status() {
        let configs: BTreeMap<String, AccumulatorConfig> = toml::from_str(
            r#"
[machine]
kind = "history"
values = { xrms = "xrmz/value", yrms = "yrms/value" }

[last]
kind = "last"
"#,
        )
        .unwrap();
        let mut reducer = Reducer::new(&configs, Parameters::default()).unwrap();
        let pv = |v: f64| Value::Map([("value".to_owned(), Value::Float(v))].into());
        for n in 0..3 {
            reducer.apply(&ResultData {
                event_number: EventNumber(n),
                analysis: "pvs".into(),
                worker: "w".into(),
                created_at: None,
                payload: Arc::new(Value::Map(
                    [("xrms".to_owned(), pv(1.0)), ("yrms".to_owned(), pv(2.0))].into(),
                )),
            });
        }
        assert!(reducer.unmatched().is_empty(), "undecided before the end");
        reducer.finish();
        let status = crate::http::Status {
            unmatched_columns: reducer.unmatched(),
            ..Default::default()
        };
        insta::assert_json_snapshot!(serde_json::to_value(&status).unwrap()["unmatched_columns"], @r#"
        {
          "machine": [
            {
              "column": "xrms",
              "keys": [
                "xrms",
                "yrms"
              ],
              "path": "xrmz/value",
              "reason": "\"xrmz\" is not a key of the result",
              "results": 3
            }
          ]
        }
        "#);
    }

    /// Parameters reach accumulators when they change, between results, and at the start.
    #[test]
    fn parameter_changes_reach_accumulators_between_results() {
        use beamflow_protocol::ParameterValue;
        let configs: BTreeMap<String, AccumulatorConfig> = toml::from_str(
            r#"
[qs]
kind = "quad_scan"
setting = "qe04"
energy_ev = 135e6
quad_length_m = 0.108
rmat_x = [[1.0, 2.26], [0.0, 1.0]]
rmat_y = [[1.0, 2.26], [0.0, 1.0]]
"#,
        )
        .unwrap();
        let measuring = |id: &str| {
            let value = ParameterValue::Str(id.to_owned()).to_bytes();
            Parameters::resolve([("quad_scan_measurement".into(), value)], &[]).unwrap()
        };
        let reducer = Reducer::new(&configs, measuring("at-start")).unwrap();
        assert_eq!(
            reducer.state().pointer("qs/live/id"),
            Some(&Value::Text("at-start".to_owned()))
        );
        let mut reducer = Reducer::new(&configs, Parameters::default()).unwrap();
        assert_eq!(reducer.state().pointer("qs/live"), Some(&Value::Null));
        reducer.set_parameters(measuring("m1"));
        reducer.set_parameters(measuring(""));
        assert_eq!(
            reducer.state().pointer("qs/measurements/m1/state"),
            Some(&Value::Text("finished".to_owned()))
        );
    }
}
