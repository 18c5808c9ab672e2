//! `scan_view`: bluesky runs as a beamline watches them, keyed by run uid, from the `bluesky`
//! analysis's documents. Per run: its start (metadata), each stream's columns (the primary
//! stream and the baseline apart), the plot's dimensions as bluesky's BestEffortCallback reads
//! them (`hints.dimensions`, else one per motor, else time), the plotted fields (the
//! descriptor's `hints`, and the configured derived signals), bluesky's `PeakStats` of each
//! plotted field against the first dimension for a 1-D run (derivative stats too), a gridded
//! map for a rectilinear 2-D run, and at its stop the exit status and the events it should
//! have had.
//!
//! BMM's control messages (`linescan`, `timescan`, `areascan`, `xafsscan` start and stop; see
//! [`bmm`]) set how the runs that start after them are plotted. With `snapshots`, each run's
//! plot is written there as a PNG at its stop, with its data as a column file (XDI for an
//! `xafsscan`; see `scan_view/snapshot.rs`).
//!
//! Several runs may be in flight; finished ones are kept, the oldest dropped past `keep_runs`.
//! Each stream keeps `max_points` events at most, the newest inline array of each field (not
//! every one), and its descriptor without the configuration.

pub mod bmm;
mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;

use beamflow_protocol::{AnalysisName, Parameters, ResultData, Value};
use serde::Deserialize;

use crate::accumulators::{AccumulatorKind, TableError, map};
use crate::dashboard::Panel;
use crate::peak_stats::{PeakStats, peak_stats};
use crate::{Accumulator, AccumulatorError};

fn default_keep_runs() -> usize {
    20
}

fn default_max_points() -> usize {
    100_000
}

fn yes() -> bool {
    true
}

/// Configuration of `scan_view`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanViewConfig {
    /// The `bluesky` analysis whose documents it reads.
    pub documents: AnalysisName,
    /// Runs kept; past it the oldest finished run is dropped.
    #[serde(default = "default_keep_runs")]
    pub keep_runs: usize,
    /// Events kept per stream of a run; later ones are counted, not kept.
    #[serde(default = "default_max_points")]
    pub max_points: usize,
    /// PeakStats' `edge_count`: subtract a line through the means of the first and last n
    /// points.
    #[serde(default)]
    pub edge_count: Option<usize>,
    /// PeakStats of the derivative too (bluesky's `calc_derivative_and_stats`).
    #[serde(default = "yes")]
    pub derivative: bool,
    /// A folder for each run's plot (PNG) and data (a column file, XDI for XAFS), written at
    /// its stop; none by default.
    #[serde(default)]
    pub snapshots: Option<PathBuf>,
    /// How BMM's control messages name what to plot.
    #[serde(default)]
    pub bmm: bmm::BmmConfig,
}

impl AccumulatorKind for ScanViewConfig {
    const KIND: &str = "scan_view";
    const SUMMARY: &str = "bluesky runs by uid: `{runs: {uid: {columns, x, y, peak_stats, \
        grid, status, ...}}, order, latest}`";

    fn build(&self) -> Result<Box<dyn Accumulator>, TableError> {
        if self.keep_runs == 0 {
            return Err(TableError::new("keep_runs", "keep_runs must keep at least one run"));
        }
        if self.edge_count == Some(0) {
            return Err(TableError::new(
                "edge_count",
                "edge_count counts points at each end: 1 or more (leave it out for none)",
            ));
        }
        let snapshots = match &self.snapshots {
            Some(folder) => Some(
                snapshot::Snapshots::start(folder.clone())
                    .map_err(|error| TableError::new("snapshots", error))?,
            ),
            None => None,
        };
        Ok(Box::new(ScanView::new(self.clone(), snapshots)))
    }

    fn analysis(&self) -> Option<&AnalysisName> {
        Some(&self.documents)
    }

    fn panel(&self) -> Panel {
        Panel::ScanView {}
    }
}

/// One stream of a run, column-wise.
#[derive(Debug, Default)]
struct Table {
    /// The descriptor, without its configuration.
    descriptor: Option<Value>,
    seq_num: Vec<f64>,
    time: Vec<f64>,
    /// Numeric readings and derived signals; NaN where an event had none.
    numbers: BTreeMap<String, Vec<f64>>,
    /// Text readings (datum ids of external data among them); null where an event had none.
    texts: BTreeMap<String, Vec<Value>>,
    /// The newest inline array of each field, with its event's seq_num.
    arrays: BTreeMap<String, (f64, Value)>,
    /// Events past `max_points`, counted.
    dropped: u64,
}

impl Table {
    fn len(&self) -> usize {
        self.seq_num.len()
    }

