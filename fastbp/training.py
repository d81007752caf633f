"""The training loop: epochs, schedule, history, callbacks, progress and interrupts in
Python; the batches run in compiled calls behind an engine (``engine.Engine``:
``cpu_training.CpuEngine`` or ``cuda_training.CudaEngine``). This module imports no
kernel module.

An epoch is split into ranges of batches, each one compiled call, sized from the measured
time per batch so that the loop returns to Python about every :data:`CHUNK_SECONDS`
(Ctrl-C then takes effect promptly and the progress bar moves within an epoch) while the
per-call overhead stays negligible. A network's next fit starts at the chunk size its last
fit ended with (same engine and batch size), instead of ramping up from one batch again.
"""

import sys
import time
import warnings
import weakref

import numpy as np

from . import spec

#: target seconds of compiled work per call inside an epoch
CHUNK_SECONDS = 0.25

#: network → ((engine class, batch size), chunk size) of its last fit. A 10 ms epoch
#: refitted in a loop (``warm_start``, the bench) otherwise ramps up through 1, 4, 16, 64,
#: 256 batches, six calls each paying the kernels' setup (on the split path the shard
#: copies and waking the second thread: ~0.1 ms for the first call, ~20 µs for the others)
_last_chunk = weakref.WeakKeyDictionary()


def first_chunk(net, engine):
    """Batches for the first compiled call of a fit: where the last fit of ``net`` ended
    (same engine class and batch size), else 1 (the rate is measured from there)."""
    key, chunk = _last_chunk.get(net, (None, 1))
    return chunk if key == (type(engine), engine.bmax) else 1


class FitState:
    """Optimizer state beside the parameters: flat gradient, two moment buffers and
    the step count (kept on the network so a later fit can continue), plus the number
    of epochs trained so far (``epochs_done``: it indexes the schedule and seeds each
    epoch's shuffle, so a run split by ``warm_start`` or save/load equals a straight
    one) and the learning-rate multiplier callbacks such as ``ReduceOnPlateau`` set
    (``lr_scale``)."""

    def __init__(self, n_params, dtype):
        self.grad = np.zeros(n_params, dtype=dtype)
        self.state1 = np.zeros(n_params, dtype=dtype)
        self.state2 = np.zeros(n_params, dtype=dtype)
        self.step = np.zeros(1, dtype=np.int64)
        self.epochs_done = 0
        self.lr_scale = 1.0


class FitContext:
    """What a :class:`fastbp.callbacks.Callback` sees of the running fit
    (``on_train_begin(net, fit)``): the optimizer, ``epochs`` (of this fit),
    ``has_validation``, and ``lr_scale``, a multiplier on the learning rate that a
    callback may change; it applies from the next epoch on and carries over to a
    ``warm_start`` fit (and through save/load)."""

    def __init__(self, state, optimizer, epochs, has_validation):
        self.state, self.optimizer, self.epochs = state, optimizer, epochs
        self.has_validation = has_validation

    @property
    def lr_scale(self):
        return self.state.lr_scale

    @lr_scale.setter
    def lr_scale(self, value):
        value = float(value)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"lr_scale must be a finite number > 0, got {value!r}")
        self.state.lr_scale = value


class History:
    """Per-epoch records of a fit: ``loss`` (objective incl. L1/L2 penalty, averaged
    over the epoch's batches by batch size; with sample weights each batch's weighted
    objective), ``accuracy`` (training accuracy during the epoch, for classification:
    rows, not weights), ``lr``, ``seconds``, ``samples_per_second``, and per layer
    ``grad_norm`` (mean over the epoch's batches of the L2 norm of the layer's
    regularised gradient) and ``update_ratio`` (mean of ‖ΔW‖/‖W‖), both computed
    inside the update kernel. With validation data, ``val_loss`` (mean data loss,
    no penalty, weighted with validation weights, as :meth:`MLP.evaluate`) and ``val_accuracy`` after each epoch
    (empty lists otherwise). ``best_epoch`` (0-based) is set by early stopping."""

    def __init__(self):
        self.loss, self.accuracy, self.lr, self.seconds, self.samples_per_second = [], [], [], [], []
        self.grad_norm, self.update_ratio = [], []
        self.val_loss, self.val_accuracy = [], []
        self.epochs = 0
        self.stopped_early = False
        self.best_epoch = None

    def record(self, **logs):
        for key, value in logs.items():
            getattr(self, key).append(value)
        self.epochs += 1

    def as_dict(self):
        return {k: list(v) for k, v in vars(self).items() if isinstance(v, list)}

    def plot(self, path=None, title=None):
        """Learning curves: loss and accuracy (train and validation) per epoch, and the
        per-layer gradient norms per epoch on a log scale. Saves a PNG (or any format
        matplotlib knows from the suffix) when ``path`` is given; returns the
        matplotlib Figure. Uses the Agg canvas directly, so no GUI backend and no
        pyplot state are touched."""
        from .plotting import plot_history  # matplotlib is optional: imported on use
        return plot_history(self, path, title)

    def _repr_png_(self):
        """Jupyter shows a History as its learning curves (None without matplotlib)."""
        from .plotting import history_png
        return history_png(self)

    def __repr__(self):
        last = f", last loss {self.loss[-1]:.4g}" if self.loss else ""
        return f"History({self.epochs} epochs{last})"


