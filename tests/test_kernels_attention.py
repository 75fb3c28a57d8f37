"""tinyllm.kernels.attention: the fused numba kernels against the NumPy reference, and the
reference backward against finite differences."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import fd_grad, run_with_jit_disabled
from tinyllm.kernels import attention as A

EPS32 = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def make_inputs(rng, n, tq, tk, d, dv, dtype=np.float64, transposed=False, logit_max=None):
    """q (n, tq, d), k (n, tk, d), v (n, tk, dv), dout (n, tq, dv).

    transposed: q, k, v are non-contiguous views (a transposed buffer) with the same values.
    logit_max: rescale q so that the largest |scaled logit| is exactly this (e.g. 1e4).
    """
    q = rng.standard_normal((n, tq, d))
    k = rng.standard_normal((n, tk, d))
    v = rng.standard_normal((n, tk, dv))
    dout = rng.standard_normal((n, tq, dv))
    if logit_max is not None:
        peak = np.abs(q @ k.transpose(0, 2, 1)).max() / np.sqrt(d)
        q *= logit_max / peak
    arrays = [a.astype(dtype) for a in (q, k, v, dout)]
    if transposed:
        arrays[:3] = [np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
                      for a in arrays[:3]]
    return arrays


def assert_close(actual, expected, tol):
    """Elementwise |actual - expected| <= tol * max(1, max |expected|), NaN-free first.

    The scale is the array's own magnitude: an element that cancels to ~0 in the reference
    is compared at the precision of the numbers that were summed to make it.
    """
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    finite = np.isfinite(expected)
    assert np.isfinite(actual[finite]).all(), "non-finite values where the reference is finite"
    np.testing.assert_array_equal(actual[~finite], expected[~finite])  # -inf lse of masked rows
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=tol * scale)


def tolerance(dtype, tq, tk, d, dv):
    """1e-10 in float64. In float32: a few eps per term of the reductions (over D for the
    scores, Tk for out and dq, Tq for dk and dv)."""
    if dtype == np.float64:
        return 1e-10
    return 4 * EPS32 * (d + dv + tq + tk)


def numerical_grads(f, arrays):
    """Central differences (h = 1e-6) of the scalar f(*arrays) with respect to each array."""
    return [fd_grad(lambda: f(*arrays), a) for a in arrays]


def gradients_match(analytic, numeric, tol=1e-6):
    return all(np.allclose(a, n, rtol=tol, atol=tol) for a, n in zip(analytic, numeric))


shapes = st.tuples(
    st.integers(1, 3),  # N
    st.integers(1, 70),  # Tq: crosses the 64-row block
    st.integers(1, 70),  # Tk
    st.integers(1, 9),  # D
    st.integers(1, 9),  # Dv
)


# --------------------------------------------------------------------------------------------
# fused kernels == NumPy reference
# --------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=40)
@given(shape=shapes, causal=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]),
       transposed=st.booleans(), extreme=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_fused_matches_reference(shape, causal, dtype, transposed, extreme, seed):
    n, tq, tk, d, dv = shape
    logit_max = 1e4 if extreme else None
    q, k, v, dout = make_inputs(np.random.default_rng(seed), n, tq, tk, d, dv, dtype,
                                transposed, logit_max)
    out_ref, lse_ref = A.attention_forward_ref(q, k, v, causal)
    out, lse = A.attention_forward(q, k, v, causal)
    # float32 is checked against float64 math on the same inputs: the kernel's own error only
    as64 = [a.astype(np.float64) for a in (q, k, v, dout)]
    out64, lse64 = A.attention_forward_ref(*as64[:3], causal)
    grads64 = A.attention_backward_ref(*as64[:3], out64, lse64, as64[3], causal)
    tol = tolerance(dtype, tq, tk, d, dv)
    assert_close(lse, lse64.astype(dtype), tol)  # compared relative to its size, ~ the logits
    # In float32 a logit of size L comes with a rounding error of about eps * D * L, and
    # exp moves the softmax weights by that much: 1e-3 relative at logits of 1e4. The backward
    # then sums such weights times dout * v over Dv (D_i = rowsum(dout * out)), so the bound
    # grows with D + Dv (hypothesis found D = 1, Dv = 9 just past a bound in D alone).
    logit_scale = np.abs(lse64[np.isfinite(lse64)]).max(initial=1.0)
    tol_softmax = tol + 8 * EPS32 * (d + dv) * logit_scale if dtype == np.float32 else tol
    assert_close(out, out64.astype(dtype), tol_softmax)
    assert_close(out_ref, out64.astype(dtype), tol_softmax)
    grads = A.attention_backward(q, k, v, out_ref, lse_ref, dout, causal)
    for grad, grad64 in zip(grads, grads64):
        assert_close(grad, grad64.astype(dtype), tol_softmax)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tq, tk", [(130, 200), (200, 130), (64, 64), (65, 1), (1, 129)])
def test_several_blocks(dtype, causal, tq, tk):
    """Sizes around and across the 64 x 64 tiles, with a larger head dim."""
    q, k, v, dout = make_inputs(np.random.default_rng(tq * tk), 2, tq, tk, 24, 20, dtype)
    out_ref, lse_ref = A.attention_forward_ref(q, k, v, causal)
    out, lse = A.attention_forward(q, k, v, causal)
    tol = tolerance(dtype, tq, tk, 24, 20)
    assert_close(out, out_ref, tol)
    assert_close(lse, lse_ref, tol)
    for grad, grad_ref in zip(A.attention_backward(q, k, v, out_ref, lse_ref, dout, causal),
                              A.attention_backward_ref(q, k, v, out_ref, lse_ref, dout, causal)):
        assert_close(grad, grad_ref, tol)


@pytest.mark.parametrize("fused", [False, True])
def test_fully_masked_rows_give_zero_not_nan(fused):
    """Tq > Tk and causal: the first Tq - Tk queries see no key at all."""
    forward = A.attention_forward if fused else A.attention_forward_ref
    backward = A.attention_backward if fused else A.attention_backward_ref
    q, k, v, dout = make_inputs(np.random.default_rng(0), 2, 7, 3, 4, 5)
    out, lse = forward(q, k, v, causal=True)
    dq, dk, dv = backward(q, k, v, out, lse, dout, causal=True)
    for a in (out, dq, dk, dv):
        assert not np.isnan(a).any()
    assert (out[:, :4] == 0).all() and (dq[:, :4] == 0).all()
    assert (lse[:, :4] == -np.inf).all() and np.isfinite(lse[:, 4:]).all()
    # row 4 sees exactly key 0: attention is a copy of v[0], lse the single scaled logit
    np.testing.assert_allclose(out[:, 4], v[:, 0], rtol=1e-12)
    np.testing.assert_allclose(lse[:, 4], (q[:, 4] * k[:, 0]).sum(-1) / 2, rtol=1e-12)


def test_everything_masked_when_no_keys_are_visible():
    q, k, v, dout = make_inputs(np.random.default_rng(1), 1, 4, 1, 3, 2)  # Tq 4, Tk 1
    out, lse = A.attention_forward(q, k, v, causal=True)
    dq, dk, dv = A.attention_backward(q, k, v, out, lse, dout, causal=True)
    assert (lse[0, :3] == -np.inf).all() and (out[0, :3] == 0).all()
    np.testing.assert_allclose(dv[0, 0], dout[0, 3], rtol=1e-12)  # only row 3 uses key 0
    # a softmax over a single key is constant 1: no gradient reaches q or k
    np.testing.assert_allclose(dq, 0, atol=1e-12)
    np.testing.assert_allclose(dk, 0, atol=1e-12)


def test_single_query_sees_the_whole_cache():
    """Bottom-right alignment: one new query (Tq = 1) attends all Tk cached keys."""
    q, k, v, _ = make_inputs(np.random.default_rng(2), 3, 1, 9, 4, 4)
    causal = A.attention_forward(q, k, v, causal=True)
    full = A.attention_forward(q, k, v, causal=False)
    for a, b in zip(causal, full):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_causal_mask_alignment():
    mask = A.causal_mask(2, 4)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(A.causal_mask(3, 3), np.tri(3, dtype=bool))


def test_custom_scale():
    q, k, v, dout = make_inputs(np.random.default_rng(3), 2, 5, 6, 3, 4)
    out_ref, lse_ref = A.attention_forward_ref(q, k, v, True, scale=0.3)
    out, lse = A.attention_forward(q, k, v, True, scale=0.3)
    assert_close(out, out_ref, 1e-12)
    assert_close(lse, lse_ref, 1e-12)
    for a, b in zip(A.attention_backward(q, k, v, out, lse, dout, True, scale=0.3),
                    A.attention_backward_ref(q, k, v, out, lse, dout, True, scale=0.3)):
        assert_close(a, b, 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nan_in_a_query_row_gives_nan_in_that_row_only(dtype):
    # a NaN must not pass for a fully masked row (out 0, lse -inf): a diverging run has to show it
    rng = np.random.default_rng(7)
    q, k, v, dout = (rng.standard_normal((2, 70, 8)).astype(dtype) for _ in range(4))
    q[1, 66, 3] = np.nan  # second query block, so the NaN meets the online softmax's rescaling
    for forward in (A.attention_forward, A.attention_forward_ref):
        out, lse = forward(q, k, v, True)
        bad = np.isnan(out).any(axis=-1)
        assert bad[1, 66] and np.isnan(lse[1, 66])
        bad[1, 66] = False
        assert not bad.any() and np.isfinite(np.delete(lse[1], 66)).all() and np.isfinite(lse[0]).all()
    out, lse = A.attention_forward(q, k, v, True)
    dq, dk, dv = A.attention_backward(q, k, v, out, lse, dout, True)
    assert np.isnan(dq[1, 66]).all() and np.isfinite(dq[0]).all() and np.isfinite(np.delete(dq[1], 66, axis=0)).all()


# --------------------------------------------------------------------------------------------
# the reference backward against finite differences
# --------------------------------------------------------------------------------------------

def _loss(r, causal, backend="ref"):
    forward = A.attention_forward_ref if backend == "ref" else A.attention_forward

    def loss(q, k, v):
        out, _ = forward(q, k, v, causal)
        return float((out * r).sum())  # not .sum(): each output weighted differently

    return loss


@pytest.mark.parametrize("causal, tq, tk", [(False, 3, 4), (True, 4, 4), (True, 2, 5),
                                            (True, 5, 3)])
def test_reference_backward_matches_finite_differences(causal, tq, tk):
    rng = np.random.default_rng(tq * 10 + tk)
    q, k, v, r = make_inputs(rng, 2, tq, tk, 3, 2)
    out, lse = A.attention_forward_ref(q, k, v, causal)
    analytic = A.attention_backward_ref(q, k, v, out, lse, r, causal)  # dL/dout = R
    numeric = numerical_grads(_loss(r, causal), [q, k, v])
    assert gradients_match(analytic, numeric)
    fused = A.attention_backward(q, k, v, out, lse, r, causal)
    assert gradients_match(fused, numeric)


def test_finite_difference_check_can_fail():
    """The checker above rejects plausible wrong gradients."""
    rng = np.random.default_rng(7)
    q, k, v, r = make_inputs(rng, 1, 4, 4, 3, 2)
    out, lse = A.attention_forward_ref(q, k, v, True)
    numeric = numerical_grads(_loss(r, True), [q, k, v])
    dq, dk, dv = A.attention_backward_ref(q, k, v, out, lse, r, True)
    assert gradients_match((dq, dk, dv), numeric)
    # forgetting the softmax Jacobian's rowsum term (dS = P * dP)
    scores = np.where(A.causal_mask(4, 4), q @ k.transpose(0, 2, 1) / np.sqrt(3), -np.inf)
    probs = np.exp(scores - lse[..., None])
    ds_wrong = probs * (r @ v.transpose(0, 2, 1))
    dq_wrong = ds_wrong @ k / np.sqrt(3)
    assert not gradients_match((dq_wrong, dk, dv), numeric)
    # the non-causal gradient for a causal forward
    _, dk_nc, _ = A.attention_backward_ref(q, k, v, out, lse, r, causal=False)
    assert not gradients_match((dq, dk_nc, dv), numeric)
    # a scale slip of 1%
    assert not gradients_match((dq, dk, dv * 1.01), numeric)


# --------------------------------------------------------------------------------------------
# PyTorch as an independent oracle (optional)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal, tq, tk", [(False, 5, 7), (True, 6, 6), (True, 3, 8)])
def test_matches_torch(causal, tq, tk):
    torch = pytest.importorskip("torch")
    q, k, v, dout = make_inputs(np.random.default_rng(11), 3, tq, tk, 4, 5)
    tq_, tk_, tv_ = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    # torch's is_causal is top-left aligned; pass our bottom-right mask explicitly
    mask = torch.tensor(A.causal_mask(tq, tk)) if causal else None
    out_t = torch.nn.functional.scaled_dot_product_attention(tq_, tk_, tv_, attn_mask=mask)
    out_t.backward(torch.tensor(dout))
    out, lse = A.attention_forward(q, k, v, causal)
    assert_close(out, out_t.detach().numpy(), 1e-10)
    for ours, theirs in zip(A.attention_backward(q, k, v, out, lse, dout, causal),
                            (tq_.grad, tk_.grad, tv_.grad)):
        assert_close(ours, theirs.numpy(), 1e-10)


# --------------------------------------------------------------------------------------------
# pure-Python path and errors
# --------------------------------------------------------------------------------------------

def test_runs_with_jit_disabled():
    code = (
        "import numpy as np\n"
        "from tinyllm.kernels import attention as A\n"
        "rng = np.random.default_rng(0)\n"
        "for dtype in (np.float32, np.float64):\n"
        "    q, k, v, g = (rng.standard_normal((2, 5, 3)).astype(dtype) for _ in range(4))\n"
        "    out, lse = A.attention_forward(q, k, v, causal=True)\n"
        "    ref, lse_ref = A.attention_forward_ref(q, k, v, causal=True)\n"
        "    assert np.allclose(out, ref, atol=1e-5) and np.allclose(lse, lse_ref, atol=1e-5)\n"
        "    for a, b in zip(A.attention_backward(q, k, v, ref, lse_ref, g, causal=True),\n"
        "                    A.attention_backward_ref(q, k, v, ref, lse_ref, g, causal=True)):\n"
        "        assert np.allclose(a, b, atol=1e-5)\n"
        "import numba\n"
        "assert numba.config.DISABLE_JIT\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(code)


@pytest.mark.parametrize("fn", [A.attention_forward, A.attention_forward_ref])
def test_input_errors(fn):
    q = np.zeros((2, 3, 4))
    name = fn.__name__

    def raises(message):
        return pytest.raises(ValueError, match=re.escape(f"{name}: {message}"))

    with raises("q must be 3-D (N, Tq, D), got shape (3, 4)"):
        fn(q[0], q, q)
    with raises("q (2, 3, 4) and k (2, 3, 5) must agree on N (axis 0) and D (axis 2)"):
        fn(q, np.zeros((2, 3, 5)), q)
    with raises("q (2, 3, 4) and k (1, 3, 4) must agree on N (axis 0) and D (axis 2)"):
        fn(q, np.zeros((1, 3, 4)), q)
    with raises("k (2, 3, 4) and v (2, 6, 4) must agree on N (axis 0) and Tk (axis 1)"):
        fn(q, q, np.zeros((2, 6, 4)))
    with raises("q, k, v must share one dtype, float32 or float64; got q float64, k float32, "
                "v float64"):
        fn(q, q.astype(np.float32), q)
    with raises("q, k, v must share one dtype, float32 or float64; got q int64"):
        fn(q.astype(np.int64), q.astype(np.int64), q.astype(np.int64))
    with raises("head dim D must be >= 1, got q (2, 3, 0)"):
        fn(q[..., :0], q[..., :0], q)
    with raises("scale must be finite, got inf"):
        fn(q, q, q, scale=np.inf)


@pytest.mark.parametrize("fn", [A.attention_backward, A.attention_backward_ref])
def test_backward_input_errors(fn):
    q = np.zeros((2, 3, 4))
    v = out = np.zeros((2, 3, 5))
    lse = np.zeros((2, 3))
    name = fn.__name__
    with pytest.raises(ValueError, match=re.escape(
            f"{name}: out must have shape (2, 3, 5) for q (2, 3, 4) and v (2, 3, 5), "
            "got (2, 3, 4)")):
        fn(q, q, v, q, lse, out)
    with pytest.raises(ValueError, match=re.escape("lse must have shape (2, 3) for q")):
        fn(q, q, v, out, np.zeros((2, 4)), out)
    with pytest.raises(ValueError, match=re.escape(f"{name}: dout has dtype float32, q has "
                                                   "float64")):
        fn(q, q, v, out, lse, out.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# packed heads: self_attention_forward / _backward read the heads in place from a (B, T, 3C) qkv


def split_heads(qkv, n_head):
    """(B, T, 3C) -> q, k, v of shape (B*H, T, D), by reshape and transpose (the plain way)."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_head)
    return np.ascontiguousarray(qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)).reshape(3, B * n_head, T, D)


