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

from GTVAutoSegLib.coarse import CoarseSpec
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.losses import LossConfig
from GTVAutoSegLib.models import DENSE_KINDS, NetConfig, network_kind
from GTVAutoSegLib.preprocessing import PreprocessSpec
from GTVAutoSegLib.sampling import parse_ratio

from .augment import AugmentConfig
from .data import DataConfig
from .engine import PRECISIONS


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
        coarse: the grid of a 3D locator (kind ``locator3d``); stored in its bundle.
        context_slices: 2D networks see each slice with ``context_slices // 2`` neighbours on either
            side as input channels (2.5D); odd; 1 is the slice alone. ``network.in_channels`` must
            equal it.
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
        device: one of ``GTVAutoSegLib.device.DEVICE_NAMES``.
        precision: ``fp32``, ``bf16`` (autocast; weights and optimizer stay fp32) or ``auto``: bf16
            on a GPU, and on a CPU whichever of the two trains faster there, measured on the first
            batch (``summary.json`` records the choice and both rates).
        threads: CPU threads for this run (``torch.set_num_threads``), set once at the start; None
            keeps torch's default (all cores). Two runs side by side on two cores: 1 each.
        val_every: validate every N epochs (and always after the last one); ``patience`` counts
            validations.
        preload_to_device: keep the slice table on the GPU (fast batches; needs the memory).
        out_dir: where checkpoints, the CSV log and the curves go.
    """

    network: NetConfig = field(default_factory=lambda: NetConfig("sanet"))
    loss: LossConfig = field(default_factory=LossConfig)
    balance: str = "1:1"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessSpec = field(default_factory=lambda: PreprocessSpec(size=128))
    coarse: CoarseSpec = field(default_factory=CoarseSpec)
    context_slices: Annotated[int, Field(ge=1)] = 1
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
    precision: str = "auto"
    threads: Annotated[int, Field(ge=1)] | None = None
    val_every: Annotated[int, Field(ge=1)] = 1
    preload_to_device: bool = True
    out_dir: str = "training/runs/run"

    @property
    def kind(self) -> str:
        return network_kind(self.network.name)

    @property
    def n_classes(self) -> int:
        """Classes of the training labels: background, target, and one for the other targets."""
        return 3 if self.data.other_targets else 2

    def validate(self) -> "TrainConfig":
        self.kind  # unknown network names fail here, before any data is read
        parse_ratio(self.balance)
        self.preprocess.validate()
        if self.precision not in PRECISIONS:
            raise GTVError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.kind == "segmenter3d" and self.augment.enabled:
            raise GTVError("augmentation of 3D patches is not implemented; set augment.enabled=false for a 3D segmenter")
        if self.context_slices < 1 or self.context_slices % 2 == 0:
            raise GTVError(f"context_slices must be odd and >= 1, got {self.context_slices}")
        if self.kind in ("segmenter3d", "locator3d") and self.context_slices != 1:
            raise GTVError("context_slices is for 2D networks; a 3D network sees its neighbours already")
        if self.network.in_channels != self.context_slices:
            raise GTVError(f"network.in_channels ({self.network.in_channels}) must equal context_slices "
                           f"({self.context_slices}): one input channel per slice")
        n_classes = self.n_classes if self.kind in DENSE_KINDS else 2
        if self.network.out_channels != n_classes:
            raise GTVError(f"network.out_channels must be {n_classes} for a {self.kind}"
                           + (f" with other_targets {list(self.data.other_targets)}" if self.data.other_targets else ""))
        self.coarse.validate()
        if self.kind == "classifier" and self.loss.name not in ("ce", "cr"):
            raise GTVError(f"a classifier trains with cross-entropy; loss {self.loss.name!r} does not apply")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_dict()
        d["preprocess"] = self.preprocess.to_dict()
        d["coarse"] = self.coarse.to_dict()
        return json.loads(json.dumps(d))


def _upgrade(data: dict) -> dict:
    """Configs written before ``precision`` existed said ``amp`` (bf16 on CUDA only): ``false``
    meant fp32 everywhere, ``true`` is what ``auto`` now means."""
    if isinstance(data, dict) and "amp" in data and "precision" not in data:
        data = dict(data)
        data["precision"] = "auto" if data.pop("amp") else "fp32"
    return data


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
    return validate_train_config(_upgrade(data)).validate()


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :meth:`TrainConfig.to_dict` (used to resume and to build bundles)."""
    return validate_train_config(_upgrade(data)).validate()


def validate_train_config(data: dict[str, Any]) -> TrainConfig:
    from .schema import validate_config  # pydantic, imported only to read a config

    sections = (OptimConfig, DataConfig, AugmentConfig, LossConfig, NetConfig, PreprocessSpec, CoarseSpec)
    return validate_config(data, TrainConfig, sections)
