"""CPU kernels for the optional training modes: inverted dropout, gradient
checkpointing and batch normalization (described at its section below). Built around the fused kernels of ``cpu.py`` (``forward_layer``,
``backprop_delta``, ``weight_gradient``, ``output_delta``, ``update_params``),
which they call unchanged; the plain path (``cpu.train_epoch``) stays as it is.

Dropout (per hidden layer l, keep probability ``keep[l]`` = 1 − p): in training
the forward pass writes a^l = f(z^l) into ``acts`` as usual, draws a mask
m ∈ {0, 1/keep} into ``masks`` and the dropped activations a^l ⊙ m into
``dacts``; the next layer reads ``dacts``. Backward: dW^{l+1} uses the dropped
activations and δ^l = ((δ^{l+1}·W^{l+1ᵀ}) ⊙ f'(z^l)) ⊙ m — f' is evaluated from the
undropped a^l, so ``backprop_delta`` is reused as is and the mask applied after.
Masks come from Numba's generator, seeded once per epoch (``rng_seed``) inside
the compiled call; ``draw=False`` replays the masks already in ``masks``.

Checkpointing: the layers are cut into segments ``starts[g]..starts[g+1]``;
the forward pass keeps only each segment's last z and a (in ``ck_z``/``ck_a`` at
``ck_off[l]``) and works in scratch buffers one segment long; the backward pass
recomputes each segment from its stored input, then backpropagates through it.
The recomputation repeats the very same kernel calls on the same inputs, so the
gradients are bitwise those of the plain path.
"""

import numpy as np

from .cpu import (IDENTITY, LEAKY_RELU, LEAKY_SLOPE, RELU, SIGMOID, _jit, backprop_delta, bias_view,
                  correct_count, forward_layer, gather_rows, output_delta, rows_view, update_params,
                  weight_gradient, weights_view)


