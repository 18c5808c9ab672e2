"""Reads a NeXus file beamflow wrote with h5py and checks it against the JSON view of the same
final state.

    nexus_check.py FILE STATE.json [--no-plot] ACCUMULATOR...

- `/` is NXroot with `default = "entry"`; `/entry` an NXentry with start and end times and the
  scan's identifier, its `default` an NXdata whose `signal` resolves (unless `--no-plot`: no
  accumulator declares a plot, e.g. a Python reducer's `publish` without `_attrs`);
- every dataset under `/entry/<accumulator>` equals the JSON view at its path (ints and floats to
  the bit, NaN for null, strings as text; a typed array `{dtype, shape, data}`, a numpy array
  from a Python payload, in its own dtype and shape, byte for byte); only the frames kept for
  display (`pixels`) are not in JSON;
- arrays of more than one number are chunked with shuffle and gzip;
- only the accumulators named are in the file;
- the scan's mapping, when the file has it, is JSON with `parts` and `sequence` (printed).
"""

import json
import sys

import h5py
import numpy as np

from json_paths import step


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def main():
    path, state_path, *names = sys.argv[1:]
    plot = "--no-plot" not in names
    names = [name for name in names if name != "--no-plot"]
    with open(state_path) as f:
        state = json.load(f)
    counts = {"compared": 0, "chunked": 0}
    with h5py.File(path, "r") as f:
        assert text(f.attrs["NX_class"]) == "NXroot", dict(f.attrs)
        assert text(f.attrs["default"]) == "entry"
        entry = f["entry"]
        assert text(entry.attrs["NX_class"]) == "NXentry"
        for key in ("start_time", "end_time", "title"):
            assert key in entry, key
        if "mapping" in entry["beamflow"]:
            mapping = json.loads(entry["beamflow/mapping"].asstr()[()])
            streams = sorted(entry["beamflow/streams"])
            print(f"mapping: parts {sorted(mapping['parts'])}, sequence {mapping['sequence']}, streams {streams}")
        if plot:
            default = entry[text(entry.attrs["default"])]
            assert text(default.attrs["NX_class"]) == "NXdata"
            assert text(default.attrs["signal"]) in default
        assert sorted(k for k in entry if isinstance(entry[k], h5py.Group) and k != "beamflow") == sorted(names), list(entry)

        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            parts = name.split("/")
            if parts[0] not in names:
                return
            node = state
            for part in parts:
                node = step(node, part)
            if node is None:
                assert parts[-1] == "pixels", name
                return
            got = obj[()]
            if isinstance(node, dict) and sorted(node) == ["data", "dtype", "shape"]:
                assert obj.dtype == np.dtype(node["dtype"]) and list(obj.shape) == node["shape"], (name, obj)
                assert got.astype(obj.dtype.newbyteorder("<")).tobytes() == bytes(node["data"]), name
            elif obj.dtype.kind in "OS" or h5py.check_string_dtype(obj.dtype):
                got = [text(v) for v in np.ravel(got)] if obj.shape != () else text(got)
                want = node if obj.shape != () or not isinstance(node, list) else node
                assert got == (list(np.ravel(np.array(node, dtype=object))) if obj.shape != () else node), (name, got, node)
            else:
                want = np.array([np.nan if v is None else v for v in np.ravel(np.array(node, dtype=object))] if isinstance(node, list) else node, dtype=float)
                assert np.array_equal(np.ravel(got).astype(float), np.ravel(want), equal_nan=True), (name, got, node)
            counts["compared"] += 1
            if obj.size > 1 and obj.dtype.kind in "iuf":
                assert obj.chunks is not None and obj.shuffle and obj.compression == "gzip", (name, obj.chunks, obj.compression)
                counts["chunked"] += 1

        entry.visititems(visit)
    assert counts["compared"] > 10 and counts["chunked"] > 3, counts
    print(f"checked: {counts}")


if __name__ == "__main__":
    main()
