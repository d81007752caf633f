"""Training on a Dask cluster: the data stays on the workers, only θ-sized vectors move.

Two ways to fit a :class:`fastbp.MLP` on dask arrays ``X``, ``y`` chunked by rows
(``pip install "fastbp[dask]"``; dask is imported only when this module's functions run):

- :func:`fit_lbfgs` — exact full-batch L-BFGS, the design of Spark MLlib's
  ``MultilayerPerceptronClassifier``. Each evaluation sends θ to every chunk; the worker
  holding the chunk computes its loss *sum* and gradient *sum* with the compiled kernels
  (``net.flat_gradient``'s mean times the chunk's rows); a tree of pairwise additions on
  the workers sums them; the client receives one vector of n_params + 1 numbers and
  scipy's L-BFGS-B steps there. The objective is the one single-machine full-batch
  training minimises, so in float64 the parameters agree with scipy on the concatenated
  data to rounding: scaling a chunk's mean by its rows and the total by 1/N each change
  it by about one float64 ulp (the tests ask 1e-10 after 15 iterations; digits gives
  7e-14 after 30). A chunk's pass holds its activations (rows × the layer widths), so
  choose chunks that fit a worker's memory several times over.
- :func:`fit_averaged` — local SGD / periodic averaging: every chunk runs ``local_steps``
  mini-batch steps of the compiled epoch (any fastbp optimizer) from the same start, then
  θ and the optimizer's state buffers (Adam's m and v) are averaged by the same tree.
  With ``local_steps=1`` and plain SGD this is synchronous data-parallel SGD on a global
  batch of chunks × ``batch_size`` rows; larger k communicates k times less at the price
  of workers drifting apart between averages (Stich 2019, "Local SGD converges fast and
  communicates little", ICLR; McMahan et al. 2017, "Communication-efficient learning of
  deep networks from decentralized data" — FedAvg — AISTATS).

Neither calls ``compute()`` on the data: each chunk is turned into one ``(X, y)`` block
future where it is computed, and every later task runs beside its block (a loose worker
restriction, so a lost worker's blocks are recomputed elsewhere from their graph).
Per step the client sends θ (or θ and the optimizer state) once per chunk and receives
one vector of that size. A failed task is retried ``retries`` times (Dask's retries;
a killed worker's tasks are rescheduled by the scheduler); if the fit still fails it
raises :class:`DistributedFitError` and the network holds the parameters of the last
completed iteration / round.

Internals of the core touched here (the optimizer-state buffers of ``net.fit_state``)
live in :class:`_Core` only.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .network import MLP

#: scipy L-BFGS-B options of :func:`fit_lbfgs` (besides ``maxiter``); the single-machine
#: comparison in the tests makes the same call.
LBFGS_OPTIONS = {"maxcor": 10, "ftol": 0.0, "gtol": 1e-12, "maxfun": 15000}


class DistributedFitError(RuntimeError):
    """A distributed fit stopped; the network holds the last completed step's parameters."""


@dataclass
class DistributedHistory:
    """Per iteration (L-BFGS) or round (averaging): ``loss`` (objective, or the mean
    training loss of the round's local steps), wall ``seconds``, and ``bytes_sent`` /
    ``bytes_received`` by the client (θ-sized payloads; the chunks never move)."""

    method: str
    n_chunks: int
    n_workers: int
    loss: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    bytes_sent: list = field(default_factory=list)
    bytes_received: list = field(default_factory=list)
    evaluations: int = 0

    @property
    def iterations(self):
        return len(self.loss)


# --- the one adapter to fastbp's internals ------------------------------------------------------

class _Core:
    """Everything this module needs beyond fastbp's public API, in one place: the
    constructor arguments that rebuild a network on a worker, and read / write access to
    the optimizer's flat state buffers (``net.fit_state``: ``state1``, ``state2``,
    ``step``)."""

    @staticmethod
    def spec(net):
        """Keyword arguments that rebuild ``net``'s architecture (as ``MLP.copy`` does)."""
        return {"sizes": tuple(net.sizes), "activation": tuple(net.activations), "output": net.output,
                    "init": net.init, "seed": net.seed, "dtype": net.dtype.name, "dropout": tuple(net.dropout),
                    "batchnorm": net.batchnorm, "bn_momentum": net.bn_momentum}

    @staticmethod
    def loss_name(net, loss):
        """The loss ``net.fit(loss=loss)`` would use, checked against the output layer."""
        return net._loss_code(net.loss if loss is None else loss)[0]

    @staticmethod
    def get_state(net):
        """(state1, state2, step) after a fit; zeros and 0 before the first one."""
        state = net.fit_state
        if state is None:
            return np.zeros(net.n_params, net.dtype), np.zeros(net.n_params, net.dtype), 0
        return state.state1, state.state2, int(state.step[0])

    @staticmethod
    def set_state(net, optimizer, state1, state2, step):
        """Make the next ``fit(..., warm_start=True, optimizer=optimizer)`` start from these."""
        from .training import FitState
        if net.fit_state is None or net.fit_optimizer != optimizer:
            net.fit_state, net.fit_optimizer = FitState(net.n_params, net.dtype), optimizer
        net.fit_state.state1[...] = state1
        net.fit_state.state2[...] = state2
        net.fit_state.step[0] = step


