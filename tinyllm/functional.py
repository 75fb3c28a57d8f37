"""Neural-network functions on Tensors (``import tinyllm.functional as F``), like
``torch.nn.functional``.

The heavy ones (GELU, layer norm, cross-entropy, attention, linear) are fused Functions: one
forward and one backward each, computed by a kernel from :mod:`tinyllm.kernels` instead of a
chain of small NumPy operations. Each kernel module holds the fast (numba) version and the plain
NumPy one of the same math; ``dispatch`` picks the NumPy one in reference mode
(``tinyllm.use_reference()``, see :mod:`tinyllm.kernels.dispatch`).
"""
import math

import numpy as np

from .kernels.dispatch import dispatch
from .ops import Pad as PadFunction
from .tensor import Function, Tensor, is_grad_enabled, unbroadcast

# tinyllm/kernels/<name>.py; _ln.layernorm_forward is the numba kernel, or layernorm_forward_ref
# in reference mode
_attn = dispatch("attention")
_blas = dispatch("blas")
_ce = dispatch("cross_entropy")
_decode = dispatch("decode")
_emb = dispatch("embedding")
_gelu = dispatch("gelu")
_ln = dispatch("layernorm")

__all__ = [
    "gelu", "relu", "silu", "softmax", "log_softmax", "layer_norm", "cross_entropy", "mse_loss", "embedding", "dropout",
    "concatenate", "cat", "stack", "where", "scaled_dot_product_attention", "self_attention", "linear",
    "attention_composed", "attention_probs", "key_lengths_from_mask", "key_starts_from_mask", "cached_self_attention",
    "transformer_block_step", "pad", "one_hot",
]


def relu(x):
    return x.relu()


def silu(x):
    """SiLU (swish), as ``torch.nn.functional.silu``: x * sigmoid(x), composed from those two
    operations, so its gradient is sigmoid(x) (1 + x (1 - sigmoid(x)))."""
    return x * x.sigmoid()


def softmax(x, axis=-1, *, dim=None):
    """softmax along ``axis`` (or PyTorch's ``dim=``): e^x / sum e^x."""
    return x.softmax(axis, dim=dim)


def log_softmax(x, axis=-1, *, dim=None):
    """log softmax along ``axis`` (or PyTorch's ``dim=``): x - logsumexp(x)."""
    return x.log_softmax(axis, dim=dim)


# ----------------------------------------------------------------------------------------------
# GELU


class GELU(Function):
    """y = x * Phi(x), Phi the standard normal CDF; ``approximate="tanh"`` uses
    Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2 (GPT-2's choice).

    dx = g * dy/dx, with dy/dx given in :mod:`tinyllm.kernels.gelu`.
    """

    @staticmethod
    def forward(ctx, x, approximate):
        # t = tanh(u) for the backward (float32 tanh form only); under no_grad nobody needs it
        y, t = _gelu.gelu_forward(x, approximate, return_tanh=True) if is_grad_enabled() else (
            _gelu.gelu_forward(x, approximate), None)
        ctx.save_for_backward(x, t)
        ctx.approximate = approximate
        return y

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        return _gelu.gelu_backward(x, g, ctx.approximate, tanh=t)


