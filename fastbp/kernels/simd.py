"""SIMD registers for Numba CPU kernels: a :class:`Vector` type (``LANES`` values of one
dtype held in one LLVM vector, so one ymm register of float32 on AVX2) and the five
operations the small-layer micro-kernels need, each emitted as a single LLVM
instruction by ``numba.extending.intrinsic``: :func:`vzero`, :func:`vsplat`,
:func:`vload`, :func:`vstore` and :func:`vfma` (``llvm.fma``: a fused multiply-add,
one rounding). Written for ``cpu_small``: plain scalar accumulators are neither kept in
registers nor vectorised by LLVM (measured: no FMA, spills), these are.

Vectors live inside one compiled function (they are never arguments), and
:func:`vload`/:func:`vstore` take a row and a column of a 2-D array whose rows are
contiguous: the caller guarantees ``LANES`` columns from ``j`` on exist.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

#: values per vector: 8 float32 fill a 256-bit ymm register (AVX2)
LANES = 8


class Vector(types.Type):
    """``LANES`` values of ``dtype`` in one SIMD register."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vector{LANES}({dtype})")


@register_model(Vector)
class VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, LANES))


def _element_pointer(context, builder, array_type, array, i, j):
    array = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, array, [i, j], wraparound=False)


@intrinsic
def vzero(typingctx, like):
    """A vector of zeros of the dtype of the array ``like``."""
    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(signature.return_type), None)
    return Vector(like.dtype)(like), codegen


@intrinsic
def vsplat(typingctx, value):
    """``value`` in every lane (a broadcast)."""
    def codegen(context, builder, signature, args):
        vector_type = context.get_value_type(signature.return_type)
        lane0 = builder.insert_element(ir.Constant(vector_type, ir.Undefined), args[0],
                                       ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(lane0, ir.Constant(vector_type, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
    return Vector(value)(value), codegen


@intrinsic
def vload(typingctx, array, i, j):
    """``array[i, j:j + LANES]`` (non-negative indices, unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, array, *args)
        vector_type = context.get_value_type(signature.return_type)
        return builder.load(builder.bitcast(pointer, vector_type.as_pointer()), align=array.dtype.bitwidth // 8)
    return Vector(array.dtype)(array, i, j), codegen


@intrinsic
def vstore(typingctx, array, i, j, vector):
    """``array[i, j:j + LANES] = vector`` (non-negative indices, unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, array, *args[:3])
        builder.store(args[3], builder.bitcast(pointer, args[3].type.as_pointer()),
                      align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(array, i, j, vector), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a·b + c lane by lane with one rounding (``llvm.fma``: ``vfmadd`` on x86 with FMA)."""
    def codegen(context, builder, signature, args):
        vector_type = args[0].type
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector_type, [vector_type] * 3),
                                                  f"llvm.fma.v{LANES}f{c.dtype.bitwidth}")
        return builder.call(function, args)
    return c(a, b, c), codegen
