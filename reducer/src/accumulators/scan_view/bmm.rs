//! NSLS-II BMM's control messages, which BMM's plans send beside the documents (`("bmm",
//! {"linescan": "start", "motor": ..., "detector": ...})`), mapped onto the scan views so the
//! plans keep working unchanged: a `start` says how to plot the runs that start after it,
//! until its `stop`. What BMM's plot worker draws from each:
//!
//! | message | x | y |
//! |---|---|---|
//! | `linescan` | `motor` | the `detector`'s column (`It` → `It/I0`, ...) |
//! | `timescan` | time | the `detector`'s column |
//! | `areascan` | a map of `slow_motor` × `fast_motor` over their steps | the `detector`'s column |
//! | `xafsscan` | the mono energy | the `mode`'s column (transmission → ln(I0/It), ...) |
//!
//! The columns are the `bluesky` analysis's signals; `[accumulators.<name>.bmm]` says which
//! (`detectors`, `modes`, `energy`), by default the signals `examples/bluesky.toml` defines.
//! Other messages (`close`, alignment fit plots, file chores) are counted and kept as the last
//! message, nothing more.

use std::collections::BTreeMap;

use beamflow_protocol::Value;
use serde::Deserialize;

use super::Grid;

/// `[accumulators.<name>.bmm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmmConfig {
    /// A `detector` of `linescan`/`timescan`/`areascan` → the column plotted.
    #[serde(default = "default_detectors")]
    pub detectors: BTreeMap<String, String>,
    /// An `xafsscan` `mode` → the column plotted.
    #[serde(default = "default_modes")]
    pub modes: BTreeMap<String, String>,
    /// The mono energy's data key, x of an `xafsscan`.
    #[serde(default = "default_energy")]
    pub energy: String,
}

impl Default for BmmConfig {
    fn default() -> Self {
        Self {
            detectors: default_detectors(),
            modes: default_modes(),
            energy: default_energy(),
        }
    }
}

fn pairs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// What BMM's plot worker divides by what, as the signals of `examples/bluesky.toml`.
fn default_detectors() -> BTreeMap<String, String> {
    pairs(&[
        ("I0", "I0"),
        ("It", "It_I0"),
        ("Trans", "It_I0"),
        ("Ir", "Ir_It"),
        ("Iy", "Iy_I0"),
        ("If", "mu_f"),
        ("Xs", "mu_f"),
        ("Fluo", "mu_f"),
    ])
}

fn default_modes() -> BTreeMap<String, String> {
    pairs(&[
        ("transmission", "mu_t"),
        ("fluorescence", "mu_f"),
        ("reference", "mu_r"),
        ("yield", "Iy_I0"),
    ])
}

fn default_energy() -> String {
    "dcm_energy".to_owned()
}

/// How BMM asked to plot a run.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plot {
    /// `linescan`, `timescan`, `areascan` or `xafsscan`.
    pub(super) kind: &'static str,
    /// The x column (`time` for a time scan).
    pub(super) x: String,
    /// The y column.
    pub(super) y: String,
    /// An area scan's map.
    pub(super) grid: Option<(Grid, [String; 2])>,
    /// The start message, for the files (`element`, `edge`, `filename`, `sample`, ...).
    pub(super) message: Value,
}

impl Plot {
    /// As the run's view shows it.
    pub(super) fn view(&self) -> Value {
        Value::Map(BTreeMap::from([
            ("kind".to_owned(), Value::Text(self.kind.to_owned())),
            ("x".to_owned(), Value::Text(self.x.clone())),
            ("y".to_owned(), Value::Text(self.y.clone())),
            ("message".to_owned(), self.message.clone()),
        ]))
    }
}

/// The control messages seen, and the plot they ask for now.
#[derive(Debug, Default)]
pub(super) struct Bmm {
    /// The plot of runs starting now, from the last `start` without its `stop`.
    pub(super) current: Option<Plot>,
    /// Messages by their first key (`linescan`, `close`, ...).
    pub(super) counts: BTreeMap<String, u64>,
    /// The newest message.
    pub(super) last: Option<Value>,
    /// Why the newest `start` could not be used.
    pub(super) error: Option<String>,
}

const SCANS: [&str; 4] = ["linescan", "timescan", "areascan", "xafsscan"];

impl Bmm {
    /// Applies a control message.
    pub(super) fn control(&mut self, message: &Value, config: &BmmConfig) {
        self.last = Some(message.clone());
        let Some(fields) = message.as_map() else {
            return;
        };
        let Some((kind, Value::Text(action))) = fields
            .iter()
            .find(|(key, _)| SCANS.contains(&key.as_str()))
            .or_else(|| fields.iter().next())
        else {
            if let Some(key) = fields.keys().next() {
                *self.counts.entry(key.clone()).or_default() += 1;
            }
            return;
        };
        *self.counts.entry(kind.clone()).or_default() += 1;
        let Some(kind) = SCANS.into_iter().find(|scan| scan == kind) else {
            return;
        };
        match action.as_str() {
            "start" => match plot(kind, message, config) {
                Ok(plot) => {
                    self.current = Some(plot);
                    self.error = None;
                }
                Err(error) => {
                    self.current = None;
                    self.error = Some(error);
                }
            },
            "stop" | "end" => self.current = None,
            _ => {}
        }
    }

