//! The quad-scan emittance fit of one plane (`physics.md` §3.3): beam sizes on a screen at
//! several quad settings → the beam matrix at the quad entrance by weighted linear least squares
//! on the thick-quad model, εn/ε/β/α with error bars propagated from the parameter covariance,
//! both a priori (trusting the size errors) and χ²-scaled, and BMAG against a design.
//!
//! σ²ᵢ = M11² σ11 + 2 M11 M12 σ12 + M12² σ22 with Mᵢ = R · Q(kᵢ); each row is weighted by
//! 1/δ(σ²)ᵢ = 1/(2 σᵢ δσᵢ). The system is solved by a Householder QR of the weighted, column-scaled
//! matrix rather than the normal equations, whose squared condition number would cost the
//! noise-free case its 1e-8 agreement with the truth.

use serde::Serialize;

use crate::{BeamMatrix, Energy, Matrix, Plane, Twiss};

/// One measured step: the quad setting and the rms size on the screen with its error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScanPoint {
    /// Quad setting (integrated gradient), kG.
    pub bctrl_kg: f64,
    /// RMS beam size on the screen, m.
    pub size_m: f64,
    /// Its one-sigma error, m.
    pub error_m: f64,
}

/// What the fit needs to know about the beamline, per plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScanOptics {
    /// The beam's energy.
    pub energy: Energy,
    /// Effective quad length, m.
    pub quad_length_m: f64,
    /// Transfer matrix quad exit → screen in this plane.
    pub rmat: Matrix,
    /// Which plane (the sign of k it sees).
    pub plane: Plane,
}

impl ScanOptics {
    /// Quad entrance → screen at `bctrl_kg`.
    pub fn transfer(&self, bctrl_kg: f64) -> Matrix {
        let k = self.energy.quad_k(bctrl_kg, self.quad_length_m, self.plane);
        self.rmat
            .then_after(Matrix::thick_quad(k, self.quad_length_m))
    }

    /// The rms size on the screen of `beam` (at the quad entrance) at `bctrl_kg`, m.
    pub fn screen_size(&self, beam: BeamMatrix, bctrl_kg: f64) -> f64 {
        beam.transport(self.transfer(bctrl_kg)).rms_size()
    }
}

/// Design Twiss at the screen, for BMAG.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct DesignTwiss {
    /// β, m.
    pub beta: f64,
    /// α.
    pub alpha: f64,
}

/// One-sigma errors of the derived quantities.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TwissErrors {
    /// Of εn, m·rad.
    pub norm_emit: f64,
    /// Of ε, m·rad.
    pub emit: f64,
    /// Of β, m.
    pub beta: f64,
    /// Of α.
    pub alpha: f64,
}

/// BMAG of the fitted beam against the design, per setting and at its best.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bmag {
    /// BMAG at each distinct setting, in setting order.
    pub per_setting: Vec<f64>,
    /// The smallest.
    pub min: f64,
    /// The setting where it is smallest, kG.
    pub at_bctrl_kg: f64,
}

/// The fit of one plane.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlaneFit {
    /// σ11 at the quad entrance, m².
    pub sigma11_m2: f64,
    /// σ12, m·rad.
    pub sigma12_m_rad: f64,
    /// σ22, rad².
    pub sigma22_rad2: f64,
    /// Whether σ11 > 0, σ22 > 0 and σ11σ22 > σ12²; if not, the Twiss values are NaN.
    pub physical: bool,
    /// Normalised emittance, m·rad.
    pub norm_emit: f64,
    /// Geometric emittance, m·rad.
    pub emit: f64,
    /// β at the quad entrance, m.
    pub beta: f64,
    /// α at the quad entrance.
    pub alpha: f64,
    /// Errors trusting the size errors as given.
    pub errors_apriori: TwissErrors,
    /// Errors scaled by √(χ²/dof): the honest ones when the size errors are estimates.
    pub errors_chi2_scaled: TwissErrors,
    /// Σ wᵢ² (σ²ᵢ − model)².
    pub chi2: f64,
    /// Points − 3.
    pub dof: usize,
    /// χ²/dof (NaN without degrees of freedom).
    pub reduced_chi2: f64,
    /// Distinct settings.
    pub settings: usize,
    /// BMAG, when a design was given and the fit is physical.
    pub bmag: Option<Bmag>,
}

