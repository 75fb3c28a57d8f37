"""Find the gemm functions of NumPy's own OpenBLAS, so numba kernels can call them.

:data:`OPENBLAS` holds the addresses of ``cblas_sgemm`` / ``cblas_dgemm`` and OpenBLAS's thread
count setter and getter. :mod:`.cblas` makes them callable from compiled code (so that
``kernels/blas.py`` can run matrix products on numba's thread pool, one gemm call per thread),
and :mod:`.jit` picks the OpenMP wait policy by whether they were found. Pure ctypes, no numba:
it runs before numba's threads start.

NumPy 2's wheels ship an ILP64 OpenBLAS (64-bit integers) whose symbols carry a ``scipy_``
prefix and a ``64_`` suffix (``scipy_cblas_sgemm64_``). Anything else (NumPy on MKL or
Accelerate, a 32-bit-integer OpenBLAS, no /proc) leaves :data:`OPENBLAS` None, and tinyllm uses
``np.matmul``. ``TINYLLM_POOL_BLAS=0`` turns the search off.
"""
import ctypes
import os

from collections import namedtuple

import numpy as np

Gemm = namedtuple("Gemm", "sgemm dgemm set_num_threads get_num_threads")

# (cblas_sgemm, cblas_dgemm, set_num_threads, get_num_threads) as ILP64 OpenBLAS builds name them
_CANDIDATES = [
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", "scipy_openblas_set_num_threads64_",
     "scipy_openblas_get_num_threads64_"),
    ("cblas_sgemm64_", "cblas_dgemm64_", "openblas_set_num_threads64_", "openblas_get_num_threads64_"),
]


def _loaded_openblas_paths():
    """Paths of the OpenBLAS shared libraries loaded into this process (Linux's /proc)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isfile(p))


def _find():
    """Gemm (addresses of cblas_sgemm and cblas_dgemm, set_num_threads, get_num_threads) of
    NumPy's OpenBLAS, or None."""
    np.matmul(np.ones((2, 2)), np.ones((2, 2)))  # NumPy's BLAS is loaded by now
    for path in _loaded_openblas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for names in _CANDIDATES:
            if all(hasattr(lib, name) for name in names):
                sgemm, dgemm, setter, getter = (getattr(lib, name) for name in names)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                address = ctypes.cast(sgemm, ctypes.c_void_p).value, ctypes.cast(dgemm, ctypes.c_void_p).value
                return Gemm(*address, setter, getter)
    return None


OPENBLAS = _find() if os.environ.get("TINYLLM_POOL_BLAS", "1") != "0" else None
