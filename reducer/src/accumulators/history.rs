//! `history`: a bounded time series of named scalars picked out of results.
//!
//! Each row is one result: its event number, its acquisition time (the event's `created_at`, so
//! a replay gives the same history as the live run) and one column per configured value. When
//! full, the oldest row is dropped.

use std::collections::{BTreeMap, VecDeque};

use beamflow_protocol::{AnalysisName, EventNumber, Parameters, ResultData, Value, WorkerName};
use serde::Deserialize;

use crate::accumulators::{AccumulatorKind, TableError};
use crate::dashboard::Panel;
use crate::unmatched::PathWatch;
use crate::{Accumulator, AccumulatorError, Unmatched};

fn default_capacity() -> usize {
    10_000
}

/// Configuration of `history`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Take results only from this analysis (default: all).
    #[serde(default)]
    pub analysis: Option<AnalysisName>,
    /// Column name → `/`-separated path of a number in the result, e.g.
    /// `det_mean = "det/0/mean"`.
    pub values: BTreeMap<String, String>,
    /// Rows kept; the oldest are dropped beyond it.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Also keep which worker computed each row (a `worker` column), to see how a mapping's
    /// constraints were honoured.
    #[serde(default)]
    pub worker_column: bool,
    /// An IANA time zone (e.g. `America/Los_Angeles`): adds `time_local`, each row's time as
    /// local date and time with its offset, for plots whose axis the control room reads.
    #[serde(default)]
    pub time_zone: Option<String>,
}

impl AccumulatorKind for HistoryConfig {
    const KIND: &str = "history";
    const SUMMARY: &str = "`{event_number: [..], time: [..], values: {column: [..]}}`";

    fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
        Ok(Box::new(History::new(self.clone())?))
    }

    fn analysis(&self) -> Option<&AnalysisName> {
        self.analysis.as_ref()
    }

    /// A time-series chart of the columns, in its time zone.
    fn panel(&self) -> Panel {
        Panel::History {
            columns: self.values.keys().cloned().collect(),
            time_zone: self.time_zone.clone(),
        }
    }

    fn result_paths(&self) -> Vec<(String, &str)> {
        self.values
            .iter()
            .map(|(column, path)| (format!("values.{column:?}"), path.as_str()))
            .collect()
    }
}

struct Row {
    event_number: EventNumber,
    worker: WorkerName,
    time: Option<f64>,
    /// With a time zone: the time there, formatted once when the row is added.
    time_local: Option<String>,
    values: Vec<f64>,
}

/// The `history` accumulator.
pub struct History {
    config: HistoryConfig,
    rows: VecDeque<Row>,
    zone: Option<jiff::tz::TimeZone>,
    /// A misspelt column path would leave its column empty without a word otherwise.
    watch: PathWatch,
}

impl History {
    /// Builds the accumulator; needs at least one value and a capacity.
    pub fn new(config: HistoryConfig) -> Result<Self, TableError> {
        if config.values.is_empty() {
            return Err(TableError::new(
                "values",
                "`values` names no column; add e.g. values = { mean = \"det/0/mean\" }",
            ));
        }
        if config.capacity == 0 {
            return Err(TableError::new("capacity", "`capacity` must be at least 1"));
        }
        let zone = match &config.time_zone {
            Some(name) => Some(jiff::tz::TimeZone::get(name).map_err(|error| {
                TableError::new("time_zone", format!("time_zone {name:?}: {error}"))
            })?),
            None => None,
        };
        Ok(Self {
            rows: VecDeque::with_capacity(config.capacity.min(65_536)),
            watch: PathWatch::new(config.values.clone()),
            config,
            zone,
        })
    }
}

