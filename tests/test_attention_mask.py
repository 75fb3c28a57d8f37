"""Masked attention: the key-padding lengths of the fused kernels (against their NumPy
reference), and ``attn_mask`` in F.scaled_dot_product_attention / F.self_attention (PyTorch's
meaning, against the composed version, finite differences and torch)."""
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyllm.functional as F
from kernel_helpers import fd_grad, run_with_jit_disabled
from tinyllm import Tensor, gradcheck
from tinyllm.kernels import attention as A
from tinyllm.kernels.dispatch import is_reference, use_reference

EPS32 = float(np.finfo(np.float32).eps)


def make_inputs(rng, n, tq, tk, d, dv, dtype=np.float64, transposed=False, logit_max=None):
    q, k, v, dout = (rng.standard_normal(s) for s in ((n, tq, d), (n, tk, d), (n, tk, dv), (n, tq, dv)))
    if logit_max is not None:
        q *= logit_max / (np.abs(q @ k.transpose(0, 2, 1)).max() / np.sqrt(d))
    arrays = [a.astype(dtype) for a in (q, k, v, dout)]
    if transposed:  # non-contiguous views with the same values
        arrays[:3] = [np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1) for a in arrays[:3]]
    return arrays


def assert_close(actual, expected, tol):
    """|actual - expected| <= tol * max(1, max |expected|); -inf where expected is -inf; no NaN."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    finite = np.isfinite(expected)
    assert np.isfinite(actual[finite]).all(), "non-finite values where the reference is finite"
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=tol * scale)


def dense_mask(n, tq, tk, causal, lengths):
    """(N, Tq, Tk) bool: the mask the kernels apply, written out."""
    mask = np.arange(tk)[None, None, :] < lengths[:, None, None]
    if causal:
        mask = mask & A.causal_mask(tq, tk)[None]
    return np.broadcast_to(mask, (n, tq, tk))


def masked_attention_np(q, k, v, mask, scale=None):
    """Plain softmax attention with an explicit bool mask; rows that see nothing give 0."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.where(mask, q @ np.swapaxes(k, -1, -2) * scale, -np.inf)
    m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1), 0) @ v


# --------------------------------------------------------------------------------------------
# kernels: key_lengths, fused == reference == written-out mask
# --------------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 3), st.integers(1, 70), st.integers(1, 140), st.integers(1, 9), st.integers(1, 9))


