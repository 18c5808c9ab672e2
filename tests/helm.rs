//! The Helm chart (`helm/beamflow`), checked as far as these machines allow (no cluster, no
//! `helm` binary): Helm's own lint (helm-sdkpy) for the default values and two beamlines'; the
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

const VALUES: [(&str, Option<&str>); 3] = [
    ("default", None),
    ("nanomax", Some("helm/examples/nanomax.yaml")),
    ("lcls-injector", Some("helm/examples/lcls-injector.yaml")),
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
        if name == "default" {
            same_pipeline_as_beamflow_run(pipeline);
        }
    }
    security_values_name_the_secrets_and_who_may_connect(&renderer, dir.path());

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
