#!/usr/bin/env python3
"""Reading the reducer's state through h5pyd (HDF5-REST) against the same through the JSON API,
side by side in one run, from the same `beamflow replay --serve` process (a final, static state).

usage: .venv/bin/python bench/hdf5_rest.py [--rows N] [--rounds K] [--beamflow PATH]

What is read, each way:
1. a history of N rows (default 10,000): one float64 column and the int64 event numbers.
   h5pyd: `f["history/values/mean"][...]` and `f["history/event_number"][...]`, and the last
   1,000 rows as a slice; JSON: `GET /api/v1/result/history/values/mean` (and the event
   numbers), `json.loads`, `np.array`.
2. a 1 Mpixel image (1024 x 1024): h5pyd `f["image/pixels"][...]` (float32, the `image`
   accumulator's frame) and a 256 x 256 part; JSON: the same frame as the `frame` analysis's
   result (a second `frame` analysis: `image` claims its own) kept by a `last` accumulator, `GET /api/v1/result/last/values/pixels` (bytes, which
   JSON serves as a list of numbers), `json.loads`, `np.frombuffer(...).reshape`. Both must
   give the same array (checked).

Each read is timed in a child process of the interpreter that has that h5pyd: the main venv's
(h5pyd 1.0.0) and `.venv-h5pyd024`'s (0.24.0), `.ci/run` makes both. A File is opened once per
child and every read repeated K times (default 5); the table gives the median and the payload
in MB/s (payload: the array's bytes, what the reader gets). h5pyd asks for gzip; the server
compresses answers over 1 kB at gzip's fastest level. The JSON side uses urllib; the JSON API
sends its answers uncompressed whatever the client asks.

Setup: dumps made with tests/python/payload_dumps.py (N events of 8 x 8 frames, and one of
1024 x 1024), in bench/out/hdf5_rest, each replayed by its own server (the same pipeline); the
release binary (`cargo build --release`, made when missing). Writes bench/out/hdf5_rest.json.
"""
import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "hdf5_rest"
PYTHONS = {
    "h5pyd 1.0.0": ROOT / ".venv" / "bin" / "python",
    "h5pyd 0.24.0": ROOT / ".venv-h5pyd024" / "bin" / "python",
}

