#!/usr/bin/env python3
"""End-to-end runtime benchmark: beamflow's distributed pipeline against dranspose 0.2.0's and
against raw ZeroMQ, with the same STINS frames, in one run on this machine.

usage: .venv/bin/python bench/runtime_vs_dranspose.py [--tiny N] [--big N] [--dranspose-tiny N]
                                                        [--dranspose-big N] [--skip-dranspose]
                                                        [--compare BINARY | --curve] [--rounds N]

Cases (defaults as issue #3 asks): (a) N tiny frames (8 bytes), (b) N 4 MiB frames, and
(c) 20,000 tiny frames paced at 10 kHz for latency.

  beamflow   separate processes, as deployed: `beamflow controller`, `reducer`, 2 `worker`s and
             a `zmq_stins` `ingester` (bench/out/bench.toml: frame_stats over every pixel ->
             history + last). A Rust STINS source (bench/stins_source.rs) pushes the frames.
             Time: from after POST /api/v1/sequence (event i -> constraint i) is answered until
             /api/v1/progress says finished (polled every 50 ms), as
             ../shared/peers/dranspose/run_e2e.sh times dranspose. Latency: the
             reducer's /api/v1/status latency_ms (ingester read -> results applied).
  dranspose  ../shared/peers/dranspose/run_e2e.sh (redis-server from Debian, controller,
             reducer, 2 workers, ZmqPullSingleIngester, its Python STINS source, SumWorker:
             parses STINS and sums 4 pixels), batch 10 events per constraint.
  raw zmq    the same messages PUSH -> PULL in one process (stins_source raw), the ceiling.

Needs .venv from .ci/run (dranspose 0.2.0), redis-server, and it builds the release binaries.
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

# The HTTP token the pipelines started here are given, and their writes are sent with.
TOKEN = os.environ.get("BEAMFLOW_TOKEN") or secrets.token_hex(32)

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers" / "dranspose"
OUT = ROOT / "bench" / "out"
BEAMFLOW = ROOT / "target" / "release" / "beamflow"
SOURCE = ROOT / "target" / "release" / "examples" / "stins_source"

PIPELINE = """
[ingesters.det]
kind = "zmq_stins"
upstream = "{upstream}"

[analyses.stats]
kind = "frame_stats"

[accumulators.history]
kind = "history"
analysis = "stats"
values = {{ det_mean = "det/0/mean", det_max = "det/0/max" }}
capacity = 10000

[accumulators.last]
kind = "last"
analysis = "stats"

[controller]
control = "tcp://127.0.0.1:0"
http = "127.0.0.1:0"

[reducer]
http = "127.0.0.1:0"
"""


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
    """The first line of `process`'s log containing `needle`. Logs go to files, not pipes: a
    pipe nobody drains would block a component that logs (and stall the run)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for line in process.log.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if process.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"no {needle!r} in {process.log}")


