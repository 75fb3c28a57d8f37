"""``tinyllm.gradcheck``: compare backward() with central finite differences, like
``torch.autograd.gradcheck``.

For a function ``f`` of tensors ``x_1 .. x_n`` we test the scalar ``L = sum(f(x) * R)`` with a fixed
random ``R``. Weighting by ``R`` matters: a plain ``sum`` would hide any error in the gradient of
softmax or layer norm, whose outputs sum to a constant along a row, so their true gradient of
``sum`` is zero whatever the backward says. For every element ``x_i[j]``::

    numeric  = (L(x_i[j] + eps) - L(x_i[j] - eps)) / (2 eps)       error O(eps^2)
    analytic = x_i.grad[j] from L.backward()

and they must agree to ``atol + rtol * |numeric|``. Everything runs in float64: in float32 the
rounding error of L, about 1e-7 * |L| / eps, would swamp the comparison.
"""
import numpy as np

from .tensor import Tensor, no_grad

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with finite differences."""


def _as_float64_inputs(inputs):
    out = []
    for x in inputs:
        if isinstance(x, Tensor) and x.dtype.kind == "f":
            out.append(Tensor(x.data.astype(np.float64), requires_grad=x.requires_grad))
        else:
            out.append(x)
    return out


def _loss(fn, inputs, weights):
    out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    total = None
    for o, w in zip(outs, weights):
        term = (o * w).sum() if isinstance(o, Tensor) else None
        if term is not None:
            total = term if total is None else total + term
    return total


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check the gradients of ``fn(*inputs)`` w.r.t. every input with ``requires_grad=True``.

    ``inputs`` is a tuple of Tensors (and other arguments, passed through unchanged). Float
    tensors are cast to float64. Returns True, or raises :class:`GradcheckError` naming the input,
    the element and both values.
    """
    inputs = _as_float64_inputs(inputs if isinstance(inputs, (tuple, list)) else (inputs,))
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")

    rng = np.random.default_rng(seed)
    with no_grad():
        out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    weights = [rng.standard_normal(o.shape) if isinstance(o, Tensor) else None for o in outs]
    for o in outs:
        if isinstance(o, Tensor) and not np.isfinite(o.data).all():
            raise GradcheckError("gradcheck: the function's output is not finite at these inputs")

    loss = _loss(fn, inputs, weights)
    if not loss.requires_grad:
        raise GradcheckError("gradcheck: the output does not depend on any input that requires a gradient")
    loss.backward()

    for i in checked:
        x = inputs[i]
        analytic = x.grad if x.grad is not None else np.zeros_like(x.data)
        if analytic.shape != x.shape:
            raise GradcheckError(f"gradcheck: input {i} has shape {x.shape} but its gradient has shape {analytic.shape}")
        flat = x.data.reshape(-1)  # a view: writing it perturbs x in place
        if not np.shares_memory(flat, x.data):
            x.data = x.data.copy()
            flat = x.data.reshape(-1)
        for j in range(flat.size):
            numeric = _central_difference(fn, inputs, weights, flat, j, eps)
            got = analytic.reshape(-1)[j]
            if not np.isfinite(got) or abs(got - numeric) > atol + rtol * abs(numeric):
                index = np.unravel_index(j, x.shape)
                raise GradcheckError(
                    f"gradcheck: input {i} (shape {x.shape}), element {tuple(int(k) for k in index)}: "
                    f"analytic gradient {got:.10g} != numeric {numeric:.10g} "
                    f"(|difference| {abs(got - numeric):.3g} > atol {atol} + rtol {rtol} * |numeric|)"
                )
    return True


def _central_difference(fn, inputs, weights, flat, j, eps):
    orig = flat[j]
    with no_grad():
        flat[j] = orig + eps
        plus = _loss(fn, inputs, weights).item()
        flat[j] = orig - eps
        minus = _loss(fn, inputs, weights).item()
    flat[j] = orig
    return (plus - minus) / (2 * eps)