@settings(deadline=None, max_examples=40)
@given(shape=shapes, causal=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]),
       transposed=st.booleans(), extreme=st.booleans(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_key_lengths_fused_matches_reference(shape, causal, dtype, transposed, extreme, seed, data):
    n, tq, tk, d, dv = shape
    lengths = np.array(data.draw(st.lists(st.integers(0, tk), min_size=n, max_size=n)))
    q, k, v, dout = make_inputs(np.random.default_rng(seed), n, tq, tk, d, dv, dtype, transposed,
                                1e4 if extreme else None)
    as64 = [a.astype(np.float64) for a in (q, k, v, dout)]
    out64, lse64 = A.attention_forward_ref(*as64[:3], causal, key_lengths=lengths)
    grads64 = A.attention_backward_ref(*as64[:3], out64, lse64, as64[3], causal, key_lengths=lengths)
    # the reference against the mask written out
    np.testing.assert_allclose(out64, masked_attention_np(*as64[:3], dense_mask(n, tq, tk, causal, lengths)),
                               rtol=1e-10, atol=1e-10)
    out, lse = A.attention_forward(q, k, v, causal, key_lengths=lengths)
    grads = A.attention_backward(q, k, v, out, lse, dout, causal, key_lengths=lengths)
    tol = 1e-10 if dtype == np.float64 else 4 * EPS32 * (d + dv + tq + tk)
    if dtype == np.float32:  # a float32 logit of size L is off by ~eps * D * L: exp turns that relative
        tol += 8 * EPS32 * (d + dv) * np.abs(lse64[np.isfinite(lse64)]).max(initial=1.0)
    assert_close(lse, lse64.astype(dtype), tol)
    assert_close(out, out64.astype(dtype), tol)
    for grad, grad64 in zip(grads, grads64):
        assert_close(grad, grad64.astype(dtype), tol)
    # padded keys get exactly no gradient; rows that see nothing give exactly 0 and lse -inf
    for i, length in enumerate(lengths):
        assert (grads[1][i, length:] == 0).all() and (grads[2][i, length:] == 0).all()
    blind = ~dense_mask(n, tq, tk, causal, lengths).any(-1)  # (N, Tq)
    assert (out[blind] == 0).all() and (lse[blind] == -np.inf).all() and (grads[0][blind] == 0).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_key_lengths_across_tiles(dtype, causal):
    """Lengths on both sides of the 64-key tile edge, 0 and the full length, over several tiles."""
    tq, tk = 130, 200
    lengths = np.array([0, 1, 63, 64, 65, 128, 129, 200])
    q, k, v, dout = make_inputs(np.random.default_rng(0), len(lengths), tq, tk, 12, 10, dtype)
    out_ref, lse_ref = A.attention_forward_ref(q, k, v, causal, key_lengths=lengths)
    out, lse = A.attention_forward(q, k, v, causal, key_lengths=lengths)
    tol = 1e-10 if dtype == np.float64 else 4 * EPS32 * (12 + 10 + tq + tk)
    assert_close(out, out_ref, tol)
    assert_close(lse, lse_ref, tol)
    for a, b in zip(A.attention_backward(q, k, v, out_ref, lse_ref, dout, causal, key_lengths=lengths),
                    A.attention_backward_ref(q, k, v, out_ref, lse_ref, dout, causal, key_lengths=lengths)):
        assert_close(a, b, tol)


def test_full_lengths_equal_no_mask_bit_for_bit():
    """key_lengths = Tk is the unmasked kernel exactly (the GPT's path is not perturbed)."""
    q, k, v, dout = make_inputs(np.random.default_rng(1), 3, 70, 90, 8, 8, np.float32)
    full = np.full(3, 90)
    for causal in (False, True):
        a = A.attention_forward(q, k, v, causal)
        b = A.attention_forward(q, k, v, causal, key_lengths=full)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        ga = A.attention_backward(q, k, v, *a, dout, causal)
        gb = A.attention_backward(q, k, v, *a, dout, causal, key_lengths=full)
        for x, y in zip(ga, gb):
            np.testing.assert_array_equal(x, y)


def test_padded_keys_do_not_matter():
    """What lies in the padded keys and values (even NaN) never reaches the output or dq."""
    q, k, v, dout = make_inputs(np.random.default_rng(2), 2, 5, 9, 4, 3)
    lengths = np.array([4, 7])
    out, lse = A.attention_forward(q, k, v, key_lengths=lengths)
    dq = A.attention_backward(q, k, v, out, lse, dout, key_lengths=lengths)[0]
    k2, v2 = k.copy(), v.copy()
    k2[0, 4:], v2[0, 4:], k2[1, 7:], v2[1, 7:] = np.nan, np.nan, np.nan, np.nan
    out2, lse2 = A.attention_forward(q, k2, v2, key_lengths=lengths)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(A.attention_backward(q, k2, v2, out2, lse2, dout, key_lengths=lengths)[0], dq)


def test_key_lengths_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    q, k, v, r = make_inputs(rng, 3, 4, 6, 3, 2)
    lengths = np.array([2, 6, 1])
    for causal in (False, True):
        out, lse = A.attention_forward_ref(q, k, v, causal, key_lengths=lengths)

        def loss():
            return float((A.attention_forward_ref(q, k, v, causal, key_lengths=lengths)[0] * r).sum())

        numeric = [fd_grad(loss, a) for a in (q, k, v)]
        for backward in (A.attention_backward_ref, A.attention_backward):
            analytic = backward(q, k, v, out, lse, r, causal, key_lengths=lengths)
            for a, n in zip(analytic, numeric):
                assert np.isfinite(a).all()
                np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-8)
        # the check can fail: the unmasked gradient of the same forward is rejected
        wrong = A.attention_backward_ref(q, k, v, out, lse, r, causal)
        assert not np.allclose(wrong[1], numeric[1], rtol=1e-6, atol=1e-8)


@settings(deadline=None, max_examples=20)
@given(B=st.integers(1, 3), T=st.integers(1, 140), H=st.integers(1, 3), D=st.integers(1, 8),
       causal=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]), seed=st.integers(0, 2**31 - 1),
       data=st.data())
