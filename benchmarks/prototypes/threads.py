"""One BLAS thread or two for fastbp's epoch, measured in the same run: the same
``fastbp.bench.FastbpEpoch`` workload, once with the BLAS pools as they are and once
inside ``threadpoolctl.threadpool_limits(1)``, interleaved with the reference
(default threads) and a numpy 2048² GEMM (which shows whether the second vCPU was
there during the run).

    python -m benchmarks.prototypes.threads [--repeats 7]
"""

import argparse
import statistics

from threadpoolctl import threadpool_limits

from fastbp import bench


class OneThread:
    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name + "-1thread"

    def __call__(self):
        with threadpool_limits(1):
            return self.inner()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--config", action="append")
    args = parser.parse_args(argv)
    bench.blas_info()
    print(f"{'config':<8}{'rows':>7}{'2 threads/s':>13}{'1 thread/s':>12}{'ref/s':>10}"
          f"{'1 ÷ 2 threads':>15}{'GEMM GF/s':>11}")
    for name in args.config or list(bench.CONFIGS):
        config = bench.CONFIGS[name]
        n = config.rows()
        gemm = bench.GemmCall()
        runners = [bench.FastbpEpoch(config, n), OneThread(bench.FastbpEpoch(config, n)),
                   bench.ReferenceEpoch(config, n), gemm]
        t = {k: statistics.median(v) for k, v in bench.time_interleaved(runners, args.repeats).items()}
        print(f"{name:<8}{n:>7}{n / t['fastbp']:>13,.0f}{n / t['fastbp-1thread']:>12,.0f}{n / t['reference']:>10,.0f}"
              f"{t['fastbp'] / t['fastbp-1thread']:>14.2f}x{gemm.flops / t['gemm'] / 1e9:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
