"""Preprocessing: the spec, the body crop, and prepare -> restore landing back on the input grid."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.image import Image
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.preprocessing import (
    LUNG_WINDOW,
    PreprocessSpec,
    apply_window,
    body_mask,
    prepare,
    reorient_to_lps,
    restore,
    restore_mask,
    restore_slice_values,
    to_model_space,
)

SPECS = {
    "resize64": PreprocessSpec(size=64),
    "resize128": PreprocessSpec(size=128),
    "spacing1.25": PreprocessSpec(mode="spacing", target_spacing_mm=1.25),
}
# x index -> S, y index -> L, z index -> P (a sagittal-like stack)
PERMUTED = (0, 1, 0, 0, 0, 1, 1, 0, 0)
FLIP_Y = (1, 0, 0, 0, -1, 0, 0, 0, 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def round_trip(ct: Image, mask: Image, spec: PreprocessSpec):
    x, state = prepare(ct, spec)
    label = to_model_space(mask.array, state)
    back = restore(label.astype(np.float32), state)
    return x, state, label, back


def rotation_z(deg: float) -> tuple[float, ...]:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


# ---------------------------------------------------------------- spec


def test_spec_json_round_trip():
    spec = PreprocessSpec(window=LUNG_WINDOW, margin_mm=5.0, mode="spacing", target_spacing_mm=0.8, keep_aspect=False)
    again = PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert isinstance(again.window, tuple)
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()


@pytest.mark.parametrize(
    "bad",
    [
        {"windw": [-150, 200]},
        {"window": [200, -150]},
        {"window": [0, 1, 2]},
        {"mode": "crop"},
        {"mode": "spacing"},  # no target spacing
        {"size": 100},  # not a multiple of 32
        {"margin_mm": -1.0},
        {"keep_aspect": "yes"},
    ],
)
def test_from_dict_rejects_bad_specs(bad):
    with pytest.raises(GTVError):
        PreprocessSpec.from_dict(bad)


def test_apply_window_maps_lo_hi_to_unit_range():
    out = apply_window(np.array([-1000, -150, 25, 200, 3000], np.int16), (-150.0, 200.0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


# ---------------------------------------------------------------- round trips on phantoms


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_dice(name, dtype, seed):
    ct, mask = make_phantom(seed=seed, dtype=dtype)
    x, state, label, back = round_trip(ct, mask, SPECS[name])
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert x.shape == label.shape == state.model_shape
    assert x.shape[1] % 32 == 0 and x.shape[2] % 32 == 0
    assert back.shape == ct.array.shape
    assert dice(back >= 0.5, mask.array) >= 0.95


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(direction=FLIP_Y, origin=(10.0, 95.0, -30.0)),
        dict(direction=(1, 0, 0, 0, 1, 0, 0, 0, -1), spacing=(0.8, 0.8, 3.0)),
        dict(direction=PERMUTED, shape=(96, 96, 20), spacing=(3.0, 1.0, 1.0)),
        dict(direction=rotation_z(20.0), spacing=(0.9, 1.1, 2.0), dtype=np.float32),
        dict(shape=(20, 80, 120), spacing=(0.8, 1.2, 3.0), dtype=np.float32),
    ],
    ids=["flip-y", "flip-z-aniso", "permuted", "oblique", "aniso-nonsquare"],
)
@pytest.mark.parametrize("name", ["resize64", "spacing1.25"])
def test_round_trip_any_direction(kwargs, name):
    ct, mask = make_phantom(seed=3, **kwargs)
    x, state, label, back = round_trip(ct, mask, SPECS[name])
    assert back.shape == ct.array.shape
    assert dice(back >= 0.5, mask.array) >= 0.95
    # the model sees axial slices whatever the storage order
    n_axial = ct.array.shape[2 - int(np.argmax(np.abs(np.reshape(ct.direction, (3, 3))[2])))]
    assert x.shape[0] == n_axial
    other_axes = tuple(a for a in range(3) if a != state.slice_axis)
    assert label.any(axis=(1, 2)).sum() == mask.array.any(axis=other_axes).sum()


def test_same_patient_stored_flipped_or_permuted_gives_same_model_input():
    """The same physical voxels stored in another axis order must give identical network input."""
    ct, mask = make_phantom(seed=5, spacing=(0.9, 1.1, 2.5))
    nz, ny, nx = ct.array.shape
    sx, sy, sz = ct.spacing
    # y reversed: index j' = ny-1-j, so the origin moves to the old last row
    flipped = Image(ct.array[:, ::-1, :].copy(), ct.spacing, (0.0, (ny - 1) * sy, 0.0), FLIP_Y)
    # stored as (x, z, y): array axes (L, S, P), index axes i->P, j->S, k->L
    stored = np.transpose(ct.array, (2, 0, 1)).copy()
    permuted = Image(stored, (sy, sz, sx), (0.0, 0.0, 0.0), (0, 0, 1, 1, 0, 0, 0, 1, 0))
    to_flipped = lambda a: a[:, ::-1, :]  # noqa: E731
    to_permuted = lambda a: np.transpose(a, (2, 0, 1))  # noqa: E731
    # the hand-made grids put voxel (i, j, k) of the original at the same physical point
    i, j, k = 3, 7, 2
    point = ct.to_sitk().TransformIndexToPhysicalPoint((i, j, k))
    np.testing.assert_allclose(flipped.to_sitk().TransformIndexToPhysicalPoint((i, ny - 1 - j, k)), point, atol=1e-9)
    np.testing.assert_allclose(permuted.to_sitk().TransformIndexToPhysicalPoint((j, k, i)), point, atol=1e-9)

    spec = SPECS["resize64"]
    x_ref, ref = prepare(ct, spec)
    label_ref = to_model_space(mask.array, ref)
    back_ref = restore(label_ref, ref, order="nearest")
    for other, to_other in ((flipped, to_flipped), (permuted, to_permuted)):
        x, state = prepare(other, spec)
        np.testing.assert_array_equal(x, x_ref)
        label = to_model_space(to_other(mask.array), state)
        np.testing.assert_array_equal(label, label_ref)
        np.testing.assert_array_equal(restore(label, state, order="nearest"), to_other(back_ref))


@pytest.mark.parametrize(
    "direction",
    [FLIP_Y, PERMUTED, (-1, 0, 0, 0, 0, -1, 0, 1, 0), rotation_z(30.0)],
    ids=["flip-y", "permuted", "flipped-permuted", "oblique"],
)
def test_reorientation_matches_dicomorient(direction):
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    img = sitk.GetImageFromArray(array)
    img.SetDirection(tuple(float(v) for v in direction))
    expected = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))
    np.testing.assert_array_equal(reorient_to_lps(array, direction), expected)


@pytest.mark.parametrize(
    "direction",
    [FLIP_Y, PERMUTED, (-1, 0, 0, 0, 0, -1, 0, 1, 0), rotation_z(30.0)],
    ids=["flip-y", "permuted", "flipped-permuted", "oblique"],
)
def test_the_overview_png_views_use_this_reorientation_with_dicomorients_spacing(direction):
    from GTVAutoSegLib.image import Image
    from GTVAutoSegLib.report import _lps_to_display

    image = Image(np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5), (0.7, 0.9, 2.5), (1.0, 2.0, 3.0),
                  tuple(float(v) for v in direction))
    oriented = sitk.DICOMOrient(image.to_sitk(), "LPS")
    array, spacing = _lps_to_display(image)
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(oriented))
    assert spacing == pytest.approx(oriented.GetSpacing())


# ---------------------------------------------------------------- crop, shapes, degenerate input


def test_body_mask_is_the_same_with_more_air_around_it():
    """The morphology runs on the candidates' box only; air added around must not change a voxel."""
    ct, _ = make_phantom(seed=1, table=True, shape=(12, 64, 64), spacing=(1.0, 1.0, 2.5))
    lps = reorient_to_lps(ct.array, ct.direction)
    tight = body_mask(lps, (1.0, 1.0), -500.0, 3.0)
    padded = np.pad(lps, ((3, 2), (20, 7), (5, 30)), constant_values=-1000)
    wide = body_mask(padded, (1.0, 1.0), -500.0, 3.0)
    assert tight.any() and np.array_equal(wide[3:-2, 20:-7, 5:-30], tight)
    assert wide.sum() == tight.sum()


