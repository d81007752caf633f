"""The oracle: backpropagation for an MLP in plain NumPy, no Numba.

Written straight from the math of the background notes, for clarity, not for
speed; every compiled kernel is tested against these functions and the asv
benchmarks measure their speed-ups against :func:`train_epoch`. It stays honest
NumPy: vectorised over the batch, one matrix product per layer and phase, no
Python loop over samples or neurons.

Notation (samples as rows, so the matrices are the transposes of the notes'):

* ``a^0 = X`` (B, n_0); for l = 1..L: ``z^l = a^{l-1} W^l + b^l``, ``a^l = f^l(z^l)``
  with ``W^l`` of shape (n_{l-1}, n_l);
* output delta ``δ^L = ∂ℓ_i/∂z^L`` per sample (the mean over the batch is
  taken in the gradients);
* hidden deltas ``δ^l = (δ^{l+1} W^{l+1ᵀ}) ⊙ f'^l(z^l)``;
* ``dW^l = a^{l-1ᵀ} δ^l / B`` and ``db^l = Σ_batch δ^l / B``.

Losses (per batch, ℓ = mean over the B samples of the per-sample loss):

* ``mse``: per sample ``(1/k) Σ_j (a_j − y_j)²`` — the mean of the squared errors
  over samples and outputs;
* ``binary_cross_entropy``: ``−Σ_j [y_j log p_j + (1 − y_j) log(1 − p_j)]``;
* ``cross_entropy``: ``−Σ_j y_j log p_j`` with p = softmax(z);
* ``poisson`` (output ``exp``, a = e^z): the half Poisson deviance
  ``Σ_j [a_j − y_j z_j + y_j log y_j − y_j]`` (0 log 0 = 0), zero at a = y; its
  output delta is a − y, as for the cross-entropies.

Sample weights w (optional, one per row) make a batch's data loss the weighted mean
``Σ_i w_i ℓ_i / Σ_i w_i`` and divide its L1/L2 penalty by the batch's mean weight
``m = Σ_i w_i / B``: the objective is ``(Σ_i w_i ℓ_i + B·penalty) / Σ_i w_i``. A weight
acts like a repeat count with the penalty kept per B rows (scikit-learn's α / Σ w);
unit weights change nothing. A batch whose weights sum to 0 has no objective: training
skips it (no step). The epoch's reported loss is scikit-learn's: the mean over batches
of each batch's (weighted) objective, weighted by the batch's size B.

Regularisation adds ``l1 Σ|W| + (l2/2) Σ W²`` over the weights (not the biases)
to the objective, hence ``l1·sign(W) + l2·W`` to the weight gradients. Clipping
acts on that full gradient: first by global norm, then by value.
"""

import numpy as np

from . import spec

# --- activations: f and f' -----------------------------------------------


def activate(z, name):
    """f(z) for the activation ``name``; softmax is taken along each row."""
    if name == "identity":
        return z.copy()
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, spec.LEAKY_SLOPE * z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if name == "exp":
        return np.exp(z)
    raise ValueError(f"unknown activation {name!r}")


def activation_derivative(z, a, name):
    """f'(z), given z and a = f(z) (elementwise; softmax has no elementwise f')."""
    if name == "identity":
        return np.ones_like(z)
    if name == "sigmoid":
        return a * (1 - a)
    if name == "tanh":
        return 1 - a * a
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "leaky_relu":
        return np.where(z > 0, 1, spec.LEAKY_SLOPE).astype(z.dtype)
    if name == "exp":
        return a
    raise ValueError(f"activation {name!r} has no elementwise derivative")


# --- forward pass with caches ----------------------------------------------


def dropout(a, mask):
    """Inverted dropout with an explicit mask: ``a ⊙ mask``, the mask holding 0 (dropped)
    or 1/(1 − p) (kept), so the expected activation is unchanged."""
    return a * mask


def dropout_mask(shape, p, rng, dtype=np.float64):
    """A mask for :func:`dropout`: each entry 1/(1 − p) with probability 1 − p, else 0."""
    return ((rng.random(shape) < 1 - p) / (1 - p)).astype(dtype)


