"""Issue 11: scikit-learn 1.9 parity of fastbp.sklearn (sample_weight, divergence,
hand-set fitted attributes, early-stopping messages, no GradientWarning), with
scikit-learn's own estimators as the oracle."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn import neural_network as sk
from sklearn.datasets import make_classification, make_regression

import fastbp
from fastbp.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def blobs():
    return make_classification(120, 6, n_informative=4, n_classes=3, random_state=0)


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(120, 5, noise=1.0, random_state=0)
    return X, y / 100.0


def assert_same_params(ours, theirs, rtol=1e-6, atol=1e-9):
    for a, b in zip([*ours.coefs_, *ours.intercepts_], [*theirs.coefs_, *theirs.intercepts_]):
        assert_allclose(a, b, rtol=rtol, atol=atol)


PUBLIC = ("coefs_", "intercepts_", "n_layers_", "n_outputs_", "out_activation_", "n_iter_", "t_",
          "loss_", "loss_curve_", "best_loss_", "n_features_in_", "classes_")


# --- sample_weight ---------------------------------------------------------------------


@pytest.mark.parametrize("Estimator,solver", [(MLPRegressor, "sgd"), (MLPClassifier, "sgd"),
                                              (MLPRegressor, "lbfgs")])
def test_equal_sample_weights_follow_sklearn(blobs, regression, Estimator, solver):
    X, y = regression if Estimator is MLPRegressor else blobs
    kw = dict(hidden_layer_sizes=(7,), solver=solver, shuffle=False, random_state=0, max_iter=8,
              alpha=0.01, learning_rate_init=0.05, batch_size=40)  # no partial batch
    weights = np.full(len(y), 3.0)
    ours = Estimator(**kw).fit(X, y, sample_weight=weights)
    theirs = getattr(sk, Estimator.__name__)(**kw).fit(X, y, sample_weight=weights)
    assert ours.n_iter_ == theirs.n_iter_
    assert_same_params(ours, theirs)
    unweighted = Estimator(**kw).fit(X, y)
    assert not np.allclose(unweighted.coefs_[0], ours.coefs_[0])  # alpha acts as alpha / 3


def test_sample_weight_in_partial_fit_and_early_stopping_split(regression):
    X, y = regression
    kw = dict(hidden_layer_sizes=(6,), solver="sgd", shuffle=False, random_state=0, alpha=0.1,
              learning_rate_init=0.05)
    weights = np.full(len(y), 0.5)
    ours = MLPRegressor(**kw).partial_fit(X, y, sample_weight=weights)
    theirs = sk.MLPRegressor(**kw).partial_fit(X, y, sample_weight=weights)
    assert_same_params(ours, theirs)
    kw.update(early_stopping=True, max_iter=6, validation_fraction=0.25)
    ours = MLPRegressor(**kw).fit(X, y, sample_weight=weights)
    theirs = sk.MLPRegressor(**kw).fit(X, y, sample_weight=weights)
    assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-6)
    assert_same_params(ours, theirs)


def unequal_weights(n, seed=0):
    w = np.random.default_rng(seed).uniform(0.0, 3.0, n)
    w[::17] = 0.0
    return w


@pytest.mark.parametrize("Estimator,solver,batch_size", [(MLPRegressor, "sgd", 40), (MLPClassifier, "sgd", 40),
                                                         (MLPClassifier, "sgd", 1), (MLPRegressor, "lbfgs", 40)])
def test_unequal_sample_weights_follow_sklearn(blobs, regression, Estimator, solver, batch_size):
    """sklearn's own MLP with the same weights is the oracle: same init, same batches."""
    X, y = regression if Estimator is MLPRegressor else blobs
    n = 40 if batch_size == 1 else len(y)
    X, y = X[:n], y[:n]
    kw = dict(hidden_layer_sizes=(7,), solver=solver, shuffle=False, random_state=0, max_iter=4,
              alpha=0.01, learning_rate_init=0.05 if batch_size > 1 else 0.005, batch_size=batch_size)
    weights = unequal_weights(n) + (batch_size == 1)  # sklearn divides by zero on a batch of weight 0
    ours = Estimator(**kw).fit(X, y, sample_weight=weights)
    theirs = getattr(sk, Estimator.__name__)(**kw).fit(X, y, sample_weight=weights)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-6)
    if solver == "sgd":
        assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-6)
    assert_same_params(ours, theirs)
    unweighted = Estimator(**kw).fit(X, y)
    assert not np.allclose(unweighted.coefs_[0], ours.coefs_[0], rtol=1e-3)


