"""Plain ndarray -> ndarray kernels: a NumPy reference and a numba kernel side by side.

Nothing here knows about :class:`tinyllm.Tensor`; the autograd Functions in
:mod:`tinyllm.functional` call these. Each module holds one family:

=================  ==========================================================
``attention``      fused (flash-style) scaled-dot-product attention, fwd + bwd
``matmul``         blocked batched matmul, the tile kernel, the matmul autograd uses
``blas``           BLAS gemm on numba's threads: matmuls, attention tiles, Linear
``layernorm``      fused LayerNorm forward/backward (saves mean and rstd)
``cross_entropy``  fused softmax cross-entropy with ignore_index
``gelu``           GELU (tanh approximation and exact erf), fwd + bwd
``adamw``          one AdamW update of a parameter and its two moments; grad norm
``embedding``      the scatter-add gradient of an embedding lookup
``elementwise``    a + b of two same-shape arrays on all cores (residual stream)
``fastmath``       a vectorisable float32 exp shared by the kernels
=================  ==========================================================
"""
from ._jit import get_num_threads, njit, prange, set_num_threads  # noqa: F401
