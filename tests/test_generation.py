"""Generation with Hugging Face's meanings: KV cache changes speed only, greedy / temperature /
top-k / top-p, max_length vs max_new_tokens, eos stopping and padding, seeds, and argument checks.
"""
import math

import numpy as np
import pytest

from kernel_helpers import RecordingStreamer
from tinyllm.generation import apply_top_k, apply_top_p, generate, sample_from_logits
from tinyllm.models import GPT, GPTConfig
from tinyllm.tensor import Tensor

V = 13


@pytest.fixture(scope="module")
def model():
    m = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16), seed=0)
    # wider weights than GPT-2's init: sharper, more varied next-token distributions
    for p in m.parameters():
        if p.ndim == 2:
            p.data = p.data * 10
    return m


def prompt(shape, seed=0):
    return np.random.default_rng(seed).integers(0, V, shape)


class CountingModel:
    """A stand-in model whose next token is always (last token + 1) % vocab: fully predictable."""

    def __init__(self, vocab=10, block_size=64):
        from types import SimpleNamespace

        self.config = SimpleNamespace(vocab_size=vocab, block_size=block_size)
        self.training = True

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def new_kv_cache(self, batch_size):
        return None

    def __call__(self, idx, kv_cache=None, last_only=False):
        nxt = (idx[:, -1] + 1) % self.config.vocab_size
        logits = np.full((idx.shape[0], 1, self.config.vocab_size), -5.0)
        logits[np.arange(idx.shape[0]), 0, nxt] = 5.0
        return Tensor(logits), None


# ----------------------------------------------------------------------------------------------
# KV cache: the same tokens as recomputing everything


@pytest.mark.parametrize("do_sample", [False, True])
def test_kv_cache_gives_the_same_tokens_as_no_cache_past_block_size(model, do_sample):
    x = prompt((3, 3))
    kwargs = dict(max_new_tokens=12, do_sample=do_sample, temperature=1.0, seed=11)  # 3 + 12 > block_size 8
    cached = model.generate(x, use_cache=True, **kwargs)
    uncached = model.generate(x, use_cache=False, **kwargs)
    assert cached.shape == (3, 15)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[:, :3], x)
    assert len(set(map(tuple, cached[:, 3:]))) > 1  # not a degenerate constant output


def test_kv_cache_logits_equal_full_forward_logits(model):
    x = prompt((2, 8))
    full, _ = model(x)
    cache = model.new_kv_cache(2)
    first, _ = model(x[:, :5], kv_cache=cache)
    steps = [model(x[:, t:t + 1], kv_cache=cache)[0].data for t in range(5, 8)]
    got = np.concatenate([first.data] + steps, axis=1)
    np.testing.assert_allclose(got, full.data, rtol=1e-4, atol=1e-4)
    assert cache.length == 8
    with pytest.raises(ValueError, match="sequence length 9 exceeds block_size 8"):
        model(x[:, :1], kv_cache=cache)


def test_uncached_generation_crops_the_context_to_block_size(model):
    """Past block_size the next token is the argmax over the last block_size tokens."""
    x = prompt((1, 8))
    out = model.generate(x, max_new_tokens=3, do_sample=False)
    for t in range(8, 11):
        logits, _ = model(out[:, t - 8:t])
        assert out[0, t] == logits.data[0, -1].argmax()


def test_a_prompt_longer_than_block_size_is_cropped(model):
    x = prompt((2, 11))
    out = model.generate(x, max_new_tokens=2, do_sample=False)
    np.testing.assert_array_equal(out[:, :11], x)
    np.testing.assert_array_equal(out[:, 11], model(x[:, -8:])[0].data[:, -1].argmax(-1))


# ----------------------------------------------------------------------------------------------
# greedy, temperature, top-k, top-p


def test_greedy_picks_the_argmax_each_step(model):
    x = prompt((2, 2))
    out = model.generate(x, max_new_tokens=5, do_sample=False)
    for t in range(2, 7):
        np.testing.assert_array_equal(out[:, t], model(out[:, :t])[0].data[:, -1].argmax(-1))


def test_temperature_zero_means_greedy(model):
    x = prompt((2, 3))
    greedy = model.generate(x, max_new_tokens=6, do_sample=False)
    np.testing.assert_array_equal(model.generate(x, max_new_tokens=6, temperature=0, seed=1), greedy)
    np.testing.assert_array_equal(model.generate(x, max_new_tokens=6, temperature=0.0, seed=2), greedy)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_1_equals_greedy(model, seed):
    x = prompt((2, 3))
    greedy = model.generate(x, max_new_tokens=6, do_sample=False)
    np.testing.assert_array_equal(model.generate(x, max_new_tokens=6, top_k=1, temperature=1.5, seed=seed), greedy)