# --- on the workers ----------------------------------------------------------------------------

_worker_nets = OrderedDict()
_worker_nets_lock = threading.Lock()
WORKER_NETS_KEPT = 8  # networks (with their full-batch workspaces) a worker process keeps


def _worker_net(spec, rows):
    """A network of this architecture private to the calling thread, kept across tasks in
    the worker process so that its full-batch workspace (rows × widths, the chunk's
    activations) is allocated once per fit, not per iteration; the least recently used
    beyond :data:`WORKER_NETS_KEPT` are dropped."""
    key = (tuple(sorted(spec.items())), rows, threading.get_ident())
    with _worker_nets_lock:
        net = _worker_nets.pop(key, None) or MLP(**spec)
        _worker_nets[key] = net
        while len(_worker_nets) > WORKER_NETS_KEPT:
            _worker_nets.popitem(last=False)
    return net


def _make_block(X, y, dtype):
    """One chunk as a contiguous (X, y) pair in the network's dtype, built on a worker."""
    X = np.ascontiguousarray(X, dtype=dtype)
    y = np.ascontiguousarray(y)
    if len(X) != len(y):
        raise ValueError(f"a chunk of X has {len(X)} rows but its chunk of y has {len(y)}")
    return X, y


def _chunk_sums(block, spec, theta, loss, l1, l2):
    """[n·objective, n·gradient] of one chunk in float64: ``flat_gradient``'s means times
    the chunk's n rows. Every chunk's mean carries the L1/L2 penalty P, and
    Σ n_c (mean_c + P) / N is the whole data's mean loss + P: the single-machine objective."""
    X, y = block
    net = _worker_net(spec, len(X))
    net.theta[...] = theta
    value, grad = net.flat_gradient(X, y, loss=loss, l1=l1, l2=l2)
    out = np.empty(grad.size + 1)
    out[0] = value * len(X)
    np.multiply(grad, len(X), out=out[1:])
    return out


def _add(a, b):
    return a + b


def _stream_rows(n, seed, chunk, start, count):
    """Positions ``start … start + count`` of chunk ``chunk``'s stream of rows: its n rows
    in the order ``default_rng([seed, chunk, e]).permutation(n)`` for pass e = 0, 1, …
    (stateless, so a retried task draws the same rows)."""
    parts, position = [], start
    while position < start + count:
        e, offset = divmod(position, n)
        take = min(n - offset, start + count - position)
        parts.append(np.random.default_rng([seed, chunk, e]).permutation(n)[offset:offset + take])
        position += take
    return np.concatenate(parts)


def _local_round(block, spec, packed, step, chunk, start, fit_args):
    """``local_steps`` mini-batch steps of the compiled epoch on this chunk, from
    ``packed`` = [θ, state1, state2] and the optimizer's step count; returns the new
    [θ, state1, state2, mean training loss] in float64 (averaged by the tree)."""
    X, y = block
    net = _worker_net(spec, len(X))
    p = net.n_params
    net.theta[...] = packed[:p]
    _Core.set_state(net, fit_args["optimizer"], packed[p:2 * p], packed[2 * p:3 * p], step)
    rows = _stream_rows(len(X), fit_args["seed"], chunk, start, fit_args["local_steps"] * fit_args["batch_size"])
    history = net.fit(X[rows], y[rows], loss=fit_args["loss"], optimizer=fit_args["optimizer"], epochs=1,
                      batch_size=fit_args["batch_size"], shuffle=False, l1=fit_args["l1"], l2=fit_args["l2"],
                      clip_norm=fit_args["clip_norm"], warm_start=True, gradient_warnings=False)
    state1, state2, _ = _Core.get_state(net)
    return np.concatenate([net.theta, state1, state2, [history.loss[-1]]])


# --- on the client -----------------------------------------------------------------------------

