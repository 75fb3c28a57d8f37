"""GPT.generate's Hugging Face knobs against transformers' GPT2LMHeadModel.generate on the same
(random, GPT-2-shaped) weights: beam search, num_return_sequences, the logits processors
(repetition_penalty, no_repeat_ngram_size, min_length, min_new_tokens) and left-padded batches
with attention_mask. Greedy and beam outputs must equal transformers' token for token; sampled
ones (a different random stream) are checked for what the knobs promise. Also: cached equals
uncached, the masked forward, the processors one by one against transformers' classes, and the
errors."""
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernel_helpers import SMALL_BOS, SMALL_EOS, SMALL_PAD, SMALL_V, make_gpt2_dir, small_gpt2_pair
from tinyllm.generation import (encoder_repetition_penalty_processor, left_pad, min_length_processor,
                                min_new_tokens_processor, no_repeat_ngram_processor, repetition_penalty_processor)
from tinyllm.models.gpt import GPT, GPTConfig

V, BOS, EOS, PAD = SMALL_V, SMALL_BOS, SMALL_EOS, SMALL_PAD
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, tinyllm model) with the same random GPT-2 weights."""
    return small_gpt2_pair(tmp_path_factory.mktemp("gpt2-random"))


def prompts(batch=3, length=6, seed=0):
    return np.random.default_rng(seed).integers(4, V, (batch, length))


def left_padded(lengths, seed=1):
    """A left-padded batch (ids, attention_mask) of random prompts of the given lengths."""
    rng = np.random.default_rng(seed)
    return left_pad([rng.integers(4, V, n) for n in lengths], PAD)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8], np.array([9, 10])], pad_token_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8], [0, 9, 10]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [0, 1, 1]])
    assert ids.dtype == mask.dtype == np.int64
    with pytest.raises(ValueError, match="no empty prompt"):
        left_pad([[1], []], 0)


def hf_generate(hf, ids, attention_mask=None, **kwargs):
    import torch

    mask = np.ones_like(ids) if attention_mask is None else attention_mask
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), pad_token_id=PAD, **kwargs)
    return out.numpy()


def assert_same(pair, ids, attention_mask=None, **kwargs):
    hf, ours = pair
    theirs = hf_generate(hf, ids, attention_mask, **kwargs)
    mine = ours.generate(ids, attention_mask=attention_mask, pad_token_id=PAD, **kwargs)
    assert mine.dtype == np.int64
    np.testing.assert_array_equal(mine, theirs, err_msg=str(kwargs))
    return mine


def likely_eos(ours, ids, step=2):
    """A token that greedy decoding produces at ``step`` for the first prompt: as EOS it makes
    rows end early, so that the EOS handling is exercised."""
    return int(ours.generate(ids, max_new_tokens=step + 1, do_sample=False, eos_token_id=None)[0, -1])


def ends_early(out, prompt_len, eos):
    """Does some row end (EOS, then padding) before the last column?"""
    return any((row[prompt_len:-1] == eos).any() for row in out)


# --- greedy with the logits processors ----------------------------------------------------------


@pytest.mark.parametrize("knobs", [dict(repetition_penalty=1.5), dict(repetition_penalty=0.7),
                                   dict(no_repeat_ngram_size=1), dict(no_repeat_ngram_size=2),
                                   dict(repetition_penalty=1.3, no_repeat_ngram_size=3)], ids=str)
def test_greedy_with_processors_equals_transformers(pair, knobs):
    ids = prompts()
    out = assert_same(pair, ids, max_new_tokens=14, do_sample=False, **knobs)
    plain = pair[1].generate(ids, max_new_tokens=14, do_sample=False, pad_token_id=PAD)
    assert not np.array_equal(out, plain), "the knob changed nothing: the comparison proves little"


@pytest.mark.parametrize("knobs", [dict(min_new_tokens=6), dict(min_length=12), dict(min_length=3),
                                   dict(min_length=18, min_new_tokens=2)], ids=str)
def test_min_lengths_hold_eos_back_as_transformers(pair, knobs):
    ids = prompts()
    eos = likely_eos(pair[1], ids, step=1)
    plain = pair[1].generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
    assert ends_early(plain, ids.shape[1], eos)
    out = assert_same(pair, ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, **knobs)
    least = knobs.get("min_new_tokens", knobs.get("min_length", 0) - ids.shape[1])
    for row in out[:, ids.shape[1]:]:
        hits = np.flatnonzero(row == eos)
        assert not hits.size or hits[0] >= least


def test_no_repeat_ngram_output_has_no_repeated_ngram(pair):
    ids = prompts(length=4)
    n = 2
    out = pair[1].generate(ids, max_new_tokens=30, do_sample=False, no_repeat_ngram_size=n)
    for row in out:
        grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
        assert len(grams) == len(set(grams))


# --- beam search ------------------------------------------------------------------------------------

BEAM_SETTINGS = list(itertools.product([2, 4], [1.0, 0.5, -0.5, 2.0], [False, True, "never"]))


def test_beam_search_equals_transformers(pair):
    ids = prompts()
    eos = likely_eos(pair[1], ids)
    early = 0
    for num_beams, length_penalty, early_stopping in BEAM_SETTINGS:
        out = assert_same(pair, ids, max_new_tokens=9, do_sample=False, num_beams=num_beams, eos_token_id=eos,
                          length_penalty=length_penalty, early_stopping=early_stopping, num_return_sequences=2)
        assert out.shape[0] == 2 * len(ids)
        np.testing.assert_array_equal(out[:, :ids.shape[1]], np.repeat(ids, 2, axis=0))  # prompts included
        early += ends_early(out, ids.shape[1], eos)
    assert early, "no hypothesis ended with EOS: the EOS bookkeeping went untested"


@pytest.mark.parametrize("knobs", [dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2),
                                   dict(min_new_tokens=4, repetition_penalty=0.8)], ids=str)
def test_beam_search_with_processors_equals_transformers(pair, knobs):
    ids = prompts(seed=2)
    eos = likely_eos(pair[1], ids)
    assert_same(pair, ids, max_new_tokens=9, do_sample=False, num_beams=3, num_return_sequences=3,
                eos_token_id=eos, **knobs)


def test_beam_search_with_max_length_and_one_dimensional_prompt(pair):
    ids = prompts(batch=1)
    out = assert_same(pair, ids, max_length=14, do_sample=False, num_beams=3)
    assert out.shape[1] <= 14
    one = pair[1].generate(ids[0], max_length=14, do_sample=False, num_beams=3, pad_token_id=PAD)
    np.testing.assert_array_equal(one, out[0])


def test_num_beams_defaults_to_beam_search_when_the_model_samples_by_default():
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8))
    assert model.generation_config["do_sample"] is True  # a tinyllm model samples by default
    x = np.array([[1, 2, 3]])
    a = model.generate(x, max_new_tokens=4, num_beams=2)
    b = model.generate(x, max_new_tokens=4, num_beams=2, do_sample=False)
    np.testing.assert_array_equal(a, b)


def test_num_beams_one_is_greedy(pair):
    ids = prompts()
    ours = pair[1]
    np.testing.assert_array_equal(ours.generate(ids, max_new_tokens=8, do_sample=False, num_beams=1),
                                  ours.generate(ids, max_new_tokens=8, do_sample=False))


# --- left padding -----------------------------------------------------------------------------------------


def test_left_padded_greedy_equals_transformers_and_each_prompt_alone(pair):
    lengths = [6, 2, 4, 1]
    ids, mask = left_padded(lengths)
    out = assert_same(pair, ids, mask, max_new_tokens=12, do_sample=False)
    width = ids.shape[1]
    for row, n in enumerate(lengths):
        alone = pair[1].generate(ids[row:row + 1, width - n:], max_new_tokens=12, do_sample=False)
        np.testing.assert_array_equal(out[row, width:], alone[0, n:])


@pytest.mark.parametrize("knobs", [dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2),
                                   dict(num_beams=3, num_return_sequences=2),
                                   dict(num_beams=2, repetition_penalty=1.2, length_penalty=0.3)], ids=str)
def test_left_padded_batch_with_knobs_equals_transformers(pair, knobs):
    ids, mask = left_padded([5, 2, 4], seed=4)
    eos = likely_eos(pair[1], ids[:1, -5:])
    assert_same(pair, ids, mask, max_new_tokens=10, do_sample=False, eos_token_id=eos, **knobs)


def test_repetition_penalty_skips_the_left_padding_as_transformers(pair):
    # the padding token is the one the short prompt continues with: counting the padding as part
    # of the sequence would penalize it and change the output
    import torch

    hf, ours = pair
    ids, mask = left_padded([5, 2], seed=8)
    short = ids[1:, -2:]
    pad = int(ours.generate(short, max_new_tokens=1, do_sample=False, repetition_penalty=3.0)[0, -1])
    assert pad not in short
    ids[mask == 0] = pad
    kw = dict(max_new_tokens=6, do_sample=False, repetition_penalty=3.0, pad_token_id=pad)
    out = ours.generate(ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(out[1, ids.shape[1]:], ours.generate(short, **kw)[0, 2:])
    theirs = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()
    np.testing.assert_array_equal(out, theirs)


def test_a_mask_of_ones_is_the_unmasked_fast_path(pair):
    ours = pair[1]
    ids = prompts()
    np.testing.assert_array_equal(ours.generate(ids, max_new_tokens=6, do_sample=True, seed=3,
                                                attention_mask=np.ones_like(ids)),
                                  ours.generate(ids, max_new_tokens=6, do_sample=True, seed=3))


def test_sampling_a_left_padded_batch_is_reproducible_and_keeps_the_prompts(pair):
    ours = pair[1]
    ids, mask = left_padded([5, 1, 3])
    a = ours.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=20, seed=5)
    b = ours.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=20, seed=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :ids.shape[1]], ids)


# --- cached == uncached -----------------------------------------------------------------------------------


@pytest.mark.parametrize("knobs", [dict(num_beams=3, num_return_sequences=2, early_stopping=True),
                                   dict(repetition_penalty=1.4, no_repeat_ngram_size=2),
                                   dict(do_sample=True, seed=7, repetition_penalty=1.2, num_return_sequences=2)],
                         ids=str)
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_cached_equals_uncached(pair, knobs, padded):
    ours = pair[1]
    ids, mask = left_padded([5, 2, 4], seed=6) if padded else (prompts(), None)
    knobs = {"do_sample": False, **knobs}
    cached = ours.generate(ids, attention_mask=mask, max_new_tokens=10, **knobs)
    uncached = ours.generate(ids, attention_mask=mask, max_new_tokens=10, use_cache=False, **knobs)
    np.testing.assert_array_equal(cached, uncached)


def test_beam_search_past_block_size_cached_equals_uncached():
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16), seed=1)
    x = np.array([[1, 2, 3], [4, 5, 6]])
    kw = dict(max_new_tokens=10, do_sample=False, num_beams=3, num_return_sequences=2, repetition_penalty=1.2)
    cached = model.generate(x, **kw)
    assert cached.shape == (4, 13)
    np.testing.assert_array_equal(cached, model.generate(x, use_cache=False, **kw))


# --- num_return_sequences with sampling ----------------------------------------------------------------------


def test_sampling_num_return_sequences_repeats_each_prompt(pair):
    ours = pair[1]
    ids = prompts(batch=2)
    out = ours.generate(ids, max_new_tokens=10, do_sample=True, num_return_sequences=3, seed=0)
    assert out.shape == (6, ids.shape[1] + 10)
    np.testing.assert_array_equal(out[:, :ids.shape[1]], np.repeat(ids, 3, axis=0))
    assert len({tuple(row) for row in out[:3]}) > 1, "three samples of one prompt all equal"
    np.testing.assert_array_equal(out, ours.generate(ids, max_new_tokens=10, do_sample=True,
                                                     num_return_sequences=3, seed=0))


def test_sampling_respects_the_processors():
    model = GPT(GPTConfig(vocab_size=7, block_size=32, n_layer=1, n_head=1, n_embd=8), seed=2)
    x = np.array([[1, 2]])
    for seed in range(5):
        out = model.generate(x, max_new_tokens=12, do_sample=True, temperature=2.0, seed=seed, eos_token_id=0,
                             min_new_tokens=6, no_repeat_ngram_size=3, num_return_sequences=4)
        for row in out:
            assert not (row[2:8] == 0).any()  # no EOS among the first 6 new tokens
            real = row[:np.flatnonzero(row == 0)[0] + 1] if (row[2:] == 0).any() else row
            grams = [tuple(real[i:i + 3]) for i in range(len(real) - 2)]
            assert len(grams) == len(set(grams))


# --- the processors one by one against transformers' ----------------------------------------------------------


def test_processors_equal_transformers_classes():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(0)
    input_ids = rng.integers(0, 6, (4, 9))  # small vocabulary: plenty of repeats
    scores = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    ignore = np.array([0, 2, 5, 9])
    cases = [
        (repetition_penalty_processor(1.7), lp.RepetitionPenaltyLogitsProcessor(1.7)),
        (repetition_penalty_processor(0.6), lp.RepetitionPenaltyLogitsProcessor(0.6)),
        (repetition_penalty_processor(1.7, ignore),
         lp.RepetitionPenaltyLogitsProcessor(1.7, prompt_ignore_length=torch.tensor(ignore))),
        (min_length_processor(10, 2), lp.MinLengthLogitsProcessor(10, 2)),
        (min_length_processor(9, 2), lp.MinLengthLogitsProcessor(9, 2)),
        (min_new_tokens_processor(5, 4, 2), lp.MinNewTokensLengthLogitsProcessor(5, 4, 2)),
        (min_new_tokens_processor(5, 5, 2), lp.MinNewTokensLengthLogitsProcessor(5, 5, 2)),
    ] + [(no_repeat_ngram_processor(n), lp.NoRepeatNGramLogitsProcessor(n)) for n in (1, 2, 3, 9, 10)]
    for ours, theirs in cases:
        expected = theirs(torch.tensor(input_ids), torch.tensor(scores)).numpy()
        got = ours(input_ids, scores.copy())
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected, err_msg=type(theirs).__name__)


def test_processors_pass_over_ids_outside_the_vocabulary_as_transformers():
    """An EOS id past the scores' vocabulary, or a source token id (an encoder-decoder's
    encoder_repetition_penalty reads the source as target ids), is never produced: transformers
    passes over it (isin over the vocabulary; ids clamped into a spare column), so do we."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(1)
    input_ids = rng.integers(0, 9, (4, 7))  # ids 6..8 lie outside the vocabulary of 6
    scores = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    in_vocab = input_ids % 6  # transformers' encoder penalty gathers the ids: only those in the vocabulary
    cases = [
        (input_ids, min_length_processor(10, np.array([2, 99])), lp.MinLengthLogitsProcessor(10, [2, 99])),
        (input_ids, min_new_tokens_processor(5, 4, np.array([99, 3])),
         lp.MinNewTokensLengthLogitsProcessor(5, 4, [99, 3])),
        (input_ids, repetition_penalty_processor(1.7), lp.RepetitionPenaltyLogitsProcessor(1.7)),
        (in_vocab, encoder_repetition_penalty_processor(1.7, np.repeat(in_vocab[:2], 2, axis=0)),
         lp.EncoderRepetitionPenaltyLogitsProcessor(1.7, torch.tensor(in_vocab[:2]))),  # 2 sources, 2 beams each
        (in_vocab, encoder_repetition_penalty_processor(0.6, in_vocab),
         lp.EncoderRepetitionPenaltyLogitsProcessor(0.6, torch.tensor(in_vocab))),
    ]
    for ids, ours, theirs in cases:
        expected = theirs(torch.tensor(ids), torch.tensor(scores)).numpy()
        got = ours(ids, scores.copy())
        assert got.dtype == np.float32
        assert not np.array_equal(got, scores), type(theirs).__name__  # the processor did something
        np.testing.assert_array_equal(got, expected, err_msg=type(theirs).__name__)


