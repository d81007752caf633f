"""``fastbp bench``: the human-readable side of the benchmark suite.

Runs the speed-target configurations, measures fastbp and the NumPy reference
(and PyTorch on the CPU when it is importable) in one process, interleaved, and
prints samples/s, the ratio fastbp ÷ reference, the machine's float32 GEMM rate
(numpy, 2048² matrices, measured in the same run) and cold/warm start times.
``--json`` prints the same results for machines, ``--quick`` shrinks everything
for CI. The asv suite in ``benchmarks/`` imports the workloads from here, so the
two instruments measure the same thing.

What one "epoch" is, for each contender (float32, ReLU hidden layers, softmax +
cross-entropy, Adam lr=1e-3, shuffled mini-batches, the last one partial):

* fastbp: ``MLP.fit(X, labels, epochs=1, warm_start=True)`` — the public API,
  timed as a whole: input checks, one-hot targets, workspace allocation,
  shuffling and the compiled epoch. ``kernel_seconds`` is the part inside the
  compiled epoch call (what ``History.seconds`` reports);
* reference: a fresh permutation plus ``reference.train_epoch`` on one-hot targets;
* torch (optional): ``nn.Sequential`` + ``torch.optim.Adam``, one step per batch.

Speed-ups are ratios of medians measured in the same run; nothing else is claimed.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass

import numpy as np

from . import reference
from .network import MLP
from .optimizers import Adam

DTYPE = np.float32
LR = 1e-3
GEMM_SIZE = 2048


@dataclass(frozen=True)
class Config:
    """One workload: layer sizes, batch size, rows of synthetic data, speed target."""

    name: str
    sizes: tuple
    batch_size: int
    n: int                     # rows for a full run
    n_quick: int               # rows for --quick / asv --quick
    target: float              # required fastbp ÷ reference samples/s ratio
    gemm_fraction: float = 0.0  # required fraction of the numpy float32 GEMM rate (0: none)
    description: str = ""

    def rows(self, quick=False):
        return self.n_quick if quick else self.n

    def rows_for(self, size=None):
        """Rows for a data-size name: "full", "quick" or "tiny" (for tests);
        default from the environment variable FASTBP_BENCH_SIZE (else "full")."""
        size = size or os.environ.get("FASTBP_BENCH_SIZE", "full")
        if size == "tiny":
            return self.batch_size + 1  # one full batch and a partial one
        if size not in ("full", "quick"):
            raise ValueError(f"FASTBP_BENCH_SIZE must be full, quick or tiny, got {size!r}")
        return self.rows(size == "quick")


def repeats_for(size=None):
    """Timed repeats in asv ``track_*`` benchmarks: 3 for full data, 1 for quick or tiny."""
    size = size or os.environ.get("FASTBP_BENCH_SIZE", "full")
    return 3 if size == "full" else 1


CONFIGS = {c.name: c for c in (
    Config("small", (64, 128, 10), 32, 16384, 2048, 10.0, description="64-128-10, batch 32"),
    Config("mnist", (784, 256, 128, 10), 128, 8192, 1024, 2.0, description="784-256-128-10, batch 128"),
    Config("sgd", (784, 256, 10), 1, 2048, 256, 5.0, description="784-256-10, batch 1 (SGD)"),
    Config("large", (1024, 1024, 1024, 10), 256, 4096, 512, 1.5, gemm_fraction=0.8,
           description="1024-1024-1024-10, batch 256"),
)}

#: cold/warm start targets in seconds (import + first epoch of training)
COLD_START_TARGET = 5.0
WARM_START_TARGET = 1.0


# --- workloads ---------------------------------------------------------------------------


def synthetic(sizes, n, seed=0):
    """Seeded random float32 features and integer labels for a classifier of ``sizes``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0]), dtype=np.float32)
    labels = rng.integers(0, sizes[-1], n)
    return X, labels


