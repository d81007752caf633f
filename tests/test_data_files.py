"""fastbp.data: every way a data file can be unusable gets one DataError line naming the
file and what is wrong (and, for a CSV, the column or line); what can be read is read
as written. No training here: these run in milliseconds."""

import numpy as np
import pytest

from fastbp import data
from fastbp.data import DataError


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfea,b\n1,2\n", "is not a text (UTF-8) CSV file"),  # UTF-16's byte-order mark
    (b"a,,c\n1,2,3\n", "the header row has an empty column name (column 2)"),
    (b"a,b,a\n1,2,3\n", "the header names column 'a' twice"),
    (b"\n", "is empty: expected a header row"),
    (b"a,b\n", "has a header but no data rows"),
    (b"a,b\n1,2\n3,nan\n", "column 'b' has a missing value (NaN) at line 3"),
    (b"a,b\n1,2\n3\n", "line 3 has 1 fields but the header names 2 columns"),
    (b"a,b\n1,2\n3,4,5\n", "line 3 has 3 fields but the header names 2 columns"),  # NumPy's usecols drops it
    (b"a,b\n1,2\n3,\"4\",\"5,6\"\n", "line 3 has 3 fields but the header names 2 columns"),
    (b"a,b\n1,2\n3,x\n", "feature column 'b' is not numeric: line 3 holds 'x'"),
    (b"a,b\n1_0,2\n", "could not be read as a numeric CSV file"),  # Python's float() reads 1_0, NumPy not
])
def test_unreadable_csv_files(tmp_path, content, message):
    path = write(tmp_path / "d.csv", content)
    with pytest.raises(DataError) as info:
        data.read_table(path, required_target=False)
    assert str(info.value).startswith(str(path)) and message in str(info.value) and "\n" not in str(info.value)


def test_quoted_delimiters_are_one_field(tmp_path):
    """A quoted target holding the delimiter is one field, not a long row."""
    path = write(tmp_path / "d.csv", b'a,b,label\n1,2,"x,y"\n3,4,z\n')
    table = data.read_table(path, target="label")
    assert table.X.tolist() == [[1.0, 2.0], [3.0, 4.0]] and table.y.tolist() == ["x,y", "z"]


def test_a_non_numeric_feature_is_named_with_its_line(tmp_path):
    path = write(tmp_path / "d.csv", "size,colour,label\n1,2,a\n\n3,red,b\n")
    with pytest.raises(DataError, match=r"feature column 'colour' is not numeric: line 4 holds 'red'"):
        data.read_table(path, target="label")


def test_target_column_must_be_named_and_leave_features(tmp_path):
    path = write(tmp_path / "d.csv", "label\n1\n2\n")
    with pytest.raises(DataError, match=r"name the target column with --target \(columns of .*: label\)"):
        data.read_table(path)
    with pytest.raises(DataError, match="has no feature columns besides the target 'label'"):
        data.read_table(path, target="label")
    with pytest.raises(DataError, match="has no column 'nope'; its columns are: label"):
        data.read_table(path, target="nope")


def test_a_directory_and_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="is a directory, not a data file"):
        data.read_table(tmp_path)
    with pytest.raises(DataError, match="no such data file"):
        data.read_table(tmp_path / "missing.csv")
    X = write(tmp_path / "X.npy", b"")
    np.save(X, np.ones((2, 2)))
    with pytest.raises(DataError, match="no such target file"):
        data.read_table(X, target=str(tmp_path / "y.npy"))


def test_csv_with_semicolons_and_chosen_features(tmp_path):
    path = write(tmp_path / "d.csv", "a;b;c;t\n1;2;3;x\n4;5;6;y\n")
    table = data.read_table(path, target="t", features=["c", "a"])
    np.testing.assert_array_equal(table.X, [[3, 1], [6, 4]])
    assert table.feature_names == ["c", "a"] and table.y.tolist() == ["x", "y"] and table.target_name == "t"


def test_npz_archives(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 0]), feature_names=np.array(["u", "v"]))
    table = data.read_table(path)
    assert table.feature_names == ["u", "v"] and table.named and table.y.tolist() == [0, 1, 0]
    np.savez(path, features=np.ones((3, 2)))
    with pytest.raises(DataError, match="has no array 'X' \\(the features\\); its arrays are: features"):
        data.read_table(path)
    np.savez(path, X=np.ones((3, 2)))
    with pytest.raises(DataError, match="has no array 'label' \\(the target\\); its arrays are: X"):
        data.read_table(path, target="label")
    assert data.read_table(path, required_target=False).y is None
    write(path, b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="is not a readable .npz archive"):
        data.read_table(path)