    fn push(&mut self, doc: &Value, signals: Option<&Value>) {
        let n = self.len();
        let number = |key: &str| match doc.pointer(key) {
            Some(Value::Int(i)) => *i as f64,
            Some(Value::Float(x)) => *x,
            _ => f64::NAN,
        };
        self.seq_num.push(number("seq_num"));
        self.time.push(number("time"));
        let readings = doc.pointer("data").and_then(Value::as_map).into_iter().flatten();
        let signals = signals.and_then(Value::as_map).into_iter().flatten();
        for (key, value) in readings.chain(signals) {
            let reading = match value {
                Value::Int(i) => Some(*i as f64),
                Value::Float(x) => Some(*x),
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                Value::Null if self.numbers.contains_key(key) => Some(f64::NAN),
                _ => None,
            };
            match (reading, value) {
                (Some(reading), _) => {
                    let column = self
                        .numbers
                        .entry(key.clone())
                        .or_insert_with(|| vec![f64::NAN; n]);
                    column.resize(n, f64::NAN);
                    column.push(reading);
                }
                (None, Value::Text(_)) => {
                    let column = self
                        .texts
                        .entry(key.clone())
                        .or_insert_with(|| vec![Value::Null; n]);
                    column.resize(n, Value::Null);
                    column.push(value.clone());
                }
                (None, Value::Map(_)) => {
                    let seq_num = self.seq_num[n];
                    self.arrays.insert(key.clone(), (seq_num, value.clone()));
                }
                (None, _) => {}
            }
        }
        for column in self.numbers.values_mut() {
            column.resize(n + 1, f64::NAN);
        }
        for column in self.texts.values_mut() {
            column.resize(n + 1, Value::Null);
        }
    }

    /// The (x, y) points where both were read, in event order.
    fn points(&self, x: &str, y: &str) -> Option<(Vec<f64>, Vec<f64>)> {
        let (xs, ys) = (self.numbers.get(x)?, self.numbers.get(y)?);
        Some(
            xs.iter()
                .zip(ys)
                .filter(|(x, y)| !x.is_nan() && !y.is_nan())
                .map(|(x, y)| (*x, *y))
                .unzip(),
        )
    }

    fn view(&self) -> Value {
        let floats = |values: &[f64]| Value::Array(values.iter().map(|&v| float(v)).collect());
        let mut columns: BTreeMap<String, Value> = self
            .numbers
            .iter()
            .map(|(key, values)| (key.clone(), floats(values)))
            .collect();
        columns.extend(
            self.texts
                .iter()
                .map(|(key, values)| (key.clone(), Value::Array(values.clone()))),
        );
        columns.insert("seq_num".to_owned(), floats(&self.seq_num));
        columns.insert("time".to_owned(), floats(&self.time));
        let arrays = self
            .arrays
            .iter()
            .map(|(key, (seq_num, array))| {
                let mut array = array.clone();
                if let Value::Map(fields) = &mut array {
                    fields.insert("seq_num".to_owned(), float(*seq_num));
                }
                (key.clone(), array)
            })
            .collect();
        map([
            ("descriptor", self.descriptor.clone().unwrap_or_default()),
            ("events", Value::Int(self.len() as i64)),
            ("dropped", Value::Int(self.dropped as i64)),
            ("columns", Value::Map(columns)),
            ("arrays", Value::Map(arrays)),
        ])
    }
}

/// A rectilinear grid from the start document (bluesky's `grid_scan`).
#[derive(Debug, Clone, PartialEq)]
struct Grid {
    /// Points along the slow and the fast motor.
    shape: [usize; 2],
    /// `[start, stop]` of the slow and the fast motor.
    extents: [[f64; 2]; 2],
}

impl Grid {
    fn from_start(start: &Value) -> Option<Self> {
        if start.pointer("hints/gridding") != Some(&Value::Text("rectilinear".to_owned())) {
            return None;
        }
        let numbers = |value: &Value| -> Option<Vec<f64>> {
            match value {
                Value::Array(items) => items.iter().map(as_f64).collect(),
                _ => None,
            }
        };
        let shape = numbers(start.pointer("shape")?)?;
        let Value::Array(extents) = start.pointer("extents")? else {
            return None;
        };
        let extents: Vec<Vec<f64>> = extents.iter().map(numbers).collect::<Option<_>>()?;
        match (shape.as_slice(), extents.as_slice()) {
            ([rows, cols], [slow, fast]) if slow.len() == 2 && fast.len() == 2 => Some(Self {
                shape: [*rows as usize, *cols as usize],
                extents: [[slow[0], slow[1]], [fast[0], fast[1]]],
            }),
            _ => None,
        }
    }

    /// The cell a point at these motor positions falls in, by position (so a snaking scan
    /// fills the same cells as a straight one).
    fn cell(&self, slow: f64, fast: f64) -> Option<usize> {
        let index = |position: f64, [start, stop]: [f64; 2], n: usize| {
            let at = if n <= 1 || stop == start {
                0.0
            } else {
                (position - start) / (stop - start) * (n - 1) as f64
            };
            let at = at.round();
            (at >= 0.0 && at < n as f64).then_some(at as usize)
        };
        let row = index(slow, self.extents[0], self.shape[0])?;
        let col = index(fast, self.extents[1], self.shape[1])?;
        Some(row * self.shape[1] + col)
    }
}

