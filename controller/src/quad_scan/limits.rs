//! What a scan driver may write: the pipeline's allow-list (`[controller.scan.writable]`) and the
//! range each put must lie in, the PV's own control limits intersected with the configured ones.
//!
//! The allow-list is the first thing a request meets: a PV not listed is refused before the
//! driver opens any Channel Access circuit, so an open `POST /api/v1/scan/quad` cannot move
//! whatever it names. The limits come from the machine (an `ao` record's DRVL/DRVH, served as
//! the control limits of DBR_CTRL_DOUBLE) because the machine knows its power supplies; the
//! pipeline file may narrow them, never widen them. A PV for which neither gives a range is
//! refused rather than trusted with any finite number.

use std::collections::BTreeMap;

use beamflow_ca::dbr::Limits;
use serde::{Deserialize, Serialize};

use super::ScanError;

/// `[controller.scan]`: what `beamflow scan quad` and `/api/v1/scan/quad` may write.
///
/// ```toml
/// [controller.scan.writable."QUAD:IN20:525:BCTRL"]   # within its DRVL/DRVH
/// [controller.scan.writable."QUAD:IN20:511:BCTRL"]
/// low = -6.0                                         # and within -6 to -1 kG
/// high = -1.0
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScanDriverConfig {
    /// The setpoint PVs a scan may write, each with optional limits in the PV's units. None
    /// listed (the default): nothing is writable.
    #[serde(default)]
    pub writable: BTreeMap<String, WritableLimits>,
}

/// The configured limits of one writable PV; they narrow the PV's own control limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WritableLimits {
    /// The lowest value a scan may put (default: the PV's lower control limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    /// The highest value a scan may put (default: the PV's upper control limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
}

impl ScanDriverConfig {
    /// The configured limits of `pv`, or why a scan may not write it at all.
    pub fn limits_of(&self, pv: &str) -> Result<WritableLimits, ScanError> {
        if let Some(limits) = self.writable.get(pv) {
            return Ok(*limits);
        }
        let listed = if self.writable.is_empty() {
            "the pipeline lists no PV under [controller.scan.writable], so scans write nothing"
                .to_owned()
        } else {
            format!(
                "the pipeline's [controller.scan.writable] lists only {}",
                self.writable.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        Err(ScanError::NotAllowed(format!(
            "{pv:?} is not writable by scans: {listed}; to allow it, add \
             [controller.scan.writable.\"{pv}\"] (optionally with low and high) to the pipeline \
             file. Nothing was put"
        )))
    }

    /// What the types cannot say: each limit is a finite number and `low` is below `high`.
    /// Returns the PV, the key at fault (empty for the table) and what is wrong.
    pub fn check(&self) -> Vec<(String, &'static str, String)> {
        let mut mistakes = Vec::new();
        for (pv, limits) in &self.writable {
            for (key, limit) in [("low", limits.low), ("high", limits.high)] {
                if limit.is_some_and(|x| !x.is_finite()) {
                    mistakes.push((pv.clone(), key, "must be a finite number".to_owned()));
                }
            }
            if let (Some(low), Some(high)) = (limits.low, limits.high)
                && low >= high
            {
                mistakes.push((
                    pv.clone(),
                    "",
                    format!("low ({low}) must be below high ({high})"),
                ));
            }
        }
        mistakes
    }
}

/// The closed range a scan may put a PV in, both ends finite, and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowedRange {
    /// The PV.
    pub pv: String,
    /// The lowest value allowed.
    pub low: f64,
    /// The highest value allowed.
    pub high: f64,
    /// Where the ends come from, for messages.
    pub from: String,
}

impl AllowedRange {
    /// The intersection of the PV's control limits and the configured ones. The PV's limits
    /// count only when its upper one is above its lower one, as an `ao` record applies DRVL/DRVH
    /// only then (both 0, the default, means none). Refused when the ends are not both known, or
    /// when the two ranges do not overlap.
    pub fn new(pv: &str, configured: WritableLimits, control: Limits) -> Result<Self, ScanError> {
        let machine =
            (control.low.is_finite() && control.high.is_finite() && control.high > control.low)
                .then_some(control);
        let mut parts = Vec::new();
        if let Some(control) = machine {
            parts.push(format!(
                "the PV's control limits [{}, {}]",
                control.low, control.high
            ));
        }
        match (configured.low, configured.high) {
            (Some(low), Some(high)) => parts.push(format!("the pipeline's [{low}, {high}]")),
            (Some(low), None) => parts.push(format!("the pipeline's low {low}")),
            (None, Some(high)) => parts.push(format!("the pipeline's high {high}")),
            (None, None) => {}
        }
        let from = parts.join(" and ");
        let low = [configured.low, machine.map(|c| c.low)]
            .into_iter()
            .flatten()
            .fold(f64::NEG_INFINITY, f64::max);
        let high = [configured.high, machine.map(|c| c.high)]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min);
        if !low.is_finite() || !high.is_finite() {
            return Err(ScanError::NotAllowed(format!(
                "{pv:?} has no range to check values against: its control limits are unset \
                 (lower {}, upper {}){}; set DRVL and DRVH on the PV, or low and high under \
                 [controller.scan.writable.\"{pv}\"] in the pipeline file. Nothing was put",
                control.low,
                control.high,
                if from.is_empty() {
                    " and the pipeline gives none".to_owned()
                } else {
                    format!(" and the pipeline gives only {from}")
                }
            )));
        }
        if low > high {
            return Err(ScanError::NotAllowed(format!(
                "{pv:?}: {from} do not overlap; nothing is writable. Nothing was put"
            )));
        }
        Ok(Self {
            pv: pv.to_owned(),
            low,
            high,
            from,
        })
    }

