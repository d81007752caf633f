"""Where an epoch's time goes: gather, forward, backward, optimizer update, per
configuration, timed inside compiled loops (no per-batch Python) that call the
kernels of ``fastbp.kernels.cpu`` exactly as ``train_epoch`` does, plus the BLAS
calls alone (the same np.dot shapes, no epilogues) as a lower bound.

    python -m benchmarks.prototypes.phases [--threads 1] [--config NAME]

Each phase is the difference of two cumulative loops (gather; +forward;
+backward), median of interleaved repeats; numbers are ms per epoch.
"""

import argparse
import statistics
import time

import numpy as np
from numba import njit

from fastbp import bench, spec
from fastbp.kernels import cpu
from fastbp.training import FitState, Workspace, hyper_vector
from fastbp.optimizers import Adam


@njit(cache=True)
def loop_gather(X, Y, perm, bs, xb, yb):
    n = perm.shape[0]
    for start in range(0, n, bs):
        rows = min(bs, n - start)
        cpu.gather_rows(X, perm, start, rows, xb[:rows])
        cpu.gather_rows(Y, perm, start, rows, yb[:rows])


@njit(cache=True)
def loop_forward(X, Y, perm, bs, xb, yb, theta, layout, codes, zs, acts):
    n = perm.shape[0]
    for start in range(0, n, bs):
        rows = min(bs, n - start)
        cpu.gather_rows(X, perm, start, rows, xb[:rows])
        cpu.gather_rows(Y, perm, start, rows, yb[:rows])
        cpu.forward_pass(xb[:rows], theta, layout, codes, zs, acts, bs)


@njit(cache=True)
def loop_backward(X, Y, perm, bs, xb, yb, theta, grad, layout, codes, loss_code, zs, acts, deltas):
    n = perm.shape[0]
    for start in range(0, n, bs):
        rows = min(bs, n - start)
        cpu.gather_rows(X, perm, start, rows, xb[:rows])
        cpu.gather_rows(Y, perm, start, rows, yb[:rows])
        cpu.backward_pass(xb[:rows], yb[:rows], theta, grad, layout, codes, loss_code, zs, acts, deltas, bs)


@njit(cache=True)
def loop_update(theta, grad, s1, s2, layout, opt_code, hyper, n_batches):
    for t in range(1, n_batches + 1):
        cpu.update_params(theta, grad, s1, s2, layout, opt_code, hyper, t)


@njit(cache=True)
def loop_blas(xb, theta, grad, layout, zs, deltas, n_batches, bs):
    """Only the matrix products of forward + backward (same shapes as the kernels)."""
    half = deltas.shape[0] // 2
    for _ in range(n_batches):
        a_prev = xb
        offset = 0
        for l in range(layout.shape[0]):
            cols = layout[l, 1]
            z = cpu.rows_view(zs, offset, bs, cols)
            np.dot(a_prev, cpu.weights_view(theta, layout, l), z)
            a_prev = z
            offset += bs * cols
        for l in range(layout.shape[0] - 1, -1, -1):
            fan_in, cols = layout[l, 0], layout[l, 1]
            delta = cpu.rows_view(deltas, 0, bs, cols)
            if l > 0:
                offset -= bs * cols
                a_in = cpu.rows_view(zs, offset - bs * fan_in, bs, fan_in)
            else:
                a_in = xb
            np.dot(a_in.T, delta, cpu.weights_view(grad, layout, l))
            if l > 0:
                np.dot(delta, cpu.weights_view(theta, layout, l).T, cpu.rows_view(deltas, half, bs, fan_in))


class Named:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __call__(self):
        self.fn()


def phases(config, n, repeats=5):
    X, labels = bench.synthetic(config.sizes, n)
    Y = bench.one_hot(labels, config.sizes[-1])
    net = bench.MLP(list(config.sizes))
    bs = config.batch_size
    work = Workspace(net.sizes, bs, net.dtype)
    state = FitState(net.n_params, net.dtype)
    hyper = hyper_vector(Adam(bench.LR), bench.LR, 0.0, 0.0, 0.0, 0.0)
    perm = np.random.default_rng(0).permutation(n).astype(np.int64)
    n_batches = -(-n // bs)
    ce, adam = spec.CROSS_ENTROPY, spec.OPT_ADAM
    step = np.zeros(1, np.int64)
    runners = [
        Named("gather", lambda: loop_gather(X, Y, perm, bs, work.xb, work.yb)),
        Named("+forward", lambda: loop_forward(X, Y, perm, bs, work.xb, work.yb, net.theta, net.layout, net.codes,
                                               work.zs, work.acts)),
        Named("+backward", lambda: loop_backward(X, Y, perm, bs, work.xb, work.yb, net.theta, state.grad, net.layout,
                                                 net.codes, ce, work.zs, work.acts, work.deltas)),
        Named("update", lambda: loop_update(net.theta.copy(), state.grad, state.state1, state.state2, net.layout,
                                            adam, hyper, n_batches)),
        Named("blas", lambda: loop_blas(work.xb, net.theta, state.grad, net.layout, work.zs, work.deltas,
                                        n_batches, bs)),
        Named("epoch", lambda: cpu.train_epoch(X, Y, perm, bs, net.theta, state.grad, state.state1, state.state2,
                                               net.layout, net.codes, ce, adam, hyper, step, work.xb, work.yb,
                                               work.zs, work.acts, work.deltas)),
        Named("reference", bench.ReferenceEpoch(config, n)),
    ]
    times = bench.time_interleaved(runners, repeats)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"gather": med["gather"], "forward": med["+forward"] - med["gather"],
            "backward": med["+backward"] - med["+forward"], "update": med["update"],
            "sum": med["+backward"] + med["update"], "epoch": med["epoch"], "blas_only": med["blas"],
            "reference": med["reference"], "rows": n, "batches": n_batches}


ROWS = {"small": 16384, "mnist": 4096, "sgd": 1024, "large": 1024}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--config", action="append")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from contextlib import nullcontext
    bench.blas_info()
    from threadpoolctl import threadpool_limits
    ctx = threadpool_limits(args.threads) if args.threads else nullcontext()
    cols = ["gather", "forward", "backward", "update", "sum", "epoch", "blas_only", "reference"]
    print(f"ms per epoch, BLAS threads: {args.threads or 'default'}")
    print(f"{'config':<8}{'rows':>7}" + "".join(f"{c:>11}" for c in cols))
    with ctx:
        for name in args.config or list(ROWS):
            r = phases(bench.CONFIGS[name], ROWS[name], args.repeats)
            print(f"{name:<8}{r['rows']:>7}" + "".join(f"{r[c]:>11.2f}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
