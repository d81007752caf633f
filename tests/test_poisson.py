"""Poisson regression in the CPU kernels: the exp output and the half Poisson deviance
(the training, forward and gradient grids in test_kernels_vs_reference.py and the
gradcheck in test_api.py cover the math); here the API around it."""

import numpy as np
import pytest

import fastbp
from fastbp import reference

from helpers import make_data

SIZES = [5, 7, 2]


def test_evaluate_and_predict_treat_exp_as_regression():
    net = fastbp.MLP(SIZES, output="exp", seed=1, dtype="float64")
    X, Y = make_data(17, SIZES, "exp", np.float64, seed=2)
    zs, acts = reference.forward(net.weights, net.biases, net.layer_activations, X)
    result = net.evaluate(X, Y)  # the default loss of the exp output is poisson
    assert set(result) == {"loss"}
    assert result["loss"] == pytest.approx(reference.sample_losses(zs[-1], acts[-1], Y, "poisson", "exp").mean(),
                                           rel=1e-12)
    np.testing.assert_allclose(net.predict(X), acts[-1], rtol=1e-12)
    one = fastbp.MLP([5, 3, 1], output="exp", seed=1)
    history = one.fit(X, Y[:, 0], epochs=2, batch_size=5)  # 1-D counts, as for identity
    assert one.predict(X).shape == (17,) and np.isnan(history.accuracy).all()
    with pytest.raises(ValueError, match="regresses"):
        one.predict_proba(X)


def test_negative_targets_are_refused_before_training():
    net = fastbp.MLP(SIZES, output="exp", seed=1)
    before = net.theta.copy()
    X, Y = make_data(9, SIZES, "exp", np.float32)
    Y[4, 1] = -1
    with pytest.raises(ValueError, match="poisson targets must be >= 0"):
        net.fit(X, Y, epochs=1)
    with pytest.raises(ValueError, match="poisson targets must be >= 0"):
        fastbp.MLP([5, 1], output="exp").fit(X, -Y[:, 0] - 1)
    np.testing.assert_array_equal(net.theta, before)


def test_saved_poisson_model_predicts_and_evaluates_from_the_command_line(tmp_path, capsys):
    from fastbp import cli
    net = fastbp.MLP([3, 4, 1], output="exp", seed=1, dtype="float64")
    X, Y = make_data(11, [3, 4, 1], "exp", np.float64, seed=3)
    net.fit(X, Y[:, 0], epochs=2, batch_size=4)
    net.save(tmp_path / "m.npz")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", Y[:, 0])
    assert cli.main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "X.npy")]) == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "prediction"
    np.testing.assert_allclose(np.array(out[1:], float), net.predict(X), rtol=1e-15)
    assert cli.main(["evaluate", str(tmp_path / "m.npz"), str(tmp_path / "X.npy"), "--target",
                     str(tmp_path / "y.npy")]) == 0
    assert f"loss (poisson) {net.evaluate(X, Y[:, 0])['loss']:.6g}" in capsys.readouterr().out
    with pytest.raises(NotImplementedError, match="exp output"):
        net.to_onnx()
