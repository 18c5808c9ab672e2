"""The reducer for `src.worker:ImagingWorker`: a scan's motor positions, ROI sums and ROI images
per detector, a preview, and an HDF5 file of them at the end.

`publish` is what viewers read while the scan runs; `publish_rlock` is held around every change
(dranspose's server holds it while reading, and `timer` runs beside `process_result`).
"""
import json
import logging
import threading

import h5py
import numpy as np
from dranspose.event import ResultData
from dranspose.parameters import StrParameter

from .worker import DETECTORS, End, Result, Start, roi_from

logger = logging.getLogger(__name__)


class ImagingReducer:
    def __init__(self, parameters=None, context=None, state=None, **kwargs):
        self.publish_rlock = threading.RLock()
        self.publish = {
            "scan": {},
            "scans": {},
            "positions": [],
            "monitor": [],
            "roi_sum": {name: [] for name in DETECTORS},
            "hits": {name: [] for name in DETECTORS},
            "roi_image": {},
            "frames": {name: np.int64(0) for name in DETECTORS},
            "preview": None,
            "settings": {},
            "output": {"written": False},
        }

    @staticmethod
    def describe_parameters():
        return [
            StrParameter(name="output_file", description="HDF5 file written at the end; empty: none"),
        ]

    def process_result(self, result: ResultData, parameters=None):
        payload = result.payload
        with self.publish_rlock:
            if isinstance(payload, Start):
                self.publish["scan"] = {
                    "scannr": payload.scannr,
                    "motor": payload.motor,
                    "path": payload.path,
                    "description": payload.description,
                    "filenames": payload.filenames,
                    # None when contrast did not record it.
                    "energy": payload.snapshot.get("energy"),
                    "attenuator": payload.snapshot.get("attenuator1_x"),
                    "finished": False,
                }
                self.publish["scans"][payload.scannr] = payload.motor
            elif isinstance(payload, Result):
                self.publish["positions"].append(payload.position)
                self.publish["monitor"].append(np.float64(payload.monitor))
                for name, total in payload.roi_sum.items():
                    self.publish["roi_sum"][name].append(np.float64(total))
                    self.publish["hits"][name].append(np.int64(payload.hits[name]))
                    self.publish["frames"][name] += 1
                    roi = payload.roi[name]
                    if name in self.publish["roi_image"]:
                        self.publish["roi_image"][name] = self.publish["roi_image"][name] + roi
                    else:
                        self.publish["roi_image"][name] = roi.copy()
                # Keep the earliest preview: with several workers each may send one.
                preview = self.publish["preview"]
                if payload.preview is not None and (
                    preview is None or result.event_number < preview["event_number"]
                ):
                    self.publish["preview"] = {
                        "event_number": result.event_number,
                        "images": payload.preview,
                        "shapes": {name: image.shape for name, image in payload.preview.items()},
                    }
            elif isinstance(payload, End):
                self.publish["scan"]["finished"] = True
                self.publish["scan"]["last_message"] = payload.last_message
            else:
                logger.warning("unexpected result %r from event %d", type(payload), result.event_number)

    def timer(self, parameters=None):
        # Only the settings in force: the same whenever and however often it runs.
        roi = roi_from(parameters)
        with self.publish_rlock:
            self.publish["settings"] = {
                "threshold": parameters["threshold"].value,
                "gain": parameters["gain"].value,
                "normalise": parameters["normalise"].value,
                "monitor": parameters["monitor"].value,
                "roi": tuple(roi) if roi is not None else None,
                "roi_json": parameters["roi"].data,
            }
        return 3600.0

    def finish(self, parameters=None):
        path = parameters["output_file"].value
        if not path:
            return
        with self.publish_rlock:
            scan = self.publish["scan"]
            with h5py.File(path, "w") as f:
                entry = f.create_group("entry")
                for key in ("scannr", "motor", "path", "description"):
                    if key in scan:
                        entry.attrs[key] = scan[key]
                # Where the file goes is not part of what it holds.
                entry.attrs["parameters"] = json.dumps(
                    {
                        name: p.data.decode("utf8", "replace")
                        for name, p in sorted(parameters.items())
                        if name != "output_file"
                    }
                )
                entry.create_dataset("positions", data=np.asarray(self.publish["positions"], dtype=np.float64))
                entry.create_dataset("monitor", data=np.asarray(self.publish["monitor"], dtype=np.float64))
                for name in DETECTORS:
                    group = entry.create_group(name)
                    group.attrs["frames"] = self.publish["frames"][name]
                    group.attrs["filename"] = scan.get("filenames", {}).get(name, "")
                    group.create_dataset("roi_sum", data=np.asarray(self.publish["roi_sum"][name], dtype=np.float64))
                    group.create_dataset("hits", data=np.asarray(self.publish["hits"][name], dtype=np.int64))
                    if name in self.publish["roi_image"]:
                        group.create_dataset(
                            "roi_image", data=self.publish["roi_image"][name], compression="gzip"
                        )
                datasets = []
                f.visititems(lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None)
            self.publish["output"] = {"written": True, "datasets": datasets}
        logger.info("wrote %s", path)
