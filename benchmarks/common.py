"""Shared asv attributes: every suite is parametrised over the speed-target configurations."""

import time

from fastbp import bench

CONFIG_NAMES = list(bench.CONFIGS)


class PerConfig:
    """Base class: ``params`` are the configuration names of ``fastbp.bench.CONFIGS``;
    timed benchmarks run one call per sample, wall-clock (BLAS uses two threads)."""

    params = [CONFIG_NAMES]
    param_names = ["config"]
    number = 1
    warmup_time = 0
    timeout = 900
    timer = time.perf_counter

    def config_rows(self, config_name):
        config = bench.CONFIGS[config_name]
        return config, config.rows_for()
