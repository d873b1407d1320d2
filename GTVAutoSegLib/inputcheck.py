"""Checks on an input before and after its voxels are read, each failing with one line.

ITK reads many damaged files without complaint: a truncated NIfTI comes back with its missing
slices as zeros and NaN voxels of a NIfTI come back as 0, and a sheared direction matrix is kept on
reading but orthogonalised on writing. These checks catch what ITK lets through, so a damaged CT is
refused instead of being segmented into a plausible contour on a wrong image.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import zlib
from pathlib import Path

import numpy as np

from .errors import GTVError

# Direction columns must be orthonormal to this: DICOM cosines carry 6 decimals, NIfTI quaternions float32.
ORTHONORMAL_TOL = 1e-4
# Largest volume read (voxels): a 512 x 512 x 4096 CT. A header claiming more is a damaged or hostile
# file, and ITK would try to allocate it before finding out.
MAX_VOXELS = 512 * 512 * 4096
_GZIP_TAIL_CHUNKS = 16  # MiB read past the voxels of a .nii.gz to reach its CRC
_MAX_VOX_OFFSET = 1 << 30  # a NIfTI's header and extensions: a vox_offset beyond 1 GiB is a damaged header


def check_input_path(path: Path, what: str = "input") -> None:
    """A regular file or a folder that exists and can be read; never a FIFO, device or socket
    (reading a FIFO waits forever for a writer)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise GTVError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise GTVError(f"cannot reach {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise GTVError(f"cannot read folder {path}: permission denied")
        return
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise GTVError(f"{what} {path} is {kind}, not an image file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise GTVError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise GTVError(f"cannot read {path}: {exc.strerror or exc}") from None
    if st.st_size == 0:
        raise GTVError(f"{path.name} is an empty file (0 bytes)")


def check_geometry(name: str, size, spacing, origin, direction) -> None:
    """Finite origin, positive finite spacing, orthonormal direction, a size that fits in memory."""
    n = math.prod(int(s) for s in size)
    if any(int(s) < 1 for s in size):
        raise GTVError(f"{name} has size {'x'.join(str(int(s)) for s in size)}; every side needs at least one voxel")
    if n > MAX_VOXELS:
        raise GTVError(f"{name} claims {'x'.join(str(int(s)) for s in size)} voxels ({n:,}), more than the "
                       f"{MAX_VOXELS:,} a CT can have; the header is damaged")
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise GTVError(f"{name} has voxel spacing {tuple(spacing)}; every spacing must be a positive number")
    if not all(math.isfinite(v) for v in origin):
        raise GTVError(f"{name} has origin {tuple(origin)}; it must be finite")
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.isfinite(d).all():
        raise GTVError(f"{name} has a direction matrix with non-finite values")
    off = float(np.abs(d.T @ d - np.eye(3)).max())
    if off > ORTHONORMAL_TOL:
        raise GTVError(f"{name} has a sheared or scaled direction matrix (its columns are off orthonormal by "
                       f"{off:.3g}); an output could not lie exactly on its grid, so it is refused")


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI whose voxel data is cut short, whose gzip stream is damaged, whose float
    voxels are not all finite (ITK turns NaN and Inf into 0), or whose sform is sheared."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        header = img.header
        shape = header.get_data_shape()
        offset = int(img.dataobj.offset)  # the file's vox_offset (the image's header copy says 0)
    except Exception as exc:  # nibabel raises ImageFileError, ValueError, struct.error...
        reason = _first_line(exc).replace(str(path), path.name)
        raise GTVError(f"{path.name} is not a readable image (not a valid NIfTI file: {reason})") from None
    if len(shape) < 3:
        return  # ITK refuses it with the dimension check
    if min(int(s) for s in shape) < 0:
        raise GTVError(f"{path.name} is not a readable image (its header gives negative dimensions "
                       f"{'x'.join(str(int(s)) for s in shape)})")
    if not 0 <= offset <= _MAX_VOX_OFFSET:
        raise GTVError(f"{path.name} is not a readable image (its header puts the voxels at byte {offset:.3g}, "
                       "far past any NIfTI header)")
    _check_sform(path, header.get_sform() if int(header["sform_code"]) > 0 else None)
    dtype = header.get_data_dtype()
    expected = offset + math.prod(int(s) for s in shape) * dtype.itemsize
    if math.prod(int(s) for s in shape) > MAX_VOXELS:
        raise GTVError(f"{path.name} claims {'x'.join(str(int(s)) for s in shape)} voxels, more than a CT can have; "
                       "the header is damaged")
    data = _nifti_bytes(path, expected)
    if np.issubdtype(dtype, np.floating):
        voxels = np.frombuffer(data, dtype=dtype, count=math.prod(int(s) for s in shape), offset=offset)
        finite = np.isfinite(voxels)
        if not finite.all():
            n_nan = int(np.isnan(voxels).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise GTVError(f"{path.name} has {n_nan} NaN and {n_inf} infinite voxels; a CT must be finite everywhere")


def _check_sform(path: Path, affine) -> None:
    """Refuse a NIfTI sform (one the header says to use) that is not finite or is sheared. ITK
    never returns from reading the header of some with NaN or Inf beside a zero-length axis (found
    by fuzz_readers.py), and ignores the others for the qform: either way the geometry is damaged."""
    if affine is not None and not np.isfinite(np.asarray(affine, dtype=float)).all():
        raise GTVError(f"{path.name} has a damaged sform (NaN or infinite values); its geometry is unknown, so it "
                       "is refused")
    if affine is not None:
        cols = np.asarray(affine, dtype=float)[:3, :3]
        norms = np.linalg.norm(cols, axis=0)
        if (norms > 0).all():
            d = cols / norms
            off = float(np.abs(d.T @ d - np.eye(3)).max())
            if off > ORTHONORMAL_TOL:
                raise GTVError(f"{path.name} has a sheared sform (columns off orthonormal by {off:.3g}); "
                               "an output could not lie exactly on its grid, so it is refused")


class StoredBytes:
    """Where a file's voxel bytes are stored, so that what ITK read can be proved equal to them.

    The full checks (``check_nifti``, ``check_nrrd``) inflate a whole gzip stream in Python before
    ITK inflates it again: half a second for a 150-slice CT. This proof costs a CRC-32 over the array
    ITK returned: the stream's trailer holds the CRC-32 and length of everything it inflates to, so
    ``header + array bytes`` matching both means the file was read whole and unaltered (no cut-off
    voxels, no corrupt block, no NaN turned into 0). When the proof fails (a damaged file, but also
    big-endian or scaled voxels, trailing data, a multi-member stream) the full check decides.
    """

    def __init__(self, path: Path, gzipped: bool, data_start: int, prefix_len: int, dtype: np.dtype | None = None):
        self.path, self.gzipped, self.data_start, self.prefix_len = path, gzipped, data_start, prefix_len
        # The voxels' type when the file stores them as ITK returns them (little-endian or one byte,
        # no scaling): then inflating the stream is reading the image. None: ITK may change them.
        self.dtype = dtype

    @classmethod
    def of(cls, path: Path) -> "StoredBytes | None":
        """The layout of a single-file NIfTI-1 (little-endian, its sform checked here) or a gzip NRRD
        with an attached header; None for anything else (then only the full checks apply)."""
        name = path.name.lower()
        try:
            if name.endswith((".nii", ".nii.gz")):
                gz = name.endswith(".gz")
                opener = gzip.open if gz else open
                with opener(path, "rb") as f:
                    head = f.read(_NIFTI1_HEADER)
                if len(head) < _NIFTI1_HEADER or head[344:348] != b"n+1\0":
                    return None
                if int(np.frombuffer(head, "<i4", 1, 0)[0]) != 348:
                    return None  # NIfTI-2 or big-endian: nibabel reads those
                if not 1 <= int(np.frombuffer(head, "<i2", 1, 40)[0]) <= 7:
                    return None  # NIfTI readers take the byte order from dim[0]: ITK would swap this one
                offset = float(np.frombuffer(head, "<f4", 1, 108)[0])
                if not (_NIFTI1_HEADER <= offset <= 1 << 20) or offset != int(offset):
                    return None
                if int(np.frombuffer(head, "<i2", 1, 254)[0]) > 0:
                    _check_sform(path, np.frombuffer(head, "<f4", 12, 280).reshape(3, 4).astype(float))
                slope, inter = (float(v) for v in np.frombuffer(head, "<f4", 2, 112))
                unscaled = slope in (0.0, 1.0) and inter == 0.0  # ITK adds an intercept even when the slope is 0
                dtype = _NIFTI_DTYPES.get(int(np.frombuffer(head, "<i2", 1, 70)[0])) if unscaled else None
                return cls(path, gz, 0 if gz else int(offset), int(offset), dtype)
            if name.endswith(".nrrd"):
                found = _attached_nrrd(path)
                if found is None or found[1].get("encoding") not in ("gzip", "gz", "raw"):
                    return None
                return cls(path, found[1]["encoding"] != "raw", found[0], 0, _nrrd_dtype(found[1]))
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
            return None
        return None

    def confirms(self, array: np.ndarray) -> bool:
        """True when the file stores exactly ``array``'s bytes (after its header)."""
        array = np.ascontiguousarray(array)
        with open(self.path, "rb") as f:
            if not self.gzipped:
                f.seek(self.data_start)
                stored = np.fromfile(f, np.uint8, array.nbytes)
                return stored.size == array.nbytes and np.array_equal(stored, array.reshape(-1).view(np.uint8))
            f.seek(-8, os.SEEK_END)
            tail = f.read(8)
        if len(tail) != 8:
            return False
        crc, size = int.from_bytes(tail[:4], "little"), int.from_bytes(tail[4:], "little")
        prefix = b""
        if self.prefix_len:
            try:
                with gzip.open(self.path, "rb") as g:
                    prefix = g.read(self.prefix_len)
            except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
                return False  # the full check says what is wrong
        if size != (len(prefix) + array.nbytes) & 0xFFFFFFFF:
            return False
        return zlib.crc32(memoryview(array).cast("B"), zlib.crc32(prefix)) == crc


_NIFTI1_HEADER = 352  # 348 bytes and the 4-byte extension flag


# NIfTI-1 datatype codes of scalar voxels
_NIFTI_DTYPES = {2: np.dtype("u1"), 4: np.dtype("<i2"), 8: np.dtype("<i4"), 16: np.dtype("<f4"), 64: np.dtype("<f8"),
                 256: np.dtype("i1"), 512: np.dtype("<u2"), 768: np.dtype("<u4"), 1024: np.dtype("<i8"),
                 1280: np.dtype("<u8")}
# NRRD's type names (teem's list, every spelling) -> numpy
_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t"), "i1"),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "i4"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t"), "i8"),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    "float": "f4", "double": "f8",
}


