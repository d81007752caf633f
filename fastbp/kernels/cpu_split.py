"""The split path of the CPU core: a network with one hidden layer trained by two threads,
each owning half of the hidden units.

At 64-128-10 and batch 32 a training step is ~27 µs on one core, and a step does not
split well by rows: each thread would compute the gradient of every parameter, and the
~38 KB gradient then has to cross to the other core every step, which costs as much as
the second core saves (``benchmarks/README.md``, section 11). Split by units instead:
thread t owns hidden units [lo_t, lo_t + h_t) — the columns of W¹ and b¹ and the rows of
W² — and the output bias b² is replicated. Per batch, each thread

1. gathers the batch (both read the same rows of X and Y),
2. computes its units' z¹ = x·W¹_t + b¹_t, a¹ = f(z¹) and its part of the logits
   a¹_t·W²_t into ``exchange[parity, t]``,
3. waits at the barrier (``kernels.sync``), then adds the two parts, in the same order on
   both threads, so both hold the same logits and the same δ² (softmax–cross-entropy,
   or any output and loss as in ``cpu.output_loss``),
4. computes dW²_t = a¹_tᵀ·δ², db² = Σ δ², δ¹_t = (δ²·W²_tᵀ) ⊙ f'(z¹_t), dW¹_t = xᵀ·δ¹_t,
   db¹_t = Σ δ¹_t, and
5. applies the optimizer step (``cpu._update_range``) to its own parameters and to its
   copy of b², which stays equal on both threads.

Only the logits (rows × outputs) cross between the cores, once per batch; the parity
double buffer makes one barrier per batch enough. Each thread keeps its parameters,
gradient and optimizer moments in a contiguous shard (``Split.theta``/... row t), copied
from θ and the optimizer state at the start of a compiled call and back at its end, so
the products are plain BLAS calls on contiguous arrays (the kernels' BLAS pool runs one
thread meanwhile). Gradient diagnostics and the L1/L2 penalty are summed over the two
threads per batch (``Split.parts``), as ``cpu.update_params`` records them.

The results equal the one-thread path's to rounding (the logits are summed in two parts,
the products have other shapes), and are the same bits from run to run. The path covers
plain fits, dropout (each thread draws its units' masks, the one-thread path's) and
``clip_norm`` (the threads' parts of the global norm cross at a second barrier, in
batches where it is on) and sample weights (each thread gathers the batch's weights) —
no batchnorm or checkpointing; ``fastbp.cpu_training`` picks it
where :data:`FASTER_THAN_ONE_THREAD` says it won, on Linux on x86-64 with two or more cores
(``cpu_training.two_threads_available``).

The two threads are the calling one (t = 0) and fastbp's own daemon thread
(``cpu_training.SecondThread``, t = 1), each in :func:`train_batches` without the GIL;
:func:`wake_partner`, :func:`call_partner` and :func:`await_call` hand each call over between them.
Numba's ``prange(2)`` did the same with its OpenMP threads until 2026-12-07, but compiling a
parallel driver made a first split fit on an empty cache ~6 s longer (17.0-18.5 against
11.2-12.8 s, one sitting), and tied the path to the OpenMP threading layer and to processes that had not forked
(``benchmarks/README.md``, section 13).
"""

import numpy as np

from .. import threads
from . import cpu, simd, sync

_jit = cpu.compiled_only(boundscheck=False)
_entry = cpu.entry(boundscheck=False)

