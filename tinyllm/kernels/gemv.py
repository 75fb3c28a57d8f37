"""``y = x @ W^T + b`` for a few rows of x, each weight read from memory once: a Linear layer
while generating text, one token (per sequence) at a time.

Shapes: x (M, K) with M small (one row per sequence of the batch), W (N, K) as ``Linear``
keeps it, b (N,) or None, y (M, N)::

    y[m, n] = sum_k x[m, k] W[n, k]  (+ b[n])

Why not BLAS's gemm. Decoding one token multiplies a single row by every weight matrix of the
model, so its speed is the speed of reading the weights (GPT-2 124M: 500 MB per token). A gemm
first copies ("packs") the weight into a buffer laid out for its compute kernel and then reads
that copy: for a few rows of x that is two or three passes over the weight instead of one.
These kernels read each weight row once, straight from where it lies, and reuse it for all M
rows of x while it is in the cache.

Two memory layouts of W, both read in place:

* **rows**: W (N, K) C-contiguous, as a tinyllm ``Linear`` stores it (and the tied lm_head,
  which is the (vocab, C) embedding table). Each output is a dot product of two contiguous
  rows; ``fastmath={"reassoc"}`` on the dot-product helper lets LLVM keep its partial sums in
  vector lanes (and the rows of W are read in order, one sequential stream for the prefetcher).
* **columns**: W^T (K, N) C-contiguous, i.e. W is the transpose of a contiguous array, as GPT-2's
  ``Conv1D`` weights are when a Hugging Face file is memory-mapped (``models/io.py``). The
  weight rows are added, four at a time and scaled by x[m, k], into a block of outputs kept in
  the L1 cache (the whole width when one thread does it all, so the weight is read as one
  stream): plain vector code, every output summed over k in the same groups of four. (Four
  rows a pass streamed GPT-2's weights faster than eight, two or sixteen: fewer concurrent
  streams than eight, fewer loads and stores of the outputs than two; docs/performance.md.)

Every output element is computed by the same code in the same order whichever block or thread
computes it, so the results do not depend on the thread count or on M (a sequence gets the
same logits alone or in a batch). Small products (below ``SERIAL_WORK`` multiply-adds) run on
the calling thread: a parallel launch costs more than they do, and on a machine whose cores are
busy waking a second thread can take milliseconds. The serial and parallel paths call the same
block function, so they agree bit for bit.

:func:`gemv_ref` is the NumPy reference; :func:`gemv` takes either layout and is what
``blas.linear_forward`` uses for x with at most ``MAX_ROWS`` rows.
"""
import numpy as np

from .systems.jit import get_num_threads, njit, prange

__all__ = ["gemv_ref", "gemv", "gemv_into", "MAX_ROWS", "SERIAL_WORK"]

# x with at most this many rows takes these kernels (blas.linear_forward); more rows are BLAS's
# strength (benchmarks/bench_kernels.py --gemv, docs/performance.md).
MAX_ROWS = 16
# Below this many multiply-adds one thread does the whole product.
SERIAL_WORK = 1 << 18
_ROWS_PER_BLOCK = 64  # rows layout: weight rows per parallel work item
_COLS_ACC = 8192  # columns layout: floats of the per-block output buffer (32 KiB in float32, the L1 cache)


def gemv_ref(x, w, bias=None):
    """``x @ w.T + bias`` for x (M, K), w (N, K), bias (N,) or None -> (M, N), in NumPy."""
    y = np.matmul(x, w.T)
    return y if bias is None else y + bias


# ----------------------------------------------------------------------------------------------
# rows layout: w (N, K) C-contiguous


@njit(fastmath={"reassoc", "contract"})
def _dot(a, b):
    """sum_k a[k] b[k] of two contiguous rows."""
    total = a.dtype.type(0)
    for k in range(a.shape[0]):
        total += a[k] * b[k]
    return total


