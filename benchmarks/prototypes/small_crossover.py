"""The crossover table of the small-network path (``cpu_small.FASTER_THAN_BLAS``):
whole training steps (``CpuEngine.train_batches`` over an epoch: gather, forward, loss,
backward, Adam) of float32 w-w-10 ReLU/softmax-CE networks, the BLAS path
(``cpu.train_batches``) against the small path (``cpu_small.train_batches``) in the
same process, interleaved, one BLAS thread; prints the median time per batch of each
and their ratio (> 1: the small path wins).

    python -m benchmarks.prototypes.small_crossover [--rounds 5] [--widths 16,64,128,256]
        [--batches 1,4,16,32,64,128] [--sizes 64,128,10 (one network instead of the grid)] [--work N]
"""

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from fastbp import MLP, Adam, cpu_training, spec
from fastbp.network import FitState
from fastbp.threads import blas_pools

#: multiply-adds of one epoch per measurement (rows × parameters)
WORK = 3 * 10 ** 7


def training_set(sizes, batch, work=WORK, seed=0):
    """Seeded float32 rows (≈ ``work`` rows × parameters, whole batches) and one-hot targets
    for a w-...-k network, and a permutation of them."""
    rng = np.random.default_rng(seed)
    n_params = sum((i + 1) * o for i, o in zip(sizes[:-1], sizes[1:]))
    rows = max(4 * batch, work // n_params // batch * batch)
    X = rng.standard_normal((rows, sizes[0]), dtype=np.float32)
    Y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], rows)]
    return X, Y, rng.permutation(rows)


def engine(sizes, X, Y, batch, seed=0, **options):
    """A CpuEngine of a fresh float32 ReLU/softmax network on X, Y (Adam, no penalties)."""
    net = MLP(list(sizes), activation="relu", output="softmax", seed=seed, dtype="float32")
    return cpu_training.CpuEngine(net, X, Y, FitState(net.n_params, net.dtype), batch_size=batch,
                                  optimizer=Adam(1e-3), loss_code=spec.CROSS_ENTROPY, l1=0.0, l2=0.0,
                                  clip_norm=0.0, clip_value=0.0, **options)


def engines(sizes, batch, work=WORK, seed=0):
    """(BLAS-path engine, small-path engine) over the same data, same start."""
    X, Y, perm = training_set(sizes, batch, work, seed)
    pair = []
    for small in (False, True):
        e = engine(sizes, X, Y, batch, seed)
        e.small = cpu_training.small_bundle(e.net, e.bmax) if small else None
        pair.append(e)
    return pair, perm


def seconds_per_batch(engine, perm):
    t0 = time.perf_counter()
    engine.train_batches(perm, 0, engine.n_batches, 1, 1e-3)
    return (time.perf_counter() - t0) / engine.n_batches


def interleaved_timings(pair, perm, rounds):
    """µs per batch of two engines, interleaved after one warm-up epoch each: (median of
    the first, median of the second, best of the first, best of the second)."""
    for e in pair:
        seconds_per_batch(e, perm)
    times = [[], []]
    for _ in range(rounds):
        for k, e in enumerate(pair):
            times[k].append(seconds_per_batch(e, perm))
    return [float(np.median(t)) * 1e6 for t in times] + [float(np.min(t)) * 1e6 for t in times]


def compare(sizes, batch, rounds, work=WORK):
    """µs per batch: (median BLAS, median small, best BLAS, best small)."""
    pair, perm = engines(sizes, batch, work)
    return interleaved_timings(pair, perm, rounds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--widths", default="16,64,128,256")
    parser.add_argument("--batches", default="1,4,16,32,64,128")
    parser.add_argument("--sizes", default=None)
    parser.add_argument("--work", type=int, default=WORK, help="rows × parameters per epoch")
    args = parser.parse_args(argv)
    blas_pools()
    batches = [int(b) for b in args.batches.split(",")]
    if args.sizes:
        grid = [[int(s) for s in args.sizes.split(",")]]
    else:
        grid = [[w, w, 10] for w in (int(w) for w in args.widths.split(","))]
    print(f"{'sizes':>14}{'batch':>7}{'BLAS us':>10}{'small us':>10}{'BLAS/small':>12}{'best ratio':>12}")
    with threadpool_limits(1):
        for sizes in grid:
            for batch in batches:
                t_blas, t_small, best_blas, best_small = compare(sizes, batch, args.rounds, args.work)
                print(f"{'-'.join(map(str, sizes)):>14}{batch:>7}{t_blas:>10.2f}{t_small:>10.2f}"
                      f"{t_blas / t_small:>11.2f}x{best_blas / best_small:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
