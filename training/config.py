"""Training configuration: dataclasses read from a JSON file, overridable from the command line.

What is trained follows from the network's registered kind (classifier or segmenter), never from
its name. A config file names only what differs from the defaults below.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.losses import LossConfig
from GTVAutoSegLib.models import NetConfig, network_kind
from GTVAutoSegLib.preprocessing import PreprocessSpec
from GTVAutoSegLib.sampling import parse_ratio

from .augment import AugmentConfig
from .data import DataConfig


@dataclass
class OptimConfig:
    """AdamW with cosine annealing and warm restarts, as the paper trains both networks.

    Args:
        lr / weight_decay: AdamW.
        restart_epochs: ``T_0`` of ``CosineAnnealingWarmRestarts`` in epochs; the schedule is
            stepped every iteration with a fractional epoch, so it is smooth whatever the epoch size.
        restart_mult: ``T_mult``.
        min_lr: ``eta_min``.
    """

    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    restart_epochs: Annotated[int, Field(ge=1)] = 20
    restart_mult: Annotated[int, Field(ge=1)] = 1
    min_lr: Annotated[float, Field(ge=0)] = 0.0


@dataclass
class TrainConfig:
    """One training run.

    Args:
        network: what to train; its registered kind decides classifier vs segmenter training.
        loss: segmenter loss (CR by default); a classifier always trains with cross-entropy and
            uses only ``loss.class_weights``.
        balance: BSS tumour:normal ratio of the slices drawn each epoch (``"1:1"``, ``"original"``...).
        data / preprocess / optim / augment: see their classes.
        batch_size: slices per step per process.
        max_epochs: upper bound on epochs.
        patience: stop after this many validations without improvement (0 disables early stopping).
        max_slices_per_epoch: cap on the slices drawn per epoch (after BSS; a random subset), for
            fitting a CPU budget; None draws them all.
        time_budget_min: wall-clock budget of the whole run in minutes; the run stops within it,
            validating and saving what it has (None: no budget).
        recall_target: the classifier's operating threshold is the highest one keeping validation
            slice recall at or above this.
        val_batch_size: slices per forward pass in validation.
        seed: all randomness (init, BSS draws, shuffling, augmentation).
        device: ``auto`` / ``cpu`` / ``cuda``.
        amp: bf16 autocast and channels_last on CUDA (ignored on the CPU).
        preload_to_device: keep the slice table on the GPU (fast batches; needs the memory).
        out_dir: where checkpoints, the CSV log and the curves go.
    """

    network: NetConfig = field(default_factory=lambda: NetConfig("sanet"))
    loss: LossConfig = field(default_factory=LossConfig)
    balance: str = "1:1"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessSpec = field(default_factory=lambda: PreprocessSpec(size=128))
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: Annotated[int, Field(ge=1)] = 16
    max_epochs: Annotated[int, Field(ge=1)] = 100
    patience: Annotated[int, Field(ge=0)] = 15
    max_slices_per_epoch: Annotated[int, Field(ge=1)] | None = None
    time_budget_min: Annotated[float, Field(gt=0)] | None = None
    recall_target: Annotated[float, Field(gt=0, le=1)] = 0.95
    val_batch_size: Annotated[int, Field(ge=1)] = 32
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    preload_to_device: bool = True
    out_dir: str = "training/runs/run"

    @property
    def kind(self) -> str:
        return network_kind(self.network.name)

    def validate(self) -> "TrainConfig":
        self.kind  # unknown network names fail here, before any data is read
        parse_ratio(self.balance)
        self.preprocess.validate()
        if self.kind == "segmenter3d" and self.augment.enabled:
            raise GTVError("augmentation is 2D only; set augment.enabled=false for a 3D segmenter")
        if self.kind == "classifier" and self.loss.name not in ("ce", "cr"):
            raise GTVError(f"a classifier trains with cross-entropy; loss {self.loss.name!r} does not apply")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_dict()
        d["preprocess"] = self.preprocess.to_dict()
        return json.loads(json.dumps(d))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- the JSON file <- ``key.sub=value`` overrides (values parsed as JSON when they can be)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise GTVError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise GTVError(f"{path} is not valid JSON: {exc}") from None
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise GTVError(f"override {item!r} must look like key.sub=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise GTVError(f"override {item!r}: {p} is not a section")
        node[leaf] = value
    return validate_train_config(data).validate()


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :meth:`TrainConfig.to_dict` (used to resume and to build bundles)."""
    return validate_train_config(data).validate()


def validate_train_config(data: dict[str, Any]) -> TrainConfig:
    from .schema import validate_train_config as check  # pydantic, imported only to read a config

    return check(data)
