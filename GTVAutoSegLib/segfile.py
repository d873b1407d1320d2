"""3D Slicer segmentation files (``.seg.nrrd``): one labelled segment with its name, colour and
standard terminology, on exactly the mask's grid, readable by Slicer and by ``slicerio``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import gz
from .errors import GTVError
from .image import Image
from .outputs import atomic_output

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Code:
    """A coded concept as Slicer's terminology strings write it: ``scheme^value^meaning``."""

    scheme: str
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"

    @classmethod
    def parse(cls, parts) -> "Code | None":
        parts = list(parts) + [""] * (3 - len(parts))
        return cls(*parts[:3]) if any(parts[:3]) else None


# Anatomic regions a GTV segment may be tagged with (DICOM anatomic codes, SNOMED CT): the one
# enumeration; bundles, build_bundle's --anatomic-region and the terminology all check against it.
ANATOMIC_REGIONS: dict[str, Code] = {
    "head_and_neck": Code("SCT", "774007", "Head and Neck"),
    "lung": Code("SCT", "39607008", "Lung"),
}


def check_anatomic_region(region: str) -> str:
    """``region`` if it is a key of :data:`ANATOMIC_REGIONS`, else a one-line GTVError listing them."""
    if region not in ANATOMIC_REGIONS:
        raise GTVError(f"unknown anatomic region {region!r}; known: {', '.join(ANATOMIC_REGIONS)}")
    return region


@dataclass(frozen=True)
class TargetType:
    """One radiotherapy target volume type: its code, its display colour (RGB in [0, 1]) and its
    RTSTRUCT RT ROI Interpreted Type (a defined term of DICOM; "" where the standard has none)."""

    code: Code
    color: tuple[float, float, float]
    rt_roi_interpreted_type: str = ""


# Segments are coded in a terminology context of our own, because 3D Slicer's general anatomy list
# holds no radiotherapy targets; the Slicer module loads this context (terminology_context_json) so
# its terminology selector resolves every segment we write. Types: DICOM CID 9534 "Radiotherapy
# Target"; keys are the type prefixes of AAPM TG-263 target names (GTV, CTVp, ITV, PTV70, PTV_High).
TERMINOLOGY_CONTEXT = "GTVAutoSeg - Radiotherapy target volumes"
TARGET_CATEGORY = Code("SCT", "49755003", "Morphologically Altered Structure")
TARGET_TYPES: dict[str, TargetType] = {
    "GTV": TargetType(Code("SCT", "228791009", "GTV"), (0.9, 0.1, 0.1), "GTV"),   # radiotherapy convention: red
    "CTV": TargetType(Code("SCT", "228792002", "CTV"), (0.9, 0.55, 0.1), "CTV"),
    "ITV": TargetType(Code("DCM", "130056", "ITV"), (0.9, 0.85, 0.1)),  # no ITV among the RTSTRUCT defined terms
    "PTV": TargetType(Code("SCT", "228793007", "PTV"), (0.1, 0.55, 0.9), "PTV"),
}


def target_type(target: str) -> str:
    """The TG-263 type of a target name: ``"PTV70"`` -> ``"PTV"``, ``"gtv_primary"`` -> ``"GTV"``."""
    upper = str(target).upper()
    for kind in TARGET_TYPES:
        if upper.startswith(kind):
            return kind
    raise GTVError(f"target '{target}' does not name a radiotherapy target volume (a name starting with "
                   f"{', '.join(TARGET_TYPES)}, as in AAPM TG-263)")


def target_color(target: str) -> tuple[float, float, float]:
    """The display colour of a target's type."""
    return TARGET_TYPES[target_type(target)].color


