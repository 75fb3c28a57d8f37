"""Tensor and the autograd engine: construction and dtypes, forward values of every operator
against NumPy, the conventions at kinks, the backward engine, no_grad, and the error messages.

Gradients of the individual operations are checked by finite differences in test_ops_gradcheck.py.
"""
import gc
import operator
import re
import sys
import threading
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import importlib

import tinyllm
from conftest import arrays, away_from_zero, broadcast_pairs, floats, shapes
from tinyllm.tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, unbroadcast

_accumulate = importlib.import_module("tinyllm.kernels.accumulate")  # the reference-count check of backward()


def t64(a, requires_grad=False):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


# ----------------------------------------------------------------------------------------------
# construction and dtype rules


def test_float_python_list_becomes_float32():
    assert Tensor([1.0, 2.5]).dtype == np.float32
    assert Tensor(1.5).dtype == np.float32
    assert Tensor([[1.0], [2.0]]).shape == (2, 1)


def test_float64_ndarray_is_kept():
    x = np.arange(3.0)
    assert Tensor(x).dtype == np.float64
    assert Tensor(x.astype(np.float32)).dtype == np.float32


def test_float16_computes_in_float32():
    assert Tensor(np.ones(2, np.float16)).dtype == np.float32


def test_explicit_dtype_wins():
    assert Tensor([1.0, 2.0], dtype=np.float64).dtype == np.float64


def test_integer_data_stays_integer():
    t = Tensor(np.array([1, 2, 3]))
    assert t.dtype == np.int64
    assert Tensor([1, 2]).dtype.kind == "i"


@pytest.mark.parametrize("scalar", [0.5, 2, -3.25, True])
def test_float32_tensor_with_python_scalar_stays_float32(scalar):
    x = Tensor(np.ones(3, np.float32))
    for op in (operator.add, operator.sub, operator.mul, operator.truediv):
        assert op(x, scalar).dtype == np.float32, op
        assert op(scalar, x).dtype == np.float32, op
    assert (x**2).dtype == np.float32
    assert (x**0.5).dtype == np.float32


def test_float32_tensor_with_float64_ndarray_promotes_like_numpy():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = x * np.full(3, 2.0)
    assert y.dtype == np.result_type(np.float32, np.float64)
    y.sum().backward()
    assert x.grad.dtype == np.float32  # the gradient has its input's dtype
    np.testing.assert_array_equal(x.grad, 2.0)


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.array([1, 2]), requires_grad=True)
    t = Tensor(np.array([1, 2]))
    with pytest.raises(TypeError, match="float"):
        t.requires_grad_()
    assert not t.requires_grad


@pytest.mark.parametrize(
    "data, dtype_name",
    [(["a", "b"], "<U1"), ([1.0, None], "object"), (np.array([1 + 2j]), "complex128")],
)
def test_non_numeric_data_names_its_dtype(data, dtype_name):
    with pytest.raises(TypeError, match=re.escape(dtype_name)):
        Tensor(data)


def test_tensor_factory_and_array_attributes():
    t = tinyllm.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    assert isinstance(t, Tensor) and t.requires_grad and t.is_leaf
    assert (t.shape, t.ndim, t.size, len(t)) == ((1, 3), 2, 3, 1)
    assert t.numpy() is t.data
    assert Tensor([4.0]).item() == 4.0
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        t.item()


