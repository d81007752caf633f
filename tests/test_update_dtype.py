"""A float32 fit's optimizer step is float32 arithmetic (cpu.update_params).

The step's constants (lr, μ, β2, ε, Adam's scales, clip_value, L1/L2, the clip_norm
scale) are cast to the parameter dtype: a float64 constant would promote every
element's update to float64 (Numba types float32 · float64 as float64), 4 SIMD lanes
instead of 8, and results that no float32 computation of the rule gives."""

import numpy as np
import pytest
from numba import from_dtype, njit

from fastbp import spec
from fastbp.kernels import cpu
from fastbp.kernels.bundles import Hyper, Network, Optimizer

OPTIMIZERS = {"sgd": spec.OPT_SGD, "momentum": spec.OPT_MOMENTUM, "nesterov": spec.OPT_NESTEROV,
              "rmsprop": spec.OPT_RMSPROP, "adam": spec.OPT_ADAM}


@njit
def _constants_of(theta, hyper):
    return cpu.step_constants(theta, hyper, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_constants_have_the_parameter_dtype(dtype):
    _constants_of(np.zeros(2, dtype), Hyper(0.01, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 0.0))
    scalar = from_dtype(np.dtype(dtype))
    (signature,) = [s for s in _constants_of.nopython_signatures if s.args[0].dtype == scalar]
    assert signature.return_type.types[:5] == (scalar,) * 5  # lr, μ, β2, ε, clip_value


def _step_in(dtype, optimizer, theta, grad, state1, state2, l2, t):
    """The documented rule (reference.optimizer_step, Adam with its bias corrections folded
    into two scalars as cpu._update_range does), every operation in ``dtype``, associated
    as the compiled loop computes it (RMSprop's g² is the g·g of its Σ g², reused)."""
    c = dtype
    lr, mu, beta2, eps = c(0.01), c(0.9), c(0.999), c(1e-8)
    theta, grad, state1, state2 = (x.astype(dtype) for x in (theta, grad, state1, state2))
    g = grad + c(l2) * theta
    if optimizer == "sgd":
        return theta - lr * g
    if optimizer in ("momentum", "nesterov"):
        v = mu * state1 - lr * g
        return theta + v if optimizer == "momentum" else theta + mu * v - lr * g
    if optimizer == "rmsprop":
        sq = mu * state1 + (c(1) - mu) * (g * g)
        return theta - lr * g / (np.sqrt(sq) + eps)
    corr1, corr2 = 1 - 0.9 ** t, 1 - 0.999 ** t  # the scalars in float64, then cast
    step_scale, eps_scaled = c(0.01 * np.sqrt(corr2) / corr1), c(1e-8 * np.sqrt(corr2))
    m = mu * state1 + (c(1) - mu) * g
    v = beta2 * state2 + (c(1) - beta2) * g * g
    return theta - step_scale * m / (np.sqrt(v) + eps_scaled)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_float32_step_equals_the_float32_rule(optimizer):
    """One step of update_params on a 16×24 layer with L2, at step t = 3 with nonzero state:
    bitwise the rule computed in float32, and (so that the check can fail) not the rule
    computed in float64 and rounded once."""
    fan_in, fan_out, t, l2 = 16, 24, 3, 1e-2
    n = fan_in * fan_out + fan_out
    rng = np.random.default_rng(7)
    theta, grad, state1 = (rng.normal(size=n).astype(np.float32) for _ in range(3))
    state2 = rng.random(n).astype(np.float32)
    if optimizer == "rmsprop":  # its state is a mean of squares
        state1 = state2
    layout = np.array([[fan_in, fan_out, 0, fan_in * fan_out]], np.int64)
    net = Network(theta.copy(), layout, layout, np.zeros(1, np.int64), 0)
    opt = Optimizer(grad.copy(), state1.copy(), state2.copy(), np.array([t], np.int64),
                    OPTIMIZERS[optimizer], np.zeros((1, 2)))
    cpu.python_callable(cpu.update_params)(net, opt, Hyper(0.01, 0.9, 0.999, 1e-8, 0.0, l2, 0.0, 0.0))
    weights = slice(0, fan_in * fan_out)
    expected32 = _step_in(np.float32, optimizer, theta[weights], grad[weights], state1[weights],
                          state2[weights], l2, t)
    expected64 = _step_in(np.float64, optimizer, theta[weights], grad[weights], state1[weights],
                          state2[weights], l2, t).astype(np.float32)
    assert not np.array_equal(expected32, expected64)
    np.testing.assert_array_equal(net.theta[weights], expected32)
