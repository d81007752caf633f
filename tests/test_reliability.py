"""A fit interrupted or failing mid-way leaves a consistent network; gradients from several
threads; epochs and inference return to Python in chunks (Ctrl-C latency)."""

import threading

import numpy as np
import pytest

import fastbp
from fastbp import cpu_training

SIZES = [6, 11, 4]


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZES[0])), rng.integers(0, SIZES[-1], n)


def snapshot(net):
    state = net.fit_state
    return (net.theta.copy(), state.state1.copy(), state.state2.copy(), int(state.step[0]), state.epochs_done,
            net.fit_optimizer, net.bn_running.copy())


def assert_same(a, b):
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


@pytest.mark.parametrize("batchnorm", [False, True])
def test_callback_raising_in_epoch_2_leaves_the_completed_epochs(batchnorm, tmp_path):
    """An SGD fit after an Adam fit whose callback raises in epoch 2: θ, optimizer, state and
    epoch count all describe Adam × 3 then SGD × 2 (epoch 2 trained, then its callback raised)."""
    X, y = data()

    def boom(net, epoch, history):
        if epoch == 1:
            raise RuntimeError("callback failed")

    net = fastbp.MLP(SIZES, seed=1, dtype="float64", batchnorm=batchnorm)
    net.fit(X, y, optimizer="adam", epochs=3, batch_size=8)
    with pytest.raises(RuntimeError, match="callback failed"):
        net.fit(X, y, optimizer=fastbp.SGD(0.05), epochs=5, batch_size=8, callbacks=[boom])
    twin = fastbp.MLP(SIZES, seed=1, dtype="float64", batchnorm=batchnorm)
    twin.fit(X, y, optimizer="adam", epochs=3, batch_size=8)
    twin.fit(X, y, optimizer=fastbp.SGD(0.05), epochs=2, batch_size=8)
    assert net.fit_optimizer == fastbp.SGD(0.05) and net.fit_state.epochs_done == 2
    assert_same(snapshot(net), snapshot(twin))
    net.save(tmp_path / "m.npz")  # and what is saved is that consistent state
    assert_same(snapshot(fastbp.MLP.load(tmp_path / "m.npz")), snapshot(twin))


def test_exception_before_any_epoch_leaves_everything_as_before():
    X, y = data()
    net = fastbp.MLP(SIZES, seed=1, dtype="float64")
    net.fit(X, y, optimizer="adam", epochs=2, batch_size=8)
    before = snapshot(net)

    def bad_schedule(epoch, lr0):
        raise ValueError("schedule failed")

    with pytest.raises(ValueError, match="schedule failed"):
        net.fit(X, y, optimizer=fastbp.SGD(0.05), epochs=3, schedule=bad_schedule)
    assert_same(snapshot(net), before)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_keyboard_interrupt_mid_epoch_of_a_warm_start(monkeypatch, dropout):
    """Ctrl-C arriving after some batches of epoch 3 of a warm start: those batches are
    undone, the two completed epochs kept, and continuing gives a straight run's result."""
    X, y = data(60)
    net = fastbp.MLP(SIZES, seed=2, dtype="float64", dropout=dropout)
    net.fit(X, y, optimizer="adam", epochs=2, batch_size=4)
    calls = []
    original = cpu_training.CpuEngine.train_batches

    def interrupted(self, perm, first, stop, epoch, lr):
        result = original(self, perm, first, stop, epoch, lr)
        calls.append((epoch, first, stop))
        if epoch == 4 and first > 0:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(cpu_training.CpuEngine, "train_batches", interrupted)
    monkeypatch.setattr(fastbp.training, "next_chunk", lambda chunk, done, seconds: 2)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, optimizer="adam", epochs=5, batch_size=4, warm_start=True)
    monkeypatch.undo()
    assert any(epoch == 4 and first > 0 for epoch, first, _ in calls)  # interrupted inside the epoch
    straight = fastbp.MLP(SIZES, seed=2, dtype="float64", dropout=dropout)
    straight.fit(X, y, optimizer="adam", epochs=4, batch_size=4)
    assert net.fit_state.epochs_done == 4
    assert_same(snapshot(net), snapshot(straight))
    net.fit(X, y, optimizer="adam", epochs=1, batch_size=4, warm_start=True)
    straight.fit(X, y, optimizer="adam", epochs=1, batch_size=4, warm_start=True)
    np.testing.assert_array_equal(net.theta, straight.theta)


