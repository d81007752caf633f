"""The data structures the compiled core works on, one ``namedtuple`` per role.

Numba passes a namedtuple as one struct argument and caches the functions that take
it (these are module-level types, so a fresh process finds the cached machine code);
``jitclass`` would defeat the cache. Required parts are fields of the five core
bundles; an optional training mode is its own bundle (:class:`Dropout`,
:class:`BatchNorm`, :class:`Checkpoint`) passed as a separate argument that is
``None`` when the mode is off: Numba compiles the ``if dropout is not None`` branch
away for ``None``, so a plain fit compiles no dropout or batchnorm code. (A field set
to ``None`` does not type in Numba 0.68, hence separate arguments.)

The bundles are built by ``fastbp.cpu_training`` (host arrays) and mirrored by the
CUDA backend (device arrays); the kernels never see an ``MLP``.
"""

from collections import namedtuple

#: θ (flat parameters), ``layout`` (n_layers × [fan_in, fan_out, w_off, b_off], see
#: ``fastbp.layout``), ``update_layout`` (the table the optimizer walks: equal to
#: ``layout`` except that a batchnorm layer's bias region is doubled to cover β and γ),
#: ``codes`` (activation code per layer), ``loss_code``
Network = namedtuple("Network", "theta layout update_layout codes loss_code")

#: gradient and the two state buffers (same length as θ), ``step`` (int64[1], the
#: 1-based count of steps taken, advanced per batch), the optimizer ``code`` and
#: ``diagnostics`` (n_layers × 2: Σ over batches of each layer's gradient norm and of
#: its update ratio ‖ΔW‖/‖W‖)
Optimizer = namedtuple("Optimizer", "grad state1 state2 step code diagnostics")

#: the hyper-parameters of the current epoch (floats; ``clip_norm``/``clip_value`` ≤ 0: off)
Hyper = namedtuple("Hyper", "lr momentum beta2 eps l1 l2 clip_norm clip_value")

#: scratch for batches of at most ``bmax`` rows: gathered batch ``xb``/``yb``, cached
#: z^l and a^l (``zs``/``acts``), the two ping-pong delta buffers (``deltas``), and
#: ``offsets`` (n_layers × 3): column 0 the offset of layer l in ``zs``/``acts`` (within
#: its checkpoint segment), column 1 its offset in network-long buffers (dropout masks),
#: column 2 its first unit among all units (batchnorm statistics); ``sums`` (float64[1])
#: and ``counts`` (int64[1]) accumulate the epoch's Σ b·(loss + penalty) and correct count;
#: ``row_weights`` (float64[bmax]) the gathered sample weights of a batch, None without weights
Workspace = namedtuple("Workspace", "xb yb zs acts deltas offsets bmax sums counts row_weights")

#: the training rows, this epoch's permutation of them and the rows' sample ``weights``
#: (float64, one per row of X; None: every row weighs 1, and no weight code is compiled)
Data = namedtuple("Data", "X Y perm weights")

#: inverted dropout after hidden layer l with keep probability ``keep[l]`` (1: off);
#: ``masks``/``dacts`` (network-long) hold the masks and the dropped activations;
#: masks of a batch are a pure function of (``seed``, ``epoch``, step, layer, row, col)
Dropout = namedtuple("Dropout", "keep masks dacts seed epoch")

#: batch normalization: ``gamma_offsets[l]`` (offset of γ^l in θ, −1 for a layer
#: without), ``xhat`` (cached x̂, like ``zs``), ``stats`` (float64: μ then 1/√(σ²+ε)
#: per unit), ``running`` (running mean then variance per unit), ``scratch`` (one
#: layer wide), ``eps``, ``momentum``, ``mode`` (0: running statistics, 1: batch
#: statistics, 2: batch statistics and update the running ones)
BatchNorm = namedtuple("BatchNorm", "gamma_offsets xhat stats running scratch eps momentum mode")

#: gradient checkpointing: segments ``starts[g]..starts[g+1]`` (last entry n_layers);
#: the boundary layers' z and a (undropped) kept in ``kept_z``/``kept_a`` at
#: ``kept_offsets[l]`` (−1 for layers inside a segment)
Checkpoint = namedtuple("Checkpoint", "starts kept_offsets kept_z kept_a")

#: scratch of the small-network path (``kernels.cpu_small``): ``transposed`` (the largest
#: W^l of l ≥ 1, transposed), ``pad_b``/``pad_out`` (16 columns × the longest dimension:
#: the zero-padded last columns of a product)
Small = namedtuple("Small", "transposed pad_b pad_out")

#: the split path (``kernels.cpu_split``), one row per thread: the shards ``theta``,
#: ``grad``, ``state1``, ``state2`` (W¹ columns, b¹, W² rows of the thread's hidden units,
#: and b²); batch buffers ``xs``, ``ys``, hidden ``zs``/``acts``, ``logits``/``outputs``,
#: ``delta_out``/``delta_hidden``, dropout's ``dmasks``/``dacts`` (flat, ``bmax`` rows, one
#: element without dropout); ``exchange`` (parity × thread: each thread's part of the
#: logits), ``parts`` (parity × thread × layer × [Σ g², Σ Δθ², Σ θ², penalty]), ``norms``
#: (parity × thread: its part of Σ g² for ``clip_norm``), ``pending`` (the loss and rows of
#: a call's last batch, recorded after both threads' last batch), the barrier's ``state``
#: (int64, ``kernels.sync.STATE_LENGTH``), the second thread's ``placement`` (its
#: ``signal``: the caller's CPU, whether it is moved) and CPU ``masks`` (uint8,
#: ``sync.MASK_ROWS`` × ``sync.AFFINITY_BYTES``, ``sync.keep_apart``), both ``cpu_training.SecondThread``'s, and
#: ``rowwise``, float64 scratch of the softmax (``cpu_split.softmax_cross_entropy``), and
#: ``row_weights`` (float64, a batch's sample weights per thread; None without weights).
#: Every row is padded to cache lines of its own and followed by a page of gap
#: (``cpu_training.line_aligned_rows``): the kernels use a prefix of it
Split = namedtuple("Split", "theta grad state1 state2 xs ys zs acts exchange logits outputs delta_out "
                            "delta_hidden dmasks dacts parts norms pending state placement masks rowwise "
                            "row_weights")
