"""Where one 64-128-10 batch-32 training step (float32, ReLU + softmax-CE, Adam) spends
its time in today's CPU kernels: each compiled phase of ``cpu.train_batches`` timed
alone in a compiled loop over many batches, the whole step, and an epoch through
``MLP.fit`` (Python per chunk included). Rounds interleave the phases; medians.

    python -m benchmarks.prototypes.small_phases [--rounds 7] [--sizes 64,128,10] [--batch 32]
"""

import argparse
import time

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from fastbp import MLP, Adam, cpu_training
from fastbp.kernels import cpu, cpu_small
from fastbp.kernels.bundles import Data
from fastbp.network import FitState
from fastbp.threads import blas_pools

from .small_microkernel import per_call

RELU, SOFTMAX, CE = cpu.RELU, cpu.SOFTMAX, cpu.CE


@njit(nogil=True)
def t_gather(data, work, count):
    n, b = data.perm.shape[0], work.bmax
    for c in range(count):
        start = (c * b) % (n - b)
        cpu.gather_rows(data.X, data.perm, start, b, work.xb)
        cpu.gather_rows(data.Y, data.perm, start, b, work.yb)


@njit(nogil=True)
def t_dot(a, w, out, count):
    for _ in range(count):
        np.dot(a, w, out)


@njit(nogil=True)
def t_dot_nt(d, w, out, count):
    for _ in range(count):
        np.dot(d, w.T, out)


@njit(nogil=True)
def t_dot_tn(a, d, out, count):
    for _ in range(count):
        np.dot(a.T, d, out)


@njit(nogil=True)
def t_forward(a, w, b, code, z, out, count):
    for _ in range(count):
        cpu.forward_layer(a, w, b, code, z, out)


@njit(nogil=True)
def t_output(z, a, y, delta, count):
    for _ in range(count):
        cpu.output_delta(z, a, y, SOFTMAX, CE, 1.0 / 32, None, delta)
        cpu.correct_count(a, y, SOFTMAX)


@njit(nogil=True)
def t_wgrad(a, d, dw, db, count):
    for _ in range(count):
        cpu.weight_gradient(a, d, dw, db)


@njit(nogil=True)
def t_backprop(d, w, z, a, out, count):
    for _ in range(count):
        cpu.backprop_delta(d, w, z, a, RELU, out)


@njit(nogil=True)
def t_update(net, opt, hyper, count):
    for _ in range(count):
        opt.step[0] += 1
        cpu.update_params(net, opt, hyper)


@njit(nogil=True)
def t_small_gemm(a, w, out, small, count):
    for _ in range(count):
        cpu_small.gemm(a, w, out, small)


@njit(nogil=True)
def t_small_gemm_tn(a, d, out, small, count):
    for _ in range(count):
        cpu_small.gemm(a.T, d, out, small)


