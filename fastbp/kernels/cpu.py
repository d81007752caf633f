"""CPU kernels (Numba ``@njit``): the compiled core of fastbp.

Three fused kernel families, as in ``reference.py`` but over the flat buffers
of ``layout.py``:

* :func:`forward_layer` — z = a·W + b and a = f(z): one GEMM (BLAS through
  Numba's ``np.dot`` into a preallocated output) and one epilogue pass that adds
  the bias and applies the activation;
* :func:`backprop_delta` — δ^{l-1} = (δ^l·W^{lᵀ}) ⊙ f'(z^{l-1}): one GEMM and an
  epilogue that multiplies by the derivative;
* :func:`update_params` — gradient + L1/L2 + clipping + optimizer step in one
  pass over the flat parameter vector.

Plus :func:`output_delta` (loss and δ^L, softmax–cross-entropy and
sigmoid–binary-cross-entropy fused and computed stably from the logits) and the
drivers :func:`train_epoch` (gather each batch through a permutation, forward,
loss, backward, update — a whole epoch in one compiled call), :func:`loss_and_gradient`
and :func:`predict`.

Conventions: the 1/B of the batch mean is folded into δ^L, so dW = a^{l-1ᵀ}δ^l
and db = Σ δ^l need no further scaling. Nothing here allocates per batch: every
buffer comes from the caller (see ``fastbp.training.Workspace``). Functions are
compiled once per dtype (float32, float64); activations, losses and optimizers
are integer codes from ``fastbp.spec`` branched on outside the inner loops.
"""

import numpy as np
from numba import njit

from .. import spec

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX = (
    spec.IDENTITY, spec.SIGMOID, spec.TANH, spec.RELU, spec.LEAKY_RELU, spec.SOFTMAX)
MSE, BCE, CE = spec.MSE, spec.BINARY_CROSS_ENTROPY, spec.CROSS_ENTROPY
OPT_SGD, OPT_MOMENTUM, OPT_NESTEROV, OPT_RMSPROP, OPT_ADAM = (
    spec.OPT_SGD, spec.OPT_MOMENTUM, spec.OPT_NESTEROV, spec.OPT_RMSPROP, spec.OPT_ADAM)
H_LR, H_MOMENTUM, H_BETA2, H_EPS, H_L1, H_L2, H_CLIP_NORM, H_CLIP_VALUE = (
    spec.H_LR, spec.H_MOMENTUM, spec.H_BETA2, spec.H_EPS, spec.H_L1, spec.H_L2,
    spec.H_CLIP_NORM, spec.H_CLIP_VALUE)
LEAKY_SLOPE = spec.LEAKY_SLOPE

#: batches of at most this many rows form the gradient inside the update
#: (``fused_update_layer``) instead of through a separate GEMM and buffer
FUSED_MAX_ROWS = 4
#: elements of the gradient buffer reused as the fused path's block scratch (L1-sized)
FUSED_SCRATCH = 4096

_jit = njit(cache=True, nogil=True, error_model="numpy")


# --- views into the flat buffers --------------------------------------------------


@_jit
def weights_view(theta, layout, l):
    fan_in, fan_out, w_off = layout[l, 0], layout[l, 1], layout[l, 2]
    return theta[w_off:w_off + fan_in * fan_out].reshape((fan_in, fan_out))


@_jit
def bias_view(theta, layout, l):
    return theta[layout[l, 3]:layout[l, 3] + layout[l, 1]]


@_jit
def rows_view(buffer, offset, rows, cols):
    """A (rows, cols) C-contiguous view of ``buffer`` starting at ``offset``."""
    return buffer[offset:offset + rows * cols].reshape((rows, cols))


# --- fused forward ---------------------------------------------------------------


