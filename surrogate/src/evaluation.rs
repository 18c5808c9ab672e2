//! Evaluating by name: inputs filled from a base or the defaults, each with its provenance,
//! checked against the description's ranges and read-only flags; what-ifs.

use serde::Serialize;

use crate::{Model, ModelError};

/// Where an input's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "provenance", rename_all = "snake_case")]
pub enum Provenance {
    /// A live machine value.
    Live,
    /// A live value older than allowed.
    Stale {
        /// Its age, s.
        age_s: f64,
    },
    /// The model's default stands in.
    Default,
    /// Given in a request (what-if, `beamflow model eval`).
    Request,
}

/// One input as evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputValue {
    /// The value used.
    pub value: f64,
    /// Unit.
    pub unit: String,
    /// Where it came from.
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// Something wrong with an input: out of the training range, a read-only input off its
/// default, not a finite number, or not an input of the model.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputIssue {
    /// Outside the training domain.
    #[error("{name} = {value} is outside the model's range [{low}, {high}]")]
    OutOfRange {
        /// The input.
        name: String,
        /// Its value.
        value: f64,
        /// Range low.
        low: f64,
        /// Range high.
        high: f64,
    },
    /// A read-only input given another value than its default (the default is used).
    #[error("{name} is read-only: {value} given, the model is only valid at {default}")]
    ReadOnly {
        /// The input.
        name: String,
        /// Given.
        value: f64,
        /// Its default.
        default: f64,
    },
    /// NaN or infinite (the default is used).
    #[error("{name} is not a finite number")]
    NotFinite {
        /// The input.
        name: String,
    },
    /// Not an input of the model.
    #[error("{name} is not an input of the model")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// Its stream was in the event but gave no number (the default is used).
    #[error("{name}: stream {stream} gave no value ({reason})")]
    Unreadable {
        /// The input.
        name: String,
        /// The stream mapped to it.
        stream: String,
        /// Why.
        reason: String,
    },
}

impl InputIssue {
    /// The input (or the name given) the issue is about.
    pub fn name(&self) -> &str {
        match self {
            InputIssue::OutOfRange { name, .. }
            | InputIssue::ReadOnly { name, .. }
            | InputIssue::NotFinite { name }
            | InputIssue::Unknown { name }
            | InputIssue::Unreadable { name, .. } => name,
        }
    }
}

/// A model's answer: each output with its unit, each input as used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Output name → value and unit.
    pub outputs: std::collections::BTreeMap<String, OutputValue>,
    /// Input name → value, unit and provenance.
    pub inputs: std::collections::BTreeMap<String, InputValue>,
    /// What was wrong with the inputs (flagged, not refused).
    pub issues: Vec<InputIssue>,
}

/// One output value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputValue {
    /// The value (finite: a non-finite output is an error, never a number).
    pub value: f64,
    /// Unit.
    pub unit: String,
}

