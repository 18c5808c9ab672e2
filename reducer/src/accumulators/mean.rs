//! `mean`: the running mean of one number in the results. The template accumulator: copy this
//! file to start one (`docs/tutorials/analysis.md`).

use beamflow_protocol::{AnalysisName, Parameters, ResultData, Value};
use serde::Deserialize;

use crate::accumulators::{AccumulatorKind, TableError};
use crate::{Accumulator, AccumulatorError};

/// Configuration of `mean`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanConfig {
    /// Take results only from this analysis (default: all).
    #[serde(default)]
    pub analysis: Option<AnalysisName>,
    /// `/`-separated path of the number in the result, e.g. `x`.
    pub value: String,
}

impl AccumulatorKind for MeanConfig {
    const KIND: &str = "mean";
    const SUMMARY: &str = "`{count, mean}` of one number in the results";

    fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
        Ok(Box::new(Mean {
            path: self.value.clone(),
            count: 0,
            sum: 0.0,
        }))
    }

    fn analysis(&self) -> Option<&AnalysisName> {
        self.analysis.as_ref()
    }

    fn result_paths(&self) -> Vec<(String, &str)> {
        vec![("value".to_owned(), self.value.as_str())]
    }
}

/// The `mean` accumulator.
pub struct Mean {
    path: String,
    count: u64,
    sum: f64,
}

impl Accumulator for Mean {
    fn process_result(
        &mut self,
        result: &ResultData,
        _: &Parameters,
    ) -> Result<(), AccumulatorError> {
        let value = result.payload.pointer(&self.path).and_then(Value::as_f64);
        let value = value
            .ok_or_else(|| AccumulatorError::Invalid(format!("no number at {:?}", self.path)))?;
        self.count += 1;
        self.sum += value;
        Ok(())
    }

    fn publish(&self) -> Value {
        let count = i64::try_from(self.count).unwrap_or(i64::MAX);
        Value::Map(
            [
                ("count".to_owned(), Value::Int(count)),
                (
                    "mean".to_owned(),
                    Value::Float(self.sum / self.count as f64),
                ),
            ]
            .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use beamflow_protocol::EventNumber;

    use super::*;

    #[test]
    fn the_mean_of_one_to_n_is_half_of_n_plus_one() {
        let config = MeanConfig {
            analysis: None,
            value: "centre/x".to_owned(),
        };
        let mut mean = config.build().unwrap();
        for n in 1..=100 {
            let payload = Value::from_serialize(&serde_json::json!({"centre": {"x": n}})).unwrap();
            let result = ResultData {
                event_number: EventNumber(n),
                analysis: "centroid".into(),
                worker: "w1".into(),
                created_at: None,
                payload: Arc::new(payload),
            };
            mean.process_result(&result, &Parameters::default())
                .unwrap();
        }
        let view = serde_json::to_value(mean.publish()).unwrap();
        assert_eq!(view, serde_json::json!({"count": 100, "mean": 50.5}));
    }
}
