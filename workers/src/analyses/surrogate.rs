//! `surrogate`: a LUME-style model (`beamflow_surrogate`) evaluated on each event's PV values,
//! as an ordinary stateless analysis. Each model input is read from the PV stream mapped to it
//! (e.g. the `BACT` readback onto the model's `BCTRL` input); inputs with no stream in the event
//! take their default. Every output carries the provenance of every input: `live`, `stale` (its
//! CA time stamp older than `max_age_s` at the event) with its age, or `default`. Out-of-range
//! inputs are flagged, or reject the event with `out_of_range = "reject"`. A non-finite output
//! is an error, never a number. Events queued together are evaluated as one batch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use beamflow_protocol::{EventData, Parameters, StreamName, StreamType};
use beamflow_surrogate::{Evaluation, InputIssue, Model, Provenance};
use serde::Deserialize;

use crate::analyses::{AnalysisKind, pv_scalar};
use crate::check::{ResultKeys, TableError};
use crate::{Analysis, AnalysisError};

/// Configuration of `surrogate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurrogateConfig {
    /// The model directory (`model.yaml` and its weights), or `builtin:lcls_cu_injector`.
    pub model: PathBuf,
    /// Model input name → the PV stream that feeds it.
    #[serde(default)]
    pub inputs: BTreeMap<String, StreamName>,
    /// A live value older than this (CA time stamp against the event's time) is stale.
    #[serde(default = "max_age")]
    pub max_age_s: f64,
    /// What an out-of-range input does.
    #[serde(default)]
    pub out_of_range: OutOfRange,
}

fn max_age() -> f64 {
    10.0
}

/// What an input outside the model's training range does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRange {
    /// Evaluate and list it in `issues`.
    #[default]
    Flag,
    /// No outputs for the event: an analysis error naming the input.
    Reject,
}

impl AnalysisKind for SurrogateConfig {
    const KIND: &str = "surrogate";
    const SUMMARY: &str = "a surrogate model evaluated on the event's PV values: outputs with \
        units, every input's provenance, issues";

    // `DynAnalysis` is not imported: its `process_batch` would shadow `Analysis`'s below.
    fn build(&self) -> Result<Box<dyn crate::DynAnalysis>, TableError> {
        Ok(Box::new(Surrogate::checked(self)?))
    }

    /// The streams mapped to model inputs.
    fn reads_stream(&self, stream: &StreamName, _: &StreamType) -> bool {
        self.inputs.values().any(|input| input == stream)
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        self.inputs
            .iter()
            .map(|(input, stream)| (format!("inputs.{input:?}"), stream.clone()))
            .collect()
    }

    /// Loads the model, as building does.
    fn check(&self) -> Result<ResultKeys, TableError> {
        Ok(Surrogate::checked(self)?.result_keys())
    }
}

/// The `surrogate` analysis.
pub struct Surrogate {
    config: SurrogateConfig,
    model: Arc<Model>,
}

impl Surrogate {
    /// Loads the model and checks that every mapped input is one of its inputs; the error
    /// names the key at fault.
    pub fn checked(config: &SurrogateConfig) -> Result<Self, TableError> {
        let model = Model::open(&config.model)
            .map_err(|error| TableError::value("model", error.to_string()))?;
        let names = || model.spec().inputs.iter().map(|i| i.name.as_str());
        if let Some(unknown) = config
            .inputs
            .keys()
            .find(|name| !names().any(|i| i == *name))
        {
            return Err(TableError::name(
                format!("inputs.{unknown:?}"),
                format!(
                    "{unknown:?} is not an input of the model{}",
                    crate::check::suggestion(unknown, names())
                ),
            ));
        }
        Ok(Self {
            config: config.clone(),
            model: Arc::new(model),
        })
    }

    /// What its results hold: an [`Evaluation`] of this model.
    pub fn result_keys(&self) -> ResultKeys {
        let spec = self.model.spec();
        let text = ResultKeys::Text;
        let number = ResultKeys::Number;
        let output = ResultKeys::Map(vec![
            ("value".to_owned(), number.clone()),
            ("unit".to_owned(), text.clone()),
        ]);
        let input = ResultKeys::Map(vec![
            ("value".to_owned(), number.clone()),
            ("unit".to_owned(), text.clone()),
            ("provenance".to_owned(), text),
            ("age_s".to_owned(), number),
        ]);
        ResultKeys::Map(vec![
            (
                "outputs".to_owned(),
                ResultKeys::named(spec.outputs.iter().map(|o| &o.name), &output),
            ),
            (
                "inputs".to_owned(),
                ResultKeys::named(spec.inputs.iter().map(|i| &i.name), &input),
            ),
            (
                "issues".to_owned(),
                ResultKeys::List {
                    len: None,
                    each: Box::new(ResultKeys::Unknown),
                },
            ),
        ])
    }

