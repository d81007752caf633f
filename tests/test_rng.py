"""The counter-based dropout generator (fastbp.kernels.rng): the compiled scalar
functions agree with the vectorised NumPy mask bit for bit, and the masks behave like
independent Bernoulli(keep) draws."""

import numpy as np
import pytest
from numba import njit

from fastbp.kernels import rng

stream_key = njit(rng.stream_key)
keep_unit = njit(rng.keep_unit)


@njit
def compiled_mask(seed, epoch, step, layer, rows, cols, threshold):
    key = stream_key(seed, epoch, step, layer)
    out = np.zeros((rows, cols), dtype=np.bool_)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = keep_unit(key, i, j, threshold)
    return out


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.8, 1.0])
def test_compiled_equals_vectorised(keep):
    for seed, epoch, step, layer in [(0, 0, 1, 0), (3, 1, 7, 2), (2**31 - 1, 99, 10**6, 5)]:
        expected = rng.keep_mask(seed, epoch, step, layer, 17, 33, keep)
        got = compiled_mask(seed, epoch, step, layer, 17, 33, rng.keep_threshold(keep))
        np.testing.assert_array_equal(got, expected)


def test_keep_rate_and_independence():
    mask = rng.keep_mask(0, 0, 1, 0, 400, 500, 0.3)
    assert abs(mask.mean() - 0.3) < 0.005  # 200k Bernoulli draws: sd ≈ 0.001
    assert rng.keep_mask(0, 0, 1, 0, 3, 3, 1.0).all()
    others = [rng.keep_mask(*args, 64, 64, 0.5) for args in
              [(1, 0, 1, 0), (0, 1, 1, 0), (0, 0, 2, 0), (0, 0, 1, 1)]]
    base = rng.keep_mask(0, 0, 1, 0, 64, 64, 0.5)
    for other in others:  # changing any counter gives an unrelated mask (~50 % agreement)
        assert abs((other == base).mean() - 0.5) < 0.05
    # rows and columns are not correlated: neighbouring units agree about half the time
    assert abs((mask[:, 1:] == mask[:, :-1]).mean() - (0.3**2 + 0.7**2)) < 0.01
    assert abs((mask[1:] == mask[:-1]).mean() - (0.3**2 + 0.7**2)) < 0.01
