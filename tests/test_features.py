"""Training features (issue 3): save/load and exact resumption, validation and early
stopping, callbacks and ReduceOnPlateau, gradient warnings, progress, plots."""

import json
import os
import sys
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import reference

from helpers import ReferenceTrainer, assert_close, make_data

SIZES = [6, 9, 7, 3]


def data(n=60, dtype=np.float64, seed=0):
    X, Y = make_data(n, SIZES, "softmax", dtype, seed=seed)
    return X, Y.argmax(axis=1)


# --- save / load -------------------------------------------------------------------------


def test_save_load_roundtrip_keeps_everything(tmp_path):
    X, y = data()
    net = fastbp.MLP(SIZES, activation=["tanh", "relu"], output="softmax", init="xavier", seed=3,
                     dtype="float32")
    net.fit(X, y, optimizer=fastbp.RMSprop(0.003, rho=0.8, eps=1e-7), epochs=3, batch_size=16)
    path = tmp_path / "model.npz"
    net.save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary file left behind
    other = fastbp.MLP.load(path)
    assert (other.sizes, other.activations, other.output, other.init, other.seed, other.dtype) == \
           (net.sizes, net.activations, net.output, net.init, net.seed, net.dtype)
    np.testing.assert_array_equal(other.theta, net.theta)
    assert other.loss == "cross_entropy"
    assert other.fit_optimizer == fastbp.RMSprop(0.003, rho=0.8, eps=1e-7)
    np.testing.assert_array_equal(other.fit_state.state1, net.fit_state.state1)
    np.testing.assert_array_equal(other.fit_state.state2, net.fit_state.state2)
    assert other.fit_state.step[0] == net.fit_state.step[0] == 3 * 4
    assert other.fit_state.epochs_done == 3
    np.testing.assert_array_equal(other.predict_proba(X), net.predict_proba(X))
    # a plain npz: readable without pickle, with a JSON header
    with np.load(path, allow_pickle=False) as f:
        assert {"header", "theta", "state1", "state2", "step"} <= set(f.files)
        header = json.loads(str(f["header"][()]))
    assert header["sizes"] == SIZES and header["dtype"] == "float32"
    assert header["fastbp_version"] == fastbp.__version__
    assert header["optimizer"] == {"name": "rmsprop", "params": {"lr": 0.003, "rho": 0.8, "eps": 1e-7}}


def test_unfitted_network_saves_without_state(tmp_path):
    net = fastbp.MLP([3, 4, 2], seed=5)
    net.save(tmp_path / "m")  # written under exactly that name
    other = fastbp.MLP.load(tmp_path / "m")
    np.testing.assert_array_equal(other.theta, net.theta)
    assert other.fit_state is None and other.loss is None


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("optimizer", [fastbp.Adam(0.01), fastbp.Nesterov(0.05, momentum=0.8)],
                         ids=["adam", "nesterov"])