def merge_heads(x, B):
    """(B*H, T, D) -> (B, T, H*D)."""
    BH, T, D = x.shape
    return x.reshape(B, BH // B, T, D).transpose(0, 2, 1, 3).reshape(B, T, -1)


@settings(deadline=None, max_examples=25)
@given(B=st.integers(1, 3), T=st.integers(1, 140), H=st.integers(1, 4), D=st.integers(1, 12),
       causal=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]), seed=st.integers(0, 2**31 - 1))
def test_packed_self_attention_equals_split_heads_exactly(B, T, H, D, causal, dtype, seed):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(dtype)
    g = rng.standard_normal((B, T, H * D)).astype(dtype)
    q, k, v = split_heads(qkv, H)
    out, lse = A.attention_forward(q, k, v, causal)
    grads = A.attention_backward(q, k, v, out, lse, split_heads(np.concatenate([g] * 3, axis=-1), H)[0], causal)
    p_out, p_lse = A.self_attention_forward(qkv, H, causal)
    p_dqkv = A.self_attention_backward(qkv, p_out, p_lse, g, H, causal)
    assert np.isfinite(p_out).all() and np.isfinite(p_dqkv).all()
    # the same per-head code and products on in-place views: bit for bit the same numbers
    np.testing.assert_array_equal(p_out, merge_heads(out, B))
    np.testing.assert_array_equal(p_lse, lse.reshape(B, H, T))
    np.testing.assert_array_equal(p_dqkv, np.concatenate([merge_heads(d, B) for d in grads], axis=-1))
    # and the reference agrees
    ref_out, _ = A.attention_forward_ref(q, k, v, causal)
    assert_close(p_out, merge_heads(ref_out, B), tolerance(dtype, T, T, D, D))


