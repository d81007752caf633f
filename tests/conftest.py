"""Fixtures shared by the CPU test modules (helpers live in tests/helpers.py)."""

import numpy as np
import pytest


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    return np.dtype(request.param)
