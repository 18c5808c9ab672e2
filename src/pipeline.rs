//! The pipeline file: one TOML file describes a beamline: its ingesters, analyses, accumulators,
//! and the controller's, workers' and reducer's settings. The same file drives `run`, the
//! separate processes, `replay`, and the Helm chart's values.
//!
//! ```toml
//! [ingesters.det]             # an ingester named "det" (its stream is "det" too)
//! kind = "zmq_stins"
//! upstream = "tcp://eiger-dcu:9999"
//!
//! [analyses.stats]            # an analysis named "stats"
//! kind = "frame_stats"
//!
//! [accumulators.history]      # served under /api/v1/result/history
//! kind = "history"
//! analysis = "stats"
//! values = { det_mean = "det/0/mean" }
//!
//! [controller]                # all optional; these are the defaults
//! control = "tcp://127.0.0.1:5555"
//! http = "127.0.0.1:5000"
//!
//! [security]                  # all optional; these are the defaults
//! open_writes = false         # true: HTTP writes need no token (trusted networks only)
//! max_parameter_bytes = 67108864
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use beamflow_controller::ensemble::ParameterLimits;
use beamflow_controller::quad_scan::ScanDriverConfig;
use beamflow_ingesters::{IngesterConfig, SourceError};
use beamflow_net::files::Roots;
use beamflow_net::http::Access;
use beamflow_protocol::{AnalysisName, IngesterName, ParameterDescription, StreamName, WorkerTag};
use beamflow_reducer::AccumulatorConfig;
use beamflow_reducer::nexus::ENTRY_FIELDS;
use beamflow_reducer::result_pvs::{PvSource, ResultPvsConfig};
use beamflow_workers::AnalysisConfig;
use beamflow_workers::check::{ResultKeys, suggestion};
use serde::Deserialize;

/// A parsed pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// `[analyses.<name>]` tables: what workers compute per event.
    #[serde(default)]
    pub analyses: BTreeMap<AnalysisName, AnalysisConfig>,
    /// `[accumulators.<name>]` tables: what the reducer keeps, served under `<name>`.
    #[serde(default)]
    pub accumulators: BTreeMap<String, AccumulatorConfig>,
    /// `[ingesters.<name>]` tables: the sources.
    #[serde(default)]
    pub ingesters: BTreeMap<IngesterName, IngesterConfig>,
    /// `[controller]`: where it listens and how it paces scans.
    #[serde(default)]
    pub controller: ControllerSection,
    /// `[workers]`: how many `beamflow run` starts, and their settings.
    #[serde(default)]
    pub workers: WorkersSection,
    /// `[reducer]`: where it serves its state.
    #[serde(default)]
    pub reducer: ReducerSection,
    /// The pipeline's state folder: the reducer's checkpoint of the running scan and the
    /// controller's record of it, so either can be restarted mid-scan.
    #[serde(default)]
    pub state: Option<std::path::PathBuf>,
    /// `[security]`: who may write over HTTP, how large parameters may be, where files go.
    #[serde(default)]
    pub security: SecuritySection,
}

/// `[security]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// The file holding the HTTP bearer token (`BEAMFLOW_TOKEN_FILE` wins over it). Without
    /// either, `BEAMFLOW_TOKEN`, else `~/.config/beamflow/token`, made on first use.
    pub token_file: Option<std::path::PathBuf>,
    /// HTTP writes need no token: for dranspose's clients, which send none, on a network where
    /// everyone who can reach the port may run scans. Logged at WARN at every start.
    pub open_writes: bool,
    /// Reads (`GET`) need the token too.
    pub protect_reads: bool,
    /// Bytes one parameter value may have at most; a larger one is refused with 413 before it
    /// is read. 64 MiB: far above a region-of-interest mask or a calibration table of a
    /// 16-megapixel detector as 32-bit values, while each value is kept in memory and sent to
    /// every component.
    pub max_parameter_bytes: u64,
    /// Distinct parameter names at most (the set is sent whole to every component).
    pub max_parameters: usize,
    /// Folders files named from outside (`dump_prefix`'s recordings) may be written under;
    /// default: the system's temporary folder and the working directory.
    pub roots: Option<Vec<std::path::PathBuf>>,
}

impl SecuritySection {
    /// Who may call the HTTP servers, and where the token came from (none when writes are
    /// open, by this section or by `--open-writes`, which is logged at WARN every time).
    pub fn access(
        &self,
        open_writes: bool,
    ) -> anyhow::Result<(Access, Option<beamflow_net::token::TokenSource>)> {
        if self.open_writes || open_writes {
            tracing::warn!(
                "HTTP writes are open: anyone who reaches the HTTP ports may start scans, set parameters and move the quad ([security] open_writes or --open-writes; for a trusted network only)."
            );
            return Ok((Access::open_writes(), None));
        }
        let (token, source) =
            beamflow_net::token::resolve(self.token_file.as_deref()).context("the HTTP token")?;
        Ok((
            Access::with_token(token).protect_reads(self.protect_reads),
            Some(source),
        ))
    }

    /// The folders files named over HTTP may be written under.
    pub fn roots(&self) -> Roots {
        match &self.roots {
            Some(folders) => Roots::new(folders.iter().cloned()),
            None => Roots::default_roots(),
        }
    }

