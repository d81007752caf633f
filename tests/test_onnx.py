"""ONNX export against onnxruntime: every hidden activation × output, float32 and float64,
batch normalization (folded) and dropout (left out), the stored standardisation, class
labels, a dynamic batch; and the scikit-learn estimators through skl2onnx."""

import numpy as np
import pytest

import fastbp
from fastbp.data import Standardizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
OUTPUTS = [("softmax", 3), ("sigmoid", 1), ("sigmoid", 2), ("identity", 2)]


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(model, X):
    sess = session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"X": X})))


def features(rows=17, n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, n)) * 2 + 0.5


def randomise_batchnorm(net, seed=3):
    """Running statistics and γ away from their initial 1s and 0s, so folding is tested."""
    rng = np.random.default_rng(seed)
    half = net.bn_running.size // 2
    net.bn_running[:half] = rng.normal(size=half)
    net.bn_running[half:] = rng.uniform(0.3, 3.0, half)
    for gamma in net.gammas:
        if gamma is not None:
            gamma[...] = rng.uniform(0.5, 1.5, gamma.size)
    for b in net.biases:
        b[...] = rng.normal(size=b.size) * 0.3


@pytest.mark.parametrize("mode", ["plain", "batchnorm", "dropout"])
@pytest.mark.parametrize("output,k", OUTPUTS)
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu", "identity"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnxruntime_equals_predict_proba(dtype, activation, output, k, mode):
    extra = {"batchnorm": True} if mode == "batchnorm" else {"dropout": 0.4} if mode == "dropout" else {}
    net = fastbp.MLP([5, 7, 6, k], activation=activation, output=output, dtype=dtype, seed=1, **extra)
    if mode == "batchnorm":
        randomise_batchnorm(net)
    X = features().astype(dtype)
    model = net.to_onnx()
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops and "Dropout" not in ops
    assert sum(op == "Gemm" for op in (n.op_type for n in model.graph.node)) == 3
    outputs = run(model, X)
    if output == "identity":
        assert set(outputs) == {"predictions"} and outputs["predictions"].dtype == dtype
        np.testing.assert_allclose(outputs["predictions"], net.forward(X), rtol=0, atol=TOLERANCE[dtype])
        return
    assert outputs["probabilities"].dtype == dtype
    np.testing.assert_allclose(outputs["probabilities"], net.predict_proba(X), rtol=0, atol=TOLERANCE[dtype])
    np.testing.assert_array_equal(outputs["label"], net.predict(X))


def test_batchnorm_and_dropout_nets_after_training():
    """Trained parameters and running statistics (not only random ones)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    for extra in ({"batchnorm": True}, {"dropout": 0.3}):
        net = fastbp.MLP([4, 9, 3], seed=0, dtype="float64", **extra)
        net.fit(X, y, epochs=3, batch_size=8)
        outputs = run(net.to_onnx(), X)
        np.testing.assert_allclose(outputs["probabilities"], net.predict_proba(X), rtol=0, atol=1e-12)


def test_standardisation_classes_and_dynamic_batch(tmp_path):
    X = features(rows=33) * [1, 10, 100, 1000, 0.1] + 7
    net = fastbp.MLP([5, 8, 3], seed=2, dtype="float32")
    net.standardizer = Standardizer.fit(X)
    net.classes = np.array(["low", "mid", "high"])
    path = tmp_path / "net.onnx"
    net.to_onnx(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 5
    for rows in (1, 17, 33):
        outputs = run(model, X[:rows].astype(np.float32))
        np.testing.assert_allclose(outputs["probabilities"], net.predict_proba(X[:rows]), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(outputs["label"], net.classes[net.predict(X[:rows])])
    # the same network without the standardisation gives other outputs on raw features
    plain = net.copy()
    plain.standardizer = None
    assert np.abs(run(plain.to_onnx(), X.astype(np.float32))["probabilities"] -
                  net.predict_proba(X)).max() > 1e-2


def test_export_in_the_other_dtype():
    net = fastbp.MLP([5, 4, 3], seed=0, dtype="float32")
    X = features()
    outputs = run(net.to_onnx(dtype="float64"), X)
    assert outputs["probabilities"].dtype == np.float64
    np.testing.assert_allclose(outputs["probabilities"], net.predict_proba(X), atol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        net.to_onnx(dtype="int32")


def test_cli_onnx_export_includes_the_standardisation(tmp_path, capsys):
    from fastbp import cli
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3)) * [1, 100, 0.01] + [0, 1000, 0]
    y = (X[:, 0] > 0).astype(int)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    assert cli.main(["train", str(tmp_path / "d.npz"), "--hidden", "4", "--epochs", "2", "--dtype", "float64",
                     "--save", str(tmp_path / "m.npz"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    net = fastbp.MLP.load(tmp_path / "m.npz")
    assert net.standardizer is not None
    outputs = run(onnx.load(str(tmp_path / "m.onnx")), X)
    np.testing.assert_allclose(outputs["probabilities"], net.predict_proba(X), rtol=0, atol=1e-12)


# --- skl2onnx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("labels", ["strings", "binary"])
def test_skl2onnx_converts_a_pipeline(dtype, labels, batchnorm):
    skl2onnx = pytest.importorskip("skl2onnx")
    import fastbp.onnx  # noqa: F401  (registers the estimators with skl2onnx)
    from sklearn.datasets import load_iris
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastbp.sklearn import MLPClassifier
    X, y = load_iris(return_X_y=True)
    X = X.astype(dtype)
    y = np.array(["setosa", "versicolor", "virginica"])[y] if labels == "strings" else y == 2
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0,
                                                         batchnorm=batchnorm))
    with pytest.warns(Warning):  # ConvergenceWarning after 5 iterations
        pipe.fit(X, y)
    model = skl2onnx.to_onnx(pipe, X[:1], options={"zipmap": False})
    label, proba = session(model).run(None, {"X": X})
    np.testing.assert_array_equal(label, pipe.predict(X))
    np.testing.assert_allclose(proba, pipe.predict_proba(X), rtol=0,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_skl2onnx_converts_a_regressor():
    skl2onnx = pytest.importorskip("skl2onnx")
    import fastbp.onnx  # noqa: F401
    from fastbp.sklearn import MLPRegressor
    X = features(rows=40, n=3)
    y = X @ [1.0, -2.0, 0.5]
    reg = MLPRegressor(hidden_layer_sizes=(6,), max_iter=200, random_state=0, solver="lbfgs").fit(X, y)
    (pred,) = session(skl2onnx.to_onnx(reg, X[:1])).run(None, {"X": X})
    np.testing.assert_allclose(pred[:, 0], reg.predict(X), rtol=0, atol=1e-12)


def test_deploy_example_quick(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "deploy_onnx.py"
    spec = importlib.util.spec_from_file_location("deploy_onnx", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "labels identical" in out and "onnxruntime" in out
    assert example.main(["--quick", "--min-accuracy", "1.01"]) == 1  # the gate can fail
