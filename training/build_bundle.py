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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from GTVAutoSegLib.bundle import ModelBundle, open_model, save_bundle
from GTVAutoSegLib.cascade import CombineSpec
from GTVAutoSegLib.coarse import CoarseSpec
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.models import DENSE_KINDS, SEGMENTER_KINDS, NetConfig, build_network, network_kind
from GTVAutoSegLib.preprocessing import PreprocessSpec
from GTVAutoSegLib.segfile import ANATOMIC_REGIONS

from .provenance import git_commit
from .train import load_best


@dataclass
class Part:
    """One network for the bundle, from a training run's ``best.pt`` or taken from a bundle."""

    kind: str
    network: NetConfig
    state: dict
    preprocess: PreprocessSpec
    context: int
    coarse: CoarseSpec
    target: str
    provenance: dict
    val_threshold: float | None = None

    def module(self):
        net = build_network(self.network)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in self.state.items()}, strict=True)
        return net


def _from_run(path: Path) -> Part:
    best = load_best(path)
    cfg = best["config"]
    return Part(cfg.kind, cfg.network, best["model"], cfg.preprocess, cfg.context_slices, cfg.coarse, cfg.data.target,
                _provenance(path, best), best["metrics"].get("val_threshold"))


def _from_bundle(source: str, role: str) -> Part:
    bundle = open_model(source)
    cfg = getattr(bundle, role)
    if cfg is None:
        raise GTVError(f"model {source} has no {role}")
    context = {"classifier": bundle.classifier_context, "segmenter": bundle.segmenter_context}.get(role, 1)
    provenance = {"from_bundle": f"{bundle.name} {bundle.version}", **bundle.provenance.get(role, {})}
    return Part(network_kind(cfg.name), cfg, getattr(bundle, f"{role}_state"), bundle.preprocess, context,
                bundle.coarse, bundle.target, provenance, bundle.threshold if role == "classifier" else None)


def load_part(source: str | Path, role: str) -> Part:
    """``source``: a run's ``best.pt``, or a bundle (a listed model name or a bundle file) whose
    ``role`` network is taken as it is."""
    path = Path(source)
    if path.is_file():
        try:
            return _from_run(path)
        except GTVError:
            pass  # not a training checkpoint: a bundle file, or nothing (open_model says which)
    return _from_bundle(str(source), role)


def ensemble_part(parts: list[Part]) -> Part:
    """Locators of one architecture and grid (other seeds or data) as one ``locator_ensemble``."""
    first = parts[0]
    for p in parts[1:]:
        if (p.network.to_dict(), p.coarse, p.preprocess.to_dict()) != (first.network.to_dict(), first.coarse,
                                                                       first.preprocess.to_dict()):
            raise GTVError("an ensemble takes locators of one architecture, grid and preprocessing")
    cfg = NetConfig("locator_ensemble", first.network.in_channels, first.network.out_channels,
                    {"member": first.network.to_dict(), "count": len(parts)})
    state = {f"members.{i}.{k}": v for i, p in enumerate(parts) for k, v in p.state.items()}
    return Part("locator3d", cfg, state, first.preprocess, 1, first.coarse, first.target,
                {"members": [p.provenance for p in parts]})


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
          anatomic_region: str = "head_and_neck", locator_ckpt: str | Path | list | None = None,
          combine: CombineSpec | None = None) -> tuple[ModelBundle, str]:
    """Write the bundle; returns it and the file's SHA-256. Each network comes from a run's
    ``best.pt`` or from an existing bundle (see :func:`load_part`); several locators become one
    averaging ensemble."""
    locators = [locator_ckpt] if isinstance(locator_ckpt, (str, Path)) else list(locator_ckpt or [])
    sources = {"segmenter": segmenter_ckpt, "classifier": classifier_ckpt}
    parts = {role: load_part(src, role) for role, src in sources.items() if src is not None}
    if locators:
        members = [load_part(src, "locator") for src in locators]
        parts["locator"] = members[0] if len(members) == 1 else ensemble_part(members)
        sources["locator"] = ", ".join(map(str, locators))
    wanted = {"classifier": ("classifier",), "segmenter": SEGMENTER_KINDS, "locator": ("locator3d",)}
    for role, part in parts.items():
        if part.kind not in wanted[role]:
            raise GTVError(f"{sources[role]} holds a {part.kind}, not a {role}")
    spec = parts["segmenter"].preprocess
    for role, part in parts.items():
        if part.preprocess.to_dict() != spec.to_dict():
            raise GTVError(f"the {role} and the segmenter were trained with different preprocessing "
                           f"({part.preprocess.to_dict()} vs {spec.to_dict()}); one bundle holds one spec")
    cls, loc = parts.get("classifier"), parts.get("locator")
    combine = combine or CombineSpec(gate="classifier" if cls else "locator")
    if threshold is None:
        threshold = float(cls.val_threshold) if cls and cls.val_threshold is not None else 0.5
    if not 0.0 <= threshold <= 1.0:
        raise GTVError(f"threshold must lie in [0, 1], got {threshold}")
    provenance = {
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "weights": "fp16" if half else "fp32",
        "threshold_source": ("classifier validation operating point"
                             if cls and threshold == cls.val_threshold else "given"),
        **{role: part.provenance for role, part in parts.items()},
    }
    seg = parts["segmenter"]
    bundle = ModelBundle.from_networks(
        cls.module() if cls else None, seg.module(), locator_net=loc.module() if loc else None,
        name=name, version=version,
        classifier=cls.network if cls else None, segmenter=seg.network, locator=loc.network if loc else None,
        coarse=loc.coarse if loc else CoarseSpec(), combine=combine,
        classifier_context=cls.context if cls else 1, segmenter_context=seg.context,
        preprocess=spec, threshold=threshold, target=target or seg.target, anatomic_region=anatomic_region,
        provenance=provenance,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return bundle, save_bundle(bundle, out, half=half)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.build_bundle", description=__doc__.splitlines()[0])
    p.add_argument("--classifier", help="the classifier run's best.pt, or a bundle whose classifier to take "
                                        "(none: the locator picks the slices)")
    p.add_argument("--segmenter", required=True, help="the segmenter run's best.pt, or a bundle whose segmenter to take")
    p.add_argument("--locator", action="append", default=[],
                   help="the 3D locator run's best.pt, or a bundle whose locator to take; repeat it for an "
                        "ensemble of locators (their probabilities averaged)")
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
