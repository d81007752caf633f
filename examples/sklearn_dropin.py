"""fastbp as a drop-in for scikit-learn's MLPClassifier.

The same pipeline (StandardScaler + MLP) is fitted on scikit-learn's bundled
digits with ``sklearn.neural_network.MLPClassifier`` and with
``fastbp.sklearn.MLPClassifier`` -- same data split, hyper-parameters and
random_state -- and the fit time and held-out accuracy of each are printed.
The only change in user code is the import.

fastbp's first fit in a process compiles (or loads from Numba's cache) its
kernels; that one-off cost is measured and reported separately ("JIT warm-up")
and is not part of the per-fit times.

    python examples/sklearn_dropin.py            # default: (100,) hidden, up to 200 epochs, 5 repeats
    python examples/sklearn_dropin.py --quick    # CI: (64,) hidden, 30 epochs, 1 repeat

Exits non-zero if fastbp's accuracy is more than ``--margin`` (default 0.02, i.e.
2 points, ~9 of the 450 test digits) below scikit-learn's. Both runs start from
the same initial weights but shuffle mini-batches with different generators, so
the accuracies differ by noise of about a point.
"""

import argparse
import statistics
import sys
import time
import warnings

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SklearnMLP
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fastbp.sklearn import MLPClassifier as FastbpMLP


def timed_fits(estimators, X_train, y_train, X_test, y_test, repeats):
    """Fit each pipeline ``repeats`` times, alternating between the libraries so that
    load drift on a shared machine hits both; per library: (median s, accuracy, n_iter_)."""
    times = {name: [] for name in estimators}
    results = {}
    for _ in range(repeats):
        for name, make_estimator in estimators.items():
            pipe = make_pipeline(StandardScaler(), make_estimator())
            t0 = time.perf_counter()
            pipe.fit(X_train, y_train)
            times[name].append(time.perf_counter() - t0)
            results[name] = (pipe.score(X_test, y_test), pipe[-1].n_iter_)
    return {name: (statistics.median(times[name]), *results[name]) for name in estimators}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, fast settings for CI")
    parser.add_argument("--hidden", type=int, default=None, help="hidden units (default 100; 64 quick)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="max_iter: epochs, or L-BFGS iterations (default 200; 30 quick)")
    parser.add_argument("--solver", default="adam", choices=["adam", "sgd", "lbfgs"])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed fits per library (median; default 5, 1 quick)")
    parser.add_argument("--margin", type=float, default=0.02,
                        help="allowed accuracy shortfall of fastbp vs scikit-learn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads for both libraries (default 1: small matrices, and "
                             "reproducible timings); 0 leaves the libraries' defaults")
    args = parser.parse_args(argv)
    hidden = args.hidden or (64 if args.quick else 100)
    max_iter = args.max_iter or (30 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 5)

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y,
                                                        random_state=args.seed)
    params = dict(hidden_layer_sizes=(hidden,), solver=args.solver, max_iter=max_iter,
                  random_state=args.seed)
    warnings.simplefilter("ignore", ConvergenceWarning)

    t0 = time.perf_counter()
    FastbpMLP(**{**params, "max_iter": 1}).fit(X_train[:50], y_train[:50])
    warm_up = time.perf_counter() - t0

    with threadpool_limits(limits=args.threads or None, user_api="blas"):
        res = timed_fits({"sklearn": lambda: SklearnMLP(**params),
                          "fastbp": lambda: FastbpMLP(**params)},
                         X_train, y_train, X_test, y_test, repeats)
    (sk_time, sk_acc, sk_iter), (fb_time, fb_acc, fb_iter) = res["sklearn"], res["fastbp"]

    print(f"digits: {len(X_train)} train / {len(X_test)} test, StandardScaler + MLP{(hidden,)}, "
          f"solver={args.solver}, max_iter={max_iter}, median of {repeats} fit(s), "
          f"BLAS threads: {args.threads or 'default'}")
    print(f"  scikit-learn MLPClassifier  fit {sk_time:7.3f} s  ({sk_iter} iterations)  "
          f"accuracy {sk_acc:.4f}")
    print(f"  fastbp.sklearn MLPClassifier fit {fb_time:7.3f} s  ({fb_iter} iterations)  "
          f"accuracy {fb_acc:.4f}")
    print(f"  speed-up {sk_time / fb_time:.1f}x per fit; per iteration "
          f"{(sk_time / sk_iter) / (fb_time / fb_iter):.1f}x; fastbp JIT warm-up (once per "
          f"process) {warm_up:.2f} s")
    if fb_acc < sk_acc - args.margin:
        print(f"FAIL: fastbp accuracy {fb_acc:.4f} is more than {args.margin} below "
              f"scikit-learn's {sk_acc:.4f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
