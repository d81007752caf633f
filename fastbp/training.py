"""The training loop: epochs, schedule, history and callbacks in Python; the body of
each epoch is one compiled call (``kernels.cpu.train_epoch``).

Everything the kernels write into is allocated here once per fit (``Workspace``,
``FitState``), so the hot path neither allocates nor runs Python per batch.
"""

import sys
import time
import warnings

import numpy as np

from . import spec
from .kernels import cpu, cpu_ext


class Workspace:
    """Per-fit scratch buffers for batches of at most ``bmax`` rows.

    ``dropout=True`` adds the mask and dropped-activation buffers of
    ``kernels.cpu_ext``, ``batchnorm=True`` its x̂ / statistics buffers; ``segments``
    (layer indices where checkpoint segments start, 0 first) makes ``zs``/``acts`` one
    segment long and adds the boundary stores ``ck_z``/``ck_a`` for gradient
    checkpointing.
    """

    def __init__(self, sizes, bmax, dtype, dropout=False, segments=None, batchnorm=False):
        widths = sizes[1:]
        self.bmax = int(bmax)
        self.xb = np.zeros((bmax, sizes[0]), dtype=dtype)
        self.yb = np.zeros((bmax, sizes[-1]), dtype=dtype)
        self.extended = bool(dropout) or segments is not None or bool(batchnorm)
        self.starts = np.zeros(0 if segments is None else len(segments) + 1, dtype=np.int64)
        self.ck_off = np.full(len(widths), -1, dtype=np.int64)
        if segments is None:
            cached = sum(widths)
            self.ck_z = self.ck_a = np.zeros(0, dtype=dtype)
        else:
            self.starts[:-1], self.starts[-1] = segments, len(widths)
            bounds = list(self.starts)
            cached = max(sum(widths[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
            offset = 0
            for start in bounds[1:-1]:
                self.ck_off[start - 1] = offset
                offset += bmax * widths[start - 1]
            self.ck_z = np.zeros(offset, dtype=dtype)
            self.ck_a = np.zeros(offset, dtype=dtype)
        self.zs = np.zeros(bmax * cached, dtype=dtype)
        self.acts = np.zeros(bmax * cached, dtype=dtype)
        self.masks = np.zeros(bmax * cached if dropout else 0, dtype=dtype)
        self.dacts = np.zeros(bmax * cached if dropout else 0, dtype=dtype)
        # batch normalization: x̂ per layer, (μ, 1/√(σ²+ε)) per unit, a bias-sized scratch
        self.xhat = np.zeros(bmax * cached if batchnorm else 0, dtype=dtype)
        self.stats = np.zeros(2 * sum(widths) if batchnorm else 0, dtype=np.float64)
        self.scratch = np.zeros(max(widths) if batchnorm else 0, dtype=dtype)
        # two ping-pong buffers, each big enough for the widest layer (no δ is formed
        # for the input layer)
        self.deltas = np.zeros(2 * bmax * max(widths), dtype=dtype)

    def train_epoch(self, net, X, Y, perm, state, loss_code, opt_code, hyper, diagnostics, rng_seed):
        """One compiled epoch: ``cpu.train_epoch`` on the plain path, else
        ``cpu_ext.train_epoch_ext`` (batchnorm, checkpointing, or dropout seeded with
        ``rng_seed``)."""
        if not self.extended:
            return cpu.train_epoch(X, Y, perm, self.bmax, net.theta, state.grad, state.state1,
                                   state.state2, net.layout, net.codes, loss_code, opt_code, hyper,
                                   state.step, self.xb, self.yb, self.zs, self.acts, self.deltas,
                                   diagnostics)
        return cpu_ext.train_epoch_ext(X, Y, perm, self.bmax, net.theta, state.grad, state.state1,
                                       state.state2, net.layout, net.codes, loss_code, opt_code, hyper,
                                       state.step, self.xb, self.yb, self.zs, self.acts, self.deltas,
                                       diagnostics, net.keep, self.masks, self.dacts, rng_seed,
                                       self.starts, self.ck_off, self.ck_z, self.ck_a, net.update_layout,
                                       net.bn_goff, self.xhat, self.stats, net.bn_running, spec.BN_EPS,
                                       net.bn_momentum, self.scratch)


def checkpoint_segments(n_layers, checkpoint):
    """Segment starts for ``fit(checkpoint=k)``: every k-th layer's activations are
    kept, so segments start at 0, k, 2k, ...; ``True`` picks k = ⌈√n_layers⌉."""
    k = int(np.ceil(np.sqrt(n_layers))) if checkpoint is True else int(checkpoint)
    return list(range(0, n_layers, k))


def dropout_seed(seed, epoch):
    """Seed of Numba's generator for the dropout masks of (global) epoch ``epoch``."""
    return int(np.random.default_rng([seed, epoch, 1]).integers(0, 2 ** 31 - 1))


class CpuEngine:
    """Runs the epochs of one fit on the CPU. ``run_epochs`` drives an engine through
    ``train_epoch``, ``save_point``/``restore`` (divergence), ``to_host``/``from_host``
    (around validation and callbacks: the parameters a user sees are ``net.theta``)
    and ``finish``; ``cuda_training.CudaEngine`` implements the same methods over
    device buffers, so both devices share one epoch loop."""

    computes_diagnostics = True

    def __init__(self, net, X, Y, state, batch_size, checkpoint=None):
        self.net, self.X, self.Y, self.state = net, X, Y, state
        self.dropout = bool(np.any(net.keep < 1))
        segments = checkpoint_segments(len(net.sizes) - 1, checkpoint) if checkpoint else None
        self.work = Workspace(net.sizes, min(batch_size, X.shape[0]), net.dtype, dropout=self.dropout,
                              segments=segments, batchnorm=net.batchnorm)
        self.bmax = self.work.bmax
        self._backup = [np.empty_like(a) for a in (net.theta, state.state1, state.state2, net.bn_running)]
        self._step = 0

    def train_epoch(self, perm, loss_code, opt_code, hyper, diagnostics, rng_seed):
        """One compiled epoch; returns (Σ b·(loss_b + penalty_b), correct, all finite)."""
        total, correct = self.work.train_epoch(self.net, self.X, self.Y, perm, self.state, loss_code,
                                               opt_code, hyper, diagnostics, rng_seed)
        return total, correct, bool(np.isfinite(self.net.theta).all())

    def _buffers(self):
        return self.net.theta, self.state.state1, self.state.state2, self.net.bn_running

    def save_point(self):
        for backup, live in zip(self._backup, self._buffers()):
            np.copyto(backup, live)
        self._step = int(self.state.step[0])

    def restore(self):
        for backup, live in zip(self._backup, self._buffers()):
            np.copyto(live, backup)
        self.state.step[0] = self._step

    def to_host(self):
        """Nothing to copy: the kernels work on ``net.theta`` itself."""

    def from_host(self):
        """Nothing to copy: the kernels work on ``net.theta`` itself."""

    def finish(self):
        """Nothing to copy back."""


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
    over the epoch's batches), ``accuracy`` (training accuracy during the epoch, for
    classification), ``lr``, ``seconds``, ``samples_per_second``, and per layer
    ``grad_norm`` (mean over the epoch's batches of the L2 norm of the layer's
    regularised gradient) and ``update_ratio`` (mean of ‖ΔW‖/‖W‖), both computed
    inside the update kernel. With validation data, ``val_loss`` (mean data loss,
    no penalty, as :meth:`MLP.evaluate`) and ``val_accuracy`` after each epoch
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
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def hyper_vector(optimizer, lr, l1, l2, clip_norm, clip_value):
    hyper = np.zeros(spec.N_HYPER, dtype=np.float64)
    constants = optimizer.constants()
    hyper[spec.H_LR] = lr
    hyper[spec.H_MOMENTUM] = constants["momentum"]
    hyper[spec.H_BETA2] = constants["beta2"]
    hyper[spec.H_EPS] = constants["eps"]
    hyper[spec.H_L1] = l1
    hyper[spec.H_L2] = l2
    hyper[spec.H_CLIP_NORM] = clip_norm
    hyper[spec.H_CLIP_VALUE] = clip_value
    return hyper


def _progress_bar(verbose, epochs):
    """Progress for ``verbose=1``: a tqdm bar when stderr is a terminal; in a Jupyter
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
            return _EpochLines(epochs)
        return notebook_tqdm(total=epochs, unit="epoch", leave=True)
    from tqdm.auto import tqdm
    return tqdm(total=epochs, unit="epoch", file=sys.stderr, leave=True)


def _in_jupyter_kernel():
    """True inside an IPython kernel (Jupyter, VS Code notebooks), whose stderr is no TTY."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class _EpochLines:
    """The progress-bar calls ``run_epochs`` makes, answered with one printed line per
    epoch (for notebooks without a widget frontend)."""

    def __init__(self, epochs):
        self.epochs, self.done, self.logs = epochs, 0, {}

    def set_postfix(self, logs, refresh=False):
        self.logs = dict(logs)

    def update(self, n=1):
        self.done += n
        logs = "  ".join(f"{k} {v}" for k, v in self.logs.items())
        print(f"epoch {self.done:>4}/{self.epochs}  {logs}", flush=True)

    def close(self):
        pass


def run_epochs(net, engine, *, n, loss_code, optimizer, epochs, shuffle, l1, l2, clip_norm,
               clip_value, schedule, seed, callbacks, verbose, state, validation=None,
               gradient_monitor=None):
    """Train ``net`` in place through ``engine`` (a :class:`CpuEngine` or
    ``cuda_training.CudaEngine`` over the n validated, converted samples); returns a
    History.

    Epoch e of this fit is epoch ``state.epochs_done + e`` of the network: the
    schedule, the shuffle (:func:`epoch_permutation`) and ``lr_scale`` continue
    across ``warm_start`` fits. ``validation`` is None or a converted (Xv, Yv) pair,
    evaluated with the compiled ``evaluate`` after every epoch. ``callbacks`` are
    :class:`fastbp.callbacks.Callback` objects or plain ``f(net, epoch, history)``.

    If an epoch produces a non-finite loss the parameters and optimizer state are
    restored to the end of the previous epoch, a RuntimeWarning is issued and
    training stops.
    """
    from .callbacks import Callback
    hyper = hyper_vector(optimizer, optimizer.lr, l1, l2, clip_norm, clip_value)
    perm = np.arange(n, dtype=np.int64)
    history = History()
    classification = net.output != "identity"
    diagnostics = np.zeros((len(net.sizes) - 1, 2), dtype=np.float64)
    n_batches = -(-n // engine.bmax)
    if validation is not None:
        Xv, Yv = validation
        val_chunk = min(1024, Xv.shape[0])
        val_work = Workspace(net.sizes, val_chunk, net.dtype, batchnorm=net.batchnorm)
    fit = FitContext(state, optimizer, epochs, validation is not None)
    for cb in callbacks:
        if isinstance(cb, Callback):
            cb.on_train_begin(net, fit)
    bar = _progress_bar(verbose, epochs)
    try:
        for epoch in range(epochs):
            global_epoch = state.epochs_done
            diagnostics[...] = 0
            hyper[spec.H_LR] = schedule(global_epoch, optimizer.lr) * state.lr_scale
            if shuffle:
                perm = epoch_permutation(seed, global_epoch, n)
            engine.save_point()
            rng_seed = dropout_seed(seed, global_epoch) if engine.dropout else -1
            t0 = time.perf_counter()
            total, correct, finite = engine.train_epoch(perm, loss_code, optimizer.code, hyper,
                                                        diagnostics, rng_seed)
            seconds = time.perf_counter() - t0
            epoch_loss = total / n
            if engine.computes_diagnostics:
                grad_norm, update_ratio = diagnostics[:, 0] / n_batches, diagnostics[:, 1] / n_batches
            else:
                grad_norm = update_ratio = np.full(len(net.sizes) - 1, np.nan)
            if gradient_monitor is not None and engine.computes_diagnostics:
                gradient_monitor.check(grad_norm, epoch)
            if not np.isfinite(epoch_loss) or not finite:
                engine.restore()
                warnings.warn(f"training diverged in epoch {epoch + 1} (non-finite loss or parameters); "
                              "parameters restored to the end of the previous epoch. Lower the learning "
                              "rate or use clip_norm.", RuntimeWarning, stacklevel=3)
                history.stopped_early = True
                break
            state.epochs_done += 1
            history.record(loss=epoch_loss, accuracy=correct / n if classification else float("nan"),
                           lr=float(hyper[spec.H_LR]), seconds=seconds,
                           samples_per_second=n / seconds if seconds > 0 else float("inf"),
                           grad_norm=grad_norm, update_ratio=update_ratio)
            if validation is not None or callbacks:
                engine.to_host()
            if validation is not None:
                val_total, val_correct = net._loss_sum(Xv, Yv, loss_code, val_chunk, val_work)
                history.val_loss.append(val_total / Xv.shape[0])
                history.val_accuracy.append(val_correct / Xv.shape[0] if classification else float("nan"))
            if bar is not None:
                bar.set_postfix(_epoch_logs(history, classification), refresh=False)
                bar.update(1)
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
