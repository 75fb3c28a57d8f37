"""Scaled dot-product attention: a NumPy reference and a fused (flash-style) numba kernel.

Shapes: ``q (N, Tq, D)``, ``k (N, Tk, D)``, ``v (N, Tk, Dv)`` with ``N = batch * heads``.
For one head (the index n is dropped), with ``c = scale`` (default ``1 / sqrt(D)``)::

    S[i, j]  = c * q[i] . k[j]         set to -inf where masked
    lse[i]   = log sum_j exp(S[i, j])  (-inf for a row whose keys are all masked)
    P[i, j]  = exp(S[i, j] - lse[i])   (0 in a fully masked row)
    out[i]   = sum_j P[i, j] v[j]

A key-padding mask is given as ``key_lengths (N,)``: query i of head n sees key j only if
``j < key_lengths[n]`` (the keys past a sequence's length are padding). The kernels then never
visit the padded keys: the loops over key blocks stop at the length, tile by tile.

Causal masking is bottom-right aligned: query i sees key j iff ``j <= i + (Tk - Tq)``. With
``Tq == Tk`` that is the usual lower triangle; a single new query against a KV cache of Tk keys
sees all of them; with ``Tq > Tk`` the first ``Tq - Tk`` rows see nothing (out 0, lse -inf).

Backward, with ``dO = dL/dout``::

    dV = P^T dO
    dP = dO V^T
    Drow[i] = sum_c dO[i, c] out[i, c]        (= sum_j P[i, j] dP[i, j])
    dS = P * (dP - Drow[:, None])             (the softmax Jacobian applied to dP)
    dQ = c * dS K,   dK = c * dS^T Q

The ``_ref`` functions are that math in plain NumPy, materialising the (N, Tq, Tk) scores: the
readable spec and the test oracle. ``attention_forward`` / ``attention_backward`` compute the
same thing tile by tile and never hold more than a (block_q, block_k) piece of S; the forward
saves only ``out`` and ``lse``, and the backward recomputes P from them. Each tile product is
one single-threaded BLAS call made from the numba thread that owns the tile (``blas.gemm_tile``;
``matmul.gemm_tile_loops`` where no BLAS can be called); products run over whole tiles, and
the masked entries of P and dS are exact zeros. In float32 their exp is a vectorised polynomial
(``_exp_f32_inplace``, relative error < 2 float32 eps), in float64 libm's; float64 matches the
reference to ~1e-15. :mod:`.attention_tiled` is the same tiling and online softmax in NumPy,
for reading: the step between the ``_ref`` functions and these kernels.
"""
import math

import numpy as np

from .systems.jit import get_num_threads, njit, prange
from .fastmath import exp_f32_inplace as _exp_f32_inplace
from . import blas as _blas
from .systems.cblas import blas_one_thread, restore_blas_threads
from .matmul import gemm_tile_loops
from .gemv import _dot  # sum_d a[d] b[d] of two contiguous rows

# The tile products: one single-threaded BLAS call per product (NumPy's OpenBLAS, called from
# the numba thread, see blas.py), or its plain twin in numba loops where no BLAS can be called.
# Fixed when the kernels compile; systems/jit.py keys the numba cache on which one it is.
_tile_product = _blas.gemm_tile if _blas.available() else gemm_tile_loops

# Tile sizes: 64 x 64 float32 tiles (16 KiB each) stay in the L1 cache, and larger ones were no
# faster (benchmarks/bench_kernels.py, docs/performance.md).
BLOCK_Q = 64
BLOCK_K = 64

_LANES = 8  # independent partial results in the row reductions (one 256-bit float32 vector)


# --------------------------------------------------------------------------------------------
# input checks shared by all four entry points
# --------------------------------------------------------------------------------------------

def _as_float_array(fn, name, a, ndim, layout):
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D {layout}, got shape {a.shape}")
    return a


def _check_qkv(fn, q, k, v, scale):
    """Validate q, k, v (and scale); return C-contiguous arrays and scale in their dtype."""
    q = _as_float_array(fn, "q", q, 3, "(N, Tq, D)")
    k = _as_float_array(fn, "k", k, 3, "(N, Tk, D)")
    v = _as_float_array(fn, "v", v, 3, "(N, Tk, Dv)")
    if q.dtype not in (np.float32, np.float64) or not q.dtype == k.dtype == v.dtype:
        raise ValueError(
            f"{fn}: q, k, v must share one dtype, float32 or float64; "
            f"got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"{fn}: q {q.shape} and k {k.shape} must agree on N (axis 0) and D (axis 2)"
        )
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"{fn}: k {k.shape} and v {v.shape} must agree on N (axis 0) and Tk (axis 1)"
        )
    if q.shape[2] == 0:
        raise ValueError(f"{fn}: head dim D must be >= 1, got q {q.shape}")
    scale = _checked_scale(fn, scale, q.shape[2], q.dtype)
    return np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v), scale


def _checked_scale(fn, scale, head_dim, dtype):
    """scale (default 1/sqrt(head_dim)) as a scalar of dtype; it must be finite."""
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if not math.isfinite(scale):
        raise ValueError(f"{fn}: scale must be finite, got {scale}")
    return dtype.type(scale)