    /// As the view shows it.
    pub(super) fn view(&self) -> Value {
        Value::Map(BTreeMap::from([
            (
                "current".to_owned(),
                self.current.as_ref().map_or(Value::Null, Plot::view),
            ),
            (
                "counts".to_owned(),
                Value::Map(
                    self.counts
                        .iter()
                        .map(|(k, n)| (k.clone(), Value::Int(*n as i64)))
                        .collect(),
                ),
            ),
            ("last".to_owned(), self.last.clone().unwrap_or_default()),
            (
                "error".to_owned(),
                self.error.clone().map_or(Value::Null, Value::Text),
            ),
        ]))
    }
}

fn plot(kind: &'static str, message: &Value, config: &BmmConfig) -> Result<Plot, String> {
    let text = |key: &str| match message.pointer(key) {
        Some(Value::Text(text)) => Ok(text.clone()),
        _ => Err(format!("{kind} start without {key}")),
    };
    let number = |key: &str| match message.pointer(key) {
        Some(Value::Int(i)) => Ok(*i as f64),
        Some(Value::Float(x)) => Ok(*x),
        None | Some(Value::Null) if key.ends_with("initial") => Ok(0.0),
        _ => Err(format!("{kind} start without the number {key}")),
    };
    let column = |table: &BTreeMap<String, String>, name: String| {
        table.get(&name).cloned().unwrap_or(name)
    };
    let plot = |x: String, y: String, grid| Plot {
        kind,
        x,
        y,
        grid,
        message: message.clone(),
    };
    Ok(match kind {
        "linescan" => plot(
            text("motor")?,
            column(&config.detectors, text("detector")?),
            None,
        ),
        "timescan" => plot(
            "time".to_owned(),
            column(&config.detectors, text("detector")?),
            None,
        ),
        "areascan" => {
            let axis = |side: &str| -> Result<(String, [f64; 2], usize), String> {
                let initial = number(&format!("{side}_initial"))?;
                let steps = number(&format!("{side}_steps"))?;
                if !(1.0..=1e6).contains(&steps) {
                    return Err(format!("{kind} start with {side}_steps = {steps}"));
                }
                Ok((
                    text(&format!("{side}_motor"))?,
                    [
                        initial + number(&format!("{side}_start"))?,
                        initial + number(&format!("{side}_stop"))?,
                    ],
                    steps as usize,
                ))
            };
            let (slow, slow_extent, slow_steps) = axis("slow")?;
            let (fast, fast_extent, fast_steps) = axis("fast")?;
            let grid = Grid {
                shape: [slow_steps, fast_steps],
                extents: [slow_extent, fast_extent],
            };
            plot(
                fast.clone(),
                column(&config.detectors, text("detector")?),
                Some((grid, [slow, fast])),
            )
        }
        _ => plot(
            config.energy.clone(),
            column(&config.modes, text("mode")?),
            None,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: serde_json::Value) -> Value {
        Value::from_serialize(&value).unwrap()
    }

    #[test]
    fn a_start_sets_the_plot_until_its_stop() {
        let mut bmm = Bmm::default();
        let config = BmmConfig::default();
        bmm.control(
            &json(serde_json::json!({"linescan": "start", "motor": "xafs_y", "detector": "It",
                "fluo_detector": null})),
            &config,
        );
        let plot = bmm.current.clone().unwrap();
        assert_eq!((plot.kind, plot.x.as_str(), plot.y.as_str()), ("linescan", "xafs_y", "It_I0"));
        bmm.control(&json(serde_json::json!({"linescan": "stop"})), &config);
        assert_eq!(bmm.current, None);
        bmm.control(
            &json(serde_json::json!({"xafsscan": "start", "element": "Fe", "edge": "K",
                "mode": "fluorescence", "filename": "FeS2"})),
            &config,
        );
        let plot = bmm.current.clone().unwrap();
        assert_eq!((plot.x.as_str(), plot.y.as_str()), ("dcm_energy", "mu_f"));
        bmm.control(&json(serde_json::json!({"close": "all"})), &config);
        assert_eq!(bmm.counts["close"], 1);
        assert!(bmm.current.is_some(), "close shuts figures, not the scan");
    }

    #[test]
    fn an_area_scan_maps_its_steps_around_the_initial_positions() {
        let mut bmm = Bmm::default();
        bmm.control(
            &json(serde_json::json!({"areascan": "start", "slow_motor": "xafs_y",
                "slow_start": -1, "slow_stop": 1, "slow_steps": 3, "slow_initial": 10.0,
                "fast_motor": "xafs_x", "fast_start": -2.0, "fast_stop": 2.0, "fast_steps": 5,
                "fast_initial": 0, "detector": "If"})),
            &BmmConfig::default(),
        );
        let plot = bmm.current.unwrap();
        let (grid, [slow, fast]) = plot.grid.unwrap();
        assert_eq!((slow.as_str(), fast.as_str()), ("xafs_y", "xafs_x"));
        assert_eq!(grid.shape, [3, 5]);
        assert_eq!(grid.extents, [[9.0, 11.0], [-2.0, 2.0]]);
        assert_eq!(plot.y, "mu_f");
    }

    #[test]
    fn a_start_missing_what_it_needs_says_so_and_plots_nothing() {
        let mut bmm = Bmm::default();
        bmm.control(
            &json(serde_json::json!({"linescan": "start", "detector": "It"})),
            &BmmConfig::default(),
        );
        assert_eq!(bmm.current, None);
        assert_eq!(bmm.error.as_deref(), Some("linescan start without motor"));
    }
}
