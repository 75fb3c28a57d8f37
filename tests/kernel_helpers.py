"""Helpers shared by the kernel tests (tests/test_kernels_*.py).

Import them as ``from kernel_helpers import ...``, the way tests import from ``conftest``: there is
no ``__init__.py`` in tests/, so pytest's default (prepend) import mode puts this folder on
``sys.path``. The file name does not match ``test_*.py``, so pytest does not collect it.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm


def assert_close(actual, expected, rtol, scale=None):
    """assert_allclose with atol = rtol * scale (default: the largest |expected|), finite first."""
    assert np.isfinite(actual).all(), "kernel produced non-finite values"
    assert np.isfinite(expected).all(), "reference produced non-finite values"
    scale = max(np.abs(expected).max(initial=0.0), 1e-30) if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def fd_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() w.r.t. each element of x (perturbed in place)."""
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x)
    grad = np.zeros(flat.size)
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + eps
        up = f()
        flat[k] = orig - eps
        down = f()
        flat[k] = orig
        grad[k] = (up - down) / (2 * eps)
    return grad.reshape(x.shape)


def assert_grad_matches_fd(analytic, numeric):
    assert np.isfinite(analytic).all() and np.isfinite(numeric).all()
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def assert_fd_check_rejects(wrong, f, x):
    """The finite-difference check above fails for ``wrong``, a plausible but incorrect gradient
    of the scalar f() w.r.t. x: it can catch a real mistake."""
    with pytest.raises(AssertionError):
        assert_grad_matches_fd(wrong, fd_grad(f, x))


def run_script(script, timeout=120, **extra_env):
    """Run script in a fresh interpreter with extra_env and this checkout's tinyllm first on the
    path (the parent's environment is copied, never changed); it must exit 0. Returns stdout."""
    root = str(Path(tinyllm.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root, **extra_env)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def run_with_jit_disabled(script, **extra_env):
    """Run script with NUMBA_DISABLE_JIT=1 (see run_script); it must print exactly 'ok'."""
    assert run_script(script, NUMBA_DISABLE_JIT="1", **extra_env).strip() == "ok"