@_jit
def forward_layer(a_prev, weights, bias, code, z, a):
    """z = a_prev·W + b; a = f(z) (softmax along rows)."""
    np.dot(a_prev, weights, z)
    rows, cols = z.shape
    if code == IDENTITY:
        for i in range(rows):
            for j in range(cols):
                v = z[i, j] + bias[j]
                z[i, j] = v
                a[i, j] = v
    elif code == RELU:
        for i in range(rows):
            for j in range(cols):
                v = z[i, j] + bias[j]
                z[i, j] = v
                a[i, j] = v if v > 0 else 0
    elif code == LEAKY_RELU:
        for i in range(rows):
            for j in range(cols):
                v = z[i, j] + bias[j]
                z[i, j] = v
                a[i, j] = v if v > 0 else LEAKY_SLOPE * v
    elif code == SIGMOID:
        for i in range(rows):
            for j in range(cols):
                v = z[i, j] + bias[j]
                z[i, j] = v
                a[i, j] = 1 / (1 + np.exp(-v))
    elif code == TANH:
        for i in range(rows):
            for j in range(cols):
                v = z[i, j] + bias[j]
                z[i, j] = v
                a[i, j] = np.tanh(v)
    else:  # SOFTMAX
        for i in range(rows):
            m = -np.inf
            for j in range(cols):
                v = z[i, j] + bias[j]
                z[i, j] = v
                m = max(m, v)
            s = 0.0
            for j in range(cols):
                e = np.exp(z[i, j] - m)
                a[i, j] = e
                s += e
            inv = 1 / s
            for j in range(cols):
                a[i, j] *= inv


# --- fused delta propagation --------------------------------------------------


@_jit
def backprop_delta(delta, weights, z, a, code, delta_prev):
    """δ_prev = (δ·Wᵀ) ⊙ f'(z), f' evaluated from z and a = f(z)."""
    np.dot(delta, weights.T, delta_prev)
    rows, cols = delta_prev.shape
    if code == IDENTITY:
        return
    if code == RELU:
        for i in range(rows):
            for j in range(cols):
                if z[i, j] <= 0:
                    delta_prev[i, j] = 0
    elif code == LEAKY_RELU:
        for i in range(rows):
            for j in range(cols):
                if z[i, j] <= 0:
                    delta_prev[i, j] *= LEAKY_SLOPE
    elif code == SIGMOID:
        for i in range(rows):
            for j in range(cols):
                delta_prev[i, j] *= a[i, j] * (1 - a[i, j])
    else:  # TANH
        for i in range(rows):
            for j in range(cols):
                delta_prev[i, j] *= 1 - a[i, j] * a[i, j]


@_jit
def weight_gradient(a_prev, delta, dweights, dbias):
    """dW = a_prevᵀ·δ and db = Σ_rows δ (δ already carries the 1/B)."""
    np.dot(a_prev.T, delta, dweights)
    rows, cols = delta.shape
    for j in range(cols):
        dbias[j] = 0
    for i in range(rows):
        for j in range(cols):
            dbias[j] += delta[i, j]


# --- loss and output delta ------------------------------------------------------


@_jit
def output_delta(z, a, targets, out_code, loss_code, inv_batch, delta):
    """Write δ^L (already divided by the batch size) and return the summed loss.

    Cross-entropy with softmax and binary cross-entropy with sigmoid use the
    logits z for a stable loss and δ = (p − y)/B; MSE uses the activation's
    derivative (the full Jacobian for softmax).
    """
    rows, cols = z.shape
    total = 0.0
    if loss_code == CE:
        for i in range(rows):
            m = -np.inf
            for j in range(cols):
                m = max(m, z[i, j])
            s = 0.0
            for j in range(cols):
                s += np.exp(z[i, j] - m)
            log_s = np.log(s)
            for j in range(cols):
                total -= targets[i, j] * (z[i, j] - m - log_s)
                delta[i, j] = (a[i, j] - targets[i, j]) * inv_batch
    elif loss_code == BCE:
        for i in range(rows):
            for j in range(cols):
                v = z[i, j]
                total += max(v, 0) - v * targets[i, j] + np.log1p(np.exp(-abs(v)))
                delta[i, j] = (a[i, j] - targets[i, j]) * inv_batch
    else:  # MSE
        scale = 2 * inv_batch / cols
        for i in range(rows):
            dot = 0.0
            for j in range(cols):
                e = a[i, j] - targets[i, j]
                total += e * e / cols
                g = scale * e
                delta[i, j] = g
                dot += g * a[i, j]
            if out_code == SIGMOID:
                for j in range(cols):
                    delta[i, j] *= a[i, j] * (1 - a[i, j])
            elif out_code == SOFTMAX:
                for j in range(cols):
                    delta[i, j] = a[i, j] * (delta[i, j] - dot)
    return total


@_jit
def correct_count(a, targets, out_code):
    """Correctly classified rows: argmax for softmax, all units at 0.5 for sigmoid."""
    rows, cols = a.shape
    correct = 0
    if out_code == SOFTMAX:
        for i in range(rows):
            best_a, best_t = 0, 0
            for j in range(1, cols):
                if a[i, j] > a[i, best_a]:
                    best_a = j
                if targets[i, j] > targets[i, best_t]:
                    best_t = j
            correct += best_a == best_t
    elif out_code == SIGMOID:
        for i in range(rows):
            ok = True
            for j in range(cols):
                ok = ok and ((a[i, j] > 0.5) == (targets[i, j] > 0.5))
            correct += ok
    return correct


