"""fastbp.distributed with its workers in this process (``LocalCluster(processes=False)``),
so the worker side (chunk sums, local rounds, the per-thread network cache) runs where
plain asserts and coverage see it; tiny networks and a few iterations. The module
``test_distributed.py`` covers worker processes, lost workers and the data staying put."""

import threading
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import fastbp
from fastbp import distributed as fd

SIZES = [5, 4, 3]


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                           dashboard_address=None)
    with cluster, distributed.Client(cluster) as c:
        yield c


def blobs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, SIZES[0]))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    return X, y


def scipy_lbfgs(net, X, y, max_iter, l2=0.0):
    """scipy's L-BFGS-B on the whole data with fastbp's full-batch objective."""
    from scipy.optimize import minimize
    net = net.copy()

    def objective(theta):
        net.theta[...] = theta
        return net.flat_gradient(X, y, l2=l2)

    return minimize(objective, net.theta.copy(), jac=True, method="L-BFGS-B",
                    options={**fd.LBFGS_OPTIONS, "maxiter": max_iter}).x


# --- pieces that need no cluster ---------------------------------------------------------------

def test_stream_rows_walks_reshuffled_passes():
    """Positions 3..11 of chunk 1's stream over 5 rows: the end of pass 0, all of pass 1,
    the start of pass 2, each pass its own seeded permutation."""
    passes = [np.random.default_rng([3, 1, e]).permutation(5) for e in range(3)]
    expected = np.concatenate([passes[0][3:], passes[1], passes[2][:2]])
    np.testing.assert_array_equal(fd._stream_rows(5, 3, 1, 3, 9), expected)
    np.testing.assert_array_equal(fd._stream_rows(5, 3, 1, 3, 9), fd._stream_rows(5, 3, 1, 3, 9))  # stateless
    assert sorted(fd._stream_rows(5, 3, 0, 5, 5)) == list(range(5))  # one whole pass: every row once


def test_make_block_converts_and_checks_rows():
    X, y = fd._make_block(np.asfortranarray(np.ones((4, 3))), [0, 1, 1, 0], "float32")
    assert X.dtype == np.float32 and X.flags.c_contiguous and y.tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="3 rows but its chunk of y has 2"):
        fd._make_block(np.ones((3, 2)), np.zeros(2), "float64")


def test_worker_nets_are_per_thread_and_least_recently_used_dropped(monkeypatch):
    monkeypatch.setattr(fd, "_worker_nets", type(fd._worker_nets)())
    spec = fd._Core.spec(fastbp.MLP(SIZES, seed=4, dtype="float64"))
    first = fd._worker_net(spec, 10)
    assert fd._worker_net(spec, 10) is first          # kept across tasks
    assert fd._worker_net(spec, 11) is not first      # another chunk size
    assert first.sizes == SIZES and first.dtype == np.float64
    other = []
    thread = threading.Thread(target=lambda: other.append(fd._worker_net(spec, 10)))
    thread.start()
    thread.join()
    assert other[0] is not first                       # another thread: its own network
    for rows in range(100, 100 + fd.WORKER_NETS_KEPT):
        fd._worker_net(spec, rows)
    assert len(fd._worker_nets) == fd.WORKER_NETS_KEPT
    assert fd._worker_net(spec, 10) is not first      # the oldest was dropped


def test_optimizer_state_before_and_after_a_fit():
    net = fastbp.MLP(SIZES, seed=0, dtype="float64")
    state1, state2, step = fd._Core.get_state(net)
    assert step == 0 and not state1.any() and not state2.any() and state1.shape == (net.n_params,)
    X, y = blobs()
    net.fit(X, y, optimizer=fastbp.Adam(0.01), epochs=1, batch_size=8)
    state1, state2, step = fd._Core.get_state(net)
    assert step == 5 and state1.any() and (state2 > 0).any()  # 40 rows / 8: five Adam steps


# --- the client's checks ----------------------------------------------------------------------

def test_a_net_that_is_not_an_mlp_is_named(client):
    X, y = blobs()
    for fit in (fd.fit_lbfgs, fd.fit_averaged):
        with pytest.raises(TypeError, match="net must be a fastbp.MLP, got dict"):
            fit({}, da.from_array(X), da.from_array(y), client)


def test_bad_dask_inputs_are_refused(client):
    X, y = blobs()
    net = fastbp.MLP(SIZES, dtype="float64")
    with pytest.raises(ValueError, match="y must have 40 rows like X"):
        fd.fit_lbfgs(net, da.from_array(X), da.from_array(y[:30]), client)
    Xd = da.from_array(X, chunks=(10, -1))
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fd.fit_lbfgs(net, Xd[Xd[:, 0] > 0], da.from_array(y), client)
    with pytest.raises(ValueError, match="X has no rows"):
        fd.fit_lbfgs(net, da.from_array(np.zeros((0, 5))), da.from_array(np.zeros(0, int)), client)
    with pytest.raises(ValueError, match="rounds"):
        fd.fit_averaged(net, da.from_array(X), da.from_array(y), client, rounds=0)


# --- L-BFGS -------------------------------------------------------------------------------------

