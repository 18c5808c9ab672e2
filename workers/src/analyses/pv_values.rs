//! `pv_values`: the values of EPICS PV streams (typ `EPICS_PV`) in each event, with their alarm
//! and their own CA time stamp, so the reducer can keep histories of machine values beside what
//! was computed from images.
//!
//! By default every PV stream of at most `max_elements` elements is reported (scalars and short
//! waveforms, not images); `streams` names the ones wanted instead.

use std::collections::BTreeMap;

use beamflow_protocol::streams::pv::{self, PvFrame};
use beamflow_protocol::{EventData, Parameters, StreamName, StreamType};
use serde::{Deserialize, Serialize};

use crate::analyses::AnalysisKind;
use crate::check::{ResultKeys, TableError, listed_streams};
use crate::{Analysis, AnalysisError, DynAnalysis};

fn default_max_elements() -> usize {
    16
}

/// Configuration of `pv_values`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvValuesConfig {
    /// The PV streams to report; default: those of at most `max_elements` elements.
    #[serde(default)]
    pub streams: Option<Vec<StreamName>>,
    /// Without `streams`: larger values (images) are left out.
    #[serde(default = "default_max_elements")]
    pub max_elements: usize,
}

impl Default for PvValuesConfig {
    fn default() -> Self {
        Self {
            streams: None,
            max_elements: default_max_elements(),
        }
    }
}

impl AnalysisKind for PvValuesConfig {
    const KIND: &str = "pv_values";
    const SUMMARY: &str = "per PV stream: `{value, severity, status, time, pulse_id}`";

    fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError> {
        Ok(Box::new(PvValues::new(self.clone())))
    }

    /// PV streams, the listed ones when `streams` is set.
    fn reads_stream(&self, stream: &StreamName, typ: &StreamType) -> bool {
        typ.as_str() == pv::TYP
            && self
                .streams
                .as_ref()
                .is_none_or(|listed| listed.contains(stream))
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        listed_streams(self.streams.as_deref())
    }

    fn check(&self) -> Result<ResultKeys, TableError> {
        Ok(self.result_keys())
    }
}

impl PvValuesConfig {
    /// What its results hold: per stream, a [`PvValue`].
    pub fn result_keys(&self) -> ResultKeys {
        let value = ResultKeys::Map(vec![
            ("value".to_owned(), ResultKeys::Numbers),
            ("severity".to_owned(), ResultKeys::Number),
            ("status".to_owned(), ResultKeys::Number),
            ("time".to_owned(), ResultKeys::Number),
            ("pulse_id".to_owned(), ResultKeys::Number),
        ]);
        ResultKeys::streams(self.streams.as_deref(), value)
    }
}

/// One PV's value in an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PvValue {
    /// A number for a one-element PV, else the list.
    pub value: Number,
    /// EPICS alarm severity (0 none, 1 minor, 2 major, 3 invalid).
    pub severity: u16,
    /// EPICS alarm status.
    pub status: u16,
    /// The CA time stamp, Unix seconds.
    pub time: f64,
    /// LCLS pulse id from the time stamp's low nanosecond bits, when it carries one.
    pub pulse_id: Option<u32>,
}

/// A scalar or a waveform.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Number {
    /// One element.
    Scalar(f64),
    /// Several (or none).
    Waveform(Vec<f64>),
}

/// The `pv_values` analysis.
#[derive(Debug)]
pub struct PvValues {
    config: PvValuesConfig,
}

impl PvValues {
    /// Builds the analysis.
    pub fn new(config: PvValuesConfig) -> Self {
        Self { config }
    }
}

impl Analysis for PvValues {
    type Output = BTreeMap<StreamName, PvValue>;