def gelu(x, approximate="none"):
    """GELU activation, as ``torch.nn.functional.gelu``: ``approximate="none"`` (the default) is
    the exact x * Phi(x), with erf; ``"tanh"`` is GPT-2's approximation (``gelu_new`` in
    transformers), which tinyllm's GPT uses."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    return GELU.apply(x, approximate=approximate)


# ----------------------------------------------------------------------------------------------
# layer norm


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis.

    With xhat = (x - mean) * rstd and gw = g * weight, per row of C elements:
    dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)),  dweight = sum_rows g * xhat,
    dbias = sum_rows g. The forward saves only mean and rstd (one number each per row).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        rows = x.reshape(-1, x.shape[-1])  # (..., C) -> (N, C)
        y, mean, rstd = _ln.layernorm_forward(rows, weight, bias, eps)
        ctx.save_for_backward(rows, weight, mean, rstd)
        ctx.in_shape, ctx.has_bias = x.shape, bias is not None
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        rows, weight, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = _ln.layernorm_backward(g.reshape(rows.shape), rows, weight, mean, rstd)
        return dx.reshape(ctx.in_shape), dweight, (dbias if ctx.has_bias else None)


def layer_norm(x, *args, **kwargs):
    """Layer normalisation over the last axis of ``x``, with either argument order::

        layer_norm(x, weight=None, bias=None, eps=1e-5)                     tinyllm's
        layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5)   torch.nn.functional's

    PyTorch's order (what nanoGPT's LayerNorm calls) is recognised by a shape (an int, tuple or
    list) in second place or by the ``normalized_shape`` keyword; that shape must be ``(C,)``,
    the last axis, the only one tinyllm normalises over.
    """
    if "normalized_shape" in kwargs or (args and _is_shape(args[0])):
        return _layer_norm_torch_order(x, *args, **kwargs)
    return _layer_norm(x, *args, **kwargs)


def _is_shape(value):
    return isinstance(value, (int, np.integer, tuple, list)) and not isinstance(value, bool)


def _layer_norm_torch_order(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if shape != (x.shape[-1],):
        raise ValueError(f"layer_norm: normalized_shape {shape} is not the last axis of x (shape {x.shape}): "
                         f"tinyllm normalises over the last axis only, normalized_shape=({x.shape[-1]},)")
    return _layer_norm(x, weight, bias, eps)


def _layer_norm(x, weight=None, bias=None, eps=1e-5):
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"layer_norm: {name} has shape {tuple(p.shape)} but x has {C} features (shape {x.shape})")
    if weight is None:
        weight = Tensor(np.ones(C, dtype=x.dtype))
    return LayerNorm.apply(x, weight, bias, eps=eps)


# ----------------------------------------------------------------------------------------------
# cross-entropy


class CrossEntropy(Function):
    """loss = mean over rows i with t_i != ignore_index of
    (1 - e) (logsumexp(z_i) - z_i[t_i]) + e (logsumexp(z_i) - mean_j z_ij),  e = label smoothing.

    dz_i = g * (softmax(z_i) - (1 - e) onehot(t_i) - e / V) / n_valid for valid rows, 0 for
    ignored ones: the log-softmax and the pick are fused, so no (N, V) log-probability array is
    stored.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, label_smoothing):
        loss, lse = _ce.cross_entropy_forward(logits, targets, ignore_index, label_smoothing)
        ctx.save_for_backward(logits, targets, lse)
        ctx.ignore_index, ctx.label_smoothing = ignore_index, label_smoothing
        return loss

    @staticmethod
    def backward(ctx, g):
        logits, targets, lse = ctx.saved_tensors
        return _ce.cross_entropy_backward(logits, targets, lse, g, ctx.ignore_index, ctx.label_smoothing), None


