import numpy as np
import pytest

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.sampling import balance_indices, parse_ratio


FLAGS = np.array([1] * 30 + [0] * 170, dtype=bool)


@pytest.mark.parametrize("ratio,normals", [("1:0", 0), ("1:1", 30), ("1:2", 60), ("1:4", 120), ("original", 170)])
def test_ratios_keep_every_tumour_slice_and_the_asked_number_of_normals(ratio, normals):
    idx = balance_indices(FLAGS, ratio, seed=0)
    assert FLAGS[idx].sum() == 30
    assert (~FLAGS[idx]).sum() == normals
    assert len(np.unique(idx)) == idx.size


def test_seeded_reproducible_and_varies_with_seed():
    a = balance_indices(FLAGS, "1:1", seed=5)
    b = balance_indices(FLAGS, "1:1", seed=5)
    c = balance_indices(FLAGS, "1:1", seed=6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_too_few_normal_slices_keeps_them_all():
    flags = np.array([1] * 10 + [0] * 5, dtype=bool)
    assert balance_indices(flags, "1:4", seed=0).size == 15


def test_bad_ratio():
    with pytest.raises(GTVError):
        parse_ratio("one to two")
    with pytest.raises(GTVError):
        parse_ratio("0:1")
