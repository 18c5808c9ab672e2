"""A p4p (pvxs) server for the client's peer tests: counters posted at 10 Hz as NTScalar,
NTScalarArray and a 1392x1040 u16 NTNDArray, an NTEnum and an NTTable to read, and a writable
SharedPV that refuses negative values. Loopback only; prints its ports as one JSON line.

Usage: client_server.py TCP_PORT UDP_PORT [images]   (port 0: any free one; the image is
posted only with "images": building it ten times a second costs a core's fair share)
"""

import json
import sys
import threading
import time

import numpy
from p4p.nt import NTEnum, NTNDArray, NTScalar, NTTable
from p4p.server import Server
from p4p.server.thread import SharedPV

tcp_port = sys.argv[1] if len(sys.argv) > 1 else "0"
udp_port = sys.argv[2] if len(sys.argv) > 2 else "0"
post_images = "images" in sys.argv[3:]

scalar = SharedPV(nt=NTScalar("d", display=True, control=True), initial=0.0)
array = SharedPV(nt=NTScalar("ad"), initial=numpy.zeros(8))
image_nt = NTNDArray()
image = numpy.zeros((1040, 1392), dtype=numpy.uint16)
# No nt: posts are whole Values (with uniqueId set), not arrays to wrap.
ndarray = SharedPV(initial=image_nt.wrap(image))
enum = SharedPV(nt=NTEnum(), initial={"index": 1, "choices": ["off", "on", "standby"]})
table_nt = NTTable(columns=[("name", "s"), ("x", "d")])
table = SharedPV(
    nt=table_nt,
    initial=table_nt.wrap([{"name": "a", "x": 1.5}, {"name": "b", "x": 2.5}]),
)


class Refusing:
    """Accepts non-negative values, refuses the others with a message."""

    def put(self, pv, op):
        value = op.value()
        if float(value) < 0:
            op.done(error="negative values are refused")
            return
        pv.post(value)
        op.done()


writable = SharedPV(nt=NTScalar("d"), initial=0.0, handler=Refusing())

providers = {
    "t:scalar": scalar,
    "t:array": array,
    "t:image": ndarray,
    "t:enum": enum,
    "t:table": table,
    "t:put": writable,
}
server = Server(
    providers=[providers],
    conf={
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_SERVER_PORT": tcp_port,
        "EPICS_PVAS_BROADCAST_PORT": udp_port,
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
    },
    useenv=False,
)
conf = server.conf()
print(
    json.dumps(
        {"tcp": int(conf["EPICS_PVAS_SERVER_PORT"]), "udp": int(conf["EPICS_PVAS_BROADCAST_PORT"])}
    ),
    flush=True,
)

counter = 1


def post_forever():
    global counter
    period = 0.1
    next_at = time.monotonic()
    while True:
        scalar.post(float(counter))
        array.post(numpy.full(8, float(counter)))
        if post_images:
            image[0, 0] = counter & 0xFFFF
            value = image_nt.wrap(image)
            value["uniqueId"] = counter
            ndarray.post(value)
        counter += 1
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))


threading.Thread(target=post_forever, daemon=True).start()
try:
    # Runs until stdin closes (the test ends) or the process is killed.
    sys.stdin.read()
finally:
    server.stop()
