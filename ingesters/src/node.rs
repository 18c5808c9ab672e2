//! The ingester process's loop: control messages from the controller, frames from the source
//! when leases want them, parts to workers over one PUSH socket per worker, records to the dump.
//!
//! Flow control: the source is read only while leased frames are unread, and a frame whose event
//! is not leased yet is held (nothing more is read), so a slow pipeline makes a PULL source
//! block. A worker's full queue blocks the send; the loop keeps answering the controller while
//! it waits, and gives up on a worker the controller no longer lists.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use beamflow_net::{
    ControlLink, Introduction, Malformed, Stop, TransportError, push_to, send_parts,
};
use beamflow_protocol::control::{ComponentStatus, FromController, IngesterStatus, Role};
use beamflow_protocol::{EventData, IngesterName, StreamName, Timestamp, Value, WorkerName};
use tracing::info;

use crate::core::{IngesterCore, Placed, Send};
use crate::recording::Recorder;
use crate::{IngesterConfig, Source, SourceError, SourceFrame};

/// An ingester's settings.
#[derive(Debug, Clone)]
pub struct IngesterSettings {
    /// Its name (unique among ingesters; names its dump files).
    pub name: IngesterName,
    /// The controller's control endpoint.
    pub controller: String,
    /// Its source.
    pub source: IngesterConfig,
    /// Kept current for the readiness probe.
    pub reachable: beamflow_net::Reachable,
    /// The folders `dump_prefix` may name.
    pub roots: beamflow_net::files::Roots,
}

/// Frames read per loop turn at most, so control messages are never starved. A turn's parts
/// go to each worker as one message.
const BURST: usize = 512;

/// Bytes read per loop turn at most, so large frames go out as soon as they are in.
const BURST_BYTES: usize = 4 << 20;

/// How long a read waits for the source when nothing else is to be done.
const IDLE: Duration = Duration::from_millis(5);

/// Why the ingester stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngesterError {
    /// A socket failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

struct Node<'a> {
    context: &'a zmq::Context,
    control: ControlLink,
    source: Box<dyn Source>,
    core: IngesterCore,
    workers: BTreeMap<WorkerName, (String, zmq::Socket)>,
    held: Option<SourceFrame>,
    recorder: Recorder,
    malformed: Malformed,
}

/// Runs an ingester until `stop` is raised.
pub fn run(
    settings: &IngesterSettings,
    context: &zmq::Context,
    stop: &Stop,
) -> Result<(), IngesterError> {
    let source = settings.source.build(settings.name.as_str(), context)?;
    let introduction = Introduction {
        role: Role::Ingester,
        name: settings.name.to_string(),
        tags: Vec::new(),
        streams: source.streams(),
        endpoint: None,
    };
    let control = ControlLink::connect(
        context,
        &settings.controller,
        introduction,
        settings.reachable.clone(),
    )?;
    info!(ingester = %settings.name, kind = settings.source.kind(), streams = %names(&source.streams()), "Ingester up.");
    let mut node = Node {
        context,
        control,
        source,
        core: IngesterCore::new(),
        workers: BTreeMap::new(),
        held: None,
        recorder: Recorder::new(settings.name.as_str(), settings.roots.clone()),
        malformed: Malformed::new("frame from the source"),
    };
    while !stop.is_stopped() {
        node.say_hello();
        let sends = node.control_messages()?;
        node.send(sends, stop)?;
        let mut outbox = Vec::new();
        if let Some(frame) = node.held.take() {
            node.place(frame, &mut outbox);
        }
        let mut read_any = false;
        let mut burst_bytes = 0;
        for turn in 0..BURST {
            if node.held.is_some() || !node.core.wants_frames() || burst_bytes >= BURST_BYTES {
                break;
            }
            let timeout = if turn == 0 { IDLE } else { Duration::ZERO };
            match node.source.next_frame(timeout) {
                Ok(Some(frame)) => {
                    read_any = true;
                    burst_bytes += frame.data.byte_len();
                    node.place(frame, &mut outbox);
                }
                Ok(None) => break,
                Err(error @ SourceError::Malformed { .. }) => node.malformed.count(&error),
                Err(error) => return Err(error.into()),
            }
        }
        node.send(outbox, stop)?;
        if node.held.is_none() && node.core.finished_reading() {
            node.source.idle();
        }
        if !read_any {
            // Nothing to read: wait for the controller (a lease, a scan) instead of spinning.
            let mut items = [node.control.poll_item()];
            let _ = zmq::poll(
                &mut items,
                node.control
                    .wait_ms(Instant::now())
                    .min(IDLE.as_millis() as i64),
            );
        }
    }
    node.recorder.finish_scan();
    Ok(())
}

