"""Standalone prototypes and profiling scripts, not asv benchmarks. asv imports every
module under benchmarks/ during discovery, so nothing here may be named like a
benchmark (time_*, track_*, mem_*, peakmem_*, timeraw_*). Run them with
``python -m benchmarks.prototypes.<name>`` from the repository root."""
