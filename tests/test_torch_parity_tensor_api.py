"""Tensor, nn and functional API that PyTorch code reaches for (clone, flatten, pow, abs, min /
amin, var / std, sigmoid, expand, repeat, split, chunk, clamp, maximum / minimum, long / int /
to, mT; nn.LayerNorm's and nn.Embedding's full signatures, nn.SiLU; F.silu, F.pad, F.one_hot).

Two halves. The first runs without torch: every new gradient against finite differences in
float64 (``tinyllm.gradcheck``, which weights the output by a fixed random R), and the errors a
user can cause. The second (``torch`` fixture: skipped when torch is missing) holds outputs and
gradients of sum(out * R) equal to torch's, and module reprs and state_dict keys to torch's.
Random inputs avoid ties (min) and zeros (abs) except where a test pins the convention there.
"""
import numpy as np
import pytest

import tinyllm
import tinyllm.functional as F
from tinyllm import Tensor, nn

TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def positive(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape)


def away_from_zero(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def distinct(*shape, seed=0):
    """Values 0.1 apart at least, shuffled: no two elements tie."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 + rng.uniform(0, 0.05, n) - n * 0.05).reshape(shape)


def check(fn, *arrays):
    """Finite differences in float64 of sum(fn(*inputs) * R) (tuple outputs: each with its own R)."""
    inputs = tuple(Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays)
    assert tinyllm.gradcheck(fn, inputs)


def assert_close(actual, expected, dtype=np.float64, **tol):
    actual = np.asarray(actual)
    expected = expected.detach().numpy() if hasattr(expected, "detach") else np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.isfinite(actual).all(), actual  # NaN == NaN would pass assert_allclose
    np.testing.assert_allclose(actual, expected, **{**TOL[dtype], **tol})


# ----------------------------------------------------------------------------------------------
# finite differences (no torch needed)


def test_clone_copies_and_passes_the_gradient():
    x = Tensor(randn(3, 4), requires_grad=True)
    y = x.clone()
    assert y.data is not x.data and not np.shares_memory(y.data, x.data)
    np.testing.assert_array_equal(y.data, x.data)
    check(lambda a: a.clone() * a, randn(3, 4))  # a tensor used twice, one use through clone


@pytest.mark.parametrize("start, end", [(0, -1), (1, -1), (0, 1), (1, 2), (-2, -1), (2, 2)])
def test_flatten_gradcheck(start, end):
    check(lambda a: a.flatten(start, end), randn(2, 3, 4))


def test_pow_abs_sigmoid_gradcheck():
    check(lambda a: a.pow(3), randn(3, 4))
    check(lambda a, b: a.pow(b), positive(3, 4), randn(4, seed=1))
    check(lambda a: a.abs(), away_from_zero(3, 4))
    check(lambda a: abs(a), away_from_zero(3, 4))
    check(lambda a: a.sigmoid(), randn(3, 4) * 4)


def test_abs_gradient_at_zero_is_zero_and_sigmoid_is_finite_at_extremes():
    x = Tensor(np.array([0.0, 2.0, -3.0]), requires_grad=True)
    x.abs().sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, -1.0])
    for dtype in (np.float32, np.float64):
        x = Tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=dtype), requires_grad=True)
        with np.errstate(over="raise", divide="raise", invalid="raise"):  # e^-x never overflows
            y = x.sigmoid()
            y.sum().backward()
        assert y.dtype == dtype and np.isfinite(y.data).all() and np.isfinite(x.grad).all()
        np.testing.assert_allclose(y.data, [0.0, np.exp(-50.0), 0.5, 1.0, 1.0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("axis, keepdims", [(None, False), (1, False), (-1, True), ((0, 2), False)])
def test_min_and_amin_gradcheck(axis, keepdims):
    check(lambda a: a.min(axis, keepdims), distinct(2, 3, 4))
    check(lambda a: a.amin(axis, keepdims), distinct(2, 3, 4))


def test_min_ties_split_the_gradient_evenly_as_max():
    x = Tensor(np.array([[1.0, -3.0, -3.0, 0.0]]), requires_grad=True)
    x.min().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 0.5, 0.5, 0.0]])
    x = Tensor(np.array([[2.0, 1.0], [0.0, 0.0]]), requires_grad=True)
    x.amin(1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 1.0], [0.5, 0.5]])


def test_argmin_gives_the_first_smallest_index():
    x = Tensor(np.array([[3.0, 1.0, 1.0], [0.0, 2.0, -1.0]]))
    assert x.argmin().item() == 5
    np.testing.assert_array_equal(x.argmin(1).data, [1, 2])
    assert x.argmin(1).dtype == np.int64 and x.argmin(-1, keepdim=True).shape == (2, 1)


@pytest.mark.parametrize("kwargs", [{}, {"dim": 1}, {"dim": (0, 2), "keepdim": True}, {"dim": -1, "correction": 0},
                                    {"dim": 1, "unbiased": False}, {"correction": 2.5}])
def test_var_and_std_gradcheck(kwargs):
    check(lambda a: a.var(**kwargs), randn(2, 3, 4))
    check(lambda a: a.std(**kwargs), randn(2, 3, 4))


def test_var_values_and_torch_default_correction():
    a = randn(3, 5)
    x = Tensor(a)
    assert_close(x.var().data, a.var(ddof=1))  # torch's default: unbiased, unlike NumPy's
    assert_close(x.var(1).data, a.var(axis=1, ddof=1))
    assert_close(x.var(1, False).data, a.var(axis=1))  # torch's positional (dim, unbiased, keepdim)
    assert_close(x.var(1, True, True).data, a.var(axis=1, ddof=1, keepdims=True))
    assert_close(x.var(False).data, a.var())  # torch's x.var(unbiased)
    assert_close(x.std(0, correction=0).data, a.std(axis=0))
    assert_close(x.std(dim=1, keepdim=True).data, a.std(axis=1, ddof=1, keepdims=True))
    assert Tensor(a.astype(np.float32)).var(1).dtype == np.float32


def test_var_with_no_degrees_of_freedom_is_nan_as_torch():
    assert np.isnan(Tensor(np.ones(1)).var().item())
    assert np.isinf(Tensor(np.array([1.0, 2.0])).var(correction=3).item())


@pytest.mark.parametrize("src, sizes", [((1, 4), (3, 4)), ((3, 1), (2, 3, 4)), ((3, 4), (2, -1, 4)),
                                       ((3, 1), ((5, 2, 3, 4),)), ((1, 1), (1, 1))])
def test_expand_gradcheck(src, sizes):
    check(lambda a: a.expand(*sizes), randn(*src))


def test_expand_is_a_read_only_view_and_sums_its_gradient():
    a = randn(3, 1)
    x = Tensor(a, requires_grad=True)
    y = x.expand(2, 3, 5)
    assert y.shape == (2, 3, 5) and np.shares_memory(y.data, x.data) and not y.data.flags.writeable
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.full((3, 1), 10.0))


@pytest.mark.parametrize("shape, reps", [((2, 3), (2, 1)), ((2, 3), (1, 3)), ((2, 3), (2, 2, 3)), ((4,), (3, 1, 2)),
                                         ((2, 1, 3), (1, 4, 1))])
def test_repeat_gradcheck_and_values(shape, reps):
    a = randn(*shape)
    np.testing.assert_array_equal(Tensor(a).repeat(*reps).data, np.tile(a, reps))
    check(lambda x: x.repeat(reps), a)


@pytest.mark.parametrize("how, dim", [(2, 0), (2, 1), ([1, 3, 1], 1), (5, -1), ([0, 4], 2)])
def test_split_gradcheck(how, dim):
    check(lambda a: a.split(how, dim), randn(4, 5, 4))


@pytest.mark.parametrize("chunks, dim", [(2, 0), (3, 1), (4, -1), (6, 1)])
def test_chunk_gradcheck(chunks, dim):
    check(lambda a: a.chunk(chunks, dim), randn(4, 5, 4))


def test_split_pieces_nanogpt_qkv():
    B, T, C = 2, 3, 4
    qkv = Tensor(randn(B, T, 3 * C))
    q, k, v = qkv.split(C, dim=2)
    for i, piece in enumerate((q, k, v)):
        np.testing.assert_array_equal(piece.data, qkv.data[:, :, i * C:(i + 1) * C])
    assert isinstance(qkv.split(C, dim=2), tuple) and isinstance(qkv.chunk(3, dim=-1), tuple)
    assert [p.shape for p in qkv.split(5, dim=2)] == [(B, T, 5), (B, T, 5), (B, T, 2)]


def test_mT_and_flatten_values_and_casts():
    a = randn(2, 3, 4)
    x = Tensor(a, requires_grad=True)
    np.testing.assert_array_equal(x.mT.data, np.swapaxes(a, -1, -2))
    check(lambda t: t.mT, a)
    assert Tensor(3.0).flatten().shape == (1,) and x.flatten(1).shape == (2, 12)
    b = np.array([-2.7, -0.5, 0.5, 2.7])
    np.testing.assert_array_equal(Tensor(b).long().data, [-2, 0, 0, 2])  # toward zero, as torch
    assert Tensor(b).long().dtype == np.int64 and Tensor(b).int().dtype == np.int32
    assert not x.long().requires_grad
    assert x.to(np.float32).dtype == np.float32 and x.to("float32").dtype == np.float32
    assert x.to("int64").dtype == np.int64 and x.to("cpu") is x and x.to(np.float64) is x


def test_silu_and_pad_gradcheck():
    check(F.silu, randn(3, 4) * 3)
    check(lambda a: nn.SiLU()(a), randn(3, 4))
    check(lambda a: F.pad(a, (1, 2)), randn(2, 3))
    check(lambda a: F.pad(a, (0, 1, 2, 0), value=-1.5), randn(2, 3, 4))
    check(lambda a: F.pad(a, (-1, 2, 1, -1)), randn(3, 4))  # negative widths cut off


def test_pad_values_follow_torch_order_last_axis_first():
    a = np.arange(6.0).reshape(2, 3)
    y = F.pad(Tensor(a), (1, 0, 0, 2), value=9.0)
    expected = np.full((4, 4), 9.0)
    expected[:2, 1:] = a
    np.testing.assert_array_equal(y.data, expected)
    assert F.pad(Tensor(a.astype(np.int64)), (1, 1)).dtype == np.int64


def test_one_hot():
    ids = np.array([[0, 3], [2, 2]])
    out = F.one_hot(ids)
    assert out.dtype == np.int64 and out.shape == (2, 2, 4) and not out.requires_grad
    np.testing.assert_array_equal(out.data, np.eye(4, dtype=np.int64)[ids])
    assert F.one_hot(Tensor(ids), num_classes=6).shape == (2, 2, 6)


def test_layer_norm_module_variants_gradcheck():
    """Gradients to the input and to each parameter the module has, set away from their ones /
    zeros init (so a swapped weight and bias would show)."""
    x = randn(2, 3, 4)
    for ln in (nn.LayerNorm(4, dtype=np.float64), nn.LayerNorm((3, 4), dtype=np.float64),
               nn.LayerNorm(4, elementwise_affine=False, dtype=np.float64), nn.LayerNorm(4, bias=False, dtype=np.float64)):
        names = [n for n, _ in ln.named_parameters()]

        def run(a, *params, ln=ln, names=names):
            for name, p in zip(names, params):
                object.__setattr__(ln, name, p)  # the checker's leaf in place of the parameter
            return ln(a)

        check(run, x, *[p.data + randn(*p.shape, seed=3) for p in ln.parameters()])


def test_layer_norm_module_parameters():
    assert [n for n, _ in nn.LayerNorm(4).named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in nn.LayerNorm(4, bias=False).named_parameters()] == ["weight"]
    ln = nn.LayerNorm(4, elementwise_affine=False)
    assert ln.parameters() == [] and ln.weight is None and ln.bias is None
    assert nn.LayerNorm((2, 3)).weight.shape == (2, 3) and nn.LayerNorm(5).normalized_shape == (5,)


@pytest.mark.parametrize("padding_idx", [0, 3, -1])
def test_embedding_padding_row_is_zero_and_gets_no_gradient(padding_idx):
    emb = nn.Embedding(5, 3, padding_idx=padding_idx, rng=np.random.default_rng(0), dtype=np.float64)
    row = padding_idx % 5
    np.testing.assert_array_equal(emb.weight.data[row], 0.0)
    assert np.abs(np.delete(emb.weight.data, row, axis=0)).min() > 0
    ids = np.array([[row, 1, row], [2, row, 4]])
    R = randn(2, 3, 3, seed=1)
    (emb(ids) * R).sum().backward()
    expected = np.zeros((5, 3))
    np.add.at(expected, ids, R)
    expected[row] = 0
    np.testing.assert_allclose(emb.weight.grad, expected, rtol=1e-12)
    # finite differences see the padding row's true gradient, which padding_idx withholds on
    # purpose (pinned above): check the other rows, with ids that miss the padding row
    others = np.array([[v for v in range(5) if v != row][:3]])
    check(lambda w: F.embedding(others, w, padding_idx=padding_idx), emb.weight.data + 1.0)


def _transposed(a):
    """The same values in a non-contiguous (Fortran-order) array."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64).T).T


def test_new_ops_on_non_contiguous_inputs_gradcheck():
    a = _transposed(distinct(3, 4))
    assert not a.flags.c_contiguous
    for fn in (lambda t: t.clone(), lambda t: t.abs(), lambda t: t.sigmoid(), lambda t: t.amin(0),
               lambda t: t.var(1), lambda t: t.flatten(), lambda t: t[:, :1].expand(2, 3, 4), lambda t: t.repeat(2, 1),
               lambda t: t.split([1, 3], 1), lambda t: t.mT, lambda t: F.pad(t, (1, -1, 0, 2)), F.silu):
        check(fn, a)


def test_composed_graph_with_a_tensor_used_twice_gradcheck():
    """nanoGPT-like use: pieces of one tensor recombined, normalised by std, activated, padded."""
    def fn(a, b):
        q, k = a.split(2, dim=-1)  # (3, 4) -> two (3, 2)
        left, right = b.chunk(2, dim=0)  # (4, 2) -> two (2, 2)
        h = (q * k.sigmoid()) @ (left + right.abs())  # (3, 2)
        h = (h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + 1.0)
        return F.pad(F.silu(h), (1, 0)).expand(2, 3, 3) + a.amin(-1, keepdim=True)
    check(fn, distinct(3, 4), away_from_zero(4, 2, seed=1))


def test_backward_twice_through_the_new_functions_accumulates():
    x = Tensor(away_from_zero(3, 4), requires_grad=True)
    y = (x.abs() + x.sigmoid()).clone().repeat(2, 1)[:, :1].expand(6, 3).amin(0) + F.pad(x, (1, 1)).var()
    y.sum().backward(retain_graph=True)
    first = x.grad.copy()
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * first, rtol=1e-12)
    with pytest.raises(RuntimeError, match="already freed"):
        y.sum().backward()


