//! `last`: the latest value of every top-level key of the results (for `frame_stats`, the latest
//! statistics of each stream), with the event number it came from. Streams at different rates
//! each keep their own latest value.

use std::collections::BTreeMap;

use beamflow_protocol::{AnalysisName, EventNumber, Parameters, ResultData, Value};
use serde::Deserialize;

use crate::{Accumulator, AccumulatorError};

/// Configuration of `last`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastConfig {
    /// Take results only from this analysis (default: all).
    #[serde(default)]
    pub analysis: Option<AnalysisName>,
}

/// The `last` accumulator.
#[derive(Default)]
pub struct Last {
    latest: BTreeMap<String, (EventNumber, Value)>,
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
        match &result.payload {
            Value::Map(entries) => {
                for (key, value) in entries {
                    self.latest
                        .insert(key.clone(), (result.event_number, value.clone()));
                }
            }
            // A result that is not a map has one key: its analysis.
            other => {
                self.latest.insert(
                    result.analysis.to_string(),
                    (result.event_number, other.clone()),
                );
            }
        }
        Ok(())
    }

    fn publish(&self) -> Value {
        let values = self
            .latest
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let events = self
            .latest
            .iter()
            .map(|(k, (n, _))| (k.clone(), Value::from(n.0)))
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
                payload: Value::Map([(key.to_owned(), Value::Float(v))].into()),
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
