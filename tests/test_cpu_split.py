"""The split path (fastbp/kernels/cpu_split.py: one hidden layer, two threads, each owning
half of the hidden units) against the NumPy reference (float64 tightly, float32 loosely)
on odd shapes — an odd hidden width (uneven halves), a hidden layer of 2, batch 1, a
partial last batch — for every output/loss, the optimizers, L1/L2 and clip_value; its
diagnostics and history next to the one-thread path; bitwise stability from run to run
and across chunkings of an epoch; the fallback when the two threads cannot run together;
and which fits take the path."""

import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
import weakref

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastbp
from fastbp import cpu_training, spec
from fastbp import threads as blas_threads_module
from fastbp.kernels import cpu_split, sync
from fastbp.kernels.bundles import Data
from fastbp.network import FitState

from helpers import ReferenceTrainer, assert_close, make_data

pytestmark = pytest.mark.skipif(not cpu_training.two_threads_available(),
                                reason="the split path needs Linux on x86-64 and two cores")

OUTPUT_LOSS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "mse")]


def engine(net, X, Y, loss, optimizer, batch_size, **options):
    """A CpuEngine on the split path (``threads=2``)."""
    values = dict(l1=0.0, l2=0.0, clip_norm=0.0, clip_value=0.0)
    values.update(options)
    result = cpu_training.CpuEngine(net, X, Y, FitState(net.n_params, net.dtype), batch_size=batch_size,
                                    optimizer=optimizer, loss_code=spec.LOSSES[loss], threads=2, **values)
    assert result.split is not None
    return result


@pytest.mark.parametrize("output,loss", OUTPUT_LOSS)
@pytest.mark.parametrize("sizes,rows,batch_size", [([5, 7, 3], 23, 7), ([3, 2, 2], 9, 1), ([17, 33, 5], 40, 40)],
                         ids=["odd-hidden,partial-batch", "hidden-2,batch-1", "full-batch"])
def test_fit_matches_reference(sizes, rows, batch_size, output, loss, dtype):
    """Whole fits (3 epochs, no shuffling) on two threads against reference.train_epoch."""
    net = fastbp.MLP(sizes, activation="tanh", output=output, seed=3, dtype=dtype)
    X, Y = make_data(rows, sizes, output, dtype, seed=rows)
    optimizer = fastbp.Adam(0.01)
    ref = ReferenceTrainer(net)
    losses = [ref.epoch(X, Y, np.arange(rows), batch_size, loss, optimizer, optimizer.lr) for _ in range(3)]
    history = net.fit(X, Y, loss=loss, optimizer=optimizer, epochs=3, batch_size=batch_size, shuffle=False,
                      threads=2)
    assert_close(net.theta, ref.flat(), dtype, "parameters after 3 epochs")
    assert_close(history.loss, [mean for mean, _ in losses], dtype, "epoch losses")


@pytest.mark.parametrize("optimizer", [fastbp.SGD(0.1), fastbp.optimizers.Nesterov(0.05), fastbp.RMSprop(0.01)],
                         ids=["sgd", "nesterov", "rmsprop"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "leaky_relu"])
def test_optimizers_penalties_and_clipping(optimizer, activation, dtype):
    """The other optimizers, L1 and L2 (in the reported loss too) and clip_value."""
    sizes = [6, 9, 4]
    net = fastbp.MLP(sizes, activation=activation, output="softmax", seed=5, dtype=dtype)
    X, Y = make_data(31, sizes, "softmax", dtype, seed=8)
    ref = ReferenceTrainer(net)
    options = dict(l1=1e-3, l2=1e-2, clip_value=0.05)
    losses = [ref.epoch(X, Y, np.arange(31), 8, "cross_entropy", optimizer, optimizer.lr, **options)
              for _ in range(2)]
    history = net.fit(X, Y, optimizer=optimizer, epochs=2, batch_size=8, shuffle=False, threads=2, **options)
    assert_close(net.theta, ref.flat(), dtype, "parameters")
    assert_close(history.loss, [mean for mean, _ in losses], dtype, "losses with the penalty")


@pytest.mark.parametrize("clip_norm", [0.05, 1e6], ids=["clipping", "never-clips"])
def test_clip_norm_matches_reference(clip_norm, dtype):
    """clip_norm: the two threads' parts of the global norm of the regularised gradient
    cross at a second barrier; against the reference (with L1/L2, an odd hidden width and
    a partial batch), and the norm does clip (the fit differs from one without)."""
    sizes = [6, 9, 4]
    X, Y = make_data(31, sizes, "softmax", dtype, seed=8)
    thetas = []
    for norm in (clip_norm, None):
        net = fastbp.MLP(sizes, activation="tanh", output="softmax", seed=5, dtype=dtype)
        assert cpu_training.use_split(net, 8, 31, threads=2)
        ref = ReferenceTrainer(net)
        options = dict(l1=1e-3, l2=1e-2, clip_norm=norm)
        optimizer = fastbp.Adam(0.05)
        losses = [ref.epoch(X, Y, np.arange(31), 8, "cross_entropy", optimizer, optimizer.lr, **options)
                  for _ in range(2)]
        history = net.fit(X, Y, optimizer=optimizer, epochs=2, batch_size=8, shuffle=False, threads=2, **options)
        assert_close(net.theta, ref.flat(), dtype, "parameters")
        assert_close(history.loss, [mean for mean, _ in losses], dtype, "losses")
        thetas.append(net.theta.copy())
    if clip_norm < 1:
        assert np.abs(thetas[0] - thetas[1]).max() > 1e-3
    else:
        assert thetas[0].tobytes() == thetas[1].tobytes()


