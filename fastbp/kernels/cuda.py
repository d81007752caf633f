"""CUDA kernels (Numba ``@cuda.jit``) mirroring ``kernels/cpu.py`` name for name.

Kernels (one launch each):

* :func:`forward_layer` — z = a·W + b and a = f(z): a shared-memory tiled,
  register-blocked GEMM whose epilogue adds the bias and applies the activation (softmax needs a whole row, so
  a softmax output layer takes one more launch, :func:`softmax_rows`);
* :func:`backprop_delta` — δ^{l-1} = (δ^l·W^{lᵀ}) ⊙ f'(z^{l-1}): tiled GEMM against
  the transposed weights with the derivative in the epilogue;
* :func:`weight_gradient` — dW = a^{l-1ᵀ}·δ^l (tiled over the batch) with db = Σ δ^l
  reduced by the same blocks that own the first weight rows;
* :func:`output_delta` — loss, δ^L (1/B folded in, as on the CPU) and the
  :func:`correct_count` of each row, one thread per row; the loss and hit counts are
  reduced per block in shared memory and added atomically to per-epoch totals that
  stay on the device;
* :func:`clip_partials` / :func:`finish_update` / :func:`update_params` — the global
  norm of the regularised gradient and the L1/L2 penalty (grid-stride reduction,
  then one block), then one elementwise pass doing L1/L2, clipping by norm and by
  value and the SGD / momentum / Nesterov / RMSprop / Adam rule;
* :func:`gather_rows` — a batch gathered through the device permutation;
* :func:`count_nonfinite` — the per-epoch divergence check without copying θ back.

The host-side functions of the same names as the CPU drivers (:func:`forward_pass`,
:func:`backward_pass`, :func:`train_epoch`, :func:`loss_and_gradient`,
:func:`predict`, :func:`evaluate`) work on device buffers; ``fastbp.cuda_training``
wraps them for ``MLP.fit/forward(..., device="cuda")``.

Why this is fast on a real GPU (H100: 132 SMs, 228 KB shared memory and 64K
registers per SM; geometry from ``cuda_config``, defaults below):

* register-blocked GEMMs — a block of 16 × 16 threads computes a 64 × 64 output tile,
  each thread a 4 × 4 micro-tile held in registers; per reduction step of 16 the
  block stages a 64 × 16 and a 16 × 64 operand tile in shared memory (8.5 KB in
  float32, 17 KB in float64) and every thread does 16 FMAs per 8 shared loads, 4× the
  arithmetic intensity of one output per thread. Where that grid would be too small
  to fill the GPU (< ``min_blocks`` = 2 per SM: narrow layers, small batches) the
  narrow variant runs instead — the same code with 16 × 16 tiles and one output per
  thread, 16× the blocks;
* coalesced global memory traffic — every array is row-major with samples as rows,
  and consecutive threads always walk the contiguous (column) index of whatever a
  warp loads or stores: a, W, z, δ and dW are read and written along rows; the
  transposed operands (Wᵀ in backprop_delta, a_prevᵀ in weight_gradient) are read
  row-major and transposed on their way into shared memory, whose tiles are padded
  by one column so those column writes are free of bank conflicts;
* fused epilogues — bias + activation, and the activation derivative, are applied
  to the accumulators before the single store: z and a (or δ) make one trip to
  global memory; db is summed from the δ tiles weight_gradient loads anyway;
* few launches and no host round trips — one launch per layer per phase
  (forward, delta, gradient), one for the loss, one (or three with clipping /
  L1 / L2) for the update; X and Y are copied to the device once per fit, the
  permutation once per epoch, and θ, the gradient and the optimizer state never
  leave the device during a fit; the epoch's loss, hit count and divergence flag
  are reduced on the device and read back once per epoch;
* no allocation while training — every buffer and every per-layer view is made once
  per fit; the per-batch host work is only the launch sequence (the batch start and
  the step count are scalar kernel arguments).

None of this has been timed on a GPU yet (none was available while writing it):
the evidence is the simulator parity tests and the ptxas report (no spills, no local
stack; occupancy 25 % for the register-blocked GEMMs, which trade occupancy for
registers as SGEMMs do, 75–100 % for the narrow variants).

Future work: measure and tune (tile / micro / depth, larger micro-tiles with
vectorised shared loads), split-K for weight_gradient when the batch is long and the
layer small, a warp per row instead of a thread per row in softmax_rows and
output_delta for wide outputs (hundreds of classes: today each thread walks its row
with a stride, uncoalesced), tensor-core (TF32 / BF16) GEMMs, CUDA-graph capture of one batch to
remove the per-launch Python overhead of numba-cuda, and — for narrow nets (widths ≤
128) — a fully fused kernel à la tiny-cuda-nn where one block keeps a tile of samples
in shared memory / registers through every layer of the forward and backward pass,
so activations never touch global memory.

Numerics: float32 networks compute in float32 (constants are cast with the dtype, so
no silent float64 promotion); the loss, penalty and norm sums accumulate in float64
as on the CPU. Atomic additions make the per-epoch loss sum order-dependent at the
level of float64 rounding.

PTX report per kernel (registers, shared memory, spills, H100 occupancy):
``python scripts/cuda_ptx_report.py``; the table for the default config is in
``benchmarks/CUDA.md``.
"""