impl Accumulator for History {
    fn process_result(
        &mut self,
        result: &ResultData,
        _: &Parameters,
    ) -> Result<(), AccumulatorError> {
        self.watch.observe(&result.payload);
        let mut found = false;
        let mut values = Vec::with_capacity(self.config.values.len());
        for (column, path) in &self.config.values {
            let value = match result.payload.pointer(path) {
                Some(Value::Null) | None => f64::NAN,
                Some(value) => {
                    found = true;
                    value.as_f64().ok_or_else(|| {
                        AccumulatorError::Invalid(format!(
                            "column {column}: {path} is {}, not a number",
                            value.kind()
                        ))
                    })?
                }
            };
            values.push(value);
        }
        // A result with none of the columns (a series header, say) is not a row.
        if !found {
            return Ok(());
        }
        if self.rows.len() == self.config.capacity {
            self.rows.pop_front();
        }
        self.rows.push_back(Row {
            event_number: result.event_number,
            worker: result.worker.clone(),
            time: result.created_at.map(|t| t.as_microsecond() as f64 * 1e-6),
            time_local: self.zone.as_ref().zip(result.created_at).map(|(zone, t)| {
                t.to_zoned(zone.clone())
                    .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
                    .to_string()
            }),
            values,
        });
        Ok(())
    }

    fn publish(&self) -> Value {
        let mut view = BTreeMap::new();
        view.insert(
            "event_number".to_owned(),
            Value::Array(
                self.rows
                    .iter()
                    .map(|r| Value::from(r.event_number.0))
                    .collect(),
            ),
        );
        view.insert(
            "time".to_owned(),
            Value::Array(
                self.rows
                    .iter()
                    .map(|r| r.time.map_or(Value::Null, Value::Float))
                    .collect(),
            ),
        );
        if self.zone.is_some() {
            view.insert(
                "time_local".to_owned(),
                Value::Array(
                    self.rows
                        .iter()
                        .map(|r| r.time_local.clone().map_or(Value::Null, Value::from))
                        .collect(),
                ),
            );
        }
        if self.config.worker_column {
            view.insert(
                "worker".to_owned(),
                Value::Array(
                    self.rows
                        .iter()
                        .map(|r| Value::from(r.worker.as_str()))
                        .collect(),
                ),
            );
        }
        let columns = self.config.values.keys().enumerate().map(|(i, column)| {
            (
                column.clone(),
                Value::Array(
                    self.rows
                        .iter()
                        .map(|r| Value::Float(r.values[i]))
                        .collect(),
                ),
            )
        });
        let mut values = BTreeMap::new();
        values.extend(columns);
        view.insert("values".to_owned(), Value::Map(values));
        Value::Map(view)
    }

    fn finish(&mut self, _: &Parameters) {
        self.watch.finish();
    }

    /// An `NXdata` of the first column against the event number, the others its auxiliary
    /// signals: silx plots the history as it opens.
    fn hdf5_attributes(&self) -> Value {
        let mut columns = self.config.values.keys().map(|c| format!("values/{c}"));
        let Some(signal) = columns.next() else {
            return Value::Null;
        };
        let mut nxdata = BTreeMap::from([
            ("NX_class".to_owned(), Value::from("NXdata")),
            ("signal".to_owned(), Value::Text(signal)),
            ("axes".to_owned(), Value::from("event_number")),
        ]);
        let auxiliary: Vec<Value> = columns.map(Value::Text).collect();
        if !auxiliary.is_empty() {
            nxdata.insert("auxiliary_signals".to_owned(), Value::Array(auxiliary));
        }
        Value::Map(BTreeMap::from([("_attrs".to_owned(), Value::Map(nxdata))]))
    }

