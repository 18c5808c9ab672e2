//! What every component's socket loop does besides its own work: say hello on time, notice when
//! the controller stops answering, recognise a scan repeated to it, hold messages that arrive
//! before their scan, and count malformed messages without flooding the log.
//!
//! The ingester, worker and reducer loops each hold a [`ControlLink`], and the worker and
//! reducer an [`Early`] and a [`Malformed`]; what is left in their loops is their own work.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use beamflow_protocol::control::{
    self, ComponentStatus, FromController, Hello, Role, ToController,
};
use beamflow_protocol::{StreamName, WorkerTag};
use tracing::{info, warn};

use crate::{TransportError, control_client, instance_id, send_to_controller};

/// Whether a component hears its controller, for its readiness probe: false until the first
/// answer, and while nothing has come for [`UNREACHABLE_AFTER`].
#[derive(Debug, Clone, Default)]
pub struct Reachable(Arc<AtomicBool>);

impl Reachable {
    /// Whether the controller answered lately.
    pub fn is_reachable(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Silence from the controller after which a component says it cannot reach it: six missed
/// answers to its hellos.
pub const UNREACHABLE_AFTER: Duration = Duration::from_millis(6 * control::HEARTBEAT_MS);

/// A component's heartbeat clock: says when the next hello is due, and notices (and logs once)
/// when the controller has stopped answering.
#[derive(Debug)]
struct Heartbeat {
    next: Instant,
    controller: String,
    last_heard: Instant,
    reachable: Reachable,
    said_unreachable: bool,
}

impl Heartbeat {
    /// Due at once; `controller` is the endpoint named in the log, `reachable` is kept current.
    fn new(controller: &str, reachable: Reachable) -> Self {
        let now = Instant::now();
        reachable.0.store(false, Ordering::Relaxed);
        Self {
            next: now,
            controller: controller.to_owned(),
            last_heard: now,
            reachable,
            said_unreachable: false,
        }
    }

    /// Whether a hello is due now; if so, the next one is due a period later.
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + Duration::from_millis(control::HEARTBEAT_MS);
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= UNREACHABLE_AFTER {
            self.reachable.0.store(false, Ordering::Relaxed);
            if !self.said_unreachable {
                self.said_unreachable = true;
                warn!(controller = %self.controller, silent_s = silent.as_secs_f64(),
                    "Cannot reach the controller; still trying. Check --controller (or BEAMFLOW_CONTROLLER) and that the controller runs.");
            }
        }
        true
    }

    /// A message came from the controller.
    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.reachable.0.store(true, Ordering::Relaxed);
        if self.said_unreachable {
            self.said_unreachable = false;
            info!(controller = %self.controller, "Controller reachable again.");
        }
    }

    /// Milliseconds until the next hello, for `poll`.
    fn wait_ms(&self, now: Instant) -> i64 {
        self.next.saturating_duration_since(now).as_millis() as i64
    }
}

/// Who a component is, as its every hello says.
#[derive(Debug, Clone)]
pub struct Introduction {
    /// Its role.
    pub role: Role,
    /// Its name (unique per role).
    pub name: String,
    /// A worker's tags.
    pub tags: Vec<WorkerTag>,
    /// An ingester's streams.
    pub streams: Vec<StreamName>,
    /// Where a worker receives event parts, or the reducer receives reports.
    pub endpoint: Option<String>,
}

/// A component's end of the control plane: its DEALER to the controller, its heartbeat, and the
/// scan it is in.
pub struct ControlLink {
    socket: zmq::Socket,
    heartbeat: Heartbeat,
    introduction: Introduction,
    instance: u64,
    scan: Option<u64>,
}

impl ControlLink {
    /// Connects to the controller at `controller`; the first hello is due at once and
    /// `reachable` is kept current.
    pub fn connect(
        context: &zmq::Context,
        controller: &str,
        introduction: Introduction,
        reachable: Reachable,
    ) -> Result<Self, TransportError> {
        let instance = instance_id();
        // The identity tells a restarted component from its old self at the controller's ROUTER.
        let identity = format!("{}:{}:{instance:x}", introduction.role, introduction.name);
        Ok(Self {
            socket: control_client(context, controller, &identity)?,
            heartbeat: Heartbeat::new(controller, reachable),
            introduction,
            instance,
            scan: None,
        })
    }

    /// Says hello with the status `status` gives, if a hello is due.
    pub fn heartbeat(&mut self, now: Instant, status: impl FnOnce() -> ComponentStatus) {
        if !self.heartbeat.due(now) {
            return;
        }
        let introduction = &self.introduction;
        let hello = ToController::Hello(Hello {
            role: introduction.role,
            name: introduction.name.clone(),
            instance: self.instance,
            tags: introduction.tags.clone(),
            streams: introduction.streams.clone(),
            endpoint: introduction.endpoint.clone(),
            status: status(),
        });
        self.send(&hello);
    }

    /// Sends a message to the controller. A failed send is not an error: the controller is gone
    /// or busy, and every message that matters is said again (the next hello, the next count).
    pub fn send(&self, message: &ToController) {
        let _ = send_to_controller(&self.socket, message);
    }

    /// The next message from the controller, if one is waiting; one that does not decode is
    /// logged and skipped. A failing socket is logged and reads as nothing waiting: the loop
    /// goes on with its own work and tries again next turn.
    pub fn receive(&mut self) -> Option<FromController> {
        loop {
            match crate::try_recv_from_controller(&self.socket) {
                Ok(Some(message)) => {
                    self.heartbeat.heard(Instant::now());
                    return Some(message);
                }
                Ok(None) => return None,
                Err(error) => {
                    warn!(%error, "Bad control message dropped.");
                    if !matches!(error, TransportError::Malformed(_) | TransportError::Empty) {
                        return None;
                    }
                }
            }
        }
    }

