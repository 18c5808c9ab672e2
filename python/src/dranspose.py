"""beamflow's side of a dranspose payload: the objects dranspose 0.2.0 hands a worker or a
reducer, built from what beamflow's Rust worker received, so a payload runs unchanged.

Loaded by beamflow (python/src/dranspose.rs) into the payload's own interpreter, where
dranspose is installed: payloads import its parsers and models anyway.
"""

from dranspose.event import EventData, ResultData, StreamData
from dranspose.protocol import ReducerState, WorkerName, WorkerState, WorkParameter



class Frame(bytes):
    """A received frame as payloads use it: `bytes` (dranspose's replay gives bytes), with
    `.bytes` as a live `zmq.Frame` has, and `.buffer` for a memoryview."""

    __slots__ = ()

    @property
    def bytes(self):
        return self

    @property
    def buffer(self):
        return memoryview(self)


def parameters(items, lean):
    """{name: WorkParameter} from (name, data, value) triples, as dranspose's controller
    resolves them (value typed by its description); {name: value} for beamflow's contract."""
    if lean:
        return {name: value for name, _, value in items}
    return {name: WorkParameter(name=name, data=data, value=value) for name, data, value in items}


def worker(cls, parameters, context, name):
    """A worker instance, as dranspose makes one at each new mapping (scan)."""
    return cls(parameters=parameters, context=context, state=WorkerState(name=WorkerName(name)))


def event(number, streams):
    """EventData from (name, typ, [buffer, ...]) triples: each frame copied once into a Frame."""
    # Validated, as dranspose builds them: pydantic's validation (in Rust) takes a third of
    # the time of its model_construct (in Python).
    return EventData(
        event_number=number,
        streams={name: StreamData(typ=typ, frames=[Frame(f) for f in frames])
                 for name, typ, frames in streams},
    )


def process_event(instance, event, parameters, tick):
    """dranspose calls it positionally, with three arguments."""
    return instance.process_event(event, parameters, tick)


def reducer(cls, parameters, context):
    """A reducer instance, as dranspose makes one at each new mapping (scan)."""
    state = ReducerState(url="tcp://localhost:10200", dranspose_version="beamflow")
    return cls(parameters=parameters, context=context, state=state)


def result(number, analysis, worker, payload):
    """dranspose's ResultData around a worker's return value."""
    return ResultData(event_number=number, worker=worker, parameters_hash=None, payload=payload)


def lean_reducer(cls, parameters, context):
    """beamflow's contract: no dranspose state."""
    return cls(parameters=parameters, context=context)


def lean_result(number, analysis, worker, payload):
    """beamflow's contract: a result is a plain dict."""
    return {"event_number": number, "analysis": analysis, "worker": worker, "payload": payload}


def process_result(instance, result, parameters):
    return instance.process_result(result, parameters)


def publish(instance):
    """The reducer's `publish`, under its `publish_rlock` when it has one, as dranspose's
    server reads it; the caller converts it before the lock is let go."""
    lock = getattr(instance, "publish_rlock", None)
    return getattr(instance, "publish", None), lock
