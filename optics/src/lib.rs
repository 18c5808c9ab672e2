//! Linear transverse optics, per plane, in the SLAC conventions of `physics.md` §3: quad
//! strengths as integrated gradients in kG (BCTRL/BACT), x seeing +k and y seeing −k, thick
//! quads, 2×2 transfer matrices and beam (Σ) matrices.
//!
//! Shared by the simulated injector (which turns a quad setting into the beam size on its
//! screen) and the quad-scan fit (which turns sizes back into a beam matrix), so both use one
//! definition of every convention. [`scan_file`] is the file `beamflow emittance` fits offline.

pub mod quad_scan;
pub mod scan_file;

/// Speed of light, m/s.
pub const SPEED_OF_LIGHT: f64 = 299_792_458.0;

/// Electron rest energy, eV (CODATA 2018, as the reference dataset's generator).
pub const ELECTRON_REST_ENERGY_EV: f64 = 510_998.950_00;

/// A transverse plane. A quad with positive BCTRL focuses x and defocuses y.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plane {
    /// Horizontal: sees +k.
    X,
    /// Vertical: sees −k.
    Y,
}

impl Plane {
    /// +1 for x, −1 for y: the sign of the quad strength this plane sees.
    pub fn sign(self) -> f64 {
        match self {
            Plane::X => 1.0,
            Plane::Y => -1.0,
        }
    }
}

/// An electron beam's energy and what follows from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Energy {
    /// Total energy, eV.
    pub total_ev: f64,
}

impl Energy {
    /// Lorentz γ.
    pub fn gamma(self) -> f64 {
        self.total_ev / ELECTRON_REST_ENERGY_EV
    }

    /// βγ: converts geometric to normalised emittance.
    pub fn beta_gamma(self) -> f64 {
        let gamma = self.gamma();
        (gamma * gamma - 1.0).sqrt()
    }

    /// Magnetic rigidity Bρ = p/e, in kG·m (so BCTRL in kG divided by it is kL in 1/m).
    pub fn rigidity_kg_m(self) -> f64 {
        // p c = βγ m c², and Bρ [T·m] = p c [eV] / c; 1 T·m = 10 kG·m.
        10.0 * self.beta_gamma() * ELECTRON_REST_ENERGY_EV / SPEED_OF_LIGHT
    }

    /// The focusing strength k (1/m²) of a quad of `length_m` set to `bctrl_kg`, as `plane`
    /// sees it.
    pub fn quad_k(self, bctrl_kg: f64, length_m: f64, plane: Plane) -> f64 {
        plane.sign() * bctrl_kg / self.rigidity_kg_m() / length_m
    }
}

/// A 2×2 transfer matrix `[[m11, m12], [m21, m22]]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matrix(pub [[f64; 2]; 2]);

impl Matrix {
    /// The identity.
    pub const IDENTITY: Matrix = Matrix([[1.0, 0.0], [0.0, 1.0]]);

    /// A drift of `length_m`.
    pub fn drift(length_m: f64) -> Self {
        Matrix([[1.0, length_m], [0.0, 1.0]])
    }

    /// A thick quad of strength `k` (1/m², positive focusing) and `length_m`; a drift for k = 0.
    pub fn thick_quad(k: f64, length_m: f64) -> Self {
        if k == 0.0 {
            return Self::drift(length_m);
        }
        let root = k.abs().sqrt();
        let phi = root * length_m;
        if k > 0.0 {
            let (sin, cos) = phi.sin_cos();
            Matrix([[cos, sin / root], [-root * sin, cos]])
        } else {
            let (sinh, cosh) = (phi.sinh(), phi.cosh());
            Matrix([[cosh, sinh / root], [root * sinh, cosh]])
        }
    }

    /// `self · other`: `other` first, then `self`.
    pub fn then_after(self, other: Matrix) -> Matrix {
        let a = self.0;
        let b = other.0;
        Matrix([
            [
                a[0][0] * b[0][0] + a[0][1] * b[1][0],
                a[0][0] * b[0][1] + a[0][1] * b[1][1],
            ],
            [
                a[1][0] * b[0][0] + a[1][1] * b[1][0],
                a[1][0] * b[0][1] + a[1][1] * b[1][1],
            ],
        ])
    }
}

/// A beam matrix Σ = `[[s11, s12], [s12, s22]]` in m², m·rad, rad².
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamMatrix {
    /// ⟨x²⟩, m².
    pub s11: f64,
    /// ⟨x x'⟩, m·rad.
    pub s12: f64,
    /// ⟨x'²⟩, rad².
    pub s22: f64,
}

/// Twiss parameters and emittance of one plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Twiss {
    /// Geometric emittance, m·rad.
    pub emittance: f64,
    /// β, m.
    pub beta: f64,
    /// α.
    pub alpha: f64,
}

