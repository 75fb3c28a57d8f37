"""Softmax cross-entropy of logits (N, V) against integer targets (N,), fused, with ignore_index
and label smoothing.

Per row i with target t_i != ignore_index (a "valid" row; n_valid of them), with label
smoothing e (PyTorch's ``label_smoothing``: the target distribution is (1 - e) onehot(t_i) + e / V)::

    lse_i  = log sum_j exp(z_ij) = m_i + log sum_j exp(z_ij - m_i),   m_i = max_j z_ij
    loss_i = (1 - e) (lse_i - z_i[t_i]) + e (lse_i - mean_j z_ij)
           = -(1 - e) log p_i[t_i] - (e / V) sum_j log p_ij
    loss   = (1 / n_valid) * sum_{valid i} loss_i                     (nan if n_valid == 0)

Subtracting the row max keeps every exp in (0, 1], so any finite logits give a finite lse. The
kernels take exp in the logits' dtype (for float32 the vectorised polynomial of
:mod:`.fastmath`) and accumulate sums in float64.
Backward, for an upstream gradient g of the scalar loss::

    dz_ij = g / n_valid * (softmax(z_i)_j - (1 - e) [j == t_i] - e / V),
            softmax(z_i)_j = exp(z_ij - lse_i)
    dz_ij = 0                                               for ignored rows

The forward returns lse so the backward needs no second pass for the max and the sum (the
numba backward still recomputes them for rows whose |lse| is too large to carry log s exactly).
"""
import math

import numpy as np

from .systems.jit import njit, prange
from .fastmath import exp_f32

__all__ = [
    "cross_entropy_forward_ref", "cross_entropy_backward_ref",
    "cross_entropy_forward", "cross_entropy_backward",
]

# The backward trusts a saved lse up to this magnitude (see _cross_entropy_backward_kernel).
_LSE_TRUSTED = 32.0
_ROWS = 16  # rows per parallel work item (each item allocates its scratch rows once)


# ----------------------------------------------------------------------------------------------
# NumPy reference


def cross_entropy_forward_ref(logits, targets, ignore_index=-100, label_smoothing=0.0):
    """logits (N, V), targets (N,) -> loss (0-d, logits' dtype), lse (N,)."""
    label_smoothing = _checked_smoothing("cross_entropy_forward_ref", label_smoothing)
    check_target_range("cross_entropy_forward_ref", targets, logits.shape[1], ignore_index)
    row_max = logits.max(axis=1)                                          # (N,)
    lse = row_max + np.log(np.exp(logits - row_max[:, None]).sum(axis=1))  # (N,)
    valid = targets != ignore_index                                       # (N,)
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        return np.array(np.nan, dtype=logits.dtype), lse
    picked = logits[rows, targets[rows]]                                  # (n_valid,)
    row_loss = lse[rows] - picked                                         # -log p[t]
    if label_smoothing:
        uniform = lse[rows] - logits[rows].mean(axis=1, dtype=np.float64)  # -mean_j log p_j
        row_loss = (1 - label_smoothing) * row_loss + label_smoothing * uniform
    loss = np.sum(row_loss, dtype=np.float64) / rows.size
    return np.array(loss, dtype=logits.dtype), lse


def cross_entropy_backward_ref(logits, targets, lse, grad_loss, ignore_index=-100, label_smoothing=0.0):
    """logits (N, V), targets (N,), lse (N,), scalar grad_loss -> dlogits (N, V)."""
    label_smoothing = _checked_smoothing("cross_entropy_backward_ref", label_smoothing)
    valid = targets != ignore_index                                       # (N,)
    n_valid = np.count_nonzero(valid)
    probs = np.exp(logits - lse[:, None])                                 # (N, V) softmax
    rows = np.flatnonzero(valid)
    probs[rows, targets[rows]] -= 1.0 - label_smoothing
    probs -= label_smoothing / logits.shape[1]
    scale = float(grad_loss) / max(n_valid, 1)
    return (probs * (scale * valid[:, None])).astype(logits.dtype)


