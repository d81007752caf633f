"""cpu_small.gemm (the 4×16 register tile) against Numba's np.dot (OpenBLAS, one thread)
at the shapes of small networks: each product of a 64-128-10 batch-32 step (the weight
gradients through the transposed activations, as the training path calls them) and the
784-256-10 batch-1 forward products. Interleaved rounds; median and best per call.

    python -m benchmarks.prototypes.small_microkernel [--rounds 7]
"""

import argparse
import time

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from fastbp.kernels import cpu_small
from fastbp.kernels.bundles import Small
from fastbp.threads import blas_pools

#: (m, k, n, transposed A) of out = A (m, k) · B (k, n)
SHAPES = [(32, 64, 128, False), (32, 128, 10, False), (32, 10, 128, False), (64, 32, 128, True),
          (128, 32, 10, True), (1, 784, 256, False), (1, 256, 10, False)]


@njit(nogil=True)
def blas_loop(A, B, out, count):
    for _ in range(count):
        np.dot(A, B, out)


@njit(nogil=True)
def tile_loop(A, B, out, small, count):
    for _ in range(count):
        cpu_small.gemm(A, B, out, small)


def per_call(fn, args, count):
    t0 = time.perf_counter()
    fn(*args, count)
    return (time.perf_counter() - t0) / count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    blas_pools()
    rng = np.random.default_rng(0)
    longest = 1024
    small = Small(np.zeros(1, np.float32), np.zeros(cpu_small.TILE_COLS * longest, np.float32),
                  np.zeros(cpu_small.TILE_COLS * longest, np.float32))
    print(f"{'m':>5}{'k':>5}{'n':>5}{'A':>4}{'np.dot us':>11}{'gemm us':>9}{'ratio':>8}{'best ratio':>12}")
    with threadpool_limits(1):
        for m, k, n, transposed in SHAPES:
            A = rng.standard_normal((m, k), dtype=np.float32)
            if transposed:
                A = np.ascontiguousarray(A.T).T
            B = rng.standard_normal((k, n), dtype=np.float32)
            out = np.empty((m, n), np.float32)
            count = max(10, int(3e7 // (m * k * n)))
            blas_loop(A, B, out, 1)
            tile_loop(A, B, out, small, 1)
            times = [[], []]
            for _ in range(args.rounds):
                times[0].append(per_call(blas_loop, (A, B, out), count))
                times[1].append(per_call(tile_loop, (A, B, out, small), count))
            t_blas, t_tile = np.median(times[0]), np.median(times[1])
            print(f"{m:>5}{k:>5}{n:>5}{'ᵀ' if transposed else '':>4}{t_blas * 1e6:>11.2f}{t_tile * 1e6:>9.2f}"
                  f"{t_blas / t_tile:>7.2f}x{min(times[0]) / min(times[1]):>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