/// Why a plane cannot be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// Three parameters need three distinct settings.
    #[error("{0} distinct quad settings; a fit needs at least 3")]
    TooFewSettings(usize),
    /// A size or error that is not a positive finite number.
    #[error("point {index}: size {size_m} m ± {error_m} m is not a positive finite measurement")]
    BadPoint {
        /// Which point.
        index: usize,
        /// Its size.
        size_m: f64,
        /// Its error.
        error_m: f64,
    },
    /// The settings do not determine the beam matrix (e.g. the optics make two columns equal).
    #[error("the settings do not determine the beam matrix (singular system)")]
    Singular,
}

/// Fits one plane. Settings closer than 1e-9 kG count as one for `settings`.
pub fn fit_plane(
    optics: &ScanOptics,
    points: &[ScanPoint],
    design: Option<DesignTwiss>,
) -> Result<PlaneFit, FitError> {
    for (index, p) in points.iter().enumerate() {
        if !(p.size_m.is_finite() && p.size_m > 0.0 && p.error_m.is_finite() && p.error_m > 0.0) {
            return Err(FitError::BadPoint {
                index,
                size_m: p.size_m,
                error_m: p.error_m,
            });
        }
    }
    let mut settings: Vec<f64> = points.iter().map(|p| p.bctrl_kg).collect();
    settings.sort_by(f64::total_cmp);
    settings.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    if settings.len() < 3 {
        return Err(FitError::TooFewSettings(settings.len()));
    }
    // Weighted rows a_i·w_i and right-hand sides b_i·w_i.
    let mut rows: Vec<[f64; 3]> = Vec::with_capacity(points.len());
    let mut rhs: Vec<f64> = Vec::with_capacity(points.len());
    for p in points {
        let [[m11, m12], _] = optics.transfer(p.bctrl_kg).0;
        let weight = 1.0 / (2.0 * p.size_m * p.error_m);
        rows.push([
            weight * m11 * m11,
            weight * 2.0 * m11 * m12,
            weight * m12 * m12,
        ]);
        rhs.push(weight * p.size_m * p.size_m);
    }
    let (theta, covariance) = least_squares(&rows, &rhs).ok_or(FitError::Singular)?;
    let chi2: f64 = rows
        .iter()
        .zip(&rhs)
        .map(|(row, b)| {
            let r = b - (row[0] * theta[0] + row[1] * theta[1] + row[2] * theta[2]);
            r * r
        })
        .sum();
    let dof = points.len() - 3;
    let reduced_chi2 = if dof > 0 { chi2 / dof as f64 } else { f64::NAN };
    let beam = BeamMatrix {
        s11: theta[0],
        s12: theta[1],
        s22: theta[2],
    };
    let twiss = beam.twiss();
    let beta_gamma = optics.energy.beta_gamma();
    let errors = |scale: f64| match twiss {
        Some(t) => propagate(beam, t, &covariance, scale, beta_gamma),
        None => TwissErrors {
            norm_emit: f64::NAN,
            emit: f64::NAN,
            beta: f64::NAN,
            alpha: f64::NAN,
        },
    };
    let nan = Twiss {
        emittance: f64::NAN,
        beta: f64::NAN,
        alpha: f64::NAN,
    };
    let t = twiss.unwrap_or(nan);
    let bmag = match (design, twiss) {
        (Some(design), Some(_)) => Some(bmag(optics, beam, &settings, design)),
        _ => None,
    };
    Ok(PlaneFit {
        sigma11_m2: beam.s11,
        sigma12_m_rad: beam.s12,
        sigma22_rad2: beam.s22,
        physical: twiss.is_some(),
        norm_emit: beta_gamma * t.emittance,
        emit: t.emittance,
        beta: t.beta,
        alpha: t.alpha,
        errors_apriori: errors(1.0),
        errors_chi2_scaled: errors(if dof > 0 {
            reduced_chi2.sqrt()
        } else {
            f64::NAN
        }),
        chi2,
        dof,
        reduced_chi2,
        settings: settings.len(),
        bmag,
    })
}

