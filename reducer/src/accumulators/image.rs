//! `image`: the latest screen image for the dashboard, from a `frame` analysis, with the beam's
//! centroid and σ from a `beam_image` analysis of the same event when one is named.
//!
//! Bounded by design: it keeps one frame, the latest. Its view carries no pixels (the dashboard
//! fetches them as a PNG made from [`Accumulator::frame`]): the frame's shape, its minimum and
//! maximum, its projections and the beam.

use std::collections::BTreeMap;
use std::sync::Arc;

use beamflow_protocol::{AnalysisName, EventNumber, Parameters, ResultData, Value};
use serde::Deserialize;

use crate::accumulators::{AccumulatorKind, TableError};
use crate::dashboard::Panel;
use crate::{Accumulator, AccumulatorError};

/// Configuration of `image`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The `frame` analysis whose frames it shows.
    pub frames: AnalysisName,
    /// A `beam_image` analysis of the same stream: its centroid and σ are shown on the frame.
    #[serde(default)]
    pub beam: Option<AnalysisName>,
}

impl AccumulatorKind for ImageConfig {
    const KIND: &str = "image";
    const SUMMARY: &str = "the latest frame of a `frame` analysis for display (one frame kept): \
        `{event_number, frame, shape, bin, source_shape, min, max, beam, projections}`, no pixels";

    fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
        if self.beam.as_ref() == Some(&self.frames) {
            return Err(TableError::new(
                "beam",
                format!(
                    "names the frames' analysis {}: it must be a beam_image analysis",
                    self.frames
                ),
            ));
        }
        Ok(Box::new(Image {
            config: self.clone(),
            latest: None,
            pending_beam: None,
        }))
    }

    /// The frame drawn with its colormap, the beam on it, and its projections.
    fn panel(&self) -> Panel {
        Panel::Image {}
    }

    /// None: it picks the results of its two analyses itself.
    fn analysis(&self) -> Option<&AnalysisName> {
        None
    }

    fn claims(&self) -> Option<&AnalysisName> {
        Some(&self.frames)
    }
}

/// One frame as the reducer keeps it for display: binned by the worker, f32 counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The event it came with.
    pub event_number: EventNumber,
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// The worker's binning: one pixel here is `bin` × `bin` pixels of the source image.
    pub bin: usize,
    /// `height` × `width` counts, row-major (means of the binned blocks; may be non-finite when
    /// the source was).
    pub pixels: Vec<f32>,
}

/// A beam's centre and σ in one plane, in pixels of the whole source image.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plane {
    centroid_px: f64,
    sigma_px: f64,
}

/// The beam of one event.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Beam {
    event_number: EventNumber,
    x: Plane,
    y: Plane,
}

/// The latest frame with what its view shows, computed once per frame (the view is published
/// far more often than frames arrive).
struct Latest {
    frame: Arc<Frame>,
    /// The source's frame number.
    source_frame: u64,
    source_shape: [usize; 2],
    min: f64,
    max: f64,
    /// Mean of each column, then of each row.
    projections: (Vec<f64>, Vec<f64>),
    /// The beam of the frame's event, once it has arrived.
    beam: Option<Beam>,
}

/// The `image` accumulator.
pub struct Image {
    config: ImageConfig,
    latest: Option<Latest>,
    /// The latest beam not (yet) matched by a frame: a frame of its event may come after it.
    pending_beam: Option<Beam>,
}

