"""The pieces of a training epoch: batches from the slice table, one optimisation step, epoch
sampling with BSS, and the validation of each network kind.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from GTVAutoSegLib.cascade import context_indices
from GTVAutoSegLib.torchnets import split_output
from GTVAutoSegLib.sampling import balance_indices

from .tablestore import SliceTable


def neighbour_rows(table: SliceTable, k: int) -> np.ndarray:
    """``(N, k)`` rows of each row's slice and its ``k // 2`` neighbours on either side within its
    patient (repeated at the ends), as :func:`GTVAutoSegLib.cascade.context_indices` does at inference."""
    out = np.zeros((len(table), k), np.int64)
    order = np.lexsort((table.slice_index, table.patient))
    bounds = np.flatnonzero(np.diff(table.patient[order])) + 1
    for rows in np.split(order, bounds) if order.size else []:
        out[rows] = rows[context_indices(np.arange(rows.size), rows.size, k)]
    return out


class SliceSource:
    """A slice table as torch tensors, ready to gather batches from.

    On CUDA with ``preload`` the whole table (float16) is moved to the GPU once, so a batch is one
    ``index_select`` there; otherwise batches are gathered on the CPU (pinned) and copied over.
    ``context``: slices per input (2.5D: the slice and its neighbours as channels).
    """

    def __init__(self, table: SliceTable, device: torch.device, preload: bool = True, context: int = 1):
        self.device = device
        home = device if (preload and device.type == "cuda") else torch.device("cpu")
        self.images = torch.from_numpy(table.images).to(home)
        self.masks = torch.from_numpy(table.masks).to(home)
        self.flags = torch.from_numpy(table.tumour.astype(np.int64)).to(home)
        self.neighbours = torch.from_numpy(neighbour_rows(table, context)).to(home) if context > 1 else None
        self.pin = home.type == "cpu" and device.type == "cuda"

    def batch(self, rows: np.ndarray, memory_format=torch.contiguous_format):
        """``(x (B, context, H, W) float32, y (B, H, W) int64, flag (B,) int64)`` on the device."""
        idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.images.device)
        if self.neighbours is None:
            images = self.images.index_select(0, idx)[:, None]
        else:
            nb = self.neighbours.index_select(0, idx)
            images = self.images.index_select(0, nb.flatten()).view(*nb.shape, *self.images.shape[1:])
        parts = [images, self.masks.index_select(0, idx), self.flags.index_select(0, idx)]
        if self.pin:
            parts = [p.pin_memory() for p in parts]
        x, y, flag = (p.to(self.device, non_blocking=True) for p in parts)
        x = x.float().contiguous(memory_format=memory_format)
        return x, y.long(), flag


def epoch_rows(tumour: np.ndarray, ratio: str, seed: int, epoch: int, cap: int | None) -> np.ndarray:
    """This epoch's training rows: BSS draw (a fresh set of normal slices each epoch), shuffled,
    then capped at ``cap`` (a random subset, so the ratio holds in expectation)."""
    rows = balance_indices(tumour, ratio, seed=seed * 100_003 + epoch)
    rows = np.random.default_rng([seed, epoch]).permutation(rows)
    return rows[:cap] if cap is not None else rows


PRECISIONS = ("auto", "fp32", "bf16")


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast (the weights and the optimizer stay fp32; bf16 needs no loss scaling), or nothing."""
    if precision not in PRECISIONS[1:]:
        raise ValueError(f"precision must be one of {PRECISIONS[1:]} here, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def memory_format_for(kind: str) -> torch.memory_format:
    """channels_last for these conv nets on CPU (oneDNN) and GPU alike: measured on this project's
    2-core CPU at 96 x 96, batch 32, fp32: ResNet18 +14%, SANet +19% slices/s; 3D U-Nets at 64^3 x1.4-2.1."""
    return torch.channels_last_3d if kind in ("segmenter3d", "locator3d") else torch.channels_last


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (timing); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step_rate(model: nn.Module, loss_fn: nn.Module, x, y, flag, precision: str, steps: int = 3,
                   per_item: int = 1) -> float:
    """Slices/s of bare training steps on one fixed batch, run on a copy: the caller's network and
    optimizer are left untouched. One untimed step first (oneDNN / cuDNN pick their kernels there)."""
    import copy

    net = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
    autocast = autocast_for(x.device, precision)
    train_step(net, loss_fn, opt, x, y, flag, autocast)
    sync(x.device)
    t = time.perf_counter()
    for _ in range(steps):
        train_step(net, loss_fn, opt, x, y, flag, autocast)
    sync(x.device)
    return x.shape[0] * per_item * steps / (time.perf_counter() - t)


# How much faster bf16's bare step must be for ``auto`` to train in it on a CPU. A VNet once flipped
# to bf16 at 17.9 against 16.8 slices/s (a busy machine's noise; fp32 is 1.2x faster there when quiet)
# and its validation loss came out NaN in that run (not reproduced since).
BF16_MARGIN = 1.1


def choose_precision(requested: str, model: nn.Module, loss_fn: nn.Module, x, y, flag,
                     per_item: int = 1) -> tuple[str, dict[str, float]]:
    """``(precision, bare slices/s per precision measured)``.

    ``auto`` is bf16 on a GPU. On a CPU it is bf16 if it trains at least ``BF16_MARGIN`` times as
    fast as fp32 here, measured on the run's first batch, else fp32: bf16 pays where oneDNN has bf16 matrix units (AMX) or fast
    bf16 dot products (Zen 4), and costs where it has only avx512_bf16 conversions (this project's
    Xeon: fp32 1.2-1.4x faster for ResNet18 and SANet).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto" and x.device.type == "cuda":
        requested = "bf16"
    candidates = ("fp32", "bf16") if requested == "auto" else (requested,)
    rates = {p: bare_step_rate(model, loss_fn, x, y, flag, p, per_item=per_item) for p in candidates}
    if len(rates) == 2:  # bf16 only when clearly faster: a run's arithmetic should not follow timing noise
        return ("bf16" if rates["bf16"] >= BF16_MARGIN * rates["fp32"] else "fp32"), rates
    return candidates[0], rates


class StepLoss(nn.Module):
    """The training loss of either kind of network.

    Classifier: cross-entropy of ``(B, 2)`` logits against the slice flag. Segmenter: the configured
    loss on ``(B, 2, H, W)`` logits; a multi-task segmenter adds cross-entropy on its slice head.
    """

    def __init__(self, kind: str, seg_loss: nn.Module | None, class_weights=None):
        super().__init__()
        self.kind = kind
        self.seg_loss = seg_loss
        w = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", w)

    def forward(self, out, y: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
        if self.kind == "classifier":
            return F.cross_entropy(out.float(), flag, weight=self.weight)
        seg, cls = split_output(out)
        loss = self.seg_loss(seg, y)
        if cls is not None:
            loss = loss + F.cross_entropy(cls.float(), flag)
        return loss


def train_step(model: nn.Module, loss_fn: StepLoss, optimizer: torch.optim.Optimizer, x, y, flag,
               autocast) -> torch.Tensor:
    """One optimisation step; returns the detached loss (no host sync)."""
    with autocast:
        out = model(x)
    loss = loss_fn(out, y, flag)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ------------------------------------------------------------------------------------ validation


@torch.no_grad()
def _forward_rows(model, source: SliceSource, rows: np.ndarray, batch: int, autocast, memory_format):
    for start in range(0, rows.size, batch):
        part = rows[start:start + batch]
        x, y, flag = source.batch(part, memory_format)
        with autocast:
            out = model(x)
        yield part, out, y, flag


def operating_threshold(probs: np.ndarray, labels: np.ndarray, recall_target: float) -> float:
    """The highest threshold ``t`` with recall of ``probs >= t`` at least ``recall_target``.

    With ``n`` positive slices, recall >= target needs the ``ceil(target * n)`` most probable
    positives above ``t``, so ``t`` is that positive's probability. No positives: 0.5.
    """
    pos = np.sort(np.asarray(probs, dtype=np.float64)[np.asarray(labels, bool)])[::-1]
    if pos.size == 0:
        return 0.5
    k = max(1, math.ceil(recall_target * pos.size - 1e-9))
    return float(pos[k - 1])


def _auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (MONAI's ``compute_roc_auc``; ties count half); NaN when one class is absent."""
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return math.nan  # checked here: MONAI would warn, then return NaN
    from monai.metrics import compute_roc_auc

    return float(compute_roc_auc(torch.as_tensor(np.asarray(probs)), torch.as_tensor(labels.astype(np.int64))))


@dataclass
class Validation:
    """Metrics of one validation pass and the selection score (higher is better, compared as a tuple)."""

    metrics: dict[str, float]
    score: tuple[float, ...]


def validate_classifier(model, source: SliceSource, table: SliceTable, batch: int, recall_target: float,
                        autocast, memory_format=torch.contiguous_format) -> Validation:
    """Every validation slice through the classifier.

    The operating threshold is picked here (highest keeping recall >= target), so recall there is
    the target by construction; the score is ``(min(recall, target), precision)``: among epochs that
    reach the target recall, the most precise one wins.
    """
    model.eval()
    rows = np.arange(len(table))
    probs = np.zeros(rows.size, np.float32)
    loss_sum = 0.0
    for part, out, _, flag in _forward_rows(model, source, rows, batch, autocast, memory_format):
        logits = out.float()
        loss_sum += float(F.cross_entropy(logits, flag, reduction="sum"))
        probs[part] = torch.softmax(logits, 1)[:, 1].cpu().numpy()
    labels = table.tumour
    thr = operating_threshold(probs, labels, recall_target)
    sel = probs >= thr
    tp, fp = int((sel & labels).sum()), int((sel & ~labels).sum())
    recall = tp / max(int(labels.sum()), 1)
    precision = tp / (tp + fp) if tp + fp else 1.0
    at_half = probs >= 0.5
    metrics = {
        "val_loss": loss_sum / max(rows.size, 1),
        "val_threshold": thr,
        "val_recall": recall,
        "val_precision": precision,
        "val_fp_slices_per_patient": fp / max(len(table.patients), 1),
        "val_recall_at_0.5": float((at_half & labels).sum() / max(int(labels.sum()), 1)),
        "val_auc": _auc(probs, labels),
    }
    return Validation(metrics, (min(recall, recall_target), precision))


def validate_segmenter(model, source: SliceSource, table: SliceTable, batch: int, loss_fn: StepLoss,
                       autocast, memory_format=torch.contiguous_format) -> Validation:
    """The segmenter on the validation patients' tumour slices (what it sees behind the classifier).

    Dice is pooled per patient over all its tumour slices (a 3D Dice on those slices), then
    averaged over patients; ``val_dice_pooled`` pools every voxel of every patient. Score: mean Dice.
    """
    model.eval()
    rows = np.flatnonzero(table.tumour)
    n_pat = len(table.patients)
    inter, p_sum, g_sum = np.zeros(n_pat), np.zeros(n_pat), np.zeros(n_pat)
    loss_sum, n_batches = 0.0, 0
    for part, out, y, flag in _forward_rows(model, source, rows, batch, autocast, memory_format):
        seg, _ = split_output(out)
        loss_sum += float(loss_fn(out, y, flag))
        n_batches += 1
        pred = seg.float().argmax(1) == 1
        ref = y == 1
        pat = table.patient[part]
        np.add.at(inter, pat, (pred & ref).sum((1, 2)).cpu().numpy())
        np.add.at(p_sum, pat, pred.sum((1, 2)).cpu().numpy())
        np.add.at(g_sum, pat, ref.sum((1, 2)).cpu().numpy())
    has = g_sum > 0
    dice = 2 * inter[has] / np.maximum(p_sum[has] + g_sum[has], 1)
    metrics = {
        "val_loss": loss_sum / max(n_batches, 1),
        "val_dice": float(dice.mean()) if dice.size else math.nan,
        "val_dice_median": float(np.median(dice)) if dice.size else math.nan,
        "val_dice_pooled": float(2 * inter.sum() / max(p_sum.sum() + g_sum.sum(), 1)),
        "val_patients": int(has.sum()),
    }
    return Validation(metrics, (metrics["val_dice"] if dice.size else 0.0,))