    /// Whether a `Scan` numbered `scan` starts a scan new here, which then becomes the current
    /// one. The controller sends the current scan again to a component it took for dead that
    /// rejoined; what that component holds for the scan is still good, so it must not restart.
    pub fn new_scan(&mut self, scan: u64) -> bool {
        let new = self.scan != Some(scan);
        self.scan = Some(scan);
        new
    }

    /// The current scan, once one started.
    pub fn scan(&self) -> Option<u64> {
        self.scan
    }

    /// Milliseconds until the next hello, for `poll`.
    pub fn wait_ms(&self, now: Instant) -> i64 {
        self.heartbeat.wait_ms(now)
    }

    /// The socket as a poll item waiting for a message.
    pub fn poll_item(&self) -> zmq::PollItem<'_> {
        self.socket.as_poll_item(zmq::POLLIN)
    }
}

/// Messages (event parts, reports) that arrived for a scan not yet started here: the data
/// sockets and the control socket are separate, so a fast peer's message can overtake the
/// controller's `Scan`. Holds at most `capacity`; what is past that, or of a scan already over,
/// is counted stale and dropped.
#[derive(Debug)]
pub struct Early<T> {
    held: Vec<(u64, T)>,
    capacity: usize,
    stale: u64,
}

impl<T> Early<T> {
    /// Holds at most `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        Self {
            held: Vec::new(),
            capacity,
            stale: 0,
        }
    }

    /// Sorts a message of scan `scan` that arrived while `current` runs: returns it when it
    /// belongs to the current scan, holds it when its scan is still to come, drops it otherwise.
    pub fn sort(&mut self, current: Option<u64>, scan: u64, message: T) -> Option<T> {
        match current {
            Some(current) if scan == current => return Some(message),
            Some(current) if scan < current => self.stale += 1,
            _ if self.held.len() < self.capacity => self.held.push((scan, message)),
            _ => self.stale += 1,
        }
        None
    }

    /// Scan `scan` started: the messages held for it, in arrival order. Those of earlier scans
    /// (superseded before they started here) are dropped as stale.
    pub fn release(&mut self, scan: u64) -> Vec<T> {
        let mut released = Vec::new();
        for (of, message) in std::mem::take(&mut self.held) {
            if of == scan {
                released.push(message);
            } else if of > scan {
                self.held.push((of, message));
            } else {
                self.stale += 1;
            }
        }
        released
    }

    /// Messages dropped as stale so far.
    pub fn stale(&self) -> u64 {
        self.stale
    }
}

/// Counts malformed messages, logging only the first: a peer that sends garbage sends it at
/// its full rate, and one line says as much as a million.
#[derive(Debug)]
pub struct Malformed {
    what: &'static str,
    count: u64,
}

impl Malformed {
    /// Counts malformed `what` (`event part`, `report`, `frame from the source`).
    pub fn new(what: &'static str) -> Self {
        Self { what, count: 0 }
    }

    /// One more, which did not decode for `error`.
    pub fn count(&mut self, error: &dyn Display) {
        if self.count == 0 {
            warn!(%error, "Malformed {} dropped (counted from now on).", self.what);
        }
        self.count += 1;
    }

    /// How many so far.
    pub fn total(&self) -> u64 {
        self.count
    }
}

/// Peers (client addresses, endpoints) whose first refusal is logged; the later ones are only
/// counted. Bounded, so a scan of the address space cannot grow the set, or the log, without
/// limit: past [`FirstSeen::LIMIT`] peers, none is new.
#[derive(Debug)]
pub struct FirstSeen<T> {
    seen: BTreeSet<T>,
}

impl<T: Ord> FirstSeen<T> {
    /// Peers remembered at most.
    pub const LIMIT: usize = 1024;

    /// None seen yet.
    pub const fn new() -> Self {
        Self {
            seen: BTreeSet::new(),
        }
    }

    /// Whether `peer` is seen for the first time (and so worth a log line).
    pub fn is_new(&mut self, peer: T) -> bool {
        self.seen.len() < Self::LIMIT && self.seen.insert(peer)
    }
}

impl<T: Ord> Default for FirstSeen<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_messages_wait_for_their_scan_and_old_ones_are_stale() {
        let mut early = Early::new(2);
        assert_eq!(early.sort(None, 1, "a"), None);
        assert_eq!(early.sort(Some(1), 1, "b"), Some("b"));
        assert_eq!(early.sort(Some(1), 3, "c"), None);
        assert_eq!(early.sort(Some(1), 4, "full"), None);
        assert_eq!(early.sort(Some(2), 1, "old"), None);
        assert_eq!(early.stale(), 2, "one past capacity, one of a scan over");
        // Scan 1 never started here: the controller moved on to 3.
        assert_eq!(early.release(3), vec!["c"]);
        assert_eq!(early.stale(), 3);
        assert_eq!(early.release(4), Vec::<&str>::new());
    }

    #[test]
    fn a_scan_repeated_to_a_rejoining_component_is_not_new() {
        let context = zmq::Context::new();
        let introduction = Introduction {
            role: Role::Worker,
            name: "w1".into(),
            tags: vec![],
            streams: vec![],
            endpoint: None,
        };
        let mut link = ControlLink::connect(
            &context,
            "tcp://127.0.0.1:1",
            introduction,
            Reachable::default(),
        )
        .unwrap();
        assert!(link.new_scan(1));
        assert!(!link.new_scan(1));
        assert!(link.new_scan(2));
        assert_eq!(link.scan(), Some(2));
    }
}
