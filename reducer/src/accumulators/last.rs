//! `last`: the latest value of every top-level key of the results (for `frame_stats`, the latest
//! statistics of each stream), with the event number it came from. Streams at different rates
//! each keep their own latest value.

use std::collections::BTreeMap;
use std::sync::Arc;

use beamflow_protocol::{AnalysisName, EventNumber, Parameters, ResultData, Value};
use serde::Deserialize;

use crate::accumulators::{AccumulatorKind, TableError};
use crate::dashboard::Panel;
use crate::{Accumulator, AccumulatorError};

/// Configuration of `last`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastConfig {
    /// Take results only from this analysis (default: all).
    #[serde(default)]
    pub analysis: Option<AnalysisName>,
}

impl AccumulatorKind for LastConfig {
    const KIND: &str = "last";
    const SUMMARY: &str = "`{values: {key: latest}, event_number: {key: n}}`";

    fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
        Ok(Box::new(Last::new(self.clone())))
    }

    fn analysis(&self) -> Option<&AnalysisName> {
        self.analysis.as_ref()
    }

    /// A table of the latest scalars with their alarm states.
    fn panel(&self) -> Panel {
        Panel::Table {}
    }
}

/// The latest result carrying a key; the value is looked up in it when publishing, so a result
/// is kept by reference instead of copied.
struct Latest {
    event_number: EventNumber,
    payload: Arc<Value>,
}

/// The `last` accumulator.
#[derive(Default)]
pub struct Last {
    latest: BTreeMap<String, Latest>,
}

impl Last {
    /// Builds the accumulator.
    pub fn new(_config: LastConfig) -> Self {
        Self::default()
    }
}

impl Accumulator for Last {
    fn process_result(
        &mut self,
        result: &ResultData,
        _: &Parameters,
    ) -> Result<(), AccumulatorError> {
        let mut keep = |key: &str| {
            let latest = Latest {
                event_number: result.event_number,
                payload: Arc::clone(&result.payload),
            };
            match self.latest.get_mut(key) {
                Some(slot) => *slot = latest,
                None => {
                    self.latest.insert(key.to_owned(), latest);
                }
            }
        };
        match result.payload.as_map() {
            Some(entries) => entries.keys().for_each(|key| keep(key)),
            // A result that is not a map has one key: its analysis.
            None => keep(result.analysis.as_str()),
        }
        Ok(())
    }

    fn publish(&self) -> Value {
        let value = |key: &str, latest: &Latest| match latest.payload.as_map() {
            Some(entries) => entries.get(key).cloned().unwrap_or_default(),
            None => (*latest.payload).clone(),
        };
        let values = self
            .latest
            .iter()
            .map(|(key, latest)| (key.clone(), value(key, latest)))
            .collect();
        let events = self
            .latest
            .iter()
            .map(|(key, latest)| (key.clone(), Value::from(latest.event_number.0)))
            .collect();
        Value::Map(
            [
                ("values".to_owned(), Value::Map(values)),
                ("event_number".to_owned(), Value::Map(events)),
            ]
            .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_value_per_key() {
        let mut last = Last::default();
        for (n, key, v) in [(1, "a", 1.0), (2, "b", 2.0), (3, "a", 3.0)] {
            let result = ResultData {
                event_number: EventNumber(n),
                analysis: "x".into(),
                worker: "w".into(),
                created_at: None,
                payload: Arc::new(Value::Map([(key.to_owned(), Value::Float(v))].into())),
            };
            last.process_result(&result, &Parameters::default())
                .unwrap();
        }
        insta::assert_json_snapshot!(last.publish(), @r#"
        {
          "event_number": {
            "a": 3,
            "b": 2
          },
          "values": {
            "a": 3.0,
            "b": 2.0
          }
        }
        "#);
    }
}
