"""One DICOM file checked before its values are used: its structure (every element's VR one of the
standard's, the elements once each in ascending tag order, read from the file itself), its pixel
format, and compressed pixel data item by item to its last byte with the stream's own frame size.

pydicom reads leniently (a repeated element: the last one; bytes after the pixel data: more
elements; a value running past the end of the file: what is there), and GDCM, which decodes the
JPEG family here, allocates what a damaged length claims or crashes on a damaged RLE header: found
by fuzzing DICOM folders (``benchmarks/fuzz_dicom_series.py``). Each function raises a one-line
:class:`GTVError` naming the file, or returns what it found.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .errors import GTVError

# RLE Lossless is decoded by pydicom (numpy only), which checks its header: GDCM crashed the process
# (a segmentation fault) on an RLE header claiming 131,074 segments, found by fuzzing.
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# What GDCM decodes here (through SimpleITK): the JPEG family. Any other transfer syntax is refused.
GDCM_SYNTAXES = {"1.2.840.10008.1.2.4." + s for s in ("50", "51", "57", "70", "80", "81", "90", "91")}


def out_of_order_in_file(path: Path, meta):
    """``(previous, tag)`` of the first top-level element of the data set that does not come after
    its predecessor in the file, ``"cut short"`` when the file ends inside an element, else None.
    Read from the file itself: pydicom keeps one element per tag, the last read, so a repeated
    element is invisible in its data set, and readers part ways on it (found by fuzzing: Columns 1
    then 6; pydicom took 6, GDCM 1)."""
    from pydicom import filereader
    from pydicom.uid import UID

    syntax = UID(str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    known = syntax.is_transfer_syntax  # else read as explicit little endian, as most are
    if known and syntax.is_deflated:  # the data set is not in the file as it is
        return None
    previous = None
    with open(path, "rb") as f:
        f.seek(128 + 4)  # the preamble and "DICM"
        # past the meta group as pydicom reads it (not by its group length, which some writers leave wrong)
        filereader._read_file_meta_info(f)
        elements = filereader.data_element_generator(f, known and syntax.is_implicit_VR,
                                                     not known or syntax.is_little_endian, defer_size=256)
        try:
            for element in elements:
                if previous is not None and element.tag <= previous:
                    return previous, element.tag
                previous = element.tag
        except EOFError:  # the file ends inside an element
            return "cut short"
    return None


def out_of_order(ds):
    """``(previous, tag)`` of the first top-level element that does not follow its predecessor in
    ascending tag order (the order pydicom read them from the file), else None. GDCM does not read
    such a file at all."""
    previous = None
    for tag in ds.keys():  # insertion order: the file's
        if previous is not None and tag <= previous:
            return previous, tag
        previous = tag
    return None


@lru_cache(maxsize=1)
def _known_vrs() -> frozenset[str]:
    from pydicom.valuerep import VR

    return frozenset(v.value for v in VR)


def unknown_vr(ds):
    """The tag of the first top-level element whose explicit VR is none of the standard's, else None
    (read from the raw elements: no value is decoded; an implicit-VR file has none to check)."""
    known = _known_vrs()
    for element in ds.elements():
        vr = getattr(element, "VR", None)
        if vr is not None and str(vr) not in known:
            return element.tag
    return None


def shown(value, limit: int = 64) -> str:
    """A value from a file as a message may show it: one line of printable characters (a damaged
    value can hold anything, a line break included), at most ``limit`` of them."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text[:limit] + ("..." if len(text) > limit else "")


def check_pixel_format(ds, path: Path) -> None:
    """One value per pixel, stored as the standard has it: 8, 16 or 32 bits allocated, 1 to that many
    stored, the high bit the last stored one, signed or unsigned. Readers part ways on anything else:
    for 15 bits stored and no HighBit (found by fuzzing) pydicom gave the stored values, GDCM values
    near 0."""
    allocated = whole_number(ds, "BitsAllocated", None, path)  # all five are required (type 1)
    stored = whole_number(ds, "BitsStored", None, path)
    high = whole_number(ds, "HighBit", None, path)
    representation = whole_number(ds, "PixelRepresentation", None, path)
    samples = whole_number(ds, "SamplesPerPixel", None, path)
    if samples != 1:
        raise GTVError(f"{path.name} has {samples} samples per pixel; a CT slice has one value per pixel")
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated or high != stored - 1 or representation not in (0, 1):
        raise GTVError(f"{path.name} has a pixel format no CT slice has (bits allocated {allocated}, stored {stored}, "
                       f"high bit {high}, pixel representation {representation})")


def whole_number(ds, keyword: str, default: int | None, path: Path) -> int:
    """A whole-number element (``default`` when absent or empty; None: it must be there); GTVError
    when it is not one."""
    value = ds.get(keyword, default)
    if value in (None, "") and default is None:
        raise GTVError(f"{path.name} has no {keyword}")
    try:
        number = int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise GTVError(f"{path.name} has an invalid {keyword} ({value!r})") from None
    return number


