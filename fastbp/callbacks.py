"""Callbacks run by the epoch loop (``fastbp.training.run_epochs``), once per epoch,
in Python: nothing here touches the per-batch hot path.

A callback is either a plain callable ``f(net, epoch, history) -> bool`` (True stops
training) or a :class:`Callback` with three hooks:

* ``on_train_begin(net, fit)`` before any kernel runs; ``fit`` is a
  :class:`fastbp.training.FitContext` (``fit.lr_scale`` may be changed, it applies
  from the next epoch on; ``fit.has_validation``);
* ``on_epoch_end(net, epoch, history) -> bool``: ``epoch`` is 0-based within this
  fit, ``history`` already holds the epoch's records; True stops training;
* ``on_train_end(net, history)`` after the last epoch (also after a stop).

Also here: :class:`GradientWarning` and :class:`GradientMonitor`, the per-epoch
check of the per-layer gradient norms the update kernel measures.
"""

import math
import numbers
import warnings

import numpy as np

MONITORS = ("loss", "val_loss")
#: the patience of ``fit(early_stopping=True)`` and of ``EarlyStopping()``
DEFAULT_PATIENCE = 5


def _check_monitor(monitor, allow_auto=False):
    allowed = MONITORS + (("auto",) if allow_auto else ())
    if monitor not in allowed:
        raise ValueError(f"monitor must be one of {list(allowed)}, got {monitor!r}")
    return monitor


def _check_number(name, value, low, high=math.inf, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        raise ValueError(f"{name} must lie in {'(' if low_open else '['}{low}, {high}"
                         f"{')' if high_open else ']'}, got {value!r}")
    return float(value)


def _check_patience(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"patience must be an integer >= 1, got {value!r}")
    return int(value)


def _monitored(fit, monitor, who):
    """Resolve "auto" and make sure "val_loss" has validation data behind it."""
    if monitor == "auto":
        return "val_loss" if fit.has_validation else "loss"
    if monitor == "val_loss" and not fit.has_validation:
        raise ValueError(f"{who} monitors 'val_loss' but fit got no validation_data or validation_split")
    return monitor


class Callback:
    """Base class; every hook is a no-op. Calling the object runs ``on_epoch_end``, so
    a Callback also works wherever a plain callable is expected."""

    def on_train_begin(self, net, fit):
        pass

    def on_epoch_end(self, net, epoch, history):
        return False

    def on_train_end(self, net, history):
        pass

    def __call__(self, net, epoch, history):
        return self.on_epoch_end(net, epoch, history)


class EarlyStopping(Callback):
    """Stop when the monitored value has not improved (decreased by more than
    ``min_delta``) for ``patience`` consecutive epochs.

    ``monitor="auto"`` watches ``val_loss`` when the fit has validation data, else the
    training ``loss``. With ``restore_best`` (default) the parameters of the best
    epoch are copied back at the end (the optimizer moments are not rewound: a later
    ``warm_start`` continues from the last epoch's moments; BN running statistics are
    restored with the parameters). Sets
    ``history.best_epoch`` (0-based, within the fit). With ``verbose`` it prints one
    line when it stops a fit: the epoch it stopped after and the epoch restored.
    """

    def __init__(self, patience=DEFAULT_PATIENCE, monitor="auto", min_delta=0.0, restore_best=True,
                 verbose=False):
        self.patience = _check_patience(patience)
        self.monitor = _check_monitor(monitor, allow_auto=True)
        self.min_delta = _check_number("min_delta", min_delta, 0.0)
        if not isinstance(restore_best, (bool, np.bool_)):
            raise TypeError(f"restore_best must be True or False, got {restore_best!r}")
        self.restore_best = bool(restore_best)
        self.verbose = bool(verbose)

    def on_train_begin(self, net, fit):
        self._key = _monitored(fit, self.monitor, "EarlyStopping")
        self._best = math.inf
        self._best_epoch = None
        self._stopped_epoch = None
        self._wait = 0
        self._best_params = np.empty_like(net.theta) if self.restore_best else None
        self._best_running = np.empty_like(net.bn_running) if self.restore_best else None

    def on_epoch_end(self, net, epoch, history):
        value = getattr(history, self._key)[-1]
        if value < self._best - self.min_delta:
            self._best, self._best_epoch, self._wait = value, epoch, 0
            if self._best_params is not None:
                np.copyto(self._best_params, net.theta)
                np.copyto(self._best_running, net.bn_running)
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self._stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, net, history):
        history.best_epoch = self._best_epoch
        restored = self._best_params is not None and self._best_epoch is not None \
            and self._best_epoch != history.epochs - 1
        if restored:
            np.copyto(net.theta, self._best_params)
            np.copyto(net.bn_running, self._best_running)
        if self.verbose and (self._stopped_epoch is not None or restored):
            print(self.message(restored))

    def message(self, restored):
        """The one line said at the end of a fit this callback stopped, or whose best
        epoch it restored (epochs 1-based)."""
        best = f"best {self._key} {self._best:.4g} at epoch {self._best_epoch + 1}"
        kept = f"restored epoch {self._best_epoch + 1}'s parameters" if restored else "kept the last parameters"
        if self._stopped_epoch is None:
            return f"early stopping: ran every epoch; {best}, {kept}"
        return (f"early stopping: no {self._key} improvement for {self.patience} epochs, stopped after "
                f"epoch {self._stopped_epoch + 1}; {best}, {kept}")

    def __repr__(self):
        return (f"EarlyStopping(patience={self.patience}, monitor={self.monitor!r}, "
                f"min_delta={self.min_delta}, restore_best={self.restore_best}, verbose={self.verbose})")


