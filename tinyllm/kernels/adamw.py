"""One AdamW update of a parameter and its two moment estimates, in place (``torch.optim.AdamW``,
without amsgrad). ``step`` is the 1-based count of this update. Element-wise::

    param      = param * (1 - lr * weight_decay)              (decoupled weight decay)
    exp_avg    = beta1 * exp_avg    + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad^2
    bias_correction1 = 1 - beta1^step
    bias_correction2 = 1 - beta2^step
    denom      = sqrt(exp_avg_sq) / sqrt(bias_correction2) + eps
    param      = param - (lr / bias_correction1) * exp_avg / denom

``adamw_step_ref`` is the NumPy spec; :func:`adamw_step` does the same in one fused numba pass.
"""
import math

import numpy as np

from ._jit import njit, prange

__all__ = ["adamw_step_ref", "adamw_step", "sum_of_squares_ref", "sum_of_squares"]

_CHUNK = 16384  # elements per parallel work item


# ----------------------------------------------------------------------------------------------
# NumPy reference


def adamw_step_ref(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """Update param, exp_avg, exp_avg_sq (same shape as grad) in place. Returns None."""
    param *= 1.0 - lr * weight_decay
    exp_avg *= beta1
    exp_avg += (1.0 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1.0 - beta2) * grad * grad
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = np.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + eps
    param -= (lr / bias_correction1) * exp_avg / denom


# ----------------------------------------------------------------------------------------------
# numba kernel


@njit
def _adamw_chunk(param, grad, exp_avg, exp_avg_sq, decay, beta1, one_minus_beta1, beta2,
                 one_minus_beta2, neg_step_size, bc2_sqrt, eps):
    """The update below on one chunk (slices of the four arrays). The loop runs over
    range(len) of its own slices: with indices that numba cannot prove non-negative it adds a
    wraparound branch per element and LLVM does not vectorise the loop (2x slower)."""
    lerp = one_minus_beta1 < 0.5
    for k in range(param.shape[0]):
        g = grad[k]
        if lerp:  # lerp(m, g, w = 1 - beta1), PyTorch's two-sided formula
            m = exp_avg[k] + one_minus_beta1 * (g - exp_avg[k])
        else:  # exact at w = 1 (beta1 = 0): m = g
            m = g - (g - exp_avg[k]) * beta1
        v = exp_avg_sq[k] * beta2 + one_minus_beta2 * g * g
        exp_avg[k] = m
        exp_avg_sq[k] = v
        denom = np.sqrt(v) / bc2_sqrt + eps
        param[k] = param[k] * decay + neg_step_size * m / denom


@njit(parallel=True)
def _adamw_kernel(param, grad, exp_avg, exp_avg_sq, decay, beta1, one_minus_beta1, beta2,
                  one_minus_beta2, neg_step_size, bc2_sqrt, eps):
    """All arrays (n,), the scalars in their dtype: decay = 1 - lr * weight_decay,
    neg_step_size = -lr / bias_correction1, bc2_sqrt = sqrt(bias_correction2).

    for each chunk of _CHUNK elements (parallel): for k in chunk: the update above, in the
    arrays' own precision and in PyTorch's order of operations (m by lerp, param by addcdiv),
    so a float32 run follows torch.optim.AdamW closely.
    """
    n = param.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lo, hi = c * _CHUNK, min((c + 1) * _CHUNK, n)
        _adamw_chunk(param[lo:hi], grad[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi], decay, beta1,
                     one_minus_beta1, beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps)


# ----------------------------------------------------------------------------------------------
# public wrapper


def _check_hyperparameters(lr, beta1, beta2, eps, weight_decay, step):
    fn = "adamw_step"
    if not lr >= 0.0:  # also rejects nan
        raise ValueError(f"{fn}: lr must be >= 0, got {lr}")
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{fn}: {name} must be in [0, 1), got {beta}")
    if not eps >= 0.0:
        raise ValueError(f"{fn}: eps must be >= 0, got {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"{fn}: weight_decay must be >= 0, got {weight_decay}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}: step must be an integer >= 1 (the count of this update), got {step!r}")


def _check_arrays(param, grad, exp_avg, exp_avg_sq):
    fn = "adamw_step"
    arrays = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{fn}: {name} has dtype {a.dtype}, expected float32 or float64")
        if a.shape != param.shape or a.dtype != param.dtype:
            raise ValueError(f"{fn}: {name} is {a.dtype} {a.shape} but param is {param.dtype} {param.shape}")
    for name in ("param", "exp_avg", "exp_avg_sq"):
        a = arrays[name]
        if not a.flags.c_contiguous:
            raise ValueError(
                f"{fn}: {name} (shape {a.shape}, strides {a.strides}) is not C-contiguous; it is updated "
                "in place, and a contiguous copy would leave the caller's array unchanged"
            )
        if not a.flags.writeable:
            raise ValueError(f"{fn}: {name} is read-only but is updated in place")


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step):
    """Fused numba AdamW update, in place; same contract as :func:`adamw_step_ref`.

    param, exp_avg, exp_avg_sq must be C-contiguous and writeable; grad may have any layout.
    All four share one shape and one float dtype. Returns None.
    """
    _check_hyperparameters(lr, beta1, beta2, eps, weight_decay, step)
    _check_arrays(param, grad, exp_avg, exp_avg_sq)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    scalar = param.dtype.type  # float32 arrays: float32 arithmetic, as PyTorch
    _adamw_kernel(
        param.reshape(-1), np.ascontiguousarray(grad).reshape(-1),
        exp_avg.reshape(-1), exp_avg_sq.reshape(-1),
        scalar(1.0 - lr * weight_decay), scalar(beta1), scalar(1.0 - beta1), scalar(beta2), scalar(1.0 - beta2),
        scalar(-lr / bias_correction1), scalar(math.sqrt(bias_correction2)), scalar(eps),
    )


# ----------------------------------------------------------------------------------------------
# the squared L2 norm that gradient clipping needs


def sum_of_squares_ref(x):
    """sum(x^2) in float64, as a Python float (the reference: a float64 copy and a dot product)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    return float(np.dot(flat, flat))


@njit(fastmath={"reassoc"})
def _sum_of_squares_kernel(x):
    """x (n,) -> sum of x[k]^2 accumulated in float64. fastmath "reassoc" lets LLVM keep
    partial sums in the lanes of vector registers (the order of the additions changes, the
    precision does not)."""
    total = 0.0
    for k in range(x.shape[0]):
        v = np.float64(x[k])
        total += v * v
    return total


def sum_of_squares(x):
    """sum(x^2) in float64 without a float64 copy of x (float32 or float64 arrays of any shape)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"sum_of_squares: x has dtype {x.dtype}, expected float32 or float64")
    return float(_sum_of_squares_kernel(np.ascontiguousarray(x).reshape(-1)))
