"""BLAS threads during ``fit`` and ``predict``: how many, and which pool.

fastbp's compiled kernels call BLAS through Numba's ``np.dot``, which goes to the
BLAS that SciPy loads (``scipy.linalg.cython_blas``); NumPy's own ``@`` goes to
NumPy's BLAS. With pip wheels these are two OpenBLAS libraries with two thread
pools, each as wide as the machine, whose workers busy-wait after a call. Run
one right after the other, or on a machine whose cores are shared, and a
two-thread GEMM waits for a worker that is not running: the epoch collapses
(``fastbp bench``'s robustness row measures it).

:func:`blas_threads` is the one place that sets them: for the duration of a fit
or a forward pass it sets the kernels' pool to :func:`choose_threads` (one thread
unless the network's dominant GEMM is past the measured crossover
:data:`CROSSOVER_MNK`) and NumPy's pool, when it is a different library, to one
thread, so that the two pools never ask for more threads than there are cores.
On leaving, both pools get back the settings the user had. ``threads=`` overrides
the choice. Without threadpoolctl (or without an OpenBLAS it knows) nothing is
changed.
"""

import os
from contextlib import contextmanager

#: m·n·k of a float32 GEMM from which two BLAS threads beat one, measured with
#: ``python -m fastbp.threads`` (Numba's np.dot, 1 vs 2 threads interleaved; the
#: tables it printed are in ``benchmarks/results/2026-11-26-blas-crossover.txt``). On
#: the 2-vCPU development machine with nothing else running (2026-11-26 15:16 UTC) two
#: threads won from 128×256×128 (4.2 M: 1.15×) up to 1.4× at 256×1024×1024 and tied at
#: 32×128×64; the same machine shared with six busy processes (load 6-8, that morning)
#: had two threads lose at every shape (up to 4×), because a second thread waits for a
#: core. The default is the quiet machine's crossover, for a machine the fit has to
#: itself; on a shared one set ``FASTBP_BLAS_CROSSOVER=inf`` (or ``fit(threads=1)``).
CROSSOVER_MNK = float(os.environ.get("FASTBP_BLAS_CROSSOVER", str(2 ** 22)))

_pools = None
#: :func:`kernel_blas_architecture` once found (OpenBLAS picks its kernels once per process)
_architecture = None


def gemm_shapes(sizes, rows):
    """(m, n, k) of every matrix product of one training step on ``rows`` rows:
    forward a·W per layer, aᵀ·δ per layer and δ·Wᵀ for all but the first."""
    shapes = []
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes.append((rows, fan_out, fan_in))        # z = a·W
        shapes.append((fan_in, fan_out, rows))        # dW = aᵀ·δ
        if l > 0:
            shapes.append((rows, fan_in, fan_out))    # δ_prev = δ·Wᵀ
    return shapes


def threads_for_gemm(m, n, k, cores=None):
    """BLAS threads for one m×k by k×n product: one below :data:`CROSSOVER_MNK`."""
    cores = available_cores() if cores is None else cores
    return cores if m * n * k >= CROSSOVER_MNK else 1


def choose_threads(sizes, rows, cores=None):
    """Threads for the kernels' pool during a step of ``rows`` rows through ``sizes``:
    the choice for the GEMM that carries the most floating-point work (one pool
    setting holds for the whole compiled epoch)."""
    m, n, k = max(gemm_shapes(sizes, rows), key=lambda s: s[0] * s[1] * s[2])
    return threads_for_gemm(m, n, k, cores)


def available_cores():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _under(path, module):
    """Is the shared library at ``path`` shipped with ``module`` (its package folder or
    the wheel's ``<name>.libs``)?"""
    folder = os.path.dirname(os.path.realpath(module.__file__))
    path = os.path.realpath(path)
    return path.startswith((folder + os.sep, folder + ".libs" + os.sep))


def blas_pools():
    """(kernel pool, numpy-only pool): threadpoolctl controllers of the BLAS that
    Numba's np.dot calls (SciPy's) and of NumPy's BLAS when it is a different library
    (else an empty controller). None when threadpoolctl is missing."""
    global _pools
    if _pools is None:
        try:
            import numpy
            import scipy
            import scipy.linalg.cython_blas  # loads the kernels' BLAS
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        blas = ThreadpoolController().select(user_api="blas")
        paths = [lib.filepath for lib in blas.lib_controllers]
        numpy_only = [p for p in paths if _under(p, numpy) and not _under(p, scipy)]
        kernels = [p for p in paths if p not in numpy_only]
        _pools = (blas.select(filepath=kernels), blas.select(filepath=numpy_only))
    return _pools