def _nrrd_dtype(fields: dict[str, str]) -> np.dtype | None:
    """The voxels' numpy type when ITK returns them as stored (little-endian or one byte, no byte or
    line skip); else None."""
    code = _NRRD_TYPES.get(" ".join(fields.get("type", "").split()))
    if code is None or "byte skip" in fields or "byteskip" in fields or "line skip" in fields \
            or "lineskip" in fields:
        return None
    dtype = np.dtype(code)
    if dtype.itemsize > 1 and fields.get("endian") != "little":
        return None
    return dtype.newbyteorder("<")


def _attached_gzip_nrrd_start(path: Path) -> int | None:
    """Byte offset of the gzip stream of an attached-header, gzip-encoded NRRD; else None."""
    found = _attached_nrrd(path)
    return None if found is None or found[1].get("encoding") not in ("gzip", "gz") else found[0]


def _attached_nrrd(path: Path) -> tuple[int, dict[str, str]] | None:
    """Byte offset of the data of an attached-header NRRD and its header fields (keys and values
    lower case); else None."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = min((i for i in (head.find(b"\n\n"), head.find(b"\r\n\r\n")) if i >= 0), default=-1)
    if not head.startswith(b"NRRD") or end < 0:
        return None
    # A header is text: ITK (teem) and this parser part ways on where one holding NUL or other control
    # bytes ends, and so on where the voxels start (fuzz_readers.py: a raw NRRD read 10 bytes apart)
    binary = next((k for k, b in enumerate(head[:end]) if b < 0x20 and b not in (9, 10, 13) or b == 0x7F), None)
    if binary is not None:
        raise GTVError(f"{path.name} is not a readable image (its NRRD header holds the byte 0x{head[binary]:02x} "
                       f"at offset {binary}: a damaged header)")
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip().lower()
    if "data file" in fields or "datafile" in fields:
        return None
    return end + (2 if head[end:end + 2] == b"\n\n" else 4), fields


def check_metaimage(path: Path) -> None:
    """Refuse a MetaImage (``.mha`` / ``.mhd``) header with an NDims or DimSize (any of them, when
    repeated) that is not a plausible whole number: ITK's ReadImageInformation never returned for
    ``NDims = 1111...13`` nor for ``NDims = -3`` followed by ``NDims = 3`` (found by
    fuzz_readers.py)."""
    def whole(v: str) -> bool:  # ASCII digits only: str.isdigit() also takes '²'
        return v.isascii() and v.isdigit()

    with open(path, "rb") as f:
        head = f.read(1 << 16)
    for line in head.split(b"\n"):
        key, sep, value = line.partition(b"=")
        key = key.strip().decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if sep and key == "ndims" and not (whole(text) and 1 <= int(text) <= 8):
            raise GTVError(f"{path.name} is not a readable image (its MetaImage header gives NDims = {text[:20]!r})")
        if sep and key == "dimsize" and not all(whole(v) and int(v) < 1 << 31 for v in text.split()):
            raise GTVError(f"{path.name} is not a readable image (its MetaImage header gives DimSize = {text[:40]!r})")
        if sep and key == "elementdatafile":
            break


def check_nrrd(path: Path, expected: int | None = None) -> None:
    """Refuse a gzip-encoded NRRD whose compressed stream is cut short or corrupt: ITK reads the
    voxels it can inflate and never checks the stream's end or CRC. ``expected``: the bytes of
    voxels its header describes, when known: a whole stream holding fewer is refused too (ITK
    would first allocate what the header claims)."""
    start = _attached_gzip_nrrd_start(path)
    if start is None:
        return  # not an attached gzip NRRD; ITK says what it is
    total = 0
    with open(path, "rb") as f:
        f.seek(start)
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: its CRC is checked at the end
        try:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                total += len(inflate.decompress(chunk, 1 << 20))
                while inflate.unconsumed_tail:  # bounded output: a small file can inflate to gigabytes
                    total += len(inflate.decompress(inflate.unconsumed_tail, 1 << 20))
                if inflate.eof:
                    break
        except zlib.error as exc:
            raise GTVError(f"{path.name} is truncated or corrupt (its gzip data: {_first_line(exc)})") from None
        if not inflate.eof:
            raise GTVError(f"{path.name} is truncated: its gzip-compressed voxels end before the stream does")
    if expected is not None and total < expected:
        raise GTVError(f"{path.name} is truncated: its header needs {expected:,} bytes of image data, "
                       f"its gzip stream holds {total:,}")


def _nifti_bytes(path: Path, expected: int) -> bytes:
    """The file's (decompressed) bytes, at least ``expected`` of them, else a one-line GTVError."""
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                data = f.read(expected)  # no more at once: a small file can inflate to gigabytes
                # Read on to the end so the gzip CRC is checked (a flipped bit inside the stream),
                # but only so far: trailing data beyond this is not voxels.
                for _ in range(_GZIP_TAIL_CHUNKS):
                    if not f.read(1 << 20):
                        break
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise GTVError(f"{path.name} is truncated or corrupt ({_first_line(exc)})") from None
    else:
        data = path.read_bytes()
    if len(data) < expected:
        raise GTVError(f"{path.name} is truncated: its header needs {expected:,} bytes of image data, "
                       f"the file holds {len(data):,}")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]
