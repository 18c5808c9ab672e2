//! The controller's side of the pipeline's health, fetched over its HTTP API: the page reads
//! only its own origin (the reducer's), so the reducer asks the controller for it, once a
//! second, whether the controller runs in this process or on another host.

use std::net::SocketAddr;
use std::time::Duration;

use beamflow_net::token::Token;
use serde::Serialize;

/// How long one request to the controller may take: the health is sent once a second.
const LIMIT: Duration = Duration::from_millis(800);

/// What the controller says about the pipeline; each part `None` when it could not be read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControllerHealth {
    /// `GET /api/v1/status`: ingesters and their PVs, counts, the scan.
    pub controller: Option<serde_json::Value>,
    /// `GET /api/v1/load`: each worker's load.
    pub load: Option<serde_json::Value>,
    /// `GET /api/v1/scan/quad`: the quad scan's progress.
    pub scan: Option<serde_json::Value>,
    /// Why the controller could not be read, if it could not.
    pub controller_error: Option<String>,
}

/// Reads the controller's health over HTTP.
pub struct ControllerClient {
    base: String,
    authorization: Option<String>,
    agent: ureq::Agent,
}

impl ControllerClient {
    /// A client of the controller's HTTP server at `address`, sending `token` (reads need it
    /// under `[security] protect_reads`).
    pub fn new(address: SocketAddr, token: Option<&Token>) -> Self {
        Self {
            base: format!("http://{address}"),
            authorization: token.map(Token::header_value),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(LIMIT))
                .http_status_as_error(true)
                .build()
                .into(),
        }
    }

    /// The controller's status, load and quad scan; a part that cannot be read is `None`, and
    /// the first failure says why.
    pub fn poll(&self) -> ControllerHealth {
        let mut error = None;
        let mut read = |path: &str| match self.get(path) {
            Ok(value) => Some(value),
            Err(why) => {
                error.get_or_insert(why);
                None
            }
        };
        let controller = read("/api/v1/status");
        // A controller that does not answer its status will not answer the rest.
        let (load, scan) = if controller.is_some() {
            (read("/api/v1/load"), read("/api/v1/scan/quad"))
        } else {
            (None, None)
        };
        ControllerHealth {
            controller,
            load,
            scan,
            controller_error: error,
        }
    }

    fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        request
            .call()
            .and_then(|mut response| response.body_mut().read_json())
            .map_err(|error| format!("{url}: {error}"))
    }

    /// A parameter's value as the controller holds it: its raw bytes.
    pub fn parameter(&self, name: &str) -> Result<Vec<u8>, String> {
        let url = format!("{}/api/v1/parameter/{name}", self.base);
        let mut request = self.agent.get(&url);
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        request
            .call()
            .and_then(|mut response| response.body_mut().read_to_vec())
            .map_err(|error| format!("{url}: {error}"))
    }

    /// Sets a parameter (a write: the token is needed unless writes are open).
    pub fn set_parameter(&self, name: &str, value: &[u8]) -> Result<(), String> {
        let url = format!("{}/api/v1/parameter/{name}", self.base);
        let mut request = self.agent.post(&url);
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        request
            .send(value)
            .map(drop)
            .map_err(|error| format!("{url}: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_controller_is_said_so_once() {
        // A port bound and closed again: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let health = ControllerClient::new(address, None).poll();
        assert!(health.controller.is_none() && health.load.is_none() && health.scan.is_none());
        let error = health.controller_error.unwrap();
        assert!(
            error.contains(&format!("{address}/api/v1/status")),
            "{error}"
        );
    }
}
