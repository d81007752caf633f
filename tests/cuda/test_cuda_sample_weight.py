"""Sample weights on the GPU: the weighted output delta against ``fastbp.reference``,
weighted fits on both CUDA paths (per-layer and fused) against the reference and
against the CPU fit, batches whose weights sum to 0 skipped as on the CPU, weighted
evaluate / validation / flat_gradient against the CPU, and the launches a weighted
step adds (one: ``batch_weights``).

Runs under ``NUMBA_ENABLE_CUDASIM=1`` (or on a GPU); skipped otherwise. Shapes are tiny
(the simulator runs a Python thread per CUDA thread).
"""

from dataclasses import replace

import numpy as np
import pytest

import fastbp
from fastbp import reference, spec
from fastbp.kernels import cuda_config
from fastbp.training import epoch_permutation
from tests.helpers import ReferenceTrainer, assert_close, make_data

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(not fastbp.cuda_available(), reason="no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),   # uint64 hashing in the simulator
]

if fastbp.cuda_available():
    from numba import cuda

    from fastbp.kernels import cuda as kc

TIGHT = dict(rtol=1e-10, atol=1e-12)


def use(monkeypatch, path):
    """Run the fused step ("always") or the per-layer kernels ("never")."""
    monkeypatch.setattr(cuda_config, "config", replace(cuda_config.config, fused=path))


