"""Every asv benchmark runs: import each module, then for every benchmark method and
parameter run setup (or setup_cache) and one call, on tiny data
(FASTBP_BENCH_SIZE=tiny), so that a broken benchmark fails pytest quickly.

The startup suite is the slow part (one cold JIT compile in a subprocess); the
rest takes a few seconds once the kernels are compiled.
"""

import importlib
import inspect
import itertools
import pathlib
import sys

import numpy as np
import pytest

from fastbp import bench

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
PREFIXES = ("time_", "track_", "peakmem_", "mem_", "timeraw_")


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    """Tiny data, no pauses, one BLAS thread (two OpenBLAS pools, NumPy's and SciPy's,
    oversubscribe two cores; these tests check that benchmarks run, not speed)."""
    monkeypatch.setenv("FASTBP_BENCH_SIZE", "tiny")
    monkeypatch.setattr(bench, "PAUSE", 0.0)
    monkeypatch.syspath_prepend(str(ROOT))
    threadpoolctl = pytest.importorskip("threadpoolctl")
    bench.blas_info()  # loads SciPy's BLAS (Numba's np.dot) so that the limit covers it
    with threadpoolctl.threadpool_limits(1):
        yield


def benchmark_classes(module):
    for name, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__ and any(m.startswith(PREFIXES) for m in dir(cls)):
            yield name, cls


def run_class(cls):
    """setup_cache / setup / each benchmark once / teardown, for every parameter combination."""
    methods = [m for m in dir(cls) if m.startswith(PREFIXES)]
    instance = cls()
    cache = (instance.setup_cache(),) if hasattr(cls, "setup_cache") else ()
    params = getattr(cls, "params", [])
    for combo in itertools.product(*params) if params else [()]:
        for method in methods:
            bench_instance = cls()
            args = (*cache, *combo)
            try:
                if hasattr(bench_instance, "setup"):
                    bench_instance.setup(*args)
            except NotImplementedError:  # asv: "skipped" (e.g. no CUDA GPU)
                continue
            value = getattr(bench_instance, method)(*args)
            if method.startswith("track_"):
                assert isinstance(value, (int, float)) and value == value, (method, combo, value)
                assert getattr(getattr(cls, method), "unit", None), f"{method} has no unit"
            if hasattr(bench_instance, "teardown"):
                bench_instance.teardown(*args)


def test_benchmark_modules_found():
    assert {"bench_training", "bench_startup", "bench_inference", "bench_cuda"} <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_benchmark_module_runs(module_name):
    sys.modules.pop(f"benchmarks.{module_name}", None)
    module = importlib.import_module(f"benchmarks.{module_name}")
    classes = list(benchmark_classes(module))
    assert classes, f"no benchmarks in {module_name}"
    for _, cls in classes:
        run_class(cls)


def test_bench_cli_quick_json(capsys):
    """``fastbp bench`` end to end on one configuration, JSON output."""
    import json
    assert bench.main(["--json", "--quick", "--config", "small", "--no-start", "--no-memory",
                       "--no-torch", "--no-robustness"]) == 0
    out = json.loads(capsys.readouterr().out)
    (result,) = out["configs"]
    assert result["config"] == "small" and result["speedup"] > 0
    assert out["gemm_gflops"] > 0


#: every module under benchmarks/prototypes/ with the arguments of a quick run
PROTOTYPE_ARGS = {
    "compile_profile": ["train", "--epochs", "1", "--no-reference"],
    "small_crossover": ["--sizes", "9,17,5", "--batches", "4", "--rounds", "1", "--work", "20000"],
    "small_microkernel": ["--rounds", "1"],
    "small_phases": ["--sizes", "9,17,5", "--batch", "4", "--rows", "64", "--rounds", "1"],
    "split_crossover": ["--inputs", "9", "--hidden", "17", "--batches", "8", "--rounds", "1", "--work", "20000"],
    "split_after_idle": ["--fits", "1", "--pause", "0", "--rows", "100"],
    "split_layout": ["--rounds", "1", "--fits", "1", "--sizes", "9,17,10", "--batch", "8", "--rows", "200"],
}


def test_every_prototype_has_a_smoke_run():
    found = {p.stem for p in (ROOT / "benchmarks" / "prototypes").glob("*.py")} - {"__init__"}
    assert found == set(PROTOTYPE_ARGS)


@pytest.mark.parametrize("name", sorted(PROTOTYPE_ARGS))
def test_prototype_runs(name, capsys):
    module = importlib.import_module(f"benchmarks.prototypes.{name}")
    module.main(PROTOTYPE_ARGS[name])
    out = capsys.readouterr().out
    assert out.count("\n") >= 2, out


def test_split_crossover_times_dropout_clip_norm_and_weights(capsys):
    """The crossover prototype with the fit options it can time (both sides take them)."""
    module = importlib.import_module("benchmarks.prototypes.split_crossover")
    module.main(PROTOTYPE_ARGS["split_crossover"] + ["--dropout", "0.2", "--clip-norm", "1", "--weighted"])
    out = capsys.readouterr().out
    assert out.count("\n") >= 2, out
    X, Y, _ = module.training_set([9, 17, 10], 8, 20000)
    pair = [module.engine([9, 17, 10], X, Y, 8, 0, threads, 0.2, 1.0, np.ones(X.shape[0])) for threads in (1, 2)]
    assert pair[0].split is None and pair[1].split is not None
    assert pair[1].split.row_weights is not None and pair[1].hyper.clip_norm == 1.0 and pair[1].net.keep[0] < 1


def test_split_crossover_against_the_blas_threads_of_a_fit(capsys):
    """``--auto-blas``: the one-thread side with the BLAS threads a fit would choose."""
    module = importlib.import_module("benchmarks.prototypes.split_crossover")
    module.main(PROTOTYPE_ARGS["split_crossover"] + ["--auto-blas"])
    out = capsys.readouterr().out
    assert out.count("\n") >= 2 and "9-17-10" in out, out


def test_prototypes_define_no_asv_benchmark_names():
    """asv collects every module under benchmarks/, prototypes included: a prototype
    function named like a benchmark (time_*, track_*, ...) breaks `asv check` in CI."""
    for path in sorted((ROOT / "benchmarks" / "prototypes").glob("*.py")):
        module = importlib.import_module(f"benchmarks.prototypes.{path.stem}")
        named = [name for name, _ in inspect.getmembers(module) if name.startswith(PREFIXES)]
        assert not named, (path.name, named)
