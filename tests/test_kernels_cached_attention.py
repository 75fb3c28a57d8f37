"""Attention of new positions over a KV cache (kernels/attention.py ``cached_attention_forward``
and its NumPy reference), and the Function that wraps it (functional.cached_self_attention)."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import assert_close, kv_caches
from tinyllm import Tensor, gradcheck
from tinyllm import functional as F
from tinyllm.kernels import attention as A


@settings(deadline=None, max_examples=60)
@given(B=st.integers(1, 3), H=st.integers(1, 4), D=st.integers(1, 12), start=st.integers(0, 70),
       T=st.integers(1, 5), spare=st.integers(0, 3), dtype=st.sampled_from([np.float32, np.float64]),
       extreme=st.booleans(), parallel=st.booleans(), seed=st.integers(0, 2**16))
def test_kernel_matches_reference(B, H, D, start, T, spare, dtype, extreme, parallel, seed):
    rng = np.random.default_rng(seed)
    L = start + T + spare
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(dtype) * (100 if extreme else 1)
    k_ref, v_ref = kv_caches(rng, B, H, L, D, start, dtype)
    k, v = k_ref.copy(), v_ref.copy()
    out_ref, lse_ref = A.cached_attention_forward_ref(qkv, k_ref, v_ref, start, H)
    old = A.CACHED_SERIAL_WORK
    A.CACHED_SERIAL_WORK = 0 if parallel else 1 << 62
    try:
        out, lse = A.cached_attention_forward(qkv, k, v, start, H)
    finally:
        A.CACHED_SERIAL_WORK = old
    np.testing.assert_array_equal(k, k_ref)  # the new keys and values stored, nothing else touched
    np.testing.assert_array_equal(v, v_ref)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert_close(out, out_ref, tol, scale=max(1.0, np.abs(out_ref).max()))
    assert_close(lse, lse_ref, tol, scale=max(1.0, np.abs(lse_ref).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_token_by_token_equals_attention_over_the_whole_sequence(dtype):
    # a prompt of 7, then 6 single tokens, against causal self-attention of all 13 positions
    rng = np.random.default_rng(0)
    B, T, H, D = 2, 13, 3, 5
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(dtype)
    whole, whole_lse = A.self_attention_forward_ref(qkv, H, causal=True)
    k, v = np.zeros((B, H, 16, D), dtype), np.zeros((B, H, 16, D), dtype)
    outs, lses = [], []
    for lo, hi in [(0, 7)] + [(t, t + 1) for t in range(7, T)]:
        out, lse = A.cached_attention_forward(qkv[:, lo:hi], k, v, lo, H)
        outs.append(out), lses.append(lse)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert_close(np.concatenate(outs, axis=1), whole, tol)
    assert_close(np.concatenate(lses, axis=2), whole_lse, tol)


def test_a_row_gets_the_same_bits_alone_in_a_batch_serial_or_parallel(monkeypatch):
    rng = np.random.default_rng(1)
    B, H, D, start = 4, 3, 16, 300
    qkv = rng.standard_normal((B, 1, 3 * H * D)).astype(np.float32)
    k0, v0 = kv_caches(rng, B, H, start + 1, D, start, np.float32)
    monkeypatch.setattr(A, "CACHED_SERIAL_WORK", 1 << 62)
    serial, _ = A.cached_attention_forward(qkv, k0.copy(), v0.copy(), start, H)
    alone = np.concatenate([A.cached_attention_forward(qkv[b:b + 1], k0[b:b + 1].copy(), v0[b:b + 1].copy(),
                                                       start, H)[0] for b in range(B)])
    monkeypatch.setattr(A, "CACHED_SERIAL_WORK", 0)
    parallel, _ = A.cached_attention_forward(qkv, k0.copy(), v0.copy(), start, H)
    np.testing.assert_array_equal(serial, alone)
    np.testing.assert_array_equal(serial, parallel)


def test_one_dominant_key_gives_its_value_not_nan():
    B, H, D, start = 1, 1, 4, 3
    k = np.zeros((B, H, 4, D), np.float32)
    v = np.arange(16, dtype=np.float32).reshape(B, H, 4, D)
    k[0, 0, 1] = 1e4
    qkv = np.zeros((B, 1, 3 * D), np.float32)
    qkv[0, 0, :D] = 1e4  # scores of +-1e8: exp underflows everywhere but at key 1
    out, lse = A.cached_attention_forward(qkv, k, v, start, H)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    np.testing.assert_array_equal(out[0, 0], v[0, 0, 1])


@pytest.mark.parametrize("fn", [A.cached_attention_forward, A.cached_attention_forward_ref])
def test_input_errors_name_the_shapes(fn):
    qkv = np.zeros((2, 1, 12), np.float32)
    k, v = np.zeros((2, 2, 5, 2), np.float32), np.zeros((2, 2, 5, 2), np.float32)
    with pytest.raises(ValueError, match=re.escape("(2, 1, 12) with n_head=5")):
        fn(qkv, k, v, 0, 5)
    with pytest.raises(ValueError, match="k_cache must be float32"):
        fn(qkv, k[:, :1], v, 0, 2)
    with pytest.raises(ValueError, match="5 cached \\+ 1 new positions do not fit a cache of 5"):
        fn(qkv, k, v, 5, 2)
    with pytest.raises(ValueError, match="v_cache must be float32"):
        fn(qkv, k, v.astype(np.float64), 0, 2)


def test_cached_self_attention_gradients_match_finite_differences():
    # the new positions' q, k, v get gradients; the cached positions are constants
    rng = np.random.default_rng(2)
    B, H, D, start, T = 2, 2, 3, 4, 3
    k_past = rng.standard_normal((B, H, start + T, D))
    v_past = rng.standard_normal((B, H, start + T, D))

    def attend(qkv):  # fresh caches each call: the forward writes into them
        return F.cached_self_attention(qkv, k_past.copy(), v_past.copy(), start, H)

    qkv = Tensor(rng.standard_normal((B, T, 3 * H * D)), requires_grad=True)
    assert gradcheck(attend, (qkv,))


def test_cached_self_attention_gradient_check_can_fail(monkeypatch):
    from tinyllm.gradcheck import GradcheckError

    real = A.attention_backward

    def wrong(*args, **kwargs):
        dq, dk, dv = real(*args, **kwargs)
        return dq * 1.01, dk, dv

    monkeypatch.setattr(A, "attention_backward", wrong)
    A_dispatch_reset()
    rng = np.random.default_rng(3)
    k, v = rng.standard_normal((1, 1, 4, 2)), rng.standard_normal((1, 1, 4, 2))
    qkv = Tensor(rng.standard_normal((1, 2, 6)), requires_grad=True)
    try:
        with pytest.raises(GradcheckError):
            gradcheck(lambda x: F.cached_self_attention(x, k.copy(), v.copy(), 2, 1), (qkv,))
    finally:
        monkeypatch.undo()
        A_dispatch_reset()


def A_dispatch_reset():
    """Make the dispatchers look the kernels up again (after a test replaced one)."""
    import tinyllm

    tinyllm.use_reference(tinyllm.is_reference())
