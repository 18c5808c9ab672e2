//! The quad-scan emittance fit of one plane (`physics.md` §3.3): beam sizes on a screen at
//! several quad settings → the beam matrix at the quad entrance by weighted linear least squares
//! on the thick-quad model, εn/ε/β/α with error bars propagated from the parameter covariance,
//! both a priori (trusting the size errors) and χ²-scaled, and BMAG against a design.
//!
//! σ²ᵢ = M11² σ11 + 2 M11 M12 σ12 + M12² σ22 with Mᵢ = R · Q(kᵢ); each row is weighted by
//! 1/δ(σ²)ᵢ = 1/(2 σᵢ δσᵢ). The system is solved by a Householder QR of the weighted, column-scaled
//! matrix rather than the normal equations, whose squared condition number would cost the
//! noise-free case its 1e-8 agreement with the truth.
//!
//! A fit can be a clean number and still be wrong, so [`ScanSetup::report`] says when not to
//! trust one: no waist inside the scanned range, a design matrix too ill-conditioned to separate
//! σ11, σ12 and σ22 (above [`CONDITION_LIMIT`]), an unphysical beam matrix, or no degrees of
//! freedom. [`ScanReport::summary`] is the short table for a terminal.

use std::fmt;

use serde::Serialize;

use crate::{BeamMatrix, Energy, Matrix, Plane, Twiss};

/// Above this condition number of the weighted, column-scaled design matrix a fit is flagged as
/// ill-conditioned.
///
/// Column scaling (each column of the weighted matrix to unit length) takes out the units of
/// σ11 (m²), σ12 (m·rad) and σ22 (rad²), which differ by orders of magnitude, so what is left
/// measures the scan's geometry: how differently the settings weigh the three unknowns. The
/// reference scan of `physics.md` (0.5 … 4.5 kG) sits at 4 (x) and 67 (y), a −6 … 6 kG scan at 3
/// and 15; a scan over 2 … 3 kG reaches 1.0e3 in y, where 3 % size noise moves εn,y by half.
/// The limit is about 15× the worst plane of a good scan.
pub const CONDITION_LIMIT: f64 = 1e3;

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
    /// Errors scaled by max(1, √(χ²/dof)): the honest ones when the size errors are estimates.
    /// Never below the a-priori ones: a χ²/dof under 1 more likely means overestimated size
    /// errors (or luck) than a better measurement, so it does not shrink the error bars. NaN
    /// without degrees of freedom.
    pub errors_chi2_scaled: TwissErrors,
    /// Σ wᵢ² (σ²ᵢ − model)².
    pub chi2: f64,
    /// Points − 3.
    pub dof: usize,
    /// χ²/dof (NaN without degrees of freedom).
    pub reduced_chi2: f64,
    /// Distinct settings.
    pub settings: usize,
    /// Condition number of the weighted, column-scaled design matrix; above
    /// [`CONDITION_LIMIT`] the settings barely separate σ11, σ12 and σ22.
    pub condition: f64,
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
    let Solution {
        theta,
        covariance,
        condition,
    } = least_squares(&rows, &rhs).ok_or(FitError::Singular)?;
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
            reduced_chi2.sqrt().max(1.0)
        } else {
            f64::NAN
        }),
        chi2,
        dof,
        reduced_chi2,
        settings: settings.len(),
        condition,
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
            let warnings = plane_warnings(&optics, fit.as_ref(), error.as_deref(), &points);
            PlaneReport {
                fit,
                error,
                points,
                curve,
                warnings,
            }
        };
        let x = plane(Plane::X, x);
        let y = plane(Plane::Y, y);
        let warnings = [("x", &x), ("y", &y)]
            .into_iter()
            .flat_map(|(name, report)| report.warnings.iter().map(move |w| format!("{name}: {w}")))
            .collect();
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
    /// Every plane's warnings, each prefixed with its plane (`x: …`), then any about the scan
    /// as a whole.
    pub warnings: Vec<String>,
}

