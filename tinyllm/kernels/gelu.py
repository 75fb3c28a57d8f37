"""GELU, element-wise, forward and backward: y = x * Phi(x), Phi the standard normal CDF.

``approximate="tanh"`` (GPT-2), with k = sqrt(2/pi), c = 0.044715::

    u  = k (x + c x^3),   t = tanh(u)
    y  = 0.5 x (1 + t)
    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)

``approximate="none"`` (exact)::

    y  = 0.5 x (1 + erf(x / sqrt 2))
    dy/dx = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)

In the tanh form x is clipped to [-10, 10] inside the cubic only: from |x| ~ 7.2 on, tanh(u) is
exactly +-1 in float64 (and float32), so the clip changes no value, but it keeps x^3 from
overflowing (float32 x = 1e15) and 0 * inf from turning dy/dx into nan. So y = x for large
positive x and -0 for large negative x, with dy/dx = 1 and 0.

Backward returns dx = dy * dy/dx. ``*_ref`` is the NumPy spec; :func:`gelu_forward` /
:func:`gelu_backward` take any shape, flatten, and run a numba kernel over chunks in parallel:
per-element float64 math (libm's exp and erf) for float64, and for float32 (what training runs)
float32 paths on the vectorised exp of :mod:`.fastmath`: in the tanh form the forward can hand t
to the backward so that it needs no exp at all; the exact form takes Phi from a fit of erfc.
"""
import math

import numpy as np

from .systems.jit import njit, prange
from .fastmath import exp_f32

__all__ = ["gelu_forward_ref", "gelu_backward_ref", "gelu_forward", "gelu_backward"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_COEF = 0.044715
_CLIP = 10.0
_CHUNK = 4096  # elements per parallel work item
_APPROXIMATIONS = ("tanh", "none")

# NumPy has no erf; the reference (and only the reference) maps math.erf over the array.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _check_approximate(fn, approximate):
    if approximate not in _APPROXIMATIONS:
        raise ValueError(f"{fn}: approximate={approximate!r} is not one of {_APPROXIMATIONS}")


# ----------------------------------------------------------------------------------------------
# NumPy reference


def gelu_forward_ref(x, approximate="tanh", return_tanh=False):
    """x (any shape) -> y (same shape and dtype); with ``return_tanh``, ``(y, t)``: t = tanh(u) in
    the tanh form (for :func:`gelu_backward_ref` to reuse), None in the exact one."""
    _check_approximate("gelu_forward_ref", approximate)
    if approximate == "tanh":
        x_clip = np.clip(x, -_CLIP, _CLIP)
        t = np.tanh(_SQRT_2_OVER_PI * (x_clip + _COEF * x_clip**3))
        y = 0.5 * x * (1.0 + t)
    else:
        t = None
        y = (0.5 * x * (1.0 + _erf(x * _INV_SQRT_2))).astype(x.dtype)
    return (y, t) if return_tanh else y


def gelu_backward_ref(x, dy, approximate="tanh", tanh=None):
    """x, dy (same shape) -> dx = dy * gelu'(x); ``tanh``: the t that the forward returned, or
    None to recompute it (tanh form only)."""
    _check_approximate("gelu_backward_ref", approximate)
    if approximate == "tanh":
        x_clip = np.clip(x, -_CLIP, _CLIP)
        t = np.tanh(_SQRT_2_OVER_PI * (x_clip + _COEF * x_clip**3)) if tanh is None else tanh
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _COEF * x_clip**2)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)
    cdf = 0.5 * (1.0 + _erf(x * _INV_SQRT_2))
    with np.errstate(over="ignore"):  # x^2 = inf for |x| > 1e154, and exp(-inf) = 0 is right
        pdf = np.exp(-0.5 * x.astype(np.float64) ** 2) * _INV_SQRT_2PI
    return (dy * (cdf + x * pdf)).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# numba kernels (per-element math in float64, one function per formula)


@njit
def _tanh(u):
    """tanh(u) = 1 - 2 / (1 + exp(2u)): one exp is cheaper than math.tanh, and the result is
    exactly +-1 for |u| > 19 as tanh's is. Needs |u| < 354 (exp overflow): the clip sees to it."""
    return 1.0 - 2.0 / (1.0 + math.exp(2.0 * u))


