"""The Heterogeneous Cascade Framework: a slice classifier picks the axial slices that hold
tumour, the segmenter runs only on those, every other slice is all-zero, and the slices are
stitched back into a volume. It exists to remove the false positives a 2D segmenter puts on
normal slices next to the tumour.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .errors import Cancelled

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]


@dataclass
class CascadeResult:
    """What the cascade saw, in model space.

    Attributes:
        slice_probs: ``(Z,)`` classifier tumour probability per slice (NaN when it did not run).
        selected: ``(Z,)`` bool, slices the segmenter ran on (``slice_probs >= threshold``).
        seg_probs: ``(Z, H, W)`` float16 foreground probability; exactly 0 on unselected slices.
        timings: seconds per stage (``classifier``, ``segmenter``).
    """

    slice_probs: np.ndarray
    selected: np.ndarray
    seg_probs: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def z_windows(z: int, depth: int) -> list[int]:
    """First slices of the ``depth``-slice windows a 3D segmenter runs on over ``z`` slices.

    Windows overlap by half and the last one ends on the last slice; ``z <= depth`` gives one
    window (the caller pads the stack to ``depth``).
    """
    if z <= depth:
        return [0]
    step = max(1, depth // 2)
    starts = list(range(0, z - depth + 1, step))
    if starts[-1] != z - depth:
        starts.append(z - depth)
    return starts


def average_windows(shape: tuple[int, ...], depth: int, starts: list[int],
                    predict: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Stitch a 3D network's window predictions over a ``shape = (Z, H, W)`` stack.

    ``predict(i, start)`` returns the ``(depth, H, W)`` probabilities of window ``i`` (slices
    ``start`` to ``start + depth``); overlapping windows are averaged and slices no window covers
    stay 0. Both inference (:class:`Cascade`) and validation during training stitch this way.
    """
    acc = np.zeros(shape, np.float32)
    count = np.zeros(shape[0], np.float32)
    for i, s in enumerate(starts):
        acc[s:s + depth] += predict(i, s)
        count[s:s + depth] += 1
    return acc / np.maximum(count, 1)[:, None, None]