def _check_saved(fn, q, v, out, lse, dout):
    """Validate the backward's extra inputs against q (N, Tq, D) and v (N, Tk, Dv)."""
    n, tq, dv = q.shape[0], q.shape[1], v.shape[2]
    arrays = {"out": (out, (n, tq, dv)), "lse": (lse, (n, tq)), "dout": (dout, (n, tq, dv))}
    checked = []
    for name, (a, shape) in arrays.items():
        a = np.asarray(a)
        if a.shape != shape:
            raise ValueError(f"{fn}: {name} must have shape {shape} for q {q.shape} and "
                             f"v {v.shape}, got {a.shape}")
        if a.dtype != q.dtype:
            raise ValueError(f"{fn}: {name} has dtype {a.dtype}, q has {q.dtype}")
        checked.append(np.ascontiguousarray(a))
    return checked


def _checked_key_lengths(fn, key_lengths, n, tk):
    """key_lengths (N,) integers in [0, Tk] as int64, or all Tk (no padding) when None."""
    return _checked_counts(fn, "key_lengths", key_lengths, n, tk, tk, f"one per head, N = {n}", "Tk")


def _checked_counts(fn, name, values, n, top, default, per, top_name):
    """``values`` (n,) integers in [0, top] as C-contiguous int64, or all ``default`` when None;
    a ValueError naming ``fn``, ``name`` and the offending value otherwise."""
    if values is None:
        return np.full(n, default, np.int64)
    counts = np.asarray(values)
    if counts.shape != (n,) or counts.dtype.kind not in "iu":
        raise ValueError(f"{fn}: {name} must be {n} integers ({per}), got {counts.dtype} {counts.shape}")
    if counts.size and (counts.min() < 0 or counts.max() > top):
        bad = counts.min() if counts.min() < 0 else counts.max()
        raise ValueError(f"{fn}: {name} must lie in [0, {top_name} = {top}], got {int(bad)}")
    return np.ascontiguousarray(counts, dtype=np.int64)


def causal_mask(tq, tk):
    """(Tq, Tk) bool, True where query i may attend key j: ``j <= i + (Tk - Tq)``."""
    return np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)


# --------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------

def _masked_scores(q, k, causal, scale, key_lengths):
    scores = (q @ k.transpose(0, 2, 1)) * scale  # (N, Tq, Tk)
    if causal:
        scores = np.where(causal_mask(q.shape[1], k.shape[1]), scores, -np.inf)
    not_padding = np.arange(k.shape[1]) < key_lengths[:, None, None]  # (N, 1, Tk)
    return np.where(not_padding, scores, -np.inf)


def attention_forward_ref(q, k, v, causal=False, scale=None, key_lengths=None):
    """Plain NumPy attention. Returns ``out (N, Tq, Dv)`` and ``lse (N, Tq)``."""
    q, k, v, scale = _check_qkv("attention_forward_ref", q, k, v, scale)
    key_lengths = _checked_key_lengths("attention_forward_ref", key_lengths, q.shape[0], k.shape[1])
    scores = _masked_scores(q, k, causal, scale, key_lengths)
    row_max = scores.max(axis=-1, keepdims=True, initial=-np.inf)  # (N, Tq, 1)
    # a fully masked row has max -inf; shifting by 0 instead keeps exp(-inf - 0) = 0, not NaN
    row_max = np.where(np.isfinite(row_max), row_max, 0).astype(q.dtype)
    unnorm = np.exp(scores - row_max)
    row_sum = unnorm.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = np.where(row_sum != 0, unnorm / row_sum, 0)  # 0: fully masked; NaN stays NaN
        lse = (row_max + np.log(row_sum))[..., 0]  # log(0) = -inf for a fully masked row
    return (probs @ v).astype(q.dtype), lse.astype(q.dtype)


def attention_backward_ref(q, k, v, out, lse, dout, causal=False, scale=None, key_lengths=None):
    """Plain NumPy backward of attention. Returns ``dq, dk, dv`` (shapes of q, k, v)."""
    q, k, v, scale = _check_qkv("attention_backward_ref", q, k, v, scale)
    out, lse, dout = _check_saved("attention_backward_ref", q, v, out, lse, dout)
    key_lengths = _checked_key_lengths("attention_backward_ref", key_lengths, q.shape[0], k.shape[1])
    scores = _masked_scores(q, k, causal, scale, key_lengths)
    finite_lse = np.where(np.isfinite(lse), lse, 0)[..., None]  # (N, Tq, 1)
    probs = np.exp(scores - finite_lse)  # masked scores are -inf, so fully masked rows give 0
    dv = probs.transpose(0, 2, 1) @ dout  # (N, Tk, Dv)
    dprobs = dout @ v.transpose(0, 2, 1)  # (N, Tq, Tk)
    drow = (dout * out).sum(axis=-1, keepdims=True)  # (N, Tq, 1)
    dscores = probs * (dprobs - drow)
    dq = (dscores @ k) * scale
    dk = (dscores.transpose(0, 2, 1) @ q) * scale
    return dq.astype(q.dtype), dk.astype(q.dtype), dv.astype(q.dtype)


# --------------------------------------------------------------------------------------------
# numba tile helpers (all work on one head; the callers slice out n)
# --------------------------------------------------------------------------------------------

