"""BLAS thread pools during fit / predict (fastbp.threads)."""

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

import fastbp
from fastbp import threads


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
    net = fastbp.MLP([5, 7, 3], seed=0)
    with kernels.limit(limits=2):
        net.fit(X, y, epochs=1, callbacks=[lambda n, e, h: seen.append(pool_threads(kernels))])
        net.fit(X, y, epochs=1, threads=2, callbacks=[lambda n, e, h: seen.append(pool_threads(kernels))])
        assert pool_threads(kernels) == [2] * len(kernels.lib_controllers)
    assert seen[0] == [1] * len(kernels.lib_controllers)
    assert seen[1] == [2] * len(kernels.lib_controllers)


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
