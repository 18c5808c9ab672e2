#!/usr/bin/env python3
"""Time dranspose 0.2.0's replay in-process (no interpreter start or import time).

usage: dranspose_inproc.py DUMP WORKER REDUCER   (classes as module:Class, importable from cwd)
Prints "<events> events in <seconds> s".
"""
import logging
import sys
import time

logging.basicConfig(level=logging.WARNING)

from dranspose.replay import get_internals, replay  # noqa: E402

path, worker, reducer = sys.argv[1:4]
events = sum(1 for _ in get_internals(path))
start = time.perf_counter()
replay(worker, reducer, [path], nworkers=2)
print(f"{events} events in {time.perf_counter() - start:.6f} s")
