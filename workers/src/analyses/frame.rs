//! `frame`: an image stream's frame, forwarded to the reducer for display (the dashboard's
//! screen image). It is binned here, on the worker, so what travels to the reducer is bounded:
//! `bin` × `bin` blocks become their mean, and a binned frame larger than `max_pixels` is an
//! error that says which `bin` would fit. `every` thins the frames out (only events whose number
//! is a multiple of it carry one), since a display needs a few frames a second, not all.

use beamflow_protocol::{EventData, NdArray, Parameters, StreamName, StreamType, bin_mean};
use serde::{Deserialize, Serialize, Serializer};

use crate::analyses::{AnalysisKind, array_of, image_size};
use crate::check::{ResultKeys, TableError};
use crate::{Analysis, AnalysisError, DynAnalysis};

/// The largest `bin`: beyond it a frame is too coarse to show a beam.
pub const MAX_BIN: usize = 16;

/// Configuration of `frame`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameConfig {
    /// The image stream (STINS, or a PV image).
    pub stream: StreamName,
    /// Side of the square blocks averaged into one pixel, 1..=16 (1 = as is).
    #[serde(default = "one")]
    pub bin: usize,
    /// Only events whose number is a multiple of this carry a frame.
    #[serde(default = "one_u64")]
    pub every: u64,
    /// The largest binned frame, pixels.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: usize,
}

fn one() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
fn default_max_pixels() -> usize {
    1 << 20
}

impl AnalysisKind for FrameConfig {
    const KIND: &str = "frame";
    const SUMMARY: &str = "an image stream's frame for display, binned on the worker: \
        `{frame, shape, bin, source_shape, dtype, pixels}` (little-endian f32)";

    fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError> {
        Ok(Box::new(Frame::new(self.clone())?))
    }

    fn reads_stream(&self, stream: &StreamName, _: &StreamType) -> bool {
        *stream == self.stream
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        vec![("stream".to_owned(), self.stream.clone())]
    }

    fn check(&self) -> Result<ResultKeys, TableError> {
        if !(1..=MAX_BIN).contains(&self.bin) {
            return Err(TableError::value(
                "bin",
                format!("must be 1 to {MAX_BIN}, not {}", self.bin),
            ));
        }
        if self.every == 0 {
            return Err(TableError::value(
                "every",
                "must be at least 1 (1 = every event)",
            ));
        }
        if self.max_pixels == 0 {
            return Err(TableError::value("max_pixels", "must be at least 1"));
        }
        let pair = || ResultKeys::List {
            len: Some(2),
            each: Box::new(ResultKeys::Number),
        };
        Ok(ResultKeys::Map(vec![
            ("frame".to_owned(), ResultKeys::Number),
            ("shape".to_owned(), pair()),
            ("bin".to_owned(), ResultKeys::Number),
            ("source_shape".to_owned(), pair()),
            ("dtype".to_owned(), ResultKeys::Text),
            // Bytes: nothing below, as for text.
            ("pixels".to_owned(), ResultKeys::Text),
        ]))
    }
}

/// One binned frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameOutput {
    /// The source's frame index (STINS `frame`; for a PV, the event number).
    pub frame: u64,
    /// `[height, width]` after binning.
    pub shape: [usize; 2],
    /// The binning applied.
    pub bin: usize,
    /// `[height, width]` of the source image.
    pub source_shape: [usize; 2],
    /// The pixels' type: always `float32`.
    pub dtype: &'static str,
    /// `shape[0] × shape[1]` little-endian f32, row-major.
    pub pixels: Pixels,
}

/// Pixel bytes, serialized as bytes (a CBOR byte string), not as a list of numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels(pub Vec<u8>);

impl Serialize for Pixels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

/// The `frame` analysis.
#[derive(Debug)]
pub struct Frame {
    config: FrameConfig,
}

impl Frame {
    /// Builds the analysis; [`FrameConfig::check`] says what it refuses.
    pub fn new(config: FrameConfig) -> Result<Self, TableError> {
        config.check()?;
        Ok(Self { config })
    }

