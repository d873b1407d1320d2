"""Metrics against hand computations on tiny arrays."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.image import Image
from GTVAutoSegLib.metrics import (
    dice,
    evaluate_case,
    false_positive_slices,
    hd95_mm,
    jaccard,
    slice_flags,
    slice_precision,
    slice_recall,
    summarise,
    surface,
    volume_cc,
    volume_ratio,
)

SPACING = (0.5, 0.8, 2.0)  # (sx, sy, sz): all different, so a swapped axis shows


def cube(shape, z, y, x, n=3):
    m = np.zeros(shape, dtype=np.uint8)
    m[z:z + n, y:y + n, x:x + n] = 1
    return m


def brute_force_hd95(a, b, spacing_xyz):
    """Independent of the distance transform: all pairwise distances between surface voxel centres."""
    def surface_points(m):
        m = np.pad(m != 0, 1)
        inner = m[1:-1, 1:-1, 1:-1]
        all_neighbours_in = (
            m[:-2, 1:-1, 1:-1] & m[2:, 1:-1, 1:-1] & m[1:-1, :-2, 1:-1]
            & m[1:-1, 2:, 1:-1] & m[1:-1, 1:-1, :-2] & m[1:-1, 1:-1, 2:]
        )
        return np.argwhere(inner & ~all_neighbours_in) * np.asarray(spacing_xyz)[::-1]
    d = cdist(surface_points(a), surface_points(b))
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


def test_dice_and_jaccard_by_hand():
    a = np.zeros((1, 1, 10), np.uint8)
    b = np.zeros((1, 1, 10), np.uint8)
    a[..., 0:4] = 1  # 4 voxels
    b[..., 2:8] = 1  # 6 voxels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 6))
    assert jaccard(a, b) == pytest.approx(2 / 8)
    assert dice(a, a) == 1.0 and jaccard(a, a) == 1.0


def test_empty_conventions():
    empty = np.zeros((2, 3, 3), np.uint8)
    full = np.ones((2, 3, 3), np.uint8)
    assert dice(empty, empty) == 1.0 and jaccard(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and jaccard(full, empty) == 0.0
    assert hd95_mm(empty, empty, SPACING) == 0.0
    assert hd95_mm(empty, full, SPACING) == math.inf
    assert hd95_mm(full, empty, SPACING) == math.inf
    assert volume_ratio(empty, empty) == 1.0
    assert volume_ratio(full, empty) == math.inf
    assert volume_ratio(empty, full) == 0.0


def test_surface_of_a_cube_leaves_out_the_centre():
    s = surface(cube((5, 5, 5), 1, 1, 1))
    assert s.sum() == 26 and not s[2, 2, 2]


@pytest.mark.parametrize(
    "axis, expected_mm",
    # 3x3x3 cubes 4 voxels apart along one axis. The gap from a cube's far face to the other's near
    # face is 4 voxels; a third of all surface voxels lie on the far faces, so HD95 = 4 voxels * spacing.
    [(0, 4 * 2.0), (1, 4 * 0.8), (2, 4 * 0.5)],
)
def test_hd95_of_offset_cubes_in_mm(axis, expected_mm):
    shape = (12, 12, 12)
    start = [1, 1, 1]
    ref = cube(shape, *start)
    start[axis] += 4
    pred = cube(shape, *start)
    assert hd95_mm(pred, ref, SPACING) == pytest.approx(expected_mm)
    assert hd95_mm(ref, pred, SPACING) == pytest.approx(expected_mm)


def test_hd95_of_overlapping_shapes_matches_brute_force():
    rng = np.random.default_rng(0)
    ref = np.zeros((10, 14, 16), np.uint8)
    ref[2:8, 3:11, 4:13] = 1
    pred = np.zeros_like(ref)
    pred[3:9, 2:9, 6:15] = 1
    pred[rng.random(pred.shape) < 0.03] = 1  # scattered false positives far from the surface
    got = hd95_mm(pred, ref, SPACING)
    assert got == pytest.approx(brute_force_hd95(pred, ref, SPACING))
    assert got > 0


def test_hd95_touching_the_array_border():
    ref = np.zeros((4, 6, 6), np.uint8)
    ref[:, :3, :] = 1  # fills the whole array along z and x
    pred = np.zeros_like(ref)
    pred[:, :4, :] = 1
    assert hd95_mm(pred, ref, SPACING) == pytest.approx(brute_force_hd95(pred, ref, SPACING))


def test_volume_cc():
    m = np.zeros((4, 10, 10), np.uint8)
    m[:2, :5, :5] = 1  # 50 voxels of 0.5*0.8*2.0 = 0.8 mm^3
    assert volume_cc(m, SPACING) == pytest.approx(50 * 0.8 / 1000)
    assert volume_ratio(m, np.ones_like(m)) == pytest.approx(50 / 400)


def test_slice_metrics_by_hand():
    ref = np.zeros((6, 4, 4), np.uint8)
    ref[1:4, 1, 1] = 1  # tumour on slices 1, 2, 3
    flags = np.array([1, 1, 0, 1, 0, 1], bool)  # hits 1 and 3, misses 2, false on 0 and 5
    assert slice_flags(ref).tolist() == [False, True, True, True, False, False]
    assert slice_recall(flags, ref) == pytest.approx(2 / 3)
    assert slice_precision(flags, ref) == pytest.approx(2 / 4)
    assert false_positive_slices(flags, ref) == 2
    none = np.zeros(6, bool)
    assert slice_precision(none, ref) == 1.0 and slice_recall(none, ref) == 0.0
    assert slice_recall(flags, np.zeros_like(ref)) == 1.0
    with pytest.raises(ValueError):
        slice_recall(flags[:5], ref)


def _image(array, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    return Image(array, spacing, origin, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def test_evaluate_case_keys_and_values():
    ref = cube((8, 8, 8), 2, 2, 2)
    pred = cube((8, 8, 8), 2, 2, 3)  # shifted one voxel along x: 18 of 27 voxels shared
    flags = np.zeros(8, bool)
    flags[[0, 2, 3]] = True
    row = evaluate_case(_image(pred), _image(ref), slice_flags=flags)
    assert row["dice"] == pytest.approx(2 * 18 / 54)
    assert row["jaccard"] == pytest.approx(18 / 36)
    assert row["volume_pred_cc"] == pytest.approx(27 * 0.8 / 1000)
    assert row["volume_ratio"] == pytest.approx(1.0)
    assert row["slice_recall"] == pytest.approx(2 / 3)
    assert row["slice_precision"] == pytest.approx(2 / 3)
    assert (row["fp_slices"], row["fn_slices"], row["ref_slices"]) == (1, 1, 3)
    assert row["hd95_mm"] == pytest.approx(brute_force_hd95(pred, ref, SPACING))
    # Without classifier flags the prediction's own slices are scored.
    assert evaluate_case(_image(pred), _image(ref))["slice_recall"] == 1.0


def test_evaluate_case_rejects_other_grids():
    m = cube((8, 8, 8), 2, 2, 2)
    with pytest.raises(GTVError, match="prediction and reference are on different grids: .*origin"):
        evaluate_case(_image(m), _image(m, origin=(0.0, 0.0, 5.0)))
    with pytest.raises(GTVError, match="different grids: shape"):
        evaluate_case(_image(m[:7]), _image(m))
    with pytest.raises(GTVError, match="slice flags"):
        evaluate_case(_image(m), _image(m), slice_flags=np.ones(3, bool))


def test_summarise_ignores_inf_and_counts_it():
    rows = [
        {"case": "a", "dice": 0.5, "hd95_mm": 4.0, "fp_slices": 1},
        {"case": "b", "dice": 0.7, "hd95_mm": math.inf, "fp_slices": 3},
        {"case": "c", "dice": 0.9, "hd95_mm": 8.0, "fp_slices": 2},
    ]
    s = summarise(rows)
    assert "case" not in s
    assert s["dice"]["mean"] == pytest.approx(0.7)
    assert s["dice"]["median"] == pytest.approx(0.7)
    assert s["dice"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert s["hd95_mm"]["mean"] == pytest.approx(6.0)
    assert (s["hd95_mm"]["n"], s["hd95_mm"]["n_inf"]) == (2, 1)
    assert s["fp_slices"]["mean"] == pytest.approx(2.0)
    assert math.isnan(summarise([{"hd95_mm": math.inf}])["hd95_mm"]["mean"])


def test_paired_bootstrap_interval():
    from GTVAutoSegLib.metrics import paired_bootstrap

    rng = np.random.default_rng(1)
    a = rng.random(33)
    same = paired_bootstrap(a, a)
    assert same["mean"] == same["low"] == same["high"] == 0.0 and same["n"] == 33
    shifted = paired_bootstrap(a + 0.1, a)
    assert shifted["low"] == pytest.approx(0.1) and shifted["high"] == pytest.approx(0.1)
    noisy = paired_bootstrap(a + 0.05 + rng.normal(0, 0.05, 33), a)
    assert noisy["low"] < noisy["mean"] < noisy["high"] and noisy["low"] > 0  # clearly better
    unclear = paired_bootstrap(a + rng.normal(0, 0.2, 33), a)
    assert unclear["low"] < 0 < unclear["high"]
    assert paired_bootstrap(a, a, seed=0) == paired_bootstrap(a, a, seed=0)
    assert paired_bootstrap([np.nan, 1.0], [0.5, 0.5])["n"] == 1
    with pytest.raises(ValueError):
        paired_bootstrap(a, a[:5])
