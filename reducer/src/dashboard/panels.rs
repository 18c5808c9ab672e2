//! What the page shows: one [`Panel`] per accumulator (its kind declares which, through
//! [`AccumulatorKind::panel`](crate::AccumulatorKind::panel)), one what-if per surrogate model,
//! and what each panel is sent of the state on every update.

use std::collections::BTreeMap;

use beamflow_protocol::Value;
use serde::Serialize;

/// Rows of a history sent per update: a page that missed more re-fetches the whole history.
pub const HISTORY_TAIL: usize = 30;

/// Rows of a table, at most: `last` can hold anything, the page shows its scalars.
const TABLE_ROWS: usize = 500;

/// How deep a table looks into nested results for scalars (`otr2/0/mean` is three deep).
const TABLE_DEPTH: usize = 4;

/// How an accumulator's view is shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Panel {
    /// A time-series chart of the columns, times in `time_zone` (the browser's when `None`).
    History {
        /// The columns, each a series.
        columns: Vec<String>,
        /// An IANA time zone.
        time_zone: Option<String>,
    },
    /// The latest frame of a screen, served as PNG (the entry's `png`), with the beam drawn
    /// on it and its projections.
    Image {},
    /// σ² against quad strength per plane, with the fit.
    QuadScan {},
    /// The latest scalars with their alarm state.
    Table {},
    /// A surrogate model's what-if form.
    WhatIf {
        /// The model's HTTP resource.
        model: String,
        /// Model output → the state path of the measured value it predicts.
        measured: BTreeMap<String, String>,
    },
    /// Bluesky runs: the latest run's plot (a line per plotted field with its PeakStats, or
    /// the grid), and the list of runs to pick an earlier one from.
    ScanView {},
    /// The view as JSON: for kinds without a panel of their own.
    Json {},
}

impl Panel {
    /// The view an accumulator of this panel contributes to an update; `None` when the panel
    /// takes nothing from the state (a what-if).
    pub fn update(&self, view: &Value) -> Option<Value> {
        match self {
            Panel::History { .. } => Some(history_tail(view)),
            Panel::Table {} => Some(table(view)),
            Panel::WhatIf { .. } => None,
            Panel::ScanView {} => Some(scan_view_update(view)),
            Panel::Image { .. } | Panel::QuadScan {} | Panel::Json {} => Some(view.clone()),
        }
    }
}

/// One panel of the page: what [`GET /api/v1/dashboard`](super) lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PanelEntry {
    /// The accumulator's (or model's) name.
    pub name: String,
    /// The heading.
    pub title: String,
    /// Where its view is in the state tree (`GET /api/v1/result/{path}`).
    pub path: String,
    /// How it is shown.
    #[serde(flatten)]
    pub panel: Panel,
    /// Where an image panel's PNG is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
}

impl PanelEntry {
    /// The panel of the accumulator `name`, whose view is at the top of the state tree.
    pub fn accumulator(name: &str, panel: Panel) -> Self {
        Self {
            name: name.to_owned(),
            title: name.to_owned(),
            path: name.to_owned(),
            png: matches!(panel, Panel::Image {}).then(|| format!("/api/v1/image/{name}.png")),
            panel,
        }
    }
}

/// The runs' list (`uid`, `scan_id`, `plan_name`, `status`) and the latest run whole, as
/// `{order, latest, late, runs: {uid: summary}, run: view}`: a page fetches an earlier run from
/// `/api/v1/result/<name>/runs/<uid>` when asked, instead of every run on every update.
fn scan_view_update(view: &Value) -> Value {
    let keys = ["uid", "scan_id", "plan_name", "status"];
    let runs = view
        .pointer("runs")
        .and_then(Value::as_map)
        .map(|runs| {
            runs.iter()
                .map(|(uid, run)| {
                    let summary = keys
                        .iter()
                        .map(|key| {
                            (
                                (*key).to_owned(),
                                run.pointer(key).cloned().unwrap_or_default(),
                            )
                        })
                        .collect();
                    (uid.clone(), Value::Map(summary))
                })
                .collect()
        })
        .unwrap_or_default();
    let latest = match view.pointer("latest") {
        Some(Value::Text(uid)) => view.pointer("runs").and_then(|runs| match runs {
            Value::Map(runs) => runs.get(uid).cloned(),
            _ => None,
        }),
        _ => None,
    };
    Value::Map(BTreeMap::from([
        (
            "order".to_owned(),
            view.pointer("order").cloned().unwrap_or_default(),
        ),
        (
            "latest".to_owned(),
            view.pointer("latest").cloned().unwrap_or_default(),
        ),
        (
            "late".to_owned(),
            view.pointer("late").cloned().unwrap_or_default(),
        ),
        ("runs".to_owned(), Value::Map(runs)),
        ("run".to_owned(), latest.unwrap_or_default()),
    ]))
}

