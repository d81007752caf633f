"""BLAS pools under pressure: training epochs right after a numpy GEMM of the data's
size against epochs right after an epoch (``fastbp.bench.robustness``), and
``predict_proba`` against a plain numpy forward pass (``fastbp.bench.inference``),
on the MNIST-shaped network. Both are ratios measured inside one process."""

from fastbp import bench


class TrackRobustness:
    """Worst alternating epoch ÷ median epoch alone, samples/s (target ≥ 0.7)."""

    timeout = 900

    def setup(self):
        self.config = bench.CONFIGS["mnist"]
        self.quick = bench.repeats_for() == 1

    def track_robustness_worst_over_alone(self):
        return bench.robustness(self.config, quick=self.quick,
                                epochs=2 if self.quick else bench.ROBUSTNESS_EPOCHS)["worst_over_median_alone"]

    track_robustness_worst_over_alone.unit = "fraction"


class TrackInference:
    """predict_proba rows/s ÷ numpy forward rows/s on 784-256-128-10 (target ≥ 1)."""

    timeout = 900

    def setup(self):
        self.config = bench.CONFIGS["mnist"]
        self.rows = self.config.rows_for() if bench.repeats_for() == 1 else bench.INFERENCE_ROWS

    def track_speedup_inference_vs_numpy(self):
        return bench.inference(self.config, repeats=bench.repeats_for(), rows=self.rows)["speedup"]

    track_speedup_inference_vs_numpy.unit = "x"