def one_hot(labels, k):
    Y = np.zeros((len(labels), k), dtype=DTYPE)
    Y[np.arange(len(labels)), labels] = 1
    return Y


def matmul_flops(sizes, rows):
    """Floating-point operations in the matrix products of one epoch over ``rows`` samples:
    forward z = a·W, dW = aᵀ·δ, and δ·Wᵀ for every layer but the first."""
    flops = 0
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        flops += 2 * rows * fan_in * fan_out * (2 if l == 0 else 3)
    return flops


class FastbpEpoch:
    """One epoch of fastbp through the public API (``MLP.fit(epochs=1, warm_start=True)``)."""

    name = "fastbp"

    def __init__(self, config, n, seed=0):
        self.config = config
        self.X, self.labels = synthetic(config.sizes, n, seed)
        self.net = MLP(list(config.sizes), activation="relu", output="softmax", seed=seed, dtype="float32")
        self.optimizer = Adam(LR)
        self.epoch = 0
        self.kernel_seconds = []

    def __call__(self):
        self.epoch += 1
        history = self.net.fit(self.X, self.labels, optimizer=self.optimizer, epochs=1,
                               batch_size=self.config.batch_size, shuffle=True, seed=self.epoch,
                               warm_start=True)
        self.kernel_seconds.append(history.seconds[0])
        return history


class ReferenceEpoch:
    """One epoch of the NumPy oracle (``reference.train_epoch``) on one-hot targets."""

    name = "reference"

    def __init__(self, config, n, seed=0):
        self.config = config
        X, labels = synthetic(config.sizes, n, seed)
        self.X, self.Y = X, one_hot(labels, config.sizes[-1])
        net = MLP(list(config.sizes), activation="relu", output="softmax", seed=seed, dtype="float32")
        self.weights = [W.copy() for W in net.weights]
        self.biases = [b.copy() for b in net.biases]
        self.activations = net.layer_activations
        self.state = reference.new_optimizer_state([*self.weights, *self.biases])
        self.rng = np.random.default_rng(seed)

    def __call__(self):
        perm = self.rng.permutation(self.X.shape[0])
        return reference.train_epoch(self.weights, self.biases, self.activations, self.X, self.Y, perm,
                                     self.config.batch_size, "cross_entropy", "adam", self.state, LR)


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchEpoch:
    """One epoch of PyTorch on the CPU (only constructed when torch imports)."""

    name = "torch"

    def __init__(self, config, n, seed=0):
        import torch
        self.torch = torch
        torch.manual_seed(seed)
        self.config = config
        X, labels = synthetic(config.sizes, n, seed)
        self.X = torch.from_numpy(X)
        self.y = torch.from_numpy(labels.astype(np.int64))
        layers = []
        for l, (fan_in, fan_out) in enumerate(zip(config.sizes[:-1], config.sizes[1:])):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if l < len(config.sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.loss = torch.nn.CrossEntropyLoss()
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self):
        torch = self.torch
        n, b = self.X.shape[0], self.config.batch_size
        perm = torch.randperm(n, generator=self.generator)
        for start in range(0, n, b):
            idx = perm[start:start + b]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.model(self.X[idx]), self.y[idx])
            loss.backward()
            self.optimizer.step()


# --- measurements --------------------------------------------------------------------------


#: seconds of idle before each timed call. fastbp's kernels call BLAS through Numba,
#: i.e. SciPy's OpenBLAS, while NumPy (the reference) has its own OpenBLAS; each keeps
#: its worker threads spinning for a while after a call, so a NumPy GEMM right after
#: a SciPy one runs 2-3x slower on 2 cores (measured by a since-removed prototype, see benchmarks/README.md). The pause
#: lets the other library's threads go to sleep before the next contender starts.
PAUSE = 0.3