def epoch_permutation(seed, epoch, n):
    """The shuffle of epoch ``epoch`` (0-based, counted over every warm-started fit):
    ``numpy.random.default_rng([seed, epoch]).permutation(n)``. Deriving each epoch's
    order from (seed, global epoch) rather than from one running generator makes
    training split across fits (``warm_start``, save/load) equal to training straight."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64, copy=False)


def _progress_bar(verbose, epochs, n_batches):
    """Progress over the fit's batches for ``verbose=1``: a tqdm bar when stderr is a terminal; in a Jupyter
    kernel the notebook widget bar (``tqdm.notebook``, with ipywidgets installed) or,
    without a widget frontend, one printed line per epoch; nothing otherwise (logs,
    pipes). ``verbose="bar"``: a ``tqdm.auto`` bar always. None for other levels."""
    if verbose not in (1, "bar"):
        return None
    if verbose == 1 and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        if not _in_jupyter_kernel():
            return None
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook draws with it)
            from tqdm.notebook import tqdm as notebook_tqdm
        except ImportError:
            return _EpochLines(epochs, n_batches)
        return notebook_tqdm(total=epochs * n_batches, unit="batch", leave=True)
    from tqdm.auto import tqdm
    return tqdm(total=epochs * n_batches, unit="batch", file=sys.stderr, leave=True)


def _in_jupyter_kernel():
    """True inside an IPython kernel (Jupyter, VS Code notebooks), whose stderr is no TTY."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class _EpochLines:
    """The progress-bar calls ``run_epochs`` makes, answered with one printed line per
    epoch (for notebooks without a widget frontend)."""

    def __init__(self, epochs, n_batches):
        self.epochs, self.n_batches, self.batches, self.logs = epochs, n_batches, 0, {}

    def set_postfix(self, logs, refresh=False):
        """Called after each epoch: print its line."""
        self.logs = dict(logs)
        logs = "  ".join(f"{k} {v}" for k, v in self.logs.items())
        print(f"epoch {-(-self.batches // self.n_batches):>4}/{self.epochs}  {logs}", flush=True)

    def update(self, n=1):
        self.batches += n

    def close(self):
        pass


def next_chunk(chunk, done, seconds):
    """Batches for the next compiled call: about ``CHUNK_SECONDS`` at the measured rate of
    the last call (``done`` batches in ``seconds``), at most 4× the last chunk."""
    if seconds <= 0:
        return 4 * chunk
    return max(1, min(4 * max(chunk, done), int(CHUNK_SECONDS * done / seconds)))


def train_one_epoch(engine, perm, epoch, lr, bar, chunk):
    """The batches of one epoch in compiled ranges; returns (loss sum, correct, chunk size
    for the next epoch). An exception (Ctrl-C included) puts back the state of the
    epoch's start before it propagates."""
    engine.save_point()
    try:
        first = 0
        while first < engine.n_batches:
            stop = min(engine.n_batches, first + chunk) if engine.chunked else engine.n_batches
            t0 = time.perf_counter()
            total, correct = engine.train_batches(perm, first, stop, epoch, lr)
            chunk = next_chunk(chunk, stop - first, time.perf_counter() - t0)
            if bar is not None:
                bar.update(stop - first)
            first = stop
    except BaseException:
        engine.restore()
        raise
    return total, correct, chunk


