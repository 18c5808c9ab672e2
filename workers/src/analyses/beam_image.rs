//! `beam_image`: beam size and position from a screen image, as `physics.md` §3 and DESIGN §5
//! ask: background subtracted (a dark frame and/or the image border; the noise is never clipped
//! at zero, which inflates sizes 3-5×), an optional ROI, x and y projections, centroid, rms within
//! the central 95 %, a Gaussian-with-offset fit per projection, the pixel calibration, and
//! per-shot gates with their reasons: saturation, signal to noise, size in bounds, beam on screen.
//!
//! Scalar PVs of the same event named in `attach` (e.g. the scan quad's readback) are copied
//! into the output, so a quad scan finds each shot's setting in the shot's own result.

use std::collections::BTreeMap;

use beamflow_protocol::{
    DType, EventData, NdArray, ParameterDescription, ParameterName, ParameterType, ParameterValue,
    Parameters, StreamName, StreamType,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::analyses::{AnalysisKind, array_of, pv_scalar};
use crate::check::{ResultKeys, TableError};
use crate::{Analysis, AnalysisError, DynAnalysis};

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
    /// Why not, one reason per failed gate.
    pub rejected: Vec<String>,
    /// The attached PV values.
    pub attached: BTreeMap<StreamName, f64>,
}

/// The `beam_image` analysis.
#[derive(Debug)]
pub struct BeamImage {
    config: BeamImageConfig,
}