@njit
def _exp_inplace(tile, rows):
    """tile[:rows] = exp(tile[:rows]); tile (block_q, block_k).

    float32 uses the vectorised polynomial exp of :mod:`.fastmath`; float64 (used for
    finite-difference checks, not for speed) uses libm's exp so that it matches NumPy to the
    last few bits.
    """
    flat = tile.reshape(tile.size)
    count = rows * tile.shape[1]
    if tile.itemsize == 4:
        _exp_f32_inplace(flat, count)
    else:
        for j in range(count):
            flat[j] = np.exp(flat[j])


@njit
def _row_max(tile, r, width, lanes):
    """max_{j < width} tile[r, j] (-inf if width is 0), with ``_LANES`` running maxima.

    One running max is a chain of dependent max instructions, each waiting for the one before;
    eight independent ones (lanes (8,)) fill one vector register and run side by side.
    """
    for x in range(_LANES):
        lanes[x] = -np.inf
    for j in range(0, width - _LANES + 1, _LANES):
        for x in range(_LANES):
            lanes[x] = max(lanes[x], tile[r, j + x])
    result = lanes[0]
    for x in range(1, _LANES):
        result = max(result, lanes[x])
    for j in range(width - width % _LANES, width):
        result = max(result, tile[r, j])
    return result


@njit(fastmath={"reassoc"})
def _row_sum(tile, r):
    """sum_j tile[r, j] over the whole row. fastmath "reassoc" lets LLVM keep partial sums in
    vector lanes, in registers (better than eight partial sums kept by hand in an array, as
    _row_max must: a max cannot be reassociated without also promising that no NaN occurs)."""
    total = tile.dtype.type(0)
    for j in range(tile.shape[1]):
        total += tile[r, j]
    return total


@njit
def _visible_keys(i0, rows, j0, width, causal, offset, widths):
    """widths[r] = how many keys j0, j0+1, ... (of width) query i0 + r may see."""
    for r in range(rows):
        if causal:
            widths[r] = min(max(i0 + r + offset + 1 - j0, 0), width)
        else:
            widths[r] = width


# --------------------------------------------------------------------------------------------
# fused forward
# --------------------------------------------------------------------------------------------

@njit
def _forward_query_block(q, k, v, i0, rows, causal, scale, block_k, key_len, out, lse):
    """Attention for queries i0 .. i0+rows-1 of one head, walking the keys block by block.

    q (Tq, D), k (Tk, D), v (Tk, Dv), out (Tq, Dv), lse (Tq,); only keys j < key_len take
    part. Online softmax per row r: for each key block with (scaled) scores s,
        m_new = max(m, max_j s_j);  alpha = exp(m - m_new)
        l     = alpha * l   + sum_j exp(s_j - m_new)
        acc   = alpha * acc + sum_j exp(s_j - m_new) v_j
    and finally out = acc / l, lse = m + log l (out 0, lse -inf where l = 0: no visible key).
    Key blocks entirely right of the causal diagonal or past key_len are never visited; in the
    diagonal block the masked scores become -inf, so their P is exactly 0.
    """
    tq, d_head = q.shape
    tk, d_value = v.shape
    offset = tk - tq
    dtype = q.dtype
    scores = np.empty((rows, block_k), dtype)  # S, then P in place
    widths = np.empty(rows, np.int64)
    row_max = np.full(rows, -np.inf, dtype)
    row_sum = np.zeros(rows, dtype)
    acc = np.zeros((rows, d_value), dtype)
    k_end = min(tk, i0 + rows + offset) if causal else tk  # keys past this are masked for all
    k_end = min(k_end, key_len)  # and so is the padding
    for j0 in range(0, k_end, block_k):
        width = min(block_k, k_end - j0)
        _visible_keys(i0, rows, j0, width, causal, offset, widths)
        _tile_product(scores, q[i0:], False, k[j0:], True, rows, width, d_head, False)  # Q K^T
        _shift_by_running_max(scores, widths, scale, row_max, row_sum, acc)
        _exp_inplace(scores, rows)
        _add_row_sums(scores, row_sum)
        _tile_product(acc, scores, False, v[j0:], False, rows, d_value, width, True)  # += P V
    _finish_rows(i0, rows, row_max, row_sum, acc, out, lse)


@njit
def _shift_by_running_max(scores, widths, scale, row_max, row_sum, acc):
    """Scale the raw q.k tile, update the running max m, rescale l and acc by
    alpha = exp(m_old - m_new), and leave s - m_new in the tile (-inf where masked) for exp.
    scores (rows, block_k), acc (rows, Dv).

    The element loops run over whole rows and mask with a select (``j < w``) rather than
    stopping at the row's width w: a loop of a fixed 64 iterations becomes a few vector
    instructions, while one of w (1..64 under a causal mask) spends most of its time in the
    scalar remainder after the last full vector.
    """
    rows, block_k = scores.shape
    lanes = np.empty(_LANES, scores.dtype)
    for r in range(rows):
        w = widths[r]
        for j in range(block_k):
            scores[r, j] *= scale
        m_old = row_max[r]
        m_new = max(m_old, _row_max(scores, r, w, lanes))
        for j in range(block_k):
            scores[r, j] = scores[r, j] - m_new if j < w else -np.inf
        if w > 0 and m_new > m_old:
            if m_old > -np.inf:  # on a row's first visible block l and acc are still 0: alpha = 0 changes nothing
                alpha = np.exp(m_old - m_new)
                row_sum[r] *= alpha
                for c in range(acc.shape[1]):
                    acc[r, c] *= alpha
            row_max[r] = m_new


