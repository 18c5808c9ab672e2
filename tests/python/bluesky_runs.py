"""A real RunEngine (bluesky, ophyd's simulated hardware) publishing through bluesky's own 0MQ
Proxy, or through bluesky-kafka to a Kafka broker, for tests/bluesky.rs.

Usage: bluesky_runs.py zmq IN_PORT OUT_PORT
       bluesky_runs.py kafka BOOTSTRAP TOPIC CONTROL_TOPIC before|live

zmq: it prints one JSON line per event on stdout:

- {"proxy": "ready"} once the proxy runs;
- {"joined": uid} while the first run, which the pipeline joins mid-run, goes on: it ends when
  a line "go" comes on stdin;
- {"run": {...}} per later run: its uid, plan, exit status, every event's readings of each
  stream, and bluesky's own PeakStats (with and without edge_count, derivative stats too) of
  each plotted field, computed by bluesky's callback subscribed to the same RunEngine;
- {"done": true} at the end.

The last two runs are bracketed by BMM's control messages, as BMM's plans send them: a
`linescan` and an `xafsscan` (start ... stop), then `close`.

kafka: as NSLS-II publishes (bluesky-kafka's Publisher, msgpack with msgpack-numpy, the run's
start uid as the key, flushed at each stop; BMM's control messages on their own topic).
`before` creates the topics and publishes a `scan`; `live` a `count` of an inline image and a
BMM `linescan` around a `rel_scan`. Each prints {"run": {...}} per run and {"done": true}.
"""

import json
import sys
import threading

import msgpack_numpy
import numpy as np
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky import preprocessors as bpp
from bluesky.callbacks.fitting import PeakStats
from bluesky.callbacks.zmq import Proxy, Publisher
from bluesky.utils import RequestAbort
from ophyd.sim import det, det4, direct_img, motor, motor1, motor2, motor3


def say(**line):
    print(json.dumps(line, default=plain), flush=True)


def plain(value):
    """numpy's values as JSON, to the last bit (`repr` of a float round-trips)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def json_serializer(document):
    return json.dumps(document, default=plain).encode()


class Recorder:
    """Every document of each run, as the RunEngine made it."""

    def __init__(self):
        self.runs = {}
        self.streams = {}

    def __call__(self, name, doc):
        if name == "start":
            self.runs[doc["uid"]] = {"uid": doc["uid"], "plan": doc.get("plan_name"),
                                     "streams": {}}
        elif name == "descriptor":
            self.streams[doc["uid"]] = (doc["run_start"], doc.get("name", "primary"))
        elif name == "event":
            run, stream = self.streams[doc["descriptor"]]
            rows = self.runs[run]["streams"].setdefault(stream, [])
            rows.append({"seq_num": doc["seq_num"], "data": doc["data"]})
        elif name == "stop":
            run = self.runs[doc["run_start"]]
            run["exit_status"] = doc["exit_status"]
            run["num_events"] = doc.get("num_events")


RE = RunEngine(context_managers=[])
recorder = Recorder()
RE.subscribe(recorder)


def peak_stats(fields, x):
    """bluesky's PeakStats per field, with and without edge_count, for the next run."""
    callbacks = {}
    for field in fields:
        for edge_count in (None, 3):
            callbacks[(field, edge_count)] = PeakStats(
                x, field, edge_count=edge_count, calc_derivative_and_stats=True)
    return callbacks


def stats_json(callback):
    def fields(stats):
        if stats is None:
            return None
        return {key: getattr(stats, key) for key in
                ("com", "cen", "max", "min", "crossings", "fwhm", "lin_bkg")}
    return {"stats": fields(callback.stats), "derivative": fields(callback.derivative_stats)}


def run(plan, fields=(), x=None):
    callbacks = peak_stats(fields, x) if x else {}
    tokens = [RE.subscribe(callback) for callback in callbacks.values()]
    try:
        (uid,) = RE(plan)
    except RequestAbort:
        uid = list(recorder.runs)[-1]
    for token in tokens:
        RE.unsubscribe(token)
    result = recorder.runs[uid]
    result["peak_stats"] = {
        f"{field}/{edge_count or 0}": stats_json(callback)
        for (field, edge_count), callback in callbacks.items()
    }
    say(run=result)



