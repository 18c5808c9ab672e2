#!/usr/bin/env python3
"""Bluesky benchmark: documents per second through the `bluesky` ingester, a worker and the
reducer's scan view, with a publisher that is not the bottleneck, beside bluesky's own consumer
(`RemoteDispatcher` with a `PeakStats` callback, what a beamline runs for live peak statistics
today), in one run; and the latency from a document's publication to its point in the scan view.

usage: python3 bench/bluesky.py [--beamflow PATH] [--events 50000] [--rate 1000]
                                [--seconds 10] [--json FILE]

One `beamflow run --pipeline examples/bluesky.toml` (its upstream pointed at this script's
publisher, free ports) serves both beamflow cases:
  throughput  one run of --events events (start, descriptor, events, stop: msgpack with
              msgpack-numpy, as the README's serializer line sends them, 3 readings each like
              `scan([det], motor)`), pre-serialized and sent as fast as a 0MQ PUB socket takes
              them (no high-water mark, so nothing is dropped): documents per second from the
              first send to the scan view showing the run stopped with every event; the same
              stream to bluesky's RemoteDispatcher + PeakStats (a separate Python process, as a
              beamline runs it) until its PeakStats has computed at the stop;
  latency     --rate documents per second for --seconds: per event, from its publication to
              the first GET of the scan view that counts it (polled every 5 ms; the reducer
              publishes its views every 0.1 s, so that is the floor), p50 and p99; beside it
              the same for the RemoteDispatcher's callback, which runs on arrival.
A RunEngine makes at most ~300 documents per second (docs/reference: bluesky.md), so the
throughput case is what a backlog or a replay asks of the pipeline.

Needs numpy, pyzmq, msgpack, msgpack-numpy and bluesky (the test venv: .venv/bin/python).
Build first: cargo build --release --locked.
"""
import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import msgpack_numpy
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PEER = r"""
import json, os, sys, time
import msgpack_numpy
from bluesky.callbacks.zmq import RemoteDispatcher
from bluesky.callbacks.fitting import PeakStats

dispatcher = RemoteDispatcher(sys.argv[1], deserializer=msgpack_numpy.unpackb)
stats = PeakStats("motor", "det")
state = {"subscribed": False, "measured": None, "first": None, "latencies": []}

def route(name, doc):
    now = time.time()
    if name == "start":
        if doc["plan_name"] == "probe":
            if not state["subscribed"]:
                state["subscribed"] = True
                print("subscribed", flush=True)
            return
        state["measured"], state["first"] = doc["uid"], now
    if state["measured"] is None:
        return
    stats(name, doc)
    if name == "event":
        state["latencies"].append(now - doc["data"]["sent"])
    elif name == "stop":
        print(json.dumps({"stop": time.time(), "latencies": state["latencies"],
                          "cen": stats.cen, "events": len(state["latencies"])}), flush=True)
        # RemoteDispatcher.stop() from inside its own callback closes a running loop.
        os._exit(0)

dispatcher.subscribe(route)
dispatcher.start()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def documents(n, run, plan):
    """A run of n events as msgpack frames: start, descriptor, events, stop."""
    descriptor = str(uuid.uuid4())
    pack = msgpack_numpy.packb
    start = {"uid": run, "time": time.time(), "scan_id": 1, "plan_name": plan,
             "motors": ["motor"], "num_points": n,
             "hints": {"dimensions": [[["motor"], "primary"]]}}
    desc = {"uid": descriptor, "run_start": run, "time": time.time(), "name": "primary",
            "data_keys": {k: {"dtype": "number", "shape": [], "source": "SIM:" + k}
                          for k in ("det", "motor", "sent")},
            "hints": {"det": {"fields": ["det"]}}}
    frames = [b" start " + pack(start), b" descriptor " + pack(desc)]
    events = []
    for i in range(n):
        motor = -5.0 + 10.0 * i / max(n - 1, 1)
        events.append({"uid": str(uuid.uuid4()), "descriptor": descriptor, "seq_num": i + 1,
                       "time": 0.0, "data": {"det": 2.718281828 ** (-motor * motor / 2),
                                             "motor": motor, "sent": 0.0},
                       "timestamps": {"det": 0.0, "motor": 0.0, "sent": 0.0}, "filled": {}})
    stop = {"uid": str(uuid.uuid4()), "run_start": run, "time": 0.0, "exit_status": "success",
            "num_events": {"primary": n}}
    return frames, events, stop


def send_run(publisher, n, rate=None, run=None, plan="scan"):
    """Publishes a run; returns (run uid, time of the first send, send times of the events)."""
    run = run or str(uuid.uuid4())
    head, events, stop = documents(n, run, plan)
    pack = msgpack_numpy.packb
    if rate is None:
        # Pre-serialized: the publisher is not what is measured.
        bodies = [b" event " + pack(event) for event in events]
        first = time.time()
        for frame in head + bodies:
            publisher.send(frame)
        sent = [first] * n
    else:
        first = time.time()
        for frame in head:
            publisher.send(frame)
        sent = []
        period = 1.0 / rate
        due = time.perf_counter()
        for event in events:
            due += period
            # Sleeping, not spinning: the thread polling the view needs the GIL meanwhile.
            time.sleep(max(0.0, due - time.perf_counter()))
            now = time.time()
            event["data"]["sent"] = now
            event["time"] = now
            publisher.send(b" event " + pack(event))
            sent.append(now)
    publisher.send(b" stop " + pack(stop))
    return run, first, sent


def wait_subscribed(publisher, probe):
    """Sends probe runs of one event until `probe(run)` says one arrived (0MQ's slow joiner)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        run, _, _ = send_run(publisher, 1, plan="probe")
        for _ in range(10):
            if probe(run):
                return
            time.sleep(0.02)
    sys.exit("the subscriber never received a probe run")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def beamflow_cases(args, publisher, port):
    pipeline = open(os.path.join(ROOT, "examples/bluesky.toml")).read().replace(
        "tcp://127.0.0.1:5578", f"tcp://127.0.0.1:{port}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bluesky.toml")
        with open(path, "w") as f:
            f.write(pipeline)
        http, state = free_port(), free_port()
        env = dict(os.environ, BEAMFLOW_TOKEN="bench-token")
        process = subprocess.Popen(
            [args.beamflow, "run", "--pipeline", path, "--http", f"127.0.0.1:{http}",
             "--reducer-http", f"127.0.0.1:{state}", "--control", "tcp://127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    get(state, "/api/v1/result/scans")
                    break
                except OSError:
                    if time.time() > deadline:
                        sys.exit("beamflow did not start")
                    time.sleep(0.1)

            def view(run):
                try:
                    return get(state, f"/api/v1/result/scans/runs/{run}")
                except OSError:
                    return None

            wait_subscribed(publisher, lambda run: (view(run) or {}).get("status") == "success")

            run, first, _ = send_run(publisher, args.events)
            while True:
                try:
                    status = get(state, f"/api/v1/result/scans/runs/{run}/status")
                except OSError:
                    status = None
                if status == "success":
                    done = time.time()
                    break
                time.sleep(0.005)
            v = view(run)
            events = v["streams"]["primary"]["events"]
            throughput = {"documents": args.events + 3, "seconds": done - first,
                          "documents_per_s": (args.events + 3) / (done - first),
                          "events_in_view": events, "missing": v["missing"]}

            n = int(args.rate * args.seconds)
            run = str(uuid.uuid4())
            sending = {}
            sender = threading.Thread(
                target=lambda: sending.update(result=send_run(publisher, n, args.rate, run)))
            sender.start()
            seen = []
            while len(seen) < n:
                # The count alone: the whole run's view is megabytes by the end.
                try:
                    count = get(state, f"/api/v1/result/scans/runs/{run}/streams/primary/events")
                except OSError:
                    count = 0
                now = time.time()
                seen.extend([now] * (count - len(seen)))
                time.sleep(0.005)
            sender.join()
            _, _, sent = sending["result"]
            latencies = [s - t for s, t in zip(seen, sent)]
            latency = {"rate": args.rate, "events": n, "p50_ms": 1e3 * percentile(latencies, 0.5),
                       "p99_ms": 1e3 * percentile(latencies, 0.99)}
            return throughput, latency
        finally:
            process.terminate()
            process.wait(timeout=30)


def peer_cases(args, publisher, port):
    results = {}
    for mode in ("throughput", "latency"):
        peer = subprocess.Popen([sys.executable, "-c", PEER, f"127.0.0.1:{port}"],
                                stdout=subprocess.PIPE, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in peer.stdout],
                         daemon=True).start()
        wait_subscribed(publisher, lambda _run: not lines.empty())
        assert lines.get().strip() == "subscribed"
        if mode == "throughput":
            run, first, _ = send_run(publisher, args.events)
        else:
            run, first, _ = send_run(publisher, int(args.rate * args.seconds), args.rate)
        line = json.loads(lines.get(timeout=600))
        peer.wait(timeout=30)
        if mode == "throughput":
            results[mode] = {"documents": args.events + 3, "seconds": line["stop"] - first,
                             "documents_per_s": (args.events + 3) / (line["stop"] - first),
                             "events_seen": line["events"]}
        else:
            results[mode] = {"rate": args.rate, "events": line["events"],
                             "p50_ms": 1e3 * percentile(line["latencies"], 0.5),
                             "p99_ms": 1e3 * percentile(line["latencies"], 0.99)}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beamflow", default=os.path.join(ROOT, "target/release/beamflow"))
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()

    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.SNDHWM, 0)
    port = publisher.bind_to_random_port("tcp://127.0.0.1")

    throughput, latency = beamflow_cases(args, publisher, port)
    peer = peer_cases(args, publisher, port)
    report = {"beamflow": {"throughput": throughput, "latency": latency}, "bluesky": peer,
              "machine": os.uname().nodename, "cpus": os.cpu_count()}
    print(f"{'':28}{'beamflow':>14}{'RemoteDispatcher':>20}")
    print(f"{'documents/s (' + str(args.events) + ' events)':28}"
          f"{throughput['documents_per_s']:>14,.0f}{peer['throughput']['documents_per_s']:>20,.0f}")
    print(f"{'latency p50 ms @' + str(int(args.rate)) + '/s':28}"
          f"{latency['p50_ms']:>14.1f}{peer['latency']['p50_ms']:>20.1f}")
    print(f"{'latency p99 ms':28}{latency['p99_ms']:>14.1f}{peer['latency']['p99_ms']:>20.1f}")
    print(f"beamflow: {throughput['events_in_view']} events in the view, missing {throughput['missing']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
