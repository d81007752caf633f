"""The command line end to end on small files made here: train / predict / evaluate on a
CSV (classification and regression), .npz and .npy pairs, and every bad-file case
(one line on stderr, exit status 2). Run in-process through ``fastbp.cli.main``."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cli, data

CLASSES = np.array(["setosa", "versicolor", "virginica"])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def blobs():
    """Three well separated classes on features of very different scales (standardisation matters)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    X = rng.normal(size=(60, 3)) + 3.0 * labels[:, None]
    X *= np.array([1.0, 100.0, 0.01])
    X[:, 1] += 1000.0
    return X, labels


@pytest.fixture
def class_csv(tmp_path, blobs):
    X, labels = blobs
    return write_csv(tmp_path / "flowers.csv", ["width", "mass", "tint", "species"],
                     [[*x, CLASSES[t]] for x, t in zip(X, labels)])


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_train_predict_evaluate_classification_csv(tmp_path, class_csv, blobs, capsys):
    X, labels = blobs
    model, png = tmp_path / "m.npz", tmp_path / "curves.png"
    code, out, _ = run(["train", class_csv, "--target", "species", "--hidden", "8", "--epochs", "4",
                        "--lr", "0.05", "--batch-size", "16", "--validation-split", "0.25", "--save", model,
                        "--plot", png], capsys)
    assert code == 0
    assert "3 classes on 'species'" in out and "standardised" in out
    head = next(line for line in out.splitlines() if line.strip().startswith("epoch"))
    assert head.split() == ["epoch", "loss", "acc", "val_loss", "val_acc", "samples/s"]
    assert sum(line.strip().startswith(f"{e}/4") for line in out.splitlines() for e in range(1, 5)) == 4
    assert png.read_bytes()[:4] == b"\x89PNG"

    net = fastbp.MLP.load(model)
    assert list(net.classes) == list(CLASSES) and net.feature_names == ["width", "mass", "tint"]
    np.testing.assert_allclose(net.standardizer.mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(net.standardizer.scale, X.std(axis=0), rtol=1e-12)

    # predict: labels from the stored classes, on standardised features
    code, _, _ = run(["predict", model, class_csv, "--out", tmp_path / "labels.csv"], capsys)
    assert code == 0
    header, rows = read_csv(tmp_path / "labels.csv")
    predicted = np.array([r[0] for r in rows])
    Z = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    expected = CLASSES[_plain(net).predict(Z)]
    assert header == ["label"] and (predicted == expected).all()
    assert (predicted == CLASSES[labels]).mean() > 0.9  # separable blobs, standardised: learnt in 4 epochs

    # --proba: one column per class, rows sum to 1
    code, out, _ = run(["predict", model, class_csv, "--proba"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == "p_setosa,p_versicolor,p_virginica" and len(lines) == 61
    P = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-6)
    assert (CLASSES[P.argmax(axis=1)] == predicted).all()

    # evaluate: the accuracy of those predictions
    code, out, _ = run(["evaluate", model, class_csv, "--target", "species"], capsys)
    assert code == 0
    accuracy = float(out.split("accuracy")[1])
    assert accuracy == pytest.approx((predicted == CLASSES[labels]).mean(), abs=1e-4)


def _plain(net):
    """``net`` without its standardizer (the test applies it by hand)."""
    plain = net.copy()
    plain.standardizer = None
    return plain


def test_predict_matches_columns_by_name(tmp_path, class_csv, blobs, capsys):
    X, labels = blobs
    model = tmp_path / "m.npz"
    assert run(["train", class_csv, "--target", "species", "--hidden", "4", "--epochs", "1", "--save", model],
               capsys)[0] == 0
    shuffled = write_csv(tmp_path / "shuffled.csv", ["tint", "width", "mass"], X[:, [2, 0, 1]])
    _, a, _ = run(["predict", model, class_csv, "--proba"], capsys)
    _, b, _ = run(["predict", model, shuffled, "--proba"], capsys)
    assert a == b
    code, _, err = run(["predict", model, write_csv(tmp_path / "less.csv", ["tint", "width"], X[:, [2, 0]])],
                       capsys)
    assert code == 2 and "no column 'mass'" in err


@pytest.fixture
def regression_csv(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(48, 2)) * [1.0, 50.0]
    y = 2.0 * X[:, 0] - 0.02 * X[:, 1] + 0.5 + 0.01 * rng.normal(size=48)
    return write_csv(tmp_path / "houses.csv", ["rooms", "area", "price"], np.column_stack([X, y])), X, y


def test_train_evaluate_regression_csv(tmp_path, regression_csv, capsys):
    path, X, y = regression_csv
    model = tmp_path / "r.npz"
    code, out, _ = run(["train", path, "--target", "price", "--hidden", "8", "--epochs", "3", "--lr", "0.01",
                        "--validation-split", "0.25", "--save", model, "--dtype", "float64"], capsys)
    assert code == 0 and "regression on 'price'" in out
    head = next(line for line in out.splitlines() if line.strip().startswith("epoch"))
    assert head.split() == ["epoch", "loss", "val_loss", "samples/s"]
    net = fastbp.MLP.load(model)
    assert net.output == "identity" and net.classes is None
    code, out, _ = run(["predict", model, path], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == "prediction"
    pred = np.array([float(v) for v in lines[1:]])
    code, out, _ = run(["evaluate", model, path, "--target", "price"], capsys)
    assert code == 0
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert float(out.split("R²")[1]) == pytest.approx(r2, abs=1e-4)
    mse = float(out.split("loss (mse)")[1].split()[0])
    assert mse == pytest.approx(((y - pred) ** 2).mean(), rel=1e-4)


def test_task_flag_and_inference():
    assert data.infer_task(np.array(["a", "b"])) == "classification"
    assert data.infer_task(np.array(["0", "1", "2", "1"])) == "classification"
    assert data.infer_task(np.array(["0.5", "1.25", "2"])) == "regression"
    assert data.infer_task(np.arange(50).astype(str)) == "regression"  # too many values for labels
    assert data.infer_task(np.arange(50).astype(str), "classification") == "classification"


def test_npz_and_npy_pairs(tmp_path, blobs, capsys):
    X, labels = blobs
    np.savez(tmp_path / "d.npz", X=X, y=labels)
    code, out, _ = run(["train", tmp_path / "d.npz", "--hidden", "4", "--epochs", "1", "--save",
                        tmp_path / "a.npz"], capsys)
    assert code == 0 and "3 classes" in out
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", labels)
    code, out, _ = run(["train", tmp_path / "X.npy", "--target", tmp_path / "y.npy", "--hidden", "4",
                        "--epochs", "1", "--save", tmp_path / "b.npz"], capsys)
    assert code == 0
    code, out, _ = run(["evaluate", tmp_path / "b.npz", tmp_path / "X.npy", "--target", tmp_path / "y.npy"],
                       capsys)
    assert code == 0 and "accuracy" in out
    code, out, _ = run(["predict", tmp_path / "a.npz", tmp_path / "d.npz"], capsys)
    assert code == 0 and set(out.split()[1:]) <= {"0", "1", "2"}


BAD_FILES = {
    "missing file": (lambda d: str(d / "nowhere.csv"), "species", "no such data file"),
    "no such column": (lambda d: write_csv(d / "a.csv", ["x", "y"], [[1, 2]]), "species",
                       "has no column 'species'; its columns are: x, y"),
    "non-numeric feature": (lambda d: write_csv(d / "b.csv", ["x", "colour", "species"],
                                                [[1, 2, "a"], [2, 3, "b"], [3, "red", "a"]]),
                            "species", "feature column 'colour' is not numeric: line 4 holds 'red'"),
    "empty file": (lambda d: write_csv(d / "c.csv", [], []), "species", "is empty"),
    "header only": (lambda d: write_csv(d / "e.csv", ["x", "species"], []), "species", "no data rows"),
    "ragged row": (lambda d: write_csv(d / "f.csv", ["x", "z", "species"], [[1, 2, "a"], [1, "b"]]), "species",
                   "line 3 has 2 fields but the header names 3 columns"),
    "missing value": (lambda d: write_csv(d / "g.csv", ["x", "z", "species"], [[1, 2, "a"], [1, "nan", "b"]]),
                      "species", "column 'z' has a missing value (NaN) at line 3"),
    "one class": (lambda d: write_csv(d / "h.csv", ["x", "species"], [[1, "a"], [2, "a"]]), "species",
                  "one class only"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_training_file_is_one_line_and_exit_2(tmp_path, capsys, case):
    make, target, message = BAD_FILES[case]
    code, out, err = run(["train", make(tmp_path), "--target", target, "--epochs", "1"], capsys)
    assert code == 2
    assert err.startswith("fastbp train: error: ") and message in err and err.count("\n") == 1


def test_regression_target_not_numeric(tmp_path, capsys):
    path = write_csv(tmp_path / "r.csv", ["x", "y"], [[1, "1.5"], [2, "oops"]])
    code, _, err = run(["train", path, "--target", "y", "--task", "regression"], capsys)
    assert code == 2 and "'y' is not numeric (row 2 holds 'oops')" in err


@pytest.mark.parametrize("kind", ["missing", "csv", "npz"])
def test_model_file_that_is_not_fastbps(tmp_path, class_csv, capsys, kind):
    path = tmp_path / "model.npz"
    if kind == "csv":
        path = class_csv
    elif kind == "npz":
        np.savez(path, weights=np.zeros(3))
    for argv in (["predict", path, class_csv], ["evaluate", path, class_csv, "--target", "species"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and err.count("\n") == 1
        assert ("no such model file" if kind == "missing" else "is not a fastbp model file") in err


def test_bad_option_values_exit_2(tmp_path, class_csv, capsys):
    code, _, err = run(["train", class_csv, "--target", "species", "--dropout", "1.5"], capsys)
    assert code == 2 and "dropout" in err
    code, _, err = run(["train", class_csv, "--target", "species", "--validation-split", "1.5"], capsys)
    assert code == 2 and "validation_split" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"fastbp {fastbp.__version__}"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_start_time_counts_from_fastbps_start_not_the_process():
    """``bash -c 'sleep 1.5; exec python ...'``: the process /proc reports started before
    the sleep (exec keeps it); fastbp's start-up figure must leave the sleep out."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = ("import os, fastbp.cli; ours = fastbp.cli.seconds_since_fastbp_start(); "
              "start = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19]); "
              "up = float(open('/proc/uptime').read().split()[0]); "
              "print(ours, up - start / os.sysconf('SC_CLK_TCK'))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(["bash", "-c", f'sleep 1.5; exec {sys.executable} -c "{script}"'], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    ours, process_age = map(float, proc.stdout.split())
    assert 0 < ours < process_age - 1.2  # the 1.5 s sleep (less /proc's 10 ms ticks) is not counted


def test_bench_report_shows_targets_only_when_asked(capsys):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = os.path.join(root, "benchmarks", "results", "2026-11-25-fastbp-bench.json")
    code, out, _ = run(["bench", "--from-json", results], capsys)
    assert code == 0 and "speedup" in out and "64-128-10" in out
    assert "MISS" not in out and "target" not in out
    code, out, _ = run(["bench", "--from-json", results, "--targets"], capsys)
    assert code == 0 and "target" in out and ("MISS" in out or " ok " in out)


def test_evaluate_with_labels_the_model_never_saw(tmp_path, class_csv, blobs, capsys):
    X, _ = blobs
    model = tmp_path / "m.npz"
    assert run(["train", class_csv, "--target", "species", "--hidden", "4", "--epochs", "1", "--save", model],
               capsys)[0] == 0
    other = write_csv(tmp_path / "other.csv", ["width", "mass", "tint", "species"],
                      [[*x, "daisy"] for x in X[:3]])
    code, _, err = run(["evaluate", model, other, "--target", "species"], capsys)
    assert code == 2 and "holds the label 'daisy', which the model was not trained on" in err


def test_a_csv_is_not_held_twice(tmp_path):
    """Reading peaks near the size of the arrays it returns (no rows of Python objects)."""
    import tracemalloc
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(20000, 6))
    rows[:, -1] = rng.integers(0, 3, len(rows))
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write("a,b,c,d,e,label\n")
        np.savetxt(f, rows, delimiter=",", fmt="%.6g")
    tracemalloc.start()
    try:
        table = data.read_table(path, "label")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert table.X.shape == (20000, 5)
    assert peak < 1.5 * table.X.nbytes + table.y.nbytes + 2 ** 18


def test_early_stopping_patience_must_be_a_number(class_csv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", class_csv, "--target", "species", "--early-stopping", "x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "argument --early-stopping: patience must be an integer >= 1, got 'x'" in err and "_early" not in err
    code, _, err = run(["train", class_csv, "--target", "species", "--early-stopping", "0"], capsys)
    assert code == 2 and "patience must be an integer >= 1, got 0" in err


def test_early_stopping_restores_the_best_epoch(tmp_path, class_csv, capsys):
    """--early-stopping 2 with a learning rate too large to settle (seeded: the validation loss
    stops improving after epoch 3): training stops two epochs later, the best epoch's
    parameters are kept and reported."""
    code, out, _ = run(["train", class_csv, "--target", "species", "--hidden", "4", "--epochs", "8", "--lr", "3",
                        "--validation-split", "0.25", "--early-stopping", "2"], capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in {f"{e}/" for e in range(1, 9)}]
    val_losses = [float(r[3]) for r in rows]
    best = int(np.argmin(val_losses))
    assert len(rows) == best + 3 < 8  # two epochs without improvement, then stop
    assert f"val_loss {val_losses[best]:.4f}" in out and f"(epoch {best + 1}, the model's parameters)" in out


def test_digits_demo_times_the_reference_and_checks_min_accuracy(capsys):
    code, out, err = run(["train", "--epochs", "2", "--hidden", "8", "--min-accuracy", "0.999"], capsys)
    assert code == 1 and "held-out accuracy below --min-accuracy 0.999" in err  # 2 epochs of 8 units: ~0.9
    rate = {line.split(":")[0]: line.split(":")[1].split()[0] for line in out.splitlines()
            if line.startswith(("fastbp: ", "NumPy reference:", "speed-up:"))}
    fast, ref = (float(rate[k].replace(",", "")) for k in ("fastbp", "NumPy reference"))
    assert ref > 0 and float(rate["speed-up"].rstrip("x")) == pytest.approx(fast / ref, abs=0.051)


def test_predict_refuses_what_the_model_cannot_do(tmp_path, regression_csv, capsys):
    path, X, _ = regression_csv
    model = tmp_path / "r.npz"
    assert run(["train", path, "--target", "price", "--hidden", "4", "--epochs", "1", "--save", model],
               capsys)[0] == 0
    code, _, err = run(["predict", model, path, "--proba"], capsys)
    assert code == 2 and "is a regression model: it has no probabilities (drop --proba)" in err
    np.save(tmp_path / "X.npy", X[:, :1])
    code, _, err = run(["predict", model, tmp_path / "X.npy"], capsys)
    assert code == 2 and "X.npy has 1 feature columns, the model takes 2" in err


@pytest.mark.parametrize("labels, ok", [([0, 1, 2, 0, 1, 2], True), ([0, 1, 0.5, 0, 1, 2], False),
                                        ([0, 1, 7, 0, 1, 2], False), ([0, -1, 2, 0, 1, 2], False)])
def test_evaluate_a_model_without_class_names(tmp_path, capsys, labels, ok):
    """A model trained through the API on integer labels keeps no classes: the target must
    hold its output indices, and anything else is one line and exit 2 (7 and -1 were a
    traceback from the network's own check)."""
    X = np.random.default_rng(0).standard_normal((6, 2))
    net = fastbp.MLP([2, 3, 3], seed=0)
    net.fit(X, np.array([0, 1, 2, 0, 1, 2]), epochs=1)
    net.save(tmp_path / "m.npz")
    np.savez(tmp_path / "d.npz", X=X, y=np.array(labels))
    code, out, err = run(["evaluate", tmp_path / "m.npz", tmp_path / "d.npz", "--target", "y"], capsys)
    if ok:
        assert code == 0 and f"accuracy {net.evaluate(X, np.array(labels))['accuracy']:.4f}" in out
    else:
        assert code == 2 and "the target must hold class indices 0..2" in err