impl PlaneFit {
    /// The fitted beam matrix at the quad entrance.
    pub fn beam(&self) -> BeamMatrix {
        BeamMatrix {
            s11: self.sigma11_m2,
            s12: self.sigma12_m_rad,
            s22: self.sigma22_rad2,
        }
    }
}

/// A beamline's quad scan as the pipeline file and `beamflow emittance` give it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ScanSetup {
    /// Total beam energy, eV.
    pub energy_ev: f64,
    /// Effective quad length, m.
    pub quad_length_m: f64,
    /// Quad exit → screen, x.
    pub rmat_x: [[f64; 2]; 2],
    /// Quad exit → screen, y.
    pub rmat_y: [[f64; 2]; 2],
    /// Design Twiss at the screen, for BMAG.
    #[serde(default)]
    pub design_twiss: Option<DesignTwissXy>,
}

/// Design Twiss at the screen in both planes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesignTwissXy {
    /// β in x, m.
    pub beta_x: f64,
    /// α in x.
    pub alpha_x: f64,
    /// β in y, m.
    pub beta_y: f64,
    /// α in y.
    pub alpha_y: f64,
}

impl ScanSetup {
    /// The optics of one plane.
    pub fn optics(&self, plane: Plane) -> ScanOptics {
        ScanOptics {
            energy: Energy {
                total_ev: self.energy_ev,
            },
            quad_length_m: self.quad_length_m,
            rmat: Matrix(match plane {
                Plane::X => self.rmat_x,
                Plane::Y => self.rmat_y,
            }),
            plane,
        }
    }

    fn design(&self, plane: Plane) -> Option<DesignTwiss> {
        self.design_twiss.map(|d| match plane {
            Plane::X => DesignTwiss {
                beta: d.beta_x,
                alpha: d.alpha_x,
            },
            Plane::Y => DesignTwiss {
                beta: d.beta_y,
                alpha: d.alpha_y,
            },
        })
    }

    /// Fits both planes and describes the result: fit, measured points, fitted curve, warnings.
    pub fn report(&self, x: Vec<ScanPoint>, y: Vec<ScanPoint>) -> ScanReport {
        let plane = |plane: Plane, points: Vec<ScanPoint>| {
            let optics = self.optics(plane);
            let (fit, error) = match fit_plane(&optics, &points, self.design(plane)) {
                Ok(fit) => (Some(fit), None),
                Err(error) => (None, Some(error.to_string())),
            };
            let curve = match &fit {
                Some(fit) => Curve::of(&optics, fit.beam(), &points),
                None => Curve::default(),
            };
            PlaneReport {
                fit,
                error,
                points,
                curve,
            }
        };
        let x = plane(Plane::X, x);
        let y = plane(Plane::Y, y);
        let mut warnings = Vec::new();
        for (name, report) in [("x", &x), ("y", &y)] {
            match (&report.fit, &report.error) {
                (_, Some(error)) => warnings.push(format!("{name}: {error}")),
                (Some(fit), None) if !fit.physical => warnings.push(format!(
                    "{name}: unphysical fit (σ11σ22 ≤ σ12² or a negative σ11/σ22); the sizes do not fit a beam"
                )),
                _ => {}
            }
        }
        let norm_emit_4d = match (&x.fit, &y.fit) {
            (Some(a), Some(b)) => (a.norm_emit * b.norm_emit).sqrt(),
            _ => f64::NAN,
        };
        ScanReport {
            x,
            y,
            norm_emit_4d,
            warnings,
        }
    }
}

