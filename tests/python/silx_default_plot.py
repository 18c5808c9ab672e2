"""Opens beamflow's state with silx, headless, as `silx view http://HOST:PORT/` would, and checks
that the NeXus default plot is found: the root's `default` names an NXdata whose signal and axis
silx resolves, and the image is a valid 2-D NXdata.

    silx_default_plot.py http://HOST:PORT/
"""

import json
import sys
import urllib.request

import silx.io
import silx.io.nxdata as nxdata


def main():
    endpoint = sys.argv[1]
    with urllib.request.urlopen(endpoint.rstrip("/") + "/api/v1/result", timeout=30) as response:
        state = json.load(response)
    f = silx.io.open(endpoint)
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
