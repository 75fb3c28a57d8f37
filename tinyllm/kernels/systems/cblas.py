"""NumPy's OpenBLAS gemm, callable from compiled numba code (the pointer-level part of ``blas.py``).

:mod:`.openblas` finds the addresses of ``cblas_sgemm`` / ``cblas_dgemm`` and OpenBLAS's
thread-count setter and getter in this process. Here they are registered with LLVM under fixed
names and declared as external C functions, so that a compiled (and cached) kernel calls them
directly, with no Python in between. :func:`gemm` is the one call site: it takes 2-D array views
and hands BLAS their data addresses and row strides. Where no such OpenBLAS was found, or under
``NUMBA_DISABLE_JIT=1``, :func:`available` is False and ``kernels/blas.py`` uses ``np.matmul``.
"""
import ctypes

import numba
import numpy as np

from .jit import njit
from .openblas import OPENBLAS as _FOUND

__all__ = ["available", "gemm", "blas_one_thread", "restore_blas_threads"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

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
        and it is atomic for Python: a kernel holds the GIL from start to end, so no other
        Python thread can run a kernel in between. (A Python context manager with ctypes calls
        and a lock around each kernel would cost far more than the kernels' own launch.)
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
    """True where compiled kernels can call NumPy's BLAS (an ILP64 OpenBLAS was found)."""
    return _gemm32 is not None


@njit
def gemm(a, a_t, b, b_t, c, m, n, depth, beta):
    """One single-threaded BLAS call on the caller's thread:  c[:m, :n] = A @ B + beta * c[:m, :n].

    A is a[:m, :depth], or a[:depth, :m]^T when a_t; B is b[:depth, :n], or b[:n, :depth]^T when
    b_t. a, b, c are 2-D views whose rows are contiguous (unit stride along axis 1) and may lie
    any distance apart: BLAS gets each view's data address and its row stride (the "leading
    dimension"), so a block of rows or columns of a larger array is passed without a copy.
    """
    lda, ldb, ldc = a.strides[0] // a.itemsize, b.strides[0] // b.itemsize, c.strides[0] // c.itemsize
    trans_a = _TRANS if a_t else _NO_TRANS
    trans_b = _TRANS if b_t else _NO_TRANS
    if a.itemsize == 4:
        _gemm32(_ROW_MAJOR, trans_a, trans_b, m, n, depth, np.float32(1), a.ctypes.data, lda, b.ctypes.data, ldb,
                np.float32(beta), c.ctypes.data, ldc)
    else:
        _gemm64(_ROW_MAJOR, trans_a, trans_b, m, n, depth, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
                c.ctypes.data, ldc)
