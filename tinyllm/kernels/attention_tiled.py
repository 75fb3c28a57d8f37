"""Attention one tile at a time, in NumPy: the online softmax of flash attention, fwd and bwd.

This is the step between :func:`.attention.attention_forward_ref`, which builds the whole
(Tq, Tk) matrix of scores, and the numba kernels :func:`.attention.attention_forward` /
:func:`.attention.attention_backward`, which never hold more than one (block_q, block_k) tile
of it. The contract is theirs: q (N, Tq, D), k (N, Tk, D), v (N, Tk, Dv) -> out (N, Tq, Dv) and
the log-sum-exp lse (N, Tq); the causal mask is bottom-right aligned (query i sees key j iff
j <= i + Tk - Tq). All N heads of a tile are computed at once.

Forward: the online softmax. A block of query rows walks the keys one block at a time and keeps,
per row, three running values:

    m    the largest score seen so far (-inf before any)
    l    the sum of exp(s_j - m) over the keys seen so far
    acc  the sum of exp(s_j - m) v_j over the keys seen so far

For each key block, with its tile of scores s = c * q k^T (masked scores -inf):

    m_new = max(m, rowmax(s))
    p     = exp(s - m_new)                          the tile's unnormalised probabilities
    l     = exp(m - m_new) * l   + rowsum(p)        the old terms were exp(s_j - m): rescaling
    acc   = exp(m - m_new) * acc + p @ v_block      by exp(m - m_new) makes them exp(s_j - m_new)
    m     = m_new

After the last block every term of l and acc is exp(s_j - m) [v_j] with the row's true max m,
so ``out = acc / l`` and ``lse = m + log l``: the full softmax's numbers (up to rounding),
without a whole row of scores ever in memory. Every exponent is <= 0, so nothing overflows. A
row that has seen no visible key has m = -inf and is shifted by 0 instead (exp(-inf) = 0 keeps
its p, l and acc at 0); a row that sees no key at all ends with l = 0: out 0, lse -inf.

Backward: the probabilities are recomputed tile by tile from the saved lse, never stored:

    P   = exp(s - lse)                       exact: lse already holds the row's whole sum
    dV += P^T dO
    dP  = dO V^T
    dS  = P * (dP - D)                       the softmax Jacobian applied to dP
    dQ += c dS K,    dK += c dS^T Q

with ``D = rowsum(dO * O)``, one number per query row, computed once before the loop. It is the
row's sum_j P_ij dP_ij that the softmax Jacobian needs, which needs no full row of P:
sum_j P_ij (dO_i . v_j) = dO_i . (sum_j P_ij v_j) = dO_i . O_i.
"""
import math

import numpy as np

from .attention import causal_mask

__all__ = ["attention_forward_tiled", "attention_backward_tiled"]

BLOCK = 64  # the numba kernels' tile size (attention.BLOCK_Q, BLOCK_K)


def _scale(q, scale):
    return q.dtype.type(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)


def _visible(tq, tk, causal):
    """(Tq, Tk) bool: which keys each query may see."""
    return causal_mask(tq, tk) if causal else np.ones((tq, tk), dtype=bool)


def attention_forward_tiled(q, k, v, causal=False, scale=None, block_q=BLOCK, block_k=BLOCK):
    """Attention with the online softmax, ``block_q`` queries by ``block_k`` keys at a time.
    Returns ``out (N, Tq, Dv)`` and ``lse (N, Tq)``, as :func:`.attention.attention_forward_ref`."""
    c = _scale(q, scale)
    n, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    visible = _visible(tq, tk, causal)
    out = np.empty((n, tq, v.shape[2]), q.dtype)
    lse = np.empty((n, tq), q.dtype)
    for i0 in range(0, tq, block_q):
        i1 = min(i0 + block_q, tq)
        m = np.full((n, i1 - i0, 1), -np.inf, q.dtype)  # running max
        l = np.zeros((n, i1 - i0, 1), q.dtype)  # running sum of exp(s - m)
        acc = np.zeros((n, i1 - i0, v.shape[2]), q.dtype)  # running sum of exp(s - m) v
        k_end = min(tk, i1 + tk - tq) if causal else tk  # keys past k_end are hidden from all these rows
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, k_end)
            s = c * (q[:, i0:i1] @ k[:, j0:j1].transpose(0, 2, 1))  # (N, bq, bk)
            s = np.where(visible[i0:i1, j0:j1], s, -np.inf)
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
            shift = np.where(m_new > -np.inf, m_new, 0)  # no visible key yet: shift by 0
            p = np.exp(s - shift)
            alpha = np.exp(m - shift)  # 0 while m is -inf (l and acc are still 0 then)
            l = alpha * l + p.sum(axis=-1, keepdims=True)
            acc = alpha * acc + p @ v[:, j0:j1]
            m = m_new
        with np.errstate(divide="ignore", invalid="ignore"):  # l = 0: a row that saw no key
            out[:, i0:i1] = np.where(l != 0, acc / l, 0)
            lse[:, i0:i1] = (m + np.log(l))[..., 0]  # -inf + log 0 = -inf
    return out, lse


def attention_backward_tiled(q, k, v, out, lse, dout, causal=False, scale=None, block_q=BLOCK, block_k=BLOCK):
    """Gradients ``dq, dk, dv`` of :func:`attention_forward_tiled` from ``dout = dL/dout``, tile by
    tile; zero wherever a row is fully masked."""
    c = _scale(q, scale)
    tq, tk = q.shape[1], k.shape[1]
    visible = _visible(tq, tk, causal)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    drow = (dout * out).sum(axis=-1, keepdims=True)  # D (N, Tq, 1)
    shift = np.where(lse > -np.inf, lse, 0)[..., None]  # a fully masked row: P = exp(-inf - 0) = 0
    for j0 in range(0, tk, block_k):  # a key block; its dk, dv are complete after the inner loop
        j1 = min(j0 + block_k, tk)
        first_row = max(0, j0 - (tk - tq)) if causal else 0  # rows above it see none of these keys
        for i0 in range(first_row - first_row % block_q, tq, block_q):
            i1 = min(i0 + block_q, tq)
            s = c * (q[:, i0:i1] @ k[:, j0:j1].transpose(0, 2, 1))  # (N, bq, bk)
            p = np.exp(np.where(visible[i0:i1, j0:j1], s, -np.inf) - shift[:, i0:i1])  # P
            dv[:, j0:j1] += p.transpose(0, 2, 1) @ dout[:, i0:i1]
            dp = dout[:, i0:i1] @ v[:, j0:j1].transpose(0, 2, 1)
            ds = p * (dp - drow[:, i0:i1])  # dS
            dq[:, i0:i1] += c * (ds @ k[:, j0:j1])
            dk[:, j0:j1] += c * (ds.transpose(0, 2, 1) @ q[:, i0:i1])
    return dq, dk, dv