import functools
import math
import types

import numba
import numpy as np
from numba import cuda

from .. import spec
from . import cuda_config

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX = (
    spec.IDENTITY, spec.SIGMOID, spec.TANH, spec.RELU, spec.LEAKY_RELU, spec.SOFTMAX)
MSE, BCE, CE = spec.MSE, spec.BINARY_CROSS_ENTROPY, spec.CROSS_ENTROPY
OPT_SGD, OPT_MOMENTUM, OPT_NESTEROV, OPT_RMSPROP, OPT_ADAM = (
    spec.OPT_SGD, spec.OPT_MOMENTUM, spec.OPT_NESTEROV, spec.OPT_RMSPROP, spec.OPT_ADAM)
H_LR, H_MOMENTUM, H_BETA2, H_EPS, H_L1, H_L2, H_CLIP_NORM, H_CLIP_VALUE = (
    spec.H_LR, spec.H_MOMENTUM, spec.H_BETA2, spec.H_EPS, spec.H_L1, spec.H_L2,
    spec.H_CLIP_NORM, spec.H_CLIP_VALUE)
LEAKY_SLOPE = spec.LEAKY_SLOPE

#: kernel names in launch order of a training step (the PTX report compiles these)
KERNEL_NAMES = ("gather_rows", "forward_layer", "softmax_rows", "output_delta", "weight_gradient",
                "backprop_delta", "clip_partials", "finish_update", "update_params", "count_nonfinite")


# --- kernel builds ------------------------------------------------------------------------


