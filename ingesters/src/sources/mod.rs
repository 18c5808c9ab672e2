//! One file per source. To add one: write `sources/<transport>_<protocol>.rs` with a config that
//! implements [`SourceKind`](crate::SourceKind) and a struct that implements
//! [`Source`](crate::Source), then add its `pub mod` here and its line in the registry in
//! `lib.rs`.

pub mod dump;
pub mod epics_ca;
pub mod event_clock;
pub mod sim;
pub mod zmq_stins;

use std::time::{Duration, Instant};

use beamflow_protocol::StreamName;

/// The listed streams, or the one named after the ingester when none are listed.
pub(crate) fn listed_or_named(streams: &[StreamName], name: &str) -> Vec<StreamName> {
    match streams {
        [] => vec![StreamName::from(name)],
        listed => listed.to_vec(),
    }
}

/// Paces a simulated or replayed source at a fixed rate; without one, frames come as fast as
/// they are read.
#[derive(Debug)]
pub(crate) struct Pace {
    period: Option<Duration>,
    due: Instant,
}

impl Pace {
    /// `rate_hz` slots per second; 0 or less: no pacing.
    pub(crate) fn new(rate_hz: f64) -> Self {
        Self {
            period: (rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / rate_hz)),
            due: Instant::now(),
        }
    }

    /// The next slot is due now.
    pub(crate) fn restart(&mut self) {
        self.due = Instant::now();
    }

    /// Waits for the next slot and takes it; if it is more than `timeout` away, waits `timeout`
    /// and answers false. Pacing a source, not synchronising anything.
    pub(crate) fn wait(&mut self, timeout: Duration) -> bool {
        let Some(period) = self.period else {
            return true;
        };
        let now = Instant::now();
        if self.due > now + timeout {
            std::thread::sleep(timeout);
            return false;
        }
        std::thread::sleep(self.due.saturating_duration_since(now));
        self.due = self.due.max(now - period) + period;
        true
    }
}
