"""Cold-start profile: JIT compile time per kernel, from Numba's compile events.

Runs the cold-start workload (import fastbp, one epoch of the MNIST-shaped network)
in a fresh interpreter with an empty NUMBA_CACHE_DIR, records every ``numba:compile``
event, and prints inclusive and exclusive (minus nested compiles) seconds per
function, plus the same workload's warm start (cache loads) for comparison.

    python -m benchmarks.prototypes.compile_profile
"""

import json
import os
import subprocess
import sys
import tempfile

SCRIPT = r"""
import json, sys, time
from numba.core import event

records, stack = [], []

class Listener(event.Listener):
    def on_start(self, ev):
        stack.append([time.perf_counter(), 0.0])
    def on_end(self, ev):
        t0, children = stack.pop()
        dt = time.perf_counter() - t0
        if stack:
            stack[-1][1] += dt
        disp = ev.data.get("dispatcher")
        name = getattr(getattr(disp, "py_func", None), "__qualname__", str(disp))
        sig = ev.data.get("args")
        records.append({"name": name, "inclusive": dt, "exclusive": dt - children, "sig": str(sig)[:80]})

event.register("numba:compile", Listener())
t0 = time.perf_counter()
import numpy as np
import fastbp
t1 = time.perf_counter()
rng = np.random.default_rng(0)
X = rng.standard_normal((1024, 784), dtype=np.float32)
y = rng.integers(0, 10, 1024)
net = fastbp.MLP([784, 256, 128, 10], seed=0)
net.fit(X, y, epochs=1, batch_size=128)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "fit": t2 - t1, "records": records}))
"""


def run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache)
        warm = run(cache)
    for label, res in (("cold", cold), ("warm", warm)):
        recs = res["records"]
        total = sum(r["exclusive"] for r in recs)
        print(f"{label}: import {res['import']:.2f} s, first fit {res['fit']:.2f} s, "
              f"{len(recs)} compile events, {total:.2f} s in them")
    print(f"\n{'function (cold)':<28}{'exclusive s':>12}{'inclusive s':>12}  signature")
    for r in sorted(cold["records"], key=lambda r: -r["exclusive"]):
        print(f"{r['name']:<28}{r['exclusive']:>12.3f}{r['inclusive']:>12.3f}  {r['sig']}")


if __name__ == "__main__":
    main()
