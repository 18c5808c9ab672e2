"""dranspose worker/reducer doing what beamflow's examples/pipeline.toml does, for a like-for-like
benchmark: per STINS image shape, sum, mean, min and max (numpy), then a history of mean and max
and the latest statistics. Uses only dranspose's public parser and numpy; no dranspose code."""
import numpy as np
from dranspose.data.stream1 import Stream1Data
from dranspose.middlewares.stream1 import parse


class StatsWorker:
    def __init__(self, *args, **kwargs):
        pass

    def process_event(self, event, parameters=None, tick=False, *args, **kwargs):
        data = event.streams.get("det")
        if data is None:
            return None
        packet = parse(data)
        if not isinstance(packet, Stream1Data):
            return None
        image = np.asarray(packet.data)
        total = float(image.sum(dtype=np.uint64))
        return {"frame": packet.frame, "shape": list(image.shape), "sum": total,
                "mean": total / image.size, "min": float(image.min()), "max": float(image.max())}

    def finish(self, parameters=None):
        pass


class HistoryReducer:
    def __init__(self, *args, **kwargs):
        self.publish = {"history": {"event_number": [], "det_mean": [], "det_max": []}, "last": {}}

    def process_result(self, result, parameters=None):
        history = self.publish["history"]
        history["event_number"].append(result.event_number)
        history["det_mean"].append(result.payload["mean"])
        history["det_max"].append(result.payload["max"])
        self.publish["last"] = result.payload

    def finish(self, parameters=None):
        pass
