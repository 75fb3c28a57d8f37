"""The same operations against PyTorch, forward values and gradients, in float64.

Optional oracle: skipped when torch is not installed. Each check runs both libraries on the same
inputs, backpropagates ``sum(out * R)`` with one fixed random ``R``, and compares the outputs and
the gradients of every input.
"""
import operator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import arrays, away_from_zero, broadcast_pairs, distinct, shapes
from tinyllm.tensor import Tensor

torch = pytest.importorskip("torch")
tF = torch.nn.functional


def assert_close(actual, expected, rtol=1e-10, atol=1e-12):
    actual = np.asarray(actual)
    assert np.isfinite(actual).all(), actual  # NaN == NaN would pass assert_allclose
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def parity(ours, theirs, *arrays_, consts=(), rtol=1e-10, atol=1e-12):
    """Run ``ours(*Tensors, *consts)`` and ``theirs(*torch tensors, *consts)``; compare forward and grads."""
    arrays_ = [np.asarray(a, dtype=np.float64) for a in arrays_]
    xs = [Tensor(a.copy(), requires_grad=True) for a in arrays_]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays_]
    out = ours(*xs, *consts)
    ref = theirs(*ts, *consts)
    assert out.shape == tuple(ref.shape), (out.shape, tuple(ref.shape))
    assert_close(out.data, ref.detach().numpy(), rtol, atol)
    R = np.random.default_rng(0).standard_normal(out.shape)
    (out * R).sum().backward()
    (ref * torch.tensor(R)).sum().backward()
    for i, (x, t) in enumerate(zip(xs, ts)):
        assert x.grad is not None, f"input {i} got no gradient"
        assert_close(x.grad, t.grad.numpy(), rtol, atol)


# ----------------------------------------------------------------------------------------------
# elementary ops

BINARY = [operator.add, operator.sub, operator.mul, operator.truediv, operator.pow]


@pytest.mark.parametrize("op", BINARY, ids=["add", "sub", "mul", "div", "pow"])
@given(data=st.data(), shape_pair=broadcast_pairs())
def test_binary_ops_with_broadcasting(op, data, shape_pair):
    shape_a, shape_b = shape_pair
    a = data.draw(away_from_zero(shape_a, positive=op is operator.pow))
    b = data.draw(away_from_zero(shape_b))
    parity(op, op, a, b)
    parity(lambda x: op(x, 1.5), lambda x: op(x, 1.5), a)
    parity(lambda x: op(1.5, x), lambda x: op(1.5, x), np.abs(a))


@pytest.mark.parametrize(
    "shape_a, shape_b",
    [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 3)), ((2, 3, 4), (4,)), ((4,), (4,))],
)
def test_matmul(shape_a, shape_b):
    rng = np.random.default_rng(1)
    parity(operator.matmul, operator.matmul, rng.standard_normal(shape_a), rng.standard_normal(shape_b))


@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sqrt", "relu", "neg"])
@given(data=st.data(), shape=shapes(min_dims=0))
def test_elementwise(name, data, shape):
    a = data.draw(away_from_zero(shape, positive=name in ("log", "sqrt")))
    if name == "neg":
        parity(operator.neg, operator.neg, a)
    else:
        parity(lambda x: getattr(x, name)(), lambda t: getattr(torch, name)(t), a)


def test_relu_and_max_conventions_match_torch():
    parity(lambda x: x.relu(), torch.relu, [-1.0, 0.0, 0.0, 2.0])  # relu'(0) = 0
    parity(lambda x: x.max(), torch.amax, [1.0, 3.0, 3.0])  # ties split evenly
    parity(lambda x: x.max(axis=1), lambda t: torch.amax(t, dim=1), [[2.0, 2.0, 1.0], [0.0, 5.0, 5.0]])


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3), keepdims=st.booleans(), axis_seed=st.integers(0, 5))
def test_reductions(data, shape, keepdims, axis_seed):
    nd = len(shape)
    axis = (axis_seed % nd, -1) if axis_seed >= 3 and nd >= 2 and axis_seed % nd != nd - 1 else axis_seed % nd - nd
    a = data.draw(distinct(shape))
    parity(lambda x: x.sum(axis=axis, keepdims=keepdims), lambda t: t.sum(dim=axis, keepdim=keepdims), a)
    parity(lambda x: x.mean(axis=axis, keepdims=keepdims), lambda t: t.mean(dim=axis, keepdim=keepdims), a)
    parity(lambda x: x.max(axis=axis, keepdims=keepdims), lambda t: torch.amax(t, dim=axis, keepdim=keepdims), a)
    parity(lambda x: x.sum(), lambda t: t.sum(), a)


@pytest.mark.parametrize("method", ["softmax", "log_softmax"])
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3), axis_seed=st.integers(0, 5))
def test_softmax_family(method, data, shape, axis_seed):
    axis = axis_seed % len(shape) - (len(shape) if axis_seed >= 3 else 0)
    a = data.draw(arrays(shape, -5.0, 5.0))
    parity(lambda x: getattr(x, method)(axis=axis), lambda t: getattr(torch, method)(t, dim=axis), a)


