"""Every CUDA kernel against ``fastbp.reference`` (float64 tight, float32 loose) on
shapes that span several tiles/blocks and are not multiples of them, then whole fits
against the CPU path from the same seed.

Runs under ``NUMBA_ENABLE_CUDASIM=1`` (or on a GPU); skipped otherwise.
"""

import warnings
from dataclasses import replace

import numpy as np
import pytest

import fastbp
from fastbp import reference, spec
from fastbp.kernels import cuda_config
from fastbp.kernels import rng as rng_module
from fastbp.layout import make_layout, weight_views

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(not fastbp.cuda_available(),
                       reason="no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set"),
]

if fastbp.cuda_available():
    from numba import cuda

    from fastbp.kernels import cuda as kc

DTYPES = ["float64", "float32"]
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-4, atol=1e-5)}
# (rows, fan_in, fan_out): several 4×4 tiles with partial edges, a single row, a
# fan_out of one
SHAPES = [(17, 33, 9), (1, 5, 6), (6, 3, 1)]


def close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


def dev(array):
    return cuda.to_device(np.ascontiguousarray(array))


def one_hot(rng, rows, k, dtype):
    return np.eye(k, dtype=dtype)[rng.integers(0, k, rows)]


# --- forward, delta, gradient ---------------------------------------------------------

VARIANTS = ["wide", "narrow"]


def NO_DROPOUT():
    """(keep, threshold, counters, layer) of a layer without dropout."""
    return 1.0, rng_module.keep_threshold(1.0), dev(np.zeros(3, dtype=np.int64)), 0


def dropout_args(keep, step, seed, epoch, layer):
    """(keep, threshold, counters, layer) and the reference's mask for them."""
    return keep, rng_module.keep_threshold(keep), dev(np.array([step, seed, epoch], dtype=np.int64)), layer


def gemm_kernels(dtype, variant):
    K = kc.kernels(dtype)
    return K if variant == "wide" else K.narrow


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ["identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"])
def test_forward_layer(dtype, shape, activation, variant):
    if shape[0] * shape[1] * shape[2] > 1000 and (activation not in ("relu", "softmax") or variant == "narrow"):
        pytest.skip("the large shape runs the wide GEMM with relu and softmax only (simulator time)")
    rows, fan_in, fan_out = shape
    if activation == "softmax" and fan_out < 2:
        fan_out = 2
    rng = np.random.default_rng(1)
    a_prev = rng.standard_normal((rows, fan_in)).astype(dtype)
    weights = rng.standard_normal((fan_in, fan_out)).astype(dtype)
    bias = rng.standard_normal(fan_out).astype(dtype)
    K = gemm_kernels(dtype, variant)
    z, a = cuda.device_array((rows, fan_out), dtype), cuda.device_array((rows, fan_out), dtype)
    code = spec.ACTIVATIONS[activation]
    K.forward_layer[kc.tiles(rows, fan_out, K.config)](dev(a_prev), dev(weights), dev(bias), code, rows, z, a,
                                                       *NO_DROPOUT())
    if code == spec.SOFTMAX:
        K.softmax_rows[kc.line(rows, K.config)](z, rows, a)
    z_ref = a_prev.astype(np.float64) @ weights + bias
    close(z.copy_to_host(), z_ref, dtype)
    close(a.copy_to_host(), reference.activate(z_ref, activation), dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ["identity", "sigmoid", "tanh", "relu", "leaky_relu"])