def record_calls(monkeypatch):
    """The (first, stop) batch range of every compiled call the CPU engine makes, in a list."""
    calls = []
    original = cpu_training.CpuEngine.train_batches

    def counted(self, perm, first, stop, epoch, lr):
        calls.append((first, stop))
        return original(self, perm, first, stop, epoch, lr)

    monkeypatch.setattr(cpu_training.CpuEngine, "train_batches", counted)
    return calls


def test_epoch_runs_in_chunks_with_the_same_result(monkeypatch):
    """Many small batches: the epoch is several compiled calls (ranges of batches) and gives
    the same bits as one call per epoch."""
    X, y = data(300)
    calls = record_calls(monkeypatch)
    net = fastbp.MLP(SIZES, seed=0, dtype="float64")
    net.fit(X, y, epochs=2, batch_size=2)
    assert len(calls) > 2 and calls[0] == (0, 1)
    monkeypatch.setattr(fastbp.training, "next_chunk", lambda chunk, done, seconds: 10 ** 9)
    whole = fastbp.MLP(SIZES, seed=0, dtype="float64")
    whole.fit(X, y, epochs=2, batch_size=2)
    np.testing.assert_array_equal(net.theta, whole.theta)


def test_a_refit_starts_at_the_last_fits_chunk(monkeypatch):
    """A network fitted again with the same batch size starts at the chunk size its last
    fit ended with, not at one batch; another batch size (or network) starts at one."""
    X, y = data(300)
    calls = record_calls(monkeypatch)
    monkeypatch.setattr(fastbp.training, "next_chunk", lambda chunk, done, seconds: 3 * max(chunk, done))
    net = fastbp.MLP(SIZES, seed=0, dtype="float64")
    net.fit(X, y, epochs=1, batch_size=2)
    assert calls[:3] == [(0, 1), (1, 4), (4, 13)]
    calls.clear()
    net.fit(X, y, epochs=1, batch_size=2)
    assert calls[0] == (0, 150)  # the last fit ended at a chunk of more than an epoch
    for other, batch_size in ((net, 3), (fastbp.MLP(SIZES, seed=0, dtype="float64"), 2)):
        calls.clear()
        other.fit(X, y, epochs=1, batch_size=batch_size)
        assert calls[0] == (0, 1)


def test_inference_in_row_chunks_gives_the_same_result(monkeypatch):
    X, y = data(3000)
    net = fastbp.MLP(SIZES, seed=0, dtype="float64", batchnorm=True)
    net.fit(X, y, epochs=1, batch_size=64)
    out, loss = net.forward(X), net.evaluate(X, y)
    monkeypatch.setattr(cpu_training, "ROWS_PARAMS_PER_CALL", 1)  # one chunk of rows per call
    np.testing.assert_array_equal(net.forward(X), out)
    assert net.evaluate(X, y)["accuracy"] == loss["accuracy"]
    assert net.evaluate(X, y)["loss"] == pytest.approx(loss["loss"], rel=1e-12)


def test_gradients_from_several_threads():
    """Two threads asking one network for gradients of equally sized batches get their own
    (no shared scratch space)."""
    net = fastbp.MLP([8, 256, 256, 5], seed=0, dtype="float64")  # long enough compiled calls to overlap
    batches = [(np.random.default_rng(s).normal(size=(1000, 8)), np.random.default_rng(s).integers(0, 5, 1000))
               for s in range(6)]
    expected = [net.flat_gradient(X, y)[1] for X, y in batches]
    wrong = []

    def work(i):
        for _ in range(5):
            X, y = batches[i]
            if not np.array_equal(net.flat_gradient(X, y)[1], expected[i]):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_gradients_keep_no_workspace_on_the_network():
    net = fastbp.MLP(SIZES, seed=0)
    before = sum(v.nbytes for v in vars(net).values() if isinstance(v, np.ndarray))
    X, y = data(20000)
    net.gradients(X, y)
    after = sum(v.nbytes for v in vars(net).values() if isinstance(v, np.ndarray))
    assert after == before
    assert not any(isinstance(v, object) and hasattr(v, "zs") for v in vars(net).values())
