//! Results as EPICS PVs: chosen paths of the reducer's state served over Channel Access under a
//! prefix, so `caget`, `camonitor` and Phoebus show processed results with no other interface.
//!
//! ```toml
//! [reducer.pvs]
//! prefix = "BEAMFLOW:INJ:"
//! server = "127.0.0.1"        # host[:port] (default loopback; "0.0.0.0" serves every network);
//!                             # the port defaults to EPICS_CAS_SERVER_PORT or 5064
//! [reducer.pvs.values]
//! "OTR2:MAX" = "last/otr2/0/max"                              # a scalar: DOUBLE
//! "OTR2:MAX_HIST" = { path = "image/values/max", elements = 2000 }  # a waveform, newest last
//! "OTR2:SIGMA_X" = { path = "last/values/x/sigma_um", units = "µm", precision = 2, display = [0, 1000], alarm = { high = 600, hihi = 800 }, max_age_s = 2 }
//! "EMITN_X" = { path = "quad_scan/fit/x/norm_emit", scale = 1e6, units = "µm", precision = 3 }
//! ```
//!
//! The same PVs are served over PV Access under the same names (`pva`, default loopback; `"off"`
//! serves Channel Access only): scalars as NTScalar with `display`, `control` and `valueAlarm`,
//! waveforms as NTScalarArray. Every scalar PV also serves its recent values as the array PV
//! `NAME:HISTORY` over both protocols (`history` elements, newest last, appended when the value
//! changes; 0: none). Two kinds are PV Access only: `columns = [..]` serves a table in the
//! state (a list of rows or a map of columns, e.g. `quad_scan/steps`) as NTTable, and
//! `image = true` serves the latest frame of the `image` accumulator named by `path` as
//! NTNDArray.
//!
//! Values are taken from the published state `rate_hz` times per second and posted when they or
//! their alarm change, stamped with the time they were taken. Units, precision and limits are in
//! every GR and CTRL answer (`caget -d DBR_CTRL_DOUBLE`, Phoebus).
//!
//! # Alarms
//!
//! Each look gives a PV the worst of these (on a tie, the first listed):
//!
//! - **INVALID / UDF**: the path is missing or holds something other than numbers; the value is
//!   NaN, so a display shows it as not valid instead of a stale number.
//! - **INVALID / COMM**: with `max_age_s`, the value is older than that. Its age is that of the
//!   sample behind it when the object holding the value has a `time` (Unix seconds: `pv_values`
//!   gives each PV's CA time stamp beside its `value`); otherwise the time since that object last
//!   changed (for the `last` accumulator, also a new result for its key). A source IOC that is
//!   gone sends nothing, so its results age: COMM, the status EPICS gives a lost link, says "no
//!   fresh data from the source", whether it is down or silent. The value stays (EPICS keeps a
//!   record's last value when its alarm changes). A PV that posts only on change looks old while
//!   constant: leave `max_age_s` out for such a source, and keep the IOCs' clocks in sync.
//! - **The input's own alarm**: the object holding the value has a `severity` (and `status`),
//!   as `pv_values` gives each PV's: passed on as it is, as an EPICS link with MS would.
//! - **MAJOR / HIHI or LOLO**, **MINOR / HIGH or LOW**: at or beyond the alarm limits, as an
//!   `ai` record compares them (scalars only).
//! - **Model outputs** (a path through `outputs/<name>`, beside the evaluation's `inputs` and
//!   `issues`, as the `surrogate` analysis gives them): an input outside the model's range
//!   (`out_of_range` issue) makes MINOR / HW_LIMIT; with `max_age_s`, an input older than that
//!   (its `age_s`, which the model gives for inputs it judged stale) makes INVALID / COMM.
//!
//! A change of alarm is posted even when the value is unchanged.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use beamflow_ca::dbr::alarm::{severity, status};
use beamflow_ca::dbr::{AlarmLimits, Limits, Metadata, UNITS_SIZE};
use beamflow_ca::server::PvStore;
use beamflow_ca::{EpicsTime, TimeValue, Values};
use beamflow_protocol::Value;
use jiff::Timestamp;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use tracing::warn;

use crate::accumulators::image::Frame;

mod pva;

/// `[reducer.pvs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultPvsConfig {
    /// Put before every PV name, e.g. `BEAMFLOW:INJ:`.
    #[serde(default)]
    pub prefix: String,
    /// The CA server's address: `host` or `host:port`. Loopback unless told otherwise: PVs
    /// reach the control room's displays only where the operator says (`"0.0.0.0"`, or the
    /// address of the control-room interface).
    #[serde(default = "default_server")]
    pub server: String,
    /// Looks at the state this often: values, alarm limits and ages are judged each time.
    #[serde(default = "default_rate")]
    pub rate_hz: f64,
    /// The PV Access server's address, `host` or `host:port` (the port defaults to
    /// `EPICS_PVAS_SERVER_PORT` or 5075, another free one when that is taken, as pvxs does);
    /// `"off"`: Channel Access only. Loopback unless told otherwise, as `server`.
    #[serde(default = "default_server")]
    pub pva: String,
    /// Elements of each scalar PV's `NAME:HISTORY` array (its recent values, newest last);
    /// 0: none.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Serve every parameter of the pipeline as a writable PV `<prefix>PARAM:<name>` over PV
    /// Access (see [`crate::control_pvs`]).
    #[serde(default)]
    pub parameters: bool,
    /// Who may put to the writable PVs (parameters, collectors' controls).
    #[serde(default)]
    pub writers: WritersConfig,
    /// PV name (after the prefix) → what it serves.
    pub values: BTreeMap<String, PvSource>,
}

fn default_server() -> String {
    "127.0.0.1".to_owned()
}

/// `[reducer.pvs.writers]`: the peers whose puts are carried out; an empty list admits anyone
/// for that criterion.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritersConfig {
    /// Client addresses (the connection's, not what the client claims): loopback by default,
    /// so only this host writes until the operator names others.
    #[serde(default = "loopback")]
    pub hosts: Vec<std::net::IpAddr>,
    /// User names the clients give (EPICS's `ca` authentication: the login name); default
    /// anyone from an allowed host.
    #[serde(default)]
    pub users: Vec<String>,
}

