"""The GPT model: nanoGPT / GPT-2 parameter names and count, weight tying, input checks, the whole
model's gradient, save/load round trips, and (optional) exact agreement with Hugging Face's
GPT2LMHeadModel in both directions.
"""
import json
import math
import os

import numpy as np
import pytest

from tinyllm import nn
from tinyllm.gradcheck import gradcheck
from tinyllm.models import GPT, GPTConfig
from tinyllm.tensor import Tensor

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny_gpt(seed=0, **overrides):
    return GPT(GPTConfig(**{**TINY, **overrides}), seed=seed)


def ids(shape, vocab=11, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def expected_names(n_layer):
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        for part in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                     "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                     "mlp.c_proj.weight", "mlp.c_proj.bias"):
            names.append(f"transformer.h.{i}.{part}")
    return names + ["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]


def nanogpt_num_params(V, T, L, C, bias=True):
    """nanoGPT's model, counted by hand: embeddings, then per layer 2 LayerNorms, c_attn (C -> 3C),
    c_proj (C -> C), c_fc (C -> 4C), mlp.c_proj (4C -> C); ln_f; lm_head tied (not counted)."""
    b = 1 if bias else 0
    per_layer = 2 * (C + b * C) + (3 * C * C + b * 3 * C) + (C * C + b * C) + (4 * C * C + b * 4 * C) + (4 * C * C + b * C)
    return V * C + T * C + L * per_layer + (C + b * C)


# ----------------------------------------------------------------------------------------------
# names, shapes, counts, tying


def test_state_dict_names_are_nanogpt_and_hf_gpt2_names():
    model = tiny_gpt()
    assert list(model.state_dict()) == expected_names(2)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes["transformer.wte.weight"] == (11, 8)
    assert shapes["transformer.wpe.weight"] == (8, 8)
    assert shapes["transformer.h.1.attn.c_attn.weight"] == (24, 8)  # Linear: (out, in)
    assert shapes["transformer.h.1.mlp.c_fc.weight"] == (32, 8)
    assert shapes["transformer.h.1.mlp.c_proj.weight"] == (8, 32)
    assert shapes["lm_head.weight"] == (11, 8)


def test_lm_head_is_tied_to_wte_and_listed_once():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names
    assert len(model.parameters()) == len(expected_names(2)) - 1
    # a gradient through both uses lands in the one array
    _, loss = model(ids((2, 5)), ids((2, 5), seed=1))
    loss.backward()
    assert model.lm_head.weight.grad is model.transformer.wte.weight.grad


@pytest.mark.parametrize("cfg", [dict(), dict(n_layer=3, n_embd=12, n_head=3, block_size=5, vocab_size=7),
                                 dict(bias=False)])
def test_parameter_count_equals_nanogpt_formula(cfg):
    c = {**TINY, **cfg}
    model = GPT(GPTConfig(**c))
    want = nanogpt_num_params(c["vocab_size"], c["block_size"], c["n_layer"], c["n_embd"], c.get("bias", True))
    assert model.num_parameters() == want
    assert sum(p.size for p in model.parameters()) == want
    assert model.num_parameters(non_embedding=True) == want - c["block_size"] * c["n_embd"]


def test_bias_false_has_no_bias_parameters():
    model = tiny_gpt(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith(".bias")]


def test_gpt2_initialisation_scales():
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=64), seed=0)
    sd = model.state_dict()
    assert np.std(sd["transformer.wte.weight"]) == pytest.approx(0.02, rel=0.1)
    assert np.std(sd["transformer.h.0.attn.c_attn.weight"]) == pytest.approx(0.02, rel=0.1)
    assert np.std(sd["transformer.h.0.mlp.c_proj.weight"]) == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert not sd["transformer.h.0.attn.c_attn.bias"].any()
    np.testing.assert_array_equal(sd["transformer.ln_f.weight"], 1.0)


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = tiny_gpt(seed=3), tiny_gpt(seed=3), tiny_gpt(seed=4)
    for (n, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    assert not np.array_equal(a.transformer.wte.weight.data, c.transformer.wte.weight.data)


def test_repr_names_the_layers_and_counts_parameters():
    model = tiny_gpt()
    text = repr(model)
    assert "(wte): Embedding(11, 8)" in text and "(c_attn): Linear(in_features=8, out_features=24, bias=True)" in text
    assert text.rstrip().endswith(f"# {model.num_parameters():,} parameters")


# ----------------------------------------------------------------------------------------------
# forward


def test_forward_shapes_and_initial_loss_near_log_vocab():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    x, y = ids((4, 8), 50), ids((4, 8), 50, seed=1)
    logits, loss = model(x, y)
    assert logits.shape == (4, 8, 50) and logits.dtype == np.float32
    assert loss.shape == () and abs(loss.item() - math.log(50)) < 0.1
    logits_only, none = model(x)
    assert none is None
    np.testing.assert_array_equal(logits_only.data, logits.data)
    last, _ = model(x, last_only=True)
    assert last.shape == (4, 1, 50)
    np.testing.assert_allclose(last.data[:, 0], logits.data[:, -1], rtol=1e-5, atol=1e-6)


def test_loss_ignores_targets_equal_to_minus_100():
    model = tiny_gpt()
    x, y = ids((1, 6)), ids((1, 6), seed=1)
    logits, _ = model(x)
    y_masked = y.copy()
    y_masked[0, :3] = -100
    _, loss = model(x, y_masked)
    z = logits.data[0, 3:].astype(np.float64)
    want = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(3), y[0, 3:]])
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_logits_are_causal():
    model = tiny_gpt()
    x = ids((1, 8))
    x2 = x.copy()
    x2[0, 5:] = (x2[0, 5:] + 1) % 11
    a, _ = model(x)
    b, _ = model(x2)
    np.testing.assert_array_equal(a.data[:, :5], b.data[:, :5])
    assert not np.allclose(a.data[:, 5:], b.data[:, 5:])


