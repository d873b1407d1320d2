"""A segmentation the logic filled, exported as DICOM SEG and/or RTSTRUCT beside its CT series. No Qt.

The segment's voxels are taken on the CT volume node's grid (where the segmentation's reference
geometry already is), moved onto the DICOM series' own grid without resampling, and written by
GTVAutoSegLib's writers, which reference the series' study, series, frame of reference and slices.

Which series: the folder given, else the one the volume was loaded from (``loadVolume`` records
it), else (in 3D Slicer) the series of the volume's ``DICOM.instanceUIDs`` in the DICOM database.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk

from .errors import GTVAutoSegError
from .nodes import DICOM_FOLDER_ATTRIBUTE, DICOM_SERIES_ATTRIBUTE, segmentArray
from .results import ANATOMIC_REGION_ATTRIBUTE, TARGET_ATTRIBUTE


def volumeGridImage(volumeNode, array: np.ndarray):
    """``array`` (``(k, j, i)``) as a GTVAutoSegLib ``Image`` on the volume node's grid, in LPS."""
    from GTVAutoSegLib.image import Image

    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(3)])
    lps = np.diag([-1.0, -1.0, 1.0]) @ matrix  # RAS -> LPS
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    direction = lps[:, :3] / spacing
    return Image(array, tuple(float(s) for s in spacing), tuple(float(v) for v in lps[:, 3]),
                 tuple(float(v) for v in direction.ravel()))


def sourceSeriesFolder(volumeNode, dicomFolder: str | Path | None = None) -> tuple[Path, str | None]:
    """The DICOM folder (and series UID, when known) the volume came from."""
    if dicomFolder:
        return Path(dicomFolder), None
    recorded = volumeNode.GetAttribute(DICOM_FOLDER_ATTRIBUTE)
    if recorded:
        return Path(recorded), volumeNode.GetAttribute(DICOM_SERIES_ATTRIBUTE) or None
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    try:
        import slicer

        database = getattr(slicer, "dicomDatabase", None)
    except ImportError:
        database = None
    if uids and database is not None:
        path = database.fileForInstance(uids[0])
        if path:
            import pydicom

            series = str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", ""))
            return Path(path).parent, series or None
    raise GTVAutoSegError(f"'{volumeNode.GetName()}' was not loaded from a DICOM series; choose the DICOM "
                          "folder of the series it was made from")


def writeDicom(target, paths: dict[str, Path], dicomFolder: str | Path | None = None) -> None:
    """Write ``target``'s segment as each format of ``paths`` (``{"seg": path, "rtstruct": path}``).

    Args:
        target: ``results.ResultNodes`` of a segmentation the logic filled.
        paths: where to write; callers pass temporary names and rename them together.
        dicomFolder: the CT's DICOM series folder; None finds it (see :func:`sourceSeriesFolder`).

    Raises:
        GTVAutoSegError: no DICOM series, a series that cannot be referenced (de-identified UIDs) or
            that is not on the volume's grid, or a missing package.
    """
    from GTVAutoSegLib.dicomrt import ResultDescription, check_source, check_writers, on_series_grid
    from GTVAutoSegLib.dicomwriters import write_dicom
    from GTVAutoSegLib.dicomseries import read_series
    from GTVAutoSegLib.errors import GTVError

    node, volume = target.segmentationNode, target.volume
    modelName, _, modelVersion = target.model.partition("@")
    description = ResultDescription(node.GetAttribute(TARGET_ATTRIBUTE) or "GTV", modelName, modelVersion,
                                    node.GetAttribute(ANATOMIC_REGION_ATTRIBUTE) or None)
    folder, seriesUid = sourceSeriesFolder(volume, dicomFolder)
    try:
        check_writers(paths)
        if not folder.is_dir():
            raise GTVError(f"DICOM folder {folder} does not exist")
        series = read_series(folder, seriesUid)
        check_source(series.source, str(folder))
        mask = volumeGridImage(volume, segmentArray(node, target.segmentId, volume))
        onSeries = on_series_grid(mask, series, f"segmentation '{node.GetName()}'")
        for fmt, path in paths.items():
            write_dicom(fmt, onSeries, Path(path), description)
    except GTVError as exc:
        raise GTVAutoSegError(str(exc)) from None