def test_packed_key_lengths_equal_split_heads_exactly(B, T, H, D, causal, dtype, seed, data):
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(dtype)
    g = rng.standard_normal((B, T, H * D)).astype(dtype)
    heads = np.ascontiguousarray(qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)).reshape(3, B * H, T, D)
    g_heads = np.ascontiguousarray(g.reshape(B, T, H, D).transpose(0, 2, 1, 3)).reshape(B * H, T, D)
    per_head = np.repeat(lengths, H)
    out, lse = A.attention_forward(*heads, causal, key_lengths=per_head)
    dq, dk, dv = A.attention_backward(*heads, out, lse, g_heads, causal, key_lengths=per_head)
    p_out, p_lse = A.self_attention_forward(qkv, H, causal, key_lengths=lengths)
    p_dqkv = A.self_attention_backward(qkv, p_out, p_lse, g, H, causal, key_lengths=lengths)

    def merge(x):  # (B*H, T, D) -> (B, T, H*D)
        return x.reshape(B, H, T, D).transpose(0, 2, 1, 3).reshape(B, T, H * D)

    np.testing.assert_array_equal(p_out, merge(out))
    np.testing.assert_array_equal(p_lse, lse.reshape(B, H, T))
    np.testing.assert_array_equal(p_dqkv, np.concatenate([merge(dq), merge(dk), merge(dv)], axis=-1))


@pytest.mark.parametrize("fn", [A.attention_forward, A.attention_forward_ref])
def test_key_lengths_errors(fn):
    q = np.zeros((2, 3, 4))
    name = fn.__name__
    with pytest.raises(ValueError, match=re.escape(f"{name}: key_lengths must lie in [0, Tk = 3], got 4")):
        fn(q, q, q, key_lengths=np.array([1, 4]))
    with pytest.raises(ValueError, match=re.escape(f"{name}: key_lengths must lie in [0, Tk = 3], got -1")):
        fn(q, q, q, key_lengths=np.array([-1, 2]))
    with pytest.raises(ValueError, match=re.escape(f"{name}: key_lengths must be 2 integers (one per head, N = 2), "
                                                   "got int64 (3,)")):
        fn(q, q, q, key_lengths=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="float64"):
        fn(q, q, q, key_lengths=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=re.escape("self_attention_forward: key_lengths must lie in [0, Tk = 4]")):
        A.self_attention_forward(np.zeros((1, 4, 6)), 1, key_lengths=np.array([5]))


def test_key_lengths_run_with_jit_disabled():
    code = (
        "import numpy as np\n"
        "from tinyllm.kernels import attention as A\n"
        "rng = np.random.default_rng(0)\n"
        "lengths = np.array([0, 3, 5])\n"
        "for dtype in (np.float32, np.float64):\n"
        "    q, k, v, g = (rng.standard_normal((3, 5, 3)).astype(dtype) for _ in range(4))\n"
        "    out, lse = A.attention_forward(q, k, v, causal=True, key_lengths=lengths)\n"
        "    ref, lse_ref = A.attention_forward_ref(q, k, v, causal=True, key_lengths=lengths)\n"
        "    assert np.allclose(out, ref, atol=1e-5) and np.array_equal(lse == -np.inf, lse_ref == -np.inf)\n"
        "    for a, b in zip(A.attention_backward(q, k, v, ref, lse_ref, g, True, key_lengths=lengths),\n"
        "                    A.attention_backward_ref(q, k, v, ref, lse_ref, g, True, key_lengths=lengths)):\n"
        "        assert np.allclose(a, b, atol=1e-5)\n"
        "import numba\n"
        "assert numba.config.DISABLE_JIT\n"
        "print('ok')\n"
    )
    run_with_jit_disabled(code)


# --------------------------------------------------------------------------------------------
# F.scaled_dot_product_attention(attn_mask=...)
# --------------------------------------------------------------------------------------------

def leaf(a):
    return Tensor(np.array(a), requires_grad=True)


def padding_mask(lengths, tk):
    """(B, 1, 1, Tk) bool, True at the first lengths[b] keys."""
    return (np.arange(tk)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]


