"""The engine protocol: what ``training.run_epochs`` needs from a device.

``run_epochs`` (schedule, shuffling, History, callbacks, divergence, interrupts, progress)
knows nothing of kernels; it drives an engine, one per fit, through the methods below.
``cpu_training.CpuEngine`` and ``cuda_training.CudaEngine`` implement them over host
and device buffers, taking the same constructor arguments.

Consistency rule the loop relies on: between ``save_point()`` and ``restore()`` the
engine may change θ, the optimizer state (and step count) and batchnorm's running
statistics, and ``restore()`` puts all of them back, so an epoch that diverges or is
interrupted leaves the network as it was after the last completed epoch.
"""

from typing import Protocol

import numpy as np


class Engine(Protocol):
    """The epochs of one fit on one device."""

    #: rows per batch (the last batch of an epoch may be shorter)
    bmax: int
    #: batches per epoch
    n_batches: int
    #: True if :meth:`train_batches` accepts any range of batches; False: whole epochs only
    chunked: bool
    #: True if :meth:`diagnostics` returns per-layer sums (else History records NaN)
    computes_diagnostics: bool

    def __init__(self, net, X, Y, state, *, batch_size: int, optimizer, loss_code: int, l1: float,
                 l2: float, clip_norm: float, clip_value: float, checkpoint=None, seed: int = 0, sample_weight=None,
                 threads=None):
        """Set up the fit of ``net`` on converted X, Y with the optimizer state ``state``
        (``training.FitState``): ``clip_norm``/``clip_value`` 0 when off, ``checkpoint``
        None or segment length (``True``: ⌈√layers⌉), ``seed`` the fit seed (dropout masks),
        ``sample_weight`` None or checked float64 weights, one per row, ``threads`` the
        fit's ``threads=`` (None: the engine's choice). An engine may set
        ``kernel_threads``: the BLAS threads ``fit`` then gives the kernels instead."""

    def train_batches(self, perm: np.ndarray, first: int, stop: int, epoch: int, lr: float) -> tuple:
        """Train batches ``first``..``stop``-1 of the permutation ``perm`` (global epoch
        ``epoch``, learning rate ``lr``); returns the epoch's running (Σ b·(loss + penalty),
        correct count) including these batches. ``first`` 0 starts a new epoch."""

    def validate(self, Xv: np.ndarray, Yv: np.ndarray, weights=None) -> tuple:
        """(summed data loss, correct count) of the current θ on converted validation rows
        (``weights``: Σ w_i ℓ_i), on the engine's device."""

    def finite(self) -> bool:
        """True if every parameter is finite."""

    def diagnostics(self) -> np.ndarray:
        """(n_layers, 2) sums over this epoch's batches of each layer's gradient norm and
        update ratio (only when ``computes_diagnostics``)."""

    def save_point(self) -> None:
        """Remember θ, optimizer state, step count and running statistics."""

    def restore(self) -> None:
        """Put back what :meth:`save_point` remembered."""

    def to_host(self) -> None:
        """Make ``net.theta`` current (before validation and callbacks)."""

    def from_host(self) -> None:
        """Take ``net.theta`` as changed by callbacks."""

    def finish(self) -> None:
        """Leave θ and the optimizer state in the network and ``state`` (always called)."""
