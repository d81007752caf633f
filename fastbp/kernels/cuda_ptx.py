"""Compile every CUDA kernel to PTX without a GPU and read ptxas' resource report.

``numba.cuda.compile_ptx`` emits real PTX from NVVM for a given compute capability;
``ptxas -arch=sm_XX -v`` assembles it and reports registers, shared memory, stack
and spills per kernel, from which the occupancy on an H100 follows. Used by
``scripts/cuda_ptx_report.py`` and ``tests/cuda/test_cuda_ptx.py``; must run
WITHOUT ``NUMBA_ENABLE_CUDASIM`` (the simulator has no compiler).
"""

import contextlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cuda_config

#: what one H100 (sm_90) SM offers
H100 = dict(regs_per_sm=65536, smem_per_sm=228 * 1024, smem_per_block_reserved=1024, max_warps=64,
            max_blocks=32, reg_alloc_unit=256)
#: the newest PTX ISA the ptxas of CUDA 13.0 accepts
PTXAS_MAX_VERSION = "9.0"


#: suffix of the sample-weighted build of a kernel that takes optional weights (None
#: when a fit has none: Numba compiles the weight code away)
WEIGHTED = " (weighted)"
#: the kernels with such an optional-weights build
WEIGHTED_KERNELS = ("output_delta", "train_step")


def signatures(dtype):
    """Kernel name -> signature string, with the argument types the driver passes (the
    weighted builds of WEIGHTED_KERNELS under ``name + WEIGHTED``)."""
    a2, a1 = f"{dtype}[:, ::1]", f"{dtype}[::1]"
    f64, i64, t2 = "float64[::1]", "int64[::1]", "int64[:, ::1]"
    plain = {
        "gather_batch": f"void({a2}, {a2}, {i64}, int64, int64, {a2}, {a2}, {i64})",
        "forward_layer": f"void({a2}, {a2}, {a1}, int64, int64, {a2}, {a2}, float64, uint64, {i64}, int64)",
        "bn_forward": f"void({a2}, {a2}, {a1}, {a1}, {f64}, {f64}, {f64}, {f64}, float64, float64, int64, int64, "
                      f"{a2}, int64, float64, uint64, {i64}, int64)",
        "softmax_rows": f"void({a2}, int64, {a2})",
        "output_delta": f"void({a2}, {a2}, {a2}, int64, int64, int64, float64, {{weights}}, {a2}, {f64}, {i64})",
        "bn_backward": f"void({a2}, {a2}, {a1}, {f64}, int64, {a1})",
        "weight_gradient": f"void({a2}, {a2}, int64, {a2}, {a2})",
        "backprop_delta": f"void({a2}, {a2}, {a2}, {a2}, int64, int64, {a2}, float64, uint64, {i64}, int64)",
        "clip_partials": f"void({a1}, {a1}, {t2}, {f64}, {f64})",
        "update_params": f"void({a1}, {a1}, {a1}, {t2}, {a1}, {a1}, int64, {f64}, {i64}, boolean, {f64}, int64, "
                         f"{f64}, {f64}, float64[:, ::1], {i64})",
        "sum_gradient": f"void({a1}, {t2}, {a1})",
        "batch_weights": f"void({f64}, {i64}, int64, int64, {f64}, {f64}, {f64}, {f64})",
        "count_nonfinite": f"void({a1}, {i64})",
        "train_step": f"void({a2}, {a2}, {i64}, int64, int64, {a1}, {t2}, {i64}, int64, int64, {a1}, {t2}, {f64}, "
                      f"{i64}, {i64}, {{weights}})",
    }
    weighted = {name + WEIGHTED: plain[name].format(weights=f"{f64}, {f64}") for name in WEIGHTED_KERNELS}
    return {**{name: sig.format(weights="none, none") for name, sig in plain.items()}, **weighted}


GEMMS = ("forward_layer", "backprop_delta", "weight_gradient")


def threads_per_block(name, cfg):
    from . import cuda_fused
    name = name.removesuffix(WEIGHTED)
    if name in cuda_fused.KERNEL_NAMES:
        return cfg.fused_threads
    return (cfg.tile // cfg.micro) ** 2 if name in GEMMS else cfg.block


@contextlib.contextmanager
def _target(cc):
    """Let device-function calls compile for ``cc`` without a GPU: numba-cuda asks the
    current device for its compute capability when it compiles a called
    ``@cuda.jit(device=True)`` function, which fails where there is no driver."""
    import types

    from numba.cuda import dispatcher
    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=tuple(cc))
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def compile_ptx(name, dtype, cc, cfg=None):
    """PTX text of kernel ``name`` for ``dtype`` and compute capability ``cc``."""
    from numba import cuda

    from . import cuda as kc
    from . import cuda_fused
    kernel = name.removesuffix(WEIGHTED)
    build = cuda_fused.build_kernels if kernel in cuda_fused.KERNEL_NAMES else kc.build_kernels
    functions = build(dtype, cfg or cuda_config.config)  # fresh device functions per target
    with _target(cc):
        ptx, _ = cuda.compile_ptx(getattr(functions, kernel), signatures(dtype)[name], cc=cc)
    return ptx


