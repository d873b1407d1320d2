"""Property-based tests (hypothesis) over the readers and the CLI (issue 12, "make it hard to bring
back"): random grids (spacing, origin, oblique and flipped directions), pixel types, formats,
truncation at random offsets, NaN/Inf, and duplicated, missing or reordered DICOM slices.

Every case must end one of two ways: a one-line GTVError (exit 2, no output), or an image / output
exactly on the input's grid; and the input's SHA-256 never changes. Example counts are small so the
suite stays fast on 2 cores; ``HYPOTHESIS_PROFILE=long`` explores more.
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from GTVAutoSegLib.bundle import save_bundle
from GTVAutoSegLib.cli import main
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.image import Image
from GTVAutoSegLib.io import read_image

from test_cascade import _fake_bundle, _phantom_with_marker

settings.register_profile("ci", max_examples=12, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")


def floats(lo, hi):
    # conftest flushes denormals (torch), so hypothesis must not draw subnormal floats.
    return st.floats(lo, hi, allow_subnormal=False, allow_nan=False)
DTYPES = (np.int16, np.uint8, np.int32, np.float32, np.float64)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@st.composite
def directions(draw):
    """An orthonormal direction: a random rotation (oblique), each axis possibly flipped, axes permuted."""
    q = np.array(draw(st.lists(floats(-1, 1), min_size=4, max_size=4)))
    if np.linalg.norm(q) < 1e-3:
        q = np.array([1.0, 0, 0, 0])
    w, x, y, z = q / np.linalg.norm(q)
    rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    if draw(st.booleans()):
        rotation = np.eye(3)[list(draw(st.permutations([0, 1, 2])))].T  # axis-aligned, permuted
    signs = np.array(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3)))
    return tuple(float(v) for v in (rotation * signs).ravel())


grids = st.fixed_dictionaries({
    "shape": st.tuples(st.integers(1, 6), st.integers(2, 9), st.integers(2, 9)),
    "spacing": st.tuples(*[floats(0.3, 6.0)] * 3),
    "origin": st.tuples(*[floats(-500, 500)] * 3),
    "direction": directions(),
})


def _image(grid, dtype, seed=0) -> Image:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo, hi = (max(info.min, -1024), min(info.max, 3000)) if info else (-1024, 3000)
    array = rng.integers(lo, hi, size=grid["shape"]).astype(dtype)
    return Image(array, grid["spacing"], grid["origin"], grid["direction"])


def _write(image: Image, path: Path) -> Path:
    sitk.WriteImage(image.to_sitk(), str(path))
    return path


@given(grid=grids, dtype=st.sampled_from(DTYPES), fmt=st.sampled_from(FORMATS))
def test_an_intact_file_reads_back_exactly_on_its_grid(grid, dtype, fmt):
    with tempfile.TemporaryDirectory() as folder:
        image = _image(grid, dtype)
        path = _write(image, Path(folder) / f"ct{fmt}")
        before = _sha(path)
        read = read_image(path)
        assert read.same_grid(image, tol=1e-4) and np.array_equal(read.array, image.array)
        assert _sha(path) == before


@given(grid=grids, fmt=st.sampled_from(FORMATS), cut=floats(0.0, 0.999))
def test_a_truncated_file_is_refused_in_one_line_never_read_short(grid, fmt, cut):
    with tempfile.TemporaryDirectory() as folder:
        image = _image(grid, np.int16)
        path = _write(image, Path(folder) / f"ct{fmt}")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
        before = _sha(path)
        try:
            read = read_image(path)
        except GTVError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:  # only a cut inside trailing bytes that hold no voxels may read, and then exactly
            assert read.same_grid(image) and np.array_equal(read.array, image.array)
        assert _sha(path) == before


@given(grid=grids, fmt=st.sampled_from((".nii.gz", ".nrrd", ".mha")), value=st.sampled_from([np.nan, np.inf, -np.inf]),
       where=st.integers(0, 10_000))
def test_non_finite_voxels_are_refused_in_every_format(grid, fmt, value, where):
    with tempfile.TemporaryDirectory() as folder:
        image = _image(grid, np.float32)
        flat = image.array.reshape(-1)
        flat[where % flat.size] = value
        path = _write(image, Path(folder) / f"ct{fmt}")
        with pytest.raises(GTVError, match="NaN and"):
            read_image(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "fake.pt"
    save_bundle(_fake_bundle(), path)
    return path


@settings(max_examples=6)
@given(direction=directions(), origin=st.tuples(*[floats(-300, 300)] * 3), fmt=st.sampled_from(FORMATS),
       cut=st.one_of(st.none(), floats(0.0, 0.999)))
def test_the_cli_either_refuses_in_one_line_or_writes_exactly_on_the_input_grid(model, capsys, direction, origin, fmt, cut):
    ct, _ = _phantom_with_marker(direction=direction)
    ct = Image(ct.array, ct.spacing, origin, ct.direction)
    with tempfile.TemporaryDirectory() as folder:
        path = _write(ct, Path(folder) / f"case{fmt}")
        if cut is not None:
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * cut)])
        before = _sha(path)
        out = Path(folder) / "out"
        rc = main(["segment", str(path), "-o", str(out), "--model", str(model), "--device", "cpu", "--progress", "none"])
        err = capsys.readouterr().err.strip()
        assert _sha(path) == before
        leftovers = [p.name for p in Path(folder).rglob("*") if ".tmp-" in p.name]
        assert leftovers == []
        if rc == 2:
            assert len(err.splitlines()) == 1 and err.startswith("gtvautoseg: error:")
            assert not out.exists() or list(out.iterdir()) == []
        else:
            assert rc == 0, err
            for name in ("case.seg.nrrd", "case_label.nii.gz"):
                assert read_image(out / name).same_grid(ct)


@pytest.fixture(scope="module")
def dicom_series(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom") / "ct20"
    shutil.copytree(shared_data / "dicom" / "totalseg_ct20", folder)
    import pydicom

    files = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    return folder, files, read_image(folder)


@settings(max_examples=5)
@given(data=st.data())
def test_dicom_series_reordered_reads_the_same_and_damaged_is_refused(dicom_series, data):
    source, files, clean = dicom_series
    action = data.draw(st.sampled_from(["reorder", "duplicate", "missing"]))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        names = data.draw(st.permutations([f"f{k:02d}.dcm" for k in range(len(files))]))
        for path, name in zip(files, names):
            shutil.copy(path, folder / name)
        if action == "duplicate":
            k = data.draw(st.integers(0, len(files) - 1))
            shutil.copy(files[k], folder / "extra.dcm")
        elif action == "missing":
            k = data.draw(st.integers(1, len(files) - 2))  # an end slice missing leaves an even series
            (folder / names[k]).unlink()
        try:
            ct = read_image(folder)
        except GTVError as exc:
            assert action != "reorder" and "\n" not in str(exc)
        else:
            assert action == "reorder"
            assert ct.same_grid(clean) and np.array_equal(ct.array, clean.array)