    /// The limits on parameters.
    pub fn parameter_limits(&self) -> ParameterLimits {
        ParameterLimits {
            max_bytes: self.max_parameter_bytes,
            max_names: self.max_parameters,
        }
    }
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            token_file: None,
            open_writes: false,
            protect_reads: false,
            max_parameter_bytes: 64 << 20,
            max_parameters: 1024,
            roots: None,
        }
    }
}

/// `[controller]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSection {
    /// The control socket every component connects to (`tcp://host:port`; port 0 = any).
    pub control: String,
    /// The REST API's address (`host:port`; port 0 = any).
    pub http: String,
    /// Events leased ahead of the reducer at most: bounds every queue and the ingesters'
    /// retention.
    pub window: u64,
    /// Unfinished events per worker at most.
    pub worker_limit: u64,
    /// `[controller.scan]`: the PVs `beamflow scan quad` and `/api/v1/scan/quad` may write,
    /// and the limits that narrow each one's own (DRVL/DRVH). None by default.
    pub scan: ScanDriverConfig,
}

impl Default for ControllerSection {
    fn default() -> Self {
        Self {
            control: "tcp://127.0.0.1:5555".to_owned(),
            http: "127.0.0.1:5000".to_owned(),
            window: 1024,
            worker_limit: 256,
            scan: ScanDriverConfig::default(),
        }
    }
}

/// `[workers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersSection {
    /// Workers `beamflow run` starts.
    pub count: usize,
    /// Their tags.
    pub tags: Vec<WorkerTag>,
    /// Milliseconds an event may wait for all its frames before it is processed incomplete.
    pub event_timeout_ms: u64,
    /// The address other hosts reach workers at (they bind a free port on it).
    pub host: String,
}

impl Default for WorkersSection {
    fn default() -> Self {
        Self {
            count: 2,
            tags: vec![WorkerTag::from("generic")],
            event_timeout_ms: 2000,
            host: "127.0.0.1".to_owned(),
        }
    }
}

/// `[reducer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReducerSection {
    /// The HTTP address of the state (`host:port`; port 0 = any).
    pub http: String,
    /// The address workers reach the reducer at (it binds a free port on it).
    pub host: String,
    /// `[reducer.pvs]`: state paths served as EPICS PVs.
    pub pvs: Option<ResultPvsConfig>,
    /// `[reducer.hdf5]`: a NeXus file per scan, at its end (and on demand, and periodically).
    pub hdf5: Option<beamflow_reducer::hdf5_output::Hdf5Config>,
}

impl Default for ReducerSection {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:5001".to_owned(),
            host: "127.0.0.1".to_owned(),
            pvs: None,
            hdf5: None,
        }
    }
}

impl Pipeline {
    /// The parameters the analyses and then the accumulators read, from their tables alone:
    /// nothing is built, so describing them loads no model.
    pub fn describe_parameters(&self) -> Vec<ParameterDescription> {
        let mut descriptions = beamflow_workers::process::describe_parameters(&self.analyses);
        descriptions.extend(beamflow_reducer::describe_parameters(&self.accumulators));
        descriptions
    }

