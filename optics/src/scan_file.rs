//! The scan file of `beamflow emittance --scan FILE.json`: the quad-scan fit of the live
//! `quad_scan` accumulator, offline, on sizes measured elsewhere.

use serde::Deserialize;

use crate::quad_scan::{ScanPoint, ScanReport, ScanSetup};

/// Relative size error assumed when a scan file gives none (pyemittance's assumption); the
/// χ²-scaled error bars are then the ones to read.
pub const ASSUMED_RELATIVE_ERROR: f64 = 0.015;

/// A scan file whose lists do not line up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScanFileError {
    /// A plane's sizes are not one per quad setting.
    #[error("sizes_{plane}_m has {sizes} values for {settings} settings")]
    Sizes {
        /// `x` or `y`.
        plane: &'static str,
        /// How many sizes.
        sizes: usize,
        /// How many settings.
        settings: usize,
    },
    /// A plane's errors are not one per size.
    #[error("errors_{plane}_m has {errors} values for {sizes} sizes")]
    Errors {
        /// `x` or `y`.
        plane: &'static str,
        /// How many errors.
        errors: usize,
        /// How many sizes.
        sizes: usize,
    },
}

/// A scan file.
#[derive(Debug, Clone, Deserialize)]
pub struct ScanFile {
    /// Energy, quad and optics.
    #[serde(flatten)]
    pub setup: ScanSetup,
    /// Quad settings, kG.
    pub bctrl_kg: Vec<f64>,
    /// RMS sizes in x, m.
    pub sizes_x_m: Vec<f64>,
    /// RMS sizes in y, m.
    pub sizes_y_m: Vec<f64>,
    /// Their errors, m.
    #[serde(default)]
    pub errors_x_m: Option<Vec<f64>>,
    /// Their errors, m.
    #[serde(default)]
    pub errors_y_m: Option<Vec<f64>>,
}

impl ScanFile {
    /// Fits both planes; an error only for lists of unequal length.
    pub fn report(&self) -> Result<ScanReport, ScanFileError> {
        let points = |plane: &'static str, sizes: &[f64], errors: &Option<Vec<f64>>| {
            if sizes.len() != self.bctrl_kg.len() {
                return Err(ScanFileError::Sizes {
                    plane,
                    sizes: sizes.len(),
                    settings: self.bctrl_kg.len(),
                });
            }
            if let Some(errors) = errors
                && errors.len() != sizes.len()
            {
                return Err(ScanFileError::Errors {
                    plane,
                    errors: errors.len(),
                    sizes: sizes.len(),
                });
            }
            Ok(self
                .bctrl_kg
                .iter()
                .zip(sizes)
                .enumerate()
                .map(|(i, (&bctrl_kg, &size_m))| ScanPoint {
                    bctrl_kg,
                    size_m,
                    error_m: errors
                        .as_ref()
                        .map_or(ASSUMED_RELATIVE_ERROR * size_m, |e| e[i]),
                })
                .collect::<Vec<_>>())
        };
        let x = points("x", &self.sizes_x_m, &self.errors_x_m)?;
        let y = points("y", &self.sizes_y_m, &self.errors_y_m)?;
        let mut report = self.setup.report(x, y);
        for (name, errors) in [("x", &self.errors_x_m), ("y", &self.errors_y_m)] {
            if errors.is_none() {
                report.warnings.push(format!(
                    "{name}: no size errors given; assumed {} % of each size, so read the χ²-scaled error bars",
                    ASSUMED_RELATIVE_ERROR * 100.0
                ));
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sizes_y: &str, errors_x: &str) -> ScanFile {
        serde_json::from_str(&format!(
            r#"{{"energy_ev": 135e6, "quad_length_m": 0.108,
                "rmat_x": [[1, 2.26], [0, 1]], "rmat_y": [[1, 2.26], [0, 1]],
                "bctrl_kg": [1, 2], "sizes_x_m": [1e-4, 2e-4], "sizes_y_m": {sizes_y}
                {errors_x}}}"#
        ))
        .expect("a scan file")
    }

    #[test]
    fn lists_of_unequal_length_are_named() {
        let error = file("[1e-4]", "").report().unwrap_err();
        assert_eq!(error.to_string(), "sizes_y_m has 1 values for 2 settings");
        let error = file("[1e-4, 2e-4]", r#", "errors_x_m": [1e-6]"#)
            .report()
            .unwrap_err();
        assert_eq!(error.to_string(), "errors_x_m has 1 values for 2 sizes");
    }

    #[test]
    fn missing_errors_are_assumed_and_said() {
        let report = file("[1e-4, 2e-4]", r#", "errors_x_m": [1e-6, 2e-6]"#)
            .report()
            .expect("equal lengths");
        assert_eq!(report.x.points[1].error_m, 2e-6);
        assert_eq!(report.y.points[1].error_m, ASSUMED_RELATIVE_ERROR * 2e-4);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with("y: no size errors"))
        );
        assert!(
            !report
                .warnings
                .iter()
                .any(|w| w.starts_with("x: no size errors"))
        );
    }
}