@pytest.mark.parametrize("pixel_mm", [0.7, 1.0, 2.0])  # the body grid's step: 2, 2, 1
def test_crop_contains_body_and_tumour_and_leaves_out_the_couch(pixel_mm):
    ct, mask = make_phantom(seed=1, table=True, shape=(24, 128, 128), spacing=(pixel_mm, pixel_mm, 2.5))
    lps_ct = reorient_to_lps(ct.array, ct.direction)
    body = body_mask(lps_ct, ct.spacing[:2], -500.0, 3.0)
    couch_rows = np.flatnonzero(((lps_ct > 50) & ~body).any(axis=(0, 2)))
    assert couch_rows.size, "the phantom should have a couch outside the body"

    _, state = prepare(ct, PreprocessSpec(size=64, margin_mm=0.0))
    y0, y1, x0, x1 = state.crop
    assert state.body_found
    inside = np.zeros(state.lps_shape, bool)
    inside[:, y0:y1, x0:x1] = True
    assert body.any() and not (body & ~inside).any()
    assert not (reorient_to_lps(mask.array, ct.direction).astype(bool) & ~inside).any()
    assert y1 <= couch_rows.min(), "the couch should not widen the crop"
    assert (y1 - y0) * (x1 - x0) < ct.array.shape[1] * ct.array.shape[2]
    # the coarse grid costs at most one coarse pixel of slack against the full-resolution body
    step = max(1, round(1.5 / pixel_mm))
    rows, cols = np.flatnonzero(body.any(axis=(0, 2))), np.flatnonzero(body.any(axis=(0, 1)))
    assert rows[0] - y0 <= step and y1 - (rows[-1] + 1) <= step
    assert cols[0] - x0 <= step and x1 - (cols[-1] + 1) <= step


