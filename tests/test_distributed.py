"""fastbp on a Dask cluster: exact distributed L-BFGS, local SGD with averaging, data that
stays on the workers, a killed worker, the scikit-learn estimators under joblib's dask
backend and dask-ml's Incremental, and partial_fit over a memmap larger than the memory
the process may allocate.

One ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` serves the module;
the tests that kill a worker run last.
"""

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import fastbp
from fastbp import distributed as fd
from fastbp.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
PARTS = (600, 500, 697)  # uneven row chunks of digits' 1797 rows


def warm_kernels():
    """Compile (or load from Numba's cache) the kernel specialisations these tests use."""
    from fastbp.sklearn import MLPClassifier
    X, y = load_digits()
    X, y = X[:64] / 16.0, y[:64]
    fastbp.MLP([64, 8, 10], dtype="float64").flat_gradient(X, y)
    fastbp.MLP([64, 8, 10]).fit(X, y, epochs=1)
    fastbp.MLP([64, 8, 10], dtype="float64").fit(X, y, epochs=1, optimizer="sgd", shuffle=False)
    MLPClassifier((8,), max_iter=1).fit(X, y).score(X, y)
    read_only = np.asarray(X, np.float32)
    read_only.flags.writeable = False  # as the memmap test's blocks
    MLPClassifier((8,), max_iter=1).fit(read_only, y).score(read_only, y)


@pytest.fixture(scope="module")
def client():
    """Two worker processes. The kernels are compiled here first, so that the workers load
    them from Numba's cache instead of both compiling them at once on a fresh checkout."""
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the loaders below, on the workers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm_kernels()
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, worker_dashboard_address=None)
    with cluster, distributed.Client(cluster) as c:
        c.run(warm_kernels)
        yield c


def _load_part(i, column, marker=None):
    """Chunk i of digits' scaled pixels (column 0) or labels (1), loaded on a worker. With
    ``marker`` the source can be read once only: a second load (a recomputation after
    losing the worker that held it) fails."""
    if marker is not None:
        path = f"{marker}-{i}-{column}"
        if os.path.exists(path):
            raise OSError(f"data source of chunk {i} is gone")
        open(path, "w").close()
    X, y = load_digits()
    start = sum(PARTS[:i])
    return X[start:start + PARTS[i]] / 16.0 if column == 0 else y[start:start + PARTS[i]]


def digits_on_workers(marker=None):
    """(X, y) as dask arrays whose chunks are loaded on the workers: the client never holds them."""
    from dask import delayed
    load = delayed(_load_part, pure=False)
    X = da.concatenate([da.from_delayed(load(i, 0, marker), (n, 64), np.float64) for i, n in enumerate(PARTS)])
    y = da.concatenate([da.from_delayed(load(i, 1, marker), (n,), np.int64) for i, n in enumerate(PARTS)])
    return X, y


def single_machine_lbfgs(net, X, y, max_iter, l2):
    """scipy's L-BFGS-B on the concatenated data with fastbp's full-batch objective."""
    from scipy.optimize import minimize

    def objective(theta):
        net.theta[...] = theta
        return net.flat_gradient(X, y, l2=l2)

    result = minimize(objective, net.theta.copy(), jac=True, method="L-BFGS-B",
                      options={"maxcor": 10, "ftol": 0.0, "gtol": 1e-12, "maxfun": 15000, "maxiter": max_iter})
    return result.x


def worker_bytes_sent(client):
    """{worker: [bytes of each outgoing transfer]} (to peers, the scheduler or the client)."""
    logs = client.run(lambda dask_worker: [entry["total"] for entry in dask_worker.transfer_outgoing_log])
    return logs


# --- no dask unless asked ----------------------------------------------------------------------

