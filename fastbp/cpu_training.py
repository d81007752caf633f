"""``device="cpu"``: the bundles of ``kernels.bundles`` built from an ``MLP``, the
:class:`CpuEngine` that ``training.run_epochs`` drives, and the forward / evaluate /
gradient calls of the network. Mirrors ``cuda_training.py``.

Which compiled path a fit takes is decided here: the small-network path
(``kernels.cpu_small``) or the split path on two threads (``kernels.cpu_split``) where
their measured tables say they win, else the BLAS path (``kernels.cpu``).

Every buffer a kernel writes into is allocated here, once per fit or per call (never
cached on the network, so calls from several threads do not share scratch space), so
the hot path neither allocates nor runs Python per batch.
"""

import math
import os
import queue
import sys
import threading
import warnings

import numpy as np

from . import spec
from .kernels import cpu, cpu_small, cpu_split, sync
from .kernels.bundles import (BatchNorm, Checkpoint, Data, Dropout, Hyper, Network, Optimizer, Small, Split,
                              Workspace)
from .threads import available_cores

#: rows of inference work per compiled call, in parameter·rows (≈ 0.1–0.5 s of compute),
#: so predict / evaluate return to Python (Ctrl-C) regularly on large inputs
ROWS_PARAMS_PER_CALL = 2 * 10 ** 8


def network_bundle(net, loss_code=spec.MSE):
    return Network(net.theta, net.layout, net.update_layout, net.codes, int(loss_code))


def checkpoint_segments(n_layers, checkpoint):
    """Segment starts for ``fit(checkpoint=k)``: every k-th layer's activations are
    kept, so segments start at 0, k, 2k, ...; ``True`` picks k = ⌈√n_layers⌉."""
    k = int(np.ceil(np.sqrt(n_layers))) if checkpoint is True else int(checkpoint)
    return list(range(0, n_layers, k))


def workspace(net, bmax, segments=None, weighted=False):
    """(Workspace, Checkpoint or None) for batches of at most ``bmax`` rows; with
    ``segments`` (layer indices where checkpoint segments start, 0 first) the z/a cache
    is one segment long and the boundary layers are kept aside; ``weighted``: a buffer
    for a batch's sample weights (else None)."""
    widths = net.sizes[1:]
    n_layers = len(widths)
    starts = [0, n_layers] if segments is None else [*segments, n_layers]
    offsets = np.zeros((n_layers, 3), dtype=np.int64)
    cached = 0
    for a, b in zip(starts[:-1], starts[1:]):
        offsets[a:b, 0] = bmax * (np.cumsum([0, *widths[a:b]])[:-1])
        cached = max(cached, sum(widths[a:b]))
    offsets[:, 2] = np.cumsum([0, *widths])[:-1]
    offsets[:, 1] = bmax * offsets[:, 2]
    dtype = net.dtype
    work = Workspace(np.zeros((bmax, net.sizes[0]), dtype), np.zeros((bmax, net.sizes[-1]), dtype),
                     np.zeros(bmax * cached, dtype), np.zeros(bmax * cached, dtype),
                     np.zeros(2 * bmax * max(widths), dtype), offsets, int(bmax),
                     np.zeros(1, np.float64), np.zeros(1, np.int64),
                     np.zeros(bmax, np.float64) if weighted else None)
    if segments is None:
        return work, None
    kept_offsets = np.full(n_layers, -1, dtype=np.int64)
    offset = 0
    for start in starts[1:-1]:
        kept_offsets[start - 1] = offset
        offset += bmax * widths[start - 1]
    return work, Checkpoint(np.array(starts, dtype=np.int64), kept_offsets, np.zeros(offset, dtype),
                            np.zeros(offset, dtype))