#: batch size → (narrowest, widest) hidden layer at which two threads beat one, for
#: float32 d-H-10 networks, ReLU + softmax-CE, Adam, d in 16, 64, 256, from ``python -m
#: benchmarks.prototypes.split_crossover --rounds 11`` (2-core AMD EPYC, AVX-512,
#: 2026-12-07 after the page gap between the threads' rows,
#: ``benchmarks/results/2026-12-07-split-crossover-page-gap.txt``): 1.10-1.84× at hidden
#: widths 32-128 and 1.01-1.46× at 256 (it lost 0.82-0.92× at 64-256-10 batches 8-32 before
#: the gap) for every d and batch 8-128; at 16 units 0.85-1.62× (medians); at d = 784,
#: widths 32-256, batches 8-64: 0.96-2.01× (784-256-10 lost only at batch 32, where a fit on
#: one thread runs its BLAS on two and :func:`wins` keeps it there). Both sides ran one BLAS
#: thread. A batch between measured ones uses the next smaller measured batch (larger
#: batches the largest); a smaller batch never splits.
FASTER_THAN_ONE_THREAD = {8: (32, 256)}
#: the dtypes the table was measured for
DTYPES = ("float32",)
#: rows × parameters of the training set below which an automatic choice stays on one thread:
#: an epoch is then under ~10 ms (0.85 ns per row and parameter at 64-128-10), and the split
#: driver's compile on an empty Numba cache (~4 s more than the one-thread driver's, ~10 s
#: before 2026-12-07, when it was a parallel function) would not pay back in a typical fit
#: (``fastbp train``'s digits, 1.4 k rows × 4.8 k parameters)
MIN_EPOCH_WORK = 10 ** 8


def eligible(sizes, batchnorm=False):
    """Can a fit take the split path at all (whatever the speed)? Dropout, ``clip_norm`` and
    sample weights can."""
    return len(sizes) == 3 and sizes[1] >= 2 and not batchnorm


def wins(sizes, dtype, batch, rows):
    """Is the split path faster for a fit of ``rows`` rows (:data:`FASTER_THAN_ONE_THREAD`,
    :data:`MIN_EPOCH_WORK`)? Not where a fit on one thread would run its BLAS on more than
    one thread (``threads.planned_threads``: a product of ≥ 2²² multiply-adds, and the pool
    not capped at one): the table was measured against one BLAS thread, and against two
    the split lost (best epochs at batch 64: 256-128-10 0.87×, 256-256-10 0.90×, 784-128-10
    0.96×, 784-256-10 0.79×; ``python -m benchmarks.prototypes.split_crossover --auto-blas
    --pause 0.3``, whose medians the two paths' spinning threads disturb both ways)."""
    if str(dtype) not in DTYPES:
        return False
    n_params = sum((i + 1) * o for i, o in zip(sizes[:-1], sizes[1:]))
    if rows * n_params < MIN_EPOCH_WORK:
        return False
    if threads.planned_threads(sizes, batch) > 1:
        return False
    measured = [b for b in sorted(FASTER_THAN_ONE_THREAD) if b <= batch]
    if not measured:
        return False
    narrowest, widest = FASTER_THAN_ONE_THREAD[measured[-1]]
    return narrowest <= sizes[1] <= widest


#: the thread that records the batches (loss, correct count, diagnostics): the calling
#: thread. With the other thread (1, then Numba's OpenMP worker) keeping the books,
#: ``perf`` had the caller spinning at the barrier for ~1/4 of its samples, and an epoch
#: of 64-128-10 × 32 took ~2 % longer (9.15 against 8.95 ms, three processes each)
BOOKKEEPER = 0
#: :func:`shard_copy`'s direction, as int64 (one specialisation, not one per literal)
INTO, BACK = np.int64(1), np.int64(0)


def own_units(t, hidden):
    """(first unit, count) of the hidden units thread t owns."""
    first = (hidden + 1) // 2
    return (0, first) if t == 0 else (first, hidden - first)


def shard_length(sizes):
    """Length of one thread's shard: W¹ columns, b¹, W² rows of the larger half, and b²."""
    d, hidden, k = sizes
    h = own_units(0, hidden)[1]
    return d * h + h + h * k + k


_own_units = _jit(own_units)


@_jit
def shard_views(buffer, d, h, k):
    """(W¹_t (d, h), b¹_t (h,), W²_t (h, k), b² (k,)) in a shard."""
    w2 = d * h + h
    b2 = w2 + h * k
    return (buffer[:d * h].reshape((d, h)), buffer[d * h:w2], buffer[w2:b2].reshape((h, k)),
            buffer[b2:b2 + k])


