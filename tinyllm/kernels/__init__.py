"""Plain ndarray -> ndarray kernels: a NumPy reference and a numba kernel side by side.

Nothing here knows about :class:`tinyllm.Tensor`; the autograd Functions (:mod:`tinyllm.ops`,
:mod:`tinyllm.functional`, backward() in :mod:`tinyllm.tensor`, :mod:`tinyllm.optim`) call these
through :mod:`.dispatch`, which picks each kernel ``name`` or, in reference mode
(``tinyllm.use_reference()``), its NumPy twin ``name_ref``. Read a module's docstring and its
``_ref`` functions first: they are the math; the numba code below them computes the same faster.

==================  ========================================================================
``dispatch``        the switch between the kernels and their NumPy references
``matmul``          the matmul the autograd uses (BLAS), ``np.matmul``, a numba loop twin
``blas``            BLAS gemm on numba's threads: matmuls, attention tiles, Linear
``attention``       fused (flash-style) scaled-dot-product attention, fwd + bwd
``attention_tiled`` the same tiles and online softmax in NumPy: the step between the two
``layernorm``       fused LayerNorm forward/backward (saves mean and rstd)
``cross_entropy``   fused softmax cross-entropy with ignore_index
``gelu``            GELU (tanh approximation and exact erf), fwd + bwd
``embedding``       the scatter-add gradient of an embedding lookup
``elementwise``     a + b of two same-shape arrays on all cores (residual stream)
``accumulate``      adding up gradients in backward(), and a leaf's .grad
``adamw``           the AdamW update of a parameter group, gradient clipping
``fastmath``        a vectorisable float32 exp shared by the kernels
``systems/``        plumbing for speed (BLAS symbols, addresses, an LLVM intrinsic, numba's
                    cache, process settings): a learner may skip it
==================  ========================================================================

Writing a loop that LLVM turns into vector code (8 float32 lanes at once), learned the hard way:

* Loop over ``range(n)`` of a slice, not over ``range(start, stop)`` of the whole array. numba
  supports negative indices as Python does, so ``x[k]`` with a k it cannot prove non-negative
  gets a wraparound branch per element, and a branch in the loop body stops the vectoriser.
  The kernels hand each chunk to a helper as slices
  (``_gelu_tanh_chunk_f32(x[start:stop], ...)``).
* Compile with ``error_model="numpy"`` (``systems/jit.py``'s ``njit`` does): Python's error model checks each
  division for zero, another branch.
* No calls the vectoriser cannot see through: libm's ``exp`` and ``erf`` are scalar calls, so
  float32 kernels use ``fastmath.exp_f32``, a polynomial LLVM can vectorise.
* A float64 sum is a chain of dependent additions; ``fastmath={"reassoc"}`` on the summing
  helper (only there) lets LLVM keep partial sums in vector lanes.
"""
from .systems import runtime as _runtime  # noqa: F401,I001  (first: process tuning that must precede NumPy)
from .systems.jit import get_num_threads, njit, prange, set_num_threads  # noqa: F401,E402
