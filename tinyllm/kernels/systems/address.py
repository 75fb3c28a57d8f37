"""Many arrays handed to one kernel by their addresses: the gradients of all parameters.

A training step ends with the same small work on every parameter's gradient: its squared norm
for clipping, a scaling, the AdamW update. One kernel call per gradient costs a Python call and
a numba dispatch each (52 on a small GPT), and copying them all into one flat buffer first costs
a pass over memory. Instead, :func:`gather` lists the arrays' data addresses and where each
one's elements start in a virtual concatenation of them all, and :func:`array_at` turns an
address back into an array inside compiled code.

Safety rests on the Python side: :func:`gather` accepts only C-contiguous, writeable ndarrays of
one float dtype, and its caller keeps the arrays referenced while the kernel runs, so every
address stays valid. Under ``NUMBA_DISABLE_JIT=1`` there is no compiled code to hand an address
to, and :func:`gather` returns None: callers then take their plain path.
"""
import numba
import numpy as np
from numba.core import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .jit import njit


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to ``like``'s element type (one LLVM ``inttoptr``)."""
    if address != types.int64 or not isinstance(like, types.Array):
        raise TypingError(f"_pointer takes an int64 address and an array, got {address} and {like}")
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(types.int64, like), codegen


@njit
def array_at(address, size, like):
    """The 1-D array of ``size`` elements of like's dtype that starts at ``address``."""
    return numba.carray(_pointer(address, like), size)


def gather(arrays, dtype):
    """``(addresses, offsets)`` of ``arrays`` for the kernels: int64 (n,) data addresses and int64
    (n + 1,) offsets, array k holding elements offsets[k] .. offsets[k + 1] of the virtual
    concatenation. None if any array is not a C-contiguous, writeable ndarray of ``dtype`` that
    owns its memory (not a view: then no two can overlap, and kernels may write them in
    parallel), if one appears twice, or where no compiled code runs (``NUMBA_DISABLE_JIT``).
    Gradients that backward() delivers always qualify."""
    if numba.config.DISABLE_JIT or len({id(a) for a in arrays}) != len(arrays):
        return None
    for a in arrays:
        if (type(a) is not np.ndarray or a.dtype != dtype or a.base is not None
                or not (a.flags.c_contiguous and a.flags.writeable)):
            return None
    addresses = np.array([a.ctypes.data for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    return addresses, offsets
