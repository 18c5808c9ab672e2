#!/usr/bin/env python3
"""Python payloads, side by side in one run: dranspose 0.2.0's SumWorker/SumReducer (the shared
peer payload, ../shared/peers/dranspose/payload.py, imported from there) under beamflow and
under dranspose, on the same dumps and the same STINS frames.

usage: python3 bench/python_payloads.py [--quick] [--tiny N] [--big N] [--rounds K]
                                         [--e2e-tiny N] [--e2e-big N] [--e2e-rounds K]
                                         [--no-build]

Setup (done here when missing): a venv of the bench's own, bench/out/pyenv, with dranspose 0.2.0,
cbor2<5.8, numpy and maturin, and the beamflow wheel built into it in RELEASE mode
(`maturin develop --release`, CARGO_TARGET_DIR defaulting to ./target). Every beamflow process
below is that wheel's `beamflow` (the whole command line inside the venv's python).

1. Replay, best of K rounds, beamflow and dranspose alternating which goes first:
     beamflow   `beamflow replay --pipeline P --dump F --out state.json` (one thread, one
                interpreter); rate of the whole command (process start included) and of its
                own loop (its "replayed ... in X s" line)
     dranspose  `dranspose replay -w W -r R -f F` (whole command) and the same replay timed
                in-process (bench/dranspose_inproc.py: no interpreter start, no imports)
   with bench/timed_payload.py's TimedWorker/TimedReducer: the real SumWorker.process_event and
   SumReducer.process_result, each call timed with time.perf_counter (two clock reads per call,
   the same in both systems). Rates count every record (images + header + series_end).
2. Distributed, end to end: beamflow's separate processes (controller, a zmq_stins ingester,
   2 `worker`s and the `reducer`, the payload in workers and reducer) against dranspose's
   runtime (../shared/peers/dranspose/run_e2e.sh: redis, controller, reducer, 2 workers,
   ZmqPullSingleIngester, batch 10 events per constraint), both fed by the peers'
   stins_source.py, timed from after POST /api/v1/sequence is answered until /api/v1/progress
   says finished (polled every 50 ms). The source's 0.5 s start delay is inside both times, as
   in run_e2e.sh: it weighs more on the faster side, so use enough frames (--e2e-big 1000).
   beamflow's mapping gives each event its own constraint (as bench/runtime_vs_dranspose.py).
   Rates count image frames.
3. Framework share (tiny frames): from the TIMED line the reducer's finish prints, span = from
   the first process_event call to finish, payload = seconds inside SumWorker.process_event and
   SumReducer.process_result; share = 1 - payload / span, per event (span - payload) / records.
   The same with NoopWorker (returns 0.0 at once): the framework's floor per event.

Both sides must publish the same count and total (checked; a mismatch aborts). Prints the
tables and writes bench/out/python_payloads.json.
"""
import argparse
import json
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = Path(os.environ.get("DRANSPOSE_PEERS") or ROOT.parent / "shared" / "peers" / "dranspose")
OUT = BENCH / "out"
PYENV = OUT / "pyenv"
PY = PYENV / "bin" / "python"
BEAMFLOW = PYENV / "bin" / "beamflow"
DRANSPOSE = PYENV / "bin" / "dranspose"
TOKEN = os.environ.get("BEAMFLOW_TOKEN") or secrets.token_hex(32)
BIG = 4 << 20

REPLAY_PIPELINE = """
[analyses.sum]
kind = "python"
class = "timed_payload:{worker}"
api = "dranspose"
path = "{bench}"

[accumulators.sum]
kind = "python"
class = "timed_payload:TimedReducer"
api = "dranspose"
analysis = "sum"
path = "{bench}"
"""

LIVE_PIPELINE = """
[ingesters.det]
kind = "zmq_stins"
upstream = "tcp://127.0.0.1:{port}"

[analyses.sum]
kind = "python"
class = "payload:SumWorker"
api = "dranspose"
path = "{peers}"

[accumulators.sum]
kind = "python"
class = "payload:SumReducer"
api = "dranspose"
analysis = "sum"
path = "{peers}"

[controller]
control = "tcp://127.0.0.1:0"
http = "127.0.0.1:0"

[reducer]
http = "127.0.0.1:0"
"""