    fn process_event(
        &self,
        event: &EventData,
        _: &Parameters,
    ) -> Result<Option<Self::Output>, AnalysisError> {
        let mut output = BTreeMap::new();
        for (name, stream) in &event.streams {
            let listed = self.config.streams.as_ref().map(|s| s.contains(name));
            if stream.typ.as_str() != pv::TYP || listed == Some(false) {
                continue;
            }
            let frame = PvFrame::parse(&stream.frames)
                .map_err(|error| AnalysisError::Invalid(format!("stream {name}: {error}")))?;
            if listed.is_none() && frame.value.len() > self.config.max_elements {
                continue;
            }
            let mut values = frame.value.to_f64();
            let value = if values.len() == 1 {
                Number::Scalar(values.remove(0))
            } else {
                Number::Waveform(values)
            };
            let time = frame.timestamp();
            output.insert(
                name.clone(),
                PvValue {
                    value,
                    severity: frame.severity,
                    status: frame.status,
                    time: time.as_second() as f64 + f64::from(time.subsec_nanosecond()) * 1e-9,
                    pulse_id: pv::pulse_id(frame.nanos),
                },
            );
        }
        Ok((!output.is_empty()).then_some(output))
    }
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::{DType, EventNumber, NdArray, Value};
    use bytes::Bytes;

    use super::*;

    fn pv_frame(pv: &str, shape: Vec<usize>, dtype: DType, bytes: Vec<u8>, nanos: u32) -> PvFrame {
        PvFrame {
            pv: pv.to_owned(),
            status: 3,
            severity: 1,
            secs: 1_000_000_000,
            nanos,
            value: NdArray::new(shape, dtype, Bytes::from(bytes)).expect("consistent"),
        }
    }

    #[test]
    fn scalars_and_short_waveforms_with_alarm_time_and_pulse_id() {
        let mut event = EventData::new(EventNumber(3));
        let image = vec![0u8; 2 * 64];
        let streams = [
            (
                "bact",
                pv_frame(
                    "Q:BACT",
                    vec![],
                    DType::Float64,
                    2.5f64.to_le_bytes().to_vec(),
                    500_000_000 | 0x1FFFF,
                ),
            ),
            (
                "wave",
                pv_frame(
                    "W",
                    vec![3],
                    DType::Int16,
                    [1i16, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
                    12_345 << 17 | 77,
                ),
            ),
            ("image", pv_frame("I", vec![8, 8], DType::Uint16, image, 0)),
        ];
        for (name, frame) in streams {
            event.streams.insert(StreamName::from(name), frame.stream());
        }
        let output = PvValues::new(PvValuesConfig::default())
            .process_event(&event, &Parameters::default())
            .expect("readable")
            .expect("some values");
        assert_eq!(output.len(), 2, "the 64-element image is left out");
        let bact = &output[&StreamName::from("bact")];
        assert_eq!(bact.value, Number::Scalar(2.5));
        assert_eq!((bact.severity, bact.status, bact.pulse_id), (1, 3, None));
        // EPICS epoch 1990 + 1e9 s.
        let nanos = f64::from(500_000_000u32 | 0x1FFFF) * 1e-9;
        assert!(
            (bact.time - (631_152_000.0 + 1e9 + nanos)).abs() < 1e-6,
            "{}",
            bact.time
        );
        let wave = &output[&StreamName::from("wave")];
        assert_eq!(wave.value, Number::Waveform(vec![1.0, -2.0, 3.0]));
        assert_eq!(wave.pulse_id, Some(77));
        let tree = Value::from_serialize(&output).expect("serialisable");
        assert_eq!(
            tree.pointer("bact/value").and_then(Value::as_f64),
            Some(2.5)
        );
    }

    #[test]
    fn listed_streams_only_and_a_broken_frame_is_an_error() {
        let mut event = EventData::new(EventNumber(1));
        let frame = pv_frame("A", vec![], DType::Float64, 1f64.to_le_bytes().to_vec(), 0);
        event.streams.insert(StreamName::from("a"), frame.stream());
        event.streams.insert(StreamName::from("b"), frame.stream());
        let config = PvValuesConfig {
            streams: Some(vec![StreamName::from("b")]),
            ..PvValuesConfig::default()
        };
        let output = PvValues::new(config.clone())
            .process_event(&event, &Parameters::default())
            .expect("readable")
            .expect("one value");
        assert_eq!(output.keys().collect::<Vec<_>>(), [&StreamName::from("b")]);
        let mut broken = frame.stream();
        broken.frames.truncate(1);
        event.streams.insert(StreamName::from("b"), broken);
        let error = PvValues::new(config)
            .process_event(&event, &Parameters::default())
            .expect_err("one frame is not a PV frame");
        assert!(error.to_string().contains("stream b"), "{error}");
    }
}
