"""The encoder-decoder's generate with transformers' logits processors (repetition_penalty,
no_repeat_ngram_size, min_length, min_new_tokens, encoder_repetition_penalty) and eos_token_id /
pad_token_id. The oracle is transformers' own processor classes, built as its generate builds them
for an encoder-decoder (they see the decoder ids, which start with the decoder start token), run on
our model's step logits in a hand-written loop that decodes the whole prefix each step (no cache):
greedy, sampling (our sampler, the same seed) and beam search (our beam_search, tested against
transformers elsewhere). Every case changes the output of plain decoding, so none passes vacuously."""
import re

import numpy as np
import pytest

from test_encdec import BOS, EOS, PAD, batch, one_thread, trained_ish_model  # noqa: F401
from tinyllm import no_grad
from tinyllm.beam_search import beam_search
from tinyllm.generation import sample_from_logits
from tinyllm.models.gpt import GPT, GPTConfig

MAX_NEW = 9


@pytest.fixture(scope="module")
def model_and_sources():
    """A random model that decodes varied tokens (greedy: EOS after 6 in two rows), and three
    right-padded sources (lengths 6, 2, 4)."""
    model = trained_ish_model(seed=3)
    src, _, _ = batch(np.random.default_rng(7), model.config, B=3, S=6)
    return model, src


def hf_processors(src, eos, repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0, min_new_tokens=0,
                  encoder_repetition_penalty=1.0):
    """transformers' LogitsProcessorList as ``_get_logits_processor`` builds it for an encoder-decoder:
    its order; the "prompt" is the decoder start token (input_ids_seq_length 1); a min_new_tokens
    replaces min_length by 1 + min_new_tokens (``_prepare_generated_length``); the encoder penalty
    gets the sources unexpanded (it repeats them for beams itself)."""
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    eos = torch.tensor(np.atleast_1d(eos))
    processors = lp.LogitsProcessorList()
    if encoder_repetition_penalty != 1.0:
        processors.append(lp.EncoderRepetitionPenaltyLogitsProcessor(float(encoder_repetition_penalty),
                                                                      torch.tensor(src)))
    if repetition_penalty != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    if no_repeat_ngram_size:
        processors.append(lp.NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if min_new_tokens:
        min_length = 1 + min_new_tokens
    if min_length:
        processors.append(lp.MinLengthLogitsProcessor(min_length, eos))
    if min_new_tokens:
        processors.append(lp.MinNewTokensLengthLogitsProcessor(1, min_new_tokens, eos))

    def process(ids, scores):  # NumPy in and out
        return processors(torch.tensor(ids), torch.tensor(scores)).numpy()

    return process


def uncached_step(model, src):
    """step(decoder ids (N, t), parents) -> next-token logits (N, V): the whole prefix decoded again."""
    memory, mask = model.encode(src), model.source_mask(src)
    return lambda ids, parents=None: model.decode(ids, memory, mask, last_only=True).data[:, -1, :]


@no_grad()
def reference_decode(model, src, process, eos, pad, rng=None, **warpers):
    """Greedy (rng None) or sampled decoding of each source, transformers' way: the processed
    logits of the decoder ids, argmax or our sampler; a finished row gets pad."""
    step = uncached_step(model, src)
    ids = np.full((len(src), 1), BOS, dtype=np.int64)
    done = np.zeros(len(src), dtype=bool)
    for _ in range(MAX_NEW):
        scores = process(ids, step(ids))
        next_ids = scores.argmax(axis=-1) if rng is None else sample_from_logits(scores, rng, True, **warpers)
        next_ids = np.where(done, pad, next_ids)
        done |= np.isin(next_ids, eos)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        if done.all():
            break
    return ids


GREEDY_CASES = {
    "repetition penalty 2": dict(repetition_penalty=2.0),
    "repetition reward 0.5": dict(repetition_penalty=0.5),
    "no repeated token": dict(no_repeat_ngram_size=1),
    "no repeated bigram": dict(no_repeat_ngram_size=2),
    "min_length 8": dict(min_length=8),
    "min_new_tokens 6": dict(min_new_tokens=6),
    "min_new_tokens 6 replaces min_length 9": dict(min_length=9, min_new_tokens=6),
    "encoder repetition penalty 3": dict(encoder_repetition_penalty=3.0),
    "encoder repetition penalty 0.5": dict(encoder_repetition_penalty=0.5),
    "two eos ids": dict(eos_token_id=[EOS, 12]),
    "pad 7": dict(pad_token_id=7, no_repeat_ngram_size=1),
    "all at once": dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=4,
                        encoder_repetition_penalty=1.5, eos_token_id=[EOS, 12]),
}


