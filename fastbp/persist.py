"""Save and load a network: one ``.npz`` file, no pickle.

The archive holds a JSON header (``header``: format name and version, fastbp
version, architecture, dtype, loss, optimizer class and hyper-parameters, epochs
trained, learning-rate scale) and plain arrays: ``theta`` (the flat parameters, see
``layout.py``) and, when the network has been fitted, the optimizer state
``state1``, ``state2`` and ``step``, and for batch normalization the running
statistics ``bn_running``. Files are written atomically (a temporary file
in the target directory, fsync, then ``os.replace``) and read with
``allow_pickle=False``; anything malformed or truncated raises a ``ValueError``
naming the file.
"""

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "fastbp-model"
FORMAT_VERSION = 1


def _header(net):
    from . import __version__
    state, optimizer = net.fit_state, net.fit_optimizer
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "fastbp_version": __version__,
        "sizes": net.sizes, "activations": net.activations, "output": net.output, "init": net.init,
        "seed": net.seed, "dtype": net.dtype.name, "loss": net.loss,
        "dropout": net.dropout, "batchnorm": net.batchnorm, "bn_momentum": net.bn_momentum,
        "has_state": state is not None,
    }
    if state is not None:
        header["optimizer"] = {"name": optimizer.name, "params": dict(vars(optimizer))}
        header["epochs_done"] = int(state.epochs_done)
        header["lr_scale"] = float(state.lr_scale)
    return header


def save(net, path):
    """Write ``net`` (parameters, optimizer state, header) to ``path`` atomically."""
    path = os.fspath(path)
    arrays = {"header": np.array(json.dumps(_header(net))), "theta": net.theta}
    if net.batchnorm:
        arrays["bn_running"] = net.bn_running
    if net.fit_state is not None:
        arrays.update(state1=net.fit_state.state1, state2=net.fit_state.state2, step=net.fit_state.step)
    arrays.update(_metadata_arrays(net))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Malformed(Exception):
    pass


def _require(header, key, kind):
    if key not in header or not isinstance(header[key], kind):
        raise _Malformed(f"header field {key!r} missing or not {kind}")
    return header[key]


def _array(arrays, name, dtype, shape):
    if name not in arrays:
        raise _Malformed(f"array {name!r} missing")
    arr = arrays[name]
    if arr.dtype != dtype or arr.shape != shape:
        raise _Malformed(f"array {name!r} has dtype {arr.dtype} and shape {arr.shape}, "
                         f"expected {np.dtype(dtype)} and {shape}")
    return arr


def load(path):
    """Read a network written by :func:`save`; returns a new ``MLP``."""
    from .network import MLP
    from .optimizers import OPTIMIZERS
    from .training import FitState
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        if "header" not in arrays or arrays["header"].shape != () or arrays["header"].dtype.kind != "U":
            raise _Malformed("no JSON header")
        header = json.loads(str(arrays["header"][()]))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise _Malformed("not a fastbp model (header format field)")
        version = _require(header, "format_version", int)
        if version > FORMAT_VERSION:
            raise _Malformed(f"format version {version} is newer than this fastbp reads ({FORMAT_VERSION})")
        net = MLP(_require(header, "sizes", list), activation=_require(header, "activations", list),
                  output=_require(header, "output", str), init=_require(header, "init", str),
                  seed=_require(header, "seed", int), dtype=_require(header, "dtype", str),
                  dropout=header.get("dropout", 0.0), batchnorm=header.get("batchnorm", False),
                  bn_momentum=header.get("bn_momentum", 0.9))
        net.theta[...] = _array(arrays, "theta", net.dtype, (net.n_params,))
        if net.batchnorm:
            net.bn_running[...] = _array(arrays, "bn_running", np.float64, net.bn_running.shape)
            if (net.bn_running[net.bn_running.size // 2:] < 0).any():
                raise _Malformed("negative running variance")
        loss = header.get("loss")
        if loss is not None:
            net._loss_code(loss)
        net.loss = loss
        if _require(header, "has_state", bool):
            spec_ = _require(header, "optimizer", dict)
            name = spec_.get("name")
            if name not in OPTIMIZERS or not isinstance(spec_.get("params"), dict):
                raise _Malformed(f"unknown optimizer {name!r}")
            optimizer = OPTIMIZERS[name](**spec_["params"])
            state = FitState(net.n_params, net.dtype)
            state.state1[...] = _array(arrays, "state1", net.dtype, (net.n_params,))
            state.state2[...] = _array(arrays, "state2", net.dtype, (net.n_params,))
            state.step[...] = _array(arrays, "step", np.int64, (1,))
            state.epochs_done = _require(header, "epochs_done", int)
            state.lr_scale = float(_require(header, "lr_scale", (int, float)))
            if state.epochs_done < 0 or state.step[0] < 0 or not state.lr_scale > 0:
                raise _Malformed("negative epoch or step count, or lr_scale <= 0")
            net.fit_state, net.fit_optimizer = state, optimizer
    except (_Malformed, zipfile.BadZipFile, zlib.error, json.JSONDecodeError, KeyError, TypeError,
            ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{path!r} is not a valid fastbp model file: {exc}") from exc
    if not np.isfinite(net.theta).all():
        raise ValueError(f"{path!r} is not a valid fastbp model file: non-finite parameters")
    _load_metadata(net, arrays, path)
    return net


# --- optional metadata: feature names, class labels, standardisation ------------------------
# Kept apart from the format above: a JSON string array ``metadata`` ({"feature_names":
# [...] or null, "classes": [...] or null}) and, with a standardizer, the float64 arrays
# ``standardizer_mean`` / ``standardizer_scale``. Files without them load as before.


def _metadata_arrays(net):
    arrays = {}
    if net.feature_names is not None or net.classes is not None:
        classes = None if net.classes is None else np.asarray(net.classes).tolist()
        names = None if net.feature_names is None else [str(n) for n in net.feature_names]
        arrays["metadata"] = np.array(json.dumps({"feature_names": names, "classes": classes}))
    if net.standardizer is not None:
        arrays.update(standardizer_mean=net.standardizer.mean, standardizer_scale=net.standardizer.scale)
    return arrays


def _load_metadata(net, arrays, path):
    from .data import Standardizer
    try:
        if "metadata" in arrays:
            meta = json.loads(str(arrays["metadata"][()]))
            names, classes = meta.get("feature_names"), meta.get("classes")
            if names is not None and (len(names) != net.n_features or not all(isinstance(n, str) for n in names)):
                raise _Malformed(f"{len(names)} feature names for {net.n_features} inputs")
            if classes is not None and len(classes) != (2 if net.n_outputs == 1 else net.n_outputs):
                raise _Malformed(f"{len(classes)} class labels for {net.n_outputs} outputs")
            net.feature_names = names
            net.classes = None if classes is None else np.array(classes)
        if "standardizer_mean" in arrays:
            mean = _array(arrays, "standardizer_mean", np.float64, (net.n_features,))
            scale = _array(arrays, "standardizer_scale", np.float64, (net.n_features,))
            net.standardizer = Standardizer(mean, scale)
    except (_Malformed, json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path!r} is not a valid fastbp model file: metadata: {exc}") from exc
