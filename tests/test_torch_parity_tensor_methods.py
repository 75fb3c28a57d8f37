"""More Tensor methods PyTorch code calls: sin / cos, square / rsqrt, tril / triu, cumsum, gather,
topk, sort, norm, all / any, the operator methods (add(alpha=), sub, mul, div, matmul, bmm, eq...),
type_as / new_*, fill_ / zero_, register_hook and retain_grad.

Finite differences in float64 for every gradient (no torch needed), then outputs and gradients
equal to torch's (``torch`` fixture from test_torch_parity_tensor_api: skipped without torch).
"""
import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from test_torch_parity_tensor_api import (  # noqa: F401  (torch: the fixture)
    assert_close, away_from_zero, check, distinct, parity, positive, randn, torch,
)


# ----------------------------------------------------------------------------------------------
# finite differences


def test_elementwise_and_triangle_gradcheck():
    check(lambda x: x.sin(), randn(3, 4))
    check(lambda x: x.cos(), randn(3, 4))
    check(lambda x: x.square(), randn(3, 4))
    check(lambda x: x.rsqrt(), positive(3, 4))
    check(lambda x: x.tril(), randn(2, 3, 4))
    check(lambda x: x.triu(1), randn(4, 3))
    check(lambda x, y: x.add(y, alpha=-2.5).sub(x, alpha=0.5), randn(3, 4), randn(4))
    check(lambda x, y: x.bmm(y), randn(2, 3, 4), randn(2, 4, 5))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cumsum_gradcheck(dim):
    check(lambda x: x.cumsum(dim), randn(3, 4, 2))


def test_gather_gradcheck_with_repeated_and_smaller_index():
    index = np.array([[0, 0, 3], [2, 1, 2]])  # repeats within rows; 2 rows of x's 3
    check(lambda x: x.gather(1, index), randn(3, 4))
    check(lambda x: x.gather(0, np.array([[2, 0], [2, 2]])), randn(3, 4))


@pytest.mark.parametrize("dim,keepdim", [(None, False), (1, False), ((0, 2), True), (-1, True)])
def test_norm_gradcheck(dim, keepdim):
    check(lambda x: x.norm(dim=dim, keepdim=keepdim), away_from_zero(3, 4, 2))
    check(lambda x: x.norm(1, dim=dim, keepdim=keepdim), away_from_zero(3, 4, 2))
    check(lambda x: x.norm(float("inf"), dim=dim, keepdim=keepdim), distinct(3, 4, 2))


def test_max_and_min_with_dim_values_gradcheck():
    check(lambda x: x.max(dim=1).values, distinct(3, 5))
    check(lambda x: x.min(dim=0, keepdim=True).values, distinct(3, 5))


def test_topk_and_sort_values_gradcheck():
    check(lambda x: x.topk(2, dim=1).values, distinct(3, 5))
    check(lambda x: x.topk(3, dim=0, largest=False).values, distinct(4, 2))
    check(lambda x: x.sort(dim=-1, descending=True).values, distinct(2, 6))


def test_norm_of_the_zero_vector_has_a_zero_gradient_as_torch():
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    n = x.norm(dim=1)
    n.sum().backward()
    assert (n.data == 0).all()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))


def test_topk_and_sort_keep_ties_in_index_order():
    x = Tensor(np.array([[1.0, 3.0, 3.0, 0.0, 3.0]]))
    assert x.topk(2).indices.tolist() == [[1, 2]]
    assert x.sort(descending=True).indices.tolist() == [[1, 2, 4, 0, 3]]
    assert x.sort().indices.tolist() == [[3, 0, 1, 2, 4]]
    ints = Tensor(np.array([5, np.iinfo(np.int64).min, 5, 7]))
    assert ints.sort(descending=True).values.tolist() == [7, 5, 5, np.iinfo(np.int64).min]
    assert ints.topk(3).indices.tolist() == [3, 0, 2]
    values, indices = x.topk(1)
    assert values.shape == indices.shape == (1, 1) and indices.dtype == np.int64


def test_hooks_see_and_replace_gradients_and_retain_grad_keeps_a_non_leafs():
    x = Tensor(randn(3), requires_grad=True)
    y = x * 2
    seen = []
    y.register_hook(lambda g: seen.append(g.copy()))
    y.retain_grad()
    y.retain_grad()  # twice is once
    handle = x.register_hook(lambda g: g * 10)
    (y * y).sum().backward()
    np.testing.assert_allclose(seen[0], 2 * y.data)
    np.testing.assert_allclose(y.grad, 2 * y.data)
    np.testing.assert_allclose(x.grad, 10 * 2 * 2 * y.data)
    handle.remove()
    x.grad = None
    (y * 1.0).sum()  # a fresh graph: y's was freed
    z = x * 3
    z.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 3.0))  # the removed hook no longer scales it