def split_weights(n, seed=0):
    """Unequal weights in [0, 3) with single zeros and one whole zero batch of 5 (rows 5-9)."""
    w = np.random.default_rng(seed).uniform(0.0, 3.0, n)
    w[[2, 13]] = 0.0
    w[5:10] = 0.0
    return w


@pytest.mark.parametrize("output,loss", OUTPUT_LOSS + [("exp", "poisson")])
def test_sample_weights_match_reference(output, loss, dtype):
    """Sample weights on two threads against reference.train_epoch: weighted δ² and loss,
    L1/L2 scaled by B/Σw, a batch of zero weights skipped by both threads (batches of 5
    over 23 rows: a partial last batch; the skip shifts the double buffers' parity), an
    odd hidden width."""
    sizes = [6, 9, 4] if output != "exp" else [6, 9, 1]
    net = fastbp.MLP(sizes, activation="tanh", output=output, seed=5, dtype=dtype)
    X, Y = make_data(23, sizes, output, dtype, seed=8)
    w = split_weights(23)
    optimizer = fastbp.Adam(0.01)
    ref = ReferenceTrainer(net)
    options = dict(l1=1e-3, l2=1e-2)
    losses = [ref.epoch(X, Y, np.arange(23), 5, loss, optimizer, optimizer.lr, sample_weight=w, **options)[0]
              for _ in range(3)]
    run = engine(net, X, Y, loss, optimizer, 5, sample_weight=w)
    assert run.split is not None and run.split.row_weights is not None
    history = net.fit(X, Y, loss=loss, optimizer=optimizer, epochs=3, batch_size=5, shuffle=False, threads=2,
                      sample_weight=w, **options)
    assert_close(net.theta, ref.flat(), dtype, "parameters")
    assert_close(history.loss, losses, dtype, "weighted losses")
    assert net.fit_state.step[0] == 3 * 4  # 5 batches an epoch, one of them skipped


def test_sample_weights_with_dropout_and_clip_norm_match_one_thread(dtype):
    """Weights with dropout and clip_norm, shuffled, against the same fit on one thread: the
    parameters, losses, accuracy and diagnostics to rounding, the step count exactly."""
    sizes = [8, 11, 3]
    X, Y = make_data(47, sizes, "softmax", dtype, seed=2)
    w = split_weights(47, seed=3)
    fits = []
    for threads in (1, 2):
        net = fastbp.MLP(sizes, activation="relu", output="softmax", dropout=0.3, seed=9, dtype=dtype)
        history = net.fit(X, Y, optimizer=fastbp.Adam(0.02), epochs=3, batch_size=5, seed=4, threads=threads,
                          sample_weight=w, clip_norm=0.5, l2=1e-2)
        fits.append((net, history))
    (one, h1), (two, h2) = fits
    assert_close(two.theta, one.theta, dtype, "parameters")
    assert_close(h2.loss, h1.loss, dtype, "losses")
    assert h2.accuracy == h1.accuracy
    assert_close(np.array(h2.grad_norm), np.array(h1.grad_norm), dtype, "gradient norms")
    assert two.fit_state.step[0] == one.fit_state.step[0]


def test_unit_sample_weights_give_the_unweighted_bits():
    """Weights of 1 on the split path: the bits of the same fit without weights (the
    weighted δ², loss and penalty reduce to exact products with 1)."""
    sizes = [9, 12, 4]
    X, Y = make_data(41, sizes, "softmax", np.float32, seed=6)
    thetas, losses = [], []
    for w in (None, np.ones(41)):
        net = fastbp.MLP(sizes, activation="relu", output="softmax", seed=9, dtype=np.float32)
        history = net.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=2, batch_size=8, seed=4, threads=2, l2=1e-3,
                          sample_weight=w)
        thetas.append(net.theta.tobytes())
        losses.append(history.loss)
    assert thetas[0] == thetas[1] and losses[0] == losses[1]


def fit_pair(sizes, dtype, batch_size=8, rows=50, epochs=2):
    """The same fit on one thread and on two: (net1, history1, net2, history2)."""
    X, Y = make_data(rows, sizes, "softmax", dtype, seed=1)
    result = []
    for threads in (1, 2):
        net = fastbp.MLP(sizes, activation="relu", output="softmax", seed=9, dtype=dtype)
        history = net.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=epochs, batch_size=batch_size, seed=4,
                          threads=threads)
        result += [net, history]
    return result