def test_apply_top_k_keeps_the_k_largest():
    logits = np.array([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = apply_top_k(logits, 2)
    np.testing.assert_array_equal(out, [[-np.inf, 5.0, -np.inf, 4.0, -np.inf]])
    np.testing.assert_array_equal(apply_top_k(logits, 5), logits)
    np.testing.assert_array_equal(apply_top_k(logits, None), logits)


def test_apply_top_p_keeps_the_token_that_crosses_the_threshold():
    probs = np.array([0.1, 0.5, 0.25, 0.15])  # sorted: 0.5, 0.25, 0.15, 0.1
    logits = np.log(probs)[None, :]
    keep = lambda p: np.isfinite(apply_top_p(logits, p))[0].tolist()  # noqa: E731
    assert keep(0.3) == [False, True, False, False]  # 0.5 alone crosses 0.3
    assert keep(0.6) == [False, True, True, False]  # 0.5 < 0.6, 0.5 + 0.25 crosses it
    assert keep(0.8) == [False, True, True, True]  # 0.75 < 0.8: the 0.15 token crosses
    assert keep(0.95) == [True, True, True, True]
    assert keep(1.0) == [True, True, True, True]
    kept = apply_top_p(logits, 0.6)
    np.testing.assert_array_equal(kept[0, [1, 2]], logits[0, [1, 2]])  # survivors are unchanged


def test_apply_top_p_works_row_by_row():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]))
    np.testing.assert_array_equal(np.isfinite(apply_top_p(logits, 0.5)), [[True, False, False], [False, False, True]])


def test_apply_top_p_agrees_with_transformers_top_p_warper(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.generation.logits_process import TopPLogitsWarper

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((20, 12)) * 2
    for p in (0.1, 0.5, 0.9):
        theirs = TopPLogitsWarper(top_p=p)(None, torch.tensor(logits)).numpy()
        np.testing.assert_array_equal(np.isfinite(apply_top_p(logits, p)), np.isfinite(theirs), err_msg=str(p))
    del transformers


def test_sampling_follows_the_softmax_distribution():
    logits = np.tile(np.log(np.array([0.1, 0.6, 0.3])), (20000, 1))
    picks = sample_from_logits(logits, np.random.default_rng(0))
    freq = np.bincount(picks, minlength=3) / len(picks)
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.015)
    # temperature 2 flattens: p ~ sqrt(p)
    flat = np.sqrt([0.1, 0.6, 0.3])
    picks = sample_from_logits(logits, np.random.default_rng(1), temperature=2.0)
    np.testing.assert_allclose(np.bincount(picks, minlength=3) / len(picks), flat / flat.sum(), atol=0.015)


def test_sampling_never_picks_filtered_tokens():
    logits = np.tile(np.array([2.0, 1.0, 0.5, 0.0, -1.0]), (5000, 1))
    picks = sample_from_logits(logits, np.random.default_rng(0), top_k=2)
    assert set(np.unique(picks)) == {0, 1}
    picks = sample_from_logits(logits, np.random.default_rng(0), top_p=0.5)  # p(token 0) = 0.52
    assert set(np.unique(picks)) == {0}


def test_sampling_never_picks_a_zero_probability_token_before_the_kept_ones():
    # only the last token is allowed; an inverse-CDF draw of u = 0 must still land on it
    class ZeroRng:
        def random(self, shape):
            return np.zeros(shape)

    logits = np.array([[-np.inf, -np.inf, 0.0]])
    assert sample_from_logits(logits, ZeroRng())[0] == 2


# ----------------------------------------------------------------------------------------------
# lengths


def test_max_new_tokens_does_not_count_the_prompt(model):
    out = model.generate(prompt((2, 3)), max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 7)


def test_max_length_counts_the_prompt(model):
    out = model.generate(prompt((2, 3)), max_length=5, do_sample=False)
    assert out.shape == (2, 5)
    with pytest.raises(ValueError, match="prompt has 3 tokens, but max_length is 3"):  # as transformers 5
        model.generate(prompt((2, 3)), max_length=3, do_sample=False)


def test_max_new_tokens_wins_over_max_length(model):
    assert model.generate(prompt((1, 3)), max_new_tokens=2, max_length=10, do_sample=False).shape == (1, 5)


def test_default_is_20_new_tokens_like_transformers(model):
    # 20 new tokens, capped (as transformers caps at n_positions) at block_size 8
    assert model.generate(prompt((1, 3)), do_sample=False).shape == (1, 8)
    assert model.generate(prompt((1, 3)), do_sample=False, max_length=None).shape == (1, 8)


def test_max_new_tokens_zero_returns_the_prompt(model):
    x = prompt((2, 3))
    np.testing.assert_array_equal(model.generate(x, max_new_tokens=0), x)