def weights_with_an_empty_batch(n, batch, seed, fit_seed, empty=1):
    """Weights in [0.2, 3) with a few single zeros, and every weight of batch ``empty`` of
    the first epoch's permutation zero (a batch the fit must skip)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.2, 3.0, n)
    w[rng.choice(n, max(1, n // 5), replace=False)] = 0.0
    perm = epoch_permutation(fit_seed, 0, n)
    w[perm[empty * batch:(empty + 1) * batch]] = 0.0
    return w


@pytest.mark.parametrize("output, loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                          ("identity", "mse"), ("sigmoid", "mse"), ("softmax", "mse"),
                                          ("exp", "poisson")])
def test_weighted_output_delta(output, loss):
    """output_delta with row weights w and scalars [s, c]: δ_i = δ_ref,i · w_i · s and the
    loss sum Σ w_i ℓ_i · c (the plain call is tested in test_cuda_kernels.py)."""
    rows, k = 7, 3
    rng = np.random.default_rng(5)
    z = 3 * rng.standard_normal((rows, k))
    a = reference.activate(z, output)
    Y = make_data(rows, [1, k], output, "float64", seed=6)[1]
    w = rng.uniform(0, 2, rows)
    w[2] = 0.0
    scalars = np.array([0.3, 1.7])
    K = kc.kernels("float64")
    delta = cuda.device_array((rows, k), "float64")
    sums, counts = cuda.to_device(np.zeros(1)), cuda.to_device(np.zeros(2, dtype=np.int64))
    K.output_delta[kc.line(rows, K.config)](cuda.to_device(z), cuda.to_device(a.copy()), cuda.to_device(Y),
                                            spec.ACTIVATIONS[output], spec.resolve_loss(loss, output), rows, 0.5,
                                            cuda.to_device(w), cuda.to_device(scalars), delta, sums, counts)
    expected = reference.output_delta(z, a, Y, loss, output) * (w * scalars[0])[:, None]
    np.testing.assert_allclose(delta.copy_to_host(), expected, **TIGHT)
    np.testing.assert_allclose(sums.copy_to_host()[0],
                               scalars[1] * (w * reference.sample_losses(z, a, Y, loss, output)).sum(), **TIGHT)
    assert counts.copy_to_host()[0] == reference.correct_count(a, Y, output)   # rows, not weights


# (sizes, hidden, output, loss, optimizer, fit extras, rows, batch): a partial last batch,
# batches of 1, L1/L2 (scaled by B/Σw per batch) and clipping; each with zero weights and
# a batch of the first epoch whose weights are all 0
CASES = [
    ([7, 13, 5], "tanh", "softmax", "cross_entropy", fastbp.Adam(0.01), dict(l2=1e-2, clip_norm=0.5), 13, 5),
    ([7, 6, 3], "relu", "sigmoid", "binary_cross_entropy", fastbp.Momentum(0.05), dict(l1=1e-3, clip_value=0.05),
     11, 4),
    ([3, 5, 2], "sigmoid", "identity", "mse", fastbp.SGD(0.1), dict(l2=1e-2), 4, 1),
]
IDS = [f"{c[2]}-{c[3]}-b{c[7]}" for c in CASES]


@pytest.mark.parametrize("path", ["never", "always"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_weighted_fit_matches_reference_and_cpu(path, case, monkeypatch):
    """A weighted float64 fit on the GPU (per-layer or fused) equals the NumPy reference's
    epochs (same permutations, zero-weight batch skipped) and the CPU fit: θ, loss history,
    accuracy, optimizer state and step count."""
    sizes, hidden, output, loss, optimizer, extra, n, batch = CASES[case]
    use(monkeypatch, path)
    X, Y = make_data(n, sizes, output, "float64", seed=case)
    y = Y.argmax(1) if output == "softmax" else Y
    w = weights_with_an_empty_batch(n, batch, case, fit_seed=2)
    nets = {device: fastbp.MLP(sizes, activation=hidden, output=output, dtype="float64", seed=4)
            for device in ("cuda", "cpu")}
    trainer = ReferenceTrainer(nets["cuda"])
    histories = {device: net.fit(X, y, loss=loss, optimizer=optimizer, epochs=1, batch_size=batch, seed=2,
                                 device=device, sample_weight=w, **extra) for device, net in nets.items()}
    mean_loss, correct = trainer.epoch(X, Y, epoch_permutation(2, 0, n), batch, loss, optimizer, optimizer.lr,
                                       sample_weight=w, **extra)
    gpu, cpu = nets["cuda"], nets["cpu"]
    assert_close(histories["cuda"].loss[0], mean_loss, "float64", "loss")
    assert_close(gpu.theta, trainer.flat(), "float64", "θ vs reference")
    np.testing.assert_allclose(gpu.theta, cpu.theta, **TIGHT)
    np.testing.assert_allclose(histories["cuda"].loss, histories["cpu"].loss, **TIGHT)
    np.testing.assert_allclose(gpu.fit_state.state1, cpu.fit_state.state1, **TIGHT)
    np.testing.assert_allclose(np.array(histories["cuda"].grad_norm), np.array(histories["cpu"].grad_norm), **TIGHT)
    np.testing.assert_array_equal(histories["cuda"].accuracy, histories["cpu"].accuracy)   # nan for regression
    perm = epoch_permutation(2, 0, n)
    steps = sum(w[perm[b:b + batch]].sum() > 0 for b in range(0, n, batch))
    assert steps < -(-n // batch)
    assert gpu.fit_state.step[0] == cpu.fit_state.step[0] == steps   # an empty batch takes no step


def test_unit_weights_give_the_bits_of_no_weights(monkeypatch):
    """Weights of 1 take the weighted kernels (one more launch) and give exactly the
    parameters of the unweighted fit, and its loss to rounding, on both paths."""
    sizes, hidden, output, loss, optimizer, extra, n, batch = CASES[0]
    X, Y = make_data(n, sizes, output, "float64", seed=3)
    for path in ("never", "always"):
        use(monkeypatch, path)
        results = []
        for weights in (None, np.ones(n)):
            net = fastbp.MLP(sizes, activation=hidden, output=output, dtype="float64", seed=4)
            history = net.fit(X, Y.argmax(1), loss=loss, optimizer=optimizer, epochs=1, batch_size=batch,
                              device="cuda", sample_weight=weights, **extra)
            results.append((net.theta, history.loss))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        # the loss sum: the blocks' atomic additions come in any order (float64 rounding)
        np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-14)


def test_weighted_dropout_batchnorm_fit_matches_cpu():
    """Weights with dropout and batchnorm (per-layer path; the BN statistics are the
    unweighted batch statistics, as on the CPU), validation weights and checkpointing:
    the same θ, running statistics, loss and val_loss as the CPU fit."""
    n, batch = 13, 5
    X, Y = make_data(n, [7, 13, 6, 3], "softmax", "float64", seed=8)
    w = weights_with_an_empty_batch(n, batch, 8, fit_seed=3, empty=0)
    Xv, Yv = make_data(6, [7, 13, 6, 3], "softmax", "float64", seed=9)
    wv = np.array([1.0, 0.0, 2.5, 0.5, 1.0, 3.0])
    nets, histories = {}, {}
    for device in ("cuda", "cpu"):
        nets[device] = fastbp.MLP([7, 13, 6, 3], activation="relu", dtype="float64", seed=6, dropout=0.3,
                                  batchnorm=True)
        histories[device] = nets[device].fit(X, Y.argmax(1), optimizer=fastbp.Adam(0.01), epochs=2,
                                             batch_size=batch, seed=3, device=device, sample_weight=w, l2=1e-3,
                                             validation_data=(Xv, Yv.argmax(1), wv), checkpoint=True)
    np.testing.assert_allclose(nets["cuda"].theta, nets["cpu"].theta, **TIGHT)
    np.testing.assert_allclose(nets["cuda"].bn_running, nets["cpu"].bn_running, **TIGHT)
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(getattr(histories["cuda"], key), getattr(histories["cpu"], key), **TIGHT)
    assert nets["cuda"].fit_state.step[0] == nets["cpu"].fit_state.step[0]


def test_weighted_evaluate_and_flat_gradient_match_cpu():
    """evaluate, flat_gradient (with L1/L2, per mean weight) and gradients with sample
    weights on the device equal the CPU's; zero weights count for nothing."""
    n = 9
    X, Y = make_data(n, [5, 7, 3], "softmax", "float64", seed=10)
    y = Y.argmax(1)
    net = fastbp.MLP([5, 7, 3], activation="tanh", dtype="float64", seed=2)
    w = np.random.default_rng(1).uniform(0, 2, n)
    w[3] = 0.0
    gpu, cpu = (net.evaluate(X, y, device=d, sample_weight=w) for d in ("cuda", "cpu"))
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-12) and gpu["accuracy"] == cpu["accuracy"]
    other = net.evaluate(X, y, device="cuda", sample_weight=np.r_[w[:3], 5.0, w[4:]])["loss"]
    assert other != pytest.approx(gpu["loss"], rel=1e-6)   # the weights are used
    (value_gpu, grad_gpu), (value_cpu, grad_cpu) = (
        net.flat_gradient(X, y, l1=1e-3, l2=1e-2, device=d, sample_weight=w) for d in ("cuda", "cpu"))
    assert value_gpu == pytest.approx(value_cpu, rel=1e-12)
    np.testing.assert_allclose(grad_gpu, grad_cpu, **TIGHT)
    for (dW_gpu, db_gpu), (dW_cpu, db_cpu) in zip(net.gradients(X, y, device="cuda", sample_weight=w),
                                                  net.gradients(X, y, device="cpu", sample_weight=w)):
        np.testing.assert_allclose(dW_gpu, dW_cpu, **TIGHT)
        np.testing.assert_allclose(db_gpu, db_cpu, **TIGHT)
    report = fastbp.gradcheck(net, X, y, l1=1e-3, l2=1e-2, device="cuda", n_samples=12, sample_weight=w)
    assert report.passed, report


