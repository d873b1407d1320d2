"""A mask as a DICOM SEG (highdicom): one binary segment on the CT series it references.

Every slice of the series is one frame, the empty ones too, so a reader (highdicom, dcmqi, 3D
Slicer) rebuilds the series' whole grid, not just the slices that hold the target. The segment
carries the model's target as label and coded type (the same codes as the ``.seg.nrrd``), the
model's name and version as algorithm identification, and the series' patient and study.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from .dicomrt import SERIES_NUMBERS, ResultDescription, check_source
from .dicomseries import series_headers
from .image import Image
from .segfile import Code

logger = logging.getLogger(__name__)


def _concept(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def build_seg(mask: Image, description: ResultDescription):
    """The ``highdicom.seg.Segmentation`` of ``mask``.

    Args:
        mask: ``(slices, rows, columns)`` 0/1 on the grid of ``mask.source``'s series, in its array order.
        description: target, model and region.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = check_source(mask.source, "the mask")
    headers = series_headers(source)
    for ds in headers:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty means the default repertoire, which highdicom only takes as absent
    terminology = description.terminology
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=description.target,
        segmented_property_category=_concept(terminology.category),
        segmented_property_type=_concept(terminology.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=description.model_name, version=description.model_version,
            family=codes.cid7162.ArtificialIntelligence, source="GTVAutoSeg"),
        tracking_uid=hd.UID(),
        tracking_id=description.target,
        anatomic_regions=[_concept(terminology.anatomic_region)] if terminology.anatomic_region else None,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = _segmentation(hd, headers, mask, segment, description)
    for w in caught:  # e.g. a one-part patient name copied from the CT: the CT's business, not the user's
        logger.debug("highdicom: %s", w.message)
    return seg


def _segmentation(hd, headers, mask: Image, segment, description: ResultDescription):
    return hd.seg.Segmentation(
        source_images=headers,
        pixel_array=(np.asarray(mask.array) != 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="GTVAutoSeg",
        manufacturer_model_name=description.model_name[:64],
        software_versions=description.software,
        device_serial_number=description.model_version[:64] or "0",
        content_label=_content_label(description.target),
        content_description=f"{description.algorithm}: automatic {description.target}, review before use"[:64],
        series_description=f"{description.target} ({description.algorithm})"[:64],
        omit_empty_frames=False,  # every slice: readers rebuild the series' full grid
    )


def write_seg(mask: Image, path: str | Path, description: ResultDescription) -> None:
    """Write ``mask`` as a DICOM SEG file at ``path`` (callers pass a temporary name; see outputs.py)."""
    build_seg(mask, description).save_as(str(path))


def _content_label(target: str) -> str:
    """A Code String: upper case, digits, space and underscore, at most 16 characters."""
    text = "".join(c if c.isalnum() and c.isascii() else "_" for c in target.upper())[:16]
    return text or "TARGET"
