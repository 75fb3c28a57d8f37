"""Adding up gradients in ``backward()``: where the gradients of a tensor's uses meet.

backward() can reach one tensor along several paths (a residual connection, a tied weight, a
tensor used twice): its gradient is the sum over all of them, and a leaf's ``.grad`` keeps
adding up across backward() calls, as in PyTorch. :func:`accumulate_grad_ref` is that rule::

    total is None:  g          (the first gradient; a leaf's .grad gets its own copy)
    otherwise:      total + g

A leaf needs its own copy because the same array can reach two places (``a + b`` hands one
gradient array to both inputs): were a.grad and b.grad one array, clipping a.grad in place would
change b.grad too.

:func:`accumulate_grad` gives the same numbers with two savings that add up on a model's
largest arrays: the sum of two large arrays runs on all cores (:func:`.elementwise.add`), and a
leaf keeps ``g`` itself instead of a copy when nothing but the caller references it (as
PyTorch's AccumulateGrad does). Whether anything else references ``g`` is read from CPython's
reference count; other Pythons (and a free-threaded CPython, whose counts are not exact) copy.
"""
import sys

import numpy as np

from .elementwise import add

__all__ = ["accumulate_grad_ref", "accumulate_grad"]


def accumulate_grad_ref(total, g, leaf=False):
    """``total + g``, or ``g`` when total is None (a copy of g when it becomes a leaf's .grad)."""
    if total is None:
        return np.array(g) if leaf else g
    return total + g


_COUNTS_REFERENCES = sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()


def accumulate_grad(total, g, leaf=False):
    """:func:`accumulate_grad_ref`, faster. Call it with ``g`` held by exactly one variable of the
    caller: then a reference count of 3 (that variable, this function's parameter and
    getrefcount's own argument) means nothing else can see g, and a leaf may keep it. A g that
    is a view of other memory, read-only, shared (``a + b`` passes one array to both inputs) or
    still held by a Function is copied."""
    if total is not None:
        return add(total, g)
    if not leaf or (_COUNTS_REFERENCES and g.base is None and g.flags.writeable and sys.getrefcount(g) == 3):
        return g
    return np.array(g)