def test_repetition_penalty_by_hand():
    scores = np.array([[2.0, -2.0, 1.0, -1.0]], dtype=np.float32)
    out = repetition_penalty_processor(2.0)(np.array([[0, 1, 1]]), scores)
    np.testing.assert_array_equal(out, [[1.0, -4.0, 1.0, -1.0]])


# --- the masked forward ---------------------------------------------------------------------------------


def small_model(seed=0):
    return GPT(GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=seed).eval()


def test_left_padded_forward_equals_unpadded_at_the_real_tokens_given_gpt2s_positions():
    """As transformers' GPT-2: the mask hides the padding; positions are 0..T-1 unless
    position_ids = cumsum(mask) - 1 are given (what generate passes), which makes a left-padded
    row's logits those of the unpadded one."""
    model = small_model()
    ids = np.random.default_rng(0).integers(0, 23, (1, 6))
    ref, _ = model(ids)
    for pad in (1, 4):
        padded = np.concatenate([np.full((1, pad), 5), ids], axis=1)
        mask = np.concatenate([np.zeros((1, pad), np.int64), np.ones_like(ids)], axis=1)
        out, _ = model(padded, attention_mask=mask, position_ids=np.maximum(np.cumsum(mask, axis=1) - 1, 0))
        assert np.isfinite(out.data).all()  # padded queries see no key: zeros, not NaN
        np.testing.assert_allclose(out.data[:, pad:], ref.data, rtol=1e-5, atol=1e-5)
        shifted, _ = model(padded, attention_mask=mask)  # positions pad .. pad + 5 for the real tokens
        assert np.abs(shifted.data[:, pad:] - ref.data).max() > 1e-3


