//! Event clocks: how values of several process variables, each updating on its own, become
//! numbered events. Pure (time is passed in), so each rule is tested on its own.
//!
//! - `trigger`: each update of one stream (an image, or its array counter) makes an event; the
//!   other streams attach their latest value, which keeps its own time stamp (its age is visible).
//! - `period`: every `1 / rate_hz` seconds an event takes the latest value of every stream.
//!
//! Both make no event until every stream has had a value (counted as `waiting`): an event
//! without a stream that exists only because its PV has not connected yet would make every
//! worker wait out its deadline for a frame that cannot come.
//! - `pulse_id`: updates are grouped by the LCLS pulse id in the low 17 bits of their time
//!   stamp's nanoseconds; an event is complete when every stream has the id, or goes out with
//!   what it has after `timeout_ms`. Events leave in the order their pulses were first seen.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use beamflow_ca::EpicsTime;
use beamflow_protocol::streams::pv::PvFrame;
use beamflow_protocol::{StreamName, Timestamp};
use serde::Deserialize;

use crate::SourceError;

/// `clock = { kind = ..., ... }` of an `epics_ca` ingester.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClockConfig {
    /// Each update of `stream` makes an event.
    Trigger {
        /// The triggering stream.
        stream: StreamName,
    },
    /// An event every `1 / rate_hz` seconds.
    Period {
        /// Events per second.
        rate_hz: f64,
    },
    /// Updates aligned by pulse id.
    PulseId {
        /// How long an event waits for its last stream.
        #[serde(default = "default_pulse_timeout")]
        timeout_ms: u64,
    },
}

impl ClockConfig {
    /// The streams the clock's table names, with their keys (`clock.stream`).
    pub fn streams_named(&self) -> Vec<(String, StreamName)> {
        self.trigger()
            .map(|stream| ("clock.stream".to_owned(), stream.clone()))
            .into_iter()
            .collect()
    }

    /// The triggering stream of a `trigger` clock.
    pub fn trigger(&self) -> Option<&StreamName> {
        match self {
            ClockConfig::Trigger { stream } => Some(stream),
            _ => None,
        }
    }

