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
  ``Conv1D`` weights are when a Hugging Face file is memory-mapped (``models/io.py``). The sum
  over k is cut into fixed chunks of ``_COLS_CHUNK`` weight rows; each chunk's rows (one
  contiguous stretch of memory) are added, four at a time and scaled by x[m, k], into that
  chunk's partial outputs, kept in the L1 cache; then the partial outputs are added in chunk
  order::

      part[c, m, n] = sum_{k in chunk c} x[m, k] W^T[k, n]      y = (part[0] + part[1]) + ...

  In parallel the threads share the chunks, so each reads one contiguous stretch of the weight
  (cutting the columns among threads instead made each read a slice of every row, with a jump
  after each: GPT-2's Conv1D GEMVs on 2 threads ran ~10 % slower at batch 1 and ~25 % at batch
  8; docs/performance.md). (Four rows a pass streamed GPT-2's weights faster than eight, two or
  sixteen: fewer concurrent streams than eight, fewer loads and stores of the outputs than two.)

Every output element is computed by the same code in the same order whichever block or thread
computes it (the chunks are fixed by K alone), so the results do not depend on the thread count
or on M (a sequence gets the same logits alone or in a batch). Small products (below ``SERIAL_WORK`` multiply-adds) run on
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
_COLS_ACC = 8192  # columns layout: floats of an output block (32 KiB in float32, the L1 cache)
_COLS_CHUNK = 128  # columns layout: weight rows per chunk of the sum over k (a multiple of 4)


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
def _cols_sum(x, wt, k0, k1, lo, hi, acc, at):
    """acc[:, at:at + hi - lo] = x[:, k0:k1] @ wt[k0:k1, lo:hi], acc (M, >= at + hi - lo)
    C-contiguous: the weight rows' slices are read once, four at a time, and added into all M
    rows of the block (kept in the L1 cache). Every output sums over k in the same groups of
    four whatever the block."""
    m_rows, w = x.shape[0], hi - lo
    for m in range(m_rows):
        acc[m, at:at + w] = 0
    k = k0
    if m_rows == 1:  # (one sequence: the loop without the loop over rows, which LLVM compiles better)
        acc0, x0 = acc[0, at:at + w], x[0]
        while k + 4 <= k1:
            _axpy4(acc0, x0, wt, k, lo)
            k += 4
    while k + 4 <= k1:
        for m in range(m_rows):
            _axpy4(acc[m, at:at + w], x[m], wt, k, lo)
        k += 4
    while k < k1:
        row = wt[k, lo:hi]
        for m in range(m_rows):
            _axpy(acc[m, at:at + w], x[m, k], row)
        k += 1


@njit
def _add_into(total, at, part, part_at, w):
    """total[:, at:at + w] += part[:, part_at:part_at + w]."""
    for m in range(total.shape[0]):
        t, p = total[m, at:at + w], part[m, part_at:part_at + w]
        for j in range(w):
            t[j] += p[j]


@njit
def _add_bias(y, bias, has_bias):
    """y[m] += bias for every row m, when there is a bias."""
    if has_bias:
        for m in range(y.shape[0]):
            row = y[m]
            for j in range(y.shape[1]):
                row[j] += bias[j]


@njit
def _cols_serial(x, wt, bias, has_bias, y, width, chunk):
    """One block of ``width`` output columns at a time, on the calling thread: the chunks'
    partial sums of the block, each added to the block's total as soon as it is computed (the
    additions of :func:`_cols_parallel`, in the same order, without its buffer of every chunk)."""
    depth, n = wt.shape
    part = np.empty((x.shape[0], width), x.dtype)
    for lo in range(0, n, width):
        hi = min(n, lo + width)
        _cols_sum(x, wt, 0, min(depth, chunk), lo, hi, y, lo)
        for k0 in range(chunk, depth, chunk):
            _cols_sum(x, wt, k0, min(depth, k0 + chunk), lo, hi, part, 0)
            _add_into(y, lo, part, 0, hi - lo)
    _add_bias(y, bias, has_bias)


@njit(parallel=True)
def _cols_parallel(x, wt, bias, has_bias, y, width, chunk):
    """prange over the chunks of ``chunk`` weight rows: each thread reads one contiguous stretch
    of the weight and sums it, a block of ``width`` columns at a time, into its chunks' own
    partial outputs; then those are added in chunk order:
    y = ((part[0] + part[1]) + part[2]) + ... (+ bias)."""
    depth, n = wt.shape
    chunks = max(1, (depth + chunk - 1) // chunk)  # (one empty chunk when K = 0)
    parts = np.empty((chunks, x.shape[0], n), x.dtype)
    for c in prange(chunks):
        for lo in range(0, n, width):
            _cols_sum(x, wt, c * chunk, min(depth, (c + 1) * chunk), lo, min(n, lo + width), parts[c], lo)
    y[:] = parts[0]
    for c in range(1, chunks):
        _add_into(y, 0, parts[c], 0, n)
    _add_bias(y, bias, has_bias)


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
        # the sum over k in fixed chunks of _COLS_CHUNK weight rows, each chunk's partial outputs
        # summed in blocks of columns that fit the L1 cache, then the chunks added in order
        width = max(16, _COLS_ACC // m)
        if serial:
            _cols_serial(x, stored, bias, has_bias, y, width, _COLS_CHUNK)
        else:
            _cols_parallel(x, stored, bias, has_bias, y, width, _COLS_CHUNK)
    elif serial:
        _rows_block(x, stored, bias, has_bias, y, 0, n)
    else:
        _rows_parallel(x, stored, bias, has_bias, y, _ROWS_PER_BLOCK)
