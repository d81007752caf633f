"""The small-network path of the CPU core: register-tiled GEMMs instead of BLAS.

At widths ≤ 256 and batches ≤ 128 one GEMM of a training step is a few microseconds,
and OpenBLAS spends a large part of it on per-call overhead and packing
(``benchmarks/README.md``, "Small networks"). :func:`gemm` computes out = A·B with a
fixed register tile of 4 rows × 16 columns: eight accumulators, each a
:class:`~fastbp.kernels.simd.Vector` of 8 float32 (one ymm register), updated per k by
two contiguous loads of a row of B, four broadcasts of A and eight ``vfmadd``. B and
``out`` are read and written along their rows (no packing); A may be any 2-D view (A
or the transposed activations aᵀ for the weight gradient). The last n mod 16 columns
go through zero-padded 16-column copies in ``Small.pad_b``/``Small.pad_out``, and rows
beyond the last full tile recompute the last row (the same bits, stored twice), so
every shape takes the same tile.

:func:`train_batches` is ``cpu.train_batches`` for plain fits (no dropout or batchnorm;
checkpointing is skipped, as every z and a of a batch fits in :data:`MAX_CACHE_BYTES`)
with these GEMMs; the epilogues, the loss and output delta and the optimizer step
are ``cpu``'s own functions: results differ from the BLAS path by rounding only, and
are bitwise the same from run to run.
``fastbp.cpu_training`` picks this path from :data:`FASTER_THAN_BLAS`, measured.
"""

import numpy as np

from .. import threads
from . import cpu
from .simd import LANES, vfma, vload, vsplat, vstore, vzero

_jit = cpu.compiled_only(boundscheck=False)
_entry = cpu.entry(boundscheck=False)

#: where this path beat the BLAS path, per kernel family of the BLAS it competes with
#: (``threads.kernel_blas_architecture()``: OpenBLAS picks its GEMM kernels by CPU), from
#: ``python -m benchmarks.prototypes.small_crossover`` (whole training steps of float32
#: w-w-10 ReLU/softmax-CE/Adam networks, w in 16, 64, 128, 256, both paths in one run,
#: quiet machine): batch size → the widest w at which its median step was faster (every
#: width of the network, input included, must be at most this; 0: at no width); a batch
#: between measured ones uses the next larger measured batch, larger batches or widths the
#: BLAS path. An architecture not listed takes the BLAS path.
#:
#: * ``haswell`` (OpenBLAS's AVX2 kernels; a 2-core Zen 3, 2026-11-26,
#:   ``benchmarks/results/2026-11-26-small-path-f32-step.txt``): at batch 1 BLAS won at
#:   every width (0.76-0.97×); at 128-128-10 × 128 rows the two tied, so BLAS keeps it.
#:   Batches of 1-4 were measured against the BLAS path's fused small-batch update, since
#:   removed (it lost 1.13-1.6× to GEMM + update on the AVX-512 machine): not re-measured.
#: * ``skylakex`` (AVX-512 kernels; a 2-core AMD EPYC, 2026-12-07,
#:   ``benchmarks/results/2026-12-07-small-path-skylakex.txt``): BLAS won or tied
#:   everywhere (0.70-1.00×, one isolated 1.11× at 256-256-10 × 16): never.
FASTER_THAN_BLAS = {
    "haswell": {1: 0, 4: 256, 16: 256, 32: 256, 64: 128, 128: 64},
    "skylakex": {},
}
FASTER_THAN_BLAS["zen"] = FASTER_THAN_BLAS["haswell"]  # OpenBLAS's Zen target runs the Haswell kernels
#: the register tile: rows of A × columns of B (two vectors) per block of accumulators
TILE_ROWS, TILE_COLS = 4, 2 * LANES
#: the dtypes the tiles are written for (8 lanes of float32 per ymm register)
DTYPES = ("float32",)


#: the path keeps every layer's z and a of a batch (no checkpointing): at most this many bytes
MAX_CACHE_BYTES = 4 * 2 ** 20


def wins(sizes, batch, dtype, architecture=None):
    """Does the small path beat BLAS for a plain fit of ``sizes`` at ``batch`` rows
    (from :data:`FASTER_THAN_BLAS` for ``architecture``, default this machine's BLAS,
    and a z/a cache of at most :data:`MAX_CACHE_BYTES`)?"""
    if str(dtype) not in DTYPES:
        return False
    if 2 * batch * sum(sizes[1:]) * np.dtype(dtype).itemsize > MAX_CACHE_BYTES:
        return False
    if architecture is None:
        architecture = threads.kernel_blas_architecture()
    table = FASTER_THAN_BLAS.get(architecture, {})
    measured = [b for b in sorted(table) if b >= batch]
    return bool(measured) and max(sizes) <= table[measured[0]]


@_jit
def _tile16(A, B, out, i0, j0):
    """out[i0:i0+4, j0:j0+16] = A[i0:i0+4]·B[:, j0:j0+16] (rows past the end: the last row again)."""
    m, k = A.shape
    r1, r2, r3 = min(i0 + 1, m - 1), min(i0 + 2, m - 1), min(i0 + 3, m - 1)
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = vzero(out)
    for q in range(k):
        b0, b1 = vload(B, q, j0), vload(B, q, j0 + LANES)
        a = vsplat(A[i0, q])
        c0, c1 = vfma(a, b0, c0), vfma(a, b1, c1)
        a = vsplat(A[r1, q])
        c2, c3 = vfma(a, b0, c2), vfma(a, b1, c3)
        a = vsplat(A[r2, q])
        c4, c5 = vfma(a, b0, c4), vfma(a, b1, c5)
        a = vsplat(A[r3, q])
        c6, c7 = vfma(a, b0, c6), vfma(a, b1, c7)
    vstore(out, r3, j0, c6)
    vstore(out, r3, j0 + LANES, c7)
    vstore(out, r2, j0, c4)
    vstore(out, r2, j0 + LANES, c5)
    vstore(out, r1, j0, c2)
    vstore(out, r1, j0 + LANES, c3)
    vstore(out, i0, j0, c0)
    vstore(out, i0, j0 + LANES, c1)