impl Image {
    fn take_frame(&mut self, result: &ResultData) -> Result<(), AccumulatorError> {
        let invalid = |what: String| {
            AccumulatorError::Invalid(format!(
                "event {}: the frame of {}: {what}",
                result.event_number, result.analysis
            ))
        };
        let payload = &result.payload;
        let [height, width] = pair(payload, "shape").map_err(invalid)?;
        let source_shape = pair(payload, "source_shape").map_err(invalid)?;
        let bin = count(payload, "bin").map_err(invalid)?;
        if bin == 0 {
            return Err(invalid("bin is 0".to_owned()));
        }
        let source_frame = count(payload, "frame")
            .map_err(invalid)
            .map(|n| n as u64)?;
        let Some(Value::Bytes(bytes)) = payload.pointer("pixels") else {
            return Err(invalid("no bytes at pixels".to_owned()));
        };
        let expected = height
            .checked_mul(width)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| invalid(format!("a {height}×{width} frame is not a size")))?;
        if bytes.len() != expected {
            return Err(invalid(format!(
                "{} bytes of pixels, a {height}×{width} f32 frame has {expected}",
                bytes.len()
            )));
        }
        let pixels: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (min, max) = pixels
            .iter()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(f64::from(v)), hi.max(f64::from(v)))
            });
        let projections = projections(&pixels, width, height);
        let beam = self
            .pending_beam
            .take()
            .filter(|beam| beam.event_number == result.event_number);
        self.latest = Some(Latest {
            frame: Arc::new(Frame {
                event_number: result.event_number,
                width,
                height,
                bin,
                pixels,
            }),
            source_frame,
            source_shape,
            // NaN (null in JSON) when no pixel is finite.
            min: if min <= max { min } else { f64::NAN },
            max: if min <= max { max } else { f64::NAN },
            projections,
            beam,
        });
        Ok(())
    }

    fn take_beam(&mut self, result: &ResultData) -> Result<(), AccumulatorError> {
        let number = |path: &str| {
            result
                .payload
                .pointer(path)
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    AccumulatorError::Invalid(format!(
                        "event {}: the beam of {}: no number at {path}",
                        result.event_number, result.analysis
                    ))
                })
        };
        // beam_image's centroids count from the image's origin, not its ROI's: source pixels
        // of the whole image, as the view promises.
        let beam = Beam {
            event_number: result.event_number,
            x: Plane {
                centroid_px: number("x/centroid_px")?,
                sigma_px: number("x/sigma_px")?,
            },
            y: Plane {
                centroid_px: number("y/centroid_px")?,
                sigma_px: number("y/sigma_px")?,
            },
        };
        match &mut self.latest {
            Some(latest) if latest.frame.event_number == result.event_number => {
                latest.beam = Some(beam);
            }
            _ => self.pending_beam = Some(beam),
        }
        Ok(())
    }
}

impl Accumulator for Image {
    fn process_result(
        &mut self,
        result: &ResultData,
        _: &Parameters,
    ) -> Result<(), AccumulatorError> {
        if result.analysis == self.config.frames {
            self.take_frame(result)
        } else if self.config.beam.as_ref() == Some(&result.analysis) {
            self.take_beam(result)
        } else {
            Ok(())
        }
    }

    /// Null until the first frame.
    /// An `NXdata` of the frame (`pixels`, added beside the view): silx shows it as an image.
    fn hdf5_attributes(&self) -> Value {
        let text = |s: &str| Value::from(s);
        Value::Map(BTreeMap::from([
            (
                "_attrs".to_owned(),
                Value::Map(BTreeMap::from([
                    ("NX_class".to_owned(), text("NXdata")),
                    ("signal".to_owned(), text("pixels")),
                ])),
            ),
            (
                "pixels_attrs".to_owned(),
                Value::Map(BTreeMap::from([("interpretation".to_owned(), text("image"))])),
            ),
        ]))
    }

