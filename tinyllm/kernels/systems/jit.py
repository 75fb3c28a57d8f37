"""The one place where tinyllm talks to numba's compiler.

Every kernel is decorated with :func:`njit` from here instead of ``numba.njit`` so that

* compiled machine code is cached on disk (``cache=True``): the second run of a script skips the
  compilation (seconds) and starts at once;
* a read-only install (site-packages owned by root, a zip import, ...) where numba has nowhere to
  write its cache falls back to compiling in memory instead of failing at import time;
* ``NUMBA_DISABLE_JIT=1`` turns every kernel back into the plain Python function it is written as,
  so a learner can step through the loops in a debugger (``prange`` then is just ``range``).
"""
import hashlib
import os
from pathlib import Path

from .openblas import OPENBLAS  # noqa: E402
from .precompile import watch  # noqa: E402

# numba's parallel kernels run on an OpenMP thread pool. OpenMP's idle threads spin for a while
# after each kernel (libgomp's default) so that the next kernel starts at once. That is right
# when this pool does all the work: then tinyllm's matmuls run on it too (kernels/blas.py).
# Where they cannot (OPENBLAS None), np.matmul runs on OpenBLAS's own threads, and spinning
# OpenMP threads would hog the cores those need (several times slower matmuls):
# PASSIVE makes them sleep at once. Either must be set before OpenMP is loaded; a user's own
# OMP_WAIT_POLICY wins. (The spin's cost: a user's own threaded np.matmul right after a kernel
# may wait for a core; docs/performance.md.)
if OPENBLAS is None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# How long is "a while": libgomp's default is 300,000 spins. When other programs keep the cores
# busy, a thread that finished its share spins that long at every kernel's end waiting for a
# partner the OS has descheduled, and a step of the code model (examples/train_code.py) on 2
# threads took 1.5-2.3 s instead of 0.1 s (load 3-7). 10,000 spins keep the idle machine's speed
# (28-32 ms vs 28-32 ms a step of the small config, 93-101 vs 102-127 ms for the code model) and
# under that load cut it to 0.4-0.8 s, as fast as one thread (PASSIVE: 0.24-0.45 s there, but
# 12-30% slower on an idle machine). Measured with alternating runs, docs/performance.md.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numba  # noqa: E402
from numba import njit as _numba_njit  # noqa: E402
from numba import prange  # noqa: E402,F401  (re-exported: kernels import prange from here)
from numba.np.ufunc import parallel as _numba_parallel  # noqa: E402

__all__ = ["njit", "prange", "set_num_threads", "get_num_threads"]


def _drop_stale_cache():
    """Delete numba's cached machine code when any kernel source changed.

    numba checks only the source file of the function it caches, but a kernel inlines helpers
    from other files (attention uses ``blas.gemm_tile``): after an edit to ``blas.py`` the
    cached attention would silently keep the old helper. So one hash covers all kernel sources
    (``kernels/`` and this folder) and the choice between BLAS and loop tile products, and a
    change of it clears the cache of both folders. Best effort: a read-only install simply
    keeps its cache. With the JIT disabled nothing is compiled or read from the cache, so it is
    left alone (clearing it there made the next compiled run recompile every kernel).
    """
    if numba.config.DISABLE_JIT:
        return
    kernels = Path(__file__).resolve().parent.parent
    folders = [kernels, kernels / "systems"]
    digest = hashlib.sha256()
    for folder in folders:
        for src in sorted(folder.glob("*.py")):
            digest.update(f"{folder.name}/{src.name}".encode() + src.read_bytes())
    # the attention kernels compile in BLAS calls or their loop twin (attention._tile_product)
    digest.update(b"blas" if OPENBLAS is not None and not numba.config.DISABLE_JIT else b"loops")
    caches = [folder / "__pycache__" for folder in folders]
    if os.environ.get("NUMBA_CACHE_DIR"):  # numba's naming of a source directory's cache there
        for folder in folders:
            subdir = f"{folder.name}_{hashlib.sha1(str(folder).encode()).hexdigest()}"
            caches.append(Path(os.environ["NUMBA_CACHE_DIR"]) / subdir)
    for cache in caches:
        stamp = cache / "kernels-source.sha256"
        try:
            if stamp.is_file() and stamp.read_text() == digest.hexdigest():
                continue
            for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
                f.unlink()
            cache.mkdir(parents=True, exist_ok=True)
            stamp.write_text(digest.hexdigest())
        except OSError:
            pass


_drop_stale_cache()


def njit(fn=None, *, parallel=False, fastmath=False):
    """``numba.njit(cache=True, error_model="numpy")`` that degrades to ``cache=False`` where no
    cache can be written.

    ``error_model="numpy"``: a float division by zero gives inf or nan, as in NumPy, instead of
    raising ZeroDivisionError as Python does. The check Python's model puts before every
    division is a branch, and a branch keeps LLVM from vectorising the loop around it.

    The kernels of a training step compile ahead, in parallel processes, when the first of them
    is missing from the cache (``precompile.py``).
    """
    options = dict(parallel=parallel, fastmath=fastmath, error_model="numpy")

    def decorate(fn):
        try:
            return watch(_numba_njit(cache=True, **options)(fn))
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return _numba_njit(cache=False, **options)(fn)

    return decorate(fn) if fn is not None else decorate


def set_num_threads(n):
    """Use ``n`` threads in the parallel kernels (like ``torch.set_num_threads``)."""
    n = int(n)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"set_num_threads: n={n} is outside 1..{numba.config.NUMBA_NUM_THREADS} "
            "(numba's thread pool size, set by the NUMBA_NUM_THREADS environment variable)"
        )
    numba.set_num_threads(n)


def get_num_threads():
    """numba's thread count for the calling thread (``numba.get_num_threads()``).

    The kernels' wrappers ask before every launch, and numba's public function first takes a
    process-wide lock to check that its thread pool is up (microseconds, before every
    launch); once the pool is up, its private counterpart answers directly. Any numba
    without it takes the public path.
    """
    if getattr(_numba_parallel, "_is_initialized", False):
        return _numba_parallel._get_num_threads()
    return numba.get_num_threads()
