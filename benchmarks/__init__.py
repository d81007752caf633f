"""asv benchmarks for fastbp (see benchmarks/README.md).

The workloads live in :mod:`fastbp.bench` so that ``fastbp bench`` and asv measure
the same thing. Data sizes follow the environment variable ``FASTBP_BENCH_SIZE``:
``full`` (default), ``quick`` (CI) or ``tiny`` (tests/test_benchmarks.py).
"""
