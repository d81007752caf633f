"""CUDA suite: one training epoch on the GPU backend (``device="cuda"``).

Skipped (``NotImplementedError`` in setup, asv's convention for "not applicable")
when Numba finds no CUDA GPU.
"""

from fastbp import bench

from .common import PerConfig


def cuda_available():
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # numba without CUDA support, no driver, ...
        return False


class TimeEpochCUDA(PerConfig):
    repeat = (1, 5, 60.0)

    def setup(self, config_name):
        if not cuda_available():
            raise NotImplementedError("no CUDA GPU")
        config, rows = self.config_rows(config_name)
        self.config = config
        self.X, self.labels = bench.synthetic(config.sizes, rows)
        self.net = bench.MLP(list(config.sizes))
        try:
            self.fit()
        except ValueError as exc:  # MLP.fit(device="cuda") before the backend exists
            raise NotImplementedError(f"fastbp CUDA backend unavailable: {exc}") from exc

    def fit(self):
        self.net.fit(self.X, self.labels, epochs=1, batch_size=self.config.batch_size,
                     warm_start=True, device="cuda")

    def time_cuda_epoch(self, config_name):
        self.fit()
