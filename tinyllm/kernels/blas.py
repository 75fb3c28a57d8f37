"""Matrix products on numba's thread pool: NumPy's own OpenBLAS gemm, one call per thread.

Why. ``np.matmul`` runs OpenBLAS on OpenBLAS's own worker threads, and tinyllm's other kernels
run on numba's (OpenMP) threads. Two pools of threads on the same cores cannot both keep their
threads awake between calls without stealing each other's cores, so one of them has to sleep
after every call, and a training step, which alternates matmul, kernel, matmul, ..., pays for
waking the other core hundreds of times. Here ``C = A @ B`` is cut into blocks of rows (or of
columns, when C is wide and short), one per numba thread, and each thread calls OpenBLAS's
one-threaded gemm on its block: the same BLAS code, one pool of threads for the whole step,
whose threads may spin between kernels (see ``systems/jit.py``).

How. ``systems/cblas.py`` makes NumPy's ``cblas_sgemm`` / ``cblas_dgemm`` callable from
compiled code as :func:`gemm` on 2-D views (blocks of rows or columns are passed as views, no
copies). Where it is not available, :func:`matmul` is ``np.matmul``, the plain twin it is
tested against; so it is under ``NUMBA_DISABLE_JIT=1`` and ``TINYLLM_POOL_BLAS=0``.

The split gives the same numbers as one big call: every element of C is still one dot product
over the whole depth K, and it is computed by the same kernel. ``linear_forward_ref`` and
``linear_backward_ref`` are a Linear layer's products in plain NumPy (the reference mode's).
"""
import numba
import numpy as np

from . import gemv as _gemv
from .systems.cblas import available, blas_one_thread, gemm, restore_blas_threads  # noqa: F401
from .systems.jit import get_num_threads, njit, prange

# Below this many multiply-adds OpenBLAS itself runs on the calling thread, and so does np.matmul
# here: a parallel launch would cost more than it saves (one token's products while generating).
SMALL = 1 << 18

_AVAILABLE = available()


@njit
def gemm_tile(c, a, a_t, b, b_t, m, n, depth, accumulate):
    """c[:m, :n] = A @ B  (or += when accumulate), one single-threaded BLAS call on the caller's thread.

    A is a[:m, :depth], or a[:depth, :m]^T when a_t; B is b[:depth, :n], or b[:n, :depth]^T when
    b_t. Each of a, b, c is a 2-D array whose rows are contiguous (unit stride along axis 1) and
    may lie any distance apart: a C-contiguous array, a row slice of one (``q[i0:]``), or one
    head's rows inside a packed (B, T, 3, H, D) projection.
    """
    gemm(a, a_t, b, b_t, c, m, n, depth, 1.0 if accumulate else 0.0)


@njit(parallel=True)
def _gemm_blocks(a, a_t, b, b_t, c, parts):
    """c = A @ B in ``parts`` blocks, one BLAS call each, in parallel.

    A = a (M, K), or a^T when a_t (a is then (K, M)); B = b (K, N), or b^T when b_t (b is (N, K));
    all C-contiguous. Blocks are rows lo..hi of C (rows of A) when M >= N, else columns lo..hi
    of C (columns of B); each is passed to BLAS as a view:

        rows:     A block = a[lo:hi], or a[:, lo:hi] (a^T);   C block = c[lo:hi]
        columns:  B block = b[:, lo:hi], or b[lo:hi] (b^T);   C block = c[:, lo:hi]
    """
    m, n = c.shape
    depth = a.shape[0] if a_t else a.shape[1]
    by_rows = m >= n
    extent = m if by_rows else n
    step = (extent + parts - 1) // parts
    saved = blas_one_thread()
    for p in prange(parts):
        lo = p * step
        hi = min(extent, lo + step)
        if hi > lo:
            if by_rows:
                a_block = a[:, lo:hi] if a_t else a[lo:hi]
                gemm(a_block, a_t, b, b_t, c[lo:hi], hi - lo, n, depth, 0.0)
            else:
                b_block = b[lo:hi] if b_t else b[:, lo:hi]
                gemm(a, a_t, b_block, b_t, c[:, lo:hi], m, hi - lo, depth, 0.0)
    restore_blas_threads(saved)


def _rows_in_order(x):
    """x is C-contiguous and its row stride is a legal gemm leading dimension (>= its row length).
    NumPy's flag alone is not enough: it ignores the stride of a size-1 axis, so the (1, K)
    transpose of a column vector is "C-contiguous" with a row stride of one element, which
    OpenBLAS rejects ("parameter number 10 had an illegal value"), leaving C unwritten."""
    return x.flags.c_contiguous and x.strides[-2] >= x.shape[-1] * x.itemsize


def _c_contiguous(x):
    """(x, False) if x's matrices (last two axes) are C-contiguous, (x with those axes swapped,
    True) if they are transposes of C-contiguous ones; None otherwise."""
    if _rows_in_order(x):
        return x, False
    swapped = np.swapaxes(x, -1, -2)
    if _rows_in_order(swapped):
        return swapped, True
    return None


