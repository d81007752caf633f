"""Counter-based random numbers shared by the reference, the CPU and the CUDA kernels.

Dropout masks must not depend on which device, thread or order computes them, so a
keep/drop decision is a pure function of where it falls:
``(seed, epoch, step, layer, row, column)`` → 64 bits by the SplitMix64 finaliser
(Steele, Lea & Flood 2014), then unit kept iff its top 32 bits are below
``keep_threshold(keep)`` = round(keep · 2³²). The same integer arithmetic on every
backend gives the same masks bit for bit, so a fit with dropout reaches the same
parameters on the CPU and on the GPU (to float rounding of the rest).

The two scalar functions are plain Python over ``numpy.uint64`` so that Numba
compiles the very same source for ``@njit`` (``kernels/cpu.py``) and as a CUDA device
function (``kernels/cuda.py``); :func:`keep_mask` is the vectorised NumPy version for
``reference.py``. This module imports no Numba.
"""

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)


def stream_key(seed, epoch, step, layer):
    """64-bit key of one layer's mask in one optimizer step (computed once per layer
    and batch); ``step`` is the 1-based optimizer step count, ``layer`` the 0-based
    index of the hidden layer whose activations are dropped."""
    key = np.uint64(seed)
    for value in (np.uint64(epoch), np.uint64(step), np.uint64(layer)):
        key = (key ^ value) + _GOLDEN
        key = (key ^ (key >> _S30)) * _M1
        key = (key ^ (key >> _S27)) * _M2
        key = key ^ (key >> _S31)
    return key


def keep_unit(key, row, col, threshold):
    """True where unit (row, col) of the batch is kept: SplitMix64 of the key and the
    position, top 32 bits compared with ``threshold`` (see :func:`keep_threshold`)."""
    h = key ^ ((np.uint64(row) << _S32) | np.uint64(col))
    h = h + _GOLDEN
    h = (h ^ (h >> _S30)) * _M1
    h = (h ^ (h >> _S27)) * _M2
    h = h ^ (h >> _S31)
    return (h >> _S32) < threshold


def keep_threshold(keep):
    """The uint64 threshold for keep probability ``keep`` in (0, 1]: round(keep · 2³²)."""
    return np.uint64(round(float(keep) * 2.0 ** 32))


def keep_mask(seed, epoch, step, layer, rows, cols, keep):
    """Boolean (rows, cols) mask of the kept units: :func:`keep_unit` for every position,
    vectorised in NumPy (the reference's mask)."""
    with np.errstate(over="ignore"):
        key = stream_key(seed, epoch, step, layer)
        r = np.arange(rows, dtype=np.uint64)[:, None]
        c = np.arange(cols, dtype=np.uint64)[None, :]
        return keep_unit(key, r, c, keep_threshold(keep))
