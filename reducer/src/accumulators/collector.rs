//! `collector`: records EPICS PVs on demand, as the FHI "EPICS collector" device does. It takes
//! the `pv_values` results (each PV stream's value, time stamp and alarm) and, while enabled,
//! appends the chosen PVs' samples to their histories, which the reducer serves as array PVs
//! over PV Access and writes to HDF5 like any other state.
//!
//! It is controlled by three parameters, which the reducer also serves as writable PVs
//! (`<prefix>CONFIG`, `ENABLE`, `CLEAR`) and the REST API sets like any other:
//!
//! - `<name>_pvs`: the streams to record, separated by spaces or commas (empty: every PV stream
//!   the analysis reports);
//! - `<name>_enable`: records while true;
//! - `<name>_clear`: a change of its value empties the histories.
//!
//! Each history keeps the newest `capacity` samples; older ones are dropped and counted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use beamflow_protocol::{
    AnalysisName, ParameterDescription, ParameterType, ParameterValue, Parameters, ResultData,
    Value,
};
use serde::Deserialize;

use crate::accumulators::{AccumulatorKind, TableError};
use crate::{Accumulator, AccumulatorError};

/// Configuration of `collector`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// The `pv_values` analysis whose results it records.
    pub analysis: AnalysisName,
    /// The parameters' prefix: `<parameters>_pvs`, `_enable` and `_clear` (default
    /// `collector`).
    #[serde(default = "default_parameters")]
    pub parameters: String,
    /// The streams recorded until `<parameters>_pvs` is set (default: every PV stream).
    #[serde(default)]
    pub pvs: Vec<String>,
    /// Whether it records from the start, before `<parameters>_enable` is set.
    #[serde(default)]
    pub enable: bool,
    /// Samples kept per PV, newest last.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
}

fn default_parameters() -> String {
    "collector".to_owned()
}

fn default_capacity() -> usize {
    100_000
}

/// At most this many samples in all, so that a misconfigured capacity cannot exhaust memory
/// (five numbers a sample: 40 bytes).
const MAX_SAMPLES: usize = 50_000_000;

impl CollectorConfig {
    fn parameter(&self, what: &str) -> String {
        format!("{}_{what}", self.parameters)
    }
}

impl AccumulatorKind for CollectorConfig {
    const KIND: &str = "collector";
    const SUMMARY: &str = "PVs recorded on demand (parameters `<p>_pvs`, `_enable`, `_clear`): `{state, recording: [stream], pvs: {stream: {time, value, severity, status}}, samples, dropped}`";

    fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
        if self.capacity == 0 || self.capacity > MAX_SAMPLES {
            return Err(TableError::new(
                "capacity",
                format!(
                    "capacity must be between 1 and {MAX_SAMPLES} samples per PV, not {}",
                    self.capacity
                ),
            ));
        }
        if self.parameters.is_empty() {
            return Err(TableError::new("parameters", "parameters must name a prefix"));
        }
        Ok(Box::new(Collector::new(self.clone())))
    }

    fn analysis(&self) -> Option<&AnalysisName> {
        Some(&self.analysis)
    }

    fn describe_parameters(&self) -> Vec<ParameterDescription> {
        vec![
            ParameterDescription {
                name: self.parameter("pvs").as_str().into(),
                dtype: ParameterType::Str,
                default: ParameterValue::Str(self.pvs.join(" ")),
                description: "collector: the PV streams to record (empty: all)".to_owned(),
            },
            ParameterDescription {
                name: self.parameter("enable").as_str().into(),
                dtype: ParameterType::Bool,
                default: ParameterValue::Bool(self.enable),
                description: "collector: records while true".to_owned(),
            },
            ParameterDescription {
                name: self.parameter("clear").as_str().into(),
                dtype: ParameterType::Int,
                default: ParameterValue::Int(0),
                description: "collector: any change empties the histories".to_owned(),
            },
        ]
    }
}

/// One PV's samples, oldest first.
#[derive(Debug, Default)]
struct History {
    time: VecDeque<f64>,
    value: VecDeque<f64>,
    severity: VecDeque<i64>,
    status: VecDeque<i64>,
}

impl History {
    fn push(&mut self, sample: [f64; 4], capacity: usize) -> bool {
        let full = self.time.len() >= capacity;
        if full {
            self.time.pop_front();
            self.value.pop_front();
            self.severity.pop_front();
            self.status.pop_front();
        }
        self.time.push_back(sample[0]);
        self.value.push_back(sample[1]);
        self.severity.push_back(sample[2] as i64);
        self.status.push_back(sample[3] as i64);
        full
    }

