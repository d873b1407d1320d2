"""Per-stage wall time of one CT through the whole pipeline (not a test; prints a Markdown row).

A 150-slice 512 x 512 synthetic CT (the library's phantom, tumour on 30 slices) is written to
NIfTI, then read -> preprocess -> [locator] -> classifier -> segmenter -> inverse -> write, timed
per stage after one warm-up run. With ``--model`` the given bundle is used; otherwise an untrained
bundle at ``--size``. Weights do not change the cost but the number of selected slices does, so in
both cases the segmenter gets exactly ``--tumour-slices`` slices, as a typical case.

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
import torch

from GTVAutoSegLib import io
from GTVAutoSegLib.bundle import ModelBundle, open_model
from GTVAutoSegLib.device import DEVICE_HELP
from GTVAutoSegLib.image import Image, sitk
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.pipeline import Segmenter
from GTVAutoSegLib.preprocessing import PreprocessSpec
from GTVAutoSegLib.segfile import write_seg_nrrd
from GTVAutoSegLib.slices import SliceSelection


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def build_segmenter(model: str | None, size: int, device: str) -> Segmenter:
    """The given bundle, or an untrained classifier + SANet at ``size`` (same cost as trained)."""
    if model:
        bundle = open_model(model)
    else:
        c_cfg, s_cfg = NetConfig("resnet18_classifier"), NetConfig("sanet")
        bundle = ModelBundle.from_networks(build_network(c_cfg), build_network(s_cfg), name="untrained", version="0",
                                           classifier=c_cfg, segmenter=s_cfg, preprocess=PreprocessSpec(size=size))
    return Segmenter(bundle, device=device)


def select_slices(ct: Image, count: int) -> SliceSelection:
    """Exactly ``count`` slices in the middle of ``ct`` for the segmenter, whatever picks them.

    Cost depends on how many slices the segmenter gets: a real model does not recognise the
    phantom's tumour and an untrained one is random, so select as many as a typical case has. The
    model's own slice picker (classifier or locator) still runs; only its decision is overridden.
    """
    z = ct.array.shape[0]
    first = max(0, z // 2 - count // 2)
    chosen = set(range(first, min(z, first + count)))
    return SliceSelection.of(include=chosen, exclude=set(range(z)) - chosen)


def time_stages(seg: Segmenter, ct: Image, repeats: int, with_files: bool = True,
                selection: SliceSelection | None = None) -> dict[str, float]:
    """Median seconds per stage over ``repeats`` runs after one warm-up (allocator, cuDNN autotune).

    With ``with_files`` the CT is read from NIfTI and the result written as ``.seg.nrrd`` (needs
    SimpleITK); without, the pipeline starts from the array in memory and ``read``/``write`` are absent.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ct.nii.gz"
        if with_files:
            sitk.WriteImage(ct.to_sitk(), str(src))
        for rep in range(repeats + 1):
            t0 = time.perf_counter()
            image = io.read_ct(src) if with_files else ct
            t_read = time.perf_counter() - t0
            result = seg(image, selection=selection)
            t = time.perf_counter()
            if with_files:
                write_seg_nrrd(result.mask, Path(tmp) / "out.seg.nrrd")
            t_write = time.perf_counter() - t
            total = time.perf_counter() - t0
            if rep:
                files = {"read": t_read, "write": t_write} if with_files else {}
                rows.append({**files, **result.timings, "total": total, "segmented": int(result.selected.sum())})
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--model", default=None, help="bundle name or path (default: untrained at --size)")
    p.add_argument("--size", type=int, default=512, help="model input size for the untrained bundle")
    p.add_argument("--slices", type=int, default=150)
    p.add_argument("--tumour-slices", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_flush_denormal(True)

    ct, _ = make_phantom(shape=(args.slices, 512, 512), spacing=(0.98, 0.98, 2.5), seed=0,
                         tumour_slices=args.tumour_slices)
    seg = build_segmenter(args.model, args.size, args.device)
    med = time_stages(seg, ct, args.repeats, selection=select_slices(ct, args.tumour_slices))
    print(f"machine: {machine_name(seg.device)}; torch {torch.__version__}; model input {seg.bundle.preprocess.size}; "
          f"{args.slices} x 512 x 512 CT; segmenter on {int(med['segmented'])} slices; median of {args.repeats}")
    stages = [k for k in ("read", "preprocess", "locator", "classifier", "segmenter", "inverse", "write", "total")
              if k in med]
    print("| " + " | ".join(stages) + " |")
    print("|" + "---|" * len(stages))
    print("| " + " | ".join(f"{med[s]:.3f} s" for s in stages) + " |")


if __name__ == "__main__":
    main()
