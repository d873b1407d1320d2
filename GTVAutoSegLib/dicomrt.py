"""A result as DICOM: what the SEG and RTSTRUCT writers share (the formats themselves: outputs.OUTPUT_FORMATS).

A DICOM SEG (``dicomseg.py``, read by PACS viewers, OHIF and 3D Slicer's DICOM module) and an
RTSTRUCT (``rtstruct.py``, imported by treatment planning systems) both reference the CT series the
mask was made on: its study, series, frame of reference and every slice's SOP instance. So both need
a mask on exactly that series' grid, and a series whose identifiers are all there.

highdicom is imported by the writers only when one is asked for, so NIfTI/NRRD runs never load it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GTVError
from .image import DicomSource, Image, reindexed_onto
from .segfile import TARGET_TYPES, Terminology, target_color, target_type

# Series numbers of the new series (a planning system lists them beside the CT's).
SERIES_NUMBERS = {"seg": 9901, "rtstruct": 9902}
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@dataclass(frozen=True)
class ResultDescription:
    """What a DICOM result says about itself.

    Args:
        target: the model's target, the segment label and ROI name (e.g. ``"PTV70"``).
        model_name, model_version: the algorithm identification.
        anatomic_region: a key of ``segfile.ANATOMIC_REGIONS`` or None.
    """

    target: str
    model_name: str
    model_version: str
    anatomic_region: str | None = None

    @classmethod
    def of_bundle(cls, bundle) -> "ResultDescription":
        return cls(bundle.target, bundle.name, str(bundle.version), bundle.anatomic_region or None)

    @property
    def terminology(self) -> Terminology:
        return Terminology.for_target(self.target, self.anatomic_region)

    @property
    def color(self) -> tuple[float, float, float]:
        return target_color(self.target)

    @property
    def rt_roi_interpreted_type(self) -> str:
        return TARGET_TYPES[target_type(self.target)].rt_roi_interpreted_type

    @property
    def software(self) -> str:
        from . import __version__

        return f"GTVAutoSeg {__version__}"

    @property
    def algorithm(self) -> str:
        return f"{self.model_name} {self.model_version}"


def is_dicom_input(path: Path) -> bool:
    """A DICOM series folder or one DICOM file of a series (what carries the identifiers to reference)."""
    from .dicomseries import is_dicom_file

    path = Path(path)
    return path.is_dir() or (path.is_file() and is_dicom_file(path))


def check_source(source: DicomSource | None, what: str) -> DicomSource:
    """``source`` when a SEG/RTSTRUCT can reference it; else a one-line GTVError saying what is missing.

    Args:
        what: names the input in the message.
    """
    if source is None:
        raise GTVError(f"{what} is not a DICOM series, so a DICOM SEG or RTSTRUCT has no series to reference; "
                       "segment the DICOM series it was converted from")
    fields = {"StudyInstanceUID": source.study_instance_uid, "SeriesInstanceUID": source.series_instance_uid,
              "FrameOfReferenceUID": source.frame_of_reference_uid, "SOPClassUID": source.sop_class_uid}
    for keyword, uid in fields.items():
        if not uid:
            raise GTVError(f"the DICOM series of {what} has no {keyword} (removed by de-identification?); a DICOM SEG "
                           "or RTSTRUCT must reference it")
        if len(uid) > 64 or not _UID.match(uid):
            raise GTVError(f"the DICOM series of {what} has an invalid {keyword} {uid[:70]!r}")
    bad = [u for u in source.sop_instance_uids if not u or len(u) > 64 or not _UID.match(u)]
    if bad:
        raise GTVError(f"{len(bad)} slice(s) of the DICOM series of {what} have no valid SOPInstanceUID "
                       f"(first: {bad[0]!r})")
    if len(set(source.sop_instance_uids)) != len(source.sop_instance_uids):
        raise GTVError(f"two slices of the DICOM series of {what} share one SOPInstanceUID")
    return source


def on_series_grid(mask: Image, series: Image, what: str) -> Image:
    """``mask`` as a uint8 mask on the DICOM series' own grid and array order, carrying its source.

    The mask must hold exactly the series' voxel centres (the same grid, or the same voxels with
    axes permuted or flipped, as a NIfTI converted from the series has); nothing is resampled.

    Raises:
        GTVError: the mask lies on another grid.
    """
    if series.source is None:
        raise GTVError(f"{what}: the reference image carries no DICOM series")
    array = reindexed_onto(mask, series)
    if array is None:
        raise GTVError(f"{what} is not on the grid of the DICOM series in {series.source.folder} (size "
                       f"{'x'.join(map(str, mask.array.shape[::-1]))} vs {'x'.join(map(str, series.array.shape[::-1]))}, "
                       f"origin {_fmt(mask.origin)} vs {_fmt(series.origin)}, spacing {_fmt(mask.spacing)} vs "
                       f"{_fmt(series.spacing)}); a DICOM SEG/RTSTRUCT must lie on the series it references")
    return Image((array != 0).astype(np.uint8), series.spacing, series.origin, series.direction, series.source)


def read_reference_series(folder: Path) -> Image:
    """The DICOM series given with ``--dicom-reference``, checked to be referable."""
    from .dicomseries import read_series
    from .inputcheck import check_input_path

    folder = Path(folder)
    check_input_path(folder, "--dicom-reference")
    if not folder.is_dir():
        raise GTVError(f"--dicom-reference {folder} is not a folder; give the folder of the CT series")
    series = read_series(folder)
    check_source(series.source, f"--dicom-reference {folder}")
    return series


# The package each DICOM writer needs beyond the library's own (pydicom and contourpy are everywhere we run).
WRITER_PACKAGES = {"seg": "highdicom", "rtstruct": "pydicom"}


def check_writers(formats) -> None:
    """GTVError in one line when a package a chosen DICOM format needs is not installed (checked
    before any model runs, without importing it)."""
    import importlib.util

    for fmt in formats:
        package = WRITER_PACKAGES.get(fmt)
        if package is not None and importlib.util.find_spec(package) is None:
            raise GTVError(f"--format {fmt} needs the Python package {package}, which is not installed "
                           f"(pip install {package})")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