/// Above this many pixels the projections are summed in parallel (rayon).
const PARALLEL_PIXELS: usize = 1 << 20;

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
        let [height, width] = match image.shape() {
            [h, w] => [*h, *w],
            [1, h, w] => [*h, *w],
            other => {
                return Err(AnalysisError::Invalid(format!(
                    "stream {}: a 2-D image is needed, got shape {other:?}",
                    self.config.stream
                )));
            }
        };
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
            rejected.push(format!(
                "saturated: {saturated} pixels at the camera maximum ({max_count})"
            ));
        }
        for (name, axis, origin, extent) in [("x", &x, x0, w), ("y", &y, y0, h)] {
            if !(axis.sigma_px.is_finite() && axis.amplitude.is_finite()) {
                // A faint beam is the usual reason: say so when the raw peak shows it.
                let (profile, summed) = if name == "x" { (&px, h) } else { (&py, w) };
                let peak = profile.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let snr = peak / (noise * (summed as f64).sqrt());
                rejected.push(if snr < self.config.min_snr {
                    format!(
                        "{name}: signal to noise {snr:.1} below {}",
                        self.config.min_snr
                    )
                } else {
                    format!("{name}: no Gaussian fits the projection")
                });
                continue;
            }
            // NaN fails the gate too.
            if axis
                .snr
                .partial_cmp(&self.config.min_snr)
                .is_none_or(|o| o.is_lt())
            {
                rejected.push(format!(
                    "{name}: signal to noise {:.1} below {}",
                    axis.snr, self.config.min_snr
                ));
            }
            let max_sigma = self.config.max_sigma_px.unwrap_or(extent as f64 / 4.0);
            if !(self.config.min_sigma_px..=max_sigma).contains(&axis.sigma_px) {
                rejected.push(format!(
                    "{name}: size σ {:.2} px outside [{}, {max_sigma}] px",
                    axis.sigma_px, self.config.min_sigma_px
                ));
            }
            let centre = axis.centroid_px - origin as f64;
            let reach = self.config.edge_sigmas * axis.sigma_px;
            if centre - reach < 0.0 || centre + reach > (extent - 1) as f64 {
                rejected.push(format!(
                    "{name}: beam not fully on screen (centre {:.1} px ± {} σ leaves the {extent} px ROI)",
                    centre, self.config.edge_sigmas
                ));
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

/// A 12-bit camera image for tests and benchmarks: pedestal, a Gaussian spot of `counts` at (`x0`, `y0`) with σ
/// (`sx`, `sy`) px, Gaussian read noise, rounded and clipped to 0..=4095.
pub fn synthetic_image(
    [width, height]: [usize; 2],
    (x0, y0): (f64, f64),
    (sx, sy): (f64, f64),
    counts: f64,
    seed: u64,
) -> NdArray {
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let peak = counts / (2.0 * std::f64::consts::PI * sx * sy);
    let mut bytes = Vec::with_capacity(2 * width * height);
    for row in 0..height {
        let gy = (-0.5 * ((row as f64 - y0) / sy).powi(2)).exp();
        for col in 0..width {
            let gx = (-0.5 * ((col as f64 - x0) / sx).powi(2)).exp();
            let noise = (-2.0 * (1.0 - uniform()).ln()).sqrt()
                * (2.0 * std::f64::consts::PI * uniform()).cos();
            let v = (100.0 + peak * gx * gy + 4.0 * noise)
                .round()
                .clamp(0.0, 4095.0);
            bytes.extend_from_slice(&(v as u16).to_le_bytes());
        }
    }
    NdArray::new(
        vec![height, width],
        DType::Uint16,
        bytes::Bytes::from(bytes),
    )
    .expect("2 bytes per pixel, by construction")
}

fn dtype_max(dtype: DType) -> f64 {
    match dtype {
        DType::Uint8 => 255.0,
        DType::Uint16 => 65_535.0,
        DType::Int8 => 127.0,
        DType::Int16 => 32_767.0,
        DType::Uint32 => f64::from(u32::MAX),
        DType::Int32 => f64::from(i32::MAX),
        _ => f64::INFINITY,
    }
}

/// Rows of the ROI as f32, dark-subtracted.
struct Rows<'a> {
    image: &'a NdArray,
    dark: Option<&'a [f32]>,
    width: usize,
    x0: usize,
    w: usize,
}

impl Rows<'_> {
    /// Row `row` of the ROI into `out` (length `w`).
    fn read(&self, row: usize, out: &mut [f32]) {
        let start = row * self.width + self.x0;
        let size = self.image.dtype().size();
        let bytes = &self.image.data()[start * size..(start + self.w) * size];
        macro_rules! read {
            ($t:ty) => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(size)) {
                    let mut raw = [0u8; std::mem::size_of::<$t>()];
                    raw.copy_from_slice(b);
                    *o = <$t>::from_le_bytes(raw) as f32;
                }
            };
        }
        match self.image.dtype() {
            DType::Uint8 => read!(u8),
            DType::Uint16 => read!(u16),
            DType::Uint32 => read!(u32),
            DType::Uint64 => read!(u64),
            DType::Int8 => read!(i8),
            DType::Int16 => read!(i16),
            DType::Int32 => read!(i32),
            DType::Int64 => read!(i64),
            DType::Float32 => read!(f32),
            DType::Float64 => read!(f64),
        }
        if let Some(dark) = self.dark {
            for (o, d) in out.iter_mut().zip(&dark[start..start + self.w]) {
                *o -= d;
            }
        }
    }
}

/// Background level and pixel noise from the ROI's four border strips, `border` px wide: the
/// median of the strips' means and of their rms, so a beam reaching into one strip (a beam
/// partly off screen) does not raise the background under the rest.
fn border_level(rows: &Rows<'_>, y0: usize, h: usize, border: usize) -> (f64, f64) {
    let border = border.min(rows.w / 4).min(h / 4);
    if border == 0 {
        return (0.0, f64::NAN);
    }
    let mut line = vec![0f32; rows.w];
    // Sums and squares per strip: top, bottom, left, right.
    let mut strips = [(0usize, 0f64, 0f64); 4];
    let add = |strip: &mut (usize, f64, f64), values: &[f32]| {
        for &v in values {
            let v = f64::from(v);
            strip.0 += 1;
            strip.1 += v;
            strip.2 += v * v;
        }
    };
    for row in 0..h {
        rows.read(y0 + row, &mut line);
        if row < border {
            add(&mut strips[0], &line);
        } else if row >= h - border {
            add(&mut strips[1], &line);
        } else {
            add(&mut strips[2], &line[..border]);
            add(&mut strips[3], &line[rows.w - border..]);
        }
    }
    let mut means = [0f64; 4];
    let mut rms = [0f64; 4];
    for (k, (n, sum, sum2)) in strips.iter().enumerate() {
        let n = *n as f64;
        means[k] = sum / n;
        rms[k] = (sum2 / n - means[k] * means[k]).max(0.0).sqrt();
    }
    (median4(means), median4(rms))
}

