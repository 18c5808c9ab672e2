//! `beamflow model eval`: the surrogate as a tool, on the shared model's reference vectors.

use serde_json::Value;

use crate::util::{beamflow, root};

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
    let shared = root().join("../shared/models/lcls_cu_injector");
    let text = std::fs::read_to_string(shared.join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    for model in [shared.to_str().unwrap(), "builtin:lcls_cu_injector"] {
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
