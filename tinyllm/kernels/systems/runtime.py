"""Process settings that make a training step fast, applied once when tinyllm is imported.

Both work around costs that no kernel can see, because they happen between kernels:

* **OpenBLAS threads.** NumPy's matmul runs on OpenBLAS, whose worker threads keep spinning for
  a while after every matmul, on the very cores that tinyllm's numba kernels need next: a
  training step then ran slower by a random amount. ``OPENBLAS_THREAD_TIMEOUT=4`` sends them
  to sleep at once (waking them costs a few microseconds per matmul). OpenBLAS reads the
  variable when it is loaded, at NumPy's import, so this works when tinyllm is imported before
  NumPy; otherwise export it yourself. (Where tinyllm can call OpenBLAS from its own threads,
  ``kernels/blas.py``, its training matmuls do not wake OpenBLAS's threads at all; the setting
  still covers every other ``np.matmul``.)
* **Page faults.** A training step allocates its activations afresh. glibc's malloc hands out
  blocks over a threshold (adaptive, from 128 KiB) as brand-new pages from the kernel (mmap)
  and gives freed memory back, so every step touched thousands of new pages, each a page fault
  that zero-fills it: a sizeable part of a step. Serving every block from the heap
  (``M_MMAP_MAX = 0``; also mmap threshold 32 MiB) and keeping up to 1 GiB of freed heap
  (``M_TRIM_THRESHOLD``) lets the next step reuse the same pages. The price: memory freed by a
  step is kept for reuse rather than returned to the operating system, so RSS stays at its
  peak.

The measurements behind both are in docs/performance.md. Set ``TINYLLM_TUNE_RUNTIME=0`` before
importing tinyllm to leave the process untouched. A value you set yourself
(``OPENBLAS_THREAD_TIMEOUT``, ``MALLOC_MMAP_THRESHOLD_``, ...) always wins.
"""
import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30

applied = {}  # what was changed, for the curious and for the tests


def _tune_openblas():
    if "numpy" not in sys.modules and "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"
        applied["OPENBLAS_THREAD_TIMEOUT"] = 4


def _tune_malloc():
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_")):
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        applied["M_MMAP_THRESHOLD"] = MMAP_THRESHOLD
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        applied["M_TRIM_THRESHOLD"] = TRIM_THRESHOLD
    if mallopt(_M_MMAP_MAX, 0) == 1:  # blocks of any size from the heap, none from mmap
        applied["M_MMAP_MAX"] = 0


if os.environ.get("TINYLLM_TUNE_RUNTIME", "1") != "0":
    _tune_openblas()
    _tune_malloc()
