#!/usr/bin/env python3
"""Dashboard benchmark: how fresh a page's updates are and what pages cost the reducer, with
the dashboard's one Server-Sent Events stream per page beside pages that poll the JSON API
instead (what dranspose's status page and most home-made monitors do), in one run.

usage: python3 bench/dashboard.py [--beamflow PATH] [--pages 0,1,4,16] [--seconds 30]
                                  [--poll-period 0.1] [--json FILE]

One `beamflow run` (the embedded simulated injector, OTR2 at 10 Hz, free ports) serves every
case in turn. Per case, N clients run for --seconds:
  sse    N pages, each with one stream at GET /api/v1/events, reading every `state` message and,
         as the page does, fetching the screen's PNG once per new frame;
  poll   N pages, each fetching GET /api/v1/result every --poll-period s (the reducer publishes
         its state every 0.1 s, so polling faster gains nothing).
Per case it reports:
  updates/s   messages (sse) or responses (poll) per page per second; PNG/s, frames fetched;
  latency     from an OTR2 image's acquisition (the newest row of the `beam` history, which
              carries the event's acquisition time) to the message holding it arriving at the
              page, p50 and p99 over every message of every page; the image's time is when the
              simulated IOC made it, so this is the whole way: Channel Access, the ingester, a
              worker, the reducer and the page's stream;
  CPU         the beamflow process's CPU time per second of the case (all its threads: the
              simulated IOC, ingester, workers, reducer and HTTP), and of its HTTP thread alone,
              from /proc; the 0-page case is the pipeline without pages.
Browsers add their own drawing on top; the Chromium test (tests/dashboard.rs) checks a real
page keeps up, this measures the server's side of it.

Stdlib only. Build first: cargo build --release --locked.
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid, tid=None):
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def http_thread(pid):
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == "beamflow-http":
                return tid
    return None


def newest_image_time(panels):
    times = (panels.get("beam") or {}).get("time") or []
    return times[-1] if times else None


class SsePage(threading.Thread):
    def __init__(self, host, port, stop):
        super().__init__(daemon=True)
        self.host, self.port, self.stop = host, port, stop
        self.latencies, self.messages, self.images = [], 0, 0
        self.image_event = None
        self.images_conn = http.client.HTTPConnection(host, port, timeout=10)

    def fetch_image(self, panels):
        """What the page does: the screen's PNG, once per new frame (after the last is drawn)."""
        view = panels.get("otr2_image") or {}
        if view.get("event_number") in (None, self.image_event):
            return
        self.image_event = view["event_number"]
        self.images_conn.request("GET", "/api/v1/image/otr2_image.png?cmap=inferno&scale=robust")
        response = self.images_conn.getresponse()
        response.read()
        self.images += response.status == 200

    def run(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.request("GET", "/api/v1/events", headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        event, data = None, []
        while not self.stop.is_set():
            line = response.fp.readline()
            if not line:
                return
            line = line.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line == "":
                if event == "state" and data:
                    arrived = time.time()
                    panels = json.loads("\n".join(data))["panels"]
                    taken = newest_image_time(panels)
                    self.messages += 1
                    if taken is not None:
                        self.latencies.append(arrived - taken)
                    self.fetch_image(panels)
                event, data = None, []
        conn.close()


class PollPage(threading.Thread):
    def __init__(self, host, port, stop, period):
        super().__init__(daemon=True)
        self.host, self.port, self.stop, self.period = host, port, stop, period
        self.latencies, self.messages = [], 0

    def run(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        while not self.stop.is_set():
            started = time.time()
            conn.request("GET", "/api/v1/result")
            body = json.loads(conn.getresponse().read())
            arrived = time.time()
            self.messages += 1
            taken = newest_image_time(body)
            if taken is not None:
                self.latencies.append(arrived - taken)
            self.stop.wait(max(0.0, self.period - (time.time() - started)))
        conn.close()


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_case(kind, pages, seconds, pid, host, port, period):
    stop = threading.Event()
    clients = [
        SsePage(host, port, stop) if kind == "sse" else PollPage(host, port, stop, period)
        for _ in range(pages)
    ]
    for client in clients:
        client.start()
    # The first second of every page is its start: the snapshot it is sent at once.
    time.sleep(1.0)
    for client in clients:
        client.latencies.clear()
        client.messages = 0
        client.images = 0
    tid = http_thread(pid)
    cpu0, http0, t0 = cpu_seconds(pid), cpu_seconds(pid, tid) if tid else 0.0, time.time()
    time.sleep(seconds)
    cpu1, http1, t1 = cpu_seconds(pid), cpu_seconds(pid, tid) if tid else 0.0, time.time()
    stop.set()
    for client in clients:
        client.join(timeout=15)
    latencies = [x for client in clients for x in client.latencies]
    elapsed = t1 - t0
    return {
        "kind": kind,
        "pages": pages,
        "updates_per_s": sum(c.messages for c in clients) / elapsed / pages if pages else 0.0,
        "images_per_s": sum(getattr(c, "images", 0) for c in clients) / elapsed / pages if pages else 0.0,
        "latency_ms_p50": 1e3 * percentile(latencies, 0.5),
        "latency_ms_p99": 1e3 * percentile(latencies, 0.99),
        "cpu_percent": 100 * (cpu1 - cpu0) / elapsed,
        "http_thread_cpu_percent": 100 * (http1 - http0) / elapsed,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beamflow", default="target/release/beamflow")
    parser.add_argument("--pages", default="0,1,4,16")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--poll-period", type=float, default=0.1)
    parser.add_argument("--json")
    args = parser.parse_args()
    beamflow = os.path.abspath(args.beamflow)
    pages = [int(n) for n in args.pages.split(",")]

    host, http_port, reducer_port, ca_port = "127.0.0.1", free_port(), free_port(), free_port()
    folder = tempfile.mkdtemp(prefix="beamflow-bench-dashboard-")
    env = dict(os.environ, BEAMFLOW_TOKEN="bench-dashboard-token-0123456789",
               EPICS_CAS_SERVER_PORT=str(ca_port))
    log = open(os.path.join(folder, "run.log"), "w")
    process = subprocess.Popen(
        [beamflow, "run", "--http", f"{host}:{http_port}",
         "--reducer-http", f"{host}:{reducer_port}", "--control", "tcp://127.0.0.1:0"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    results = []
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{reducer_port}/api/v1/status", timeout=2) as r:
                    if (json.load(r).get("events") or 0) >= 20:
                        break
            except OSError:
                pass
            if time.time() > deadline or process.poll() is not None:
                sys.exit(f"beamflow did not start: see {log.name}")
            time.sleep(0.2)
        print(f"{'pages':>5} {'kind':>4} {'updates/s':>9} {'PNG/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'CPU %':>6} {'HTTP %':>6}")
        for n in pages:
            for kind in (["sse", "poll"] if n else ["sse"]):
                result = run_case(kind, n, args.seconds, process.pid, host, reducer_port, args.poll_period)
                results.append(result)
                print(f"{n:>5} {kind if n else '-':>4} {result['updates_per_s']:>9.2f} "
                      f"{result['images_per_s']:>6.2f} "
                      f"{result['latency_ms_p50']:>7.0f} {result['latency_ms_p99']:>7.0f} "
                      f"{result['cpu_percent']:>6.1f} {result['http_thread_cpu_percent']:>6.1f}",
                      flush=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": args.seconds, "cases": results}, f, indent=1)


if __name__ == "__main__":
    main()
