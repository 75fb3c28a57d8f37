"""Systems plumbing that makes the kernels fast. A learner may skip this whole folder.

Nothing here is about the mathematics of a Transformer: it is how tinyllm gets numba, OpenBLAS
and the C library to work well together on a CPU. The kernels one level up use it; reading them
(or running in reference mode, ``tinyllm.use_reference()``, where none of it runs) needs none of
it. What each file does:

===============  ===========================================================================
``runtime``      process settings applied when tinyllm is imported: OpenBLAS's thread timeout
                 and glibc's malloc thresholds (``TINYLLM_TUNE_RUNTIME=0`` turns them off)
``jit``          the one place that calls numba's compiler: ``njit`` (on-disk cache, numpy
                 error model), the thread count, and clearing the cache when a source changes
``precompile``   with an empty cache, compiling a training step's kernels in parallel worker
                 processes (one per core) instead of one after the other
``openblas``     finding the gemm functions of NumPy's own OpenBLAS in this process (ctypes)
``cblas``        calling those gemms from compiled numba code, by address, one thread each
``address``      many arrays handed to one kernel by their data addresses (the gradients of
                 all parameters at once, for clipping and AdamW)
``intrinsics``   a hand-written LLVM instruction (a float32 bit cast) for the vectorised exp
===============  ===========================================================================

``runtime`` must run before NumPy is imported (OpenBLAS reads its settings when it loads), so
this package's ``__init__`` imports nothing: ``tinyllm.kernels`` imports ``runtime`` first.
"""
