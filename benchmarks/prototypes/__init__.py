"""Standalone prototypes and profiling scripts (not asv benchmarks; asv only collects
``bench_*`` modules' benchmark methods, these have none). Run them with
``python -m benchmarks.prototypes.<name>`` from the repository root."""
