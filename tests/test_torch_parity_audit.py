"""An audit of tinyllm's PyTorch-facing API against torch: a user coming from PyTorch writes the
obvious PyTorch code with tinyllm's names and expects the same numbers and the same behaviour.

Each test runs tinyllm and torch (the oracle, optional: skipped when it is not installed) on the
same inputs. Gradients are compared through ``sum(out * R)`` with a fixed random ``R`` (a plain
``sum`` hides the gradient of softmax and layer norm), in float64 to 1e-10 and in float32 to a few
ulps; new gradient code is also checked by finite differences (``tinyllm.gradcheck``). Random data
avoids ties and zeros except where a test pins the convention at a tie.

The deliberate differences from torch that this audit found are pinned at the end of the file
(``test_documented_difference_*``), so a change of either side is noticed.
"""
import math

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tF = torch.nn.functional

from kernel_helpers import nanogpt_get_lr  # noqa: E402
import tinyllm  # noqa: E402
import tinyllm.functional as F  # noqa: E402
from tinyllm import Tensor, gradcheck, nn, optim  # noqa: E402

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


def assert_close(actual, expected, dtype=np.float64, **tol):
    actual = np.asarray(actual)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.isfinite(actual).all(), actual  # NaN == NaN would pass assert_allclose
    np.testing.assert_allclose(actual, expected, **{**TOL[dtype], **tol})


def pair(array, dtype=np.float64, requires_grad=True):
    """The same values as a tinyllm Tensor and a torch tensor."""
    array = np.asarray(array, dtype=dtype)
    return Tensor(array.copy(), requires_grad=requires_grad), torch.tensor(array.copy(), requires_grad=requires_grad)


def parity(ours, theirs, arrays, dtype=np.float64, seed=0, **tol):
    """Run both on the same inputs; compare the outputs and the gradients of sum(out * R)."""
    xs, ts = zip(*(pair(a, dtype) for a in arrays))
    out, ref = ours(*xs), theirs(*ts)
    assert_close(out.data, ref, dtype, **tol)
    assert out.dtype == np.dtype(dtype), out.dtype
    R = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
    (out * R).sum().backward()
    (ref * torch.tensor(R)).sum().backward()
    for i, (x, t) in enumerate(zip(xs, ts)):
        assert x.grad is not None, f"input {i} got no gradient"
        assert_close(x.grad, t.grad, dtype, **tol)


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def positive(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape)


# ----------------------------------------------------------------------------------------------
# Tensor basics


class _TanhWithWrongGradient(tinyllm.Function):
    """tanh whose backward is off by one part in 10^8: what the checker must catch."""

    @staticmethod
    def forward(ctx, x):
        out = np.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (1 - out * out) * (1 + 1e-8)


