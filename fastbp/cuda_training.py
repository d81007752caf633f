"""``device="cuda"``: the fit / forward / evaluate wrappers around ``kernels.cuda``.

Layering as in STUMPY's GPU code: ``kernels.cuda`` holds the ``@cuda.jit`` kernels
and the host drivers that launch them over device buffers; this module moves data
between the ``MLP`` and the device and keeps the epoch loop (schedule, History,
callbacks, divergence handling) identical in meaning to ``training.run_epochs``.

The epoch loop itself is ``training.run_epochs``, shared with the CPU; this module
supplies its ``CudaEngine``. Per fit: X and Y are copied to the device once, θ,
gradient and optimizer state live there for the whole fit, the permutation is
uploaded once per epoch (the same permutations as on the CPU, so both devices see
the same batches) and the epoch's loss sum, correct count and non-finite count are
read back once per epoch. θ (with batchnorm's running statistics) and the optimizer
state are copied back into the network at the end (and θ and the running statistics
before validation and callbacks, which may inspect the network; they are re-uploaded
after the callbacks in case they changed them).
"""

import os

import numpy as np

from . import spec


def cuda_available():
    """True if ``device="cuda"`` can run: numba-cuda is installed and sees a GPU, or
    Numba's CUDA simulator is enabled (``NUMBA_ENABLE_CUDASIM=1`` before numba is
    imported)."""
    return _unavailable_reason() is None


def _unavailable_reason():
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - numba-cuda is a dependency of fastbp[cuda]
        return f'numba.cuda cannot be imported ({exc}); pip install "fastbp[cuda]"'
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # pragma: no cover - driver errors vary
        return f"numba.cuda.is_available() raised {exc!r}"
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "")
    return ("no CUDA GPU is usable (numba.cuda.is_available() is False: no NVIDIA driver or device)"
            + (" and NUMBA_ENABLE_CUDASIM was set only after numba was imported" if sim not in ("", "0")
               else "; on a machine with an NVIDIA GPU, pip install \"fastbp[cuda]\" and use device='cuda' "
               "(NUMBA_ENABLE_CUDASIM=1 runs Numba's CUDA simulator instead: a testing tool, thousands of "
               "times slower than the CPU)"))


