"""3D segmenters (kind ``segmenter3d``): training patches of consecutive slices and validation.

A 3D network is trained on the same slice table as the 2D ones, so data, preprocessing, patients
and BSS are shared: an epoch's BSS draw of slices becomes the centres of ``depth``-slice patches of
the same patient, and validation runs the library's half-overlapping windows
(:func:`GTVAutoSegLib.cascade.z_windows`) over each validation patient, scored like the 2D
segmenters on the tumour slices.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from GTVAutoSegLib.cascade import average_windows, z_windows
from GTVAutoSegLib.torchnets import split_output

from .tablestore import SliceTable
from .engine import StepLoss, Validation


def patch_count(n_rows: int, depth: int) -> int:
    """Patches per epoch for ``n_rows`` drawn slices: as many slices go through the network as a
    2D epoch of ``n_rows`` would put through."""
    return max(1, math.ceil(n_rows / depth))


class VolumeSource:
    """Stacks of ``depth`` consecutive model-space slices of one patient.

    Args:
        table: the slice table (any row order; patients are re-assembled by ``slice_index``).
        device: where batches go.
        depth: D, slices per patch.
    """

    def __init__(self, table: SliceTable, device: torch.device, depth: int):
        self.table, self.device, self.depth = table, device, depth
        order = np.lexsort((table.slice_index, table.patient))
        self.patient_rows: list[np.ndarray] = []
        self.position = np.zeros(len(table), np.int64)  # row -> its place in its patient's stack
        bounds = np.flatnonzero(np.diff(table.patient[order])) + 1
        for rows in np.split(order, bounds) if order.size else []:
            self.position[rows] = np.arange(rows.size)
            self.patient_rows.append(rows)
        self.patient_of_group = [int(table.patient[r[0]]) for r in self.patient_rows]
        self.images = torch.from_numpy(table.images)
        self.masks = torch.from_numpy(table.masks)

    def window_rows(self, row: int) -> np.ndarray:
        """The ``depth`` rows of the patch centred on ``row`` (shifted to stay inside the patient;
        -1 pads a patient shorter than ``depth``)."""
        group = self.patient_of_group.index(int(self.table.patient[row]))
        rows = self.patient_rows[group]
        start = int(np.clip(self.position[row] - self.depth // 2, 0, max(0, rows.size - self.depth)))
        out = rows[start:start + self.depth]
        return np.concatenate([out, np.full(self.depth - out.size, -1)]) if out.size < self.depth else out

    def _stack(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.table.images.shape[1:]
        x = torch.zeros((rows.size, h, w), dtype=torch.float32)
        y = torch.zeros((rows.size, h, w), dtype=torch.int64)
        ok = rows >= 0
        idx = torch.from_numpy(rows[ok])
        x[torch.from_numpy(ok)] = self.images.index_select(0, idx).float()
        y[torch.from_numpy(ok)] = self.masks.index_select(0, idx).long()
        return x, y

    def batch(self, centres: np.ndarray, memory_format=None):
        """``(x (B, 1, D, H, W) float32, y (B, D, H, W) int64, flag (B,) int64)`` on the device;
        ``flag`` says whether the patch holds a tumour slice."""
        xs, ys, flags = [], [], []
        for r in np.asarray(centres, np.int64):
            rows = self.window_rows(int(r))
            x, y = self._stack(rows)
            xs.append(x)
            ys.append(y)
            flags.append(bool(self.table.tumour[rows[rows >= 0]].any()))
        x = torch.stack(xs)[:, None].to(self.device).contiguous(memory_format=memory_format or torch.contiguous_format)
        y = torch.stack(ys).to(self.device)
        return x, y, torch.tensor(flags, dtype=torch.int64, device=self.device)


@torch.no_grad()
def validate_segmenter3d(model, source: VolumeSource, loss_fn: StepLoss, autocast) -> Validation:
    """Each validation patient through half-overlapping windows, averaged; Dice pooled per patient
    over its tumour slices (as :func:`training.engine.validate_segmenter` scores 2D segmenters)."""
    model.eval()
    table, d = source.table, source.depth
    dices, loss_sum, n_windows = [], 0.0, 0
    inter_all = p_all = g_all = 0.0
    for rows in source.patient_rows:
        x, y = source._stack(rows)
        z = rows.size
        if z < d:
            pad = d - z
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
            y = torch.cat([y, y.new_zeros((pad, *y.shape[1:]))])
        losses = []

        def predict(i: int, s: int) -> np.ndarray:
            xb = x[s:s + d][None, None].to(source.device)
            yb = y[s:s + d][None].to(source.device)
            with autocast:
                out = model(xb)
            seg, _ = split_output(out)
            losses.append(float(loss_fn(out, yb, torch.ones(1, dtype=torch.int64, device=source.device))))
            return torch.softmax(seg.float(), 1)[0, 1].cpu().numpy()

        prob = torch.from_numpy(average_windows(tuple(x.shape), d, z_windows(x.shape[0], d), predict)[:z])
        loss_sum, n_windows = loss_sum + sum(losses), n_windows + len(losses)
        tumour = torch.from_numpy(table.tumour[rows])
        pred = (prob >= 0.5)[tumour]
        ref = (y[:z] == 1)[tumour]
        inter, p_sum, g_sum = float((pred & ref).sum()), float(pred.sum()), float(ref.sum())
        if g_sum == 0:
            continue  # no target in model space on its tumour slices (2D validation skips these too)
        inter_all, p_all, g_all = inter_all + inter, p_all + p_sum, g_all + g_sum
        dices.append(2 * inter / max(p_sum + g_sum, 1.0))
    metrics = {
        "val_loss": loss_sum / max(n_windows, 1),
        "val_dice": float(np.mean(dices)) if dices else math.nan,
        "val_dice_median": float(np.median(dices)) if dices else math.nan,
        "val_dice_pooled": 2 * inter_all / max(p_all + g_all, 1.0),
        "val_patients": len(dices),
    }
    return Validation(metrics, (metrics["val_dice"] if dices else 0.0,))