fn median4(mut values: [f64; 4]) -> f64 {
    values.sort_by(f64::total_cmp);
    (values[1] + values[2]) / 2.0
}

/// Projections of the ROI minus `background` (never clipped), and the saturated pixel count.
fn project(
    rows: &Rows<'_>,
    y0: usize,
    h: usize,
    background: f32,
    max_count: f32,
) -> (Vec<f64>, Vec<f64>, u64) {
    let w = rows.w;
    // Rows in blocks: each block sums its own column projection; blocks run in parallel on
    // large images.
    let block = |range: std::ops::Range<usize>| {
        let mut line = vec![0f32; w];
        let mut columns = vec![0f32; w];
        let mut row_sums = Vec::with_capacity(range.len());
        let mut saturated = 0u64;
        for row in range {
            rows.read(y0 + row, &mut line);
            let mut total = 0f32;
            for (c, &v) in columns.iter_mut().zip(&line) {
                saturated += u64::from(v >= max_count);
                let signal = v - background;
                *c += signal;
                total += signal;
            }
            row_sums.push(f64::from(total));
        }
        (columns, row_sums, saturated)
    };
    let parallel = w * h >= PARALLEL_PIXELS;
    let chunk = if parallel { 64 } else { h.max(1) };
    let blocks: Vec<(Vec<f32>, Vec<f64>, u64)> = if parallel {
        (0..h.div_ceil(chunk))
            .into_par_iter()
            .map(|b| block(b * chunk..((b + 1) * chunk).min(h)))
            .collect()
    } else {
        vec![block(0..h)]
    };
    let mut px = vec![0f64; w];
    let mut py = Vec::with_capacity(h);
    let mut saturated = 0;
    for (columns, row_sums, sat) in blocks {
        for (p, c) in px.iter_mut().zip(columns) {
            *p += f64::from(c);
        }
        py.extend(row_sums);
        saturated += sat;
    }
    (px, py, saturated)
}

/// Mean and rms of `profile` between the points where its running sum reaches 2.5 % and 97.5 %
/// of the total.
fn central_rms(profile: &[f64]) -> (f64, f64) {
    let total: f64 = profile.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let mut running = 0.0;
    let (mut low, mut high) = (0, profile.len() - 1);
    let mut found_low = false;
    for (i, &v) in profile.iter().enumerate() {
        running += v;
        if !found_low && running >= 0.025 * total {
            low = i;
            found_low = true;
        }
        if running <= 0.975 * total {
            high = i + 1;
        }
    }
    let high = high.min(profile.len() - 1).max(low);
    let window = &profile[low..=high];
    let weight: f64 = window.iter().sum();
    let mean = window
        .iter()
        .enumerate()
        .map(|(i, v)| (low + i) as f64 * v)
        .sum::<f64>()
        / weight;
    let variance = window
        .iter()
        .enumerate()
        .map(|(i, v)| ((low + i) as f64 - mean).powi(2) * v)
        .sum::<f64>()
        / weight;
    (mean, variance.max(0.0).sqrt())
}

struct GaussianFit {
    amplitude: f64,
    mean: f64,
    sigma: f64,
    offset: f64,
    chi2_dof: f64,
}