def forward(weights, biases, activations, X, masks=None):
    """Forward pass; returns the caches ``(zs, activations_out)``.

    ``activations_out[0]`` is X and ``activations_out[l]`` is a^l; ``zs[l-1]`` is z^l.
    ``masks`` (optional) holds one dropout mask or None per hidden layer; the cached
    a^l is then the dropped activation ``dropout(f(z^l), mask)``.
    """
    a = X
    zs, acts = [], [X]
    for l, (W, b, name) in enumerate(zip(weights, biases, activations)):
        z = a @ W + b
        a = activate(z, name)
        if masks is not None and l < len(weights) - 1 and masks[l] is not None:
            a = dropout(a, masks[l])
        zs.append(z)
        acts.append(a)
    return zs, acts


# --- loss and output delta -------------------------------------------------------


def _log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def sample_losses(z, a, Y, loss, output):
    """Per-sample loss ℓ_i, computed stably from the logits z where it matters."""
    code = spec.resolve_loss(loss, output)
    if code == spec.MSE:
        return ((a - Y) ** 2).mean(axis=1)
    if code == spec.BINARY_CROSS_ENTROPY:
        # -[y log σ(z) + (1-y) log(1-σ(z))] = max(z,0) - z y + log(1 + e^{-|z|})
        return (np.maximum(z, 0) - z * Y + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)
    if code == spec.POISSON:
        y_log_y = np.where(Y > 0, Y * np.log(np.where(Y > 0, Y, 1)), 0)
        return (a - Y * z + y_log_y - Y).sum(axis=1)
    return -(Y * _log_softmax(z)).sum(axis=1)


def output_delta(z, a, Y, loss, output):
    """δ^L = ∂ℓ_i/∂z^L for each sample (rows)."""
    code = spec.resolve_loss(loss, output)
    if code in (spec.BINARY_CROSS_ENTROPY, spec.CROSS_ENTROPY, spec.POISSON):
        return a - Y  # the activation derivative cancels against the loss (canonical link)
    k = Y.shape[1]
    grad_a = 2.0 * (a - Y) / k  # ∂ℓ_i/∂a^L
    if output == "softmax":  # Jacobian of softmax: diag(p) - p pᵀ
        return a * (grad_a - (grad_a * a).sum(axis=1, keepdims=True))
    return grad_a * activation_derivative(z, a, output)


# --- backward pass ------------------------------------------------------------


def backward(weights, activations, zs, acts, Y, loss, masks=None, row_scale=None):
    """Backpropagation: returns ``(dWs, dbs)``, the batch-mean data-loss gradients.

    With dropout ``masks`` (as given to :func:`forward`), a hidden delta is
    ``δ^l = (δ^{l+1} W^{l+1ᵀ}) ⊙ mask ⊙ f'(z^l)``, f' taken at the undropped f(z^l).
    """
    B = Y.shape[0]
    L = len(weights)
    dWs, dbs = [None] * L, [None] * L
    delta = output_delta(zs[-1], acts[-1], Y, loss, activations[-1])
    if row_scale is not None:  # sample weights: δ_i ← δ_i · w_i / mean(w)
        delta = delta * row_scale[:, None]
    for l in range(L - 1, -1, -1):
        dWs[l] = acts[l].T @ delta / B
        dbs[l] = delta.sum(axis=0) / B
        if l > 0:
            mask = None if masks is None else masks[l - 1]
            name = activations[l - 1]
            a = acts[l] if mask is None else activate(zs[l - 1], name)
            delta = delta @ weights[l].T
            if mask is not None:
                delta = delta * mask
            delta = delta * activation_derivative(zs[l - 1], a, name)
    return dWs, dbs


def gradients(weights, biases, activations, X, Y, loss, l1=0.0, l2=0.0, masks=None, sample_weight=None):
    """Loss (data + penalty) and gradients of the objective for one batch (with
    optional dropout ``masks``, one per hidden layer, and ``sample_weight``, one per
    row: see the module docstring)."""
    zs, acts = forward(weights, biases, activations, X, masks)
    losses = sample_losses(zs[-1], acts[-1], Y, loss, activations[-1])
    if sample_weight is None:
        data_loss, mean_weight = losses.mean(), 1.0
        dWs, dbs = backward(weights, activations, zs, acts, Y, loss, masks)
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        data_loss, mean_weight = (w * losses).sum() / w.sum(), w.mean()
        dWs, dbs = backward(weights, activations, zs, acts, Y, loss, masks, row_scale=w / mean_weight)
    l1, l2 = l1 / mean_weight, l2 / mean_weight  # the penalty per B rows
    dWs = [dW + regularisation_gradient(W, l1, l2) for dW, W in zip(dWs, weights)]
    return data_loss + penalty(weights, l1, l2), dWs, dbs


