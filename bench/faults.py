#!/usr/bin/env python3
"""Recovery benchmark: one fault injected in the middle of a scan, per fault a fresh pipeline of
separate beamflow processes on loopback; the figures of README's "Faults" table.

usage: python3 bench/faults.py [--beamflow PATH] [--events N] [--rate HZ] [--at FRACTION]
                               [--faults NAME,NAME,...] [--json FILE] [--keep]

Each case starts a controller, a reducer, three workers (w1, w2, w3) and a simulated detector
ingester `det` (examples/sim.toml's: 64x64 images at --rate Hz), each `beamflow` process in its
own process group. The pipeline file names fixed free ports (bound to port 0, read, closed) for
the controller's control socket and REST API and for the reducer's HTTP, so a restarted component
binds the same ones, and a state folder (`state = "<dir>"`, for the reducer's checkpoint and the
controller's record of the running scan). It posts a wrapped scan of N events (event i ->
constraint i; N + 2 events with the start and end events), injects the fault once
`completed_events` passes --at of N, and waits until the scan finishes or makes no progress for
--give-up seconds.

Per fault it reports:
  finished      the controller says the scan of N + 2 events finished, and the reducer too;
  exactly once  GET <reducer>/api/v1/result/history/event_number holds 1..N, each once; after an
                ingester restart, events whose frames were truly lost may instead be named in the
                reducer's /api/v1/status `incomplete` runs (never both);
  recovery      the longest period with no increase of `completed_events` (GET
                <controller>/api/v1/progress every 0.1 s; unanswered polls are no sample) among
                those that end after the fault began (or are still open when the case ends),
                minus the stop for the reducer, ingester and controller SIGSTOP faults (the scan
                cannot move while they are stopped); a stopped worker is not subtracted (the
                others go on without it). The raw longest stall is shown beside it.

Faults (--faults, default all, in this order):
  baseline            no fault: the stall a clean scan has anyway
  worker_kill         kill -9 worker w2 (not restarted)
  worker_stop         SIGSTOP w2 for 5 s, then SIGCONT
  reducer_restart     kill -9 the reducer, the same command again after 0.5 s
  controller_restart  kill -9 the controller, the same command again after 0.5 s
  ingester_restart    kill -9 the ingester, the same command again after 0.5 s
  reducer_stop        SIGSTOP the reducer for 3 s
  ingester_stop       SIGSTOP the ingester for 3 s
  controller_stop     SIGSTOP the controller for 3 s
  slow_ingester       a second sim ingester `slow` at 0.6 x --rate over the same events: it falls
                      past the workers' 2 s event timeout behind `det` (no injection: the whole
                      scan is measured)

Stdlib only. Every wait is bounded; every process is killed at the end, also on Ctrl-C.
Build the binary first: cargo build --release --locked.
"""
import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# The HTTP token the pipelines started here are given, and their writes are sent with.
TOKEN = os.environ.get("BEAMFLOW_TOKEN") or secrets.token_hex(32)

ROOT = Path(__file__).resolve().parent.parent
BEAMFLOW = ROOT / "target" / "release" / "beamflow"
WORKERS = ("w1", "w2", "w3")
POLL_S = 0.1
REQUEST_S = 2.0
RESTART_AFTER_S = 0.5
CONNECT_S = 60.0

