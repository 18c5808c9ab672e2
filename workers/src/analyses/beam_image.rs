//! `beam_image`: beam size and position from a screen image, as `physics.md` §3 and DESIGN §5
//! ask: background subtracted (a dark frame and/or the image border; the noise is never clipped
//! at zero, which inflates sizes 3-5×), an optional ROI, x and y projections, centroid, rms within
//! the central 95 %, a Gaussian-with-offset fit per projection, the pixel calibration, and
//! per-shot gates with their reasons: saturation, signal to noise, size in bounds, beam on screen.
//!
//! Scalar PVs of the same event named in `attach` (e.g. the scan quad's readback) are copied
//! into the output, so a quad scan finds each shot's setting in the shot's own result.
//!
//! This file holds the table, the output and the measurement's steps; the image side
//! (background, projections) is in `background.rs`, the fits in `fit.rs`, the gates' reasons in
//! `rejection.rs`.

use std::collections::BTreeMap;

use beamflow_protocol::{
    EventData, NdArray, ParameterDescription, ParameterName, ParameterType, ParameterValue,
    Parameters, StreamName, StreamType,
};
use serde::{Deserialize, Serialize};

use crate::analyses::{AnalysisKind, array_of, image_size, pv_scalar};
use crate::check::{ResultKeys, TableError};
use crate::{Analysis, AnalysisError, DynAnalysis};

mod background;
mod fit;
mod rejection;

pub use background::synthetic_image;
use background::{Rows, border_level, dtype_max, project};
use fit::{central_rms, fit_gaussian};
pub use rejection::{Plane, Rejection};

/// Configuration of `beam_image`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeamImageConfig {
    /// The image stream.
    pub stream: StreamName,
    /// Pixel size, µm (OTR2: 12.66).
    #[serde(default = "one")]
    pub pixel_um: f64,
    /// `[x, y, width, height]` in pixels; the whole image when absent.
    #[serde(default)]
    pub roi: Option<[usize; 4]>,
    /// Width of the ROI's border strips that estimate the background level and noise, px (≥ 1;
    /// after a dark frame they give the residual level and the noise).
    #[serde(default = "default_border")]
    pub border_px: usize,
    /// A binary parameter holding a dark frame (little-endian u16 or f32, the whole image),
    /// subtracted before the border estimate; empty until set.
    #[serde(default)]
    pub dark_parameter: Option<ParameterName>,
    /// The camera's largest count: a pixel there is saturated (default: the dtype's maximum).
    #[serde(default)]
    pub max_count: Option<f64>,
    /// Smallest Gaussian amplitude of a projection, in units of that projection's noise.
    #[serde(default = "default_snr")]
    pub min_snr: f64,
    /// Smallest accepted σ, px.
    #[serde(default = "one")]
    pub min_sigma_px: f64,
    /// Largest accepted σ, px (default: a quarter of the ROI's extent in that plane).
    #[serde(default)]
    pub max_sigma_px: Option<f64>,
    /// The beam is on screen when centroid ± this many σ lies within the ROI.
    #[serde(default = "default_edge")]
    pub edge_sigmas: f64,
    /// Scalar PV streams whose values are copied into the output under `attached`.
    #[serde(default)]
    pub attach: Vec<StreamName>,
}

impl AnalysisKind for BeamImageConfig {
    const KIND: &str = "beam_image";
    const SUMMARY: &str = "beam sizes and centroids from a screen image (background, projections, \
        Gaussian fit, rms95), with per-shot gates and their reasons";

    fn build(&self) -> Result<Box<dyn DynAnalysis>, TableError> {
        Ok(Box::new(BeamImage::new(self.clone())?))
    }

    /// The image stream and the attached PVs.
    fn reads_stream(&self, stream: &StreamName, _: &StreamType) -> bool {
        self.stream == *stream || self.attach.contains(stream)
    }

    fn streams_named(&self) -> Vec<(String, StreamName)> {
        let attached = self.attach.iter().enumerate();
        std::iter::once(("stream".to_owned(), self.stream.clone()))
            .chain(attached.map(|(i, stream)| (format!("attach[{i}]"), stream.clone())))
            .collect()
    }