@_jit
def copy_block(source, target):
    """target ← source for two 2-D arrays of one shape (loops: an array assignment would
    compile Numba's shape-mismatch error formatting, seconds of a first fit)."""
    for i in range(source.shape[0]):
        for j in range(source.shape[1]):
            target[i, j] = source[i, j]


@_jit
def shard_copy(flat, layout, shards, into_shards):
    """Copy between a network-long buffer (θ, the gradient or a moment, in ``layout``) and
    the two threads' shards: into them if ``into_shards`` else back (b² from thread 0)."""
    d, hidden, k = layout[0, 0], layout[0, 1], layout[1, 1]
    w1, b1 = cpu.weights_view(flat, layout, 0), cpu.bias_view(flat, layout, 0)
    w2, b2 = cpu.weights_view(flat, layout, 1), cpu.bias_view(flat, layout, 1)
    for t in range(2):
        lo, h = _own_units(t, hidden)
        sw1, sb1, sw2, sb2 = shard_views(shards[t], d, h, k)
        # network-side views as 2-D blocks: W¹'s columns, b¹ as one row, W²'s rows, b² as one row
        copy_between(w1[:, lo:lo + h], sw1, into_shards)
        copy_between(b1[lo:lo + h].reshape((1, h)), sb1.reshape((1, h)), into_shards)
        copy_between(w2[lo:lo + h], sw2, into_shards)
        if into_shards or t == 0:
            copy_between(b2.reshape((1, k)), sb2.reshape((1, k)), into_shards)


@_jit
def copy_between(network_side, shard_side, into_shard):
    """shard_side ← network_side if ``into_shard`` else the other way."""
    if into_shard:
        copy_block(network_side, shard_side)
    else:
        copy_block(shard_side, network_side)


@_jit
def record_batch(diagnostics, totals, parts, loss, rows):
    """A batch's bookkeeping from the two threads' sums ``parts`` (thread, layer, [Σ g²,
    Σ Δθ², Σ θ², penalty]): ``cpu._record`` per layer, and loss + rows·penalty into
    ``totals[0]`` (in batch order, as ``cpu.train_batches`` adds them: the same total
    however an epoch is cut into compiled calls)."""
    penalty = 0.0
    for l in range(2):
        grad_sq = parts[0, l, 0] + parts[1, l, 0]
        step_sq = parts[0, l, 1] + parts[1, l, 1]
        weight_sq = parts[0, l, 2] + parts[1, l, 2]
        diagnostics[l, 0] += np.sqrt(grad_sq)
        diagnostics[l, 1] += np.sqrt(step_sq / weight_sq) if weight_sq > 0 else 0.0
        penalty += parts[0, l, 3] + parts[1, l, 3]
    totals[0] += loss + rows * penalty


@_jit
def shard_sq_norm(t, theta, grad, d, h, k, hyper):
    """Thread t's part of Σ g² of the regularised gradient (``cpu._clip_scale``'s sum: the
    weights with L1/L2, the biases without; b² counted by thread 0 only)."""
    cast = theta.dtype.type
    zero, l1, l2 = cast(0), cast(hyper.l1), cast(hyper.l2)
    w2 = d * h + h
    b2 = w2 + h * k
    total = cpu._regularised_sq_norm(theta[:d * h], grad[:d * h], l1, l2)
    total += cpu._regularised_sq_norm(theta[d * h:w2], grad[d * h:w2], zero, zero)
    total += cpu._regularised_sq_norm(theta[w2:b2], grad[w2:b2], l1, l2)
    if t == 0:
        total += cpu._regularised_sq_norm(theta[b2:b2 + k], grad[b2:b2 + k], zero, zero)
    return total


