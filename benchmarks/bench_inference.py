"""Inference: ``MLP.predict_proba`` (compiled forward pass in chunks) against the
reference forward pass, on the training configurations' networks."""

import time

import numpy as np

from fastbp import bench, reference

from .common import PerConfig


class TimePredict(PerConfig):
    repeat = (1, 10, 30.0)

    def setup(self, config_name):
        config, rows = self.config_rows(config_name)
        self.X, _ = bench.synthetic(config.sizes, rows)
        self.net = bench.MLP(list(config.sizes), seed=0)
        self.net.predict_proba(self.X)  # compiles
        self.rows = rows

    def time_fastbp_predict(self, config_name):
        self.net.predict_proba(self.X)

    def time_reference_predict(self, config_name):
        reference.predict(self.net.weights, self.net.biases, self.net.layer_activations, self.X)

    def track_predict_speedup(self, config_name):
        """Reference seconds ÷ fastbp seconds, medians of 5 interleaved calls
        (``fastbp.bench.time_interleaved``: warm-up, pauses between contenders)."""
        times = bench.time_interleaved([_Named("fastbp", self.time_fastbp_predict, config_name),
                                        _Named("reference", self.time_reference_predict, config_name)], 5)
        return float(np.median(times["reference"]) / np.median(times["fastbp"]))

    track_predict_speedup.unit = "x"

    def track_predict_samples_per_second(self, config_name):
        t0 = time.perf_counter()
        self.net.predict_proba(self.X)
        return self.rows / (time.perf_counter() - t0)

    track_predict_samples_per_second.unit = "samples/s"


class _Named:
    """A callable with a ``name``, as ``bench.time_interleaved`` expects."""

    def __init__(self, name, fn, *args):
        self.name, self.fn, self.args = name, fn, args

    def __call__(self):
        return self.fn(*self.args)
