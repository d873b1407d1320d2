"""Reading and writing: real DICOM/NRRD/NIfTI from ../shared/data, bad inputs, atomic outputs."""

import sys
import warnings
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from GTVAutoSegLib import io, segfile
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.image import Image
from GTVAutoSegLib.io import read_ct, read_image, read_mask, resample_to, write_labelmap
from GTVAutoSegLib.outputs import atomic_output
from GTVAutoSegLib.segfile import GTV_COLOR, Terminology, read_seg_nrrd, write_seg_nrrd

# Index axes x -> posterior, y -> inferior, z -> right: no column is the identity's, and the matrix is
# not symmetric, so a transposed direction shows.
PERMUTED = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def synthetic_mask(direction=PERMUTED) -> Image:
    array = np.zeros((6, 7, 8), np.uint8)
    array[1:4, 2:5, 3:7] = 1
    array[5, 0, 0] = 1  # a corner voxel shows any axis mix-up
    return Image(array, (0.5, 0.75, 2.5), (-100.25, 20.5, 30.0), direction)


def write_sitk(array, path, spacing=None, vector=False):
    img = sitk.GetImageFromArray(array, isVector=vector)
    if spacing:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def ijk_to_lps(image: Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.reshape(image.direction, (3, 3)) @ np.diag(image.spacing)
    m[:3, 3] = image.origin
    return m


# ------------------------------------------------------------------------------------------ real data


def _dicom_header(path: str) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
    orientation = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
    return position, orientation


@pytest.fixture(scope="module")
def totalseg_ct(shared_data) -> Image:
    """The 20-slice CT series, read once for the tests that need it."""
    return read_ct(shared_data / "dicom" / "totalseg_ct20")


def test_dicom_series_has_the_geometry_of_its_headers(shared_data, totalseg_ct):
    folder = shared_data / "dicom" / "totalseg_ct20"
    ct = totalseg_ct
    assert ct.array.shape == (20, 512, 512)
    assert ct.array.dtype == np.int16
    assert ct.spacing == pytest.approx((0.977, 0.977, 2.0), abs=1e-3)

    files = sorted(str(p) for p in folder.iterdir())
    headers = [_dicom_header(f) for f in files]
    orientation = headers[0][1]
    normal = np.cross(orientation[:3], orientation[3:])
    first = min(range(len(files)), key=lambda i: headers[i][0] @ normal)  # most inferior slice
    direction = np.column_stack([orientation[:3], orientation[3:], normal])
    assert np.reshape(ct.direction, (3, 3)) == pytest.approx(direction, abs=1e-6)
    assert ct.origin == pytest.approx(headers[first][0], abs=1e-4)

    # That slice read on its own: same origin, same voxels as slice 0 of the volume.
    single = sitk.ReadImage(files[first])
    assert ct.origin == pytest.approx(single.GetOrigin(), abs=1e-4)
    assert np.array_equal(ct.array[0], sitk.GetArrayFromImage(single)[0])

    # Picking one file of the series reads the whole series.
    assert read_image(files[5]).same_grid(ct)


def test_flipped_label_map_is_matched_by_physical_space(shared_data, totalseg_ct):
    ct = totalseg_ct
    path = shared_data / "dicom" / "totalseg_ct20_labels.nii.gz"
    raw = sitk.ReadImage(str(path))
    assert raw.GetDirection() == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, 1))
    labels = sitk.GetArrayFromImage(raw)
    assert not np.array_equal(labels, np.flip(labels, axis=1))  # else the test proves nothing

    mask = read_mask(path, like=ct)
    assert mask.same_grid(ct) and mask.array.dtype == np.uint8
    assert np.array_equal(mask.array, np.flip(labels != 0, axis=1))

    label = int(np.unique(labels)[-1])
    one = read_mask(path, like=ct, label=label)
    assert np.array_equal(one.array, np.flip(labels == label, axis=1))