# ----------------------------------------------------------------------------------------------
# errors a user can cause name the offending value


def test_errors_name_the_offending_values():
    x = Tensor(randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"sizes \[1, 1\] .* add up to 3.*\(they add up to 2\)"):
        x.split([1, 1], dim=1)
    with pytest.raises(ValueError, match="split size must be positive, got 0"):
        x.split(0)
    with pytest.raises(ValueError, match="chunks must be a positive int, got 0"):
        x.chunk(0)
    with pytest.raises(ValueError, match=r"cannot expand shape \(2, 3, 4\) to \(2, 5, 4\): size 5 at axis 1"):
        x.expand(2, 5, 4)
    with pytest.raises(ValueError, match=r"2 sizes \(3, 4\)"):
        x.expand(3, 4)
    with pytest.raises(ValueError, match="size -1 at new leading axis 0"):
        x.expand(-1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"repeat: sizes \(2, 2\) for a tensor of shape \(2, 3, 4\)"):
        x.repeat(2, 2)
    with pytest.raises(ValueError, match=r"start_dim 2 comes after end_dim 1"):
        x.flatten(2, 1)
    with pytest.raises(ValueError, match=r"mT: .*shape \(3,\)"):
        Tensor(np.ones(3)).mT
    with pytest.raises(TypeError, match=r"min: pass axis= \(values\) or dim= \(values and indices\), not both"):
        x.min(0, dim=1)
    with pytest.raises(TypeError, match="unbiased=True.*correction=0"):
        x.var(unbiased=True, correction=0)
    with pytest.raises(ValueError, match="'cuda'"):
        x.to("cuda")
    with pytest.raises(TypeError, match="'cpux'"):
        x.to("cpux")
    with pytest.raises(ValueError, match="mode='reflect'"):
        F.pad(x, (1, 1), mode="reflect")
    with pytest.raises(ValueError, match=r"pad \(1, 1, 1\)"):
        F.pad(x, (1, 1, 1))
    with pytest.raises(ValueError, match=r"leave axis 2 .* with -1 elements"):
        F.pad(x, (-3, -2))
    with pytest.raises(ValueError, match="id 5 is out of range for num_classes=4"):
        F.one_hot(np.array([1, 5]), 4)
    with pytest.raises(ValueError, match="non-negative, got -1"):
        F.one_hot(np.array([1, -1]))
    with pytest.raises(TypeError, match="float64"):
        F.one_hot(np.array([1.0]))
    with pytest.raises(ValueError, match="padding_idx 5 is out of range for 5 embeddings"):
        nn.Embedding(5, 3, padding_idx=5)
    with pytest.raises(TypeError, match="rng="):
        nn.Embedding(5, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"input of shape \(2, 3, 4\) does not end in normalized_shape \(3,\)"):
        nn.LayerNorm(3)(x)
    with pytest.raises(ValueError, match="inplace"):
        nn.SiLU(inplace=True)