# --- fused weight update --------------------------------------------------------------

# Reductions (norms, penalty) may be reassociated so that the update loops vectorise.
# No flag that assumes finite values is set, so NaN/inf still propagate to the
# divergence check; no FMA contraction either, so the parameter arithmetic is the
# same wherever the function is inlined (checkpointing is tested bitwise against
# the plain path).
_jit_fast = njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})


@_jit_fast
def _regularised_sq_norm(theta, grad, l1, l2):
    """Σ (grad + l1 sign(w) + l2 w)² over equal-length slices."""
    total = 0.0
    for i in range(theta.shape[0]):
        w = theta[i]
        g = grad[i] + l1 * np.sign(w) + l2 * w
        total += g * g
    return total


@_jit
def _clip_scale(theta, grad, layout, hyper):
    """Factor that brings the global norm of the regularised gradient to clip_norm."""
    clip_norm = hyper[H_CLIP_NORM]
    if clip_norm <= 0:
        return 1.0
    zero = theta[0] * 0
    l1, l2 = zero + hyper[H_L1], zero + hyper[H_L2]
    sq = 0.0
    for l in range(layout.shape[0]):
        w0, w1, b1 = layout[l, 2], layout[l, 3], layout[l, 3] + layout[l, 1]
        sq += _regularised_sq_norm(theta[w0:w1], grad[w0:w1], l1, l2)
        sq += _regularised_sq_norm(theta[w1:b1], grad[w1:b1], zero, zero)
    norm = np.sqrt(sq)
    return clip_norm / norm if norm > clip_norm else 1.0


@_jit_fast
def _regularise(theta, grad, l1, l2, scale, clip_value):
    """In place: grad ← clamp((grad + l1 sign(w) + l2 w)·scale, ±clip_value).
    Returns (Σ (grad + l1 sign(w) + l2 w)², penalty l1 Σ|w| + (l2/2) Σ w²)."""
    zero = scale * 0
    half = zero + 0.5
    grad_sq, penalty = zero, zero
    for i in range(theta.shape[0]):
        w = theta[i]
        g = grad[i] + l1 * np.sign(w) + l2 * w
        grad_sq += g * g
        penalty += l1 * abs(w) + half * l2 * w * w
        grad[i] = min(max(g * scale, -clip_value), clip_value)
    return grad_sq, penalty


@_jit_fast
def _update_range(theta, grad, state1, state2, opt_code, consts, l1, l2, scale):
    """The optimizer step on the equal-length slices theta, grad, state1, state2;
    returns the sums (Σ g², Σ Δθ², Σ θ², penalty) over them, g the regularised
    gradient before clipping.

    With L1/L2 or clipping on, :func:`_regularise` first turns ``grad`` (a scratch
    buffer) into the regularised, clipped gradient; the optimizer loops themselves
    are lean, one per optimizer, branch-free so that they vectorise. Accumulators are
    in the parameter dtype (float32 sums vectorise at full width; they are reported,
    not fed back). Callers pass slices: loops over 0..n vectorise, an index range
    starting at a runtime offset keeps Numba's negative-index wraparound in the loop.
    """
    lr, mu, beta2, eps, corr1, corr2, clip_value = consts
    zero = lr * 0
    one = zero + 1
    plain = l1 == 0 and l2 == 0 and scale == 1 and clip_value == np.inf
    reg_sq, penalty = zero, zero
    if not plain:
        reg_sq, penalty = _regularise(theta, grad, l1, l2, scale, clip_value)
    grad_sq, step_sq, weight_sq = zero, zero, zero
    n = theta.shape[0]
    if opt_code == OPT_SGD:
        for i in range(n):
            w = theta[i]
            g = grad[i]
            grad_sq += g * g
            new = w - lr * g
            theta[i] = new
            step_sq += (new - w) * (new - w)
            weight_sq += w * w
    elif opt_code == OPT_MOMENTUM or opt_code == OPT_NESTEROV:
        # momentum: θ + v;  nesterov: θ + μ v − η g  (θ + a·v − b·η g, exact in both cases)
        a, b = (one, zero) if opt_code == OPT_MOMENTUM else (mu, one)
        for i in range(n):
            w = theta[i]
            g = grad[i]
            grad_sq += g * g
            v = mu * state1[i] - lr * g
            state1[i] = v
            new = w + a * v - b * lr * g
            theta[i] = new
            step_sq += (new - w) * (new - w)
            weight_sq += w * w
    elif opt_code == OPT_RMSPROP:
        for i in range(n):
            w = theta[i]
            g = grad[i]
            grad_sq += g * g
            sq = mu * state1[i] + (one - mu) * g * g
            state1[i] = sq
            new = w - lr * g / (np.sqrt(sq) + eps)
            theta[i] = new
            step_sq += (new - w) * (new - w)
            weight_sq += w * w
    else:  # OPT_ADAM: θ − η m̂/(√v̂ + ε) = θ − (η√c2/c1)·m/(√v + ε√c2): one √ and one ÷
        step_scale, eps_scaled = lr * np.sqrt(corr2) / corr1, eps * np.sqrt(corr2)
        for i in range(n):
            w = theta[i]
            g = grad[i]
            grad_sq += g * g
            m = mu * state1[i] + (one - mu) * g
            v = beta2 * state2[i] + (one - beta2) * g * g
            state1[i] = m
            state2[i] = v
            new = w - step_scale * m / (np.sqrt(v) + eps_scaled)
            theta[i] = new
            step_sq += (new - w) * (new - w)
            weight_sq += w * w
    return (grad_sq if plain else reg_sq), step_sq, weight_sq, penalty