def dropout_bundle(net, bmax, seed=0, epoch=0):
    """Network-long mask and dropped-activation buffers, or None without dropout."""
    if not any(net.dropout):
        return None
    cached = bmax * sum(net.sizes[1:])
    return Dropout(net.keep, np.zeros(cached, net.dtype), np.zeros(cached, net.dtype), int(seed), int(epoch))


def batchnorm_bundle(net, work, mode):
    """x̂ / statistics buffers over ``work``'s layout and the network's running statistics
    (mode 0: use them, 1: batch statistics, 2: batch statistics and update them), or None."""
    if not net.batchnorm:
        return None
    widths = net.sizes[1:]
    return BatchNorm(net.bn_goff, np.zeros(work.zs.shape[0], net.dtype), np.zeros(2 * sum(widths)),
                     net.bn_running, np.zeros(max(widths), net.dtype), float(spec.BN_EPS),
                     float(net.bn_momentum), int(mode))


def hyper_bundle(optimizer, lr=None, l1=0.0, l2=0.0, clip_norm=0.0, clip_value=0.0):
    constants = optimizer.constants()
    return Hyper(float(optimizer.lr if lr is None else lr), float(constants["momentum"]),
                 float(constants["beta2"]), float(constants["eps"]), float(l1), float(l2),
                 float(clip_norm), float(clip_value))


def small_bundle(net, bmax):
    """Scratch of the small-network path (``kernels.cpu_small``)."""
    longest = max(max(net.sizes), bmax)
    transposed = max([i * o for i, o in zip(net.sizes[1:-1], net.sizes[2:])], default=1)
    return Small(np.zeros(transposed, net.dtype), np.zeros(cpu_small.TILE_COLS * longest, net.dtype),
                 np.zeros(cpu_small.TILE_COLS * longest, net.dtype))


#: bytes of a cache line: what one thread writes in the split path starts on a line of its own
CACHE_LINE = 64
#: bytes of a page
PAGE = 4096
#: bytes of gap after each row of the split path's buffers (``line_aligned_rows``): a page
ROW_GAP = PAGE


