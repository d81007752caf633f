"""Every CUDA kernel against ``fastbp.reference`` (float64 tight, float32 loose) on
shapes that span several tiles/blocks and are not multiples of them, then whole fits
against the CPU path from the same seed.

Runs under ``NUMBA_ENABLE_CUDASIM=1`` (or on a GPU); skipped otherwise.
"""

import numpy as np
import pytest

import fastbp
from fastbp import reference, spec
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

VARIANTS = ["wide", "narrow"]  # register-blocked GEMMs and their one-output-per-thread variant


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
    K.forward_layer[kc.tiles(rows, fan_out, K.config)](dev(a_prev), dev(weights), dev(bias), code, rows, z, a)
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
                                                       spec.ACTIVATIONS[activation], rows, out)
    expected = (delta.astype(np.float64) @ weights.T) * reference.activation_derivative(z, a, activation)
    close(out.copy_to_host(), expected, dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_weight_gradient(dtype, shape, variant):
    if shape[0] * shape[1] * shape[2] > 1000 and variant == "narrow":
        pytest.skip("the large shape runs the wide GEMM only (simulator time)")
    rows, fan_in, fan_out = shape
    rng = np.random.default_rng(3)
    bmax = rows + 3  # buffers longer than the batch: rows past `rows` must be ignored
    a_prev = rng.standard_normal((bmax, fan_in)).astype(dtype)
    delta = rng.standard_normal((bmax, fan_out)).astype(dtype)
    K = gemm_kernels(dtype, variant)
    dW = cuda.device_array((fan_in, fan_out), dtype)
    db = cuda.device_array(fan_out, dtype)
    K.weight_gradient[kc.tiles(fan_in, fan_out, K.config)](dev(a_prev), dev(delta), rows, dW, db)
    close(dW.copy_to_host(), a_prev[:rows].T.astype(np.float64) @ delta[:rows], dtype)
    close(db.copy_to_host(), delta[:rows].astype(np.float64).sum(axis=0), dtype)


# --- loss and output delta ------------------------------------------------------------------


def targets_for(output, loss, rng, rows, k, dtype):
    if output == "softmax" and loss == "cross_entropy":
        return one_hot(rng, rows, k, dtype)
    if output == "sigmoid":
        return rng.integers(0, 2, (rows, k)).astype(dtype)
    return rng.standard_normal((rows, k)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 19])
@pytest.mark.parametrize("output, loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                          ("identity", "mse"), ("sigmoid", "mse"), ("softmax", "mse")])
def test_output_delta_and_correct_count(dtype, rows, output, loss):
    k = 3
    rng = np.random.default_rng(4)
    z = (3 * rng.standard_normal((rows, k))).astype(dtype)
    z[0, 0] = 40  # far in the saturated range: the stable forms must stay finite
    a = reference.activate(z.astype(np.float64), output).astype(dtype)
    Y = targets_for(output, loss, rng, rows, k, dtype)
    K = kc.kernels(dtype)
    delta = cuda.device_array((rows, k), dtype)
    sums = dev(np.full(1, 0.25))            # the kernel adds to what is there
    counts = dev(np.array([2, 0], dtype=np.int64))
    batch = rows + 2                        # inv_batch is an argument, not 1/rows
    K.output_delta[kc.line(rows, K.config)](dev(z), dev(a), dev(Y), spec.ACTIVATIONS[output],
                                            spec.resolve_loss(loss, output), rows, 1.0 / batch, delta,
                                            sums, counts)
    z64, a64, Y64 = z.astype(np.float64), a.astype(np.float64), Y.astype(np.float64)
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
    params.grad.copy_to_device(grad)
    params.hyper.copy_to_device(hyper)
    work = kc.DeviceWorkspace(sizes, 2, dtype)
    rows = 11
    reductions, update = kc.update_launches(K, params, work, rows, reduce=bool(clip_norm or l1 or l2))
    kc.launch(reductions)
    update, grid, block = update
    update[grid, block](params.theta, params.grad, params.state1, params.state2, params.is_weight, OPTIMIZERS[optimizer],
           params.hyper, t, params.scalars)

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
def test_gather_rows(dtype):
    rng = np.random.default_rng(6)
    source = rng.standard_normal((23, 5)).astype(dtype)
    perm = rng.permutation(23).astype(np.int64)
    start, rows = 16, 7  # the partial last batch of a batch size of 8
    K = kc.kernels(dtype)
    out = dev(np.full((8, 5), 99, dtype=dtype))
    K.gather_rows[kc.line(rows * 5, K.config)](dev(source), dev(perm), start, rows, out)
    result = out.copy_to_host()
    np.testing.assert_array_equal(result[:rows], source[perm[start:start + rows]])
    np.testing.assert_array_equal(result[rows:], 99)  # rows past the batch untouched


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
    ([6, 9, 3], "sigmoid", "softmax", "mse", fastbp.Momentum(0.1), {}, 23, 10),
    ([3, 5, 2], "identity", "sigmoid", "binary_cross_entropy", fastbp.SGD(0.1), dict(shuffle=False), 23, 10),
]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(FITS)), ids=[f"{f[2]}-{f[3]}-{f[4].name}" for f in FITS])
def test_fit_matches_cpu(dtype, case):
    sizes, hidden, output, loss, optimizer, extra, n, batch_size = FITS[case]
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
def test_divergence_restores_previous_epoch():
    net = network([3, 4, 1], "relu", "identity", "float64")
    X = np.ones((4, 3)) * 1e150
    y = np.ones(4)
    before = net.theta.copy()
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = net.fit(X, y, loss="mse", optimizer=fastbp.SGD(1e10), epochs=3, batch_size=4, device="cuda")
    assert history.stopped_early and history.epochs == 0
    np.testing.assert_array_equal(net.theta, before)


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
    step = kc.train_epoch(plan, rng.permutation(13).astype(np.int64), 0)
    monkeypatch.undo()
    assert step == 3
    assert plan.work.counts.copy_to_host()[1] == 0
    assert np.isfinite(plan.work.sums.copy_to_host()[0])
