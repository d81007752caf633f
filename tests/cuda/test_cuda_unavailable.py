"""``device="cuda"`` without a GPU and without the simulator: a clear error, raised
before anything changes. Runs in the ordinary pytest process (no simulator)."""

import numpy as np
import pytest

import fastbp

without_cuda = pytest.mark.skipif(fastbp.cuda_available(), reason="a GPU or the CUDA simulator is available")


@without_cuda
def test_cuda_available_is_false():
    assert fastbp.cuda_available() is False


@without_cuda
@pytest.mark.parametrize("call", ["fit", "forward", "predict", "predict_proba", "evaluate"])
def test_device_cuda_raises_before_anything_changes(call):
    net = fastbp.MLP([3, 4, 2], seed=1)
    before = net.theta.copy()
    X, y = np.ones((5, 3)), np.array([0, 1, 0, 1, 1])
    args = (X, y) if call in ("fit", "evaluate") else (X,)
    with pytest.raises(RuntimeError, match="device='cuda' is not available.*NUMBA_ENABLE_CUDASIM"):
        getattr(net, call)(*args, device="cuda")
    np.testing.assert_array_equal(net.theta, before)
    assert net.fit_state is None


@pytest.mark.parametrize("device", ["gpu", "CUDA", None, 0])
def test_unknown_device_is_a_value_error(device):
    net = fastbp.MLP([3, 4, 2])
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        net.fit(np.ones((2, 3)), [0, 1], device=device)


@without_cuda
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_an_estimator_on_cuda_raises_before_anything_changes(solver):
    """The scikit-learn estimators' device="cuda": the same error, a fitted estimator untouched."""
    from fastbp.sklearn import MLPClassifier
    X, y = np.random.default_rng(0).standard_normal((20, 3)), np.arange(20) % 2
    fitted = MLPClassifier((4,), solver=solver, max_iter=3, random_state=0).fit(X, y)
    before = [c.copy() for c in fitted.coefs_]
    with pytest.raises(RuntimeError, match="device='cuda' is not available"):
        fitted.set_params(device="cuda", warm_start=True).fit(X, y)
    for a, b in zip(fitted.coefs_, before):
        np.testing.assert_array_equal(a, b)
