"""Save and load a network: one ``.npz`` file, no pickle.

The archive holds a JSON header (``header``: format name and version, fastbp
version, architecture, dtype, loss, optimizer class and hyper-parameters, epochs
trained, learning-rate scale) and plain arrays: ``theta`` (the flat parameters, see
``layout.py``) and, when the network has been fitted, the optimizer state
``state1``, ``state2`` and ``step``, and for batch normalization the running
statistics ``bn_running``.

Writing is atomic: a temporary ``.fastbp-<host>-<pid>-<random>.tmp`` in the target
directory (created with the process umask, then given the mode of the file it
replaces), fsync, ``os.replace``. A save also removes the temporary files of this
host's processes that no longer run (a save killed midway leaves one behind).

Reading trusts nothing in the file: :func:`load` parses the header, checks every
layer size and the parameter count it implies, then reads only the members it uses,
each after checking its ``.npy`` header (dtype, shape, and a size the archive can
really hold) and before allocating it; values must be finite (second moments >= 0,
running variances >= 0, ``lr_scale`` > 0). Anything else raises a ``ValueError``
naming the file. :func:`load` returns the header and the arrays;
``fastbp.MLP.load`` builds the network from them.
"""

import contextlib
import itertools
import json
import math
import os
import re
import secrets
import socket
import zipfile
import zlib

import numpy as np

from .optimizers import OPTIMIZERS

FORMAT = "fastbp-model"
FORMAT_VERSION = 1
MAX_HEADER_CHARS = 1 << 20  # the JSON header of a 1000-layer network is ~20 kB
MAX_DEFLATE_RATIO = 1100  # deflate expands at most ~1032:1; anything claiming more is forged


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


# --- writing ---------------------------------------------------------------------------


def _host():
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or a pid we cannot ask about): leave it
    return True