@dataclass(frozen=True)
class Terminology:
    """What a segment is, in 3D Slicer's terminology (shown and kept by Slicer, DICOM SEG export)."""

    category: Code = TARGET_CATEGORY
    type: Code = TARGET_TYPES["GTV"].code
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None
    context_name: str = TERMINOLOGY_CONTEXT
    anatomic_context_name: str = "Anatomic codes - DICOM master list"

    @classmethod
    def for_region(cls, region: str | None) -> "Terminology":
        """The GTV terminology, tagged with one of :data:`ANATOMIC_REGIONS` (or no region)."""
        return cls.for_target("GTV", region)

    @classmethod
    def for_target(cls, target: str, region: str | None = None) -> "Terminology":
        """The terminology of a target volume (``"GTV"``, ``"PTV70"``...), tagged with one of
        :data:`ANATOMIC_REGIONS` (or no region)."""
        kind = TARGET_TYPES[target_type(target)]
        if region is None:
            return cls(type=kind.code)
        return cls(type=kind.code, anatomic_region=ANATOMIC_REGIONS[check_anatomic_region(region)])

    def entry_string(self) -> str:
        """Slicer's ``TerminologyEntry`` tag value: seven ``~``-separated parts."""
        def code(c: Code | None) -> str:
            return str(c) if c is not None else "^^"
        return "~".join([
            self.context_name, code(self.category), code(self.type), code(self.type_modifier),
            self.anatomic_context_name, code(self.anatomic_region), code(self.anatomic_region_modifier),
        ])

    def to_dict(self) -> dict:
        """As slicerio's terminology dict (the inverse of :meth:`from_dict`)."""
        def code(c: Code | None) -> list[str]:
            return [c.scheme, c.value, c.meaning] if c is not None else ["", "", ""]
        return {"contextName": self.context_name, "category": code(self.category), "type": code(self.type),
                "typeModifier": code(self.type_modifier), "anatomicContextName": self.anatomic_context_name,
                "anatomicRegion": code(self.anatomic_region), "anatomicRegionModifier": code(self.anatomic_region_modifier)}

    @classmethod
    def from_dict(cls, d: dict) -> "Terminology":
        """From slicerio's terminology dict (``contextName``, ``category``, ``type``, ...)."""
        try:
            return cls(
                category=Code.parse(d["category"]),
                type=Code.parse(d["type"]),
                type_modifier=Code.parse(d.get("typeModifier", ())),
                anatomic_region=Code.parse(d.get("anatomicRegion", ())),
                anatomic_region_modifier=Code.parse(d.get("anatomicRegionModifier", ())),
                context_name=d.get("contextName", cls.context_name),
                anatomic_context_name=d.get("anatomicContextName", cls.anatomic_context_name),
            )
        except (KeyError, TypeError) as e:
            raise GTVError(f"terminology needs a category and a type as [scheme, value, meaning] ({e})") from None


def terminology_context_json() -> dict:
    """The terminology context of :data:`TARGET_TYPES` in 3D Slicer's segment-context format (a
    ``.term.json``), for Slicer's terminology selector."""
    def code(c: Code) -> dict:
        return {"CodingSchemeDesignator": c.scheme, "CodeValue": c.value, "CodeMeaning": c.meaning}

    types = [{**code(t.code), "3dSlicerLabel": name, "recommendedDisplayRGBValue": [round(255 * v) for v in t.color]}
             for name, t in TARGET_TYPES.items()]
    return {
        "SegmentationCategoryTypeContextName": TERMINOLOGY_CONTEXT,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
        "SegmentationCodes": {"Category": [{**code(TARGET_CATEGORY), "showAnatomy": True, "Type": types}]},
    }


GTV_COLOR = TARGET_TYPES["GTV"].color


# Slicer's conversion parameters, as Slicer writes them; {geometry} is filled in per file.
# Descriptions hold a literal backslash-n: a NRRD header line cannot hold a newline.
_CONVERSION_PARAMETERS = (
    ("Collapse labelmaps", "1", "Merge the labelmaps into as few shared labelmaps as possible 1 = created labelmaps will be shared if possible without overwriting each other."),
    ("Compute surface normals", "1", "Compute surface normals. 1 (default) = surface normals are computed. 0 = surface normals are not computed (slightly faster but produces less smooth surface display)."),
    ("Crop to reference image geometry", "0", "Crop the model to the extent of reference geometry. 0 (default) = created labelmap will contain the entire model. 1 = created labelmap extent will be within reference image extent."),
    ("Decimation factor", "0.0", "Desired reduction in the total number of polygons. Range: 0.0 (no decimation) to 1.0 (as much simplification as possible). Value of 0.8 typically reduces data set size by 80% without losing too much details."),
    ("Default slice thickness", "0.0", "Default thickness for contours if slice spacing cannot be calculated."),
    ("End capping", "1", "Create end cap to close surface inside contours on the top and bottom of the structure.\\n0 = leave contours open on surface exterior.\\n1 (default) = close surface by generating smooth end caps.\\n2 = close surface by generating straight end caps."),
    ("Fractional labelmap oversampling factor", "1", "Determines the oversampling of the reference image geometry. All segments are oversampled with the same value (value of 1 means no oversampling)."),
    ("Joint smoothing", "0", "Perform joint smoothing."),
    ("Oversampling factor", "1", "Determines the oversampling of the reference image geometry. If it's a number, then all segments are oversampled with the same value (value of 1 means no oversampling). If it has the value \"A\", then automatic oversampling is calculated."),
    ("Reference image geometry", "{geometry}", "Image geometry description string determining the geometry of the labelmap that is created in course of conversion. Can be copied from a volume, using the button."),
    ("Smoothing factor", "-0.5", "Smoothing factor. Range: 0.0 (no smoothing) to 1.0 (strong smoothing)."),
    ("Threshold fraction", "0.5", "Determines the threshold that the closed surface is created at as a fractional value between 0 and 1."),
)


