//! The controller's view of its Helm release in Kubernetes (feature `kubernetes`): the pods of
//! the release (workers and ingesters, by the chart's labels) and the worker Deployment's
//! replica count, read and set through the `scale` subresource. What to set comes from
//! [`crate::scaling`]; this module only talks to the API server.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;

/// A pod of the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleasePod {
    /// Its name (a worker's name, for workers).
    pub name: String,
    /// `app.kubernetes.io/component`: controller, reducer, worker, ingester, sim-ioc.
    pub component: String,
    /// Whether its Ready condition is true.
    pub ready: bool,
}

/// Reads the release's pods and scales its worker Deployment.
#[derive(Clone)]
pub struct WorkerScaler {
    deployments: Api<Deployment>,
    pods: Api<Pod>,
    deployment: String,
    release: String,
}

impl WorkerScaler {
    /// In the pod's own cluster and namespace (the service account's credentials).
    pub async fn in_cluster(deployment: &str, release: &str) -> Result<Self, kube::Error> {
        let client = Client::try_default().await?;
        let namespace = client.default_namespace().to_owned();
        Ok(Self::with_client(client, &namespace, deployment, release))
    }

    /// With a given client (a recorded API in tests).
    pub fn with_client(client: Client, namespace: &str, deployment: &str, release: &str) -> Self {
        Self {
            deployments: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client, namespace),
            deployment: deployment.to_owned(),
            release: release.to_owned(),
        }
    }

    /// The worker Deployment's replica count.
    pub async fn replicas(&self) -> Result<u32, kube::Error> {
        let scale = self.deployments.get_scale(&self.deployment).await?;
        Ok(scale
            .spec
            .and_then(|spec| spec.replicas)
            .map_or(0, |r| r.max(0) as u32))
    }

    /// Sets the worker Deployment's replica count.
    pub async fn scale(&self, replicas: u32) -> Result<(), kube::Error> {
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.deployments
            .patch_scale(
                &self.deployment,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// The release's pods, by the chart's labels.
    pub async fn pods(&self) -> Result<Vec<ReleasePod>, kube::Error> {
        let selector = format!(
            "app.kubernetes.io/name=beamflow,app.kubernetes.io/instance={}",
            self.release
        );
        let list = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok(list
            .items
            .into_iter()
            .map(|pod| {
                let component = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app.kubernetes.io/component").cloned())
                    .unwrap_or_default();
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                ReleasePod {
                    name: pod.metadata.name.unwrap_or_default(),
                    component,
                    ready,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    //! Against a recorded API: no Kubernetes API server can run on these machines, so the
    //! client talks to a tower service answering with responses in the API server's format
    //! (shapes as the Kubernetes 1.30 API documents them) and recording what was asked.

    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};

    use super::*;

    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

    fn recorded_api(seen: Seen) -> Client {
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let seen = seen.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let path = parts.uri.path().to_owned();
                let query = parts.uri.query().unwrap_or("").to_owned();
                seen.lock().unwrap().push((
                    parts.method.to_string(),
                    format!("{path}?{query}"),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                let json = if path.ends_with("/scale") {
                    let replicas = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|b| b["spec"]["replicas"].as_u64())
                        .unwrap_or(3);
                    serde_json::json!({
                        "apiVersion": "autoscaling/v1", "kind": "Scale",
                        "metadata": {"name": "beamline-workers", "namespace": "beamflow"},
                        "spec": {"replicas": replicas}, "status": {"replicas": replicas}
                    })
                } else {
                    serde_json::json!({
                        "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                            {"metadata": {"name": "beamline-workers-7d9-abcde",
                              "labels": {"app.kubernetes.io/component": "worker"}},
                             "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                            {"metadata": {"name": "beamline-ingester-eiger-5f-xyz",
                              "labels": {"app.kubernetes.io/component": "ingester"}},
                             "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
                        ]
                    })
                };
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                    json.to_string(),
                ))))
            }
        });
        Client::new(service, "beamflow")
    }

    #[tokio::test]
    async fn reads_replicas_scales_and_lists_the_releases_pods() {
        let seen = Seen::default();
        let scaler = WorkerScaler::with_client(
            recorded_api(seen.clone()),
            "beamflow",
            "beamline-workers",
            "beamline",
        );
        assert_eq!(scaler.replicas().await.expect("scale"), 3);
        scaler.scale(5).await.expect("patched");
        let pods = scaler.pods().await.expect("pods");
        assert_eq!(
            pods,
            [
                ReleasePod {
                    name: "beamline-workers-7d9-abcde".into(),
                    component: "worker".into(),
                    ready: true
                },
                ReleasePod {
                    name: "beamline-ingester-eiger-5f-xyz".into(),
                    component: "ingester".into(),
                    ready: false
                },
            ]
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, "GET");
        assert_eq!(
            seen[0].1,
            "/apis/apps/v1/namespaces/beamflow/deployments/beamline-workers/scale?"
        );
        assert_eq!(seen[1].0, "PATCH");
        assert_eq!(seen[1].2, r#"{"spec":{"replicas":5}}"#);
        assert!(
            seen[2].1.starts_with("/api/v1/namespaces/beamflow/pods?"),
            "{}",
            seen[2].1
        );
        assert!(
            seen[2].1.contains("labelSelector=app.kubernetes.io%2Fname%3Dbeamflow%2Capp.kubernetes.io%2Finstance%3Dbeamline"),
            "{}",
            seen[2].1
        );
    }
}
