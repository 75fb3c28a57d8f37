"""Matrix multiplication: the matmul the autograd uses, its NumPy reference, and a numba twin.

* :func:`matmul_ref` is ``np.matmul``: the reference (and what reference mode runs).
* :func:`matmul` is what ``a @ b`` on Tensors runs: BLAS, called from numba's threads
  (:mod:`.blas`), because a training step's products are BLAS's strength and running them on
  numba's threads keeps the whole step on one pool of threads.
* :func:`matmul_numba` and :func:`gemm_tile_loops` compute products in plain numba loops, on
  ``_gemm_acc``, a register-blocked kernel (C += A @ B on a tile). They are the loop version of
  what BLAS does, kept for machines where no BLAS can be called from compiled code: there the
  attention kernels take their tile products from :func:`gemm_tile_loops`.
"""
import numpy as np

from .systems.jit import njit, prange
from . import blas as _blas

# Rows of C per parallel work item of matmul_numba (see benchmarks/bench_kernels.py).
ROW_BLOCK = 32


@njit
def _group_bounds(depth_lo, depth_hi, cols, r, rows):
    """For the group of four rows r - r % 4 ... that ``_gemm_acc`` runs together: the union of
    their depth ranges [lo, hi), the end of its part done four at a time, and their largest
    column count. Rows of an incomplete last group run alone and do nothing four at a time."""
    first = r - r % 4
    if first + 4 > rows:
        return depth_lo[r], depth_hi[r], depth_lo[r], cols[r]
    # scalar min/max, not min() of a slice: a slice is an array object built in the hot loop
    lo = min(min(depth_lo[first], depth_lo[first + 1]),
             min(depth_lo[first + 2], depth_lo[first + 3]))
    hi = max(max(depth_hi[first], depth_hi[first + 1]),
             max(depth_hi[first + 2], depth_hi[first + 3]))
    width = max(max(cols[first], cols[first + 1]), max(cols[first + 2], cols[first + 3]))
    return lo, hi, hi - (hi - lo) % 4, width


@njit
def _a_quad(a, a_transposed, row, t):
    """A[row, t : t + 4] where A = a, or A = a^T when a_transposed."""
    if a_transposed:
        return a[t, row], a[t + 1, row], a[t + 2, row], a[t + 3, row]
    return a[row, t], a[row, t + 1], a[row, t + 2], a[row, t + 3]


@njit(fastmath={"contract"})
def _gemm_acc(c, a, a_transposed, b, rows, depth_lo, depth_hi, cols):
    """C += A @ B on a tile, each output row with its own depth range and width:

        c[r, x] += sum_{t in [depth_lo[r], depth_hi[r])} A[r, t] * b[t, x]
            for r < rows, x < cols[r],   where A = a, or A = a^T if a_transposed.

    c (>= rows, >= cols), b (>= depth, >= cols), all C-contiguous; callers pass row slices
    such as ``q[i0:]`` to start at an offset. Loop nest: groups of four rows r..r+3; depth in
    steps of four t..t+3 (the 16 values of A sit in registers); innermost x, a unit-stride
    loop LLVM vectorises. Each loaded ``b[t, x]`` feeds four rows and each ``c[r, x]`` is
    loaded and stored once per four products instead of once per product: the loop is bound
    by arithmetic, not by loads and stores. The one fastmath flag, ``contract``, lets LLVM fuse
    each ``a * b + c`` into one fused multiply-add instruction (one rounding instead of two, as
    BLAS does). Nothing is reassociated: each element's sum is formed in the order written.
    Leftover depths (< 4 per group) and the rows of an incomplete last group run afterwards
    one product at a time, outside the hot loop nest, whose vectorised fast path LLVM would
    otherwise give up.

    The rows of a group run over the union of their depth ranges and their largest width, so
    A must be 0 outside a row's own depth range, and ``c[r, cols[r]:]`` may be written up to
    the group's width. (The callers here, ``matmul_numba`` and ``gemm_tile_loops``, pass the
    same bounds for every row; per-row bounds would let a caller skip masked parts of a tile.)
    """
    for r in range(0, rows - 3, 4):
        lo, hi, quad_end, width = _group_bounds(depth_lo, depth_hi, cols, r, rows)
        for t in range(lo, quad_end, 4):
            p0, p1, p2, p3 = _a_quad(a, a_transposed, r, t)
            q0, q1, q2, q3 = _a_quad(a, a_transposed, r + 1, t)
            u0, u1, u2, u3 = _a_quad(a, a_transposed, r + 2, t)
            w0, w1, w2, w3 = _a_quad(a, a_transposed, r + 3, t)
            for x in range(width):
                b_0, b_1, b_2, b_3 = b[t, x], b[t + 1, x], b[t + 2, x], b[t + 3, x]
                c[r, x] += (p0 * b_0 + p1 * b_1) + (p2 * b_2 + p3 * b_3)
                c[r + 1, x] += (q0 * b_0 + q1 * b_1) + (q2 * b_2 + q3 * b_3)
                c[r + 2, x] += (u0 * b_0 + u1 * b_1) + (u2 * b_2 + u3 * b_3)
                c[r + 3, x] += (w0 * b_0 + w1 * b_1) + (w2 * b_2 + w3 * b_3)
    for r in range(rows):
        lo, hi, quad_end, width = _group_bounds(depth_lo, depth_hi, cols, r, rows)
        for t in range(quad_end, hi):
            a_rt = a[t, r] if a_transposed else a[r, t]
            for x in range(width):
                c[r, x] += a_rt * b[t, x]


