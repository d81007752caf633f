"""Batch normalization on the GPU: bn_forward / bn_backward against ``fastbp.reference``,
then whole fits (with dropout, clipping, L1/L2, checkpointing, a partial last batch)
against the reference and the CPU path, and inference with the running statistics.

Runs under ``NUMBA_ENABLE_CUDASIM=1`` (or on a GPU); skipped otherwise. Shapes are tiny
(7-13-5 nets, batches of 5) because the simulator runs a Python thread per CUDA thread.
"""

import numpy as np
import pytest

import fastbp
from fastbp import reference, spec
from fastbp.kernels import rng as rng_module
from fastbp.layout import weight_views
from fastbp.training import epoch_permutation

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(not fastbp.cuda_available(), reason="no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),   # uint64 hashing in the simulator
]

if fastbp.cuda_available():
    from numba import cuda

    from fastbp.kernels import cuda as kc

TOL = {"float64": dict(rtol=1e-9, atol=1e-12), "float32": dict(rtol=2e-4, atol=2e-5)}
SIZES = [7, 13, 5]


def close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


def dev(array):
    return cuda.to_device(np.ascontiguousarray(array))


@pytest.mark.parametrize("dtype, rows", [("float64", 7), ("float32", 7), ("float64", 1)])
def test_bn_kernels_match_reference(dtype, rows):
    """bn_forward with batch statistics (and the running update), bn_backward, then
    bn_forward with the running statistics: 5 features over 3 column blocks of 2, rows
    not a multiple of the 4 row threads, buffers longer than the batch; one row
    normalises to x̂ = 0 and leaves the variance unbiased by nothing (as the CPU)."""
    cols, spare, momentum, eps = 5, 2, 0.8, spec.BN_EPS
    rng = np.random.default_rng(21)
    u = (3 * rng.standard_normal((rows + spare, cols)) + 1).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, cols).astype(dtype)
    beta = rng.standard_normal(cols).astype(dtype)
    running = np.concatenate([rng.standard_normal(cols), rng.uniform(0.5, 2.0, cols)])
    K = kc.kernels(dtype)
    grid = kc.columns(cols, K.config)
    z, running_d, stats = dev(u), dev(running), dev(np.full(2 * cols, np.nan))
    xhat, a = cuda.device_array((rows + spare, cols), dtype), cuda.device_array((rows + spare, cols), dtype)
    no_dropout = (1.0, rng_module.keep_threshold(1.0), dev(np.zeros(3, dtype=np.int64)), 0)
    K.bn_forward[grid](z, xhat, dev(gamma), dev(beta), stats[:cols], stats[cols:], running_d[:cols],
                       running_d[cols:], eps, momentum, kc.BN_TRAIN, rows, a, spec.TANH, *no_dropout)
    u64, gamma64, beta64 = u[:rows].astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64)
    y, xh, inv_std, mean, var = reference.batchnorm_forward(u64, gamma64, beta64, eps)
    close(z.copy_to_host()[:rows], y, dtype)
    close(xhat.copy_to_host()[:rows], xh, dtype)
    close(a.copy_to_host()[:rows], reference.activate(y, "tanh"), dtype)
    close(stats.copy_to_host(), np.concatenate([mean, inv_std]), dtype)
    unbiased = var * rows / (rows - 1) if rows > 1 else var
    updated = np.concatenate([momentum * running[:cols] + (1 - momentum) * mean,
                              momentum * running[cols:] + (1 - momentum) * unbiased])
    close(running_d.copy_to_host(), updated, dtype)
    after_training = running_d.copy_to_host()

    dy = rng.standard_normal((rows + spare, cols)).astype(dtype)
    delta, dnorm = dev(dy), dev(np.full(2 * cols, np.nan, dtype))
    K.bn_backward[grid](delta, xhat, dev(gamma), stats[cols:], rows, dnorm)
    du, dgamma, dbeta = reference.batchnorm_backward(dy[:rows].astype(np.float64), xh, inv_std, gamma64)
    close(delta.copy_to_host()[:rows], du, dtype)
    close(dnorm.copy_to_host(), np.concatenate([dbeta, dgamma]), dtype)

    # inference: the running statistics, which stay as they are
    z = dev(u)
    K.bn_forward[grid](z, xhat, dev(gamma), dev(beta), stats[:cols], stats[cols:], running_d[:cols],
                       running_d[cols:], eps, momentum, kc.BN_RUNNING, rows, a, spec.TANH, *no_dropout)
    y_run = reference.batchnorm_forward(u64, gamma64, beta64, eps, updated[:cols], updated[cols:])[0]
    close(z.copy_to_host()[:rows], y_run, dtype)
    np.testing.assert_array_equal(running_d.copy_to_host(), after_training)