@pytest.mark.parametrize("method", ["softmax", "log_softmax"])
def test_softmax_family_with_huge_logits(method):
    a = [[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]]
    parity(lambda x: getattr(x, method)(axis=-1), lambda t: getattr(torch, method)(t, dim=-1), a)


def test_shapes_and_indexing():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 4, 2))
    parity(lambda x: x.reshape(4, 6), lambda t: t.reshape(4, 6), a)
    parity(lambda x: x.transpose(0, 2), lambda t: t.transpose(0, 2), a)
    parity(lambda x: x.permute(2, 0, 1), lambda t: t.permute(2, 0, 1), a)
    parity(lambda x: x[1:, ::2, -1], lambda t: t[1:, ::2, -1], a)
    ids = np.array([2, 0, 2, 2])
    parity(lambda x: x[ids], lambda t: t[torch.tensor(ids)], a)  # repeated rows accumulate
    parity(lambda x: x[ids, np.array([3, 3, 3, 0])], lambda t: t[torch.tensor(ids), torch.tensor([3, 3, 3, 0])], a)
    b = rng.standard_normal((3, 4))
    parity(lambda x: x.T, lambda t: t.T, b)


def test_composed_graph():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)

    def ours(x, w, b):
        h = (x @ w + b).tanh()
        return (h * h.softmax(-1)).sum(axis=0) / (h.exp() + 1.0).mean()

    def theirs(x, w, b):
        h = torch.tanh(x @ w + b)
        return (h * torch.softmax(h, -1)).sum(dim=0) / (torch.exp(h) + 1.0).mean()

    parity(ours, theirs, x, w, b)


# ----------------------------------------------------------------------------------------------
# functional


@pytest.fixture(scope="module")
def F():
    import tinyllm.functional

    return tinyllm.functional


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu(F, approximate):
    a = np.linspace(-6.0, 6.0, 25).reshape(5, 5)
    parity(lambda x: F.gelu(x, approximate=approximate), lambda t: tF.gelu(t, approximate=approximate), a)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(F, affine):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 6)), rng.standard_normal(6), rng.standard_normal(6)
    if affine:
        parity(lambda x, w, b: F.layer_norm(x, w, b), lambda x, w, b: tF.layer_norm(x, (6,), w, b), x, w, b)
    else:
        parity(lambda x: F.layer_norm(x, eps=1e-3), lambda x: tF.layer_norm(x, (6,), eps=1e-3), x)


@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_cross_entropy_with_ignore_index(F, ignore_index):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((2, 4, 5)) * 3
    targets = rng.integers(0, 5, (2, 4))
    targets[0, 1] = targets[1, 3] = ignore_index
    targets[0, 0] = 3  # at least one counted position
    t_targets = torch.tensor(targets.reshape(-1))
    parity(
        lambda z: F.cross_entropy(z, targets, ignore_index=ignore_index),
        lambda z: tF.cross_entropy(z.reshape(-1, 5), t_targets, ignore_index=ignore_index),
        logits,
    )


def test_cross_entropy_with_huge_logits(F):
    logits = [[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]]
    targets = np.array([0, 0, 2])
    parity(lambda z: F.cross_entropy(z, targets), lambda z: tF.cross_entropy(z, torch.tensor(targets)), logits, rtol=1e-9)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 4), (7, 2)])
def test_scaled_dot_product_attention(F, causal, shape):
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal(shape) for _ in range(3))
    parity(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        lambda q, k, v: tF.scaled_dot_product_attention(q, k, v, is_causal=causal),
        q, k, v, rtol=1e-9,
    )
    parity(
        lambda q, k, v: F.attention_composed(q, k, v, is_causal=causal),
        lambda q, k, v: tF.scaled_dot_product_attention(q, k, v, is_causal=causal),
        q, k, v, rtol=1e-9,
    )


def test_embedding_with_repeated_ids(F):
    rng = np.random.default_rng(7)
    ids = np.array([[1, 3, 1], [0, 1, 3]])
    parity(lambda w: F.embedding(ids, w), lambda w: tF.embedding(torch.tensor(ids), w), rng.standard_normal((5, 2)))


def test_linear(F):
    rng = np.random.default_rng(8)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    parity(F.linear, tF.linear, x, w, b)


def test_concatenate_stack_where(F):
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    parity(lambda x, y: F.concatenate([x, y], axis=-1), lambda x, y: torch.cat([x, y], dim=-1), a, b)
    parity(lambda x, y: F.stack([x, y], axis=1), lambda x, y: torch.stack([x, y], dim=1), a, b)
    cond = a > 0
    c = rng.standard_normal((3,))
    parity(lambda x, y: F.where(cond, x, y), lambda x, y: torch.where(torch.tensor(cond), x, y), a, c)
