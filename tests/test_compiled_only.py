"""How the CPU core is compiled: drivers cached on disk, every other kernel compiled only
into its callers (``kernels.cpu.compiled_only``), and optional modes absent from the
machine code of a fit that does not use them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import config
from numba.core.caching import NullCache

from fastbp.kernels import cpu, cpu_small

#: the functions Python calls; everything else in the CPU kernel modules is compiled-only
ENTRIES = {cpu.train_batches, cpu.evaluate, cpu.loss_and_gradient, cpu_small.train_batches}

pytestmark = pytest.mark.skipif(config.DISABLE_JIT, reason="NUMBA_DISABLE_JIT: no dispatchers")


def dispatchers(module):
    return [value for value in vars(module).values() if hasattr(value, "py_func") and hasattr(value, "targetoptions")]


@pytest.mark.parametrize("module", [cpu, cpu_small], ids=["cpu", "cpu_small"])
def test_every_kernel_is_an_entry_or_compiled_only(module):
    kernels = dispatchers(module)
    assert len(kernels) >= 5
    for kernel in kernels:
        if kernel in ENTRIES:
            assert not isinstance(kernel._cache, NullCache), f"{kernel.py_func.__name__}: an entry must be cached"
        else:
            assert isinstance(kernel, cpu.CompiledOnly), f"{kernel.py_func.__name__} is neither"
            assert isinstance(kernel._cache, NullCache)


def test_a_python_call_of_a_compiled_only_kernel_says_what_to_do():
    z = np.zeros((2, 3))
    with pytest.raises(TypeError, match="forward_epilogue.*python_callable"):
        cpu.forward_epilogue(z, np.zeros(3), cpu.RELU, z.copy())


def test_python_callable_copy_computes_the_kernel():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7))
    bias = rng.normal(size=7)
    a = np.empty_like(z)
    expected = z + bias
    cpu.python_callable(cpu.forward_epilogue)(z, bias, cpu.RELU, a)
    np.testing.assert_array_equal(z, expected)
    np.testing.assert_array_equal(a, np.maximum(expected, 0))
    assert cpu.python_callable(cpu.train_batches) is cpu.train_batches  # entries are callable already


COLD = """
import json, numpy as np, fastbp
from fastbp.kernels import cpu
rng = np.random.default_rng(0)
X = rng.normal(size=(32, 6))
net = fastbp.MLP([6, 9, 3], activation="tanh", output="softmax", seed=0, dtype="float64")
net.fit(X, rng.integers(0, 3, 32), optimizer=fastbp.Adam(1e-2), epochs=1, batch_size=8, seed=1)
print(json.dumps({k.py_func.__name__: len(k.overloads) for k in (
    cpu.forward_step, cpu.backward_step, cpu.draw_mask, cpu.bn_forward, cpu.bn_backward)}))
"""


def test_a_plain_fit_compiles_no_dropout_or_batchnorm_code(tmp_path):
    """On an empty Numba cache, a fit with whole batches of 8 rows, no dropout and no
    batchnorm compiles the layer walk and nothing of the optional modes."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr
    compiled = json.loads(run.stdout.strip().splitlines()[-1])
    assert compiled["forward_step"] >= 1 and compiled["backward_step"] >= 1
    assert compiled["draw_mask"] == compiled["bn_forward"] == compiled["bn_backward"] == 0


STAMP = """
import json, numpy as np
from fastbp.kernels import cpu_split, sync
cpu_split.wake_partner(np.zeros(sync.STATE_LENGTH, np.int64))  # a small driver of cpu_split.py, inlining sync's code
stats = cpu_split.wake_partner.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


@pytest.mark.parametrize("changed", ["kernels/sync.py", "spec.py"])
def test_a_change_in_a_callee_module_invalidates_the_cached_drivers(tmp_path, changed):
    """Numba keys a cached function on its own file's contents only, yet the drivers carry
    code and constants of other modules compiled in (``sync``'s barrier, ``spec``'s codes):
    after an upgrade or a checkout that changed only those, the stale machine code would be
    loaded. The drivers' stamp covers every module they compile in."""
    import shutil

    import fastbp
    package = tmp_path / "src" / "fastbp"
    shutil.copytree(os.path.dirname(fastbp.__file__), package, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path / "src"))

    def run():
        done = subprocess.run([sys.executable, "-c", STAMP], capture_output=True, text=True, timeout=600, env=env,
                              cwd=tmp_path)  # not the checkout's folder: its fastbp would come first
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert run() == {"hits": 0, "misses": 1}  # compiled and cached
    assert run() == {"hits": 1, "misses": 0}  # loaded
    with open(package / changed, "a") as source:
        source.write("\n# a change in a module the driver compiles in\n")
    assert run() == {"hits": 0, "misses": 1}  # compiled again, not the stale code


def test_the_stamp_reads_the_sources_from_a_zip_archive_too(tmp_path):
    """The digest is read through the package's loader: imported from a zip archive (which
    Numba's cache supports), the kernels import and get the digest of the same sources."""
    import zipfile

    import fastbp
    root = os.path.dirname(os.path.dirname(fastbp.__file__))
    archive = tmp_path / "fastbp.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for folder, _, files in os.walk(os.path.join(root, "fastbp")):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    zipped.write(path, os.path.relpath(path, root))
    env = dict(os.environ, PYTHONPATH=str(archive), NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    code = "import fastbp.kernels.cpu_split, fastbp.kernels.cpu as c; print(c.__file__); print(c.sources_digest())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, digest = done.stdout.split()
    assert where.startswith(str(archive))
    assert digest == cpu.sources_digest()