@pytest.mark.parametrize("sizes,batch_size", [([8, 11, 3], 8), ([5, 2, 3], 1), ([6, 13, 4], 5)],
                         ids=["odd-hidden", "hidden-2,batch-1", "partial-batch"])
def test_dropout_matches_one_thread(sizes, batch_size, dtype):
    """Dropout on the hidden units: each thread draws its own units' masks, the masks of the
    one-thread path (rng.keep_unit of the global column), so the fits agree to rounding;
    and the masks are applied (the fit differs from one without dropout)."""
    X, Y = make_data(23, sizes, "softmax", dtype, seed=5)
    fits = {}
    for threads, rate in ((1, 0.4), (2, 0.4), (2, 0.0)):
        net = fastbp.MLP(sizes, activation="tanh", output="softmax", seed=7, dtype=dtype, dropout=rate)
        assert cpu_training.use_split(net, batch_size, 23, threads=threads) is (threads == 2)
        history = net.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=3, batch_size=batch_size, seed=2,
                          threads=threads)
        fits[threads, rate] = (net.theta.copy(), history)
    assert_close(fits[2, 0.4][0], fits[1, 0.4][0], dtype, "parameters with dropout")
    for name in ("loss", "accuracy", "grad_norm", "update_ratio"):
        assert_close(np.asarray(getattr(fits[2, 0.4][1], name)), np.asarray(getattr(fits[1, 0.4][1], name)), dtype,
                     name)
    assert np.abs(fits[2, 0.4][0] - fits[2, 0.0][0]).max() > 1e-3


def test_diagnostics_and_history_match_one_thread(dtype):
    net1, h1, net2, h2 = fit_pair([8, 11, 3], dtype)
    assert_close(net2.theta, net1.theta, dtype, "parameters")
    for name in ("loss", "accuracy", "grad_norm", "update_ratio"):
        assert_close(np.asarray(getattr(h2, name)), np.asarray(getattr(h1, name)), dtype, name)
    assert np.asarray(h2.grad_norm).shape == (2, 2)


def test_bitwise_stable_from_run_to_run():
    a = fit_pair([16, 21, 5], np.float32, batch_size=4, epochs=3)
    b = fit_pair([16, 21, 5], np.float32, batch_size=4, epochs=3)
    assert a[2].theta.tobytes() == b[2].theta.tobytes()
    assert a[3].loss == b[3].loss


def test_a_fit_takes_the_buffers_the_last_fit_of_its_shape_gave_back(dtype):
    """A split fit of the previous fit's shape trains in that fit's buffers (~50 arrays
    not built again) to the bits of a fit in new ones: the kernels write every buffer
    before they read it. A fit of another shape builds its own."""
    sizes = [7, 10, 3]
    X, Y = make_data(45, sizes, "softmax", dtype, seed=2)
    partner = cpu_training.second_thread()

    def fit(seed, batch_size=5):
        net = fastbp.MLP(sizes, activation="tanh", output="softmax", seed=seed, dtype=dtype)
        history = net.fit(X, Y, optimizer=fastbp.Adam(0.02), epochs=2, batch_size=batch_size, seed=seed,
                          threads=2)
        return net, (net.theta.tobytes(), net.fit_state.state2.tobytes(), history.loss, history.accuracy)
    net, _ = fit(1)  # leaves its buffers, full of its own numbers
    key, used = partner.spare
    assert key == cpu_training.split_key(net, 5, False)
    _, reused = fit(2)
    assert partner.spare[1] is used
    partner.spare = None
    _, fresh = fit(2)
    assert partner.spare[1] is not used
    assert reused == fresh
    fit(2, batch_size=6)
    assert partner.spare[0] == cpu_training.split_key(net, 6, False)


def test_a_fit_whose_call_was_interrupted_keeps_no_buffers(monkeypatch):
    """After an interrupt inside a call the second thread may still be waiting on that
    call's barrier state: the fit's buffers are dropped, not kept for the next fit."""
    X, Y = make_data(24, [7, 10, 3], "softmax", np.float64, seed=2)
    partner = cpu_training.second_thread()
    partner.spare = None
    calls = []

    def interrupted(self, kernel, args, state):
        calls.append(args[6])
        raise KeyboardInterrupt
    monkeypatch.setattr(cpu_training.SecondThread, "run", interrupted)
    net = fastbp.MLP([7, 10, 3], seed=1, dtype=np.float64)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, Y, epochs=1, batch_size=5, threads=2)
    assert len(calls) == 1 and partner.spare is None
    monkeypatch.undo()
    net.fit(X, Y, epochs=1, batch_size=5, threads=2)
    assert partner.spare is not None and partner.spare[1] is not calls[0]


