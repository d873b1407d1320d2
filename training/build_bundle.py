"""Combine a trained classifier and a trained segmenter into one model bundle.

    python -m training.build_bundle --classifier training/runs/classifier/best.pt \
        --segmenter training/runs/sanet_cr/best.pt --out Resources/hcf-openkbp-ptv70.pt \
        --name hcf-openkbp-ptv70 --version 1.0.0 --half

The threshold defaults to the classifier's operating threshold picked on validation; the
preprocessing spec is the one both networks were trained with (they must agree). Provenance
records the data, split, epochs, time, git commit and validation figures of both runs.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from GTVAutoSegLib.bundle import ModelBundle, save_bundle
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.models import SEGMENTER_KINDS, build_network
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
        "loss": cfg.loss.name if cfg.kind in SEGMENTER_KINDS else "ce",
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


def build(classifier_ckpt: str | Path, segmenter_ckpt: str | Path, out: str | Path, name: str, version: str,
          threshold: float | None = None, half: bool = False, target: str | None = None,
          anatomic_region: str = "head_and_neck") -> tuple[ModelBundle, str]:
    """Write the bundle; returns it and the file's SHA-256."""
    classifier_ckpt, segmenter_ckpt = Path(classifier_ckpt), Path(segmenter_ckpt)
    cls_best, seg_best = load_best(classifier_ckpt), load_best(segmenter_ckpt)
    if cls_best["config"].kind != "classifier":
        raise GTVError(f"{classifier_ckpt} holds a {cls_best['config'].kind}, not a classifier")
    if seg_best["config"].kind not in SEGMENTER_KINDS:
        raise GTVError(f"{segmenter_ckpt} holds a {seg_best['config'].kind}, not a segmenter")
    spec = seg_best["config"].preprocess
    if cls_best["config"].preprocess.to_dict() != spec.to_dict():
        raise GTVError("the classifier and the segmenter were trained with different preprocessing "
                       f"({cls_best['config'].preprocess.to_dict()} vs {spec.to_dict()}); one bundle holds one spec")
    if threshold is None:
        threshold = float(cls_best["metrics"].get("val_threshold", 0.5))
    if not 0.0 <= threshold <= 1.0:
        raise GTVError(f"threshold must lie in [0, 1], got {threshold}")
    bundle = ModelBundle.from_networks(
        _network(cls_best), _network(seg_best),
        name=name, version=version,
        classifier=cls_best["config"].network, segmenter=seg_best["config"].network,
        preprocess=spec, threshold=threshold,
        target=target or seg_best["config"].data.target, anatomic_region=anatomic_region,
        provenance={
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "weights": "fp16" if half else "fp32",
            "threshold_source": "classifier validation operating point" if threshold == cls_best["metrics"].get("val_threshold") else "given",
            "classifier": _provenance(classifier_ckpt, cls_best),
            "segmenter": _provenance(segmenter_ckpt, seg_best),
        },
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return bundle, save_bundle(bundle, out, half=half)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.build_bundle", description=__doc__.splitlines()[0])
    p.add_argument("--classifier", required=True, help="the classifier run's best.pt")
    p.add_argument("--segmenter", required=True, help="the segmenter run's best.pt")
    p.add_argument("--out", required=True, help="bundle file to write")
    p.add_argument("--name", default="hcf")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--threshold", type=float, help="classifier threshold (default: picked on validation)")
    p.add_argument("--target", help="structure name recorded in the bundle (default: the data target)")
    p.add_argument("--anatomic-region", default="head_and_neck", choices=sorted(ANATOMIC_REGIONS))
    p.add_argument("--half", action="store_true", help="store weights as fp16 (half the size)")
    args = p.parse_args(argv)
    try:
        bundle, sha = build(args.classifier, args.segmenter, args.out, args.name, args.version, args.threshold,
                            args.half, args.target, args.anatomic_region)
    except GTVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size_mb = Path(args.out).stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB), threshold {bundle.threshold:.4f}")
    print(f"sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