def context_indices(idx: np.ndarray, z: int, k: int) -> np.ndarray:
    """``(B,)`` slice indices -> ``(B, k)``: each slice with its ``k // 2`` neighbours on either side
    (inferior first), repeated at the ends of the ``z``-slice stack. The 2.5D input of a network
    trained with ``context_slices = k``; ``k = 1`` is the slice alone."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"context must be an odd number of slices, got {k}")
    offsets = np.arange(k) - k // 2
    return np.clip(np.asarray(idx, np.int64)[:, None] + offsets[None, :], 0, z - 1)


def _seg_logits(out):
    # Multi-task segmenters return (segmentation, classification); the cascade wants the first.
    return out[0] if isinstance(out, (tuple, list)) else out


class Cascade:
    """Runs classifier then segmenter over the slices of one volume.

    Args:
        classifier: ``(B, 1, H, W) -> (B, 2)`` logits.
        segmenter: ``(B, 1, H, W) -> (B, 2, H, W)`` logits; with ``segmenter_depth`` a 3D network
            ``(1, 1, D, H, W) -> (1, 2, D, H, W)`` run on half-overlapping windows of D slices.
        device: where both run (chosen once by the caller).
        classifier_batch / segmenter_batch: slices per forward pass; with the chunking below
            only one batch of inputs and outputs lives on the device at a time, so a
            1000-slice CT needs no more GPU memory than a 32-slice one.
        amp: bf16 autocast and channels_last on CUDA (ignored on the CPU).
        segmenter_depth: D of a 3D segmenter; None for a 2D one.
    """

    def __init__(self, classifier: nn.Module, segmenter: nn.Module, device: torch.device,
                 classifier_batch: int = 64, segmenter_batch: int = 16, amp: bool = True,
                 segmenter_depth: int | None = None):
        self.device = device
        self.cuda = device.type == "cuda"
        fmt = torch.channels_last if (self.cuda and amp) else torch.contiguous_format
        self.classifier = classifier.to(device, memory_format=fmt).eval()
        self.segmenter_depth = segmenter_depth
        # channels_last is a 4D layout; 3D convolutions keep the default one
        self.segmenter = segmenter.to(device, memory_format=fmt if segmenter_depth is None else
                                      torch.contiguous_format).eval()
        self.memory_format = fmt
        self.classifier_batch = classifier_batch
        self.segmenter_batch = segmenter_batch
        self.amp = amp and self.cuda

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def _batches(self, slices: np.ndarray, idx: np.ndarray, size: int):
        for start in range(0, idx.size, size):
            part = idx[start:start + size]
            x = torch.from_numpy(np.ascontiguousarray(slices[part], dtype=np.float32))[:, None]
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield start, part, x

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def classify(self, slices: np.ndarray, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> np.ndarray:
        """``(Z, H, W)`` float32 slices -> ``(Z,)`` tumour probabilities."""
        z = slices.shape[0]
        probs = np.zeros(z, dtype=np.float32)
        idx = np.arange(z)
        for start, part, x in self._batches(slices, idx, self.classifier_batch):
            if cancel is not None and cancel():
                raise Cancelled("cancelled during slice classification")
            with self._autocast():
                logits = self.classifier(x)
            probs[part] = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
            if progress:
                progress("classifier", min(1.0, (start + part.size) / max(z, 1)))
        return probs

    @torch.inference_mode()
    def segment(self, slices: np.ndarray, selected: np.ndarray, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None) -> np.ndarray:
        """Foreground probability on the selected slices; zeros elsewhere. ``(Z, H, W)`` float16."""
        if self.segmenter_depth is not None:
            return self._segment_3d(slices, selected, progress, cancel)
        out = np.zeros(slices.shape, dtype=np.float16)
        idx = np.flatnonzero(selected)
        for start, part, x in self._batches(slices, idx, self.segmenter_batch):
            if cancel is not None and cancel():
                raise Cancelled("cancelled during segmentation")
            with self._autocast():
                logits = _seg_logits(self.segmenter(x))
            out[part] = torch.softmax(logits.float(), dim=1)[:, 1].to(torch.float16).cpu().numpy()
            if progress:
                progress("segmenter", min(1.0, (start + part.size) / max(idx.size, 1)))
        return out

    def _segment_3d(self, slices: np.ndarray, selected: np.ndarray, progress: ProgressFn | None,
                    cancel: CancelFn | None) -> np.ndarray:
        # Overlapping windows are averaged; a window with no selected slice is skipped, so behind
        # the classifier a 3D segmenter also runs only near the selected slices.
        z, d = slices.shape[0], self.segmenter_depth
        stack = slices
        if z < d:  # zero is air after windowing
            stack = np.concatenate([slices, np.zeros((d - z, *slices.shape[1:]), slices.dtype)])
        sel = np.zeros(stack.shape[0], bool)
        sel[:z] = selected
        starts = [s for s in z_windows(stack.shape[0], d) if sel[s:s + d].any()]

        def predict(i: int, s: int) -> np.ndarray:
            if cancel is not None and cancel():
                raise Cancelled("cancelled during segmentation")
            x = torch.from_numpy(np.ascontiguousarray(stack[s:s + d], dtype=np.float32))[None, None].to(self.device)
            with self._autocast():
                logits = _seg_logits(self.segmenter(x))
            if progress:
                progress("segmenter", (i + 1) / len(starts))
            return torch.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()

        out = average_windows(stack.shape, d, starts, predict)[:z].astype(np.float16)
        out[~selected] = 0
        return out

    def __call__(self, slices: np.ndarray, threshold: float, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None, use_classifier: bool = True,
                 select: Callable[[np.ndarray], np.ndarray] | None = None) -> CascadeResult:
        """Classify, select ``probs >= threshold``, segment the selection.

        With ``use_classifier=False`` the classifier does not run at all: every slice is segmented
        and ``slice_probs`` is NaN (the "segmenter alone" arm). ``select`` maps that ``(Z,)`` bool
        selection to the one the segmenter gets (a reviewer's correction, ``slices.SliceSelection``).
        """
        timings = {}
        t0 = time.perf_counter()
        if use_classifier:
            probs = self.classify(slices, progress, cancel)
            self._sync()
            selected = probs >= threshold
        else:
            probs = np.full(slices.shape[0], np.nan, dtype=np.float32)
            selected = np.ones(slices.shape[0], dtype=bool)
        if select is not None:
            selected = np.asarray(select(selected), dtype=bool)
        t1 = time.perf_counter()
        seg = self.segment(slices, selected, progress, cancel)
        self._sync()
        t2 = time.perf_counter()
        timings["classifier"] = t1 - t0
        timings["segmenter"] = t2 - t1
        return CascadeResult(probs, selected, seg, timings)