def test_dropout_changes_training_forward_but_not_eval_forward():
    model = tiny_gpt(dropout=0.3)
    x = ids((2, 6))
    model.eval()
    np.testing.assert_array_equal(model(x)[0].data, model(x)[0].data)
    model.train()
    assert not np.array_equal(model(x)[0].data, model(x)[0].data)


def test_sinusoidal_gpt_has_no_wpe_parameter_forwards_and_trains():
    from tinyllm.training import TrainConfig, configure_optimizer

    model = tiny_gpt(pos_encoding="sinusoidal", n_layer=1)
    assert isinstance(model.transformer.wpe, nn.PositionalEncoding)
    assert "transformer.wpe.weight" not in model.state_dict()
    assert model.num_parameters() == nanogpt_num_params(11, 8, 1, 8) - 8 * 8
    x = np.tile(np.arange(8) % 11, (4, 1))
    y = (x + 1) % 11
    opt = configure_optimizer(model, TrainConfig(learning_rate=1e-2, weight_decay=0.0))
    losses = []
    for _ in range(30):
        _, loss = model(x, y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]
    # the encoding matters: the same token at two positions gives two different outputs
    logits, _ = model(np.array([[3, 3]]))
    assert not np.allclose(logits.data[0, 0], logits.data[0, 1])


# ----------------------------------------------------------------------------------------------
# bad inputs


def test_token_id_out_of_range_names_the_id_and_vocab():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"token id 11 is out of range for vocab_size 11"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match=r"token id -3"):
        model(np.array([[1, -3]]))


def test_sequence_longer_than_block_size_names_both_lengths():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"sequence length 9 exceeds block_size 8"):
        model(ids((1, 9)))


def test_non_integer_ids_are_rejected():
    model = tiny_gpt()
    with pytest.raises(TypeError, match="float64"):
        model(np.array([[1.0, 2.0]]))


