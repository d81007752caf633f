"""Launch geometry of the CUDA kernels: the ONE place tile and block sizes live.

``kernels.cuda`` builds its kernels from the current :data:`config` (shared-memory
arrays need compile-time shapes, so the sizes are baked into each build; builds are
cached per ``(config, dtype)``). Tests shrink the sizes so that Numba's CUDA
simulator, which runs one Python thread per CUDA thread, stays fast::

    monkeypatch.setattr(cuda_config, "config", cuda_config.CudaConfig(tile=4, block=8))
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class CudaConfig:
    #: edge of the square GEMM tiles: tile × tile threads per block, each thread one
    #: output element; two tile × (tile + 1) shared-memory tiles per block.
    tile: int = 16
    #: threads per block of the one-dimensional kernels (rows, parameters, gathers);
    #: a power of two (tree reductions in shared memory).
    block: int = 256
    #: blocks of the grid-stride reduction for the global gradient norm and the L1/L2
    #: penalty (2 per SM on a 132-SM H100); its partial sums are finished by one block.
    reduce_blocks: int = 264

    def __post_init__(self):
        for name in ("tile", "block", "reduce_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CudaConfig.{name} must be a positive int, got {value!r}")
        if self.block & (self.block - 1):
            raise ValueError(f"CudaConfig.block must be a power of two, got {self.block}")
        if self.tile * self.tile > 1024:
            raise ValueError(f"CudaConfig.tile={self.tile} gives more than 1024 threads per block")


#: the configuration new kernel builds use
config = CudaConfig()
