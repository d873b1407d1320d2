"""Train the slice classifier or the segmenter of the cascade (or a baseline segmenter).

    python -m training.train --config training/configs/classifier.json --out training/runs/cls
    torchrun --nproc_per_node 4 -m training.train --config training/configs/sanet_cr.json

The network's registered kind decides what is trained. Outputs in ``out_dir``: ``last.pt`` (resume
point, every epoch), ``best.pt`` (best on validation), ``log.csv``, ``curves.png``, ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from GTVAutoSegLib.device import DEVICE_HELP, resolve_device
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.losses import build_loss
from GTVAutoSegLib.models import DENSE_KINDS, build_network, count_parameters, resolve_config
from GTVAutoSegLib.outputs import atomic_output

from . import distributed
from .augment import augment_batch
from .config import TrainConfig, config_from_dict, load_config
from .data import SliceTable, build_slice_table, packed_tables, resolve_cache, split_cases
from .engine import (SliceSource, StepLoss, Validation, autocast_for, choose_precision, epoch_rows,
                     memory_format_for, train_step, validate_classifier, validate_segmenter)
from .history import plot_curves, write_csv
from .locator import CoarseSource, augment_volume, epoch_items, validate_locator
from .provenance import ROOT, git_commit
from .volumes import VolumeSource, patch_count, validate_segmenter3d

CHECKPOINT_FORMAT = "gtvautoseg-train-checkpoint"
BEST_FORMAT = "gtvautoseg-train-best"
logger = logging.getLogger("training")


def load_tables(cfg: TrainConfig, world: distributed.World, root: Path = ROOT) -> tuple[SliceTable, SliceTable]:
    """Training and validation slice tables; rank 0 fills the cache first, the others read it."""
    if cfg.data.pack:
        return packed_tables(cfg.data, cfg.preprocess, root)
    train_cases, val_cases = split_cases(cfg.data, root)
    cache = resolve_cache(cfg.data, root)
    tables = None
    if world.is_main:
        tables = (build_slice_table(train_cases, cfg.preprocess, cache, progress=True),
                  build_slice_table(val_cases, cfg.preprocess, cache, progress=True))
    distributed.barrier(world)
    if tables is None:
        tables = (build_slice_table(train_cases, cfg.preprocess, cache), build_slice_table(val_cases, cfg.preprocess, cache))
    return tables


def _load(path: Path, fmt: str) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise GTVError(f"{path} is not a training {fmt.rsplit('-', 1)[-1]} file")
    return payload


def load_best(path: str | Path) -> dict:
    """A ``best.pt``: ``config`` (TrainConfig), ``model`` (state dict), ``metrics``, ``epoch``, ``run``."""
    payload = _load(Path(path), BEST_FORMAT)
    return {
        "config": config_from_dict(json.loads(payload["config_json"])),
        "model": payload["model"],
        "metrics": json.loads(payload["metrics_json"]),
        "epoch": int(payload["epoch"]),
        "run": json.loads(payload["run_json"]),
    }


class Trainer:
    """One run of :class:`TrainConfig` on given slice tables."""

    def __init__(self, cfg: TrainConfig, train: SliceTable, val: SliceTable, world: distributed.World | None = None):
        self.cfg = cfg
        self.world = world or distributed.World()
        self.kind = cfg.kind
        self.device = distributed.device_for(self.world, resolve_device(cfg.device))
        self.out = Path(cfg.out_dir)
        if not self.out.is_absolute():
            self.out = ROOT / self.out
        self.train_table, self.val_table = train, val
        if not train.tumour.any():
            raise GTVError("the training patients have no tumour slices; check the target / label value")

        torch.manual_seed(cfg.seed)
        self.cuda = self.device.type == "cuda"
        self.memory_format = memory_format_for(self.kind)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        net = build_network(cfg.network).to(self.device, memory_format=self.memory_format)
        self.net = net
        self.model: nn.Module = net
        if self.world.distributed:
            self.model = nn.parallel.DistributedDataParallel(net, device_ids=[self.device.index] if self.cuda else None)
        seg_loss = build_loss(cfg.loss) if self.kind in DENSE_KINDS else None
        self.loss_fn = StepLoss(self.kind, seg_loss, cfg.loss.class_weights if self.kind == "classifier" else None).to(self.device)
        # a 3D segmenter trains on patches of this many consecutive slices
        self.depth = resolve_config(cfg.network).params["patch_depth"] if self.kind == "segmenter3d" else None
        if self.kind == "locator3d":  # a whole coarse volume per item: D slices of the coarse grid
            self.depth = cfg.coarse.shape[0]
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            self.optimizer, T_0=cfg.optim.restart_epochs, T_mult=cfg.optim.restart_mult, eta_min=cfg.optim.min_lr)
        # fixed on the first batch by choose_precision (cfg.precision "auto" measures both)
        self.precision: str | None = None
        self.precision_rates: dict[str, float] = {}
        self.autocast = autocast_for(self.device, "fp32")
        if self.kind == "locator3d":
            self.train_src = CoarseSource(train, cfg.coarse, cfg.n_classes, self.device)
            self.val_src = CoarseSource(val, cfg.coarse, cfg.n_classes, self.device) if self.world.is_main else None
        elif self.depth is None:
            self.train_src = SliceSource(train, self.device, cfg.preload_to_device, cfg.context_slices)
            self.val_src = (SliceSource(val, self.device, cfg.preload_to_device, cfg.context_slices)
                            if self.world.is_main else None)
        else:
            self.train_src = VolumeSource(train, self.device, self.depth)
            self.val_src = VolumeSource(val, self.device, self.depth) if self.world.is_main else None

        self.epoch = 0
        self.best_score: tuple[float, ...] | None = None
        self.best_epoch = 0
        self.best_metrics: dict = {}
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.slices_seen = 0
        self.train_seconds = 0.0
        self.init_from: str | None = None
        self.commit = git_commit()  # the code this run started from (the tree may change while it trains)

    # ------------------------------------------------------------------ checkpoints

    def _ckpt(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config_json": json.dumps(self.cfg.to_dict()),
            "epoch": self.epoch,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler_json": json.dumps(self.scheduler.state_dict()),
            "state_json": json.dumps({
                "best_score": self.best_score, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "bad_epochs": self.bad_epochs, "history": self.history, "slices_seen": self.slices_seen,
                "train_seconds": self.train_seconds}),
        }

    def resume(self, path: Path) -> None:
        payload = _load(path, CHECKPOINT_FORMAT)
        old = json.loads(payload["config_json"])
        for key in ("network", "preprocess"):
            if old[key] != self.cfg.to_dict()[key]:
                raise GTVError(f"cannot resume {path}: its {key} differs from this config's")
        self.net.load_state_dict(payload["model"], strict=True)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(json.loads(payload["scheduler_json"]))
        state = json.loads(payload["state_json"])
        self.epoch = int(payload["epoch"])
        self.best_score = tuple(state["best_score"]) if state["best_score"] is not None else None
        self.best_epoch, self.best_metrics = state["best_epoch"], state["best_metrics"]
        self.bad_epochs, self.history = state["bad_epochs"], state["history"]
        self.slices_seen, self.train_seconds = state["slices_seen"], state["train_seconds"]
        self._log(f"resumed from {path} after epoch {self.epoch} (best so far: epoch {self.best_epoch})")

    def init_weights(self, source: str) -> None:
        """Start from trained weights with a fresh optimizer and schedule (fine-tuning).

        ``source``: a ``best.pt`` or ``last.pt`` of this kind of network, or a model bundle (a listed
        name such as ``hcf-openkbp-ptv70``, or a path), whose classifier or segmenter is taken by
        this run's kind. The network and the preprocessing must be the ones the weights were trained
        with, or the weights would see inputs they never learned.
        """
        from GTVAutoSegLib.bundle import open_model

        path = Path(source)
        payload = None
        if path.is_file():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # truncated, pickled code, not torch: open_model below says which, in one line
                payload = None
        if isinstance(payload, dict) and payload.get("format") in (BEST_FORMAT, CHECKPOINT_FORMAT):
            old = config_from_dict(json.loads(payload["config_json"]))
            network, preprocess, state = old.network, old.preprocess, payload["model"]
        else:
            bundle = open_model(source)
            pick = "classifier" if self.kind == "classifier" else "segmenter"
            network, preprocess = getattr(bundle, pick), bundle.preprocess
            state = getattr(bundle, f"{pick}_state")
        if resolve_config(network) != resolve_config(self.cfg.network):
            raise GTVError(f"cannot start from {source}: it holds {network.name} {network.params}, this run trains "
                           f"{self.cfg.network.name} {self.cfg.network.params}")
        if preprocess != self.cfg.preprocess:
            raise GTVError(f"cannot start from {source}: it was trained with preprocessing {preprocess.to_dict()}, "
                           f"this run uses {self.cfg.preprocess.to_dict()}")
        self.net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        self.init_from = str(source)
        self._log(f"weights from {source}")

    def _save(self, path: Path, payload: dict) -> None:
        with atomic_output(path) as tmp:  # a run killed while saving keeps its previous checkpoint
            torch.save(payload, tmp)

    def _save_best(self, metrics: dict) -> None:
        self._save(self.out / "best.pt", {
            "format": BEST_FORMAT,
            "config_json": json.dumps(self.cfg.to_dict()),
            "epoch": self.epoch,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "metrics_json": json.dumps(metrics),
            "run_json": json.dumps(self._run_info()),
        })

    def _run_info(self) -> dict:
        return {
            "train_patients": len(self.train_table.patients), "train_slices": len(self.train_table),
            "val_patients": len(self.val_table.patients), "val_slices": len(self.val_table),
            "epochs_completed": self.epoch, "slices_seen": self.slices_seen,
            "train_seconds": round(self.train_seconds, 1), "device": str(self.device),
            "world_size": self.world.size, "git_commit": self.commit, "torch": torch.__version__,
            "init_from": self.init_from,
        }

    # ------------------------------------------------------------------ loop

    def _log(self, msg: str) -> None:
        if self.world.is_main:
            print(msg, flush=True)

    def validate(self) -> Validation:
        cfg = self.cfg
        if self.kind == "classifier":
            v = validate_classifier(self.net, self.val_src, self.val_table, cfg.val_batch_size, cfg.recall_target,
                                    self.autocast, self.memory_format)
        elif self.kind == "segmenter3d":
            v = validate_segmenter3d(self.net, self.val_src, self.loss_fn, self.autocast)
        elif self.kind == "locator3d":
            v = validate_locator(self.net, self.val_src, self.loss_fn, self.autocast, self.memory_format)
        else:
            v = validate_segmenter(self.net, self.val_src, self.val_table, cfg.val_batch_size, self.loss_fn,
                                   self.autocast, self.memory_format)
        self.net.train()
        return v

    def _reserve(self) -> float:
        """Seconds kept back at the end of the budget for validating and saving what was trained."""
        if self.val_seconds is not None:
            return 1.2 * self.val_seconds + 2.0
        if self.sec_per_slice is None:
            return 0.0
        # forward passes of a validation, in slices (3D: every slice, about twice with the overlap)
        n_val_fwd = {"segmenter": int(self.val_table.tumour.sum()), "classifier": len(self.val_table),
                     "locator3d": len(self.val_table.patients) * (self.depth or 1)}.get(self.kind, 2 * len(self.val_table))
        return 0.5 * n_val_fwd * self.sec_per_slice + 2.0

    def _out_of_time(self) -> bool:
        return time.monotonic() - self.t_start + self._reserve() > self.budget

    def _fix_precision(self, x, y, flag) -> None:
        """Decide fp32 / bf16 on the first real batch (measured when ``auto``) and keep the bare
        step's rate, the floor a whole run's slices/s is compared with."""
        self.precision, self.precision_rates = choose_precision(self.cfg.precision, self.net, self.loss_fn, x, y,
                                                                flag, per_item=self.depth or 1)
        self.autocast = autocast_for(self.device, self.precision)
        rates = ", ".join(f"{k} {v:.1f}" for k, v in self.precision_rates.items())
        self._log(f"precision {self.precision} (bare step slices/s: {rates})")

    def train_epoch(self, epoch: int) -> dict:
        """One BSS epoch (cut short when the budget runs out); returns its log row."""
        cfg, world = self.cfg, self.world
        if self.kind == "locator3d":  # every patient once, BSS does not apply to whole volumes
            rows = epoch_items(len(self.train_src), cfg.seed, epoch)
        else:
            rows = epoch_rows(self.train_table.tumour, cfg.balance, cfg.seed, epoch, cfg.max_slices_per_epoch)
            if self.depth is not None:  # the drawn slices become centres of fewer, deeper patches
                rows = rows[:patch_count(rows.size, self.depth)]
        rows = distributed.shard(rows, world)
        per_item = self.depth or 1  # slices per batch item
        batches = [rows[i:i + cfg.batch_size] for i in range(0, rows.size, cfg.batch_size)]
        if len(batches) > 1 and batches[-1].size < 2:
            batches.pop()  # BatchNorm needs two samples
        self.gen.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + world.rank)
        loss_sum = torch.zeros((), device=self.device)
        steps, epoch_slices, partial, t_epoch = 0, 0, False, time.monotonic()
        bar = _bar(len(batches), f"epoch {epoch}/{cfg.max_epochs}", world.is_main)
        for i, b in enumerate(batches):
            if steps and distributed.any_rank(self._out_of_time(), world, self.device):
                partial = True
                break
            x, y, flag = self.train_src.batch(b, self.memory_format)
            if self.kind == "locator3d":
                x, y = augment_volume(x, y, cfg.augment, self.gen)
                x = x.contiguous(memory_format=self.memory_format)
            elif self.depth is None:  # 2D augmentation; 3D patches go in as they are (config.validate)
                x, y_aug = augment_batch(x, y if self.kind == "segmenter" else None, cfg.augment, self.gen)
                y = y_aug if y_aug is not None else y
            if self.precision is None:
                self._fix_precision(x, y, flag)
                t_epoch = time.monotonic()  # the probe is not training time
            loss_sum += train_step(self.model, self.loss_fn, self.optimizer, x, y, flag, self.autocast)
            self.scheduler.step(epoch - 1 + (i + 1) / len(batches))
            steps += 1
            epoch_slices += b.size * per_item * world.size
            self.slices_seen += b.size * per_item * world.size
            self.sec_per_slice = (time.monotonic() - t_epoch) / (epoch_slices / world.size)
            if bar is not None:
                bar.update(1)
                if steps % 10 == 0 or steps == len(batches):
                    bar.set_postfix(loss=f"{loss_sum.item() / steps:.4f}")
        if bar is not None:
            bar.close()
        train_s = time.monotonic() - t_epoch
        self.train_seconds += train_s
        return {"epoch": epoch, "steps": steps, "slices": epoch_slices, "partial": partial,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": float(loss_sum.item()) / steps if steps else math.nan, "train_s": round(train_s, 1)}

    def validate_and_checkpoint(self, row: dict) -> None:
        """Validate (main rank), keep ``best.pt`` if it improved, count validations without
        improvement for early stopping, and log; the decision is shared with every rank."""
        decision = None
        if self.world.is_main:
            t_val = time.monotonic()
            v = self.validate()
            self.val_seconds = time.monotonic() - t_val
            self.val_seconds_total += self.val_seconds
            improved = self.best_score is None or v.score > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.best_metrics = v.score, self.epoch, v.metrics
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            row.update(v.metrics, val_s=round(self.val_seconds, 1), best=improved)
            if improved:
                self._save_best(v.metrics)
            decision = {"bad_epochs": self.bad_epochs}
        decision = distributed.broadcast_object(decision, self.world)
        self.bad_epochs = decision["bad_epochs"]
        self.validated_epoch = self.epoch

    def log_epoch(self, row: dict) -> None:
        """``last.pt``, the CSV row and the curves (main rank)."""
        if not self.world.is_main:
            return
        row["elapsed_s"] = round(time.monotonic() - self.t_start, 1)
        self.history.append(row)
        self._log(" ".join(f"{k}={_short(val)}" for k, val in row.items()))
        self._save(self.out / "last.pt", self._ckpt())
        write_csv(self.history, self.out / "log.csv")
        keys = (("val_dice", "val_dice_median") if self.kind in DENSE_KINDS
                else ("val_recall", "val_precision", "val_auc"))
        plot_curves(self.history, self.out / "curves.png", keys)

    def stop_reason_after(self, row: dict) -> str | None:
        """Why training stops after the epoch of ``row``: ``time_budget`` (the budget ended it part
        way), ``early_stopping`` (``patience`` validations without improvement), or None to go on."""
        if row["partial"]:
            return "time_budget"
        if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
            return "early_stopping"
        return None

    def fit(self) -> dict:
        """Train until max epochs, early stopping or the time budget; returns the run summary."""
        cfg, world = self.cfg, self.world
        self.out.mkdir(parents=True, exist_ok=True)
        self.t_start = time.monotonic()
        self.budget = cfg.time_budget_min * 60 if cfg.time_budget_min is not None else math.inf
        self.val_seconds: float | None = None
        self.val_seconds_total = 0.0
        self.sec_per_slice: float | None = None
        self.validated_epoch = self.epoch
        self.gen = torch.Generator(device=self.device)
        stop_reason = "max_epochs"
        t = self.train_table
        self._log(f"{self.kind} {cfg.network.name}: {len(t.patients)} train patients, {len(t)} slices "
                  f"({t.tumour.mean():.0%} tumour), {len(self.val_table.patients)} validation patients; "
                  f"BSS {cfg.balance}, device {self.device}, {torch.get_num_threads()} threads, world {world.size}, "
                  f"{count_parameters(self.net) / 1e6:.1f} M parameters")
        self.net.train()
        first_epoch = self.epoch + 1
        while self.epoch < cfg.max_epochs:
            # every invocation trains at least one step, so a tiny budget still leaves a checkpoint
            if self.epoch + 1 > first_epoch and distributed.any_rank(self._out_of_time(), world, self.device):
                stop_reason = "time_budget"
                break
            row = self.train_epoch(self.epoch + 1)
            if row["steps"] == 0:
                stop_reason = "time_budget"
                break
            self.epoch = row["epoch"]
            distributed.sync_buffers(self.net, world)
            last = row["partial"] or self.epoch == cfg.max_epochs
            if last or self.epoch % cfg.val_every == 0:
                self.validate_and_checkpoint(row)
            self.log_epoch(row)
            stop = self.stop_reason_after(row)
            if stop:
                stop_reason = stop
                break
        if self.validated_epoch != self.epoch:  # stopped by the budget after an epoch left unvalidated
            row = {"epoch": self.epoch, "steps": 0, "slices": 0, "partial": False}
            self.validate_and_checkpoint(row)
            self.log_epoch(row)

        wall = time.monotonic() - self.t_start
        bare = self.precision_rates.get(self.precision or "", math.nan)
        summary = {
            "kind": self.kind, "network": cfg.network.name, "stop_reason": stop_reason,
            "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
            "wall_seconds": round(wall, 1),
            "throughput": {
                "precision": self.precision, "threads": torch.get_num_threads(),
                "memory_format": str(self.memory_format).removeprefix("torch."),
                "bare_step_slices_per_s": {k: _sig(v) for k, v in self.precision_rates.items()},
                # the whole run, validation and checkpoints included, against the bare step
                "wall_slices_per_s": _sig(self.slices_seen / wall) if wall > 0 else math.nan,
                "wall_over_bare": round(self.slices_seen / wall / bare, 3) if wall > 0 and bare > 0 else math.nan,
                "validation_seconds": round(self.val_seconds_total, 1),
            },
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **self._run_info(), "config": cfg.to_dict(),
        }
        if world.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
            self._log(f"stopped ({stop_reason}) after {self.epoch} epochs, {self.slices_seen} slices, "
                      f"{summary['wall_seconds']:.0f} s ({summary['throughput']['wall_slices_per_s']} slices/s, "
                      f"{summary['throughput']['wall_over_bare']} of the bare step); best epoch {self.best_epoch}: "
                      + " ".join(f"{k}={_short(v)}" for k, v in self.best_metrics.items()))
        return summary


def _sig(v: float) -> float:
    """Four significant digits: a rate of 0.01 slices/s on a starved machine keeps its precision too."""
    return float(f"{v:.4g}")


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def _bar(total: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False, file=sys.stderr)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="JSON config (training/configs/*.json); defaults otherwise")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set data.max_train_patients=20 --set loss.name=dice")
    p.add_argument("--out", help="output folder (out_dir)")
    p.add_argument("--resume", help="a last.pt to continue from, or 'auto' for OUT/last.pt when it exists")
    p.add_argument("--init-from", help="start from these weights with a fresh optimizer (fine-tuning): a best.pt, "
                                       "last.pt, or a model bundle name or path (e.g. hcf-openkbp-ptv70)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--size", type=int, help="model-space side (preprocess.size)")
    p.add_argument("--balance", help="BSS ratio, e.g. 1:1, 1:0, original")
    p.add_argument("--patience", type=int)
    p.add_argument("--time-budget-min", type=float, help="stop within this many minutes of wall clock")
    p.add_argument("--max-slices-per-epoch", type=int, help="cap on slices drawn per epoch")
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="auto (default): bf16 on a GPU, on a CPU whichever trains faster there (measured)")
    p.add_argument("--threads", type=int, help="CPU threads of this run (1 each for two runs on two cores)")
    p.add_argument("--val-every", type=int, help="validate every N epochs (and after the last)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    sets = list(args.set)
    for flag, key in (("out", "out_dir"), ("device", "device"), ("max_epochs", "max_epochs"),
                      ("batch_size", "batch_size"), ("size", "preprocess.size"), ("balance", "balance"),
                      ("patience", "patience"), ("time_budget_min", "time_budget_min"),
                      ("max_slices_per_epoch", "max_slices_per_epoch"), ("seed", "seed"),
                      ("precision", "precision"), ("threads", "threads"), ("val_every", "val_every")):
        value = getattr(args, flag)
        if value is not None:
            sets.append(f"{key}={json.dumps(value)}")
    return load_config(args.config, sets)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_flush_denormal(True)  # untrained nets on CPU slow down 2-4x on denormals
    args = parse_args(argv)
    world = distributed.World()
    try:
        cfg = config_from_args(args)
        if cfg.threads is not None:  # once, before any tensor work
            torch.set_num_threads(cfg.threads)
        world = distributed.init_world(cfg.device)
        train, val = load_tables(cfg, world)
        trainer = Trainer(cfg, train, val, world)
        if args.init_from and args.resume:
            raise GTVError("--init-from and --resume exclude each other: resume continues a run, init starts one")
        if args.init_from:
            trainer.init_weights(args.init_from)
        if args.resume:
            path = trainer.out / "last.pt" if args.resume == "auto" else Path(args.resume)
            if path.exists():
                trainer.resume(path)
            elif args.resume != "auto":
                raise GTVError(f"checkpoint to resume not found: {path}")
        trainer.fit()
    except GTVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
