"""fastbp beyond one machine: everything of ``fastbp.distributed`` on a Dask LocalCluster.

1. Exact full-batch L-BFGS on digits (float64, chunks on 2 workers) against scipy's
   L-BFGS-B on the concatenated data: the parameters must agree to 1e-10.
2. Per-evaluation time of distributed L-BFGS against one process on the same data, and
   the bytes moved (client → workers, worker → worker in the tree, workers → client).
3. Local SGD with averaging (Adam, 2 workers) against one process: held-out accuracy
   within 1 point.
4. GridSearchCV under ``joblib.parallel_config(backend="dask")`` and dask-ml's
   ``Incremental`` streaming blocks through ``partial_fit``.
5. The scaling model time/iteration = compute / workers + latency + θ-sized transfers,
   filled with the measured figures: predicted speed-up for 1 … 64 workers.

    python examples/dask_cluster.py            # + a 20,000 × 128 synthetic problem for the scaling figures
    python examples/dask_cluster.py --quick    # CI: digits only

Exits non-zero if a check fails. Timings on a shared machine are noisy; the LocalCluster's
two workers share the machine's cores with the client and the scheduler.
"""

import argparse
import math
import operator
import statistics
import sys
import time
import warnings

import numpy as np

import fastbp
from fastbp import distributed as fd
from fastbp.datasets import load_digits, stratified_split

BANDWIDTH = 1.25e9  # bytes/s assumed for a real cluster's network (10 Gbit/s Ethernet)
WORKERS = (1, 2, 4, 8, 16, 32, 64)


def lbfgs_single(net, X, y, max_iter, l2):
    """scipy's L-BFGS-B on one process, the objective fastbp's full-batch flat_gradient."""
    from scipy.optimize import minimize

    def objective(theta):
        net.theta[...] = theta
        return net.flat_gradient(X, y, l2=l2)

    t0 = time.perf_counter()
    result = minimize(objective, net.theta.copy(), jac=True, method="L-BFGS-B",
                      options={**fd.LBFGS_OPTIONS, "maxiter": max_iter})
    net.theta[...] = result.x
    return result, time.perf_counter() - t0


def worker_transfer_bytes(client):
    """Total bytes each worker has sent (to peers, the scheduler, the client)."""
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def hop_latency(client, hops=20):
    """Seconds per dependent no-op task: the scheduler's round trip per tree level."""
    future = client.submit(operator.add, 0, 0, pure=False)
    future.result()
    t0 = time.perf_counter()
    for _ in range(hops):
        future = client.submit(operator.add, future, 1, pure=False)
    future.result()
    return (time.perf_counter() - t0) / hops


def check(results, name, ok, detail):
    results.append(ok)
    print(f"  [{'ok' if ok else 'FAILED'}] {name}: {detail}")


def exact_lbfgs(client, da, results, max_iter):
    print("1. exact full-batch L-BFGS, digits, float64, 2 chunks")
    X, y = load_digits()
    X = X / 16.0
    net = fastbp.MLP([64, 32, 10], activation="tanh", dtype="float64", seed=1)
    single = net.copy()
    history = fd.fit_lbfgs(net, da.from_array(X, chunks=(900, -1)), da.from_array(y, chunks=900), client,
                           l2=1e-3, max_iter=max_iter)
    result, _ = lbfgs_single(single, X, y, max_iter, l2=1e-3)
    relative = np.abs(net.theta - result.x).max() / np.abs(result.x).max()
    check(results, "same parameters as one process", relative <= 1e-10 and history.iterations == result.nit,
          f"{history.iterations} iterations, max |Δθ| / max |θ| = {relative:.1e}")


