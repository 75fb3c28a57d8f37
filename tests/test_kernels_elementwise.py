"""kernels.elementwise.add: a + b, on all cores for large same-shape float arrays, against an
addition that shares no code with NumPy's add: Python's float additions for float64, and
float64 additions rounded to float32 for float32 (exact: a float64 holds the sum of two float32
to within a rounding that cannot change the float32 result, since 53 >= 2 * 24 + 2)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.kernels import elementwise as E


def independent_add(a, b):
    """a + b element by element, computed without NumPy's add of that dtype."""
    if a.dtype == np.float32:
        with np.errstate(invalid="ignore"):  # inf + -inf = nan
            return (a.astype(np.float64) + b.astype(np.float64)).astype(np.float32)
    sums = [x + y for x, y in zip(a.ravel().tolist(), b.ravel().tolist())]  # Python's own float (or int) +
    return np.array(sums, dtype=a.dtype).reshape(a.shape)


def spy_kernel(monkeypatch):
    calls, kernel = [], E._add_kernel

    def counted(*args):
        calls.append(args[0].size)
        return kernel(*args)

    monkeypatch.setattr(E, "_add_kernel", counted)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(12, 64, 128), (E.SMALL,), (E.SMALL + 7,), (3, 5)])
def test_add_is_the_exactly_rounded_sum(shape, dtype, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape).astype(dtype)
    b = (rng.standard_normal(shape) * 1e3).astype(dtype)
    calls = spy_kernel(monkeypatch)
    out = E.add(a, b)
    assert calls == ([a.size] if a.size >= E.SMALL else [])  # the kernel ran where it should
    assert out.dtype == dtype and out.shape == a.shape
    assert out is not a and out is not b
    np.testing.assert_array_equal(out, independent_add(a, b))


@settings(deadline=None, max_examples=30)
@given(shape=st.sampled_from([(1,), (7,), (3, 5), (2, 1, 9), (64, 3)]),
       dtype=st.sampled_from([np.float32, np.float64]), scale=st.sampled_from([1e-30, 1.0, 1e30]),
       seed=st.integers(0, 2**31 - 1))
def test_the_kernel_on_small_shapes(shape, dtype, scale, seed):
    # the threaded kernel itself (add() only calls it from SMALL elements on), with sums that
    # cancel, round, and mix magnitudes
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape) * scale).astype(dtype)
    b = np.where(rng.random(shape) < 0.3, -a, rng.standard_normal(shape)).astype(dtype)
    out = np.full(shape, np.nan, dtype)
    E._add_kernel(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    np.testing.assert_array_equal(out, independent_add(a, b))


def test_add_on_small_shapes_when_small_is_lowered(monkeypatch):
    monkeypatch.setattr(E, "SMALL", 0)
    calls = spy_kernel(monkeypatch)
    a, b = np.arange(6.0).reshape(2, 3), np.full((2, 3), 0.5)
    np.testing.assert_array_equal(E.add(a, b), [[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]])
    assert calls == [6]


def test_add_keeps_nan_and_inf():
    a = np.zeros(E.SMALL * 2, np.float32)
    b = np.zeros_like(a)
    a[[3, E.SMALL + 5]] = np.nan
    b[[10, E.SMALL + 9]] = np.inf
    b[11] = -np.inf
    a[11] = np.inf
    out = E.add(a, b)
    assert np.isnan(out[[3, 11, E.SMALL + 5]]).all()  # inf + -inf = nan, on purpose
    assert (out[[10, E.SMALL + 9]] == np.inf).all()
    np.testing.assert_array_equal(out, independent_add(a, b))  # assert_array_equal treats nan == nan


@pytest.mark.parametrize("case", ["broadcast", "strided", "mixed dtypes", "ints"])
def test_add_falls_back_to_numpy(case, monkeypatch):
    rng = np.random.default_rng(1)
    big = rng.standard_normal((256, 256)).astype(np.float32)
    a, b = {
        "broadcast": (big, big[0]),
        "strided": (big.T, big),
        "mixed dtypes": (big, big.astype(np.float64)),
        "ints": (np.arange(E.SMALL * 2), np.arange(E.SMALL * 2)),
    }[case]
    calls = spy_kernel(monkeypatch)
    out = E.add(a, b)
    assert calls == []
    dtype = np.result_type(a, b)
    a_full, b_full = (x.astype(dtype) for x in np.broadcast_arrays(a, b))  # exact casts
    assert out.dtype == dtype and out.shape == a_full.shape
    np.testing.assert_array_equal(out, independent_add(a_full, b_full))
