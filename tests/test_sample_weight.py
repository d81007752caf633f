"""Per-sample weights in the compiled CPU training path (issue 11): kernels against
``reference.train_epoch(sample_weight=...)``, integer weights against repeated rows,
unit weights against no weights (bit for bit), zero-weight batches, input checks.
scikit-learn parity with weights is in tests/test_sklearn_parity.py."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fastbp
from fastbp import reference

from helpers import ReferenceTrainer, assert_close, make_data

# one optimizer per output/loss pair: every optimizer and every loss, few compiles
CASES = [(fastbp.SGD(0.05), "softmax", "cross_entropy"),
         (fastbp.Momentum(0.02, momentum=0.9), "sigmoid", "binary_cross_entropy"),
         (fastbp.Nesterov(0.02, momentum=0.8), "identity", "mse"),
         (fastbp.RMSprop(0.005, rho=0.9), "exp", "poisson"),
         (fastbp.Adam(0.005), "softmax", "mse")]
SIZES = [5, 7, 3]
N = 17


def weights_for(n, seed=0):
    """Unequal weights in [0, 3) with two exact zeros."""
    w = np.random.default_rng(seed).uniform(0.0, 3.0, n)
    w[[2, 11]] = 0.0
    return w


def network(output, dtype, seed=3):
    return fastbp.MLP(SIZES, activation="tanh", output=output, init="xavier", seed=seed, dtype=dtype)


@pytest.mark.parametrize("optimizer,output,loss", CASES, ids=lambda c: getattr(c, "name", None))
@pytest.mark.parametrize("batch_size", [5, 1], ids=["mini-partial", "sgd"])
def test_weighted_training_matches_reference(optimizer, output, loss, batch_size, dtype):
    net = network(output, dtype)
    X, Y = make_data(N, SIZES, output, dtype, seed=4)  # 17 = 3·5 + 2: a partial last batch
    w = weights_for(N)
    ref = ReferenceTrainer(net)
    ref_losses = [ref.epoch(X, Y, np.arange(N), batch_size, loss, optimizer, optimizer.lr, l2=0.05,
                            sample_weight=w)[0] for _ in range(3)]
    history = net.fit(X, Y, loss=loss, optimizer=optimizer, epochs=3, batch_size=batch_size, shuffle=False,
                      l2=0.05, sample_weight=w)
    assert_close(history.loss, ref_losses, dtype, "loss")
    assert_close(net.theta, ref.flat(), dtype, "parameters")


def test_weighted_evaluate_and_gradient_match_reference(dtype):
    net = network("softmax", dtype)
    X, Y = make_data(N, SIZES, "softmax", dtype, seed=5)
    w = weights_for(N, seed=1)
    value, dWs, dbs = reference.gradients(net.weights, net.biases, net.layer_activations, X, Y,
                                          "cross_entropy", l1=1e-3, l2=0.1, sample_weight=w)
    got, _ = net.flat_gradient(X, Y, "cross_entropy", l1=1e-3, l2=0.1, sample_weight=w)
    assert_close(got, value, dtype, "objective")
    for l, (dW, db) in enumerate(net.gradients(X, Y, "cross_entropy", l1=1e-3, l2=0.1, sample_weight=w)):
        assert_close(dW, dWs[l], dtype, f"dW{l}")
        assert_close(db, dbs[l], dtype, f"db{l}")
    zs, acts = reference.forward(net.weights, net.biases, net.layer_activations, X)
    losses = reference.sample_losses(zs[-1], acts[-1], Y, "cross_entropy", "softmax")
    result = net.evaluate(X, Y, loss="cross_entropy", sample_weight=w)
    assert_close(result["loss"], (w * losses).sum() / w.sum(), dtype, "evaluate")
    assert result["loss"] != pytest.approx(losses.mean(), rel=1e-3)  # the weights matter


@pytest.mark.parametrize("batch_size", [3, 5])
def test_unit_weights_equal_no_weights_bitwise(batch_size, dtype):
    X, Y = make_data(N, SIZES, "softmax", dtype, seed=6)
    plain, weighted = network("softmax", dtype), network("softmax", dtype)
    kw = dict(optimizer=fastbp.Adam(0.01), epochs=3, batch_size=batch_size, l1=1e-3, l2=0.1, seed=2)
    h_plain = plain.fit(X, Y, **kw)
    h_weighted = weighted.fit(X, Y, sample_weight=np.ones(N), **kw)
    assert_array_equal(weighted.theta, plain.theta)
    assert h_weighted.loss == h_plain.loss


def test_integer_weights_equal_repeated_rows_full_batch():
    """Full-batch gradient descent with weight w_i = training on row i repeated w_i times
    with the penalty kept per n rows (l2 · n / Σw): the definition, checked without fastbp's
    weight code on the repeated side."""
    X, Y = make_data(11, SIZES, "identity", np.float64, seed=7)
    w = np.array([1, 3, 0, 2, 1, 4, 1, 2, 1, 1, 2])
    weighted, repeated = network("identity", np.float64), network("identity", np.float64)
    kw = dict(loss="mse", optimizer=fastbp.SGD(0.05), epochs=4, batch_size=None)
    h_weighted = weighted.fit(X, Y, sample_weight=w.astype(float), l2=0.2, **kw)
    h_repeated = repeated.fit(np.repeat(X, w, axis=0), np.repeat(Y, w, axis=0), l2=0.2 * 11 / w.sum(), **kw)
    np.testing.assert_allclose(weighted.theta, repeated.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_weighted.loss, h_repeated.loss, rtol=1e-12)


def test_zero_weight_batch_is_skipped(dtype):
    """A batch whose weights sum to 0 takes no step: training equals training without its rows."""
    X, Y = make_data(N, SIZES, "softmax", dtype, seed=8)
    w = np.ones(N)
    w[5:10] = 0.0  # the whole second batch of 5
    skipping, without = network("softmax", dtype), network("softmax", dtype)
    kw = dict(optimizer=fastbp.Adam(0.01), epochs=2, batch_size=5, shuffle=False, l2=0.1)
    history = skipping.fit(X, Y, sample_weight=w, **kw)
    keep = w > 0
    without.fit(X[keep], Y[keep], **kw)
    assert_array_equal(skipping.theta, without.theta)
    assert skipping.fit_state.step[0] == without.fit_state.step[0] == 2 * 3
    assert np.isfinite(history.loss).all()
    ref = ReferenceTrainer(network("softmax", dtype))
    ref_losses = [ref.epoch(X, Y, np.arange(N), 5, "cross_entropy", kw["optimizer"], 0.01, l2=0.1,
                            sample_weight=w)[0] for _ in range(2)]
    assert_close(history.loss, ref_losses, dtype, "loss")


def test_validation_split_carries_the_weights():
    X, Y = make_data(20, SIZES, "softmax", np.float64, seed=9)
    w = weights_for(20, seed=2)
    net = network("softmax", np.float64)
    history = net.fit(X, Y, epochs=1, batch_size=4, sample_weight=w, validation_split=0.25)
    assert history.val_loss[0] == pytest.approx(net.evaluate(X[15:], Y[15:], sample_weight=w[15:])["loss"],
                                                rel=1e-12)
    history = net.fit(X[:15], Y[:15], epochs=1, validation_data=(X[15:], Y[15:], w[15:]))
    assert history.val_loss[0] == pytest.approx(net.evaluate(X[15:], Y[15:], sample_weight=w[15:])["loss"],
                                                rel=1e-12)


@pytest.mark.parametrize("weights,match", [
    (np.ones(16), r"shape \(17,\)"), (np.ones((17, 1)), r"shape \(17,\)"),
    (np.r_[np.ones(16), np.nan], "NaN or inf"), (np.r_[np.ones(16), -1.0], ">= 0"),
    (np.zeros(17), "all zero"), (np.array(["a"] * 17), "numbers"),
])
def test_bad_sample_weight_is_refused_before_training(weights, match):
    X, Y = make_data(N, SIZES, "softmax", np.float32, seed=10)
    net = network("softmax", np.float32)
    net.fit(X, Y, epochs=1)
    before, step = net.theta.copy(), int(net.fit_state.step[0])
    with pytest.raises((ValueError, TypeError), match=match):
        net.fit(X, Y, epochs=1, sample_weight=weights, warm_start=True)
    assert_array_equal(net.theta, before)
    assert net.fit_state.step[0] == step


def test_weights_combine_with_dropout_and_batchnorm():
    """Dropout and batchnorm are per-layer options of the same layer walk: with them,
    unit weights still give the bits of no weights, and other weights change the fit."""
    X, Y = make_data(N, [5, 7, 3], "softmax", np.float64, seed=11)

    def fit(sample_weight):
        net = fastbp.MLP([5, 7, 3], activation="tanh", dropout=0.2, batchnorm=True, seed=4, dtype="float64")
        net.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=2, batch_size=5, l2=0.1, seed=1,
                sample_weight=sample_weight)
        return net.theta

    plain = fit(None)
    assert_array_equal(fit(np.ones(N)), plain)
    assert not np.allclose(fit(weights_for(N, seed=3)), plain)


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("exp", "poisson")])
def test_gradcheck_with_sample_weights(output, loss, batchnorm):
    """gradcheck's objective is the weighted one, (Σ w ℓ + n·penalty)/Σw: the weighted
    gradient passes, with L1/L2 and batchnorm; the unweighted gradient fails against it."""
    sizes = [4, 6, 3] if output != "exp" else [4, 6, 1]
    net = fastbp.MLP(sizes, activation="tanh", output=output, init="xavier", batchnorm=batchnorm, seed=2)
    X, Y = make_data(13, sizes, output, np.float64, seed=3)
    w = weights_for(13, seed=5)
    report = fastbp.gradcheck(net, X, Y, loss=loss, l1=1e-3, l2=1e-2, sample_weight=w)
    assert report.passed, str(report)
    assert report.n_checked == net.n_params
    original = fastbp.MLP.flat_gradient

    def unweighted(self, *args, sample_weight=None, **kwargs):
        return original(self, *args, **kwargs)
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(fastbp.MLP, "flat_gradient", unweighted)
        assert not fastbp.gradcheck(net, X, Y, loss=loss, l1=1e-3, l2=1e-2, sample_weight=w).passed
    finally:
        mp.undo()


def test_gradcheck_refuses_bad_sample_weights():
    net = network("softmax", np.float64)
    X, Y = make_data(N, SIZES, "softmax", np.float64, seed=10)
    with pytest.raises(ValueError, match=">= 0"):
        fastbp.gradcheck(net, X, Y, sample_weight=np.r_[np.ones(16), -1.0])