def cross_entropy(logits, targets, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Cross-entropy of ``logits`` (..., V) against integer ``targets`` (...), as
    ``torch.nn.functional.cross_entropy`` with the classes on the last axis.

    Positions whose target is ``ignore_index`` count for nothing (PyTorch's convention). Leading
    axes are flattened, so ``(B, T, V)`` logits with ``(B, T)`` targets work as in nanoGPT.
    ``label_smoothing`` e in [0, 1] mixes the one-hot target with the uniform distribution,
    (1 - e) onehot + e / V. ``reduction``: ``"mean"`` over the positions not ignored (nan if
    all are; the fused kernel), ``"sum"`` (0 if all are ignored) or ``"none"`` (one loss per
    position, shape of ``targets``, 0 where ignored).
    """
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating)) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    targets = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integer class ids, got dtype {targets.dtype}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy: logits of shape {logits.shape} need targets of shape {logits.shape[:-1]}, "
            f"got {targets.shape}"
        )
    V = logits.shape[-1]
    flat = logits.reshape(-1, V) if logits.ndim != 2 else logits
    if reduction == "mean":  # (the kernels, fast and reference, check the targets)
        return CrossEntropy.apply(flat, targets.reshape(-1), ignore_index=ignore_index,
                                  label_smoothing=float(label_smoothing))
    _ce.check_target_range("cross_entropy", targets.reshape(-1), V, ignore_index)
    row_loss = _cross_entropy_rows(flat, targets.reshape(-1), ignore_index, float(label_smoothing))  # (N,)
    return row_loss.sum() if reduction == "sum" else row_loss.reshape(targets.shape)


def mse_loss(input, target, reduction="mean"):
    """Mean squared error, as ``torch.nn.functional.mse_loss``: (input - target)^2, averaged
    (``"mean"``), summed (``"sum"``) or per element (``"none"``). ``target`` is a Tensor or an
    array of ``input``'s shape (gradients flow to both when both are Tensors)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"mse_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    target_shape = np.shape(target.data if isinstance(target, Tensor) else target)
    if tuple(target_shape) != tuple(input.shape):
        raise ValueError(f"mse_loss: target of shape {target_shape} must match the "
                         f"input's shape {tuple(input.shape)} (torch would broadcast, usually a mistake)")
    err = input - target
    squared = err * err
    return squared.mean() if reduction == "mean" else squared.sum() if reduction == "sum" else squared


def _cross_entropy_rows(logits, targets, ignore_index, label_smoothing):
    """The loss of each row (N,) of logits (N, V), composed from Tensor operations, 0 where ignored:

        loss_i = -(1 - e) log p_i[t_i] - (e / V) sum_j log p_ij,    log p_i = log_softmax(z_i)

    (the terms the fused :class:`CrossEntropy` averages; its gradient comes from log_softmax's
    and indexing's backward).
    """
    n_rows, vocab = logits.shape
    valid = targets != ignore_index  # (N,)
    log_probs = logits.log_softmax(-1)  # (N, V)
    loss = -(1.0 - label_smoothing) * log_probs[np.arange(n_rows), np.where(valid, targets, 0)]  # (N,)
    if label_smoothing:
        loss = loss - label_smoothing * log_probs.mean(-1)
    return where(valid, loss, 0.0)


# ----------------------------------------------------------------------------------------------
# embedding, dropout, linear


class Embedding(Function):
    """y = weight[ids]  (a row lookup);  dweight[v] = sum of g over the positions where ids == v.

    The same id can appear many times in a batch, so the gradient is scatter-*added*
    (``np.add.at``, or its numba twin in :mod:`tinyllm.kernels.embedding`); plain
    ``dweight[ids] = g`` would keep only the last occurrence.
    """

    @staticmethod
    def forward(ctx, ids, weight, padding_idx=None):
        ctx.save_for_backward(ids)
        ctx.weight_shape, ctx.padding_idx = weight.shape, padding_idx
        return weight[ids]

    @staticmethod
    def backward(ctx, g):
        (ids,) = ctx.saved_tensors
        rows = g.reshape(-1, ctx.weight_shape[1])  # (..., C) -> (P, C)
        dweight = _emb.embedding_backward(ids.reshape(-1), rows, ctx.weight_shape[0])
        if ctx.padding_idx is not None:
            dweight[ctx.padding_idx] = 0  # the padding row is not trained (PyTorch's padding_idx)
        return None, dweight


def embedding(ids, weight, padding_idx=None):
    """Rows of ``weight`` (V, C) picked by integer ``ids`` (any shape) -> (*ids.shape, C).

    ``padding_idx`` (as ``torch.nn.functional.embedding``'s; negative counts from the end): that
    row receives no gradient, so a padding token's vector stays what it is (zeros in
    :class:`tinyllm.nn.Embedding`)."""
    ids = ids.data if isinstance(ids, Tensor) else np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    V = weight.shape[0]
    padding_idx = padding_row(padding_idx, V, "embedding")
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise ValueError(f"embedding: id {int(bad)} is out of range for a vocabulary of {V} (valid ids are 0..{V - 1})")
    return Embedding.apply(ids, weight, padding_idx=padding_idx)


def padding_row(padding_idx, num_embeddings, op):
    """``padding_idx`` as a row number in [0, num_embeddings) (negative counts from the end, as
    PyTorch's), or None."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
        raise TypeError(f"{op}: padding_idx must be an int or None, got {padding_idx!r}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"{op}: padding_idx {padding_idx} is out of range for {num_embeddings} embeddings "
                         f"(valid: {-num_embeddings}..{num_embeddings - 1})")
    return int(padding_idx) % num_embeddings


class Dropout(Function):
    """y = x * mask / (1 - p), mask ~ Bernoulli(1 - p);  dx = g * mask / (1 - p)."""

    @staticmethod
    def forward(ctx, x, p, rng):
        keep = rng.random(x.shape) >= p
        scale = np.asarray(0.0 if p >= 1 else 1.0 / (1.0 - p), dtype=x.dtype)
        mask = keep * scale
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p), during training only.

    Randomness comes from the explicit ``np.random.Generator`` ``rng`` (required when it acts).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if rng is None:
        raise ValueError("dropout: pass rng=np.random.default_rng(seed) when training with p > 0")
    return Dropout.apply(x, p=p, rng=rng)


class Linear(Function):
    """y = x @ W^T + b over the last axis of x, with W of shape (out, in) as in PyTorch.

    Leading axes are flattened so one matrix product (one BLAS call) does the whole batch:
    with X (N, in) and G (N, out):  dX = G W,  dW = G^T X,  db = sum over rows of G.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        rows = x.reshape(-1, x.shape[-1])  # (..., in) -> (N, in)
        out = _blas.linear_forward(rows, weight, None if bias is None else bias.astype(rows.dtype, copy=False),
                                   inference=not is_grad_enabled())
        ctx.save_for_backward(rows, weight)
        ctx.in_shape, ctx.has_bias = x.shape, bias is not None
        return out.reshape(*x.shape[:-1], weight.shape[0])  # (N, out) -> (..., out)

    @staticmethod
    def backward(ctx, g):
        rows, weight = ctx.saved_tensors
        g2 = np.ascontiguousarray(g).reshape(-1, weight.shape[0])  # (..., out) -> (N, out)
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_db = ctx.has_bias and ctx.needs_input_grad[2]
        dx, dw, db = _blas.linear_backward(g2, rows, weight, need_dx, need_dw, need_db)
        return (None if dx is None else dx.reshape(ctx.in_shape)), dw, db


def linear(x, weight, bias=None):
    """y = x @ weight^T + bias, with ``weight`` of shape (out_features, in_features) as in PyTorch."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input of shape {x.shape} has {x.shape[-1]} features but the weight of shape "
            f"{weight.shape} expects {weight.shape[1]}"
        )
    return Linear.apply(x, weight, bias)


# ----------------------------------------------------------------------------------------------
# joining and selecting


class Concatenate(Function):
    """y = [x_1, x_2, ...] joined along ``axis``;  each dx_i is its slice of g."""

    @staticmethod
    def forward(ctx, *xs, axis):
        ctx.axis = axis
        ctx.splits = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return tuple(np.split(g, ctx.splits, axis=ctx.axis))


def concatenate(tensors, axis=0, *, dim=None):
    """Join tensors along an existing axis (``dim=`` is PyTorch's name: ``torch.cat((a, b), dim=1)``)."""
    axis = axis if dim is None else dim
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate: need at least one tensor")
    ndim = tensors[0].ndim
    if not -ndim <= axis < ndim:
        raise ValueError(f"concatenate: axis {axis} is out of range for tensors with {ndim} dimensions")
    axis %= ndim
    for t in tensors[1:]:
        if t.ndim != ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, tensors[0].shape)) if i != axis):
            raise ValueError(
                f"concatenate: shapes {tensors[0].shape} and {t.shape} differ outside axis {axis}"
            )
    return Concatenate.apply(*tensors, axis=axis)


