"""A worker for a step scan with two area detectors and contrast's scan messages.

Streams (as the ingesters name them):
- `contrast` (typ `contrast`): the scan's start (motor and path in it), one message per point
  (the motor's position and the monitor `i0`), and the end;
- `pilatus` (typ `STINS`): uncompressed images, parsed by dranspose's stream1 parser;
- `eiger` (typ `STINS`): bslz4-compressed images, which the parser leaves compressed.

Per image event the worker returns a `Result` with each detector's thresholded ROI (cropped),
its sum and its count of hits. The start and end events give `Start` and `End`.
"""
import io
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import h5py
import hdf5plugin
import numpy as np
import zmq
from dranspose.data.contrast import ContrastFinished, ContrastRunning, ContrastStarted
from dranspose.data.stream1 import Stream1Data, Stream1End, Stream1Start
from dranspose.event import EventData
from dranspose.middlewares import contrast, stream1
from dranspose.parameters import (
    BinaryParameter,
    BoolParameter,
    FloatParameter,
    IntParameter,
    StrParameter,
)

logger = logging.getLogger(__name__)

DETECTORS = ("pilatus", "eiger")

# The longest side of a preview image; larger frames are subsampled to it.
PREVIEW_SIDE = 256


@dataclass
class Start:
    scannr: int
    motor: str
    path: str
    description: str
    # Motor positions and settings contrast recorded at the start.
    snapshot: dict[str, float] = field(default_factory=dict)
    # Detector stream -> the file the detector writes, from its stream1 header.
    filenames: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    frame: int
    position: float
    monitor: float
    # Per detector: the thresholded, scaled ROI, its sum (normalised by the monitor if asked),
    # and how many pixels of the whole frame are above the threshold.
    roi: dict[str, np.ndarray] = field(default_factory=dict)
    roi_sum: dict[str, float] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    # Per detector, a subsampled raw frame, on the first image after a tick.
    preview: Optional[dict[str, np.ndarray]] = None


@dataclass
class End:
    scannr: int
    # Detector stream -> the msg_number of its series_end.
    last_message: dict[str, int] = field(default_factory=dict)


class Bslz4:
    """Decompresses Dectris bslz4 frames (the HDF5 bitshuffle filter's chunk format, 12-byte
    header included) with hdf5plugin's filter through an in-memory HDF5 file, so no separate
    bitshuffle package is needed."""

    def __init__(self) -> None:
        self._file = h5py.File(io.BytesIO(), "w")
        self._datasets: dict[tuple, h5py.Dataset] = {}

    def decompress(self, buffer: bytes, shape: list[int], dtype: str) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        dataset = self._datasets.get(key)
        if dataset is None:
            dataset = self._file.create_dataset(
                f"d{len(self._datasets)}",
                shape=tuple(shape),
                dtype=dtype,
                chunks=tuple(shape),
                **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"),
            )
            self._datasets[key] = dataset
        dataset.id.write_direct_chunk((0,) * len(shape), buffer)
        image = np.empty(shape, dtype=dtype)
        dataset.read_direct(image)
        return image

    def close(self) -> None:
        self._file.close()


def frame_bytes(frame) -> bytes:
    # Live dranspose hands zmq.Frames, a replay from dumps hands bytes.
    return frame.bytes if isinstance(frame, zmq.Frame) else frame


def roi_from(parameters) -> Optional[list[int]]:
    """The ROI `[y0, y1, x0, x1]` from the binary parameter's JSON, or None for the whole frame."""
    data = parameters["roi"].data
    if not data:
        return None
    roi = json.loads(data)
    return [int(v) for v in roi]