def test_weighted_launches_per_training_step(monkeypatch, launch_names):
    """A weighted step adds one launch (batch_weights, first): 3L + 3 = 12 per layer for
    a 3-layer net (13 with clip_norm / L1 / L2), 3 on the fused path (4); an unweighted fit
    keeps 11 / 2. A batch whose weights are all 0 launches nothing."""
    calls = launch_names
    net = fastbp.MLP([4, 5, 6, 3], activation="relu", dtype="float64")
    X, Y = make_data(10, net.sizes, "softmax", "float64", seed=12)
    w = np.ones(10)
    w[epoch_permutation(0, 0, 10)[5:]] = 0.0   # the second batch: skipped
    for path, plain, weighted in (("never", 11, 12), ("always", 2, 3)):
        use(monkeypatch, path)
        for extra, more in (({}, 0), (dict(clip_norm=1.0), 1)):
            for weights, per_step in ((None, plain), (w, weighted)):
                calls.clear()
                fresh = fastbp.MLP([4, 5, 6, 3], activation="relu", dtype="float64")
                fresh.fit(X, Y.argmax(1), optimizer=fastbp.Adam(1e-3), epochs=1, batch_size=5, seed=0,
                          device="cuda", sample_weight=weights, **extra)
                steps = 2 if weights is None else 1
                assert len(calls) == steps * (per_step + more) + 3, (path, extra, weights, calls)
                assert calls.count("batch_weights") == (0 if weights is None else 1)
                if weights is not None:
                    assert calls[0] == "batch_weights"


def test_device_weights_are_uploaded_once_per_fit(monkeypatch):
    """The weights go to the device when the plan is built; batches launch with the
    device copy (no host-to-device copy of weights per batch)."""
    n = 13
    X, Y = make_data(n, [4, 5, 3], "softmax", "float64", seed=13)
    params = kc.DeviceParameters(fastbp.MLP([4, 5, 3], dtype="float64").theta,
                                 fastbp.MLP([4, 5, 3], dtype="float64").layout, [spec.TANH, spec.SOFTMAX])
    use(monkeypatch, "never")
    plan = kc.EpochPlan(kc.kernels("float64"), params, cuda.to_device(X), cuda.to_device(Y), 5, spec.CROSS_ENTROPY,
                        spec.OPT_SGD, reduce=False, weights=np.linspace(0.0, 2.0, n))
    uploads = []
    to_device = cuda.to_device
    monkeypatch.setattr(cuda, "to_device", lambda *a, **k: uploads.append(a) or to_device(*a, **k))
    steps = kc.train_batches(plan, np.arange(n), 0, plan.n_batches)
    assert steps == 3 and uploads == []
