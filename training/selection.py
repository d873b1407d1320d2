"""Choosing the next model: every variant evaluated on the validation patients the same way, with a
bootstrap confidence interval of its Dice difference to the reference model.

    python -m training.selection run --variants training/configs/selection/v020.json
    python -m training.selection report --variants training/configs/selection/v020.json \
        --out training/results/model_selection.md

A variant is a bundle (a listed model name or a file), optionally with its networks combined
differently (``combine`` overrides, as ``training.evaluate --combine``), and the training runs it
took. ``run`` evaluates each variant that has no ``per_patient.csv`` yet (``--force`` redoes them);
``report`` writes one Markdown table: Dice mean / median, HD95, false-positive slices per patient,
patients with at most one, inference seconds per CT on this machine, training minutes, and the
paired bootstrap 95% interval (over patients) of the Dice and FP-slice differences to the reference.
Validation only: nothing here looks at any other split.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from GTVAutoSegLib.bundle import PostprocessSpec, load_bundle, resolve_model, sha256_file
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.metrics import paired_bootstrap, summarise

from .build_bundle import parse_combine
from .evaluate import cases_from_args, evaluate_cases, write_rows
from .provenance import ROOT

RUNS = ROOT / "training" / "runs" / "selection"


@dataclass
class Variant:
    """One row of the selection table.

    Args:
        key: short id (folder name of its evaluation).
        label: what the row is, in words.
        bundle: model name or bundle path (relative to the project root).
        combine: ``KEY=VALUE`` overrides of the bundle's combination.
        postprocess: overrides of the bundle's postprocessing (``{"keep_largest": 1}``).
        threshold: the slice gate's threshold instead of the bundle's (classifier or locator).
        runs: training run folders whose ``summary.json`` wall times count as training minutes.
        train_minutes: minutes added to those of ``runs``, for networks trained before runs kept
            their summary (the shipped 0.1.0 networks).
        commands: how the bundle was made (training and bundling), shown with the row.
        note: anything the reader needs to compare the row fairly.
    """

    key: str
    label: str
    bundle: str
    combine: list[str] = field(default_factory=list)
    postprocess: dict = field(default_factory=dict)
    threshold: float | None = None
    runs: list[str] = field(default_factory=list)
    train_minutes: float | None = None
    commands: list[str] = field(default_factory=list)
    note: str = ""

    def bundle_path(self) -> Path:
        path = Path(self.bundle)
        if (ROOT / path).is_file():
            return ROOT / path
        return resolve_model(self.bundle)[0]

    def training_minutes(self) -> float:
        """``train_minutes`` plus the wall time of every run (NaN when neither is known)."""
        if self.train_minutes is None and not self.runs:
            return math.nan
        total = float(self.train_minutes or 0.0)
        for run in self.runs:
            summary = ROOT / run / "summary.json"
            if not summary.is_file():
                return math.nan
            total += json.loads(summary.read_text())["wall_seconds"] / 60
        return total


def load_variants(path: str | Path) -> tuple[str, list[Variant]]:
    """``(reference key, variants)`` from a JSON file ``{"reference": key, "variants": [...]}``."""
    data = json.loads(Path(path).read_text())
    variants = [Variant(**v) for v in data["variants"]]
    keys = [v.key for v in variants]
    if len(set(keys)) != len(keys) or data["reference"] not in keys:
        raise GTVError(f"{path}: variant keys must be unique and include the reference {data['reference']!r}")
    return data["reference"], variants


def run_variant(v: Variant, args: argparse.Namespace) -> Path:
    """Evaluate one variant on the validation cases; ``RUNS/<key>/per_patient.csv``."""
    out = RUNS / v.key
    csv_path = out / "per_patient.csv"
    bundle_path = v.bundle_path()
    sha = sha256_file(bundle_path)
    meta_path = out / "meta.json"
    if csv_path.is_file() and meta_path.is_file() and not args.force:
        meta = json.loads(meta_path.read_text())
        if (meta.get("bundle_sha256"), meta.get("combine"), meta.get("postprocess", {}), meta.get("threshold")) == (
                sha, v.combine, v.postprocess, v.threshold):
            return csv_path
    bundle = load_bundle(bundle_path)
    combine = parse_combine(v.combine, bundle.combine) if v.combine else None
    post = PostprocessSpec(**{**asdict(bundle.postprocess), **v.postprocess}) if v.postprocess else None
    _, cases = cases_from_args(args)
    t = time.perf_counter()
    rows = evaluate_cases(bundle_path, cases, ("cascade",), args.device, combine=combine, postprocess=post,
                          threshold=v.threshold)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, csv_path)
    meta_path.write_text(json.dumps({"bundle": str(bundle_path), "bundle_sha256": sha, "combine": v.combine,
                                     "postprocess": v.postprocess, "threshold": v.threshold, "patients": len(cases),
                                     "seconds": round(time.perf_counter() - t, 1)}, indent=1))
    return csv_path


def _read(csv_path: Path) -> dict[str, dict]:
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        out[r["patient"]] = {k: (float(v) if k not in ("patient", "arm") else v) for k, v in r.items()}
    return out


def _f(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def report(reference: str, variants: list[Variant], variants_file: str) -> str:
    """The Markdown table (variants without an evaluation are listed as not run)."""
    rows = {v.key: _read(RUNS / v.key / "per_patient.csv") for v in variants
            if (RUNS / v.key / "per_patient.csv").is_file()}
    if reference not in rows:
        raise GTVError(f"the reference {reference!r} has not been evaluated; run 'python -m training.selection run' first")
    ref = rows[reference]
    patients = sorted(ref)
    lines = [
        "# Choosing model 0.2.0: every variant on the 33 OpenKBP validation patients (PTV70)",
        "",
        f"Regenerate: `python -m training.selection run --variants {variants_file}` then "
        f"`python -m training.selection report --variants {variants_file} --out training/results/model_selection.md`.",
        "Each row is a bundle evaluated by `training.evaluate` (the library's `Segmenter`, on each CT's own grid);",
        "the commands that trained and bundled it are listed under the table. Differences are paired over the",
        "same patients: mean and 95% percentile bootstrap interval (10,000 resamples, seed 0) against the reference.",
        "Inference seconds per CT: the mean over the 33 CTs (128 x 128 x 128) of the whole `Segmenter` call on this",
        "project's 2-core CPU, with training runs sharing the machine; compare rows measured together, not to other tables.",
        "",
        "| variant | Dice mean | Dice median | HD95 mm mean | FP slices / patient | patients with <= 1 FP slice "
        f"| Dice diff vs `{reference}` [95% CI] | FP slices diff [95% CI] | inference s / CT | training min |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in variants:
        if v.key not in rows:
            lines.append(f"| `{v.key}` {v.label} | not run | | | | | | | | |")
            continue
        r = rows[v.key]
        if sorted(r) != patients:
            raise GTVError(f"variant {v.key} was evaluated on other patients than the reference")
        s = summarise(list(r.values()))
        few_fp = sum(r[p]["fp_slices"] <= 1 for p in patients)
        dd = paired_bootstrap([r[p]["dice"] for p in patients], [ref[p]["dice"] for p in patients])
        df = paired_bootstrap([r[p]["fp_slices"] for p in patients], [ref[p]["fp_slices"] for p in patients])
        diff = "-" if v.key == reference else f"{dd['mean']:+.3f} [{dd['low']:+.3f}, {dd['high']:+.3f}]"
        fdiff = "-" if v.key == reference else f"{df['mean']:+.2f} [{df['low']:+.2f}, {df['high']:+.2f}]"
        lines.append("| " + " | ".join([
            f"`{v.key}` {v.label}", _f(s["dice"]["mean"]), _f(s["dice"]["median"]), _f(s["hd95_mm"]["mean"], 1),
            _f(s["fp_slices"]["mean"], 2), f"{few_fp} of {len(patients)} ({few_fp / len(patients):.0%})",
            diff, fdiff, _f(s["seconds"]["mean"], 2), _f(v.training_minutes(), 0),
        ]) + " |")
    lines += ["", "## How each row was made", ""]
    for v in variants:
        lines.append(f"- `{v.key}`: bundle `{v.bundle}`" + (f", combine `{' '.join(v.combine)}`" if v.combine else "")
                     + (f", postprocess `{json.dumps(v.postprocess)}`" if v.postprocess else "")
                     + (f", threshold {v.threshold}" if v.threshold is not None else "")
                     + (f". {v.note}" if v.note else ""))
        for c in v.commands:
            lines.append(f"  - `{c}`")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.selection", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("run", "report"))
    p.add_argument("--variants", required=True, help="JSON file of variants (training/configs/selection/)")
    p.add_argument("--only", help="comma list of variant keys (run)")
    p.add_argument("--force", action="store_true", help="evaluate again even when an evaluation exists")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="Markdown file (report); printed otherwise")
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--split", default="validation", help=argparse.SUPPRESS)
    p.add_argument("--max-patients", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        reference, variants = load_variants(args.variants)
        if args.action == "run":
            only = set(args.only.split(",")) if args.only else None
            for v in variants:
                if only is None or v.key in only:
                    print(f"{v.key}: {run_variant(v, args)}", flush=True)
        else:
            text = report(reference, variants, args.variants)
            if args.out:
                Path(args.out).write_text(text)
            print(text)
    except GTVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