@njit
def _gelu_tanh(v):
    v_clip = min(max(v, -_CLIP), _CLIP)
    return 0.5 * v * (1.0 + _tanh(_SQRT_2_OVER_PI * (v_clip + _COEF * v_clip * v_clip * v_clip)))


@njit
def _gelu_tanh_grad(v):
    v_clip = min(max(v, -_CLIP), _CLIP)
    t = _tanh(_SQRT_2_OVER_PI * (v_clip + _COEF * v_clip * v_clip * v_clip))
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _COEF * v_clip * v_clip)
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du_dx


@njit
def _gelu_erf(v):
    return 0.5 * v * (1.0 + math.erf(v * _INV_SQRT_2))


@njit
def _gelu_erf_grad(v):
    return 0.5 * (1.0 + math.erf(v * _INV_SQRT_2)) + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI


@njit(parallel=True)
def _gelu_forward_kernel(x, exact, y):
    """x, y (n,).  for each chunk of _CHUNK elements (parallel): for k in chunk: y[k] = gelu(x[k])"""
    n = x.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for k in range(c * _CHUNK, min((c + 1) * _CHUNK, n)):
            v = np.float64(x[k])
            y[k] = _gelu_erf(v) if exact else _gelu_tanh(v)


@njit(parallel=True)
def _gelu_backward_kernel(x, dy, exact, dx):
    """x, dy, dx (n,).  for each chunk (parallel): for k in chunk: dx[k] = dy[k] * gelu'(x[k])"""
    n = x.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for k in range(c * _CHUNK, min((c + 1) * _CHUNK, n)):
            v = np.float64(x[k])
            dx[k] = dy[k] * (_gelu_erf_grad(v) if exact else _gelu_tanh_grad(v))


# The float32 tanh form, the one training uses, is exp-bound: these compute the same formulas
# as _gelu_tanh / _gelu_tanh_grad above, element by element, with the vectorised float32 exp of
# .fastmath: one pass over the data, which LLVM turns into 8-wide vector code (the float64
# per-element loop above calls libm's exp once per element). Tests hold them to the NumPy
# reference.


@njit
def _tanh_u_f32(v):
    """t = tanh(u) = 1 - 2 / (1 + exp(2u)) for one float32 v, u = k (v + c v^3), with v clipped
    to +-10 and 2u to +-20 (tanh(u) is then already +-1 in float32, and exp never reaches the
    denormal range, where the arithmetic is ~100x slower)."""
    v = min(max(v, np.float32(-_CLIP)), np.float32(_CLIP))
    two_u = np.float32(2.0 * _SQRT_2_OVER_PI) * (v + np.float32(_COEF) * v * v * v)
    e = exp_f32(min(max(two_u, np.float32(-20.0)), np.float32(20.0)))
    return np.float32(1.0) - np.float32(2.0) / (np.float32(1.0) + e)


@njit
def _gelu_tanh_chunk_f32(x, y, t_out):
    """y[k] = 0.5 x[k] (1 + t[k]), t = tanh(u), over a chunk; t_out (same length, or empty)
    receives t. (Each loop runs over range(len) of its own slices: with indices that could be
    negative numba adds a wraparound branch per element and LLVM does not vectorise the loop.)"""
    if t_out.shape[0] == x.shape[0]:
        for k in range(x.shape[0]):
            t = _tanh_u_f32(x[k])
            t_out[k] = t
            y[k] = np.float32(0.5) * x[k] * (np.float32(1.0) + t)
    else:
        for k in range(x.shape[0]):
            y[k] = np.float32(0.5) * x[k] * (np.float32(1.0) + _tanh_u_f32(x[k]))


@njit(parallel=True)
def _gelu_tanh_forward_f32(x, y, t_out):
    """y = 0.5 x (1 + t), t = tanh(u); float32 x, y (n,), in chunks of _CHUNK (parallel).
    t_out (n,) receives t for the backward (pass an empty array to skip it)."""
    n = x.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        start, stop = c * _CHUNK, min((c + 1) * _CHUNK, n)  # (an empty t_out slices to empty)
        _gelu_tanh_chunk_f32(x[start:stop], y[start:stop], t_out[start:stop])


