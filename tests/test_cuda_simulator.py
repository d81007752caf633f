"""Runs the CUDA kernel suite (tests/cuda) under Numba's CUDA simulator.

NUMBA_ENABLE_CUDASIM must be set before numba is imported, and this process has
imported numba already, so the suite runs in its own pytest process; its output is
shown when it fails.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_kernels_under_the_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install fastbp[cuda])")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("already inside the simulator run")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "tests" / "cuda")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print("CUDA simulator suite:", summary[0])
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert " passed" in summary[0]
