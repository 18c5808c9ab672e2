//! The Helm chart (`helm/beamflow`), checked as far as these machines allow (no cluster, no
//! `helm` binary): Helm's own lint (helm-sdkpy) for the default values and three beamlines'
//! (one running Python payloads from its science image, checked pod by pod); the
//! manifests rendered with Go's text/template and sprig, as Helm renders them
//! (`helm/render/main.go`, built here from Debian's Go packages); every manifest validated
//! against the Kubernetes schemas (kubernetes-validate, strict); and the rendered pipeline
//! ConfigMap read by beamflow's own loader: for the default values, the same pipeline as
//! `beamflow run`'s embedded one.

use std::path::{Path, PathBuf};
use std::process::Command;

use beamflow::pipeline::Pipeline;
use beamflow_ingesters::IngesterConfig;

use crate::util::root;

const VALUES: [(&str, Option<&str>); 4] = [
    ("default", None),
    ("nanomax", Some("helm/examples/nanomax.yaml")),
    ("lcls-injector", Some("helm/examples/lcls-injector.yaml")),
    (
        "python-payloads",
        Some("helm/examples/python-payloads.yaml"),
    ),
];

/// Builds the renderer with Debian's Go and its packaged sprig and yaml.v3 (GOPATH mode).
fn renderer(dir: &Path) -> PathBuf {
    let binary = dir.join("render");
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(root().join("helm/render"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("gocache"))
        .output()
        .expect("go (Debian's golang-go, installed by .ci/run)");
    assert!(
        output.status.success(),
        "building the renderer: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

fn render(renderer: &Path, out: &Path, values: Option<&str>) -> Vec<PathBuf> {
    let mut command = Command::new(renderer);
    command.arg(root().join("helm/beamflow")).arg(out);
    if let Some(values) = values {
        command.arg("-f").arg(root().join(values));
    }
    let output = command.output().expect("run the renderer");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The rendered ConfigMap's pipeline.json.
fn pipeline_of(files: &[PathBuf]) -> String {
    let configmap = files
        .iter()
        .find(|f| {
            f.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("configmap")
        })
        .expect("a ConfigMap");
    let text = std::fs::read_to_string(configmap).unwrap();
    let start = text.find("pipeline.json: |").expect("the pipeline key") + "pipeline.json: |".len();
    // The block scalar: every following line indented by four spaces.
    text[start..]
        .lines()
        .skip(1)
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_chart_lints_renders_valid_manifests_and_the_pipeline_beamflow_runs() {
    let dir = tempfile::tempdir().unwrap();
    let renderer = renderer(dir.path());
    let python = crate::util::python();
    for (name, values) in VALUES {
        let out = dir.path().join(name);
        let files = render(&renderer, &out, values);
        assert!(files.len() >= 8, "{name}: {files:?}");
        let kinds: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        for kind in [
            "kind: ConfigMap",
            "kind: Deployment",
            "kind: Service",
            "kind: NetworkPolicy",
        ] {
            assert!(kinds.contains(kind), "{name}: no {kind}");
        }
        assert!(kinds.contains("readOnlyRootFilesystem: true"), "{name}");
        assert!(kinds.contains("runAsNonRoot: true"), "{name}");
        // The HTTP token: a Secret the chart makes, mounted as the file every component reads.
        let secret = rendered(&files, "secret");
        assert!(secret.contains("kind: Secret"), "{name}: {secret}");
        assert!(secret.contains("name: beamline-token"), "{name}: {secret}");
        assert!(kinds.contains("value: /etc/beamflow/token"), "{name}");
        assert!(
            !kinds.contains("BEAMFLOW_KEYS"),
            "{name}: no keys named, none mounted"
        );
        // HTTP and CA are open to the release's own pods only, unless the values name more.
        let policy = rendered(&files, "networkpolicy");
        assert!(!policy.contains("namespaceSelector"), "{name}: {policy}");
        assert_eq!(
            policy.contains("port: 5064"),
            name == "lcls-injector",
            "{name}"
        );

        let validate = python.parent().unwrap().join("kubernetes-validate");
        let output = Command::new(&validate)
            .arg("--strict")
            .args(&files)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        let pipeline = Pipeline::parse_json(&pipeline_of(&files))
            .unwrap_or_else(|e| panic!("{name}: the rendered pipeline: {e:#}"));
        assert_eq!(pipeline.controller.control, "tcp://0.0.0.0:5555");
        assert_eq!(pipeline.reducer.http, "0.0.0.0:5001");
        if name == "python-payloads" {
            assert!(pipeline.analyses.contains_key("xes"), "{name}");
            assert!(pipeline.accumulators.contains_key("xes"), "{name}");
            a_science_image_runs_the_payloads(&files);
        } else {
            stock_image_only(&files, name);
        }
        if name == "nanomax" {
            // The NeXus files' folder reaches the reducer, and a volume is mounted there.
            let folder = pipeline.reducer.hdf5.as_ref().map(|h| h.folder.clone());
            assert_eq!(folder, Some(PathBuf::from("/data/beamflow")));
            let reducer = files
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap())
                .find(|text| text.contains("beamflow-results") && text.contains("kind: Deployment"))
                .expect("the reducer's Deployment mounts the results volume");
            assert!(reducer.contains("mountPath: /data/beamflow"), "{reducer}");
        }
        if name == "default" {
            same_pipeline_as_beamflow_run(pipeline);
        }
    }
    security_values_name_the_secrets_and_who_may_connect(&renderer, dir.path());
    science_image_values_the_chart_fills_in_or_refuses(&renderer, dir.path());

    let mut lint = Command::new(&python);
    lint.arg(root().join("tests/python/helm_lint.py"))
        .arg(root().join("helm/beamflow"));
    let output = lint.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let mut lint = Command::new(&python);
    lint.arg(root().join("tests/python/helm_lint.py"))
        .arg(root().join("helm/beamflow"))
        .args(VALUES.iter().filter_map(|(_, v)| v.map(|v| root().join(v))));
    let output = lint.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The default values' pipeline is `beamflow run`'s embedded one, but for the cluster's
/// addresses: the chart points the ingester at the simulated IOC's Service and serves result
/// PVs on every interface.
fn same_pipeline_as_beamflow_run(mut chart: Pipeline) {
    let mut embedded = Pipeline::load(&root().join("examples/injector.toml")).unwrap();
    for pipeline in [&mut chart, &mut embedded] {
        for ingester in pipeline.ingesters.values_mut() {
            if let IngesterConfig::EpicsCa(config) = ingester {
                assert!(
                    config
                        .addr_list
                        .as_deref()
                        .is_none_or(|a| a == "beamline-sim-ioc:5064"),
                    "{:?}",
                    config.addr_list
                );
                config.addr_list = None;
            }
        }
    }
    assert_eq!(
        format!("{:?}", chart.ingesters),
        format!("{:?}", embedded.ingesters)
    );
    assert_eq!(
        format!("{:?}", chart.analyses),
        format!("{:?}", embedded.analyses)
    );
    assert_eq!(
        format!("{:?}", chart.accumulators),
        format!("{:?}", embedded.accumulators)
    );
    let chart_pvs = chart.reducer.pvs.expect("result PVs");
    let embedded_pvs = embedded.reducer.pvs.expect("result PVs");
    assert_eq!(
        format!("{:?}", chart_pvs.values),
        format!("{:?}", embedded_pvs.values)
    );
    assert_eq!(chart_pvs.server, "0.0.0.0");
    assert_eq!(chart.controller.scan, embedded.controller.scan);
}

/// The text the template `stem` rendered to (`secret` for `secret.yaml`, written as
/// `secret-0.yaml`, ...); empty if it rendered to nothing.
fn rendered(files: &[PathBuf], stem: &str) -> String {
    files
        .iter()
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}-")))
        })
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

/// With `security.token.secretName` and `security.keys.secretName` set, the chart makes no
/// Secret and mounts the named ones; the NetworkPolicy lets in what `networkPolicy.http.from`
/// and `networkPolicy.ca.from` name, on their ports only.
fn security_values_name_the_secrets_and_who_may_connect(renderer: &Path, dir: &Path) {
    let values = dir.join("security.yaml");
    std::fs::write(
        &values,
        r#"
security:
  token: {secretName: control-room-token}
  keys: {secretName: beamline-curve}
networkPolicy:
  http:
    from:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}
  ca:
    from:
      - ipBlock: {cidr: 10.1.0.0/16}
dumps:
  enabled: true
"#,
    )
    .unwrap();
    let out = dir.join("security");
    let files = render(renderer, &out, Some(values.to_str().unwrap()));
    assert!(
        !rendered(&files, "secret").contains("kind: Secret"),
        "the named Secret is used, none made"
    );
    let controller = rendered(&files, "controller");
    for expected in [
        "name: control-room-token",
        "name: beamline-curve",
        "path: keys/beamflow.key",
        "path: keys/beamflow.pub",
        "name: BEAMFLOW_TOKEN_FILE",
        "name: BEAMFLOW_KEYS\n              value: /etc/beamflow/keys",
        "name: BEAMFLOW_DATA_PLANE\n              value: \"encrypted\"",
    ] {
        assert!(
            controller.contains(expected),
            "{expected:?} in {controller}"
        );
    }
    let policy = rendered(&files, "networkpolicy");
    for expected in [
        "kubernetes.io/metadata.name: ingress-nginx",
        "cidr: 10.1.0.0/16",
        "port: 5065",
    ] {
        assert!(policy.contains(expected), "{expected:?} in {policy}");
    }
    let pipeline = Pipeline::parse_json(&pipeline_of(&files)).unwrap();
    assert_eq!(
        pipeline.security.roots,
        Some(vec![PathBuf::from("/dumps"), PathBuf::from("/tmp")]),
        "recordings may go to the dumps volume"
    );
    let validate = crate::util::python()
        .parent()
        .unwrap()
        .join("kubernetes-validate");
    let output = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The chart's own image, which the controller and ingesters always run and, without `image`
/// values, the workers and the reducer too.
const STOCK_IMAGE: &str = "ghcr.io/beamflow/beamflow:0.1.0";
const SCIENCE_IMAGE: &str = "harbor.maxiv.lu.se/daq/beamflow/balder-xes:2026.11.1";

/// The rendered Deployments as JSON (Python's yaml, as the lint reads values), by name.
fn deployments(files: &[PathBuf]) -> std::collections::BTreeMap<String, serde_json::Value> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))";
    let output = Command::new(crate::util::python())
        .args(["-c", TO_JSON])
        .args(files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifests: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    manifests
        .into_iter()
        .filter(|m| m["kind"] == "Deployment")
        .map(|m| (m["metadata"]["name"].as_str().unwrap().to_owned(), m))
        .collect()
}

/// A Deployment's one container.
fn container(deployment: &serde_json::Value) -> &serde_json::Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{deployment:#}");
    &containers[0]
}

/// A container's environment, name to value (fieldRefs left out).
fn env_of(container: &serde_json::Value) -> std::collections::BTreeMap<&str, &str> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect()
}