# --- batch normalization ----------------------------------------------------------------
#
# A hidden layer with BN: u = a^{l-1} W (no bias; the shift β takes its place),
# x̂ = (u − μ)/√(σ² + ε), y = γ x̂ + β, a^l = f(y); μ, σ² are the batch mean and
# (biased) variance per unit in training, the running estimates at inference.


def batchnorm_forward(u, gamma, beta, eps, mean=None, var=None):
    """(y, x̂, 1/√(σ² + ε), μ, σ²); batch statistics unless ``mean``/``var`` are given."""
    if mean is None:
        mean, var = u.mean(axis=0), u.var(axis=0)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (u - mean) * inv_std
    return gamma * xhat + beta, xhat, inv_std, mean, var


def batchnorm_backward(dy, xhat, inv_std, gamma):
    """Backward through the batch statistics: (du, Σ dy x̂, Σ dy) from dy = ∂ℓ_i/∂y per
    sample (the dγ, dβ sums are divided by B by the caller, like dW)."""
    g = dy * gamma
    du = inv_std * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
    return du, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def forward_bn(weights, biases, gammas, activations, X, eps, running=None, masks=None):
    """Forward pass with BN on the layers whose ``gammas[l]`` is not None (biases[l] is
    then β) and dropout ``masks`` (None, or one mask or None per hidden layer) after the
    activation: affine → BN → activation → dropout. ``running``: None (batch
    statistics) or a list of (mean, var) per layer. Returns (zs, acts, caches): zs[l]
    holds y for BN layers, acts[l + 1] the (dropped) activations the next layer reads,
    caches[l] = (x̂, 1/√(σ²+ε), μ, σ²) or None."""
    a = X
    zs, acts, caches = [], [X], []
    for l, (W, b, gamma, name) in enumerate(zip(weights, biases, gammas, activations)):
        if gamma is None:
            z, cache = a @ W + b, None
        else:
            stats = (None, None) if running is None else running[l]
            z, *cache = batchnorm_forward(a @ W, gamma, b, eps, *stats)
        a = activate(z, name)
        if masks is not None and l < len(weights) - 1 and masks[l] is not None:
            a = dropout(a, masks[l])
        zs.append(z)
        acts.append(a)
        caches.append(cache)
    return zs, acts, caches


def gradients_bn(weights, biases, gammas, activations, X, Y, loss, eps, masks=None):
    """Training-mode (batch statistics) data loss and gradients ``(loss, dWs, dbs, dgammas)``
    of a network with BN (and dropout ``masks`` as in :func:`forward_bn`); ``dbs[l]`` is
    dβ for BN layers, ``dgammas[l]`` None without BN. A hidden delta is
    ``(δ^{l+1} W^{l+1ᵀ}) ⊙ mask ⊙ f'(y^l)``, then back through the batch statistics."""
    B = Y.shape[0]
    zs, acts, caches = forward_bn(weights, biases, gammas, activations, X, eps, masks=masks)
    value = sample_losses(zs[-1], acts[-1], Y, loss, activations[-1]).mean()
    L = len(weights)
    dWs, dbs, dgs = [None] * L, [None] * L, [None] * L
    delta = output_delta(zs[-1], acts[-1], Y, loss, activations[-1])
    for l in range(L - 1, -1, -1):
        if caches[l] is not None:
            xhat, inv_std = caches[l][0], caches[l][1]
            delta, dg, db = batchnorm_backward(delta, xhat, inv_std, gammas[l])
            dgs[l], dbs[l] = dg / B, db / B
        else:
            dbs[l] = delta.sum(axis=0) / B
        dWs[l] = acts[l].T @ delta / B
        if l > 0:
            mask = None if masks is None else masks[l - 1]
            undropped = activate(zs[l - 1], activations[l - 1])
            delta = delta @ weights[l].T
            if mask is not None:
                delta = delta * mask
            delta = delta * activation_derivative(zs[l - 1], undropped, activations[l - 1])
    return value, dWs, dbs, dgs


