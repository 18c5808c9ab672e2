//! One file per source, and the registry. To add one: write
//! `sources/<transport>_<protocol>.rs` with a config that implements [`SourceKind`] and a struct
//! that implements [`Source`], then add its line in `registry!` here (which declares the module too).

pub mod epics;
pub mod event_clock;

use std::time::{Duration, Instant};

use beamflow_protocol::StreamName;
use serde::Deserialize;

use crate::{Source, SourceError, SourceKind};

/// The listed streams, or the one named after the ingester when none are listed.
pub(crate) fn listed_or_named(streams: &[StreamName], name: &str) -> Vec<StreamName> {
    match streams {
        [] => vec![StreamName::from(name)],
        listed => listed.to_vec(),
    }
}

/// From one line per source, `Variant(module::Config)`, the `[ingesters.<name>]` config enum
/// (its `kind` is the variant in snake_case, checked against [`SourceKind::KIND`] by a test),
/// the dispatch to [`SourceKind`], and [`KINDS`].
macro_rules! registry {
    ($($variant:ident($module:ident::$config:ident)),+ $(,)?) => {
        $(pub mod $module;)+

        /// One `[ingesters.<name>]` table of the pipeline file; `kind` picks the source.
        ///
        /// Non-exhaustive: code outside the crate that matches on kinds says what it does for
        /// one added later, so adding one touches only its file and its registry line.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum IngesterConfig {
            $(
                #[doc = concat!("`", stringify!($module), "`: [`", stringify!($module),
                    "::", stringify!($config), "`].")]
                $variant($module::$config),
            )+
        }

        /// Every source `kind` with its summary, in registry order.
        pub const KINDS: &[(&str, &str)] = &[
            $((<$module::$config as SourceKind>::KIND,
                <$module::$config as SourceKind>::SUMMARY),)+
        ];

        impl IngesterConfig {
            /// The `kind` name.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(IngesterConfig::$variant(_) => <$module::$config as SourceKind>::KIND,)+
                }
            }

            /// See [`SourceKind::BRACKETS_SERIES`].
            pub fn brackets_series(&self) -> bool {
                match self {
                    $(IngesterConfig::$variant(_) =>
                        <$module::$config as SourceKind>::BRACKETS_SERIES,)+
                }
            }

            /// See [`SourceKind::build`]; runs [`check`](Self::check) first.
            pub fn build(
                &self,
                name: &str,
                context: &zmq::Context,
            ) -> Result<Box<dyn Source>, SourceError> {
                self.check()?;
                match self {
                    $(IngesterConfig::$variant(config) => config.build(name, context),)+
                }
            }
        }

        /// What a pipeline check asks of a table before anything runs or connects.
        impl IngesterConfig {
            /// See [`SourceKind::stream_names`].
            pub fn stream_names(&self, name: &str) -> Option<Vec<StreamName>> {
                match self {
                    $(IngesterConfig::$variant(config) => config.stream_names(name),)+
                }
            }

            /// See [`SourceKind::streams_named`].
            pub fn streams_named(&self) -> Vec<(String, StreamName)> {
                match self {
                    $(IngesterConfig::$variant(config) => config.streams_named(),)+
                }
            }

            /// See [`SourceKind::check`].
            pub fn check(&self) -> Result<(), SourceError> {
                match self {
                    $(IngesterConfig::$variant(config) => config.check(),)+
                }
            }
        }
    };
}

registry! {
    ZmqStins(zmq_stins::ZmqStinsConfig),
    Sim(sim::SimConfig),
    Dump(dump::DumpConfig),
    EpicsCa(epics_ca::EpicsCaConfig),
    EpicsPva(epics_pva::EpicsPvaConfig),
    Bluesky(bluesky::BlueskyConfig),
    KafkaBluesky(kafka_bluesky::KafkaBlueskyConfig),
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
