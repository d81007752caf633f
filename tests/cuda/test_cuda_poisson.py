"""Poisson regression on the GPU: the exp output and the half Poisson deviance in both
CUDA paths (per-layer and fused) against ``fastbp.reference`` and the CPU fit, with and
without sample weights; forward / evaluate / flat_gradient against the CPU. (The output
delta itself: test_cuda_kernels.py and test_cuda_sample_weight.py.)

Runs under ``NUMBA_ENABLE_CUDASIM=1`` (or on a GPU); skipped otherwise; tiny shapes.
"""

from dataclasses import replace

import numpy as np
import pytest

import fastbp
from fastbp.kernels import cuda_config
from fastbp.training import epoch_permutation
from tests.helpers import ReferenceTrainer, assert_close, make_data

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(not fastbp.cuda_available(), reason="no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set"),
]

SIZES = [5, 7, 2]


def use(monkeypatch, path):
    monkeypatch.setattr(cuda_config, "config", replace(cuda_config.config, fused=path))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("path", ["never", "always"])
def test_poisson_fit_matches_reference_and_cpu(path, weighted, monkeypatch):
    """A float64 Poisson fit (11 rows, batches of 4: a partial last batch; Adam, L2) on
    the GPU equals the reference's epoch and the CPU fit (θ, loss, optimizer state)."""
    use(monkeypatch, path)
    n, batch = 11, 4
    X, Y = make_data(n, SIZES, "exp", "float64", seed=3)
    X *= 0.5
    w = np.random.default_rng(4).uniform(0, 2, n) if weighted else None
    nets = {d: fastbp.MLP(SIZES, activation="tanh", output="exp", dtype="float64", seed=2) for d in ("cuda", "cpu")}
    trainer = ReferenceTrainer(nets["cuda"])
    histories = {d: net.fit(X, Y, optimizer=fastbp.Adam(0.01), epochs=1, batch_size=batch, seed=5, l2=1e-2,
                            device=d, sample_weight=w) for d, net in nets.items()}
    mean_loss, _ = trainer.epoch(X, Y, epoch_permutation(5, 0, n), batch, "poisson", fastbp.Adam(0.01), 0.01,
                                 l2=1e-2, sample_weight=w)
    assert_close(histories["cuda"].loss[0], mean_loss, "float64", "loss")
    assert_close(nets["cuda"].theta, trainer.flat(), "float64", "θ vs reference")
    tight = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nets["cuda"].theta, nets["cpu"].theta, **tight)
    np.testing.assert_allclose(histories["cuda"].loss, histories["cpu"].loss, **tight)
    np.testing.assert_allclose(nets["cuda"].fit_state.state2, nets["cpu"].fit_state.state2, **tight)


def test_poisson_float32_fit_matches_cpu(monkeypatch):
    """float32, fused path, batches of 1: the CPU fit to float32 rounding."""
    use(monkeypatch, "always")
    X, Y = make_data(5, SIZES, "exp", "float32", seed=6)
    nets = {d: fastbp.MLP(SIZES, output="exp", dtype="float32", seed=1) for d in ("cuda", "cpu")}
    for d, net in nets.items():
        net.fit(X, Y, optimizer=fastbp.SGD(0.05), epochs=1, batch_size=1, device=d)
    np.testing.assert_allclose(nets["cuda"].theta, nets["cpu"].theta, rtol=1e-4, atol=1e-5)


def test_poisson_inference_and_gradient_match_cpu():
    """forward (e^z), evaluate (the mean half deviance, no accuracy) and flat_gradient
    with L1 on the device equal the CPU's."""
    X, Y = make_data(9, SIZES, "exp", "float64", seed=7)
    net = fastbp.MLP(SIZES, activation="relu", output="exp", dtype="float64", seed=3)
    np.testing.assert_allclose(net.predict(X, device="cuda"), net.predict(X), rtol=1e-12)
    gpu, cpu = net.evaluate(X, Y, device="cuda"), net.evaluate(X, Y)
    assert set(gpu) == {"loss"} and gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-12)
    (v_gpu, g_gpu), (v_cpu, g_cpu) = (net.flat_gradient(X, Y, l1=1e-3, device=d) for d in ("cuda", "cpu"))
    assert v_gpu == pytest.approx(v_cpu, rel=1e-12)
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-10, atol=1e-12)
