//! The controller's socket loop: a ROUTER that every component's DEALER connects to. It feeds
//! what arrives to the [`Ensemble`](crate::ensemble::Ensemble), ticks it, and sends what it
//! queued. The REST API changes the same state under the same lock; what it queues goes out
//! within one poll interval.

use std::time::{Duration, Instant};

use beamflow_net::{
    CONTROL_HWM, Stop, TransportError, as_server, bind_any, send_to_component, socket,
    try_recv_from_component,
};
use tracing::warn;

use crate::http::Shared;

/// How long the loop sleeps in `poll` at most: the latency of REST-initiated messages.
const POLL: Duration = Duration::from_millis(5);

/// The controller's ROUTER socket, bound.
pub struct ControlSocket {
    router: zmq::Socket,
    endpoint: String,
}

impl ControlSocket {
    /// Binds on `address` (`tcp://host:port`, port `*` or 0 for any free one).
    pub fn bind(context: &zmq::Context, address: &str) -> Result<Self, TransportError> {
        let router = socket(context, zmq::ROUTER, CONTROL_HWM, 0)?;
        as_server(context, &router, beamflow_net::curve::Plane::Control)?;
        let endpoint = match address
            .strip_suffix(":*")
            .or_else(|| address.strip_suffix(":0"))
        {
            Some(host) => bind_any(&router, host.trim_start_matches("tcp://"))?,
            None => {
                router.bind(address).map_err(|error| TransportError::Zmq {
                    operation: "bind",
                    endpoint: address.to_owned(),
                    error,
                })?;
                address.to_owned()
            }
        };
        Ok(Self { router, endpoint })
    }

    /// Where components connect.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs until `stop` is raised.
    pub fn run(self, ensemble: Shared, stop: Stop) {
        let mut logged_send_error = false;
        while !stop.is_stopped() {
            let mut items = [self.router.as_poll_item(zmq::POLLIN)];
            if let Err(error) = zmq::poll(&mut items, POLL.as_millis() as i64) {
                warn!(%error, "Control socket poll failed.");
            }
            let now = Instant::now();
            let outbox = {
                let mut ensemble = crate::http::lock(&ensemble);
                loop {
                    match try_recv_from_component(&self.router) {
                        Ok(Some((identity, Ok(message)))) => {
                            ensemble.receive(&identity, message, now);
                        }
                        Ok(Some((identity, Err(error)))) => {
                            ensemble.bad_message();
                            warn!(identity = %String::from_utf8_lossy(&identity), %error, "Bad control message dropped.");
                        }
                        Ok(None) => break,
                        Err(error) => {
                            warn!(%error, "Control socket receive failed.");
                            break;
                        }
                    }
                }
                ensemble.tick(now);
                ensemble.take_outbox()
            };
            for (identity, message) in outbox {
                if let Err(error) = send_to_component(&self.router, &identity, &message)
                    && !logged_send_error
                {
                    // A component that went away leaves messages nobody takes; it is declared
                    // dead by its silence, so one line is enough.
                    logged_send_error = true;
                    warn!(%error, identity = %String::from_utf8_lossy(&identity), "Control message not sent.");
                }
            }
        }
    }
}