    /// What the clock cannot run with; the error names the key in the ingester's table.
    pub fn check(&self) -> Result<(), SourceError> {
        match *self {
            ClockConfig::Period { rate_hz } if !(rate_hz > 0.0 && rate_hz <= MAX_RATE_HZ) => {
                Err(SourceError::Table {
                    key: "clock.rate_hz".to_owned(),
                    message: format!("must be above 0 and at most {MAX_RATE_HZ}, got {rate_hz}"),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The fastest `period` clock: beyond it, ticks would outpace any CA monitor.
const MAX_RATE_HZ: f64 = 100_000.0;

fn default_pulse_timeout() -> u64 {
    100
}

/// Pulses waiting for their streams at most; past it the oldest goes out as it is.
const MAX_PENDING: usize = 1024;

/// One event: its index in the scan and each stream's value.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockEvent {
    /// 0, 1, 2... from the start of the scan.
    pub index: u64,
    /// The streams that have a value.
    pub frames: Vec<(StreamName, PvFrame)>,
    /// When the event was taken: a trigger's own CA time stamp. The other streams' stamps say
    /// when they last changed, which can be long before; period and pulse-id events have none.
    pub taken_at: Option<Timestamp>,
}

/// Counters for the ingester's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClockCounts {
    /// Events made.
    pub events: u64,
    /// Events that went out without every stream.
    pub incomplete: u64,
    /// Updates without a pulse id, or for a pulse already gone out.
    pub unaligned: u64,
    /// Triggers and ticks before every stream had a value.
    pub waiting: u64,
}

struct Pulse {
    id: u32,
    first_seen: Instant,
    frames: BTreeMap<StreamName, PvFrame>,
}

/// The clock of one ingester.
pub struct EventClock {
    config: ClockConfig,
    streams: BTreeSet<StreamName>,
    latest: BTreeMap<StreamName, PvFrame>,
    next: u64,
    due: Option<Instant>,
    pending: VecDeque<Pulse>,
    sent: VecDeque<u32>,
    counts: ClockCounts,
}

impl EventClock {
    /// A clock over `streams`.
    pub fn new(config: ClockConfig, streams: BTreeSet<StreamName>) -> Self {
        Self {
            config,
            streams,
            latest: BTreeMap::new(),
            next: 0,
            due: None,
            pending: VecDeque::new(),
            sent: VecDeque::new(),
            counts: ClockCounts::default(),
        }
    }

    /// A new scan: events are numbered from 0 again; latest values are kept.
    pub fn restart(&mut self, now: Instant) {
        self.next = 0;
        self.pending.clear();
        self.due = matches!(self.config, ClockConfig::Period { .. }).then_some(now);
    }

    /// A new value of `stream`.
    pub fn update(&mut self, stream: StreamName, frame: PvFrame, now: Instant) -> Vec<ClockEvent> {
        match &self.config {
            ClockConfig::Trigger { stream: trigger } => {
                let fires = *trigger == stream;
                // A frame without a stamp (secs 0) says nothing of when it was taken.
                let taken_at = (frame.secs != 0).then(|| frame.timestamp());
                self.latest.insert(stream, frame);
                if !fires {
                    Vec::new()
                } else if self.latest.len() < self.streams.len() {
                    self.counts.waiting += 1;
                    Vec::new()
                } else {
                    let frames = self.latest_frames();
                    vec![self.event(frames, taken_at)]
                }
            }
            ClockConfig::Period { .. } => {
                self.latest.insert(stream, frame);
                Vec::new()
            }
            ClockConfig::PulseId { .. } => {
                let stamp = EpicsTime {
                    secs: frame.secs,
                    nanos: frame.nanos,
                };
                let Some(id) = stamp.pulse_id().filter(|id| !self.sent.contains(id)) else {
                    self.counts.unaligned += 1;
                    return Vec::new();
                };
                match self.pending.iter_mut().find(|p| p.id == id) {
                    Some(pulse) => {
                        pulse.frames.insert(stream, frame);
                    }
                    None => {
                        self.pending.push_back(Pulse {
                            id,
                            first_seen: now,
                            frames: BTreeMap::from([(stream, frame)]),
                        });
                    }
                }
                self.tick(now)
            }
        }
    }

    /// A value that arrived before the scan: kept as the stream's latest, for events to attach,
    /// but it makes no event (a pulse-id clock aligns only the scan's own pulses).
    pub fn remember(&mut self, stream: StreamName, frame: PvFrame) {
        match self.config {
            ClockConfig::Trigger { .. } | ClockConfig::Period { .. } => {
                self.latest.insert(stream, frame);
            }
            ClockConfig::PulseId { .. } => {}
        }
    }

    /// Events due by time: a period's tick, pulses past their timeout (and, before them, any
    /// complete ones).
    pub fn tick(&mut self, now: Instant) -> Vec<ClockEvent> {
        let mut events = Vec::new();
        match self.config {
            ClockConfig::Trigger { .. } => {}
            ClockConfig::Period { rate_hz } => {
                // At least a microsecond: a zero period would never leave this loop.
                let period = Duration::from_secs_f64(1.0 / rate_hz.clamp(1e-6, 1e6));
                while let Some(due) = self.due.filter(|due| *due <= now) {
                    // A late tick is one event, not a burst of catch-up events.
                    let next = due + period;
                    self.due = Some(if next <= now { now + period } else { next });
                    if self.latest.len() < self.streams.len() {
                        self.counts.waiting += 1;
                        continue;
                    }
                    let frames = self.latest_frames();
                    events.push(self.event(frames, None));
                }
            }
            ClockConfig::PulseId { timeout_ms } => {
                let timeout = Duration::from_millis(timeout_ms);
                while let Some(front) = self.pending.front() {
                    let complete = front.frames.len() >= self.streams.len();
                    let expired = now.duration_since(front.first_seen) >= timeout;
                    if !(complete || expired || self.pending.len() > MAX_PENDING) {
                        break;
                    }
                    let Some(pulse) = self.pending.pop_front() else {
                        break;
                    };
                    self.sent.push_back(pulse.id);
                    if self.sent.len() > MAX_PENDING {
                        self.sent.pop_front();
                    }
                    events.push(self.event(pulse.frames.into_iter().collect(), None));
                }
            }
        }
        events
    }

    /// When [`EventClock::tick`] next has something to do.
    pub fn next_due(&self) -> Option<Instant> {
        match self.config {
            ClockConfig::Trigger { .. } => None,
            ClockConfig::Period { .. } => self.due,
            ClockConfig::PulseId { timeout_ms } => self
                .pending
                .front()
                .map(|p| p.first_seen + Duration::from_millis(timeout_ms)),
        }
    }

    /// The counters so far.
    pub fn counts(&self) -> ClockCounts {
        self.counts
    }

    /// Streams that have had no value yet.
    pub fn without_value(&self) -> Vec<&StreamName> {
        self.streams
            .iter()
            .filter(|s| !self.latest.contains_key(*s))
            .collect()
    }

    fn latest_frames(&self) -> Vec<(StreamName, PvFrame)> {
        self.latest
            .iter()
            .map(|(stream, frame)| (stream.clone(), frame.clone()))
            .collect()
    }

    fn event(
        &mut self,
        frames: Vec<(StreamName, PvFrame)>,
        taken_at: Option<Timestamp>,
    ) -> ClockEvent {
        if frames.len() < self.streams.len() {
            self.counts.incomplete += 1;
        }
        self.counts.events += 1;
        let index = self.next;
        self.next += 1;
        ClockEvent {
            index,
            frames,
            taken_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_protocol::{DType, NdArray};
    use bytes::Bytes;

    fn frame(value: f64, nanos: u32) -> PvFrame {
        PvFrame {
            pv: "X".into(),
            status: 0,
            severity: 0,
            secs: 1,
            nanos,
            value: NdArray::new(
                vec![],
                DType::Float64,
                Bytes::from(value.to_le_bytes().to_vec()),
            )
            .unwrap(),
        }
    }

    fn streams(names: &[&str]) -> BTreeSet<StreamName> {
        names.iter().map(|n| StreamName::from(*n)).collect()
    }

    fn summary(events: &[ClockEvent]) -> Vec<(u64, Vec<String>)> {
        events
            .iter()
            .map(|e| {
                (
                    e.index,
                    e.frames.iter().map(|(s, _)| s.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_trigger_update_makes_an_event_with_every_latest_value() {
        let t0 = Instant::now();
        let mut clock = EventClock::new(
            ClockConfig::Trigger {
                stream: "img".into(),
            },
            streams(&["img", "bact"]),
        );
        clock.restart(t0);
        assert!(clock.update("img".into(), frame(9.0, 0), t0).is_empty());
        assert_eq!(
            clock.counts().waiting,
            1,
            "no event before bact has a value"
        );
        assert_eq!(clock.without_value(), [&StreamName::from("bact")]);
        assert!(clock.update("bact".into(), frame(1.0, 0), t0).is_empty());
        let first = clock.update("img".into(), frame(10.0, 0), t0);
        assert_eq!(summary(&first), [(0, vec!["bact".into(), "img".into()])]);
        // bact does not change: the next image carries the same (older) value.
        let second = clock.update("img".into(), frame(11.0, 5), t0);
        assert_eq!(second[0].index, 1);
        assert_eq!(second[0].frames[0].1, frame(1.0, 0));
        assert_eq!(clock.counts().incomplete, 0);
    }

    #[test]
    fn a_period_samples_the_latest_values_without_catch_up_bursts() {
        let t0 = Instant::now();
        let mut clock = EventClock::new(ClockConfig::Period { rate_hz: 10.0 }, streams(&["a"]));
        clock.restart(t0);
        assert!(clock.tick(t0).is_empty());
        assert_eq!(clock.counts().waiting, 1, "no value yet");
        clock.update("a".into(), frame(1.0, 0), t0);
        assert!(clock.tick(t0 + Duration::from_millis(50)).is_empty());
        assert_eq!(
            summary(&clock.tick(t0 + Duration::from_millis(100))),
            [(0, vec!["a".into()])]
        );
        // Half a second late: one event, then back on a 100 ms period from now.
        let late = t0 + Duration::from_millis(700);
        assert_eq!(clock.tick(late).len(), 1);
        assert_eq!(clock.next_due(), Some(late + Duration::from_millis(100)));
    }

    #[test]
    fn pulse_ids_align_streams_and_late_pulses_time_out_in_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut clock = EventClock::new(
            ClockConfig::PulseId { timeout_ms: 100 },
            streams(&["a", "b"]),
        );
        clock.restart(t0);
        // Pulse 7 seen first (a only), pulse 8 completes before it: 8 waits behind 7.
        assert!(clock.update("a".into(), frame(1.0, 7), ms(0)).is_empty());
        assert!(clock.update("a".into(), frame(2.0, 8), ms(1)).is_empty());
        assert!(clock.update("b".into(), frame(3.0, 8), ms(2)).is_empty());
        // 7 times out with a only; 8 follows, complete.
        let events = clock.tick(ms(100));
        assert_eq!(
            summary(&events),
            [(0, vec!["a".into()]), (1, vec!["a".into(), "b".into()])]
        );
        assert_eq!(clock.counts().incomplete, 1);
        // b's value for pulse 7 arrives too late; a value without a pulse id is not aligned.
        assert!(clock.update("b".into(), frame(4.0, 7), ms(150)).is_empty());
        assert!(
            clock
                .update("b".into(), frame(4.0, 0x1FFFF), ms(150))
                .is_empty()
        );
        assert_eq!(clock.counts().unaligned, 2);
        // A complete pulse goes out at once.
        clock.update("b".into(), frame(5.0, 9), ms(200));
        let events = clock.update("a".into(), frame(6.0, 9 | (1 << 20)), ms(201));
        assert_eq!(summary(&events), [(2, vec!["a".into(), "b".into()])]);
    }

    /// Issue 16: a trigger event is taken when its trigger was, whatever the age of the values
    /// it attaches; values from before the scan are attached but make no event.
    #[test]
    fn a_trigger_event_is_taken_at_its_triggers_stamp_and_old_values_make_none() {
        let t0 = Instant::now();
        let mut clock = EventClock::new(
            ClockConfig::Trigger {
                stream: "img".into(),
            },
            streams(&["img", "bact"]),
        );
        clock.remember("bact".into(), frame(1.0, 0));
        clock.remember("img".into(), frame(2.0, 0));
        assert_eq!(clock.counts().events, 0, "no event from before the scan");
        clock.restart(t0);
        let mut image = frame(3.0, 0);
        image.secs = 1_000;
        let events = clock.update("img".into(), image.clone(), t0);
        assert_eq!(summary(&events), [(0, vec!["bact".into(), "img".into()])]);
        assert_eq!(events[0].taken_at, Some(image.timestamp()));
        assert_ne!(events[0].frames[0].1.secs, image.secs, "bact keeps its own");
        let mut period = EventClock::new(ClockConfig::Period { rate_hz: 10.0 }, streams(&["a"]));
        period.restart(t0);
        period.update("a".into(), image, t0);
        assert_eq!(period.tick(t0)[0].taken_at, None);
    }
}