def test_one_dimensional_prompt_gives_one_dimensional_output(model):
    x = prompt((4,))
    out = model.generate(x, max_new_tokens=3, do_sample=False)
    assert out.shape == (7,)
    np.testing.assert_array_equal(out, model.generate(x[None], max_new_tokens=3, do_sample=False)[0])


# ----------------------------------------------------------------------------------------------
# eos


def test_eos_stops_and_pads_finished_rows():
    m = CountingModel(vocab=10)
    x = np.array([[5], [1]])
    out = generate(m, x, max_new_tokens=10, do_sample=False, eos_token_id=8)
    # row 0 reaches 8 after 3 tokens and is padded with eos; row 1 after 7, then all are done
    np.testing.assert_array_equal(out, [[5, 6, 7, 8, 8, 8, 8, 8], [1, 2, 3, 4, 5, 6, 7, 8]])


def test_eos_pads_with_pad_token_id_when_given():
    m = CountingModel(vocab=10)
    out = generate(m, np.array([[5], [1]]), max_new_tokens=10, do_sample=False, eos_token_id=8, pad_token_id=0)
    np.testing.assert_array_equal(out, [[5, 6, 7, 8, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]])


def test_without_eos_generation_runs_to_the_limit():
    out = generate(CountingModel(vocab=10), np.array([[5]]), max_new_tokens=6, do_sample=False)
    np.testing.assert_array_equal(out, [[5, 6, 7, 8, 9, 0, 1]])


def test_eos_stops_a_real_model_early(model):
    x = prompt((1, 3))
    full = model.generate(x, max_new_tokens=6, do_sample=False)
    eos = int(full[0, 4])  # the second generated token
    first = int(np.flatnonzero(full[0, 3:] == eos)[0])
    out = model.generate(x, max_new_tokens=6, do_sample=False, eos_token_id=eos)
    np.testing.assert_array_equal(out, full[:, :3 + first + 1])


def with_eos(free, prompt_len, eos, pad):
    """What generation with eos must give, from a run without it: each row up to its first eos,
    then pad; and it stops once every row has finished."""
    out = free.copy()
    finished_at = []
    for row in out:
        hits = np.flatnonzero(row[prompt_len:] == eos)
        if hits.size:
            row[prompt_len + hits[0] + 1:] = pad
        finished_at.append(int(hits[0]) if hits.size else None)
    if all(f is not None for f in finished_at):
        out = out[:, :prompt_len + max(finished_at) + 1]
    return out, finished_at


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("n_new", [5, 9], ids=["within block", "past block"])
@pytest.mark.parametrize("explicit_pad", [False, True], ids=["pad=eos", "pad_token_id"])
def test_eos_and_padding_in_a_batch_of_the_real_model_with_and_without_its_kv_cache(model, do_sample, n_new,
                                                                                      explicit_pad):
    # six prompts of 3 tokens; block_size is 8, so with 9 new tokens the cached path also has to
    # hand over to the sliding window. The rows are independent, so a row that has finished (and
    # is fed pad tokens from then on) must not change what the others generate.
    x = prompt((6, 3), seed=3)
    free = model.generate(x, max_new_tokens=n_new, do_sample=do_sample, seed=1)

    def finish_steps(token):
        return {int(np.flatnonzero(row == token)[0]) for row in free[:, 3:] if (row == token).any()}

    eos = max(range(V), key=lambda t: (len(finish_steps(t)), -t))  # rows finish at the most distinct steps
    assert len(finish_steps(eos)) >= 2, "no token ends the rows at different steps: pick another prompt"
    pad = (eos + 1) % V if explicit_pad else None
    expected, finished_at = with_eos(free, 3, eos, eos if pad is None else pad)
    for use_cache in (True, False):
        out = model.generate(x, max_new_tokens=n_new, do_sample=do_sample, seed=1, eos_token_id=eos,
                             pad_token_id=pad, use_cache=use_cache)
        np.testing.assert_array_equal(out, expected, err_msg=f"use_cache={use_cache}, finished at {finished_at}")


def test_generate_restores_training_mode(model):
    model.train()
    model.generate(prompt((1, 2)), max_new_tokens=2)
    assert model.training
    model.eval()
    model.generate(prompt((1, 2)), max_new_tokens=2)
    assert not model.training


# ----------------------------------------------------------------------------------------------
# seeds


def test_same_seed_same_samples_different_seeds_differ(model):
    x = prompt((2, 2))
    kwargs = dict(max_new_tokens=20, do_sample=True, temperature=1.0)
    a = model.generate(x, seed=7, **kwargs)
    b = model.generate(x, seed=7, **kwargs)
    np.testing.assert_array_equal(a, b)
    c = model.generate(x, seed=8, **kwargs)
    assert not np.array_equal(a, c)


