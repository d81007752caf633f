"""BLAS thread pools during fit / predict (fastbp.threads)."""

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

import fastbp
from fastbp import cpu_training, threads


def pool_threads(pool):
    return [lib.num_threads for lib in pool.lib_controllers]


@pytest.fixture
def pools():
    found = threads.blas_pools()
    if found is None or not found[0].lib_controllers:
        pytest.skip("no BLAS that threadpoolctl controls")
    return found


def test_kernel_pool_is_scipys_blas(pools):
    kernels, numpy_only = pools
    import numpy
    import scipy
    for lib in kernels.lib_controllers:
        assert not (threads._under(lib.filepath, numpy) and not threads._under(lib.filepath, scipy))
    for lib in numpy_only.lib_controllers:
        assert threads._under(lib.filepath, numpy)


def test_settings_restored_and_override(pools):
    kernels, numpy_only = pools
    with kernels.limit(limits=2), numpy_only.limit(limits=2):
        with threads.blas_threads([4, 3, 2], 8):
            assert pool_threads(kernels) == [1] * len(kernels.lib_controllers)  # tiny GEMMs: one thread
            assert pool_threads(numpy_only) == [1] * len(numpy_only.lib_controllers)
        assert pool_threads(kernels) == [2] * len(kernels.lib_controllers)
        assert pool_threads(numpy_only) == [2] * len(numpy_only.lib_controllers)
        with threads.blas_threads([4, 3, 2], 8, threads=2):
            assert pool_threads(kernels) == [2] * len(kernels.lib_controllers)


def test_fit_runs_inside_the_limits_and_restores(pools):
    kernels, _ = pools
    seen = []
    X = np.random.default_rng(0).standard_normal((17, 5))
    y = np.arange(17) % 3
    net = fastbp.MLP([5, 7, 4, 3], seed=0)  # two hidden layers: threads=2 goes to BLAS, not to the split path
    with kernels.limit(limits=2):
        net.fit(X, y, epochs=1, callbacks=[lambda n, e, h: seen.append(pool_threads(kernels))])
        net.fit(X, y, epochs=1, threads=2, callbacks=[lambda n, e, h: seen.append(pool_threads(kernels))])
        assert pool_threads(kernels) == [2] * len(kernels.lib_controllers)
    assert seen[0] == [1] * len(kernels.lib_controllers)
    assert seen[1] == [2] * len(kernels.lib_controllers)


def test_split_path_runs_its_blas_on_one_thread(pools):
    """threads=2 on a one-hidden-layer network: two threads of the split path, each
    calling BLAS on one thread (not two threads × two BLAS threads on two cores)."""
    if not cpu_training.two_threads_available():
        pytest.skip("the split path cannot run here")
    kernels, _ = pools
    seen = []
    X = np.random.default_rng(0).standard_normal((17, 5))
    net = fastbp.MLP([5, 7, 3], seed=0)
    with kernels.limit(limits=2):
        net.fit(X, np.arange(17) % 3, epochs=1, threads=2,
                callbacks=[lambda n, e, h: seen.append(pool_threads(kernels))])
        assert pool_threads(kernels) == [2] * len(kernels.lib_controllers)
    assert seen == [[1] * len(kernels.lib_controllers)]


def test_user_limit_is_honoured(pools, monkeypatch):
    kernels, _ = pools
    monkeypatch.setattr(threads, "CROSSOVER_MNK", 1.0)  # every GEMM would take all cores
    with kernels.limit(limits=1), threads.blas_threads([4, 3, 2], 8):
        assert pool_threads(kernels) == [1] * len(kernels.lib_controllers)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_threads_rejected_before_training(bad):
    X = np.random.default_rng(0).standard_normal((9, 4))
    net = fastbp.MLP([4, 3, 2], seed=0)
    before = net.theta.copy()
    with pytest.raises(ValueError, match="threads"):
        net.fit(X, np.arange(9) % 2, epochs=1, threads=bad)
    np.testing.assert_array_equal(net.theta, before)


def test_choice_follows_the_crossover(monkeypatch):
    sizes = [64, 128, 10]
    # the dominant GEMM of a 64-128-10 step at batch 32: 32 x 128 x 64 (forward or dW)
    assert max(m * n * k for m, n, k in threads.gemm_shapes(sizes, 32)) == 32 * 128 * 64
    monkeypatch.setattr(threads, "CROSSOVER_MNK", 32 * 128 * 64)
    assert threads.choose_threads(sizes, 32, cores=2) == 2
    monkeypatch.setattr(threads, "CROSSOVER_MNK", 32 * 128 * 64 + 1)
    assert threads.choose_threads(sizes, 32, cores=2) == 1


def test_gemm_shapes_count_every_product():
    shapes = threads.gemm_shapes([6, 5, 4, 3], 2)
    flops = sum(2 * m * n * k for m, n, k in shapes)
    from fastbp.bench import matmul_flops
    assert flops == matmul_flops([6, 5, 4, 3], 2)


def test_bench_rows_run_on_tiny_data(monkeypatch):
    from fastbp import bench
    monkeypatch.setattr(bench, "PAUSE", 0.0)
    config = bench.Config("tiny", (6, 5, 3), 4, 9, 9, 1.0, description="6-5-3, batch 4")
    r = bench.robustness(config, epochs=2)
    assert len(r["seconds_alone"]) == len(r["seconds_alternating"]) == 2
    assert 0 < r["worst_alternating"] <= r["median_alternating"]
    assert 0 < r["worst_alone"] <= r["median_alone"]
    assert r["rows"] == config.rows() * bench.ROBUSTNESS_ROWS_SCALE
    assert r["worst_alone_over_median_alone"] == r["worst_alone"] / r["median_alone"] <= 1
    i = bench.inference(config, repeats=1, rows=7)
    assert i["rows"] == 7 and i["speedup"] > 0


