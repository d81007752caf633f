"""Training speed: one epoch of fastbp (``MLP.fit(epochs=1)``) and of the NumPy
reference (``reference.train_epoch``) for the speed-target configurations, the
speed-up measured in one process, the fraction of the numpy float32 GEMM rate,
and the peak memory of a fit.

``setup`` builds the data and runs one epoch (JIT compilation, warm caches); only
the epoch call is timed.
"""

import statistics

from fastbp import bench

from .common import PerConfig


class TimeEpoch(PerConfig):
    """Seconds per epoch, fastbp and reference (samples/s = rows / time)."""

    repeat = (1, 5, 60.0)

    def setup(self, config_name):
        config, rows = self.config_rows(config_name)
        self.fastbp = bench.FastbpEpoch(config, rows)
        self.reference = bench.ReferenceEpoch(config, rows)
        self.fastbp()  # compiles
        self.reference()

    def time_fastbp_epoch(self, config_name):
        self.fastbp()

    def time_reference_epoch(self, config_name):
        self.reference()


class TrackSpeedup(PerConfig):
    """fastbp samples/s ÷ reference samples/s, medians of interleaved epochs in this process."""

    def setup(self, config_name):
        config, rows = self.config_rows(config_name)
        self.rows = rows
        self.config = config
        self.runners = [bench.FastbpEpoch(config, rows), bench.ReferenceEpoch(config, rows)]

    def track_speedup_vs_reference(self, config_name):
        times = bench.time_interleaved(self.runners, bench.repeats_for())
        return statistics.median(times["reference"]) / statistics.median(times["fastbp"])

    track_speedup_vs_reference.unit = "x"

    def track_speedup_kernel_vs_reference(self, config_name):
        """As above, with fastbp's compiled epoch alone (History.seconds, no fit overhead)."""
        times = bench.time_interleaved(self.runners, bench.repeats_for())
        kernel = self.runners[0].kernel_seconds[-bench.repeats_for():]
        return statistics.median(times["reference"]) / statistics.median(kernel)

    track_speedup_kernel_vs_reference.unit = "x"


class TrackGemmFraction(PerConfig):
    """fastbp's matrix-product rate in an epoch ÷ numpy's float32 GEMM rate on 2048²
    matrices, both measured in this process, interleaved (the target is ≥ 0.8 for ``large``)."""

    def setup(self, config_name):
        config, rows = self.config_rows(config_name)
        self.config, self.rows = config, rows
        self.fastbp = bench.FastbpEpoch(config, rows)
        self.fastbp()

    def track_gemm_fraction(self, config_name):
        gemm = bench.GemmCall()
        times = bench.time_interleaved([self.fastbp, gemm], bench.repeats_for())
        fastbp_rate = bench.matmul_flops(self.config.sizes, self.rows) / statistics.median(times["fastbp"])
        return fastbp_rate / (gemm.flops / statistics.median(times["gemm"]))

    track_gemm_fraction.unit = "fraction"

    def track_gemm_gflops(self, config_name):
        """The numpy float32 2048² GEMM rate itself, for context."""
        return bench.gemm_rate(repeats=3)

    track_gemm_gflops.unit = "GFLOP/s"


class MemFit(PerConfig):
    """Peak memory of ``MLP.fit(epochs=1)``: the process peak RSS (asv ``peakmem``) and
    the bytes NumPy allocates during the fit beyond X, labels and the network
    (tracemalloc; should be O(batch × width + params) plus the one-hot targets)."""


    def setup(self, config_name):
        config, rows = self.config_rows(config_name)
        self.config = config
        self.X, self.labels = bench.synthetic(config.sizes, rows)
        b = config.batch_size
        bench.MLP(list(config.sizes)).fit(self.X[:b], self.labels[:b], epochs=1, batch_size=b)  # compiles

    def peakmem_fit(self, config_name):
        net = bench.MLP(list(self.config.sizes))
        net.fit(self.X, self.labels, epochs=1, batch_size=self.config.batch_size)

    def track_fit_extra_bytes(self, config_name):
        return bench.fit_memory(self.config, self.X.shape[0])

    track_fit_extra_bytes.unit = "bytes"
