//! The fits of `beam_image`: the central-95 % rms of a projection and a Gaussian with offset
//! fitted by Levenberg–Marquardt.

/// Mean and rms of `profile` between the points where its running sum reaches 2.5 % and 97.5 %
/// of the total.
pub(super) fn central_rms(profile: &[f64]) -> (f64, f64) {
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

pub(super) struct GaussianFit {
    pub(super) amplitude: f64,
    pub(super) mean: f64,
    pub(super) sigma: f64,
    pub(super) offset: f64,
    pub(super) chi2_dof: f64,
}

/// Fits A·exp(−(i−μ)²/2σ²) + c to `profile` by Levenberg–Marquardt from the moments' guess.
// Indices, as in the algebra of the 4×4 normal equations.
#[allow(clippy::needless_range_loop)]
pub(super) fn fit_gaussian(profile: &[f64], mean: f64, sigma: f64, noise: f64) -> GaussianFit {
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