def test_chunking_does_not_change_the_bits(dtype):
    """An epoch in one compiled call or in several (the shards are copied in and out of θ
    and the optimizer state at each call): the same bits."""
    sizes = [7, 10, 3]
    X, Y = make_data(45, sizes, "softmax", dtype, seed=2)
    perm = np.random.default_rng(0).permutation(45)
    results = []
    for cuts in ([0, 9], [0, 1, 2, 5, 9]):
        net = fastbp.MLP(sizes, activation="tanh", output="softmax", seed=1, dtype=dtype)
        run = engine(net, X, Y, "cross_entropy", fastbp.Adam(0.02), 5)
        for epoch in range(2):
            for first, stop in zip(cuts[:-1], cuts[1:]):
                total, correct = run.train_batches(perm, first, stop, epoch, 0.02)
        results.append((net.theta.tobytes(), run.state.state2.tobytes(), total, correct,
                        run.optimizer.diagnostics.tobytes(), int(run.state.step[0])))
    assert results[0] == results[1]


def test_two_threads_that_do_not_run_together_change_nothing(monkeypatch):
    """Thread 0's half alone (the second thread never comes): the handshake gives up, the
    kernel returns False and θ and the optimizer state are as before; the engine warns
    and trains the batches on one thread instead."""
    sizes = [4, 6, 2]
    X, Y = make_data(12, sizes, "softmax", np.float64, seed=3)
    net = fastbp.MLP(sizes, activation="relu", output="softmax", seed=2, dtype=np.float64)
    run = engine(net, X, Y, "cross_entropy", fastbp.Adam(0.01), 4)
    before = (net.theta.copy(), run.state.state1.copy(), int(run.state.step[0]))
    perm = np.arange(12)
    alone = cpu_split.train_batches  # waits sync.HANDSHAKE_SPINS (~0.5 s) for the other half
    run.split.state[:] = 0
    assert not alone(run.network, run.optimizer, run.hyper, run.work, Data(X, Y, perm, None), (0, 3), run.split,
                     (1.0, 0, 0), 0)
    assert (net.theta == before[0]).all() and (run.state.state1 == before[1]).all()
    assert int(run.state.step[0]) == before[2]

    class Absent:
        def run(self, kernel, args, state):
            state[:] = 0
            return alone(*args, 0)
    monkeypatch.setattr(cpu_training, "second_thread", Absent)
    with pytest.warns(RuntimeWarning, match="did not run at the same time"):
        run.train_batches(perm, 0, 3, 0, 0.01)
    assert run.split is None
    assert int(run.state.step[0]) == 3 and not (net.theta == before[0]).all()


def test_the_second_thread_runs_the_other_half():
    """A split fit runs its two halves on two threads: the calling one and fastbp's own
    daemon thread, which counts the call."""
    partner = cpu_training.second_thread()
    calls = int(partner.signal[cpu_split.CALLS])
    fit_pair([8, 11, 3], np.float32, epochs=1)
    assert int(partner.signal[cpu_split.CALLS]) > calls
    names = [t.name for t in threading.enumerate()]
    assert names.count("fastbp-split") == 1


def test_no_thread_to_be_had_means_one_thread(monkeypatch):
    """Where no thread can be started ("can't start new thread"), a fit that asked for two
    trains on one, to the one-thread bits."""
    def refused():
        raise RuntimeError("can't start new thread")
    X, Y = make_data(40, [8, 11, 3], "softmax", np.float64, seed=1)
    nets = [fastbp.MLP([8, 11, 3], seed=9, dtype=np.float64) for _ in range(2)]
    nets[0].fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=2, batch_size=8, seed=4, threads=1)
    monkeypatch.setattr(cpu_training, "second_thread", refused)
    run = cpu_training.CpuEngine(nets[1], X, Y, FitState(nets[1].n_params, nets[1].dtype), batch_size=8,
                                 optimizer=fastbp.Adam(0.01), loss_code=spec.LOSSES["cross_entropy"], threads=2,
                                 l1=0.0, l2=0.0, clip_norm=0.0, clip_value=0.0)
    assert run.split is None and run.kernel_threads == 2
    nets[1].fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=2, batch_size=8, seed=4, threads=2)
    assert nets[1].theta.tobytes() == nets[0].theta.tobytes()


def test_a_second_thread_that_slept_between_calls_gives_the_same_bits(monkeypatch):
    """The second thread waits for the next call spinning, then asleep on its futex: a
    call finds it either way, with the same result."""
    spinning = fit_pair([9, 12, 4], np.float64, epochs=2)
    monkeypatch.setattr(cpu_training, "PARTNER_SPINS", 1)
    time.sleep(0.05)  # whatever it was doing, it now sleeps right after each call
    slept = fit_pair([9, 12, 4], np.float64, epochs=2)
    assert spinning[2].theta.tobytes() == slept[2].theta.tobytes()
    assert spinning[3].loss == slept[3].loss


