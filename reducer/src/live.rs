//! The live reducer's loop body, without sockets: expectations from the controller and reports
//! from workers in, results applied in event order, a view published. The binary feeds it from
//! ZeroMQ; tests feed it directly.

use std::collections::BTreeSet;

use beamflow_protocol::{EventNumber, EventReport, WorkerName};
use serde::Serialize;
use tracing::warn;

use crate::Reducer;
use crate::order::{Offer, Reorder};

/// What reaches the reducer.
#[derive(Debug, Clone, PartialEq)]
pub enum ReducerInput {
    /// From the controller: the workers an event went to (again after a re-assignment).
    Expect {
        /// The event.
        event_number: EventNumber,
        /// Its workers.
        workers: BTreeSet<WorkerName>,
    },
    /// From a worker: its outcome for one event.
    Report(EventReport),
}

pub use beamflow_protocol::control::LiveCounts;

/// The reducer's state: the reorder buffer in front of the accumulators.
pub struct ReducerCore {
    reorder: Reorder,
    reducer: Reducer,
    incomplete: BTreeSet<EventNumber>,
    incomplete_events: u64,
    unexpected_reports: u64,
    /// Microseconds from the ingester reading each event to its results being applied, for the
    /// last [`LATENCY_WINDOW`] events with results.
    latencies: std::collections::VecDeque<u32>,
}

/// Events whose latency the status summarises.
pub const LATENCY_WINDOW: usize = 10_000;

/// End-to-end latency percentiles over the last [`LATENCY_WINDOW`] events, in milliseconds:
/// from the ingester reading the frame (`created_at`) to the reducer applying its results.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Events measured.
    pub events: usize,
}

impl ReducerCore {
    /// A reducer applying events from `first` on, buffering at most `capacity` events.
    pub fn new(reducer: Reducer, first: EventNumber, capacity: usize) -> Self {
        Self {
            reorder: Reorder::new(first, capacity),
            reducer,
            incomplete: BTreeSet::new(),
            incomplete_events: 0,
            unexpected_reports: 0,
            latencies: std::collections::VecDeque::with_capacity(LATENCY_WINDOW),
        }
    }

    /// Takes one input and applies every event it completes; returns the next event to apply
    /// (the controller's "reduced up to", which releases the ingesters' retained frames).
    pub fn handle(&mut self, input: ReducerInput) -> EventNumber {
        match input {
            ReducerInput::Expect {
                event_number,
                workers,
            } => self.reorder.expect(event_number, workers),
            ReducerInput::Report(report) => {
                if !report.missing.is_empty() {
                    self.incomplete.insert(report.event_number);
                }
                let (event, worker) = (report.event_number, report.worker.clone());
                if self.reorder.offer(report) == Offer::Unexpected {
                    if self.unexpected_reports == 0 {
                        warn!(%event, %worker, "Report from a worker the event was taken from; kept (counted from now on).");
                    }
                    self.unexpected_reports += 1;
                }
            }
        }
        while let Some((event, results)) = self.reorder.pop_ready() {
            if self.incomplete.remove(&event) {
                self.incomplete_events += 1;
            }
            if let Some(created_at) = results.iter().find_map(|r| r.created_at) {
                let micros = beamflow_protocol::Timestamp::now()
                    .duration_since(created_at)
                    .as_micros()
                    .clamp(0, i128::from(u32::MAX));
                if self.latencies.len() == LATENCY_WINDOW {
                    self.latencies.pop_front();
                }
                self.latencies.push_back(micros as u32);
            }
            for result in &results {
                self.reducer.apply(result);
            }
        }
        self.reorder.next_event()
    }

    /// The accumulators, for publishing their state.
    pub fn reducer(&self) -> &Reducer {
        &self.reducer
    }

    /// The accumulators, for parameters and `finish`.
    pub fn reducer_mut(&mut self) -> &mut Reducer {
        &mut self.reducer
    }

    /// The next event to apply.
    pub fn next_event(&self) -> EventNumber {
        self.reorder.next_event()
    }

    /// Latency percentiles over the last events, if any had results.
    pub fn latency(&self) -> Option<Latency> {
        let mut sorted: Vec<u32> = self.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| {
            let index = ((sorted.len() - 1) as f64 * q).round() as usize;
            f64::from(sorted[index]) / 1000.0
        };
        (!sorted.is_empty()).then(|| Latency {
            p50: at(0.5),
            p99: at(0.99),
            events: sorted.len(),
        })
    }

    /// The counters so far.
    pub fn counts(&self) -> LiveCounts {
        LiveCounts {
            order: self.reorder.counts(),
            incomplete_events: self.incomplete_events,
            unexpected_reports: self.unexpected_reports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AccumulatorConfig;
    use beamflow_protocol::{Parameters, ResultData, Value};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn report(event: u64, worker: &str, mean: f64, missing: &[&str]) -> ReducerInput {
        ReducerInput::Report(EventReport {
            event_number: EventNumber(event),
            worker: worker.into(),
            results: vec![ResultData {
                event_number: EventNumber(event),
                analysis: "stats".into(),
                worker: worker.into(),
                created_at: None,
                payload: Arc::new(Value::Map([("mean".to_owned(), Value::Float(mean))].into())),
            }],
            missing: missing.iter().map(|s| (*s).into()).collect(),
        })
    }

    #[test]
    fn applies_reports_in_event_order_and_counts_incomplete_events() {
        let config: AccumulatorConfig =
            toml::from_str("kind = \"history\"\nvalues = { mean = \"mean\" }").unwrap();
        let reducer = Reducer::new(
            &BTreeMap::from([("history".to_owned(), config)]),
            Parameters::default(),
        )
        .unwrap();
        let mut core = ReducerCore::new(reducer, EventNumber(0), 16);
        let expect = |n: u64, worker: &str| ReducerInput::Expect {
            event_number: EventNumber(n),
            workers: [WorkerName::from(worker)].into(),
        };
        core.handle(expect(0, "w1"));
        core.handle(expect(1, "w2"));
        assert_eq!(
            core.handle(report(1, "w2", 1.0, &["pcap"])),
            EventNumber(0),
            "event 0 still open"
        );
        assert_eq!(core.handle(report(0, "w1", 0.0, &[])), EventNumber(2));
        let state = core.reducer().state();
        assert_eq!(
            serde_json::to_string(state.pointer("history/values/mean").unwrap()).unwrap(),
            "[0.0,1.0]"
        );
        assert_eq!(core.counts().incomplete_events, 1);
        assert_eq!(core.counts().order.released, 2);
    }
}
