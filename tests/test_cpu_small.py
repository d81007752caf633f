"""Register-blocked micro-kernels (fastbp/kernels/cpu_small.py) against the NumPy
reference: each epilogue, float64 tightly and float32 loosely, odd shapes (batch 1,
17, 33, a leftover row and columns), a whole backward step, bitwise stability and the
FMA instructions in the assembly."""

import re
import subprocess
import sys

import numpy as np
import pytest

from fastbp import reference, spec
from fastbp.kernels import cpu_small

from helpers import assert_close

# (m, k, n): batch 1, leftover rows/columns of the 2 x 4 tile, k of 1, the small config
SHAPES = [(1, 1, 1), (1, 17, 33), (33, 17, 5), (17, 33, 9), (3, 10, 7), (32, 64, 128)]
HIDDEN = ["identity", "sigmoid", "tanh", "relu", "leaky_relu"]


def operands(m, k, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((n, k)).astype(dtype)
    return A, B


def run(A, B, kind, name="identity", bias=None, z=None, out=None):
    m, n = A.shape[0], B.shape[0]
    bias = np.zeros(n, A.dtype) if bias is None else bias
    z = np.zeros((m, n), A.dtype) if z is None else z
    out = np.zeros((m, n), A.dtype) if out is None else out
    cpu_small.matmul_nt(A, B, kind, spec.ACTIVATIONS[name], bias, z, out)
    return z, out


@pytest.mark.parametrize("shape", SHAPES)
def test_plain_product(shape, dtype):
    A, B = operands(*shape, dtype)
    _, out = run(A, B, cpu_small.PLAIN)
    assert_close(out, A.astype(np.float64) @ B.T.astype(np.float64), dtype)


@pytest.mark.parametrize("name", HIDDEN)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_epilogue(shape, name, dtype):
    A, Wt = operands(*shape, dtype, seed=1)
    bias = np.random.default_rng(2).standard_normal(shape[2]).astype(dtype)
    z, a = run(A, Wt, cpu_small.FORWARD, name, bias=bias)
    z_ref = A.astype(np.float64) @ Wt.T.astype(np.float64) + bias
    assert_close(z, z_ref, dtype, name)
    assert_close(a, reference.activate(z_ref, name), dtype, name)


@pytest.mark.parametrize("name", HIDDEN)
@pytest.mark.parametrize("shape", SHAPES)
def test_delta_epilogue(shape, name, dtype):
    delta, W = operands(*shape, dtype, seed=3)  # δ (m, k), W (n, k): δ·Wᵀ is (m, n)
    z = np.random.default_rng(4).standard_normal((shape[0], shape[2])).astype(dtype)
    a = reference.activate(z, name).astype(dtype)
    _, out = run(delta, W, cpu_small.DELTA, name, z=z, out=a.copy())
    expected = (delta.astype(np.float64) @ W.T.astype(np.float64)) * reference.activation_derivative(z, a, name)
    assert_close(out, expected, dtype, name)


@pytest.mark.parametrize("rows", [1, 7, 32])
def test_backward_step_matches_reference(rows, dtype):
    """Forward (Wᵀ copies), output delta, δ·Wᵀ with the derivative, dW from transposed
    a and δ: the gradients of reference.gradients for a 17-33-5 tanh/softmax net."""
    rng = np.random.default_rng(5)
    sizes = [17, 33, 5]
    weights = [(rng.standard_normal((i, o)) / np.sqrt(i)).astype(dtype) for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [rng.standard_normal(o).astype(dtype) * 0.1 for o in sizes[1:]]
    acts_names = ["tanh", "softmax"]
    X = rng.standard_normal((rows, 17)).astype(dtype)
    Y = np.eye(5, dtype=dtype)[rng.integers(0, 5, rows)]
    _, dWs_ref, dbs_ref = reference.gradients(weights, biases, acts_names, X, Y, "cross_entropy")

    a_prev, zs, acts = X, [], []
    for l, W in enumerate(weights):
        Wt = np.empty(W.shape[::-1], dtype)
        cpu_small.transpose_into(W, Wt)
        hidden = l < len(weights) - 1
        z, a = run(a_prev, Wt, cpu_small.FORWARD, "tanh" if hidden else "identity", bias=biases[l])
        if not hidden:
            a = reference.activate(z, "softmax")
        zs.append(z)
        acts.append(a)
        a_prev = a
    delta = (acts[-1] - Y) / rows
    for l in range(len(weights) - 1, -1, -1):
        a_in = X if l == 0 else acts[l - 1]
        a_t, delta_t = np.ascontiguousarray(a_in.T), np.ascontiguousarray(delta.T)
        _, dW = run(a_t, delta_t, cpu_small.PLAIN)
        assert_close(dW, dWs_ref[l], dtype, f"dW[{l}]")
        assert_close(delta.sum(axis=0), dbs_ref[l], dtype, f"db[{l}]")
        if l > 0:
            _, delta = run(delta, weights[l], cpu_small.DELTA, "tanh", z=zs[l - 1], out=acts[l - 1].copy())


SCRIPT = """
import sys, numpy as np
from fastbp.kernels import cpu_small
rng = np.random.default_rng(0)
A = rng.standard_normal((33, 64), dtype=np.float32); B = rng.standard_normal((17, 64), dtype=np.float32)
out = np.zeros((33, 17), np.float32)
cpu_small.matmul_nt(A, B, cpu_small.PLAIN, 0, np.zeros(17, np.float32), out, out)
sys.stdout.write(out.tobytes().hex())
"""


def test_bitwise_stable_across_runs():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((33, 64), dtype=np.float32)
    B = rng.standard_normal((17, 64), dtype=np.float32)
    _, first = run(A, B, cpu_small.PLAIN)
    _, second = run(A, B, cpu_small.PLAIN)
    assert first.tobytes() == second.tobytes()
    other = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                           timeout=300).stdout
    assert bytes.fromhex(other) == first.tobytes()


def test_inner_loop_is_fma_on_ymm():
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    if not (features.get("avx2") and features.get("fma")):
        pytest.skip("the host has no AVX2/FMA")
    from numba import njit
    # a fresh, uncached compile with the module's options (Numba cannot inspect cached code)
    kernel = njit(**cpu_small.TILE_OPTIONS)(cpu_small.matmul_nt.py_func)
    A, B = operands(4, 64, 8, np.float32)
    kernel(A, B, cpu_small.PLAIN, 0, np.zeros(8, np.float32), np.zeros((4, 8), np.float32),
           np.zeros((4, 8), np.float32))
    asm = kernel.inspect_asm(kernel.signatures[0])
    packed = re.findall(r"vfmadd\d+ps\s+[^\n]*%ymm", asm)
    assert len(packed) >= 8, "expected the 2x4 tile's eight accumulators as packed FMAs on ymm registers"
