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
//!
//! Between scans: each scan is a series of its own. A new scan forgets the last series' header
//! and drops what the socket still holds of that series (the detector blocked on a stalled
//! pipeline, or ran on past the scan): once the detector has sent a header, everything up to
//! the next header is the last series'.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use beamflow_net::{TransportError, connect, recv_frames_within, socket};
use beamflow_protocol::streams::stins::{self, Kind};
use beamflow_protocol::{StreamData, StreamName};
use bytes::Bytes;
use serde::Deserialize;
use tracing::{info, warn};

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
    hwm: i32,
    /// `msg_number` of the current series' header.
    base: Option<u64>,
    /// A header read while dropping the last series, to be returned first.
    pending: Option<Vec<Bytes>>,
    /// Whether the detector has ever sent a header: only then does one start each series, and
    /// the messages before it at a scan's start are the last series'.
    headers_seen: bool,
    /// A scan started: messages up to the next header are dropped.
    awaiting_header: bool,
    /// Messages of a previous series dropped this scan, and in all.
    dropped_this_scan: u64,
    dropped_previous_series: u64,
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
            hwm: config.hwm,
            base: None,
            pending: None,
            headers_seen: false,
            awaiting_header: false,
            dropped_this_scan: 0,
            dropped_previous_series: 0,
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

    /// One message, waiting at most `timeout`.
    fn receive(&self, timeout: Duration) -> Result<Option<Vec<Bytes>>, SourceError> {
        Ok(recv_frames_within(&self.socket, &self.upstream, timeout)?)
    }

    fn drop_previous(&mut self) {
        self.dropped_this_scan += 1;
        self.dropped_previous_series += 1;
    }

    /// The frame's index in its series, from its counters.
    fn number(&mut self, frames: Vec<Bytes>, peek: stins::Peek) -> Result<SourceFrame, SourceError> {
        let counter = match (peek.msg_number, peek.kind, peek.frame) {
            (Some(n), _, _) => n,
            // Without msg_number: an image's frame index, the header before it.
            (None, Kind::Image, Some(frame)) => frame.checked_add(1).ok_or_else(|| {
                self.malformed(format!("image frame {frame} is past any series"))
            })?,
            (None, Kind::Header, _) => 0,
            (None, _, _) => {
                return Err(self.malformed(
                    "message has neither msg_number nor frame; cannot be placed".to_owned(),
                ));
            }
        };
        if peek.kind == Kind::Header {
            self.base = Some(counter);
            self.headers_seen = true;
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
            && frame.checked_add(1) != Some(index)
            && !self.warned_disagreement
        {
            self.warned_disagreement = true;
            warn!(stream = %self.stream, frame, index, "Image frame number disagrees with msg_number; placed by msg_number.");
        }
        Ok(SourceFrame {
            stream: self.stream.clone(),
            index,
            data: StreamData {
                typ: stins::TYP.into(),
                frames,
            },
            taken_at: None,
        })
    }
}

impl Source for ZmqStins {
    fn streams(&self) -> Vec<StreamName> {
        vec![self.stream.clone()]
    }

    fn start_scan(
        &mut self,
        _frames: &BTreeMap<StreamName, std::ops::Range<u64>>,
    ) -> Result<(), SourceError> {
        self.base = None;
        self.pending = None;
        self.dropped_this_scan = 0;
        self.warned_headerless = false;
        self.warned_disagreement = false;
        self.awaiting_header = self.headers_seen;
        // What is queued now came before the scan: the last series' leftovers, up to the new
        // series' header if the detector has started it. Bounded, as a detector may send on
        // while it is drained: what comes later waits for the header in `next_frame`.
        let at_most = 2 * usize::try_from(self.hwm.max(1)).unwrap_or(1);
        for _ in 0..at_most {
            let Some(frames) = self.receive(Duration::ZERO)? else {
                break;
            };
            if stins::peek(&frames).is_ok_and(|peek| peek.kind == Kind::Header) {
                self.pending = Some(frames);
                break;
            }
            self.drop_previous();
        }
        // With headers, `next_frame` says how many were dropped once the header is in.
        if self.dropped_this_scan > 0 && !self.awaiting_header {
            info!(stream = %self.stream, dropped = self.dropped_this_scan,
                "Dropped messages of the last series still queued when the scan started.");
        }
        Ok(())
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<SourceFrame>, SourceError> {
        let deadline = Instant::now() + timeout;
        loop {
            let frames = match self.pending.take() {
                Some(frames) => frames,
                None => match self.receive(deadline.saturating_duration_since(Instant::now()))? {
                    Some(frames) => frames,
                    None => return Ok(None),
                },
            };
            let peek = stins::peek(&frames).map_err(|error| self.malformed(error.to_string()))?;
            if self.awaiting_header {
                if peek.kind != Kind::Header {
                    self.drop_previous();
                    continue;
                }
                self.awaiting_header = false;
                if self.dropped_this_scan > 0 {
                    info!(stream = %self.stream, dropped = self.dropped_this_scan,
                        "Dropped messages of the last series before this scan's header.");
                }
            }
            return self.number(frames, peek).map(Some);
        }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "dropped_previous_series": self.dropped_previous_series })
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
        core.start_scan(1, [("det".into(), images + 2)].into(), BTreeMap::new());
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

