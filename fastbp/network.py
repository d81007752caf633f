"""``fastbp.MLP``: the network spec, its flat parameters, fit / predict / evaluate, save / load."""

import functools
import numbers
import os
import threading
import warnings

import numpy as np

from . import cpu_training, cuda_training, persist, spec
from .init import init_weights, resolve_init
from .layout import gamma_offsets, make_layout, update_layout, weight_views
from .optimizers import get_optimizer, get_schedule
from .threads import blas_threads, check_threads
from .training import FitState, run_epochs
from .validation import (check_features, check_int, check_nonnegative, check_positive_or_none,
                         check_sample_weight, check_targets)


def _gradient_monitor(gradient_warnings):
    from .callbacks import GradientMonitor
    if isinstance(gradient_warnings, GradientMonitor):
        gradient_warnings.reset()
        return gradient_warnings
    if isinstance(gradient_warnings, (bool, np.bool_)):
        return GradientMonitor() if gradient_warnings else None
    raise TypeError(f"gradient_warnings must be True, False or a GradientMonitor, got {gradient_warnings!r}")


def _check_verbose(verbose):
    """0, 1, 2 or "bar" (True means 1); 1 and "bar" need tqdm."""
    if isinstance(verbose, (bool, np.bool_)):
        verbose = int(verbose)
    if not (verbose == "bar" if isinstance(verbose, str) else
            isinstance(verbose, numbers.Integral) and verbose in (0, 1, 2)):
        raise ValueError(f"verbose must be 0, 1, 2 or 'bar', got {verbose!r}")
    if verbose in (1, "bar"):
        try:
            import tqdm  # noqa: F401
        except ImportError as exc:
            raise ImportError("verbose=1 shows a tqdm progress bar; install it with "
                              "pip install 'fastbp[progress]' (or pip install tqdm), or use verbose=2") from exc
    return verbose if isinstance(verbose, str) else int(verbose)


def _field(header, key, kind):
    """A header field of a model file, of type ``kind``."""
    value = header.get(key)
    if not isinstance(value, kind):
        raise TypeError(f"header field {key!r} missing or not {kind.__name__}")
    return value


def _dtype_name(dtype):
    try:
        return np.dtype(dtype).name
    except TypeError:
        return None


def _one_fit_at_a_time(fit):
    """``fit`` holding the network's lock: a second fit of the same network while one
    runs (another thread, or a callback) raises RuntimeError instead of mixing both.
    Different networks train in parallel (the kernels release the GIL)."""
    @functools.wraps(fit)
    def locked(self, *args, **kwargs):
        lock = self.__dict__.setdefault("_fit_lock", threading.Lock())
        if not lock.acquire(blocking=False):
            raise RuntimeError("this network is already being fitted (by another thread, or fit was called "
                               "from one of its own callbacks); fit one network from one thread at a time, "
                               "or fit a copy (net.copy())")
        try:
            return fit(self, *args, **kwargs)
        finally:
            lock.release()
    return locked


def _column_names(X):
    """A DataFrame's column names as strings (None for arrays or non-string names)."""
    columns = getattr(X, "columns", None)
    if columns is None or not all(isinstance(c, str) for c in columns):
        return None
    return list(columns)


def _column_mismatch(names, fitted):
    """One line saying how a DataFrame's columns differ from the fitted ones."""
    if sorted(names) == sorted(fitted):
        first = next(i for i, (a, b) in enumerate(zip(names, fitted)) if a != b)
        return (f"X has the fitted columns in another order (column {first} is {names[first]!r}, "
                f"fitted {fitted[first]!r}); pass X[net.feature_names]")
    missing = [c for c in fitted if c not in names]
    extra = [c for c in names if c not in fitted]
    return (f"X's columns differ from those the network was fitted on: missing {missing}, "
            f"unexpected {extra}")


DEFAULT_LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "identity": "mse",
                "exp": "poisson"}
PREDICT_CHUNK = cpu_training.PREDICT_CHUNK


