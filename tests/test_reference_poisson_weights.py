"""Issue 11: the reference's Poisson loss (exp output) and sample weights, checked
against the math (central differences, repeat counts) and scikit-learn's metrics.
The CPU kernels have the Poisson loss (tests/test_poisson.py); sample weights are
the reference's only."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.metrics import mean_poisson_deviance

from fastbp import reference, spec
from fastbp.init import init_weights

SIZES = [4, 6, 2]


def network(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    weights = [init_weights(a, b, "xavier_uniform", rng) * 0.5 for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(scale=0.1, size=b) for b in sizes[1:]]
    return weights, biases


def counts(n, k, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZES[0])), rng.poisson(2.0, size=(n, k)).astype(np.float64)


def test_poisson_loss_is_half_the_poisson_deviance():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(17, 1))
    y = rng.poisson(1.5, size=(17, 1)).astype(np.float64)  # zeros included
    losses = reference.sample_losses(z, np.exp(z), y, "poisson", "exp")
    assert losses.mean() == pytest.approx(mean_poisson_deviance(y[:, 0], np.exp(z[:, 0])) / 2, rel=1e-12)
    assert reference.sample_losses(np.log(y + 1), y + 1, y + 1, "poisson", "exp") == pytest.approx(0, abs=1e-12)


def test_poisson_output_delta_is_the_derivative_of_the_loss():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(5, 3))
    y = rng.poisson(2.0, size=(5, 3)).astype(np.float64)
    delta = reference.output_delta(z, np.exp(z), y, "poisson", "exp")
    h = 1e-6
    numeric = np.zeros_like(z)
    for i, j in np.ndindex(*z.shape):
        up, down = z.copy(), z.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric[i, j] = (reference.sample_losses(up, np.exp(up), y, "poisson", "exp")[i]
                         - reference.sample_losses(down, np.exp(down), y, "poisson", "exp")[i]) / (2 * h)
    assert_allclose(delta, numeric, rtol=1e-7, atol=1e-9)


def test_poisson_pairs_only_with_exp():
    assert spec.resolve_loss("poisson", "exp") == spec.POISSON
    for output in ("identity", "sigmoid", "softmax"):
        with pytest.raises(ValueError, match="poisson"):
            spec.resolve_loss("poisson", output)
    with pytest.raises(ValueError, match="exp"):
        spec.resolve_loss("mse", "exp")


def flat_objective(weights, biases, X, Y, loss, outputs, **kwargs):
    return reference.gradients(weights, biases, ["tanh", outputs], X, Y, loss, **kwargs)[0]


@pytest.mark.parametrize("loss,output", [("poisson", "exp"), ("mse", "identity"),
                                         ("cross_entropy", "softmax")])
def test_weighted_gradients_match_central_differences(loss, output):
    weights, biases = network()
    X, Y = counts(9, 2)
    if output == "softmax":
        Y = np.eye(2)[np.arange(9) % 2]
    w = np.random.default_rng(3).uniform(0.2, 3.0, size=9)
    kwargs = dict(l1=1e-3, l2=1e-2, sample_weight=w)
    _, dWs, dbs = reference.gradients(weights, biases, ["tanh", output], X, Y, loss, **kwargs)
    h = 1e-6
    for params, grads in ((weights, dWs), (biases, dbs)):
        for p, g in zip(params, grads):
            for idx in np.ndindex(*p.shape):
                old = p[idx]
                p[idx] = old + h
                up = flat_objective(weights, biases, X, Y, loss, output, **kwargs)
                p[idx] = old - h
                down = flat_objective(weights, biases, X, Y, loss, output, **kwargs)
                p[idx] = old
                assert g[idx] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


def test_integer_sample_weights_are_repeat_counts():
    """Row i repeated w_i times, with the penalty per row kept: B·penalty over Σw rows,
    i.e. l1, l2 scaled by B / Σw (scikit-learn's α / Σw)."""
    weights, biases = network()
    X, Y = counts(7, 2)
    w = np.array([1, 3, 2, 1, 4, 1, 2])
    weighted = reference.gradients(weights, biases, ["relu", "exp"], X, Y, "poisson", l1=1e-3, l2=0.1,
                                   sample_weight=w.astype(float))
    per_row = 7 / w.sum()
    repeated = reference.gradients(weights, biases, ["relu", "exp"], np.repeat(X, w, axis=0),
                                   np.repeat(Y, w, axis=0), "poisson", l1=1e-3 * per_row, l2=0.1 * per_row)
    assert weighted[0] == pytest.approx(repeated[0], rel=1e-12)
    for a, b in zip([*weighted[1], *weighted[2]], [*repeated[1], *repeated[2]]):
        assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_unit_sample_weights_change_nothing():
    weights, biases = network()
    X, Y = counts(5, 2)
    a = reference.gradients(weights, biases, ["tanh", "identity"], X, Y, "mse", l2=0.3)
    b = reference.gradients(weights, biases, ["tanh", "identity"], X, Y, "mse", l2=0.3, sample_weight=np.ones(5))
    assert a[0] == pytest.approx(b[0], rel=1e-14)
    for x, y in zip([*a[1], *a[2]], [*b[1], *b[2]]):
        assert_allclose(x, y, rtol=1e-14)


# --- the estimator ---------------------------------------------------------------------------


def test_poisson_regressor_follows_sklearn():
    from sklearn import neural_network as sk

    from fastbp.sklearn import MLPRegressor
    X, Y = counts(80, 1)
    kw = dict(loss="poisson", hidden_layer_sizes=(6,), solver="sgd", shuffle=False, random_state=0,
              learning_rate_init=0.01, max_iter=5, batch_size=20)
    ours = MLPRegressor(**kw).fit(X, Y[:, 0])
    theirs = sk.MLPRegressor(**kw).fit(X, Y[:, 0])
    assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-6)
    for a, b in zip([*ours.coefs_, *ours.intercepts_], [*theirs.coefs_, *theirs.intercepts_]):
        assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_poisson_regressor_refuses_negative_targets():
    from fastbp.sklearn import MLPRegressor
    X, Y = counts(20, 1)
    MLPRegressor(loss="poisson", max_iter=2).fit(X, Y[:, 0])
    with pytest.raises(ValueError, match="y >= 0"):
        MLPRegressor(loss="poisson", max_iter=2).fit(X, -Y[:, 0] - 1)


