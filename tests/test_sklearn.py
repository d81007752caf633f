"""fastbp.sklearn: scikit-learn's estimator checks, and agreement with scikit-learn's
own MLPClassifier / MLPRegressor, which serve as the oracle.

Both libraries draw the initial weights the same way from ``random_state``, so
with ``shuffle=False`` (fastbp shuffles with its own generator) they follow the
same trajectory: SGD (plain, momentum, invscaling, adaptive) and L-BFGS agree to
rounding (rtol 1e-6 here, measured ~1e-15); Adam to 1e-5 absolute on data whose
gradients are well above Adam's epsilon (the two place epsilon differently, see
the module docstring). With shuffling on, only held-out scores are compared.
"""

import pickle
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import neural_network as sk
from sklearn.base import clone
from sklearn.datasets import load_digits, make_classification, make_multilabel_classification, \
    make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastbp.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _expected_failed_checks(estimator):
    """invscaling's rate follows the rows seen (``t_``), so repeating rows changes the
    schedule: scikit-learn's own MLPRegressor fails these two checks the same way (same numbers)."""
    if getattr(estimator, "learning_rate", None) != "invscaling":
        return {}
    reason = "invscaling counts rows seen; scikit-learn's own MLP fails this check identically"
    return {name: reason for name in ("check_sample_weight_equivalence_on_dense_data",
                                      "check_sample_weight_equivalence_on_sparse_data")}


@parametrize_with_checks([
    MLPClassifier(max_iter=100, random_state=0),
    MLPRegressor(max_iter=100, random_state=0),
    MLPClassifier(solver="lbfgs", max_iter=100, random_state=0),
    MLPRegressor(solver="lbfgs", max_iter=100, random_state=0),
    MLPClassifier(solver="sgd", learning_rate="adaptive", max_iter=100, random_state=0),
    MLPRegressor(solver="sgd", learning_rate="invscaling", learning_rate_init=0.01, max_iter=100,
                 random_state=0),
], expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# --- data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def blobs():
    return make_classification(300, 10, n_informative=6, n_classes=3, random_state=0)


@pytest.fixture(scope="module")
def regression():
    X, Y = make_regression(300, 8, n_targets=3, noise=1.0, random_state=0)
    return X, Y / 100.0


def params_of(est):
    return [*est.coefs_, *est.intercepts_]


def assert_same_fit(ours, theirs, rtol=1e-6, atol=1e-9):
    assert ours.n_iter_ == theirs.n_iter_
    assert len(ours.coefs_) == len(theirs.coefs_)
    for a, b in zip(params_of(ours), params_of(theirs)):
        assert a.shape == b.shape
        assert_allclose(a, b, rtol=rtol, atol=atol)


# --- agreement with scikit-learn ---------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(solver="sgd", learning_rate_init=0.05, nesterovs_momentum=True),
    dict(solver="sgd", learning_rate_init=0.05, nesterovs_momentum=False),
    dict(solver="sgd", learning_rate_init=0.1, momentum=0.0),
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, power_t=0.3),
    dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05, tol=1e-2,
         n_iter_no_change=2, max_iter=40),
    dict(solver="lbfgs", max_iter=30),
    dict(solver="sgd", activation="logistic", learning_rate_init=0.2),  # Glorot factor 2
    dict(solver="lbfgs", activation="tanh", hidden_layer_sizes=(16, 8), max_iter=20),
    dict(solver="sgd", activation="identity", hidden_layer_sizes=(), learning_rate_init=0.05),
])
def test_classifier_follows_sklearn_trajectory(digits, kw):
    """Same init, same batches (shuffle=False), same hyper-parameters: the weights,
    loss curve and stopping epoch match sklearn's to rounding. alpha is on; the
    batch size divides n (a partial last batch gets a slightly different penalty,
    see test_partial_last_batch_penalty_deviation_is_small)."""
    X, _, y, _ = digits
    X, y = X[:600], y[:600]
    kw = dict(kw)
    base = dict(hidden_layer_sizes=kw.pop("hidden_layer_sizes", (32,)), alpha=1e-3, random_state=1,
                shuffle=False, batch_size=100, max_iter=kw.pop("max_iter", 5))
    ours = MLPClassifier(**base, **kw).fit(X, y)
    theirs = sk.MLPClassifier(**base, **kw).fit(X, y)
    assert_same_fit(ours, theirs)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    if kw["solver"] != "lbfgs":
        assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
        assert ours.t_ == theirs.t_
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-9)


