"""The ``fastbp`` command line.

* ``fastbp train DATA --target COLUMN``: train on a CSV file (header row, numeric
  features) or an .npz/.npy pair; classification or regression from the target (or
  ``--task``); features standardised by default and the standardisation stored with
  the model; ``--save model.npz``, ``--onnx model.onnx``, ``--plot curves.png``.
  Without DATA it trains on scikit-learn's bundled digits and reports its speed
  against the NumPy reference.
* ``fastbp predict model.npz DATA [--out FILE] [--proba]``: labels (or probabilities)
  or values as CSV.
* ``fastbp evaluate model.npz DATA --target COLUMN``: loss and accuracy (or R²).
* ``fastbp bench``: speed against the NumPy reference.

A file that cannot be used is one line on stderr and exit status 2.
"""

import argparse
import csv
import os
import sys
import time

import numpy as np

from . import spec
from .data import DataError

EXIT_BAD_INPUT = 2


def seconds_since_fastbp_start():
    """Wall time since fastbp started loading (``fastbp._START``, taken before its
    imports of NumPy and Numba), so a shell's delay before Python is not counted."""
    import fastbp
    return time.perf_counter() - fastbp._START


class _Fail(Exception):
    """A bad file or option: printed as one line, exit status 2."""


# --- training --------------------------------------------------------------------------------


def _digits(seed):
    from .datasets import load_digits, stratified_split
    X, y = load_digits()
    train, test = stratified_split(y, 0.25, seed)
    X = X / 16.0
    return X[train], X[test], y[train], y[test]


def _reference_samples_per_second(net, X, Y, epochs, batch_size, optimizer, l2, seed):
    """Train a copy of ``net`` with the NumPy reference on the same data, batches and
    shuffles; returns samples/s averaged over the epochs."""
    from . import reference
    weights = [W.copy() for W in net.weights]
    biases = [b.copy() for b in net.biases]
    state = reference.new_optimizer_state([*weights, *biases])
    constants = optimizer.constants()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        reference.train_epoch(weights, biases, net.layer_activations, X, Y, rng.permutation(len(X)),
                              batch_size, "cross_entropy", optimizer.name, state, optimizer.lr, 0.0, l2,
                              momentum=constants["momentum"], beta2=constants["beta2"], eps=constants["eps"])
    return epochs * len(X) / (time.perf_counter() - t0)


def _optimizer(args):
    import fastbp
    optimizer = fastbp.optimizers.get_optimizer(args.optimizer)
    return type(optimizer)(args.lr) if args.lr else optimizer


def _epoch_table(epochs, classification, first):
    """A callback printing one row per epoch (validation columns when there are any)."""
    def report(net, epoch, hist):
        if epoch == 0:
            first["seconds"] = seconds_since_fastbp_start()
            head = f"{'epoch':>9}  {'loss':>8}" + (f"  {'acc':>7}" if classification else "")
            if hist.val_loss:
                head += f"  {'val_loss':>8}" + (f"  {'val_acc':>7}" if classification else "")
            print(head + f"  {'samples/s':>12}")
        row = f"{epoch + 1:>4}/{epochs:<4}  {hist.loss[-1]:>8.4f}"
        row += f"  {hist.accuracy[-1]:>7.4f}" if classification else ""
        if hist.val_loss:
            row += f"  {hist.val_loss[-1]:>8.4f}" + (f"  {hist.val_accuracy[-1]:>7.4f}" if classification else "")
        print(row + f"  {hist.samples_per_second[-1]:>12,.0f}")
        return False
    return report


def _fit(net, X, y, args, classification):
    """Fit with the command line's options; returns (History, time to first epoch)."""
    import fastbp
    first = {}
    validation = {}
    if args.validation_split:
        validation = {"validation_split": args.validation_split,
                      "validation_shuffle": "stratify" if classification else True}
    callbacks = [_epoch_table(args.epochs, classification, first)]
    notice = fastbp.cpu_training.compile_notice()
    if notice:
        print(notice, flush=True)
    try:
        if args.early_stopping is not None:
            callbacks.append(fastbp.EarlyStopping(args.early_stopping, verbose=True))
        hist = net.fit(X, y, optimizer=_optimizer(args), epochs=args.epochs, batch_size=args.batch_size,
                       l2=args.l2, seed=args.seed, callbacks=callbacks, **validation)
    except (ValueError, TypeError) as exc:
        raise _Fail(str(exc)) from None
    return hist, first.get("seconds")