def test_the_parity_checker_can_fail():
    """parity() must catch a gradient off by 1e-8 relative, a value off by 1e-9, a wrong dtype."""
    with pytest.raises(AssertionError):
        parity(lambda x: _TanhWithWrongGradient.apply(x), torch.tanh, [randn(3, 4)])
    with pytest.raises(AssertionError):
        parity(lambda x: x.exp() * (1 + 1e-9), torch.exp, [randn(3, 4)])
    with pytest.raises(AssertionError):
        parity(lambda x: x.astype(np.float32), lambda t: t, [randn(3, 4)])
    parity(lambda x: x.tanh(), torch.tanh, [randn(3, 4)])  # and passes the right one


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "truediv"])
def test_broadcast_arithmetic_and_its_gradients(op, dtype):
    import operator
    fn = getattr(operator, op)
    parity(fn, fn, [randn(2, 1, 4), positive(3, 1, seed=1)], dtype)
    parity(lambda a: fn(a, 0.5), lambda a: fn(a, 0.5), [randn(3, 4)], dtype)
    parity(lambda a: fn(2.0, a), lambda a: fn(2.0, a), [positive(3, 4)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", [((3, 4), (4, 2)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,))])
def test_matmul_operator_and_its_gradients(shapes, dtype):
    a, b = shapes
    parity(lambda x, y: x @ y, lambda x, y: x @ y, [randn(*a), randn(*b, seed=1)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("dim, keepdim", [(None, False), (1, False), (-1, True), ((0, 2), True), ((0, 2), False)])
def test_reductions_with_numpy_names(reduce, dim, keepdim, dtype):
    def theirs(t):
        return getattr(t, reduce)() if dim is None else getattr(t, reduce)(dim=dim, keepdim=keepdim)
    parity(lambda x: getattr(x, reduce)(axis=dim, keepdims=keepdim), theirs, [randn(2, 3, 4)], dtype)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("dim, keepdim", [(1, False), (-1, True), ((0, 2), True)])
def test_reductions_accept_torch_names_dim_and_keepdim(reduce, dim, keepdim):
    """``x.sum(dim=-1, keepdim=True)`` is how every PyTorch user writes it."""
    same = lambda t: getattr(t, reduce)(dim=dim, keepdim=keepdim)  # noqa: E731
    parity(same, same, [randn(2, 3, 4)])
    parity(lambda t: getattr(t, reduce)(dim, keepdim=keepdim), lambda t: getattr(t, reduce)(dim, keepdim=keepdim),
           [randn(2, 3, 4)])


def test_reductions_reject_both_spellings_at_once():
    x = Tensor(randn(2, 3))
    with pytest.raises(TypeError, match="axis.*dim"):
        x.sum(axis=0, dim=1)
    with pytest.raises(TypeError, match="keepdims.*keepdim"):
        x.mean(0, keepdims=True, keepdim=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_view_transpose_permute_T_and_their_gradients(dtype):
    def chain(x):
        y = x.reshape(3, 2, 4).transpose(0, 2).permute(1, 0, 2)  # (2, 4, 3)
        return y.view(8, 3).T @ x.view(8, -1).transpose(0, 1).T  # (3, 8) @ (8, 3)
    parity(chain, chain, [randn(6, 4)], dtype)
    parity(lambda x: x.reshape((2, 12)), lambda t: t.reshape((2, 12)), [randn(6, 4)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, index", [
    ("int and slice", (1, slice(None, None, 2))),
    ("negative int", (-1,)),
    ("new axis and ellipsis", (None, Ellipsis, 0)),
    ("repeated ints", ([0, 2, 0, 0],)),
    ("repeated pairs", ([0, 1, 0, 0], [2, 1, 2, 2])),
    ("slice then repeated ints", (slice(None), [3, 3, 1])),
    ("bool mask", None),
])
def test_indexing_gradients_accumulate_like_torch(name, index, dtype):
    """Repeated indices add up their gradients, as torch's advanced-indexing backward (index_put
    with accumulate=True) does; plain assignment would keep only the last copy."""
    a = randn(3, 4)
    if index is None:
        mask = a > 0.2
        parity(lambda x: x[mask], lambda t: t[torch.tensor(mask)], [a], dtype)
        return
    torch_index = tuple(torch.tensor(i) if isinstance(i, list) else i for i in index)
    parity(lambda x: x[index], lambda t: t[torch_index], [a], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sqrt", "relu"])
def test_elementwise_functions(name, dtype):
    data = positive(3, 4) if name in ("log", "sqrt") else randn(3, 4)
    parity(lambda x: getattr(x, name)(), lambda t: getattr(torch, name)(t), [data], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pow_with_tensor_and_scalar_exponents(dtype):
    parity(lambda a, b: a ** b, lambda a, b: a ** b, [positive(3, 4), randn(4, seed=1)], dtype)
    parity(lambda a: a ** 3, lambda a: a ** 3, [randn(3, 4)], dtype)
    parity(lambda a: a ** 0.5, lambda a: a ** 0.5, [positive(3, 4)], dtype)
    parity(lambda a: 2.0 ** a, lambda a: 2.0 ** a, [randn(3, 4)], dtype)


def test_max_without_ties_matches_amax():
    parity(lambda x: x.max(axis=1), lambda t: t.amax(dim=1), [randn(3, 5)])
    parity(lambda x: x.max(), lambda t: t.max(), [randn(3, 5)])


def test_max_ties_split_the_gradient_like_torch_max_and_amax():
    """torch: ``x.max()`` and ``x.amax(dim)`` share a tied gradient evenly (what tinyllm does);
    ``x.max(dim)`` (values, indices) sends it all to one index: see the documented difference."""
    ties = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, -1.0]])
    parity(lambda x: x.max(), lambda t: t.max(), [ties])
    parity(lambda x: x.max(axis=1), lambda t: t.amax(dim=1), [ties])
    parity(lambda x: x.max(axis=0, keepdims=True), lambda t: t.amax(dim=0, keepdim=True), [ties])


def test_amax_and_torch_max_with_dim_giving_values_and_indices():
    ties = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, -1.0]])
    for kw in ({}, {"dim": 1}, {"dim": 0, "keepdim": True}, {"dim": (0, 1)}):
        parity(lambda x: x.amax(**kw), lambda t: t.amax(**kw), [ties])
    parity(lambda x: x.amax(-1, True), lambda t: t.amax(-1, True), [randn(3, 4)])
    for kw in ({"dim": 1}, {"dim": 0, "keepdim": True}, {"dim": -1, "keepdim": False}):
        # the whole tied gradient goes to the first maximum's index, as torch sends it
        parity(lambda x: x.max(**kw).values, lambda t: t.max(**kw).values, [ties])
        parity(lambda x: x.min(**kw)[0], lambda t: t.min(**kw)[0], [-ties])
        assert Tensor(ties).max(**kw).indices.tolist() == torch.tensor(ties).max(**kw).indices.tolist()
        assert Tensor(-ties).min(**kw)[1].tolist() == torch.tensor(-ties).min(**kw)[1].tolist()
    with pytest.raises(TypeError, match="max: pass axis= .* or dim= .*, not both"):
        Tensor(ties).max(1, dim=1)
    with pytest.raises(TypeError, match="min: keepdim= goes with dim="):
        Tensor(ties).min(keepdim=True)


def test_comparisons_give_the_same_booleans():
    a, b = randn(3, 4), randn(4, seed=1)
    (x, t), (y, u) = pair(a, requires_grad=False), pair(b, requires_grad=False)
    for op in ("__lt__", "__le__", "__gt__", "__ge__"):
        ours, theirs = getattr(x, op)(y), getattr(t, op)(u)
        assert ours.dtype == bool and not ours.requires_grad
        np.testing.assert_array_equal(ours.data, theirs.numpy())
        np.testing.assert_array_equal(getattr(x, op)(0.1).data, getattr(t, op)(0.1).numpy())


def test_item_numpy_and_data():
    x, t = pair(randn(2, 3), requires_grad=False)
    assert x.sum().item() == pytest.approx(t.sum().item(), rel=1e-12)
    assert isinstance(x.sum().item(), float) and isinstance(Tensor(np.array([3])).item(), int)
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    assert isinstance(x.data, np.ndarray)  # torch: .data is a Tensor; here the ndarray itself
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        x.item()
    with pytest.raises((ValueError, RuntimeError)):
        t.item()


def test_size_dim_numel_tolist_and_contiguous():
    """``B, T, C = x.size()`` and ``y.transpose(1, 2).contiguous().view(B, T, C)`` (nanoGPT);
    ``x.size`` without a call stays NumPy's element count."""
    x, t = pair(randn(2, 3, 4), requires_grad=False)
    B, T, C = x.size()
    assert (B, T, C) == tuple(t.size()) == (2, 3, 4)
    assert x.size(-1) == t.size(-1) == 4 and x.size(dim=1) == t.size(dim=1) == 3
    assert x.size == 24 and x.size * 2 == 48 and x.numel() == t.numel() == 24
    assert x.dim() == t.dim() == 3
    assert x.tolist() == t.tolist()
    with pytest.raises(ValueError, match="axis 3"):
        x.size(3)
    assert Tensor(2.0).size() == tuple(torch.tensor(2.0).size()) == ()
    with pytest.raises(ValueError, match="axis 0"):
        Tensor(2.0).size(0)
    parity(lambda y: y.transpose(1, 2).contiguous().view(2, 12), lambda y: y.transpose(1, 2).contiguous().view(2, 12),
           [randn(2, 3, 4)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_unsqueeze_squeeze_and_masked_fill(dtype):
    parity(lambda x: x.unsqueeze(1).unsqueeze(-1), lambda t: t.unsqueeze(1).unsqueeze(-1), [randn(2, 3)], dtype)
    parity(lambda x: x.unsqueeze(-3), lambda t: t.unsqueeze(-3), [randn(2, 3)], dtype)
    for dim in (None, 1, (0, 3), -1, 2):  # dim 2 has size 3: torch leaves it alone
        parity(lambda x: x.squeeze(dim), lambda t: t.squeeze() if dim is None else t.squeeze(dim), [randn(1, 3, 1, 1)],
               dtype)
    bias = np.tril(np.ones((4, 4)))
    # the nanoGPT attention mask: -inf above the diagonal, then softmax
    parity(lambda att: att.masked_fill(bias == 0, float("-inf")).softmax(-1),
           lambda att: att.masked_fill(torch.tensor(bias) == 0, float("-inf")).softmax(-1), [randn(2, 4, 4)], dtype)
    parity(lambda x: x.masked_fill(Tensor(bias[0] == 0), 2.5), lambda t: t.masked_fill(torch.tensor(bias[0] == 0), 2.5),
           [randn(3, 4)], dtype)
    with pytest.raises(ValueError, match="dim 3"):
        Tensor(randn(2, 3)).unsqueeze(3)
    with pytest.raises(TypeError, match="bool"):
        Tensor(randn(2, 3)).masked_fill(np.ones((2, 3)), 0.0)


def test_masked_fill_gradcheck():
    mask = randn(3, 4, seed=4) > 0.3
    assert gradcheck(lambda x: x.masked_fill(mask, -1.5) * x, (Tensor(randn(3, 4), requires_grad=True),))


def test_argmax_like_torch():
    x, t = pair(randn(3, 5), requires_grad=True)
    for kw in ({}, {"dim": 1}, {"dim": 0, "keepdim": True}, {"dim": -1, "keepdim": False}):
        ours, theirs = x.argmax(**kw), t.argmax(**kw)
        assert ours.dtype == np.int64 and not ours.requires_grad
        np.testing.assert_array_equal(ours.data, theirs.numpy())
    ties = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(Tensor(ties).argmax(dim=1).data, torch.tensor(ties).argmax(dim=1).numpy())


def test_requires_grad_detach_and_no_grad_flags():
    (x, t) = pair(randn(3))
    (c, u) = pair(randn(3, seed=1), requires_grad=False)
    assert (x * c).requires_grad == (t * u).requires_grad is True
    assert (c * c).requires_grad == (u * u).requires_grad is False
    assert x.detach().requires_grad == t.detach().requires_grad is False
    assert np.shares_memory(x.detach().data, x.data)  # torch: detach() shares storage
    with tinyllm.no_grad(), torch.no_grad():
        assert (x * 2).requires_grad == (t * 2).requires_grad is False
    assert tinyllm.is_grad_enabled() and torch.is_grad_enabled()
    assert x.is_leaf and t.is_leaf and not (x * 2).is_leaf and not (t * 2).is_leaf


def test_backward_twice_raises_without_retain_graph_and_accumulates_with_it():
    for retain in (False, True):
        (x, t) = pair(randn(3))
        y, u = (x.tanh() * 3).sum(), (t.tanh() * 3).sum()
        y.backward(retain_graph=retain)
        u.backward(retain_graph=retain)
        if not retain:
            with pytest.raises(RuntimeError):
                u.backward()
            with pytest.raises(RuntimeError, match="retain_graph"):
                y.backward()
            continue
        y.backward()
        u.backward()
        assert_close(x.grad, t.grad)


def test_gradients_accumulate_across_two_backward_calls():
    (x, t) = pair(randn(3, 4))
    for scale in (1.0, -2.5):
        (x.exp() * scale).sum().backward()
        (t.exp() * scale).sum().backward()
    assert_close(x.grad, t.grad)
    assert_close(x.grad, np.exp(x.data) * (1.0 - 2.5))


def test_backward_accepts_torch_keyword_gradient():
    """torch's keyword is ``gradient=``; tinyllm's ``grad=`` keeps working."""
    (x, t) = pair(randn(3, 4))
    g = randn(3, 4, seed=1)
    (x * x).backward(gradient=g)
    (t * t).backward(gradient=torch.tensor(g))
    assert_close(x.grad, t.grad)
    (x * x).backward(grad=g)
    assert_close(x.grad, 2 * t.grad)


def test_zero_grad_sets_to_none_by_default_as_torch_2():
    ours, theirs = nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for m, inp in ((ours, Tensor(randn(4, 3))), (theirs, torch.randn(4, 3))):
        m(inp).sum().backward()
        m.zero_grad()
        assert all(p.grad is None for p in m.parameters())
        m(inp).sum().backward()
        m.zero_grad(set_to_none=False)
        assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    opt, topt = optim.SGD(ours.parameters(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    ours(Tensor(randn(4, 3))).sum().backward()
    theirs(torch.randn(4, 3)).sum().backward()
    opt.zero_grad()
    topt.zero_grad()
    assert all(p.grad is None for p in ours.parameters()) and all(p.grad is None for p in theirs.parameters())


# ----------------------------------------------------------------------------------------------
# functional


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_family_with_axis_and_with_torch_dim(name, axis, dtype):
    ours, theirs = getattr(F, name), getattr(tF, name)
    parity(lambda x: ours(x, axis), lambda t: theirs(t, axis), [3 * randn(2, 3, 5)], dtype)
    parity(lambda x: ours(x, axis=axis), lambda t: theirs(t, dim=axis), [3 * randn(2, 3, 5)], dtype)
    parity(lambda x: ours(x, dim=axis), lambda t: theirs(t, dim=axis), [3 * randn(2, 3, 5)], dtype)
    parity(lambda x: getattr(x, name)(dim=axis), lambda t: getattr(t, name)(dim=axis), [3 * randn(2, 3, 5)], dtype)


def test_softmax_rejects_both_axis_and_dim():
    with pytest.raises(TypeError, match="axis.*dim"):
        F.softmax(Tensor(randn(2, 3)), axis=0, dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_both_approximations(approximate, dtype):
    # atol 4e-6 in float32: in the left tail (x ~ -4.7) the derivative is a difference of nearly
    # equal terms, and both libraries land ~1e-6 from the float64 value there
    parity(lambda x: F.gelu(x, approximate=approximate), lambda t: tF.gelu(t, approximate=approximate),
           [2 * randn(4, 5)], dtype, **({"atol": 4e-6} if dtype == np.float32 else {}))


def test_gelu_unknown_approximation_names_the_value():
    with pytest.raises(ValueError, match="'erf'"):
        F.gelu(Tensor(randn(3)), approximate="erf")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(affine, dtype):
    arrays = [randn(2, 3, 6), 1 + 0.1 * randn(6, seed=1), randn(6, seed=2)]
    if affine:
        parity(lambda x, w, b: F.layer_norm(x, w, b), lambda x, w, b: tF.layer_norm(x, (6,), w, b), arrays, dtype)
    else:
        parity(lambda x: F.layer_norm(x), lambda x: tF.layer_norm(x, (6,)), arrays[:1], dtype)


def test_layer_norm_accepts_torch_positional_normalized_shape():
    """nanoGPT's LayerNorm calls ``F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)``."""
    arrays = [randn(2, 3, 6), 1 + 0.1 * randn(6, seed=1), randn(6, seed=2)]
    parity(lambda x, w, b: F.layer_norm(x, w.shape, w, b, 1e-5), lambda x, w, b: tF.layer_norm(x, w.shape, w, b, 1e-5),
           arrays)
    parity(lambda x: F.layer_norm(x, (6,)), lambda x: tF.layer_norm(x, (6,)), arrays[:1])
    parity(lambda x: F.layer_norm(x, 6, eps=1e-3), lambda x: tF.layer_norm(x, (6,), eps=1e-3), arrays[:1])
    parity(lambda x, w, b: F.layer_norm(x, [6], weight=w, bias=b),
           lambda x, w, b: tF.layer_norm(x, [6], weight=w, bias=b), arrays)
    parity(lambda x, w, b: F.layer_norm(x, normalized_shape=(6,), weight=w, bias=b, eps=1e-4),
           lambda x, w, b: tF.layer_norm(x, normalized_shape=(6,), weight=w, bias=b, eps=1e-4), arrays)
    parity(lambda x, w, b: F.layer_norm(x, w, b, 1e-4), lambda x, w, b: tF.layer_norm(x, (6,), w, b, 1e-4), arrays)
    with pytest.raises(ValueError, match=r"normalized_shape \(3, 6\)"):
        F.layer_norm(Tensor(randn(2, 3, 6)), (3, 6))
    with pytest.raises(ValueError, match=r"normalized_shape \(5,\)"):
        F.layer_norm(Tensor(randn(2, 3, 6)), (5,))


def ce_case(n=7, vocab=5, seed=0, ignore_index=-100):
    rng = np.random.default_rng(seed)
    logits = 2 * rng.standard_normal((n, vocab))
    targets = rng.integers(0, vocab, n)
    targets[[1, 4]] = ignore_index
    return logits, targets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_cross_entropy_ignore_index_and_label_smoothing(ignore_index, smoothing, dtype):
    logits, targets = ce_case(ignore_index=ignore_index)
    kw = dict(ignore_index=ignore_index, label_smoothing=smoothing)
    parity(lambda z: F.cross_entropy(z, targets, **kw), lambda z: tF.cross_entropy(z, torch.tensor(targets), **kw),
           [logits], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_reduction(reduction, smoothing, dtype):
    logits, targets = ce_case()
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    parity(lambda z: F.cross_entropy(z, targets, **kw), lambda z: tF.cross_entropy(z, torch.tensor(targets), **kw),
           [logits], dtype)
    # (B, T, V) logits with (B, T) targets, nanoGPT's layout: 'none' keeps (B, T)
    ours = F.cross_entropy(Tensor(logits[:6].reshape(2, 3, 5)), targets[:6].reshape(2, 3), **kw)
    theirs = tF.cross_entropy(torch.tensor(logits[:6]), torch.tensor(targets[:6]), **kw)
    assert_close(ours.data, theirs.reshape((2, 3) if reduction == "none" else ()))


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_reduction_gradcheck(reduction, smoothing):
    logits, targets = ce_case(seed=3)
    assert gradcheck(lambda z: F.cross_entropy(z, targets, reduction=reduction, label_smoothing=smoothing),
                     (Tensor(logits, requires_grad=True),))


def test_cross_entropy_reduction_when_every_target_is_ignored():
    """torch: 'mean' is nan (0 / 0), 'sum' is 0, 'none' is zeros; gradients are zero."""
    logits = randn(3, 4)
    targets = np.full(3, -100)
    for reduction in ("sum", "none"):
        (z, t) = pair(logits)
        out = F.cross_entropy(z, targets, reduction=reduction)
        ref = tF.cross_entropy(t, torch.tensor(targets), reduction=reduction)
        assert_close(out.data, ref)
        out.sum().backward()
        ref.sum().backward()
        assert_close(z.grad, t.grad)
    assert np.isnan(F.cross_entropy(Tensor(logits), targets).item())
    assert math.isnan(tF.cross_entropy(torch.tensor(logits), torch.tensor(targets)).item())


def test_cross_entropy_out_of_range_target_is_named_for_every_reduction():
    logits, targets = ce_case()
    targets[2] = 5
    for reduction in ("mean", "sum", "none"):
        with pytest.raises(ValueError, match="5"):
            F.cross_entropy(Tensor(logits), targets, reduction=reduction)
    with pytest.raises((IndexError, RuntimeError)):
        tF.cross_entropy(torch.tensor(logits), torch.tensor(targets), reduction="none")


def test_cross_entropy_unknown_reduction_names_the_value():
    logits, targets = ce_case()
    with pytest.raises(ValueError, match="'avg'"):
        F.cross_entropy(Tensor(logits), targets, reduction="avg")


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_with_repeated_ids(dtype):
    ids = np.array([[0, 3, 3], [1, 3, 0]])
    parity(lambda w: F.embedding(ids, w), lambda w: tF.embedding(torch.tensor(ids), w), [randn(5, 4)], dtype)


def test_dropout_statistics_in_training_and_identity_in_eval():
    p, x = 0.3, np.random.default_rng(0).uniform(1.0, 2.0, (200, 500))
    y = F.dropout(Tensor(x), p, training=True, rng=np.random.default_rng(1)).data
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)  # torch scales by 1/(1-p)
    assert abs(1 - kept.mean() - p) < 5 * math.sqrt(p * (1 - p) / x.size)
    t = tF.dropout(torch.tensor(x), p, training=True).numpy()
    assert abs((t == 0).mean() - (y == 0).mean()) < 0.01  # the same law (different random streams)
    assert F.dropout(Tensor(x), p, training=False).data is not None
    np.testing.assert_array_equal(F.dropout(Tensor(x), p, training=False).data, x)
    layer = nn.Dropout(p).eval()
    np.testing.assert_array_equal(layer(Tensor(x)).data, x)
    np.testing.assert_array_equal(tF.dropout(torch.tensor(x), p, training=False).numpy(), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias, dtype):
    arrays = [randn(2, 3, 4), randn(5, 4, seed=1), randn(5, seed=2)]
    if bias:
        parity(F.linear, tF.linear, arrays, dtype)
    else:
        parity(F.linear, tF.linear, arrays[:2], dtype)


def sdpa_case(tq=5, tk=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 3, tq, 4)), rng.standard_normal((2, 3, tk, 4)), rng.standard_normal((2, 3, tk, 6))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["none", "causal", "scale", "bool", "bool padding", "float", "float -inf"])
def test_scaled_dot_product_attention(kind, dtype):
    rng = np.random.default_rng(5)
    kw = {"none": {}, "causal": dict(is_causal=True), "scale": dict(scale=0.3)}.get(kind)
    if kind == "bool":
        mask = rng.random((5, 5)) < 0.7
        mask[:, 0] = True  # every query sees a key
    elif kind == "bool padding":
        mask = np.arange(5)[None, None, None, :] < np.array([5, 3])[:, None, None, None]  # (2, 1, 1, 5)
    elif kind == "float":
        mask = rng.standard_normal((2, 1, 5, 5))
    elif kind == "float -inf":
        mask = np.where(rng.random((5, 5)) < 0.3, -np.inf, 0.5 * rng.standard_normal((5, 5)))
        mask[:, 1] = 0.0
    if kw is None:
        kw = dict(attn_mask=mask)
        theirs_kw = dict(attn_mask=torch.tensor(mask if mask.dtype == bool else mask.astype(dtype)))
    else:
        theirs_kw = kw
    parity(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw),
           lambda q, k, v: tF.scaled_dot_product_attention(q, k, v, **theirs_kw), sdpa_case(), dtype,
           **({"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-11}))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(dtype):
    parity(F.relu, tF.relu, [randn(3, 4)], dtype)
    x, t = pair(np.array([-1.0, 0.0, 2.0]))
    F.relu(x).sum().backward()
    tF.relu(t).sum().backward()
    assert_close(x.grad, t.grad)  # relu'(0) = 0 in both


# ----------------------------------------------------------------------------------------------
# nn modules


def test_layers_have_torch_parameter_names_and_shapes():
    pairs = [(nn.Linear(4, 3), torch.nn.Linear(4, 3)), (nn.Linear(4, 3, bias=False), torch.nn.Linear(4, 3, bias=False)),
             (nn.Embedding(7, 5), torch.nn.Embedding(7, 5)), (nn.LayerNorm(6), torch.nn.LayerNorm(6)),
             (nn.LayerNorm(6, bias=False), torch.nn.LayerNorm(6, bias=False))]
    for ours, theirs in pairs:
        assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
               [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
        assert list(ours.state_dict()) == list(theirs.state_dict())
        assert all(p.requires_grad for p in ours.parameters())


def test_default_init_distributions():
    """Linear: W, b ~ U(-1/sqrt(in), 1/sqrt(in)) (torch's kaiming_uniform(a=sqrt(5))); Embedding
    N(0, 1); LayerNorm ones and zeros. (GPT re-initialises N(0, 0.02), as GPT-2 and nanoGPT do.)"""
    fan_in = 64
    lin = nn.Linear(fan_in, 400, rng=np.random.default_rng(0))
    bound = 1 / math.sqrt(fan_in)
    for p in (lin.weight.data, lin.bias.data):
        assert np.abs(p).max() <= bound
    w = lin.weight.data.astype(np.float64)
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound  # uniform's std: bound / sqrt(3)
    assert np.abs(w).max() > 0.99 * bound
    tw = torch.nn.Linear(fan_in, 400).weight.detach().numpy()
    assert abs(tw.std() - w.std()) < 0.02 * bound and np.abs(tw).max() <= bound
    emb = nn.Embedding(500, 64, rng=np.random.default_rng(0)).weight.data
    assert abs(emb.mean()) < 0.01 and abs(emb.std() - 1) < 0.01
    ln = nn.LayerNorm(6)
    np.testing.assert_array_equal(ln.weight.data, np.ones(6))
    np.testing.assert_array_equal(ln.bias.data, np.zeros(6))
    assert lin.weight.dtype == np.float32 and ln.weight.dtype == np.float32


class OursNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(7, 4)
        self.ln = nn.LayerNorm(4)
        self.head = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 3, bias=False)])
        self.drop = nn.Dropout(0.1)

    def forward(self, ids):
        h = self.drop(self.ln(self.wte(ids)))
        for layer in self.head:
            h = layer(h)
        return h


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(7, 4)
        self.ln = torch.nn.LayerNorm(4)
        self.head = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 3, bias=False)])
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, ids):
        h = self.drop(self.ln(self.wte(ids)))
        for layer in self.head:
            h = layer(h)
        return h


