//! Each run's plot as a PNG and its data as a column text file (XDI for BMM's `xafsscan`),
//! written at its stop into the `snapshots` folder: what BMM's plot and file workers leave in
//! the proposal folder, without matplotlib.
//!
//! A thread of their own renders and writes them, so a slow or full disk never holds up the
//! reducer: stops queue (16 at most; more are counted as dropped), files appear under their
//! final names only once whole, and a failure is counted, logged once per kind of error, and
//! shown in the view, while the scan goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use beamflow_protocol::Value;
use tracing::warn;

use crate::column_file::{self, Column, XdiFields};
use crate::plot::{self, LinePlot, MapPlot, Marker, Series};

/// Stops waiting for their files at most.
const QUEUE: usize = 16;
/// Newest files named in the view.
const LAST: usize = 10;
/// The PNG's size, as BMM's snapshots.
const SIZE: (u32, u32) = (900, 560);

/// The writer and what it did.
#[derive(Debug)]
pub(super) struct Snapshots {
    jobs: SyncSender<Value>,
    state: Arc<Mutex<State>>,
    folder: PathBuf,
}

#[derive(Debug, Default)]
struct State {
    written: u64,
    failed: u64,
    dropped: u64,
    last: Vec<String>,
    error: Option<String>,
}

impl Snapshots {
    /// Starts the writer for `folder`.
    pub(super) fn start(folder: PathBuf) -> Result<Self, String> {
        let (jobs, queue) = sync_channel::<Value>(QUEUE);
        let state = Arc::new(Mutex::new(State::default()));
        let writer_state = Arc::clone(&state);
        let writer_folder = folder.clone();
        std::thread::Builder::new()
            .name("snapshots".to_owned())
            .spawn(move || {
                for run in queue {
                    let written = write_files(&writer_folder, &run);
                    let mut state = writer_state.lock().unwrap_or_else(|e| e.into_inner());
                    match written {
                        Ok(paths) => {
                            state.written += 1;
                            state.last.extend(paths);
                            let excess = state.last.len().saturating_sub(LAST);
                            state.last.drain(..excess);
                        }
                        Err(error) => {
                            state.failed += 1;
                            if state.error.as_ref() != Some(&error) {
                                warn!(folder = %writer_folder.display(), "A run's snapshot was not written: {error}");
                            }
                            state.error = Some(error);
                        }
                    }
                }
            })
            .map_err(|error| format!("cannot start the snapshot writer: {error}"))?;
        Ok(Self {
            jobs,
            state,
            folder,
        })
    }

    /// Queues a stopped run's files, from its view.
    pub(super) fn write(&self, view: &Value) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.jobs.try_send(view.clone())
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.dropped += 1;
        }
    }

    /// What was written, as the view shows it.
    pub(super) fn view(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let int = |n: u64| Value::Int(n as i64);
        Value::Map(BTreeMap::from([
            (
                "folder".to_owned(),
                Value::Text(self.folder.display().to_string()),
            ),
            ("written".to_owned(), int(state.written)),
            ("failed".to_owned(), int(state.failed)),
            ("dropped".to_owned(), int(state.dropped)),
            (
                "last".to_owned(),
                Value::Array(state.last.iter().cloned().map(Value::Text).collect()),
            ),
            (
                "error".to_owned(),
                state.error.clone().map_or(Value::Null, Value::Text),
            ),
        ]))
    }
}

fn text<'a>(view: &'a Value, key: &str) -> Option<&'a str> {
    match view.pointer(key) {
        Some(Value::Text(text)) => Some(text),
        _ => None,
    }
}

fn number(value: &Value) -> f64 {
    match value {
        Value::Int(i) => *i as f64,
        Value::Float(x) => *x,
        _ => f64::NAN,
    }
}

fn numbers(value: Option<&Value>) -> Vec<f64> {
    match value {
        Some(Value::Array(items)) => items.iter().map(number).collect(),
        _ => Vec::new(),
    }
}