def test_fill_and_zero_in_place_only_outside_grad_mode_for_tensors_that_need_grad():
    p = Tensor(randn(2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"fill_: a tensor of shape \(2, 3\) that requires grad .*no_grad"):
        p.fill_(1.0)
    array = p.data
    with tinyllm.no_grad():
        assert p.zero_() is p
    assert p.data is array and (array == 0).all()
    frozen = np.ones(3)
    frozen.flags.writeable = False
    t = Tensor(frozen)
    t.fill_(2)
    assert (t.data == 2).all() and (frozen == 1).all()


def test_new_tensors_take_this_ones_dtype():
    x = Tensor(randn(2).astype(np.float32))
    assert x.new_zeros(2, 3).shape == (2, 3) and x.new_zeros((2, 3)).dtype == np.float32
    assert (x.new_ones(4).data == 1).all() and x.new_full((2,), 7.0).tolist() == [7.0, 7.0]
    assert x.new_tensor([1, 2]).dtype == np.float32 and x.new_tensor([1, 2], dtype=np.int64).dtype == np.int64
    assert x.new_empty(3).shape == (3,)
    assert x.type_as(Tensor(np.zeros(1))).dtype == np.float64
    assert not x.new_zeros(2).requires_grad and x.new_zeros(2, requires_grad=True).requires_grad


def test_errors_name_the_offending_values():
    x = Tensor(randn(3, 4), requires_grad=True)
    with pytest.raises(ValueError, match=r"gather: index must be an integer tensor with 2 dimensions"):
        x.gather(1, np.array([0, 1]))
    with pytest.raises(IndexError, match="gather: index values 0..4 out of range for dim 1 of size 4"):
        x.gather(1, np.array([[0, 4]]))
    with pytest.raises(ValueError, match=r"larger than the input \(3, 4\) outside dim 1"):
        x.gather(1, np.zeros((4, 1), np.int64))
    with pytest.raises(ValueError, match="topk: k=5 is out of range for dim -1 of size 4"):
        x.topk(5)
    with pytest.raises(ValueError, match="norm: p=3 is not supported"):
        x.norm(3)
    with pytest.raises(ValueError, match=r"bmm: needs two 3-D tensors .* got shapes \(3, 4\) and \(4, 2\)"):
        x.bmm(Tensor(randn(4, 2)))
    with pytest.raises(ValueError, match="tril: needs at least 2 dimensions"):
        Tensor(randn(3)).tril()
    with pytest.raises(ValueError, match="rounding_mode 'floor' is not supported"):
        x.div(2, rounding_mode="floor")
    with pytest.raises(RuntimeError, match="register_hook: a tensor of shape"):
        Tensor(randn(2)).register_hook(print)
    with pytest.raises(ValueError, match=r"hook returned a gradient of shape \(2,\)"):
        y = x * 1
        y.register_hook(lambda g: g[:, 0][:2])
        y.sum().backward()


# ----------------------------------------------------------------------------------------------
# against torch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_methods_match_torch(torch, dtype):
    parity(torch, lambda x: (x.sin(), x.cos(), x.square(), x.tril(-1), x.triu(2)),
           lambda t: (t.sin(), t.cos(), t.square(), t.tril(-1), t.triu(2)), [randn(2, 3, 4)], dtype)
    parity(torch, lambda x: x.rsqrt(), lambda t: t.rsqrt(), [positive(3, 4)], dtype)
    parity(torch, lambda x, y: (x.add(y, alpha=3), x.sub(y, alpha=0.5), x.mul(y), x.div(y), x.matmul(y.mT)),
           lambda x, y: (x.add(y, alpha=3), x.sub(y, alpha=0.5), x.mul(y), x.div(y), x.matmul(y.mT)),
           [randn(3, 4), away_from_zero(3, 4, seed=1)], dtype)
    parity(torch, lambda x, y: x.bmm(y), lambda x, y: x.bmm(y), [randn(2, 3, 4), randn(2, 4, 2, seed=1)], dtype)


@pytest.mark.parametrize("dim", [0, 2, -2])
def test_cumsum_and_norm_match_torch(torch, dim):
    parity(torch, lambda x: (x.cumsum(dim), x.norm(dim=dim), x.norm(p=1, dim=dim, keepdim=True), x.norm()),
           lambda t: (t.cumsum(dim), t.norm(dim=dim), t.norm(p=1, dim=dim, keepdim=True), t.norm()),
           [away_from_zero(3, 4, 5)])


def test_gather_topk_sort_match_torch(torch):
    index = np.array([[0, 0, 3], [2, 1, 2]])
    parity(torch, lambda x: x.gather(1, index), lambda t: t.gather(1, torch.tensor(index)), [randn(3, 4)])
    parity(torch, lambda x: x.gather(-2, index[:, :2]), lambda t: t.gather(-2, torch.tensor(index[:, :2])),
           [randn(3, 4)])
    for k, dim, largest in [(2, 1, True), (3, 0, False), (1, -1, True)]:
        parity(torch, lambda x: x.topk(k, dim, largest).values, lambda t: t.topk(k, dim, largest).values,
               [distinct(4, 5)])
        a = distinct(4, 5)
        assert Tensor(a).topk(k, dim, largest).indices.tolist() == \
            torch.tensor(a).topk(k, dim, largest).indices.tolist()
    a = distinct(3, 6)
    for descending in (False, True):
        parity(torch, lambda x: x.sort(1, descending).values, lambda t: t.sort(1, descending).values, [a])
        assert Tensor(a).sort(1, descending).indices.tolist() == \
            torch.tensor(a).sort(dim=1, descending=descending, stable=True).indices.tolist()


def test_reductions_and_comparisons_match_torch(torch):
    a = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]])
    x, t = Tensor(a), torch.tensor(a)
    for ours, theirs in [(x.all(), t.all()), (x.any(dim=0), t.any(dim=0)), (x.all(dim=1, keepdim=True),
                                                                           t.all(dim=1, keepdim=True)),
                         (x.eq(0), t.eq(0)), (x.ne(x), t.ne(t)), (x.gt(1), t.gt(1)), (x.le(0), t.le(0))]:
        assert ours.dtype == bool and ours.tolist() == theirs.tolist()