/// One run.
#[derive(Debug)]
struct Run {
    order: u64,
    start: Value,
    /// `(fields, stream)` per dimension.
    dimensions: Vec<(Vec<String>, String)>,
    grid: Option<Grid>,
    streams: BTreeMap<String, Table>,
    stop: Option<Value>,
    resources: u64,
    datums: u64,
    /// How BMM asked to plot it.
    bmm: Option<bmm::Plot>,
    /// The view, once the run has stopped and nothing changes any more.
    finished: Option<Value>,
}

impl Run {
    fn new(order: u64, start: Value, bmm: Option<bmm::Plot>) -> Self {
        let mut run = Self {
            order,
            start,
            dimensions: Vec::new(),
            grid: None,
            streams: BTreeMap::new(),
            stop: None,
            resources: 0,
            datums: 0,
            bmm: None,
            finished: None,
        };
        run.plot_as(bmm);
        run
    }

    /// Plots the run as BMM's message says, or as its start document does without one.
    fn plot_as(&mut self, bmm: Option<bmm::Plot>) {
        (self.dimensions, self.grid) = match bmm.as_ref().and_then(|plot| plot.grid.clone()) {
            Some((grid, [slow, fast])) => (
                vec![
                    (vec![slow], "primary".to_owned()),
                    (vec![fast], "primary".to_owned()),
                ],
                Some(grid),
            ),
            None => {
                let dimensions = dimensions(&self.start);
                let grid = (dimensions.len() == 2)
                    .then(|| Grid::from_start(&self.start))
                    .flatten();
                (dimensions, grid)
            }
        };
        self.bmm = bmm;
    }

    /// Whether a BMM `start` that arrives now still belongs to this run: it started, but no
    /// event came yet (from Kafka, BMM's control topic and the documents' topic are read side
    /// by side, so the message sent just before the run may be read just after its start).
    fn awaits_plot(&self) -> bool {
        self.bmm.is_none()
            && self.stop.is_none()
            && self.streams.values().all(|table| table.len() == 0)
    }

    /// The dimensions' stream (bluesky plots one stream), `primary` by default.
    fn plotted_stream(&self) -> &str {
        self.dimensions
            .first()
            .map_or("primary", |(_, stream)| stream.as_str())
    }

    /// The x field: BMM's, else the first dimension's.
    fn x(&self) -> Option<&str> {
        if let Some(plot) = &self.bmm {
            return Some(&plot.x);
        }
        self.dimensions
            .first()
            .and_then(|(fields, _)| fields.first())
            .map(String::as_str)
    }

    /// The plotted fields: the descriptor's hinted fields (else every numeric reading) and
    /// the derived signals, less the dimensions.
    fn y(&self, signals: &[String]) -> Vec<String> {
        let Some(table) = self.streams.get(self.plotted_stream()) else {
            return Vec::new();
        };
        let dimension_fields: Vec<&String> =
            self.dimensions.iter().flat_map(|(fields, _)| fields).collect();
        let hinted: Vec<String> = table
            .descriptor
            .as_ref()
            .and_then(|d| d.pointer("hints"))
            .and_then(Value::as_map)
            .into_iter()
            .flat_map(|hints| hints.values())
            .filter_map(|hint| match hint.pointer("fields") {
                Some(Value::Array(fields)) => Some(fields),
                _ => None,
            })
            .flatten()
            .filter_map(|field| match field {
                Value::Text(field) => Some(field.clone()),
                _ => None,
            })
            .collect();
        let readings: Vec<String> = if hinted.is_empty() {
            table
                .numbers
                .keys()
                .filter(|key| !signals.contains(key))
                .cloned()
                .collect()
        } else {
            hinted
        };
        let bmm = self.bmm.as_ref().map(|plot| plot.y.clone());
        let mut y: Vec<String> = bmm
            .into_iter()
            .chain(readings)
            .chain(signals.iter().cloned())
            .filter(|field| !dimension_fields.contains(&field))
            .filter(|field| table.numbers.contains_key(field))
            .collect();
        let mut seen = Vec::new();
        y.retain(|field| {
            let first = !seen.contains(field);
            seen.push(field.clone());
            first
        });
        y
    }

