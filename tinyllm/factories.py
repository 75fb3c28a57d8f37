"""New tensors, with PyTorch's top-level names: ``tinyllm.zeros(B, T)``, ``tinyllm.arange(T)``,
``tinyllm.cat((a, b), dim=1)``, ``tinyllm.multinomial(probs, 1, generator=rng)``.

Float tensors are float32 unless ``dtype`` says otherwise (a NumPy dtype or its name:
``np.int64``, ``"int64"``). The random ones draw from ``generator``, a ``np.random.Generator``,
which is required: tinyllm keeps no global random state (PyTorch's ``torch.manual_seed``), so a
seed given once to a Generator makes the whole run repeat bit for bit.
"""
import numpy as np

from .functional import cat, stack, where  # noqa: F401  (torch.cat, torch.stack, torch.where)
from .tensor import Tensor, _sizes_arg

__all__ = ["require_generator", "zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like", "arange", "eye", "topk", "tril", "triu",
           "rand", "randn", "randint", "multinomial", "cat", "stack", "where"]


def _shape(size, who):
    """A shape given as separate ints or one tuple / list (``zeros(2, 3)``, ``zeros((2, 3))``)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = size[0]
    if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in size):
        raise ValueError(f"{who}: sizes must be ints >= 0, got {tuple(size)}")
    return _sizes_arg(size)


def _new(array, requires_grad):
    return Tensor(array, requires_grad=requires_grad)


def full(size, fill_value, *, dtype=None, requires_grad=False):
    return _new(np.full(_shape((size,), "full"), fill_value, dtype=dtype or np.float32), requires_grad)


def zeros(*size, dtype=None, requires_grad=False):
    return _new(np.zeros(_shape(size, "zeros"), dtype=dtype or np.float32), requires_grad)


def ones(*size, dtype=None, requires_grad=False):
    return _new(np.ones(_shape(size, "ones"), dtype=dtype or np.float32), requires_grad)


empty = zeros  # NumPy's empty would hand out whatever the memory held


def zeros_like(x, *, dtype=None, requires_grad=False):
    return full(x.shape, 0, dtype=dtype or x.dtype, requires_grad=requires_grad)


def ones_like(x, *, dtype=None, requires_grad=False):
    return full(x.shape, 1, dtype=dtype or x.dtype, requires_grad=requires_grad)


def full_like(x, fill_value, *, dtype=None, requires_grad=False):
    return full(x.shape, fill_value, dtype=dtype or x.dtype, requires_grad=requires_grad)


def arange(start, end=None, step=1, *, dtype=None, requires_grad=False):
    """start, start + step, ... below ``end`` (``arange(n)``: 0 .. n - 1), as ``torch.arange``:
    int64 when start, end and step are all ints, else float32."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must not be 0")
    ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
    return _new(np.arange(start, end, step, dtype=dtype or (np.int64 if ints else np.float32)), requires_grad)


def eye(n, m=None, *, dtype=None, requires_grad=False):
    return _new(np.eye(n, m, dtype=dtype or np.float32), requires_grad)


def topk(x, k, dim=-1, largest=True, sorted=True):
    """``x.topk(k, dim, largest, sorted)``: ``(values, indices)``, as ``torch.topk``."""
    return x.topk(k, dim, largest, sorted)


def tril(x, diagonal=0):
    """``x.tril(diagonal)``; an ndarray becomes a Tensor (``torch.tril(torch.ones(T, T))``)."""
    return (x if isinstance(x, Tensor) else Tensor(x)).tril(diagonal)


def triu(x, diagonal=0):
    return (x if isinstance(x, Tensor) else Tensor(x)).triu(diagonal)


# --- random ----------------------------------------------------------------------------------------

def require_generator(generator, who):
    """``generator`` if it is a ``np.random.Generator``; otherwise an error telling the user to pass one."""
    if isinstance(generator, np.random.Generator):
        return generator
    if generator is None:
        raise ValueError(f"{who}: pass generator=np.random.default_rng(seed); tinyllm keeps no global random "
                         "state, so every random draw names its generator")
    raise TypeError(f"{who}: generator must be a np.random.Generator, got {type(generator).__name__}")


def rand(*size, generator=None, dtype=None, requires_grad=False):
    """Uniform on [0, 1)."""
    values = require_generator(generator, "rand").random(_shape(size, "rand"))
    return _new(values.astype(dtype or np.float32), requires_grad)


def randn(*size, generator=None, dtype=None, requires_grad=False):
    """Standard normal."""
    values = require_generator(generator, "randn").standard_normal(_shape(size, "randn"))
    return _new(values.astype(dtype or np.float32), requires_grad)


def randint(*args, size=None, generator=None, dtype=None):
    """Integers in [low, high), int64, as ``torch.randint``: ``randint(high, size)`` or
    ``randint(low, high, size)`` (size also as a keyword)."""
    if size is None and args and isinstance(args[-1], (tuple, list)):
        *args, size = args
    if len(args) not in (1, 2) or size is None:
        raise TypeError(f"randint: expected (high, size) or (low, high, size), got {args} and size={size}")
    low, high = (0, args[0]) if len(args) == 1 else args
    values = require_generator(generator, "randint").integers(low, high, _shape((size,), "randint"))
    return _new(values.astype(dtype or np.int64), False)


def multinomial(probs, num_samples, replacement=False, *, generator=None):
    """``num_samples`` indices per row of ``probs`` (1-D, or 2-D: one row per draw), each with
    probability proportional to its weight, as ``torch.multinomial`` (nanoGPT's sampling step:
    ``idx_next = multinomial(probs, num_samples=1, generator=rng)``). Without ``replacement`` an
    index comes at most once per row. Returns int64 indices, shape (num_samples,) or (rows, num_samples)."""
    rng = require_generator(generator, "multinomial")
    weights = np.asarray(probs.data if isinstance(probs, Tensor) else probs, dtype=np.float64)
    if weights.ndim not in (1, 2):
        raise ValueError(f"multinomial: probs must be 1-D or 2-D, got shape {weights.shape}")
    rows = np.atleast_2d(weights)
    if not np.isfinite(rows).all() or (rows < 0).any() or (rows.sum(axis=1) <= 0).any():
        raise ValueError("multinomial: each row of probs needs finite, non-negative weights with a positive sum")
    if not replacement and num_samples > rows.shape[1]:
        raise ValueError(f"multinomial: {num_samples} samples without replacement from {rows.shape[1]} categories")
    if not replacement and num_samples > int((rows > 0).sum(axis=1).min()):
        raise ValueError(f"multinomial: {num_samples} samples without replacement, but a row has fewer nonzero "
                         "weights")
    picks = np.stack([rng.choice(row.size, num_samples, replace=replacement, p=row / row.sum()) for row in rows])
    return Tensor(picks.astype(np.int64).reshape(weights.shape[:-1] + (num_samples,)))
