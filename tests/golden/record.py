"""Bitwise record of what today's kernels train: ``python tests/golden/record.py`` rewrites
this machine's ``golden-<blas architecture>.json`` (sha256 of θ, the optimizer state and a
forward pass after a short fit, for a covering grid of configurations);
``tests/test_golden.py`` compares the current code with the record of the same BLAS.

A refactoring of the compiled core must leave every entry unchanged. Only a deliberate
change of results (say, a new dropout generator) re-records entries, named in its commit.
Bits depend on the BLAS library and the CPU's kernel choice, so each record stores the
threadpoolctl identification, one file per BLAS architecture (``golden-haswell.json``,
``golden-skylakex.json``, ...), and the test skips where none matches. Record a new
architecture from a commit whose results the other records already hold (the code they
were last taken with), never from a change under test.
"""

import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def records():
    """The record files, one per BLAS architecture."""
    return sorted(HERE.glob("golden-*.json"))


def record_path(blas):
    """This BLAS identification's record file."""
    arch = "-".join(sorted({str(info.get("architecture")).lower() for info in blas}))
    return HERE / f"golden-{arch}.json"

ACTIVATIONS = ["relu", "tanh", "sigmoid", "leaky_relu", "identity"]
OUTPUTS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "mse"),
           ("softmax", "mse"), ("sigmoid", "mse")]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "rmsprop", "adam"]
#: full batch, mini-batches with a partial last one, single rows (SGD)
BATCHES = [None, 7, 1]
DTYPES = ["float64", "float32"]
#: the optional modes and extras, each on a few plain configurations
EXTRAS = [{"l1": 1e-3, "l2": 1e-2}, {"clip_norm": 0.05}, {"clip_value": 0.01},
          {"l2": 1e-2, "clip_norm": 0.1, "clip_value": 0.05}, {"schedule": "exponential"},
          {"dropout": 0.3}, {"dropout": [0.2, 0.0]}, {"batchnorm": True}, {"checkpoint": 1},
          {"checkpoint": True}]


def configurations():
    """name → config dict. Every optimizer × batch mode × output/loss × dtype, with the
    hidden activation cycling; every extra with every optimizer and dtype (batch mode
    cycling)."""
    configs = {}
    for i, (opt, batch, (output, loss), dtype) in enumerate(
            itertools.product(OPTIMIZERS, BATCHES, OUTPUTS, DTYPES)):
        act = ACTIVATIONS[i % len(ACTIVATIONS)]
        configs[f"{act}-{output}-{loss}-{opt}-b{batch}-{dtype}"] = dict(
            activation=act, output=output, loss=loss, optimizer=opt, batch_size=batch, dtype=dtype)
    for i, (extra, opt, dtype) in enumerate(itertools.product(EXTRAS, OPTIMIZERS, DTYPES)):
        act = ACTIVATIONS[i % len(ACTIVATIONS)]
        batch = BATCHES[i % len(BATCHES)]
        tag = ",".join(f"{k}={v}" for k, v in extra.items())
        configs[f"{act}-{opt}-b{batch}-{dtype}-{tag}"] = dict(
            activation=act, output="softmax", loss="cross_entropy", optimizer=opt, batch_size=batch,
            dtype=dtype, **extra)
    return configs


def _sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:32]


def train(config):
    """Fit a tiny net for 2 epochs on fixed data; sha256 prefixes of what it holds after."""
    import fastbp
    from fastbp import optimizers
    config = dict(config)
    net_args = {k: config.pop(k) for k in ("activation", "output", "dtype", "dropout", "batchnorm")
                if k in config}
    sizes = [5, 9, 6, 3]
    net = fastbp.MLP(sizes, seed=3, **net_args)
    rng = np.random.default_rng(11)
    n = 23
    X = rng.normal(size=(n, sizes[0]))
    if net.output == "softmax":
        y = rng.integers(0, sizes[-1], n)
    elif net.output == "sigmoid":
        y = (rng.random((n, sizes[-1])) < 0.5).astype(float)
    else:
        y = rng.normal(size=(n, sizes[-1]))
    lr = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 0.01, "adam": 0.01}
    opt_name = config.pop("optimizer")
    optimizer = optimizers.get_optimizer(opt_name).__class__(lr=lr[opt_name])
    history = net.fit(X, y, optimizer=optimizer, epochs=2, seed=5, gradient_warnings=False, **config)
    state = net.fit_state
    out = {"theta": _sha(net.theta), "state1": _sha(state.state1), "state2": _sha(state.state2),
           "step": int(state.step[0]), "forward": _sha(net.forward(X)),
           "loss": _sha(np.array(history.loss, dtype=np.float64))}
    if net.batchnorm:
        out["bn_running"] = _sha(net.bn_running)
    return out


def platform():
    """numpy / numba / BLAS identification the bits depend on."""
    import numba
    import scipy.linalg  # noqa: F401  (Numba's np.dot calls scipy's BLAS: load it before asking)
    from threadpoolctl import threadpool_info
    blas = sorted(({k: info.get(k) for k in ("internal_api", "version", "architecture", "threading_layer")}
                   for info in threadpool_info() if info.get("user_api") == "blas"),
                  key=lambda info: json.dumps(info, sort_keys=True))
    return {"numpy": np.__version__, "numba": numba.__version__, "blas": blas}


def record(names=None):
    """Re-record all entries (or only ``names``) into this platform's record file; a
    configuration that fit refuses (``ValueError``) is recorded as None."""
    here = platform()
    path = record_path(here["blas"])
    old = json.loads(path.read_text()) if path.exists() else {"results": {}}
    results = old["results"]
    for name, config in configurations().items():
        if names is None or name in names:
            try:
                results[name] = train(config)
            except ValueError:
                results[name] = None
    path.write_text(json.dumps({"platform": here, "results": results}, indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    only = sys.argv[1:] or None
    if only == ["dropout"]:
        only = [n for n, c in configurations().items() if "dropout" in c]
    print(record(only))