    /// Reads and checks a pipeline file; errors name the file, line and column, one mistake a
    /// line. A `.json` file is read as JSON (the Helm chart renders the pipeline so), anything
    /// else as TOML.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the pipeline file", path.display()))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Self::read_json(&text)
        } else {
            Self::read_toml(&text)
        };
        parsed.map_err(|mistakes| {
            let lines: Vec<String> = mistakes
                .iter()
                .map(|mistake| format!("{}: {mistake}", path.display()))
                .collect();
            anyhow::anyhow!("{}", lines.join("\n"))
        })
    }

    /// Parses and checks a pipeline written as JSON (the same keys as the TOML).
    pub fn parse_json(text: &str) -> anyhow::Result<Self> {
        Self::read_json(text).map_err(|mistakes| anyhow::anyhow!("{}", mistakes.join("\n")))
    }

    /// Parses and checks pipeline TOML.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::read_toml(text).map_err(|mistakes| anyhow::anyhow!("{}", mistakes.join("\n")))
    }

    /// JSON has no spans to offer here: mistakes name the key path only.
    fn read_json(text: &str) -> Result<Self, Vec<String>> {
        let pipeline: Pipeline = serde_json::from_str(text).map_err(|error| {
            vec![format!(
                "line {}, column {}: {error}",
                error.line(),
                error.column()
            )]
        })?;
        let mistakes = pipeline.check();
        if mistakes.is_empty() {
            return Ok(pipeline);
        }
        Err(mistakes.iter().map(ToString::to_string).collect())
    }

    fn read_toml(text: &str) -> Result<Self, Vec<String>> {
        let pipeline: Pipeline = toml::from_str(text).map_err(|error| {
            let place = error
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or_default();
            vec![format!("{place}{}", error.message())]
        })?;
        let mistakes = pipeline.check();
        if mistakes.is_empty() {
            return Ok(pipeline);
        }
        // Parsed once more, for spans, only when there is something to point at.
        let document = toml::de::DeTable::parse(text).ok();
        Err(mistakes
            .iter()
            .map(|mistake| {
                let place = document
                    .as_ref()
                    .and_then(|document| mistake.span(document.get_ref()))
                    .map(|span| line_column(text, span.start))
                    .unwrap_or_default();
                format!("{place}{mistake}")
            })
            .collect())
    }

    /// What the types cannot say, checked before anything binds or connects: every stream
    /// named is one the ingesters offer, every path into results is one the analysis can
    /// produce, accumulators name analyses that exist, and each table passes the checks its
    /// component runs when it is built (a surrogate's model loads, a dtype is known).
    ///
    /// Where a stream's existence is known only once sources run (a `dump` ingester without
    /// `streams`, or no ingesters in the file, as for `replay`), names of streams are not
    /// checked; paths are still checked as far as the analysis's table tells.
    pub fn check(&self) -> Vec<Mistake> {
        let mut mistakes = Vec::new();
        let offered = self.offered_streams();
        // `whose` offers are `streams`; `they` says so again before listing them.
        let unknown = |stream: &StreamName, streams: &BTreeSet<StreamName>, whose, they| {
            let names = || streams.iter().map(StreamName::as_str);
            format!(
                "stream {:?} is not offered by {whose}{}; {they} {}",
                stream.as_str(),
                suggestion(stream.as_str(), names()),
                names().collect::<Vec<_>>().join(", ")
            )
        };

        for (name, ingester) in &self.ingesters {
            let table = [Segment::key("ingesters"), Segment::key(name.as_str())];
            match ingester.check() {
                Ok(()) => {}
                Err(SourceError::Table { key, message }) => {
                    mistakes.push(Mistake::value(&table, &key, message));
                }
                Err(error) => mistakes.push(Mistake::value(&table, "", error.to_string())),
            }
            let own: Option<BTreeSet<StreamName>> = ingester
                .stream_names(name.as_str())
                .map(|streams| streams.into_iter().collect());
            for (key, stream) in ingester.streams_named() {
                if let Some(own) = &own
                    && !own.contains(&stream)
                {
                    let message = unknown(&stream, own, "this ingester", "it offers");
                    mistakes.push(Mistake::value(&table, &key, message));
                }
            }
        }

        let mut results = BTreeMap::new();
        for (name, analysis) in &self.analyses {
            let table = [Segment::key("analyses"), Segment::key(name.as_str())];
            let before = mistakes.len();
            if let Some(offered) = &offered {
                for (key, stream) in analysis.streams_named() {
                    if !offered.contains(&stream) {
                        let message =
                            unknown(&stream, offered, "any ingester", "the ingesters offer");
                        mistakes.push(Mistake::value(&table, &key, message));
                    }
                }
            }
            match analysis.check() {
                // Keys made of a misspelt stream would only echo the typo at their readers.
                Ok(_) if mistakes.len() > before => {}
                Ok(keys) => {
                    results.insert(name, keys);
                }
                Err(error) => mistakes.push(Mistake {
                    path: [&table[..], &parse_key(&error.key)].concat(),
                    in_name: error.in_name,
                    message: error.message,
                }),
            }
        }
        // What an accumulator taking results of `source` (all analyses when `None`) can read;
        // an analysis with mistakes of its own is not held against its readers.
        let results_of = |source: Option<&AnalysisName>| match source {
            Some(source) => results.get(source).cloned().unwrap_or(ResultKeys::Unknown),
            None if results.len() < self.analyses.len() => ResultKeys::Unknown,
            None => ResultKeys::Either(results.values().cloned().collect()),
        };

        let mut views = Vec::new();
        for (name, accumulator) in &self.accumulators {
            let table = [Segment::key("accumulators"), Segment::key(name)];
            let source = accumulator.analysis();
            if let Some(source) = source
                && !self.analyses.contains_key(source)
            {
                let names = self.analyses.keys().map(AnalysisName::as_str);
                let message = format!(
                    "takes results from analysis {source}, which the file does not define{}",
                    suggestion(source.as_str(), names)
                );
                mistakes.push(Mistake::value(&table, "analysis", message));
                views.push((name.clone(), ResultKeys::Unknown));
                continue;
            }
            if let Err(error) = accumulator.check() {
                mistakes.push(Mistake::value(&table, "", error.to_string()));
            }
            let keys = results_of(source);
            for (key, path) in accumulator.result_paths() {
                let message = match keys.check(path, offered.as_ref()) {
                    Ok(reached) if reached.may_be_number() => continue,
                    Ok(_) => "it reaches more than a number".to_owned(),
                    Err(why) => why,
                };
                let whose = source.map_or_else(
                    || "no analysis can produce".to_owned(),
                    |source| format!("analysis {source} cannot produce"),
                );
                let message = format!("{whose} {path:?}: {message}");
                mistakes.push(Mistake::value(&table, &key, message));
            }
            views.push((name.clone(), view_keys(accumulator, results_of(source))));
        }

        for (pv, key, message) in self.controller.scan.check() {
            let table = [
                Segment::key("controller"),
                Segment::key("scan"),
                Segment::key("writable"),
                Segment::key(&pv),
            ];
            mistakes.push(Mistake::value(&table, key, message));
        }

        if let Some(hdf5) = &self.reducer.hdf5 {
            let known: Vec<&str> = self.accumulators.keys().map(String::as_str).collect();
            if let Some(message) = hdf5.every_mistake() {
                let table = [Segment::key("reducer"), Segment::key("hdf5")];
                mistakes.push(Mistake::value(&table, "every_s", message));
            }
            for name in hdf5.unknown_accumulators(&self.accumulators) {
                let table = [Segment::key("reducer"), Segment::key("hdf5")];
                let message = format!(
                    "no accumulator {name:?} to write; the pipeline has {}",
                    known.join(", ")
                );
                mistakes.push(Mistake::value(&table, "accumulators", message));
            }
            for name in hdf5.clashing_accumulators(&self.accumulators) {
                let message = format!(
                    "an HDF5 file's /entry already holds {name:?} ({}); rename the accumulator \
                     to write it under [reducer.hdf5]",
                    ENTRY_FIELDS.join(", ")
                );
                mistakes.push(Mistake {
                    path: vec![Segment::key("accumulators"), Segment::key(name)],
                    in_name: true,
                    message,
                });
            }
        }

        if let Some(pvs) = &self.reducer.pvs {
            let state = ResultKeys::Map(views);
            for (pv, source) in &pvs.values {
                let path = source.path();
                if let Err(why) = state.check(path, offered.as_ref()) {
                    let table = [
                        Segment::key("reducer"),
                        Segment::key("pvs"),
                        Segment::key("values"),
                        Segment::key(pv),
                    ];
                    let key = match source {
                        PvSource::Path(_) => "",
                        PvSource::Table(_) => "path",
                    };
                    let message =
                        format!("no accumulator publishes {path:?}: {}", state_words(&why));
                    mistakes.push(Mistake::value(&table, key, message));
                }
            }
        }
        mistakes
    }

    /// Every stream the ingesters offer; `None` when some are known only once sources run.
    fn offered_streams(&self) -> Option<BTreeSet<StreamName>> {
        if self.ingesters.is_empty() {
            return None;
        }
        let mut offered = BTreeSet::new();
        for (name, ingester) in &self.ingesters {
            offered.extend(ingester.stream_names(name.as_str())?);
        }
        Some(offered)
    }
}

