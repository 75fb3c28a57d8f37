"""Elementary differentiable operations: arithmetic, element-wise maps, reductions, shapes.

Each class is one :class:`~tinyllm.tensor.Function`: ``forward`` on ndarrays, then ``backward``
with the derivative in its docstring. ``g`` is always the gradient arriving from above
(d loss / d output), with the output's shape. Users call these through Tensor methods and
operators (``a + b``, ``x.exp()``, ``x.sum(axis=1)``), not directly.
"""
import numpy as np

from .kernels.dispatch import dispatch
from .tensor import Function, unbroadcast

# Two kernels: a + b (on all cores for large same-shape arrays, else NumPy's) and matmul (BLAS,
# run on numba's threads); in reference mode NumPy's a + b and np.matmul (kernels/dispatch.py).
_elementwise = dispatch("elementwise")
_mm = dispatch("matmul")


# ----------------------------------------------------------------------------------------------
# arithmetic (NumPy broadcasting; unbroadcast() sums each gradient back to its input's shape)


class Cast(Function):
    """y = x as another dtype;  dy/dx = 1 (the gradient is cast back)."""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.in_dtype = x.dtype
        return x.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.in_dtype, copy=False)


class Clone(Function):
    """y = a copy of x (its own memory);  dy/dx = 1."""

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, g):
        return g


class Add(Function):
    """y = a + b;  dy/da = 1, dy/db = 1."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return _elementwise.add(a, b)

    @staticmethod
    def backward(ctx, g):
        a_shape, b_shape = ctx.shapes
        return unbroadcast(g, a_shape), unbroadcast(g, b_shape)


class Sub(Function):
    """y = a - b;  dy/da = 1, dy/db = -1."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, g):
        a_shape, b_shape = ctx.shapes
        return unbroadcast(g, a_shape), unbroadcast(-g, b_shape)


class Mul(Function):
    """y = a * b;  dy/da = b, dy/db = a."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    """y = a / b;  dy/da = 1/b, dy/db = -a/b^2."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Pow(Function):
    """y = a ** b;  dy/da = b a^(b-1),  dy/db = a^b ln(a) (only needed when b requires a gradient)."""

    @staticmethod
    def forward(ctx, a, b):
        out = a**b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        ga = gb = None
        if ctx.needs_input_grad[0]:
            # d/da a^0 = 0 everywhere, also at a = 0 where b * a^(b-1) would be 0 * inf
            ga = unbroadcast(np.where(b == 0, 0, g * b * a ** np.where(b == 0, 1, b - 1)), a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(g * out * np.log(a), b.shape)
        return ga, gb


class Neg(Function):
    """y = -x;  dy/dx = -1."""

    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, g):
        return -g


