#!/usr/bin/env python3
"""A reducer's `publish` as dranspose 0.2.0 itself makes it, and leaf-for-leaf comparisons of
beamflow's against it.

usage:
  dranspose_publish.py reference PAYLOAD_DIR WORKER_CLASS REDUCER_CLASS PARAMS OUT_JSON DUMP...
      Runs dranspose's own `dranspose.replay.replay` in this process, as `dranspose replay -w
      WORKER_CLASS -r REDUCER_CLASS -f DUMP... -p PARAMS` would from PAYLOAD_DIR (one worker,
      classes imported relative to PAYLOAD_DIR), and writes the reducer's final `publish` (after
      `finish`) to OUT_JSON in the form beamflow's state.json gives a Python reducer's view:
      dict -> object (keys as str), list/tuple -> array, numpy array -> {"dtype": "<f8",
      "shape": [..], "data": [its bytes, little-endian, C order, as 0..255]}, numpy scalar ->
      number, bytes -> array of ints, NaN/inf/None -> null. Prints the number of events and the
      hooks that raised.
  dranspose_publish.py compare BEAMFLOW_STATE_JSON ACCUMULATOR_NAME REFERENCE_JSON [--ignore PATH]...
      Compares state.json's [ACCUMULATOR_NAME] with the reference, leaf for leaf (an array
      object is one leaf; numbers must agree in type and value, so 1 != 1.0 != true). Prints
      every differing leaf's path with both values and exits 1 if any differ; otherwise prints
      how many leaves agreed. `--ignore /preview` leaves out that subtree (on both sides): which
      event gets a tick is not fixed once events are spread over several workers, in dranspose
      as in beamflow.
  dranspose_publish.py h5compare A.h5 B.h5
      Compares two HDF5 files (the reducer's `finish` output): the same groups and datasets,
      each dataset's dtype, shape and bytes, and every attribute, exactly. Exits 1 on any
      difference.

Example (from the repository root, dumps from payload_dumps.py in /tmp/pl):
  dranspose_publish.py reference tests/python/payloads src.worker:ImagingWorker \\
      src.reducer:ImagingReducer /tmp/pl/params.json /tmp/pl/reference.json \\
      /tmp/pl/contrast.cbors /tmp/pl/pilatus.cbors /tmp/pl/eiger.cbors
"""
import json
import logging
import math
import os
import sys
import threading
import traceback
import types
from pathlib import Path

import numpy as np

logger = logging.getLogger("dranspose_publish")

# Integers beyond this become floats, as in beamflow's Value (i64).
I64 = (-(2**63), 2**63 - 1)

# How long to wait for the reducer's first timer call (dranspose runs it in its own thread).
TIMER_WAIT_S = 30.0

# At most this many differences are printed.
MAX_SHOWN = 200


