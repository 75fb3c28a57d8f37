"""Gradients of every elementary operation (tinyllm/ops.py, through Tensor's operators and methods)
against central finite differences with ``tinyllm.gradcheck``, in float64, on shapes and values
drawn by hypothesis: each op alone, with broadcast operands, with Python scalars and ndarrays on
either side, with non-contiguous (transposed) inputs, and composed into small graphs.

Values are kept away from kinks and singularities by construction (see conftest.py); the
conventions at the kinks themselves are pinned in test_tensor.py.
"""
import operator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinyllm
from conftest import arrays, away_from_zero, broadcast_pairs, distinct, floats, shapes
from tinyllm.tensor import Tensor


def leaf(a):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def transposed_copy(a):
    """The same values as ``a`` in a non-contiguous layout (a transposed view of a C array)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.ascontiguousarray(a.T).T
    assert a.ndim < 2 or 1 in a.shape or not out.flags.c_contiguous
    return out


def check(fn, *arrays_, noncontig=False):
    """gradcheck ``fn`` w.r.t. every array (all become float64 leaves requiring grad)."""
    prep = transposed_copy if noncontig else np.asarray
    inputs = tuple(leaf(prep(a)) for a in arrays_)
    if noncontig:
        assert all(x.data.ndim < 2 or 1 in x.shape or not x.data.flags.c_contiguous for x in inputs)
    assert tinyllm.gradcheck(fn, inputs)


# ----------------------------------------------------------------------------------------------
# arithmetic with broadcasting

ARITH = [operator.add, operator.sub, operator.mul, operator.truediv]
ARITH_IDS = ["add", "sub", "mul", "div"]


@pytest.mark.parametrize("op", ARITH, ids=ARITH_IDS)
@given(data=st.data(), shape_pair=broadcast_pairs(), noncontig=st.booleans())
def test_binary_op_gradients_broadcast_both_sides(op, data, shape_pair, noncontig):
    shape_a, shape_b = shape_pair
    a = data.draw(arrays(shape_a))
    b = data.draw(away_from_zero(shape_b))
    check(op, a, b, noncontig=noncontig)


@pytest.mark.parametrize("op", ARITH + [operator.pow], ids=ARITH_IDS + ["pow"])
@given(data=st.data(), shape=shapes(min_dims=0), scalar=floats(0.5, 2.0))
def test_binary_op_gradients_with_python_scalar_either_side(op, data, shape, scalar):
    a = data.draw(away_from_zero(shape, positive=op is operator.pow))
    check(lambda x: op(x, scalar), a)
    check(lambda x: op(scalar, x), a)


@pytest.mark.parametrize("op", ARITH + [operator.pow], ids=ARITH_IDS + ["pow"])
@given(data=st.data(), shape_pair=broadcast_pairs())
def test_binary_op_gradients_with_ndarray_either_side(op, data, shape_pair):
    shape_a, shape_b = shape_pair
    a = data.draw(away_from_zero(shape_a, positive=True))
    const = data.draw(away_from_zero(shape_b, positive=True))
    check(lambda x: op(x, const), a)  # the ndarray is a constant: no gradient, but it broadcasts
    check(lambda x: op(const, x), a)


@given(data=st.data(), shape_pair=broadcast_pairs(), noncontig=st.booleans())
def test_pow_gradient_in_base_and_exponent(data, shape_pair, noncontig):
    shape_a, shape_b = shape_pair
    base = data.draw(away_from_zero(shape_a, 0.3, 2.0, positive=True))
    exponent = data.draw(arrays(shape_b, -2.0, 2.0))
    check(operator.pow, base, exponent, noncontig=noncontig)


@pytest.mark.parametrize("exponent", [2, 3, -1, 0.5, 1.5])
@given(data=st.data(), shape=shapes())
def test_pow_gradient_with_constant_exponent(exponent, data, shape):
    positive = isinstance(exponent, float)
    a = data.draw(away_from_zero(shape, positive=positive))
    check(lambda x: x**exponent, a)


@given(data=st.data(), shape=shapes(min_dims=0), noncontig=st.booleans())
def test_neg_gradient(data, shape, noncontig):
    check(operator.neg, data.draw(arrays(shape)), noncontig=noncontig)


@st.composite
def matmul_operands(draw):
    """Two arrays for ``@``: 1-D or 2-D, or batched with batch axes that broadcast."""
    m, k, n = (draw(st.integers(1, 3)) for _ in range(3))
    kind = draw(st.sampled_from(["mm", "batched", "vec_left", "vec_right", "vec_vec", "vec_batched"]))
    batch_a, batch_b = draw(broadcast_pairs(min_dims=1, max_dims=2, max_side=2))
    shape_a, shape_b = {
        "mm": ((m, k), (k, n)),
        "batched": (batch_a + (m, k), batch_b + (k, n)),
        "vec_left": ((k,), (k, n)),
        "vec_right": ((m, k), (k,)),
        "vec_vec": ((k,), (k,)),
        "vec_batched": ((k,), batch_b + (k, n)),
    }[kind]
    return draw(arrays(shape_a)), draw(arrays(shape_b))


@given(ab=matmul_operands(), noncontig=st.booleans())
def test_matmul_gradient(ab, noncontig):
    a, b = ab
    check(operator.matmul, a, b, noncontig=noncontig)


@given(data=st.data(), m=st.integers(1, 3), k=st.integers(1, 3))
def test_matmul_gradient_with_ndarray_either_side(data, m, k):
    a = data.draw(arrays((m, k)))
    const = data.draw(arrays((k, m)))
    check(lambda x: x @ const, a)
    check(lambda x: const @ x, a)


# ----------------------------------------------------------------------------------------------
# element-wise maps


@pytest.mark.parametrize(
    "name, domain",
    [("exp", "any"), ("tanh", "any"), ("log", "positive"), ("sqrt", "positive"), ("relu", "nonzero")],
)
@given(data=st.data(), shape=shapes(min_dims=0), noncontig=st.booleans())
def test_elementwise_gradient(name, domain, data, shape, noncontig):
    if domain == "any":
        a = data.draw(arrays(shape))
    else:
        a = data.draw(away_from_zero(shape, positive=domain == "positive"))
    check(lambda x: getattr(x, name)(), a, noncontig=noncontig)


# ----------------------------------------------------------------------------------------------
# reductions


@st.composite
def shape_and_axis(draw, min_dims=1, max_dims=3):
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims))
    nd = len(shape)
    axes = draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True))
    signed = tuple(a - nd if draw(st.booleans()) else a for a in axes)
    axis = draw(st.sampled_from([None, signed[0], signed]))
    return shape, axis


@pytest.mark.parametrize("method", ["sum", "mean", "max"])
@given(data=st.data(), sa=shape_and_axis(), keepdims=st.booleans(), noncontig=st.booleans())
def test_reduction_gradient(method, data, sa, keepdims, noncontig):
    shape, axis = sa
    a = data.draw(distinct(shape))  # tie-free, so max has a unique argmax everywhere
    check(lambda x: getattr(x, method)(axis=axis, keepdims=keepdims), a, noncontig=noncontig)


@pytest.mark.parametrize("method", ["softmax", "log_softmax"])
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3), axis_seed=st.integers(0, 5), noncontig=st.booleans())
def test_softmax_gradient(method, data, shape, axis_seed, noncontig):
    axis = axis_seed % len(shape) - (len(shape) if axis_seed >= 3 else 0)
    a = data.draw(arrays(shape, -4.0, 4.0))
    check(lambda x: getattr(x, method)(axis=axis), a, noncontig=noncontig)


@pytest.mark.parametrize("method", ["softmax", "log_softmax"])
def test_softmax_gradient_with_huge_logits(method):
    a = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4 + 0.5, -1e4 + 1.0, -1e4]])
    x = leaf(a)
    R = np.random.default_rng(0).standard_normal(a.shape)
    (getattr(x, method)(axis=-1) * R).sum().backward()
    assert np.isfinite(x.grad).all(), x.grad
    # closed form: softmax: y * (R - sum(R y)); log_softmax: R - y * sum(R)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    if method == "softmax":
        expected = y * (R - (R * y).sum(axis=-1, keepdims=True))
    else:
        expected = R - y * R.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-10, atol=1e-12)
    assert tinyllm.gradcheck(lambda t: getattr(t, method)(axis=-1), (leaf(a),))


# ----------------------------------------------------------------------------------------------
# shapes and indexing


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=4), noncontig=st.booleans())
def test_reshape_gradient(data, shape, noncontig):
    a = data.draw(arrays(shape))
    new_shape = data.draw(st.sampled_from([(-1,), (1, a.size), (a.size, 1), tuple(reversed(shape))]))
    check(lambda x: x.reshape(new_shape), a, noncontig=noncontig)
    check(lambda x: x.reshape(*new_shape).reshape(shape), a, noncontig=noncontig)


@given(data=st.data(), shape=shapes(min_dims=2, max_dims=4), noncontig=st.booleans())
def test_transpose_permute_and_T_gradient(data, shape, noncontig):
    a = data.draw(arrays(shape))
    perm = tuple(data.draw(st.permutations(range(a.ndim))))
    check(lambda x: x.T, a, noncontig=noncontig)
    check(lambda x: x.transpose(0, -1), a, noncontig=noncontig)
    check(lambda x: x.permute(perm), a, noncontig=noncontig)


@st.composite
def shape_and_index(draw):
    """A shape and an index for it: ints (negative too), slices with steps, None, Ellipsis,
    integer arrays (with repeats), mixed."""
    shape = draw(shapes(min_dims=1, max_dims=3))
    n0 = shape[0]
    i = draw(st.integers(-n0, n0 - 1))
    start, stop = draw(st.integers(-n0, n0)), draw(st.integers(-n0, n0))
    step = draw(st.sampled_from([1, 2, -1]))
    ids = np.array(draw(st.lists(st.integers(-n0, n0 - 1), min_size=1, max_size=5)))
    candidates = [i, slice(start, stop, step), (None, Ellipsis), ids, ids.reshape(-1, 1), (Ellipsis, slice(None, None, -1))]
    if len(shape) >= 2:
        n1 = shape[1]
        ids1 = np.array(draw(st.lists(st.integers(0, n1 - 1), min_size=len(ids), max_size=len(ids))))
        candidates += [(i, slice(None, None, 2)), (ids, ids1), (slice(None), ids1), (ids, 0)]
    return shape, draw(st.sampled_from(candidates))


@given(data=st.data(), si=shape_and_index(), noncontig=st.booleans())
def test_getitem_gradient(data, si, noncontig):
    shape, index = si
    a = data.draw(arrays(shape))
    check(lambda x: x[index], a, noncontig=noncontig)


@given(data=st.data(), n=st.integers(1, 4), repeats=st.lists(st.integers(0, 3), min_size=2, max_size=8))
def test_getitem_gradient_with_repeated_indices(data, n, repeats):
    ids = np.array([r % n for r in repeats])
    a = data.draw(arrays((n, 2)))
    check(lambda x: x[ids], a)
    x = leaf(a)
    x[ids].sum().backward()
    np.testing.assert_array_equal(x.grad[:, 0], np.bincount(ids, minlength=n))  # every repeat counted


# ----------------------------------------------------------------------------------------------
# composed graphs


@given(data=st.data(), b=st.integers(1, 3), d_in=st.integers(1, 3), d_out=st.integers(2, 3), noncontig=st.booleans())
def test_composed_mlp_with_log_softmax(data, b, d_in, d_out, noncontig):
    x = data.draw(arrays((b, d_in)))
    w = data.draw(arrays((d_in, d_out)))
    bias = data.draw(arrays((d_out,)))

    def mlp(x, w, bias):
        h = (x @ w + bias).tanh()  # bias broadcasts over the batch
        return h.log_softmax(axis=-1).mean(axis=0)

    check(mlp, x, w, bias, noncontig=noncontig)


@given(data=st.data(), shape=shapes(min_dims=2, max_dims=3, min_side=2), noncontig=st.booleans())
def test_composed_layer_norm_from_elementary_ops(data, shape, noncontig):
    a = data.draw(distinct(shape, spread=0.5))  # distinct: the variance is bounded away from 0
    gamma = data.draw(arrays(shape[-1:]))

    def layer_norm(x, gamma):
        mu = x.mean(axis=-1, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(axis=-1, keepdims=True)
        return xc / (var + 1e-5).sqrt() * gamma

    check(layer_norm, a, gamma, noncontig=noncontig)


@given(data=st.data(), t=st.integers(1, 3), d=st.integers(1, 3))
def test_composed_attention_from_elementary_ops(data, t, d):
    q, k, v = (data.draw(arrays((2, t, d))) for _ in range(3))

    def attention(q, k, v):
        scores = (q @ k.transpose(-2, -1)) * (1.0 / np.sqrt(d))
        return scores.softmax(axis=-1) @ v

    check(attention, q, k, v)


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=2))
def test_composed_graph_reusing_tensors(data, shape):
    a = data.draw(away_from_zero(shape, positive=True))
    b = data.draw(arrays(shape))

    def f(x, y):
        h = x.log() * y  # h and x are each used several times
        return (h * h + x.sqrt() * h - y.exp() / x + (x ** y).relu()).sum(axis=-1) * h.mean()  # x**y > 0: no kink

    check(f, a, b)


@given(data=st.data(), shape=shapes(min_dims=2, max_dims=2, min_side=2))
def test_composed_graph_with_indexing_and_reductions(data, shape):
    a = data.draw(distinct(shape))

    def f(x):
        top = x.max(axis=0, keepdims=True)  # (1, n)
        picked = x[np.array([0, -1, 0])]  # rows picked with a repeat
        return (picked - top).exp().sum(axis=-1) + x.T[:, 1:].mean()

    check(f, a)