def test_adaptive_learning_rate_stops_like_sklearn(blobs):
    """tol so large that every epoch counts as no improvement: the rate is divided by
    5 until it drops below 1e-6, then training stops -- at sklearn's epoch."""
    X, y = blobs
    kw = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive", tol=10.0,
              n_iter_no_change=1, shuffle=False, random_state=0, max_iter=200)
    ours = MLPClassifier(**kw).fit(X, y)
    theirs = sk.MLPClassifier(**kw).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ < 200
    assert_same_fit(ours, theirs)


def test_adam_follows_sklearn_trajectory(blobs):
    X, y = blobs
    X = StandardScaler().fit_transform(X)
    kw = dict(hidden_layer_sizes=(16,), random_state=3, shuffle=False, batch_size=64, max_iter=8)
    ours = MLPClassifier(**kw).fit(X, y)
    theirs = sk.MLPClassifier(**kw).fit(X, y)
    assert_same_fit(ours, theirs, rtol=0, atol=1e-5)
    assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-5)


@pytest.mark.parametrize("n_targets", [1, 3])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_regressor_follows_sklearn_trajectory(regression, n_targets, solver):
    """Checks the loss-scale mapping: sklearn's regression gradient is n_outputs/2
    times fastbp's mse gradient, compensated in the SGD step (not Adam's)."""
    X, Y = regression
    y = Y[:, 0] if n_targets == 1 else Y
    kw = dict(hidden_layer_sizes=(16,), solver=solver, learning_rate_init=0.01, alpha=1e-2,
              random_state=2, shuffle=False, batch_size=50, max_iter=5)
    ours = MLPRegressor(**kw).fit(X, y)
    theirs = sk.MLPRegressor(**kw).fit(X, y)
    if solver == "sgd":
        assert_same_fit(ours, theirs)
    else:
        assert_same_fit(ours, theirs, rtol=0, atol=1e-5)
    if n_targets == 1:  # sklearn reports 0.5·mean over outputs, we 0.5·sum (same for one)
        assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-5)
    assert ours.predict(X).shape == y.shape


def test_partial_last_batch_penalty_deviation_is_small(regression):
    """300 rows in batches of 64: the last batch of 44 gets l2 = alpha/64 here and
    alpha/44 in sklearn (documented deviation); the weights still agree to 1e-4."""
    X, Y = regression
    kw = dict(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.01, alpha=1e-2,
              random_state=2, shuffle=False, batch_size=64, max_iter=5)
    ours = MLPRegressor(**kw).fit(X, Y[:, 0])
    theirs = sk.MLPRegressor(**kw).fit(X, Y[:, 0])
    assert_same_fit(ours, theirs, rtol=0, atol=1e-4)
    with pytest.raises(AssertionError):
        assert_same_fit(ours, theirs, rtol=1e-9, atol=0)


def test_early_stopping_matches_sklearn_and_restores_best(digits):
    """Same (stratified as in sklearn) validation split, scores, stopping epoch and
    restored weights. alpha=0: the 1077 training rows leave a partial last batch."""
    X, _, y, _ = digits
    kw = dict(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=3, shuffle=False,
              random_state=0, max_iter=60, validation_fraction=0.2, solver="sgd", alpha=0.0,
              learning_rate_init=0.05)
    ours = MLPClassifier(**kw).fit(X, y)
    theirs = sk.MLPClassifier(**kw).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ < 60
    assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-12)
    assert ours.best_loss_ is None
    assert ours.best_validation_score_ == max(ours.validation_scores_)
    assert len(ours.validation_scores_) == len(ours.loss_curve_) == ours.n_iter_
    # the returned parameters are the best epoch's, not the last one's
    # the best epoch is not the last, and sklearn restores the best epoch's weights too
    assert np.argmax(ours.validation_scores_) < ours.n_iter_ - 1
    assert_same_fit(ours, theirs)