fn loopback() -> Vec<std::net::IpAddr> {
    vec![
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ]
}

impl Default for WritersConfig {
    fn default() -> Self {
        Self {
            hosts: loopback(),
            users: Vec::new(),
        }
    }
}

impl WritersConfig {
    /// The server's rule.
    pub fn rule(&self) -> beamflow_pva::server::WriteRule {
        beamflow_pva::server::WriteRule {
            hosts: self.hosts.clone(),
            users: self.users.clone(),
        }
    }
}

fn default_history() -> usize {
    1000
}

/// `NAME:HISTORY` elements at most: a PV is one message, and a display plots it whole.
const MAX_HISTORY: usize = 1_000_000;

fn default_rate() -> f64 {
    10.0
}

/// What one result PV serves: a state path alone, or a table with the path and what displays
/// show with it.
#[derive(Debug, Clone, PartialEq)]
pub enum PvSource {
    /// A `/`-separated path to a number: a scalar DOUBLE PV, no units, no limits, no age limit.
    Path(String),
    /// A path with its units, precision, limits and age limit (a waveform with `elements`).
    Table(Box<PvTable>),
}

/// What a result PV table says: `{ path = "...", units = "µm", precision = 2, ... }`. Limits are
/// in the served units (after `scale`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvTable {
    /// The `/`-separated state path of a number (or, with `elements`, an array of numbers).
    pub path: String,
    /// Serve a DOUBLE waveform of the array's newest `elements` instead of a scalar.
    #[serde(default)]
    pub elements: Option<usize>,
    /// Multiplies the value before it is served, e.g. `1e6` to serve metres as µm.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Engineering units (EGU), at most 7 bytes of UTF-8 (what CA carries), e.g. `"µm"`.
    #[serde(default)]
    pub units: String,
    /// Digits after the decimal point displays show (PREC).
    #[serde(default)]
    pub precision: i16,
    /// `[low, high]`: the range displays draw (LOPR/HOPR); default none, displays scale to the
    /// data.
    #[serde(default)]
    pub display: Option<[f64; 2]>,
    /// `[low, high]`: the control limits (DRVL/DRVH); default the display range, as an `ai`
    /// record's.
    #[serde(default)]
    pub control: Option<[f64; 2]>,
    /// Alarm limits: MINOR at or beyond `low`/`high`, MAJOR at or beyond `lolo`/`hihi`; scalars
    /// only.
    #[serde(default)]
    pub alarm: AlarmConfig,
    /// The value is INVALID (status COMM) once older than this, in seconds (see the module's
    /// "Alarms"); default: never.
    #[serde(default)]
    pub max_age_s: Option<f64>,
    /// Serve the table at `path` (a list of rows or a map of columns) as an NTTable of these
    /// columns, in this order (empty: all); PV Access only.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Serve the latest frame of the `image` accumulator named by `path` as an NTNDArray;
    /// PV Access only.
    #[serde(default)]
    pub image: bool,
    /// This PV's `NAME:HISTORY` elements, instead of the section's `history`.
    #[serde(default)]
    pub history: Option<usize>,
}

fn default_scale() -> f64 {
    1.0
}

/// `alarm = { lolo = .., low = .., high = .., hihi = .. }`: any of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// MAJOR (status LOLO) at or below.
    #[serde(default)]
    pub lolo: Option<f64>,
    /// MINOR (status LOW) at or below.
    #[serde(default)]
    pub low: Option<f64>,
    /// MINOR (status HIGH) at or above.
    #[serde(default)]
    pub high: Option<f64>,
    /// MAJOR (status HIHI) at or above.
    #[serde(default)]
    pub hihi: Option<f64>,
}

impl AlarmConfig {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Where a value stands against the limits, checked in an `ai` record's order.
    fn judge(&self, value: f64) -> Option<Alarm> {
        let beyond = |limit: Option<f64>, above: bool| {
            limit.is_some_and(|limit| {
                if above {
                    value >= limit
                } else {
                    value <= limit
                }
            })
        };
        [
            (self.hihi, true, severity::MAJOR, status::HIHI),
            (self.lolo, false, severity::MAJOR, status::LOLO),
            (self.high, true, severity::MINOR, status::HIGH),
            (self.low, false, severity::MINOR, status::LOW),
        ]
        .into_iter()
        .find(|(limit, above, _, _)| beyond(*limit, *above))
        .map(|(_, _, severity, status)| Alarm { severity, status })
    }
}

/// What is wrong with a result PV's table, in an operator's words.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum TableError {
    #[error("units {units:?} is {bytes} bytes; Channel Access carries at most {}", UNITS_SIZE - 1)]
    UnitsTooLong { units: String, bytes: usize },
    #[error("elements must be at least 1")]
    NoElements,
    #[error("scale must be a finite non-zero number, not {0}")]
    Scale(f64),
    #[error("{key} = [{low}, {high}] must be finite and low ≤ high")]
    Range {
        key: &'static str,
        low: f64,
        high: f64,
    },
    #[error("alarm limits apply to scalars; a waveform (elements) has none")]
    AlarmOnWaveform,
    #[error("a PV is one of a waveform (elements), a table (columns) or an image (image = true)")]
    TwoKinds,
    #[error("history must be at most {MAX_HISTORY} elements, not {0}")]
    History(usize),
    #[error("alarm.{name} = {limit} is not a finite number")]
    AlarmNotFinite { name: &'static str, limit: f64 },
    #[error(
        "alarm.{name} = {limit} is above alarm.{next} = {next_limit}: limits go lolo ≤ low ≤ high ≤ hihi"
    )]
    AlarmOrder {
        name: &'static str,
        limit: f64,
        next: &'static str,
        next_limit: f64,
    },
    #[error("max_age_s must be a positive number of seconds, not {0}")]
    MaxAge(f64),
}