/// The history's newest [`HISTORY_TAIL`] rows: every array of the view cut to its tail.
fn history_tail(view: &Value) -> Value {
    match view {
        Value::Array(rows) => {
            Value::Array(rows[rows.len().saturating_sub(HISTORY_TAIL)..].to_vec())
        }
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(key, value)| (key.clone(), history_tail(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A `last` view as rows of scalars: `{rows: [{key, value, severity, status, time,
/// event_number, source}]}`. A PV's result (`{value, severity, status, time}`) is one row with
/// its alarm; `source` is the top-level key (the stream, for a PV), which the page matches with
/// the PVs' connection states.
fn table(view: &Value) -> Value {
    let mut rows = Vec::new();
    let events = view.pointer("event_number").and_then(Value::as_map);
    if let Some(Value::Map(values)) = view.pointer("values") {
        for (key, value) in values {
            let event = events.and_then(|events| events.get(key)).cloned();
            collect_rows(key, key, value, event.as_ref(), 0, &mut rows);
        }
    }
    Value::Map([("rows".to_owned(), Value::Array(rows))].into())
}

fn collect_rows(
    source: &str,
    key: &str,
    value: &Value,
    event: Option<&Value>,
    depth: usize,
    rows: &mut Vec<Value>,
) {
    if rows.len() >= TABLE_ROWS || depth > TABLE_DEPTH {
        return;
    }
    let row = |value: Value, alarm: Option<&BTreeMap<String, Value>>| {
        let field = |name: &str| {
            alarm
                .and_then(|map| map.get(name))
                .cloned()
                .unwrap_or_default()
        };
        Value::Map(
            [
                ("key".to_owned(), Value::from(key)),
                ("value".to_owned(), value),
                ("severity".to_owned(), field("severity")),
                ("status".to_owned(), field("status")),
                ("time".to_owned(), field("time")),
                (
                    "event_number".to_owned(),
                    event.cloned().unwrap_or_default(),
                ),
                ("source".to_owned(), Value::from(source)),
            ]
            .into(),
        )
    };
    match value {
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => rows.push(row(value.clone(), None)),
        // Labels inside results (a model input's unit and provenance) are not readings.
        Value::Text(_) | Value::Null if depth > 0 => {}
        Value::Text(_) | Value::Null => rows.push(row(value.clone(), None)),
        Value::Map(map) if map.contains_key("value") && map.contains_key("severity") => {
            if is_scalar(&map["value"]) {
                rows.push(row(map["value"].clone(), Some(map)));
            }
        }
        Value::Map(map) => {
            for (child, value) in map {
                let key = format!("{key}/{child}");
                collect_rows(source, &key, value, event, depth + 1, rows);
            }
        }
        // Short lists (a stream's statistics per frame) are rows; long ones are data, not a
        // table's business.
        Value::Array(items) if items.len() <= 4 => {
            for (i, value) in items.iter().enumerate() {
                let key = format!("{key}/{i}");
                collect_rows(source, &key, value, event, depth + 1, rows);
            }
        }
        Value::Array(_) | Value::Bytes(_) => {}
    }
}

fn is_scalar(value: &Value) -> bool {
    matches!(
        value,
        Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Text(_) | Value::Null
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: &Value) -> serde_json::Value {
        serde_json::to_value(value).unwrap()
    }

    #[test]
    fn a_history_update_is_the_tail_of_every_column() {
        let rows = (0..120).map(|i| i as f64).collect::<Vec<_>>();
        let view = Value::Map(
            [
                ("event_number".to_owned(), Value::from(rows.clone())),
                (
                    "values".to_owned(),
                    Value::Map([("a".to_owned(), Value::from(rows))].into()),
                ),
                ("time_zone".to_owned(), Value::from("UTC")),
            ]
            .into(),
        );
        let panel = Panel::History {
            columns: vec!["a".to_owned()],
            time_zone: None,
        };
        let update = json(&panel.update(&view).unwrap());
        let events = update["event_number"].as_array().unwrap();
        assert_eq!(events.len(), HISTORY_TAIL);
        assert_eq!(events[0], 90.0);
        assert_eq!(
            update["values"]["a"].as_array().unwrap().len(),
            HISTORY_TAIL
        );
        assert_eq!(update["time_zone"], "UTC");
    }

    #[test]
    fn a_table_has_one_row_per_scalar_and_pvs_keep_their_alarm() {
        let view: serde_json::Value = serde_json::json!({
            "values": {
                "qe04": {"value": -3.2, "severity": 1, "status": 3, "time": 17.5, "pulse_id": 4},
                "otr2": [{"mean": 100.5, "shape": [480, 640], "dtype": "uint16"}],
                "accepted": true,
                "curve": [1, 2, 3, 4, 5, 6],
                "a/b": 1
            },
            "event_number": {"qe04": 7, "otr2": 8, "accepted": 8, "curve": 8, "a/b": 9}
        });
        let view = Value::from_serialize(&view).unwrap();
        let update = json(&Panel::Table {}.update(&view).unwrap());
        let rows = update["rows"].as_array().unwrap();
        let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "a/b",
                "accepted",
                "otr2/0/mean",
                "otr2/0/shape/0",
                "otr2/0/shape/1",
                "qe04"
            ]
        );
        let qe04 = &rows[5];
        assert_eq!(
            (
                &qe04["value"],
                &qe04["severity"],
                &qe04["status"],
                &qe04["time"]
            ),
            (&(-3.2).into(), &1.into(), &3.into(), &17.5.into())
        );
        assert_eq!(
            (&qe04["event_number"], &qe04["source"]),
            (&7.into(), &"qe04".into())
        );
        assert_eq!(rows[0]["event_number"], 9);
        assert_eq!(rows[2]["source"], "otr2");
        assert_eq!(rows[2]["severity"], serde_json::Value::Null);
    }

    #[test]
    fn panels_serialize_with_their_kind() {
        let entry = PanelEntry::accumulator(
            "beam",
            Panel::History {
                columns: vec!["x".to_owned()],
                time_zone: Some("America/Los_Angeles".to_owned()),
            },
        );
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            serde_json::json!({"name": "beam", "title": "beam", "path": "beam", "kind": "history",
                "columns": ["x"], "time_zone": "America/Los_Angeles"})
        );
        let entry = PanelEntry::accumulator("quad_scan", Panel::QuadScan {});
        assert_eq!(serde_json::to_value(&entry).unwrap()["kind"], "quad_scan");
    }
}