def time_interleaved(runners, repeats, pause=None):
    """Call each runner once to warm up (compiles), then ``repeats`` rounds of one call
    each, interleaved so that machine noise hits every contender alike, with ``pause``
    seconds (default ``PAUSE``) of idle before each call. Returns {name: [seconds, ...]}."""
    pause = PAUSE if pause is None else pause
    for run in runners:
        run()
    times = {run.name: [] for run in runners}
    for _ in range(repeats):
        for run in runners:
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            run()
            times[run.name].append(time.perf_counter() - t0)
    return times


class GemmCall:
    """numpy float32 ``size``×``size`` matrix product, a contender in the interleaved
    rounds so that each configuration's GEMM rate is measured alongside it."""

    name = "gemm"

    def __init__(self, size=None):
        size = size or gemm_size()
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((size, size), dtype=np.float32)
        self.b = rng.standard_normal((size, size), dtype=np.float32)
        self.out = np.empty((size, size), dtype=np.float32)
        self.flops = 2.0 * size ** 3

    def __call__(self):
        np.matmul(self.a, self.b, out=self.out)


def blas_info():
    """The BLAS libraries loaded (numpy's; scipy's, which Numba's np.dot calls)."""
    try:
        import scipy.linalg  # noqa: F401  (loads the BLAS that Numba's np.dot uses)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: info.get(k) for k in ("internal_api", "prefix", "version", "architecture", "num_threads")}
            for info in threadpool_info() if info.get("user_api") == "blas"]


def gemm_size():
    """2048, or 256 when FASTBP_BENCH_SIZE=tiny (tests)."""
    return 256 if os.environ.get("FASTBP_BENCH_SIZE") == "tiny" else GEMM_SIZE


def gemm_rate(size=None, repeats=5, pause=None):
    """float32 GEMM rate of numpy on size×size matrices, GFLOP/s (median of ``repeats``)."""
    gemm = GemmCall(size)
    times = time_interleaved([gemm], repeats, pause)["gemm"]
    return gemm.flops / statistics.median(times) / 1e9


def bench_config(config, quick=False, repeats=None, with_torch=None):
    """Time one configuration: fastbp, reference (and torch) in one process."""
    n = config.rows(quick)
    repeats = repeats or (1 if quick else 5)
    with_torch = torch_available() if with_torch is None else with_torch
    fast = FastbpEpoch(config, n)
    gemm = GemmCall()
    runners = [fast, ReferenceEpoch(config, n), gemm]
    if with_torch:
        runners.append(TorchEpoch(config, n))
    times = time_interleaved(runners, repeats)
    gemm_seconds = times.pop("gemm")
    result = {"config": config.name, "description": config.description, "sizes": list(config.sizes),
              "batch_size": config.batch_size, "rows": n, "repeats": repeats, "target": config.target,
              "gemm_fraction_target": config.gemm_fraction, "seconds": times, "samples_per_second": {}}
    for name, ts in times.items():
        result["samples_per_second"][name] = n / statistics.median(ts)
    kernel = fast.kernel_seconds[-repeats:]
    result["fastbp_kernel_samples_per_second"] = n / statistics.median(kernel)
    sps = result["samples_per_second"]
    result["speedup"] = sps["fastbp"] / sps["reference"]
    # the same ratio from the fastest epoch of each (less sensitive to interference)
    result["speedup_best"] = min(times["reference"]) / min(times["fastbp"])
    if "torch" in sps:
        result["speedup_vs_torch"] = sps["fastbp"] / sps["torch"]
    flops = matmul_flops(config.sizes, n)
    result["fastbp_gflops"] = flops / statistics.median(times["fastbp"]) / 1e9
    result["reference_gflops"] = flops / statistics.median(times["reference"]) / 1e9
    result["gemm_gflops"] = gemm.flops / statistics.median(gemm_seconds) / 1e9
    result["fastbp_gemm_fraction"] = result["fastbp_gflops"] / result["gemm_gflops"]
    return result


