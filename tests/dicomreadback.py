"""Reading our DICOM SEG and RTSTRUCT back with other people's code, for the round-trip tests.

Nothing here uses GTVAutoSegLib's writers or its grid mapping: the SEG is read by highdicom and by
dcmqi's ``segimage2itkimage``, the RTSTRUCT by pydicom and rasterised with matplotlib's polygon test,
and voxels are compared by their positions in patient space.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from GTVAutoSegLib.image import Image


def dciodvfy() -> str:
    """The path of dicom3tools' ``dciodvfy``; skips the test when it is not installed."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed and scripts/test.sh could not "
                    "install it (apt-get needs root and Debian's archive)")
    return tool


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines of dciodvfy on one file."""
    run = subprocess.run([dciodvfy(), str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [l for l in lines if l.startswith("Error")], [l for l in lines if l.startswith("Warning")]


def segimage2itkimage() -> str:
    tool = Path(sys.executable).with_name("segimage2itkimage")
    return str(tool) if tool.exists() else shutil.which("segimage2itkimage")


def _image_from_affine(array: np.ndarray, affine: np.ndarray) -> Image:
    """An Image from an array indexed like the affine's columns 0, 1, 2 (slice, row, column)."""
    columns = [affine[:3, j] for j in (2, 1, 0)]  # x (column), y (row), z (slice)
    spacing = tuple(float(np.linalg.norm(c)) for c in columns)
    direction = np.stack([c / s for c, s in zip(columns, spacing)], axis=1)
    return Image(array, spacing, tuple(float(v) for v in affine[:3, 3]), tuple(direction.ravel()))


def seg_by_highdicom(path: Path) -> tuple[Image, object]:
    """The SEG's one segment as highdicom rebuilds its volume, and the parsed SEG."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    volume = seg.get_volume()
    array = np.asarray(volume.array)
    if array.ndim == 4:
        assert array.shape[-1] == 1
        array = array[..., 0]
    return _image_from_affine(array, np.asarray(volume.affine, float)), seg


def seg_by_dcmqi(path: Path, workdir: Path) -> Image:
    """The SEG's segment 1 as dcmqi's ``segimage2itkimage`` writes it (NRRD), read with SimpleITK."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([segimage2itkimage(), "--inputDICOM", str(path), "--outputDirectory", str(workdir),
                          "-t", "nrrd", "-p", "seg"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return Image.from_sitk(sitk.ReadImage(str(workdir / "seg-1.nrrd")))


def _centres(image: Image, index_zyx: np.ndarray) -> np.ndarray:
    to_lps = np.asarray(image.direction, float).reshape(3, 3) @ np.diag(image.spacing)
    return index_zyx[:, ::-1] @ to_lps.T + np.asarray(image.origin, float)


def grid_corners(image: Image) -> set[tuple[float, ...]]:
    """The patient positions of the grid's 8 corner voxels (mm, rounded to 0.01)."""
    nz, ny, nx = image.array.shape
    corners = np.array([[z, y, x] for z in (0, nz - 1) for y in (0, ny - 1) for x in (0, nx - 1)], float)
    return {tuple(np.round(p, 2)) for p in _centres(image, corners)}


def voxel_positions(image: Image) -> set[tuple[float, ...]]:
    """The patient positions (mm, rounded to 0.01) of the image's non-zero voxels."""
    return {tuple(np.round(p, 2)) for p in _centres(image, np.argwhere(image.array != 0).astype(float))}


def same_voxels_same_grid(read: Image, truth: Image) -> bool:
    """Both hold voxels at the same patient positions (same lattice, same extent) and the same set is on."""
    return (sorted(read.array.shape) == sorted(truth.array.shape)
            and np.allclose(sorted(read.spacing), sorted(truth.spacing), atol=1e-4)
            and grid_corners(read) == grid_corners(truth)
            and voxel_positions(read) == voxel_positions(truth))


def rasterise_rtstruct(path: Path, ct: Image) -> tuple[np.ndarray, dict[int, set[str]], pydicom.Dataset]:
    """Fill the first ROI's contours on ``ct``'s grid by voxel centre (even-odd rule for nested contours).

    Returns:
        The mask ``(z, y, x)``, the SOP instances each slice's contours reference, and the dataset.
    """
    from matplotlib.path import Path as Polygon

    ds = pydicom.dcmread(str(path))
    from_lps = np.linalg.inv(np.asarray(ct.direction, float).reshape(3, 3) @ np.diag(ct.spacing))
    nz, ny, nx = ct.array.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    mask = np.zeros(ct.array.shape, np.uint8)
    referenced: dict[int, set[str]] = {}
    for contour in getattr(ds.ROIContourSequence[0], "ContourSequence", []):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        assert len(points) == int(contour.NumberOfContourPoints)
        index = (points - np.asarray(ct.origin)) @ from_lps.T  # (x, y, z) index positions
        k = np.round(index[:, 2])
        assert np.abs(index[:, 2] - k).max() < 1e-3 and (k == k[0]).all(), "a contour off its slice plane"
        k = int(k[0])
        inside = Polygon(index[:, :2]).contains_points(centres).reshape(ny, nx)
        mask[k] ^= inside.astype(np.uint8)
        referenced.setdefault(k, set()).update(str(item.ReferencedSOPInstanceUID)
                                               for item in contour.ContourImageSequence)
    return mask, referenced, ds


def slice_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total
