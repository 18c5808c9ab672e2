//! What-if questions to the surrogate about the running machine (issue 14): `beamflow run`'s
//! embedded injector, the model list and `base: live` against `base: default`.

use serde_json::Value;

use crate::epics::{ca_env, free_ca_port};
use crate::util::{beamflow, eventually, finished_status, http_get, http_post, start_run};

const EVALUATE: &str = "/api/v1/model/lcls_injector/evaluate";

/// Issue 14: inputs a what-if does not give come from the machine: QE04's live readback
/// (the sim holds it at −3.2184 kG) rather than the model's default (−3.218399988942528).
#[test]
fn gh_14_a_what_if_on_the_live_machine_uses_its_readbacks() {
    let port = free_ca_port();
    let mut command = beamflow();
    ca_env(&mut command, port).args(["run", "--events", "20"]);
    let pipeline = start_run(command);
    let state = pipeline.state;
    // The last event applied: the live inputs no longer change under the requests below.
    finished_status(&pipeline);
    let live: Value = eventually(10, "the surrogate's live inputs", || {
        let (status, body) = http_get(state, "/api/v1/model/lcls_injector/inputs");
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    });

    let (status, body) = http_get(state, "/api/v1/model");
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let model = &list["models"][0];
    assert_eq!(model["name"], "lcls_injector");
    assert_eq!(model["default_base"], "live");
    assert_eq!(model["inputs"].as_array().unwrap().len(), 16);
    assert_eq!(model["outputs"].as_array().unwrap().len(), 5);

    let (status, body) = http_post(
        state,
        EVALUATE,
        r#"{"base": "live", "inputs": {"QUAD:IN20:371:BCTRL": 2.5}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["base"], "live");
    let qe04 = &answer["inputs"]["QUAD:IN20:525:BCTRL"];
    assert_eq!(qe04["value"], -3.2184, "the BACT readback: {qe04}");
    assert_eq!(qe04["provenance"], "live");
    assert_eq!(
        answer["inputs"]["QUAD:IN20:371:BCTRL"]["provenance"],
        "request"
    );
    // Every other input is the live one, with the provenance the analysis gave it.
    for (name, used) in answer["inputs"].as_object().unwrap() {
        if name == "QUAD:IN20:371:BCTRL" {
            continue;
        }
        assert_eq!(used["value"], live[name]["value"], "{name}");
        assert_eq!(used["provenance"], live[name]["provenance"], "{name}");
    }

    // The old flat body: the live base too, now that there is one.
    let (status, body) = http_post(state, EVALUATE, r#"{"QUAD:IN20:371:BCTRL": 2.5}"#);
    assert_eq!(status, 200, "{body}");
    let flat: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(flat["outputs"], answer["outputs"]);

    let (status, body) = http_post(
        state,
        EVALUATE,
        r#"{"base": "default", "inputs": {"QUAD:IN20:371:BCTRL": 2.5}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let design: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(design["base"], "default");
    let qe04 = &design["inputs"]["QUAD:IN20:525:BCTRL"];
    assert_eq!(qe04["value"], -3.218399988942528, "the model's default");
    assert_eq!(qe04["provenance"], "default");
}