FAULTS = {
    # name: (what is done, component, action, seconds stopped, stop subtracted from the stall)
    "baseline": ("no fault", None, None, 0.0, False),
    "worker_kill": ("worker `kill -9`", "worker w2", "kill", 0.0, False),
    "worker_stop": ("worker `SIGSTOP` 5 s", "worker w2", "stop", 5.0, False),
    "reducer_restart": ("reducer `kill -9` + restart after 0.5 s", "reducer", "restart", 0.0, False),
    "controller_restart": ("controller `kill -9` + restart after 0.5 s", "controller", "restart",
                           0.0, False),
    "ingester_restart": ("ingester `kill -9` + restart after 0.5 s", "ingester det", "restart",
                         0.0, False),
    "reducer_stop": ("reducer `SIGSTOP` 3 s", "reducer", "stop", 3.0, True),
    "ingester_stop": ("ingester `SIGSTOP` 3 s", "ingester det", "stop", 3.0, True),
    "controller_stop": ("controller `SIGSTOP` 3 s", "controller", "stop", 3.0, True),
    "slow_ingester": ("a second ingester falling > 2 s behind", None, None, 0.0, False),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(address, path, timeout=REQUEST_S):
    """The JSON at http://address/path, or None when it does not answer in time."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as r:
            return json.load(r)
    except (OSError, ValueError, urllib.error.URLError):
        return None


def post(address, path, body, timeout=30.0):
    request = urllib.request.Request(f"http://{address}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.load(r)


def wait_for(what, seconds, probe, every=0.05):
    """Polls `probe` until it answers something true; raises after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)


