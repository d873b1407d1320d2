"""Segmentation metrics for a predicted GTV against a reference, in physical units.

Conventions (the same in every function, so summaries never mix them):

- Masks are ``(z, y, x)`` arrays; every non-zero voxel is foreground. Spacing is ``(sx, sy, sz)`` mm.
- Both masks empty counts as perfect agreement: Dice, Jaccard and volume ratio 1.0, HD95 0.0 mm.
- One mask empty: Dice and Jaccard 0.0; HD95 ``inf`` (no surface to measure from, the worst case,
  kept visible instead of silently dropped as NaN would be); :func:`summarise` leaves ``inf`` out
  of mean, median and std and reports how many cases had it.
- Slice recall is 1.0 when the reference has no tumour slice (nothing to miss); slice precision is
  1.0 when no slice was predicted (nothing claimed wrongly). The counts ``fp_slices`` and
  ``fn_slices`` show what those ratios hide.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .errors import GTVError
from .image import Image

_SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def _binary(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) != 0


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P∩R| / (|P| + |R|)``; 1.0 when both are empty."""
    p, r = _binary(pred), _binary(ref)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index ``|P∩R| / |P∪R|``; 1.0 when both are empty."""
    p, r = _binary(pred), _binary(ref)
    union = int(np.logical_or(p, r).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, r).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a 6-neighbour in the background (outside the array counts as background)."""
    m = _binary(mask)
    return m & ~ndimage.binary_erosion(m, structure=_SIX_NEIGHBOURS, border_value=0)


def surface_distances_mm(pred: np.ndarray, ref: np.ndarray, spacing_xyz) -> np.ndarray:
    """Distances (mm) from each surface voxel of one mask to the nearest surface voxel of the other.

    Both directions are pooled: ``len = |surface(pred)| + |surface(ref)|``. Both masks must be non-empty.
    """
    p, r = _binary(pred), _binary(ref)
    # Crop to the masks' bounding box plus one voxel: the surfaces and the distances between them
    # are unchanged, and the distance transforms run on a small box instead of a whole CT.
    zyx = np.argwhere(p | r)
    lo = np.maximum(zyx.min(axis=0) - 1, 0)
    hi = np.minimum(zyx.max(axis=0) + 2, p.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sp, sr = surface(p[box]), surface(r[box])
    sampling = tuple(float(s) for s in spacing_xyz)[::-1]  # (sz, sy, sx) for (z, y, x) arrays
    to_ref = ndimage.distance_transform_edt(~sr, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return np.concatenate([to_ref[sp], to_pred[sr]])


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing_xyz) -> float:
    """95th percentile Hausdorff distance in mm, between the masks' surfaces.

    The 95th percentile (numpy's linear interpolation) of the pooled symmetric surface distances
    (:func:`surface_distances_mm`). This pools both directions, unlike MONAI's
    ``compute_hausdorff_distance``, which takes the larger of the two directed percentiles.

    Args:
        pred, ref: ``(z, y, x)`` masks on the same grid.
        spacing_xyz: ``(sx, sy, sz)`` in mm.

    Returns:
        0.0 when both are empty, ``inf`` when exactly one is empty.
    """
    p, r = _binary(pred), _binary(ref)
    if p.shape != r.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {r.shape}")
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 0.0
    if not (has_p and has_r):
        return math.inf
    return float(np.percentile(surface_distances_mm(p, r, spacing_xyz), 95))


def volume_cc(mask: np.ndarray, spacing_xyz) -> float:
    """Foreground volume in cm³ (mL)."""
    return int(_binary(mask).sum()) * float(np.prod(spacing_xyz)) / 1000.0


def volume_ratio(pred: np.ndarray, ref: np.ndarray) -> float:
    """Predicted over reference volume (same grid); 1.0 when both are empty, ``inf`` when only ``ref`` is."""
    n_p, n_r = int(_binary(pred).sum()), int(_binary(ref).sum())
    if n_r == 0:
        return 1.0 if n_p == 0 else math.inf
    return n_p / n_r


def slice_flags(mask: np.ndarray) -> np.ndarray:
    """``(z,)`` bool: whether each axial slice holds any foreground."""
    return _tumour_slices(mask)


def _tumour_slices(mask: np.ndarray) -> np.ndarray:
    m = _binary(mask)
    return m.reshape(m.shape[0], -1).any(axis=1)


def _flag_counts(pred_flags: np.ndarray, ref_mask: np.ndarray) -> tuple[int, int, int]:
    p = np.asarray(pred_flags, dtype=bool).ravel()
    r = _tumour_slices(ref_mask)
    if p.shape != r.shape:
        raise ValueError(f"{p.size} slice flags for a mask of {r.size} slices")
    return int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())