def _sleeping(partner, timeout=1.0):
    """Wait until the second thread sleeps on its bell; True if it does within ``timeout``."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if partner.signal[cpu_split.SLEEPERS] == 1:
            return True
        time.sleep(0.001)
    return False


def test_a_wake_gets_a_sleeping_second_thread_spinning():
    """``SecondThread.wake`` (a fit sends it when it builds its engine) rings the bell the
    second thread sleeps on: it is up and spinning within a few milliseconds, long before
    the futex's own timeout (``sync.FUTEX_SLEEP_NS``, 1 s) would have woken it."""
    partner = cpu_training.second_thread()
    fit_pair([8, 11, 3], np.float32, epochs=1)
    assert _sleeping(partner)  # after PARTNER_SPINS (~3 ms)
    rings = int(partner.signal[cpu_split.BELL])
    start = time.perf_counter()
    partner.wake()
    while partner.signal[cpu_split.SLEEPERS] == 1 and time.perf_counter() - start < 1.0:
        pass
    woke = time.perf_counter() - start
    assert partner.signal[cpu_split.BELL] == rings + 1
    assert woke < 0.02, f"the second thread took {woke * 1e3:.1f} ms to wake"
    assert _sleeping(partner)  # and it goes back to sleep when no call comes


def test_a_call_interrupted_before_it_was_counted_leaves_the_threads_in_step(monkeypatch):
    """A KeyboardInterrupt after the job was set but before the call was counted: the second
    thread runs counted jobs only, so it never runs this one, the caller does not wait for
    it, the interrupt propagates at once, and the next call (which reuses the number) meets
    the thread as usual."""
    sizes = [4, 6, 2]
    X, Y = make_data(12, sizes, "softmax", np.float64, seed=3)
    net = fastbp.MLP(sizes, seed=2, dtype=np.float64)
    run = engine(net, X, Y, "cross_entropy", fastbp.Adam(0.01), 4)
    partner = cpu_training.second_thread()
    args = (run.network, run.optimizer, run.hyper, run.work, Data(X, Y, np.arange(12), None), (0, 3), run.split,
            (1.0, 0, 0))

    def interrupted(signal, state):
        raise KeyboardInterrupt
    monkeypatch.setattr(cpu_split, "call_partner", interrupted)
    before, calls = net.theta.copy(), int(partner.signal[cpu_split.CALLS])
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        partner.run(cpu_split.train_batches, args, run.split.state)
    assert time.perf_counter() - start < 0.5  # no wait for a handshake that cannot happen
    assert partner.signal[cpu_split.CALLS] == calls and partner.job is None
    assert (net.theta == before).all()
    monkeypatch.undo()
    one, _, two, _ = fit_pair([8, 11, 3], np.float64, epochs=1)
    assert partner.served == partner.signal[cpu_split.CALLS] > calls
    assert_close(two.theta, one.theta, np.float64, "the next fit, on two threads")


def test_ctrl_c_at_random_moments_leaves_the_next_fit_on_two_threads():
    """KeyboardInterrupts (from a timer, 10 µs-3 ms into a short split fit, so they land in
    the fit's Python, in the hand-off and in the compiled call alike); after each, a fit
    trains on two threads (no fallback warning) to the bits of an undisturbed one. The
    first futex hand-off failed this within a few dozen rounds (a job queued, then never
    counted: every later fit fell back to one thread)."""
    X, y = make_data(400, [8, 11, 3], "softmax", np.float64, seed=1)

    def fit(epochs):
        net = fastbp.MLP([8, 11, 3], seed=9, dtype=np.float64)
        net.fit(X, y, optimizer=fastbp.Adam(0.01), epochs=epochs, batch_size=4, seed=4, threads=2)
        return net.theta.tobytes()
    expected = fit(2)
    armed = [False]

    def interrupt(*args):
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt
    rng = np.random.default_rng(3)
    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    try:
        for _ in range(200):
            try:
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, float(rng.uniform(1e-5, 3e-3)))
                    fit(1)
                finally:
                    armed[0] = False
            except KeyboardInterrupt:
                interrupted += 1
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert fit(2) == expected
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted > 0


def test_the_second_thread_keeps_no_fit_alive():
    """After a fit the second thread holds none of its arrays (a training set can be large)."""
    X, Y = make_data(40, [8, 11, 3], "softmax", np.float32, seed=1)
    X, Y = np.ascontiguousarray(X, np.float32), np.ascontiguousarray(Y, np.float32)
    net = fastbp.MLP([8, 11, 3], seed=9, dtype=np.float32)
    net.fit(X, Y, epochs=1, batch_size=8, threads=2)
    refs = [weakref.ref(X), weakref.ref(Y)]
    del X, Y
    time.sleep(0.05)
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_fits_from_two_python_threads_take_turns():
    """Two split fits started at once from two Python threads share the second thread (one
    call at a time, ``SecondThread.lock``); each gives the bits it gives alone."""
    X, Y = make_data(64, [8, 11, 3], "softmax", np.float32, seed=1)

    def fit(seed):
        net = fastbp.MLP([8, 11, 3], seed=seed, dtype=np.float32)
        net.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=3, batch_size=4, seed=seed, threads=2)
        return net.theta.tobytes()
    alone = [fit(seed) for seed in (1, 2)]
    together = [None, None]

    def run(i):
        together[i] = fit(i + 1)
    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert together == alone