    fn view(&self, config: &ScanViewConfig, signals: &[String], uid: &str) -> Value {
        if let Some(view) = &self.finished {
            return view.clone();
        }
        let y = self.y(signals);
        let x = self.x();
        let table = self.streams.get(self.plotted_stream());
        let mut stats = BTreeMap::new();
        if let (Some(x), Some(table), 1) = (x, table, self.dimensions.len())
            && x != "time"
        {
            for field in &y {
                if let Some((xs, ys)) = table.points(x, field) {
                    stats.insert(field.clone(), stats_view(&xs, &ys, config));
                }
            }
        }
        let grid = match (&self.grid, table, y.first()) {
            (Some(grid), Some(table), Some(signal)) => grid_view(grid, &self.dimensions, table, signal),
            _ => Value::Null,
        };
        let (status, reason, stopped) = match &self.stop {
            Some(stop) => (
                stop.pointer("exit_status").cloned().unwrap_or_default(),
                stop.pointer("reason").cloned().unwrap_or_default(),
                stop.pointer("time").cloned().unwrap_or_default(),
            ),
            None => (Value::Text("running".to_owned()), Value::Null, Value::Null),
        };
        // What the stop says each stream had, against what arrived here.
        let missing = self
            .stop
            .as_ref()
            .and_then(|stop| stop.pointer("num_events"))
            .and_then(Value::as_map)
            .map(|expected| {
                expected
                    .iter()
                    .map(|(stream, n)| {
                        let got = self.streams.get(stream).map_or(0, |t| t.len() as u64 + t.dropped);
                        let expected = as_f64(n).unwrap_or_default() as u64;
                        (stream.clone(), Value::Int(expected.saturating_sub(got) as i64))
                    })
                    .collect()
            })
            .map_or(Value::Null, Value::Map);
        let text = |s: &str| Value::Text(s.to_owned());
        map([
            ("uid", text(uid)),
            ("scan_id", self.start.pointer("scan_id").cloned().unwrap_or_default()),
            ("plan_name", self.start.pointer("plan_name").cloned().unwrap_or_default()),
            ("started", self.start.pointer("time").cloned().unwrap_or_default()),
            ("stopped", stopped),
            ("status", status),
            ("reason", reason),
            (
                "num_points",
                self.start.pointer("num_points").cloned().unwrap_or_default(),
            ),
            (
                "dimensions",
                Value::Array(
                    self.dimensions
                        .iter()
                        .map(|(fields, stream)| {
                            Value::Array(vec![
                                Value::Array(fields.iter().map(|f| text(f)).collect()),
                                text(stream),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("stream", text(self.plotted_stream())),
            ("x", x.map_or(Value::Null, text)),
            ("y", Value::Array(y.iter().map(|f| text(f)).collect())),
            ("peak_stats", Value::Map(stats)),
            ("grid", grid),
            (
                "streams",
                Value::Map(
                    self.streams
                        .iter()
                        .map(|(name, table)| (name.clone(), table.view()))
                        .collect(),
                ),
            ),
            ("missing", missing),
            ("bmm", self.bmm.as_ref().map_or(Value::Null, bmm::Plot::view)),
            ("resources", Value::Int(self.resources as i64)),
            ("datums", Value::Int(self.datums as i64)),
            ("start", self.start.clone()),
        ])
    }
}

/// The dimensions as BestEffortCallback reads them: `hints.dimensions`, else one per motor of
/// the primary stream, else time.
fn dimensions(start: &Value) -> Vec<(Vec<String>, String)> {
    let texts = |value: &Value| -> Option<Vec<String>> {
        match value {
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::Text(text) => Some(text.clone()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    if let Some(Value::Array(hinted)) = start.pointer("hints/dimensions") {
        let dimensions: Option<Vec<_>> = hinted
            .iter()
            .map(|dimension| match dimension {
                Value::Array(pair) => match pair.as_slice() {
                    [fields, Value::Text(stream)] => Some((texts(fields)?, stream.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if let Some(dimensions) = dimensions {
            return dimensions;
        }
    }
    match start.pointer("motors").and_then(texts) {
        Some(motors) if !motors.is_empty() => motors
            .into_iter()
            .map(|motor| (vec![motor], "primary".to_owned()))
            .collect(),
        _ => vec![(vec!["time".to_owned()], "primary".to_owned())],
    }
}

fn stats_view(x: &[f64], y: &[f64], config: &ScanViewConfig) -> Value {
    let mut view = stats_value(peak_stats(x, y, config.edge_count));
    if config.derivative
        && let Value::Map(fields) = &mut view
    {
        let (x_der, y_der): (&[f64], Vec<f64>) = match x {
            [] => (&[], Vec::new()),
            [_, rest @ ..] => (rest, y.windows(2).map(|w| w[1] - w[0]).collect()),
        };
        fields.insert(
            "derivative".to_owned(),
            stats_value(peak_stats(x_der, &y_der, config.edge_count)),
        );
    }
    view
}

fn stats_value(stats: Option<PeakStats>) -> Value {
    let Some(stats) = stats else {
        return Value::Null;
    };
    let pair = |(x, y): (f64, f64)| Value::Array(vec![float(x), float(y)]);
    let option = |v: Option<f64>| v.map_or(Value::Null, float);
    map([
        ("com", float(stats.com)),
        ("cen", option(stats.cen)),
        ("max", pair(stats.max)),
        ("min", pair(stats.min)),
        (
            "crossings",
            Value::Array(stats.crossings.iter().map(|&c| float(c)).collect()),
        ),
        ("fwhm", option(stats.fwhm)),
        (
            "lin_bkg",
            stats.lin_bkg.map_or(Value::Null, |line| {
                map([("m", float(line.m)), ("b", float(line.b))])
            }),
        ),
    ])
}

fn grid_view(
    grid: &Grid,
    dimensions: &[(Vec<String>, String)],
    table: &Table,
    signal: &str,
) -> Value {
    let field = |i: usize| dimensions.get(i).and_then(|(fields, _)| fields.first());
    let (Some(slow), Some(fast)) = (field(0), field(1)) else {
        return Value::Null;
    };
    let mut values = vec![f64::NAN; grid.shape[0] * grid.shape[1]];
    if let (Some(slows), Some(fasts), Some(signals)) = (
        table.numbers.get(slow),
        table.numbers.get(fast),
        table.numbers.get(signal),
    ) {
        for ((s, f), v) in slows.iter().zip(fasts).zip(signals) {
            if let Some(cell) = grid.cell(*s, *f) {
                values[cell] = *v;
            }
        }
    }
    let text = |s: &str| Value::Text(s.to_owned());
    let pair = |[a, b]: [f64; 2]| Value::Array(vec![float(a), float(b)]);
    map([
        (
            "shape",
            Value::Array(grid.shape.iter().map(|&n| Value::Int(n as i64)).collect()),
        ),
        (
            "extents",
            Value::Array(vec![pair(grid.extents[0]), pair(grid.extents[1])]),
        ),
        ("slow", text(slow)),
        ("fast", text(fast)),
        ("signal", text(signal)),
        (
            "values",
            Value::Array(values.into_iter().map(float).collect()),
        ),
    ])
}

fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    }
}

/// A float, null when not finite (JSON has no NaN).
fn float(value: f64) -> Value {
    if value.is_finite() {
        Value::Float(value)
    } else {
        Value::Null
    }
}

/// The `scan_view` accumulator.
#[derive(Debug)]
pub struct ScanView {
    config: ScanViewConfig,
    runs: BTreeMap<String, Run>,
    started: u64,
    latest: Option<String>,
    /// Derived signal names seen in events, in the order first seen.
    signals: Vec<String>,
    /// Documents of runs whose start this reducer did not see.
    late: u64,
    bmm: bmm::Bmm,
    snapshots: Option<snapshot::Snapshots>,
}

impl ScanView {
    /// Builds the accumulator; `snapshots` writes each run's files at its stop.
    fn new(config: ScanViewConfig, snapshots: Option<snapshot::Snapshots>) -> Self {
        Self {
            config,
            runs: BTreeMap::new(),
            started: 0,
            latest: None,
            signals: Vec::new(),
            late: 0,
            bmm: bmm::Bmm::default(),
            snapshots,
        }
    }

    fn start(&mut self, uid: &str, doc: &Value) {
        self.started += 1;
        let run = Run::new(self.started, doc.clone(), self.bmm.current.clone());
        self.runs.insert(uid.to_owned(), run);
        self.latest = Some(uid.to_owned());
        while self.runs.len() > self.config.keep_runs {
            // The oldest finished run; the oldest of all when every kept run is in flight.
            let oldest = |finished: bool| {
                self.runs
                    .iter()
                    .filter(|(_, run)| !finished || run.stop.is_some())
                    .min_by_key(|(_, run)| run.order)
                    .map(|(uid, _)| uid.clone())
            };
            let Some(dropped) = oldest(true).or_else(|| oldest(false)) else {
                break;
            };
            self.runs.remove(&dropped);
        }
    }
}

impl Accumulator for ScanView {
    fn process_result(
        &mut self,
        result: &ResultData,
        _: &Parameters,
    ) -> Result<(), AccumulatorError> {
        let payload = result.payload.as_ref();
        let text = |key: &str| match payload.pointer(key) {
            Some(Value::Text(text)) => Some(text.as_str()),
            _ => None,
        };
        let document = text("document")
            .ok_or_else(|| AccumulatorError::Invalid("not a bluesky document".to_owned()))?;
        let doc = payload.pointer("doc").unwrap_or(&Value::Null);
        let Some(uid) = text("run") else {
            if document == "bmm" {
                let before = self.bmm.current.clone();
                self.bmm.control(doc, &self.config.bmm);
                let started = self.bmm.current.is_some() && self.bmm.current != before;
                if let (true, Some(run)) = (
                    started,
                    self.latest.as_ref().and_then(|uid| self.runs.get_mut(uid)),
                ) && run.awaits_plot()
                {
                    run.plot_as(self.bmm.current.clone());
                }
            }
            return Ok(());
        };
        if document == "start" {
            self.start(uid, doc);
            return Ok(());
        }
        let Some(run) = self.runs.get_mut(uid) else {
            self.late += 1;
            return Ok(());
        };
        if run.finished.is_some() {
            self.late += 1;
            return Ok(());
        }
        let stream = text("stream").unwrap_or("primary");
        match document {
            "descriptor" => {
                let mut descriptor = doc.clone();
                if let Value::Map(fields) = &mut descriptor {
                    fields.remove("configuration");
                }
                run.streams.entry(stream.to_owned()).or_default().descriptor = Some(descriptor);
            }
            "event" => {
                let signals = payload.pointer("signals");
                if let Some(names) = signals.and_then(Value::as_map) {
                    for name in names.keys() {
                        if !self.signals.contains(name) {
                            self.signals.push(name.clone());
                        }
                    }
                }
                let table = run.streams.entry(stream.to_owned()).or_default();
                if table.len() >= self.config.max_points {
                    table.dropped += 1;
                } else {
                    table.push(doc, signals);
                }
            }
            "resource" | "stream_resource" => run.resources += 1,
            "datum" | "stream_datum" => run.datums += 1,
            "datum_page" => {
                run.datums += match doc.pointer("datum_id") {
                    Some(Value::Array(ids)) => ids.len() as u64,
                    _ => 1,
                }
            }
            "stop" => {
                run.stop = Some(doc.clone());
                let view = run.view(&self.config, &self.signals, uid);
                if let Some(snapshots) = &self.snapshots {
                    snapshots.write(&view);
                }
                run.finished = Some(view);
            }
            _ => {}
        }
        Ok(())
    }

    /// Each run an `NXdata` of its plotted fields against its x, as BestEffortCallback plots
    /// it: silx shows a run's plot as it opens the run.
    fn hdf5_attributes(&self) -> Value {
        let text = |s: &str| Value::Text(s.to_owned());
        let runs = self
            .runs
            .iter()
            .filter_map(|(uid, run)| {
                let columns = format!("streams/{}/columns", run.plotted_stream());
                let mut fields = run.y(&self.signals).into_iter();
                let signal = fields.next()?;
                let mut nxdata = BTreeMap::from([
                    ("NX_class".to_owned(), text("NXdata")),
                    ("signal".to_owned(), Value::Text(format!("{columns}/{signal}"))),
                ]);
                if let Some(x) = run.x() {
                    nxdata.insert("axes".to_owned(), Value::Text(format!("{columns}/{x}")));
                }
                let auxiliary: Vec<Value> = fields
                    .map(|field| Value::Text(format!("{columns}/{field}")))
                    .collect();
                if !auxiliary.is_empty() {
                    nxdata.insert("auxiliary_signals".to_owned(), Value::Array(auxiliary));
                }
                Some((uid.clone(), map([("_attrs", Value::Map(nxdata))])))
            })
            .collect();
        map([("runs", Value::Map(runs))])
    }

    fn publish(&self) -> Value {
        let mut order: Vec<(&String, &Run)> = self.runs.iter().collect();
        order.sort_by_key(|(_, run)| run.order);
        let text = |s: &str| Value::Text(s.to_owned());
        map([
            (
                "runs",
                Value::Map(
                    self.runs
                        .iter()
                        .map(|(uid, run)| (uid.clone(), run.view(&self.config, &self.signals, uid)))
                        .collect(),
                ),
            ),
            (
                "order",
                Value::Array(order.iter().map(|(uid, _)| text(uid)).collect()),
            ),
            ("latest", self.latest.as_deref().map_or(Value::Null, text)),
            ("late", Value::Int(self.late as i64)),
            ("bmm", self.bmm.view()),
            (
                "snapshots",
                self.snapshots
                    .as_ref()
                    .map_or(Value::Null, snapshot::Snapshots::view),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use beamflow_protocol::{EventNumber, WorkerName};

    use super::*;

    fn config(text: &str) -> ScanViewConfig {
        toml::from_str(&format!("documents = \"documents\"\n{text}")).unwrap()
    }

    fn json(value: serde_json::Value) -> Value {
        Value::from_serialize(&value).unwrap()
    }

    struct Feed {
        view: Box<dyn Accumulator>,
        event: u64,
    }

    impl Feed {
        fn new(text: &str) -> Self {
            Self {
                view: config(text).build().unwrap(),
                event: 0,
            }
        }

        fn send(&mut self, payload: serde_json::Value) {
            self.event += 1;
            let result = ResultData {
                event_number: EventNumber(self.event),
                analysis: "documents".into(),
                worker: WorkerName::from("w"),
                created_at: None,
                payload: Arc::new(json(payload)),
            };
            self.view
                .process_result(&result, &Parameters::default())
                .unwrap();
        }

        fn document(&mut self, name: &str, run: &str, stream: Option<&str>, doc: serde_json::Value) {
            self.send(serde_json::json!({"document": name, "run": run, "stream": stream, "doc": doc}));
        }

        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self.view.publish()).unwrap()
        }
    }

    /// bluesky's `scan([det], motor, -5, 5, 20)` with `det = exp(-motor²/2)`, through
    /// numpy's points (`np.linspace`), as the RunEngine publishes it.
    fn reference_scan(feed: &mut Feed, uid: &str, points: usize) {
        feed.document(
            "start",
            uid,
            None,
            serde_json::json!({"uid": uid, "time": 1.0, "scan_id": 7, "plan_name": "scan",
                "motors": ["motor"], "num_points": 20,
                "hints": {"dimensions": [[["motor"], "primary"]]}}),
        );
        feed.document(
            "descriptor",
            uid,
            Some("primary"),
            serde_json::json!({"uid": "d", "run_start": uid, "name": "primary",
                "data_keys": {"det": {"dtype": "number"}, "motor": {"dtype": "number"}},
                "hints": {"det": {"fields": ["det"]}, "motor": {"fields": ["motor"]}},
                "configuration": {"det": {"data": {"big": 1}}}}),
        );
        for i in 0..points {
            let motor = -5.0 + 10.0 * i as f64 / 19.0;
            let det = (-motor * motor / 2.0).exp();
            feed.document(
                "event",
                uid,
                Some("primary"),
                serde_json::json!({"seq_num": i + 1, "time": 2.0 + i as f64,
                    "data": {"det": det, "motor": motor, "motor_setpoint": motor}}),
            );
        }
    }

    #[test]
    fn a_one_dimensional_run_gets_live_peak_stats_and_its_stop() {
        let mut feed = Feed::new("");
        reference_scan(&mut feed, "r1", 20);
        let view = feed.json();
        let run = &view["runs"]["r1"];
        assert_eq!(run["status"], "running");
        assert_eq!(run["x"], "motor");
        assert_eq!(run["y"], serde_json::json!(["det"]));
        assert_eq!(run["streams"]["primary"]["events"], 20);
        assert!(run["streams"]["primary"]["descriptor"]["configuration"].is_null());
        let stats = &run["peak_stats"]["det"];
        // Against the same points through bluesky's PeakStats (peak_stats.rs has the exact
        // figures from bluesky 1.15; here the motor values are computed in Rust, not numpy).
        assert!((stats["fwhm"].as_f64().unwrap() - 2.4213457417759847).abs() < 1e-12);
        assert!(stats["cen"].as_f64().unwrap().abs() < 1e-12);
        assert_eq!(stats["min"][0], -5.0);
        assert!(stats["derivative"]["crossings"].is_array());
        feed.document(
            "stop",
            "r1",
            None,
            serde_json::json!({"run_start": "r1", "exit_status": "success", "time": 30.0,
                "num_events": {"primary": 21}}),
        );
        let view = feed.json();
        assert_eq!(view["runs"]["r1"]["status"], "success");
        assert_eq!(view["runs"]["r1"]["missing"]["primary"], 1);
        assert_eq!(view["latest"], "r1");
        // A document of the stopped run is counted, not applied.
        feed.document("event", "r1", Some("primary"), serde_json::json!({"seq_num": 21}));
        assert_eq!(feed.json()["late"], 1);
        assert_eq!(feed.json()["runs"]["r1"]["streams"]["primary"]["events"], 20);
    }

    /// As HDF5 (what h5pyd and silx read), a run is an `NXdata` whose signal and axis are its
    /// plotted columns, both 20 points long.
    #[test]
    fn a_run_is_an_nxdata_of_its_plotted_columns() {
        use crate::hdf5_rest::{Attribute, Hdf5File, Node};
        let mut feed = Feed::new("");
        reference_scan(&mut feed, "r1", 20);
        let state = Value::Map(BTreeMap::from([("scans".to_owned(), feed.view.publish())]));
        let attributes = BTreeMap::from([("scans".to_owned(), feed.view.hdf5_attributes())]);
        let file = Hdf5File::new(Arc::new(state), Arc::default(), &attributes);
        let Some(Node::Group { attributes, .. }) = file.root().at("scans/runs/r1") else {
            panic!("no run group");
        };
        let path = |key: &str| match &attributes[key] {
            Attribute::Text(path) => format!("scans/runs/r1/{path}"),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(attributes["NX_class"], Attribute::Text("NXdata".into()));
        for key in ["signal", "axes"] {
            let Some(Node::Dataset { data, .. }) = file.root().at(&path(key)) else {
                panic!("{key} names no dataset: {}", path(key));
            };
            assert_eq!(data.shape(), [20]);
        }
        assert!(path("signal").ends_with("/det") && path("axes").ends_with("/motor"));
    }

    #[test]
    fn peak_stats_follow_every_point_and_edge_count_subtracts_the_line() {
        let mut feed = Feed::new("edge_count = 3\nderivative = false");
        reference_scan(&mut feed, "r1", 7);
        let stats = &feed.json()["runs"]["r1"]["peak_stats"]["det"];
        assert!(stats["lin_bkg"]["m"].is_f64());
        assert!(stats.get("derivative").is_none());
        let x: Vec<f64> = (0..7).map(|i| -5.0 + 10.0 * i as f64 / 19.0).collect();
        let y: Vec<f64> = x.iter().map(|m| (-m * m / 2.0).exp()).collect();
        let expected = peak_stats(&x, &y, Some(3)).unwrap();
        assert_eq!(stats["com"].as_f64(), Some(expected.com));
    }

    #[test]
    fn runs_are_kept_apart_and_the_oldest_finished_dropped() {
        let mut feed = Feed::new("keep_runs = 2");
        reference_scan(&mut feed, "a", 2);
        feed.document("stop", "a", None, serde_json::json!({"exit_status": "abort"}));
        reference_scan(&mut feed, "b", 1);
        feed.document(
            "event",
            "b",
            Some("baseline"),
            serde_json::json!({"seq_num": 1, "data": {"ring_current": 400.5}}),
        );
        reference_scan(&mut feed, "c", 1);
        let view = feed.json();
        assert_eq!(view["order"], serde_json::json!(["b", "c"]));
        let b = &view["runs"]["b"];
        assert_eq!(b["streams"]["baseline"]["columns"]["ring_current"], serde_json::json!([400.5]));
        assert!(b["streams"]["primary"]["columns"].get("ring_current").is_none());
        assert_eq!(view["latest"], "c");
    }

    #[test]
    fn a_rectilinear_grid_is_filled_by_position_even_snaking() {
        let mut feed = Feed::new("");
        feed.document(
            "start",
            "g",
            None,
            serde_json::json!({"uid": "g", "motors": ["m1", "m2"], "shape": [2, 3],
                "extents": [[0.0, 1.0], [10.0, 30.0]],
                "hints": {"gridding": "rectilinear",
                    "dimensions": [[["m1"], "primary"], [["m2"], "primary"]]}}),
        );
        // Row 0 left to right, row 1 right to left (snake), the last point not measured.
        for (i, (m1, m2)) in [(0.0, 10.0), (0.0, 20.0), (0.0, 30.0), (1.0, 30.0), (1.0, 20.0)]
            .into_iter()
            .enumerate()
        {
            feed.document(
                "event",
                "g",
                Some("primary"),
                serde_json::json!({"seq_num": i + 1,
                    "data": {"m1": m1, "m2": m2, "det": i as f64}}),
            );
        }
        let run = &feed.json()["runs"]["g"];
        assert_eq!(run["y"], serde_json::json!(["det"]));
        assert_eq!(run["grid"]["shape"], serde_json::json!([2, 3]));
        assert_eq!(
            run["grid"]["values"],
            serde_json::json!([0.0, 1.0, 2.0, null, 4.0, 3.0])
        );
        assert!(run["peak_stats"].as_object().unwrap().is_empty());
    }

    #[test]
    fn signals_arrays_and_datum_ids_are_columns_of_their_kind() {
        let mut feed = Feed::new("");
        feed.document("start", "r", None, serde_json::json!({"uid": "r", "motors": ["dcm_energy"]}));
        for i in 0..2 {
            feed.send(serde_json::json!({"document": "event", "run": "r", "stream": "primary",
                "signals": {"trans": 0.5 * i as f64},
                "doc": {"seq_num": i + 1, "data": {"dcm_energy": 7000.0 + i as f64,
                    "I0": 1.0, "img": "res/0",
                    "frame": {"dtype": "int64", "shape": [1], "data": [0, 0, 0, 0, 0, 0, 0, 0]}}}}));
        }
        let run = &feed.json()["runs"]["r"];
        assert_eq!(run["y"], serde_json::json!(["I0", "trans"]));
        let columns = &run["streams"]["primary"]["columns"];
        assert_eq!(columns["trans"], serde_json::json!([0.0, 0.5]));
        assert_eq!(columns["img"], serde_json::json!(["res/0", "res/0"]));
        assert_eq!(run["streams"]["primary"]["arrays"]["frame"]["seq_num"], 2.0);
    }

    #[test]
    fn a_run_the_reducer_did_not_see_start_is_counted() {
        let mut feed = Feed::new("");
        feed.document("event", "x", Some("primary"), serde_json::json!({"seq_num": 4}));
        assert_eq!(feed.json()["late"], 1);
        assert!(feed.json()["runs"].as_object().unwrap().is_empty());
    }

    #[test]
    fn a_bmm_start_read_just_after_its_run_started_still_plots_it() {
        let mut feed = Feed::new("");
        feed.document(
            "start",
            "r",
            None,
            serde_json::json!({"uid": "r", "motors": ["xafs_y"]}),
        );
        feed.send(serde_json::json!({"document": "bmm", "run": null, "stream": null,
            "doc": {"linescan": "start", "motor": "xafs_y", "detector": "It"}}));
        let view = feed.json();
        assert_eq!(view["runs"]["r"]["bmm"]["kind"], "linescan");
        // Once a run has points, a start is for the runs after it.
        feed.document(
            "event",
            "r",
            Some("primary"),
            serde_json::json!({"seq_num": 1, "data": {"xafs_y": 1.0}}),
        );
        feed.send(serde_json::json!({"document": "bmm", "run": null, "stream": null,
            "doc": {"timescan": "start", "detector": "I0"}}));
        assert_eq!(feed.json()["runs"]["r"]["bmm"]["kind"], "linescan");
    }
}