def test_early_stopping_with_string_labels(blobs):
    """Validation scoring with non-numeric labels (cf. scikit-learn issue #33760)."""
    X, y = blobs
    labels = np.array(["a", "b", "c"])[y]
    clf = MLPClassifier((8,), early_stopping=True, max_iter=20, random_state=0).fit(X, labels)
    assert len(clf.validation_scores_) == clf.n_iter_
    assert set(clf.predict(X)) <= set(labels)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_held_out_accuracy_comparable_to_sklearn(digits, solver):
    """With shuffling on (different generators) the runs are not identical: held-out
    accuracy on 450 digits must agree within 3 points (~13 samples)."""
    Xtr, Xte, ytr, yte = digits
    kw = dict(hidden_layer_sizes=(64,), solver=solver, random_state=0, max_iter=60,
              learning_rate_init=0.01 if solver == "sgd" else 0.001)
    ours = MLPClassifier(**kw).fit(Xtr, ytr).score(Xte, yte)
    theirs = sk.MLPClassifier(**kw).fit(Xtr, ytr).score(Xte, yte)
    assert ours > 0.9
    assert abs(ours - theirs) <= 0.03


def test_held_out_r2_comparable_to_sklearn(regression):
    X, Y = regression
    Xtr, Xte, ytr, yte = train_test_split(X, Y[:, 0], random_state=0)
    kw = dict(hidden_layer_sizes=(32,), random_state=0, max_iter=300, learning_rate_init=0.01)
    ours = MLPRegressor(**kw).fit(Xtr, ytr).score(Xte, yte)
    theirs = sk.MLPRegressor(**kw).fit(Xtr, ytr).score(Xte, yte)
    assert ours > 0.9
    assert abs(ours - theirs) <= 0.02


# --- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_float32_input_trains_in_float32(blobs, solver):
    X, y = blobs
    clf = MLPClassifier((8,), solver=solver, max_iter=200, learning_rate_init=0.01,
                        random_state=0).fit(X.astype(np.float32), y)
    assert all(p.dtype == np.float32 for p in params_of(clf))
    assert clf.predict_proba(X).dtype == np.float32
    assert clf.score(X, y) > 0.8  # sklearn, float64: 0.88 (adam)
    forced = MLPClassifier((8,), solver=solver, max_iter=5, random_state=0, dtype="float64")
    assert all(p.dtype == np.float64 for p in params_of(forced.fit(X.astype(np.float32), y)))
    default = MLPClassifier((8,), solver=solver, max_iter=5, random_state=0).fit(X, y)
    assert all(p.dtype == np.float64 for p in params_of(default))
    forced32 = MLPRegressor(hidden_layer_sizes=(8,), solver=solver, max_iter=5, random_state=0, dtype="float32")
    assert all(p.dtype == np.float32 for p in params_of(forced32.fit(X, y.astype(float))))


# --- partial_fit, warm_start -------------------------------------------------------------


def test_partial_fit_matches_sklearn_and_keeps_optimizer_state(blobs):
    X, y = blobs
    X = StandardScaler().fit_transform(X)
    kw = dict(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.05, shuffle=False,
              random_state=0, batch_size=50)
    ours, theirs = MLPClassifier(**kw), sk.MLPClassifier(**kw)
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier(**kw).partial_fit(X[:100], y[:100])
    for start in (0, 100, 200, 0):
        chunk = slice(start, start + 100)
        ours.partial_fit(X[chunk], y[chunk], classes=np.unique(y))
        theirs.partial_fit(X[chunk], y[chunk], classes=np.unique(y))
    assert_same_fit(ours, theirs)  # momentum carried across calls, as in sklearn
    assert ours.t_ == 400 and ours.n_iter_ == 1
    assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    reg = MLPRegressor(solver="sgd")
    assert hasattr(reg, "partial_fit")
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y.astype(float))


def test_warm_start_continues_from_fitted_weights(blobs):
    X, y = blobs
    kw = dict(hidden_layer_sizes=(16,), solver="sgd", shuffle=False, random_state=0,
              learning_rate_init=0.01, max_iter=3)
    a = MLPClassifier(warm_start=True, **kw).fit(X, y)
    a.fit(X, y)
    b = sk.MLPClassifier(warm_start=True, **kw).fit(X, y)
    b.fit(X, y)
    assert_same_fit(a, b)
    assert a.t_ == 6 * len(y)
    cold = MLPClassifier(**kw).fit(X, y).fit(X, y)
    assert cold.t_ == 3 * len(y)
    with pytest.raises(ValueError, match="same classes"):
        a.fit(X, np.where(y == 2, 5, y))