def test_named_parameters_order_state_dict_keys_and_a_torch_state_dict_loads():
    ours, theirs = OursNet(), TorchNet().double()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (np.asarray of a torch tensor warns under NumPy 2)
        ours.double().load_state_dict(theirs.state_dict())
    ids = np.array([[1, 6, 0], [3, 3, 2]])
    ours.eval(), theirs.eval()
    assert_close(ours(ids).data, theirs(torch.tensor(ids)))


def test_load_state_dict_strict_errors_are_runtime_errors_naming_the_keys():
    """torch raises RuntimeError listing every missing / unexpected / mis-shaped key; tinyllm's
    ValueError is also a RuntimeError so either ``except`` catches it."""
    model = OursNet()
    state = dict(model.state_dict())
    missing = {k: v for k, v in state.items() if k != "ln.bias"}
    unexpected = {**state, "ln.running_mean": np.zeros(4)}
    mis_shaped = {**state, "head.1.weight": np.zeros((4, 4))}
    for bad, names in ((missing, ["ln.bias"]), (unexpected, ["ln.running_mean"]), (mis_shaped, ["head.1.weight"])):
        with pytest.raises(RuntimeError) as info:
            model.load_state_dict(bad)
        assert isinstance(info.value, ValueError)
        assert all(n in str(info.value) for n in names), str(info.value)
    with pytest.raises(RuntimeError, match="head.1.weight"):  # torch: shape errors even when not strict
        model.load_state_dict(mis_shaped, strict=False)