    /// Bins one image (frame number `frame`).
    pub fn bin(&self, frame: u64, image: &NdArray) -> Result<FrameOutput, AnalysisError> {
        let stream = &self.config.stream;
        let [height, width] = image_size(stream, image)?;
        let bin = self.config.bin;
        let [h, w] = [height / bin, width / bin];
        if h == 0 || w == 0 {
            return Err(AnalysisError::Invalid(format!(
                "stream {stream}: a {height}×{width} image has no {bin}×{bin} block"
            )));
        }
        if h * w > self.config.max_pixels {
            let fits = (bin..=MAX_BIN).find(|b| (height / b) * (width / b) <= self.config.max_pixels);
            let advice = match fits {
                Some(b) => format!("bin = {b} fits"),
                None => format!("not even bin = {MAX_BIN} fits"),
            };
            return Err(AnalysisError::Invalid(format!(
                "stream {stream}: the {height}×{width} image binned {bin} is {h}×{w} = {} pixels, \
                 more than max_pixels = {}: {advice}",
                h * w,
                self.config.max_pixels
            )));
        }
        let (binned, _) = bin_mean(&image.to_f64(), width, bin);
        let pixels = binned.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(FrameOutput {
            frame,
            shape: [h, w],
            bin,
            source_shape: [height, width],
            dtype: "float32",
            pixels: Pixels(pixels),
        })
    }
}

impl Analysis for Frame {
    type Output = FrameOutput;