def reference_args(knobs):
    """(processor knobs, eos ids, pad) of a generate call's knobs."""
    knobs = dict(knobs)
    eos = knobs.pop("eos_token_id", EOS)
    pad = knobs.pop("pad_token_id", PAD)
    return knobs, eos, pad


@pytest.mark.parametrize("case", sorted(GREEDY_CASES))
def test_greedy_equals_transformers_processors(model_and_sources, case):
    model, src = model_and_sources
    knobs = GREEDY_CASES[case]
    ours = model.generate(src, max_new_tokens=MAX_NEW, **knobs)
    processors, eos, pad = reference_args(knobs)
    expected = reference_decode(model, src, hf_processors(src, eos, **processors), eos, pad)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(model.generate(src, max_new_tokens=MAX_NEW, use_cache=False, **knobs), ours)
    plain = model.generate(src, max_new_tokens=MAX_NEW)
    assert not np.array_equal(ours, plain), "the knob changed nothing: the comparison proves little"


def test_min_new_tokens_replaces_min_length(model_and_sources):
    """Given both, transformers holds EOS back for BOS + min_new_tokens only (not min_length)."""
    model, src = model_and_sources
    both = model.generate(src, max_new_tokens=MAX_NEW, min_length=9, min_new_tokens=3)
    np.testing.assert_array_equal(both, model.generate(src, max_new_tokens=MAX_NEW, min_new_tokens=3))
    assert not np.array_equal(both, model.generate(src, max_new_tokens=MAX_NEW, min_length=9))


def test_min_lengths_count_the_decoder_ids(model_and_sources):
    """min_length counts BOS, min_new_tokens does not: min_length=n + 1 is min_new_tokens=n, and
    no row holds EOS before it."""
    model, src = model_and_sources
    for n in (2, 5, 7):
        out = model.generate(src, max_new_tokens=MAX_NEW, min_new_tokens=n)
        np.testing.assert_array_equal(out, model.generate(src, max_new_tokens=MAX_NEW, min_length=n + 1))
        for row in out:
            hits = np.flatnonzero(row == EOS)
            assert not hits.size or hits[0] > n  # position 0 is BOS, EOS is new token n + 1 or later


def test_no_repeat_ngram_output_has_no_repeated_ngram(model_and_sources):
    model, src = model_and_sources
    for n in (1, 2, 3):
        for row in model.generate(src, max_new_tokens=MAX_NEW, no_repeat_ngram_size=n):
            end = np.flatnonzero(row == EOS)
            row = row[:end[0] + 1] if end.size else row  # the padding after EOS repeats
            grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
            assert len(grams) == len(set(grams)), (n, row)


BEAM_CASES = {
    "repetition penalty": dict(repetition_penalty=2.0),
    "no repeated bigram": dict(no_repeat_ngram_size=2),
    "min_new_tokens": dict(min_new_tokens=6),
    "min_length, 2 returned": dict(min_length=7, num_return_sequences=2),
    "encoder penalty, eos list": dict(encoder_repetition_penalty=3.0, eos_token_id=[EOS, 12]),
    "all, early stopping": dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3,
                                early_stopping=True, length_penalty=0.5),
}


@pytest.mark.parametrize("case", sorted(BEAM_CASES))
def test_beam_search_equals_transformers_processors(model_and_sources, case):
    """Beam search applies the processors to each step's log-probabilities of every beam."""
    model, src = model_and_sources
    knobs = dict(num_beams=3, **BEAM_CASES[case])
    ours = model.generate(src, max_new_tokens=MAX_NEW, **knobs)
    np.testing.assert_array_equal(model.generate(src, max_new_tokens=MAX_NEW, use_cache=False, **knobs), ours)
    search = {k: knobs.pop(k) for k in ("num_beams", "num_return_sequences", "early_stopping", "length_penalty")
              if k in knobs}
    processors, eos, pad = reference_args(knobs)
    with no_grad():
        expected, _ = beam_search(uncached_step(model, np.repeat(src, 3, axis=0)),
                                  np.full((len(src), 1), BOS), max_length=1 + MAX_NEW, eos_token_id=eos,
                                  pad_token_id=pad, logits_processor=hf_processors(src, eos, **processors), **search)
    np.testing.assert_array_equal(ours, expected)
    plain = model.generate(src, max_new_tokens=MAX_NEW, **search)
    assert not np.array_equal(ours, plain), "the knob changed nothing: the comparison proves little"


