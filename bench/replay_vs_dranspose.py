#!/usr/bin/env python3
"""Side-by-side replay benchmark: `beamflow replay` against dranspose 0.2.0's replay, same files.

usage: .venv/bin/python bench/replay_vs_dranspose.py [--tiny N] [--big N] [--repeat K]

Generates the dumps with the shared peer generator (../shared/peers/dranspose/gen_dump.py, the
dranspose 0.2.0 layout): N tiny STINS events (8-byte images) and N 4 MiB images. Each file is
read once to warm the page cache, then for each case it runs, best of K:

  beamflow   `target/release/beamflow replay --pipeline examples/pipeline.toml --dump F
             --threads 2` (frame_stats over every pixel -> history + last); wall time of the
             whole command, process start included
  dranspose  `dranspose replay -w W -r R -f F`, wall time of the whole command, and the same
             replay timed in-process (bench/dranspose_inproc.py: no interpreter start or import
             time), with two payloads:
               same work  bench/dranspose_payload.py StatsWorker/HistoryReducer: the statistics
                          beamflow computes (numpy sum, mean, min, max per image), history, last
               trivial    the shared payload.py SumWorker/SumReducer (parses STINS, sums 4
                          pixels), as in reference/dranspose.md section 11

and prints one table with the rates and ratios. Needs .venv from .ci/run and a release build
(`cargo build --release`).
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers" / "dranspose"
OUT = ROOT / "bench" / "out"
VENV = ROOT / ".venv" / "bin"
BEAMFLOW = ROOT / "target" / "release" / "beamflow"


def timed(cmd, cwd=None, env=None):
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{done.stderr}")
    return elapsed, done.stdout + done.stderr


def generate(path: Path, n: int, nbytes: int) -> None:
    if path.exists():
        return
    subprocess.run([VENV / "python", PEERS / "gen_dump.py", path, "-n", str(n), "-b", str(nbytes)], check=True)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not BEAMFLOW.exists():
        sys.exit("build first: cargo build --release")
    OUT.mkdir(parents=True, exist_ok=True)
    cases = [
        (f"tiny x{args.tiny}", OUT / f"tiny{args.tiny}.cbors", args.tiny, 8),
        (f"4 MiB x{args.big}", OUT / f"big{args.big}.cbors", args.big, 4 << 20),
    ]
    env = dict(os.environ, LOG_LEVEL="WARNING", RUST_LOG="warn",
               PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(PEERS)]))
    payloads = {"same work": ("dranspose_payload:StatsWorker", "dranspose_payload:HistoryReducer"),
                "trivial": ("payload:SumWorker", "payload:SumReducer")}
    rows = []
    for name, path, n, nbytes in cases:
        generate(path, n, nbytes)
        warm(path)
        size = path.stat().st_size
        events = n + 2  # header and series_end
        command = [BEAMFLOW, "replay", "--pipeline", ROOT / "examples" / "pipeline.toml", "--dump", path,
                   "--threads", "2"]
        walls, loops = [], []
        for _ in range(args.repeat):
            wall, out = timed(command, env=env)
            walls.append(wall)
            loops.append(float(re.search(r"([0-9.]+) events/s", out).group(1)))
        row = {"case": name, "events": events, "MB": size / 1e6, "beamflow cmd": events / min(walls),
               "beamflow loop": max(loops)}
        for label, (worker, reducer) in payloads.items():
            cmd = min(timed([VENV / "dranspose", "replay", "-w", worker, "-r", reducer, "-f", path],
                            env=env)[0] for _ in range(args.repeat))
            inproc = min(float(re.search(r"in ([0-9.]+) s", timed(
                [VENV / "python", ROOT / "bench" / "dranspose_inproc.py", path, worker, reducer],
                env=env)[1]).group(1)) for _ in range(args.repeat))
            row[f"dranspose {label} cmd"] = events / cmd
            row[f"dranspose {label} in-proc"] = events / inproc
        rows.append(row)

    print(f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; best of {args.repeat}; "
          "files read once before timing\n")
    head = ["case", "beamflow cmd", "beamflow loop", "dranspose same work cmd", "dranspose same work in-proc",
            "dranspose trivial cmd", "dranspose trivial in-proc"]
    print("events/s (MB/s):\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        cells = [row["case"]] + [f"{row[h]:,.0f} ({row[h] * row['MB'] / row['events']:,.0f})" for h in head[1:]]
        print("| " + " | ".join(cells) + " |")
    print("\nratios, beamflow cmd / dranspose:\n")
    head = ["case", "same work cmd", "same work in-proc", "trivial cmd", "trivial in-proc"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        ours = row["beamflow cmd"]
        cells = [row["case"]] + [f"{ours / row['dranspose ' + h]:,.1f}x" for h in head[1:]]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
