#!/usr/bin/env python3
"""Test images over Channel Access from servers beamflow did not write.

  ca_images.py serve PREFIX   a caproto IOC: PREFIX:Image:ArrayData (640x480 as DBR_SHORT, i.e.
                              big-endian int16 carrying u16 bits), ArraySize0_RBV/ArraySize1_RBV,
                              ArrayCounter_RBV, PREFIX:WAVE (100 doubles) and PREFIX:SCALAR,
                              publishing image n = 1, 2, ... at 5 Hz until killed.
  ca_images.py put PREFIX N   a caproto client writing images 1..N the same way into an EPICS 7
                              softIoc (whose USHORT waveform it serves as DBR_LONG), 5 per second.

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


def put(prefix, count):
    from caproto.threading.client import Context

    context = Context()
    pvs = context.get_pvs(prefix + ":Image:ArrayData", prefix + ":Image:ArrayCounter_RBV",
                          prefix + ":WAVE", prefix + ":SCALAR", timeout=10)
    for pv in pvs:
        pv.wait_for_connection(timeout=10)
    print("ready", flush=True)
    data, counter, waveform, scalar = pvs
    for n in range(1, count + 1):
        counter.write([n], wait=True)
        waveform.write(wave(n), wait=True)
        scalar.write([n / 4], wait=True)
        data.write(image(n).astype(np.int32), wait=True)
        time.sleep(0.2)
    context.disconnect()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        put(sys.argv[2], int(sys.argv[3]))