@njit
def _add_row_sums(probs, row_sum):
    """row_sum[r] += sum_j probs[r, j] over whole rows (masked entries are exact zeros)."""
    for r in range(probs.shape[0]):
        row_sum[r] += _row_sum(probs, r)


@njit
def _finish_rows(i0, rows, row_max, row_sum, acc, out, lse):
    """out[i0 + r] = acc[r] / l[r], lse[i0 + r] = m[r] + log l[r]; 0 and -inf where l is 0
    (no visible key). A NaN l (a NaN in the row's scores) gives NaN out and lse."""
    for r in range(rows):
        if row_sum[r] != 0:
            inv = 1 / row_sum[r]
            for c in range(acc.shape[1]):
                out[i0 + r, c] = acc[r, c] * inv
            lse[i0 + r] = row_max[r] + np.log(row_sum[r])
        else:
            for c in range(acc.shape[1]):
                out[i0 + r, c] = 0
            lse[i0 + r] = -np.inf


@njit(parallel=True)
def _forward_kernel(q, k, v, causal, scale, block_q, block_k, key_lengths, out, lse):
    """prange over the independent (head n, query block) pairs; each writes its own rows.

    q (N, Tq, D), k (N, Tk, D), v (N, Tk, Dv), key_lengths (N,) -> out (N, Tq, Dv), lse (N, Tq).
    """
    n_heads, tq = q.shape[0], q.shape[1]
    n_qblocks = (tq + block_q - 1) // block_q
    saved = blas_one_thread()  # each numba thread calls one-threaded BLAS (blas.py)
    for item in prange(n_heads * n_qblocks):
        n = item // n_qblocks
        i0 = (item % n_qblocks) * block_q
        rows = min(block_q, tq - i0)
        _forward_query_block(q[n], k[n], v[n], i0, rows, causal, scale, block_k, key_lengths[n],
                             out[n], lse[n])
    restore_blas_threads(saved)


def attention_forward(q, k, v, causal=False, scale=None, key_lengths=None):
    """Fused attention forward (numba). Same contract as :func:`attention_forward_ref`:
    returns ``out (N, Tq, Dv)`` and ``lse (N, Tq)`` in the dtype of q."""
    q, k, v, scale = _check_qkv("attention_forward", q, k, v, scale)
    n, tq = q.shape[:2]
    key_lengths = _checked_key_lengths("attention_forward", key_lengths, n, k.shape[1])
    out = np.empty((n, tq, v.shape[2]), q.dtype)
    lse = np.empty((n, tq), q.dtype)
    _forward_kernel(q, k, v, bool(causal), scale, BLOCK_Q, BLOCK_K, key_lengths, out, lse)
    return out, lse


# --------------------------------------------------------------------------------------------
# fused backward
# --------------------------------------------------------------------------------------------

@njit
def _row_dots(a, b, result):
    """result[i] = sum_c a[i, c] * b[i, c], summed in float64.   a, b (T, C) -> (T,)

    (Not with fastmath "reassoc": LLVM would then order the sum one way for a contiguous
    array and another for a head viewed inside qkv, and the packed kernels would no longer
    give the split-heads path's numbers bit for bit.)"""
    for i in range(a.shape[0]):
        total = 0.0
        for c in range(a.shape[1]):
            total += np.float64(a[i, c]) * np.float64(b[i, c])
        result[i] = total


@njit
def _probs_and_dscores(scores, dprobs, rows, widths, lse, drow, i0, scale):
    """From the raw tiles q.k and dO.v of one (query block, key block) pair, in place:

        scores <- P  = exp(c * q.k - lse[i])        (0 where masked)
        dprobs <- dS = c * P * (dP - Drow[i])       (0 where masked; c folded in for dQ, dK)
    """
    block_k = scores.shape[1]
    for r in range(rows):  # whole rows, masked by a select (see _shift_by_running_max)
        w = widths[r]
        lse_r = lse[i0 + r]
        for j in range(block_k):
            scores[r, j] = scores[r, j] * scale - lse_r if j < w else -np.inf
    _exp_inplace(scores, rows)
    for r in range(rows):
        w = widths[r]
        d_r = drow[i0 + r]
        for j in range(block_k):
            dprobs[r, j] = scale * scores[r, j] * (dprobs[r, j] - d_r) if j < w else 0