def test_ids_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"\(batch, time\).*\(3,\)"):
        tiny_gpt()(np.array([1, 2, 3]))


@pytest.mark.parametrize("bad, match", [
    (dict(n_embd=10, n_head=4), "n_embd=10 is not divisible by n_head=4"),
    (dict(vocab_size=0), "vocab_size must be a positive integer, got 0"),
    (dict(block_size=4.5), "block_size must be a positive integer, got 4.5"),
    (dict(n_layer=True), "n_layer must be a positive integer, got True"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(activation="relu"), "activation.*'relu'"),
    (dict(pos_encoding="rope"), "pos_encoding.*'rope'"),
])
def test_bad_config_values_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**TINY, **bad})


def test_gpt_needs_a_config_object():
    with pytest.raises(TypeError, match="dict"):
        GPT(dict(TINY))


# ----------------------------------------------------------------------------------------------
# the whole model's gradient


def test_gradcheck_whole_gpt_loss_wrt_tied_wte_and_a_few_parameters():
    model = GPT(GPTConfig(vocab_size=11, block_size=4, n_layer=1, n_head=2, n_embd=8), seed=0).double()
    for p in model.parameters():  # non-trivial LayerNorm gains and biases
        if p.ndim == 1:
            p.data = p.data + np.random.default_rng(p.size).standard_normal(p.shape) * 0.3
    x, y = ids((2, 4)), ids((2, 4), seed=1)
    names = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.bias",
             "transformer.h.0.mlp.c_proj.weight", "transformer.ln_f.weight"]
    named = dict(model.named_parameters())
    # every place each parameter sits (wte is also lm_head.weight)
    sites = [[(m, a) for _, m in model.named_modules() for a, p in m._parameters.items() if p is named[n]]
             for n in names]
    assert len(sites[0]) == 2

    def loss_fn(*params):
        saved = [(m, a, getattr(m, a)) for where in sites for m, a in where]
        for where, p in zip(sites, params):
            for m, a in where:
                object.__setattr__(m, a, p)
        try:
            return model(x, y)[1]
        finally:
            for m, a, original in saved:
                object.__setattr__(m, a, original)

    inputs = [Tensor(named[n].data.copy(), requires_grad=True) for n in names]
    assert gradcheck(loss_fn, inputs)  # the default float64 tolerance (rejects a 0.01% error)


# ----------------------------------------------------------------------------------------------
# a whole step with the numba JIT disabled


WHOLE_STEP = """
import json
import numba
import numpy as np
from tinyllm import optim
from tinyllm.kernels import attention as A, blas, decode
from tinyllm.models import GPT, GPTConfig

calls = {}


def count(module, name):  # record which kernels the model really calls
    kernel = getattr(module, name)

    def counted(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return kernel(*args, **kwargs)

    setattr(module, name, counted)


for name in ("self_attention_forward", "self_attention_backward", "cached_attention_forward"):
    count(A, name)
for name in ("linear_forward", "linear_backward"):  # F.Linear: x @ W^T + b as one Function
    count(blas, name)
count(decode, "block_step")  # a whole block for one new position (compiled kernels only)

model = GPT(GPTConfig(vocab_size=23, block_size=8, n_layer=2, n_head=2, n_embd=16), seed=0)
rng = np.random.default_rng(0)
x, y = rng.integers(0, 23, (2, 8)), rng.integers(0, 23, (2, 8))
opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
_, loss = model(x, y)
loss.backward()
norm = optim.clip_grad_norm(model.parameters(), 0.5)
opt.step()
step_calls = dict(calls)
_, loss_after = model(x, y)
greedy = model.generate(x[:, :3], max_new_tokens=5, do_sample=False)
sampled = model.generate(x[:, :3], max_new_tokens=5, do_sample=True, top_k=7, seed=3)
print(json.dumps(dict(
    jit_disabled=bool(numba.config.DISABLE_JIT), step_calls=step_calls, calls=calls,
    loss=loss.item(), norm=float(norm), loss_after=loss_after.item(),
    params={n: [float(p.data.astype(np.float64).sum()), float(np.abs(p.data.astype(np.float64)).sum())]
            for n, p in model.named_parameters()},
    greedy=greedy.tolist(), sampled=sampled.tolist())))
"""