@_jit
def update_shard(t, theta, grad, state1, state2, d, h, k, opt_code, hyper, step, parts, clip_scale):
    """The optimizer step on thread t's shard (weights with L1/L2, biases without; ``cpu._update_range``,
    the gradient times ``clip_scale``); its sums per layer into ``parts[t]`` (b²'s gradient
    counted by thread 0 only)."""
    consts = cpu.step_constants(theta, hyper, step)
    cast = theta.dtype.type
    zero, scale, l1, l2 = cast(0), cast(clip_scale), cast(hyper.l1), cast(hyper.l2)
    w2 = d * h + h
    b2 = w2 + h * k
    for l in range(2):  # the weights, with L1/L2
        lo, hi = (np.int64(0), d * h) if l == 0 else (w2, b2)
        g, s, w, p = cpu._update_range(theta[lo:hi], grad[lo:hi], state1[lo:hi], state2[lo:hi], opt_code,
                                       consts, l1, l2, scale)
        parts[t, l, 0] = g
        parts[t, l, 1] = s
        parts[t, l, 2] = w
        parts[t, l, 3] = p
    for l in range(2):  # the biases (b² is replicated: counted once)
        lo, hi = (d * h, w2) if l == 0 else (b2, b2 + k)
        g, _, _, _ = cpu._update_range(theta[lo:hi], grad[lo:hi], state1[lo:hi], state2[lo:hi], opt_code,
                                       consts, zero, zero, scale)
        if l == 0 or t == 0:
            parts[t, l, 0] += g


@_jit
def thread_weights(row_weights, t, rows):
    """Thread t's buffer of a batch's sample weights (its first ``rows``), or None without weights."""
    if row_weights is None:
        return None
    return row_weights[t, :rows]


@_jit
def softmax_cross_entropy(z, bias, a, targets, inv_batch, row_weights, delta, scratch):
    """``cpu.softmax_cross_entropy`` (z ← z + b, a = softmax(z), δ = w (a − y)·``inv_batch``,
    returns the summed loss Σ w ℓ; w = 1 where ``row_weights`` is None) with the rows in
    SIMD lanes: the logits are copied transposed into ``scratch`` (float64, ≥ (columns +
    3) × rows), and the loops over rows then run over
    contiguous values: the row maxima, exp (``simd.exp_nonpositive``, ~1 ulp from libm's,
    which costs ~5 ns a call) and the row sums in column order. Equal to the one-thread
    path's to rounding; the loss is summed per row, then over the rows."""
    rows, cols = z.shape
    e = scratch[:cols * rows].reshape((cols, rows))
    m = scratch[cols * rows:(cols + 1) * rows]
    s = scratch[(cols + 1) * rows:(cols + 2) * rows]
    log_s = scratch[(cols + 2) * rows:(cols + 3) * rows]
    for i in range(rows):
        m[i] = -np.inf
        s[i] = 0.0
        for j in range(cols):
            v = z[i, j] + bias[j]
            z[i, j] = v
            e[j, i] = v
    for j in range(cols):
        for i in range(rows):
            m[i] = max(m[i], e[j, i])
    for j in range(cols):
        for i in range(rows):
            x = simd.exp_nonpositive(e[j, i] - m[i])
            e[j, i] = x
            s[i] += x
    for i in range(rows):
        log_s[i] = np.log(s[i])
        s[i] = 1 / s[i]
    total = 0.0
    for i in range(rows):  # row by row: a, z, y and δ contiguous (~0.25 µs less than by columns)
        inv, m_i, log_s_i = s[i], m[i], log_s[i]
        w = cpu.row_weight(row_weights, i)  # 1.0 without weights: exact products, the same bits
        scale = w * inv_batch
        loss = 0.0
        for j in range(cols):
            a[i, j] = e[j, i] * inv
            loss += targets[i, j] * (z[i, j] - m_i - log_s_i)
            delta[i, j] = (a[i, j] - targets[i, j]) * scale
        total -= w * loss
    return total