def setup(build: bool) -> None:
    if not PY.exists():
        subprocess.run([sys.executable, "-m", "venv", PYENV], check=True)
    if not DRANSPOSE.exists():
        subprocess.run([PY, "-m", "pip", "install", "-q", "dranspose==0.2.0", "cbor2<5.8", "numpy",
                        "maturin==1.16.0"], check=True)
    if build or not BEAMFLOW.exists():
        env = dict(os.environ, VIRTUAL_ENV=str(PYENV), PATH=f"{PYENV / 'bin'}:{os.environ['PATH']}")
        env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))
        # No debug info: less disk (a shared 2-core box) for the same optimised code.
        env.setdefault("CARGO_PROFILE_RELEASE_DEBUG", "false")
        subprocess.run([PYENV / "bin" / "maturin", "develop", "--release", "--manifest-path",
                        ROOT / "python" / "wheel" / "Cargo.toml"], env=env, check=True)


def run(cmd, env, cwd=None, timeout=3600):
    start = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout + done.stderr


def timed_line(text):
    match = re.search(r"^TIMED (\{.*\})$", text, re.M)
    if not match:
        raise RuntimeError(f"no TIMED line in:\n{text[-3000:]}")
    return json.loads(match.group(1))


def generate(path: Path, n: int, nbytes: int) -> None:
    if not path.exists():
        subprocess.run([PY, PEERS / "gen_dump.py", path, "-n", str(n), "-b", str(nbytes)], check=True)
    with open(path, "rb") as f:  # into the page cache, for both alike
        while f.read(1 << 24):
            pass


def replay_env():
    return dict(os.environ, LOG_LEVEL="WARNING", RUST_LOG="warn", DRANSPOSE_PEERS=str(PEERS),
                PYTHONPATH=os.pathsep.join([str(BENCH), str(PEERS)]))


def beamflow_replay(dump: Path, worker: str):
    pipeline = OUT / f"replay-{worker}.toml"
    pipeline.write_text(REPLAY_PIPELINE.format(worker=worker, bench=BENCH))
    state = OUT / "state.json"
    wall, out = run([BEAMFLOW, "replay", "--pipeline", pipeline, "--dump", dump, "--out", state],
                    replay_env())
    loop = float(re.search(r"replayed \d+ events \([0-9.]+ MB\) in ([0-9.]+) s", out).group(1))
    assert re.search(r" 0 analysis errors, 0 accumulator errors", out), out
    timing = timed_line(out)
    publish = json.loads(state.read_text())["sum"]
    assert (publish["count"], publish["total"]) == (timing["count"], timing["total"]), (publish, timing)
    return {"cmd_s": wall, "loop_s": loop, "timing": timing}


def dranspose_replay(dump: Path, worker: str):
    env = replay_env()
    classes = [f"timed_payload:{worker}", "timed_payload:TimedReducer"]
    wall, out = run([DRANSPOSE, "replay", "-w", classes[0], "-r", classes[1], "-f", dump], env)
    cmd_timing = timed_line(out)
    _, out = run([PY, BENCH / "dranspose_inproc.py", dump, *classes], env)
    inproc = float(re.search(r"in ([0-9.]+) s", out).group(1))
    return {"cmd_s": wall, "inproc_s": inproc, "timing": timed_line(out), "cmd_timing": cmd_timing}


def same_publish(a, b, what):
    if (a["count"], a["total"]) != (b["count"], b["total"]):
        sys.exit(f"{what}: the publishes differ: beamflow {a}, dranspose {b}")


def best(runs, key):
    return min(runs, key=key)


