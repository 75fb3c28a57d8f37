"""tinyllm.kernels.matmul: the numba matmul, its tile kernel, matmul() and matmul_ref against the
definition of a matrix product computed independently of BLAS: float64 einsums (NumPy's own
loops), and matmul_ref itself against exactly rounded dot products (math.fsum)."""
import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import run_with_jit_disabled
from tinyllm.kernels import matmul as M

EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}


def definition(a, b):
    """sum_k a[..., i, k] b[..., k, j] in float64 by np.einsum (NumPy's loops, not BLAS)."""
    return np.einsum("...ik,...kj->...ij", a.astype(np.float64), b.astype(np.float64), optimize=False)


def assert_matmul_close(actual, a, b):
    """Compare with the float64 definition (not with np.matmul: that is the BLAS under test);
    tolerance: a few eps per term of the K-long sums, relative to sum_k |a_ik| |b_kj| (the size
    of what was added up, so cancellation is fine)."""
    expected = definition(a, b)
    bound = definition(np.abs(a), np.abs(b))
    assert actual.shape == expected.shape
    assert actual.dtype == a.dtype
    assert np.isfinite(actual).all()
    tol = 4 * EPS[a.dtype.type] * (a.shape[-1] + 1)
    assert (np.abs(actual - expected) <= tol * bound + 1e-300).all()


def operand(rng, shape, dtype, transposed):
    """A (possibly non-contiguous: a transposed buffer) array of the given shape."""
    if not transposed:
        return rng.standard_normal(shape).astype(dtype)
    buffer = rng.standard_normal(shape[:-2] + shape[-2:][::-1]).astype(dtype)
    return np.swapaxes(buffer, -1, -2)


