"""Deploy a fastbp network with ONNX: train on digits, export, run with onnxruntime.

Trains ``fastbp.MLP`` on scikit-learn's bundled digits (features standardised by a
``fastbp.data.Standardizer`` that travels with the model), exports it with
``net.to_onnx(path)``, runs the file with onnxruntime (no fastbp needed there), checks
that onnxruntime's probabilities and labels equal ``predict_proba`` / ``predict``,
and times the cost per row of both on the held-out digits, all rows in one call and
one row per call (best of the repeats, after a warm-up call).

    python examples/deploy_onnx.py            # 64-unit hidden layer, 30 epochs
    python examples/deploy_onnx.py --quick    # CI: 5 epochs

Needs ``pip install 'fastbp[onnx]' onnxruntime``. Exits non-zero if the outputs differ
by more than 1e-5 (float32), if a label differs, or if the held-out accuracy is
below ``--min-accuracy``.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

import fastbp
from fastbp.data import Standardizer
from fastbp.datasets import load_digits, stratified_split


def best_seconds(call, repeats=5):
    call()  # warm-up (compilation, session caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 epochs (for CI)")
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help="exit 1 below this held-out accuracy (default 0.9, --quick 0.8)")
    args = parser.parse_args(argv)
    min_accuracy = args.min_accuracy if args.min_accuracy is not None else 0.8 if args.quick else 0.9

    X, y = load_digits()
    train, test = stratified_split(y, 0.25, 0)
    net = fastbp.MLP([64, 64, 10], seed=0)
    net.standardizer = Standardizer.fit(X[train])  # applied by fit/predict, exported to ONNX
    net.fit(X[train], y[train], epochs=5 if args.quick else 30, optimizer=fastbp.Adam(3e-3))
    accuracy = (net.predict(X[test]) == y[test]).mean()
    print(f"trained {net.sizes} on {len(train)} digits: held-out accuracy {accuracy:.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits.onnx")
        net.to_onnx(path)
        print(f"exported to ONNX: {os.path.getsize(path):,} bytes")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    X_test = X[test].astype(np.float32)
    labels, probabilities = session.run(["label", "probabilities"], {"X": X_test})
    difference = float(np.abs(probabilities - net.predict_proba(X_test)).max())
    same_labels = bool((labels == net.predict(X_test)).all())
    print(f"onnxruntime vs fastbp: max |probability difference| {difference:.2e}, "
          f"labels {'identical' if same_labels else 'DIFFER'}")

    rows = len(X_test)
    fastbp_seconds = best_seconds(lambda: net.predict(X_test), repeats=20)
    onnx_seconds = best_seconds(lambda: session.run(["label"], {"X": X_test}), repeats=20)
    print(f"time per row, {rows} rows per call: fastbp predict {fastbp_seconds / rows * 1e6:.2f} µs, "
          f"onnxruntime {onnx_seconds / rows * 1e6:.2f} µs")
    one = X_test[:1]
    fastbp_seconds = best_seconds(lambda: net.predict(one), repeats=200)
    onnx_seconds = best_seconds(lambda: session.run(["label"], {"X": one}), repeats=200)
    print(f"time per row, one row per call:   fastbp predict {fastbp_seconds * 1e6:.2f} µs, "
          f"onnxruntime {onnx_seconds * 1e6:.2f} µs")

    ok = difference <= 1e-5 and same_labels and accuracy >= min_accuracy
    if not ok:
        print("FAILED: outputs differ or accuracy below --min-accuracy", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