#: the robustness row: epochs alone and alternating with a numpy GEMM; the worst
#: alternating epoch must keep this fraction of the median alone (samples/s)
ROBUSTNESS_EPOCHS = 6
ROBUSTNESS_KEEP = 0.7
#: its epochs are this many times the configuration's rows (mnist: 32,768 rows, ~1 s an
#: epoch here): a 0.2 s epoch on a shared 2-core machine varies by ±30 % alone, which hid
#: what the row is for (a collapse to ~10 % when two BLAS pools fight)
ROBUSTNESS_ROWS_SCALE = 4
#: the inference row: predict_proba over this many rows of the mnist-shaped network
INFERENCE_ROWS = 100_000


class NumpyGemm:
    """A user's numpy work between two fits, as big as the data: the first layer's
    product over every row, X (n × n_in) @ W (n_in × n_hidden), in numpy's own BLAS."""

    name = "numpy-gemm"

    def __init__(self, X, fan_out, seed=0):
        self.X = X
        self.W = np.random.default_rng(seed).standard_normal((X.shape[1], fan_out), dtype=X.dtype)
        self.out = np.empty((X.shape[0], fan_out), dtype=X.dtype)

    def __call__(self):
        np.matmul(self.X, self.W, out=self.out)


def robustness(config, quick=False, epochs=ROBUSTNESS_EPOCHS):
    """fastbp epochs right after another epoch ("alone") and right after a numpy GEMM
    of the data's size ("alternating"), interleaved (epoch, epoch, GEMM, epoch, ...)
    so that drifting machine load hits both alike, no pauses: samples/s median alone,
    median and worst alternating. Two BLAS pools that spin or oversubscribe the
    cores show up as a worst alternating epoch far below the median alone; the worst epoch
    alone against the median alone is the machine's own noise floor, reported beside it."""
    n = config.rows(quick) * ROBUSTNESS_ROWS_SCALE
    fast = FastbpEpoch(config, n)
    gemm = NumpyGemm(fast.X, config.sizes[1])
    gemm()
    fast()
    alone, alternating = [], []
    for _ in range(epochs):
        for seconds in (alone, alternating):
            t0 = time.perf_counter()
            fast()
            seconds.append(time.perf_counter() - t0)
        gemm()
    median_alone = n / statistics.median(alone)
    worst = n / max(alternating)
    worst_alone = n / max(alone)
    return {"config": config.name, "description": config.description, "rows": n, "epochs": epochs,
            "seconds_alone": alone, "seconds_alternating": alternating,
            "median_alone": median_alone, "median_alternating": n / statistics.median(alternating),
            "worst_alternating": worst, "worst_over_median_alone": worst / median_alone,
            "worst_alone": worst_alone, "worst_alone_over_median_alone": worst_alone / median_alone,
            "keep_target": ROBUSTNESS_KEEP}


class NumpyForward:
    """A plain numpy forward pass (``reference.predict``) of the same network."""

    name = "numpy"

    def __init__(self, net, X):
        self.net, self.X = net, X

    def __call__(self):
        return reference.predict(self.net.weights, self.net.biases, self.net.layer_activations, self.X)


class FastbpPredict:
    name = "fastbp"

    def __init__(self, net, X):
        self.net, self.X = net, X

    def __call__(self):
        return self.net.predict_proba(self.X)


