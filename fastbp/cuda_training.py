"""``device="cuda"``: the fit / forward / evaluate wrappers around ``kernels.cuda``.

Layering as in STUMPY's GPU code: ``kernels.cuda`` holds the ``@cuda.jit`` kernels
and the host drivers that launch them over device buffers; this module moves data
between the ``MLP`` and the device and keeps the epoch loop (schedule, History,
callbacks, divergence handling) identical in meaning to ``training.run_epochs``.

Per fit: X and Y are copied to the device once, θ, gradient and optimizer state live
there for the whole fit, the permutation is uploaded once per epoch (drawn from the
same generator as on the CPU, so both devices see the same batches) and the epoch's
loss sum, correct count and non-finite count are read back once per epoch. θ and the
optimizer state are copied back into the network at the end (and before every
callback, which may inspect the network; θ is re-uploaded after the callbacks in
case they changed it).
"""

import os
import time
import warnings

import numpy as np

from . import spec
from .training import History, hyper_vector


def cuda_available():
    """True if ``device="cuda"`` can run: numba-cuda is installed and sees a GPU, or
    Numba's CUDA simulator is enabled (``NUMBA_ENABLE_CUDASIM=1`` before numba is
    imported)."""
    return _unavailable_reason() is None


def _unavailable_reason():
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - numba-cuda is a dependency of fastbp[cuda]
        return f"numba.cuda cannot be imported ({exc}); install fastbp[cuda]"
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # pragma: no cover - driver errors vary
        return f"numba.cuda.is_available() raised {exc!r}"
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "")
    return ("no CUDA GPU is usable (numba.cuda.is_available() is False: no NVIDIA driver or device)"
            + (" and NUMBA_ENABLE_CUDASIM was set only after numba was imported" if sim not in ("", "0")
               else "; set NUMBA_ENABLE_CUDASIM=1 before importing numba to use the CUDA simulator"))


def check_device(device):
    """Validate ``device`` ("cpu" or "cuda"); raise before anything changes."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        reason = _unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"device='cuda' is not available: {reason}")
    return device


def _device_parameters(net, state=None):
    from .kernels import cuda as kc
    return kc.DeviceParameters(net.theta, net.layout, net.codes,
                               None if state is None else state.state1,
                               None if state is None else state.state2)


def run_epochs(net, X, Y, *, loss_code, optimizer, epochs, batch_size, shuffle, l1, l2,
               clip_norm, clip_value, schedule, seed, callbacks, verbose, state):
    """``training.run_epochs`` on the GPU: same arguments, same History, same
    divergence rule (restore the previous epoch's θ and state, warn, stop)."""
    from numba import cuda

    from .kernels import cuda as kc

    n = X.shape[0]
    K = kc.kernels(net.dtype)
    params = _device_parameters(net, state)
    hyper = hyper_vector(optimizer, optimizer.lr, l1, l2, clip_norm, clip_value)
    reduce = bool(hyper[spec.H_CLIP_NORM] > 0 or l1 or l2)
    plan = kc.EpochPlan(K, params, cuda.to_device(X), cuda.to_device(Y), min(batch_size, n), loss_code,
                        optimizer.code, reduce)
    backups = [cuda.device_array_like(params.theta) for _ in range(3)]
    rng = np.random.default_rng(seed)
    perm = np.arange(n, dtype=np.int64)
    history = History()
    classification = net.output != "identity"
    step = int(state.step[0])
    for epoch in range(epochs):
        hyper[spec.H_LR] = schedule(epoch, optimizer.lr)
        params.hyper.copy_to_device(hyper)
        if shuffle:
            perm = rng.permutation(n).astype(np.int64)
        for backup, source in zip(backups, (params.theta, params.state1, params.state2)):
            backup.copy_to_device(source)
        t0 = time.perf_counter()
        step_after = kc.train_epoch(plan, perm, step)
        total = float(plan.work.sums.copy_to_host()[0])   # synchronises
        correct, nonfinite = (int(c) for c in plan.work.counts.copy_to_host())
        seconds = time.perf_counter() - t0
        epoch_loss = total / n
        if not np.isfinite(epoch_loss) or nonfinite:
            for backup, target in zip(backups, (params.theta, params.state1, params.state2)):
                target.copy_to_device(backup)
            warnings.warn(f"training diverged in epoch {epoch + 1} (non-finite loss or parameters); "
                          "parameters restored to the end of the previous epoch. Lower the learning "
                          "rate or use clip_norm.", RuntimeWarning, stacklevel=3)
            history.stopped_early = True
            break
        step = step_after
        history.record(loss=epoch_loss, accuracy=correct / n if classification else float("nan"),
                       lr=float(hyper[spec.H_LR]), seconds=seconds,
                       samples_per_second=n / seconds if seconds > 0 else float("inf"))
        if verbose:
            acc = f"  accuracy {history.accuracy[-1]:.4f}" if classification else ""
            print(f"epoch {epoch + 1:>4}/{epochs}  loss {epoch_loss:.6f}{acc}  "
                  f"({history.samples_per_second[-1]:,.0f} samples/s) [cuda]")
        if callbacks:
            params.theta.copy_to_host(net.theta)
            stop = any(cb(net, epoch, history) for cb in callbacks)
            params.theta.copy_to_device(net.theta)
            if stop:
                history.stopped_early = True
                break
    params.theta.copy_to_host(net.theta)
    params.state1.copy_to_host(state.state1)
    params.state2.copy_to_host(state.state2)
    params.grad.copy_to_host(state.grad)
    state.step[0] = step
    return history


def forward(net, X, chunk):
    """Output activations a^L of every row of X, computed on the device."""
    from numba import cuda

    from .kernels import cuda as kc
    params = _device_parameters(net)
    out = cuda.device_array((X.shape[0], net.n_outputs), dtype=net.dtype)
    kc.predict(kc.kernels(net.dtype), params, cuda.to_device(X), out, chunk)
    return out.copy_to_host()


def evaluate(net, X, Y, loss_code, chunk):
    """(summed data loss, correct count) over X, Y computed on the device."""
    from numba import cuda

    from .kernels import cuda as kc
    return kc.evaluate(kc.kernels(net.dtype), _device_parameters(net), cuda.to_device(X),
                       cuda.to_device(Y), loss_code, chunk)
