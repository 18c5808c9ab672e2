//! Sweeps: `NAME=FROM:TO:COUNT` read from the command line, and their grid of what-if rows.

/// At most this many rows in one sweep: a typo in a count must not fill the memory.
pub const MAX_SWEEP_ROWS: usize = 1_000_000;

/// One input stepped over evenly spaced values: `NAME=FROM:TO:COUNT`, both ends included
/// (`QUAD:IN20:525:BCTRL=-6:-2:9`). PV names hold colons, so the name ends at the last `=`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// The input.
    pub name: String,
    /// Its values, in order.
    pub values: Vec<f64>,
}

/// Why a sweep cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SweepError {
    /// Not `NAME=FROM:TO:COUNT`.
    #[error("{0:?} is not NAME=FROM:TO:COUNT (e.g. QUAD:IN20:525:BCTRL=-6:-2:9)")]
    Syntax(String),
    /// An end that is not a finite number, or a count below 1.
    #[error("{text:?}: {reason}")]
    Value {
        /// The sweep as given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// One input swept twice.
    #[error("{0} is swept twice")]
    Twice(String),
    /// More rows than [`MAX_SWEEP_ROWS`].
    #[error("{0} rows; at most {MAX_SWEEP_ROWS} in one sweep")]
    TooLarge(usize),
}

impl std::str::FromStr for Sweep {
    type Err = SweepError;

    fn from_str(text: &str) -> Result<Self, SweepError> {
        let syntax = || SweepError::Syntax(text.to_owned());
        let (name, range) = text.rsplit_once('=').ok_or_else(syntax)?;
        let parts: Vec<&str> = range.split(':').collect();
        let [from, to, count] = parts.as_slice() else {
            return Err(syntax());
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(syntax());
        }
        let value = |reason: String| SweepError::Value {
            text: text.to_owned(),
            reason,
        };
        let number = |part: &str, what: &str| -> Result<f64, SweepError> {
            part.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| value(format!("{what} {part:?} is not a finite number")))
        };
        let from = number(from, "FROM")?;
        let to = number(to, "TO")?;
        let count: usize = count
            .trim()
            .parse()
            .ok()
            .filter(|&c| c >= 1)
            .ok_or_else(|| {
                value(format!(
                    "COUNT {count:?} is not a whole number of at least 1"
                ))
            })?;
        if count > MAX_SWEEP_ROWS {
            return Err(SweepError::TooLarge(count));
        }
        let values = (0..count)
            .map(|i| match i {
                0 => from,
                // The end exactly as written, not as from + (to − from) rounds it.
                i if i == count - 1 => to,
                i => from + (to - from) * i as f64 / (count - 1) as f64,
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            values,
        })
    }
}

