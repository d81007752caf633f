"""The scikit-learn estimators with ``device="cuda"`` (under the simulator or on a GPU):
the stochastic solvers' epochs and lbfgs's gradients on the device give the CPU
estimator's fit to rounding (float64), early stopping and partial_fit included."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import fastbp
from fastbp import cuda_training
from fastbp.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.skipif(not fastbp.cuda_available(), reason="needs a GPU or NUMBA_ENABLE_CUDASIM=1")

TIGHT = dict(rtol=1e-9, atol=1e-11)


def data(n=24, seed=0):  # tiny: the simulator runs one Python thread per CUDA thread
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1)


@pytest.fixture
def device_calls(monkeypatch):
    """How many fits built a CUDA engine and how many gradients the device computed."""
    calls = {"engines": 0, "gradients": 0}
    engine, gradient = cuda_training.CudaEngine, cuda_training.loss_and_gradient

    class CountedEngine(engine):
        def __init__(self, *args, **kwargs):
            calls["engines"] += 1
            super().__init__(*args, **kwargs)

    def counted_gradient(*args, **kwargs):
        calls["gradients"] += 1
        return gradient(*args, **kwargs)
    monkeypatch.setattr(cuda_training, "CudaEngine", CountedEngine)
    monkeypatch.setattr(cuda_training, "loss_and_gradient", counted_gradient)
    return calls


def fit_both(estimator, X, y, **fit_args):
    fitted = {}
    for device in ("cpu", "cuda"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted[device] = estimator.__class__(**{**estimator.get_params(), "device": device}).fit(X, y, **fit_args)
    return fitted["cpu"], fitted["cuda"]


@pytest.mark.parametrize("solver,extra", [("adam", {}), ("sgd", dict(early_stopping=True, validation_fraction=0.25)),
                                          ("lbfgs", {})], ids=["adam", "sgd-early-stopping", "lbfgs"])
def test_classifier_on_cuda_equals_cpu(solver, extra, device_calls):
    X, y = data()
    cpu, gpu = fit_both(MLPClassifier((5,), solver=solver, batch_size=12, max_iter=2, random_state=1,
                                      alpha=1e-3, **extra), X, y, sample_weight=np.linspace(0.5, 2.0, len(y)))
    for a, b in zip(gpu.coefs_ + gpu.intercepts_, cpu.coefs_ + cpu.intercepts_):
        np.testing.assert_allclose(a, b, **TIGHT)
    assert gpu.n_iter_ == cpu.n_iter_
    assert device_calls["gradients" if solver == "lbfgs" else "engines"] >= 1  # the device did train
    if solver != "lbfgs":
        np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, **TIGHT)
    np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))


def test_regressor_partial_fit_on_cuda_equals_cpu(device_calls):
    X, _ = data(seed=2)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0])
    nets = []
    for device in ("cpu", "cuda"):
        est = MLPRegressor(hidden_layer_sizes=(6,), batch_size=12, random_state=3, device=device)
        for _ in range(2):
            est.partial_fit(X, y)
        nets.append(est)
    assert device_calls["engines"] == 2  # one per partial_fit on the device
    for a, b in zip(nets[1].coefs_, nets[0].coefs_):
        np.testing.assert_allclose(a, b, **TIGHT)
    np.testing.assert_allclose(nets[1].loss_curve_, nets[0].loss_curve_, **TIGHT)
