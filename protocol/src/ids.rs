//! Typed identifiers: event numbers and the names of streams, workers, ingesters, analyses and
//! parameters. Each is a newtype so that a stream name can never be passed where a worker name is
//! expected (dranspose's `protocol.py` uses `NewType` for the same reason).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The number of an event within a scan: 0 is the series start when the mapping wraps it,
/// `N + 1` the series end.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EventNumber(pub u64);

impl<C> minicbor::Encode<C> for EventNumber {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.u64(self.0).map(drop)
    }
}

impl<'b, C> minicbor::Decode<'b, C> for EventNumber {
    fn decode(d: &mut minicbor::Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        d.u64().map(Self)
    }
}

impl fmt::Display for EventNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cheap to clone: names are shared, because every event repeats them.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self(Arc::from(name))
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                Self(Arc::from(name))
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl<C> minicbor::Encode<C> for $name {
            fn encode<W: minicbor::encode::Write>(
                &self,
                e: &mut minicbor::Encoder<W>,
                _: &mut C,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                e.str(&self.0).map(drop)
            }
        }

        impl<'b, C> minicbor::Decode<'b, C> for $name {
            fn decode(
                d: &mut minicbor::Decoder<'b>,
                _: &mut C,
            ) -> Result<Self, minicbor::decode::Error> {
                d.str().map(Self::from)
            }
        }
    };
}

name_type!(
    /// The name of a stream, such as `eiger` or `pcap`: one source's part of every event.
    StreamName
);
name_type!(
    /// The parser tag of a stream's frames (`STINS`, `PCAP`, ...), as dranspose's `typ`.
    StreamType
);
name_type!(
    /// The name of a worker process (or of a replay thread).
    WorkerName
);
name_type!(
    /// The name of an ingester process.
    IngesterName
);
name_type!(
    /// The name of an analysis in the pipeline file (defaults to its `kind`).
    AnalysisName
);
name_type!(
    /// The name of a parameter, as used by `POST /api/v1/parameter/{name}`.
    ParameterName
);
name_type!(
    /// A tag a worker carries (default `generic`; a debug worker carries `debug`); a mapping's
    /// virtual worker goes only to real workers that carry all its tags.
    WorkerTag
);
