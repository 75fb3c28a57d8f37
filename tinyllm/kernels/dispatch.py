"""The one switch between the fast kernels and their plain NumPy references.

Every kernel module pairs each entry point that the autograd Functions call, ``name``, with a
NumPy reference ``name_ref`` that takes the same arguments and returns the same results (up to
float rounding): ``layernorm_forward`` and ``layernorm_forward_ref``, ``matmul`` and
``matmul_ref``, ... The Functions call kernel modules through :func:`dispatch`::

    _ln = dispatch("layernorm")                                   # tinyllm/functional.py
    y, mean, rstd = _ln.layernorm_forward(rows, weight, bias, eps)

``_ln.layernorm_forward`` is ``layernorm.layernorm_forward`` (numba) normally and
``layernorm.layernorm_forward_ref`` (NumPy) in reference mode, so a Function reads the same in
both modes. A name without a ``_ref`` twin is a plain NumPy helper (``attention.causal_mask``)
and is the same function in both. A new kernel follows the same pattern: write ``name_ref``
first, then ``name`` with the same signature, and call it as ``dispatch(module).name``
(tests/test_reference_mode.py checks that the two signatures agree and that no compiled
kernel runs in reference mode).

Reference mode is for reading and debugging: every Function of a training run, down to AdamW,
runs on the readable NumPy code, where a breakpoint or a print shows plain arrays. It is slower,
and results differ from the fast mode's only by float rounding. Switch it on with

* ``TINYLLM_REFERENCE=1`` in the environment (read once, when tinyllm is imported),
* ``tinyllm.use_reference(True)`` (``False`` switches back), or
* ``with tinyllm.reference_mode(): ...`` for one block (the previous mode returns on exit).

The mode is one setting for the whole process, not per thread.
"""
import importlib
import os

__all__ = ["dispatch", "use_reference", "is_reference", "reference_mode"]


def _from_environment():
    value = os.environ.get("TINYLLM_REFERENCE", "").strip().lower()
    if value not in ("", "0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ValueError(f"TINYLLM_REFERENCE={os.environ['TINYLLM_REFERENCE']!r}: set it to 1 (reference "
                         "mode: the NumPy references) or 0 (the fast kernels)")
    return value in ("1", "true", "yes", "on")


class _Mode:
    reference = _from_environment()


_dispatchers = []  # every object dispatch() made, to forget their choices when the mode changes


class dispatch:
    """The kernel module ``tinyllm.kernels.<module_name>`` as the autograd Functions see it:
    ``.name`` is ``module.name``, or ``module.name_ref`` in reference mode (``module.name`` when
    there is no ``name_ref``).

    The first lookup of a name stores the function it picked on this object, so later ones
    cost an ordinary attribute lookup; switching the mode forgets them all (so does
    ``use_reference(is_reference())``, e.g. after a test replaced a kernel function).
    """

    def __init__(self, module_name):
        self._module = importlib.import_module(f"{__package__}.{module_name}")
        _dispatchers.append(self)

    def __getattr__(self, name):  # only called for names not stored yet
        if name.startswith("__"):
            raise AttributeError(name)
        fast = getattr(self._module, name)
        picked = getattr(self._module, name + "_ref", fast) if _Mode.reference else fast
        setattr(self, name, picked)
        return picked

    def __repr__(self):
        mode = "reference" if _Mode.reference else "fast"
        return f"<{self._module.__name__}, {mode} mode>"


def use_reference(flag=True):
    """Run every Function on the NumPy references (``flag=True``) or on the fast kernels."""
    _Mode.reference = bool(flag)
    for d in _dispatchers:
        for name in [n for n in vars(d) if n != "_module"]:
            delattr(d, name)


def is_reference():
    """True in reference mode."""
    return _Mode.reference


class reference_mode:
    """``with reference_mode():`` runs the block in reference mode (``reference_mode(False)``: in
    fast mode) and restores the previous mode afterwards, also after an exception."""

    def __init__(self, flag=True):
        self.flag = bool(flag)

    def __enter__(self):
        self._previous = _Mode.reference
        use_reference(self.flag)
        return self

    def __exit__(self, *exc):
        use_reference(self._previous)
        return False
