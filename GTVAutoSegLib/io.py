"""Reading CT volumes and masks, writing segmentations: geometry always travels with the voxels.

Every problem a user can fix (a missing file, a file that is not a 3D image, a folder without a CT
series, NaN voxels) is raised as a one-line :class:`GTVError`. Every output is written to a temporary
file beside the target and renamed onto it, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from . import dicomseries
from .errors import GTVError
from .filetypes import DETACHED_HEADER_SUFFIXES, ONE_FILE_SUFFIXES, SUPPORTED_INPUTS
from .image import Image, sitk
from .inputcheck import (StoredBytes, check_geometry, check_input_path, check_metaimage, check_nifti, check_nrrd,
                         is_nifti)
from .native import quiet_stderr
from .outputs import atomic_output

logger = logging.getLogger(__name__)


# Below this the whole volume is air: no patient to segment.
AIR_HU = -900.0
# Far outside what any CT scanner stores (padding goes down to about -3024, extended scales up to ~30000).
_HU_FAR_LOW, _HU_FAR_HIGH = -5000.0, 35000.0


# --------------------------------------------------------------------------------------------- reading


def read_image(path: str | Path) -> Image:
    """Read a 3D scalar image from a file or a DICOM series folder, keeping its pixel type.

    Args:
        path: NIfTI, NRRD, MHA/MHD file, a DICOM series folder, or one file of a DICOM series.

    Returns:
        The volume with its geometry; ``array`` is ``(z, y, x)``. Read from DICOM, it carries the
        series' identifiers in ``source``.

    Raises:
        GTVError: missing or unreadable path (a FIFO, a device, no permission), not an image, a
            damaged file (truncated, corrupt compressed data), no DICOM CT series or one that is not
            an even stack of parallel slices, not 3D, vector pixels, a sheared direction matrix,
            NaN or infinite voxels.
    """
    path = Path(path)
    check_input_path(path)
    if path.is_dir():
        image = dicomseries.read_series(path)
    elif dicomseries.is_dicom_file(path):
        image = _read_dicom_file(path)
    else:
        image = _read_file(path)
    if np.issubdtype(image.array.dtype, np.floating) and not np.isfinite(image.array).all():
        n_nan = int(np.isnan(image.array).sum())
        n_inf = int(np.isinf(image.array).sum())
        raise GTVError(f"{path.name} has {n_nan} NaN and {n_inf} infinite voxels; a CT must be finite everywhere")
    return image


def read_ct(path: str | Path) -> Image:
    """:func:`read_image` plus checks that the volume is a CT with a patient in it.

    Raises:
        GTVError: an empty volume, or one that is all air (max <= -900 HU) or constant.

    Warns:
        UserWarning: intensities that do not look like Hounsfield units (normalised to [0, 1], no
            negative values at all, or values far outside any CT scale).
    """
    return check_ct(read_image(path), path)


class ReadAhead:
    """Reads images in a background thread before they are needed: :meth:`start` a path, then call
    the object with it for :func:`read_image`'s result (or its error). A path never started is read
    on the spot.

    ITK's reading and numpy leave the GIL, so a CT is read while torch is imported and the model
    loaded, and each further input of one ``segment`` command while the one before it is segmented
    and written. Warnings belong to :func:`check_ct`, called by the consumer in its own thread.
    """

    def __init__(self):
        self._pool = None
        self._pending: dict[str, object] = {}

    def start(self, path: str | Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
        self._pending[str(path)] = self._pool.submit(read_image, path)

    def __call__(self, path: str | Path) -> Image:
        ahead = self._pending.pop(str(path), None)
        return ahead.result() if ahead is not None else read_image(path)


def check_ct(image: Image, path: str | Path) -> Image:
    """The checks of :func:`read_ct` on an image :func:`read_image` read from ``path`` (apart, so
    that an image read in another thread is checked, and warned about, in this one)."""
    name = Path(path).name
    if image.array.size == 0:
        raise GTVError(f"{name} is empty (size {_size_str(image)})")
    lo, hi = float(image.array.min()), float(image.array.max())
    if lo == hi:
        raise GTVError(f"{name} is constant (every voxel is {lo:g}); no patient to segment")
    if hi <= AIR_HU:
        raise GTVError(f"{name} is all air (max {hi:g} HU <= {AIR_HU:g}); no patient to segment")
    if lo >= 0.0 and hi <= 1.0:
        warnings.warn(
            f"{name}: intensities lie in [{lo:g}, {hi:g}], which looks normalised, not Hounsfield units; "
            "results will be wrong unless the original CT is used",
            UserWarning, stacklevel=2,
        )
    elif lo >= 0.0:
        warnings.warn(
            f"{name}: no negative intensities (range [{lo:g}, {hi:g}]), so no air or fat in Hounsfield units; "
            "the rescale intercept may be missing",
            UserWarning, stacklevel=2,
        )
    elif lo < _HU_FAR_LOW or hi > _HU_FAR_HIGH:
        warnings.warn(
            f"{name}: intensity range [{lo:g}, {hi:g}] is far outside CT Hounsfield units (about -1100 to 4000)",
            UserWarning, stacklevel=2,
        )
    return image


def read_mask(path: str | Path, like: Image | None = None, label: int | None = None) -> Image:
    """Read a mask as binary uint8, optionally resampled onto another image's grid.

    Args:
        path: any file or folder :func:`read_image` reads (a single-layer ``.seg.nrrd`` too).
        like: when given and on another grid, the mask is resampled onto it by physical position
            (nearest neighbour), so a label map stored with flipped axes still lands on the right voxels.
        label: keep only this label value of a label map; by default every non-zero voxel is in the mask.

    Returns:
        uint8 mask (0/1), on ``like``'s grid when given.

    Raises:
        GTVError: as :func:`read_image`, or a mask with fractional values (a probability map).
    """
    image = read_image(path)
    array = image.array
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise GTVError(f"{Path(path).name} has fractional values (a probability map?); threshold it into a mask first")
    binary = (array == label) if label is not None else (array != 0)
    mask = image.with_array(binary.astype(np.uint8))
    if like is not None and not mask.same_grid(like):
        mask = resample_to(mask, like, nearest=True)
    return mask


def resample_to(image: Image, reference: Image, nearest: bool, default: float = 0.0) -> Image:
    """Resample ``image`` onto ``reference``'s grid by physical position (identity transform).

    Args:
        image: the volume to move.
        reference: only its grid (shape, spacing, origin, direction) is used.
        nearest: nearest neighbour (masks, labels) rather than linear interpolation (intensities).
        default: value for output voxels that fall outside ``image``.

    Returns:
        An image on ``reference``'s grid with ``image``'s pixel type.
    """
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in reference.array.shape[::-1]])
    f.SetOutputSpacing(reference.spacing)
    f.SetOutputOrigin(reference.origin)
    f.SetOutputDirection(reference.direction)
    f.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    f.SetDefaultPixelValue(float(default))
    f.SetTransform(sitk.Transform())
    out = Image.from_sitk(f.Execute(image.to_sitk()))
    # Keep the reference's geometry bit for bit; SimpleITK round-trips it through floats of its own.
    return reference.with_array(out.array)


def _full_check(path: Path, expected: int | None = None) -> None:
    """Inflate and check the whole file: ITK zero-fills a cut-off NIfTI, turns its NaN into 0, and
    inflates what it can of a gzip NRRD without checking the stream's end. ``expected``: a gzip
    NRRD's bytes of voxels, when known (see ``check_nrrd``)."""
    if is_nifti(path):
        check_nifti(path)
    elif path.name.lower().endswith(".nrrd"):
        check_nrrd(path, expected)
    elif path.name.lower().endswith((".mha", ".mhd")):
        check_metaimage(path)