    /// Whether `value` may be put (NaN and infinities never may).
    pub fn contains(&self, value: f64) -> bool {
        value.is_finite() && self.low <= value && value <= self.high
    }

    /// `value`, described as `what`, inside the range, or an error naming the value and the
    /// range.
    pub fn check(&self, what: &str, value: f64) -> Result<(), ScanError> {
        if self.contains(value) {
            return Ok(());
        }
        Err(ScanError::NotAllowed(format!(
            "{what} {value} is outside the range {:?} may be put in, [{}, {}] ({})",
            self.pv, self.low, self.high, self.from
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(low: f64, high: f64) -> Limits {
        Limits { low, high }
    }

    fn configured(low: Option<f64>, high: Option<f64>) -> WritableLimits {
        WritableLimits { low, high }
    }

    #[test]
    fn the_range_is_the_pvs_limits_narrowed_by_the_pipelines() {
        let range = AllowedRange::new("Q", configured(None, None), limits(-2.0, 2.0)).unwrap();
        assert_eq!((range.low, range.high), (-2.0, 2.0));
        assert_eq!(range.from, "the PV's control limits [-2, 2]");
        let range = AllowedRange::new("Q", configured(None, Some(1.5)), limits(-2.0, 2.0)).unwrap();
        assert_eq!((range.low, range.high), (-2.0, 1.5));
        // The pipeline narrows, never widens.
        let range =
            AllowedRange::new("Q", configured(Some(-5.0), Some(5.0)), limits(-2.0, 2.0)).unwrap();
        assert_eq!((range.low, range.high), (-2.0, 2.0));
        assert_eq!(
            range.from,
            "the PV's control limits [-2, 2] and the pipeline's [-5, 5]"
        );
    }

    #[test]
    fn unset_control_limits_leave_the_pipelines_range_or_nothing() {
        // 0 and 0 (an ao record without DRVL/DRVH), reversed, NaN: not set.
        for unset in [
            limits(0.0, 0.0),
            limits(3.0, -3.0),
            limits(f64::NAN, 1.0),
            limits(f64::NEG_INFINITY, f64::INFINITY),
        ] {
            let range = AllowedRange::new("Q", configured(Some(-1.0), Some(4.0)), unset).unwrap();
            assert_eq!((range.low, range.high), (-1.0, 4.0), "{unset:?}");
            let refused = AllowedRange::new("Q", configured(None, None), unset)
                .unwrap_err()
                .to_string();
            assert!(refused.contains("no range"), "{refused}");
            assert!(refused.contains("DRVL and DRVH"), "{refused}");
            assert!(
                AllowedRange::new("Q", configured(None, Some(4.0)), unset).is_err(),
                "a half-open range is no range"
            );
        }
    }

    #[test]
    fn ranges_that_do_not_overlap_allow_nothing() {
        let refused = AllowedRange::new("Q", configured(Some(3.0), None), limits(-2.0, 2.0))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("do not overlap"), "{refused}");
    }

    #[test]
    fn values_outside_and_non_finite_values_are_refused_with_the_range() {
        let range = AllowedRange::new("Q", configured(None, Some(1.5)), limits(-2.0, 2.0)).unwrap();
        for inside in [-2.0, 0.0, 1.5] {
            assert!(range.check("value", inside).is_ok(), "{inside}");
        }
        for outside in [-2.5, 1.8, 1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(!range.contains(outside), "{outside}");
        }
        let refused = range.check("value", 1.8).unwrap_err();
        assert!(matches!(refused, ScanError::NotAllowed(_)));
        assert_eq!(
            refused.to_string(),
            "value 1.8 is outside the range \"Q\" may be put in, [-2, 1.5] (the PV's control \
             limits [-2, 2] and the pipeline's high 1.5)"
        );
    }

    #[test]
    fn only_listed_pvs_are_writable_and_the_refusal_says_how_to_allow_one() {
        let none = ScanDriverConfig::default();
        let refused = none.limits_of("QUAD:X").unwrap_err().to_string();
        assert!(refused.contains("lists no PV"), "{refused}");
        assert!(
            refused.contains("[controller.scan.writable.\"QUAD:X\"]"),
            "{refused}"
        );
        let some: ScanDriverConfig = serde_json::from_str(
            r#"{"writable": {"QUAD:A": {}, "QUAD:B": {"low": -1.0, "high": 1.0}}}"#,
        )
        .unwrap();
        assert_eq!(some.limits_of("QUAD:A").unwrap(), configured(None, None));
        assert_eq!(
            some.limits_of("QUAD:B").unwrap(),
            configured(Some(-1.0), Some(1.0))
        );
        let refused = some.limits_of("QUAD:C").unwrap_err().to_string();
        assert!(refused.contains("lists only QUAD:A, QUAD:B"), "{refused}");
        assert!(
            serde_json::from_str::<ScanDriverConfig>(r#"{"writable": {"Q": {"hihg": 2.0}}}"#)
                .is_err(),
            "unknown keys are mistakes"
        );
    }

    #[test]
    fn the_check_finds_reversed_and_non_finite_limits() {
        let config = ScanDriverConfig {
            writable: BTreeMap::from([
                ("A".to_owned(), configured(Some(2.0), Some(1.0))),
                ("B".to_owned(), configured(Some(f64::NAN), None)),
                ("C".to_owned(), configured(Some(-1.0), Some(1.0))),
            ]),
        };
        let mistakes = config.check();
        assert_eq!(mistakes.len(), 2, "{mistakes:?}");
        assert_eq!(
            mistakes[0],
            (
                "A".to_owned(),
                "",
                "low (2) must be below high (1)".to_owned()
            )
        );
        assert_eq!(mistakes[1].0, "B");
        assert_eq!(mistakes[1].1, "low");
    }
}
