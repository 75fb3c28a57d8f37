"""tinyllm.functional: forward values against NumPy written out here (independent of the kernels'
own references), gradients by finite differences in float64, the fused attention against its
plain composition, behaviour at extreme values, and the error messages.

The numba kernels compile on first use; attention takes the longest, so it is exercised in float64
only (the kernel tests cover float32).
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinyllm
import tinyllm.functional as F
from conftest import arrays, distinct, shapes
from tinyllm.tensor import Tensor


def leaf(a, dtype=np.float64):
    return Tensor(np.asarray(a, dtype=dtype), requires_grad=True)


def transposed_copy(a):
    a = np.asarray(a, dtype=np.float64)
    return np.ascontiguousarray(a.T).T


def check(fn, *arrays_, noncontig=False):
    prep = transposed_copy if noncontig else np.asarray
    assert tinyllm.gradcheck(fn, tuple(leaf(prep(a)) for a in arrays_))


def assert_close(actual, expected, rtol=1e-10, atol=1e-12):
    actual = np.asarray(actual)
    assert np.isfinite(actual).all(), actual  # NaN == NaN would pass assert_allclose
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


_erf = np.vectorize(math.erf)


def gelu_np(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / np.sqrt(2)))


def layer_norm_np(x, weight, bias, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1 if weight is None else weight) + (0 if bias is None else bias)


def cross_entropy_np(logits, targets, ignore_index=-100):
    z = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    m = z.max(axis=-1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    valid = t != ignore_index
    return -logp[valid, t[valid]].mean()


def attention_np(q, k, v, causal, scale=None):
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * scale
    tq, tk = s.shape[-2:]
    if causal:
        allowed = np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)
        s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    denom = e.sum(axis=-1, keepdims=True)
    p = np.divide(e, denom, out=np.zeros_like(e), where=denom > 0)  # a row that sees nothing: 0
    return p @ v


# ----------------------------------------------------------------------------------------------
# gelu


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@given(data=st.data(), shape=shapes(min_dims=0))
def test_gelu_forward_matches_numpy(approximate, data, shape):
    a = data.draw(arrays(shape, -6.0, 6.0))
    assert_close(F.gelu(Tensor(a), approximate=approximate).data, gelu_np(a, approximate))
    y32 = F.gelu(Tensor(a.astype(np.float32)), approximate=approximate).data
    assert y32.dtype == np.float32
    assert_close(y32, gelu_np(a.astype(np.float32).astype(np.float64), approximate), rtol=1e-5, atol=1e-6)


def test_gelu_defaults_to_the_exact_form_and_has_the_known_values():
    x = np.array([-3.0, -1.0, 0.0, 1.0, 3.0])
    assert_close(F.gelu(Tensor(x)).data, gelu_np(x, "none"))  # torch's default
    assert_close(F.gelu(Tensor(x), approximate="tanh").data, gelu_np(x, "tanh"))
    # exact GELU: x * Phi(x); Phi(1) = 0.8413447460685429
    assert_close(F.gelu(Tensor(x), approximate="none").data[3], 0.8413447460685429, rtol=1e-12)
    assert F.gelu(Tensor(x), approximate="none").data[2] == 0.0


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@given(data=st.data(), shape=shapes(min_dims=1), noncontig=st.booleans())
def test_gelu_gradient(approximate, data, shape, noncontig):
    a = data.draw(arrays(shape, -4.0, 4.0))
    check(lambda x: F.gelu(x, approximate=approximate), a, noncontig=noncontig)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_gradient_of_a_0d_tensor(approximate):
    x = leaf(0.5)
    (F.gelu(x, approximate=approximate) * 2.0).backward()
    assert_close(x.grad, 2.0 * (gelu_np(0.5 + 1e-6, approximate) - gelu_np(0.5 - 1e-6, approximate)) / 2e-6, rtol=1e-6)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_extreme_inputs_are_finite(approximate):
    for dtype in (np.float32, np.float64):
        x = leaf([-1e4, -30.0, 30.0, 1e4], dtype)
        y = F.gelu(x, approximate=approximate)
        y.sum().backward()  # the upstream gradient is a read-only broadcast view
        assert np.isfinite(y.data).all() and np.isfinite(x.grad).all()
        assert_close(y.data, [0.0, 0.0, 30.0, 1e4], atol=1e-6)
        assert_close(x.grad, [0.0, 0.0, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("bad", ["exact", "Tanh", None])
def test_gelu_bad_approximate_is_named(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        F.gelu(Tensor(np.ones(3)), approximate=bad)


# ----------------------------------------------------------------------------------------------
# layer norm


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3, min_side=1), affine=st.sampled_from(["none", "weight", "both"]))
def test_layer_norm_forward_matches_numpy(data, shape, affine):
    a = data.draw(arrays(shape, -3.0, 3.0))
    w = data.draw(arrays(shape[-1:])) if affine != "none" else None
    b = data.draw(arrays(shape[-1:])) if affine == "both" else None
    out = F.layer_norm(Tensor(a), None if w is None else Tensor(w), None if b is None else Tensor(b))
    assert out.shape == shape
    assert_close(out.data, layer_norm_np(a, w, b), rtol=1e-9, atol=1e-9)


def test_layer_norm_float32_and_large_offset_rows():
    rng = np.random.default_rng(0)
    a = 1e4 + rng.standard_normal((3, 8))  # var = E[x^2] - E[x]^2 would cancel here
    out = F.layer_norm(Tensor(a.astype(np.float32))).data
    assert out.dtype == np.float32
    assert_close(out, layer_norm_np(a.astype(np.float32).astype(np.float64), None, None), rtol=1e-2, atol=1e-2)
    assert_close(F.layer_norm(Tensor(a)).data, layer_norm_np(a, None, None), rtol=1e-8, atol=1e-8)


@given(data=st.data(), shape=shapes(min_dims=2, max_dims=3, min_side=2), noncontig=st.booleans())
def test_layer_norm_gradient(data, shape, noncontig):
    a = data.draw(distinct(shape, spread=0.3))  # distinct values: the variance is not ~0
    w = data.draw(arrays(shape[-1:]))
    b = data.draw(arrays(shape[-1:]))
    check(lambda x, w, b: F.layer_norm(x, w, b), a, w, b, noncontig=noncontig)
    check(lambda x: F.layer_norm(x), a, noncontig=noncontig)


def test_layer_norm_with_non_contiguous_upstream_gradient():
    rng = np.random.default_rng(1)
    a, R = rng.standard_normal((4, 3)), rng.standard_normal((3, 4))
    x, w = leaf(a), leaf(rng.standard_normal(3))
    (F.layer_norm(x, w).T * R).sum().backward()  # the gradient reaching layer_norm is transposed

    x2, w2 = leaf(a), leaf(w.data)
    mu = x2.mean(axis=-1, keepdims=True)
    var = ((x2 - mu) * (x2 - mu)).mean(axis=-1, keepdims=True)
    ((x2 - mu) / (var + 1e-5).sqrt() * w2 * R.T).sum().backward()
    assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-12)
    assert_close(w.grad, w2.grad, rtol=1e-9, atol=1e-12)


def test_layer_norm_bad_weight_shape_is_named():
    with pytest.raises(ValueError, match=r"weight.*\(4,\).*3"):
        F.layer_norm(Tensor(np.ones((2, 3))), Tensor(np.ones(4)))
    with pytest.raises(ValueError, match=r"bias.*\(2,\).*3"):
        F.layer_norm(Tensor(np.ones((2, 3))), None, Tensor(np.ones(2)))


# ----------------------------------------------------------------------------------------------
# cross-entropy


@st.composite
def logits_and_targets(draw, max_lead_dims=2, ignore_index=-100):
    lead = draw(shapes(min_dims=1, max_dims=max_lead_dims, max_side=3))
    vocab = draw(st.integers(1, 5))
    logits = draw(arrays(lead + (vocab,), -4.0, 4.0))
    targets = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, vocab - 1)))
    ignored = draw(hnp.arrays(np.bool_, lead))
    ignored.reshape(-1)[0] = False  # at least one position counts (all ignored: loss is nan)
    return logits, np.where(ignored, ignore_index, targets)


@given(lt=logits_and_targets())
def test_cross_entropy_forward_matches_numpy(lt):
    logits, targets = lt
    loss = F.cross_entropy(Tensor(logits), targets)
    assert loss.shape == ()
    assert_close(loss.data, cross_entropy_np(logits, targets), rtol=1e-10)
    loss32 = F.cross_entropy(Tensor(logits.astype(np.float32)), Tensor(targets))
    assert loss32.dtype == np.float32
    assert_close(loss32.data, cross_entropy_np(logits, targets), rtol=1e-5, atol=1e-5)


@given(lt=logits_and_targets(), ignore_index=st.sampled_from([-100, -1, 0]), noncontig=st.booleans())
def test_cross_entropy_gradient_with_ignore_index(lt, ignore_index, noncontig):
    logits, targets = lt
    targets = np.where(targets == -100, ignore_index, targets)
    if (targets == ignore_index).all():
        targets.reshape(-1)[0] = logits.shape[-1] - 1 if ignore_index == 0 else 0
        if ignore_index == 0 and logits.shape[-1] == 1:
            return  # only class 0 exists and it is ignored: nothing to check
    check(lambda z: F.cross_entropy(z, targets, ignore_index=ignore_index), logits, noncontig=noncontig)


def test_cross_entropy_ignored_rows_get_no_gradient_and_do_not_count():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [9.0, -9.0, 0.0]])
    targets = np.array([0, -100, 2])
    z = leaf(logits)
    loss = F.cross_entropy(z, targets)
    assert_close(loss.data, cross_entropy_np(logits[[0, 2]], targets[[0, 2]]))  # mean over 2, not 3
    loss.backward()
    np.testing.assert_array_equal(z.grad[1], 0.0)
    assert_close(z.grad[0].sum(), 0.0)


def test_cross_entropy_with_huge_logits_is_finite_and_correct():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]])
    targets = np.array([0, 0, 2])
    for dtype in (np.float32, np.float64):
        z = leaf(logits, dtype)
        loss = F.cross_entropy(z, targets)
        loss.backward()
        assert np.isfinite(loss.data) and np.isfinite(z.grad).all(), (loss, z.grad)
        # row 0: loss 0; row 1: 2e4 + log 2; row 2: log 3
        assert_close(loss.data, (0.0 + 2e4 + np.log(2) + np.log(3)) / 3, rtol=1e-6)
        expected = np.array([[0, 0, 0], [-1, 0.5, 0.5], [1 / 3, 1 / 3, -2 / 3]]) / 3
        assert_close(z.grad, expected, rtol=1e-5, atol=1e-7)


def test_cross_entropy_accepts_batch_time_vocab():
    rng = np.random.default_rng(2)
    logits, targets = rng.standard_normal((2, 3, 5)), rng.integers(0, 5, (2, 3))
    check(lambda z: F.cross_entropy(z, targets), logits)
    assert_close(F.cross_entropy(Tensor(logits), targets).data, cross_entropy_np(logits, targets))


def test_cross_entropy_target_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4,\).*\(3,\)"):
        F.cross_entropy(Tensor(np.zeros((4, 5))), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 3\).*\(6,\)"):
        F.cross_entropy(Tensor(np.zeros((2, 3, 5))), np.zeros(6, dtype=np.int64))


def test_cross_entropy_bad_targets_are_named():
    with pytest.raises(TypeError, match="float64"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\b7\b"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 7]))


# ----------------------------------------------------------------------------------------------
# embedding


@given(data=st.data(), vocab=st.integers(1, 5), dim=st.integers(1, 3), ids_shape=shapes(min_dims=0, max_dims=2))
def test_embedding_forward_and_gradient(data, vocab, dim, ids_shape):
    weight = data.draw(arrays((vocab, dim)))
    ids = data.draw(hnp.arrays(np.int64, ids_shape, elements=st.integers(0, vocab - 1)))
    out = F.embedding(Tensor(ids), Tensor(weight))
    assert out.shape == ids_shape + (dim,)
    np.testing.assert_array_equal(out.data, weight[ids])
    check(lambda w: F.embedding(ids, w), weight)


def test_embedding_repeated_ids_accumulate():
    w = leaf(np.zeros((4, 2)))
    ids = np.array([[1, 3, 1], [1, 0, 3]])
    R = np.arange(12.0).reshape(2, 3, 2)
    (F.embedding(ids, w) * R).sum().backward()
    expected = np.zeros((4, 2))
    for pos, i in np.ndenumerate(ids):
        expected[i] += R[pos]
    np.testing.assert_array_equal(w.grad, expected)
    np.testing.assert_array_equal(w.grad[1], R[0, 0] + R[0, 2] + R[1, 0])


@pytest.mark.parametrize("bad", [4, 10, -1])
def test_embedding_id_out_of_range_is_named(bad):
    with pytest.raises(ValueError, match=rf"id {bad}\b.*4"):
        F.embedding(np.array([0, bad, 1]), Tensor(np.ones((4, 2))))


def test_embedding_float_ids_are_rejected():
    with pytest.raises(TypeError, match="float"):
        F.embedding(np.array([0.0, 1.0]), Tensor(np.ones((4, 2))))


# ----------------------------------------------------------------------------------------------
# dropout


def test_dropout_eval_and_p0_are_identity():
    x = leaf(np.arange(6.0))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, training=True, rng=np.random.default_rng(0)) is x


def test_dropout_is_deterministic_with_a_seeded_rng():
    x = Tensor(np.ones((8, 8)))
    a = F.dropout(x, 0.5, rng=np.random.default_rng(42)).data
    b = F.dropout(x, 0.5, rng=np.random.default_rng(42)).data
    c = F.dropout(x, 0.5, rng=np.random.default_rng(43)).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_scales_kept_elements_and_zeros_the_rest(p):
    rng = np.random.default_rng(0)
    a = rng.uniform(1.0, 2.0, (200, 100))  # no zeros, so a zero in the output means dropped
    x = leaf(a)
    y = F.dropout(x, p, rng=np.random.default_rng(3))
    kept = y.data != 0
    assert_close(y.data[kept], a[kept] / (1 - p), rtol=1e-12)
    assert abs(kept.mean() - (1 - p)) < 0.01  # 20,000 Bernoulli draws: sd < 0.0036
    R = rng.standard_normal(a.shape)
    (y * R).sum().backward()
    assert_close(x.grad, np.where(kept, R / (1 - p), 0.0), rtol=1e-12)


def test_dropout_keeps_float32_and_p1_drops_everything():
    x = Tensor(np.ones(10, np.float32), requires_grad=True)
    assert F.dropout(x, 0.3, rng=np.random.default_rng(0)).dtype == np.float32
    y = F.dropout(x, 1.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(y.data, 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 0.0)


@given(data=st.data(), shape=shapes(), p=st.sampled_from([0.2, 0.5]))
def test_dropout_gradient(data, shape, p):
    a = data.draw(arrays(shape))
    check(lambda x: F.dropout(x, p, rng=np.random.default_rng(5)), a)  # a fresh rng: one fixed mask


def test_dropout_bad_arguments_are_named():
    with pytest.raises(ValueError, match="1.5"):
        F.dropout(Tensor(np.ones(3)), 1.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        F.dropout(Tensor(np.ones(3)), 0.5)


# ----------------------------------------------------------------------------------------------
# concatenate, stack, where


@st.composite
def join_operands(draw, same_shape=False):
    base = draw(shapes(min_dims=1, max_dims=3, max_side=3))
    axis = draw(st.integers(-len(base), len(base) - 1))
    n = draw(st.integers(1, 3))
    out = []
    for _ in range(n):
        shape = list(base)
        if not same_shape:
            shape[axis] = draw(st.integers(1, 3))
        out.append(draw(arrays(tuple(shape))))
    return out, axis


@given(ops=join_operands(), noncontig=st.booleans())
def test_concatenate_forward_and_gradient(ops, noncontig):
    parts, axis = ops
    np.testing.assert_array_equal(F.concatenate([Tensor(p) for p in parts], axis=axis).data, np.concatenate(parts, axis=axis))
    np.testing.assert_array_equal(F.cat([Tensor(p) for p in parts], axis).data, np.concatenate(parts, axis=axis))
    check(lambda *ts: F.concatenate(list(ts), axis=axis), *parts, noncontig=noncontig)


@given(ops=join_operands(same_shape=True), new_axis_seed=st.integers(0, 7))
def test_stack_forward_and_gradient(ops, new_axis_seed):
    parts, _ = ops
    nd = parts[0].ndim + 1
    axis = new_axis_seed % nd - (nd if new_axis_seed >= 4 else 0)
    np.testing.assert_array_equal(F.stack([Tensor(p) for p in parts], axis=axis).data, np.stack(parts, axis=axis))
    check(lambda *ts: F.stack(list(ts), axis=axis), *parts)


def test_concatenate_with_a_constant_and_a_reused_tensor():
    x = leaf([1.0, 2.0])
    y = F.concatenate([x, np.array([5.0]), x * 3.0])
    np.testing.assert_array_equal(y.data, [1.0, 2.0, 5.0, 3.0, 6.0])
    (y * Tensor(np.arange(1.0, 6.0))).sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0 + 12.0, 2.0 + 15.0])


def test_concatenate_and_stack_errors_are_named():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        F.concatenate([Tensor(np.ones((2, 3))), Tensor(np.ones((2, 4)))], axis=0)
    with pytest.raises(ValueError, match="axis 2"):
        F.concatenate([Tensor(np.ones((2, 3)))], axis=2)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        F.stack([Tensor(np.ones((2, 3))), Tensor(np.ones((3, 2)))])
    with pytest.raises(ValueError, match="axis 3"):
        F.stack([Tensor(np.ones((2, 3)))], axis=3)


@given(data=st.data(), bs=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=3), noncontig=st.booleans())
def test_where_forward_and_gradient_with_broadcasting(data, bs, noncontig):
    shape_c, shape_a, shape_b = bs.input_shapes
    cond = data.draw(hnp.arrays(np.bool_, shape_c))
    a, b = data.draw(arrays(shape_a)), data.draw(arrays(shape_b))
    np.testing.assert_array_equal(F.where(cond, Tensor(a), Tensor(b)).data, np.where(cond, a, b))
    np.testing.assert_array_equal(F.where(Tensor(cond), Tensor(a), 0.5).data, np.where(cond, a, 0.5))
    check(lambda x, y: F.where(cond, x, y), a, b, noncontig=noncontig)
    check(lambda x: F.where(cond, -1.0, x), b)


def test_relu_softmax_log_softmax_wrappers():
    a = np.array([[-1.0, 0.5, 2.0]])
    np.testing.assert_array_equal(F.relu(Tensor(a)).data, np.maximum(a, 0))
    np.testing.assert_array_equal(F.softmax(Tensor(a), 1).data, Tensor(a).softmax(1).data)
    np.testing.assert_array_equal(F.log_softmax(Tensor(a)).data, Tensor(a).log_softmax(-1).data)


@given(data=st.data(), lead=shapes(min_dims=0, max_dims=2, max_side=3), d_in=st.integers(1, 3), d_out=st.integers(1, 3), bias=st.booleans())
def test_linear_forward_and_gradient(data, lead, d_in, d_out, bias):
    x = data.draw(arrays(lead + (d_in,)))
    w = data.draw(arrays((d_out, d_in)))
    b = data.draw(arrays((d_out,)))
    expected = x @ w.T + (b if bias else 0.0)
    assert_close(F.linear(Tensor(x), Tensor(w), Tensor(b) if bias else None).data, expected)
    if bias:
        check(F.linear, x, w, b)
    else:
        check(F.linear, x, w)


def test_linear_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5))))


# ----------------------------------------------------------------------------------------------
# attention: fused kernel == plain composition == NumPy


@st.composite
def qkv(draw, max_t=4):
    batch = draw(st.sampled_from([(), (1,), (2,), (2, 2)]))
    tq, tk = draw(st.integers(1, max_t)), draw(st.integers(1, max_t))
    d, dv = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    q = draw(arrays(batch + (tq, d)))
    k = draw(arrays(batch + (tk, d)))
    v = draw(arrays(batch + (tk, dv)))
    return q, k, v


@given(qkv_=qkv(), causal=st.booleans())
def test_sdpa_forward_matches_numpy_and_composition(qkv_, causal):
    q, k, v = qkv_
    expected = attention_np(q, k, v, causal)
    fused = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=causal)
    composed = F.attention_composed(Tensor(q), Tensor(k), Tensor(v), is_causal=causal)
    assert fused.shape == expected.shape == q.shape[:-1] + v.shape[-1:]
    assert_close(fused.data, expected, rtol=1e-9, atol=1e-12)
    assert_close(composed.data, expected, rtol=1e-9, atol=1e-12)


@given(qkv_=qkv(), causal=st.booleans(), scale=st.sampled_from([None, 0.3]), noncontig=st.booleans())
def test_sdpa_fused_backward_equals_composed(qkv_, causal, scale, noncontig):
    q, k, v = (transposed_copy(a) if noncontig else a for a in qkv_)
    R = np.random.default_rng(0).standard_normal(q.shape[:-1] + v.shape[-1:])
    grads = []
    for attn in (F.scaled_dot_product_attention, F.attention_composed):
        tq, tk, tv = leaf(q), leaf(k), leaf(v)
        (attn(tq, tk, tv, is_causal=causal, scale=scale) * R).sum().backward()
        grads.append((tq.grad, tk.grad, tv.grad))
    for fused_g, composed_g in zip(*grads):
        assert_close(fused_g, composed_g, rtol=1e-9, atol=1e-12)


@given(qkv_=qkv(max_t=3), causal=st.booleans())
def test_sdpa_gradient(qkv_, causal):
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), *qkv_)


def test_sdpa_causal_with_fewer_keys_than_queries_gives_zeros_for_blind_rows():
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((4, 2)), rng.standard_normal((2, 2)), rng.standard_normal((2, 3))
    tq = leaf(q)
    out = F.scaled_dot_product_attention(tq, leaf(k), leaf(v), is_causal=True)
    assert np.isfinite(out.data).all()
    np.testing.assert_array_equal(out.data[:2], 0.0)  # rows 0 and 1 see no key (j <= i - 2)
    assert_close(out.data, attention_np(q, k, v, True))
    out.sum().backward()
    assert np.isfinite(tq.grad).all()
    np.testing.assert_array_equal(tq.grad[:2], 0.0)


def test_sdpa_single_query_against_a_cache_sees_every_key():
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((1, 1, 4)), rng.standard_normal((1, 6, 4)), rng.standard_normal((1, 6, 4))
    causal = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True).data
    full = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=False).data
    assert_close(causal, full, rtol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_fused_equals_composed_beyond_one_tile(causal):
    # 70 queries and 67 keys: more than one 64-wide tile in each direction, ragged last tiles
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((2, 70, 8)), rng.standard_normal((2, 67, 8)), rng.standard_normal((2, 67, 5))
    R = rng.standard_normal((2, 70, 5))
    results = []
    for attn in (F.scaled_dot_product_attention, F.attention_composed):
        tq, tk, tv = leaf(q), leaf(k), leaf(v)
        out = attn(tq, tk, tv, is_causal=causal)
        (out * R).sum().backward()
        results.append((out.data, tq.grad, tk.grad, tv.grad))
    for fused, composed in zip(*results):
        assert_close(fused, composed, rtol=1e-9, atol=1e-11)


def test_sdpa_with_huge_scores_is_finite():
    q = np.full((1, 3, 2), 100.0)
    k = np.array([[[100.0, 100.0], [-100.0, -100.0], [100.0, 99.0]]])
    v = np.arange(6.0).reshape(1, 3, 2)
    tq = leaf(q)
    out = F.scaled_dot_product_attention(tq, leaf(k), leaf(v), is_causal=False, scale=1.0)
    out.sum().backward()
    assert np.isfinite(out.data).all() and np.isfinite(tq.grad).all()
    assert_close(out.data, attention_np(q, k, v, False, scale=1.0), rtol=1e-9)


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_dropout_drops_probabilities_and_scales_the_rest_by_one_over_one_minus_p(p, causal):
    # with v = I the output *is* the (dropped) attention matrix; N copies of one (q, k) get N
    # independent masks from one seeded rng
    rng = np.random.default_rng(8)
    N, T, D = 4000, 5, 3
    q, k = rng.standard_normal((1, T, D)), rng.standard_normal((1, T, D))
    probs = attention_np(q, k, np.eye(T)[None], causal)[0]  # (T, T), without dropout
    copies = [Tensor(np.repeat(a, N, axis=0)) for a in (q, k, np.eye(T)[None])]
    out = F.scaled_dot_product_attention(*copies, is_causal=causal, dropout_p=p, rng=np.random.default_rng(9)).data
    assert out.shape == (N, T, T) and np.isfinite(out).all()
    # every entry is either dropped (0) or the probability scaled by 1 / (1 - p)
    kept = out != 0
    assert_close(out[kept], np.broadcast_to(probs / (1 - p), out.shape)[kept], rtol=1e-12)
    live = np.broadcast_to(probs > 0, out.shape)
    dropped = 1 - kept[live].mean()
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / live.sum())
    # so the expected value is the attention without dropout: the mean over the N masks is within
    # 5 standard errors (an entry's std is probs * sqrt(p / (1 - p))) of it
    stderr = probs * np.sqrt(p / (1 - p) / N)
    assert (np.abs(out.mean(axis=0) - probs) <= 5 * stderr + 1e-15).all()
    assert (np.abs(out.mean(axis=0) * (1 - p) - probs) > 5 * stderr)[probs > 0].all()  # unscaled would fail


@pytest.mark.parametrize("causal", [False, True])
def test_attention_dropout_gradient(causal):
    rng = np.random.default_rng(10)
    q, k, v = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 2))

    def attend(q, k, v):  # a fresh rng each call: one fixed mask, as finite differences need
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=0.3, rng=np.random.default_rng(5))

    dropped_probs = attend(Tensor(q), Tensor(k), Tensor(np.repeat(np.eye(5)[None], 2, axis=0))).data  # v = I
    assert (dropped_probs == 0).any() and (dropped_probs > 0).any()  # some probabilities dropped, some kept
    check(attend, q, k, v)


def test_sdpa_shape_errors_are_named():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        F.scaled_dot_product_attention(Tensor(np.ones((2, 3, 4))), Tensor(np.ones((2, 3, 5))), Tensor(np.ones((2, 3, 4))))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 5, 4\).*\(2, 6, 4\)"):
        F.scaled_dot_product_attention(Tensor(np.ones((2, 3, 4))), Tensor(np.ones((2, 5, 4))), Tensor(np.ones((2, 6, 4))))


def test_sdpa_with_dropout_uses_the_rng_deterministically():
    rng = np.random.default_rng(6)
    q, k, v = (Tensor(rng.standard_normal((1, 4, 3))) for _ in range(3))
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, rng=np.random.default_rng(1)).data
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, rng=np.random.default_rng(1)).data
    no_drop = F.scaled_dot_product_attention(q, k, v).data
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, no_drop)


# ----------------------------------------------------------------------------------------------
# self_attention: the fused split-attend-merge of a (B, T, 3C) projection


def split_attend_merge(qkv, n_head, causal, scale=None):
    """The composed version: reshape/permute into heads, scaled_dot_product_attention, merge."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_head)
    heads = qkv.reshape(B, T, 3, n_head, D).permute(2, 0, 3, 1, 4)
    y = F.attention_composed(heads[0], heads[1], heads[2], is_causal=causal, scale=scale)
    return y.permute(0, 2, 1, 3).reshape(B, T, n_head * D)


