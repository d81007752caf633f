"""Launch geometry of the CUDA kernels: the ONE place tile and block sizes live.

``kernels.cuda`` builds its kernels from the current :data:`config` (shared-memory
arrays need compile-time shapes, so the sizes are baked into each build; builds are
cached per ``(config, dtype)``). Tests shrink the sizes so that Numba's CUDA
simulator, which runs one Python thread per CUDA thread, stays fast::

    monkeypatch.setattr(cuda_config, "config", cuda_config.CudaConfig(tile=4, micro=2, depth=3, block=8))
"""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CudaConfig:
    #: edge of the square output tile of one GEMM block (forward_layer, backprop_delta,
    #: weight_gradient)
    tile: int = 64
    #: register blocking: each GEMM thread computes micro × micro outputs, so a GEMM
    #: block has (tile / micro)² threads
    micro: int = 4
    #: reduction step of the GEMMs: shared tiles of tile × depth and depth × tile
    depth: int = 16
    #: a GEMM whose output has fewer tile × tile blocks than this runs the narrow
    #: variant instead (tile / micro edge, one output per thread, the same block shape):
    #: 4× the blocks, so narrow layers and small batches still fill the 132 SMs
    min_blocks: int = 264
    #: threads per block of the one-dimensional kernels (rows, parameters, gathers);
    #: a power of two (tree reductions in shared memory).
    block: int = 256
    #: blocks of the grid-stride reduction for the global gradient norm and the L1/L2
    #: penalty (2 per SM on a 132-SM H100); its partial sums are finished by one block.
    reduce_blocks: int = 264

    def __post_init__(self):
        for name in ("tile", "micro", "depth", "min_blocks", "block", "reduce_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CudaConfig.{name} must be a positive int, got {value!r}")
        if self.block & (self.block - 1):
            raise ValueError(f"CudaConfig.block must be a power of two, got {self.block}")
        if self.tile % self.micro:
            raise ValueError(f"CudaConfig.tile={self.tile} is not a multiple of micro={self.micro}")
        if (self.tile // self.micro) ** 2 > 1024:
            raise ValueError(f"CudaConfig tile={self.tile}, micro={self.micro} gives more than 1024 threads "
                             "per GEMM block")

    def baked(self):
        """This config with the launch-time choices at fixed values: the key of a
        kernel build (only tile, micro, depth and block are compiled in)."""
        return replace(self, min_blocks=1, reduce_blocks=1)

    def narrow(self):
        """The geometry of the narrow GEMM variant: same threads, one output each."""
        return replace(self, tile=self.tile // self.micro, micro=1)


#: the configuration new kernel builds use
config = CudaConfig()
