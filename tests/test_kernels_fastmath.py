"""The vectorisable float32 exp of tinyllm.kernels.fastmath and its int -> float bit cast."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from kernel_helpers import run_with_jit_disabled
from tinyllm.kernels import fastmath as F

EPS32 = np.finfo(np.float32).eps

# bit patterns: zero, the smallest normal, 1.0, 2**127, +inf, nan, -0.0, -1.5, a denormal
PATTERNS = np.array([0, 1 << 23, 127 << 23, 254 << 23, 0x7F800000, 0x7FC00000, -(1 << 31), -0x40400000, 5],
                    dtype=np.int64).astype(np.int32)


@njit
def _compiled_from_bits(bits, out):
    for k in range(bits.shape[0]):
        out[k] = F.float32_from_bits(bits[k])


def test_float32_from_bits_is_numpys_view_of_the_same_bytes():
    expected = PATTERNS.view(np.float32)
    compiled = np.empty(PATTERNS.size, np.float32)
    _compiled_from_bits(PATTERNS, compiled)
    python = np.array([F._float32_from_bits_python(b) for b in PATTERNS], np.float32)
    for got in (compiled, python):  # compare bits: nan != nan as floats
        np.testing.assert_array_equal(got.view(np.int32), expected.view(np.int32))


def test_float32_from_bits_rejects_other_integer_types():
    @njit
    def wide(b):
        return F.float32_from_bits(b)

    with pytest.raises(TypingError, match="float32_from_bits takes an int32, got int64"):
        wide(np.int64(1))


def test_exp_f32_matches_libm_within_two_eps_and_flushes_below_the_normal_range():
    x = np.concatenate([np.linspace(-87, 88, 100001), [0.0, -1e-8, 1e-8, -88.5, 88.5, -1e4, -np.inf]])
    x = x.astype(np.float32)
    y = x.copy()
    F.exp_f32_inplace(y, y.size)
    exact = np.exp(np.clip(x.astype(np.float64), -88.0, 88.0))
    normal = exact > np.finfo(np.float32).tiny
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[normal], exact[normal], rtol=2 * EPS32, atol=0)
    assert (y[~normal] == 0).all()
    assert y[x == 0][0] == 1.0


def test_exp_f32_runs_as_python_with_the_jit_disabled():
    code = (
        "import numba, numpy as np\n"
        "from tinyllm.kernels import fastmath as F\n"
        "assert numba.config.DISABLE_JIT\n"
        "x = np.linspace(-90, 90, 181).astype(np.float32)\n"
        "y = np.array([F.exp_f32(v) for v in x], np.float32)\n"
        "exact = np.exp(np.clip(x.astype(np.float64), -88, 88))\n"
        "normal = exact > np.finfo(np.float32).tiny\n"
        "assert np.allclose(y[normal], exact[normal], rtol=3e-7, atol=0), np.abs(y / exact - 1).max()\n"
        "assert (y[~normal] == 0).all()\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(code)


def test_exp_f32_keeps_nan():
    x = np.array([np.nan, -np.nan, 1.0, -np.inf], np.float32)
    F.exp_f32_inplace(x, x.size)
    assert np.isnan(x[:2]).all() and x[2] == np.float32(np.e) and x[3] == 0