def test_astype_is_differentiable_and_casts_the_gradient_back():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = x.double()
    assert y.dtype == np.float64
    (y * t64([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------------------------
# forward values against NumPy (hypothesis)

BINARY = [
    (operator.add, np.add),
    (operator.sub, np.subtract),
    (operator.mul, np.multiply),
    (operator.truediv, np.divide),
]


@pytest.mark.parametrize("op, np_op", BINARY, ids=["add", "sub", "mul", "div"])
@given(data=st.data(), shape_pair=broadcast_pairs())
def test_binary_ops_broadcast_like_numpy(op, np_op, data, shape_pair):
    shape_a, shape_b = shape_pair
    a = data.draw(arrays(shape_a))
    b = data.draw(away_from_zero(shape_b))  # also a safe divisor
    expected = np_op(a, b)
    for left, right in [(t64(a), t64(b)), (t64(a), b), (a, t64(b))]:  # Tensor or ndarray on either side
        out = op(left, right)
        assert isinstance(out, Tensor)
        assert out.shape == expected.shape
        np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("op, np_op", BINARY, ids=["add", "sub", "mul", "div"])
@given(data=st.data(), shape=shapes(min_dims=0))
def test_binary_ops_with_python_scalars_on_either_side(op, np_op, data, shape):
    a = data.draw(away_from_zero(shape))
    s = data.draw(floats(0.5, 3.0))
    np.testing.assert_allclose(op(t64(a), s).data, np_op(a, s), rtol=1e-12)
    np.testing.assert_allclose(op(s, t64(a)).data, np_op(s, a), rtol=1e-12)


@given(data=st.data(), shape_pair=broadcast_pairs())
def test_pow_broadcasts_like_numpy(data, shape_pair):
    shape_a, shape_b = shape_pair
    a = data.draw(away_from_zero(shape_a, positive=True))
    b = data.draw(arrays(shape_b, -2.0, 2.0))
    expected = a**b
    for left, right in [(t64(a), t64(b)), (t64(a), b), (a, t64(b))]:
        np.testing.assert_allclose((left**right).data, expected, rtol=1e-12)
    np.testing.assert_allclose((t64(a) ** 3).data, a**3, rtol=1e-12)
    np.testing.assert_allclose((2.0 ** t64(b)).data, 2.0**b, rtol=1e-12)


@given(data=st.data())
def test_matmul_matches_numpy_including_1d_and_batched(data):
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    batch = data.draw(st.sampled_from([(), (3,), (2, 1)]))
    batch_b = data.draw(st.sampled_from([(), (1,), (3,)]))
    a = data.draw(arrays(batch + (m, k)))
    b = data.draw(arrays(batch_b + (k, n)))
    v = data.draw(arrays((k,)))
    for left, right in [(a, b), (a, v), (v, b), (v, v)]:
        expected = np.matmul(left, right)
        for l_, r_ in [(t64(left), t64(right)), (left, t64(right)), (t64(left), right)]:
            out = l_ @ r_
            assert out.shape == expected.shape
            np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)


@given(data=st.data(), shape=shapes(min_dims=0))
def test_unary_elementwise_match_numpy(data, shape):
    a = data.draw(arrays(shape))
    pos = data.draw(away_from_zero(shape, positive=True))
    x = t64(a)
    np.testing.assert_array_equal((-x).data, -a)
    np.testing.assert_allclose(x.exp().data, np.exp(a), rtol=1e-12)
    np.testing.assert_allclose(x.tanh().data, np.tanh(a), rtol=1e-12)
    np.testing.assert_array_equal(x.relu().data, np.maximum(a, 0))
    np.testing.assert_allclose(t64(pos).log().data, np.log(pos), rtol=1e-12)
    np.testing.assert_allclose(t64(pos).sqrt().data, np.sqrt(pos), rtol=1e-12)


@st.composite
def shape_and_axis(draw, min_dims=1, max_dims=4):
    """A shape and an axis argument for it: None, an int or a tuple, possibly negative."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims))
    nd = len(shape)
    axes = draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True))
    signed = [a - nd if draw(st.booleans()) else a for a in axes]  # negative spellings too
    axis = draw(st.sampled_from([None, signed[0], tuple(signed)]))
    return shape, axis


@given(data=st.data(), sa=shape_and_axis(), keepdims=st.booleans())
def test_reductions_match_numpy(data, sa, keepdims):
    shape, axis = sa
    a = data.draw(arrays(shape))
    x = t64(a)
    for method in ("sum", "mean", "max"):
        out = getattr(x, method)(axis=axis, keepdims=keepdims)
        expected = getattr(np, method)(a, axis=axis, keepdims=keepdims)
        assert out.shape == np.shape(expected), method
        np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12, err_msg=method)


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3), axis_choice=st.integers(0, 5))
def test_softmax_and_log_softmax_match_numpy(data, shape, axis_choice):
    axis = axis_choice % len(shape) - (len(shape) if axis_choice % 2 else 0)  # negative sometimes
    a = data.draw(arrays(shape, -5, 5))
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    expected = e / e.sum(axis=axis, keepdims=True)
    sm = t64(a).softmax(axis=axis).data
    lsm = t64(a).log_softmax(axis=axis).data
    assert np.isfinite(sm).all() and np.isfinite(lsm).all()
    np.testing.assert_allclose(sm, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(lsm, np.log(expected), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sm.sum(axis=axis), 1.0, rtol=1e-12)


@pytest.mark.parametrize("method", ["softmax", "log_softmax"])
def test_softmax_is_finite_for_huge_logits(method):
    a = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]])
    for dtype in (np.float32, np.float64):
        out = getattr(Tensor(a.astype(dtype)), method)(axis=-1).data
        assert np.isfinite(out).all(), out
    sm = Tensor(a).softmax(-1).data
    np.testing.assert_allclose(sm, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]], atol=1e-12)
    lsm = Tensor(a).log_softmax(-1).data
    np.testing.assert_allclose(lsm, [[0, -2e4, -1e4], [-np.log(3)] * 3, [-np.log(2), -np.log(2), -2e4 - np.log(2)]], rtol=1e-12)


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=4))
def test_reshape_transpose_and_T_match_numpy(data, shape):
    a = data.draw(arrays(shape))
    x = t64(a)
    np.testing.assert_array_equal(x.reshape(-1).data, a.reshape(-1))
    np.testing.assert_array_equal(x.reshape(a.size, 1).data, a.reshape(a.size, 1))
    np.testing.assert_array_equal(x.reshape((1,) + shape).data, a.reshape((1,) + shape))
    np.testing.assert_array_equal(x.T.data, a.T)
    np.testing.assert_array_equal(x.transpose().data, a.transpose())
    if a.ndim != 2:  # a full permutation, as in NumPy (two axes mean a swap, below)
        perm = tuple(data.draw(st.permutations(range(a.ndim))))
        np.testing.assert_array_equal(x.transpose(perm).data, a.transpose(perm))
        np.testing.assert_array_equal(x.transpose(*perm).data, a.transpose(perm))
        np.testing.assert_array_equal(x.permute(*perm).data, a.transpose(perm))
    if a.ndim >= 2:  # two axes: swap them, as torch.transpose(x, i, j), also on a 2-D tensor
        np.testing.assert_array_equal(x.transpose(0, -1).data, np.swapaxes(a, 0, -1))
        np.testing.assert_array_equal(x.transpose(-1, 0).data, np.swapaxes(a, 0, -1))


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3))
def test_getitem_matches_numpy(data, shape):
    a = data.draw(arrays(shape))
    x = t64(a)
    i = data.draw(st.integers(-shape[0], shape[0] - 1))
    start = data.draw(st.integers(0, shape[0]))
    step = data.draw(st.integers(1, 2))
    ids = np.array(data.draw(st.lists(st.integers(-shape[0], shape[0] - 1), min_size=1, max_size=6)))
    for index in [i, slice(start, None, step), slice(None, None, -1), (Ellipsis, 0), (None, slice(None)), ids, [0, 0], (ids, Ellipsis)]:
        np.testing.assert_array_equal(x[index].data, a[index], err_msg=repr(index))
    np.testing.assert_array_equal(x[Tensor(ids)].data, a[ids])


# ----------------------------------------------------------------------------------------------
# conventions at kinks and ties (fixed values)


def test_relu_gradient_at_zero_is_zero():
    x = t64([-1.0, 0.0, 2.0], requires_grad=True)
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])


def test_max_ties_split_the_gradient_evenly():
    x = t64([1.0, 3.0, 3.0], requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.5, 0.5])


def test_max_ties_split_per_row_with_axis_and_keepdims():
    x = t64([[2.0, 2.0, 2.0], [5.0, 1.0, 5.0], [0.0, 9.0, 1.0]], requires_grad=True)
    (x.max(axis=1, keepdims=True) * t64([[3.0], [2.0], [1.0]])).sum().backward()
    np.testing.assert_allclose(x.grad, [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def test_max_gradient_goes_to_the_argmax():
    x = t64([[1.0, 7.0], [4.0, -2.0]], requires_grad=True)
    x.max(axis=0).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 1.0], [1.0, 0.0]])


def test_repeated_integer_index_accumulates_gradient():
    x = t64([10.0, 20.0, 30.0, 40.0], requires_grad=True)
    (x[np.array([0, 2, 0, 0, -1])] * t64([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    np.testing.assert_array_equal(x.grad, [8.0, 0.0, 2.0, 5.0])


def test_repeated_index_pairs_accumulate_gradient_in_2d():
    x = t64(np.zeros((2, 3)), requires_grad=True)
    x[np.array([1, 1, 0]), np.array([2, 2, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])


# ----------------------------------------------------------------------------------------------
# the backward engine


def test_tensor_used_twice_gets_both_contributions():
    x = t64([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x + x  # d/dx = 2x + 1
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 5.0, 7.0])


def test_diamond_graph_with_shared_intermediate():
    x = t64([0.5, -1.0], requires_grad=True)
    h = x.exp()
    y = (h * 2.0 + h.tanh()) * h  # h is used by three ops
    y.sum().backward()
    e = np.exp(x.data)
    dy_dh = 4 * e + np.tanh(e) + e * (1 - np.tanh(e) ** 2)
    np.testing.assert_allclose(x.grad, dy_dh * e, rtol=1e-12)


def test_backward_twice_with_retain_graph_accumulates():
    x = t64([1.0, -2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad, [2.0, -4.0])
    loss.backward()
    np.testing.assert_array_equal(x.grad, [4.0, -8.0])


def test_backward_twice_without_retain_graph_raises():
    x = t64([1.0, -2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
    np.testing.assert_array_equal(x.grad, [2.0, -4.0])  # the failed call added nothing


def test_backward_through_a_freed_intermediate_raises():
    x = t64([1.0, 2.0], requires_grad=True)
    h = x * 3.0
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2.0).sum().backward()


def test_two_forward_backward_passes_accumulate_and_zero_grad_resets():
    x = t64([1.0, 2.0], requires_grad=True)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 7.0])
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_leaf_grad_is_a_private_writable_copy():
    x = t64([1.0, 2.0], requires_grad=True)
    x.sum().backward()  # Sum.backward hands out a read-only broadcast view
    x.grad *= 0.5  # an optimiser scaling the gradient in place must work ...
    (x * 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [1.5, 1.5])


def test_gradients_of_0d_tensors_are_ndarrays():
    x = t64(2.0, requires_grad=True)
    (x * x).backward()
    assert isinstance(x.grad, np.ndarray) and x.grad.shape == ()
    assert x.grad == 4.0


def test_backward_with_explicit_grad():
    x = t64([1.0, 2.0, 3.0], requires_grad=True)
    (x * 2.0).backward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, -2.0])
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        (x * 2.0).backward(np.ones(2))


def test_backward_on_non_scalar_without_grad_says_scalar():
    x = t64(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        (x * 2.0).backward()


def test_backward_on_tensor_without_graph_raises():
    with pytest.raises(RuntimeError, match="requires_grad"):
        t64([1.0]).sum().backward()


def test_ten_thousand_op_chain_does_not_hit_the_recursion_limit():
    assert sys.getrecursionlimit() < 10_000 * 2  # otherwise the test proves nothing
    x = t64(1.0, requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad, 1.0001**10_000, rtol=1e-9)
    y = x
    for _ in range(10_000):
        y = y + x  # 10,000 uses of one leaf as well
    y.backward()
    np.testing.assert_allclose(x.grad, 1.0001**10_000 + 10_001, rtol=1e-9)


def test_graph_is_freed_after_backward():
    x = t64([1.0, 2.0], requires_grad=True)
    h = x.exp()
    y = h * x
    loss = y.sum()
    ctxs = [h._ctx, y._ctx, loss._ctx]
    assert all(c.parents is not None for c in ctxs)
    assert h._ctx.saved_tensors is not None
    loss.backward()
    for c in ctxs:
        assert c.parents is None
    assert h._ctx.saved_tensors is None and y._ctx.saved_tensors is None


def test_intermediate_tensors_are_released_after_backward():
    x = t64(np.ones(4), requires_grad=True)
    h = x.exp()
    ref = weakref.ref(h)
    loss = (h * 2.0).sum()
    del h
    gc.collect()
    assert ref() is not None  # the graph keeps it alive for backward ...
    loss.backward()
    gc.collect()
    assert ref() is None  # ... and lets go of it afterwards


def test_retain_graph_keeps_the_graph():
    x = t64([1.0, 2.0], requires_grad=True)
    h = x.exp()
    loss = h.sum()
    loss.backward(retain_graph=True)
    assert h._ctx.parents is not None and h._ctx.saved_tensors is not None


def test_only_leaves_get_grad_and_non_grad_inputs_are_untouched():
    x = t64([1.0, 2.0], requires_grad=True)
    c = t64([3.0, 4.0])
    h = x * c
    h.sum().backward()
    assert h.grad is None and c.grad is None
    assert not h.is_leaf and x.is_leaf
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_detach_cuts_the_graph_and_shares_data():
    x = t64([1.0, 2.0], requires_grad=True)
    h = x * 2.0
    d = h.detach()
    assert not d.requires_grad and d.is_leaf and d.data is h.data
    (h * d).sum().backward()  # d is a constant: d/dx (2x * 2x_const) = 2 * d
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])


def test_results_require_grad_only_if_an_input_does():
    a, b = t64([1.0]), t64([2.0], requires_grad=True)
    assert not (a * 2.0).requires_grad and (a * 2.0)._ctx is None
    assert (a * b).requires_grad


def test_every_backward_edge_checks_the_shape():
    class BadShape(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g.sum(axis=0)  # wrong shape

    x = t64(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(AssertionError, match=r"\(3,\).*\(2, 3\)"):
        BadShape.apply(x).sum().backward()


# ----------------------------------------------------------------------------------------------
# no_grad


def test_no_grad_stops_recording_and_restores():
    x = t64([1.0], requires_grad=True)
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2.0
    assert is_grad_enabled()
    assert not y.requires_grad and y._ctx is None


def test_no_grad_is_reentrant_when_nested():
    with no_grad():
        with no_grad():
            assert not is_grad_enabled()
        assert not is_grad_enabled()  # the inner exit restores "off", not "on"
        with enable_grad():
            assert is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_same_no_grad_object_can_be_nested():
    ng = no_grad()
    with ng:
        with ng:
            assert not is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_no_grad_restores_after_an_exception():
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("boom")
    assert is_grad_enabled()
    with no_grad():
        with pytest.raises(KeyError):
            with enable_grad():
                raise KeyError("boom")
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_no_grad_as_decorator():
    x = t64([1.0], requires_grad=True)

    @no_grad()
    def double(t):
        """docstring kept"""
        assert not is_grad_enabled()
        return t * 2.0

    y = double(x)
    assert not y.requires_grad
    assert is_grad_enabled()
    assert double.__doc__ == "docstring kept"

    @no_grad()
    def fails():
        raise ValueError("x")

    with pytest.raises(ValueError):
        fails()
    assert is_grad_enabled()


def run_in_threads(*steps_per_thread, timeout=30):
    """Run each list of callables in its own thread; return their results (one list per thread),
    re-raising the first exception. The callables order themselves with Events."""
    results = [[] for _ in steps_per_thread]
    errors = []

    def work(steps, out):
        try:
            for step in steps:
                out.append(step())
        except BaseException as exc:  # reported in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(steps, out)) for steps, out in zip(steps_per_thread, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (an Event was never set)"
    if errors:
        raise errors[0]
    return results


def wait(event):
    assert event.wait(10), "the other thread never got there"


def test_no_grad_in_one_thread_leaves_recording_on_in_another():
    # thread A sits inside no_grad() while thread B builds a graph and runs backward; then A,
    # still inside, checks that B's activity did not turn its own recording back on
    x = t64([1.0, 2.0], requires_grad=True)
    a_inside, b_done = threading.Event(), threading.Event()
    ng = no_grad()

    def a_steps():
        with ng:
            a_inside.set()
            wait(b_done)
            inside = is_grad_enabled(), (x * 3.0).requires_grad
        return inside, is_grad_enabled()

    def b_steps():
        try:
            wait(a_inside)
            y = (x * x).sum()
            enabled, recorded = is_grad_enabled(), y.requires_grad
            if recorded:
                y.backward()
            return enabled, recorded
        finally:
            b_done.set()

    ((a_state, a_after),), (b_state,) = run_in_threads([a_steps], [b_steps])
    assert b_state == (True, True)  # B recorded although A was inside no_grad
    assert a_state == (False, False)  # and A still is not recording after B's backward
    assert a_after is True
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_a_new_thread_starts_with_grad_enabled_even_inside_no_grad():
    x = t64([1.0], requires_grad=True)
    with no_grad():
        ((result,),) = run_in_threads([lambda: (is_grad_enabled(), (x * 2.0).requires_grad)])
        assert not is_grad_enabled()
    assert result == (True, True)


def test_one_no_grad_object_entered_by_two_threads_restores_each_threads_own_state():
    # B is already inside an outer no_grad (off) when both threads enter the shared ng; B leaves
    # ng first and must be back to *its* state (off), A afterwards to its own (on)
    ng = no_grad()
    b_inside, a_inside, b_left = threading.Event(), threading.Event(), threading.Event()

    def a_steps():
        wait(b_inside)
        ng.__enter__()
        a_inside.set()
        wait(b_left)
        ng.__exit__(None, None, None)
        return is_grad_enabled()

    def b_steps():
        with no_grad():
            ng.__enter__()
            b_inside.set()
            wait(a_inside)
            ng.__exit__(None, None, None)
            state = is_grad_enabled()
        b_left.set()
        return state, is_grad_enabled()

    (a_after,), ((b_after_ng, b_after_all),) = run_in_threads([a_steps], [b_steps])
    assert b_after_ng is False and b_after_all is True
    assert a_after is True


# ----------------------------------------------------------------------------------------------
# unbroadcast


@given(data=st.data(), shape_pair=broadcast_pairs())
def test_unbroadcast_sums_back_to_the_input_shape(data, shape_pair):
    shape, other = shape_pair
    full = np.broadcast_shapes(shape, other)
    g = data.draw(arrays(full))
    got = unbroadcast(g, shape)
    assert got.shape == shape
    # reference: the gradient of sum(broadcast_to(a, full) * g) w.r.t. a, element by element
    expected = np.zeros(shape)
    for idx in np.ndindex(*full):
        src = tuple(i if n != 1 else 0 for i, n in zip(idx[len(full) - len(shape):], shape))
        expected[src] += g[idx]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_unbroadcast_fixed_values():
    g = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)), g.sum(axis=(0, 2))[:, None])
    np.testing.assert_array_equal(unbroadcast(g, ()), g.sum())
    np.testing.assert_array_equal(unbroadcast(g, (1, 1, 4)), g.sum(axis=(0, 1), keepdims=True))
    assert unbroadcast(g, (2, 3, 4)) is g


# ----------------------------------------------------------------------------------------------
# errors raised early, with the offending values


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=re.escape("(4, 3) and (5, 2)")):
        Tensor(np.ones((4, 3))) @ Tensor(np.ones((5, 2)))
    with pytest.raises(ValueError, match=re.escape("(3,) and (2,)")):
        Tensor(np.ones(3)) @ Tensor(np.ones(2))
    with pytest.raises(ValueError, match=re.escape("(2, 4) and (3,)")):
        Tensor(np.ones((2, 4))) @ np.ones(3)


@pytest.mark.parametrize("index", [5, -6, (0, 3), np.array([0, 7]), (slice(None), np.array([-4]))])
def test_index_out_of_range_names_index_and_shape(index):
    x = Tensor(np.ones((5, 3)))
    with pytest.raises(IndexError, match=re.escape("(5, 3)")):
        x[index]


@pytest.mark.parametrize("method", ["sum", "mean", "max", "softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [2, -3])
def test_bad_axis_is_named(method, axis):
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=rf"axis {axis}.*2 dimensions"):
        getattr(x, method)(axis=axis)


def test_repeated_axis_is_rejected():
    with pytest.raises(ValueError, match="repeats"):
        Tensor(np.ones((2, 3))).sum(axis=(1, -1))


def test_bad_transpose_and_reshape_are_named():
    x = Tensor(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"\(0, 0, 1\).*repeats"):
        x.transpose(0, 0, 1)
    with pytest.raises(ValueError, match=r"\(1,\).*permutation"):
        x.transpose(1)
    with pytest.raises(ValueError, match="axis 3"):
        x.permute(0, 1, 3)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*24.*\(5, 5\)"):
        x.reshape(5, 5)


@pytest.mark.parametrize("method", ["softmax", "log_softmax"])
def test_softmax_rejects_a_tuple_axis(method):
    with pytest.raises((ValueError, TypeError), match=r"\(0, 1\)"):
        getattr(Tensor(np.ones((2, 3))), method)(axis=(0, 1))


def test_pow_zero_exponent_gradient_at_zero_is_zero():
    x = t64([0.0, 2.0], requires_grad=True)
    (x**0).sum().backward()
    assert np.isfinite(x.grad).all(), x.grad
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])


def test_reductions_and_softmax_over_axis_0_of_a_0d_tensor():
    x = t64(2.0, requires_grad=True)
    assert x.sum(axis=0).data == 2.0 and x.max(axis=-1).data == 2.0
    assert x.softmax(-1).data == 1.0


def test_casting_to_integer_gives_a_tensor_without_grad():
    x = t64([1.5, 2.5], requires_grad=True)
    ids = x.astype(np.int64)
    assert ids.dtype == np.int64
    assert not ids.requires_grad


# --- leaf gradients: kept without a copy only when nothing else holds them ---------------------


def _leaves_share_no_memory(*leaves):
    for i, x in enumerate(leaves):
        for y in leaves[i + 1:]:
            assert not np.shares_memory(x.grad, y.grad)


@pytest.mark.parametrize("graph", ["a + b", "a - b", "reshape views", "same tensor twice", "broadcast"])
def test_leaf_gradients_never_share_memory(graph):
    # a + b hands the same gradient array to both inputs; the engine may keep a gradient as a
    # leaf's .grad without copying it only when no other leaf (or Function) can see it
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    c = Tensor(rng.standard_normal(3), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3)))
    out = {
        "a + b": lambda: a + b,
        "a - b": lambda: a - b,
        "reshape views": lambda: a.reshape(12).reshape(4, 3) + b.reshape(3, 4).reshape(4, 3),
        "same tensor twice": lambda: a * 2.0 + a + b,
        "broadcast": lambda: a + b + c,
    }[graph]()
    (out * w).sum().backward()
    leaves = [x for x in (a, b, c) if x.grad is not None]
    assert len(leaves) >= 2
    _leaves_share_no_memory(*leaves)
    before = [x.grad.copy() for x in leaves[1:]]
    a.grad += 100.0  # updating one gradient in place leaves the others alone
    for x, old in zip(leaves[1:], before):
        np.testing.assert_array_equal(x.grad, old)


def _doubling(on_backward):
    """A Function y = 2x whose backward returns 2g after handing that array to on_backward."""

    class Double(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2.0

        @staticmethod
        def backward(ctx, g):
            r = g * 2.0
            on_backward(r)
            return r

    return Double


def test_a_gradient_that_a_function_keeps_is_copied_into_the_leaf():
    kept = []
    x = Tensor(np.ones(3), requires_grad=True)
    _doubling(kept.append).apply(x).sum().backward()  # the Function keeps its gradient array
    assert not np.shares_memory(x.grad, kept[0])
    x.grad[...] = 7.0
    np.testing.assert_array_equal(kept[0], [2.0, 2.0, 2.0])


@pytest.mark.skipif(not _accumulate._COUNTS_REFERENCES, reason="needs CPython reference counts")
def test_an_unshared_gradient_becomes_the_leaf_grad_without_a_copy():
    made = []
    x = Tensor(np.ones(3), requires_grad=True)
    _doubling(lambda r: made.append(id(r))).apply(x).sum().backward()  # remembers only the id
    assert id(x.grad) == made[0]  # kept, not copied (PyTorch's AccumulateGrad does the same)
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])