/// `<filename or plan>-<scan id>-<uid's first 8>`, in characters any file system takes.
fn stem(view: &Value) -> String {
    let name = text(view, "bmm/message/filename")
        .or_else(|| text(view, "plan_name"))
        .unwrap_or("run");
    let scan_id = view
        .pointer("scan_id")
        .map(number)
        .filter(|n| n.is_finite())
        .map_or("x".to_owned(), |n| format!("{n}"));
    let uid: String = text(view, "uid").unwrap_or("").chars().take(8).collect();
    format!("{name}-{scan_id}-{uid}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An ISO 8601 time from Unix seconds.
fn iso(seconds: Option<&Value>) -> Option<String> {
    let seconds = number(seconds?);
    let nanos = (seconds * 1e9).round();
    nanos
        .is_finite()
        .then(|| jiff::Timestamp::from_nanosecond(nanos as i128).ok())
        .flatten()
        .map(|t| t.to_string())
}

/// Renders and writes a run's PNG and data file; their paths.
fn write_files(folder: &Path, view: &Value) -> Result<Vec<String>, String> {
    let stem = stem(view);
    let png = render(view).map_err(|error| format!("{stem}.png: {error}"))?;
    let (extension, data) = data_file(view).map_err(|error| format!("{stem}: {error}"))?;
    let mut paths = Vec::new();
    for (name, bytes) in [
        (format!("{stem}.png"), png),
        (format!("{stem}.{extension}"), data.into_bytes()),
    ] {
        let path = column_file::write_atomically(folder, &name, &bytes)
            .map_err(|error| format!("{name}: {error}"))?;
        paths.push(path.display().to_string());
    }
    Ok(paths)
}

fn title(view: &Value) -> String {
    let scan_id = view.pointer("scan_id").map(number).unwrap_or(f64::NAN);
    let uid: String = text(view, "uid").unwrap_or("").chars().take(8).collect();
    format!(
        "scan {} - {} - {} - {}",
        if scan_id.is_finite() { format!("{scan_id}") } else { "?".to_owned() },
        text(view, "plan_name").unwrap_or("?"),
        uid,
        text(view, "status").unwrap_or("?"),
    )
}

fn render(view: &Value) -> Result<Vec<u8>, String> {
    let title = title(view);
    let stream = text(view, "stream").unwrap_or("primary");
    let columns = view.pointer(&format!("streams/{stream}/columns"));
    let column = |key: &str| numbers(columns.and_then(|c| c.pointer(key)));
    if let Some(grid @ Value::Map(_)) = view.pointer("grid") {
        let shape = numbers(grid.pointer("shape"));
        let extents = numbers(grid.pointer("extents/0"))
            .into_iter()
            .chain(numbers(grid.pointer("extents/1")))
            .collect::<Vec<_>>();
        let values = numbers(grid.pointer("values"));
        let [rows, cols] =
            <[f64; 2]>::try_from(shape).map_err(|_| "a grid without its shape".to_owned())?;
        let [slow0, slow1, fast0, fast1] =
            <[f64; 4]>::try_from(extents).map_err(|_| "a grid without its extents".to_owned())?;
        let (x_label, y_label) = (
            text(grid, "fast").unwrap_or("fast"),
            text(grid, "slow").unwrap_or("slow"),
        );
        let map_title = format!("{title} - {}", text(grid, "signal").unwrap_or(""));
        return plot::map_png(
            &MapPlot {
                title: &map_title,
                x_label,
                y_label,
                shape: [rows as usize, cols as usize],
                extent: [fast0, fast1, slow0, slow1],
                values: &values,
            },
            SIZE.0,
            SIZE.1,
        )
        .map_err(|error| error.to_string());
    }
    let x_name = text(view, "x").unwrap_or("time");
    let mut x = column(x_name);
    let x_label = if x_name == "time" {
        // Seconds since the first point, as bluesky's time plots.
        let first = x.first().copied().unwrap_or(0.0);
        x.iter_mut().for_each(|t| *t -= first);
        "time (s)".to_owned()
    } else {
        x_name.to_owned()
    };
    let y_names: Vec<&str> = match view.pointer("y") {
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(|n| match n {
                Value::Text(n) => Some(n.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let ys: Vec<Vec<f64>> = y_names.iter().map(|name| column(name)).collect();
    let series = y_names
        .iter()
        .zip(&ys)
        .map(|(label, y)| Series { label, x: &x, y })
        .collect();
    let mut markers = Vec::new();
    if let Some(first) = y_names.first() {
        for (key, label) in [("cen", "cen"), ("com", "com")] {
            let at = view
                .pointer(&format!("peak_stats/{first}/{key}"))
                .map(number)
                .unwrap_or(f64::NAN);
            let fwhm = view
                .pointer(&format!("peak_stats/{first}/fwhm"))
                .map(number)
                .filter(|fwhm| fwhm.is_finite() && key == "cen");
            if at.is_finite() {
                markers.push(Marker {
                    x: at,
                    label: match fwhm {
                        Some(fwhm) => format!("{label} {at:.6} (fwhm {fwhm:.6})"),
                        None => format!("{label} {at:.6}"),
                    },
                });
            }
        }
    }
    plot::line_png(
        &LinePlot {
            title: &title,
            x_label: &x_label,
            y_label: y_names.first().copied().unwrap_or(""),
            series,
            markers,
        },
        SIZE.0,
        SIZE.1,
    )
    .map_err(|error| error.to_string())
}

/// A column of a run's view, with its name.
type NamedColumn = (String, Vec<f64>);

/// The run's numeric columns, x first; `dat` with a header of the run's facts, or `xdi` for
/// an XAFS scan.
fn data_file(view: &Value) -> Result<(&'static str, String), String> {
    let stream = text(view, "stream").unwrap_or("primary");
    let columns: Vec<(String, Vec<f64>)> = view
        .pointer(&format!("streams/{stream}/columns"))
        .and_then(Value::as_map)
        .into_iter()
        .flatten()
        .filter(|(_, values)| {
            matches!(values, Value::Array(items)
                if items.iter().all(|v| matches!(v, Value::Int(_) | Value::Float(_) | Value::Null)))
        })
        .map(|(name, values)| (name.clone(), numbers(Some(values))))
        .collect();
    let x = text(view, "x").unwrap_or("time").to_owned();
    let mut ordered: Vec<&(String, Vec<f64>)> = columns.iter().filter(|(n, _)| *n == x).collect();
    ordered.extend(columns.iter().filter(|(n, _)| *n != x));
    if text(view, "bmm/kind") == Some("xafsscan") {
        // XDI readers refuse a value that is not a number: a reading missing from some points
        // (or a signal dividing by zero) leaves its column out, and a comment says so.
        let (finite, partial): (Vec<&NamedColumn>, Vec<&NamedColumn>) = ordered
            .into_iter()
            .partition(|(_, values)| values.iter().all(|v| v.is_finite()));
        let columns: Vec<Column<'_>> = finite
            .iter()
            .map(|(name, values)| {
                // XDI names its first column for what it is; the data key is in a comment.
                let (name, unit) = if *name == x { ("energy", "eV") } else { (name.as_str(), "") };
                Column { name, unit, values }
            })
            .collect();
        let mut fields: Vec<(&str, String)> = Vec::new();
        for (field, key) in [
            ("Element.symbol", "bmm/message/element"),
            ("Element.edge", "bmm/message/edge"),
            ("Sample.name", "bmm/message/sample"),
        ] {
            if let Some(value) = text(view, key) {
                fields.push((field, value.to_owned()));
            }
        }
        if let Some(time) = iso(view.pointer("started")) {
            fields.push(("Scan.start_time", time));
        }
        if let Some(time) = iso(view.pointer("stopped")) {
            fields.push(("Scan.end_time", time));
        }
        let uid = format!("run {}", text(view, "uid").unwrap_or("?"));
        let left_out = partial
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let left_out = format!("left out, not a number in every row: {left_out}");
        let energy = format!("energy: {x}");
        let mut comments = vec![uid.as_str(), energy.as_str()];
        if !partial.is_empty() {
            comments.push(left_out.as_str());
        }
        let text = column_file::xdi(
            &XdiFields {
                fields: &fields,
                comments: &comments,
            },
            &columns,
        )
        .map_err(|error| error.to_string())?;
        return Ok(("xdi", text));
    }
    let columns: Vec<Column<'_>> = ordered
        .iter()
        .map(|(name, values)| Column {
            name,
            unit: "",
            values,
        })
        .collect();
    let mut header: Vec<(&str, String)> = vec![("uid", text(view, "uid").unwrap_or("").to_owned())];
    for key in ["plan_name", "status", "x"] {
        header.push((key, text(view, key).unwrap_or("").to_owned()));
    }
    if let Some(scan_id) = view.pointer("scan_id").map(number).filter(|n| n.is_finite()) {
        header.push(("scan_id", format!("{scan_id}")));
    }
    if let Some(time) = iso(view.pointer("started")) {
        header.push(("start_time", time));
    }
    if let Some(Value::Map(stats)) = view.pointer("peak_stats") {
        for (field, stats) in stats {
            for key in ["cen", "fwhm", "com"] {
                if let Some(Value::Float(value)) = stats.pointer(key) {
                    let name: &'static str = match key {
                        "cen" => "peak_stats.cen",
                        "fwhm" => "peak_stats.fwhm",
                        _ => "peak_stats.com",
                    };
                    header.push((name, format!("{field} {value}")));
                }
            }
        }
    }
    column_file::column_text(&header, &columns)
        .map(|text| ("dat", text))
        .map_err(|error| error.to_string())
}
