"""Balance-sampling strategy (BSS): keep every tumour slice, undersample normal slices.

The paper trains the classifier and the segmenter on different tumour:normal ratios (best pairs
1:1 for lung, 1:4 for nasopharynx); "1:0" trains on tumour slices only, "original" keeps all.
"""

from __future__ import annotations

import numpy as np

from .errors import GTVError

RATIOS = ("1:0", "1:1", "1:2", "1:4", "original")


def parse_ratio(ratio: str) -> float | None:
    """``"1:k"`` -> ``k`` normal slices per tumour slice; ``"original"`` -> None (keep all)."""
    if ratio == "original":
        return None
    try:
        a, b = ratio.split(":")
        a, b = float(a), float(b)
    except ValueError:
        raise GTVError(f"balance ratio must look like '1:2' or be 'original', got '{ratio}'") from None
    if a <= 0 or b < 0:
        raise GTVError(f"balance ratio needs a positive tumour part and a non-negative normal part: '{ratio}'")
    return b / a


def balance_indices(tumour_flags: np.ndarray, ratio: str, seed: int) -> np.ndarray:
    """Indices of the slices to train on for one epoch.

    Args:
        tumour_flags: ``(N,)`` bool, True where a slice contains tumour.
        ratio: tumour:normal ratio, e.g. ``"1:1"``, or ``"original"``.
        seed: draw seed; the same seed gives the same subset (pass ``base_seed + epoch`` to draw
            a fresh subset of normal slices every epoch, reproducibly).
    Returns:
        Sorted ``(M,)`` int64 indices: every tumour slice and
        ``min(n_normal, round(k * n_tumour))`` normal slices drawn without replacement.
    """
    flags = np.asarray(tumour_flags, dtype=bool)
    k = parse_ratio(ratio)
    all_idx = np.arange(flags.size, dtype=np.int64)
    if k is None:
        return all_idx
    tumour = all_idx[flags]
    normal = all_idx[~flags]
    n_keep = min(normal.size, int(round(k * tumour.size)))
    rng = np.random.default_rng(seed)
    drawn = rng.choice(normal, size=n_keep, replace=False) if n_keep else np.empty(0, np.int64)
    return np.sort(np.concatenate([tumour, drawn]))
