//! The image side of `beam_image`: rows of the ROI with the dark frame subtracted, the
//! background level and noise from the border, the projections, and a synthetic camera image
//! for tests and benchmarks.

use beamflow_protocol::{DType, NdArray};
use rayon::prelude::*;

/// Above this many pixels the projections are summed in parallel (rayon).
const PARALLEL_PIXELS: usize = 1 << 20;

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

pub(super) fn dtype_max(dtype: DType) -> f64 {
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
pub(super) struct Rows<'a> {
    pub(super) image: &'a NdArray,
    pub(super) dark: Option<&'a [f32]>,
    pub(super) width: usize,
    pub(super) x0: usize,
    pub(super) w: usize,
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
pub(super) fn border_level(rows: &Rows<'_>, y0: usize, h: usize, border: usize) -> (f64, f64) {
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
pub(super) fn project(
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
