//! What a pipeline check learns from an analysis's table before anything runs: [`ResultKeys`],
//! the keys its results can hold, so a path into them (a history column, a quad scan's
//! setting) that can never match is refused at load time instead of giving NaN forever; and
//! [`TableError`], a mistake at one key of the table.
//!
//! Only what the table tells is checked: stream names a table does not list are the pipeline's
//! (the caller passes them, or `None` when they are known only once the sources run), and an
//! analysis whose results depend on its input says [`ResultKeys::Unknown`].

use std::collections::BTreeSet;

use beamflow_protocol::StreamName;

/// A mistake in one `[analyses.<name>]` table, at one of its keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TableError {
    /// The key in the table, dotted as TOML writes it (`attach[0]`, `inputs."QUAD:IN20:525:BCTRL"`).
    pub key: String,
    /// What is wrong there.
    pub message: String,
    /// Whether the mistake is the key's name itself (an unknown model input) rather than its
    /// value.
    pub in_name: bool,
}

impl TableError {
    /// A mistake in the value at `key`.
    pub fn value(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            in_name: false,
        }
    }

    /// A mistake in the name of `key`.
    pub fn name(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            in_name: true,
            ..Self::value(key, message)
        }
    }
}

/// The keys a result can hold, as far as the analysis's table tells.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultKeys {
    /// Not known before the analysis runs: any path is accepted.
    Unknown,
    /// A number (or null).
    Number,
    /// A number, or a list of numbers (a PV's value): at most an index below.
    Numbers,
    /// A string or a flag: nothing below.
    Text,
    /// A list; `len` when the analysis fixes it.
    List {
        /// Its length, when fixed.
        len: Option<usize>,
        /// What each element holds.
        each: Box<ResultKeys>,
    },
    /// A map with these keys.
    Map(Vec<(String, ResultKeys)>),
    /// A map keyed by the pipeline's streams (all of them, or those present in the event).
    Streams(Box<ResultKeys>),
    /// One of these: a path is accepted when any accepts it (results of several analyses).
    Either(Vec<ResultKeys>),
}

impl ResultKeys {
    /// A map whose keys all hold the same.
    pub fn named<S: ToString>(names: impl IntoIterator<Item = S>, each: &ResultKeys) -> Self {
        ResultKeys::Map(
            names
                .into_iter()
                .map(|name| (name.to_string(), each.clone()))
                .collect(),
        )
    }

    /// A map keyed by `listed` streams when the table lists them, else by the pipeline's.
    pub fn streams(listed: Option<&[StreamName]>, each: ResultKeys) -> Self {
        match listed {
            Some(listed) => ResultKeys::named(listed, &each),
            None => ResultKeys::Streams(Box::new(each)),
        }
    }

