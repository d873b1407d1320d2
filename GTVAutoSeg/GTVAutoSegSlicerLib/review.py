"""The review list: slices whose classifier probability lies close to the threshold.

The cascade segments a slice only when the classifier's probability reaches the threshold, so a
slice just below it may hold missed tumour and one just above may hold a false positive; these
are where a reviewer should look first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReviewSlice:
    """One slice to look at.

    Attributes:
        sliceIndex: K index of the slice in the input volume.
        probability: classifier probability that the slice holds tumour.
        selected: True when the segmenter ran on it (``probability >= threshold``).
        ras: world position of the slice centre, for jumping the slice views there.
    """

    sliceIndex: int
    probability: float
    selected: bool
    ras: tuple[float, float, float]

    def label(self) -> str:
        verdict = "segmented" if self.selected else "skipped"
        return f"slice {self.sliceIndex}: p = {self.probability:.3f} ({verdict})"


def slicesNearThreshold(probabilities: Sequence[float], threshold: float, margin: float) -> list[int]:
    """Indices with ``|p - threshold| <= margin``, closest to the threshold first (ties by index)."""
    if margin < 0 or not math.isfinite(threshold):
        return []
    near = [(abs(float(p) - threshold), k) for k, p in enumerate(probabilities)
            if abs(float(p) - threshold) <= margin + 1e-12]
    return [k for _, k in sorted(near)]


def reviewSlices(probabilities: Sequence[float], centres: Sequence[tuple[float, float, float]],
                 threshold: float, margin: float) -> list[ReviewSlice]:
    """The review list, closest to the threshold first."""
    return [
        ReviewSlice(k, float(probabilities[k]), float(probabilities[k]) >= threshold, tuple(centres[k]))
        for k in slicesNearThreshold(probabilities, threshold, margin)
    ]