def test_lung_nrrd_reads_as_hounsfield_ct(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real HU: no warning
        ct = read_ct(shared_data / "lung_pyradiomics" / "lung1_image.nrrd")
    assert ct.array.shape == (48, 512, 512)
    assert ct.spacing == pytest.approx((0.5703, 0.5703, 5.0), abs=1e-3)
    assert ct.array.dtype == np.int16


def test_seg_nrrd_of_a_real_mask_reads_back_in_slicerio(shared_data, tmp_path):
    ct = read_ct(shared_data / "lung_pyradiomics" / "lung2_image.nrrd")
    mask = read_mask(shared_data / "lung_pyradiomics" / "lung2_label.nrrd", like=ct)
    assert mask.same_grid(ct) and 0 < mask.array.sum() < mask.array.size
    out = tmp_path / "lung2.seg.nrrd"
    write_seg_nrrd(mask, out, terminology=Terminology.for_region("lung"))
    assert [p.name for p in tmp_path.iterdir()] == ["lung2.seg.nrrd"]

    seg = slicerio.read_segmentation(str(out))
    assert np.array_equal(seg["voxels"].transpose(2, 1, 0), mask.array)
    assert np.asarray(seg["ijkToLPS"]) == pytest.approx(ijk_to_lps(mask), abs=1e-6)
    (segment,) = seg["segments"]
    assert segment["name"] == "GTV" and segment["labelValue"] == 1 and segment["layer"] == 0
    assert segment["color"] == pytest.approx(GTV_COLOR)
    assert segment["terminology"] == {
        "contextName": "GTVAutoSeg - Radiotherapy target volumes",
        "category": ["SCT", "49755003", "Morphologically Altered Structure"],
        "type": ["SCT", "228791009", "GTV"],
        "anatomicContextName": "Anatomic codes - DICOM master list",
        "anatomicRegion": ["SCT", "39607008", "Lung"],
    }
    assert seg["masterRepresentation"] == "Binary labelmap"
    assert seg["containedRepresentationNames"] == ["Binary labelmap"]
    assert seg["referenceImageExtentOffset"] == [0, 0, 0]

    # ITK's NRRD reader (the one Slicer uses for volumes) sees the same grid.
    assert Image.from_sitk(sitk.ReadImage(str(out))).same_grid(mask)
    image, meta = read_seg_nrrd(out)
    assert image.same_grid(mask) and np.array_equal(image.array, mask.array)
    assert meta["segments"][0]["name"] == "GTV"


def test_three_slice_dicom_series(shared_data):
    ct = read_ct(shared_data / "dicom" / "dcmqi_ct3")
    assert ct.array.shape == (3, 512, 512)


def test_rtstruct_and_seg_are_not_image_series(shared_data):
    # rtutils_mock: 2 CT slices and an RTSTRUCT; only the CT is read.
    assert read_image(shared_data / "dicom" / "rtutils_mock").array.shape[0] == 2
    # dicom/ holds only a DICOM SEG file at its top level.
    with pytest.raises(GTVError) as e:
        read_image(shared_data / "dicom")
    assert "no DICOM CT image series" in one_line_error(e)
    with pytest.raises(GTVError, match="DICOM SEG object"):
        read_image(shared_data / "dicom" / "dcmqi_ct3_liver_seg.dcm")


def test_folder_with_two_series_reads_the_larger_and_says_so(shared_data, tmp_path):
    # Copies into pytest's temporary folder only; never into the repository.
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        (tmp_path / f"a_{name}").write_bytes((shared_data / "dicom" / "dcmqi_ct3" / name).read_bytes())
    for name in ("ct_1.dcm", "ct_2.dcm", "rt.dcm"):
        (tmp_path / f"b_{name}").write_bytes((shared_data / "dicom" / "rtutils_mock" / name).read_bytes())
    with pytest.warns(UserWarning) as caught:
        ct = read_image(tmp_path)
    assert ct.array.shape[0] == 3
    text = str(caught[0].message)
    assert "2 CT series" in text and "(3 slices)" in text and "(2 slices)" in text  # the skipped one is named


# ----------------------------------------------------------------------------------------- bad inputs


def _text(tmp_path):
    p = tmp_path / "notes.nii.gz"
    p.write_text("this is not an image\n")
    return p


def _random(tmp_path):
    p = tmp_path / "noise.nrrd"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return p


def _two_d(tmp_path):
    return write_sitk(np.zeros((16, 16), np.int16), tmp_path / "slice.nrrd")


def _four_d(tmp_path):
    img = sitk.Image([4, 4, 4, 3], sitk.sitkInt16)
    sitk.WriteImage(img, str(tmp_path / "series.nii.gz"))
    return tmp_path / "series.nii.gz"


def _vector(tmp_path):
    return write_sitk(np.zeros((4, 5, 6, 3), np.float32), tmp_path / "rgb.nrrd", vector=True)


def _with(value):
    def make(tmp_path):
        a = np.full((4, 5, 6), -1000.0, np.float32)
        a[2, 2, 2] = value
        return write_sitk(a, tmp_path / "bad.nrrd")
    return make


def _truncated(tmp_path):
    path = write_sitk(np.zeros((20, 30, 40), np.int16), tmp_path / "cut.nrrd")
    path.write_bytes(path.read_bytes()[:5000])  # header intact, voxels cut short
    return path


def _empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp_path: tmp_path / "nowhere.nii.gz", "input not found"),
        (_text, "not a readable image"),
        (_random, "not a readable image"),
        (_two_d, "2D image"),
        (_four_d, "4D image"),
        (_vector, "3 values per voxel"),
        (_with(np.nan), "1 NaN and 0 infinite"),
        (_with(np.inf), "0 NaN and 1 infinite"),
        (_truncated, "truncated"),
        (_empty_folder, "no DICOM CT image series"),
    ],
    ids=["missing", "text", "random-bytes", "2d", "4d", "vector", "nan", "inf", "truncated", "empty-folder"],
)
def test_bad_inputs_give_one_line_errors(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(GTVError) as e:
        read_image(path)
    assert expected in one_line_error(e)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((4, 5, 6), -1024, np.int16), "constant"),
        (np.random.default_rng(1).integers(-1024, -950, (4, 5, 6)).astype(np.int16), "all air"),
    ],
)
def test_ct_without_a_patient_is_refused(tmp_path, array, expected):
    path = write_sitk(array, tmp_path / "air.nii.gz")
    read_image(path)  # a valid image...
    with pytest.raises(GTVError) as e:  # ...but not a CT to segment
        read_ct(path)
    assert expected in one_line_error(e)


