//! beamflow's own contract for Python analyses (`api = "beamflow"`): the class is
//! instantiated per scan with `parameters` (name → typed value) and `context`, and
//! `process_event(event, parameters)` gets each stream's frames as read-only buffers and, for
//! STINS, its header and its image as a read-only numpy view of the bytes beamflow received
//! (decompressed by Rust if they came compressed), never copied. The result is converted to a
//! `Value`, so Rust accumulators and the JSON view read it.
//!
//! The Python side (`Event`, `Stream`) is `analysis.py`, loaded into the payload's interpreter.

use std::path::Path;

use beamflow_protocol::streams::stins::{self, StinsMessage};
use beamflow_protocol::{EventData, ParameterValue, Parameters, Value};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyModule};

use crate::payload::{PayloadError, call_hook, glue_module, load_class};
use crate::{Frame, to_value};

fn glue(py: Python<'_>) -> Result<Bound<'_, PyModule>, PayloadError> {
    glue_module(py, include_str!("analysis.py"), "analysis")
}

/// The parameters as Python values by name.
fn parameters<'py>(py: Python<'py>, parameters: &Parameters) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in parameters.iter() {
        match value {
            ParameterValue::Str(text) => dict.set_item(name.as_str(), text)?,
            ParameterValue::Int(n) => dict.set_item(name.as_str(), n)?,
            ParameterValue::Float(x) => dict.set_item(name.as_str(), x)?,
            ParameterValue::Bool(b) => dict.set_item(name.as_str(), b)?,
            ParameterValue::Binary(bytes) => {
                dict.set_item(name.as_str(), PyBytes::new(py, bytes))?
            }
        }
    }
    Ok(dict)
}

/// A Python analysis, instantiated for one scan.
pub struct PythonAnalysis {
    glue: Py<PyModule>,
    instance: Py<PyAny>,
    parameters: Py<PyDict>,
}

impl PythonAnalysis {
    /// Imports `class` relative to `folder` and instantiates it for a scan.
    pub fn new(
        py: Python<'_>,
        class: &str,
        folder: &Path,
        scan_parameters: &Parameters,
        context: &Bound<'_, PyDict>,
    ) -> Result<Self, PayloadError> {
        let failed =
            |doing: String| move |error: PyErr| PayloadError::from_python(py, doing, error);
        let glue = glue(py)?;
        let cls = load_class(py, class, folder)?;
        let parameters = parameters(py, scan_parameters)
            .map_err(failed("building the parameters".to_owned()))?;
        let instance = glue
            .getattr("analysis")
            .and_then(|make| make.call1((cls, &parameters, context)))
            .map_err(failed(format!("instantiating {class}")))?;
        Ok(Self {
            glue: glue.unbind(),
            instance: instance.unbind(),
            parameters: parameters.unbind(),
        })
    }

    /// The payload's instance.
    pub(crate) fn instance(&self) -> &Py<PyAny> {
        &self.instance
    }

    /// New parameter values, passed to every call from now on.
    pub fn set_parameters(
        &mut self,
        py: Python<'_>,
        scan_parameters: &Parameters,
    ) -> Result<(), PayloadError> {
        self.parameters = parameters(py, scan_parameters)
            .map_err(|error| PayloadError::from_python(py, "building the parameters", error))?
            .unbind();
        Ok(())
    }

    /// `finish(parameters)` at the scan's end, if the payload has it.
    pub fn finish(&self, py: Python<'_>) -> Result<(), PayloadError> {
        call_hook(
            self.instance.bind(py),
            "finish",
            self.parameters.bind(py).as_any(),
        )
        .map(drop)
    }

    /// `close(context)` when the process ends, if the payload has it.
    pub fn close(&self, py: Python<'_>, context: &Bound<'_, PyDict>) -> Result<(), PayloadError> {
        call_hook(self.instance.bind(py), "close", context.as_any()).map(drop)
    }