# ----------------------------------------------------------------------------------------------
# torch parity (skipped without torch)


def test_clamp_maximum_minimum_gradcheck():
    x = distinct(3, 4)  # no value within 0.05 of the bounds below: the finite differences stay on one side
    lo, hi = -0.425, 0.325
    check(lambda a: a.clamp(min=lo, max=hi), x)
    check(lambda a: a.clamp(min=lo), x)
    check(lambda a: a.clip(max=hi), x)
    b = distinct(3, 4, seed=1) + 0.025  # never equal to x
    check(lambda a, c: a.maximum(c), x, b)
    check(lambda a, c: a.minimum(c), x, b[:1])  # broadcast: the gradient sums back to (1, 4)


def test_clamp_maximum_minimum_at_the_boundary_and_at_ties():
    x = Tensor(np.array([-1.0, 0.0, 0.5, 1.0, 2.0]), requires_grad=True)
    x.clamp(0.0, 1.0).backward(np.ones(5))
    np.testing.assert_array_equal(x.grad, [0, 1, 1, 1, 0])  # both ends pass the gradient (torch's choice)
    a, b = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True), Tensor(np.array([1.0, 5.0, 0.0]), requires_grad=True)
    a.maximum(b).backward(np.ones(3))
    np.testing.assert_array_equal(a.grad, [0.5, 0, 1])
    np.testing.assert_array_equal(b.grad, [0.5, 1, 0])
    with pytest.raises(ValueError, match="min, max"):
        x.clamp()
    with pytest.raises(TypeError, match="maximum"):
        x.clamp(min=Tensor(np.zeros(5)))


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def parity(torch, ours, theirs, arrays, dtype=np.float64, seed=0, **tol):
    """Run both on the same inputs; compare the outputs (a tensor or a tuple of them) and the
    gradients of sum(out * R) (one fixed random R per output)."""
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    xs = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    outs, refs = _as_tuple(ours(*xs)), _as_tuple(theirs(*ts))
    assert len(outs) == len(refs), (len(outs), len(refs))
    rng = np.random.default_rng(seed)
    ours_loss = theirs_loss = 0
    for out, ref in zip(outs, refs):
        assert_close(out.data, ref, dtype, **tol)
        assert out.dtype == np.dtype(dtype), out.dtype
        R = rng.standard_normal(out.shape).astype(dtype)
        ours_loss = ours_loss + (out * R).sum()
        theirs_loss = theirs_loss + (ref * torch.tensor(R)).sum()
    ours_loss.backward()
    theirs_loss.backward()
    for i, (x, t) in enumerate(zip(xs, ts)):
        assert x.grad is not None, f"input {i} got no gradient"
        assert_close(x.grad, t.grad, dtype, **tol)


