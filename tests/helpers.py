"""Shared test helpers: run the NumPy reference on a copy of a network's parameters and
compare with a tolerance that depends on the dtype (float64 tight, float32 loose).

(A module of its own, not conftest.py: tests/cuda has a conftest too, and two
``conftest`` modules cannot both be imported by name.)"""

import numpy as np

from fastbp import reference

RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def assert_close(actual, expected, dtype, what=""):
    """Relative to the scale of ``expected``: float64 to ~1e-10, float32 to ~1e-4."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    rtol = RTOL[np.dtype(dtype)]
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def one_hot(labels, k, dtype):
    Y = np.zeros((len(labels), k), dtype=dtype)
    Y[np.arange(len(labels)), labels] = 1
    return Y


def make_data(n, sizes, output, dtype, seed=0):
    """Random inputs and targets (one-hot / {0,1} / real) suited to ``output``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    k = sizes[-1]
    if output == "softmax":
        Y = one_hot(rng.integers(0, k, n), k, dtype)
    elif output == "sigmoid":
        Y = (rng.random((n, k)) < 0.5).astype(dtype)
    elif output == "exp":  # counts, zeros included
        Y = rng.poisson(1.5, size=(n, k)).astype(dtype)
    else:
        Y = rng.normal(size=(n, k)).astype(dtype)
    return X, Y


class ReferenceTrainer:
    """The reference's copy of a network: parameters, optimizer state, epochs."""

    def __init__(self, net):
        self.weights = [W.copy() for W in net.weights]
        self.biases = [b.copy() for b in net.biases]
        self.activations = net.layer_activations
        self.state = reference.new_optimizer_state([*self.weights, *self.biases])

    def epoch(self, X, Y, perm, batch_size, loss, optimizer, lr, l1=0.0, l2=0.0, clip_norm=None,
              clip_value=None, sample_weight=None):
        c = optimizer.constants()
        return reference.train_epoch(self.weights, self.biases, self.activations, X, Y, perm,
                                     batch_size, loss, optimizer.name, self.state, lr, l1, l2,
                                     clip_norm, clip_value, sample_weight=sample_weight,
                                     momentum=c["momentum"], beta2=c["beta2"], eps=c["eps"])

    def flat(self):
        return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in zip(self.weights, self.biases)])
