"""Start-up time: import fastbp and train one epoch (MNIST-shaped network) in a fresh
interpreter, cold (empty NUMBA_CACHE_DIR: every kernel JIT-compiled) and warm (the
cache written by the cold run). Seconds of the whole subprocess, interpreter start
included. Targets: cold ≤ 5 s, warm ≤ 1 s."""

from fastbp import bench


class TrackStartup:
    timeout = 900

    def setup_cache(self):
        return bench.cold_warm_start(n=256)

    def track_cold_start(self, result):
        return result["cold"]["total"]

    track_cold_start.unit = "s"

    def track_warm_start(self, result):
        return result["warm"]["total"]

    track_warm_start.unit = "s"

    def track_cold_first_epoch(self, result):
        """Cold: the first ``fit`` alone (compilation + one epoch), import excluded."""
        return result["cold"]["first_epoch"]

    track_cold_first_epoch.unit = "s"

    def track_import(self, result):
        """Warm: ``import fastbp`` alone (numpy, numba and scipy included)."""
        return result["warm"]["import"]

    track_import.unit = "s"