def general_masks(rng, B, H, tq, tk):
    """Masks that are not key padding, in PyTorch's forms: per-query bool, a hole in the keys,
    float additive (finite and -inf), and a rank-2 (Tq, Tk) one."""
    per_query = rng.random((B, 1, tq, tk)) < 0.7
    per_query[..., 0] = True  # every row sees something
    holes = np.ones((B, 1, 1, tk), dtype=bool)
    holes[:, :, :, tk // 2] = False
    additive = rng.standard_normal((B, H, tq, tk))
    additive[rng.random((B, H, tq, tk)) < 0.3] = -np.inf
    additive[..., -1] = 0.5
    return [per_query, holes, additive, rng.random((tq, tk)) < 0.8]


def run_both(q, k, v, R, **kwargs):
    """forward + backward of (attn * R).sum() through sdpa and through attention_composed."""
    results = []
    for attn in (F.scaled_dot_product_attention, F.attention_composed):
        tq_, tk_, tv_ = leaf(q), leaf(k), leaf(v)
        out = attn(tq_, tk_, tv_, **kwargs)
        (out * R).sum().backward()
        results.append([out.data, tq_.grad, tk_.grad, tv_.grad])
    return results


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_key_padding_equals_composition(causal):
    rng = np.random.default_rng(4)
    B, H, tq, tk = 3, 2, 5, 7
    q, k, v = rng.standard_normal((B, H, tq, 4)), rng.standard_normal((B, H, tk, 4)), rng.standard_normal((B, H, tk, 3))
    R = rng.standard_normal((B, H, tq, 3))
    mask = padding_mask([7, 2, 4], tk)
    assert F.key_lengths_from_mask(mask, (B, H), tq, tk).tolist() == [7, 7, 2, 2, 4, 4]
    fused, composed = run_both(q, k, v, R, attn_mask=mask, is_causal=causal)
    for a, b in zip(fused, composed):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    expected = masked_attention_np(q, k, v, mask & (A.causal_mask(tq, tk) if causal else True))
    np.testing.assert_allclose(fused[0], expected, rtol=1e-10, atol=1e-12)


def test_sdpa_general_masks_equal_numpy():
    rng = np.random.default_rng(5)
    B, H, tq, tk = 2, 2, 4, 6
    q, k, v = rng.standard_normal((B, H, tq, 3)), rng.standard_normal((B, H, tk, 3)), rng.standard_normal((B, H, tk, 2))
    for mask in general_masks(rng, B, H, tq, tk):
        assert F.key_lengths_from_mask(mask, (B, H), tq, tk) is None
        out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), attn_mask=mask).data
        if mask.dtype == bool:
            expected = masked_attention_np(q, k, v, mask)
        else:  # additive: softmax(s + mask)
            s = q @ np.swapaxes(k, -1, -2) / np.sqrt(3) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            expected = p / p.sum(-1, keepdims=True) @ v
        np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_key_padding_detection():
    detect = F.key_lengths_from_mask
    assert detect(np.array([True, True, False]), (2,), 4, 3).tolist() == [2, 2]
    assert detect(np.array([[0.0, -np.inf, -np.inf]]), (1,), 2, 3).tolist() == [1]  # float 0 / -inf
    assert detect(np.array([[0.0, -1.0, -np.inf]]), (1,), 2, 3) is None  # a finite bias is not padding
    assert detect(np.array([[True, False, True]]), (1,), 2, 3) is None  # a hole, not a tail
    same_rows = np.broadcast_to(padding_mask([2, 3], 3), (2, 1, 4, 3))  # expanded over the queries
    assert detect(same_rows, (2, 1), 4, 3).tolist() == [2, 3]
    assert detect(np.tri(3, dtype=bool), (1,), 3, 3) is None  # per-query
    assert detect(np.zeros((2, 1, 1, 3), bool), (2, 1), 2, 3).tolist() == [0, 0]