impl PvTable {
    /// What is wrong with the table, in an operator's words.
    fn check(&self) -> Result<(), TableError> {
        let units = self.units.len();
        if units >= UNITS_SIZE {
            return Err(TableError::UnitsTooLong {
                units: self.units.clone(),
                bytes: units,
            });
        }
        if self.elements == Some(0) {
            return Err(TableError::NoElements);
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(TableError::Scale(self.scale));
        }
        for (key, range) in [("display", self.display), ("control", self.control)] {
            if let Some([low, high]) = range
                && !(low.is_finite() && high.is_finite() && low <= high)
            {
                return Err(TableError::Range { key, low, high });
            }
        }
        if self.elements.is_some() && !self.alarm.is_empty() {
            return Err(TableError::AlarmOnWaveform);
        }
        let kinds = [self.elements.is_some(), self.columns.is_some(), self.image];
        if kinds.iter().filter(|&&k| k).count() > 1 {
            return Err(TableError::TwoKinds);
        }
        if let Some(history) = self.history.filter(|&h| h > MAX_HISTORY) {
            return Err(TableError::History(history));
        }
        let AlarmConfig {
            lolo,
            low,
            high,
            hihi,
        } = self.alarm;
        let set: Vec<(&'static str, f64)> =
            [("lolo", lolo), ("low", low), ("high", high), ("hihi", hihi)]
                .into_iter()
                .filter_map(|(name, limit)| Some((name, limit?)))
                .collect();
        if let Some(&(name, limit)) = set.iter().find(|(_, limit)| !limit.is_finite()) {
            return Err(TableError::AlarmNotFinite { name, limit });
        }
        if let Some(pair) = set.windows(2).find(|pair| pair[0].1 > pair[1].1) {
            return Err(TableError::AlarmOrder {
                name: pair[0].0,
                limit: pair[0].1,
                next: pair[1].0,
                next_limit: pair[1].1,
            });
        }
        if let Some(age) = self.max_age_s
            && !(age.is_finite() && age > 0.0)
        {
            return Err(TableError::MaxAge(age));
        }
        Ok(())
    }

    /// What its GR and CTRL answers carry.
    fn metadata(&self) -> Metadata {
        let limits = |range: Option<[f64; 2]>| {
            range.map_or_else(Limits::default, |[low, high]| Limits { low, high })
        };
        let none = f64::NAN;
        Metadata {
            units: self.units.clone(),
            precision: self.precision,
            display: limits(self.display),
            control: limits(self.control.or(self.display)),
            alarm: AlarmLimits {
                lolo: self.alarm.lolo.unwrap_or(none),
                low: self.alarm.low.unwrap_or(none),
                high: self.alarm.high.unwrap_or(none),
                hihi: self.alarm.hihi.unwrap_or(none),
            },
        }
    }
}

// By hand rather than `#[serde(untagged)]`: untagged, a misspelt key in a table would only say
// "did not match any variant"; this way the table's own error ("unknown field `unit`, expected
// one of ...") and its checks reach the operator.
impl<'de> Deserialize<'de> for PvSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;

        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = PvSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a state path string (\"last/values/x/sigma_um\") or a table { path = \"...\", units = \"µm\", precision = 2, display = [lo, hi], control = [lo, hi], alarm = { lolo, low, high, hihi }, max_age_s = 2, scale = 1, elements = N, columns = [..], image = true, history = N }",
                )
            }

            fn visit_str<E: de::Error>(self, path: &str) -> Result<PvSource, E> {
                Ok(PvSource::Path(path.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PvSource, A::Error> {
                let table = PvTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                table.check().map_err(de::Error::custom)?;
                Ok(PvSource::Table(Box::new(table)))
            }
        }

        deserializer.deserialize_any(SourceVisitor)
    }
}

impl PvSource {
    /// The state path it serves.
    pub fn path(&self) -> &str {
        match self {
            PvSource::Path(path) => path,
            PvSource::Table(table) => &table.path,
        }
    }

    /// Its waveform length, `None` for a scalar.
    pub fn elements(&self) -> Option<usize> {
        match self {
            PvSource::Path(_) => None,
            PvSource::Table(table) => table.elements,
        }
    }

    fn table(&self) -> Option<&PvTable> {
        match self {
            PvSource::Path(_) => None,
            PvSource::Table(table) => Some(table),
        }
    }
}

/// An alarm severity with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alarm {
    severity: u16,
    status: u16,
}

impl Alarm {
    const NONE: Alarm = Alarm {
        severity: severity::NO_ALARM,
        status: status::NO_ALARM,
    };
    const UNDEFINED: Alarm = Alarm {
        severity: severity::INVALID,
        status: status::UDF,
    };
    const STALE: Alarm = Alarm {
        severity: severity::INVALID,
        status: status::COMM,
    };
    const OUT_OF_MODEL_RANGE: Alarm = Alarm {
        severity: severity::MINOR,
        status: status::HW_LIMIT,
    };

    /// Keeps the worse; on a tie, the one already there.
    fn raise(&mut self, other: Option<Alarm>) {
        if let Some(other) = other
            && other.severity > self.severity
        {
            *self = other;
        }
    }
}

/// What a result PV serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Numbers: a scalar, or a waveform of `elements`; over both protocols.
    Numbers,
    /// A table, as NTTable; PV Access only.
    Table,
    /// An `image` accumulator's latest frame, as NTNDArray; PV Access only.
    Image,
}

/// One served PV and what the updater remembers of it.
struct Served {
    name: String,
    source: PvSource,
    kind: Kind,
    /// What was last posted.
    posted: Option<(Values, Alarm)>,
    warned: bool,
    /// What the value came from when last looked at, and since when it has been so: the age of
    /// a value with no time stamp of its own.
    origin: Option<Origin>,
    /// A scalar's recent values, newest last, and how many it keeps (`NAME:HISTORY`).
    history: Option<(VecDeque<f64>, usize)>,
    /// The table's columns or the image's event number, as last posted.
    posted_other: Option<Value>,
}