def test_backprop_delta(dtype, shape, activation, variant):
    if shape[0] * shape[1] * shape[2] > 1000 and (activation not in ("relu", "tanh") or variant == "narrow"):
        pytest.skip("the large shape runs the wide GEMM with relu and tanh only (simulator time)")
    rows, fan_in, fan_out = shape
    rng = np.random.default_rng(2)
    delta = rng.standard_normal((rows, fan_out)).astype(dtype)
    weights = rng.standard_normal((fan_in, fan_out)).astype(dtype)
    z = rng.standard_normal((rows, fan_in)).astype(dtype)
    a = reference.activate(z, activation).astype(dtype)
    K = gemm_kernels(dtype, variant)
    out = cuda.device_array((rows, fan_in), dtype)
    K.backprop_delta[kc.tiles(rows, fan_in, K.config)](dev(delta), dev(weights), dev(z), dev(a),
                                                       spec.ACTIVATIONS[activation], rows, out, *NO_DROPOUT())
    expected = (delta.astype(np.float64) @ weights.T) * reference.activation_derivative(z, a, activation)
    close(out.copy_to_host(), expected, dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # uint64 hashing in the simulator
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_dropout_forward_and_delta(dtype, activation, variant):
    """forward_layer drops with the reference's counter-based mask (reference.batch_masks:
    seed 7, epoch 2, step 5, hidden layer 1, keep 0.6), and backprop_delta into that layer
    multiplies by the same mask, with f' at the undropped activation."""
    rows, fan_in, fan_out = 9, 5, 7
    rng = np.random.default_rng(14)
    a_prev = rng.standard_normal((rows, fan_in)).astype(dtype)
    weights = rng.standard_normal((fan_in, fan_out)).astype(dtype)
    bias = rng.standard_normal(fan_out).astype(dtype)
    mask = reference.batch_masks(7, 2, 5, [fan_in, 3, fan_out], [0.0, 0.4], np.dtype(dtype).type, rows)[1]
    assert 0 < (mask == 0).sum() < mask.size
    K = gemm_kernels(dtype, variant)
    code = spec.ACTIVATIONS[activation]
    z, a = cuda.device_array((rows, fan_out), dtype), cuda.device_array((rows, fan_out), dtype)
    K.forward_layer[kc.tiles(rows, fan_out, K.config)](dev(a_prev), dev(weights), dev(bias), code, rows, z, a,
                                                       *dropout_args(0.6, 5, 7, 2, 1))
    z_ref = a_prev.astype(np.float64) @ weights + bias
    close(a.copy_to_host(), reference.dropout(reference.activate(z_ref, activation), mask), dtype)
    # δ into the dropped layer: (δ·Wᵀ) ⊙ mask ⊙ f'(z) at the undropped f(z)
    fan_next = 4
    delta = rng.standard_normal((rows, fan_next)).astype(dtype)
    w_next = rng.standard_normal((fan_out, fan_next)).astype(dtype)
    out = cuda.device_array((rows, fan_out), dtype)
    K.backprop_delta[kc.tiles(rows, fan_out, K.config)](dev(delta), dev(w_next), z, a, code, rows, out,
                                                        *dropout_args(0.6, 5, 7, 2, 1))
    undropped = reference.activate(z_ref, activation)
    expected = (delta.astype(np.float64) @ w_next.T) * mask * reference.activation_derivative(z_ref, undropped,
                                                                                              activation)
    close(out.copy_to_host(), expected, dtype)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_weight_gradient(dtype, shape, variant, splits):
    if shape[0] * shape[1] * shape[2] > 1000 and (variant == "narrow" or splits == 1):
        pytest.skip("the large shape runs the wide split-K GEMM only (simulator time)")
    rows, fan_in, fan_out = shape
    rng = np.random.default_rng(3)
    bmax = rows + 3  # buffers longer than the batch: rows past `rows` must be ignored
    a_prev = rng.standard_normal((bmax, fan_in)).astype(dtype)
    delta = rng.standard_normal((bmax, fan_out)).astype(dtype)
    K = gemm_kernels(dtype, variant)
    dW = dev(np.full((splits, fan_in * fan_out), np.nan, dtype))   # every slice must be written
    db = dev(np.full((splits, fan_out), np.nan, dtype))
    K.weight_gradient[kc.tiles(fan_in, fan_out, K.config, splits)](dev(a_prev), dev(delta), rows, dW, db)
    slices = dW.copy_to_host().reshape(splits, fan_in, fan_out)
    close(slices.sum(axis=0), a_prev[:rows].T.astype(np.float64) @ delta[:rows], dtype)
    close(db.copy_to_host().sum(axis=0), delta[:rows].astype(np.float64).sum(axis=0), dtype)
    if splits > 1 and rows > 1:  # each slice is the gradient of its own rows
        chunk = -(-(-(-rows // splits)) // K.config.depth) * K.config.depth
        close(slices[0], a_prev[:chunk].T.astype(np.float64) @ delta[:chunk], dtype)


# --- loss and output delta ------------------------------------------------------------------


def targets_for(output, loss, rng, rows, k, dtype):
    if output == "softmax" and loss == "cross_entropy":
        return one_hot(rng, rows, k, dtype)
    if output == "sigmoid":
        return rng.integers(0, 2, (rows, k)).astype(dtype)
    if output == "exp":   # counts, zeros included
        return rng.poisson(1.5, (rows, k)).astype(dtype)
    return rng.standard_normal((rows, k)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 19])
@pytest.mark.parametrize("output, loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                          ("identity", "mse"), ("sigmoid", "mse"), ("softmax", "mse"),
                                          ("exp", "poisson")])
def test_output_delta_and_correct_count(dtype, rows, output, loss):
    k = 3
    rng = np.random.default_rng(4)
    z = (3 * rng.standard_normal((rows, k))).astype(dtype)
    z[0, 0] = 40  # far in the saturated range: the stable forms must stay finite
    a = reference.activate(z.astype(np.float64), output).astype(dtype)
    Y = targets_for(output, loss, rng, rows, k, dtype)
    K = kc.kernels(dtype)
    delta = cuda.device_array((rows, k), dtype)
    a_device = dev(np.zeros_like(a) if output == "softmax" else a)   # a softmax is computed here
    sums = dev(np.full(1, 0.25))            # the kernel adds to what is there
    counts = dev(np.array([2, 0], dtype=np.int64))
    batch = rows + 2                        # inv_batch is an argument, not 1/rows
    K.output_delta[kc.line(rows, K.config)](dev(z), a_device, dev(Y), spec.ACTIVATIONS[output],
                                            spec.resolve_loss(loss, output), rows, 1.0 / batch, None, None,
                                            delta, sums, counts)
    z64, a64, Y64 = z.astype(np.float64), a.astype(np.float64), Y.astype(np.float64)
    close(a_device.copy_to_host(), a64, dtype)
    close(delta.copy_to_host(), reference.output_delta(z64, a64, Y64, loss, output) / batch, dtype)
    close(sums.copy_to_host()[0] - 0.25, reference.sample_losses(z64, a64, Y64, loss, output).sum(), dtype)
    assert counts.copy_to_host()[0] - 2 == reference.correct_count(a, Y, output)


# --- update ---------------------------------------------------------------------------------

OPTIMIZERS = {"sgd": spec.OPT_SGD, "momentum": spec.OPT_MOMENTUM, "nesterov": spec.OPT_NESTEROV,
              "rmsprop": spec.OPT_RMSPROP, "adam": spec.OPT_ADAM}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("l1, l2, clip_norm, clip_value", [(0.0, 0.0, 0.0, 0.0), (1e-2, 1e-1, 0.3, 0.02)])
def test_update_params(dtype, optimizer, l1, l2, clip_norm, clip_value):
    """The update of split-K slices (2 and 1 per layer) against the reference step of
    their sum; ``grad`` receives the sum."""
    sizes = [5, 7, 3]
    layout, n = make_layout(sizes)
    rng = np.random.default_rng(5)
    theta = rng.standard_normal(n).astype(dtype)
    theta[3] = 0  # sign(0) = 0 in the L1 term
    grad = rng.standard_normal(n).astype(dtype)
    state1 = np.abs(rng.standard_normal(n)).astype(dtype)
    state2 = np.abs(rng.standard_normal(n)).astype(dtype)
    lr, mu, beta2, eps, t = 0.05, 0.8, 0.99, 1e-6, 3
    hyper = np.zeros(spec.N_HYPER)
    hyper[[spec.H_LR, spec.H_MOMENTUM, spec.H_BETA2, spec.H_EPS, spec.H_L1, spec.H_L2, spec.H_CLIP_NORM,
           spec.H_CLIP_VALUE]] = lr, mu, beta2, eps, l1, l2, clip_norm, clip_value
    K = kc.kernels(dtype)
    params = kc.DeviceParameters(theta, layout, [spec.RELU, spec.SOFTMAX], state1, state2)
    parts = kc.GradientParts(params, [2, 1])
    halves = rng.random(n).astype(dtype)   # the two slices of layer 0 add up to grad
    for (offset, size, splits, at, _) in parts.table.copy_to_host():
        chunk = grad[offset:offset + size]
        first = halves[offset:offset + size] * chunk if splits == 2 else chunk
        slices = [first, chunk - first] if splits == 2 else [chunk]
        parts.buffer[at:at + splits * size].copy_to_device(np.concatenate(slices).astype(dtype))
    params.hyper.copy_to_device(hyper)
    params.counters.copy_to_device(np.array([t, 0, 0]))
    work = kc.DeviceWorkspace(sizes, 2, dtype)
    rows = 11
    kc.launch(kc.update_launches(K, params, parts, work, rows, bool(clip_norm or l1 or l2), OPTIMIZERS[optimizer]))

    # the reference: lists of arrays, in float64
    ref = theta.astype(np.float64)
    W, b = weight_views(ref, layout)
    dW, db = weight_views(grad.astype(np.float64), layout)
    s1 = [*weight_views(state1.astype(np.float64), layout)[0], *weight_views(state1.astype(np.float64), layout)[1]]
    s2 = [*weight_views(state2.astype(np.float64), layout)[0], *weight_views(state2.astype(np.float64), layout)[1]]
    pen = reference.penalty(W, l1, l2)
    grads = [g + reference.regularisation_gradient(w, l1, l2) for g, w in zip(dW, W)] + list(db)
    grads = reference.clip(grads, clip_norm or None, clip_value or None)
    reference.optimizer_step(optimizer, [*W, *b], grads, {"s1": s1, "s2": s2}, lr, t, momentum=mu,
                             beta2=beta2, eps=eps)
    close(params.theta.copy_to_host(), ref, dtype)
    layer0 = layout[1, 2]  # the end of layer 0's parameters, whose slices were summed into grad
    close(params.grad.copy_to_host()[:layer0], grad[:layer0], dtype)
    if optimizer != "sgd":
        close(params.state1.copy_to_host(), _flat(s1, layout, n), dtype)
    if optimizer == "adam":
        close(params.state2.copy_to_host(), _flat(s2, layout, n), dtype)
    close(work.sums.copy_to_host()[0], rows * pen if (l1 or l2) else 0.0, dtype)


def _flat(arrays, layout, n):
    """Inverse of weight_views for the list [W_0.., b_0..]."""
    flat = np.zeros(n)
    W, b = weight_views(flat, layout)
    L = len(W)
    for l in range(L):
        W[l][...] = arrays[l]
        b[l][...] = arrays[L + l]
    return flat


# --- gather and checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_batch(dtype):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((23, 5)).astype(dtype)
    Y = rng.standard_normal((23, 3)).astype(dtype)
    perm = rng.permutation(23).astype(np.int64)
    start, rows = 16, 7  # the partial last batch of a batch size of 8
    K = kc.kernels(dtype)
    x, y = dev(np.full((8, 5), 99, dtype=dtype)), dev(np.full((8, 3), 99, dtype=dtype))
    counters = dev(np.array([4, 0, 0], dtype=np.int64))
    K.gather_batch[kc.line(rows * 8, K.config)](dev(X), dev(Y), dev(perm), start, rows, x, y, counters)
    assert counters.copy_to_host()[0] == 5   # the step count advanced once
    for out, source in ((x.copy_to_host(), X), (y.copy_to_host(), Y)):
        np.testing.assert_array_equal(out[:rows], source[perm[start:start + rows]])
        np.testing.assert_array_equal(out[rows:], 99)  # rows past the batch untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_count_nonfinite(dtype):
    values = np.arange(29, dtype=dtype)
    values[[0, 7, 28]] = np.nan, np.inf, -np.inf
    K = kc.kernels(dtype)
    counts = dev(np.zeros(2, dtype=np.int64))
    K.count_nonfinite[kc.strided(29, K.config)](dev(values), counts)
    assert counts.copy_to_host()[1] == 3


# --- whole passes --------------------------------------------------------------------------------


def network(sizes, hidden, output, dtype, seed=0):
    return fastbp.MLP(sizes, activation=hidden, output=output, dtype=dtype, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden, output, loss", [(["sigmoid", "leaky_relu"], "softmax", "cross_entropy"),
                                                  (["tanh", "relu"], "identity", "mse")])
def test_loss_and_gradient(dtype, hidden, output, loss):
    net = network([6, 5, 7, 3], hidden, output, dtype)
    rng = np.random.default_rng(7)
    X = rng.standard_normal((9, 6)).astype(dtype)
    Y = targets_for(output, loss, rng, 9, 3, dtype)
    K = kc.kernels(dtype)
    params = kc.DeviceParameters(net.theta, net.layout, net.codes)
    value = kc.loss_and_gradient(K, params, dev(X), dev(Y), spec.resolve_loss(loss, output))
    W, b = (list(v) for v in weight_views(net.theta.astype(np.float64), net.layout))
    ref_value, dWs, dbs = reference.gradients(W, b, net.layer_activations, X.astype(np.float64),
                                              Y.astype(np.float64), loss)
    close(value, ref_value, dtype)
    close(params.grad.copy_to_host(), _flat([*dWs, *dbs], net.layout, net.n_params), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_and_gradcheck_on_the_device(dtype):
    """flat_gradient / gradients / gradcheck with device="cuda" (9 rows: split-K
    slices summed by sum_gradient) equal the CPU's, L1/L2 included."""
    net = network([4, 6, 5, 3], "tanh", "softmax", dtype)
    rng = np.random.default_rng(17)
    X, y = rng.standard_normal((9, 4)).astype(dtype), rng.integers(0, 3, 9)
    value, grad = net.flat_gradient(X, y, l1=1e-3, l2=1e-2, device="cuda")
    value_cpu, grad_cpu = net.flat_gradient(X, y, l1=1e-3, l2=1e-2)
    close(value, value_cpu, dtype)
    close(grad, grad_cpu, dtype)
    for (dW, db), (dW_cpu, db_cpu) in zip(net.gradients(X, y, device="cuda"), net.gradients(X, y)):
        close(dW, dW_cpu, dtype)
        close(db, db_cpu, dtype)
    report = fastbp.gradcheck(net, X, y, device="cuda", n_samples=12)
    assert report.passed, report


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_and_evaluate_match_reference(dtype):
    net = network([4, 6, 3], "tanh", "softmax", dtype)
    rng = np.random.default_rng(8)
    X = rng.standard_normal((11, 4)).astype(dtype)
    y = rng.integers(0, 3, 11)
    W, b = (list(v) for v in weight_views(net.theta.astype(np.float64), net.layout))
    zs, acts = reference.forward(W, b, net.layer_activations, X.astype(np.float64))
    close(net.forward(X, device="cuda"), acts[-1], dtype)
    np.testing.assert_array_equal(net.predict(X, device="cuda"), acts[-1].argmax(axis=1))
    result = net.evaluate(X, y, device="cuda")
    Y = np.eye(3)[y]
    close(result["loss"], reference.sample_losses(zs[-1], acts[-1], Y, "cross_entropy", "softmax").mean(), dtype)
    assert result["accuracy"] == reference.correct_count(acts[-1], Y, "softmax") / 11


# --- whole fits against the CPU path ---------------------------------------------------------------

FITS = [
    # (sizes, hidden, output, loss, optimizer, extra fit arguments, n, batch size); every
    # n leaves a partial last batch, n = 23 / batch 10 spans several tiles and row blocks
    ([5, 6, 3], "tanh", "softmax", "cross_entropy", fastbp.Adam(0.01), dict(clip_norm=0.5, l2=1e-3), 13, 5),
    ([4, 5, 2], "relu", "sigmoid", "binary_cross_entropy", fastbp.Nesterov(0.05), dict(l1=1e-3, clip_value=0.1),
     13, 5),
    ([3, 4, 1], "leaky_relu", "identity", "mse", fastbp.RMSprop(0.01), dict(schedule="step"), 13, 5),
    ([6, 9, 3], "sigmoid", "softmax", "mse", fastbp.Momentum(0.1), dict(checkpoint=1), 23, 10),
    ([3, 5, 2], "identity", "sigmoid", "binary_cross_entropy", fastbp.SGD(0.1), dict(shuffle=False), 23, 10),
]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(FITS)), ids=[f"{f[2]}-{f[3]}-{f[4].name}" for f in FITS])
def test_fit_matches_cpu(dtype, case, monkeypatch):
    sizes, hidden, output, loss, optimizer, extra, n, batch_size = FITS[case]
    if case % 2:  # the automatic choice picks wide GEMMs on these tiny shapes: force the other
        monkeypatch.setattr(cuda_config, "config", replace(cuda_config.config, gemm="narrow"))
    rng = np.random.default_rng(9)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = (rng.integers(0, sizes[-1], n) if output == "softmax" else
         rng.integers(0, 2, (n, sizes[-1])) if output == "sigmoid" else rng.standard_normal((n, 1)))
    on_gpu, on_cpu = network(sizes, hidden, output, dtype, seed=3), network(sizes, hidden, output, dtype, seed=3)
    kwargs = dict(loss=loss, optimizer=optimizer, epochs=2, batch_size=batch_size, **extra)
    h_gpu = on_gpu.fit(X, y, device="cuda", **kwargs)
    h_cpu = on_cpu.fit(X, y, **kwargs)
    close(on_gpu.theta, on_cpu.theta, dtype)
    close(h_gpu.loss, h_cpu.loss, dtype)
    close(np.array(h_gpu.grad_norm), np.array(h_cpu.grad_norm), dtype)        # per-layer diagnostics
    close(np.array(h_gpu.update_ratio), np.array(h_cpu.update_ratio), dtype)
    np.testing.assert_array_equal(h_gpu.accuracy, h_cpu.accuracy)
    assert h_gpu.lr == h_cpu.lr and h_gpu.epochs == h_cpu.epochs == 2
    for name in ("state1", "state2", "step"):
        close(getattr(on_gpu.fit_state, name), getattr(on_cpu.fit_state, name), dtype)
    if case:
        return
    # warm start continues from the device-trained optimizer state on both paths
    on_gpu.fit(X, y, device="cuda", warm_start=True, **{**kwargs, "epochs": 1})
    on_cpu.fit(X, y, warm_start=True, **{**kwargs, "epochs": 1})
    close(on_gpu.theta, on_cpu.theta, dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # uint64 hashing in the simulator
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_fit_matches_reference(dtype):
    """Two epochs with dropout on both hidden layers (several batches, the last partial,
    a second epoch: the masks follow (seed, global epoch, step, layer, row, unit)) equal
    the reference's masked gradients (``reference.batch_masks``, the counter-based masks)
    and Adam steps."""
    from fastbp.training import epoch_permutation
    sizes, dropout, n, batch, seed, lr = [5, 7, 6, 3], [0.3, 0.5], 13, 5, 11, 0.01
    net = fastbp.MLP(sizes, activation="tanh", output="softmax", dtype=dtype, seed=3, dropout=dropout)
    rng = np.random.default_rng(15)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = rng.integers(0, 3, n)
    W, b = (list(v) for v in weight_views(net.theta.astype(np.float64).copy(), net.layout))
    history = net.fit(X, y, optimizer=fastbp.Adam(lr), epochs=2, batch_size=batch, seed=seed, device="cuda")
    state = reference.new_optimizer_state([*W, *b])
    Y = np.eye(3)[y]
    for epoch in range(2):
        perm = epoch_permutation(seed, epoch, n)
        total, correct = 0.0, 0
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            state["t"] += 1
            masks = reference.batch_masks(seed, epoch, state["t"], sizes, dropout, np.float64, len(idx))
            value, dWs, dbs = reference.gradients(W, b, net.layer_activations, X[idx].astype(np.float64), Y[idx],
                                                  "cross_entropy", masks=masks)
            acts = reference.forward(W, b, net.layer_activations, X[idx].astype(np.float64), masks)[1]
            total += len(idx) * value
            correct += reference.correct_count(acts[-1], Y[idx], "softmax")
            reference.optimizer_step("adam", [*W, *b], [*dWs, *dbs], state, lr, state["t"])
        close(history.loss[epoch], total / n, dtype)
        assert history.accuracy[epoch] == correct / n
    close(net.theta, _flat([*W, *b], net.layout, net.n_params), dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # uint64 hashing in the simulator
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_fit_matches_cpu(dtype):
    """The same fit with dropout on both devices: the same parameters to float rounding."""
    rng = np.random.default_rng(16)
    X = rng.standard_normal((13, 5)).astype(dtype)
    y = rng.integers(0, 3, 13)
    nets = [fastbp.MLP([5, 7, 6, 3], activation="relu", dtype=dtype, seed=3, dropout=[0.3, 0.5]) for _ in range(2)]
    kwargs = dict(optimizer=fastbp.Adam(0.01), epochs=2, batch_size=5, seed=11, clip_norm=1.0)
    h_gpu = nets[0].fit(X, y, device="cuda", **kwargs)
    h_cpu = nets[1].fit(X, y, **kwargs)
    close(nets[0].theta, nets[1].theta, dtype)
    close(h_gpu.loss, h_cpu.loss, dtype)


def test_validation_runs_on_the_device(monkeypatch):
    """validation_data during a device fit is evaluated on the device θ (the CPU
    evaluate is never called) and gives the CPU fit's val_loss / val_accuracy."""
    from fastbp import cpu_training
    rng = np.random.default_rng(18)
    X, y = rng.standard_normal((12, 4)), rng.integers(0, 3, 12)
    Xv, yv = rng.standard_normal((7, 4)), rng.integers(0, 3, 7)
    nets = [network([4, 5, 3], "tanh", "softmax", "float64", seed=2) for _ in range(2)]
    kwargs = dict(optimizer=fastbp.Adam(0.01), epochs=2, batch_size=5, validation_data=(Xv, yv))
    h_cpu = nets[1].fit(X, y, **kwargs)

    def no_cpu_evaluate(*args, **kw):
        raise AssertionError("validation of a device fit ran on the CPU")

    monkeypatch.setattr(cpu_training, "evaluate", no_cpu_evaluate)
    h_gpu = nets[0].fit(X, y, device="cuda", **kwargs)
    close(h_gpu.val_loss, h_cpu.val_loss, "float64")
    assert h_gpu.val_accuracy == h_cpu.val_accuracy


def test_evaluate_in_chunks_with_a_reused_workspace():
    net = network([4, 6, 3], "relu", "softmax", "float64")
    rng = np.random.default_rng(19)
    X, Y = rng.standard_normal((11, 4)), one_hot(rng, 11, 3, "float64")
    K = kc.kernels("float64")
    params = kc.DeviceParameters(net.theta, net.layout, net.codes, training=False)
    work = kc.DeviceWorkspace(net.sizes, 4, "float64")
    first = kc.evaluate(K, params, dev(X), dev(Y), spec.CROSS_ENTROPY, 4, work)
    again = kc.evaluate(K, params, dev(X), dev(Y), spec.CROSS_ENTROPY, 4, work)   # sums start from 0 again
    W, b = (list(v) for v in weight_views(net.theta, net.layout))
    zs, acts = reference.forward(W, b, net.layer_activations, X)
    expected = reference.sample_losses(zs[-1], acts[-1], Y, "cross_entropy", "softmax").sum()
    close(first[0], expected, "float64")
    assert first == again and first[1] == reference.correct_count(acts[-1], Y, "softmax")
    assert kc.inference_chunk([4, 6, 3], 10 ** 7, "float64") >= 1024
    assert kc.inference_chunk([4, 6, 3], 11, "float64") == 11


def test_fit_callbacks_see_device_parameters_and_can_stop():
    net = network([3, 4, 2], "tanh", "softmax", "float64")
    rng = np.random.default_rng(10)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    seen = []

    def callback(model, epoch, history):
        seen.append(model.theta.copy())
        return epoch == 1

    history = net.fit(X, y, epochs=5, batch_size=6, optimizer="sgd", callbacks=[callback], device="cuda")
    assert history.stopped_early and history.epochs == 2 and len(seen) == 2
    assert not np.array_equal(seen[0], seen[1])
    np.testing.assert_array_equal(net.theta, seen[1])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the simulator computes in NumPy
@pytest.mark.filterwarnings("ignore::fastbp.GradientWarning")  # the diverging epoch's gradient is inf
def test_divergence_restores_previous_epoch():
    net = network([3, 4, 1], "relu", "identity", "float64")
    X = np.ones((4, 3)) * 1e150
    y = np.ones(4)
    before = net.theta.copy()
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = net.fit(X, y, loss="mse", optimizer=fastbp.SGD(1e10), epochs=3, batch_size=4, device="cuda")
    assert history.stopped_early and history.epochs == 0
    np.testing.assert_array_equal(net.theta, before)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # v = g² overflows float32
@pytest.mark.filterwarnings("ignore::fastbp.GradientWarning")
@pytest.mark.parametrize("optimizer", [fastbp.Adam(0.01), fastbp.RMSprop(0.01)])
def test_second_moment_overflow_is_divergence(optimizer):
    """Squared float32 gradients of ~1e21 overflow Adam's / RMSprop's second moment to
    inf while θ stays finite (m/√v = 0 freezes it): the device's divergence check counts
    the optimizer state too, as the CPU's does (tests/test_api.py has the CPU twin)."""
    rng = np.random.default_rng(21)
    X = (rng.standard_normal((6, 3)) * 1e4).astype(np.float32)
    y = (rng.standard_normal((6, 1)) * 1e17).astype(np.float32)
    net = network([3, 4, 1], "identity", "identity", "float32")
    before = net.theta.copy()
    with pytest.warns(RuntimeWarning, match="training diverged in epoch 1"):
        history = net.fit(X, y, loss="mse", optimizer=optimizer, epochs=2, batch_size=None, device="cuda")
    assert history.epochs == 0 and history.stopped_early
    np.testing.assert_array_equal(net.theta, before)
    assert np.isfinite(net.fit_state.state2).all() and np.isfinite(net.fit_state.state1).all()


def test_train_epoch_allocates_and_reads_back_nothing(monkeypatch):
    """The hot path: once the plan exists, an epoch (three batches, the last partial)
    makes no device allocation and no device-to-host copy."""
    net = network([4, 5, 3], "relu", "softmax", "float64")
    rng = np.random.default_rng(11)
    X, Y = rng.standard_normal((13, 4)), one_hot(rng, 13, 3, "float64")
    K = kc.kernels("float64")
    params = kc.DeviceParameters(net.theta, net.layout, net.codes)
    plan = kc.EpochPlan(K, params, dev(X), dev(Y), 5, spec.CROSS_ENTROPY, spec.OPT_ADAM, reduce=True)
    array_type = type(params.theta)

    def forbidden(*args, **kwargs):
        raise AssertionError("allocation or read-back inside an epoch")

    for name in ("device_array", "device_array_like", "to_device", "pinned_array", "mapped_array"):
        monkeypatch.setattr(kc.cuda, name, forbidden)
    monkeypatch.setattr(array_type, "copy_to_host", forbidden)
    kc.train_batches(plan, rng.permutation(13).astype(np.int64), 0, plan.n_batches)
    monkeypatch.undo()
    assert params.counters.copy_to_host()[0] == 3   # the step count advanced on the device
    assert plan.work.counts.copy_to_host()[1] == 0
    assert np.isfinite(plan.work.sums.copy_to_host()[0])


# --- launches per batch ----------------------------------------------------------------------


HYPER = np.zeros(spec.N_HYPER)
HYPER[[spec.H_LR, spec.H_MOMENTUM, spec.H_BETA2, spec.H_EPS, spec.H_CLIP_NORM]] = 1e-3, 0.9, 0.999, 1e-8, 1.0


def test_launches_per_training_step(monkeypatch, launch_names):
    """A 3-layer network (3 weight layers) takes 3L + 2 = 11 launches per step, 12 with
    clip_norm / L1 / L2 (one norm reduction): gather, 3 forward, output delta (softmax,
    loss, δ, hits), 3 weight gradients (bias included), 2 delta propagations, update;
    with batchnorm 5L = 15 (16 with the reduction): a bn_forward and a bn_backward per
    hidden layer. Counted by wrapping ``configure`` and running one epoch of two full
    batches (one batch with batchnorm); each epoch ends with 3 non-finite counts (θ and
    the two optimizer states)."""
    calls = launch_names
    net = network([4, 5, 6, 3], "relu", "softmax", "float64")
    rng = np.random.default_rng(12)
    X, Y = rng.standard_normal((10, 4)), one_hot(rng, 10, 3, "float64")
    K = kc.kernels("float64")
    for reduce, per_step in ((False, 11), (True, 12)):
        params = kc.DeviceParameters(net.theta, net.layout, net.codes)
        params.hyper.copy_to_device(HYPER)
        plan = kc.EpochPlan(K, params, dev(X), dev(Y), 5, spec.CROSS_ENTROPY, spec.OPT_ADAM, reduce=reduce)
        calls.clear()
        kc.train_batches(plan, np.arange(10), 0, plan.n_batches)
        assert len(calls) == 2 * per_step + 3, calls   # + the epoch's non-finite checks
        assert calls.count("forward_layer") == 6 and "softmax_rows" not in calls
        assert calls.count("count_nonfinite") == 3
    bn_net = fastbp.MLP([4, 5, 6, 3], activation="relu", batchnorm=True)
    params = kc.DeviceParameters(bn_net.theta, bn_net.layout, bn_net.codes,
                                 batchnorm=(bn_net.bn_goff, bn_net.bn_running, bn_net.bn_momentum))
    params.hyper.copy_to_device(HYPER)
    plan = kc.EpochPlan(K, params, dev(X[:5]), dev(Y[:5]), 5, spec.CROSS_ENTROPY, spec.OPT_ADAM, reduce=True)
    calls.clear()
    kc.train_batches(plan, np.arange(5), 0, plan.n_batches)
    assert len(calls) == 16 + 3, calls
    assert calls.count("bn_forward") == calls.count("bn_backward") == 2


def test_gemm_choice_by_waves():
    """The production geometry's choices (the review's cases): a 1024 × 1024 gradient and
    a width-64 forward at 2^14 rows fill the GPU with the register-blocked kernel; a
    10-class output of a 1024-row batch is one partial wave wide and runs narrow."""
    K = types_namespace(cuda_config.CudaConfig())
    assert kc.gemm(K, "weight_gradient", 1024, 1024)[0] == "wide"
    assert kc.gemm(K, "forward_layer", 1 << 14, 64)[0] == "wide"
    assert kc.gemm(K, "forward_layer", 1024, 10)[0] == "narrow"
    assert kc.gemm(types_namespace(replace(cuda_config.CudaConfig(), gemm="narrow")), "forward_layer",
                   1 << 14, 1024)[0] == "narrow"
    # split-K: a 64 × 64 gradient over 2^14 rows fills the GPU with 64 slices of 256 rows;
    # a 1024 × 1024 one needs 2; a batch shorter than split_rows is never split
    cfg = cuda_config.CudaConfig()
    assert kc.splits_for(1 << 14, 64, 64, cfg) == 64
    assert kc.splits_for(1 << 14, 1024, 1024, cfg) == 2
    assert kc.splits_for(200, 64, 64, cfg) == 1


def types_namespace(cfg):
    """A stand-in for ``kc.kernels(...)`` whose kernels are their variant's name."""
    import types
    wide = types.SimpleNamespace(config=cfg, forward_layer="wide", weight_gradient="wide")
    wide.narrow = types.SimpleNamespace(config=cfg.narrow(), forward_layer="narrow", weight_gradient="narrow")
    return wide


def test_config_bounds_static_shared_memory():
    with pytest.raises(ValueError, match="static shared memory"):
        cuda_config.CudaConfig(tile=128, micro=8, depth=24)   # 50 KB of float64 tiles
    assert cuda_config.CudaConfig().gemm_shared_bytes(8) <= cuda_config.STATIC_SHARED_LIMIT
    with pytest.raises(ValueError, match="gemm"):
        cuda_config.CudaConfig(gemm="fast")


def test_fit_issues_no_performance_warning():
    """numba-cuda warns NumbaPerformanceWarning when configuring grids under 128 blocks
    (on a GPU only; the simulator never does): a fit must stay silent under -W error."""
    net = network([3, 4, 2], "tanh", "softmax", "float32")
    rng = np.random.default_rng(13)
    X, y = rng.standard_normal((7, 3)).astype("float32"), rng.integers(0, 2, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)   # the simulator's NumPy scalars
        net.fit(X, y, epochs=1, batch_size=4, clip_norm=1.0, device="cuda")
        net.evaluate(X, y, device="cuda")
        net.predict(X, device="cuda")


def test_small_grid_warning_is_silenced_as_numba_cuda_words_it():
    """numba-cuda's message starts with terminal colour codes (seen on the H100: the
    first filter, anchored at "Grid size", let it through)."""
    message = "\x1b[1mGrid size 2 will likely result in GPU under-utilization due to low occupancy.\x1b[0m"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with kc.quiet_small_grids():
            warnings.warn(message, RuntimeWarning)
        with pytest.raises(RuntimeWarning):
            warnings.warn(message, RuntimeWarning)   # outside the context it is not silenced


def test_gradient_parts_shapes_are_python_ints(monkeypatch):
    """Real numba-cuda rejects NumPy integers as array shapes (the simulator accepts them;
    seen on the H100: every split-K fit failed): GradientParts must pass Python ints."""
    net = network([4, 5, 3], "relu", "softmax", "float64")
    params = kc.DeviceParameters(net.theta, net.layout, net.codes)
    device_array = kc.cuda.device_array

    def strict(shape, *args, **kwargs):
        dims = shape if isinstance(shape, tuple) else (shape,)
        assert all(type(d) is int for d in dims), f"shape {shape!r} is not made of Python ints"
        return device_array(shape, *args, **kwargs)

    monkeypatch.setattr(kc.cuda, "device_array", strict)
    parts = kc.GradientParts(params, [2, 3])
    assert parts.buffer.shape == (2 * (4 * 5 + 5) + 3 * (5 * 3 + 3),)
    assert parts.dweights[1].shape == (3, 15) and parts.dbiases[0].shape == (2, 5)
    # every device allocation of a fit (split-K on 8-row batches), validation, inference
    rng = np.random.default_rng(20)
    X, y = rng.standard_normal((17, 4)), rng.integers(0, 3, 17)
    net.fit(X, y, epochs=1, batch_size=8, clip_norm=1.0, validation_data=(X[:5], y[:5]), device="cuda")
    net.predict(X, device="cuda")
    net.evaluate(X, y, device="cuda")
    net.flat_gradient(X, y, device="cuda")


def test_fit_larger_than_free_memory_is_refused_before_allocating(monkeypatch):
    net = network([3, 4, 2], "tanh", "softmax", "float64")
    before = net.theta.copy()
    X, y = np.ones((6, 3)), np.arange(6) % 2
    needed = kc.fit_bytes(net.sizes, 6, 2, 4, net.theta.shape[0], "float64", cuda_config.config)
    assert needed >= 8 * (6 * 5 + 7 * net.theta.shape[0])   # X, Y and the θ-sized buffers at least

    class Context:
        def get_memory_info(self):
            return needed - 1, 1 << 30

    monkeypatch.setattr(kc.cuda, "current_context", Context)
    monkeypatch.setattr(kc.cuda, "to_device", None)   # nothing may reach the device
    with pytest.raises(MemoryError, match="this fit needs about .* MiB of GPU memory"):
        net.fit(X, y, epochs=1, batch_size=4, device="cuda")
    np.testing.assert_array_equal(net.theta, before)