impl ScanReport {
    /// A short text table for a terminal (the same as `Display`): per plane εn ± error (µm),
    /// β ± error (m), α ± error, the smallest BMAG, χ²/dof and the number of settings, then
    /// √(εn,x·εn,y) and every warning, one per line. The errors are the χ²-scaled ones, which
    /// are never below the a-priori ones (the a-priori ones with no degrees of freedom).
    ///
    /// ```text
    /// plane  εn [µm]          β [m]             α                 BMAG    χ²/dof  settings
    /// x      0.500 ± 0.013    10.000 ± 0.345    -1.000 ± 0.045    1.186   0.00    9
    /// y      0.400 ± 0.013    4.000 ± 0.152     2.500 ± 0.130     1.112   0.00    9
    /// εn,4d  0.447 µm
    /// ```
    pub fn summary(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ScanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<6} {:<16} {:<17} {:<17} {:<7} {:<7} settings",
            "plane", "εn [µm]", "β [m]", "α", "BMAG", "χ²/dof"
        )?;
        for (name, plane) in [("x", &self.x), ("y", &self.y)] {
            let Some(fit) = &plane.fit else {
                writeln!(
                    f,
                    "{name:<6} no fit: {}",
                    plane.error.as_deref().unwrap_or("unknown")
                )?;
                continue;
            };
            if !fit.physical {
                writeln!(
                    f,
                    "{name:<6} unphysical beam matrix ({} settings)",
                    fit.settings
                )?;
                continue;
            }
            // No degrees of freedom: only the a-priori errors exist.
            let errors = if fit.dof > 0 {
                fit.errors_chi2_scaled
            } else {
                fit.errors_apriori
            };
            let pair = |value: f64, error: f64| format!("{value:.3} ± {error:.3}");
            let bmag = fit
                .bmag
                .as_ref()
                .map_or_else(|| "-".to_owned(), |b| format!("{:.3}", b.min));
            let reduced = if fit.dof > 0 {
                format!("{:.2}", fit.reduced_chi2)
            } else {
                "-".to_owned()
            };
            writeln!(
                f,
                "{name:<6} {:<16} {:<17} {:<17} {bmag:<7} {reduced:<7} {}",
                pair(fit.norm_emit * 1e6, errors.norm_emit * 1e6),
                pair(fit.beta, errors.beta),
                pair(fit.alpha, errors.alpha),
                fit.settings
            )?;
        }
        if self.norm_emit_4d.is_finite() {
            writeln!(f, "{:<6} {:.3} µm", "εn,4d", self.norm_emit_4d * 1e6)?;
        }
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
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
    /// Why not to trust this plane's fit, or why there is none: no waist in the scanned range,
    /// an ill-conditioned or unphysical fit, no degrees of freedom.
    pub warnings: Vec<String>,
}

/// Why not to trust one plane's fit, in words for an operator; empty when nothing is known to
/// be wrong.
///
/// - `error`, when there is no fit at all;
/// - no waist in the scanned range: the smallest measured size is at an end of the range *and*
///   the fitted size is smallest at that end too. Without a minimum in between, the curvature
///   that εn comes from rests on extrapolation. The fit's view is asked as well because noise
///   can put the smallest measured size at the end when the waist is near it: the reference
///   scan's 3 % case has its y waist at 0.95 kG, half a step from the 0.5 kG end, and its
///   smallest measured y size at 0.5 kG;
/// - a condition number above [`CONDITION_LIMIT`];
/// - an unphysical beam matrix;
/// - no degrees of freedom: three settings fix three unknowns, χ² is zero whatever the data,
///   and the χ²-scaled errors do not exist.
fn plane_warnings(
    optics: &ScanOptics,
    fit: Option<&PlaneFit>,
    error: Option<&str>,
    points: &[ScanPoint],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(error) = error {
        warnings.push(error.to_owned());
    }
    let Some(fit) = fit else {
        return warnings;
    };
    if let Some(end) = minimum_at_an_end(points)
        && fitted_minimum_at(optics, fit.beam(), points) == Some(end)
    {
        warnings.push(format!(
            "no waist in the scanned range: the smallest size is at the {end} end of the scan, so the fit extrapolates and εn, β, α may be far off; scan past the minimum"
        ));
    }
    if fit.condition > CONDITION_LIMIT {
        warnings.push(format!(
            "ill-conditioned: the design matrix's condition number is {:.2e} (limit {CONDITION_LIMIT:.0e}), the settings barely separate σ11, σ12 and σ22; scan a wider range",
            fit.condition
        ));
    }
    if !fit.physical {
        warnings.push(
            "unphysical fit (σ11σ22 ≤ σ12² or a negative σ11/σ22); the sizes do not fit a beam"
                .to_owned(),
        );
    }
    if fit.dof == 0 {
        warnings.push(format!(
            "{} points for 3 unknowns (dof = 0): the fit passes through every point, so χ² says nothing and there are no χ²-scaled errors; add settings",
            points.len()
        ));
    }
    warnings
}

