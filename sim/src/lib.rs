//! Simulated beams for demos and tests: what the simulated injector and the ingesters' `sim`
//! source share, so there is one generator and one image model.
//!
//! # Layout
//!
//! - [`random`]: the seeded random-number generator.
//! - [`camera`]: a Gaussian spot on a camera: pedestal, read noise, 12-bit clipping.
//! - `ioc` (feature `ioc`): the simulated LCLS injector served over Channel Access.

pub mod camera;
#[cfg(feature = "ioc")]
pub mod ioc;
pub mod random;
