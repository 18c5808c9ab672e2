//! What an analysis's tests need beside hand-built events ([`EventData::with_image`],
//! [`EventData::with_scalar`]): the analysis run over a recorded `.cbors` dump, event by event,
//! as a worker would run it but in one thread and without sockets.
//!
//! [`EventData::with_image`]: beamflow_protocol::EventData::with_image
//! [`EventData::with_scalar`]: beamflow_protocol::EventData::with_scalar

use std::path::{Path, PathBuf};

use beamflow_protocol::dump::{DumpError, DumpReader};
use beamflow_protocol::{EventNumber, Parameters};

use crate::{Analysis, AnalysisError};

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The dump cannot be opened.
    #[error("{path}: {error}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// A record of the dump cannot be read.
    #[error("{path}: {error}")]
    Dump {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        error: DumpError,
    },
    /// The analysis failed on an event (a worker would log it and go on; a test wants to know).
    #[error("event {event}: {error}")]
    Analysis {
        /// The event.
        event: EventNumber,
        /// Why.
        #[source]
        error: AnalysisError,
    },
}

/// Runs `analysis` on every event of the dump at `path`, in order, with `parameters`: the
/// outputs of the events that gave one, with their event numbers.
pub fn replay<A: Analysis>(
    analysis: &A,
    path: &Path,
    parameters: &Parameters,
) -> Result<Vec<(EventNumber, A::Output)>, ReplayError> {
    let reader = DumpReader::open(path).map_err(|error| ReplayError::Open {
        path: path.to_owned(),
        error,
    })?;
    let mut outputs = Vec::new();
    for event in reader {
        let event = event.map_err(|error| ReplayError::Dump {
            path: path.to_owned(),
            error,
        })?;
        let output = analysis
            .process_event(&event, parameters)
            .map_err(|error| ReplayError::Analysis {
                event: event.event_number,
                error,
            })?;
        outputs.extend(output.map(|output| (event.event_number, output)));
    }
    Ok(outputs)
}