/// An end of the scan: the lowest or the highest setting.
type End = &'static str;

/// Which end of the scan holds the smallest measured size, if one does. Sizes at one setting
/// are averaged first.
fn minimum_at_an_end(points: &[ScanPoint]) -> Option<End> {
    let mut sorted: Vec<&ScanPoint> = points.iter().collect();
    sorted.sort_by(|a, b| a.bctrl_kg.total_cmp(&b.bctrl_kg));
    let mut means: Vec<(f64, f64, usize)> = Vec::new();
    for p in sorted {
        match means.last_mut() {
            Some((setting, sum, n)) if (p.bctrl_kg - *setting).abs() < 1e-9 => {
                *sum += p.size_m;
                *n += 1;
            }
            _ => means.push((p.bctrl_kg, p.size_m, 1)),
        }
    }
    let sizes: Vec<f64> = means.iter().map(|(_, sum, n)| sum / *n as f64).collect();
    end_of_minimum(&sizes)
}

/// Which end of the scan the fitted size is smallest at, on 201 settings spanning the points'.
fn fitted_minimum_at(optics: &ScanOptics, beam: BeamMatrix, points: &[ScanPoint]) -> Option<End> {
    let (low, high) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| {
            (l.min(p.bctrl_kg), h.max(p.bctrl_kg))
        });
    let squares: Vec<f64> = (0..=200)
        .map(|i| {
            let setting = low + (high - low) * f64::from(i) / 200.0;
            beam.transport(optics.transfer(setting)).s11
        })
        .collect();
    end_of_minimum(&squares)
}

/// "low" or "high" when the smallest of at least 3 values is the first or the last.
fn end_of_minimum(values: &[f64]) -> Option<End> {
    if values.len() < 3 {
        return None;
    }
    let index = values
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)?;
    if index == 0 {
        Some("low")
    } else if index == values.len() - 1 {
        Some("high")
    } else {
        None
    }
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

/// A least-squares solution.
struct Solution {
    /// The parameters x.
    theta: [f64; 3],
    /// (AᵀA)⁻¹.
    covariance: [[f64; 3]; 3],
    /// The 2-norm condition number of the column-scaled A.
    condition: f64,
}

/// Solves min ‖A x − b‖ for an n×3 `A` by Householder QR on column-scaled A. `None` when A is
/// rank deficient.
// Indices, as in the algebra: iterators over rows and columns of a[i][j] would hide it.
#[allow(clippy::needless_range_loop)]
fn least_squares(rows: &[[f64; 3]], rhs: &[f64]) -> Option<Solution> {
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
    // The scaled A and R share their singular values: those of R are the square roots of the
    // eigenvalues of RᵀR.
    let mut gram = [[0.0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            gram[i][j] = (0..3).map(|k| r[k][i] * r[k][j]).sum();
        }
    }
    let eigen = symmetric_eigenvalues(gram);
    let largest = eigen.iter().copied().fold(0.0, f64::max);
    let smallest = eigen.iter().copied().fold(f64::INFINITY, f64::min);
    let condition = if smallest > 0.0 {
        (largest / smallest).sqrt()
    } else {
        f64::INFINITY
    };
    Some(Solution {
        theta: [y[0] * scale[0], y[1] * scale[1], y[2] * scale[2]],
        covariance,
        condition,
    })
}