SAMPLE_CASES = {
    "repetition penalty": dict(repetition_penalty=3.0),
    "no repeated token, top-k": dict(no_repeat_ngram_size=1, top_k=6),
    "min_new_tokens, 2 per source": dict(min_new_tokens=7, num_return_sequences=2),
    "encoder penalty, top-p, temperature": dict(encoder_repetition_penalty=4.0, top_p=0.9, temperature=0.8),
}


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_sampling_equals_transformers_processors(model_and_sources, case):
    """Sampling draws from the processed logits, warped (temperature, top-k, top-p) after them."""
    model, src = model_and_sources
    knobs = SAMPLE_CASES[case]
    ours = model.generate(src, max_new_tokens=MAX_NEW, do_sample=True, seed=11, **knobs)
    np.testing.assert_array_equal(ours, model.generate(src, max_new_tokens=MAX_NEW, do_sample=True, seed=11,
                                                       **knobs))  # the same seed, the same tokens
    np.testing.assert_array_equal(model.generate(src, max_new_tokens=MAX_NEW, do_sample=True, seed=11,
                                                 use_cache=False, **knobs), ours)
    knobs = dict(knobs)
    copies = knobs.pop("num_return_sequences", 1)
    warpers = {k: knobs.pop(k) for k in ("top_k", "top_p", "temperature") if k in knobs}
    processors, eos, pad = reference_args(knobs)
    expected = reference_decode(model, np.repeat(src, copies, axis=0), hf_processors(src, eos, **processors), eos,
                                pad, np.random.default_rng(11), **warpers)
    np.testing.assert_array_equal(ours, expected)
    plain = model.generate(src, max_new_tokens=MAX_NEW, do_sample=True, seed=11, num_return_sequences=copies,
                           **warpers)
    assert not np.array_equal(ours, plain), "the knob changed nothing: the comparison proves little"


def test_top_k_0_turns_the_filter_off_as_the_gpts(model_and_sources):
    model, src = model_and_sources
    kw = dict(max_new_tokens=MAX_NEW, do_sample=True, seed=5)
    np.testing.assert_array_equal(model.generate(src, top_k=0, **kw), model.generate(src, **kw))


BAD_VALUES = [
    dict(repetition_penalty=0.0), dict(repetition_penalty=float("nan")), dict(repetition_penalty=True),
    dict(no_repeat_ngram_size=-1), dict(no_repeat_ngram_size=1.5), dict(min_length=-2), dict(min_new_tokens="3"),
    dict(eos_token_id=[]), dict(eos_token_id=[[EOS]]), dict(eos_token_id=2.5), dict(num_beams=0),
    dict(num_return_sequences=0), dict(length_penalty=float("inf")), dict(early_stopping="sometimes"),
    dict(early_stopping=1), dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0),
    dict(num_beams=2, do_sample=True), dict(num_beams=2, num_return_sequences=3),
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=str)
def test_bad_values_give_the_gpts_errors(model_and_sources, bad):
    model, src = model_and_sources
    gpt = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError) as gpt_error:
        gpt.generate(np.array([[4, 5], [6, 7], [8, 9]]), max_new_tokens=3, **bad)
    with pytest.raises(ValueError, match=re.escape(str(gpt_error.value))):
        model.generate(src, max_new_tokens=3, **bad)


def test_bad_encoder_repetition_penalty(model_and_sources):
    model, src = model_and_sources
    for bad in (0, -1.5, float("inf"), None):
        with pytest.raises(ValueError, match=re.escape(f"encoder_repetition_penalty must be a finite number > 0 "
                                                       f"(1.0: no penalty), got {bad!r}")):
            model.generate(src, encoder_repetition_penalty=bad)
