"""The inference shortcuts of performance round 2 keep their promises: a memory-mapped
from_pretrained that never writes the file, ``load_state_dict(assign=True)``, a model built
without drawing weights, the unstable sort with ties put back in index order, and the one-Function
cached attention of MultiHeadAttention (equal to the step-by-step path it replaces)."""
import numpy as np
import pytest

from tinyllm import nn, no_grad
from tinyllm.generation import _descending_order, apply_top_k, apply_top_p
from tinyllm.models import GPT, GPTConfig
from tinyllm.models import io

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


@pytest.mark.parametrize("seed", range(5))
def test_descending_order_equals_a_stable_sort_with_ties(seed):
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 4, (3, 50)).astype(np.float64)  # many ties
    logits[0, 5:20] = -np.inf
    np.testing.assert_array_equal(_descending_order(logits), np.argsort(-logits, axis=-1, kind="stable"))
    top_k = apply_top_k(rng.standard_normal((2, 40)), 5)  # 35 ties at -inf
    np.testing.assert_array_equal(_descending_order(top_k), np.argsort(-top_k, axis=-1, kind="stable"))


def test_apply_top_p_keeps_the_lower_index_of_equal_logits():
    logits = np.log(np.array([[0.2, 0.3, 0.2, 0.3]]))
    kept = np.isfinite(apply_top_p(logits, 0.7))  # 0.3 (1), 0.3 (3), then the first 0.2 (0)
    np.testing.assert_array_equal(kept, [[True, True, False, True]])


def test_load_state_dict_assign_keeps_the_array_and_the_default_copies():
    lin = nn.Linear(3, 2, rng=np.random.default_rng(0))
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    lin.load_state_dict({"weight": w, "bias": np.zeros(2, np.float32)}, assign=True)
    assert lin.weight.data is w
    lin.load_state_dict({"weight": w, "bias": np.zeros(2, np.float32)})
    assert not np.shares_memory(lin.weight.data, w)


def test_a_model_built_without_initial_weights_loads_the_same_as_one_built_with_them(tmp_path):
    model = GPT(GPTConfig(**TINY), seed=3)
    empty = GPT(GPTConfig(**TINY), init_weights=False)
    drawn = [p for n, p in empty.named_parameters() if n.endswith("weight") and p.ndim == 2]  # Linear, Embedding
    assert drawn and all(not p.data.any() and p.data.strides == (0, 0) for p in drawn)
    empty.load_state_dict(model.state_dict(), assign=False)
    x = np.random.default_rng(0).integers(0, 11, (2, 5))
    np.testing.assert_array_equal(empty(x)[0].data, model(x)[0].data)


@pytest.mark.parametrize("fmt", ["tinyllm", "huggingface"])
def test_from_pretrained_maps_the_file_and_training_never_writes_it(tmp_path, fmt):
    from tinyllm import optim

    GPT(GPTConfig(**TINY), seed=1).save_pretrained(tmp_path, format=fmt)
    weights = tmp_path / "model.safetensors"
    before = weights.read_bytes()
    model = GPT.from_pretrained(tmp_path)
    assert any(p.data.base is not None for p in model.parameters())  # views of the map, not copies
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    for p in model.parameters():  # in place, the way a checkpointed run's weights change
        p.data *= 2
    assert weights.read_bytes() == before
    again = GPT.from_pretrained(tmp_path)
    assert np.isfinite(again(x)[0].data).all()


def test_map_safetensors_refuses_a_file_shorter_than_its_header(tmp_path):
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    header = io.read_safetensors_header(weights)
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(io.FileFormatError, match="ends past the end of the file"):
        io.map_safetensors(weights, header)


@pytest.mark.parametrize("T", [1, 3])
def test_cached_attention_after_a_prompt_equals_the_full_forward(T):
    # MultiHeadAttention with a KV cache takes F.cached_self_attention (dropout is off in eval mode)
    model = GPT(GPTConfig(**dict(TINY, dropout=0.1)), seed=2).eval()
    x = np.random.default_rng(1).integers(0, 11, (2, 4 + T))
    with no_grad():
        fused_cache = model.new_kv_cache(2)
        model(x[:, :4], kv_cache=fused_cache)
        fused = model(x[:, 4:], kv_cache=fused_cache)[0].data
        full = model(x)[0].data[:, 4:]
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused, full, rtol=1e-5, atol=1e-6)
