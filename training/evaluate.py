"""Evaluate a bundle on a split's patients: the cascade, and the segmenter alone (every slice).

    python -m training.evaluate --bundle training/runs/hcf.pt --split validation --out training/runs/eval_hcf

Both arms run through the library's ``Segmenter`` exactly as inference does, on the original CT grid.
Writes ``per_patient.csv`` (one row per patient and arm) and ``summary.md``; the difference between
the arms is what the classifier adds. For a baseline segmenter bundle use ``--arms alone``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from GTVAutoSegLib.bundle import PostprocessSpec, load_bundle
from GTVAutoSegLib.cascade import CombineSpec
from GTVAutoSegLib.device import DEVICE_HELP
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.metrics import evaluate_case, false_positive_slices, slice_recall, summarise
from GTVAutoSegLib.outputs import atomic_output
from GTVAutoSegLib.pipeline import Segmenter

from .build_bundle import parse_combine
from .config import load_config
from .data import CaseRef, load_case, openkbp_cases, split_cases
from .provenance import ROOT

ARMS = ("cascade", "alone")
COLUMNS = ("patient", "arm", "dice", "jaccard", "hd95_mm", "fp_slices", "fn_slices", "ref_slices",
           "volume_pred_cc", "volume_ref_cc", "classifier_recall", "classifier_fp_slices", "seconds")


def metric_row(patient: str, arm: str, mask, ref) -> dict:
    """One per-patient row of ``per_patient.csv`` for a predicted mask against its reference (same
    grid); the classifier columns are NaN until the caller fills them in."""
    m = evaluate_case(mask, ref)
    return {"patient": patient, "arm": arm, **{k: m[k] for k in COLUMNS if k in m},
            "classifier_recall": math.nan, "classifier_fp_slices": math.nan}


def evaluate_cases(bundle_path: str | Path, cases: list[CaseRef], arms=ARMS, device: str = "auto",
                   progress: bool = True, combine: CombineSpec | None = None,
                   postprocess: PostprocessSpec | None = None, threshold: float | None = None) -> list[dict]:
    """One row per case and arm.

    ``fp_slices`` / ``fn_slices`` count slices of the final mask with no reference tumour / reference
    slices the mask misses; ``classifier_*`` score the slice selection (cascade arm only: the
    classifier's, or the locator's when it picks the slices). ``combine``, ``postprocess`` and the
    slice gate's ``threshold`` override the bundle's.
    """
    bundle = load_bundle(bundle_path)
    segmenters = {arm: Segmenter(bundle, device, threshold=threshold, use_classifier=(arm == "cascade"),
                                 combine=combine, postprocess=postprocess) for arm in arms}
    rows = []
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="evaluate", unit="patient", dynamic_ncols=True)
    for case in iterator:
        ct, ref = load_case(case)
        ref = ref.with_array((ref.array == 1).astype(np.uint8))  # the target, not the other classes
        for arm, seg in segmenters.items():
            t = time.perf_counter()
            with torch.inference_mode():
                result = seg(ct)
            row = metric_row(case.patient, arm, result.mask, ref)
            if arm == "cascade":
                row["classifier_recall"] = slice_recall(result.selected, ref.array)
                row["classifier_fp_slices"] = false_positive_slices(result.selected, ref.array)
            row["seconds"] = time.perf_counter() - t
            rows.append(row)
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    """The per-patient CSV, written atomically (a killed evaluation leaves no half table to read)."""
    with atomic_output(Path(path)) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in COLUMNS})


def summary_markdown(rows: list[dict], title: str, meta: dict) -> str:
    """A table of mean / median per arm; infinite HD95 (an empty prediction) is counted, not averaged."""
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| arm | patients | Dice mean | Dice median | Jaccard mean | HD95 mm mean | HD95 mm median | "
              "HD95 undefined | FP slices / patient | classifier recall | classifier FP slices / patient |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    stats_by_arm = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        s = summarise([r for r in rows if r["arm"] == arm])
        stats_by_arm[arm] = s
        hd = s["hd95_mm"]
        lines.append("| " + " | ".join([
            arm, str(sum(r["arm"] == arm for r in rows)),
            _f(s["dice"]["mean"]), _f(s["dice"]["median"]), _f(s["jaccard"]["mean"]),
            _f(hd["mean"], 1), _f(hd["median"], 1), str(hd["n_inf"] + hd["n_nan"]),
            _f(s["fp_slices"]["mean"], 2),
            _f(s["classifier_recall"]["mean"]) if arm == "cascade" else "-",
            _f(s["classifier_fp_slices"]["mean"], 2) if arm == "cascade" else "-",
        ]) + " |")
    lines += ["", "Dice and HD95 are 3D, per patient, on the CT's own grid. FP slices: slices of the final "
              "mask without reference tumour. Classifier columns score the slices the classifier selected."]
    return "\n".join(lines) + "\n"


def _f(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Which patients to evaluate: a training config's data section and a split."""
    p.add_argument("--config", help="training config whose data section says where the data is (default: OpenKBP)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as in train")
    p.add_argument("--split", default="validation",
                   help="OpenKBP split folder to evaluate; 'config' takes the validation side of the config's split")
    p.add_argument("--max-patients", type=int)


def cases_from_args(args: argparse.Namespace):
    """``(data config, cases)`` for the arguments of :func:`add_data_args`."""
    data = load_config(args.config, args.set).data
    if data.layout == "openkbp" and args.split != "config":
        root = Path(data.root) if Path(data.root).is_absolute() else ROOT / data.root
        cases = openkbp_cases(root, args.split, data.target)
    else:
        cases = split_cases(data, ROOT)[1]
    return data, (cases[: args.max_patients] if args.max_patients else cases)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    add_data_args(p)
    p.add_argument("--arms", default="cascade,alone", help="comma list of: cascade, alone")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--combine", action="append", default=[], metavar="KEY=VALUE",
                   help="override how the bundle's networks combine, e.g. locator_weight=0.5 or tta_flip=true")
    p.add_argument("--out", required=True, help="folder for per_patient.csv and summary.md")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    try:
        arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
        if not arms or set(arms) - set(ARMS):
            raise GTVError(f"--arms takes a comma list of {', '.join(ARMS)}")
        data, cases = cases_from_args(args)
        t = time.perf_counter()
        bundle = load_bundle(args.bundle)
        combine = parse_combine(args.combine, bundle.combine) if args.combine else None
        rows = evaluate_cases(args.bundle, cases, arms, args.device, combine=combine)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_rows(rows, out / "per_patient.csv")
        meta = {"bundle": f"{Path(args.bundle).name} ({bundle.name} {bundle.version})",
                "segmenter": bundle.segmenter.name,
                "classifier": bundle.classifier.name if bundle.classifier is not None else "none",
                "locator": bundle.locator.name if bundle.locator is not None else "none",
                "combine": json.dumps((combine or bundle.combine).to_dict()),
                "threshold": f"{bundle.threshold:.4f}", "data": f"{data.layout} {data.root} target {data.target}",
                "split": args.split, "patients": len(cases), "device": args.device,
                "seconds": f"{time.perf_counter() - t:.0f}"}
        (out / "summary.md").write_text(summary_markdown(rows, "Evaluation", meta))
        (out / "summary.json").write_text(json.dumps({arm: summarise([r for r in rows if r["arm"] == arm])
                                                      for arm in arms}, indent=1, allow_nan=True))
        print((out / "summary.md").read_text())
    except GTVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