    fn process_event(
        &self,
        event: &EventData,
        _: &Parameters,
    ) -> Result<Option<FrameOutput>, AnalysisError> {
        if !event.event_number.0.is_multiple_of(self.config.every) {
            return Ok(None);
        }
        let Some(stream) = event.streams.get(&self.config.stream) else {
            return Ok(None);
        };
        let Some((frame, image)) = array_of(&self.config.stream, stream, event.event_number)?
        else {
            return Ok(None);
        };
        self.bin(frame, &image).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use beamflow_protocol::streams::pv::PvFrame;
    use beamflow_protocol::streams::stins;
    use beamflow_protocol::{DType, EventNumber, StreamData, Value};
    use bytes::Bytes;

    use super::*;

    fn frame(table: &str) -> Frame {
        Frame::new(toml::from_str(table).expect("valid")).expect("a valid analysis")
    }

    /// A `[height, width]` f32 image whose pixel (r, c) is `r * width + c`.
    fn ramp(height: usize, width: usize) -> NdArray {
        let bytes: Vec<u8> = (0..height * width)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        NdArray::new(vec![height, width], DType::Float32, Bytes::from(bytes)).expect("sized")
    }

    fn floats(pixels: &[u8]) -> Vec<f32> {
        pixels
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn event(number: u64, image: NdArray) -> EventData {
        let mut event = EventData::new(EventNumber(number));
        let pv = PvFrame {
            pv: "CAM".to_owned(),
            status: 0,
            severity: 0,
            secs: 1,
            nanos: 0,
            value: image,
        };
        event.streams.insert("otr2".into(), pv.stream());
        event
    }

    #[test]
    fn a_binned_pixel_is_its_blocks_mean_and_edge_remainders_are_dropped() {
        let (height, width, bin) = (7, 10, 3);
        let out = frame("stream = \"otr2\"\nbin = 3")
            .bin(5, &ramp(height, width))
            .expect("binned");
        assert_eq!((out.shape, out.source_shape, out.bin), ([2, 3], [7, 10], 3));
        assert_eq!((out.frame, out.dtype), (5, "float32"));
        // The mean of r·W + c over rows R·b.. R·b+b-1 and columns C·b.. C·b+b-1 is the value at
        // the block's centre: (R·b + (b-1)/2)·W + C·b + (b-1)/2.
        let half = (bin - 1) as f32 / 2.0;
        let expected: Vec<f32> = (0..2)
            .flat_map(|r| (0..3).map(move |c| (r, c)))
            .map(|(r, c)| ((r * bin) as f32 + half) * width as f32 + (c * bin) as f32 + half)
            .collect();
        assert_eq!(floats(&out.pixels.0), expected);

        let same = frame("stream = \"otr2\"").bin(0, &ramp(3, 4)).expect("as is");
        assert_eq!(same.shape, [3, 4]);
        assert_eq!(
            floats(&same.pixels.0),
            (0..12).map(|i| i as f32).collect::<Vec<_>>()
        );
    }

    #[test]
    fn only_every_nth_event_carries_a_frame_and_large_frames_name_the_bin_that_fits() {
        let analysis = frame("stream = \"otr2\"\nevery = 2");
        let parameters = Parameters::default();
        let odd = analysis.process_event(&event(5, ramp(4, 4)), &parameters);
        assert_eq!(odd.expect("no error"), None);
        let even = analysis
            .process_event(&event(6, ramp(4, 4)), &parameters)
            .expect("no error")
            .expect("a frame");
        // A PV's frame number is the event's.
        assert_eq!((even.frame, even.shape), (6, [4, 4]));
        let absent = analysis.process_event(&EventData::new(EventNumber(8)), &parameters);
        assert!(matches!(absent, Ok(None)), "no stream, no frame");

        // 64×64 is 4096 pixels, 32×32 = 1024 > 1000, 21×21 = 441 fits.
        let error = frame("stream = \"otr2\"\nmax_pixels = 1000")
            .bin(0, &ramp(64, 64))
            .expect_err("too large");
        assert!(error.to_string().contains("bin = 3 fits"), "{error}");
        let error = frame("stream = \"otr2\"\nmax_pixels = 1")
            .bin(0, &ramp(64, 64))
            .expect_err("too large");
        assert!(error.to_string().contains("not even bin = 16"), "{error}");
    }

    #[test]
    fn a_stins_image_keeps_its_frame_number_and_header_messages_give_nothing() {
        let pixels: Vec<u8> = [10u16, 20, 30, 40, 1, 2, 3, 4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let image = NdArray::new(vec![2, 4], DType::Uint16, Bytes::from(pixels)).expect("sized");
        let stins_event = |frames| {
            let mut event = EventData::new(EventNumber(12));
            event.streams.insert(
                "otr2".into(),
                StreamData {
                    typ: stins::TYP.into(),
                    frames,
                },
            );
            event
        };
        let analysis = frame("stream = \"otr2\"\nbin = 2");
        let out = analysis
            .process_event(
                &stins_event(stins::image_frames(41, 42, &image, true)),
                &Parameters::default(),
            )
            .expect("no error")
            .expect("a frame");
        assert_eq!((out.frame, out.shape, out.source_shape), (41, [1, 2], [2, 4]));
        assert_eq!(floats(&out.pixels.0), [(10.0 + 20.0 + 1.0 + 2.0) / 4.0, 77.0 / 4.0]);
        let header = analysis.process_event(
            &stins_event(stins::header_frames(0)),
            &Parameters::default(),
        );
        assert!(matches!(header, Ok(None)), "{header:?}");
    }

    #[test]
    fn a_waveform_a_tiny_image_and_bad_tables_are_refused() {
        let waveform =
            NdArray::new(vec![16], DType::Uint16, Bytes::from(vec![0u8; 32])).expect("sized");
        let error = frame("stream = \"otr2\"")
            .process_event(&event(1, waveform), &Parameters::default())
            .expect_err("1-D");
        assert!(
            error.to_string().contains("stream otr2: a 2-D image is needed"),
            "{error}"
        );
        let error = frame("stream = \"otr2\"\nbin = 4")
            .bin(0, &ramp(3, 8))
            .expect_err("no block");
        assert!(error.to_string().contains("no 4×4 block"), "{error}");
        for table in ["bin = 0", "bin = 17", "every = 0", "max_pixels = 0"] {
            let config: FrameConfig =
                toml::from_str(&format!("stream = \"otr2\"\n{table}")).expect("parses");
            assert!(Frame::new(config).is_err(), "{table}");
        }
    }

    #[test]
    fn the_result_carries_the_pixels_as_bytes() {
        let config: FrameConfig = toml::from_str("stream = \"otr2\"\nbin = 2").expect("valid");
        let value = config
            .build()
            .expect("built")
            .process(&event(2, ramp(4, 6)), &Parameters::default())
            .expect("no error")
            .expect("a frame");
        let Some(Value::Bytes(pixels)) = value.pointer("pixels") else {
            panic!("no bytes at pixels: {value:?}");
        };
        assert_eq!(pixels.len(), 2 * 3 * 4);
        assert_eq!(value.pointer("shape/1").and_then(Value::as_f64), Some(3.0));
        assert_eq!(value.pointer("bin").and_then(Value::as_f64), Some(2.0));
    }
}