def _check_net(net):
    """Before anything reads the network's attributes."""
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a fastbp.MLP, got {type(net).__name__}")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _check_inputs(net, X, y):
    """X, y as dask arrays with one column chunk and y's rows chunked like X's."""
    import dask.array as da
    if not isinstance(X, da.Array) or not isinstance(y, da.Array):
        raise TypeError("X and y must be dask arrays chunked by rows (built on the workers, or "
                        "dask.array.from_array(X, chunks=(rows, -1))); for NumPy arrays use net.fit")
    if X.ndim != 2 or X.shape[1] != net.n_features:
        raise ValueError(f"X must have shape (n, {net.n_features}) for this network, got {X.shape}")
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first")
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have {X.shape[0]} rows like X, got shape {y.shape}")
    if net.batchnorm:
        raise ValueError("batchnorm networks cannot be fitted on Dask in this version (per-chunk batch "
                         "statistics differ from the full batch's)")
    X = X.rechunk({1: -1}) if len(X.chunks[1]) > 1 else X
    y = y.rechunk({0: X.chunks[0], **({1: -1} if y.ndim == 2 else {})})
    return X, y


class _Blocks:
    """The data as one (X, y) block future per non-empty row chunk, formed on the worker
    that computed the chunk of X (the chunk of y, smaller, moves to it once);
    :meth:`map` runs a task beside each block."""

    def __init__(self, client, net, X, y):
        from distributed import wait
        X, y = _check_inputs(net, X, y)
        keep = [i for i, rows in enumerate(X.chunks[0]) if rows]
        if not keep:
            raise ValueError("X has no rows")
        self.client = client
        self.rows = [int(X.chunks[0][i]) for i in keep]
        self.n = sum(self.rows)
        xs = client.compute([X.to_delayed().ravel()[i] for i in keep])
        ys = client.compute([y.to_delayed().ravel()[i] for i in keep])
        wait(xs)
        where = client.who_has(xs)
        self.futures = [client.submit(_make_block, xf, yf, net.dtype.name, pure=False,
                                      workers=where.get(xf.key) or None,
                                      allow_other_workers=bool(where.get(xf.key)))
                        for xf, yf in zip(xs, ys)]
        wait(self.futures)
        del xs, ys  # the blocks hold them (and recompute them from their graph if a worker is lost)
        who = client.who_has(self.futures)
        self.workers = [list(who.get(f.key, ())) or None for f in self.futures]

    def map(self, func, *args, per_block=None, retries=1):
        """Futures of ``func(block, *args, *per_block[i])``, each submitted to the worker
        holding block i (loosely: a lost block is recomputed and used elsewhere)."""
        per_block = per_block or [()] * len(self.futures)
        return [self.client.submit(func, block, *args, *more, pure=False, retries=retries, workers=workers,
                                   allow_other_workers=workers is not None)
                for block, workers, more in zip(self.futures, self.workers, per_block)]

    def tree_sum(self, futures, retries=1):
        """Pairwise sums on the workers, ⌈log2 len⌉ levels; the client gets the one result."""
        while len(futures) > 1:
            futures = [self.client.submit(_add, futures[i], futures[i + 1], pure=False, retries=retries)
                       if i + 1 < len(futures) else futures[i] for i in range(0, len(futures), 2)]
        return futures[0].result()

    def n_workers(self):
        return len(self.client.nthreads())

    def release(self):
        for future in self.futures:
            future.release()


def _client(client):
    if client is not None:
        return client
    from distributed import get_client
    return get_client()


def fit_lbfgs(net, X, y, client=None, *, loss=None, l1=0.0, l2=0.0, max_iter=100, callback=None, retries=1):
    """Fit ``net`` in place by full-batch L-BFGS-B (scipy, on the client) over dask arrays
    ``X``, ``y`` chunked by rows, each chunk's loss and gradient summed where it lives.

    ``loss``, ``l1``, ``l2`` as in ``net.fit``; at most ``max_iter`` iterations (scipy's
    other options: :data:`LBFGS_OPTIONS`); ``callback(net, iteration, history)`` runs on
    the client after every iteration (True stops). ``retries``: Dask retries of a failed
    task. Returns a :class:`DistributedHistory`. A failure that outlives the retries
    raises :class:`DistributedFitError`, ``net`` holding the last completed iteration.
    ``client`` defaults to ``distributed.get_client()``.
    """
    from scipy.optimize import minimize
    _check_net(net)
    loss = _Core.loss_name(net, loss)
    l1, l2 = _nonnegative("l1", l1), _nonnegative("l2", l2)
    max_iter = _positive_int("max_iter", max_iter)
    client = _client(client)
    blocks = _Blocks(client, net, X, y)
    spec = _Core.spec(net)
    history = DistributedHistory("lbfgs", len(blocks.rows), blocks.n_workers())
    traffic = [0, 0]  # bytes sent, received since the last iteration
    tick = [time.perf_counter()]

    def objective(x):
        theta = x.astype(net.dtype)
        total = blocks.tree_sum(blocks.map(_chunk_sums, spec, theta, loss, l1, l2, retries=retries), retries)
        traffic[0] += theta.nbytes * len(blocks.rows)
        traffic[1] += total.nbytes
        history.evaluations += 1
        return total[0] / blocks.n, total[1:] / blocks.n

    def end_of_iteration(intermediate_result):
        net.theta[...] = intermediate_result.x
        now = time.perf_counter()
        history.loss.append(float(intermediate_result.fun))
        history.seconds.append(now - tick[0])
        history.bytes_sent.append(traffic[0])
        history.bytes_received.append(traffic[1])
        traffic[:], tick[0] = [0, 0], now
        if callback is not None and callback(net, history.iterations, history):
            raise StopIteration

    try:
        minimize(objective, net.theta.astype(np.float64), jac=True, method="L-BFGS-B", callback=end_of_iteration,
                 options={**LBFGS_OPTIONS, "maxiter": max_iter})
    except Exception as exc:
        raise DistributedFitError(
            f"distributed L-BFGS stopped in iteration {history.iterations + 1}: {exc!r}; the network holds "
            f"the parameters of iteration {history.iterations}") from exc
    finally:
        blocks.release()
    net.loss = loss
    return history