def inference(config, quick=False, repeats=None, rows=None):
    """predict_proba of ``rows`` rows (default 100k; 10k quick) against a plain numpy
    forward pass of the same network, interleaved: rows/s of each and their ratio."""
    rows = rows or (INFERENCE_ROWS // 10 if quick else INFERENCE_ROWS)
    repeats = repeats or (1 if quick else 5)
    X, _ = synthetic(config.sizes, rows)
    net = MLP(list(config.sizes), seed=0)
    times = time_interleaved([FastbpPredict(net, X), NumpyForward(net, X)], repeats)
    fast, plain = rows / statistics.median(times["fastbp"]), rows / statistics.median(times["numpy"])
    return {"config": config.name, "description": config.description, "rows": rows, "repeats": repeats,
            "seconds": times, "fastbp_rows_per_second": fast, "numpy_rows_per_second": plain,
            "speedup": fast / plain, "target": 1.0}


START_SCRIPT = r"""
import contextlib, io, json, re, sys
out = io.StringIO()
with contextlib.redirect_stdout(out):
    from fastbp.cli import main
    main(["train", "--epochs", "1", "--no-reference"])
seconds = float(re.search(r"time to first trained epoch[^:]*: ([0-9.]+) s", out.getvalue()).group(1))
print(json.dumps({"first_epoch": seconds}))
"""


def start_time(cache_dir, timeout=600):
    """``fastbp train``'s time to its first trained epoch (process start, imports,
    JIT compilation or cache load, data loading, one epoch), as the CLI itself reports
    it, in a fresh interpreter with NUMBA_CACHE_DIR=cache_dir.

    Returns {"first_epoch": that time, "total": wall seconds of the whole subprocess}.
    An empty ``cache_dir`` gives the cold start, a populated one the warm start.
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", START_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=timeout)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"start-time subprocess failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["total"] = total
    return result


def cold_warm_start(warm_repeats=3, **kwargs):
    """Cold start (empty Numba cache) then warm start (the cache the cold run wrote;
    the run with the median total of ``warm_repeats``)."""
    with tempfile.TemporaryDirectory(prefix="fastbp-numba-cache-") as cache_dir:
        cold = start_time(cache_dir, **kwargs)
        warm = sorted((start_time(cache_dir, **kwargs) for _ in range(warm_repeats)),
                      key=lambda r: r["first_epoch"])
    return {"cold": cold, "warm": warm[len(warm) // 2], "warm_totals": [r["total"] for r in warm],
            "cold_target": COLD_START_TARGET, "warm_target": WARM_START_TARGET}


def fit_memory(config, rows, seed=0):
    """Peak bytes allocated by NumPy during ``MLP.fit(epochs=1)`` (tracemalloc), beyond X,
    labels and the network. The kernels allocate nothing themselves (the workspace
    comes from Python), so tracemalloc sees every buffer of the fit."""
    X, labels = synthetic(config.sizes, rows, seed)
    net = MLP(list(config.sizes), seed=seed)
    net.fit(X[:config.batch_size], labels[:config.batch_size], epochs=1, batch_size=config.batch_size)  # compile
    net = MLP(list(config.sizes), seed=seed)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        net.fit(X, labels, epochs=1, batch_size=config.batch_size)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak


def memory_model(config, rows_small, rows_big):
    """Split fit's peak extra memory into a per-row part and a fixed part by fitting
    two data sizes; compare the fixed part with batch×width + params."""
    small = fit_memory(config, rows_small)
    big = fit_memory(config, rows_big)
    per_row = (big - small) / (rows_big - rows_small)
    fixed = small - per_row * rows_small
    sizes = config.sizes
    itemsize = np.dtype(DTYPE).itemsize
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    batch_width = config.batch_size * sum(sizes)
    return {"config": config.name, "rows": [rows_small, rows_big], "peak_bytes": [small, big],
            "x_bool_bytes": [rows_small * sizes[0], rows_big * sizes[0]],
            "per_row_bytes": per_row, "one_hot_row_bytes": sizes[-1] * itemsize,
            "fixed_bytes": fixed, "params_bytes": n_params * itemsize,
            "batch_x_width_bytes": batch_width * itemsize,
            "fixed_over_params": fixed / (n_params * itemsize)}


def _fixed_work(n=20_000):
    """A fixed piece of Python work (~1-2 ms): its time tells how fast a CPU runs now."""
    x = 0
    for i in range(n):
        x = (x + i * i) & 0xFFFF
    return x


def cpu_speeds(repeats=5):
    """How fast each CPU this process may use runs right now: the calling thread pinned to
    each in turn (its CPU mask restored after) times :func:`_fixed_work`, median of
    ``repeats``. Returns {"cpus": [...], "seconds": [...], "slowest_over_fastest": speed of
    the slowest CPU ÷ the fastest's}, or None where CPU masks are not available. A shared
    host can run one vCPU much slower than another for seconds (``benchmarks/README.md``
    section 15), and a two-thread fit goes at the slower one's pace: this puts a number on
    it beside each configuration's timings."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    mask = os.sched_getaffinity(0)
    cpus, seconds = sorted(mask), []
    try:
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _fixed_work()
                times.append(time.perf_counter() - t0)
            seconds.append(statistics.median(times))
    finally:
        os.sched_setaffinity(0, mask)
    return {"cpus": cpus, "seconds": seconds, "slowest_over_fastest": min(seconds) / max(seconds)}


def machine_info():
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "machine": platform.machine(), "processor": _cpu_name(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "numba": _version("numba"), "blas": blas_info(),
            "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def run_suite(configs=None, quick=False, repeats=None, start=True, memory=True, with_torch=None,
              progress=None, robust=True):
    """Everything ``fastbp bench`` reports, as a dict."""
    names = list(CONFIGS) if not configs else list(configs)
    say = progress or (lambda msg: None)
    results = {"machine": machine_info(), "quick": quick, "torch": torch_available(), "configs": []}
    say(f"numpy float32 GEMM {GEMM_SIZE}x{GEMM_SIZE} ...")
    results["gemm_gflops"] = gemm_rate(repeats=2 if quick else 7)
    for name in names:
        say(f"config {name} ...")
        speeds = cpu_speeds()
        result = bench_config(CONFIGS[name], quick=quick, repeats=repeats, with_torch=with_torch)
        result["cpu_speed"] = speeds
        results["configs"].append(result)
    if start:
        say("cold / warm start ...")
        results["start"] = cold_warm_start()
    if robust:
        say("robustness (epochs alternating with a numpy GEMM) ...")
        results["robustness"] = robustness(CONFIGS["mnist"], quick=quick)
        say("inference (predict_proba vs a numpy forward pass) ...")
        results["inference"] = inference(CONFIGS["mnist"], quick=quick)
    if memory:
        say("fit memory ...")
        config = CONFIGS["mnist"]
        rows = (1024, 2048) if quick else (4096, 16384)
        results["memory"] = memory_model(config, *rows)
    return results


# --- report --------------------------------------------------------------------------------


def _mark(ok):
    return "ok" if ok else "MISS"


def format_report(results, targets=False):
    """The report: speed against the NumPy reference and start-up for users; with
    ``targets`` also the development targets (ok/MISS), GFLOP/s and GEMM fractions."""
    lines = []
    m = results["machine"]
    lines.append(f"fastbp bench  {m['date']}  {m['processor']} ({m['cpus']} CPUs)  numpy {m['numpy']}  "
                 f"numba {m['numba']}{'  [quick]' if results['quick'] else ''}")
    blas = ", ".join(f"{b['prefix']} {b['version']} {b['architecture']} x{b['num_threads']}" for b in m["blas"])
    lines.append(f"BLAS: {blas or 'unknown'}")
    gemm = results["gemm_gflops"]
    threads = f", BLAS threads limited to {results['threads']}" if results.get("threads") else ""
    if targets:
        lines.append(f"numpy float32 GEMM {GEMM_SIZE}x{GEMM_SIZE} at start: {gemm:,.1f} GFLOP/s{threads}")
    elif threads:
        lines.append(threads[2:])
    lines.append("")
    torch = results["torch"]
    head = f"{'config':<32}{'fastbp/s':>11}{'kernel/s':>11}{'ref/s':>11}"
    head += f"{'torch/s':>11}" if torch else ""
    head += f"{'speedup':>9}{'best':>7}"
    head += f"{'target':>8}  {'':4}{'GFLOP/s':>9}{'GEMM':>7}{'of GEMM':>8}" if targets else ""
    lines.append(head)
    for r in results["configs"]:
        sps = r["samples_per_second"]
        row = (f"{r['description']:<32}{sps['fastbp']:>11,.0f}{r['fastbp_kernel_samples_per_second']:>11,.0f}"
               f"{sps['reference']:>11,.0f}")
        row += f"{sps['torch']:>11,.0f}" if torch else ""
        row += f"{r['speedup']:>8.2f}x{r.get('speedup_best', float('nan')):>6.2f}x"
        if targets:
            ok = r["speedup"] >= r["target"]
            gemm_ok = r["fastbp_gemm_fraction"] >= r["gemm_fraction_target"]
            row += (f"{r['target']:>7.1f}x  {_mark(ok and gemm_ok):<4}"
                    f"{r['fastbp_gflops']:>9.1f}{r['gemm_gflops']:>7.0f}{r['fastbp_gemm_fraction']:>8.0%}")
            if r["gemm_fraction_target"]:
                row += f" (target {r['gemm_fraction_target']:.0%})"
        lines.append(row)
    if not torch:
        lines.append("(PyTorch not importable: skipped)")
    speeds = [(r["config"], r["cpu_speed"]) for r in results["configs"] if r.get("cpu_speed")]
    if speeds and len(speeds[0][1]["cpus"]) > 1:
        lines.append("CPU speed before each configuration, slowest CPU ÷ fastest (a fixed loop pinned to each): "
                     + ", ".join(f"{name} {s['slowest_over_fastest']:.2f}" for name, s in speeds)
                     + "; far below 1, a two-thread fit goes at the slower CPU's pace")
    lines.append("samples/s trained: fastbp/s is MLP.fit(epochs=1) wall time, kernel/s the compiled epoch alone")
    lines.append("(History.seconds), ref/s the NumPy reference on the same batches; speedup = fastbp/s ÷ ref/s,")
    lines.append("medians of interleaved epochs (best: ratio of the fastest epochs).")
    if targets:
        lines.append("target: the development goal for the speed-up (ok/MISS judges the median); GFLOP/s:")
        lines.append("fastbp's matrix-product FLOPs per second of fit; GEMM: numpy float32 2048x2048 rate")
        lines.append("measured in the same rounds as that configuration.")
    if "robustness" in results:
        r = results["robustness"]
        lines.append("")
        row = (f"robustness ({r['description']}, {r['rows']:,} rows, {r['epochs']} epochs each, samples/s): "
               f"median alone {r['median_alone']:,.0f}; alternating with a numpy GEMM: median "
               f"{r['median_alternating']:,.0f}, worst {r['worst_alternating']:,.0f} "
               f"= {r['worst_over_median_alone']:.0%} of alone")
        if targets:
            row += (f"  target >= {r['keep_target']:.0%}  "
                    f"{_mark(r['worst_over_median_alone'] >= r['keep_target'])}")
        lines.append(row)
        if "worst_alone" in r:
            lines.append(f"  (noise floor: the worst epoch alone is {r['worst_alone_over_median_alone']:.0%} "
                         "of the median alone)")
    if "inference" in results:
        r = results["inference"]
        row = (f"inference (predict_proba, {r['rows']:,} rows, {r['description'].split(',')[0]}, rows/s): "
               f"fastbp {r['fastbp_rows_per_second']:,.0f}, numpy forward {r['numpy_rows_per_second']:,.0f}"
               f" = {r['speedup']:.2f}x")
        if targets:
            row += f"  target >= {r['target']:.1f}x  {_mark(r['speedup'] >= r['target'])}"
        lines.append(row)
    if "start" in results:
        s = results["start"]
        lines.append("")
        for kind, what in (("cold", "first run, compiling the kernels"), ("warm", "kernels cached on disk")):
            t = s[kind]
            row = (f"{kind} start (fastbp train, from fastbp's start to the first trained epoch; {what}): "
                   f"{t['first_epoch']:.2f} s")
            if targets:
                target = s[f"{kind}_target"]
                row += f"  target <= {target:.0f} s  {_mark(t['first_epoch'] <= target)}"
            lines.append(row)
    if "memory" in results:
        mm = results["memory"]
        lines.append("")
        lines.append(f"fit memory ({mm['config']}, tracemalloc): peak extra "
                     f"{mm['peak_bytes'][0] / 2**20:.2f} MiB at {mm['rows'][0]} rows, "
                     f"{mm['peak_bytes'][1] / 2**20:.2f} MiB at {mm['rows'][1]} rows; params "
                     f"{mm['params_bytes'] / 2**20:.2f} MiB, "
                     f"batch x width {mm['batch_x_width_bytes'] / 2**20:.2f} MiB, "
                     f"one bool per input value {mm['x_bool_bytes'][1] / 2**20:.2f} MiB at {mm['rows'][1]} rows")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser):
    """Options of ``fastbp bench`` (for the CLI's sub-parser)."""
    parser.add_argument("--quick", action="store_true", help="small data, one repeat (for CI)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), dest="configs",
                        help="run only this configuration (repeatable)")
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs per contender")
    parser.add_argument("--no-start", action="store_true", help="skip the cold/warm start measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip the fit memory measurement")
    parser.add_argument("--no-robustness", action="store_true",
                        help="skip the robustness (numpy GEMM alternating) and inference rows")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if importable")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit the BLAS thread pools (threadpoolctl) to this many threads")
    parser.add_argument("--targets", action="store_true",
                        help="also show the development targets (ok/MISS), GFLOP/s and GEMM fractions")
    parser.add_argument("--from-json", metavar="FILE", default=None,
                        help="print the report of an earlier --json run instead of measuring")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: run the one-shot GPU check (benchmarks/gpu_check.py) instead")
    parser.add_argument("--out", metavar="DIR", default="gpu_check",
                        help="with --device cuda: the directory for its results (default gpu_check)")
    return parser


