//! Why `beam_image` rejects a shot: one [`Rejection`] per failed gate. Results carry each as
//! its text, as they always have (an operator reads them, `quad_scan` counts them);
//! [`Rejection::kind`] is the start of that text without its numbers, the key `quad_scan`
//! counts a step's rejections under.

use std::fmt;

use serde::{Serialize, Serializer};

/// A plane of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Horizontal.
    X,
    /// Vertical.
    Y,
}

impl fmt::Display for Plane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plane::X => "x",
            Plane::Y => "y",
        })
    }
}

/// A failed gate.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Pixels at the camera's maximum.
    Saturated {
        /// How many.
        pixels: u64,
        /// The maximum.
        max_count: f64,
    },
    /// The projection's Gaussian amplitude is below `min_snr` noise units.
    Faint {
        /// The plane.
        plane: Plane,
        /// Its signal to noise.
        snr: f64,
        /// The gate.
        min_snr: f64,
    },
    /// No Gaussian fits the projection, though its peak stands out of the noise.
    NoFit {
        /// The plane.
        plane: Plane,
    },
    /// σ outside the accepted range.
    Size {
        /// The plane.
        plane: Plane,
        /// The fitted σ, px.
        sigma_px: f64,
        /// The smallest accepted, px.
        min_px: f64,
        /// The largest accepted, px.
        max_px: f64,
    },
    /// Centroid ± `edge_sigmas` σ leaves the ROI.
    OffScreen {
        /// The plane.
        plane: Plane,
        /// The centroid from the ROI's edge, px.
        centre_px: f64,
        /// The gate, in σ.
        edge_sigmas: f64,
        /// The ROI's extent in that plane, px.
        extent: usize,
    },
}

impl Rejection {
    /// The gate that failed, with its plane and without numbers: what a quad scan counts.
    pub fn kind(&self) -> String {
        match self {
            Rejection::Saturated { .. } => "saturated".to_owned(),
            Rejection::Faint { plane, .. } => format!("{plane}: signal to noise"),
            Rejection::NoFit { plane } => format!("{plane}: no Gaussian fits the projection"),
            Rejection::Size { plane, .. } => format!("{plane}: size"),
            Rejection::OffScreen { plane, .. } => format!("{plane}: beam not fully on screen"),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Saturated { pixels, max_count } => write!(
                f,
                "saturated: {pixels} pixels at the camera maximum ({max_count})"
            ),
            Rejection::Faint {
                plane,
                snr,
                min_snr,
            } => write!(f, "{plane}: signal to noise {snr:.1} below {min_snr}"),
            Rejection::NoFit { .. } => f.write_str(&self.kind()),
            Rejection::Size {
                plane,
                sigma_px,
                min_px,
                max_px,
            } => write!(
                f,
                "{plane}: size σ {sigma_px:.2} px outside [{min_px}, {max_px}] px"
            ),
            Rejection::OffScreen {
                plane,
                centre_px,
                edge_sigmas,
                extent,
            } => write!(
                f,
                "{plane}: beam not fully on screen (centre {centre_px:.1} px ± {edge_sigmas} σ \
                 leaves the {extent} px ROI)"
            ),
        }
    }
}

/// As its text: results keep the format they always had.
impl Serialize for Rejection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_its_text_up_to_the_first_number() {
        let plane = Plane::Y;
        let rejections = [
            Rejection::Saturated {
                pixels: 12,
                max_count: 4095.0,
            },
            Rejection::Faint {
                plane,
                snr: 3.24,
                min_snr: 5.0,
            },
            Rejection::NoFit { plane },
            Rejection::Size {
                plane,
                sigma_px: 0.5,
                min_px: 1.0,
                max_px: 120.0,
            },
            Rejection::OffScreen {
                plane,
                centre_px: 2.04,
                edge_sigmas: 2.0,
                extent: 480,
            },
        ];
        let texts: Vec<String> = rejections.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "saturated: 12 pixels at the camera maximum (4095)",
                "y: signal to noise 3.2 below 5",
                "y: no Gaussian fits the projection",
                "y: size σ 0.50 px outside [1, 120] px",
                "y: beam not fully on screen (centre 2.0 px ± 2 σ leaves the 480 px ROI)",
            ]
        );
        for (rejection, text) in rejections.iter().zip(&texts) {
            assert!(text.starts_with(&rejection.kind()), "{text}");
        }
    }
}
