"""One invertible CT preprocessing pipeline: reorient, body crop, window, resize; and its inverse.

Forward (``prepare``), on the input array indexed ``(z, y, x)``:

1. reorient to LPS (array axes ``(S, P, L)``), a pure transpose/flip, as SimpleITK's
   ``DICOMOrient(img, "LPS")`` does, so array axis 0 is the axial slice axis whatever the direction;
2. body mask: HU threshold, in-plane erosion, largest 3D component, dilate back, fill holes;
3. in-plane bounding box of the body over all slices, plus a margin, clipped to the slice;
4. crop, window to ``[lo, hi]`` and scale to ``[0, 1]`` float32;
5. ``mode="resize"``: pad the box to a square with air (0) and resize to ``(size, size)``;
   ``mode="spacing"``: resample to ``target_spacing_mm`` in-plane, then pad to a multiple of
   ``divisor``.

Every step is recorded in a ``PrepState``; ``restore`` walks it backwards onto the input grid.
The spec is a dataclass stored in the model bundle, so inference preprocesses exactly as training did.
Kept as our own code on purpose (not a chain of MONAI transforms): it is the exact inverse of the
shipped models' inputs, and a replacement would have to reproduce them bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .errors import GTVError
from .image import Image

SOFT_TISSUE_WINDOW = (-150.0, 200.0)
LUNG_WINDOW = (-800.0, 400.0)
MODES = ("resize", "spacing")

# The body mask only feeds a bounding box that gets a 10 mm margin, so it is computed on a grid of
# about this pixel size (every round(1.5 / spacing)-th pixel): full-resolution morphology on a
# 150-slice 512 x 512 CT at 0.98 mm took 2.9 s of this project's CPU, the 1.96 mm grid 0.4 s (0.19 s
# with shifted-view morphology and the fine edges searched only where they can lie).
_BODY_GRID_MM = 1.5
# Pixels of 1.0-1.5 mm (most clinical CTs) round to every pixel on that grid, where the morphology of
# a 150-slice CT took 2 s; they take every other pixel as long as that stays within this.
_BODY_GRID_MAX_MM = 3.0


def _body_step(pixel_mm: float) -> int:
    """Every how many pixels the body mask is computed (see _BODY_GRID_MM)."""
    step = max(1, round(_BODY_GRID_MM / pixel_mm))
    return 2 if step == 1 and 2 * pixel_mm <= _BODY_GRID_MAX_MM else step


@dataclass
class PreprocessSpec:
    """How CT slices become network input. Stored in the model bundle (``to_dict``).

    Args:
        window: ``(lo, hi)`` HU mapped to ``[0, 1]``; lung tumours use ``LUNG_WINDOW``.
        body_threshold_hu: voxels above this are body candidates.
        body_erosion_mm: in-plane erosion that cuts the couch and thin bridges off the body.
        margin_mm: added around the body's bounding box.
        mode: ``"resize"`` to ``(size, size)`` or ``"spacing"`` to ``target_spacing_mm``.
        size: output side in ``"resize"`` mode; a multiple of ``divisor``.
        target_spacing_mm: in-plane pixel size in ``"spacing"`` mode.
        keep_aspect: in ``"resize"`` mode, pad the box to a square first so anatomy keeps its shape.
        divisor: the networks downsample this much; model-space sides are multiples of it.
    """

    window: tuple[float, float] = SOFT_TISSUE_WINDOW
    body_threshold_hu: float = -500.0
    body_erosion_mm: float = 3.0
    margin_mm: float = 10.0
    mode: str = "resize"
    size: int = 512
    target_spacing_mm: float | None = None
    keep_aspect: bool = True
    divisor: int = 32

    def validate(self) -> "PreprocessSpec":
        """Raise ``GTVError`` naming the first bad field; return self for chaining."""
        try:
            lo, hi = (float(v) for v in self.window)
        except (TypeError, ValueError):
            raise GTVError(f"preprocessing window must be two numbers (lo, hi), got {self.window!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise GTVError(f"preprocessing window needs finite lo < hi, got {self.window!r}")
        for name in ("body_threshold_hu", "body_erosion_mm", "margin_mm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise GTVError(f"preprocessing {name} must be a finite number, got {v!r}")
        if self.body_erosion_mm < 0 or self.margin_mm < 0:
            raise GTVError("preprocessing body_erosion_mm and margin_mm must be >= 0")
        if self.mode not in MODES:
            raise GTVError(f"preprocessing mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.divisor, bool) or not isinstance(self.divisor, int) or self.divisor < 1:
            raise GTVError(f"preprocessing divisor must be a positive integer, got {self.divisor!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise GTVError(f"preprocessing size must be a positive integer, got {self.size!r}")
        if self.mode == "resize" and self.size % self.divisor:
            raise GTVError(f"preprocessing size {self.size} is not a multiple of {self.divisor}")
        if self.mode == "spacing":
            t = self.target_spacing_mm
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
                raise GTVError(f"mode 'spacing' needs target_spacing_mm > 0, got {t!r}")
        if not isinstance(self.keep_aspect, bool):
            raise GTVError(f"preprocessing keep_aspect must be true or false, got {self.keep_aspect!r}")
        return self

    def to_dict(self) -> dict:
        """JSON-safe dict (the window becomes a list)."""
        d = asdict(self)
        d["window"] = [float(v) for v in self.window]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        """Inverse of ``to_dict``; unknown keys are an error (a bundle from another version)."""
        if not isinstance(d, dict):
            raise GTVError(f"preprocessing spec must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GTVError(f"unknown preprocessing spec key(s): {', '.join(unknown)}")
        d = dict(d)
        if "window" in d:
            try:
                d["window"] = tuple(float(v) for v in d["window"])
            except (TypeError, ValueError):
                raise GTVError(f"preprocessing window must be two numbers, got {d['window']!r}") from None
            if len(d["window"]) != 2:
                raise GTVError(f"preprocessing window must be two numbers, got {d['window']!r}")
        return cls(**d).validate()


@dataclass(frozen=True)
class PrepState:
    """Everything ``restore`` needs to put model-space slices back on the input grid.

    "LPS array" is the input array after reorientation, indexed ``(S, P, L)``.

    Attributes:
        spec: the spec used.
        shape, spacing, origin, direction: the input image's grid (array ``(z, y, x)``, geometry
            ``(x, y, z)`` as in ``Image``).
        axes: ``np.transpose`` axes taking the input array to the LPS array's axis order.
        flips: LPS array axes (0, 1, 2) reversed after the transpose.
        lps_shape: ``(Z, Y, X)`` of the LPS array; ``Z`` is the number of model slices.
        lps_spacing: ``(sx, sy, sz)`` mm of the LPS array.
        crop: ``(y0, y1, x0, x1)`` half-open box in the LPS array's in-plane axes.
        body_found: False when no body was found and the box is the whole slice.
        pad_square: ``(top, bottom, left, right)`` air added to the crop before resizing.
        resized: ``(h, w)`` after resizing.
        pad_out: ``(top, bottom, left, right)`` added after resizing (``"spacing"`` mode).
    """

    spec: PreprocessSpec
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    lps_shape: tuple[int, int, int]
    lps_spacing: tuple[float, float, float]
    crop: tuple[int, int, int, int]
    body_found: bool
    pad_square: tuple[int, int, int, int]
    resized: tuple[int, int]
    pad_out: tuple[int, int, int, int]

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """``(Z, H, W)`` of the model-space stack."""
        t, b, l, r = self.pad_out
        return (self.lps_shape[0], self.resized[0] + t + b, self.resized[1] + l + r)

    @property
    def model_spacing(self) -> tuple[float, float, float]:
        """``(sx, sy, sz)`` mm of a model-space pixel (slices keep their spacing)."""
        y0, y1, x0, x1 = self.crop
        t, b, l, r = self.pad_square
        sx, sy, sz = self.lps_spacing
        return ((x1 - x0 + l + r) * sx / self.resized[1], (y1 - y0 + t + b) * sy / self.resized[0], sz)

    @property
    def slice_axis(self) -> int:
        """The input array axis that holds the axial slices (0 for an axially acquired series)."""
        return self.axes[0]

    @property
    def original_slice_index(self) -> np.ndarray:
        """``(Z,)`` int: model slice ``k`` is input index ``original_slice_index[k]`` along ``slice_axis``.

        Model slices run inferior to superior; a series stored superior first comes out reversed.
        """
        n = self.lps_shape[0]
        idx = np.arange(n)
        return idx[::-1].copy() if self.flips[0] else idx


# ---------------------------------------------------------------- orientation


def lps_axes(direction) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Transpose axes and flips that take an array ``(z, y, x)`` with this direction to LPS.

    Each physical axis (L, P, S) takes the index axis whose direction column points most along it
    (largest |cosine| first, so oblique grids get the nearest orientation, as ``DICOMOrient`` does).

    Returns:
        ``axes`` for ``np.transpose`` (result axes ``(S, P, L)``) and ``flips`` of result axes.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    col_of = [-1, -1, -1]  # physical axis -> index axis (0 = i/x, 1 = j/y, 2 = k/z)
    used_cols: set[int] = set()
    for flat in np.argsort(-np.abs(d), axis=None, kind="stable"):
        r, c = divmod(int(flat), 3)
        if col_of[r] < 0 and c not in used_cols:
            col_of[r] = c
            used_cols.add(c)
    # result array axis a holds physical axis 2 - a; index axis c is array axis 2 - c
    axes = tuple(2 - col_of[2 - a] for a in range(3))
    flips = tuple(bool(d[2 - a, col_of[2 - a]] < 0) for a in range(3))
    return axes, flips


def reorient_to_lps(array: np.ndarray, direction) -> np.ndarray:
    """The array as SimpleITK's ``DICOMOrient(img, "LPS")`` would hold it: axes ``(S, P, L)``, a view."""
    return _to_lps(np.asarray(array), *lps_axes(direction))


