"""The shared peer payload (../shared/peers/dranspose/payload.py: SumWorker, SumReducer), timed
from inside, identically under `beamflow replay` and `dranspose replay`.

TimedWorker and TimedReducer call the real SumWorker.process_event and SumReducer.process_result
and add up the seconds spent in them (time.perf_counter around each call); the reducer's
`finish` prints one line `TIMED {json}` with those sums, the span from the first
process_event call to `finish` (the framework's and the payload's time together, without
interpreter start, imports or reading the parameters), and the publish (count, total), so the
two systems are compared on equal work. NoopWorker replaces the worker's work by returning 0.0
at once: what is left is the framework's floor per event.

Worker and reducer run in one process in both replays (one interpreter), so the sums live in
this module. The peers' folder is found beside the project (../shared/peers/dranspose) or at
$DRANSPOSE_PEERS.
"""
import json
import os
import sys
import time
from pathlib import Path

_PEERS = Path(os.environ.get("DRANSPOSE_PEERS")
              or Path(__file__).resolve().parent.parent.parent / "shared" / "peers" / "dranspose")
if str(_PEERS) not in sys.path:
    sys.path.append(str(_PEERS))

from payload import SumReducer, SumWorker  # noqa: E402

_clock = {"worker_s": 0.0, "reducer_s": 0.0, "events": 0, "results": 0, "first": None}


class TimedWorker(SumWorker):
    def process_event(self, event, parameters=None, tick=False, *args, **kwargs):
        start = time.perf_counter()
        if _clock["first"] is None:
            _clock["first"] = start
        result = self._work(event, parameters, tick, *args, **kwargs)
        _clock["worker_s"] += time.perf_counter() - start
        _clock["events"] += 1
        return result

    def _work(self, event, parameters, tick, *args, **kwargs):
        return SumWorker.process_event(self, event, parameters, tick, *args, **kwargs)


class NoopWorker(TimedWorker):
    """A result (0.0) for each image, as many as SumWorker gives, and no other work."""

    def _work(self, event, parameters, tick, *args, **kwargs):
        stream = event.streams.get("det")
        return 0.0 if stream is not None and len(stream.frames) == 2 else None


class TimedReducer(SumReducer):
    def process_result(self, result, parameters=None):
        start = time.perf_counter()
        SumReducer.process_result(self, result, parameters)
        _clock["reducer_s"] += time.perf_counter() - start
        _clock["results"] += 1

    def finish(self, parameters=None):
        end = time.perf_counter()
        first = _clock["first"] if _clock["first"] is not None else end
        line = dict(_clock, span_s=end - first, count=self.publish["count"],
                    total=self.publish["total"])
        line.pop("first")
        print("TIMED " + json.dumps(line), flush=True)
