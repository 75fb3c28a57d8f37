"""tinyllm.nn: the Module API (PyTorch's), every layer's numbers against a plain NumPy formula,
and every layer's gradients (inputs *and* parameters) against finite differences with
``tinyllm.gradcheck`` in float64 on tiny shapes.
"""
import inspect
import math

import numpy as np
import pytest

import tinyllm
from tinyllm import functional as F
from tinyllm import nn
from tinyllm.gradcheck import GradcheckError, gradcheck
from tinyllm.tensor import Tensor, no_grad


# ----------------------------------------------------------------------------------------------
# helpers


def module_gradcheck(module, x, param_names=None, **kw):
    """gradcheck ``module(x)`` w.r.t. ``x`` (when float) and the named parameters.

    gradcheck hands ``fn`` fresh float64 tensors, so ``fn`` plugs them into the module in place of
    the parameters they stand for -- at *every* place a parameter sits (a tied weight is one
    input that appears twice) -- runs the module, and puts the real parameters back.
    """
    module.double()
    named = dict(module.named_parameters())
    names = list(named) if param_names is None else list(param_names)
    sites = []  # per name: every (owner module, attribute) holding that Parameter
    for name in names:
        target = named[name]
        sites.append([(m, a) for _, m in module.named_modules() for a, p in m._parameters.items() if p is target])
        assert sites[-1], name

    def fn(x_in, *params):
        saved = [[(m, a, getattr(m, a)) for m, a in where] for where in sites]
        for where, p in zip(sites, params):
            for m, a in where:
                object.__setattr__(m, a, p)  # bypass registration: a temporary stand-in
        try:
            return module(x_in)
        finally:
            for entries in saved:
                for m, a, original in entries:
                    object.__setattr__(m, a, original)

    x_in = Tensor(np.asarray(x, dtype=np.float64), requires_grad=True) if np.asarray(x).dtype.kind == "f" else x
    params = [Tensor(named[n].data.copy(), requires_grad=True) for n in names]
    return gradcheck(fn, (x_in, *params), **kw)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _attention_ref(x, w_attn, b_attn, w_proj, b_proj, n_head):
    """GPT-2 causal self-attention in plain NumPy (float64): c_attn's output is [q | k | v]."""
    B, T, C = x.shape
    D = C // n_head
    qkv = x @ w_attn.T + b_attn  # (B, T, 3C)
    q, k, v = np.split(qkv, 3, axis=-1)
    heads = lambda a: a.reshape(B, T, n_head, D).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    y = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    return y @ w_proj.T + b_proj