def test_empty_volume_is_refused(monkeypatch):
    empty = Image(np.zeros((0, 5, 5), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), PERMUTED)
    monkeypatch.setattr(io, "read_image", lambda path: empty)
    with pytest.raises(GTVError, match="empty"):
        read_ct("whatever.nii.gz")


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.linspace(0, 1, 120, dtype=np.float32).reshape(4, 5, 6), "normalised"),
        (np.arange(120, dtype=np.uint16).reshape(4, 5, 6) * 30, "rescale intercept"),
        (np.linspace(-32000, 60000, 120, dtype=np.float32).reshape(4, 5, 6), "far outside"),
    ],
    ids=["unit-range", "no-negatives", "huge-range"],
)
def test_non_hounsfield_intensities_warn(tmp_path, array, expected):
    path = write_sitk(array, tmp_path / "odd.nrrd")
    with pytest.warns(UserWarning, match=expected):
        ct = read_ct(path)
    assert ct.array.dtype == array.dtype  # pixel type kept as read


def test_probability_map_is_not_a_mask(tmp_path):
    path = write_sitk(np.full((3, 4, 5), 0.4, np.float32), tmp_path / "prob.nii.gz")
    with pytest.raises(GTVError, match="probability map"):
        read_mask(path)


def test_unknown_region_and_bad_name(tmp_path):
    with pytest.raises(GTVError, match="head_and_neck"):
        Terminology.for_region("knee")
    with pytest.raises(GTVError, match="printable ASCII"):
        write_seg_nrrd(synthetic_mask(), tmp_path / "x.seg.nrrd", name="GTV|1")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- writing


def test_seg_nrrd_keeps_a_permuted_geometry_and_header_fields(tmp_path):
    mask = synthetic_mask()
    out = tmp_path / "case.seg.nrrd"
    terminology = Terminology.for_region("head_and_neck")
    write_seg_nrrd(mask, out, name="GTV primary", color=(0.2, 0.4, 0.6), terminology=terminology)

    _, header = nrrd.read(str(out), index_order="C")
    assert header["space"] == "left-posterior-superior"
    # One row per index axis: direction column * spacing.
    assert header["space directions"] == pytest.approx(
        np.array([[0, 0.5, 0], [0, 0, -0.75], [-2.5, 0, 0]]))
    assert header["Segment0_Tags"] == (
        "Segmentation.Status:inprogress|TerminologyEntry:GTVAutoSeg - Radiotherapy target volumes"
        "~SCT^49755003^Morphologically Altered Structure~SCT^228791009^GTV~^^"
        "~Anatomic codes - DICOM master list~SCT^774007^Head and Neck~^^|"
    )
    assert header["Segment0_Extent"] == "0 7 0 6 0 5"
    # Reference geometry: IJK-to-RAS (L and P negated) row by row, then the extent.
    ref_geometry = [p["value"] for p in slicerio.read_segmentation(str(out))["conversionParameters"]
                    if p["name"] == "Reference image geometry"][0]
    numbers = [float(v) for v in ref_geometry.rstrip(";").split(";")]
    expected = np.diag([-1, -1, 1, 1]) @ ijk_to_lps(mask)
    assert numbers[:16] == pytest.approx(expected.ravel().tolist())
    assert numbers[16:] == [0, 7, 0, 6, 0, 5]

    image, meta = read_seg_nrrd(out, segment="GTV primary")
    assert image.same_grid(mask) and np.array_equal(image.array, mask.array)
    assert meta["segments"][0]["color"] == pytest.approx([0.2, 0.4, 0.6])
    assert Terminology.from_dict(meta["segments"][0]["terminology"]) == terminology
    assert Image.from_sitk(sitk.ReadImage(str(out))).same_grid(mask)
    with pytest.raises(GTVError, match="no segment 'lung'"):
        read_seg_nrrd(out, segment="lung")


def test_overlapping_segments_need_a_segment_name():
    path = Path(slicerio.__file__).parent / "data" / "SegmentationOverlapping.seg.nrrd"
    if not path.exists():
        pytest.skip(f"slicerio's example file not installed at {path}")
    with pytest.raises(GTVError, match="overlapping segments in 2 layers"):
        read_seg_nrrd(path)
    ribs, meta = read_seg_nrrd(path, segment="ribs")
    assert ribs.array.shape == (34, 128, 128) and ribs.array.max() == 1
    assert ribs.spacing == pytest.approx((3.046876, 3.046876, 10.0), abs=1e-5)
    assert len(meta["segments"]) > 1 and "voxels" not in meta


def test_labelmap_round_trip_keeps_geometry(tmp_path):
    mask = synthetic_mask()
    mask = mask.with_array(mask.array * 3)  # any non-zero is foreground
    for name in ("case.nii.gz", "case.nrrd"):
        write_labelmap(mask, tmp_path / name)
        back = read_image(tmp_path / name)
        assert back.same_grid(mask) and back.array.dtype == np.uint8
        assert np.array_equal(back.array, (mask.array != 0).astype(np.uint8))
    with pytest.raises(GTVError, match="cannot write"):
        write_labelmap(mask, tmp_path / "case.mhd")


