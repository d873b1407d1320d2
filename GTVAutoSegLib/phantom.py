"""Synthetic chest-like CT phantoms with a low-contrast tumour, for small fast tests.

The anatomy is defined in physical LPS coordinates and sampled on the requested grid, so on any
direction the body lies across the axial planes and the tumour spans axial slices, without relying
on the preprocessing code under test. The tumour's position and the noise are drawn in array order,
so the same seed on another direction is not the same patient voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage as ndi

from .errors import GTVError
from .image import Image

AIR_HU = -1000.0
TISSUE_HU = 40.0
BONE_HU = 700.0
LUNG_HU = -800.0
TABLE_HU = 100.0


def _physical_coords(shape, spacing, origin, direction) -> np.ndarray:
    """``(3, z, y, x)`` LPS mm of every voxel centre."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    index_mm = np.stack([i * spacing[0], j * spacing[1], k * spacing[2]])
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return np.einsum("rc,c...->r...", d, index_mm) + np.asarray(origin, dtype=float)[:, None, None, None]


def make_phantom(
    shape: tuple[int, int, int] = (24, 96, 96),
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.5),
    seed: int = 0,
    tumour_slices: int | None = None,
    contrast_hu: float = 30.0,
    direction: tuple[float, ...] | None = None,
    origin: tuple[float, float, float] | None = None,
    dtype=np.int16,
    *,
    noise_hu: float = 10.0,
    lungs: bool = True,
    table: bool = False,
) -> tuple[Image, Image]:
    """A CT in HU and its tumour mask on the same grid.

    An elliptic body (soft tissue ~40 HU) inside air (-1000 HU), a bone ring under the skin
    (~700 HU), two lungs (~-800 HU), optionally a couch plate under the body, and an ellipsoidal
    tumour ``contrast_hu`` above soft tissue, wholly inside soft tissue, on ``tumour_slices``
    consecutive axial slices. Gaussian noise of ``noise_hu`` on everything.

    Args:
        shape: array shape ``(z, y, x)``.
        spacing: ``(sx, sy, sz)`` mm.
        seed: tumour position, size and noise; the same seed gives the same phantom.
        tumour_slices: number of axial slices with tumour; random 3-6 when None.
        contrast_hu: tumour minus soft tissue, HU.
        direction: 9 floats row-major as SimpleITK; identity when None. The axial (S) axis is the
            index axis whose direction column is most nearly superior-inferior.
        origin: mm; the phantom is centred on the grid whatever the origin. ``(0, 0, 0)`` when None.
        dtype: pixel type of the CT (values rounded for integer types).
        noise_hu: standard deviation of the noise.
        lungs: include the lungs.
        table: include a couch plate 4 mm behind the body (for body-mask tests).

    Returns:
        ``(ct, mask)``: ``Image`` in HU and a uint8 0/1 ``Image`` on the same grid.
    """
    shape = tuple(int(v) for v in shape)
    direction = tuple(float(v) for v in (direction if direction is not None else np.eye(3).ravel()))
    origin = tuple(float(v) for v in (origin if origin is not None else (0.0, 0.0, 0.0)))
    spacing = tuple(float(v) for v in spacing)
    if len(shape) != 3 or min(shape) < 1 or len(spacing) != 3 or len(direction) != 9:
        raise GTVError("phantom needs a 3D shape, 3 spacings and 9 direction cosines")
    rng = np.random.default_rng(seed)

    d = np.asarray(direction).reshape(3, 3)
    s_axis = int(np.argmax(np.abs(d[2])))  # index axis (x=0, y=1, z=2) along superior-inferior
    n_axial = shape[2 - s_axis]
    if tumour_slices is None:
        tumour_slices = int(rng.integers(3, 7))
    if not 1 <= tumour_slices <= max(1, n_axial - 2):
        raise GTVError(f"tumour_slices must be 1..{n_axial - 2} for {n_axial} axial slices")

    p = _physical_coords(shape, spacing, origin, direction)
    centre = (p.reshape(3, -1).min(axis=1) + p.reshape(3, -1).max(axis=1)) / 2
    u = p - centre[:, None, None, None]
    half = np.abs(u).reshape(3, -1).max(axis=1)  # half extent along L, P, S
    body_a, body_b = 0.8 * half[0], 0.65 * half[1]
    r_body = (u[0] / body_a) ** 2 + (u[1] / body_b) ** 2

    hu = np.full(shape, AIR_HU)
    body = r_body <= 1.0
    hu[body] = TISSUE_HU
    bone = (r_body <= 0.92**2) & (r_body >= 0.85**2)
    hu[bone] = BONE_HU
    lung = np.zeros(shape, bool)
    if lungs:
        for side in (-1.0, 1.0):
            dl = (u[0] - side * 0.45 * body_a) / (0.24 * body_a)
            dp = (u[1] + 0.1 * body_b) / (0.42 * body_b)
            lung |= dl**2 + dp**2 <= 1.0
        hu[lung] = LUNG_HU
    if table:
        top = body_b + 4.0
        hu[(u[1] >= top) & (u[1] <= top + 3.0) & (np.abs(u[0]) <= 0.9 * half[0])] = TABLE_HU
    tissue = body & ~bone & ~lung

    mask = _place_tumour(rng, u, tissue, d, spacing, s_axis, shape, tumour_slices)
    hu[mask] = TISSUE_HU + contrast_hu

    hu += rng.normal(0.0, noise_hu, size=shape)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        hu = np.clip(np.rint(hu), info.min, info.max)
    ct = Image(hu.astype(dtype), spacing, origin, direction)
    return ct, ct.with_array(mask.astype(np.uint8))


