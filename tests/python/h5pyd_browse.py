"""Browses beamflow's live state with h5pyd as a beamline scientist would, and checks what it
reads against the JSON API of the same server.

    h5pyd_browse.py http://HOST:PORT/

1. While the scan runs: a history's length, read, grows after `refresh()` once the JSON view
   has more rows (the file opened with `swmr=True`, as h5py reads a file being written).
2. Once the scan has finished (the state no longer changes): every group is walked and every
   attribute read; every dataset is read whole and compared with the JSON view at its path
   (ints and floats to the bit, strings as text); int, float and string datasets are sliced;
   the image is read whole and in a 2-D selection; the NeXus attributes the accumulators
   declare are there.

Prints one line per check; exits non-zero on the first mismatch.
"""

import json
import sys
import time
import urllib.request

import h5pyd
import numpy as np

from json_paths import step


def get_json(endpoint, path):
    with urllib.request.urlopen(endpoint.rstrip("/") + path, timeout=30) as response:
        return json.load(response)


def wait_for(what, probe, seconds=120):
    """Polls the server: it runs in another process, nothing else tells."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def read_whole(dataset):
    """`dataset[...]` of a dataset that grows: h5pyd 1.0.0 asks for the whole of it without
    saying which shape it expects, so rows added between its two requests make it raise
    `ValueError: cannot reshape`; as README says, refresh() and read again."""
    for _ in range(10):
        try:
            return dataset[...]
        except ValueError as error:
            print(f"grew while read ({error}); refresh() and read again")
            dataset.refresh()
    raise SystemExit("the dataset grew during every read")


def check_growth(endpoint):
    status = wait_for("a first event", lambda: (s := get_json(endpoint, "/api/v1/status"))["events"] > 0 and s)
    if status["finished"]:
        raise SystemExit("the scan finished before the growth could be seen; make it longer")
    # swmr=True, as for a file being written: 0.24 otherwise caches every object for the life
    # of the File, and refresh() would read the cache.
    f = h5pyd.File("/", "r", endpoint=endpoint, swmr=True)
    events = f["beam/event_number"]
    first = read_whole(events)
    before = len(first)
    wait_for(
        "the history to grow",
        lambda: len(get_json(endpoint, "/api/v1/result/beam/event_number")) > before,
    )
    events.refresh()
    after = events.shape[0]
    assert after > before, (before, after)
    grown = read_whole(events)
    assert len(grown) >= after and np.all(np.diff(grown) > 0), grown
    print(f"growth: beam/event_number {before} -> {after} rows after refresh()")
    f.close()


def compare(path, dataset, expected):
    got = dataset[()] if dataset.shape == () else dataset[...]
    if dataset.dtype.kind in "OSU":
        got = [text(v) for v in np.ravel(got)] if dataset.shape != () else text(got)
        want = expected if dataset.shape == () else list(np.ravel(np.array(expected, dtype=object)))
        assert got == want, (path, got, want)
    elif isinstance(expected, bool):
        assert int(got) == int(expected), (path, got, expected)
    elif isinstance(expected, (int, float)) or dataset.shape == ():
        assert float(got) == float(expected), (path, got, expected)
    else:
        want = np.array([np.nan if v is None else v for v in np.ravel(np.array(expected, dtype=object))], dtype=float)
        got_flat = np.ravel(got).astype(float)
        assert got.shape == np.array(expected, dtype=object).shape or got_flat.size == want.size, (path, got.shape)
        assert np.array_equal(got_flat, want, equal_nan=True), (path, got_flat[:5], want[:5])


def check_final(endpoint):
    wait_for("the scan to finish", lambda: get_json(endpoint, "/api/v1/status")["finished"])
    state = get_json(endpoint, "/api/v1/result")
    f = h5pyd.File("/", "r", endpoint=endpoint)
    counts = {"groups": 0, "datasets": 0, "attributes": 0, "compared": 0}

    def walk(group, path):
        counts["groups"] += 1
        for name, value in group.attrs.items():
            counts["attributes"] += 1
            assert value is not None, (path, name)
        for name in group:
            member = group[name]
            member_path = f"{path}/{name}"
            if isinstance(member, h5pyd.Group):
                walk(member, member_path)
                continue
            counts["datasets"] += 1
            for _ in member.attrs.items():
                counts["attributes"] += 1
            node = state
            for part in member_path.strip("/").split("/"):
                node = step(node, part)
            if node is None:
                # Only what JSON leaves out: the frames kept for display.
                assert name == "pixels", member_path
                continue
            compare(member_path, member, node)
            counts["compared"] += 1

    walk(f, "")
    print(f"walked: {counts}")
    assert counts["compared"] > 50, counts

    beam = f["beam"]
    assert text(beam.attrs["NX_class"]) == "NXdata" and text(beam.attrs["signal"]).startswith("values/")
    assert text(f.attrs["default"]) in f
    events = beam["event_number"]
    whole = np.array(state["beam"]["event_number"], dtype=np.int64)
    assert events.dtype == np.int64
    assert np.array_equal(events[2:17:3], whole[2:17:3])
    assert np.array_equal(events[-5:], whole[-5:])
    assert int(events[3]) == whole[3]
    column = text(beam.attrs["signal"])
    values = np.array([np.nan if v is None else v for v in state["beam"]["values"][column.split("/")[1]]])
    assert beam[column].dtype == np.float64
    assert np.array_equal(beam[column][1:9], values[1:9], equal_nan=True)
    local = beam["time_local"]
    assert [text(v) for v in local[1:4]] == state["beam"]["time_local"][1:4]
    print(f"slices: int {events.shape}, float {column}, strings time_local")

    image = f["otr2_image"]
    assert text(image.attrs["signal"]) == "pixels"
    pixels = image["pixels"]
    rows, columns = state["otr2_image"]["shape"]
    assert pixels.shape == (rows, columns) and pixels.dtype == np.float32, pixels
    frame = pixels[...]
    corner = pixels[10:20:2, 30:40]
    assert np.array_equal(corner, frame[10:20:2, 30:40])
    assert float(np.nanmax(frame)) == state["otr2_image"]["max"], (np.nanmax(frame), state["otr2_image"]["max"])
    print(f"image: pixels {pixels.shape} {pixels.dtype}, max {np.nanmax(frame)}")
    f.close()


def main():
    endpoint = sys.argv[1]
    print(f"h5pyd {h5pyd.__version__}")
    check_growth(endpoint)
    check_final(endpoint)


if __name__ == "__main__":
    main()
