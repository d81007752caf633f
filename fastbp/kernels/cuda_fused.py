"""The fully fused CUDA training step for narrow networks (every width ≤ 128), in the
spirit of NVIDIA tiny-cuda-nn's ``FullyFusedMLP``; the per-layer kernels are in
``kernels/cuda.py``.

One kernel, :func:`train_step`, does a whole batch's forward pass, loss, output delta
and backward pass: each block takes a tile of ``R`` samples (gathered through the
device permutation straight from X), keeps the activations of every layer of that
tile in shared memory, walks the layers forward, turns the output rows into δ^L in
place, and walks back: per layer it adds a^{l-1ᵀ}·δ^l and Σ δ^l into its own slice of
the weight-gradient partials (``cuda.GradientParts`` with one slice per block) and
overwrites a^{l-1} with δ^{l-1} = (δ^l·W^{lᵀ}) ⊙ f'(a^{l-1}) (a^{l-1} is dead once
its weight gradient is taken). Blocks loop over tiles, so the grid is at most
``CudaConfig.fused_blocks``; the update kernel of ``kernels/cuda.py`` (``update_params``,
with ``clip_partials`` for clipping / L1 / L2) sums the slices and steps, as it sums
the split-K slices of the per-layer path. A training step is 2 launches (3 with
clip_norm / L1 / L2) whatever the depth, against 3L + 2 (3L + 3) per layer; sample
weights add ``cuda.batch_weights`` before it (3, or 4).

Arithmetic: FP32 (or FP64) FMAs on CUDA cores — Numba has no WMMA / tensor-core
intrinsics, so unlike tiny-cuda-nn the weights are not staged in shared memory as
half-precision fragments: each thread computes ``fused_micro × fused_micro`` outputs
of a product, the activations coming from shared memory and the weights from global
memory through L1 (a layer's weights are ≤ 128 × 128 and read by every tile).
Shared memory is dynamic: R · Σ_l width_l elements, R a multiple of ``fused_micro`` ≤
``fused_rows`` that keeps it within 48 KiB (the default per-block limit) and keeps the
threads busy (:func:`tile_rows`).

Applies (:func:`why_not`) when every width, input and output included, is ≤
``fused_max_width`` and a tile of ``fused_micro`` rows fits; dropout (and any other
per-layer mode: batch normalization, checkpointing's memory saving) runs the per-layer
path. ``CudaConfig.fused`` / ``FASTBP_CUDA_FUSED`` force either path. Its speed has
not been measured on a GPU yet (``benchmarks/gpu_check.py`` times both paths).
"""

import functools
import math
import types

import numba
import numpy as np
from numba import cuda

from .. import spec
from . import cuda as cuda_kernels
from . import cuda_config

IDENTITY, SIGMOID, SOFTMAX = spec.IDENTITY, spec.SIGMOID, spec.SOFTMAX
MSE, BCE, CE, POISSON = spec.MSE, spec.BINARY_CROSS_ENTROPY, spec.CROSS_ENTROPY, spec.POISSON

#: the kernels of this module (the PTX report compiles these)
KERNEL_NAMES = ("train_step",)


