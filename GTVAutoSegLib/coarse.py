"""The 3D locator's grid: the whole model-space stack resized to one small fixed volume, and back.

The 2D networks see model-space slices ``(Z, S, S)`` (``preprocessing.prepare``: body box, window,
square, ``S x S``). The locator sees the same stack resized to ``CoarseSpec.shape = (D, H, W)``
(64^3 by default: on OpenKBP about 4-6 mm voxels), so one forward pass covers the whole body box and
the network judges each region by its 3D extent. Resizing is trilinear with half-voxel alignment
(``align_corners=False``) both ways, so ``from_coarse`` puts each coarse voxel back where it came
from. Label maps go through class coverage, as ``preprocessing.to_model_space`` does for masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GTVError


@dataclass
class CoarseSpec:
    """How the locator's input is made from the model-space stack. Stored in the model bundle.

    Args:
        shape: ``(D, H, W)`` of the locator's grid; each a multiple of ``divisor``.
        divisor: how much the locator downsamples.
    """

    shape: tuple[int, int, int] = (64, 64, 64)
    divisor: int = 16

    def validate(self) -> "CoarseSpec":
        try:
            shape = tuple(int(v) for v in self.shape)
        except (TypeError, ValueError):
            raise GTVError(f"coarse shape must be three integers, got {self.shape!r}") from None
        if len(shape) != 3 or any(v < self.divisor or v % self.divisor for v in shape):
            raise GTVError(f"coarse shape must be three positive multiples of {self.divisor}, got {self.shape!r}")
        self.shape = shape
        return self

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "divisor": self.divisor}

    @classmethod
    def from_dict(cls, d: dict) -> "CoarseSpec":
        if not isinstance(d, dict) or set(d) - {"shape", "divisor"}:
            raise GTVError(f"coarse spec must be a mapping with shape and divisor, got {d!r}")
        return cls(**d).validate()


def _resize3d(volume, shape: tuple[int, int, int], resizer: str = "torch") -> np.ndarray:
    """Trilinear (``align_corners=False``) over the last three axes; ``resizer``: ``torch`` or
    ``numpy`` (``resample.resize``, equal up to float32 rounding; no torch import)."""
    if resizer == "numpy":
        volume = np.asarray(volume, dtype=np.float32)
        if tuple(volume.shape[-3:]) == tuple(shape):
            return volume
        from .resample import resize

        return resize(volume, tuple(shape), "linear", antialias=False)
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(volume, dtype=torch.float32)
    if tuple(t.shape[-3:]) == tuple(shape):
        return t.numpy()
    lead = t.shape[:-3]
    t = t.reshape(-1, 1, *t.shape[-3:])
    with torch.no_grad():
        out = F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)
    return out.reshape(*lead, *shape).numpy()


def to_coarse(stack: np.ndarray, spec: CoarseSpec, resizer: str = "torch") -> np.ndarray:
    """Model-space slices ``(Z, S, S)`` in [0, 1] -> the locator's input ``(D, H, W)`` float32."""
    if np.asarray(stack).ndim != 3:
        raise GTVError(f"expected a (Z, H, W) stack, got shape {np.asarray(stack).shape}")
    return np.clip(_resize3d(stack, spec.shape, resizer), 0.0, 1.0)


def from_coarse(prob, model_shape: tuple[int, int, int], resizer: str = "torch") -> np.ndarray:
    """Locator probabilities ``(..., D, H, W)`` -> ``(..., Z, S, S)`` on the model-space grid, float32."""
    return _resize3d(prob, model_shape, resizer)


def labels_to_coarse(labels: np.ndarray, spec: CoarseSpec, n_classes: int) -> np.ndarray:
    """A model-space label map ``(Z, S, S)`` (0 background, 1 the target, 2.. other structures in
    order of priority) -> ``(D, H, W)`` uint8 on the locator's grid.

    Class ``c`` is kept where at least half of the voxel is covered by classes ``1..c`` and no
    earlier class claimed it, so a target inside a larger structure keeps its own extent.
    """
    labels = np.asarray(labels)
    out = np.zeros(spec.shape, np.uint8)
    for c in range(1, n_classes):
        covered = _resize3d(((labels >= 1) & (labels <= c)).astype(np.float32), spec.shape) >= 0.5
        out[covered & (out == 0)] = c
    return out