def test_resample_to_moves_voxels_by_physical_position():
    mask = synthetic_mask(direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    nz, ny, nx = mask.array.shape
    # The same grid with x reversed: origin at the far x end, x axis pointing back.
    flipped = Image(np.zeros_like(mask.array), mask.spacing,
                    (mask.origin[0] + (nx - 1) * mask.spacing[0], mask.origin[1], mask.origin[2]),
                    (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    out = resample_to(mask, flipped, nearest=True)
    assert out.same_grid(flipped)
    assert np.array_equal(out.array, mask.array[:, :, ::-1])


def test_atomic_output_keeps_the_suffix_and_renames(tmp_path):
    target = tmp_path / "case.seg.nrrd"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".case.tmp-") and tmp.name.endswith(".seg.nrrd")
        tmp.write_bytes(b"done")
        assert not target.exists()
    assert target.read_bytes() == b"done" and [p.name for p in tmp_path.iterdir()] == ["case.seg.nrrd"]
    with pytest.raises(GTVError, match="output folder does not exist"):
        with atomic_output(tmp_path / "missing" / "x.nii.gz"):
            pass


def test_atomic_output_of_a_240_character_name_keeps_its_temporary_name_short(tmp_path):
    target = tmp_path / ("c" * 240 + "_label.nii.gz")  # 253 bytes: fits, but name + ".tmp-..." would not
    with atomic_output(target) as tmp:
        assert len(tmp.name.encode()) <= 255
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    with pytest.raises(GTVError, match="longer than the file system"):
        with atomic_output(tmp_path / ("c" * 250 + "_label.nii.gz")):
            pass


def test_atomic_output_onto_a_folder_is_one_line(tmp_path):
    (tmp_path / "taken.csv").mkdir()
    with pytest.raises(GTVError, match="it is a folder"):
        with atomic_output(tmp_path / "taken.csv") as tmp:
            tmp.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["taken.csv"]


def test_sheared_grid_is_never_written_off_grid(tmp_path):
    sheared = Image(np.zeros((3, 4, 5), np.uint8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                    (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(GTVError, match="cannot hold this image's grid exactly"):
        write_labelmap(sheared, tmp_path / "x_label.nii.gz")
    assert list(tmp_path.iterdir()) == []


def _half_write_then_fail(file, *args, **kwargs):
    """Stands in for ``segfile._write_file(file, parts)``: a few bytes, then the disk fills up."""
    Path(str(file)).write_bytes(b"NRRD0005\npartial")
    raise OSError(28, "No space left on device")


def _sitk_half_write_then_fail(image, file, *args, **kwargs):
    """Stands in for ``sitk.WriteImage(image, file, ...)``."""
    _half_write_then_fail(file)


@pytest.mark.parametrize("writer", ["seg", "labelmap"])
def test_failing_writer_leaves_nothing_behind(tmp_path, monkeypatch, writer):
    target = tmp_path / ("out.seg.nrrd" if writer == "seg" else "out.nii.gz")
    if writer == "seg":
        monkeypatch.setattr(segfile, "_write_file", _half_write_then_fail)
        with pytest.raises(GTVError, match="disk or quota is full"):  # one line, not a traceback
            write_seg_nrrd(synthetic_mask(), target)
    else:
        monkeypatch.setattr(sitk, "WriteImage", _sitk_half_write_then_fail)
        with pytest.raises(GTVError, match="disk or quota is full"):
            write_labelmap(synthetic_mask(), target)
    assert list(tmp_path.iterdir()) == []


def test_failing_writer_keeps_the_previous_output(tmp_path, monkeypatch):
    target = tmp_path / "out.seg.nrrd"
    write_seg_nrrd(synthetic_mask(), target)
    before = target.read_bytes()
    monkeypatch.setattr(segfile, "_write_file", _half_write_then_fail)
    with pytest.raises(GTVError):
        write_seg_nrrd(synthetic_mask().with_array(np.zeros((6, 7, 8), np.uint8)), target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.seg.nrrd"]


def test_seg_nrrd_is_written_without_pynrrd_and_rewriting_one_says_it_is_missing(tmp_path, monkeypatch):
    """write_seg_nrrd writes its header itself; regrid_seg_nrrd (a Slicer-written file's arbitrary
    header) needs pynrrd and says so in one line."""
    target = tmp_path / "x.seg.nrrd"
    mask = synthetic_mask()
    monkeypatch.setitem(sys.modules, "nrrd", None)  # makes `import nrrd` fail
    write_seg_nrrd(mask, target)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), mask.array != 0)
    with pytest.raises(GTVError, match="pip install pynrrd"):
        segfile.regrid_seg_nrrd(target, mask)
    assert [p.name for p in tmp_path.iterdir()] == ["x.seg.nrrd"]


def test_without_simpleitk_the_library_imports_and_file_io_says_what_is_missing(tmp_path):
    """The borrowed GPU machines have no SimpleITK: arrays and networks must still work there."""
    import subprocess

    src = tmp_path / "ct.nii.gz"
    write_labelmap(synthetic_mask(), src)
    script = ("import sys; sys.modules['SimpleITK'] = None\n"
              "from GTVAutoSegLib import io, pipeline\n"
              "from GTVAutoSegLib.errors import GTVError\n"
              "try:\n"
              f"    io.read_ct({str(src)!r})\n"
              "except GTVError as exc:\n"
              "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("SimpleITK is not installed") and done.stdout.count("\n") == 1


def test_segments_are_coded_as_the_model_s_radiotherapy_target():
    from GTVAutoSegLib.segfile import TARGET_TYPES, target_color, target_type

    assert [target_type(t) for t in ("PTV70", "ptv_high", "GTVp", "CTV_56", "ITV")] == ["PTV", "PTV", "GTV", "CTV", "ITV"]
    ptv = Terminology.for_target("PTV70", "head_and_neck")
    assert ptv.type == TARGET_TYPES["PTV"].code and str(ptv.type) == "SCT^228793007^PTV"
    assert ptv.anatomic_region.value == "774007"
    assert Terminology.for_region(None) == Terminology.for_target("GTV") == Terminology()
    assert target_color("PTV70") != target_color("GTV") == GTV_COLOR
    with pytest.raises(GTVError, match="does not name a radiotherapy target volume"):
        Terminology.for_target("Tumour")


# ------------------------------------------------------------- issue 12: what ITK lets through


def _nifti(tmp_path, name="ct.nii.gz", array=None):
    array = np.arange(8 * 10 * 12, dtype=np.int16).reshape(8, 10, 12) - 500 if array is None else array
    return write_sitk(array, tmp_path / name, spacing=(0.8, 0.9, 2.5))


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_truncated_nifti_is_refused_not_zero_filled(tmp_path, name):
    path = _nifti(tmp_path, name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(GTVError) as e:
        read_image(path)
    assert "truncated" in one_line_error(e)


def test_real_truncated_openkbp_ct_is_refused(shared_data, tmp_path):
    # The case: pt_201 cut to 155,984 bytes was segmented (544 cc instead of 416 cc).
    cut = tmp_path / "ct.nii.gz"
    cut.write_bytes((shared_data / "openkbp" / "validation" / "pt_201" / "ct.nii.gz").read_bytes()[:155_984])
    with pytest.raises(GTVError) as e:
        read_ct(cut)
    assert "truncated" in one_line_error(e)


@pytest.mark.parametrize("value, expected", [(np.nan, "1 NaN and 0 infinite"), (np.inf, "0 NaN and 1 infinite")])
def test_nan_and_inf_in_nifti_are_refused(tmp_path, value, expected):
    import nibabel as nib

    a = np.full((12, 10, 8), -1000.0, np.float32)
    a[3, 4, 5] = value
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(a, np.diag([0.8, 0.9, 2.5, 1.0])), str(path))
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # what ITK does: 0
    with pytest.raises(GTVError) as e:
        read_image(path)
    assert expected in one_line_error(e)


def test_sheared_direction_is_refused_in_nrrd_and_nifti(tmp_path):
    import nibabel as nib

    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    img.SetDirection((1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "shear.nrrd"))
    with pytest.raises(GTVError) as e:
        read_image(tmp_path / "shear.nrrd")
    assert "sheared" in one_line_error(e)
    affine = np.array([[1, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1.0]])
    nii = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine)
    nii.set_qform(None, code=0)
    nii.set_sform(affine, code=1)
    nib.save(nii, str(tmp_path / "shear.nii.gz"))
    with pytest.raises(GTVError) as e:
        read_image(tmp_path / "shear.nii.gz")
    assert "sheared" in one_line_error(e)


def test_oblique_but_orthonormal_direction_is_read(tmp_path):
    c, s = np.cos(0.4), np.sin(0.4)
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(img, str(tmp_path / "oblique.nrrd"))
    assert read_image(tmp_path / "oblique.nrrd").direction == pytest.approx((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))


def test_a_fifo_is_refused_at_once(tmp_path):
    import os

    os.mkfifo(tmp_path / "ct.nii.gz")
    with pytest.raises(GTVError) as e:
        read_image(tmp_path / "ct.nii.gz")
    assert "FIFO" in one_line_error(e)


def test_permission_problem_is_called_so(tmp_path, monkeypatch):
    # Root reads any file, so the operating system's refusal is simulated where it would come from.
    path = _nifti(tmp_path)
    real_open = open

    def deny(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(GTVError) as e:
        read_image(path)
    assert "permission denied" in one_line_error(e)


@pytest.mark.parametrize("kind", ["truncated.mha", "no_raw.mhd"])
def test_itk_noise_never_reaches_the_terminal(tmp_path, capfd, kind):
    path = write_sitk(np.zeros((20, 30, 40), np.int16), tmp_path / kind.split("_")[-1].replace("truncated", "cut"))
    if kind == "truncated.mha":
        path.write_bytes(path.read_bytes()[:3000])
    else:
        path.with_suffix(".raw").unlink()
    with pytest.raises(GTVError) as e:
        read_image(path)
    assert "could not be read" in one_line_error(e)
    assert capfd.readouterr().err == ""


def test_a_header_claiming_a_huge_volume_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.nhdr"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 5000 5000 5000\nendian: little\nencoding: raw\n"
                    "data file: huge.raw\n")
    (tmp_path / "huge.raw").write_bytes(b"\0" * 64)
    with pytest.raises(GTVError) as e:
        read_image(path)
    assert "header is damaged" in one_line_error(e)


def test_gzip_nrrd_with_a_damaged_stream_is_refused(tmp_path):
    """ITK inflates what it can of a gzip NRRD and never checks the stream's end or CRC."""
    path = tmp_path / "ct.nrrd"
    array = (np.arange(6 * 12 * 10, dtype=np.int16).reshape(6, 12, 10) - 300)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=True)
    assert np.array_equal(read_image(path).array, array)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(GTVError) as e:
        read_image(path)
    assert "truncated" in one_line_error(e)
    flipped = bytearray(data)
    flipped[-20] ^= 0x10
    path.write_bytes(bytes(flipped))
    with pytest.raises(GTVError) as e:
        read_image(path)
    assert "truncated or corrupt" in one_line_error(e) or "truncated" in one_line_error(e)


def test_seg_nrrd_bytes_depend_on_the_mask_only(tmp_path):
    # No time of writing anywhere (pynrrd stamps one into a header comment, a gzip header has a
    # field for one), so that a re-run (or a Ray batch worker) writes the same file, checkable by hash.
    write_seg_nrrd(synthetic_mask(), tmp_path / "a.seg.nrrd")
    data = (tmp_path / "a.seg.nrrd").read_bytes()
    assert b"(GMT)" not in data[:300] and data.startswith(b"NRRD0004\n")
    stream = data[data.index(b"\n\n") + 2:]
    assert stream[:2] == b"\x1f\x8b" and stream[4:8] == b"\0\0\0\0"  # gzip magic; MTIME 0: none stored
    write_seg_nrrd(synthetic_mask(), tmp_path / "b.seg.nrrd")
    assert (tmp_path / "b.seg.nrrd").read_bytes() == data
    segfile.regrid_seg_nrrd(tmp_path / "a.seg.nrrd", synthetic_mask())
    assert b"(GMT)" not in (tmp_path / "a.seg.nrrd").read_bytes()[:300]
    assert read_seg_nrrd(tmp_path / "a.seg.nrrd")[0].same_grid(synthetic_mask())


def test_seg_nrrd_is_the_file_slicerio_writes(tmp_path):
    """write_seg_nrrd writes the header itself (slicerio is not installed in Slicer for inference);
    the file must be the one slicerio's create_segmentation + add_segment + write_segmentation give,
    but for the trailing '&' of the conversion parameters (Slicer writes it, slicerio does not)."""
    from GTVAutoSegLib.segfile import _CONVERSION_PARAMETERS, _ijk_to_lps, _reference_geometry

    mask = synthetic_mask()
    terminology = Terminology.for_target("PTV70", "head_and_neck")
    ours = tmp_path / "ours.seg.nrrd"
    write_seg_nrrd(mask, ours, name="PTV70", color=(0.1, 0.55, 0.9), terminology=terminology)

    nx, ny, nz = mask.array.shape[::-1]
    seg = slicerio.create_segmentation((nx, ny, nz), _ijk_to_lps(mask))
    segment = slicerio.add_segment(seg, mask.array.transpose(2, 1, 0) != 0, {
        "id": "Segment_1", "name": "PTV70", "nameAutoGenerated": False, "color": [0.1, 0.55, 0.9],
        "colorAutoGenerated": False, "status": "inprogress", "terminology": terminology.to_dict()})
    segment["extent"] = [0, nx - 1, 0, ny - 1, 0, nz - 1]
    seg["containedRepresentationNames"] = ["Binary labelmap"]
    seg["conversionParameters"] = [{"name": n, "value": v.format(geometry=_reference_geometry(mask)), "description": d}
                                   for n, v, d in _CONVERSION_PARAMETERS]
    theirs = tmp_path / "theirs.seg.nrrd"
    slicerio.write_segmentation(str(theirs), seg, compression_level=1)

    (a, ha), (b, hb) = nrrd.read(str(ours)), nrrd.read(str(theirs))
    assert np.array_equal(a, b) and a.dtype == b.dtype
    assert ha.pop("Segmentation_ConversionParameters") == hb.pop("Segmentation_ConversionParameters") + "&"
    for key in set(ha) | set(hb):
        assert np.array_equal(np.asarray(ha[key]), np.asarray(hb[key])), key


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.nrrd"])
def test_an_intact_file_is_proved_by_its_crc_without_inflating_it_twice(tmp_path, monkeypatch, name):
    """The full checks inflate a whole stream in Python; an intact file needs only a CRC over what
    ITK returned (the stream's trailer), so they must not run."""
    from GTVAutoSegLib import inputcheck

    array = np.arange(8 * 10 * 12, dtype=np.int16).reshape(8, 10, 12) - 500
    path = tmp_path / name
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.8, 0.9, 2.5))
    sitk.WriteImage(img, str(path), useCompression=True)
    stored = inputcheck.StoredBytes.of(path)
    assert stored is not None and stored.confirms(array)
    assert not stored.confirms(array + 1)

    def full_check(p):
        raise AssertionError("full check ran on an intact file")

    monkeypatch.setattr(io, "_full_check", full_check)
    assert np.array_equal(read_image(path).array, array)


@pytest.mark.parametrize("how", ["scaled", "big-endian"])
def test_a_file_the_crc_cannot_prove_is_fully_checked_and_read(tmp_path, monkeypatch, how):
    import nibabel as nib

    a = (np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 50)
    nii = nib.Nifti1Image(a, np.diag([0.8, 0.9, 2.5, 1.0]))
    if how == "scaled":
        nii.header.set_slope_inter(2.0, -1000.0)
    else:
        nii = nib.Nifti1Image(a, np.diag([0.8, 0.9, 2.5, 1.0]), header=nib.Nifti1Header(endianness=">"))
    path = tmp_path / "ct.nii.gz"
    nib.save(nii, str(path))
    ran = []
    monkeypatch.setattr(io, "_full_check", lambda p, full=io._full_check: (ran.append(p), full(p)))
    got = read_image(path).array
    expected = nib.load(str(path)).get_fdata()
    assert ran == [path]
    assert np.array_equal(np.transpose(got, (2, 1, 0)), expected)


# ------------------------------------------------------------------ voxels read without ITK's pass


def _stored_cases(tmp_path):
    """(file, whether the voxels are read here rather than by ITK) for a spread of files."""
    import nibabel as nib

    rng = np.random.default_rng(5)
    ct = rng.integers(-1024, 2000, (5, 6, 7)).astype(np.int16)
    oblique = (0.0, 0.6, 0.8, 1.0, 0.0, 0.0, 0.0, 0.8, -0.6)
    cases = []

    def itk(name, array, compress=True, direction=None):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((0.7, 0.8, 2.5))
        img.SetOrigin((-10.5, 3.25, 100.0))
        if direction:
            img.SetDirection(direction)
        sitk.WriteImage(img, str(tmp_path / name), useCompression=compress)
        return tmp_path / name

    for dtype in (np.int16, np.uint8, np.float32, np.float64, np.int32, np.uint16):
        cases.append((itk(f"ct_{np.dtype(dtype).name}.nrrd", ct.astype(dtype), direction=oblique), True))
    cases.append((itk("raw.nrrd", ct, compress=False), True))
    cases.append((itk("ct.nii.gz", ct, direction=(1, 0, 0, 0, -1, 0, 0, 0, 1)), True))
    cases.append((itk("ct.nii", ct), True))
    nrrd.write(str(tmp_path / "big.nrrd"), ct.astype(">i2"), {"encoding": "gzip", "space": "right-anterior-superior",
               "space directions": np.diag([0.7, 0.8, 2.5]), "space origin": [1.0, 2.0, 3.0]}, index_order="C")
    cases.append((tmp_path / "big.nrrd", False))  # ITK swaps the bytes
    nrrd.write(str(tmp_path / "ras.nrrd"), ct, {"encoding": "gzip", "type": "signed short", "space": "right-anterior-superior",
               "space directions": np.diag([0.7, 0.8, 2.5]), "space origin": [1.0, 2.0, 3.0]}, index_order="C")
    cases.append((tmp_path / "ras.nrrd", True))  # another space: ITK turns the geometry to LPS, not the voxels
    scaled = nib.Nifti1Image(ct, np.diag([0.7, 0.8, 2.5, 1.0]))
    scaled.header.set_slope_inter(2.0, -5.0)
    nib.save(scaled, str(tmp_path / "scaled.nii.gz"))
    cases.append((tmp_path / "scaled.nii.gz", False))  # ITK applies the scaling
    unscaled = nib.Nifti1Image(ct.astype(np.float32), np.diag([-0.7, -0.8, 2.5, 1.0]))
    unscaled.header.set_slope_inter(1.0, 0.0)
    nib.save(unscaled, str(tmp_path / "unscaled.nii.gz"))
    cases.append((tmp_path / "unscaled.nii.gz", True))
    intercept_only = nib.Nifti1Image(ct.astype(np.float32), np.eye(4))
    intercept_only.header["scl_slope"], intercept_only.header["scl_inter"] = 0.0, 5.0
    nib.save(intercept_only, str(tmp_path / "intercept.nii.gz"))
    cases.append((tmp_path / "intercept.nii.gz", False))  # a slope of 0 is none, but ITK adds the intercept
    # a big-endian header with a little-endian sizeof_hdr: NIfTI readers take the byte order from
    # dim[0], so ITK swaps; the header check must not take it for a little-endian file
    nib.save(nib.Nifti1Image(ct, np.diag([0.7, 0.8, 2.5, 1.0]), header=nib.Nifti1Header(endianness=">")),
             str(tmp_path / "mixed.nii"))
    data = bytearray((tmp_path / "mixed.nii").read_bytes())
    data[0:4] = (348).to_bytes(4, "little")
    (tmp_path / "mixed.nii").write_bytes(bytes(data))
    cases.append((tmp_path / "mixed.nii", False))
    return cases


def test_voxels_read_without_itks_pass_are_what_itk_reads(tmp_path, monkeypatch):
    """NRRD and NIfTI files that store the voxels as ITK returns them are inflated (or read) here,
    with ITK's header reading; the image is ITK's to the bit: voxels, type and geometry. Files ITK
    changes on reading (big-endian, scaled) go through ITK."""
    used = []
    original = io._read_stored
    monkeypatch.setattr(io, "_read_stored", lambda *a: used.append(original(*a)) or used[-1])
    for path, fast in _stored_cases(tmp_path):
        used.clear()
        ours = read_image(path)
        theirs = sitk.ReadImage(str(path))
        assert bool(used and used[0] is not None) == fast, path.name
        assert ours.array.dtype == sitk.GetArrayViewFromImage(theirs).dtype, path.name
        assert np.array_equal(ours.array, sitk.GetArrayFromImage(theirs)), path.name
        assert ours.spacing == theirs.GetSpacing() and ours.origin == theirs.GetOrigin(), path.name
        assert ours.direction == theirs.GetDirection(), path.name


@pytest.mark.parametrize("damage", ["cut", "flipped byte", "trailing data", "second member"])
@pytest.mark.parametrize("name", ["ct.nrrd", "ct.nii.gz"])
def test_a_damaged_stream_is_never_read_by_the_shortcut(tmp_path, monkeypatch, name, damage):
    """A stream that is not exactly whole falls back to the thorough reading (which refuses a
    damaged file in its own words); the shortcut never hands back a wrong image."""
    ct = np.random.default_rng(2).integers(-1000, 1000, (6, 40, 50)).astype(np.int16)
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(ct), str(path), useCompression=True)
    data = path.read_bytes()
    start = data.index(b"\n\n") + 2 if name.endswith(".nrrd") else 0
    if damage == "cut":
        data = data[:-100]
    elif damage == "flipped byte":
        data = data[:start + 300] + bytes([data[start + 300] ^ 0x20]) + data[start + 301:]
    elif damage == "trailing data":
        data = data + b"\0" * 64
    else:
        data = data + data[start:]
    path.write_bytes(data)
    used = []
    original = io._read_stored
    monkeypatch.setattr(io, "_read_stored", lambda *a: used.append(original(*a)) or used[-1])
    try:
        image = read_image(path)
    except GTVError:
        image = None
    assert used in ([None], []), damage  # declined, or not tried (a header that does not read)
    if damage in ("cut", "flipped byte"):
        assert image is None


