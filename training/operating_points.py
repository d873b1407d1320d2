"""Operating points of a bundle: Dice, false-positive slices and slice recall at each slice-gate threshold.

    python -m training.operating_points --bundle Resources/hcf_openkbp_ptv70_v0.1.0.pt \
        --split validation --other-rois PTV63,PTV56 --out training/runs/op_hcf

The slice gate's threshold (the classifier's, or the 3D locator's when it picks the slices) trades
recall of tumour slices against false-positive slices; this shows the whole trade-off on a split, so
a user can pick an operating point (``gtvautoseg segment --threshold``) knowing what it costs. Each
patient goes through the model once with every slice passing the gate; each threshold then zeroes
the slices the gate does not pass, exactly what the cascade's output is (a 2D segmenter sees one
slice at a time, a 3D one's windows over a selected slice all run, and the locator's probabilities
are averaged slice by slice), and maps the result through the library's inverse and
postprocessing. The row ``alone`` is the model with no slice gated out.

``--other-rois`` (OpenKBP layout: structures beside the target in ``rois/``) adds where the
false-positive voxels lie: the share inside any of those structures, e.g. the lower-dose targets
PTV63 and PTV56 that the CT alone cannot tell from PTV70.

Writes ``operating_points.csv`` (one row per threshold and patient) and ``summary.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch

from GTVAutoSegLib.bundle import load_bundle
from GTVAutoSegLib.cascade import widen
from GTVAutoSegLib.device import DEVICE_HELP
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.io import read_mask
from GTVAutoSegLib.outputs import atomic_output
from GTVAutoSegLib.metrics import dice, false_positive_slices, slice_flags, slice_recall, summarise, volume_ratio
from GTVAutoSegLib.pipeline import Segmenter
from GTVAutoSegLib.preprocessing import prepare, restore_slice_values

from .data import CaseRef, load_case
from .evaluate import add_data_args, cases_from_args

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
COLUMNS = ("threshold", "patient", "dice", "fp_slices", "classifier_recall", "classifier_fp_slices",
           "volume_ratio", "fp_voxels", "fp_voxels_in_other_rois")


def other_rois_mask(case: CaseRef, rois: list[str], shape: tuple[int, ...]) -> np.ndarray | None:
    """Union of the named structures stored beside the case's label (``rois/<name>.nii.gz``); None
    when none of them exists for this patient."""
    union, found = np.zeros(shape, bool), False
    for name in rois:
        path = case.label.parent / f"{name}.nii.gz"
        if path.is_file():
            m = read_mask(path).array
            if m.shape != shape:
                raise GTVError(f"{path} is not on the grid of {case.label}")
            union |= m > 0
            found = True
    return union if found else None


def case_rows(seg: Segmenter, case: CaseRef, thresholds: list[float], rois: list[str]) -> list[dict]:
    """One row per threshold (NaN threshold: the segmenter alone) for one patient."""
    ct, ref = load_case(case)
    ref = ref.with_array((ref.array == 1).astype(np.uint8))  # the target, not other classes
    slices, state = prepare(ct, seg.bundle.preprocess)
    with torch.inference_mode():  # every slice through the gate's network and the segmenter
        full = seg.cascade(slices, threshold=-1.0, pixel_mm=state.model_spacing[:2])
    probs, seg_all = full.slice_probs, full.seg_probs
    margin = seg.cascade.combine.locator_margin if seg.cascade.combine.gate == "locator" else 0
    other = other_rois_mask(case, rois, ref.array.shape) if rois else None
    rows = []
    for t in [math.nan, *thresholds]:
        selected = np.ones(probs.shape, bool) if math.isnan(t) else widen(probs >= t, margin)
        kept = np.where(selected[:, None, None], seg_all, 0).astype(seg_all.dtype)
        mask = seg.to_mask(ct, kept, state)
        fp = (mask > 0) & (ref.array == 0)
        flags = restore_slice_values(selected.astype(np.float32), state) > 0.5
        rows.append({
            "threshold": t, "patient": case.patient, "dice": dice(mask, ref.array),
            "fp_slices": false_positive_slices(slice_flags(mask), ref.array),
            "classifier_recall": math.nan if math.isnan(t) else slice_recall(flags, ref.array),
            "classifier_fp_slices": math.nan if math.isnan(t) else false_positive_slices(flags, ref.array),
            "volume_ratio": volume_ratio(mask, ref.array),
            "fp_voxels": int(fp.sum()),
            "fp_voxels_in_other_rois": int((fp & other).sum()) if other is not None else math.nan,
        })
    return rows


def summary_markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Operating points", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| slice gate threshold | Dice mean | Dice median | FP slices / patient | patients with <= 1 FP slice | "
              "gate slice recall | gate FP slices / patient | volume pred / ref (median) | "
              "FP voxels inside other ROIs |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    groups: dict[str | float, list[dict]] = {}  # "alone" first: case_rows puts it first
    for r in rows:
        groups.setdefault("alone" if math.isnan(r["threshold"]) else r["threshold"], []).append(r)
    for t, part in groups.items():
        s = summarise(part)
        in_other = [r for r in part if not math.isnan(r["fp_voxels_in_other_rois"])]
        fp_all = sum(r["fp_voxels"] for r in in_other)
        share = (f"{sum(r['fp_voxels_in_other_rois'] for r in in_other) / fp_all:.2f}" if fp_all else "-")
        lines.append("| " + " | ".join([
            "alone (every slice)" if t == "alone" else f"{t:.4g}",
            f"{s['dice']['mean']:.3f}", f"{s['dice']['median']:.3f}", f"{s['fp_slices']['mean']:.2f}",
            f"{sum(r['fp_slices'] <= 1 for r in part)} of {len(part)}",
            "-" if t == "alone" else f"{s['classifier_recall']['mean']:.3f}",
            "-" if t == "alone" else f"{s['classifier_fp_slices']['mean']:.2f}",
            f"{s['volume_ratio']['median']:.2f}", share,
        ]) + " |")
    lines += ["", "Dice is 3D per patient on the CT's own grid. FP slices: slices of the final mask without "
              "reference tumour. Gate columns score the slices the gate (classifier or locator) passed. The last column "
              "pools false-positive voxels over patients."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.operating_points", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    add_data_args(p)
    p.add_argument("--thresholds", help="comma list in [0, 1] (default 0.1 ... 0.98 and the bundle's own)")
    p.add_argument("--other-rois", default="", help="comma list of structures beside the label, e.g. PTV63,PTV56")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--out", required=True, help="folder for operating_points.csv and summary.md")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    try:
        bundle = load_bundle(args.bundle)
        try:
            thresholds = ([float(v) for v in args.thresholds.split(",")] if args.thresholds
                          else [*DEFAULT_THRESHOLDS, bundle.threshold])
        except ValueError:
            raise GTVError(f"--thresholds takes numbers, got {args.thresholds!r}") from None
        if not all(0.0 <= t <= 1.0 for t in thresholds):
            raise GTVError("--thresholds must lie in [0, 1]")
        thresholds = sorted(set(thresholds))
        rois = [r.strip() for r in args.other_rois.split(",") if r.strip()]
        data, cases = cases_from_args(args)
        if not cases:
            raise GTVError("no patients to evaluate")
        seg = Segmenter(bundle, args.device)
        from tqdm import tqdm

        rows = [r for case in tqdm(cases, desc="operating points", unit="patient", dynamic_ncols=True)
                for r in case_rows(seg, case, thresholds, rois)]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_output(out / "operating_points.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
        meta = {"bundle": f"{Path(args.bundle).name} ({bundle.name} {bundle.version}; its threshold "
                          f"{bundle.threshold:.4f})",
                "data": f"{data.layout} {data.root} target {data.target}", "split": args.split,
                "patients": len(cases), "other ROIs": ", ".join(rois) or "-"}
        with atomic_output(out / "summary.md") as tmp:
            tmp.write_text(summary_markdown(rows, meta))
        print((out / "summary.md").read_text())
    except GTVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
