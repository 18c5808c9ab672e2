//! Configured paths that match nothing: a `history` column whose path is misspelt stays empty
//! while everything else works, so it is reported once, naming the keys that do exist.
//!
//! An accumulator with paths into results holds a [`PathWatch`], shows it every result and
//! returns its [`PathWatch::unmatched`] from [`Accumulator::unmatched`](crate::Accumulator::unmatched);
//! the [`Reducer`](crate::Reducer) logs each report once and serves them in the status.

use std::fmt;
use std::sync::Arc;

use beamflow_protocol::Value;
use serde::Serialize;

/// Results looked at before a path that matched none of them is reported. A path matching a
/// result this rare is unusual enough to be worth a warning; a scan with fewer results is
/// judged at its end.
pub const UNMATCHED_AFTER: u64 = 100;

/// Keys listed in the text of a report at most; the status lists them all.
const KEYS_SHOWN: usize = 20;

/// A configured path that matched none of the first results (up to [`UNMATCHED_AFTER`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmatched {
    /// The column (or other name the configuration gives the path).
    pub column: String,
    /// The `/`-separated path.
    pub path: String,
    /// Results looked at.
    pub results: u64,
    /// Where the path stops, in the result it reached deepest into, e.g. `"xrmz" is not a key`.
    pub reason: String,
    /// The keys of the map where it stopped; empty when it stopped elsewhere.
    pub keys: Vec<String>,
}

impl fmt::Display for Unmatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "column {} path {:?} matched none of the first {} results; {}",
            self.column, self.path, self.results, self.reason
        )?;
        if !self.keys.is_empty() {
            let shown: Vec<&str> = self
                .keys
                .iter()
                .take(KEYS_SHOWN)
                .map(String::as_str)
                .collect();
            write!(f, "; keys there: {}", shown.join(", "))?;
            if self.keys.len() > KEYS_SHOWN {
                write!(f, ", ... ({} more)", self.keys.len() - KEYS_SHOWN)?;
            }
        }
        Ok(())
    }
}

/// What is known of one path while results are looked at.
enum Watched {
    /// Some result had it: never reported.
    Matched,
    /// None so far; the result the path reached deepest into, to say where it stops.
    Unmatched {
        depth: usize,
        deepest: Option<Arc<Value>>,
    },
}

/// Watches named paths over an accumulator's first [`UNMATCHED_AFTER`] results.
pub struct PathWatch {
    paths: Vec<(String, String)>,
    watched: Vec<Watched>,
    looked_at: u64,
    decided: bool,
    unmatched: Vec<Unmatched>,
}

impl PathWatch {
    /// Watches `(name, path)` pairs.
    pub fn new(paths: impl IntoIterator<Item = (String, String)>) -> Self {
        let paths: Vec<(String, String)> = paths.into_iter().collect();
        let watched = paths
            .iter()
            .map(|_| Watched::Unmatched {
                depth: 0,
                deepest: None,
            })
            .collect();
        Self {
            paths,
            watched,
            looked_at: 0,
            decided: false,
            unmatched: Vec::new(),
        }
    }

    /// Looks at one result; after [`UNMATCHED_AFTER`] of them it decides and looks no more, so
    /// a long scan pays nothing.
    pub fn observe(&mut self, payload: &Arc<Value>) {
        if self.decided {
            return;
        }
        for ((_, path), watched) in self.paths.iter().zip(&mut self.watched) {
            let Watched::Unmatched { depth, deepest } = watched else {
                continue;
            };
            match reach(payload, path) {
                Ok(()) => *watched = Watched::Matched,
                Err(reached) => {
                    if deepest.is_none() || reached > *depth {
                        *depth = reached;
                        *deepest = Some(Arc::clone(payload));
                    }
                }
            }
        }
        self.looked_at += 1;
        if self.looked_at >= UNMATCHED_AFTER {
            self.decide();
        }
    }

    /// Decides on the results seen so far (a scan ended before [`UNMATCHED_AFTER`]). Without
    /// any result there is nothing to judge a path by, and nothing is reported.
    pub fn finish(&mut self) {
        if !self.decided && self.looked_at > 0 {
            self.decide();
        }
    }

    fn decide(&mut self) {
        self.decided = true;
        let looked_at = self.looked_at;
        self.unmatched = self
            .paths
            .iter()
            .zip(std::mem::take(&mut self.watched))
            .filter_map(|((column, path), watched)| match watched {
                Watched::Matched => None,
                Watched::Unmatched { deepest, .. } => {
                    let (reason, keys) = match deepest {
                        Some(result) => diagnose(&result, path),
                        None => ("no result to look at".to_owned(), Vec::new()),
                    };
                    Some(Unmatched {
                        column: column.clone(),
                        path: path.clone(),
                        results: looked_at,
                        reason,
                        keys,
                    })
                }
            })
            .collect();
    }

    /// The paths that matched none of the results, once decided; empty before.
    pub fn unmatched(&self) -> &[Unmatched] {
        &self.unmatched
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|segment| !segment.is_empty())
}