/// Without science image values every pod runs the chart's image by its entrypoint, scratch at /tmp.
fn stock_image_only(files: &[PathBuf], name: &str) {
    for (deployment, manifest) in deployments(files) {
        let container = container(&manifest);
        assert_eq!(container["image"], STOCK_IMAGE, "{name}: {deployment}");
        assert!(container.get("command").is_none(), "{name}: {deployment}");
        assert!(
            container.get("workingDir").is_none(),
            "{name}: {deployment}"
        );
        assert!(
            !env_of(container).contains_key("TMPDIR"),
            "{name}: {deployment}"
        );
    }
}

/// helm/examples/python-payloads.yaml: the worker pools (the debug worker with the main
/// pool's settings) and the reducer run the science image, by the wheel's `beamflow` with the
/// chart's arguments, in the payload's folder, with the extra environment and volumes and their
/// scratch folder moved off /tmp (where a dranspose image keeps its payload); the controller
/// and the ingester keep the chart's image and its entrypoint.
fn a_science_image_runs_the_payloads(files: &[PathBuf]) {
    let deployments = deployments(files);
    let names: Vec<&str> = deployments.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "beamline-controller",
            "beamline-ingester-pilatus",
            "beamline-reducer",
            "beamline-workers",
            "beamline-workers-debug",
            "beamline-workers-preview",
        ]
    );
    for (name, manifest) in &deployments {
        let container = container(manifest);
        let pod = &manifest["spec"]["template"]["spec"];
        let mounts: Vec<(&str, &str)> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                )
            })
            .collect();
        let volumes: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let env = env_of(container);
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        // Whatever the image, the same security and the same pipeline.
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 10001);
        assert_eq!(env["BEAMFLOW_PIPELINE"], "/etc/beamflow/pipeline.json");
        assert!(mounts.contains(&("pipeline", "/etc/beamflow")), "{name}");

        if name.ends_with("controller") || name.ends_with("ingester-pilatus") {
            assert_eq!(container["image"], STOCK_IMAGE, "{name}");
            assert!(container.get("command").is_none(), "{name}");
            assert!(container.get("workingDir").is_none(), "{name}");
            assert!(!env.contains_key("TMPDIR"), "{name}");
            assert!(mounts.contains(&("tmp", "/tmp")), "{name}");
            continue;
        }
        assert_eq!(container["image"], SCIENCE_IMAGE, "{name}");
        assert_eq!(container["workingDir"], "/tmp", "{name}");
        assert_eq!(
            mounts[..2],
            [("pipeline", "/etc/beamflow"), ("tmp", "/var/tmp/beamflow")],
            "{name}"
        );
        assert_eq!(env["TMPDIR"], "/var/tmp/beamflow", "{name}");
        assert_eq!(env["HOME"], "/var/tmp/beamflow", "{name}");
        match name.as_str() {
            "beamline-reducer" => {
                assert_eq!(
                    container["command"],
                    serde_json::json!(["/venv/bin/beamflow"])
                );
                assert_eq!(container["imagePullPolicy"], "IfNotPresent");
                assert_eq!(args[0], "reducer");
                assert_eq!(env["LOG_LEVEL"], "INFO");
                assert_eq!(mounts[2..], [("visitors", "/data/visitors/balder")]);
                assert_eq!(volumes, ["pipeline", "tmp", "visitors"]);
                assert_eq!(
                    pod["volumes"][2]["persistentVolumeClaim"]["claimName"],
                    "balder-visitors"
                );
            }
            workers => {
                assert_eq!(
                    container["command"],
                    serde_json::json!(["beamflow"]),
                    "{workers}"
                );
                assert_eq!(args[0], "worker", "{workers}");
                assert_eq!(mounts.len(), 2, "{workers}");
                assert_eq!(volumes, ["pipeline", "tmp"], "{workers}");
                let (tags, pull, replicas) = match workers {
                    "beamline-workers" => ("--tags=generic", "IfNotPresent", 6),
                    "beamline-workers-debug" => ("--tags=debug", "IfNotPresent", 1),
                    "beamline-workers-preview" => ("--tags=preview", "Always", 1),
                    other => panic!("{other}"),
                };
                assert_eq!(args[2], tags, "{workers}");
                assert_eq!(container["imagePullPolicy"], pull, "{workers}");
                assert_eq!(manifest["spec"]["replicas"], replicas, "{workers}");
                // The main pool's extra environment reaches its debug worker, not another pool.
                let main = workers != "beamline-workers-preview";
                assert_eq!(env.get("OMP_NUM_THREADS") == Some(&"1"), main, "{workers}");
            }
        }
    }
}