def test_measure_crossover_runs_and_reports_each_shape(capsys):
    """The crossover measurement (``python -m fastbp.threads``) on two tiny shapes: one row
    per shape with positive times; the crossover is inf or one of the measured m·n·k."""
    shapes = ((4, 8, 8), (8, 16, 16))
    rows, crossover = threads.measure_crossover(shapes=shapes, repeats=1, calls=3)
    assert [r[:3] for r in rows] == list(shapes)
    assert all(r[3] > 0 and r[4] > 0 for r in rows)
    assert crossover == float("inf") or crossover in {m * n * k for m, n, k in shapes}


def test_measure_crossover_gives_the_users_pool_back(pools):
    kernels, _ = pools
    with kernels.limit(limits=1):
        threads.measure_crossover(shapes=((4, 8, 8),), repeats=1, calls=2)
        assert pool_threads(kernels) == [1] * len(kernels.lib_controllers)


@pytest.mark.parametrize("rows, expected", [
    # (m, n, k, seconds with one thread, seconds with all): all threads win from 8·8·8 up
    ([(2, 2, 2, 1.0, 2.0), (4, 4, 4, 1.0, 1.5), (8, 8, 8, 2.0, 1.0), (16, 16, 16, 9.0, 5.0)], 512),
    # the largest shape lost: no crossover, whatever the smaller ones did
    ([(2, 2, 2, 2.0, 1.0), (16, 16, 16, 5.0, 5.0)], float("inf")),
    # a loss in the middle: the crossover is above it, even though a smaller shape won
    ([(16, 16, 16, 9.0, 5.0), (2, 2, 2, 2.0, 1.0), (8, 8, 8, 1.0, 2.0)], 4096),
    # every shape won, in any order
    ([(8, 8, 8, 2.0, 1.0), (2, 2, 2, 2.0, 1.0)], 8),
])
def test_crossover_is_where_all_threads_win_from_there_up(rows, expected):
    assert threads.crossover_of(rows) == expected


def test_main_prints_one_row_per_shape_and_the_crossover(monkeypatch, capsys):
    rows = [(32, 128, 64, 20e-6, 30e-6), (256, 1024, 1024, 9e-3, 5e-3)]
    monkeypatch.setattr(threads, "measure_crossover", lambda: (rows, threads.crossover_of(rows)))
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    threads.main()
    lines = capsys.readouterr().out.splitlines()
    assert "2 threads us" in lines[0]
    assert lines[1].split() == ["32", "128", "64", "262,144", "20.0", "30.0"]
    assert lines[2].split() == ["256", "1024", "1024", "268,435,456", "9000.0", "5000.0"]
    assert lines[3] == "crossover m*n*k: 268,435,456"


def test_available_cores_without_sched_getaffinity(monkeypatch):
    """Not on Linux (no os.sched_getaffinity): the machine's CPU count, at least one."""
    monkeypatch.delattr(threads.os, "sched_getaffinity")
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 6)
    assert threads.available_cores() == 6
    monkeypatch.setattr(threads.os, "cpu_count", lambda: None)  # "undeterminable"
    assert threads.available_cores() == 1


def test_cores_default_to_the_available_ones(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 3)
    monkeypatch.setattr(threads, "CROSSOVER_MNK", 1.0)
    assert threads.threads_for_gemm(1, 1, 1) == 3
    assert threads.choose_threads([4, 3, 2], 8) == 3


def test_override_may_exceed_the_users_limit(pools):
    """``threads=`` is the user's own request: it is not capped by the current setting,
    and the setting comes back afterwards."""
    kernels, _ = pools
    with kernels.limit(limits=1):
        with threads.blas_threads([4, 3, 2], 8, threads=2):
            assert pool_threads(kernels) == [2] * len(kernels.lib_controllers)
        assert pool_threads(kernels) == [1] * len(kernels.lib_controllers)


def test_without_threadpoolctl_nothing_is_changed(pools, monkeypatch):
    """threadpoolctl not importable: no pools, and blas_threads runs its block untouched."""
    import sys
    kernels, numpy_only = pools
    monkeypatch.setattr(threads, "_pools", None)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    assert threads.blas_pools() is None
    ran = []
    with kernels.limit(limits=2), numpy_only.limit(limits=2):
        with threads.blas_threads([4, 3, 2], 8, threads=1):
            ran.append(pool_threads(kernels) + pool_threads(numpy_only))
    assert ran == [[2] * (len(kernels.lib_controllers) + len(numpy_only.lib_controllers))]


def test_crossover_from_the_environment(monkeypatch):
    import importlib
    monkeypatch.setenv("FASTBP_BLAS_CROSSOVER", "4096")
    try:
        importlib.reload(threads)
        assert threads.CROSSOVER_MNK == 4096.0
        assert threads.threads_for_gemm(16, 16, 16, cores=2) == 2
        assert threads.threads_for_gemm(16, 16, 15, cores=2) == 1
    finally:
        monkeypatch.delenv("FASTBP_BLAS_CROSSOVER")
        importlib.reload(threads)
    assert threads.CROSSOVER_MNK == 2.0 ** 22
