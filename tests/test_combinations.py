"""Every training mode combines: dropout, batch normalization and gradient checkpointing
together or apart, with every optimizer, clipping, L1/L2, float32/float64 and full / mini /
single-row batches — checked against the NumPy reference (``reference.train_epoch_modes``,
the same counter-based dropout masks), and checkpointed runs bitwise equal to plain ones.

A covering grid (every pair of options appears, plus full stacks with every optimizer), tiny
shapes, two epochs: the compile cost of each mode combination dominates."""

import itertools

import numpy as np
import pytest

import fastbp
from fastbp import reference

from helpers import assert_close, make_data

SIZES = [5, 9, 7, 3]
N = 17  # odd: batches of 6 leave a partial last batch
OPT = {"sgd": fastbp.SGD(0.1), "momentum": fastbp.Momentum(0.05), "nesterov": fastbp.Nesterov(0.05),
       "rmsprop": fastbp.RMSprop(0.01), "adam": fastbp.Adam(0.01)}
EXTRAS = [{}, {"l1": 1e-3, "l2": 1e-2}, {"clip_norm": 0.1}, {"clip_value": 0.02}]


def _batch(batch_size, batchnorm):
    """Single rows, except with batchnorm (refused there: x̂ = 0): four rows, so that N = 17
    still ends in a partial batch of ONE row (x̂ = 0, so dL/du = 0: only β and the layers
    above the first BN layer learn from it).

    Not batches of two rows: there x̂ = ±d/√(d² + ε) and dL/du ∝ ε/(d² + ε) comes out of a
    cancellation, so the gradients of the layers below a BN layer (exactly 0 at the start:
    dβ⁰ ∝ f'(β + c) − f'(β − c) with β = 0 and f' even) are rounding noise of ~1e-17 on
    both sides, and RMSprop/Adam turn noise g into steps lr·g/(√v + eps) ~ 1e6 g apart."""
    return 4 if batchnorm and batch_size == 1 else batch_size


def _cases():
    cases = []
    modes = list(itertools.product([None, [0.3, 0.0]], [False, True], [None, 1]))
    for i, (dropout, batchnorm, checkpoint) in enumerate(modes):
        cases.append((dropout, batchnorm, checkpoint, list(OPT)[i % 5], _batch([None, 6, 1][i % 3], batchnorm),
                      ["float64", "float32"][i % 2], EXTRAS[i % 4]))
    for i, opt in enumerate(OPT):  # full stacks
        cases.append(([0.2, 0.4], True, True, opt, _batch([6, 1, None][i % 3], True), ["float64", "float32"][i % 2],
                      EXTRAS[(i + 1) % 4]))
    cases.append((None, True, None, "adam", 4, "float64", {}))  # BN alone, a single-row last batch, Adam
    return cases


CASES = _cases()


def _fit(dropout, batchnorm, checkpoint, opt, batch_size, dtype, extras, epochs=2, activation="tanh"):
    net = fastbp.MLP(SIZES, activation=activation, seed=4, dtype=dtype, dropout=dropout or 0.0,
                     batchnorm=batchnorm)
    X, Y = make_data(N, SIZES, "softmax", dtype, seed=7)
    history = net.fit(X, Y, optimizer=OPT[opt], epochs=epochs, batch_size=batch_size, seed=3,
                      checkpoint=checkpoint, gradient_warnings=False, **extras)
    return net, history, X, Y


