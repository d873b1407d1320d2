"""Segmentation losses: the paper's CR loss and the usual alternatives, chosen by name.

Every loss takes logits ``(B, C, H, W)`` and an integer target ``(B, H, W)`` or ``(B, 1, H, W)``
and returns a scalar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss

from .errors import GTVError


def _as_index(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Class indices without a channel axis: ``(B, 1, *S)`` or ``(B, *S)`` -> ``(B, *S)`` long,
    where ``logits`` is ``(B, C, *S)`` (2D or 3D)."""
    if target.dim() == logits.dim():
        target = target[:, 0]
    return target.long()


class _MonaiWrapped(nn.Module):
    """Adapts a MONAI loss that wants ``(B, 1, H, W)`` targets to our ``(B, H, W)`` convention."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), _as_index(target, logits)[:, None])


def soft_dice() -> nn.Module:
    """Soft Dice over the foreground class(es), pooled over the batch.

    Pooling over the batch matters for 2D training: most slices in a batch hold little or no
    tumour, and a per-slice Dice of an empty slice is undefined.
    """
    return DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                    smooth_nr=1e-5, smooth_dr=1e-5)


class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy with optional class weights (the FPN baseline's weighted CE)."""

    def __init__(self, weight: tuple[float, ...] | None = None):
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), _as_index(target, logits), weight=self.weight)


class CRLoss(_MonaiWrapped):
    """CR loss of Shi et al. (CMIG 2024): ``Dice + (1 - a) * CE + a * eps``.

    ``eps`` is the mean of ``-log p`` over all classes and all pixels, a confidence penalty that
    keeps the network from becoming over-sure on the many easy background pixels. ``(1 - a) CE + a eps``
    is cross-entropy with uniform label smoothing ``a``, so this is MONAI's ``DiceCELoss`` with
    ``label_smoothing=a`` (bit-equal to the formula written out, checked by the test suite with a
    hand computation).

    Args:
        alpha: the weight ``a`` of the confidence term.
    Shapes:
        logits ``(B, C, H, W)``, target ``(B, H, W)`` integer classes -> scalar (3D alike:
        ``(B, C, D, H, W)`` with ``(B, D, H, W)``).
    """

    def __init__(self, alpha: float = 0.1):
        if not 0.0 <= alpha <= 1.0:
            raise GTVError(f"CR loss alpha must lie in [0, 1], got {alpha}")
        super().__init__(DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                                    smooth_nr=1e-5, smooth_dr=1e-5, label_smoothing=alpha))
        self.alpha = alpha


@dataclass
class LossConfig:
    """Which loss and its settings, stored with the training config.

    Args:
        name: one of ``available_losses()``.
        alpha: CR loss confidence weight.
        class_weights: per-class CE weights (``ce`` only).
        focal_gamma: focusing parameter (``focal``, ``dice_focal``).
    """

    name: str = "cr"
    alpha: float = 0.1
    class_weights: tuple[float, ...] | None = None
    focal_gamma: float = 2.0


def _build(cfg: LossConfig) -> nn.Module:
    if cfg.name == "cr":
        return CRLoss(cfg.alpha)
    if cfg.name == "dice":
        return _MonaiWrapped(soft_dice())
    if cfg.name == "ce":
        return CrossEntropy(cfg.class_weights)
    if cfg.name == "focal":
        return _MonaiWrapped(FocalLoss(include_background=True, to_onehot_y=True, gamma=cfg.focal_gamma,
                                       use_softmax=True))
    if cfg.name == "dice_ce":
        return _MonaiWrapped(DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True))
    raise GTVError(f"unknown loss '{cfg.name}'; known: {', '.join(available_losses())}")


def available_losses() -> list[str]:
    return ["cr", "dice", "ce", "focal", "dice_ce"]


def build_loss(cfg: LossConfig | str) -> nn.Module:
    """A loss module from a config or a bare name (with default settings)."""
    return _build(LossConfig(name=cfg) if isinstance(cfg, str) else cfg)
