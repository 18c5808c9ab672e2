#!/usr/bin/env python3
"""Side-by-side replay benchmark: `beamflow replay` against dranspose 0.2.0's replay, same files.

usage: .venv/bin/python bench/replay_vs_dranspose.py [--tiny N] [--big N] [--repeat K]

Generates the dumps with the shared peer generator (../shared/peers/dranspose/gen_dump.py, the
dranspose 0.2.0 layout): N tiny STINS events (8-byte images) and N 4 MiB images. Each file is
read once to warm the page cache, then for each case it runs, best of K:

  beamflow   `target/release/beamflow replay --pipeline examples/pipeline.toml --dump F
             --threads 2` (frame_stats over every pixel -> history + last); wall time of the
             whole command, process start included
  dranspose  `dranspose replay -w payload:SumWorker -r payload:SumReducer -f F` (parses STINS,
             sums 4 pixels), wall time of the whole command, and its in-process rate from the
             shared bench_replay.py (no interpreter start or import time)

and prints one table with both rates and the ratios. Needs .venv from .ci/run and a release
build (`cargo build --release`).
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
    env = dict(os.environ, LOG_LEVEL="WARNING", RUST_LOG="warn", PYTHONPATH=str(PEERS))
    rows = []
    for name, path, n, nbytes in cases:
        generate(path, n, nbytes)
        warm(path)
        size = path.stat().st_size
        events = n + 2  # header and series_end
        ours = min(timed([BEAMFLOW, "replay", "--pipeline", ROOT / "examples" / "pipeline.toml",
                          "--dump", path, "--threads", "2"], env=env)[0] for _ in range(args.repeat))
        inner = []
        for _ in range(args.repeat):
            _, out = timed([BEAMFLOW, "replay", "--pipeline", ROOT / "examples" / "pipeline.toml",
                            "--dump", path, "--threads", "2"], env=env)
            inner.append(float(re.search(r"([0-9.]+) events/s", out).group(1)))
        theirs = min(timed([VENV / "dranspose", "replay", "-w", "payload:SumWorker", "-r", "payload:SumReducer",
                            "-f", path], cwd=PEERS, env=env)[0] for _ in range(args.repeat))
        in_process = []
        for _ in range(args.repeat):
            _, out = timed([VENV / "python", PEERS / "bench_replay.py", path, "2"], cwd=PEERS, env=env)
            in_process.append(float(re.search(r"= ([0-9.]+) ev/s\s*$", out.strip()).group(1)))
        rows.append((name, events, size, ours, max(inner), theirs, max(in_process)))

    print(f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; best of {args.repeat}; "
          "page cache warm\n")
    head = ("case", "events", "MB", "beamflow ev/s (cmd)", "beamflow MB/s (cmd)", "beamflow ev/s (loop)",
            "dranspose ev/s (cmd)", "dranspose ev/s (in-proc)", "ratio cmd/cmd", "ratio cmd/in-proc")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, events, size, ours, inner, theirs, in_process in rows:
        ours_rate = events / ours
        print(f"| {name} | {events} | {size / 1e6:.0f} | {ours_rate:,.0f} | {size / 1e6 / ours:,.0f} | "
              f"{inner:,.0f} | {events / theirs:,.0f} | {in_process:,.0f} | "
              f"{ours_rate / (events / theirs):,.0f}x | {ours_rate / in_process:,.0f}x |")


if __name__ == "__main__":
    main()