def batch_masks(seed, epoch, step, sizes, dropout, dtype=np.float64, rows=None):
    """The dropout masks of one batch as the kernels draw them (``kernels/rng.py``):
    for hidden layer l with rate p, 1/(1 − p) where ``rng.keep_mask(seed, epoch, step, l,
    ...)`` keeps the unit, else 0; None for a layer without dropout."""
    from .kernels import rng
    masks = []
    for l, p in enumerate(dropout):
        if p == 0:
            masks.append(None)
            continue
        keep = 1 - p
        kept = rng.keep_mask(seed, epoch, step, l, rows, sizes[l + 1], keep)
        masks.append(np.where(kept, 1.0 / keep, 0.0).astype(dtype))  # 1/keep rounded once, as the kernels
    return masks


def train_epoch_modes(weights, biases, gammas, activations, X, Y, perm, batch_size, loss, optimizer, state,
                      lr, *, dropout=None, seed=0, epoch=0, running=None, momentum_bn=0.9, eps_bn=1e-5,
                      l1=0.0, l2=0.0, clip_norm=None, clip_value=None, **opt_hyper):
    """:func:`train_epoch` with batch normalization (``gammas``; ``running`` a list of
    [mean, var] per layer or None, updated per batch: r ← m r + (1 − m)·batch value, the
    variance unbiased) and dropout (rates ``dropout`` per hidden layer, masks from
    :func:`batch_masks` with the 1-based step count). Parameters per layer in the
    optimizer: W, b (β), γ. Returns ``(mean_loss, correct)``."""
    n = X.shape[0]
    sizes = [weights[0].shape[0]] + [W.shape[1] for W in weights]
    total, correct = 0.0, 0
    bn = [l for l, g in enumerate(gammas) if g is not None]
    params = [p for W, b, g in zip(weights, biases, gammas) for p in (W, b, *([] if g is None else [g]))]
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        Xb, Yb = X[idx], Y[idx]
        rows = len(idx)
        state["t"] += 1
        masks = (None if dropout is None
                 else batch_masks(seed, epoch, state["t"], sizes, dropout, X.dtype, rows))
        zs, acts, caches = forward_bn(weights, biases, gammas, activations, Xb, eps_bn, masks=masks)
        batch_loss = sample_losses(zs[-1], acts[-1], Yb, loss, activations[-1]).mean()
        total += rows * (batch_loss + penalty(weights, l1, l2))
        correct += correct_count(acts[-1], Yb, activations[-1])
        for l in bn:
            mean, var = caches[l][2], caches[l][3]
            unbiased = var * rows / (rows - 1) if rows > 1 else var
            running[l][0] = momentum_bn * running[l][0] + (1 - momentum_bn) * mean
            running[l][1] = momentum_bn * running[l][1] + (1 - momentum_bn) * unbiased
        _, dWs, dbs, dgs = gradients_bn(weights, biases, gammas, activations, Xb, Yb, loss, eps_bn, masks)
        dWs = [dW + regularisation_gradient(W, l1, l2) for dW, W in zip(dWs, weights)]
        grads = [g for dW, db, dg in zip(dWs, dbs, dgs) for g in (dW, db, *([] if dg is None else [dg]))]
        optimizer_step(optimizer, params, clip(grads, clip_norm, clip_value), state, lr, state["t"],
                       **opt_hyper)
    return total / n, correct


# --- regularisation and clipping ------------------------------------------------


def penalty(weights, l1, l2):
    """l1 Σ|W| + (l2/2) Σ W² over all weight matrices."""
    return sum(l1 * np.abs(W).sum() + 0.5 * l2 * (W * W).sum() for W in weights)


def regularisation_gradient(W, l1, l2):
    return l1 * np.sign(W) + l2 * W


def clip(grads, clip_norm=None, clip_value=None):
    """Scale all gradients so that their global L2 norm is at most ``clip_norm``,
    then clamp each element to [-clip_value, clip_value]."""
    if clip_norm:
        norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
        if norm > clip_norm:
            grads = [g * (clip_norm / norm) for g in grads]
    if clip_value:
        grads = [np.clip(g, -clip_value, clip_value) for g in grads]
    return grads


# --- optimizers -------------------------------------------------------------------