def _optional_import(module: str, package: str, purpose: str):
    """Import a package only the segmentation files need, so reading CT never depends on it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GTVError(f"the Python package {package} is needed to {purpose}: pip install {package}") from None


def _num(v: float) -> str:
    return f"{float(v) + 0.0:.17g}"  # + 0.0 turns -0.0 into 0.0


def _ijk_to_lps(image: Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(image.direction, dtype=float).reshape(3, 3) * np.asarray(image.spacing, dtype=float)
    m[:3, 3] = image.origin
    return m


def _reference_geometry(image: Image) -> str:
    """Slicer's geometry string: IJK-to-RAS matrix row by row, then the extent, each ``;``-terminated."""
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _ijk_to_lps(image)
    nx, ny, nz = image.array.shape[::-1]
    values = [_num(v) for v in ijk_to_ras.ravel()] + [str(v) for v in (0, nx - 1, 0, ny - 1, 0, nz - 1)]
    return "".join(v + ";" for v in values)


def _check_header_text(label: str, text: str) -> None:
    if not (text.isascii() and text.isprintable()) or "|" in text or "~" in text:
        raise GTVError(f"segment {label} {text!r} must be printable ASCII without '|' or '~'")


def write_seg_nrrd(
    mask: Image,
    path: str | Path,
    name: str = "GTV",
    color: tuple[float, float, float] = GTV_COLOR,
    terminology: Terminology | dict | None = None,
) -> None:
    """Write a one-segment 3D Slicer segmentation (``.seg.nrrd``), atomically.

    The file is a gzip uint8 label map NRRD in LPS space on the mask's grid (label 1 = the segment)
    with Slicer's segmentation header fields, so Slicer loads it as a segmentation node with the
    given name, colour and terminology, and ``slicerio`` reads it.

    The header is written here rather than by slicerio's ``write_segmentation``, which gives the same
    file (a test compares them) but took 8-14x longer at the same gzip level (150 x 512 x 512: 0.97 s
    against 0.12 s; 1000 slices: 9.5 s against 0.7 s, one after the other on 2026-11-30), and is not among the
    packages the Slicer module installs for inference.

    Args:
        mask: binary mask (non-zero voxels are the segment), ``(z, y, x)``.
        path: output file, ending in ``.seg.nrrd`` (or ``.nrrd``).
        name: segment name.
        color: RGB in [0, 1].
        terminology: a :class:`Terminology`, a slicerio-style terminology dict, or None for the GTV
            terminology without an anatomic region (see :meth:`Terminology.for_region`).
    """
    path = Path(path)
    if not path.name.lower().endswith(".nrrd"):
        raise GTVError(f"a Slicer segmentation file must end in .seg.nrrd, not {path.name}")
    if mask.array.ndim != 3:
        raise GTVError(f"a segmentation needs a 3D mask, got shape {mask.array.shape}")
    _check_header_text("name", name)
    if len(color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in color):
        raise GTVError(f"segment colour must be three values in [0, 1], got {tuple(color)}")
    if terminology is None:
        terminology = Terminology()
    elif isinstance(terminology, dict):
        terminology = Terminology.from_dict(terminology)
    entry = terminology.entry_string()
    _check_header_text("terminology", entry.replace("~", ""))

    nx, ny, nz = mask.array.shape[::-1]
    direction = np.asarray(mask.direction, dtype=float).reshape(3, 3)
    # One row per index axis: that axis's direction (a column of the direction matrix) times its spacing.
    axes = (direction * np.asarray(mask.spacing, dtype=float)).T
    geometry = _reference_geometry(mask)
    fields = {
        "type": "uint8",
        "dimension": "3",
        "space": "left-posterior-superior",
        "sizes": f"{nx} {ny} {nz}",
        "space directions": " ".join(_vector(row) for row in axes),
        "kinds": "domain domain domain",
        "encoding": "gzip",
        "space origin": _vector(mask.origin),
    }
    custom = {
        "Segment0_Color": " ".join(f"{float(c):.6g}" for c in color),
        "Segment0_ColorAutoGenerated": "0",
        # The full grid, not the tumour's bounding box: some Slicer versions crop a shared layer to
        # the first segment's extent.
        "Segment0_Extent": f"0 {nx - 1} 0 {ny - 1} 0 {nz - 1}",
        "Segment0_ID": "Segment_1",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment0_Name": name,
        "Segment0_NameAutoGenerated": "0",
        # Trailing "|" because older Slicer versions require it.
        "Segment0_Tags": f"Segmentation.Status:inprogress|TerminologyEntry:{entry}|",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ConversionParameters": "&".join(
            f"{n}|{v.format(geometry=geometry)}|{d}" for n, v, d in _CONVERSION_PARAMETERS
        ) + "&",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    text = "NRRD0004\n# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n"
    text += "".join(f"{k}: {v}\n" for k, v in fields.items())
    text += "".join(f"{k}:={v}\n" for k, v in custom.items()) + "\n"
    voxels = np.ascontiguousarray(mask.array != 0).view(np.uint8)  # (z, y, x): NRRD's x-fastest order
    # The header by hand and the voxels through ``gz`` (ISA-L's level 1 when installed): pynrrd took
    # 35 ms for lung2's mask (61 x 512 x 512), mostly zlib; this 4 ms, into a smaller file.
    data = gz.gzip_bytes(memoryview(voxels).cast("B"), level=1)
    with atomic_output(path) as tmp:
        _write_file(tmp, (text.encode("ascii"), data))


