"""The gradient of an embedding lookup: rows of dy scatter-added into the rows of the table.

With ``y[p] = weight[ids[p]]`` for every position p, ``dweight[v] = sum of dy[p] over the
positions where ids[p] == v``. An id that appears twice must collect both rows, so this is an
*add*, not an assignment (``dweight[ids] = dy`` would keep only the last occurrence).
``embedding_backward_ref`` is ``np.add.at``; the numba loop is the same thing without
``np.add.at``'s per-element overhead (it handles any index and any ufunc, one element at a time).
"""
import numpy as np

from .systems.jit import njit

__all__ = ["embedding_backward_ref", "embedding_backward"]


def embedding_backward_ref(ids, dy, num_embeddings):
    """ids (P,) ints, dy (P, C) -> dweight (num_embeddings, C) in dy's dtype."""
    dweight = np.zeros((num_embeddings, dy.shape[1]), dtype=dy.dtype)
    np.add.at(dweight, ids, dy)
    return dweight


@njit
def _scatter_add_rows(ids, dy, dweight):
    """dweight[ids[p]] += dy[p] for every position p, in order (serial: two positions may share an id)."""
    for p in range(ids.shape[0]):
        row = ids[p]
        for c in range(dy.shape[1]):
            dweight[row, c] += dy[p, c]


def embedding_backward(ids, dy, num_embeddings):
    """Numba version of :func:`embedding_backward_ref`; ids must lie in [0, num_embeddings)."""
    ids = np.asarray(ids).reshape(-1)
    if ids.dtype.kind not in "iu" or dy.ndim != 2 or dy.shape[0] != ids.shape[0]:
        raise ValueError(f"embedding_backward: need integer ids (P,) and dy (P, C); got ids {ids.dtype} "
                         f"{ids.shape}, dy {dy.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_embeddings):
        bad = ids[(ids < 0) | (ids >= num_embeddings)][0]
        raise ValueError(f"embedding_backward: id {bad} is outside [0, {num_embeddings})")
    dweight = np.zeros((num_embeddings, dy.shape[1]), dtype=dy.dtype)
    _scatter_add_rows(ids.astype(np.int64, copy=False), np.ascontiguousarray(dy), dweight)
    return dweight
