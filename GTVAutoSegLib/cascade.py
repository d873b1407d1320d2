"""The Heterogeneous Cascade Framework: a slice classifier picks the axial slices that hold
tumour, the segmenter runs only on those, every other slice is all-zero, and the slices are
stitched back into a volume. It exists to remove the false positives a 2D segmenter puts on
normal slices next to the tumour.

A model may add a 3D locator (the same decoupling with a 3D "where"): one pass over the whole body
box on a coarse grid (``coarse.py``) whose probabilities can choose the slices instead of (or with)
the classifier, keep the 2D output within an in-plane region around what it found, and be
averaged with the 2D segmenter's probabilities. :class:`CombineSpec` says which.

The cascade itself does not import torch: it runs "nets", objects whose ``probabilities(x)`` maps a
float32 input batch to class-1 probabilities. A torch module given to it is wrapped in
``torchnets.TorchNet`` (device, memory format, autocast); ``onnxnets.OrtNet`` runs an ONNX Runtime
session, so a cold call can segment without importing torch at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .coarse import CoarseSpec, from_coarse, to_coarse
from .device import PRECISIONS
from .errors import Cancelled, GTVError

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]


GATES = ("classifier", "locator", "both", "none")



@dataclass
class CombineSpec:
    """How the networks of a model make one result. Stored in the model bundle.

    Args:
        gate: which slices are segmented: ``classifier`` (its probability >= the model's threshold:
            the paper's cascade), ``locator`` (the locator's highest probability on the slice >=
            the model's threshold), ``both`` (both must agree) or ``none`` (every slice). Either
            way the model's threshold applies to the slice probabilities that are reported for review.
        locator_threshold: with gate ``both``, the locator's threshold (the classifier takes the
            model's).
        locator_margin: slices added on each side of every located slice.
        locator_weight: on segmented slices, ``(1 - w) * p_2d + w * p_locator``; 1 uses the locator
            alone (the 2D segmenter then does not run), 0 the 2D segmenter alone.
        region_margin_mm: when >= 0, 2D probabilities farther than this in-plane from the
            locator's mask (probability >= 0.5) are set to 0; negative keeps them all.
        tta_flip: average every network's probabilities over the input and its left-right mirror.
    """

    gate: str = "classifier"
    locator_threshold: float = 0.5
    locator_margin: int = 0
    locator_weight: float = 0.0
    region_margin_mm: float = -1.0
    tta_flip: bool = False

    def validate(self, has_classifier: bool = True, has_locator: bool = False) -> "CombineSpec":
        if self.gate not in GATES:
            raise GTVError(f"combine gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.gate in ("classifier", "both") and not has_classifier:
            raise GTVError(f"combine gate {self.gate!r} needs a slice classifier, and this model has none")
        if self.uses_locator() and not has_locator:
            raise GTVError("this combination needs a 3D locator, and the model has none")
        if not 0.0 <= self.locator_threshold <= 1.0 or not 0.0 <= self.locator_weight <= 1.0:
            raise GTVError("combine locator_threshold and locator_weight must lie in [0, 1]")
        if isinstance(self.locator_margin, bool) or not isinstance(self.locator_margin, int) or self.locator_margin < 0:
            raise GTVError(f"combine locator_margin must be a whole number of slices >= 0, got {self.locator_margin!r}")
        if not isinstance(self.tta_flip, bool):
            raise GTVError(f"combine tta_flip must be true or false, got {self.tta_flip!r}")
        return self

    def uses_locator(self, gate: str | None = None) -> bool:
        """Whether this combination needs the locator's output (with ``gate``, the gate a call
        uses instead of the spec's: ``none`` when no slice is gated out)."""
        gate = self.gate if gate is None else gate
        return gate in ("locator", "both") or self.locator_weight > 0 or self.region_margin_mm >= 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CombineSpec":
        if not isinstance(d, dict):
            raise GTVError(f"combine spec must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise GTVError(f"unknown combine key(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass
class CascadeResult:
    """What the cascade saw, in model space.

    Attributes:
        slice_probs: ``(Z,)`` per slice: the classifier's tumour probability, or without one the
            locator's highest probability on the slice (NaN when neither ran).
        selected: ``(Z,)`` bool, slices the segmenter ran on.
        seg_probs: ``(Z, H, W)`` float16 foreground probability; exactly 0 on unselected slices.
        timings: seconds per stage (``locator``, ``classifier``, ``segmenter``).
    """

    slice_probs: np.ndarray
    selected: np.ndarray
    seg_probs: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


# z-window stitching is ours on purpose (not MONAI's sliding_window_inference): it skips windows that
# hold no selected slice and can be cancelled between windows.
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


class Cascade:
    """Runs locator, classifier and segmenter over the slices of one volume.

    Args:
        classifier: ``(B, k, H, W) -> (B, 2)`` logits, or None (a model whose locator picks slices).
        segmenter: ``(B, k, H, W) -> (B, K, H, W)`` logits (class 1 is the target); with
            ``segmenter_depth`` a 3D network ``(1, 1, D, H, W) -> (1, K, D, H, W)`` run on
            half-overlapping windows of D slices.
        device: where torch modules run (chosen once by the caller); None for nets that are not
            torch modules (ONNX Runtime's run on the CPU).
        classifier_batch / segmenter_batch: slices per forward pass; with the chunking below
            only one batch of inputs and outputs lives on the device at a time, so a
            1000-slice CT needs no more GPU memory than a 32-slice one.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on the CPU), ``fp32`` or ``bf16`` (autocast
            on either device; on a CPU it pays only with native bf16, see ``device.PRECISION_HELP``).
        segmenter_depth: D of a 3D segmenter; None for a 2D one.
        locator: ``(1, 1, D, H, W) -> (1, K, D, H, W)`` on the ``coarse`` grid, or None.
        coarse: the locator's grid.
        combine: how the networks' outputs are combined.
        classifier_context / segmenter_context: slices per 2D input (2.5D), odd.
        has_classifier: whether the model has a classifier (default: ``classifier`` is given).
        resizer: how the locator's grid is made and brought back: ``torch`` or ``numpy``
            (``preprocessing.RESIZERS``).

    Each network is a torch module or a net with ``probabilities(x) -> class-1 probabilities``.
    """

    def __init__(self, classifier, segmenter, device=None,
                 classifier_batch: int = 64, segmenter_batch: int = 16, precision: str = "auto",
                 segmenter_depth: int | None = None, locator=None,
                 coarse: CoarseSpec | None = None, combine: CombineSpec | None = None,
                 classifier_context: int = 1, segmenter_context: int = 1, has_classifier: bool | None = None,
                 resizer: str = "torch"):
        self.device = device
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        # The model may have a classifier that was not built (``Segmenter(use_classifier=False)``):
        # the model's combination stays valid and per-slice values keep their meaning; only a call
        # that gates with the classifier is refused.
        self.has_classifier = classifier is not None if has_classifier is None else has_classifier
        self.combine = (combine or CombineSpec()).validate(self.has_classifier, locator is not None)
        if precision not in PRECISIONS:
            raise GTVError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = ("bf16" if self.cuda else "fp32") if precision == "auto" else precision
        self.segmenter_depth = segmenter_depth
        self.classifier = self._net(classifier, 2)
        self.segmenter = self._net(segmenter, 2 if segmenter_depth is None else 3)
        self.locator = self._net(locator, 3)
        self.coarse = coarse or CoarseSpec()
        self.classifier_batch = classifier_batch
        self.segmenter_batch = segmenter_batch
        self.classifier_context = classifier_context
        self.segmenter_context = segmenter_context
        self.resizer = resizer

    def _net(self, net, dims: int):
        """A torch module wrapped as a net (its device, memory format and autocast); nets as they are."""
        if net is None or hasattr(net, "probabilities"):
            return net
        from .torchnets import TorchNet

        return TorchNet(net, self.device, self.precision, dims)

    def _batches(self, slices: np.ndarray, idx: np.ndarray, size: int, context: int):
        z = slices.shape[0]
        for start in range(0, idx.size, size):
            part = idx[start:start + size]
            yield start, part, np.ascontiguousarray(slices[context_indices(part, z, context)], dtype=np.float32)

    def _probs(self, net, x: np.ndarray, spatial: bool) -> np.ndarray:
        """Class-1 probabilities (float32) of ``net`` on ``x``; with ``tta_flip`` averaged with the
        mirror image's (flipped back). ``spatial``: per-pixel output whose last axis is left-right."""
        p = net.probabilities(x)
        if self.combine.tta_flip:
            q = net.probabilities(np.ascontiguousarray(x[..., ::-1]))
            p = (p + (q[..., ::-1] if spatial else q)) / np.float32(2)
        return p

    def locate(self, slices: np.ndarray, cancel: CancelFn | None = None) -> np.ndarray:
        """``(Z, H, W)`` slices -> ``(Z, H, W)`` float32 locator probability (one coarse pass)."""
        if cancel is not None and cancel():
            raise Cancelled("cancelled before the locator")
        x = to_coarse(slices, self.coarse, self.resizer)[None, None]
        p = self._probs(self.locator, np.ascontiguousarray(x, dtype=np.float32), spatial=True)
        return from_coarse(p[0], slices.shape, self.resizer)

    def classify(self, slices: np.ndarray, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> np.ndarray:
        """``(Z, H, W)`` float32 slices -> ``(Z,)`` tumour probabilities."""
        z = slices.shape[0]
        probs = np.zeros(z, dtype=np.float32)
        for start, part, x in self._batches(slices, np.arange(z), self.classifier_batch, self.classifier_context):
            if cancel is not None and cancel():
                raise Cancelled("cancelled during slice classification")
            probs[part] = self._probs(self.classifier, x, spatial=False)
            if progress:
                progress("classifier", min(1.0, (start + part.size) / max(z, 1)))
        return probs

    def segment(self, slices: np.ndarray, selected: np.ndarray, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None) -> np.ndarray:
        """Foreground probability on the selected slices; zeros elsewhere. ``(Z, H, W)`` float16."""
        if self.segmenter_depth is not None:
            return self._segment_3d(slices, selected, progress, cancel)
        out = np.zeros(slices.shape, dtype=np.float16)
        idx = np.flatnonzero(selected)
        for start, part, x in self._batches(slices, idx, self.segmenter_batch, self.segmenter_context):
            if cancel is not None and cancel():
                raise Cancelled("cancelled during segmentation")
            out[part] = self._probs(self.segmenter, x, spatial=True)
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
            x = np.ascontiguousarray(stack[s:s + d], dtype=np.float32)[None, None]
            p = self._probs(self.segmenter, x, spatial=True)
            if progress:
                progress("segmenter", (i + 1) / len(starts))
            return p[0]

        out = average_windows(stack.shape, d, starts, predict)[:z].astype(np.float16)
        out[~selected] = 0
        return out

    def _uses_locator(self, gate: str) -> bool:
        return self.locator is not None and self.combine.uses_locator(gate)

    def __call__(self, slices: np.ndarray, threshold: float, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None, use_classifier: bool = True,
                 select: Callable[[np.ndarray], np.ndarray] | None = None,
                 pixel_mm: tuple[float, float] = (1.0, 1.0)) -> CascadeResult:
        """Locate, classify, select, segment the selection, combine. ``threshold``: the slice
        gate's (the classifier's, or with gate ``locator`` the locator's).

        With ``use_classifier=False`` no slice is gated out (neither classifier nor locator picks
        slices; the classifier does not run): every slice is segmented (the "segmenter alone" arm).
        ``select`` maps the ``(Z,)`` bool selection to the one the segmenter gets (a reviewer's
        correction, ``slices.SliceSelection``). ``pixel_mm``: model-space ``(x, y)`` pixel size,
        for ``region_margin_mm``.
        """
        c = self.combine
        gate = c.gate if use_classifier else "none"
        if gate in ("classifier", "both") and self.classifier is None:
            raise GTVError("this cascade was built without its classifier (use_classifier=False); it cannot gate with it")
        z = slices.shape[0]
        timings = {}
        t0 = time.perf_counter()
        prior = self.locate(slices, cancel) if self._uses_locator(gate) else None
        t1 = time.perf_counter()
        probs = np.full(z, np.nan, dtype=np.float32)
        selected = np.ones(z, dtype=bool)
        if gate in ("classifier", "both"):
            probs = self.classify(slices, progress, cancel)
            selected &= probs >= threshold
        if gate in ("locator", "both"):
            selected &= located_slices(prior, threshold if gate == "locator" else c.locator_threshold,
                                       c.locator_margin)
        if prior is not None and (not self.has_classifier or gate == "locator"):
            probs = prior.reshape(z, -1).max(1)  # the locator's view of each slice, for review
        if select is not None:
            selected = np.asarray(select(selected), dtype=bool)
        t2 = time.perf_counter()
        if c.locator_weight >= 1.0:  # the locator alone: the 2D segmenter would not count
            seg = np.where(selected[:, None, None], prior, 0).astype(np.float16)
        else:
            seg = self.segment(slices, selected, progress, cancel)
            if c.region_margin_mm >= 0:
                seg = (seg * region_mask(prior, c.region_margin_mm, pixel_mm)).astype(np.float16)
            if c.locator_weight > 0:
                mixed = (1 - c.locator_weight) * seg.astype(np.float32) + c.locator_weight * prior
                seg = np.where(selected[:, None, None], mixed, 0).astype(np.float16)
        t3 = time.perf_counter()
        if prior is not None:
            timings["locator"] = t1 - t0
        timings["classifier"] = t2 - t1
        timings["segmenter"] = t3 - t2
        return CascadeResult(probs, selected, seg, timings)


def located_slices(prior: np.ndarray, threshold: float, margin: int) -> np.ndarray:
    """``(Z,)`` bool: slices whose highest locator probability reaches ``threshold``, widened by
    ``margin`` slices on each side."""
    return widen(prior.reshape(prior.shape[0], -1).max(1) >= threshold, margin)


def widen(hit: np.ndarray, margin: int) -> np.ndarray:
    """``(Z,)`` bool slices with ``margin`` more slices on each side of every selected one."""
    if margin > 0 and hit.any():
        return np.convolve(hit.astype(np.int32), np.ones(2 * margin + 1, np.int32), mode="same") > 0
    return hit


def region_mask(prior: np.ndarray, margin_mm: float, pixel_mm: tuple[float, float]) -> np.ndarray:
    """``(Z, H, W)`` bool: within ``margin_mm`` in-plane of the locator's mask (probability >= 0.5)
    on each slice; an empty slice stays empty."""
    from scipy import ndimage

    mask = prior >= 0.5
    rx = int(round(margin_mm / max(pixel_mm[0], 1e-6)))
    ry = int(round(margin_mm / max(pixel_mm[1], 1e-6)))
    if rx == 0 and ry == 0 or not mask.any():
        return mask
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    disk = (yy / max(ry, 0.5)) ** 2 + (xx / max(rx, 0.5)) ** 2 <= 1.0
    return ndimage.binary_dilation(mask, disk[None])