def _write_file(path: Path, parts) -> None:
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)


def _vector(values) -> str:
    return "(" + ",".join(_num(v) for v in values) + ")"


def _write_nrrd(nrrd, path: str | Path, voxels: np.ndarray, header: dict) -> None:
    """Write ``voxels`` ``(z, y, x)`` with ``header`` atomically, the same bytes for the same mask.

    pynrrd stamps the time of writing into a header comment; it is dropped so that a mask gives
    one file whenever and wherever it is written (a Ray batch's outputs are byte-identical to a
    serial run's, and a re-run can be checked with a hash).
    """
    with atomic_output(path) as tmp:
        # index_order="C": the array is (z, y, x); pynrrd writes it as NRRD's x-fastest (x, y, z).
        # gzip level 1: a 150 x 512 x 512 mask writes in 0.10 s instead of 0.22 s (level 6) and
        # takes 174 kB instead of 40 kB; the time counts against a GPU case's 0.5 s, the bytes do not.
        nrrd.write(str(tmp), voxels, header, compression_level=1, index_order="C")
        data = Path(tmp).read_bytes()
        stamp = re.search(rb"\n# on [0-9: -]+\(GMT\)\.\n", data[:256])
        if stamp is not None:
            Path(tmp).write_bytes(data[: stamp.start() + 1] + data[stamp.end():])


