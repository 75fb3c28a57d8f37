"""Layer normalisation over the last axis of a 2-D array ``x`` (N, C), forward and backward.

Callers flatten leading axes: ``(B, T, C) -> (B*T, C)``. Per row x (C,)::

    mean = sum_j x_j / C
    var  = sum_j (x_j - mean)^2 / C                  (biased, as PyTorch)
    rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd
    y    = xhat * weight + bias

Backward, with g = dy * weight (per element) and means taken along the row::

    dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dweight = sum_rows dy * xhat
    dbias   = sum_rows dy

(dx follows from d xhat_j / d x_k = rstd * (delta_jk - 1/C - xhat_j xhat_k / C).)

``*_ref`` is the NumPy spec; :func:`layernorm_forward` / :func:`layernorm_backward` validate and
call the fused numba kernels.
"""
import math

import numpy as np

from .systems.jit import njit, prange

__all__ = [
    "layernorm_forward_ref", "layernorm_backward_ref", "layernorm_forward", "layernorm_backward",
]

# Backward sums dweight/dbias over fixed blocks of this many rows, one partial row per block, so
# no two threads add into the same memory and the result does not depend on the thread count.
_ROWS_PER_BLOCK = 32
# Forward inputs with fewer elements run on the calling thread (the same row code, the same results).
SERIAL_ELEMENTS = 1 << 14


# ----------------------------------------------------------------------------------------------
# NumPy reference


def layernorm_forward_ref(x, weight, bias, eps=1e-5):
    """x (N, C), weight (C,), bias (C,) or None -> y (N, C), mean (N,), rstd (N,). Two passes."""
    mean = x.mean(axis=1)                                   # (N,)
    centred = x - mean[:, None]                             # (N, C)
    rstd = 1.0 / np.sqrt((centred * centred).mean(axis=1) + eps)  # (N,)
    y = centred * rstd[:, None] * weight
    if bias is not None:
        y = y + bias
    return y, mean, rstd


def layernorm_backward_ref(dy, x, weight, mean, rstd):
    """dy, x (N, C), weight (C,), mean, rstd (N,) -> dx (N, C), dweight (C,), dbias (C,)."""
    xhat = (x - mean[:, None]) * rstd[:, None]              # (N, C)
    g = dy * weight                                         # (N, C)
    g_mean = g.mean(axis=1, keepdims=True)                  # (N, 1)
    gxhat_mean = (g * xhat).mean(axis=1, keepdims=True)     # (N, 1)
    dx = rstd[:, None] * (g - g_mean - xhat * gxhat_mean)
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


# ----------------------------------------------------------------------------------------------
# numba kernels


# The row sums below run with fastmath "reassoc": it lets LLVM keep several partial sums in the
# lanes of a vector register and add them up at the end, instead of one float64 addition after
# another (each waiting for the one before). The sums stay float64; only the order of their
# additions changes (and stays fixed: same input, same bits). Only these helpers get the flag,
# so the element-wise formulas around them keep their exact order of operations.


@njit(fastmath={"reassoc"})
def _shifted_sums(x, i, shift):
    """(sum_j d, sum_j d^2) with d = x[i, j] - shift, in float64."""
    s1 = 0.0
    s2 = 0.0
    for j in range(x.shape[1]):
        d = x[i, j] - shift
        s1 += d
        s2 += d * d
    return s1, s2


@njit(fastmath={"reassoc"})
def _backward_row_sums(dy, x, weight, i, m, r, dweight_block, dbias_block):
    """(sum_j g, sum_j g * xhat) for row i in float64, with g = dy * weight and xhat = (x - m) r;
    adds the row's dy * xhat and dy into the block's partial dweight / dbias rows."""
    g_sum = 0.0
    gxhat_sum = 0.0
    for j in range(x.shape[1]):
        xhat = (x[i, j] - m) * r
        g = dy[i, j] * np.float64(weight[j])
        g_sum += g
        gxhat_sum += g * xhat
        dweight_block[j] += dy[i, j] * xhat
        dbias_block[j] += dy[i, j]
    return g_sum, gxhat_sum


@njit
def _layernorm_row(x, i, weight, bias, eps, y, mean, rstd):
    """Row i:  one pass: s1, s2 = sum(x - shift), sum((x - shift)^2)
               one pass: y[i, j] = (x - mean) * rstd * weight[j] + bias[j]

    Sums are float64 and shifted by the row's first element: for a row like 1e4 + noise the
    plain sum of squares would cancel catastrophically (var = E[x^2] - E[x]^2), the shifted one
    does not, and x - shift is exact when x and shift are within a factor 2 of each other.
    """
    n_cols = x.shape[1]
    shift = np.float64(x[i, 0])
    s1, s2 = _shifted_sums(x, i, shift)
    shifted_mean = s1 / n_cols
    var = max(s2 / n_cols - shifted_mean * shifted_mean, 0.0)  # rounding can give -tiny
    r = 1.0 / math.sqrt(var + eps)
    mean[i] = shift + shifted_mean
    rstd[i] = r
    for j in range(n_cols):
        y[i, j] = ((x[i, j] - shift) - shifted_mean) * r * weight[j] + bias[j]


@njit(parallel=True)
def _layernorm_forward_kernel(x, weight, bias, eps, y, mean, rstd):
    """_layernorm_row for each row i (parallel)."""
    for i in prange(x.shape[0]):
        # prange's index is unsigned: as int64 the serial kernel's call reuses this compilation
        _layernorm_row(x, np.int64(i), weight, bias, eps, y, mean, rstd)