impl Node<'_> {
    fn say_hello(&mut self) {
        let (core, source, recorder) = (&self.core, &self.source, &self.recorder);
        let malformed_frames = self.malformed.total();
        self.control.heartbeat(Instant::now(), || {
            let recording = recorder.status();
            ComponentStatus::Ingester(IngesterStatus {
                scan: core.scan(),
                counts: core.counts(),
                retained_events: core.retained(),
                retained_bytes: core.retained_bytes(),
                source: Value::from_serialize(&source.status()).unwrap_or_default(),
                malformed_frames,
                recording: recording.recording,
                last_recording: recording.last_recording,
                recorded_files: recording.files,
                refused_recordings: recording.refused,
                next_frames: core.next_frames(),
            })
        });
    }

    /// Handles every waiting control message; returns parts to re-send.
    fn control_messages(&mut self) -> Result<Vec<Send>, IngesterError> {
        let mut sends = Vec::new();
        while let Some(message) = self.control.receive() {
            match message {
                // Its leases and retained frames are still good.
                FromController::Scan { scan, .. } if !self.control.new_scan(scan) => {}
                FromController::Scan {
                    scan,
                    uuid,
                    frames,
                    parameters,
                    first_frames,
                    ..
                } => {
                    // A frame held for the last scan's lease: its numbering belongs to that
                    // scan's series, so it cannot be placed in this one.
                    self.held = None;
                    let frames: BTreeMap<StreamName, u64> = frames.into_iter().collect();
                    let first_frames: BTreeMap<StreamName, u64> =
                        first_frames.into_iter().collect();
                    if !first_frames.is_empty() {
                        let from = first_frames
                            .iter()
                            .map(|(stream, first)| format!("{stream} from frame {first}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        info!(scan, %from, "Joining a running scan after a restart.");
                    }
                    // A simulator goes on with the series where the scan is.
                    let left: BTreeMap<StreamName, Range<u64>> = frames
                        .iter()
                        .map(|(stream, count)| {
                            let first = first_frames.get(stream).copied().unwrap_or(0);
                            (stream.clone(), first.min(*count)..*count)
                        })
                        .collect();
                    self.core.start_scan(scan, frames, first_frames);
                    self.recorder
                        .parameters(parameters.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
                    self.recorder.start_scan(&uuid);
                    self.source.start_scan(&left)?;
                }
                // Its routes are forgotten; a held frame stays held for its next lease.
                FromController::Rewind { scan, from, .. } if scan == self.core.scan() => {
                    self.core.rewind(from);
                }
                FromController::Workers { endpoints } => self.connect_workers(endpoints)?,
                FromController::Lease { scan, events } if scan == self.core.scan() => {
                    sends.extend(self.core.lease(events));
                }
                FromController::Released { scan, up_to } if scan == self.core.scan() => {
                    self.core.release(up_to);
                }
                FromController::Parameters { values } => {
                    self.recorder
                        .parameters(values.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
                }
                FromController::Finish { scan } if scan == self.core.scan() => {
                    self.recorder.finish_scan();
                }
                _ => {}
            }
        }
        Ok(sends)
    }

    fn connect_workers(
        &mut self,
        endpoints: Vec<(WorkerName, String)>,
    ) -> Result<(), IngesterError> {
        let wanted: BTreeMap<WorkerName, String> = endpoints.into_iter().collect();
        self.workers
            .retain(|name, (endpoint, _)| wanted.get(name) == Some(endpoint));
        for (name, endpoint) in wanted {
            if self.workers.contains_key(&name) {
                continue;
            }
            let push = push_to(self.context, &endpoint, 50)?;
            self.workers.insert(name, (endpoint, push));
        }
        Ok(())
    }

    /// Places a frame in its event; its parts join `outbox`.
    fn place(&mut self, frame: SourceFrame, outbox: &mut Vec<Send>) {
        match self.core.place(frame, Timestamp::now()) {
            Placed::Sent { sends, complete } => {
                outbox.extend(sends);
                if let Some(event) = complete {
                    self.recorder.write(&event);
                }
            }
            // Its lease is still to come; nothing more is read until it does.
            Placed::Hold(frame) => self.held = Some(frame),
            Placed::Stale
            | Placed::Unmapped
            | Placed::BeyondScan
            | Placed::Late
            | Placed::Implausible => {}
        }
    }

    /// Sends parts, one message per worker, waiting on full queues while answering the
    /// controller.
    fn send(&mut self, sends: Vec<Send>, stop: &Stop) -> Result<(), IngesterError> {
        let scan = self.core.scan();
        let mut by_worker: BTreeMap<WorkerName, Vec<EventData>> = BTreeMap::new();
        for send in sends {
            by_worker.entry(send.worker).or_default().push(send.part);
        }
        for (worker, parts) in by_worker {
            // A worker the controller no longer lists is dead: its events are re-leased.
            while let Some((_, push)) = self.workers.get_mut(&worker) {
                match send_parts(push, scan, &parts, true) {
                    Ok(()) => break,
                    Err(TransportError::Full) if !stop.is_stopped() => {
                        self.say_hello();
                        let resent = self.control_messages()?;
                        if !resent.is_empty() {
                            // Re-sends go out after these parts; order between events does not
                            // matter to workers.
                            self.send(resent, stop)?;
                        }
                    }
                    Err(TransportError::Full) => return Ok(()),
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(())
    }
}

/// Names as a person reads them: `cq01 otr2`, not `[StreamName("cq01"), ...]`.
fn names(streams: &[StreamName]) -> String {
    streams
        .iter()
        .map(StreamName::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}