/// The object holding a value and its result's event number, as last seen.
struct Origin {
    holder: Value,
    event_number: Value,
    since: Timestamp,
}

/// The result PVs, added to a Channel Access store (and a PV Access one), updated from
/// published states.
pub struct ResultPvs {
    pvs: Vec<Served>,
    store: PvStore,
    pva: Option<pva::PvaSink>,
}

/// The suffix of a scalar PV's array of recent values.
pub const HISTORY_SUFFIX: &str = ":HISTORY";

impl ResultPvs {
    /// Adds the configured PVs to `store` (and to `pva`, the PV Access server's store, if
    /// given), invalid until the state has their values.
    pub fn new(
        config: &ResultPvsConfig,
        store: &PvStore,
        pva: Option<&beamflow_pva::server::PvStore>,
    ) -> Self {
        let pva = pva.map(pva::PvaSink::new);
        let pvs: Vec<Served> = config
            .values
            .iter()
            .map(|(name, source)| {
                let table = source.table();
                let kind = match table {
                    Some(table) if table.columns.is_some() => Kind::Table,
                    Some(table) if table.image => Kind::Image,
                    _ => Kind::Numbers,
                };
                let keep = table
                    .and_then(|t| t.history)
                    .unwrap_or(config.history)
                    .min(MAX_HISTORY);
                let scalar = kind == Kind::Numbers && source.elements().is_none();
                Served {
                    name: format!("{}{name}", config.prefix),
                    source: source.clone(),
                    kind,
                    posted: None,
                    warned: false,
                    origin: None,
                    history: (scalar && keep > 0).then(|| (VecDeque::new(), keep)),
                    posted_other: None,
                }
            })
            .collect();
        let now = Timestamp::now();
        for pv in &pvs {
            let metadata = pv
                .source
                .table()
                .map_or_else(Metadata::default, PvTable::metadata);
            match pv.kind {
                Kind::Numbers => {
                    let elements = pv.source.elements().unwrap_or(1);
                    let first = time_value(Values::Double(vec![f64::NAN]), Alarm::UNDEFINED, now);
                    store.add_with_metadata(&pv.name, first, elements, false, metadata.clone());
                    if let Some(pva) = &pva {
                        pva.add_numbers(&pv.name, pv.source.elements(), &metadata);
                    }
                    if let Some((_, keep)) = &pv.history {
                        let name = format!("{}{HISTORY_SUFFIX}", pv.name);
                        let empty = time_value(Values::Double(Vec::new()), Alarm::NONE, now);
                        store.add_with_metadata(&name, empty, *keep, false, metadata.clone());
                        if let Some(pva) = &pva {
                            pva.add_numbers(&name, Some(*keep), &metadata);
                        }
                    }
                }
                Kind::Table => {
                    let columns = pv
                        .source
                        .table()
                        .and_then(|t| t.columns.clone())
                        .unwrap_or_default();
                    if let Some(pva) = &pva {
                        pva.add_table(&pv.name, &columns);
                    }
                }
                Kind::Image => {
                    if let Some(pva) = &pva {
                        pva.add_image(&pv.name);
                    }
                }
            }
        }
        Self {
            pvs,
            store: store.clone(),
            pva,
        }
    }

    /// The full PV names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pvs.iter().map(|pv| pv.name.as_str())
    }

    /// Judges every PV against `state` now and posts the values and alarms that changed. Called
    /// periodically even when the state is unchanged: ages grow without new results. `frame`
    /// gives an `image` accumulator's latest frame by name.
    pub fn update(&mut self, state: &Value, frame: impl Fn(&str) -> Option<Arc<Frame>>) {
        self.update_at(state, &frame, Timestamp::now());
    }

    fn update_at(
        &mut self,
        state: &Value,
        frame: &dyn Fn(&str) -> Option<Arc<Frame>>,
        now: Timestamp,
    ) {
        for pv in &mut self.pvs {
            match pv.kind {
                Kind::Numbers => {}
                Kind::Table => {
                    if let Some(pva) = &self.pva {
                        pv.post_table(pva, state, now);
                    }
                    continue;
                }
                Kind::Image => {
                    if let Some(pva) = &self.pva {
                        pv.post_image(pva, frame, now);
                    }
                    continue;
                }
            }
            let (values, alarm) = pv.look(state, now);
            let changed = pv
                .posted
                .as_ref()
                .is_none_or(|(old, old_alarm)| *old_alarm != alarm || !same(old, &values));
            if !changed {
                continue;
            }
            let value_changed = pv
                .posted
                .as_ref()
                .is_none_or(|(old, _)| !same(old, &values));
            self.store
                .post(&pv.name, time_value(values.clone(), alarm, now));
            if let (Some(pva), Values::Double(numbers)) = (&self.pva, &values) {
                pva.post_numbers(&pv.name, numbers, alarm, now);
            }
            if let (Some((recent, keep)), Values::Double(numbers), true) =
                (&mut pv.history, &values, value_changed)
                && let [x] = numbers.as_slice()
                && !(x.is_nan() && alarm == Alarm::UNDEFINED)
            {
                if recent.len() >= *keep {
                    recent.pop_front();
                }
                recent.push_back(*x);
                let numbers: Vec<f64> = recent.iter().copied().collect();
                let name = format!("{}{HISTORY_SUFFIX}", pv.name);
                self.store.post(
                    &name,
                    time_value(Values::Double(numbers.clone()), Alarm::NONE, now),
                );
                if let Some(pva) = &self.pva {
                    pva.post_numbers(&name, &numbers, Alarm::NONE, now);
                }
            }
            pv.posted = Some((values, alarm));
        }
    }
}