def test_a_whole_gpt_step_and_generate_run_with_the_jit_disabled_and_agree_with_the_compiled_run():
    from kernel_helpers import run_script

    plain = json.loads(run_script(WHOLE_STEP, timeout=300, NUMBA_DISABLE_JIT="1"))
    compiled = json.loads(run_script(WHOLE_STEP, timeout=300, NUMBA_DISABLE_JIT="0"))
    assert plain["jit_disabled"] and not compiled["jit_disabled"]
    # the model's own paths, in both runs: the packed self-attention (forward and backward) and
    # the fused Linear in training, 4 Linears a block and lm_head (tied to wte), the KV-cached
    # attention in generate
    n_linear = 4 * 2 + 1
    assert plain["step_calls"] == {"self_attention_forward": 2, "self_attention_backward": 2,
                                   "linear_forward": n_linear, "linear_backward": n_linear}
    assert plain["calls"]["cached_attention_forward"] > 0
    # with compiled kernels a generation step runs each block as one call (kernels/decode.py) in
    # place of its 4 Linears and its cached attention; with the JIT disabled, the layers
    fused = compiled["calls"].pop("block_step", 0)
    assert fused == 2 * 4 * 2 and "block_step" not in plain["calls"]  # 2 blocks, 4 steps, 2 generate calls
    compiled["calls"]["linear_forward"] += 4 * fused
    compiled["calls"]["cached_attention_forward"] += fused
    assert plain["calls"] == compiled["calls"]
    # the same numbers up to float32 rounding (plain loops vs BLAS and compiled kernels)
    for key in ("loss", "norm", "loss_after"):
        assert np.isfinite(plain[key])
        np.testing.assert_allclose(plain[key], compiled[key], rtol=1e-5)
    assert plain["loss_after"] < plain["loss"]  # the step did something
    assert plain["params"].keys() == compiled["params"].keys()
    for name, sums in plain["params"].items():
        np.testing.assert_allclose(sums, compiled["params"][name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert plain["greedy"] == compiled["greedy"]
    assert plain["sampled"] == compiled["sampled"]


# ----------------------------------------------------------------------------------------------
# saving and loading


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = tiny_gpt(seed=5)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    x = ids((2, 8))
    np.testing.assert_array_equal(loaded(x)[0].data, model(x)[0].data)
    for (n, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)


def test_saved_file_is_safetensors_with_the_tied_weight_once(tmp_path):
    from safetensors.numpy import load_file

    tiny_gpt().save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(tensors) == sorted(expected_names(2)[:-1])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_embd"] == 8 and config["vocab_size"] == 11


def test_save_load_round_trip_sinusoidal_model(tmp_path):
    model = tiny_gpt(seed=2, pos_encoding="sinusoidal", activation="gelu", bias=False)
    model.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.config == model.config
    x = ids((1, 8))
    np.testing.assert_array_equal(loaded(x)[0].data, model(x)[0].data)


def test_from_pretrained_on_a_missing_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*config\.json.*save_pretrained"):
        GPT.from_pretrained(missing)


def test_from_pretrained_without_weights_names_the_file(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found"):
        GPT.from_pretrained(tmp_path)


def test_from_pretrained_rejects_unknown_config_keys(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embed"] = 8  # a typo
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown keys \['n_embed'\]"):
        GPT.from_pretrained(tmp_path)


def test_from_pretrained_with_weights_of_another_shape_names_the_key(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab_size"] = 12
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"transformer.wte.weight: checkpoint \(11, 8\) vs model \(12, 8\)"):
        GPT.from_pretrained(tmp_path)


def test_save_pretrained_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="'onnx'"):
        tiny_gpt().save_pretrained(tmp_path, format="onnx")


def test_huggingface_format_refuses_models_gpt2_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="bias=False"):
        tiny_gpt(bias=False).save_pretrained(tmp_path, format="huggingface")
    with pytest.raises(ValueError, match="sinusoidal"):
        tiny_gpt(pos_encoding="sinusoidal").save_pretrained(tmp_path, format="huggingface")


def test_huggingface_format_round_trips_through_tinyllm(tmp_path):
    """Written as GPT-2 (Conv1D weights transposed to (in, out)), read back: identical weights."""
    from safetensors.numpy import load_file

    model = tiny_gpt(seed=7)
    model.save_pretrained(tmp_path, format="huggingface")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_positions"] == 8
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (8, 24)  # Conv1D: (in, out)
    loaded = GPT.from_pretrained(tmp_path)
    original, read_back = model.state_dict(), loaded.state_dict()
    assert original.keys() == read_back.keys()
    for name, array in original.items():  # every weight bit for bit
        np.testing.assert_array_equal(read_back[name], array, err_msg=name)
    # The Conv1D weights stay in the file's (in, out) layout (memory-mapped, read as transposed
    # views), so products sum in another order: equal logits up to float32 rounding, same tokens.
    assert not loaded.transformer.h[0].attn.c_attn.weight.data.flags.c_contiguous
    x = ids((2, 8))
    logits = loaded(x)[0].data
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits, model(x)[0].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.generate(x[:, :3], max_new_tokens=4, do_sample=False),
                                  model.generate(x[:, :3], max_new_tokens=4, do_sample=False))


# ----------------------------------------------------------------------------------------------
# Hugging Face transformers as an oracle (optional)


@pytest.fixture(scope="module")
def hf():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # nothing may download
        torch = pytest.importorskip("torch")
        transformers = pytest.importorskip("transformers")
        transformers.logging.set_verbosity_error()
        yield torch, transformers


def _hf_gpt2(torch, transformers, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=100,
                                     initializer_range=0.1)  # wider than 0.02: more varied greedy tokens
    return transformers.GPT2LMHeadModel(config).eval()


def test_hf_gpt2_loads_with_equal_logits_and_greedy_tokens(hf, tmp_path):
    torch, transformers = hf
    reference = _hf_gpt2(torch, transformers)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model = GPT.from_pretrained(tmp_path)
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd, model.config.block_size,
            model.config.vocab_size) == (2, 2, 32, 64, 100)
    x = ids((2, 12), 100)
    ours = model(x)[0].data
    with torch.no_grad():
        theirs = reference(torch.tensor(x)).logits.numpy()
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

    prompt = x[:1, :5]
    ours_gen = model.generate(prompt, max_new_tokens=20, do_sample=False)
    with torch.no_grad():
        theirs_gen = reference.generate(torch.tensor(prompt), max_new_tokens=20, do_sample=False,
                                        pad_token_id=0).numpy()
    assert ours_gen.shape == (1, 25)
    np.testing.assert_array_equal(ours_gen, theirs_gen)


def test_tinyllm_saved_as_huggingface_loads_in_transformers_with_equal_logits(hf, tmp_path):
    torch, transformers = hf
    model = GPT(GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=2, n_embd=32), seed=1)
    for p in model.parameters():  # non-zero biases and gains, so every tensor's layout matters
        p.data = p.data + (np.random.default_rng(p.size).standard_normal(p.shape) * 0.05).astype(np.float32)
    model.save_pretrained(tmp_path, format="huggingface")
    theirs_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = ids((2, 12), 100)
    with torch.no_grad():
        theirs = theirs_model(torch.tensor(x)).logits.numpy()
    ours = model(x)[0].data
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
