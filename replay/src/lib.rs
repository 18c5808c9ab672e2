//! Replay: recorded dumps through the same analyses and accumulators as a live run, in one
//! process, in parallel, with results applied in event order.
//!
//! Three stages, each bounded so that memory does not grow with the file:
//!
//! 1. a reader thread merges the dumps by event number ([`merge`]) and cuts the stream into
//!    batches of at most [`BATCH_EVENTS`] events or [`BATCH_BYTES`] bytes, at most two batches
//!    ahead (so memory in flight is bounded by a few batches, not by the file);
//! 2. a rayon pool of `threads` threads runs every analysis on every event of a batch;
//! 3. the calling thread applies the outputs to the reducer in event order.
//!
//! Because analyses take `&self` and results are applied in event order, the final state is the
//! same for any number of threads (a test checks it).
//!
//! # Layout
//!
//! - [`merge`]: dumps → events ordered by number.
//! - this file: [`run`], the batching pipeline, counting and the [`Summary`].
//!
//! A replay that reads no event fails rather than reporting an empty state as a success, and
//! the summary names what the pipeline file got wrong without failing: streams no analysis
//! reads, and accumulator columns that matched no result.

pub mod merge;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use beamflow_protocol::{
    AnalysisName, EventData, EventNumber, EventReport, ParameterName, Parameters, StreamName,
    StreamType, WorkerName,
};
use beamflow_reducer::http::{Status, View};
use beamflow_reducer::{AccumulatorConfig, Reducer, Unmatched};
use beamflow_workers::{Analyses, AnalysisConfig, Failure};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tracing::{debug, error, info};

use crate::merge::{InputError, Merged};

/// Most events in one batch.
pub const BATCH_EVENTS: usize = 1024;
/// Most frame bytes in one batch (a batch holds at least one event). Small on purpose: frames
/// are analysed while the reader's copy is still in the CPU cache. With 4 MiB frames on the
/// 2-core bench machine, 4 MiB batches replayed at 4.2-4.6 GB/s, 16 MiB at 1.5-4.5 GB/s and
/// 64 MiB at 1.7-3.3 GB/s.
pub const BATCH_BYTES: usize = 4 << 20;
/// Batches the reader may run ahead of the analyses.
const BATCHES_AHEAD: usize = 2;
/// How often the HTTP view is refreshed while replaying.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);
/// The worker name results carry in a replay.
pub const REPLAY_WORKER: &str = "replay";

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// The pipeline's analyses by name.
    pub analyses: BTreeMap<AnalysisName, AnalysisConfig>,
    /// The pipeline's accumulators by name.
    pub accumulators: BTreeMap<String, AccumulatorConfig>,
    /// Parameter values as set by the user (typed by the descriptions).
    pub parameters: Vec<(ParameterName, Bytes)>,
    /// The dumps; events are merged across them by number.
    pub dumps: Vec<PathBuf>,
    /// Analysis threads; 0 means one per core.
    pub threads: usize,
    /// Stop at the first bad record or failed analysis instead of counting and skipping it.
    pub strict: bool,
    /// The bar to draw progress on (only shown on a terminal); `None` draws nothing. The caller
    /// owns it so that it can route log lines around it (`ProgressBar::suspend`).
    pub progress: Option<ProgressBar>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Events replayed.
    pub events: u64,
    /// Results applied.
    pub results: u64,
    /// The last event replayed.
    pub last_event: Option<EventNumber>,
    /// Uncompressed dump bytes read.
    pub bytes: u64,
    /// Wall time from the first read to the final state.
    pub elapsed: Duration,
    /// Records that could not be read and were skipped.
    pub bad_records: u64,
    /// Events each analysis failed on.
    pub analysis_errors: BTreeMap<String, u64>,
    /// Results each accumulator rejected.
    pub accumulator_errors: BTreeMap<String, u64>,
    /// Streams in the dumps that no analysis reads (a typo in a stream name, or a recorded
    /// stream the pipeline forgot).
    pub unread_streams: Vec<StreamName>,
    /// Per accumulator, its columns whose path matched none of the first results.
    pub unmatched_columns: BTreeMap<String, Vec<Unmatched>>,
}