@st.composite
def qkv_fused(draw):
    b, t, h, d = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return draw(arrays((b, t, 3 * h * d))), h


@given(qkv_h=qkv_fused(), causal=st.booleans(), scale=st.sampled_from([None, 0.7]))
def test_self_attention_equals_split_attend_merge_forward_and_backward(qkv_h, causal, scale):
    x, n_head = qkv_h
    R = np.random.default_rng(0).standard_normal((x.shape[0], x.shape[1], x.shape[2] // 3))
    results = []
    for attn in (F.self_attention, split_attend_merge):
        t = leaf(x)
        y = attn(t, n_head, causal, scale)
        (y * R).sum().backward()
        results.append((y.data, t.grad))
    (y_fused, g_fused), (y_comp, g_comp) = results
    assert y_fused.shape == (x.shape[0], x.shape[1], x.shape[2] // 3)
    assert_close(y_fused, y_comp, rtol=1e-9, atol=1e-12)
    assert_close(g_fused, g_comp, rtol=1e-9, atol=1e-12)


@given(qkv_h=qkv_fused(), causal=st.booleans())
def test_self_attention_gradient(qkv_h, causal):
    x, n_head = qkv_h
    check(lambda t: F.self_attention(t, n_head, is_causal=causal), x)


def test_self_attention_heads_do_not_mix():
    # a change in head 1's keys leaves head 0's output alone and changes head 1's
    rng = np.random.default_rng(0)
    B, T, H, D = 1, 4, 2, 3
    x = rng.standard_normal((B, T, 3 * H * D))
    y0 = F.self_attention(Tensor(x), H, is_causal=True).data
    x2 = x.copy()
    x2[:, :, H * D + D:2 * H * D] += rng.standard_normal((B, T, D))  # k of head 1
    y2 = F.self_attention(Tensor(x2), H, is_causal=True).data
    np.testing.assert_array_equal(y2[..., :D], y0[..., :D])
    assert not np.allclose(y2[..., D:], y0[..., D:])


def test_self_attention_rejects_a_width_that_does_not_split():
    with pytest.raises(ValueError, match=r"\(1, 2, 10\).*n_head=2"):
        F.self_attention(Tensor(np.ones((1, 2, 10))), 2)


# ----------------------------------------------------------------------------------------------
# mean squared error


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_values_and_gradients_to_both_sides(reduction):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    expected = {"mean": ((x - y) ** 2).mean(), "sum": ((x - y) ** 2).sum(), "none": (x - y) ** 2}[reduction]
    assert_close(F.mse_loss(Tensor(x), y, reduction=reduction).data, expected)
    check(lambda a, b: F.mse_loss(a, b, reduction=reduction), x, y)  # finite differences, both inputs


def test_mse_loss_refuses_mismatched_shapes_and_unknown_reductions():
    with pytest.raises(ValueError, match=r"\(3,\).*\(3, 1\)"):
        F.mse_loss(Tensor(np.zeros((3, 1))), np.zeros(3))
    with pytest.raises(ValueError, match="'avg'"):
        F.mse_loss(Tensor(np.zeros(3)), np.zeros(3), reduction="avg")
