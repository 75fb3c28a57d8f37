"""A whole Transformer block for one new position (tinyllm/kernels/decode.py) against its NumPy
reference on awkward shapes, and bit for bit against nn.Block run layer by layer: generation
takes the fused step under no_grad, and it must not change a single logit."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyllm
from kernel_helpers import assert_close
from tinyllm import nn
from tinyllm.kernels import decode, gemv
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.tensor import no_grad


def block_weights(rng, C, inner, dtype, columns, bias, scale=1.0):
    """norms, linears as kernels.decode takes them; ``columns[i]``: linear i in columns layout
    (the transpose of a C-contiguous array, as a memory-mapped GPT-2 Conv1D weight)."""
    def weight(n, k, cols):
        w = rng.standard_normal((k, n) if cols else (n, k)) * scale / np.sqrt(k)
        return (w.astype(dtype).T if cols else w.astype(dtype))

    def vec(n):
        return rng.standard_normal(n).astype(dtype) if bias else None

    shapes = dict(attn=(3 * C, C), attn_proj=(C, C), fc=(inner, C), mlp_proj=(C, inner))
    linears = {name: (weight(n, k, cols), vec(n)) for (name, (n, k)), cols in zip(shapes.items(), columns)}
    norms = {name: ((1 + 0.1 * rng.standard_normal(C)).astype(dtype), vec(C)) for name in ("ln_1", "ln_2")}
    return norms, linears


@settings(deadline=None, max_examples=40)
@given(batch=st.integers(1, gemv.MAX_ROWS), n_head=st.integers(1, 4), head_dim=st.integers(1, 9),
       inner=st.integers(1, 40), start=st.integers(0, 12), spare=st.integers(0, 3),
       dtype=st.sampled_from([np.float32, np.float64]), columns=st.lists(st.booleans(), min_size=4, max_size=4),
       bias=st.booleans(), approximate=st.sampled_from(["tanh", "none"]), seed=st.integers(0, 2**16))
def test_block_step_matches_reference(batch, n_head, head_dim, inner, start, spare, dtype, columns, bias,
                                      approximate, seed):
    rng = np.random.default_rng(seed)
    C = n_head * head_dim
    L = start + 1 + spare
    norms, linears = block_weights(rng, C, inner, dtype, columns, bias)
    x = rng.standard_normal((batch, C)).astype(dtype)
    k0 = rng.standard_normal((batch, n_head, L, head_dim)).astype(dtype)
    v0 = rng.standard_normal((batch, n_head, L, head_dim)).astype(dtype)
    caches = [(k0.copy(), v0.copy()) for _ in range(2)]
    got = decode.block_step(x, *caches[0], start, n_head, norms, linears, 1e-5, approximate)
    want = decode.block_step_ref(x, *caches[1], start, n_head, norms, linears, 1e-5, approximate)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert got.shape == (batch, C) and got.dtype == dtype
    assert_close(got, want, tol)
    for a, b, before in zip(caches[0], caches[1], (k0, v0)):
        assert_close(a[:, :, start], b[:, :, start], tol)  # the new keys and values
        np.testing.assert_array_equal(np.delete(a, start, axis=2), np.delete(before, start, axis=2))


def test_extreme_inputs_and_a_one_position_cache_stay_finite():
    rng = np.random.default_rng(3)
    norms, linears = block_weights(rng, 8, 24, np.float32, [True, False, True, False], True, scale=30.0)
    x = (rng.standard_normal((2, 8)) * 1e4).astype(np.float32)
    k, v = np.zeros((2, 2, 1, 4), np.float32), np.zeros((2, 2, 1, 4), np.float32)
    got = decode.block_step(x, k, v, 0, 2, norms, linears)
    want = decode.block_step_ref(x, k.copy(), v.copy(), 0, 2, norms, linears)
    assert_close(got, want, 1e-5)


def test_bad_arguments_are_refused_with_the_values():
    rng = np.random.default_rng(0)
    norms, linears = block_weights(rng, 8, 16, np.float32, [False] * 4, True)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    k = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="exceed the cache's max_len 3"):
        decode.block_step(x, k, k.copy(), 3, 2, norms, linears)
    with pytest.raises(ValueError, match=r"k_cache must be float32 \(B, H, L, D\) = \(1, 4, L, 2\)"):
        decode.block_step(x, k, k.copy(), 0, 4, norms, linears)
    bad = dict(linears, fc=(linears["fc"][0][:, :7], linears["fc"][1]))
    with pytest.raises(ValueError, match=r"fc weight must be float32 \(16, 8\)"):
        decode.block_step(x, k, k.copy(), 0, 2, norms, bad)


# --- bit for bit against the layers one by one ----------------------------------------------------

def _layer_by_layer(monkeypatch):
    monkeypatch.setattr(nn.Block, "_decode_step", lambda self, x, kv_cache: None)


def _steps(model, ids, steps):
    """Logits of the prompt and of ``steps`` single-position steps, and the KV cache after them."""
    with no_grad():
        cache = model.new_kv_cache(ids.shape[0], max_len=ids.shape[1] + steps)
        logits = [model(ids, kv_cache=cache)[0].data]
        for t in range(steps):
            logits.append(model(ids[:, t:t + 1], kv_cache=cache, last_only=True)[0].data)
    return logits, cache


def _gpt(activation, bias=True, dtype=np.float32, n_embd=24, n_head=3):
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=n_head, n_embd=n_embd,
                          activation=activation, bias=bias), seed=1)
    if dtype != np.float32:
        for p in model.parameters():
            p.data = p.data.astype(dtype)
    return model.eval()


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the fused step needs compiled kernels")
@pytest.mark.parametrize("activation, bias, dtype, hf_file", [
    ("gelu_tanh", True, np.float32, False), ("gelu_tanh", True, np.float32, True),
    ("gelu", False, np.float32, False), ("gelu", True, np.float64, False)])
def test_the_fused_step_gives_the_layers_bits(activation, bias, dtype, hf_file, tmp_path, monkeypatch):
    model = _gpt(activation, bias, dtype)
    if hf_file:  # GPT-2's Conv1D weights, memory-mapped: the columns layout
        model.save_pretrained(tmp_path, format="huggingface")
        model = tinyllm.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert not model.transformer.h[0].attn.c_attn.weight.data.flags.c_contiguous
    calls = []
    real = decode.block_step
    monkeypatch.setattr(decode, "block_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    tinyllm.use_reference(False)  # the dispatcher looks block_step up again
    ids = np.random.default_rng(0).integers(0, 50, (3, 5))
    fused, fused_cache = _steps(model, ids, 4)
    assert len(calls) == 4 * 2  # every single-position step of both blocks took it
    _layer_by_layer(monkeypatch)
    layers, layers_cache = _steps(model, ids, 4)
    for a, b in zip(fused, layers):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fused_cache.k, layers_cache.k)
    np.testing.assert_array_equal(fused_cache.v, layers_cache.v)


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the fused step needs compiled kernels")
def test_serial_and_parallel_fused_steps_agree(monkeypatch):
    model = _gpt("gelu_tanh", n_embd=64, n_head=4)
    ids = np.random.default_rng(1).integers(0, 50, (2, 6))
    tinyllm.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    monkeypatch.setattr(gemv, "SERIAL_WORK", 1 << 62)
    serial, _ = _steps(model, ids, 3)
    monkeypatch.setattr(gemv, "SERIAL_WORK", 0)
    parallel, _ = _steps(model, ids, 3)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_the_fused_step_is_not_taken_where_a_gradient_may_be_taken():
    model = _gpt("gelu_tanh")
    cache = model.new_kv_cache(1, max_len=4)
    ids = np.array([[1, 2]])
    with no_grad():
        model(ids[:, :1], kv_cache=cache)
    logits, _ = model(ids[:, 1:], kv_cache=cache)  # grad mode on: the layers, with a graph
    assert logits.requires_grad
    logits.sum().backward()
    assert model.transformer.h[0].attn.c_attn.weight.grad is not None


def test_without_compiled_kernels_the_layers_run(monkeypatch):
    rng = np.random.default_rng(0)
    norms, linears = block_weights(rng, 8, 16, np.float32, [True] * 4, True)
    x, k = np.zeros((1, 8), np.float32), np.zeros((1, 2, 3, 4), np.float32)
    assert decode.block_step_applies(x, k, 0, norms, linears) == (not numba.config.DISABLE_JIT)
    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    assert not decode.block_step_applies(x, k, 0, norms, linears)
    strided = dict(linears, fc=(np.zeros((32, 16), np.float32)[::2, ::2], None))  # neither layout
    monkeypatch.setattr(numba.config, "DISABLE_JIT", False)
    assert not decode.block_step_applies(x, k, 0, norms, strided)
    assert not decode.block_step_applies(x, k, 3, norms, linears)  # the cache is full
