"""A PV Access camera as areaDetector's PVA plugin serves one, from p4p (pvxs inside): three
NTNDArray images of 1392x1040 u16 (uncompressed, and lz4- and bslz4-compressed as its codec
plugin sends them, compressed here by the lz4 package and HDF5's bitshuffle filter), a
counter as NTScalar and a waveform as NTScalarArray, all posted together at `rate` Hz.

Image n has pixel (row, column) = n + column, so its minimum is n, its maximum n + 1391 and
its mean n + 695.5; its uniqueId is n, the counter n and the waveform [n, 2n, 3n].

Usage: pva_camera.py <tcp port> <udp port> <first n> <rate Hz>
Prints {"tcp": port, "udp": port} once serving; serves until stdin closes.
"""
import json
import os
import sys
import tempfile
import threading
import time

import h5py
import hdf5plugin
import lz4.block
import numpy as np
from p4p import Value
from p4p.nt import NTNDArray, NTScalar
from p4p.server import Server
from p4p.server.thread import SharedPV

tcp, udp, first, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
WIDTH, HEIGHT = 1392, 1040
ND_UINT16 = 3  # areaDetector's NDDataType_t for the codec's parameters
columns = np.arange(WIDTH, dtype=np.uint16)[None, :] + np.zeros((HEIGHT, 1), dtype=np.uint16)


def bslz4(image):
    """bitshuffle/LZ4 as areaDetector sends it: the HDF5 filter's chunk without its 12-byte
    header (total bytes and block size)."""
    path = tempfile.mktemp(suffix=".h5")
    try:
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=image, chunks=image.shape, **hdf5plugin.Bitshuffle(cname="lz4"))
        with h5py.File(path) as f:
            _, chunk = f["x"].id.read_direct_chunk((0, 0))
        return chunk[12:]
    finally:
        os.remove(path)


def compressed(image, codec, n, stamp):
    raw = image.tobytes()
    data = lz4.block.compress(raw, store_size=False) if codec == "lz4" else bslz4(image)
    return Value(
        NTNDArray.buildType(),
        {
            "value": ("ubyteValue", np.frombuffer(data, dtype=np.uint8)),
            "codec": {"name": codec, "parameters": ND_UINT16},
            "compressedSize": len(data),
            "uncompressedSize": len(raw),
            "dimension": [{"size": WIDTH}, {"size": HEIGHT}],
            "uniqueId": n,
            "timeStamp": stamp,
            "dataTimeStamp": stamp,
        },
    )


def stamp_now():
    now = time.time()
    return {"secondsPastEpoch": int(now), "nanoseconds": int((now % 1) * 1e9)}


image_nt, scalar_nt, wave_nt = NTNDArray(), NTScalar("l"), NTScalar("ad")


def frame(n):
    """Image n's values, by PV (the images whole values: the compressed ones are built by
    hand)."""
    image = (columns + n).astype(np.uint16)
    stamp = stamp_now()
    plain = image_nt.wrap(image)
    plain["uniqueId"] = n
    plain["timeStamp"] = stamp
    return {
        "CAM:IMG": plain,
        "CAM:IMG:LZ4": compressed(image, "lz4", n, stamp),
        "CAM:IMG:BSLZ4": compressed(image, "bslz4", n, stamp),
        "CAM:COUNT": scalar_nt.wrap(n, timestamp=stamp["secondsPastEpoch"] + stamp["nanoseconds"] * 1e-9),
        "CAM:WAVE": wave_nt.wrap([float(n), 2.0 * n, 3.0 * n]),
    }


# Every PV holds image `first` before the server answers anyone, as a camera that has taken an
# image: a client connecting while the first posts go out must not see an image that never was
# (a blank one, say, beside a real one).
pvs = {name: SharedPV(initial=value) for name, value in frame(first).items()}
conf = {
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_SERVER_PORT": str(tcp),
    "EPICS_PVAS_BROADCAST_PORT": str(udp),
    "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
    "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
}
stop = threading.Event()


def post():
    n = first + 1
    period = 1.0 / rate
    next_at = time.monotonic() + period
    while not stop.is_set():
        # The camera's frame rate, not a synchronisation.
        time.sleep(max(0.0, next_at - time.monotonic()))
        for name, value in frame(n).items():
            pvs[name].post(value)
        n += 1
        next_at += period


with Server(providers=[pvs], conf=conf, useenv=False) as server:
    ports = {"tcp": tcp, "udp": udp}
    for key, value in server.conf().items():
        if key == "EPICS_PVAS_SERVER_PORT":
            ports["tcp"] = int(value)
        if key == "EPICS_PVAS_BROADCAST_PORT":
            ports["udp"] = int(value)
    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    print(json.dumps(ports), flush=True)
    sys.stdin.read()
    stop.set()
    poster.join()
