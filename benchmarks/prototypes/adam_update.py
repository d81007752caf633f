"""Prototype: a specialised Adam step against ``cpu.update_params``, same process.

``update_params`` handles every optimizer, L1/L2, clipping and a float64 penalty
sum inside one element loop; the optimizer branch, the clip branch and the float64
reduction keep LLVM from vectorising it, and Adam's step costs three float32
divisions and a square root per parameter. The prototype is the Adam step alone,
branch-free over a contiguous range, with the bias corrections folded into two
scalars (mathematically identical to the reference:
m̂/(√v̂+ε) = (√c2/c1)·m/(√v + ε√c2), c1 = 1−β1ᵗ, c2 = 1−β2ᵗ), so one division and
one square root per parameter, vectorised (AVX2/AVX-512).

    python -m benchmarks.prototypes.adam_update

Checks the prototype against ``update_params`` (float32, relative 1e-5) and prints
ns per parameter for the parameter counts of the four configurations.
"""

import math
import statistics
import time

import numpy as np
from numba import njit

from fastbp import bench, spec
from fastbp.kernels import cpu
from fastbp.layout import make_layout
from fastbp.optimizers import Adam
from fastbp.training import hyper_vector


@njit(cache=True, nogil=True, error_model="numpy")
def adam_step(theta, grad, m, v, lr, beta1, beta2, eps, t):
    """θ ← θ − lr·(√c2/c1)·m/(√v + ε√c2) after the moment updates; float32 throughout."""
    c1 = 1.0 - beta1 ** t
    c2 = 1.0 - beta2 ** t
    zero = theta[0] * 0
    step = zero + lr * math.sqrt(c2) / c1
    eps_ = zero + eps * math.sqrt(c2)
    b1, b2 = zero + beta1, zero + beta2
    one_b1, one_b2 = zero + (1.0 - beta1), zero + (1.0 - beta2)
    for i in range(theta.shape[0]):
        g = grad[i]
        mi = b1 * m[i] + one_b1 * g
        vi = b2 * v[i] + one_b2 * g * g
        m[i] = mi
        v[i] = vi
        theta[i] -= step * mi / (np.sqrt(vi) + eps_)


@njit(cache=True, nogil=True, error_model="numpy")
def loop_prototype(theta, grad, m, v, lr, beta1, beta2, eps, steps):
    for t in range(1, steps + 1):
        adam_step(theta, grad, m, v, lr, beta1, beta2, eps, t)


@njit(cache=True, nogil=True, error_model="numpy")
def loop_current(theta, grad, m, v, layout, hyper, steps):
    for t in range(1, steps + 1):
        cpu.update_params(theta, grad, m, v, layout, spec.OPT_ADAM, hyper, t)


def check(sizes):
    layout, n = make_layout(sizes)
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32) * 1e-2
    hyper = hyper_vector(Adam(bench.LR), bench.LR, 0.0, 0.0, 0.0, 0.0)
    a = [theta.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    b = [theta.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    loop_current(a[0], grad, a[1], a[2], layout, hyper, 3)
    loop_prototype(b[0], grad, b[1], b[2], bench.LR, 0.9, 0.999, 1e-8, 3)
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)


def measure_both(sizes, steps, repeats=5):
    layout, n = make_layout(sizes)
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32) * 1e-2
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    hyper = hyper_vector(Adam(bench.LR), bench.LR, 0.0, 0.0, 0.0, 0.0)

    class Run:
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __call__(self):
            self.fn()

    times = bench.time_interleaved([
        Run("current", lambda: loop_current(theta, grad, m, v, layout, hyper, steps)),
        Run("prototype", lambda: loop_prototype(theta, grad, m, v, bench.LR, 0.9, 0.999, 1e-8, steps)),
    ], repeats, pause=0.05)
    return {k: 1e9 * statistics.median(t) / (steps * n) for k, t in times.items()}, n


def main():
    print(f"{'config':<8}{'params':>10}{'current ns/param':>18}{'prototype ns/param':>20}{'ratio':>8}")
    for name, config in bench.CONFIGS.items():
        check(config.sizes)
        steps = max(1, 20_000_000 // sum(a * b + b for a, b in zip(config.sizes[:-1], config.sizes[1:])))
        res, n = measure_both(config.sizes, steps)
        print(f"{name:<8}{n:>10}{res['current']:>18.2f}{res['prototype']:>20.2f}"
              f"{res['current'] / res['prototype']:>7.1f}x", flush=True)


if __name__ == "__main__":
    main()