def test_sdpa_fully_masked_rows_give_zeros_and_zero_gradients():
    rng = np.random.default_rng(6)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 2))
    R = rng.standard_normal((2, 3, 2))
    padding = np.array([True] * 5 + [False] * 5).reshape(2, 1, 5)  # batch 1 has no key: the fused path
    general = np.stack([np.ones((3, 5), bool), np.eye(3, 5, dtype=bool)])
    general[1, 1] = False  # batch 1, query 1 sees nothing
    additive = np.zeros((2, 3, 5))
    additive[0, :, 3:] = -np.inf
    additive[1, 1] = -np.inf
    masks = [padding, general, additive]
    for mask in masks:
        for attn in (F.scaled_dot_product_attention, F.attention_composed):
            tq_, tk_, tv_ = leaf(q), leaf(k), leaf(v)
            out = attn(tq_, tk_, tv_, attn_mask=mask)
            (out * R).sum().backward()
            for a in (out.data, tq_.grad, tk_.grad, tv_.grad):
                assert np.isfinite(a).all()
            blind = ~np.broadcast_to(mask if mask.dtype == bool else mask != -np.inf, (2, 3, 5)).any(-1)
            assert blind.any()
            assert (out.data[blind] == 0).all() and (tq_.grad[blind] == 0).all()


MASK_KINDS = ["padding", "padding_causal", "per_query", "holes", "additive", "rank2"]


def mask_of_kind(kind, rng, B, H, tq, tk):
    if kind.startswith("padding"):
        return padding_mask(rng.integers(1, tk + 1, B), tk)
    return dict(zip(MASK_KINDS[2:], general_masks(rng, B, H, tq, tk)))[kind]


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_sdpa_mask_gradcheck(kind):
    rng = np.random.default_rng(7)
    B, H, tq, tk = 2, 2, 3, 4
    mask = mask_of_kind(kind, rng, B, H, tq, tk)
    causal = kind == "padding_causal"
    q, k, v = (leaf(rng.standard_normal(s)) for s in ((B, H, tq, 3), (B, H, tk, 3), (B, H, tk, 2)))
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal),
                     (q, k, v), rtol=1e-6, atol=1e-7)


def test_sdpa_mask_gradcheck_can_fail():
    """The same check rejects a backward that ignores the mask: the unmasked kernel's gradient
    fed through a Function whose forward is masked."""
    from tinyllm.tensor import Function

    class WrongBackward(Function):
        @staticmethod
        def forward(ctx, q, k, v, lengths):
            out, lse = A.attention_forward(q, k, v, key_lengths=lengths)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, g):
            return A.attention_backward(*ctx.saved_tensors, g)  # no key_lengths

    rng = np.random.default_rng(8)
    q, k, v = (leaf(rng.standard_normal(s)) for s in ((2, 3, 3), (2, 4, 3), (2, 4, 2)))
    from tinyllm import GradcheckError
    with pytest.raises(GradcheckError):
        gradcheck(lambda q, k, v: WrongBackward.apply(q, k, v, lengths=np.array([2, 3])), (q, k, v),
                  rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_sdpa_mask_matches_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    B, H, tq, tk = 3, 2, 5, 6
    mask = mask_of_kind(kind, rng, B, H, tq, tk)
    causal = kind == "padding_causal"
    q, k, v = rng.standard_normal((B, H, tq, 4)), rng.standard_normal((B, H, tk, 4)), rng.standard_normal((B, H, tk, 3))
    R = rng.standard_normal((B, H, tq, 3))
    # torch refuses attn_mask together with is_causal, and aligns causal top-left: combine by hand
    torch_mask = mask & A.causal_mask(tq, tk) if causal else mask
    tq_, tk_, tv_ = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out_t = torch.nn.functional.scaled_dot_product_attention(tq_, tk_, tv_, attn_mask=torch.tensor(torch_mask))
    (out_t * torch.tensor(R)).sum().backward()
    ours = run_both(q, k, v, R, attn_mask=mask, is_causal=causal)[0]
    for a, b in zip(ours, (out_t.detach(), tq_.grad, tk_.grad, tv_.grad)):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)


def test_sdpa_mask_float32_matches_torch_float32():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    B, H, T, D = 16, 4, 48, 32  # the benchmark's shape, random key lengths
    q, k, v, R = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4))
    mask = padding_mask(rng.integers(1, T + 1, B), T)
    tq_, tk_, tv_ = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out_t = torch.nn.functional.scaled_dot_product_attention(tq_, tk_, tv_, attn_mask=torch.tensor(mask))
    (out_t * torch.tensor(R)).sum().backward()
    ours = run_both(q, k, v, R, attn_mask=mask)[0]
    for a, b in zip(ours, (out_t.detach(), tq_.grad, tk_.grad, tv_.grad)):
        assert a.dtype == np.float32 and np.isfinite(a).all()
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5)