impl Summary {
    /// Events per second of wall time.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Dump megabytes (10^6 bytes) per second of wall time.
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let analysis_errors: u64 = self.analysis_errors.values().sum();
        let accumulator_errors: u64 = self.accumulator_errors.values().sum();
        write!(
            f,
            "replayed {} events ({:.1} MB) in {:.3} s: {:.0} events/s, {:.0} MB/s; {} results; \
             {} bad records skipped, {} analysis errors, {} accumulator errors",
            self.events,
            self.bytes as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.events_per_second(),
            self.megabytes_per_second(),
            self.results,
            self.bad_records,
            analysis_errors,
            accumulator_errors,
        )?;
        // One line each, after the counts, so that a script reading the first line is unaffected.
        if !self.unread_streams.is_empty() {
            let names: Vec<&str> = self.unread_streams.iter().map(StreamName::as_str).collect();
            write!(f, "\nstreams no analysis reads: {}", names.join(", "))?;
        }
        for (accumulator, columns) in &self.unmatched_columns {
            for column in columns {
                write!(f, "\naccumulator {accumulator}: {column}")?;
            }
        }
        Ok(())
    }
}

struct Batch {
    events: Vec<EventData>,
    errors: Vec<InputError>,
    bytes_read: u64,
}

/// Replays the dumps, publishing state and status to `view` as it goes and at the end.
pub fn run(config: &ReplayConfig, view: &View) -> anyhow::Result<Summary> {
    let analyses = Analyses::build(&config.analyses)?;
    let mut reducer = Reducer::new(&config.accumulators, Parameters::default())?;
    let mut descriptions = analyses.describe_parameters();
    descriptions.extend(reducer.describe_parameters());
    let parameters = Parameters::resolve(config.parameters.iter().cloned(), &descriptions)?;
    reducer.set_parameters(parameters.clone());
    analyses.start_scan(&parameters);
    reducer.run_timers(Instant::now());
    if analyses.in_order() {
        info!(
            "A Python payload runs in this pipeline: replay runs the analyses on one thread, \
             event by event in order (one interpreter runs one call at a time); for parallel \
             Python, run worker processes."
        );
    }

    let merged = Merged::open(&config.dumps)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .thread_name(|i| format!("replay-{i}"))
        .build()
        .context("cannot start the analysis threads")?;
    let progress = config.progress.clone().unwrap_or_else(ProgressBar::hidden);
    style_progress(&progress, config);

    let started = Instant::now();
    let (sender, batches) = sync_channel(BATCHES_AHEAD);
    let reader = std::thread::Builder::new()
        .name("replay-reader".to_owned())
        .spawn(move || read_batches(merged, &sender))
        .context("cannot start the reader thread")?;

    let mut summary = Summary::default();
    let mut streams = BTreeMap::new();
    let mut last_publish = Instant::now();
    let stage = AnalysisStage {
        analyses: &analyses,
        parameters: &parameters,
        pool: &pool,
        worker: WorkerName::from(REPLAY_WORKER),
        strict: config.strict,
    };
    let outcome = stage.apply_batches(
        &batches,
        &mut reducer,
        &mut summary,
        &mut streams,
        |summary: &mut Summary, reducer: &mut Reducer| {
            reducer.run_timers(Instant::now());
            progress.set_position(summary.bytes);
            progress.set_message(format!("{} events", summary.events));
            if last_publish.elapsed() >= PUBLISH_INTERVAL {
                summary.elapsed = started.elapsed();
                summary.unmatched_columns = reducer.unmatched();
                view.publish_reducer(reducer, status(summary, false));
                last_publish = Instant::now();
            }
        },
    );
    // Dropping the receiver stops the reader at its next batch if we stopped early.
    drop(batches);
    if reader.join().is_err() {
        bail!("the reader thread panicked");
    }
    outcome?;
    if summary.events == 0 {
        progress.finish_and_clear();
        return Err(nothing_read(&config.dumps, &summary));
    }

    analyses.finish(&parameters);
    reducer.finish();
    summary.elapsed = started.elapsed();
    summary.results = reducer.counts().results;
    summary.accumulator_errors = reducer.counts().accumulator_errors.clone();
    summary.unmatched_columns = reducer.unmatched();
    summary.unread_streams = streams
        .into_iter()
        .filter(|(stream, typ)| {
            !config
                .analyses
                .values()
                .any(|analysis| analysis.reads_stream(stream, typ))
        })
        .map(|(stream, _)| stream)
        .collect();
    progress.finish_and_clear();
    view.publish_reducer(&reducer, status(&summary, true));
    debug!(
        events = summary.events,
        bad_records = summary.bad_records,
        "Replay finished."
    );
    Ok(summary)
}