class MLP:
    """A multilayer perceptron trained by backpropagation on fastbp's kernels.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``[n_inputs, hidden..., n_outputs]`` (at least two entries).
    activation : str or sequence of str
        Hidden-layer activation(s): identity, sigmoid, tanh, relu, leaky_relu.
    output : str
        Output activation: softmax, sigmoid, identity or exp (Poisson regression).
    init : str
        Weight initialisation (see ``fastbp.init``): he, xavier/glorot, *_uniform, *_normal.
    seed : int
        Seeds the initial weights and, unless ``fit(seed=...)`` says otherwise, shuffling.
    dtype : "float32" (default) or "float64".
    dropout : float or sequence of float
        Inverted-dropout rate p in [0, 1) after each hidden layer (one number for all,
        or one per hidden layer); active in ``fit`` only, never in predict / evaluate /
        gradients / gradcheck. Each mask is a counter-based hash of (fit seed, epoch,
        optimizer step, layer, row, unit) (``kernels/rng.py``), so a seed reproduces a
        run and split training equals straight. Combines with
        batchnorm and checkpointing; per hidden layer the order is affine →
        batchnorm → activation → dropout.
    batchnorm : bool
        Batch normalization after every hidden layer's affine step: y = γ x̂ + β with
        x̂ the unit's input normalised by the batch mean and variance in training and
        by running estimates (updated each batch with ``bn_momentum``:
        r ← m·r + (1 − m)·batch value, unbiased variance) in predict / evaluate. The
        layer's bias is β; γ (``gammas[l]``, initialised to 1) sits after it in
        ``theta``. ``flat_gradient`` and gradcheck use batch statistics. Combines with
        dropout and checkpointing.

    ``weights[l]`` has shape (fan_in, fan_out) and ``z = a @ W + b`` with samples
    as rows; ``weights`` and ``biases`` are views into the flat vector ``theta``.

    Scale your features: fastbp trains on X as given. Features on large or unequal
    scales (an unscaled DataFrame) make training noisy or make gradients explode;
    standardise them first, e.g. ``sklearn.preprocessing.StandardScaler`` in a
    ``Pipeline(StandardScaler(), fastbp.sklearn.MLPClassifier())``, or set
    ``net.standardizer = fastbp.data.Standardizer.fit(X)`` to have fit, predict and
    evaluate apply it and ``save`` / ONNX export keep it (``fastbp train`` does that
    by default).

    Kept by :meth:`save` beside the parameters: ``feature_names`` (the columns of the
    DataFrame fitted on; predicting on a DataFrame whose columns differ or come in
    another order is an error), ``classes`` (the label of each output unit, e.g. the
    strings of ``fastbp train``; ``classes[net.predict(X)]`` gives labels) and
    ``standardizer``. Class labels must be integers 0..k-1 here; for string labels
    encode them (``sklearn.preprocessing.LabelEncoder``) or use ``fastbp.sklearn``.
    """

    #: column names of the DataFrame the network was fitted on (None: unknown)
    feature_names = None
    #: the label of each output unit's class (None: the unit's index is the label)
    classes = None
    #: a ``fastbp.data.Standardizer`` applied to X by fit / predict / evaluate, or None
    standardizer = None

    def __init__(self, sizes, activation="relu", output="softmax", init="he", seed=0, dtype="float32",
                 dropout=0.0, batchnorm=False, bn_momentum=0.9):
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"sizes must be a sequence of layer widths [n_inputs, hidden..., n_outputs], "
                            f"got {sizes!r}")
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output width, got {sizes!r}")
        for s in sizes:
            check_int("every layer size", s, 1)
        self.sizes = [int(s) for s in sizes]
        n_hidden = len(self.sizes) - 2
        if not isinstance(activation, str) and not hasattr(activation, "__iter__"):
            raise TypeError(f"activation must be a name or one name per hidden layer, got {activation!r}")
        hidden = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(hidden) != n_hidden:
            raise ValueError(f"{len(hidden)} hidden activations given for {n_hidden} hidden layers")
        for name in hidden:
            if not isinstance(name, str) or name.lower() not in spec.ACTIVATIONS or \
                    spec.ACTIVATION_NAMES[spec.ACTIVATIONS[name.lower()]] not in spec.HIDDEN_ACTIVATIONS:
                raise ValueError(f"unknown hidden activation {name!r}; choose one of {list(spec.HIDDEN_ACTIVATIONS)}")
        if not isinstance(output, str) or output.lower() not in spec.ACTIVATIONS or \
                spec.ACTIVATION_NAMES[spec.ACTIVATIONS[output.lower()]] not in spec.OUTPUT_ACTIVATIONS:
            raise ValueError(f"unknown output activation {output!r}; choose one of {list(spec.OUTPUT_ACTIVATIONS)}")
        self.activations = [spec.ACTIVATION_NAMES[spec.ACTIVATIONS[a.lower()]] for a in hidden]
        self.output = spec.ACTIVATION_NAMES[spec.ACTIVATIONS[output.lower()]]
        if self.output == "softmax" and self.sizes[-1] < 2:
            raise ValueError("a softmax output needs at least 2 units; use output='sigmoid' for one")
        self.init = resolve_init(init)
        self.seed = check_int("seed", seed, 0)
        if dtype is None or _dtype_name(dtype) not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = np.dtype(dtype)
        dropout = 0.0 if dropout is None else dropout
        if not isinstance(dropout, numbers.Real) and not hasattr(dropout, "__iter__"):
            raise TypeError(f"dropout must be None, a rate or one rate per hidden layer, got {dropout!r}")
        if n_hidden == 0 and isinstance(dropout, numbers.Real) and dropout != 0:
            raise ValueError(f"dropout={dropout!r} needs a hidden layer; this network has none")
        rates = [dropout] * n_hidden if isinstance(dropout, numbers.Real) else list(dropout)
        if len(rates) != n_hidden:
            raise ValueError(f"{len(rates)} dropout rates given for {n_hidden} hidden layers")
        for p in rates:
            if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
                raise ValueError(f"dropout rates must be numbers in [0, 1), got {p!r}")
        self.dropout = [float(p) for p in rates]
        self.keep = np.array([1 - p for p in self.dropout] + [1.0], dtype=np.float64)
        if not isinstance(batchnorm, (bool, np.bool_)):
            raise TypeError(f"batchnorm must be True or False, got {batchnorm!r}")
        if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, numbers.Real) or not 0 <= bn_momentum < 1:
            raise ValueError(f"bn_momentum must be a number in [0, 1), got {bn_momentum!r}")
        self.batchnorm, self.bn_momentum = bool(batchnorm), float(bn_momentum)
        bn_flags = [self.batchnorm] * n_hidden + [False]
        self.layout, self.n_params = make_layout(self.sizes, bn_flags)
        self.update_layout = update_layout(self.layout, bn_flags)
        self.bn_goff = gamma_offsets(self.layout, bn_flags) if self.batchnorm else np.zeros(0, dtype=np.int64)
        total = sum(self.sizes[1:])
        # running mean (first half) and variance (second half) per unit, BN layers only used
        self.bn_running = np.concatenate([np.zeros(total), np.ones(total)]) if self.batchnorm else np.zeros(0)
        self.codes = np.array([spec.ACTIVATIONS[a] for a in self.layer_activations], dtype=np.int64)
        self.theta = np.zeros(self.n_params, dtype=self.dtype)
        self._make_views()
        for gamma in self.gammas:
            if gamma is not None:
                gamma[...] = 1
        rng = np.random.default_rng(self.seed)
        for W, (fan_in, fan_out) in zip(self.weights, zip(self.sizes[:-1], self.sizes[1:])):
            W[...] = init_weights(fan_in, fan_out, self.init, rng)
        self.loss = None
        self.fit_state = None
        self.fit_optimizer = None

    # --- description ------------------------------------------------------------------

    @property
    def layer_activations(self):
        """Activation name of every layer, the output last."""
        return [*self.activations, self.output]

    @property
    def n_features(self):
        return self.sizes[0]

    @property
    def n_outputs(self):
        return self.sizes[-1]

    def __repr__(self):
        drop = f", dropout={self.dropout}" if any(self.dropout) else ""
        drop += ", batchnorm=True" if self.batchnorm else ""
        return (f"MLP({self.sizes}, activation={self.activations}, output={self.output!r}, "
                f"dtype={self.dtype.name!r}{drop}, n_params={self.n_params})")

    # --- training ---------------------------------------------------------------------

    def _loss_code(self, loss):
        loss = DEFAULT_LOSS[self.output] if loss is None else loss
        return loss, spec.resolve_loss(loss, self.output)

    def _targets(self, y, n, loss_code):
        try:
            return check_targets(y, n, self.output, self.n_outputs, self.dtype, loss_code != spec.MSE)
        except TypeError as exc:
            if np.asarray(y).dtype.kind not in "OUS":
                raise
            raise TypeError(f"{exc}: fastbp.MLP takes integer class labels 0..k-1; encode string labels "
                            "(sklearn.preprocessing.LabelEncoder, keeping net.classes = encoder.classes_) "
                            "or use fastbp.sklearn.MLPClassifier, which takes them as they are") from None

    @_one_fit_at_a_time
    def fit(self, X, y, loss=None, optimizer=None, epochs=10, batch_size=32, shuffle=True,
            l1=0.0, l2=0.0, clip_norm=None, clip_value=None, schedule=None, seed=None,
            callbacks=(), verbose=0, warm_start=False, device="cpu", validation_data=None,
            validation_split=None, early_stopping=None, restore_best=True, gradient_warnings=True,
            checkpoint=None, validation_shuffle=False, threads=None, sample_weight=None):
        """Train by mini-batch backpropagation; returns a :class:`fastbp.training.History`.

        Calling ``fit`` again continues from the trained weights (like Keras, unlike
        scikit-learn's ``fit``); build a new ``MLP`` to start afresh. ``warm_start``
        is about the optimizer: it also keeps the optimizer state and epoch count.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Features, used as given (see the class docstring on scaling), or
            standardised by ``net.standardizer`` when set. A DataFrame's column
            names are kept in ``feature_names``.
        y : array-like
            Softmax: integer labels 0..k-1 (or one-hot rows); sigmoid: 0/1 labels;
            identity: values (n,) or (n, k).
        loss : str, optional
            Default: cross_entropy (softmax), binary_cross_entropy (sigmoid), mse.
        optimizer : fastbp optimizer or name, optional
            Default ``Adam(1e-3)``.
        epochs : int
            Passes over the training rows.
        batch_size : int or None
            Rows per update; None (or >= n) is full-batch, 1 is SGD. A partial last
            batch is trained on.
        shuffle : bool
            Reshuffle the rows every epoch.
        l1, l2 : float
            Penalties on the weights (not the biases), included in the reported loss.
        clip_norm, clip_value : float or None
            Clip the global gradient norm, then each element.
        schedule : None, str, Schedule or callable
            constant / step / exponential / invscaling, a
            ``fastbp.optimizers.Schedule`` or any ``f(epoch, lr0)``.
        seed : int, optional
            Seeds shuffling and dropout (default: the network's seed).
        callbacks : sequence
            ``f(net, epoch, history)`` or ``fastbp.callbacks.Callback`` objects, run
            after each epoch; returning True stops training.
        verbose : 0, 1, 2 or "bar"
            0 quiet; 1 progress: a tqdm bar in a terminal, in Jupyter a widget bar
            (with ipywidgets) or one line per epoch, nothing in logs and pipes;
            ``"bar"`` the tqdm bar always; 2 one line per epoch.
        warm_start : bool
            Continue from the optimizer state and epoch count of the previous fit
            (or of :meth:`load`): epoch e's shuffle is ``default_rng([seed, e])`` and
            the schedule sees e, so 5 + 5 warm-started epochs equal 10 straight ones.
        device : "cpu" or "cuda"
        validation_data : (X_val, y_val) or (X_val, y_val, sample_weight_val), optional
            Evaluated after every epoch into ``history.val_loss`` (weighted mean with
            weights) / ``val_accuracy``.
        validation_split : float in (0, 1), optional
            Hold out this fraction of the rows for validation: the *last* rows, or
            random ones with ``validation_shuffle``. Warns when a classifier's
            validation rows hold one class only.
        validation_shuffle : False, True or "stratify"
            How ``validation_split`` picks its rows: the last ones (False), random
            rows (True), or random rows in each class's proportion ("stratify").
        early_stopping : int, True or None
            Stop after this many epochs without improvement of ``val_loss`` (``loss``
            without validation data); True means a patience of
            ``fastbp.callbacks.DEFAULT_PATIENCE``. Says so in one line when verbose.
        restore_best : bool
            With early stopping, put back the best epoch's parameters.
        gradient_warnings : bool or GradientMonitor
            Warn on vanishing / exploding layer gradients.
        checkpoint : None, True or int
            Gradient checkpointing: keep the activations of every k-th layer only and
            recompute the others in the backward pass (True: k = ⌈√layers⌉); same
            gradients bit for bit, less memory, one extra forward pass of compute.
            Combines with dropout and batchnorm.
        threads : int or None
            Threads of the fit's kernels (default: chosen per network and data, see
            ``fastbp.threads`` and ``fastbp.kernels.cpu_split``; the user's own thread
            settings are restored after). 1: one thread throughout. 2 or more: a fit of a
            network with one hidden layer (no batchnorm or checkpointing; dropout,
            ``clip_norm`` and sample weights are fine) trains on two threads that split
            the hidden units (the same results to rounding, the same bits from run to
            run); any other fit gives BLAS this many threads.
        sample_weight : array-like (n_samples,), optional
            Finite weights >= 0, not all zero. Each batch minimises
            (Σ w_i ℓ_i + B·penalty)/Σw over its B rows (scikit-learn's MLP semantics: a
            weight acts as a repeat count, the penalty stays per B rows); a batch whose
            weights sum to 0 is skipped. ``history.loss`` is the mean of the batches'
            objectives weighted by batch size (scikit-learn's ``loss_curve_``);
            ``accuracy`` still counts rows. ``validation_split`` splits the weights with
            the rows and weighs ``val_loss``.

        Every argument is checked before any kernel runs; on an error the network is
        unchanged. If training is interrupted (Ctrl-C) or anything raises mid-fit (a
        callback, a schedule), the network is consistent: θ, optimizer state, batchnorm
        statistics, ``fit_optimizer`` and ``fit_state.epochs_done`` all describe the
        epochs completed, by this fit if it completed any, else everything is as before
        the fit. An epoch interrupted in its batches is undone; one whose callbacks
        raise counts as completed.
        """
        X, validation_data, feature_names = self._fit_input(X, validation_data)
        device = cuda_training.check_device(device)
        loss, loss_code = self._loss_code(loss)
        X = check_features(X, self.n_features, self.dtype)
        Y = self._targets(y, X.shape[0], loss_code)
        weights = check_sample_weight(sample_weight, X.shape[0])
        optimizer = get_optimizer(optimizer)
        epochs = check_int("epochs", epochs, 1)
        batch_size = check_int("batch_size", batch_size, 1, allow_none=True)
        batch_size = X.shape[0] if batch_size is None else min(batch_size, X.shape[0])
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
        l1 = check_nonnegative("l1", l1)
        l2 = check_nonnegative("l2", l2)
        clip_norm = check_positive_or_none("clip_norm", clip_norm)
        clip_value = check_positive_or_none("clip_value", clip_value)
        schedule = get_schedule(schedule)
        seed = self.seed if seed is None else check_int("seed", seed, 0)
        callbacks = [] if callbacks is None else callbacks
        if callable(callbacks) or not hasattr(callbacks, "__iter__"):
            raise TypeError(f"callbacks must be a list of callables (or None), got {callbacks!r}")
        callbacks = list(callbacks)
        if not all(callable(cb) for cb in callbacks):
            raise TypeError("every callback must be callable")
        if not isinstance(warm_start, (bool, np.bool_)):
            raise TypeError(f"warm_start must be True or False, got {warm_start!r}")
        if self.batchnorm and batch_size == 1:
            raise ValueError("batchnorm needs batches of at least 2 rows (one row normalises to x̂ = 0); "
                             "use batch_size >= 2")
        X, Y, weights, validation = self._validation(X, Y, weights, validation_data, validation_split,
                                                     loss_code, validation_shuffle, seed)
        callbacks += self._early_stopping(early_stopping, restore_best, verbose)
        monitor = _gradient_monitor(gradient_warnings)
        verbose = _check_verbose(verbose)
        checkpoint = self._check_checkpoint(checkpoint)
        threads = check_threads(threads)
        keep_state = warm_start and self.fit_state is not None and self.fit_optimizer == optimizer
        if warm_start and self.fit_state is not None and not keep_state:
            warnings.warn(f"warm_start with a different optimizer ({optimizer!r}, was {self.fit_optimizer!r}): "
                          "the parameters are kept, the optimizer state starts over", RuntimeWarning,
                          stacklevel=3)
        state = self.fit_state if keep_state else FitState(self.n_params, self.dtype)
        engine_class = cuda_training.CudaEngine if device == "cuda" else cpu_training.CpuEngine
        engine = engine_class(self, X, Y, state, batch_size=batch_size, optimizer=optimizer,
                              loss_code=loss_code, l1=l1, l2=l2, clip_norm=clip_norm, clip_value=clip_value,
                              checkpoint=checkpoint, seed=seed, sample_weight=weights, threads=threads)
        epochs_before = state.epochs_done
        completed = False
        try:
            with blas_threads(self.sizes, batch_size, getattr(engine, "kernel_threads", threads)):
                history = run_epochs(self, engine, n=X.shape[0], loss_code=loss_code, optimizer=optimizer,
                                     epochs=epochs, shuffle=bool(shuffle), schedule=schedule, seed=seed,
                                     callbacks=callbacks, verbose=verbose, state=state, validation=validation,
                                     gradient_monitor=monitor)
            completed = True
        finally:
            # consistent after an exception too: the new optimizer and state once this
            # fit has completed an epoch (the interrupted one is undone by run_epochs)
            if completed or state.epochs_done > epochs_before:
                self.loss, self.fit_state, self.fit_optimizer = loss, state, optimizer
                if feature_names is not None:
                    self.feature_names = feature_names
        return history

    def _validation(self, X, Y, weights, validation_data, validation_split, loss_code, validation_shuffle=False,
                    seed=0):
        """(X, Y, weights, validation) with validation None or converted (Xv, Yv, weights
        or None); ``weights`` (checked sample weights or None) are split with the rows."""
        if validation_data is not None and validation_split is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise TypeError("validation_data must be a pair (X_val, y_val) or a triple "
                                "(X_val, y_val, sample_weight_val)")
            Xv = check_features(validation_data[0], self.n_features, self.dtype, name="validation X")
            Yv = self._targets(validation_data[1], Xv.shape[0], loss_code)
            wv = check_sample_weight(validation_data[2], Xv.shape[0], "validation sample_weight") \
                if len(validation_data) == 3 else None
            return X, Y, weights, (Xv, Yv, wv)
        if validation_split is None:
            return X, Y, weights, None
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0 < validation_split < 1:
            raise ValueError(f"validation_split must be a number in (0, 1), got {validation_split!r}")
        n = X.shape[0]
        n_val = int(round(validation_split * n))
        if n_val < 1 or n_val >= n:
            raise ValueError(f"validation_split={validation_split} of {n} samples leaves "
                             f"{n - n_val} for training and {n_val} for validation; both need one")
        if validation_shuffle is False:
            train_rows, val_rows = slice(0, n - n_val), slice(n - n_val, n)
        else:
            val_rows = self._validation_rows(Y, n_val, validation_shuffle, seed)
            train_rows = np.setdiff1d(np.arange(n), val_rows)
        parts = [(a[train_rows], a[val_rows]) if a is not None else (None, None) for a in (X, Y, weights)]
        (X, Xv), (Y, Yv), (weights, wv) = parts
        if weights is not None and not (weights.any() and wv.any()):
            raise ValueError(f"validation_split={validation_split} leaves sample weights that are all zero in "
                             f"the {'training' if not weights.any() else 'validation'} rows")
        self._warn_one_class(Yv, validation_split, validation_shuffle)
        return X, Y, weights, (Xv, Yv, wv)

    def _validation_rows(self, Y, n_val, how, seed):
        """Sorted indices of ``n_val`` validation rows: random (``how=True``) or drawn
        per class in proportion (``"stratify"``), from ``default_rng([seed, 2])``."""
        if how is not True and how != "stratify":
            raise ValueError(f"validation_shuffle must be False, True or 'stratify', got {how!r}")
        rng = np.random.default_rng([seed, 2])
        if how is True:
            return np.sort(rng.permutation(Y.shape[0])[:n_val])
        if self.output in spec.REGRESSION_OUTPUTS:
            raise ValueError("validation_shuffle='stratify' needs class labels; this network regresses")
        from sklearn.model_selection import train_test_split
        _, val_rows = train_test_split(np.arange(Y.shape[0]), test_size=n_val, stratify=self._row_classes(Y),
                                       random_state=int(rng.integers(2 ** 31 - 1)))
        return np.sort(val_rows)

    def _row_classes(self, Y):
        """Class of each row of converted targets (multi-unit sigmoid: the 0/1 pattern)."""
        if self.output == "softmax":
            return Y.argmax(axis=1)
        return (Y > 0.5) @ (1 << np.arange(Y.shape[1]))

    def _warn_one_class(self, Yv, validation_split, how):
        import warnings
        if self.output in spec.REGRESSION_OUTPUTS or np.unique(self._row_classes(Yv)).size > 1:
            return
        rows = "the last" if how is False else "the"
        warnings.warn(f"validation_split={validation_split} took {rows} {Yv.shape[0]} rows, which hold one "
                      "class only, so val_loss / val_accuracy say little; pass validation_shuffle='stratify' "
                      "(or shuffle the rows first)", UserWarning, stacklevel=4)

    def _check_checkpoint(self, checkpoint):
        if checkpoint is None or checkpoint is False:
            return None
        if checkpoint is not True and (isinstance(checkpoint, bool) or
                                       not isinstance(checkpoint, numbers.Integral) or checkpoint < 1):
            raise ValueError(f"checkpoint must be None, True or an integer >= 1, got {checkpoint!r}")
        return checkpoint if checkpoint is True else int(checkpoint)

    @staticmethod
    def _early_stopping(early_stopping, restore_best, verbose=0):
        from .callbacks import DEFAULT_PATIENCE, EarlyStopping
        if not isinstance(restore_best, (bool, np.bool_)):
            raise TypeError(f"restore_best must be True or False, got {restore_best!r}")
        if early_stopping is None or early_stopping is False:
            return []
        if early_stopping is True:
            early_stopping = DEFAULT_PATIENCE
        if isinstance(early_stopping, bool) or not isinstance(early_stopping, numbers.Integral) \
                or early_stopping < 1:
            raise ValueError(f"early_stopping must be None, True or a patience (integer >= 1), "
                             f"got {early_stopping!r}")
        return [EarlyStopping(int(early_stopping), restore_best=bool(restore_best), verbose=bool(verbose))]

    # --- input metadata: feature names and standardisation ----------------------------

    def _input(self, X):
        """X with the stored standardisation applied, after checking a DataFrame's
        column names against ``feature_names``."""
        names = _column_names(X)
        if names is not None and self.feature_names is not None and names != list(self.feature_names):
            raise ValueError(_column_mismatch(names, list(self.feature_names)))
        return X if self.standardizer is None else self.standardizer.transform(X, self.dtype)

    def _fit_input(self, X, validation_data):
        """(X, validation_data, column names of X or None) as fit uses them."""
        X_in = self._input(X)
        if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3):
            validation_data = (self._input(validation_data[0]), *validation_data[1:])
        return X_in, validation_data, _column_names(X)

    # --- save / load --------------------------------------------------------------------

    def save(self, path):
        """Write the network to one ``.npz`` file at ``path`` (exactly that name):
        parameters, optimizer state and epoch count (if fitted) and a JSON header.
        No pickle; written atomically. See ``fastbp.persist``."""
        persist.save(self, path)

    @classmethod
    def load(cls, path):
        """A network read from a file written by :meth:`save`; ``fit(..., warm_start=True)``
        with the same optimizer continues training exactly where it stopped. A
        malformed or truncated file raises ``ValueError`` naming it (see
        ``fastbp.persist`` for what is checked before anything is allocated)."""
        header, arrays = persist.load(path)
        with persist.file_errors(os.fspath(path)):
            net = cls(header["sizes"], activation=_field(header, "activations", list),
                      output=_field(header, "output", str), init=_field(header, "init", str),
                      seed=_field(header, "seed", int), dtype=header["dtype"],
                      dropout=header.get("dropout", 0.0), batchnorm=header.get("batchnorm", False),
                      bn_momentum=header.get("bn_momentum", 0.9))
            loss = header.get("loss")
            if loss is not None:
                net._loss_code(loss)
            net.loss = loss
        net.theta[...] = arrays["theta"]
        if net.batchnorm:
            net.bn_running[...] = arrays["bn_running"]
        if "optimizer" in arrays:
            state = FitState(net.n_params, net.dtype)
            state.state1[...], state.state2[...] = arrays["state1"], arrays["state2"]
            state.step[...] = arrays["step"]
            state.epochs_done, state.lr_scale = header["epochs_done"], float(header["lr_scale"])
            net.fit_state, net.fit_optimizer = state, arrays["optimizer"]
        meta = arrays.get("metadata", {})
        net.feature_names = meta.get("feature_names")
        net.classes = None if meta.get("classes") is None else np.array(meta["classes"])
        if "standardizer" in arrays:
            from .data import Standardizer
            with persist.file_errors(os.fspath(path)):
                net.standardizer = Standardizer(*arrays["standardizer"])
        return net

    def to_onnx(self, path=None, dtype=None):
        """The network as an ONNX model (``onnx.ModelProto``), written to ``path`` when
        given: Gemm + activation per layer, batchnorm folded, dropout left out, the
        ``standardizer`` included; ``dtype`` defaults to the network's. Needs
        ``pip install 'fastbp[onnx]'``. See ``fastbp.onnx``."""
        from . import onnx as fastbp_onnx
        return fastbp_onnx.to_model(self, dtype) if path is None else fastbp_onnx.export(self, path, dtype)

    # --- inference --------------------------------------------------------------------

    def forward(self, X, device="cpu"):
        """Output activations a^L for every row of X (compiled, in chunks; on the GPU
        with ``device="cuda"``)."""
        device = cuda_training.check_device(device)
        X = self._input(X)
        X = check_features(X, self.n_features, self.dtype)
        chunk = min(PREDICT_CHUNK, X.shape[0])
        if device == "cuda":
            return cuda_training.forward(self, X, chunk)
        with blas_threads(self.sizes, chunk):
            return cpu_training.forward(self, X, chunk)

    def _loss_sum(self, X, Y, loss_code, batch_stats=False, weights=None):
        """(summed data loss — Σ w_i ℓ_i with ``weights`` —, correct) over converted X, Y in
        chunks, without dropout; BN with running statistics (or each chunk's batch statistics)."""
        return cpu_training.evaluate(self, X, Y, loss_code, min(PREDICT_CHUNK, X.shape[0]), batch_stats,
                                     weights=weights)

    def predict_proba(self, X, device="cpu"):
        """Class probabilities: softmax rows, or [1 − p, p] for a single sigmoid unit
        (p per unit for several)."""
        if self.output in spec.REGRESSION_OUTPUTS:
            raise ValueError("predict_proba needs a softmax or sigmoid output; this network regresses")
        p = self.forward(X, device)
        if self.output == "sigmoid" and self.n_outputs == 1:
            return np.hstack([1 - p, p])
        return p

    def predict(self, X, device="cpu"):
        """Class labels (softmax: argmax; sigmoid: p > 0.5) or regression values."""
        out = self.forward(X, device)
        if self.output == "softmax":
            return out.argmax(axis=1)
        if self.output == "sigmoid":
            labels = (out > 0.5).astype(np.int64)
            return labels[:, 0] if self.n_outputs == 1 else labels
        return out[:, 0] if self.n_outputs == 1 else out

    def evaluate(self, X, y, loss=None, device="cpu", sample_weight=None):
        """{"loss": mean data loss (no penalty), "accuracy": ...} (accuracy for classifiers).
        With ``sample_weight`` the loss is the weighted mean Σ w_i ℓ_i / Σw;
        accuracy counts rows."""
        device = cuda_training.check_device(device)
        loss, loss_code = self._loss_code(self.loss if loss is None else loss)
        X = self._input(X)
        X = check_features(X, self.n_features, self.dtype)
        Y = self._targets(y, X.shape[0], loss_code)
        weights = check_sample_weight(sample_weight, X.shape[0])
        chunk = min(PREDICT_CHUNK, X.shape[0])
        if device == "cuda":
            total, correct = cuda_training.evaluate(self, X, Y, loss_code, chunk, weights)
        else:
            total, correct = self._loss_sum(X, Y, loss_code, weights=weights)
        result = {"loss": total / (X.shape[0] if weights is None else weights.sum())}
        if self.output not in spec.REGRESSION_OUTPUTS:
            result["accuracy"] = correct / X.shape[0]
        return result

    # --- gradients --------------------------------------------------------------------

    def flat_gradient(self, X, y, loss=None, l1=0.0, l2=0.0, device="cpu", sample_weight=None):
        """(objective, flat gradient) over the full batch X, from the compiled backward
        pass of ``device``; the objective is the mean data loss plus the L1/L2 penalty
        (with ``sample_weight``: (Σ w_i ℓ_i + n·penalty)/Σw, as in ``fit``)."""
        device = cuda_training.check_device(device)
        loss, loss_code = self._loss_code(self.loss if loss is None else loss)
        X = check_features(X, self.n_features, self.dtype)
        Y = self._targets(y, X.shape[0], loss_code)
        l1, l2 = check_nonnegative("l1", l1), check_nonnegative("l2", l2)
        weights = check_sample_weight(sample_weight, X.shape[0])
        if weights is not None:  # the penalty per n rows: l1, l2 over the mean weight
            l1, l2 = l1 * X.shape[0] / weights.sum(), l2 * X.shape[0] / weights.sum()
        training = cuda_training if device == "cuda" else cpu_training
        value, grad = training.loss_and_gradient(self, X, Y, loss_code, weights)
        if l1 or l2:
            for W, dW in zip(self.weights, weight_views(grad, self.layout)[0]):
                dW += l1 * np.sign(W) + l2 * W
                value += l1 * np.abs(W).sum() + 0.5 * l2 * (W.astype(np.float64) ** 2).sum()
        return float(value), grad

    def gradients(self, X, y, loss=None, l1=0.0, l2=0.0, device="cpu", sample_weight=None):
        """``[(dW, db), ...]`` per layer: batch-mean gradients of the objective on (X, y)
        (weighted with ``sample_weight``, see :meth:`flat_gradient`). With batch
        normalization db is dβ; dγ is in :meth:`flat_gradient` at ``bn_goff[l]``."""
        _, grad = self.flat_gradient(X, y, loss, l1, l2, device, sample_weight)
        return list(zip(*weight_views(grad, self.layout)))

    # --- copies -----------------------------------------------------------------------

    #: attributes rebuilt rather than copied by pickle / copy.deepcopy: the views into
    #: ``theta``, the fit lock and scratch caches
    _TRANSIENT = ("weights", "biases", "gammas", "_fit_lock", "_full_batch_work")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._make_views()

    def _make_views(self):
        """``weights``, ``biases`` and ``gammas`` (None without batchnorm) as views of ``theta``."""
        self.weights, self.biases = weight_views(self.theta, self.layout)
        self.gammas = [self.theta[g:g + n] if g >= 0 else None for g, n in zip(self.bn_goff, self.sizes[1:])] \
            if self.batchnorm else [None] * (len(self.sizes) - 1)

    def copy(self, dtype=None):
        """An independent network with the same architecture and parameters."""
        other = MLP(self.sizes, self.activations, self.output, self.init, self.seed,
                    self.dtype if dtype is None else dtype, dropout=self.dropout, batchnorm=self.batchnorm,
                    bn_momentum=self.bn_momentum)
        other.theta[...] = self.theta
        other.bn_running[...] = self.bn_running
        other.loss = self.loss
        other.feature_names, other.classes, other.standardizer = self.feature_names, self.classes, self.standardizer
        return other