def run_gpu_check(out, quick=False):
    """``fastbp bench --device cuda``: ``benchmarks/gpu_check.py`` of the source tree
    (tests, GPU-vs-CPU parity, compute-sanitizer, throughput) into ``out``;
    ``quick`` runs its tiny ``--dry-run``."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    if not path.exists():
        raise SystemExit(f"fastbp bench --device cuda runs {path}, which is part of the source tree only")
    module_spec = importlib.util.spec_from_file_location("fastbp_gpu_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.main([str(out)] + (["--dry-run"] if quick else []))


def run(args):
    """Run ``fastbp bench`` with parsed ``args``; returns the exit status."""
    if getattr(args, "device", "cpu") == "cuda":
        return run_gpu_check(args.out, args.quick)
    if args.from_json:
        with open(args.from_json) as f:
            print(format_report(json.load(f), targets=args.targets))
        return 0
    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    kwargs = dict(quick=args.quick, repeats=args.repeats, start=not args.no_start,
                  memory=not args.no_memory, robust=not args.no_robustness,
                  with_torch=False if args.no_torch else None, progress=progress)
    if args.threads:
        blas_info()  # loads SciPy's BLAS so that threadpoolctl limits it too
        from threadpoolctl import threadpool_limits
        with threadpool_limits(args.threads):
            results = run_suite(args.configs, **kwargs)
        results["threads"] = args.threads
    else:
        results = run_suite(args.configs, **kwargs)
    if args.json:
        print(json.dumps(results, indent=2, default=_jsonable))
    else:
        print(format_report(results, targets=args.targets))
    return 0


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(prog="fastbp bench", description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
