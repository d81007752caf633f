"""Launch geometry of the CUDA kernels: the ONE place tile and block sizes live.

``kernels.cuda`` builds its kernels from the current :data:`config` (shared-memory
arrays need compile-time shapes, so the sizes are baked into each build; builds are
cached per ``(config, dtype)``). Tests shrink the sizes so that Numba's CUDA
simulator, which runs one Python thread per CUDA thread, stays fast::

    monkeypatch.setattr(cuda_config, "config", cuda_config.CudaConfig(tile=4, micro=2, depth=3, block=8,
                                                                      sms=2, split_rows=4))
"""

import os
from dataclasses import dataclass, field, replace

#: the static shared memory one CUDA block may declare (more needs dynamic shared memory)
STATIC_SHARED_LIMIT = 48 * 1024


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
    #: which GEMM variant runs: "auto" picks, per launch, the register-blocked ("wide")
    #: or the one-output-per-thread ("narrow": tile / micro edge, same block shape)
    #: kernel by estimated waves × cost (:func:`kernels.cuda.gemm`); "wide" / "narrow"
    #: force one (tests, the hardware check)
    gemm: str = "auto"
    #: streaming multiprocessors of the target GPU (H100 SXM: 132), for the wave estimate
    sms: int = 132
    #: split-K of weight_gradient: the batch is cut into at most max_splits slices of at
    #: least split_rows rows, each reduced by its own blocks into its own partial
    #: gradient, summed by the update, so a small layer still fills the GPU on a long batch
    split_rows: int = 256
    max_splits: int = 64
    #: threads per block of the one-dimensional kernels (rows, parameters, gathers);
    #: a power of two (tree reductions in shared memory).
    block: int = 256
    #: blocks of the grid-stride reduction for the global gradient norm and the L1/L2
    #: penalty (2 per SM on a 132-SM H100); its partial sums are finished by one block.
    reduce_blocks: int = 264
    #: features per block of the batch-normalization column kernels (bn_forward,
    #: bn_backward): a block is bn_columns × (block / bn_columns) threads, the first
    #: dimension along the features (coalesced), the second walking the batch rows; a
    #: power of two ≤ block
    bn_columns: int = 32
    #: the fully fused training step (``kernels/cuda_fused.py``) for networks whose every
    #: width is ≤ fused_max_width: "auto" runs it wherever it applies, "always" requires
    #: it (a fit it cannot run is refused), "never" runs the per-layer kernels; the
    #: environment variable FASTBP_CUDA_FUSED sets the default (tests, the hardware check)
    fused: str = field(default_factory=lambda: os.environ.get("FASTBP_CUDA_FUSED", "auto"))
    fused_max_width: int = 128
    #: rows of a fused block's tile of samples, at most (fewer where the activations of
    #: every layer would exceed STATIC_SHARED_LIMIT); a multiple of fused_micro
    fused_rows: int = 32
    #: each fused thread computes fused_micro × fused_micro outputs per product
    fused_micro: int = 4
    fused_threads: int = 128
    #: fused blocks per step, at most (each loops over tiles and owns one slice of the
    #: weight-gradient partials that the update sums): 2 per SM on an H100
    fused_blocks: int = 264

    def __post_init__(self):
        for name in ("tile", "micro", "depth", "block", "reduce_blocks", "sms", "split_rows", "max_splits",
                     "bn_columns", "fused_max_width", "fused_rows", "fused_micro", "fused_threads", "fused_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CudaConfig.{name} must be a positive int, got {value!r}")
        if self.fused not in ("auto", "always", "never"):
            raise ValueError(f"CudaConfig.fused (or FASTBP_CUDA_FUSED) must be 'auto', 'always' or 'never', "
                             f"got {self.fused!r}")
        if self.fused_rows % self.fused_micro:
            raise ValueError(f"CudaConfig.fused_rows={self.fused_rows} is not a multiple of "
                             f"fused_micro={self.fused_micro}")
        if self.gemm not in ("auto", "wide", "narrow"):
            raise ValueError(f"CudaConfig.gemm must be 'auto', 'wide' or 'narrow', got {self.gemm!r}")
        if self.block & (self.block - 1) or self.block > 1024:
            raise ValueError(f"CudaConfig.block must be a power of two ≤ 1024, got {self.block}")
        if self.bn_columns & (self.bn_columns - 1) or self.bn_columns > self.block:
            raise ValueError(f"CudaConfig.bn_columns must be a power of two ≤ block={self.block}, "
                             f"got {self.bn_columns}")
        if self.tile % self.micro:
            raise ValueError(f"CudaConfig.tile={self.tile} is not a multiple of micro={self.micro}")
        if (self.tile // self.micro) ** 2 > 1024:
            raise ValueError(f"CudaConfig tile={self.tile}, micro={self.micro} gives more than 1024 threads "
                             "per GEMM block")
        if self.gemm_shared_bytes(8) > STATIC_SHARED_LIMIT:
            raise ValueError(f"CudaConfig tile={self.tile}, depth={self.depth} needs "
                             f"{self.gemm_shared_bytes(8)} B of static shared memory per GEMM block in "
                             f"float64; CUDA allows {STATIC_SHARED_LIMIT} B")

    def gemm_shared_bytes(self, itemsize):
        """Static shared memory of one GEMM block: the padded tile × depth and
        depth × tile operand tiles."""
        return (self.tile * (self.depth + 1) + self.depth * (self.tile + 1)) * itemsize

    def baked(self):
        """This config with the launch-time choices at fixed values: the key of a
        kernel build (only tile, micro, depth, block, bn_columns, fused_micro and
        fused_threads are compiled in)."""
        return replace(self, gemm="auto", sms=1, reduce_blocks=1, split_rows=1, max_splits=1, fused="auto",
                       fused_max_width=1, fused_rows=self.fused_micro, fused_blocks=1)

    def narrow(self):
        """The geometry of the narrow GEMM variant: same threads, one output each."""
        return replace(self, tile=self.tile // self.micro, micro=1)


#: the configuration new kernel builds use
config = CudaConfig()
