"""A hand-written LLVM instruction for compiled code: reinterpreting an int32's bits as a float32.

numba compiles Python to LLVM IR; an ``@intrinsic`` writes that IR directly, for an operation
that Python cannot express in a way LLVM keeps cheap. tinyllm has two: this one, used by the
vectorised exp of ``kernels/fastmath.py`` to build 2**n from its exponent bits, and ``_pointer``
in :mod:`.address` (an integer address as a pointer).
"""
from llvmlite import ir
from numba.core import types
from numba.core.errors import TypingError
from numba.extending import intrinsic


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits`` (C's ``memcpy`` between an int
    and a float), inside compiled code: one LLVM ``bitcast``, no instruction at all in the machine
    code, so a loop that uses it still vectorises (a view of a scratch array does not). An
    intrinsic exists only in compiled code: ``kernels/fastmath.py`` uses NumPy's view of the same
    bytes under ``NUMBA_DISABLE_JIT=1``."""
    if bits != types.int32:
        raise TypingError(f"float32_from_bits takes an int32, got {bits}")

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen
