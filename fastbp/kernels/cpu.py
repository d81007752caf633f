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
sigmoid–binary-cross-entropy fused and computed stably from the logits, the half
Poisson deviance with the exp output) and the layer walk (:func:`forward_step`,
:func:`backward_step`: batchnorm and dropout
are per-layer options inside them; :func:`batch_pass` runs them over the layers or
over checkpoint segments) and the drivers :func:`train_batches` (gather each batch
through a permutation, forward, loss, backward, update — a range of an epoch's batches
in one compiled call), :func:`loss_and_gradient` and :func:`evaluate` (loss and/or
outputs). They take the bundles of ``bundles.py``; an optional mode is an argument
that is ``None`` when off, so its code is compiled only for the fits that use it. Only
the drivers are cached on disk and callable from Python; every other function here is
compiled only into them (:func:`compiled_only`; kernels with one call site are inlined
into it), which keeps a first fit's compile short.

Conventions: the 1/B of the batch mean is folded into δ^L (with sample weights
w_i/Σw, see :func:`output_delta`), so dW = a^{l-1ᵀ}δ^l and db = Σ δ^l need no
further scaling. Nothing here allocates per batch: every
buffer comes from the caller (see ``fastbp.cpu_training``). Functions are
compiled once per dtype (float32, float64); activations, losses and optimizers
are integer codes from ``fastbp.spec`` branched on outside the inner loops.
"""

import functools
import hashlib
import importlib.resources

import numpy as np
from numba import config, njit
from numba.core.registry import CPUDispatcher

from .. import spec
from . import rng
from .bundles import Hyper

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX, EXP = (
    spec.IDENTITY, spec.SIGMOID, spec.TANH, spec.RELU, spec.LEAKY_RELU, spec.SOFTMAX, spec.EXP)
MSE, BCE, CE, POISSON = spec.MSE, spec.BINARY_CROSS_ENTROPY, spec.CROSS_ENTROPY, spec.POISSON
OPT_SGD, OPT_MOMENTUM, OPT_NESTEROV, OPT_RMSPROP, OPT_ADAM = (
    spec.OPT_SGD, spec.OPT_MOMENTUM, spec.OPT_NESTEROV, spec.OPT_RMSPROP, spec.OPT_ADAM)
LEAKY_SLOPE = spec.LEAKY_SLOPE

_OPTIONS = {"nogil": True, "error_model": "numpy"}

def entry(**options):
    """Decorator of a driver, a function Python calls (:func:`train_batches`,
    :func:`evaluate`, :func:`loss_and_gradient`, ``cpu_small.train_batches``): compiled
    with its callees into one library, kept in Numba's on-disk cache under a stamp of
    every module it compiles in (:func:`stamp_with_sources`)."""
    def decorate(func):
        return stamp_with_sources(njit(cache=True, **_OPTIONS, **options)(func))
    return decorate


@functools.cache
def sources_digest():
    """SHA-256 over the CPU kernel modules (``fastbp/kernels/*.py`` but the CUDA ones) and
    ``fastbp/spec.py``: the code and constants a driver's machine code is made of. Read
    through the package's loader (a zip archive works too); None where the sources cannot be
    read (a frozen application), and the drivers then keep Numba's own stamp."""
    kernels = importlib.resources.files(__package__)
    try:
        names = sorted(entry.name for entry in kernels.iterdir()
                       if entry.name.endswith(".py") and not entry.name.startswith("cuda"))
        sources = [(name, kernels.joinpath(name).read_bytes()) for name in names]
        sources.append(("spec.py", importlib.resources.files(__package__.rpartition(".")[0])
                        .joinpath("spec.py").read_bytes()))
    except OSError:
        return None
    digest = hashlib.sha256()
    for name, source in sources:
        digest.update(name.encode() + b"\0" + source + b"\0")
    return digest.hexdigest()


def stamp_with_sources(dispatcher):
    """Numba stamps a cached function with its own file's contents only, but a driver has
    its callees from other modules compiled in (``sync``'s barrier, ``cpu``'s kernels in
    ``cpu_split``'s drivers, ``spec``'s codes): after an upgrade or a checkout that changed
    only those, Numba would load the stale machine code. The stamp gets
    :func:`sources_digest` added, so a change in any of them recompiles. (A private
    attribute of Numba's cache: where it is missing the default stamp stays.)"""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    digest = sources_digest()
    if cache_file is not None and hasattr(cache_file, "_source_stamp") and digest is not None:
        cache_file._source_stamp = (cache_file._source_stamp, digest)
    return dispatcher


_entry = entry()


class CompiledOnly(CPUDispatcher):
    """A kernel called only from compiled code: Numba compiles it into its callers'
    libraries without the CPython and C-function wrappers a Python call would need, and
    does not cache it on its own (the cached drivers hold it). A first fit on an empty
    cache compiles less that way (``benchmarks/README.md``, section 10). A call from
    Python raises instead of running code that has no entry point for it; tests and
    prototypes use :func:`python_callable`."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__qualname__} is compiled only into the kernels that call it; "
                        "call it from Python through fastbp.kernels.cpu.python_callable(kernel)")


def compiled_only(**options):
    """Decorator: a :class:`CompiledOnly` kernel with the Numba ``options``
    (``nogil``/``error_model`` by default; under ``NUMBA_DISABLE_JIT`` the plain function)."""
    def wrap(func):
        if config.DISABLE_JIT:
            return func
        targetoptions = {"nopython": True, **_OPTIONS, **options, "no_cpython_wrapper": True,
                         "no_cfunc_wrapper": True}
        return CompiledOnly(func, locals={}, targetoptions=targetoptions)
    return wrap


@functools.cache
def python_callable(kernel):
    """A copy of a :class:`CompiledOnly` kernel that Python can call (compiled with the same
    options, not cached on disk): for tests and prototypes. Anything else is returned as is."""
    if not isinstance(kernel, CompiledOnly):
        return kernel
    options = {key: value for key, value in kernel.targetoptions.items()
               if key not in ("no_cpython_wrapper", "no_cfunc_wrapper", "nopython")}
    return njit(**options)(kernel.py_func)


_jit = compiled_only()
#: a kernel with one call site, compiled into it (Numba IR inlining): one function less to compile
_jit_inline = compiled_only(inline="always")


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


@_jit_inline
def forward_layer(a_prev, weights, bias, code, z, a):
    """z = a_prev·W + b; a = f(z) (softmax along rows; exp only as an output)."""
    np.dot(a_prev, weights, z)
    forward_epilogue(z, bias, code, a)


@_jit
def forward_epilogue(z, bias, code, a):
    """In place z ← z + b, and a = f(z): the epilogue of the forward GEMM."""
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
    elif code == TANH or code == EXP:  # the code test is loop-invariant (LLVM unswitches it)
        for i in range(rows):
            for j in range(cols):
                v = z[i, j] + bias[j]
                z[i, j] = v
                a[i, j] = np.tanh(v) if code == TANH else np.exp(v)
    else:  # SOFTMAX
        for i in range(rows):
            softmax_row(z, bias, a, i)


@_jit
def softmax_row(z, bias, a, i):
    """Row i of the softmax epilogue: z ← z + b, a = exp(z − m)/s; returns the row's
    max m and s = Σ exp(z − m) (what the cross-entropy needs, see :func:`cross_entropy_row`)."""
    cols = z.shape[1]
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
    return m, s


# --- fused delta propagation --------------------------------------------------


@_jit_inline
def backprop_delta(delta, weights, z, a, code, delta_prev):
    """δ_prev = (δ·Wᵀ) ⊙ f'(z), f' evaluated from z and a = f(z)."""
    np.dot(delta, weights.T, delta_prev)
    delta_epilogue(z, a, code, delta_prev)


@_jit
def delta_epilogue(z, a, code, delta_prev):
    """In place δ_prev ← δ_prev ⊙ f'(z): the epilogue of the δ·Wᵀ GEMM."""
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


@_jit_inline
def weight_gradient(a_prev, delta, dweights, dbias):
    """dW = a_prevᵀ·δ and db = Σ_rows δ (δ already carries the 1/B)."""
    np.dot(a_prev.T, delta, dweights)
    bias_gradient(delta, dbias)


@_jit
def bias_gradient(delta, dbias):
    """db = Σ_rows δ."""
    rows, cols = delta.shape
    for j in range(cols):
        dbias[j] = 0
    for i in range(rows):
        for j in range(cols):
            dbias[j] += delta[i, j]


# --- loss and output delta ------------------------------------------------------


@_jit
def row_weight(row_weights, i):
    """Sample weight of batch row i (1.0 without weights: the products with it are then
    exact, so an unweighted fit keeps its bits)."""
    if row_weights is None:
        return 1.0
    return row_weights[i]


@_jit_inline
def output_delta(z, a, targets, out_code, loss_code, inv_batch, row_weights, delta):
    """Write δ^L (already divided by the batch size) and return the summed loss.

    Cross-entropy with softmax and binary cross-entropy with sigmoid use the
    logits z for a stable loss and δ = (p − y)/B; so does the half Poisson deviance
    a − y z + y log y − y with the exp output (a = e^z); MSE uses the activation's
    derivative (the full Jacobian for softmax). With ``row_weights`` (None: all 1)
    row i's loss and δ are multiplied by w_i, and ``inv_batch`` is 1/Σw.
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
            total = cross_entropy_row(z, a, targets, i, m, s, row_weight(row_weights, i), inv_batch, delta, total)
    elif loss_code == BCE or loss_code == POISSON:  # δ = (a − y)/B for both
        for i in range(rows):
            w = row_weight(row_weights, i)
            scale = w * inv_batch
            for j in range(cols):
                v, y = z[i, j], targets[i, j]
                if loss_code == BCE:
                    total += w * (max(v, 0) - v * y + np.log1p(np.exp(-abs(v))))
                else:
                    total += w * (a[i, j] - y * v - y)
                    if y > 0:
                        total += w * (y * np.log(y))
                delta[i, j] = (a[i, j] - y) * scale
    else:  # MSE
        for i in range(rows):
            w = row_weight(row_weights, i)
            scale = 2 * (w * inv_batch) / cols
            dot = 0.0
            for j in range(cols):
                e = a[i, j] - targets[i, j]
                total += w * (e * e / cols)
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
def cross_entropy_row(z, a, targets, i, m, s, w, inv_batch, delta, total):
    """Row i of softmax–cross-entropy from the row's max m and s = Σ exp(z − m):
    δ = w (a − y)·inv_batch; returns ``total`` − w Σ y (z − m − log s)."""
    scale = w * inv_batch
    log_s = np.log(s)
    for j in range(z.shape[1]):
        total -= w * (targets[i, j] * (z[i, j] - m - log_s))
        delta[i, j] = (a[i, j] - targets[i, j]) * scale
    return total


@_jit_inline
def softmax_cross_entropy(z, bias, a, targets, inv_batch, row_weights, delta):
    """The softmax epilogue of the output layer and :func:`output_delta` for
    cross-entropy in one pass per row, each exp computed once: the same bits as the
    two in turn; returns the summed loss."""
    total = 0.0
    for i in range(z.shape[0]):
        m, s = softmax_row(z, bias, a, i)
        total = cross_entropy_row(z, a, targets, i, m, s, row_weight(row_weights, i), inv_batch, delta, total)
    return total


@_jit_inline
def correct_count(a, targets, out_code):
    """Correctly classified rows: argmax for softmax (the first of equal maxima), all units
    at 0.5 for sigmoid. The argmax keeps the best value so far and picks with selects, not
    branches: on a training batch's outputs the branches were mispredicted often enough
    that counting 32 rows × 10 took ~1.4 µs in the split path's step (~0.3 µs now)."""
    rows, cols = a.shape
    correct = 0
    if out_code == SOFTMAX:
        for i in range(rows):
            best_a, best_t = 0, 0
            top_a, top_t = a[i, 0], targets[i, 0]
            for j in range(1, cols):
                value, target = a[i, j], targets[i, j]
                higher = value > top_a
                top_a = value if higher else top_a
                best_a = j if higher else best_a
                higher = target > top_t
                top_t = target if higher else top_t
                best_t = j if higher else best_t
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
_jit_fast = compiled_only(fastmath={"reassoc"})


@_jit_fast
def _regularised_sq_norm(theta, grad, l1, l2):
    """Σ (grad + l1 sign(w) + l2 w)² over equal-length slices."""
    total = 0.0
    for i in range(theta.shape[0]):
        w = theta[i]
        g = grad[i] + l1 * np.sign(w) + l2 * w
        total += g * g
    return total


@_jit_inline
def _clip_scale(theta, grad, layout, hyper):
    """Factor that brings the global norm of the regularised gradient to clip_norm."""
    clip_norm = hyper.clip_norm
    if clip_norm <= 0:
        return 1.0
    cast = theta.dtype.type
    zero, l1, l2 = cast(0), cast(hyper.l1), cast(hyper.l2)
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
    cast = theta.dtype.type
    zero, half = cast(0), cast(0.5)
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
    lr, mu, beta2, eps, clip_value, adam_terms = consts
    cast = theta.dtype.type
    zero, one = cast(0), cast(1)
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
        lr64, eps64, corr1, corr2 = adam_terms  # the scales formed in float64, then cast
        step_scale, eps_scaled = cast(lr64 * np.sqrt(corr2) / corr1), cast(eps64 * np.sqrt(corr2))
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


@_jit_inline
def step_constants(theta, hyper, t):
    """(lr, μ/ρ/β1, β2, ε, clip_value) as scalars of the parameter dtype, so that a
    float32 fit's update is float32 arithmetic (8 lanes wide; one float64 constant
    would promote it), then (lr, ε, 1 − β1^t, 1 − β2^t) in float64, from which
    :func:`_update_range` forms Adam's two scales; clip_value is +inf when off."""
    cast = theta.dtype.type
    clip_value = hyper.clip_value if hyper.clip_value > 0 else np.inf
    return (cast(hyper.lr), cast(hyper.momentum), cast(hyper.beta2), cast(hyper.eps), cast(clip_value),
            (hyper.lr, hyper.eps, 1 - hyper.momentum ** t, 1 - hyper.beta2 ** t))


@_jit_inline
def _record(diagnostics, l, grad_sq, step_sq, weight_sq):
    diagnostics[l, 0] += np.sqrt(grad_sq)
    diagnostics[l, 1] += np.sqrt(step_sq / weight_sq) if weight_sq > 0 else 0.0


@_jit_inline
def update_params(net, opt, hyper):
    """One optimizer step at step count ``opt.step[0]`` (1-based) over ``net.update_layout``,
    in place; returns the penalty l1 Σ|W| + (l2/2) Σ W² of the weights before the step.

    Per element: g = (grad + l1 sign(w) + l2 w) · clip_scale, clamped to ±clip_value,
    then the optimizer rule of ``reference.optimizer_step``.

    Gradient diagnostics come from the same pass: ``diagnostics[l, 0]`` accumulates
    the L2 norm of layer l's regularised gradient (weights and bias, before
    clipping) and ``diagnostics[l, 1]`` the ratio ‖ΔW‖ / ‖W‖ of its weight update.
    """
    theta, grad, state1, state2, layout = net.theta, opt.grad, opt.state1, opt.state2, net.update_layout
    opt_code, diagnostics = opt.code, opt.diagnostics
    consts = step_constants(theta, hyper, opt.step[0])
    cast = theta.dtype.type
    zero, l1, l2 = cast(0), cast(hyper.l1), cast(hyper.l2)
    scale = cast(_clip_scale(theta, grad, layout, hyper))
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


# --- batch normalization -------------------------------------------------------------------
#
# A hidden layer l with BN computes u = a^{l-1}·W (its bias slot is the shift β),
# x̂ = (u − μ)/√(σ² + ε), y = γ ⊙ x̂ + β and a = f(y). ``zs`` caches y (so
# ``backprop_delta`` gives dL/dy unchanged), ``xhat`` caches x̂, ``stats`` holds μ and
# 1/√(σ² + ε) per unit (see ``bundles.BatchNorm``), ``running`` the running mean and
# variance in the same arrangement (mean ← m·mean + (1 − m)·μ,
# var ← m·var + (1 − m)·σ²·B/(B − 1), in mode 2 only).


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
def bn_statistics(u, mean, inv_std, running_mean, running_var, eps, momentum, mode):
    """μ and 1/√(σ²+ε) per column of u into ``mean``/``inv_std``: the running statistics
    in mode 0, the batch's in modes 1 and 2 (mode 2 also updates the running ones)."""
    rows, cols = u.shape
    if mode == 0:
        for j in range(cols):
            mean[j] = running_mean[j]
            inv_std[j] = 1.0 / np.sqrt(running_var[j] + eps)
        return
    mean[:] = 0.0
    for i in range(rows):
        for j in range(cols):
            mean[j] += u[i, j]
    for j in range(cols):
        mean[j] /= rows
        inv_std[j] = 0.0  # Σ (u − μ)² first
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


@_jit
def bn_forward(net, batchnorm, l, u, xhat, mode, stat):
    """In place: u (= a·W of layer l) becomes y = γ x̂ + β; x̂ into ``xhat``; the layer's
    statistics (units from ``stat`` on) in ``batchnorm.stats`` per ``mode``."""
    rows, cols = u.shape
    total = batchnorm.stats.shape[0] // 2
    g_off = batchnorm.gamma_offsets[l]
    gamma, beta = net.theta[g_off:g_off + cols], bias_view(net.theta, net.layout, l)
    mean, inv_std = batchnorm.stats[stat:stat + cols], batchnorm.stats[total + stat:total + stat + cols]
    running = batchnorm.running
    bn_statistics(u, mean, inv_std, running[stat:stat + cols], running[total + stat:total + stat + cols],
                  batchnorm.eps, batchnorm.momentum, mode)
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
            delta[i, j] = inv_std[j] * (g * delta[i, j] - g * dbeta[j] / rows
                                        - xhat[i, j] * g * dgamma[j] / rows)


# --- dropout ----------------------------------------------------------------------------------


stream_key = _jit(rng.stream_key)
keep_unit = _jit(rng.keep_unit)
keep_threshold = _jit(rng.keep_threshold)


@_jit
def draw_mask(mask, keep, key, first_col):
    """mask[i, j] = 1/keep where ``rng.keep_unit`` keeps unit (i, first_col + j) of the
    batch's layer ``key`` (probability keep), else 0 (inverted dropout). ``first_col``: 0
    for a whole layer, the first unit a thread owns on the split path (``cpu_split``)."""
    inv = 1.0 / keep
    threshold = keep_threshold(keep)
    rows, cols = mask.shape
    for i in range(rows):
        for j in range(cols):
            mask[i, j] = inv if keep_unit(key, i, first_col + j, threshold) else 0.0


@_jit
def apply_mask(a, mask, out):
    rows, cols = a.shape
    for i in range(rows):
        for j in range(cols):
            out[i, j] = a[i, j] * mask[i, j]


# --- the layer walk: one forward step and one backward step per layer ---------------------------
#
# Per hidden layer the order is affine → batchnorm (if on) → activation → dropout (if
# on). Checkpointing runs the same two steps over segments of layers. Layer l's z and a
# sit in ``work.zs``/``work.acts`` at ``work.offsets[l, 0]``.


@_jit
def forward_step(net, work, l, a_in, dropout, batchnorm, step, replay):
    """Layer l on the rows of ``a_in``: z and a = f(z) (with BN, z is y = γ x̂ + β) into
    the workspace; returns what layer l + 1 reads (the dropped activations with dropout,
    masks of optimizer step ``step``). ``replay`` (checkpointing's recomputation) reuses
    the masks drawn and leaves the running statistics alone."""
    layout = net.layout
    rows, cols = a_in.shape[0], layout[l, 1]
    offset = work.offsets[l, 0]
    z = rows_view(work.zs, offset, rows, cols)
    a = rows_view(work.acts, offset, rows, cols)
    weights = weights_view(net.theta, layout, l)
    normalised = False
    if batchnorm is not None:
        if batchnorm.gamma_offsets[l] >= 0:
            np.dot(a_in, weights, z)
            mode = min(batchnorm.mode, 1) if replay else batchnorm.mode
            bn_forward(net, batchnorm, l, z, rows_view(batchnorm.xhat, offset, rows, cols), mode,
                       work.offsets[l, 2])
            activate_only(z, net.codes[l], a)
            normalised = True
    if not normalised:
        forward_layer(a_in, weights, bias_view(net.theta, layout, l), net.codes[l], z, a)
    if dropout is not None:
        if l < layout.shape[0] - 1 and dropout.keep[l] < 1:
            mask = rows_view(dropout.masks, work.offsets[l, 1], rows, cols)
            if not replay:
                draw_mask(mask, dropout.keep[l], stream_key(dropout.seed, dropout.epoch, step, l), np.int64(0))
            dropped = rows_view(dropout.dacts, work.offsets[l, 1], rows, cols)
            apply_mask(a, mask, dropped)
            return dropped
    return a


@_jit
def backward_step(net, opt, work, l, prev, delta, dropout, batchnorm):
    """Layer l's gradient (dW, db; with BN dγ, dβ) into ``opt.grad`` and
    δ^{l-1} = (δ^l·W^{lᵀ}) ⊙ f'(z^{l-1}) (⊙ mask^{l-1}).
    ``prev`` is (z^{l-1}, a^{l-1}) undropped ((x, x) for l = 0). Returns δ^{l-1}, in the
    other half of the ping-pong ``work.deltas``."""
    layout = net.layout
    rows, cols, fan_in = delta.shape[0], layout[l, 1], layout[l, 0]
    z_prev, a_prev = prev
    a_in = a_prev
    mask_offset = -1
    if dropout is not None:
        if l > 0 and dropout.keep[l - 1] < 1:
            mask_offset = work.offsets[l - 1, 1]
            a_in = rows_view(dropout.dacts, mask_offset, rows, fan_in)
    bias_grad = bias_view(opt.grad, layout, l)
    if batchnorm is not None:
        g_off = batchnorm.gamma_offsets[l]
        if g_off >= 0:
            total, stat = batchnorm.stats.shape[0] // 2, work.offsets[l, 2]
            bn_backward(delta, rows_view(batchnorm.xhat, work.offsets[l, 0], rows, cols),
                        net.theta[g_off:g_off + cols], batchnorm.stats[total + stat:total + stat + cols],
                        opt.grad[g_off:g_off + cols], bias_grad)
            bias_grad = batchnorm.scratch[:cols]  # Σ du: meaningless where the bias slot holds β
    weight_gradient(a_in, delta, weights_view(opt.grad, layout, l), bias_grad)
    delta_prev = delta
    if l > 0:
        half = work.deltas.shape[0] // 2
        delta_prev = rows_view(work.deltas, ((layout.shape[0] - l) % 2) * half, rows, fan_in)
        backprop_delta(delta, weights_view(net.theta, layout, l), z_prev, a_prev, net.codes[l - 1],
                       delta_prev)
        if dropout is not None:
            if mask_offset >= 0:
                apply_mask(delta_prev, rows_view(dropout.masks, mask_offset, rows, fan_in), delta_prev)
    return delta_prev


@_jit
def cached_layer(work, l, rows, cols):
    """(z^l, a^l) of the current batch from the workspace."""
    offset = work.offsets[l, 0]
    return rows_view(work.zs, offset, rows, cols), rows_view(work.acts, offset, rows, cols)


@_jit
def segment_input(x, net, work, checkpoint, dropout, start):
    """What layer ``start`` reads: x, or the kept (dropped, with dropout) activations of layer start − 1."""
    if start == 0:
        return x
    rows, cols = x.shape[0], net.layout[start - 1, 1]
    if dropout is not None:
        if dropout.keep[start - 1] < 1:
            return rows_view(dropout.dacts, work.offsets[start - 1, 1], rows, cols)
    return rows_view(checkpoint.kept_a, checkpoint.kept_offsets[start - 1], rows, cols)


@_jit
def output_layer(net, work, a_in, y, row_weights, delta_scale):
    """The output layer on ``a_in`` (it has neither batchnorm nor dropout): z^L = a_in·W^L
    into the workspace, then :func:`output_loss` with its epilogue (fused with the loss
    for softmax–cross-entropy: each exp once, the same bits as the epilogue and
    :func:`output_delta` in turn)."""
    layout = net.layout
    last = layout.shape[0] - 1
    z, _ = cached_layer(work, last, a_in.shape[0], layout[last, 1])
    np.dot(a_in, weights_view(net.theta, layout, last), z)
    return output_loss(net, work, y, row_weights, delta_scale, bias_view(net.theta, layout, last))


@_jit
def output_loss(net, work, y, row_weights, delta_scale, bias):
    """(loss sum, correct count, δ^L) from the output layer cached in the workspace;
    δ^L (scaled by ``delta_scale``, 1/B — 1/Σw with weights — in training) at the start
    of ``work.deltas``; with ``row_weights`` (None: all 1) the loss sum is Σ w_i ℓ_i.
    z is the bare product a·W: the output layer's epilogue (bias ``bias``) runs here
    first (fused with the loss for softmax–cross-entropy)."""
    n_layers = net.layout.shape[0]
    rows, k = y.shape[0], net.layout[n_layers - 1, 1]
    z_out, a_out = cached_layer(work, n_layers - 1, rows, k)
    delta = rows_view(work.deltas, np.int64(0), rows, k)  # int64, not Literal[int](0): one specialisation
    out_code = net.codes[n_layers - 1]
    if out_code == SOFTMAX and net.loss_code == CE:
        loss = softmax_cross_entropy(z_out, bias, a_out, y, delta_scale, row_weights, delta)
    else:
        forward_epilogue(z_out, bias, out_code, a_out)
        loss = output_delta(z_out, a_out, y, out_code, net.loss_code, delta_scale, row_weights, delta)
    return loss, correct_count(a_out, y, out_code), delta


# --- sample weights: helpers that take the optional array as an argument, so that
# Numba prunes them to nothing when it is None (a plain fit compiles no weight code) ---


@_jit
def leading_rows(row_weights, start, rows):
    """row_weights[start:start + rows], or None without weights."""
    if row_weights is None:
        return None
    return row_weights[start:start + rows]


@_jit
def weight_total(row_weights, rows):
    """A batch's normaliser: Σ of its first ``rows`` weights (``rows`` without weights)."""
    if row_weights is None:
        return float(rows)
    total = 0.0
    for r in range(rows):
        total += row_weights[r]
    return total


@_jit
def gather_weights(weights, perm, start, rows, out):
    """out[r] = weights[perm[start + r]] for r < rows (nothing without weights)."""
    if weights is None:
        return
    for r in range(rows):
        out[r] = weights[perm[start + r]]


@_jit
def batch_hyper(hyper, weights, scale):
    """``hyper`` for one batch: with weights L1/L2 times ``scale`` = B/Σw, the penalty
    per B rows of ``reference.train_epoch`` (``hyper`` itself without weights)."""
    if weights is None:
        return hyper
    return Hyper(hyper.lr, hyper.momentum, hyper.beta2, hyper.eps, hyper.l1 * scale, hyper.l2 * scale,
                 hyper.clip_norm, hyper.clip_value)


@_jit
def batch_pass(net, opt, work, x, y, dropout, batchnorm, checkpoint):
    """Forward, loss and backward of one batch: the batch-mean gradient into ``opt.grad``.
    With ``checkpoint`` only the segment boundaries are kept and each segment is
    recomputed (the same calls on the same inputs: the same bits) before its backward
    pass. Returns (loss sum, correct count)."""
    n_layers = net.layout.shape[0]
    last = n_layers - 1
    rows = x.shape[0]
    if checkpoint is None:
        a = x
        for l in range(last):
            a = forward_step(net, work, l, a, dropout, batchnorm, opt.step[0], False)
    else:
        n_seg = checkpoint.starts.shape[0] - 1
        for g in range(n_seg):
            start, stop = checkpoint.starts[g], checkpoint.starts[g + 1]
            a = segment_input(x, net, work, checkpoint, dropout, start)
            for l in range(start, min(stop, last)):
                a = forward_step(net, work, l, a, dropout, batchnorm, opt.step[0], False)
            if g < n_seg - 1:
                cols, kept = net.layout[stop - 1, 1], checkpoint.kept_offsets[stop - 1]
                z, a_kept = cached_layer(work, stop - 1, rows, cols)
                rows_view(checkpoint.kept_z, kept, rows, cols)[...] = z
                rows_view(checkpoint.kept_a, kept, rows, cols)[...] = a_kept
    loss, correct, delta = output_layer(net, work, a, y, leading_rows(work.row_weights, np.int64(0), rows),
                                        1.0 / weight_total(work.row_weights, rows))
    if checkpoint is None:
        for l in range(n_layers - 1, -1, -1):
            prev = (x, x) if l == 0 else cached_layer(work, l - 1, rows, net.layout[l, 0])
            delta = backward_step(net, opt, work, l, prev, delta, dropout, batchnorm)
    else:
        n_seg = checkpoint.starts.shape[0] - 1
        for g in range(n_seg - 1, -1, -1):
            start, stop = checkpoint.starts[g], checkpoint.starts[g + 1]
            if g < n_seg - 1:  # the last segment is still in the workspace from the forward pass
                a = segment_input(x, net, work, checkpoint, dropout, start)
                for l in range(start, stop):
                    a = forward_step(net, work, l, a, dropout, batchnorm, opt.step[0], True)
            for l in range(stop - 1, start - 1, -1):
                if l == 0:
                    prev = (x, x)
                elif l > start:
                    prev = cached_layer(work, l - 1, rows, net.layout[l, 0])
                else:
                    kept, fan_in = checkpoint.kept_offsets[l - 1], net.layout[l, 0]
                    prev = (rows_view(checkpoint.kept_z, kept, rows, fan_in),
                            rows_view(checkpoint.kept_a, kept, rows, fan_in))
                delta = backward_step(net, opt, work, l, prev, delta, dropout, batchnorm)
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


@_entry
def train_batches(net, opt, hyper, work, data, batches, dropout, batchnorm, checkpoint):
    """Batches ``first``..``stop``-1 (``batches`` = (first, stop)) of the epoch's permutation
    (batches of ``work.bmax`` rows, the last may be partial), each gathered, passed forward
    and backward and applied by the optimizer, in one compiled call; the caller splits an
    epoch into such ranges to return to Python regularly. ``work.sums[0]`` accumulates Σ_batches
    b·(loss_b + penalty_b) and ``work.counts[0]`` the correct count over the epoch (both
    reset when ``first`` is 0). With ``data.weights`` a batch's objective is
    (Σ w_i ℓ_i + B·penalty)/Σw (``reference.train_epoch``); a batch whose weights sum
    to 0 has none and is skipped (no step, no loss, no count).
    """
    n = data.perm.shape[0]
    bmax = work.bmax
    first, stop = batches
    if first == 0:
        work.sums[0] = 0.0
        work.counts[0] = 0
    for b in range(first, stop):
        start = b * bmax
        rows = min(bmax, n - start)
        gather_weights(data.weights, data.perm, start, rows, work.row_weights)
        weight_sum = weight_total(work.row_weights, rows)
        if weight_sum == 0:
            continue
        scale = rows / weight_sum  # B/Σw: exactly 1 without weights
        step_hyper = batch_hyper(hyper, data.weights, scale)
        x = work.xb[:rows]
        y = work.yb[:rows]
        gather_rows(data.X, data.perm, start, rows, x)
        gather_rows(data.Y, data.perm, start, rows, y)
        opt.step[0] += 1
        loss, hits = batch_pass(net, opt, work, x, y, dropout, batchnorm, checkpoint)
        penalty = update_params(net, opt, step_hyper)
        work.sums[0] += loss * scale + rows * penalty
        work.counts[0] += hits


@_entry
def loss_and_gradient(net, opt, work, X, Y, batchnorm):
    """Full-batch summed data loss and its batch-mean gradient into ``opt.grad`` (batchnorm
    with the batch statistics; mode 1 leaves the running ones alone); with
    ``work.row_weights`` (the rows' weights) Σ w_i ℓ_i and the weighted mean."""
    loss, _ = batch_pass(net, opt, work, X, Y, None, batchnorm, None)
    return loss


@_entry
def evaluate(net, work, X, Y, batchnorm, out, weights):
    """Over the rows of X in chunks of ``work.bmax``, no dropout: the summed data loss
    (Σ w_i ℓ_i with ``weights``, unless None) and correct count against Y (unless Y is
    None) and the outputs into ``out`` (unless None)."""
    n = X.shape[0]
    n_layers = net.layout.shape[0]
    total = 0.0
    correct = 0
    last = n_layers - 1
    for start in range(0, n, work.bmax):
        rows = min(work.bmax, n - start)
        a = X[start:start + rows]
        for l in range(last):
            a = forward_step(net, work, l, a, None, batchnorm, np.int64(0), False)  # as batch_pass types it
        if Y is not None:
            loss, hits, _ = output_layer(net, work, a, Y[start:start + rows], leading_rows(weights, start, rows), 1.0)
            total += loss
            correct += hits
        else:
            a = forward_step(net, work, last, a, None, batchnorm, np.int64(0), False)
        if out is not None:
            out[start:start + rows] = cached_layer(work, last, rows, net.layout[last, 1])[1]
    return total, correct