def run_epochs(net, engine, *, n, loss_code, optimizer, epochs, shuffle, schedule, seed, callbacks,
               verbose, state, validation=None, gradient_monitor=None):
    """Train ``net`` in place through ``engine`` (see ``engine.Engine``; built over the n
    validated, converted samples); returns a History.

    Epoch e of this fit is epoch ``state.epochs_done + e`` of the network: the
    schedule, the shuffle (:func:`epoch_permutation`) and ``lr_scale`` continue
    across ``warm_start`` fits. ``validation`` is None or converted (Xv, Yv, weights or
    None), scored after every epoch by ``engine.validate(Xv, Yv, weights)`` → (loss sum,
    correct) on the engine's device; ``val_loss`` is the sum over n (over Σ weights).
    ``callbacks`` are :class:`fastbp.callbacks.Callback` objects or plain
    ``f(net, epoch, history)``.

    If an epoch produces a non-finite loss the parameters and optimizer state are
    restored to the end of the previous epoch, a RuntimeWarning is issued and
    training stops. If anything raises during an epoch's batches (Ctrl-C included),
    the same restore happens before the exception propagates; an exception from a
    callback or the validation leaves the epoch counted. Either way θ, optimizer state,
    running statistics and ``state.epochs_done`` describe the completed epochs.
    """
    from .callbacks import Callback
    history = History()
    classification = net.output not in spec.REGRESSION_OUTPUTS
    n_layers = len(net.sizes) - 1
    perm = np.arange(n, dtype=np.int64)
    fit = FitContext(state, optimizer, epochs, validation is not None)
    for cb in callbacks:
        if isinstance(cb, Callback):
            cb.on_train_begin(net, fit)
    bar = _progress_bar(verbose, epochs, engine.n_batches)
    chunk = first_chunk(net, engine)
    try:
        for epoch in range(epochs):
            global_epoch = state.epochs_done
            lr = float(schedule(global_epoch, optimizer.lr) * state.lr_scale)
            if shuffle:
                perm = epoch_permutation(seed, global_epoch, n)
            t0 = time.perf_counter()
            total, correct, chunk = train_one_epoch(engine, perm, global_epoch, lr, bar, chunk)
            _last_chunk[net] = ((type(engine), engine.bmax), chunk)
            finite = engine.finite()
            seconds = time.perf_counter() - t0
            epoch_loss = total / n
            if engine.computes_diagnostics:
                sums = engine.diagnostics()
                grad_norm, update_ratio = sums[:, 0] / engine.n_batches, sums[:, 1] / engine.n_batches
            else:
                grad_norm = update_ratio = np.full(n_layers, np.nan)
            if gradient_monitor is not None and engine.computes_diagnostics:
                gradient_monitor.check(grad_norm, epoch)
            if not np.isfinite(epoch_loss) or not finite:
                engine.restore()
                warnings.warn(f"training diverged in epoch {epoch + 1} (non-finite loss or parameters); "
                              "parameters restored to the end of the previous epoch. Lower the learning "
                              "rate or use clip_norm.", RuntimeWarning, stacklevel=4)
                history.stopped_early = True
                break
            state.epochs_done += 1
            history.record(loss=epoch_loss, accuracy=correct / n if classification else float("nan"),
                           lr=lr, seconds=seconds,
                           samples_per_second=n / seconds if seconds > 0 else float("inf"),
                           grad_norm=grad_norm, update_ratio=update_ratio)
            if validation is not None or callbacks:
                engine.to_host()
            if validation is not None:
                Xv, Yv, wv = validation
                val_total, val_correct = engine.validate(Xv, Yv, wv)
                history.val_loss.append(val_total / (Xv.shape[0] if wv is None else wv.sum()))
                history.val_accuracy.append(val_correct / Xv.shape[0] if classification else float("nan"))
            if bar is not None:
                bar.set_postfix(_epoch_logs(history, classification), refresh=False)
            elif verbose == 2:
                logs = "  ".join(f"{k} {v}" for k, v in _epoch_logs(history, classification).items())
                print(f"epoch {epoch + 1:>4}/{epochs}  {logs}  "
                      f"({history.samples_per_second[-1]:,.0f} samples/s)")
            stops = [bool(cb.on_epoch_end(net, epoch, history) if isinstance(cb, Callback)
                          else cb(net, epoch, history)) for cb in callbacks]
            if callbacks:
                engine.from_host()
            if any(stops):
                history.stopped_early = True
                break
    finally:
        engine.finish()
        if bar is not None:
            bar.close()
    for cb in callbacks:
        if isinstance(cb, Callback):
            cb.on_train_end(net, history)
    return history


def _epoch_logs(history, classification):
    """The last epoch's loss / accuracy (and validation) as short strings."""
    logs = {"loss": f"{history.loss[-1]:.4f}"}
    if classification:
        logs["acc"] = f"{history.accuracy[-1]:.4f}"
    if history.val_loss:
        logs["val_loss"] = f"{history.val_loss[-1]:.4f}"
        if classification:
            logs["val_acc"] = f"{history.val_accuracy[-1]:.4f}"
    return logs
