"""Weight initialisation (biases start at zero).

* ``xavier_uniform`` / ``glorot_uniform`` (alias ``xavier``, ``glorot``): U(±√(6/(n_in+n_out)))
* ``xavier_normal`` / ``glorot_normal``: N(0, 2/(n_in+n_out))
* ``he_uniform``: U(±√(6/n_in))
* ``he_normal`` (alias ``he``): N(0, 2/n_in)

Values are drawn in float64 from ``numpy.random.default_rng(seed)`` and then cast,
so float32 and float64 networks with one seed start from the same weights.
"""

import numpy as np

INITS = {
    "xavier": "xavier_uniform", "glorot": "xavier_uniform", "xavier_uniform": "xavier_uniform",
    "glorot_uniform": "xavier_uniform", "xavier_normal": "xavier_normal", "glorot_normal": "xavier_normal",
    "he": "he_normal", "he_normal": "he_normal", "he_uniform": "he_uniform",
}


def resolve_init(name):
    if not isinstance(name, str) or name.lower() not in INITS:
        raise ValueError(f"unknown init {name!r}; choose one of {sorted(INITS)}")
    return INITS[name.lower()]


def init_weights(fan_in, fan_out, scheme, rng):
    """A (fan_in, fan_out) float64 matrix drawn with ``scheme`` from ``rng``."""
    scheme = resolve_init(scheme)
    if scheme == "xavier_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))
    if scheme == "xavier_normal":
        return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))
    if scheme == "he_uniform":
        limit = np.sqrt(6.0 / fan_in)
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