/// Why an evaluation gave no outputs.
#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    /// The inputs were refused (out of range, unknown names).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Inputs(Vec<InputIssue>),
    /// The model produced NaN or infinity.
    #[error("output {name} is not finite ({value})")]
    NonFinite {
        /// The output.
        name: String,
        /// What came out.
        value: f64,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl Model {
    /// Arranges `given` values (plus provenance) in input order, defaults filling the rest;
    /// returns the input vector as used and the issues found.
    pub fn prepare(
        &self,
        given: &std::collections::BTreeMap<String, (f64, Provenance)>,
    ) -> (Vec<InputValue>, Vec<InputIssue>) {
        let mut issues: Vec<InputIssue> = given
            .keys()
            .filter(|name| !self.spec().inputs.iter().any(|i| &i.name == *name))
            .map(|name| InputIssue::Unknown { name: name.clone() })
            .collect();
        let values = self
            .spec()
            .inputs
            .iter()
            .map(|input| {
                let default = InputValue {
                    value: input.default,
                    unit: input.unit.clone(),
                    provenance: Provenance::Default,
                };
                let Some(&(value, provenance)) = given.get(&input.name) else {
                    return default;
                };
                if !value.is_finite() {
                    issues.push(InputIssue::NotFinite {
                        name: input.name.clone(),
                    });
                    return default;
                }
                if input.read_only {
                    if value != input.default {
                        issues.push(InputIssue::ReadOnly {
                            name: input.name.clone(),
                            value,
                            default: input.default,
                        });
                    }
                    return default;
                }
                let [low, high] = input.range;
                if !(low..=high).contains(&value) {
                    issues.push(InputIssue::OutOfRange {
                        name: input.name.clone(),
                        value,
                        low,
                        high,
                    });
                }
                InputValue {
                    value,
                    unit: input.unit.clone(),
                    provenance,
                }
            })
            .collect();
        (values, issues)
    }

    /// Evaluates prepared inputs (one set per row) into named, finite outputs.
    pub fn evaluate_named(
        &self,
        rows: Vec<(Vec<InputValue>, Vec<InputIssue>)>,
    ) -> Result<Vec<Result<Evaluation, EvaluationError>>, ModelError> {
        let vectors: Vec<Vec<f64>> = rows
            .iter()
            .map(|(inputs, _)| inputs.iter().map(|i| i.value).collect())
            .collect();
        let outputs = self.evaluate(&vectors)?;
        Ok(rows
            .into_iter()
            .zip(outputs)
            .map(|((inputs, issues), values)| {
                let mut named = std::collections::BTreeMap::new();
                for (spec, value) in self.spec().outputs.iter().zip(values) {
                    if !value.is_finite() {
                        return Err(EvaluationError::NonFinite {
                            name: spec.name.clone(),
                            value,
                        });
                    }
                    named.insert(
                        spec.name.clone(),
                        OutputValue {
                            value,
                            unit: spec.unit.clone(),
                        },
                    );
                }
                Ok(Evaluation {
                    outputs: named,
                    inputs: self
                        .spec()
                        .inputs
                        .iter()
                        .map(|i| i.name.clone())
                        .zip(inputs)
                        .collect(),
                    issues,
                })
            })
            .collect())
    }

    /// A what-if request: `given` values (the rest defaults); unknown, out-of-range and
    /// read-only-violating inputs refuse the request with every reason.
    pub fn what_if(
        &self,
        given: &std::collections::BTreeMap<String, f64>,
    ) -> Result<Evaluation, EvaluationError> {
        self.what_if_from(&Base::new(), given)
    }

    /// A what-if request on top of `base` (e.g. the live machine): `given` values, then `base`'s
    /// with their provenance, then defaults. The request's own unknown, out-of-range or
    /// read-only-violating values refuse it with every reason; `base`'s are only flagged in
    /// `issues`, as the live analysis flags them, because a what-if about the machine must work
    /// while the machine is outside the model's range.
    pub fn what_if_from(
        &self,
        base: &Base,
        given: &std::collections::BTreeMap<String, f64>,
    ) -> Result<Evaluation, EvaluationError> {
        self.what_if_batch(base, std::slice::from_ref(given))?
            .pop()
            .ok_or(EvaluationError::Inputs(Vec::new()))
    }

    /// [`Model::what_if_from`] for many requests on one base, evaluated as one batch. Any
    /// refused value refuses the whole batch, with every distinct reason.
    pub fn what_if_batch(
        &self,
        base: &Base,
        rows: &[std::collections::BTreeMap<String, f64>],
    ) -> Result<Vec<Evaluation>, EvaluationError> {
        let mut refused: Vec<InputIssue> = Vec::new();
        let mut prepared = Vec::with_capacity(rows.len());
        for given in rows {
            let mut merged = base.clone();
            for (name, value) in given {
                merged.insert(name.clone(), (*value, Provenance::Request));
            }
            let (inputs, issues) = self.prepare(&merged);
            let (theirs, flagged): (Vec<_>, Vec<_>) = issues
                .into_iter()
                .partition(|issue| given.contains_key(issue.name()));
            for issue in theirs {
                if !refused.contains(&issue) {
                    refused.push(issue);
                }
            }
            prepared.push((inputs, flagged));
        }
        if !refused.is_empty() {
            return Err(EvaluationError::Inputs(refused));
        }
        self.evaluate_named(prepared)?.into_iter().collect()
    }
}

/// What a what-if starts from: input name → value and where it came from (inputs not in it take
/// their defaults).
pub type Base = std::collections::BTreeMap<String, (f64, Provenance)>;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::test_data::model_dir;

    #[test]
    fn what_if_fills_defaults_and_refuses_out_of_range_and_unknown_inputs() {
        let model = Model::load(&model_dir()).expect("loads");
        let defaults = model
            .what_if(&Default::default())
            .expect("the defaults evaluate");
        // physics.md §1.2: XRMS 304.6 µm, YRMS 124.3 µm at the model defaults.
        assert!((defaults.outputs["OTRS:IN20:571:XRMS"].value - 304.6).abs() < 0.1);
        assert!((defaults.outputs["OTRS:IN20:571:YRMS"].value - 124.3).abs() < 0.1);
        assert_eq!(
            defaults.inputs["QUAD:IN20:525:BCTRL"].provenance,
            Provenance::Default
        );
        let given = std::collections::BTreeMap::from([("QUAD:IN20:525:BCTRL".to_owned(), -4.0)]);
        let moved = model.what_if(&given).expect("in range");
        assert_eq!(
            moved.inputs["QUAD:IN20:525:BCTRL"].provenance,
            Provenance::Request
        );
        assert_ne!(
            moved.outputs["OTRS:IN20:571:XRMS"],
            defaults.outputs["OTRS:IN20:571:XRMS"]
        );
        let bad = std::collections::BTreeMap::from([
            ("QUAD:IN20:525:BCTRL".to_owned(), 2.5),
            ("QUAD:IN20:999:BCTRL".to_owned(), 1.0),
        ]);
        let error = model.what_if(&bad).expect_err("refused").to_string();
        assert!(
            error.contains("QUAD:IN20:525:BCTRL = 2.5 is outside the model's range"),
            "{error}"
        );
        assert!(
            error.contains("QUAD:IN20:999:BCTRL is not an input of the model"),
            "{error}"
        );
    }

    #[test]
    fn a_what_if_on_a_base_keeps_its_provenance_and_refuses_only_the_requests_values() {
        let model = Model::open(Path::new("builtin:lcls_cu_injector")).expect("built in");
        let base = Base::from([
            ("QUAD:IN20:525:BCTRL".to_owned(), (-3.0, Provenance::Live)),
            (
                "SOLN:IN20:121:BCTRL".to_owned(),
                (0.47, Provenance::Stale { age_s: 12.0 }),
            ),
            // The machine outside the range: flagged, still evaluated.
            ("QUAD:IN20:361:BCTRL".to_owned(), (-5.0, Provenance::Live)),
        ]);
        let given = std::collections::BTreeMap::from([("QUAD:IN20:371:BCTRL".to_owned(), 2.5)]);
        let evaluation = model.what_if_from(&base, &given).expect("evaluated");
        let input = |name: &str| evaluation.inputs[name].clone();
        assert_eq!(input("QUAD:IN20:525:BCTRL").value, -3.0);
        assert_eq!(input("QUAD:IN20:525:BCTRL").provenance, Provenance::Live);
        assert_eq!(
            input("SOLN:IN20:121:BCTRL").provenance,
            Provenance::Stale { age_s: 12.0 }
        );
        assert_eq!(input("QUAD:IN20:371:BCTRL").provenance, Provenance::Request);
        assert_eq!(input("QUAD:IN20:441:BCTRL").provenance, Provenance::Default);
        assert_eq!(evaluation.issues.len(), 1, "{:?}", evaluation.issues);
        assert_eq!(evaluation.issues[0].name(), "QUAD:IN20:361:BCTRL");
        // A request's value overrides the base; its own out-of-range value refuses it.
        let given = std::collections::BTreeMap::from([("QUAD:IN20:525:BCTRL".to_owned(), -4.0)]);
        let moved = model.what_if_from(&base, &given).expect("evaluated");
        assert_eq!(moved.inputs["QUAD:IN20:525:BCTRL"].value, -4.0);
        let given = std::collections::BTreeMap::from([("QUAD:IN20:361:BCTRL".to_owned(), -5.0)]);
        let error = model.what_if_from(&base, &given).expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("QUAD:IN20:361:BCTRL = -5 is outside"),
            "{error}"
        );
    }

    #[test]
    fn stale_read_only_and_non_finite_inputs_are_flagged() {
        let model = Model::load(&model_dir()).expect("loads");
        let given = std::collections::BTreeMap::from([
            (
                "SOLN:IN20:121:BCTRL".to_owned(),
                (0.47, Provenance::Stale { age_s: 12.0 }),
            ),
            ("Pulse_length".to_owned(), (3.0, Provenance::Live)),
            (
                "QUAD:IN20:361:BCTRL".to_owned(),
                (f64::NAN, Provenance::Live),
            ),
        ]);
        let (inputs, issues) = model.prepare(&given);
        assert_eq!(inputs[3].provenance, Provenance::Stale { age_s: 12.0 });
        assert_eq!(
            inputs[1].provenance,
            Provenance::Default,
            "read-only: the default is used"
        );
        assert_eq!(
            inputs[10].provenance,
            Provenance::Default,
            "NaN: the default is used"
        );
        assert_eq!(issues.len(), 2, "{issues:?}");
        let evaluated = model.evaluate_named(vec![(inputs, issues)]).expect("runs");
        assert!(evaluated[0].is_ok());
    }
}