def read_seg_nrrd(path: str | Path, segment: str | None = None) -> tuple[Image, dict]:
    """Read a Slicer ``.seg.nrrd`` with slicerio.

    Args:
        path: the segmentation file.
        segment: a segment ID or name: return its binary mask. None: return the stored label map
            (only possible when all segments share one layer).

    Returns:
        ``(image, metadata)``: the voxels ``(z, y, x)`` with their geometry, and slicerio's
        segmentation dict without the voxels (``segments`` with name, color, terminology, ...).

    Raises:
        GTVError: missing or unreadable file, unknown segment, overlapping layers without ``segment``.
    """
    slicerio = _optional_import("slicerio", "slicerio", "read a .seg.nrrd")

    path = Path(path)
    if not path.is_file():
        raise GTVError(f"segmentation file not found: {path}")
    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as e:  # slicerio raises IOError, pynrrd's NRRDError, ValueError...
        logger.debug("slicerio could not read %s: %s", path, e)
        raise GTVError(f"{path.name} is not a readable Slicer segmentation (.seg.nrrd)") from None
    voxels = seg.pop("voxels")
    if segment is not None:
        try:
            voxels = slicerio.segment_mask({**seg, "voxels": voxels}, segment).astype(np.uint8)
        except KeyError:
            names = ", ".join(s.get("name", s["id"]) for s in seg["segments"])
            raise GTVError(f"{path.name} has no segment {segment!r} (segments: {names})") from None
    elif voxels.ndim != 3:
        raise GTVError(f"{path.name} stores overlapping segments in {voxels.shape[0]} layers; name the segment to read")
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing
    image = Image(
        array=np.ascontiguousarray(voxels.transpose(2, 1, 0)),  # slicerio's (i, j, k) -> (z, y, x)
        spacing=tuple(float(v) for v in spacing),
        origin=tuple(float(v) for v in ijk_to_lps[:3, 3]),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    return image, seg


def regrid_seg_nrrd(path: str | Path, like: Image) -> None:
    """Rewrite a ``.seg.nrrd`` in place so that it lies exactly on ``like``'s grid.

    3D Slicer's segmentation writer keeps the physical voxels but not the grid: for a left-handed
    grid (a flipped or some oblique CTs) it stores the slice axis reversed, with another origin and
    direction, and spacings pick up rounding (2.4999999999999991). Each layer is put back onto the
    input's grid by physical position (nearest neighbour on the same lattice, so no voxel changes),
    and the geometry fields, extents and reference geometry are rewritten; every segment field
    (names, colours, terminology, layers) is kept.

    Raises:
        GTVError: the file cannot be read, or its voxels do not lie on ``like``'s lattice.
    """
    nrrd = _optional_import("nrrd", "pynrrd", "rewrite a .seg.nrrd")
    from .io import resample_to

    path = Path(path)
    try:
        data, header = nrrd.read(str(path), index_order="C")
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, OSError...
        raise GTVError(f"{path.name} is not a readable segmentation file ({type(exc).__name__})") from None
    directions = np.asarray(header["space directions"], dtype=float)
    spatial = [k for k in range(directions.shape[0]) if np.isfinite(directions[k]).all()]
    if len(spatial) != 3 or header.get("space") not in ("left-posterior-superior", "LPS"):
        raise GTVError(f"{path.name} is not a 3D LPS segmentation (space {header.get('space')!r})")
    file_axes = directions[spatial]  # rows: index axes x, y, z
    spacing = np.linalg.norm(file_axes, axis=1)
    source = Image(np.zeros((1, 1, 1), np.uint8), tuple(float(v) for v in spacing),
                   tuple(float(v) for v in header["space origin"]),
                   tuple(float(v) for v in (file_axes / spacing[:, None]).T.ravel()))
    # NRRD's list axis (layers) is the fastest, so the last axis in C order.
    layers = data[..., None] if data.ndim == 3 else data
    out = []
    for k in range(layers.shape[-1]):
        layer = Image(np.ascontiguousarray(layers[..., k]), source.spacing, source.origin, source.direction)
        moved = resample_to(layer, like, nearest=True)
        if int(moved.array.astype(bool).sum()) != int(layer.array.astype(bool).sum()):
            raise GTVError(f"{path.name} does not lie on the input's voxel lattice; refusing to move its voxels")
        out.append(moved.array)
    voxels = out[0] if data.ndim == 3 else np.stack(out, axis=-1)
    d = np.asarray(like.direction, dtype=float).reshape(3, 3) * np.asarray(like.spacing, dtype=float)
    new_directions = directions.copy()
    new_directions[spatial] = d.T
    header["space directions"] = new_directions
    header["space origin"] = np.asarray(like.origin, dtype=float)
    nx, ny, nz = like.array.shape[::-1]
    for key in [k for k in header if k.startswith("Segment") and k.endswith("_Extent")]:
        header[key] = f"0 {nx - 1} 0 {ny - 1} 0 {nz - 1}"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    params = header.get("Segmentation_ConversionParameters")
    if params:
        parts = []
        for item in params.split("&"):
            name, sep, rest = item.partition("|")
            if name == "Reference image geometry" and sep:
                rest = _reference_geometry(like) + "|" + rest.partition("|")[2]
            parts.append(name + sep + rest)
        header["Segmentation_ConversionParameters"] = "&".join(parts)
    for key in ("sizes", "space dimension"):
        header.pop(key, None)
    _write_nrrd(nrrd, path, voxels, header)