def replay_cases(args, cases):
    rows = {}
    for label, path, n, _ in cases:
        for worker in (["TimedWorker", "NoopWorker"] if n == args.tiny else ["TimedWorker"]):
            bf_runs, dr_runs = [], []
            for r in range(args.rounds):
                order = [("bf", beamflow_replay), ("dr", dranspose_replay)]
                for side, fn in (order if r % 2 == 0 else order[::-1]):
                    (bf_runs if side == "bf" else dr_runs).append(fn(path, worker))
            for x in bf_runs:
                same_publish(x["timing"], dr_runs[0]["timing"], f"replay {label} {worker}")
            records = n + 2
            bf_cmd = best(bf_runs, lambda x: x["cmd_s"])["cmd_s"]
            bf_loop = best(bf_runs, lambda x: x["loop_s"])["loop_s"]
            dr_cmd = best(dr_runs, lambda x: x["cmd_s"])["cmd_s"]
            dr_inproc = best(dr_runs, lambda x: x["inproc_s"])["inproc_s"]

            def share(t):
                payload = t["worker_s"] + t["reducer_s"]
                return {"span_s": t["span_s"], "payload_s": payload,
                        "share": 1 - payload / t["span_s"],
                        "framework_us_per_event": (t["span_s"] - payload) / records * 1e6,
                        "payload_us_per_event": payload / records * 1e6}

            bf_best = best(bf_runs, lambda x: x["timing"]["span_s"])["timing"]
            dr_best = best(dr_runs, lambda x: x["timing"]["span_s"])["timing"]
            rows[f"{label} {worker}"] = {
                "case": label, "worker": worker, "records": records, "rounds": args.rounds,
                "publish": {"count": bf_best["count"], "total": bf_best["total"]},
                "beamflow_cmd_ev_s": records / bf_cmd, "beamflow_loop_ev_s": records / bf_loop,
                "dranspose_cmd_ev_s": records / dr_cmd, "dranspose_inproc_ev_s": records / dr_inproc,
                "beamflow_share": share(bf_best), "dranspose_share": share(dr_best),
                "runs": {"beamflow": bf_runs, "dranspose": dr_runs},
            }
            print(f"  replay {label} {worker}: beamflow {records / bf_cmd:,.0f} ev/s (loop "
                  f"{records / bf_loop:,.0f}), dranspose {records / dr_cmd:,.0f} ev/s (in-process "
                  f"{records / dr_inproc:,.0f})", flush=True)
    return rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


