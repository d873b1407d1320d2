"""What a user looks at after a run: a JSON report (built by :func:`case_report`) and a PNG of three views over the CT."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .image import Image
from .outputs import atomic_output


def _lps_to_display(image: Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Volume as (z, y, x) in LPS-aligned axes (closest to the direction matrix) and its (x, y, z) spacing:
    the preprocessing's reorientation (the same array and spacing as SimpleITK's ``DICOMOrient(.., "LPS")``)."""
    from .preprocessing import lps_axes, reorient_to_lps

    axes, _ = lps_axes(image.direction)
    # LPS array axis a is input array axis axes[a], i.e. index axis 2 - axes[a]
    return reorient_to_lps(image.array, image.direction), tuple(float(image.spacing[2 - axes[a]]) for a in (2, 1, 0))


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
    # Each view zoomed to the body (a 500 mm field otherwise shows the head as a small patch):
    # (row, column) limits in the displayed cut, the slice axis flipped as the cut flips it.
    z0, z1, y0, y1, x0, x1 = zoom_box(vol, [m for m in (seg, ref) if m is not None], (sx, sy, sz))
    nz = vol.shape[0]
    limits = [((y0, y1), (x0, x1)), ((nz - 1 - z1, nz - 1 - z0), (x0, x1)), ((nz - 1 - z1, nz - 1 - z0), (y0, y1))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8), dpi=110)
    for ax, (name, cut, aspect), (rows, cols) in zip(axes, views, limits):
        ax.imshow(cut(vol), cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        _outline(ax, cut(seg), "#ff3b30", 1.4, "solid", aspect)
        if ref is not None:
            _outline(ax, cut(ref), "#30d158", 1.0, "dashed", aspect)
        ax.set_xlim(cols[0] - 0.5, cols[1] + 0.5)
        ax.set_ylim(rows[1] + 0.5, rows[0] - 0.5)  # rows grow downwards, as imshow draws them
        ax.set_title(name)
        ax.axis("off")
    legend = "red: GTVAutoSeg" + ("   green dashed: reference" if ref is not None else "")
    fig.suptitle(f"{title}\n{legend}" if title else legend, fontsize=10)
    fig.tight_layout()
    with atomic_output(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def zoom_box(vol: np.ndarray, masks: list[np.ndarray], spacing_xyz, margin_mm: float = 10.0) -> tuple[int, ...]:
    """``(z0, z1, y0, y1, x0, x1)`` inclusive: the body (the preprocessing's body mask) and the masks,
    plus ``margin_mm``, within the volume; the whole volume when neither is found."""
    from .preprocessing import PreprocessSpec, body_mask

    spec = PreprocessSpec()
    found = body_mask(vol, spacing_xyz[:2], spec.body_threshold_hu, spec.body_erosion_mm)
    for m in masks:
        found = found | (m != 0)
    if not found.any():
        return 0, vol.shape[0] - 1, 0, vol.shape[1] - 1, 0, vol.shape[2] - 1
    box = []
    for axis, spacing in zip(range(3), (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])):
        hit = np.flatnonzero(found.any(axis=tuple(a for a in range(3) if a != axis)))
        pad = int(np.ceil(margin_mm / max(float(spacing), 1e-6)))
        box += [max(int(hit[0]) - pad, 0), min(int(hit[-1]) + pad, vol.shape[axis] - 1)]
    return tuple(box)


def _outline(ax, mask: np.ndarray, color: str, width: float, style: str, aspect: float) -> None:
    """The mask's contour; a view one voxel thick (a 1-slice CT's coronal view) cannot hold a
    contour line, so there the voxels are tinted instead."""
    if not mask.any():
        return
    if min(mask.shape) >= 2:
        ax.contour(mask, levels=[0.5], colors=[color], linewidths=width, linestyles=style)
    else:
        from matplotlib.colors import ListedColormap

        ax.imshow(np.ma.masked_equal(mask, 0), cmap=ListedColormap([color]), alpha=0.6, aspect=aspect,
                  interpolation="nearest")


def json_safe(v):
    """A metric as JSON holds it: NaN and infinities as None, numpy numbers as float, others as text."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    try:
        return float(v) if not isinstance(v, (bool, int, str)) else v
    except (TypeError, ValueError):
        return str(v)


def case_report(name: str, input_path: str | Path, bundle, device, result, selection=None,
                outputs: dict[str, Path] | None = None, series: Image | None = None,
                reference: Image | None = None, reference_path: str | Path | None = None) -> dict[str, Any]:
    """The JSON report of one segmented case (timings are added by the caller once the files are written).

    Args:
        bundle: the :class:`~GTVAutoSegLib.bundle.ModelBundle` that ran; ``device`` the device it ran on.
        result: the pipeline's result (mask, per-slice probabilities and selection, threshold).
        selection: the reviewer's :class:`~GTVAutoSegLib.slices.SliceSelection`, or None.
        outputs: format -> file written for the case.
        series: the DICOM series the DICOM outputs reference, or None.
        reference: a reference mask on the CT's grid; adds Dice/HD95/... under ``reference``.
    """
    report: dict[str, Any] = {
        "case": name,
        "input": str(input_path),
        "model": {"name": bundle.name, "version": bundle.version, "target": bundle.target,
                  "anatomic_region": bundle.anatomic_region},
        "device": str(device),
        "precision": result.precision,
        "engine": result.engine,
        "threshold": result.threshold,
        "volume_cc": round(result.volume_cc(), 3),
        "slices_total": int(result.slice_probs.size),
        "slices_segmented": int(result.selected.sum()),
        "slice_selected": [int(v) for v in result.selected],
        "slice_selection": selection.to_dict() if selection is not None else None,
        # null for every slice when the classifier was switched off (--no-classifier)
        "slice_probabilities": [json_safe(round(float(p), 4)) for p in result.slice_probs],
        "outputs": {fmt: Path(p).name for fmt, p in (outputs or {}).items()},
    }
    if series is not None:
        report["dicom_reference"] = {"folder": series.source.folder,
                                     "series_instance_uid": series.source.series_instance_uid,
                                     "frame_of_reference_uid": series.source.frame_of_reference_uid}
    if reference is not None:
        from .metrics import evaluate_case  # scipy.ndimage: 0.2 s of a cold call, only with a reference

        metrics = evaluate_case(result.mask, reference)
        report["reference"] = {"path": reference_path, **{k: json_safe(v) for k, v in metrics.items()}}
    return report


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(data: dict[str, Any], path: str | Path) -> None:
    """Strict JSON (RFC 8259): NaN and infinities are written as null, never as bare NaN/Infinity
    that other JSON readers refuse."""
    text = json.dumps(_finite_or_none(data), indent=2, sort_keys=False, allow_nan=False)
    with atomic_output(Path(path)) as tmp:
        Path(tmp).write_text(text)