def _bn_net(dtype, activation="tanh", dropout=0.0):
    return fastbp.MLP(SIZES, activation=activation, dtype=dtype, seed=3, batchnorm=True, dropout=dropout,
                      bn_momentum=0.8)


def _data(dtype, n, seed=22):
    rng = np.random.default_rng(seed)
    return (2 * rng.standard_normal((n, SIZES[0])) + 0.5).astype(dtype), rng.integers(0, SIZES[-1], n)


FITS = {  # dtype -> (rows, optimizer, fit extras): together they cover the update rules, the
          # regularisers, checkpointing and partial last batches of 1 and of 3 rows
    "float64": (6, fastbp.Adam(0.01), dict(clip_norm=0.5, l2=1e-3, checkpoint=1)),
    "float32": (8, fastbp.Momentum(0.05), dict(l1=1e-3, clip_value=0.05)),
}


@pytest.mark.parametrize("dtype", list(FITS))
def test_bn_dropout_fit_matches_reference_and_cpu(dtype):
    """One epoch in batches of 5 (the last one of 1 or 3 rows) with batchnorm and dropout
    on the hidden layer, validated on the device: θ, the loss and the running statistics
    equal the reference's (``train_epoch_modes``, the same counter-based masks) and the
    CPU fit's (diagnostics, optimizer state and validation loss too; float64: the GPU fit
    checkpointed, the CPU fit plain); a callback sees them in the network; predict /
    evaluate on the device use the running statistics."""
    n, optimizer, extras = FITS[dtype]
    X, y = _data(dtype, n)
    Xv, yv = _data(dtype, 4, seed=24)
    gpu, cpu = _bn_net(dtype, dropout=0.3), _bn_net(dtype, dropout=0.3)
    weights = [W.astype(np.float64) for W in gpu.weights]
    biases = [b.astype(np.float64) for b in gpu.biases]
    gammas = [None if g is None else g.astype(np.float64) for g in gpu.gammas]
    kwargs = dict(optimizer=optimizer, epochs=1, batch_size=5, seed=5, validation_data=(Xv, yv), **extras)
    seen = []   # what a callback finds in the network: the device's running statistics
    h_gpu = gpu.fit(X, y, device="cuda", callbacks=[lambda net, epoch, h: seen.append(net.bn_running.copy())],
                    **kwargs)
    h_cpu = cpu.fit(X, y, **{**kwargs, "checkpoint": None})
    np.testing.assert_array_equal(seen[-1], gpu.bn_running)

    params = [p for W, b, g in zip(weights, biases, gammas) for p in (W, b, *([] if g is None else [g]))]
    state = reference.new_optimizer_state(params)
    running = [[np.zeros(SIZES[1]), np.ones(SIZES[1])], None]
    constants = optimizer.constants()
    regularisers = {k: v for k, v in extras.items() if k != "checkpoint"}
    Y = np.eye(SIZES[-1])[y]
    loss, _ = reference.train_epoch_modes(
        weights, biases, gammas, gpu.layer_activations, X.astype(np.float64), Y, epoch_permutation(5, 0, n), 5,
        "cross_entropy", optimizer.name, state, optimizer.lr, dropout=gpu.dropout, seed=5, epoch=0,
        running=running, momentum_bn=0.8, eps_bn=spec.BN_EPS, momentum=constants["momentum"],
        beta2=constants["beta2"], eps=constants["eps"], **regularisers)
    close(gpu.theta, np.concatenate([p.ravel() for p in params]), dtype)
    close(h_gpu.loss, [loss], dtype)
    close(gpu.bn_running, np.concatenate([running[0][0], np.zeros(SIZES[2]), running[0][1], np.ones(SIZES[2])]),
          dtype)

    close(gpu.theta, cpu.theta, dtype)
    close(gpu.bn_running, cpu.bn_running, dtype)
    close(h_gpu.loss, h_cpu.loss, dtype)
    close(h_gpu.val_loss, h_cpu.val_loss, dtype)
    close(np.array(h_gpu.grad_norm), np.array(h_cpu.grad_norm), dtype)
    close(np.array(h_gpu.update_ratio), np.array(h_cpu.update_ratio), dtype)
    close(gpu.fit_state.state1, cpu.fit_state.state1, dtype)

    # inference with the running statistics, against the reference
    W, b = (list(v) for v in weight_views(gpu.theta.astype(np.float64), gpu.layout))
    g = [None if gamma is None else gamma.astype(np.float64) for gamma in gpu.gammas]
    zs, acts, _ = reference.forward_bn(W, b, g, gpu.layer_activations, X.astype(np.float64), spec.BN_EPS,
                                       running=[(running[0][0], running[0][1]), None])
    close(gpu.forward(X, device="cuda"), acts[-1], dtype)
    result = gpu.evaluate(X, y, device="cuda")
    close(result["loss"], reference.sample_losses(zs[-1], acts[-1], Y, "cross_entropy", "softmax").mean(), dtype)
    assert result["accuracy"] == reference.correct_count(acts[-1], Y, "softmax") / n