def test_an_interrupt_while_waiting_for_the_second_thread_keeps_its_result():
    """A KeyboardInterrupt during the wait for the second thread's result is raised after
    that result has arrived (it arrives while the interrupt is raised here), and the
    result is dropped once read, so no later call can take it for its own."""
    partner = cpu_training.SecondThread()

    class Interrupting:
        def __init__(self):
            self.raised = False

        def get(self, timeout=None):
            if not self.raised:
                self.raised = True
                partner.done = (7, True)
                raise KeyboardInterrupt
    partner.finished = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        partner._result(7)
    assert partner.done == (7, None)


def test_a_result_left_by_an_earlier_call_is_not_taken_for_the_next():
    """Results are numbered by the call count: one left over from an earlier call (whose
    caller was interrupted before it read it) is passed over for the call's own, and the
    next fit still trains on two threads, to the bits it gives otherwise."""
    waiting = cpu_training.SecondThread()

    class Posting:  # the thread posts call 6's result while the caller waits
        def get(self, timeout=None):
            waiting.done = (6, True)
    waiting.done = (5, False)
    waiting.finished = Posting()
    assert waiting._result(6) is True

    partner = cpu_training.second_thread()
    expected = fit_pair([8, 11, 3], np.float64, epochs=1)[2].theta.tobytes()
    with partner.lock:
        partner.done = (int(partner.signal[cpu_split.CALLS]), False)  # as if the last call had failed, unread
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "did not run at the same time" would fail the fit
        again = fit_pair([8, 11, 3], np.float64, epochs=1)[2].theta.tobytes()
    assert again == expected


@pytest.mark.parametrize("change,expected", [
    ({}, True),
    ({"threads": 1}, False),
    ({"sizes": [5, 7, 6, 3]}, False),
    ({"dropout": True}, True),
    ({"batchnorm": True}, False),
    ({"weighted": True}, True),
    ({"clip_norm": 1.0}, True),
    ({"checkpoint": True}, False),
])
def test_which_fits_take_the_path(change, expected):
    """The engine a fit builds with threads=2: on the split path or not."""
    options = dict(sizes=[5, 7, 3], threads=2, dropout=False, batchnorm=False, weighted=False, clip_norm=0.0,
                   checkpoint=None)
    options.update(change)
    sizes = options["sizes"]
    net = fastbp.MLP(sizes, dropout=0.2 if options["dropout"] else 0.0, batchnorm=options["batchnorm"])
    X, Y = make_data(100, sizes, "softmax", np.float64, seed=1)
    weights = np.linspace(0.5, 2.0, 100) if options["weighted"] else None
    run = cpu_training.CpuEngine(net, X, Y, FitState(net.n_params, net.dtype), batch_size=8,
                                 optimizer=fastbp.Adam(0.01), loss_code=spec.LOSSES["cross_entropy"],
                                 threads=options["threads"], l1=0.0, l2=0.0, clip_norm=options["clip_norm"],
                                 clip_value=0.0, checkpoint=options["checkpoint"], sample_weight=weights)
    assert (run.split is not None) is expected


def test_automatic_choice_follows_the_table(monkeypatch):
    net = fastbp.MLP([64, 128, 10], dtype="float32")
    rows = cpu_split.MIN_EPOCH_WORK // net.n_params + 1
    monkeypatch.setattr(cpu_split, "FASTER_THAN_ONE_THREAD", {16: (64, 128)})
    assert cpu_training.use_split(net, 32, rows) and cpu_training.use_split(net, 16, rows)
    assert not cpu_training.use_split(net, 8, rows)
    assert not cpu_training.use_split(net, 32, rows - 2), "too little work per epoch"
    assert not cpu_training.use_split(fastbp.MLP([64, 32, 10], dtype="float32"), 32, 10 ** 6)
    assert not cpu_training.use_split(fastbp.MLP([64, 256, 10], dtype="float32"), 32, 10 ** 6)  # past the table
    assert not cpu_training.use_split(fastbp.MLP([64, 128, 10], dtype="float64"), 32, rows)
    monkeypatch.setattr(cpu_split, "FASTER_THAN_ONE_THREAD", {})
    assert not cpu_training.use_split(net, 32, rows)


def test_no_automatic_split_where_one_thread_would_run_two_blas_threads(monkeypatch):
    """The crossover table was measured against one BLAS thread; where a fit on one thread
    would run the kernels' BLAS on two (``threads.planned_threads``), the split path lost and
    is not picked: 256-256-10 from batch 64, 784-256-10 from batch 32 (a product of
    batch × 256 × 784 ≥ 2²² multiply-adds). Below that, or with the pool capped at one
    thread, the table decides."""
    monkeypatch.setattr(blas_threads_module, "CROSSOVER_MNK", 2 ** 22)  # FASTBP_BLAS_CROSSOVER may be set
    monkeypatch.setattr(blas_threads_module, "available_cores", lambda: 2)
    rows = 10 ** 7
    wide = fastbp.MLP([784, 256, 10], dtype="float32")
    with threadpool_limits(2):
        assert cpu_training.use_split(fastbp.MLP([64, 256, 10], dtype="float32"), 32, rows)
        assert cpu_training.use_split(fastbp.MLP([256, 256, 10], dtype="float32"), 32, rows)
        assert not cpu_training.use_split(fastbp.MLP([256, 256, 10], dtype="float32"), 64, rows)
        assert cpu_training.use_split(wide, 16, rows)
        assert not cpu_training.use_split(wide, 32, rows)
        assert cpu_training.use_split(wide, 32, rows, threads=2)  # asked for
    with threadpool_limits(1):  # a one-thread fit would run one BLAS thread: the table decides
        assert cpu_training.use_split(wide, 32, rows)