    fn publish(&self) -> Value {
        let numbers = |v: &VecDeque<f64>| Value::Array(v.iter().map(|&x| Value::from(x)).collect());
        let integers = |v: &VecDeque<i64>| Value::Array(v.iter().map(|&x| Value::from(x)).collect());
        Value::from(BTreeMap::from([
            ("time".to_owned(), numbers(&self.time)),
            ("value".to_owned(), numbers(&self.value)),
            ("severity".to_owned(), integers(&self.severity)),
            ("status".to_owned(), integers(&self.status)),
        ]))
    }
}

/// The `collector` accumulator.
pub struct Collector {
    config: CollectorConfig,
    enabled: bool,
    /// The streams to record; empty: every one.
    recording: BTreeSet<String>,
    clear: Option<i64>,
    histories: BTreeMap<String, History>,
    samples: u64,
    dropped: u64,
}

impl Collector {
    /// Builds the accumulator.
    pub fn new(config: CollectorConfig) -> Self {
        Self {
            enabled: config.enable,
            recording: config.pvs.iter().cloned().collect(),
            clear: None,
            histories: BTreeMap::new(),
            samples: 0,
            dropped: 0,
            config,
        }
    }
}

/// A stream list as an operator types it: spaces, commas or both.
fn stream_list(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Accumulator for Collector {
    fn process_result(
        &mut self,
        result: &ResultData,
        _: &Parameters,
    ) -> Result<(), AccumulatorError> {
        if !self.enabled {
            return Ok(());
        }
        let Some(streams) = result.payload.as_map() else {
            return Err(AccumulatorError::Invalid(
                "collector: a pv_values result is a map of streams".to_owned(),
            ));
        };
        for (stream, sample) in streams {
            if !self.recording.is_empty() && !self.recording.contains(stream) {
                continue;
            }
            let field = |key: &str| sample.as_map()?.get(key)?.as_f64();
            // Scalars only: a waveform's history is not an array PV of numbers.
            let (Some(time), Some(value)) = (field("time"), field("value")) else {
                continue;
            };
            let sample = [
                time,
                value,
                field("severity").unwrap_or(0.0),
                field("status").unwrap_or(0.0),
            ];
            let history = self.histories.entry(stream.clone()).or_default();
            if history.push(sample, self.config.capacity) {
                self.dropped += 1;
            }
            self.samples += 1;
        }
        Ok(())
    }

    fn parameters_changed(&mut self, parameters: &Parameters) {
        if let Some(enabled) = parameters.bool(&self.config.parameter("enable")) {
            self.enabled = enabled;
        }
        if let Some(pvs) = parameters.str(&self.config.parameter("pvs")) {
            self.recording = stream_list(pvs);
        }
        let clear = parameters.int(&self.config.parameter("clear"));
        if self.clear.is_some() && clear != self.clear {
            self.histories.clear();
            self.samples = 0;
            self.dropped = 0;
        }
        self.clear = clear;
    }

    fn publish(&self) -> Value {
        let pvs: BTreeMap<String, Value> = self
            .histories
            .iter()
            .map(|(stream, history)| (stream.clone(), history.publish()))
            .collect();
        let state = if self.enabled { "recording" } else { "idle" };
        Value::from(BTreeMap::from([
            ("state".to_owned(), Value::from(state)),
            (
                "recording".to_owned(),
                Value::Array(self.recording.iter().map(|s| Value::from(s.as_str())).collect()),
            ),
            ("pvs".to_owned(), Value::from(pvs)),
            ("samples".to_owned(), Value::from(self.samples)),
            ("dropped".to_owned(), Value::from(self.dropped)),
        ]))
    }

    /// Each PV's history is an `NXdata` of its values against time, for NeXus readers.
    fn hdf5_attributes(&self) -> Value {
        let nxdata = Value::from(BTreeMap::from([(
            "_attrs".to_owned(),
            Value::from(BTreeMap::from([
                ("NX_class".to_owned(), Value::from("NXdata")),
                ("signal".to_owned(), Value::from("value")),
                ("axes".to_owned(), Value::from("time")),
            ])),
        )]));
        let pvs: BTreeMap<String, Value> = self
            .histories
            .keys()
            .map(|stream| (stream.clone(), nxdata.clone()))
            .collect();
        Value::from(BTreeMap::from([("pvs".to_owned(), Value::from(pvs))]))
    }
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::{EventNumber, ParameterName};
    use std::sync::Arc;

    use super::*;

    fn collector(capacity: usize) -> Collector {
        let config: CollectorConfig = toml::from_str(&format!(
            "analysis = \"pvs\"\npvs = [\"t1\"]\ncapacity = {capacity}"
        ))
        .unwrap();
        Collector::new(config)
    }

    fn result(event: u64, t1: f64, t2: f64) -> ResultData {
        let sample = |value: f64| {
            serde_json::json!({"value": value, "time": 1.7e9 + event as f64, "severity": 1, "status": 3, "pulse_id": 0})
        };
        let payload = serde_json::json!({"t1": sample(t1), "t2": sample(t2), "wave": {"value": [1.0, 2.0], "time": 0.0}});
        ResultData {
            event_number: EventNumber(event),
            analysis: "pvs".into(),
            worker: "w1".into(),
            payload: Arc::new(Value::from_serialize(&payload).unwrap()),
            created_at: None,
        }
    }

    /// The parameters as the controller resolves them from the texts set and the defaults the
    /// collector declares.
    fn parameters(collector: &Collector, pairs: &[(&str, &str)]) -> Parameters {
        let config = &collector.config;
        Parameters::resolve(
            pairs
                .iter()
                .map(|(name, text)| (ParameterName::from(*name), bytes::Bytes::from(text.to_string()))),
            &config.describe_parameters(),
        )
        .unwrap()
    }

    fn column(view: &Value, stream: &str, column: &str) -> Vec<f64> {
        let Some(Value::Array(items)) = view.pointer(&format!("pvs/{stream}/{column}")) else {
            return Vec::new();
        };
        items.iter().filter_map(Value::as_f64).collect()
    }

    #[test]
    fn records_the_chosen_pvs_only_while_enabled_and_clears_on_demand() {
        let mut collector = collector(10);
        let none = Parameters::default();
        collector.process_result(&result(1, 1.0, 10.0), &none).unwrap();
        assert_eq!(collector.publish().pointer("state"), Some(&Value::from("idle")));
        assert!(column(&collector.publish(), "t1", "value").is_empty());
        collector.parameters_changed(&parameters(&collector, &[
            ("collector_enable", "true"),
        ]));
        collector.process_result(&result(2, 2.0, 20.0), &none).unwrap();
        collector.process_result(&result(3, 3.0, 30.0), &none).unwrap();
        let view = collector.publish();
        assert_eq!(column(&view, "t1", "value"), [2.0, 3.0]);
        assert_eq!(column(&view, "t1", "time"), [1.7e9 + 2.0, 1.7e9 + 3.0]);
        assert_eq!(column(&view, "t1", "severity"), [1.0, 1.0]);
        assert!(column(&view, "t2", "value").is_empty(), "not chosen");
        collector.parameters_changed(&parameters(&collector, &[
            ("collector_enable", "true"),
            ("collector_pvs", "t1, t2"),
            ("collector_clear", "1"),
        ]));
        assert!(column(&collector.publish(), "t1", "value").is_empty(), "cleared");
        collector.process_result(&result(4, 4.0, 40.0), &none).unwrap();
        let view = collector.publish();
        assert_eq!(column(&view, "t2", "value"), [40.0]);
        assert!(view.pointer("pvs/wave").is_none(), "waveforms are not recorded");
    }

    #[test]
    fn a_full_history_drops_its_oldest_samples_and_counts_them() {
        let mut collector = collector(2);
        collector.parameters_changed(&parameters(&collector, &[("collector_enable", "true")]));
        for event in 1..=5 {
            collector
                .process_result(&result(event, event as f64, 0.0), &Parameters::default())
                .unwrap();
        }
        let view = collector.publish();
        assert_eq!(column(&view, "t1", "value"), [4.0, 5.0]);
        assert_eq!(view.pointer("dropped"), Some(&Value::from(3u64)));
    }

    #[test]
    fn an_absurd_capacity_is_refused() {
        let config: CollectorConfig = toml::from_str("analysis = \"pvs\"\ncapacity = 0").unwrap();
        assert_eq!(config.build().err().map(|e| e.key), Some("capacity"));
    }
}