def test_import_fastbp_does_not_import_dask():
    code = "import sys, fastbp, fastbp.distributed; assert not [m for m in sys.modules if m.startswith('dask') " \
           "or m.startswith('distributed')], 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_bad_input_is_refused_before_anything_runs(client):
    X, y = load_digits()
    net = fastbp.MLP([64, 8, 10])
    with pytest.raises(TypeError, match="dask arrays"):
        fd.fit_lbfgs(net, X, y, client)
    with pytest.raises(ValueError, match="shape"):
        fd.fit_lbfgs(net, da.from_array(X[:, :10]), da.from_array(y), client)
    with pytest.raises(ValueError, match="batchnorm"):
        fd.fit_averaged(fastbp.MLP([64, 8, 10], batchnorm=True), da.from_array(X), da.from_array(y), client)
    with pytest.raises(ValueError, match="local_steps"):
        fd.fit_averaged(net, da.from_array(X), da.from_array(y), client, local_steps=0)
    with pytest.raises(ValueError, match="l2"):
        fd.fit_lbfgs(net, da.from_array(X), da.from_array(y), client, l2=-1)
    with pytest.raises(ValueError, match="loss"):
        fd.fit_lbfgs(net, da.from_array(X), da.from_array(y), client, loss="hinge")


# --- exact L-BFGS, data left in place ----------------------------------------------------------