def _checked_smoothing(fn, label_smoothing):
    """label_smoothing as a float in [0, 1] (PyTorch's range)."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating)):
        raise ValueError(f"{fn}: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {label_smoothing}")
    return float(label_smoothing)


# ----------------------------------------------------------------------------------------------
# numba kernels


@njit
def _exp_shifted_row(logits, i, shift, out):
    """out[j] = exp(z[i, j] - shift) for the whole row, in the logits' dtype.

    float32: the vectorised polynomial exp of :mod:`.fastmath` (relative error < 2 float32
    eps) instead of libm's scalar expf: the kernels' time is mostly exp (a GPT-2 vocabulary of
    50,257 logits is 50,257 exps per position). float64 (finite-difference checks) keeps
    libm's exp.
    """
    vocab = logits.shape[1]
    if logits.itemsize == 4:
        for j in range(vocab):
            out[j] = exp_f32(np.float32(logits[i, j] - shift))
    else:
        for j in range(vocab):
            out[j] = math.exp(logits[i, j] - shift)


@njit(fastmath={"reassoc"})
def _sum_f64(x):
    """sum_j x[j] in float64 ("reassoc": partial sums in vector lanes)."""
    total = 0.0
    for j in range(x.shape[0]):
        total += np.float64(x[j])
    return total


@njit
def _row_max_and_sum(logits, i, probs):
    """m = max_j z[i, j] (in the logits' dtype) and s = sum_j exp(z[i, j] - m) (float64);
    leaves exp(z[i, j] - m) in probs."""
    vocab = logits.shape[1]
    row_max = logits[i, 0]
    for j in range(1, vocab):
        if logits[i, j] > row_max:
            row_max = logits[i, j]
    _exp_shifted_row(logits, i, row_max, probs)
    return row_max, _sum_f64(probs)


@njit(fastmath={"reassoc"})
def _row_mean(logits, i):
    """mean_j z[i, j] in float64 (partial sums in vector lanes, as _sum_f64)."""
    total = 0.0
    for j in range(logits.shape[1]):
        total += np.float64(logits[i, j])
    return total / logits.shape[1]


@njit(parallel=True)
def _cross_entropy_forward_kernel(logits, targets, ignore_index, label_smoothing, lse, row_loss):
    """for each block of _ROWS rows (parallel), for each row i:
        m, s = max_j z[i, j], sum_j exp(z[i, j] - m)   (2 passes; a third for mean_j z if e > 0)
        lse[i] = m + log(s)
        row_loss[i] = (1 - e) (m - z[i, t_i]) + e (m - mean_j z[i, j]) + log(s), or 0 if ignored
    The caller sums row_loss (float64) and divides by n_valid. Writing the loss with m - z
    rather than lse - z keeps log(s) when |m| is so large (1e30) that m + log(s) rounds to m.
    Without smoothing the row loss is (m - z_t) + log(s), exactly as before smoothing existed.
    """
    n_rows, vocab = logits.shape
    for b in prange((n_rows + _ROWS - 1) // _ROWS):
        probs = np.empty(vocab, logits.dtype)  # scratch row
        for i in range(b * _ROWS, min((b + 1) * _ROWS, n_rows)):
            row_max, total = _row_max_and_sum(logits, i, probs)
            row_max = np.float64(row_max)
            lse[i] = row_max + math.log(total)
            t = targets[i]
            if t == ignore_index:
                row_loss[i] = 0.0
            elif label_smoothing == 0.0:
                row_loss[i] = (row_max - logits[i, t]) + math.log(total)
            else:
                picked = row_max - logits[i, t]
                uniform = row_max - _row_mean(logits, i)
                row_loss[i] = ((1.0 - label_smoothing) * picked + label_smoothing * uniform) + math.log(total)


@njit(parallel=True)
def _cross_entropy_backward_kernel(logits, targets, lse, scale, ignore_index, label_smoothing, dlogits):
    """for each block of _ROWS rows (parallel), for each row i:
         p_j = exp(z[i, j] - lse[i])      if |lse[i]| <= _LSE_TRUSTED (one pass)
         p_j = exp(z[i, j] - m) / s       otherwise (max and sum recomputed: 3 passes)
         dz[i, j] = scale * (p_j - (1 - e) [j == t_i]) - scale * e / V   (scale = grad_loss / n_valid)
    Ignored rows get 0. A large lse, stored in the logits' dtype, has rounded away part or all of
    log(s) (for logits ~1e30, lse == m exactly), and exp(z - lse) would then be wrong by a
    factor up to s; below the threshold its rounding costs at most ~32 ulp in p.
    """
    n_rows, vocab = logits.shape
    smooth = scale * label_smoothing / vocab  # 0.0 without smoothing: x - 0.0 is x, bit for bit
    on_target = 1.0 - label_smoothing
    for b in prange((n_rows + _ROWS - 1) // _ROWS):
        probs = np.empty(vocab, logits.dtype)  # scratch row
        for i in range(b * _ROWS, min((b + 1) * _ROWS, n_rows)):
            t = targets[i]
            if t == ignore_index:
                for j in range(vocab):
                    dlogits[i, j] = 0.0
                continue
            shift = lse[i]
            inv_total = 1.0
            if abs(shift) > _LSE_TRUSTED:
                shift, total = _row_max_and_sum(logits, i, probs)
                inv_total = 1.0 / total
            else:
                _exp_shifted_row(logits, i, shift, probs)
            for j in range(vocab):
                dlogits[i, j] = scale * inv_total * probs[j] - smooth
            dlogits[i, t] = scale * (inv_total * probs[t] - on_target) - smooth


# ----------------------------------------------------------------------------------------------
# public wrappers


def _check_inputs(fn, logits, targets, ignore_index):
    """Validate; return targets as a contiguous int64 array."""
    if not isinstance(logits, np.ndarray) or logits.ndim != 2:
        shape = getattr(logits, "shape", type(logits).__name__)
        raise ValueError(f"{fn}: logits must be a 2-D array (N, V), got {shape}")
    if logits.dtype not in (np.float32, np.float64):
        raise ValueError(f"{fn}: logits have dtype {logits.dtype}, expected float32 or float64")
    n_rows, vocab = logits.shape
    if vocab == 0:
        raise ValueError(f"{fn}: logits have shape {logits.shape}: no classes to choose from")
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise ValueError(f"{fn}: targets must be integers, got dtype {targets.dtype}")
    if targets.shape != (n_rows,):
        raise ValueError(
            f"{fn}: targets have shape {targets.shape}, expected ({n_rows},) for logits {logits.shape}"
        )
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise ValueError(f"{fn}: ignore_index must be an integer, got {ignore_index!r}")
    check_target_range(fn, targets, vocab, ignore_index)
    return np.ascontiguousarray(targets, dtype=np.int64)


def check_target_range(fn, targets, vocab, ignore_index):
    """Every target (N,) is a class id in [0, vocab) or ``ignore_index``; else a ValueError naming
    the first that is not (NumPy indexing would raise a bare IndexError past the end and silently
    count from the end for a negative id)."""
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{fn}: targets[{i}] = {targets[i]} is outside [0, {vocab}) and is not ignore_index={ignore_index}"
        )


def cross_entropy_forward(logits, targets, ignore_index=-100, label_smoothing=0.0):
    """Fused numba forward; same contract as :func:`cross_entropy_forward_ref`.

    logits (N, V) float32/float64, targets (N,) integers in [0, V) or == ignore_index,
    label_smoothing in [0, 1]. Returns loss (0-d array of logits' dtype; nan if every row is
    ignored) and lse (N,).
    """
    targets = _check_inputs("cross_entropy_forward", logits, targets, ignore_index)
    label_smoothing = _checked_smoothing("cross_entropy_forward", label_smoothing)
    n_rows = logits.shape[0]
    lse = np.empty(n_rows, dtype=logits.dtype)
    row_loss = np.empty(n_rows)  # float64
    _cross_entropy_forward_kernel(np.ascontiguousarray(logits), targets, int(ignore_index), label_smoothing,
                                  lse, row_loss)
    n_valid = np.count_nonzero(targets != ignore_index)
    loss = row_loss.sum() / n_valid if n_valid else np.nan
    return np.array(loss, dtype=logits.dtype), lse


def cross_entropy_backward(logits, targets, lse, grad_loss, ignore_index=-100, label_smoothing=0.0):
    """Fused numba backward; same contract as :func:`cross_entropy_backward_ref`.

    lse (N,) is the forward's; grad_loss is the scalar upstream gradient (a number or size-1
    array). Returns dlogits (N, V) of logits' dtype.
    """
    fn = "cross_entropy_backward"
    targets = _check_inputs(fn, logits, targets, ignore_index)
    label_smoothing = _checked_smoothing(fn, label_smoothing)
    n_rows = logits.shape[0]
    if not isinstance(lse, np.ndarray) or lse.shape != (n_rows,):
        raise ValueError(f"{fn}: lse has shape {getattr(lse, 'shape', None)}, expected ({n_rows},)")
    grad_loss = np.asarray(grad_loss)
    if grad_loss.size != 1:
        raise ValueError(f"{fn}: grad_loss must be a scalar, got shape {grad_loss.shape}")
    n_valid = np.count_nonzero(targets != ignore_index)
    scale = float(grad_loss.reshape(())) / max(n_valid, 1)
    dlogits = np.empty(logits.shape, dtype=logits.dtype)
    _cross_entropy_backward_kernel(
        np.ascontiguousarray(logits), targets, np.ascontiguousarray(lse), scale, int(ignore_index),
        label_smoothing, dlogits,
    )
    return dlogits