class MatMul(Function):
    """Y = A @ B with NumPy's rules (batch axes broadcast; a 1-D operand is a row / column vector).

    dA = G @ B^T,  dB = A^T @ G  (transposes over the last two axes), then un-broadcast over the
    batch axes.
    """

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: both operands need at least 1 dimension, got shapes {a.shape} and {b.shape}")
        k_a, k_b = a.shape[-1], b.shape[0] if b.ndim == 1 else b.shape[-2]
        if k_a != k_b:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align: {k_a} != {k_b}")
        ctx.save_for_backward(a, b)
        return _mm.matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        # View 1-D operands as matrices so one formula covers every case.
        a2 = a[None, :] if a.ndim == 1 else a  # (K,) -> (1, K)
        b2 = b[:, None] if b.ndim == 1 else b  # (K,) -> (K, 1)
        g2 = g
        if b.ndim == 1:
            g2 = g2[..., None]
        if a.ndim == 1:
            g2 = g2[..., None, :]
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(_mm.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(_mm.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
        return ga, gb


# ----------------------------------------------------------------------------------------------
# element-wise maps


class Exp(Function):
    """y = e^x;  dy/dx = y."""

    @staticmethod
    def forward(ctx, x):
        out = np.exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out


class Log(Function):
    """y = ln x;  dy/dx = 1/x."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.log(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x


class Tanh(Function):
    """y = tanh x;  dy/dx = 1 - y^2."""

    @staticmethod
    def forward(ctx, x):
        out = np.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (1 - out * out)


class Sqrt(Function):
    """y = sqrt x;  dy/dx = 1 / (2 y)."""

    @staticmethod
    def forward(ctx, x):
        out = np.sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g / (2 * out)


class ReLU(Function):
    """y = max(x, 0);  dy/dx = 1 where x > 0, else 0 (so relu'(0) = 0, as in PyTorch)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.maximum(x, 0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class Abs(Function):
    """y = |x|;  dy/dx = sign(x) (0 at x = 0, as in PyTorch)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.abs(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * np.sign(x)


class Clamp(Function):
    """y = min(max(x, lo), hi) (either bound may be None);  dy/dx = 1 where lo <= x <= hi, both
    ends included (PyTorch's choice at the boundary), else 0."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        y = x if lo is None else np.maximum(x, np.asarray(lo, dtype=x.dtype))
        return y if hi is None else np.minimum(y, np.asarray(hi, dtype=x.dtype))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        inside = np.ones(x.shape, dtype=bool)
        if ctx.lo is not None:
            inside &= x >= ctx.lo
        if ctx.hi is not None:
            inside &= x <= ctx.hi
        return g * inside


class Maximum(Function):
    """y = max(a, b) element-wise (broadcasting);  g goes to the larger of the two, half to each
    where they are equal (PyTorch's ``maximum``). ``Minimum`` is the same with the smaller."""

    pick = staticmethod(np.maximum)

    @classmethod
    def forward(cls, ctx, a, b):
        ctx.save_for_backward(a, b)
        return cls.pick(a, b)

    @classmethod
    def backward(cls, ctx, g):
        a, b = ctx.saved_tensors
        wins = (cls.pick(a, b) == a) & (a != b)  # a strictly chosen
        share = np.where(a == b, 0.5, wins).astype(g.dtype)  # a's share of g: 1, 1/2 or 0
        return unbroadcast(g * share, a.shape), unbroadcast(g * (1 - share), b.shape)


class Minimum(Maximum):
    pick = staticmethod(np.minimum)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x);  dy/dx = y (1 - y).

    Computed as 1 / (1 + e^-|x|) for x >= 0 and e^-|x| / (1 + e^-|x|) below, so e^ never
    overflows (at x = -1000, e^-x would be inf).
    """

    @staticmethod
    def forward(ctx, x):
        e = np.exp(-np.abs(x))
        out = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out * (1 - out)


class Sin(Function):
    """y = sin x;  dy/dx = cos x."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * np.cos(x)


class Cos(Function):
    """y = cos x;  dy/dx = -sin x."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.cos(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * np.sin(x)


# ----------------------------------------------------------------------------------------------
# reductions (axis is a sorted tuple of non-negative ints, normalised by Tensor)


def _expand_reduced(g, in_shape, axis, keepdims):
    """Give a reduced gradient back its reduced axes (size 1), so it broadcasts over the input."""
    if not keepdims:
        g = np.expand_dims(g, axis)
    return np.broadcast_to(g, in_shape)


class Sum(Function):
    """y = sum of x over ``axis``;  dy/dx = 1 for every summed element."""

    @staticmethod
    def forward(ctx, x, axis, keepdims):
        ctx.in_shape, ctx.axis, ctx.keepdims = x.shape, axis, keepdims
        return np.asarray(x.sum(axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        return _expand_reduced(g, ctx.in_shape, ctx.axis, ctx.keepdims)


class Mean(Function):
    """y = mean of x over ``axis`` (n elements each);  dy/dx = 1/n."""

    @staticmethod
    def forward(ctx, x, axis, keepdims):
        ctx.in_shape, ctx.axis, ctx.keepdims = x.shape, axis, keepdims
        ctx.count = int(np.prod([x.shape[a] for a in axis]))
        return np.asarray(x.mean(axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.in_shape, ctx.axis, ctx.keepdims)
        return g / np.asarray(ctx.count, dtype=g.dtype)


class Max(Function):
    """y = max of x over ``axis``;  dy/dx = 1/k on each of the k elements equal to the max, else 0.

    Ties split the gradient evenly (PyTorch's convention for ``amax``), so the gradient of the
    maximum of [1, 3, 3] is [0, 1/2, 1/2].
    """

    name, reduce = "max", staticmethod(np.max)

    @classmethod
    def forward(cls, ctx, x, axis, keepdims):
        if x.size == 0:
            raise ValueError(f"{cls.name}: cannot take the {cls.name} of an empty tensor of shape {x.shape}")
        out = np.asarray(cls.reduce(x, axis=axis, keepdims=True))
        ctx.save_for_backward(x, out)
        ctx.axis, ctx.keepdims = axis, keepdims
        return out if keepdims else np.squeeze(out, axis=axis)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        is_extreme = x == out
        count = is_extreme.sum(axis=ctx.axis, keepdims=True)
        g = g if ctx.keepdims else np.expand_dims(g, ctx.axis)
        return is_extreme * (g / count).astype(x.dtype)


class Min(Max):
    """y = min of x over ``axis``;  dy/dx = 1/k on each of the k elements equal to the min, else 0
    (ties split evenly, as :class:`Max`, whose backward this is)."""

    name, reduce = "min", staticmethod(np.min)


class Norm(Function):
    """y = sqrt(sum of x^2 over ``axis``) (the 2-norm);  dy/dx = x / y, and 0 where y = 0 (PyTorch's
    choice at the kink: the zero vector's gradient is 0, not 0/0)."""

    @staticmethod
    def forward(ctx, x, axis, keepdims):
        out = np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))
        ctx.save_for_backward(x, out)
        ctx.axis, ctx.keepdims = axis, keepdims
        return out if keepdims else np.squeeze(out, axis=axis)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        g = g if ctx.keepdims else np.expand_dims(g, ctx.axis)
        safe = np.where(out == 0, 1, out)
        return np.where(out == 0, 0, x * (g / safe)).astype(x.dtype, copy=False)


class CumSum(Function):
    """y_i = x_0 + ... + x_i along ``axis``;  dx_j = g_j + ... + g_last (a cumulative sum from the
    end: x_j appears in every y_i with i >= j)."""

    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis
        return np.cumsum(x, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return np.flip(np.cumsum(np.flip(g, ctx.axis), axis=ctx.axis), ctx.axis)


class Softmax(Function):
    """y = softmax(x) along ``axis``: e^(x - max) / sum e^(x - max) (the max keeps e^ finite).

    dx = y * (g - sum(g * y))   (the Jacobian diag(y) - y y^T applied to g).
    """

    @staticmethod
    def forward(ctx, x, axis):
        shifted = x - x.max(axis=axis, keepdims=True)
        e = np.exp(shifted)
        out = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return out * (g - (g * out).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - logsumexp(x) along ``axis``, with logsumexp = max + log(sum e^(x - max)).

    dx = g - softmax(x) * sum(g).
    """

    @staticmethod
    def forward(ctx, x, axis):
        shifted = x - x.max(axis=axis, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g - np.exp(out) * g.sum(axis=ctx.axis, keepdims=True)


# ----------------------------------------------------------------------------------------------
# shapes and indexing


class Reshape(Function):
    """y = x viewed with another shape;  the gradient is reshaped back."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) into {shape}") from None

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.in_shape)


class Transpose(Function):
    """y = x with axes permuted by ``axes``;  the gradient is permuted by the inverse permutation."""

    @staticmethod
    def forward(ctx, x, axes):
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(np.argsort(ctx.axes))


def _is_basic_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


class GetItem(Function):
    """y = x[index] (ints, slices, None, ..., integer arrays);  dx = g scattered back to ``index``.

    Integer-array indexing may pick the same element several times, so its gradient is
    scatter-*added* with ``np.add.at`` (plain assignment would keep only the last copy).
    """

    @staticmethod
    def forward(ctx, x, index):
        ctx.in_shape, ctx.in_dtype, ctx.index = x.shape, x.dtype, index
        out = x[index]
        return out if isinstance(out, np.ndarray) else np.asarray(out)

    @staticmethod
    def backward(ctx, g):
        grad = np.zeros(ctx.in_shape, dtype=ctx.in_dtype)
        if _is_basic_index(ctx.index):
            grad[ctx.index] = g  # basic indexing never repeats an element
        else:
            np.add.at(grad, ctx.index, g)
        return grad


class Expand(Function):
    """y = x broadcast to ``shape`` (a read-only view: no copy);  dx = g summed over the
    broadcast axes (:func:`~tinyllm.tensor.unbroadcast`)."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return np.broadcast_to(x, shape)

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.in_shape)


class Repeat(Function):
    """y = x tiled ``reps[i]`` times along axis i (``np.tile``; x's shape is padded with leading 1s
    to len(reps) axes).

    Viewing y (r_0 s_0, r_1 s_1, ...) as (r_0, s_0, r_1, s_1, ...), every copy index r_i holds the
    same x, so dx = g of that shape summed over the r_i axes.
    """

    @staticmethod
    def forward(ctx, x, reps):
        ctx.in_shape, ctx.reps = x.shape, reps
        return np.tile(x, reps)

    @staticmethod
    def backward(ctx, g):
        sizes = (1,) * (len(ctx.reps) - len(ctx.in_shape)) + ctx.in_shape  # x's shape as tiled
        pairs = g.reshape([n for r, s in zip(ctx.reps, sizes) for n in (r, s)])  # (r_0, s_0, r_1, s_1, ...)
        return pairs.sum(axis=tuple(range(0, 2 * len(sizes), 2))).reshape(ctx.in_shape)


class Pad(Function):
    """y = x with ``widths[i] = (before, after)`` elements of ``value`` added at each end of axis i
    (``np.pad``, constant mode, widths >= 0);  dx = g with the padding cut off again."""

    @staticmethod
    def forward(ctx, x, widths, value):
        ctx.inner = tuple(slice(before, before + n) for (before, _), n in zip(widths, x.shape))
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(value, dtype=x.dtype))

    @staticmethod
    def backward(ctx, g):
        return g[ctx.inner]


class Gather(Function):
    """y[..., i, ...] = x[..., index[..., i, ...], ...] along ``axis`` (``torch.gather``: y has
    index's shape; index may be smaller than x on the other axes);  dx = g scatter-*added* to the
    gathered places (an index may repeat)."""

    @staticmethod
    def forward(ctx, x, index, axis):
        window = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(index.shape))
        ctx.in_shape, ctx.in_dtype, ctx.index, ctx.axis = x.shape, x.dtype, index, axis
        return np.take_along_axis(x[window], index, axis=axis)

    @staticmethod
    def backward(ctx, g):
        grad = np.zeros(ctx.in_shape, dtype=ctx.in_dtype)
        places = list(np.indices(ctx.index.shape, sparse=True))
        places[ctx.axis] = ctx.index
        np.add.at(grad, tuple(places), g)
        return grad