def test_load_state_dict_returns_missing_keys_and_unexpected_keys_fields():
    model, theirs = OursNet(), TorchNet()
    state = {k: v for k, v in model.state_dict().items() if k != "ln.bias"}
    state["extra"] = np.zeros(1)
    result = model.load_state_dict(state, strict=False)
    tstate = {k: v for k, v in theirs.state_dict().items() if k != "ln.bias"}
    tstate["extra"] = torch.zeros(1)
    tresult = theirs.load_state_dict(tstate, strict=False)
    assert result.missing_keys == tresult.missing_keys == ["ln.bias"]
    assert result.unexpected_keys == tresult.unexpected_keys == ["extra"]
    missing, unexpected = result  # still a pair, as before
    assert (missing, unexpected) == (["ln.bias"], ["extra"])


def test_train_eval_call_modules_children_and_apply():
    ours, theirs = OursNet(), TorchNet()
    for m in (ours, theirs):
        assert m.training and all(c.training for c in m.modules())
        assert m.eval() is m and not any(c.training for c in m.modules())
        assert m.train() is m and all(c.training for c in m.modules())
        m.train(False)
        assert not m.head[1].training
    def kind(m):
        return {"OursNet": "Net", "TorchNet": "Net"}.get(type(m).__name__, type(m).__name__)
    assert [kind(m) for m in ours.modules()] == [kind(m) for m in theirs.modules()]
    assert [kind(m) for m in ours.children()] == [kind(m) for m in theirs.children()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    seen, tseen = [], []
    assert ours.apply(lambda m: seen.append(kind(m))) is ours
    theirs.apply(lambda m: tseen.append(kind(m)))
    assert seen == tseen and seen[-1] == "Net" and seen[0] == "Embedding"  # post-order, as torch

    class Twice(nn.Module):
        def forward(self, x):
            return x * 2
    assert Twice()(Tensor(np.ones(2))).data.tolist() == [2.0, 2.0]


def test_sequential_and_relu_like_torch():
    ours = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                 torch.nn.Linear(8, 3)).double()
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert len(ours) == len(theirs) == 4 and isinstance(ours[1], nn.ReLU)
    ours.double().load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    x = randn(5, 4)
    xt = Tensor(x, requires_grad=True)
    tt = torch.tensor(x, requires_grad=True)
    out, ref = ours(xt), theirs(tt)
    assert_close(out.data, ref)
    out.sum().backward()
    ref.sum().backward()
    assert_close(xt.grad, tt.grad)
    assert_close(ours[0].weight.grad, theirs[0].weight.grad)


