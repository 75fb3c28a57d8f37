"""The autograd engine: :class:`Tensor`, :class:`Function` and ``backward()``.

How it works, in four sentences. A :class:`Tensor` wraps an ndarray (``.data``). Every operation
on tensors is a :class:`Function` whose ``forward`` computes the result from plain arrays and whose
``backward`` turns the gradient of the result into gradients of the inputs (the chain rule for that
one operation). When an input requires a gradient, the result remembers the Function that made it
(``._ctx``), and the Function remembers its inputs, so the operations form a graph. ``backward()``
walks that graph from the output to the leaves in reverse topological order and adds each
gradient into ``leaf.grad``.

The elementary operations live in :mod:`tinyllm.ops`, the fused neural-network ones in
:mod:`tinyllm.functional`; both are Functions built the same way.
"""
import threading

import numpy as np

__all__ = ["Tensor", "Function", "no_grad", "enable_grad", "is_grad_enabled", "unbroadcast", "tensor"]


# ----------------------------------------------------------------------------------------------
# grad mode


class _GradModeState(threading.local):
    """Whether operations record the graph, per thread, as PyTorch's grad mode is: a
    ``no_grad()`` in a thread that serves requests must not stop a training thread from
    recording. The class attribute is the value every new thread starts with; a thread that
    sets ``enabled`` (or pushes onto ``saved``) gets its own copy."""

    enabled = True

    def __init__(self):
        self.saved = []  # the states to restore, one per open no_grad / enable_grad block


_GradMode = _GradModeState()


def is_grad_enabled():
    """Whether operations in this thread record the graph (on unless a no_grad() is open)."""
    return _GradMode.enabled


class no_grad:
    """Context manager (and decorator) that stops graph recording in this thread, like
    ``torch.no_grad()``.

    Re-entrant: each ``with`` restores whatever state was in force when it was entered; the
    saved states live with the thread, so one ``no_grad`` object may be entered by several
    threads (or nested) at once.
    """

    _target = False

    def __enter__(self):
        _GradMode.saved.append(_GradMode.enabled)
        _GradMode.enabled = self._target

    def __exit__(self, *exc):
        _GradMode.enabled = _GradMode.saved.pop()
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)

        return wrapper


class enable_grad(no_grad):
    """Turn graph recording back on inside a ``no_grad`` block."""

    _target = True


# ----------------------------------------------------------------------------------------------
# Function: one forward and its backward, side by side


class Function:
    """One differentiable operation.

    Subclasses write two static methods:

    * ``forward(ctx, *arrays, **kwargs) -> ndarray``: the operation on plain ndarrays. It stores
      what backward will need with ``ctx.save_for_backward(...)`` (and plain settings, such as an
      axis, as attributes of ``ctx``).
    * ``backward(ctx, grad) -> grad_input or tuple of them``: one entry per Tensor input (``None``
      where no gradient flows), each with exactly that input's shape.

    ``Function.apply(*inputs, **kwargs)`` runs forward and, if any input requires a gradient and
    grad mode is on, links the result into the graph.
    """

    __slots__ = ("parents", "saved_tensors", "needs_input_grad", "__dict__")

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **kwargs):
        ctx = cls()
        arrays, needs = [], []  # the inputs as arrays; which of them require a gradient
        for x in inputs:
            is_tensor = isinstance(x, Tensor)
            arrays.append(x.data if is_tensor else x)
            needs.append(is_tensor and x.requires_grad)
        out = cls.forward(ctx, *arrays, **kwargs)
        if not isinstance(out, np.ndarray):
            out = np.asarray(out)  # NumPy reductions return scalars; a Tensor holds an array
        # an integer result (a cast, an argmax) has no gradient
        needs_grad = _GradMode.enabled and any(needs) and out.dtype.kind == "f"
        result = Tensor._wrap(out, needs_grad)
        if needs_grad:
            ctx.parents = inputs
            ctx.needs_input_grad = tuple(needs)
            result._ctx = ctx
        return result


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the one place where broadcasting is undone.

    If ``a`` of shape ``shape`` was broadcast to ``grad.shape`` in the forward pass, every copy of an
    element received a gradient; the element's gradient is their sum. Leading axes that broadcasting
    added are summed away, and axes where ``shape`` has size 1 are summed with ``keepdims``.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


# ----------------------------------------------------------------------------------------------
# Tensor


