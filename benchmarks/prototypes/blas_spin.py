"""Two OpenBLAS pools in one process: NumPy's and SciPy's (the one Numba's np.dot
calls). Times a NumPy 1024² float32 GEMM right after another NumPy GEMM, right after
a SciPy GEMM, and after a SciPy GEMM plus a 0.3 s pause (the idle ``fastbp.bench``
inserts before every timed call).

    python -m benchmarks.prototypes.blas_spin
"""

import statistics
import time

import numpy as np
import scipy.linalg.blas as sb


def main(rounds=15, pause=0.3):
    a = np.ones((1024, 1024), np.float32, order="F")
    out = np.ones((1024, 1024), np.float32)

    def numpy_gemm():
        t0 = time.perf_counter()
        np.matmul(a, a, out=out)
        return time.perf_counter() - t0

    def scipy_gemm():
        sb.sgemm(1.0, a, a)

    for _ in range(3):
        numpy_gemm()
        scipy_gemm()
    res = {"after numpy": [], "after scipy": [], f"after scipy + {pause} s": []}
    for _ in range(rounds):
        numpy_gemm()
        res["after numpy"].append(numpy_gemm())
        scipy_gemm()
        res["after scipy"].append(numpy_gemm())
        scipy_gemm()
        time.sleep(pause)
        res[f"after scipy + {pause} s"].append(numpy_gemm())
    for key, values in res.items():
        print(f"numpy GEMM {key:<22} median {1e3 * statistics.median(values):7.2f} ms  min {1e3 * min(values):7.2f} ms")


if __name__ == "__main__":
    main()