def slice_recall(pred_flags: np.ndarray, ref_mask: np.ndarray) -> float:
    """Share of the reference's tumour slices that were flagged; 1.0 when there are none."""
    tp, _, fn = _flag_counts(pred_flags, ref_mask)
    return tp / (tp + fn) if tp + fn else 1.0


def slice_precision(pred_flags: np.ndarray, ref_mask: np.ndarray) -> float:
    """Share of flagged slices that hold reference tumour; 1.0 when none was flagged."""
    tp, fp, _ = _flag_counts(pred_flags, ref_mask)
    return tp / (tp + fp) if tp + fp else 1.0


def false_positive_slices(pred_flags: np.ndarray, ref_mask: np.ndarray) -> int:
    """Number of flagged slices without reference tumour."""
    return _flag_counts(pred_flags, ref_mask)[1]


def evaluate_case(pred: Image, ref: Image, slice_flags: np.ndarray | None = None) -> dict:
    """All metrics of one case.

    Args:
        pred: predicted mask.
        ref: reference mask on the same grid.
        slice_flags: ``(z,)`` the slice classifier's flags; None scores the slices of ``pred``.

    Returns:
        ``dice, jaccard, hd95_mm, volume_pred_cc, volume_ref_cc, volume_ratio, slice_recall,
        slice_precision, fp_slices, fn_slices, ref_slices`` (floats and ints).

    Raises:
        GTVError: the masks are on different grids, or the flags do not match the slice count.
    """
    if not pred.same_grid(ref):
        raise GTVError(
            "prediction and reference are on different grids: "
            f"shape {pred.array.shape} vs {ref.array.shape}, spacing {_fmt(pred.spacing)} vs {_fmt(ref.spacing)}, "
            f"origin {_fmt(pred.origin)} vs {_fmt(ref.origin)}, direction {_fmt(pred.direction)} vs {_fmt(ref.direction)}"
        )
    p, r = _binary(pred.array), _binary(ref.array)
    flags = _tumour_slices(p) if slice_flags is None else np.asarray(slice_flags, dtype=bool).ravel()
    if flags.size != p.shape[0]:
        raise GTVError(f"{flags.size} slice flags for a volume of {p.shape[0]} slices")
    tp, fp, fn = _flag_counts(flags, r)
    return {
        "dice": dice(p, r),
        "jaccard": jaccard(p, r),
        "hd95_mm": hd95_mm(p, r, pred.spacing),
        "volume_pred_cc": volume_cc(p, pred.spacing),
        "volume_ref_cc": volume_cc(r, ref.spacing),
        "volume_ratio": volume_ratio(p, r),
        "slice_recall": tp / (tp + fn) if tp + fn else 1.0,
        "slice_precision": tp / (tp + fp) if tp + fp else 1.0,
        "fp_slices": fp,
        "fn_slices": fn,
        "ref_slices": tp + fn,
    }


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def summarise(rows: list[dict]) -> dict:
    """Mean, median and std of each numeric metric over cases.

    Non-numeric entries (a case name) are skipped. ``inf`` and NaN are left out of the statistics and
    counted instead.

    Returns:
        ``{metric: {"mean", "median", "std", "n", "n_inf", "n_nan"}}``; ``n`` counts the finite values,
        and the statistics are NaN when there are none. ``std`` is the population std (ddof=0).
    """
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and _is_number(v):
                keys.append(k)
    out = {}
    for k in keys:
        values = np.array([float(row[k]) for row in rows if _is_number(row.get(k))], dtype=float)
        finite = values[np.isfinite(values)]
        n = int(finite.size)
        out[k] = {
            "mean": float(finite.mean()) if n else math.nan,
            "median": float(np.median(finite)) if n else math.nan,
            "std": float(finite.std()) if n else math.nan,
            "n": n,
            "n_inf": int(np.isinf(values).sum()),
            "n_nan": int(np.isnan(values).sum()),
        }
    return out


def paired_bootstrap(a, b, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of the paired difference ``a - b`` over cases and its percentile bootstrap interval.

    The cases (e.g. patients) are resampled with replacement, so the interval says how sure the
    difference is given how much it varies from case to case.

    Args:
        a, b: per-case values of two methods, same cases in the same order (NaN pairs are dropped).
        n_resamples: bootstrap resamples; seeded, so a table regenerates identically.
        level: coverage of the interval.

    Returns:
        ``{"mean": ..., "low": ..., "high": ..., "n": cases}``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same cases, got {a.shape} and {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": int(d.size)}
