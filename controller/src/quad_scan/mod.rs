//! The quad-scan driver of `beamflow scan quad` and `POST /api/v1/scan/quad`: for each value it
//! puts the quad's setpoint over Channel Access, waits for the readback to arrive and settle,
//! then lets the pipeline's `quad_scan` accumulator collect the requested number of accepted
//! shots at that setting, reading its progress from the reducer's HTTP view.
//!
//! The scan writes only what the pipeline allows, within the machine's limits
//! ([`limits`]): the PV must be listed under `[controller.scan.writable]` (else it is refused
//! before any Channel Access connection), and every value it would put (each setting, and the
//! setting it restores) must lie within the PV's control limits (DRVL/DRVH), narrowed by the
//! ones configured there; otherwise the whole scan is refused before the first put. Each put
//! is checked again right before it is sent.
//!
//! The scan leaves the machine as it found it:
//!
//! - Before the first put it checks everything it will need: the controller and the reducer
//!   answer, the reducer has a `quad_scan` accumulator of the requested name with no measurement
//!   open, and the setpoint and readback PVs connect. The readback must be another PV than the
//!   setpoint (waiting for the setpoint itself would check nothing): it is derived only from a
//!   name ending in `BCTRL` (→ `BACT`) and must be given otherwise.
//! - It measures inside a `quad_scan` *measurement* (see the reducer's `quad_scan`
//!   accumulator), opened once the quad has settled at the first
//!   value and closed before the quad moves back, through the controller's parameter
//!   `quad_scan_measurement`. The pipeline's scan runs on: live histories keep their events.
//! - Asked to stop ([`ScanStop`]: a signal for the CLI, `DELETE /api/v1/scan/quad` for the
//!   API), it stops stepping, closes the measurement (its partial fit is the report) and, like
//!   at the end, puts the setpoint back to where it was and waits for the readback. When the
//!   process must exit at once, [`ScanStop::rescue`] tries that put once without waiting.
//!
//! A step that does not reach its shots within `step_timeout_s` is reported as incomplete and
//! the scan goes on.
//!
//! # Layout
//!
//! - [`request`]: the request, its defaults and its checks.
//! - [`limits`]: which PVs a scan may write, and in what range.
//! - [`driver`]: the scan itself, and how it stops.
//! - [`http`]: `/api/v1/scan/quad`, one scan at a time.

pub mod driver;
pub mod http;
pub mod limits;
pub mod request;

pub use driver::{
    Endpoints, Progress, Restored, ScanOutcome, ScanStop, SharedProgress, StepOutcome, fit_summary,
    run,
};
pub use http::ScanService;
pub use limits::{AllowedRange, ScanDriverConfig, WritableLimits};
pub use request::{QuadScanRequest, parse_values, readback_pv};

/// Why a quad scan could not run or finish. The messages are for an operator: each says what
/// was being done and, before the first put, that nothing was put.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The request cannot be run as given.
    #[error("{0}")]
    Request(String),
    /// The controller or the reducer answered, but not as the scan needs.
    #[error("{0}")]
    Answer(String),
    /// No HTTP answer from the controller or the reducer.
    #[error("cannot reach {url}: {error}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why there was no answer.
        error: Box<ureq::Error>,
    },
    /// The quad over Channel Access.
    #[error("{0}")]
    Quad(String),
    /// A PV the pipeline does not let scans write, or a value outside the range it may be put
    /// in: refused before any put.
    #[error("{0}")]
    NotAllowed(String),
    /// What the scan was doing when `error` happened.
    #[error("{context}: {error}")]
    During {
        /// What it was doing.
        context: String,
        /// What went wrong.
        error: Box<ScanError>,
    },
}

impl ScanError {
    /// Whether the scan was refused by what the pipeline allows ([`ScanError::NotAllowed`],
    /// whatever context it was given).
    pub fn is_refusal(&self) -> bool {
        match self {
            ScanError::NotAllowed(_) => true,
            ScanError::During { error, .. } => error.is_refusal(),
            _ => false,
        }
    }
}

/// Adds what the scan was doing to an error, as one line: `context: error`.
trait Context<T> {
    fn context(self, context: &str) -> Result<T, ScanError>;
}

impl<T> Context<T> for Result<T, ScanError> {
    fn context(self, context: &str) -> Result<T, ScanError> {
        self.map_err(|error| ScanError::During {
            context: context.to_owned(),
            error: Box::new(error),
        })
    }
}

/// Returns the [`ScanError`] variant with a formatted message unless the condition holds.
macro_rules! ensure {
    ($variant:ident, $condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err($crate::quad_scan::ScanError::$variant(format!($($message)+)));
        }
    };
}

/// Returns the [`ScanError`] variant with a formatted message.
macro_rules! bail {
    ($variant:ident, $($message:tt)+) => {
        return Err($crate::quad_scan::ScanError::$variant(format!($($message)+)))
    };
}

use {bail, ensure};
