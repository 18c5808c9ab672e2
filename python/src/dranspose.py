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


_new = object.__new__
_set = object.__setattr__
_EVENT_FIELDS = frozenset(("event_number", "streams"))
_STREAM_FIELDS = frozenset(("typ", "frames"))
_RESULT_FIELDS = frozenset(("event_number", "worker", "parameters_hash", "payload"))


def _construct(cls, fields, fields_set):
    """A pydantic model with these fields, set as pydantic's own model_construct sets them
    (beamflow checked their types already): a real instance of dranspose's class, built in a
    tenth of the time validation takes, which is most of the framework's share of a small
    event."""
    model = _new(cls)
    _set(model, "__dict__", fields)
    _set(model, "__pydantic_fields_set__", fields_set)
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def event(number, streams):
    """EventData from (name, typ, [buffer, ...]) triples: each frame copied once into a Frame."""
    return _construct(EventData, {
        "event_number": number,
        "streams": {name: _construct(StreamData, {"typ": typ, "frames": [Frame(f) for f in frames]},
                                     _STREAM_FIELDS)
                    for name, typ, frames in streams},
    }, _EVENT_FIELDS)


def reducer(cls, parameters, context):
    """A reducer instance, as dranspose makes one at each new mapping (scan)."""
    state = ReducerState(url="tcp://localhost:10200", dranspose_version="beamflow")
    return cls(parameters=parameters, context=context, state=state)


def result(number, analysis, worker, payload):
    """dranspose's ResultData around a worker's return value."""
    return _construct(ResultData, {"event_number": number, "worker": worker,
                                   "parameters_hash": None, "payload": payload}, _RESULT_FIELDS)


def lean_reducer(cls, parameters, context):
    """beamflow's contract: no dranspose state."""
    return cls(parameters=parameters, context=context)


def lean_result(number, analysis, worker, payload):
    """beamflow's contract: a result is a plain dict."""
    return {"event_number": number, "analysis": analysis, "worker": worker, "payload": payload}


def publish(instance):
    """The reducer's `publish`, under its `publish_rlock` when it has one, as dranspose's
    server reads it; the caller converts it before the lock is let go."""
    lock = getattr(instance, "publish_rlock", None)
    return getattr(instance, "publish", None), lock
