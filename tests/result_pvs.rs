//! Result PVs as displays see them (issue #14), read with EPICS 7's `caget`: the units,
//! precision and limits of the embedded pipeline's PVs, and their alarm when the IOC behind them
//! is gone.

use std::collections::BTreeMap;
use std::process::Command;

use crate::epics::{ca_env, epics_tool, free_ca_port, tool_output};
use crate::util::{Running, beamflow, eventually, root, start_run};

/// `caget -d <type>`'s "Name: value" lines as a map (the PV's name line has no colon-space);
/// time stamps in UTC.
fn caget_fields(port: u16, dbr_type: &str, pv: &str) -> BTreeMap<String, String> {
    // caget waits 1 s for a search answer by default; a loaded CI box can take longer.
    let output = ca_env(&mut Command::new(epics_tool("caget")), port)
        .env("TZ", "UTC")
        .args(["-w", "10", "-d", dbr_type, pv])
        .output()
        .expect("run caget");
    assert!(
        output.status.success(),
        "caget {pv}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn number(fields: &BTreeMap<String, String>, key: &str) -> f64 {
    let text = fields
        .get(key)
        .unwrap_or_else(|| panic!("no {key:?} in {fields:?}"));
    text.parse()
        .unwrap_or_else(|_| panic!("{key}: {text:?} is not a number"))
}

/// `beamflow run` as a new user starts it, with its live scan: `caget -d DBR_CTRL_DOUBLE` shows
/// what the embedded pipeline configures for the OTR2 beam size.
#[test]
fn ctrl_answers_carry_the_units_precision_and_limits_of_the_pipeline() {
    let port = free_ca_port();
    let mut command = beamflow();
    ca_env(&mut command, port).arg("run");
    let _pipeline = start_run(command);

    // INVALID/UDF until the first image has been measured.
    let pv = "BEAMFLOW:INJ:OTR2:SIGMA_X";
    let ctrl = eventually(60, "a measured beam size", || {
        let fields = caget_fields(port, "DBR_CTRL_DOUBLE", pv);
        (fields.get("Severity").map(String::as_str) == Some("NO_ALARM")).then_some(fields)
    });
    assert_eq!(ctrl["Native data type"], "DBF_DOUBLE", "{ctrl:?}");
    assert_eq!(ctrl["Units"], "µm", "{ctrl:?}");
    assert_eq!(ctrl["Precision"], "2", "{ctrl:?}");
    for (key, wanted) in [
        ("Lo disp limit", 0.0),
        ("Hi disp limit", 1000.0),
        ("Lo ctrl limit", 0.0),
        ("Hi ctrl limit", 1000.0),
    ] {
        assert_eq!(number(&ctrl, key), wanted, "{key}: {ctrl:?}");
    }
    assert!(
        number(&ctrl, "Hi alarm limit").is_nan(),
        "no alarm limits configured: {ctrl:?}"
    );
    // The sim's beam at the quad's default: ~403 µm wide.
    let sigma = number(&ctrl, "Value");
    assert!((300.0..500.0).contains(&sigma), "{sigma}");
    // As an IOC does, a string read is printed with the precision.
    let text = tool_output(port, "caget", &["-w", "10", "-t", "-s", pv]);
    let decimals = text.trim().split_once('.').map(|(_, d)| d.len());
    assert_eq!(decimals, Some(2), "{text:?}");

    // Alarm limits: OTR2's camera saturates at 4095 counts.
    let max = caget_fields(port, "DBR_GR_DOUBLE", "BEAMFLOW:INJ:OTR2:MAX");
    assert_eq!(max["Units"], "counts", "{max:?}");
    assert_eq!(number(&max, "Hi warn limit"), 3900.0, "{max:?}");
    assert_eq!(number(&max, "Hi alarm limit"), 4095.0, "{max:?}");
    // The fit's normalised emittance is served in µm, not m·rad.
    let emittance = caget_fields(port, "DBR_CTRL_DOUBLE", "BEAMFLOW:INJ:EMITN_X");
    assert_eq!(
        (emittance["Units"].as_str(), emittance["Precision"].as_str()),
        ("µm", "3"),
        "{emittance:?}"
    );
}

/// The pipeline file's `max_age_s` (2 s), from the embedded pipeline.
const MAX_AGE_S: f64 = 2.0;

/// A lost IOC: the simulated injector runs as its own process, `beamflow run` watches it and
/// serves the result PVs on another port; once the sim is killed no event comes, and the
/// results turn INVALID (status COMM) within `max_age_s` though their values stay.
#[test]
fn results_turn_invalid_within_max_age_when_their_ioc_is_gone() {
    let sim_port = free_ca_port();
    let mut sim = beamflow();
    // 2 images/s, not 10: a debug build on a loaded box would otherwise fall seconds behind,
    // and samples that late are rightly INVALID already.
    ca_env(&mut sim, sim_port).args([
        "sim-ioc",
        "--address",
        &format!("127.0.0.1:{sim_port}"),
        "--image-rate",
        "2",
    ]);
    let mut sim = Running::start(sim);
    sim.wait_for_line("beamflow sim-ioc:");

    let pv_port = free_ca_port();
    let embedded = std::fs::read_to_string(root().join("examples/injector.toml")).unwrap();
    let served_at = r#"server = "127.0.0.1"  "#;
    assert_eq!(embedded.matches(served_at).count(), 1, "{served_at}");
    let text = embedded.replacen(
        served_at,
        &format!(r#"server = "127.0.0.1:{pv_port}"  "#),
        1,
    );
    assert!(
        text.contains(&format!("max_age_s = {MAX_AGE_S}")),
        "the embedded pipeline's max age"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("injector.toml");
    std::fs::write(&path, text).unwrap();
    // No --sim-ioc: the ingester finds the sim's process through EPICS_CA_ADDR_LIST.
    let mut command = beamflow();
    ca_env(&mut command, sim_port)
        .arg("run")
        .arg("--pipeline")
        .arg(&path);
    let _pipeline = start_run(command);

    let pvs = ["BEAMFLOW:INJ:QE04:BACT", "BEAMFLOW:INJ:OTR2:SIGMA_X"];
    let alarm = |pv: &str| {
        let fields = caget_fields(pv_port, "DBR_TIME_DOUBLE", pv);
        (
            fields.get("Status").cloned().unwrap_or_default(),
            fields.get("Severity").cloned().unwrap_or_default(),
            fields,
        )
    };
    for pv in pvs {
        eventually(60, &format!("{pv} valid"), || {
            let (status, severity, _) = alarm(pv);
            (status == "NO_ALARM" && severity == "NO_ALARM").then_some(())
        });
    }

    sim.child.kill().unwrap();
    sim.child.wait().unwrap();
    let killed = jiff::Timestamp::now();
    for pv in pvs {
        let fields = eventually(20, &format!("{pv} INVALID"), || {
            let (status, severity, fields) = alarm(pv);
            (status == "COMM" && severity == "INVALID").then_some(fields)
        });
        assert!(
            number(&fields, "Value").is_finite(),
            "the value stays: {fields:?}"
        );
        // The alarm was posted by the reducer within max_age of the last sample (before the
        // kill), plus its 0.1 s period and a loaded machine's scheduling.
        let stamp = time_stamp(&fields);
        let late = stamp.duration_since(killed).as_secs_f64();
        assert!(
            late <= MAX_AGE_S + 1.5,
            "{pv} turned INVALID {late:.2} s after the kill: {fields:?}"
        );
    }
}

/// The "Timestamp" of a `caget -d DBR_TIME_*` answer, printed in UTC.
fn time_stamp(fields: &BTreeMap<String, String>) -> jiff::Timestamp {
    let text = &fields["Timestamp"];
    let civil: jiff::civil::DateTime = text
        .parse()
        .unwrap_or_else(|error| panic!("{text:?}: {error}"));
    civil.to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp()
}

/// Issue 22: the same result PVs over PV Access, as p4p (pvxs) and EPICS 7's `pvget`
/// (pvAccessCPP) read them from `beamflow run`: the NTScalar's value and metadata, its
/// `:HISTORY` array, the screen as NTNDArray, the quad scan's steps as NTTable, live monitor
/// updates, and a put to a read-only PV refused.
#[test]
fn the_same_result_pvs_are_served_over_pv_access_to_p4p_and_pvget() {
    let ca_port = free_ca_port();
    let [pva_tcp, pva_udp] = crate::util::free_ports();
    let mut command = beamflow();
    ca_env(&mut command, ca_port)
        .env("EPICS_PVAS_SERVER_PORT", pva_tcp.to_string())
        .env("EPICS_PVAS_BROADCAST_PORT", pva_udp.to_string())
        .arg("run");
    let _pipeline = start_run(command);
    let prefix = "BEAMFLOW:INJ:";
    // Measured once the first image is: the value is valid.
    let pvget = |args: &[&str]| {
        let output = Command::new(epics_tool("pvget"))
            .env("EPICS_PVA_ADDR_LIST", format!("127.0.0.1:{pva_udp}"))
            .env("EPICS_PVA_AUTO_ADDR_LIST", "NO")
            .env("EPICS_PVA_BROADCAST_PORT", pva_udp.to_string())
            .args(["-w", "10"])
            .args(args)
            .output()
            .expect("run pvget");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let sigma = format!("{prefix}OTR2:SIGMA_X");
    let shown = eventually(60, "a measured beam size over PV Access", || {
        let (ok, text) = pvget(&["-v", &sigma]);
        (ok && text.contains("int severity 0")).then_some(text)
    });
    assert!(shown.contains("epics:nt/NTScalar:1.0"), "{shown}");
    assert!(shown.contains("int precision 2"), "{shown}");
    assert!(shown.contains("double limitHigh 1000"), "{shown}");

    let output = Command::new(crate::util::python())
        .arg(root().join("tests/python/pva_results.py"))
        .args([&pva_udp.to_string(), prefix])
        .output()
        .expect("run the p4p reader");
    assert!(
        output.status.success(),
        "p4p reader: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the reader's JSON line");
    let sigma = &found["sigma"];
    assert_eq!(sigma["id"], "epics:nt/NTScalar:1.0", "{found}");
    assert_eq!(sigma["units"], "µm", "{found}");
    assert_eq!(sigma["precision"], 2, "{found}");
    assert_eq!(
        sigma["display"],
        serde_json::json!([0.0, 1000.0]),
        "{found}"
    );
    // The sim's beam at the quad's default: ~403 µm wide, as over Channel Access.
    let value = sigma["value"].as_f64().unwrap();
    assert!((300.0..500.0).contains(&value), "{found}");
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        (now - sigma["timestamp"].as_f64().unwrap()).abs() < 60.0,
        "POSIX time stamps: {found}"
    );
    assert_eq!(found["history"]["id"], "epics:nt/NTScalarArray:1.0");
    assert!(found["history"]["length"].as_u64().unwrap() >= 1, "{found}");
    assert_eq!(found["image"]["id"], "epics:nt/NTNDArray:1.0");
    assert_eq!(
        found["image"]["shape"].as_array().map(Vec::len),
        Some(2),
        "{found}"
    );
    assert_eq!(found["steps"]["id"], "epics:nt/NTTable:1.0");
    assert_eq!(
        found["steps"]["labels"],
        serde_json::json!([
            "bctrl_kg",
            "accepted",
            "size_x_m",
            "error_x_m",
            "size_y_m",
            "error_y_m"
        ])
    );
    let updates: Vec<f64> = found["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert!(
        updates.len() >= 3 && updates.windows(2).all(|w| w[1] > w[0]),
        "monitor updates, each newer: {found}"
    );
    assert!(
        found["refused"].as_str().is_some_and(|why| !why.is_empty()),
        "a put to a result PV is refused: {found}"
    );
}