/// Why a replay that read no event failed: an empty state is never what the user asked for,
/// and a script must not take it for a result.
fn nothing_read(dumps: &[PathBuf], summary: &Summary) -> anyhow::Error {
    if summary.bad_records > 0 {
        return anyhow::anyhow!(
            "no events to replay: all {} records read were bad and skipped (the first is logged above)",
            summary.bad_records
        );
    }
    let names: Vec<String> = dumps.iter().map(|p| p.display().to_string()).collect();
    let verb = if names.len() == 1 { "holds" } else { "hold" };
    anyhow::anyhow!("no events to replay: {} {verb} none", names.join(", "))
}

fn read_batches(mut merged: Merged, sender: &SyncSender<Batch>) {
    loop {
        let mut batch = Batch {
            events: Vec::new(),
            errors: Vec::new(),
            bytes_read: 0,
        };
        let mut bytes = 0;
        let mut exhausted = true;
        for item in merged.by_ref() {
            match item {
                Ok(event) => {
                    bytes += event.byte_len();
                    batch.events.push(event);
                }
                Err(error) => batch.errors.push(error),
            }
            if batch.events.len() >= BATCH_EVENTS || bytes >= BATCH_BYTES {
                exhausted = false;
                break;
            }
        }
        batch.bytes_read = merged.bytes_read();
        if sender.send(batch).is_err() || exhausted {
            return;
        }
    }
}

/// What runs the analyses of each batch and applies their results.
struct AnalysisStage<'a> {
    analyses: &'a Analyses,
    parameters: &'a Parameters,
    pool: &'a rayon::ThreadPool,
    worker: WorkerName,
    strict: bool,
}

impl AnalysisStage<'_> {
    fn apply_batches(
        &self,
        batches: &Receiver<Batch>,
        reducer: &mut Reducer,
        summary: &mut Summary,
        streams: &mut BTreeMap<StreamName, StreamType>,
        mut on_batch: impl FnMut(&mut Summary, &mut Reducer),
    ) -> anyhow::Result<()> {
        let Self {
            analyses,
            parameters,
            pool,
            worker,
            strict,
        } = self;
        let strict = *strict;
        for batch in batches {
            for input_error in batch.errors {
                if strict {
                    return Err(input_error)
                        .context("bad record (without --strict it would be skipped)");
                }
                summary.bad_records += 1;
                if summary.bad_records == 1 {
                    error!(error = %input_error, "Skipped a bad record; further ones are only counted.");
                } else {
                    debug!(error = %input_error, "Skipped a bad record.");
                }
            }
            let processed: Vec<(EventReport, Vec<Failure>)> = if analyses.in_order() {
                let events: Vec<&EventData> = batch.events.iter().collect();
                analyses.process_many(&events, parameters, worker)
            } else {
                pool.install(|| {
                    batch
                        .events
                        .par_iter()
                        .map(|event| analyses.process(event, parameters, worker))
                        .collect()
                })
            };
            for (report, failures) in processed {
                let event = report.event_number;
                for Failure { analysis, error } in failures {
                    if strict {
                        bail!("event {event}: analysis {analysis}: {error}");
                    }
                    let count = summary
                        .analysis_errors
                        .entry(analysis.to_string())
                        .or_default();
                    *count += 1;
                    if *count == 1 {
                        error!(%event, %analysis, %error, "Analysis failed; further failures are only counted.");
                    } else {
                        debug!(%event, %analysis, %error, "Analysis failed.");
                    }
                }
                for result in &report.results {
                    reducer.apply(result);
                }
            }
            for event in &batch.events {
                for (stream, data) in &event.streams {
                    if !streams.contains_key(stream) {
                        streams.insert(stream.clone(), data.typ.clone());
                    }
                }
            }
            summary.events += batch.events.len() as u64;
            if let Some(last) = batch.events.last() {
                summary.last_event = Some(last.event_number);
            }
            summary.bytes = batch.bytes_read;
            on_batch(summary, reducer);
        }
        Ok(())
    }
}