/// `Ok` when `path` leads to a value other than null (what [`Value::pointer`] callers use),
/// else how many segments it got through.
fn reach(value: &Value, path: &str) -> Result<(), usize> {
    let mut node = value;
    for (depth, segment) in segments(path).enumerate() {
        node = child(node, segment).ok_or(depth)?;
    }
    match node {
        Value::Null => Err(segments(path).count()),
        _ => Ok(()),
    }
}

fn child<'a>(node: &'a Value, segment: &str) -> Option<&'a Value> {
    match node {
        Value::Map(entries) => entries.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

/// Where `path` stops in `value`, and the keys there when it stops in a map.
fn diagnose(value: &Value, path: &str) -> (String, Vec<String>) {
    let mut node = value;
    let mut reached: Vec<&str> = Vec::new();
    for segment in segments(path) {
        let Some(next) = child(node, segment) else {
            let at = if reached.is_empty() {
                "the result".to_owned()
            } else {
                format!("{:?}", reached.join("/"))
            };
            return match node {
                Value::Map(entries) => (
                    format!("{segment:?} is not a key of {at}"),
                    entries.keys().cloned().collect(),
                ),
                Value::Array(items) => (
                    format!(
                        "{segment:?} is not an index of {at}, an array of {} items",
                        items.len()
                    ),
                    Vec::new(),
                ),
                other => (
                    format!("{at} is {}, it has no {segment:?}", other.kind()),
                    Vec::new(),
                ),
            };
        };
        reached.push(segment);
        node = next;
    }
    (format!("{path:?} is {}", node.kind()), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    fn pv(value: f64) -> Value {
        map(&[("value", Value::Float(value))])
    }

    fn machine() -> Arc<Value> {
        Arc::new(map(&[
            ("qe04", pv(1.0)),
            ("xrms", pv(2.0)),
            ("yrms", pv(3.0)),
        ]))
    }

    #[test]
    fn a_misspelt_key_is_reported_once_with_the_keys_there() {
        let mut watch = PathWatch::new([
            ("xrms".to_owned(), "xrmz/value".to_owned()),
            ("yrms".to_owned(), "yrms/value".to_owned()),
        ]);
        for _ in 0..UNMATCHED_AFTER - 1 {
            watch.observe(&machine());
        }
        assert!(watch.unmatched().is_empty(), "not decided before the limit");
        watch.observe(&machine());
        let [unmatched] = watch.unmatched() else {
            panic!("{:?}", watch.unmatched())
        };
        insta::assert_snapshot!(unmatched, @r#"column xrms path "xrmz/value" matched none of the first 100 results; "xrmz" is not a key of the result; keys there: qe04, xrms, yrms"#);
        // Decided once: later results, even matching ones, change nothing.
        watch.observe(&Arc::new(map(&[("xrmz", pv(1.0))])));
        watch.finish();
        assert_eq!(watch.unmatched().len(), 1);
    }

    #[test]
    fn a_path_that_matched_once_is_never_reported() {
        let mut watch = PathWatch::new([("x".to_owned(), "xrms/value".to_owned())]);
        watch.observe(&machine());
        for _ in 0..2 * UNMATCHED_AFTER {
            watch.observe(&Arc::new(map(&[])));
        }
        watch.finish();
        assert!(watch.unmatched().is_empty());
    }

    #[test]
    fn a_short_scan_is_judged_at_its_end_and_an_empty_one_not_at_all() {
        let mut watch = PathWatch::new([("m".to_owned(), "det/0/maen".to_owned())]);
        watch.finish();
        assert!(watch.unmatched().is_empty(), "no result, nothing to judge");
        let stats = Arc::new(map(&[(
            "det",
            Value::Array(vec![map(&[
                ("mean", Value::Float(1.0)),
                ("max", Value::Int(3)),
            ])]),
        )]));
        watch.observe(&Arc::new(map(&[])));
        watch.observe(&stats);
        watch.finish();
        // Reported from the result the path got deepest into, not the last one.
        insta::assert_snapshot!(watch.unmatched()[0], @r#"column m path "det/0/maen" matched none of the first 2 results; "maen" is not a key of "det/0"; keys there: max, mean"#);
    }

    #[test]
    fn reasons_for_arrays_scalars_and_nulls() {
        let result = map(&[
            ("det", Value::Array(vec![Value::Float(1.0)])),
            ("gone", Value::Null),
        ]);
        let reasons: Vec<String> = ["det/1", "det/0/mean", "gone"]
            .iter()
            .map(|path| diagnose(&result, path).0)
            .collect();
        assert_eq!(
            reasons,
            [
                r#""1" is not an index of "det", an array of 1 items"#,
                r#""det/0" is float, it has no "mean""#,
                r#""gone" is null"#,
            ]
        );
        assert_eq!(reach(&result, "det/0"), Ok(()));
        assert_eq!(reach(&result, "gone"), Err(1));
        assert_eq!(reach(&result, "det/0/mean"), Err(2));
    }
}