@_jit
def step_constants(theta, hyper, t):
    """(lr, μ/ρ/β1, β2, ε, 1 − β1^t, 1 − β2^t, clip_value) cast to the parameter dtype,
    so float32 math stays float32; clip_value is +inf when off."""
    zero = theta[0] * 0
    clip_value = hyper[H_CLIP_VALUE] if hyper[H_CLIP_VALUE] > 0 else np.inf
    return (zero + hyper[H_LR], zero + hyper[H_MOMENTUM], zero + hyper[H_BETA2], zero + hyper[H_EPS],
            zero + (1 - hyper[H_MOMENTUM] ** t), zero + (1 - hyper[H_BETA2] ** t), zero + clip_value)


@_jit
def _record(diagnostics, l, grad_sq, step_sq, weight_sq):
    diagnostics[l, 0] += np.sqrt(grad_sq)
    diagnostics[l, 1] += np.sqrt(step_sq / weight_sq) if weight_sq > 0 else 0.0


@_jit
def update_params(theta, grad, state1, state2, layout, opt_code, hyper, t, diagnostics):
    """One optimizer step at step count t (1-based), in place; returns the penalty
    l1 Σ|W| + (l2/2) Σ W² of the weights before the step.

    Per element: g = (grad + l1 sign(w) + l2 w) · clip_scale, clamped to ±clip_value,
    then the optimizer rule of ``reference.optimizer_step``. ``hyper`` is a float64
    vector indexed by the ``spec.H_*`` constants.

    Gradient diagnostics come from the same pass: ``diagnostics[l, 0]`` accumulates
    the L2 norm of layer l's regularised gradient (weights and bias, before
    clipping) and ``diagnostics[l, 1]`` the ratio ‖ΔW‖ / ‖W‖ of its weight update.
    """
    consts = step_constants(theta, hyper, t)
    zero = theta[0] * 0
    l1, l2 = zero + hyper[H_L1], zero + hyper[H_L2]
    scale = zero + _clip_scale(theta, grad, layout, hyper)
    penalty = 0.0
    for l in range(layout.shape[0]):
        w0, w1, b1 = layout[l, 2], layout[l, 3], layout[l, 3] + layout[l, 1]
        g_w, step_w, weight_w, penalty_w = _update_range(
            theta[w0:w1], grad[w0:w1], state1[w0:w1], state2[w0:w1], opt_code, consts, l1, l2, scale)
        g_b, _, _, _ = _update_range(
            theta[w1:b1], grad[w1:b1], state1[w1:b1], state2[w1:b1], opt_code, consts, zero, zero, scale)
        penalty += penalty_w
        _record(diagnostics, l, g_w + g_b, step_w, weight_w)
    return penalty


