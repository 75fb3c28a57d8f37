"""``tinyllm.gradcheck``: compare backward() with central finite differences, like
``torch.autograd.gradcheck``, but to the precision float64 can resolve.

For a function ``f`` of tensors ``x_1 .. x_n`` we test the scalar ``L = sum(f(x) * R)`` with a fixed
random ``R``. Weighting by ``R`` matters: a plain ``sum`` would hide any error in the gradient of
softmax or layer norm, whose outputs sum to a constant along a row, so their true gradient of
``sum`` is zero whatever the backward says. For every element ``x_i[j]``::

    numeric  = (L(x_i[j] + eps) - L(x_i[j] - eps)) / (step actually taken, ~2 eps)
    analytic = x_i.grad[j] from L.backward()

Everything runs in float64 (in float32 the rounding error of L, about 1e-7 * |L| / eps, would
swamp the comparison). The numeric value then has two errors:

* truncation, ``eps**2 / 6 * |d^3 L / dx^3|``: ~1e-12 times the third derivative at eps = 1e-6;
* rounding: each evaluation of L is off by a few ``u * S`` (``u`` = 2.2e-16, float64's machine
  epsilon, ``S = sum |f(x) * R|`` the size of what L adds up, which can be far larger than
  ``|L|`` when terms cancel), and the difference is divided by ``2 eps``: about ``u * S / eps``, 2e-10 S.

So they must agree to ``atol + rtol * |numeric| + noise`` with ``noise = 16 u S / eps``
(the rounding bound with room for the few roundings per term; measured on this suite's
checks the error stays below 5 u S / eps) and the defaults ``atol=1e-8``, ``rtol=1e-6``: a
systematic error of 0.01% in a gradient of size ~1 (1e-4) is 100 times the tolerance. PyTorch's
defaults (``atol=1e-5, rtol=1e-3``) accept an error of 0.1%. The step is the difference of the
two perturbed values as stored, not ``2 eps``: at ``|x| = 1e4`` ``x + eps`` rounds to a grid of
2e-12, which would otherwise be a relative error of 1e-6 in the step itself.
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


# The rounding noise allowance, in units of u * S / eps (see the module docstring).
NOISE_FACTOR = 16.0


def gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, seed=0):
    """Check the gradients of ``fn(*inputs)`` w.r.t. every input with ``requires_grad=True``.

    ``inputs`` is a tuple of Tensors (and other arguments, passed through unchanged). Float
    tensors are cast to float64. Each element must satisfy
    ``|analytic - numeric| <= atol + rtol * |numeric| + noise``, where ``noise`` is the rounding
    error of the finite difference (module docstring). Returns True, or raises
    :class:`GradcheckError` naming the input, the element, both values and the tolerance.
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
    # S = sum |f(x) * R|: the size of what L adds up, which sets the rounding noise of L
    size = sum(float(np.abs(o.data * w).sum()) for o, w in zip(outs, weights) if isinstance(o, Tensor))
    noise = NOISE_FACTOR * np.finfo(np.float64).eps * size / eps

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
            if not np.isfinite(got) or abs(got - numeric) > atol + rtol * abs(numeric) + noise:
                index = np.unravel_index(j, x.shape)
                raise GradcheckError(
                    f"gradcheck: input {i} (shape {x.shape}), element {tuple(int(k) for k in index)}: "
                    f"analytic gradient {got:.10g} != numeric {numeric:.10g} "
                    f"(|difference| {abs(got - numeric):.3g} > atol {atol} + rtol {rtol} * |numeric| "
                    f"+ rounding noise {noise:.3g})"
                )
    return True


def _central_difference(fn, inputs, weights, flat, j, eps):
    orig = flat[j]
    with no_grad():
        flat[j] = orig + eps
        up = flat[j]  # orig + eps as stored: rounded to orig's grid
        plus = _loss(fn, inputs, weights).item()
        flat[j] = orig - eps
        down = flat[j]
        minus = _loss(fn, inputs, weights).item()
    flat[j] = orig
    return (plus - minus) / (up - down)
