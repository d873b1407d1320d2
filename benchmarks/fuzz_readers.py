"""Coverage-guided fuzzing (atheris) of the image and bundle readers.

    .venv/bin/python benchmarks/fuzz_readers.py -atheris_runs=20000        # one command
    .venv/bin/python benchmarks/fuzz_readers.py -max_total_time=600 corpus/  # longer, keep a corpus

Each input is written as a file of one kind (the first byte picks NIfTI, gzip NIfTI, NRRD, MHA,
DICOM or a model bundle, and seeds from real-looking files are mutated) and read by
``GTVAutoSegLib.io.read_image`` or ``bundle.load_bundle``. The only allowed outcomes are a result or
a one-line :class:`GTVError`; any other exception, a multi-line message, or a changed input file
is a crash, which atheris reports with the input that caused it. ``tests/test_fuzz_readers.py``
runs a few seconds of it in CI, and crashes found are kept there as regression tests.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

KINDS = (".nii", ".nii.gz", ".nrrd", ".mha", ".dcm", ".pt")
_WORK = Path(tempfile.mkdtemp(prefix="gtv-fuzz-"))


def check_one(data: bytes) -> None:
    """Read ``data`` as the kind its first byte picks; raise AssertionError on a bad outcome."""
    from GTVAutoSegLib.bundle import load_bundle
    from GTVAutoSegLib.errors import GTVError
    from GTVAutoSegLib.io import read_image

    if not data:
        return
    suffix = KINDS[data[0] % len(KINDS)]
    folder = _WORK / "case"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    path = folder / f"input{suffix}"
    path.write_bytes(data[1:])
    before = hashlib.sha256(data[1:]).digest()
    try:
        if suffix == ".pt":
            load_bundle(path)
        else:
            image = read_image(path)
            if suffix in (".nii", ".nii.gz", ".nrrd"):
                _same_as_itk(image, path)
    except GTVError as exc:
        message = str(exc)
        assert message and "\n" not in message, f"GTVError not in one line: {message!r}"
    assert hashlib.sha256(path.read_bytes()).digest() == before, "the input file was modified"


def _same_as_itk(image, path: Path) -> None:
    """An image read without ITK's pass over the voxels (``io._read_stored``) must be ITK's own:
    voxels, type and geometry (when ITK reads the file at all)."""
    import numpy as np

    from GTVAutoSegLib.image import sitk
    from GTVAutoSegLib.native import quiet_stderr

    try:
        with quiet_stderr("ITK"):
            theirs = sitk.ReadImage(str(path))
    except RuntimeError:
        return
    if theirs.GetDimension() != 3 or theirs.GetNumberOfComponentsPerPixel() != 1:
        return
    array = sitk.GetArrayViewFromImage(theirs)
    assert image.array.dtype == array.dtype, f"type {image.array.dtype} read, ITK reads {array.dtype}"
    assert np.array_equal(image.array, array, equal_nan=True), "voxels differ from ITK's"
    assert (image.spacing, image.origin, image.direction) == \
        (theirs.GetSpacing(), theirs.GetOrigin(), theirs.GetDirection()), "geometry differs from ITK's"


def seeds() -> list[bytes]:
    """Small valid files of every kind, for the fuzzer to start from."""
    import numpy as np
    import SimpleITK as sitk

    out = []
    array = (np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) * 50) - 600
    for k, suffix in enumerate(KINDS[:4]):
        path = _WORK / f"seed{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=suffix == ".nrrd")
        out.append(bytes([k]) + path.read_bytes())
    path = _WORK / "seed-raw.nrrd"  # a raw NRRD too: its voxels are read straight into the array
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=False)
    out.append(bytes([KINDS.index(".nrrd")]) + path.read_bytes())
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fuzzing import run

    run(check_one, seeds, ["GTVAutoSegLib.bundle", "GTVAutoSegLib.dicomseries", "GTVAutoSegLib.inputcheck",
                           "GTVAutoSegLib.io"])


if __name__ == "__main__":
    main()