@dataclass
class Resources:
    kernel: str
    dtype: str
    arch: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    threads: int

    @property
    def spills(self):
        return self.spill_stores + self.spill_loads

    def occupancy(self, sm=H100):
        """(resident blocks per SM, fraction of the 64 warps) on an H100."""
        warps = -(-self.threads // 32)
        regs_per_warp = -(-self.registers * 32 // sm["reg_alloc_unit"]) * sm["reg_alloc_unit"]
        by_regs = sm["regs_per_sm"] // max(1, regs_per_warp * warps)
        by_smem = sm["smem_per_sm"] // (self.shared_bytes + sm["smem_per_block_reserved"])
        by_warps = sm["max_warps"] // warps
        blocks = min(by_regs, by_smem, by_warps, sm["max_blocks"])
        return blocks, blocks * warps / sm["max_warps"]


def ptxas_path():
    found = shutil.which("ptxas")
    if found:
        return found
    for candidate in sorted(Path("/usr/local").glob("cuda*/bin/ptxas"), reverse=True):
        return str(candidate)
    return None


_INFO = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def assemble(ptx, arch, ptxas=None):
    """Run ``ptxas -arch=<arch> -v`` on the PTX; return its report (stderr) or raise."""
    ptx = re.sub(r"^\.version \d+\.\d+", lambda m: _capped(m.group(0)), ptx, count=1, flags=re.M)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([ptxas or ptxas_path(), f"-arch={arch}", "-v", str(source), "-o",
                                 str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"ptxas failed:\n{result.stderr}")
    return result.stderr + result.stdout


def _capped(line):
    version = line.split()[1]
    if tuple(map(int, version.split("."))) > tuple(map(int, PTXAS_MAX_VERSION.split("."))):
        return f".version {PTXAS_MAX_VERSION}"
    return line


def resources(name, dtype, cc, cfg=None, narrow=False):
    """ptxas resources of kernel ``name``; ``narrow``: the narrow GEMM variant. The fused
    kernel's dynamic shared memory (which ptxas does not see) is counted at its most,
    STATIC_SHARED_LIMIT."""
    from . import cuda_fused
    cfg = cfg or cuda_config.config
    if narrow:
        cfg = cfg.narrow()
    arch = f"sm_{cc[0]}{cc[1]}"
    report = assemble(compile_ptx(name, dtype, cc, cfg), arch)
    stack, stores, loads = (int(v) for v in _INFO.search(report).groups())
    registers = int(_REGS.search(report).group(1))
    smem = _SMEM.search(report)
    dynamic = cuda_config.STATIC_SHARED_LIMIT if name.removesuffix(WEIGHTED) in cuda_fused.KERNEL_NAMES else 0
    return Resources(name + " (narrow)" * narrow, np.dtype(dtype).name, arch, registers,
                     (int(smem.group(1)) if smem else 0) + dynamic,
                     stack, stores, loads, threads_per_block(name, cfg))


def report(ccs=((9, 0), (8, 0)), dtypes=("float32", "float64"), cfg=None):
    """Resources of every kernel for every dtype and compute capability."""
    return [resources(name, dtype, cc, cfg, narrow) for cc in ccs for dtype in dtypes for name, narrow in variants()]


def variants():
    """(kernel name, narrow) of every kernel build: the GEMMs in both variants, the
    kernels with optional sample weights with and without."""
    from . import cuda as kc
    from . import cuda_fused
    return ([(name, False) for name in kc.KERNEL_NAMES] + [(name, True) for name in GEMMS]
            + [(name, False) for name in cuda_fused.KERNEL_NAMES]
            + [(name + WEIGHTED, False) for name in WEIGHTED_KERNELS])


def markdown(rows):
    lines = ["| kernel | dtype | arch | threads/block | registers | smem (B) | stack (B) | spills (B) | "
             "blocks/SM (H100) | occupancy (H100) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        blocks, occupancy = r.occupancy() if r.arch == "sm_90" else ("–", None)
        occupancy = "–" if occupancy is None else f"{occupancy:.0%}"
        lines.append(f"| {r.kernel} | {r.dtype} | {r.arch} | {r.threads} | {r.registers} | {r.shared_bytes} | "
                     f"{r.stack_bytes} | {r.spills} | {blocks} | {occupancy} |")
    return "\n".join(lines)
