"""Data files for the command line, and the feature standardisation stored with a model.

``read_table`` reads a CSV file with a header row (NumPy's C reader, one column set
at a time, so a large file is never held twice), an ``.npz`` archive (features
``X``, the target array named by ``target``) or an ``.npy`` feature matrix (the
target is then a second ``.npy`` file). Every problem with a file raises
:class:`DataError` with one line naming the file and, for a CSV, the column and line.

:class:`Standardizer` is the per-feature ``(x - mean) / scale`` that ``fastbp train``
applies by default; it is saved with the model (``MLP.standardizer``), applied by
``MLP.fit`` / ``predict`` / ``evaluate`` and exported to ONNX.
"""

import csv
import os
import warnings
from dataclasses import dataclass

import numpy as np

#: integer-valued targets with at most this many distinct values are taken as class labels
MAX_AUTO_CLASSES = 20


class DataError(ValueError):
    """A data file that cannot be used, with a one-line message for the user."""


@dataclass
class Table:
    """Features (float64, rows × columns), their names, and the target column (or None)."""
    X: np.ndarray
    feature_names: list
    y: np.ndarray = None
    target_name: str = None
    named: bool = True  # feature_names came from the file (False: x0, x1, ... made up)


class Standardizer:
    """Per-feature standardisation ``(x - mean) / scale``; ``scale`` is the standard
    deviation, 1 for a constant column."""

    def __init__(self, mean, scale):
        self.mean = np.asarray(mean, dtype=np.float64).ravel()
        self.scale = np.asarray(scale, dtype=np.float64).ravel()
        if self.mean.shape != self.scale.shape or not (np.isfinite(self.mean).all() and
                                                       np.isfinite(self.scale).all() and (self.scale > 0).all()):
            raise ValueError("a standardizer needs finite means and finite positive scales of one length")

    @classmethod
    def fit(cls, X):
        X = np.asarray(X, dtype=np.float64)
        scale = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(scale > 0, scale, 1.0))

    def transform(self, X, dtype):
        """A new C-contiguous ``dtype`` array; the arithmetic is done in ``dtype`` (as the
        exported ONNX graph does it). Input of the wrong shape or kind is returned as it
        is, for the network's own check to reject with its usual message."""
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[1] != self.mean.size or not np.issubdtype(arr.dtype, np.number) \
                or np.iscomplexobj(arr):
            return X
        out = np.array(arr, dtype=dtype, order="C")
        out -= self.mean.astype(dtype)
        out /= self.scale.astype(dtype)
        return out

    def __repr__(self):
        return f"Standardizer({self.mean.size} features)"


# --- reading ---------------------------------------------------------------------------------


def _check_exists(path, what="data file"):
    if not os.path.exists(path):
        raise DataError(f"no such {what}: {path}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a {what}")


def read_table(path, target=None, required_target=True, features=None):
    """A :class:`Table` from ``path`` (.csv/.txt/.tsv, .npz or .npy).

    ``target``: for a CSV the name of the target column; for an .npz the name of the
    target array (default ``y``); for an .npy the path of the target .npy file. With
    ``required_target=False`` a missing target is allowed (``Table.y`` is None).
    ``features``: for a CSV, the feature columns to read, in this order (default:
    every column but the target).
    """
    path = os.fspath(path)
    _check_exists(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        return _read_npz(path, target, required_target)
    if suffix == ".npy":
        return _read_npy(path, target)
    return _read_csv(path, target, required_target, features)


def _header(path):
    """(column names, delimiter) from the first line of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text (UTF-8) CSV file") from None
    if not first.strip():
        raise DataError(f"{path} is empty: expected a header row of column names")
    delimiter = "\t" if first.count("\t") > first.count(",") else ";" if first.count(";") > first.count(",") else ","
    names = [name.strip() for name in next(csv.reader([first], delimiter=delimiter))]
    if any(not name for name in names):
        raise DataError(f"{path}: the header row has an empty column name (column {names.index('') + 1})")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: the header names column {dup!r} twice")
    return names, delimiter


def _read_csv(path, target, required_target, features):
    names, delimiter = _header(path)
    for column in [target, *(features or [])]:
        if column is not None and column not in names:
            raise DataError(f"{path} has no column {column!r}; its columns are: {', '.join(names)}")
    if target is None and required_target:
        raise DataError(f"name the target column with --target (columns of {path}: {', '.join(names)})")
    target_index = names.index(target) if target is not None else None
    feature_index = [names.index(c) for c in features] if features is not None else \
        [i for i in range(len(names)) if i != target_index]
    if not feature_index:
        raise DataError(f"{path} has no feature columns besides the target {target!r}")
    kwargs = {"delimiter": delimiter, "skiprows": 1, "quotechar": "\"", "encoding": "utf-8-sig"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            X = np.loadtxt(path, usecols=feature_index, dtype=np.float64, ndmin=2, **kwargs)
            y = None if target_index is None else np.loadtxt(path, usecols=[target_index], dtype=str,
                                                             ndmin=1, **kwargs)
    except (ValueError, IndexError):
        raise DataError(_first_bad_cell(path, names, delimiter, feature_index)) from None
    if X.shape[0] == 0:
        raise DataError(f"{path} has a header but no data rows")
    long_row = _first_long_row(path, names, delimiter)
    if long_row:
        raise DataError(long_row)
    bad = np.argwhere(np.isnan(X))
    if bad.size:
        row, col = bad[0]
        raise DataError(f"{path}: column {names[feature_index[col]]!r} has a missing value (NaN) "
                        f"at line {row + 2}")
    return Table(X, [names[i] for i in feature_index], y, target)


def _first_long_row(path, names, delimiter):
    """The message for the first row with more fields than the header, or None.

    NumPy's ``usecols`` reads the columns it is given and drops the rest of a row
    without a word, so a stray delimiter (an unquoted "1,5" in a European file) would
    shift nothing NumPy notices; this pass counts delimiters per line (a C count per
    line; the csv module only for lines with quotes) so such a file is refused."""
    columns = len(names)
    with open(path, encoding="utf-8-sig", newline="") as f:
        next(f)
        for line_no, line in enumerate(f, start=2):
            if line.count(delimiter) < columns:
                continue
            fields = next(csv.reader([line], delimiter=delimiter)) if '"' in line else line.split(delimiter)
            if len(fields) > columns:
                return f"{path}: line {line_no} has {len(fields)} fields but the header names {columns} columns"
    return None


def _first_bad_cell(path, names, delimiter, feature_index):
    """The one-line message for the first row or feature value NumPy could not read
    (found again with the csv module: slow, but only on the error path)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f, delimiter=delimiter)
        next(rows)
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(names):
                return f"{path}: line {line} has {len(row)} fields but the header names {len(names)} columns"
            for i in feature_index:
                try:
                    float(row[i])
                except ValueError:
                    return (f"{path}: feature column {names[i]!r} is not numeric: line {line} holds "
                            f"{row[i]!r} (encode categories as numbers, or drop the column)")
    return f"{path} could not be read as a numeric CSV file"