/// Both planes of a quad scan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanReport {
    /// Horizontal.
    pub x: PlaneReport,
    /// Vertical.
    pub y: PlaneReport,
    /// √(εn,x · εn,y), m·rad (NaN unless both planes fitted).
    pub norm_emit_4d: f64,
    /// Why a plane has no fit or an unphysical one.
    pub warnings: Vec<String>,
}

/// One plane's fit (its fields at the top level), or the reason there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlaneReport {
    /// The fit.
    #[serde(flatten)]
    pub fit: Option<PlaneFit>,
    /// Why there is no fit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The measured points.
    pub points: Vec<ScanPoint>,
    /// The fitted sizes over the scanned range.
    pub curve: Curve,
}

/// The model's screen size over a range of settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Curve {
    /// Settings, kG.
    pub bctrl_kg: Vec<f64>,
    /// Model sizes, m.
    pub size_m: Vec<f64>,
}

impl Curve {
    /// 50 settings spanning the points'.
    fn of(optics: &ScanOptics, beam: BeamMatrix, points: &[ScanPoint]) -> Self {
        let low = points
            .iter()
            .map(|p| p.bctrl_kg)
            .fold(f64::INFINITY, f64::min);
        let high = points
            .iter()
            .map(|p| p.bctrl_kg)
            .fold(f64::NEG_INFINITY, f64::max);
        let bctrl_kg: Vec<f64> = (0..50)
            .map(|i| low + (high - low) * f64::from(i) / 49.0)
            .collect();
        let size_m = bctrl_kg
            .iter()
            .map(|&b| {
                let s11 = beam.transport(optics.transfer(b)).s11;
                if s11 > 0.0 { s11.sqrt() } else { f64::NAN }
            })
            .collect();
        Self { bctrl_kg, size_m }
    }
}

/// Errors of (ε, β, α) from the covariance of (σ11, σ12, σ22), scaled by `scale`.
fn propagate(
    beam: BeamMatrix,
    twiss: Twiss,
    covariance: &[[f64; 3]; 3],
    scale: f64,
    beta_gamma: f64,
) -> TwissErrors {
    let (s11, s12, s22) = (beam.s11, beam.s12, beam.s22);
    let e = twiss.emittance;
    let e3 = e * e * e;
    let jacobian = [
        [s22 / (2.0 * e), -s12 / e, s11 / (2.0 * e)],
        [
            1.0 / e - s11 * s22 / (2.0 * e3),
            s11 * s12 / e3,
            -s11 * s11 / (2.0 * e3),
        ],
        [
            s12 * s22 / (2.0 * e3),
            -1.0 / e - s12 * s12 / e3,
            s11 * s12 / (2.0 * e3),
        ],
    ];
    let variance = |row: &[f64; 3]| -> f64 {
        let mut v = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                v += row[i] * covariance[i][j] * row[j];
            }
        }
        v.max(0.0).sqrt() * scale
    };
    let emit = variance(&jacobian[0]);
    TwissErrors {
        norm_emit: beta_gamma * emit,
        emit,
        beta: variance(&jacobian[1]),
        alpha: variance(&jacobian[2]),
    }
}

/// BMAG = ½(β γ₀ − 2 α α₀ + γ β₀) at the screen for each setting.
fn bmag(optics: &ScanOptics, beam: BeamMatrix, settings: &[f64], design: DesignTwiss) -> Bmag {
    let gamma0 = (1.0 + design.alpha * design.alpha) / design.beta;
    let per_setting: Vec<f64> = settings
        .iter()
        .map(|&bctrl| {
            let screen = beam.transport(optics.transfer(bctrl));
            match screen.twiss() {
                Some(t) => {
                    let gamma = (1.0 + t.alpha * t.alpha) / t.beta;
                    0.5 * (t.beta * gamma0 - 2.0 * t.alpha * design.alpha + gamma * design.beta)
                }
                None => f64::NAN,
            }
        })
        .collect();
    let (index, min) = per_setting
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, b)| b.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN));
    Bmag {
        at_bctrl_kg: settings.get(index).copied().unwrap_or(f64::NAN),
        min,
        per_setting,
    }
}

