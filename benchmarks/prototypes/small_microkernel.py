"""cpu_small.matmul_nt against Numba's np.dot (OpenBLAS, one thread) at the shapes of
small networks: each product alone, and one batch's five products of 64-128-10 at
batch 32 (forward ×2, δ·Wᵀ, dW ×2; the micro-kernel path including its transposes).
Interleaved, minimum over rounds of the mean of many calls.

    python -m benchmarks.prototypes.small_microkernel [--rounds 7]
"""

import argparse
import time

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from fastbp.kernels import cpu_small
from fastbp.threads import blas_pools

PLAIN = cpu_small.PLAIN
#: (m, k, n) of out = A (m, k) · B (k, n): 64-128-10 at batch 32, and 784-256-10 at batch 1
SHAPES = [(32, 64, 128), (32, 128, 10), (32, 10, 128), (64, 32, 128), (128, 32, 10),
          (1, 784, 256), (1, 256, 10)]


@njit(nogil=True)
def blas_loop(A, W, out, count):
    for _ in range(count):
        np.dot(A, W, out)


@njit(nogil=True)
def small_loop(A, Wt, out, count):
    bias = out[0]
    for _ in range(count):
        cpu_small.matmul_nt(A, Wt, PLAIN, 0, bias, out, out)


@njit(nogil=True)
def blas_step(x, W1, W2, z1, z2, d2, d1, g1, g2, count):
    for _ in range(count):
        np.dot(x, W1, z1)
        np.dot(z1, W2, z2)
        np.dot(d2, W2.T, d1)
        np.dot(x.T, d1, g1)
        np.dot(z1.T, d2, g2)


@njit(nogil=True)
def small_step(x, W1, W2, W1t, W2t, xt, z1, z1t, z2, d2, d2t, d1, d1t, g1, g2, count):
    bias = z2[0]
    for _ in range(count):
        cpu_small.transpose_into(W1, W1t)
        cpu_small.transpose_into(W2, W2t)
        cpu_small.matmul_nt(x, W1t, PLAIN, 0, bias, z1, z1)
        cpu_small.matmul_nt(z1, W2t, PLAIN, 0, bias, z2, z2)
        cpu_small.matmul_nt(d2, W2, PLAIN, 0, bias, d1, d1)
        cpu_small.transpose_into(x, xt)
        cpu_small.transpose_into(d1, d1t)
        cpu_small.transpose_into(z1, z1t)
        cpu_small.transpose_into(d2, d2t)
        cpu_small.matmul_nt(xt, d1t, PLAIN, 0, bias, g1, g1)
        cpu_small.matmul_nt(z1t, d2t, PLAIN, 0, bias, g2, g2)


def best(fn, args, count, rounds):
    fn(*args, 1)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(*args, count)
        times.append((time.perf_counter() - t0) / count)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    blas_pools()
    rng = np.random.default_rng(0)
    print(f"{'m':>5}{'k':>5}{'n':>5}{'np.dot us':>11}{'matmul_nt us':>14}{'ratio':>8}")
    with threadpool_limits(1):
        for m, k, n in SHAPES:
            A = rng.standard_normal((m, k), dtype=np.float32)
            W = rng.standard_normal((k, n), dtype=np.float32)
            Wt = np.ascontiguousarray(W.T)
            out = np.empty((m, n), np.float32)
            count = max(10, int(3e7 // (m * k * n)))
            t_blas = best(blas_loop, (A, W, out), count, args.rounds)
            t_small = best(small_loop, (A, Wt, out), count, args.rounds)
            print(f"{m:>5}{k:>5}{n:>5}{t_blas * 1e6:>11.2f}{t_small * 1e6:>14.2f}{t_blas / t_small:>7.2f}x",
                  flush=True)
        b, sizes = 32, (64, 128, 10)
        f32 = np.float32
        x = rng.standard_normal((b, sizes[0]), dtype=f32)
        W1 = rng.standard_normal(sizes[:2], dtype=f32)
        W2 = rng.standard_normal(sizes[1:], dtype=f32)
        z1, z2 = np.empty((b, sizes[1]), f32), np.empty((b, sizes[2]), f32)
        d2 = rng.standard_normal((b, sizes[2]), dtype=f32)
        d1 = np.empty((b, sizes[1]), f32)
        g1, g2 = np.empty(sizes[:2], f32), np.empty(sizes[1:], f32)
        t_blas = best(blas_step, (x, W1, W2, z1, z2, d2, d1, g1, g2), 2000, args.rounds)
        transposed = [np.empty(a.shape[::-1], f32) for a in (W1, W2, x, z1, d2, d1)]
        W1t, W2t, xt, z1t, d2t, d1t = transposed
        t_small = best(small_step, (x, W1, W2, W1t, W2t, xt, z1, z1t, z2, d2, d2t, d1, d1t, g1, g2),
                       2000, args.rounds)
        print(f"one batch of 64-128-10 at 32 (5 products): np.dot {t_blas * 1e6:.2f} us, "
              f"micro-kernels {t_small * 1e6:.2f} us, ratio {t_blas / t_small:.2f}x")


if __name__ == "__main__":
    main()
