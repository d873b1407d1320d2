"""Helpers for the browser tests: Debian's chromium, waiting, the server's child processes, and
finding the contour in a view the way a user does (by looking at it)."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np

from GTVAutoSegWeb.browser import CHROMIUM
from GTVAutoSegWeb.browser import browser_args as browserArgs
from GTVAutoSegWeb.browser import wait_for as waitFor

__all__ = ["CHROMIUM", "browserArgs", "waitFor", "childrenOf", "segmentVoxels", "OverlayFinder"]


def childrenOf(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; zombies are not counted)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, p in parents.items() if p == parent]
        found += kids
        frontier += kids
    return found


def segmentVoxels(text: str) -> int:
    """``"PTV70: 4,721 voxels, 416.37 cc"`` -> 4721."""
    match = re.search(r"([\d,]+) voxels", text)
    if match is None:
        raise AssertionError(f"no voxel count in {text!r}")
    return int(match.group(1).replace(",", ""))


class OverlayFinder:
    """Where the segment's colour and plain CT tissue are in a view's current picture.

    The CT is drawn in grey; the segment is a coloured fill over it, so a pixel whose channels differ
    clearly is the contour. Only the middle of the view is searched: the view's buttons and slice
    slider sit at its edges.
    """

    def __init__(self, view):
        self.view = view

    def _pixels(self) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.view.screenshot())).convert("RGB")).astype(int)

    def save(self, path: Path) -> None:
        """The view's picture, for a failing test's report."""
        Path(path).write_bytes(self.view.screenshot())

    def _masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rgb = self._pixels()
        h, w, _ = rgb.shape
        spread = rgb.max(axis=2) - rgb.min(axis=2)
        overlay = spread > 40
        tissue = (spread < 8) & (rgb.mean(axis=2) > 30)
        middle = np.zeros((h, w), bool)
        middle[int(0.12 * h):int(0.8 * h), int(0.15 * w):int(0.85 * w)] = True
        return overlay & middle, tissue & middle, middle

    def overlayCentre(self) -> tuple[int, int]:
        overlay, _, _ = self._masks()
        ys, xs = np.nonzero(overlay)
        assert len(xs) > 20, "no contour is visible in the view"
        # The contour pixel closest to the centroid (a concave contour's centroid may lie outside it).
        cy, cx = ys.mean(), xs.mean()
        i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        return int(xs[i]), int(ys[i])

    def tissueAwayFromOverlay(self, margin: int, dx: int) -> tuple[int, int]:
        """A point at least ``margin`` pixels from the contour with patient on both sides for ``dx``."""
        from scipy import ndimage

        overlay, tissue, _ = self._masks()
        assert overlay.any(), "no contour is visible in the view"
        distance = ndimage.distance_transform_edt(~overlay)
        run = ndimage.minimum_filter(tissue.astype(np.uint8), size=(5, 2 * dx + 1)).astype(bool)
        candidates = np.argwhere(run & (distance > margin))
        assert len(candidates), "no tissue far enough from the contour to paint on"
        best = candidates[np.argmin(distance[tuple(candidates.T)])]
        return int(best[1]), int(best[0])

    def stroke(self, page, at: tuple[int, int], dx: int) -> None:
        """Hover over the start, then drag horizontally through ``at`` with the left button."""
        box = self.view.bounding_box()
        x, y = box["x"] + at[0], box["y"] + at[1]
        page.mouse.move(x - dx - 10, y, steps=4)
        page.mouse.move(x - dx, y, steps=4)
        time.sleep(0.5)  # the brush follows the pointer on the server before the button goes down
        page.mouse.down()
        page.mouse.move(x + dx, y, steps=12)
        page.mouse.up()
