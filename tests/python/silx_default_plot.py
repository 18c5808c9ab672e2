"""Opens beamflow's state with silx, headless, as `silx view http://HOST:PORT/` would, and checks
that the NeXus default plot is found: the root's `default` names an NXdata whose signal and axis
silx resolves, and the image is a valid 2-D NXdata. With accumulators named, checks instead that
each one's own `default` is a valid NXdata with a point per row of its JSON view (a quad scan's
steps).

    silx_default_plot.py http://HOST:PORT/ [ACCUMULATOR ...]
"""

import json
import sys
import urllib.request

import silx.io
import silx.io.nxdata as nxdata


def check_accumulator(f, state, name):
    plot = nxdata.get_default(f[name])
    assert plot is not None and plot.is_valid, f"{name}: no default plot"
    member = plot.group.name.strip("/").split("/")[-1]
    rows = len(state[name][member])
    assert plot.signal.shape == (rows,), (name, plot.signal.shape, rows)
    assert len(plot.axes) == 1 and plot.axes[0].shape == (rows,), (name, plot.axes_dataset_names)
    print(f"{name}: plot {plot.group.name}, {plot.signal_name} against {plot.axes_dataset_names[0]}, {rows} points")


def main():
    endpoint = sys.argv[1]
    with urllib.request.urlopen(endpoint.rstrip("/") + "/api/v1/result", timeout=30) as response:
        state = json.load(response)
    f = silx.io.open(endpoint)
    if len(sys.argv) > 2:
        for name in sys.argv[2:]:
            check_accumulator(f, state, name)
        return
    default = nxdata.get_default(f)
    assert default is not None and default.is_valid, "no default plot"
    name = default.group.name.strip("/")
    rows = len(state[name]["event_number"])
    assert default.signal.shape == (rows,), (default.signal.shape, rows)
    assert default.axes_dataset_names == ["event_number"], default.axes_dataset_names
    print(f"default plot: /{name}, signal {default.signal_name} {default.signal.shape}, axes {default.axes_names}")
    image = nxdata.NXdata(f["otr2_image"])
    assert image.is_valid and image.signal_is_2d, image.issues
    print(f"image: {image.signal.shape}")


if __name__ == "__main__":
    main()