def test_gzip_backends_agree_and_refuse_the_same_streams(monkeypatch):
    import importlib
    import zlib

    from GTVAutoSegLib import gz

    data = np.random.default_rng(1).integers(0, 3, 200_000).astype(np.uint8).tobytes()
    try:
        for backend in ("isal", "zlib"):
            if backend == "zlib":
                monkeypatch.setitem(sys.modules, "isal", None)
            importlib.reload(gz)
            if backend == "isal" and gz.BACKEND != "isal":
                continue  # python-isal not installed here: zlib only
            assert gz.BACKEND == backend
            packed = gz.gzip_bytes(data)
            assert zlib.decompress(packed, 31) == data and packed[4:8] == b"\0\0\0\0"
            assert gz.inflate_exact(packed, len(data)) == data
            assert gz.inflate_exact(zlib.compress(data, 6, 31), len(data)) == data
            bad = packed[:-8] + bytes([packed[-8] ^ 1]) + packed[-7:]  # the CRC
            for wrong, size in [(packed[:-9], len(data)), (bad, len(data)), (packed + b"x", len(data)),
                                (packed + packed, len(data)), (packed, len(data) - 1), (packed, len(data) + 1),
                                (b"not gzip", 8)]:
                assert gz.inflate_exact(wrong, size) is None
    finally:
        monkeypatch.undo()
        importlib.reload(gz)