def test_the_bench_small_network_takes_the_path():
    """``fastbp bench``'s small configuration (64-128-10, batch 32, 16384 rows) trains on two
    threads; ``fastbp train``'s digits network (64-64-10, 1.4 k rows) on one."""
    assert cpu_training.use_split(fastbp.MLP([64, 128, 10], dtype="float32"), 32, 16384)
    assert not cpu_training.use_split(fastbp.MLP([64, 64, 10], dtype="float32"), 32, 1437)


def _child_fit(queue):
    X, Y = make_data(30, [6, 8, 3], "softmax", np.float64, seed=6)
    net = fastbp.MLP([6, 8, 3], seed=1, dtype=np.float64)
    calls = int(cpu_training.second_thread().signal[cpu_split.CALLS])
    losses = net.fit(X, Y, epochs=2, batch_size=4, threads=2).loss
    queue.put((int(cpu_training.second_thread().signal[cpu_split.CALLS]) - calls, net.theta.tobytes(), losses))


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_the_path_needs_linux(monkeypatch, platform):
    """The barrier and keep_apart call the C library's sched_yield, sched_getcpu and
    affinity functions, which macOS and Windows lack (Windows is "AMD64" too): no split."""
    assert cpu_training.two_threads_available()
    monkeypatch.setattr(sys, "platform", platform)
    assert not cpu_training.two_threads_available()


def test_a_forked_child_trains_on_two_threads():
    """The second thread is fastbp's own, so a child forked from a process that has one
    (threads do not survive fork()) starts its own and trains on two threads, to the bits
    of the same fit here."""
    fit_pair([8, 11, 3], np.float32, epochs=1)  # this process has its second thread
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_fit, args=(queue,))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0
    calls, theta, losses = queue.get(timeout=10)
    X, Y = make_data(30, [6, 8, 3], "softmax", np.float64, seed=6)
    net = fastbp.MLP([6, 8, 3], seed=1, dtype=np.float64)
    assert net.fit(X, Y, epochs=2, batch_size=4, threads=2).loss == losses
    assert calls >= 1 and theta == net.theta.tobytes()


