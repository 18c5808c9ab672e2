//! A quad scan as the CLI and `POST /api/v1/scan/quad` take it, and its checks.

use serde::{Deserialize, Serialize};

use super::{ScanError, bail, ensure};

/// A quad scan as the CLI and the controller's API take it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuadScanRequest {
    /// The quad's setpoint PV, e.g. `QUAD:IN20:525:BCTRL`.
    pub pv: String,
    /// Its readback; needed unless the setpoint's name ends in `BCTRL` (then `BACT`).
    #[serde(default)]
    pub readback: Option<String>,
    /// The settings, kG, in scan order.
    pub values: Vec<f64>,
    /// Seconds to wait once the readback arrived.
    #[serde(default = "settle")]
    pub settle_s: f64,
    /// Accepted shots per step.
    #[serde(default = "shots")]
    pub shots: u64,
    /// The readback has arrived within this, kG (also the accumulator's step width).
    #[serde(default = "tolerance")]
    pub tolerance_kg: f64,
    /// The `quad_scan` accumulator's name.
    #[serde(default = "result")]
    pub result: String,
    /// Seconds a step may take before it is reported incomplete (also the longest wait for the
    /// readback when restoring).
    #[serde(default = "step_timeout")]
    pub step_timeout_s: f64,
    /// Put the setpoint back to its value before the scan at the end, or when stopped.
    #[serde(default = "yes")]
    pub restore: bool,
    /// The measurement's id in the accumulator (default `qs-` and the start time in ms); no `/`
    /// or white space, so it reads as a path.
    #[serde(default)]
    pub measurement: Option<String>,
}

fn settle() -> f64 {
    1.0
}
fn shots() -> u64 {
    5
}
fn tolerance() -> f64 {
    0.01
}
fn result() -> String {
    "quad_scan".to_owned()
}
fn step_timeout() -> f64 {
    60.0
}
fn yes() -> bool {
    true
}

/// Parses `A:B:N` into N settings from A to B inclusive; the ends may be negative.
pub fn parse_values(text: &str) -> Result<Vec<f64>, ScanError> {
    let parts: Vec<&str> = text.split(':').collect();
    let [from, to, count] = parts.as_slice() else {
        bail!(
            Request,
            "--values takes FROM:TO:COUNT, e.g. 0.5:4.5:9 or -6:-2:5, got {text:?}"
        );
    };
    let from: f64 = from
        .trim()
        .parse()
        .map_err(|error| ScanError::Request(format!("FROM is not a number: {error}")))?;
    let to: f64 = to
        .trim()
        .parse()
        .map_err(|error| ScanError::Request(format!("TO is not a number: {error}")))?;
    let count: usize = count
        .trim()
        .parse()
        .map_err(|error| ScanError::Request(format!("COUNT is not a whole number: {error}")))?;
    ensure!(
        Request,
        from.is_finite() && to.is_finite() && count >= 1,
        "--values {text}: finite ends and a count of at least 1"
    );
    if count == 1 {
        return Ok(vec![from]);
    }
    Ok((0..count)
        .map(|i| from + (to - from) * i as f64 / (count - 1) as f64)
        .collect())
}

/// The readback PV: the one given, or the setpoint's name with its `BCTRL` ending as `BACT`.
/// Anything else is an error: a readback that is the setpoint would make every wait pass.
pub fn readback_pv(setpoint: &str, given: Option<&str>) -> Result<String, ScanError> {
    let readback = match given {
        Some(readback) => readback.trim().to_owned(),
        None => match setpoint.strip_suffix("BCTRL") {
            Some(base) => format!("{base}BACT"),
            None => bail!(
                Request,
                "{setpoint:?} does not end in BCTRL, so its readback cannot be derived: give it (--readback, \"readback\")"
            ),
        },
    };
    ensure!(Request, !readback.is_empty(), "the readback PV is empty");
    ensure!(
        Request,
        readback != setpoint.trim(),
        "the readback {readback:?} is the setpoint itself: waiting for it would check nothing"
    );
    Ok(readback)
}

/// Whether the driver can run `request` as given.
pub(crate) fn validate(request: &QuadScanRequest) -> Result<(), ScanError> {
    ensure!(Request, !request.values.is_empty(), "no values to scan");
    ensure!(
        Request,
        (0.0..=3600.0).contains(&request.settle_s),
        "settle_s must be 0 to 3600 s, got {}",
        request.settle_s
    );
    ensure!(
        Request,
        request.step_timeout_s > 0.0 && request.step_timeout_s <= 86_400.0,
        "step_timeout_s must be above 0 and at most a day, got {}",
        request.step_timeout_s
    );
    ensure!(
        Request,
        request.tolerance_kg.is_finite() && request.tolerance_kg > 0.0,
        "tolerance_kg must be a positive number, got {}",
        request.tolerance_kg
    );
    ensure!(Request, request.shots >= 1, "shots must be at least 1");
    ensure!(
        Request,
        request.values.iter().all(|v| v.is_finite()),
        "values must be finite numbers"
    );
    if let Some(id) = &request.measurement {
        ensure!(
            Request,
            !id.is_empty()
                && id.len() <= 100
                && !id.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control()),
            "the measurement id {id:?} must be 1 to 100 characters without '/' or white space"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_from_to_count_inclusive() {
        assert_eq!(
            parse_values("0.5:4.5:9").unwrap(),
            [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
        );
        assert_eq!(parse_values("-1:1:1").unwrap(), [-1.0]);
        assert!(parse_values("1:2").is_err());
        assert!(parse_values("1:x:3").is_err());
    }

    #[test]
    fn values_may_be_negative() {
        assert_eq!(
            parse_values("-6:-2:5").unwrap(),
            [-6.0, -5.0, -4.0, -3.0, -2.0]
        );
        assert_eq!(parse_values("-4:-2:3").unwrap(), [-4.0, -3.0, -2.0]);
        assert_eq!(parse_values("-1:1:3").unwrap(), [-1.0, 0.0, 1.0]);
        assert!(parse_values("-1:-inf:3").is_err());
        assert!(parse_values("--1:1:3").is_err());
    }

    #[test]
    fn the_readback_is_derived_from_bctrl_only_and_never_the_setpoint() {
        assert_eq!(
            readback_pv("QUAD:IN20:525:BCTRL", None).unwrap(),
            "QUAD:IN20:525:BACT"
        );
        assert_eq!(readback_pv("MAG:SET", Some("MAG:RBV")).unwrap(), "MAG:RBV");
        let no_bctrl = readback_pv("MAG:SET", None).unwrap_err().to_string();
        assert!(no_bctrl.contains("--readback"), "{no_bctrl}");
        assert!(readback_pv("MAG:SET", Some("MAG:SET")).is_err());
        assert!(readback_pv("MAG:SET", Some(" ")).is_err());
    }

    #[test]
    fn measurement_ids_read_as_paths() {
        let request = |id: &str| QuadScanRequest {
            measurement: Some(id.to_owned()),
            ..serde_json::from_value(serde_json::json!({"pv": "Q:BCTRL", "values": [1.0]})).unwrap()
        };
        assert!(validate(&request("qs-1")).is_ok());
        assert!(validate(&request("a/b")).is_err());
        assert!(validate(&request("a b")).is_err());
        assert!(validate(&request("")).is_err());
        let defaults = request("qs-1");
        assert!(defaults.restore, "restoring is the default");
    }
}