@njit
def _backward_head(q, k, v, out, lse, dout, causal, scale, block_q, block_k, key_len, dq, dk, dv):
    """Gradients of one head, written into dq, dk, dv (zeroed here first).

    q (Tq, D), k (Tk, D), v (Tk, Dv), out/dout (Tq, Dv), lse (Tq,). Loop nest: key block j0
    (up to key_len: padded keys get no gradient and cost nothing), then every query block that
    sees it (causally hidden tiles are skipped), then per tile:
    S = Q K^T, P = exp(c S - lse), dP = dO V^T, dS; then dv += P^T dO, dk += dS^T Q,
    dq += dS K (masked entries of P and dS are 0, so whole-tile products add nothing for them).
    """
    tq, d_head = q.shape
    tk, d_value = v.shape
    offset = tk - tq
    dtype = q.dtype
    for grad in (dq, dk, dv):
        grad[:] = 0
    drow = np.empty(tq, dtype)  # Drow[i] = dO[i] . out[i]
    _row_dots(dout, out, drow)
    scores = np.empty((block_q, block_k), dtype)
    dprobs = np.empty((block_q, block_k), dtype)
    widths = np.empty(block_q, np.int64)  # visible keys per query row of the tile
    for j0 in range(0, key_len, block_k):
        width = min(block_k, key_len - j0)
        first_row = max(0, j0 - offset) if causal else 0  # rows above it see none of the block
        for i0 in range(first_row - first_row % block_q, tq, block_q):
            rows = min(block_q, tq - i0)
            _visible_keys(i0, rows, j0, width, causal, offset, widths)
            _tile_product(scores, q[i0:], False, k[j0:], True, rows, width, d_head, False)  # S
            _tile_product(dprobs, dout[i0:], False, v[j0:], True, rows, width, d_value, False)  # dP
            _probs_and_dscores(scores, dprobs, rows, widths, lse, drow, i0, scale)
            # dv += P^T dO,  dk += dS^T Q,  dq += dS K
            _tile_product(dv[j0:], scores, True, dout[i0:], False, width, d_value, rows, True)
            _tile_product(dk[j0:], dprobs, True, q[i0:], False, width, d_head, rows, True)
            _tile_product(dq[i0:], dprobs, False, k[j0:], False, rows, d_head, width, True)


@njit(parallel=True)
def _backward_kernel(q, k, v, out, lse, dout, causal, scale, block_q, block_k, key_lengths, dq, dk, dv):
    """prange over heads n: dq[n], dk[n], dv[n] are written by that head's thread only, so the
    accumulations need no atomics. (N = batch * heads is >= the core count at GPT shapes.)"""
    saved = blas_one_thread()  # each numba thread calls one-threaded BLAS (blas.py)
    for n in prange(q.shape[0]):
        _backward_head(q[n], k[n], v[n], out[n], lse[n], dout[n], causal, scale,
                       block_q, block_k, key_lengths[n], dq[n], dk[n], dv[n])
    restore_blas_threads(saved)


def attention_backward(q, k, v, out, lse, dout, causal=False, scale=None, key_lengths=None):
    """Fused attention backward (numba). Same contract as :func:`attention_backward_ref`:
    returns ``dq, dk, dv`` with the shapes of q, k, v; zero wherever a row is fully masked."""
    q, k, v, scale = _check_qkv("attention_backward", q, k, v, scale)
    out, lse, dout = _check_saved("attention_backward", q, v, out, lse, dout)
    key_lengths = _checked_key_lengths("attention_backward", key_lengths, q.shape[0], k.shape[1])
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _backward_kernel(q, k, v, out, lse, dout, bool(causal), scale, BLOCK_Q, BLOCK_K, key_lengths, dq, dk, dv)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# packed heads: self-attention straight from a fused q|k|v projection
# --------------------------------------------------------------------------------------------
#
# A GPT's attention input is one (B, T, 3C) array, q|k|v side by side, each C = H * D wide with
# head h in columns h*D .. (h+1)*D (GPT-2's c_attn). Viewed as (B, T, 3, H, D), head (b, h) of q
# is ``qkv[b, :, 0, h]``: a (T, D) array whose rows are contiguous and 3C apart, which the tile
# products take as it is (a BLAS leading dimension). So the kernels below run the per-head code
# above on such views, and the output and the gradient are written straight into (B, T, C) and
# (B, T, 3C) layout: no copies to split the heads and merge them back.


def _check_packed(fn, qkv, n_head, scale):
    qkv = np.asarray(qkv)
    if qkv.ndim != 3 or n_head < 1 or qkv.shape[2] % (3 * n_head) != 0:
        raise ValueError(f"{fn}: qkv must be (B, T, 3 * n_head * head_dim); got shape {qkv.shape} "
                         f"with n_head={n_head}")
    if qkv.dtype not in (np.float32, np.float64):
        raise ValueError(f"{fn}: qkv must be float32 or float64, got {qkv.dtype}")
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_head)
    heads = np.ascontiguousarray(qkv).reshape(B, T, 3, n_head, D)
    return heads, _checked_scale(fn, scale, D, qkv.dtype)


@njit(parallel=True)
def _packed_forward_kernel(heads, causal, scale, block_q, block_k, key_lengths, out, lse):
    """heads (B, T, 3, H, D), key_lengths (B,) -> out (B, T, H, D), lse (B, H, T); prange over
    (b, h, query block)."""
    n_batch, t, _, n_head, _ = heads.shape
    n_qblocks = (t + block_q - 1) // block_q
    saved = blas_one_thread()  # each numba thread calls one-threaded BLAS (blas.py)
    for item in prange(n_batch * n_head * n_qblocks):
        b, rest = item // (n_head * n_qblocks), item % (n_head * n_qblocks)
        h, i0 = rest // n_qblocks, (rest % n_qblocks) * block_q
        _forward_query_block(heads[b, :, 0, h], heads[b, :, 1, h], heads[b, :, 2, h], i0,
                             min(block_q, t - i0), causal, scale, block_k, key_lengths[b], out[b, :, h], lse[b, h])
    restore_blas_threads(saved)


