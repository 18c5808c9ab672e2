#!/usr/bin/env python3
"""Test images over Channel Access from servers beamflow did not write.

  ca_images.py serve PREFIX   a caproto IOC: PREFIX:Image:ArrayData (640x480 as DBR_SHORT, i.e.
                              big-endian int16 carrying u16 bits), ArraySize0_RBV/ArraySize1_RBV,
                              ArrayCounter_RBV, PREFIX:WAVE (100 doubles) and PREFIX:SCALAR,
                              publishing image n = 1, 2, ... at 5 Hz until killed.
  ca_images.py put PREFIX N [RATE]
                              a caproto client writing images 1..N the same way into an EPICS 7
                              softIoc (whose USHORT waveform it serves as DBR_LONG), RATE per
                              second (default 5; bench/ca_ingest.py asks for 100).

Image n: pixel i = (i * 3 + n * 1000) mod 65536, so a reader can check every pixel, and values
above 32767 show that the u16 bits survive the signed encodings. The port comes from
EPICS_CA_SERVER_PORT; it prints "ready" once serving (or connected).
"""
import sys
import time

import numpy as np

WIDTH, HEIGHT = 640, 480
INDEX = np.arange(WIDTH * HEIGHT, dtype=np.int64)


def image(n):
    return ((INDEX * 3 + n * 1000) % 65536).astype(np.uint16)


def wave(n):
    return (np.arange(100) * 0.5 + n).astype(np.float64)


def serve(prefix):
    from caproto import ChannelType
    from caproto.server import PVGroup, pvproperty, run

    class Camera(PVGroup):
        data = pvproperty(value=image(0).view(np.int16).tolist(), dtype=ChannelType.INT,
                          max_length=WIDTH * HEIGHT, name="Image:ArrayData")
        width = pvproperty(value=WIDTH, name="Image:ArraySize0_RBV")
        height = pvproperty(value=HEIGHT, name="Image:ArraySize1_RBV")
        counter = pvproperty(value=0, name="Image:ArrayCounter_RBV")
        waveform = pvproperty(value=wave(0).tolist(), max_length=100, name="WAVE")
        scalar = pvproperty(value=0.0, name="SCALAR")

        @scalar.startup
        async def scalar(self, instance, async_lib):
            print("ready", flush=True)
            n = 0
            while True:
                await async_lib.library.sleep(0.2)
                n += 1
                await self.counter.write(n)
                await self.waveform.write(wave(n).tolist())
                await self.scalar.write(float(n) / 4)
                await self.data.write(image(n).view(np.int16).tolist())

    run(Camera(prefix=prefix + ":").pvdb, interfaces=["127.0.0.1"])


def put(prefix, count, rate=5.0):
    from caproto.threading.client import Context

    context = Context()
    pvs = context.get_pvs(prefix + ":Image:ArrayData", prefix + ":Image:ArrayCounter_RBV",
                          prefix + ":WAVE", prefix + ":SCALAR", timeout=10)
    for pv in pvs:
        pv.wait_for_connection(timeout=10)
    print("ready", flush=True)
    data, counter, waveform, scalar = pvs
    # Rendered once (the writer keeps up at 100 per second); image n is image n for n < 64.
    frames = [image(n).astype(np.int32) for n in range(min(count + 1, 64))]
    due = time.perf_counter()
    for n in range(1, count + 1):
        # Only the image waits for its write to complete: at 100 Hz four round trips per image
        # were more than this client can do (25 Hz).
        counter.write([n], wait=False)
        waveform.write(wave(n), wait=False)
        scalar.write([n / 4], wait=False)
        data.write(frames[n % len(frames)], wait=True)
        due += 1.0 / rate
        time.sleep(max(0.0, due - time.perf_counter()))
    context.disconnect()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        put(sys.argv[2], int(sys.argv[3]), *(float(r) for r in sys.argv[4:5]))
