"""Training the 3D locator (kind ``locator3d``): each patient's whole model-space stack on the
coarse grid of ``GTVAutoSegLib.coarse``, 3D augmentation, and validation on the model-space grid.

The locator trains on the same slice table as the 2D networks (same patients, preprocessing and
labels), so its coarse volumes are made from the table once at the start of a run.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from GTVAutoSegLib.coarse import CoarseSpec, from_coarse, labels_to_coarse, to_coarse

from .augment import AugmentConfig, coin, uniform
from .tablestore import SliceTable
from .engine import StepLoss, Validation


def patient_rows(table: SliceTable) -> list[np.ndarray]:
    """Row indices of each patient's slices in slice order, patients in table order."""
    order = np.lexsort((table.slice_index, table.patient))
    bounds = np.flatnonzero(np.diff(table.patient[order])) + 1
    return np.split(order, bounds) if order.size else []


class CoarseSource:
    """Every patient of a slice table as one coarse volume.

    Args:
        table: model-space slices and labels.
        spec: the locator's grid.
        n_classes: classes of the label map (2, or 3 with other target volumes).
        device: where batches go.
    """

    def __init__(self, table: SliceTable, spec: CoarseSpec, n_classes: int, device: torch.device):
        self.table, self.spec, self.device = table, spec, device
        self.rows = patient_rows(table)
        self.images = torch.from_numpy(np.stack([
            to_coarse(table.images[r].astype(np.float32), spec) for r in self.rows]).astype(np.float16))
        self.labels = torch.from_numpy(np.stack([labels_to_coarse(table.masks[r], spec, n_classes) for r in self.rows]))
        self.has_target = (self.labels == 1).flatten(1).any(1).long()

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, items: np.ndarray, memory_format=torch.contiguous_format):
        """``(x (B, 1, D, H, W) float32, y (B, D, H, W) int64, flag (B,) int64)`` on the device."""
        idx = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64))
        x = self.images.index_select(0, idx)[:, None].float().to(self.device)
        y = self.labels.index_select(0, idx).long().to(self.device)
        return x.contiguous(memory_format=memory_format), y, self.has_target.index_select(0, idx).to(self.device)


def epoch_items(n: int, seed: int, epoch: int) -> np.ndarray:
    """Every patient once per epoch, in a seeded order."""
    return np.random.default_rng([seed, epoch, 3]).permutation(n)


def augment_volume(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """3D augmentation of a locator batch: in-plane rotation, isotropic zoom, left-right flip (one
    ``grid_sample`` for all three), then intensity scale and shift and Gaussian noise.

    Args:
        x: ``(B, 1, D, H, W)`` float in [0, 1]; axes (superior, posterior, left) as in model space.
        y: ``(B, D, H, W)`` integer labels (nearest sampling).
    Returns:
        ``(x, y)`` of the same shapes and dtypes.
    """
    if not cfg.enabled:
        return x, y
    b = x.shape[0]
    dev = x.device
    one = torch.ones(b, device=dev)
    angle = torch.where(coin(cfg.p_rotate, b, gen, dev),
                        uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg, b, gen, dev), 0 * one) * (math.pi / 180)
    zoom = torch.where(coin(cfg.p_zoom, b, gen, dev), uniform(*cfg.zoom_range, b, gen, dev), one)
    lr = torch.where(coin(cfg.p_lrflip, b, gen, dev), -one, one)
    cos, sin, zero = torch.cos(angle) / zoom, torch.sin(angle) / zoom, 0 * one
    # grid coordinates are (x = W = left, y = H = posterior, z = D = superior); rotate about z
    theta = torch.stack([torch.stack([cos * lr, -sin, zero, zero], 1),
                         torch.stack([sin * lr, cos, zero, zero], 1),
                         torch.stack([zero, zero, 1 / zoom, zero], 1)], 1)
    grid = F.affine_grid(theta, tuple(x.shape), align_corners=False)
    x = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                      align_corners=False)[:, 0].to(y.dtype)
    shade = coin(cfg.p_intensity, b, gen, dev)
    if shade.any():
        scale = torch.where(shade, uniform(*cfg.intensity_scale, b, gen, dev), one)
        shift = torch.where(shade, uniform(*cfg.intensity_shift, b, gen, dev), 0 * one)
        x = x * scale[:, None, None, None, None] + shift[:, None, None, None, None]
    noisy = coin(cfg.p_noise, b, gen, dev)
    if noisy.any():
        x = x + torch.randn(x.shape, generator=gen, device=dev) * (cfg.noise_std * noisy[:, None, None, None, None])
    return x.clamp_(0.0, 1.0), y


@torch.no_grad()
def locator_probabilities(model, x: torch.Tensor, autocast) -> torch.Tensor:
    """``(B, 1, D, H, W)`` -> ``(B, D, H, W)`` float32 probability of class 1 (the target)."""
    with autocast:
        out = model(x)
    return torch.softmax(out.float(), 1)[:, 1]


@torch.no_grad()
def validate_locator(model, source: CoarseSource, loss_fn: StepLoss, autocast,
                     memory_format=torch.contiguous_format) -> Validation:
    """Each validation patient through the locator, scored on the model-space grid over all its
    slices: 3D Dice of probability >= 0.5 against the model-space target, slices predicted without
    target (``val_fp_slices_per_patient``) and tumour slices found. Score: mean Dice."""
    model.eval()
    table = source.table
    dices, fps, recalls, loss_sum = [], [], [], 0.0
    for i, rows in enumerate(source.rows):
        x, y, flag = source.batch(np.array([i]), memory_format)
        with autocast:
            out = model(x)
        loss_sum += float(loss_fn(out, y, flag))
        prob = from_coarse(torch.softmax(out.float(), 1)[0, 1].cpu(), (rows.size, *table.images.shape[1:]))
        pred = prob >= 0.5
        ref = table.masks[rows] == 1
        tumour = table.tumour[rows]
        dices.append(2 * float((pred & ref).sum()) / max(float(pred.sum() + ref.sum()), 1.0))
        hit = pred.reshape(rows.size, -1).any(1)
        fps.append(int((hit & ~tumour).sum()))
        recalls.append(float((hit & tumour).sum() / max(int(tumour.sum()), 1)))
    metrics = {
        "val_loss": loss_sum / max(len(source), 1),
        "val_dice": float(np.mean(dices)) if dices else math.nan,
        "val_dice_median": float(np.median(dices)) if dices else math.nan,
        "val_fp_slices_per_patient": float(np.mean(fps)) if fps else math.nan,
        "val_slice_recall": float(np.mean(recalls)) if recalls else math.nan,
        "val_patients": len(dices),
    }
    return Validation(metrics, (metrics["val_dice"] if dices else 0.0,))