def test_bn_gradients_and_gradcheck_on_the_device():
    """flat_gradient with device="cuda" (batch statistics of all 9 rows: split-K weight
    gradients, one [dβ, dγ] slice) equals the reference's and the CPU's; the running
    statistics are left alone; gradcheck passes with the device's analytic gradient."""
    dtype = "float64"   # float32 gradients: the float32 fit above
    net = _bn_net(dtype)
    X, y = _data(dtype, 9, seed=25)
    before = net.bn_running.copy()
    value, grad = net.flat_gradient(X, y, l2=1e-2, device="cuda")
    value_cpu, grad_cpu = net.flat_gradient(X, y, l2=1e-2)
    close(value, value_cpu, dtype)
    close(grad, grad_cpu, dtype)
    W, b = (list(v) for v in weight_views(net.theta.astype(np.float64), net.layout))
    g = [None if gamma is None else gamma.astype(np.float64) for gamma in net.gammas]
    ref_value, dWs, dbs, dgs = reference.gradients_bn(W, b, g, net.layer_activations, X.astype(np.float64),
                                                      np.eye(SIZES[-1])[y], "cross_entropy", spec.BN_EPS)
    close(value, ref_value + 0.5e-2 * sum((w * w).sum() for w in W), dtype)
    g_off = int(net.bn_goff[0])
    close(grad[g_off:g_off + SIZES[1]], dgs[0], dtype)
    close(grad[net.layout[0, 3]:net.layout[0, 3] + SIZES[1]], dbs[0], dtype)
    np.testing.assert_array_equal(net.bn_running, before)
    report = fastbp.gradcheck(net, X, y, device="cuda", n_samples=12)
    assert report.passed, report


def test_bn_fit_refuses_one_row_batches_on_the_device():
    net = _bn_net("float64")
    before = net.theta.copy()
    X, y = _data("float64", 6)
    with pytest.raises(ValueError, match="batchnorm needs batches of at least 2 rows"):
        net.fit(X, y, batch_size=1, device="cuda")
    np.testing.assert_array_equal(net.theta, before)