@_jit
def layer_backward(l, a_in, z_prev, a_prev, delta, theta, grad, layout, codes, deltas):
    """dW^l = a_inᵀ·δ^l and db^l into ``grad``; for l > 0 returns
    δ^{l-1} = (δ^l·W^{lᵀ}) ⊙ f'(z_prev) (f' from z_prev and a_prev = f(z_prev)) in the
    other half of the ping-pong ``deltas`` buffer (for l = 0, returns δ^0 itself)."""
    weight_gradient(a_in, delta, weights_view(grad, layout, l), bias_view(grad, layout, l))
    if l == 0:
        return delta
    which = (layout.shape[0] - l) % 2
    delta_prev = rows_view(deltas, which * (deltas.shape[0] // 2), delta.shape[0], layout[l, 0])
    backprop_delta(delta, weights_view(theta, layout, l), z_prev, a_prev, codes[l - 1], delta_prev)
    return delta_prev


# --- dropout ----------------------------------------------------------------------------------


@_jit
def loss_and_output_delta(targets, layout, codes, loss_code, zs, acts, deltas, out):
    """Loss sum, correct count and δ^L (a view at the start of ``deltas``) from the output
    layer cached at offset ``out`` of ``zs``/``acts``."""
    rows = targets.shape[0]
    n_layers = layout.shape[0]
    k = layout[n_layers - 1, 1]
    z_out = rows_view(zs, out, rows, k)
    a_out = rows_view(acts, out, rows, k)
    delta = rows_view(deltas, 0, rows, k)
    loss = output_delta(z_out, a_out, targets, codes[n_layers - 1], loss_code, 1.0 / rows, delta)
    return loss, correct_count(a_out, targets, codes[n_layers - 1]), delta



@_jit
def draw_mask(mask, keep):
    """mask[i, j] = 1/keep with probability keep, else 0 (inverted dropout)."""
    inv = 1.0 / keep
    rows, cols = mask.shape
    for i in range(rows):
        for j in range(cols):
            mask[i, j] = inv if np.random.random() < keep else 0.0


@_jit
def apply_mask(a, mask, out):
    rows, cols = a.shape
    for i in range(rows):
        for j in range(cols):
            out[i, j] = a[i, j] * mask[i, j]


@_jit
def forward_pass_dropout(x, theta, layout, codes, zs, acts, bmax, keep, masks, dacts, draw):
    """Training forward pass with dropout after every hidden layer whose keep < 1;
    returns the offset of the output layer in ``zs``/``acts``."""
    rows = x.shape[0]
    n_layers = layout.shape[0]
    a_prev = x
    offset = 0
    for l in range(n_layers):
        cols = layout[l, 1]
        z = rows_view(zs, offset, rows, cols)
        a = rows_view(acts, offset, rows, cols)
        forward_layer(a_prev, weights_view(theta, layout, l), bias_view(theta, layout, l), codes[l], z, a)
        if l < n_layers - 1 and keep[l] < 1:
            m = rows_view(masks, offset, rows, cols)
            if draw:
                draw_mask(m, keep[l])
            d = rows_view(dacts, offset, rows, cols)
            apply_mask(a, m, d)
            a_prev = d
        else:
            a_prev = a
        offset += bmax * cols
    return offset - bmax * layout[n_layers - 1, 1]


@_jit
def backward_pass_dropout(x, targets, theta, grad, layout, codes, loss_code, zs, acts, deltas, bmax,
                          keep, masks, dacts, draw):
    """``cpu.backward_pass`` with dropout: forward (drawing masks if ``draw``), loss and
    backward; writes the batch-mean gradient into ``grad``. Returns (loss sum, correct)."""
    rows = x.shape[0]
    n_layers = layout.shape[0]
    out = forward_pass_dropout(x, theta, layout, codes, zs, acts, bmax, keep, masks, dacts, draw)
    loss, correct, delta = loss_and_output_delta(targets, layout, codes, loss_code, zs, acts, deltas, out)
    offset = out
    for l in range(n_layers - 1, -1, -1):
        dropped = False
        if l > 0:
            fan_in = layout[l, 0]
            offset -= bmax * fan_in
            a_kept = rows_view(acts, offset, rows, fan_in)
            z_prev = rows_view(zs, offset, rows, fan_in)
            dropped = keep[l - 1] < 1
            a_prev = rows_view(dacts, offset, rows, fan_in) if dropped else a_kept
        else:
            a_kept = a_prev = z_prev = x
        delta = layer_backward(l, a_prev, z_prev, a_kept, delta, theta, grad, layout, codes, deltas)
        if dropped:
            apply_mask(delta, rows_view(masks, offset, rows, fan_in), delta)
    return loss, correct


# --- gradient checkpointing ---------------------------------------------------------------------


@_jit
def segment_forward(a_in, theta, layout, codes, start, stop, zs, acts, bmax):
    """Forward through layers start..stop-1 into the segment buffers (layer start at
    offset 0); returns the offset of layer stop-1."""
    rows = a_in.shape[0]
    a_prev = a_in
    offset = 0
    for l in range(start, stop):
        cols = layout[l, 1]
        z = rows_view(zs, offset, rows, cols)
        a = rows_view(acts, offset, rows, cols)
        forward_layer(a_prev, weights_view(theta, layout, l), bias_view(theta, layout, l), codes[l], z, a)
        a_prev = a
        offset += bmax * cols
    return offset - bmax * layout[stop - 1, 1]


@_jit
def _segment_input(x, ck_a, ck_off, layout, start, rows):
    if start == 0:
        return x
    return rows_view(ck_a, ck_off[start - 1], rows, layout[start - 1, 1])


@_jit
def backward_pass_checkpoint(x, targets, theta, grad, layout, codes, loss_code, zs, acts, deltas, bmax,
                             starts, ck_off, ck_z, ck_a):
    """``cpu.backward_pass`` keeping only the segment boundaries and recomputing each
    segment during the backward pass. Same results as the plain pass, bit for bit."""
    rows = x.shape[0]
    n_layers = layout.shape[0]
    n_seg = starts.shape[0] - 1
    last = 0
    for g in range(n_seg):
        start, stop = starts[g], starts[g + 1]
        last = segment_forward(_segment_input(x, ck_a, ck_off, layout, start, rows), theta, layout, codes,
                               start, stop, zs, acts, bmax)
        if g < n_seg - 1:
            cols = layout[stop - 1, 1]
            rows_view(ck_z, ck_off[stop - 1], rows, cols)[...] = rows_view(zs, last, rows, cols)
            rows_view(ck_a, ck_off[stop - 1], rows, cols)[...] = rows_view(acts, last, rows, cols)
    loss, correct, delta = loss_and_output_delta(targets, layout, codes, loss_code, zs, acts, deltas, last)
    for g in range(n_seg - 1, -1, -1):
        start, stop = starts[g], starts[g + 1]
        a_in = _segment_input(x, ck_a, ck_off, layout, start, rows)
        if g < n_seg - 1:  # the last segment is still in the buffers from the forward pass
            last = segment_forward(a_in, theta, layout, codes, start, stop, zs, acts, bmax)
        offset = last
        for l in range(stop - 1, start - 1, -1):
            if l > start:
                fan_in = layout[l, 0]
                offset -= bmax * fan_in
                a_prev = rows_view(acts, offset, rows, fan_in)
                z_prev = rows_view(zs, offset, rows, fan_in)
            elif l > 0:
                a_prev = a_in
                z_prev = rows_view(ck_z, ck_off[l - 1], rows, layout[l, 0])
            else:
                a_prev = x
                z_prev = x
            delta = layer_backward(l, a_prev, z_prev, a_prev, delta, theta, grad, layout, codes, deltas)
    return loss, correct


# --- batch normalization --------------------------------------------------------------------------
#
# A hidden layer l with BN computes u = a^{l-1}·W (its bias slot is the shift β),
# x̂ = (u − μ)/√(σ² + ε), y = γ ⊙ x̂ + β and a = f(y). ``zs`` caches y (so
# ``backprop_delta`` gives dL/dy unchanged), ``xhat`` caches x̂, ``stats`` holds μ and
# 1/√(σ² + ε) per unit (float64; layer l at stat offset Σ_{j<l} n_j, the inverse
# standard deviations one total width further on), ``running`` the running mean and
# variance in the same arrangement. Modes: 0 inference (running statistics),
# 1 training with batch statistics, 2 the same and update the running statistics
# (mean ← m·mean + (1 − m)·μ, var ← m·var + (1 − m)·σ²·B/(B − 1)).


@_jit
def activate_only(z, code, a):
    """a = f(z) for a hidden activation code (the epilogue of ``forward_layer`` without the bias)."""
    rows, cols = z.shape
    for i in range(rows):
        for j in range(cols):
            v = z[i, j]
            if code == IDENTITY:
                a[i, j] = v
            elif code == RELU:
                a[i, j] = v if v > 0 else 0
            elif code == LEAKY_RELU:
                a[i, j] = v if v > 0 else LEAKY_SLOPE * v
            elif code == SIGMOID:
                a[i, j] = 1 / (1 + np.exp(-v))
            else:  # TANH
                a[i, j] = np.tanh(v)


@_jit
def bn_forward(u, xhat, gamma, beta, mean, inv_std, running_mean, running_var, eps, momentum, mode):
    """In place: u (= a·W) becomes y = γ x̂ + β; x̂ into ``xhat``, μ and 1/√(σ²+ε) into
    ``mean``/``inv_std`` (batch statistics in modes 1 and 2, running ones in mode 0)."""
    rows, cols = u.shape
    if mode == 0:
        for j in range(cols):
            mean[j] = running_mean[j]
            inv_std[j] = 1.0 / np.sqrt(running_var[j] + eps)
    else:
        for j in range(cols):
            mean[j] = 0.0
            inv_std[j] = 0.0
        for i in range(rows):
            for j in range(cols):
                mean[j] += u[i, j]
        for j in range(cols):
            mean[j] /= rows
        for i in range(rows):
            for j in range(cols):
                d = u[i, j] - mean[j]
                inv_std[j] += d * d
        for j in range(cols):
            var = inv_std[j] / rows
            if mode == 2:
                running_mean[j] = momentum * running_mean[j] + (1 - momentum) * mean[j]
                unbiased = var * rows / (rows - 1) if rows > 1 else var
                running_var[j] = momentum * running_var[j] + (1 - momentum) * unbiased
            inv_std[j] = 1.0 / np.sqrt(var + eps)
    for i in range(rows):
        for j in range(cols):
            x = (u[i, j] - mean[j]) * inv_std[j]
            xhat[i, j] = x
            u[i, j] = gamma[j] * x + beta[j]


@_jit
def bn_backward(delta, xhat, gamma, inv_std, dgamma, dbeta):
    """In place: δ = dL/dy (batch mean folded in) becomes dL/du =
    (1/√(σ²+ε)) (g − mean(g) − x̂ mean(g x̂)) with g = γ δ; writes dγ = Σ δ x̂ and dβ = Σ δ."""
    rows, cols = delta.shape
    for j in range(cols):
        dgamma[j] = 0
        dbeta[j] = 0
    for i in range(rows):
        for j in range(cols):
            dbeta[j] += delta[i, j]
            dgamma[j] += delta[i, j] * xhat[i, j]
    for i in range(rows):
        for j in range(cols):
            g = gamma[j]
            delta[i, j] = inv_std[j] * (g * delta[i, j] - g * dbeta[j] / rows - xhat[i, j] * g * dgamma[j] / rows)


@_jit
def forward_pass_bn(x, theta, layout, codes, zs, acts, bmax, bn_goff, xhat, stats, running, eps, momentum,
                    mode):
    """Forward pass with BN on the layers whose ``bn_goff`` ≥ 0; returns the output offset."""
    rows = x.shape[0]
    n_layers = layout.shape[0]
    total = stats.shape[0] // 2
    a_prev = x
    offset = 0
    stat = 0
    for l in range(n_layers):
        cols = layout[l, 1]
        z = rows_view(zs, offset, rows, cols)
        a = rows_view(acts, offset, rows, cols)
        g_off = bn_goff[l]
        if g_off >= 0:
            np.dot(a_prev, weights_view(theta, layout, l), z)
            bn_forward(z, rows_view(xhat, offset, rows, cols), theta[g_off:g_off + cols],
                       bias_view(theta, layout, l), stats[stat:stat + cols], stats[total + stat:total + stat + cols],
                       running[stat:stat + cols], running[total + stat:total + stat + cols], eps, momentum, mode)
            activate_only(z, codes[l], a)
        else:
            forward_layer(a_prev, weights_view(theta, layout, l), bias_view(theta, layout, l), codes[l], z, a)
        a_prev = a
        offset += bmax * cols
        stat += cols
    return offset - bmax * layout[n_layers - 1, 1]


@_jit
def backward_pass_bn(x, targets, theta, grad, layout, codes, loss_code, zs, acts, deltas, bmax, bn_goff, xhat,
                     stats, running, eps, momentum, mode, scratch):
    """Forward (``mode`` 1 or 2), loss and backward through the batch statistics; writes
    the batch-mean gradient (W, β, γ) into ``grad``. Returns (loss sum, correct).
    ``scratch`` (≥ widest layer) takes the Σ du that ``weight_gradient`` writes as a
    bias gradient, meaningless for a BN layer whose bias slot holds β."""
    rows = x.shape[0]
    n_layers = layout.shape[0]
    total = stats.shape[0] // 2
    out = forward_pass_bn(x, theta, layout, codes, zs, acts, bmax, bn_goff, xhat, stats, running, eps,
                          momentum, mode)
    loss, correct, delta = loss_and_output_delta(targets, layout, codes, loss_code, zs, acts, deltas, out)
    offset = out
    stat = total
    for l in range(n_layers - 1, -1, -1):
        cols = layout[l, 1]
        stat -= cols
        g_off = bn_goff[l]
        if g_off >= 0:
            bn_backward(delta, rows_view(xhat, offset, rows, cols), theta[g_off:g_off + cols],
                        stats[total + stat:total + stat + cols], grad[g_off:g_off + cols],
                        bias_view(grad, layout, l))
        if l > 0:
            fan_in = layout[l, 0]
            offset -= bmax * fan_in
            a_prev = rows_view(acts, offset, rows, fan_in)
            z_prev = rows_view(zs, offset, rows, fan_in)
        else:
            a_prev = z_prev = x
        if g_off >= 0:
            weight_gradient(a_prev, delta, weights_view(grad, layout, l), scratch[:cols])
            if l == 0:
                continue
            which = (n_layers - l) % 2
            delta_prev = rows_view(deltas, which * (deltas.shape[0] // 2), rows, layout[l, 0])
            backprop_delta(delta, weights_view(theta, layout, l), z_prev, a_prev, codes[l - 1], delta_prev)
            delta = delta_prev
        else:
            delta = layer_backward(l, a_prev, z_prev, a_prev, delta, theta, grad, layout, codes, deltas)
    return loss, correct


@_jit
def evaluate_bn(X, Y, theta, layout, codes, loss_code, zs, acts, deltas, chunk, bn_goff, xhat, stats, running,
                eps, mode, out):
    """Summed data loss and correct count over the rows of X in chunks, BN in ``mode``
    (0: running statistics; 1: each chunk's own batch statistics, as gradcheck needs).
    With ``out`` of X's row count, also stores the network outputs (predict)."""
    n = X.shape[0]
    n_layers = layout.shape[0]
    k = layout[n_layers - 1, 1]
    total = 0.0
    correct = 0
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        offset = forward_pass_bn(X[start:start + rows], theta, layout, codes, zs, acts, chunk, bn_goff, xhat,
                                 stats, running, eps, 0.0, mode)
        z_out = rows_view(zs, offset, rows, k)
        a_out = rows_view(acts, offset, rows, k)
        if out.shape[0] == n:
            out[start:start + rows] = a_out
        if Y.shape[0] == n:
            y = Y[start:start + rows]
            total += output_delta(z_out, a_out, y, codes[n_layers - 1], loss_code, 1.0,
                                  rows_view(deltas, 0, rows, k))
            correct += correct_count(a_out, y, codes[n_layers - 1])
    return total, correct


# --- driver ------------------------------------------------------------------------------------


@_jit
def train_epoch_ext(X, Y, perm, batch_size, theta, grad, state1, state2, layout, codes, loss_code,
                    opt_code, hyper, step, xb, yb, zs, acts, deltas, diagnostics,
                    keep, masks, dacts, rng_seed, starts, ck_off, ck_z, ck_a,
                    update_layout, bn_goff, xhat, stats, running, bn_eps, bn_momentum, scratch):
    """``cpu.train_epoch`` for the optional modes: batch normalization when ``bn_goff``
    is not empty (running statistics updated per batch; the optimizer steps over
    ``update_layout``, which covers γ), else checkpointing when ``starts`` has more
    than one entry, else dropout (masks drawn from Numba's generator seeded with
    ``rng_seed`` at the start of the epoch). Returns (Σ b·(loss + penalty), correct)."""
    if rng_seed >= 0:
        np.random.seed(rng_seed)
    batchnorm = bn_goff.shape[0] > 0
    checkpoint = starts.shape[0] > 1
    n = perm.shape[0]
    total = 0.0
    correct = 0
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        x = xb[:rows]
        y = yb[:rows]
        gather_rows(X, perm, start, rows, x)
        gather_rows(Y, perm, start, rows, y)
        if batchnorm:
            loss, hits = backward_pass_bn(x, y, theta, grad, layout, codes, loss_code, zs, acts, deltas,
                                          batch_size, bn_goff, xhat, stats, running, bn_eps, bn_momentum, 2,
                                          scratch)
        elif checkpoint:
            loss, hits = backward_pass_checkpoint(x, y, theta, grad, layout, codes, loss_code, zs, acts,
                                                  deltas, batch_size, starts, ck_off, ck_z, ck_a)
        else:
            loss, hits = backward_pass_dropout(x, y, theta, grad, layout, codes, loss_code, zs, acts,
                                               deltas, batch_size, keep, masks, dacts, True)
        step[0] += 1
        penalty = update_params(theta, grad, state1, state2, update_layout, opt_code, hyper, step[0],
                                diagnostics)
        total += loss + rows * penalty
        correct += hits
    return total, correct
