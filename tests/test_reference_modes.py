"""The NumPy reference's training with batch normalization and dropout
(``reference.train_epoch_modes``, ``gradients_bn``, ``batch_masks``) checked on its own,
outside the combination grid: against the plain reference trainer, central differences,
the running statistics written out by hand, and the masks' definition. Tiny, float64."""

import numpy as np
import pytest

from fastbp import reference
from fastbp.kernels import rng as counter_rng

ACTS = ["tanh", "sigmoid", "softmax"]


def network(sizes=(4, 6, 5, 3), seed=0):
    g = np.random.default_rng(seed)
    weights = [g.standard_normal((a, b)) * 0.5 for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [g.standard_normal(b) * 0.1 for b in sizes[1:]]
    return weights, biases


def data(n=11, seed=1):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, 4))
    Y = np.eye(3)[g.integers(0, 3, n)]
    return X, Y


def test_modes_trainer_without_modes_is_the_plain_trainer():
    """No BN, no dropout: the modes trainer takes the same steps as ``train_epoch``
    (partial last batch, Adam, L2, clipping), through its own forward/backward code."""
    X, Y = data()
    perm = np.random.default_rng(2).permutation(len(X))
    (w1, b1), (w2, b2) = network(), network()
    plain_state = reference.new_optimizer_state([*w1, *b1])
    modes_state = reference.new_optimizer_state([p for W, b in zip(w2, b2) for p in (W, b)])
    plain = reference.train_epoch(w1, b1, ACTS, X, Y, perm, 4, "cross_entropy", "adam", plain_state, 0.01,
                                  l2=0.1, clip_norm=0.5)
    modes = reference.train_epoch_modes(w2, b2, [None] * 3, ACTS, X, Y, perm, 4, "cross_entropy", "adam",
                                        modes_state, 0.01, l2=0.1, clip_norm=0.5, dropout=[0.0, 0.0])
    assert plain_state["t"] == modes_state["t"] == 3
    assert modes[0] == pytest.approx(plain[0], rel=1e-13) and modes[1] == plain[1]
    for a, b in zip([*w1, *b1], [*w2, *b2]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def loss_of(weights, biases, gammas, X, Y, masks):
    zs, acts, _ = reference.forward_bn(weights, biases, gammas, ACTS, X, 1e-5, masks=masks)
    return reference.sample_losses(zs[-1], acts[-1], Y, "cross_entropy", ACTS[-1]).mean()


def test_bn_and_dropout_gradients_match_central_differences():
    X, Y = data(n=7)
    weights, biases = network()
    gammas = [np.array([1.5, 0.5, 1.0, 2.0, 0.8, 1.2]), None, None]  # BN on the first hidden layer
    masks = reference.batch_masks(3, 0, 1, [4, 6, 5, 3], [0.5, 0.25], rows=7)
    assert masks[0] is not None and masks[1] is not None
    value, dWs, dbs, dgs = reference.gradients_bn(weights, biases, gammas, ACTS, X, Y, "cross_entropy", 1e-5,
                                                  masks)
    assert value == pytest.approx(loss_of(weights, biases, gammas, X, Y, masks), rel=1e-14)
    h = 1e-6
    for params, grads in ((weights, dWs), (biases, dbs), ([gammas[0]], [dgs[0]])):
        for p, g in zip(params, grads):
            numeric = np.zeros_like(p)
            for i in np.ndindex(p.shape):
                old = p[i]
                p[i] = old + h
                up = loss_of(weights, biases, gammas, X, Y, masks)
                p[i] = old - h
                down = loss_of(weights, biases, gammas, X, Y, masks)
                p[i] = old
                numeric[i] = (up - down) / (2 * h)
            np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)
    assert dgs[1] is None and dgs[2] is None


def test_running_statistics_of_one_full_batch():
    """One batch of all n rows: running ← m·running + (1 − m)·batch value, the variance
    unbiased (n − 1), from u = X W of the weights before the step."""
    X, Y = data(n=9)
    weights, biases = network()
    u = X @ weights[0]
    gammas = [np.ones(6), None, None]
    running = [[np.zeros(6), np.ones(6)], None, None]
    state = reference.new_optimizer_state([weights[0], biases[0], gammas[0], weights[1], biases[1], weights[2],
                                           biases[2]])
    reference.train_epoch_modes(weights, biases, gammas, ACTS, X, Y, np.arange(9), 9, "cross_entropy", "sgd",
                                state, 0.1, running=running, momentum_bn=0.8)
    np.testing.assert_allclose(running[0][0], 0.2 * u.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(running[0][1], 0.8 + 0.2 * u.var(axis=0, ddof=1), rtol=1e-14)
    assert not np.array_equal(gammas[0], np.ones(6))  # γ is trained too


def test_batch_masks_follow_the_counter_rng():
    masks = reference.batch_masks(7, 2, 5, [4, 6, 5, 3], [0.0, 0.4], dtype=np.float32, rows=3)
    assert masks[0] is None and masks[1].dtype == np.float32 and masks[1].shape == (3, 5)
    threshold = counter_rng.keep_threshold(0.6)
    with np.errstate(over="ignore"):  # the hash wraps around 2**64 by design
        key = counter_rng.stream_key(7, 2, 5, 1)
        for r in range(3):
            for c in range(5):
                kept = counter_rng.keep_unit(key, np.uint64(r), np.uint64(c), threshold)
                assert masks[1][r, c] == (np.float32(1 / 0.6) if kept else 0.0)
    again = reference.batch_masks(7, 2, 5, [4, 6, 5, 3], [0.0, 0.4], dtype=np.float32, rows=3)
    np.testing.assert_array_equal(masks[1], again[1])
    big = reference.batch_masks(7, 2, 6, [4, 400, 3], [0.4], rows=500)[0]
    assert abs((big > 0).mean() - 0.6) < 0.01  # the keep probability


def test_dropout_mask_keeps_the_expectation():
    mask = reference.dropout_mask((400, 500), 0.3, np.random.default_rng(0))
    assert set(np.unique(mask)) == {0.0, 1 / 0.7}
    assert mask.mean() == pytest.approx(1.0, abs=0.01)


def test_exp_derivative_and_unknown_names():
    z = np.array([[-1.0, 0.0, 2.0]])
    a = reference.activate(z, "exp")
    h = 1e-6
    numeric = (np.exp(z + h) - np.exp(z - h)) / (2 * h)
    np.testing.assert_allclose(reference.activation_derivative(z, a, "exp"), numeric, rtol=1e-8)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        reference.activate(z, "swish")
    with pytest.raises(ValueError, match="activation 'softmax' has no elementwise derivative"):
        reference.activation_derivative(z, a, "softmax")
    p = [np.ones(2)]
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        reference.optimizer_step("adagrad", p, [np.ones(2)], reference.new_optimizer_state(p), 0.1, 1)
