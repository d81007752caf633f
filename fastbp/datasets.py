"""scikit-learn's bundled digits, loaded without importing scikit-learn.

``import sklearn.datasets`` costs about a second of start-up, more than the whole
warm start budget of ``fastbp train`` (import + first epoch <= 1 s), so the CSV that
scikit-learn ships is read directly; if it is not where expected, scikit-learn's own
loader is used.
"""

import importlib.util
import os

import numpy as np


def load_digits():
    """(X, y): 1797 8×8 digit images as rows of 64 pixel values in [0, 16], labels 0..9."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("fastbp train needs scikit-learn's bundled digits: pip install scikit-learn")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    if not os.path.exists(path):  # layout changed: fall back to the public loader
        from sklearn.datasets import load_digits as sklearn_load_digits
        return sklearn_load_digits(return_X_y=True)
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def stratified_split(y, test_fraction, seed):
    """Indices (train, test) with each class split in the same proportion, seeded."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
