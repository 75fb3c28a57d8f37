"""The basic layers: Linear, Embedding, LayerNorm, Dropout, the positional encodings, the activations
and the losses as modules (``torch.nn``'s names)."""
import math

import numpy as np

from .. import functional as F
from ..tensor import Tensor
from .module import Module, Parameter

__all__ = ["Linear", "Embedding", "LayerNorm", "Dropout", "Identity", "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax",
           "LogSoftmax",
           "CrossEntropyLoss", "MSELoss", "PositionalEncoding", "LearnedPositionalEmbedding"]


def _rng(rng):
    return rng if rng is not None else np.random.default_rng(0)


class Linear(Module):
    """y = x @ W^T + b with W of shape (out_features, in_features), as ``torch.nn.Linear``.

    Initialised as PyTorch does: W and b ~ U(-1/sqrt(in), 1/sqrt(in)), from the explicit
    ``rng`` (a ``np.random.Generator``; a fixed seed when left out).
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(in_features)
        # copy=False: a float64 draw is converted as before; a loader's placeholder stays a view
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype, copy=False))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype, copy=False)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``; ``forward(ids)`` looks rows up.

    Initialised N(0, 1) as in PyTorch (GPT re-initialises it N(0, 0.02)). ``padding_idx`` (as
    ``torch.nn.Embedding``'s, negative counts from the end): that row starts as zeros and
    receives no gradient, so a padding token maps to a zero vector that training leaves alone.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, rng=None, dtype=np.float32):
        super().__init__()
        if isinstance(padding_idx, np.random.Generator):  # the third argument used to be rng
            raise TypeError("Embedding: the third argument is padding_idx, as in torch.nn.Embedding; pass the "
                            "Generator as rng=")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = F.padding_row(padding_idx, num_embeddings, "Embedding")
        table = _rng(rng).standard_normal((num_embeddings, embedding_dim)).astype(dtype, copy=False)
        if self.padding_idx is not None:
            table[self.padding_idx] = 0
        self.weight = Parameter(table)

    def forward(self, ids):
        return F.embedding(ids, self.weight, padding_idx=self.padding_idx)  # (...,) -> (..., embedding_dim)

    def extra_repr(self):
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}"


class LayerNorm(Module):
    """Normalise the last ``len(normalized_shape)`` axes to zero mean and unit variance, then scale
    and shift by ``weight`` (ones) and ``bias`` (zeros), as ``torch.nn.LayerNorm``:
    ``elementwise_affine=False`` has neither parameter, ``bias=False`` only the weight.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (normalized_shape,)
        self.normalized_shape, self.eps = tuple(int(n) for n in normalized_shape), eps
        self.elementwise_affine = elementwise_affine
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype)) if elementwise_affine and bias else None

    def forward(self, x):
        k = len(self.normalized_shape)
        if tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm: input of shape {x.shape} does not end in normalized_shape "
                             f"{self.normalized_shape}")
        if k == 1:
            return F.layer_norm(x, self.weight, self.bias, self.eps)
        # several normalised axes: one row of their product, normalised as the last axis
        flat = lambda p: None if p is None else p.reshape(-1)  # noqa: E731
        rows = x.reshape(x.shape[:x.ndim - k] + (-1,))  # (..., *normalized_shape) -> (..., C)
        return F.layer_norm(rows, flat(self.weight), flat(self.bias), self.eps).reshape(x.shape)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class Dropout(Module):
    """Zero elements with probability ``p`` while training (scaling the rest by 1/(1-p)).

    Its randomness comes from ``self.rng``, an explicit ``np.random.Generator`` (the model that
    owns the layer sets it from its seed).
    """

    def __init__(self, p=0.0, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p, self.rng = p, rng

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if self.rng is None:
            self.rng = np.random.default_rng(0)
        return F.dropout(x, self.p, training=True, rng=self.rng)

    def extra_repr(self):
        return f"p={self.p}"


class ReLU(Module):
    """max(x, 0) as a layer, for :class:`~tinyllm.nn.Sequential` (``torch.nn.ReLU``)."""

    def forward(self, x):
        return F.relu(x)


class GELU(Module):
    """GELU as a layer (``torch.nn.GELU``): exact by default, ``approximate="tanh"`` for GPT-2's form."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GELU: approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """x * sigmoid(x) as a layer (``torch.nn.SiLU``); see :func:`tinyllm.functional.silu`."""

    def __init__(self, inplace=False):
        super().__init__()
        if inplace:
            raise ValueError("SiLU: inplace=True is not supported (tinyllm's operations never overwrite their input)")

    def forward(self, x):
        return F.silu(x)


class Identity(Module):
    """Returns its input (``torch.nn.Identity``): a placeholder where a layer may be switched off."""

    def __init__(self, *args, **kwargs):  # torch's takes and ignores any arguments
        super().__init__()

    def forward(self, x):
        return x


class Tanh(Module):
    """tanh as a layer (``torch.nn.Tanh``)."""

    def forward(self, x):
        return x.tanh()


class Sigmoid(Module):
    """1 / (1 + e^-x) as a layer (``torch.nn.Sigmoid``)."""

    def forward(self, x):
        return x.sigmoid()


class Softmax(Module):
    """softmax along ``dim`` as a layer (``torch.nn.Softmax``)."""

    function = staticmethod(F.softmax)

    def __init__(self, dim=None):
        super().__init__()
        if dim is None:  # torch guesses an axis from the input's rank (deprecated there); ask instead
            raise ValueError(f"{type(self).__name__}: pass the axis, e.g. {type(self).__name__}(dim=-1)")
        self.dim = dim

    def forward(self, x):
        return self.function(x, dim=self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """log softmax along ``dim`` as a layer (``torch.nn.LogSoftmax``)."""

    function = staticmethod(F.log_softmax)


class CrossEntropyLoss(Module):
    """``loss_fn = CrossEntropyLoss(); loss = loss_fn(logits, targets)``, as ``torch.nn.CrossEntropyLoss``:
    :func:`tinyllm.functional.cross_entropy` with the arguments kept (classes on the last axis)."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        if weight is not None:
            raise ValueError("CrossEntropyLoss: per-class weight is not supported; pass weight=None")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                               reduction=self.reduction)


