"""Drives beamflow's collector and processing device over PV Access with p4p, as an FHI
collector client would: prints one JSON line of what it saw, for the Rust test to judge.

Usage: pva_collector.py <search port> <prefix>
"""
import json
import sys
import time

from p4p.client.thread import Context

port, prefix = sys.argv[1], sys.argv[2]
conf = {
    "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{port}",
    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVA_BROADCAST_PORT": port,
}
ctx = Context("pva", conf=conf, useenv=False)
raw = Context("pva", conf=conf, useenv=False, nt=False)


def until(what, probe, seconds=30):
    """Polls `probe` until it answers something true; fails naming `what`."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


seen = {}
seen["state_before"] = str(ctx.get(prefix + "collector:STATE", timeout=10))

# The processing device: the gain is a PV; the result PV follows it.
ctx.put(prefix + "PARAM:qe04_gain", 2.0, timeout=10)
pairs = until(
    "the calibrated value with gain 2",
    lambda: [
        (float(cal), float(raw_in))
        for cal, raw_in in [(ctx.get(prefix + "QE04:CAL"), ctx.get(prefix + "QE04:IN"))]
        if abs(float(cal) - 2.0 * float(raw_in)) < 1e-9 and float(raw_in) != 0.0
    ],
)
seen["calibrated"] = pairs[0]
seen["gain"] = float(ctx.get(prefix + "PARAM:qe04_gain"))

# The collector: choose what to record, enable, read the history back.
ctx.put(prefix + "collector:CONFIG", ["xrms"], timeout=10)
ctx.put(prefix + "collector:ENABLE", True, timeout=10)
until("recording", lambda: str(ctx.get(prefix + "collector:STATE")) == "recording")
history = until("ten samples of xrms", lambda: [h for h in [ctx.get(prefix + "collector:xrms")] if len(h) >= 10])[0]
seen["history"] = {"length": len(history), "first": float(history[0]), "timestamp": history.timestamp}
table = raw.get(prefix + "collector:xrms:TABLE", timeout=10)
seen["table"] = {
    "id": table.getID(),
    "labels": list(table.labels),
    "times": [float(t) for t in table.value.time],
    "severity": [int(s) for s in table.value.severity],
}
seen["config"] = list(ctx.get(prefix + "collector:CONFIG"))
try:
    ctx.get(prefix + "collector:qe04", timeout=1)
    seen["not_recorded"] = False
except Exception:
    seen["not_recorded"] = True

# Export to HDF5, then disable and clear.
ctx.put(prefix + "collector:EXPORT", 1, timeout=10)
until("the export", lambda: int(ctx.get(prefix + "collector:EXPORT")) == 1)
ctx.put(prefix + "collector:ENABLE", False, timeout=10)
until("idle", lambda: str(ctx.get(prefix + "collector:STATE")) == "idle")
ctx.put(prefix + "collector:CLEAR", 1, timeout=10)
until("the cleared history", lambda: len(ctx.get(prefix + "collector:xrms")) == 0)
seen["cleared"] = True

ctx.close()
raw.close()
print(json.dumps(seen))