    /// What building refuses: the border must be at least a pixel wide (its noise is what the
    /// signal-to-noise gate divides by).
    fn check(&self) -> Result<ResultKeys, TableError> {
        if self.border_px == 0 {
            return Err(TableError::value(
                "border_px",
                "must be at least 1: the border gives the noise",
            ));
        }
        Ok(self.result_keys())
    }

    fn describe_parameters(&self) -> Vec<ParameterDescription> {
        self.dark_parameter
            .iter()
            .map(|name| ParameterDescription {
                name: name.clone(),
                dtype: ParameterType::Binary,
                default: ParameterValue::Binary(Default::default()),
                description: format!(
                    "dark frame of stream {}: the whole image as little-endian u16 or f32",
                    self.stream
                ),
            })
            .collect()
    }
}

impl BeamImageConfig {
    /// What its results hold: a [`BeamImageOutput`].
    pub fn result_keys(&self) -> ResultKeys {
        let number = || ResultKeys::Number;
        let axis = ResultKeys::named(
            [
                "centroid_px",
                "centroid_um",
                "rms95_px",
                "sigma_px",
                "sigma_um",
                "sigma_m",
                "amplitude",
                "offset",
                "snr",
                "chi2_dof",
            ],
            &number(),
        );
        ResultKeys::Map(vec![
            ("x".to_owned(), axis.clone()),
            ("y".to_owned(), axis),
            ("background".to_owned(), number()),
            ("noise".to_owned(), number()),
            ("saturated_pixels".to_owned(), number()),
            ("accepted".to_owned(), ResultKeys::Text),
            (
                "rejected".to_owned(),
                ResultKeys::List {
                    len: None,
                    each: Box::new(ResultKeys::Text),
                },
            ),
            (
                "attached".to_owned(),
                ResultKeys::named(&self.attach, &number()),
            ),
        ])
    }
}

fn one() -> f64 {
    1.0
}
fn default_border() -> usize {
    8
}
fn default_snr() -> f64 {
    5.0
}
fn default_edge() -> f64 {
    3.0
}

/// One plane's measurement, in pixels of the ROI and in physical units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Axis {
    /// Gaussian centre, px from the image origin.
    pub centroid_px: f64,
    /// Gaussian centre, µm from the image origin.
    pub centroid_um: f64,
    /// RMS within the central 95 % of the projection, px (0.872 σ for a Gaussian).
    pub rms95_px: f64,
    /// Gaussian σ, px.
    pub sigma_px: f64,
    /// Gaussian σ, µm.
    pub sigma_um: f64,
    /// Gaussian σ, m.
    pub sigma_m: f64,
    /// Gaussian amplitude of the projection, counts.
    pub amplitude: f64,
    /// Fitted offset of the projection, counts.
    pub offset: f64,
    /// Amplitude over the projection's noise.
    pub snr: f64,
    /// χ² per degree of freedom of the fit, with the projection noise from the border.
    pub chi2_dof: f64,
}

/// The analysis's output per shot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BeamImageOutput {
    /// Horizontal.
    pub x: Axis,
    /// Vertical.
    pub y: Axis,
    /// Background level subtracted after any dark frame, counts per pixel.
    pub background: f64,
    /// Pixel noise (rms) in the border, counts.
    pub noise: f64,
    /// Pixels at the camera's maximum.
    pub saturated_pixels: u64,
    /// Whether every gate passed.
    pub accepted: bool,
    /// Why not, one reason per failed gate (its text in results).
    pub rejected: Vec<Rejection>,
    /// The attached PV values.
    pub attached: BTreeMap<StreamName, f64>,
}

/// The `beam_image` analysis.
#[derive(Debug)]
pub struct BeamImage {
    config: BeamImageConfig,
}

impl BeamImage {
    /// Builds the analysis; [`BeamImageConfig::check`] says what it refuses.
    pub fn new(config: BeamImageConfig) -> Result<Self, TableError> {
        config.check()?;
        Ok(Self { config })
    }