/// The eigenvalues of a symmetric 3×3 matrix by cyclic Jacobi rotations (a few sweeps reach
/// rounding; no library for one 3×3 matrix per fit).
#[allow(clippy::needless_range_loop)]
fn symmetric_eigenvalues(mut a: [[f64; 3]; 3]) -> [f64; 3] {
    for _ in 0..50 {
        let off: f64 = a[0][1] * a[0][1] + a[0][2] * a[0][2] + a[1][2] * a[1][2];
        let diagonal: f64 = (0..3).map(|i| a[i][i] * a[i][i]).sum();
        if off <= diagonal * 1e-32 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            // signum(0) is 1: a 45° rotation, as it should be.
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            for k in 0..3 {
                let (akp, akq) = (a[k][p], a[k][q]);
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let (apk, aqk) = (a[p][k], a[q][k]);
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
        }
    }
    [a[0][0], a[1][1], a[2][2]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/quadscan_reference.json"
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

    /// The reference scan's optics and truth as `ScanSetup` and noise-free sizes at `settings`.
    fn setup_and_sizes(settings: &[f64]) -> (ScanSetup, Vec<ScanPoint>, Vec<ScanPoint>) {
        let reference = reference();
        let setup = ScanSetup {
            energy_ev: 135e6,
            quad_length_m: 0.108,
            rmat_x: [[1.0, 2.26], [0.0, 1.0]],
            rmat_y: [[1.0, 2.26], [0.0, 1.0]],
            design_twiss: Some(DesignTwissXy {
                beta_x: 1.113,
                alpha_x: -0.069,
                beta_y: 1.113,
                alpha_y: -0.070,
            }),
        };
        let truth = |key: &str| {
            let t = &reference["truth"][key];
            BeamMatrix::from_twiss(Twiss {
                emittance: t["emit_geometric"].as_f64().expect("ε"),
                beta: t["beta"].as_f64().expect("β"),
                alpha: t["alpha"].as_f64().expect("α"),
            })
        };
        let sizes = |plane: Plane, key: &str| {
            let optics = setup.optics(plane);
            let beam = truth(key);
            let sizes: Vec<f64> = settings
                .iter()
                .map(|&s| optics.screen_size(beam, s))
                .collect();
            points(settings, &sizes, 0.03)
        };
        let x = sizes(Plane::X, "x");
        let y = sizes(Plane::Y, "y");
        (setup, x, y)
    }

    /// ±3 % in a fixed pattern: noise that does not depend on a generator.
    fn wobble(points: &mut [ScanPoint], amplitude: f64) {
        for (i, p) in points.iter_mut().enumerate() {
            let sign = [1.0, -1.0, -1.0, 1.0, 0.5, -0.5][i % 6];
            p.size_m *= 1.0 + amplitude * sign;
        }
    }

    #[test]
    fn the_reference_scan_has_no_warnings_and_its_condition_numbers() {
        let settings: Vec<f64> = (1..=9).map(|i| 0.5 * f64::from(i)).collect();
        let (setup, x, y) = setup_and_sizes(&settings);
        let report = setup.report(x, y);
        assert_eq!(report.warnings, Vec::<String>::new());
        // numpy.linalg.cond of the column-normalised weighted matrix: 4.2 (x) and 66.8 (y).
        let fit = |plane: &PlaneReport| plane.fit.clone().expect("a fit");
        assert!(
            (fit(&report.x).condition - 4.2).abs() < 0.05,
            "{}",
            fit(&report.x).condition
        );
        assert!(
            (fit(&report.y).condition - 66.8).abs() < 0.05,
            "{}",
            fit(&report.y).condition
        );
    }

    /// Issue 14: a scan from −6 to −2 kG never reaches the waist in either plane; its fit is a
    /// clean number and must say it is not to be trusted.
    #[test]
    fn gh_14_a_scan_that_never_reaches_the_waist_says_so() {
        let settings: Vec<f64> = (0..9).map(|i| -6.0 + 0.5 * f64::from(i)).collect();
        let (setup, mut x, mut y) = setup_and_sizes(&settings);
        // Noise-free, the fit is still exact: the warning is about trust, not the arithmetic.
        let exact = setup.report(x.clone(), y.clone());
        let norm_emit = exact.x.fit.as_ref().expect("a fit").norm_emit;
        assert!(relative(norm_emit, 0.5e-6) < 1e-6, "{norm_emit}");
        wobble(&mut x, -0.01);
        wobble(&mut y, -0.01);
        let report = setup.report(x, y);
        let fit = report.x.fit.as_ref().expect("a fit");
        assert!(fit.physical);
        assert!(
            fit.norm_emit > 2e-6,
            "1 % noise moves εn,x from 0.5 to 2.5 µm: {}",
            fit.norm_emit
        );
        for plane in ["x", "y"] {
            assert!(
                report.warnings.iter().any(|w| w
                    .starts_with(&format!("{plane}: no waist in the scanned range"))
                    && w.contains("the high end")),
                "{:?}",
                report.warnings
            );
        }
        assert!(report.summary().contains("warning: x: no waist"));
    }

    #[test]
    fn noise_that_puts_the_smallest_size_at_the_end_is_no_missing_waist() {
        let reference = reference();
        let inputs = &reference["cases"][1]["inputs"];
        let settings = numbers(&inputs["bctrl_kG"]);
        let plane = |key: &str| -> Vec<ScanPoint> {
            let sizes = numbers(&inputs[format!("sizes_{key}_m")]);
            let errors = numbers(&inputs[format!("sizes_err_{key}_m")]);
            settings
                .iter()
                .zip(sizes.iter().zip(&errors))
                .map(|(&bctrl_kg, (&size_m, &error_m))| ScanPoint {
                    bctrl_kg,
                    size_m,
                    error_m,
                })
                .collect()
        };
        let y = plane("y");
        assert_eq!(minimum_at_an_end(&y), Some("low"), "the 3 % case's y sizes");
        let (setup, _, _) = setup_and_sizes(&settings);
        let report = setup.report(plane("x"), y);
        assert_eq!(report.warnings, Vec::<String>::new());
    }

    #[test]
    fn a_reduced_chi2_below_one_never_shrinks_the_error_bars() {
        let settings: Vec<f64> = (1..=9).map(|i| 0.5 * f64::from(i)).collect();
        let (setup, mut x, y) = setup_and_sizes(&settings);
        // 0.5 % deviations against 3 % errors: χ²/dof far below 1.
        wobble(&mut x, 0.005);
        let report = setup.report(x, y);
        let fit = report.x.fit.expect("a fit");
        assert!(fit.reduced_chi2 < 0.2, "{}", fit.reduced_chi2);
        assert_eq!(fit.errors_chi2_scaled, fit.errors_apriori);
        // And above 1 they grow by √(χ²/dof), as before.
        let (_, mut noisy, _) = setup_and_sizes(&settings);
        wobble(&mut noisy, 0.06);
        let fit = fit_plane(&setup.optics(Plane::X), &noisy, None).expect("a fit");
        assert!(fit.reduced_chi2 > 1.0, "{}", fit.reduced_chi2);
        let ratio = fit.errors_chi2_scaled.norm_emit / fit.errors_apriori.norm_emit;
        assert!((ratio - fit.reduced_chi2.sqrt()).abs() < 1e-12, "{ratio}");
    }

    #[test]
    fn no_degrees_of_freedom_and_an_ill_conditioned_scan_are_warned() {
        let (setup, x, y) = setup_and_sizes(&[0.5, 2.5, 4.5]);
        let report = setup.report(x, y);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with("x: 3 points for 3 unknowns (dof = 0)")),
            "{:?}",
            report.warnings
        );
        assert!(
            report
                .x
                .fit
                .expect("a fit")
                .errors_chi2_scaled
                .norm_emit
                .is_nan()
        );
        // 2 … 3 kG: y's three columns are nearly parallel.
        let settings: Vec<f64> = (0..9).map(|i| 2.0 + 0.125 * f64::from(i)).collect();
        let (setup, x, y) = setup_and_sizes(&settings);
        let report = setup.report(x, y);
        let condition = report.y.fit.as_ref().expect("a fit").condition;
        assert!(condition > CONDITION_LIMIT, "{condition}");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with("y: ill-conditioned")),
            "{:?}",
            report.warnings
        );
        assert!(!report.warnings.iter().any(|w| w.starts_with("x: ill")));
    }

    #[test]
    fn the_summary_is_a_short_table() {
        let settings: Vec<f64> = (1..=9).map(|i| 0.5 * f64::from(i)).collect();
        let (setup, x, y) = setup_and_sizes(&settings);
        let summary = setup.report(x, y).summary();
        assert_eq!(
            summary,
            "\
plane  εn [µm]          β [m]             α                 BMAG    χ²/dof  settings
x      0.500 ± 0.013    10.000 ± 0.345    -1.000 ± 0.045    1.186   0.00    9
y      0.400 ± 0.013    4.000 ± 0.152     2.500 ± 0.130     1.112   0.00    9
εn,4d  0.447 µm
"
        );
        let (setup, x, y) = setup_and_sizes(&[1.0, 2.0]);
        let summary = setup.report(x, y).summary();
        assert!(
            summary.contains("x      no fit: 2 distinct quad settings; a fit needs at least 3\n"),
            "{summary}"
        );
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
