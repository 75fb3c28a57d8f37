"""A vectorisable float32 exp, shared by the kernels whose time goes into exp (attention, GELU,
cross-entropy).

numba without Intel SVML calls the scalar libm ``expf`` once per element, a function call LLVM
cannot vectorise; a loop over :func:`exp_f32` is plain arithmetic, which LLVM turns into 8-wide
vector code. It is used only for float32: the float64 paths (finite-difference checks) keep
libm's exp.
"""
import numba
import numpy as np

from .systems import intrinsics
from .systems.jit import njit

# Constants of the exp below (Cody-Waite split of ln 2; 1.5 * 2**23 rounds to nearest).
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_ROUND_MAGIC = 12582912.0


def _float32_from_bits_python(bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits`` (C's ``memcpy`` between an
    int and a float): NumPy's way, a view of the same four bytes."""
    return np.array(bits, np.int32).view(np.float32)[()]


# Compiled kernels do the same with one LLVM bitcast (systems/intrinsics.py), which exists only
# inside compiled code; NUMBA_DISABLE_JIT=1 runs the kernels as Python, with NumPy's view.
float32_from_bits = _float32_from_bits_python if numba.config.DISABLE_JIT else intrinsics.float32_from_bits


@njit(fastmath={"contract"})
def exp_f32(x):
    """exp(x) in float32 arithmetic, for one float32 x; inside a loop LLVM vectorises it.

    Method: exp(x) = 2**n * exp(r) with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2];
    exp(r) by its degree-7 Taylor polynomial (relative error < 1e-7), 2**n built directly in
    the exponent bits. ``fastmath={"contract"}`` lets LLVM fuse each ``p * r + c`` of the
    polynomial into one fused multiply-add (one instruction and one rounding, not two). x is clamped
    to [-88, 88]: below -88 the result is 0 (the true value, < 1e-38, is a denormal no softmax
    can see; n = -127 gives the bits of 0.0), so exp(-inf) = 0 as it should; a NaN stays NaN,
    so a diverging run shows NaN, not a quietly finite loss.
    """
    xc = min(max(x, np.float32(-88.0)), np.float32(88.0))
    n = (xc * np.float32(_LOG2E) + np.float32(_ROUND_MAGIC)) - np.float32(_ROUND_MAGIC)
    r = xc - n * np.float32(_LN2_HI) - n * np.float32(_LN2_LO)
    p = np.float32(1 / 5040)
    p = p * r + np.float32(1 / 720)
    p = p * r + np.float32(1 / 120)
    p = p * r + np.float32(1 / 24)
    p = p * r + np.float32(1 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1)
    p = p * r + np.float32(1)
    e = p * float32_from_bits(np.int32((np.int32(n) + 127) << 23))  # 2**n: exponent bits n + 127
    return e if x == x else x  # NaN in, NaN out (the clamp alone would turn it into exp(-88) = 0)


@njit
def exp_f32_inplace(x, count):
    """x[j] = exp_f32(x[j]) for j < count: one vectorised pass over a float32 array."""
    for j in range(count):
        x[j] = exp_f32(x[j])