@njit(parallel=True)
def _packed_backward_kernel(heads, out, lse, dout, causal, scale, block_q, block_k, key_lengths, dheads):
    """Gradients of all heads into dheads (B, T, 3, H, D); prange over (b, h)."""
    n_batch, _, _, n_head, _ = heads.shape
    saved = blas_one_thread()  # each numba thread calls one-threaded BLAS (blas.py)
    for item in prange(n_batch * n_head):
        b, h = item // n_head, item % n_head
        _backward_head(heads[b, :, 0, h], heads[b, :, 1, h], heads[b, :, 2, h], out[b, :, h], lse[b, h],
                       dout[b, :, h], causal, scale, block_q, block_k, key_lengths[b],
                       dheads[b, :, 0, h], dheads[b, :, 1, h], dheads[b, :, 2, h])
    restore_blas_threads(saved)


def self_attention_forward(qkv, n_head, causal=False, scale=None, key_lengths=None):
    """Multi-head self-attention of a packed projection: qkv (B, T, 3C) -> ``out (B, T, C)``,
    ``lse (B, H, T)``.

    The same numbers as splitting qkv into (B*H, T, D) heads, :func:`attention_forward`, and
    merging ``out`` back to (B, T, C); scale defaults to 1/sqrt(D). ``key_lengths (B,)``: one
    length per sequence, for all its heads (keys at and past it are padding).
    """
    heads, scale = _check_packed("self_attention_forward", qkv, n_head, scale)
    B, T, _, H, D = heads.shape
    key_lengths = _checked_key_lengths("self_attention_forward", key_lengths, B, T)
    out = np.empty((B, T, H, D), heads.dtype)
    lse = np.empty((B, H, T), heads.dtype)
    _packed_forward_kernel(heads, bool(causal), scale, BLOCK_Q, BLOCK_K, key_lengths, out, lse)
    return out.reshape(B, T, H * D), lse


def self_attention_backward(qkv, out, lse, dout, n_head, causal=False, scale=None, key_lengths=None):
    """Backward of :func:`self_attention_forward`: ``dqkv (B, T, 3C)`` from dout (B, T, C)."""
    fn = "self_attention_backward"
    heads, scale = _check_packed(fn, qkv, n_head, scale)
    B, T, _, H, D = heads.shape
    key_lengths = _checked_key_lengths(fn, key_lengths, B, T)
    for name, a, shape in (("out", out, (B, T, H * D)), ("lse", lse, (B, H, T)), ("dout", dout, (B, T, H * D))):
        if a.shape != shape or a.dtype != heads.dtype:
            raise ValueError(f"{fn}: {name} must be {heads.dtype} {shape} for qkv {qkv.shape}, got {a.dtype} {a.shape}")
    dheads = np.empty_like(heads)
    _packed_backward_kernel(heads, np.ascontiguousarray(out).reshape(B, T, H, D), np.ascontiguousarray(lse),
                            np.ascontiguousarray(dout).reshape(B, T, H, D), bool(causal), scale,
                            BLOCK_Q, BLOCK_K, key_lengths, dheads)
    return dheads.reshape(B, T, 3 * H * D)


def self_attention_forward_ref(qkv, n_head, causal=False, scale=None, key_lengths=None):
    """Plain NumPy :func:`self_attention_forward`: split qkv (B, T, 3C) into (B*H, T, D) heads,
    :func:`attention_forward_ref`, merge back. Returns ``out (B, T, C)``, ``lse (B, H, T)``."""
    heads, scale = _check_packed("self_attention_forward_ref", qkv, n_head, scale)
    B, T, _, H, D = heads.shape
    key_lengths = _checked_key_lengths("self_attention_forward_ref", key_lengths, B, T)
    q, k, v = (_split_heads(heads[:, :, i]) for i in range(3))
    out, lse = attention_forward_ref(q, k, v, causal, scale, np.repeat(key_lengths, H))  # one length per head
    return _merge_heads(out, B), lse.reshape(B, H, T)


def self_attention_backward_ref(qkv, out, lse, dout, n_head, causal=False, scale=None, key_lengths=None):
    """Plain NumPy :func:`self_attention_backward`: ``dqkv (B, T, 3C)`` from dout (B, T, C)."""
    heads, scale = _check_packed("self_attention_backward_ref", qkv, n_head, scale)
    B, T, _, H, D = heads.shape
    key_lengths = _checked_key_lengths("self_attention_backward_ref", key_lengths, B, T)
    q, k, v = (_split_heads(heads[:, :, i]) for i in range(3))
    out, dout = (_split_heads(a.reshape(B, T, H, D)) for a in (out, dout))
    dq, dk, dv = attention_backward_ref(q, k, v, out, lse.reshape(B * H, T), dout, causal, scale,
                                        np.repeat(key_lengths, H))
    dheads = np.stack([d.reshape(B, H, T, D).transpose(0, 2, 1, 3) for d in (dq, dk, dv)], axis=2)
    return dheads.reshape(B, T, 3 * H * D)  # (B, T, 3, H, D) -> (B, T, 3C)


def _split_heads(x):
    """(B, T, H, D) -> (B*H, T, D)"""
    B, T, H, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B * H, T, D)


def _merge_heads(x, batch):
    """(B*H, T, D) -> (B, T, H*D)"""
    _, T, D = x.shape
    return x.reshape(batch, -1, T, D).transpose(0, 2, 1, 3).reshape(batch, T, -1)