impl Served {
    /// Posts the table at the PV's path when it changed; INVALID/UDF while it is missing.
    fn post_table(&mut self, pva: &pva::PvaSink, state: &Value, now: Timestamp) {
        let path = self.source.path();
        let found = state.pointer(path);
        if found.is_some() && found == self.posted_other.as_ref() {
            return;
        }
        let wanted = self
            .source
            .table()
            .and_then(|t| t.columns.clone())
            .unwrap_or_default();
        let read = found.map_or(Err("not in the state"), |table| {
            pva::read_table(table, &wanted)
        });
        match read {
            Ok(columns) => {
                pva.post_table(&self.name, &columns, Alarm::NONE, now);
                self.posted_other = found.cloned();
            }
            Err(why) => {
                if !self.warned && found.is_some() {
                    warn!(pv = %self.name, path, "{why}; the PV is INVALID until it changes (logged once).");
                    self.warned = true;
                }
                if self.posted.is_none() {
                    pva.post_table(&self.name, &[], Alarm::UNDEFINED, now);
                    self.posted = Some((Values::Double(Vec::new()), Alarm::UNDEFINED));
                }
            }
        }
    }

    /// Posts the image accumulator's frame when a newer one came.
    fn post_image(
        &mut self,
        pva: &pva::PvaSink,
        frame: &dyn Fn(&str) -> Option<Arc<Frame>>,
        now: Timestamp,
    ) {
        let Some(latest) = frame(self.source.path()) else {
            return;
        };
        let event = Value::from(latest.event_number.0);
        if self.posted_other.as_ref() == Some(&event) {
            return;
        }
        pva.post_image(&self.name, &latest, now);
        self.posted_other = Some(event);
    }
}

impl Served {
    /// The values the state holds for this PV and their alarm.
    fn look(&mut self, state: &Value, now: Timestamp) -> (Values, Alarm) {
        let path = self.source.path();
        let found = state.pointer(path);
        let values = match read(found, &self.source) {
            Ok(values) => values,
            Err(why) => {
                if !self.warned && found.is_some() {
                    warn!(pv = %self.name, path, "{why}; the PV is INVALID until it changes (logged once).");
                    self.warned = true;
                }
                return (Values::Double(vec![f64::NAN]), Alarm::UNDEFINED);
            }
        };
        let table = self.source.table();
        let max_age_s = table.and_then(|table| table.max_age_s);
        let holder = parent(path).and_then(|parent| state.pointer(parent));
        let mut alarm = Alarm::NONE;
        if let Some(max_age_s) = max_age_s {
            let since = match holder.and_then(|holder| field(holder, "time")) {
                Some(time) => time,
                None => unchanged_since(&mut self.origin, state, path, now),
            };
            let stale = seconds_between(since, now) > max_age_s;
            alarm.raise(stale.then_some(Alarm::STALE));
        }
        alarm.raise(holder.and_then(input_alarm));
        if let (Some(table), Values::Double(x)) = (table, &values)
            && let [x] = x.as_slice()
        {
            alarm.raise(table.alarm.judge(*x));
        }
        alarm.raise(model_alarm(state, path, max_age_s));
        (values, alarm)
    }
}

/// Since when what the value at `path` came from is unchanged (as `origin` remembers it): the
/// object holding it, and for the `last` accumulator (`<name>/values/<key>/...`) the event
/// number of its key's result.
fn unchanged_since(
    origin: &mut Option<Origin>,
    state: &Value,
    path: &str,
    now: Timestamp,
) -> Timestamp {
    let null = Value::Null;
    let holder = parent(path).map_or(Some(state), |parent| state.pointer(parent));
    let holder = holder.unwrap_or(&null);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let event_number = match segments.as_slice() {
        [accumulator, "values", key, ..] => state
            .pointer(&format!("{accumulator}/event_number/{key}"))
            .unwrap_or(&null),
        _ => &null,
    };
    match origin {
        Some(seen)
            if identical(&seen.holder, holder) && identical(&seen.event_number, event_number) =>
        {
            seen.since
        }
        // Cloned only on a change: with a new result each period, once a period.
        _ => {
            *origin = Some(Origin {
                holder: holder.clone(),
                event_number: event_number.clone(),
                since: now,
            });
            now
        }
    }
}

/// Equal, NaN included: `==` would call a result holding a NaN (a rejected shot's size) changed
/// at every look, and it would never age.
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| identical(a, b))
        }
        (Value::Map(a), Value::Map(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, a), (kb, b))| ka == kb && identical(a, b))
        }
        (a, b) => a == b,
    }
}

/// The path of the object holding the value at `path`, if it is not the state itself.
fn parent(path: &str) -> Option<&str> {
    let path = path.trim_end_matches('/');
    path.rfind('/').map(|i| &path[..i])
}

/// A Unix-seconds number in `object`'s `key` as a time.
fn field(object: &Value, key: &str) -> Option<Timestamp> {
    let seconds = object.as_map()?.get(key)?.as_f64()?;
    Timestamp::from_nanosecond((seconds * 1e9) as i128).ok()
}

fn seconds_between(earlier: Timestamp, later: Timestamp) -> f64 {
    (later.as_nanosecond() - earlier.as_nanosecond()) as f64 * 1e-9
}

/// The alarm of the input beside the value (`pv_values`' `severity` and `status`), passed on.
fn input_alarm(holder: &Value) -> Option<Alarm> {
    let fields = holder.as_map()?;
    let severity = fields.get("severity")?.as_f64()?;
    let status = fields
        .get("status")
        .and_then(Value::as_f64)
        .unwrap_or(f64::from(status::SOFT));
    Some(Alarm {
        severity: severity.clamp(0.0, f64::from(severity::INVALID)) as u16,
        status: status.clamp(0.0, f64::from(u16::MAX)) as u16,
    })
}

/// For a model output (`.../outputs/<name>/...` beside `inputs` and `issues`): MINOR when an
/// input is outside the model's range, INVALID when an input is older than `max_age_s`.
fn model_alarm(state: &Value, path: &str, max_age_s: Option<f64>) -> Option<Alarm> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = segments.iter().position(|segment| *segment == "outputs")?;
    let evaluation = state.pointer(&segments[..at].join("/"))?.as_map()?;
    let Some(Value::Array(issues)) = evaluation.get("issues") else {
        return None;
    };
    let inputs = evaluation.get("inputs")?.as_map()?;
    let too_old = max_age_s.is_some_and(|max_age_s| {
        inputs.values().any(|input| {
            input
                .as_map()
                .and_then(|input| input.get("age_s")?.as_f64())
                .is_some_and(|age_s| age_s > max_age_s)
        })
    });
    if too_old {
        return Some(Alarm::STALE);
    }
    let out_of_range = issues.iter().any(|issue| {
        issue
            .as_map()
            .and_then(|issue| issue.get("kind"))
            .is_some_and(|kind| *kind == Value::from("out_of_range"))
    });
    out_of_range.then_some(Alarm::OUT_OF_MODEL_RANGE)
}