    fn publish(&self) -> Value {
        let Some(latest) = &self.latest else {
            return Value::Null;
        };
        let int = |n: usize| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let floats = |values: &[f64]| Value::Array(values.iter().copied().map(Value::Float).collect());
        let frame = &latest.frame;
        let beam = latest
            .beam
            .filter(|beam| {
                [beam.x, beam.y]
                    .iter()
                    .all(|p| p.centroid_px.is_finite() && p.sigma_px.is_finite())
            })
            .map_or(Value::Null, |beam| {
                let plane = |p: Plane| {
                    Value::Map(
                        [
                            ("centroid_px".to_owned(), Value::Float(p.centroid_px)),
                            ("sigma_px".to_owned(), Value::Float(p.sigma_px)),
                        ]
                        .into(),
                    )
                };
                Value::Map(
                    [
                        ("x".to_owned(), plane(beam.x)),
                        ("y".to_owned(), plane(beam.y)),
                    ]
                    .into(),
                )
            });
        Value::Map(
            [
                (
                    "event_number".to_owned(),
                    Value::Int(i64::try_from(frame.event_number.0).unwrap_or(i64::MAX)),
                ),
                (
                    "frame".to_owned(),
                    Value::Int(i64::try_from(latest.source_frame).unwrap_or(i64::MAX)),
                ),
                (
                    "shape".to_owned(),
                    Value::Array(vec![int(frame.height), int(frame.width)]),
                ),
                ("bin".to_owned(), int(frame.bin)),
                (
                    "source_shape".to_owned(),
                    Value::Array(latest.source_shape.map(int).to_vec()),
                ),
                ("min".to_owned(), Value::Float(latest.min)),
                ("max".to_owned(), Value::Float(latest.max)),
                ("beam".to_owned(), beam),
                (
                    "projections".to_owned(),
                    Value::Map(
                        [
                            ("x".to_owned(), floats(&latest.projections.0)),
                            ("y".to_owned(), floats(&latest.projections.1)),
                        ]
                        .into(),
                    ),
                ),
            ]
            .into(),
        )
    }

    fn frame(&self) -> Option<Arc<Frame>> {
        self.latest.as_ref().map(|latest| Arc::clone(&latest.frame))
    }
}

/// A non-negative integer at `key`.
fn count(payload: &Value, key: &str) -> Result<usize, String> {
    match payload.pointer(key) {
        Some(Value::Int(n)) => usize::try_from(*n).map_err(|_| format!("{key} is {n}")),
        Some(other) => Err(format!("{key} is a {}, not an integer", other.kind())),
        None => Err(format!("no {key}")),
    }
}

/// `[height, width]` at `key`.
fn pair(payload: &Value, key: &str) -> Result<[usize; 2], String> {
    Ok([
        count(payload, &format!("{key}/0"))?,
        count(payload, &format!("{key}/1"))?,
    ])
}

