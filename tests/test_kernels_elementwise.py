"""kernels.elementwise.add: NumPy's a + b, on all cores for large same-shape float arrays."""
import numpy as np
import pytest

from tinyllm.kernels import elementwise as E


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(12, 64, 128), (E.SMALL,), (E.SMALL + 7,), (3, 5)])
def test_add_is_numpys_add_bit_for_bit(shape, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape).astype(dtype)
    b = (rng.standard_normal(shape) * 1e3).astype(dtype)
    out = E.add(a, b)
    assert out.dtype == dtype and out.shape == a.shape
    assert out is not a and out is not b
    np.testing.assert_array_equal(out, a + b)


def test_add_keeps_nan_and_inf():
    a = np.zeros(E.SMALL * 2, np.float32)
    b = np.zeros_like(a)
    a[[3, E.SMALL + 5]] = np.nan
    b[[10, E.SMALL + 9]] = np.inf
    b[11] = -np.inf
    a[11] = np.inf
    with np.errstate(invalid="ignore"):  # inf + -inf = nan, on purpose
        expected = a + b
    np.testing.assert_array_equal(E.add(a, b), expected)  # assert_array_equal treats nan == nan


@pytest.mark.parametrize("case", ["broadcast", "strided", "mixed dtypes", "ints"])
def test_add_falls_back_to_numpy(case):
    rng = np.random.default_rng(1)
    big = rng.standard_normal((256, 256)).astype(np.float32)
    a, b = {
        "broadcast": (big, big[0]),
        "strided": (big.T, big),
        "mixed dtypes": (big, big.astype(np.float64)),
        "ints": (np.arange(E.SMALL * 2), np.arange(E.SMALL * 2)),
    }[case]
    expected = a + b
    out = E.add(a, b)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
