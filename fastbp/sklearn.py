"""scikit-learn drop-in estimators: ``fastbp.sklearn.MLPClassifier`` and ``MLPRegressor``.

Same parameter names, defaults, fitted attributes and training semantics as
``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor``; every epoch of the
``sgd``/``adam`` solvers runs as one compiled fastbp call, and ``lbfgs`` drives
``scipy.optimize.minimize(method="L-BFGS-B")`` with the compiled full-batch
gradient. Switching is one import::

    from fastbp.sklearn import MLPClassifier   # instead of sklearn.neural_network

How scikit-learn's objective maps onto fastbp's (documented deviations last):

* sklearn minimises, per mini-batch of B rows, ``loss_B + 0.5·alpha·‖W‖²/B``. Its
  log-losses equal fastbp's ``cross_entropy`` / ``binary_cross_entropy``. For
  regression sklearn follows the gradient of ``0.5·Σ_outputs mean_samples (p − y)²``,
  which is ``s = n_outputs/2`` times fastbp's ``mse`` (mean over samples and
  outputs). So sklearn's objective is ``s ×`` fastbp's objective with
  ``l2 = alpha/(s·B)`` (s = 1 for classifiers), and we train fastbp on that with
  the step sizes rescaled to give sklearn's updates: SGD/momentum learning rate
  ``× s``, Adam epsilon ``/ s`` (Adam is otherwise invariant to the scale);
  ``loss_`` / ``loss_curve_`` are fastbp's epoch loss ``× s``.
* ``invscaling``: ``lr = learning_rate_init / (t_ + 1)**power_t`` with ``t_`` the
  samples seen, updated after each epoch; ``adaptive``: lr / 5 each time the
  loss (or validation score) fails to improve by ``tol`` for more than
  ``n_iter_no_change`` epochs, stopping once lr <= 1e-6 -- both ``sgd`` only, as in
  sklearn. Stopping, ``ConvergenceWarning`` and early stopping (validation split
  stratified when sklearn stratifies it, i.e. single-output classifiers; best
  parameters restored) follow sklearn's ``_fit_stochastic`` step for step, as
  per-epoch fastbp callbacks.
* Initial weights are drawn exactly as sklearn draws them (Glorot uniform from
  ``check_random_state(random_state)``), so both libraries start from the same
  parameters; mini-batch shuffling uses fastbp's generator, seeded from the same
  ``random_state``.
* ``sample_weight`` (``fit`` and ``partial_fit``, every solver): sklearn's batch
  objective is ``(Σ w·loss + 0.5·alpha·‖W‖²) / Σ w``, which is fastbp's weighted
  objective ``(Σ w·loss + B·penalty) / Σ w`` (``fastbp.MLP.fit(sample_weight=...)``)
  with the same ``l2 = alpha/(s·B)`` as without weights; ``loss_curve_`` averages
  the batches' weighted objectives by batch size, as sklearn's does. The
  early-stopping split takes the weights along (same split as sklearn) and the
  validation score is weighted.
* A diverging fit raises sklearn's ``ValueError("Solver produced non-finite
  parameter weights...")``; ``n_iter_``, ``loss_`` (NaN) and ``loss_curve_``
  include the diverging epoch, as in sklearn.
* ``coefs_`` / ``intercepts_`` (and the other public fitted attributes) may be set
  by hand: predict, ``partial_fit`` and ``warm_start`` continue from them.
* The estimators never emit ``fastbp.GradientWarning``.

Deviations (besides scikit-learn's private internals -- ``_forward_pass``,
``_loss_grad_lbfgs``, ``_optimizer`` -- which fastbp does not have):

* The partial last batch of an epoch uses ``l2 = alpha/(s·B)`` with the full batch
  size B (fastbp keeps one l2 per fit); sklearn divides by that batch's own size.
* Adam's epsilon: fastbp computes ``m̂/(√v̂ + ε)``; sklearn's rule, written the same
  way, is ``m̂/(√v̂ + ε/√(1 − β2^t))``, an ε up to ~32× larger in the first steps.
  That matters only where the gradient's RMS is near ε, e.g. weights from an
  all-zero input column that only the L2 term moves (on digits, weights then
  differ by up to ~0.01 after 5 epochs); elsewhere the two agree to ~1e-6.
* Multi-output regression: ``loss_`` is the objective whose gradient is followed,
  ``0.5·Σ_outputs``; sklearn reports ``0.5·mean_outputs`` while following the
  same gradient (identical for one output). ``lbfgs`` therefore optimises a
  value and gradient that match (sklearn's disagree by the factor n_outputs).
* Sparse input is accepted and densified.
* ``sample_weight`` must be >= 0 (sklearn's MLPs accept negative weights, which make
  the objective unbounded below). A mini-batch whose weights sum to 0 is skipped (no
  update; it adds 0 to ``loss_``); sklearn raises ``ZeroDivisionError`` there.
* After a diverging fit the parameters are the last finite ones (fastbp rolls the
  diverging epoch back), where sklearn leaves non-finite ones.
* A class too small to stratify the early-stopping split is named by its original
  label (sklearn names its binarized form, e.g. ``['True']``).
* ``dropout`` (a rate or one per hidden layer; sgd/adam only) and ``batchnorm`` are
  passed to ``fastbp.MLP``: inverted dropout during training, batch normalization
  after each hidden layer (γ lives in the network's parameters, not in ``coefs_``).

fastbp extras: ``device`` (``"cpu"`` or ``"cuda"``: where the stochastic solvers' epochs
and lbfgs's gradients run; predictions and early stopping's validation scores are computed
on the CPU from the fitted parameters, so a fitted estimator predicts anywhere; each lbfgs
function evaluation is one ``flat_gradient`` call, which copies X to the device: worth it
for large X only) and ``dtype`` (None: float32 input trains in float32, anything else in
float64, as sklearn does; or force "float32"/"float64"). ``lbfgs`` always optimises in
float64 and casts back.
"""