def test_unequal_sample_weights_in_partial_fit_and_early_stopping(regression):
    X, y = regression
    weights = unequal_weights(len(y), seed=1)
    kw = dict(hidden_layer_sizes=(6,), solver="sgd", shuffle=False, random_state=0, alpha=0.1,
              learning_rate_init=0.05, batch_size=20)
    ours, theirs = MLPRegressor(**kw), sk.MLPRegressor(**kw)
    for _ in range(2):
        ours.partial_fit(X, y, sample_weight=weights)
        theirs.partial_fit(X, y, sample_weight=weights)
    assert_same_params(ours, theirs)
    kw.update(early_stopping=True, max_iter=4, validation_fraction=0.25, batch_size=30)
    ours = MLPRegressor(**kw).fit(X, y, sample_weight=weights)
    theirs = sk.MLPRegressor(**kw).fit(X, y, sample_weight=weights)
    assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-6)
    assert_same_params(ours, theirs)


def test_zero_weight_batch_is_skipped_where_sklearn_divides_by_zero(regression):
    """A mini-batch of total weight 0: sklearn raises ZeroDivisionError; fastbp skips it,
    which is sklearn's training on the other rows (constant rate, same batches)."""
    X, y = regression
    weights = unequal_weights(len(y), seed=2) + 0.5
    weights[40:80] = 0.0
    kw = dict(hidden_layer_sizes=(5,), solver="sgd", shuffle=False, random_state=0, alpha=0.01,
              learning_rate_init=0.05, batch_size=40, max_iter=3)
    with pytest.raises(ZeroDivisionError):
        sk.MLPRegressor(**kw).fit(X, y, sample_weight=weights)
    ours = MLPRegressor(**kw).fit(X, y, sample_weight=weights)
    keep = weights > 0
    theirs = sk.MLPRegressor(**kw).fit(X[keep], y[keep], sample_weight=weights[keep])
    assert_same_params(ours, theirs)


@pytest.mark.parametrize("weights,match", [(np.r_[np.ones(119), -1.0], "Negative"), (np.zeros(120), "zero")])
def test_bad_sample_weights_are_refused_before_training(regression, weights, match):
    X, y = regression
    reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, y)
    before = [c.copy() for c in reg.coefs_]
    with pytest.raises(ValueError, match=match):
        reg.set_params(warm_start=True).fit(X, y, sample_weight=weights)
    for a, b in zip(reg.coefs_, before):
        assert_allclose(a, b, rtol=0, atol=0)


# --- divergence ---------------------------------------------------------------------------


def test_divergence_raises_like_sklearn_with_records_defined():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)) * 1000
    y = X.sum(axis=1) * 1000
    kw = dict(solver="sgd", learning_rate_init=1.0, max_iter=5, random_state=0)
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="non-finite parameter weights"):
        sk.MLPRegressor(**kw).fit(X, y)
    reg = MLPRegressor(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fastbp roll-back warning either
        with pytest.raises(ValueError, match="non-finite parameter weights"):
            reg.fit(X, y)
    assert reg.n_iter_ == len(reg.loss_curve_) >= 1
    assert np.isnan(reg.loss_) and np.isnan(reg.loss_curve_[-1])
    assert all(np.isfinite(c).all() for c in reg.coefs_)  # the last finite parameters are kept


# --- fitted attributes set by hand -----------------------------------------------------------


@pytest.mark.parametrize("Estimator", [MLPRegressor, MLPClassifier])
def test_partial_fit_continues_from_hand_set_attributes(blobs, regression, Estimator):
    X, y = regression if Estimator is MLPRegressor else blobs
    kw = dict(hidden_layer_sizes=(5,), solver="sgd", shuffle=False, random_state=0, learning_rate_init=0.05)
    Sk = getattr(sk, Estimator.__name__)
    source = Sk(max_iter=3, **kw).fit(X, y)
    ours, theirs = Estimator(**kw), Sk(**kw)
    for est in (ours, theirs):
        for name in PUBLIC:
            if hasattr(source, name):
                value = getattr(source, name)
                setattr(est, name, [v.copy() for v in value] if name in ("coefs_", "intercepts_") else value)
    if Estimator is MLPClassifier:  # scikit-learn needs its private label binarizer too; fastbp not
        theirs._label_binarizer = source._label_binarizer
    ours.partial_fit(X, y)
    theirs.partial_fit(X, y)
    assert_same_params(ours, theirs)
    assert_allclose(ours.predict(X) if Estimator is MLPRegressor else ours.predict_proba(X),
                    theirs.predict(X) if Estimator is MLPRegressor else theirs.predict_proba(X), rtol=1e-6)


# --- early-stopping split messages ----------------------------------------------------------


@pytest.mark.parametrize("y,named", [(np.array(["a"] * 29 + ["b"]), "['b']"),
                                     (np.array([True] * 29 + [False]), "['False']")])
def test_too_small_class_is_named_by_its_label(y, named):
    X = np.random.default_rng(0).normal(size=(30, 3))
    with pytest.raises(ValueError, match="least populated") as info:
        MLPClassifier(early_stopping=True, max_iter=2).fit(X, y)
    assert named in str(info.value)


# --- quiet estimators ----------------------------------------------------------------------


def test_estimators_emit_no_gradient_warning():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)) * 1000
    y = X.sum(axis=1) * 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastbp.GradientWarning)
        MLPRegressor(solver="sgd", learning_rate_init=1e-12, max_iter=2, random_state=0).fit(X, y)
        MLPClassifier((3, 3, 3, 3, 3), activation="logistic", solver="sgd", learning_rate_init=1e-9,
                      max_iter=2, random_state=0).fit(X / 1e6, (y > 0).astype(int))