def _read_npz(path, target, required_target):
    target = "y" if target is None else target
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = list(archive.files)
            if "X" not in files:
                raise DataError(f"{path} has no array 'X' (the features); its arrays are: {', '.join(files)}")
            X = archive["X"]
            y = archive[target] if target in files else None
            feature_names = [str(n) for n in archive["feature_names"]] if "feature_names" in files else None
    except DataError:
        raise
    except Exception as exc:  # zipfile / pickle / format errors: one line
        raise DataError(f"{path} is not a readable .npz archive ({exc})") from None
    if y is None and required_target:
        raise DataError(f"{path} has no array {target!r} (the target); its arrays are: {', '.join(files)}")
    return _numeric_table(path, X, y, feature_names, target)


def _read_npy(path, target):
    X = _load_npy(path)
    y = None
    if target is not None:
        _check_exists(target, "target file")
        y = _load_npy(target)
    return _numeric_table(path, X, y, None, None if target is None else os.path.basename(target))


def _load_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path} is not a readable .npy file ({exc})") from None


def _numeric_table(path, X, y, feature_names, target_name):
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"{path}: the features must be a non-empty 2-D array, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise DataError(f"{path}: the features must be real numbers, got dtype {X.dtype}")
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        row, col = np.argwhere(~np.isfinite(X))[0]
        raise DataError(f"{path}: the features hold NaN or inf (first at row {row}, column {col})")
    if y is not None and (y.ndim != 1 or y.shape[0] != X.shape[0]):
        raise DataError(f"{path}: the target must be 1-D with one value per row of X ({X.shape[0]}), "
                        f"got shape {y.shape}")
    named = bool(feature_names) and len(feature_names) == X.shape[1]
    names = feature_names if named else [f"x{i}" for i in range(X.shape[1])]
    return Table(X, names, y, target_name, named)


# --- the target: classification or regression ---------------------------------------------------


def numeric_target(y):
    """``y`` as float64, or None when some value is not a number."""
    if np.issubdtype(y.dtype, np.number) or y.dtype == bool:
        return y.astype(np.float64)
    try:
        return np.char.strip(y.astype(str)).astype(np.float64)
    except ValueError:
        return None


def infer_task(y, task="auto"):
    """"classification" or "regression": non-numeric targets are labels; numeric ones
    are labels when they are whole numbers with at most ``MAX_AUTO_CLASSES`` values."""
    if task != "auto":
        return task
    values = numeric_target(y)
    if values is None:
        return "classification"
    whole = bool(np.all(np.mod(values, 1) == 0))
    return "classification" if whole and np.unique(values).size <= MAX_AUTO_CLASSES else "regression"


def encode_labels(y, source):
    """(class labels, integer codes) of a target column; whole numbers become int64
    labels, other numbers float64, anything else strings."""
    values = numeric_target(y)
    if values is None:
        labels = np.char.strip(y.astype(str))
    elif np.all(np.mod(values, 1) == 0):
        labels = values.astype(np.int64)
    else:
        labels = values
    classes, codes = np.unique(labels, return_inverse=True)
    if classes.size < 2:
        raise DataError(f"{source}: the target holds one class only ({str(classes[0])!r}); "
                        "a classifier needs at least two")
    return classes, codes.astype(np.int64)


def regression_target(y, source, name):
    values = numeric_target(y)
    if values is None:
        bad = next(i for i, v in enumerate(y) if numeric_target(np.array([v])) is None)
        raise DataError(f"{source}: the target {name!r} is not numeric (row {bad + 1} holds {str(y[bad])!r}); "
                        "use --task classification for labels")
    if not np.isfinite(values).all():
        raise DataError(f"{source}: the target {name!r} holds NaN or inf")
    return values