def test_masked_forward_with_a_cache_equals_without():
    model = small_model(1)
    ids, mask = left_padded([7, 3, 5], seed=2)
    ids = ids % 23
    full, _ = model(ids, attention_mask=mask)
    cache = model.new_kv_cache(3)
    first, _ = model(ids[:, :4], kv_cache=cache, attention_mask=mask[:, :4])
    rest, _ = model(ids[:, 4:], kv_cache=cache, attention_mask=mask)
    np.testing.assert_allclose(np.concatenate([first.data, rest.data], axis=1), full.data, rtol=1e-5, atol=1e-5)


def test_a_mask_of_ones_gives_bit_identical_logits_and_a_row_of_zeros_no_nan():
    model = small_model()
    ids = np.random.default_rng(3).integers(0, 23, (2, 5))
    ref, _ = model(ids)
    ones, _ = model(ids, attention_mask=np.ones((2, 5), dtype=bool))
    np.testing.assert_array_equal(ones.data, ref.data)
    empty, _ = model(ids, attention_mask=np.array([[0] * 5, [1] * 5]))
    assert np.isfinite(empty.data).all()
    np.testing.assert_array_equal(empty.data[1], ref.data[1])


def test_explicit_position_ids_equal_the_default_ones():
    model = small_model()
    ids = np.random.default_rng(4).integers(0, 23, (2, 5))
    ref, _ = model(ids)
    out, _ = model(ids, position_ids=np.tile(np.arange(5), (2, 1)))
    np.testing.assert_array_equal(out.data, ref.data)
    shifted, _ = model(ids, position_ids=np.arange(3, 8))
    assert not np.allclose(shifted.data, ref.data)


