//! A STINS detector stream (MAX IV's `stream1`): PULL from the detector's PUSH, or SUB to its
//! PUB. Frames are forwarded as received; only the JSON part is read, for the counters.
//!
//! Flow control: the ingester reads only while the pipeline has room, so a PUSH detector blocks
//! when the pipeline is behind, and a PUB detector drops: frames lost that way are gaps in the
//! numbering, counted (`gap_frames`) and their events completed without the stream.
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

use crate::{Source, SourceError, SourceFrame, SourceKind};

/// `[ingesters.<name>]` with `kind = "zmq_stins"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZmqStinsConfig {
    /// The detector's PUSH endpoint, e.g. `tcp://eiger-dcu:9999`.
    pub upstream: String,
    /// The stream name (default: the ingester's name).
    #[serde(default)]
    pub stream: Option<String>,
    /// Messages queued from the detector at most; beyond it the detector's sends block (PUSH)
    /// or drop (PUB).
    #[serde(default = "default_hwm")]
    pub hwm: i32,
    /// `pull` (the detector PUSHes; default) or `sub` (it PUBlishes).
    #[serde(default)]
    pub pattern: Pattern,
}

/// How the detector sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// PUSH → PULL: back-pressure reaches the detector.
    #[default]
    Pull,
    /// PUB → SUB: a pipeline that falls behind loses frames (counted as gaps).
    Sub,
}

fn default_hwm() -> i32 {
    1000
}

/// The source.
pub struct ZmqStins {
    stream: StreamName,
    socket: zmq::Socket,
    upstream: String,
    /// `msg_number` of the current series' header.
    base: Option<u64>,
    warned_headerless: bool,
    warned_disagreement: bool,
}

impl SourceKind for ZmqStinsConfig {
    const KIND: &str = "zmq_stins";
    const SUMMARY: &str = "a STINS detector stream (MAX IV's `stream1`), PULL or SUB; frames \
        placed by `msg_number`, losses counted as gaps";
    const BRACKETS_SERIES: bool = true;

    fn build(&self, name: &str, context: &zmq::Context) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(ZmqStins::connect(self, name, context)?))
    }

    fn stream_names(&self, name: &str) -> Option<Vec<StreamName>> {
        Some(vec![StreamName::from(
            self.stream.as_deref().unwrap_or(name),
        )])
    }
}

impl ZmqStins {
    /// Connects to the detector.
    pub fn connect(
        config: &ZmqStinsConfig,
        name: &str,
        context: &zmq::Context,
    ) -> Result<Self, SourceError> {
        let socket = match config.pattern {
            Pattern::Pull => socket(context, zmq::PULL, config.hwm, 0)?,
            Pattern::Sub => {
                let sub = socket(context, zmq::SUB, config.hwm, 0)?;
                sub.set_subscribe(b"")
                    .map_err(|error| TransportError::Zmq {
                        operation: "subscribe",
                        endpoint: config.upstream.clone(),
                        error,
                    })?;
                sub
            }
        };
        connect(&socket, &config.upstream)?;
        Ok(Self {
            stream: config.stream.as_deref().unwrap_or(name).into(),
            socket,
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
        let mut items = [self.socket.as_poll_item(zmq::POLLIN)];
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
        let frames = match recv_frames(&self.socket) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{IngesterCore, Placed};
    use beamflow_protocol::control::{LeasedEvent, LeasedFrame};
    use beamflow_protocol::{DType, EventNumber, NdArray, Timestamp};
    use bytes::Bytes;

    fn publish(socket: &zmq::Socket, parts: Vec<Bytes>) {
        let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        socket.send_multipart(parts, 0).unwrap();
    }

    /// A PUB detector outrunning a pipeline that has stopped reading: libzmq drops, and the drops
    /// reach the ingester as gaps it counts, not as shifted events.
    #[test]
    fn a_pub_detector_outrunning_the_pipeline_loses_frames_as_counted_gaps() {
        let context = zmq::Context::new();
        let publisher = socket(&context, zmq::PUB, 10, 0).unwrap();
        let endpoint = beamflow_net::bind_any(&publisher, "127.0.0.1").unwrap();
        let config = ZmqStinsConfig {
            upstream: endpoint,
            stream: None,
            hwm: 10,
            pattern: Pattern::Sub,
        };
        let mut source = ZmqStins::connect(&config, "det", &context).unwrap();
        // A subscription takes effect some time after connecting: publish the series header
        // until it arrives.
        let header = (0..1000)
            .find_map(|_| {
                publish(&publisher, stins::header_frames(0));
                source.next_frame(Duration::from_millis(10)).unwrap()
            })
            .expect("the subscription took effect");
        assert_eq!(header.index, 0);
        let images = 5_000u64;
        let image =
            NdArray::new(vec![32, 32], DType::Uint16, Bytes::from(vec![0u8; 2048])).unwrap();
        for i in 0..images {
            publish(&publisher, stins::image_frames(i, i + 1, &image, false));
        }
        let mut frames = vec![header];
        loop {
            match source.next_frame(Duration::from_millis(10)).unwrap() {
                Some(frame) if frame.index == images + 1 => {
                    frames.push(frame);
                    break;
                }
                Some(frame) => frames.push(frame),
                // Drained; the series end may have been dropped too: send it again.
                None => publish(&publisher, stins::end_frames(images + 1)),
            }
        }
        let indices: Vec<u64> = frames.iter().map(|f| f.index).collect();
        assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
        let received = indices.len() as u64 - 2;
        assert!(
            received < images,
            "a stalled SUB must drop, received {received}"
        );

        let mut core = IngesterCore::new();
        core.start_scan(1, [("det".into(), images + 2)].into());
        core.lease(
            (0..=images + 1)
                .map(|n| LeasedEvent {
                    event: EventNumber(n),
                    frames: vec![LeasedFrame {
                        stream: "det".into(),
                        frame: n,
                        workers: vec!["w1".into()],
                    }],
                    resend_to: vec![],
                })
                .collect(),
        );
        for frame in frames {
            assert!(matches!(
                core.place(frame, Timestamp::now()),
                Placed::Sent { .. }
            ));
        }
        assert_eq!(core.counts().gap_frames, images - received);
        assert_eq!(core.counts().frames, received + 2);
    }
}