def remove_stale_temporaries(directory):
    """Delete ``.fastbp-<this host>-<pid>-*.tmp`` files whose process no longer runs;
    returns their names."""
    prefix = f".fastbp-{_host()}-"
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = re.fullmatch(re.escape(prefix) + r"(\d+)-[0-9a-f]+\.tmp", name)
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def _create_temporary(directory):
    """(fd, path) of a new temporary file, created with mode 0o666 less the umask."""
    prefix = os.path.join(directory, f".fastbp-{_host()}-{os.getpid()}-")
    while True:
        tmp = prefix + secrets.token_hex(6) + ".tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def save(net, path):
    """Write ``net`` (parameters, optimizer state, header) to ``path`` atomically.

    A new file gets the mode ``0o666`` less the umask; an existing file keeps its
    mode."""
    path = os.fspath(path)
    arrays = {"header": np.array(json.dumps(_header(net))), "theta": net.theta}
    if net.batchnorm:
        arrays["bn_running"] = net.bn_running
    if net.fit_state is not None:
        arrays.update(state1=net.fit_state.state1, state2=net.fit_state.state2, step=net.fit_state.step)
    arrays.update(_metadata_arrays(net))
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(directory)
    fd, tmp = _create_temporary(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- reading ---------------------------------------------------------------------------


class _Malformed(Exception):
    pass


def _require(header, key, kind):
    value = header.get(key)
    if key not in header or not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _Malformed(f"header field {key!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def _sizes(header):
    """The layer widths, checked as Python ints (no array is sized from them here)."""
    sizes = _require(header, "sizes", list)
    if len(sizes) < 2 or len(sizes) > 10_000:
        raise _Malformed(f"header field 'sizes' must list 2 to 10000 widths, got {len(sizes)}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise _Malformed(f"every layer size must be an integer >= 1, got {s!r}")
    return sizes


def n_parameters(sizes, batchnorm):
    """Length of ``theta`` for ``sizes`` (Python ints: no overflow), as ``layout.make_layout``."""
    hidden = len(sizes) - 2
    return sum(a * b + b * (2 if batchnorm and l < hidden else 1)
               for l, (a, b) in enumerate(itertools.pairwise(sizes)))


def _member(archive, name, dtype, shape, file_size):
    """The array ``name`` of the archive, read only after its ``.npy`` header says
    ``dtype`` and ``shape`` and the zip entry's sizes can hold it."""
    try:
        info = archive.getinfo(name + ".npy")
    except KeyError:
        raise _Malformed(f"array {name!r} missing") from None
    if info.compress_size > file_size or (info.compress_type == zipfile.ZIP_STORED and
                                          info.file_size != info.compress_size) or \
            info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise _Malformed(f"array {name!r}: zip entry sizes {info.compress_size} / {info.file_size} "
                         "do not fit the file")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise _Malformed(f"array {name!r}: unknown .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        stored_shape, fortran, stored_dtype = read_header(f)
        if stored_dtype.hasobject or stored_dtype != np.dtype(dtype) or tuple(stored_shape) != shape:
            raise _Malformed(f"array {name!r} has dtype {stored_dtype} and shape {stored_shape}, "
                             f"expected {np.dtype(dtype)} and {shape}")
        nbytes = math.prod(shape) * stored_dtype.itemsize
        if info.file_size - f.tell() != nbytes:
            raise _Malformed(f"array {name!r}: the entry holds {info.file_size - f.tell()} bytes of data, "
                             f"its shape needs {nbytes}")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise _Malformed(f"array {name!r} is truncated")
    arr = np.frombuffer(data, dtype=stored_dtype).reshape(shape, order="F" if fortran else "C")
    return np.array(arr, order="C")


def _finite(name, arr):
    if not np.isfinite(arr).all():
        raise _Malformed(f"array {name!r} holds NaN or inf")
    return arr


def _read_header(archive, file_size):
    if "header.npy" not in archive.namelist():
        raise _Malformed("no JSON header")
    header = _json_member(archive, "header", file_size)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _Malformed("not a fastbp model (header format field)")
    version = _require(header, "format_version", int)
    if version < 1:
        raise _Malformed(f"format version {version} is not a valid version")
    if version > FORMAT_VERSION:
        raise _Malformed(f"format version {version} is newer than this fastbp reads ({FORMAT_VERSION})")
    return header


def _optimizer(header):
    spec_ = _require(header, "optimizer", dict)
    name = spec_.get("name")
    if name not in OPTIMIZERS or not isinstance(spec_.get("params"), dict):
        raise _Malformed(f"unknown optimizer {name!r}")
    return OPTIMIZERS[name](**spec_["params"])


def _read(archive, header, file_size):
    """The arrays the header calls for, checked against it."""
    sizes = _sizes(header)
    dtype = _require(header, "dtype", str)
    if dtype not in ("float32", "float64"):
        raise _Malformed(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    batchnorm = header.get("batchnorm", False)
    if not isinstance(batchnorm, bool):
        raise _Malformed(f"header field 'batchnorm' must be true or false, got {batchnorm!r}")
    n = n_parameters(sizes, batchnorm)
    arrays = {"theta": _finite("theta", _member(archive, "theta", dtype, (n,), file_size))}
    if batchnorm:
        units = sum(sizes[1:])
        running = _finite("bn_running", _member(archive, "bn_running", np.float64, (2 * units,), file_size))
        if (running[units:] < 0).any():
            raise _Malformed("negative running variance in 'bn_running'")
        arrays["bn_running"] = running
    if _require(header, "has_state", bool):
        optimizer = _optimizer(header)
        for name in ("state1", "state2"):
            arrays[name] = _finite(name, _member(archive, name, dtype, (n,), file_size))
        second_moment = {"rmsprop": "state1", "adam": "state2"}.get(optimizer.name)
        if second_moment and (arrays[second_moment] < 0).any():
            raise _Malformed(f"negative second moment in {second_moment!r} ({optimizer.name})")
        arrays["step"] = _member(archive, "step", np.int64, (1,), file_size)
        epochs_done = _require(header, "epochs_done", int)
        lr_scale = _require(header, "lr_scale", (int, float))
        if epochs_done < 0 or arrays["step"][0] < 0:
            raise _Malformed("negative epoch or step count")
        if not (math.isfinite(lr_scale) and lr_scale > 0):
            raise _Malformed(f"lr_scale must be a finite number > 0, got {lr_scale!r}")
        arrays["optimizer"] = optimizer
    arrays.update(_read_metadata(archive, sizes, file_size))
    return arrays


@contextlib.contextmanager
def file_errors(path):
    """Turn anything a malformed file can raise into a ValueError naming ``path``."""
    try:
        yield
    except (_Malformed, zipfile.BadZipFile, zlib.error, json.JSONDecodeError, KeyError, TypeError,
            ValueError, EOFError, OSError, MemoryError, OverflowError, RecursionError,
            NotImplementedError) as exc:
        raise ValueError(f"{path!r} is not a valid fastbp model file: {exc}") from exc


def load(path):
    """``(header, arrays)`` from a file written by :func:`save`, every part checked
    (see the module docstring). ``arrays`` holds ``theta``, and as the header says
    ``bn_running``, ``state1``, ``state2``, ``step`` and ``optimizer`` (the
    optimizer object, built from the header)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    with file_errors(path):
        file_size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            header = _read_header(archive, file_size)
            return header, _read(archive, header, file_size)


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


def _json_member(archive, name, file_size):
    """The JSON string stored as the 0-d unicode array ``name`` (size-checked first)."""
    info = archive.getinfo(name + ".npy")
    if info.file_size > 4 * MAX_HEADER_CHARS + 1024:
        raise _Malformed(f"{name} too large")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * MAX_HEADER_CHARS:
        raise _Malformed(f"{name} is not a JSON string")
    return json.loads(str(_member(archive, name, dtype, (), file_size)[()]))


def _read_metadata(archive, sizes, file_size):
    """The optional metadata members, checked against the architecture: ``metadata``
    ({"feature_names", "classes"}) and ``standardizer`` ((mean, scale) float64 arrays)."""
    arrays = {}
    names = set(archive.namelist())
    if "metadata.npy" in names:
        meta = _json_member(archive, "metadata", file_size)
        if not isinstance(meta, dict):
            raise _Malformed("metadata is not a JSON object")
        features, classes = meta.get("feature_names"), meta.get("classes")
        if features is not None and (not isinstance(features, list) or len(features) != sizes[0]
                                     or not all(isinstance(n, str) for n in features)):
            raise _Malformed(f"metadata: {len(features) if isinstance(features, list) else features!r} "
                             f"feature names for {sizes[0]} inputs")
        if classes is not None and (not isinstance(classes, list) or
                                    len(classes) != (2 if sizes[-1] == 1 else sizes[-1])):
            raise _Malformed(f"metadata: {len(classes) if isinstance(classes, list) else classes!r} "
                             f"class labels for {sizes[-1]} outputs")
        arrays["metadata"] = {"feature_names": features, "classes": classes}
    if "standardizer_mean.npy" in names:
        arrays["standardizer"] = tuple(
            _finite(name, _member(archive, name, np.float64, (sizes[0],), file_size))
            for name in ("standardizer_mean", "standardizer_scale"))
    return arrays
