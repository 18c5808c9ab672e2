#!/usr/bin/env python3
"""Surrogate evaluation speed: beamflow (candle, f64, one thread per evaluation) against a numpy
float64 forward pass of the same model, in one run on this machine.

usage: .venv/bin/python bench/surrogate_vs_numpy.py

The model is ../shared/models/lcls_cu_injector (16 inputs, 313,705 parameters). beamflow's
figures come from surrogate/examples/throughput.rs (release, RAYON_NUM_THREADS=1 as the
beamflow binary sets it); numpy's from the same steps written here (transformers, 10 linear
layers with ELU), its BLAS free to use both cores. torch is not compared: its PyPI wheel brings
several GB of CUDA libraries, and the CPU-only wheel's index is not reachable here.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT.parent / "shared" / "models" / "lcls_cu_injector"


def load_safetensors(path):
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    data = raw[8 + size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        assert info["dtype"] == "F64", info["dtype"]
        tensors[name] = np.frombuffer(data[start:end], dtype="<f8").reshape(info["shape"])
    return tensors


def numpy_model():
    t = load_safetensors(MODEL / "model.safetensors")
    layers = [(t[f"layers.{i}.weight"].T.copy(), t[f"layers.{i}.bias"]) for i in range(10)]
    c1, o1 = t["input_pv_to_sim.coef"], t["input_pv_to_sim.offset"]
    c2, o2 = t["input_sim_to_nn.coef"], t["input_sim_to_nn.offset"]
    c3, o3 = t["output_sim_to_nn.coef"], t["output_sim_to_nn.offset"]
    c4, o4 = t["output_pv_to_sim.coef"], t["output_pv_to_sim.offset"]

    def forward(x):
        x = o1 + c1 * x              # input_pv_to_sim, reverse: inv
        x = (x - o2) / c2            # input_sim_to_nn: fwd
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if i < 9:
                x = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
        x = o3 + c3 * x              # output_sim_to_nn: untransform = inv
        return (x - o4) / c4         # output_pv_to_sim, reverse: untransform = fwd
    return forward


def main():
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "beamflow-surrogate",
                    "--example", "throughput"], cwd=ROOT, check=True)
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    ours = json.loads(subprocess.run([str(ROOT / "target/release/examples/throughput"),
                                      str(MODEL)], env=env, capture_output=True, text=True,
                                     check=True).stdout)
    forward = numpy_model()
    defaults = np.array([[423.867825, 1.8550514181818183, 0.25, 0.4779693455075814,
                          -0.001499227120199691, -0.0006872989433749197, 58.0, -9.53597349, 70.0,
                          9.85566222, -2.0005920106399526, 2.0005920106399526,
                          -1.0807627139393465, -0.17938799998564897, 2.852171999771826,
                          -3.218399988942528]])
    times = []
    for _ in range(2000):
        start = time.perf_counter()
        forward(defaults)
        times.append(time.perf_counter() - start)
    single = sorted(times)[len(times) // 2] * 1e6
    batch = np.repeat(defaults, 256, axis=0)
    start = time.perf_counter()
    for _ in range(40):
        forward(batch)
    batched = 40 * 256 / (time.perf_counter() - start)
    print(f"LCLS Cu-injector surrogate (313,705 parameters, f64), {os.cpu_count()} cores")
    print("| | single evaluation | batched (256) evals/s |")
    print("|---|---|---|")
    print(f"| beamflow (candle), 1 thread | {ours['single_eval_us']:.0f} µs | "
          f"{ours['batched_evals_per_s_one_thread']:,.0f} |")
    print(f"| beamflow (candle), 2 threads side by side | – | "
          f"{ours['batched_evals_per_s_two_threads']:,.0f} |")
    print(f"| numpy {np.__version__} (BLAS threads free) | {single:.0f} µs | {batched:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
