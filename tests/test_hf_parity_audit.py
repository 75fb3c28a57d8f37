"""tinyllm against transformers 5 on the things a user coming from Hugging Face does without
thinking: several EOS ids, the default length, a prompt longer than max_length, top_k=0,
``labels=`` loss, the special token ids, save_pretrained -> AutoModelForCausalLM. Each test
compares with transformers directly (the tokenizer's: tests/test_tokenizer_call.py and
tests/test_bpe_gpt2.py)."""
import warnings

import numpy as np
import pytest

from kernel_helpers import SMALL_BOS, SMALL_EOS, SMALL_PAD, SMALL_V, small_gpt2_pair
from tinyllm.models.gpt import GPT

V, BOS, EOS, PAD = SMALL_V, SMALL_BOS, SMALL_EOS, SMALL_PAD


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return small_gpt2_pair(tmp_path_factory.mktemp("gpt2-audit"))


def prompts(batch=3, length=6, seed=0):
    return np.random.default_rng(seed).integers(4, V, (batch, length))


def hf_generate(hf, ids, **kwargs):
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                           **kwargs).numpy()


def assert_same(hf, ours, ids, **kwargs):
    theirs = hf_generate(hf, ids, **kwargs)
    mine = ours.generate(ids, **kwargs)
    np.testing.assert_array_equal(mine, theirs, err_msg=str(kwargs))
    return mine


# 1 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_list_of_eos_ids_stops_on_either_and_pads_finished_rows(pair, num_beams):
    hf, ours = pair
    ids = prompts()
    free = hf_generate(hf, ids, do_sample=False, max_new_tokens=10, pad_token_id=PAD)
    eos = [int(free[0, 8]), int(free[2, 9])]  # two rows end early, each on a different id
    out = assert_same(hf, ours, ids, do_sample=False, max_new_tokens=10, pad_token_id=PAD, eos_token_id=eos,
                      num_beams=num_beams)
    if num_beams == 1:
        assert out.shape[1] < free.shape[1] and (out == PAD).any()


# 2 -----------------------------------------------------------------------------------------------
def test_default_length_is_20_new_tokens(pair):
    hf, ours = pair
    out = assert_same(hf, ours, prompts(), pad_token_id=PAD)
    assert out.shape == (3, 26)


def test_generation_config_json_supplies_the_defaults(tmp_path):
    hf, ours = small_gpt2_pair(tmp_path, dict(max_length=11, eos_token_id=[EOS, 5], pad_token_id=PAD, top_k=7))
    assert ours.generation_config["max_length"] == 11 and ours.generation_config["eos_token_id"] == [EOS, 5]
    assert ours.config.pad_token_id is None  # config.json's, as transformers' model.config
    out = assert_same(hf, ours, prompts())
    assert out.shape[1] <= 11


# 3 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt_len", [20, 25])
def test_a_prompt_that_fills_max_length_is_a_value_error(pair, prompt_len):
    hf, ours = pair
    ids = prompts(1, prompt_len)
    with pytest.raises(ValueError, match="max_length"):
        hf_generate(hf, ids, max_length=20, pad_token_id=PAD)
    with pytest.raises(ValueError, match=f"prompt has {prompt_len} tokens, but max_length is 20"):
        ours.generate(ids, max_length=20, pad_token_id=PAD)


# 4 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("knobs", [dict(top_k=0), dict(top_p=1.0), dict(top_k=1000), dict(temperature=0.5)])
def test_sampling_knobs_that_are_off_or_unused_under_greedy(pair, knobs):
    hf, ours = pair
    assert_same(hf, ours, prompts(), do_sample=False, max_new_tokens=6, pad_token_id=PAD, **knobs)


def test_top_k_0_samples_as_no_top_k(pair):
    _, ours = pair  # (a GPT-2 directory's default top_k is 50; top_k=V keeps every token)
    kwargs = dict(do_sample=True, max_new_tokens=6, pad_token_id=PAD, seed=3)
    np.testing.assert_array_equal(ours.generate(prompts(), top_k=0, **kwargs),
                                  ours.generate(prompts(), top_k=V, **kwargs))