def test_changed_hyper_parameters_between_partial_fits_are_silent(blobs):
    X, y = blobs
    clf = MLPClassifier((4,), solver="sgd", random_state=0).partial_fit(X, y, classes=np.unique(y))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        clf.set_params(learning_rate_init=0.1).partial_fit(X, y)


def test_momentum_one_is_accepted_as_in_sklearn(blobs):
    X, y = blobs
    kw = dict(hidden_layer_sizes=(5,), solver="sgd", momentum=1.0, shuffle=False, random_state=0,
              learning_rate_init=0.01, max_iter=3)
    assert_same_params(MLPClassifier(**kw).fit(X, y), sk.MLPClassifier(**kw).fit(X, y))


def test_an_unknown_device_is_named(blobs):
    """device="cuda" trains on the GPU (tests/cuda/test_cuda_sklearn.py; without one,
    tests/cuda/test_cuda_unavailable.py); anything else is refused, naming the choices."""
    X, y = blobs
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'gpu'"):
        MLPClassifier(device="gpu").fit(X, y)


# --- pickling between partial fits ---------------------------------------------------------


def test_partial_fit_after_pickle_round_trip_equals_straight_run(blobs):
    """A pickle round trip keeps the epoch count (it seeds the shuffle) and lr_scale."""
    import pickle
    X, y = blobs
    kw = dict(hidden_layer_sizes=(5,), random_state=0, batch_size=16, solver="adam")
    straight, shipped = MLPClassifier(**kw), MLPClassifier(**kw)
    for estimator in (straight, shipped):
        estimator.partial_fit(X, y, classes=np.arange(3))
    shipped._net.fit_state.lr_scale = straight._net.fit_state.lr_scale = 0.5
    shipped = pickle.loads(pickle.dumps(shipped))
    assert shipped._net.fit_state.epochs_done == 1 and shipped._net.fit_state.lr_scale == 0.5
    straight.partial_fit(X, y)
    shipped.partial_fit(X, y)
    for a, b in zip([*straight.coefs_, *straight.intercepts_], [*shipped.coefs_, *shipped.intercepts_]):
        np.testing.assert_array_equal(a, b)


# --- poisson ---------------------------------------------------------------------------------


@pytest.mark.parametrize("solver,alpha,batch_size", [("sgd", 0.0, 20), ("sgd", 0.01, 15), ("lbfgs", 0.01, 20)])
def test_poisson_regressor_follows_sklearn_to_rounding(solver, alpha, batch_size):
    """Same initial weights, same steps: 45 rows in batches of 20 end in a partial batch."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(45, 4))
    y = rng.poisson(np.exp(0.5 * X[:, 0]))  # counts, zeros included
    kw = dict(loss="poisson", hidden_layer_sizes=(6,), solver=solver, shuffle=False, random_state=0,
              alpha=alpha, learning_rate_init=0.01, max_iter=6, batch_size=batch_size)
    ours = MLPRegressor(**kw).fit(X, y)
    theirs = sk.MLPRegressor(**kw).fit(X, y)
    assert ours.out_activation_ == theirs.out_activation_ == "exp"
    assert ours.n_iter_ == theirs.n_iter_
    assert_allclose(ours.loss_, theirs.loss_, rtol=1e-12)
    if solver == "sgd":
        assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    assert_same_params(ours, theirs, rtol=1e-10, atol=1e-13)
    assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-10)