def test_module_to_cpu_is_a_no_op_and_another_device_is_named():
    ours, theirs = OursNet(), TorchNet()
    before = [p.data.copy() for p in ours.parameters()]
    assert ours.to("cpu") is ours and theirs.to("cpu") is theirs
    assert all(np.array_equal(a, p.data) and p.dtype == np.float32 for a, p in zip(before, ours.parameters()))
    with pytest.raises(ValueError, match="'cuda:0'"):
        ours.to("cuda:0")
    assert ours.to(np.float64).head[0].weight.dtype == np.float64


# ----------------------------------------------------------------------------------------------
# optim


def grads_sequence(shapes, steps, seed=7):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]


def run_both(make_ours, make_theirs, steps=20, lr_change=None, shapes=((3, 4), (4,), (2, 3))):
    """Same parameters, same gradient sequence, both optimizers, float64; returns the parameters."""
    init = [np.random.default_rng(i).standard_normal(s) for i, s in enumerate(shapes)]
    ps = [nn.Parameter(a.copy()) for a in init]
    ts = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    opt, topt = make_ours(ps), make_theirs(ts)
    for step, grads in enumerate(grads_sequence(shapes, steps)):
        if lr_change is not None and step == lr_change:
            opt.param_groups[0]["lr"] *= 0.3
            topt.param_groups[0]["lr"] *= 0.3
        for p, t, g in zip(ps, ts, grads):
            p.grad, t.grad = g.copy(), torch.tensor(g.copy())
        opt.step()
        topt.step()
    return ps, ts, opt, topt


