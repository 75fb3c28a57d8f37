"""Matrix products on numba's thread pool: NumPy's own OpenBLAS gemm, one call per thread.

Why. ``np.matmul`` runs OpenBLAS on OpenBLAS's own worker threads, and tinyllm's other kernels
run on numba's (OpenMP) threads. Two pools of threads on the same cores cannot both keep their
threads awake between calls without stealing each other's cores, so one of them has to sleep
after every call, and a training step, which alternates matmul, kernel, matmul, ..., pays for
waking the other core hundreds of times. Here ``C = A @ B`` is cut into blocks of rows (or of
columns, when C is wide and short), one per numba thread, and each thread calls OpenBLAS's
one-threaded gemm on its block: the same BLAS code, one pool of threads for the whole step,
whose threads may spin between kernels (see ``_jit.py``).

How. :mod:`._openblas` finds ``cblas_sgemm`` / ``cblas_dgemm`` in NumPy's OpenBLAS; their
addresses are registered with LLVM under fixed names, which the compiled (and cached) kernel
calls. Where they are not found, :func:`matmul` is ``np.matmul``, the plain twin it is tested
against; so it is under ``NUMBA_DISABLE_JIT=1`` and ``TINYLLM_POOL_BLAS=0``.

The split gives the same numbers as one big call: every element of C is still one dot product
over the whole depth K, and it is computed by the same kernel.
"""
import ctypes

import numba
import numpy as np

from ._jit import get_num_threads, njit, prange
from ._openblas import OPENBLAS as _FOUND

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# Below this many multiply-adds OpenBLAS itself runs on the calling thread, and so does np.matmul
# here: a parallel launch would cost more than it saves (one token's products while generating).
SMALL = 1 << 18

_gemm32 = _gemm64 = None
if _FOUND is not None and not numba.config.DISABLE_JIT:
    import llvmlite.binding as _llvm
    from numba import types as _t

    _llvm.add_symbol("tinyllm_cblas_sgemm", _FOUND.sgemm)
    _llvm.add_symbol("tinyllm_cblas_dgemm", _FOUND.dgemm)

    def _cblas_gemm(symbol, real):
        # void cblas_?gemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
        i32, i64, ptr = _t.int32, _t.int64, _t.uintp
        return _t.ExternalFunction(symbol, _t.void(i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64,
                                                   real, ptr, i64))

    _gemm32 = _cblas_gemm("tinyllm_cblas_sgemm", _t.float32)
    _gemm64 = _cblas_gemm("tinyllm_cblas_dgemm", _t.float64)

    # void openblas_set_num_threads(int), int openblas_get_num_threads(void)
    _address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    _llvm.add_symbol("tinyllm_openblas_set_num_threads", _address(_FOUND.set_num_threads))
    _llvm.add_symbol("tinyllm_openblas_get_num_threads", _address(_FOUND.get_num_threads))
    _set_blas_threads = _t.ExternalFunction("tinyllm_openblas_set_num_threads", _t.void(_t.int32))
    _get_blas_threads = _t.ExternalFunction("tinyllm_openblas_get_num_threads", _t.int32())

    @njit
    def blas_one_thread():
        """Set OpenBLAS to one thread and return the count it had (for restore_blas_threads).

        Every kernel whose numba threads call BLAS begins with this and ends with
        :func:`restore_blas_threads`: otherwise OpenBLAS would split a large enough product
        over its own threads as well, from two callers at once, and its thread server is not
        built for that (it can hang). Inside the compiled kernel the pair is two plain C calls,
        and it is atomic for Python: a kernel holds the GIL from start to end, so
        no other Python thread can run a kernel in between. (As a Python context manager
        around each kernel, with ctypes calls and a lock, it cost ~13 us per kernel in a
        training step, ~0.5 ms a step.)
        """
        saved = _get_blas_threads()
        if saved != 1:
            _set_blas_threads(np.int32(1))
        return saved

    @njit
    def restore_blas_threads(saved):
        if saved != 1:
            _set_blas_threads(np.int32(saved))
else:
    @njit
    def blas_one_thread():
        """No BLAS is called from numba threads here (see above): nothing to set."""
        return 1

    @njit
    def restore_blas_threads(saved):
        pass


def available():
    """True where :func:`matmul` runs on numba's threads (NumPy's BLAS is an ILP64 OpenBLAS)."""
    return _gemm32 is not None


@njit
def _gemm(a, a_t, b, b_t, c, m, n, depth, a_start, b_start, c_start, beta):
    """One BLAS call: the (m, n) block of c at byte address c_start = A-block @ B-block + beta c.
    The leading dimensions are the row strides (in elements) of a, b, c."""
    lda, ldb, ldc = a.strides[0] // a.itemsize, b.strides[0] // b.itemsize, c.strides[0] // c.itemsize
    trans_a = _TRANS if a_t else _NO_TRANS
    trans_b = _TRANS if b_t else _NO_TRANS
    if a.itemsize == 4:
        _gemm32(_ROW_MAJOR, trans_a, trans_b, m, n, depth, np.float32(1), a_start, lda, b_start, ldb,
                np.float32(beta), c_start, ldc)
    else:
        _gemm64(_ROW_MAJOR, trans_a, trans_b, m, n, depth, 1.0, a_start, lda, b_start, ldb, beta, c_start, ldc)


@njit
def gemm_tile(c, a, a_t, b, b_t, m, n, depth, accumulate):
    """c[:m, :n] = A @ B  (or += when accumulate), one single-threaded BLAS call on the caller's thread.

    A is a[:m, :depth], or a[:depth, :m]^T when a_t; B is b[:depth, :n], or b[:n, :depth]^T when
    b_t. Each of a, b, c is a 2-D array whose rows are contiguous (unit stride along axis 1) and
    may lie any distance apart: a C-contiguous array, a row slice of one (``q[i0:]``), or one
    head's rows inside a packed (B, T, 3, H, D) projection.
    """
    _gemm(a, a_t, b, b_t, c, m, n, depth, a.ctypes.data, b.ctypes.data, c.ctypes.data,
          1.0 if accumulate else 0.0)