def check_device(device):
    """Validate ``device`` ("cpu" or "cuda"); raise before anything changes."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        reason = _unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"device='cuda' is not available: {reason}")
    return device


def _device_parameters(net, state=None, training=True):
    from .kernels import cuda as kc
    batchnorm = (net.bn_goff, net.bn_running, net.bn_momentum) if net.batchnorm else None
    return kc.DeviceParameters(net.theta, net.layout, net.codes,
                               None if state is None else state.state1,
                               None if state is None else state.state2, net.keep, training, batchnorm)


def hyper_vector(optimizer, lr, l1, l2, clip_norm, clip_value):
    """The float64 hyper-parameter vector (indexed by ``spec.H_*``) of the CUDA kernels."""
    hyper = np.zeros(spec.N_HYPER, dtype=np.float64)
    constants = optimizer.constants()
    hyper[spec.H_LR] = lr
    hyper[spec.H_MOMENTUM] = constants["momentum"]
    hyper[spec.H_BETA2] = constants["beta2"]
    hyper[spec.H_EPS] = constants["eps"]
    hyper[spec.H_L1] = l1
    hyper[spec.H_L2] = l2
    hyper[spec.H_CLIP_NORM] = clip_norm
    hyper[spec.H_CLIP_VALUE] = clip_value
    return hyper


class CudaEngine:
    """The epochs of one fit on the GPU (see ``engine.Engine``), driven by
    ``training.run_epochs`` exactly as ``cpu_training.CpuEngine`` (same constructor
    arguments, permutations, schedule, History, divergence rule).

    X and Y go to the device once; θ, gradient and optimizer state stay there for the
    fit; the permutation, the step counters and the hyper-parameters are uploaded and
    the loss sum, correct count, non-finite count and per-layer gradient diagnostics
    read back once per epoch (whole epochs only: ``chunked`` is False). Dropout masks
    come from ``kernels/rng.py`` with (fit seed, global epoch, step, layer, row, unit),
    as on the CPU. ``checkpoint`` is accepted and changes nothing on the GPU (every
    activation is kept: the results are the same, the memory saving is CPU-only).
    Batch normalization's running statistics live on the device with θ (backed up,
    restored and copied to the network with it). ``sample_weight`` (float64, one per
    row) goes to the device once with X and Y (``kernels.cuda.BatchWeights``: one more
    launch per step, a batch whose weights sum to 0 is skipped, as on the CPU).
    ``threads`` (the CPU's thread choice) has no meaning on the GPU and is ignored.
    """

    computes_diagnostics = True
    chunked = False

    def __init__(self, net, X, Y, state, *, batch_size, optimizer, loss_code, l1, l2, clip_norm, clip_value,
                 checkpoint=None, seed=0, sample_weight=None, threads=None):
        from numba import cuda

        from .kernels import cuda as kc
        self.kc, self.net, self.state, self.optimizer = kc, net, state, optimizer
        self.constants = (l1, l2, clip_norm, clip_value)
        self.bmax = min(batch_size, X.shape[0])
        self.n_batches = -(-X.shape[0] // self.bmax)
        kc.check_free_memory(kc.fit_bytes(net.sizes, X.shape[0], Y.shape[1], self.bmax, net.theta.shape[0],
                                          net.dtype, kc.cuda_config.config, net.batchnorm,
                                          sample_weight is not None), "this fit")
        self.params = _device_parameters(net, state)
        reduce = bool(clip_norm > 0 or l1 or l2)
        self.plan = kc.EpochPlan(kc.kernels(net.dtype), self.params, cuda.to_device(X), cuda.to_device(Y),
                                 self.bmax, loss_code, optimizer.code, reduce, dropout=any(net.dropout),
                                 weights=sample_weight)
        self._backup = [cuda.device_array_like(live) for live in self._buffers()]
        self.step = int(state.step[0])
        self.seed = int(seed)
        self.loss_code = loss_code
        self._finite = True
        self._validation = None

    def _buffers(self):
        """What save_point / restore keep: θ, the optimizer states, the running statistics."""
        params = self.params
        running = () if params.batchnorm is None else (params.batchnorm.running,)
        return (params.theta, params.state1, params.state2, *running)

    def train_batches(self, perm, first, stop, epoch, lr):
        params, weights = self.params, self.plan.weights
        hyper = params.hyper if weights is None else weights.epoch_hyper   # batch_weights scales L1/L2 per batch
        hyper.copy_to_device(hyper_vector(self.optimizer, lr, *self.constants))
        params.counters.copy_to_device(np.array([self.step, self.seed, epoch], dtype=np.int64))
        if first == 0:
            params.diagnostics.copy_to_device(np.zeros((len(self.net.codes), 2)))
        self.step += self.kc.train_batches(self.plan, perm, first, stop)
        total = float(self.plan.work.sums.copy_to_host()[0])  # synchronises
        correct, nonfinite = (int(c) for c in self.plan.work.counts.copy_to_host())
        self._finite = not nonfinite
        return total, correct

    def finite(self):
        return self._finite

    def validate(self, Xv, Yv, weights=None):
        """(summed data loss — Σ w_i ℓ_i with ``weights`` —, correct count) of the current
        device θ on the validation set, which goes to the device (with its weights) on the
        first call of the fit."""
        from numba import cuda
        kc = self.kc
        if self._validation is None or self._validation[0] is not Xv:
            chunk = kc.inference_chunk(self.net.sizes, Xv.shape[0], self.net.dtype)
            work = kc.workspace(self.params, self.net.sizes[0], chunk)
            self._validation = (Xv, cuda.to_device(Xv), cuda.to_device(Yv), chunk, work, _to_device(weights))
        _, Xd, Yd, chunk, work, wd = self._validation
        return kc.evaluate(self.plan.K, self.params, Xd, Yd, self.loss_code, chunk, work, wd)

    def diagnostics(self):
        return self.params.diagnostics.copy_to_host()

    def save_point(self):
        for backup, live in zip(self._backup, self._buffers()):
            backup.copy_to_device(live)
        self._saved_step = self.step

    def restore(self):
        for backup, live in zip(self._backup, self._buffers()):
            live.copy_to_device(backup)
        self.step = self._saved_step

    def _network_buffers(self):
        """(device, host) pairs of what the network holds: θ and the running statistics."""
        params, net = self.params, self.net
        pairs = [(params.theta, net.theta)]
        if params.batchnorm is not None:
            pairs.append((params.batchnorm.running, net.bn_running))
        return pairs

    def to_host(self):
        for device, host in self._network_buffers():
            device.copy_to_host(host)

    def from_host(self):
        for device, host in self._network_buffers():
            device.copy_to_device(host)

    def finish(self):
        self.to_host()
        self.params.state1.copy_to_host(self.state.state1)
        self.params.state2.copy_to_host(self.state.state2)
        self.params.grad.copy_to_host(self.state.grad)
        self.state.step[0] = self.step


def forward(net, X, chunk):
    """Output activations a^L of every row of X, computed on the device."""
    from numba import cuda

    from .kernels import cuda as kc
    params = _device_parameters(net, training=False)
    out = cuda.device_array((X.shape[0], net.n_outputs), dtype=net.dtype)
    kc.predict(kc.kernels(net.dtype), params, cuda.to_device(X), out,
               max(chunk, kc.inference_chunk(net.sizes, X.shape[0], net.dtype)))
    return out.copy_to_host()


def _to_device(weights):
    """Sample weights (float64) on the device, or None."""
    from numba import cuda
    return None if weights is None else cuda.to_device(np.ascontiguousarray(weights, dtype=np.float64))


def evaluate(net, X, Y, loss_code, chunk, weights=None):
    """(summed data loss — Σ w_i ℓ_i with ``weights`` —, correct count) over X, Y
    computed on the device."""
    from numba import cuda

    from .kernels import cuda as kc
    return kc.evaluate(kc.kernels(net.dtype), _device_parameters(net, training=False), cuda.to_device(X),
                       cuda.to_device(Y), loss_code, max(chunk, kc.inference_chunk(net.sizes, X.shape[0], net.dtype)),
                       weights=_to_device(weights))


def loss_and_gradient(net, X, Y, loss_code, weights=None):
    """(mean data loss, flat gradient) over the full batch X, Y computed on the device;
    with ``weights`` the weighted mean Σ w_i ℓ_i / Σw and its gradient."""
    from numba import cuda

    from .kernels import cuda as kc
    params = _device_parameters(net)
    value = kc.loss_and_gradient(kc.kernels(net.dtype), params, cuda.to_device(X), cuda.to_device(Y), loss_code,
                                 weights)
    return value, params.grad.copy_to_host()
