"""Every CUDA kernel compiles to PTX for sm_90 (float32 and float64), assembles with
ptxas and does not spill. Runs WITHOUT the simulator (it needs NVVM and ptxas, not a
GPU); skipped where the simulator is on or the toolchain is missing::

    python -m pytest tests/cuda/test_cuda_ptx.py
"""

import os

import pytest

from fastbp.kernels import cuda_config

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
pytestmark = pytest.mark.skipif(SIMULATOR, reason="the CUDA simulator cannot compile PTX")

if not SIMULATOR:
    from fastbp.kernels import cuda as kc  # noqa: F401
    from fastbp.kernels import cuda_ptx


@pytest.fixture(scope="module")
def toolchain():
    if cuda_ptx.ptxas_path() is None:
        pytest.skip("ptxas not found")
    try:
        from numba import cuda
        cuda.compile_ptx(lambda x: None, "void(float32[::1])", cc=(9, 0))
    except Exception as exc:  # NVVM missing or unusable
        pytest.skip(f"NVVM unavailable: {exc}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, narrow", cuda_ptx.variants() if not SIMULATOR else [])
def test_kernel_assembles_for_sm90_without_spills(toolchain, name, narrow, dtype):
    # the default (production) geometry, not the small simulator one of conftest
    r = cuda_ptx.resources(name, dtype, (9, 0), cuda_config.CudaConfig(), narrow)
    assert r.spills == 0, f"{name}/{dtype} spills {r.spill_stores} B stores, {r.spill_loads} B loads"
    assert r.stack_bytes == 0, f"{name}/{dtype} uses {r.stack_bytes} B of local stack"
    blocks, occupancy = r.occupancy()
    assert blocks >= 1 and occupancy >= 0.125, f"{name}/{dtype}: {blocks} blocks/SM, occupancy {occupancy:.0%}"


def test_occupancy_arithmetic():
    # 64 registers × 256 threads = 16384 registers per block -> 4 blocks on 65536 registers
    r = cuda_ptx.Resources("k", "float32", "sm_90", 64, 0, 0, 0, 0, 256)
    assert r.occupancy() == (4, 0.5)
    # shared memory bound: 100 KB (+1 KB reserved) per block -> 2 blocks in 228 KB
    r = cuda_ptx.Resources("k", "float32", "sm_90", 16, 100 * 1024, 0, 0, 0, 128)
    assert r.occupancy()[0] == 2


def test_ptx_version_is_capped_for_ptxas():
    assert cuda_ptx._capped(".version 9.5") == ".version 9.0"
    assert cuda_ptx._capped(".version 8.4") == ".version 8.4"