/// Solves min ‖A x − b‖ for an n×3 `A` by Householder QR on column-scaled A; returns x and
/// (AᵀA)⁻¹. `None` when A is rank deficient.
// Indices, as in the algebra: iterators over rows and columns of a[i][j] would hide it.
#[allow(clippy::needless_range_loop)]
fn least_squares(rows: &[[f64; 3]], rhs: &[f64]) -> Option<([f64; 3], [[f64; 3]; 3])> {
    let n = rows.len();
    // Column scaling: σ11, σ12 and σ22 differ by orders of magnitude in their coefficients.
    let mut scale = [0.0f64; 3];
    for row in rows {
        for j in 0..3 {
            scale[j] += row[j] * row[j];
        }
    }
    let scale = scale.map(|s| if s > 0.0 { 1.0 / s.sqrt() } else { 0.0 });
    let mut a: Vec<[f64; 3]> = rows
        .iter()
        .map(|row| [row[0] * scale[0], row[1] * scale[1], row[2] * scale[2]])
        .collect();
    let mut b = rhs.to_vec();
    for k in 0..3 {
        let norm = (k..n).map(|i| a[i][k] * a[i][k]).sum::<f64>().sqrt();
        if norm == 0.0 {
            return None;
        }
        let alpha = if a[k][k] > 0.0 { -norm } else { norm };
        // v = x − α e_k, stored in place below the diagonal.
        let mut v: Vec<f64> = (k..n).map(|i| a[i][k]).collect();
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|x| x * x).sum();
        if vv == 0.0 {
            continue;
        }
        for j in k..3 {
            let dot: f64 = (k..n).map(|i| v[i - k] * a[i][j]).sum();
            let f = 2.0 * dot / vv;
            for i in k..n {
                a[i][j] -= f * v[i - k];
            }
        }
        let dot: f64 = (k..n).map(|i| v[i - k] * b[i]).sum();
        let f = 2.0 * dot / vv;
        for i in k..n {
            b[i] -= f * v[i - k];
        }
    }
    let r = [a[0], a[1], a[2]];
    let largest = r
        .iter()
        .enumerate()
        .map(|(i, row)| row[i].abs())
        .fold(0.0, f64::max);
    if (0..3).any(|i| r[i][i].abs() <= largest * 1e-13) {
        return None;
    }
    // Back substitution for the scaled solution.
    let mut y = [0.0f64; 3];
    for i in (0..3).rev() {
        let mut s = b[i];
        for j in i + 1..3 {
            s -= r[i][j] * y[j];
        }
        y[i] = s / r[i][i];
    }
    // R⁻¹ (upper triangular), then (AᵀA)⁻¹ = R⁻¹ R⁻ᵀ, unscaled.
    let mut inv = [[0.0f64; 3]; 3];
    for col in 0..3 {
        for i in (0..3).rev() {
            let mut s = if i == col { 1.0 } else { 0.0 };
            for j in i + 1..3 {
                s -= r[i][j] * inv[j][col];
            }
            inv[i][col] = s / r[i][i];
        }
    }
    let mut covariance = [[0.0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let s: f64 = (0..3).map(|k| inv[i][k] * inv[j][k]).sum();
            covariance[i][j] = s * scale[i] * scale[j];
        }
    }
    Some((
        [y[0] * scale[0], y[1] * scale[1], y[2] * scale[2]],
        covariance,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/quadscan/reference.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference dataset"))
            .expect("valid JSON")
    }

    fn numbers(value: &serde_json::Value) -> Vec<f64> {
        value
            .as_array()
            .expect("an array")
            .iter()
            .map(|v| v.as_f64().expect("a number"))
            .collect()
    }

    fn optics(reference: &serde_json::Value, plane: Plane) -> ScanOptics {
        let machine = &reference["machine"];
        let key = match plane {
            Plane::X => "rmat_quad_exit_to_screen_x",
            Plane::Y => "rmat_quad_exit_to_screen_y",
        };
        let r = &machine[key];
        let at = |i: usize, j: usize| r[i][j].as_f64().expect("a number");
        ScanOptics {
            energy: Energy {
                total_ev: machine["energy_total_eV"].as_f64().expect("energy"),
            },
            quad_length_m: machine["quad_length_m"].as_f64().expect("length"),
            rmat: Matrix([[at(0, 0), at(0, 1)], [at(1, 0), at(1, 1)]]),
            plane,
        }
    }

    fn points(settings: &[f64], sizes: &[f64], relative_error: f64) -> Vec<ScanPoint> {
        settings
            .iter()
            .zip(sizes)
            .map(|(&bctrl_kg, &size_m)| ScanPoint {
                bctrl_kg,
                size_m,
                error_m: relative_error * size_m,
            })
            .collect()
    }

    fn relative(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn noise_free_sizes_give_the_truth() {
        let reference = reference();
        let settings = numbers(&reference["scan"]["bctrl_kG"]);
        for (plane, key) in [(Plane::X, "x"), (Plane::Y, "y")] {
            let sizes = numbers(&reference["exact_sizes_m"][key]);
            let fit = fit_plane(
                &optics(&reference, plane),
                &points(&settings, &sizes, 0.03),
                None,
            )
            .expect("a fit");
            let truth = &reference["truth"][key];
            for (ours, name) in [
                (fit.norm_emit, "norm_emit"),
                (fit.beta, "beta"),
                (fit.alpha, "alpha"),
            ] {
                let want = truth[name].as_f64().expect("truth");
                assert!(
                    relative(ours, want) < 1e-8,
                    "{key} {name}: {ours} vs {want}"
                );
            }
            assert!(fit.chi2 < 1e-12, "{}", fit.chi2);
            assert!(fit.physical);
            assert_eq!((fit.settings, fit.dof), (9, 6));
        }
    }

    #[test]
    fn noisy_sizes_match_the_independent_fit_and_its_error_bars_the_monte_carlo() {
        let reference = reference();
        let case = &reference["cases"][1];
        assert_eq!(case["name"], "noise_3pct");
        let inputs = &case["inputs"];
        let settings = numbers(&inputs["bctrl_kG"]);
        for (plane, key) in [(Plane::X, "x"), (Plane::Y, "y")] {
            let sizes = numbers(&inputs[format!("sizes_{key}_m")]);
            let errors = numbers(&inputs[format!("sizes_err_{key}_m")]);
            let points: Vec<ScanPoint> = settings
                .iter()
                .zip(&sizes)
                .zip(&errors)
                .map(|((&bctrl_kg, &size_m), &error_m)| ScanPoint {
                    bctrl_kg,
                    size_m,
                    error_m,
                })
                .collect();
            let fit = fit_plane(&optics(&reference, plane), &points, None).expect("a fit");
            let lsq = &case["independent_linear_lsq_thick"][key];
            let want = |name: &str| lsq[name].as_f64().expect("listed");
            for (ours, name) in [
                (fit.sigma11_m2, "sigma11"),
                (fit.sigma12_m_rad, "sigma12"),
                (fit.sigma22_rad2, "sigma22"),
                (fit.norm_emit, "norm_emit"),
                (fit.beta, "beta"),
                (fit.alpha, "alpha"),
                (fit.chi2, "chi2"),
                (fit.errors_apriori.norm_emit, "norm_emit_err_apriori"),
                (fit.errors_apriori.beta, "beta_err_apriori"),
                (fit.errors_apriori.alpha, "alpha_err_apriori"),
                (fit.errors_chi2_scaled.norm_emit, "norm_emit_err_chi2scaled"),
                (fit.errors_chi2_scaled.beta, "beta_err_chi2scaled"),
                (fit.errors_chi2_scaled.alpha, "alpha_err_chi2scaled"),
            ] {
                assert!(
                    relative(ours, want(name)) < 1e-6,
                    "{key} {name}: {ours} vs {}",
                    want(name)
                );
            }
            // Error bars at the truth (exact sizes, 3 % errors) against the Monte-Carlo spread of
            // the same estimator over 3 % noise around the truth: what an error bar promises.
            let exact = numbers(&reference["exact_sizes_m"][key]);
            let at_truth = fit_plane(
                &optics(&reference, plane),
                &self::points(&settings, &exact, 0.03),
                None,
            )
            .expect("a fit");
            let mc = &case["monte_carlo_linear_lsq"][key];
            let spread = |name: &str| mc[name].as_f64().expect("listed");
            for (ours, name) in [
                (at_truth.errors_apriori.norm_emit, "norm_emit_std"),
                (at_truth.errors_apriori.beta, "beta_std"),
                (at_truth.errors_apriori.alpha, "alpha_std"),
            ] {
                assert!(
                    relative(ours, spread(name)) < 0.10,
                    "{key} {name}: {ours} vs {}",
                    spread(name)
                );
            }
        }
    }

    #[test]
    fn too_few_settings_bad_points_and_unphysical_fits_are_reported() {
        let reference = reference();
        let optics = optics(&reference, Plane::X);
        let two = points(&[1.0, 1.0, 2.0], &[1e-4, 1e-4, 1e-4], 0.03);
        assert_eq!(
            fit_plane(&optics, &two, None),
            Err(FitError::TooFewSettings(2))
        );
        let bad = points(&[1.0, 2.0, 3.0], &[1e-4, f64::NAN, 1e-4], 0.03);
        assert!(matches!(
            fit_plane(&optics, &bad, None),
            Err(FitError::BadPoint { index: 1, .. })
        ));
        // Sizes that grow where the model must shrink: a "beam" with negative determinant.
        let wrong = points(&[0.5, 2.5, 4.5], &[30e-6, 150e-6, 30e-6], 0.03);
        let fit = fit_plane(&optics, &wrong, None).expect("solvable");
        assert!(!fit.physical, "{fit:?}");
        assert!(fit.norm_emit.is_nan() && fit.errors_apriori.beta.is_nan());
    }

    #[test]
    fn bmag_is_one_for_the_design_beam_and_more_otherwise() {
        let reference = reference();
        let optics = optics(&reference, Plane::X);
        let settings = numbers(&reference["scan"]["bctrl_kG"]);
        let sizes = numbers(&reference["exact_sizes_m"]["x"]);
        let truth = BeamMatrix::from_twiss(Twiss {
            emittance: reference["truth"]["x"]["emit_geometric"]
                .as_f64()
                .expect("ε"),
            beta: 10.0,
            alpha: -1.0,
        });
        // The design is the truth as it arrives on the screen at 2.5 kG: BMAG 1 there.
        let at_screen = truth
            .transport(optics.transfer(2.5))
            .twiss()
            .expect("a beam");
        let design = DesignTwiss {
            beta: at_screen.beta,
            alpha: at_screen.alpha,
        };
        let fit =
            fit_plane(&optics, &points(&settings, &sizes, 0.03), Some(design)).expect("a fit");
        let bmag = fit.bmag.expect("with a design");
        assert!((bmag.min - 1.0).abs() < 1e-9, "{bmag:?}");
        assert_eq!(bmag.at_bctrl_kg, 2.5);
        assert!(bmag.per_setting.iter().all(|&b| b >= 1.0 - 1e-9));
    }
}