def check_fragments(ds, path: Path) -> None:
    """Compressed pixel data must be items (the offset table, then the fragments), each whole, to its
    last byte. A value that runs on past them, or an item cut short, is damage: for RLE data whose
    undefined length had become a defined one of 4.29 GB (the value then ran to the end of the file,
    sequence delimiter included) GDCM allocated 4.3 GB, even only to read the header (found by
    fuzzing). pydicom's own fragment reader stops at a delimiter and keeps a cut item as it is."""
    try:
        data = ds.PixelData or b""  # an empty element's value is None
    except Exception as exc:
        raise GTVError(f"{path.name}: compressed pixel data is damaged ({first_line(exc)})") from None
    position, items = 0, 0
    while position < len(data):
        tag, length = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        if tag != b"\xfe\xff\x00\xe0" or position + 8 > len(data):  # (FFFE,E000): an item
            what = "a sequence delimiter" if tag == b"\xfe\xff\xdd\xe0" else f"bytes {tag.hex()}"
            raise GTVError(f"{path.name}: compressed pixel data is damaged ({what} where item {items + 1} should start, "
                           f"{len(data) - position} bytes after its last fragment)")
        if position + 8 + length > len(data):
            raise GTVError(f"{path.name}: compressed pixel data is damaged (item {items + 1} is cut short: "
                           f"{length:,} bytes claimed, {len(data) - position - 8:,} there)")
        position, items = position + 8 + length, items + 1
    if items < 2:  # the offset table (possibly empty) and at least one fragment
        raise GTVError(f"{path.name}: compressed pixel data is damaged (no fragment after the offset table)")
    element = ds["PixelData"]
    tell = getattr(element, "file_tell", None)
    if getattr(element, "is_undefined_length", False) and tell is not None:
        # the sequence delimiter after the items, with the length the standard gives it (0): for one
        # of 0xFFFFFF00 GDCM took 8 s and 4.3 GB (found by fuzzing); pydicom does not look at it
        with open(path, "rb") as f:
            f.seek(tell + len(data))
            delimiter = f.read(8)
        if delimiter != b"\xfe\xff\xdd\xe0\x00\x00\x00\x00":
            raise GTVError(f"{path.name}: compressed pixel data is damaged (no sequence delimiter (FFFE,E0DD) of "
                           f"length 0 after it: the bytes there are {delimiter.hex() or 'none'})")


def frame(data: bytes) -> bytes:
    """The fragments after the offset table, joined: the one frame of a slice (``check_fragments``
    has checked the items)."""
    parts, position, first = [], 0, True
    while position < len(data):
        length = int.from_bytes(data[position + 4:position + 8], "little")
        if not first:
            parts.append(data[position + 8:position + 8 + length])
        position, first = position + 8 + length, False
    return b"".join(parts)


def check_codestream(ds, path: Path, syntax: str, rows: int, columns: int) -> None:
    """The JPEG or JPEG 2000 stream's own frame size and components are the header's (``rows`` x
    ``columns``, one component): a decoder allocates and decodes what the stream says, and a stream
    of another size is not this slice."""
    stream = frame(ds.PixelData)
    found = j2k_size(stream) if syntax in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91") else jpeg_size(stream)
    if found is None:
        raise GTVError(f"{path.name}: compressed pixel data is damaged (no frame size where the stream should give it)")
    width, height, components = found
    if (height, width, components) != (rows, columns, 1):
        raise GTVError(f"{path.name}: compressed pixel data is damaged (its stream is {width}x{height} with {components} "
                       f"component(s), its header {columns}x{rows} with 1)")


def j2k_size(stream: bytes):
    """``(width, height, components)`` from a JPEG 2000 codestream's SIZ marker (or that of the
    codestream box of a JP2 file), else None."""
    if stream[:4] == b"\x00\x00\x00\x0c" and stream[4:8] == b"jP  ":  # a JP2 file: find its codestream box
        found = stream.find(b"jp2c")
        stream = stream[found + 4:] if found >= 4 else b""
    if stream[:4] != b"\xff\x4f\xff\x51" or len(stream) < 42:  # SOC, then SIZ first
        return None
    x, y, x0, y0 = (int.from_bytes(stream[k:k + 4], "big") for k in (8, 12, 16, 20))
    components = int.from_bytes(stream[40:42], "big")
    if x <= x0 or y <= y0:
        return None
    return x - x0, y - y0, components


def jpeg_size(stream: bytes):
    """``(width, height, components)`` from a JPEG (or JPEG-LS) stream's start-of-frame marker,
    else None."""
    if stream[:2] != b"\xff\xd8":  # SOI
        return None
    position = 2
    while position + 4 <= len(stream):
        if stream[position] != 0xFF:
            return None
        marker = stream[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(stream[position + 2:position + 4], "big")
        # SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC); SOF55 (F7) is JPEG-LS's
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if position + 10 > len(stream):
                return None
            height = int.from_bytes(stream[position + 5:position + 7], "big")
            width = int.from_bytes(stream[position + 7:position + 9], "big")
            return width, height, stream[position + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header, or a damaged length
            return None
        position += 2 + length
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message; when it only announces a list ("...: "), the
    first line of the list (pydicom names the decoders that failed, one per line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return first[:160]
