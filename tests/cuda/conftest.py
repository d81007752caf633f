"""CUDA tests: kernels under Numba's CUDA simulator (or a real GPU) with tiny launch
geometry, so that the simulator's one-Python-thread-per-CUDA-thread stays fast.

Run them in their own process, with the simulator switched on before numba is
imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda

Without the variable and without a GPU the kernel tests skip.
"""

import pytest

from fastbp.kernels import cuda_config

#: several blocks and partial tiles on every test shape, both GEMM variants (wide:
#: 4 × 4 tiles of 2 × 2 outputs per thread, reduction steps of 3; narrow: 2 × 2 tiles),
#: split-K weight gradients from 8 rows on (slices of ≥ 4 rows, at most 3); small
#: enough for the simulator
SMALL = cuda_config.CudaConfig(tile=4, micro=2, depth=3, block=8, reduce_blocks=3, sms=2, split_rows=4,
                               max_splits=3)


@pytest.fixture(autouse=True)
def small_cuda_config(monkeypatch):
    monkeypatch.setattr(cuda_config, "config", SMALL)
    return SMALL