def kernel_blas_architecture():
    """The CPU kernel family of the BLAS that Numba's np.dot calls, as OpenBLAS names it
    (lower case: "haswell", "zen", "skylakex", ...; threadpoolctl's ``architecture``),
    or None when unknown (no threadpoolctl, or not an OpenBLAS)."""
    global _architecture
    if _architecture is not None:
        return _architecture
    pools = blas_pools()
    if pools is None:
        return None
    for lib in pools[0].lib_controllers:
        architecture = lib.info().get("architecture")  # ~0.1 ms per fit after an idle spell: found once
        if architecture:
            _architecture = str(architecture).lower()
            return _architecture
    return None


def planned_threads(sizes, rows):
    """The kernels' BLAS threads that :func:`blas_threads` gives a fit of ``rows``-row
    batches through ``sizes`` without an override: :func:`choose_threads`, capped by the
    pool's current setting (``threadpool_limits``, ``OPENBLAS_NUM_THREADS``)."""
    choice = choose_threads(sizes, rows)
    pools = blas_pools()
    if pools is None or not pools[0].lib_controllers:
        return choice
    return min(choice, min(lib.num_threads for lib in pools[0].lib_controllers))


@contextmanager
def blas_threads(sizes, rows, threads=None):
    """Within the block, the kernels' BLAS pool runs :func:`choose_threads` threads
    (or ``threads``, capped by neither) and NumPy's separate pool one; the user's
    settings come back on exit. Without an override the kernels' pool never exceeds
    its current setting, so ``threadpool_limits(1)`` around a fit is honoured."""
    pools = blas_pools()
    if pools is None or not pools[0].lib_controllers:
        yield
        return
    kernels, numpy_only = pools
    if threads is None:
        threads = planned_threads(sizes, rows)
    # each library's own get/set calls: threadpoolctl's ``limit`` first reads every library's
    # full ``info()`` (version and kernel strings), ~0.1 ms of every fit after an idle spell
    targets = [(lib, int(threads)) for lib in kernels.lib_controllers]
    targets += [(lib, 1) for lib in numpy_only.lib_controllers]
    saved = [(lib, lib.num_threads) for lib, _ in targets]
    try:
        for lib, count in targets:
            if lib.num_threads != count:
                lib.set_num_threads(count)
        yield
    finally:
        for lib, count in saved:
            if lib.num_threads != count:
                lib.set_num_threads(count)


def check_threads(threads):
    """``fit(threads=...)``: None or an integer >= 1."""
    import numbers
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ValueError(f"threads must be None or an integer >= 1, got {threads!r}")
    return int(threads)


# --- measuring the crossover ---------------------------------------------------------------

#: (m, n, k) measured by :func:`measure_crossover`: the GEMMs of the bench networks
MEASURED_SHAPES = ((32, 128, 64), (128, 256, 128), (128, 256, 784), (784, 256, 128),
                   (256, 1024, 1024), (1024, 256, 784))


def measure_crossover(shapes=MEASURED_SHAPES, repeats=7, calls=None):
    """Seconds per Numba ``np.dot`` (float32) with 1 and with ``available_cores()``
    threads in the kernels' pool, interleaved, medians of ``repeats`` rounds; returns
    (rows of (m, n, k, t_one, t_all), crossover m·n·k: the smallest measured m·n·k from
    which every larger shape ran faster with all threads, inf if none)."""
    import statistics
    import time

    import numpy as np
    from numba import njit

    @njit(nogil=True)
    def products(a, b, out, count):
        for _ in range(count):
            np.dot(a, b, out)

    pools = blas_pools()
    kernels = pools[0]
    cores = available_cores()
    rng = np.random.default_rng(0)
    rows = []
    for m, n, k in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), dtype=np.float32)
        count = calls or max(1, int(2e8 // (m * n * k)))
        times = {1: [], cores: []}
        for _ in range(repeats):
            for threads in times:
                with kernels.limit(limits=threads):
                    products(a, b, out, 1)
                    t0 = time.perf_counter()
                    products(a, b, out, count)
                    times[threads].append((time.perf_counter() - t0) / count)
        rows.append((m, n, k, statistics.median(times[1]), statistics.median(times[cores])))
    return rows, crossover_of(rows)


def crossover_of(rows):
    """The smallest m·n·k of ``rows`` (m, n, k, t_one, t_all) from which every larger
    shape ran faster with all threads; inf if the largest did not."""
    crossover = float("inf")
    for m, n, k, t_one, t_all in sorted(rows, key=lambda r: -r[0] * r[1] * r[2]):
        if t_all >= t_one:
            break
        crossover = m * n * k
    return crossover


def main():
    rows, crossover = measure_crossover()
    print(f"{'m':>6}{'n':>6}{'k':>6}{'m*n*k':>12}{'1 thread us':>13}{f'{available_cores()} threads us':>14}")
    for m, n, k, t_one, t_all in rows:
        print(f"{m:>6}{n:>6}{k:>6}{m * n * k:>12,}{t_one * 1e6:>13.1f}{t_all * 1e6:>14.1f}")
    print(f"crossover m*n*k: {crossover:,.0f}")


if __name__ == "__main__":
    main()
