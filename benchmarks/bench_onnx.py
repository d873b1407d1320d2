"""The shipped model's networks under ONNX Runtime against torch on this CPU, one run (not a test;
prints Markdown). A measurement for choosing an inference engine; nothing ships through ONNX yet.

Each network of the default model (the 3D locator on its 64^3 grid; the 2.5D U-Net on a batch of
``--slices`` model slices) is exported with ``torch.onnx.export`` (TorchScript exporter, opset 17)
and run with onnxruntime's CPU provider on the same input, threads = cores for both engines;
medians of ``--repeats`` after a warm-up, the largest absolute difference of the logits, the
session creation time and the file size. Needs two packages the project does not install:

    .venv/bin/pip install onnx==1.23.2 onnxruntime==1.23.2
    .venv/bin/python benchmarks/bench_onnx.py
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import CpuWatch  # noqa: E402

from GTVAutoSegLib.bundle import open_model  # noqa: E402
from GTVAutoSegLib.torchnets import split_output  # noqa: E402


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def compare(name: str, net: torch.nn.Module, x: np.ndarray, repeats: int, threads: int) -> str:
    import onnxruntime as ort

    net = net.eval().float()
    with torch.inference_mode():
        ref = split_output(net(torch.from_numpy(x)))[0].numpy()
        t_torch = _median_s(lambda: net(torch.from_numpy(x)), repeats)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's notes on its own deprecation and InstanceNorm
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), buf, dynamo=False, opset_version=17, input_names=["x"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    t = time.perf_counter()
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    t_session = time.perf_counter() - t
    with CpuWatch() as w:
        out = session.run(None, {"x": x})[0]
        t_ort = _median_s(lambda: session.run(None, {"x": x}), repeats)
    diff = float(np.abs(out - ref).max())
    return (f"| {name} | {' x '.join(map(str, x.shape))} | {t_torch:.4f} s | {t_ort:.4f} s | {t_torch / t_ort:.2f} | "
            f"{t_session:.3f} s | {diff:.1e} | {len(buf.getvalue()) / 1e6:.1f} MB | {w.others:.0%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--slices", type=int, default=30, help="model slices in the segmenter's batch")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    import onnxruntime as ort

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    bundle = open_model(args.model)
    rng = np.random.default_rng(0)
    print(f"{bundle.name} {bundle.version}; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"{threads} threads each; medians of {args.repeats} after a warm-up")
    print()
    print("| network | input | torch | ONNX Runtime | torch / ORT | session creation | max abs logit difference | ONNX file | other processes' CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    locator = bundle.build_locator()
    if locator is not None:
        shape = (1, 1, *bundle.coarse.shape)
        print(compare("locator (3D U-Net)", locator, rng.random(shape, dtype=np.float32), args.repeats, threads))
    size = bundle.preprocess.size
    context = bundle.segmenter_context
    print(compare(f"segmenter ({context}-slice input)", bundle.build_segmenter(),
                  rng.random((args.slices, context, size, size), dtype=np.float32), args.repeats, threads))


if __name__ == "__main__":
    main()
