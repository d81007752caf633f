"""Compiled CPU kernels against the NumPy reference: forward outputs, gradients and
parameters after several training epochs, for every activation × loss × optimizer ×
batch mode, float64 tightly and float32 loosely, on odd shapes."""

import itertools

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbp
from fastbp import reference
from fastbp.kernels import cpu, cpu_split, simd
from fastbp.kernels.cpu import python_callable

from helpers import ReferenceTrainer, assert_close, make_data

HIDDEN = ["identity", "sigmoid", "tanh", "relu", "leaky_relu"]
OUTPUT_LOSS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
               ("identity", "mse"), ("sigmoid", "mse"), ("softmax", "mse"), ("exp", "poisson")]
# (class, learning rate, constants): small rates keep float32 runs out of chaotic regimes
OPTIMIZERS = [(fastbp.SGD, 0.05, {}), (fastbp.Momentum, 0.02, {"momentum": 0.9}),
              (fastbp.Nesterov, 0.02, {"momentum": 0.8}), (fastbp.RMSprop, 0.005, {"rho": 0.9}),
              (fastbp.Adam, 0.005, {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8})]


def sizes_for(output):
    return [17, 33, 5] if output != "sigmoid" else [17, 33, 3]


@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("output", ["softmax", "sigmoid", "identity", "exp"])
@pytest.mark.parametrize("n", [1, 37])
def test_forward_matches_reference(activation, output, n, dtype):
    sizes = [17, 33, 9, 5]
    net = fastbp.MLP(sizes, activation=activation, output=output, init="xavier", seed=3, dtype=dtype)
    X, _ = make_data(n, sizes, output, dtype, seed=1)
    expected = reference.predict(net.weights, net.biases, net.layer_activations, X)
    assert net.forward(X).dtype == dtype
    assert_close(net.forward(X), expected, dtype, f"{activation}/{output}")


@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("output,loss", OUTPUT_LOSS)
def test_gradients_match_reference(activation, output, loss, dtype):
    sizes = sizes_for(output)
    net = fastbp.MLP(sizes, activation=activation, output=output, init="xavier", seed=5, dtype=dtype)
    X, Y = make_data(37, sizes, output, dtype, seed=2)
    value, dWs, dbs = reference.gradients(net.weights, net.biases, net.layer_activations, X, Y, loss,
                                          l1=1e-3, l2=1e-2)
    got_value, _ = net.flat_gradient(X, Y, loss, l1=1e-3, l2=1e-2)
    assert_close(got_value, value, dtype, "objective")
    for l, (dW, db) in enumerate(net.gradients(X, Y, loss, l1=1e-3, l2=1e-2)):
        assert_close(dW, dWs[l], dtype, f"dW{l}")
        assert_close(db, dbs[l], dtype, f"db{l}")


def train_both(net, X, Y, loss, optimizer, batch_size, epochs, **kwargs):
    """Train net (compiled, shuffle=False) and the reference the same way; return both."""
    ref = ReferenceTrainer(net)
    n = X.shape[0]
    schedule = fastbp.optimizers.get_schedule(kwargs.pop("schedule", None))
    ref_losses = []
    for epoch in range(epochs):
        total, _ = ref.epoch(X, Y, np.arange(n), min(batch_size or n, n), loss, optimizer,
                             schedule(epoch, optimizer.lr), **kwargs)
        ref_losses.append(total)
    hist = net.fit(X, Y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                   shuffle=False, schedule=schedule, **kwargs)
    return hist, ref, ref_losses


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o[0].name)
@pytest.mark.parametrize("output,loss", [*OUTPUT_LOSS[:3], ("exp", "poisson")])
@pytest.mark.parametrize("batch_size", [None, 10, 1], ids=["full", "mini-partial", "sgd"])
def test_training_matches_reference(optimizer, output, loss, batch_size, dtype):
    cls, lr, constants = optimizer
    optimizer = cls(lr / 5 if batch_size == 1 else lr, **constants)
    sizes = sizes_for(output)
    net = fastbp.MLP(sizes, activation="tanh", output=output, init="xavier", seed=7, dtype=dtype)
    X, Y = make_data(23, sizes, output, dtype, seed=4)  # 23 = 2·10 + 3: a partial last batch
    hist, ref, ref_losses = train_both(net, X, Y, loss, optimizer, batch_size, epochs=3)
    assert_close(net.theta, ref.flat(), dtype, "parameters after 3 epochs")
    assert_close(hist.loss, ref_losses, dtype, "epoch losses")


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("extras", [
    dict(l1=1e-3), dict(l2=1e-2), dict(l1=1e-3, l2=1e-2),
    dict(clip_norm=0.05), dict(clip_value=1e-3), dict(clip_norm=0.5, clip_value=1e-2, l2=1e-3),
    dict(schedule=fastbp.StepDecay(1, 0.5)), dict(schedule=fastbp.ExponentialDecay(0.9)),
    dict(schedule=fastbp.InverseScaling(0.5, 2.0)),
], ids=lambda d: "-".join(d))
def test_regularisation_clipping_schedules_match_reference(activation, extras, dtype):
    sizes = [17, 33, 5]
    net = fastbp.MLP(sizes, activation=activation, output="softmax", seed=11, dtype=dtype)
    X, Y = make_data(37, sizes, "softmax", dtype, seed=5)
    hist, ref, ref_losses = train_both(net, X, Y, "cross_entropy", fastbp.Adam(0.01), 8, epochs=3,
                                       **dict(extras))
    assert_close(net.theta, ref.flat(), dtype, "parameters")
    assert_close(hist.loss, ref_losses, dtype, "epoch losses")