def test_weighted_epoch_equals_its_batches():
    """reference.train_epoch with weights takes each batch's step from gradients(sample_weight=...)."""
    weights, biases = network()
    X, Y = counts(10, 2)
    w = np.random.default_rng(5).uniform(0.5, 2.0, size=10)
    perm = np.random.default_rng(6).permutation(10)
    trained = ([W.copy() for W in weights], [b.copy() for b in biases])
    state = reference.new_optimizer_state([*trained[0], *trained[1]])
    mean_loss, _ = reference.train_epoch(*trained, ["tanh", "exp"], X, Y, perm, 4, "poisson", "sgd", state,
                                         0.05, l2=0.1, sample_weight=w)
    stepped = ([W.copy() for W in weights], [b.copy() for b in biases])
    total = 0.0
    for start in range(0, 10, 4):
        idx = perm[start:start + 4]
        value, dWs, dbs = reference.gradients(*stepped, ["tanh", "exp"], X[idx], Y[idx], "poisson", l2=0.1,
                                              sample_weight=w[idx])
        total += len(idx) * value  # scikit-learn's loss_curve_: batch objectives by batch size
        for p, g in zip([*stepped[0], *stepped[1]], [*dWs, *dbs]):
            p -= 0.05 * g
    assert mean_loss == pytest.approx(total / 10, rel=1e-12)
    for a, b in zip([*trained[0], *trained[1]], [*stepped[0], *stepped[1]]):
        assert_allclose(a, b, rtol=1e-12, atol=1e-15)