class Cluster:
    """The processes of one case, and the pipeline file they share."""

    def __init__(self, beamflow, folder, ingesters, events):
        self.beamflow = str(beamflow)
        self.folder = folder
        self.ingesters = [name for name, _ in ingesters]
        self.control = f"tcp://127.0.0.1:{free_port()}"
        self.rest = f"127.0.0.1:{free_port()}"
        self.reducer = f"127.0.0.1:{free_port()}"
        self.processes = {}
        self.restarts = {}
        state = folder / "state"
        state.mkdir()
        text = f'state = "{state}"\n\n'
        for name, table in ingesters:
            text += f"[ingesters.{name}]\n{table}\n\n"
        columns = ", ".join(f'{name}_max = "{name}/0/max"' for name in self.ingesters)
        text += f"""[analyses.stats]
kind = "frame_stats"

[accumulators.history]
kind = "history"
analysis = "stats"
values = {{ {columns} }}
capacity = {max(events + 1000, 10000)}

[controller]
control = "{self.control}"
http = "{self.rest}"

[workers]
count = {len(WORKERS)}

[reducer]
http = "{self.reducer}"
"""
        self.pipeline = folder / "pipeline.toml"
        self.pipeline.write_text(text)

    def command(self, key):
        connect = ["--pipeline", str(self.pipeline), "--controller", self.control]
        if key == "controller":
            return [self.beamflow, "controller", "--pipeline", str(self.pipeline)]
        if key == "reducer":
            return [self.beamflow, "reducer", *connect]
        role, name = key.split()
        return [self.beamflow, role, "--name", name, *connect]

    def spawn(self, key):
        run = self.restarts.get(key, 0)
        self.restarts[key] = run + 1
        log = self.folder / f"{key.replace(' ', '-')}.{run}.log"
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1", BEAMFLOW_TOKEN=TOKEN)
        with open(log, "wb") as out:
            # A process group of its own: signals reach it alone, and cleanup reaches all of it.
            self.processes[key] = subprocess.Popen(
                self.command(key), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True)

    def start(self):
        self.spawn("controller")
        self.spawn("reducer")
        for worker in WORKERS:
            self.spawn(f"worker {worker}")
        for ingester in self.ingesters:
            self.spawn(f"ingester {ingester}")
        self.wait_until_connected()

    def wait_until_connected(self):
        def connected():
            config = get(self.rest, "/api/v1/config")
            return config is not None and len(config.get("workers") or []) == len(WORKERS) \
                and len(config.get("ingesters") or []) == len(self.ingesters) \
                and config.get("reducer") is not None
        wait_for("every process to connect", CONNECT_S, connected)

    def signal(self, key, sig):
        process = self.processes[key]
        if process.poll() is None:
            os.killpg(process.pid, sig)

    def kill(self, key):
        self.signal(key, signal.SIGKILL)
        self.processes[key].wait(timeout=10)

    def restart(self, key):
        self.kill(key)
        time.sleep(RESTART_AFTER_S)
        self.spawn(key)

    def stop_for(self, key, seconds):
        self.signal(key, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            self.signal(key, signal.SIGCONT)

    def logged(self, needle):
        """Lines of every log containing `needle`, with the log's name."""
        found = []
        for log in sorted(self.folder.glob("*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if needle in line:
                    found.append(f"{log.name}: {line}")
        return found

    def close(self):
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGCONT)
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class Progress(threading.Thread):
    """Polls the controller's progress every 0.1 s: (time, completed_events, finished, total)."""

    def __init__(self, rest):
        super().__init__(daemon=True)
        self.rest = rest
        self.samples = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            asked = time.monotonic()
            progress = get(self.rest, "/api/v1/progress", timeout=1.0)
            if progress is not None:
                self.samples.append((time.monotonic(), progress.get("completed_events", 0),
                                     progress.get("finished", False),
                                     progress.get("total_events", 0)))
            self.halt.wait(max(0.0, POLL_S - (time.monotonic() - asked)))

    def last(self):
        return self.samples[-1] if self.samples else (time.monotonic(), 0, False, 0)

    def last_increase(self):
        """When `completed_events` last went up (or the first sample)."""
        samples = list(self.samples)
        for before, after in zip(reversed(samples[:-1]), reversed(samples)):
            if after[1] > before[1]:
                return after[0]
        return samples[0][0] if samples else time.monotonic()

    def longest_stall(self, since, until):
        """The longest period between increases of `completed_events` that ends after `since`
        (a period still open at `until` counts up to `until`)."""
        samples = [s for s in self.samples if s[0] <= until]
        increases = [after[0] for before, after in zip(samples, samples[1:]) if after[1] > before[1]]
        marks = ([samples[0][0]] if samples else []) + increases + [until]
        longest = 0.0
        for start, end in zip(marks, marks[1:]):
            if end > since:
                longest = max(longest, end - start)
        return longest


def scan_of(events, streams):
    slots = [[{"constraint": i}] for i in range(events)]
    return {"parts": {"main": {stream: slots for stream in streams}}, "sequence": ["main"]}


def check_history(history, lost, events):
    """Counts of the exactly-once check: events missing, doubled, foreign, and lost events also
    reduced."""
    seen = {}
    for event in history:
        seen[event] = seen.get(event, 0) + 1
    for event in lost:
        seen[event] = seen.get(event, 0) + 1
    wanted = range(1, events + 1)
    return {
        "missing": sum(1 for e in wanted if e not in seen),
        "doubled": sum(1 for n in seen.values() if n > 1),
        "foreign": sum(1 for e in seen if not 1 <= e <= events),
        "lost_and_reduced": len(set(lost) & set(history)),
    }


def run_case(name, args, folder):
    what, target, action, stopped, subtract = FAULTS[name]
    sim = f'kind = "sim"\nshape = [64, 64]\nrate_hz = {args.rate:g}'
    ingesters = [("det", sim)]
    if name == "slow_ingester":
        ingesters.append(("slow", f'kind = "sim"\nshape = [16, 16]\nrate_hz = {args.rate * 0.6:g}'))
    streams = [stream for stream, _ in ingesters]
    cluster = Cluster(args.beamflow, folder, ingesters, args.events)
    result = {"fault": name, "what": what, "events": args.events, "finished": False,
              "exactly_once": False, "stall_s": None, "recovery_s": None,
              "stop_subtracted_s": stopped if subtract else 0.0}
    if args.keep:
        result["logs"] = str(folder)
    progress = None
    try:
        cluster.start()
        post(cluster.rest, "/api/v1/sequence", scan_of(args.events, streams))
        scan = (get(cluster.rest, "/api/v1/status") or {}).get("scan")
        progress = Progress(cluster.rest)
        progress.start()
        posted = time.monotonic()
        total = args.events + 2
        budget = args.events / args.rate * (2.0 if name == "slow_ingester" else 1.0) + 60.0
        fault_at = posted
        if action is not None:
            at = int(args.events * args.at)
            wait_for(f"{at} events completed", budget, lambda: progress.last()[1] >= at)
            fault_at = time.monotonic()
            if action == "kill":
                cluster.kill(target)
            elif action == "restart":
                cluster.restart(target)
            elif action == "stop":
                cluster.stop_for(target, stopped)
        result["fault_at_event"] = progress.last()[1]

        def finished():
            t, completed, done, of = progress.last()
            if done and of == total:
                return "finished"
            if time.monotonic() - max(progress.last_increase(), fault_at + stopped + 5.0) \
                    > args.give_up:
                return "stuck"
            return None
        try:
            outcome = wait_for("the scan to finish", budget + args.give_up, finished, every=0.1)
        except TimeoutError:
            outcome = "timed out"
        ended = time.monotonic()
        progress.halt.set()
        progress.join(timeout=5)
        last = progress.last()
        result["completed_events"] = last[1]
        result["total_events"] = last[3]
        result["progress_finished"] = last[2]
        result["seconds"] = round(ended - posted, 2)
        stall = progress.longest_stall(fault_at, ended)
        result["stall_s"] = round(stall, 2)
        if outcome == "finished":
            reducer = wait_for(
                "the reducer's final state", 30,
                lambda: (lambda s: s if s and s.get("finished") and s.get("scan") == scan
                         else None)(get(cluster.reducer, "/api/v1/status")))
            result["finished"] = True
            result["recovery_s"] = round(max(0.0, stall - (stopped if subtract else 0.0)), 2)
        else:
            reducer = get(cluster.reducer, "/api/v1/status") or {}
            result["stuck"] = outcome
        history = get(cluster.reducer, "/api/v1/result/history/event_number", timeout=10) or []
        lost = []
        if name == "ingester_restart":
            # Frames the killed ingester had read and not forwarded: named, not reduced.
            # The status names them as runs: {first, last, missing}.
            lost = [event for run in reducer.get("incomplete") or []
                    for event in range(run.get("first", 0), run.get("last", -1) + 1)
                    if 1 <= event <= args.events]
        check = check_history(history, lost, args.events)
        result.update(check)
        result["history_rows"] = len(history)
        result["named_lost"] = len(lost)
        result["exactly_once"] = result["finished"] and not any(check.values())
        counts = reducer.get("counts") or {}
        result["reducer"] = {key: reducer.get(key, counts.get(key)) for key in (
            "events", "incomplete_events", "duplicates", "restored_events", "lost_events")}
        if name == "slow_ingester" and outcome == "finished":
            # The slow ingester must read to its last frame, counting those it brought too late.
            def slow_read():
                counts = ((get(cluster.rest, "/api/v1/status") or {}).get("ingesters") or {}) \
                    .get("slow", {}).get("counts") or {}
                read = counts.get("frames", 0) + counts.get("late_frames", 0)
                return read if read >= total else None
            try:
                result["slow_read"] = wait_for("the slow ingester's last frame", 30, slow_read,
                                               every=0.2)
            except TimeoutError:
                result["slow_read"] = None
        status = get(cluster.rest, "/api/v1/status") or {}
        result["controller_counts"] = status.get("counts")
        result["ingesters"] = {name: (entry or {}).get("counts")
                               for name, entry in (status.get("ingesters") or {}).items()}
        result["declared_dead"] = len(cluster.logged("declared dead"))
    except Exception as error:  # noqa: BLE001 - one broken case must not hide the others
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        if progress is not None:
            progress.halt.set()
        cluster.close()
    return result


def happened(result):
    """The "what happens" cell: the facts the case measured."""
    if "error" in result:
        return f"case failed: {result['error']}"
    parts = []
    if result["finished"]:
        parts.append(f"finished in {result['seconds']:.1f} s")
    else:
        parts.append(f"{result.get('stuck', 'not finished')} at "
                     f"{result.get('completed_events')}/{result.get('total_events')} "
                     f"(fault at {result.get('fault_at_event')})")
        if result.get("progress_finished"):
            # What a client polling progress would have read: a truncated result as final.
            parts.append(f"progress says finished with {result.get('total_events')} events")
    parts.append(f"history {result['history_rows']} rows: {result['missing']} missing, "
                 f"{result['doubled']} doubled")
    if result["named_lost"]:
        parts.append(f"{result['named_lost']} events named lost")
    reducer = result.get("reducer") or {}
    for key, label in (("restored_events", "restored from checkpoint"),
                       ("lost_events", "lost by the reducer"),
                       ("duplicates", "duplicates dropped"),
                       ("incomplete_events", "incomplete")):
        if reducer.get(key):
            parts.append(f"{reducer[key]} {label}")
    late = sum((counts or {}).get("late_frames", 0) for counts in result["ingesters"].values())
    if late:
        parts.append(f"{late} late frames")
    if "slow_read" in result:
        parts.append("the slow ingester read to its last frame" if result["slow_read"]
                     else "the slow ingester did not read to its last frame in 30 s")
    if result["declared_dead"]:
        parts.append(f"{result['declared_dead']} declared dead")
    return "; ".join(parts)


def table(results):
    lines = ["| fault | finished | exactly once | what happens | longest stall | recovery time |",
             "|---|---|---|---|---|---|"]
    for r in results:
        stall = "-" if r["stall_s"] is None else f"{r['stall_s']:.1f} s"
        if r["recovery_s"] is None:
            recovery = "never" if "error" not in r else "-"
        elif r["stop_subtracted_s"]:
            recovery = f"{r['recovery_s']:.1f} s (stall − {r['stop_subtracted_s']:g} s stop)"
        else:
            recovery = f"{r['recovery_s']:.1f} s"
        lines.append(f"| {r['what']} | {'yes' if r['finished'] else 'no'} | "
                     f"{'yes' if r['exactly_once'] else 'no'} | {happened(r)} | {stall} | "
                     f"{recovery} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beamflow", type=Path, default=BEAMFLOW,
                        help="the binary (default: target/release/beamflow)")
    parser.add_argument("--events", type=int, default=3000, help="events of each scan")
    parser.add_argument("--rate", type=float, default=100.0, help="the detector's frames/s")
    parser.add_argument("--at", type=float, default=0.25,
                        help="inject the fault once this fraction of the events completed")
    parser.add_argument("--give-up", type=float, default=30.0,
                        help="a scan with no progress for this long (after the fault) is stuck")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help="comma-separated, of: " + ", ".join(FAULTS))
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the logs and state folders")
    args = parser.parse_args()
    names = [n.strip() for n in args.faults.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    if not args.beamflow.is_file():
        parser.error(f"no binary at {args.beamflow}: cargo build --release --locked")

    # SIGTERM as Ctrl-C: either way the `finally` below kills every process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="beamflow-faults-"))
    results = []
    try:
        for name in names:
            folder = work / name
            folder.mkdir()
            print(f"{name}: ...", file=sys.stderr, flush=True)
            result = run_case(name, args, folder)
            results.append(result)
            print(f"{name}: {happened(result)}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; every process is killed", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and state in {work}", file=sys.stderr)
    version = subprocess.run([str(args.beamflow), "--version"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    print(f"\n{version}, {args.events} events per scan, 64x64 sim at {args.rate:g} Hz, "
          f"3 workers, fault at {args.at:.0%} of the scan, {os.cpu_count()} cores\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"events": args.events, "rate_hz": args.rate,
                                         "at": args.at, "version": version,
                                         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