fn status(summary: &Summary, finished: bool) -> Status {
    Status {
        source: "replay".to_owned(),
        finished,
        events: summary.events,
        results: summary.results,
        last_event: summary.last_event.map(|n| n.0),
        bad_records: summary.bad_records,
        analysis_errors: summary.analysis_errors.clone(),
        accumulator_errors: summary.accumulator_errors.clone(),
        unmatched_columns: summary.unmatched_columns.clone(),
        events_per_second: summary.events_per_second(),
        ..Status::default()
    }
}

fn style_progress(bar: &ProgressBar, config: &ReplayConfig) {
    let compressed = config
        .dumps
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "gz"));
    // Compressed sizes say nothing about the bytes to read: a spinner then.
    let style = if compressed {
        ProgressStyle::with_template("{spinner} {bytes} read, {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
    } else {
        let total: u64 = config
            .dumps
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        bar.set_length(total);
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {msg} ({bytes_per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
    };
    bar.set_style(style);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_unread_streams_and_unmatched_columns_after_the_counts() {
        let mut summary = Summary {
            events: 3,
            elapsed: Duration::from_secs(1),
            ..Summary::default()
        };
        let counts = summary.to_string();
        assert_eq!(counts.lines().count(), 1, "{counts}");
        summary.unread_streams = vec!["cq01".into(), "sq01".into()];
        summary.unmatched_columns.insert(
            "machine".to_owned(),
            vec![Unmatched {
                column: "xrms".to_owned(),
                path: "xrmz/value".to_owned(),
                results: 3,
                reason: "\"xrmz\" is not a key of the result".to_owned(),
                keys: vec!["qe04".to_owned(), "xrms".to_owned()],
            }],
        );
        let text = summary.to_string();
        let (first, rest) = text.split_once('\n').unwrap();
        assert_eq!(first, counts);
        insta::assert_snapshot!(rest, @r#"
        streams no analysis reads: cq01, sq01
        accumulator machine: column xrms path "xrmz/value" matched none of the first 3 results; "xrmz" is not a key of the result; keys there: qe04, xrms
        "#);
    }

    #[test]
    fn reading_nothing_says_whether_the_dumps_were_empty_or_bad() {
        let dumps = [PathBuf::from("a.cbors"), PathBuf::from("b.cbors")];
        let empty = nothing_read(&dumps, &Summary::default());
        assert_eq!(
            empty.to_string(),
            "no events to replay: a.cbors, b.cbors hold none"
        );
        let bad = Summary {
            bad_records: 2,
            ..Summary::default()
        };
        assert_eq!(
            nothing_read(&dumps[..1], &bad).to_string(),
            "no events to replay: all 2 records read were bad and skipped (the first is logged above)"
        );
    }
}
