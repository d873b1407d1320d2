"""One entry for the DICOM writers: a format name -> the DICOM SEG (highdicom) or RTSTRUCT (pydicom)
writer. It sits above both writers and :mod:`.dicomrt`, which they share, so no writer imports its caller.
The writers are imported only when one is asked for, so NIfTI/NRRD runs never load highdicom."""

from __future__ import annotations

from pathlib import Path

from .dicomrt import ResultDescription
from .image import Image


def write_dicom(fmt: str, mask: Image, path: Path, description: ResultDescription) -> None:
    """Write ``mask`` (on its series' grid, see :func:`.dicomrt.on_series_grid`) as ``fmt`` (``seg`` or ``rtstruct``)."""
    if fmt == "seg":
        from .dicomseg import write_seg

        write_seg(mask, path, description)
    elif fmt == "rtstruct":
        from .rtstruct import write_rtstruct

        write_rtstruct(mask, path, description)
    else:
        raise ValueError(f"{fmt} is not a DICOM format")