@_jit
def gemm(A, B, out, small):
    """out = A·B for A (m, k) (any strides), B (k, n) and out (m, n) with contiguous rows."""
    m, k = A.shape
    n = B.shape[1]
    n16 = n - n % TILE_COLS
    for i0 in range(0, m, TILE_ROWS):
        for j0 in range(0, n16, TILE_COLS):
            _tile16(A, B, out, i0, j0)
    if n16 < n:  # the last n mod 16 columns, through zero-padded copies
        width = n - n16
        cols, zero = np.int64(TILE_COLS), np.int64(0)  # int64, not literals: one specialisation of each callee
        padded_b = cpu.rows_view(small.pad_b, zero, k, cols)
        padded_out = cpu.rows_view(small.pad_out, zero, m, cols)
        for q in range(k):
            for t in range(TILE_COLS):
                padded_b[q, t] = B[q, n16 + t] if t < width else 0
        for i0 in range(0, m, TILE_ROWS):
            _tile16(A, padded_b, padded_out, i0, zero)
        for i in range(m):
            for t in range(width):
                out[i, n16 + t] = padded_out[i, t]


@_jit
def transpose_into(source, target):
    """target ← sourceᵀ (target preallocated, shape reversed)."""
    rows, cols = source.shape
    for i in range(rows):
        for j in range(cols):
            target[j, i] = source[i, j]


@cpu.compiled_only(boundscheck=False, inline="always")  # one caller: one function less to compile
def batch_pass(net, opt, work, x, y, small):
    """``cpu.batch_pass`` of a plain fit with :func:`gemm` for the products: the batch-mean
    gradient into ``opt.grad``; returns (loss sum, correct count)."""
    theta, layout, codes = net.theta, net.layout, net.codes
    n_layers = layout.shape[0]
    rows = x.shape[0]
    a = x
    for l in range(n_layers):
        z, a_out = cpu.cached_layer(work, l, rows, layout[l, 1])
        gemm(a, cpu.weights_view(theta, layout, l), z, small)
        if l < n_layers - 1:  # the output layer's epilogue runs inside output_loss
            cpu.forward_epilogue(z, cpu.bias_view(theta, layout, l), codes[l], a_out)
        a = a_out
    loss, correct, delta = cpu.output_loss(net, work, y, cpu.leading_rows(work.row_weights, np.int64(0), rows),
                                           1.0 / cpu.weight_total(work.row_weights, rows),
                                           cpu.bias_view(theta, layout, n_layers - 1))
    half = work.deltas.shape[0] // 2
    for l in range(n_layers - 1, -1, -1):
        fan_in, fan_out = layout[l, 0], layout[l, 1]
        z_prev, a_prev = x, x
        if l > 0:
            z_prev, a_prev = cpu.cached_layer(work, l - 1, rows, fan_in)
        gemm(a_prev.T, delta, cpu.weights_view(opt.grad, layout, l), small)
        cpu.bias_gradient(delta, cpu.bias_view(opt.grad, layout, l))
        if l > 0:
            transposed = cpu.rows_view(small.transposed, np.int64(0), fan_out, fan_in)
            transpose_into(cpu.weights_view(theta, layout, l), transposed)
            delta_prev = cpu.rows_view(work.deltas, ((n_layers - l) % 2) * half, rows, fan_in)
            gemm(delta, transposed, delta_prev, small)
            cpu.delta_epilogue(z_prev, a_prev, codes[l - 1], delta_prev)
            delta = delta_prev
    return loss, correct


@_entry
def train_batches(net, opt, hyper, work, data, batches, small):
    """``cpu.train_batches`` for a plain fit (no dropout or batchnorm; sample weights as
    there) on the small path: batches ``batches`` = (first, stop), each gathered,
    :func:`batch_pass`, ``cpu.update_params``."""
    n = data.perm.shape[0]
    bmax = work.bmax
    first, stop = batches
    if first == 0:
        work.sums[0] = 0.0
        work.counts[0] = 0
    for b in range(first, stop):
        start = b * bmax
        rows = min(bmax, n - start)
        cpu.gather_weights(data.weights, data.perm, start, rows, work.row_weights)
        weight_sum = cpu.weight_total(work.row_weights, rows)
        if weight_sum == 0:
            continue
        scale = rows / weight_sum  # B/Σw: exactly 1 without weights
        step_hyper = cpu.batch_hyper(hyper, data.weights, scale)
        x = work.xb[:rows]
        y = work.yb[:rows]
        cpu.gather_rows(data.X, data.perm, start, rows, x)
        cpu.gather_rows(data.Y, data.perm, start, rows, y)
        opt.step[0] += 1
        loss, hits = batch_pass(net, opt, work, x, y, small)
        penalty = cpu.update_params(net, opt, step_hyper)
        work.sums[0] += loss * scale + rows * penalty
        work.counts[0] += hits