class ImagingWorker:
    def __init__(self, parameters=None, context=None, state=None, **kwargs):
        # The scan's metadata, known once contrast's start message has been seen.
        self.motor: Optional[str] = None
        self.path: Optional[str] = None
        self.scannr: Optional[int] = None
        self.filenames: dict[str, str] = {}
        # A tick on an event without images: the next image event carries the preview.
        self.preview_pending = False
        # The decompressor lives as long as the process, as sockets do in real payloads.
        if context is not None:
            self.bslz4 = context.setdefault("bslz4", Bslz4())
        else:
            self.bslz4 = Bslz4()

    @staticmethod
    def describe_parameters():
        return [
            IntParameter(name="threshold", description="counts at or below are not hits", default=0),
            FloatParameter(name="gain", description="counts per ADU", default=1.0),
            BoolParameter(name="normalise", description="divide ROI sums by the monitor"),
            BinaryParameter(name="roi", description="JSON [y0, y1, x0, x1]; empty: whole frame"),
            StrParameter(name="monitor", description="contrast's counter to normalise by", default="i0"),
        ]

    def get_tick_interval(self, parameters) -> float:
        # Long: one preview per scan (the first image), so runs are reproducible.
        return 3600.0

    def image(self, name: str, event: EventData):
        """The detector's packet, with `.data` decompressed if it came compressed."""
        stream = event.streams[name]
        packet = stream1.parse(stream)
        if isinstance(packet, Stream1Data) and packet.compression == "bslz4":
            packet.data = self.bslz4.decompress(
                frame_bytes(stream.frames[1]), packet.shape, packet.type
            )
        return packet

    def process_event(self, event: EventData, parameters=None, tick=False, *args, **kwargs):
        if tick:
            self.preview_pending = True
        packets = {name: self.image(name, event) for name in DETECTORS if name in event.streams}
        meta = contrast.parse(event.streams["contrast"]) if "contrast" in event.streams else None

        for name, packet in packets.items():
            if isinstance(packet, Stream1Start):
                self.filenames[name] = packet.filename
        if isinstance(meta, ContrastStarted):
            # "ascan samx 0 1 40 0.1": the scanned motor is the first argument.
            self.motor = meta.description.split()[1]
            self.path = meta.path
            self.scannr = meta.scannr
            logger.info("scan %d moves %s, data in %s", self.scannr, self.motor, self.path)
            return Start(
                scannr=meta.scannr,
                motor=self.motor,
                path=meta.path,
                description=meta.description,
                snapshot=dict(getattr(meta, "snapshot", None) or {}),
                filenames=dict(self.filenames),
            )
        if isinstance(meta, ContrastFinished):
            return End(
                scannr=meta.scannr,
                last_message={
                    name: packet.msg_number
                    for name, packet in packets.items()
                    if isinstance(packet, Stream1End)
                },
            )
        if not isinstance(meta, ContrastRunning) or self.motor is None:
            return None

        position = float(getattr(meta, self.motor))
        monitor = float(getattr(meta, parameters["monitor"].value))
        threshold = parameters["threshold"].value
        gain = parameters["gain"].value
        roi = roi_from(parameters)
        result = Result(frame=-1, position=position, monitor=monitor)
        for name, packet in packets.items():
            if not isinstance(packet, Stream1Data):
                continue
            image = packet.data
            result.frame = packet.frame
            above = image > threshold
            result.hits[name] = int(np.count_nonzero(above))
            counts = np.where(above, image, 0).astype(np.float64) * gain
            cut = counts if roi is None else counts[roi[0] : roi[1], roi[2] : roi[3]]
            total = float(cut.sum())
            if parameters["normalise"].value:
                # A beam loss gives a zero monitor: no meaningful value for this point.
                total = total / monitor if monitor != 0 else math.nan
            result.roi[name] = cut
            result.roi_sum[name] = total
        if self.preview_pending and result.roi:
            result.preview = {}
            for name, packet in packets.items():
                if isinstance(packet, Stream1Data):
                    step = max(1, -(-max(packet.data.shape) // PREVIEW_SIDE))
                    result.preview[name] = packet.data[::step, ::step].copy()
            self.preview_pending = False
        return result

    def finish(self, parameters=None):
        logger.info("scan %s done", self.scannr)

    def close(self, context):
        bslz4 = context.pop("bslz4", None)
        if bslz4 is not None:
            bslz4.close()
