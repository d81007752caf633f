"""SIMD registers for Numba CPU kernels: a :class:`Vector` type (``LANES`` values of one
dtype held in one LLVM vector, so one ymm register of float32 on AVX2) and the five
operations the small-layer micro-kernels need, each emitted as a single LLVM
instruction by ``numba.extending.intrinsic``: :func:`vzero`, :func:`vsplat`,
:func:`vload`, :func:`vstore` and :func:`vfma` (``llvm.fma``: a fused multiply-add,
one rounding). Written for ``cpu_small``: plain scalar accumulators are neither kept in
registers nor vectorised by LLVM (measured: no FMA, spills), these are.

:func:`exp_nonpositive` is an exp without a libm call (so that a loop over it
vectorises), for the split path's softmax (``cpu_split.softmax_cross_entropy``).

Vectors live inside one compiled function (they are never arguments), and
:func:`vload`/:func:`vstore` take a row and a column of a 2-D array whose rows are
contiguous: the caller guarantees ``LANES`` columns from ``j`` on exist.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit
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


@intrinsic
def float64_from_bits(typingctx, bits):
    """The float64 whose IEEE-754 bits are the int64 ``bits`` (a bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_LOG2E = 1.4426950408889634
#: ln 2 in two parts (Cody-Waite): k·_LN2_HI is exact for the |k| <= 1076 used here
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
#: 1/n! for n = 0..13: the Taylor polynomial of exp on |r| <= ln 2 / 2 (remainder < 2e-16 relative)
_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(14))


@njit
def exp_nonpositive(x):
    """exp(x) for float64 x <= 0 within ~1 ulp of libm's (NaN propagates, -inf gives 0),
    in plain arithmetic so that a loop over it vectorises: x = k ln 2 + r, exp(r) by
    Horner, 2^k as two exact powers of two from their exponent bits (subnormal results
    included; below -745.5 the result is 0)."""
    if x < -745.5:
        x = -745.5
    k = np.rint(x * _LOG2E)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    c = _TAYLOR
    p = ((((((((((((c[13] * r + c[12]) * r + c[11]) * r + c[10]) * r + c[9]) * r + c[8]) * r + c[7]) * r + c[6])
                * r + c[5]) * r + c[4]) * r + c[3]) * r + c[2]) * r + c[1]) * r + c[0]
    exponent = np.int64(k if k == k else 0.0)  # x NaN: p is NaN whatever the exponent
    half = exponent >> 1
    return p * float64_from_bits((half + 1023) << 52) * float64_from_bits((exponent - half + 1023) << 52)