import numbers
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import (_check_partial_fit_first_call, check_classification_targets,
                                      type_of_target, unique_labels)
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

try:
    from sklearn.utils.validation import validate_data
except ImportError as error:  # scikit-learn < 1.6
    raise ImportError("fastbp.sklearn needs scikit-learn >= 1.6") from error

from fastbp.cuda_training import check_device
from fastbp.network import MLP
from fastbp.optimizers import SGD, Adam, Momentum, Nesterov
from fastbp.training import FitState

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC_SOLVERS = ("sgd", "adam")
_HIDDEN = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_OUTPUT = {"identity": "identity", "logistic": "sigmoid", "softmax": "softmax", "exp": "exp"}
_LOSS = {"identity": "mse", "logistic": "binary_cross_entropy", "softmax": "cross_entropy", "exp": "poisson"}
_MIN_ADAPTIVE_LR = 1e-6


# --- parameter validation (runs before any compiled code) -------------------------------


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


def _check_real(name, value, low, high=np.inf, low_open=False, high_open=False):
    if not _is_real(value):
        raise TypeError(f"The '{name}' parameter must be a real number, got {value!r}.")
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"The '{name}' parameter must be in the range {lo}{low}, {high}{hi}, got {value!r}.")


def _check_integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"The '{name}' parameter must be an int, got {value!r}.")
    if value < low:
        raise ValueError(f"The '{name}' parameter must be >= {low}, got {value!r}.")


def _check_option(name, value, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"The '{name}' parameter must be one of {sorted(options)}, got {value!r}.")


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"The '{name}' parameter must be True or False, got {value!r}.")


def _hidden_sizes(value):
    """hidden_layer_sizes as a list of ints >= 1 (an int means one hidden layer)."""
    sizes = list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [value]
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"hidden_layer_sizes must hold ints, got {value!r}.")
        if size <= 0:
            raise ValueError(f"hidden_layer_sizes must be > 0, got {value!r}.")
    return [int(s) for s in sizes]


class _SklearnMomentum(Momentum):
    """fastbp's momentum rule with scikit-learn's range for the momentum, [0, 1]."""

    bounds = {**Momentum.bounds, "momentum": (0.0, 1.0, False, False)}


class _SklearnNesterov(Nesterov):
    """fastbp's Nesterov rule with scikit-learn's range for the momentum, [0, 1]."""

    bounds = {**Nesterov.bounds, "momentum": (0.0, 1.0, False, False)}


class _LiveRate:
    """A fastbp schedule that reads the estimator's current learning rate, which the
    per-epoch callback updates (invscaling, adaptive)."""

    def __init__(self, estimator, scale):
        self.estimator, self.scale = estimator, scale

    def __call__(self, epoch, lr0):
        return self.estimator._learning_rate * self.scale