    /// Follows a `/`-separated path (as `Value::pointer` reads it) and returns what it reaches,
    /// or says where it leaves the keys the results can hold. `streams` are the pipeline's
    /// streams, `None` when unknown.
    pub fn check(
        &self,
        path: &str,
        streams: Option<&BTreeSet<StreamName>>,
    ) -> Result<&ResultKeys, String> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.follow(&segments, 0, streams)
            .map_err(|(_, message)| message)
    }

    /// Whether what a path reaches may be a number.
    pub fn may_be_number(&self) -> bool {
        match self {
            ResultKeys::Unknown | ResultKeys::Number | ResultKeys::Numbers => true,
            ResultKeys::Either(options) => options.iter().any(ResultKeys::may_be_number),
            _ => false,
        }
    }

    /// What `segments[depth..]` reaches, or the depth of the segment that leaves the keys and
    /// why.
    fn follow<'a>(
        &'a self,
        segments: &[&str],
        depth: usize,
        streams: Option<&BTreeSet<StreamName>>,
    ) -> Result<&'a ResultKeys, (usize, String)> {
        let Some(&segment) = segments.get(depth) else {
            return Ok(self);
        };
        let above = Above(depth, segments[..depth].join("/"));
        let fail = |message: String| Err((depth, message));
        let next = |keys: &'a ResultKeys| keys.follow(segments, depth + 1, streams);
        match self {
            ResultKeys::Unknown => Ok(self),
            ResultKeys::Number => fail(format!(
                "{above} {} a number, nothing is below it",
                above.verb("hold", "holds")
            )),
            ResultKeys::Text => fail(format!(
                "{above} {} a string or a flag, nothing is below it",
                above.verb("hold", "holds")
            )),
            ResultKeys::Numbers => match (segment.parse::<usize>(), segments.len() - depth) {
                (Ok(_), 1) => Ok(&ResultKeys::Number),
                _ => fail(format!(
                    "{above} {} a number or a list of numbers: at most an index is below it",
                    above.verb("hold", "holds")
                )),
            },
            ResultKeys::List { len, each } => match segment.parse::<usize>() {
                Ok(index) if len.is_none_or(|len| index < len) => next(each),
                Ok(index) => fail(format!(
                    "{above} {} {} element{}: there is no index {index}",
                    above.verb("hold", "holds"),
                    len.unwrap_or_default(),
                    if *len == Some(1) { "" } else { "s" }
                )),
                Err(_) => fail(format!(
                    "{above} {} a list: an index (0, 1, ...) goes before {segment:?}",
                    above.verb("are", "is")
                )),
            },
            ResultKeys::Map(entries) => match entries.iter().find(|(key, _)| key == segment) {
                Some((_, keys)) => next(keys),
                None => fail(unknown_key(
                    segment,
                    &above,
                    entries.iter().map(|(key, _)| key.as_str()),
                )),
            },
            ResultKeys::Streams(each) => match streams {
                Some(streams) if !streams.contains(segment) => fail(unknown_key(
                    segment,
                    &above,
                    streams.iter().map(StreamName::as_str),
                )),
                _ => next(each),
            },
            ResultKeys::Either(options) => {
                let mut errors = Vec::new();
                for option in options {
                    match option.follow(segments, depth, streams) {
                        Ok(keys) => return Ok(keys),
                        Err(error) => errors.push(error),
                    }
                }
                // The option that matched furthest says the most; when none matched this
                // segment, every option's keys are the candidates.
                let deepest = errors.iter().map(|(at, _)| *at).max().unwrap_or(depth);
                if deepest > depth {
                    return Err(errors
                        .into_iter()
                        .find(|(at, _)| *at == deepest)
                        .unwrap_or((deepest, String::new())));
                }
                let keys: Vec<&str> = options
                    .iter()
                    .flat_map(|option| option.top_keys(streams))
                    .collect();
                fail(unknown_key(segment, &above, keys.into_iter()))
            }
        }
    }

    /// The keys at the top of this level that are known.
    fn top_keys<'a>(&'a self, streams: Option<&'a BTreeSet<StreamName>>) -> Vec<&'a str> {
        match self {
            ResultKeys::Map(entries) => entries.iter().map(|(key, _)| key.as_str()).collect(),
            ResultKeys::Streams(_) => streams
                .into_iter()
                .flatten()
                .map(StreamName::as_str)
                .collect(),
            ResultKeys::Either(options) => options
                .iter()
                .flat_map(|option| option.top_keys(streams))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Where in the results a path is: its depth and the path so far, for messages.
struct Above(usize, String);

impl Above {
    fn verb<'a>(&self, plural: &'a str, singular: &'a str) -> &'a str {
        if self.0 == 0 { plural } else { singular }
    }
}

impl std::fmt::Display for Above {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => f.write_str("the results"),
            _ => write!(f, "{:?}", self.1),
        }
    }
}

/// A listed `streams = [...]`, each with its key (`streams[1]`).
pub(crate) fn listed_streams(streams: Option<&[StreamName]>) -> Vec<(String, StreamName)> {
    streams
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, stream)| (format!("streams[{i}]"), stream.clone()))
        .collect()
}