class _SigmoidWithWrongGradient(tinyllm.Function):
    """sigmoid whose backward is off by ``error`` (relative): what the checkers must catch."""

    error = 1e-8

    @staticmethod
    def forward(ctx, x):
        out = 1 / (1 + np.exp(-x))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out * (1 - out) * (1 + _SigmoidWithWrongGradient.error)


def test_the_checkers_can_fail(torch, monkeypatch):
    with pytest.raises(AssertionError):
        parity(torch, _SigmoidWithWrongGradient.apply, torch.sigmoid, [randn(3, 4)])
    with pytest.raises(AssertionError):  # the second piece's gradient is wrong
        parity(torch, lambda x: (x[:1], _SigmoidWithWrongGradient.apply(x[1:])),
               lambda t: (t[:1], torch.sigmoid(t[1:])), [randn(3, 4)])
    with pytest.raises(AssertionError):
        parity(torch, lambda x: x.sigmoid() * (1 + 1e-9), torch.sigmoid, [randn(3, 4)])
    monkeypatch.setattr(_SigmoidWithWrongGradient, "error", 1e-5)  # gradcheck's rtol is 1e-6
    with pytest.raises(AssertionError):
        check(_SigmoidWithWrongGradient.apply, randn(3, 4))
    parity(torch, lambda x: x.sigmoid(), torch.sigmoid, [randn(3, 4)])  # and the right one passes


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_and_clone_match_torch(torch, dtype):
    parity(torch, lambda x: x.clone() * x, lambda t: t.clone() * t, [randn(3, 4)], dtype)
    parity(torch, lambda x: x.abs(), lambda t: t.abs(), [away_from_zero(3, 4)], dtype)
    parity(torch, lambda x: abs(x), lambda t: abs(t), [away_from_zero(3, 4)], dtype)
    parity(torch, lambda x: x.pow(3), lambda t: t.pow(3), [randn(3, 4)], dtype)
    parity(torch, lambda x, y: x.pow(y), lambda t, u: t.pow(u), [positive(3, 4), randn(4, seed=1)], dtype)
    parity(torch, lambda x: x.sigmoid(), lambda t: t.sigmoid(), [randn(3, 4) * 5], dtype)
    parity(torch, lambda x: x.sigmoid(), lambda t: t.sigmoid(), [np.array([-80.0, -20.0, 0.0, 20.0, 80.0])], dtype)
    parity(torch, F.silu, torch.nn.functional.silu, [randn(3, 4) * 3], dtype)
    parity(torch, nn.SiLU(), torch.nn.SiLU(), [randn(3, 4)], dtype)
    assert repr(nn.SiLU()) == repr(torch.nn.SiLU())