# --------------------------------------------------------------------------------------------
# decoding: new positions attend to a KV cache
# --------------------------------------------------------------------------------------------
#
# While generating, each step brings T new positions (the prompt at first, then one token per
# sequence) whose keys and values join those already in the cache, k_cache and v_cache
# (B, H, L, D) with the first ``start`` positions filled. The T new queries attend to every
# cached position and causally among themselves: new query t (absolute position start + t)
# sees keys 0 .. start + t. With T = 1 there are a few hundred scores per head, too few for the
# tiles above (each tile product a BLAS call): the kernel below computes them in plain loops,
# one (sequence, head) pair per work item, reading the cache in place.

# Below this many multiply-adds (B * H * T * keys * D) one thread does all pairs: waking a
# second thread costs more than it saves (decoding a small model), and much more on busy cores.
CACHED_SERIAL_WORK = 1 << 17


def _check_cache(fn, qkv, k_cache, v_cache, start, n_head):
    """qkv (B, T, 3C) viewed as heads (B, T, 3, H, D), after checking it against the caches."""
    qkv = np.asarray(qkv)
    if qkv.ndim != 3 or n_head < 1 or qkv.shape[2] % (3 * n_head) != 0 or qkv.dtype not in (np.float32, np.float64):
        raise ValueError(f"{fn}: qkv must be float32 or float64 (B, T, 3 * n_head * head_dim); got {qkv.dtype} "
                         f"{qkv.shape} with n_head={n_head}")
    B, T, C3 = qkv.shape
    H, D = n_head, C3 // (3 * n_head)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.ndim != 4 or cache.shape[:2] != (B, H) or cache.shape[3] != D or cache.dtype != qkv.dtype:
            raise ValueError(f"{fn}: {name} must be {qkv.dtype} (B, H, L, D) = ({B}, {H}, L, {D}) for qkv "
                             f"{qkv.shape}, got {cache.dtype} {cache.shape}")
    if not 0 <= start <= k_cache.shape[2] - T or v_cache.shape[2] != k_cache.shape[2]:
        raise ValueError(f"{fn}: {start} cached + {T} new positions do not fit a cache of {k_cache.shape[2]}")
    return np.ascontiguousarray(qkv).reshape(B, T, 3, H, D)


def _checked_key_starts(fn, key_starts, batch, stop):
    """key_starts (B,) integers in [0, start + T] as int64, or all 0 (no left padding) when None."""
    return _checked_counts(fn, "key_starts", key_starts, batch, stop, 0, "one per sequence", "start + T")


def cached_attention_forward_ref(qkv, k_cache, v_cache, start, n_head, scale=None, key_starts=None):
    """Attention of T new positions over a KV cache, in NumPy.

    qkv (B, T, 3C) as for :func:`self_attention_forward`; k_cache, v_cache (B, H, L, D) of one
    layer, holding ``start`` positions. Writes the new keys and values into positions
    start .. start + T - 1, then returns ``out (B, T, C)`` and ``lse (B, H, T)`` of the new
    queries over keys 0 .. start + T - 1 (causal, bottom-right aligned).

    ``key_starts (B,)``: sequence b's keys before ``key_starts[b]`` are (left) padding and take
    no part; a query that then sees no key gets out 0 and lse -inf.
    """
    heads = _check_cache("cached_attention_forward_ref", qkv, k_cache, v_cache, start, n_head)
    B, T, _, H, D = heads.shape
    stop = start + T
    key_starts = _checked_key_starts("cached_attention_forward_ref", key_starts, B, stop)
    k_cache[:, :, start:stop] = heads[:, :, 1].transpose(0, 2, 1, 3)  # (B, T, H, D) -> (B, H, T, D)
    v_cache[:, :, start:stop] = heads[:, :, 2].transpose(0, 2, 1, 3)
    q = _split_heads(heads[:, :, 0])  # (B*H, T, D)
    k = k_cache[:, :, :stop].reshape(B * H, stop, D)
    v = v_cache[:, :, :stop].reshape(B * H, stop, D)
    if not key_starts.any():
        out, lse = attention_forward_ref(q, k, v, causal=True, scale=scale)
        return _merge_heads(out, B), lse.reshape(B, H, T)
    # left padding: mask the scores of the padded keys too, then each row's softmax
    scale = _checked_scale("cached_attention_forward_ref", scale, D, q.dtype)
    scores = (q @ k.transpose(0, 2, 1)) * scale  # (B*H, T, stop)
    allowed = causal_mask(T, stop) & (np.arange(stop) >= np.repeat(key_starts, H)[:, None, None])
    scores = np.where(allowed, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0).astype(q.dtype)  # fully masked: exp(-inf) = 0
    unnorm = np.exp(scores - row_max)
    row_sum = unnorm.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = np.where(row_sum != 0, unnorm / row_sum, 0)
        lse = (row_max + np.log(row_sum))[..., 0]
    return _merge_heads((probs @ v).astype(q.dtype), B), lse.astype(q.dtype).reshape(B, H, T)