/// Fits A·exp(−(i−μ)²/2σ²) + c to `profile` by Levenberg–Marquardt from the moments' guess.
// Indices, as in the algebra of the 4×4 normal equations.
#[allow(clippy::needless_range_loop)]
fn fit_gaussian(profile: &[f64], mean: f64, sigma: f64, noise: f64) -> GaussianFit {
    let failed = GaussianFit {
        amplitude: f64::NAN,
        mean: f64::NAN,
        sigma: f64::NAN,
        offset: f64::NAN,
        chi2_dof: f64::NAN,
    };
    let n = profile.len();
    if !(mean.is_finite() && sigma.is_finite() && sigma > 0.0) || n < 8 {
        return failed;
    }
    // Offset from the outer tenth on both sides; amplitude from the profile near the centre.
    let edge = (n / 10).max(1);
    let offset = (profile[..edge].iter().sum::<f64>() + profile[n - edge..].iter().sum::<f64>())
        / (2 * edge) as f64;
    let centre = (mean.round().max(0.0) as usize).min(n - 1);
    let near = &profile[centre.saturating_sub(1)..(centre + 2).min(n)];
    let peak = near.iter().sum::<f64>() / near.len() as f64 - offset;
    let mut p = [peak, mean, sigma, offset];
    let chi2 = |p: &[f64; 4]| -> f64 {
        profile
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let u = (i as f64 - p[1]) / p[2];
                let r = y - (p[0] * (-0.5 * u * u).exp() + p[3]);
                r * r
            })
            .sum()
    };
    let mut current = chi2(&p);
    let mut lambda = 1e-3;
    for _ in 0..100 {
        let mut jtj = [[0f64; 4]; 4];
        let mut jtr = [0f64; 4];
        for (i, &y) in profile.iter().enumerate() {
            let d = i as f64 - p[1];
            let u = d / p[2];
            let e = (-0.5 * u * u).exp();
            let r = y - (p[0] * e + p[3]);
            let j = [
                e,
                p[0] * e * d / (p[2] * p[2]),
                p[0] * e * d * d / (p[2] * p[2] * p[2]),
                1.0,
            ];
            for a in 0..4 {
                jtr[a] += j[a] * r;
                for b in a..4 {
                    jtj[a][b] += j[a] * j[b];
                }
            }
        }
        for a in 0..4 {
            for b in 0..a {
                jtj[a][b] = jtj[b][a];
            }
        }
        let mut improved = false;
        while lambda < 1e12 {
            let mut m = jtj;
            for (a, row) in m.iter_mut().enumerate() {
                row[a] *= 1.0 + lambda;
            }
            let Some(step) = solve4(m, jtr) else {
                lambda *= 10.0;
                continue;
            };
            let trial = [
                p[0] + step[0],
                p[1] + step[1],
                p[2] + step[2],
                p[3] + step[3],
            ];
            let value = chi2(&trial);
            if value.is_finite() && value <= current {
                let converged = (current - value) <= 1e-12 * current.max(f64::MIN_POSITIVE)
                    || step
                        .iter()
                        .zip(&trial)
                        .all(|(s, t)| s.abs() <= 1e-9 * t.abs().max(1e-9));
                p = trial;
                current = value;
                lambda = (lambda / 10.0).max(1e-12);
                improved = true;
                if converged {
                    return finish(p, current, n, noise);
                }
                break;
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }
    finish(p, current, n, noise)
}

fn finish(p: [f64; 4], chi2: f64, n: usize, noise: f64) -> GaussianFit {
    GaussianFit {
        amplitude: p[0],
        mean: p[1],
        sigma: p[2].abs(),
        offset: p[3],
        chi2_dof: chi2 / (n - 4) as f64 / (noise * noise),
    }
}

/// Solves a 4×4 system by Gaussian elimination with partial pivoting.
#[allow(clippy::needless_range_loop)]
fn solve4(mut m: [[f64; 4]; 4], mut b: [f64; 4]) -> Option<[f64; 4]> {
    for col in 0..4 {
        let pivot = (col..4).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..4 {
            let f = m[row][col] / m[col][col];
            for k in col..4 {
                m[row][k] -= f * m[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0f64; 4];
    for row in (0..4).rev() {
        let s: f64 = (row + 1..4).map(|k| m[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / m[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

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
        let reasons = |image: &NdArray| analysis.measure(image, None).expect("measured").rejected;
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