def test_lbfgs_equals_scipy_on_the_whole_data(client):
    """Uneven chunks, one of them empty, columns split in two, the default client:
    the same iterates as scipy on the concatenated data."""
    X, y = blobs()
    net = fastbp.MLP(SIZES, activation="tanh", seed=1, dtype="float64")
    expected = scipy_lbfgs(net, X, y, 6, l2=1e-2)
    Xd = da.from_array(X, chunks=((15, 0, 25), (2, 3)))
    history = fd.fit_lbfgs(net, Xd, da.from_array(y, chunks=7), l2=1e-2, max_iter=6)  # client=None
    np.testing.assert_allclose(net.theta, expected, rtol=0, atol=1e-12)
    assert history.method == "lbfgs" and history.n_chunks == 2 and history.n_workers == 2
    assert history.iterations == 6 and history.evaluations >= 6
    assert sum(history.bytes_received) == history.evaluations * (net.n_params + 1) * 8
    assert sum(history.bytes_sent) == history.evaluations * 2 * net.n_params * 8  # θ to each chunk
    assert history.loss[-1] == pytest.approx(net.flat_gradient(X, y, l2=1e-2)[0], rel=1e-12)
    assert net.loss == "cross_entropy"


def test_lbfgs_callback_true_stops_after_that_iteration(client):
    X, y = blobs()
    net = fastbp.MLP(SIZES, seed=2, dtype="float64")
    expected = scipy_lbfgs(net, X, y, 2)
    seen = []
    history = fd.fit_lbfgs(net, da.from_array(X, chunks=(20, -1)), da.from_array(y, chunks=20), client,
                           max_iter=10, callback=lambda n, i, h: seen.append(i) or i == 2)
    assert seen == [1, 2] and history.iterations == 2
    np.testing.assert_allclose(net.theta, expected, rtol=0, atol=1e-12)


# --- local SGD with averaging --------------------------------------------------------------------

def test_averaging_one_chunk_continues_a_warm_fit_exactly(client):
    """One chunk: the average is that chunk's own run, i.e. ``fit(warm_start=True)`` on the rows
    its stream draws; Adam's moments and step count come from the network's last fit."""
    X, y = blobs()
    Xd, yd = da.from_array(X, chunks=(40, -1)), da.from_array(y, chunks=40)

    def warmed():
        net = fastbp.MLP(SIZES, seed=3, dtype="float64")
        net.fit(X, y, optimizer=fastbp.Adam(0.01), epochs=1, batch_size=8)
        return net

    net, single, cold = warmed(), warmed(), warmed()
    history = fd.fit_averaged(net, Xd, yd, client, optimizer=fastbp.Adam(0.01), batch_size=8, local_steps=3,
                              rounds=2, seed=11, warm_start=True)
    passes = [np.random.default_rng([11, 0, e]).permutation(40) for e in range(2)]
    for rows in (passes[0][:24], np.concatenate([passes[0][24:], passes[1][:8]])):
        single.fit(X[rows], y[rows], optimizer=fastbp.Adam(0.01), epochs=1, batch_size=8, shuffle=False,
                   warm_start=True, gradient_warnings=False)
    np.testing.assert_allclose(net.theta, single.theta, rtol=0, atol=1e-13)
    assert net.fit_state.step[0] == single.fit_state.step[0] == 5 + 6
    np.testing.assert_allclose(net.fit_state.state2, single.fit_state.state2, rtol=1e-12, atol=0)
    assert history.method == "averaging" and history.iterations == 2 and len(history.seconds) == 2
    assert sum(history.bytes_sent) == 2 * 3 * net.n_params * 8  # θ, m and v once per round
    fd.fit_averaged(cold, Xd, yd, client, optimizer=fastbp.Adam(0.01), batch_size=8, local_steps=3,
                    rounds=2, seed=11)
    assert cold.fit_state.step[0] == 6  # without warm_start Adam starts afresh
    assert not np.allclose(cold.theta, net.theta, rtol=0, atol=1e-6)


def test_averaging_callback_true_stops_after_that_round(client):
    X, y = blobs()
    net = fastbp.MLP(SIZES, seed=0, dtype="float64")
    rounds = []
    history = fd.fit_averaged(net, da.from_array(X, chunks=(20, -1)), da.from_array(y, chunks=20), client,
                              optimizer="sgd", batch_size=4, local_steps=1, rounds=5,
                              callback=lambda n, r, h: rounds.append(r) or r == 2)
    assert rounds == [1, 2] and history.iterations == 2
    assert net.fit_state.step[0] == 2


def test_averaging_failure_leaves_the_last_round(client):
    """A chunk whose labels do not fit the network fails on its worker: the fit stops with
    DistributedFitError naming the round and the worker's error; θ is untouched."""
    X, y = blobs()
    y = y.copy()
    y[-1] = 7
    net = fastbp.MLP(SIZES, seed=0, dtype="float64")
    before = net.theta.copy()
    with pytest.raises(fd.DistributedFitError, match=r"round 1.*class labels.*parameters of round 0"):
        fd.fit_averaged(net, da.from_array(X, chunks=(20, -1)), da.from_array(y, chunks=20), client,
                        batch_size=20, local_steps=1, rounds=2, retries=0)
    np.testing.assert_array_equal(net.theta, before)