@njit(fastmath={"contract"})
def _weighted_rows(acc, p, v, n):
    """acc[d] = sum_{j < n} p[j] v[j, d], four rows of v per pass over acc (as ``_gemm_acc`` takes
    four depths at a time): acc is loaded and stored once per four products, not per product."""
    for d in range(acc.shape[0]):
        acc[d] = 0
    j = 0
    while j + 4 <= n:
        p0, p1, p2, p3 = p[j], p[j + 1], p[j + 2], p[j + 3]
        for d in range(acc.shape[0]):
            acc[d] += (p0 * v[j, d] + p1 * v[j + 1, d]) + (p2 * v[j + 2, d] + p3 * v[j + 3, d])
        j += 4
    while j < n:
        for d in range(acc.shape[0]):
            acc[d] += p[j] * v[j, d]
        j += 1


@njit(fastmath={"reassoc"})
def _sum(x, n):
    """sum_{j < n} x[j] (partial sums in vector lanes: see _row_sum)."""
    total = x.dtype.type(0)
    for j in range(n):
        total += x[j]
    return total


@njit
def _cached_head(q, k, v, start, scale, out, lse, scores, q_row, acc):
    """One (sequence, head) pair: q (T, D) the new queries (rows may lie apart, inside qkv),
    k, v (L, D) its cache, out (T, D) (inside the (B, T, H, D) output), lse (T,); query t sees
    keys 0 .. start + t. Per query: the scores and their max m; p = exp(score - m) in place
    (the vectorised exp in float32, as the tiled kernels); out = sum_j p_j v_j / sum_j p_j and
    lse = m + log(sum_j p_j). scores (>= L,), q_row and acc (D,) are contiguous scratch, so the
    inner loops are unit-stride vector code."""
    for t in range(q.shape[0]):
        n_keys = start + t + 1
        if n_keys <= 0:  # (left padding) this query sees no key: zeros, not 0 / 0
            for d in range(acc.shape[0]):
                out[t, d] = 0
            lse[t] = -np.inf
            continue
        q_row[:] = q[t]
        m = scores.dtype.type(-np.inf)
        for j in range(n_keys):
            s = _dot(q_row, k[j]) * scale
            scores[j] = s
            m = max(m, s)
        for j in range(n_keys):
            scores[j] -= m
        if scores.itemsize == 4:
            _exp_f32_inplace(scores, n_keys)
        else:
            for j in range(n_keys):
                scores[j] = np.exp(scores[j])
        total = _sum(scores, n_keys)
        _weighted_rows(acc, scores, v, n_keys)
        inv = 1 / total
        for d in range(acc.shape[0]):
            out[t, d] = acc[d] * inv
        lse[t] = m + np.log(total)


@njit
def _cached_pairs(heads, k_cache, v_cache, start, scale, out, lse, first, stop, key_starts):
    """Pairs first .. stop - 1 of (sequence b, head h): store the new keys and values, attend
    over keys key_starts[b] .. (the cache seen from its first real key on: start - key_starts[b]
    earlier positions, possibly < 0 for queries that are padding themselves)."""
    T, n_head, head_dim = heads.shape[1], heads.shape[3], heads.shape[4]
    scores = np.empty(start + T, heads.dtype)
    q_row = np.empty(head_dim, heads.dtype)
    acc = np.empty(head_dim, heads.dtype)
    for item in range(first, stop):
        b, h = item // n_head, item % n_head
        for t in range(T):
            k_cache[b, h, start + t, :] = heads[b, t, 1, h, :]
            v_cache[b, h, start + t, :] = heads[b, t, 2, h, :]
        first_key = key_starts[b]
        _cached_head(heads[b, :, 0, h], k_cache[b, h, first_key:], v_cache[b, h, first_key:], start - first_key,
                     scale, out[b, :, h], lse[b, h], scores, q_row, acc)


@njit(parallel=True)
def _cached_parallel(heads, k_cache, v_cache, start, scale, out, lse, key_starts):
    """prange over (sequence, head) pairs; each writes its own cache rows and outputs."""
    n_pairs = heads.shape[0] * heads.shape[3]
    for item in prange(n_pairs):
        _cached_pairs(heads, k_cache, v_cache, start, scale, out, lse, item, item + 1, key_starts)


def cached_attention_forward(qkv, k_cache, v_cache, start, n_head, scale=None, key_starts=None):
    """Same contract as :func:`cached_attention_forward_ref` (numba). Every query's result is
    computed by one thread in one order, so it does not depend on the thread count."""
    heads = _check_cache("cached_attention_forward", qkv, k_cache, v_cache, start, n_head)
    key_starts = _checked_key_starts("cached_attention_forward", key_starts, heads.shape[0], start + heads.shape[1])
    if not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous):
        raise ValueError("cached_attention_forward: k_cache and v_cache must be C-contiguous (they are written in place)")
    B, T, _, H, D = heads.shape
    scale = _checked_scale("cached_attention_forward", scale, D, heads.dtype)
    out = np.empty((B, T, H, D), heads.dtype)
    lse = np.empty((B, H, T), heads.dtype)
    if B * H * T * (start + T) * D < CACHED_SERIAL_WORK or get_num_threads() == 1:
        _cached_pairs(heads, k_cache, v_cache, start, scale, out, lse, 0, B * H, key_starts)
    else:
        _cached_parallel(heads, k_cache, v_cache, start, scale, out, lse, key_starts)
    return out.reshape(B, T, H * D), lse