def groups(params, **second):
    return [{"params": params[:2]}, {"params": params[2:], **second}]


@pytest.mark.parametrize("lr_change", [None, 8])
def test_adamw_twenty_steps_with_groups_match_torch(lr_change):
    ps, ts, _, _ = run_both(lambda p: optim.AdamW(groups(p, weight_decay=0.0), lr=0.05, betas=(0.8, 0.95), eps=1e-6,
                                                  weight_decay=0.1),
                            lambda p: torch.optim.AdamW(groups(p, weight_decay=0.0), lr=0.05, betas=(0.8, 0.95),
                                                        eps=1e-6, weight_decay=0.1),
                            lr_change=lr_change)
    for p, t in zip(ps, ts):
        assert_close(p.data, t, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("momentum, weight_decay, nesterov, dampening", [
    (0.0, 0.0, False, 0.0), (0.9, 0.0, False, 0.0), (0.9, 0.01, False, 0.0), (0.9, 0.01, True, 0.0),
    (0.8, 0.0, False, 0.3)])
@pytest.mark.parametrize("lr_change", [None, 5])
def test_sgd_twenty_steps_match_torch(momentum, weight_decay, nesterov, dampening, lr_change):
    kw = dict(lr=0.05, momentum=momentum, weight_decay=weight_decay)
    if nesterov:
        kw["nesterov"] = True
    if dampening:
        kw["dampening"] = dampening
    ps, ts, _, _ = run_both(lambda p: optim.SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw), lr_change=lr_change)
    for p, t in zip(ps, ts):
        assert_close(p.data, t, rtol=1e-10, atol=1e-13)