# --- the shared estimator --------------------------------------------------------------


class _BaseMLP(BaseEstimator):
    """Everything shared by MLPClassifier and MLPRegressor (not for direct use)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, device="cpu", dropout=None, batchnorm=False,
                 dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device
        self.dropout = dropout
        self.batchnorm = batchnorm
        self.dtype = dtype

    # --- validation ------------------------------------------------------------------

    def _check_params(self):
        _hidden_sizes(self.hidden_layer_sizes)
        _check_option("activation", self.activation, _HIDDEN)
        _check_option("solver", self.solver, {"lbfgs", "sgd", "adam"})
        _check_real("alpha", self.alpha, 0.0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_integer("batch_size", self.batch_size, 1)
        _check_option("learning_rate", self.learning_rate, {"constant", "invscaling", "adaptive"})
        _check_real("learning_rate_init", self.learning_rate_init, 0.0, low_open=True)
        _check_real("power_t", self.power_t, 0.0)
        _check_integer("max_iter", self.max_iter, 1)
        _check_bool("shuffle", self.shuffle)
        check_random_state(self.random_state)
        _check_real("tol", self.tol, 0.0)
        if not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise TypeError(f"The 'verbose' parameter must be a bool or an int, got {self.verbose!r}.")
        _check_bool("warm_start", self.warm_start)
        _check_real("momentum", self.momentum, 0.0, 1.0)
        _check_bool("nesterovs_momentum", self.nesterovs_momentum)
        _check_bool("early_stopping", self.early_stopping)
        _check_real("validation_fraction", self.validation_fraction, 0.0, 1.0, high_open=True)
        _check_real("beta_1", self.beta_1, 0.0, 1.0, high_open=True)
        _check_real("beta_2", self.beta_2, 0.0, 1.0, high_open=True)
        _check_real("epsilon", self.epsilon, 0.0, low_open=True)
        if self.n_iter_no_change != np.inf:
            _check_integer("n_iter_no_change", self.n_iter_no_change, 1)
        _check_integer("max_fun", self.max_fun, 1)
        check_device(self.device)  # ValueError if unknown, RuntimeError if there is no GPU
        if self.dropout is not None:
            rates = [self.dropout] if isinstance(self.dropout, numbers.Real) else self.dropout
            try:
                rates = [float(p) for p in rates]
            except (TypeError, ValueError):
                raise ValueError(f"dropout must be None, a rate in [0, 1) or a list of rates, "
                                 f"got {self.dropout!r}.") from None
            if isinstance(self.dropout, bool) or not all(0 <= p < 1 for p in rates):
                raise ValueError(f"dropout rates must lie in [0, 1), got {self.dropout!r}.")
            if self.solver == "lbfgs" and any(rates):
                raise ValueError("solver='lbfgs' needs a deterministic objective; dropout needs "
                                 "solver='sgd' or 'adam'.")
        if not isinstance(self.batchnorm, (bool, np.bool_)):
            raise ValueError(f"batchnorm must be True or False, got {self.batchnorm!r}.")
        if self.dtype is not None and str(np.dtype(self.dtype)) not in ("float32", "float64"):
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}.")

    def _validate_X(self, X, reset, dtype):
        """X as validated by sklearn (feature names, n_features_in_), dense, C-contiguous,
        writeable and of ``dtype`` (None: float32 stays float32, else float64)."""
        X = validate_data(self, X, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32),
                          reset=reset)
        return self._as_kernel_array(X, dtype)

    @staticmethod
    def _as_kernel_array(X, dtype):
        if scipy.sparse.issparse(X):
            X = X.toarray()
        return np.require(X, dtype=X.dtype if dtype is None else dtype,
                          requirements=["C_CONTIGUOUS", "ALIGNED", "WRITEABLE"])

    # --- the fastbp network behind coefs_ / intercepts_ -----------------------------------

    def _new_net(self, sizes, hidden, output, dtype, dropout=None, batchnorm=False):
        return MLP(sizes, activation=_HIDDEN[hidden], output=_OUTPUT[output],
                   init="xavier_uniform", seed=0, dtype=dtype,
                   dropout=0.0 if dropout is None else dropout, batchnorm=bool(batchnorm))

    def _expose(self, net):
        """Point coefs_ / intercepts_ at the network's parameter views."""
        self._net = net
        self.coefs_ = list(net.weights)
        self.intercepts_ = list(net.biases)

    def _synced_net(self):
        """The network, with coefs_ / intercepts_ copied in (they are usually views of
        its parameters already; this covers users who assign new arrays). Without one
        (coefs_ / intercepts_ and the other fitted attributes set by hand, as
        scikit-learn allows) it is built from their shapes first."""
        adopted = "_net" not in self.__dict__
        if adopted:
            self._adopt_fitted_attributes()
        net = self._net
        for name, views, values in (("coefs_", net.weights, self.coefs_),
                                    ("intercepts_", net.biases, self.intercepts_)):
            if len(values) != len(views):
                raise ValueError(f"{name} has {len(values)} layers, the fitted network {len(views)}")
            for view, value in zip(views, values):
                if np.shape(value) != view.shape:
                    raise ValueError(f"{name} holds an array of shape {np.shape(value)} where the "
                                     f"fitted network has {view.shape}")
                if value is not view:
                    np.copyto(view, value, casting="same_kind")
        if adopted:
            self._expose(net)
        return net

    def _adopt_fitted_attributes(self):
        """Build the network behind hand-set coefs_ / intercepts_ (and, where missing,
        the bookkeeping attributes scikit-learn derives from them)."""
        coefs = list(self.coefs_)
        if not coefs or len(self.intercepts_) != len(coefs):
            raise ValueError(f"coefs_ and intercepts_ must be lists of the same length >= 1, got "
                             f"{len(coefs)} and {len(self.intercepts_)}")
        layer_units = [np.shape(c)[0] for c in coefs] + [np.shape(coefs[-1])[1]]
        dtype = np.asarray(coefs[0]).dtype
        dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)
        self.n_outputs_ = layer_units[-1]
        self.n_layers_ = len(layer_units)
        if self._is_classifier() and "_label_binarizer" not in self.__dict__ and hasattr(self, "classes_"):
            self._label_binarizer = LabelBinarizer()
            multilabel = getattr(self, "out_activation_", None) == "logistic" and self.n_outputs_ > 1
            self._label_binarizer.fit(np.eye(self.n_outputs_, dtype=int) if multilabel else self.classes_)
        if not hasattr(self, "out_activation_"):
            self.out_activation_ = self._output_activation()
        for name in ("n_iter_", "t_"):
            if not hasattr(self, name):
                setattr(self, name, 0)
        self._net_spec = (layer_units, self.activation, self.out_activation_, dtype.name, self.dropout,
                          bool(self.batchnorm))
        self._net = self._new_net(*self._net_spec)

    def _initialize(self, layer_units, dtype, rs):
        """First fit: architecture, sklearn's Glorot-uniform initial weights drawn from
        ``rs`` in sklearn's order, and the solver bookkeeping attributes."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = layer_units[-1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        net = self._new_net(layer_units, self.activation, self.out_activation_, dtype, self.dropout,
                            self.batchnorm)
        factor = 2.0 if self.activation == "logistic" else 6.0
        for W, b in zip(net.weights, net.biases):
            fan_in, fan_out = W.shape
            bound = np.sqrt(factor / (fan_in + fan_out))
            W[...] = rs.uniform(-bound, bound, (fan_in, fan_out))
            b[...] = rs.uniform(-bound, bound, fan_out)
        self._net_spec = (list(layer_units), self.activation, self.out_activation_, net.dtype.name,
                          self.dropout, bool(self.batchnorm))
        self._expose(net)
        self._best_theta = net.theta.copy()
        self.__dict__.pop("_learning_rate", None)  # a fresh optimizer on the next partial_fit
        if self.solver in _STOCHASTIC_SOLVERS:
            self._init_stochastic_records()

    def _init_stochastic_records(self):
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    # --- pickling: plain arrays only; the network is rebuilt around them -------------------

    def __getstate__(self):
        state = dict(super().__getstate__())
        net = state.pop("_net", None)
        if net is not None:  # the whole parameter vector: batchnorm's γ are not in coefs_
            state["_saved_parameters"] = (net.theta.copy(), net.bn_running.copy())
        if net is not None and net.fit_state is not None:
            fs = net.fit_state
            state["_saved_fit_state"] = (net.fit_optimizer, fs.grad, fs.state1, fs.state2, fs.step,
                                         fs.epochs_done, fs.lr_scale)
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop("_saved_fit_state", None)
        parameters = state.pop("_saved_parameters", None)
        super().__setstate__(state)
        if "_net_spec" in self.__dict__ and "coefs_" in self.__dict__:
            self._net = self._new_net(*self._net_spec)
            if parameters is not None:
                self._net.theta[...], self._net.bn_running[...] = parameters
            net = self._synced_net()
            self._expose(net)
            if saved is not None:
                optimizer, grad, state1, state2, step, epochs_done, lr_scale = saved
                fs = FitState(net.n_params, net.dtype)
                fs.grad[...], fs.state1[...], fs.state2[...], fs.step[...] = grad, state1, state2, step
                fs.epochs_done, fs.lr_scale = epochs_done, lr_scale  # the shuffle and schedule go on
                net.fit_state, net.fit_optimizer = fs, optimizer

    # --- training ------------------------------------------------------------------------

    def _loss_scale(self):
        """s: sklearn's objective = s × fastbp's (see the module docstring)."""
        return 1.0

    def _fit(self, X, y, sample_weight=None, incremental=False):
        self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        hidden = _hidden_sizes(self.hidden_layer_sizes)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        if not first_pass:
            self._synced_net()  # builds the network behind hand-set fitted attributes
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        if first_pass:
            dtype = np.dtype(self.dtype) if self.dtype is not None else X.dtype
        else:
            dtype = self._synced_net().dtype
        sample_weight = self._check_weights(sample_weight, X)
        X = self._as_kernel_array(X, dtype)
        Y = np.ascontiguousarray(Y.reshape(Y.shape[0], -1), dtype=dtype)
        layer_units = [X.shape[1], *hidden, Y.shape[1]]
        rs = check_random_state(self.random_state)
        if first_pass:
            self._initialize(layer_units, dtype, rs)
        elif list(layer_units) != list(self._net_spec[0]):
            raise ValueError(f"warm_start/partial_fit needs the fitted architecture {self._net_spec[0]} "
                             f"(inputs, hidden layers, outputs), got {layer_units}; "
                             "refit with warm_start=False")
        elif (self.dropout, bool(self.batchnorm)) != tuple(self._net_spec[4:]):
            raise ValueError(f"warm_start/partial_fit needs the fitted dropout/batchnorm "
                             f"{tuple(self._net_spec[4:])}, got {(self.dropout, self.batchnorm)}; "
                             "refit with warm_start=False")
        net = self._synced_net()
        if self.solver in _STOCHASTIC_SOLVERS:
            self._fit_stochastic(net, X, Y, rs, incremental, sample_weight)
        else:
            self._fit_lbfgs(net, X, Y, sample_weight)
        if not np.isfinite(net.theta).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data may"
                             " contain large values and need to be preprocessed.")
        return self

    @staticmethod
    def _check_weights(sample_weight, X):
        """Sample weights as float64 (n,), >= 0 and not all zero, or None (checked before
        anything is initialised, so a refused call leaves a fitted estimator as it was)."""
        if sample_weight is None:
            return None
        return _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)

    def _lr_scale(self):
        """Factor from sklearn's learning rate to fastbp's: s for SGD, whose step is
        proportional to the gradient; 1 for Adam, which is scale-invariant."""
        return self._loss_scale() if self.solver == "sgd" else 1.0

    def _make_optimizer(self):
        if self.solver == "adam":
            return Adam(self.learning_rate_init, self.beta_1, self.beta_2,
                        self.epsilon / self._loss_scale())
        lr = self.learning_rate_init * self._lr_scale()
        if self.momentum == 0:
            return SGD(lr)
        return (_SklearnNesterov if self.nesterovs_momentum else _SklearnMomentum)(lr, self.momentum)

    def _split(self, X, Y, sample_weight, rs):
        """scikit-learn's early-stopping split (stratified for single-output classifiers);
        a class too small to stratify is named by its original label."""
        stratify = Y if self._is_classifier() and self.n_outputs_ == 1 else None
        arrays = (X, Y) if sample_weight is None else (X, Y, sample_weight)
        try:
            parts = train_test_split(*arrays, random_state=rs, test_size=self.validation_fraction,
                                     stratify=stratify)
        except ValueError as exc:
            if stratify is None or "least populated class" not in str(exc):
                raise
            labels, counts = np.unique(self._decode(Y), return_counts=True)
            raise ValueError(f"The least populated classes in y have only 1 member, which is too few. "
                             f"The minimum number of groups for any class cannot be less than 2. Classes "
                             f"with too few members are: {[str(c) for c in labels[counts < 2]]}") from None
        X_train, X_val, Y_train, Y_val = parts[:4]
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        sw_train, sw_val = parts[4:6] if sample_weight is not None else (None, None)
        return np.ascontiguousarray(X_train), np.ascontiguousarray(Y_train), np.ascontiguousarray(X_val), \
            self._decode(Y_val), sw_train, sw_val

    def _fit_stochastic(self, net, X, Y, rs, incremental, sample_weight=None):
        early_stopping = self.early_stopping
        if not hasattr(self, "loss_curve_") or \
                (early_stopping and getattr(self, "validation_scores_", None) is None):
            # warm start from an lbfgs fit, or early stopping switched on for a warm start
            # (sklearn raises AttributeError / TypeError in these cases)
            self._init_stochastic_records()
        if early_stopping:
            X_train, Y_train, X_val, y_val, sw_train, sw_val = self._split(X, Y, sample_weight, rs)
        else:
            X_train, Y_train, X_val, y_val, sw_train, sw_val = X, Y, None, None, sample_weight, None
        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                              "to be clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        new_optimizer = not incremental or not hasattr(self, "_learning_rate")
        if new_optimizer:
            self._learning_rate = float(self.learning_rate_init)
        scale = self._loss_scale()
        stopped = []

        def end_of_epoch(net_, epoch, history):
            self.n_iter_ += 1
            self.loss_ = scale * history.loss[-1]
            self.t_ += n_samples
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
            self._update_no_improvement_count(net_, X_val, y_val, sw_val)
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                self._learning_rate = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if early_stopping else "Training loss"
                msg = (f"{what} did not improve more than tol={self.tol:f} for "
                       f"{self.n_iter_no_change} consecutive epochs.")
                if self.solver == "sgd" and self.learning_rate == "adaptive" and \
                        self._learning_rate > _MIN_ADAPTIVE_LR:
                    self._learning_rate /= 5.0
                    self._no_improvement_count = 0
                    if self.verbose:
                        print(msg + " Setting learning rate to %f" % self._learning_rate)
                else:
                    if self.verbose:
                        print(msg + " Stopping.")
                    stopped.append(True)
                    return True
            return False

        self.n_iter_ = 0
        epochs = 1 if incremental else self.max_iter
        with warnings.catch_warnings():  # divergence is reported as scikit-learn does, below
            warnings.filterwarnings("ignore", message="training diverged", category=RuntimeWarning)
            warnings.filterwarnings("ignore", message="warm_start with a different optimizer",
                                    category=RuntimeWarning)  # a changed hyper-parameter: sklearn is silent
            history = net.fit(X_train, Y_train, loss=_LOSS[self.out_activation_],
                              optimizer=self._make_optimizer(), epochs=epochs, batch_size=batch_size,
                              shuffle=bool(self.shuffle), l2=self.alpha / (scale * batch_size),
                              sample_weight=sw_train,
                              schedule=_LiveRate(self, self._lr_scale()),
                              seed=int(rs.randint(np.iinfo(np.int32).max)), callbacks=[end_of_epoch],
                              verbose=0, warm_start=not new_optimizer, gradient_warnings=False,
                              device=self.device)
        if history.stopped_early and not stopped and history.epochs < epochs:
            # fastbp rolled the diverging epoch back; scikit-learn records it and raises
            self.n_iter_ += 1
            self.t_ += n_samples
            self.loss_ = float("nan")
            self.loss_curve_.append(self.loss_)
            raise ValueError("Solver produced non-finite parameter weights. The input data may"
                             " contain large values and need to be preprocessed.")
        if not incremental and not stopped and self.n_iter_ == self.max_iter:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                          "optimization hasn't converged yet." % self.max_iter, ConvergenceWarning,
                          stacklevel=3)
        if early_stopping:
            net.theta[...] = self._best_theta

    def _update_no_improvement_count(self, net, X_val, y_val, sw_val=None):
        if self.early_stopping:
            score = self._score_output(net.forward(X_val), y_val, sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_theta = net.theta.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _fit_lbfgs(self, net, X, Y, sample_weight=None):
        """Full-batch L-BFGS-B over the flat parameter vector, in float64."""
        net64 = net if net.dtype == np.float64 else net.copy(dtype="float64")
        X64 = np.ascontiguousarray(X, dtype=np.float64)
        Y64 = np.ascontiguousarray(Y, dtype=np.float64)
        scale = self._loss_scale()
        l2 = self.alpha / (scale * X.shape[0])
        loss = _LOSS[self.out_activation_]

        def value_and_grad(theta):
            net64.theta[...] = theta
            value, grad = net64.flat_gradient(X64, Y64, loss=loss, l2=l2, sample_weight=sample_weight,
                                              device=self.device)
            return scale * value, scale * grad

        result = scipy.optimize.minimize(
            value_and_grad, net64.theta.astype(np.float64), method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        if result.status != 0:
            message = result.message.decode("latin1") if isinstance(result.message, bytes) \
                else result.message
            warnings.warn(f"lbfgs failed to converge after {result.nit} iteration(s) "
                          f"(status={result.status}):\n{message}\n\nIncrease the number of "
                          f"iterations to improve the convergence (max_iter={self.max_iter}).",
                          ConvergenceWarning, stacklevel=3)
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)
        net.theta[...] = result.x

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y; returns self.
        ``sample_weight``: one weight >= 0 per sample (see the module docstring)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    # --- prediction -----------------------------------------------------------------------

    def _forward(self, X):
        check_is_fitted(self)
        net = self._synced_net()
        return net.forward(self._validate_X(X, reset=False, dtype=net.dtype))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by fastbp's compiled kernels.

    A drop-in for ``sklearn.neural_network.MLPClassifier``: same parameters,
    defaults and fitted attributes (see the module docstring for how the training
    semantics map and the few deviations), plus ``device``, ``dropout``,
    ``batchnorm`` (passed to ``fastbp.MLP``) and ``dtype``.
    Multiclass targets train a softmax output, binary targets one logistic unit and
    label-indicator matrices one logistic unit per label (multi-label).
    """

    def _is_classifier(self):
        return True

    def _output_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as "
                                     f"in the previous call to fit. Previously got {self.classes_}, "
                                     f"`y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def _decode(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    def _score_output(self, out, y, sample_weight=None):
        if not np.isfinite(out).all():
            return np.nan
        return accuracy_score(y, self._decode(out.ravel() if self.n_outputs_ == 1 else out),
                              sample_weight=sample_weight)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), continuing from the current state. ``classes``
        (all labels that will ever be seen) is required on the first call."""
        self._check_params()
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Class labels (label-indicator rows for multi-label)."""
        out = self._forward(X)
        return self._decode(out.ravel() if self.n_outputs_ == 1 else out)

    def predict_proba(self, X):
        """Class probabilities, columns ordered as ``classes_``; (n, 2) for binary."""
        out = self._forward(X)
        if self.n_outputs_ == 1:
            p = out.ravel()
            return np.vstack([1 - p, p]).T
        return out

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        proba = self.predict_proba(X)
        return np.log(proba, out=proba)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by fastbp's compiled kernels.

    A drop-in for ``sklearn.neural_network.MLPRegressor`` (squared error, one or
    several outputs); see :class:`MLPClassifier` and the module docstring.
    ``loss="poisson"``: exp output and half Poisson deviance, as scikit-learn's.
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="cpu", dropout=None, batchnorm=False, dtype=None):
        params = dict(locals())
        for name in ("self", "__class__", "loss"):
            params.pop(name, None)
        super().__init__(**params)
        self.loss = loss

    def _check_params(self):
        _check_option("loss", self.loss, {"squared_error", "poisson"})
        super()._check_params()

    def _is_classifier(self):
        return False

    def _output_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _loss_scale(self):
        """squared error: n_outputs / 2 (see the module docstring); poisson: 1, fastbp's
        loss is scikit-learn's half Poisson deviance summed over the outputs."""
        return 1.0 if self.out_activation_ == "exp" else self.n_outputs_ / 2.0

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError("loss='poisson' requires y >= 0.")
        return X, y

    def _decode(self, Y):
        return Y.ravel() if Y.ndim == 2 and Y.shape[1] == 1 else Y

    def _score_output(self, out, y, sample_weight=None):
        if not np.isfinite(out).all():
            return np.nan
        return r2_score(y, self._decode(out), sample_weight=sample_weight)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current state."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Predicted values, (n,) for one output, else (n, n_outputs)."""
        return self._decode(self._forward(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