cat = concatenate


def stack(tensors, axis=0, *, dim=None):
    """Join tensors of one shape along a new axis (``dim=`` is PyTorch's name for it)."""
    axis = axis if dim is None else dim
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: need at least one tensor")
    shape = tensors[0].shape
    for t in tensors[1:]:
        if t.shape != shape:
            raise ValueError(f"stack: all tensors need one shape, got {shape} and {t.shape}")
    if not -(len(shape) + 1) <= axis <= len(shape):
        raise ValueError(f"stack: axis {axis} is out of range for {len(shape) + 1} dimensions")
    axis %= len(shape) + 1
    new_shape = shape[:axis] + (1,) + shape[axis:]
    return concatenate([t.reshape(new_shape) for t in tensors], axis=axis)


class Where(Function):
    """y = a where cond else b;  da = g where cond (else 0), db = g where not cond."""

    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        ctx.shapes = a.shape, b.shape
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved_tensors
        zero = np.zeros((), dtype=g.dtype)
        a_shape, b_shape = ctx.shapes
        return None, unbroadcast(np.where(cond, g, zero), a_shape), unbroadcast(np.where(cond, zero, g), b_shape)


def where(cond, a, b):
    """Element-wise choice with broadcasting, like ``np.where`` / ``torch.where``."""
    cond = np.asarray(cond.data if isinstance(cond, Tensor) else cond, dtype=bool)
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    dtype = like.dtype if like is not None else np.float32
    a = a if isinstance(a, Tensor) else Tensor(np.asarray(a, dtype=dtype))
    b = b if isinstance(b, Tensor) else Tensor(np.asarray(b, dtype=dtype))
    return Where.apply(cond, a, b)


