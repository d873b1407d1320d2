"""The review list: slices whose classifier decision deserves a look, and the reviewer's corrections.

The cascade segments a slice only when the classifier's probability reaches the threshold, so a
slice just below it may hold missed tumour and one just above may hold a false positive; these
are where a reviewer should look first. The list is editable: ticking a slice the classifier
skipped asks for the segmenter to run there, unticking one it kept asks for the slice to be
emptied (:func:`sliceChanges`); slices the reviewer corrected stay listed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

USER_INCLUDED, USER_NONE, USER_EXCLUDED = 1, 0, -1


@dataclass(frozen=True)
class ReviewSlice:
    """One slice to look at.

    Attributes:
        sliceIndex: K index of the slice in the input volume.
        probability: classifier probability that the slice holds tumour.
        selected: True when the slice is segmented (the classifier's choice or the reviewer's).
        ras: world position of the slice centre, for jumping the slice views there.
        user: the reviewer's correction (``USER_INCLUDED``, ``USER_NONE``, ``USER_EXCLUDED``).
    """

    sliceIndex: int
    probability: float
    selected: bool
    ras: tuple[float, float, float]
    user: int = USER_NONE

    def label(self) -> str:
        verdict = "segmented" if self.selected else "skipped"
        if self.user == USER_INCLUDED:
            verdict = "added by the reviewer"
        elif self.user == USER_EXCLUDED:
            verdict = "removed by the reviewer"
        probability = "not classified" if math.isnan(self.probability) else f"p = {self.probability:.3f}"
        return f"slice {self.sliceIndex}: {probability} ({verdict})"


def slicesNearThreshold(probabilities: Sequence[float], threshold: float, margin: float) -> list[int]:
    """Indices with ``|p - threshold| <= margin``, closest to the threshold first (ties by index)."""
    if margin < 0 or not math.isfinite(threshold):
        return []
    near = [(abs(float(p) - threshold), k) for k, p in enumerate(probabilities)
            if abs(float(p) - threshold) <= margin + 1e-12]
    return [k for _, k in sorted(near)]


def reviewSlices(probabilities: Sequence[float], centres: Sequence[tuple[float, float, float]],
                 threshold: float, margin: float, selected: Sequence[bool] | None = None,
                 user: Sequence[int] | None = None) -> list[ReviewSlice]:
    """The review list: slices near the threshold, closest first, then the slices the reviewer
    corrected elsewhere (by index)."""
    if selected is None:
        selected = [float(p) >= threshold for p in probabilities]
    user = list(user) if user is not None else [USER_NONE] * len(probabilities)
    order = slicesNearThreshold(probabilities, threshold, margin)
    listed = set(order)
    order += [k for k, mark in enumerate(user) if mark != USER_NONE and k not in listed]
    return [ReviewSlice(k, float(probabilities[k]), bool(selected[k]), tuple(centres[k]), int(user[k])) for k in order]


def sliceChanges(items: Sequence[ReviewSlice], ticked: Mapping[int, bool]) -> tuple[list[int], list[int]]:
    """What the reviewer asks for: ``(include, exclude)`` slice indices.

    Args:
        items: the review list as shown.
        ticked: slice index -> whether its box is ticked now (missing: unchanged).

    Returns:
        Slices ticked now but not segmented (the segmenter must run there), and slices segmented but
        unticked now (to be emptied), each sorted. Slices whose box did not change are in neither.
    """
    include, exclude = [], []
    for item in items:
        now = ticked.get(item.sliceIndex, item.selected)
        if now and not item.selected:
            include.append(item.sliceIndex)
        elif item.selected and not now:
            exclude.append(item.sliceIndex)
    return sorted(include), sorted(exclude)
