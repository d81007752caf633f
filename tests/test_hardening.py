"""Issue 11: defects found by adversarial testing (hostile model files, bad targets,
schedules, threads, pickling, file modes) and the smaller argument checks.
Each test names the defect it pins down."""

import copy
import io
import json
import os
import pickle
import stat
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import persist

SIZES = [5, 7, 3]


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZES[0])), rng.integers(0, SIZES[-1], n)


def fitted(optimizer="adam", **kwargs):
    X, y = data()
    net = fastbp.MLP(SIZES, dtype="float64", **kwargs)
    net.fit(X, y, optimizer=optimizer, epochs=2, batch_size=8)
    return net


def archive_members(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_archive(path, arrays, extra=None):
    """An .npz like ``save`` writes, from ``arrays``, plus raw ``extra`` entries."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            zf.writestr(name + ".npy", buffer.getvalue())
        for name, raw in (extra or {}).items():
            zf.writestr(name, raw)


def with_header(arrays, **fields):
    header = json.loads(str(arrays["header"][()]))
    header.update(fields)
    return {**arrays, "header": np.array(json.dumps(header))}


def npy_header(shape, dtype="<f8"):
    """The bytes of a .npy header announcing ``shape`` (no data follows)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def assert_rejected(path, match):
    with pytest.raises(ValueError, match=match) as info:
        fastbp.MLP.load(path)
    assert os.path.basename(path) in str(info.value)


# --- 1. the header's architecture is checked against θ before anything is built ---------


@pytest.mark.parametrize("sizes", [[3000, 3000], [2 ** 40, 2 ** 40], [2 ** 62, 2 ** 62, 2]])
def test_1_load_checks_sizes_against_theta_before_building(tmp_path, monkeypatch, sizes):
    net = fitted()
    path = tmp_path / "forged.npz"
    net.save(path)
    write_archive(path, with_header(archive_members(path), sizes=sizes))

    def never(*args, **kwargs):
        raise AssertionError("a network was built from an unchecked header")

    monkeypatch.setattr(fastbp.network, "init_weights", never)
    assert_rejected(str(path), "theta")


# --- 2. only the members used are read, each after its .npy header is checked -----------


def test_2_load_ignores_an_extra_member_declaring_a_huge_shape(tmp_path):
    net = fitted()
    path = tmp_path / "extra.npz"
    net.save(path)
    write_archive(path, archive_members(path), extra={"junk.npy": npy_header((10 ** 12,))})
    other = fastbp.MLP.load(path)
    np.testing.assert_array_equal(other.theta, net.theta)


def test_2_load_does_not_inflate_an_unused_deflated_member(tmp_path):
    net = fitted()
    path = tmp_path / "bomb.npz"
    net.save(path)
    arrays = archive_members(path)
    write_archive(path, arrays)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.npy", "w") as f:
        f.write(npy_header((8 << 20,)))
        chunk = bytes(1 << 20)
        for _ in range(64):
            f.write(chunk)
    assert os.path.getsize(path) < 1 << 20  # 64 MiB of zeros in well under 1 MiB
    tracemalloc.start()
    try:
        fastbp.MLP.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_2_a_used_member_announcing_more_data_than_it_holds_is_rejected_unread(tmp_path):
    net = fastbp.MLP([1000, 1000], dtype="float64")
    path = tmp_path / "liar.npz"
    net.save(path)
    arrays = archive_members(path)
    theta = arrays.pop("theta")
    write_archive(path, arrays, extra={"theta.npy": npy_header(theta.shape) + b"\0" * 64})
    assert_rejected(str(path), "theta")


def test_random_bytes_file_is_named_without_suggesting_pickle(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="noise.npz") as info:
        fastbp.MLP.load(path)
    assert "pickle" not in str(info.value)


# --- 3. invalid state in a file is refused ------------------------------------------------


@pytest.mark.parametrize("change,match", [
    (lambda a: {"state1": np.where(np.arange(a["state1"].size) == 3, np.nan, a["state1"])}, "state1"),
    (lambda a: {"state2": -np.abs(a["state2"]) - 1}, "second moment"),
    (lambda a: {"state2": np.full_like(a["state2"], np.inf)}, "state2"),
    (lambda a: with_header(a, lr_scale=float("inf")), "lr_scale"),
    (lambda a: with_header(a, lr_scale=0.0), "lr_scale"),
    (lambda a: with_header(a, format_version=0), "format version"),
    (lambda a: with_header(a, format_version=True), "format_version"),
    (lambda a: with_header(a, epochs_done=-1), "epoch"),
])
def test_3_load_refuses_invalid_optimizer_state(tmp_path, change, match):
    net = fitted("adam")
    path = tmp_path / "state.npz"
    net.save(path)
    arrays = archive_members(path)
    write_archive(path, {**arrays, **change(arrays)})
    assert_rejected(str(path), match)


def test_3_load_refuses_negative_rmsprop_moment(tmp_path):
    net = fitted(fastbp.RMSprop(0.01))
    path = tmp_path / "rms.npz"
    net.save(path)
    arrays = archive_members(path)
    write_archive(path, {**arrays, "state1": arrays["state1"] - 1})
    assert_rejected(str(path), "second moment")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_3_load_refuses_non_finite_batchnorm_statistics(tmp_path, value):
    X, y = data()
    net = fastbp.MLP(SIZES, dtype="float64", batchnorm=True)
    net.fit(X, y, epochs=1, batch_size=8)
    path = tmp_path / "bn.npz"
    net.save(path)
    arrays = archive_members(path)
    running = arrays["bn_running"].copy()
    running[1] = value
    write_archive(path, {**arrays, "bn_running": running})
    assert_rejected(str(path), "bn_running")


# --- 4. targets are checked like features --------------------------------------------------


def test_4_complex_targets_are_refused():
    X = np.ones((4, 2))
    net = fastbp.MLP([2, 1], output="identity", dtype="float64")
    with pytest.raises(TypeError, match="y must be real"):
        net.fit(X, np.ones(4) + 1j, epochs=1)


def test_4_targets_are_finite_after_the_cast():
    X = np.ones((4, 2))
    net = fastbp.MLP([2, 1], output="identity")  # float32
    before = net.theta.copy()
    y = np.array([0.0, 1.0, 1e39, 2.0])
    with pytest.raises(ValueError, match="overflows float32"):
        net.fit(X, y, epochs=1)
    with pytest.raises(ValueError, match="overflows float32"):
        net.evaluate(X, y)
    with pytest.raises(ValueError, match="overflows float32"):
        net.fit(X, y.reshape(-1, 1), epochs=1)
    np.testing.assert_array_equal(net.theta, before)


def test_sparse_input_is_named_sparse():
    import scipy.sparse
    net = fastbp.MLP([3, 2])
    with pytest.raises(TypeError, match="sparse"):
        net.predict(scipy.sparse.csr_matrix(np.eye(3)))


# --- 6. the learning rate a schedule returns is checked each epoch ----------------------


@pytest.mark.parametrize("schedule", [lambda e, lr0: -lr0, lambda e, lr0: float("nan"),
                                      lambda e, lr0: lr0 if e < 1 else 0.0, lambda e, lr0: None])
def test_6_schedule_returning_a_bad_rate_raises_naming_schedule_and_epoch(schedule):
    X, y = data()
    net = fastbp.MLP(SIZES, dtype="float64")
    with pytest.raises(ValueError, match=r"schedule .* for epoch \d") as info:
        net.fit(X, y, optimizer=fastbp.SGD(0.1), epochs=3, schedule=schedule)
    assert "lambda" in str(info.value)


def test_6_a_numpy_rate_from_a_schedule_is_accepted():
    X, y = data()
    net = fastbp.MLP(SIZES, dtype="float64")
    history = net.fit(X, y, optimizer=fastbp.SGD(0.1), epochs=2, schedule=lambda e, lr0: np.float32(lr0 / 2))
    assert history.lr == [np.float32(0.05)] * 2


# --- 8. one network, two threads -----------------------------------------------------------


def test_8_fitting_a_network_while_it_is_being_fitted_raises():
    X, y = data()
    net = fastbp.MLP(SIZES, dtype="float64")
    errors = []

    def second_fit(net_, epoch, history):
        def run():
            try:
                net_.fit(X, y, epochs=1)
            except RuntimeError as exc:
                errors.append(exc)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    history = net.fit(X, y, epochs=2, callbacks=[second_fit])
    assert len(errors) == 2 and "already being fitted" in str(errors[0])
    assert history.epochs == 2 and net.fit_state.epochs_done == 2
    net.fit(X, y, epochs=1, warm_start=True)  # the lock is released afterwards
    assert net.fit_state.epochs_done == 3


def test_8_two_networks_in_two_threads_equal_sequential():
    X, y = data(200)
    kwargs = {"epochs": 3, "batch_size": 16, "optimizer": fastbp.Adam(0.01)}
    sequential = [fastbp.MLP(SIZES, seed=s) for s in (1, 2)]
    for net in sequential:
        net.fit(X, y, **kwargs)
    parallel = [fastbp.MLP(SIZES, seed=s) for s in (1, 2)]
    threads = [threading.Thread(target=net.fit, args=(X, y), kwargs=kwargs) for net in parallel]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(sequential, parallel):
        np.testing.assert_array_equal(a.theta, b.theta)


# --- 9. pickle and deepcopy keep weights / biases / gammas views of theta ------------------


@pytest.mark.parametrize("duplicate", [lambda n: pickle.loads(pickle.dumps(n)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_9_copies_keep_the_views(duplicate, batchnorm):
    X, y = data()
    net = fastbp.MLP(SIZES, dtype="float64", batchnorm=batchnorm)
    net.fit(X, y, epochs=1, batch_size=8)
    other = duplicate(net)
    assert not np.shares_memory(other.theta, net.theta)
    np.testing.assert_array_equal(other.theta, net.theta)
    views = [*other.weights, *other.biases, *(g for g in other.gammas if g is not None)]
    assert len(views) == 4 + (1 if batchnorm else 0)
    assert all(np.shares_memory(v, other.theta) for v in views)
    other.weights[0][0, 0] = 123.0
    assert other.theta[0] == 123.0
    other.fit(X, y, epochs=1, batch_size=8, warm_start=True)
    np.testing.assert_array_equal(other.weights[-1].ravel(), other.theta[other.layout[-1, 2]:other.layout[-1, 3]])
    assert other.fit_state.epochs_done == 2


# --- 10. file modes and stale temporary files ----------------------------------------------


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def test_10_save_respects_the_umask(tmp_path, umask):
    net = fastbp.MLP([2, 2])
    umask(0o077)
    net.save(tmp_path / "private.npz")
    assert stat.S_IMODE(os.stat(tmp_path / "private.npz").st_mode) == 0o600
    umask(0o022)
    net.save(tmp_path / "shared.npz")
    assert stat.S_IMODE(os.stat(tmp_path / "shared.npz").st_mode) == 0o644


def test_10_save_keeps_an_existing_files_mode(tmp_path, umask):
    net = fastbp.MLP([2, 2])
    path = tmp_path / "model.npz"
    net.save(path)
    os.chmod(path, 0o600)
    net.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o640)
    net.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_10_save_removes_stale_temporaries_of_dead_processes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = persist._host()
    stale = tmp_path / f".fastbp-{host}-{dead.pid}-0123abcd.tmp"
    alive = tmp_path / f".fastbp-{host}-{os.getpid()}-4567ef.tmp"  # a save running now
    foreign = tmp_path / f".fastbp-otherhost-{dead.pid}-89ab.tmp"  # another machine's: not ours to judge
    for p in (stale, alive, foreign):
        p.write_bytes(b"partial")
    fastbp.MLP([2, 2]).save(tmp_path / "model.npz")
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, foreign.name, "model.npz"])


def test_10_temporary_file_name_carries_host_and_pid(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    fastbp.MLP([2, 2]).save(tmp_path / "m.npz")
    assert seen[0].startswith(f".fastbp-{persist._host()}-{os.getpid()}-") and seen[0].endswith(".tmp")


# --- smaller things ----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"sizes": None}, "sizes"),
    ({"sizes": [3, 4, 2], "activation": None}, "activation"),
    ({"sizes": [3, 4, 2], "dropout": "x"}, "dropout"),
    ({"sizes": [3, 4, 2], "dtype": None}, "dtype"),
    ({"sizes": [3, 2], "dropout": 0.5}, "hidden layer"),
])
def test_constructor_messages_name_the_parameter(kwargs, match):
    sizes = kwargs.pop("sizes")
    with pytest.raises((TypeError, ValueError), match=match):
        fastbp.MLP(sizes, **kwargs)