def line_aligned_rows(shapes, dtype):
    """C-contiguous zero arrays of ``shapes`` carved from one allocation, each starting on a
    cache line and with its last dimension padded to whole lines plus a gap of one page: no
    two rows share a line, nor a 4 KB page. The two threads of the split path each write
    their own rows.

    * A line both wrote would move between the cores at every write (false sharing: it made
      the path's steps ~1.8× slower, ``benchmarks/README.md`` section 11).
    * The page: the cores' hardware prefetchers run ahead of a stream of reads, up to the
      end of its page. With one line of gap, a thread streaming through the end of its row
      (its shard in the Adam step, its activations) fetched the first lines of the next row,
      the other thread's, and took them from the core that was writing them. Epochs of
      64-128-10 × 32 took 7-9 % longer in a normal sitting and up to 30 % longer in a slow
      one (``benchmarks/README.md`` section 16).

    The kernels use each row's first ``shape[-1]`` elements."""
    itemsize = np.dtype(dtype).itemsize
    per_line = CACHE_LINE // itemsize
    gap = ROW_GAP // itemsize
    padded = [(*lead, -(-width // per_line) * per_line + gap) for *lead, width in shapes]
    sizes = [math.prod(shape) for shape in padded]
    raw = np.zeros(sum(sizes) + per_line, dtype)
    offset = (-raw.ctypes.data % CACHE_LINE) // itemsize
    arrays = []
    for shape, size in zip(padded, sizes):
        arrays.append(raw[offset:offset + size].reshape(shape))
        offset += size
    return arrays


def split_bundle(net, bmax, weighted=False):
    """Shards and buffers of the split path (``kernels.cpu_split``), one row per thread,
    each on cache lines of its own; ``weighted``: buffers for a batch's sample weights."""
    d, hidden, k = net.sizes
    h = cpu_split.own_units(0, hidden)[1]
    length = cpu_split.shard_length(net.sizes)
    shapes = {"theta": (2, length), "grad": (2, length), "state1": (2, length), "state2": (2, length),
              "xs": (2, bmax * d), "ys": (2, bmax * k), "zs": (2, bmax * h), "acts": (2, bmax * h),
              "exchange": (2, 2, bmax * k), "logits": (2, bmax * k), "outputs": (2, bmax * k),
              "delta_out": (2, bmax * k), "delta_hidden": (2, bmax * h),
              "dmasks": (2, bmax * h if any(net.dropout) else 1), "dacts": (2, bmax * h if any(net.dropout) else 1)}
    arrays = dict(zip(shapes, line_aligned_rows(list(shapes.values()), net.dtype)))
    parts, norms, pending = line_aligned_rows([(2, 2, 2, 4), (2, 2, 1), (2,)], np.float64)
    state, = line_aligned_rows([(sync.STATE_LENGTH,)], np.int64)
    rowwise, = line_aligned_rows([(2, (k + 3) * bmax)], np.float64)
    row_weights = line_aligned_rows([(2, bmax)], np.float64)[0] if weighted else None
    partner = second_thread()
    return Split(**arrays, parts=parts, norms=norms, pending=pending, state=state, placement=partner.signal,
                 masks=partner.masks, rowwise=rowwise, row_weights=row_weights)


#: a split bundle of at most this many bytes is kept for the next fit of its shape
SPARE_SPLIT_BYTES = 4 * 2 ** 20


def split_key(net, bmax, weighted):
    """What a split bundle's shapes depend on."""
    return (tuple(net.sizes), np.dtype(net.dtype).str, int(bmax), bool(weighted), bool(any(net.dropout)))


def take_split_bundle(net, bmax, weighted=False):
    """A split bundle for a fit: the one an earlier fit of the same shape gave back
    (:func:`give_back_split_bundle`), else a new one. The kernels write every buffer of it
    before they read it (θ and the moments are copied into the shards at every call), so
    a fit never sees another's numbers; a bundle is held by one fit at a time (taken
    out of the slot, put back at the fit's end, and only by a fit whose every call ended
    in the normal way: after an interrupt the second thread may still be waiting on its
    barrier state), so concurrent fits never share one. Building it is ~0.2 ms of a fit
    after an idle spell (~50 arrays)."""
    key = split_key(net, bmax, weighted)
    partner = second_thread()
    with partner.spare_lock:  # two fits cannot both take it
        spare, partner.spare = partner.spare, None
    if spare is not None and spare[0] == key:
        return spare[1]
    return split_bundle(net, bmax, weighted)


def give_back_split_bundle(net, bmax, weighted, bundle):
    """Keep ``bundle`` for the next fit of its shape (one bundle, of at most
    :data:`SPARE_SPLIT_BYTES`; the latest given back)."""
    partner = _second_thread  # the thread the bundle was made for, not a new one (after a fork)
    if partner is None or partner.pid != os.getpid() or bundle.placement is not partner.signal:
        return
    if sum(buffer.nbytes for buffer in bundle if isinstance(buffer, np.ndarray)) <= SPARE_SPLIT_BYTES:
        with partner.spare_lock:
            partner.spare = (split_key(net, bmax, weighted), bundle)


def two_threads_available():
    """Can the split path run here: Linux on x86-64 (its spin-wait instruction; the C library's
    ``sched_yield``, ``sched_getcpu`` and CPU affinity calls, ``kernels.sync``), two or more cores for
    this process, and Numba allowed two threads (``NUMBA_NUM_THREADS``, which a user sets to
    keep Numba's work on one core) with its compiler on (not ``NUMBA_DISABLE_JIT``). The
    second thread is fastbp's own (:class:`SecondThread`), so neither Numba's threading
    layer nor a ``fork()`` matters."""
    import platform

    import numba
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if numba.config.DISABLE_JIT or numba.config.NUMBA_NUM_THREADS < 2:
        return False
    return available_cores() >= 2


#: spins (``pause``, a yield every ``sync.SPINS_BEFORE_YIELD``) the second thread waits for
#: the next call before it sleeps: ~2.7 ms here, longer than the Python between two calls
#: of one fit, between the fits of a loop and from :meth:`SecondThread.wake` to the call,
#: so that it is still spinning when the call comes
PARTNER_SPINS = 100_000
#: how often the caller looks at :attr:`SecondThread.done` while it waits, at the latest
#: (the thread's doorbell wakes it at once; this only bounds a doorbell an interrupt took)
RESULT_POLL_SECONDS = 0.05


class SecondThread:
    """The split path's second thread: a daemon thread of this process that runs thread 1's
    half of every ``cpu_split.train_batches`` call while the calling thread runs thread 0's
    (both compiled without the GIL). One per process (:func:`second_thread`); calls from
    several Python threads take turns (:attr:`lock`).

    A call: the caller puts the numbered job in :attr:`job`; ``cpu_split.call_partner``
    counts the call in :attr:`signal` and waits, without the GIL, until this thread has
    arrived at the kernel's handshake. Between calls this thread is in
    ``cpu_split.await_call``, without the GIL: spinning off the caller's CPU (:attr:`masks`)
    for :data:`PARTNER_SPINS` after its last job or a :meth:`wake`, then asleep on a futex
    until a call or a wake; it returns to Python only to run a counted job, and posts the
    numbered result in :attr:`done`. Job and result are slots that one statement writes,
    numbered by the call count, so that a KeyboardInterrupt at any point of the caller's
    Python can neither lose a result nor let a later call take an earlier one's. Numba's
    own parallel loop did the same work, but compiling the driver as a parallel function
    took ~8 s more on an empty cache (``cpu_split``'s docstring)."""

    def __init__(self):
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.signal, = line_aligned_rows([(sync.STATE_LENGTH,)], np.int64)
        self.masks, = line_aligned_rows([(sync.MASK_ROWS, sync.AFFINITY_BYTES)], np.uint8)
        #: (number, kernel, args) of the latest call, set before the call is counted
        self.job = None
        #: (number, result) of the latest call served (the result dropped once read)
        self.done = (0, None)
        #: a doorbell: the number of each result posted in :attr:`done` (which is what counts)
        self.finished = queue.SimpleQueue()
        #: (key, split bundle) that the last fit gave back, or None (``take_split_bundle``)
        self.spare = None
        self.spare_lock = threading.Lock()
        #: calls counted in :attr:`signal` that this thread has served
        self.served = 0
        threading.Thread(target=self._serve, name="fastbp-split", daemon=True).start()

    def wake(self):
        """Have the thread spin from now on (:data:`PARTNER_SPINS`): a fit calls this when it
        builds its engine, so that the thread has woken, and left the caller's CPU, by the
        time the first call comes. No GIL is needed on the thread's side."""
        cpu_split.wake_partner(self.signal)

    def _serve(self):
        while True:
            cpu_split.await_call(self.signal, self.masks, self.served, PARTNER_SPINS)
            job = self.job
            if job is None or job[0] <= self.served:  # counted without a job (run sets it first): no spin on it
                self.served = int(self.signal[cpu_split.CALLS])
                continue
            number, kernel, args = job
            job = None
            try:
                result = kernel(*args, 1)
            except BaseException as exc:  # handed to the caller, which raises it
                result = exc
            self.served = number
            self.done = (number, result)
            self.finished.put(number)
            kernel = args = result = None  # the fit's arrays are not kept alive until the next call

    def run(self, kernel, args, state):
        """``kernel(*args, t)`` on the calling thread (t = 0) and on this one (t = 1), with
        ``state`` (the kernel's barrier state) zeroed first; True if both returned True."""
        with self.lock:
            number = int(self.signal[cpu_split.CALLS]) + 1
            try:
                state[:] = 0
                self.job = (number, kernel, args)
                cpu_split.call_partner(self.signal, state)
                ours = kernel(*args, 0)
            finally:  # an uncounted job (an interrupt before the count) is never run: the next call reuses its number
                theirs = self._result(number) if self.signal[cpu_split.CALLS] >= number else None
                self.job = None
            if isinstance(theirs, BaseException):
                raise theirs
            return bool(ours) and bool(theirs)

    def _result(self, number):
        """Call ``number``'s result from this thread (waited for even through a
        KeyboardInterrupt, which is raised after it), dropped from :attr:`done` once read."""
        interrupted = None
        while True:
            try:
                done = self.done
                if done[0] >= number:
                    break
                self.finished.get(timeout=RESULT_POLL_SECONDS)  # a doorbell, maybe an earlier call's: look again
            except queue.Empty:
                pass
            except KeyboardInterrupt as exc:
                interrupted = exc
        self.done = (done[0], None)
        if interrupted is not None:
            raise interrupted
        return done[1]


_second_thread = None
_second_thread_lock = threading.Lock()


def _forget_second_thread():
    """In a forked child: threads do not survive ``fork()``, and the lock may have been held."""
    global _second_thread, _second_thread_lock
    _second_thread, _second_thread_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_second_thread)


def second_thread():
    """This process's :class:`SecondThread`, started on first use."""
    global _second_thread
    with _second_thread_lock:
        if _second_thread is None or _second_thread.pid != os.getpid():
            _second_thread = SecondThread()
        return _second_thread


def use_split(net, batch, rows, threads=None, checkpoint=None):
    """Train on the split path? ``threads`` = 1: never; ≥ 2: wherever the fit has one hidden
    layer and neither batchnorm nor checkpointing (``clip_norm``, dropout and sample weights
    are fine); None: where ``cpu_split.wins`` (measured) says it is faster for ``rows``
    training rows in batches of ``batch``."""
    if threads == 1 or checkpoint:
        return False
    if not cpu_split.eligible(net.sizes, net.batchnorm):
        return False
    if threads is None and not cpu_split.wins(net.sizes, net.dtype, batch, rows):
        return False
    return two_threads_available()


def optimizer_bundle(net, state, code):
    return Optimizer(state.grad, state.state1, state.state2, state.step, int(code),
                     np.zeros((len(net.sizes) - 1, 2), dtype=np.float64))


#: rows per compiled call of :func:`evaluate` in predict / evaluate / validation
PREDICT_CHUNK = 1024


class CpuEngine:
    """The epochs of one fit on the CPU (see ``engine.Engine``): the kernels work on
    ``net.theta`` and the state's buffers themselves, so nothing is copied."""

    computes_diagnostics = True
    chunked = True

    def __init__(self, net, X, Y, state, *, batch_size, optimizer, loss_code, l1, l2, clip_norm, clip_value,
                 checkpoint=None, seed=0, sample_weight=None, threads=None):
        self.net, self.X, self.Y, self.state, self.seed = net, X, Y, state, int(seed)
        self.loss_code = loss_code
        self.sample_weight = sample_weight
        self.bmax = min(int(batch_size), X.shape[0])
        self.n_batches = -(-X.shape[0] // self.bmax)
        n_layers = len(net.sizes) - 1
        #: the small-network path's scratch where it beats BLAS (``cpu_small.wins``), else None.
        #: Checkpointing is skipped there: the whole activation cache is below
        #: ``cpu_small.MAX_CACHE_BYTES``, and the result stays bitwise the plain fit's
        small = (not any(net.dropout) and not net.batchnorm
                 and cpu_small.wins(net.sizes, self.bmax, net.dtype))
        self.small = small_bundle(net, self.bmax) if small else None
        #: the split path's buffers where it runs (``use_split``), else None; its BLAS calls
        #: run one thread each (``kernel_threads``)
        split = not small and use_split(net, self.bmax, X.shape[0], threads, checkpoint)
        if split:
            try:
                second_thread().wake()
            except RuntimeError:  # no thread to be had ("can't start new thread"): one thread
                split = False
        self.split = take_split_bundle(net, self.bmax, sample_weight is not None) if split else None
        self._split_clean = True
        self.kernel_threads = 1 if split else threads
        segments = checkpoint_segments(n_layers, checkpoint) if checkpoint and not small else None
        self.network = network_bundle(net, loss_code)
        self.optimizer = optimizer_bundle(net, state, optimizer.code)
        self.hyper = hyper_bundle(optimizer, None, l1, l2, clip_norm, clip_value)
        self.work, self.checkpoint = workspace(net, self.bmax, segments, sample_weight is not None)
        self.dropout = dropout_bundle(net, self.bmax)
        self.batchnorm = batchnorm_bundle(net, self.work, 2)
        self._live = (net.theta, state.state1, state.state2, net.bn_running)
        self._backup = [np.empty_like(a) for a in self._live]
        self._step = 0

    def validate(self, Xv, Yv, weights=None):
        return evaluate(self.net, Xv, Yv, self.loss_code, min(PREDICT_CHUNK, Xv.shape[0]), weights=weights)

    def train_batches(self, perm, first, stop, epoch, lr):
        if first == 0:
            self.optimizer.diagnostics[...] = 0
        if self.split is not None:
            args = (self.network, self.optimizer, self.hyper._replace(lr=float(lr)), self.work,
                    Data(self.X, self.Y, perm, self.sample_weight), (int(first), int(stop)), self.split,
                    (float(self.net.keep[0]), self.seed, int(epoch)))
            self._split_clean = False  # until the call has ended in the normal way
            together = second_thread().run(cpu_split.train_batches, args, self.split.state)
            self._split_clean = True
            if together:
                return float(self.work.sums[0]), int(self.work.counts[0])
            warnings.warn("fastbp: the two training threads did not run at the same time; this fit goes on "
                          "on one thread", RuntimeWarning, stacklevel=2)
            self.split = None  # nothing was changed: train the same batches on one thread
        if self.small is not None:
            cpu_small.train_batches(self.network, self.optimizer, self.hyper._replace(lr=float(lr)), self.work,
                                    Data(self.X, self.Y, perm, self.sample_weight), (int(first), int(stop)),
                                    self.small)
            return float(self.work.sums[0]), int(self.work.counts[0])
        dropout = self.dropout
        if dropout is not None:
            dropout = dropout._replace(seed=self.seed, epoch=int(epoch))
        cpu.train_batches(self.network, self.optimizer, self.hyper._replace(lr=float(lr)), self.work,
                          Data(self.X, self.Y, perm, self.sample_weight), (int(first), int(stop)), dropout,
                          self.batchnorm, self.checkpoint)
        return float(self.work.sums[0]), int(self.work.counts[0])

    def finite(self):
        """θ and the optimizer's moments: an Adam/RMSprop v that overflowed to inf freezes θ."""
        return all(bool(np.isfinite(buffer).all()) for buffer in (self.net.theta, self.state.state1, self.state.state2))

    def diagnostics(self):
        return self.optimizer.diagnostics

    def save_point(self):
        for backup, live in zip(self._backup, self._live):
            np.copyto(backup, live)
        self._step = int(self.state.step[0])

    def restore(self):
        for backup, live in zip(self._backup, self._live):
            np.copyto(live, backup)
        self.state.step[0] = self._step

    def to_host(self):
        """Nothing to copy: the kernels work on ``net.theta`` itself."""

    def from_host(self):
        """Nothing to copy: the kernels work on ``net.theta`` itself."""

    def finish(self):
        """Nothing to copy back; the split bundle is kept for the next fit of this shape
        unless a call raised (an interrupt may have left the second thread on it)."""
        if self.split is not None and self._split_clean:
            give_back_split_bundle(self.net, self.bmax, self.sample_weight is not None, self.split)
        self.split = None


def _row_slices(net, n, chunk):
    """Row ranges of one compiled inference call each (whole chunks, ≈ ROWS_PARAMS_PER_CALL)."""
    per_call = max(chunk, ROWS_PARAMS_PER_CALL // max(1, net.n_params) // chunk * chunk)
    return [slice(start, min(n, start + per_call)) for start in range(0, n, per_call)]


def evaluate(net, X, Y, loss_code, chunk, batch_stats=False, out=None, weights=None):
    """(summed data loss, correct count) over converted X, Y (Y None: outputs only, into
    ``out``) in chunks of ``chunk`` rows, without dropout; batchnorm with the running
    statistics (``batch_stats``: each chunk's own, as gradcheck needs). With ``weights``
    (float64, one per row) the loss sum is Σ w_i ℓ_i."""
    work, _ = workspace(net, chunk)
    network = network_bundle(net, loss_code)
    batchnorm = batchnorm_bundle(net, work, 1 if batch_stats else 0)
    total, correct = 0.0, 0
    for rows in _row_slices(net, X.shape[0], chunk):
        t, c = cpu.evaluate(network, work, X[rows], None if Y is None else Y[rows], batchnorm,
                            None if out is None else out[rows], None if weights is None else weights[rows])
        total += t
        correct += c
    return total, correct


def forward(net, X, chunk):
    """Output activations a^L of every row of converted X."""
    out = np.empty((X.shape[0], net.n_outputs), dtype=net.dtype)
    evaluate(net, X, None, spec.MSE, chunk, out=out)
    return out


def loss_and_gradient(net, X, Y, loss_code, weights=None):
    """(mean data loss, flat batch-mean gradient) over the full batch X, Y (batchnorm:
    batch statistics, running statistics untouched); with ``weights`` (float64, one per
    row) the weighted mean Σ w_i ℓ_i / Σw and its gradient. Scratch is allocated per call."""
    grad = np.zeros(net.n_params, dtype=net.dtype)
    state = _GradientState(grad)
    work, _ = workspace(net, X.shape[0], weighted=weights is not None)
    if weights is not None:
        work.row_weights[...] = weights
    loss = cpu.loss_and_gradient(network_bundle(net, loss_code), optimizer_bundle(net, state, 0), work, X, Y,
                                 batchnorm_bundle(net, work, 1))
    return loss / (X.shape[0] if weights is None else weights.sum()), grad


class _GradientState:
    def __init__(self, grad):
        self.grad = self.state1 = self.state2 = grad
        self.step = np.zeros(1, dtype=np.int64)


def kernels_cached():
    """True if Numba's cache holds compiled training kernels for this source (a first fit
    then loads them in about a second instead of compiling them): the BLAS path's, the
    small-network path's or the split path's driver; None if unknown."""
    try:
        return any(bool(driver._cache._cache_file._load_index())
                   for driver in (cpu.train_batches, cpu_small.train_batches, cpu_split.train_batches))
    except Exception:  # a private Numba API: say nothing rather than fail
        return None


#: what a first fit costs with an empty cache (2-core machines, quiet: 7.5-8.5 s for
#: ``fastbp train`` on an AVX-512 EPYC (2026-12-07, ``fastbp bench``'s start rows), ~12 s for a
#: first split fit there, ~20 s on a Zen 3; ~40 s and more under load;
#: ``benchmarks/README.md`` sections 10 and 14)
COLD_START_SECONDS = "8-60"


def compile_notice():
    """The line ``fastbp train`` prints once when the kernels must be compiled first."""
    if kernels_cached() is False:
        return (f"fastbp: compiling the kernels for this machine (once, about {COLD_START_SECONDS} s; "
                "later runs load them from Numba's cache) ...")
    return None
