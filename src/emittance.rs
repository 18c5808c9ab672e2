//! `beamflow emittance --scan FILE.json`: the quad-scan fit of the live `quad_scan` accumulator,
//! offline, on sizes measured elsewhere.

use beamflow_optics::quad_scan::{ScanPoint, ScanReport, ScanSetup};
use serde::Deserialize;

/// Relative size error assumed when a scan file gives none (pyemittance's assumption); the
/// χ²-scaled error bars are then the ones to read.
pub const ASSUMED_RELATIVE_ERROR: f64 = 0.015;

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
    pub fn report(&self) -> anyhow::Result<ScanReport> {
        let points = |name: &str, sizes: &[f64], errors: &Option<Vec<f64>>| {
            anyhow::ensure!(
                sizes.len() == self.bctrl_kg.len(),
                "sizes_{name}_m has {} values for {} settings",
                sizes.len(),
                self.bctrl_kg.len()
            );
            if let Some(errors) = errors {
                anyhow::ensure!(
                    errors.len() == sizes.len(),
                    "errors_{name}_m has {} values for {} sizes",
                    errors.len(),
                    sizes.len()
                );
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