def beamflow_case(frames, nbytes, rate=0.0, binary=BEAMFLOW, secured=()):
    """One scan through separate beamflow processes, each given `secured` (`--keys DIR`...)
    before its command; returns (events/s, GB/s, latency)."""
    port = free_port()
    pipeline = OUT / "bench.toml"
    pipeline.write_text(PIPELINE.format(upstream=f"tcp://127.0.0.1:{port}"))
    env = dict(os.environ, RUST_LOG="warn", BEAMFLOW_TOKEN=TOKEN)
    processes = []

    def spawn(*args):
        log = OUT / f"{len(processes)}-{args[0]}.log"
        with open(log, "wb") as stderr:
            p = subprocess.Popen([str(binary), *secured, *args], stderr=stderr, env=env)
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
        deadline = time.time() + 30
        while True:
            config = get(f"http://{rest}/api/v1/config")
            if len(config["workers"]) == 2 and config["ingesters"] and config["reducer"]:
                break
            if time.time() > deadline:
                raise RuntimeError(f"components did not connect: {config}")
            time.sleep(0.05)
        sequence = {"parts": {"main": {"det": [[{"constraint": i}] for i in range(frames)]}},
                    "sequence": ["main"]}
        # As run_e2e.sh times dranspose: from after the mapping is accepted to progress saying
        # finished, polled every 50 ms.
        post(f"http://{rest}/api/v1/sequence", sequence)
        t0 = time.perf_counter()
        source = subprocess.Popen([str(SOURCE), "source", f"tcp://127.0.0.1:{port}",
                                   str(frames), str(nbytes), str(rate)],
                                  stdout=subprocess.PIPE)
        while not get(f"http://{rest}/api/v1/progress")["finished"]:
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        source.wait(timeout=60)
        deadline = time.time() + 10
        while True:
            status = get(f"http://{state}/api/v1/status")
            if status["finished"] or time.time() > deadline:
                break
            time.sleep(0.05)
        events = get(f"http://{rest}/api/v1/progress")["completed_events"]
        assert events == frames + 2, f"{events} events reduced of {frames + 2}"
        assert status["incomplete_events"] == 0, status
        return frames / seconds, frames * nbytes / seconds / 1e9, status.get("latency_ms")
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def dranspose_case(frames, nbytes):
    env = dict(os.environ, DRANSPOSE_VENV=str(ROOT / ".venv"), LOG_DIR=str(OUT / "dranspose-logs"))
    out = subprocess.run(["bash", str(PEERS / "run_e2e.sh"), str(frames), str(nbytes), "2", "10"],
                         cwd=PEERS, env=env, capture_output=True, text=True, timeout=1800)
    match = re.search(r"E2E: (\d+) events in ([0-9.]+)s", out.stdout)
    if not match:
        raise RuntimeError(f"run_e2e.sh printed no rate:\n{out.stdout}\n{out.stderr}")
    n, seconds = int(match.group(1)), float(match.group(2))
    return n / seconds, n * nbytes / seconds / 1e9


