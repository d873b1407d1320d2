"""Combine trained networks into one model bundle: a segmenter with a slice classifier, a 3D
locator, or both.

    python -m training.build_bundle --classifier training/runs/classifier/best.pt \
        --segmenter training/runs/sanet_cr/best.pt --out Resources/hcf-openkbp-ptv70.pt \
        --name hcf-openkbp-ptv70 --version 1.0.0 --half
    python -m training.build_bundle --locator training/runs/locator/best.pt \
        --segmenter training/runs/unet25d/best.pt --combine gate=locator --combine locator_weight=0.5 ...

The threshold defaults to the classifier's operating threshold picked on validation; the
preprocessing spec is the one all networks were trained with (they must agree), the 2.5D context
of each 2D network its own run's. Provenance records the data, split, epochs, time, git commit and
validation figures of every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from GTVAutoSegLib.bundle import ModelBundle, save_bundle
from GTVAutoSegLib.cascade import CombineSpec
from GTVAutoSegLib.coarse import CoarseSpec
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.models import DENSE_KINDS, SEGMENTER_KINDS, build_network
from GTVAutoSegLib.segfile import ANATOMIC_REGIONS

from .train import git_commit, load_best


def _network(best: dict):
    net = build_network(best["config"].network)
    net.load_state_dict(best["model"], strict=True)
    return net


def _provenance(path: Path, best: dict) -> dict:
    cfg = best["config"]
    return {
        "checkpoint": path.name,
        "network": cfg.network.name,
        "loss": cfg.loss.name if cfg.kind in DENSE_KINDS else "ce",
        "context_slices": cfg.context_slices,
        "other_targets": list(cfg.data.other_targets),
        "balance": cfg.balance,
        "data": {"layout": cfg.data.layout, "root": cfg.data.root, "target": cfg.data.target,
                 "split": cfg.data.split, "train_split": cfg.data.train_split, "val_split": cfg.data.val_split,
                 "folds": cfg.data.folds, "fold": cfg.data.fold, "seed": cfg.data.seed},
        "best_epoch": best["epoch"],
        "validation": best["metrics"],
        "run": best["run"],
        "budget": {"max_epochs": cfg.max_epochs, "time_budget_min": cfg.time_budget_min,
                   "max_slices_per_epoch": cfg.max_slices_per_epoch, "batch_size": cfg.batch_size},
        "augment": cfg.augment.enabled,
    }


def parse_combine(items: list[str], base: CombineSpec | None = None) -> CombineSpec:
    """``["gate=locator", "locator_weight=0.5", "tta_flip=true"]`` over ``base`` (values as JSON)."""
    data = (base or CombineSpec()).to_dict()
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise GTVError(f"combine setting {item!r} must look like key=value")
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw
    return CombineSpec.from_dict(data)


def build(classifier_ckpt: str | Path | None, segmenter_ckpt: str | Path, out: str | Path, name: str, version: str,
          threshold: float | None = None, half: bool = False, target: str | None = None,
          anatomic_region: str = "head_and_neck", locator_ckpt: str | Path | None = None,
          combine: CombineSpec | None = None) -> tuple[ModelBundle, str]:
    """Write the bundle; returns it and the file's SHA-256."""
    runs = {"segmenter": Path(segmenter_ckpt)}
    if classifier_ckpt is not None:
        runs["classifier"] = Path(classifier_ckpt)
    if locator_ckpt is not None:
        runs["locator"] = Path(locator_ckpt)
    best = {role: load_best(path) for role, path in runs.items()}
    wanted = {"classifier": ("classifier",), "segmenter": SEGMENTER_KINDS, "locator": ("locator3d",)}
    for role, b in best.items():
        if b["config"].kind not in wanted[role]:
            raise GTVError(f"{runs[role]} holds a {b['config'].kind}, not a {role}")
    spec = best["segmenter"]["config"].preprocess
    for role, b in best.items():
        if b["config"].preprocess.to_dict() != spec.to_dict():
            raise GTVError(f"the {role} and the segmenter were trained with different preprocessing "
                           f"({b['config'].preprocess.to_dict()} vs {spec.to_dict()}); one bundle holds one spec")
    combine = combine or CombineSpec(gate="classifier" if "classifier" in best else "locator")
    cls_best = best.get("classifier")
    if threshold is None:
        threshold = float(cls_best["metrics"].get("val_threshold", 0.5)) if cls_best else 0.5
    if not 0.0 <= threshold <= 1.0:
        raise GTVError(f"threshold must lie in [0, 1], got {threshold}")
    provenance = {
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "weights": "fp16" if half else "fp32",
        "threshold_source": ("classifier validation operating point"
                             if cls_best and threshold == cls_best["metrics"].get("val_threshold") else "given"),
        **{role: _provenance(runs[role], b) for role, b in best.items()},
    }
    bundle = ModelBundle.from_networks(
        _network(cls_best) if cls_best else None, _network(best["segmenter"]),
        locator_net=_network(best["locator"]) if "locator" in best else None,
        name=name, version=version,
        classifier=cls_best["config"].network if cls_best else None,
        segmenter=best["segmenter"]["config"].network,
        locator=best["locator"]["config"].network if "locator" in best else None,
        coarse=best["locator"]["config"].coarse if "locator" in best else CoarseSpec(),
        combine=combine,
        classifier_context=cls_best["config"].context_slices if cls_best else 1,
        segmenter_context=best["segmenter"]["config"].context_slices,
        preprocess=spec, threshold=threshold,
        target=target or best["segmenter"]["config"].data.target, anatomic_region=anatomic_region,
        provenance=provenance,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return bundle, save_bundle(bundle, out, half=half)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.build_bundle", description=__doc__.splitlines()[0])
    p.add_argument("--classifier", help="the classifier run's best.pt (none: the locator picks the slices)")
    p.add_argument("--segmenter", required=True, help="the segmenter run's best.pt")
    p.add_argument("--locator", help="the 3D locator run's best.pt")
    p.add_argument("--combine", action="append", default=[], metavar="KEY=VALUE",
                   help="how the networks combine (GTVAutoSegLib.cascade.CombineSpec), e.g. gate=locator, "
                        "locator_weight=0.5, region_margin_mm=10, tta_flip=true")
    p.add_argument("--out", required=True, help="bundle file to write")
    p.add_argument("--name", default="hcf")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--threshold", type=float, help="classifier threshold (default: picked on validation)")
    p.add_argument("--target", help="structure name recorded in the bundle (default: the data target)")
    p.add_argument("--anatomic-region", default="head_and_neck", choices=sorted(ANATOMIC_REGIONS))
    p.add_argument("--half", action="store_true", help="store weights as fp16 (half the size)")
    args = p.parse_args(argv)
    try:
        if not args.classifier and not args.locator:
            raise GTVError("a bundle needs a --classifier, a --locator, or both, to pick the slices")
        base = CombineSpec(gate="classifier" if args.classifier else "locator")
        bundle, sha = build(args.classifier, args.segmenter, args.out, args.name, args.version, args.threshold,
                            args.half, args.target, args.anatomic_region, args.locator,
                            parse_combine(args.combine, base))
    except GTVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size_mb = Path(args.out).stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB), threshold {bundle.threshold:.4f}, combine {bundle.combine.to_dict()}")
    print(f"sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