# --- multi-label, multi-output, binary ---------------------------------------------------


def test_multilabel_classification():
    X, Y = make_multilabel_classification(300, 10, n_classes=4, random_state=0)
    X = StandardScaler().fit_transform(X)
    kw = dict(hidden_layer_sizes=(16,), random_state=0, shuffle=False, batch_size=50, max_iter=5,
              learning_rate_init=0.01, solver="sgd")
    clf = MLPClassifier(**kw).fit(X, Y)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 4
    assert clf.predict(X).shape == Y.shape and set(np.unique(clf.predict(X))) <= {0, 1}
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape and ((proba >= 0) & (proba <= 1)).all()
    assert_array_equal(clf.predict(X), (proba > 0.5).astype(int))
    assert_same_fit(clf, sk.MLPClassifier(**kw).fit(X, Y))
    longer = MLPClassifier((32,), random_state=0, max_iter=200).fit(X, Y)
    assert longer.score(X, Y) > 0.5  # subset accuracy; chance is far lower


def test_multi_output_regression(regression):
    X, Y = regression
    reg = MLPRegressor(hidden_layer_sizes=(32,), random_state=0, max_iter=300, learning_rate_init=0.01).fit(X, Y)
    assert reg.n_outputs_ == 3 and reg.out_activation_ == "identity"
    assert reg.predict(X).shape == Y.shape
    assert reg.score(X, Y) > 0.9


def test_binary_classification_has_one_logistic_unit(blobs):
    X, y = blobs
    labels = np.where(y == 0, "cat", "dog")
    clf = MLPClassifier((8,), random_state=0, max_iter=200, learning_rate_init=0.01).fit(X, labels)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    assert clf.coefs_[-1].shape == (8, 1)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    assert_allclose(proba.sum(axis=1), 1)
    assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    assert_allclose(clf.predict_log_proba(X), np.log(proba))
    assert clf.score(X, labels) > 0.85  # sklearn: 0.92


# --- lbfgs ---------------------------------------------------------------------------------


def test_lbfgs_honours_max_iter_and_max_fun(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning):
        clf = MLPClassifier((16,), solver="lbfgs", max_iter=5, random_state=0).fit(X, y)
    assert clf.n_iter_ == 5
    with pytest.warns(ConvergenceWarning):
        few = MLPClassifier((16,), solver="lbfgs", max_fun=8, random_state=0).fit(X, y)
    assert few.n_iter_ < 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        done = MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", tol=1e-2, max_iter=1000,
                            random_state=0).fit(X, X[:, 0] + X[:, 1])
    assert done.n_iter_ < 1000
    assert done.score(X, X[:, 0] + X[:, 1]) > 0.99


def test_convergence_warning_when_max_iter_reached(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier((4,), max_iter=2, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = MLPClassifier((4,), max_iter=500, tol=0.5, random_state=0).fit(X, y)
    assert clf.n_iter_ == 12  # 1 epoch sets best_loss_, then n_iter_no_change + 1 without tol


# --- scikit-learn machinery ------------------------------------------------------------------


def test_pipeline_gridsearch_clone_pickle(blobs):
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=200, learning_rate_init=0.01,
                                                         random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1],
                               "mlpclassifier__hidden_layer_sizes": [(8,), (16,)]},
                        cv=2, n_jobs=2).fit(X, y)
    assert grid.best_score_ > 0.65  # sklearn's MLPClassifier: 0.71 for (16,), alpha=1e-4
    assert len(grid.cv_results_["mean_test_score"]) == 4
    best = grid.best_estimator_
    fresh = clone(best)
    assert not hasattr(fresh[-1], "coefs_")
    assert fresh.get_params()["mlpclassifier__alpha"] == best.get_params()["mlpclassifier__alpha"]
    restored = pickle.loads(pickle.dumps(best))
    assert_array_equal(restored.predict_proba(X), best.predict_proba(X))


def test_pickle_keeps_optimizer_state_for_partial_fit(regression):
    X, Y = regression
    reg = MLPRegressor(hidden_layer_sizes=(8,), random_state=0, shuffle=False).partial_fit(X, Y)
    copy = pickle.loads(pickle.dumps(reg))
    reg.partial_fit(X, Y)
    copy.partial_fit(X, Y)
    assert_same_fit(reg, copy, rtol=0, atol=0)  # Adam's moments survived the round trip
    assert copy.coefs_[0].base is not None  # exposed as views of the rebuilt network again