def _place_tumour(rng, u, tissue, d, spacing, s_axis, shape, n_slices) -> np.ndarray:
    """An ellipsoid wholly in soft tissue covering exactly ``n_slices`` axial slices."""
    a_axis = 2 - s_axis  # array axis along S
    s_step = d[:, s_axis] * spacing[s_axis]  # LPS mm from one axial slice to the next
    n_axial = shape[a_axis]
    # slices closer than this to the centre are in; the next one out is 0.5 slice further. The 0.45
    # keeps the end slices' sections at >= 2/3 of the middle one, so small grids still see them.
    half_z = (n_slices / 2 + 0.45) * spacing[s_axis]
    plane_spacing = [spacing[2 - a] for a in range(3) if a != a_axis]
    for attempt in range(60):
        ra, rb = rng.uniform(7.0, 12.0, size=2) * (1.0 - attempt / 100)
        first = int(rng.integers(1, n_axial - n_slices)) if n_axial - n_slices > 1 else 0
        centre_slice = first + (n_slices - 1) // 2
        sl = [slice(None)] * 3
        sl[a_axis] = centre_slice
        # the anatomy does not change along S, so a centre this deep in tissue fits on every slice
        depth = ndi.distance_transform_edt(tissue[tuple(sl)], sampling=plane_spacing)
        candidates = np.argwhere(depth > max(ra, rb) + 1.0)
        if candidates.size == 0:
            continue
        vox = list(candidates[rng.integers(len(candidates))])
        vox.insert(a_axis, centre_slice)
        c = u[(slice(None), *vox)].copy()
        if n_slices % 2 == 0:  # centre between two slices so that n_slices of them are inside
            c += s_step / 2
        du = u - c[:, None, None, None]
        inside = (du[0] / ra) ** 2 + (du[1] / rb) ** 2 + (du[2] / half_z) ** 2 < 1.0
        if inside.any() and not (inside & ~tissue).any():
            return inside
    raise GTVError("could not fit a tumour in the phantom's soft tissue; use a larger grid")


def make_phantom_cohort(n: int, seed: int = 0, **kwargs) -> Iterator[tuple[Image, Image]]:
    """``n`` phantoms with seeds ``seed, seed + 1, ...``; ``kwargs`` go to ``make_phantom``."""
    for k in range(n):
        yield make_phantom(seed=seed + k, **kwargs)
