"""Left padding in the KV-cache attention kernel (``key_starts``): the numba kernel against its
NumPy reference, the reference against the composed attention with an explicit mask, queries
that see no key (zeros, never NaN), ``key_starts_from_mask``, and the model's cached decoding
of a left-padded batch through the kernel equal to the composed path."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import assert_close, kv_caches
from tinyllm import Tensor, no_grad
from tinyllm import functional as F
from tinyllm.kernels import attention as A
from tinyllm.models.gpt import GPT, GPTConfig


@settings(deadline=None, max_examples=60)
@given(B=st.integers(1, 3), H=st.integers(1, 3), D=st.integers(1, 9), start=st.integers(0, 20),
       T=st.integers(1, 6), dtype=st.sampled_from([np.float32, np.float64]), extreme=st.booleans(),
       parallel=st.booleans(), seed=st.integers(0, 2**16), data=st.data())
def test_kernel_with_key_starts_matches_reference(B, H, D, start, T, dtype, extreme, parallel, seed, data):
    rng = np.random.default_rng(seed)
    L = start + T + 1
    key_starts = np.array(data.draw(st.lists(st.integers(0, start + T), min_size=B, max_size=B)))
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(dtype) * (100 if extreme else 1)
    k_ref, v_ref = kv_caches(rng, B, H, L, D, start, dtype)
    k, v = k_ref.copy(), v_ref.copy()
    out_ref, lse_ref = A.cached_attention_forward_ref(qkv, k_ref, v_ref, start, H, key_starts=key_starts)
    old = A.CACHED_SERIAL_WORK
    A.CACHED_SERIAL_WORK = 0 if parallel else 1 << 62
    try:
        out, lse = A.cached_attention_forward(qkv, k, v, start, H, key_starts=key_starts)
    finally:
        A.CACHED_SERIAL_WORK = old
    assert np.isfinite(out).all() and np.isfinite(out_ref).all()
    np.testing.assert_array_equal(k, k_ref)
    np.testing.assert_array_equal(v, v_ref)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert_close(out, out_ref, tol, scale=max(1.0, np.abs(out_ref).max()))
    # lse: -inf exactly for the queries that see no key, finite and equal elsewhere
    seen = np.isfinite(lse_ref)
    np.testing.assert_array_equal(np.isfinite(lse), seen)
    assert_close(lse[seen], lse_ref[seen], tol, scale=max(1.0, np.abs(lse_ref[seen]).max(initial=0)))


def test_reference_equals_composed_attention_with_the_explicit_mask():
    rng = np.random.default_rng(0)
    B, H, D, start, T = 3, 2, 4, 5, 3
    key_starts = np.array([0, 2, 7])  # the last sequence: its first 7 positions are padding
    qkv = rng.standard_normal((B, T, 3 * H * D))
    k, v = kv_caches(rng, B, H, start + T, D, start, np.float64)
    out, _ = A.cached_attention_forward_ref(qkv, k, v, start, H, key_starts=key_starts)
    q = qkv[:, :, :H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3)
    mask = (np.arange(start + T) >= key_starts[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
    expected = F.attention_composed(Tensor(q), Tensor(k), Tensor(v), attn_mask=mask, is_causal=True).data
    np.testing.assert_allclose(out, expected.transpose(0, 2, 1, 3).reshape(B, T, H * D), rtol=1e-12, atol=1e-12)
    assert (out[2, :2] == 0).all() and (out[2, 2] != 0).any()  # queries 5, 6 see no key, query 7 itself


def test_zero_key_starts_are_bit_identical_to_none():
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((2, 3, 24)).astype(np.float32)
    k, v = kv_caches(rng, 2, 2, 9, 4, 4, np.float32)
    a, la = A.cached_attention_forward(qkv, k.copy(), v.copy(), 4, 2)
    b, lb = A.cached_attention_forward(qkv, k.copy(), v.copy(), 4, 2, key_starts=np.zeros(2, np.int64))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize("fn", [A.cached_attention_forward, A.cached_attention_forward_ref])
def test_bad_key_starts_are_named(fn):
    qkv = np.zeros((2, 1, 12), np.float32)
    k, v = np.zeros((2, 2, 5, 2), np.float32), np.zeros((2, 2, 5, 2), np.float32)
    with pytest.raises(ValueError, match="key_starts must be 2 integers"):
        fn(qkv, k, v, 2, 2, key_starts=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"key_starts must lie in \[0, start \+ T = 3\], got 4"):
        fn(qkv, k, v, 2, 2, key_starts=np.array([0, 4]))


def test_key_starts_from_mask():
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(F.key_starts_from_mask(mask[:, None, None, :], 3, 4), [2, 0, 4])
    np.testing.assert_array_equal(F.key_starts_from_mask(mask, 3, 4), [2, 0, 4])
    assert F.key_starts_from_mask(np.array([[1, 0, 1, 1]], dtype=bool), 1, 4) is None  # a hole
    assert F.key_starts_from_mask(np.array([[1, 1, 0, 0]], dtype=bool), 1, 4) is None  # right padding
    assert F.key_starts_from_mask(np.zeros((1, 1, 2, 4), dtype=bool), 1, 4) is None  # per-query mask
    assert F.key_starts_from_mask(np.array([[0.0, 1.0]]), 1, 2) is None  # float masks: not this path


def test_cached_function_refuses_to_record_a_padded_cache_for_backward():
    qkv = Tensor(np.zeros((1, 1, 6), np.float32), requires_grad=True)
    k, v = np.zeros((1, 1, 3, 2), np.float32), np.zeros((1, 1, 3, 2), np.float32)
    with pytest.raises(NotImplementedError, match="no backward through a left-padded KV cache"):
        F.cached_self_attention(qkv, k, v, 1, 1, key_starts=np.array([1]))


def test_padded_cached_decoding_takes_the_kernel_and_equals_the_composed_path(monkeypatch):
    model = GPT(GPTConfig(vocab_size=31, block_size=24, n_layer=2, n_head=2, n_embd=16), seed=4).eval()
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 31, (3, 9))
    mask = np.ones_like(ids)
    mask[0, :4] = mask[2, :8] = 0

    def decode(split):
        cache = model.new_kv_cache(3)
        first, _ = model(ids[:, :split], kv_cache=cache, attention_mask=mask[:, :split])
        rest, _ = model(ids[:, split:], kv_cache=cache, attention_mask=mask)
        return np.concatenate([first.data, rest.data], axis=1)

    composed = decode(5)  # grad mode on: the composed attention (it has a backward)
    calls = []
    real = A.cached_attention_forward
    monkeypatch.setattr(A, "cached_attention_forward", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    with no_grad():
        kernel = decode(5)
    assert calls and any(kw.get("key_starts") is not None and kw["key_starts"].any() for kw in calls)
    assert np.isfinite(kernel).all()
    np.testing.assert_allclose(kernel, composed, rtol=1e-5, atol=1e-5)
    full, _ = model(ids, attention_mask=mask)
    real_rows = mask.astype(bool)
    np.testing.assert_allclose(kernel[real_rows], full.data[real_rows], rtol=1e-5, atol=1e-5)
