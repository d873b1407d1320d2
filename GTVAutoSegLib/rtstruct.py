"""A mask as a DICOM RT Structure Set (pydicom): one ROI, what treatment planning systems import.

One ROI named after the model's target, with CLOSED_PLANAR contours on the slices that hold it and
none elsewhere. Each contour is the mask's boundary on one slice, traced at half height between
voxel centres (contourpy's marching squares at level 0.5): every voxel centre of the mask lies
inside, every other outside, so filling the polygons by voxel centre gives the mask back. A hole is
a contour of its own inside its outer contour (filled by the even-odd rule, as planning systems
read nested contours). Each contour references its slice's SOP instance; the structure set
references the series' frame of reference, study and series, and is marked UNAPPROVED.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from .dicomrt import SERIES_NUMBERS, ResultDescription, check_source
from .dicomseries import series_headers
from .image import Image

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# RT Referenced Study Sequence refers to the study through this SOP class (PS3.3 C.8.8.5).
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
# Patient and study attributes an RTSTRUCT repeats from its CT (type 2: present, possibly empty).
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")


def slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """The closed boundary polygons of one slice, in voxel index coordinates.

    Args:
        mask2d: ``(rows, columns)`` 0/1.

    Returns:
        ``(n, 2)`` arrays of ``(column, row)`` index positions, not repeating the first point;
        straight runs are kept only at their ends. Outer boundaries and holes alike.
    """
    import contourpy

    # A zero border closes the contours of a target that touches the image's edge.
    padded = np.pad((np.asarray(mask2d) != 0).astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    polygons = []
    for line in lines:
        points = np.asarray(line, dtype=np.float64) - 1.0  # undo the padding
        if len(points) > 1 and np.array_equal(points[0], points[-1]):
            points = points[:-1]
        points = _corners(points)
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def _corners(points: np.ndarray) -> np.ndarray:
    """Drop points in the middle of a straight run (exact: the points lie on a half-voxel lattice)."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    straight = (cross == 0) & ((before * after).sum(axis=1) > 0)
    return points[~straight]


def build_rtstruct(mask: Image, description: ResultDescription):
    """The RTSTRUCT dataset of ``mask`` (a ``pydicom.FileDataset``).

    Args:
        mask: ``(slices, rows, columns)`` 0/1 on the grid of ``mask.source``'s series, in its array order.
        description: target, model and region.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    source = check_source(mask.source, "the mask")
    headers = series_headers(source)
    first = headers[0]
    now = datetime.datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: patient names as the CT spells them
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.StudyInstanceUID = source.study_instance_uid
    # The Frame of Reference module (in the IOD since DICOM 2020): the CT's patient coordinate system.
    ds.FrameOfReferenceUID = source.frame_of_reference_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBERS["rtstruct"]
    ds.SeriesDescription = f"{description.target} ({description.algorithm})"[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = "GTVAutoSeg"
    ds.ManufacturerModelName = description.model_name[:64]
    ds.SoftwareVersions = description.software
    ds.InstanceNumber = 1
    ds.StructureSetLabel = description.target[:16]
    ds.StructureSetName = description.target[:64]
    ds.StructureSetDescription = f"automatic {description.target} by {description.algorithm}; review before use"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime

    def image_ref(uid: str) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = source.sop_class_uid
        item.ReferencedSOPInstanceUID = uid
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = source.series_instance_uid
    series_ref.ContourImageSequence = Sequence([image_ref(u) for u in source.sop_instance_uids])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = source.study_instance_uid
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = source.frame_of_reference_uid
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])

    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = source.frame_of_reference_uid
    roi.ROIName = description.target[:64]
    roi.ROIDescription = f"automatic, {description.algorithm}"[:64]
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = description.algorithm[:64]
    ds.StructureSetROISequence = Sequence([roi])

    contour_items = []
    for k, polygons in enumerate(slice_contours(s) for s in np.asarray(mask.array)):
        for polygon in polygons:
            item = Dataset()
            item.ContourImageSequence = Sequence([image_ref(source.sop_instance_uids[k])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(polygon)
            item.ContourNumber = len(contour_items) + 1
            item.ContourData = [_ds(v) for v in _patient_points(mask, polygon, k).ravel()]
            contour_items.append(item)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [int(round(255 * c)) for c in description.color]
    if contour_items:  # an empty ROI has no contour sequence (type 3), rather than an empty one
        roi_contour.ContourSequence = Sequence(contour_items)
    ds.ROIContourSequence = Sequence([roi_contour])

    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = description.rt_roi_interpreted_type
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence = Sequence([observation])

    ds.ApprovalStatus = "UNAPPROVED"  # an automatic contour is a proposal until a clinician approves it
    return ds


def write_rtstruct(mask: Image, path: str | Path, description: ResultDescription) -> None:
    """Write ``mask`` as an RTSTRUCT file at ``path`` (callers pass a temporary name; see outputs.py)."""
    build_rtstruct(mask, description).save_as(str(path), enforce_file_format=True)


def _patient_points(image: Image, polygon: np.ndarray, k: int) -> np.ndarray:
    """``(n, 2)`` (column, row) positions on slice ``k`` -> ``(n, 3)`` patient coordinates (LPS, mm)."""
    index = np.column_stack([polygon[:, 0], polygon[:, 1], np.full(len(polygon), float(k))])
    to_lps = np.asarray(image.direction, float).reshape(3, 3) @ np.diag(np.asarray(image.spacing, float))
    return index @ to_lps.T + np.asarray(image.origin, float)


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters (0.1 um: far below any CT voxel)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
