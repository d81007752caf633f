"""When does GridSearchCV(n_jobs=2) pay with fastbp.sklearn? A measurement, not a test.

Digits (noisy copies for more rows), StandardScaler + fastbp.sklearn.MLPClassifier, 4
candidates x 3 folds. The main process loads fastbp's kernels first; then, per size:
n_jobs=1, n_jobs=1 with BLAS limited to one thread, n_jobs=2 with fresh worker processes
(each imports fastbp and loads its compiled kernels), n_jobs=2 with the workers loky keeps,
and n_jobs=1 again. Results for the README: ``python examples/grid_search_jobs.py``.
"""
import time
import warnings

import numpy as np
from joblib.externals.loky import get_reusable_executor
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fastbp.sklearn import MLPClassifier

warnings.simplefilter("ignore", ConvergenceWarning)
X, y = load_digits(return_X_y=True)
rng = np.random.default_rng(0)
grid = {"mlpclassifier__alpha": [1e-4, 1e-3], "mlpclassifier__hidden_layer_sizes": [(32,), (64,)]}
MLPClassifier(max_iter=2).fit(X[:100], y[:100])  # compile / load kernels in the main process
for rows, max_iter in [(300, 20), (1797, 30)]:
    reps = -(-rows // len(X))
    Xr = np.concatenate([X + rng.normal(scale=0.5, size=X.shape) for _ in range(reps)])[:rows]
    yr = np.tile(y, reps)[:rows]
    get_reusable_executor().shutdown(wait=True)  # fresh workers for the first n_jobs=2 run
    for n_jobs, label in [(1, ""), (1, "1 BLAS thread"), (2, "fresh workers"), (2, "reused workers"),
                          (1, "again")]:
        search = GridSearchCV(make_pipeline(StandardScaler(), MLPClassifier(max_iter=max_iter, random_state=0)),
                              grid, cv=3, n_jobs=n_jobs)
        t0 = time.perf_counter()
        with threadpool_limits(1 if label == "1 BLAS thread" else None):
            search.fit(Xr, yr)
        print(f"rows {rows:>5} max_iter {max_iter} n_jobs {n_jobs} {label:<15}: {time.perf_counter() - t0:6.2f} s",
              flush=True)