def _network(args, n_inputs, n_outputs, output):
    import fastbp
    try:
        return fastbp.MLP([n_inputs, *args.hidden, n_outputs], activation=args.activation, output=output,
                          init="he", seed=args.seed, dtype=args.dtype, dropout=args.dropout,
                          batchnorm=args.batchnorm)
    except (ValueError, TypeError) as exc:
        raise _Fail(str(exc)) from None


def _write_outputs(net, hist, args, title):
    if args.save:
        net.save(args.save)
        print(f"model written to {args.save}")
    if args.onnx:
        net.to_onnx(args.onnx)
        print(f"ONNX model written to {args.onnx}")
    if args.plot:
        hist.plot(args.plot, title=title)
        print(f"learning curves written to {args.plot}")


def train(args):
    if args.data is None:
        return train_digits(args)
    return train_file(args)


def train_file(args):
    """``fastbp train DATA --target COLUMN``."""
    import fastbp
    from . import data
    table = data.read_table(args.data, args.target)
    task = data.infer_task(table.y, args.task)
    if task == "classification":
        classes, y = data.encode_labels(table.y, args.data)
        net = _network(args, table.X.shape[1], len(classes), "softmax")
        net.classes = classes
    else:
        y = data.regression_target(table.y, args.data, table.target_name)
        net = _network(args, table.X.shape[1], 1, "identity")
    net.feature_names = table.feature_names
    if not args.no_standardize:
        net.standardizer = data.Standardizer.fit(table.X)
    classification = task == "classification"
    what = (f"{len(net.classes)} classes" if classification else "regression") + \
        f" on {table.target_name!r}" + ("" if args.task != "auto" else " (--task to override)")
    print(f"fastbp {fastbp.__version__}: {os.path.basename(args.data)}: {table.X.shape[0]} rows, "
          f"{table.X.shape[1]} features, {what}")
    print(f"network {net.sizes} ({args.activation}, {net.output}, {args.dtype}), optimizer {_optimizer(args)}, "
          f"batch {args.batch_size}, {args.epochs} epochs, features "
          f"{'as given' if args.no_standardize else 'standardised'}\n")
    hist, _ = _fit(net, table.X, y, args, classification)
    final = net.evaluate(table.X, y)
    if classification:
        print(f"\ntraining rows: loss {final['loss']:.4f}, accuracy {final['accuracy']:.4f}")
    else:
        print(f"\ntraining rows: loss (mse) {final['loss']:.4f}, R² {_r2(y, net.predict(table.X)):.4f}")
    if hist.val_loss:
        best = hist.best_epoch if hist.best_epoch is not None else len(hist.val_loss) - 1
        val = f"val_loss {hist.val_loss[best]:.4f}"
        val += f", val_acc {hist.val_accuracy[best]:.4f}" if classification else ""
        print(f"validation rows: {val} (epoch {best + 1}, the model's parameters)")
    _write_outputs(net, hist, args, f"fastbp {net.sizes} on {os.path.basename(args.data)}")
    return 0


