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
#: split-K weight gradients from 8 rows on (slices of ≥ 4 rows, at most 3), batchnorm
#: column blocks of 2 features × 4 row threads; small enough for the simulator. The
#: per-layer kernels run (fused="never"); test_cuda_fused.py switches to the fused
#: step: tiles of 4 rows, 2 × 2 outputs per thread, 8 threads, at most 2 blocks (so a
#: block loops over tiles)
SMALL = cuda_config.CudaConfig(tile=4, micro=2, depth=3, block=8, reduce_blocks=3, sms=2, split_rows=4,
                               max_splits=3, bn_columns=2, fused="never", fused_rows=4, fused_micro=2,
                               fused_threads=8, fused_blocks=2)


@pytest.fixture(autouse=True)
def small_cuda_config(monkeypatch):
    monkeypatch.setattr(cuda_config, "config", SMALL)
    return SMALL


@pytest.fixture(autouse=True)
def device_array_takes_python_ints(monkeypatch):
    """The simulator's ``cuda.device_array`` takes numpy integers as shapes; numba-cuda on
    a GPU raises ``TypeError: 'numpy.int64' object is not iterable`` (26 device-only
    failures in the H100 run of 2026-11-26 09:37). Make the simulator as strict."""
    import numbers

    import numba
    from numba import cuda
    if not numba.config.ENABLE_CUDASIM:
        return
    original = cuda.device_array

    def strict(shape, *args, **kwargs):
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(type(d) is int for d in dims if isinstance(d, numbers.Integral)):
            raise TypeError(f"device_array shape {shape!r}: numba-cuda on a GPU takes Python ints only")
        return original(shape, *args, **kwargs)
    monkeypatch.setattr(cuda, "device_array", strict)


@pytest.fixture
def launch_names(monkeypatch):
    """The names of the kernels launched from now on, in order: ``kernels.cuda.configure``
    (which every launch goes through) wrapped to record each launch."""
    from fastbp.kernels import cuda as kc
    calls = []
    configure = kc.configure

    def counting(kernel, grid, block, shared_bytes=0):
        run = configure(kernel, grid, block, shared_bytes)
        name = getattr(kernel, "__name__", None) or kernel.py_func.__name__

        def counted(*args):
            calls.append(name)
            return run(*args)
        return counted

    monkeypatch.setattr(kc, "configure", counting)
    return calls
