"""CUDA kernels (Numba ``@cuda.jit``) mirroring ``kernels/cpu.py`` name for name.

Kernels (one launch each):

* :func:`forward_layer` — z = a·W + b and a = f(z): a shared-memory tiled,
  register-blocked GEMM whose epilogue adds the bias and applies the activation (softmax needs a
  whole row: in training and evaluation :func:`output_delta` computes it, for inference
  :func:`softmax_rows` does);
* :func:`backprop_delta` — δ^{l-1} = (δ^l·W^{lᵀ}) ⊙ f'(z^{l-1}): tiled GEMM against
  the transposed weights with the derivative in the epilogue;
* :func:`weight_gradient` — dW = a^{l-1ᵀ}·δ^l with db = Σ δ^l reduced by the same
  blocks that own the first weight rows, split-K: the batch is cut into slices, each
  reduced by its own blocks into its own partial gradient (:class:`GradientParts`),
  so a small layer over a long batch still fills the GPU;
* :func:`output_delta` — softmax (for a softmax output), loss (CE, BCE, MSE, or the
  half Poisson deviance of the exp output), δ^L (1/B folded in, as on the CPU) and
  the :func:`correct_count` of each row, one thread per row; the loss and hit counts
  are reduced per block in shared memory and added atomically to
  per-epoch totals that stay on the device;
* :func:`clip_partials` / :func:`update_params` — the global norm of the regularised
  gradient and the L1/L2 penalty (grid-stride partial sums; every update block
  finishes them itself), then one elementwise pass summing the split-K slices and
  doing L1/L2, clipping by norm and by value and the SGD / momentum / Nesterov /
  RMSprop / Adam rule; :func:`sum_gradient` sums the slices where no update follows;
* :func:`bn_forward` / :func:`bn_backward` — batch normalization of a hidden layer
  (its GEMM stores u = a·W): per-feature column reductions (one block per tile of
  features, a shared-memory tree over the rows) for μ, σ² (and the running statistics)
  and for dβ, dγ, with the normalisation, activation and dropout, or the backward
  through the statistics, in the same kernel (``cpu.bn_forward`` / ``cpu.bn_backward``);
* :func:`gather_batch` — a batch of X and Y gathered through the device permutation;
* :func:`batch_weights` — with sample weights: the batch's weights gathered, Σw, the
  batch's 1/Σw and B/Σw (:func:`row_factors`) and its L1/L2 (× B/Σw), one block;
* :func:`count_nonfinite` — the per-epoch divergence check (θ and the optimizer
  states) without copying them back.

The host-side functions of the same names as the CPU drivers (:func:`forward_pass`,
:func:`backward_pass`, :func:`train_batches`, :func:`loss_and_gradient`,
:func:`predict`, :func:`evaluate`) work on device buffers; ``fastbp.cuda_training``
wraps them for ``MLP.fit/forward(..., device="cuda")``.

Why this is fast on a real GPU (H100: 132 SMs, 228 KB shared memory and 64K
registers per SM; geometry from ``cuda_config``, defaults below):

* register-blocked GEMMs — a block of 16 × 16 threads computes a 64 × 64 output tile,
  each thread a 4 × 4 micro-tile held in registers; per reduction step of 16 the
  block stages a 64 × 16 and a 16 × 64 operand tile in shared memory (8.5 KB in
  float32, 17 KB in float64) and every thread does 16 FMAs per 8 shared loads, 4× the
  arithmetic intensity of one output per thread. Where that grid would leave the GPU
  mostly idle (narrow layers, small batches) the narrow variant runs instead — the
  same code with 16 × 16 tiles and one output per thread, 16× the blocks; :func:`gemm`
  picks per launch by estimated waves × cost;
* coalesced global memory traffic — every array is row-major with samples as rows,
  and consecutive threads always walk the contiguous (column) index of whatever a
  warp loads or stores: a, W, z, δ and dW are read and written along rows; the
  transposed operands (Wᵀ in backprop_delta, a_prevᵀ in weight_gradient) are read
  row-major and transposed on their way into shared memory, whose tiles are padded
  by one column; that removes the bank conflicts of some of those column writes but
  not all (a review of the sm_90 code counted 5 of the 8 staging stores still
  conflicting; not yet measured);
* fused epilogues — bias + activation, and the activation derivative, are applied
  to the accumulators before the single store: z and a (or δ) make one trip to
  global memory; db is summed from the δ tiles weight_gradient loads anyway;
* few launches and no host round trips — 3L + 2 per training step of L layers (+ 2
  per batch-normalized hidden layer, + 1 with sample weights, whose array goes to the
  device once per fit with X and Y):
  one gather, one launch per layer per phase (forward, delta, gradient), one for
  softmax + loss + δ^L, one for the update (two with clip_norm / L1 / L2); every
  launch is configured once per fit (:func:`configure`); X and Y are copied to the device once per fit, the
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
vectorised shared loads, the waves × cost constants of :func:`gemm`), a warp per row instead of a
thread per row in softmax_rows and
output_delta for wide outputs (hundreds of classes: today each thread walks its row
with a stride, uncoalesced), tensor-core (TF32 / BF16) GEMMs, CUDA-graph capture of one batch to
remove the per-launch Python overhead of numba-cuda. Narrow nets (widths ≤ 128) train
with the fully fused step of ``kernels/cuda_fused.py`` instead (:class:`EpochPlan`
chooses; 2 launches per step; batch-normalized or dropout nets take the per-layer
kernels). The batchnorm column kernels give one block to each 32 features and walk
all rows of the batch in it: a narrow layer over a long batch (width 64, 2^16 rows:
2 blocks) leaves most SMs idle; split the rows across blocks (partial sums, then a
second pass) when that is measured to matter.

Numerics: float32 networks compute in float32 (constants are cast with the dtype, so
no silent float64 promotion); the loss, penalty and norm sums accumulate in float64
as on the CPU. Atomic additions make the per-epoch loss sum order-dependent at the
level of float64 rounding.

PTX report per kernel (registers, shared memory, spills, H100 occupancy):
``python scripts/cuda_ptx_report.py``; the table for the default config is in
``benchmarks/CUDA.md``.
"""

import contextlib
import functools
import math
import types
import warnings

import numba
import numpy as np
from numba import cuda

from .. import spec
from . import cuda_config, rng

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX, EXP = (
    spec.IDENTITY, spec.SIGMOID, spec.TANH, spec.RELU, spec.LEAKY_RELU, spec.SOFTMAX, spec.EXP)
MSE, BCE, CE, POISSON = spec.MSE, spec.BINARY_CROSS_ENTROPY, spec.CROSS_ENTROPY, spec.POISSON
OPT_SGD, OPT_MOMENTUM, OPT_NESTEROV, OPT_RMSPROP, OPT_ADAM = (
    spec.OPT_SGD, spec.OPT_MOMENTUM, spec.OPT_NESTEROV, spec.OPT_RMSPROP, spec.OPT_ADAM)
H_LR, H_MOMENTUM, H_BETA2, H_EPS, H_L1, H_L2, H_CLIP_NORM, H_CLIP_VALUE = (
    spec.H_LR, spec.H_MOMENTUM, spec.H_BETA2, spec.H_EPS, spec.H_L1, spec.H_L2,
    spec.H_CLIP_NORM, spec.H_CLIP_VALUE)
LEAKY_SLOPE = spec.LEAKY_SLOPE