def pad(x, pad, mode="constant", value=0.0):
    """``x`` with ``value`` added before and after its last axes, as ``torch.nn.functional.pad``
    in constant mode: ``pad`` lists (before, after) pairs from the *last* axis backwards,
    ``(left, right)`` pads the last axis, ``(left, right, top, bottom)`` the last two. A negative
    width cuts that many elements off instead (as PyTorch's). The gradient is g with the padding
    removed (and zeros where elements were cut off).
    """
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is supported, got mode={mode!r}")
    widths = [int(w) for w in pad]
    if len(widths) % 2 or len(widths) // 2 > x.ndim:
        raise ValueError(f"pad: pad {tuple(pad)} must hold one (before, after) pair per padded axis, at most "
                         f"{x.ndim} pairs for a tensor of shape {x.shape}")
    pairs = [(0, 0)] * (x.ndim - len(widths) // 2) + [tuple(widths[i:i + 2]) for i in range(len(widths) - 2, -1, -2)]
    for axis, ((before, after), n) in enumerate(zip(pairs, x.shape)):
        if n + before + after < 0:
            raise ValueError(f"pad: pad {tuple(pad)} would leave axis {axis} of shape {x.shape} with "
                             f"{n + before + after} elements")
    crop = tuple(slice(max(0, -before), n - max(0, -after)) for (before, after), n in zip(pairs, x.shape))
    if any(before < 0 or after < 0 for before, after in pairs):
        x = x[crop]  # the negative widths, as indexing (its backward puts zeros there)
    return PadFunction.apply(x, widths=tuple((max(0, b), max(0, a)) for b, a in pairs), value=value)


def one_hot(ids, num_classes=-1):
    """``(..., num_classes)`` int64 rows with a 1 at each id, as ``torch.nn.functional.one_hot``
    (no gradient); ``num_classes=-1`` takes the largest id + 1."""
    ids = ids.data if isinstance(ids, Tensor) else np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"one_hot: ids must be integers, got dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"one_hot: ids must be non-negative, got {int(ids.min())}")
    if num_classes == -1:
        if not ids.size:
            raise ValueError("one_hot: cannot infer num_classes from no ids; pass num_classes=")
        num_classes = int(ids.max()) + 1
    if ids.size and ids.max() >= num_classes:
        raise ValueError(f"one_hot: id {int(ids.max())} is out of range for num_classes={num_classes}")
    return Tensor._wrap((ids[..., None] == np.arange(num_classes)).astype(np.int64))


# ----------------------------------------------------------------------------------------------
# attention


def _mask_array(attn_mask, fn, batch_shape, tq, tk):
    """attn_mask as an ndarray (bool, or float of any precision), checked to broadcast to
    ``batch_shape + (Tq, Tk)``."""
    mask = attn_mask.data if isinstance(attn_mask, Tensor) else np.asarray(attn_mask)
    if mask.dtype != bool and mask.dtype.kind != "f":
        raise TypeError(f"{fn}: attn_mask must be bool (True = takes part) or float (added to the scores), "
                        f"got dtype {mask.dtype}")
    target = tuple(batch_shape) + (tq, tk)
    try:
        fits = np.broadcast_shapes(mask.shape, target) == target
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{fn}: attn_mask of shape {mask.shape} does not broadcast to (..., Tq, Tk) = {target}")
    return mask


def key_lengths_from_mask(mask, batch_shape, tq, tk):
    """The key-padding lengths ``(N,)`` (N = prod(batch_shape)) if ``mask`` is a key-padding mask,
    else None.

    A key-padding mask lets every query of a row see keys ``0 .. L-1`` and none after: one
    length L per batch row, the same for all its queries. Such a mask is what padded batches
    produce (``ids != pad`` with the padding at the end), and the fused kernel takes it as
    lengths and skips the padded keys. A float mask qualifies if it holds only 0 and -inf.
    """
    if mask.dtype.kind == "f":
        if not np.all((mask == 0) | (mask == -np.inf)):
            return None
        mask = mask == 0
    if mask.ndim >= 2 and mask.shape[-2] != 1:
        if not (mask == mask[..., :1, :]).all():  # a different mask for some query
            return None
        mask = mask[..., :1, :]
    keys = mask.reshape(mask.shape[:-2] + mask.shape[-1:]) if mask.ndim >= 2 else mask  # (..., Tk)
    keys = np.broadcast_to(keys, tuple(batch_shape) + (tk,))
    lengths = keys.sum(axis=-1)  # (...,)
    if not (keys == (np.arange(tk) < lengths[..., None])).all():  # a masked key before an unmasked one
        return None
    return lengths.reshape(-1).astype(np.int64)


def key_starts_from_mask(mask, batch, tk):
    """The first real key of each sequence ``(B,)`` if ``mask`` (bool, (B, 1, 1, Tk) or (B, Tk))
    is a left-padding mask, else None.

    A left-padding mask hides keys ``0 .. S-1`` of a row from every query and shows the rest:
    ``False ... False True ... True``, what a left-padded batch (``attention_mask == 1``) gives.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape not in ((batch, 1, 1, tk), (batch, tk)):
        return None
    keys = mask.reshape(batch, tk)
    starts = tk - keys.sum(axis=1)  # (B,)
    if not (keys == (np.arange(tk) >= starts[:, None])).all():  # a real key before a padded one
        return None
    return starts.astype(np.int64)


def attention_probs(q, k, attn_mask=None, is_causal=False, scale=None):
    """The attention weights softmax(q k^T * scale + mask): q (..., Tq, D), k (..., Tk, D) ->
    (..., Tq, Tk), each row summing to 1 over the keys its query may see, composed from Tensor
    operations (what ``output_attentions=True`` returns; the fused kernel never forms them).

    ``attn_mask`` and ``is_causal`` as in :func:`scaled_dot_product_attention`; a query that may
    see no key at all gets a row of zeros (and zero gradients), not NaN.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    tq, tk = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk)
    allowed = np.ones((tq, tk), dtype=bool)  # which (query, key) pairs take part
    if is_causal:
        # bottom-right aligned: with a KV cache the Tq queries are the *last* Tq positions
        allowed = _attn.causal_mask(tq, tk)
    if attn_mask is not None:
        mask = _mask_array(attn_mask, "attention_probs", q.shape[:-2], tq, tk)
        if mask.dtype == bool:
            allowed = allowed & mask
        else:
            allowed = allowed & (mask != -np.inf)
            scores = scores + np.where(mask == -np.inf, 0, mask).astype(scores.dtype)
    if not allowed.all():
        scores = where(allowed, scores, np.asarray(-np.inf, dtype=scores.dtype))
        # a query that sees no key at all attends to nothing: give it zeros, not NaN
        sees_some = allowed.any(-1, keepdims=True)  # (..., Tq, 1)
        if not sees_some.all():
            scores = where(sees_some, scores, np.asarray(0.0, dtype=scores.dtype))
    probs = scores.softmax(-1)
    if not allowed.any(-1).all():
        probs = where(allowed.any(-1, keepdims=True), probs, np.asarray(0.0, dtype=probs.dtype))
    return probs


