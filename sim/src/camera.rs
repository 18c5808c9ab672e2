//! A camera looking at a Gaussian beam spot: the one image model of the simulations. Pixels
//! are the spot on a pedestal plus normal read noise, rounded and clipped to the camera's
//! range, row-major.

use std::f64::consts::PI;

use crate::random::SplitMix;

/// Normal deviates in the noise table. Reading them from a random offset per image keeps
/// rendering well under a millisecond per 640×480 frame, and the noise still differs frame to
/// frame.
const NOISE_TABLE: usize = 1 << 20;

/// What the camera adds to the light.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sensor {
    /// Counts at the dark level.
    pub pedestal: f64,
    /// Read noise, counts rms.
    pub read_noise: f64,
    /// The largest count.
    pub full_scale: f64,
}

/// A Gaussian spot, in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spot {
    /// Centre column.
    pub x: f64,
    /// Centre row.
    pub y: f64,
    /// RMS width, pixels.
    pub sigma_x: f64,
    /// RMS height, pixels.
    pub sigma_y: f64,
    /// Counts in the whole spot.
    pub counts: f64,
}

/// Renders spots on a sensor; its own seeded generator draws the noise.
#[derive(Debug, Clone)]
pub struct Camera {
    sensor: Sensor,
    random: SplitMix,
    noise: Vec<f32>,
}

impl Camera {
    /// A camera whose noise is fixed by `seed`.
    pub fn new(sensor: Sensor, seed: u64) -> Self {
        let mut random = SplitMix::new(seed);
        let noise = (0..NOISE_TABLE).map(|_| random.normal() as f32).collect();
        Self {
            sensor,
            random,
            noise,
        }
    }

    /// The camera's generator, for anything else about a shot that should be random (pointing
    /// jitter).
    pub fn random(&mut self) -> &mut SplitMix {
        &mut self.random
    }

    /// A `width` × `height` image of `spot`, row-major.
    pub fn render(&mut self, shape: [usize; 2], spot: Spot) -> Vec<u16> {
        self.render_as(shape, spot, |count| count)
    }

    /// [`render`](Self::render) with each count stored as `pixel` makes it: the caller's pixel
    /// type is built in the one pass over the image, which a simulator pays for every frame.
    pub fn render_as<T>(
        &mut self,
        [width, height]: [usize; 2],
        spot: Spot,
        pixel: impl Fn(u16) -> T,
    ) -> Vec<T> {
        let Sensor {
            pedestal,
            read_noise,
            full_scale,
        } = self.sensor;
        let peak = spot.counts / (2.0 * PI * spot.sigma_x * spot.sigma_y);
        // Separable: two profiles, then a product per pixel.
        let profile = |n: usize, centre: f64, sigma: f64| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let u = (i as f64 - centre) / sigma;
                    (-0.5 * u * u).exp() as f32
                })
                .collect()
        };
        let gx = profile(width, spot.x, spot.sigma_x);
        let gy = profile(height, spot.y, spot.sigma_y);
        let mask = self.noise.len() - 1;
        let offset = self.random.next_u64() as usize & mask;
        let mut image = Vec::with_capacity(width * height);
        for (row, &y) in gy.iter().enumerate() {
            let row_peak = peak as f32 * y;
            let base = offset + row * width;
            for (col, &x) in gx.iter().enumerate() {
                let noise = self.noise[(base + col) & mask];
                let counts = pedestal as f32 + row_peak * x + read_noise as f32 * noise;
                image.push(pixel(counts.round().clamp(0.0, full_scale as f32) as u16));
            }
        }
        image
    }
}

/// Sum and rms of a projection: how the tests read a rendered beam back.
#[cfg(test)]
pub(crate) fn moments(profile: &[f64]) -> (f64, f64) {
    let total: f64 = profile.iter().sum();
    let mean = profile
        .iter()
        .enumerate()
        .map(|(i, v)| i as f64 * v)
        .sum::<f64>()
        / total;
    let var = profile
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64 - mean).powi(2) * v)
        .sum::<f64>()
        / total;
    (total, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENSOR: Sensor = Sensor {
        pedestal: 100.0,
        read_noise: 4.0,
        full_scale: 4095.0,
    };

    #[test]
    fn the_spot_has_its_counts_and_size_and_the_dark_its_noise() {
        let mut camera = Camera::new(SENSOR, 1);
        let spot = Spot {
            x: 320.0,
            y: 240.0,
            sigma_x: 20.0,
            sigma_y: 9.0,
            counts: 300_000.0,
        };
        let [width, height] = [640usize, 480];
        let image = camera.render([width, height], spot);
        assert_eq!(image.len(), width * height);
        // Within ±5σ: over the whole frame, read noise alone would move the moments a lot.
        let (cols, rows) = (220..420, 195..285);
        let (mut px, mut py) = (vec![0.0; width], vec![0.0; height]);
        for (i, &p) in image.iter().enumerate() {
            let (col, row) = (i % width, i / width);
            if cols.contains(&col) && rows.contains(&row) {
                px[col] += f64::from(p) - SENSOR.pedestal;
                py[row] += f64::from(p) - SENSOR.pedestal;
            }
        }
        let (total, x) = moments(&px);
        let (_, y) = moments(&py);
        assert!((total - spot.counts).abs() / spot.counts < 0.01, "{total}");
        assert!((x - 20.0).abs() / 20.0 < 0.02, "{x}");
        assert!((y - 9.0).abs() / 9.0 < 0.02, "{y}");
        // The first rows are dark: pedestal and read noise.
        let dark: Vec<f64> = image[..width * 20].iter().map(|&p| f64::from(p)).collect();
        let mean = dark.iter().sum::<f64>() / dark.len() as f64;
        let rms = (dark.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / dark.len() as f64).sqrt();
        assert!((mean - 100.0).abs() < 0.2, "{mean}");
        assert!((rms - 4.0).abs() < 0.2, "{rms}");
    }

    #[test]
    fn pixels_are_clipped_to_the_sensors_range() {
        let mut camera = Camera::new(SENSOR, 1);
        let spot = Spot {
            x: 8.0,
            y: 8.0,
            sigma_x: 1.0,
            sigma_y: 1.0,
            counts: 1e9,
        };
        let image = camera.render([16, 16], spot);
        assert!(image.iter().all(|&p| p <= 4095));
        assert_eq!(image[8 * 16 + 8], 4095);
    }
}
