"""The synthetic CT phantom: reproducible, a low-contrast tumour on a few slices, any grid."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.phantom import AIR_HU, BONE_HU, LUNG_HU, TISSUE_HU, make_phantom, make_phantom_cohort

IN_PLANE = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)  # no reach across slices


def tumour_slices(mask: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))


def test_same_seed_same_phantom_other_seed_other_phantom():
    ct_a, mask_a = make_phantom(seed=7)
    ct_b, mask_b = make_phantom(seed=7)
    ct_c, mask_c = make_phantom(seed=8)
    np.testing.assert_array_equal(ct_a.array, ct_b.array)
    np.testing.assert_array_equal(mask_a.array, mask_b.array)
    assert ct_a.same_grid(ct_b)
    assert not np.array_equal(ct_a.array, ct_c.array)
    assert not np.array_equal(mask_a.array, mask_c.array)


def test_types_and_grid():
    ct, mask = make_phantom(shape=(12, 64, 80), spacing=(0.8, 0.9, 3.0), origin=(-5.0, 7.0, 100.0))
    assert ct.array.dtype == np.int16 and ct.array.shape == (12, 64, 80)
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) == {0, 1}
    assert ct.same_grid(mask)
    assert ct.spacing == (0.8, 0.9, 3.0) and ct.origin == (-5.0, 7.0, 100.0)
    ct32, _ = make_phantom(dtype=np.float32)
    assert ct32.array.dtype == np.float32


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_tumour_on_exactly_the_requested_consecutive_slices(n):
    ct, mask = make_phantom(seed=n, tumour_slices=n)
    slices = tumour_slices(mask.array)
    assert len(slices) == n
    assert np.all(np.diff(slices) == 1)
    assert 0 < slices[0] and slices[-1] < ct.array.shape[0] - 1


def test_default_tumour_spans_a_few_slices_of_many():
    counts = [len(tumour_slices(m.array)) for _, m in make_phantom_cohort(6, seed=20)]
    assert all(3 <= c <= 6 for c in counts)
    assert len(set(counts)) > 1  # the seed varies it


@pytest.mark.parametrize("contrast", [15.0, 30.0, 80.0])
def test_tumour_is_contrast_above_the_tissue_around_it(contrast):
    ct, mask = make_phantom(seed=3, contrast_hu=contrast, noise_hu=0.0)
    tumour = mask.array.astype(bool)
    ring = ndi.binary_dilation(tumour, IN_PLANE, iterations=1) & ~tumour
    assert np.all(ct.array[tumour] == TISSUE_HU + contrast)
    assert np.all(ct.array[ring] == TISSUE_HU), "the tumour should sit wholly inside soft tissue"

    noisy, noisy_mask = make_phantom(seed=3, contrast_hu=contrast, noise_hu=10.0)
    tumour = noisy_mask.array.astype(bool)
    ring = ndi.binary_dilation(tumour, IN_PLANE, iterations=2) & ~tumour
    measured = noisy.array[tumour].mean() - noisy.array[ring].mean()
    assert measured == pytest.approx(contrast, abs=3.0)


def test_anatomy_is_present():
    ct, _ = make_phantom(seed=0, noise_hu=0.0, table=True)
    values = set(np.unique(ct.array).tolist())
    assert {AIR_HU, TISSUE_HU, BONE_HU, LUNG_HU} <= values
    assert ct.array[:, 0, 0].tolist() == [AIR_HU] * ct.array.shape[0]
    assert (ct.array[:, -12:, :] == 100).any(), "couch plate behind the body"
    no_lungs, _ = make_phantom(seed=0, noise_hu=0.0, lungs=False)
    assert LUNG_HU not in set(np.unique(no_lungs.array).tolist())


def test_permuted_direction_puts_the_tumour_slices_on_the_axial_axis():
    # x index -> S: the axial slices are the array's last axis
    ct, mask = make_phantom(seed=2, shape=(96, 96, 20), spacing=(2.5, 1.0, 1.0),
                            direction=(0, 1, 0, 0, 0, 1, 1, 0, 0), tumour_slices=4)
    assert len(tumour_slices(mask.array, axis=2)) == 4
    assert len(tumour_slices(mask.array, axis=0)) > 4


def test_flipped_y_shows_the_same_body():
    # lungs sit a little anterior and the couch posterior: the phantom is not symmetric in y
    plain, _ = make_phantom(seed=0, noise_hu=0.0, table=True)
    flipped, _ = make_phantom(seed=0, noise_hu=0.0, table=True, direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    dense = plain.array > -500
    assert not np.array_equal(flipped.array > -500, dense)
    np.testing.assert_array_equal(flipped.array[:, ::-1, :] > -500, dense)


def test_cohort_yields_distinct_cases():
    cases = list(make_phantom_cohort(3, seed=0, shape=(10, 64, 64)))
    assert len(cases) == 3
    assert all(ct.array.shape == (10, 64, 64) for ct, _ in cases)
    np.testing.assert_array_equal(cases[1][0].array, make_phantom(seed=1, shape=(10, 64, 64))[0].array)
    assert not np.array_equal(cases[0][1].array, cases[2][1].array)


def test_impossible_tumour_request_is_refused():
    with pytest.raises(GTVError):
        make_phantom(shape=(6, 96, 96), tumour_slices=5)