    /// The model's input values in `event`, with provenance, and the mapped streams that were
    /// there but gave no number.
    fn given(&self, event: &EventData) -> (BTreeMap<String, (f64, Provenance)>, Vec<InputIssue>) {
        let now = event.created_at;
        let mut given = BTreeMap::new();
        let mut issues = Vec::new();
        for (input, stream) in &self.config.inputs {
            let Some(data) = event.streams.get(stream) else {
                continue;
            };
            match pv_scalar(data) {
                Ok((value, frame)) => {
                    let age_s = now.map(|now| {
                        (now.as_nanosecond() - frame.timestamp().as_nanosecond()) as f64 / 1e9
                    });
                    let provenance = match age_s {
                        Some(age_s) if age_s > self.config.max_age_s => Provenance::Stale { age_s },
                        _ => Provenance::Live,
                    };
                    given.insert(input.clone(), (value, provenance));
                }
                Err(reason) => issues.push(InputIssue::Unreadable {
                    name: input.clone(),
                    stream: stream.to_string(),
                    reason,
                }),
            }
        }
        (given, issues)
    }
}

impl Analysis for Surrogate {
    type Output = Evaluation;

    fn process_event(
        &self,
        event: &EventData,
        parameters: &Parameters,
    ) -> Result<Option<Evaluation>, AnalysisError> {
        self.process_batch(&[event], parameters)
            .pop()
            .unwrap_or(Ok(None))
    }

