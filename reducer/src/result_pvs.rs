//! Results as EPICS PVs: chosen paths of the reducer's state served over Channel Access under a
//! prefix, so `caget`, `camonitor` and Phoebus show processed results with no other interface.
//!
//! ```toml
//! [reducer.pvs]
//! prefix = "BEAMFLOW:INJ:"
//! server = "0.0.0.0"          # host[:port]; the port defaults to EPICS_CAS_SERVER_PORT or 5064
//! [reducer.pvs.values]
//! "OTR2:MAX" = "last/otr2/0/max"                              # a scalar: DOUBLE
//! "OTR2:MAX_HIST" = { path = "image/values/max", elements = 2000 }  # a waveform, newest last
//! ```
//!
//! Values are taken from each published state at most `rate_hz` times per second and posted
//! when they change, stamped with the time they were taken. A path that is missing, or holds
//! something other than numbers, gives NaN with an INVALID alarm (status UDF), so a display
//! shows the PV as not valid instead of a stale number.

use std::collections::BTreeMap;
use std::sync::Arc;

use beamflow_ca::server::PvStore;
use beamflow_ca::{EpicsTime, TimeValue, Values};
use beamflow_protocol::Value;
use serde::Deserialize;
use tracing::warn;

/// `[reducer.pvs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultPvsConfig {
    /// Put before every PV name, e.g. `BEAMFLOW:INJ:`.
    #[serde(default)]
    pub prefix: String,
    /// The CA server's address: `host` or `host:port`.
    #[serde(default = "default_server")]
    pub server: String,
    /// Looks at the state at most this often.
    #[serde(default = "default_rate")]
    pub rate_hz: f64,
    /// PV name (after the prefix) → what it serves.
    pub values: BTreeMap<String, PvSource>,
}

fn default_server() -> String {
    "0.0.0.0".to_owned()
}

fn default_rate() -> f64 {
    10.0
}

/// What one result PV serves.
#[derive(Debug, Clone, Deserialize)]
// Untagged, serde would say only "data did not match any variant"; this says what is expected.
#[serde(
    untagged,
    expecting = "expected a state path string (\"last/values/x/sigma_um\") or a waveform table { path = \"...\", elements = N }"
)]
pub enum PvSource {
    /// A `/`-separated path to a number: a scalar DOUBLE PV.
    Scalar(String),
    /// A path to an array of numbers: a DOUBLE waveform of its newest `elements`.
    Waveform {
        /// The path.
        path: String,
        /// The waveform's length at most.
        elements: usize,
    },
}

impl PvSource {
    /// The state path it serves.
    pub fn path(&self) -> &str {
        match self {
            PvSource::Scalar(path) | PvSource::Waveform { path, .. } => path,
        }
    }
}

/// EPICS alarm status UDF: the value was never defined.
const STATUS_UDF: u16 = 17;
/// EPICS alarm severity INVALID.
const SEVERITY_INVALID: u16 = 3;

/// The result PVs, added to a store, updated from published states.
pub struct ResultPvs {
    pvs: Vec<(String, PvSource)>,
    posted: Vec<Option<(Values, u16)>>,
    warned: Vec<bool>,
    store: PvStore,
    last_state: Option<Arc<Value>>,
}

impl ResultPvs {
    /// Adds the configured PVs to `store`, invalid until the state has their values.
    pub fn new(config: &ResultPvsConfig, store: &PvStore) -> Self {
        let pvs: Vec<(String, PvSource)> = config
            .values
            .iter()
            .map(|(name, source)| (format!("{}{name}", config.prefix), source.clone()))
            .collect();
        for (name, source) in &pvs {
            let elements = match source {
                PvSource::Scalar(_) => 1,
                PvSource::Waveform { elements, .. } => *elements,
            };
            store.add(name, undefined(EpicsTime::now()), elements, false);
        }
        Self {
            posted: vec![None; pvs.len()],
            warned: vec![false; pvs.len()],
            pvs,
            store: store.clone(),
            last_state: None,
        }
    }

