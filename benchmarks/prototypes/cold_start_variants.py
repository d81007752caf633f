"""Cold-start experiment: compile time of ``train_epoch`` (float32, the MNIST-shaped
network) for variants of ``fastbp/kernels/cpu.py`` generated on the fly from the
current source (nothing is copied into the repository):

* ``current``: the module as it is;
* ``inline-helpers``: ``weights_view``, ``bias_view``, ``rows_view``,
  ``gather_rows`` and ``correct_count`` marked ``inline="always"`` (Numba inlines
  their IR: no separate dispatcher, type inference and LLVM module each);
* ``NUMBA_OPT=1`` / ``NUMBA_OPT=2``: the current module at lower LLVM optimisation
  levels (default 3).

Each variant runs in a fresh interpreter with an empty NUMBA_CACHE_DIR: import,
first ``train_epoch`` call (compile + one epoch) and then the median of 3 epochs,
so the speed cost of a variant is visible beside its compile-time gain.

    python -m benchmarks.prototypes.cold_start_variants
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import fastbp.kernels.cpu as cpu_module

INLINE = ("weights_view", "bias_view", "rows_view", "gather_rows", "correct_count")

SCRIPT = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
import numpy as np
module_dir, module_name = sys.argv[1], sys.argv[2]
if module_dir:
    sys.path.insert(0, module_dir)
import importlib
cpu = importlib.import_module(module_name)
from fastbp import MLP, spec
from fastbp.training import FitState, Workspace, hyper_vector
from fastbp.optimizers import Adam
t1 = time.perf_counter()
rng = np.random.default_rng(0)
n, sizes, bs = 4096, [784, 256, 128, 10], 128
X = rng.standard_normal((n, sizes[0]), dtype=np.float32)
Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
net = MLP(sizes)
w, s = Workspace(sizes, bs, net.dtype), FitState(net.n_params, net.dtype)
hyper = hyper_vector(Adam(1e-3), 1e-3, 0.0, 0.0, 0.0, 0.0)
def epoch():
    perm = rng.permutation(n).astype(np.int64)
    cpu.train_epoch(X, Y, perm, bs, net.theta, s.grad, s.state1, s.state2, net.layout, net.codes,
                    spec.CROSS_ENTROPY, spec.OPT_ADAM, hyper, s.step, w.xb, w.yb, w.zs, w.acts, w.deltas)
epoch()
t2 = time.perf_counter()
times = []
for _ in range(3):
    a = time.perf_counter(); epoch(); times.append(time.perf_counter() - a)
print(json.dumps({"import": t1 - t0, "first_epoch": t2 - t1, "epoch": statistics.median(times)}))
"""


def variant_source(inline):
    src = pathlib.Path(cpu_module.__file__).read_text()
    src = src.replace("from .. import spec", "from fastbp import spec")
    if inline:
        src = src.replace('_jit = njit(cache=True, nogil=True, error_model="numpy")',
                          '_jit = njit(cache=True, nogil=True, error_model="numpy")\n'
                          '_jit_inline = njit(cache=True, nogil=True, error_model="numpy", inline="always")')
        for name in INLINE:
            src, count = re.subn(rf"@_jit\ndef {name}\(", f"@_jit_inline\ndef {name}(", src)
            assert count == 1, name
    return src


def run(module_dir, module_name, env_extra):
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, **env_extra)
        out = subprocess.run([sys.executable, "-c", SCRIPT, module_dir, module_name], env=env,
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for name, inline in (("cpu_current", False), ("cpu_inline", True)):
            pathlib.Path(tmp, name + ".py").write_text(variant_source(inline))
        variants = [("current", "cpu_current", {}), ("inline-helpers", "cpu_inline", {}),
                    ("NUMBA_OPT=2", "cpu_current", {"NUMBA_OPT": "2"}),
                    ("NUMBA_OPT=1", "cpu_current", {"NUMBA_OPT": "1"})]
        print(f"{'variant':<16}{'import s':>10}{'compile+1st epoch s':>21}{'epoch ms':>10}")
        for rnd in range(2):
            for label, module, env in variants:
                r = run(tmp, module, env)
                print(f"{label:<16}{r['import']:>10.2f}{r['first_epoch']:>21.2f}{1e3 * r['epoch']:>10.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