def test_sdpa_mask_errors_name_the_shapes():
    q = Tensor(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=re.escape("attn_mask of shape (3, 3) does not broadcast to (..., Tq, Tk) = "
                                                   "(2, 3, 5)")):
        F.scaled_dot_product_attention(q, Tensor(np.ones((2, 5, 4))), Tensor(np.ones((2, 5, 4))),
                                       attn_mask=np.ones((3, 3), bool))
    with pytest.raises(TypeError, match="attn_mask must be bool .* got dtype int64"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((3, 3), np.int64))


def test_sdpa_mask_with_dropout_is_deterministic_and_masked():
    rng = np.random.default_rng(11)
    q, k, v = (Tensor(rng.standard_normal((2, 4, 3))) for _ in range(3))
    mask = np.array([True, True, True, False])
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.5, rng=np.random.default_rng(1))
    b = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.data, b.data)
    v2 = Tensor(v.data.copy())
    v2.data[:, 3] = 1e6  # a masked key's value must not show up, dropout or not
    c = F.scaled_dot_product_attention(q, k, v2, attn_mask=mask, dropout_p=0.5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(c.data, a.data)


# --------------------------------------------------------------------------------------------
# F.self_attention(attn_mask=...): the packed path for key padding, split heads otherwise
# --------------------------------------------------------------------------------------------

def split_attend_merge(qkv, n_head, causal, attn_mask):
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_head)
    heads = qkv.reshape(B, T, 3, n_head, D).permute(2, 0, 3, 1, 4)
    y = F.attention_composed(heads[0], heads[1], heads[2], attn_mask=attn_mask, is_causal=causal)
    return y.permute(0, 2, 1, 3).reshape(B, T, n_head * D)


@pytest.mark.parametrize("kind", ["padding", "per_query", "per_head"])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_mask_equals_split_attend_merge(kind, causal):
    rng = np.random.default_rng(12)
    B, T, H, D = 3, 6, 2, 3
    x = rng.standard_normal((B, T, 3 * H * D))
    R = rng.standard_normal((B, T, H * D))
    mask = {"padding": padding_mask([6, 1, 3], T),
            "per_query": rng.random((B, 1, T, T)) < 0.7,
            "per_head": rng.random((B, H, 1, T)) < 0.7}[kind]
    results = []
    for attn in (F.self_attention, split_attend_merge):
        t = leaf(x)
        y = attn(t, H, causal, attn_mask=mask)
        (y * R).sum().backward()
        results.append((y.data, t.grad))
    for a, b in zip(*results):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert gradcheck(lambda t: F.self_attention(t, H, causal, attn_mask=mask), (leaf(x),), rtol=1e-6, atol=1e-7)


def test_self_attention_padding_takes_the_packed_kernel(monkeypatch):
    """A key-padding mask runs the fused packed kernel with one length per sequence."""
    seen = []
    real = A.self_attention_forward
    monkeypatch.setattr(A, "self_attention_forward", lambda *a, **kw: seen.append(kw["key_lengths"]) or real(*a, **kw))
    use_reference(is_reference())  # F reaches kernels through dispatch(): make it look them up again
    F.self_attention(Tensor(np.ones((2, 4, 12))), 2, attn_mask=padding_mask([4, 2], 4))
    assert [list(x) for x in seen] == [[4, 2]]


def test_sdpa_padding_takes_the_fused_kernel(monkeypatch):
    seen = []
    real = A.attention_forward
    monkeypatch.setattr(A, "attention_forward", lambda *a, **kw: seen.append(kw["key_lengths"]) or real(*a, **kw))
    use_reference(is_reference())
    q = Tensor(np.ones((2, 2, 3, 4)))
    F.scaled_dot_product_attention(q, Tensor(np.ones((2, 2, 5, 4))), Tensor(np.ones((2, 2, 5, 4))),
                                   attn_mask=padding_mask([5, 1], 5))
    assert [list(x) for x in seen] == [[5, 5, 1, 1]]


def test_module_imports_without_torch():
    """The library never imports the optional oracle."""
    code = "import sys, tinyllm.functional, tinyllm.models; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