def test_masked_forward_trains():
    model = small_model()
    ids, mask = left_padded([6, 3], seed=5)
    ids = ids % 23
    targets = np.where(mask == 1, np.roll(ids, -1, axis=1), -100)
    _, loss = model(ids, targets=targets, attention_mask=mask)
    loss.backward()
    assert np.isfinite(loss.item())
    assert all(np.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_beams=0), "num_beams must be an integer >= 1, got 0"),
    (dict(num_beams=2.0), "num_beams must be an integer >= 1, got 2.0"),
    (dict(num_beams="3"), "num_beams must be an integer >= 1, got '3'"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0.*got 0.0"),
    (dict(repetition_penalty=-1.2), "repetition_penalty .*got -1.2"),
    (dict(num_beams=2, num_return_sequences=3, do_sample=False), "num_return_sequences=3 must be <= num_beams=2"),
    (dict(num_return_sequences=2, do_sample=False), "greedy decoding gives one sequence.*num_return_sequences=2"),
    (dict(num_return_sequences=0), "num_return_sequences must be an integer >= 1, got 0"),
    (dict(num_beams=2, do_sample=True), "beam sampling"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be an integer >= 0, got -1"),
    (dict(min_new_tokens=1.5), "min_new_tokens must be an integer >= 0, got 1.5"),
    (dict(min_length=-2), "min_length must be an integer >= 0, got -2"),
    (dict(length_penalty=float("nan"), num_beams=2), "length_penalty must be a finite number, got nan"),
    (dict(early_stopping="sometimes", num_beams=2), "early_stopping must be True, False or 'never', got 'sometimes'"),
    (dict(attention_mask=np.ones((2, 4))), r"attention_mask must have shape \(2, 3\).*got \(2, 4\)"),
    (dict(attention_mask=np.array([[1, 1, 2], [1, 1, 1]])), "attention_mask must hold 0 .* and 1 .* only, got 2"),
    (dict(attention_mask=np.array([[0, 1, 1], [1, 1, 1]]), max_new_tokens=20),
     "prompt \\(3\\) \\+ max_new_tokens \\(20\\) must fit in block_size 16"),
])
def test_bad_values_are_named(kwargs, match):
    model = small_model()
    with pytest.raises(ValueError, match=match):
        model.generate(np.array([[1, 2, 3], [4, 5, 6]]), **{"max_new_tokens": 3, **kwargs})


