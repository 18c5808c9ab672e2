//! `beamflow emittance`: the offline fit, as a user runs it on a scan file.

use serde_json::{Value, json};

use crate::util::{beamflow_output, data, root};

fn reference() -> Value {
    let text = std::fs::read_to_string(data("quadscan_reference.json"))
        .expect("the quad-scan reference dataset");
    serde_json::from_str(&text).unwrap()
}

/// The reference data the tests read are copies, so the repository's tests stand alone; this one
/// test holds them to the originals, the independent implementation's output beside the
/// repository (`../shared`), which stay the oracle.
#[test]
fn the_reference_data_are_the_shared_originals() {
    let shared = root().join("../shared");
    for (original, copy) in [
        (
            "data/quadscan/reference.json",
            data("quadscan_reference.json"),
        ),
        (
            "models/lcls_cu_injector/reference.json",
            data("lcls_cu_injector_reference.json"),
        ),
        (
            "models/lcls_cu_injector/model.safetensors",
            root().join("models/lcls_cu_injector/model.safetensors"),
        ),
        (
            "models/lcls_cu_injector/model.yaml",
            root().join("models/lcls_cu_injector/model.yaml"),
        ),
    ] {
        let original = shared.join(original);
        let original = std::fs::read(&original)
            .unwrap_or_else(|error| panic!("{}: {error}", original.display()));
        assert!(
            std::fs::read(&copy).unwrap() == original,
            "{} differs from the shared original",
            copy.display()
        );
    }
}

fn run(scan: &Value) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scan.json");
    std::fs::write(&file, scan.to_string()).unwrap();
    beamflow_output(&["emittance", "--scan", file.to_str().unwrap()])
}

#[test]
fn fits_the_reference_scan_as_the_independent_fit_does() {
    let reference = reference();
    let case = &reference["cases"][1];
    let inputs = &case["inputs"];
    let scan = json!({
        "energy_ev": 135e6, "quad_length_m": 0.108,
        "rmat_x": [[1.0, 2.26], [0.0, 1.0]], "rmat_y": [[1.0, 2.26], [0.0, 1.0]],
        "bctrl_kg": inputs["bctrl_kG"], "sizes_x_m": inputs["sizes_x_m"],
        "sizes_y_m": inputs["sizes_y_m"], "errors_x_m": inputs["sizes_err_x_m"],
        "errors_y_m": inputs["sizes_err_y_m"],
        "design_twiss": {"beta_x": 1.113, "alpha_x": -0.069, "beta_y": 1.113, "alpha_y": -0.070},
    });
    let output = run(&scan);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fit: Value = serde_json::from_slice(&output.stdout).unwrap();
    for plane in ["x", "y"] {
        let lsq = &case["independent_linear_lsq_thick"][plane];
        for (ours, theirs) in [
            ("norm_emit", "norm_emit"),
            ("beta", "beta"),
            ("alpha", "alpha"),
            ("reduced_chi2", "reduced_chi2"),
        ] {
            let (a, b) = (
                fit[plane][ours].as_f64().unwrap(),
                lsq[theirs].as_f64().unwrap(),
            );
            assert!(((a - b) / b).abs() < 1e-6, "{plane} {ours}: {a} vs {b}");
        }
        assert_eq!(fit[plane]["points"].as_array().unwrap().len(), 9);
        assert_eq!(fit[plane]["curve"]["size_m"].as_array().unwrap().len(), 50);
        assert!(fit[plane]["bmag"]["min"].as_f64().unwrap() >= 1.0);
    }
    assert_eq!(fit["warnings"], json!([]));
}

#[test]
fn too_few_settings_and_missing_errors_are_said_and_bad_lists_refused() {
    let scan = json!({
        "energy_ev": 135e6, "quad_length_m": 0.108,
        "rmat_x": [[1.0, 2.26], [0.0, 1.0]], "rmat_y": [[1.0, 2.26], [0.0, 1.0]],
        "bctrl_kg": [1.0, 2.0], "sizes_x_m": [1e-4, 8e-5], "sizes_y_m": [6e-5, 7e-5],
    });
    let output = run(&scan);
    assert!(output.status.success());
    let fit: Value = serde_json::from_slice(&output.stdout).unwrap();
    let warnings: Vec<&str> = fit["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("x: 2 distinct quad settings")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("assumed 1.5 %")),
        "{warnings:?}"
    );
    assert!(
        fit["x"]["norm_emit"].is_null(),
        "no number where there is no fit"
    );

    let mut bad = scan.clone();
    bad["sizes_y_m"] = json!([6e-5]);
    let output = run(&bad);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sizes_y_m has 1 values for 2 settings"),
        "{stderr}"
    );
}
