//! A simulated detector: per scan, one STINS series per stream (a header, images, a
//! series_end) as long as the scan needs, at a configured rate. The image is a Gaussian spot
//! that drifts slowly, on a pedestal with noise, so live views have something to show; it is
//! drawn by the simulations' one camera model ([`beamflow_sim::camera`]).

use std::collections::BTreeMap;
use std::time::Duration;

use beamflow_protocol::streams::stins;
use beamflow_protocol::{DType, NdArray, StreamData, StreamName};
use beamflow_sim::camera::{Camera, Sensor, Spot};
use bytes::Bytes;
use serde::Deserialize;

use crate::sources::Pace;
use crate::{Source, SourceError, SourceFrame, SourceKind};

/// `[ingesters.<name>]` with `kind = "sim"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Stream names (default: the ingester's name).
    #[serde(default)]
    pub streams: Vec<StreamName>,
    /// Image shape `[height, width]` (u16 pixels).
    #[serde(default = "default_shape")]
    pub shape: [usize; 2],
    /// Frames per second per stream; 0 = as fast as the pipeline takes them.
    #[serde(default = "default_rate")]
    pub rate_hz: f64,
}

fn default_shape() -> [usize; 2] {
    [64, 64]
}

fn default_rate() -> f64 {
    100.0
}

/// A 12-bit camera with about the read noise of the first simulator's ±10 counts.
const SENSOR: Sensor = Sensor {
    pedestal: 100.0,
    read_noise: 6.0,
    full_scale: 4095.0,
};

/// The spot's peak above the pedestal, counts.
const PEAK: f64 = 3000.0;

struct Series {
    stream: StreamName,
    length: u64,
    next: u64,
}

/// The source.
pub struct Sim {
    streams: Vec<StreamName>,
    shape: [usize; 2],
    pace: Pace,
    series: Vec<Series>,
    turn: usize,
    camera: Camera,
    images: u64,
}

impl SourceKind for SimConfig {
    const KIND: &str = "sim";
    const SUMMARY: &str =
        "synthetic STINS images (a drifting Gaussian spot on noise) of a configured shape and rate";
    const BRACKETS_SERIES: bool = true;

    fn build(&self, name: &str, _: &zmq::Context) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(Sim::new(self, name)))
    }

    fn stream_names(&self, name: &str) -> Option<Vec<StreamName>> {
        Some(crate::sources::listed_or_named(&self.streams, name))
    }
}

impl Sim {
    /// A simulator named `name`.
    pub fn new(config: &SimConfig, name: &str) -> Self {
        let streams = if config.streams.is_empty() {
            vec![StreamName::from(name)]
        } else {
            config.streams.clone()
        };
        Self {
            streams,
            shape: config.shape,
            pace: Pace::new(config.rate_hz),
            series: Vec::new(),
            turn: 0,
            camera: Camera::new(SENSOR, 0x2545_f491_4f6c_dd1d),
            images: 0,
        }
    }

    fn image(&mut self) -> NdArray {
        let [height, width] = self.shape;
        let t = self.images as f64 * 0.05;
        let (cx, cy) = (
            width as f64 * (0.5 + 0.15 * t.sin()),
            height as f64 * (0.5 + 0.1 * (0.7 * t).cos()),
        );
        let (sigma_x, sigma_y) = (width as f64 / 10.0, height as f64 / 12.0);
        let spot = Spot {
            x: cx,
            y: cy,
            sigma_x,
            sigma_y,
            counts: PEAK * 2.0 * std::f64::consts::PI * sigma_x * sigma_y,
        };
        let pixels: Vec<u8> = self
            .camera
            .render([width, height], spot)
            .into_iter()
            .flat_map(u16::to_le_bytes)
            .collect();
        self.images += 1;
        NdArray::new(vec![height, width], DType::Uint16, Bytes::from(pixels))
            .expect("the buffer is built to the shape")
    }
}