def test_lbfgs_matches_single_machine_and_moves_only_theta(client):
    client.wait_for_workers(2)
    X, y = digits_on_workers()
    net = fastbp.MLP([64, 24, 10], activation="tanh", dtype="float64", seed=3)
    start = net.copy()
    before = worker_bytes_sent(client)
    history = fd.fit_lbfgs(net, X, y, client, l2=1e-3, max_iter=15)
    after = worker_bytes_sent(client)

    Xl, yl = load_digits()
    expected = single_machine_lbfgs(start, Xl / 16.0, yl, 15, l2=1e-3)
    assert history.iterations == 15
    np.testing.assert_allclose(net.theta, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    assert history.loss[-1] == pytest.approx(start.flat_gradient(Xl / 16.0, yl, l2=1e-3)[0], rel=1e-12)

    # the client received one (n_params + 1)-vector per evaluation, and no worker ever sent
    # anything as large as a chunk: every transfer was a θ-sized sum
    vector = (net.n_params + 1) * 8
    assert sum(history.bytes_received) == history.evaluations * vector
    smallest_chunk = min(PARTS) * 64 * 8
    transfers = [b for w in after for b in after[w][len(before.get(w, [])):]]
    assert transfers and max(transfers) < min(2 * vector, smallest_chunk)


# --- local SGD with averaging ------------------------------------------------------------------

def test_averaging_with_one_step_is_sgd_on_the_global_batch(client):
    """k = 1 with plain SGD: the average of the chunks' steps is one step on their union."""
    client.wait_for_workers(2)
    X, y = load_digits()
    X = X[:200] / 16.0
    y = y[:200]
    net = fastbp.MLP([64, 12, 10], dtype="float64", seed=1)
    single = net.copy()
    fd.fit_averaged(net, da.from_array(X, chunks=(100, -1)), da.from_array(y, chunks=100), client,
                    optimizer=fastbp.SGD(0.1), batch_size=16, local_steps=1, rounds=3, seed=7)
    first_pass = [np.random.default_rng([7, c, 0]).permutation(100) + 100 * c for c in range(2)]
    for r in range(3):
        rows = np.concatenate([p[16 * r:16 * (r + 1)] for p in first_pass])
        single.fit(X[rows], y[rows], optimizer=fastbp.SGD(0.1), epochs=1, batch_size=32, shuffle=False,
                   gradient_warnings=False)
    np.testing.assert_allclose(net.theta, single.theta, rtol=0, atol=1e-12)


def test_averaging_reaches_single_machine_accuracy_on_digits(client):
    """Two workers, Adam, 16 local steps between averages, the learning rate doubled for
    the doubled global batch (Goyal et al. 2017), the same 20 epochs of data as one machine."""
    client.wait_for_workers(2)
    X, y = load_digits()
    X = X / 16.0
    train, test = fastbp.datasets.stratified_split(y, 0.25, seed=0)
    half = -(-len(train) // 2)
    net = fastbp.MLP([64, 64, 10], seed=0)
    single = net.copy()
    single.fit(X[train], y[train], optimizer=fastbp.Adam(1e-3), epochs=20, batch_size=32)
    history = fd.fit_averaged(net, da.from_array(X[train], chunks=(half, -1)), da.from_array(y[train], chunks=half),
                              client, optimizer=fastbp.Adam(2e-3), batch_size=32, local_steps=16, epochs=20)
    assert history.n_chunks == 2 and history.iterations == -(-20 * len(train) // (2 * 16 * 32))
    assert net.fit_state.step[0] == 16 * history.iterations  # Adam's step count kept with its moments
    single_accuracy = single.evaluate(X[test], y[test])["accuracy"]
    accuracy = net.evaluate(X[test], y[test])["accuracy"]
    assert single_accuracy > 0.94
    assert abs(accuracy - single_accuracy) <= 0.01, (accuracy, single_accuracy)


# --- scikit-learn estimators on Dask -----------------------------------------------------------

@pytest.mark.filterwarnings("ignore")
def test_grid_search_with_the_joblib_dask_backend(client):
    import joblib
    from sklearn.model_selection import GridSearchCV

    from fastbp.sklearn import MLPClassifier
    X, y = load_digits()
    X, y = X[:400] / 16.0, y[:400]
    grid = {"alpha": [1e-4, 1e-1], "hidden_layer_sizes": [(8,), (16,)]}
    def make():
        return GridSearchCV(MLPClassifier(max_iter=15, random_state=0), grid, cv=2)
    with joblib.parallel_config(backend="dask"), distributed.get_task_stream(client) as stream:
        on_dask = make().fit(X, y)
    here = make().fit(X, y)
    # the 4 candidates x 2 folds ran on the cluster; joblib's auto-batching may pack several
    # fits into one task (6 tasks seen once), so count tasks, not fits
    assert len(stream.data) >= 2
    np.testing.assert_allclose(on_dask.cv_results_["mean_test_score"], here.cv_results_["mean_test_score"])
    assert on_dask.best_params_ == here.best_params_


@pytest.mark.filterwarnings("ignore")
def test_dask_ml_incremental_streams_blocks_through_partial_fit(client):
    """Incremental = partial_fit over the blocks in order. (shuffle=False: the estimator
    is pickled between tasks on different workers, which loses the epoch count that
    seeds the shuffle -- see the xfail test below.)"""
    from dask_ml.wrappers import Incremental

    from fastbp.sklearn import MLPClassifier
    X, y = load_digits()
    X = X / 16.0
    Xd, yd = da.from_array(X, chunks=(450, -1)), da.from_array(y, chunks=450)
    def make():
        return MLPClassifier((16,), shuffle=False, random_state=0)
    incremental = Incremental(make(), shuffle_blocks=False, scoring="accuracy")
    incremental.fit(Xd, yd, classes=np.arange(10))
    local = make()
    for start in range(0, len(X), 450):
        local.partial_fit(X[start:start + 450], y[start:start + 450], classes=np.arange(10))
    for a, b in zip(incremental.estimator_.coefs_, local.coefs_):
        np.testing.assert_array_equal(a, b)
    assert incremental.score(Xd, yd) == pytest.approx(local.score(X, y))


@pytest.mark.filterwarnings("ignore")
def test_partial_fit_continues_exactly_after_pickling():
    """What Dask does between tasks (ship the estimator) must not change the training."""
    import pickle

    from fastbp.sklearn import MLPClassifier
    X, y = load_digits()
    X = X / 16.0
    straight, shipped = MLPClassifier((16,), random_state=0), MLPClassifier((16,), random_state=0)
    for start in range(0, 900, 450):
        straight.partial_fit(X[start:start + 450], y[start:start + 450], classes=np.arange(10))
        shipped = pickle.loads(pickle.dumps(shipped))
        shipped.partial_fit(X[start:start + 450], y[start:start + 450], classes=np.arange(10))
    for a, b in zip(straight.coefs_, shipped.coefs_):
        np.testing.assert_array_equal(a, b)


# --- out of core: partial_fit over a memmap larger than the process may allocate ---------------

MEMMAP_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from fastbp.sklearn import MLPClassifier

    def private_bytes():  # what RLIMIT_DATA counts: the process's private writable memory
        for line in open("/proc/self/status"):
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

    path, features, block = sys.argv[1], 128, 16384
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((8, block, features)).astype(np.float32)  # 8 distinct blocks, tiled
    pool_labels = (pool @ rng.standard_normal((features, 10)).astype(np.float32)).argmax(axis=2)
    limit = private_bytes() + 64 * 2**20          # all the process may allocate from here on
    rows = (limit + 64 * 2**20) // (features * 4) // block * block + block  # the file: > 64 MiB more
    X = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, features))
    labels = np.empty(rows, np.int64)
    for k, s in enumerate(range(0, rows, block)):
        X[s:s + block], labels[s:s + block] = pool[k % 8], pool_labels[k % 8]
    X.flush()
    del X, pool
    X = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, features))
    # compile (or load) the kernels for read-only float32 blocks before the limit
    MLPClassifier((16,), max_iter=1).fit(X[:256], labels[:256])
    clf = MLPClassifier((16,), batch_size=256, learning_rate_init=1e-2, random_state=0)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        np.array(X[: rows // 2])
        sys.exit("loading half of the memmap did not hit the limit")
    except MemoryError:
        pass
    for s in range(0, rows, block):
        clf.partial_fit(X[s:s + block], labels[s:s + block], classes=np.arange(10))
    print(X.nbytes, limit, clf.score(X[:block], labels[:block]))
""")


def test_partial_fit_over_a_memmap_larger_than_the_memory_limit(tmp_path):
    """RLIMIT_DATA (``ulimit -d``) caps the private memory a process may allocate; a
    read-only file mapping is not counted, so the memmap streams through page cache.
    (RLIMIT_AS, ``ulimit -v``, counts the mapping itself: a memmap larger than it cannot be
    opened at all.) The limit is set after Python, NumPy, scikit-learn and the compiled
    kernels are loaded (~330 MB of private memory here) plus 64 MiB; the file is larger
    than the whole limit, and copying half of it must fail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", MEMMAP_SCRIPT, str(tmp_path / "X.f32")], check=False, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    file_bytes, limit, score = result.stdout.split()
    assert int(file_bytes) > int(limit)
    assert float(score) > 0.8  # it learned the linear labelling, so every block was read


# --- the example -------------------------------------------------------------------------------

def test_example_quick_on_this_cluster(client, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("dask_cluster", ROOT / "examples" / "dask_cluster.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--quick"], client=client) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "all distributed checks passed" in out


# --- a worker killed mid-fit (last: the cluster restarts a worker) ----------------------------

def kill_a_worker_holding_data(client):
    holding = {w: sum(str(k).startswith("_make_block") for k in keys) for w, keys in client.has_what().items()}
    victim = max(holding, key=holding.get)
    assert holding[victim] > 0
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)


def test_killed_worker_is_recovered_and_the_fit_is_unchanged(client):
    client.wait_for_workers(2)
    X, y = digits_on_workers()
    net = fastbp.MLP([64, 16, 10], dtype="float64", seed=5)
    undisturbed = net.copy()
    fd.fit_lbfgs(undisturbed, X, y, client, max_iter=6)

    def kill_at_two(net_, iteration, history):
        if iteration == 2:
            kill_a_worker_holding_data(client)

    history = fd.fit_lbfgs(net, X, y, client, max_iter=6, callback=kill_at_two)
    assert history.iterations == 6
    np.testing.assert_allclose(net.theta, undisturbed.theta, rtol=0, atol=1e-12)


def test_killed_worker_with_a_lost_data_source_stops_at_the_last_iteration(client, tmp_path):
    client.wait_for_workers(2, timeout=120)
    X, y = digits_on_workers(marker=str(tmp_path / "loaded"))
    net = fastbp.MLP([64, 16, 10], dtype="float64", seed=5)
    completed = {}

    def kill_at_two(net_, iteration, history):
        completed[iteration] = net_.theta.copy()
        if iteration == 2:
            kill_a_worker_holding_data(client)

    with pytest.raises(fd.DistributedFitError, match=r"iteration 3.*data source of chunk \d is gone.*iteration 2"):
        fd.fit_lbfgs(net, X, y, client, max_iter=6, callback=kill_at_two, retries=1)
    assert max(completed) == 2
    np.testing.assert_array_equal(net.theta, completed[2])