@njit(parallel=True)
def _gemm_batch(a, a_t, b, b_t, c):
    """c[i] = A[i] @ B[i] for every i, one single-threaded BLAS call per item, items in parallel.
    a (B, M, K) or (B, K, M) when a_t, b (B, K, N) or (B, N, K) when b_t, c (B, M, N), all C-contiguous."""
    m, n = c.shape[1], c.shape[2]
    depth = a.shape[1] if a_t else a.shape[2]
    saved = blas_one_thread()
    for i in prange(c.shape[0]):
        gemm(a[i], a_t, b[i], b_t, c[i], m, n, depth, 0.0)
    restore_blas_threads(saved)


def _batched_matmul(a, b):
    """a @ b for a (..., M, K), b (..., K, N) with the same leading axes (no broadcasting)."""
    pa, pb = _c_contiguous(a), _c_contiguous(b)
    if pa is None or pb is None:
        return np.matmul(a, b)
    c = np.empty((*a.shape[:-1], b.shape[-1]), a.dtype)
    stack = lambda x: x.reshape(-1, *x.shape[-2:])  # noqa: E731  (..., R, C) -> (B, R, C), a view
    _gemm_batch(stack(pa[0]), pa[1], stack(pb[0]), pb[1], stack(c))
    return c


def matmul(a, b):
    """``a @ b`` computed on numba's threads, for a (M, K) @ b (K, N) of one float dtype, each
    C-contiguous or the transpose of a C-contiguous array, and for stacks of such matrices with
    the same leading axes (..., M, K) @ (..., K, N), one BLAS call per matrix;
    ``np.matmul`` for anything else (broadcast batches, 1-D operands, strided views, integers),
    for small products, and where :func:`available` is False."""
    if (not _AVAILABLE or a.ndim < 2 or b.ndim < 2 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64)
            or a.size * b.shape[-1] < SMALL):
        return np.matmul(a, b)
    if a.ndim > 2 or b.ndim > 2:
        if a.ndim == b.ndim and a.shape[:-2] == b.shape[:-2] and a.shape[-1] == b.shape[-2]:
            return _batched_matmul(a, b)
        return np.matmul(a, b)
    pa, pb = _c_contiguous(a), _c_contiguous(b)
    if pa is None or pb is None or a.shape[1] != b.shape[0]:
        return np.matmul(a, b)
    c = np.empty((a.shape[0], b.shape[1]), a.dtype)
    _gemm_blocks(pa[0], pa[1], pb[0], pb[1], c, min(get_num_threads(), max(c.shape)))
    return c


# ----------------------------------------------------------------------------------------------
# a linear layer's products with the bias work folded into the same parallel loop


@njit(parallel=True)
def _linear_forward_blocks(x, w, bias, y, parts):
    """y = x @ w^T + bias, rows of y in ``parts`` blocks: each block's rows are first set to
    the bias, then one gemm adds x @ w^T to them (beta = 1), as PyTorch's addmm does. With
    beta = 0 OpenBLAS would first write zeros over the block and the bias would take another
    pass over it after the product: two passes over y saved.
    x (M, K), w (N, K), bias (N,), y (M, N), all C-contiguous."""
    m, n = y.shape
    depth = x.shape[1]
    step = (m + parts - 1) // parts
    saved = blas_one_thread()
    for p in prange(parts):
        lo, hi = p * step, min(m, (p + 1) * step)
        if hi > lo:
            for r in range(lo, hi):
                for c in range(n):
                    y[r, c] = bias[c]
            gemm(x[lo:hi], False, w, True, y[lo:hi], hi - lo, n, depth, 1.0)
    restore_blas_threads(saved)


@njit(parallel=True)
def _linear_backward_tasks(g, x, w, dx, dw, db, halves):
    """dx = g @ w and dw = g^T @ x side by side: tasks 0 .. halves - 1 each compute a block of
    rows of dx (and the float64 column sums of those rows of g, for the bias gradient db),
    tasks halves .. 2 halves - 1 a block of rows of dw. With 2 threads that is one whole
    product per thread (the two cost the same FLOPs): each call is larger, and the threads
    start once instead of twice. g (M, N), x (M, K), w (N, K), dx (M, K), dw (N, K), db (N,)."""
    m, n = g.shape
    k = x.shape[1]
    bias_sums = np.empty((halves, n))  # float64 column sums of g, one row per dx block
    saved = blas_one_thread()
    for task in prange(2 * halves):
        part = task % halves
        if task < halves:  # rows lo..hi of dx = g[lo:hi] @ w, and their column sums of g
            step = (m + halves - 1) // halves
            lo, hi = part * step, min(m, (part + 1) * step)
            bias_sums[part, :] = 0.0
            if hi > lo:
                gemm(g[lo:hi], False, w, False, dx[lo:hi], hi - lo, k, n, 0.0)
                for r in range(lo, hi):
                    for c in range(n):
                        bias_sums[part, c] += g[r, c]
        else:  # rows lo..hi of dw = (g^T)[lo:hi] @ x: columns lo..hi of g
            step = (n + halves - 1) // halves
            lo, hi = part * step, min(n, (part + 1) * step)
            if hi > lo:
                gemm(g[:, lo:hi], True, x, False, dw[lo:hi], hi - lo, k, m, 0.0)
    restore_blas_threads(saved)
    for c in range(n):
        total = 0.0
        for part in range(halves):
            total += bias_sums[part, c]
        db[c] = total