    fn unmatched(&self) -> &[Unmatched] {
        self.watch.unmatched()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(n: u64, mean: Option<f64>) -> ResultData {
        let payload = match mean {
            Some(m) => Value::Map(
                [(
                    "det".to_owned(),
                    Value::from(vec![Value::Map(
                        [("mean".to_owned(), Value::Float(m))].into(),
                    )]),
                )]
                .into(),
            ),
            None => Value::Map(BTreeMap::new()),
        };
        ResultData {
            event_number: EventNumber(n),
            analysis: "stats".into(),
            worker: "w".into(),
            created_at: Some(
                beamflow_protocol::Timestamp::from_second(1_700_000_000 + n as i64).unwrap(),
            ),
            payload: std::sync::Arc::new(payload),
        }
    }

    #[test]
    fn keeps_the_newest_rows_and_skips_results_without_columns() {
        let config: HistoryConfig =
            toml::from_str("values = { mean = \"det/0/mean\" }\ncapacity = 2").unwrap();
        let mut history = History::new(config).unwrap();
        for (n, mean) in [
            (1, Some(1.0)),
            (2, None),
            (3, Some(3.0)),
            (4, Some(f64::NAN)),
        ] {
            history
                .process_result(&result(n, mean), &Parameters::default())
                .unwrap();
        }
        insta::assert_json_snapshot!(history.publish(), @r#"
        {
          "event_number": [
            3,
            4
          ],
          "time": [
            1700000003.0,
            1700000004.0
          ],
          "values": {
            "mean": [
              3.0,
              null
            ]
          }
        }
        "#);
    }

    #[test]
    fn a_non_number_is_a_clear_error() {
        let config: HistoryConfig = toml::from_str("values = { shape = \"det/0\" }").unwrap();
        let mut history = History::new(config).unwrap();
        let error = history
            .process_result(&result(1, Some(1.0)), &Parameters::default())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "column shape: det/0 is map, not a number"
        );
    }

    #[test]
    fn a_column_that_matches_no_result_is_reported_with_the_keys_there() {
        let config: HistoryConfig = toml::from_str(
            "values = { mean = \"det/0/mean\", max = \"det/0/mx\", gone = \"pcap/0\" }",
        )
        .unwrap();
        let mut history = History::new(config).unwrap();
        for n in 0..crate::unmatched::UNMATCHED_AFTER + 5 {
            let mut result = result(n, Some(1.0));
            if n >= crate::unmatched::UNMATCHED_AFTER {
                // `mx` would match from here on: too late, it was reported already.
                result.payload = std::sync::Arc::new(Value::Map(
                    [(
                        "det".to_owned(),
                        Value::from(vec![Value::Map([("mx".to_owned(), Value::Int(1))].into())]),
                    )]
                    .into(),
                ));
            }
            history
                .process_result(&result, &Parameters::default())
                .unwrap();
        }
        history.finish(&Parameters::default());
        let reports: Vec<String> = history
            .unmatched()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            reports,
            [
                r#"column gone path "pcap/0" matched none of the first 100 results; "pcap" is not a key of the result; keys there: det"#,
                r#"column max path "det/0/mx" matched none of the first 100 results; "mx" is not a key of "det/0"; keys there: mean"#,
            ]
        );
        // The column that matched is not reported, and still fills.
        assert!(history.unmatched().iter().all(|u| u.column != "mean"));
        assert_eq!(
            history.publish().pointer("values/mean/0"),
            Some(&Value::Float(1.0))
        );
    }

    #[test]
    fn empty_values_are_refused() {
        let config: HistoryConfig = toml::from_str("values = {}").unwrap();
        assert!(History::new(config).is_err());
    }

    #[test]
    fn a_time_zone_adds_local_times_and_an_unknown_one_is_refused() {
        let config: HistoryConfig = toml::from_str(
            r#"
values = { mean = "det/0/mean" }
time_zone = "America/Los_Angeles"
"#,
        )
        .unwrap();
        let mut history = History::new(config.clone()).unwrap();
        history
            .process_result(&result(1, Some(2.0)), &Parameters::default())
            .unwrap();
        let view = history.publish();
        // 1_700_000_001 s is 2023-11-14 22:13:21 UTC, 14:13:21 in Los Angeles (PST, -08:00).
        assert_eq!(
            view.pointer("time_local/0"),
            Some(&Value::from("2023-11-14T14:13:21.000-08:00"))
        );
        let mut wrong = config;
        wrong.time_zone = Some("Mars/Olympus_Mons".to_owned());
        assert!(
            History::new(wrong)
                .err()
                .unwrap()
                .to_string()
                .contains("Mars/Olympus_Mons")
        );
    }
}