impl BeamMatrix {
    /// Σ = ε·[[β, −α], [−α, γ]].
    pub fn from_twiss(twiss: Twiss) -> Self {
        let gamma = (1.0 + twiss.alpha * twiss.alpha) / twiss.beta;
        Self {
            s11: twiss.emittance * twiss.beta,
            s12: -twiss.emittance * twiss.alpha,
            s22: twiss.emittance * gamma,
        }
    }

    /// ε, β, α; `None` when the matrix is not a beam (s11 ≤ 0, s22 ≤ 0 or det ≤ 0).
    pub fn twiss(self) -> Option<Twiss> {
        let det = self.s11 * self.s22 - self.s12 * self.s12;
        if !(self.s11 > 0.0 && self.s22 > 0.0 && det > 0.0) {
            return None;
        }
        let emittance = det.sqrt();
        Some(Twiss {
            emittance,
            beta: self.s11 / emittance,
            alpha: -self.s12 / emittance,
        })
    }

    /// M Σ Mᵀ: the beam after `m`.
    pub fn transport(self, m: Matrix) -> Self {
        let [[a, b], [c, d]] = m.0;
        Self {
            s11: a * a * self.s11 + 2.0 * a * b * self.s12 + b * b * self.s22,
            s12: a * c * self.s11 + (a * d + b * c) * self.s12 + b * d * self.s22,
            s22: c * c * self.s11 + 2.0 * c * d * self.s12 + d * d * self.s22,
        }
    }

    /// The rms size √s11, m.
    pub fn rms_size(self) -> f64 {
        self.s11.max(0.0).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/quadscan_reference.json"
        );
        let text = std::fs::read_to_string(path).expect("the shared reference dataset");
        serde_json::from_str(&text).expect("valid JSON")
    }

    fn number(value: &serde_json::Value) -> f64 {
        value.as_f64().expect("a number")
    }

    fn relative(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn energy_matches_the_reference_machine() {
        let reference = reference();
        let machine = &reference["machine"];
        let energy = Energy {
            total_ev: number(&machine["energy_total_eV"]),
        };
        assert!(relative(energy.gamma(), number(&machine["gamma_rel"])) < 1e-12);
        assert!(relative(energy.beta_gamma(), number(&machine["beta_gamma"])) < 1e-12);
        assert!(relative(energy.rigidity_kg_m(), number(&machine["brho_kG_m"])) < 1e-12);
        let length = number(&machine["quad_length_m"]);
        for (bctrl, k) in reference["scan"]["bctrl_kG"]
            .as_array()
            .expect("settings")
            .iter()
            .zip(reference["scan"]["k_per_m2"].as_array().expect("k"))
        {
            let ours = energy.quad_k(number(bctrl), length, Plane::X);
            assert!(relative(ours, number(k)) < 1e-12, "{ours} vs {k}");
            assert_eq!(energy.quad_k(number(bctrl), length, Plane::Y), -ours);
        }
    }

    #[test]
    fn the_reference_beam_gives_the_reference_screen_sizes() {
        let reference = reference();
        let machine = &reference["machine"];
        let energy = Energy {
            total_ev: number(&machine["energy_total_eV"]),
        };
        let length = number(&machine["quad_length_m"]);
        for (plane, key) in [(Plane::X, "x"), (Plane::Y, "y")] {
            let truth = &reference["truth"][key];
            let beam = BeamMatrix::from_twiss(Twiss {
                emittance: number(&truth["emit_geometric"]),
                beta: number(&truth["beta"]),
                alpha: number(&truth["alpha"]),
            });
            assert!(relative(beam.s12, number(&truth["sigma12_m_rad"])) < 1e-12);
            let rmat = &machine[format!("rmat_quad_exit_to_screen_{key}")];
            let drift = Matrix([
                [number(&rmat[0][0]), number(&rmat[0][1])],
                [number(&rmat[1][0]), number(&rmat[1][1])],
            ]);
            let sizes = reference["exact_sizes_m"][key].as_array().expect("sizes");
            for (bctrl, size) in reference["scan"]["bctrl_kG"]
                .as_array()
                .expect("settings")
                .iter()
                .zip(sizes)
            {
                let k = energy.quad_k(number(bctrl), length, plane);
                let m = drift.then_after(Matrix::thick_quad(k, length));
                let ours = beam.transport(m).rms_size();
                assert!(
                    relative(ours, number(size)) < 1e-12,
                    "{key} {bctrl}: {ours} vs {size}"
                );
            }
            let twiss = beam.twiss().expect("a beam");
            assert!(relative(twiss.beta, number(&truth["beta"])) < 1e-12);
            assert!(relative(twiss.alpha, number(&truth["alpha"])) < 1e-12);
        }
    }

    #[test]
    fn a_matrix_with_no_area_is_not_a_beam() {
        let flat = BeamMatrix {
            s11: 1.0,
            s12: 1.0,
            s22: 1.0,
        };
        assert_eq!(flat.twiss(), None);
        assert_eq!(
            Matrix::thick_quad(0.0, 0.5),
            Matrix::drift(0.5),
            "k = 0 is a drift"
        );
    }
}
