"""An image array kept together with its physical geometry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import MissingModule

try:
    import SimpleITK as sitk
except ImportError as exc:  # arrays work without it; see MissingModule
    sitk = MissingModule("SimpleITK", exc)


@dataclass(frozen=True)
class DicomSource:
    """Identifiers of the DICOM series an image was read from. A DICOM SEG or RTSTRUCT made from a
    result must reference them (study, series, frame of reference, each slice's SOP instance).

    Attributes:
        sop_instance_uids: one per slice, in the image's array order (axis 0).
        attributes: patient and study attributes by DICOM keyword (PatientID, StudyDate, ...).
        folder: where the series was read from.
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    attributes: dict[str, str] = field(default_factory=dict, hash=False)
    folder: str = ""


@dataclass
class Image:
    """A 3D image on a physical grid, in SimpleITK's conventions.

    Args:
        array: voxels indexed ``(z, y, x)`` (SimpleITK's ``GetArrayFromImage`` order).
        spacing: ``(sx, sy, sz)`` in mm.
        origin: ``(ox, oy, oz)`` in mm, LPS (DICOM/ITK patient coordinates).
        direction: 9 floats, row-major 3x3, columns are the x, y, z index axes in LPS.
        source: the DICOM series it came from (None for other files and for arrays).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    source: DicomSource | None = None

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Image":
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=tuple(float(v) for v in img.GetSpacing()),
            origin=tuple(float(v) for v in img.GetOrigin()),
            direction=tuple(float(v) for v in img.GetDirection()),
        )

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def with_array(self, array: np.ndarray) -> "Image":
        """Same grid, other voxels (for a mask or a probability map)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid {self.array.shape}")
        return Image(array, self.spacing, self.origin, self.direction, self.source)

    def same_grid(self, other: "Image", tol: float = 1e-4) -> bool:
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


def reindexed_onto(image: Image, grid: Image, tol: float = 0.01) -> np.ndarray | None:
    """``image``'s voxels in ``grid``'s array order when both hold exactly the same voxel centres,
    only indexed differently (axes permuted or flipped: a NIfTI written from a DICOM series often
    flips the y axis); None when they are not the same voxel centres.

    No interpolation: every voxel is moved, never resampled. ``tol`` is in voxels.
    """
    def index_to_lps(img: Image) -> np.ndarray:
        return np.asarray(img.direction, float).reshape(3, 3) @ np.diag(np.asarray(img.spacing, float))

    try:
        to_grid = np.linalg.solve(index_to_lps(grid), index_to_lps(image))  # image index -> grid index
        shift = np.linalg.solve(index_to_lps(grid), np.subtract(image.origin, grid.origin))
    except np.linalg.LinAlgError:
        return None
    signs = np.rint(to_grid)
    if np.abs(to_grid - signs).max() > tol or not (np.abs(signs).sum(axis=0) == 1).all() \
            or not (np.abs(signs).sum(axis=1) == 1).all():
        return None
    size = image.array.shape[::-1]  # (x, y, z)
    grid_size = grid.array.shape[::-1]
    axes = [int(np.flatnonzero(signs[j])[0]) for j in range(3)]  # grid axis j comes from image axis axes[j]
    flips = []
    for j, i in enumerate(axes):
        if size[i] != grid_size[j]:
            return None
        expected = 0.0 if signs[j, i] > 0 else size[i] - 1.0  # where image index 0 lands on grid axis j
        if abs(shift[j] - expected) > tol:
            return None
        flips.append(signs[j, i] < 0)
    xyz = np.transpose(image.array, (2, 1, 0))
    out = np.transpose(xyz, axes)
    for j, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=j)
    return np.ascontiguousarray(np.transpose(out, (2, 1, 0)))