    /// Measures one image; `dark` is subtracted first when given.
    pub fn measure(
        &self,
        image: &NdArray,
        dark: Option<&[f32]>,
    ) -> Result<BeamImageOutput, AnalysisError> {
        let [height, width] = image_size(&self.config.stream, image)?;
        if dark.is_some_and(|d| d.len() != width * height) {
            return Err(AnalysisError::Invalid(format!(
                "stream {}: the dark frame has {} pixels, the image {}",
                self.config.stream,
                dark.map_or(0, <[f32]>::len),
                width * height
            )));
        }
        let [x0, y0, w, h] = self.config.roi.unwrap_or([0, 0, width, height]);
        let (w, h) = (
            w.min(width.saturating_sub(x0)),
            h.min(height.saturating_sub(y0)),
        );
        if w < 8 || h < 8 {
            return Err(AnalysisError::Invalid(format!(
                "stream {}: ROI {:?} leaves {w}×{h} pixels of a {width}×{height} image",
                self.config.stream, self.config.roi
            )));
        }
        let max_count = self.config.max_count.unwrap_or(dtype_max(image.dtype()));
        let rows = Rows {
            image,
            dark,
            width,
            x0,
            w,
        };
        let (background, noise) = border_level(&rows, y0, h, self.config.border_px);
        let (px, py, saturated) = project(&rows, y0, h, background as f32, max_count as f32);

        let axis = |profile: &[f64], summed: usize, origin: usize, extent: usize| {
            let noise = noise * (summed as f64).sqrt();
            let (mean95, rms95) = central_rms(profile);
            let fit = fit_gaussian(profile, mean95, rms95 / 0.8719, noise);
            let sigma = fit.sigma.abs();
            Axis {
                centroid_px: origin as f64 + fit.mean,
                centroid_um: (origin as f64 + fit.mean) * self.config.pixel_um,
                rms95_px: rms95,
                sigma_px: sigma,
                sigma_um: sigma * self.config.pixel_um,
                sigma_m: sigma * self.config.pixel_um * 1e-6,
                amplitude: fit.amplitude,
                offset: fit.offset,
                snr: fit.amplitude / noise,
                chi2_dof: fit.chi2_dof,
            }
            .checked(extent)
        };
        let x = axis(&px, h, x0, w);
        let y = axis(&py, w, y0, h);

        let mut rejected = Vec::new();
        if saturated > 0 {
            rejected.push(Rejection::Saturated {
                pixels: saturated,
                max_count,
            });
        }
        for (plane, axis, origin, extent) in [(Plane::X, &x, x0, w), (Plane::Y, &y, y0, h)] {
            if !(axis.sigma_px.is_finite() && axis.amplitude.is_finite()) {
                // A faint beam is the usual reason: say so when the raw peak shows it.
                let (profile, summed) = if plane == Plane::X {
                    (&px, h)
                } else {
                    (&py, w)
                };
                let peak = profile.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let snr = peak / (noise * (summed as f64).sqrt());
                rejected.push(if snr < self.config.min_snr {
                    Rejection::Faint {
                        plane,
                        snr,
                        min_snr: self.config.min_snr,
                    }
                } else {
                    Rejection::NoFit { plane }
                });
                continue;
            }
            // NaN fails the gate too.
            if axis
                .snr
                .partial_cmp(&self.config.min_snr)
                .is_none_or(|o| o.is_lt())
            {
                rejected.push(Rejection::Faint {
                    plane,
                    snr: axis.snr,
                    min_snr: self.config.min_snr,
                });
            }
            let max_sigma = self.config.max_sigma_px.unwrap_or(extent as f64 / 4.0);
            if !(self.config.min_sigma_px..=max_sigma).contains(&axis.sigma_px) {
                rejected.push(Rejection::Size {
                    plane,
                    sigma_px: axis.sigma_px,
                    min_px: self.config.min_sigma_px,
                    max_px: max_sigma,
                });
            }
            let centre = axis.centroid_px - origin as f64;
            let reach = self.config.edge_sigmas * axis.sigma_px;
            if centre - reach < 0.0 || centre + reach > (extent - 1) as f64 {
                rejected.push(Rejection::OffScreen {
                    plane,
                    centre_px: centre,
                    edge_sigmas: self.config.edge_sigmas,
                    extent,
                });
            }
        }
        Ok(BeamImageOutput {
            x,
            y,
            background,
            noise,
            saturated_pixels: saturated,
            accepted: rejected.is_empty(),
            rejected,
            attached: BTreeMap::new(),
        })
    }