    /// Calls `process_event(event, parameters)`; the result as a `Value`, `None` for `None`.
    pub fn process_event(
        &self,
        py: Python<'_>,
        event: &EventData,
    ) -> Result<Option<Value>, PayloadError> {
        let number = event.event_number.0;
        let doing = || format!("process_event of event {number}");
        let failed = |error: PyErr| PayloadError::from_python(py, doing(), error);
        let glue = self.glue.bind(py);
        let stream_class = glue.getattr("Stream").map_err(failed)?;
        let streams = PyDict::new(py);
        for (name, stream) in &event.streams {
            let frames: Vec<Bound<'_, Frame>> = stream
                .frames
                .iter()
                .map(|frame| Bound::new(py, Frame::new(frame.clone())))
                .collect::<PyResult<_>>()
                .map_err(failed)?;
            let kwargs = PyDict::new(py);
            if stream.typ.as_str() == stins::TYP {
                match stins::parse(stream) {
                    Ok(StinsMessage::Image {
                        frame, data, json, ..
                    }) => {
                        kwargs.set_item("frame", frame).map_err(failed)?;
                        kwargs
                            .set_item(
                                "json_part",
                                Bound::new(py, Frame::new(json)).map_err(failed)?,
                            )
                            .map_err(failed)?;
                        kwargs
                            .set_item("dtype", data.dtype().name())
                            .map_err(failed)?;
                        kwargs
                            .set_item("shape", data.shape().to_vec())
                            .map_err(failed)?;
                        kwargs
                            .set_item(
                                "pixels",
                                Bound::new(py, Frame::new(data.data().clone())).map_err(failed)?,
                            )
                            .map_err(failed)?;
                    }
                    Ok(StinsMessage::Header { json, .. }) => {
                        kwargs
                            .set_item(
                                "json_part",
                                Bound::new(py, Frame::new(json)).map_err(failed)?,
                            )
                            .map_err(failed)?;
                    }
                    Ok(StinsMessage::End { .. }) => {}
                    Err(error) => {
                        return Err(PayloadError {
                            doing: doing(),
                            traceback: format!("stream {name}: {error}"),
                        });
                    }
                }
            }
            let stream = stream_class
                .call((stream.typ.as_str(), frames), Some(&kwargs))
                .map_err(failed)?;
            streams.set_item(name.as_str(), stream).map_err(failed)?;
        }
        let event = glue
            .getattr("Event")
            .and_then(|make| make.call1((number, streams)))
            .map_err(failed)?;
        let result = self
            .instance
            .bind(py)
            .call_method1("process_event", (event, self.parameters.bind(py)))
            .map_err(failed)?;
        if result.is_none() {
            return Ok(None);
        }
        to_value(&result).map(Some).map_err(|error| PayloadError {
            doing: doing(),
            traceback: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::{
        DType, EventNumber, NdArray, ParameterDescription, ParameterType, StreamData,
    };
    use bytes::Bytes;

    use super::*;
    use crate::test_python;

    const ANALYSIS: &str = r#"
class Spot:
    def __init__(self, parameters, context):
        self.threshold = parameters["threshold"]

    def process_event(self, event, parameters):
        stream = event.streams["det"]
        image = stream.image
        if image is None:
            return {"header": stream.header}
        return {
            "frame": stream.frame,
            "sum": int(image.sum()),
            "above": int((image > self.threshold).sum()),
            "address": image.ctypes.data,
            "writeable": image.flags.writeable,
            "shape": image.shape,
            "dtype": str(image.dtype),
        }


class Unreadable:
    def __init__(self, parameters, context):
        pass

    def process_event(self, event, parameters):
        return {"when": object()}
"#;

    #[test]
    fn an_analysis_gets_the_image_without_a_copy_and_returns_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("spots")).unwrap();
        std::fs::write(dir.path().join("spots/__init__.py"), ANALYSIS).unwrap();
        let threshold = ParameterDescription {
            name: "threshold".into(),
            dtype: ParameterType::Int,
            default: ParameterValue::Int(2),
            description: String::new(),
        };
        let parameters = Parameters::resolve([], &[threshold]).unwrap();
        let pixels: Vec<u8> = [1u16, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let image = NdArray::new(vec![2, 3], DType::Uint16, Bytes::from(pixels)).unwrap();
        let mut event = EventData::new(EventNumber(5));
        let frames = stins::image_frames(5, 6, &image, false);
        event.streams.insert(
            "det".into(),
            StreamData {
                typ: stins::TYP.into(),
                frames,
            },
        );
        let StinsMessage::Image { data, .. } = stins::parse(&event.streams["det"]).unwrap() else {
            panic!("not an image");
        };
        let address = data.data().as_ptr() as u64;
        test_python(|py| {
            let context = PyDict::new(py);
            let analysis =
                PythonAnalysis::new(py, "spots:Spot", dir.path(), &parameters, &context).unwrap();
            let value = analysis.process_event(py, &event).unwrap().unwrap();
            let json = serde_json::to_value(&value).unwrap();
            assert_eq!(json["frame"], 5);
            assert_eq!(json["sum"], 21);
            assert_eq!(json["above"], 4);
            assert_eq!(
                json["address"], address,
                "the image is viewed where it was received"
            );
            assert_eq!(json["writeable"], false);
            assert_eq!(json["shape"], serde_json::json!([2, 3]));
            assert_eq!(json["dtype"], "uint16");

            let mut header = EventData::new(EventNumber(0));
            header.streams.insert(
                "det".into(),
                StreamData {
                    typ: stins::TYP.into(),
                    frames: stins::header_frames(0),
                },
            );
            let value = analysis.process_event(py, &header).unwrap().unwrap();
            assert_eq!(
                value.pointer("header/htype"),
                Some(&Value::Text("header".into()))
            );

            let unreadable =
                PythonAnalysis::new(py, "spots:Unreadable", dir.path(), &parameters, &context)
                    .unwrap();
            let error = unreadable.process_event(py, &event).unwrap_err();
            assert_eq!(error.doing, "process_event of event 5");
            assert!(error.traceback.contains("/when"), "{}", error.traceback);
        });
    }
}