/// The state's top level is the accumulators, not "results": say so in messages about it.
fn state_words(why: &str) -> String {
    why.replacen("the results have", "the state has", 1)
}

/// What an accumulator publishes, as far as its table and its analysis's results tell.
fn view_keys(accumulator: &AccumulatorConfig, results: ResultKeys) -> ResultKeys {
    let column = |each: ResultKeys| ResultKeys::List {
        len: None,
        each: Box::new(each),
    };
    match accumulator {
        AccumulatorConfig::History(config) => {
            let mut view = vec![
                ("event_number".to_owned(), column(ResultKeys::Number)),
                ("time".to_owned(), column(ResultKeys::Number)),
                (
                    "values".to_owned(),
                    ResultKeys::named(config.values.keys(), &column(ResultKeys::Number)),
                ),
            ];
            if config.time_zone.is_some() {
                view.push(("time_local".to_owned(), column(ResultKeys::Text)));
            }
            if config.worker_column {
                view.push(("worker".to_owned(), column(ResultKeys::Text)));
            }
            ResultKeys::Map(view)
        }
        AccumulatorConfig::Last(_) => ResultKeys::Map(vec![
            ("values".to_owned(), results),
            ("event_number".to_owned(), ResultKeys::Unknown),
        ]),
        AccumulatorConfig::QuadScan(_) => quad_scan_view(),
        // A kind not described here: any path into its view is accepted.
        _ => ResultKeys::Unknown,
    }
}

/// `quad_scan`'s view (`beamflow_reducer::accumulators::quad_scan`): the last closed
/// measurement's `fit` and `steps`, the open one under `live`, the closed ones under
/// `measurements/<id>`. The fit's keys are the optics report's, not checked here.
fn quad_scan_view() -> ResultKeys {
    let steps = || ResultKeys::List {
        len: None,
        each: Box::new(ResultKeys::Unknown),
    };
    let measurement = ResultKeys::Map(vec![
        ("id".to_owned(), ResultKeys::Text),
        ("state".to_owned(), ResultKeys::Text),
        ("started_at".to_owned(), ResultKeys::Text),
        ("ended_at".to_owned(), ResultKeys::Text),
        ("steps".to_owned(), steps()),
        ("fit".to_owned(), ResultKeys::Unknown),
        ("shots_without_setting".to_owned(), ResultKeys::Number),
        ("shots_beyond_step_limit".to_owned(), ResultKeys::Number),
    ]);
    ResultKeys::Map(vec![
        ("measurement_parameter".to_owned(), ResultKeys::Text),
        ("last_measurement".to_owned(), ResultKeys::Text),
        ("fit".to_owned(), ResultKeys::Unknown),
        ("steps".to_owned(), steps()),
        ("live".to_owned(), measurement),
        // Keyed by measurement ids, known only at run time.
        ("measurements".to_owned(), ResultKeys::Unknown),
        ("shots_outside_measurement".to_owned(), ResultKeys::Number),
    ])
}

