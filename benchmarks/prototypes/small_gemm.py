"""Prototype: BLAS call overhead and a compiled small GEMM for the ``small`` config.

Numba's ``np.dot(a, b, out)`` calls SciPy's OpenBLAS sgemm through a wrapper that
checks shapes/contiguity and picks the transpose flags. For the small config
(64-128-10, batch 32) every GEMM is only 10k–260k multiply-adds, so the fixed
cost per call matters. This script measures, in one process:

* the per-call cost of ``np.dot`` on 1×1 matrices (pure call overhead),
* each of the five GEMM shapes of a small-config batch through ``np.dot``,
* the same products with a plain compiled loop (i-k-j order, the inner loop
  contiguous and vectorised by LLVM, fastmath for the FMA contraction).

    python -m benchmarks.prototypes.small_gemm [--threads 1]
"""

import argparse
import statistics
import time
from contextlib import nullcontext

import numpy as np
from numba import njit

from fastbp import bench


@njit(cache=True, nogil=True)
def blas_loop(a, b, out, k):
    for _ in range(k):
        np.dot(a, b, out)


@njit(cache=True, nogil=True)
def blas_loop_at(a, b, out, k):  # aᵀ·b (dW)
    for _ in range(k):
        np.dot(a.T, b, out)


@njit(cache=True, nogil=True)
def blas_loop_bt(a, b, out, k):  # a·bᵀ (δ·Wᵀ)
    for _ in range(k):
        np.dot(a, b.T, out)


@njit(cache=True, nogil=True, fastmath=True)
def mm(a, b, out):
    """out = a·b, row-major, inner loop over the contiguous columns of b and out."""
    m, kk = a.shape
    n = b.shape[1]
    for i in range(m):
        for j in range(n):
            out[i, j] = 0
        for p in range(kk):
            aip = a[i, p]
            for j in range(n):
                out[i, j] += aip * b[p, j]


@njit(cache=True, nogil=True, fastmath=True)
def mm_at(a, b, out):
    """out = aᵀ·b (a: rows×m, b: rows×n): rank-1 updates over the rows."""
    rows, m = a.shape
    n = b.shape[1]
    for i in range(m):
        for j in range(n):
            out[i, j] = 0
    for r in range(rows):
        for i in range(m):
            ari = a[r, i]
            for j in range(n):
                out[i, j] += ari * b[r, j]


@njit(cache=True, nogil=True, fastmath=True)
def mm_bt(a, b, out):
    """out = a·bᵀ (a: m×k, b: n×k): dot products of contiguous rows."""
    m, kk = a.shape
    n = b.shape[0]
    for i in range(m):
        for j in range(n):
            s = a[i, 0] * 0
            for p in range(kk):
                s += a[i, p] * b[j, p]
            out[i, j] = s


@njit(cache=True, nogil=True)
def loop(fn, a, b, out, k):
    for _ in range(k):
        fn(a, b, out)


def per_call(fn, args, k, repeats=7):
    fn(*args, 1)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, k)
        ts.append((time.perf_counter() - t0) / k)
    return 1e6 * statistics.median(ts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    bench.blas_info()
    from threadpoolctl import threadpool_limits
    ctx = threadpool_limits(args.threads) if args.threads else nullcontext()
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    B = 32
    with ctx:
        one = r(1, 1)
        print(f"BLAS threads: {args.threads or 'default'}")
        overhead = per_call(blas_loop, (one, one, np.empty((1, 1), np.float32)), 20000)
        print(f"np.dot 1x1 call overhead: {overhead:.2f} us")

        def empty(m, n):
            return np.empty((m, n), np.float32)

        cases = [
            ("fwd 1: x(32x64)·W(64x128)", blas_loop, mm, (r(B, 64), r(64, 128), empty(B, 128))),
            ("fwd 2: a(32x128)·W(128x10)", blas_loop, mm, (r(B, 128), r(128, 10), empty(B, 10))),
            ("dW 2: a(32x128)ᵀ·δ(32x10)", blas_loop_at, mm_at, (r(B, 128), r(B, 10), empty(128, 10))),
            ("δ 1: δ(32x10)·W(128x10)ᵀ", blas_loop_bt, mm_bt, (r(B, 10), r(128, 10), empty(B, 128))),
            ("dW 1: x(32x64)ᵀ·δ(32x128)", blas_loop_at, mm_at, (r(B, 64), r(B, 128), empty(64, 128))),
        ]
        tb_all = tl_all = 0.0
        print(f"{'product':<30}{'np.dot us':>10}{'loop us':>10}{'GFLOP/s dot':>13}{'GFLOP/s loop':>14}")
        for name, blas_fn, loop_fn, (a, b, out) in cases:
            expect = out.copy()
            blas_fn(a, b, expect, 1)
            loop(loop_fn, a, b, out, 1)
            np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-4)
            tb = per_call(blas_fn, (a, b, out), 2000)
            tl = per_call(lambda a, b, o, k: loop(loop_fn, a, b, o, k), (a, b, out), 2000)
            flops = 2 * a.size * out.shape[1] if blas_fn is blas_loop else (
                2 * a.shape[0] * out.size if blas_fn is blas_loop_at else 2 * a.size * out.shape[1])
            tb_all += tb
            tl_all += tl
            print(f"{name:<30}{tb:>10.2f}{tl:>10.2f}{flops / tb / 1e3:>13.1f}{flops / tl / 1e3:>14.1f}")
        print(f"{'per batch (5 products)':<30}{tb_all:>10.2f}{tl_all:>10.2f}")


if __name__ == "__main__":
    main()
