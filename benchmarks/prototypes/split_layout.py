"""The split path's buffer layout (``cpu_training.line_aligned_rows``): epochs of a
float32 ReLU/softmax-CE network trained with Adam on two threads (``fit(threads=2)``),
with each row of the split buffers followed by one cache line of gap (the layout until
2026-12-07) or by a page (``cpu_training.ROW_GAP``), alternating in one process: each
round gives each layout a fresh bundle (the spare one is dropped) and times ``--fits``
one-epoch fits of it, the order of the layouts reversed every other round. Prints the
median epoch of each layout and the median over the rounds of page ÷ line (< 1: the page
gap is faster) with the share of rounds the page gap won.

    python -m benchmarks.prototypes.split_layout [--rounds 16] [--fits 5]
        [--sizes 64,128,10] [--batch 32] [--rows 16384]
"""

import argparse

import numpy as np

from fastbp import MLP, Adam, cpu_training
from fastbp.bench import synthetic


def epochs(net, X, y, gap, fits):
    """Median seconds of ``fits`` one-epoch fits on a new split bundle with ``gap`` bytes
    after each row."""
    cpu_training.ROW_GAP = gap
    cpu_training.second_thread().spare = None  # the next fit lays out a new bundle
    seconds = [net.fit(X, y, optimizer=Adam(1e-3), epochs=1, batch_size=net.batch, seed=i, warm_start=True,
                       threads=2).seconds[0] for i in range(fits)]
    return float(np.median(seconds))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--fits", type=int, default=5)
    parser.add_argument("--sizes", default="64,128,10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", type=int, default=16384)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    X, y = synthetic(sizes, args.rows)
    net = MLP(sizes, activation="relu", output="softmax", seed=0, dtype="float32")
    net.batch = args.batch
    layouts = {"line": cpu_training.CACHE_LINE, "page": cpu_training.PAGE}
    saved = cpu_training.ROW_GAP
    try:
        for gap in layouts.values():  # compiled, and each layout once before timing
            epochs(net, X, y, gap, 2)
        times = {name: [] for name in layouts}
        for r in range(args.rounds):
            order = list(layouts) if r % 2 == 0 else list(layouts)[::-1]
            for name in order:
                times[name].append(epochs(net, X, y, layouts[name], args.fits))
    finally:
        cpu_training.ROW_GAP = saved
        cpu_training.second_thread().spare = None
    line, page = np.array(times["line"]), np.array(times["page"])
    print(f"{'-'.join(map(str, sizes))} batch {args.batch}, {args.rows} rows, {args.rounds} rounds × {args.fits} fits")
    print(f"median epoch: one line of gap {np.median(line) * 1e3:.2f} ms, a page {np.median(page) * 1e3:.2f} ms")
    print(f"page ÷ line per round: median {np.median(page / line):.3f} (range {np.min(page / line):.3f}-"
          f"{np.max(page / line):.3f}), page faster in {np.mean(page < line):.0%} of rounds")


if __name__ == "__main__":
    main()
