"""Fixtures and hooks shared by the CPU test modules (helpers live in tests/helpers.py)."""

import numpy as np
import pytest

import test_cuda_simulator as cudasim


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    return np.dtype(request.param)


def _is_simulator_test(item):
    return item.name == cudasim.NODE_NAME and item.fspath.basename == "test_cuda_simulator.py"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The simulator suite's test goes last: it only waits for the background process."""
    items.sort(key=_is_simulator_test)  # stable: every other test keeps its order


def pytest_collection_finish(session):
    """Start the CUDA simulator suite now, so that it runs alongside the CPU tests."""
    if not session.config.option.collectonly and any(map(_is_simulator_test, session.items)):
        cudasim.start()


def pytest_sessionfinish(session):
    cudasim.stop()