# 5 -----------------------------------------------------------------------------------------------
def test_labels_give_transformers_shifted_loss(pair):
    import torch

    hf, ours = pair
    ids = prompts(3, 9)
    labels = ids.copy()
    labels[0, :3] = -100
    labels[2, 5] = -100
    with torch.no_grad():
        theirs = hf(torch.tensor(ids), labels=torch.tensor(labels)).loss.item()
    mine = float(np.asarray(ours(input_ids=ids, labels=labels).loss.data))
    np.testing.assert_allclose(mine, theirs, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        ours(ids, targets=labels, labels=labels)


# 6, 7 --------------------------------------------------------------------------------------------
def test_special_token_ids_after_loading(pair):
    hf, ours = pair
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(ours.config, name) == getattr(hf.config, name), name


def test_save_pretrained_writes_what_transformers_loads(tmp_path):
    import torch
    import transformers

    hf, ours = small_gpt2_pair(tmp_path / "in", dict(max_length=12, top_k=9))
    ours.save_pretrained(tmp_path / "out")  # no format: a GPT-2 directory is written back as one
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = prompts()
    with torch.no_grad():
        expected, got = hf(torch.tensor(ids)).logits.numpy(), again(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (again.config.bos_token_id, again.config.eos_token_id) == (BOS, EOS)
    assert (again.generation_config.max_length, again.generation_config.top_k) == (12, 9)
    assert GPT.from_pretrained(tmp_path / "out").generation_config == ours.generation_config


# 8 -----------------------------------------------------------------------------------------------
# GPT-2 directories as transformers writes them in other ways: several shards, bfloat16, pickle.
def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def test_a_sharded_checkpoint_loads_as_one(tmp_path, pair):
    hf, ours = pair
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    sharded = GPT.from_pretrained(tmp_path)
    ids = prompts()
    np.testing.assert_array_equal(sharded(ids).logits.data, ours(ids).logits.data)
    np.testing.assert_allclose(sharded(ids).logits.data, _logits(hf, ids), rtol=1e-5, atol=1e-5)


def test_a_sharded_checkpoint_with_a_missing_shard_names_it(tmp_path, pair):
    from tinyllm.errors import FileFormatError

    pair[0].save_pretrained(tmp_path, max_shard_size="100KB")
    missing = sorted(tmp_path.glob("model-*-of-*.safetensors"))[-1]
    missing.unlink()
    with pytest.raises(FileFormatError, match=missing.name):
        GPT.from_pretrained(tmp_path)


def test_bfloat16_weights_load_widened_to_float32_as_transformers_reads_them(tmp_path):
    import torch
    import transformers

    hf, _ = small_gpt2_pair(tmp_path / "f32")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    ours = GPT.from_pretrained(tmp_path / "bf16")
    assert ours.transformer.wte.weight.data.dtype == np.float32
    np.testing.assert_array_equal(ours.transformer.wte.weight.data, theirs.transformer.wte.weight.detach().numpy())
    ids = prompts()
    np.testing.assert_allclose(ours(ids).logits.data, _logits(theirs, ids), rtol=1e-5, atol=1e-5)


def test_bfloat16_widening_is_exact_on_awkward_values(tmp_path):
    """inf, NaN, -0.0, subnormals, the largest and smallest bfloat16: the same float32 bits as
    torch's ``.float()``, through both of tinyllm's safetensors readers."""
    import torch
    from safetensors.torch import save_file

    from tinyllm.models.io import load_safetensors, map_safetensors

    values = [0.0, -0.0, 1.0, -2.5, float("inf"), -float("inf"), float("nan"), 1e-40, -3e-39, 3.3895e38, 1.2e-38]
    bf16 = torch.tensor(values, dtype=torch.float32).to(torch.bfloat16).reshape(1, -1)
    save_file({"x": bf16}, str(tmp_path / "x.safetensors"))
    want = bf16.float().numpy().view(np.uint32)
    for read in (load_safetensors, map_safetensors):
        got = read(tmp_path / "x.safetensors")["x"]
        assert got.dtype == np.float32 and got.shape == (1, len(values))
        np.testing.assert_array_equal(got.view(np.uint32), want)


def test_a_pickled_pytorch_model_bin_is_refused_with_the_way_to_convert_it(tmp_path, pair):
    import torch

    hf, _ = pair
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*pickle.*save_pretrained"):
        GPT.from_pretrained(tmp_path)


def test_from_pretrained_takes_transformers_keywords_where_they_mean_what_tinyllm_does(tmp_path, pair):
    import torch
    import transformers

    from tinyllm.models import AutoModelForCausalLM

    hf, ours = pair
    hf.save_pretrained(tmp_path)
    options = dict(local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, **options).eval()
    mine = AutoModelForCausalLM.from_pretrained(tmp_path, **options)
    ids = prompts()
    np.testing.assert_allclose(mine(ids).logits.data, _logits(theirs, ids), rtol=1e-5, atol=1e-5)
    for dtype in ("auto", "float32", np.float32, None):
        GPT.from_pretrained(tmp_path, torch_dtype=dtype)
    for name, value, why in (("dtype", torch.bfloat16, "float32"), ("torch_dtype", "float16", "float32"),
                             ("use_safetensors", False, "safetensors only"), ("trust_remote_code", True, "code")):
        with pytest.raises(ValueError, match=rf"{name}=.*{why}"):
            GPT.from_pretrained(tmp_path, **{name: value})
    with pytest.raises(TypeError, match="'revison'"):
        GPT.from_pretrained(tmp_path, revison="main")


# 9 -----------------------------------------------------------------------------------------------
def _hf_generate(hf, ids, **kwargs):
    import torch

    with torch.no_grad():
        return hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                           return_dict_in_generate=True, **kwargs)


def test_return_dict_in_generate_with_scores_and_logits_as_transformers(pair):
    hf, ours = pair
    ids = prompts(3, 5)
    theirs = _hf_generate(hf, ids, max_new_tokens=7, do_sample=False, output_scores=True, output_logits=True,
                          repetition_penalty=1.3, eos_token_id=EOS, pad_token_id=PAD)
    mine = ours.generate(ids, max_new_tokens=7, do_sample=False, return_dict_in_generate=True, output_scores=True,
                         output_logits=True, repetition_penalty=1.3, eos_token_id=EOS, pad_token_id=PAD)
    np.testing.assert_array_equal(mine.sequences, theirs.sequences.numpy())
    assert len(mine.scores) == len(theirs.scores) == len(mine.logits) == mine.sequences.shape[1] - 5
    for got, want in zip(mine.scores, theirs.scores):  # after the repetition penalty
        assert got.dtype == np.float32 and got.shape == (3, V)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    for got, want in zip(mine.logits, theirs.logits):  # the model's own
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(mine.scores[1], mine.logits[1])  # the penalty changed something
    plain = ours.generate(ids, max_new_tokens=7, do_sample=False, repetition_penalty=1.3, eos_token_id=EOS,
                          pad_token_id=PAD)
    np.testing.assert_array_equal(plain, mine.sequences)


def test_sampled_scores_are_the_filtered_logits_transformers_warpers_give(pair):
    import torch
    import transformers

    _, ours = pair
    out = ours.generate(prompts(2, 4), max_new_tokens=5, do_sample=True, temperature=0.7, top_k=9, top_p=0.8,
                        seed=3, return_dict_in_generate=True, output_scores=True, output_logits=True)
    warpers = [transformers.TemperatureLogitsWarper(0.7), transformers.TopKLogitsWarper(9),
               transformers.TopPLogitsWarper(0.8)]
    for step, (got, raw) in enumerate(zip(out.scores, out.logits)):
        want = torch.tensor(raw)
        for warp in warpers:
            want = warp(torch.tensor(out.sequences[:, :4 + step]), want)
        want = want.numpy()
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-5, atol=1e-5)
        chosen = out.sequences[:, 4 + step]
        assert np.isfinite(got[np.arange(2), chosen]).all()  # each token was drawn from what was kept