def _split_by_rows(a, w):
    """Whether a (M, .) and w can take the row-split loops below: both C-contiguous, one float
    dtype, a product above SMALL, and enough rows (else :func:`matmul` chooses the split)."""
    return (_AVAILABLE and a.ndim == 2 and w.ndim == 2 and a.dtype == w.dtype
            and a.dtype in (np.float32, np.float64) and _rows_in_order(a) and _rows_in_order(w)
            and a.shape[0] >= min(256, max(w.shape)) and a.shape[0] * w.size >= SMALL)


def linear_forward_ref(x, w, bias, inference=False):
    """``x @ w.T + bias`` (bias may be None) for x (M, K), w (N, K) -> (M, N), in NumPy.
    (``inference`` only steers the fast kernel's choice; the result is the same product.)"""
    y = np.matmul(x, w.T)
    return y if bias is None else y + bias


def linear_backward_ref(g, x, w, need_dx=True, need_dw=True, need_db=True):
    """Gradients of ``y = x @ w.T + b`` for g (M, N), x (M, K), w (N, K), in NumPy: ``dx = g @ w``
    (M, K), ``dw = g.T @ x`` (N, K), ``db = g.sum(axis=0)`` (N,), each None where not needed."""
    dx = np.matmul(g, w) if need_dx else None
    dw = np.matmul(g.T, x) if need_dw else None
    return dx, dw, (g.sum(axis=0) if need_db else None)


def _few_rows(x, w, bias):
    """Whether :func:`.gemv.gemv` takes x @ w.T + bias: at most MAX_ROWS rows of x (decoding), one
    float dtype, w contiguous or the transpose of a contiguous array, compiled kernels on (with
    the JIT disabled its loops would run in the interpreter, a GPT-2 token in minutes: NumPy's
    matmul instead)."""
    return (x.ndim == 2 and x.shape[0] <= _gemv.MAX_ROWS and w.ndim == 2 and x.dtype == w.dtype
            and x.dtype in (np.float32, np.float64) and x.shape[1] == w.shape[1] and x.shape[1] > 0
            and (bias is None or (bias.dtype == x.dtype and bias.shape == (w.shape[0],)))
            and not numba.config.DISABLE_JIT
            and (w.flags.c_contiguous or w.T.flags.c_contiguous))


def linear_forward(x, w, bias, inference=False):
    """``x @ w.T + bias`` (bias may be None) for x (M, K), w (N, K): with ``inference=True`` (no
    gradient will be taken: generating text) and a few rows of x, :func:`.gemv.gemv`, which reads
    each weight once; else on numba's threads, the bias written first and the product added to
    it, where possible; else :func:`matmul` and NumPy's add. (Training never takes gemv, so its
    numbers do not depend on how many rows a batch has.)"""
    if inference and _few_rows(x, w, bias):
        return _gemv.gemv_checked(np.ascontiguousarray(x), w, bias)
    if bias is None or bias.dtype != x.dtype or not _split_by_rows(x, w):
        y = matmul(x, w.T)
        if bias is not None:
            y += bias
        return y
    y = np.empty((x.shape[0], w.shape[0]), x.dtype)
    _linear_forward_blocks(x, w, np.ascontiguousarray(bias), y, min(get_num_threads(), x.shape[0]))
    return y


def linear_backward(g, x, w, need_dx=True, need_dw=True, need_db=True):
    """Gradients of ``y = x @ w.T + b``: ``(g @ w, g.T @ x, g.sum(axis=0))``, each None where not
    needed, for g (M, N), x (M, K), w (N, K). Where possible the two products run side by side
    on numba's threads and the bias gradient's column sums (float64) ride along with dx."""
    if not (need_dx and need_dw) or not (_split_by_rows(g, w) and _rows_in_order(x) and x.dtype == g.dtype):
        dx = matmul(g, w) if need_dx else None
        dw = matmul(g.T, x) if need_dw else None
        return dx, dw, (g.sum(axis=0) if need_db else None)
    dx = np.empty((g.shape[0], w.shape[1]), g.dtype)
    dw = np.empty((g.shape[1], x.shape[1]), g.dtype)
    db = np.empty(g.shape[1], g.dtype)
    _linear_backward_tasks(g, x, w, dx, dw, db, max(1, get_num_threads() // 2))
    return dx, dw, (db if need_db else None)
