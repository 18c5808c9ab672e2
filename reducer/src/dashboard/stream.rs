//! The pages' live updates: one Server-Sent Events stream per page, fed from a [`Hub`] that
//! holds only the newest `state` and `health` message. A slow page skips to the newest one and
//! never queues (lume-model-api's "size-1 drop-old queue"); a page that connects, or reconnects,
//! gets both at once; closing the hub ends every stream with a `bye`, so a graceful shutdown
//! does not wait on pages that would otherwise stay connected forever (axum#2673).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;

/// How long a page waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);

/// One message: its id (increasing over both kinds) and its JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// The SSE `id:`; 0 before anything was published.
    pub id: u64,
    /// The JSON `data:`.
    pub data: Arc<str>,
}

/// The newest `state` and `health` messages, and whether the server is closing.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    state: watch::Sender<Message>,
    health: watch::Sender<Message>,
    closed: watch::Sender<bool>,
    ids: AtomicU64,
}

/// Where a page's stream is: its first event (the retry delay) is sent at once, the last is a
/// `bye`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Run,
    Done,
}

/// Which message a stream sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    State,
    Health,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::State => "state",
            Kind::Health => "health",
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// Nothing published yet.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: watch::Sender::new(Message::default()),
                health: watch::Sender::new(Message::default()),
                closed: watch::Sender::new(false),
                ids: AtomicU64::new(0),
            }),
        }
    }

    /// The next id: every message gets one, in publishing order.
    pub fn next_id(&self) -> u64 {
        self.inner.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Replaces the newest `state` message.
    pub fn publish_state(&self, message: Message) {
        self.inner.state.send_replace(message);
    }

    /// Replaces the newest `health` message.
    pub fn publish_health(&self, message: Message) {
        self.inner.health.send_replace(message);
    }

    /// Ends every stream (each gets a `bye`) and refuses new ones: the server is stopping.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Pages connected now.
    pub fn pages(&self) -> usize {
        self.inner.state.receiver_count()
    }

    /// A receiver of the `state` messages, for tests that look at what is published.
    #[cfg(test)]
    pub(crate) fn inner_state_for_tests(&self) -> watch::Receiver<Message> {
        self.inner.state.subscribe()
    }

    /// A page's stream: the newest `state` and `health` at once, then each newer one as it is
    /// published (skipping any published while the page was slow), until the hub closes.
    pub fn stream(&self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        let mut state = self.inner.state.subscribe();
        let mut health = self.inner.health.subscribe();
        state.mark_changed();
        health.mark_changed();
        let closed = self.inner.closed.subscribe();
        futures_util::stream::unfold(
            (Phase::Start, state, health, closed),
            |(phase, mut state, mut health, mut closed)| async move {
                let sent = match phase {
                    Phase::Start => Event::default().retry(RETRY).comment("beamflow"),
                    Phase::Done => return None,
                    Phase::Run if *closed.borrow_and_update() => bye(),
                    Phase::Run => loop {
                        // Waiting on all three in one select: whichever changes first is sent,
                        // the others stay marked and go next.
                        let kind = tokio::select! {
                            biased;
                            _ = closed.changed() => break bye(),
                            changed = state.changed() => changed.map(|()| Kind::State),
                            changed = health.changed() => changed.map(|()| Kind::Health),
                        };
                        let Ok(kind) = kind else {
                            // The hub is gone: so is the server.
                            break bye();
                        };
                        let message = match kind {
                            Kind::State => state.borrow_and_update().clone(),
                            Kind::Health => health.borrow_and_update().clone(),
                        };
                        // Nothing published yet: wait for the first.
                        if message.id == 0 {
                            continue;
                        }
                        break Event::default()
                            .event(kind.name())
                            .id(message.id.to_string())
                            .data(&*message.data);
                    },
                };
                let next = match phase {
                    Phase::Run if *closed.borrow() => Phase::Done,
                    _ => Phase::Run,
                };
                Some((Ok(sent), (next, state, health, closed)))
            },
        )
    }

    /// The SSE response of [`stream`](Self::stream), with keep-alive comments.
    pub fn response(&self) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
        Sse::new(self.stream()).keep_alive(KeepAlive::new())
    }
}

/// The last event of every stream; `closed` is then set, so the stream ends after it.
fn bye() -> Event {
    Event::default().event("bye").data("{}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;

    fn message(hub: &Hub, data: &str) -> Message {
        Message {
            id: hub.next_id(),
            data: data.into(),
        }
    }

    /// A page's connection: the SSE response's body, read one event at a time.
    struct Page(Body);

    impl Page {
        fn open(hub: &Hub) -> Self {
            let response = hub.response().into_response();
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            Self(response.into_body())
        }

        /// The next event as it is on the wire; `None` when the stream ended.
        async fn next(&mut self) -> Option<String> {
            let frame = self.0.frame().await?.unwrap();
            Some(String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap())
        }
    }

    #[tokio::test]
    async fn a_page_gets_the_newest_state_at_once_and_skips_what_it_was_too_slow_for() {
        let hub = Hub::new();
        hub.publish_state(message(&hub, r#"{"n":1}"#));
        hub.publish_health(message(&hub, r#"{"h":1}"#));
        let mut page = Page::open(&hub);
        assert_eq!(page.next().await.unwrap(), "retry: 2000\n: beamflow\n\n");
        assert_eq!(
            page.next().await.unwrap(),
            "event: state\nid: 1\ndata: {\"n\":1}\n\n"
        );
        assert_eq!(
            page.next().await.unwrap(),
            "event: health\nid: 2\ndata: {\"h\":1}\n\n"
        );
        for n in 2..=5 {
            hub.publish_state(message(&hub, &format!(r#"{{"n":{n}}}"#)));
        }
        assert_eq!(
            page.next().await.unwrap(),
            "event: state\nid: 6\ndata: {\"n\":5}\n\n"
        );
        hub.close();
        assert_eq!(page.next().await.unwrap(), "event: bye\ndata: {}\n\n");
        assert_eq!(page.next().await, None);
        assert!(
            Page::open(&hub)
                .next()
                .await
                .is_some_and(|e| e.starts_with("retry"))
        );
    }

    #[tokio::test]
    async fn a_page_waits_for_the_first_message_and_counts_while_connected() {
        let hub = Hub::new();
        let mut page = Page::open(&hub);
        page.next().await.unwrap();
        assert_eq!(hub.pages(), 1);
        hub.publish_health(message(&hub, "{}"));
        // Had anything been sent for the unpublished state, it would come first.
        assert_eq!(
            page.next().await.unwrap(),
            "event: health\nid: 1\ndata: {}\n\n"
        );
        drop(page);
        assert_eq!(hub.pages(), 0);
    }
}
