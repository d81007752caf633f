"""The public API: gradcheck, training quality, determinism, targets, validation."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastbp
from fastbp import reference

from helpers import make_data, one_hot

HIDDEN = ["identity", "sigmoid", "tanh", "relu", "leaky_relu"]


# --- gradient checking ---------------------------------------------------------------


@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                         ("identity", "mse"), ("sigmoid", "mse"), ("softmax", "mse")])
def test_gradcheck_passes_for_every_activation_and_loss(activation, output, loss):
    sizes = [4, 6, 5, 3]
    net = fastbp.MLP(sizes, activation=activation, output=output, init="xavier", seed=2)  # float32 net
    X, Y = make_data(5, sizes, output, np.float64, seed=3)
    report = fastbp.gradcheck(net, X, Y, loss=loss, l1=1e-3 if activation == "tanh" else 0.0, l2=1e-2)
    assert report.passed, str(report)
    assert report.max_error < 1e-6
    assert report.n_checked == net.n_params
    assert set(report.errors) == {"W1", "b1", "W2", "b2", "W3", "b3"}


def test_gradcheck_detects_a_wrong_gradient(monkeypatch):
    """The check can fail: corrupt the compiled gradient and it must say FAIL."""
    net = fastbp.MLP([3, 4, 2], activation="tanh", seed=0)
    X, Y = make_data(4, [3, 4, 2], "softmax", np.float64)
    original = fastbp.MLP.flat_gradient

    def corrupted(self, *args, **kwargs):
        value, grad = original(self, *args, **kwargs)
        grad[2] *= 1.01
        return value, grad

    monkeypatch.setattr(fastbp.MLP, "flat_gradient", corrupted)
    report = fastbp.gradcheck(net, X, Y)
    assert not report.passed
    assert report.worst[0] == "W1" and report.worst[1] == 2
    assert "FAIL" in str(report)


def test_gradcheck_sample_subset_and_net_unchanged():
    net = fastbp.MLP([6, 8, 3], seed=4)
    before = net.theta.copy()
    X, Y = make_data(7, [6, 8, 3], "softmax", np.float32)
    report = fastbp.gradcheck(net, X, Y, n_samples=20, seed=1)
    assert report.n_checked == 20 and report.passed
    np.testing.assert_array_equal(net.theta, before)


# --- training quality and determinism ----------------------------------------------------


def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def test_digits_reaches_95_percent_held_out():
    Xtr, Xte, ytr, yte = digits_split()
    net = fastbp.MLP([64, 64, 10], activation="relu", output="softmax", init="he", seed=0)
    hist = net.fit(Xtr, ytr, loss="cross_entropy", optimizer=fastbp.Adam(lr=1e-3), epochs=30,
                   batch_size=32, l2=1e-4)
    accuracy = (net.predict(Xte) == yte).mean()
    assert accuracy >= 0.95, accuracy
    assert hist.loss[-1] < hist.loss[0]
    assert net.evaluate(Xte, yte)["accuracy"] == pytest.approx(accuracy)


def test_same_seed_gives_identical_weights(dtype):
    X, Y = make_data(100, [10, 16, 3], "softmax", dtype, seed=9)
    nets = [fastbp.MLP([10, 16, 3], seed=5, dtype=dtype) for _ in range(2)]
    for net in nets:
        net.fit(X, Y, optimizer="adam", epochs=3, batch_size=7)
    np.testing.assert_array_equal(nets[0].theta, nets[1].theta)
    other = fastbp.MLP([10, 16, 3], seed=5, dtype=dtype)
    other.fit(X, Y, optimizer="adam", epochs=3, batch_size=7, seed=6)  # another shuffle order
    assert not np.array_equal(nets[0].theta, other.theta)


@pytest.mark.parametrize("init,std", [("he_normal", lambda i, o: np.sqrt(2 / i)),
                                      ("he_uniform", lambda i, o: np.sqrt(2 / i)),
                                      ("xavier_normal", lambda i, o: np.sqrt(2 / (i + o))),
                                      ("xavier_uniform", lambda i, o: np.sqrt(2 / (i + o)))])
def test_init_scales(init, std):
    net = fastbp.MLP([400, 300, 10], init=init, seed=0)
    W = net.weights[0]
    assert W.std() == pytest.approx(std(400, 300), rel=0.02)
    assert abs(W.mean()) < 0.01 * std(400, 300) * 10
    assert not net.biases[0].any()


def test_float32_and_float64_start_identical():
    a = fastbp.MLP([5, 7, 2], seed=3, dtype="float32")
    b = fastbp.MLP([5, 7, 2], seed=3, dtype="float64")
    np.testing.assert_array_equal(a.theta, b.theta.astype(np.float32))


def test_batch_modes_all_train_every_sample():
    """Full batch, mini-batch with a partial last batch and SGD: step counts per epoch."""
    X, Y = make_data(23, [4, 5, 3], "softmax", np.float64)
    for batch_size, steps in [(None, 1), (100, 1), (10, 3), (1, 23)]:
        net = fastbp.MLP([4, 5, 3], dtype="float64")
        net.fit(X, Y, optimizer="sgd", epochs=2, batch_size=batch_size)
        assert net.fit_state.step[0] == 2 * steps


# --- targets, outputs ------------------------------------------------------------------


def test_label_and_onehot_targets_are_equivalent():
    X, _ = make_data(30, [4, 6, 3], "softmax", np.float64)
    labels = np.arange(30) % 3
    a, b = fastbp.MLP([4, 6, 3], dtype="float64"), fastbp.MLP([4, 6, 3], dtype="float64")
    a.fit(X, labels, epochs=2)
    b.fit(X, one_hot(labels, 3, np.float64), epochs=2)
    np.testing.assert_array_equal(a.theta, b.theta)


def test_binary_sigmoid_outputs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    net = fastbp.MLP([2, 8, 1], activation="tanh", output="sigmoid", seed=1)
    net.fit(X, y, loss="binary_cross_entropy", optimizer=fastbp.Adam(0.02), epochs=40, batch_size=20)
    assert (net.predict(X) == y).mean() > 0.95
    proba = net.predict_proba(X)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    assert net.evaluate(X, y)["accuracy"] > 0.95


def test_regression_outputs():
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, size=(300, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    net = fastbp.MLP([3, 16, 1], activation="tanh", output="identity", dtype="float64", seed=2)
    hist = net.fit(X, y, loss="mse", optimizer=fastbp.Adam(0.01), epochs=60, batch_size=16)
    assert net.predict(X).shape == (300,)
    assert hist.loss[-1] < 0.01 * np.var(y)
    assert np.isnan(hist.accuracy[-1])
    assert "accuracy" not in net.evaluate(X, y)
    with pytest.raises(ValueError, match="predict_proba"):
        net.predict_proba(X)


def test_history_records_epochs_and_callbacks_stop():
    X, Y = make_data(40, [4, 5, 3], "softmax", np.float32)
    net = fastbp.MLP([4, 5, 3])
    seen = []
    hist = net.fit(X, Y, epochs=10, callbacks=[lambda n, e, h: seen.append(e) or e == 2],
                   schedule=fastbp.StepDecay(2, 0.5), optimizer=fastbp.SGD(0.1))
    assert seen == [0, 1, 2] and hist.epochs == 3 and hist.stopped_early
    assert hist.lr == [0.1, 0.1, 0.05]
    assert len(hist.loss) == len(hist.accuracy) == len(hist.samples_per_second) == 3


def test_warm_start_continues_optimizer_state():
    X, Y = make_data(40, [4, 5, 3], "softmax", np.float64)
    straight = fastbp.MLP([4, 5, 3], dtype="float64")
    straight.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=4, shuffle=False)
    resumed = fastbp.MLP([4, 5, 3], dtype="float64")
    resumed.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=2, shuffle=False)
    resumed.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=2, shuffle=False, warm_start=True)
    np.testing.assert_array_equal(straight.theta, resumed.theta)
    cold = fastbp.MLP([4, 5, 3], dtype="float64")
    cold.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=2, shuffle=False)
    cold.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=2, shuffle=False)
    assert not np.array_equal(straight.theta, cold.theta)


def test_divergence_restores_previous_epoch():
    X, Y = make_data(20, [3, 4, 1], "identity", np.float32)
    Y *= 1e30
    net = fastbp.MLP([3, 4, 1], output="identity", activation="relu")
    with pytest.warns(RuntimeWarning, match="diverged"):
        hist = net.fit(X, Y, loss="mse", optimizer=fastbp.SGD(10.0), epochs=5, batch_size=None)
    assert np.isfinite(net.theta).all()
    assert hist.stopped_early and hist.epochs < 5


# --- validation -------------------------------------------------------------------------


def bad_fits():
    X, y = make_data(10, [4, 5, 3], "softmax", np.float64)
    labels = np.arange(10) % 3
    nan_X = X.copy()
    nan_X[3, 1] = np.nan
    inf_y = y.copy()
    inf_y[0, 0] = np.inf
    return [
        (dict(X=X[:, :3], y=labels), ValueError, "3 features"),
        (dict(X=X[0], y=labels), ValueError, "2-D"),
        (dict(X=X[:0], y=labels[:0]), ValueError, "empty"),
        (dict(X=nan_X, y=labels), ValueError, "NaN or inf"),
        (dict(X=X, y=inf_y), ValueError, "NaN or inf"),
        (dict(X=X, y=labels[:9]), ValueError, "10 samples but y has 9"),
        (dict(X=X, y=labels + 1), ValueError, r"labels must lie in \[0, 2\]"),
        (dict(X=X, y=labels - 1), ValueError, "labels must lie"),
        (dict(X=X, y=labels + 0.5), ValueError, "integers"),
        (dict(X=X, y=np.ones((10, 4))), ValueError, "4 columns"),
        (dict(X=X.astype(str), y=labels), TypeError, "numbers"),
        (dict(X=X, y=labels, loss="hinge"), ValueError, "unknown loss"),
        (dict(X=X, y=labels, loss="binary_cross_entropy"), ValueError, "sigmoid output"),
        (dict(X=X, y=labels, optimizer="adagrad"), ValueError, "unknown optimizer"),
        (dict(X=X, y=labels, optimizer=3), TypeError, "optimizer"),
        (dict(X=X, y=labels, epochs=0), ValueError, "epochs"),
        (dict(X=X, y=labels, batch_size=0), ValueError, "batch_size"),
        (dict(X=X, y=labels, batch_size=2.5), TypeError, "batch_size"),
        (dict(X=X, y=labels, l2=-1), ValueError, "l2"),
        (dict(X=X, y=labels, l1=np.nan), ValueError, "l1"),
        (dict(X=X, y=labels, clip_norm=0), ValueError, "clip_norm"),
        (dict(X=X, y=labels, clip_value=-1), ValueError, "clip_value"),
        (dict(X=X, y=labels, schedule="cosine"), ValueError, "unknown schedule"),
        (dict(X=X, y=labels, device="tpu"), ValueError, "device"),
    ]


@pytest.mark.parametrize("kwargs,error,match", bad_fits())
def test_bad_input_raises_clearly_and_keeps_the_model(kwargs, error, match):
    net = fastbp.MLP([4, 5, 3], dtype="float64", seed=1)
    X, y = make_data(10, [4, 5, 3], "softmax", np.float64)
    net.fit(X, np.arange(10) % 3, epochs=2)
    trained, state = net.theta.copy(), net.fit_state
    with pytest.raises(error, match=match):
        net.fit(**kwargs)
    np.testing.assert_array_equal(net.theta, trained)
    assert net.fit_state is state


@pytest.mark.parametrize("make,error,match", [
    (lambda: fastbp.Adam(lr=0), ValueError, "lr"),
    (lambda: fastbp.SGD(lr=-1), ValueError, "lr"),
    (lambda: fastbp.SGD(lr=float("nan")), ValueError, "lr"),
    (lambda: fastbp.Momentum(0.1, momentum=1.0), ValueError, "momentum"),
    (lambda: fastbp.Adam(beta1=1.5), ValueError, "beta1"),
    (lambda: fastbp.Adam(beta2=-0.1), ValueError, "beta2"),
    (lambda: fastbp.RMSprop(eps=0), ValueError, "eps"),
    (lambda: fastbp.StepDecay(0), ValueError, "step_size"),
    (lambda: fastbp.MLP([4]), ValueError, "sizes"),
    (lambda: fastbp.MLP([4, 0, 2]), ValueError, "layer size"),
    (lambda: fastbp.MLP([4, 5, 2], activation="swish"), ValueError, "hidden activation"),
    (lambda: fastbp.MLP([4, 5, 2], activation="softmax"), ValueError, "hidden activation"),
    (lambda: fastbp.MLP([4, 5, 2], output="tanh"), ValueError, "output activation"),
    (lambda: fastbp.MLP([4, 5, 1], output="softmax"), ValueError, "2 units"),
    (lambda: fastbp.MLP([4, 5, 2], init="orthogonal"), ValueError, "init"),
    (lambda: fastbp.MLP([4, 5, 2], dtype="float16"), ValueError, "dtype"),
    (lambda: fastbp.MLP([4, 5, 6, 2], activation=["relu"]), ValueError, "hidden activations"),
])
def test_bad_construction_raises(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_predict_validates_features():
    net = fastbp.MLP([4, 5, 3])
    with pytest.raises(ValueError, match="4"):
        net.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        net.predict(np.full((2, 4), np.inf))


def test_reference_is_pure_numpy():
    """The oracle must not depend on the code it checks: no Numba, no kernel module except
    the counter-based dropout generator ``kernels/rng.py`` (plain NumPy, shared on purpose
    so that reference and kernels drop the same units)."""
    import ast
    import inspect

    from fastbp.kernels import rng

    def imports(module):
        tree = ast.parse(inspect.getsource(module))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {f"{node.module or ''}.{alias.name}" for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) for alias in node.names}
        return names

    imported = imports(reference)
    assert not any("numba" in name for name in imported)
    assert {name for name in imported if "kernels" in name} <= {"kernels.rng"}
    assert not any("numba" in name or "kernels" in name for name in imports(rng))


def test_overflow_on_conversion_is_named():
    net = fastbp.MLP([2, 3, 2])  # float32
    with pytest.raises(ValueError, match="1e\\+300 overflows float32"):
        net.predict(np.array([[1e300, 0.0]]))


def test_bundled_digits_match_scikit_learn():
    from sklearn.datasets import load_digits as sklearn_digits
    from fastbp.datasets import load_digits, stratified_split
    X, y = load_digits()
    X_ref, y_ref = sklearn_digits(return_X_y=True)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)
    train, test = stratified_split(y, 0.25, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(y)
    assert np.abs(np.bincount(y[test]) / np.bincount(y) - 0.25).max() < 0.02
