#!/usr/bin/env python
"""Compile every fastbp CUDA kernel (float32, float64) to PTX for sm_90 and sm_80,
assemble it with ``ptxas -v`` and print registers, shared memory, stack, spills and
the implied occupancy on an H100 (65536 registers, 228 KB shared memory and 64 warps
per SM). Needs numba-cuda with NVVM and ptxas, not a GPU; do not set
NUMBA_ENABLE_CUDASIM.

    python scripts/cuda_ptx_report.py [--tile 64] [--micro 4] [--depth 16] [--block 256] [--cc 9.0,8.0]
"""

import argparse
import dataclasses
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, help_text in (("tile", "GEMM output tile edge"), ("micro", "outputs per GEMM thread per edge"),
                            ("depth", "GEMM reduction step"), ("block", "threads per 1-D block")):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"{help_text} (default: cuda_config)")
    parser.add_argument("--cc", default="9.0,8.0", help="compute capabilities, comma-separated")
    args = parser.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        sys.exit("unset NUMBA_ENABLE_CUDASIM: the simulator cannot compile PTX")
    from fastbp.kernels import cuda_config, cuda_ptx
    changes = {name: getattr(args, name) for name in ("tile", "micro", "depth", "block")
               if getattr(args, name) is not None}
    cfg = dataclasses.replace(cuda_config.config, **changes)
    ccs = [tuple(int(p) for p in cc.split(".")) for cc in args.cc.split(",")]
    if cuda_ptx.ptxas_path() is None:
        sys.exit("ptxas not found (PATH or /usr/local/cuda*/bin)")
    rows = cuda_ptx.report(ccs=ccs, cfg=cfg)
    print(f"config: {cfg}")
    print(cuda_ptx.markdown(rows))
    spilled = [f"{r.kernel}/{r.dtype}/{r.arch}" for r in rows if r.spills]
    if spilled:
        print("SPILLS:", ", ".join(spilled))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