@pytest.mark.parametrize("dropout,batchnorm,checkpoint,opt,batch_size,dtype,extras", CASES)
def test_combination_matches_reference(dropout, batchnorm, checkpoint, opt, batch_size, dtype, extras):
    fresh = fastbp.MLP(SIZES, activation="tanh", seed=4, dtype=dtype, dropout=dropout or 0.0,
                       batchnorm=batchnorm)
    weights = [W.astype(np.float64) for W in fresh.weights]
    biases = [b.astype(np.float64) for b in fresh.biases]
    gammas = [None if g is None else g.astype(np.float64) for g in fresh.gammas]
    net, history, X, Y = _fit(dropout, batchnorm, checkpoint, opt, batch_size, dtype, extras)
    params = [p for W, b, g in zip(weights, biases, gammas) for p in (W, b, *([] if g is None else [g]))]
    state = reference.new_optimizer_state(params)
    running = [[np.zeros(n), np.ones(n)] if g is not None else None for n, g in zip(SIZES[1:], gammas)]
    c = OPT[opt].constants()
    losses = []
    for epoch in range(2):
        perm = fastbp.training.epoch_permutation(3, epoch, N)
        loss, _ = reference.train_epoch_modes(
            weights, biases, gammas, net.layer_activations, X.astype(np.float64), Y.astype(np.float64), perm,
            batch_size or N, "cross_entropy", opt, state, OPT[opt].lr, dropout=dropout, seed=3, epoch=epoch,
            running=running, momentum_bn=net.bn_momentum, eps_bn=1e-5, momentum=c["momentum"],
            beta2=c["beta2"], eps=c["eps"], **extras)
        losses.append(loss)
    assert_close(net.theta, np.concatenate([p.ravel() for p in params]), dtype, "parameters")
    assert_close(history.loss, losses, dtype, "loss")
    if batchnorm:
        total = sum(SIZES[1:])
        for l, (mean, var) in enumerate(r for r in running if r is not None):
            lo = sum(SIZES[1:l + 1])
            assert_close(net.bn_running[lo:lo + SIZES[l + 1]], mean, dtype, "running mean")
            assert_close(net.bn_running[total + lo:total + lo + SIZES[l + 1]], var, dtype, "running var")


@pytest.mark.parametrize("dropout,batchnorm,checkpoint,opt,batch_size,dtype,extras",
                         [c for c in CASES if c[2]])
def test_checkpointed_equals_plain_bitwise(dropout, batchnorm, checkpoint, opt, batch_size, dtype, extras):
    ckpt, h_ckpt, _, _ = _fit(dropout, batchnorm, checkpoint, opt, batch_size, dtype, extras)
    plain, h_plain, _, _ = _fit(dropout, batchnorm, None, opt, batch_size, dtype, extras)
    np.testing.assert_array_equal(ckpt.theta, plain.theta)
    np.testing.assert_array_equal(ckpt.bn_running, plain.bn_running)
    np.testing.assert_array_equal(ckpt.fit_state.state1, plain.fit_state.state1)
    assert h_ckpt.loss == h_plain.loss


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])  # smooth: no kinks, no exactly-zero β gradients
def test_batchnorm_gradcheck(activation):
    net = fastbp.MLP([4, 7, 6, 3], activation=activation, seed=1, dtype="float64", batchnorm=True)
    X, Y = make_data(9, [4, 7, 6, 3], "softmax", np.float64, seed=2)
    report = fastbp.gradcheck(net, X, Y, l1=0.0, l2=1e-2)
    assert report.passed and report.max_error < 1e-6, report


def test_batchnorm_single_row_batch_gradient_is_exact():
    """One row: x̂ = 0 and dL/du = 0 exactly, so below the last BN layer nothing but its β
    learns (dW, dγ and the lower β exactly 0); β and the output layer as the reference."""
    net = fastbp.MLP(SIZES, activation="tanh", seed=4, dtype="float64", batchnorm=True)
    X, Y = make_data(1, SIZES, "softmax", np.float64, seed=7)
    _, grad = net.flat_gradient(X, Y)
    _, dWs, dbs, dgs = reference.gradients_bn(net.weights, net.biases, net.gammas, net.layer_activations, X, Y,
                                              "cross_entropy", 1e-5)
    dW, db = (list(views) for views in fastbp.layout.weight_views(grad, net.layout))
    for l in (0, 1):
        assert not dW[l].any() and not grad[net.bn_goff[l]:net.bn_goff[l] + SIZES[l + 1]].any()
        assert not dWs[l].any() and not dgs[l].any()
    assert not db[0].any() and db[1].any()
    for ours, theirs in zip([db[1], dW[2], db[2]], [dbs[1], dWs[2], dbs[2]]):
        assert_close(ours, theirs, np.float64)


def test_compiled_functions_take_at_most_ten_arguments():
    """Bundles keep the kernels' argument lists short (no 36-argument drivers)."""
    import ast
    import inspect

    from fastbp.kernels import cpu, cpu_small
    counts = {f"{module.__name__}.{node.name}": len(node.args.args)
              for module in (cpu, cpu_small) for node in ast.parse(inspect.getsource(module)).body
              if isinstance(node, ast.FunctionDef) and node.decorator_list}
    assert counts and max(counts.values()) <= 10, counts