OPTIMIZERS = {"sgd": spec.OPT_SGD, "momentum": spec.OPT_MOMENTUM, "nesterov": spec.OPT_NESTEROV,
              "rmsprop": spec.OPT_RMSPROP, "adam": spec.OPT_ADAM}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_bn_parameters_take_every_optimizer_step(optimizer):
    """The update over a batch-normalized network's table (layer 0: two split-K weight
    slices and one [dβ, dγ] block): every optimizer rule, with L1/L2 on the weights only
    and clipping by norm (β and γ inside the norm) and by value, equals the reference
    step of [W⁰, W¹, β⁰, γ⁰, b¹]."""
    net = fastbp.MLP([5, 7, 3], batchnorm=True, seed=1)
    rng = np.random.default_rng(26)
    n = net.n_params
    theta, grad = rng.standard_normal(n), rng.standard_normal(n)
    state1, state2 = np.abs(rng.standard_normal(n)), np.abs(rng.standard_normal(n))
    lr, mu, beta2, eps, t, l1, l2, clip_norm, clip_value = 0.05, 0.8, 0.99, 1e-6, 3, 1e-2, 1e-1, 0.3, 0.02
    hyper = np.zeros(spec.N_HYPER)
    hyper[[spec.H_LR, spec.H_MOMENTUM, spec.H_BETA2, spec.H_EPS, spec.H_L1, spec.H_L2, spec.H_CLIP_NORM,
           spec.H_CLIP_VALUE]] = lr, mu, beta2, eps, l1, l2, clip_norm, clip_value
    params = kc.DeviceParameters(theta, net.layout, net.codes, state1, state2,
                                 batchnorm=(net.bn_goff, net.bn_running, net.bn_momentum))
    parts = kc.GradientParts(params, [2, 1])
    for offset, size, splits, at, _ in parts.table.copy_to_host():
        chunk = grad[offset:offset + size]
        parts.buffer[at:at + splits * size].copy_to_device(
            np.concatenate([0.25 * chunk, 0.75 * chunk] if splits == 2 else [chunk]))
    params.hyper.copy_to_device(hyper)
    params.counters.copy_to_device(np.array([t, 0, 0]))
    kc.launch(kc.update_launches(kc.kernels("float64"), params, parts, kc.DeviceWorkspace(net.sizes, 2, "float64"),
                                 5, True, OPTIMIZERS[optimizer]))

    def pieces(flat):
        """Views [W⁰, W¹, β⁰, γ⁰, b¹] of a flat vector: the weights first."""
        W, b = weight_views(flat, net.layout)
        g_off = int(net.bn_goff[0])
        return [W[0], W[1], b[0], flat[g_off:g_off + 7], b[1]]

    expected, s1, s2 = theta.copy(), state1.copy(), state2.copy()
    P = pieces(expected)
    G = [g.copy() for g in pieces(grad)]
    G[:2] = [g + reference.regularisation_gradient(w, l1, l2) for g, w in zip(G[:2], P[:2])]
    reference.optimizer_step(optimizer, P, reference.clip(G, clip_norm, clip_value),
                             {"s1": pieces(s1), "s2": pieces(s2)}, lr, t, momentum=mu, beta2=beta2, eps=eps)
    close(params.theta.copy_to_host(), expected, "float64")
    close(params.state1.copy_to_host(), s1, "float64")
    close(params.state2.copy_to_host(), s2, "float64")


def test_engine_restore_puts_back_the_running_statistics():
    """The engine's consistency rule (``engine.py``): restore() after an epoch puts back θ
    and the running statistics, which the epoch changed on the device."""
    from fastbp.cuda_training import CudaEngine
    from fastbp.training import FitState
    net = _bn_net("float64")
    X, y = _data("float64", 5)   # one batch
    theta, running = net.theta.copy(), net.bn_running.copy()
    engine = CudaEngine(net, X, np.eye(SIZES[-1])[y], FitState(net.n_params, net.dtype), batch_size=5,
                        optimizer=fastbp.Adam(0.01), loss_code=spec.CROSS_ENTROPY, l1=0.0, l2=0.0, clip_norm=0.0,
                        clip_value=0.0)
    engine.save_point()
    engine.train_batches(np.arange(5, dtype=np.int64), 0, engine.n_batches, 0, 0.01)
    engine.to_host()
    assert not np.array_equal(net.bn_running, running) and not np.array_equal(net.theta, theta)
    engine.restore()
    engine.finish()
    np.testing.assert_array_equal(net.theta, theta)
    np.testing.assert_array_equal(net.bn_running, running)
