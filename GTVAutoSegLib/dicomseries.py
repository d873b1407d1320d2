"""A CT series from a folder of DICOM files, read deliberately instead of trusted to ITK.

ITK's series reader stacks whatever files share a series UID: a slice copied under another name
becomes an extra slice with a fraction of the spacing, a missing slice is bridged by an even spacing
that is no longer true, and a slice in another orientation is stacked in without a word. Here the
headers are read with pydicom and checked before any voxel is used:

1. CT images only (Modality CT and a CT image SOP class: a dose report or protocol saved as a
   Secondary Capture is not a slice), localizer/scout images left out, SEG/RTSTRUCT/... ignored;
2. one SeriesInstanceUID: the one with most slices when there are several (the others are named);
3. sorted by ImagePositionPatient projected on the slice normal, never by file name or InstanceNumber;
4. refused, in one line naming the slices: a duplicated position, uneven spacing (a missing slice),
   mixed orientations or sizes, gantry tilt (positions stepping off the slice normal).

Voxels of uncompressed files come from pydicom (which notices a cut-off file; GDCM zero-fills it);
compressed ones (JPEG 2000, JPEG-LS...) are decoded one file at a time by SimpleITK/GDCM. The
series' identifiers travel with the image (:class:`DicomSource`) for a later DICOM SEG/RTSTRUCT export.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import GTVError
from .image import DicomSource, Image, sitk
from .dicomchecks import (GDCM_SYNTAXES, RLE_LOSSLESS, check_codestream, check_fragments,
                          check_pixel_format, first_line, out_of_order, out_of_order_in_file, shown, unknown_vr,
                          whole_number)
from .inputcheck import check_geometry
from .native import quiet_stderr

logger = logging.getLogger(__name__)

# DICOM objects that sit beside a CT series but are not image volumes to segment.
NON_VOLUME_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
# Patient and study attributes kept with the image (a DICOM SEG or RTSTRUCT must repeat them).
PATIENT_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                          "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                          "SeriesDescription", "SeriesNumber", "Manufacturer")
# The SOP classes of CT images. A file of another class with Modality CT (a scanner's dose report or
# patient protocol saved as a Secondary Capture, say) is not a slice: it is left out and named.
CT_IMAGE_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
                        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage (multi-frame: refused below)
                        "1.2.840.10008.5.1.4.1.1.2.2"}  # Legacy Converted Enhanced CT Image Storage
# Every element this module reads from a dataset. pydicom decodes an element when it is first used;
# ``_read`` uses these at once, so that a damaged one (an unknown VR, say) is refused there, in one
# line naming the file, and not wherever the value is first needed.
_USED_KEYWORDS = ("Modality", "ImageType", "NumberOfFrames", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                  "StudyInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
                  "PixelSpacing", "Rows", "Columns", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                  "HighBit", "PixelRepresentation", "SamplesPerPixel", "SpacingBetweenSlices", "SliceThickness", "RescaleSlope",
                  "RescaleIntercept", *PATIENT_STUDY_KEYWORDS)
_USED_META_KEYWORDS = ("TransferSyntaxUID", "MediaStorageSOPInstanceUID", "MediaStorageSOPClassUID")
# Of those, what the header-only pass (sorting a folder's files into series) reads.
_HEADER_KEYWORDS = ("Modality", "SOPClassUID", "ImageType", "NumberOfFrames", "SeriesInstanceUID", "SOPInstanceUID")
# Positions agree to this (mm); spacings to this fraction of the slice spacing.
POSITION_TOL_MM = 0.01
SPACING_TOL = 0.02
# A slice step that leaves the normal by more than this (degrees) is a gantry tilt.
TILT_TOL_DEG = 0.1
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


@dataclass
class _Slice:
    path: Path
    ds: object  # pydicom Dataset, pixel data included
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    photometric: str = "MONOCHROME2"
    along: float = 0.0  # position projected on the slice normal
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.path.name


def is_dicom_file(path: Path) -> bool:
    """The ``DICM`` magic at byte 128 (the standard's file preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _looks_like_bare_dataset(path: Path) -> bool:
    """A file that starts like a little-endian DICOM data set written without the file header (some
    old exports): a group 0008 element, the first a CT data set has."""
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except OSError:
        return False
    return len(start) == 8 and start[:2] == b"\x08\x00" and int.from_bytes(start[2:4], "little") <= 0x0018


def modality_of(path: Path) -> str:
    """The Modality of one DICOM file ("" when it has none); GTVError when it is not readable."""
    ds = _read(path, pixels=False)
    return str(ds.get("Modality", "")).strip().upper()


def read_series(folder: Path, series_uid: str | None = None) -> Image:
    """The CT series in ``folder`` (the one with ``series_uid``, else the one with most slices).

    Raises:
        GTVError: no CT series, a damaged DICOM file, or a series that is not one even stack of
            parallel slices (duplicated, missing, tilted or re-oriented slices).
    """
    series, skipped = _ct_series(folder)
    if not series:
        found = f" (found {', '.join(sorted(skipped))})" if skipped else ""
        raise GTVError(f"no DICOM CT image series found in folder {folder}{found}")
    if series_uid is not None:
        if series_uid not in series:
            raise GTVError(f"{folder} holds no CT slices of series {shown(series_uid)}")
        uid = series_uid
    else:
        uid = max(series, key=lambda u: (len(series[u]), u))
        others = [f"{shown(u)} ({len(s)} slices)" for u, s in series.items() if u != uid]
        if others:
            warnings.warn(f"{folder.name} holds {len(series)} CT series; reading {shown(uid)} ({len(series[uid])} slices), "
                          f"skipping {', '.join(others)}", UserWarning, stacklevel=2)
    return _stack(series[uid], folder)


def series_headers(source: DicomSource) -> list:
    """The headers (pydicom datasets without pixel data) of the slices ``source`` was read from,
    in the image's array order; a DICOM SEG or RTSTRUCT copies patient and study from them.

    Raises:
        GTVError: the folder no longer holds every slice of the series.
    """
    folder = Path(source.folder)
    wanted = set(source.sop_instance_uids)
    found = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise GTVError(f"cannot list the DICOM folder {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(".") or not entry.is_file() or not is_dicom_file(path):
            continue
        ds = _read(path, pixels=False)
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in wanted and str(ds.get("SeriesInstanceUID", "")) == source.series_instance_uid:
            found.setdefault(uid, ds)
    missing = [u for u in source.sop_instance_uids if u not in found]
    if missing:
        raise GTVError(f"{folder} no longer holds {len(missing)} of the {len(wanted)} slices of series "
                       f"{shown(source.series_instance_uid)} (first missing SOP instance {shown(missing[0])})")
    return [found[u] for u in source.sop_instance_uids]


@lru_cache(maxsize=2)
def _used_tags(pixels: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tags a full read (``pixels``) or the header-only pass uses, of the data set and of the
    file meta header (pydicom is imported when first used)."""
    from pydicom.datadict import tag_for_keyword

    keywords = _USED_KEYWORDS if pixels else _HEADER_KEYWORDS
    return tuple(tag_for_keyword(k) for k in keywords), tuple(tag_for_keyword(k) for k in _USED_META_KEYWORDS)


def _read(path: Path, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    used, used_meta = _used_tags(pixels)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Pixel data is read when it is used (defer_size), so headers of many slices stay small.
            ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels, defer_size="64 KB")
            meta = getattr(ds, "file_meta", None)
            bad = (unknown_vr(meta) if meta is not None else None) or unknown_vr(ds)
            disorder = out_of_order(meta) if meta is not None else None
            if pixels:  # a slice's full read (the header-only pass before it sorts the folder's files)
                disorder = disorder or out_of_order_in_file(path, meta)
            for source, tags in ((ds, used), (meta, used_meta)) if bad is None else ():
                for tag in tags if source is not None else ():
                    if tag in source:
                        source[tag]  # decodes it (by tag: a keyword lookup cost ~25 us a time)
    except InvalidDicomError:
        raise GTVError(f"{path.name} is not a DICOM file") from None
    except Exception as exc:  # a damaged header: pydicom raises EOFError, ValueError, struct.error...
        raise GTVError(f"{path.name} is a damaged DICOM file ({type(exc).__name__})") from None
    if bad is not None:  # the file's structure went astray there, whatever the elements after it say
        raise GTVError(f"{path.name} is a damaged DICOM file (element {bad} has no valid value representation)")
    if disorder == "cut short":
        raise GTVError(f"{path.name} is a damaged DICOM file (cut short)")
    if disorder is not None:  # a damaged tag, a repeated element, or bytes after the pixel data read as elements
        what = "appears twice" if disorder[0] == disorder[1] else f"follows {disorder[0]}"
        raise GTVError(f"{path.name} is a damaged DICOM file (element {disorder[1]} {what}; "
                       "elements must come once each, in ascending tag order)")
    for w in caught:
        text = str(w.message)
        if "end of file" in text.lower():  # pydicom's only word for a file cut short
            raise GTVError(f"{path.name} is a damaged DICOM file (cut short)")
        logger.debug("pydicom on %s: %s", path.name, text)
    try:
        _sop_from_file_meta(ds)
    except Exception as exc:  # a meta header UID that is no single UID (found by fuzzing: a TypeError)
        raise GTVError(f"{path.name} is a damaged DICOM file (its file meta header: {type(exc).__name__})") from None
    return ds


def _sop_from_file_meta(ds) -> None:
    """Some de-identifiers blank SOPInstanceUID/SOPClassUID in the dataset but keep the file meta
    header, which the standard requires to hold the same values: take them from there."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not str(ds.get(keyword, "") or "") and str(meta.get(meta_keyword, "") or ""):
            setattr(ds, keyword, meta.get(meta_keyword))


def _ct_series(folder: Path) -> tuple[dict[str, list[_Slice]], set[str]]:
    """CT slices of ``folder`` by SeriesInstanceUID, and what else was found (for the message)."""
    series: dict[str, list[_Slice]] = {}
    skipped: set[str] = set()
    not_images: dict[str, list[str]] = {}  # series UID -> files of Modality CT that are not CT images
    bare: list[str] = []  # files that look like DICOM data sets without the file header
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise GTVError(f"cannot list folder {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        try:
            regular = entry.is_file()  # follows links; FIFOs, sockets and devices are not files
        except OSError:
            regular = False
        if not regular or entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if not is_dicom_file(path):
            if _looks_like_bare_dataset(path):
                bare.append(path.name)
            continue
        header = _read(path, pixels=False)
        modality = str(header.get("Modality", "")).strip().upper()
        if modality != "CT":
            skipped.add(f"{shown(modality, 16) or 'no modality'} objects")
            continue
        sop_class = str(header.get("SOPClassUID", "") or "").strip()
        if sop_class and sop_class not in CT_IMAGE_SOP_CLASSES:  # none at all: de-identified, judged by the rest
            skipped.add(f"CT objects of SOP class {_sop_class_name(sop_class)}")
            logger.info("%s: leaving out %s, a %s object", folder, path.name, _sop_class_name(sop_class))
            not_images.setdefault(str(header.get("SeriesInstanceUID", "")) or "no series UID", []).append(path.name)
            continue
        image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
        if "LOCALIZER" in image_type or "SCOUT" in image_type:
            skipped.add("localizer images")
            logger.info("%s: leaving out localizer image %s", folder, path.name)
            continue
        if whole_number(header, "NumberOfFrames", 1, path) > 1:
            raise GTVError(f"{path.name} is a multi-frame (enhanced) CT object; export the series as one file per slice")
        uid = str(header.get("SeriesInstanceUID", "")) or "no series UID"
        series.setdefault(uid, []).append(_slice(path))
    if bare:  # left out like any other file, but one of them could be a slice at either end of the stack
        warnings.warn(f"{folder.name}: left out {len(bare)} file(s) that look like DICOM data sets without the DICOM "
                      f"file header ('DICM' at byte 128): {', '.join(bare[:3])}{', ...' if len(bare) > 3 else ''}",
                      UserWarning, stacklevel=3)
    for uid, names in not_images.items():
        if uid in series:  # beside the slices of a series, under its UID: say so
            warnings.warn(f"{folder.name}: series {shown(uid)} also holds {len(names)} object(s) of Modality CT that are not "
                          f"CT images ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); left out",
                          UserWarning, stacklevel=3)
    return series, skipped


def _numbers(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        numbers = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        numbers = np.array([])
    if numbers.shape != (n,) or not np.isfinite(numbers).all():
        raise GTVError(f"{path.name} has no valid {keyword} ({n} numbers needed, got {value!r})")
    return numbers


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name  # the UID itself when pydicom does not know it
    return name if name != uid else shown(uid)


def _slice(path: Path) -> _Slice:
    ds = _read(path, pixels=True)
    if "PixelData" not in ds:
        raise GTVError(f"{path.name} is a CT object without pixel data")
    orientation = _numbers(ds, "ImageOrientationPatient", 6, path)
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    if (spacing <= 0).any():
        raise GTVError(f"{path.name} has pixel spacing {tuple(spacing)}; it must be positive")
    check_pixel_format(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):  # PALETTE COLOR would give palette indices as values
        raise GTVError(f"{path.name} has photometric interpretation {shown(photometric, 32) or 'none'}; "
                       "a CT slice is MONOCHROME1 or MONOCHROME2")
    return _Slice(path, ds, _numbers(ds, "ImagePositionPatient", 3, path), orientation,
                  (float(spacing[0]), float(spacing[1])), whole_number(ds, "Rows", 0, path),
                  whole_number(ds, "Columns", 0, path), photometric)


def _stack(slices: list[_Slice], folder: Path) -> Image:
    first = slices[0]
    for s in slices[1:]:
        if np.abs(s.orientation - first.orientation).max() > 1e-4:
            raise GTVError(f"slice {s.name} is in another orientation ({_fmt(s.orientation)}) than {first.name} "
                           f"({_fmt(first.orientation)}); one series must be one stack of parallel slices")
        if s.photometric != first.photometric:  # values are HU by the rescale either way, but a series is one kind
            raise GTVError(f"slice {s.name} is {s.photometric}, {first.name} {first.photometric}; "
                           "one series needs one photometric interpretation")
        if (s.rows, s.columns) != (first.rows, first.columns) or np.abs(np.subtract(s.pixel_spacing, first.pixel_spacing)).max() > 1e-4:
            raise GTVError(f"slice {s.name} is {s.columns}x{s.rows} at {s.pixel_spacing} mm, {first.name} "
                           f"{first.columns}x{first.rows} at {first.pixel_spacing} mm; one series needs one slice size")
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    direction = np.stack([row, col, normal], axis=1)
    check_geometry(first.name, (first.columns, first.rows, len(slices)), (1.0, 1.0, 1.0), first.position, direction)
    for s in slices:
        s.along = float(s.position @ normal)
    slices = sorted(slices, key=lambda s: s.along)
    slice_spacing = _check_positions(slices, normal)
    voxels = [_pixels(s) for s in slices]
    array = np.stack(voxels).astype(np.result_type(*voxels), copy=False)
    spacing = (first.pixel_spacing[1], first.pixel_spacing[0], slice_spacing)
    return Image(array, tuple(float(v) for v in spacing), tuple(float(v) for v in slices[0].position),
                 tuple(float(v) for v in direction.ravel()), source=_source(slices, folder))


def _check_positions(slices: list[_Slice], normal: np.ndarray) -> float:
    """The even slice spacing; GTVError naming the slices at a duplicated position, a gap or a tilt."""
    if len(slices) == 1:
        ds = slices[0].ds
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            try:
                value = float(ds.get(keyword) or 0)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and value > 0:
                return value
        return 1.0
    along = np.array([s.along for s in slices])
    steps = np.diff(along)
    for k, step in enumerate(steps):
        if step < POSITION_TOL_MM:
            a, b = slices[k], slices[k + 1]
            raise GTVError(f"duplicated slice position: {a.name} and {b.name} both lie at {a.along:.2f} mm along "
                           "the slice normal; remove the copy")
    spacing = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - spacing) > max(POSITION_TOL_MM, SPACING_TOL * spacing))
    if bad.size:
        k = int(bad[0])
        a, b = slices[k], slices[k + 1]
        hint = "; a slice is missing?" if steps[k] > spacing else ""
        raise GTVError(f"uneven slice spacing: {steps[k]:.3g} mm between {a.name} ({a.along:.2f} mm) and {b.name} "
                       f"({b.along:.2f} mm), {spacing:.3g} mm elsewhere{hint}")
    for k in range(len(slices) - 1):
        step = slices[k + 1].position - slices[k].position
        off = math.degrees(math.acos(min(1.0, abs(float(step @ normal)) / float(np.linalg.norm(step)))))
        if off > TILT_TOL_DEG:
            raise GTVError(f"gantry tilt: slices step {off:.2f} degrees off the slice normal (between "
                           f"{slices[k].name} at {_fmt(slices[k].position)} and {slices[k + 1].name} at "
                           f"{_fmt(slices[k + 1].position)}); resample the series to an untilted grid first")
    return spacing


def _pixels(s: _Slice) -> np.ndarray:
    """One slice's values after the modality rescale, ``(rows, columns)``."""
    syntax = str(getattr(s.ds.file_meta, "TransferSyntaxUID", "")) if hasattr(s.ds, "file_meta") else ""
    if syntax == RLE_LOSSLESS or syntax in GDCM_SYNTAXES:
        check_fragments(s.ds, s.path)
    if syntax in GDCM_SYNTAXES:
        check_codestream(s.ds, s.path, syntax, s.rows, s.columns)
        if s.photometric == "MONOCHROME1":  # found through the series fuzzer's oracle
            raise GTVError(f"{s.name} is a compressed MONOCHROME1 slice, which GDCM decodes inverted (not the "
                           "standard's HU); export the series uncompressed")
    if syntax in _UNCOMPRESSED or syntax == RLE_LOSSLESS or not syntax:  # none: pydicom says what it lacks
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                raw = s.ds.pixel_array
        except Exception as exc:  # pydicom names a short or odd pixel data element
            raise GTVError(f"{s.name}: pixel data is damaged or cut short ({first_line(exc)})") from None
        if caught:
            # pydicom decodes what it can and warns: more bytes than Rows x Columns need (a header
            # whose Columns went 512 -> 511 gives sheared slices of plausible values), an RLE
            # segment that decodes to more than its share. The header and the data disagree.
            raise GTVError(f"{s.name}: pixel data does not match its header ({first_line(caught[0].message)})")
        values = _rescale(raw, s)
    elif syntax not in GDCM_SYNTAXES:
        raise GTVError(f"{s.name}: pixel data in transfer syntax {syntax[:64]!r}, which this reader does not decode")
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(s.path))
        try:
            with quiet_stderr("GDCM"):
                values = sitk.GetArrayFromImage(reader.Execute())[0]  # GDCM applies the rescale
        except RuntimeError:
            raise GTVError(f"{s.name}: compressed pixel data could not be decoded (truncated or corrupt?)") from None
    if values.shape != (s.rows, s.columns):
        raise GTVError(f"{s.name}: pixel data is {values.shape}, its header says {s.rows}x{s.columns}")
    return values


def _rescale(raw: np.ndarray, s: _Slice) -> np.ndarray:
    try:
        slope = float(s.ds.get("RescaleSlope", 1) or 1)
        intercept = float(s.ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise GTVError(f"{s.name} has an invalid RescaleSlope or RescaleIntercept") from None
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise GTVError(f"{s.name} has a non-finite RescaleSlope or RescaleIntercept")
    if raw.ndim != 2:
        raise GTVError(f"{s.name}: pixel data has shape {raw.shape}; a CT slice has one value per pixel")
    if slope.is_integer() and intercept.is_integer():
        values = raw.astype(np.int64) * int(slope) + int(intercept)
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if values.min() >= info.min and values.max() <= info.max:
                return values.astype(dtype)
        return values.astype(np.float64)
    return (raw.astype(np.float64) * slope + intercept).astype(np.float32)


def _source(slices: list[_Slice], folder: Path) -> DicomSource:
    ds = slices[0].ds
    attributes = {k: str(ds.get(k, "")) for k in PATIENT_STUDY_KEYWORDS if ds.get(k) is not None}
    return DicomSource(
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uids=tuple(str(s.ds.get("SOPInstanceUID", "")) for s in slices),
        attributes=attributes,
        folder=str(folder),
    )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
