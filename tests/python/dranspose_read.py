#!/usr/bin/env python3
"""Read a .cbors dump with dranspose 0.2.0's own reader and print what it saw as JSON.

usage: dranspose_read.py DUMP

Prints a list with, per record, its event number, created_at (ISO, or null), and streams with
typ and frames as hex. STINS frames are also parsed with dranspose's stream1 middleware, and the
parsed message kind (and for images the frame index and shape) is added, so the test checks that
dranspose understands beamflow's STINS frames too.
"""
import json
import sys

from dranspose.middlewares.stream1 import parse
from dranspose.replay import get_internals


def main() -> None:
    out = []
    for msg in get_internals(sys.argv[1]):
        created = getattr(msg, "created_at", None)
        streams = {}
        for name, data in msg.streams.items():
            entry = {"typ": data.typ, "frames": [bytes(f).hex() for f in data.frames]}
            if data.typ == "STINS":
                packet = parse(data)
                entry["parsed"] = type(packet).__name__
                if hasattr(packet, "frame"):
                    entry["frame"] = packet.frame
                    entry["shape"] = list(packet.shape)
            streams[name] = entry
        out.append({"event_number": msg.event_number,
                     "created_at": created.isoformat() if created is not None else None,
                     "streams": streams})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
