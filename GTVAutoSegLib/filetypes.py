"""Which files are images: the one list of file suffixes that the readers, the CLI, the Slicer
module, the batch script and training use (no imports: cheap for every caller)."""

from __future__ import annotations

SEGMENTATION_SUFFIX = ".seg.nrrd"  # a 3D Slicer segmentation (also a NRRD image)
# What read_image reads from a file (a DICOM series is read from its folder). Compound first, so
# that ``.nii.gz`` is matched before ``.nii``.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Header and voxels in two files: such an image cannot be written by one atomic rename.
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")
ONE_FILE_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in DETACHED_HEADER_SUFFIXES)
SUPPORTED_INPUTS = "NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), MHA/MHD or a DICOM series folder"


def image_suffix(name: str) -> str | None:
    """The suffix of an image file name (``.seg.nrrd`` kept whole), lower case; None when not an image."""
    lower = name.lower()
    return next((s for s in (SEGMENTATION_SUFFIX, *IMAGE_SUFFIXES) if lower.endswith(s)), None)


def strip_image_suffix(name: str) -> str:
    """``pt_1.seg.nrrd`` -> ``pt_1``, ``ct.NII.GZ`` -> ``ct``; a name without an image suffix unchanged."""
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name