    /// The full PV names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pvs.iter().map(|(name, _)| name.as_str())
    }

    /// Posts the values of `state` that changed since the last call; a state already seen costs
    /// nothing.
    pub fn update(&mut self, state: &Arc<Value>) {
        if self
            .last_state
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, state))
        {
            return;
        }
        self.last_state = Some(Arc::clone(state));
        let stamp = EpicsTime::now();
        for (i, (name, source)) in self.pvs.iter().enumerate() {
            let (values, severity) = match read(state.pointer(source.path()), source) {
                Ok(values) => (values, 0),
                Err(why) => {
                    if !self.warned[i] && state.pointer(source.path()).is_some() {
                        warn!(pv = %name, path = source.path(), "{why}; the PV is INVALID until it changes (logged once).");
                        self.warned[i] = true;
                    }
                    (Values::Double(vec![f64::NAN]), SEVERITY_INVALID)
                }
            };
            let changed = self.posted[i]
                .as_ref()
                .is_none_or(|(old, old_severity)| *old_severity != severity || !same(old, &values));
            if changed {
                let value = TimeValue {
                    status: if severity == 0 { 0 } else { STATUS_UDF },
                    severity,
                    stamp,
                    values: values.clone(),
                };
                self.store.post(name, value);
                self.posted[i] = Some((values, severity));
            }
        }
    }
}

fn undefined(stamp: EpicsTime) -> TimeValue {
    TimeValue {
        status: STATUS_UDF,
        severity: SEVERITY_INVALID,
        stamp,
        values: Values::Double(vec![f64::NAN]),
    }
}

/// NaN equals NaN here: an unchanged NaN is not posted again.
fn same(a: &Values, b: &Values) -> bool {
    match (a, b) {
        (Values::Double(a), Values::Double(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
        }
        _ => a == b,
    }
}

fn read(value: Option<&Value>, source: &PvSource) -> Result<Values, &'static str> {
    let value = value.ok_or("not in the state")?;
    match source {
        PvSource::Scalar(_) => number(value)
            .map(|x| Values::Double(vec![x]))
            .ok_or("not a number"),
        PvSource::Waveform { elements, .. } => {
            let Value::Array(items) = value else {
                return Err("not an array");
            };
            let newest = &items[items.len().saturating_sub(*elements)..];
            newest
                .iter()
                .map(|item| match item {
                    Value::Null => Some(f64::NAN),
                    other => number(other),
                })
                .collect::<Option<Vec<f64>>>()
                .map(Values::Double)
                .ok_or("not an array of numbers")
        }
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        other => other.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ResultPvsConfig {
        toml::from_str(text).expect("valid config")
    }

    fn doubles(store: &PvStore, name: &str) -> (Vec<f64>, u16) {
        let value = store.value(name).expect("served");
        match value.values {
            Values::Double(v) => (v, value.severity),
            other => panic!("not DOUBLE: {other:?}"),
        }
    }

    fn state(json: serde_json::Value) -> Arc<Value> {
        Arc::new(Value::from_serialize(&json).expect("a value"))
    }

    #[test]
    fn scalars_and_waveforms_follow_the_state() {
        let config = config(
            r#"
            prefix = "BF:"
            [values]
            "MEAN" = "last/det/0/mean"
            "HIST" = { path = "history/values/mean", elements = 3 }
            "#,
        );
        let store = PvStore::new();
        let mut pvs = ResultPvs::new(&config, &store);
        assert_eq!(pvs.names().collect::<Vec<_>>(), ["BF:HIST", "BF:MEAN"]);
        let (value, severity) = doubles(&store, "BF:MEAN");
        assert!(value[0].is_nan());
        assert_eq!(severity, SEVERITY_INVALID, "invalid until the state has it");

        pvs.update(&state(serde_json::json!({
            "last": {"det": [{"mean": 2.5}]},
            "history": {"values": {"mean": [1.0, 2.0, null, 4.0]}},
        })));
        assert_eq!(doubles(&store, "BF:MEAN"), (vec![2.5], 0));
        let (history, severity) = doubles(&store, "BF:HIST");
        assert_eq!(severity, 0);
        assert_eq!(history[0], 2.0, "the newest three");
        assert!(history[1].is_nan());
        assert_eq!(history[2], 4.0);
    }

    #[test]
    fn a_wrong_type_makes_the_pv_invalid_and_an_unchanged_value_is_not_posted_again() {
        let config = config(
            r#"
            [values]
            "A" = "a"
            "#,
        );
        let store = PvStore::new();
        let mut pvs = ResultPvs::new(&config, &store);
        pvs.update(&state(serde_json::json!({"a": "text"})));
        assert_eq!(doubles(&store, "A").1, SEVERITY_INVALID);
        pvs.update(&state(serde_json::json!({"a": 7})));
        assert_eq!(doubles(&store, "A"), (vec![7.0], 0));
        let mut watch = store.watch("A").expect("served");
        watch.mark_unchanged();
        pvs.update(&state(serde_json::json!({"a": 7})));
        assert!(
            !watch.has_changed().expect("open"),
            "same value: nothing posted"
        );
        pvs.update(&state(serde_json::json!({"a": 8})));
        assert!(watch.has_changed().expect("open"));
    }
}