    fn process_batch(
        &self,
        events: &[&EventData],
        _: &Parameters,
    ) -> Vec<Result<Option<Evaluation>, AnalysisError>> {
        let mut outcomes: Vec<Option<Result<Option<Evaluation>, AnalysisError>>> =
            Vec::with_capacity(events.len());
        let mut rows = Vec::new();
        let mut placed = Vec::new();
        for event in events {
            let (given, unreadable) = self.given(event);
            let (inputs, mut issues) = self.model.prepare(&given);
            issues.extend(unreadable);
            let out_of_range: Vec<String> = issues
                .iter()
                .filter(|issue| matches!(issue, InputIssue::OutOfRange { .. }))
                .map(ToString::to_string)
                .collect();
            if self.config.out_of_range == OutOfRange::Reject && !out_of_range.is_empty() {
                outcomes.push(Some(Err(AnalysisError::Invalid(format!(
                    "rejected: {}",
                    out_of_range.join("; ")
                )))));
                continue;
            }
            placed.push(outcomes.len());
            outcomes.push(None);
            rows.push((inputs, issues));
        }
        match self.model.evaluate_named(rows) {
            Ok(evaluations) => {
                for (index, evaluation) in placed.into_iter().zip(evaluations) {
                    outcomes[index] = Some(
                        evaluation
                            .map(Some)
                            .map_err(|error| AnalysisError::Invalid(error.to_string())),
                    );
                }
            }
            Err(error) => {
                for index in placed {
                    outcomes[index] = Some(Err(AnalysisError::Invalid(error.to_string())));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Ok(None)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::{DType, EventNumber, NdArray};
    use bytes::Bytes;

    use beamflow_protocol::streams::pv::{self, PvFrame};

    use super::*;

    fn model_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/lcls_cu_injector"
        ))
    }

    fn config(reject: bool) -> SurrogateConfig {
        SurrogateConfig {
            model: model_dir(),
            inputs: BTreeMap::from([
                ("QUAD:IN20:525:BCTRL".to_owned(), StreamName::from("qe04")),
                (
                    "SOLN:IN20:121:BCTRL".to_owned(),
                    StreamName::from("solenoid"),
                ),
            ]),
            max_age_s: 5.0,
            out_of_range: if reject {
                OutOfRange::Reject
            } else {
                OutOfRange::Flag
            },
        }
    }

    /// An event at Unix time 1e9 with `qe04` stamped `qe04_age` s earlier and a fresh solenoid.
    fn event(n: u64, qe04: f64, qe04_age: u32) -> EventData {
        let epics = |unix: i64| (unix - pv::EPICS_EPOCH_UNIX) as u32;
        let frame = |name: &str, value: f64, secs: u32| PvFrame {
            pv: name.to_owned(),
            status: 0,
            severity: 0,
            secs,
            nanos: 0,
            value: NdArray::new(
                vec![],
                DType::Float64,
                Bytes::from(value.to_le_bytes().to_vec()),
            )
            .expect("a scalar"),
        };
        let mut event = EventData::new(EventNumber(n));
        event.created_at = Some(jiff::Timestamp::from_second(1_000_000_000).expect("valid"));
        event.streams.insert(
            "qe04".into(),
            frame("QUAD:IN20:525:BACT", qe04, epics(1_000_000_000) - qe04_age).stream(),
        );
        event.streams.insert(
            "solenoid".into(),
            frame("SOLN:IN20:121:BACT", 0.478, epics(1_000_000_000)).stream(),
        );
        event
    }

    #[test]
    fn a_batch_gives_each_event_its_outputs_with_the_provenance_of_every_input() {
        let analysis = Surrogate::checked(&config(false)).expect("loads");
        let events = [event(1, -3.2, 0), event(2, -4.0, 30), event(3, 2.5, 0)];
        let refs: Vec<&EventData> = events.iter().collect();
        let outcomes = Analysis::process_batch(&analysis, &refs, &Parameters::default());
        assert_eq!(outcomes.len(), 3);
        let first = outcomes[0].as_ref().expect("ok").as_ref().expect("outputs");
        assert_eq!(
            first.inputs["QUAD:IN20:525:BCTRL"].provenance,
            Provenance::Live
        );
        assert_eq!(first.inputs["QUAD:IN20:525:BCTRL"].value, -3.2);
        assert_eq!(
            first.inputs["QUAD:IN20:361:BCTRL"].provenance,
            Provenance::Default
        );
        assert!(first.issues.is_empty());
        let second = outcomes[1].as_ref().expect("ok").as_ref().expect("outputs");
        assert_eq!(
            second.inputs["QUAD:IN20:525:BCTRL"].provenance,
            Provenance::Stale { age_s: 30.0 }
        );
        let third = outcomes[2]
            .as_ref()
            .expect("ok")
            .as_ref()
            .expect("flagged, evaluated");
        assert_eq!(third.issues.len(), 1);
        // The batch equals one-by-one evaluation.
        let alone = analysis
            .process_event(&events[0], &Parameters::default())
            .expect("ok")
            .expect("outputs");
        assert_eq!(&alone, first);
    }

    #[test]
    fn reject_mode_refuses_an_out_of_range_event_and_keeps_the_others() {
        let analysis = Surrogate::checked(&config(true)).expect("loads");
        let events = [event(1, 2.5, 0), event(2, -3.2, 0)];
        let refs: Vec<&EventData> = events.iter().collect();
        let outcomes = Analysis::process_batch(&analysis, &refs, &Parameters::default());
        let error = outcomes[0].as_ref().expect_err("rejected").to_string();
        assert!(
            error.contains("QUAD:IN20:525:BCTRL = 2.5 is outside"),
            "{error}"
        );
        assert!(outcomes[1].is_ok());
    }

    #[test]
    fn an_unknown_input_name_or_model_fails_at_build() {
        let mut bad = config(false);
        bad.inputs
            .insert("QUAD:IN20:999:BCTRL".to_owned(), "x".into());
        let error = Surrogate::checked(&bad).err().expect("refused").to_string();
        assert!(error.contains("QUAD:IN20:999:BCTRL"), "{error}");
        let mut missing = config(false);
        missing.model = PathBuf::from("/nonexistent/model");
        assert!(
            Surrogate::checked(&missing)
                .err()
                .expect("refused")
                .to_string()
                .contains("model.yaml")
        );
    }

    #[test]
    fn a_mapped_stream_without_a_number_is_an_issue_not_a_silent_default() {
        let analysis = Surrogate::checked(&config(false)).expect("loads");
        let mut broken = event(1, -3.2, 0);
        let empty = PvFrame {
            pv: "QUAD:IN20:525:BACT".to_owned(),
            status: 0,
            severity: 0,
            secs: 1,
            nanos: 0,
            value: NdArray::new(vec![0], DType::Float64, Bytes::new()).expect("empty"),
        };
        broken.streams.insert("qe04".into(), empty.stream());
        let out = analysis
            .process_event(&broken, &Parameters::default())
            .expect("evaluated")
            .expect("outputs");
        assert_eq!(
            out.inputs["QUAD:IN20:525:BCTRL"].provenance,
            Provenance::Default
        );
        assert!(
            out.issues
                .iter()
                .any(|i| i.to_string()
                    == "QUAD:IN20:525:BCTRL: stream qe04 gave no value (no elements)"),
            "{:?}",
            out.issues
        );
    }
}
