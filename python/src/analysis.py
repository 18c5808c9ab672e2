"""beamflow's own contract for Python analyses (`api = "beamflow"`): leaner than dranspose's,
and without copies. Loaded by beamflow (python/src/analysis.rs) into the payload's
interpreter.

    class MyAnalysis:
        def __init__(self, parameters, context): ...
        def process_event(self, event, parameters):
            image = event.streams["det"].image      # read-only numpy view, no copy
            return {"sum": float(image.sum())}      # read by Rust accumulators and the JSON view
"""

import json


class Stream:
    """One stream of an event: its `typ`, its `frames` (read-only buffers over what beamflow
    received), and for a STINS stream its `header` (the JSON part, a dict) and, for an image,
    `frame` (its index) and `image` (a read-only numpy view: decompressed by beamflow if it came
    compressed, never copied)."""

    __slots__ = ("typ", "frames", "frame", "_json", "_pixels", "_dtype", "_shape", "_image")

    def __init__(self, typ, frames, frame=None, json_part=None, pixels=None, dtype=None, shape=None):
        self.typ = typ
        self.frames = frames
        self.frame = frame
        self._json = json_part
        self._pixels = pixels
        self._dtype = dtype
        self._shape = shape
        self._image = None

    @property
    def header(self):
        return None if self._json is None else json.loads(bytes(self._json))

    @property
    def image(self):
        if self._image is None and self._pixels is not None:
            import numpy

            self._image = numpy.frombuffer(self._pixels, dtype=self._dtype).reshape(self._shape)
        return self._image


class Event:
    """An event: its `event_number` and its `streams` by name."""

    __slots__ = ("event_number", "streams")

    def __init__(self, event_number, streams):
        self.event_number = event_number
        self.streams = streams


def analysis(cls, parameters, context):
    return cls(parameters=parameters, context=context)