PIPELINE = """
[analyses.stats]
kind = "frame_stats"
streams = ["pilatus"]

[analyses.frame]
kind = "frame"
stream = "pilatus"

[accumulators.history]
kind = "history"
analysis = "stats"
values = { mean = "pilatus/0/mean", max = "pilatus/0/max" }
capacity = 1000000

[accumulators.image]
kind = "image"
frames = "frame"

# The same frame again for the JSON side: the `image` accumulator claims its analysis's results.
[analyses.frame_json]
kind = "frame"
stream = "pilatus"

[accumulators.last]
kind = "last"
analysis = "frame_json"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.load(response)


def timed(read, rounds: int):
    """Median seconds of `rounds` calls, and the last result."""
    times = []
    result = None
    for _ in range(rounds):
        start = time.perf_counter()
        result = read()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def client(endpoint: str, image_endpoint: str, rounds: int) -> None:
    """In the child: every read, timed; prints one JSON line of results."""
    import h5pyd
    import numpy as np

    base = endpoint.rstrip("/")
    f = h5pyd.File("/", "r", endpoint=endpoint)
    cases = {}

    def record(name, read, nbytes_of):
        seconds, value = timed(read, rounds)
        cases[name] = {"seconds": seconds, "bytes": nbytes_of(value)}
        return value

    mean = record("history column, h5pyd", lambda: f["history/values/mean"][...], lambda a: a.nbytes)
    events = record("history event numbers, h5pyd", lambda: f["history/event_number"][...], lambda a: a.nbytes)
    record("history last 1,000 rows, h5pyd", lambda: f["history/values/mean"][-1000:], lambda a: a.nbytes)
    json_mean = record(
        "history column, JSON",
        lambda: np.array([np.nan if v is None else v for v in get_json(f"{base}/api/v1/result/history/values/mean")], dtype=np.float64),
        lambda a: a.nbytes,
    )
    json_events = record(
        "history event numbers, JSON",
        lambda: np.array(get_json(f"{base}/api/v1/result/history/event_number"), dtype=np.int64),
        lambda a: a.nbytes,
    )
    record(
        "history last 1,000 rows, JSON",
        lambda: np.array(get_json(f"{base}/api/v1/result/history/values/mean?slice=-1000:"), dtype=np.float64),
        lambda a: a.nbytes,
    )
    assert np.array_equal(mean, json_mean, equal_nan=True) and np.array_equal(events, json_events)
    base = image_endpoint.rstrip("/")
    f = h5pyd.File("/", "r", endpoint=image_endpoint)
    pixels = record("1 Mpixel image, h5pyd", lambda: f["image/pixels"][...], lambda a: a.nbytes)
    record("256 x 256 of it, h5pyd", lambda: f["image/pixels"][384:640, 384:640], lambda a: a.nbytes)

    def image_by_json():
        frame = get_json(f"{base}/api/v1/result/last/values")
        data = np.frombuffer(bytes(frame["pixels"]), dtype="<f4")
        return data.reshape(frame["shape"])

    json_pixels = record("1 Mpixel image, JSON", image_by_json, lambda a: a.nbytes)
    assert np.array_equal(pixels, json_pixels, equal_nan=True), "h5pyd and JSON differ"
    print(json.dumps({"h5pyd": h5pyd.__version__, "cases": cases}))


def dumps(rows: int) -> tuple[Path, Path]:
    history, image = OUT / f"history{rows}", OUT / "image"
    for folder, events, shape in ((history, rows, ("8", "8")), (image, 1, ("1024", "1024"))):
        if not (folder / "pilatus.cbors").exists():
            folder.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(ROOT / "tests/python/payload_dumps.py"), str(folder),
                            "--events", str(events), "--shape", *shape], check=True, stdout=subprocess.DEVNULL)
    return history / "pilatus.cbors", image / "pilatus.cbors"


def serve(beamflow: Path, pipeline: Path, dump: Path):
    port = free_port()
    args = [str(beamflow), "replay", "--pipeline", str(pipeline), "--serve", f"127.0.0.1:{port}",
            "--dump", str(dump)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "RUST_LOG": "warn"})
    # Polls the server: it is another process, nothing else says when the replay is done.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if get_json(f"http://127.0.0.1:{port}/api/v1/status")["finished"]:
                return process, f"http://127.0.0.1:{port}/"
        except OSError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"beamflow replay stopped: {process.stderr.read()}")
        time.sleep(0.1)
    raise SystemExit("the replay did not finish")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--beamflow", type=Path, default=ROOT / "target" / "release" / "beamflow")
    args = parser.parse_args()
    if not args.beamflow.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "beamflow"], cwd=ROOT, check=True)
    history, image = dumps(args.rows)
    OUT.mkdir(parents=True, exist_ok=True)
    pipeline = OUT / "pipeline.toml"
    pipeline.write_text(PIPELINE)
    servers = [serve(args.beamflow, pipeline, dump) for dump in (history, image)]
    endpoint, image_endpoint = (url for _, url in servers)
    try:
        rows = len(get_json(endpoint + "api/v1/result/history/event_number"))
        results = {}
        for name, python in PYTHONS.items():
            out = subprocess.run([str(python), __file__, "--client", endpoint, image_endpoint, str(args.rounds)],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{name}: {out.stderr}")
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait()
    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load[0]:.1f}; "
          f"history of {rows} rows; median of {args.rounds} reads")
    # One row per read: each h5pyd, and JSON (timed in the 1.0.0 child; the 0.24 child's JSON
    # figures are in the JSON file).
    columns = [(name, ", h5pyd") for name in results] + [("h5pyd 1.0.0", ", JSON")]
    print("| read | " + " | ".join(f"{name if kind == ', h5pyd' else 'JSON API'} ms (MB/s)" for name, kind in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    reads = [case.rsplit(", ", 1)[0] for case in results["h5pyd 1.0.0"]["cases"] if case.endswith(", h5pyd")]
    for read in reads:
        cells = []
        for name, kind in columns:
            figures = results[name]["cases"].get(read + kind)
            cells.append("–" if figures is None else
                         f"{figures['seconds'] * 1e3:.1f} ({figures['bytes'] / figures['seconds'] / 1e6:.0f})")
        print(f"| {read} | " + " | ".join(cells) + " |")
    (OUT.parent / "hdf5_rest.json").write_text(json.dumps({"rows": rows, "load": load, "results": results}, indent=1))


if __name__ == "__main__":
    main()
