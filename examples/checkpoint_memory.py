"""Peak memory of one training step with and without gradient checkpointing.

Each configuration runs in its own subprocess (so high-water marks do not mix):
after a warm-up fit on a tiny net (JIT / cache load), it allocates the data, then
runs one step (``fit(epochs=1)`` with one full batch) of a deep MLP and reports

* tracemalloc's peak of Python/NumPy allocations during the fit (the workspace,
  optimizer state and gradient buffers; the parameters and data exist before), and
* the growth of the process's peak RSS (``ru_maxrss``) over the RSS before the fit.

    python examples/checkpoint_memory.py [--layers 16] [--width 1024] [--batch 4096]
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
import fastbp
layers, width, batch, checkpoint = json.loads(sys.argv[1])
fastbp.MLP([8, 8, 2]).fit(np.zeros((4, 8)), [0, 1, 0, 1], epochs=1, checkpoint=checkpoint)  # warm-up
sizes = [width] + [width] * layers + [10]
net = fastbp.MLP(sizes, dtype="float32", seed=0)
X = np.random.default_rng(0).normal(size=(batch, width)).astype(np.float32)
y = np.arange(batch) % 10
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
tracemalloc.start()
t0 = time.perf_counter()
net.fit(X, y, optimizer="sgd", epochs=1, batch_size=batch, checkpoint=checkpoint, gradient_warnings=False)
seconds = time.perf_counter() - t0
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"checkpoint": checkpoint, "traced_peak_mb": peak / 2**20,
                  "rss_growth_mb": (max_rss - before) / 2**20, "params_mb": net.theta.nbytes / 2**20,
                  "seconds": seconds}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--checkpoints", default="none,4,true", help="comma list: none, an integer k, true")
    args = parser.parse_args(argv)
    print(f"one training step: {args.layers} hidden layers x {args.width}, batch {args.batch}, float32")
    for item in args.checkpoints.split(","):
        checkpoint = None if item == "none" else True if item == "true" else int(item)
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([args.layers, args.width, args.batch,
                                                                        checkpoint])],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"checkpoint={str(r['checkpoint']):>5}: traced peak {r['traced_peak_mb']:8.1f} MiB, "
              f"peak RSS growth {r['rss_growth_mb']:8.1f} MiB, step {r['seconds']:.2f} s "
              f"(parameters {r['params_mb']:.1f} MiB)")


if __name__ == "__main__":
    main()