#: kernel names in launch order of a training step (the PTX report compiles these)
KERNEL_NAMES = ("gather_batch", "forward_layer", "bn_forward", "softmax_rows", "output_delta", "bn_backward",
                "weight_gradient", "backprop_delta", "clip_partials", "update_params", "sum_gradient",
                "batch_weights", "count_nonfinite")


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
    BN_COLS = cfg.bn_columns   # features per batchnorm column block
    BN_ROWS = BLOCK // BN_COLS  # row threads per batchnorm column block
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
        if code == EXP:   # an output only (Poisson regression): δ^L never needs its f'
            return math.exp(v)
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

    stream_key = device(rng.stream_key)
    keep_unit = device(rng.keep_unit)

    @device
    def dropout_key(counters, layer):
        """The mask key of hidden layer ``layer`` in the current step: counters holds
        (step, seed, epoch) — see ``DeviceParameters.counters``."""
        return stream_key(counters[1], counters[2], counters[0], layer)

    @device
    def dropout_factor(key, i, j, keep, threshold):
        """1/keep where unit (i, j) of the batch is kept (``rng.keep_unit``), else 0."""
        return DT(1) / DT(keep) if keep_unit(key, i, j, threshold) else DT(0)

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
    def block_sum3(first, second, third, tid):
        """:func:`block_sum` of three BLOCK-long shared arrays in one tree."""
        cuda.syncthreads()
        half = BLOCK // 2
        while half > 0:
            if tid < half:
                first[tid] += first[tid + half]
                second[tid] += second[tid + half]
                third[tid] += third[tid + half]
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

    @device
    def row_factors(row_weights, batch_scalars, i, inv_batch):
        """(δ factor, loss factor) of batch row i: (``inv_batch``, 1) without sample
        weights (``row_weights`` None: Numba compiles no weight code, and the products
        with 1 are exact, so an unweighted fit keeps its bits), else (w_i/Σw, w_i·B/Σw)
        from the row's weight and ``batch_scalars`` = [1/Σw, B/Σw] (:func:`batch_weights`;
        ``cpu.output_delta`` with ``row_weights`` and the CPU's loss · B/Σw)."""
        if row_weights is None:
            return inv_batch, F64(1)
        w = row_weights[i]
        return w * batch_scalars[0], w * batch_scalars[1]

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

    def forward_layer(a_prev, weights, bias, code, rows, z, a, keep, threshold, counters, layer):
        """z = a_prev·W + b; a = f(z) for the first ``rows`` rows (softmax: z only);
        with ``keep`` < 1 (inverted dropout on this hidden layer) a = f(z)·mask, the
        mask of ``rng.keep_unit`` for (seed, epoch, step) in ``counters`` and ``layer``.
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
        dropping = keep < 1
        key = dropout_key(counters, layer) if dropping else numba.uint64(0)
        for m in range(M):
            i = i0 + ty + m * S
            for n in range(M):
                j = j0 + tx + n * S
                if i < rows and j < cols:
                    value = activate(z[i, j], code)
                    if dropping:
                        value *= dropout_factor(key, i, j, keep, threshold)
                    a[i, j] = value

    def softmax_rows(z, rows, a):
        """a = softmax(z) along each of the first ``rows`` rows, one thread per row
        (inference: training and evaluation fold it into output_delta)."""
        i = cuda.grid(1)
        if i < rows:
            softmax_row(z, i, a)

    @device
    def softmax_row(z, i, a):
        """a[i] = softmax(z[i])."""
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

    # --- batch normalization ------------------------------------------------------------
    #
    # A hidden layer with BN: forward_layer stores u = a·W (a zero bias, the softmax
    # epilogue: z only), bn_forward turns it into y = γ x̂ + β and a = f(y) (· mask);
    # in the backward pass bn_backward turns δ = dL/dy into dL/du before the weight
    # gradient, writing dβ and dγ. Both need sums over the whole batch per feature, so
    # a block owns BN_COLS features and all rows of them: its BN_COLS × BN_ROWS threads
    # stride down the rows (consecutive threads on consecutive features: coalesced),
    # and a shared-memory tree over the row threads finishes each column. Statistics
    # and sums are float64, as on the CPU; the variance is two-pass (Σ(u − μ)²).

    @device
    def column_sum(buffer, tx, ty):
        """Tree reduction of the (BN_ROWS, BN_COLS) shared ``buffer`` down its rows into
        buffer[0, tx]; every thread of the block must call it (it synchronises)."""
        cuda.syncthreads()
        half = BN_ROWS // 2
        while half > 0:
            if ty < half:
                buffer[ty, tx] += buffer[ty + half, tx]
            cuda.syncthreads()
            half //= 2

    def bn_forward(z, xhat, gamma, beta, mean, inv_std, running_mean, running_var, eps, momentum, mode, rows, a,
                   code, keep, threshold, counters, layer):
        """In place over the first ``rows`` rows: z (= u = a·W) becomes y = γ x̂ + β with
        x̂ = (u − μ)·inv_std into ``xhat``, and a = f(y) (· the dropout mask of hidden
        layer ``layer`` where ``keep`` < 1, as forward_layer). μ and 1/√(σ² + ε) go to
        ``mean`` / ``inv_std``: the running statistics in mode 0, the batch's in modes 1
        and 2 (mode 2 also updates the running ones: r ← m·r + (1 − m)·batch value, the
        variance unbiased by B/(B − 1) when B > 1). Grid ⌈features/BN_COLS⌉, block
        (BN_COLS, BN_ROWS)."""
        partial = cuda.shared.array((BN_ROWS, BN_COLS), F64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        j = cuda.blockIdx.x * BN_COLS + tx
        active = j < z.shape[1]
        mu = F64(0)
        scale = F64(1)
        if mode == 0:
            if active:
                mu = running_mean[j]
                scale = 1 / math.sqrt(running_var[j] + eps)
        else:
            total = F64(0)
            if active:
                for i in range(ty, rows, BN_ROWS):
                    total += F64(z[i, j])
            partial[ty, tx] = total
            column_sum(partial, tx, ty)
            mu = partial[0, tx] / rows
            cuda.syncthreads()   # every thread has read the sum before the buffer is reused
            total = F64(0)
            if active:
                for i in range(ty, rows, BN_ROWS):
                    d = F64(z[i, j]) - mu
                    total += d * d
            partial[ty, tx] = total
            column_sum(partial, tx, ty)
            var = partial[0, tx] / rows
            scale = 1 / math.sqrt(var + eps)
            if mode == 2 and active and ty == 0:
                unbiased = var * rows / (rows - 1) if rows > 1 else var
                running_mean[j] = momentum * running_mean[j] + (1 - momentum) * mu
                running_var[j] = momentum * running_var[j] + (1 - momentum) * unbiased
        if not active:
            return
        if ty == 0:
            mean[j] = mu
            inv_std[j] = scale
        g = F64(gamma[j])
        b = F64(beta[j])
        dropping = keep < 1
        key = dropout_key(counters, layer) if dropping else numba.uint64(0)
        for i in range(ty, rows, BN_ROWS):
            x = (F64(z[i, j]) - mu) * scale
            xhat[i, j] = DT(x)
            y = DT(g * x + b)
            z[i, j] = y
            value = activate(y, code)
            if dropping:
                value *= dropout_factor(key, i, j, keep, threshold)
            a[i, j] = value

    def bn_backward(delta, xhat, gamma, inv_std, rows, dnorm):
        """In place over the first ``rows`` rows: δ = dL/dy (batch mean folded in)
        becomes dL/du = inv_std·(g − Σδ·γ/B − x̂·Σ(δ x̂)·γ/B) with g = γ δ; writes
        dβ = Σ δ to dnorm[:features] and dγ = Σ δ x̂ to dnorm[features:] (β and γ
        are adjacent in θ). Grid and block as :func:`bn_forward`."""
        shift_sums = cuda.shared.array((BN_ROWS, BN_COLS), F64)
        gain_sums = cuda.shared.array((BN_ROWS, BN_COLS), F64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        cols = delta.shape[1]
        j = cuda.blockIdx.x * BN_COLS + tx
        active = j < cols
        shift = F64(0)
        gain = F64(0)
        if active:
            for i in range(ty, rows, BN_ROWS):
                d = F64(delta[i, j])
                shift += d
                gain += d * F64(xhat[i, j])
        shift_sums[ty, tx] = shift
        gain_sums[ty, tx] = gain
        column_sum(shift_sums, tx, ty)
        column_sum(gain_sums, tx, ty)
        if not active:
            return
        shift = shift_sums[0, tx]
        gain = gain_sums[0, tx]
        if ty == 0:
            dnorm[j] = DT(shift)
            dnorm[cols + j] = DT(gain)
        g = F64(gamma[j])
        scale = inv_std[j]
        for i in range(ty, rows, BN_ROWS):
            delta[i, j] = DT(scale * (g * F64(delta[i, j]) - g * shift / rows - F64(xhat[i, j]) * g * gain / rows))

    # --- fused delta propagation ----------------------------------------------------------

    def backprop_delta(delta, weights, z, a, code, rows, delta_prev, keep, threshold, counters, layer):
        """δ_prev = (δ·Wᵀ) ⊙ f'(z), or (δ·Wᵀ) ⊙ mask ⊙ f'(z) where the previous layer
        (hidden layer ``layer``) drops units (``keep`` < 1; the mask is drawn again,
        and f' taken at the undropped f(z)). Grid (⌈rows/T⌉, ⌈fan_in/T⌉), block (S, S);
        W is read row-major (coalesced) and transposed on its way into shared memory."""
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
        dropping = keep < 1
        for m in range(M):
            i = i0 + ty + m * S
            for n in range(M):
                k = k0 + tx + n * S
                if i < rows and k < fan_in:
                    if dropping:
                        delta_prev[i, k] = acc[m, n]
                    else:
                        delta_prev[i, k] = times_derivative(acc[m, n], z[i, k], a[i, k], code)
        if not dropping:
            return
        # dropout in a second sweep over this thread's own outputs (as forward_layer's
        # activation): the accumulator loop above stays small enough to unroll
        key = dropout_key(counters, layer)
        for m in range(M):
            i = i0 + ty + m * S
            for n in range(M):
                k = k0 + tx + n * S
                if i < rows and k < fan_in:
                    delta_prev[i, k] = times_derivative(delta_prev[i, k] * dropout_factor(key, i, k, keep, threshold),
                                                        z[i, k], activate(z[i, k], code), code)

    def weight_gradient(a_prev, delta, rows, dweights, dbias):
        """Split-K partial gradients over the first ``rows`` rows: slice s = blockIdx.z of
        gridDim.z equal row slices gives dweights[s] = a_prev[slice]ᵀ·δ[slice] (flattened
        fan_in × fan_out) and dbias[s] = Σ_slice δ. Grid (⌈fan_in/T⌉, ⌈fan_out/T⌉,
        splits), block (S, S); the blocks of the first fan_in tile also sum db from the
        δ tiles they load anyway. Every slice is written (zeros if empty); the update
        sums the slices."""
        left = cuda.shared.array((T, DP), DT)
        right = cuda.shared.array((D, TP), DT)
        acc = cuda.local.array((M, M), DT)
        bias_acc = cuda.local.array(M, DT)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * S + tx
        k0 = cuda.blockIdx.x * T
        j0 = cuda.blockIdx.y * T
        split = cuda.blockIdx.z
        chunk = (-(-rows // cuda.gridDim.z) + D - 1) // D * D
        first = split * chunk
        stop = min(rows, first + chunk)
        fan_in = a_prev.shape[1]
        cols = delta.shape[1]
        sums_bias = cuda.blockIdx.x == 0 and ty == 0
        for m in range(M):
            bias_acc[m] = DT(0)
            for n in range(M):
                acc[m, n] = DT(0)
        for i0 in range(first, stop, D):
            load_tile(left, a_prev, i0, k0, stop, fan_in, tid, True)    # left[kk, ii] = a_prev[i0+ii, k0+kk]
            load_tile(right, delta, i0, j0, stop, cols, tid, False)
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
                    dweights[split, k * cols + j] = acc[m, n]
        if sums_bias:
            for n in range(M):
                j = j0 + tx + n * S
                if j < cols:
                    dbias[split, j] = bias_acc[n]

    # --- loss and output delta --------------------------------------------------------------

    def output_delta(z, a, targets, out_code, loss_code, rows, inv_batch, row_weights, batch_scalars, delta, sums,
                     counts):
        """δ^L (times ``inv_batch``) for the first ``rows`` rows, one thread per row;
        adds the summed loss to sums[0] and the correct count to counts[0]. A softmax
        output is computed here (a = softmax(z), written to ``a``): the forward pass
        of a training step or an evaluation stores the output layer's z only. With
        sample weights (``row_weights``, ``batch_scalars``: see :func:`row_factors`;
        None without) row i's δ is times w_i/Σw and its loss times w_i·B/Σw."""
        losses = cuda.shared.array(BLOCK, F64)
        hits = cuda.shared.array(BLOCK, I64)
        tid = cuda.threadIdx.x
        i = cuda.blockIdx.x * BLOCK + tid
        cols = z.shape[1]
        total = F64(0)
        hit = 0
        if i < rows:
            factor, weight = row_factors(row_weights, batch_scalars, i, inv_batch)
            scale = DT(factor)
            if out_code == SOFTMAX:
                softmax_row(z, i, a)
            if loss_code == CE:
                m = z[i, 0]
                for j in range(1, cols):
                    m = max(m, z[i, j])
                s = DT(0)
                for j in range(cols):
                    s += math.exp(z[i, j] - m)
                log_s = math.log(s)
                for j in range(cols):
                    total -= weight * F64(targets[i, j] * (z[i, j] - m - log_s))
                    delta[i, j] = (a[i, j] - targets[i, j]) * scale
            elif loss_code == BCE:
                for j in range(cols):
                    v = z[i, j]
                    total += weight * F64(max(v, DT(0)) - v * targets[i, j] + math.log1p(math.exp(-abs(v))))
                    delta[i, j] = (a[i, j] - targets[i, j]) * scale
            elif loss_code == POISSON:   # half deviance a − y z − y + y log y, a = e^z
                for j in range(cols):
                    t = targets[i, j]
                    total += weight * F64(a[i, j] - t * z[i, j] - t)
                    if t > 0:
                        total += weight * F64(t * math.log(t))
                    delta[i, j] = (a[i, j] - t) * scale
            else:  # MSE
                scale = DT(2 * factor / cols)
                dot = DT(0)
                for j in range(cols):
                    e = a[i, j] - targets[i, j]
                    total += weight * (F64(e * e) / cols)
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

    @device
    def summed_gradient(parts, table, b, q):
        """Σ over the split-K slices of entry q of parameter block b (see ``GradientParts``)."""
        size = table[b, 1]
        at = table[b, 3] + q
        g = parts[at]
        for s in range(1, table[b, 2]):
            g += parts[at + s * size]
        return g

    def clip_partials(theta, parts, table, hyper, partials):
        """Per-block partial sums of ‖grad + l1 sign(w) + l2 w‖² (partials[block]) and of
        the penalty l1|w| + l2 w²/2 over the weights (partials[n_blocks + block])."""
        squares = cuda.shared.array(BLOCK, F64)
        penalties = cuda.shared.array(BLOCK, F64)
        tid = cuda.threadIdx.x
        l1 = hyper[H_L1]
        l2 = hyper[H_L2]
        sq = F64(0)
        pen = F64(0)
        for b in range(table.shape[0]):
            offset = table[b, 0]
            is_weight = table[b, 4]
            for q in range(cuda.grid(1), table[b, 1], cuda.gridsize(1)):
                w = F64(theta[offset + q])
                g = F64(summed_gradient(parts, table, b, q))
                if is_weight:
                    g += l2 * w + l1 * F64(sign(theta[offset + q]))
                    pen += l1 * abs(w) + 0.5 * l2 * w * w
                sq += g * g
        squares[tid] = sq
        penalties[tid] = pen
        block_sum(squares, tid)
        block_sum(penalties, tid)
        if tid == 0:
            partials[cuda.blockIdx.x] = squares[0]
            partials[cuda.gridDim.x + cuda.blockIdx.x] = penalties[0]

    def update_params(theta, grad, parts, table, state1, state2, opt_code, hyper, counters, reduce, partials, rows,
                      sums, layer_sums, diagnostics, done):
        """One optimizer step at step count t = counters[0] (1-based), elementwise and in
        place over the parameter blocks of ``table``: g = Σ split-K slices of ``parts``
        (stored in ``grad``), (g + l1 sign(w) + l2 w)·scale, clamped to ±clip_value,
        then the rule of ``reference.optimizer_step``. With ``reduce`` (clip_norm, l1 or
        l2 on) every block first finishes the norm and penalty sums of clip_partials'
        ``partials`` (the same sum in the same order in every block, so one scale for
        all), and block 0 adds rows · penalty to sums[0] (the CPU's ``total += rows *
        penalty``).

        Diagnostics as on the CPU: per layer, Σ of the regularised gradient² (weights
        and bias, before clipping), of the weight step² and of the weights² go to
        ``layer_sums`` (per-block tree, then one atomic add); the last block to finish
        (``done`` counts them) adds √(Σ g²) and √(Σ Δw² / Σ w²) to ``diagnostics``
        and clears ``layer_sums`` and ``done`` for the next step."""
        tid = cuda.threadIdx.x
        t = counters[0]
        lr = DT(hyper[H_LR])
        mu = DT(hyper[H_MOMENTUM])
        beta2 = DT(hyper[H_BETA2])
        eps = DT(hyper[H_EPS])
        l1 = DT(hyper[H_L1])
        l2 = DT(hyper[H_L2])
        regularise = hyper[H_L1] != 0 or hyper[H_L2] != 0
        clip_value = DT(hyper[H_CLIP_VALUE])
        clamp = hyper[H_CLIP_VALUE] > 0
        corr1 = DT(1 - hyper[H_MOMENTUM] ** t)
        corr2 = DT(1 - hyper[H_BETA2] ** t)
        one = DT(1)
        scale = DT(1)
        squares = cuda.shared.array(BLOCK, F64)
        penalties = cuda.shared.array(BLOCK, F64)
        weights_sq = cuda.shared.array(BLOCK, F64)
        if reduce:
            n_parts = partials.shape[0] // 2
            sq = F64(0)
            pen = F64(0)
            for q in range(tid, n_parts, BLOCK):
                sq += partials[q]
                pen += partials[n_parts + q]
            squares[tid] = sq
            penalties[tid] = pen
            block_sum(squares, tid)
            block_sum(penalties, tid)
            clip_norm = hyper[H_CLIP_NORM]
            if clip_norm > 0:
                norm = math.sqrt(squares[0])
                if norm > clip_norm:
                    scale = DT(clip_norm / norm)
            if tid == 0 and cuda.blockIdx.x == 0:
                sums[0] += rows * penalties[0]
            cuda.syncthreads()   # every thread has read the sums before the arrays are reused
        for b in range(table.shape[0]):
            offset = table[b, 0]
            is_weight = table[b, 4]
            split = table[b, 2] > 1
            grad_sq = F64(0)
            step_sq = F64(0)
            weight_sq = F64(0)
            for q in range(cuda.grid(1), table[b, 1], cuda.gridsize(1)):
                p = offset + q
                w = theta[p]
                g = summed_gradient(parts, table, b, q)
                if split:
                    grad[p] = g
                if regularise and is_weight:
                    g = g + l1 * sign(w) + l2 * w
                grad_sq += F64(g) * F64(g)
                g = g * scale
                if clamp:
                    g = min(max(g, -clip_value), clip_value)
                if opt_code == OPT_SGD:
                    new = w - lr * g
                elif opt_code == OPT_MOMENTUM:
                    v = mu * state1[p] - lr * g
                    state1[p] = v
                    new = w + v
                elif opt_code == OPT_NESTEROV:
                    v = mu * state1[p] - lr * g
                    state1[p] = v
                    new = w + mu * v - lr * g
                elif opt_code == OPT_RMSPROP:
                    s = mu * state1[p] + (one - mu) * g * g
                    state1[p] = s
                    new = w - lr * g / (math.sqrt(s) + eps)
                else:  # OPT_ADAM
                    m = mu * state1[p] + (one - mu) * g
                    v = beta2 * state2[p] + (one - beta2) * g * g
                    state1[p] = m
                    state2[p] = v
                    new = w - lr * (m / corr1) / (math.sqrt(v / corr2) + eps)
                theta[p] = new
                if is_weight:
                    step_sq += F64(new - w) * F64(new - w)
                    weight_sq += F64(w) * F64(w)
            squares[tid] = grad_sq
            penalties[tid] = step_sq
            weights_sq[tid] = weight_sq
            block_sum3(squares, penalties, weights_sq, tid)
            if tid == 0:
                layer = b // 2
                cuda.atomic.add(layer_sums, 3 * layer, squares[0])
                if is_weight:
                    cuda.atomic.add(layer_sums, 3 * layer + 1, penalties[0])
                    cuda.atomic.add(layer_sums, 3 * layer + 2, weights_sq[0])
            cuda.syncthreads()
        if tid == 0:
            cuda.threadfence()
            if cuda.atomic.add(done, 0, 1) == cuda.gridDim.x - 1:   # the last block
                for layer in range(table.shape[0] // 2):
                    # atomic reads (adding 0): the other blocks' sums, not a cached copy
                    grad_total = cuda.atomic.add(layer_sums, 3 * layer, 0.0)
                    step_total = cuda.atomic.add(layer_sums, 3 * layer + 1, 0.0)
                    weight_total = cuda.atomic.add(layer_sums, 3 * layer + 2, 0.0)
                    for k in range(3):
                        layer_sums[3 * layer + k] = 0.0
                    diagnostics[layer, 0] += math.sqrt(grad_total)
                    if weight_total > 0:
                        diagnostics[layer, 1] += math.sqrt(step_total / weight_total)
                done[0] = 0

    def sum_gradient(parts, table, grad):
        """grad = Σ split-K slices of ``parts`` (a gradient without an update step)."""
        for b in range(table.shape[0]):
            for q in range(cuda.grid(1), table[b, 1], cuda.gridsize(1)):
                grad[table[b, 0] + q] = summed_gradient(parts, table, b, q)

    # --- batches and checks -------------------------------------------------------------

    def gather_batch(X, Y, perm, start, rows, x, y, counters):
        """x[r] = X[perm[start + r]] and y[r] = Y[perm[start + r]] for r < rows (the
        CPU's two gather_rows calls in one launch); one thread per element of a
        (rows, X-width + Y-width) block, consecutive threads along a row (coalesced).
        Starts the step: counters[0] (the step count) += 1."""
        cx = X.shape[1]
        width = cx + Y.shape[1]
        e = cuda.grid(1)
        if e == 0:
            counters[0] += 1
        r = e // width
        if r < rows:
            j = e - r * width
            source = perm[start + r]
            if j < cx:
                x[r, j] = X[source, j]
            else:
                y[r, j - cx] = Y[source, j - cx]

    def batch_weights(weights, perm, start, rows, row_weights, epoch_hyper, hyper, batch_scalars):
        """Sample weights of a batch, one block: row_weights[r] = weights[perm[start + r]]
        for r < rows, Σw by a shared-memory tree (float64), batch_scalars = [1/Σw, B/Σw]
        (:func:`row_factors`) and hyper = epoch_hyper with L1 and L2 times B/Σw (the
        penalty per B rows, ``cpu.batch_hyper``), read by the update launches that
        follow. Never launched for a batch whose weights sum to 0 (the host skips it)."""
        totals = cuda.shared.array(BLOCK, F64)
        tid = cuda.threadIdx.x
        total = F64(0)
        for r in range(tid, rows, BLOCK):
            w = weights[perm[start + r]]
            row_weights[r] = w
            total += w
        totals[tid] = total
        block_sum(totals, tid)
        scale = rows / totals[0]
        if tid == 0:
            batch_scalars[0] = 1.0 / totals[0]
            batch_scalars[1] = scale
        for h in range(tid, hyper.shape[0], BLOCK):
            hyper[h] = epoch_hyper[h] * scale if h == H_L1 or h == H_L2 else epoch_hyper[h]

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
    # the device functions kernels/cuda_fused.py shares
    return types.SimpleNamespace(dtype=np.dtype(dtype), config=cfg, activate=activate,
                                 times_derivative=times_derivative, row_factors=row_factors, **kernels)


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


#: resident blocks per SM and cost per output of the narrow GEMM relative to the wide
#: one, for the waves × cost estimate of :func:`gemm`: from the ptxas report (wide 25 %
#: occupancy, narrow 75–100 %; ``benchmarks/CUDA.md``) and the inner loops (wide: 16
#: FMAs per 8 shared loads, narrow: 1 per 2). Estimates until measured on a GPU.
WIDE_RESIDENT, NARROW_RESIDENT, NARROW_COST = 2, 6, 4


def gemm_cost(rows, cols, splits, cfg, wide):
    """Estimated time of a rows × cols GEMM output (× ``splits`` slices) in the wide or
    narrow variant: waves of resident blocks × outputs per block × cost per output."""
    geometry = cfg if wide else cfg.narrow()
    (gx, gy, _), _ = tiles(rows, cols, geometry)
    resident = cfg.sms * (WIDE_RESIDENT if wide else NARROW_RESIDENT)
    waves = -(-(gx * gy * splits) // resident)
    return waves * geometry.tile ** 2 * (1 if wide else NARROW_COST)


def gemm(K, name, rows, cols, splits=1):
    """(kernel, grid, block) of GEMM kernel ``name`` over a rows × cols output (and
    ``splits`` split-K slices): the register-blocked wide variant or the narrow one,
    whichever :func:`gemm_cost` estimates faster (or the one ``config.gemm`` forces)."""
    cfg = K.config
    choice = cfg.gemm
    if choice == "auto":
        wide = gemm_cost(rows, cols, splits, cfg, True) <= gemm_cost(rows, cols, splits, cfg, False)
        choice = "wide" if wide else "narrow"
    if choice == "narrow":
        K = K.narrow
    grid, block = tiles(rows, cols, K.config, splits)
    return getattr(K, name), grid, block


def splits_for(rows, fan_in, fan_out, cfg):
    """Split-K slices of a layer's weight_gradient over ``rows`` rows: enough blocks for
    one wave of the wide variant, slices of at least ``split_rows`` rows, at most
    ``max_splits``."""
    (gx, gy, _), _ = tiles(fan_in, fan_out, cfg)
    want = -(-(cfg.sms * WIDE_RESIDENT) // (gx * gy))
    return int(max(1, min(want, cfg.max_splits, rows // cfg.split_rows)))


# --- launch geometry --------------------------------------------------------------------------


def _blocks(n, size):
    return max(1, -(-int(n) // size))


def tiles(rows, cols, cfg, splits=1):
    """(grid, block) of a GEMM kernel over a rows × cols output (× splits)."""
    edge = cfg.tile // cfg.micro
    return (_blocks(rows, cfg.tile), _blocks(cols, cfg.tile), int(splits)), (edge, edge)


def line(n, cfg):
    """(grid, block) of a one-thread-per-item kernel over n items."""
    return (_blocks(n, cfg.block),), (cfg.block,)


def columns(n, cfg):
    """(grid, block) of a batchnorm column kernel over n features."""
    return (_blocks(n, cfg.bn_columns),), (cfg.bn_columns, cfg.block // cfg.bn_columns)


def strided(n, cfg):
    """(grid, block) of a grid-stride kernel over n items (at most reduce_blocks blocks)."""
    return (min(cfg.reduce_blocks, _blocks(n, cfg.block)),), (cfg.block,)


def configure(kernel, grid, block, shared_bytes=0):
    """``kernel[grid, block]`` (with ``shared_bytes`` of dynamic shared memory), made once
    per launch site of a fit so that a batch only
    calls it. numba-cuda warns (NumbaPerformanceWarning) when it configures a grid of
    fewer than 128 blocks; fastbp's small grids (narrow layers, small batches, the
    update) are deliberate, so that warning is silenced here, once. The simulator
    configures a kernel in place, so there the configuration is applied per call."""
    if numba.config.ENABLE_CUDASIM:
        return functools.partial(_simulated_launch, kernel, grid, block, shared_bytes)
    with quiet_small_grids():
        return kernel[grid, block, 0, shared_bytes]


@contextlib.contextmanager
def quiet_small_grids():
    """A warnings context that ignores numba-cuda's small-grid NumbaPerformanceWarning
    (its message starts with terminal colour codes, hence the leading ``.*``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*Grid size \d+ will likely result in GPU under-utilization")
        yield


def _simulated_launch(kernel, grid, block, shared_bytes, *args):
    kernel[grid, block, 0, shared_bytes](*args)


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

    def __init__(self, sizes, bmax, dtype, batchnorm=None):
        """``batchnorm``: None, or one bool per layer (True: batch-normalized), which adds
        the layer's cached x̂ (``xhats[l]``, bmax × width) and its float64 μ and
        1/√(σ² + ε) (``means[l]``, ``inv_stds[l]``); None for the other layers."""
        sizes = [int(s) for s in sizes]   # Python ints: real numba-cuda rejects NumPy integer shapes
        widths = sizes[1:]
        self.bmax = bmax = int(bmax)
        self.xb = cuda.device_array((bmax, sizes[0]), dtype=dtype)
        self.yb = cuda.device_array((bmax, sizes[-1]), dtype=dtype)
        zs = cuda.device_array(bmax * sum(widths), dtype=dtype)
        acts = cuda.device_array(bmax * sum(widths), dtype=dtype)
        # δ of layer l: ping-pong between two halves as in cpu.backward_pass; δ of the
        # input is never formed, so the halves are as wide as the widest layer
        half = bmax * max(widths)
        deltas = cuda.device_array(2 * half, dtype=dtype)
        self.zs, self.acts = [], []
        offset = 0
        for width in widths:
            self.zs.append(zs[offset:offset + bmax * width].reshape(bmax, width))
            self.acts.append(acts[offset:offset + bmax * width].reshape(bmax, width))
            offset += bmax * width
        n_layers = len(widths)
        self.deltas = [None] * n_layers
        for l in range(n_layers):
            which = (n_layers - 1 - l) % 2
            self.deltas[l] = deltas[which * half:which * half + bmax * widths[l]].reshape(bmax, widths[l])
        self.sums = cuda.to_device(np.zeros(1, dtype=np.float64))     # loss (+ penalty) sum
        self.counts = cuda.to_device(np.zeros(2, dtype=np.int64))     # correct, non-finite
        self.xhats, self.means, self.inv_stds = self._batchnorm_buffers(widths, batchnorm, dtype)

    def _batchnorm_buffers(self, widths, batchnorm, dtype):
        n_layers, bmax = len(widths), self.bmax
        xhats, means, inv_stds = [None] * n_layers, [None] * n_layers, [None] * n_layers
        if batchnorm is None or not any(batchnorm):
            return xhats, means, inv_stds
        normalised = [w for w, on in zip(widths, batchnorm) if on]
        xhat = cuda.device_array(bmax * sum(normalised), dtype=dtype)
        stats = cuda.device_array(2 * sum(normalised), dtype=np.float64)
        offset = unit = 0
        for l in range(n_layers):
            if batchnorm[l]:
                width = widths[l]
                xhats[l] = xhat[offset:offset + bmax * width].reshape(bmax, width)
                means[l] = stats[2 * unit:2 * unit + width]
                inv_stds[l] = stats[2 * unit + width:2 * unit + 2 * width]
                offset += bmax * width
                unit += width
        return xhats, means, inv_stds


class DeviceParameters:
    """θ, gradient, optimizer state and hyper-parameters resident on the device, with
    the step counters (``counters``: int64 [step count, dropout seed, global epoch];
    the gather kernel advances the step, so the batch's launches need no step
    argument), the per-layer keep probabilities of dropout (``keep``, 1: off; the
    output layer's always 1) and the gradient-diagnostics sums (``diagnostics``:
    n_layers × [Σ ‖g‖, Σ ‖ΔW‖/‖W‖] over the epoch's steps, ``layer_sums`` / ``done``
    the update's per-step scratch); ``batchnorm`` (:class:`DeviceBatchNorm` or None)
    and ``bn_layers`` (one bool per layer)."""

    def __init__(self, theta, layout, codes, state1=None, state2=None, keep=None, training=True, batchnorm=None):
        """``training`` False: θ only (forward / evaluate need no gradient or state);
        ``batchnorm``: None or (gamma_offsets, running statistics, momentum) of the network."""
        dtype = theta.dtype
        self.layout = np.asarray(layout)
        self.codes = [int(c) for c in codes]
        n_layers = len(self.codes)
        self.keep = [1.0] * n_layers if keep is None else [float(k) for k in keep]
        self.thresholds = [rng.keep_threshold(k) for k in self.keep]
        self.counters = cuda.to_device(np.zeros(3, dtype=np.int64))
        self.diagnostics = cuda.to_device(np.zeros((n_layers, 2), dtype=np.float64))
        self.layer_sums = cuda.to_device(np.zeros(3 * n_layers, dtype=np.float64))
        self.done = cuda.to_device(np.zeros(1, dtype=np.int64))
        self.theta = cuda.to_device(theta)
        self.weights, self.biases = weight_views(self.theta, self.layout)
        self.batchnorm = None if batchnorm is None else DeviceBatchNorm(self.theta, self.layout, *batchnorm)
        self.bn_layers = [False] * n_layers if batchnorm is None else self.batchnorm.layers
        self.hyper = cuda.to_device(np.zeros(spec.N_HYPER, dtype=np.float64))
        if not training:
            self.grad = self.state1 = self.state2 = self.dweights = self.dbiases = None
            return
        self.grad = cuda.device_array(int(theta.shape[0]), dtype=dtype)
        self.state1 = cuda.to_device(np.zeros_like(theta)) if state1 is None else cuda.to_device(state1)
        self.state2 = cuda.to_device(np.zeros_like(theta)) if state2 is None else cuda.to_device(state2)
        self.dweights, self.dbiases = weight_views(self.grad, self.layout)


class DeviceBatchNorm:
    """Batch normalization's network state on the device (the GPU twin of the network
    part of ``bundles.BatchNorm``): ``layers`` (one bool per layer), per BN layer its γ
    (``gammas[l]``, a view of θ right after β), its running mean and variance
    (``running_means[l]`` / ``running_vars[l]``, float64 views of ``running``, the one
    device copy of ``MLP.bn_running``: every unit's mean, then every unit's variance)
    and a zero bias for its GEMM (u = a·W; β is added by bn_forward); ``momentum``,
    ``eps``."""

    def __init__(self, theta, layout, gamma_offsets, running, momentum, eps=spec.BN_EPS):
        self.running = cuda.to_device(np.ascontiguousarray(running, dtype=np.float64))
        self.momentum, self.eps = float(momentum), float(eps)
        total = self.running.shape[0] // 2
        widths = [int(w) for w in np.asarray(layout)[:, 1]]
        self.no_bias = cuda.to_device(np.zeros(max(widths), dtype=theta.dtype))
        self.layers = [int(g) >= 0 for g in gamma_offsets]
        self.gammas, self.running_means, self.running_vars = [], [], []
        unit = 0
        for width, g_off, on in zip(widths, gamma_offsets, self.layers):
            g_off = int(g_off)
            self.gammas.append(theta[g_off:g_off + width] if on else None)
            self.running_means.append(self.running[unit:unit + width] if on else None)
            self.running_vars.append(self.running[total + unit:total + unit + width] if on else None)
            unit += width


class GradientParts:
    """Where weight_gradient writes its split-K partial gradients. Per parameter block
    (each layer's weights, then its biases) ``splits`` slices of the block's size, one
    after the other; the update (or sum_gradient) adds the slices into ``grad``.
    ``table`` has one int64 row per block: [offset in θ, size, splits, offset in
    ``buffer``, is_weight]. With one slice everywhere the buffer is the gradient itself.

    A batch-normalized layer's second block is [dβ, dγ] (β and γ are adjacent in θ;
    ``update_layout`` on the CPU), one slice written by bn_backward (``dnorms[l]``);
    the bias sums its weight_gradient forms anyway (Σ dL/du, meaningless there) go
    to ``dbiases[l]`` in a scratch buffer (the CPU's ``batchnorm.scratch``)."""

    def __init__(self, params, splits):
        # plain ints throughout: real numba-cuda refuses numpy integers as array shapes
        # (the simulator takes them; the H100 run of 09:37 failed on it)
        splits = [int(s) for s in splits]
        split_any = any(s > 1 for s in splits)
        table, at = [], 0
        for (fan_in, fan_out, w_off, b_off), s, bn in zip(params.layout.tolist(), splits, params.bn_layers):
            second = (b_off, 2 * fan_out, 1) if bn else (b_off, fan_out, s)
            for offset, size, slices, is_weight in ((w_off, fan_in * fan_out, s, 1), (*second, 0)):
                table.append((offset, size, slices, at if split_any else offset, is_weight))
                at += slices * size
        self.splits = list(splits)
        self.buffer = cuda.device_array(int(at), dtype=params.grad.dtype) if split_any else params.grad
        self.table = cuda.to_device(np.array(table, dtype=np.int64))
        scratch_size = max([s * fan_out for (_, fan_out, _, _), s, bn
                            in zip(params.layout.tolist(), splits, params.bn_layers) if bn], default=0)
        scratch = cuda.device_array(int(scratch_size), dtype=params.grad.dtype) if scratch_size else None
        self.dweights, self.dbiases, self.dnorms = [], [], []
        for l, s in enumerate(splits):
            (_, w_size, _, w_at, _), (_, b_size, _, b_at, _) = table[2 * l], table[2 * l + 1]
            self.dweights.append(self.buffer[w_at:w_at + s * w_size].reshape(s, w_size))
            if params.bn_layers[l]:
                self.dbiases.append(scratch[:s * (b_size // 2)].reshape(s, b_size // 2))
                self.dnorms.append(self.buffer[b_at:b_at + b_size])
            else:
                self.dbiases.append(self.buffer[b_at:b_at + s * b_size].reshape(s, b_size))
                self.dnorms.append(None)


def fit_bytes(sizes, n, y_width, batch_size, n_params, dtype, cfg, batchnorm=False, weighted=False):
    """Device bytes a fit allocates: X and Y, the workspace (with ``batchnorm`` the
    hidden layers' x̂ too), θ, gradient, two optimizer states, three divergence backups
    and the split-K gradient slices (or the fused step's per-block slices, where it may
    run: never with ``batchnorm``); ``weighted``: the sample weights (:class:`BatchWeights`)."""
    from . import cuda_fused
    widths = [int(w) for w in sizes[1:]]
    splits = [splits_for(batch_size, fan_in, fan_out, cfg) for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
    parts = sum((s * (fan_in + 1) * fan_out) if s > 1 else 0
                for s, fan_in, fan_out in zip(splits, sizes[:-1], sizes[1:]))
    if cfg.fused != "never" and cuda_fused.why_not(sizes, dtype, cfg, batchnorm=batchnorm) is None:
        parts = max(parts, cuda_fused.splits(sizes, batch_size, dtype, cfg)[0] * n_params)
    work = batch_size * (sizes[0] + sizes[-1] + 2 * sum(widths) + 2 * max(widths)
                         + (sum(widths[:-1]) if batchnorm else 0))
    weights = 8 * (n + batch_size) if weighted else 0
    return np.dtype(dtype).itemsize * (n * (sizes[0] + y_width) + work + 7 * n_params + parts) + 8 * n + weights


def workspace(params, n_features, bmax):
    """A DeviceWorkspace for the network of ``params`` on ``n_features`` inputs."""
    return DeviceWorkspace([n_features, *[w.shape[1] for w in params.weights]], bmax, params.theta.dtype,
                           params.bn_layers)


def check_free_memory(needed, what):
    """Raise MemoryError naming ``what`` if ``needed`` bytes exceed the device's free memory."""
    free = cuda.current_context().get_memory_info()[0]
    if needed > free:
        raise MemoryError(f"{what} needs about {needed / 2**20:,.0f} MiB of GPU memory but {free / 2**20:,.0f} MiB "
                          "are free; use a smaller batch_size or fewer rows, or fit on the CPU")


# --- host drivers: launch sequences -------------------------------------------------------------
#
# The pass functions return lists of (configured kernel, arguments); ``launch`` issues
# them. A fit builds the lists for its two batch shapes (full and last) once, so a
# batch is a replay of prebuilt launches with no device allocation and no
# synchronisation. Launches per training step of an L-layer network: 1 gather, L
# forward, 1 output delta (softmax, loss, δ^L and hit count together), L weight
# gradients (bias gradient included), L − 1 delta propagations, 1 update (plus 1
# norm/penalty reduction with clip_norm, l1 or l2): 3L + 2; with batchnorm 2 more per
# hidden layer (bn_forward after its GEMM, bn_backward before its weight gradient):
# 5L, or 5L + 1 with the reduction. Sample weights add 1 (batch_weights, first):
# 3L + 3 (fused: 3), and a batch whose weights sum to 0 launches nothing.

#: forward_layer's code for a batch-normalized layer's GEMM: the softmax epilogue
#: stores z (= a·W with the zero bias) and stops; bn_forward applies the activation
Z_ONLY = SOFTMAX
#: batchnorm modes of bn_forward: running statistics (inference), batch statistics
#: (a gradient), batch statistics and an update of the running ones (training)
BN_RUNNING, BN_BATCH, BN_TRAIN = 0, 1, 2


def launch(launches):
    for run, args in launches:
        run(*args)


def dropout_args(params, l, dropout):
    """(keep, threshold, counters, layer) of layer l's forward_layer / of the
    backprop_delta into it: keep 1 (off) unless ``dropout``."""
    keep = params.keep[l] if dropout else 1.0
    return keep, params.thresholds[l] if dropout else rng.keep_threshold(1.0), params.counters, l


def forward_pass(K, params, work, x, rows, softmax=True, dropout=False, bn_mode=BN_RUNNING):
    """Launches of the forward pass of ``rows`` rows of ``x`` into work.zs/work.acts;
    a softmax output layer stores z only unless ``softmax`` (output_delta computes
    the softmax when the loss follows); ``dropout``: training, with params.keep;
    ``bn_mode`` the statistics batch-normalized layers use (``BN_*``)."""
    cfg = K.config
    launches = []
    a_prev = x
    for l, code in enumerate(params.codes):
        z, a = work.zs[l], work.acts[l]
        kernel, grid, block = gemm(K, "forward_layer", rows, z.shape[1])
        normalised = params.bn_layers[l]
        bias, gemm_code = (params.batchnorm.no_bias[:z.shape[1]], Z_ONLY) if normalised else (params.biases[l], code)
        launches.append((configure(kernel, grid, block), (a_prev, params.weights[l], bias, gemm_code, rows,
                                                          z, a, *dropout_args(params, l, dropout and not normalised))))
        if normalised:
            launches.append(bn_forward_launch(K, params, work, l, rows, bn_mode, dropout))
        if code == SOFTMAX and softmax:
            launches.append((configure(K.softmax_rows, *line(rows, cfg)), (z, rows, a)))
        a_prev = a
    return launches


def bn_forward_launch(K, params, work, l, rows, bn_mode, dropout):
    """The bn_forward launch of batch-normalized layer l over ``rows`` rows of work.zs[l]."""
    bn = params.batchnorm
    z = work.zs[l]
    return (configure(K.bn_forward, *columns(z.shape[1], K.config)),
            (z, work.xhats[l], bn.gammas[l], params.biases[l], work.means[l], work.inv_stds[l], bn.running_means[l],
             bn.running_vars[l], bn.eps, bn.momentum, bn_mode, rows, work.acts[l], params.codes[l],
             *dropout_args(params, l, dropout)))


def bn_backward_launch(K, params, parts, work, l, rows):
    """The bn_backward launch of batch-normalized layer l: δ^l becomes dL/du, [dβ, dγ]
    into parts.dnorms[l]."""
    delta = work.deltas[l]
    return (configure(K.bn_backward, *columns(delta.shape[1], K.config)),
            (delta, work.xhats[l], params.batchnorm.gammas[l], work.inv_stds[l], rows, parts.dnorms[l]))


def output_launch(K, params, work, y, rows, loss_code, inv_batch, weighting=None):
    """The output_delta launch: softmax (if the output is softmax), loss sum, δ^L scaled
    by ``inv_batch`` and hit count of ``rows`` rows; ``weighting``: None, or the rows'
    sample weights and [1/Σw, B/Σw] (device arrays; see ``row_factors``)."""
    out = len(params.codes) - 1
    row_weights, batch_scalars = (None, None) if weighting is None else weighting
    return (configure(K.output_delta, *line(rows, K.config)),
            (work.zs[out], work.acts[out], y, params.codes[out], loss_code, rows, inv_batch, row_weights,
             batch_scalars, work.deltas[out], work.sums, work.counts))


def backward_pass(K, params, parts, work, x, y, rows, loss_code, dropout=False, bn_mode=BN_BATCH, weighting=None):
    """Launches of forward, loss and backward for ``rows`` rows of (x, y): the split-K
    slices of the batch-mean data-loss gradient land in ``parts``, the summed loss in
    work.sums[0] and the correct count in work.counts[0]; ``dropout``: training with
    the masks of params.keep (a full-batch gradient is taken without); batchnorm with
    the batch statistics (``bn_mode`` BN_TRAIN also updates the running ones; they are
    unweighted, as on the CPU); ``weighting``: sample weights (:func:`output_launch`)."""
    launches = forward_pass(K, params, work, x, rows, softmax=False, dropout=dropout, bn_mode=bn_mode)
    launches.append(output_launch(K, params, work, y, rows, loss_code, 1.0 / rows, weighting))
    for l in range(len(params.codes) - 1, -1, -1):
        a_prev = work.acts[l - 1] if l > 0 else x
        fan_in, fan_out = params.weights[l].shape
        if params.bn_layers[l]:
            launches.append(bn_backward_launch(K, params, parts, work, l, rows))
        kernel, grid, block = gemm(K, "weight_gradient", fan_in, fan_out, parts.splits[l])
        launches.append((configure(kernel, grid, block),
                         (a_prev, work.deltas[l], rows, parts.dweights[l], parts.dbiases[l])))
        if l > 0:
            kernel, grid, block = gemm(K, "backprop_delta", rows, fan_in)
            launches.append((configure(kernel, grid, block),
                             (work.deltas[l], params.weights[l], work.zs[l - 1], work.acts[l - 1],
                              params.codes[l - 1], rows, work.deltas[l - 1], *dropout_args(params, l - 1, dropout))))
    return launches


def update_launches(K, params, parts, work, rows, reduce, opt_code):
    """The launches of one update: the norm/penalty reduction if ``reduce`` (clip_norm,
    l1 or l2 set), then update_params (step count and hyper-parameters on the device)."""
    cfg = K.config
    grid, block = strided(params.theta.shape[0], cfg)
    partials = cuda.device_array(2 * int(grid[0]), dtype=np.float64)
    reductions = [(configure(K.clip_partials, grid, block),
                   (params.theta, parts.buffer, parts.table, params.hyper, partials))] if reduce else []
    update = (configure(K.update_params, grid, block),
              (params.theta, params.grad, parts.buffer, parts.table, params.state1, params.state2, opt_code,
               params.hyper, params.counters, reduce, partials, rows, work.sums, params.layer_sums,
               params.diagnostics, params.done))
    return [*reductions, update]


class BatchWeights:
    """The sample weights of a fit: ``weights`` (float64, one per training row) copied to
    the device once; per batch :func:`batch_weights` gathers the batch's into ``rows``
    and writes ``scalars`` = [1/Σw, B/Σw] and params.hyper from ``epoch_hyper`` (the
    epoch's hyper-parameters, uploaded there instead of to params.hyper). The host copy
    finds the batches whose weights sum to 0, which are skipped as on the CPU."""

    def __init__(self, weights, bmax):
        self.host = np.ascontiguousarray(weights, dtype=np.float64)
        self.weights = cuda.to_device(self.host)
        self.rows = cuda.device_array(int(bmax), dtype=np.float64)
        self.scalars = cuda.device_array(2, dtype=np.float64)
        self.epoch_hyper = cuda.to_device(np.zeros(spec.N_HYPER, dtype=np.float64))

    def batches(self, perm, first, stop, batch_size):
        """Indices of batches ``first``..``stop``-1 of the permutation ``perm`` whose
        weights do not all vanish (weights are ≥ 0: Σw > 0 exactly when the largest is)."""
        if stop <= first:
            return []
        starts = np.arange(first, stop) * batch_size
        largest = np.maximum.reduceat(self.host[perm[first * batch_size:stop * batch_size]], starts - starts[0])
        return [int(b) for b in np.flatnonzero(largest > 0) + first]


class WeightedStart:
    """A batch's first launches with sample weights, called as ``gather_batch`` is:
    :func:`batch_weights`, then ``gather`` (gather_batch, or the fused step)."""

    def __init__(self, K, params, weights, gather):
        self.weigh = configure(K.batch_weights, (1,), (K.config.block,))
        self.fixed = (weights.rows, weights.epoch_hyper, params.hyper, weights.scalars)
        self.weights, self.gather = weights.weights, gather

    def __call__(self, X, Y, perm, start, rows, xb, yb, counters):
        self.weigh(self.weights, perm, start, rows, *self.fixed)
        self.gather(X, Y, perm, start, rows, xb, yb, counters)


class EpochPlan:
    """The launch sequences of one fit: X, Y and the workspace on the device, the
    split-K gradient slices and the prebuilt launches of a full and of the (possibly
    partial) last batch; ``dropout``: train with the masks of params.keep; ``weights``
    (host float64, one per row, or None): sample weights (:class:`BatchWeights`, one
    more launch per step)."""

    def __init__(self, K, params, X, Y, batch_size, loss_code, opt_code, reduce, dropout=False, weights=None):
        self.K, self.params = K, params
        self.X, self.Y = X, Y
        self.n = n = X.shape[0]
        self.batch_size = batch_size
        self.n_batches = -(-n // batch_size)
        from . import cuda_fused   # here: it imports this module
        sizes = [X.shape[1], *[w.shape[1] for w in params.weights]]
        self.work = work = workspace(params, X.shape[1], batch_size)
        # narrow nets: one fused launch per step instead of gather + 3L + 1 (kernels/cuda_fused.py)
        self.fused = cuda_fused.chosen(sizes, params.theta.dtype, K.config, dropout, batchnorm=any(params.bn_layers))
        self.parts = parts = GradientParts(params, cuda_fused.splits(sizes, batch_size, params.theta.dtype, K.config)
                                           if self.fused else [splits_for(batch_size, *w.shape, K.config)
                                                               for w in params.weights])
        self.perm = cuda.device_array(int(n), dtype=np.int64)
        self.weights = None if weights is None else BatchWeights(weights, batch_size)
        weighting = None if weights is None else (self.weights.rows, self.weights.scalars)
        self.shapes = {}
        for rows in {batch_size, n - (n - 1) // batch_size * batch_size}:
            if self.fused:   # called as gather_batch is; nothing else before the update
                gather, steps = cuda_fused.FusedStep(params, parts, work, loss_code, sizes, batch_size, weighting), []
            else:
                gather = configure(K.gather_batch, *line(rows * (X.shape[1] + Y.shape[1]), K.config))
                steps = backward_pass(K, params, parts, work, work.xb, work.yb, rows, loss_code, dropout, BN_TRAIN,
                                      weighting)
            if weights is not None:
                gather = WeightedStart(K, params, self.weights, gather)
            self.shapes[rows] = (gather, steps + update_launches(K, params, parts, work, rows, reduce, opt_code))
        self.check = configure(K.count_nonfinite, *strided(params.theta.shape[0], K.config))


def train_batches(plan, perm, first, stop):
    """Batches ``first``..``stop``-1 of ``plan`` over the host permutation ``perm``
    (uploaded when ``first`` is 0, which also clears the epoch's sums); the step count,
    dropout seed and epoch are in plan.params.counters. The epoch's Σ b·(loss_b +
    penalty_b) accumulates in plan.work.sums[0], the correct count in
    plan.work.counts[0]; after the last batch the non-finite count of θ and of the
    optimizer's two states goes to plan.work.counts[1] (an Adam/RMSprop second moment
    that overflowed to inf freezes θ: divergence, as on the CPU). With sample weights
    a batch's loss is (B/Σw)·Σ w_i ℓ_i and a batch whose weights sum to 0 is skipped (no
    launch, no step). Returns the number of steps taken."""
    params, work = plan.params, plan.work
    if first == 0:
        plan.perm.copy_to_device(perm)
        work.sums.copy_to_device(np.zeros(1, dtype=np.float64))
        work.counts.copy_to_device(np.zeros(2, dtype=np.int64))
    n, batch_size = plan.n, plan.batch_size
    X, Y, perm_d, counters = plan.X, plan.Y, plan.perm, params.counters
    batches = range(first, stop) if plan.weights is None else plan.weights.batches(perm, first, stop, batch_size)
    for b in batches:
        start = b * batch_size
        rows = min(batch_size, n - start)
        gather, steps = plan.shapes[rows]
        gather(X, Y, perm_d, start, rows, work.xb, work.yb, counters)
        launch(steps)
    if stop == plan.n_batches:
        for values in (params.theta, params.state1, params.state2):
            plan.check(values, work.counts)
    return len(batches)


def loss_and_gradient(K, params, X, Y, loss_code, weights=None):
    """Full-batch mean data loss and its gradient (left in params.grad); with ``weights``
    (host float64, one per row) the weighted mean Σ w_i ℓ_i / Σw and its gradient."""
    rows = X.shape[0]
    work = workspace(params, X.shape[1], rows)
    parts = GradientParts(params, [splits_for(rows, *w.shape, K.config) for w in params.weights])
    weighting, total = None, rows
    if weights is not None:   # δ times w_i/Σw, the loss sum Σ w_i ℓ_i
        total = float(np.sum(weights))
        weighting = (cuda.to_device(np.ascontiguousarray(weights, dtype=np.float64)),
                     cuda.to_device(np.array([1.0 / total, 1.0])))
    launches = backward_pass(K, params, parts, work, X, Y, rows, loss_code, weighting=weighting)
    if parts.buffer is not params.grad:
        launches.append((configure(K.sum_gradient, *strided(params.theta.shape[0], K.config)),
                         (parts.buffer, parts.table, params.grad)))
    launch(launches)
    return float(work.sums.copy_to_host()[0]) / total


def predict(K, params, X, out, chunk):
    """Network output for every row of the device array X into the device array out,
    in chunks of ``chunk`` rows."""
    n = X.shape[0]
    work = workspace(params, X.shape[1], chunk)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        launch(forward_pass(K, params, work, X[start:start + rows], rows))
        out[start:start + rows].copy_to_device(work.acts[-1][:rows])
    return out


def inference_chunk(sizes, n, dtype, budget=1 << 28):
    """Rows per predict / evaluate launch sequence: as many as ~``budget`` bytes of
    workspace (z, a and δ of every layer) hold, at least 1024, at most n."""
    per_row = np.dtype(dtype).itemsize * (sizes[0] + sizes[-1] + 4 * sum(sizes[1:]))
    return int(max(1, min(n, max(1024, budget // per_row))))


def evaluate(K, params, X, Y, loss_code, chunk, work=None, weights=None):
    """Summed data loss and correct count over every row (no update); ``work`` (a
    DeviceWorkspace of at least ``chunk`` rows) is reused if given; with ``weights`` (a
    float64 device array, one per row) the loss sum is Σ w_i ℓ_i."""
    unit = None if weights is None else cuda.to_device(np.ones(2))   # [1/Σw, B/Σw] → 1: no scaling
    n = X.shape[0]
    if work is None:
        work = workspace(params, X.shape[1], chunk)
    else:
        work.sums.copy_to_device(np.zeros(1, dtype=np.float64))
        work.counts.copy_to_device(np.zeros(2, dtype=np.int64))
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        x, y = X[start:start + rows], Y[start:start + rows]
        launches = forward_pass(K, params, work, x, rows, softmax=False)
        weighting = None if weights is None else (weights[start:start + rows], unit)
        launches.append(output_launch(K, params, work, y, rows, loss_code, 1.0, weighting))
        launch(launches)
    return float(work.sums.copy_to_host()[0]), int(work.counts.copy_to_host()[0])