def line_with(process, needle):
    """The first line of `process`'s log containing `needle` (logs go to files: a pipe nobody
    drains would stall a component that logs)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for line in process.log.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if process.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"no {needle!r} in {process.log}:\n{process.log.read_text(errors='replace')}")


def beamflow_e2e(frames, nbytes):
    port = free_port()
    pipeline = OUT / "e2e.toml"
    pipeline.write_text(LIVE_PIPELINE.format(port=port, peers=PEERS))
    env = dict(os.environ, RUST_LOG="warn", LOG_LEVEL="WARNING", BEAMFLOW_TOKEN=TOKEN)
    processes = []

    def spawn(*args):
        log = OUT / f"e2e-{len(processes)}-{args[0]}.log"
        with open(log, "wb") as stderr:
            p = subprocess.Popen([str(BEAMFLOW), *args], stdout=stderr, stderr=stderr, env=env)
        p.log = log
        processes.append(p)
        return p

    try:
        controller = spawn("controller", "--pipeline", str(pipeline))
        line = line_with(controller, "beamflow controller:")
        control = line.split()[3]
        rest = re.search(r"http://([0-9.:]+)/", line).group(1)
        connect = ["--pipeline", str(pipeline), "--controller", control]
        reducer = spawn("reducer", *connect)
        state = re.search(r"http://([0-9.:]+)/", line_with(reducer, "state on")).group(1)
        for name in ("w1", "w2"):
            spawn("worker", "--name", name, *connect)
        spawn("ingester", "--name", "det", *connect)
        deadline = time.time() + 60
        while True:
            config = get(f"http://{rest}/api/v1/config")
            if len(config["workers"]) == 2 and config["ingesters"] and config["reducer"]:
                break
            if time.time() > deadline:
                raise RuntimeError(f"components did not connect: {config}")
            time.sleep(0.05)
        sequence = {"parts": {"main": {"det": [[{"constraint": i}] for i in range(frames)]}},
                    "sequence": ["main"]}
        post(f"http://{rest}/api/v1/sequence", sequence)
        t0 = time.perf_counter()
        source = subprocess.Popen([str(PY), str(PEERS / "stins_source.py"), str(port), str(frames),
                                   str(nbytes)], stdout=subprocess.DEVNULL)
        while not get(f"http://{rest}/api/v1/progress")["finished"]:
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        source.wait(timeout=60)
        deadline = time.time() + 30
        while True:
            status = get(f"http://{state}/api/v1/status")
            if status["finished"] or time.time() > deadline:
                break
            time.sleep(0.05)
        events = get(f"http://{rest}/api/v1/progress")["completed_events"]
        assert events == frames + 2, f"{events} events reduced of {frames + 2}"
        publish = get(f"http://{state}/api/v1/result/sum")
        return {"seconds": seconds, "ev_s": frames / seconds,
                "publish": {"count": publish["count"], "total": publish["total"]}}
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def dranspose_e2e(frames, nbytes):
    logs = OUT / "dranspose-e2e-logs"
    env = dict(os.environ, DRANSPOSE_VENV=str(PYENV), LOG_DIR=str(logs))
    out = subprocess.run(["bash", str(PEERS / "run_e2e.sh"), str(frames), str(nbytes), "2", "10"],
                         cwd=PEERS, env=env, capture_output=True, text=True, timeout=3600)
    match = re.search(r"E2E: (\d+) events in ([0-9.]+)s", out.stdout)
    if not match:
        raise RuntimeError(f"run_e2e.sh printed no rate:\n{out.stdout}\n{out.stderr}")
    n, seconds = int(match.group(1)), float(match.group(2))
    reducer = re.search(r"REDUCER count=(\d+) total=([0-9.e+-]+)",
                        out.stdout + (logs / "reducer.log").read_text(errors="replace"))
    publish = None if reducer is None else {"count": int(reducer.group(1)),
                                            "total": float(reducer.group(2))}
    return {"seconds": seconds, "ev_s": n / seconds, "publish": publish}


def e2e_cases(args):
    rows = {}
    for label, frames, nbytes in [("tiny (8 B)", args.e2e_tiny, 8), ("4 MiB", args.e2e_big, BIG)]:
        bf_runs, dr_runs = [], []
        for r in range(args.e2e_rounds):
            order = [(bf_runs, beamflow_e2e), (dr_runs, dranspose_e2e)]
            for runs, fn in (order if r % 2 == 0 else order[::-1]):
                runs.append(fn(frames, nbytes))
        for bf in bf_runs:
            if bf["publish"]["count"] != frames:
                sys.exit(f"e2e {label}: beamflow published {bf['publish']}, {frames} results expected")
        for dr in dr_runs:
            if dr["publish"] is not None:
                same_publish(bf_runs[0]["publish"], dr["publish"], f"e2e {label}")
        bf = max(x["ev_s"] for x in bf_runs)
        dr = max(x["ev_s"] for x in dr_runs)
        rows[label] = {"case": label, "frames": frames, "rounds": args.e2e_rounds,
                       "beamflow_ev_s": bf, "dranspose_ev_s": dr, "ratio": bf / dr,
                       "publish": bf_runs[0]["publish"],
                       "dranspose_publish_seen": all(x["publish"] for x in dr_runs),
                       "runs": {"beamflow": bf_runs, "dranspose": dr_runs}}
        print(f"  e2e {label} x{frames}: beamflow {bf:,.0f} ev/s, dranspose {dr:,.0f} ev/s", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run: fewer frames and rounds")
    ap.add_argument("--tiny", type=int, default=None, help="tiny frames for replay (20000)")
    ap.add_argument("--big", type=int, default=None, help="4 MiB frames for replay (200)")
    ap.add_argument("--rounds", type=int, default=None, help="replay rounds (3)")
    ap.add_argument("--e2e-tiny", type=int, default=None, help="tiny frames end to end (20000)")
    ap.add_argument("--e2e-big", type=int, default=None, help="4 MiB frames end to end (200)")
    ap.add_argument("--e2e-rounds", type=int, default=None, help="end-to-end rounds (2)")
    ap.add_argument("--skip-e2e", action="store_true", help="replay and framework share only")
    ap.add_argument("--no-build", action="store_true",
                    help="use the wheel already in bench/out/pyenv (no maturin develop)")
    args = ap.parse_args()
    quick = {"tiny": 5_000, "big": 50, "rounds": 1, "e2e_tiny": 5_000, "e2e_big": 50, "e2e_rounds": 1}
    full = {"tiny": 20_000, "big": 200, "rounds": 3, "e2e_tiny": 20_000, "e2e_big": 200, "e2e_rounds": 2}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    OUT.mkdir(parents=True, exist_ok=True)
    setup(build=not args.no_build)

    cases = [(f"tiny (8 B) x{args.tiny}", OUT / f"tiny{args.tiny}.cbors", args.tiny, 8),
             (f"4 MiB x{args.big}", OUT / f"big{args.big}.cbors", args.big, BIG)]
    for _, path, n, nbytes in cases:
        generate(path, n, nbytes)
    load = os.getloadavg()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
    replay = replay_cases(args, cases)
    e2e = {} if args.skip_e2e else e2e_cases(args)
    load_after = os.getloadavg()

    print(f"\nmachine: {os.cpu_count()} cores, load {load[0]:.1f} before, {load_after[0]:.1f} after;"
          f" replay best of {args.rounds}, end to end best of {args.e2e_rounds}\n")
    print("| case | beamflow ev/s | dranspose ev/s | ratio |")
    print("|---|---|---|---|")
    for row in replay.values():
        if row["worker"] != "TimedWorker":
            continue
        print(f"| replay {row['case']}, command | {row['beamflow_cmd_ev_s']:,.0f} | "
              f"{row['dranspose_cmd_ev_s']:,.0f} | {row['beamflow_cmd_ev_s'] / row['dranspose_cmd_ev_s']:.1f}x |")
        print(f"| replay {row['case']}, loop / in-process | {row['beamflow_loop_ev_s']:,.0f} | "
              f"{row['dranspose_inproc_ev_s']:,.0f} | "
              f"{row['beamflow_loop_ev_s'] / row['dranspose_inproc_ev_s']:.1f}x |")
    for row in e2e.values():
        print(f"| end to end {row['case']} x{row['frames']}, 2 workers | {row['beamflow_ev_s']:,.0f} | "
              f"{row['dranspose_ev_s']:,.0f} | {row['ratio']:.1f}x |")
    print()
    for row in replay.values():
        if not row["case"].startswith("tiny"):
            continue
        for side in ("beamflow", "dranspose"):
            s = row[f"{side}_share"]
            print(f"framework share, {side} replay, {row['case']}, {row['worker']}: "
                  f"{s['share'] * 100:.1f} % ({s['framework_us_per_event']:.1f} us/event framework, "
                  f"{s['payload_us_per_event']:.1f} us/event payload)")
    tiny = next(r for r in replay.values() if r["case"].startswith("tiny") and r["worker"] == "TimedWorker")
    share = tiny["beamflow_share"]["share"]
    targets = {"framework share < 10 % (tiny, replay)": [f"{share * 100:.1f} %", share < 0.10]}
    for label, row in e2e.items():
        targets[f"end to end >= 2x dranspose ({label})"] = [f"{row['ratio']:.2f}x", row["ratio"] >= 2]
    for name, (value, met) in targets.items():
        print(f"target {name}: {value}, {'met' if met else 'MISSED'}")
    result = {"machine": {"cores": os.cpu_count(), "load_before": load, "load_after": load_after,
                          "platform": platform.platform()},
              "args": vars(args), "replay": replay, "e2e": e2e, "targets": targets}
    (OUT / "python_payloads.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {OUT / 'python_payloads.json'}")


if __name__ == "__main__":
    main()