def _to_lps(array: np.ndarray, axes, flips) -> np.ndarray:
    out = np.transpose(array, axes)
    flip_axes = tuple(a for a in range(3) if flips[a])
    return np.flip(out, flip_axes) if flip_axes else out


def _from_lps(array: np.ndarray, axes, flips) -> np.ndarray:
    flip_axes = tuple(a for a in range(3) if flips[a])
    out = np.flip(array, flip_axes) if flip_axes else array
    return np.ascontiguousarray(np.transpose(out, np.argsort(axes)))


# ---------------------------------------------------------------- body


def _disk(ry: int, rx: int) -> np.ndarray:
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return ((yy / max(ry, 0.5)) ** 2 + (xx / max(rx, 0.5)) ** 2 <= 1.0)[None]


def _offsets(structure: np.ndarray) -> list[tuple[int, int]]:
    """In-plane offsets of a ``(1, h, w)`` structuring element, from its centre."""
    _, h, w = structure.shape
    return [(int(y) - h // 2, int(x) - w // 2) for y, x in zip(*np.nonzero(structure[0]))]


def _shifted(mask: np.ndarray, dy: int, dx: int, out: np.ndarray, op) -> None:
    """``out[:, y, x] op= mask[:, y + dy, x + dx]`` where that lies inside, else with False."""
    _, ny, nx = mask.shape
    ys, yd = slice(max(dy, 0), ny + min(dy, 0)), slice(max(-dy, 0), ny - max(dy, 0))
    xs, xd = slice(max(dx, 0), nx + min(dx, 0)), slice(max(-dx, 0), nx - max(dx, 0))
    if op is np.logical_and:  # what lies outside is False: those rows and columns become False
        rest = np.ones(mask.shape[1:], bool)
        rest[yd, xd] = False
        out[:, rest] = False
    op(out[:, yd, xd], mask[:, ys, xs], out=out[:, yd, xd])


_CROSS = _disk(1, 1)  # the 5-pixel cross


def _factors(structure: np.ndarray) -> list[np.ndarray]:
    """Elements whose successive dilations give ``structure``: the radius-2 disk (13 pixels, the
    body erosion's on a 1.5 mm grid) is the cross dilated by the cross, so two passes of 4 shifts
    replace one of 12 (eroding or dilating by a dilation is doing it by each in turn)."""
    if structure.shape == (1, 5, 5) and np.array_equal(structure, _disk(2, 2)):
        return [_CROSS, _CROSS]
    return [structure]


def _morph(mask: np.ndarray, structure: np.ndarray, op) -> np.ndarray:
    """One logical ``op`` (AND: erosion, OR: dilation) per element pixel over shifted views, for an
    in-plane, symmetric element, by each of its factors in turn."""
    for element in _factors(structure):
        out = np.full(mask.shape, op is np.logical_and)
        for dy, dx in _offsets(element):
            _shifted(mask, dy, dx, out, op)
        mask = out
    return mask


def _erode(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, structure)`` (twice as fast as scipy's loop here)."""
    return _morph(mask, structure, np.logical_and)


def _dilate(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, structure)``."""
    return _morph(mask, structure, np.logical_or)


def body_mask(array: np.ndarray, spacing_xy: tuple[float, float], threshold_hu: float, erosion_mm: float,
              fill_holes: bool = True) -> np.ndarray:
    """Patient body on an axial stack.

    Args:
        array: ``(Z, Y, X)`` HU, axial slices on axis 0.
        spacing_xy: in-plane ``(sx, sy)`` mm.
        threshold_hu: voxels above it are candidates.
        erosion_mm: in-plane erosion radius that separates the couch and thin bridges before the
            largest 3D connected component is kept; the component is then dilated back within the
            thresholded voxels and its in-plane holes (lungs, bowel gas) filled.
        fill_holes: False skips the filling, which never moves the body's bounding box.

    Returns:
        ``(Z, Y, X)`` bool; all False when nothing is above the threshold.
    """
    candidates = array > threshold_hu
    ry = int(round(erosion_mm / spacing_xy[1]))
    rx = int(round(erosion_mm / spacing_xy[0]))
    disk = _disk(ry, rx) if (ry or rx) else None
    seed = _erode(candidates, disk) if disk is not None else candidates
    if not seed.any():  # a body thinner than the erosion: keep it rather than lose it
        seed, disk = candidates, None
    body = _largest_component(seed)
    if body is None:
        return np.zeros(array.shape, bool)
    if disk is not None:
        body = _dilate(body, disk) & candidates
    if not fill_holes or not body.size:
        return body
    from scipy import ndimage as ndi

    return np.stack([ndi.binary_fill_holes(s) for s in body])


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest face-connected 3D component of a bool ``(Z, Y, X)`` mask (``scipy.ndimage.label``'s
    default connectivity), or None when the mask is empty; of equal sizes the first in raster order.

    SimpleITK's labelling and counting (C++, no copy of the labels to 8-byte integers), not
    scipy.ndimage's: importing scipy.ndimage costs 0.2 s of a cold call, SimpleITK is loaded anyway.
    Without SimpleITK (a benchmark of the networks alone), scipy.ndimage's.
    """
    from .errors import MissingModule
    from .image import sitk

    if not mask.any():
        return None
    if isinstance(sitk, MissingModule):
        return _largest_component_scipy(mask)
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)), False)
    # Most often one component (the body) holds most of the voxels: the commonest label of the slice
    # with the most voxels, proved the largest by holding more than half (no other can tie or beat
    # it). 3 ms for lung2's body seed instead of sorting all components by size (17 ms).
    view = sitk.GetArrayViewFromImage(labels)
    per_slice = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    densest = view[int(np.argmax(per_slice))].ravel()
    guess = int(np.argmax(np.bincount(densest[densest != 0])))
    component = view == guess
    if guess and 2 * int(np.count_nonzero(component)) > int(per_slice.sum()):
        return component
    by_size = sitk.RelabelComponentImageFilter()  # label 1: the largest
    largest = by_size.Execute(labels)
    sizes = by_size.GetSizeOfObjectsInPixels()
    if len(sizes) < 2 or sizes[0] != sizes[1]:
        return sitk.GetArrayViewFromImage(largest) == 1
    # A tie for the largest: ITK numbers components in raster order of their first voxel, as scipy
    # does, so the lowest label of the tied ones is the one scipy's argmax took.
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel())
    return sitk.GetArrayViewFromImage(labels) == int(np.argmax(counts[1:])) + 1