def test_sgd_nesterov_needs_momentum_as_in_torch():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, nesterov=True)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_optimizer_state_dict_round_trip_continues_identically(kind):
    make = {"adamw": lambda p: optim.AdamW(groups(p, weight_decay=0.0), lr=0.02, weight_decay=0.1),
            "sgd": lambda p: optim.SGD(groups(p, lr=0.01), lr=0.05, momentum=0.9, weight_decay=0.01)}[kind]
    make_t = {"adamw": lambda p: torch.optim.AdamW(groups(p, weight_decay=0.0), lr=0.02, weight_decay=0.1),
              "sgd": lambda p: torch.optim.SGD(groups(p, lr=0.01), lr=0.05, momentum=0.9, weight_decay=0.01)}[kind]
    ps, ts, opt, topt = run_both(make, make_t, steps=10)
    saved = opt.state_dict()
    resumed_params = [nn.Parameter(p.data.copy()) for p in ps]
    resumed = make(resumed_params)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    for grads in grads_sequence([p.shape for p in ps], 10, seed=99):
        for p, q, t, g in zip(ps, resumed_params, ts, grads):
            p.grad, q.grad, t.grad = g.copy(), g.copy(), torch.tensor(g)
        opt.step()
        resumed.step()
        topt.step()
    for p, q, t in zip(ps, resumed_params, ts):
        np.testing.assert_array_equal(q.data, p.data)
        assert_close(q.data, t, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_optimizer_state_dict_has_torch_names_and_values(kind):
    """The per-parameter state (step, exp_avg, exp_avg_sq; momentum_buffer) is named and valued
    as torch's, numbered in group order; the group settings both have agree."""
    make = {"adamw": (lambda p: optim.AdamW(groups(p, weight_decay=0.0), lr=0.02, weight_decay=0.1),
                      lambda p: torch.optim.AdamW(groups(p, weight_decay=0.0), lr=0.02, weight_decay=0.1)),
            "sgd": (lambda p: optim.SGD(groups(p, lr=0.01), lr=0.05, momentum=0.9),
                    lambda p: torch.optim.SGD(groups(p, lr=0.01), lr=0.05, momentum=0.9))}[kind]
    _, _, opt, topt = run_both(*make, steps=6)
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert sorted(ours["state"]) == sorted(theirs["state"]) == [0, 1, 2]
    for i, state in ours["state"].items():
        tstate = theirs["state"][i]
        assert set(state) == set(tstate), (set(state), set(tstate))
        for name, value in state.items():
            assert_close(np.asarray(value, dtype=np.float64), np.asarray(tstate[name], dtype=np.float64),
                         rtol=1e-10, atol=1e-13)
    for group, tgroup in zip(ours["param_groups"], theirs["param_groups"]):
        common = set(group) & set(tgroup)
        assert common >= {"lr", "weight_decay"}
        assert {k: group[k] for k in common} == {k: tgroup[k] for k in common}


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
@pytest.mark.parametrize("where, name", [(optim, "clip_grad_norm"), (optim, "clip_grad_norm_"),
                                         (nn.utils, "clip_grad_norm_")])  # nn.utils: torch's place for it
def test_clip_grad_norm_matches_torch(where, name, max_norm):
    grads = grads_sequence(((3, 4), (4,), (2, 3)), 1)[0]
    ps = [nn.Parameter(np.zeros(g.shape)) for g in grads]
    ts = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, t, g in zip(ps, ts, grads):
        p.grad, t.grad = g.copy(), torch.tensor(g)
    norm = getattr(where, name)(ps, max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    assert norm == pytest.approx(tnorm.item(), rel=1e-12)
    for p, t in zip(ps, ts):
        assert_close(p.grad, t.grad, rtol=1e-12)


def test_clip_grad_norm_accepts_torch_keywords_norm_type_2_and_inf():
    grads = grads_sequence(((3, 4), (5,)), 1)[0]
    for norm_type in (2, 2.0, "inf", math.inf):
        ps = [nn.Parameter(np.zeros(g.shape)) for g in grads]
        ts = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
        for p, t, g in zip(ps, ts, grads):
            p.grad, t.grad = g.copy(), torch.tensor(g)
        tnorm = torch.nn.utils.clip_grad_norm_(ts, max_norm=0.7, norm_type=norm_type)
        norm = optim.clip_grad_norm_(ps, max_norm=0.7, norm_type=norm_type)
        assert norm == pytest.approx(tnorm.item(), rel=1e-12)
        for p, t in zip(ps, ts):
            assert_close(p.grad, t.grad, rtol=1e-12)
    with pytest.raises(ValueError, match="norm_type 1"):
        optim.clip_grad_norm_(ps, 1.0, norm_type=1)


def test_cosine_lr_matches_nanogpt_get_lr():
    for it in list(range(0, 40)) + [99, 100, 101, 2000]:
        assert optim.cosine_lr(it, 6e-4, 6e-5, 10, 100) == pytest.approx(
            nanogpt_get_lr(it, 6e-4, 6e-5, 10, 100), rel=1e-14, abs=0)
    opt = optim.AdamW([nn.Parameter(np.zeros(2))], lr=1.0)
    sched = optim.WarmupCosineLR(opt, 6e-4, 6e-5, 10, 100)
    for it in (0, 5, 10, 55, 100, 150):
        assert sched.set_step(it) == opt.param_groups[0]["lr"] == pytest.approx(nanogpt_get_lr(it, 6e-4, 6e-5, 10, 100))


def test_warmup_cosine_scheduler_step_and_get_last_lr_as_torch_schedulers():
    """torch habit: the scheduler sets lr(0) when built, ``scheduler.step()`` after each
    ``optimizer.step()`` moves to the next iteration, ``get_last_lr()`` lists each group's lr."""
    p = nn.Parameter(np.zeros(2))
    opt = optim.AdamW([{"params": [p]}, {"params": [nn.Parameter(np.zeros(1))]}], lr=1.0)
    sched = optim.WarmupCosineLR(opt, 6e-4, 6e-5, 3, 12)
    for it in range(16):
        expected = nanogpt_get_lr(it, 6e-4, 6e-5, 3, 12)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([expected, expected], rel=1e-14)
        assert sched.get_last_lr() == pytest.approx([expected, expected], rel=1e-14)
        sched.step()
    sched.set_step(5)  # set_step still jumps anywhere; step() continues from there
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(nanogpt_get_lr(6, 6e-4, 6e-5, 3, 12), rel=1e-14)


# ----------------------------------------------------------------------------------------------
# deliberate differences, pinned so that a change on either side is noticed


def test_gelu_defaults_are_torchs():
    """``F.gelu(x)`` and ``nn.GELU()`` are torch's exact (erf) form unless asked for "tanh"."""
    x = 2 * randn(50)
    exact = tF.gelu(torch.tensor(x)).numpy()
    assert np.abs(exact - tF.gelu(torch.tensor(x), approximate="tanh").numpy()).max() > 1e-5  # the two differ
    assert_close(F.gelu(Tensor(x)).data, exact)
    assert_close(nn.GELU()(Tensor(x)).data, exact)
    assert_close(nn.GELU(approximate="tanh")(Tensor(x)).data, tF.gelu(torch.tensor(x), approximate="tanh").numpy())
    assert repr(nn.GELU("tanh")) == repr(torch.nn.GELU("tanh"))
    with pytest.raises(ValueError, match="'erf'"):
        nn.GELU("erf")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_modules_match_torchs(reduction):
    """``nn.CrossEntropyLoss`` and ``nn.MSELoss`` (with F.mse_loss) as torch's, gradients included."""
    logits, targets = randn(6, 5), np.array([0, 4, -100, 2, 2, 1])
    ours, theirs = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.1), \
        torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.1)
    parity(lambda z: ours(z, targets), lambda z: theirs(z, torch.tensor(targets)), [logits])
    parity(nn.MSELoss(reduction=reduction), torch.nn.MSELoss(reduction=reduction), [randn(3, 4), randn(3, 4, seed=1)])
    with pytest.raises(ValueError, match="weight"):
        nn.CrossEntropyLoss(weight=np.ones(5))