def raw_case(frames, nbytes, rate=0.0):
    out = subprocess.run([str(SOURCE), "raw", str(frames), str(nbytes), str(rate)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    return result["events_per_second"], result["gb_per_second"], result["latency_ms"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=2_000)
    parser.add_argument("--dranspose-tiny", type=int, default=None,
                        help="frames for dranspose's tiny case (default: --tiny)")
    parser.add_argument("--dranspose-big", type=int, default=None,
                        help="frames for dranspose's 4 MiB case (default: --big)")
    parser.add_argument("--skip-dranspose", action="store_true")
    parser.add_argument("--compare", type=Path, default=None,
                        help="another beamflow binary (an older build): only its beamflow cases "
                             "and this build's, alternating --rounds times, medians shown")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--curve", action="store_true",
                        help="only this build's beamflow cases: plain, CURVE everywhere, and "
                             "CURVE with an authenticated data plane, in turn --rounds times, "
                             "medians shown")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "beamflow",
                    "--example", "stins_source"], cwd=ROOT, check=True)
    big = 4 << 20
    if args.compare:
        return compare(args, big)
    if args.curve:
        return curve(args, big)
    rows = []
    for label, frames, nbytes, dr_frames in [
        ("tiny (8 B)", args.tiny, 8, args.dranspose_tiny or args.tiny),
        ("4 MiB", args.big, big, args.dranspose_big or args.big),
    ]:
        bf = beamflow_case(frames, nbytes)
        raw = raw_case(frames, nbytes)
        dr = None if args.skip_dranspose else dranspose_case(dr_frames, nbytes)
        rows.append((label, frames, bf, raw, dr, dr_frames))
    # This VM's scheduling noise moves a p99 by milliseconds: three runs, the median shown.
    paced = sorted((beamflow_case(20_000, 8, rate=10_000)[2] for _ in range(3)),
                   key=lambda latency: latency["p99"])
    paced_bf = (None, None, paced[1])
    paced_raw = raw_case(20_000, 8, rate=10_000)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print("| case | beamflow ev/s | GB/s | raw ZeroMQ ev/s | GB/s | dranspose ev/s | GB/s "
          "| beamflow / dranspose | beamflow / raw |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, frames, bf, raw, dr, dr_frames in rows:
        dr_text = "- | -" if dr is None else f"{dr[0]:,.0f} ({dr_frames:,} frames) | {dr[1]:.3f}"
        ratio = "-" if dr is None else f"{bf[0] / dr[0]:.1f}x"
        print(f"| {label}, {frames:,} frames | {bf[0]:,.0f} | {bf[1]:.3f} | {raw[0]:,.0f} | "
              f"{raw[1]:.3f} | {dr_text} | {ratio} | {bf[0] / raw[0]:.2f} |")
    three = ", ".join(f"{latency['p99']:.2f}" for latency in paced)
    print(f"\nlatency at 10 kHz, 20,000 tiny frames: beamflow p50 {paced_bf[2]['p50']:.2f} ms, "
          f"p99 {paced_bf[2]['p99']:.2f} ms (ingester read -> reducer applied, last 10,000 events);"
          f" raw ZeroMQ p50 {paced_raw[2]['p50']:.2f} ms, p99 {paced_raw[2]['p99']:.2f} ms;"
          f" beamflow p99 of three runs: {three} ms")
    for label, _, bf, _, _, _ in rows:
        if bf[2]:
            print(f"beamflow latency under full load, {label}: p50 {bf[2]['p50']:.1f} ms, "
                  f"p99 {bf[2]['p99']:.1f} ms")


def compare(args, big):
    """This build against another, alternating, so the box's swings hit both alike."""
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; median of {args.rounds} "
          f"alternating runs; this build {BEAMFLOW}, compared {args.compare}")
    print("| case | this build ev/s | compared ev/s | this / compared |")
    print("|---|---|---|---|")
    for label, frames, nbytes in [("tiny (8 B)", args.tiny, 8), ("4 MiB", args.big, big)]:
        this, other = [], []
        for _ in range(args.rounds):
            other.append(beamflow_case(frames, nbytes, binary=args.compare)[0])
            this.append(beamflow_case(frames, nbytes)[0])
        a, b = sorted(this)[len(this) // 2], sorted(other)[len(other) // 2]
        print(f"| {label}, {frames:,} frames | {a:,.0f} | {b:,.0f} | {a / b:.2f} |")


def curve(args, big):
    """Plain ZeroMQ against CURVE on every socket between components and against CURVE on the
    control plane with an authenticated-only data plane, in turn."""
    keys = OUT / "keys"
    if not (keys / "beamflow.key").exists():
        subprocess.run([str(BEAMFLOW), "keys", "--out", str(keys)], check=True,
                       stdout=subprocess.DEVNULL)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; median of {args.rounds} "
          f"alternating runs of {BEAMFLOW}")
    print("| case | plain ev/s | CURVE everywhere ev/s | ratio | CURVE control, authenticated "
          "data ev/s | ratio |")
    print("|---|---|---|---|---|---|")
    modes = [(), ("--keys", str(keys)),
             ("--keys", str(keys), "--data-plane", "authenticated")]
    median = lambda runs: sorted(runs)[len(runs) // 2]
    for label, frames, nbytes in [("tiny (8 B)", args.tiny, 8), ("4 MiB", args.big, big)]:
        runs = [[] for _ in modes]
        for _ in range(args.rounds):
            for mode, rates in zip(modes, runs):
                rates.append(beamflow_case(frames, nbytes, secured=mode)[0])
        plain, curve_all, authenticated = (median(r) for r in runs)
        print(f"| {label}, {frames:,} frames | {plain:,.0f} | {curve_all:,.0f} | "
              f"{curve_all / plain:.2f} | {authenticated:,.0f} | {authenticated / plain:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