def optimizer_step(name, params, grads, state, lr, t, momentum=0.9, beta2=0.999, eps=1e-8):
    """One optimizer step, in place, on matching lists ``params`` and ``grads``.

    ``state`` holds two lists of arrays shaped like params (``s1``, ``s2``);
    ``t`` is the 1-based step count (Adam's bias correction).

    * sgd:       θ ← θ − η g
    * momentum:  v ← μ v − η g;  θ ← θ + v
    * nesterov:  v ← μ v − η g;  θ ← θ + μ v − η g
    * rmsprop:   s ← ρ s + (1 − ρ) g²;  θ ← θ − η g / (√s + ε)
    * adam:      m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;
                 θ ← θ − η m̂ / (√v̂ + ε), m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t)
    """
    for i, (p, g) in enumerate(zip(params, grads)):
        s1, s2 = state["s1"][i], state["s2"][i]
        if name == "sgd":
            p -= lr * g
        elif name == "momentum":
            s1 *= momentum
            s1 -= lr * g
            p += s1
        elif name == "nesterov":
            s1 *= momentum
            s1 -= lr * g
            p += momentum * s1 - lr * g
        elif name == "rmsprop":
            s1[...] = momentum * s1 + (1 - momentum) * g * g
            p -= lr * g / (np.sqrt(s1) + eps)
        elif name == "adam":
            s1[...] = momentum * s1 + (1 - momentum) * g
            s2[...] = beta2 * s2 + (1 - beta2) * g * g
            m_hat = s1 / (1 - momentum ** t)
            v_hat = s2 / (1 - beta2 ** t)
            p -= lr * m_hat / (np.sqrt(v_hat) + eps)
        else:
            raise ValueError(f"unknown optimizer {name!r}")


def new_optimizer_state(params):
    return {"s1": [np.zeros_like(p) for p in params], "s2": [np.zeros_like(p) for p in params], "t": 0}


# --- metrics ---------------------------------------------------------------------


def correct_count(a, Y, output):
    """Number of correctly classified rows (subset accuracy for several sigmoids)."""
    if output == "softmax":
        return int((a.argmax(axis=1) == Y.argmax(axis=1)).sum())
    if output == "sigmoid":
        return int(((a > 0.5) == (Y > 0.5)).all(axis=1).sum())
    return 0


# --- one training epoch -------------------------------------------------------------


def train_epoch(weights, biases, activations, X, Y, perm, batch_size, loss, optimizer,
                state, lr, l1=0.0, l2=0.0, clip_norm=None, clip_value=None, sample_weight=None,
                **opt_hyper):
    """Train one epoch over ``X[perm]`` in batches of ``batch_size`` (the last may be
    partial and is trained on). Updates weights, biases and state in place.
    ``sample_weight`` (one per row of X, gathered through ``perm``) weighs each batch's
    objective as the module docstring says; a batch of total weight 0 is skipped.

    Returns ``(mean_loss, correct)``: the mean over batches of the objective (data
    loss + penalty, before each batch's update), weighted by each batch's size (as
    scikit-learn's ``loss_curve_``; a skipped batch adds 0), and the number of correctly
    classified training samples seen during the epoch.
    """
    n = X.shape[0]
    total, correct = 0.0, 0
    params = [*weights, *biases]
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        Xb, Yb = X[idx], Y[idx]
        zs, acts = forward(weights, biases, activations, Xb)
        losses = sample_losses(zs[-1], acts[-1], Yb, loss, activations[-1])
        if sample_weight is None:
            wsum, mean_weight, row_scale = len(idx), 1.0, None
            batch_loss = losses.mean()
        else:
            wb = np.asarray(sample_weight, dtype=np.float64)[idx]
            wsum, mean_weight = wb.sum(), wb.mean()
            if wsum == 0:
                continue
            batch_loss, row_scale = (wb * losses).sum() / wsum, wb / mean_weight
        l1_batch, l2_batch = l1 / mean_weight, l2 / mean_weight  # the penalty per B rows
        total += len(idx) * (batch_loss + penalty(weights, l1_batch, l2_batch))
        correct += correct_count(acts[-1], Yb, activations[-1])
        dWs, dbs = backward(weights, activations, zs, acts, Yb, loss, row_scale=row_scale)
        dWs = [dW + regularisation_gradient(W, l1_batch, l2_batch) for dW, W in zip(dWs, weights)]
        grads = clip([*dWs, *dbs], clip_norm, clip_value)
        state["t"] += 1
        optimizer_step(optimizer, params, grads, state, lr, state["t"], **opt_hyper)
    return total / n, correct


def predict(weights, biases, activations, X):
    """Network output a^L for X."""
    return forward(weights, biases, activations, X)[1][-1]