@pytest.mark.parametrize("name", ["ct.nrrd", "ct.nii.gz", "ct.nii", "raw.nrrd", "scaled.nii.gz"])
def test_a_header_claiming_more_voxels_than_the_file_holds_is_refused_before_itk_reads_voxels(
        tmp_path, monkeypatch, name):
    """ITK allocates and zero-fills what a header claims (an 83-byte .nii.gz found by the fuzzer
    took 6.4 GB and 15 s before it was refused): a file whose voxels are not all there is refused by
    the full checks before ITK reads any, also one whose voxels ITK would scale."""
    array = np.zeros((1000, 512, 512), np.int16)  # what the header will claim: 500 MB
    small = np.zeros((2, 512, 512), np.int16)
    path = tmp_path / name
    if name == "scaled.nii.gz":
        import nibabel as nib

        scaled = nib.Nifti1Image(small.transpose(2, 1, 0).copy(), np.eye(4))
        scaled.header.set_slope_inter(2.0, -5.0)
        nib.save(scaled, str(path))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(small), str(path), useCompression=name in ("ct.nrrd", "ct.nii.gz"))
    data = path.read_bytes()
    if name.endswith(".nrrd"):
        data = data.replace(b"sizes: 512 512 2", b"sizes: 512 512 %d" % array.shape[0], 1)
    else:
        import gzip

        raw = gzip.decompress(data) if name.endswith(".gz") else data
        raw = raw[:46] + np.int16(array.shape[0]).tobytes() + raw[48:]  # dim[3]
        data = gzip.compress(raw) if name.endswith(".gz") else raw
    path.write_bytes(data)

    def no_voxels(self):
        raise AssertionError("ITK read the voxels of a file that does not hold them")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", no_voxels)
    with pytest.raises(GTVError, match="truncated"):
        read_image(path)


def test_a_zero_dimension_itk_reads_as_one_is_refused_before_itk_reads_voxels(tmp_path, monkeypatch):
    """Found by the fuzzer: a 355-byte .nii claiming 16896 x 16388 x 0 int64 voxels. nibabel sees
    no voxels to check; ITK reads the 0 as 1 and allocated 2.2 GB (4.5 GB peak, 9 s) before the
    file was refused."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((16896, 16388, 0))
    header.set_data_dtype(np.int64)
    header.set_slope_inter(2.0, 0.0)  # scaled voxels: ITK's to read, not the shortcut's
    path = tmp_path / "zero.nii"
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * (352 - f.tell()) + b"\0\0")

    def no_voxels(self):
        raise AssertionError("ITK read the voxels of a file that does not hold them")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", no_voxels)
    with pytest.raises(GTVError, match="truncated: its header needs 1,107,566,592 bytes"):  # float32 once scaled
        read_image(path)