def normalise(value, path="/"):
    """A Python object as beamflow's state.json shows it; TypeError for what it refuses."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if I64[0] <= value <= I64[1] else normalise(float(value), path)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, dict):
        return {
            key if isinstance(key, str) else str(key): normalise(item, f"{path.rstrip('/')}/{key}")
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [normalise(item, f"{path.rstrip('/')}/{i}") for i, item in enumerate(value)]
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{path}: a numpy value of kind {value.dtype.kind!r}")
        if value.ndim == 0:
            return normalise(value.item(), path)
        little = value.dtype.newbyteorder("<")
        return {
            "dtype": little.str,
            "shape": list(value.shape),
            "data": list(value.astype(little).tobytes("C")),
        }
    raise TypeError(f"{path}: a {type(value).__name__}, which beamflow's view cannot hold")


def live_classes(worker_cls, reducer_cls, errors):
    """Subclasses whose hooks fail as in live dranspose: `worker.py` and `reducer.py` log an
    exception from process_event / process_result / timer / finish with its traceback and go on
    (no result), while `dranspose.replay` lets one from process_event or process_result end the
    replay and one from timer end its timer thread. Counts each failure in `errors`."""

    def guarded(cls, hook, kind):
        original = getattr(cls, hook)

        def call(self, *args, **kwargs):
            try:
                return original(self, *args, **kwargs)
            except Exception as e:
                errors[kind] = errors.get(kind, 0) + 1
                logger.error("custom %s failed: %r\n%s", kind, e, traceback.format_exc())
                return None

        return call

    timer_ran = threading.Event()
    worker_attrs = {"process_event": guarded(worker_cls, "process_event", "worker")}
    reducer_attrs = {"process_result": guarded(reducer_cls, "process_result", "reducer")}
    # replay() catches these itself; guarded here too, only to count them.
    if hasattr(worker_cls, "finish"):
        worker_attrs["finish"] = guarded(worker_cls, "finish", "worker finish")
    if hasattr(reducer_cls, "finish"):
        reducer_attrs["finish"] = guarded(reducer_cls, "finish", "reducer finish")
    if hasattr(reducer_cls, "timer"):
        timer = guarded(reducer_cls, "timer", "timer")

        def timed(self, *args, **kwargs):
            try:
                delay = timer(self, *args, **kwargs)
            finally:
                timer_ran.set()
            # Live dranspose's reducer replaces a missing or non-number delay by 1 s.
            return delay if isinstance(delay, (int, float)) else 1

        reducer_attrs["timer"] = timed
    else:
        timer_ran.set()
    live_worker = type(worker_cls.__name__, (worker_cls,), worker_attrs)
    live_reducer = type(reducer_cls.__name__, (reducer_cls,), reducer_attrs)
    return live_worker, live_reducer, timer_ran


def reference(payload_dir, worker_class, reducer_class, params, out_json, dumps) -> int:
    from dranspose import replay as dreplay
    from dranspose.helpers import utils

    params = Path(params).resolve()
    out_json = Path(out_json).resolve()
    dumps = [str(Path(d).resolve()) for d in dumps]
    # dranspose imports payloads relative to the working directory (import_class appends it).
    os.chdir(payload_dir)
    worker_cls = utils.import_class(worker_class)
    reducer_cls = utils.import_class(reducer_class)
    errors: dict[str, int] = {}
    live_worker, live_reducer, timer_ran = live_classes(worker_cls, reducer_cls, errors)
    # replay() imports classes by name: a module of our own holds the wrapping ones.
    module = types.ModuleType("_dranspose_publish_live")
    module.Worker, module.Reducer = live_worker, live_reducer
    sys.modules[module.__name__] = module

    events = [0]
    process_event = live_worker.process_event

    def counted(self, *args, **kwargs):
        events[0] += 1
        return process_event(self, *args, **kwargs)

    live_worker.process_event = counted

    dreplay.replay(
        f"{module.__name__}:Worker",
        f"{module.__name__}:Reducer",
        dumps,
        None,
        str(params),
        port=None,
        nworkers=1,
    )
    # The timer thread starts with the replay; its first call may still be running.
    if not timer_ran.wait(TIMER_WAIT_S):
        print(f"reference: the reducer's timer did not run within {TIMER_WAIT_S} s", file=sys.stderr)
        return 1
    reducer = dreplay.reducer
    lock = getattr(reducer, "publish_rlock", None)
    if lock is not None:
        with lock:
            view = normalise(reducer.publish)
    else:
        view = normalise(reducer.publish)
    out_json.write_text(json.dumps(view, allow_nan=False))
    failed = ", ".join(f"{kind} {n}" for kind, n in sorted(errors.items())) or "none"
    print(f"reference: {events[0]} events through {worker_class} and {reducer_class}; "
          f"hooks that raised: {failed}; publish ({count_leaves(view)} leaves) in {out_json}")
    return 0


def is_array(value) -> bool:
    return isinstance(value, dict) and set(value) == {"dtype", "shape", "data"}


def count_leaves(value) -> int:
    if is_array(value):
        return 1
    if isinstance(value, dict):
        return sum(count_leaves(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_leaves(v) for v in value)
    return 1


def show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def diff(a, b, path, out, ignore=frozenset()) -> int:
    """Appends (path, what) for each differing leaf of a (beamflow) and b (reference); returns
    how many leaves were compared. Paths in `ignore` are skipped."""
    if path in ignore:
        return 0
    if is_array(a) and is_array(b):
        what = []
        for key in ("dtype", "shape"):
            if a[key] != b[key]:
                what.append(f"{key} {show(a[key])} != {show(b[key])}")
        if not what and a["data"] != b["data"]:
            wrong = [i for i, (x, y) in enumerate(zip(a["data"], b["data"])) if x != y]
            what.append(f"data: {len(wrong)} of {len(a['data'])} bytes differ, first at byte {wrong[0]}"
                        if wrong else f"data: {len(a['data'])} bytes != {len(b['data'])} bytes")
        if what:
            out.append((path, "; ".join(what)))
        return 1
    if isinstance(a, dict) and isinstance(b, dict) and not is_array(a) and not is_array(b):
        n = 0
        for key in sorted(set(a) | set(b)):
            child = f"{path.rstrip('/')}/{key}"
            if child in ignore:
                continue
            if key not in a:
                out.append((child, f"missing in beamflow; reference {show(b[key])}"))
                n += 1
            elif key not in b:
                out.append((child, f"beamflow {show(a[key])}; missing in reference"))
                n += 1
            else:
                n += diff(a[key], b[key], child, out, ignore)
        return n
    if isinstance(a, list) and isinstance(b, list):
        n = 0
        for i, (x, y) in enumerate(zip(a, b)):
            n += diff(x, y, f"{path.rstrip('/')}/{i}", out, ignore)
        if len(a) != len(b):
            out.append((path, f"beamflow has {len(a)} items, reference {len(b)}"))
        return n
    if type(a) is not type(b) or a != b:
        out.append((path, f"beamflow {show(a)} != reference {show(b)}"))
    return 1


def compare(state_json, accumulator, reference_json, ignore=()) -> int:
    state = json.loads(Path(state_json).read_text())
    if accumulator not in state:
        print(f"compare: {state_json} has no accumulator {accumulator!r} (it has {sorted(state)})")
        return 1
    reference_view = json.loads(Path(reference_json).read_text())
    out: list[tuple[str, str]] = []
    n = diff(state[accumulator], reference_view, "/", out, frozenset(ignore))
    for path, what in out[:MAX_SHOWN]:
        print(f"{path}: {what}")
    if len(out) > MAX_SHOWN:
        print(f"... and {len(out) - MAX_SHOWN} more")
    if out:
        print(f"compare: {len(out)} of {n} leaves differ")
        return 1
    print(f"compare: {n} leaves of {accumulator!r} agree with {reference_json}")
    return 0


def h5compare(a_path, b_path) -> int:
    import h5py

    def attrs_of(obj) -> dict:
        return {key: obj.attrs[key] for key in obj.attrs}

    def same(x, y) -> bool:
        if isinstance(x, (str, bytes)) or isinstance(y, (str, bytes)):
            return type(x) is type(y) and x == y
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind == "O" or y.dtype.kind == "O":
            return x.dtype == y.dtype and x.shape == y.shape and x.tolist() == y.tolist()
        return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()

    def contents(f) -> dict:
        items = {"/": f}
        f.visititems(lambda name, item: items.__setitem__("/" + name, item))
        return items

    out = []
    n = 0
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        ia, ib = contents(a), contents(b)
        for name in sorted(set(ia) | set(ib)):
            n += 1
            if name not in ia or name not in ib:
                out.append(f"{name}: only in {a_path if name in ia else b_path}")
                continue
            x, y = ia[name], ib[name]
            if type(x) is not type(y):
                out.append(f"{name}: {type(x).__name__} != {type(y).__name__}")
                continue
            if isinstance(x, h5py.Dataset):
                if x.dtype != y.dtype or x.shape != y.shape:
                    out.append(f"{name}: {x.dtype} {x.shape} != {y.dtype} {y.shape}")
                elif not same(x[()], y[()]):
                    out.append(f"{name}: values differ")
            ax, ay = attrs_of(x), attrs_of(y)
            for key in sorted(set(ax) | set(ay)):
                n += 1
                if key not in ax or key not in ay:
                    out.append(f"{name}@{key}: only in {a_path if key in ax else b_path}")
                elif not same(ax[key], ay[key]):
                    out.append(f"{name}@{key}: {ax[key]!r} != {ay[key]!r}")
    for line in out:
        print(line)
    if out:
        print(f"h5compare: {len(out)} of {n} objects and attributes differ")
        return 1
    print(f"h5compare: {n} objects and attributes agree")
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    usage = __doc__.split("\n\n")[1]
    if len(argv) >= 8 and argv[1] == "reference":
        return reference(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7:])
    if len(argv) >= 5 and argv[1] == "compare" and len(argv) % 2 == 1 and all(
        flag == "--ignore" for flag in argv[5::2]
    ):
        return compare(argv[2], argv[3], argv[4], [p.rstrip("/") or "/" for p in argv[6::2]])
    if len(argv) == 4 and argv[1] == "h5compare":
        return h5compare(argv[2], argv[3])
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