class Tiny(nn.Module):
    """Two Linears and a LayerNorm: a small tree to exercise the Module API."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4, rng=np.random.default_rng(1))
        self.norm = nn.LayerNorm(4)
        self.fc2 = nn.Linear(4, 2, bias=False, rng=np.random.default_rng(2))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(self.norm(self.fc1(x))))


# ----------------------------------------------------------------------------------------------
# Module API


def test_named_parameters_walk_the_tree_in_assignment_order_with_dotted_names():
    m = Tiny()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight"]
    assert [p is q for p, (_, q) in zip(m.parameters(), m.named_parameters())] == [True] * 5
    assert m.num_parameters() == 3 * 4 + 4 + 4 + 4 + 4 * 2


def test_tied_parameter_listed_once_but_state_dict_has_both_names():
    m = Tiny()
    m.fc3 = nn.Linear(4, 3, bias=False)
    m.fc3.weight = m.fc1.weight  # tie (4, 3) to (4, 3): as GPT ties lm_head to wte
    names = [n for n, _ in m.named_parameters()]
    assert "fc3.weight" not in names and names.count("fc1.weight") == 1
    assert len(m.parameters()) == 5
    assert len({id(p) for p in m.parameters()}) == 5
    all_names = [n for n, _ in m.named_parameters(remove_duplicate=False)]
    assert "fc3.weight" in all_names
    sd = m.state_dict()
    assert sd["fc3.weight"] is sd["fc1.weight"]
    assert m.num_parameters() == 3 * 4 + 4 + 4 + 4 + 4 * 2


def test_module_list_and_dict_name_children_like_pytorch():
    layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    assert len(layers) == 2 and layers[1] is list(layers)[1]
    assert [n for n, _ in layers.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    d = nn.ModuleDict({"a": nn.LayerNorm(2), "h": layers})
    assert "h" in d and d["a"] is d._modules["a"] and list(d.keys()) == ["a", "h"]
    assert [n for n, _ in d.named_parameters()] == [
        "a.weight", "a.bias", "h.0.weight", "h.0.bias", "h.1.weight", "h.1.bias"]
    assert [n for n, _ in d.named_modules()] == ["", "a", "h", "h.0", "h.1"]


def test_setting_attributes_before_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\).*'w'"):
        Bad()


def test_reassigning_an_attribute_unregisters_the_old_parameter():
    m = Tiny()
    m.fc2 = None
    assert [n for n, _ in m.named_parameters()] == ["fc1.weight", "fc1.bias", "norm.weight", "norm.bias"]


def test_linear_weight_is_out_by_in_and_computes_x_wT_plus_b():
    lin = nn.Linear(5, 3, rng=np.random.default_rng(0))
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)
    bound = 1 / math.sqrt(5)
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float32)
    y = lin(Tensor(x))
    assert y.shape == (2, 4, 3)
    np.testing.assert_allclose(y.data, x @ lin.weight.data.T + lin.bias.data, rtol=1e-5, atol=1e-6)
    assert nn.Linear(5, 3, bias=False).bias is None
    assert [n for n, _ in nn.Linear(5, 3, bias=False).named_parameters()] == ["weight"]


def test_linear_rejects_wrong_feature_count_naming_both_shapes():
    lin = nn.Linear(5, 3)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(3, 5\)"):
        lin(Tensor(np.zeros((2, 4), dtype=np.float32)))


def test_load_state_dict_round_trip_copies_values():
    a, b = Tiny(), Tiny()
    for p in b.parameters():
        p.data = p.data + 1.0
    sd = b.state_dict()
    missing, unexpected = a.load_state_dict(sd)
    assert missing == [] and unexpected == []
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
        assert not np.shares_memory(p.data, q.data), n  # a copy, not an alias
    sd["fc1.weight"][...] = 123.0
    assert not (a.fc1.weight.data == 123.0).any()


def test_load_state_dict_strict_names_missing_keys():
    m = Tiny()
    sd = dict(m.state_dict())
    del sd["norm.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['norm.bias'\]"):
        m.load_state_dict(sd)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["norm.bias"] and unexpected == []


def test_load_state_dict_strict_names_unexpected_keys():
    m = Tiny()
    sd = dict(m.state_dict())
    sd["fc9.weight"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys \['fc9.weight'\]"):
        m.load_state_dict(sd)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == [] and unexpected == ["fc9.weight"]


def test_load_state_dict_names_mis_shaped_keys_even_when_not_strict():
    m = Tiny()
    before = m.fc1.weight.data.copy()
    sd = dict(m.state_dict())
    sd["fc1.weight"] = np.zeros((3, 4), dtype=np.float32)
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"fc1.weight: checkpoint \(3, 4\) vs model \(4, 3\)"):
            m.load_state_dict(sd, strict=strict)
    np.testing.assert_array_equal(m.fc1.weight.data, before)  # nothing half-loaded


def test_train_and_eval_propagate_to_every_submodule():
    m = Tiny()
    assert all(mod.training for mod in m.modules())
    assert m.eval() is m
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    m.train(False)
    assert not m.drop.training


def test_dropout_acts_in_train_mode_only():
    drop = nn.Dropout(0.5, rng=np.random.default_rng(0))
    x = Tensor(np.ones((200, 50), dtype=np.float32))
    y = drop(x).data
    assert set(np.unique(y)) == {0.0, 2.0}  # kept ones scaled by 1 / (1 - p)
    assert 0.45 < (y == 0).mean() < 0.55
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="1.5"):
        nn.Dropout(1.5)


def test_zero_grad_clears_or_zeroes_every_gradient():
    m = Tiny()
    (m(Tensor(np.ones((2, 3), dtype=np.float32))) * Tensor(np.ones((2, 2), dtype=np.float32))).sum().backward()
    assert all(p.grad is not None and np.abs(p.grad).sum() > 0 for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_repr_shows_layers_and_parameter_counts():
    m = Tiny()
    text = repr(m)
    assert text.startswith("Tiny(")
    assert "(fc1): Linear(in_features=3, out_features=4, bias=True)" in text
    assert "(fc2): Linear(in_features=4, out_features=2, bias=False)" in text
    assert "(norm): LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=True)" in text
    assert text.rstrip().endswith(f"# {m.num_parameters():,} parameters")
    assert repr(nn.Embedding(10, 3)) == "Embedding(10, 3)"


def test_double_casts_parameters_and_buffers():
    pe = nn.PositionalEncoding(6, 4)
    m = Tiny()
    m.pe = pe
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert pe.table.dtype == np.float64
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())


# ----------------------------------------------------------------------------------------------
# layers' values


def test_embedding_looks_up_rows_and_rejects_bad_ids():
    emb = nn.Embedding(7, 3, rng=np.random.default_rng(0))
    ids = np.array([[0, 6, 6], [2, 1, 0]])
    np.testing.assert_array_equal(emb(ids).data, emb.weight.data[ids])
    with pytest.raises(ValueError, match=r"id 7 is out of range.*0\.\.6"):
        emb(np.array([1, 7]))
    with pytest.raises(ValueError, match=r"id -1"):
        emb(np.array([-1, 2]))
    with pytest.raises(TypeError, match="float"):
        emb(np.array([1.0, 2.0]))


def test_layer_norm_matches_formula():
    ln = nn.LayerNorm(6)
    rng = np.random.default_rng(0)
    ln.weight.data = rng.standard_normal(6).astype(np.float32)
    ln.bias.data = rng.standard_normal(6).astype(np.float32)
    x = (rng.standard_normal((2, 3, 6)) * 3 + 1).astype(np.float32)
    np.testing.assert_allclose(ln(Tensor(x)).data, _layer_norm(x.astype(np.float64), ln.weight.data, ln.bias.data),
                               rtol=1e-4, atol=1e-5)


def test_feed_forward_matches_formula_and_rejects_unknown_activation():
    ff = nn.FeedForward(4, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    h = _gelu_tanh(x @ ff.c_fc.weight.data.T.astype(np.float64) + ff.c_fc.bias.data)
    want = h @ ff.c_proj.weight.data.T.astype(np.float64) + ff.c_proj.bias.data
    np.testing.assert_allclose(ff(Tensor(x.astype(np.float32))).data, want, rtol=1e-4, atol=1e-5)
    assert ff.c_fc.weight.shape == (16, 4) and ff.c_proj.weight.shape == (4, 16)
    with pytest.raises(ValueError, match="swish"):
        nn.FeedForward(4, activation="swish")


def test_feed_forward_relu_with_a_chosen_width():
    """The original Transformer's FFN: max(0, x W1 + b1) W2 + b2, with d_ff = n_inner."""
    ff = nn.FeedForward(4, activation="relu", n_inner=6, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    h = np.maximum(x @ ff.c_fc.weight.data.T.astype(np.float64) + ff.c_fc.bias.data, 0)
    want = h @ ff.c_proj.weight.data.T.astype(np.float64) + ff.c_proj.bias.data
    assert ff.c_fc.weight.shape == (6, 4) and ff.c_proj.weight.shape == (4, 6)
    np.testing.assert_allclose(ff(Tensor(x.astype(np.float32))).data, want, rtol=1e-4, atol=1e-5)


def test_multi_head_attention_matches_numpy_reference():
    attn = nn.MultiHeadAttention(8, 2, rng=np.random.default_rng(0)).double()
    for p in attn.parameters():  # non-zero biases so the [q | k | v] split is exercised
        p.data = np.random.default_rng(p.size).standard_normal(p.shape) * 0.5
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    want = _attention_ref(x, attn.c_attn.weight.data, attn.c_attn.bias.data, attn.c_proj.weight.data,
                          attn.c_proj.bias.data, 2)
    got = attn(Tensor(x)).data
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


def test_multi_head_attention_is_causal():
    attn = nn.MultiHeadAttention(8, 2, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 6, 8)).astype(np.float32)
    y = attn(Tensor(x)).data
    x2 = x.copy()
    x2[:, 4:] += 5.0  # change the future
    y2 = attn(Tensor(x2)).data
    np.testing.assert_array_equal(y[:, :4], y2[:, :4])
    assert not np.allclose(y[:, 4:], y2[:, 4:])


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1], [3, 2], [2, 1, 2]])
def test_multi_head_attention_with_kv_cache_equals_full_sequence(chunks):
    attn = nn.MultiHeadAttention(8, 2, rng=np.random.default_rng(0)).double()
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    full = attn(Tensor(x)).data
    cache = nn.KVCache(1, 2, 2, 5, 4, dtype=np.float64)
    outs, start = [], 0
    for n in chunks:
        outs.append(attn(Tensor(x[:, start:start + n]), kv_cache=cache).data)
        cache.advance(n)
        start += n
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="6 positions exceed.*max_len 5"):
        attn(Tensor(x[:, :1]), kv_cache=cache)


