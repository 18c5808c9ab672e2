#!/usr/bin/env python3
"""Write .cbors dumps with dranspose 0.2.0's own Dumper, plus a manifest of what was written.

usage: dranspose_write.py OUT_DIR [N_IMAGES]

Writes OUT_DIR/det.cbors (STINS: header, N images of a moving Gaussian spot, series_end; odd
images compressed as bslz4 by the real bitshuffle filter from hdf5plugin) and OUT_DIR/pcap.cbors
(a PCAP-typed JSON stream in every 5th event, to exercise merging), and OUT_DIR/manifest.json:
for every record its event number, created_at, streams with typ and frames as hex, and for
every image the statistics numpy computes (the reference for frame_stats), also alone in
OUT_DIR/stats.json. tests/data/{det,pcap}.cbors and tests/data/stats.json were made with it.
"""
import datetime
import json
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
from dranspose.event import InternalWorkerMessage, StreamData
from dranspose.ingester import Dumper

SHAPE = (32, 40)


def bslz4(image: np.ndarray, scratch: Path) -> bytes:
    """Compress with the real bitshuffle/LZ4 HDF5 filter and take the raw chunk."""
    with h5py.File(scratch, "w") as f:
        f.create_dataset("x", data=image, chunks=image.shape,
                         **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    with h5py.File(scratch, "r") as f:
        _, chunk = f["x"].id.read_direct_chunk((0, 0))
    return bytes(chunk)


def main() -> None:
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    t0 = datetime.datetime(2026, 11, 21, 12, 0, 0, tzinfo=datetime.timezone.utc)
    det = Dumper(str(out / "det.cbors"))
    pcap = Dumper(str(out / "pcap.cbors"))
    manifest = []

    def record(dumper, evn, stream, typ, frames):
        created = t0 + datetime.timedelta(milliseconds=100 * evn)
        msg = InternalWorkerMessage(event_number=evn, streams={stream: StreamData(typ=typ, frames=frames)},
                                    created_at=created)
        dumper.write_dump(msg)
        return {"event_number": evn, "stream": stream, "typ": typ, "created_at": created.isoformat(),
                "frames": [f.hex() for f in frames]}

    stats = {}
    for evn in range(n + 2):
        if evn == 0:
            frames = [json.dumps({"htype": "header", "filename": "", "msg_number": 0}).encode()]
        elif evn == n + 1:
            frames = [json.dumps({"htype": "series_end", "msg_number": evn}).encode()]
        else:
            cx, cy = 10 + 0.3 * evn, 16 - 0.1 * evn
            spot = 3000 * np.exp(-((xx - cx) ** 2 / (2 * 3.0 ** 2) + (yy - cy) ** 2 / (2 * 2.0 ** 2)))
            image = np.clip(spot + 100 + rng.normal(0, 5, SHAPE), 0, 4095).astype(np.uint16)
            compressed = evn % 2 == 1
            header = {"htype": "image", "frame": evn - 1, "shape": list(SHAPE), "type": "uint16",
                      "compression": "bslz4" if compressed else "none", "msg_number": evn}
            buffer = bslz4(image, out / "scratch.h5") if compressed else image.tobytes()
            frames = [json.dumps(header).encode(), buffer]
            stats[evn] = {"frame": evn - 1, "shape": list(SHAPE), "sum": float(image.sum(dtype=np.uint64)),
                          "mean": float(image.mean()), "min": float(image.min()), "max": float(image.max())}
        manifest.append(record(det, evn, "det", "STINS", frames))
        if evn % 5 == 0:
            frames = [json.dumps({"position": evn * 0.5}).encode()]
            manifest.append(record(pcap, evn, "pcap", "PCAP", frames))
    det.close()
    pcap.close()
    (out / "scratch.h5").unlink(missing_ok=True)
    (out / "manifest.json").write_text(json.dumps({"records": manifest, "stats": stats}, indent=0))
    (out / "stats.json").write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
