#!/usr/bin/env python3
"""Writing a scan's NeXus file: beamflow (reducer/src/nexus.rs, rust-hdf5) against h5py writing
the same data with the same layout, in one run on this machine.

usage: .venv/bin/python bench/hdf5_write.py [--repeat N] [--skip-cargo]

The data: 4 history columns of 100,000 float64 rows and their event numbers (int64), and 100
images of 1024x1024 uint16 as one [100, 1024, 1024] dataset (about 213.6 MB). Both writers chunk
as nexus.rs does (whole rows, about 1 MiB a chunk: (100000,) and (1, 1024, 1024)) with shuffle
and gzip level 4, write to a temporary folder and sync the file to disk (rust-hdf5's close
syncs; h5py's does not, so it is synced here). beamflow's figure is the mean of the criterion
bench reducer/benches/nexus.rs (release, 10 samples); h5py's the best and the mean of --repeat
runs.
"""
import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROWS, IMAGES, SIDE = 100_000, 100, 1024


def noise(start, stop):
    """Six bits per index, as noise() in reducer/benches/nexus.rs (uint64 arithmetic wraps)."""
    h = np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E37_79B9_7F4A_7C15)
    h ^= h >> np.uint64(32)
    h *= np.uint64(0xD6E8_FEB8_6659_FD93)
    h ^= h >> np.uint64(32)
    return h >> np.uint64(58)


def data():
    rows = noise(0, ROWS).astype(np.float64) / 64.0
    index = np.arange(ROWS, dtype=np.float64) * 0.5
    history = {f"column{k}": index + float(k) + rows for k in range(4)}
    history["event_number"] = np.arange(ROWS, dtype=np.int64)
    frames = np.empty((IMAGES, SIDE, SIDE), dtype=np.uint16)
    for image in range(IMAGES):  # an image at a time: 8 bytes an index in between
        start = image * SIDE * SIDE
        frames[image] = (noise(start, start + SIDE * SIDE) + np.uint64(100)).reshape(SIDE, SIDE)
    return history, frames


def write_h5py(path, history, frames):
    with h5py.File(path, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        group = entry.create_group("history")
        group.attrs.update(NX_class="NXdata", signal="column0")
        for name, column in history.items():
            group.create_dataset(name, data=column, chunks=(ROWS,), shuffle=True,
                                 compression="gzip", compression_opts=4)
        group = entry.create_group("images")
        group.attrs.update(NX_class="NXdata", signal="frames")
        group.create_dataset("frames", data=frames, chunks=(1, SIDE, SIDE), shuffle=True,
                             compression="gzip", compression_opts=4)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cpu():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="h5py runs (default 5)")
    parser.add_argument("--skip-cargo", action="store_true",
                        help="reuse the last criterion result instead of running the bench")
    args = parser.parse_args()

    history, frames = data()
    size = sum(c.nbytes for c in history.values()) + frames.nbytes

    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not args.skip_cargo:
        subprocess.run(["cargo", "bench", "--locked", "-p", "beamflow-reducer", "--bench", "nexus"],
                       cwd=ROOT, check=True)
    estimates = json.loads((target / "criterion" / "nexus" / "write" / "new" / "estimates.json")
                           .read_text())
    rust_seconds = estimates["mean"]["point_estimate"] / 1e9

    times, file_size = [], 0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan.h5"
        for _ in range(args.repeat):
            start = time.perf_counter()
            write_h5py(path, history, frames)
            times.append(time.perf_counter() - start)
        file_size = path.stat().st_size

    mb = size / 1e6
    print(f"\ndata: {mb:.1f} MB; h5py file {file_size / 1e6:.1f} MB (ratio {size / file_size:.2f})")
    print(f"{'writer':<28}{'seconds':>10}{'MB/s':>10}")
    print(f"{'beamflow (rust-hdf5 0.7.9)':<28}{rust_seconds:>10.3f}{mb / rust_seconds:>10.1f}")
    print(f"{'h5py (best)':<28}{min(times):>10.3f}{mb / min(times):>10.1f}")
    mean = sum(times) / len(times)
    print(f"{'h5py (mean)':<28}{mean:>10.3f}{mb / mean:>10.1f}")
    print(f"\nmachine: {cpu()}, {os.cpu_count()} cores, {platform.platform()}; "
          f"h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