def attention_composed(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, rng=None):
    """softmax(q k^T * scale + mask) v, composed from Tensor operations (stores the (Tq, Tk) matrix).

    The readable version of attention; :func:`scaled_dot_product_attention` computes the same with
    the fused kernel. Used when attention dropout is on, for masks that are not key padding,
    and as the test oracle. ``attn_mask`` and ``is_causal`` as in that function; a query that
    may see no key at all gets zeros (and zero gradients), not NaN. The weights are
    :func:`attention_probs`.
    """
    probs = attention_probs(q, k, attn_mask, is_causal, scale)  # (..., Tq, Tk)
    if dropout_p > 0.0:
        probs = dropout(probs, dropout_p, training=True, rng=rng)
    return probs @ v


class FusedAttention(Function):
    """out = softmax(q k^T * scale + mask) v, computed flash-attention style; the mask is causal
    and/or a key-padding mask (``key_lengths``: per batch row, keys >= the length take no part).

    Forward keeps only ``out`` and the per-row log-sum-exp ``lse``; backward recomputes the
    probabilities P = exp(q k^T * scale - lse) block by block, then, with D = rowsum(dout * out),
    dv = P^T dout,  dS = P * (dout v^T - D),  dq = dS k * scale,  dk = dS^T q * scale.
    Memory is O(T), not O(T^2).
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, key_lengths=None):
        lead = q.shape[:-2]  # (B, n_head) or any batch axes
        q3 = q.reshape(-1, *q.shape[-2:])  # (..., T, D) -> (N, T, D)
        k3 = k.reshape(-1, *k.shape[-2:])
        v3 = v.reshape(-1, *v.shape[-2:])
        out, lse = _attn.attention_forward(q3, k3, v3, causal=is_causal, scale=scale, key_lengths=key_lengths)
        ctx.save_for_backward(q3, k3, v3, out, lse)
        ctx.is_causal, ctx.scale, ctx.key_lengths = is_causal, scale, key_lengths
        ctx.shapes = q.shape, k.shape, v.shape
        return out.reshape(*lead, *out.shape[-2:])

    @staticmethod
    def backward(ctx, g):
        q3, k3, v3, out, lse = ctx.saved_tensors
        g3 = g.reshape(out.shape)
        dq, dk, dv = _attn.attention_backward(q3, k3, v3, out, lse, g3, causal=ctx.is_causal, scale=ctx.scale,
                                              key_lengths=ctx.key_lengths)
        q_shape, k_shape, v_shape = ctx.shapes
        return dq.reshape(q_shape), dk.reshape(k_shape), dv.reshape(v_shape)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, rng=None):
    """Attention over ``(..., T, head_dim)`` tensors, as ``torch.nn.functional.scaled_dot_product_attention``.

    q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) -> (..., Tq, Dv); ``scale`` defaults to
    1/sqrt(D). ``attn_mask`` (broadcastable to (..., Tq, Tk)) has PyTorch's meaning: bool, True
    where the query may attend the key; or float, added to the scores (-inf masks). ``is_causal``
    masks key j from query i unless j <= i + (Tk - Tq): the queries are the last Tq positions of
    the sequence (this equals PyTorch's mask when Tq == Tk, and is what a KV cache needs when
    Tq < Tk); unlike PyTorch it may be combined with ``attn_mask`` (a key must pass both). A
    query that may see no key gets zeros and zero gradients (PyTorch: NaN).

    Causal and key-padding masks (see :func:`key_lengths_from_mask`) run in the fused kernel,
    which skips the padded keys; other masks, and ``dropout_p > 0`` (with the Generator ``rng``),
    take :func:`attention_composed`.
    """
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"scaled_dot_product_attention: q, k, v need the same rank >= 2, got shapes {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2] or q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"scaled_dot_product_attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit (..., Tq, D), (..., Tk, D), (..., Tk, Dv)")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    key_lengths = None
    if attn_mask is not None:
        tq, tk = q.shape[-2], k.shape[-2]
        attn_mask = _mask_array(attn_mask, "scaled_dot_product_attention", q.shape[:-2], tq, tk)
        key_lengths = key_lengths_from_mask(attn_mask, q.shape[:-2], tq, tk)
        if key_lengths is None:
            return attention_composed(q, k, v, attn_mask, is_causal, scale, dropout_p, rng)
    if dropout_p > 0.0:
        return attention_composed(q, k, v, attn_mask, is_causal, scale, dropout_p, rng)
    return FusedAttention.apply(q, k, v, is_causal=is_causal, scale=scale, key_lengths=key_lengths)


class SelfAttention(Function):
    """Multi-head attention straight from a fused q|k|v projection, heads split and merged inside.

    qkv (B, T, 3C) holds, along its last axis, q, k, v, each C = n_head * head_dim wide and each
    head's head_dim columns side by side (GPT-2's ``c_attn`` layout). The result (B, T, C) is

        y[:, :, h*D:(h+1)*D] = attention(q_h, k_h, v_h)      for every head h,

    the same as splitting with reshape/permute, :func:`scaled_dot_product_attention`, and merging
    back. Here the kernels read each head in place from qkv and write y, and in backward the one
    (B, T, 3C) gradient, in place too: no copies to split or merge, and one graph node instead
    of nine. ``key_lengths (B,)`` masks each sequence's padded keys (all heads alike).
    """

    @staticmethod
    def forward(ctx, qkv, n_head, is_causal, scale, key_lengths=None):
        out, lse = _attn.self_attention_forward(qkv, n_head, causal=is_causal, scale=scale,
                                                key_lengths=key_lengths)  # (B, T, C)
        ctx.save_for_backward(qkv, out, lse)
        ctx.n_head, ctx.is_causal, ctx.scale, ctx.key_lengths = n_head, is_causal, scale, key_lengths
        return out

    @staticmethod
    def backward(ctx, g):
        qkv, out, lse = ctx.saved_tensors
        return _attn.self_attention_backward(qkv, out, lse, g, ctx.n_head, causal=ctx.is_causal, scale=ctx.scale,
                                             key_lengths=ctx.key_lengths)


def self_attention(qkv, n_head, is_causal=False, scale=None, attn_mask=None):
    """Multi-head self-attention from a fused projection: qkv (B, T, 3C) -> (B, T, C).

    Equal to ``q, k, v = split(qkv)`` into (B, n_head, T, C / n_head) heads,
    ``scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale)`` and the heads merged
    back to (B, T, C); ``scale`` defaults to 1/sqrt(head_dim). One fused Function (see
    :class:`SelfAttention`) when the mask is causal and/or key padding the same for every head
    (``attn_mask`` broadcastable to (B, 1, T, T), e.g. (B, 1, 1, T)); other masks split the heads.
    """
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head) != 0:
        raise ValueError(
            f"self_attention: qkv must be (B, T, 3 * n_head * head_dim); got shape {qkv.shape} "
            f"with n_head={n_head}"
        )
    B, T, C3 = qkv.shape
    head_dim = C3 // (3 * n_head)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    key_lengths = None
    if attn_mask is not None:
        mask = _mask_array(attn_mask, "self_attention", (B, n_head), T, T)
        if mask.ndim < 3 or mask.shape[-3] == 1:  # one mask for all heads of a sequence
            key_lengths = key_lengths_from_mask(mask.reshape(mask.shape[:-3] + mask.shape[-2:]) if mask.ndim >= 3
                                                else mask, (B,), T, T)
        if key_lengths is None:
            heads = qkv.reshape(B, T, 3, n_head, head_dim).permute(2, 0, 3, 1, 4)  # -> (3, B, H, T, D)
            y = scaled_dot_product_attention(heads[0], heads[1], heads[2], mask, is_causal, scale)
            return y.permute(0, 2, 1, 3).reshape(B, T, n_head * head_dim)  # (B, H, T, D) -> (B, T, C)
    return SelfAttention.apply(qkv, n_head=n_head, is_causal=is_causal, scale=scale, key_lengths=key_lengths)


class CachedSelfAttention(Function):
    """Self-attention of T new positions over a KV cache, heads split and merged inside.

    qkv (B, T, 3C) as for :class:`SelfAttention`; k_cache, v_cache (B, H, L, D) one layer's
    cache holding ``start`` positions. Forward writes the new keys and values into positions
    start .. start + T - 1 and returns y (B, T, C): each new query (position start + t) attends
    to keys 0 .. start + t. One Function instead of the split / store / attend / merge chain,
    which at one token per step costs more in Python than in arithmetic.

    Backward (the cache is for inference; training runs without one): the cached positions are
    constants, made by earlier calls, so only q and the new keys and values get gradients, those
    of :class:`FusedAttention` over all start + T keys restricted to the new positions.
    """

    @staticmethod
    def forward(ctx, qkv, k_cache, v_cache, start, n_head, scale, key_starts=None):
        out, lse = _attn.cached_attention_forward(qkv, k_cache, v_cache, start, n_head, scale=scale,
                                                  key_starts=key_starts)
        if key_starts is not None and key_starts.any() and is_grad_enabled():
            raise NotImplementedError("cached_self_attention: no backward through a left-padded KV cache; run it "
                                      "under no_grad() (MultiHeadAttention takes the composed path otherwise)")
        if is_grad_enabled():  # later steps may reorder the cache (beam search): keep what backward reads
            stop = start + qkv.shape[1]
            ctx.save_for_backward(qkv, k_cache[:, :, :stop].copy(), v_cache[:, :, :stop].copy(), out, lse)
            ctx.start, ctx.n_head, ctx.scale = start, n_head, scale
        return out

    @staticmethod
    def backward(ctx, g):
        qkv, k, v, out, lse = ctx.saved_tensors
        B, T, C3 = qkv.shape
        H = ctx.n_head
        D = C3 // (3 * H)
        split = lambda a: a.reshape(B, -1, H, D).transpose(0, 2, 1, 3).reshape(B * H, -1, D)  # noqa: E731
        q = split(qkv[:, :, : H * D])  # (B*H, T, D)
        dq, dk, dv = _attn.attention_backward(q, k.reshape(B * H, -1, D), v.reshape(B * H, -1, D), split(out),
                                              lse.reshape(B * H, T), split(np.ascontiguousarray(g)), causal=True,
                                              scale=ctx.scale)
        merge = lambda a: a.reshape(B, H, -1, D).transpose(0, 2, 1, 3).reshape(B, -1, H * D)  # noqa: E731
        dqkv = np.concatenate([merge(dq), merge(dk[:, ctx.start:]), merge(dv[:, ctx.start:])], axis=-1)
        return dqkv, None, None


def cached_self_attention(qkv, k_cache, v_cache, start, n_head, scale=None, key_starts=None):
    """Causal self-attention of T new positions whose q|k|v projection is ``qkv`` (B, T, 3C) over
    a KV cache ``k_cache``, ``v_cache`` (B, n_head, L, head_dim) (ndarrays, written in place)
    that holds ``start`` earlier positions: the new keys and values are stored at positions
    start .. start + T - 1, and query t attends to keys 0 .. start + t. Returns (B, T, C), the
    same as :func:`self_attention` of the whole sequence would give at those positions.
    ``key_starts`` (B,) (left padding, see :func:`key_starts_from_mask`): sequence b attends
    from key ``key_starts[b]`` on; a query that sees no key gets zeros (forward only)."""
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head) != 0:
        raise ValueError(f"cached_self_attention: qkv must be (B, T, 3 * n_head * head_dim); got shape "
                         f"{qkv.shape} with n_head={n_head}")
    if start + qkv.shape[1] > k_cache.shape[2]:
        raise ValueError(f"KVCache: {start + qkv.shape[1]} positions exceed the cache's max_len {k_cache.shape[2]}")
    head_dim = qkv.shape[-1] // (3 * n_head)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    return CachedSelfAttention.apply(qkv, k_cache, v_cache, start=start, n_head=n_head, scale=scale,
                                     key_starts=key_starts)


# ----------------------------------------------------------------------------------------------
# a whole block for one new position, for generation


def _array(t):
    return t.data if isinstance(t, Tensor) else (None if t is None else np.asarray(t))


def transformer_block_step(x, k_cache, v_cache, start, n_head, norms, linears, eps=1e-5, approximate="tanh"):
    """A pre-LayerNorm Transformer block (:class:`tinyllm.nn.Block`) on x (B, 1, C), one new
    position per sequence attending over a KV cache (k_cache, v_cache (B, n_head, L, head_dim)
    ndarrays holding ``start`` positions; the new keys and values are written at ``start``), in
    one kernel call (:mod:`tinyllm.kernels.decode`); the same numbers as the block's layers run
    one by one. ``norms``: {"ln_1", "ln_2"} -> (weight, bias); ``linears``: {"attn",
    "attn_proj", "fc", "mlp_proj"} -> (weight (out, in), bias), Tensors or arrays, bias may be
    None; ``approximate``: GELU's, "tanh" or "none".

    Inference only: returns None, and the caller runs the layers, where a gradient may be taken
    (grad mode on) or where the kernel does not apply (``kernels.decode.block_step_applies``)."""
    if is_grad_enabled() or x.ndim != 3 or x.shape[1] != 1:
        return None
    norms = {k: (_array(w), _array(b)) for k, (w, b) in norms.items()}
    linears = {k: (_array(w), _array(b)) for k, (w, b) in linears.items()}
    rows = _array(x).reshape(x.shape[0], x.shape[2])  # (B, 1, C) -> (B, C)
    if not _decode.block_step_applies(rows, k_cache, start, norms, linears):
        return None
    out = _decode.block_step(rows, k_cache, v_cache, start, n_head, norms, linears, eps, approximate)
    return Tensor._wrap(out.reshape(x.shape))
