"""What a new user meets: notebooks (progress, inline learning curves), early stopping's
message, the validation split on sorted data, string labels, DataFrame column names,
the metadata save keeps, and the hints in warnings and errors."""

import sys
import types
import warnings

import numpy as np
import pytest

import fastbp
from fastbp.callbacks import DEFAULT_PATIENCE, GradientMonitor, GradientWarning
from fastbp.data import Standardizer

SIZES = [3, 5, 3]


def sorted_data(n=30, seed=0):
    """Rows sorted by class, as in iris: the last rows are all class 2."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    return rng.normal(size=(n, 3)) + y[:, None], y


class FakeFrame:
    """Just enough of a pandas DataFrame: ``columns`` and ``__array__``."""

    def __init__(self, values, columns):
        self.values, self.columns = np.asarray(values), list(columns)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __getitem__(self, columns):
        return FakeFrame(self.values[:, [self.columns.index(c) for c in columns]], columns)


# --- notebooks ----------------------------------------------------------------------------------


@pytest.fixture
def jupyter_kernel(monkeypatch):
    """An IPython kernel as ``training._in_jupyter_kernel`` sees it, without ipywidgets."""
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)


def test_verbose_1_in_a_notebook_without_widgets_prints_one_line_per_epoch(jupyter_kernel, capsys):
    X, y = sorted_data()
    fastbp.MLP(SIZES).fit(X, y, epochs=3, verbose=1, validation_split=0.3, validation_shuffle="stratify")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("epoch    3/3  loss ") and "val_acc" in lines[-1]


def test_verbose_1_outside_notebooks_and_terminals_stays_quiet(capsys):
    X, y = sorted_data()
    fastbp.MLP(SIZES).fit(X, y, epochs=2, verbose=1)
    assert capsys.readouterr() == ("", "")


def test_history_renders_inline_as_png():
    pytest.importorskip("matplotlib")
    X, y = sorted_data()
    hist = fastbp.MLP(SIZES).fit(X, y, epochs=2, validation_split=0.3, validation_shuffle=True)
    assert hist._repr_png_()[:4] == b"\x89PNG"
    assert hist.plot()._repr_png_()[:4] == b"\x89PNG"  # the figure shows itself too
    assert fastbp.History()._repr_png_() is None


# --- early stopping ---------------------------------------------------------------------------


def test_early_stopping_true_means_the_default_patience_and_says_so(capsys):
    X, y = sorted_data()
    # a learning rate this large makes the validation loss stop improving at once
    hist = fastbp.MLP(SIZES, seed=1).fit(X, y, epochs=40, optimizer=fastbp.SGD(5.0), early_stopping=True,
                                         verbose=2, validation_split=0.3, validation_shuffle="stratify",
                                         gradient_warnings=False)
    assert hist.stopped_early and hist.epochs == hist.best_epoch + 1 + DEFAULT_PATIENCE
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == hist.epochs + 1
    assert lines[-1] == (f"early stopping: no val_loss improvement for {DEFAULT_PATIENCE} epochs, stopped after "
                         f"epoch {hist.epochs}; best val_loss {min(hist.val_loss):.4g} at epoch "
                         f"{hist.best_epoch + 1}, restored epoch {hist.best_epoch + 1}'s parameters")


def test_early_stopping_is_quiet_when_quiet(capsys):
    X, y = sorted_data()
    hist = fastbp.MLP(SIZES, seed=1).fit(X, y, epochs=40, optimizer=fastbp.SGD(5.0), early_stopping=2,
                                         gradient_warnings=False)
    assert hist.stopped_early and capsys.readouterr() == ("", "")


def test_early_stopping_rejects_nonsense():
    X, y = sorted_data()
    with pytest.raises(ValueError, match="early_stopping"):
        fastbp.MLP(SIZES).fit(X, y, early_stopping=0)


# --- the validation split ----------------------------------------------------------------------


def test_last_rows_of_sorted_data_warn_about_one_class():
    X, y = sorted_data()
    with pytest.warns(UserWarning, match="hold one class only.*validation_shuffle='stratify'"):
        fastbp.MLP(SIZES).fit(X, y, epochs=1, validation_split=0.3)


@pytest.mark.parametrize("how", [True, "stratify"])
def test_shuffled_and_stratified_splits(how):
    X, y = sorted_data(n=60)
    net = fastbp.MLP(SIZES, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net._validation(X, np.eye(3)[y], None, None, 0.3, 2, how, seed=0)  # no one-class warning
    Xt, Yt, _, (Xv, Yv, _) = net._validation(X, np.eye(3)[y], None, None, 0.3, 2, how, seed=0)
    assert len(Xv) == 18 and len(Xt) == 42
    rows = {tuple(r) for r in X}
    assert {tuple(r) for r in Xt} | {tuple(r) for r in Xv} == rows and not ({tuple(r) for r in Xt} &
                                                                            {tuple(r) for r in Xv})
    if how == "stratify":
        assert np.bincount(Yv.argmax(axis=1)).tolist() == [6, 6, 6]
    again = net._validation(X, np.eye(3)[y], None, None, 0.3, 2, how, seed=0)[3][0]
    np.testing.assert_array_equal(again, Xv)  # seeded


def test_validation_shuffle_is_checked():
    X, y = sorted_data()
    with pytest.raises(ValueError, match="validation_shuffle"):
        fastbp.MLP(SIZES).fit(X, y, validation_split=0.3, validation_shuffle="random")
    with pytest.raises(ValueError, match="stratify"):
        fastbp.MLP([3, 4, 1], output="identity").fit(X, y.astype(float), validation_split=0.3,
                                                     validation_shuffle="stratify")


# --- labels, names and what save keeps ---------------------------------------------------------


def test_string_labels_get_a_hint():
    X, _ = sorted_data()
    with pytest.raises(TypeError, match="LabelEncoder.*fastbp.sklearn.MLPClassifier"):
        fastbp.MLP(SIZES).fit(X, np.array(["a", "b", "c"] * 10))


def test_dataframe_column_names_are_kept_and_checked(tmp_path):
    X, y = sorted_data()
    frame = FakeFrame(X, ["age", "height", "weight"])
    net = fastbp.MLP(SIZES)
    net.fit(frame, y, epochs=1)
    assert net.feature_names == ["age", "height", "weight"]
    net.save(tmp_path / "m.npz")
    loaded = fastbp.MLP.load(tmp_path / "m.npz")
    assert loaded.feature_names == ["age", "height", "weight"]
    np.testing.assert_array_equal(loaded.predict(frame), net.predict(X))
    reordered = frame[["height", "age", "weight"]]
    with pytest.raises(ValueError, match="another order.*X\\[net.feature_names\\]"):
        loaded.predict(reordered)
    with pytest.raises(ValueError, match="missing \\['weight'\\], unexpected \\['mass'\\]"):
        loaded.evaluate(FakeFrame(X, ["age", "height", "mass"]), y)
    np.testing.assert_array_equal(loaded.predict(reordered[loaded.feature_names]), net.predict(X))


def test_save_keeps_classes_and_standardizer(tmp_path):
    X, y = sorted_data()
    X = X * [1, 100, 1e-3] + [0, 500, 0]
    net = fastbp.MLP(SIZES, dtype="float64")
    net.standardizer = Standardizer.fit(X)
    net.classes = np.array(["setosa", "versicolor", "virginica"])
    net.fit(X, y, epochs=2)
    net.save(tmp_path / "m.npz")
    loaded = fastbp.MLP.load(tmp_path / "m.npz")
    assert list(loaded.classes) == list(net.classes)
    np.testing.assert_array_equal(loaded.standardizer.mean, X.mean(axis=0))
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))
    # the standardisation is really applied: the same parameters on raw X differ
    plain = loaded.copy()
    plain.standardizer = None
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    np.testing.assert_allclose(plain.predict_proba(Z), net.predict_proba(X), rtol=1e-12)


def test_metadata_of_the_wrong_size_is_a_clear_load_error(tmp_path):
    import json
    net = fastbp.MLP(SIZES)
    net.classes = np.array(["a", "b", "c"])
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as archive:
        arrays = dict(archive)
    arrays["metadata"] = np.array(json.dumps({"feature_names": ["only_one"], "classes": None}))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="not a valid fastbp model file: metadata: 1 feature names"):
        fastbp.MLP.load(tmp_path / "bad.npz")


# --- hints -------------------------------------------------------------------------------------


def test_exploding_gradient_warning_suggests_standardising():
    with pytest.warns(GradientWarning, match="standardise the features"):
        GradientMonitor(exploding=1.0).check(np.array([5.0, 0.5]), 0)


def test_no_gpu_message_names_the_extra_and_the_simulator(monkeypatch):
    from fastbp import cuda_training
    cuda = pytest.importorskip("numba.cuda")
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    reason = cuda_training._unavailable_reason()
    assert 'pip install "fastbp[cuda]"' in reason and "testing tool" in reason


def test_early_stopping_says_when_it_restored_without_stopping(capsys):
    from fastbp.training import FitContext, FitState, History
    net = fastbp.MLP(SIZES)
    stopper = fastbp.EarlyStopping(patience=3, verbose=True)
    stopper.on_train_begin(net, FitContext(FitState(net.n_params, net.dtype), fastbp.Adam(), 4, True))
    history = History()
    for epoch, val in enumerate([0.5, 0.3, 0.4, 0.35]):  # best at epoch 2, never 3 bad epochs in a row
        history.record(loss=1.0, accuracy=0.5, lr=1e-3, seconds=1.0, samples_per_second=1.0,
                       grad_norm=[1.0], update_ratio=[1.0])
        history.val_loss.append(val)
        assert not stopper.on_epoch_end(net, epoch, history)
    stopper.on_train_end(net, history)
    assert capsys.readouterr().out == ("early stopping: ran every epoch; best val_loss 0.3 at epoch 2, "
                                       "restored epoch 2's parameters\n")