def test_sampling_with_top_p_and_top_k_is_reproducible(model):
    x = prompt((2, 2))
    kwargs = dict(max_new_tokens=10, temperature=0.7, top_k=5, top_p=0.9, seed=3)
    np.testing.assert_array_equal(model.generate(x, **kwargs), model.generate(x, **kwargs))
    np.testing.assert_array_equal(model.generate(x, use_cache=False, **kwargs), model.generate(x, **kwargs))


# ----------------------------------------------------------------------------------------------
# bad arguments name the value


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), r"temperature must be .*>= 0, got -0.5"),
    (dict(temperature=float("nan")), r"temperature.*nan"),
    (dict(top_k=-1), r"top_k must be an integer >= 0.*got -1"),
    (dict(top_k=2.5), r"top_k.*2.5"),
    (dict(top_p=0), r"top_p must be in \(0, 1\], got 0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(max_new_tokens=-1), r"max_new_tokens must be an integer >= 0, got -1"),
    (dict(max_new_tokens=2.0), r"max_new_tokens.*2.0"),
    (dict(max_length=0), r"max_length must be a positive integer, got 0"),
])
def test_bad_sampling_arguments_are_named(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate(prompt((1, 2)), **{"max_new_tokens": 2, **kwargs})


def test_bad_prompts_are_named(model):
    with pytest.raises(ValueError, match=rf"token id {V} is out of range for vocab_size {V}"):
        model.generate(np.array([[1, V]]), max_new_tokens=1)
    with pytest.raises(ValueError, match="token id -1"):
        model.generate(np.array([[-1, 2]]), max_new_tokens=1)
    with pytest.raises(TypeError, match="integers.*float64"):
        model.generate(np.array([[1.0, 2.0]]), max_new_tokens=1)
    with pytest.raises(ValueError, match=r"time >= 1.*\(1, 0\)"):
        model.generate(np.zeros((1, 0), dtype=np.int64), max_new_tokens=1)


def test_initial_distribution_sanity(model):
    """The fixture model is not degenerate: its next-token entropy is well below uniform's."""
    logits = model(prompt((4, 4)))[0].data[:, -1].astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -(p * np.log(p + 1e-30)).sum(-1).mean()
    assert 0.05 < entropy < math.log(V)


# --- streaming ------------------------------------------------------------------------------------
class ByteTokenizer:
    """ids are bytes; decode replaces an incomplete UTF-8 character with U+FFFD, as a byte-level BPE."""

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode("utf-8", errors="replace")


def _stream_model():
    return GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=16), seed=0)


@pytest.mark.parametrize("eos", [None, "early"])
def test_a_streamer_is_told_the_prompt_each_new_token_and_the_end(eos):
    model = _stream_model()
    prompt = np.array([[72, 105, 33]])
    full = model.generate(prompt, max_new_tokens=8, do_sample=False)
    eos_id = int(full[0, 5]) if eos else None  # the second new token ends it early
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=eos_id)
    streamer = RecordingStreamer()
    got = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=eos_id, streamer=streamer)
    np.testing.assert_array_equal(got, expected)
    assert streamer.ends == 1 and streamer.puts[0].shape == (1, 3)
    np.testing.assert_array_equal(np.concatenate([p.reshape(-1) for p in streamer.puts]), got[0])
    assert len(streamer.puts) == 1 + got.shape[1] - 3


def test_text_streamer_prints_whole_characters_only(capsys):
    from tinyllm.generation import TextStreamer

    streamer = TextStreamer(ByteTokenizer())
    streamer.put(np.array([[104, 105]]))  # "hi"
    printed = [capsys.readouterr().out]
    for byte in "é€!".encode():  # 2 + 3 + 1 bytes, one put each
        streamer.put(np.array([byte]))
        printed.append(capsys.readouterr().out)
    streamer.end()
    printed.append(capsys.readouterr().out)
    assert printed == ["hi", "", "é", "", "", "€", "!", "\n"]  # each character once it is whole
    streamer = TextStreamer(ByteTokenizer(), skip_prompt=True)
    streamer.put(np.array([[104, 105]]))
    streamer.put(np.array([111]))
    streamer.end()
    assert capsys.readouterr().out == "o\n"


def test_a_streamer_takes_one_sequence_and_no_beams():
    model = _stream_model()
    with pytest.raises(ValueError, match="one sequence"):
        model.generate(np.array([[1, 2], [3, 4]]), max_new_tokens=2, streamer=RecordingStreamer())
    with pytest.raises(ValueError, match="num_beams=2"):
        model.generate(np.array([[1, 2]]), max_new_tokens=2, num_beams=2, streamer=RecordingStreamer())