class ReduceOnPlateau(Callback):
    """Divide the learning rate when the monitored value stops improving, like
    scikit-learn's ``learning_rate='adaptive'``: after ``patience`` consecutive epochs
    without a decrease of more than ``min_delta``, ``fit.lr_scale`` is multiplied by
    ``factor`` (the next epoch trains at lr0 · schedule · lr_scale), but the base rate
    times the scale never drops below ``min_lr``. The count restarts after each
    reduction. Never stops training by itself.
    """

    def __init__(self, factor=0.2, patience=2, min_delta=1e-4, monitor="loss", min_lr=0.0):
        self.factor = _check_number("factor", factor, 0.0, 1.0, low_open=True, high_open=True)
        self.patience = _check_patience(patience)
        self.min_delta = _check_number("min_delta", min_delta, 0.0)
        self.monitor = _check_monitor(monitor)
        self.min_lr = _check_number("min_lr", min_lr, 0.0)
        self.reductions = []  # (epoch, new lr_scale) of every reduction in the last fit

    def on_train_begin(self, net, fit):
        self._key = _monitored(fit, self.monitor, "ReduceOnPlateau")
        self._fit = fit
        self._best = math.inf
        self._wait = 0
        self.reductions = []

    def on_epoch_end(self, net, epoch, history):
        value = getattr(history, self._key)[-1]
        if value < self._best - self.min_delta:
            self._best, self._wait = value, 0
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self._wait = 0
            floor = self.min_lr / self._fit.optimizer.lr
            scale = max(self._fit.lr_scale * self.factor, floor)
            if scale < self._fit.lr_scale:
                self._fit.lr_scale = scale
                self.reductions.append((epoch, scale))
        return False

    def __repr__(self):
        return (f"ReduceOnPlateau(factor={self.factor}, patience={self.patience}, "
                f"min_delta={self.min_delta}, monitor={self.monitor!r}, min_lr={self.min_lr})")


# --- gradient diagnostics -----------------------------------------------------------------


class GradientWarning(RuntimeWarning):
    """A layer's gradient vanished or exploded during training."""


EXPLODING_HINT = ("; large gradients usually come from unscaled inputs: standardise the features "
                  "(sklearn.preprocessing.StandardScaler, or net.standardizer = "
                  "fastbp.data.Standardizer.fit(X)), or lower the learning rate / set clip_norm")


class GradientMonitor:
    """Per-epoch check of ``history.grad_norm`` (mean over the epoch's batches of each
    layer's regularised-gradient L2 norm, measured in the update kernel).

    * vanishing: a layer's norm is below ``vanishing`` times the largest layer norm
      of that epoch (relative to the other layers, so it is independent of the
      loss scale; when every layer's gradient is exactly zero nothing is said);
    * exploding: a layer's norm is non-finite or above ``exploding`` (absolute).

    Each (layer, kind) is reported once per fit as a :class:`GradientWarning` naming
    the layer (1-based, as W1/b1 in gradcheck) and the epoch (1-based, within the
    fit). ``fit(gradient_warnings=True)`` uses the defaults; pass a GradientMonitor to
    change them, or False to turn the check off.
    """

    def __init__(self, vanishing=1e-7, exploding=1e3):
        self.vanishing = _check_number("vanishing", vanishing, 0.0, 1.0)
        self.exploding = _check_number("exploding", exploding, 0.0, low_open=True)
        self.reported = set()

    def reset(self):
        self.reported = set()

    def check(self, grad_norm, epoch):
        finite = grad_norm[np.isfinite(grad_norm)]
        largest = float(finite.max()) if finite.size else 0.0
        for l, norm in enumerate(grad_norm):
            if not np.isfinite(norm) or norm > self.exploding:
                kind, detail = "exploding", (f"gradient norm {norm:.3g}" + (
                    "" if not np.isfinite(norm) else f" > {self.exploding:g}"))
            elif largest > 0 and norm < self.vanishing * largest:
                kind, detail = "vanishing", (f"gradient norm {norm:.3g} < {self.vanishing:g} x the "
                                             f"largest layer's ({largest:.3g})")
            else:
                continue
            if (l, kind) in self.reported:
                continue
            self.reported.add((l, kind))
            hint = EXPLODING_HINT if kind == "exploding" else ""
            warnings.warn(f"{kind} gradient in layer {l + 1} (W{l + 1}/b{l + 1}) at epoch {epoch + 1}: "
                          f"{detail}{hint}", GradientWarning, stacklevel=4)

    def __repr__(self):
        return f"GradientMonitor(vanishing={self.vanishing:g}, exploding={self.exploding:g})"