def test_unknown_arguments_are_named():
    model = small_model()
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['guidance_scale', 'num_beam'\]"):
        model.generate(np.array([[1, 2]]), num_beam=2, guidance_scale=1.5)


def test_bad_forward_masks_are_named():
    model = small_model()
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(1, 3\)"):
        model(ids, attention_mask=np.ones((1, 2)))
    with pytest.raises(ValueError, match="attention_mask must hold 0 .* and 1 .* only, got 0.5"):
        model(ids, attention_mask=np.array([[1, 0.5, 1]]))
    with pytest.raises(ValueError, match="position id 16 is outside 0..15"):
        model(ids, position_ids=np.array([14, 15, 16]))
    with pytest.raises(ValueError, match=r"position_ids must be integers of shape \(1, 3\) or \(3,\)"):
        model(ids, position_ids=np.arange(4))


# --- without numba ---------------------------------------------------------------------------------------------


def test_the_knobs_run_without_jit(tmp_path):
    """NUMBA_DISABLE_JIT=1 (the learner's path) gives the same tokens for beams, processors and a
    left-padded batch."""
    model = small_model(3)
    model.save_pretrained(tmp_path / "m")
    ids, mask = left_padded([4, 2], seed=7)
    ids = ids % 23
    calls = [dict(num_beams=2, num_return_sequences=2, repetition_penalty=1.3),
             dict(no_repeat_ngram_size=2, min_new_tokens=3, eos_token_id=4)]
    script = (
        "import json, sys, numpy as np\n"
        "from tinyllm.models.gpt import GPT\n"
        "m = GPT.from_pretrained(sys.argv[1])\n"
        "ids, mask = np.array(json.loads(sys.argv[2])), np.array(json.loads(sys.argv[3]))\n"
        "for kw in json.loads(sys.argv[4]):\n"
        "    print(json.dumps(m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, **kw).tolist()))\n"
    )
    import json

    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m"), json.dumps(ids.tolist()),
                             json.dumps(mask.tolist()), json.dumps(calls)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(calls)
    for line, kw in zip(lines, calls):
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, **kw)
        np.testing.assert_array_equal(np.array(json.loads(line)), expected, err_msg=str(kw))