def test_retain_grad_and_hooks_match_torch(torch):
    a = randn(4)
    x, t = Tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    y, u = x.sin() * 3, t.sin() * 3
    y.retain_grad()
    u.retain_grad()
    x.register_hook(lambda g: g * 2)
    t.register_hook(lambda g: g * 2)
    (y * y).sum().backward()
    (u * u).sum().backward()
    assert_close(y.grad, u.grad)
    assert_close(x.grad, t.grad)


def test_setitem_in_place_as_nanogpts_top_k_filter(torch):
    logits = randn(2, 6).astype(np.float32)
    x, t = Tensor(logits.copy()), torch.tensor(logits.copy())
    v, _ = x.topk(3)
    tv, _ = torch.topk(t, 3)
    x[x < v[:, [-1]]] = -float("inf")
    t[t < tv[:, [-1]]] = -float("inf")
    np.testing.assert_array_equal(x.data, t.numpy())
    x[0, 1:3] = Tensor(np.array([1.5, 2.5], np.float32))
    assert x.data[0, 1:3].tolist() == [1.5, 2.5]


def test_setitem_refuses_a_tensor_that_requires_grad_outside_no_grad():
    p = Tensor(randn(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"x\[index\] = value: a tensor of shape \(3,\) that requires grad"):
        p[0] = 1.0
    with tinyllm.no_grad():
        p[0] = 1.0
    assert p.data[0] == 1.0
    with pytest.raises(IndexError, match=r"index 5 does not fit a tensor of shape \(3,\)"):
        Tensor(randn(3))[5] = 0.0


def test_optimizers_accept_torchs_implementation_switches():
    from tinyllm import optim
    from tinyllm.nn import Parameter
    for cls, switch in [(optim.AdamW, dict(fused=True)), (optim.Adam, dict(foreach=False))]:
        a, b = Parameter(np.ones(3, np.float32)), Parameter(np.ones(3, np.float32))
        for p, opt in [(a, cls([a], lr=0.1, **switch)), (b, cls([b], lr=0.1))]:
            p.grad = np.array([1.0, -2.0, 0.5], np.float32)
            opt.step()
        np.testing.assert_array_equal(a.data, b.data)  # the switch changes no number
        assert (a.data != 1).all()


def test_floor_division_and_modulo_match_torch_and_refuse_a_wanted_gradient(torch):
    a = np.array([-7, -3, 0, 4, 9])
    for ours, theirs in [(Tensor(a) // 3, torch.tensor(a) // 3), (Tensor(a) % 4, torch.tensor(a) % 4),
                         (10 % Tensor(a[3:]), 10 % torch.tensor(a[3:])),
                         (Tensor(a * 1.5) % 2.0, torch.tensor(a * 1.5) % 2.0)]:
        assert ours.tolist() == theirs.tolist() and not ours.requires_grad
    with pytest.raises(RuntimeError, match="%: has no gradient here"):
        Tensor(randn(3), requires_grad=True) % 2


def test_cpu_is_a_no_op_on_tensors_and_modules():
    from tinyllm import nn
    x = Tensor(randn(2), requires_grad=True)
    layer = nn.Linear(2, 2)
    assert x.cpu() is x and layer.cpu() is layer
    np.testing.assert_array_equal(x.detach().cpu().numpy(), x.data)