def test_multi_head_attention_rejects_n_embd_not_divisible_by_n_head():
    with pytest.raises(ValueError, match="n_embd=10.*n_head=4"):
        nn.MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="n_embd=10.*n_head=4"):
        nn.Block(10, 4)


def test_block_is_pre_layernorm_residual():
    blk = nn.Block(8, 2, rng=np.random.default_rng(0)).double()
    x = Tensor(np.random.default_rng(1).standard_normal((2, 3, 8)))
    h = x.data + blk.attn(blk.ln_1(x)).data
    want = h + blk.mlp(blk.ln_2(Tensor(h))).data
    np.testing.assert_allclose(blk(x).data, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# positional encodings


def test_sinusoidal_table_matches_the_paper_formula():
    for d_model in (6, 7):  # even and odd widths
        table = nn.sinusoidal_table(9, d_model, dtype=np.float64)
        assert table.shape == (9, d_model)
        for pos in range(9):
            for i in range(d_model):
                angle = pos / 10000 ** ((i - i % 2) / d_model)
                want = math.sin(angle) if i % 2 == 0 else math.cos(angle)
                assert table[pos, i] == pytest.approx(want, abs=1e-12), (pos, i)


def test_positional_encoding_has_no_parameters_and_checks_positions():
    pe = nn.PositionalEncoding(8, 4)
    assert pe.parameters() == [] and dict(pe.state_dict()) == {}
    out = pe(np.arange(2, 5))
    np.testing.assert_array_equal(out.data, nn.sinusoidal_table(8, 4)[2:5])
    assert not out.requires_grad
    with pytest.raises(ValueError, match="position 8 is beyond max_len 8"):
        pe(np.arange(9))
    with pytest.raises(ValueError, match="max_len 1,000,000,000 x d_model 128 "):
        nn.PositionalEncoding(10**9, 128)  # refused before the 1 TB table is allocated


def test_learned_positional_embedding_names_block_size_on_overflow():
    wpe = nn.LearnedPositionalEmbedding(4, 3)
    assert wpe(np.arange(4)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"position 4 .*4 positions"):
        wpe(np.arange(5))


# ----------------------------------------------------------------------------------------------
# gradients: every layer, inputs and parameters, float64 finite differences


def test_gradcheck_linear():
    assert module_gradcheck(nn.Linear(3, 2, rng=np.random.default_rng(0)),
                            np.random.default_rng(1).standard_normal((2, 2, 3)))


def test_gradcheck_embedding_with_repeated_ids():
    emb = nn.Embedding(5, 3, rng=np.random.default_rng(0))
    assert module_gradcheck(emb, np.array([[0, 3, 3], [4, 0, 3]]))


def test_gradcheck_layer_norm():
    ln = nn.LayerNorm(5)
    ln.weight.data = np.random.default_rng(2).standard_normal(5).astype(np.float32)
    assert module_gradcheck(ln, np.random.default_rng(1).standard_normal((2, 3, 5)))


def test_gradcheck_multi_head_attention():
    attn = nn.MultiHeadAttention(4, 2, rng=np.random.default_rng(0))
    for p in attn.parameters():
        p.data = np.random.default_rng(p.size).standard_normal(p.shape).astype(np.float32) * 0.5
    assert module_gradcheck(attn, np.random.default_rng(1).standard_normal((2, 3, 4)))


class SameDraws:
    """A stand-in for a Generator whose random() gives the same numbers on every call, so that
    dropout draws one fixed mask however often gradcheck runs the module."""

    def random(self, shape):
        return np.random.default_rng(5).random(shape)


def test_gradcheck_multi_head_attention_with_attention_and_residual_dropout(monkeypatch):
    # in training mode with dropout the module splits the heads and takes the composed attention
    # (the packed kernel has no dropout): that path's gradient, dropout masks included
    dropout_ps = []
    composed = F.attention_composed

    def counted(*args, **kwargs):
        bound = inspect.signature(composed).bind(*args, **kwargs)
        bound.apply_defaults()
        dropout_ps.append(bound.arguments["dropout_p"])
        return composed(*args, **kwargs)

    monkeypatch.setattr(F, "attention_composed", counted)
    attn = nn.MultiHeadAttention(4, 2, dropout=0.3, rng=np.random.default_rng(0))
    for p in attn.parameters():
        p.data = np.random.default_rng(p.size).standard_normal(p.shape).astype(np.float32) * 0.5
    attn.attn_rng = attn.resid_dropout.rng = SameDraws()
    attn.train()
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    dropped = attn.double()(Tensor(x)).data == 0
    assert dropped.any() and not dropped.all()
    assert module_gradcheck(attn, x)
    assert dropout_ps and set(dropout_ps) == {0.3}  # the attention probabilities were dropped out


def test_gradcheck_feed_forward():
    ff = nn.FeedForward(3, rng=np.random.default_rng(0))
    assert module_gradcheck(ff, np.random.default_rng(1).standard_normal((2, 2, 3)))


def test_gradcheck_feed_forward_exact_gelu():
    ff = nn.FeedForward(3, activation="gelu", rng=np.random.default_rng(0))
    assert module_gradcheck(ff, np.random.default_rng(1).standard_normal((1, 2, 3)))


def test_gradcheck_block():
    blk = nn.Block(4, 2, rng=np.random.default_rng(0))
    for name, p in blk.named_parameters():  # move away from the identity-like default LayerNorm
        p.data = (p.data + np.random.default_rng(len(name)).standard_normal(p.shape) * 0.3).astype(np.float32)
    assert module_gradcheck(blk, np.random.default_rng(1).standard_normal((1, 3, 4)))


def test_module_gradcheck_fails_on_a_wrong_parameter_gradient(monkeypatch):
    """The helper really checks parameters: a Linear whose weight gradient is 0.01% off is caught."""
    original = F.Linear.backward

    def wrong_backward(ctx, g):
        dx, dw, db = original(ctx, g)
        return dx, (dw * 1.0001 if dw is not None else None), db

    monkeypatch.setattr(F.Linear, "backward", staticmethod(wrong_backward))
    with pytest.raises(GradcheckError, match="input 1"):
        module_gradcheck(nn.Linear(3, 2, rng=np.random.default_rng(0)), np.random.default_rng(1).standard_normal((2, 3)))


def test_no_grad_forward_records_no_graph():
    lin = nn.Linear(3, 2)
    with no_grad():
        y = lin(Tensor(np.ones((1, 3), dtype=np.float32)))
    assert not y.requires_grad
    assert isinstance(tinyllm.nn.Parameter(np.zeros(2, dtype=np.float32)), Tensor)