def _largest_component_scipy(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    labels, _ = ndi.label(mask)
    # Voxels per component, counted within each one's box (np.bincount would first copy the labels
    # to 8-byte integers: 0.5 GB for a 1000-slice CT); ties go to the lowest label.
    counts = [int(np.count_nonzero(labels[box] == i)) for i, box in enumerate(ndi.find_objects(labels), start=1)]
    return labels == 1 + int(np.argmax(counts))


def _body_box(lps: np.ndarray, lps_spacing, spec: PreprocessSpec) -> tuple[tuple[int, int, int, int], bool]:
    """``(y0, y1, x0, x1)`` half-open, with margin and clipped, and whether a body was found."""
    _, ny, nx = lps.shape
    sx, sy = lps_spacing[0], lps_spacing[1]
    step = _body_step(min(sx, sy))
    mask = body_mask(lps[:, ::step, ::step], (sx * step, sy * step), spec.body_threshold_hu, spec.body_erosion_mm,
                     fill_holes=False)
    if not mask.any():
        return (0, ny, 0, nx), False
    if step > 1:
        rows, cols = _fine_edges(mask, lps, step, spec.body_threshold_hu)
    else:
        rows = np.flatnonzero(mask.any(axis=(0, 2)))
        cols = np.flatnonzero(mask.any(axis=(0, 1)))
    my = int(math.ceil(spec.margin_mm / sy))
    mx = int(math.ceil(spec.margin_mm / sx))
    y0 = max(0, rows[0] - my)
    y1 = min(ny, rows[-1] + 1 + my)
    x0 = max(0, cols[0] - mx)
    x1 = min(nx, cols[-1] + 1 + mx)
    return (int(y0), int(y1), int(x0), int(x1)), True


def _fine_edges(coarse: np.ndarray, lps: np.ndarray, step: int, threshold_hu: float):
    """First and last fine row and column of the fine candidates within one coarse pixel of the
    coarse body (a coarse pixel stands for the ``step`` fine ones around its sample).

    Equal to taking the bounding box of ``repeat(dilate(coarse, 3 x 3), step) & (lps > threshold)``,
    but only the few fine rows and columns where an edge can lie are looked at: a coarse body pixel
    is a fine candidate at its sample, so the fine edge lies between the grown mask's edge and the
    coarse body's.
    """
    _, ny, nx = lps.shape

    def edge(axis: int, n: int, first: bool) -> int:
        proj = np.flatnonzero(coarse.any(axis=(0, 2) if axis == 1 else (0, 1)))
        c = int(proj[0] if first else proj[-1])  # the coarse body's edge
        lo, hi = (max(0, (c - 1) * step), c * step) if first else (c * step, min(n - 1, (c + 2) * step - 1))
        # the band's fine candidates in one read (a column at a time would gather across the volume)
        band = lps[:, lo:hi + 1, :] if axis == 1 else lps[:, :, lo:hi + 1]
        band = band > threshold_hu
        order = range(lo, hi + 1) if first else range(hi, lo - 1, -1)
        for f in order:  # fine row / column f lies under coarse g
            g = f // step
            near = coarse.take(range(max(0, g - 1), min(coarse.shape[axis], g + 2)), axis=axis).any(axis=axis)
            grown = near.copy()  # (Z, across): dilated by one coarse pixel across
            grown[:, 1:] |= near[:, :-1]
            grown[:, :-1] |= near[:, 1:]
            across = ny if axis == 2 else nx
            fine = np.repeat(grown, step, axis=1)[:, :across]
            if (fine & band.take(f - lo, axis=axis)).any():
                return f
        raise AssertionError("a coarse body pixel is a fine candidate at its sample")

    rows = np.array([edge(1, ny, True), edge(1, ny, False)])
    cols = np.array([edge(2, nx, True), edge(2, nx, False)])
    return rows, cols


# ---------------------------------------------------------------- resampling


RESIZERS = ("torch", "numpy")


def _resize(stack: np.ndarray, hw: tuple[int, int], order: str, resizer: str = "torch") -> np.ndarray:
    """``(Z, h, w)`` float32 -> ``(Z, H, W)`` float32; half-pixel-aligned so the inverse lines up.

    ``resizer``: ``torch`` (``F.interpolate``) or ``numpy`` (``resample.resize``, the same filters
    up to float32 rounding, for the ONNX Runtime engine, which does not import torch)."""
    if order not in ("linear", "nearest"):
        raise GTVError(f"interpolation order must be 'linear' or 'nearest', got {order!r}")
    if resizer not in RESIZERS:
        raise GTVError(f"resizer must be one of {', '.join(RESIZERS)}, got {resizer!r}")
    if stack.shape[1:] == tuple(hw):
        return stack
    if resizer == "numpy":
        from .resample import resize

        return resize(stack, tuple(hw), order, antialias=True)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    with torch.no_grad():
        if order == "linear":
            # antialias: a 512 -> 64 shrink would otherwise sample 2 of every 8 pixels
            out = F.interpolate(t, size=tuple(hw), mode="bilinear", align_corners=False, antialias=True)
        else:
            out = F.interpolate(t, size=tuple(hw), mode="nearest-exact")
    return out[:, 0].numpy()


def _pad(stack: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    t, b, l, r = pad
    if not any(pad):
        return stack
    return np.pad(stack, ((0, 0), (t, b), (l, r)))


def _unpad(stack: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    t, b, l, r = pad
    return stack[:, t : stack.shape[1] - b, l : stack.shape[2] - r]


def _split(total: int) -> tuple[int, int]:
    return total // 2, total - total // 2


def _layout(h: int, w: int, lps_spacing, spec: PreprocessSpec):
    """Padding before resize, resized shape and padding after, for an ``h x w`` crop."""
    if spec.mode == "resize":
        if spec.keep_aspect:
            side = max(h, w)
            pad_square = (*_split(side - h), *_split(side - w))
        else:
            pad_square = (0, 0, 0, 0)
        return pad_square, (spec.size, spec.size), (0, 0, 0, 0)
    sx, sy = lps_spacing[0], lps_spacing[1]
    rh = max(1, int(round(h * sy / spec.target_spacing_mm)))
    rw = max(1, int(round(w * sx / spec.target_spacing_mm)))
    k = spec.divisor
    pad_out = (*_split(-rh % k), *_split(-rw % k))
    return (0, 0, 0, 0), (rh, rw), pad_out


# ---------------------------------------------------------------- public pipeline


def apply_window(array: np.ndarray, window: tuple[float, float], out: np.ndarray | None = None) -> np.ndarray:
    """HU -> float32 in ``[0, 1]``: ``lo`` and below give 0, ``hi`` and above give 1 (into ``out``
    when given, a float32 array of ``array``'s shape)."""
    lo, hi = float(window[0]), float(window[1])
    if out is None:
        out = np.empty(np.shape(array), np.float32)
    np.subtract(array, np.float32(lo), out=out, dtype=np.float32, casting="unsafe")
    np.multiply(out, np.float32(1.0 / (hi - lo)), out=out)
    return np.clip(out, 0.0, 1.0, out=out)


# Slices windowed and resized at a time by the numpy resizer: a few MB, so that the windowed slices
# are still in the cache when they are resized.
_CHUNK_BYTES = 4 << 20


def _window_resized(crop: np.ndarray, window, hw: tuple[int, int], pad) -> np.ndarray:
    """``_resize(zero-padded apply_window(crop), hw, "linear", "numpy")`` a few slices at a time,
    without the padded full-resolution float32 stack (lung2: 64 MB written and read again): the
    padding's matrix columns are left out (``resample.resize``'s ``pad``)."""
    from .resample import resize

    z, h, w = crop.shape
    step = max(1, _CHUNK_BYTES // max(1, h * w * 4))
    out = np.empty((z, *hw), np.float32)
    buf = np.empty((min(step, z), h, w), np.float32)
    for z0 in range(0, z, step):
        z1 = min(z, z0 + step)
        out[z0:z1] = resize(apply_window(crop[z0:z1], window, out=buf[: z1 - z0]), hw, "linear", True, pad=pad)
    return out


def prepare(image: Image, spec: PreprocessSpec, resizer: str = "torch") -> tuple[np.ndarray, PrepState]:
    """CT -> model-space axial slices.

    Args:
        image: CT in HU, any integer or float pixel type, any axis-aligned or oblique direction.
        spec: the preprocessing spec (from the model bundle).
        resizer: ``torch`` or ``numpy`` (see ``_resize``).

    Returns:
        ``(Z, H, W)`` float32 in ``[0, 1]``, slices inferior to superior, and the ``PrepState``.
    """
    spec.validate()
    array = np.asarray(image.array)
    if array.ndim != 3 or min(array.shape) < 1:
        raise GTVError(f"expected a 3D image with at least one voxel per axis, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise GTVError(f"CT pixel type {array.dtype} is not a real number type")
    axes, flips = lps_axes(image.direction)
    lps = _to_lps(array, axes, flips)
    lps_spacing = tuple(float(image.spacing[2 - axes[2 - c]]) for c in range(3))
    crop, found = _body_box(lps, lps_spacing, spec)
    y0, y1, x0, x1 = crop
    pad_square, resized, pad_out = _layout(y1 - y0, x1 - x0, lps_spacing, spec)
    state = PrepState(
        spec=replace(spec),  # a copy: the caller may go on changing theirs
        shape=tuple(int(v) for v in array.shape),
        spacing=tuple(float(v) for v in image.spacing),
        origin=tuple(float(v) for v in image.origin),
        direction=tuple(float(v) for v in image.direction),
        axes=axes,
        flips=flips,
        lps_shape=tuple(int(v) for v in lps.shape),
        lps_spacing=lps_spacing,
        crop=crop,
        body_found=found,
        pad_square=pad_square,
        resized=resized,
        pad_out=pad_out,
    )
    t, b, l, r = pad_square
    if resizer == "numpy":
        stack = _window_resized(lps[:, y0:y1, x0:x1], spec.window, state.resized, ((t, b), (l, r)))
    else:  # windowed straight into the zero-padded buffer (0 is air after windowing)
        padded = np.zeros((lps.shape[0], y1 - y0 + t + b, x1 - x0 + l + r), np.float32)
        apply_window(lps[:, y0:y1, x0:x1], spec.window, out=padded[:, t : t + y1 - y0, l : l + x1 - x0])
        stack = _resize(padded, state.resized, "linear", resizer)
    stack = np.ascontiguousarray(_pad(stack, state.pad_out))
    # the antialiasing filter's weights sum to 1 only up to rounding: 1.0000001 would break [0, 1]
    return np.clip(stack, 0.0, 1.0, out=stack), state


def _forward(stack: np.ndarray, state: PrepState, order: str) -> np.ndarray:
    stack = _pad(stack, state.pad_square)  # 0 is air after windowing
    stack = _resize(stack, state.resized, order)
    return np.ascontiguousarray(_pad(stack, state.pad_out))


def _check_shape(array: np.ndarray, expected, what: str) -> None:
    if tuple(array.shape) != tuple(expected):
        raise GTVError(f"{what} has shape {tuple(array.shape)}, expected {tuple(expected)}")


def to_model_space(mask: np.ndarray, state: PrepState, n_classes: int = 2) -> np.ndarray:
    """A mask or label map on the input grid -> ``(Z, H, W)`` uint8 on the model grid (training labels).

    With ``n_classes = 2`` any nonzero voxel is foreground. Resampled as a coverage fraction
    (antialiased bilinear, which beat box averaging and plain bilinear on small tumours) and kept
    where at least half covered, so ``restore`` followed by a 0.5 threshold gives the mask back.
    With more classes the input is a label map (1 the target, 2.. other structures in order of
    priority): class ``c`` is kept where classes ``1..c`` cover at least half of the pixel and no
    earlier class claimed it. Foreground outside the body crop box is dropped.
    """
    mask = np.asarray(mask)
    _check_shape(mask, state.shape, "mask")
    lps = _to_lps(mask, state.axes, state.flips)
    y0, y1, x0, x1 = state.crop
    box = lps[:, y0:y1, x0:x1]
    if n_classes <= 2:
        return (_forward((box != 0).astype(np.float32), state, "linear") >= 0.5).astype(np.uint8)
    out = np.zeros(state.model_shape, np.uint8)
    for c in range(1, n_classes):
        covered = _forward(((box >= 1) & (box <= c)).astype(np.float32), state, "linear") >= 0.5
        out[covered & (out == 0)] = c
    return out


def restore(model_space: np.ndarray, state: PrepState, order: str = "linear") -> np.ndarray:
    """Model-space slices -> an array on the input grid, shape and axis order of ``image.array``.

    Args:
        model_space: ``(Z, H, W)`` probabilities (float) or a mask (uint8/bool).
        state: from ``prepare``.
        order: ``"linear"`` (probabilities; returns float32, threshold at 0.5) or ``"nearest"``
            (labels; returns the input dtype).

    Returns:
        ``state.shape`` array; zero outside the crop box.
    """
    if order not in ("linear", "nearest"):
        raise GTVError(f"interpolation order must be 'linear' or 'nearest', got {order!r}")
    model_space = np.asarray(model_space)
    _check_shape(model_space, state.model_shape, "model-space array")
    out_dtype = np.float32 if order == "linear" else model_space.dtype
    y0, y1, x0, x1 = state.crop
    t, b, l, r = state.pad_square
    stack = _unpad(model_space, state.pad_out).astype(np.float32, copy=False)
    stack = _resize(stack, (y1 - y0 + t + b, x1 - x0 + l + r), order)
    full = np.zeros(state.lps_shape, dtype=out_dtype)
    full[:, y0:y1, x0:x1] = _unpad(stack, state.pad_square)
    return _from_lps(full, state.axes, state.flips)


def restore_mask(model_space: np.ndarray, state: PrepState, threshold: float = 0.5, chunk: int = 32,
                 resizer: str = "torch") -> np.ndarray:
    """``restore(model_space, state) >= threshold`` as a uint8 mask, without the float volume.

    Only the slices with any nonzero value are resampled (a slice of zeros restores to zeros), a
    ``chunk`` of slices at a time, into the crop box of a uint8 volume: a 1000-slice CT needs no
    4-byte-per-voxel array on its whole grid. Equal to thresholding :func:`restore`'s output
    (with ``resizer="torch"``; ``numpy`` resizes the same up to float32 rounding).
    """
    model_space = np.asarray(model_space)
    _check_shape(model_space, state.model_shape, "model-space array")
    y0, y1, x0, x1 = state.crop
    t, b, l, r = state.pad_square
    full = np.zeros(state.lps_shape, dtype=np.uint8)
    busy = np.flatnonzero(model_space.reshape(model_space.shape[0], -1).any(axis=1))
    for start in range(0, busy.size, chunk):
        part = busy[start:start + chunk]
        stack = _unpad(model_space[part], state.pad_out).astype(np.float32, copy=False)
        stack = _unpad(_resize(stack, (y1 - y0 + t + b, x1 - x0 + l + r), "linear", resizer), state.pad_square)
        full[part, y0:y1, x0:x1] = stack >= np.float32(threshold)
    return _from_lps(full, state.axes, state.flips)


def restore_slice_values(values: np.ndarray, state: PrepState) -> np.ndarray:
    """Per-model-slice values (e.g. classifier probabilities) -> the input's slice order.

    Only defined when the input's array axis 0 is the axial axis (``state.slice_axis == 0``), which
    is the case for axially acquired CT; otherwise axis 0 slices are not model slices and this raises
    ``GTVError`` (use ``restore`` on a per-voxel map instead).

    Returns:
        ``(shape[0],)``: entry ``i`` belongs to ``image.array[i]``.
    """
    values = np.asarray(values)
    if state.slice_axis != 0:
        raise GTVError("the image's slices are not axial (array axis 0 is not superior-inferior); "
                       "per-slice values cannot be mapped to them")
    _check_shape(values, (state.lps_shape[0],), "per-slice values")
    out = np.empty_like(values)
    out[state.original_slice_index] = values
    return out