@_jit
def thread_batches(t, split, data, hyper, codes, loss_code, opt_code, diagnostics, totals, counts, first, stop,
                   bmax, hidden, step0, dropout):
    """Thread t's part of batches first..stop-1 (see the module docstring); ``dropout`` =
    (keep probability of the hidden units, seed, epoch), keep = 1 for none. With
    ``data.weights`` a batch's objective is (Σ w_i ℓ_i + B·penalty)/Σw, as in
    ``cpu.train_batches``, and a batch whose weights sum to 0 is skipped by both threads
    (the double buffers alternate with the batches trained, not with b). Returns the
    batches trained, or -1 if the other thread did not come (``sync.handshake``)."""
    sync.note_cpu(split.placement, t)
    if not sync.handshake(split.state):
        return -1
    sync.keep_apart(split.placement, split.masks, t)
    X, Y, perm = data.X, data.Y, data.perm
    n, d, k = perm.shape[0], X.shape[1], Y.shape[1]
    lo, h = _own_units(t, hidden)
    theta, grad = split.theta[t], split.grad[t]
    w1, b1, w2, b2 = shard_views(theta, d, h, k)
    dw1, db1, dw2, db2 = shard_views(grad, d, h, k)
    hidden_code, out_code = codes[0], codes[1]
    keep, seed, epoch = dropout
    zero = np.int64(0)
    # each buffer as a (bmax, columns) array once; a batch takes its first rows (a slice: a
    # reshape per buffer and batch called into Numba's runtime, ~26 ns each, ~0.3 µs a batch)
    xs, ys = cpu.rows_view(split.xs[t], zero, bmax, d), cpu.rows_view(split.ys[t], zero, bmax, k)
    zs, acts = cpu.rows_view(split.zs[t], zero, bmax, h), cpu.rows_view(split.acts[t], zero, bmax, h)
    masked = bmax if keep < 1 else zero  # the dropout buffers hold one element without dropout
    dmasks, dacts = cpu.rows_view(split.dmasks[t], zero, masked, h), cpu.rows_view(split.dacts[t], zero, masked, h)
    exchange = ((cpu.rows_view(split.exchange[0, 0], zero, bmax, k),
                 cpu.rows_view(split.exchange[0, 1], zero, bmax, k)),
                (cpu.rows_view(split.exchange[1, 0], zero, bmax, k),
                 cpu.rows_view(split.exchange[1, 1], zero, bmax, k)))  # [parity][thread]
    logits_all, outputs = cpu.rows_view(split.logits[t], zero, bmax, k), cpu.rows_view(split.outputs[t], zero, bmax, k)
    deltas_out = cpu.rows_view(split.delta_out[t], zero, bmax, k)
    deltas_hidden = cpu.rows_view(split.delta_hidden[t], zero, bmax, h)
    pending_loss, pending_rows = 0.0, 0  # the bookkeeper's previous batch, recorded once both threads' sums are in
    trained = 0
    for b in range(first, stop):
        start = b * bmax
        rows = min(bmax, n - start)
        row_weights = thread_weights(split.row_weights, t, rows)
        cpu.gather_weights(data.weights, perm, start, rows, row_weights)
        weight_sum = cpu.weight_total(row_weights, rows)
        if weight_sum == 0:  # no objective: skipped (both threads read the same weights)
            continue
        scale = rows / weight_sum  # B/Σw: exactly 1 without weights
        step_hyper = cpu.batch_hyper(hyper, data.weights, scale)
        parity = trained % 2
        x, y = xs[:rows], ys[:rows]
        cpu.gather_rows(X, perm, start, rows, x)
        cpu.gather_rows(Y, perm, start, rows, y)
        z, a = zs[:rows], acts[:rows]
        step = step0 + trained + 1
        np.dot(x, w1, z)
        cpu.forward_epilogue(z, b1, hidden_code, a)
        kept = a  # what W² reads: a, or its dropped copy
        if keep < 1:
            mask, kept = dmasks[:rows], dacts[:rows]
            cpu.draw_mask(mask, keep, cpu.stream_key(seed, epoch, step, 0), lo)  # its units' masks
            cpu.apply_mask(a, mask, kept)
        halves = exchange[parity]
        np.dot(kept, w2, halves[t][:rows])
        sync.barrier(split.state)
        if t == BOOKKEEPER and trained > 0:  # the other thread's sums of the previous batch are complete now
            record_batch(diagnostics, totals, split.parts[1 - parity], pending_loss, pending_rows)
        part0, part1, logits = halves[0][:rows], halves[1][:rows], logits_all[:rows]
        for i in range(rows):  # the same order on both threads: the same logits, δ² and b²
            for j in range(k):
                logits[i, j] = part0[i, j] + part1[i, j]
        out, delta = outputs[:rows], deltas_out[:rows]
        inv_sum = 1.0 / weight_sum  # 1/B without weights
        if out_code == cpu.SOFTMAX and loss_code == cpu.CE:
            loss = softmax_cross_entropy(logits, b2, out, y, inv_sum, row_weights, delta, split.rowwise[t])
        else:
            cpu.forward_epilogue(logits, b2, out_code, out)
            loss = cpu.output_delta(logits, out, y, out_code, loss_code, inv_sum, row_weights, delta)
        np.dot(kept.T, delta, dw2)
        cpu.bias_gradient(delta, db2)
        delta_hidden = deltas_hidden[:rows]
        np.dot(delta, w2.T, delta_hidden)
        cpu.delta_epilogue(z, a, hidden_code, delta_hidden)
        if keep < 1:
            cpu.apply_mask(delta_hidden, dmasks[:rows], delta_hidden)
        np.dot(x.T, delta_hidden, dw1)
        cpu.bias_gradient(delta_hidden, db1)
        clip_scale = 1.0
        if hyper.clip_norm > 0:  # the global norm: both parts, summed in the same order on both threads
            split.norms[parity, t, 0] = shard_sq_norm(t, theta, grad, d, h, k, step_hyper)
            sync.barrier(split.state)
            norm = np.sqrt(split.norms[parity, 0, 0] + split.norms[parity, 1, 0])
            clip_scale = hyper.clip_norm / norm if norm > hyper.clip_norm else 1.0
        update_shard(t, theta, grad, split.state1[t], split.state2[t], d, h, k, opt_code, step_hyper, step,
                     split.parts[parity], clip_scale)
        if t == BOOKKEEPER:
            pending_loss, pending_rows = loss * scale, rows
            counts[0] += cpu.correct_count(out, y, out_code)
        trained += 1
    if t == BOOKKEEPER:  # the last batch: recorded by the driver after the region
        split.pending[0] = pending_loss
        split.pending[1] = pending_rows
    return trained


