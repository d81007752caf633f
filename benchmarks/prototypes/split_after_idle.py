"""Fits of the bench's small network (64-128-10 × 32 rows, one epoch, ``warm_start``, as
``fastbp bench`` times them) after ``--pause`` seconds of idle, on two threads (the split
path) and on one, interleaved in one process: fit milliseconds (best, median, worst) and
context switches per fit (every thread of the process, voluntary and involuntary, from
/proc). Two threads that share one vCPU show as thousands of context switches per 30 fits:
the barrier yields the core every 2,000 spins (``benchmarks/README.md``, section 12).

    python -m benchmarks.prototypes.split_after_idle [--fits 30] [--pause 0.3] [--rows 16384]
"""

import argparse
import os
import statistics
import time

from fastbp.bench import CONFIGS, FastbpEpoch


def context_switches():
    """Voluntary + involuntary context switches of every thread of this process so far."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as status:
                total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except OSError:  # a thread that ended meanwhile
            pass
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds of idle before each fit")
    config = CONFIGS["small"]
    parser.add_argument("--rows", type=int, default=config.rows(), help="training rows (the bench's by default)")
    args = parser.parse_args(argv)
    runs = {}
    for threads in (2, 1):
        run = FastbpEpoch(config, args.rows)
        fit = run.net.fit

        def pinned(*a, _fit=fit, _threads=threads, **k):
            return _fit(*a, threads=_threads, **k)
        run.net.fit = pinned
        for _ in range(3):  # compile, and the chunk size settles
            run()
        runs[threads] = (run, [], [])
    for _ in range(args.fits):
        for threads, (run, seconds, switches) in runs.items():
            time.sleep(args.pause)
            before = context_switches()
            t0 = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - t0)
            switches.append(context_switches() - before)
    for threads, (run, seconds, switches) in runs.items():
        ms = sorted(s * 1e3 for s in seconds)
        print(f"threads={threads}: fit ms best {ms[0]:.2f} median {statistics.median(ms):.2f} worst {ms[-1]:.2f}; "
              f"context switches per fit median {statistics.median(switches):.0f}, total {sum(switches)}")


if __name__ == "__main__":
    main()