def kafka(bootstrap, topic, control_topic, phase):
    from bluesky_kafka import Publisher as KafkaPublisher
    from confluent_kafka.admin import AdminClient, NewTopic

    if phase == "before":
        admin = AdminClient({"bootstrap.servers": bootstrap})
        created = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)
                                       for name in (topic, control_topic)])
        for future in created.values():
            future.result(timeout=30)

    def per_run(name, doc):
        # NSLS-II's convention: one Publisher per run, keyed by its start uid, flushed at stop.
        if name == "start":
            per_run.publisher = KafkaPublisher(topic, bootstrap, key=doc["uid"],
                                               producer_config={"acks": "all"},
                                               flush_on_stop_doc=True)
        per_run.publisher(name, doc)

    RE.subscribe(per_run)
    control = KafkaPublisher(control_topic, bootstrap, key="bmm", producer_config={"acks": "all"})
    if phase == "before":
        run(bp.scan([det], motor, -5, 5, 21), ["det"], "motor")
    else:
        run(bp.count([direct_img], 2))
        control("bmm", {"linescan": "start", "motor": "motor", "detector": "det",
                        "fluo_detector": None})
        control.flush()
        run(bp.rel_scan([det], motor, -1, 1, 11), ["det"], "motor")
        control("bmm", {"linescan": "stop"})
        control.flush()
    say(done=True)


def zmq_runs(in_port, out_port):
    proxy = Proxy(f"127.0.0.1:{in_port}", f"127.0.0.1:{out_port}")
    threading.Thread(target=proxy.start, daemon=True).start()
    say(proxy="ready")

    publisher = RE.subscribe(Publisher(f"127.0.0.1:{in_port}", serializer=json_serializer))
    # The msgpack Publisher, connected now: a PUB socket's first messages go nowhere until its
    # connection to the proxy is up, which is long done when the runs switch to it.
    bmm = Publisher(f"127.0.0.1:{in_port}", serializer=msgpack_numpy.packb)

    # The run the pipeline joins: it counts until told to stop.
    go = threading.Event()


    def until_go():
        @bpp.run_decorator(md={"purpose": "joined mid-run"})
        def counting():
            while not go.is_set():
                yield from bps.trigger_and_read([det])
                yield from bps.sleep(0.02)
        yield from counting()

    def read_go():
        for line in sys.stdin:
            if line.strip() == "go":
                go.set()
                return

    threading.Thread(target=read_go, daemon=True).start()
    RE.subscribe(lambda name, doc: say(joined=doc["uid"]) if name == "start" and not go.is_set()
                 else None)
    RE(until_go())

    motor.set(0)
    run(bp.scan([det], motor, -5, 5, 21), ["det"], "motor")
    run(bp.rel_scan([det], motor, -1, 1, 11), ["det"], "motor")
    run(bp.count([det], 5))

    # msgpack with msgpack-numpy from here on, as the README recommends.
    RE.unsubscribe(publisher)
    publisher = RE.subscribe(bmm)
    run(bp.grid_scan([det4], motor1, -1.5, 1.5, 4, motor2, -0.1, 0.1, 3, snake_axes=True))
    run(bp.count([direct_img], 2))

    def abort_above_zero(detectors, step, pos_cache):
        if step[motor] > 0:
            raise RequestAbort("aborted by the test above motor 0")
        yield from bps.one_1d_step(detectors, motor, step[motor])

    baseline = bpp.SupplementalData(baseline=[motor3])
    RE.preprocessors.append(baseline)
    run(bp.scan([det], motor, -2, 2, 9, per_step=abort_above_zero), ["det"], "motor")
    run(bp.scan([det], motor, -2, 2, 9), ["det"], "motor")
    RE.preprocessors.remove(baseline)

    # BMM's plans: control messages around ordinary scans ("bmm" beside the documents).
    bmm("bmm", {"linescan": "start", "motor": "motor", "detector": "det", "fluo_detector": None})
    run(bp.rel_scan([det], motor, -1, 1, 11), ["det"], "motor")
    bmm("bmm", {"linescan": "stop", "fname": "line"})
    bmm("bmm", {"xafsscan": "start", "element": "Fe", "edge": "K", "mode": "transmission",
                "filename": "FeS2", "repetitions": 1, "sample": "pyrite"})
    run(bp.scan([det], motor, 1, 3, 7), ["det"], "motor")
    bmm("bmm", {"xafsscan": "stop", "filename": "FeS2"})
    bmm("bmm", {"close": "all"})
    say(done=True)


if sys.argv[1] == "zmq":
    zmq_runs(sys.argv[2], sys.argv[3])
else:
    kafka(*sys.argv[2:6])