@_entry
def train_batches(net, opt, hyper, work, data, batches, split, dropout, t):
    """``cpu.train_batches`` of a plain fit of a one-hidden-layer network on two threads:
    thread ``t``'s part of batches ``batches`` = (first, stop). Two threads call it at the
    same time, the calling thread with t = 0 and ``cpu_training.SecondThread`` with t = 1,
    ``split.state`` zeroed before either starts. Thread 0 copies θ and the optimizer state
    into the shards before the handshake, and back once both threads are past their last
    batch. ``dropout`` = (keep probability of the hidden units, seed, epoch), keep = 1 for
    none: the masks of the one-thread path (``cpu.forward_step``). Returns False, with
    nothing changed, if the two did not run at the same time (``sync.handshake``): the
    caller then trains these batches on one thread."""
    first, stop = batches
    layout = net.layout
    if t == 0:
        if first == 0:
            work.sums[0] = 0.0
            work.counts[0] = 0
        shard_copy(net.theta, layout, split.theta, INTO)
        shard_copy(opt.state1, layout, split.state1, INTO)
        shard_copy(opt.state2, layout, split.state2, INTO)
    trained = thread_batches(t, split, data, hyper, net.codes, net.loss_code, opt.code, opt.diagnostics,
                             work.sums, work.counts, first, stop, work.bmax, layout[0, 1], opt.step[0], dropout)
    if trained < 0:
        return False
    sync.barrier(split.state)  # both threads are past their last batch
    if t == 0:
        shard_copy(net.theta, layout, split.theta, BACK)
        shard_copy(opt.state1, layout, split.state1, BACK)
        shard_copy(opt.state2, layout, split.state2, BACK)
        shard_copy(opt.grad, layout, split.grad, BACK)
        if trained > 0:
            record_batch(opt.diagnostics, work.sums, split.parts[(trained - 1) % 2], split.pending[0],
                         split.pending[1])
        opt.step[0] += trained
    return True