/// A mistake [`Pipeline::check`] found, at a key of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistake {
    /// The key from the top of the file.
    pub path: Vec<Segment>,
    /// Whether the key's name is at fault (an unknown model input) rather than its value.
    pub in_name: bool,
    /// What is wrong there.
    pub message: String,
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A key of a table.
    Key(String),
    /// An element of an array.
    Index(usize),
}

impl Segment {
    fn key(name: &str) -> Self {
        Segment::Key(name.to_owned())
    }
}

impl Mistake {
    /// A mistake in the value at `key` (dotted, relative to `table`; empty: the table itself).
    fn value(table: &[Segment], key: &str, message: String) -> Self {
        Self {
            path: [table, &parse_key(key)].concat(),
            in_name: false,
            message,
        }
    }

    /// The bytes of `document` the mistake is about: the value (or the key's name) at its path,
    /// or the nearest enclosing one that the file spells out.
    fn span(&self, document: &toml::de::DeTable<'_>) -> Option<std::ops::Range<usize>> {
        let mut best = None;
        let mut current: Option<&toml::de::DeValue<'_>> = None;
        for (i, segment) in self.path.iter().enumerate() {
            let last = i + 1 == self.path.len();
            let found = match segment {
                Segment::Key(name) => {
                    let table = match current {
                        None => Some(document),
                        Some(value) => value.as_table(),
                    };
                    table
                        .and_then(|table| table.get_key_value(name.as_str()))
                        .map(|(key, value)| {
                            let span = if last && self.in_name {
                                key.span()
                            } else {
                                value.span()
                            };
                            (span, value)
                        })
                }
                Segment::Index(index) => current
                    .and_then(toml::de::DeValue::as_array)
                    .and_then(|array| array.get(*index))
                    .map(|value| (value.span(), value)),
            };
            let Some((span, value)) = found else {
                break;
            };
            // An empty span points at nothing: the enclosing one is kept.
            if !span.is_empty() {
                best = Some(span);
            }
            current = Some(value.get_ref());
        }
        best
    }
}

impl std::fmt::Display for Mistake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, segment) in self.path.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(name) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(name)?;
                    } else {
                        write!(f, "{name:?}")?;
                    }
                }
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// A dotted key as the component crates write it (`attach[0]`, `inputs."QUAD:IN20:525:BCTRL"`,
/// `pvs."otr2".dtype`) as segments.
fn parse_key(key: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut rest = key;
    while let Some(first) = rest.chars().next() {
        match first {
            '.' => rest = &rest[1..],
            '[' => {
                let end = rest.find(']').unwrap_or(rest.len());
                if let Ok(index) = rest[1..end].parse() {
                    segments.push(Segment::Index(index));
                }
                rest = rest.get(end + 1..).unwrap_or_default();
            }
            '"' => {
                let mut name = String::new();
                let mut end = rest.len();
                let mut chars = rest.char_indices().skip(1);
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => name.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => name.push(c),
                    }
                }
                segments.push(Segment::Key(name));
                rest = &rest[end..];
            }
            _ => {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                segments.push(Segment::key(&rest[..end]));
                rest = &rest[end..];
            }
        }
    }
    segments
}