@njit
def gemm_tile_loops(c, a, a_t, b, b_t, m, n, depth, accumulate):
    """c[:m, :n] = A @ B (or += when accumulate) in numba loops: the plain twin of
    :func:`tinyllm.kernels.blas.gemm_tile`, with the same arguments, used where no BLAS can be
    called from numba. A is a[:m, :depth] or a[:depth, :m]^T (a_t); B is b[:depth, :n] or
    b[:n, :depth]^T (b_t, copied transposed first so that ``_gemm_acc`` reads it row by row)."""
    if not accumulate:
        for r in range(m):
            for x in range(n):
                c[r, x] = 0
    if b_t:
        b_rows = np.empty((depth, n), b.dtype)  # b_rows[t, x] = b[x, t]
        for x in range(n):
            for t in range(depth):
                b_rows[t, x] = b[x, t]
    else:
        b_rows = np.ascontiguousarray(b[:depth, :n])
    depth_lo = np.zeros(m, np.int64)
    depth_hi = np.full(m, depth, np.int64)
    cols = np.full(m, n, np.int64)
    _gemm_acc(c, a, a_t, b_rows, m, depth_lo, depth_hi, cols)


def matmul_ref(a, b):
    """The reference, the definition written out: ``C[..., i, j] = sum_k A[..., i, k] B[..., k, j]``.

    An einsum, which NumPy evaluates in its own loops (``optimize=False``: no BLAS), so it is
    an oracle independent of the gemm behind ``np.matmul`` and :func:`matmul`; slower than both.
    Shapes as in ``np.matmul``: batch axes broadcast, and a 1-D operand is a row (a) or a column
    (b) vector whose axis is dropped from the result.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul_ref: operands must have at least one axis, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul_ref: shapes {a.shape} and {b.shape} do not align")
    a2 = a[None, :] if a.ndim == 1 else a  # (K,) -> (1, K)
    b2 = b[:, None] if b.ndim == 1 else b  # (K,) -> (K, 1)
    c = np.einsum("...ik,...kj->...ij", a2, b2, optimize=False)
    if b.ndim == 1:
        c = c[..., 0]
    if a.ndim == 1:
        c = c[..., 0, :] if b.ndim > 1 else c[..., 0]
    return c


@njit
def _matmul_rows(a, b, r0, rows, c):
    """c[r0 : r0 + rows] = a[r0 : r0 + rows] @ b.   a (M, K), b (K, N), c (M, N)."""
    depth, width = b.shape
    for r in range(r0, r0 + rows):
        for x in range(width):
            c[r, x] = 0
    depth_lo = np.zeros(rows, np.int64)
    depth_hi = np.full(rows, depth, np.int64)
    cols = np.full(rows, width, np.int64)
    _gemm_acc(c[r0:], a[r0:], False, b, rows, depth_lo, depth_hi, cols)


@njit(parallel=True)
def _matmul_kernel(a, b, row_block, c):
    """prange over (batch, block of ROW_BLOCK rows of C); each item writes only its rows.

    a (B, M, K), b (B, K, N) -> c (B, M, N).
    """
    n_batch, m = a.shape[0], a.shape[1]
    n_blocks = (m + row_block - 1) // row_block
    for item in prange(n_batch * n_blocks):
        i = item // n_blocks
        r0 = (item % n_blocks) * row_block
        _matmul_rows(a[i], b[i], r0, min(row_block, m - r0), c[i])


def _check_operands(fn, a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim not in (2, 3) or b.ndim not in (2, 3) or (a.ndim == 2 and b.ndim == 3):
        raise ValueError(
            f"{fn}: supports (M, K) @ (K, N), (B, M, K) @ (B, K, N) and (B, M, K) @ (K, N); "
            f"got shapes {a.shape} and {b.shape}"
        )
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"{fn}: shapes {a.shape} and {b.shape} do not align: "
                         f"{a.shape[-1]} != {b.shape[-2]}")
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"{fn}: batch sizes of {a.shape} and {b.shape} differ: "
                         f"{a.shape[0]} != {b.shape[0]}")
    if a.dtype not in (np.float32, np.float64) or a.dtype != b.dtype:
        raise ValueError(f"{fn}: operands must share one dtype, float32 or float64; "
                         f"got {a.dtype} and {b.dtype}")
    return a, b


def matmul_numba(a, b):
    """Blocked numba matmul: ``(M, K) @ (K, N)``, ``(B, M, K) @ (B, K, N)`` or
    ``(B, M, K) @ (K, N)``, float32 or float64; returns the dtype of the inputs."""
    a, b = _check_operands("matmul_numba", a, b)
    if a.ndim == 3 and b.ndim == 2:  # one shared b: the batch is just more rows of a
        n_batch, m, depth = a.shape
        return matmul_numba(np.reshape(a, (n_batch * m, depth)), b).reshape(n_batch, m, -1)
    squeeze = a.ndim == 2
    a3 = np.ascontiguousarray(a[None] if squeeze else a)  # (B, M, K)
    b3 = np.ascontiguousarray(b[None] if squeeze else b)  # (B, K, N)
    c = np.empty((a3.shape[0], a3.shape[1], b3.shape[2]), a.dtype)
    _matmul_kernel(a3, b3, ROW_BLOCK, c)
    return c[0] if squeeze else c


def matmul(a, b):
    """The matmul the autograd uses: :func:`tinyllm.kernels.blas.matmul`, NumPy's own OpenBLAS gemm
    called from numba's threads (one call per thread on a block of rows, or per matrix of a
    batch), so that a training step runs on one pool of threads instead of two; ``np.matmul``
    where that BLAS is not found. Same contract as :func:`matmul_ref`.

    Why BLAS and not ``_gemm_acc``: OpenBLAS's kernels pack their operands for the caches and use
    the CPU's widest fused multiply-adds; at every matmul of a GPT step BLAS is several times
    faster (``benchmarks/bench_kernels.py``; the numbers are in docs/performance.md).
    """
    return _blas.matmul(a, b)