@njit(parallel=True)
def _gemm_blocks(a, a_t, b, b_t, c, parts):
    """c = A @ B in ``parts`` blocks, one BLAS call each, in parallel.

    A = a (M, K), or a^T when a_t (a is then (K, M)); B = b (K, N), or b^T when b_t (b is (N, K));
    all C-contiguous. Blocks are rows of C (rows of A) when M >= N, else columns of C (columns
    of B). A block starts ``offset`` elements into each array:

        rows r0..:    A at r0 * K (a) or r0 (a^T, a column offset),  C at r0 * N
        columns x0..: B at x0 (b) or x0 * K (b^T, a row offset),     C at x0
    """
    m, n = c.shape
    depth = a.shape[0] if a_t else a.shape[1]
    by_rows = m >= n
    extent = m if by_rows else n
    step = (extent + parts - 1) // parts
    size = c.itemsize
    saved = blas_one_thread()
    for p in prange(parts):
        lo = p * step
        hi = min(extent, lo + step)
        if hi > lo:
            a_start, b_start, c_start = a.ctypes.data, b.ctypes.data, c.ctypes.data
            if by_rows:
                a_start += (lo if a_t else lo * depth) * size
                c_start += lo * n * size
                _gemm(a, a_t, b, b_t, c, hi - lo, n, depth, a_start, b_start, c_start, 0.0)
            else:
                b_start += (lo * depth if b_t else lo) * size
                c_start += lo * size
                _gemm(a, a_t, b, b_t, c, m, hi - lo, depth, a_start, b_start, c_start, 0.0)
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
        _gemm(a[i], a_t, b[i], b_t, c[i], m, n, depth, a[i].ctypes.data, b[i].ctypes.data, c[i].ctypes.data, 0.0)
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
    if (_gemm32 is None or a.ndim < 2 or b.ndim < 2 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64)
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
    pass over it after the product: two passes over y saved (an isolated forward 2-4% faster;
    no measurable change in a small training step).
    x (M, K), w (N, K), bias (N,), y (M, N), all C-contiguous."""
    m, n = y.shape
    depth = x.shape[1]
    step = (m + parts - 1) // parts
    size = y.itemsize
    saved = blas_one_thread()
    for p in prange(parts):
        lo, hi = p * step, min(m, (p + 1) * step)
        if hi > lo:
            for r in range(lo, hi):
                for c in range(n):
                    y[r, c] = bias[c]
            _gemm(x, False, w, True, y, hi - lo, n, depth, x.ctypes.data + lo * depth * size, w.ctypes.data,
                  y.ctypes.data + lo * n * size, 1.0)
    restore_blas_threads(saved)


@njit(parallel=True)
def _linear_backward_tasks(g, x, w, dx, dw, db, halves):
    """dx = g @ w and dw = g^T @ x side by side: tasks 0 .. halves - 1 each compute a block of
    rows of dx (and the float64 column sums of those rows of g, for the bias gradient db),
    tasks halves .. 2 halves - 1 a block of rows of dw. With 2 threads that is one
    whole product per thread (the two cost the same FLOPs): 14% faster than splitting each
    product in turn. g (M, N), x (M, K), w (N, K), dx (M, K), dw (N, K), db (N,)."""
    m, n = g.shape
    k = x.shape[1]
    size = g.itemsize
    bias_sums = np.empty((halves, n))  # float64 column sums of g, one row per dx block
    saved = blas_one_thread()
    for task in prange(2 * halves):
        part = task % halves
        if task < halves:  # rows lo..hi of dx = g[lo:hi] @ w, and their column sums of g
            step = (m + halves - 1) // halves
            lo, hi = part * step, min(m, (part + 1) * step)
            bias_sums[part, :] = 0.0
            if hi > lo:
                _gemm(g, False, w, False, dx, hi - lo, k, n, g.ctypes.data + lo * n * size, w.ctypes.data,
                      dx.ctypes.data + lo * k * size, 0.0)
                for r in range(lo, hi):
                    for c in range(n):
                        bias_sums[part, c] += g[r, c]
        else:  # rows lo..hi of dw = (g^T)[lo:hi] @ x: columns lo..hi of g
            step = (n + halves - 1) // halves
            lo, hi = part * step, min(n, (part + 1) * step)
            if hi > lo:
                _gemm(g, True, x, False, dw, hi - lo, k, m, g.ctypes.data + lo * size, x.ctypes.data,
                      dw.ctypes.data + lo * k * size, 0.0)
    restore_blas_threads(saved)
    for c in range(n):
        total = 0.0
        for part in range(halves):
            total += bias_sums[part, c]
        db[c] = total


def _split_by_rows(a, w):
    """Whether a (M, .) and w can take the row-split loops below: both C-contiguous, one float
    dtype, a product above SMALL, and enough rows (else :func:`matmul` chooses the split)."""
    return (_gemm32 is not None and a.ndim == 2 and w.ndim == 2 and a.dtype == w.dtype
            and a.dtype in (np.float32, np.float64) and _rows_in_order(a) and _rows_in_order(w)
            and a.shape[0] >= min(256, max(w.shape)) and a.shape[0] * w.size >= SMALL)


def linear_forward(x, w, bias):
    """``x @ w.T + bias`` (bias may be None) for x (M, K), w (N, K): on numba's threads, the bias
    written first and the product added to it, where possible; else :func:`matmul` and NumPy's add."""
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