/// `line L, column C: ` of a byte offset, columns counted in characters.
fn line_column(text: &str, offset: usize) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    format!("line {line}, column {column}: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJECTOR: &str = include_str!("../examples/injector.toml");

    /// The error of the embedded pipeline with one typo: `from` (found once) made `to`.
    fn typo(from: &str, to: &str) -> String {
        assert_eq!(INJECTOR.matches(from).count(), 1, "{from}");
        let text = INJECTOR.replacen(from, to, 1);
        format!("{:#}", Pipeline::parse(&text).unwrap_err())
    }

    #[test]
    fn parameters_are_described_from_the_tables_without_building_anything() {
        // The model does not exist: describing parameters must not load it.
        let pipeline: Pipeline = toml::from_str(
            r#"
[analyses.beam]
kind = "beam_image"
stream = "otr2"
dark_parameter = "otr2_dark"
[analyses.model]
kind = "surrogate"
model = "/nonexistent/model"
[accumulators.scan]
kind = "quad_scan"
setting = "attached/qe04"
energy_ev = 135e6
quad_length_m = 0.108
rmat_x = [[1, 2], [0, 1]]
rmat_y = [[1, 2], [0, 1]]
"#,
        )
        .unwrap();
        let described: Vec<(String, String)> = pipeline
            .describe_parameters()
            .into_iter()
            .map(|d| (d.name.to_string(), d.description))
            .collect();
        assert_eq!(
            described,
            [
                (
                    "otr2_dark".to_owned(),
                    "dark frame of stream otr2: the whole image as little-endian u16 or f32"
                        .to_owned()
                ),
                (
                    "quad_scan_measurement".to_owned(),
                    "quad_scan: the open measurement's id (shots are fitted only inside one); \
                     empty closes it, another id closes it and opens that one"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn errors_name_the_place_and_what_was_expected() {
        let error = Pipeline::parse("[analyses.stats]\nkind = \"frame_statz\"\n").unwrap_err();
        // The list of kinds grows with every analysis; the place and the first are what matter.
        let text = format!("{error:#}");
        assert!(
            text.starts_with(
                "line 2, column 8: unknown variant `frame_statz`, expected one of `frame_stats`"
            ),
            "{text}"
        );
        let error = Pipeline::parse("[analyses.stats]\nkind = \"frame_stats\"\nstreamz = []\n")
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `streamz`"),
            "{error:#}"
        );
        let error = Pipeline::parse("[accumulators.h]\nkind = \"last\"\nanalysis = \"nope\"\n")
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "line 3, column 12: accumulators.h.analysis: takes results from analysis nope, which the file does not define"
        );
    }

    #[test]
    fn the_security_section_has_safe_defaults_and_no_unknown_keys() {
        let defaults = Pipeline::parse("").unwrap().security;
        assert!(!defaults.open_writes && !defaults.protect_reads);
        assert_eq!(defaults.parameter_limits().max_bytes, 64 << 20);
        assert_eq!(defaults.roots(), Roots::default_roots());
        let set = Pipeline::parse(
            "[security]\nopen_writes = true\nmax_parameters = 8\nroots = [\"/data\"]\n",
        )
        .unwrap()
        .security;
        assert!(set.open_writes);
        assert_eq!(set.parameter_limits().max_names, 8);
        assert_eq!(set.roots().folders(), [std::path::PathBuf::from("/data")]);
        let (access, source) = set.access(false).unwrap();
        assert!(access.writes_open() && source.is_none());
        let error = Pipeline::parse("[security]\nopen_write = true\n").unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `open_write`"),
            "{error:#}"
        );
    }

    #[test]
    fn the_example_pipelines_pass_the_checks() {
        for example in ["pipeline.toml", "sim.toml", "injector.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(example);
            let pipeline = Pipeline::load(&path).unwrap();
            assert_eq!(pipeline.check(), [], "{example}");
        }
        let pipeline = Pipeline::parse(INJECTOR).unwrap();
        assert_eq!(pipeline.analyses.len(), 5);
        assert_eq!(pipeline.accumulators.len(), 7);
    }

    /// The embedded pipeline lets scans write the sim's scan quad only; limits that cannot be
    /// a range are refused where they are written.
    #[test]
    fn scans_write_only_what_the_controller_section_lists() {
        let pipeline = Pipeline::parse(INJECTOR).unwrap();
        let writable: Vec<&String> = pipeline.controller.scan.writable.keys().collect();
        assert_eq!(writable, ["QUAD:IN20:525:BCTRL"]);
        assert!(
            Pipeline::parse("")
                .unwrap()
                .controller
                .scan
                .writable
                .is_empty(),
            "nothing is writable unless listed"
        );
        let error =
            Pipeline::parse("[controller.scan.writable.\"Q:BCTRL\"]\nlow = 2.0\nhigh = 1.0\n")
                .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            r#"line 1, column 1: controller.scan.writable."Q:BCTRL": low (2) must be below high (1)"#
        );
        let error =
            Pipeline::parse("[controller.scan.writable.\"Q:BCTRL\"]\nhigh = nan\n").unwrap_err();
        assert!(
            format!("{error:#}").starts_with("line 2, column 8: "),
            "{error:#}"
        );
        let error =
            Pipeline::parse("[controller.scan.writable.\"Q:BCTRL\"]\nhihg = 1.0\n").unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `hihg`"),
            "{error:#}"
        );
    }

    const STREAMS: &str = "the ingesters offer cq01, l0a_phase, l0b_phase, otr2, qa01, qa02, qe01, qe02, qe03, qe04, solenoid, sq01, xrms, yrms";

    #[test]
    fn a_stream_no_ingester_offers_is_refused_where_it_is_named() {
        assert_eq!(
            typo(r#"attach = ["qe04"]"#, r#"attach = ["qe4"]"#),
            format!(
                r#"line 44, column 11: analyses.otr2.attach[0]: stream "qe4" is not offered by any ingester (did you mean "qe04"?); {STREAMS}"#
            )
        );
        assert_eq!(
            typo(r#"streams = ["otr2"]"#, r#"streams = ["otr"]"#),
            format!(
                r#"line 37, column 12: analyses.screen.streams[0]: stream "otr" is not offered by any ingester (did you mean "otr2"?); {STREAMS}"#
            )
        );
        assert_eq!(
            typo(
                r#""QUAD:IN20:525:BCTRL" = "qe04""#,
                r#""QUAD:IN20:525:BCTRL" = "qe4""#
            ),
            format!(
                r#"line 62, column 25: analyses.lcls_injector.inputs."QUAD:IN20:525:BCTRL": stream "qe4" is not offered by any ingester (did you mean "qe04"?); {STREAMS}"#
            )
        );
        assert_eq!(
            typo(r#"stream = "otr2" }"#, r#"stream = "otr" }"#),
            format!(
                r#"line 14, column 38: ingesters.injector.clock.stream: stream "otr" is not offered by this ingester (did you mean "otr2"?); it offers {}"#,
                STREAMS.trim_start_matches("the ingesters offer ")
            )
        );
    }

    #[test]
    fn a_path_the_analysis_cannot_produce_is_refused_with_the_nearest_key() {
        assert_eq!(
            typo(r#""x/sigma_um", sigma_y"#, r#""x/sigma_umm", sigma_y"#),
            r#"line 87, column 25: accumulators.beam.values.sigma_x_um: analysis otr2 cannot produce "x/sigma_umm": "x" has no key "sigma_umm"; did you mean "sigma_um"?"#
        );
        assert_eq!(
            typo(r#""otr2/0/mean""#, r#""otr2/0/maen""#),
            r#"line 80, column 19: accumulators.screen.values.mean: analysis screen cannot produce "otr2/0/maen": "otr2/0" has no key "maen"; did you mean "mean"?"#
        );
        assert_eq!(
            typo(r#"xrms = "xrms/value""#, r#"xrms = "xrm/value""#),
            r#"line 74, column 40: accumulators.machine.values.xrms: analysis pvs cannot produce "xrm/value": the results have no key "xrm"; did you mean "xrms"?"#
        );
        assert_eq!(
            typo(r#""attached/qe04""#, r#""attached/qe4""#),
            r#"line 94, column 11: accumulators.quad_scan.setting: analysis otr2 cannot produce "attached/qe4": "attached" has no key "qe4"; did you mean "qe04"?"#
        );
        assert_eq!(
            typo(
                r#""outputs/norm_emit_x/value""#,
                r#""outputs/norm_emitx/value""#
            ),
            r#"line 67, column 118: accumulators.model.values.norm_emit_x: analysis lcls_injector cannot produce "outputs/norm_emitx/value": "outputs" has no key "norm_emitx"; did you mean "norm_emit_x"?"#
        );
        assert_eq!(
            typo(
                r#""last/values/x/sigma_um""#,
                r#""last/values/x/sigma_umm""#
            ),
            r#"line 116, column 27: reducer.pvs.values."OTR2:SIGMA_X".path: no accumulator publishes "last/values/x/sigma_umm": "last/values/x" has no key "sigma_umm"; did you mean "sigma_um"?"#
        );
        assert_eq!(
            typo(
                r#""quad_scan/fit/x/norm_emit""#,
                r#""quad_scna/fit/x/norm_emit""#
            ),
            r#"line 118, column 22: reducer.pvs.values.EMITN_X.path: no accumulator publishes "quad_scna/fit/x/norm_emit": the state has no key "quad_scna"; did you mean "quad_scan"?"#
        );
        assert_eq!(
            typo(
                r#""quad_scan/fit/x/norm_emit""#,
                r#""quad_scan/live/fti/x/norm_emit""#
            ),
            r#"line 118, column 22: reducer.pvs.values.EMITN_X.path: no accumulator publishes "quad_scan/live/fti/x/norm_emit": "quad_scan/live" has no key "fti"; did you mean "fit"?"#
        );
    }

    /// The running measurement's fit and a kept one's are PV paths as good as the last fit.
    #[test]
    fn result_pvs_may_read_the_running_and_the_kept_quad_scan_measurements() {
        for path in [
            "quad_scan/live/fit/x/norm_emit",
            "quad_scan/measurements/qs-1/fit/y/norm_emit",
            "quad_scan/shots_outside_measurement",
        ] {
            let text = INJECTOR.replacen(r#""quad_scan/fit/x/norm_emit""#, &format!("{path:?}"), 1);
            assert!(Pipeline::parse(&text).is_ok(), "{path}");
        }
    }

    #[test]
    fn hdf5_files_name_accumulators_the_pipeline_has_and_a_period_above_zero() {
        let good = format!(
            "{INJECTOR}\n[reducer.hdf5]\nfolder = \"/data\"\naccumulators = [\"beam\"]\nevery_s = 30\n"
        );
        assert!(Pipeline::parse(&good).is_ok());
        let bad = format!(
            "{INJECTOR}\n[reducer.hdf5]\nfolder = \"/data\"\naccumulators = [\"bean\"]\nevery_s = -1\n"
        );
        let said = Pipeline::parse(&bad).unwrap_err().to_string();
        assert!(
            said.contains("reducer.hdf5.every_s: -1 is not a number of seconds above 0"),
            "{said}"
        );
        assert!(
            said.contains(r#"reducer.hdf5.accumulators: no accumulator "bean" to write"#),
            "{said}"
        );
    }

    #[test]
    fn an_accumulator_written_to_hdf5_may_not_be_named_like_the_entrys_own_fields() {
        let hdf5 = "\n[reducer.hdf5]\nfolder = \"/data\"\n";
        let clash = "\n[accumulators.title]\nkind = \"history\"\nanalysis = \"otr2\"\nvalues = { x = \"x/sigma_um\" }\n";
        let said = Pipeline::parse(&format!("{INJECTOR}{clash}{hdf5}"))
            .unwrap_err()
            .to_string();
        assert!(
            said.contains(r#"accumulators.title: an HDF5 file's /entry already holds "title""#),
            "{said}"
        );
        // Unwritten, or not among the accumulators written, the name is free.
        assert!(Pipeline::parse(&format!("{INJECTOR}{clash}")).is_ok());
        let named = format!("{hdf5}accumulators = [\"beam\"]\n");
        assert!(Pipeline::parse(&format!("{INJECTOR}{clash}{named}")).is_ok());
    }

    #[test]
    fn component_checks_run_at_load_and_point_at_the_key() {
        assert_eq!(
            typo(
                r#""QUAD:IN20:525:BCTRL" = "qe04""#,
                r#""QUAD:IN20:525:BCTL" = "qe04""#
            ),
            r#"line 62, column 1: analyses.lcls_injector.inputs."QUAD:IN20:525:BCTL": "QUAD:IN20:525:BCTL" is not an input of the model (did you mean "QUAD:IN20:525:BCTRL"?)"#
        );
        assert_eq!(
            typo(r#"dtype = "uint16""#, r#"dtype = "uint61""#),
            r#"line 17, column 56: ingesters.injector.pvs.otr2.dtype: unknown dtype "uint61"; expected a numpy type name: uint8, uint16, uint32, uint64, int8, int16, int32, int64, float32 or float64"#
        );
        assert_eq!(
            typo(
                r#""builtin:lcls_cu_injector""#,
                r#""builtin:lcls_cu_injektor""#
            ),
            r#"line 48, column 9: analyses.lcls_injector.model: builtin:lcls_cu_injektor: no model "lcls_cu_injektor" is built in (there is lcls_cu_injector)"#
        );
        assert_eq!(
            typo("pixel_um = 12.66 ", "pixel_um = 12.66\nborder_px = 0 "),
            "line 43, column 13: analyses.otr2.border_px: must be at least 1: the border gives the noise"
        );
        assert_eq!(
            typo(
                r#"clock = { kind = "trigger", stream = "otr2" }"#,
                r#"clock = { kind = "period", rate_hz = 0 }"#
            ),
            "line 14, column 38: ingesters.injector.clock.rate_hz: must be above 0 and at most 100000, got 0"
        );
        assert_eq!(
            typo(
                r#"time_zone = "America/Los_Angeles"   #"#,
                r#"time_zone = "America/Los_Angelos"   #"#
            ),
            "line 64, column 1: accumulators.model: time_zone \"America/Los_Angelos\": failed to find time zone `America/Los_Angelos` in time zone database"
        );
    }

    #[test]
    fn a_result_pv_table_names_a_misspelt_key_and_says_what_is_wrong() {
        assert_eq!(
            typo(
                r#"{ path = "screen/values/mean", elements = 2000,"#,
                r#"{ path = "screen/values/mean", elemnts = 2000,"#
            ),
            "line 122, column 54: unknown field `elemnts`, expected one of `path`, `elements`, `scale`, `units`, `precision`, `display`, `control`, `alarm`, `max_age_s`, `columns`, `image`, `history`"
        );
        assert_eq!(
            typo(
                r#"units = "kG", precision = 4"#,
                r#"units = "kG·m/s²", precision = 4"#
            ),
            r#"line 115, column 15: units "kG·m/s²" is 9 bytes; Channel Access carries at most 7"#
        );
        assert_eq!(
            typo(r#""QE04:BACT" = { path"#, r#""QE04:BACT" = 4 # { path"#),
            r#"line 115, column 15: invalid type: integer `4`, expected a state path string ("last/values/x/sigma_um") or a table { path = "...", units = "µm", precision = 2, display = [lo, hi], control = [lo, hi], alarm = { lolo, low, high, hihi }, max_age_s = 2, scale = 1, elements = N, columns = [..], image = true, history = N }"#
        );
    }

    #[test]
    fn json_mistakes_name_the_key_path_and_every_mistake_is_reported() {
        let json = r#"{"ingesters": {"det": {"kind": "sim"}},
            "analyses": {"s": {"kind": "frame_stats", "streams": ["dte"]}},
            "accumulators": {"h": {"kind": "history", "analysis": "s", "capacity": 0, "values": {"m": "det/0/mean"}}}}"#;
        assert_eq!(
            format!("{:#}", Pipeline::parse_json(json).unwrap_err()),
            "analyses.s.streams[0]: stream \"dte\" is not offered by any ingester (did you mean \"det\"?); the ingesters offer det\naccumulators.h: `capacity` must be at least 1"
        );
    }

    #[test]
    fn streams_are_not_checked_when_only_the_sources_know_them() {
        let text = "[ingesters.d]\nkind = \"dump\"\npath = \"x.cbors\"\n\n[analyses.s]\nkind = \"frame_stats\"\nstreams = [\"anything\"]\n\n[accumulators.h]\nkind = \"history\"\nanalysis = \"s\"\nvalues = { m = \"anything/0/mean\" }\n";
        Pipeline::parse(text).unwrap();
        let error = Pipeline::parse(&text.replace("0/mean", "0/maen")).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            r#"line 12, column 16: accumulators.h.values.m: analysis s cannot produce "anything/0/maen": "anything/0" has no key "maen"; did you mean "mean"?"#
        );
    }

    #[test]
    fn key_paths_round_trip_through_their_dotted_form() {
        assert_eq!(
            parse_key(r#"inputs."QUAD:IN20:525:BCTRL".x[3]"#),
            [
                Segment::key("inputs"),
                Segment::key("QUAD:IN20:525:BCTRL"),
                Segment::key("x"),
                Segment::Index(3)
            ]
        );
        assert_eq!(parse_key(""), []);
    }
}
