"""A p4p (pvxs) client for server_peers.rs: one command, its results as JSON lines on stdout.

    server_peers.py ADDR_LIST BROADCAST_PORT get NAME [REQUEST]
      (ADDR_LIST tcp:HOST:PORT: search that name server over TCP instead)
    server_peers.py ADDR_LIST BROADCAST_PORT monitor COUNT REQUEST NAME:FIELD [NAME:FIELD ...]
    server_peers.py ADDR_LIST BROADCAST_PORT put NAME VALUE
    server_peers.py ADDR_LIST BROADCAST_PORT serve NAME   (a p4p server on BROADCAST_PORT)
"""

import json
import sys
import threading

import numpy


def summary(obj):
    """JSON for a p4p value: arrays as their length, ends and dtype."""
    if isinstance(obj, dict):
        return {k: summary(v) for k, v in obj.items()}
    if isinstance(obj, numpy.ndarray):
        flat = obj.ravel()
        return {
            "len": int(flat.size),
            "first": flat[0].item() if flat.size else None,
            "last": flat[-1].item() if flat.size else None,
            "dtype": str(obj.dtype),
        }
    if isinstance(obj, (list, tuple)):
        return [summary(v) for v in obj]
    if isinstance(obj, numpy.generic):
        return obj.item()
    return obj


def emit(**fields):
    print(json.dumps(fields), flush=True)


def main():
    addr_list, port, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    conf = {
        "EPICS_PVA_ADDR_LIST": addr_list,
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_BROADCAST_PORT": port,
    }
    if addr_list.startswith("tcp:"):
        # Search over TCP only, the server acting as a name server.
        conf["EPICS_PVA_NAME_SERVERS"] = addr_list[4:]
        conf["EPICS_PVA_ADDR_LIST"] = ""

    if cmd == "serve":
        return serve(port, args[0])
    from p4p.client.thread import Context

    raw = Context("pva", conf=conf, useenv=False, nt=False)
    if cmd == "get":
        request = args[1] if len(args) > 1 else None
        value = raw.get(args[0], request=request, timeout=10)
        emit(id=value.getID(), keys=list(value.keys()), value=summary(value.todict()))
    elif cmd == "monitor":
        count, request, specs = int(args[0]), args[1] or None, args[2:]
        done = threading.Event()
        seen = {}
        lock = threading.Lock()

        def watch(name, field):
            def cb(value):
                if isinstance(value, Exception):
                    return
                with lock:
                    got = seen.setdefault(name, [])
                    if len(got) < count:
                        got.append(summary(value.todict()[field] if field else value.todict()))
                    if len(seen) == len(specs) and all(len(v) >= count for v in seen.values()):
                        done.set()

            return cb

        subs = []
        for spec in specs:
            name, _, field = spec.rpartition(":")
            subs.append(raw.monitor(name, watch(name, field), request=request))
        finished = done.wait(60)
        for s in subs:
            s.close()
        emit(complete=finished, seen=seen)
    elif cmd == "put":
        ctx = Context("pva", conf=conf, useenv=False)
        try:
            ctx.put(args[0], float(args[1]), timeout=10)
            emit(ok=True)
        except Exception as error:  # the refusal is what the test looks at
            emit(ok=False, error=str(error))
    raw.close()


def serve(port, name):
    from p4p.nt import NTScalar
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    pv = SharedPV(nt=NTScalar("d"), initial=7.5)
    conf = {
        "EPICS_PVAS_INTF_ADDR_LIST": "0.0.0.0",
        "EPICS_PVAS_SERVER_PORT": "0",
        "EPICS_PVAS_BROADCAST_PORT": port,
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
    }
    with Server(providers=[{name: pv}], conf=conf, useenv=False):
        emit(serving=name)
        # Until the test closes stdin.
        sys.stdin.read()


if __name__ == "__main__":
    main()