def build_kernels(dtype, cfg):
    """Python functions of every kernel for ``dtype`` with the sizes of ``cfg`` baked
    in (not yet ``cuda.jit``-ed, so ``compile_ptx`` can take them too), plus their
    device helpers. Returns a ``types.SimpleNamespace``."""
    DT = numba.float32 if np.dtype(dtype) == np.float32 else numba.float64
    F64, I64 = numba.float64, numba.int64
    T, M, D, BLOCK = cfg.tile, cfg.micro, cfg.depth, cfg.block
    S = T // M                 # threads per edge of a GEMM block
    NT = S * S                 # threads per GEMM block
    TP, DP = T + 1, D + 1      # padded shared-tile widths
    LOADS = -(-T * D // NT)    # shared-tile elements each GEMM thread loads per step
    device = cuda.jit(device=True)

    @device
    def activate(v, code):
        if code == RELU:
            return v if v > 0 else DT(0)
        if code == LEAKY_RELU:
            return v if v > 0 else DT(LEAKY_SLOPE) * v
        if code == SIGMOID:
            return DT(1) / (DT(1) + math.exp(-v))
        if code == TANH:
            return math.tanh(v)
        return v

    @device
    def times_derivative(d, z, a, code):
        """d · f'(z), with f' evaluated from z and a = f(z)."""
        if code == RELU:
            return DT(0) if z <= 0 else d
        if code == LEAKY_RELU:
            return d * DT(LEAKY_SLOPE) if z <= 0 else d
        if code == SIGMOID:
            return d * (a * (DT(1) - a))
        if code == TANH:
            return d * (DT(1) - a * a)
        return d

    @device
    def sign(w):
        if w > 0:
            return DT(1)
        if w < 0:
            return DT(-1)
        return DT(0)

    @device
    def block_sum(buffer, tid):
        """Tree reduction of a BLOCK-long shared array into buffer[0]; every thread
        of the block must call it (it synchronises)."""
        cuda.syncthreads()
        half = BLOCK // 2
        while half > 0:
            if tid < half:
                buffer[tid] += buffer[tid + half]
            cuda.syncthreads()
            half //= 2

    @device
    def correct_count(a, targets, i, out_code):
        """1 if row i is classified correctly (argmax for softmax, every unit at 0.5
        for sigmoid), else 0; always 0 for regression."""
        cols = a.shape[1]
        if out_code == SOFTMAX:
            best_a = 0
            best_t = 0
            for j in range(1, cols):
                if a[i, j] > a[i, best_a]:
                    best_a = j
                if targets[i, j] > targets[i, best_t]:
                    best_t = j
            return 1 if best_a == best_t else 0
        if out_code == SIGMOID:
            for j in range(cols):
                if (a[i, j] > 0.5) != (targets[i, j] > 0.5):
                    return 0
            return 1
        return 0

    # --- register-blocked tiled GEMMs -------------------------------------------------------
    #
    # A block of S × S threads (S = T / M) computes a T × T tile of the output; thread
    # (tx, ty) owns the M × M elements (ty + m·S, tx + n·S), kept in registers. The
    # reduction runs in steps of D: each step the block loads a T × D tile of the left
    # operand and a D × T tile of the right one into shared memory (coalesced: the
    # thread index walks the contiguous index of the global array), then every thread
    # does M² FMAs per pair of shared loads. Shared tiles are padded by one column so
    # the transposing loads (backprop_delta, weight_gradient) are free of bank conflicts.

    @device
    def multiply_tiles(left, right, acc, tx, ty):
        """acc[m, n] += Σ_kk left[ty + m·S, kk] · right[kk, tx + n·S]."""
        for kk in range(D):
            for m in range(M):
                left_value = left[ty + m * S, kk]
                for n in range(M):
                    acc[m, n] += left_value * right[kk, tx + n * S]

    @device
    def load_tile(tile, source, row0, col0, n_rows, n_cols, tid, transposed):
        """Stage a block of ``source`` in the padded shared ``tile`` (0 outside
        n_rows × n_cols), coalesced: consecutive threads read consecutive columns.
        Plain: tile[r, c] = source[row0 + r, col0 + c]. Transposed: tile[r, c] =
        source[row0 + c, col0 + r], so the tile is written down its columns, which the
        one-column padding keeps free of bank conflicts."""
        height = tile.shape[0]
        width = tile.shape[1] - 1
        run = height if transposed else width   # tile extent along the source's rows
        for step in range(LOADS):   # a compile-time trip count: unrolled
            e = tid + step * NT
            outer = e // run
            inner = e - outer * run
            r, c = (inner, outer) if transposed else (outer, inner)
            i = row0 + outer
            j = col0 + inner
            if e < height * width:
                tile[r, c] = source[i, j] if i < n_rows and j < n_cols else DT(0)

    # --- fused forward ------------------------------------------------------------------

    def forward_layer(a_prev, weights, bias, code, rows, z, a):
        """z = a_prev·W + b; a = f(z) for the first ``rows`` rows (softmax: z only).
        Grid (⌈rows/T⌉, ⌈fan_out/T⌉), block (S, S)."""
        left = cuda.shared.array((T, DP), DT)
        right = cuda.shared.array((D, TP), DT)
        acc = cuda.local.array((M, M), DT)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * S + tx
        i0 = cuda.blockIdx.x * T
        j0 = cuda.blockIdx.y * T
        fan_in = weights.shape[0]
        cols = weights.shape[1]
        for m in range(M):
            for n in range(M):
                acc[m, n] = DT(0)
        for k0 in range(0, fan_in, D):
            load_tile(left, a_prev, i0, k0, rows, fan_in, tid, False)
            load_tile(right, weights, k0, j0, fan_in, cols, tid, False)
            cuda.syncthreads()
            multiply_tiles(left, right, acc, tx, ty)
            cuda.syncthreads()
        for m in range(M):
            i = i0 + ty + m * S
            for n in range(M):
                j = j0 + tx + n * S
                if i < rows and j < cols:
                    z[i, j] = acc[m, n] + bias[j]
        if code == SOFTMAX:
            return
        # a second sweep (over this thread's own, cached z) keeps the accumulator loop
        # above small enough to unroll, so acc stays in registers
        for m in range(M):
            i = i0 + ty + m * S
            for n in range(M):
                j = j0 + tx + n * S
                if i < rows and j < cols:
                    a[i, j] = activate(z[i, j], code)

    def softmax_rows(z, rows, a):
        """a = softmax(z) along each of the first ``rows`` rows, one thread per row."""
        i = cuda.grid(1)
        if i >= rows:
            return
        cols = z.shape[1]
        m = z[i, 0]
        for j in range(1, cols):
            m = max(m, z[i, j])
        s = DT(0)
        for j in range(cols):
            e = math.exp(z[i, j] - m)
            a[i, j] = e
            s += e
        inv = DT(1) / s
        for j in range(cols):
            a[i, j] *= inv

    # --- fused delta propagation ----------------------------------------------------------

    def backprop_delta(delta, weights, z, a, code, rows, delta_prev):
        """δ_prev = (δ·Wᵀ) ⊙ f'(z). Grid (⌈rows/T⌉, ⌈fan_in/T⌉), block (S, S); W is
        read row-major (coalesced) and transposed on its way into shared memory."""
        left = cuda.shared.array((T, DP), DT)
        right = cuda.shared.array((D, TP), DT)
        acc = cuda.local.array((M, M), DT)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * S + tx
        i0 = cuda.blockIdx.x * T
        k0 = cuda.blockIdx.y * T
        fan_in = weights.shape[0]
        cols = weights.shape[1]
        for m in range(M):
            for n in range(M):
                acc[m, n] = DT(0)
        for j0 in range(0, cols, D):
            load_tile(left, delta, i0, j0, rows, cols, tid, False)
            load_tile(right, weights, k0, j0, fan_in, cols, tid, True)   # right[jj, kk] = W[k0+kk, j0+jj]
            cuda.syncthreads()
            multiply_tiles(left, right, acc, tx, ty)
            cuda.syncthreads()
        for m in range(M):
            i = i0 + ty + m * S
            for n in range(M):
                k = k0 + tx + n * S
                if i < rows and k < fan_in:
                    delta_prev[i, k] = times_derivative(acc[m, n], z[i, k], a[i, k], code)

    def weight_gradient(a_prev, delta, rows, dweights, dbias):
        """dW = a_prevᵀ·δ and db = Σ_rows δ over the first ``rows`` rows. Grid
        (⌈fan_in/T⌉, ⌈fan_out/T⌉), block (S, S); the blocks of the first fan_in tile
        also sum db from the δ tiles they load anyway."""
        left = cuda.shared.array((T, DP), DT)
        right = cuda.shared.array((D, TP), DT)
        acc = cuda.local.array((M, M), DT)
        bias_acc = cuda.local.array(M, DT)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * S + tx
        k0 = cuda.blockIdx.x * T
        j0 = cuda.blockIdx.y * T
        fan_in = dweights.shape[0]
        cols = dweights.shape[1]
        sums_bias = cuda.blockIdx.x == 0 and ty == 0
        for m in range(M):
            bias_acc[m] = DT(0)
            for n in range(M):
                acc[m, n] = DT(0)
        for i0 in range(0, rows, D):
            load_tile(left, a_prev, i0, k0, rows, fan_in, tid, True)    # left[kk, ii] = a_prev[i0+ii, k0+kk]
            load_tile(right, delta, i0, j0, rows, cols, tid, False)
            cuda.syncthreads()
            multiply_tiles(left, right, acc, tx, ty)
            if sums_bias:
                for ii in range(D):
                    for n in range(M):
                        bias_acc[n] += right[ii, tx + n * S]
            cuda.syncthreads()
        for m in range(M):
            k = k0 + ty + m * S
            for n in range(M):
                j = j0 + tx + n * S
                if k < fan_in and j < cols:
                    dweights[k, j] = acc[m, n]
        if sums_bias:
            for n in range(M):
                j = j0 + tx + n * S
                if j < cols:
                    dbias[j] = bias_acc[n]

    # --- loss and output delta --------------------------------------------------------------

    def output_delta(z, a, targets, out_code, loss_code, rows, inv_batch, delta, sums, counts):
        """δ^L (times ``inv_batch``) for the first ``rows`` rows, one thread per row;
        adds the summed loss to sums[0] and the correct count to counts[0]."""
        losses = cuda.shared.array(BLOCK, F64)
        hits = cuda.shared.array(BLOCK, I64)
        tid = cuda.threadIdx.x
        i = cuda.blockIdx.x * BLOCK + tid
        cols = z.shape[1]
        total = F64(0)
        hit = 0
        if i < rows:
            scale = DT(inv_batch)
            if loss_code == CE:
                m = z[i, 0]
                for j in range(1, cols):
                    m = max(m, z[i, j])
                s = DT(0)
                for j in range(cols):
                    s += math.exp(z[i, j] - m)
                log_s = math.log(s)
                for j in range(cols):
                    total -= F64(targets[i, j] * (z[i, j] - m - log_s))
                    delta[i, j] = (a[i, j] - targets[i, j]) * scale
            elif loss_code == BCE:
                for j in range(cols):
                    v = z[i, j]
                    total += F64(max(v, DT(0)) - v * targets[i, j] + math.log1p(math.exp(-abs(v))))
                    delta[i, j] = (a[i, j] - targets[i, j]) * scale
            else:  # MSE
                scale = DT(2 * inv_batch / cols)
                dot = DT(0)
                for j in range(cols):
                    e = a[i, j] - targets[i, j]
                    total += F64(e * e) / cols
                    g = scale * e
                    delta[i, j] = g
                    dot += g * a[i, j]
                if out_code == SIGMOID:
                    for j in range(cols):
                        delta[i, j] *= a[i, j] * (DT(1) - a[i, j])
                elif out_code == SOFTMAX:
                    for j in range(cols):
                        delta[i, j] = a[i, j] * (delta[i, j] - dot)
            hit = correct_count(a, targets, i, out_code)
        losses[tid] = total
        hits[tid] = hit
        block_sum(losses, tid)
        block_sum(hits, tid)
        if tid == 0:
            cuda.atomic.add(sums, 0, losses[0])
            cuda.atomic.add(counts, 0, hits[0])

    # --- fused weight update ----------------------------------------------------------------

    def clip_partials(theta, grad, is_weight, hyper, partials):
        """Per-block partial sums of ‖grad + l1 sign(w) + l2 w‖² (partials[block]) and of
        the penalty l1|w| + l2 w²/2 over the weights (partials[n_blocks + block])."""
        squares = cuda.shared.array(BLOCK, F64)
        penalties = cuda.shared.array(BLOCK, F64)
        tid = cuda.threadIdx.x
        l1 = hyper[H_L1]
        l2 = hyper[H_L2]
        sq = F64(0)
        pen = F64(0)
        for p in range(cuda.grid(1), theta.shape[0], cuda.gridsize(1)):
            w = F64(theta[p])
            g = F64(grad[p])
            if is_weight[p]:
                g += l2 * w + l1 * F64(sign(theta[p]))
                pen += l1 * abs(w) + 0.5 * l2 * w * w
            sq += g * g
        squares[tid] = sq
        penalties[tid] = pen
        block_sum(squares, tid)
        block_sum(penalties, tid)
        if tid == 0:
            partials[cuda.blockIdx.x] = squares[0]
            partials[cuda.gridDim.x + cuda.blockIdx.x] = penalties[0]

    def finish_update(partials, hyper, rows, scalars, sums):
        """One block: scalars[0] = clip_norm / ‖g‖ if ‖g‖ > clip_norm else 1, and
        sums[0] += rows · penalty (the CPU's ``total += rows * penalty``)."""
        squares = cuda.shared.array(BLOCK, F64)
        penalties = cuda.shared.array(BLOCK, F64)
        tid = cuda.threadIdx.x
        n_parts = partials.shape[0] // 2
        sq = F64(0)
        pen = F64(0)
        for p in range(tid, n_parts, BLOCK):
            sq += partials[p]
            pen += partials[n_parts + p]
        squares[tid] = sq
        penalties[tid] = pen
        block_sum(squares, tid)
        block_sum(penalties, tid)
        if tid == 0:
            clip_norm = hyper[H_CLIP_NORM]
            scale = F64(1)
            if clip_norm > 0:
                norm = math.sqrt(squares[0])
                if norm > clip_norm:
                    scale = clip_norm / norm
            scalars[0] = scale
            sums[0] += rows * penalties[0]

    def update_params(theta, grad, state1, state2, is_weight, opt_code, hyper, t, scalars):
        """One optimizer step at step count t (1-based), elementwise and in place:
        g = (grad + l1 sign(w) + l2 w)·scalars[0], clamped to ±clip_value, then the
        rule of ``reference.optimizer_step``."""
        lr = DT(hyper[H_LR])
        mu = DT(hyper[H_MOMENTUM])
        beta2 = DT(hyper[H_BETA2])
        eps = DT(hyper[H_EPS])
        l1 = DT(hyper[H_L1])
        l2 = DT(hyper[H_L2])
        regularise = hyper[H_L1] != 0 or hyper[H_L2] != 0
        clip_value = DT(hyper[H_CLIP_VALUE])
        clamp = hyper[H_CLIP_VALUE] > 0
        scale = DT(scalars[0])
        corr1 = DT(1 - hyper[H_MOMENTUM] ** t)
        corr2 = DT(1 - hyper[H_BETA2] ** t)
        one = DT(1)
        for p in range(cuda.grid(1), theta.shape[0], cuda.gridsize(1)):
            w = theta[p]
            g = grad[p]
            if regularise and is_weight[p]:
                g = g + l1 * sign(w) + l2 * w
            g = g * scale
            if clamp:
                g = min(max(g, -clip_value), clip_value)
            if opt_code == OPT_SGD:
                theta[p] = w - lr * g
            elif opt_code == OPT_MOMENTUM:
                v = mu * state1[p] - lr * g
                state1[p] = v
                theta[p] = w + v
            elif opt_code == OPT_NESTEROV:
                v = mu * state1[p] - lr * g
                state1[p] = v
                theta[p] = w + mu * v - lr * g
            elif opt_code == OPT_RMSPROP:
                s = mu * state1[p] + (one - mu) * g * g
                state1[p] = s
                theta[p] = w - lr * g / (math.sqrt(s) + eps)
            else:  # OPT_ADAM
                m = mu * state1[p] + (one - mu) * g
                v = beta2 * state2[p] + (one - beta2) * g * g
                state1[p] = m
                state2[p] = v
                theta[p] = w - lr * (m / corr1) / (math.sqrt(v / corr2) + eps)

    # --- batches and checks -------------------------------------------------------------

    def gather_rows(source, perm, start, rows, out):
        """out[r] = source[perm[start + r]] for r < rows; one thread per element,
        consecutive threads along a row (coalesced)."""
        cols = source.shape[1]
        e = cuda.grid(1)
        r = e // cols
        if r < rows:
            j = e - r * cols
            out[r, j] = source[perm[start + r], j]

    def count_nonfinite(values, counts):
        """counts[1] += number of NaN/±inf entries of ``values`` (grid-stride)."""
        bad = 0
        for p in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
            if math.isnan(values[p]) or math.isinf(values[p]):
                bad += 1
        if bad:
            cuda.atomic.add(counts, 1, bad)

    scope = locals()
    kernels = {name: scope[name] for name in KERNEL_NAMES}
    return types.SimpleNamespace(dtype=np.dtype(dtype), config=cfg, **kernels)


@functools.lru_cache(maxsize=None)
def _compiled(dtype_name, cfg):
    functions = build_kernels(dtype_name, cfg)
    for name in KERNEL_NAMES:
        setattr(functions, name, cuda.jit(getattr(functions, name)))
    return functions


def kernels(dtype):
    """The ``cuda.jit`` kernels for ``dtype`` built with the current ``cuda_config.config``;
    ``.narrow`` holds the same kernels built for ``config.narrow()``. Builds are cached
    by the sizes baked into them only, so configs that differ only in launch-time
    choices (``min_blocks``, ``reduce_blocks``) share them."""
    cfg = cuda_config.config
    name = np.dtype(dtype).name

    def with_config(c):
        return types.SimpleNamespace(**{**vars(_compiled(name, c.baked())), "config": c})

    wide = with_config(cfg)
    wide.narrow = with_config(cfg.narrow())
    return wide


def gemm(K, name, rows, cols):
    """(kernel, grid, block) of GEMM kernel ``name`` over a rows × cols output: the
    register-blocked wide variant, or the narrow one where the wide grid would have
    fewer than ``min_blocks`` blocks."""
    grid, block = tiles(rows, cols, K.config)
    if grid[0] * grid[1] < K.config.min_blocks:
        K = K.narrow
        grid, block = tiles(rows, cols, K.config)
    return getattr(K, name), grid, block


# --- launch geometry --------------------------------------------------------------------------


def _blocks(n, size):
    return max(1, -(-int(n) // size))


def tiles(rows, cols, cfg):
    """(grid, block) of a GEMM kernel over a rows × cols output."""
    edge = cfg.tile // cfg.micro
    return (_blocks(rows, cfg.tile), _blocks(cols, cfg.tile)), (edge, edge)


def line(n, cfg):
    """(grid, block) of a one-thread-per-item kernel over n items."""
    return (_blocks(n, cfg.block),), (cfg.block,)


def strided(n, cfg):
    """(grid, block) of a grid-stride kernel over n items (at most reduce_blocks blocks)."""
    return (min(cfg.reduce_blocks, _blocks(n, cfg.block)),), (cfg.block,)


# --- device buffers -----------------------------------------------------------------------------


def weight_views(flat, layout):
    """Per-layer (weights, biases) views of a flat device vector (θ or the gradient)."""
    weights, biases = [], []
    for fan_in, fan_out, w_off, b_off in layout:
        fan_in, fan_out, w_off, b_off = int(fan_in), int(fan_out), int(w_off), int(b_off)
        weights.append(flat[w_off:w_off + fan_in * fan_out].reshape(fan_in, fan_out))
        biases.append(flat[b_off:b_off + fan_out])
    return weights, biases


class DeviceWorkspace:
    """Device scratch for batches of at most ``bmax`` rows (the GPU twin of
    ``training.Workspace``) with its per-layer (bmax, width) views made once."""

    def __init__(self, sizes, bmax, dtype):
        widths = [int(s) for s in sizes[1:]]
        self.bmax = bmax = int(bmax)
        self.xb = cuda.device_array((bmax, sizes[0]), dtype=dtype)
        self.yb = cuda.device_array((bmax, sizes[-1]), dtype=dtype)
        zs = cuda.device_array(bmax * sum(widths), dtype=dtype)
        acts = cuda.device_array(bmax * sum(widths), dtype=dtype)
        half = bmax * max(sizes)
        deltas = cuda.device_array(2 * half, dtype=dtype)
        self.zs, self.acts = [], []
        offset = 0
        for width in widths:
            self.zs.append(zs[offset:offset + bmax * width].reshape(bmax, width))
            self.acts.append(acts[offset:offset + bmax * width].reshape(bmax, width))
            offset += bmax * width
        # δ of layer l: ping-pong between the two halves as in cpu.backward_pass
        n_layers = len(widths)
        self.deltas = [None] * n_layers
        for l in range(n_layers):
            which = (n_layers - 1 - l) % 2
            self.deltas[l] = deltas[which * half:which * half + bmax * widths[l]].reshape(bmax, widths[l])
        self.sums = cuda.to_device(np.zeros(1, dtype=np.float64))     # loss (+ penalty) sum
        self.counts = cuda.to_device(np.zeros(2, dtype=np.int64))     # correct, non-finite


class DeviceParameters:
    """θ, gradient, optimizer state and hyper-parameters resident on the device."""

    def __init__(self, theta, layout, codes, state1=None, state2=None):
        dtype = theta.dtype
        self.layout = np.asarray(layout)
        self.codes = [int(c) for c in codes]
        self.theta = cuda.to_device(theta)
        self.grad = cuda.device_array(theta.shape[0], dtype=dtype)
        zeros = np.zeros_like(theta)
        self.state1 = cuda.to_device(zeros if state1 is None else state1)
        self.state2 = cuda.to_device(zeros if state2 is None else state2)
        mask = np.zeros(theta.shape[0], dtype=np.uint8)
        for fan_in, fan_out, w_off, _ in self.layout:
            mask[w_off:w_off + fan_in * fan_out] = 1
        self.is_weight = cuda.to_device(mask)
        self.hyper = cuda.to_device(np.zeros(spec.N_HYPER, dtype=np.float64))
        self.scalars = cuda.to_device(np.ones(1, dtype=np.float64))   # clip scale
        self.weights, self.biases = weight_views(self.theta, self.layout)
        self.dweights, self.dbiases = weight_views(self.grad, self.layout)


# --- host drivers: launch sequences -------------------------------------------------------------
#
# The pass functions return lists of (kernel, grid, block, arguments); ``launch``
# issues them. A fit builds the lists for its two batch shapes (full and last) once, so
# a batch is a replay of prebuilt launches with no device allocation and no
# synchronisation. (The launch configuration is applied at launch time: Numba's
# simulator configures a kernel in place, so a configured kernel cannot be stored.)


def launch(launches):
    for kernel, grid, block, args in launches:
        kernel[grid, block](*args)


def forward_pass(K, params, work, x, rows):
    """Launches of the forward pass of ``rows`` rows of ``x`` into work.zs/work.acts."""
    cfg = K.config
    launches = []
    a_prev = x
    for l, code in enumerate(params.codes):
        z, a = work.zs[l], work.acts[l]
        launches.append((*gemm(K, "forward_layer", rows, z.shape[1]),
                         (a_prev, params.weights[l], params.biases[l], code, rows, z, a)))
        if code == SOFTMAX:
            grid, block = line(rows, cfg)
            launches.append((K.softmax_rows, grid, block, (z, rows, a)))
        a_prev = a
    return launches


def backward_pass(K, params, work, x, y, rows, loss_code):
    """Launches of forward, loss and backward for ``rows`` rows of (x, y): the
    batch-mean data-loss gradient lands in params.grad, the summed loss in
    work.sums[0] and the correct count in work.counts[0]."""
    cfg = K.config
    launches = forward_pass(K, params, work, x, rows)
    n_layers = len(params.codes)
    out = n_layers - 1
    grid, block = line(rows, cfg)
    launches.append((K.output_delta, grid, block,
                     (work.zs[out], work.acts[out], y, params.codes[out], loss_code, rows, 1.0 / rows,
                      work.deltas[out], work.sums, work.counts)))
    for l in range(out, -1, -1):
        a_prev = work.acts[l - 1] if l > 0 else x
        fan_in, fan_out = params.weights[l].shape
        launches.append((*gemm(K, "weight_gradient", fan_in, fan_out),
                         (a_prev, work.deltas[l], rows, params.dweights[l], params.dbiases[l])))
        if l > 0:
            launches.append((*gemm(K, "backprop_delta", rows, fan_in),
                             (work.deltas[l], params.weights[l], work.zs[l - 1], work.acts[l - 1],
                              params.codes[l - 1], rows, work.deltas[l - 1])))
    return launches


def update_launches(K, params, work, rows, reduce):
    """The norm/penalty reduction launches of one update (empty unless ``reduce``:
    clip_norm, l1 or l2 set) and (kernel, grid, block) of the update (called with ``t``)."""
    cfg = K.config
    n = params.theta.shape[0]
    grid, block = strided(n, cfg)
    launches = []
    if reduce:
        partials = cuda.device_array(2 * grid[0], dtype=np.float64)
        launches = [(K.clip_partials, grid, block,
                     (params.theta, params.grad, params.is_weight, params.hyper, partials)),
                    (K.finish_update, 1, cfg.block, (partials, params.hyper, rows, params.scalars, work.sums))]
    return launches, (K.update_params, grid, block)


class EpochPlan:
    """The launch sequences of one fit: X, Y and the workspace on the device, the
    prebuilt launches of a full and of the (possibly partial) last batch."""

    def __init__(self, K, params, X, Y, batch_size, loss_code, opt_code, reduce):
        self.K, self.params = K, params
        self.X, self.Y = X, Y
        self.n = n = X.shape[0]
        self.batch_size = batch_size
        self.opt_code = opt_code
        self.work = work = DeviceWorkspace([X.shape[1], *[w.shape[1] for w in params.weights]],
                                           batch_size, params.theta.dtype)
        self.perm = cuda.device_array(n, dtype=np.int64)
        self.shapes = {}
        for rows in {batch_size, n - (n - 1) // batch_size * batch_size}:
            steps = backward_pass(K, params, work, work.xb, work.yb, rows, loss_code)
            reductions, update = update_launches(K, params, work, rows, reduce)
            self.shapes[rows] = (line(rows * X.shape[1], K.config), line(rows * Y.shape[1], K.config),
                                 steps + reductions, update)
        self.check = strided(params.theta.shape[0], K.config)


def train_epoch(plan, perm, step):
    """One epoch of ``plan`` over the host permutation ``perm`` (uploaded once),
    starting at optimizer step ``step``; returns the new step count. The epoch's
    Σ b·(loss_b + penalty_b) accumulates in plan.work.sums[0], the correct count in
    plan.work.counts[0] and the non-finite count of θ in plan.work.counts[1]."""
    params, work = plan.params, plan.work
    plan.perm.copy_to_device(perm)
    work.sums.copy_to_device(np.zeros(1, dtype=np.float64))
    work.counts.copy_to_device(np.zeros(2, dtype=np.int64))
    n, batch_size, K = plan.n, plan.batch_size, plan.K
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        x_geometry, y_geometry, steps, (update, grid, block) = plan.shapes[rows]
        K.gather_rows[x_geometry](plan.X, plan.perm, start, rows, work.xb)
        K.gather_rows[y_geometry](plan.Y, plan.perm, start, rows, work.yb)
        launch(steps)
        step += 1
        update[grid, block](params.theta, params.grad, params.state1, params.state2, params.is_weight,
               plan.opt_code, params.hyper, step, params.scalars)
    K.count_nonfinite[plan.check](params.theta, work.counts)
    return step


def loss_and_gradient(K, params, X, Y, loss_code):
    """Full-batch mean data loss and its gradient (left in params.grad)."""
    rows = X.shape[0]
    work = DeviceWorkspace([X.shape[1], *[w.shape[1] for w in params.weights]], rows, params.theta.dtype)
    launch(backward_pass(K, params, work, X, Y, rows, loss_code))
    return float(work.sums.copy_to_host()[0]) / rows


def predict(K, params, X, out, chunk):
    """Network output for every row of the device array X into the device array out,
    in chunks of ``chunk`` rows."""
    n = X.shape[0]
    work = DeviceWorkspace([X.shape[1], *[w.shape[1] for w in params.weights]], chunk, params.theta.dtype)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        launch(forward_pass(K, params, work, X[start:start + rows], rows))
        out[start:start + rows].copy_to_device(work.acts[-1][:rows])
    return out


def evaluate(K, params, X, Y, loss_code, chunk):
    """Summed data loss and correct count over every row (no update)."""
    n = X.shape[0]
    work = DeviceWorkspace([X.shape[1], *[w.shape[1] for w in params.weights]], chunk, params.theta.dtype)
    out = len(params.codes) - 1
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        x, y = X[start:start + rows], Y[start:start + rows]
        launches = forward_pass(K, params, work, x, rows)
        launches.append((K.output_delta, *line(rows, K.config),
                         (work.zs[out], work.acts[out], y, params.codes[out], loss_code, rows,
                          1.0, work.deltas[out], work.sums, work.counts)))
        launch(launches)
    return float(work.sums.copy_to_host()[0]), int(work.counts.copy_to_host()[0])
