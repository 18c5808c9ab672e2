//! The REST API's views of the ensemble: `GET /api/v1/config`, `/status` and `/load` in
//! dranspose's shapes (with beamflow's counters added).

use std::collections::BTreeMap;
use std::time::Instant;

use beamflow_protocol::WorkerName;
use beamflow_protocol::control::Role;
use serde_json::json;

use crate::ensemble::Ensemble;

impl Ensemble {
    /// `GET /api/v1/config`: the components and the parameters' versions.
    pub fn config(&self) -> serde_json::Value {
        let describe = |role: Role| -> Vec<serde_json::Value> {
            self.members_with(role)
                .map(|(name, m)| {
                    json!({
                        "name": name,
                        "tags": m.tags,
                        "streams": m.streams,
                        "url": m.endpoint,
                        "instance": m.instance,
                    })
                })
                .collect()
        };
        json!({
            "ingesters": describe(Role::Ingester),
            "workers": describe(Role::Worker),
            "reducer": describe(Role::Reducer).into_iter().next(),
            "controller_version": env!("CARGO_PKG_VERSION"),
            "parameters_version": self.parameter_versions().map(|(n, v)| (n.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "parameters_hash": self.parameters_hash(),
        })
    }

    /// `GET /api/v1/status`: the scan, the counters, and every component's own counters.
    pub fn status(&self) -> serde_json::Value {
        let components = |role: Role| -> BTreeMap<String, serde_json::Value> {
            self.members_with(role)
                .map(|(name, m)| {
                    let status = serde_json::to_value(&m.status).unwrap_or(serde_json::Value::Null);
                    (name.clone(), status)
                })
                .collect()
        };
        let progress = self.progress();
        let stalled: Vec<serde_json::Value> = self
            .stalled(Instant::now())
            .into_iter()
            .map(|(role, name, silent)| json!({"role": role, "name": name, "silent_s": silent}))
            .collect();
        json!({
            "scan": self.current().map(|c| c.number),
            "uuid": self.current().map(|c| c.uuid.clone()),
            "live": self.current().is_some_and(|c| c.live),
            "resumes_live": self.resumes_live(),
            "last_assigned": progress.last_assigned,
            "completed_events": progress.completed_events,
            "total_events": progress.total_events,
            "finished": progress.finished,
            "error": self.current().and_then(|c| c.error.clone()),
            "awaiting_reducer": self.current().is_some_and(|c| c.awaiting_reducer && !c.finish_sent),
            "stalled": stalled,
            "curve": beamflow_net::curve::is_secured(),
            "refused_peers": beamflow_net::curve::refused_peers(),
            "counts": self.counts(),
            "ingesters": components(Role::Ingester),
            "workers": components(Role::Worker),
            "reducer": components(Role::Reducer).into_values().next(),
        })
    }

    /// `GET /api/v1/load`: per worker, unfinished and finished events in the scan and the time
    /// it spent processing them (dranspose's shape, with the `scan` interval).
    pub fn load(&self) -> serde_json::Value {
        let Some(current) = self.current() else {
            return json!({});
        };
        let unfinished = current.scan.load();
        let elapsed = Instant::now()
            .saturating_duration_since(current.started)
            .as_secs_f64();
        let loads: BTreeMap<String, serde_json::Value> = self
            .worker_statuses()
            .map(|(name, status)| {
                let worker = WorkerName::from(name.as_str());
                let busy = status.busy_seconds;
                let last = status.last_event;
                (
                    name.clone(),
                    json!({
                        "last_event": last,
                        "unfinished": unfinished.get(&worker).copied().unwrap_or(0),
                        "intervals": {"scan": {
                            "total": elapsed,
                            "active": busy,
                            "events": current.done.get(&worker).copied().unwrap_or(0),
                        }},
                    }),
                )
            })
            .collect();
        json!(loads)
    }
}
