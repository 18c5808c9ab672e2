//! Issue 13, "checked before anything binds": a typo in a pipeline file stops `beamflow run`
//! with the file, line and column of the key, before any socket is bound.

use std::io::BufRead;

use crate::util::{Running, root};

#[test]
fn issue_13_a_typo_stops_run_before_anything_binds() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    let text = std::fs::read_to_string(root().join("examples/injector.toml")).unwrap();
    assert_eq!(text.matches(r#"attach = ["qe04"]"#).count(), 1);
    std::fs::write(
        &typo,
        text.replace(r#"attach = ["qe04"]"#, r#"attach = ["qe4"]"#),
    )
    .unwrap();
    let path = typo.display().to_string();
    let mut run = Running::spawn(&[
        "run",
        "--pipeline",
        &path,
        "--control",
        "tcp://127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--reducer-http",
        "127.0.0.1:0",
    ]);
    // Read to the end, or to the banner that says the check let it through.
    let mut stderr = String::new();
    for line in (&mut run.stderr).lines() {
        let line = line.unwrap();
        stderr.push_str(&line);
        stderr.push('\n');
        assert!(!line.contains("beamflow is running"), "{stderr}");
    }
    let status = run.child.wait().unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "beamflow: {path}: line 44, column 11: analyses.otr2.attach[0]: stream \"qe4\" is not offered by any ingester (did you mean \"qe04\"?)"
        )),
        "{stderr}"
    );
}
