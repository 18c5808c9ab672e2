//! `bluesky`: a bluesky document as the reducer's scan views read it. Every document passes
//! through placed in its run (`document`, `run`, `stream`, `doc`); an event's inline arrays
//! (JSON or msgpack lists, msgpack-numpy arrays) become typed arrays, and the derived signals
//! the table configures (`signals = { trans = "ln(I0/It)" }`) are computed from its readings.
//!
//! A typed array in a result is `{dtype, shape, data}`: `int64` when every element is an
//! integer, else `float64`, little-endian bytes, row-major. A field whose list is ragged or
//! holds text is left out of `data` and named in `invalid` with the reason.

mod signal;

use std::collections::BTreeMap;

use beamflow_protocol::streams::bluesky::{self, DocumentName, RunDocument};
use beamflow_protocol::{EventData, Parameters, StreamName, StreamType, Value};
use bytes::Bytes;
use serde::Deserialize;

use crate::analyses::AnalysisKind;
use crate::check::{ResultKeys, TableError};
use crate::{Analysis, AnalysisError, DynAnalysis};

pub use signal::{Signal, SignalError};

/// Configuration of `bluesky`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueskyConfig {
    /// Derived signals by name: an expression over the event's readings (`It/I0`,
    /// `ln(I0/It)`, `(If1+If2)/I0`).
    #[serde(default)]
    pub signals: BTreeMap<String, String>,
}

impl BlueskyConfig {
    fn parsed(&self) -> Result<BTreeMap<String, Signal>, TableError> {
        self.signals
            .iter()
            .map(|(name, text)| {
                Signal::parse(text)
                    .map(|signal| (name.clone(), signal))
                    .map_err(|error| {
                        TableError::value(format!("signals.{name}"), format!("{text:?} {error}"))
                    })
            })
            .collect()
    }
}

impl AnalysisKind for BlueskyConfig {
    const KIND: &str = "bluesky";
    const SUMMARY: &str = "per bluesky document: `{document, run, stream, doc}`; events' \
        arrays typed, and the configured `signals` (`ln(I0/It)`) computed";

    fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError> {
        Ok(Box::new(Documents {
            signals: self.parsed()?,
        }))
    }

    fn reads_stream(&self, _: &StreamName, typ: &StreamType) -> bool {
        typ.as_str() == bluesky::TYP
    }

    fn check(&self) -> Result<ResultKeys, TableError> {
        self.parsed()?;
        // What `doc` holds is the RunEngine's to say.
        Ok(ResultKeys::Unknown)
    }
}

/// The `bluesky` analysis.
#[derive(Debug)]
pub struct Documents {
    signals: BTreeMap<String, Signal>,
}

impl Analysis for Documents {
    type Output = Value;

    fn process_event(
        &self,
        event: &EventData,
        _: &Parameters,
    ) -> Result<Option<Value>, AnalysisError> {
        let mut outputs = event
            .streams
            .iter()
            .filter(|(_, stream)| stream.typ.as_str() == bluesky::TYP)
            .map(|(name, stream)| {
                RunDocument::parse(stream)
                    .map(|document| self.output(document))
                    .map_err(|error| AnalysisError::Invalid(format!("stream {name}: {error}")))
            });
        // One document per event: the ingester makes an event of each.
        outputs.next().transpose()
    }
}

impl Documents {
    fn output(&self, document: RunDocument) -> Value {
        let text = |s: Option<String>| s.map_or(Value::Null, Value::Text);
        let mut output = BTreeMap::from([
            (
                "document".to_owned(),
                Value::Text(document.name.as_str().to_owned()),
            ),
            ("run".to_owned(), text(document.run)),
            ("stream".to_owned(), text(document.stream)),
        ]);
        let mut doc = document.doc;
        if document.name == DocumentName::Event {
            let mut invalid = BTreeMap::new();
            if let Value::Map(fields) = &mut doc
                && let Some(Value::Map(data)) = fields.get_mut("data")
            {
                let mut readings = BTreeMap::new();
                for (key, value) in data.iter_mut() {
                    match value {
                        Value::Array(_) => match typed_array(value) {
                            Ok(array) => *value = array,
                            Err(reason) => {
                                invalid.insert(key.clone(), Value::Text(reason));
                            }
                        },
                        Value::Int(n) => {
                            readings.insert(key.as_str(), *n as f64);
                        }
                        Value::Float(x) => {
                            readings.insert(key.as_str(), *x);
                        }
                        Value::Bool(b) => {
                            readings.insert(key.as_str(), f64::from(u8::from(*b)));
                        }
                        _ => {}
                    }
                }
                let signals = self
                    .signals
                    .iter()
                    .map(|(name, signal)| {
                        let value = signal
                            .evaluate(&readings)
                            .filter(|value| value.is_finite())
                            .map_or(Value::Null, Value::Float);
                        (name.clone(), value)
                    })
                    .collect();
                for key in invalid.keys() {
                    data.remove(key);
                }
                output.insert("signals".to_owned(), Value::Map(signals));
            }
            if !invalid.is_empty() {
                output.insert("invalid".to_owned(), Value::Map(invalid));
            }
        }
        output.insert("doc".to_owned(), doc);
        Value::Map(output)
    }
}