def measure(client, da, results, X, y, sizes, label, iterations):
    """Per-evaluation time, one process and distributed; bytes per evaluation."""
    print(f"2. per-evaluation cost, {label}: {X.shape[0]:,} rows, network {sizes}")
    net = fastbp.MLP(sizes, dtype="float64", seed=0)
    net.flat_gradient(X, y)  # compile / load from cache
    single = []
    for _ in range(5):
        t0 = time.perf_counter()
        net.flat_gradient(X, y, l2=1e-4)
        single.append(time.perf_counter() - t0)
    compute = statistics.median(single)
    half = -(-X.shape[0] // 2)
    Xd, yd = da.from_array(X, chunks=(half, -1)), da.from_array(y, chunks=half)
    fd.fit_lbfgs(net.copy(), Xd, yd, client, l2=1e-4, max_iter=2)  # warm the workers' kernels
    before = worker_transfer_bytes(client)
    history = fd.fit_lbfgs(net, Xd, yd, client, l2=1e-4, max_iter=iterations)
    worker_bytes = (worker_transfer_bytes(client) - before) / history.evaluations
    distributed_time = sum(history.seconds) / history.evaluations
    sent = sum(history.bytes_sent) / history.evaluations
    received = sum(history.bytes_received) / history.evaluations
    vector = (net.n_params + 1) * 8
    check(results, "client receives one θ-sized vector per evaluation", received == vector,
          f"{received:,.0f} B received, {sent:,.0f} B sent (θ to each of 2 chunks); workers sent "
          f"{worker_bytes:,.0f} B (tree + result; X is {X.nbytes:,} B)")
    check(results, "no chunk crossed the network", worker_bytes < 4 * vector, f"{worker_bytes / vector:.1f} θ-sizes")
    print(f"  one process: {compute * 1e3:.1f} ms per evaluation; LocalCluster, 2 workers: "
          f"{distributed_time * 1e3:.1f} ms ({compute / distributed_time:.2f}× of one process)")
    return {"compute": compute, "distributed": distributed_time, "theta_bytes": net.n_params * 8,
            "rows": X.shape[0], "label": label}


def averaging(client, da, results, epochs):
    print("3. local SGD with averaging, digits, Adam, 2 workers, 16 local steps")
    X, y = load_digits()
    X = X / 16.0
    train, test = stratified_split(y, 0.25, seed=0)
    half = -(-len(train) // 2)
    net = fastbp.MLP([64, 64, 10], seed=0)
    single = net.copy()
    single.fit(X[train], y[train], optimizer=fastbp.Adam(1e-3), epochs=epochs, batch_size=32)
    history = fd.fit_averaged(net, da.from_array(X[train], chunks=(half, -1)), da.from_array(y[train], chunks=half),
                              client, optimizer=fastbp.Adam(2e-3), batch_size=32, local_steps=16, epochs=epochs)
    one, two = single.evaluate(X[test], y[test])["accuracy"], net.evaluate(X[test], y[test])["accuracy"]
    check(results, "held-out accuracy within 1 point of one process", abs(one - two) <= 0.01,
          f"{two:.4f} vs {one:.4f} after {epochs} epochs ({history.iterations} rounds, "
          f"{statistics.median(history.seconds) * 1e3:.0f} ms per round)")


def estimators(client, da, results):
    print("4. scikit-learn estimators on Dask")
    import joblib
    from dask_ml.wrappers import Incremental
    from distributed import get_task_stream
    from sklearn.model_selection import GridSearchCV

    from fastbp.sklearn import MLPClassifier
    X, y = load_digits()
    X = X / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with joblib.parallel_config(backend="dask"), get_task_stream(client) as stream:
            search = GridSearchCV(MLPClassifier(max_iter=20, random_state=0),
                                  {"alpha": [1e-4, 1e-1], "hidden_layer_sizes": [(16,), (32,)]}, cv=2).fit(X, y)
        check(results, "GridSearchCV with the joblib dask backend", len(stream.data) >= 8,
              f"{len(stream.data)} tasks on the cluster, best {search.best_params_}, score {search.best_score_:.3f}")
        Xd, yd = da.from_array(X, chunks=(300, -1)), da.from_array(y, chunks=300)
        incremental = Incremental(MLPClassifier((32,), learning_rate_init=0.01, shuffle=False, random_state=0),
                                  scoring="accuracy")
        for _ in range(5):
            incremental.partial_fit(Xd, yd, classes=np.arange(10))
        score = incremental.score(Xd, yd)
        check(results, "dask_ml Incremental over partial_fit", score > 0.85,
              f"5 passes over {len(Xd.chunks[0])} blocks, training accuracy {score:.3f}")


def scaling_table(figures, hop):
    """time(w) = compute / w + latency(w) + transfers(w) / bandwidth, from the measured figures."""
    compute, theta = figures["compute"], figures["theta_bytes"]
    # what the 2-worker LocalCluster spent beyond compute / 2: scheduler and serialisation overhead
    overhead = max(figures["distributed"] - compute / 2, hop)

    def latency(w):
        return overhead + hop * (max(math.ceil(math.log2(w)), 1) - 1)

    def transfers(w):  # θ to every worker, one vector per tree level, the sum to the client
        return theta * (w + math.ceil(math.log2(w)) + 1) / BANDWIDTH

    print(f"5. scaling model, {figures['label']}: time/iteration = {compute * 1e3:.1f} ms / workers + "
          f"{overhead * 1e3:.1f} ms + {hop * 1e3:.1f} ms per extra tree level + θ transfers "
          f"({theta:,} B at {BANDWIDTH / 1e9:.2f} GB/s)")
    print("   workers | time/iteration | predicted speed-up")
    for w in WORKERS:
        t = compute / w + latency(w) + transfers(w) if w > 1 else compute
        print(f"   {w:7d} | {t * 1e3:11.1f} ms | {compute / t:6.2f}×")
    for w in (8, 64):
        need = w * (latency(w) + transfers(w))  # compute / w >= overhead: at least 50 % efficiency
        rows = need / compute * figures["rows"]
        print(f"   {w} workers at >= 50 % efficiency need >= {need:.2f} s of single-process compute per "
              f"iteration: >= {rows:,.0f} rows of this network")


def main(argv=None, client=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, fewer iterations (CI)")
    args = parser.parse_args(argv)
    import dask.array as da
    from distributed import Client, LocalCluster

    own = client is None
    if own:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    results = []
    try:
        client.wait_for_workers(2)
        exact_lbfgs(client, da, results, max_iter=15 if args.quick else 30)
        X, y = load_digits()
        figures = measure(client, da, results, X / 16.0, y, [64, 32, 10], "digits", 10 if args.quick else 20)
        if not args.quick:
            rng = np.random.default_rng(0)
            Xs = rng.standard_normal((20_000, 128))
            ys = (Xs @ rng.standard_normal((128, 10))).argmax(axis=1)
            figures = measure(client, da, results, Xs, ys, [128, 64, 10], "synthetic", 10)
        averaging(client, da, results, epochs=20)
        estimators(client, da, results)
        scaling_table(figures, hop_latency(client))
    finally:
        if own:
            client.close()
            cluster.close()
    if all(results):
        print("all distributed checks passed")
        return 0
    print(f"{results.count(False)} check(s) FAILED")
    return 1


if __name__ == "__main__":
    sys.exit(main())
