"""``fastbp.MLP``: the network spec, its flat parameters, fit / predict / evaluate, save / load."""

import numbers

import numpy as np

from . import cpu_training, cuda_training, spec
from .init import init_weights, resolve_init
from .layout import gamma_offsets, make_layout, update_layout, weight_views
from .optimizers import get_optimizer, get_schedule
from .training import FitState, run_epochs
from .validation import (check_features, check_int, check_nonnegative, check_positive_or_none,
                         check_targets)


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


DEFAULT_LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "identity": "mse"}
PREDICT_CHUNK = 1024


class MLP:
    """A multilayer perceptron trained by backpropagation on fastbp's kernels.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``[n_inputs, hidden..., n_outputs]`` (at least two entries).
    activation : str or sequence of str
        Hidden-layer activation(s): identity, sigmoid, tanh, relu, leaky_relu.
    output : str
        Output activation: softmax, sigmoid or identity.
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
    """

    def __init__(self, sizes, activation="relu", output="softmax", init="he", seed=0, dtype="float32",
                 dropout=0.0, batchnorm=False, bn_momentum=0.9):
        sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else sizes
        if not isinstance(sizes, list) or len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output width, got {sizes!r}")
        for s in sizes:
            check_int("every layer size", s, 1)
        self.sizes = [int(s) for s in sizes]
        n_hidden = len(self.sizes) - 2
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
        if str(np.dtype(dtype)) not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = np.dtype(dtype)
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
        self.weights, self.biases = weight_views(self.theta, self.layout)
        self.gammas = [self.theta[g:g + n] if g >= 0 else None
                       for g, n in zip(self.bn_goff, self.sizes[1:])] if self.batchnorm else [None] * len(bn_flags)
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
        return check_targets(y, n, self.output, self.n_outputs, self.dtype, loss_code != spec.MSE)

    def fit(self, X, y, loss=None, optimizer=None, epochs=10, batch_size=32, shuffle=True,
            l1=0.0, l2=0.0, clip_norm=None, clip_value=None, schedule=None, seed=None,
            callbacks=(), verbose=0, warm_start=False, device="cpu", validation_data=None,
            validation_split=None, early_stopping=None, restore_best=True, gradient_warnings=True,
            checkpoint=None):
        """Train by mini-batch backpropagation; returns a :class:`fastbp.training.History`.

        ``batch_size=None`` (or >= n) is full-batch, 1 is SGD; a partial last batch is
        trained on. ``optimizer`` is a fastbp optimizer or its name (default Adam(1e-3)).
        ``schedule`` is None, a name (constant/step/exponential/invscaling), a
        ``fastbp.optimizers.Schedule`` or any ``f(epoch, lr0)``. ``l1``/``l2`` penalise
        weights (not biases) and are included in the reported loss. ``clip_norm`` clips
        the global gradient norm, then ``clip_value`` each element. ``callbacks`` are
        ``f(net, epoch, history)`` called after each epoch; returning True stops training.
        ``warm_start`` continues from the optimizer state of the previous fit (or of
        :meth:`load`), and from its epoch count: epoch e's shuffle is
        ``default_rng([seed, e]).permutation(n)`` and the schedule sees e, so 5 + 5
        warm-started epochs equal 10 straight ones, shuffled or not.

        ``validation_data=(Xv, yv)`` or ``validation_split=f`` (the *last* fraction f
        of the rows, taken before any shuffling; shuffle first if the rows are
        ordered) is evaluated after each epoch into ``history.val_loss`` /
        ``val_accuracy``. ``early_stopping=patience`` stops after that many epochs
        without improvement of ``val_loss`` (``loss`` without validation data) and,
        with ``restore_best``, puts back the best epoch's parameters (see
        ``fastbp.callbacks.EarlyStopping``). ``gradient_warnings`` (True, False or a
        ``fastbp.callbacks.GradientMonitor``) warns on vanishing / exploding layer
        gradients. ``verbose``: 0 quiet, 1 a tqdm progress bar when stderr is a
        terminal, ``"bar"`` the bar always, 2 one line per epoch. ``checkpoint=k``
        (gradient checkpointing) keeps the activations of every k-th layer only and
        recomputes the others during the backward pass (``True``: k = ⌈√layers⌉);
        same gradients bit for bit, less memory, one extra forward pass of compute.
        Combines with dropout and batchnorm.

        Every argument is checked before any kernel runs; on an error the network is
        unchanged. If training is interrupted (Ctrl-C) or anything raises mid-fit (a
        callback, a schedule), the network is consistent: θ, optimizer state, batchnorm
        statistics, ``fit_optimizer`` and ``fit_state.epochs_done`` all describe the
        epochs completed, by this fit if it completed any, else everything is as before
        the fit. An epoch interrupted in its batches is undone; one whose callbacks
        raise counts as completed.
        """
        device = cuda_training.check_device(device)
        loss, loss_code = self._loss_code(loss)
        X = check_features(X, self.n_features, self.dtype)
        Y = self._targets(y, X.shape[0], loss_code)
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
        callbacks = list(callbacks)
        if not all(callable(cb) for cb in callbacks):
            raise TypeError("every callback must be callable")
        X, Y, validation = self._validation(X, Y, validation_data, validation_split, loss_code)
        callbacks += self._early_stopping(early_stopping, restore_best)
        monitor = _gradient_monitor(gradient_warnings)
        verbose = _check_verbose(verbose)
        checkpoint = self._check_checkpoint(checkpoint)
        keep_state = warm_start and self.fit_state is not None and self.fit_optimizer == optimizer
        state = self.fit_state if keep_state else FitState(self.n_params, self.dtype)
        if device == "cuda" and self.batchnorm:
            raise ValueError("batchnorm runs on the CPU only; fit with device='cpu'")
        engine_class = cuda_training.CudaEngine if device == "cuda" else cpu_training.CpuEngine
        engine = engine_class(self, X, Y, state, batch_size=batch_size, optimizer=optimizer,
                              loss_code=loss_code, l1=l1, l2=l2, clip_norm=clip_norm, clip_value=clip_value,
                              checkpoint=checkpoint, seed=seed)
        epochs_before = state.epochs_done
        completed = False
        try:
            history = run_epochs(self, engine, n=X.shape[0], loss_code=loss_code, optimizer=optimizer,
                                 epochs=epochs, shuffle=bool(shuffle), schedule=schedule, seed=seed,
                                 callbacks=callbacks, verbose=verbose, state=state, validation=validation,
                                 validate=getattr(engine, "validate", None)   # the GPU's, on device θ
                                 or (lambda Xv, Yv: self._loss_sum(Xv, Yv, loss_code)),
                                 gradient_monitor=monitor)
            completed = True
        finally:
            # consistent after an exception too: the new optimizer and state once this
            # fit has completed an epoch (the interrupted one is undone by run_epochs)
            if completed or state.epochs_done > epochs_before:
                self.loss, self.fit_state, self.fit_optimizer = loss, state, optimizer
        return history

    def _validation(self, X, Y, validation_data, validation_split, loss_code):
        """(X, Y, validation) with validation None or a converted (Xv, Yv) pair."""
        if validation_data is not None and validation_split is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            Xv = check_features(validation_data[0], self.n_features, self.dtype, name="validation X")
            Yv = self._targets(validation_data[1], Xv.shape[0], loss_code)
            return X, Y, (Xv, Yv)
        if validation_split is None:
            return X, Y, None
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0 < validation_split < 1:
            raise ValueError(f"validation_split must be a number in (0, 1), got {validation_split!r}")
        n = X.shape[0]
        n_val = int(round(validation_split * n))
        if n_val < 1 or n_val >= n:
            raise ValueError(f"validation_split={validation_split} of {n} samples leaves "
                             f"{n - n_val} for training and {n_val} for validation; both need one")
        return X[:n - n_val], Y[:n - n_val], (X[n - n_val:], Y[n - n_val:])

    def _check_checkpoint(self, checkpoint):
        if checkpoint is None or checkpoint is False:
            return None
        if checkpoint is not True and (isinstance(checkpoint, bool) or
                                       not isinstance(checkpoint, numbers.Integral) or checkpoint < 1):
            raise ValueError(f"checkpoint must be None, True or an integer >= 1, got {checkpoint!r}")
        return checkpoint if checkpoint is True else int(checkpoint)

    @staticmethod
    def _early_stopping(early_stopping, restore_best):
        from .callbacks import EarlyStopping
        if not isinstance(restore_best, (bool, np.bool_)):
            raise TypeError(f"restore_best must be True or False, got {restore_best!r}")
        if early_stopping is None:
            return []
        if isinstance(early_stopping, bool) or not isinstance(early_stopping, numbers.Integral) \
                or early_stopping < 1:
            raise ValueError(f"early_stopping must be None or a patience (integer >= 1), got {early_stopping!r}")
        return [EarlyStopping(int(early_stopping), restore_best=bool(restore_best))]

    # --- save / load --------------------------------------------------------------------

    def save(self, path):
        """Write the network to one ``.npz`` file at ``path`` (exactly that name):
        parameters, optimizer state and epoch count (if fitted) and a JSON header.
        No pickle; written atomically. See ``fastbp.persist``."""
        from . import persist
        persist.save(self, path)

    @classmethod
    def load(cls, path):
        """A network read from a file written by :meth:`save`; ``fit(..., warm_start=True)``
        with the same optimizer continues training exactly where it stopped. A
        malformed or truncated file raises ``ValueError`` naming it."""
        from . import persist
        return persist.load(path)

    # --- inference --------------------------------------------------------------------

    def forward(self, X, device="cpu"):
        """Output activations a^L for every row of X (compiled, in chunks; on the GPU
        with ``device="cuda"``)."""
        device = cuda_training.check_device(device)
        X = check_features(X, self.n_features, self.dtype)
        chunk = min(PREDICT_CHUNK, X.shape[0])
        if device == "cuda":
            if self.batchnorm:
                raise ValueError("batchnorm networks run on the CPU only; use device='cpu'")
            return cuda_training.forward(self, X, chunk)
        return cpu_training.forward(self, X, chunk)

    def _loss_sum(self, X, Y, loss_code, batch_stats=False):
        """(summed data loss, correct) over converted X, Y in chunks, without dropout;
        BN with running statistics (or each chunk's batch statistics)."""
        return cpu_training.evaluate(self, X, Y, loss_code, min(PREDICT_CHUNK, X.shape[0]), batch_stats)

    def predict_proba(self, X, device="cpu"):
        """Class probabilities: softmax rows, or [1 − p, p] for a single sigmoid unit
        (p per unit for several)."""
        if self.output == "identity":
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

    def evaluate(self, X, y, loss=None, device="cpu"):
        """{"loss": mean data loss (no penalty), "accuracy": ...} (accuracy for classifiers)."""
        device = cuda_training.check_device(device)
        loss, loss_code = self._loss_code(self.loss if loss is None else loss)
        X = check_features(X, self.n_features, self.dtype)
        Y = self._targets(y, X.shape[0], loss_code)
        chunk = min(PREDICT_CHUNK, X.shape[0])
        if device == "cuda":
            if self.batchnorm:
                raise ValueError("batchnorm networks run on the CPU only; use device='cpu'")
            total, correct = cuda_training.evaluate(self, X, Y, loss_code, chunk)
        else:
            total, correct = self._loss_sum(X, Y, loss_code)
        result = {"loss": total / X.shape[0]}
        if self.output != "identity":
            result["accuracy"] = correct / X.shape[0]
        return result

    # --- gradients --------------------------------------------------------------------

    def flat_gradient(self, X, y, loss=None, l1=0.0, l2=0.0, device="cpu"):
        """(objective, flat gradient) over the full batch X, from the compiled backward
        pass of ``device``; the objective is the mean data loss plus the L1/L2 penalty."""
        device = cuda_training.check_device(device)
        loss, loss_code = self._loss_code(self.loss if loss is None else loss)
        X = check_features(X, self.n_features, self.dtype)
        Y = self._targets(y, X.shape[0], loss_code)
        l1, l2 = check_nonnegative("l1", l1), check_nonnegative("l2", l2)
        if device == "cuda" and self.batchnorm:
            raise ValueError("batchnorm networks run on the CPU only; use device='cpu'")
        training = cuda_training if device == "cuda" else cpu_training
        value, grad = training.loss_and_gradient(self, X, Y, loss_code)
        if l1 or l2:
            for W, dW in zip(self.weights, weight_views(grad, self.layout)[0]):
                dW += l1 * np.sign(W) + l2 * W
                value += l1 * np.abs(W).sum() + 0.5 * l2 * (W.astype(np.float64) ** 2).sum()
        return float(value), grad

    def gradients(self, X, y, loss=None, l1=0.0, l2=0.0, device="cpu"):
        """``[(dW, db), ...]`` per layer: batch-mean gradients of the objective on (X, y).
        With batch normalization db is dβ; dγ is in :meth:`flat_gradient` at ``bn_goff[l]``."""
        _, grad = self.flat_gradient(X, y, loss, l1, l2, device)
        return list(zip(*weight_views(grad, self.layout)))

    # --- copies -----------------------------------------------------------------------

    def copy(self, dtype=None):
        """An independent network with the same architecture and parameters."""
        other = MLP(self.sizes, self.activations, self.output, self.init, self.seed,
                    self.dtype if dtype is None else dtype, dropout=self.dropout, batchnorm=self.batchnorm,
                    bn_momentum=self.bn_momentum)
        other.theta[...] = self.theta
        other.bn_running[...] = self.bn_running
        other.loss = self.loss
        return other
