//! A worker's loop body, without sockets: leases and event parts in, reports out. The binary feeds
//! it from ZeroMQ and sends what it returns; tests feed it directly. Time is passed in.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use beamflow_protocol::{EventData, EventNumber, EventReport, Parameters, StreamName, WorkerName};

use crate::assembly::{Arrival, Assembler};
use crate::process::{Analyses, Failure};

/// What reaches a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerInput {
    /// From the controller: this event's streams come to this worker.
    Expect {
        /// The event.
        event_number: EventNumber,
        /// Its streams for this worker.
        streams: BTreeSet<StreamName>,
    },
    /// From an ingester: some streams of an event.
    Part(EventData),
}

/// One processed event.
#[derive(Debug)]
pub struct Processed {
    /// The report for the reducer (its `missing` names streams that never came).
    pub report: EventReport,
    /// Analyses that failed on the event.
    pub failures: Vec<Failure>,
}

pub use beamflow_protocol::control::WorkerCounts;

/// A worker's state: its analyses and the events being assembled.
pub struct WorkerCore {
    name: WorkerName,
    analyses: Analyses,
    parameters: Parameters,
    assembler: Assembler,
    timeout: Duration,
    capacity: usize,
    counts: WorkerCounts,
}

impl WorkerCore {
    /// A worker named `name`; an event whose streams are not all in `timeout` after its lease is
    /// processed incomplete; at most `capacity` events are assembled at once.
    pub fn new(
        name: WorkerName,
        analyses: Analyses,
        parameters: Parameters,
        timeout: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            name,
            analyses,
            parameters,
            assembler: Assembler::new(timeout, capacity),
            timeout,
            capacity,
            counts: WorkerCounts::default(),
        }
    }

    /// A new scan: events of the last one still being assembled are dropped (their numbers
    /// mean other events now).
    pub fn new_scan(&mut self, parameters: Parameters) {
        self.assembler = Assembler::new(self.timeout, self.capacity);
        self.analyses.start_scan(&parameters);
        self.parameters = parameters;
    }

    /// The scan goes on from `from` (a rewind): events from `from` on are forgotten, so their
    /// parts, sent again, are assembled and processed again. Returns how many were forgotten.
    pub fn rewind(&mut self, from: EventNumber) -> usize {
        self.assembler.rewind(from)
    }

    /// New parameter values, from the next event on.
    pub fn set_parameters(&mut self, parameters: Parameters) {
        self.parameters = parameters;
    }

    /// The scan is over: the analyses' `finish`.
    pub fn finish(&self) {
        self.analyses.finish(&self.parameters);
    }

    /// The parameters the analyses declare.
    pub fn describe_parameters(&self) -> Vec<beamflow_protocol::ParameterDescription> {
        self.analyses.describe_parameters()
    }

    /// Takes one input and processes every event it completes (and any past its deadline).
    pub fn handle(&mut self, input: WorkerInput, now: Instant) -> Vec<Processed> {
        match input {
            WorkerInput::Expect {
                event_number,
                streams,
            } => self.assembler.expect(event_number, streams),
            WorkerInput::Part(part) => {
                if self.assembler.add(part, now) != Arrival::Accepted {
                    self.counts.late_or_duplicate += 1;
                }
            }
        }
        self.poll(now)
    }

    /// Processes events that became ready by time alone (call it when no input arrives). The
    /// events ready together go to the analyses as one batch.
    pub fn poll(&mut self, now: Instant) -> Vec<Processed> {
        let ready = self.assembler.ready(now);
        self.counts.orphaned = self.assembler.orphaned();
        if ready.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let events: Vec<&EventData> = ready.iter().map(|a| &a.event).collect();
        let outcomes = self
            .analyses
            .process_many(&events, &self.parameters, &self.name);
        self.counts.busy_micros += started.elapsed().as_micros() as u64;
        ready
            .into_iter()
            .zip(outcomes)
            .map(|(assembled, (mut report, failures))| {
                self.counts.processed += 1;
                self.counts.analysis_errors += failures.len() as u64;
                self.counts.last_event = Some(report.event_number.0);
                if !assembled.missing.is_empty() {
                    self.counts.incomplete += 1;
                    report.missing = assembled.missing.into_iter().collect();
                }
                Processed { report, failures }
            })
            .collect()
    }

    /// Whether the worker holds as many partial events as it may (stop reading parts).
    pub fn is_full(&self) -> bool {
        self.assembler.is_full()
    }

    /// The counters so far.
    pub fn counts(&self) -> WorkerCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AnalysisConfig;
    use beamflow_protocol::streams::stins;
    use beamflow_protocol::{AnalysisName, DType, NdArray, StreamData};
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn core() -> WorkerCore {
        let config: AnalysisConfig = toml::from_str("kind = \"frame_stats\"").unwrap();
        let analyses =
            Analyses::build(&BTreeMap::from([(AnalysisName::from("stats"), config)])).unwrap();
        WorkerCore::new(
            "w1".into(),
            analyses,
            Parameters::default(),
            Duration::from_secs(1),
            8,
        )
    }

    fn image(n: u64) -> EventData {
        let pixels: Vec<u8> = [1u16, 2, 3, n as u16]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let array = NdArray::new(vec![2, 2], DType::Uint16, Bytes::from(pixels)).unwrap();
        stins::image_event(EventNumber(n), "det", &array, false)
    }

    #[test]
    fn processes_an_event_once_its_streams_and_lease_are_in() {
        let t0 = Instant::now();
        let mut worker = core();
        assert!(worker.handle(WorkerInput::Part(image(4)), t0).is_empty());
        let mut pcap = EventData::new(EventNumber(4));
        pcap.streams.insert(
            "pcap".into(),
            StreamData {
                typ: "PCAP".into(),
                frames: vec![Bytes::from("{}")],
            },
        );
        let streams: BTreeSet<StreamName> = ["det".into(), "pcap".into()].into();
        assert!(
            worker
                .handle(
                    WorkerInput::Expect {
                        event_number: EventNumber(4),
                        streams
                    },
                    t0
                )
                .is_empty()
        );
        let done = worker.handle(WorkerInput::Part(pcap), t0);
        assert_eq!(done.len(), 1);
        let report = &done[0].report;
        assert_eq!(
            (
                report.event_number,
                report.results.len(),
                report.missing.len()
            ),
            (EventNumber(4), 1, 0)
        );
        assert_eq!(
            report.results[0]
                .payload
                .pointer("det/0/max")
                .and_then(beamflow_protocol::Value::as_f64),
            Some(4.0)
        );
    }

    #[test]
    fn a_stream_that_never_comes_makes_a_flagged_incomplete_event() {
        let t0 = Instant::now();
        let mut worker = core();
        let streams: BTreeSet<StreamName> = ["det".into(), "pcap".into()].into();
        worker.handle(
            WorkerInput::Expect {
                event_number: EventNumber(1),
                streams,
            },
            t0,
        );
        assert!(worker.handle(WorkerInput::Part(image(1)), t0).is_empty());
        let done = worker.poll(t0 + Duration::from_secs(1));
        assert_eq!(done[0].report.missing, vec![StreamName::from("pcap")]);
        assert_eq!(
            done[0].report.results.len(),
            1,
            "what arrived is still analysed"
        );
        assert_eq!(worker.counts().incomplete, 1);
        worker.handle(WorkerInput::Part(image(1)), t0);
        assert_eq!(worker.counts().late_or_duplicate, 1);
    }

    #[test]
    fn a_processed_event_is_processed_again_after_a_rewind() {
        let t0 = Instant::now();
        let mut worker = core();
        let expect = |n| WorkerInput::Expect {
            event_number: EventNumber(n),
            streams: ["det".into()].into(),
        };
        for n in [1, 2] {
            worker.handle(expect(n), t0);
            assert_eq!(worker.handle(WorkerInput::Part(image(n)), t0).len(), 1);
        }
        assert_eq!(worker.rewind(EventNumber(2)), 1);
        assert!(worker.handle(WorkerInput::Part(image(1)), t0).is_empty());
        assert_eq!(
            worker.counts().late_or_duplicate,
            1,
            "event 1 is not rewound"
        );
        worker.handle(expect(2), t0);
        let again = worker.handle(WorkerInput::Part(image(2)), t0);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].report.event_number, EventNumber(2));
        assert_eq!(worker.counts().late_or_duplicate, 1);
        assert_eq!(worker.counts().processed, 3);
    }
}