def fit_averaged(net, X, y, client=None, *, optimizer=None, batch_size=32, local_steps=8, rounds=None,
                 epochs=10, loss=None, l1=0.0, l2=0.0, clip_norm=None, seed=None, warm_start=False,
                 callback=None, retries=1):
    """Fit ``net`` in place by local SGD with periodic averaging over dask arrays ``X``,
    ``y`` chunked by rows (one chunk per worker is the usual layout).

    Each round, every chunk runs ``local_steps`` mini-batches of ``batch_size`` rows
    (drawn without replacement from its own rows, reshuffled each pass, seeded by
    ``seed``) with ``optimizer`` from the common θ and optimizer state; then θ and the
    state buffers (Adam's m and v) are averaged. ``rounds`` defaults to enough rounds for
    ``epochs`` passes over the data. ``warm_start`` continues from the optimizer state
    of the network's last fit. ``callback(net, round, history)`` runs on the client after
    every round (True stops). Returns a :class:`DistributedHistory`; a failure that
    outlives ``retries`` raises :class:`DistributedFitError`, ``net`` holding the last
    completed round.
    """
    from .optimizers import get_optimizer
    _check_net(net)
    optimizer = get_optimizer(optimizer)
    loss = _Core.loss_name(net, loss)
    l1, l2 = _nonnegative("l1", l1), _nonnegative("l2", l2)
    batch_size = _positive_int("batch_size", batch_size)
    local_steps = _positive_int("local_steps", local_steps)
    seed = net.seed if seed is None else seed
    client = _client(client)
    blocks = _Blocks(client, net, X, y)
    per_round = local_steps * batch_size
    if rounds is None:
        rounds = -(-_positive_int("epochs", epochs) * blocks.n // (per_round * len(blocks.rows)))
    rounds = _positive_int("rounds", rounds)
    fit_args = {"optimizer": optimizer, "batch_size": batch_size, "local_steps": local_steps, "loss": loss, "l1": l1,
                    "l2": l2, "clip_norm": clip_norm, "seed": seed}
    spec = _Core.spec(net)
    state1, state2, step = _Core.get_state(net) if warm_start and net.fit_optimizer == optimizer else \
        (np.zeros(net.n_params), np.zeros(net.n_params), 0)
    packed = np.concatenate([net.theta, state1, state2])
    history = DistributedHistory("averaging", len(blocks.rows), blocks.n_workers())
    p = net.n_params
    try:
        for r in range(rounds):
            tick = time.perf_counter()
            per_block = [(chunk, r * per_round, fit_args) for chunk in range(len(blocks.rows))]
            parts = blocks.map(_local_round, spec, packed, step, per_block=per_block, retries=retries)
            total = blocks.tree_sum(parts, retries)
            mean = total / len(parts)
            packed, step = mean[:3 * p], step + local_steps
            net.theta[...] = packed[:p]
            _Core.set_state(net, optimizer, packed[p:2 * p], packed[2 * p:], step)
            history.loss.append(float(mean[-1]))
            history.seconds.append(time.perf_counter() - tick)
            history.bytes_sent.append(packed.nbytes * len(parts))
            history.bytes_received.append(total.nbytes)
            if callback is not None and callback(net, history.iterations, history):
                break
    except Exception as exc:
        raise DistributedFitError(
            f"distributed averaging stopped in round {history.iterations + 1}: {exc!r}; the network holds "
            f"the parameters of round {history.iterations}") from exc
    finally:
        blocks.release()
    net.loss = loss
    return history
