"""``fastbp.MLP``: the network spec, its flat parameters, fit / predict / evaluate."""

import numpy as np

from . import cuda_training, spec
from .init import init_weights, resolve_init
from .kernels import cpu
from .layout import make_layout, weight_views
from .optimizers import get_optimizer, get_schedule
from .training import FitState, Workspace, run_epochs
from .validation import (check_features, check_int, check_nonnegative, check_positive_or_none,
                         check_targets)

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

    ``weights[l]`` has shape (fan_in, fan_out) and ``z = a @ W + b`` with samples
    as rows; ``weights`` and ``biases`` are views into the flat vector ``theta``.
    """

    def __init__(self, sizes, activation="relu", output="softmax", init="he", seed=0, dtype="float32"):
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
        self.layout, self.n_params = make_layout(self.sizes)
        self.codes = np.array([spec.ACTIVATIONS[a] for a in self.layer_activations], dtype=np.int64)
        self.theta = np.zeros(self.n_params, dtype=self.dtype)
        self.weights, self.biases = weight_views(self.theta, self.layout)
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
        return (f"MLP({self.sizes}, activation={self.activations}, output={self.output!r}, "
                f"dtype={self.dtype.name!r}, n_params={self.n_params})")

    # --- training ---------------------------------------------------------------------

    def _loss_code(self, loss):
        loss = DEFAULT_LOSS[self.output] if loss is None else loss
        return loss, spec.resolve_loss(loss, self.output)

    def _targets(self, y, n, loss_code):
        return check_targets(y, n, self.output, self.n_outputs, self.dtype, loss_code != spec.MSE)

    def fit(self, X, y, loss=None, optimizer=None, epochs=10, batch_size=32, shuffle=True,
            l1=0.0, l2=0.0, clip_norm=None, clip_value=None, schedule=None, seed=None,
            callbacks=(), verbose=0, warm_start=False, device="cpu"):
        """Train by mini-batch backpropagation; returns a :class:`fastbp.training.History`.

        ``batch_size=None`` (or >= n) is full-batch, 1 is SGD; a partial last batch is
        trained on. ``optimizer`` is a fastbp optimizer or its name (default Adam(1e-3)).
        ``schedule`` is None, a name (constant/step/exponential/invscaling), a
        ``fastbp.optimizers.Schedule`` or any ``f(epoch, lr0)``. ``l1``/``l2`` penalise
        weights (not biases) and are included in the reported loss. ``clip_norm`` clips
        the global gradient norm, then ``clip_value`` each element. ``callbacks`` are
        ``f(net, epoch, history)`` called after each epoch; returning True stops training.
        ``warm_start`` continues from the optimizer state of the previous fit.

        Every argument is checked before any kernel runs; on an error the network is
        unchanged.
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
        keep_state = warm_start and self.fit_state is not None and self.fit_optimizer == optimizer
        state = self.fit_state if keep_state else FitState(self.n_params, self.dtype)
        epoch_loop = run_epochs if device == "cpu" else cuda_training.run_epochs
        history = epoch_loop(self, X, Y, loss_code=loss_code, optimizer=optimizer, epochs=epochs,
                             batch_size=batch_size, shuffle=bool(shuffle), l1=l1, l2=l2,
                             clip_norm=clip_norm, clip_value=clip_value, schedule=schedule, seed=seed,
                             callbacks=callbacks, verbose=verbose, state=state)
        self.loss, self.fit_state, self.fit_optimizer = loss, state, optimizer
        return history

    # --- inference --------------------------------------------------------------------

    def forward(self, X, device="cpu"):
        """Output activations a^L for every row of X (compiled, in chunks; on the GPU
        with ``device="cuda"``)."""
        device = cuda_training.check_device(device)
        X = check_features(X, self.n_features, self.dtype)
        chunk = min(PREDICT_CHUNK, X.shape[0])
        if device == "cuda":
            return cuda_training.forward(self, X, chunk)
        work = Workspace(self.sizes, chunk, self.dtype)
        out = np.empty((X.shape[0], self.n_outputs), dtype=self.dtype)
        cpu.predict(X, self.theta, self.layout, self.codes, work.zs, work.acts, out, chunk)
        return out

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
            total, correct = cuda_training.evaluate(self, X, Y, loss_code, chunk)
        else:
            work = Workspace(self.sizes, chunk, self.dtype)
            total, correct = cpu.evaluate(X, Y, self.theta, self.layout, self.codes, loss_code,
                                          work.zs, work.acts, work.deltas, chunk)
        result = {"loss": total / X.shape[0]}
        if self.output != "identity":
            result["accuracy"] = correct / X.shape[0]
        return result

    # --- gradients --------------------------------------------------------------------

    def flat_gradient(self, X, y, loss=None, l1=0.0, l2=0.0):
        """(objective, flat gradient) over the full batch X, from the compiled backward
        pass; the objective is the mean data loss plus the L1/L2 penalty."""
        loss, loss_code = self._loss_code(self.loss if loss is None else loss)
        X = check_features(X, self.n_features, self.dtype)
        Y = self._targets(y, X.shape[0], loss_code)
        l1, l2 = check_nonnegative("l1", l1), check_nonnegative("l2", l2)
        work = Workspace(self.sizes, X.shape[0], self.dtype)
        grad = np.zeros(self.n_params, dtype=self.dtype)
        value = cpu.loss_and_gradient(X, Y, self.theta, grad, self.layout, self.codes, loss_code,
                                      work.zs, work.acts, work.deltas)
        if l1 or l2:
            for W, dW in zip(self.weights, weight_views(grad, self.layout)[0]):
                dW += l1 * np.sign(W) + l2 * W
                value += l1 * np.abs(W).sum() + 0.5 * l2 * (W.astype(np.float64) ** 2).sum()
        return float(value), grad

    def gradients(self, X, y, loss=None, l1=0.0, l2=0.0):
        """``[(dW, db), ...]`` per layer: batch-mean gradients of the objective on (X, y)."""
        _, grad = self.flat_gradient(X, y, loss, l1, l2)
        return list(zip(*weight_views(grad, self.layout)))

    # --- copies -----------------------------------------------------------------------

    def copy(self, dtype=None):
        """An independent network with the same architecture and parameters."""
        other = MLP(self.sizes, self.activations, self.output, self.init, self.seed,
                    self.dtype if dtype is None else dtype)
        other.theta[...] = self.theta
        other.loss = self.loss
        return other