impl Source for Sim {
    fn streams(&self) -> Vec<StreamName> {
        self.streams.clone()
    }

    fn start_scan(
        &mut self,
        frames: &BTreeMap<StreamName, std::ops::Range<u64>>,
    ) -> Result<(), SourceError> {
        // A range not from 0 is the rest of a series a restarted ingester takes up: it goes on
        // with images, as a detector's series would, instead of a second header.
        self.series = self
            .streams
            .iter()
            .filter_map(|stream| {
                let range = frames.get(stream)?;
                Some(Series {
                    stream: stream.clone(),
                    length: range.end,
                    next: range.start,
                })
            })
            .collect();
        self.turn = 0;
        self.pace.restart();
        Ok(())
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<SourceFrame>, SourceError> {
        let count = self.series.len();
        // One slot per round: every stream gets a frame per period.
        if self.turn >= count {
            self.turn = 0;
        }
        if self.turn == 0 && !self.pace.wait(timeout) {
            return Ok(None);
        }
        let Some(turn) = (0..count)
            .map(|i| (self.turn + i) % count.max(1))
            .find(|&i| self.series[i].next < self.series[i].length)
        else {
            if timeout > Duration::ZERO {
                std::thread::sleep(timeout);
            }
            return Ok(None);
        };
        self.turn = turn + 1;
        let (index, length) = (self.series[turn].next, self.series[turn].length);
        self.series[turn].next += 1;
        let frames = if index == 0 {
            stins::header_frames(0)
        } else if index + 1 == length && length > 1 {
            stins::end_frames(index)
        } else {
            let image = self.image();
            stins::image_frames(index - 1, index, &image, false)
        };
        Ok(Some(SourceFrame {
            stream: self.series[turn].stream.clone(),
            index,
            data: StreamData {
                typ: stins::TYP.into(),
                frames,
            },
            taken_at: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_header_images_end_numbered_from_zero() {
        let config: SimConfig = toml::from_str("shape = [4, 6]\nrate_hz = 0").unwrap();
        let mut sim = Sim::new(&config, "det");
        sim.start_scan(&BTreeMap::from([(StreamName::from("det"), 0..4)]))
            .unwrap();
        let frames: Vec<SourceFrame> = (0..4)
            .map(|_| sim.next_frame(Duration::ZERO).unwrap().unwrap())
            .collect();
        assert_eq!(
            frames.iter().map(|f| f.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        let kinds: Vec<stins::Kind> = frames
            .iter()
            .map(|f| stins::peek(&f.data.frames).unwrap().kind)
            .collect();
        assert_eq!(
            kinds,
            [
                stins::Kind::Header,
                stins::Kind::Image,
                stins::Kind::Image,
                stins::Kind::End
            ]
        );
        let stins::StinsMessage::Image { data, .. } = stins::parse(&frames[1].data).unwrap() else {
            panic!("an image");
        };
        assert_eq!(data.shape(), [4, 6]);
        assert!(
            sim.next_frame(Duration::ZERO).unwrap().is_none(),
            "series over"
        );
    }

    /// A restarted ingester takes up the series where the scan is: images, no second header.
    #[test]
    fn the_rest_of_a_series_goes_on_with_images() {
        let config: SimConfig = toml::from_str("shape = [4, 6]\nrate_hz = 0").unwrap();
        let mut sim = Sim::new(&config, "det");
        sim.start_scan(&BTreeMap::from([(StreamName::from("det"), 2..5)]))
            .unwrap();
        let frames: Vec<(u64, stins::Kind)> = std::iter::from_fn(|| sim.next_frame(Duration::ZERO).unwrap())
            .map(|f| (f.index, stins::peek(&f.data.frames).unwrap().kind))
            .collect();
        assert_eq!(
            frames,
            [
                (2, stins::Kind::Image),
                (3, stins::Kind::Image),
                (4, stins::Kind::End)
            ]
        );
    }
}