def _read_file(path: Path) -> Image:
    # A file whose stored bytes can be proved equal to what ITK returns (a CRC over the array) is
    # checked after reading, at a fraction of the cost; any other, or a failed proof, fully before.
    stored = StoredBytes.of(path)
    if stored is None:
        _full_check(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_stderr("ITK"):
            reader.ReadImageInformation()
    except RuntimeError as e:
        logger.debug("SimpleITK could not read %s: %s", path, e)
        if stored is not None:
            _full_check(path)  # its own words for a damaged stream
        raise GTVError(f"{path.name} is not a readable image (supported: {SUPPORTED_INPUTS})") from None
    if reader.GetImageIOFromFileName(str(path)) == "GDCMImageIO":
        return _read_dicom_file(path)  # a DICOM file without the standard preamble
    _check_dimension(reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(), path)
    check_geometry(path.name, reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    if stored is not None:
        _check_can_hold(stored, reader)
        image = _read_stored(stored, reader)
        if image is not None:
            return image
    try:
        with quiet_stderr("ITK"):
            img = reader.Execute()
    except RuntimeError as e:
        logger.debug("SimpleITK could not read %s: %s", path, e)
        if stored is not None:
            _full_check(path)  # its own words for a damaged stream
        detached = path.suffix.lower() in DETACHED_HEADER_SUFFIXES
        what = "its data file is missing, truncated or corrupt" if detached else "truncated or corrupt file?"
        raise GTVError(f"{path.name} could not be read ({what})") from None
    _check_dimension(img.GetDimension(), img.GetSize(), img.GetNumberOfComponentsPerPixel(), path)
    image = Image.from_sitk(img)
    if stored is not None and not stored.confirms(image.array):
        _full_check(path)  # damaged (refused here), or stored otherwise (scaled, big-endian): kept
    return image


def _itk_dtype(pixel_id: int) -> np.dtype | None:
    names = {"sitkUInt8": "u1", "sitkInt8": "i1", "sitkUInt16": "<u2", "sitkInt16": "<i2", "sitkUInt32": "<u4",
             "sitkInt32": "<i4", "sitkUInt64": "<u8", "sitkInt64": "<i8", "sitkFloat32": "<f4", "sitkFloat64": "<f8"}
    for name, code in names.items():
        if getattr(sitk, name, None) == pixel_id:
            return np.dtype(code)
    return None


# Deflate's largest inflation: a 258-byte match in one bit is about 1032 to 1.
_DEFLATE_MAX_RATIO = 1100


def _check_can_hold(stored: StoredBytes, reader) -> None:
    """Refuse a file too small for the voxels ITK's reading of its header claims (raw: byte for
    byte; gzip: at deflate's largest ratio), before ITK allocates and zero-fills them: an 83-byte
    .nii.gz claiming 685 MB took 2.8 GB and 6 s, a 355-byte .nii whose dim[3] of 0 ITK reads as 1
    (2.2 GB of int64) 4.5 GB and 9 s. The full checks speak first when they find the damage."""
    dtype = _itk_dtype(reader.GetPixelID())
    if dtype is None:
        return  # a type ITK refuses or converts; it says so itself
    claimed = int(np.prod([int(n) for n in reader.GetSize()], dtype=np.int64)) * dtype.itemsize
    try:
        held = stored.path.stat().st_size - stored.data_start
    except OSError:
        return
    if claimed <= held * (_DEFLATE_MAX_RATIO if stored.gzipped else 1):
        return
    _full_check(stored.path)
    what = f"{held:,} compressed bytes, which cannot inflate to that" if stored.gzipped else f"{held:,}"
    raise GTVError(f"{stored.path.name} is truncated: its header needs {claimed:,} bytes of image data, "
                   f"the file holds {what}")


def _read_stored(stored: StoredBytes, reader) -> Image | None:
    """The image of a NRRD or NIfTI that stores exactly the voxels ITK would return (its header says
    so and ITK's reading of the header agrees on the type), read here rather than by ITK, with ITK's
    geometry: a gzip stream inflated by ``gz`` (ISA-L when installed, 2.4x zlib's speed), raw voxels
    read straight into the array (no second copy). None otherwise. When a gzip stream is not exactly
    whole (cut off, corrupt, with a CRC or length that does not match or data after it) the full
    checks run before ITK reads any voxel: they refuse a damaged file in their own words, and what
    they let through (trailing data, a multi-member stream) is then read by ITK. A file too small
    for its voxels never gets here (``_check_can_hold``).

    A gzip trailer's CRC-32 and length are checked while inflating: the proof
    :meth:`StoredBytes.confirms` gives after ITK's reading, here without ITK's pass.
    """
    from . import gz

    dtype = _itk_dtype(reader.GetPixelID())
    if dtype is None or stored.dtype is None or dtype != stored.dtype:
        return None
    size = tuple(int(n) for n in reader.GetSize())  # (x, y, z)
    count = int(np.prod(size, dtype=np.int64))
    nbytes = count * dtype.itemsize
    try:
        with open(stored.path, "rb") as f:  # _check_can_hold saw that the file holds the voxels
            f.seek(stored.data_start)
            array, data = (np.fromfile(f, dtype, count), None) if not stored.gzipped else (None, f.read())
    except (OSError, ValueError):
        return None
    if data is None and array.size != count:
        return None  # changed since: ITK's turn
    if data is not None:
        inflated = gz.inflate_exact(data, stored.prefix_len + nbytes)
        if inflated is None:
            _full_check(stored.path, stored.prefix_len + nbytes)  # refused here before ITK allocates
            return None
        array = np.frombuffer(inflated, dtype, count, stored.prefix_len)
    array = array.reshape(size[::-1])
    return Image(array=array.astype(dtype.newbyteorder("="), copy=False),
                 spacing=tuple(float(v) for v in reader.GetSpacing()),
                 origin=tuple(float(v) for v in reader.GetOrigin()),
                 direction=tuple(float(v) for v in reader.GetDirection()))


def _read_dicom_file(path: Path) -> Image:
    """One file of a DICOM series was picked: read the whole series it belongs to."""
    import pydicom

    modality = dicomseries.modality_of(path)
    if modality in dicomseries.NON_VOLUME_MODALITIES:
        raise GTVError(f"{path.name} is a DICOM {modality} object, not an image volume")
    if modality != "CT":
        raise GTVError(f"{path.name} is a DICOM {modality or 'image without a modality'}; a CT series is needed")
    try:
        uid = str(pydicom.dcmread(str(path), stop_before_pixels=True).get("SeriesInstanceUID", "")) or "no series UID"
    except Exception:  # read once already by modality_of; a race with a changing file
        raise GTVError(f"{path.name} is a damaged DICOM file") from None
    return dicomseries.read_series(path.resolve().parent, series_uid=uid)


def _check_dimension(dim: int, size, components: int, path: Path) -> None:
    size_str = "x".join(str(n) for n in size)
    if dim != 3:
        raise GTVError(f"{path.name} is a {dim}D image (size {size_str}); a 3D volume is needed")
    if components != 1:
        raise GTVError(f"{path.name} has {components} values per voxel (colour or vector image); a scalar 3D volume is needed")


def _size_str(image: Image) -> str:
    return "x".join(str(n) for n in image.array.shape[::-1])


# --------------------------------------------------------------------------------------------- writing


# Label maps are written as one file (ONE_FILE_SUFFIXES): detached headers could not be renamed atomically.


def write_labelmap(mask: Image, path: str | Path) -> None:
    """Write a uint8 label map (non-zero -> 1) with the mask's exact geometry, atomically.

    Args:
        mask: binary or label image; every non-zero voxel is written as 1.
        path: ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha``.
    """
    path = Path(path)
    if not path.name.lower().endswith(ONE_FILE_SUFFIXES):
        raise GTVError(f"cannot write a label map as {path.name}; use one of {', '.join(ONE_FILE_SUFFIXES)}")
    array = mask.array
    if not (array.dtype == np.uint8 and array.max(initial=0) <= 1):  # a 0/1 uint8 mask needs no copy
        array = (array != 0).astype(np.uint8)
    img = mask.with_array(array).to_sitk()
    with atomic_output(path) as tmp:
        with quiet_stderr("ITK"):
            sitk.WriteImage(img, str(tmp), useCompression=True)
        _check_written_grid(tmp, mask, path)


def _check_written_grid(tmp: Path, mask: Image, path: Path) -> None:
    """The file must hold exactly the mask's grid: a format that cannot store it would otherwise
    move the result (ITK's NIfTI writer orthogonalises a direction matrix without a word)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    with quiet_stderr("ITK"):
        reader.ReadImageInformation()
    written = Image(mask.array, tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))
    if tuple(reader.GetSize()) != tuple(mask.array.shape[::-1]) or not written.same_grid(mask):
        raise GTVError(f"{path.name} cannot hold this image's grid exactly (origin {mask.origin}, direction "
                       f"{tuple(round(v, 4) for v in mask.direction)}); refusing to write a shifted result")