def test_margin_widens_the_crop_by_its_width_in_pixels():
    ct, _ = make_phantom(seed=0, shape=(8, 100, 140), spacing=(0.8, 1.25, 2.5))
    _, tight = prepare(ct, PreprocessSpec(size=64, margin_mm=0.0))
    _, wide = prepare(ct, PreprocessSpec(size=64, margin_mm=10.0))
    y0, y1, x0, x1 = tight.crop
    assert wide.crop == (max(0, y0 - 8), min(100, y1 + 8), max(0, x0 - 13), min(140, x1 + 13))
    assert wide.crop != (0, 100, 0, 140)


def test_all_zero_model_space_restores_to_zeros_with_input_shape():
    ct, _ = make_phantom(seed=0, direction=PERMUTED, shape=(96, 96, 20), spacing=(3.0, 1.0, 1.0))
    _, state = prepare(ct, SPECS["spacing1.25"])
    for dtype, order in ((np.float32, "linear"), (np.uint8, "nearest")):
        back = restore(np.zeros(state.model_shape, dtype), state, order=order)
        assert back.shape == ct.array.shape
        assert not back.any()


def test_restore_nearest_keeps_labels():
    ct, mask = make_phantom(seed=2)
    _, state = prepare(ct, SPECS["resize128"])
    back = restore(to_model_space(mask.array, state), state, order="nearest")
    assert back.dtype == np.uint8 and set(np.unique(back)) == {0, 1}
    assert dice(back, mask.array) >= 0.95


