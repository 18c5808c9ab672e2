//! `pv_linear`: `gain × value + offset` of a scalar PV stream, with the gain and offset as
//! parameters. A tiny processing device, EPICS in and EPICS out: the PV comes in over Channel
//! Access or PV Access, the parameters are PVs a client puts (`[reducer.pvs] parameters =
//! true`), and the result is a result PV.

use beamflow_protocol::streams::pv::{self, PvFrame};
use beamflow_protocol::{
    EventData, ParameterDescription, ParameterType, ParameterValue, Parameters, StreamName,
    StreamType,
};
use serde::{Deserialize, Serialize};

use crate::analyses::AnalysisKind;
use crate::check::{ResultKeys, TableError};
use crate::{Analysis, AnalysisError, DynAnalysis};

/// Configuration of `pv_linear`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvLinearConfig {
    /// The scalar PV stream.
    pub stream: StreamName,
    /// The parameters' prefix: `<parameters>_gain` and `<parameters>_offset` (default: the
    /// stream's name).
    #[serde(default)]
    pub parameters: Option<String>,
    /// The gain until its parameter is set.
    #[serde(default = "one")]
    pub gain: f64,
    /// The offset until its parameter is set.
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

impl PvLinearConfig {
    fn parameter(&self, what: &str) -> String {
        let prefix = self.parameters.as_deref().unwrap_or(self.stream.as_str());
        format!("{prefix}_{what}")
    }
}

impl AnalysisKind for PvLinearConfig {
    const KIND: &str = "pv_linear";
    const SUMMARY: &str = "`gain × value + offset` of a scalar PV, gain and offset parameters (PVs a client puts): `{value, input, severity}`";

    fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError> {
        if !(self.gain.is_finite() && self.offset.is_finite()) {
            return Err(TableError::value("gain", "gain and offset must be finite numbers"));
        }
        Ok(Box::new(PvLinear(self.clone())))
    }

    fn reads_stream(&self, stream: &StreamName, _: &StreamType) -> bool {
        *stream == self.stream
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        vec![("stream".to_owned(), self.stream.clone())]
    }

    fn check(&self) -> Result<ResultKeys, TableError> {
        self.build()?;
        Ok(ResultKeys::named(["value", "input", "severity"], &ResultKeys::Number))
    }

    fn describe_parameters(&self) -> Vec<ParameterDescription> {
        [("gain", self.gain), ("offset", self.offset)]
            .into_iter()
            .map(|(what, default)| ParameterDescription {
                name: self.parameter(what).as_str().into(),
                dtype: ParameterType::Float,
                default: ParameterValue::Float(default),
                description: format!("pv_linear: the {what} applied to stream {}", self.stream),
            })
            .collect()
    }
}

/// The result and what it came from.
#[derive(Debug, PartialEq, Serialize)]
pub struct PvLinearOutput {
    /// `gain × input + offset`.
    pub value: f64,
    /// The PV's value.
    pub input: f64,
    /// The PV's alarm severity, passed on.
    pub severity: u16,
}

/// The `pv_linear` analysis.
pub struct PvLinear(PvLinearConfig);

impl Analysis for PvLinear {
    type Output = PvLinearOutput;

    fn process_event(
        &self,
        event: &EventData,
        parameters: &Parameters,
    ) -> Result<Option<PvLinearOutput>, AnalysisError> {
        let Some(stream) = event.streams.get(&self.0.stream) else {
            return Ok(None);
        };
        if stream.typ.as_str() != pv::TYP {
            return Err(AnalysisError::Invalid(format!(
                "stream {} is not a PV stream",
                self.0.stream
            )));
        }
        let frame = PvFrame::parse(&stream.frames)
            .map_err(|error| AnalysisError::Invalid(format!("stream {}: {error}", self.0.stream)))?;
        let [input] = frame.value.to_f64()[..] else {
            return Err(AnalysisError::Invalid(format!(
                "stream {}: {} elements, a scalar was expected",
                self.0.stream,
                frame.value.len()
            )));
        };
        let gain = parameters.float(&self.0.parameter("gain")).unwrap_or(self.0.gain);
        let offset = parameters
            .float(&self.0.parameter("offset"))
            .unwrap_or(self.0.offset);
        Ok(Some(PvLinearOutput {
            value: gain * input + offset,
            input,
            severity: frame.severity,
        }))
    }
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::{DType, EventNumber, NdArray, ParameterName};
    use bytes::Bytes;

    use super::*;

    fn event(value: f64) -> EventData {
        let frame = PvFrame {
            pv: "X".to_owned(),
            status: 0,
            severity: 1,
            secs: 0,
            nanos: 0,
            value: NdArray::new(vec![], DType::Float64, Bytes::from(value.to_le_bytes().to_vec()))
                .unwrap(),
        };
        let mut event = EventData::new(EventNumber(1));
        event.streams.insert("x".into(), frame.stream());
        event
    }

    #[test]
    fn the_parameters_set_the_gain_and_offset() {
        let config: PvLinearConfig = toml::from_str("stream = \"x\"\noffset = 1.0").unwrap();
        let analysis = PvLinear(config.clone());
        let defaults = Parameters::resolve([], &config.describe_parameters()).unwrap();
        let output = analysis.process_event(&event(2.0), &defaults).unwrap().unwrap();
        assert_eq!((output.value, output.input, output.severity), (3.0, 2.0, 1));
        let set = Parameters::resolve(
            [(ParameterName::from("x_gain"), Bytes::from("2.5"))],
            &config.describe_parameters(),
        )
        .unwrap();
        let output = analysis.process_event(&event(2.0), &set).unwrap().unwrap();
        assert_eq!(output.value, 6.0);
        let elsewhere = EventData::new(EventNumber(2));
        assert_eq!(analysis.process_event(&elsewhere, &set).unwrap(), None);
    }
}