/// The mean of each column and of each row, over their finite pixels (NaN where none is).
fn projections(pixels: &[f32], width: usize, height: usize) -> (Vec<f64>, Vec<f64>) {
    let mut columns = vec![(0.0, 0u32); width];
    let mut rows = vec![(0.0, 0u32); height];
    if width > 0 {
        for (row, line) in rows.iter_mut().zip(pixels.chunks_exact(width)) {
            for (column, &v) in columns.iter_mut().zip(line) {
                if v.is_finite() {
                    let v = f64::from(v);
                    *column = (column.0 + v, column.1 + 1);
                    *row = (row.0 + v, row.1 + 1);
                }
            }
        }
    }
    let mean = |(sum, n): (f64, u32)| if n == 0 { f64::NAN } else { sum / f64::from(n) };
    (
        columns.into_iter().map(mean).collect(),
        rows.into_iter().map(mean).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(table: &str) -> ImageConfig {
        toml::from_str(table).expect("valid")
    }

    fn result(event: u64, analysis: &str, payload: serde_json::Value) -> ResultData {
        ResultData {
            event_number: EventNumber(event),
            analysis: analysis.into(),
            worker: "w1".into(),
            created_at: None,
            payload: Arc::new(Value::from_serialize(&payload).expect("a tree")),
        }
    }

    /// A `frame` analysis's result: a 2×3 frame, pixel (r, c) = 10 r + c + `offset`.
    fn frame_result(event: u64, offset: f32) -> ResultData {
        let pixels: Vec<u8> = (0..2)
            .flat_map(|r| (0..3).map(move |c| (10 * r + c) as f32 + offset))
            .flat_map(f32::to_le_bytes)
            .collect();
        let mut payload = Value::from_serialize(&serde_json::json!({
            "frame": event + 100, "shape": [2, 3], "bin": 2, "source_shape": [5, 7],
            "dtype": "float32",
        }))
        .expect("a tree");
        if let Value::Map(map) = &mut payload {
            map.insert("pixels".to_owned(), Value::Bytes(pixels.into()));
        }
        ResultData {
            payload: Arc::new(payload),
            ..result(event, "otr2_frame", serde_json::Value::Null)
        }
    }

    fn beam_result(event: u64, x: f64) -> ResultData {
        result(
            event,
            "otr2",
            serde_json::json!({
                "x": {"centroid_px": x, "sigma_px": 3.0},
                "y": {"centroid_px": 2.0, "sigma_px": 1.5},
                "accepted": true,
            }),
        )
    }

    #[test]
    fn the_view_is_the_latest_frame_with_its_own_events_beam() {
        let config = config("frames = \"otr2_frame\"\nbeam = \"otr2\"");
        assert_eq!(config.analysis(), None);
        assert_eq!(config.claims(), Some(&AnalysisName::from("otr2_frame")));
        let mut image = config.build().expect("built");
        let p = Parameters::default();
        assert_eq!(image.publish(), Value::Null);
        assert!(image.frame().is_none());

        // Event 1: the beam before the frame; other analyses are ignored.
        image.process_result(&beam_result(1, 4.5), &p).expect("ok");
        image
            .process_result(&result(1, "pvs", serde_json::json!({"a": 1})), &p)
            .expect("ignored");
        image.process_result(&frame_result(1, 0.0), &p).expect("ok");
        let view = serde_json::to_value(image.publish()).expect("json");
        assert_eq!(
            view,
            serde_json::json!({
                "event_number": 1, "frame": 101, "shape": [2, 3], "bin": 2,
                "source_shape": [5, 7], "min": 0.0, "max": 12.0,
                "beam": {"x": {"centroid_px": 4.5, "sigma_px": 3.0},
                         "y": {"centroid_px": 2.0, "sigma_px": 1.5}},
                "projections": {"x": [5.0, 6.0, 7.0], "y": [1.0, 11.0]},
            })
        );
        let frame = image.frame().expect("a frame");
        assert_eq!(
            (frame.event_number, frame.width, frame.height, frame.bin),
            (EventNumber(1), 3, 2, 2)
        );
        assert_eq!(frame.pixels, [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);

        // Event 2: a frame, its beam after it; a later beam (event 3, no frame) does not move
        // the frame's.
        image.process_result(&frame_result(2, 5.0), &p).expect("ok");
        let view = serde_json::to_value(image.publish()).expect("json");
        assert_eq!(view["beam"], serde_json::Value::Null, "not the old beam");
        assert_eq!((view["min"].as_f64(), view["max"].as_f64()), (Some(5.0), Some(17.0)));
        image.process_result(&beam_result(2, 6.5), &p).expect("ok");
        image.process_result(&beam_result(3, 9.0), &p).expect("ok");
        let view = serde_json::to_value(image.publish()).expect("json");
        assert_eq!(view["beam"]["x"]["centroid_px"], 6.5);
        assert_eq!(view["event_number"], 2);
    }

    #[test]
    fn frames_without_pixels_or_of_the_wrong_length_are_refused() {
        let mut image = config("frames = \"otr2_frame\"").build().expect("built");
        let p = Parameters::default();
        let no_pixels = result(
            4,
            "otr2_frame",
            serde_json::json!({"frame": 4, "shape": [2, 3], "bin": 1, "source_shape": [2, 3]}),
        );
        let error = image.process_result(&no_pixels, &p).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "event 4: the frame of otr2_frame: no bytes at pixels"
        );
        let mut short = frame_result(5, 0.0);
        let mut payload = (*short.payload).clone();
        if let Value::Map(map) = &mut payload {
            map.insert("pixels".to_owned(), Value::Bytes(vec![0u8; 20].into()));
        }
        short.payload = Arc::new(payload);
        let error = image.process_result(&short, &p).expect_err("refused");
        assert!(
            error.to_string().contains("20 bytes of pixels, a 2×3 f32 frame has 24"),
            "{error}"
        );
        assert!(image.frame().is_none(), "nothing kept");
        // A beam analysis that is not given is a result like any other: ignored.
        image.process_result(&beam_result(5, 1.0), &p).expect("ignored");
    }

    #[test]
    fn the_beam_analysis_must_differ_from_the_frames() {
        let error = config("frames = \"f\"\nbeam = \"f\"")
            .build()
            .err()
            .expect("refused");
        assert_eq!(error.key, "beam");
    }
}