def test_clipping_actually_clips():
    """With a tiny clip_norm the first SGD step moves θ by exactly lr·clip_norm."""
    net = fastbp.MLP([4, 6, 3], seed=0, dtype="float64")
    X, Y = make_data(8, [4, 6, 3], "softmax", np.float64)
    before = net.theta.copy()
    net.fit(X, Y, optimizer=fastbp.SGD(1.0), epochs=1, batch_size=None, clip_norm=1e-3)
    assert np.linalg.norm(net.theta - before) == pytest.approx(1e-3, rel=1e-9)


def test_shuffled_training_uses_seeded_permutations(dtype):
    """shuffle=True draws epoch e's permutation from default_rng([seed, e])."""
    sizes = [17, 33, 5]
    net = fastbp.MLP(sizes, seed=2, dtype=dtype)
    X, Y = make_data(50, sizes, "softmax", dtype, seed=6)
    ref = ReferenceTrainer(net)
    opt = fastbp.Momentum(0.05)
    for epoch in range(3):
        ref.epoch(X, Y, np.random.default_rng([123, epoch]).permutation(50), 16, "cross_entropy", opt, opt.lr)
    net.fit(X, Y, optimizer=opt, epochs=3, batch_size=16, seed=123)
    assert_close(net.theta, ref.flat(), dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths=st.lists(st.sampled_from([1, 2, 3, 17, 33]), min_size=1, max_size=3),
       n_in=st.sampled_from([1, 5, 17]), n_out=st.sampled_from([2, 3, 17]),
       n=st.integers(1, 40), batch_size=st.integers(1, 45),
       activation=st.sampled_from(HIDDEN))
def test_random_architectures_match_reference(widths, n_in, n_out, n, batch_size, activation):
    sizes = [n_in, *widths, n_out]
    net = fastbp.MLP(sizes, activation=activation, output="softmax", init="xavier", seed=1, dtype="float64")
    X, Y = make_data(n, sizes, "softmax", np.float64, seed=n)
    for l, (dW, db) in enumerate(net.gradients(X, Y, "cross_entropy")):
        _, dWs, dbs = reference.gradients(net.weights, net.biases, net.layer_activations, X, Y, "cross_entropy")
        assert_close(dW, dWs[l], np.float64)
        assert_close(db, dbs[l], np.float64)
    hist, ref, ref_losses = train_both(net, X, Y, "cross_entropy", fastbp.Adam(0.01), batch_size, epochs=2)
    assert_close(net.theta, ref.flat(), np.float64)
    assert_close(hist.loss, ref_losses, np.float64)