impl Sweep {
    /// Every combination of the sweeps' values, the first sweep varying slowest; one row with
    /// no values when there are no sweeps.
    pub fn grid(
        sweeps: &[Sweep],
    ) -> Result<Vec<std::collections::BTreeMap<String, f64>>, SweepError> {
        for (i, sweep) in sweeps.iter().enumerate() {
            if sweeps[..i].iter().any(|s| s.name == sweep.name) {
                return Err(SweepError::Twice(sweep.name.clone()));
            }
        }
        let total = sweeps
            .iter()
            .try_fold(1usize, |n, s| n.checked_mul(s.values.len()))
            .unwrap_or(usize::MAX);
        if total > MAX_SWEEP_ROWS {
            return Err(SweepError::TooLarge(total));
        }
        let mut rows = vec![std::collections::BTreeMap::new()];
        for sweep in sweeps {
            rows = rows
                .into_iter()
                .flat_map(|row| {
                    sweep.values.iter().map(move |&value| {
                        let mut row = row.clone();
                        row.insert(sweep.name.clone(), value);
                        row
                    })
                })
                .collect();
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::test_data::reference;
    use crate::{Base, EvaluationError, Model, Provenance};

    #[test]
    fn a_sweep_is_read_with_colons_in_the_name_and_keeps_its_ends_exact() {
        let sweep: Sweep = "QUAD:IN20:525:BCTRL=-3.218399988942528:-1.1:3"
            .parse()
            .expect("valid");
        assert_eq!(sweep.name, "QUAD:IN20:525:BCTRL");
        assert_eq!(sweep.values, [-3.218399988942528, -2.159199994471264, -1.1]);
        let one: Sweep = "a=2:5:1".parse().expect("valid");
        assert_eq!(one.values, [2.0]);
        for (text, message) in [
            (
                "QUAD:IN20:525:BCTRL",
                "\"QUAD:IN20:525:BCTRL\" is not NAME=FROM:TO:COUNT (e.g. QUAD:IN20:525:BCTRL=-6:-2:9)",
            ),
            (
                "a=1:2",
                "\"a=1:2\" is not NAME=FROM:TO:COUNT (e.g. QUAD:IN20:525:BCTRL=-6:-2:9)",
            ),
            ("a=x:2:3", "\"a=x:2:3\": FROM \"x\" is not a finite number"),
            (
                "a=1:2:0",
                "\"a=1:2:0\": COUNT \"0\" is not a whole number of at least 1",
            ),
            (
                "a=1:2:2000000",
                "2000000 rows; at most 1000000 in one sweep",
            ),
        ] {
            let error = text.parse::<Sweep>().expect_err(text).to_string();
            assert_eq!(error, message);
        }
        let grid = Sweep::grid(&[
            "a=1:2:2".parse().expect("valid"),
            "b=0:1:3".parse().expect("valid"),
        ])
        .expect("small");
        assert_eq!(grid.len(), 6);
        assert_eq!((grid[1]["a"], grid[1]["b"]), (1.0, 0.5));
        assert_eq!((grid[3]["a"], grid[3]["b"]), (2.0, 0.0));
        let twice = Sweep::grid(&[
            "a=1:2:2".parse().expect("valid"),
            "a=0:1:3".parse().expect("valid"),
        ]);
        assert_eq!(twice, Err(SweepError::Twice("a".to_owned())));
        assert_eq!(Sweep::grid(&[]).expect("one row"), [Default::default()]);
    }

    #[test]
    fn a_sweep_through_a_reference_point_reproduces_it_in_one_batch() {
        let model = Model::open(Path::new("builtin:lcls_cu_injector")).expect("built in");
        let text = std::fs::read_to_string(reference()).expect("reference");
        let reference: serde_json::Value = serde_json::from_str(&text).expect("json");
        let point = &reference["points"][3];
        let name = "QUAD:IN20:525:BCTRL";
        let at = point["inputs"][name].as_f64().expect("a value");
        let base: Base = point["inputs"]
            .as_object()
            .expect("inputs")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (v.as_f64().expect("a number"), Provenance::Request),
                )
            })
            .collect();
        // The reference value as the sweep's far end, reached exactly.
        let sweep: Sweep = format!("{name}=-7:{at}:5").parse().expect("valid");
        let rows = Sweep::grid(&[sweep]).expect("small");
        let evaluations = model.what_if_batch(&base, &rows).expect("in range");
        assert_eq!(evaluations.len(), 5);
        let last = &evaluations[4];
        for (output, want) in point["outputs"].as_object().expect("outputs") {
            let want = want.as_f64().expect("a number");
            let got = last.outputs[output].value;
            assert!(
                ((got - want) / want).abs() < 1e-9,
                "{output}: {got} vs {want}"
            );
        }
        // One batch gives what one-by-one evaluation gives.
        let alone = model.what_if_from(&base, &rows[1]).expect("in range");
        assert_eq!(alone, evaluations[1]);
        // An out-of-range row refuses the batch, each reason once.
        let rows =
            Sweep::grid(&["QUAD:IN20:525:BCTRL=-9:-8:3".parse().expect("valid")]).expect("small");
        let EvaluationError::Inputs(issues) =
            model.what_if_batch(&base, &rows).expect_err("refused")
        else {
            panic!("refused for its inputs");
        };
        assert_eq!(issues.len(), 3, "{issues:?}");
    }
}
