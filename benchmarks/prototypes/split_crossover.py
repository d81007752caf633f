"""The crossover table of the split path (``cpu_split.FASTER_THAN_ONE_THREAD``): whole
training steps (``CpuEngine.train_batches`` over an epoch: gather, forward, loss,
backward, Adam) of float32 d-H-10 ReLU/softmax-CE networks on one thread (the BLAS path,
``cpu.train_batches``) against two threads (``cpu_split.train_batches``) in the same
process, interleaved, one BLAS thread; prints the median time per batch of each and their
ratio (> 1: two threads win).

    python -m benchmarks.prototypes.split_crossover [--rounds 5] [--inputs 16,64,256]
        [--hidden 16,32,64,128,256] [--batches 8,16,32,64,128] [--work N]
        [--dropout P] [--clip-norm C] [--weighted]

``--dropout``, ``--clip-norm`` and ``--weighted`` (sample weights uniform in [0.5, 2))
time fits with those options on both sides instead of plain ones. ``--auto-blas``: the
one-thread side runs the kernels' BLAS pool as a fit on one thread would
(``threads.blas_threads``: two threads where a product has at least
``threads.CROSSOVER_MNK`` multiply-adds), not on one thread; the split path runs one BLAS
thread per thread either way, as in a fit. ``--pause S``: sleep S seconds before each
split epoch (after a two-thread BLAS epoch OpenBLAS's worker spins on the second core for
~0.1-0.2 s, and a split epoch then runs next to it).
"""

import argparse
import contextlib
import time

import numpy as np
from threadpoolctl import threadpool_limits

from fastbp import MLP, Adam, cpu_training, spec
from fastbp.network import FitState
from fastbp.threads import blas_pools, blas_threads

from .small_crossover import WORK, interleaved_timings, seconds_per_batch, training_set


def engine(sizes, X, Y, batch, seed, threads, dropout=0.0, clip_norm=0.0, weights=None):
    """A CpuEngine of a fresh float32 ReLU/softmax network on X, Y (Adam, no penalties),
    with dropout on the hidden units, ``clip_norm`` and sample ``weights`` as given."""
    net = MLP(list(sizes), activation="relu", output="softmax", seed=seed, dtype="float32", dropout=dropout)
    return cpu_training.CpuEngine(net, X, Y, FitState(net.n_params, net.dtype), batch_size=batch,
                                  optimizer=Adam(1e-3), loss_code=spec.CROSS_ENTROPY, l1=0.0, l2=0.0,
                                  clip_norm=clip_norm, clip_value=0.0, sample_weight=weights, threads=threads)


def compare(sizes, batch, rounds, work=WORK, seed=0, dropout=0.0, clip_norm=0.0, weighted=False, auto_blas=False,
            pause=0.0):
    """µs per batch: (median one thread, median two, best one, best two), the same data and start;
    ``auto_blas``: the one-thread side with the BLAS threads a fit would choose; ``pause``:
    seconds of sleep before each epoch of the split side (with ``auto_blas``)."""
    X, Y, perm = training_set(sizes, batch, work, seed)
    weights = np.random.default_rng(seed + 1).uniform(0.5, 2.0, X.shape[0]) if weighted else None
    pair = [engine(sizes, X, Y, batch, seed, threads, dropout, clip_norm, weights) for threads in (1, 2)]
    if pair[0].split is not None or pair[1].split is None:
        raise RuntimeError("threads=1 must train on one thread and threads=2 on the split path")
    for e in pair:
        e.small = None
    if not auto_blas:
        return interleaved_timings(pair, perm, rounds)
    pools = [lambda: blas_threads(sizes, batch), lambda: blas_threads(sizes, batch, 1)]
    times = [[], []]
    for r in range(rounds + 1):  # the first round warms up
        for k, e in enumerate(pair):
            if k == 1 and pause > 0:
                time.sleep(pause)
            with pools[k]():
                seconds = seconds_per_batch(e, perm)
            if r:
                times[k].append(seconds)
    return [float(np.median(t)) * 1e6 for t in times] + [float(np.min(t)) * 1e6 for t in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inputs", default="16,64,256")
    parser.add_argument("--hidden", default="16,32,64,128,256")
    parser.add_argument("--batches", default="8,16,32,64,128")
    parser.add_argument("--work", type=int, default=WORK, help="rows × parameters per epoch")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout probability of the hidden units")
    parser.add_argument("--clip-norm", type=float, default=0.0, help="clip the global gradient norm (0: off)")
    parser.add_argument("--weighted", action="store_true", help="sample weights uniform in [0.5, 2)")
    parser.add_argument("--auto-blas", action="store_true",
                        help="one-thread side: the BLAS threads a fit would choose (else one)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="with --auto-blas: seconds of sleep before each split epoch")
    args = parser.parse_args(argv)
    blas_pools()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{'sizes':>14}{'batch':>7}{'1 thread us':>13}{'2 threads us':>14}{'ratio':>8}{'best ratio':>12}")
    if not cpu_training.two_threads_available():
        print("the split path cannot run here (it needs Linux on x86-64 and two cores)")
        return
    with contextlib.nullcontext() if args.auto_blas else threadpool_limits(1):
        for d in (int(v) for v in args.inputs.split(",")):
            for hidden in (int(v) for v in args.hidden.split(",")):
                for batch in batches:
                    one, two, best_one, best_two = compare([d, hidden, 10], batch, args.rounds, args.work,
                                                           dropout=args.dropout, clip_norm=args.clip_norm,
                                                           weighted=args.weighted, auto_blas=args.auto_blas,
                                                           pause=args.pause)
                    print(f"{f'{d}-{hidden}-10':>14}{batch:>7}{one:>13.2f}{two:>14.2f}{one / two:>8.2f}"
                          f"{best_one / best_two:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
