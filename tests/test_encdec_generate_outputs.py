"""The encoder-decoder's generate with transformers' output options, as the GPT's:
return_dict_in_generate (sequences, scores, logits, sequences_scores) and streamer. Each field is
checked against what it means: the chosen token's argmax or warped distribution, a fresh decoder
pass on the prefix, a beam's score recomputed from the decoder's log-probabilities."""
import numpy as np
import pytest

from test_encdec import BOS, EOS, GENERATE_CASES, PAD, batch, one_thread, trained_ish_model  # noqa: F401
from kernel_helpers import RecordingStreamer
from tinyllm.beam_search import beam_search
from tinyllm.generation import TextStreamer, warp_logits
from tinyllm.models.outputs import GenerateOutput

SAMPLE = dict(do_sample=True, seed=3, temperature=1.3, top_k=5, top_p=0.9)


def model_and_sources(seed=9, B=3):
    model = trained_ish_model(seed=seed)
    src, _, _ = batch(np.random.default_rng(seed), model.config, B=B, S=6, src_lengths=(6, 2, 4)[:B],
                      tgt_lengths=(1,) * B)
    return model, src


def unfinished_before(sequences, t):
    """(N,) bool: the rows that had not produced EOS before new token t (position t + 1)."""
    return ~(sequences[:, 1:t + 1] == EOS).any(axis=1)


@pytest.mark.parametrize("case", sorted(GENERATE_CASES))
def test_sequences_are_what_plain_generate_returns(case):
    model, src = model_and_sources()
    kwargs = GENERATE_CASES[case]
    plain = model.generate(src, **kwargs)
    beams = kwargs.get("num_beams", 1) > 1
    out = model.generate(src, return_dict_in_generate=True, output_scores=True, output_logits=not beams, **kwargs)
    assert isinstance(out, GenerateOutput)
    np.testing.assert_array_equal(out.sequences, plain)
    assert len(np.unique(plain[:, 1:])) >= 3  # varied tokens: a real decoding, not one repeated token
    bare = model.generate(src, return_dict_in_generate=True, **kwargs)
    assert bare.scores is None and bare.logits is None and bare.sequences_scores is None
    np.testing.assert_array_equal(bare.sequences, plain)
    # without return_dict_in_generate the output flags change nothing (transformers ignores them too)
    np.testing.assert_array_equal(model.generate(src, output_scores=True, **kwargs), plain)
    if beams:
        assert out.scores is None and out.logits is None and out.sequences_scores.shape == (plain.shape[0],)
    else:
        assert out.sequences_scores is None
        new = plain.shape[1] - 1
        assert len(out.scores) == len(out.logits) == new
        for scores, logits in zip(out.scores, out.logits):
            assert scores.shape == logits.shape == (plain.shape[0], model.config.tgt_vocab_size)
            assert scores.dtype == logits.dtype == np.float32


def test_one_source_gives_2d_sequences_in_the_dict():
    model, src = model_and_sources()
    plain = model.generate(src[0])
    out = model.generate(src[0], return_dict_in_generate=True, output_scores=True)
    assert plain.ndim == 1 and out.sequences.shape == (1, len(plain))  # as transformers: always (N, L)
    np.testing.assert_array_equal(out.sequences[0], plain)


def test_greedy_scores_argmax_is_the_chosen_token():
    model, src = model_and_sources()
    out = model.generate(src, return_dict_in_generate=True, output_scores=True, output_logits=True)
    seqs = out.sequences
    assert (seqs == EOS).any(axis=1).any() and (seqs == PAD).any()  # some row finished early, then padded
    for t, scores in enumerate(out.scores):
        rows = unfinished_before(seqs, t)
        np.testing.assert_array_equal(scores.argmax(axis=-1)[rows], seqs[rows, t + 1])
        np.testing.assert_array_equal(seqs[~rows, t + 1], PAD)
        np.testing.assert_array_equal(scores, out.logits[t])  # greedy, no processors: the logits themselves