def build_kernels(dtype, cfg):
    """Python function of :func:`train_step` for ``dtype`` with ``cfg``'s fused_micro and
    fused_threads baked in (not yet ``cuda.jit``-ed: ``compile_ptx`` takes it too)."""
    DT = numba.float32 if np.dtype(dtype) == np.float32 else numba.float64
    F64 = numba.float64
    MICRO, THREADS = cfg.fused_micro, cfg.fused_threads
    shared_functions = cuda_kernels.build_kernels(dtype, cfg)
    activate, times_derivative = shared_functions.activate, shared_functions.times_derivative
    row_factors = shared_functions.row_factors
    device = cuda.jit(device=True)

    # Every product below: thread item e → a group of MICRO rows (r0 …) and MICRO
    # columns strided by the number of column groups (j0, j0 + groups, …), so that
    # consecutive threads read consecutive weights (coalesced); reads past an edge are
    # clamped to the last row/column and never stored.

    @device
    def load_inputs(shared, X, perm, first, valid, rows, tid):
        """The tile's input rows X[perm[first + r]] into shared[0 : rows·width] (zeros
        past the ``valid`` rows of a partial tile)."""
        width = X.shape[1]
        for e in range(tid, rows * width, THREADS):
            r = e // width
            shared[e] = X[perm[first + r], e - r * width] if r < valid else DT(0)

    @device
    def forward_layer(shared, a_at, z_at, rows, theta, w_at, b_at, fan_in, fan_out, code, tid):
        """shared z/a of the layer (rows × fan_out at z_at) = f(a·W + b), a the rows ×
        fan_in activations at a_at, W and b in θ at w_at, b_at."""
        acc = cuda.local.array((MICRO, MICRO), DT)
        weights = cuda.local.array(MICRO, DT)
        groups = (fan_out + MICRO - 1) // MICRO
        for e in range(tid, rows // MICRO * groups, THREADS):
            r0 = e // groups * MICRO
            j0 = e - e // groups * groups
            for m in range(MICRO):
                for c in range(MICRO):
                    acc[m, c] = DT(0)
            for k in range(fan_in):
                for c in range(MICRO):
                    weights[c] = theta[w_at + k * fan_out + min(j0 + c * groups, fan_out - 1)]
                for m in range(MICRO):
                    a = shared[a_at + (r0 + m) * fan_in + k]
                    for c in range(MICRO):
                        acc[m, c] += a * weights[c]
            for c in range(MICRO):
                j = j0 + c * groups
                if j < fan_out:
                    for m in range(MICRO):
                        shared[z_at + (r0 + m) * fan_out + j] = activate(acc[m, c] + theta[b_at + j], code)

    @device
    def output_rows(shared, at, rows, valid, width, Y, perm, first, out_code, loss_code, inv_batch, row_weights,
                    batch_scalars, tile_at, tid):
        """The output rows (z^L at ``at``) become δ^L in place, as ``cuda.output_delta``
        computes it (softmax, loss, δ scaled by ``inv_batch``, or with sample weights by
        the factors of ``cuda.row_factors`` for batch row ``tile_at`` + r); rows past
        ``valid`` get δ = 0. Returns this thread's (Σ loss, correct count)."""
        total = F64(0)
        hits = 0
        for r in range(tid, rows, THREADS):
            row = at + r * width
            if r >= valid:
                for j in range(width):
                    shared[row + j] = DT(0)
                continue
            target = perm[first + r]
            top = shared[row]
            for j in range(1, width):
                top = max(top, shared[row + j])
            s = DT(0)
            for j in range(width):
                s += math.exp(shared[row + j] - top)
            inv = DT(1) / s
            log_s = math.log(s)
            factor, weight = row_factors(row_weights, batch_scalars, tile_at + r, inv_batch)
            scale = DT(2 * factor / width) if loss_code == MSE else DT(factor)
            dot = DT(0)
            best_a = -math.inf
            best_t = -math.inf
            hit_a = hit_t = 0
            all_right = 1
            for j in range(width):   # loss, hit and (MSE through softmax) Σ g·a
                z = shared[row + j]
                t = Y[target, j]
                a = math.exp(z - top) * inv if out_code == SOFTMAX else activate(z, out_code)
                if loss_code == CE:
                    total -= weight * F64(t * (z - top - log_s))
                elif loss_code == BCE:
                    total += weight * F64(max(z, DT(0)) - z * t + math.log1p(math.exp(-abs(z))))
                elif loss_code == POISSON:   # a = e^z
                    total += weight * F64(a - t * z - t)
                    if t > 0:
                        total += weight * F64(t * math.log(t))
                else:
                    e = a - t
                    total += weight * (F64(e * e) / width)
                    dot += scale * e * a
                if a > best_a:
                    best_a, hit_a = a, j
                if t > best_t:
                    best_t, hit_t = t, j
                if (a > 0.5) != (t > 0.5):
                    all_right = 0
            if out_code == SOFTMAX:
                hits += 1 if hit_a == hit_t else 0
            elif out_code == SIGMOID:
                hits += all_right
            for j in range(width):   # δ^L over z^L
                z = shared[row + j]
                t = Y[target, j]
                a = math.exp(z - top) * inv if out_code == SOFTMAX else activate(z, out_code)
                if loss_code != MSE:
                    d = (a - t) * scale
                elif out_code == SIGMOID:
                    d = scale * (a - t) * (a * (DT(1) - a))
                elif out_code == SOFTMAX:
                    d = a * (scale * (a - t) - dot)
                else:
                    d = scale * (a - t)
                shared[row + j] = d
        return total, hits

    @device
    def gradient_layer(shared, a_at, d_at, valid, parts, w_part, b_part, fan_in, fan_out, overwrite, tid):
        """This block's slice of dW (at ``w_part`` in ``parts``, fan_in × fan_out) and db
        (at ``b_part``) += a^{l-1ᵀ}·δ^l and Σ δ^l over the tile's ``valid`` rows
        (= instead of += when ``overwrite``: the block's first tile)."""
        acc = cuda.local.array((MICRO, MICRO), DT)
        bias = cuda.local.array(MICRO, DT)
        deltas = cuda.local.array(MICRO, DT)
        groups = (fan_out + MICRO - 1) // MICRO
        for e in range(tid, (fan_in + MICRO - 1) // MICRO * groups, THREADS):
            k0 = e // groups * MICRO
            j0 = e - e // groups * groups
            for m in range(MICRO):
                bias[m] = DT(0)
                for c in range(MICRO):
                    acc[m, c] = DT(0)
            for r in range(valid):
                for c in range(MICRO):
                    deltas[c] = shared[d_at + r * fan_out + min(j0 + c * groups, fan_out - 1)]
                    bias[c] += deltas[c]
                for m in range(MICRO):
                    a = shared[a_at + r * fan_in + min(k0 + m, fan_in - 1)]
                    for c in range(MICRO):
                        acc[m, c] += a * deltas[c]
            for c in range(MICRO):
                j = j0 + c * groups
                if j < fan_out:
                    for m in range(MICRO):
                        k = k0 + m
                        if k < fan_in:
                            q = w_part + k * fan_out + j
                            parts[q] = acc[m, c] if overwrite else parts[q] + acc[m, c]
                    if k0 == 0:
                        parts[b_part + j] = bias[c] if overwrite else parts[b_part + j] + bias[c]

    @device
    def backprop_layer(shared, d_at, a_at, rows, theta, w_at, fan_in, fan_out, code, tid):
        """a^{l-1} (rows × fan_in at a_at) becomes δ^{l-1} = (δ^l·Wᵀ) ⊙ f'(a^{l-1}) in
        place: each output is read (for f') and written by its own thread only, and the
        product reads δ^l (at d_at) and W."""
        acc = cuda.local.array((MICRO, MICRO), DT)
        weights = cuda.local.array(MICRO, DT)
        groups = (fan_in + MICRO - 1) // MICRO
        for e in range(tid, rows // MICRO * groups, THREADS):
            r0 = e // groups * MICRO
            k0 = e - e // groups * groups
            for m in range(MICRO):
                for c in range(MICRO):
                    acc[m, c] = DT(0)
            for j in range(fan_out):
                for c in range(MICRO):
                    weights[c] = theta[w_at + min(k0 + c * groups, fan_in - 1) * fan_out + j]
                for m in range(MICRO):
                    d = shared[d_at + (r0 + m) * fan_out + j]
                    for c in range(MICRO):
                        acc[m, c] += d * weights[c]
            for c in range(MICRO):
                k = k0 + c * groups
                if k < fan_in:
                    for m in range(MICRO):
                        p = a_at + (r0 + m) * fan_in + k
                        a = shared[p]
                        shared[p] = times_derivative(acc[m, c], a, a, code)   # f' from a: sign(a) = sign(z)

    def train_step(X, Y, perm, start, rows, theta, layout, codes, loss_code, tile_rows, parts, table, sums, counts,
                   counters, row_weights, batch_scalars):
        """Forward, loss, δ^L and backward of the batch perm[start : start + rows] of (X, Y):
        block b takes tiles b, b + gridDim.x, … of ``tile_rows`` rows and leaves its
        slice b of the batch-mean gradient in ``parts`` (layout of ``table``, see
        ``cuda.GradientParts``; zeros where it had no tile); adds the summed loss to
        sums[0], the correct count to counts[0] and 1 to the step count counters[0].
        ``layout``: per layer [fan_in, fan_out, weight offset, bias offset] in θ;
        ``codes``: per-layer activation codes; sample weights: ``row_weights`` (the
        batch's, gathered by ``cuda.batch_weights``) and ``batch_scalars`` (None without;
        see ``cuda.row_factors``). Dynamic shared memory: tile_rows · Σ widths elements
        (:func:`shared_bytes`); block (fused_threads,)."""
        shared = cuda.shared.array(0, DT)
        tid = cuda.threadIdx.x
        block = cuda.blockIdx.x
        n_layers = layout.shape[0]
        out_code = codes[n_layers - 1]
        inv_batch = 1.0 / rows
        if block == 0 and tid == 0:
            counters[0] += 1
        total = F64(0)
        hits = 0
        overwrite = True
        for tile in range(block, (rows + tile_rows - 1) // tile_rows, cuda.gridDim.x):
            first = start + tile * tile_rows
            valid = min(tile_rows, rows - tile * tile_rows)
            load_inputs(shared, X, perm, first, valid, tile_rows, tid)
            cuda.syncthreads()
            at = 0
            for l in range(n_layers):
                fan_in = layout[l, 0]
                code = codes[l] if l < n_layers - 1 else IDENTITY   # the output's f: output_rows
                forward_layer(shared, at, at + tile_rows * fan_in, tile_rows, theta, layout[l, 2], layout[l, 3],
                              fan_in, layout[l, 1], code, tid)
                at += tile_rows * fan_in
                cuda.syncthreads()
            loss, hit = output_rows(shared, at, tile_rows, valid, layout[n_layers - 1, 1], Y, perm, first, out_code,
                                    loss_code, inv_batch, row_weights, batch_scalars, first - start, tid)
            total += loss
            hits += hit
            cuda.syncthreads()
            for l in range(n_layers - 1, -1, -1):
                fan_in = layout[l, 0]
                fan_out = layout[l, 1]
                a_at = at - tile_rows * fan_in
                gradient_layer(shared, a_at, at, valid, parts, table[2 * l, 3] + block * fan_in * fan_out,
                               table[2 * l + 1, 3] + block * fan_out, fan_in, fan_out, overwrite, tid)
                cuda.syncthreads()
                if l > 0:
                    backprop_layer(shared, at, a_at, tile_rows, theta, layout[l, 2], fan_in, fan_out, codes[l - 1],
                                   tid)
                    cuda.syncthreads()
                at = a_at
            overwrite = False
        if overwrite:   # no tile for this block (a short last batch): its slice is zero
            for b in range(table.shape[0]):
                size = table[b, 1]
                for q in range(tid, size, THREADS):
                    parts[table[b, 3] + block * size + q] = DT(0)
        if hits:
            cuda.atomic.add(counts, 0, hits)
        if total != 0:
            cuda.atomic.add(sums, 0, total)

    return types.SimpleNamespace(dtype=np.dtype(dtype), config=cfg, train_step=train_step)


@functools.lru_cache(maxsize=None)
def _compiled(dtype_name, cfg):
    functions = build_kernels(dtype_name, cfg)
    for name in KERNEL_NAMES:
        setattr(functions, name, cuda.jit(getattr(functions, name)))
    return functions


def kernels(dtype):
    """The ``cuda.jit`` fused kernel for ``dtype`` with the current ``cuda_config.config``
    (builds cached by the sizes baked into them)."""
    cfg = cuda_config.config
    return types.SimpleNamespace(**{**vars(_compiled(np.dtype(dtype).name, cfg.baked())), "config": cfg})


# --- when it applies ---------------------------------------------------------------------------


def tile_rows(sizes, dtype, cfg):
    """Rows of a block's tile: a multiple of fused_micro ≤ fused_rows whose activations
    (every layer's, input included) fit STATIC_SHARED_LIMIT bytes; 0 if not even
    fused_micro rows do. Among those, the one with the most rows × busy threads in the
    widest layer's products (R / micro · ⌈width / micro⌉ items on fused_threads threads:
    width 128 in float32 takes 16 rows, one full round, rather than 20, which leave 3 of 4
    warps idle in a second round)."""
    fits = cuda_config.STATIC_SHARED_LIMIT // (sum(int(s) for s in sizes) * np.dtype(dtype).itemsize)
    micro, threads = cfg.fused_micro, cfg.fused_threads
    groups = -(-max(int(s) for s in sizes) // micro)

    def busy_rows(rows):
        items = rows // micro * groups
        return rows * items / (-(-items // threads) * threads)

    candidates = range(micro, min(cfg.fused_rows, fits) + 1, micro)
    return max(candidates, key=busy_rows, default=0)


def shared_bytes(sizes, rows, dtype):
    """Dynamic shared memory of a fused block with a tile of ``rows`` rows."""
    return int(rows) * sum(int(s) for s in sizes) * np.dtype(dtype).itemsize


def why_not(sizes, dtype, cfg, dropout=False, batchnorm=False):
    """Why the fused step cannot train this network (a sentence), or None if it can."""
    if dropout or batchnorm:
        return f"{'dropout' if dropout else 'batch normalization'} runs the per-layer kernels"
    if max(sizes) > cfg.fused_max_width:
        return f"a width of {max(sizes)} exceeds fused_max_width={cfg.fused_max_width}"
    if tile_rows(sizes, dtype, cfg) < 1:
        return (f"{cfg.fused_micro} rows of activations ({shared_bytes(sizes, cfg.fused_micro, dtype)} B) exceed "
                f"{cuda_config.STATIC_SHARED_LIMIT} B of shared memory")
    return None


def chosen(sizes, dtype, cfg, dropout=False, batchnorm=False):
    """True if a fit runs the fused step: where it applies unless ``cfg.fused`` is
    "never"; "always" raises ValueError (before anything is allocated) where it cannot."""
    if cfg.fused == "never":
        return False
    reason = why_not(sizes, dtype, cfg, dropout, batchnorm)
    if reason is not None and cfg.fused == "always":
        raise ValueError(f"CudaConfig.fused='always' (FASTBP_CUDA_FUSED) but the fused CUDA step cannot train this "
                         f"network: {reason}")
    return reason is None


def blocks(batch_size, rows, cfg):
    """Fused blocks of a step (one gradient slice each): one per tile, at most fused_blocks."""
    return max(1, min(cfg.fused_blocks, -(-int(batch_size) // int(rows))))


def splits(sizes, batch_size, dtype, cfg):
    """The per-layer slice counts of ``cuda.GradientParts`` for the fused step: one slice
    per block, every layer."""
    return [blocks(batch_size, tile_rows(sizes, dtype, cfg), cfg)] * (len(sizes) - 1)


class FusedStep:
    """The fused launch of one fit, called as ``cuda.gather_batch`` is (so
    ``cuda.train_batches`` replays it unchanged): X, Y, perm, start, rows, then the
    per-layer path's batch buffers (unused) and the counters."""

    def __init__(self, params, parts, work, loss_code, sizes, batch_size, weighting=None):
        """``weighting``: None, or the batch's sample weights and [1/Σw, B/Σw] on the
        device (``cuda.BatchWeights``)."""
        F = kernels(params.theta.dtype)
        cfg = F.config
        self.tile_rows = tile_rows(sizes, params.theta.dtype, cfg)
        grid = blocks(batch_size, self.tile_rows, cfg)
        assert all(s == grid for s in parts.splits), (parts.splits, grid)
        self.run = cuda_kernels.configure(F.train_step, (grid,), (cfg.fused_threads,),
                                          shared_bytes(sizes, self.tile_rows, params.theta.dtype))
        self.layout = cuda.to_device(np.ascontiguousarray(params.layout, dtype=np.int64))
        self.codes = cuda.to_device(np.array(params.codes, dtype=np.int64))
        self.fixed = (params.theta, self.layout, self.codes, int(loss_code), self.tile_rows, parts.buffer, parts.table,
                      work.sums, work.counts)
        self.weighting = (None, None) if weighting is None else weighting

    def __call__(self, X, Y, perm, start, rows, xb, yb, counters):
        self.run(X, Y, perm, start, rows, *self.fixed, counters, *self.weighting)
