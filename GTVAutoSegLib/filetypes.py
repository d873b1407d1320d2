"""Which files are images: the one list of file suffixes that the readers, the CLI, the Slicer
module, the batch script and training use, and which inputs are a cohort's cases (no imports
beyond pathlib: cheap for every caller)."""

from __future__ import annotations

from pathlib import Path

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


def find_cases(inputs) -> list[Path]:
    """The CTs of a cohort (``gtvautoseg batch``, the Slicer batch script): files as given; a folder
    gives the CT files directly in it, or, when it holds none, each subfolder (a DICOM series), or
    else itself (a folder of DICOM files)."""
    cases: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            cases.append(path)  # a missing file is reported as that case's failure
            continue
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        files = [p for p in entries if p.is_file() and image_suffix(p.name) in IMAGE_SUFFIXES]  # not a .seg.nrrd
        folders = [p for p in entries if p.is_dir()]
        cases += files or folders or [path]
    return cases