class MSELoss(Module):
    """Mean squared error as a module (``torch.nn.MSELoss``), see :func:`tinyllm.functional.mse_loss`."""

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"MSELoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


def sinusoidal_table(max_len, d_model, dtype=np.float32):
    """The fixed positional encoding of "Attention Is All You Need" (section 3.5)::

        PE[pos, 2i]   = sin(pos / 10000^(2i / d_model))
        PE[pos, 2i+1] = cos(pos / 10000^(2i / d_model))

    Each dimension pair is a sinusoid of its own wavelength (2 pi .. 10000 * 2 pi), so any fixed
    offset k turns PE[pos] into PE[pos + k] by a rotation: relative positions are easy to read.
    """
    pos = np.arange(max_len, dtype=np.float64)[:, None]  # (T, 1)
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)  # (ceil(d/2),)
    angles = pos * inv_freq  # (T, ceil(d/2))
    table = np.zeros((max_len, d_model))
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return table.astype(dtype)


class PositionalEncoding(Module):
    """Sinusoidal positional encoding: ``forward(positions)`` -> (len(positions), d_model).

    No parameters: the table is a non-persistent buffer, rebuilt from (max_len, d_model).
    """

    MAX_ENTRIES = 2**28  # 1 GiB of float32 (the table is built in float64 first: 2 GiB)

    def __init__(self, max_len, d_model, dtype=np.float32):
        super().__init__()
        if max_len * d_model > self.MAX_ENTRIES:  # a typo'd or hostile config: refuse before allocating
            raise ValueError(f"PositionalEncoding: max_len {max_len:,} x d_model {d_model:,} would make a table of "
                             f"{max_len * d_model:,} numbers (more than {self.MAX_ENTRIES:,}); is the block size right?")
        self.max_len, self.d_model = max_len, d_model
        self.register_buffer("table", sinusoidal_table(max_len, d_model, dtype), persistent=False)

    def forward(self, positions):
        positions = np.asarray(positions)
        if positions.size and (positions.min() < 0 or positions.max() >= self.max_len):
            raise ValueError(f"PositionalEncoding: position {int(positions.max())} is beyond max_len {self.max_len}")
        return Tensor._wrap(self.table[positions])

    def extra_repr(self):
        return f"max_len={self.max_len}, d_model={self.d_model}"


class LearnedPositionalEmbedding(Embedding):
    """A learned vector per position (GPT-2's ``wpe``): ``forward(positions)`` -> (T, d_model)."""

    def forward(self, positions):
        positions = np.asarray(positions)
        if positions.size and positions.max() >= self.num_embeddings:
            raise ValueError(
                f"LearnedPositionalEmbedding: position {int(positions.max())} is beyond the "
                f"{self.num_embeddings} positions the model was built with (block_size)"
            )
        return super().forward(positions)