def train_digits(args):
    """``fastbp train`` without DATA: the bundled digits, timed against the NumPy reference."""
    import fastbp
    Xtr, Xte, ytr, yte = _digits(args.seed)
    net = _network(args, Xtr.shape[1], 10, "softmax")
    optimizer = _optimizer(args)
    print(f"fastbp {fastbp.__version__}: training {net.sizes} ({args.activation}, softmax, {args.dtype}) "
          f"on scikit-learn's digits: {len(Xtr)} train / {len(Xte)} held-out samples")
    print(f"optimizer {optimizer}, batch {args.batch_size}, l2 {args.l2}, {args.epochs} epochs\n")
    hist, first_seconds = _fit(net, Xtr, ytr, args, True)
    held_out = net.evaluate(Xte, yte)
    # epoch 1 includes JIT compilation (or loading it from the cache): leave it out of the rate
    steady = hist.samples_per_second[1:] or hist.samples_per_second
    n_train = len(Xtr) - int(round((args.validation_split or 0) * len(Xtr)))
    fast_rate = len(steady) * n_train / sum(n_train / s for s in steady)
    print(f"\nheld-out accuracy {held_out['accuracy']:.4f}  (loss {held_out['loss']:.4f})")
    print(f"time to first trained epoch (from fastbp's start, imports, JIT or cache load): {first_seconds:.2f} s")
    print(f"fastbp:          {fast_rate:>12,.0f} samples/s (epochs 2..{hist.epochs})")
    if not args.no_reference:
        Y = np.eye(10, dtype=net.dtype)[ytr]
        ref_net = _network(args, Xtr.shape[1], 10, "softmax")
        ref_rate = _reference_samples_per_second(ref_net, Xtr.astype(net.dtype), Y, args.epochs,
                                                 args.batch_size, optimizer, args.l2, args.seed)
        print(f"NumPy reference: {ref_rate:>12,.0f} samples/s (same data, batches, optimizer)")
        print(f"speed-up:        {fast_rate / ref_rate:>12.1f}x")
    _write_outputs(net, hist, args, f"fastbp {net.sizes} on digits")
    if args.min_accuracy is not None and held_out["accuracy"] < args.min_accuracy:
        print(f"held-out accuracy below --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


# --- using a saved model ----------------------------------------------------------------------


def _load_model(path):
    import fastbp
    if not os.path.exists(path):
        raise _Fail(f"no such model file: {path}")
    try:
        return fastbp.MLP.load(path)
    except ValueError:
        raise _Fail(f"{path} is not a fastbp model file (write one with fastbp train --save)") from None


def _read_for_model(net, path, target, required_target):
    """(features in the order the model was trained on, Table) from a data file. A CSV's
    feature columns are found by the names the model keeps, so their order in the file
    and any other columns (the target) do not matter."""
    from . import data
    csv_file = os.path.splitext(path)[1].lower() not in (".npz", ".npy")
    features = net.feature_names if csv_file else None
    table = data.read_table(path, target, required_target=required_target, features=features)
    if table.X.shape[1] != net.n_features:
        raise _Fail(f"{path} has {table.X.shape[1]} feature columns, the model takes {net.n_features}")
    return table.X, table


def predict(args):
    """``fastbp predict model.npz DATA [--out FILE] [--proba]``."""
    net = _load_model(args.model)
    X, _ = _read_for_model(net, args.data, None, required_target=False)
    if args.proba:
        if net.output in spec.REGRESSION_OUTPUTS:
            raise _Fail(f"{args.model} is a regression model: it has no probabilities (drop --proba)")
        values = net.predict_proba(X)
        classes = net.classes if net.classes is not None else np.arange(values.shape[1])
        header = [f"p_{c}" for c in classes]
    elif net.output in spec.REGRESSION_OUTPUTS:
        values = net.predict(X).reshape(X.shape[0], -1)
        header = ["prediction"] if values.shape[1] == 1 else [f"prediction_{i}" for i in range(values.shape[1])]
    else:
        labels = net.predict(X)
        values = (net.classes[labels] if net.classes is not None else labels).reshape(X.shape[0], -1)
        header = ["label"] if values.shape[1] == 1 else [f"label_{i}" for i in range(values.shape[1])]
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(_csv_rows(values))
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"{values.shape[0]} predictions written to {args.out}", file=sys.stderr)
    return 0


def _csv_rows(values):
    """Rows of text: float32 with the 9 digits that round-trip it, float64 with repr."""
    if values.dtype == np.float32:
        return ([format(v, ".9g") for v in row] for row in values)
    if values.dtype.kind == "f":
        return ([repr(float(v)) for v in row] for row in values)
    return ([str(v) for v in row] for row in values)


def evaluate(args):
    """``fastbp evaluate model.npz DATA --target COLUMN``."""
    from . import data
    net = _load_model(args.model)
    X, table = _read_for_model(net, args.data, args.target, required_target=True)
    if net.output in spec.REGRESSION_OUTPUTS:
        y = data.regression_target(table.y, args.data, table.target_name)
        result = net.evaluate(X, y)
        print(f"{args.data}: {X.shape[0]} rows  loss ({'poisson' if net.output == 'exp' else 'mse'}) "
              f"{result['loss']:.6g}  R² {_r2(y, net.predict(X)):.4f}")
        return 0
    y = _label_codes(net, table.y, args.data)
    result = net.evaluate(X, y)
    print(f"{args.data}: {X.shape[0]} rows  loss {result['loss']:.6g}  accuracy {result['accuracy']:.4f}")
    return 0