/// Nested lists as `{dtype, shape, data}`, or why they are no array.
fn typed_array(lists: &Value) -> Result<Value, String> {
    let mut shape = Vec::new();
    let mut level = lists;
    while let Value::Array(items) = level {
        shape.push(items.len());
        match items.first() {
            Some(first) => level = first,
            None => break,
        }
    }
    let mut elements = Vec::new();
    flatten(lists, &shape, &mut elements)?;
    let all_integers = elements.iter().all(|e| matches!(e, Value::Int(_)));
    let mut data = Vec::with_capacity(elements.len() * 8);
    for element in &elements {
        match (element, all_integers) {
            (Value::Int(n), true) => data.extend(n.to_le_bytes()),
            (Value::Int(n), false) => data.extend((*n as f64).to_le_bytes()),
            (Value::Float(x), _) => data.extend(x.to_le_bytes()),
            (Value::Bool(b), _) => data.extend(f64::from(u8::from(*b)).to_le_bytes()),
            (other, _) => return Err(format!("an array holding {}", other.kind())),
        }
    }
    let dtype = if all_integers { "int64" } else { "float64" };
    Ok(Value::typed_array(dtype, &shape, Bytes::from(data)))
}

/// The elements of `value`, checking every list has the length `shape` says at its depth.
fn flatten<'a>(value: &'a Value, shape: &[usize], out: &mut Vec<&'a Value>) -> Result<(), String> {
    match (value, shape) {
        (Value::Array(items), [n, rest @ ..]) if items.len() == *n => items
            .iter()
            .try_for_each(|item| flatten(item, rest, out)),
        (Value::Array(_), _) => Err(format!("a ragged array (not of shape {shape:?})")),
        (element, []) => {
            out.push(element);
            Ok(())
        }
        (_, _) => Err(format!("a ragged array (not of shape {shape:?})")),
    }
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::EventNumber;

    use super::*;

    fn json(text: &str) -> Value {
        let tree: serde_json::Value = serde_json::from_str(text).unwrap();
        Value::from_serialize(&tree).unwrap()
    }

    fn analysis(signals: &[(&str, &str)]) -> Documents {
        let config = BlueskyConfig {
            signals: signals
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        Documents {
            signals: config.parsed().unwrap(),
        }
    }

    fn process(analysis: &Documents, document: RunDocument) -> Value {
        let mut event = EventData::new(EventNumber(1));
        event
            .streams
            .insert("bluesky".into(), document.stream_data());
        analysis
            .process_event(&event, &Parameters::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn an_event_gets_typed_arrays_and_its_signals() {
        let output = process(
            &analysis(&[("trans", "ln(I0/It)"), ("missing", "It/Ir")]),
            RunDocument {
                name: DocumentName::Event,
                run: Some("r".to_owned()),
                stream: Some("primary".to_owned()),
                doc: json(
                    r#"{"seq_num": 1, "data": {"I0": 2.0, "It": 1, "img": [[1, 2, 3], [4, 5, 6]],
                        "wave": [0.5, 1], "bad": [[1], [2, 3]], "name": "Fe"}}"#,
                ),
            },
        );
        assert_eq!(output.pointer("document"), Some(&Value::Text("event".into())));
        assert_eq!(output.pointer("run"), Some(&Value::Text("r".into())));
        assert_eq!(output.pointer("signals/trans"), Some(&Value::Float(2f64.ln())));
        assert_eq!(output.pointer("signals/missing"), Some(&Value::Null));
        assert_eq!(output.pointer("doc/data/img/dtype"), Some(&Value::Text("int64".into())));
        assert_eq!(
            output.pointer("doc/data/img/shape"),
            Some(&Value::Array(vec![Value::Int(2), Value::Int(3)]))
        );
        let Some(Value::Bytes(pixels)) = output.pointer("doc/data/img/data") else {
            panic!("{output:?}");
        };
        assert_eq!(pixels.len(), 6 * 8);
        assert_eq!(pixels[40..48], 6i64.to_le_bytes());
        assert_eq!(output.pointer("doc/data/wave/dtype"), Some(&Value::Text("float64".into())));
        let Some(Value::Bytes(wave)) = output.pointer("doc/data/wave/data") else {
            panic!("{output:?}");
        };
        assert_eq!(wave[8..16], 1f64.to_le_bytes());
        assert_eq!(output.pointer("doc/data/bad"), None);
        assert!(matches!(output.pointer("invalid/bad"), Some(Value::Text(t)) if t.contains("ragged")));
        assert_eq!(output.pointer("doc/data/name"), Some(&Value::Text("Fe".into())));
    }

    #[test]
    fn other_documents_pass_through_in_their_run() {
        let output = process(
            &analysis(&[]),
            RunDocument {
                name: DocumentName::Stop,
                run: Some("r".to_owned()),
                stream: None,
                doc: json(r#"{"exit_status": "abort", "num_events": {"primary": 3}}"#),
            },
        );
        assert_eq!(output.pointer("document"), Some(&Value::Text("stop".into())));
        assert_eq!(output.pointer("stream"), Some(&Value::Null));
        assert_eq!(output.pointer("doc/num_events/primary"), Some(&Value::Int(3)));
    }

    #[test]
    fn a_signal_that_does_not_parse_is_refused_at_its_key() {
        let config: BlueskyConfig = toml::from_str("signals = { trans = \"ln(I0/\" }").unwrap();
        let error = config.check().unwrap_err();
        assert_eq!(error.key, "signals.trans");
        assert!(error.message.contains("at character 6"), "{}", error.message);
    }
}