@settings(deadline=None, max_examples=30)
@given(batch=st.sampled_from([None, 1, 3]), m=st.integers(1, 70), k=st.integers(1, 40),
       n=st.integers(1, 70), dtype=st.sampled_from([np.float32, np.float64]),
       a_t=st.booleans(), b_t=st.booleans(), shared_b=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_matmul_numba_matmul_and_reference_match_the_definition(batch, m, k, n, dtype, a_t, b_t, shared_b, seed):
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    a = operand(rng, lead + (m, k), dtype, a_t)
    b = operand(rng, (k, n) if shared_b else lead + (k, n), dtype, b_t)
    for product in (M.matmul_numba, M.matmul, M.matmul_ref):
        assert_matmul_close(product(a, b), a, b)


def fsum_matmul(a, b):
    """The product of two 2-D arrays with every dot product exactly rounded (math.fsum)."""
    return np.array([[math.fsum(a[i, t] * b[t, j] for t in range(a.shape[1])) if a.shape[1] else 0.0
                      for j in range(b.shape[1])] for i in range(a.shape[0])]).reshape(a.shape[0], b.shape[1])


def test_fsum_oracle_is_exact_where_a_float64_sum_is_not():
    # 1e16 + 1 - 1e16: a left-to-right float64 sum loses the 1, fsum keeps it
    a, b = np.array([[1e16, 1.0, -1e16]]), np.ones((3, 1))
    assert fsum_matmul(a, b)[0, 0] == 1.0
    assert (a[0, 0] * b[0, 0] + a[0, 1] * b[1, 0]) + a[0, 2] * b[2, 0] != 1.0


@pytest.mark.parametrize("shape_a, shape_b", [
    ((1, 1), (1, 1)), ((3, 5), (5, 7)), ((4, 1), (1, 6)), ((2, 0), (0, 3)),  # K = 0: zeros
    ((5,), (5, 3)), ((2, 5), (5,)), ((5,), (5,)),  # 1-D operands, as np.matmul treats them
    ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 3)),  # batch axes that broadcast
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_ref_is_the_definition(shape_a, shape_b, dtype):
    rng = np.random.default_rng(len(shape_a) * 10 + len(shape_b))
    a = rng.standard_normal(shape_a).astype(dtype)
    b = rng.standard_normal(shape_b).astype(dtype)
    got = M.matmul_ref(a, b)
    assert np.shape(got) == np.matmul(a, b).shape and got.dtype == dtype
    # the exactly rounded product, per matrix of the broadcast batch
    a2 = a[None] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    a2 = np.broadcast_to(a2, batch + a2.shape[-2:]).astype(np.float64)
    b2 = np.broadcast_to(b2, batch + b2.shape[-2:]).astype(np.float64)
    exact = np.empty(batch + (a2.shape[-2], b2.shape[-1]))
    for i in itertools.product(*map(range, batch)):
        exact[i] = fsum_matmul(a2[i], b2[i])
    exact = exact.reshape(np.shape(got))
    k = a.shape[-1]
    bound = np.abs(M.matmul_ref(np.abs(a).astype(np.float64), np.abs(b).astype(np.float64)))
    assert np.isfinite(got).all()
    assert (np.abs(got - exact) <= (k + 1) * np.finfo(dtype).eps * bound + 1e-300).all()


def test_extreme_values_stay_finite_and_within_the_dot_product_error_bound():
    # (1e38 - 1e38) + 2 - 3 + 2 = 1 in exact arithmetic. With fused multiply-adds (the kernel
    # contracts a * b + c, as BLAS does) one of the two 1e38 products is rounded and the other
    # is not, so the result is off by up to the textbook bound n * eps * sum |a_i b_i|, exactly
    # as np.matmul's is here.
    a = np.array([[1e30, -1e30, 1.0, 3.0, 0.5]], np.float64)
    b = np.array([[1e8], [1e8], [2.0], [-1.0], [4.0]], np.float64)
    got = M.matmul_numba(a, b)
    assert np.isfinite(got).all()
    bound = a.shape[1] * np.finfo(np.float64).eps * (np.abs(a) @ np.abs(b))
    assert np.abs(got - 1.0) <= bound
    assert np.abs(a @ b - 1.0) <= bound  # BLAS sits inside the same bound


@settings(deadline=None, max_examples=25)
@given(rows=st.integers(1, 11), depth=st.integers(1, 13), width=st.integers(1, 20),
       transposed=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_gemm_acc_with_per_row_bounds(rows, depth, width, transposed, seed):
    """The tile kernel: each row of C has its own depth range and width (A is 0 outside its
    depth range, as in a causally masked attention tile), on row slices of bigger arrays."""
    rng = np.random.default_rng(seed)
    lo = rng.integers(0, depth + 1, rows)
    hi = np.array([rng.integers(low, depth + 1) for low in lo])
    cols = rng.integers(0, width + 1, rows)
    a_rows = rng.standard_normal((rows, depth))
    a_rows[np.arange(depth)[None, :] < lo[:, None]] = 0
    a_rows[np.arange(depth)[None, :] >= hi[:, None]] = 0
    b = rng.standard_normal((depth + 3, width))
    c = rng.standard_normal((rows + 2, width))
    expected = c.copy()
    expected[2:] += a_rows @ b[3:]
    a = np.ascontiguousarray(a_rows.T) if transposed else a_rows
    M._gemm_acc(c[2:], a, transposed, b[3:], rows, lo, hi, cols)
    assert np.isfinite(c).all()
    for r in range(rows):  # entries past cols[r] may be written (up to its group's width)
        np.testing.assert_allclose(c[2 + r, :cols[r]], expected[2 + r, :cols[r]], rtol=1e-12,
                                   atol=1e-12)
    np.testing.assert_array_equal(c[:2], expected[:2])


def test_gemm_acc_with_equal_bounds_is_a_matmul():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 5)), rng.standard_normal((5, 7))
    c = np.zeros((6, 7))
    M._gemm_acc(c, a, False, b, 6, np.zeros(6, np.int64), np.full(6, 5), np.full(6, 7))
    np.testing.assert_allclose(c, a @ b, rtol=1e-13)


def test_shape_errors():
    with pytest.raises(ValueError, match=re.escape(
            "matmul_numba: shapes (4, 3) and (5, 2) do not align: 3 != 5")):
        M.matmul_numba(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=re.escape(
            "matmul_numba: batch sizes of (2, 4, 3) and (3, 3, 2) differ: 2 != 3")):
        M.matmul_numba(np.zeros((2, 4, 3)), np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match=re.escape("got shapes (4,) and (4, 2)")):
        M.matmul_numba(np.zeros(4), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=re.escape("got shapes (4, 3) and (2, 3, 2)")):
        M.matmul_numba(np.zeros((4, 3)), np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="got float32 and float64"):
        M.matmul_numba(np.zeros((4, 3), np.float32), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="got int64 and int64"):
        M.matmul_numba(np.zeros((4, 3), np.int64), np.zeros((3, 2), np.int64))


def test_runs_with_jit_disabled():
    code = (
        "import numpy as np\n"
        "from tinyllm.kernels.matmul import matmul_numba\n"
        "rng = np.random.default_rng(0)\n"
        "a, b = rng.standard_normal((2, 7, 6)), rng.standard_normal((2, 6, 5))\n"
        "assert np.allclose(matmul_numba(a, b), a @ b)\n"
        "import numba\n"
        "assert numba.config.DISABLE_JIT\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(code)