def _as_array(data, dtype=None):
    """ndarray for ``data``: float input becomes float32 unless it already is float64."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    if isinstance(data, np.ndarray):
        arr = data
    else:
        arr = np.asarray(data)
        if arr.dtype == np.float64:  # Python floats and lists of them: float32 by default
            arr = arr.astype(np.float32)
    if arr.dtype.kind not in "fiub":
        raise TypeError(
            f"Tensor: data of dtype {arr.dtype} is not numeric; pass floats, ints or bools "
            "(e.g. token ids as an int64 array)"
        )
    if arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)  # float16 etc. compute in float32
    return arr


class Tensor:
    """An ndarray that records the operations applied to it, for ``backward()``.

    ``Tensor(data, requires_grad=False, dtype=None)``: float data is float32 unless it is a
    float64 ndarray (kept, for finite differences); integer data is allowed but cannot require
    gradients (token ids, indices).
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_hooks", "__weakref__")
    __array_priority__ = 100  # ndarray + Tensor -> Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self._ctx = None
        self._hooks = None  # register_hook's functions (and retain_grad's), run on this tensor's gradient
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array, requires_grad=False):
        """Wrap a result array without copying or dtype conversion (used by Function.apply)."""
        t = cls.__new__(cls)
        t.data = array if isinstance(array, np.ndarray) else np.asarray(array)
        t.grad = None
        t._ctx = None
        t._hooks = None
        t.requires_grad = requires_grad
        return t

    def requires_grad_(self, flag=True):
        if flag and self.data.dtype.kind != "f":
            raise TypeError(
                f"requires_grad: only float tensors can require gradients, got dtype {self.data.dtype}"
            )
        self.requires_grad = bool(flag)
        return self

    # --- array-like attributes -----------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: _Size(self.data.size, self.data.shape))  # x.size (NumPy) and x.size() (PyTorch)
    is_leaf = property(lambda self: self._ctx is None)

    def __len__(self):
        return len(self.data)

    def numpy(self):
        return self.data

    # PyTorch's names for NumPy's: x.dim() is x.ndim, x.numel() is x.size (x.size() is the shape)
    def dim(self):
        return self.data.ndim

    def numel(self):
        return self.data.size

    def tolist(self):
        return self.data.tolist()

    def contiguous(self):
        """``self``: every operation takes any memory layout, so nothing needs copying (PyTorch
        code calls this before ``view``, as in ``y.transpose(1, 2).contiguous().view(B, T, C)``)."""
        return self

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only a tensor with one element converts to a Python number, got shape {self.shape}")
        return self.data.item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor._wrap(self.data, False)

    def astype(self, dtype):
        return _ops.Cast.apply(self, dtype=np.dtype(dtype))

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def long(self):
        """int64 values (truncated toward zero, as PyTorch's); an integer tensor has no gradient."""
        return self.astype(np.int64)

    def int(self):
        """int32 values (truncated toward zero, as PyTorch's); an integer tensor has no gradient."""
        return self.astype(np.int32)

    def to(self, dtype):
        """This tensor as ``dtype`` (anything ``np.dtype`` takes: ``np.float64``, ``"float32"``,
        ``"int64"``), through the graph as :meth:`astype`; ``self`` when it already has that dtype.
        PyTorch's ``x.to("cpu")`` is accepted and changes nothing (tinyllm runs on the CPU); another
        device is a ValueError naming it, as ``Module.to``."""
        dtype = dtype_or_cpu(dtype, "Tensor.to")
        return self if dtype is None or dtype == self.dtype else self.astype(dtype)

    def cpu(self):
        """``self``: tinyllm runs on the CPU (PyTorch code writes ``x.detach().cpu().numpy()``)."""
        return self

    def clone(self):
        """A copy with its own memory that stays in the graph (the gradient passes through)."""
        return _ops.Clone.apply(self)

    def zero_grad(self):
        self.grad = None

    def __repr__(self):
        body = np.array2string(self.data, separator=", ", prefix="tensor(", threshold=20)
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({body}, dtype={self.dtype}{extra})"

    # --- backward --------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False, *, gradient=None):
        """Add d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires a gradient.

        ``grad`` (PyTorch's name: ``gradient``) is the gradient of some scalar with respect to
        ``self``; it may be left out only when ``self`` holds a single number (a loss). Gradients
        accumulate (``+=``) as in PyTorch: call ``zero_grad()`` between steps. The graph is freed
        afterwards unless ``retain_graph=True``.
        """
        grad = _either_name("backward", "grad", grad, None, "gradient", gradient)
        if not self.requires_grad:
            raise RuntimeError(
                "backward: this tensor does not require a gradient (no input of the computation has "
                "requires_grad=True, or it was computed under no_grad())"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward: grad can be left out only for a scalar output (one element, e.g. a loss), "
                    f"but this tensor has shape {self.shape}; call .sum() or .mean() first, or pass grad="
                )
            grad = np.ones_like(self.data)
        else:
            grad = _as_array(grad, self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape} but the tensor has shape {self.shape}")
        _run_backward(self, grad, retain_graph)

    # --- operators (NumPy broadcasting on both sides) -----------------------------------------
    def __add__(self, other):
        return _ops.Add.apply(self, _operand(other, self))

    def __radd__(self, other):
        return _ops.Add.apply(_operand(other, self), self)

    def __sub__(self, other):
        return _ops.Sub.apply(self, _operand(other, self))

    def __rsub__(self, other):
        return _ops.Sub.apply(_operand(other, self), self)

    def __mul__(self, other):
        return _ops.Mul.apply(self, _operand(other, self))

    def __rmul__(self, other):
        return _ops.Mul.apply(_operand(other, self), self)

    def __truediv__(self, other):
        return _ops.Div.apply(self, _operand(other, self))

    def __rtruediv__(self, other):
        return _ops.Div.apply(_operand(other, self), self)

    def __pow__(self, other):
        return _ops.Pow.apply(self, _operand(other, self))

    def __rpow__(self, other):
        return _ops.Pow.apply(_operand(other, self), self)

    def __neg__(self):
        return _ops.Neg.apply(self)

    def __abs__(self):
        return _ops.Abs.apply(self)

    def __matmul__(self, other):
        return _ops.MatMul.apply(self, _operand(other, self))

    def __rmatmul__(self, other):
        return _ops.MatMul.apply(_operand(other, self), self)

    # // and % (integer arithmetic on ids, mostly): values without a gradient
    def __floordiv__(self, other):
        return self._integer_op(np.floor_divide, self, other, "//")

    def __rfloordiv__(self, other):
        return self._integer_op(np.floor_divide, other, self, "//")

    def __mod__(self, other):
        return self._integer_op(np.remainder, self, other, "%")

    def __rmod__(self, other):
        return self._integer_op(np.remainder, other, self, "%")

    @staticmethod
    def _integer_op(fn, a, b, symbol):
        """``fn(a, b)`` (Python's floor division / modulo, as PyTorch's) as a tensor without gradient;
        refused where a gradient was wanted, rather than dropped silently."""
        for t in (a, b):
            if isinstance(t, Tensor) and t.requires_grad and _GradMode.enabled:
                raise RuntimeError(f"{symbol}: has no gradient here; apply it to x.detach() (or under no_grad())")
        like = a if isinstance(a, Tensor) else b
        return Tensor._wrap(np.asarray(fn(_operand(a, like).data, _operand(b, like).data)))

    # comparisons give plain bool arrays: they have no gradient
    def __lt__(self, other):
        return Tensor._wrap(self.data < _data(other))

    def __le__(self, other):
        return Tensor._wrap(self.data <= _data(other))

    def __gt__(self, other):
        return Tensor._wrap(self.data > _data(other))

    def __ge__(self, other):
        return Tensor._wrap(self.data >= _data(other))

    # == and != compare element-wise too, as PyTorch's (``(logits.argmax(-1) == y).float().mean()``
    # is an accuracy); a tensor stays hashable by identity (a dict key, a set member), as PyTorch's
    def __eq__(self, other):
        if other is None:
            return False
        return Tensor._wrap(np.asarray(self.data == _data(other)))

    def __ne__(self, other):
        if other is None:
            return True
        return Tensor._wrap(np.asarray(self.data != _data(other)))

    __hash__ = object.__hash__

    def __bool__(self):
        """The truth of a one-element tensor (``if (loss < 5):``); more elements are ambiguous, an
        error as in PyTorch (``x in some_list`` compares with ==, so it needs identity or one element)."""
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor of shape {self.shape} is ambiguous: use (x).all() "
                               "or (x).any() on its .data, or compare one element")
        return bool(self.data.reshape(()))

    # --- element-wise functions ---------------------------------------------------------------
    def exp(self):
        return _ops.Exp.apply(self)

    def log(self):
        return _ops.Log.apply(self)

    def tanh(self):
        return _ops.Tanh.apply(self)

    def sqrt(self):
        return _ops.Sqrt.apply(self)

    def relu(self):
        return _ops.ReLU.apply(self)

    def clamp(self, min=None, max=None):
        """Each value held in [min, max] (either may be None), as PyTorch's ``clamp`` / ``clip``;
        the gradient passes where min <= x <= max. Bounds are numbers (for a tensor bound, use
        :meth:`maximum` / :meth:`minimum`)."""
        if min is None and max is None:
            raise ValueError("clamp: give min, max or both")
        if isinstance(min, Tensor) or isinstance(max, Tensor):
            raise TypeError("clamp: min and max must be numbers here; for a tensor bound use x.maximum(lo) / "
                            "x.minimum(hi)")
        return _ops.Clamp.apply(self, lo=min, hi=max)

    clip = clamp

    def maximum(self, other):
        """Element-wise max with ``other`` (broadcast), as ``torch.maximum``: ties split the gradient."""
        return _ops.Maximum.apply(self, _operand(other, self))

    def minimum(self, other):
        """Element-wise min with ``other`` (broadcast), as ``torch.minimum``: ties split the gradient."""
        return _ops.Minimum.apply(self, _operand(other, self))

    def sigmoid(self):
        return _ops.Sigmoid.apply(self)

    def abs(self):
        """|x|; its gradient at 0 is 0, as PyTorch's."""
        return _ops.Abs.apply(self)

    def pow(self, exponent):
        """``self ** exponent`` (a number or a Tensor), PyTorch's name for it."""
        return self ** exponent

    def sin(self):
        return _ops.Sin.apply(self)

    def cos(self):
        return _ops.Cos.apply(self)

    def square(self):
        """x * x."""
        return self * self

    def rsqrt(self):
        """1 / sqrt(x)."""
        return self ** -0.5

    def tril(self, diagonal=0):
        """The last two axes' lower triangle (j <= i + diagonal) kept, the rest 0, as ``torch.tril``."""
        return self._triangle(np.tril, diagonal, "tril")

    def triu(self, diagonal=0):
        """The last two axes' upper triangle (j >= i + diagonal) kept, the rest 0, as ``torch.triu``."""
        return self._triangle(np.triu, diagonal, "triu")

    def _triangle(self, keep, diagonal, op):
        if self.ndim < 2:
            raise ValueError(f"{op}: needs at least 2 dimensions, got shape {self.shape}")
        kept = keep(np.ones(self.shape[-2:], dtype=bool), int(diagonal))
        return self.masked_fill(~kept, 0)

    # --- PyTorch's method names for the operators -------------------------------------------------
    def add(self, other, *, alpha=1):
        """self + alpha * other, as ``torch.add``."""
        return self + (other if alpha == 1 else other * alpha)

    def sub(self, other, *, alpha=1):
        """self - alpha * other, as ``torch.sub``."""
        return self - (other if alpha == 1 else other * alpha)

    def mul(self, other):
        return self * other

    def div(self, other, *, rounding_mode=None):
        """self / other (true division; torch's rounding modes have no gradient and are not here)."""
        if rounding_mode is not None:
            raise ValueError(f"div: rounding_mode {rounding_mode!r} is not supported; use (a / b).data with "
                             "np.floor or np.trunc for a rounded quotient")
        return self / other

    def neg(self):
        return -self

    def matmul(self, other):
        return self @ other

    def bmm(self, other):
        """Batched matrix product of (B, n, m) and (B, m, p) tensors, as ``torch.bmm`` (which,
        unlike ``matmul``, does not broadcast)."""
        other_shape = np.shape(_data(other))
        if self.ndim != 3 or len(other_shape) != 3 or self.shape[0] != other_shape[0]:
            raise ValueError(f"bmm: needs two 3-D tensors with the same batch size, got shapes {self.shape} "
                             f"and {other_shape}")
        return self @ other

    def eq(self, other):
        return self == other

    def ne(self, other):
        return self != other

    def lt(self, other):
        return self < other

    def le(self, other):
        return self <= other

    def gt(self, other):
        return self > other

    def ge(self, other):
        return self >= other

    # --- reductions -----------------------------------------------------------------------------
    # ``dim=`` and ``keepdim=`` are PyTorch's names for NumPy's ``axis=`` and ``keepdims=``
    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        axis, keepdims = _torch_names("sum", axis, keepdims, dim, keepdim)
        return _ops.Sum.apply(self, axis=_norm_axis(axis, self.ndim, "sum"), keepdims=keepdims)

    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        axis, keepdims = _torch_names("mean", axis, keepdims, dim, keepdim)
        return _ops.Mean.apply(self, axis=_norm_axis(axis, self.ndim, "mean"), keepdims=keepdims)

    def max(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """The largest values, NumPy's way and PyTorch's:

        * ``x.max()`` / ``x.max(axis, keepdims)``: the values (NumPy's ``max``, PyTorch's ``amax``);
          tied maxima share the gradient evenly;
        * ``x.max(dim=d, keepdim=False)``: PyTorch's pair ``(values, indices)``, the index of the
          first maximum, which receives the whole gradient (as PyTorch sends it);
        * ``x.max(other)`` with a Tensor: the element-wise :meth:`maximum`.
        """
        return self._extreme(_ops.Max, self.maximum, self.argmax, axis, keepdims, dim, keepdim)

    def amax(self, dim=None, keepdim=False):
        """PyTorch's ``amax``: the largest values over ``dim`` (ties share the gradient)."""
        return self.max(dim, keepdim)

    def min(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """The smallest values, as :meth:`max`: values for ``axis`` (PyTorch's ``amin``), the pair
        ``(values, indices)`` for ``dim=``, :meth:`minimum` for a Tensor."""
        return self._extreme(_ops.Min, self.minimum, self.argmin, axis, keepdims, dim, keepdim)

    def amin(self, dim=None, keepdim=False):
        """PyTorch's ``amin``: the smallest values over ``dim`` (ties share the gradient)."""
        return self.min(dim, keepdim)

    def _extreme(self, reduce, elementwise, arg, axis, keepdims, dim, keepdim):
        """max / min: the reduction ``reduce`` (ops.Max / ops.Min) over ``axis``, PyTorch's
        (values, indices) over ``dim`` (values gathered at ``arg``'s indices), or ``elementwise``."""
        name = reduce.name
        if isinstance(axis, Tensor):
            return elementwise(axis)
        if dim is None:
            if keepdim is not None:
                raise TypeError(f"{name}: keepdim= goes with dim= (PyTorch's (values, indices) form); with axis= "
                                "it is keepdims=")
            return reduce.apply(self, axis=_norm_axis(axis, self.ndim, name), keepdims=keepdims)
        if axis is not None or keepdims:
            raise TypeError(f"{name}: pass axis= (values) or dim= (values and indices), not both")
        indices = arg(dim, keepdim=True)
        values = self.gather(dim, indices)
        if not keepdim:
            values, indices = values.squeeze(dim), indices.squeeze(dim)
        return ValuesIndices(values, indices)

    def all(self, dim=None, keepdim=False):
        """Whether every element (along ``dim``) is nonzero: a bool tensor without gradient."""
        axis = None if dim is None else _norm_axis(dim, self.ndim, "all")
        return Tensor._wrap(np.asarray(self.data.astype(bool).all(axis=axis, keepdims=keepdim)))

    def any(self, dim=None, keepdim=False):
        """Whether some element (along ``dim``) is nonzero: a bool tensor without gradient."""
        axis = None if dim is None else _norm_axis(dim, self.ndim, "any")
        return Tensor._wrap(np.asarray(self.data.astype(bool).any(axis=axis, keepdims=keepdim)))

    def norm(self, p="fro", dim=None, keepdim=False):
        """The p-norm over ``dim`` (all elements when None), as ``torch.Tensor.norm``: p = 2 or "fro"
        (sqrt of the sum of squares; its gradient at the zero vector is 0), 1, or inf."""
        axis = _norm_axis(dim, self.ndim, "norm")
        if p in (2, "fro"):
            return _ops.Norm.apply(self, axis=axis, keepdims=keepdim)
        if p == 1:
            return self.abs().sum(axis=axis, keepdims=keepdim)
        if p in (float("inf"), "inf"):
            return self.abs().max(axis=axis, keepdims=keepdim)
        raise ValueError(f"norm: p={p!r} is not supported; use 2 (or 'fro'), 1 or inf")

    def cumsum(self, dim):
        """Running sums along ``dim``, as ``torch.cumsum``."""
        if self.ndim == 0:
            return self.clone()
        return _ops.CumSum.apply(self, axis=_single_axis(dim, self.ndim, "cumsum"))

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """The variance over ``dim`` (all axes when None), with PyTorch's arguments and defaults::

            var = sum((x - mean)^2) / max(0, N - correction),   N elements per result

        ``correction=1`` (the default, Bessel's: the unbiased estimate) or ``unbiased=True`` /
        ``False`` (correction 1 / 0); not both. Positional arguments as PyTorch's:
        ``x.var(dim, unbiased, keepdim)``, and ``x.var(False)`` is ``unbiased=False`` over all axes.
        NumPy's ``np.var`` divides by N (``correction=0``). N - correction <= 0 gives inf or nan,
        as in PyTorch. Composed from mean, sum and division, so its gradient,
        2 (x - mean) / (N - correction), comes from theirs.
        """
        if isinstance(dim, bool):  # torch's x.var(False): the one positional argument is unbiased
            dim, unbiased = None, dim
        if unbiased is not None and correction is not None:
            raise TypeError(f"var: pass unbiased= or correction=, not both (got unbiased={unbiased!r}, "
                            f"correction={correction!r})")
        if correction is None:
            correction = 1 if unbiased is None or unbiased else 0
        axis = _norm_axis(dim, self.ndim, "var")
        count = int(np.prod([self.shape[a] for a in axis]))
        centred = self - self.mean(axis, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):  # N - correction <= 0: inf or nan, as torch
            return (centred * centred).sum(axis, keepdims=keepdim) / float(max(0, count - correction))

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """The standard deviation, sqrt(:meth:`var`) with the same arguments and PyTorch's
        defaults (``correction=1``)."""
        return self.var(dim, unbiased, keepdim, correction=correction).sqrt()

    def softmax(self, axis=-1, *, dim=None):
        axis = _either_name("softmax", "axis", axis, -1, "dim", dim)
        return _ops.Softmax.apply(self, axis=_single_axis(axis, self.ndim, "softmax"))

    def log_softmax(self, axis=-1, *, dim=None):
        axis = _either_name("log_softmax", "axis", axis, -1, "dim", dim)
        return _ops.LogSoftmax.apply(self, axis=_single_axis(axis, self.ndim, "log_softmax"))

    # --- shape ------------------------------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.Reshape.apply(self, shape=shape)

    view = reshape

    def transpose(self, *axes):
        """``transpose()`` reverses the axes (NumPy); ``transpose(i, j)`` swaps two axes (PyTorch,
        also on a 2-D tensor); three or more axes are a full permutation (NumPy)."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if not axes:
            perm = tuple(reversed(range(self.ndim)))
        elif len(axes) == 2:
            i, j = _norm_axis(axes, self.ndim, "transpose")
            perm = list(range(self.ndim))
            perm[i], perm[j] = perm[j], perm[i]
            perm = tuple(perm)
        else:
            perm = _norm_axis(axes, self.ndim, "transpose")
            if sorted(perm) != list(range(self.ndim)):
                raise ValueError(f"transpose: axes {axes} are not a permutation of {self.ndim} axes")
        return _ops.Transpose.apply(self, axes=perm)

    def permute(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        perm = _norm_axis(axes, self.ndim, "permute")
        if sorted(perm) != list(range(self.ndim)):
            raise ValueError(f"permute: axes {axes} are not a permutation of {self.ndim} axes")
        return _ops.Transpose.apply(self, axes=perm)

    @property
    def T(self):
        return self.transpose()

    @property
    def mT(self):
        """The last two axes swapped (PyTorch's ``x.mT``: each matrix of a batch transposed)."""
        if self.ndim < 2:
            raise ValueError(f"mT: needs a matrix or a batch of matrices, got a tensor of shape {self.shape}")
        return self.transpose(-2, -1)

    def flatten(self, start_dim=0, end_dim=-1):
        """Axes ``start_dim .. end_dim`` (inclusive) merged into one, as PyTorch's; a 0-d tensor
        becomes shape (1,)."""
        if self.ndim == 0:
            for d in (start_dim, end_dim):
                _norm_axis(d, 0, "flatten")  # 0 or -1 only
            return self.reshape(1)
        start, end = (_single_axis(d, self.ndim, "flatten") for d in (start_dim, end_dim))
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                             f"for a tensor of shape {self.shape}")
        return self.reshape(self.shape[:start] + (-1,) + self.shape[end + 1:])

    def expand(self, *sizes):
        """A view of this tensor repeated along axes of size 1 (and new leading axes) to ``sizes``,
        as PyTorch's: -1 keeps an axis's size; the gradient sums over the repeated axes."""
        sizes = _sizes_arg(sizes)
        shape = self.shape
        if len(sizes) < len(shape):
            raise ValueError(f"expand: {len(sizes)} sizes {sizes} for a tensor of shape {shape}: "
                             f"give at least one size per axis")
        new_axes = len(sizes) - len(shape)
        target = []
        for i, size in enumerate(sizes):
            old = shape[i - new_axes] if i >= new_axes else None
            if size == -1 and old is None:
                raise ValueError(f"expand: size -1 at new leading axis {i} in {sizes}: a new axis needs its size")
            size = old if size == -1 else size
            if size < 0 or (old is not None and old != 1 and old != size):
                raise ValueError(f"expand: cannot expand shape {shape} to {sizes}: size {sizes[i]} at axis {i} "
                                 f"does not match the existing size {old} (only size-1 axes expand)")
            target.append(size)
        return _ops.Expand.apply(self, shape=tuple(target))

    def repeat(self, *sizes):
        """This tensor tiled ``sizes[i]`` times along axis i, as PyTorch's ``repeat`` (NumPy's
        ``tile``); more sizes than axes add leading axes. The data is copied."""
        sizes = _sizes_arg(sizes)
        if len(sizes) < self.ndim or any(n < 0 for n in sizes):
            raise ValueError(f"repeat: sizes {sizes} for a tensor of shape {self.shape}: give one non-negative "
                             f"count per axis (at least {self.ndim})")
        return _ops.Repeat.apply(self, reps=sizes)

    def split(self, split_size_or_sections, dim=0):
        """Pieces along ``dim``, as PyTorch's: an int gives pieces of that size (the last may be
        smaller), a list gives one piece per size (they must add up to the axis's length). Returns
        a tuple of Tensors, each in the graph (nanoGPT: ``q, k, v = qkv.split(n_embd, dim=2)``)."""
        axis = _single_axis(dim, self.ndim, "split")
        if axis is None:
            raise ValueError("split: a tensor with 0 dimensions has no axis to split")
        length = self.shape[axis]
        if isinstance(split_size_or_sections, (int, np.integer)):
            size = int(split_size_or_sections)
            if size <= 0 and length > 0:
                raise ValueError(f"split: split size must be positive, got {size}")
            sizes = [min(size, length - start) for start in range(0, length, size)] if length else [0]
        else:
            sizes = [int(n) for n in split_size_or_sections]
            if sum(sizes) != length or any(n < 0 for n in sizes):
                raise ValueError(f"split: sizes {sizes} must be non-negative and add up to {length}, the length of "
                                 f"axis {dim} of a tensor of shape {self.shape} (they add up to {sum(sizes)})")
        starts = np.cumsum([0] + sizes[:-1])
        lead = (slice(None),) * axis
        return tuple(self[lead + (slice(int(start), int(start) + n),)] for start, n in zip(starts, sizes))

    def chunk(self, chunks, dim=0):
        """``chunks`` pieces along ``dim`` of ceil(length / chunks) each, as PyTorch's (the last may
        be smaller, and there may be fewer than ``chunks``). A tuple of Tensors, as :meth:`split`."""
        if not isinstance(chunks, (int, np.integer)) or chunks <= 0:
            raise ValueError(f"chunk: chunks must be a positive int, got {chunks!r}")
        axis = _single_axis(dim, self.ndim, "chunk")
        if axis is None:
            raise ValueError("chunk: a tensor with 0 dimensions has no axis to split")
        length = self.shape[axis]
        return self.split(max(1, -(-length // int(chunks))), dim)

    def unsqueeze(self, dim):
        """A new axis of size 1 at ``dim`` (PyTorch's; ``x[:, None]`` in NumPy), -ndim-1 <= dim <= ndim."""
        if not -self.ndim - 1 <= dim <= self.ndim:
            raise ValueError(f"unsqueeze: dim {dim} is out of range for a tensor with {self.ndim} dimensions")
        dim %= self.ndim + 1
        return self.reshape(self.shape[:dim] + (1,) + self.shape[dim:])

    def squeeze(self, dim=None):
        """Drop the axes of size 1 (all, or those among ``dim``); as in PyTorch, an axis in ``dim``
        whose size is not 1 is left alone (NumPy would raise)."""
        axes = range(self.ndim) if dim is None else _norm_axis(dim, self.ndim, "squeeze")
        drop = {a for a in axes if self.shape[a] == 1}
        return self.reshape(tuple(n for a, n in enumerate(self.shape) if a not in drop))

    def masked_fill(self, mask, value):
        """``value`` where ``mask`` (bool, broadcast to x) is True, else x; the gradient flows to the
        kept elements only (nanoGPT: ``att.masked_fill(bias == 0, float("-inf"))``)."""
        from .functional import where  # functional builds on this module: import at call time

        mask = np.asarray(_data(mask))
        if mask.dtype != bool:
            raise TypeError(f"masked_fill: mask must be bool, got dtype {mask.dtype}")
        return where(mask, np.asarray(value, dtype=self.dtype), self)

    def argmax(self, dim=None, keepdim=False):
        """Index of the largest element (flattened when ``dim`` is None), an int64 tensor without
        gradient; ties give the first index, as NumPy and PyTorch."""
        axis = None if dim is None else _single_axis(dim, self.ndim, "argmax")
        return Tensor._wrap(np.asarray(self.data.argmax(axis=axis, keepdims=keepdim and axis is not None),
                                       dtype=np.int64))

    def argmin(self, dim=None, keepdim=False):
        """Index of the smallest element, as :meth:`argmax` (ties give the first index)."""
        axis = None if dim is None else _single_axis(dim, self.ndim, "argmin")
        return Tensor._wrap(np.asarray(self.data.argmin(axis=axis, keepdims=keepdim and axis is not None),
                                       dtype=np.int64))

    def __getitem__(self, index):
        return _ops.GetItem.apply(self, index=_check_index(index, self.shape))

    def __setitem__(self, index, value):
        """x[index] = value in place, as in PyTorch (nanoGPT's top-k filter:
        ``logits[logits < v[:, [-1]]] = -float("inf")``), for a tensor whose values no graph
        depends on: one that does not require grad, or any under ``no_grad()``."""
        if self.requires_grad and _GradMode.enabled:
            raise RuntimeError(f"x[index] = value: a tensor of shape {self.shape} that requires grad cannot be "
                               "changed in place while grad mode is on; build a new tensor (torch.where-style: "
                               "F.where, x.masked_fill) or wrap the change in tinyllm.no_grad()")
        if not self.data.flags.writeable:  # a read-only array (memory-mapped weights, a broadcast view): a copy
            self.data = self.data.copy()
        self.data[_check_index(index, self.shape)] = _data(value)

    def gather(self, dim, index):
        """Values picked along ``dim`` by ``index`` (int, same number of dimensions, each other
        axis at most x's), as ``torch.gather``: out[i][j] = x[i][index[i][j]] for dim = 1. The
        gradient goes back to the picked places (added up where an index repeats)."""
        axis = _single_axis(dim, self.ndim, "gather")
        index = np.asarray(_data(index))
        if index.dtype.kind not in "iu" or index.ndim != self.ndim:
            raise ValueError(f"gather: index must be an integer tensor with {self.ndim} dimensions like the input, "
                             f"got dtype {index.dtype} and shape {index.shape}")
        if any(n > m for a, (n, m) in enumerate(zip(index.shape, self.shape)) if a != axis):
            raise ValueError(f"gather: index of shape {index.shape} is larger than the input {self.shape} outside "
                             f"dim {dim}")
        if index.size and not (-self.shape[axis] <= index.min() and index.max() < self.shape[axis]):
            raise IndexError(f"gather: index values {index.min()}..{index.max()} out of range for dim {dim} of "
                             f"size {self.shape[axis]}")
        return _ops.Gather.apply(self, index=index % max(self.shape[axis], 1), axis=axis)

    def topk(self, k, dim=-1, largest=True, sorted=True):
        """The k largest (or smallest) values along ``dim`` and their indices, as ``torch.topk``:
        a pair ``(values, indices)`` with ``.values`` and ``.indices``. Equal values come in index
        order. The gradient flows to the chosen elements."""
        axis = _single_axis(dim, self.ndim, "topk")
        size = self.shape[axis] if self.ndim else 1
        if not 0 <= k <= size:
            raise ValueError(f"topk: k={k} is out of range for dim {dim} of size {size}")
        order = self._order(axis, descending=largest)
        indices = np.take(order, np.arange(k), axis=axis) if self.ndim else order
        return ValuesIndices(self.gather(axis, indices) if self.ndim else self.clone(), Tensor._wrap(indices))

    def sort(self, dim=-1, descending=False, stable=False):
        """The values along ``dim`` in order and where they came from, as ``torch.sort``: a pair
        ``(values, indices)``. Always stable here (equal values keep their order)."""
        axis = _single_axis(dim, self.ndim, "sort")
        indices = self._order(axis, descending)
        return ValuesIndices(self.gather(axis, indices) if self.ndim else self.clone(), Tensor._wrap(indices))

    def _order(self, axis, descending):
        """int64 indices that sort along ``axis``, stably: equal values keep their index order.
        Descending: the reversed axis sorted ascending, read backwards (no negation, which would
        overflow integers and reorder -0.0); NaN counts as the largest, as in PyTorch."""
        if self.ndim == 0:
            return np.zeros((), dtype=np.int64)
        if not descending:
            return np.argsort(self.data, axis=axis, kind="stable").astype(np.int64, copy=False)
        backwards = np.argsort(np.flip(self.data, axis), axis=axis, kind="stable")
        return (self.shape[axis] - 1 - np.flip(backwards, axis)).astype(np.int64, copy=False)

    # --- new tensors like this one, and in-place fills ----------------------------------------------
    def type_as(self, other):
        """This tensor in ``other``'s dtype."""
        return self.astype(other.dtype)

    def new_tensor(self, data, dtype=None, requires_grad=False):
        return Tensor(np.array(data, dtype=dtype or self.dtype), requires_grad=requires_grad)

    def new_full(self, size, fill_value, dtype=None, requires_grad=False):
        return Tensor(np.full(_sizes_arg((size,)), fill_value, dtype=dtype or self.dtype), requires_grad=requires_grad)

    def new_zeros(self, *size, dtype=None, requires_grad=False):
        return self.new_full(_sizes_arg(size), 0, dtype, requires_grad)

    def new_ones(self, *size, dtype=None, requires_grad=False):
        return self.new_full(_sizes_arg(size), 1, dtype, requires_grad)

    new_empty = new_zeros  # NumPy's empty would hand out whatever memory held; zeros cost little more

    def fill_(self, value):
        """Every element := ``value``, in place (allowed on a tensor that requires a gradient only
        under ``no_grad()``, as in PyTorch: the graph would not know the values changed)."""
        if self.requires_grad and _GradMode.enabled:
            raise RuntimeError(f"fill_: a tensor of shape {self.shape} that requires grad cannot be changed in "
                               "place while grad mode is on; wrap the change in tinyllm.no_grad()")
        if self.data.flags.writeable:
            self.data[...] = value
        else:  # a read-only array (memory-mapped weights): a new one
            self.data = np.full(self.shape, value, dtype=self.dtype)
        return self

    def zero_(self):
        return self.fill_(0)

    # --- looking at gradients as they pass ----------------------------------------------------------
    def register_hook(self, hook):
        """Call ``hook(grad)`` with this tensor's gradient (an ndarray) each time backward computes
        it, before it goes on (to ``.grad`` for a leaf); a returned array replaces it. As PyTorch's;
        returns a handle whose ``remove()`` unregisters the hook."""
        if not self.requires_grad:
            raise RuntimeError(f"register_hook: a tensor of shape {self.shape} that does not require grad gets no "
                               "gradient")
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(hook)
        return _HookHandle(self._hooks, hook)

    def retain_grad(self):
        """Keep this non-leaf tensor's gradient in ``.grad`` after backward (leaves always do)."""
        if not self.requires_grad:
            raise RuntimeError(f"retain_grad: a tensor of shape {self.shape} that does not require grad gets no "
                               "gradient")
        if self._ctx is None or any(h is _RETAIN for h in self._hooks or ()):
            return
        self.register_hook(_RETAIN)


class ValuesIndices(tuple):
    """``(values, indices)`` of :meth:`Tensor.topk`, :meth:`Tensor.sort` and ``max`` / ``min`` with
    ``dim=``, with PyTorch's names for the two."""

    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])

    def __repr__(self):
        return f"ValuesIndices(\nvalues={self[0]!r},\nindices={self[1]!r})"


class _HookHandle:
    def __init__(self, hooks, hook):
        self.hooks, self.hook = hooks, hook

    def remove(self):
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


def _RETAIN(grad):
    """The marker hook of retain_grad: _run_backward stores the gradient in the tensor's .grad."""


class _Size(int):
    """A tensor's element count, NumPy's ``x.size``, that is also PyTorch's ``x.size()``: called,
    it gives the shape, or with ``dim`` the length of that axis (``B, T, C = x.size()``)."""

    def __new__(cls, count, shape=()):
        self = super().__new__(cls, count)
        self.shape = shape
        return self

    def __call__(self, dim=None):
        if dim is None:
            return self.shape
        if not self.shape:
            raise ValueError(f"size: a tensor with 0 dimensions has no axis {dim}")
        return self.shape[_single_axis(dim, len(self.shape), "size")]


def tensor(data, requires_grad=False, dtype=None):
    """``tinyllm.tensor(data)``, like ``torch.tensor``."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# helpers


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _operand(other, like):
    """The other side of a binary operator as a Tensor (no gradient unless it already was one).

    Python numbers take the tensor's dtype (a float32 tensor times 0.5 stays float32), as in
    PyTorch and NumPy 2; ndarrays keep theirs, and NumPy's promotion rules then apply.
    """
    if isinstance(other, Tensor):
        return other
    if isinstance(other, (bool, int, float)):
        kind = like.data.dtype.kind
        if kind == "f" or (kind in "iub" and isinstance(other, int)):
            return Tensor._wrap(np.asarray(other, dtype=like.data.dtype))
        return Tensor._wrap(np.asarray(other, dtype=np.float32))
    return Tensor(other)


def _sizes_arg(sizes):
    """A shape given as separate ints or as one tuple / list (``x.expand(2, 3)``, ``x.expand((2, 3))``)."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    return tuple(int(n) for n in sizes)


def dtype_or_cpu(value, op):
    """The ``np.dtype`` that ``value`` names, or None for PyTorch's device "cpu" (tinyllm runs on
    the CPU, so moving there changes nothing); another device is a ValueError naming it."""
    if isinstance(value, str) and value.split(":")[0] in ("cpu", "cuda", "mps", "xpu", "meta"):
        if value.split(":")[0] != "cpu":
            raise ValueError(f"{op}: tinyllm runs on the CPU only, got device {value!r}")
        return None
    try:
        return np.dtype(value)
    except TypeError:
        raise TypeError(f"{op}: {value!r} is neither a dtype (np.float32, 'float64', 'int64', ...) "
                        "nor the device 'cpu'") from None


def _either_name(op, name, value, default, torch_name, torch_value):
    """The argument given under tinyllm's (NumPy's) ``name`` or under PyTorch's ``torch_name``
    (``axis`` / ``dim``): PyTorch's wins when given, and giving both is an error."""
    if torch_value is None:
        return value
    given = value is not None if default is None else value != default
    if given:
        raise TypeError(f"{op}: pass {name}= or {torch_name}=, not both "
                        f"(got {name}={value!r} and {torch_name}={torch_value!r})")
    return torch_value


def _torch_names(op, axis, keepdims, dim, keepdim):
    """(axis, keepdims) of a reduction called with NumPy's names or PyTorch's (dim, keepdim)."""
    return (_either_name(op, "axis", axis, None, "dim", dim),
            bool(_either_name(op, "keepdims", keepdims, False, "keepdim", keepdim)))


def _norm_axis(axis, ndim, op):
    """``axis`` (None, int or tuple, negatives allowed) as a sorted tuple of non-negative ints."""
    if axis is None or ndim == 0:  # a 0-d tensor has no axis to reduce (0 and -1 accepted, as PyTorch)
        if ndim == 0 and axis not in (None, 0, -1, (), (0,), (-1,)):
            raise ValueError(f"{op}: axis {axis} is out of range for a tensor with 0 dimensions")
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    n = max(ndim, 1)
    out = []
    for a in axes:
        if not -n <= a < n:
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(int(a) % n)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: axis {axis} repeats an axis")
    return tuple(out) if op in ("transpose", "permute") else tuple(sorted(out))


def _single_axis(axis, ndim, op):
    """One axis (an int, negative allowed) for ops such as softmax that act along a single axis."""
    if not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be one int, got {axis!r}")
    if ndim == 0:
        return None
    return _norm_axis(axis, ndim, op)[0]


def _check_index(index, shape):
    """The index with Tensors replaced by their arrays; integer entries checked against the shape."""
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(p.data if isinstance(p, Tensor) else p for p in index)
    parts = index if isinstance(index, tuple) else (index,)
    if len(parts) <= len(shape) and all(type(p) is slice or (type(p) is int and -n <= p < n)
                                        for p, n in zip(parts, shape)):
        return index  # slices and in-range ints, the common case (x[0], x[:, -1]): nothing to judge
    try:  # let NumPy judge the index on a zero-cost view of the same shape
        np.broadcast_to(np.empty((), dtype=np.int8), shape)[index]
    except IndexError as e:
        raise IndexError(f"index {index!r} does not fit a tensor of shape {shape}: {e}") from None
    return index


def _topological_order(root):
    """Tensors of the graph below ``root``, each after every tensor it depends on.

    Iterative depth-first search (a deep graph, e.g. a chain of 10,000 ops, would overflow
    Python's recursion limit with the recursive textbook version).
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        ctx = node._ctx
        if ctx is not None and ctx.parents is not None:
            for parent in ctx.parents:
                if isinstance(parent, Tensor) and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def _run_backward(root, grad, retain_graph):
    """Hand each tensor's gradient to the Function that made it, from the output to the leaves.

    ``grads`` holds the gradient w.r.t. every tensor reached so far; in reverse topological order
    each tensor's gradient is complete (all its uses come later in the graph, so were visited
    before) when it is popped. A leaf adds it into ``.grad``; a Function's ``backward`` turns it
    into gradients of its inputs, which are added into ``grads``.
    """
    if root._ctx is not None and root._ctx.parents is None:
        raise RuntimeError(
            "backward: the graph of this tensor was already freed by an earlier backward(); "
            "pass retain_graph=True to the first call to go through it twice"
        )
    grads = {id(root): grad}
    for node in reversed(_topological_order(root)):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if node._hooks:
            g = _run_hooks(node, g)
        if node._ctx is None:  # a leaf: accumulate, as PyTorch does
            node.grad = _grad_sums.accumulate_grad(node.grad, g, leaf=True)
            continue
        _backward_through(node._ctx, g, grads)
        if not retain_graph:
            node._ctx.parents = None
            node._ctx.saved_tensors = None


def _run_hooks(node, g):
    """``node``'s gradient g after its register_hook functions (retain_grad's keeps it in .grad)."""
    for hook in list(node._hooks):
        if hook is _RETAIN:
            node.grad = _grad_sums.accumulate_grad(node.grad, g, leaf=True)
            continue
        out = hook(g)
        if out is not None:
            out = np.asarray(out.data if isinstance(out, Tensor) else out)
            if out.shape != g.shape:
                raise ValueError(f"register_hook: the hook returned a gradient of shape {out.shape} for a tensor of "
                                 f"shape {g.shape}")
            g = out.astype(g.dtype, copy=False)
    return g


def _backward_through(ctx, g, grads):
    """Run ``ctx.backward`` on g and add each input's gradient into ``grads``."""
    if ctx.parents is None:
        raise RuntimeError(
            "backward: part of this graph was already freed by an earlier backward(); "
            "pass retain_graph=True to the first call"
        )
    input_grads = ctx.backward(ctx, g)
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    for parent, needs, pg in zip(ctx.parents, ctx.needs_input_grad, input_grads):
        if not needs or pg is None:
            continue
        pg = np.asarray(pg)  # NumPy turns 0-d results into scalars; keep gradients arrays
        assert pg.shape == parent.shape, (
            f"{type(ctx).__name__}.backward returned a gradient of shape {pg.shape} "
            f"for an input of shape {parent.shape}"
        )
        if pg.dtype != parent.dtype:
            pg = pg.astype(parent.dtype)
        grads[id(parent)] = _grad_sums.accumulate_grad(grads.get(id(parent)), pg)


from . import ops as _ops  # noqa: E402  (ops needs Tensor and Function defined above)
from .kernels.dispatch import dispatch as _dispatch  # noqa: E402

# Adding up gradients, and a leaf's .grad: kernels/accumulate.py (fast: on all cores and without
# copies where it can; in reference mode: plain NumPy)
_grad_sums = _dispatch("accumulate")