fn time_value(values: Values, alarm: Alarm, at: Timestamp) -> TimeValue {
    TimeValue {
        status: alarm.status,
        severity: alarm.severity,
        stamp: EpicsTime::from_timestamp(at),
        values,
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

/// The numbers at the path, scaled.
fn read(value: Option<&Value>, source: &PvSource) -> Result<Values, &'static str> {
    let value = value.ok_or("not in the state")?;
    let scale = source.table().map_or(1.0, |table| table.scale);
    match source.elements() {
        None => number(value)
            .map(|x| Values::Double(vec![x * scale]))
            .ok_or("not a number"),
        Some(elements) => {
            let Value::Array(items) = value else {
                return Err("not an array");
            };
            let newest = &items[items.len().saturating_sub(elements)..];
            newest
                .iter()
                .map(|item| match item {
                    Value::Null => Some(f64::NAN),
                    other => number(other).map(|x| x * scale),
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
    use std::sync::Arc;

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

    /// Severity and status.
    fn alarm(store: &PvStore, name: &str) -> (u16, u16) {
        let value = store.value(name).expect("served");
        (value.severity, value.status)
    }

    fn state(json: serde_json::Value) -> Arc<Value> {
        Arc::new(Value::from_serialize(&json).expect("a value"))
    }

    fn at(seconds: f64) -> Timestamp {
        Timestamp::from_nanosecond((seconds * 1e9) as i128).unwrap()
    }

    const INVALID_COMM: (u16, u16) = (severity::INVALID, status::COMM);
    const NO_ALARM: (u16, u16) = (severity::NO_ALARM, status::NO_ALARM);

    /// Issue #17 (probe 5e): result PVs answered searches on every network unless told not to.
    #[test]
    fn result_pvs_serve_loopback_unless_told_otherwise() {
        let quiet = config("[values]\n\"MEAN\" = \"last/det/0/mean\"");
        assert_eq!(quiet.server, "127.0.0.1");
        let told = config("server = \"0.0.0.0:5064\"\n[values]\n\"MEAN\" = \"x\"");
        assert_eq!(told.server, "0.0.0.0:5064");
    }

    /// The same PVs over PV Access: NTScalar with its metadata, NAME:HISTORY over both
    /// protocols, a table as NTTable and an image accumulator's frame as NTNDArray.
    #[test]
    fn the_same_pvs_are_served_over_pv_access_with_histories_tables_and_images() {
        use beamflow_pva::nt;
        use beamflow_pva::pvdata::{ArrayValue, Value as PvValue};
        let config = config(
            r#"
            prefix = "BF:"
            history = 2
            [values]
            "SIGMA" = { path = "last/x", units = "um", precision = 2, display = [0, 10], alarm = { high = 5 } }
            "STEPS" = { path = "scan/steps", columns = ["k", "sigma"] }
            "SCREEN" = { path = "image", image = true }
            "#,
        );
        let (store, pva) = (PvStore::new(), beamflow_pva::server::PvStore::new());
        let mut pvs = ResultPvs::new(&config, &store, Some(&pva));
        let sigma = pva.value("BF:SIGMA").expect("served over PVA");
        assert_eq!(sigma.id(), nt::NT_SCALAR);
        assert_eq!(
            sigma.value("display.units"),
            Some(&PvValue::String("um".into()))
        );
        assert_eq!(
            sigma.value("valueAlarm.highWarningLimit"),
            Some(&PvValue::Double(5.0))
        );
        assert_eq!(
            nt::alarm(&sigma, "alarm").map(|a| a.message),
            Some("UDF".to_owned())
        );
        let frame = Arc::new(Frame {
            event_number: beamflow_protocol::EventNumber(7),
            width: 3,
            height: 2,
            bin: 1,
            pixels: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        });
        let frames = |name: &str| (name == "image").then(|| Arc::clone(&frame));
        for (x, time) in [(1.0, 1.0), (6.0, 2.0), (2.0, 3.0)] {
            let state = state(serde_json::json!({
                "last": {"x": x},
                "scan": {"steps": [{"k": 1.0, "sigma": 2.0}, {"k": 2.0, "sigma": 3.0, "other": 0}]},
            }));
            pvs.update_at(&state, &frames, at(time));
        }
        let sigma = pva.value("BF:SIGMA").unwrap();
        assert_eq!(sigma.value("value"), Some(&PvValue::Double(2.0)));
        assert_eq!(
            nt::time_stamp(&sigma, "timeStamp").map(|t| t.seconds),
            Some(3)
        );
        let history = pva.value("BF:SIGMA:HISTORY").unwrap();
        assert_eq!(history.id(), nt::NT_SCALAR_ARRAY);
        assert_eq!(
            history.value("value"),
            Some(&PvValue::Array(ArrayValue::Double(vec![6.0, 2.0])))
        );
        assert_eq!(
            doubles(&store, "BF:SIGMA:HISTORY").0,
            [6.0, 2.0],
            "over CA too"
        );
        let steps = pva.value("BF:STEPS").unwrap();
        assert_eq!(steps.id(), nt::NT_TABLE);
        assert_eq!(
            steps.value("labels"),
            Some(&PvValue::Array(ArrayValue::String(vec![
                "k".into(),
                "sigma".into()
            ])))
        );
        assert_eq!(
            steps.value("value.sigma"),
            Some(&PvValue::Array(ArrayValue::Double(vec![2.0, 3.0])))
        );
        let screen = pva.value("BF:SCREEN").unwrap();
        let image = nt::ndarray_image(&screen).unwrap();
        assert_eq!(image.shape(), [2, 3]);
        assert_eq!(image.to_f64(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(
            store.value("BF:STEPS").is_none(),
            "tables are PV Access only"
        );
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
        let mut pvs = ResultPvs::new(&config, &store, None);
        assert_eq!(pvs.names().collect::<Vec<_>>(), ["BF:HIST", "BF:MEAN"]);
        let (value, severity) = doubles(&store, "BF:MEAN");
        assert!(value[0].is_nan());
        assert_eq!(
            severity,
            severity::INVALID,
            "invalid until the state has it"
        );

        pvs.update(
            &state(serde_json::json!({
                "last": {"det": [{"mean": 2.5}]},
                "history": {"values": {"mean": [1.0, 2.0, null, 4.0]}},
            })),
            |_| None,
        );
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
        let mut pvs = ResultPvs::new(&config, &store, None);
        pvs.update(&state(serde_json::json!({"a": "text"})), |_| None);
        assert_eq!(alarm(&store, "A"), (severity::INVALID, status::UDF));
        pvs.update(&state(serde_json::json!({"a": 7})), |_| None);
        assert_eq!(doubles(&store, "A"), (vec![7.0], 0));
        let mut watch = store.watch("A").expect("served");
        watch.mark_unchanged();
        pvs.update(&state(serde_json::json!({"a": 7})), |_| None);
        assert!(
            !watch.has_changed().expect("open"),
            "same value: nothing posted"
        );
        pvs.update(&state(serde_json::json!({"a": 8})), |_| None);
        assert!(watch.has_changed().expect("open"));
    }

    #[test]
    fn units_precision_and_limits_reach_the_served_metadata_and_scale_the_value() {
        let config = config(
            r#"
            [values]
            "EMITN" = { path = "fit/norm_emit", scale = 1e6, units = "µm", precision = 3, display = [0, 5], alarm = { high = 2, hihi = 4 } }
            "SIGMA" = { path = "x/sigma_um", display = [0, 1000], control = [10, 900] }
            "#,
        );
        let store = PvStore::new();
        let mut pvs = ResultPvs::new(&config, &store, None);
        let metadata = store.metadata("EMITN").expect("served");
        assert_eq!(metadata.units, "µm");
        assert_eq!(metadata.precision, 3);
        assert_eq!(
            metadata.display,
            Limits {
                low: 0.0,
                high: 5.0
            }
        );
        assert_eq!(
            metadata.control, metadata.display,
            "control defaults to display"
        );
        assert_eq!((metadata.alarm.high, metadata.alarm.hihi), (2.0, 4.0));
        assert!(metadata.alarm.low.is_nan() && metadata.alarm.lolo.is_nan());
        let sigma = store.metadata("SIGMA").expect("served");
        assert_eq!(
            sigma.control,
            Limits {
                low: 10.0,
                high: 900.0
            }
        );

        pvs.update(
            &state(serde_json::json!({"fit": {"norm_emit": 0.5e-6}})),
            |_| None,
        );
        let (value, _) = doubles(&store, "EMITN");
        assert!((value[0] - 0.5).abs() < 1e-12, "{value:?}");
    }

    #[test]
    fn alarm_limits_make_minor_and_major_as_an_ai_record_does() {
        let config = config(
            r#"
            [values]
            "X" = { path = "x", alarm = { lolo = -10, low = -5, high = 5, hihi = 10 } }
            "#,
        );
        let store = PvStore::new();
        let mut pvs = ResultPvs::new(&config, &store, None);
        for (x, expected) in [
            (0.0, NO_ALARM),
            (5.0, (severity::MINOR, status::HIGH)),
            (-5.0, (severity::MINOR, status::LOW)),
            (10.0, (severity::MAJOR, status::HIHI)),
            (-12.0, (severity::MAJOR, status::LOLO)),
            (4.9, NO_ALARM),
        ] {
            pvs.update(&state(serde_json::json!({ "x": x })), |_| None);
            assert_eq!(alarm(&store, "X"), expected, "x = {x}");
        }
    }

    /// `pv_values` gives each PV's `{value, severity, status, time}`: the time stamp ages the
    /// value, the alarm passes on.
    #[test]
    fn a_sample_older_than_max_age_is_invalid_and_the_change_is_posted_with_the_value_unchanged() {
        let config = config(
            r#"
            [values]
            "QE04" = { path = "last/values/qe04/value", units = "kG", max_age_s = 2 }
            "#,
        );
        let store = PvStore::new();
        let mut pvs = ResultPvs::new(&config, &store, None);
        let sample = |time: f64, severity: u16, status: u16| {
            state(serde_json::json!({"last": {"values": {"qe04": {
                "value": -3.2, "severity": severity, "status": status, "time": time, "pulse_id": null
            }}}}))
        };
        pvs.update_at(&sample(100.0, 0, 0), &|_| None, at(101.0));
        assert_eq!(alarm(&store, "QE04"), NO_ALARM);
        let mut watch = store.watch("QE04").expect("served");
        watch.mark_unchanged();
        // The same state, later: no new sample came.
        pvs.update_at(&sample(100.0, 0, 0), &|_| None, at(102.5));
        assert!(
            watch.has_changed().expect("open"),
            "a change of alarm is posted"
        );
        assert_eq!(doubles(&store, "QE04").0, [-3.2], "the value stays");
        assert_eq!(alarm(&store, "QE04"), INVALID_COMM);
        // A fresh sample with the IOC's own alarm: passed on.
        pvs.update_at(&sample(102.4, 1, status::HIGH), &|_| None, at(102.5));
        assert_eq!(alarm(&store, "QE04"), (severity::MINOR, status::HIGH));
        pvs.update_at(&sample(102.4, 0, 0), &|_| None, at(102.5));
        assert_eq!(alarm(&store, "QE04"), NO_ALARM);
    }

    /// A result with no time stamp of its own (a beam size) ages from when the reducer last
    /// changed it: a source that is gone makes no new results.
    #[test]
    fn a_result_that_stops_changing_turns_invalid_after_max_age() {
        let config = config(
            r#"
            [values]
            "SIGMA_X" = { path = "last/values/x/sigma_um", max_age_s = 2 }
            "#,
        );
        let store = PvStore::new();
        let mut pvs = ResultPvs::new(&config, &store, None);
        let result = |sigma: f64, event: u64| {
            state(serde_json::json!({"last": {
                "values": {"x": {"sigma_um": sigma, "centroid_um": 1.0}},
                "event_number": {"x": event},
            }}))
        };
        pvs.update_at(&result(30.0, 1), &|_| None, at(10.0));
        pvs.update_at(&result(30.0, 1), &|_| None, at(11.9));
        assert_eq!(alarm(&store, "SIGMA_X"), NO_ALARM);
        pvs.update_at(&result(30.0, 1), &|_| None, at(12.1));
        assert_eq!(alarm(&store, "SIGMA_X"), INVALID_COMM);
        // A new result with the very same numbers is fresh (its event number moved).
        pvs.update_at(&result(30.0, 2), &|_| None, at(12.2));
        assert_eq!(alarm(&store, "SIGMA_X"), NO_ALARM);
        pvs.update_at(&result(31.0, 2), &|_| None, at(14.0));
        pvs.update_at(&result(31.0, 2), &|_| None, at(15.9));
        assert_eq!(alarm(&store, "SIGMA_X"), NO_ALARM, "changed at 14 s");
    }

    #[test]
    fn a_result_holding_a_nan_still_ages() {
        let config = config(
            r#"
            [values]
            "SIGMA_Y" = { path = "last/values/y/sigma_um", max_age_s = 2 }
            "#,
        );
        let store = PvStore::new();
        let mut pvs = ResultPvs::new(&config, &store, None);
        // Built by hand: serde_json has no NaN to give.
        let map = |key: &str, value: Value| Value::Map([(key.to_owned(), value)].into());
        let y = Value::Map(
            [
                ("sigma_um".to_owned(), Value::Float(30.0)),
                ("snr".to_owned(), Value::Float(f64::NAN)),
            ]
            .into(),
        );
        let with_nan = map("last", map("values", map("y", y)));
        pvs.update_at(&with_nan, &|_| None, at(10.0));
        pvs.update_at(&with_nan, &|_| None, at(12.5));
        assert_eq!(alarm(&store, "SIGMA_Y"), INVALID_COMM);
    }

    /// The `surrogate` analysis' evaluation: outputs beside the inputs as used and the issues.
    #[test]
    fn a_model_output_is_minor_while_an_input_is_out_of_range_and_invalid_on_a_stale_input() {
        let config = config(
            r#"
            [values]
            "MODEL:XRMS" = { path = "last/values/outputs/OTRS:IN20:571:XRMS/value", units = "µm", max_age_s = 5 }
            "#,
        );
        let store = PvStore::new();
        let mut pvs = ResultPvs::new(&config, &store, None);
        let evaluation = |issues: serde_json::Value, qe04: serde_json::Value, event: u64| {
            state(serde_json::json!({"last": {
                "values": {
                    "outputs": {"OTRS:IN20:571:XRMS": {"value": 400.0, "unit": "um"}},
                    "inputs": {"QUAD:IN20:525:BCTRL": qe04},
                    "issues": issues,
                },
                "event_number": {"outputs": event, "inputs": event, "issues": event},
            }}))
        };
        let live = serde_json::json!({"value": -3.2, "unit": "kG", "provenance": "live"});
        pvs.update_at(
            &evaluation(serde_json::json!([]), live.clone(), 1),
            &|_| None,
            at(1.0),
        );
        assert_eq!(alarm(&store, "MODEL:XRMS"), NO_ALARM);
        let out_of_range = serde_json::json!([{
            "kind": "out_of_range", "name": "QUAD:IN20:525:BCTRL", "value": 9.0, "low": -7.0, "high": 0.0
        }]);
        pvs.update_at(&evaluation(out_of_range, live, 2), &|_| None, at(1.1));
        assert_eq!(
            alarm(&store, "MODEL:XRMS"),
            (severity::MINOR, status::HW_LIMIT)
        );
        let stale =
            serde_json::json!({"value": -3.2, "unit": "kG", "provenance": "stale", "age_s": 12.0});
        pvs.update_at(
            &evaluation(serde_json::json!([]), stale, 3),
            &|_| None,
            at(1.2),
        );
        assert_eq!(alarm(&store, "MODEL:XRMS"), INVALID_COMM);
    }

    #[test]
    fn table_mistakes_are_refused_in_the_operators_words() {
        let refused = |table: &str| {
            toml::from_str::<ResultPvsConfig>(&format!("[values]\nA = {table}\n"))
                .expect_err("refused")
                .message()
                .to_owned()
        };
        assert_eq!(
            refused(r#"{ path = "a", units = "mm·mrad" }"#),
            r#"units "mm·mrad" is 8 bytes; Channel Access carries at most 7"#
        );
        assert!(
            refused(r#"{ path = "a", unit = "mm" }"#)
                .starts_with("unknown field `unit`, expected one of `path`"),
            "a misspelt key is named, not \"did not match any variant\""
        );
        assert_eq!(
            refused(r#"{ path = "a", alarm = { low = 5, high = 1 } }"#),
            "alarm.low = 5 is above alarm.high = 1: limits go lolo ≤ low ≤ high ≤ hihi"
        );
        assert_eq!(
            refused(r#"{ path = "a", elements = 5, alarm = { high = 1 } }"#),
            "alarm limits apply to scalars; a waveform (elements) has none"
        );
        assert_eq!(
            refused(r#"{ path = "a", display = [5, 1] }"#),
            "display = [5, 1] must be finite and low ≤ high"
        );
        assert_eq!(
            refused(r#"{ path = "a", max_age_s = 0 }"#),
            "max_age_s must be a positive number of seconds, not 0"
        );
        assert!(
            refused("3").starts_with("invalid type: integer `3`, expected a state path string")
        );
    }
}
