"""Coverage-guided fuzzing (atheris) of the DICOM series reader: a folder of files in, one CT image
or a one-line refusal out.

    .venv/bin/python benchmarks/fuzz_dicom_series.py -atheris_runs=20000          # one command
    .venv/bin/python benchmarks/fuzz_dicom_series.py -max_total_time=600 corpus/  # longer, keep a corpus

Each input is cut at ``SEPARATOR`` into up to ``MAX_FILES`` files, written as one folder and read
by ``GTVAutoSegLib.io.read_image`` (``dicomseries.read_series``). The seeds are small valid CT
series (signed, unsigned with a rescale, a fractional slope, RLE, JPEG 2000), so the fuzzer starts
from files whose every element the reader uses, and mutates headers, positions and pixel data.
A JPEG 2000 seed (8 x 8 slices, encoded by GDCM) reaches the GDCM decoder the reader uses for JPEG.

Allowed outcomes: a one-line :class:`GTVError`, or an image that a second reader agrees with. GDCM
(SimpleITK's ``ImageFileReader``) reads each file on its own; every slice of the image must be a
file of the folder with that slice's SOP instance UID whose position GDCM reads where the image puts
the slice (origin + k x slice spacing along the normal, to the reader's spacing tolerance) and
whose voxels GDCM decodes to the image's (after the rescale), with the same in-plane spacing. A
slice read from a file GDCM takes for DICOM but fails to read is a crash (pydicom decoded what
GDCM would not: an RLE segment too long, say); a file GDCM does not take for DICOM at all is left
out of the comparison (GDCM is stricter about a file's structure). Any other exception, a
multi-line message, a changed input file or a file added to the folder is a crash too.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import warnings
from pathlib import Path

SEPARATOR = b"\n--GTVFUZZ-NEXT-FILE--\n"
MAX_FILES = 8
_WORK = Path(tempfile.mkdtemp(prefix="gtv-fuzz-dicom-"))


def check_one(data: bytes) -> None:
    """Write ``data`` as a folder of files and read it; raise AssertionError on a bad outcome."""
    from GTVAutoSegLib.errors import GTVError
    from GTVAutoSegLib.io import read_image

    folder = _WORK / "series"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    parts = data.split(SEPARATOR)[:MAX_FILES]
    for k, part in enumerate(parts):
        (folder / f"{k:02d}.dcm").write_bytes(part)
    before = {p.name: hashlib.sha256(p.read_bytes()).digest() for p in folder.iterdir()}
    try:
        image = read_image(folder)
        _same_as_gdcm(image, folder)
    except GTVError as exc:
        message = str(exc)
        assert message and "\n" not in message, f"GTVError not in one line: {message!r}"
    after = {p.name: hashlib.sha256(p.read_bytes()).digest() for p in folder.iterdir()}
    assert after == before, "the folder's files were changed, or files were added"


def _gdcm_slices(folder: Path, uids, series_uid: str) -> list[tuple[str, tuple | str | None]]:
    """``(SOP instance UID, (origin, spacing, values), None or "unknown")`` of every file of the
    series ``series_uid`` with one of ``uids`` (by pydicom): what GDCM reads from it when that is one
    2D slice of one value per pixel, None when GDCM takes it for DICOM but fails to read it,
    "unknown" when GDCM does not take it for DICOM at all (it is stricter about a file's structure
    than pydicom: trailing bytes, say) or it is not given to GDCM (below).

    An RLE file is never given to GDCM (nor a MONOCHROME1 one, whose stored values GDCM inverts, nor
    one whose pixel data's length field claims more than the file holds, see _length_overstated, nor
    one whose SOP class UID GDCM reads as another class, see _clean_ct_class): for a frame followed by a stray sequence delimiter (which
    pydicom decodes to the seed's values) GDCM allocated 4.3 GB, even only to read the header. Its
    position, spacing and voxels are then pydicom's, rescaled here: the comparison still checks
    the reader's order, stacking and rescale. Files the image was not read from are not given
    to GDCM either: a damaged header can make it allocate gigabytes (4.3 GB for one of 1.7 kB), and
    so can an element after the pixel data (2.9 GB)."""
    import numpy as np
    import pydicom

    from GTVAutoSegLib.image import sitk
    from GTVAutoSegLib.native import quiet_stderr

    found = []
    for path in sorted(folder.iterdir()):
        try:
            ds = pydicom.dcmread(str(path), defer_size="64 KB")  # every element, the large ones unread
            meta = getattr(ds, "file_meta", None)
            # the file meta header's UID when the dataset's is blank, as the reader takes it
            uid = str(ds.get("SOPInstanceUID", "") or "") or str(meta.get("MediaStorageSOPInstanceUID", "") if meta else "")
            rle = str(meta.get("TransferSyntaxUID", "") if meta else "") == "1.2.840.10008.1.2.5"
            # GDCM turns MONOCHROME1 into MONOCHROME2 by inverting the stored values (a display
            # convention); the reader keeps the standard's HU (the rescale of the stored values)
            inverted = str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
            rle = rle or _length_overstated(path, ds) or not _clean_ct_class(ds)
        except Exception:  # not what the image was read from
            continue
        # no pixel data: not a slice the reader read (its meta header's UID can still match); GDCM
        # allocated 4.3 GB for one such file before it gave up
        if uid not in uids or str(ds.get("SeriesInstanceUID", "") or "") != series_uid:
            continue
        if "PixelData" not in ds or any(tag > 0x7FE00010 for tag in ds.keys()):
            found.append((uid, "unknown"))  # a file the slice may have come from, not given to GDCM
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            with quiet_stderr("GDCM"):
                if rle or inverted:
                    position = [float(v) for v in ds.ImagePositionPatient]
                    row_col = [float(v) for v in ds.PixelSpacing]  # (row, column) spacing: (y, x)
                    size, origin, spacing = (int(ds.Columns), int(ds.Rows), 1), position, (row_col[1], row_col[0])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        raw = ds.pixel_array.astype(np.float64)
                    values = raw * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
                    components = int(ds.get("SamplesPerPixel", 1) or 1)
                else:
                    image = reader.Execute()
                    size, origin, spacing = image.GetSize(), image.GetOrigin(), image.GetSpacing()
                    values = sitk.GetArrayViewFromImage(image)[0].astype(np.float64)
                    components = image.GetNumberOfComponentsPerPixel()
        except RuntimeError as exc:
            found.append((uid, "unknown" if "Unable to determine ImageIO reader" in str(exc) else None))
            continue
        except Exception:  # pydicom could not read an RLE file's position or frame
            found.append((uid, None))
            continue
        if len(size) == 3 and size[2] == 1 and components == 1:
            found.append((uid, (origin, spacing, values)))
    return found


def _clean_ct_class(ds) -> bool:
    """Whether the SOP class UID's stored bytes are a CT image class as they are (padding aside).
    pydicom strips a control character such as 0x1E from a UID; GDCM keeps it, takes the file for
    another class and then gives it a pixel spacing of 1 x 1."""
    from GTVAutoSegLib.dicomseries import CT_IMAGE_SOP_CLASSES

    for element in ds.elements():
        if element.tag == 0x00080016:
            value = element.value if isinstance(element.value, bytes) else str(element.value).encode()
            return value.rstrip(b"\x00 ").decode("ascii", "replace") in CT_IMAGE_SOP_CLASSES
    return False


def _length_overstated(path: Path, ds) -> bool:
    """Whether the pixel data element's defined length claims more bytes than the file holds after
    it. pydicom reads what is there (for a length field damaged but the voxels whole: the right
    slice); GDCM allocates what is claimed (3.8 GB for a 1 kB file), so it is not given the file."""
    element = ds.get("PixelData") if "PixelData" in ds else None
    tell = getattr(ds["PixelData"], "file_tell", None) if element is not None else None
    if tell is None or getattr(ds["PixelData"], "is_undefined_length", False):
        return False
    with open(path, "rb") as f:
        f.seek(tell - 4)
        field = f.read(4)
    big = str(ds.file_meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.2"
    return tell + int.from_bytes(field, "big" if big else "little") > path.stat().st_size


def _same_as_gdcm(image, folder: Path) -> None:
    import numpy as np

    from GTVAutoSegLib import dicomseries

    source = image.source
    z = image.array.shape[0]
    assert source is not None and len(source.sop_instance_uids) == z, "slices and SOP instance UIDs differ in number"
    gdcm = _gdcm_slices(folder, set(source.sop_instance_uids), source.series_instance_uid)
    direction = np.array(image.direction, float).reshape(3, 3)
    normal = direction[:, 2]
    step = float(image.spacing[2])
    tol = max(dicomseries.POSITION_TOL_MM, dicomseries.SPACING_TOL * step)
    for k, uid in enumerate(source.sop_instance_uids):
        files = [read for u, read in gdcm if u == uid]
        if len(files) != 1 or files[0] == "unknown":
            continue  # several files claim the slice's UIDs, or GDCM does not take its file for DICOM
        assert any(read is not None for read in files), f"slice {k} ({uid}) was read from a file GDCM fails to read"
        where = np.array(image.origin, float) + k * step * normal
        ours = np.asarray(image.array[k], np.float64)
        agree = [np.linalg.norm(np.array(origin) - where) <= (k + 1) * tol + 1e-6
                 and theirs.shape == ours.shape
                 and np.allclose(theirs, ours, rtol=1e-6, atol=1e-3)
                 and np.allclose(spacing[:2], image.spacing[:2], rtol=1e-6)
                 for origin, spacing, theirs in (read for read in files if read is not None)]
        assert any(agree), f"slice {k} ({uid}) is not where, or not what, GDCM reads from its file"


def seeds() -> list[bytes]:
    """Small valid CT series (4 slices of 6 x 5 pixels), each joined into one input."""
    import numpy as np

    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(4, 5, 6)).astype(np.int16)
    out = [
        _series(hu, signed=True, slope=1, intercept=0),
        _series(hu, signed=False, slope=1, intercept=-1024, bits_stored=12),
        _series(hu, signed=True, slope=0.5, intercept=-10),
        _series(hu, signed=True, slope=1, intercept=0, rle=True),
        # (GDCM would not encode the random values: "Could not change the Transfer Syntax")
        _series((np.arange(4 * 8 * 8).reshape(4, 8, 8) * 37 % 2500 - 1000).astype(np.int16), signed=True, slope=1,
                intercept=0, j2k=True),
    ]
    return out


def _j2k_frame(values) -> bytes:
    """``values`` (int16, rows x columns) as JPEG 2000 (lossless) pixel data, encapsulated, by GDCM
    (the reader decodes JPEG with GDCM, so these seeds reach it; GDCM crashed writing a 5 x 6 frame,
    so the JPEG 2000 seed's slices are 8 x 8)."""
    import numpy as np
    import pydicom

    from GTVAutoSegLib.image import sitk

    path = _WORK / "j2k-frame.dcm"
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG2000")
    writer.Execute(sitk.GetImageFromArray(np.ascontiguousarray(values, np.int16)))
    return pydicom.dcmread(path).PixelData


def _series(hu, signed: bool, slope: float, intercept: float, bits_stored: int = 16, rle: bool = False,
            j2k: bool = False) -> bytes:
    import io

    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

    study, series, frame = (generate_uid(prefix="1.2.826.0.1.3680043.10.1234.", entropy_srcs=[str(k), str(signed),
                                                                                           str(slope), str(rle), str(j2k)])
                            for k in range(3))
    files = []
    for z, values in enumerate(hu):
        stored = np.round((values.astype(np.float64) - intercept) / slope)
        stored = stored.astype(np.int16) if signed else np.clip(stored, 0, 2 ** bits_stored - 1).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.10.1234.",
                                                       entropy_srcs=[str(series), str(z)])
        meta.TransferSyntaxUID = JPEG2000Lossless if j2k else ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "FUZZ", "Fuzz^Seed"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-10.0, -12.5, 40.0 + 2.5 * z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.75, 0.8]
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.InstanceNumber = z + 1
        ds.PixelData = _j2k_frame(stored) if j2k else stored.tobytes()
        if j2k:
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        if rle:
            ds.compress(RLELossless)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        files.append(buffer.getvalue())
    return SEPARATOR.join(files)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fuzzing import run

    warnings.simplefilter("ignore")  # pydicom's and the reader's warnings on every damaged input
    run(check_one, seeds, ["GTVAutoSegLib.dicomchecks", "GTVAutoSegLib.dicomseries", "GTVAutoSegLib.inputcheck",
                           "GTVAutoSegLib.io"])


if __name__ == "__main__":
    main()