    fn dark(&self, parameters: &Parameters, pixels: usize) -> Option<Vec<f32>> {
        let bytes = parameters.binary(self.config.dark_parameter.as_ref()?.as_str())?;
        if bytes.len() == 2 * pixels {
            Some(
                bytes
                    .chunks_exact(2)
                    .map(|b| f32::from(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
            )
        } else if bytes.len() == 4 * pixels {
            Some(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        } else {
            None
        }
    }
}

impl Axis {
    /// NaN instead of numbers a failed fit would make look valid.
    fn checked(mut self, extent: usize) -> Self {
        let centre_ok = self.centroid_px.is_finite();
        if !(centre_ok && self.sigma_px > 0.0 && self.sigma_px < 10.0 * extent as f64) {
            self.sigma_px = f64::NAN;
            self.sigma_um = f64::NAN;
            self.sigma_m = f64::NAN;
        }
        self
    }
}

impl Analysis for BeamImage {
    type Output = BeamImageOutput;

    fn process_event(
        &self,
        event: &EventData,
        parameters: &Parameters,
    ) -> Result<Option<Self::Output>, AnalysisError> {
        let Some(stream) = event.streams.get(&self.config.stream) else {
            return Ok(None);
        };
        let Some((_, image)) = array_of(&self.config.stream, stream, event.event_number)? else {
            return Ok(None);
        };
        let pixels = image.len();
        let dark = self.dark(parameters, pixels);
        if self.config.dark_parameter.is_some()
            && dark.is_none()
            && parameters
                .binary(
                    self.config
                        .dark_parameter
                        .as_ref()
                        .map_or("", |p| p.as_str()),
                )
                .is_some_and(|b| !b.is_empty())
        {
            return Err(AnalysisError::Invalid(format!(
                "the dark frame {:?} is neither {pixels} u16 nor {pixels} f32 pixels",
                self.config.dark_parameter
            )));
        }
        let mut output = self.measure(&image, dark.as_deref())?;
        for name in &self.config.attach {
            if let Some((value, _)) = event.streams.get(name).and_then(|s| pv_scalar(s).ok()) {
                output.attached.insert(name.clone(), value);
            }
        }
        Ok(Some(output))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use beamflow_protocol::DType;
    use beamflow_protocol::streams::pv::PvFrame;

    use super::*;

    fn analysis() -> BeamImage {
        BeamImage::new(
            toml::from_str(
                r#"
stream = "otr2"
pixel_um = 12.66
max_count = 4095
"#,
            )
            .expect("valid"),
        )
        .expect("a valid analysis")
    }

    #[test]
    fn gaussian_sizes_are_within_one_percent_of_the_truth() {
        let analysis = analysis();
        for (seed, (sx, sy), counts) in [
            (1, (31.8, 13.1), 300_000.0), // the sim's beam at QE04's default
            (2, (2.54, 6.06), 300_000.0), // the reference scan's waist at 2.5 kG
            (3, (11.6, 11.7), 300_000.0),
            (4, (57.0, 25.4), 600_000.0),
        ] {
            let image = synthetic_image([640, 480], (318.3, 241.7), (sx, sy), counts, seed);
            let out = analysis.measure(&image, None).expect("measured");
            assert!(out.accepted, "{seed}: {:?}", out.rejected);
            for (axis, truth) in [(&out.x, sx), (&out.y, sy)] {
                let error = (axis.sigma_px - truth).abs() / truth;
                assert!(
                    error < 0.01,
                    "{seed}: σ {} px vs {truth} ({error:.4})",
                    axis.sigma_px
                );
                assert!((axis.sigma_um - axis.sigma_px * 12.66).abs() < 1e-9);
            }
            assert!(
                (out.x.centroid_px - 318.3).abs() < 0.25,
                "{}",
                out.x.centroid_px
            );
            assert!(
                (out.y.centroid_px - 241.7).abs() < 0.25,
                "{}",
                out.y.centroid_px
            );
            assert!((out.background - 100.0).abs() < 0.2, "{}", out.background);
            assert!((out.noise - 4.0).abs() < 0.3, "{}", out.noise);
        }
    }

    #[test]
    fn the_central_95_percent_rms_of_a_gaussian_is_0_872_sigma() {
        let sigma = 20.0;
        let profile: Vec<f64> = (0..400)
            .map(|i| (-0.5 * ((f64::from(i) - 200.0) / sigma).powi(2)).exp())
            .collect();
        let (mean, rms) = central_rms(&profile);
        assert!((mean - 200.0).abs() < 1e-6);
        // Truncated at ±1.96σ: σ·√(1 − 2·1.96·φ(1.96)/0.95) = 0.8719σ, to a bin's width.
        assert!((rms / sigma - 0.8719).abs() < 0.01, "{}", rms / sigma);
    }

    #[test]
    fn saturated_off_screen_faint_and_oversized_beams_are_rejected_with_reasons() {
        let analysis = analysis();
        let reasons = |image: &NdArray| -> Vec<String> {
            let rejected = analysis.measure(image, None).expect("measured").rejected;
            rejected.iter().map(ToString::to_string).collect()
        };
        let saturated = synthetic_image([640, 480], (320.0, 240.0), (3.0, 3.0), 600_000.0, 5);
        assert!(
            reasons(&saturated)
                .iter()
                .any(|r| r.starts_with("saturated:")),
            "{:?}",
            reasons(&saturated)
        );
        let off = synthetic_image([640, 480], (620.0, 240.0), (20.0, 10.0), 300_000.0, 6);
        assert!(
            reasons(&off)
                .iter()
                .any(|r| r.starts_with("x: beam not fully on screen")),
            "{:?}",
            reasons(&off)
        );
        let faint = synthetic_image([640, 480], (320.0, 240.0), (30.0, 30.0), 2_000.0, 7);
        assert!(
            reasons(&faint)
                .iter()
                .any(|r| r.contains("signal to noise")),
            "{:?}",
            reasons(&faint)
        );
        let wide = synthetic_image([640, 480], (320.0, 240.0), (200.0, 10.0), 3_000_000.0, 8);
        assert!(
            reasons(&wide).iter().any(|r| r.starts_with("x: size σ")),
            "{:?}",
            reasons(&wide)
        );
    }

    #[test]
    fn a_dark_frame_and_an_roi_are_applied_and_wrong_shapes_refused() {
        let analysis = BeamImage::new(
            toml::from_str(
                r#"
stream = "otr2"
roi = [200, 150, 240, 180]
"#,
            )
            .expect("valid"),
        )
        .expect("a valid analysis");
        let image = synthetic_image([640, 480], (318.0, 242.0), (20.0, 12.0), 300_000.0, 9);
        // A dark frame of 100 counts everywhere: the border then sees ~0.
        let dark = vec![100f32; 640 * 480];
        let out = analysis.measure(&image, Some(&dark)).expect("measured");
        assert!(out.background.abs() < 0.3, "{}", out.background);
        assert!(
            (out.x.centroid_px - 318.0).abs() < 0.1,
            "image coordinates: {}",
            out.x.centroid_px
        );
        assert!((out.x.sigma_px - 20.0).abs() < 0.2 && (out.y.sigma_px - 12.0).abs() < 0.12);
        let flat = NdArray::new(vec![16], DType::Uint16, Bytes::from(vec![0u8; 32])).expect("ok");
        assert!(analysis.measure(&flat, None).is_err());
        assert!(analysis.measure(&image, Some(&dark[..10])).is_err());
    }

    #[test]
    fn the_quad_readback_is_attached_from_the_event() {
        let config: BeamImageConfig = toml::from_str(
            r#"
stream = "otr2"
attach = ["qe04"]
"#,
        )
        .expect("valid");
        let image = synthetic_image([64, 48], (32.0, 24.0), (4.0, 3.0), 50_000.0, 10);
        let frame = |pv: &str, value: NdArray| PvFrame {
            pv: pv.to_owned(),
            status: 0,
            severity: 0,
            secs: 1,
            nanos: 0,
            value,
        };
        let mut event = EventData::new(beamflow_protocol::EventNumber(4));
        event
            .streams
            .insert("otr2".into(), frame("CAM", image).stream());
        let bact = NdArray::new(
            vec![],
            DType::Float64,
            Bytes::from(2.5f64.to_le_bytes().to_vec()),
        )
        .expect("ok");
        event
            .streams
            .insert("qe04".into(), frame("QUAD:BACT", bact).stream());
        let out = BeamImage::new(config)
            .expect("a valid analysis")
            .process_event(&event, &Parameters::default())
            .expect("measured")
            .expect("an image");
        assert_eq!(out.attached[&StreamName::from("qe04")], 2.5);
        assert!(out.accepted, "{:?}", out.rejected);
    }
}