def test_beam_search_returns_sequences_scores_as_transformers(pair):
    hf, ours = pair
    ids = prompts(2, 5)
    theirs = _hf_generate(hf, ids, max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False,
                          length_penalty=0.8, eos_token_id=EOS, pad_token_id=PAD, output_scores=True)
    mine = ours.generate(ids, max_new_tokens=6, num_beams=3, num_return_sequences=2, length_penalty=0.8,
                         eos_token_id=EOS, pad_token_id=PAD, return_dict_in_generate=True, output_scores=True)
    np.testing.assert_array_equal(mine.sequences, theirs.sequences.numpy())
    np.testing.assert_allclose(mine.sequences_scores, theirs.sequences_scores.numpy(), rtol=1e-4, atol=1e-5)
    assert mine.scores is None  # (transformers' per-step beam scores are not given)
    assert ours.generate(ids, max_new_tokens=2, num_beams=2, return_dict_in_generate=True).sequences_scores is None
    with pytest.raises(ValueError, match="output_logits"):
        ours.generate(ids, max_new_tokens=2, num_beams=2, return_dict_in_generate=True, output_logits=True)


def test_transformers_text_streamer_prints_what_tinyllm_streamer_prints(pair, capsys, request):
    import transformers

    from tinyllm.generation import TextStreamer

    tokenizer = request.getfixturevalue("ours")  # tinyllm's tokenizer on GPT-2's real files
    model = pair[1]
    ids = prompts(1, 6, seed=4)
    for streamer in (TextStreamer(tokenizer), transformers.TextStreamer(tokenizer)):
        out = model.generate(ids, max_new_tokens=12, do_sample=False, streamer=streamer)
        printed = capsys.readouterr().out
        assert printed == tokenizer.decode(out[0]) + "\n", type(streamer)


