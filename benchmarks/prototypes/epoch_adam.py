"""Prototype, end to end: ``cpu.train_epoch`` with the Adam step of
``adam_update.adam_step`` in place of ``cpu.update_params`` (valid when l1 = l2 = 0
and no clipping, the speed-target setting), timed against the current
``cpu.train_epoch`` and the reference in one process, interleaved.

    python -m benchmarks.prototypes.epoch_adam [--threads 1]
"""

import argparse
import statistics
from contextlib import nullcontext

import numpy as np
from numba import njit

from fastbp import bench, spec
from fastbp.kernels import cpu
from fastbp.optimizers import Adam
from fastbp.training import FitState, Workspace, hyper_vector

from .adam_update import adam_step
from .phases import ROWS, Named


@njit(cache=True, nogil=True, error_model="numpy")
def train_epoch_adam(X, Y, perm, batch_size, theta, grad, state1, state2, layout, codes, loss_code,
                     hyper, step, xb, yb, zs, acts, deltas):
    n = perm.shape[0]
    total = 0.0
    correct = 0
    lr, beta1, beta2, eps = hyper[spec.H_LR], hyper[spec.H_MOMENTUM], hyper[spec.H_BETA2], hyper[spec.H_EPS]
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        x = xb[:rows]
        y = yb[:rows]
        cpu.gather_rows(X, perm, start, rows, x)
        cpu.gather_rows(Y, perm, start, rows, y)
        loss, hits = cpu.backward_pass(x, y, theta, grad, layout, codes, loss_code, zs, acts, deltas, batch_size)
        step[0] += 1
        adam_step(theta, grad, state1, state2, lr, beta1, beta2, eps, step[0])
        total += loss
        correct += hits
    return total, correct


class KernelEpoch:
    """One compiled epoch (current kernel or prototype) on its own copy of the state."""

    def __init__(self, name, fn, config, n, with_opt_code):
        self.name, self.fn, self.with_opt_code = name, fn, with_opt_code
        X, labels = bench.synthetic(config.sizes, n)
        self.X, self.Y = X, bench.one_hot(labels, config.sizes[-1])
        self.net = bench.MLP(list(config.sizes))
        self.bs = config.batch_size
        self.work = Workspace(self.net.sizes, self.bs, self.net.dtype)
        self.state = FitState(self.net.n_params, self.net.dtype)
        self.hyper = hyper_vector(Adam(bench.LR), bench.LR, 0.0, 0.0, 0.0, 0.0)
        self.rng = np.random.default_rng(0)

    def __call__(self):
        perm = self.rng.permutation(self.X.shape[0]).astype(np.int64)
        w, s, net = self.work, self.state, self.net
        head = (self.X, self.Y, perm, self.bs, net.theta, s.grad, s.state1, s.state2, net.layout, net.codes,
                spec.CROSS_ENTROPY)
        tail = (self.hyper, s.step, w.xb, w.yb, w.zs, w.acts, w.deltas)
        if self.with_opt_code:
            return self.fn(*head, spec.OPT_ADAM, *tail)
        return self.fn(*head, *tail)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--config", action="append")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    bench.blas_info()
    from threadpoolctl import threadpool_limits
    ctx = threadpool_limits(args.threads) if args.threads else nullcontext()
    print(f"ms per epoch (median of {args.repeats} interleaved), BLAS threads: {args.threads or 'default'}")
    print(f"{'config':<8}{'rows':>7}{'current':>10}{'proto':>10}{'ref':>10}{'cur/ref':>9}{'proto/ref':>10}"
          f"{'target':>8}{'GEMM GF/s':>11}{'cur/GEMM':>9}{'proto/GEMM':>11}")
    with ctx:
        for name in args.config or list(ROWS):
            config, n = bench.CONFIGS[name], ROWS[name]
            runners = [KernelEpoch("current", cpu.train_epoch, config, n, True),
                       KernelEpoch("proto", train_epoch_adam, config, n, False),
                       bench.ReferenceEpoch(config, n), bench.GemmCall()]
            t = {k: 1e3 * statistics.median(v) for k, v in bench.time_interleaved(runners, args.repeats).items()}
            gemm = runners[-1].flops / t["gemm"] / 1e6  # GFLOP/s
            flops = bench.matmul_flops(config.sizes, n) / 1e6  # per ms -> GFLOP/s
            # same results as the current kernel (same data, permutations and initial weights)
            np.testing.assert_allclose(runners[1].net.theta, runners[0].net.theta, rtol=2e-3, atol=2e-5)
            print(f"{name:<8}{n:>7}{t['current']:>10.2f}{t['proto']:>10.2f}{t['reference']:>10.2f}"
                  f"{t['reference'] / t['current']:>8.2f}x{t['reference'] / t['proto']:>9.2f}x"
                  f"{config.target:>7.1f}x{gemm:>11.0f}{flops / t['current'] / gemm:>9.0%}"
                  f"{flops / t['proto'] / gemm:>11.0%}", flush=True)


if __name__ == "__main__":
    main()