fn unknown_key<'a>(segment: &str, above: &Above, keys: impl Iterator<Item = &'a str>) -> String {
    let keys: BTreeSet<&str> = keys.collect();
    let have = above.verb("have", "has");
    match nearest(segment, keys.iter().copied()) {
        Some(near) => format!("{above} {have} no key {segment:?}; did you mean {near:?}?"),
        None if keys.is_empty() => format!("{above} {have} no key {segment:?}"),
        None => format!(
            "{above} {have} no key {segment:?}; there are {}",
            keys.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `" (did you mean "x"?)"` when a known name is near `given`, else nothing.
pub fn suggestion<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    nearest(given, known).map_or_else(String::new, |near| format!(" (did you mean {near:?}?)"))
}

/// The known name nearest to `given` by edit distance, if near enough to be a typo: within a
/// third of its length (so a one- or two-letter name has none).
pub fn nearest<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = given.chars().count() / 3;
    known
        .into_iter()
        .map(|name| (edit_distance(given, name), name))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, name)| name)
}

/// Edits between two names, in characters: insertions, deletions, substitutions and swaps of
/// neighbours (the optimal string alignment distance), since a swap is the commonest typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> ResultKeys {
        ResultKeys::Streams(Box::new(ResultKeys::List {
            len: Some(1),
            each: Box::new(ResultKeys::Map(vec![
                ("mean".to_owned(), ResultKeys::Number),
                (
                    "shape".to_owned(),
                    ResultKeys::List {
                        len: None,
                        each: Box::new(ResultKeys::Number),
                    },
                ),
            ])),
        }))
    }

    #[test]
    fn paths_are_followed_as_far_as_the_keys_are_known() {
        let streams: BTreeSet<StreamName> = ["det".into(), "pcap".into()].into();
        let keys = stats();
        assert_eq!(
            keys.check("det/0/mean", Some(&streams)),
            Ok(&ResultKeys::Number)
        );
        assert!(keys.check("det/0/shape/1", Some(&streams)).is_ok());
        assert!(keys.check("anything/0/mean", None).is_ok());
        assert_eq!(
            keys.check("dett/0/mean", Some(&streams)).unwrap_err(),
            "the results have no key \"dett\"; did you mean \"det\"?"
        );
        assert_eq!(
            keys.check("det/1/mean", None).unwrap_err(),
            "\"det\" holds 1 element: there is no index 1"
        );
        assert_eq!(
            keys.check("det/mean", None).unwrap_err(),
            "\"det\" is a list: an index (0, 1, ...) goes before \"mean\""
        );
        assert_eq!(
            keys.check("det/0/maen", None).unwrap_err(),
            "\"det/0\" has no key \"maen\"; did you mean \"mean\"?"
        );
        assert_eq!(
            keys.check("det/0/mean/x", None).unwrap_err(),
            "\"det/0/mean\" holds a number, nothing is below it"
        );
        assert!(!keys.check("det/0", None).unwrap().may_be_number());
    }

    #[test]
    fn either_accepts_what_one_accepts_and_reports_the_one_that_matched_furthest() {
        let keys = ResultKeys::Either(vec![
            stats(),
            ResultKeys::Map(vec![("x".to_owned(), ResultKeys::Number)]),
        ]);
        let streams: BTreeSet<StreamName> = ["det".into()].into();
        assert!(keys.check("x", Some(&streams)).is_ok());
        assert!(keys.check("det/0/mean", Some(&streams)).is_ok());
        assert_eq!(
            keys.check("x/y", Some(&streams)).unwrap_err(),
            "\"x\" holds a number, nothing is below it"
        );
        assert_eq!(
            keys.check("z", Some(&streams)).unwrap_err(),
            "the results have no key \"z\"; there are det, x"
        );
    }

    #[test]
    fn near_names_are_suggested_and_far_ones_are_not() {
        let known = ["qe01", "qe02", "qe04", "xrms", "otr2"];
        assert_eq!(nearest("qe4", known), Some("qe04"));
        assert_eq!(nearest("xrm", known), Some("xrms"));
        assert_eq!(nearest("solenoid", known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("maen", "mean"), 1);
    }
}
