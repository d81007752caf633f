"""Runs the CUDA kernel suite (tests/cuda) under Numba's CUDA simulator.

NUMBA_ENABLE_CUDASIM must be set before numba is imported, and this process has
imported numba already, so the suite runs in its own pytest process; its output is
shown when it fails.

The simulator is single-threaded Python (one core) and so is most of the CPU suite, so
tests/conftest.py starts that process as soon as collection is done (``start``) and
moves this test to the end of the run, where it only waits for the result: on a
two-core machine the two suites overlap instead of running one after the other.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_NAME = "test_cuda_kernels_under_the_simulator"
#: wall-clock limit for the simulator suite (it takes ~10 min on a 2-core machine)
TIMEOUT_S = 1800

_running = {}  # "proc": the Popen, "log": its combined stdout/stderr file


def unavailable_reason():
    """Why the simulator suite cannot run in this process (None when it can)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "already inside the simulator run"
    try:
        import numba.cuda  # noqa: F401
    except ImportError:
        return "numba-cuda is not installed (pip install fastbp[cuda])"
    return None


def start():
    """Start the simulator suite in the background (once); returns the process or None."""
    if "proc" not in _running and unavailable_reason() is None:
        log = tempfile.TemporaryFile(mode="w+", prefix="fastbp-cudasim-")
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        _running["log"] = log
        _running["proc"] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "cuda")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return _running.get("proc")


def stop():
    """Kill the background suite if the run ends before its test collected it."""
    proc = _running.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if "log" in _running:
        _running["log"].close()


def test_cuda_kernels_under_the_simulator():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    proc = start()
    try:
        returncode = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop()
        returncode = None
    log = _running["log"]
    log.seek(0)
    output = log.read()
    log.close()
    summary = output.strip().splitlines()[-1:] or ["(no output)"]
    print("CUDA simulator suite:", summary[0])
    assert returncode is not None, f"the simulator suite ran past {TIMEOUT_S} s:\n" + output[-20000:]
    assert returncode == 0, output[-25000:]
    assert " passed" in summary[0]
