#!/usr/bin/env python3
"""EPICS ingest rate: updates per second the `epics_ca` source takes in without loss, and the CPU
it uses per update, from EPICS 7's softIoc and from beamflow's own simulated injector.

usage: .venv/bin/python bench/ca_ingest.py [--seconds T]

Four cases, each T seconds (default 10) after every PV delivered once, on this machine with the
server, the source (ingesters/examples/ca_ingest.rs, release) and any writer sharing its cores:

- softIoc scalars: 200 `calc` records counting every .1 s (2,000 updates/s asked).
- softIoc images: a 640x480 USHORT waveform (served as 32-bit LONG) and its ArrayCounter_RBV,
  written at 100 Hz by a caproto client (tests/python/ca_images.py).
- sim-ioc scalars: `beamflow sim-ioc --input-rate 100`: 14 moving inputs at 100 Hz (1,400/s).
- sim-ioc images: `beamflow sim-ioc --image-rate 100`: OTR2 640x480 (16-bit SHORT) at 100 Hz.

"missed" is what the camera's ArrayCounter_RBV counted that no monitor delivered.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loopback_ca import ca_env, free_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
RELEASE = ROOT / "target" / "release"


def start(args, env, stdout=subprocess.DEVNULL):
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.DEVNULL, start_new_session=True, text=True)


def stop(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def image_pvs(prefix):
    return (f'[pvs.image]\npv = "{prefix}:Image:ArrayData"\ndtype = "uint16"\n'
            f'width_pv = "{prefix}:Image:ArraySize0_RBV"\n'
            f'height_pv = "{prefix}:Image:ArraySize1_RBV"\n'
            f'counter_pv = "{prefix}:Image:ArrayCounter_RBV"\n')


def ingest(port, pvs, clock, seconds, directory):
    config = Path(directory) / "source.toml"
    config.write_text(f'addr_list = "127.0.0.1:{port}"\nclock = {clock}\n{pvs}')
    out = subprocess.run([str(RELEASE / "examples" / "ca_ingest"), str(config), str(seconds)],
                         env=ca_env(port), capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def summary(name, asked, report):
    updates = sum(p["updates"] for p in report["after"]["pvs"].values()) - sum(
        p["updates"] for p in report["before"]["pvs"].values())
    missed = sum(p["dropped_images"] for p in report["after"]["pvs"].values()) - sum(
        p["dropped_images"] for p in report["before"]["pvs"].values())
    queue = report["after"]["updates_dropped_full_queue"]
    rate = updates / report["seconds"]
    cpu = report["cpu_seconds"]
    return (f"| {name} | {asked:,.0f} | {rate:,.0f} | {missed} | {queue} | "
            f"{100 * cpu / report['seconds']:.1f} % | {1e6 * cpu / max(updates, 1):.1f} µs |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "beamflow"],
                   cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "beamflow-ingesters",
                    "--example", "ca_ingest"], cwd=ROOT, check=True)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        # softIoc scalars.
        port = free_port()
        db = Path(directory) / "scalars.db"
        names = [f"BF:c{i}" for i in range(200)]
        db.write_text("".join(
            f'record(calc, "{n}") {{ field(SCAN, ".1 second") field(CALC, "A+1") '
            f'field(INPA, "{n} NPP") }}\n' for n in names))
        ioc = start([str(VENV / "softIoc"), "-S", "-d", str(db)], ca_env(port))
        try:
            pvs = "".join(f'[pvs.c{i}]\npv = "{n}"\n' for i, n in enumerate(names))
            report = ingest(port, pvs, '{ kind = "period", rate_hz = 10 }', args.seconds,
                            directory)
            rows.append(summary("softIoc: 200 scalars × 10 Hz", 2000, report))
        finally:
            stop(ioc)

        # softIoc images written at 100 Hz.
        port = free_port()
        db = Path(directory) / "camera.db"
        db.write_text(
            'record(waveform, "SI:Image:ArrayData") { field(FTVL, "USHORT") field(NELM, "307200") }\n'
            'record(longin, "SI:Image:ArraySize0_RBV") { field(VAL, "640") field(PINI, "YES") }\n'
            'record(longin, "SI:Image:ArraySize1_RBV") { field(VAL, "480") field(PINI, "YES") }\n'
            'record(longout, "SI:Image:ArrayCounter_RBV") {}\n'
            'record(waveform, "SI:WAVE") { field(FTVL, "DOUBLE") field(NELM, "100") }\n'
            'record(ao, "SI:SCALAR") {}\n')
        ioc = start([str(VENV / "softIoc"), "-S", "-d", str(db)], ca_env(port))
        writer = start([str(VENV / "python"), str(ROOT / "tests/python/ca_images.py"), "put",
                        "SI", str(int((args.seconds + 40) * 100)), "100"], ca_env(port),
                       stdout=subprocess.PIPE)
        try:
            # The measurement starts once the writer writes (its client takes seconds to start).
            if writer.stdout.readline().strip() != "ready":
                raise RuntimeError("the image writer did not start")
            report = ingest(port, image_pvs("SI"), '{ kind = "trigger", stream = "image" }',
                            args.seconds, directory)
            frames = report["frames"].get("image", 0) / report["seconds"]
            rows.append(summary(f"softIoc: 640×480 LONG image (writer reached {frames:.0f} Hz)",
                                100, report))
        finally:
            stop(writer)
            stop(ioc)

        # beamflow's simulated injector.
        for name, flags, pvs, clock, asked in [
            ("sim-ioc: 14 scalars × 100 Hz", ["--input-rate", "100", "--image-rate", "1"],
             "".join(f'[pvs.s{i}]\npv = "{pv}"\n' for i, pv in enumerate([
                 "SOLN:IN20:121:BCTRL", "QUAD:IN20:121:BCTRL", "QUAD:IN20:122:BCTRL",
                 "ACCL:IN20:300:L0A_PDES", "ACCL:IN20:400:L0B_PDES", "QUAD:IN20:361:BCTRL",
                 "QUAD:IN20:371:BCTRL", "QUAD:IN20:425:BCTRL", "QUAD:IN20:441:BCTRL",
                 "QUAD:IN20:511:BCTRL", "QUAD:IN20:631:BCTRL", "QUAD:IN20:651:BCTRL",
                 "XCOR:IN20:641:BCTRL", "YCOR:IN20:642:BCTRL"])),
             '{ kind = "period", rate_hz = 10 }', 1400),
            ("sim-ioc: 640×480 SHORT image", ["--input-rate", "1", "--image-rate", "100"],
             image_pvs("OTRS:IN20:571"), '{ kind = "trigger", stream = "image" }', 100),
        ]:
            port = free_port()
            sim = start([str(RELEASE / "beamflow"), "sim-ioc", "--address",
                         f"127.0.0.1:{port}", *flags], ca_env(port))
            try:
                report = ingest(port, pvs, clock, args.seconds, directory)
                rows.append(summary(name, asked, report))
            finally:
                stop(sim)
    print(f"{args.seconds:.0f} s per case, {os.cpu_count()} cores, server and client on the same "
          f"machine")
    print("| case | asked/s | received/s | missed images | queue drops | source CPU | CPU per update |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