def test_npy_features_and_target(tmp_path):
    X, y = tmp_path / "X.npy", tmp_path / "y.npy"
    np.save(X, np.array([1.0, 2.0, 3.0]))  # one feature, as a 1-D array
    np.save(y, np.array([1.5, 2.5, 3.5]))
    table = data.read_table(X, target=str(y))
    assert table.X.shape == (3, 1) and table.feature_names == ["x0"] and not table.named
    assert table.target_name == "y.npy"
    write(y, b"not an npy file")
    with pytest.raises(DataError, match="y.npy is not a readable .npy file"):
        data.read_table(X, target=str(y))


@pytest.mark.parametrize("X, y, message", [
    (np.ones((0, 3)), None, r"the features must be a non-empty 2-D array, got shape \(0, 3\)"),
    (np.ones((2, 2, 2)), None, r"the features must be a non-empty 2-D array, got shape \(2, 2, 2\)"),
    (np.array([["a", "b"]]), None, "the features must be real numbers, got dtype <U1"),
    (np.ones((2, 2)) * 1j, None, "the features must be real numbers, got dtype complex128"),
    (np.array([[1.0, 2.0], [3.0, np.inf]]), None, r"hold NaN or inf \(first at row 1, column 1\)"),
    (np.ones((3, 2)), np.ones(2), r"one value per row of X \(3\), got shape \(2,\)"),
    (np.ones((3, 2)), np.ones((3, 1)), r"one value per row of X \(3\), got shape \(3, 1\)"),
])
def test_arrays_that_are_not_a_feature_table(tmp_path, X, y, message):
    path = tmp_path / "d.npz"
    np.savez(path, X=X, **({} if y is None else {"y": y}))
    with pytest.raises(DataError, match=message):
        data.read_table(path, required_target=False)


def test_feature_names_of_the_wrong_length_are_replaced(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((2, 3)), feature_names=np.array(["only", "two"]))
    table = data.read_table(path, required_target=False)
    assert table.feature_names == ["x0", "x1", "x2"] and not table.named


def test_targets():
    classes, codes = data.encode_labels(np.array([2.5, 1.0, 2.5]), "d.csv")
    assert classes.dtype == np.float64 and classes.tolist() == [1.0, 2.5] and codes.tolist() == [1, 0, 1]
    classes, codes = data.encode_labels(np.array([" b", "a ", "b"]), "d.csv")
    assert classes.tolist() == ["a", "b"] and codes.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="d.csv: the target holds one class only \\('7'\\)"):
        data.encode_labels(np.array(["7", "7"]), "d.csv")
    np.testing.assert_array_equal(data.regression_target(np.array(["1.5", " 2"]), "d.csv", "t"), [1.5, 2.0])
    with pytest.raises(DataError, match=r"the target 't' is not numeric \(row 2 holds 'x'\)"):
        data.regression_target(np.array(["1", "x", "y"]), "d.csv", "t")
    with pytest.raises(DataError, match="the target 't' holds NaN or inf"):
        data.regression_target(np.array([1.0, np.nan]), "d.csv", "t")


def test_standardizer():
    s = data.Standardizer.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_array_equal(s.mean, [2.0, 5.0])
    np.testing.assert_array_equal(s.scale, [1.0, 1.0])  # std 1, and 1 for the constant column
    out = s.transform([[3, 7]], np.float32)
    assert out.dtype == np.float32 and out.tolist() == [[1.0, 2.0]]
    wrong = np.ones((2, 3))
    assert s.transform(wrong, np.float32) is wrong  # left for the network's own check
    assert repr(s) == "Standardizer(2 features)"
    for mean, scale in (([0.0], [0.0]), ([0.0, 1.0], [1.0]), ([np.nan], [1.0]), ([0.0], [np.inf])):
        with pytest.raises(ValueError, match="finite means and finite positive scales of one length"):
            data.Standardizer(mean, scale)


def test_digits_read_directly_equal_scikit_learns_loader(monkeypatch):
    """The bundled CSV read without importing scikit-learn; its own loader where the file
    moved; a clear ImportError without scikit-learn."""
    from sklearn.datasets import load_digits as sklearn_digits

    from fastbp import datasets
    X_ref, y_ref = sklearn_digits(return_X_y=True)
    X, y = datasets.load_digits()
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert y.dtype == np.int64
    monkeypatch.setattr(datasets.os.path, "exists", lambda path: False)
    X, y = datasets.load_digits()
    np.testing.assert_array_equal(X, X_ref)
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        datasets.load_digits()