@njit
def _gelu_tanh_grad_f32(v, t):
    """dy/dx = 0.5 (1 + t) + 0.5 v (1 - t^2) k (1 + 3 c v^2) for one float32 v and its t = tanh(u)."""
    v_clip = min(max(v, np.float32(-_CLIP)), np.float32(_CLIP))
    du_dx = np.float32(_SQRT_2_OVER_PI) * (np.float32(1.0) + np.float32(3.0 * _COEF) * v_clip * v_clip)
    return np.float32(0.5) * (np.float32(1.0) + t) + np.float32(0.5) * v * (np.float32(1.0) - t * t) * du_dx


@njit
def _gelu_tanh_grad_chunk_f32(x, dy, t_saved, dx):
    """dx[k] = dy[k] * dy/dx at x[k] over a chunk, t from t_saved if it has the chunk's length,
    else recomputed."""
    if t_saved.shape[0] == x.shape[0]:
        for k in range(x.shape[0]):
            dx[k] = dy[k] * _gelu_tanh_grad_f32(x[k], t_saved[k])
    else:
        for k in range(x.shape[0]):
            dx[k] = dy[k] * _gelu_tanh_grad_f32(x[k], _tanh_u_f32(x[k]))


@njit(parallel=True)
def _gelu_tanh_backward_f32(x, dy, t_saved, dx):
    """dx = dy * dy/dx; float32 (n,) arrays, in chunks of _CHUNK (parallel).
    t is read from t_saved (the forward's) if it holds n values, else recomputed."""
    n = x.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        start, stop = c * _CHUNK, min((c + 1) * _CHUNK, n)  # (an empty t_saved slices to empty)
        _gelu_tanh_grad_chunk_f32(x[start:stop], dy[start:stop], t_saved[start:stop], dx[start:stop])


# The float32 exact form, likewise: Phi(x) = 0.5 erfc(-x / sqrt 2) from a fit of erfc built on
# the same vectorised exp, instead of a call of libm's scalar erf per element, which LLVM cannot
# vectorise.

# erfc(z) ~ t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0, P a degree-9 polynomial: the Chebyshev
# fit of Numerical Recipes (2nd ed., section 6.2, erfcc), fractional error < 1.2e-7 for all z >= 0.
_ERFC_P = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
           0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


@njit
def _normal_cdf_f32(v):
    """Phi(v) for one float32 v: 0.5 erfc(|v| / sqrt 2) for v < 0, 1 - that for v >= 0. The
    left tail keeps its relative precision (no 1 + erf(...) cancelling), down to float32's
    underflow; |v| = inf gives t = 0 and exp(-inf) = 0, so Phi = 0 or 1 exactly."""
    z = abs(v) * np.float32(_INV_SQRT_2)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * z)
    p = np.float32(_ERFC_P[9])
    p = p * t + np.float32(_ERFC_P[8])
    p = p * t + np.float32(_ERFC_P[7])
    p = p * t + np.float32(_ERFC_P[6])
    p = p * t + np.float32(_ERFC_P[5])
    p = p * t + np.float32(_ERFC_P[4])
    p = p * t + np.float32(_ERFC_P[3])
    p = p * t + np.float32(_ERFC_P[2])
    p = p * t + np.float32(_ERFC_P[1])
    p = p * t + np.float32(_ERFC_P[0])
    half_erfc = np.float32(0.5) * t * exp_f32(p - z * z)
    return half_erfc if v < 0 else np.float32(1.0) - half_erfc


@njit
def _gelu_erf_chunk_f32(x, y):
    """y[k] = x[k] Phi(x[k]) over a chunk (slices, as above)."""
    for k in range(x.shape[0]):
        y[k] = x[k] * _normal_cdf_f32(x[k])


@njit(parallel=True)
def _gelu_erf_forward_f32(x, y):
    """y = x Phi(x); float32 x, y (n,), in chunks of _CHUNK (parallel)."""
    n = x.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        start, stop = c * _CHUNK, min((c + 1) * _CHUNK, n)
        _gelu_erf_chunk_f32(x[start:stop], y[start:stop])


