"""Export a trained network to ONNX, for inference without fastbp (``pip install 'fastbp[onnx]'``).

``export(net, path)`` (or ``net.to_onnx(path)``) writes one graph: the network's
standardisation when it has one (``Sub``, ``Div``), then per layer a ``Gemm`` and its
activation, batch normalization folded into the ``Gemm`` (running statistics:
W·γ/√(σ²+ε), β − μ·γ/√(σ²+ε)), dropout left out (inference), and a softmax or
sigmoid output. The batch dimension is dynamic; float32 or float64 throughout.

Outputs: a classifier gives ``label`` (int64 index, or the label from ``net.classes``)
and ``probabilities`` (as ``predict_proba``); a regressor gives ``predictions``
(n, n_outputs). ``register_skl2onnx()`` (run on import when skl2onnx is installed)
lets ``skl2onnx.to_onnx`` convert the ``fastbp.sklearn`` estimators with skl2onnx's
own MLP converters, inside pipelines too.
"""

import os

import numpy as np

from . import spec

#: the ONNX operator set the exported graphs use (onnxruntime >= 1.14 runs it)
OPSET = 17
#: IR version written into the file (IR 8 goes with opset 17; older runtimes reject newer IRs)
IR_VERSION = 8

_HIDDEN_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx package: pip install 'fastbp[onnx]' "
                          "(or pip install onnx)") from exc
    return onnx


def inference_layers(net):
    """``[(W, b, activation), ...]`` of ``net`` for inference, in float64, with batch
    normalization folded into W and b (dropout has no inference-time weights)."""
    layers = []
    total = sum(net.sizes[1:])
    offset = 0
    for W, b, gamma, name in zip(net.weights, net.biases, net.gammas, net.layer_activations):
        W, b = W.astype(np.float64), b.astype(np.float64)
        cols = W.shape[1]
        if gamma is not None:
            mean = net.bn_running[offset:offset + cols]
            var = net.bn_running[total + offset:total + offset + cols]
            factor = gamma.astype(np.float64) / np.sqrt(var + spec.BN_EPS)
            W, b = W * factor, b - mean * factor
        layers.append((W, b, name))
        offset += cols
    return layers


def to_model(net, dtype=None):
    """The ``onnx.ModelProto`` of ``net`` (``dtype``: "float32"/"float64"; default the
    network's), checked with ``onnx.checker``."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    dtype = net.dtype if dtype is None else np.dtype(dtype)
    if dtype.name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes, inits = [], []

    def const(name, value, kind=None):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=kind or dtype), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=f"{op}_{name}", **attrs))
        return name

    a = "X"
    if net.standardizer is not None:
        a = node("Sub", [a, const("feature_mean", net.standardizer.mean)], "centred")
        a = node("Div", [a, const("feature_scale", net.standardizer.scale)], "standardised")
    for layer, (W, b, activation) in enumerate(inference_layers(net), start=1):
        z = node("Gemm", [a, const(f"W{layer}", W), const(f"b{layer}", b)], f"z{layer}")
        if activation == "identity":
            a = z
        elif activation == "softmax":
            a = node("Softmax", [z], f"a{layer}", axis=1)
        elif activation == "leaky_relu":  # LeakyRelu has no float64 kernel in onnxruntime
            scaled = node("Mul", [z, const(f"slope{layer}", spec.LEAKY_SLOPE)], f"scaled_z{layer}")
            a = node("Max", [z, scaled], f"a{layer}")
        else:
            a = node(_HIDDEN_OPS[activation], [z], f"a{layer}")
    outputs = _output_nodes(net, a, node, const, elem)
    graph = helper.make_graph(nodes, f"fastbp_mlp_{'x'.join(map(str, net.sizes))}",
                              [helper.make_tensor_value_info("X", elem, ["N", net.n_features])],
                              outputs, initializer=inits)
    from . import __version__
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastbp", producer_version=__version__)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _output_nodes(net, a, node, const, elem):
    """Nodes after the last activation ``a``; returns the graph's output value infos."""
    from onnx import TensorProto, helper
    k = net.n_outputs
    if net.output == "identity":
        node("Identity", [a], "predictions")
        return [helper.make_tensor_value_info("predictions", elem, ["N", k])]
    if net.output == "sigmoid" and k == 1:  # predict_proba's [1 - p, p]
        node("Concat", [node("Sub", [const("one", [[1.0]]), a], "p_negative"), a], "probabilities", axis=1)
        index = node("Cast", [node("Greater", [a, const("half", 0.5)], "positive")], "label_index_2d",
                     to=TensorProto.INT64)
        index = node("Squeeze", [index, const("axis1", [1], np.int64)], "label_index")
        width = 2
    elif net.output == "sigmoid":  # several independent units: a 0/1 row per sample
        node("Identity", [a], "probabilities")
        node("Cast", [node("Greater", [a, const("half", 0.5)], "positive")], "label", to=TensorProto.INT64)
        return [helper.make_tensor_value_info("label", TensorProto.INT64, ["N", k]),
                helper.make_tensor_value_info("probabilities", elem, ["N", k])]
    else:
        node("Identity", [a], "probabilities")
        index = node("ArgMax", [a], "label_index", axis=1, keepdims=0)
        width = k
    label_type = TensorProto.INT64
    if net.classes is None:
        node("Identity", [index], "label")
    else:
        classes = np.asarray(net.classes)
        kind = np.int64 if classes.dtype.kind in "iub" else np.float64 if classes.dtype.kind == "f" else object
        label_type = {np.int64: TensorProto.INT64, np.float64: TensorProto.DOUBLE, object: TensorProto.STRING}[kind]
        values = classes.astype(str).astype(object) if kind is object else classes.astype(kind)
        node("Gather", [const("classes", values, kind), index], "label", axis=0)
    return [helper.make_tensor_value_info("label", label_type, ["N"]),
            helper.make_tensor_value_info("probabilities", elem, ["N", width])]