#: the second thread's ``signal`` (``cpu_training.SecondThread``), an int64 array of
#: ``sync.STATE_LENGTH``: the calls made, a bell that changes at every call and
#: :func:`wake_partner` (the futex word the second thread sleeps on), and how many threads
#: sleep on it (the caller's CPU and keep_apart's flag at ``sync.FIRST_CPU``/``sync.MOVED``)
CALLS, BELL, SLEEPERS = 0, 1, 2


@cpu.compiled_only(inline="always")
def _ring(signal):
    """The bell changes; a sleeping second thread is woken (a system call only if one sleeps:
    the bell and the sleeper count are each changed before the other is read, with full
    barriers, so either the ringer sees the sleeper or the sleeper sees the new bell)."""
    sync.atomic_add(signal, BELL, 1)
    if sync.atomic_read(signal, SLEEPERS) > 0:
        sync.futex(signal, BELL, sync.FUTEX_WAKE_PRIVATE, 1)


@_entry
def wake_partner(signal):
    """The calling thread's CPU into ``signal`` (where :func:`await_call` keeps off it), and
    the second thread woken if it sleeps: it spins from now on, waiting for the call."""
    sync.note_cpu(signal, 0)
    _ring(signal)


@_entry
def call_partner(signal, state):
    """The calling thread, before its own :func:`train_batches`: its CPU into ``signal``,
    one more call counted there (the second thread, spinning or asleep in
    :func:`await_call`, then takes the job), then a wait without the GIL until that thread
    has arrived at the handshake (at most ``sync.HANDSHAKE_SPINS`` spins, yielding often:
    the other thread may be waiting for this very CPU; the handshake decides whether they
    met). With the GIL released before the count, the second thread starts its call at once."""
    sync.note_cpu(signal, 0)
    sync.atomic_add(signal, CALLS, 1)
    _ring(signal)
    sync.await_arrival(state)


@_entry
def await_call(signal, masks, served, spins):
    """The second thread, between calls, until more than ``served`` calls have been made:
    off the caller's CPU (``sync.keep_apart``), spinning ``spins`` times; then asleep on
    the bell (``sync.futex``) until a call or a :func:`wake_partner` rings it, and spinning
    again after a wake. It sleeps in this compiled call, without the GIL, and under the
    CPU mask ``keep_apart`` gave it (the kernel wakes it on a CPU it may run on, not on
    the waker's): woken by a fit's ``wake_partner``, it is off the caller's CPU and
    spinning by the time the call comes, however long the caller's Python keeps the GIL.
    Blocked in Python on a queue instead, it first waited for the GIL, then for the
    caller's CPU: ~0.13 ms more per fit (``benchmarks/README.md`` section 14)."""
    while True:
        sync.keep_apart(signal, masks, 1)
        for spin in range(spins):
            if sync.atomic_load(signal, CALLS) > served:
                return
            sync.wait(spin)
        bell = sync.atomic_load(signal, BELL)
        sync.atomic_add(signal, SLEEPERS, 1)
        failed = 0
        while sync.atomic_read(signal, CALLS) <= served and sync.atomic_read(signal, BELL) == bell:
            # returns at the latest after FUTEX_SLEEP_NS; at once if the bell changed, and
            # (no futex here at all) every time: then at least spin politely
            if sync.futex(signal, BELL, sync.FUTEX_WAIT_PRIVATE, bell) != 0:
                sync.wait(failed)
                failed += 1
        sync.atomic_add(signal, SLEEPERS, -1)