@njit
def _layernorm_forward_serial(x, weight, bias, eps, y, mean, rstd):
    """The same rows on the calling thread (few rows: generating a token)."""
    for i in range(x.shape[0]):
        _layernorm_row(x, i, weight, bias, eps, y, mean, rstd)


@njit(parallel=True)
def _layernorm_backward_kernel(dy, x, weight, mean, rstd, dx, dweight, dbias):
    """for each block b of _ROWS_PER_BLOCK rows (parallel):
         for each row i in b:  pass 1: mean(g), mean(g * xhat); dweight_blocks[b] += dy * xhat,
                                       dbias_blocks[b] += dy
                               pass 2: dx[i, j] = rstd * (g - mean(g) - xhat * mean(g * xhat))
    then dweight, dbias = the float64 block sums summed over blocks (in a fixed order).
    """
    n_rows, n_cols = x.shape
    n_blocks = (n_rows + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
    dweight_blocks = np.zeros((n_blocks, n_cols))  # float64 partial sums, one row per block
    dbias_blocks = np.zeros((n_blocks, n_cols))
    for b in prange(n_blocks):
        dweight_block, dbias_block = dweight_blocks[b], dbias_blocks[b]
        for i in range(b * _ROWS_PER_BLOCK, min((b + 1) * _ROWS_PER_BLOCK, n_rows)):
            m = np.float64(mean[i])
            r = np.float64(rstd[i])
            g_sum, gxhat_sum = _backward_row_sums(dy, x, weight, i, m, r, dweight_block, dbias_block)
            g_mean = g_sum / n_cols
            gxhat_mean = gxhat_sum / n_cols
            for j in range(n_cols):
                xhat = (x[i, j] - m) * r
                g = dy[i, j] * np.float64(weight[j])
                dx[i, j] = r * (g - g_mean - xhat * gxhat_mean)
    for j in range(n_cols):
        w_total = 0.0
        b_total = 0.0
        for b in range(n_blocks):
            w_total += dweight_blocks[b, j]
            b_total += dbias_blocks[b, j]
        dweight[j] = w_total
        dbias[j] = b_total


# ----------------------------------------------------------------------------------------------
# public wrappers


def _check_array(fn, name, a, shape, dtype):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
    if a.shape != shape:
        raise ValueError(f"{fn}: {name} has shape {a.shape}, expected {shape}")
    if a.dtype != dtype:
        raise ValueError(f"{fn}: {name} has dtype {a.dtype}, expected {dtype} (the dtype of x)")


def _check_x(fn, x):
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{fn}: x must be a 2-D array (N, C), got {shape}; flatten leading axes first")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{fn}: x has dtype {x.dtype}, expected float32 or float64")
    if x.shape[1] == 0:
        raise ValueError(f"{fn}: x has shape {x.shape}: cannot normalise rows of 0 elements")


def layernorm_forward(x, weight, bias, eps=1e-5):
    """Fused numba LayerNorm forward; same contract as :func:`layernorm_forward_ref`.

    x (N, C) float32/float64; weight (C,) and bias (C,) or None of x's dtype; eps >= 0.
    Returns y (N, C), mean (N,), rstd (N,), all of x's dtype.
    """
    fn = "layernorm_forward"
    _check_x(fn, x)
    n_rows, n_cols = x.shape
    _check_array(fn, "weight", weight, (n_cols,), x.dtype)
    if bias is not None:
        _check_array(fn, "bias", bias, (n_cols,), x.dtype)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"{fn}: eps must be finite and >= 0, got {eps}")
    bias = np.zeros(n_cols, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
    y = np.empty((n_rows, n_cols), dtype=x.dtype)
    mean = np.empty(n_rows, dtype=x.dtype)
    rstd = np.empty(n_rows, dtype=x.dtype)
    # a few rows (one token per sequence while generating) on this thread: a parallel launch
    # would cost more than the rows do, far more on a machine whose cores are busy
    kernel = _layernorm_forward_serial if x.size < SERIAL_ELEMENTS else _layernorm_forward_kernel
    kernel(np.ascontiguousarray(x), np.ascontiguousarray(weight), bias, float(eps), y, mean, rstd)
    return y, mean, rstd


def layernorm_backward(dy, x, weight, mean, rstd):
    """Fused numba LayerNorm backward; same contract as :func:`layernorm_backward_ref`.

    dy, x (N, C); weight (C,); mean, rstd (N,) from the forward; all of one float dtype.
    Returns dx (N, C), dweight (C,), dbias (C,) of that dtype.
    """
    fn = "layernorm_backward"
    _check_x(fn, x)
    n_rows, n_cols = x.shape
    _check_array(fn, "dy", dy, x.shape, x.dtype)
    _check_array(fn, "weight", weight, (n_cols,), x.dtype)
    _check_array(fn, "mean", mean, (n_rows,), x.dtype)
    _check_array(fn, "rstd", rstd, (n_rows,), x.dtype)
    dx = np.empty((n_rows, n_cols), dtype=x.dtype)
    dweight = np.empty(n_cols, dtype=x.dtype)
    dbias = np.empty(n_cols, dtype=x.dtype)
    _layernorm_backward_kernel(
        np.ascontiguousarray(dy), np.ascontiguousarray(x), np.ascontiguousarray(weight),
        np.ascontiguousarray(mean), np.ascontiguousarray(rstd), dx, dweight, dbias,
    )
    return dx, dweight, dbias