def export(net, path, dtype=None):
    """Write ``net`` as an ONNX file at ``path``; returns the ``onnx.ModelProto``."""
    onnx = _onnx()
    model = to_model(net, dtype)
    onnx.save_model(model, os.fspath(path))
    return model


# --- skl2onnx: the fastbp.sklearn estimators through skl2onnx's MLP converters ----------------


class _SklearnView:
    """What skl2onnx's MLP converters read of a fitted estimator, with batch
    normalization folded into ``coefs_`` / ``intercepts_``."""

    def __init__(self, estimator):
        net = estimator._synced_net()
        layers = inference_layers(net)
        self.coefs_ = [W.astype(net.dtype) for W, _, _ in layers]
        self.intercepts_ = [b.astype(net.dtype) for _, b, _ in layers]
        self.n_layers_ = estimator.n_layers_
        self.activation = estimator.activation
        self.out_activation_ = estimator.out_activation_
        for name in ("classes_", "_label_binarizer"):
            if hasattr(estimator, name):
                setattr(self, name, getattr(estimator, name))


def _through_view(converter):
    def convert(scope, operator, container):
        operator.raw_operator = _SklearnView(operator.raw_operator)
        return converter(scope, operator, container)
    return convert


def register_skl2onnx():
    """Register ``fastbp.sklearn.MLPClassifier`` / ``MLPRegressor`` with skl2onnx
    (same shape calculators and converters as scikit-learn's MLPs). Idempotent."""
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.multilayer_perceptron import (convert_sklearn_mlp_classifier,
                                                                    convert_sklearn_mlp_regressor)
    from skl2onnx.shape_calculators.linear_classifier import calculate_linear_classifier_output_shapes
    from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes

    from .sklearn import MLPClassifier, MLPRegressor
    update_registered_converter(MLPClassifier, "FastbpMLPClassifier", calculate_linear_classifier_output_shapes,
                                _through_view(convert_sklearn_mlp_classifier),
                                options={"zipmap": [True, False, "columns"], "output_class_labels": [False, True],
                                         "nocl": [True, False]})
    update_registered_converter(MLPRegressor, "FastbpMLPRegressor", calculate_linear_regressor_output_shapes,
                                _through_view(convert_sklearn_mlp_regressor))


try:
    import skl2onnx  # noqa: F401
except ImportError:  # optional: only needed to convert the scikit-learn estimators
    pass
else:
    register_skl2onnx()
