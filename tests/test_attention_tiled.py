"""kernels/attention_tiled.py: the NumPy online-softmax attention, equal to the full-matrix
reference and to the numba kernels on awkward shapes, and its backward to finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import fd_grad
from tinyllm.kernels import attention as A
from tinyllm.kernels.attention_tiled import attention_backward_tiled, attention_forward_tiled

EPS32 = float(np.finfo(np.float32).eps)


def _inputs(rng, n, tq, tk, d, dv, dtype, logit_max=None):
    q, k = rng.standard_normal((n, tq, d)), rng.standard_normal((n, tk, d))
    v, dout = rng.standard_normal((n, tk, dv)), rng.standard_normal((n, tq, dv))
    if logit_max is not None:  # rescale q so that the largest |scaled score| is logit_max
        q *= logit_max / (np.abs(q @ k.transpose(0, 2, 1)).max() / np.sqrt(d))
    return [a.astype(dtype) for a in (q, k, v, dout)]


def _assert_close(actual, expected, tol):
    """Equal where the expected value is +-inf (the lse of a masked row), within tol * scale
    elsewhere, and never non-finite where the expected value is finite."""
    finite = np.isfinite(expected)
    assert np.isfinite(actual[finite]).all(), "non-finite values where the reference is finite"
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=tol * scale)


def _both_ways(q, k, v, dout, causal, block_q, block_k):
    out, lse = attention_forward_tiled(q, k, v, causal, block_q=block_q, block_k=block_k)
    grads = attention_backward_tiled(q, k, v, out, lse, dout, causal, block_q=block_q, block_k=block_k)
    return out, lse, grads


@settings(deadline=None, max_examples=60)
@given(n=st.integers(1, 3), tq=st.integers(1, 23), tk=st.integers(1, 23), d=st.integers(1, 6),
       dv=st.integers(1, 5), causal=st.booleans(), block_q=st.integers(1, 9), block_k=st.integers(1, 9),
       seed=st.integers(0, 2**31 - 1))
def test_tiled_equals_the_full_matrix_reference(n, tq, tk, d, dv, causal, block_q, block_k, seed):
    # float64, any tile sizes (also 1, and ones that do not divide T), Tq < Tk (a KV cache) and
    # Tq > Tk (the first causal rows see no key: out 0, lse -inf, gradient 0)
    q, k, v, dout = _inputs(np.random.default_rng(seed), n, tq, tk, d, dv, np.float64)
    out, lse, grads = _both_ways(q, k, v, dout, causal, block_q, block_k)
    ref_out, ref_lse = A.attention_forward_ref(q, k, v, causal)
    _assert_close(out, ref_out, 1e-12)
    _assert_close(lse, ref_lse, 1e-12)
    for got, want in zip(grads, A.attention_backward_ref(q, k, v, ref_out, ref_lse, dout, causal)):
        _assert_close(got, want, 1e-12)


def test_fully_masked_rows_give_zeros_not_nan():
    q, k, v, dout = _inputs(np.random.default_rng(0), 2, 9, 4, 3, 2, np.float32)
    out, lse, (dq, dk, dv) = _both_ways(q, k, v, dout, True, 4, 3)
    hidden = 9 - 4  # the first Tq - Tk queries see no key
    assert (out[:, :hidden] == 0).all() and (lse[:, :hidden] == -np.inf).all() and (dq[:, :hidden] == 0).all()
    assert np.isfinite(out).all() and np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tq, tk", [(64, 64), (100, 100), (65, 130), (1, 77), (130, 65)])
@pytest.mark.parametrize("logit_max", [None, 1e4])
def test_tiled_equals_the_numba_kernel_in_float32(causal, tq, tk, logit_max):
    # the kernels' own tile size (64) with T a multiple of it or not, and scores up to +-1e4:
    # the online softmax's exponents stay <= 0, so nothing overflows
    q, k, v, dout = _inputs(np.random.default_rng(tq * tk), 3, tq, tk, 16, 8, np.float32, logit_max)
    out, lse, grads = _both_ways(q, k, v, dout, causal, 64, 64)
    kern_out, kern_lse = A.attention_forward(q, k, v, causal)
    kern_grads = A.attention_backward(q, k, v, kern_out, kern_lse, dout, causal)
    # a few float32 eps per term of each reduction (over D for a score, Tk for out and dq, Tq for
    # dk and dv), relative to the largest value. A score of size L carries a rounding error of
    # ~eps * L, which exp turns into a relative error of the softmax weights: at L = 1e4 that is
    # ~1e-3, for both implementations alike, so the extreme case gets 4 eps * L on top.
    tol = 4 * EPS32 * (16 + 8 + tq + tk) + (0 if logit_max is None else 4 * EPS32 * logit_max)
    _assert_close(out, kern_out, tol)
    _assert_close(lse, kern_lse, tol)
    for got, want in zip(grads, kern_grads):
        _assert_close(got, want, tol)


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    q, k, v, _ = _inputs(rng, 2, 5, 7, 3, 2, np.float64)
    weights = rng.standard_normal((2, 5, 2))  # loss = sum(out * R): a plain sum would hide softmax's gradient
    out, lse = attention_forward_tiled(q, k, v, True, block_q=2, block_k=3)
    grads = attention_backward_tiled(q, k, v, out, lse, weights, True, block_q=2, block_k=3)

    def loss():
        return float((attention_forward_tiled(q, k, v, True, block_q=2, block_k=3)[0] * weights).sum())

    for x, g in zip((q, k, v), grads):
        numeric = fd_grad(loss, x)
        assert np.isfinite(g).all() and np.isfinite(numeric).all()
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)
    wrong = grads[0].copy()
    wrong[0, 1, 0] += 1e-3  # the check can fail
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(wrong, fd_grad(loss, q), rtol=1e-6, atol=1e-8)
