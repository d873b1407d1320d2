"""Per-stage wall time of one CT through the whole pipeline (not a test; prints a Markdown row).

A 150-slice 512 x 512 synthetic CT (the library's phantom, tumour on 30 slices) is written to
NIfTI, then read -> preprocess -> classifier -> segmenter -> inverse -> write, timed per stage
after one warm-up run. With ``--model`` the given bundle is used; otherwise an untrained bundle at
``--size``. Weights do not change the cost but the number of selected slices does, so in both
cases the threshold is set to select exactly the phantom's tumour-slice count, as a typical case.

    python benchmarks/bench_inference.py --device cpu --size 512
    python benchmarks/bench_inference.py --device cuda --size 512 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from GTVAutoSegLib import io
from GTVAutoSegLib.bundle import ModelBundle, open_model
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.pipeline import Segmenter
from GTVAutoSegLib.preprocessing import PreprocessSpec, prepare


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None, help="bundle name or path (default: untrained at --size)")
    p.add_argument("--size", type=int, default=512, help="model input size for the untrained bundle")
    p.add_argument("--slices", type=int, default=150)
    p.add_argument("--tumour-slices", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_flush_denormal(True)

    ct, mask = make_phantom(shape=(args.slices, 512, 512), spacing=(0.98, 0.98, 2.5), seed=0,
                            tumour_slices=args.tumour_slices)
    if args.model:
        bundle = open_model(args.model)
    else:
        c_cfg, s_cfg = NetConfig("resnet18_classifier"), NetConfig("sanet")
        bundle = ModelBundle.from_networks(build_network(c_cfg), build_network(s_cfg), name="untrained", version="0",
                                           classifier=c_cfg, segmenter=s_cfg,
                                           preprocess=PreprocessSpec(size=args.size))
    seg = Segmenter(bundle, device=args.device)
    # Cost depends on how many slices the segmenter gets: select exactly as many as the phantom has
    # tumour slices (a real model does not recognise the phantom's tumour; an untrained one is random).
    slices, _ = prepare(ct, bundle.preprocess)
    probs = seg.cascade.classify(slices)
    seg.threshold = float(np.sort(probs)[::-1][args.tumour_slices - 1])

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ct.nii.gz"
        sitk.WriteImage(ct.to_sitk(), str(src))
        rows = []
        for rep in range(args.repeats + 1):
            t0 = time.perf_counter()
            image = io.read_ct(src)
            t_read = time.perf_counter() - t0
            result = seg(image)
            t = time.perf_counter()
            io.write_seg_nrrd(result.mask, Path(tmp) / "out.seg.nrrd")
            t_write = time.perf_counter() - t
            total = time.perf_counter() - t0
            if rep:  # the first run is a warm-up (allocator, cuDNN autotune)
                rows.append({"read": t_read, **result.timings, "write": t_write, "total": total,
                             "segmented": int(result.selected.sum())})
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    print(f"machine: {machine_name(seg.device)}; torch {torch.__version__}; model input {bundle.preprocess.size}; "
          f"{args.slices} x 512 x 512 CT; segmenter on {int(med['segmented'])} slices; median of {args.repeats}")
    stages = ["read", "preprocess", "classifier", "segmenter", "inverse", "write", "total"]
    print("| " + " | ".join(stages) + " |")
    print("|" + "---|" * len(stages))
    print("| " + " | ".join(f"{med[s]:.3f} s" for s in stages) + " |")


if __name__ == "__main__":
    main()
