"""The training loop: epochs, schedule, history and callbacks in Python; the body of
each epoch is one compiled call (``kernels.cpu.train_epoch``).

Everything the kernels write into is allocated here once per fit (``Workspace``,
``FitState``), so the hot path neither allocates nor runs Python per batch.
"""

import time
import warnings

import numpy as np

from . import spec
from .kernels import cpu


class Workspace:
    """Per-fit scratch buffers for batches of at most ``bmax`` rows."""

    def __init__(self, sizes, bmax, dtype):
        widths = sizes[1:]
        self.bmax = int(bmax)
        self.xb = np.zeros((bmax, sizes[0]), dtype=dtype)
        self.yb = np.zeros((bmax, sizes[-1]), dtype=dtype)
        self.zs = np.zeros(bmax * sum(widths), dtype=dtype)
        self.acts = np.zeros(bmax * sum(widths), dtype=dtype)
        # two ping-pong buffers, each big enough for the widest layer (input included)
        self.deltas = np.zeros(2 * bmax * max(sizes), dtype=dtype)


class FitState:
    """Optimizer state beside the parameters: flat gradient, two moment buffers and
    the step count (kept on the network so a later fit can continue)."""

    def __init__(self, n_params, dtype):
        self.grad = np.zeros(n_params, dtype=dtype)
        self.state1 = np.zeros(n_params, dtype=dtype)
        self.state2 = np.zeros(n_params, dtype=dtype)
        self.step = np.zeros(1, dtype=np.int64)


class History:
    """Per-epoch records of a fit: ``loss`` (objective incl. L1/L2 penalty, averaged
    over the epoch's batches), ``accuracy`` (training accuracy during the epoch, for
    classification), ``lr``, ``seconds``, ``samples_per_second``, and per layer
    ``grad_norm`` (mean over the epoch's batches of the L2 norm of the layer's
    regularised gradient) and ``update_ratio`` (mean of ‖ΔW‖/‖W‖), both computed
    inside the update kernel."""

    def __init__(self):
        self.loss, self.accuracy, self.lr, self.seconds, self.samples_per_second = [], [], [], [], []
        self.grad_norm, self.update_ratio = [], []
        self.epochs = 0
        self.stopped_early = False

    def record(self, **logs):
        for key, value in logs.items():
            getattr(self, key).append(value)
        self.epochs += 1

    def as_dict(self):
        return {k: list(v) for k, v in vars(self).items() if isinstance(v, list)}

    def __repr__(self):
        last = f", last loss {self.loss[-1]:.4g}" if self.loss else ""
        return f"History({self.epochs} epochs{last})"


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


def run_epochs(net, X, Y, *, loss_code, optimizer, epochs, batch_size, shuffle, l1, l2,
               clip_norm, clip_value, schedule, seed, callbacks, verbose, state):
    """Train ``net`` in place on validated, converted X and Y; returns a History.

    If an epoch produces a non-finite loss the parameters and optimizer state are
    restored to the end of the previous epoch, a RuntimeWarning is issued and
    training stops.
    """
    n = X.shape[0]
    work = Workspace(net.sizes, min(batch_size, n), net.dtype)
    hyper = hyper_vector(optimizer, optimizer.lr, l1, l2, clip_norm, clip_value)
    rng = np.random.default_rng(seed)
    perm = np.arange(n, dtype=np.int64)
    backup = np.empty_like(net.theta)
    backup_states = (np.empty_like(state.state1), np.empty_like(state.state2))
    history = History()
    classification = net.output != "identity"
    diagnostics = np.zeros((len(net.sizes) - 1, 2), dtype=np.float64)
    n_batches = -(-n // work.bmax)
    for epoch in range(epochs):
        diagnostics[...] = 0
        hyper[spec.H_LR] = schedule(epoch, optimizer.lr)
        if shuffle:
            perm = rng.permutation(n).astype(np.int64)
        np.copyto(backup, net.theta)
        np.copyto(backup_states[0], state.state1)
        np.copyto(backup_states[1], state.state2)
        step_before = int(state.step[0])
        t0 = time.perf_counter()
        total, correct = cpu.train_epoch(
            X, Y, perm, work.bmax, net.theta, state.grad, state.state1, state.state2, net.layout,
            net.codes, loss_code, optimizer.code, hyper, state.step, work.xb, work.yb, work.zs,
            work.acts, work.deltas, diagnostics)
        seconds = time.perf_counter() - t0
        epoch_loss = total / n
        if not np.isfinite(epoch_loss) or not np.isfinite(net.theta).all():
            np.copyto(net.theta, backup)
            np.copyto(state.state1, backup_states[0])
            np.copyto(state.state2, backup_states[1])
            state.step[0] = step_before
            warnings.warn(f"training diverged in epoch {epoch + 1} (non-finite loss or parameters); "
                          "parameters restored to the end of the previous epoch. Lower the learning "
                          "rate or use clip_norm.", RuntimeWarning, stacklevel=3)
            history.stopped_early = True
            break
        history.record(loss=epoch_loss, accuracy=correct / n if classification else float("nan"),
                       lr=float(hyper[spec.H_LR]), seconds=seconds,
                       samples_per_second=n / seconds if seconds > 0 else float("inf"),
                       grad_norm=diagnostics[:, 0] / n_batches, update_ratio=diagnostics[:, 1] / n_batches)
        if verbose:
            acc = f"  accuracy {history.accuracy[-1]:.4f}" if classification else ""
            print(f"epoch {epoch + 1:>4}/{epochs}  loss {epoch_loss:.6f}{acc}  "
                  f"({history.samples_per_second[-1]:,.0f} samples/s)")
        if any(cb(net, epoch, history) for cb in callbacks):
            history.stopped_early = True
            break
    return history