def test_stable_for_large_logits(dtype):
    """Softmax-CE and sigmoid-BCE are computed from the logits: no overflow or NaN."""
    for output, loss in [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy")]:
        net = fastbp.MLP([3, 4], output=output, seed=0, dtype=dtype)
        net.weights[0][...] = 400.0
        X = np.ones((5, 3), dtype)
        Y = np.zeros((5, 4), dtype)
        Y[:, 0] = 1
        Y[:, 1] = 0
        result = net.evaluate(X, Y, loss)
        assert np.isfinite(result["loss"])
        expected = reference.sample_losses(X @ net.weights[0], reference.activate(X @ net.weights[0], output),
                                           Y, loss, output).mean()
        assert result["loss"] == pytest.approx(expected, rel=1e-4)
        _, grad = net.flat_gradient(X, Y, loss)
        assert np.isfinite(grad).all()


def test_evaluate_and_predict_chunking_match_reference():
    """More rows than one predict chunk: outputs and summed loss stay exact."""
    sizes = [7, 9, 4]
    net = fastbp.MLP(sizes, seed=1, dtype="float64")
    X, Y = make_data(2500, sizes, "softmax", np.float64)
    probs = reference.predict(net.weights, net.biases, net.layer_activations, X)
    assert_close(net.predict_proba(X), probs, np.float64)
    np.testing.assert_array_equal(net.predict(X), probs.argmax(axis=1))
    zs, acts = reference.forward(net.weights, net.biases, net.layer_activations, X)
    loss = reference.sample_losses(zs[-1], acts[-1], Y, "cross_entropy", "softmax").mean()
    got = net.evaluate(X, Y, "cross_entropy")
    assert got["loss"] == pytest.approx(loss, rel=1e-12)
    assert got["accuracy"] == pytest.approx(reference.correct_count(acts[-1], Y, "softmax") / 2500)


def test_all_pairs_covered():
    """Guard: the parametrisations above span every hidden activation and valid pair."""
    assert set(HIDDEN) == set(fastbp.spec.HIDDEN_ACTIVATIONS)
    pairs = {(o, fastbp.spec.resolve_loss(l, o)) for o, l in OUTPUT_LOSS}
    valid = set()
    for o, l in itertools.product(fastbp.spec.OUTPUT_ACTIVATIONS, fastbp.spec.LOSS_NAMES.values()):
        try:
            valid.add((o, fastbp.spec.resolve_loss(l, o)))
        except ValueError:
            pass
    assert pairs == valid


def test_gradient_diagnostics_match_reference(dtype):
    """grad_norm and update_ratio per layer, computed inside the update kernel."""
    sizes = [17, 33, 9, 5]
    net = fastbp.MLP(sizes, activation="sigmoid", seed=3, dtype=dtype)
    X, Y = make_data(37, sizes, "softmax", dtype, seed=8)
    _, dWs, dbs = reference.gradients(net.weights, net.biases, net.layer_activations, X, Y,
                                      "cross_entropy", l2=1e-2)
    weights = [W.copy() for W in net.weights]
    hist = net.fit(X, Y, optimizer=fastbp.SGD(0.1), epochs=1, batch_size=None, l2=1e-2)
    for l in range(3):
        norm = np.sqrt((dWs[l] ** 2).sum() + (dbs[l] ** 2).sum())
        assert_close(hist.grad_norm[0][l], norm, dtype, f"grad norm {l}")
        ratio = 0.1 * np.linalg.norm(dWs[l]) / np.linalg.norm(weights[l])
        assert hist.update_ratio[0][l] == pytest.approx(ratio, rel=1e-3 if dtype == np.float32 else 1e-9)
    # sigmoid layers shrink the gradient going backwards: the first layer's is the smallest
    assert hist.grad_norm[0][0] < hist.grad_norm[0][2]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 5])
@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
def test_clip_norm_that_never_triggers_changes_nothing(batch_size, optimizer, dtype):
    """A clip_norm far above the gradient norm scales by exactly 1: the same fit as none,
    with L1/L2 and clip_value on, at small batches (the fused small-batch update that
    once made these differ by rounding is gone: it lost to GEMM + update everywhere)."""
    sizes = [300, 40, 3]
    X, Y = make_data(13, sizes, "softmax", dtype, seed=3)
    nets = [fastbp.MLP(sizes, activation="relu", seed=4, dtype=dtype) for _ in range(2)]
    hists = [net.fit(X, Y, optimizer=optimizer, epochs=2, batch_size=batch_size, l1=1e-4, l2=1e-3,
                     clip_value=0.5, clip_norm=clip) for net, clip in zip(nets, [None, 1e30])]
    np.testing.assert_array_equal(nets[0].theta, nets[1].theta)
    assert hists[0].loss == hists[1].loss
    np.testing.assert_array_equal(np.array(hists[0].grad_norm), np.array(hists[1].grad_norm))
    np.testing.assert_array_equal(np.array(hists[0].update_ratio), np.array(hists[1].update_ratio))


@numba.njit
def _exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = simd.exp_nonpositive(x[i])


def test_exp_without_libm_matches_numpy():
    """``simd.exp_nonpositive`` (the split path's softmax) within 1 ulp of np.exp over
    x <= 0, subnormal results and underflow to 0 included; -inf gives 0, NaN stays NaN."""
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.exponential(5.0, 200_000), -rng.uniform(0.0, 800.0, 20_000),
                        [0.0, -0.0, -1e-300, -0.5 * np.log(2), -708.3, -709.8, -744.4, -745.1, -746.0, -1e308,
                         -np.inf, np.nan]])
    out = np.empty_like(x)
    _exp_all(x, out)
    expected = np.exp(x)
    normal = expected >= np.finfo(np.float64).tiny
    assert np.all(np.abs(out[normal] - expected[normal]) <= 1.5 * np.spacing(expected[normal]))
    small = ~normal & ~np.isnan(x)
    assert np.all(np.abs(out[small] - expected[small]) <= np.spacing(0.0)) and out[-2] == 0.0
    assert np.isnan(out[-1])


