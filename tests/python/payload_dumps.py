#!/usr/bin/env python3
"""Write one scan as dranspose 0.2.0 `.cbors` dumps (dranspose's own Dumper), and its parameter
file, for the payloads in tests/python/payloads.

usage: payload_dumps.py OUT_DIR [--events N] [--shape H W]

A step scan `ascan samx 0 1 N 0.1` of N points (default 40), as the ingesters would dump it,
event 0 the start and event N+1 the end in every stream:
- OUT_DIR/contrast.cbors: typ `contrast`, contrast's pickled dicts: `started` (path, scannr,
  description, snapshot), `running` per point (dt, samx, i0, the detectors' links; i0 is 0 at
  one point, a beam loss), `finished`;
- OUT_DIR/pilatus.cbors: typ `STINS`, stream1 header, uint16 images uncompressed, series_end;
- OUT_DIR/eiger.cbors: typ `STINS`, the same with the images bslz4-compressed (the real
  bitshuffle filter from hdf5plugin, so the Dectris 12-byte header is there);
- OUT_DIR/params.json: dranspose's parameter file (`[{"name", "data"}]`) with all five types:
  threshold (int), gain (float), normalise (bool), roi (binary: JSON), output_file (str:
  OUT_DIR/reduced.h5). `monitor` is left out, so its described default applies.

Images are H x W (default 8 x 8; `--shape 2048 1024` gives 4 MiB frames): Poisson-like
background plus a spot that moves along x with samx. Events are written one by one, so memory
stays at a few frames whatever N is. Existing dumps in OUT_DIR are replaced (Dumper appends).
"""
import argparse
import datetime
import io
import json
import pickle
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
from dranspose.event import InternalWorkerMessage, StreamData
from dranspose.ingester import Dumper

SCANNR = 12
MOTOR = "samx"
T0 = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=datetime.timezone.utc)


def bslz4(image: np.ndarray) -> bytes:
    """The raw chunk the bitshuffle/LZ4 HDF5 filter writes: what a Dectris detector sends."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("x", data=image, chunks=image.shape,
                         **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
        _, chunk = f["x"].id.read_direct_chunk((0,) * image.ndim)
    return bytes(chunk)


def image_at(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Background counts plus a spot at `fraction` of the way across, half-way down."""
    h, w = shape
    image = rng.integers(0, 4, size=shape, dtype=np.uint16)
    cy, cx = h / 2, w * (0.15 + 0.7 * fraction)
    sigma = max(1.0, min(h, w) / 8)
    y0, y1 = max(0, int(cy - 4 * sigma)), min(h, int(cy + 4 * sigma) + 1)
    x0, x1 = max(0, int(cx - 4 * sigma)), min(w, int(cx + 4 * sigma) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    spot = 500 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    image[y0:y1, x0:x1] += spot.astype(np.uint16)
    return image


def parameters(out: Path, shape: tuple[int, int]) -> list[dict]:
    h, w = shape
    roi = [max(0, h // 2 - 2), min(h, h // 2 + 2), w // 8, w - w // 8]
    return [
        {"name": "threshold", "data": "2"},
        {"name": "gain", "data": "0.5"},
        {"name": "normalise", "data": "True"},
        {"name": "roi", "data": json.dumps(roi)},
        {"name": "output_file", "data": str(out / "reduced.h5")},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, metavar="OUT_DIR")
    parser.add_argument("--events", type=int, default=40, help="scan points (default 40)")
    parser.add_argument("--shape", type=int, nargs=2, default=[8, 8], metavar=("H", "W"))
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    n, shape = args.events, tuple(args.shape)
    rng = np.random.default_rng(20)
    path = "/data/visitors/beamflow/20261130/raw/sample"
    description = f"ascan {MOTOR} 0 1 {n} 0.1"

    names = ("contrast", "pilatus", "eiger")
    for name in names:
        (out / f"{name}.cbors").unlink(missing_ok=True)
    dumpers = {name: Dumper(str(out / f"{name}.cbors")) for name in names}

    def write(evn: int, name: str, typ: str, frames: list[bytes]) -> None:
        created = T0 + datetime.timedelta(milliseconds=100 * evn)
        message = InternalWorkerMessage(
            event_number=evn, streams={name: StreamData(typ=typ, frames=frames)}, created_at=created
        )
        dumpers[name].write_dump(message)

    def stins(msg: dict, buffer: bytes | None = None) -> list[bytes]:
        header = json.dumps(msg).encode()
        return [header] if buffer is None else [header, buffer]

    filenames = {det: f"{path}/scan_{SCANNR:06d}_{det}.h5" for det in ("pilatus", "eiger")}
    snapshot = {MOTOR: 0.0, "samy": 1.25, "energy": 9.0}
    write(0, "contrast", "contrast", [pickle.dumps({
        "status": "started", "path": path, "scannr": SCANNR, "description": description,
        "snapshot": snapshot})])
    for det in ("pilatus", "eiger"):
        write(0, det, "STINS", stins({"htype": "header", "msg_number": 0, "filename": filenames[det]}))

    for point in range(n):
        evn = point + 1
        fraction = point / max(1, n - 1)
        i0 = 0.0 if point == n // 2 else 1000.0 + 10.0 * np.sin(point)
        running = {
            "status": "running", "dt": 0.1 * evn, MOTOR: round(fraction, 6), "i0": i0,
            "pseudo": {"x": np.array([fraction]), "y": np.array([1.25])},
        }
        for det in ("pilatus", "eiger"):
            running[det] = {"type": "Link", "filename": filenames[det], "path": "/entry/instrument/data",
                            "universal": True}
        write(evn, "contrast", "contrast", [pickle.dumps(running)])
        for det in ("pilatus", "eiger"):
            image = image_at(rng, shape, fraction)
            header = {"htype": "image", "msg_number": evn, "frame": point, "shape": list(shape),
                      "type": "uint16"}
            if det == "eiger":
                write(evn, det, "STINS", stins({**header, "compression": "bslz4"}, bslz4(image)))
            else:
                write(evn, det, "STINS", stins({**header, "compression": "none"}, image.tobytes()))

    end = n + 1
    write(end, "contrast", "contrast", [pickle.dumps({
        "status": "finished", "path": path, "scannr": SCANNR, "description": description,
        "snapshot": snapshot})])
    for det in ("pilatus", "eiger"):
        write(end, det, "STINS", stins({"htype": "series_end", "msg_number": end}))
    for dumper in dumpers.values():
        dumper.close()

    (out / "params.json").write_text(json.dumps(parameters(out, shape), indent=1) + "\n")
    print(f"{n + 2} events of {shape[0]}x{shape[1]} uint16 in {', '.join(f'{n}.cbors' for n in names)} "
          f"and params.json in {out}")


if __name__ == "__main__":
    main()