@njit
def _gelu_erf_grad_chunk_f32(x, dy, dx):
    """dx[k] = dy[k] (Phi(x) + x phi(x)) over a chunk, phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    for k in range(x.shape[0]):
        v = x[k]
        pdf = np.float32(_INV_SQRT_2PI) * exp_f32(np.float32(-0.5) * v * v)
        dx[k] = dy[k] * (_normal_cdf_f32(v) + v * pdf)


@njit(parallel=True)
def _gelu_erf_backward_f32(x, dy, dx):
    """dx = dy * (Phi(x) + x phi(x)); float32 (n,) arrays, in chunks of _CHUNK (parallel)."""
    n = x.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        start, stop = c * _CHUNK, min((c + 1) * _CHUNK, n)
        _gelu_erf_grad_chunk_f32(x[start:stop], dy[start:stop], dx[start:stop])


# ----------------------------------------------------------------------------------------------
# public wrappers


def _check_float_array(fn, name, a):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise ValueError(f"{fn}: {name} has dtype {a.dtype}, expected float32 or float64")


_NO_TANH = np.empty(0, np.float32)


def gelu_forward(x, approximate="tanh", return_tanh=False):
    """Numba GELU of a float32/float64 array of any shape; same contract as :func:`gelu_forward_ref`.

    With ``return_tanh=True`` it returns ``(y, t)``: for float32 and the tanh form, t = tanh(u)
    as computed here, which :func:`gelu_backward` can reuse instead of recomputing (the exp is
    most of the backward's time); otherwise t is None.
    """
    fn = "gelu_forward"
    _check_approximate(fn, approximate)
    _check_float_array(fn, "x", x)
    y = np.empty(x.shape, dtype=x.dtype)  # C-contiguous, so reshape(-1) is a view
    flat = np.ascontiguousarray(x).reshape(-1)
    t = None
    if x.dtype == np.float32 and approximate == "tanh":
        t = np.empty(x.shape, np.float32) if return_tanh else None
        t_flat = _NO_TANH if t is None else t.reshape(-1)
        if flat.shape[0] <= _CHUNK:  # one chunk (a token while generating): on this thread, no launch
            _gelu_tanh_chunk_f32(flat, y.reshape(-1), t_flat)
        else:
            _gelu_tanh_forward_f32(flat, y.reshape(-1), t_flat)
    elif x.dtype == np.float32 and flat.shape[0] <= _CHUNK:
        _gelu_erf_chunk_f32(flat, y.reshape(-1))
    elif x.dtype == np.float32:
        _gelu_erf_forward_f32(flat, y.reshape(-1))
    else:
        _gelu_forward_kernel(flat, approximate == "none", y.reshape(-1))
    return (y, t) if return_tanh else y


def gelu_backward(x, dy, approximate="tanh", tanh=None):
    """Numba GELU backward, dx = dy * gelu'(x); same contract as :func:`gelu_backward_ref`.

    ``tanh``: the t that ``gelu_forward(x, return_tanh=True)`` returned, or None to recompute it.
    """
    fn = "gelu_backward"
    _check_approximate(fn, approximate)
    _check_float_array(fn, "x", x)
    _check_float_array(fn, "dy", dy)
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(f"{fn}: dy is {dy.dtype} {dy.shape} but x is {x.dtype} {x.shape}; they must match")
    dx = np.empty(x.shape, dtype=x.dtype)
    x_flat, dy_flat = np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(dy).reshape(-1)
    if x.dtype == np.float32 and approximate == "tanh":
        if tanh is not None and (tanh.shape != x.shape or tanh.dtype != np.float32):
            raise ValueError(f"{fn}: tanh is {tanh.dtype} {tanh.shape} but x is {x.dtype} {x.shape}")
        saved = _NO_TANH if tanh is None else np.ascontiguousarray(tanh).reshape(-1)
        _gelu_tanh_backward_f32(x_flat, dy_flat, saved, dx.reshape(-1))
    elif x.dtype == np.float32:
        _gelu_erf_backward_f32(x_flat, dy_flat, dx.reshape(-1))
    else:
        _gelu_backward_kernel(x_flat, dy_flat, approximate == "none", dx.reshape(-1))
    return dx