# past_key_values / use_cache, and the model's and config's Hugging Face attributes --------------
def test_a_manual_decoding_loop_with_past_key_values_as_transformers(pair):
    """``out = model(ids, use_cache=True)``, then one token at a time with
    ``past_key_values=out.past_key_values`` (and the attention mask over past + new), as one
    writes it for transformers: the same logits at every step, and the greedy tokens equal."""
    import torch

    hf, ours = pair
    ids = prompts(2, 5, seed=3)
    mask = np.ones((2, 5), dtype=np.int64)
    mask[1, :2] = 0  # row 1 is left-padded
    with torch.no_grad():
        theirs = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), use_cache=True)
    mine = ours(ids, attention_mask=mask, use_cache=True)
    for step in range(4):
        np.testing.assert_allclose(mine.logits.data[:, -1], theirs.logits[:, -1].numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=f"step {step}")
        nxt = mine.logits.data[:, -1].argmax(-1)[:, None]
        np.testing.assert_array_equal(nxt[:, 0], theirs.logits[:, -1].numpy().argmax(-1))
        mask = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
        with torch.no_grad():
            theirs = hf(torch.tensor(nxt), attention_mask=torch.tensor(mask), past_key_values=theirs.past_key_values,
                        use_cache=True)
        mine = ours(nxt, attention_mask=mask, past_key_values=mine.past_key_values, use_cache=True)
    assert mine.past_key_values.length == 5 + 4
    logits, loss = ours(ids)  # still nanoGPT's pair, and no cache unless asked for
    assert loss is None and ours(ids).past_key_values is None
    with pytest.raises(TypeError, match="not both"):
        ours(nxt, kv_cache=mine.past_key_values, past_key_values=mine.past_key_values)


def test_model_and_config_attributes_transformers_code_reads(pair):
    hf, ours = pair
    for name in ("n_positions", "max_position_embeddings", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "n_embd", "n_layer", "n_head", "vocab_size"):
        assert getattr(ours.config, name) == getattr(hf.config, name), name
    assert ours.device == "cpu" and str(hf.device) == "cpu"
    assert ours.dtype == np.float32 and str(hf.dtype) == "torch.float32"
    assert GPT.from_pretrained(hf.name_or_path).double().dtype == np.float64  # a copy: the shared fixture stays float32
    np.testing.assert_array_equal(ours.get_input_embeddings().weight.data,
                                  hf.get_input_embeddings().weight.detach().numpy())
    assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight  # tied, as GPT-2's
    assert ours.num_parameters() == hf.num_parameters()