@_jit
def fused_update_layer(theta, state1, state2, layout, l, a_prev, delta, scratch, opt_code, consts,
                       l1, l2, diagnostics):
    """Gradient and optimizer step of layer l in one pass, for small batches: the rows
    of dW = a_prevᵀ·δ are formed block by block in the cache-sized ``scratch`` and
    applied at once, so the full gradient never goes through memory. Same result as
    ``weight_gradient`` + ``update_params`` without norm clipping; returns the penalty.
    """
    fan_in, fan_out, w_off, b_off = layout[l, 0], layout[l, 1], layout[l, 2], layout[l, 3]
    rows = delta.shape[0]
    block = max(1, scratch.shape[0] // fan_out)
    one = theta[0] * 0 + 1
    grad_sq, step_sq, weight_sq, penalty = 0.0, 0.0, 0.0, 0.0
    for i0 in range(0, fan_in, block):
        i1 = min(i0 + block, fan_in)
        grad_block = scratch[:(i1 - i0) * fan_out]
        for i in range(i0, i1):
            grad_row = grad_block[(i - i0) * fan_out:(i - i0 + 1) * fan_out]
            grad_row[:] = 0
            for r in range(rows):
                a = a_prev[r, i]
                delta_row = delta[r]
                for j in range(fan_out):
                    grad_row[j] += a * delta_row[j]
        start, stop = w_off + i0 * fan_out, w_off + i1 * fan_out
        g, st, w, p = _update_range(theta[start:stop], grad_block, state1[start:stop],
                                    state2[start:stop], opt_code, consts, l1, l2, one)
        grad_sq += g
        step_sq += st
        weight_sq += w
        penalty += p
    grad_bias = scratch[:fan_out]
    grad_bias[:] = 0
    for r in range(rows):
        delta_row = delta[r]
        for j in range(fan_out):
            grad_bias[j] += delta_row[j]
    g, _, _, _ = _update_range(theta[b_off:b_off + fan_out], grad_bias, state1[b_off:b_off + fan_out],
                               state2[b_off:b_off + fan_out], opt_code, consts, l1 * 0, l2 * 0, one)
    _record(diagnostics, l, grad_sq + g, step_sq, weight_sq)
    return penalty


# --- passes over one batch -------------------------------------------------------------


@_jit
def forward_pass(x, theta, layout, codes, zs, acts, bmax):
    """Forward through every layer for the rows of ``x``; caches z^l and a^l in the
    flat buffers ``zs`` and ``acts`` (layer l at offset bmax·Σ_{j<l} n_j)."""
    rows = x.shape[0]
    a_prev = x
    offset = 0
    for l in range(layout.shape[0]):
        cols = layout[l, 1]
        z = rows_view(zs, offset, rows, cols)
        a = rows_view(acts, offset, rows, cols)
        forward_layer(a_prev, weights_view(theta, layout, l), bias_view(theta, layout, l), codes[l], z, a)
        a_prev = a
        offset += bmax * cols
    return offset - bmax * layout[layout.shape[0] - 1, 1]


@_jit
def _backward(x, targets, theta, grad, layout, codes, loss_code, zs, acts, deltas, bmax,
              fused, state1, state2, opt_code, consts, l1, l2, scratch, diagnostics):
    """Forward, loss and backward for one batch. Unfused: writes the batch-mean
    data-loss gradient into ``grad``. Fused: updates each layer's parameters as soon
    as its delta is known (after δ^{l-1} has been formed with the old W^l).
    Returns (summed loss, correct count, penalty of the fused update)."""
    rows = x.shape[0]
    n_layers = layout.shape[0]
    out = forward_pass(x, theta, layout, codes, zs, acts, bmax)
    k = layout[n_layers - 1, 1]
    z_out = rows_view(zs, out, rows, k)
    a_out = rows_view(acts, out, rows, k)
    half = deltas.shape[0] // 2
    delta = rows_view(deltas, 0, rows, k)
    loss = output_delta(z_out, a_out, targets, codes[n_layers - 1], loss_code, 1.0 / rows, delta)
    correct = correct_count(a_out, targets, codes[n_layers - 1])
    penalty = 0.0
    offset = out
    for l in range(n_layers - 1, -1, -1):
        if l > 0:
            fan_in = layout[l, 0]
            offset -= bmax * fan_in
            a_prev = rows_view(acts, offset, rows, fan_in)
        else:
            a_prev = x
        if not fused:
            weight_gradient(a_prev, delta, weights_view(grad, layout, l), bias_view(grad, layout, l))
        if l > 0:
            which = (n_layers - l) % 2  # ping-pong between the two delta buffers
            delta_prev = rows_view(deltas, which * half, rows, layout[l, 0])
            backprop_delta(delta, weights_view(theta, layout, l), rows_view(zs, offset, rows, fan_in),
                           a_prev, codes[l - 1], delta_prev)
        if fused:
            penalty += fused_update_layer(theta, state1, state2, layout, l, a_prev, delta, scratch,
                                          opt_code, consts, l1, l2, diagnostics)
        if l > 0:
            delta = delta_prev
    return loss, correct, penalty


@_jit
def backward_pass(x, targets, theta, grad, layout, codes, loss_code, zs, acts, deltas, bmax):
    """Forward, loss and backward for one batch; writes the batch-mean data-loss
    gradient into ``grad``. Returns (summed loss, correct count)."""
    zero = theta[0] * 0
    consts = (zero, zero, zero, zero, zero, zero, zero)
    loss, correct, _ = _backward(x, targets, theta, grad, layout, codes, loss_code, zs, acts, deltas,
                                 bmax, False, grad, grad, 0, consts, zero, zero, grad,
                                 np.zeros((0, 2)))
    return loss, correct


@_jit
def gather_rows(source, perm, start, rows, out):
    """out[r] = source[perm[start + r]] for r < rows."""
    cols = source.shape[1]
    for r in range(rows):
        src = perm[start + r]
        for j in range(cols):
            out[r, j] = source[src, j]


# --- drivers ----------------------------------------------------------------------------


@_jit
def train_epoch(X, Y, perm, batch_size, theta, grad, state1, state2, layout, codes, loss_code,
                opt_code, hyper, step, xb, yb, zs, acts, deltas, diagnostics):
    """One epoch in one compiled call: for each batch of ``perm`` (the last may be
    partial) gather, forward, loss, backward and update. ``step[0]`` is the optimizer
    step count, advanced per batch; ``diagnostics`` (n_layers, 2) accumulates per-batch
    gradient norms and update ratios (see :func:`update_params`).
    Returns (Σ_batches b·(loss_b + penalty_b), correct).
    """
    n = perm.shape[0]
    total = 0.0
    correct = 0
    l1, l2 = theta[0] * 0 + hyper[H_L1], theta[0] * 0 + hyper[H_L2]
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        x = xb[:rows]
        y = yb[:rows]
        gather_rows(X, perm, start, rows, x)
        gather_rows(Y, perm, start, rows, y)
        step[0] += 1
        fused = rows <= FUSED_MAX_ROWS and hyper[H_CLIP_NORM] <= 0
        loss, hits, penalty = _backward(
            x, y, theta, grad, layout, codes, loss_code, zs, acts, deltas, batch_size, fused,
            state1, state2, opt_code, step_constants(theta, hyper, step[0]), l1, l2,
            grad[:FUSED_SCRATCH], diagnostics)
        if not fused:
            penalty = update_params(theta, grad, state1, state2, layout, opt_code, hyper, step[0],
                                    diagnostics)
        total += loss + rows * penalty
        correct += hits
    return total, correct


@_jit
def loss_and_gradient(X, Y, theta, grad, layout, codes, loss_code, zs, acts, deltas):
    """Full-batch data loss (mean) and its gradient into ``grad``."""
    loss, _ = backward_pass(X, Y, theta, grad, layout, codes, loss_code, zs, acts, deltas, X.shape[0])
    return loss / X.shape[0]


@_jit
def predict(X, theta, layout, codes, zs, acts, out, chunk):
    """Network output for every row of X, in chunks of ``chunk`` rows."""
    n = X.shape[0]
    k = out.shape[1]
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        offset = forward_pass(X[start:start + rows], theta, layout, codes, zs, acts, chunk)
        a_out = rows_view(acts, offset, rows, k)
        out[start:start + rows] = a_out


@_jit
def evaluate(X, Y, theta, layout, codes, loss_code, zs, acts, deltas, chunk):
    """Summed data loss and correct count over every row of X, in chunks (no update)."""
    n = X.shape[0]
    n_layers = layout.shape[0]
    k = layout[n_layers - 1, 1]
    total = 0.0
    correct = 0
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        offset = forward_pass(X[start:start + rows], theta, layout, codes, zs, acts, chunk)
        z_out = rows_view(zs, offset, rows, k)
        a_out = rows_view(acts, offset, rows, k)
        y = Y[start:start + rows]
        total += output_delta(z_out, a_out, y, codes[n_layers - 1], loss_code, 1.0, rows_view(deltas, 0, rows, k))
        correct += correct_count(a_out, y, codes[n_layers - 1])
    return total, correct