@pytest.mark.parametrize("kwargs", [SAMPLE, dict(do_sample=True, seed=4, num_return_sequences=3, top_k=3)])
def test_sampled_scores_are_the_warped_logits_each_token_was_drawn_from(kwargs):
    model, src = model_and_sources()
    out = model.generate(src, return_dict_in_generate=True, output_scores=True, output_logits=True, **kwargs)
    seqs = out.sequences
    filtered = 0
    for t, (scores, logits) in enumerate(zip(out.scores, out.logits)):
        want = warp_logits(logits, kwargs.get("temperature", 1.0), kwargs.get("top_k"), kwargs.get("top_p"))
        np.testing.assert_array_equal(scores, want.astype(np.float32))  # -inf where filtered, in both
        rows = unfinished_before(seqs, t)
        assert np.isfinite(scores[rows, seqs[rows, t + 1]]).all()  # drawn from what the filters kept
        filtered += int(np.isneginf(scores).sum())
    assert filtered > 0  # the filters did something
    np.testing.assert_array_equal(seqs, model.generate(src, **kwargs))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("kwargs", [dict(), SAMPLE])
def test_logits_are_a_fresh_decoder_pass_on_the_prefix(use_cache, kwargs):
    """float64 model: the recorded logits (float32) equal decode() of the whole prefix, no cache,
    one source at a time (no padding of other sources involved)."""
    model, src = model_and_sources()
    model = model.double()
    model.eval()
    out = model.generate(src, return_dict_in_generate=True, output_logits=True, use_cache=use_cache, **kwargs)
    seqs = out.sequences
    assert len(out.logits) == seqs.shape[1] - 1 and out.scores is None
    for b in range(len(src)):
        source = src[b:b + 1, :int((src[b] != PAD).sum())]
        memory = model.encode(source)
        for t, logits in enumerate(out.logits):
            fresh = model.decode(seqs[b:b + 1, :t + 1], memory, model.source_mask(source)).data[0, -1]
            assert np.isfinite(fresh).all()
            np.testing.assert_allclose(logits[b], fresh.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_beam_sequences_scores_are_the_hypotheses_length_normalized_log_probabilities():
    """float64 model: each returned hypothesis's score is sum log p(token | prefix) over its new
    tokens (EOS included) / (new tokens) ** length_penalty, as beam_search computes it, best first;
    the same scores as beam_search run on a plain uncached decoder step."""
    model, src = model_and_sources()
    model = model.double()
    model.eval()
    kwargs = dict(num_beams=3, num_return_sequences=2, length_penalty=0.8)
    out = model.generate(src, return_dict_in_generate=True, output_scores=True, **kwargs)
    seqs, got = out.sequences, out.sequences_scores
    assert got.shape == (len(src) * 2,) and out.scores is None
    assert (got.reshape(len(src), 2)[:, 0] >= got.reshape(len(src), 2)[:, 1]).all()  # best first
    assert (seqs == EOS).any()
    for row, seq in enumerate(seqs):
        b = row // 2
        source = src[b:b + 1, :int((src[b] != PAD).sum())]
        ends = np.flatnonzero(seq == EOS)
        n_new = int(ends[0]) if len(ends) else len(seq) - 1
        logits = model.decode(seq[None, :n_new], model.encode(source), model.source_mask(source)).data[0]
        z = logits - logits.max(axis=-1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (n_new, V)
        want = log_probs[np.arange(n_new), seq[1:n_new + 1]].sum() / n_new ** 0.8
        np.testing.assert_allclose(got[row], want, rtol=1e-9)

    repeated = np.repeat(src, 3, axis=0)
    memory, mask = model.encode(repeated), model.source_mask(repeated)
    step = lambda seqs, parents=None: model.decode(seqs, memory, mask).data[:, -1, :]  # noqa: E731
    bos = np.full((len(src), 1), BOS)
    want_seqs, want_scores = beam_search(step, bos, 3, max_length=1 + model.config.max_tgt_len, eos_token_id=EOS,
                                         pad_token_id=PAD, length_penalty=0.8, num_return_sequences=2)
    np.testing.assert_array_equal(seqs, want_seqs)
    np.testing.assert_allclose(got, want_scores, rtol=1e-12)


def test_beams_refuse_output_logits():
    model, src = model_and_sources()
    with pytest.raises(ValueError, match="output_logits .* num_beams > 1"):
        model.generate(src, num_beams=2, return_dict_in_generate=True, output_logits=True)


@pytest.mark.parametrize("kwargs", [dict(), SAMPLE])
@pytest.mark.parametrize("one_d", [True, False])
def test_a_streamer_is_told_bos_each_new_token_and_the_end(kwargs, one_d):
    """transformers puts an encoder-decoder's decoder_input_ids (1, 1) first, then each new token
    (1,), then calls end(); the ids put are exactly the row returned."""
    model, src = model_and_sources()
    source = src[0] if one_d else src[:1]
    plain = model.generate(source, **kwargs)
    streamer = RecordingStreamer()
    got = model.generate(source, streamer=streamer, **kwargs)
    np.testing.assert_array_equal(got, plain)
    row = got if one_d else got[0]
    assert streamer.ends == 1
    np.testing.assert_array_equal(streamer.puts[0], [[BOS]])
    assert all(p.shape == (1,) for p in streamer.puts[1:]) and len(streamer.puts) == len(row)
    np.testing.assert_array_equal(np.concatenate([p.reshape(-1) for p in streamer.puts]), row)


@pytest.mark.parametrize("kwargs, message", [
    (dict(src_rows=2), "got 2 rows and num_beams=1"),
    (dict(num_return_sequences=3, do_sample=True), "got 3 rows and num_beams=1"),
    (dict(num_beams=2), "num_beams=2"),
])
def test_a_streamer_takes_one_source_greedy_or_sampled(kwargs, message):
    kwargs = dict(kwargs)
    model, src = model_and_sources()
    streamer = RecordingStreamer()
    with pytest.raises(ValueError, match=f"a streamer takes one sequence.*{message}"):
        model.generate(src[:kwargs.pop("src_rows", 1)], streamer=streamer, **kwargs)
    assert streamer.puts == [] and streamer.ends == 0  # refused before anything was streamed


def char_model_and_tokenizer(seed=6):
    """A Seq2SeqTokenizer over characters and a model with its special ids, decoding varied text."""
    from tinyllm.tokenizers import CharTokenizer, Seq2SeqTokenizer

    tok = Seq2SeqTokenizer(CharTokenizer.from_text("abcdefgh ->:"))
    model = trained_ish_model(seed=seed, src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id)
    return model, tok


def text_streamer(kind, tok, skip_prompt, **decode_kwargs):
    """tinyllm's TextStreamer, or transformers' own (skipped if transformers is not installed)."""
    if kind == "transformers":
        transformers = pytest.importorskip("transformers")
        return transformers.TextStreamer(tok, skip_prompt=skip_prompt, **decode_kwargs)
    return TextStreamer(tok, skip_prompt=skip_prompt, **decode_kwargs)


@pytest.mark.parametrize("kind", ["tinyllm", "transformers"])
@pytest.mark.parametrize("skip_prompt, decode_kwargs", [(False, {}), (True, {}),
                                                        (True, dict(skip_special_tokens=True))])
@pytest.mark.parametrize("kwargs", [dict(), dict(do_sample=True, seed=2)])
def test_text_streamer_prints_the_decoded_target(capsys, kind, skip_prompt, decode_kwargs, kwargs):
    """tinyllm's TextStreamer and transformers' own print what the returned ids decode to;
    skip_prompt (transformers' meaning): the decoder's start token is the prompt, not printed."""
    model, tok = char_model_and_tokenizer()
    streamer = text_streamer(kind, tok, skip_prompt, **decode_kwargs)
    source = np.asarray(tok.encode("abc-hg"))
    plain = model.generate(source, **kwargs)
    assert len(set(plain[1:].tolist())) >= 3  # varied text, not one repeated token
    want = tok.decode(plain[1:] if skip_prompt else plain, **decode_kwargs) + "\n"
    np.testing.assert_array_equal(model.generate(source, streamer=streamer, **kwargs), plain)
    assert capsys.readouterr().out == want
