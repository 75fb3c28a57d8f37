"""``a + b`` for two arrays of the same shape, on numba's threads.

A GPT's residual stream adds two (B, T, C) arrays after every attention and every MLP, and
backward sums the gradients that reach the same tensor from two places (the residual stream
again). NumPy's ``a + b`` runs on one core; here the two halves of the array go to the two
cores. The reference is NumPy's own ``a + b``, element for element the same float additions,
so the results are identical; it is also what runs for anything but two C-contiguous float
arrays of one shape and dtype, and for arrays too small to be worth a parallel launch.
"""
import numpy as np

from .systems.jit import njit, prange

__all__ = ["add_ref", "add"]

SMALL = 1 << 15  # elements; below this a parallel launch costs more than it saves


def add_ref(a, b):
    """``a + b`` (NumPy broadcasting)."""
    return a + b


@njit(parallel=True)
def _add_kernel(a, b, out):
    """out[i] = a[i] + b[i] for all i (parallel).   a, b, out (n,)"""
    for i in prange(a.shape[0]):
        out[i] = a[i] + b[i]


def add(a, b):
    """``a + b`` as a new array: on numba's threads for two C-contiguous float32/float64 arrays
    of one shape and dtype with at least SMALL elements, NumPy's ``a + b`` otherwise."""
    if (a.shape != b.shape or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64) or a.size < SMALL
            or not (a.flags.c_contiguous and b.flags.c_contiguous)):
        return a + b
    out = np.empty(a.shape, a.dtype)
    _add_kernel(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out