def test_assigned_coefs_are_used(blobs):
    X, y = blobs
    reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X, y.astype(float))
    reg.coefs_ = [np.zeros_like(c) for c in reg.coefs_]
    assert_allclose(reg.predict(X), reg.intercepts_[-1][0])


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("params, error", [
    (dict(hidden_layer_sizes=(0,)), ValueError),
    (dict(activation="softmax"), ValueError),
    (dict(solver="rmsprop"), ValueError),
    (dict(alpha=-1.0), ValueError),
    (dict(batch_size=0), ValueError),
    (dict(learning_rate_init=0.0), ValueError),
    (dict(max_iter=1.5), TypeError),
    (dict(momentum=1.5), ValueError),
    (dict(beta_2=1.0), ValueError),
    (dict(n_iter_no_change=0), ValueError),
    (dict(shuffle="yes"), TypeError),
    (dict(device="gpu"), ValueError),
    (dict(dtype="float16"), ValueError),
    (dict(dropout=1.0), ValueError),
    (dict(dropout=[0.1, -0.1]), ValueError),
    (dict(dropout="half"), ValueError),
    (dict(batchnorm="yes"), ValueError),
    (dict(solver="lbfgs", dropout=0.2), ValueError),
])
def test_invalid_parameters_fail_before_training(blobs, params, error):
    X, y = blobs
    fitted = MLPClassifier((4,), max_iter=3, random_state=0).fit(X, y)
    before = [p.copy() for p in params_of(fitted)]
    with pytest.raises(error):
        fitted.set_params(warm_start=True, **params).fit(X, y)
    for a, b in zip(params_of(fitted), before):
        assert_array_equal(a, b)
    with pytest.raises(error):
        MLPRegressor(**params).fit(X, y.astype(float))


def test_dropout_and_batchnorm_train_and_pickle(digits):
    """fastbp's own options: dropout is off at prediction (deterministic), batchnorm's
    γ and running statistics survive pickling (they are not in coefs_), and both
    models still learn digits."""
    Xtr, Xte, ytr, yte = digits
    dropped = MLPClassifier((64,), dropout=0.1, max_iter=30, random_state=0).fit(Xtr, ytr)
    assert dropped.score(Xte, yte) > 0.9
    assert_array_equal(dropped.predict_proba(Xte), dropped.predict_proba(Xte))
    plain = MLPClassifier((64,), max_iter=30, random_state=0).fit(Xtr, ytr)
    assert not np.allclose(dropped.coefs_[0], plain.coefs_[0])  # dropout changed training
    normed = MLPClassifier((64,), batchnorm=True, max_iter=30, random_state=0).fit(Xtr, ytr)
    assert normed.score(Xte, yte) > 0.9
    gammas = normed._net.theta[normed._net.bn_goff[0]:normed._net.bn_goff[0] + 64]
    assert not np.allclose(gammas, 1.0)  # γ trained away from its initial 1
    for est in (dropped, normed):
        copy = pickle.loads(pickle.dumps(est))
        assert_array_equal(copy.predict_proba(Xte), est.predict_proba(Xte))
    with pytest.raises(ValueError, match="dropout/batchnorm"):
        normed.set_params(warm_start=True, batchnorm=False).fit(Xtr, ytr)


def test_warm_start_may_switch_solver(blobs):
    X, y = blobs
    clf = MLPClassifier((8,), solver="lbfgs", max_iter=20, warm_start=True, random_state=0).fit(X, y)
    lbfgs_loss = clf.loss_
    clf.set_params(solver="adam", max_iter=5, early_stopping=True).fit(X, y)
    assert len(clf.loss_curve_) == len(clf.validation_scores_) == 5
    assert clf.loss_curve_[0] < 1.1 * lbfgs_loss  # continued from the lbfgs weights (fresh: 1.7)


def test_dropin_example_quick(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "sklearn_dropin.py"
    spec = importlib.util.spec_from_file_location("sklearn_dropin", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--quick"]) == 0
    assert "fastbp.sklearn MLPClassifier fit" in capsys.readouterr().out
    assert example.main(["--quick", "--margin", "-1"]) == 1  # the accuracy gate can fail