def test_packed_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    B, T, H, D = 2, 5, 2, 3
    qkv, w = rng.standard_normal((B, T, 3 * H * D)), rng.standard_normal((B, T, H * D))

    def loss():  # a weighted sum, so that the softmax gradient is not hidden (sum of rows is 1)
        return float((A.self_attention_forward(qkv, H, causal=True)[0] * w).sum())

    out, lse = A.self_attention_forward(qkv, H, causal=True)
    analytic = A.self_attention_backward(qkv, out, lse, w, H, causal=True)
    numeric = fd_grad(loss, qkv)
    assert np.abs(numeric).max() > 0.1  # the check has something to compare
    assert gradients_match([analytic], [numeric])
    assert not gradients_match([analytic * 1.01], [numeric])


def test_packed_input_errors():
    qkv = np.zeros((2, 4, 12), np.float32)
    with pytest.raises(ValueError, match=re.escape("(2, 4, 12) with n_head=5")):
        A.self_attention_forward(qkv, 5)
    with pytest.raises(ValueError, match="int64"):
        A.self_attention_forward(np.zeros((2, 4, 12), np.int64), 2)
    out, lse = A.self_attention_forward(qkv, 2)
    with pytest.raises(ValueError, match=re.escape("dout must be float32 (2, 4, 4)")):
        A.self_attention_backward(qkv, out, lse, np.zeros((2, 4, 5), np.float32), 2)
