"""What a user looks at after a run: a JSON report and a PNG of three views over the CT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .image import Image
from .io import atomic_output


def _lps_to_display(image: Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Volume as (z, y, x) in LPS-aligned axes (closest to the direction matrix) and spacing."""
    import SimpleITK as sitk

    img = sitk.DICOMOrient(image.to_sitk(), "LPS")
    return sitk.GetArrayFromImage(img), img.GetSpacing()


def write_overview_png(ct: Image, mask: Image, path: str | Path, title: str = "",
                       reference: Image | None = None, window: tuple[float, float] = (-160.0, 240.0)) -> None:
    """Axial, coronal and sagittal views through the mask's centre of mass, contour drawn over
    the CT (the physician's contour dashed when given). Pixel aspect follows the spacing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol, (sx, sy, sz) = _lps_to_display(ct)
    seg, _ = _lps_to_display(mask)
    ref = _lps_to_display(reference)[0] if reference is not None else None
    focus = seg if seg.any() else (ref if ref is not None and ref.any() else None)
    if focus is not None:
        cz, cy, cx = (int(round(c)) for c in np.argwhere(focus).mean(axis=0))
    else:
        cz, cy, cx = (s // 2 for s in vol.shape)
    views = [
        ("axial", lambda a: a[cz], sy / sx),
        # Superior at the top: LPS z grows superior, so flip the slice axis for display.
        ("coronal", lambda a: a[::-1, cy, :], sz / sx),
        ("sagittal", lambda a: a[::-1, :, cx], sz / sy),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8), dpi=110)
    for ax, (name, cut, aspect) in zip(axes, views):
        ax.imshow(cut(vol), cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        if cut(seg).any():
            ax.contour(cut(seg), levels=[0.5], colors=["#ff3b30"], linewidths=1.4)
        if ref is not None and cut(ref).any():
            ax.contour(cut(ref), levels=[0.5], colors=["#30d158"], linewidths=1.0, linestyles="dashed")
        ax.set_title(name)
        ax.axis("off")
    legend = "red: GTVAutoSeg" + ("   green dashed: reference" if ref is not None else "")
    fig.suptitle(f"{title}\n{legend}" if title else legend, fontsize=10)
    fig.tight_layout()
    with atomic_output(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_json(data: dict[str, Any], path: str | Path) -> None:
    with atomic_output(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False))
