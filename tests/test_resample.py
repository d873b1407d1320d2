"""Resizes without torch (``GTVAutoSegLib.resample``) against ``torch.nn.functional.interpolate``."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from GTVAutoSegLib.resample import resize


@pytest.mark.parametrize("seed", range(6))
def test_2d_resizes_equal_torch_up_to_float_rounding(seed):
    rng = np.random.default_rng(seed)
    for _ in range(8):
        x = rng.random((int(rng.integers(1, 4)), int(rng.integers(3, 260)), int(rng.integers(3, 260))), dtype=np.float32)
        size = (int(rng.integers(2, 200)), int(rng.integers(2, 200)))
        t = torch.from_numpy(x)[:, None]
        aa = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0].numpy()
        plain = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
        nearest = F.interpolate(t, size=size, mode="nearest-exact")[:, 0].numpy()
        assert np.abs(resize(x, size, "linear", True) - aa).max() < 5e-5
        assert np.abs(resize(x, size, "linear", False) - plain).max() < 5e-5
        assert np.array_equal(resize(x, size, "nearest"), nearest)


def test_trilinear_equals_torch_up_to_float_rounding():
    rng = np.random.default_rng(9)
    for _ in range(6):
        v = rng.random(tuple(int(n) for n in rng.integers(3, 90, 3)), dtype=np.float32)
        size = tuple(int(n) for n in rng.integers(2, 70, 3))
        ref = F.interpolate(torch.from_numpy(v)[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]
        assert np.abs(resize(v, size, "linear", False) - ref.numpy()).max() < 5e-5


def test_unchanged_axes_are_left_alone_and_bad_modes_refused():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert np.array_equal(resize(x, (3, 4)), x)
    with pytest.raises(ValueError, match="mode"):
        resize(x, (2, 2), "cubic")


def test_resizing_as_if_zero_padded_equals_resizing_the_padded_array():
    rng = np.random.default_rng(3)
    for _ in range(10):
        x = rng.random((2, int(rng.integers(3, 120)), int(rng.integers(3, 120))), dtype=np.float32)
        pad = tuple((int(rng.integers(0, 30)), int(rng.integers(0, 30))) for _ in range(2))
        size = (int(rng.integers(2, 100)), int(rng.integers(2, 100)))
        for antialias in (True, False):
            full = resize(np.pad(x, ((0, 0), *pad)), size, "linear", antialias)
            assert np.abs(resize(x, size, "linear", antialias, pad=pad) - full).max() < 1e-6
    with pytest.raises(ValueError, match="pad"):
        resize(x, (4, 4), "nearest", pad=((1, 0), (0, 0)))
    with pytest.raises(ValueError, match="pad"):
        resize(x, (4, 4), pad=((1, 0),))