def test_five_plus_five_after_load_equals_ten_straight(tmp_path, shuffle, optimizer):
    """Optimizer moments, step count, schedule position and shuffle order all resume."""
    X, y = data(50)
    kwargs = dict(optimizer=optimizer, batch_size=8, shuffle=shuffle, seed=11, l2=1e-3,
                  schedule=fastbp.StepDecay(3, 0.5))
    straight = fastbp.MLP(SIZES, dtype="float64", seed=1)
    h10 = straight.fit(X, y, epochs=10, **kwargs)
    first = fastbp.MLP(SIZES, dtype="float64", seed=1)
    h5 = first.fit(X, y, epochs=5, **kwargs)
    first.save(tmp_path / "half.npz")
    resumed = fastbp.MLP.load(tmp_path / "half.npz")
    h5b = resumed.fit(X, y, epochs=5, warm_start=True, **kwargs)
    np.testing.assert_array_equal(resumed.theta, straight.theta)
    np.testing.assert_array_equal(resumed.fit_state.state1, straight.fit_state.state1)
    assert h5.loss + h5b.loss == h10.loss
    assert h5.lr + h5b.lr == h10.lr == [0.5 ** (e // 3) * optimizer.lr for e in range(10)]
    # without warm_start the second half starts over (fresh moments, epoch 0): differs
    cold = fastbp.MLP.load(tmp_path / "half.npz")
    cold.fit(X, y, epochs=5, **kwargs)
    assert not np.array_equal(cold.theta, straight.theta)


def test_shuffle_order_is_the_documented_one():
    """Epoch e of a fit trains on default_rng([seed, e]).permutation(n), also after a warm start."""
    X, Y = make_data(30, SIZES, "softmax", np.float64, seed=2)
    net = fastbp.MLP(SIZES, dtype="float64", seed=4)
    ref = ReferenceTrainer(net)
    opt = fastbp.Momentum(0.05)
    for epoch in range(4):
        ref.epoch(X, Y, np.random.default_rng([7, epoch]).permutation(30), 8, "cross_entropy", opt, opt.lr)
    net.fit(X, Y, optimizer=opt, epochs=2, batch_size=8, seed=7)
    net.fit(X, Y, optimizer=opt, epochs=2, batch_size=8, seed=7, warm_start=True)
    assert_close(net.theta, ref.flat(), np.float64)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    net = fastbp.MLP([3, 4, 2], seed=1)
    path = tmp_path / "model.npz"
    net.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    changed = fastbp.MLP([3, 4, 2], seed=2)
    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        changed.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def _rewrite(path, **changes):
    """Copy of the archive at ``path`` with some arrays replaced (None: removed)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _header_with(path, **fields):
    with np.load(path, allow_pickle=False) as f:
        header = json.loads(str(f["header"][()]))
    header.update(fields)
    return np.array(json.dumps(header))


@pytest.mark.parametrize("corrupt,match", [
    (lambda p: p.write_bytes(b"not a zip file at all"), "not a valid fastbp model"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a valid fastbp model"),
    (lambda p: p.write_bytes(b""), "not a valid fastbp model"),
    (lambda p: _rewrite(p, theta=np.zeros(3)), "theta"),
    (lambda p: _rewrite(p, theta=None), "theta"),
    (lambda p: _rewrite(p, header=None), "header"),
    (lambda p: _rewrite(p, state1=None), "state1"),
    (lambda p: _rewrite(p, step=np.array([1.5])), "step"),
    (lambda p: _rewrite(p, theta=np.array([object()] * 3, dtype=object)), "not a valid"),
    (lambda p: _rewrite(p, header=np.array("{not json")), "not a valid"),
    (lambda p: _rewrite(p, header=_header_with(p, format="other")), "format"),
    (lambda p: _rewrite(p, header=_header_with(p, format_version=99)), "newer"),
    (lambda p: _rewrite(p, header=_header_with(p, sizes=[6, 0, 3])), "layer size"),
    (lambda p: _rewrite(p, header=_header_with(p, dtype="float16")), "dtype"),
    (lambda p: _rewrite(p, header=_header_with(p, optimizer={"name": "adagrad", "params": {}})), "optimizer"),
    (lambda p: _rewrite(p, header=_header_with(p, optimizer={"name": "adam", "params": {"lr": -1}})), "lr"),
    (lambda p: _rewrite(p, header=_header_with(p, loss="hinge")), "loss"),
])
def test_malformed_files_raise_value_error_naming_the_file(tmp_path, corrupt, match):
    X, y = data(20)
    net = fastbp.MLP(SIZES, dtype="float64")
    net.fit(X, y, epochs=1)
    path = tmp_path / "bad-model.npz"
    net.save(path)
    corrupt(path)
    with pytest.raises(ValueError, match=match) as info:
        fastbp.MLP.load(path)
    assert "bad-model.npz" in str(info.value)


def test_load_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        fastbp.MLP.load("/nonexistent/nowhere.npz")


# --- validation and early stopping -------------------------------------------------------


def reference_loss(net, X, y):
    """Mean cross-entropy of ``net`` on (X, y) from the NumPy reference."""
    Y = np.eye(net.n_outputs)[y]
    zs, acts = reference.forward(net.weights, net.biases, net.layer_activations, X)
    return reference.sample_losses(zs[-1], acts[-1], Y, "cross_entropy", "softmax").mean()


def test_validation_data_is_evaluated_every_epoch():
    X, y = data(60)
    Xv, yv = data(25, seed=9)
    net = fastbp.MLP(SIZES, dtype="float64", seed=2)
    seen = []

    def record(net_, epoch, hist):
        seen.append((reference_loss(net_, Xv, yv), (net_.predict(Xv) == yv).mean()))

    hist = net.fit(X, y, epochs=4, batch_size=16, validation_data=(Xv, yv), callbacks=[record])
    assert len(hist.val_loss) == len(hist.val_accuracy) == 4
    assert_close(hist.val_loss, [s[0] for s in seen], np.float64)
    assert hist.val_accuracy == [s[1] for s in seen]
    assert fastbp.MLP(SIZES).fit(X, y, epochs=2).val_loss == []


def test_validation_split_holds_out_the_last_rows():
    X, y = data(50)
    a = fastbp.MLP(SIZES, dtype="float64", seed=2)
    ha = a.fit(X, y, epochs=3, batch_size=8, validation_split=0.2)
    b = fastbp.MLP(SIZES, dtype="float64", seed=2)
    hb = b.fit(X[:40], y[:40], epochs=3, batch_size=8, validation_data=(X[40:], y[40:]))
    np.testing.assert_array_equal(a.theta, b.theta)
    assert ha.val_loss == hb.val_loss and ha.loss == hb.loss


def overfitting_setup():
    """Validation labels disagree with the training labels: val_loss rises while the
    training loss falls, so early stopping must trigger."""
    X, y = data(40, seed=3)
    return X, y, X[:20], (y[:20] + 1) % 3


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_stops_and_restores_the_best_epoch(restore_best):
    X, y, Xv, yv = overfitting_setup()
    kwargs = dict(optimizer=fastbp.Adam(0.02), batch_size=10, validation_data=(Xv, yv))
    net = fastbp.MLP(SIZES, dtype="float64", seed=0)
    hist = net.fit(X, y, epochs=50, early_stopping=3, restore_best=restore_best, **kwargs)
    best = int(np.argmin(hist.val_loss))
    assert hist.stopped_early and hist.epochs == best + 4 < 50
    assert hist.best_epoch == best
    assert all(v >= hist.val_loss[best] for v in hist.val_loss[best + 1:])
    # the restored parameters are exactly those of a fresh run of best + 1 epochs
    again = fastbp.MLP(SIZES, dtype="float64", seed=0)
    again.fit(X, y, epochs=(best + 1) if restore_best else hist.epochs, **kwargs)
    np.testing.assert_array_equal(net.theta, again.theta)
    expected = hist.val_loss[best] if restore_best else hist.val_loss[-1]
    assert reference_loss(net, Xv, yv) == pytest.approx(expected, rel=1e-12)


def test_early_stopping_without_validation_watches_the_training_loss():
    X, y = data(30)
    net = fastbp.MLP(SIZES, dtype="float64")
    # a learning rate far too large makes the training loss bounce
    hist = net.fit(X, y, optimizer=fastbp.SGD(30.0), epochs=40, early_stopping=2, gradient_warnings=False)
    best = int(np.argmin(hist.loss))
    assert hist.stopped_early and hist.epochs == best + 3 and hist.best_epoch == best


def bad_feature_fits():
    X, y = data(10)
    return [
        (dict(validation_data=(X[:, :3], y)), ValueError, "validation X has 3 features"),
        (dict(validation_data=(X, y[:4])), ValueError, "10 samples but y has 4"),
        (dict(validation_data=(X, y + 5)), ValueError, "labels must lie"),
        (dict(validation_data=X), TypeError, "pair"),
        (dict(validation_data=(X, y), validation_split=0.2), ValueError, "not both"),
        (dict(validation_split=1.0), ValueError, "validation_split"),
        (dict(validation_split=True), ValueError, "validation_split"),
        (dict(validation_split=0.01), ValueError, "leaves"),
        (dict(early_stopping=0), ValueError, "early_stopping"),
        (dict(early_stopping=2.5), ValueError, "early_stopping"),
        (dict(restore_best="yes", early_stopping=2), TypeError, "restore_best"),
        (dict(callbacks=[fastbp.ReduceOnPlateau(monitor="val_loss")]), ValueError, "validation"),
        (dict(callbacks=[fastbp.EarlyStopping(monitor="val_loss")]), ValueError, "validation"),
        (dict(gradient_warnings="loud"), TypeError, "gradient_warnings"),
        (dict(verbose=3), ValueError, "verbose"),
        (dict(verbose="yes"), ValueError, "verbose"),
    ]


@pytest.mark.parametrize("kwargs,error,match", bad_feature_fits())
def test_bad_feature_arguments_raise_and_keep_the_model(kwargs, error, match):
    X, y = data(10)
    net = fastbp.MLP(SIZES, dtype="float64", seed=1)
    net.fit(X, y, epochs=2)
    trained, state, epochs_done = net.theta.copy(), net.fit_state, net.fit_state.epochs_done
    with pytest.raises(error, match=match):
        net.fit(X, y, warm_start=True, **kwargs)
    np.testing.assert_array_equal(net.theta, trained)
    assert net.fit_state is state and state.epochs_done == epochs_done


@pytest.mark.parametrize("make,match", [
    (lambda: fastbp.ReduceOnPlateau(factor=1.0), "factor"),
    (lambda: fastbp.ReduceOnPlateau(factor=0), "factor"),
    (lambda: fastbp.ReduceOnPlateau(patience=0), "patience"),
    (lambda: fastbp.ReduceOnPlateau(monitor="accuracy"), "monitor"),
    (lambda: fastbp.ReduceOnPlateau(min_lr=-1), "min_lr"),
    (lambda: fastbp.EarlyStopping(min_delta=float("nan")), "min_delta"),
    (lambda: fastbp.GradientMonitor(vanishing=2), "vanishing"),
    (lambda: fastbp.GradientMonitor(exploding=0), "exploding"),
])
def test_bad_callback_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- callbacks and ReduceOnPlateau ---------------------------------------------------------


def test_callback_hooks_run_in_order_and_plain_callables_still_work():
    events = []

    class Recorder(fastbp.Callback):
        def on_train_begin(self, net, fit):
            events.append(("begin", fit.epochs, fit.has_validation, fit.lr_scale))

        def on_epoch_end(self, net, epoch, history):
            events.append(("epoch", epoch, history.epochs))
            return False

        def on_train_end(self, net, history):
            events.append(("end", history.epochs))

    X, y = data(20)
    hist = fastbp.MLP(SIZES).fit(X, y, epochs=5, callbacks=[Recorder(), lambda n, e, h: e == 2])
    assert events == [("begin", 5, False, 1.0), ("epoch", 0, 1), ("epoch", 1, 2), ("epoch", 2, 3),
                      ("end", 3)]
    assert hist.stopped_early


def test_reduce_on_plateau_divides_the_learning_rate_the_kernel_uses():
    """min_delta so large that no epoch after the first counts as an improvement: the
    rate is divided every `patience` epochs; the parameters match the reference trained
    with exactly those rates."""
    X, Y = make_data(24, SIZES, "softmax", np.float64, seed=1)
    net = fastbp.MLP(SIZES, dtype="float64", seed=3)
    ref = ReferenceTrainer(net)
    cb = fastbp.ReduceOnPlateau(factor=0.5, patience=2, min_delta=1e9)
    hist = net.fit(X, Y, optimizer=fastbp.SGD(0.1), epochs=7, batch_size=8, shuffle=False, callbacks=[cb])
    expected = [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    np.testing.assert_allclose(hist.lr, expected, rtol=1e-15)
    assert cb.reductions == [(2, 0.5), (4, 0.25), (6, 0.125)]
    for lr in expected:
        ref.epoch(X, Y, np.arange(24), 8, "cross_entropy", fastbp.SGD(0.1), lr)
    assert_close(net.theta, ref.flat(), np.float64)
    # the reduced rate carries over to a warm start (and would through save/load)
    more = net.fit(X, Y, optimizer=fastbp.SGD(0.1), epochs=1, shuffle=False, warm_start=True)
    assert more.lr == [pytest.approx(0.0125)]


def test_reduce_on_plateau_respects_min_lr_and_val_loss():
    X, y = data(30)
    cb = fastbp.ReduceOnPlateau(factor=0.1, patience=1, min_delta=1e9, monitor="val_loss", min_lr=0.004)
    hist = fastbp.MLP(SIZES).fit(X, y, optimizer=fastbp.SGD(0.1), epochs=5, validation_split=0.2,
                                 callbacks=[cb])
    np.testing.assert_allclose(hist.lr, [0.1, 0.1, 0.01, 0.004, 0.004], rtol=1e-6)


def test_reduce_on_plateau_leaves_an_improving_run_alone():
    X, y = data(40)
    cb = fastbp.ReduceOnPlateau(patience=1, min_delta=0.0)
    hist = fastbp.MLP(SIZES, dtype="float64").fit(X, y, optimizer=fastbp.SGD(0.01), epochs=6,
                                                  batch_size=None, callbacks=[cb])
    assert all(b < a for a, b in zip(hist.loss, hist.loss[1:]))  # full-batch GD, small step
    assert cb.reductions == [] and hist.lr == [0.01] * 6


# --- gradient diagnostics warnings -----------------------------------------------------------


def layer_grad_norms(net, X, y):
    """Per-layer L2 norm of [dW, db] from the NumPy reference (independent of the kernel)."""
    Y = np.eye(net.n_outputs)[y] if y.ndim == 1 else y
    loss = "cross_entropy" if net.output == "softmax" else "mse"
    _, dWs, dbs = reference.gradients(net.weights, net.biases, net.layer_activations, X, Y, loss)
    return np.array([np.sqrt((dW ** 2).sum() + (db ** 2).sum()) for dW, db in zip(dWs, dbs)])


def test_vanishing_gradient_warns_naming_the_layer():
    sizes = [8] + [16] * 12 + [3]
    net = fastbp.MLP(sizes, activation="sigmoid", init="xavier", dtype="float64", seed=0)
    for W in net.weights:
        W *= 0.3
    X, y = make_data(32, sizes, "softmax", np.float64)[0], np.arange(32) % 3
    norms = layer_grad_norms(net, X, y)
    assert norms[0] < 1e-7 * norms.max() < norms[-1]  # the construction really vanishes at the bottom
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        net.fit(X, y, optimizer=fastbp.SGD(1e-3), epochs=2, batch_size=None)
    messages = [str(w.message) for w in rec if issubclass(w.category, fastbp.GradientWarning)]
    assert "vanishing gradient in layer 1 (W1/b1) at epoch 1: gradient norm" in messages[0]
    top = [l for l in range(len(norms)) if norms[l] >= 1e-6 * norms.max()]
    assert not any(f"layer {l + 1} " in m for m in messages for l in top)  # healthy layers not named
    assert len(messages) == len(set(messages))  # each layer once, not once per epoch
    assert issubclass(fastbp.GradientWarning, RuntimeWarning)


def test_exploding_gradient_warns_naming_the_layer():
    sizes = [5, 10, 10, 2]
    net = fastbp.MLP(sizes, activation="relu", output="identity", dtype="float64", seed=1)
    net.weights[1][...] *= 1e4
    X, Y = make_data(16, sizes, "identity", np.float64)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        net.fit(X, Y, loss="mse", optimizer=fastbp.SGD(1e-12), epochs=1, batch_size=None)
    messages = [str(w.message) for w in rec if issubclass(w.category, fastbp.GradientWarning)]
    norms = layer_grad_norms(net, X, Y)  # parameters barely moved (lr 1e-12)
    exploded = [l + 1 for l in range(3) if norms[l] > 1e3]
    assert exploded == [2, 3] or exploded == [1, 2, 3]
    assert [m.split(" at ")[0] for m in messages] == \
           [f"exploding gradient in layer {l} (W{l}/b{l})" for l in exploded]
    assert all("at epoch 1: gradient norm" in m for m in messages)


def test_gradient_warning_thresholds_are_configurable_and_can_be_switched_off():
    X, y = data(30)
    net = fastbp.MLP(SIZES, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastbp.GradientWarning)
        net.copy().fit(X, y, epochs=3)  # a healthy net: silent with the defaults
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        net.copy().fit(X, y, epochs=3, gradient_warnings=fastbp.GradientMonitor(exploding=1e-9))
    assert sorted(str(w.message)[:32] for w in rec) == \
           [f"exploding gradient in layer {l} (W" for l in (1, 2, 3)]  # each layer once, 3 epochs
    with pytest.warns(fastbp.GradientWarning, match="vanishing"):
        net.copy().fit(X, y, epochs=1, gradient_warnings=fastbp.GradientMonitor(vanishing=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastbp.GradientWarning)
        net.copy().fit(X, y, epochs=1, gradient_warnings=False,
                       optimizer=fastbp.SGD(1.0))


# --- progress ------------------------------------------------------------------------------


def test_progress_bar_is_quiet_without_a_terminal(capsys):
    X, y = data(20)
    fastbp.MLP(SIZES).fit(X, y, epochs=3, verbose=1)  # pytest's stderr is not a TTY
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    fastbp.MLP(SIZES).fit(X, y, epochs=3)
    assert capsys.readouterr() == ("", "")


def test_progress_bar_when_forced_or_on_a_terminal(capsys, monkeypatch):
    X, y = data(20)
    fastbp.MLP(SIZES).fit(X, y, epochs=3, verbose="bar", validation_split=0.25)
    out, err = capsys.readouterr()
    assert out == ""
    assert "3/3" in err and "loss=" in err and "acc=" in err and "val_loss=" in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    fastbp.MLP(SIZES).fit(X, y, epochs=2, verbose=1)
    assert "2/2" in capsys.readouterr().err


def test_verbose_2_prints_one_line_per_epoch(capsys):
    X, y = data(20)
    fastbp.MLP(SIZES).fit(X, y, epochs=4, verbose=2, validation_split=0.25)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("epoch    4/4  loss ") and "val_acc" in lines[-1]


def test_missing_tqdm_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    X, y = data(20)
    net = fastbp.MLP(SIZES)
    before = net.theta.copy()
    with pytest.raises(ImportError, match="pip install"):
        net.fit(X, y, epochs=1, verbose=1)
    np.testing.assert_array_equal(net.theta, before)
    net.fit(X, y, epochs=1, verbose=0)  # fine without tqdm when quiet


# --- plots -----------------------------------------------------------------------------------


def test_history_plot_writes_a_png_with_the_curves(tmp_path):
    X, y = data(40)
    hist = fastbp.MLP(SIZES).fit(X, y, epochs=6, validation_split=0.25, early_stopping=10)
    path = tmp_path / "curves.png"
    fig = hist.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss_ax, acc_ax, grad_ax = fig.axes[:3]
    assert [ax.get_title() for ax in (loss_ax, acc_ax, grad_ax)] == \
           ["loss", "accuracy", "gradient norm per layer"]
    lines = {line.get_label(): line.get_ydata() for line in loss_ax.get_lines()}
    np.testing.assert_array_equal(lines["train"], hist.loss)
    np.testing.assert_array_equal(lines["validation"], hist.val_loss)
    assert grad_ax.get_yscale() == "log" and len(grad_ax.get_lines()) == 3
    np.testing.assert_array_equal(grad_ax.get_lines()[2].get_ydata(), [g[2] for g in hist.grad_norm])


def test_regression_plot_has_no_accuracy_panel(tmp_path):
    X, Y = make_data(20, [3, 4, 1], "identity", np.float64)
    hist = fastbp.MLP([3, 4, 1], output="identity").fit(X, Y, loss="mse", epochs=2)
    fig = hist.plot()
    assert [ax.get_title() for ax in fig.axes] == ["loss", "gradient norm per layer"]
    with pytest.raises(ValueError, match="no epochs"):
        fastbp.History().plot()


def test_missing_matplotlib_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    X, y = data(20)
    hist = fastbp.MLP(SIZES).fit(X, y, epochs=1)
    with pytest.raises(ImportError, match="fastbp\\[plot\\]"):
        hist.plot()


def test_cli_train_plot(tmp_path, capsys):
    from fastbp import cli
    path = tmp_path / "out.png"
    assert cli.main(["train", "--epochs", "2", "--no-reference", "--plot", str(path)]) == 0
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert str(path) in capsys.readouterr().out


# --- dropout ---------------------------------------------------------------------------------

from fastbp import cpu_training  # noqa: E402
from fastbp.kernels import cpu  # noqa: E402

HIDDEN = ["identity", "sigmoid", "tanh", "relu", "leaky_relu"]


def mask_views(buffer, sizes, bmax, rows):
    """Per-hidden-layer (rows, width) views of a flat kernel buffer (layer l at bmax·Σ_{j<l} n_j)."""
    views, offset = [], 0
    for width in sizes[1:-1]:
        views.append(buffer[offset:offset + rows * width].reshape(rows, width))
        offset += bmax * width
    return views


def engine(net, X, Y, optimizer, batch_size, checkpoint=None, seed=0, **extras):
    args = dict(l1=0.0, l2=0.0, clip_norm=0.0, clip_value=0.0)
    args.update(extras)
    return cpu_training.CpuEngine(net, X, Y, fastbp.training.FitState(net.n_params, net.dtype),
                                  batch_size=batch_size, optimizer=optimizer, loss_code=2,
                                  checkpoint=checkpoint, seed=seed, **args)


def test_kernel_drawn_masks_replayed_by_the_reference():
    """One full-batch SGD epoch in the compiled driver; the masks it drew (left in the
    workspace) replayed by the reference give the same parameters."""
    sizes = [6, 20, 15, 3]
    net = fastbp.MLP(sizes, activation="tanh", seed=1, dtype="float64", dropout=[0.25, 0.4])
    X, Y = make_data(30, sizes, "softmax", np.float64, seed=4)
    ref = ReferenceTrainer(net)
    run = engine(net, X, Y, fastbp.SGD(0.5), 30)
    run.train_batches(np.arange(30), 0, 1, 0, 0.5)
    masks = mask_views(run.dropout.masks, sizes, 30, 30)
    for mask, keep in zip(masks, (0.75, 0.6)):
        assert set(np.unique(mask)) == {0.0, 1 / keep}
    _, dWs, dbs = reference.gradients(ref.weights, ref.biases, ref.activations, X, Y, "cross_entropy",
                                      masks=masks)
    for p, g in zip([*ref.weights, *ref.biases], [*dWs, *dbs]):
        p -= 0.5 * g
    assert_close(net.theta, ref.flat(), np.float64)


def test_dropout_keeps_the_expected_activation_and_drops_the_right_fraction():
    sizes = [10, 400, 2]
    net = fastbp.MLP(sizes, activation="sigmoid", seed=0, dtype="float64", dropout=0.3)
    X = np.random.default_rng(1).normal(size=(500, 10))
    work, _ = cpu_training.workspace(net, 500)
    dropout = cpu_training.dropout_bundle(net, 500)
    cpu.python_callable(cpu.forward_step)(cpu_training.network_bundle(net), work, 0, X, dropout, None, 1, False)
    kept = work.acts[:500 * 400].reshape(500, 400)
    dropped = dropout.dacts[:500 * 400].reshape(500, 400)
    assert (dropped == 0).mean() == pytest.approx(0.3, abs=0.01)
    assert dropped.mean() == pytest.approx(kept.mean(), rel=0.01)
    np.testing.assert_array_equal(dropped[dropped != 0], kept[dropped != 0] * (1 / 0.7))


def test_dropout_is_seeded_reproducible_and_off_at_inference(tmp_path):
    X, y = data(60)
    nets = [fastbp.MLP(SIZES, seed=3, dtype="float64", dropout=0.4) for _ in range(3)]
    nets[0].fit(X, y, epochs=3, batch_size=16)
    nets[1].fit(X, y, epochs=3, batch_size=16)
    nets[2].fit(X, y, epochs=3, batch_size=16, seed=99)
    np.testing.assert_array_equal(nets[0].theta, nets[1].theta)
    assert not np.array_equal(nets[0].theta, nets[2].theta)
    plain = fastbp.MLP(SIZES, seed=3, dtype="float64")
    plain.fit(X, y, epochs=3, batch_size=16)
    assert not np.array_equal(plain.theta, nets[0].theta)  # dropout did something in training
    # inference, evaluation, gradients and gradcheck see no dropout
    twin = fastbp.MLP(SIZES, seed=3, dtype="float64")
    twin.theta[...] = nets[0].theta
    np.testing.assert_array_equal(nets[0].predict_proba(X), twin.predict_proba(X))
    assert nets[0].evaluate(X, y) == twin.evaluate(X, y)
    np.testing.assert_array_equal(nets[0].flat_gradient(X, y)[1], twin.flat_gradient(X, y)[1])
    assert fastbp.gradcheck(nets[0], X[:5], y[:5]).passed
    # split training with dropout equals straight training (masks seeded per global epoch)
    half = fastbp.MLP(SIZES, seed=3, dtype="float64", dropout=0.4)
    half.fit(X, y, epochs=1, batch_size=16)
    half.save(tmp_path / "d.npz")
    resumed = fastbp.MLP.load(tmp_path / "d.npz")
    assert resumed.dropout == [0.4, 0.4]
    resumed.fit(X, y, epochs=2, batch_size=16, warm_start=True)
    np.testing.assert_array_equal(resumed.theta, nets[0].theta)


@pytest.mark.parametrize("dropout,match", [(1.0, "dropout"), (-0.1, "dropout"), ([0.1], "2 hidden"),
                                           (True, "dropout"), ("0.2", "dropout")])
def test_bad_dropout_raises(dropout, match):
    with pytest.raises(ValueError, match=match):
        fastbp.MLP(SIZES, dropout=dropout)


# --- gradient checkpointing ------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", [1, 2, 3, True, 10])
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_checkpointed_training_is_bitwise_identical(checkpoint, activation):
    sizes = [9, 13, 8, 11, 7, 10, 4]
    X, y = make_data(37, sizes, "softmax", np.float64, seed=3)  # 37 = 3·10 + 7: partial last batch
    plain = fastbp.MLP(sizes, activation=activation, seed=2, dtype="float64")
    h_plain = plain.fit(X, y, optimizer=fastbp.Adam(0.01), epochs=3, batch_size=10)
    ckpt = fastbp.MLP(sizes, activation=activation, seed=2, dtype="float64")
    h_ckpt = ckpt.fit(X, y, optimizer=fastbp.Adam(0.01), epochs=3, batch_size=10, checkpoint=checkpoint)
    np.testing.assert_array_equal(ckpt.theta, plain.theta)
    assert h_ckpt.loss == h_plain.loss and h_ckpt.accuracy == h_plain.accuracy


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_checkpointed_gradient_matches_plain_and_reference(k):
    sizes = [5, 8, 8, 8, 8, 8, 3]
    net = fastbp.MLP(sizes, activation="tanh", seed=0, dtype="float64")
    X, Y = make_data(9, sizes, "softmax", np.float64, seed=1)
    grads, works = [], []
    for segments in (None, cpu_training.checkpoint_segments(6, k)):
        work, checkpoint = cpu_training.workspace(net, 9, segments)
        state = cpu_training._GradientState(np.zeros(net.n_params))
        cpu.python_callable(cpu.batch_pass)(
            cpu_training.network_bundle(net, 2), cpu_training.optimizer_bundle(net, state, 0),
            work, X, Y, None, None, checkpoint)
        grads.append(state.grad)
        works.append((work, checkpoint))
    np.testing.assert_array_equal(grads[1], grads[0])
    _, dWs, dbs = reference.gradients(net.weights, net.biases, net.layer_activations, X, Y, "cross_entropy")
    assert_close(grads[1], np.concatenate([np.concatenate([dW.ravel(), db]) for dW, db in zip(dWs, dbs)]),
                 np.float64)
    (plain_work, _), (work, checkpoint) = works
    if 1 < k < 6:  # the activation cache really is smaller
        assert work.zs.size + checkpoint.kept_z.size < plain_work.zs.size


def test_checkpoint_segments():
    from fastbp.cpu_training import checkpoint_segments
    assert checkpoint_segments(17, 4) == [0, 4, 8, 12, 16]
    assert checkpoint_segments(17, True) == [0, 5, 10, 15]
    assert checkpoint_segments(3, 10) == [0]


@pytest.mark.parametrize("kwargs,match", [(dict(checkpoint=0), "checkpoint"), (dict(checkpoint=1.5), "checkpoint"),
                                          (dict(checkpoint="yes"), "checkpoint")])
def test_bad_checkpoint_raises(kwargs, match):
    X, y = data(10)
    with pytest.raises(ValueError, match=match):
        fastbp.MLP(SIZES).fit(X, y, **kwargs)


@pytest.mark.slow
def test_features_example_runs_quick(tmp_path, capsys):
    import runpy
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "features.py")
    module = runpy.run_path(example)
    module["main"](["--quick", "--plot", str(tmp_path / "c.png")])
    assert "all feature checks passed" in capsys.readouterr().out
    assert (tmp_path / "c.png").exists()


# --- batch normalization ------------------------------------------------------------------------

BN_EPS = 1e-5


def flat_bn(weights, biases, gammas):
    """theta order for a BN network: per layer W, b (β for BN layers), then γ if any."""
    parts = []
    for W, b, g in zip(weights, biases, gammas):
        parts += [W.ravel(), b] + ([g] if g is not None else [])
    return np.concatenate(parts)


def test_batchnorm_layout_and_initial_state():
    net = fastbp.MLP([4, 6, 5, 3], batchnorm=True)
    assert net.n_params == (4 * 6 + 6 + 6) + (6 * 5 + 5 + 5) + (5 * 3 + 3)
    assert [g is None for g in net.gammas] == [False, False, True]
    assert all((g == 1).all() for g in net.gammas[:2])
    assert net.gammas[0].base is net.theta or np.shares_memory(net.gammas[0], net.theta)
    assert net.bn_running.shape == (2 * 14,) and (net.bn_running[:14] == 0).all() and (net.bn_running[14:] == 1).all()


@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                         ("identity", "mse")])
def test_batchnorm_gradient_matches_reference(activation, output, loss, dtype):
    sizes = [7, 12, 9, 4]
    net = fastbp.MLP(sizes, activation=activation, output=output, init="xavier", seed=5, dtype=dtype,
                     batchnorm=True)
    rng = np.random.default_rng(1)
    for g, b in zip(net.gammas[:2], net.biases[:2]):  # move γ, β off their initial values
        g[...] = rng.uniform(0.5, 1.5, g.shape)
        b[...] = rng.normal(0, 0.3, b.shape)
    X, Y = make_data(13, sizes, output, dtype, seed=2)
    running = net.bn_running.copy()
    value, grad = net.flat_gradient(X, Y, loss)
    ref_value, dWs, dbs, dgs = reference.gradients_bn(net.weights, net.biases, net.gammas, net.layer_activations,
                                                      X, Y, loss, BN_EPS)
    assert_close(value, ref_value, dtype, "loss")
    assert_close(grad, flat_bn(dWs, dbs, dgs), dtype, "gradient")
    np.testing.assert_array_equal(net.bn_running, running)  # gradients leave the running statistics alone


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "leaky_relu"])
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                         ("identity", "mse")])
def test_batchnorm_gradcheck(activation, output, loss):
    sizes = [4, 6, 5, 3]
    net = fastbp.MLP(sizes, activation=activation, output=output, init="xavier", seed=2, batchnorm=True)
    X, Y = make_data(8, sizes, output, np.float64, seed=3)
    report = fastbp.gradcheck(net, X, Y, loss=loss, l2=1e-2)
    assert report.passed and report.max_error < 1e-6, str(report)
    assert set(report.errors) == {"W1", "b1", "g1", "W2", "b2", "g2", "W3", "b3"}


def test_batchnorm_gradcheck_identity_activation_has_an_exact_invariance():
    """With an identity hidden activation the next BN layer cancels any shift of β1: its
    true gradient is 0, the analytic one is ~0, and only rounding noise is left in the
    numeric one, so the relative error is meaningless there; elsewhere it passes."""
    sizes = [4, 6, 5, 3]
    net = fastbp.MLP(sizes, activation="identity", init="xavier", seed=2, batchnorm=True, dtype="float64")
    X, Y = make_data(8, sizes, "softmax", np.float64, seed=3)
    _, grad = net.flat_gradient(X, Y)
    b1 = slice(net.layout[0, 3], net.layout[0, 3] + 6)
    assert np.abs(grad[b1]).max() < 1e-15
    report = fastbp.gradcheck(net, X, Y)
    assert max(err for name, err in report.errors.items() if name != "b1") < 1e-6, str(report)


def reference_bn_training(net, X, Y, perm_batches, lr, momentum):
    """SGD with BN in the NumPy reference: returns (flat parameters, running mean, running var)."""
    weights = [W.copy() for W in net.weights]
    biases = [b.copy() for b in net.biases]
    gammas = [None if g is None else g.copy() for g in net.gammas]
    total = sum(net.sizes[1:])
    run_mean, run_var = np.zeros(total), np.ones(total)
    offsets = np.cumsum([0] + net.sizes[1:])
    for idx in perm_batches:
        Xb, Yb = X[idx], Y[idx]
        _, _, caches = reference.forward_bn(weights, biases, gammas, net.layer_activations, Xb, BN_EPS)
        for l, cache in enumerate(caches):
            if cache is not None:
                sl = slice(offsets[l], offsets[l + 1])
                B = len(idx)
                run_mean[sl] = momentum * run_mean[sl] + (1 - momentum) * cache[2]
                run_var[sl] = momentum * run_var[sl] + (1 - momentum) * cache[3] * B / (B - 1)
        _, dWs, dbs, dgs = reference.gradients_bn(weights, biases, gammas, net.layer_activations, Xb, Yb,
                                                  "cross_entropy", BN_EPS)
        for p, g in zip(weights + biases + [g for g in gammas if g is not None],
                        dWs + dbs + [g for g in dgs if g is not None]):
            p -= lr * g
    return flat_bn(weights, biases, gammas), run_mean, run_var, (weights, biases, gammas)


def test_batchnorm_training_running_statistics_and_inference_match_reference(dtype):
    sizes = [6, 10, 8, 3]
    net = fastbp.MLP(sizes, activation="relu", seed=4, dtype=dtype, batchnorm=True, bn_momentum=0.8)
    X, Y = make_data(26, sizes, "softmax", dtype, seed=5)
    batches = [np.arange(s, min(s + 8, 26)) for s in range(0, 26, 8)] * 3  # 3 epochs, partial last batch
    flat, run_mean, run_var, params = reference_bn_training(net, X, Y, batches, 0.1, 0.8)
    net.fit(X, Y, optimizer=fastbp.SGD(0.1), epochs=3, batch_size=8, shuffle=False)
    assert_close(net.theta, flat, dtype, "parameters")
    used = slice(0, 18)  # the two BN layers' units (of 10 + 8 + 3)
    assert_close(net.bn_running[:21][used], run_mean[used], dtype, "running mean")
    assert_close(net.bn_running[21:][used], run_var[used], dtype, "running variance")
    assert not np.allclose(run_var[used], 1)  # the statistics did move
    # inference uses the running statistics, not the batch's: one row alone gives the same output
    running = [(run_mean[a:b], run_var[a:b]) for a, b in ((0, 10), (10, 18), (18, 21))]
    _, acts, _ = reference.forward_bn(*params, net.layer_activations, X, BN_EPS, running=running)
    assert_close(net.predict_proba(X), acts[-1], dtype, "inference")
    assert_close(net.predict_proba(X[:1])[0], net.predict_proba(X)[0], dtype, "one row alone")
    Yl = Y.argmax(axis=1)
    assert net.evaluate(X, Yl)["accuracy"] == (acts[-1].argmax(axis=1) == Yl).mean()


def test_batchnorm_trains_digits_and_round_trips(tmp_path):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    net = fastbp.MLP([64, 64, 32, 10], seed=0, batchnorm=True)
    hist = net.fit(X[:1400], y[:1400], epochs=8, batch_size=32, validation_data=(X[1400:], y[1400:]),
                   early_stopping=3)
    assert net.evaluate(X[1400:], y[1400:])["accuracy"] > 0.88
    assert hist.val_loss and hist.loss[-1] < hist.loss[0]
    net.save(tmp_path / "bn.npz")
    other = fastbp.MLP.load(tmp_path / "bn.npz")
    assert other.batchnorm and other.bn_momentum == 0.9
    np.testing.assert_array_equal(other.bn_running, net.bn_running)
    np.testing.assert_array_equal(other.predict_proba(X[1400:]), net.predict_proba(X[1400:]))
    copy = net.copy(dtype="float64")
    np.testing.assert_array_equal(copy.bn_running, net.bn_running)


@pytest.mark.parametrize("make,error,match", [
    (lambda: fastbp.MLP(SIZES, batchnorm="yes"), TypeError, "batchnorm"),
    (lambda: fastbp.MLP(SIZES, batchnorm=True, bn_momentum=1.0), ValueError, "bn_momentum"),
])
def test_bad_batchnorm_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_early_stopping_restores_batchnorm_running_statistics():
    X, y, Xv, yv = overfitting_setup()
    kwargs = dict(optimizer=fastbp.Adam(0.02), batch_size=10, validation_data=(Xv, yv))
    net = fastbp.MLP(SIZES, dtype="float64", seed=0, batchnorm=True)
    hist = net.fit(X, y, epochs=50, early_stopping=2, **kwargs)
    assert hist.stopped_early and hist.best_epoch < hist.epochs - 1
    again = fastbp.MLP(SIZES, dtype="float64", seed=0, batchnorm=True)
    again.fit(X, y, epochs=hist.best_epoch + 1, **kwargs)
    np.testing.assert_array_equal(net.theta, again.theta)
    np.testing.assert_array_equal(net.bn_running, again.bn_running)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths=st.lists(st.sampled_from([1, 3, 8, 17]), min_size=1, max_size=7),
       k=st.integers(1, 8), n=st.integers(1, 30), batch_size=st.integers(1, 33),
       activation=st.sampled_from(HIDDEN), output=st.sampled_from(["softmax", "sigmoid", "identity"]))
def test_checkpointing_is_bitwise_on_random_architectures(widths, k, n, batch_size, activation, output):
    sizes = [5, *widths, 3]
    loss = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "identity": "mse"}[output]
    X, Y = make_data(n, sizes, output, np.float64, seed=n)
    nets = [fastbp.MLP(sizes, activation=activation, output=output, seed=1, dtype="float64") for _ in range(2)]
    kwargs = dict(loss=loss, optimizer=fastbp.Adam(0.01), epochs=2, batch_size=batch_size,
                  gradient_warnings=False)
    h0 = nets[0].fit(X, Y, **kwargs)
    h1 = nets[1].fit(X, Y, checkpoint=k, **kwargs)
    np.testing.assert_array_equal(nets[0].theta, nets[1].theta)
    assert h0.loss == h1.loss
