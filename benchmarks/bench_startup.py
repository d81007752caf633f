"""Start-up time of ``fastbp train``: process start to the end of its first epoch
(imports, JIT compilation or cache load, data loading, one epoch), as the CLI reports
it, in a fresh interpreter: cold (empty NUMBA_CACHE_DIR: every kernel JIT-compiled)
and warm (the cache written by the cold run). Targets: cold <= 5 s, warm <= 1 s."""

from fastbp import bench


class TrackStartup:
    timeout = 900

    def setup_cache(self):
        return bench.cold_warm_start()

    def track_cold_start(self, result):
        return result["cold"]["first_epoch"]

    track_cold_start.unit = "s"

    def track_warm_start(self, result):
        return result["warm"]["first_epoch"]

    track_warm_start.unit = "s"
