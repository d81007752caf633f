"""The crossover table of the split path (``cpu_split.FASTER_THAN_ONE_THREAD``): whole
training steps (``CpuEngine.train_batches`` over an epoch: gather, forward, loss,
backward, Adam) of float32 d-H-10 ReLU/softmax-CE networks on one thread (the BLAS path,
``cpu.train_batches``) against two threads (``cpu_split.train_batches``) in the same
process, interleaved, one BLAS thread; prints the median time per batch of each and their
ratio (> 1: two threads win).

    python -m benchmarks.prototypes.split_crossover [--rounds 5] [--inputs 16,64,256]
        [--hidden 16,32,64,128,256] [--batches 8,16,32,64,128] [--work N]
"""

import argparse

from threadpoolctl import threadpool_limits

from fastbp import cpu_training
from fastbp.threads import blas_pools

from .small_crossover import WORK, engine, interleaved_timings, training_set


def compare(sizes, batch, rounds, work=WORK, seed=0):
    """µs per batch: (median one thread, median two, best one, best two), the same data and start."""
    X, Y, perm = training_set(sizes, batch, work, seed)
    pair = [engine(sizes, X, Y, batch, seed, threads=threads) for threads in (1, 2)]
    if pair[0].split is not None or pair[1].split is None:
        raise RuntimeError("threads=1 must train on one thread and threads=2 on the split path")
    for e in pair:
        e.small = None
    return interleaved_timings(pair, perm, rounds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inputs", default="16,64,256")
    parser.add_argument("--hidden", default="16,32,64,128,256")
    parser.add_argument("--batches", default="8,16,32,64,128")
    parser.add_argument("--work", type=int, default=WORK, help="rows × parameters per epoch")
    args = parser.parse_args(argv)
    blas_pools()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{'sizes':>14}{'batch':>7}{'1 thread us':>13}{'2 threads us':>14}{'ratio':>8}{'best ratio':>12}")
    if not cpu_training.two_threads_available():
        print("the split path cannot run here (it needs Linux on x86-64 and two cores)")
        return
    with threadpool_limits(1):
        for d in (int(v) for v in args.inputs.split(",")):
            for hidden in (int(v) for v in args.hidden.split(",")):
                for batch in batches:
                    one, two, best_one, best_two = compare([d, hidden, 10], batch, args.rounds, args.work)
                    print(f"{f'{d}-{hidden}-10':>14}{batch:>7}{one:>13.2f}{two:>14.2f}{one / two:>8.2f}"
                          f"{best_one / best_two:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
