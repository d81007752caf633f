"""The flat parameter buffer.

All weights and biases of a network live in one contiguous 1-D array ``theta``:
layer by layer, W^l (fan_in × fan_out, row-major) followed by b^l. The gradient
and every optimizer state are buffers of the same length, so an optimizer step
is one loop over a flat vector, clipping one reduction, gradcheck perturbs
``theta[i]`` and save/load is one array.

Kernels receive ``theta`` plus the int64 table built by :func:`make_layout`,
one row per layer: ``[fan_in, fan_out, weight_offset, bias_offset]``.
"""

import numpy as np

FAN_IN, FAN_OUT, W_OFF, B_OFF = 0, 1, 2, 3


def make_layout(sizes, batchnorm=None):
    """Layout table for layer sizes ``[n_0, n_1, ..., n_L]``; returns (table, n_params).

    ``batchnorm`` (one bool per layer) reserves, right after the bias of each layer
    with batch normalization, its gain γ (n_l entries); that layer's bias acts as
    the BN shift β (see :func:`gamma_offsets`, :func:`update_layout`).
    """
    sizes = [int(s) for s in sizes]
    batchnorm = [False] * (len(sizes) - 1) if batchnorm is None else list(batchnorm)
    table = np.zeros((len(sizes) - 1, 4), dtype=np.int64)
    offset = 0
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        table[l] = (fan_in, fan_out, offset, offset + fan_in * fan_out)
        offset += fan_in * fan_out + fan_out * (2 if batchnorm[l] else 1)
    return table, offset


def gamma_offsets(table, batchnorm):
    """int64 offset of each layer's BN gain γ in theta (right after β), −1 without BN."""
    return np.array([row[B_OFF] + row[FAN_OUT] if bn else -1 for row, bn in zip(table, batchnorm)],
                    dtype=np.int64)


def update_layout(table, batchnorm):
    """The table handed to the update kernel: a BN layer's "bias" region is doubled so
    that one optimizer pass covers β and γ (unregularised, like biases)."""
    out = table.copy()
    for row, bn in zip(out, batchnorm):
        if bn:
            row[FAN_OUT] *= 2
    return out


def weight_views(theta, table):
    """Lists of views ``(weights, biases)`` into ``theta``; writes go through."""
    weights, biases = [], []
    for fan_in, fan_out, w_off, b_off in table:
        weights.append(theta[w_off:w_off + fan_in * fan_out].reshape(fan_in, fan_out))
        biases.append(theta[b_off:b_off + fan_out])
    return weights, biases
