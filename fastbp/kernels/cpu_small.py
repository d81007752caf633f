"""Register-blocked micro-kernels for small layers (CPU, Numba), with fused epilogues.

One kernel, :func:`matmul_nt`, computes S = A·Bᵀ for row-major A (m, k) and B (n, k),
so that the innermost loop reads both operands contiguously along k. A tile of
2 rows × 4 columns keeps eight accumulators; with reassociation allowed LLVM
vectorises the k loop, so each accumulator is a ymm register of 8 float32 (4
float64) partial sums and every step is eight ``vfmadd`` on ymm registers (checked in
``tests/test_cpu_small.py`` with ``inspect_asm``). The epilogue runs on the finished
sums before they are stored, selected by ``kind``:

* ``PLAIN`` — out = A·Bᵀ (the weight gradient dW = aᵀ·δ, from transposed a and δ);
* ``FORWARD`` — z = A·Bᵀ + b, out = f(z) (A = a^{l-1}, B = Wᵀ; elementwise
  activations; softmax rows are normalised afterwards by the caller);
* ``DELTA`` — out = (A·Bᵀ) ⊙ f'(z) (A = δ^l, B = W^l as stored: δ·Wᵀ needs no copy).

The order of every sum is fixed by the code (tile shape, vector width), so results
are bitwise the same from run to run; they differ from OpenBLAS's by rounding only.
Measured against Numba's ``np.dot`` (OpenBLAS) at the small networks' shapes by
``python -m benchmarks.prototypes.small_microkernel``; not yet wired into the
training driver (see benchmarks/README.md).
"""

import numpy as np
from numba import njit

from .. import spec

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU = spec.IDENTITY, spec.SIGMOID, spec.TANH, spec.RELU, spec.LEAKY_RELU
LEAKY_SLOPE = spec.LEAKY_SLOPE

#: epilogues of :func:`matmul_nt`
PLAIN, FORWARD, DELTA = 0, 1, 2
#: the register tile: rows of A × rows of B per block of accumulators
TILE_ROWS, TILE_COLS = 2, 4

# Reassociation lets LLVM split each k-sum into vector lanes; contraction lets it fuse
# the multiply-adds. Both are fixed at compile time, so a given build rounds the same
# way on every run.
TILE_OPTIONS = {"nogil": True, "error_model": "numpy", "boundscheck": False,
                "fastmath": {"reassoc", "contract", "nsz"}}
_jit_tile = njit(cache=True, **TILE_OPTIONS)


@_jit_tile
def activate(v, code):
    """f(v) for an elementwise activation code."""
    if code == RELU:
        return v if v > 0 else v * 0
    if code == LEAKY_RELU:
        return v if v > 0 else LEAKY_SLOPE * v
    if code == SIGMOID:
        return 1 / (1 + np.exp(-v))
    if code == TANH:
        return np.tanh(v)
    return v


@_jit_tile
def derivative(z, a, code):
    """f'(z) from z and a = f(z)."""
    if code == RELU:
        return z * 0 + (1 if z > 0 else 0)
    if code == LEAKY_RELU:
        return z * 0 + (1 if z > 0 else LEAKY_SLOPE)
    if code == SIGMOID:
        return a * (1 - a)
    if code == TANH:
        return 1 - a * a
    return z * 0 + 1


@_jit_tile
def _finish(s, i, j, kind, code, bias, z, out):
    """Store one finished sum through the epilogue ``kind``."""
    if kind == FORWARD:
        v = s + bias[j]
        z[i, j] = v
        out[i, j] = activate(v, code)
    elif kind == DELTA:
        out[i, j] = s * derivative(z[i, j], out[i, j], code)
    else:
        out[i, j] = s


@_jit_tile
def matmul_nt(A, B, kind, code, bias, z, out):
    """out ← epilogue(A·Bᵀ) for A (m, k), B (n, k), both C-contiguous; see the module
    docstring for ``kind``. For ``DELTA``, ``out`` holds a = f(z) on entry (it is
    read before it is overwritten, element by element). ``bias`` and ``z`` are only
    read for the epilogues that use them."""
    m, k = A.shape
    n = B.shape[0]
    m_even, n_four = m - m % TILE_ROWS, n - n % TILE_COLS
    for i in range(0, m_even, TILE_ROWS):
        a0, a1 = A[i], A[i + 1]
        for j in range(0, n_four, TILE_COLS):
            b0, b1, b2, b3 = B[j], B[j + 1], B[j + 2], B[j + 3]
            x0, x1 = a0[0], a1[0]
            s00, s01, s02, s03 = x0 * b0[0], x0 * b1[0], x0 * b2[0], x0 * b3[0]
            s10, s11, s12, s13 = x1 * b0[0], x1 * b1[0], x1 * b2[0], x1 * b3[0]
            for q in range(1, k):
                x0, x1 = a0[q], a1[q]
                y0, y1, y2, y3 = b0[q], b1[q], b2[q], b3[q]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
            _finish(s00, i, j, kind, code, bias, z, out)
            _finish(s01, i, j + 1, kind, code, bias, z, out)
            _finish(s02, i, j + 2, kind, code, bias, z, out)
            _finish(s03, i, j + 3, kind, code, bias, z, out)
            _finish(s10, i + 1, j, kind, code, bias, z, out)
            _finish(s11, i + 1, j + 1, kind, code, bias, z, out)
            _finish(s12, i + 1, j + 2, kind, code, bias, z, out)
            _finish(s13, i + 1, j + 3, kind, code, bias, z, out)
        for j in range(n_four, n):  # columns left over: 2 × 1 tiles
            bj = B[j]
            s0, s1 = a0[0] * bj[0], a1[0] * bj[0]
            for q in range(1, k):
                s0 += a0[q] * bj[q]
                s1 += a1[q] * bj[q]
            _finish(s0, i, j, kind, code, bias, z, out)
            _finish(s1, i + 1, j, kind, code, bias, z, out)
    for i in range(m_even, m):  # a row left over: 1 × 1 tiles
        ai = A[i]
        for j in range(n):
            bj = B[j]
            s = ai[0] * bj[0]
            for q in range(1, k):
                s += ai[q] * bj[q]
            _finish(s, i, j, kind, code, bias, z, out)


@_jit_tile
def transpose_into(src, dst):
    """dst ← srcᵀ (dst preallocated, shape reversed)."""
    rows, cols = src.shape
    for i in range(rows):
        for j in range(cols):
            dst[j, i] = src[i, j]