@pytest.mark.parametrize("name", ["Identity", "Tanh", "Sigmoid", "Softmax", "LogSoftmax"])
def test_small_modules_match_torchs(name):
    args = {"Softmax": dict(dim=1), "LogSoftmax": dict(dim=1)}.get(name, {})
    ours, theirs = getattr(nn, name)(**args), getattr(torch.nn, name)(**args)
    parity(ours, theirs, [randn(3, 5)])
    assert repr(ours) == repr(theirs)
    if args:  # torch guesses the axis when none is given; tinyllm asks for it
        with pytest.raises(ValueError, match="dim=-1"):
            getattr(nn, name)()


def test_documented_difference_max_with_axis_returns_values_only():
    """torch's ``x.max(dim)`` returns (values, indices) and sends a tied gradient to one index;
    tinyllm's ``x.max(axis)`` is torch's ``x.amax(dim)``: values only, ties split evenly."""
    ties = np.array([[1.0, 3.0, 3.0]])
    x, t = pair(ties)
    x.max(1).sum().backward()
    t.max(1).values.sum().backward()
    assert_close(x.grad, [[0.0, 0.5, 0.5]])
    assert_close(t.grad, [[0.0, 1.0, 0.0]])


def test_documented_difference_causal_mask_aligns_bottom_right_when_tq_differs_from_tk():
    """torch's is_causal is tril(ones(Tq, Tk)) (top-left); tinyllm's lets query i see keys
    j <= i + Tk - Tq (the queries are the last Tq positions, what a KV cache needs). Equal when
    Tq == Tk; torch's bottom-right form is the explicit bool mask used here."""
    q, k, v = sdpa_case(tq=2, tk=5)
    bottom_right = torch.ones(2, 5, dtype=torch.bool).tril(diagonal=3)
    ours = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True).data
    theirs = tF.scaled_dot_product_attention(*map(torch.tensor, (q, k, v)), attn_mask=bottom_right)
    assert_close(ours, theirs)


def test_documented_difference_cross_entropy_takes_classes_on_the_last_axis():
    """torch's cross_entropy wants (N, C, d1, ...) logits (classes on axis 1); tinyllm's, as
    nanoGPT feeds it, (..., C) with the classes last: torch's equivalent permutes."""
    logits, targets = randn(2, 3, 5), np.random.default_rng(1).integers(0, 5, (2, 3))
    ours = F.cross_entropy(Tensor(logits), targets, reduction="none").data
    theirs = tF.cross_entropy(torch.tensor(logits).permute(0, 2, 1), torch.tensor(targets), reduction="none")
    assert_close(ours, theirs)


def test_documented_difference_class_probability_targets_are_refused():
    """torch also takes float targets (class probabilities); tinyllm takes class ids only."""
    logits, probs = randn(3, 4), np.full((3, 4), 0.25)
    assert np.isfinite(tF.cross_entropy(torch.tensor(logits), torch.tensor(probs)).item())
    with pytest.raises((TypeError, ValueError), match="float64"):
        F.cross_entropy(Tensor(logits), probs)


def test_documented_difference_is_causal_combines_with_attn_mask():
    """torch refuses attn_mask together with is_causal=True; tinyllm lets a key through only if
    both allow it (torch's equivalent: the two masks and-ed)."""
    q, k, v = sdpa_case()
    padding = np.arange(5)[None, None, None, :] < np.array([5, 3])[:, None, None, None]  # (2, 1, 1, 5)
    ours = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), attn_mask=padding, is_causal=True).data
    both = torch.tensor(padding) & torch.ones(5, 5, dtype=torch.bool).tril()
    assert_close(ours, tF.scaled_dot_product_attention(*map(torch.tensor, (q, k, v)), attn_mask=both))
    with pytest.raises(RuntimeError):
        tF.scaled_dot_product_attention(*map(torch.tensor, (q, k, v)), attn_mask=torch.tensor(padding), is_causal=True)


def test_equality_is_element_wise_and_truth_needs_one_element_as_in_torch():
    """``x == y`` / ``x != y`` compare element-wise (an accuracy is ``(pred == y).float().mean()``);
    ``bool`` of a one-element tensor is its truth, of more an error (torch: RuntimeError); a
    tensor stays hashable by identity, so it can be a dict key and ``x in [x]`` holds."""
    x, t = pair(np.array([1.0, 2.0, 3.0]), requires_grad=False)
    y, u = pair(np.array([1.0, 5.0, 3.0]), requires_grad=False)
    np.testing.assert_array_equal((x == y).data, (t == u).numpy())
    np.testing.assert_array_equal((x != 1.0).data, (t != 1.0).numpy())
    assert (x == y).data.dtype == bool
    assert float((x == y).float().mean().item()) == pytest.approx(float((t == u).float().mean()))
    assert (x == None) is False and (x != None) is True  # noqa: E711  (as torch)
    one, one_t = pair(np.array(3.0), requires_grad=False)
    assert bool(one < 5) is bool(one_t < 5) is True
    assert bool(one > 5) is bool(one_t > 5) is False
    with pytest.raises(RuntimeError):
        bool(t == u)
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(x == y)
    assert {x: 1}[x] == 1 and x in [x] and x in {x}


def test_documented_difference_adamw_rebinds_parameter_arrays():
    """torch's optimizers update parameters in place; tinyllm's AdamW (its fast kernel) makes each
    ``p.data`` a view of one flat buffer per group at the first step, so an array taken from
    ``p.data`` or ``state_dict()`` before that step keeps the old values: take them after, or
    copy. SGD updates in place, as torch."""
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    before = p.data
    opt = optim.AdamW([p], lr=0.1)
    p.grad = np.ones(3, dtype=np.float32)
    opt.step()
    after = p.data
    if tinyllm.is_reference():  # the NumPy reference (TINYLLM_REFERENCE=1) updates in place, as torch
        assert after is before and (before < 1).all()
    else:
        assert not np.shares_memory(before, after) and (before == 1).all() and (after < 1).all()
    p.grad = np.ones(3, dtype=np.float32)
    opt.step()
    assert np.shares_memory(after, p.data) and (after < 0.9).all()  # from then on, in place
    q = nn.Parameter(np.ones(3, dtype=np.float32))
    held = q.data
    sgd = optim.SGD([q], lr=0.1)
    q.grad = np.ones(3, dtype=np.float32)
    sgd.step()
    assert q.data is held and (held < 1).all()