@njit
def _one_row(x0, w, bias, has_bias, y0, lo, hi):
    """y0[lo:hi] = w[lo:hi] @ x0 (+ bias[lo:hi]) for one row x0 (K,) of x."""
    if has_bias:
        for n in range(lo, hi):
            y0[n] = _dot(x0, w[n]) + bias[n]
    else:
        for n in range(lo, hi):
            y0[n] = _dot(x0, w[n])


@njit
def _rows_block(x, w, bias, has_bias, y, lo, hi):
    """y[:, lo:hi] = x @ w[lo:hi].T (+ bias[lo:hi]): weight row n is read from memory once (one
    sequential stream through w) and stays in the L1 cache for the M dot products that use it."""
    if x.shape[0] == 1:
        _one_row(x[0], w, bias, has_bias, y[0], lo, hi)
        return
    for n in range(lo, hi):
        wn = w[n]
        for m in range(x.shape[0]):
            y[m, n] = _dot(x[m], wn) + bias[n] if has_bias else _dot(x[m], wn)


@njit(parallel=True)
def _rows_parallel(x, w, bias, has_bias, y, block):
    """prange over blocks of ``block`` weight rows; each writes its own columns of y."""
    n = w.shape[0]
    for b in prange((n + block - 1) // block):
        _rows_block(x, w, bias, has_bias, y, b * block, min(n, (b + 1) * block))


# ----------------------------------------------------------------------------------------------
# columns layout: wt = w.T (K, N) C-contiguous


@njit(fastmath={"contract"})
def _axpy4(acc, a, wt, k, lo):
    """acc[j] += sum_{i < 4} a[k + i] wt[k + i, lo + j] over a contiguous block, in one fixed
    order: four weight rows per pass, so acc is loaded and stored once per four products."""
    a0, a1, a2, a3 = a[k], a[k + 1], a[k + 2], a[k + 3]
    hi = lo + acc.shape[0]
    w0, w1, w2, w3 = wt[k, lo:hi], wt[k + 1, lo:hi], wt[k + 2, lo:hi], wt[k + 3, lo:hi]
    for j in range(acc.shape[0]):
        acc[j] += (a0 * w0[j] + a1 * w1[j]) + (a2 * w2[j] + a3 * w3[j])


@njit(fastmath={"contract"})
def _axpy(acc, a, row):
    """acc[j] += a * row[j] over a contiguous block (the last K % 4 weight rows)."""
    for j in range(acc.shape[0]):
        acc[j] += a * row[j]


@njit
def _cols_block(x, wt, bias, has_bias, y, lo, hi, acc):
    """y[:, lo:hi] = x @ wt[:, lo:hi] (+ bias[lo:hi]): the weight rows' slices lo:hi are read
    once, four at a time, and added into all M rows of the output block, kept in ``acc``
    (M, >= hi - lo). Every output sums over k in the same groups of four whatever lo and hi are."""
    m_rows, depth = x.shape
    width = hi - lo
    for m in range(m_rows):
        for j in range(width):
            acc[m, j] = 0
    k = 0
    if m_rows == 1:  # (one sequence: the loop without the loop over rows, which LLVM compiles better)
        acc0, x0 = acc[0, :width], x[0]
        while k + 4 <= depth:
            _axpy4(acc0, x0, wt, k, lo)
            k += 4
    while k + 4 <= depth:
        for m in range(m_rows):
            _axpy4(acc[m, :width], x[m], wt, k, lo)
        k += 4
    while k < depth:
        row = wt[k, lo:hi]
        for m in range(m_rows):
            _axpy(acc[m, :width], x[m, k], row)
        k += 1
    for m in range(m_rows):
        for j in range(width):
            y[m, lo + j] = acc[m, j] + bias[lo + j] if has_bias else acc[m, j]


@njit
def _cols_serial(x, wt, bias, has_bias, y, block):
    """The blocks of ``block`` output columns one after the other, on the calling thread."""
    n = wt.shape[1]
    acc = np.empty((x.shape[0], block), x.dtype)
    for b in range((n + block - 1) // block):
        _cols_block(x, wt, bias, has_bias, y, b * block, min(n, (b + 1) * block), acc)


@njit(parallel=True)
def _cols_parallel(x, wt, bias, has_bias, y, block):
    """prange over blocks of ``block`` output columns, each with its own output buffer."""
    n = wt.shape[1]
    for b in prange((n + block - 1) // block):
        acc = np.empty((x.shape[0], block), x.dtype)
        _cols_block(x, wt, bias, has_bias, y, b * block, min(n, (b + 1) * block), acc)


# ----------------------------------------------------------------------------------------------
# the entry point


def _check(x, w, bias):
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"gemv: needs x (M, K) and w (N, K); got shapes {x.shape} and {w.shape}")
    if x.dtype not in (np.float32, np.float64) or w.dtype != x.dtype:
        raise ValueError(f"gemv: x and w must share one dtype, float32 or float64; got {x.dtype} and {w.dtype}")
    if bias is not None and (bias.shape != (w.shape[0],) or bias.dtype != x.dtype):
        raise ValueError(f"gemv: bias must be {x.dtype} ({w.shape[0]},), got {bias.dtype} {bias.shape}")


def gemv(x, w, bias=None):
    """Same contract as :func:`gemv_ref`, for w C-contiguous (rows layout) or the transpose of a
    C-contiguous array (columns layout); any other w is copied to C order first."""
    _check(x, w, bias)
    return gemv_checked(np.ascontiguousarray(x), w, bias)


def gemv_checked(x, w, bias):
    """:func:`gemv` for arguments already checked (``blas.linear_forward``): x C-contiguous."""
    y = np.empty((x.shape[0], w.shape[0]), x.dtype)
    has_bias = bias is not None
    bias = np.ascontiguousarray(bias) if has_bias else y[0, :0]  # (an unused empty array of the dtype)
    columns = not w.flags.c_contiguous and w.T.flags.c_contiguous
    stored = w.T if columns else np.ascontiguousarray(w)
    gemv_into(x, stored, columns, bias, has_bias, y, get_num_threads(), SERIAL_WORK)
    return y


@njit
def gemv_into(x, stored, columns, bias, has_bias, y, threads, serial_work):
    """y (M, N) = x (M, K) @ W^T (+ bias) with W as it lies in memory: ``stored`` is W (N, K)
    C-contiguous (rows layout) or, with ``columns``, W^T (K, N) C-contiguous. One thread does it
    all below ``serial_work`` multiply-adds or with ``threads`` 1, else numba's threads share
    it; either way every output gets the same bits. (Compiled, so that a fused decoding step,
    ``kernels/decode.py``, calls it without leaving compiled code.)"""
    m, depth = x.shape
    n = stored.shape[1] if columns else stored.shape[0]
    serial = m * n * depth < serial_work or threads == 1
    if columns:
        # output blocks of at most _COLS_ACC numbers (kept in the L1 cache); in parallel, one per
        # thread. Wider blocks read each weight row in longer runs: one stream when serial, and
        # in parallel a thread's slice of a row is n / threads floats long. (prange hands each
        # thread a fixed, contiguous share of the blocks, so cutting them finer balances nothing;
        # it only shortens the runs. GPT-2's mlp.c_proj, n = 768, on 2 threads: 51 GB/s with 2
        # blocks of 384 floats, 42 GB/s with 4, 32 with 8; docs/performance.md.)
        block = _COLS_ACC // m if serial else min(_COLS_ACC // m, -(-n // threads))
        block = max(16, block)
        if serial:
            _cols_serial(x, stored, bias, has_bias, y, block)
        else:
            _cols_parallel(x, stored, bias, has_bias, y, block)
    elif serial:
        _rows_block(x, stored, bias, has_bias, y, 0, n)
    else:
        _rows_parallel(x, stored, bias, has_bias, y, _ROWS_PER_BLOCK)
