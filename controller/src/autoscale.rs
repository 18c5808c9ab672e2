//! The controller's worker autoscaler in a cluster (feature `kubernetes`): every
//! [`PERIOD`] it measures the backlog and the workers' load from the ensemble, asks
//! [`crate::scaling::desired`], and sets the worker Deployment's replicas through
//! [`crate::kubernetes`]; `GET /api/v1/scaling` shows what it saw and did, with the release's
//! pods.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use beamflow_net::Stop;
use serde::Serialize;

use crate::http::{Shared, lock};
use crate::kubernetes::{ReleasePod, WorkerScaler};
use crate::scaling::{LoadMeter, Sample, ScalePolicy, desired};

/// How often the autoscaler looks.
pub const PERIOD: Duration = Duration::from_secs(15);

/// What `GET /api/v1/scaling` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalingState {
    /// The last sample.
    pub replicas: u32,
    /// Mean busy share of the workers since the previous look.
    pub busy: f64,
    /// Events leased but unfinished.
    pub backlog: u64,
    /// The last change made, and why.
    pub last_change: Option<String>,
    /// The release's pods.
    pub pods: Vec<ReleasePod>,
    /// The last error talking to the API server.
    pub error: Option<String>,
}

/// Why the autoscaler could not start; once running, API errors are shown in its state and
/// the round is skipped.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// Its async runtime.
    #[error("the autoscaler's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The in-cluster client.
    #[error("Kubernetes API client for deployment {deployment:?}: {source}")]
    Client {
        /// The worker Deployment.
        deployment: String,
        /// What the client said.
        #[source]
        source: kube::Error,
    },
}

/// Runs until `stop`; `state` is what the HTTP route serves.
pub fn run(
    ensemble: Shared,
    window: u64,
    deployment: String,
    release: String,
    policy: ScalePolicy,
    state: Arc<Mutex<ScalingState>>,
    stop: &Stop,
) -> Result<(), AutoscaleError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AutoscaleError::Runtime)?;
    let scaler = runtime
        .block_on(WorkerScaler::in_cluster(&deployment, &release))
        .map_err(|source| AutoscaleError::Client {
            deployment: deployment.clone(),
            source,
        })?;
    let mut meter = LoadMeter::default();
    let mut looked = Instant::now();
    let mut changed = Instant::now() - Duration::from_secs(3600);
    while !stop.is_stopped() {
        let (busy_seconds, backlog) = {
            let ensemble = lock(&ensemble);
            let busy: BTreeMap<String, f64> = ensemble
                .worker_statuses()
                .map(|(name, status)| (name.clone(), status.busy_seconds))
                .collect();
            let progress = ensemble.progress();
            (
                busy,
                progress
                    .last_assigned
                    .saturating_sub(progress.completed_events),
            )
        };
        let now = Instant::now();
        let busy = meter.busy(&busy_seconds, now - looked);
        looked = now;
        let outcome: Result<(), kube::Error> = runtime.block_on(async {
            let replicas = scaler.replicas().await?;
            let pods = scaler.pods().await?;
            {
                let mut current = state.lock().unwrap_or_else(PoisonError::into_inner);
                current.replicas = replicas;
                current.busy = busy;
                current.backlog = backlog;
                current.pods = pods;
                current.error = None;
            }
            let sample = Sample {
                replicas,
                busy,
                backlog,
                window,
            };
            if let Some(target) = desired(&policy, sample, now - changed) {
                scaler.scale(target).await?;
                changed = now;
                let why = format!(
                    "{replicas} -> {target} workers (busy {:.0} %, backlog {backlog} of {window})",
                    busy * 100.0
                );
                tracing::info!("Scaled: {why}.");
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last_change = Some(why);
            }
            Ok(())
        });
        if let Err(error) = outcome {
            tracing::warn!(%error, "Kubernetes API: scaling skipped this round.");
            state.lock().unwrap_or_else(PoisonError::into_inner).error = Some(error.to_string());
        }
        let deadline = Instant::now() + PERIOD;
        // Waking each second to see a stop; the period is what paces the scaler.
        while Instant::now() < deadline && !stop.is_stopped() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(())
}

/// `GET /api/v1/scaling`.
pub fn router(state: Arc<Mutex<ScalingState>>) -> axum::Router {
    axum::Router::new()
        .route(
            "/api/v1/scaling",
            axum::routing::get(
                |axum::extract::State(state): axum::extract::State<Arc<Mutex<ScalingState>>>| async move {
                    axum::Json(state.lock().unwrap_or_else(PoisonError::into_inner).clone())
                },
            ),
        )
        .with_state(state)
}
