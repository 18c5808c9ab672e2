//! A STINS detector stream (MAX IV's `stream1`): PULL from the detector's PUSH. Frames are
//! forwarded as received; only the JSON part is read, for the counters.
//!
//! Numbering: a frame's index is its `msg_number` minus the series header's, so a message lost
//! upstream leaves a gap instead of shifting every later frame into the wrong event (dranspose
//! counts messages positionally). An image's `frame` must agree (`frame + 1` with a header at 0);
//! a source without `msg_number` is numbered by `frame`.

use std::time::Duration;

use beamflow_net::{TransportError, connect, recv_frames, socket};
use beamflow_protocol::streams::stins::{self, Kind};
use beamflow_protocol::{StreamData, StreamName};
use serde::Deserialize;
use tracing::warn;

use crate::{Source, SourceError, SourceFrame};

/// `[ingesters.<name>]` with `kind = "zmq_stins"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZmqStinsConfig {
    /// The detector's PUSH endpoint, e.g. `tcp://eiger-dcu:9999`.
    pub upstream: String,
    /// The stream name (default: the ingester's name).
    #[serde(default)]
    pub stream: Option<String>,
    /// Messages queued from the detector at most; beyond it the detector's sends block.
    #[serde(default = "default_hwm")]
    pub hwm: i32,
}

fn default_hwm() -> i32 {
    1000
}

/// The source.
pub struct ZmqStins {
    stream: StreamName,
    pull: zmq::Socket,
    upstream: String,
    /// `msg_number` of the current series' header.
    base: Option<u64>,
    warned_headerless: bool,
    warned_disagreement: bool,
}

impl ZmqStins {
    /// Connects to the detector.
    pub fn connect(
        config: &ZmqStinsConfig,
        name: &str,
        context: &zmq::Context,
    ) -> Result<Self, SourceError> {
        let pull = socket(context, zmq::PULL, config.hwm, 0)?;
        connect(&pull, &config.upstream)?;
        Ok(Self {
            stream: config.stream.as_deref().unwrap_or(name).into(),
            pull,
            upstream: config.upstream.clone(),
            base: None,
            warned_headerless: false,
            warned_disagreement: false,
        })
    }

    fn malformed(&self, message: String) -> SourceError {
        SourceError::Malformed {
            stream: self.stream.clone(),
            message,
        }
    }
}

impl Source for ZmqStins {
    fn streams(&self) -> Vec<StreamName> {
        vec![self.stream.clone()]
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<SourceFrame>, SourceError> {
        let mut items = [self.pull.as_poll_item(zmq::POLLIN)];
        let ready = zmq::poll(&mut items, timeout.as_millis() as i64).map_err(|error| {
            TransportError::Zmq {
                operation: "poll",
                endpoint: self.upstream.clone(),
                error,
            }
        })?;
        if ready == 0 {
            return Ok(None);
        }
        let frames = match recv_frames(&self.pull) {
            Ok(frames) => frames,
            Err(TransportError::TimedOut) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let peek = stins::peek(&frames).map_err(|error| self.malformed(error.to_string()))?;
        let counter = match (peek.msg_number, peek.kind, peek.frame) {
            (Some(n), _, _) => n,
            // Without msg_number: an image's frame index, the header before it.
            (None, Kind::Image, Some(frame)) => frame + 1,
            (None, Kind::Header, _) => 0,
            (None, _, _) => {
                return Err(self.malformed(
                    "message has neither msg_number nor frame; cannot be placed".to_owned(),
                ));
            }
        };
        if peek.kind == Kind::Header {
            self.base = Some(counter);
        }
        let base = match self.base {
            Some(base) => base,
            None => {
                if !self.warned_headerless {
                    warn!(stream = %self.stream, counter, "Series began without a header; numbering from this message.");
                    self.warned_headerless = true;
                }
                let base = counter.saturating_sub(1);
                self.base = Some(base);
                base
            }
        };
        let Some(index) = counter.checked_sub(base) else {
            return Err(self.malformed(format!(
                "msg_number {counter} is before the series header's {base}"
            )));
        };
        if let (Kind::Image, Some(frame), Some(_)) = (peek.kind, peek.frame, peek.msg_number)
            && frame + 1 != index
            && !self.warned_disagreement
        {
            self.warned_disagreement = true;
            warn!(stream = %self.stream, frame, index, "Image frame number disagrees with msg_number; placed by msg_number.");
        }
        Ok(Some(SourceFrame {
            stream: self.stream.clone(),
            index,
            data: StreamData {
                typ: stins::TYP.into(),
                frames,
            },
        }))
    }
}