def test_abs_at_zero_matches_torch(torch):
    parity(torch, lambda x: x.abs(), lambda t: t.abs(), [np.array([0.0, -1.0, 2.0])])


@pytest.mark.parametrize("kw", [{}, {"dim": 1}, {"dim": -1, "keepdim": True}, {"dim": (0, 2)}])
def test_amin_and_min_match_torch(torch, kw):
    parity(torch, lambda x: x.amin(**kw), lambda t: t.amin(**kw), [distinct(2, 3, 4)])
    ties = np.array([[1.0, -3.0, -3.0, 0.0], [2.0, 2.0, 2.0, 5.0]])
    parity(torch, lambda x: x.amin(**kw), lambda t: t.amin(**kw), [ties.reshape(2, 2, 2)])
    parity(torch, lambda x: x.min(), lambda t: t.min(), [ties])  # torch's min() (no dim) splits ties too
    x, t = Tensor(ties), torch.tensor(ties)
    np.testing.assert_array_equal(x.argmin(1).data, t.argmin(1).numpy())
    assert x.argmin().item() == t.argmin().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["var", "std"])
@pytest.mark.parametrize("args, kwargs", [((), {}), ((1,), {}), ((1, False), {}), ((1, True, True), {}), ((False,), {}),
                                          (((0, 2),), {"keepdim": True}), ((), {"dim": -1, "correction": 0}),
                                          ((), {"dim": 1, "unbiased": False, "keepdim": True}),
                                          ((), {"dim": [0, 1], "correction": 2})])