/// A science image named by its repository alone runs `beamflow` with the chart's pull policy;
/// an `env` that sets HOME keeps it (one entry, the site's); `image` without a repository is
/// refused with the value to set, not rendered as the chart's image.
fn science_image_values_the_chart_fills_in_or_refuses(renderer: &Path, dir: &Path) {
    let values = dir.join("science.yaml");
    std::fs::write(
        &values,
        "reducer:\n  image: {repository: site/xes}\n  env: [{name: HOME, value: /home/xes}]\n",
    )
    .unwrap();
    let files = render(
        renderer,
        &dir.join("science"),
        Some(values.to_str().unwrap()),
    );
    let deployments = deployments(&files);
    let reducer = container(&deployments["beamline-reducer"]);
    assert_eq!(reducer["image"], "site/xes");
    assert_eq!(reducer["imagePullPolicy"], "IfNotPresent");
    assert_eq!(reducer["command"], serde_json::json!(["beamflow"]));
    assert!(reducer.get("workingDir").is_none(), "the image's WORKDIR");
    let homes: Vec<&serde_json::Value> = reducer["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "HOME")
        .collect();
    assert_eq!(
        homes,
        [&serde_json::json!({"name": "HOME", "value": "/home/xes"})]
    );
    assert_eq!(env_of(reducer)["TMPDIR"], "/var/tmp/beamflow");
    assert_eq!(
        container(&deployments["beamline-workers"])["image"],
        STOCK_IMAGE
    );

    std::fs::write(
        &values,
        "workers:\n  pools:\n    xes: {replicas: 1, tags: [xes], image: {tag: \"1.0\"}}\n",
    )
    .unwrap();
    let output = Command::new(renderer)
        .arg(root().join("helm/beamflow"))
        .arg(dir.join("refused"))
        .arg("-f")
        .arg(&values)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("workers.pools.xes.image.repository"),
        "{stderr}"
    );
}
