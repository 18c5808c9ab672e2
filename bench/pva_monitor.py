#!/usr/bin/env python3
"""PV Access monitor throughput, side by side in one run on this machine:

- taking: updates/s of N scalars and MB/s of a 1-Mpixel u16 image that beamflow's client
  (pva/examples/pva_count.rs) takes from a p4p server, against a p4p client on the same server;
- serving: what a p4p client takes from beamflow's server (pva/examples/pva_serve.rs) posting
  the same load, against p4p's own server.

usage: .venv/bin/python bench/pva_monitor.py [--scalars N] [--rate HZ] [--pixels P]
                                             [--image-hz HZ] [--seconds T]

Each server posts every scalar `rate` times a second and the image `image-hz` times a second,
as fast as it can when that is more than it manages; what a client receives of it is its
figure. p4p 4.3.0 (pvxs 1.5.3) is installed by .ci/run.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
EXAMPLES = ROOT / "target" / "release" / "examples"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


def names(scalars):
    return [f"BF:s{i}" for i in range(scalars)]


def serve_p4p(args):
    """A p4p server posting the load; prints its ports, serves until stdin closes."""
    import numpy as np
    from p4p.nt import NTNDArray, NTScalar
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    scalar_nt, image_nt = NTScalar("d"), NTNDArray()
    pvs = {name: SharedPV(nt=scalar_nt, initial=0.0) for name in names(args.scalars)}
    pixels = np.arange(args.pixels, dtype=np.uint16)
    pvs["BF:img"] = SharedPV(nt=image_nt, initial=pixels)
    conf = {
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_SERVER_PORT": str(args.tcp),
        "EPICS_PVAS_BROADCAST_PORT": str(args.udp),
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
    }
    stop = threading.Event()

    def post(period, what):
        n, next_at = 0, time.monotonic()
        while not stop.is_set():
            n += 1
            what(n)
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def scalars(n):
        for name in names(args.scalars):
            pvs[name].post(float(n))

    def image(n):
        pvs["BF:img"].post(pixels + np.uint16(n % 60000))

    with Server(providers=[pvs], conf=conf, useenv=False):
        for period, what in [(1.0 / args.rate, scalars), (1.0 / args.image_hz, image)]:
            threading.Thread(target=post, args=(period, what), daemon=True).start()
        print(json.dumps({"tcp": args.tcp, "udp": args.udp}), flush=True)
        sys.stdin.read()
        stop.set()


def count_p4p(args):
    """A p4p client counting updates of the names for `seconds` once all are connected."""
    import numpy as np
    from p4p.client.thread import Context

    conf = {
        "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{args.udp}",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_BROADCAST_PORT": str(args.udp),
    }
    ctx = Context("pva", conf=conf, useenv=False)
    counts = {"updates": 0, "bytes": 0}
    seen = set()
    lock = threading.Lock()

    def update(name):
        def callback(value):
            with lock:
                seen.add(name)
                counts["updates"] += 1
                counts["bytes"] += np.asarray(value).nbytes

        return callback

    subscriptions = [ctx.monitor(name, update(name)) for name in args.names]
    deadline = time.monotonic() + 60
    while len(seen) < len(args.names) and time.monotonic() < deadline:
        time.sleep(0.01)
    with lock:
        before = dict(counts)
    start = time.perf_counter()
    time.sleep(args.seconds)
    with lock:
        after = dict(counts)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "updates": after["updates"] - before["updates"],
        "bytes": after["bytes"] - before["bytes"],
        "seconds": seconds,
        "connected": len(seen),
    }), flush=True)
    # Closing a context whose callbacks are far behind can take minutes: the figure is out.
    os._exit(0)


def start_server(kind, args):
    tcp, udp = free_port(), free_port()
    if kind == "p4p":
        command = [str(PYTHON), __file__, "--role", "serve", "--tcp", str(tcp), "--udp", str(udp)]
        command += [f"--scalars={args.scalars}", f"--rate={args.rate}",
                    f"--pixels={args.pixels}", f"--image-hz={args.image_hz}"]
        env = os.environ
    else:
        command = [str(EXAMPLES / "pva_serve"), str(args.scalars), str(args.rate),
                   str(args.pixels), str(args.image_hz)]
        env = dict(os.environ, EPICS_PVAS_SERVER_PORT=str(tcp), EPICS_PVAS_BROADCAST_PORT=str(udp))
    server = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    ports = json.loads(server.stdout.readline())
    return server, ports["udp"]


def count(kind, udp, pvs, seconds):
    if kind == "p4p":
        command = [str(PYTHON), __file__, "--role", "count", "--udp", str(udp),
                   f"--seconds={seconds}", *pvs]
        env = os.environ
    else:
        command = [str(EXAMPLES / "pva_count"), str(seconds), *pvs]
        env = dict(os.environ, EPICS_PVA_ADDR_LIST=f"127.0.0.1:{udp}",
                   EPICS_PVA_AUTO_ADDR_LIST="NO", EPICS_PVA_BROADCAST_PORT=str(udp))
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True,
                            timeout=seconds + 120)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["bench", "serve", "count"], default="bench")
    parser.add_argument("--scalars", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--pixels", type=int, default=1 << 20)
    parser.add_argument("--image-hz", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tcp", type=int, default=0)
    parser.add_argument("--udp", type=int, default=0)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    if args.role == "serve":
        return serve_p4p(args)
    if args.role == "count":
        return count_p4p(args)
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "beamflow-pva",
                    "--example", "pva_count", "--example", "pva_serve"], cwd=ROOT, check=True)
    rows = []
    for server_kind in ["p4p", "beamflow"]:
        server, udp = start_server(server_kind, args)
        try:
            clients = ["beamflow", "p4p"] if server_kind == "p4p" else ["p4p"]
            for client in clients:
                scalars = count(client, udp, names(args.scalars), args.seconds)
                image = count(client, udp, ["BF:img"], args.seconds)
                rows.append((server_kind, client,
                             scalars["updates"] / scalars["seconds"],
                             image["updates"] / image["seconds"],
                             image["bytes"] / image["seconds"] / 1e6))
        finally:
            server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    asked = args.scalars * args.rate
    print(f"{args.scalars} scalars at {args.rate:g} Hz ({asked:,.0f} updates/s asked), "
          f"a {args.pixels:,}-pixel u16 image at {args.image_hz:g} Hz "
          f"({args.pixels * 2 * args.image_hz / 1e6:,.0f} MB/s asked); {args.seconds:g} s each, "
          f"{os.cpu_count()} cores")
    print("| server | client | scalar updates/s | images/s | image MB/s |")
    print("|---|---|---|---|---|")
    for server_kind, client, updates, images, megabytes in rows:
        print(f"| {server_kind} | {client} | {updates:,.0f} | {images:,.1f} | {megabytes:,.1f} |")


if __name__ == "__main__":
    sys.exit(main())