def test_no_body_uses_the_whole_slice():
    air = Image(np.full((4, 40, 50), -1000, np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    x, state = prepare(air, SPECS["resize64"])
    assert not state.body_found
    assert state.crop == (0, 40, 0, 50)
    assert x.shape == (4, 64, 64) and not x.any()
    assert restore(x, state).shape == air.array.shape


def test_keep_aspect_keeps_pixels_square():
    ct, _ = make_phantom(seed=0, shape=(10, 64, 120))
    _, square = prepare(ct, PreprocessSpec(size=64))
    _, stretched = prepare(ct, PreprocessSpec(size=64, keep_aspect=False))
    assert square.model_spacing[0] == pytest.approx(square.model_spacing[1])
    assert any(square.pad_square) and not any(stretched.pad_square)
    assert stretched.model_spacing[0] > 1.2 * stretched.model_spacing[1]


def test_wrong_shapes_are_refused():
    ct, mask = make_phantom(seed=0)
    _, state = prepare(ct, SPECS["resize64"])
    with pytest.raises(GTVError):
        to_model_space(mask.array[:-1], state)
    with pytest.raises(GTVError):
        restore(np.zeros((3, 64, 64), np.float32), state)
    with pytest.raises(GTVError):
        prepare(Image(np.zeros((5, 5)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())), SPECS["resize64"])


# ---------------------------------------------------------------- per-slice values


def test_slice_values_follow_the_slice_order():
    # stored superior first (z direction -1), as in the OpenKBP data
    ct, mask = make_phantom(seed=4, direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    _, state = prepare(ct, SPECS["resize64"])
    assert state.slice_axis == 0
    np.testing.assert_array_equal(state.original_slice_index, np.arange(ct.array.shape[0])[::-1])
    per_slice = to_model_space(mask.array, state).any(axis=(1, 2)).astype(np.float32)
    np.testing.assert_array_equal(restore_slice_values(per_slice, state), mask.array.any(axis=(1, 2)))


def test_slice_values_refused_when_axis0_is_not_axial():
    ct, _ = make_phantom(seed=0, direction=PERMUTED, shape=(96, 96, 20), spacing=(3.0, 1.0, 1.0))
    _, state = prepare(ct, SPECS["resize64"])
    assert state.slice_axis == 2
    with pytest.raises(GTVError):
        restore_slice_values(np.zeros(20), state)


# ---------------------------------------------------------------- real chest CT


@pytest.fixture(scope="module")
def lung(shared_data):
    cases = {}
    for name in ("lung1", "lung2"):
        folder = shared_data / "lung_pyradiomics"
        ct = Image.from_sitk(sitk.ReadImage(str(folder / f"{name}_image.nrrd")))
        label = Image.from_sitk(sitk.ReadImage(str(folder / f"{name}_label.nrrd")))
        cases[name] = (ct, label)
    return cases


@pytest.mark.parametrize("size", [512, 256])
@pytest.mark.parametrize("name", ["lung1", "lung2"])
def test_real_tumour_survives_the_round_trip(lung, name, size):
    ct, label = lung[name]
    spec = PreprocessSpec(size=size, window=LUNG_WINDOW)
    x, state, model_label, back = round_trip(ct, label, spec)
    assert x.shape == (ct.array.shape[0], size, size)
    assert model_label.any()
    assert back.shape == ct.array.shape
    # measured: 1.000 at 512 for both; at 256 lung1 (1.4 cc) 0.958, lung2 (48 cc) 0.981
    assert dice(back >= 0.5, label.array) >= 0.95


@pytest.mark.parametrize("name", ["lung1", "lung2"])
def test_real_body_crop_is_smaller_than_the_field_and_holds_the_tumour(lung, name):
    ct, label = lung[name]
    _, state = prepare(ct, PreprocessSpec(size=512, window=LUNG_WINDOW))
    y0, y1, x0, x1 = state.crop
    assert state.body_found
    # both chests fill the field left to right (lung1 is cut off by it); air and couch go
    # above and below: measured boxes lung1 rows 114-512, lung2 rows 26-494, all 512 columns
    assert y1 - y0 < ct.array.shape[1]
    zs, ys, xs = np.nonzero(reorient_to_lps(label.array, ct.direction))
    assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1


@pytest.mark.parametrize("radii", [(1, 1), (2, 2), (2, 3), (3, 1), (0, 2), (4, 4)])
def test_shifted_erosion_and_dilation_equal_scipy(radii):
    from scipy import ndimage as ndi

    from GTVAutoSegLib import preprocessing as P

    rng = np.random.default_rng(sum(radii))
    disk = P._disk(*radii)
    for density in (0.3, 0.7, 0.95):
        m = rng.random((3, 37, 41)) < density
        assert np.array_equal(P._erode(m, disk), ndi.binary_erosion(m, disk))
        assert np.array_equal(P._dilate(m, disk), ndi.binary_dilation(m, disk))


def _reference_body_box(lps, lps_spacing, spec):
    """The body box as first written: scipy morphology on the whole coarse grid, then every fine
    candidate within one coarse pixel of the coarse body."""
    import math

    from scipy import ndimage as ndi

    from GTVAutoSegLib import preprocessing as P

    _, ny, nx = lps.shape
    sx, sy = lps_spacing[0], lps_spacing[1]
    step = P._body_step(min(sx, sy))
    cand = lps[:, ::step, ::step] > spec.body_threshold_hu
    ry, rx = int(round(spec.body_erosion_mm / (sy * step))), int(round(spec.body_erosion_mm / (sx * step)))
    disk = P._disk(ry, rx) if (ry or rx) else None
    seed = ndi.binary_erosion(cand, disk) if disk is not None else cand
    if not seed.any():
        seed, disk = cand, None
    labels, n = ndi.label(seed)
    if n == 0:
        return (0, ny, 0, nx), False
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    mask = labels == counts.argmax()
    if disk is not None:
        mask = ndi.binary_dilation(mask, disk) & cand
    if step > 1:
        grown = ndi.binary_dilation(mask, np.ones((1, 3, 3), bool))
        mask = np.repeat(np.repeat(grown, step, axis=1), step, axis=2)[:, :ny, :nx] & (lps > spec.body_threshold_hu)
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    my, mx = int(math.ceil(spec.margin_mm / sy)), int(math.ceil(spec.margin_mm / sx))
    return (max(0, int(rows[0]) - my), min(ny, int(rows[-1]) + 1 + my),
            max(0, int(cols[0]) - mx), min(nx, int(cols[-1]) + 1 + mx)), True


def test_body_box_equals_the_whole_grid_morphology_it_replaced():
    """The fine edges are searched only where they can lie: same box as the whole-grid version on
    phantoms with a couch, bodies cut by the field's edge, bright specks and flipped rows (and on all
    205 CTs of ../shared/data when this was written)."""
    from GTVAutoSegLib import preprocessing as P

    rng = np.random.default_rng(3)
    spec = P.PreprocessSpec()
    checked = 0
    for seed in range(24):
        shape = (int(rng.integers(4, 10)), int(rng.integers(64, 140)), int(rng.integers(64, 140)))
        spacing = (float(rng.uniform(0.5, 1.6)), float(rng.uniform(0.5, 1.6)), 2.5)
        try:
            ct, _ = make_phantom(shape=shape, spacing=spacing, seed=seed, table=bool(seed % 2), tumour_slices=1)
        except GTVError:
            continue  # no room for the phantom's tumour at this size
        a = ct.array.astype(np.float32)
        if seed % 3 == 0:
            a[:, :5, :] = 0.0  # body cut by the top edge
            a[:, :, -3:] = 50.0  # and by the right one
            a += (rng.random(a.shape) < 0.01) * 2000.0
        for arr in (a, np.ascontiguousarray(a[:, ::-1, :])):
            assert P._body_box(arr, spacing, spec) == _reference_body_box(arr, spacing, spec)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("direction", [None, PERMUTED, FLIP_Y])
def test_restore_mask_equals_thresholding_the_restored_probabilities(spec, direction):
    """Only slices with values, a chunk at a time, into the crop box of a uint8 volume: the same mask."""
    shape = (96, 96, 20) if direction == PERMUTED else (20, 96, 96)
    spacing = (3.0, 1.0, 1.0) if direction == PERMUTED else (1.0, 1.0, 3.0)
    ct, _ = make_phantom(seed=4, direction=direction, shape=shape, spacing=spacing)
    _, state = prepare(ct, SPECS[spec])
    rng = np.random.default_rng(1)
    probs = rng.random(state.model_shape).astype(np.float16)
    probs[::3] = 0  # slices the segmenter skipped
    probs[1] = 0.5  # exactly at the threshold
    expected = (restore(probs.astype(np.float32), state) >= 0.5).astype(np.uint8)
    for chunk in (1, 4, 32):
        got = restore_mask(probs, state, 0.5, chunk=chunk)
        assert got.dtype == np.uint8 and np.array_equal(got, expected)


def test_largest_component_is_scipys_including_ties():
    from scipy import ndimage as ndi

    from GTVAutoSegLib.preprocessing import _largest_component, _largest_component_scipy as scipys

    rng = np.random.default_rng(0)
    for t in range(30):
        m = ndi.binary_opening(rng.random((12, 40, 50)) > 0.55) if t % 2 else rng.random((4, 9, 11)) > 0.75
        assert np.array_equal(_largest_component(m), scipys(m)), t
    tie = np.zeros((3, 10, 10), bool)
    tie[2, 5:7, 5:7] = tie[0, 0:2, 0:2] = True
    tie[1, 8, 0:4] = True  # three components of 4 voxels: the first in raster order wins
    assert np.array_equal(_largest_component(tie), scipys(tie)) and _largest_component(tie)[0, 0, 0]
    assert _largest_component(np.zeros((2, 3, 3), bool)) is None
    # The shortcut (the densest slice's commonest label, if it holds over half the voxels) both ways:
    body = np.zeros((20, 30, 30), bool)
    body[2:18, 5:25, 5:25] = True  # 6,400 of 6,410 voxels: taken by the shortcut
    body[0, 0, :10] = True
    assert np.array_equal(_largest_component(body), scipys(body)) and _largest_component(body)[10, 10, 10]
    slab_and_column = np.zeros((20, 30, 30), bool)
    slab_and_column[0, :10, :10] = True  # 100 voxels, all in the densest slice
    slab_and_column[2:, 20:22, 20:25] = True  # 180 voxels, 10 per slice: the largest, found without the shortcut
    got = _largest_component(slab_and_column)
    assert np.array_equal(got, scipys(slab_and_column)) and got[5, 20, 20] and not got[0, 0, 0]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_numpy_prepare_a_few_slices_at_a_time_equals_the_padded_whole_stack(name, monkeypatch):
    """The numpy resizer windows and resizes a few slices at a time, without the zero-padded
    full-resolution stack; the torch resizer still builds it: both give the same model input."""
    from GTVAutoSegLib import preprocessing

    ct, _ = make_phantom(shape=(9, 70, 90), spacing=(0.9, 0.9, 2.5), seed=4, tumour_slices=3)
    spec = SPECS[name]
    torch_x, torch_state = prepare(ct, spec, "torch")
    whole, _ = prepare(ct, spec, "numpy")
    monkeypatch.setattr(preprocessing, "_CHUNK_BYTES", 1)  # one slice at a time
    sliced, state = prepare(ct, spec, "numpy")
    assert state.crop == torch_state.crop and sliced.shape == torch_x.shape == whole.shape
    assert np.abs(sliced - whole).max() < 1e-6 and np.abs(sliced - torch_x).max() < 5e-5
    assert sliced.min() >= 0.0 and sliced.max() <= 1.0