    fn pushed_source(context: &zmq::Context) -> (zmq::Socket, ZmqStins) {
        let push = socket(context, zmq::PUSH, 1000, 0).unwrap();
        let endpoint = beamflow_net::bind_any(&push, "127.0.0.1").unwrap();
        let config = ZmqStinsConfig {
            upstream: endpoint,
            stream: None,
            hwm: 1000,
            pattern: Pattern::Pull,
        };
        (push, ZmqStins::connect(&config, "det", context).unwrap())
    }

    fn next(source: &mut ZmqStins) -> SourceFrame {
        source
            .next_frame(Duration::from_secs(10))
            .unwrap()
            .expect("a frame within 10 s")
    }

    fn image(value: u8) -> NdArray {
        NdArray::new(vec![2, 2], DType::Uint16, Bytes::from(vec![value; 8])).unwrap()
    }

    /// Issue 16 (probe 3c): a scan stalled mid-series left its images queued, and the next
    /// scan analysed them as its own.
    #[test]
    fn a_new_scan_starts_at_its_series_header_not_in_the_last_series_leftovers() {
        let context = zmq::Context::new();
        let (push, mut source) = pushed_source(&context);
        publish(&push, stins::header_frames(0));
        for n in 1..=4 {
            publish(&push, stins::image_frames(n - 1, n, &image(1), false));
        }
        assert_eq!(next(&mut source).index, 0);
        assert_eq!(next(&mut source).index, 1);
        // The scan stalls here; images 2 to 4 stay queued (or still in flight).
        source.start_scan(&BTreeMap::new()).unwrap();
        publish(&push, stins::header_frames(100));
        for n in 101..=102 {
            publish(&push, stins::image_frames(n - 101, n, &image(2), false));
        }
        let frames = [next(&mut source), next(&mut source), next(&mut source)];
        let summary: Vec<(u64, Kind, Option<u64>)> = frames
            .iter()
            .map(|f| {
                let peek = stins::peek(&f.data.frames).unwrap();
                (f.index, peek.kind, peek.msg_number)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, Kind::Header, Some(100)),
                (1, Kind::Image, Some(101)),
                (2, Kind::Image, Some(102))
            ]
        );
        assert_eq!(source.status()["dropped_previous_series"], 3);
    }

    /// Issue 16 (probe 3c): one image numbered 2^63 wedged the scan; a frame number of u64::MAX
    /// without `msg_number` overflowed.
    #[test]
    fn absurd_stins_counters_are_rejected_and_the_series_goes_on() {
        let context = zmq::Context::new();
        let (push, mut source) = pushed_source(&context);
        publish(&push, stins::header_frames(0));
        publish(&push, stins::image_frames(0, 1, &image(1), false));
        publish(&push, stins::image_frames(1, 1 << 63, &image(1), false));
        publish(
            &push,
            vec![
                Bytes::from(format!(
                    r#"{{"htype":"image","frame":{},"shape":[2,2],"type":"uint16"}}"#,
                    u64::MAX
                )),
                Bytes::from(vec![0u8; 8]),
            ],
        );
        publish(&push, stins::image_frames(1, 2, &image(1), false));
        let mut core = IngesterCore::new();
        core.start_scan(1, [("det".into(), u64::MAX)].into(), BTreeMap::new());
        core.lease(
            (0..3)
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
        let mut placed = Vec::new();
        for _ in 0..5 {
            match source.next_frame(Duration::from_secs(10)) {
                Ok(Some(frame)) => placed.push(match core.place(frame, Timestamp::now()) {
                    Placed::Sent { .. } => "sent",
                    Placed::Implausible => "implausible",
                    other => panic!("{other:?}"),
                }),
                Err(SourceError::Malformed { message, .. }) => {
                    assert_eq!(
                        message,
                        format!("image frame {} is past any series", u64::MAX)
                    );
                    placed.push("malformed");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(placed, ["sent", "sent", "implausible", "malformed", "sent"]);
        assert_eq!(core.counts().implausible_frames, 1);
        assert!(!core.wants_frames(), "every leased frame was placed");
    }
}
