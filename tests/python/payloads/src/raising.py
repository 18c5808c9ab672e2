"""A payload whose hooks fail now and then, as real ones do (a bad frame, a missing key): the
worker on every 7th event, the reducer on every 5th result and in `finish`. Each failure must be
logged and counted, never stop the scan, and a failed event gives no result.
"""
import logging
import threading
from dataclasses import dataclass

import zmq
from dranspose.event import EventData, ResultData

logger = logging.getLogger(__name__)


@dataclass
class Seen:
    streams: list[str]
    nbytes: int


class RaisingWorker:
    def __init__(self, parameters=None, context=None, state=None, **kwargs):
        self.events = 0

    def process_event(self, event: EventData, parameters=None, tick=False, *args, **kwargs):
        self.events += 1
        if event.event_number % 7 == 3:
            raise ValueError(f"event {event.event_number}: a frame this payload cannot read")
        nbytes = sum(
            len(frame.bytes if isinstance(frame, zmq.Frame) else frame)
            for stream in event.streams.values()
            for frame in stream.frames
        )
        return Seen(streams=sorted(event.streams), nbytes=nbytes)


class RaisingReducer:
    def __init__(self, parameters=None, context=None, state=None, **kwargs):
        self.publish_rlock = threading.Lock()
        self.publish = {"events": [], "nbytes": 0, "finished": False}

    def process_result(self, result: ResultData, parameters=None):
        if result.event_number % 5 == 0:
            raise KeyError(f"result {result.event_number}: no such column")
        seen = result.payload
        if not isinstance(seen, Seen):
            return
        with self.publish_rlock:
            self.publish["events"].append(result.event_number)
            self.publish["nbytes"] += seen.nbytes

    def finish(self, parameters=None):
        with self.publish_rlock:
            self.publish["finished"] = True
        raise RuntimeError("finish: the output folder is not writable")