def test_reference_mode_gives_the_same_tokens():
    """The NumPy reference kernels (tinyllm.use_reference) through beams, processors and padding."""
    import tinyllm

    model = small_model(5)
    ids, mask = left_pad([[1, 2, 3, 4, 5], [6, 7], [8]], 0)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, num_beams=2, repetition_penalty=1.2)
    fast = model.generate(ids, **kw)
    mode = tinyllm.is_reference()
    tinyllm.use_reference(True)
    try:
        reference = model.generate(ids, **kw)
    finally:
        tinyllm.use_reference(mode)
    np.testing.assert_array_equal(fast, reference)


def test_the_hugging_face_recipe_for_a_batch_of_prompts(tmp_path):
    """What a Hugging Face user writes for a batch: a GPT-2 tokenizer padding on the left, then
    generate with the mask, beams and a repetition penalty; on GPT-2's real vocabulary (50257
    tokens, random weights), tinyllm's tokens equal transformers'."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    make_gpt2_dir(tmp_path, seed=1)

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(["The quick brown fox jumps over the lazy dog.", "Hello", "Once upon a time"],
                      return_tensors="np", padding=True)
    assert (batch["attention_mask"] == 0).any()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ours = GPT.from_pretrained(tmp_path)
    for kw in (dict(max_new_tokens=12), dict(max_new_tokens=10, num_beams=3, num_return_sequences=2,
                                             repetition_penalty=1.3, no_repeat_ngram_size=3)):
        with torch.no_grad():
            theirs = hf.generate(torch.tensor(batch["input_ids"]), attention_mask=torch.tensor(batch["attention_mask"]),
                                 pad_token_id=tokenizer.eos_token_id, **kw).numpy()
        mine = ours.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                             pad_token_id=tokenizer.eos_token_id, **kw)
        np.testing.assert_array_equal(mine, theirs, err_msg=str(kw))
        assert tokenizer.batch_decode(mine, skip_special_tokens=True) == \
            tokenizer.batch_decode(theirs, skip_special_tokens=True)