def test_dropout_none_means_no_dropout():
    assert fastbp.MLP([3, 4, 2], dropout=None).dropout == [0.0]


def test_fit_argument_checks_name_the_parameter():
    X, y = data()
    net = fastbp.MLP(SIZES)
    before = net.theta.copy()
    with pytest.raises(TypeError, match="warm_start"):
        net.fit(X, y, epochs=1, warm_start="no")
    with pytest.raises(TypeError, match="callbacks"):
        net.fit(X, y, epochs=1, callbacks=lambda *a: None)
    np.testing.assert_array_equal(net.theta, before)
    net.fit(X, y, epochs=1, callbacks=None)


def test_batchnorm_refuses_single_row_batches():
    X, y = data()
    net = fastbp.MLP(SIZES, batchnorm=True)
    with pytest.raises(ValueError, match="batchnorm"):
        net.fit(X, y, epochs=1, batch_size=1)


def test_warm_start_with_another_optimizer_warns():
    X, y = data()
    net = fastbp.MLP(SIZES)
    net.fit(X, y, epochs=1, optimizer="adam")
    with pytest.warns(RuntimeWarning, match="different optimizer"):
        net.fit(X, y, epochs=1, optimizer="sgd", warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(X, y, epochs=1, optimizer="sgd", warm_start=True)


def test_numpy_scalars_are_accepted_as_hyper_parameters():
    opt = fastbp.Adam(np.float32(1e-3), beta1=np.float64(0.9))
    assert opt.lr == pytest.approx(1e-3) and type(opt.lr) is float
    assert fastbp.StepDecay(np.int64(3)).step_size == 3
    X, y = data()
    fastbp.MLP(SIZES).fit(X, y, epochs=1, optimizer=opt, l2=np.float32(1e-4), clip_norm=np.float32(1.0))


@pytest.mark.parametrize("name,value", [("lr", -1.0), ("lr", float("nan")), ("beta2", 1.0), ("eps", 0.0)])
def test_optimizer_hyper_parameters_are_checked_after_construction(name, value):
    opt = fastbp.Adam()
    with pytest.raises(ValueError, match=name):
        setattr(opt, name, value)
    vars(opt)[name] = value  # behind the setter's back: fit still refuses it
    X, y = data()
    with pytest.raises(ValueError, match=name):
        fastbp.MLP(SIZES).fit(X, y, epochs=1, optimizer=opt)


# --- the remaining header and member checks of persist.load_arrays -------------------------


def _meta(**fields):
    return np.array(json.dumps(fields))


@pytest.mark.parametrize("change, match", [
    (lambda a: with_header(a, sizes=[5]), "header field 'sizes' must list 2 to 10000 widths, got 1"),
    (lambda a: with_header(a, batchnorm="yes"), "header field 'batchnorm' must be true or false, got 'yes'"),
    (lambda a: {**a, "bn_running": np.concatenate([a["bn_running"][:-1], [-1.0]])},
     "negative running variance in 'bn_running'"),
    (lambda a: {**a, "metadata": np.array(json.dumps(["v", "w"]))}, "metadata is not a JSON object"),
    (lambda a: {**a, "metadata": _meta(classes=["a", "b"])}, "metadata: 2 class labels for 3 outputs"),
    (lambda a: {**a, "metadata": _meta(classes="abc")}, "metadata: 'abc' class labels for 3 outputs"),
    (lambda a: {**a, "metadata": np.array([1.0])}, "metadata is not a JSON string"),
])
def test_forged_fields_are_named(tmp_path, change, match):
    net = fastbp.MLP(SIZES, dtype="float64", batchnorm=True)
    net.classes = np.array(["a", "b", "c"])
    path = tmp_path / "forged.npz"
    net.save(path)
    arrays = archive_members(path)
    assert {"header", "theta", "bn_running", "metadata"} <= set(arrays)
    write_archive(path, change(arrays))
    assert_rejected(str(path), match)


@pytest.mark.parametrize("sizes, output, y, error, match", [
    ([5, 3], "softmax", None, TypeError, "y is None"),
    ([5, 3], "softmax", np.zeros((6, 3, 1)), ValueError, r"y must be 1-D labels or a 2-D \(n_samples, n_outputs\)"),
    ([5, 2], "identity", np.zeros(6), ValueError, r"y is 1-D but the network has 2 outputs; pass a \(n, 2\) array"),
    ([5, 1], "sigmoid", np.array([0, 1, 2, 0, 1, 0]), ValueError, "labels for a single sigmoid output must be 0 or 1"),
    ([5, 3], "softmax", np.full((6, 3), -0.5), ValueError, r"cross-entropy targets must lie in \[0, 1\]"),
    ([5, 2], "sigmoid", np.full((6, 2), 1.5), ValueError, r"cross-entropy targets must lie in \[0, 1\]"),
])
def test_bad_targets_are_refused_before_training(sizes, output, y, error, match):
    X = np.random.default_rng(0).normal(size=(6, 5))
    net = fastbp.MLP(sizes, output=output, dtype="float64")
    before = net.theta.copy()
    with pytest.raises(error, match=match):
        net.fit(X, y, epochs=1)
    np.testing.assert_array_equal(net.theta, before)