split_softmax = python_callable(cpu_split.softmax_cross_entropy)
one_thread_softmax = python_callable(cpu.softmax_cross_entropy)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 10), (7, 2), (32, 10), (33, 17)])
def test_rowwise_softmax_cross_entropy_matches_reference(rows, cols, weighted, dtype):
    """The split path's softmax-CE (rows in SIMD lanes) against the reference and the
    one-thread kernel: z + b, a, δ and the summed loss, with sample weights per row or
    without; large logits (one row of ±300, a row that underflows but for its maximum)
    included."""
    rng = np.random.default_rng(rows * 100 + cols)
    z = (4 * rng.standard_normal((rows, cols))).astype(dtype)
    z[0, 0] = 300.0
    if rows > 1:
        z[1] = -300.0
        z[1, -1] = 0.0
    bias = rng.standard_normal(cols).astype(dtype)
    targets = np.eye(cols, dtype=dtype)[rng.integers(0, cols, rows)]
    weights = rng.uniform(0.5, 2.0, rows) if weighted else None
    inv = 1.0 / (weights.sum() if weighted else rows)
    results = []
    for kernel, extra in ((split_softmax, (np.empty((cols + 3) * rows),)), (one_thread_softmax, ())):
        zz, a, delta = z.copy(), np.empty_like(z), np.empty_like(z)
        loss = kernel(zz, bias, a, targets, inv, weights, delta, *extra)
        results.append((zz, a, delta, loss))
    (zz, a, delta, loss), (zz1, a1, delta1, loss1) = results
    logits = z.astype(np.float64) + bias
    expected_a = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected_a /= expected_a.sum(axis=1, keepdims=True)
    w = np.ones(rows) if weights is None else weights
    assert (zz == zz1).all()
    assert_close(a, expected_a, dtype, "softmax")
    assert_close(a, a1, dtype, "softmax vs one thread")
    assert_close(delta, w[:, None] * (expected_a - targets) * inv, dtype, "delta")
    assert_close(delta, delta1, dtype, "delta vs one thread")
    expected_loss = (w * reference.sample_losses(logits, expected_a, targets.astype(np.float64), "cross_entropy",
                                                 "softmax")).sum()
    assert_close(loss, expected_loss, dtype, "loss")
    assert_close(loss, loss1, dtype, "loss vs one thread")


def test_rowwise_softmax_propagates_nan():
    z = np.zeros((3, 4))
    z[1, 2] = np.nan
    a, delta = np.empty_like(z), np.empty_like(z)
    loss = split_softmax(z, np.zeros(4), a, np.eye(4)[[0, 1, 2]], 1 / 3, None, delta, np.empty(8 * 3))
    assert np.isnan(loss) and np.isnan(a[1]).all() and np.isfinite(a[[0, 2]]).all()


kernel_correct_count = python_callable(cpu.correct_count)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 10), (7, 2), (32, 10), (33, 17)])
def test_correct_count_matches_reference(rows, cols, dtype):
    """The kernels' hit count against numpy's argmax (the first of equal maxima wins): random
    outputs, rows with ties (including a tie at the target), soft targets, and the sigmoid
    rule."""
    rng = np.random.default_rng(rows * 100 + cols)
    a = rng.random((rows, cols)).astype(dtype)
    Y = np.eye(cols, dtype=dtype)[rng.integers(0, cols, rows)]
    a[0] = 0.5  # every column tied: column 0 wins
    if rows > 3 and cols > 2:
        first, second = cols // 2, cols - 1
        for i, target in ((1, first), (2, second)):  # two tied maxima: the first of them wins
            a[i, :] = 0.25
            a[i, [first, second]] = 0.75
            Y[i] = np.eye(cols, dtype=dtype)[target]  # a hit in row 1, a miss in row 2
        Y[3] = rng.random(cols).astype(dtype)  # soft targets
    for output, code in (("softmax", cpu.SOFTMAX), ("sigmoid", cpu.SIGMOID)):
        assert kernel_correct_count(a, Y, code) == reference.correct_count(a, Y, output)
    if rows > 3 and cols > 2:
        assert kernel_correct_count(a[1:3], Y[1:3], cpu.SOFTMAX) == 1