def _label_codes(net, y, source):
    """Output indices of the labels in a target column (through ``net.classes``)."""
    from . import data
    if net.classes is None:
        values = data.numeric_target(y)
        if values is None or not np.all(np.mod(values, 1) == 0) or not np.all((values >= 0) & (values < net.n_outputs)):
            raise _Fail(f"{source}: the target must hold class indices 0..{net.n_outputs - 1}")
        return values.astype(np.int64)
    labels = np.char.strip(y.astype(str))
    known = {str(c): i for i, c in enumerate(net.classes)}
    unknown = [str(v) for v in np.unique(labels) if v not in known]
    if unknown:
        raise _Fail(f"{source}: the target holds the label {unknown[0]!r}, which the model was not trained on "
                    f"(its classes: {', '.join(map(str, net.classes))})")
    return np.array([known[v] for v in labels], dtype=np.int64)


def _r2(y, pred):
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(y), -1)
    total = ((y - y.mean(axis=0)) ** 2).sum()
    return 1.0 - ((y - pred) ** 2).sum() / total if total > 0 else float("nan")


# --- the parser -------------------------------------------------------------------------------


def _early_stopping(value):
    """``--early-stopping N``: N an integer (EarlyStopping checks its range)."""
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"patience must be an integer >= 1, got {value!r}") from None


def build_parser():
    import fastbp
    parser = argparse.ArgumentParser(prog="fastbp", description="JIT-compiled backpropagation for MLPs")
    parser.add_argument("--version", action="version", version=f"fastbp {fastbp.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train an MLP on a CSV/.npz/.npy file (or the bundled digits)",
                       description="Train an MLP on DATA (a CSV file with a header row, an .npz with arrays X "
                                   "and y, or an .npy feature matrix with --target y.npy); without DATA, on "
                                   "scikit-learn's digits, timed against the NumPy reference.")
    p.add_argument("data", nargs="?", default=None, metavar="DATA", help="CSV, .npz or .npy file")
    p.add_argument("--target", default=None,
                   help="the target: a CSV column name, an .npz array name (default y), or a .npy file")
    p.add_argument("--task", default="auto", choices=["auto", "classification", "regression"],
                   help="auto: labels if the target is text or at most 20 whole numbers, else regression")
    p.add_argument("--hidden", type=int, nargs="+", default=[64], help="hidden layer widths (default: 64)")
    p.add_argument("--activation", default="relu")
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate after each hidden layer")
    p.add_argument("--batchnorm", action="store_true", help="batch normalization after each hidden layer")
    p.add_argument("--l2", type=float, default=1e-4)
    p.add_argument("--validation-split", type=float, default=None, metavar="F",
                   help="hold out this fraction of the rows (random, stratified for classes) for validation")
    p.add_argument("--early-stopping", type=_early_stopping, nargs="?", const=5, default=None,
                   metavar="PATIENCE", help="stop after PATIENCE (default 5) epochs without improvement")
    p.add_argument("--no-standardize", action="store_true",
                   help="train on the features as given (default: standardise them, stored with the model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--save", metavar="MODEL.npz", default=None, help="write the trained model here")
    p.add_argument("--onnx", metavar="MODEL.onnx", default=None, help="export the trained model to ONNX")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="write learning curves (train/validation loss and accuracy, gradient norms)")
    p.add_argument("--no-reference", action="store_true", help="digits only: skip timing the NumPy reference")
    p.add_argument("--min-accuracy", type=float, default=None, help="digits only: exit 1 below this accuracy")
    p.set_defaults(func=train)
    p = sub.add_parser("predict", help="predict with a saved model; CSV on stdout or --out")
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("data", metavar="DATA", help="CSV (columns matched by name), .npz (array X) or .npy")
    p.add_argument("--out", default=None, metavar="FILE", help="write the CSV here instead of stdout")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")
    p.set_defaults(func=predict)
    p = sub.add_parser("evaluate", help="loss and accuracy (or R²) of a saved model on labelled data")
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--target", required=True, help="the target column (CSV), array (.npz) or file (.npy)")
    p.set_defaults(func=evaluate)
    try:
        from . import bench
    except ImportError:  # pragma: no cover - bench module optional during development
        bench = None
    if bench is not None:
        b = sub.add_parser("bench", help="benchmark fastbp against the NumPy reference")
        bench.add_arguments(b)
        b.set_defaults(func=bench.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (_Fail, DataError) as exc:
        print(f"fastbp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # ``fastbp predict ... | head``: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
