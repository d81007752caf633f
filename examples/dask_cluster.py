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

    python examples/dask_cluster.py            # + a 20,000 × 128 synthetic problem (made on the workers)
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
    """Per-evaluation time, one process (one BLAS thread, like each worker) and
    distributed; bytes per evaluation. X, y: dask arrays; their local copies time the
    single process."""
    from threadpoolctl import threadpool_limits
    print(f"2. per-evaluation cost, {label}: {X.shape[0]:,} rows, network {sizes}")
    Xl, yl = client.compute([X, y], sync=True)
    net = fastbp.MLP(sizes, dtype="float64", seed=0)
    single = []
    with threadpool_limits(1):
        net.flat_gradient(Xl, yl)  # compile / load from cache
        for _ in range(7):
            t0 = time.perf_counter()
            net.flat_gradient(Xl, yl, l2=1e-4)
            single.append(time.perf_counter() - t0)
    compute = statistics.median(single)
    fd.fit_lbfgs(net.copy(), X, y, client, l2=1e-4, max_iter=2)  # warm the workers' kernels
    from distributed import get_task_stream
    before = worker_transfer_bytes(client)
    with get_task_stream(client) as stream:
        history = fd.fit_lbfgs(net, X, y, client, l2=1e-4, max_iter=iterations)
    chunk_seconds = statistics.median(
        part["stop"] - part["start"] for task in stream.data if str(task["key"]).startswith("_chunk_sums")
        for part in task["startstops"] if part["action"] == "compute")
    worker_bytes = (worker_transfer_bytes(client) - before) / history.evaluations
    distributed_time = sum(history.seconds) / history.evaluations
    sent = sum(history.bytes_sent) / history.evaluations
    received = sum(history.bytes_received) / history.evaluations
    vector = (net.n_params + 1) * 8
    check(results, "client receives one θ-sized vector per evaluation", received == vector,
          f"{received:,.0f} B received, {sent:,.0f} B sent (θ to each of {history.n_chunks} chunks); workers sent "
          f"{worker_bytes:,.0f} B (tree + result; X is {Xl.nbytes:,} B)")
    check(results, "no chunk crossed the network", worker_bytes < 4 * vector, f"{worker_bytes / vector:.1f} θ-sizes")
    print(f"  one process, one thread: {compute * 1e3:.1f} ms per evaluation; LocalCluster, 2 workers: "
          f"{distributed_time * 1e3:.1f} ms ({compute / distributed_time:.2f}× of one process); "
          f"{history.evaluations / history.iterations:.2f} evaluations per L-BFGS iteration; one chunk's "
          f"task on its worker: {chunk_seconds * 1e3:.1f} ms (an undisturbed core: {compute / 2 * 1e3:.1f} ms)")
    return {"compute": compute, "distributed": distributed_time, "theta_bytes": net.n_params * 8,
            "rows": X.shape[0], "label": label}


def synthetic(da, rows, features, classes):
    """A learnable synthetic problem generated on the workers (two row chunks)."""
    weights = np.random.default_rng(1).standard_normal((features, classes))
    X = da.random.default_rng(0).standard_normal((rows, features), chunks=(-(-rows // 2), -1))
    return X, (X @ weights).argmax(axis=1)


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
        # 4 candidates x 2 folds; joblib's auto-batching may pack several fits into one task
        check(results, "GridSearchCV with the joblib dask backend", len(stream.data) >= 2,
              f"{len(stream.data)} tasks on the cluster, best {search.best_params_}, score {search.best_score_:.3f}")
        Xd, yd = da.from_array(X, chunks=(300, -1)), da.from_array(y, chunks=300)
        incremental = Incremental(MLPClassifier((32,), learning_rate_init=0.01, shuffle=False, random_state=0),
                                  scoring="accuracy")
        for _ in range(5):
            incremental.partial_fit(Xd, yd, classes=np.arange(10))
        score = incremental.score(Xd, yd)
        check(results, "dask_ml Incremental over partial_fit", score > 0.85,
              f"5 passes over {len(Xd.chunks[0])} blocks, training accuracy {score:.3f}")


def scaling_table(figures, measured_hop, quiet_hop=0.005):
    """time(w) = compute / w + hop · (2 + ⌈log2 w⌉) + θ-sized transfers / bandwidth, with the
    hop latency measured here and with ``quiet_hop`` (distributed's documentation: about
    1 ms of overhead per task, under 10 ms for a small task with a network round trip)."""
    compute, theta = figures["compute"], figures["theta_bytes"]

    def latency(w, hop):  # the chunk tasks, one level per tree level, the gather to the client
        return hop * (2 + math.ceil(math.log2(w)))

    def transfers(w):  # θ to every worker, one vector per tree level, the sum to the client
        return theta * (w + math.ceil(math.log2(w)) + 1) / BANDWIDTH

    def predicted(w, hop):
        return compute / w + latency(w, hop) + transfers(w) if w > 1 else compute

    print(f"5. scaling model, {figures['label']}: time/evaluation = {compute * 1e3:.1f} ms / workers + "
          f"hop × (2 + ⌈log2 workers⌉) + θ transfers ({theta:,} B each, {BANDWIDTH / 1e9:.2f} GB/s)")
    print(f"   check on this LocalCluster (hop measured {measured_hop * 1e3:.1f} ms): model "
          f"{predicted(2, measured_hop) * 1e3:.1f} ms at 2 workers, measured {figures['distributed'] * 1e3:.1f} ms "
          "(2 workers, client and scheduler share this machine's cores)")
    hops = (measured_hop, quiet_hop)
    print(f"   workers | hop {hops[0] * 1e3:.1f} ms (measured): time, speed-up | "
          f"hop {hops[1] * 1e3:.0f} ms (assumed): time, speed-up")
    for w in WORKERS:
        cells = [f"{predicted(w, h) * 1e3:9.1f} ms {compute / predicted(w, h):6.2f}×" for h in hops]
        print(f"   {w:7d} | {cells[0]:>28} | {cells[1]:>28}")
    for hop in hops:
        for w in (8, 64):
            need = w * (latency(w, hop) + transfers(w))  # compute / w >= the rest: >= 50 % efficiency
            rows = need / compute * figures["rows"]
            print(f"   hop {hop * 1e3:.1f} ms, {w} workers at >= 50 % efficiency: >= {need:.2f} s of one-core "
                  f"compute per evaluation, >= {rows:,.0f} rows of this network, "
                  f"rows × parameters >= {rows * theta / 8:.1e}")


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
        figures = measure(client, da, results, da.from_array(X / 16.0, chunks=(900, -1)), da.from_array(y, chunks=900),
                          [64, 32, 10], "digits", 10 if args.quick else 20)
        if not args.quick:
            figures = measure(client, da, results, *synthetic(da, 20_000, 128, 10), [128, 64, 10], "synthetic", 10)
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