def test_var_and_std_match_torch(torch, name, args, kwargs, dtype):
    parity(torch, lambda x: getattr(x, name)(*args, **kwargs), lambda t: getattr(t, name)(*args, **kwargs),
           [randn(2, 3, 4)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shape_functions_match_torch(torch, dtype):
    a = randn(2, 3, 4)
    for args in [(), (1,), (0, 1), (-2, -1), (1, 1)]:
        parity(torch, lambda x: x.flatten(*args), lambda t: t.flatten(*args), [a], dtype)
    parity(torch, lambda x: x.mT, lambda t: t.mT, [a], dtype)
    for src, sizes in [((3, 1), (3, 5)), ((3, 1), (2, 3, 5)), ((1, 4), (2, -1, 4)), ((3, 1), (-1, 2))]:
        parity(torch, lambda x: x.expand(*sizes), lambda t: t.expand(*sizes), [randn(*src)], dtype)
    parity(torch, lambda x: x.expand((2, 3, 4)), lambda t: t.expand((2, 3, 4)), [randn(3, 1)], dtype)
    for reps in [(1, 1, 1), (2, 1, 3), (2, 1, 1, 2), [3, 1, 2, 1]]:
        parity(torch, lambda x: x.repeat(*reps), lambda t: t.repeat(*reps), [a], dtype)
    parity(torch, lambda x: x.repeat((2, 1, 1)), lambda t: t.repeat((2, 1, 1)), [a], dtype)


@pytest.mark.parametrize("how, dim", [(2, 0), (2, 1), (3, 2), ([1, 3, 0], 2), ([3, 1, 1], -2), (10, 1)])
def test_split_matches_torch(torch, how, dim):
    parity(torch, lambda x: x.split(how, dim), lambda t: t.split(how, dim), [randn(3, 5, 4)])
    parity(torch, lambda x: x.split(how, dim=dim), lambda t: torch.split(t, how, dim=dim), [randn(3, 5, 4)])


@pytest.mark.parametrize("chunks, dim", [(1, 0), (2, 0), (3, 1), (4, 1), (6, 1), (3, -1)])
def test_chunk_matches_torch(torch, chunks, dim):
    parity(torch, lambda x: x.chunk(chunks, dim), lambda t: t.chunk(chunks, dim), [randn(3, 5, 4)])


def test_nanogpt_qkv_split_matches_torch(torch):
    C = 4
    parity(torch, lambda x: x.split(C, dim=2), lambda t: t.split(C, dim=2), [randn(2, 3, 3 * C)])


def test_casts_and_to_match_torch(torch):
    b = np.array([-2.7, -0.5, 0.5, 2.7, 7.0])
    x, t = Tensor(b), torch.tensor(b)
    for ours, theirs in [(x.long(), t.long()), (x.int(), t.int()), (x.to(np.float32), t.to(torch.float32)),
                         (x.to("int64"), t.to(torch.int64))]:
        assert ours.dtype == np.dtype(str(theirs.dtype).replace("torch.", ""))
        np.testing.assert_array_equal(ours.data, theirs.numpy())
    parity(torch, lambda x: x.to(np.float32).to(np.float64) * x, lambda t: t.to(torch.float32).to(torch.float64) * t,
           [randn(3)], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pad_matches_torch(torch, dtype):
    for widths, value in [((1, 2), 0.0), ((0, 1, 2, 0), -1.5), ((1, 1, 1, 1, 1, 1), 2.0), ((-1, 2, 1, -1), 0.0),
                          ((2, -3), 4.0)]:
        parity(torch, lambda x: F.pad(x, widths, value=value),
               lambda t: torch.nn.functional.pad(t, widths, value=value), [randn(2, 3, 4)], dtype)


def test_one_hot_matches_torch(torch):
    ids = np.array([[0, 3], [2, 2]])
    for n in (-1, 4, 7):
        ours, theirs = F.one_hot(ids, n), torch.nn.functional.one_hot(torch.tensor(ids), n)
        assert ours.dtype == np.int64 and theirs.dtype == torch.int64
        np.testing.assert_array_equal(ours.data, theirs.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args, kwargs", [((4,), {}), (((3, 4),), {}), ((4,), {"elementwise_affine": False}),
                                          ((4,), {"bias": False}), ((4, 1e-3), {}), (((3, 4), 1e-5, False), {})])
def test_layer_norm_module_matches_torch(torch, args, kwargs, dtype):
    ours, theirs = nn.LayerNorm(*args, **kwargs, dtype=dtype), torch.nn.LayerNorm(*args, **kwargs, dtype=torch.float64)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    state = {k: v.detach().numpy() + randn(*v.shape, seed=i + 1) for i, (k, v) in enumerate(theirs.state_dict().items())}
    ours.load_state_dict(state)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    theirs = theirs.to(torch.float32) if dtype == np.float32 else theirs
    parity(torch, ours, theirs, [randn(2, 3, 4)], dtype, rtol=1e-4 if dtype == np.float32 else 1e-10)
    if not ours.parameters():
        return
    ours.zero_grad(), theirs.zero_grad()
    x, R = randn(2, 3, 4).astype(dtype), randn(2, 3, 4, seed=9).astype(dtype)
    (ours(Tensor(x)) * R).sum().backward()
    (theirs(torch.tensor(x)) * torch.tensor(R)).sum().backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert_close(p.grad, q.grad, dtype, **({"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {}))


@pytest.mark.parametrize("padding_idx", [None, 0, 2, -1, -5])
def test_embedding_padding_idx_matches_torch(torch, padding_idx):
    ours = nn.Embedding(5, 3, padding_idx=padding_idx, dtype=np.float64)
    theirs = torch.nn.Embedding(5, 3, padding_idx=padding_idx, dtype=torch.float64)
    assert repr(ours) == repr(theirs) and ours.padding_idx == theirs.padding_idx
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if padding_idx is not None:  # both start the padding row at zero
        np.testing.assert_array_equal(ours.weight.data[padding_idx], 0.0)
        np.testing.assert_array_equal(theirs.weight.detach().numpy()[padding_idx], 0.0)
    weight = randn(5, 3, seed=4)  # a non-zero padding row: its gradient must still be zero
    ours.load_state_dict({"weight": weight})
    theirs.load_state_dict({"weight": torch.tensor(weight)})
    ids = np.array([[0, 2, 4, 2], [4, 4, 1, 0]])
    R = randn(2, 4, 3, seed=5)
    out, ref = ours(ids), theirs(torch.tensor(ids))
    assert_close(out.data, ref)
    (out * R).sum().backward()
    (ref * torch.tensor(R)).sum().backward()
    assert_close(ours.weight.grad, theirs.weight.grad)
    parity(torch, lambda w: F.embedding(ids, w, padding_idx=padding_idx),
           lambda w: torch.nn.functional.embedding(torch.tensor(ids), w, padding_idx=padding_idx), [weight])


@pytest.mark.parametrize("dtype", DTYPES)
def test_clamp_maximum_minimum_match_torch(torch, dtype):
    x = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0], [0.3, -0.2, 1.0, 0.0, 0.7]])  # values on both bounds
    parity(torch, lambda a: a.clamp(0.0, 1.0), lambda t: t.clamp(0.0, 1.0), [x], dtype)
    parity(torch, lambda a: a.clamp(max=0.5), lambda t: t.clamp(max=0.5), [x], dtype)
    y = np.array([[-1.0, 1.0, 0.5, 0.0, 3.0], [0.3, 0.2, -1.0, 0.0, 0.7]])  # ties with x in places
    parity(torch, lambda a, b: a.maximum(b), torch.maximum, [x, y], dtype)
    parity(torch, lambda a, b: a.minimum(b), torch.minimum, [x, y[:1]], dtype)
    parity(torch, lambda a, b: a.max(b), lambda t, u: t.max(u), [x, y], dtype)  # torch's element-wise overloads
    parity(torch, lambda a, b: a.min(b), lambda t, u: t.min(u), [x, y], dtype)
