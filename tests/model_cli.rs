//! `beamflow model eval`: the surrogate as a tool, on the model's reference vectors, one point at
//! a time and in sweeps.

use serde_json::Value;

use crate::util::{beamflow, data, root};

fn reference() -> Value {
    let text = std::fs::read_to_string(data("lcls_cu_injector_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn eval(model: &str, inputs: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inputs.json");
    std::fs::write(&file, inputs).unwrap();
    beamflow()
        .args([
            "model",
            "eval",
            "--model",
            model,
            "--inputs",
            file.to_str().unwrap(),
        ])
        .output()
        .expect("run beamflow model eval")
}

#[test]
fn evaluates_the_reference_points_and_refuses_out_of_range_inputs() {
    let directory = root().join("models/lcls_cu_injector");
    let reference = reference();
    for model in [directory.to_str().unwrap(), "builtin:lcls_cu_injector"] {
        for point in reference["points"].as_array().unwrap() {
            let output = eval(model, &point["inputs"].to_string());
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let evaluated: Value = serde_json::from_slice(&output.stdout).unwrap();
            for (name, want) in point["outputs"].as_object().unwrap() {
                let got = evaluated["outputs"][name]["value"].as_f64().unwrap();
                let want = want.as_f64().unwrap();
                assert!(
                    ((got - want) / want).abs() < 1e-9,
                    "{name}: {got} vs {want}"
                );
            }
        }
    }
    let output = eval(
        "builtin:lcls_cu_injector",
        r#"{"QUAD:IN20:525:BCTRL": 2.5, "TYPO": 1}"#,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("QUAD:IN20:525:BCTRL = 2.5 is outside"),
        "{stderr}"
    );
    assert!(
        stderr.contains("TYPO is not an input of the model"),
        "{stderr}"
    );
}

fn sweep(model: &str, inputs: &str, sweeps: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inputs.json");
    std::fs::write(&file, inputs).unwrap();
    let mut command = beamflow();
    command.args([
        "model",
        "eval",
        "--model",
        model,
        "--inputs",
        file.to_str().unwrap(),
    ]);
    for sweep in sweeps {
        command.args(["--sweep", sweep]);
    }
    command.output().expect("run beamflow model eval --sweep")
}

/// Issue 14: a sweep through each reference point's QE04 value, on the point's other inputs,
/// reproduces the point's outputs at that step; one JSON line per step.
#[test]
fn gh_14_a_sweep_through_a_reference_point_reproduces_it() {
    let reference = reference();
    let name = "QUAD:IN20:525:BCTRL";
    for point in reference["points"].as_array().unwrap() {
        let at = point["inputs"][name].as_f64().unwrap();
        // From the range's far end to the point's value, which the last step reaches exactly.
        let output = sweep(
            "builtin:lcls_cu_injector",
            &point["inputs"].to_string(),
            &[&format!("{name}=-7.5:{at}:6")],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0]["sweep"][name], -7.5);
        assert_eq!(lines[5]["sweep"][name], at);
        assert_eq!(lines[5]["inputs"][name]["provenance"], "request");
        for (output, want) in point["outputs"].as_object().unwrap() {
            let got = lines[5]["outputs"][output]["value"].as_f64().unwrap();
            let want = want.as_f64().unwrap();
            assert!(
                ((got - want) / want).abs() < 1e-9,
                "{output}: {got} vs {want}"
            );
        }
        let first = lines[0]["outputs"]["OTRS:IN20:571:XRMS"]["value"].as_f64();
        assert_ne!(
            first,
            lines[5]["outputs"]["OTRS:IN20:571:XRMS"]["value"].as_f64()
        );
    }
}

#[test]
fn a_sweep_out_of_the_models_range_is_refused_with_its_reasons() {
    let output = sweep(
        "builtin:lcls_cu_injector",
        r#"{"TYPO": 1}"#,
        &["QUAD:IN20:525:BCTRL=-9:-1:3"],
    );
    assert!(!output.status.success());
    assert!(
        output.stdout.is_empty(),
        "nothing printed for a refused sweep"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    for reason in [
        "QUAD:IN20:525:BCTRL = -9 is outside",
        "QUAD:IN20:525:BCTRL = -1 is outside",
        "TYPO is not an input of the model",
    ] {
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
    assert_eq!(
        stderr.matches("TYPO").count(),
        1,
        "each reason once: {stderr}"
    );
    let output = beamflow()
        .args([
            "model",
            "eval",
            "--model",
            "builtin:lcls_cu_injector",
            "--sweep",
            "QUAD:IN20:525:BCTRL=-6:-2",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not NAME=FROM:TO:COUNT"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