def _blocks(array, index, width, block):
    """The blocks of ``block`` bytes (cache lines, pages) holding the first ``width``
    elements of ``array[index]``."""
    start = array[index].ctypes.data
    return set(range(start // block, (start + width * array.itemsize - 1) // block + 1))


@pytest.mark.parametrize("block", ["line", "page"])
@pytest.mark.parametrize("sizes,bmax", [([64, 128, 10], 32), ([5, 7, 3], 7), ([3, 2, 2], 1)])
def test_no_cache_line_or_page_is_written_by_both_threads(sizes, bmax, block):
    """Each thread writes its own rows of the split buffers; a line holding part of both
    threads' rows would move between the cores at every write (false sharing: it made the
    path's steps ~1.8x slower in some processes), and a page holding both would let one
    core's prefetcher, running ahead to the end of the page, take the other's lines (7-30 %
    slower epochs). No line and no page is shared."""
    size = cpu_training.CACHE_LINE if block == "line" else cpu_training.PAGE
    net = fastbp.MLP(sizes, dtype="float32")
    split = cpu_training.split_bundle(net, bmax)
    d, hidden, k = sizes
    h = cpu_split.own_units(0, hidden)[1]
    shard = cpu_split.shard_length(sizes)
    widths = {"theta": shard, "grad": shard, "state1": shard, "state2": shard, "xs": bmax * d, "ys": bmax * k,
              "zs": bmax * h, "acts": bmax * h, "logits": bmax * k, "outputs": bmax * k, "delta_out": bmax * k,
              "delta_hidden": bmax * h, "exchange": bmax * k, "parts": 4, "norms": 1, "dmasks": 1, "dacts": 1}
    per_thread = []
    for t in range(2):
        lines = set()
        for name, width in widths.items():
            array = getattr(split, name)
            if name == "exchange":
                for parity in range(2):
                    lines |= _blocks(array, (parity, t), width, size)
            elif name == "parts":
                for parity in range(2):
                    for layer in range(2):
                        lines |= _blocks(array, (parity, t, layer), width, size)
            elif name == "norms":
                for parity in range(2):
                    lines |= _blocks(array, (parity, t), width, size)
            else:
                lines |= _blocks(array, t, width, size)
        lines |= _blocks(split.rowwise, t, (k + 3) * bmax, size)  # float64: its own allocation
        per_thread.append(lines)
    assert not per_thread[0] & per_thread[1]


@numba.njit
def _share_then_keep_apart(state, masks, t):
    """As thread t, after a thread 0 that ran on this very CPU: (CPU before, CPU while
    keep_apart holds, state[MOVED] then), and let_go at the end."""
    state[sync.FIRST_CPU] = sync.current_cpu()
    before = sync.current_cpu()
    sync.keep_apart(state, masks, t)
    during, moved = sync.current_cpu(), state[sync.MOVED]
    sync.let_go(state, masks, t)
    return before, during, moved


def _split_state():
    """A state array and CPU masks of their own (not the second thread's)."""
    state, = cpu_training.line_aligned_rows([(sync.STATE_LENGTH,)], np.int64)
    masks, = cpu_training.line_aligned_rows([(sync.MASK_ROWS, sync.AFFINITY_BYTES)], np.uint8)
    return state, masks


def test_keep_apart_moves_the_second_thread_off_the_first_ones_cpu():
    """The second thread on the first one's CPU (as a packing scheduler leaves them after
    waking the pool) leaves that CPU for the region; let_go gives it its own mask back."""
    own = os.sched_getaffinity(0)
    state, masks = _split_state()
    for _ in range(5):  # the thread may migrate between two readings of its CPU: try again
        before, during, moved = _share_then_keep_apart(state, masks, np.int64(1))
        if before >= 0 and before == state[sync.FIRST_CPU]:
            break
    assert moved == 1 and during != before
    assert not masks[1][before // 8] & (1 << before % 8) and masks[0][before // 8] & (1 << before % 8)
    assert os.sched_getaffinity(0) == own and state[sync.MOVED] == 0


def test_keep_apart_leaves_the_first_thread_and_a_thread_with_one_cpu():
    own = os.sched_getaffinity(0)
    state, masks = _split_state()
    assert _share_then_keep_apart(state, masks, np.int64(0))[2] == 0
    cpu = next(iter(own))
    os.sched_setaffinity(0, {cpu})
    try:
        before, during, moved = _share_then_keep_apart(state, masks, np.int64(1))
        assert moved == 0 and before == during == cpu and os.sched_getaffinity(0) == {cpu}
    finally:
        os.sched_setaffinity(0, own)


def test_keep_apart_while_moved_starts_from_the_threads_own_mask():
    """The second thread, moved off one CPU (its mask then allows only the other on two
    cores), finds the first thread on its new CPU: it moves again, from its own mask, not
    from the narrowed one (which would leave it nowhere to go)."""
    own = os.sched_getaffinity(0)
    if len(own) < 2:
        pytest.skip("needs two CPUs")
    state, masks = _split_state()
    for c in own:  # its own mask, as the first move saved it
        masks[0][c // 8] |= 1 << (c % 8)
    cpu = min(own)
    masks[1][cpu // 8] = 1 << (cpu % 8)  # the mask that move set
    try:
        os.sched_setaffinity(0, {cpu})  # as if moved there
        state[sync.MOVED] = 1
        before, during, moved = _share_then_keep_apart(state, masks, np.int64(1))
    finally:
        os.sched_setaffinity(0, own)
    assert before == cpu and moved == 1 and during != cpu


def test_keep_apart_takes_a_mask_changed_from_outside_as_the_threads_own():
    """A moved thread whose mask was changed from outside (here: narrowed to one CPU, as
    ``taskset -a`` would) keeps that mask when it meets the first thread again: it does not
    move back onto CPUs its old own mask allowed."""
    own = os.sched_getaffinity(0)
    if len(own) < 2:
        pytest.skip("needs two CPUs")
    state, masks = _split_state()
    for c in own:  # the own mask saved at the first move, and the mask that move set
        masks[0][c // 8] |= 1 << (c % 8)
    masks[1][:] = masks[0]
    state[sync.MOVED] = 1
    cpu = min(own)
    try:
        os.sched_setaffinity(0, {cpu})  # changed from outside
        state[sync.FIRST_CPU] = cpu
        _keep_apart_here(state, masks)
        after = os.sched_getaffinity(0)
    finally:
        os.sched_setaffinity(0, own)
    assert after == {cpu}
    assert [c for c in range(8 * sync.AFFINITY_BYTES) if masks[0][c // 8] & (1 << (c % 8))] == [cpu]


@numba.njit(nogil=True)
def _keep_apart_here(state, masks):
    sync.keep_apart(state, masks, np.int64(1))


def test_a_fit_leaves_every_other_threads_cpu_mask_as_it_was():
    """Only fastbp's own second thread may end a fit on a narrower CPU mask (keep_apart's,
    kept while it sleeps); every other thread's mask is as it was, and the second thread's
    is never empty nor wider than the process's."""
    def masks():
        return {int(tid): os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")}
    partner = cpu_training.second_thread()
    split = next(t.native_id for t in threading.enumerate() if t.name == "fastbp-split")
    own = os.sched_getaffinity(0)
    fit_pair([8, 11, 3], np.float32)
    before = masks()
    fit_pair([8, 11, 3], np.float32)
    assert _sleeping(partner)
    after = masks()
    assert all(after[tid] == mask for tid, mask in before.items() if tid in after and tid != split)
    assert after[split] and after[split] <= own