@njit(nogil=True)
def t_small_backprop(d, w, wt, z, a, out, small, count):
    for _ in range(count):
        cpu_small.transpose_into(w, wt)
        cpu_small.gemm(d, wt, out, small)
        cpu.delta_epilogue(z, a, RELU, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", default="64,128,10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", type=int, default=16384)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    assert len(sizes) == 3, "two layers"
    B, n = args.batch, args.rows
    blas_pools()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, sizes[0]), dtype=np.float32)
    labels = rng.integers(0, sizes[-1], n)
    net = MLP(sizes, activation="relu", output="softmax", seed=0, dtype="float32")
    Y = np.eye(sizes[-1], dtype=np.float32)[labels]
    opt = Adam(1e-3)
    engine = cpu_training.CpuEngine(net, X, Y, FitState(net.n_params, net.dtype), batch_size=B, optimizer=opt,
                                    loss_code=CE, l1=0.0, l2=0.0, clip_norm=0.0, clip_value=0.0)
    work, network, optb, hyper = engine.work, engine.network, engine.optimizer, engine.hyper
    perm = rng.permutation(n)
    data = Data(X, Y, perm, None)
    f32 = np.float32
    x, y = work.xb, work.yb
    gather_rows = cpu.python_callable(cpu.gather_rows)  # compiled-only kernels: a Python-callable copy
    gather_rows(X, perm, 0, B, x)
    gather_rows(Y, perm, 0, B, y)
    W1, W2 = net.weights
    b1, b2 = net.biases
    z1, a1 = np.empty((B, sizes[1]), f32), np.empty((B, sizes[1]), f32)
    z2, a2 = np.empty((B, sizes[2]), f32), np.empty((B, sizes[2]), f32)
    d2, d1 = np.empty((B, sizes[2]), f32), np.empty((B, sizes[1]), f32)
    g1, g2 = np.empty_like(W1), np.empty_like(W2)
    gb1, gb2 = np.empty_like(b1), np.empty_like(b2)
    forward_layer = cpu.python_callable(cpu.forward_layer)
    forward_layer(x, W1, b1, RELU, z1, a1)
    forward_layer(a1, W2, b2, SOFTMAX, z2, a2)
    cpu.python_callable(cpu.output_delta)(z2, a2, y, SOFTMAX, CE, 1.0 / B, None, d2)
    count = max(200, int(2e7 // (B * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * 6)))
    n_batches = -(-n // B)

    small = cpu_training.small_bundle(net, B)
    small_engine = cpu_training.CpuEngine(net, X, Y, FitState(net.n_params, net.dtype), batch_size=B, optimizer=opt,
                                          loss_code=CE, l1=0.0, l2=0.0, clip_norm=0.0, clip_value=0.0)
    small_engine.small = small
    W2t = np.empty(W2.shape[::-1], f32)

    def whole_step(c, engine=engine, on=False):
        engine.small = small if on else None
        t0 = time.perf_counter()
        engine.train_batches(perm, 0, n_batches, 1, 1e-3)
        return (time.perf_counter() - t0) / n_batches

    fit_net = MLP(sizes, activation="relu", output="softmax", seed=0, dtype="float32")
    fit_opt = Adam(1e-3)

    def fit_epoch(c):
        t0 = time.perf_counter()
        fit_net.fit(X, labels, optimizer=fit_opt, epochs=1, batch_size=B, shuffle=True, seed=1,
                    warm_start=True)
        return (time.perf_counter() - t0) / n_batches

    phases = [
        ("gather x, y rows", lambda c: per_call(t_gather, (data, work), c)),
        (f"GEMM a0·W1 ({B}x{sizes[0]}x{sizes[1]})", lambda c: per_call(t_dot, (x, W1, z1), c)),
        ("forward_layer 1 (GEMM + bias + ReLU)", lambda c: per_call(t_forward, (x, W1, b1, RELU, z1, a1), c)),
        (f"GEMM a1·W2 ({B}x{sizes[1]}x{sizes[2]})", lambda c: per_call(t_dot, (a1, W2, z2), c)),
        ("forward_layer 2 (GEMM + bias + softmax)",
         lambda c: per_call(t_forward, (a1, W2, b2, SOFTMAX, z2, a2), c)),
        ("output delta + loss + correct", lambda c: per_call(t_output, (z2, a2, y, d2), c)),
        (f"GEMM a1ᵀ·δ2 ({sizes[1]}x{B}x{sizes[2]})", lambda c: per_call(t_dot_tn, (a1, d2, g2), c)),
        ("weight_gradient 2 (GEMM + db)", lambda c: per_call(t_wgrad, (a1, d2, g2, gb2), c)),
        (f"GEMM δ2·W2ᵀ ({B}x{sizes[2]}x{sizes[1]})", lambda c: per_call(t_dot_nt, (d2, W2, d1), c)),
        ("backprop_delta 1 (GEMM + ReLU')", lambda c: per_call(t_backprop, (d2, W2, z1, a1, d1), c)),
        (f"GEMM xᵀ·δ1 ({sizes[0]}x{B}x{sizes[1]})", lambda c: per_call(t_dot_tn, (x, d1, g1), c)),
        ("weight_gradient 1 (GEMM + db)", lambda c: per_call(t_wgrad, (x, d1, g1, gb1), c)),
        (f"update_params (Adam, {net.n_params} params)",
         lambda c: per_call(t_update, (network, optb, hyper), c)),
        ("whole step (train_batches, one epoch / batches)", whole_step),
        ("small path: gemm a0·W1", lambda c: per_call(t_small_gemm, (x, W1, z1, small), c)),
        ("small path: gemm a1·W2", lambda c: per_call(t_small_gemm, (a1, W2, z2, small), c)),
        ("small path: gemm a1ᵀ·δ2", lambda c: per_call(t_small_gemm_tn, (a1, d2, g2, small), c)),
        ("small path: W2ᵀ, gemm δ2·W2ᵀ, ReLU'",
         lambda c: per_call(t_small_backprop, (d2, W2, W2t, z1, a1, d1, small), c)),
        ("small path: gemm xᵀ·δ1", lambda c: per_call(t_small_gemm_tn, (x, d1, g1, small), c)),
        ("small path: whole step", lambda c: whole_step(c, small_engine, True)),
        ("MLP.fit epoch / batches (its path; Python per chunk)", fit_epoch),
    ]
    times = {name: [] for name, _ in phases}
    with threadpool_limits(1):
        for _, fn in phases:
            fn(10)
        for _ in range(args.rounds):
            for name, fn in phases:
                times[name].append(fn(count))
    med = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
    best = {name: float(np.min(t)) * 1e6 for name, t in times.items()}
    whole = "whole step (train_batches, one epoch / batches)"
    step, step_best = med[whole], best[whole]
    print(f"{sizes} batch {B}, float32, 1 BLAS thread, {args.rounds} rounds of {count} calls each")
    print(f"{'phase':<52}{'median us':>10}{'%':>6}{'best us':>9}{'%':>6}")
    for name, _ in phases:
        print(f"{name:<52}{med[name]:>10.2f}{100 * med[name] / step:>5.0f}%{best[name]:>9.2f}"
              f"{100 * best[name] / step_best:>5.0f}%")
    flops = 2 * B * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * 3 - 2 * B * sizes[0] * sizes[1]
    print(f"GEMM FLOPs per step {flops}: {flops / step / 1e3:.1f} GFLOP/s over the whole step")


if __name__ == "__main__":
    main()
