"""transformers' further generate knobs (tinyllm.logits_process): each processor and warper against
transformers' own class on the same arrays, greedy and beam generation with each processor against
transformers' GPT-2 generate on the same weights, the sampling warpers' kept sets, stop_strings on
GPT-2's real tokenizer, generation_config, the encoder-decoder, and the errors."""
import numpy as np
import pytest

from kernel_helpers import SMALL_EOS, SMALL_PAD, SMALL_V, make_gpt2_dir, small_gpt2_pair
from tinyllm import logits_process as lp
from tinyllm.generation import _logits_processors
from tinyllm.models.gpt import GPT, GPTConfig

V, EOS, PAD = SMALL_V, SMALL_EOS, SMALL_PAD


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, tinyllm model) with the same random GPT-2 weights."""
    return small_gpt2_pair(tmp_path_factory.mktemp("gpt2-knobs"))


def prompts(batch=3, length=6, seed=0):
    return np.random.default_rng(seed).integers(4, V, (batch, length))


def tied_scores(rng, shape, dtype):
    """Random scores with ties (rounded to halves) and a few -inf entries (never a whole row)."""
    scores = np.round(rng.standard_normal(shape) * 3) / 2
    scores[rng.random(shape) < 0.15] = -np.inf
    scores[:, 0] = np.maximum(scores[:, 0], 0.0)
    return scores.astype(dtype)


def assert_equal_and_changed(got, expected, scores, name):
    assert got.dtype == scores.dtype, name
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected), err_msg=name)
    np.testing.assert_array_equal(got, expected, err_msg=name)
    assert not np.array_equal(got, scores), f"{name} changed nothing: the comparison proves little"


# --- processors and warpers against transformers' classes -------------------------------------------


def processor_cases(hf):
    """(name, ours, theirs, input_ids) for each processor; the ids end with the prefixes biased."""
    torch = pytest.importorskip("torch")
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3], [5, 8, 9, 7, 9], [3, 2, 3, 8, 4]])
    bias = {(7,): 2.5, (1, 5, 2): -1.5, (4, 6): 3.0, (8, 4, 6): 1.25, (4, 0): -4.0}
    bad = [[11], [5, 3], [8, 4, 10], [EOS]]
    return [
        ("sequence_bias", lp.sequence_bias_processor(bias), hf.SequenceBiasLogitsProcessor(dict(bias)), ids),
        ("bad_words_ids", lp.bad_words_processor(bad, EOS), hf.NoBadWordsLogitsProcessor(bad, EOS), ids),
        ("forced_bos", lp.forced_bos_processor(4), hf.ForcedBOSTokenLogitsProcessor(4), ids[:, :1]),
        ("forced_eos", lp.forced_eos_processor(6, [2, 7]), hf.ForcedEOSTokenLogitsProcessor(6, [2, 7]), ids),
        ("exponential_decay", lp.exponential_decay_processor(1, 1.7, [2, 3], 2),
         hf.ExponentialDecayLengthPenalty((1, 1.7), [2, 3], 2), ids),
        ("suppress_tokens", lp.suppress_tokens_processor([0, 3, 11]), hf.SuppressTokensLogitsProcessor([0, 3, 11]),
         ids),
        ("begin_suppress", lp.begin_suppress_processor([1, 2], 5),
         hf.SuppressTokensAtBeginLogitsProcessor([1, 2], 5), ids),
    ], torch


def test_processors_equal_transformers_classes():
    pytest.importorskip("transformers")
    from transformers.generation import logits_process as hf

    cases, torch = processor_cases(hf)
    rng = np.random.default_rng(0)
    for name, ours, theirs, ids in cases:
        scores = tied_scores(rng, (4, 12), np.float32)
        expected = theirs(torch.tensor(ids), torch.tensor(scores)).numpy()
        assert_equal_and_changed(ours(ids, scores.copy()), expected, scores, name)


def test_position_bound_processors_act_only_at_their_position():
    scores = np.zeros((2, 5), np.float32)
    ids = np.zeros((2, 4), np.int64)
    for processor in (lp.forced_bos_processor(1), lp.forced_eos_processor(6, 2), lp.begin_suppress_processor([1], 3),
                      lp.exponential_decay_processor(2, 2.0, 1, 3)):
        assert processor(ids, scores) is scores


WARPERS = [("min_p", lambda k: lp.min_p_warper(0.2, k), lambda hf, k: hf.MinPLogitsWarper(0.2, min_tokens_to_keep=k)),
           ("typical_p", lambda k: lp.typical_warper(0.6, k),
            lambda hf, k: hf.TypicalLogitsWarper(0.6, min_tokens_to_keep=k)),
           ("epsilon_cutoff", lambda k: lp.epsilon_warper(0.08, k),
            lambda hf, k: hf.EpsilonLogitsWarper(0.08, min_tokens_to_keep=k)),
           ("eta_cutoff", lambda k: lp.eta_warper(0.0625, k),  # 0.0625: the same in float32 (transformers')
            lambda hf, k: hf.EtaLogitsWarper(0.0625, min_tokens_to_keep=k))]


@pytest.mark.parametrize("name, ours, theirs", WARPERS, ids=[w[0] for w in WARPERS])
def test_warpers_equal_transformers_classes(name, ours, theirs):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.generation import logits_process as hf

    rng = np.random.default_rng(1)
    ids = np.zeros((6, 3), np.int64)
    for trial in range(20):
        scores = tied_scores(rng, (6, 16), np.float64)  # warp_logits works in float64
        expected = theirs(hf, 1)(torch.tensor(ids), torch.tensor(scores)).numpy()
        assert_equal_and_changed(ours(1)(scores.copy()), expected, scores, f"{name} trial {trial}")
    # min_tokens_to_keep > 1, on scores without ties (transformers picks among tied ones by index)
    scores = rng.standard_normal((6, 16)) * 4
    for k in (3, 16):
        expected = theirs(hf, k)(torch.tensor(ids), torch.tensor(scores)).numpy()
        got = ours(k)(scores.copy())
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} min_tokens_to_keep={k}")
        assert (np.isfinite(got).sum(axis=1) >= k).all()


def test_order_of_the_processors_is_transformers():
    knobs = lp.check_knobs(dict(sequence_bias={(3,): 1.0}, bad_words_ids=[[4]], forced_bos_token_id=2,
                                forced_eos_token_id=5, exponential_decay_length_penalty=(1, 1.5),
                                suppress_tokens=[6], begin_suppress_tokens=[7]), 20)
    names = [p.__qualname__.split(".")[0] for p in _logits_processors(3, None, np.array([1]), 1.2, 2, 0, 2, knobs, 9)]
    assert names == ["sequence_bias_processor", "repetition_penalty_processor", "no_repeat_ngram_processor",
                     "sequence_bias_processor", "min_length_processor", "forced_bos_processor",
                     "forced_eos_processor", "exponential_decay_processor", "suppress_tokens_processor",
                     "begin_suppress_processor"]


# --- greedy and beam search against transformers' generate ----------------------------------------------


def hf_generate(hf, ids, **kwargs):
    import torch

    with torch.no_grad():
        return hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                           pad_token_id=PAD, **kwargs).numpy()


def knob_cases(plain, prompt_len):
    """Knobs built from what plain greedy decoding produced, so that each of them changes it."""
    first, second = int(plain[0, prompt_len]), int(plain[0, prompt_len + 1])
    later = (int(plain[1, prompt_len + 2]), int(plain[1, prompt_len + 3]))
    return [
        dict(bad_words_ids=[[first]]),
        dict(bad_words_ids=[list(later), [int(plain[2, prompt_len + 1])]]),
        dict(suppress_tokens=[first, int(plain[1, prompt_len])]),
        dict(begin_suppress_tokens=[first, int(plain[2, prompt_len])]),
        dict(forced_eos_token_id=7),
        dict(sequence_bias={(first,): -8.0, (first, second): 4.0, later: -20.0}),
        dict(sequence_bias=[[[second], 6.0]]),
    ]


def test_greedy_with_each_processor_equals_transformers(pair):
    hf, ours = pair
    ids = prompts()
    plain = ours.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=PAD)
    for knobs in knob_cases(plain, ids.shape[1]):
        mine = ours.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=PAD, **knobs)
        np.testing.assert_array_equal(mine, hf_generate(hf, ids, max_new_tokens=10, do_sample=False, **knobs),
                                      err_msg=str(knobs))
        assert not np.array_equal(mine, plain), f"{knobs} changed nothing"


def test_forced_bos_and_the_begin_index_after_it_equal_transformers(pair):
    hf, ours = pair
    ids = prompts(length=1)  # a one-token prompt: where transformers forces BOS
    plain = ours.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    knobs = dict(forced_bos_token_id=9, begin_suppress_tokens=[int(t) for t in plain[:, 2]])
    mine = ours.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=PAD, **knobs)
    np.testing.assert_array_equal(mine, hf_generate(hf, ids, max_new_tokens=6, do_sample=False, **knobs))
    assert (mine[:, 1] == 9).all() and not np.array_equal(mine, plain)


def test_exponential_decay_length_penalty_equals_transformers(pair):
    hf, ours = pair
    ids = prompts()
    eos = int(ours.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)[0, -1])
    plain = ours.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
    knobs = dict(exponential_decay_length_penalty=(2, 4.0), eos_token_id=eos)
    mine = ours.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=PAD, **knobs)
    np.testing.assert_array_equal(mine, hf_generate(hf, ids, max_new_tokens=12, do_sample=False, **knobs))
    assert mine.shape[1] < plain.shape[1] or not np.array_equal(mine, plain)


def test_beam_search_with_the_processors_equals_transformers(pair):
    hf, ours = pair
    ids = prompts(seed=2)
    beams = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False)
    plain = ours.generate(ids, pad_token_id=PAD, **beams)
    for knobs in knob_cases(plain[::2], ids.shape[1]):
        mine = ours.generate(ids, pad_token_id=PAD, **beams, **knobs)
        np.testing.assert_array_equal(mine, hf_generate(hf, ids, **beams, **knobs), err_msg=str(knobs))
        assert not np.array_equal(mine, plain), f"{knobs} changed nothing"


# --- sampling warpers ---------------------------------------------------------------------------------------


def hf_warpers(hf, temperature, knobs):
    """transformers' warpers for ``knobs``, in its order."""
    make = dict(top_k=hf.TopKLogitsWarper, min_p=hf.MinPLogitsWarper, typical_p=hf.TypicalLogitsWarper,
                epsilon_cutoff=hf.EpsilonLogitsWarper, eta_cutoff=hf.EtaLogitsWarper)
    return [hf.TemperatureLogitsWarper(temperature)] + [cls(knobs[k]) for k, cls in make.items() if k in knobs]


@pytest.mark.parametrize("knobs", [dict(min_p=0.3), dict(typical_p=0.5), dict(epsilon_cutoff=0.02),
                                   dict(eta_cutoff=0.02), dict(min_p=0.1, typical_p=0.9, top_k=20)], ids=str)
def test_sampled_tokens_lie_in_the_warpers_kept_set(pair, knobs):
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as hf

    _, ours = pair
    ids = prompts(batch=4)
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.3, seed=5, **{"top_k": 0, **knobs})
    out = ours.generate(ids, return_dict_in_generate=True, output_logits=True, **kwargs)
    np.testing.assert_array_equal(ours.generate(ids, **kwargs), out.sequences)  # same seed, same tokens
    assert not np.array_equal(ours.generate(ids, **{**kwargs, "seed": 6}), out.sequences)
    warpers = hf_warpers(hf, 1.3, knobs)
    filtered = 0
    for step, logits in enumerate(out.logits):
        scores = torch.tensor(logits.astype(np.float64))
        for warp in warpers:
            scores = warp(None, scores)
        kept = np.isfinite(scores.numpy())  # (rows, V): transformers' kept set
        chosen = out.sequences[:, ids.shape[1] + step]
        live = ~(out.sequences[:, ids.shape[1]:ids.shape[1] + step] == EOS).any(axis=1)  # not padding after EOS
        assert kept[np.arange(len(chosen)), chosen][live].all(), f"step {step}: a token outside the kept set"
        filtered += (~kept).sum()
    assert filtered > 0, "the warper kept every token: the check proves little"


def test_sampling_takes_the_processors(pair):
    _, ours = pair
    ids = prompts(batch=4)
    kwargs = dict(max_new_tokens=12, do_sample=True, top_k=0, seed=3)
    plain = ours.generate(ids, **kwargs)
    banned = sorted({int(t) for t in plain[:, ids.shape[1]:].reshape(-1)} - {EOS, PAD})[:8]
    out = ours.generate(ids, suppress_tokens=banned[:4], bad_words_ids=[[t] for t in banned[4:]], **kwargs)
    assert not np.isin(out[:, ids.shape[1]:], banned).any() and np.isin(plain[:, ids.shape[1]:], banned).any()


# --- stop strings on GPT-2's real tokenizer -----------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_real_vocab(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from tinyllm.tokenizers import AutoTokenizer

    directory = make_gpt2_dir(tmp_path_factory.mktemp("gpt2-stop"), seed=3)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    return hf, GPT.from_pretrained(directory), hf_tok, AutoTokenizer.from_pretrained(directory)


def spanning_stop_string(tokenizer, row, start):
    """A stop string made of the end of one generated token and the start of the next (both plain
    ASCII of >= 2 characters), and the index of the second token."""
    for i in range(start, len(row) - 1):
        a, b = tokenizer.decode([int(row[i])]), tokenizer.decode([int(row[i + 1])])
        if len(a.strip()) >= 2 and len(b.strip()) >= 2 and (a + b).isascii():
            return a.strip()[-2:] + b[:2], i + 1
    pytest.skip("no two neighbouring ASCII tokens to span")


def test_stop_strings_equal_transformers_with_a_string_spanning_two_tokens(gpt2_real_vocab):
    import torch

    hf, ours, hf_tok, our_tok = gpt2_real_vocab
    ids = np.array(hf_tok(["The quick brown fox", "Hello there, my"])["input_ids"][:1] * 2)
    ids[1, -1] = hf_tok.encode(" friend")[0]
    eos = hf_tok.eos_token_id
    plain = ours.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=eos)
    stop, second = spanning_stop_string(hf_tok, plain[0], ids.shape[1] + 2)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                             max_new_tokens=16, do_sample=False, pad_token_id=eos, stop_strings=[stop, "@@@@"],
                             tokenizer=hf_tok).numpy()
    for tokenizer in (hf_tok, our_tok):
        mine = ours.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=eos, stop_strings=[stop, "@@@@"],
                             tokenizer=tokenizer)
        np.testing.assert_array_equal(mine, theirs, err_msg=f"stop string {stop!r}, tokenizer {type(tokenizer)}")
    assert theirs.shape[1] == second + 1 or (theirs[0, second + 1:] == eos).all(), "row 0 did not stop there"
    assert stop in hf_tok.decode(theirs[0, :second + 1]) and stop not in hf_tok.decode(theirs[0, :second])


def test_stop_strings_in_beam_search_equal_transformers(gpt2_real_vocab):
    import torch

    hf, ours, hf_tok, our_tok = gpt2_real_vocab
    ids = np.array(hf_tok(["The quick brown fox", "Once upon a time"])["input_ids"][:1] * 2)
    ids[1, -1] = hf_tok.encode(" cat")[0]
    eos = hf_tok.eos_token_id
    kwargs = dict(max_new_tokens=10, do_sample=False, num_beams=3, num_return_sequences=2, pad_token_id=eos)
    plain = ours.generate(ids, **kwargs)
    stop, _ = spanning_stop_string(hf_tok, plain[0], ids.shape[1] + 1)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                             stop_strings=stop, tokenizer=hf_tok, **kwargs).numpy()
    mine = ours.generate(ids, stop_strings=stop, tokenizer=our_tok, **kwargs)
    np.testing.assert_array_equal(mine, theirs, err_msg=f"stop string {stop!r}")
    assert not np.array_equal(mine, plain), f"the stop string {stop!r} changed nothing"


def test_stop_strings_end_sampled_rows_where_the_string_is_made(gpt2_real_vocab):
    _, ours, hf_tok, our_tok = gpt2_real_vocab
    ids = np.array(hf_tok(["Once upon a time", "Once upon a time"])["input_ids"])
    eos = hf_tok.eos_token_id
    kwargs = dict(max_new_tokens=16, do_sample=True, top_k=0, seed=0, pad_token_id=eos)
    plain = ours.generate(ids, **kwargs)
    stop, second = spanning_stop_string(hf_tok, plain[0], ids.shape[1] + 1)
    out = ours.generate(ids, stop_strings=stop, tokenizer=our_tok, **kwargs)
    np.testing.assert_array_equal(out[0, :second + 1], plain[0, :second + 1])  # the same draws until the stop
    assert (out[0, second + 1:] == eos).all() and out.shape[1] > second + 1  # then padding while row 1 goes on


def test_a_stop_string_in_the_prompt_alone_stops_nothing(gpt2_real_vocab):
    hf, ours, hf_tok, our_tok = gpt2_real_vocab
    ids = np.array(hf_tok(["The quick brown fox"])["input_ids"])
    plain = ours.generate(ids, max_new_tokens=6, do_sample=False)
    out = ours.generate(ids, max_new_tokens=6, do_sample=False, stop_strings="quick", tokenizer=our_tok)
    np.testing.assert_array_equal(out, plain)


def test_stop_strings_by_hand():
    table = [b"st", b"op", b"stop", b"opera", b"las", b"topper", b"s", b"to", b"pped", b"at", b"x"]
    tokenizer = type("T", (), {"get_vocab": lambda self: {t.decode(): i for i, t in enumerate(table)},
                               "convert_tokens_to_string": lambda self, tokens: "".join(tokens)})()
    stopped = lp.stop_strings_criterion(["stop"], tokenizer, len(table))
    names = {t.decode(): i for i, t in enumerate(table)}

    def rows(*seqs):
        width = max(map(len, seqs))
        return np.array([[names["x"]] * (width - len(s)) + [names[t] for t in s] for s in seqs])

    yes = rows(["st", "op"], ["stop"], ["st", "opera"], ["s", "to", "pped"], ["las", "topper"])
    no = rows(["stop", "at"], ["st", "op", "at"], ["st", "opera", "to"], ["x", "st"])
    assert stopped(yes).all() and not stopped(no).any()


# --- generation_config --------------------------------------------------------------------------------------


def small_model():
    return GPT(GPTConfig(vocab_size=30, block_size=32, n_layer=1, n_head=2, n_embd=16), seed=0)


def test_generation_config_fields_are_defaults_and_explicit_arguments_win():
    model = small_model()
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    plain = model.generate(ids, max_new_tokens=6, do_sample=False)
    banned = [int(t) for t in np.unique(plain[:, 3:])]
    config = dict(do_sample=False, max_new_tokens=6, suppress_tokens=banned)
    out = model.generate(ids, generation_config=config)
    np.testing.assert_array_equal(out, model.generate(ids, max_new_tokens=6, do_sample=False, suppress_tokens=banned))
    assert out.shape == (2, 9) and not np.isin(out[:, 3:], banned).any()
    np.testing.assert_array_equal(model.generate(ids, generation_config=config, suppress_tokens=[0]),
                                  model.generate(ids, max_new_tokens=6, do_sample=False, suppress_tokens=[0]))
    assert model.generate(ids, generation_config=config, max_new_tokens=2).shape == (2, 5)
    model.generation_config.update(do_sample=False, suppress_tokens=banned)  # the model's own defaults
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=6), out)
    assert model.generate(ids, max_new_tokens=6, generation_config=dict(suppress_tokens=[0])).tolist() != out.tolist()


def test_a_transformers_generation_config_gives_the_fields_it_sets():
    transformers = pytest.importorskip("transformers")
    model = small_model()
    ids = np.array([[1, 2, 3]])
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=5, bad_words_ids=[[7], [8, 9]])
    np.testing.assert_array_equal(model.generate(ids, generation_config=config),
                                  model.generate(ids, do_sample=False, max_new_tokens=5, bad_words_ids=[[7], [8, 9]]))
    with pytest.raises(ValueError, match="guidance_scale"):
        model.generate(ids, generation_config=transformers.GenerationConfig(guidance_scale=2.0))


def test_a_generation_config_sets_the_switches_too():
    model = small_model()
    ids = np.array([[1, 2, 3]])
    out = model.generate(ids, max_new_tokens=3, generation_config=dict(return_dict_in_generate=True, output_scores=True,
                                                                       do_sample=False))
    assert len(out.scores) == 3 and out.sequences.shape == (1, 6)
    assert isinstance(model.generate(ids, max_new_tokens=3, generation_config=dict(return_dict_in_generate=True),
                                     return_dict_in_generate=False), np.ndarray)


def test_the_new_knobs_of_generation_config_survive_a_gpt2_directory(pair, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, ours = pair
    ids = prompts()
    knobs = dict(sequence_bias={(5,): -3.0, (7, 8): 2.0}, suppress_tokens=[9, 10], do_sample=False, max_new_tokens=6)
    ours.generation_config.update(knobs)
    try:
        expected = ours.generate(ids, pad_token_id=PAD)
        ours.save_pretrained(tmp_path)
    finally:
        ours.generation_config.update(sequence_bias=None, suppress_tokens=None, do_sample=False, max_new_tokens=None)
    assert not np.array_equal(expected, ours.generate(ids, pad_token_id=PAD, max_new_tokens=6))
    np.testing.assert_array_equal(GPT.from_pretrained(tmp_path).generate(ids, pad_token_id=PAD), expected)
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert theirs.suppress_tokens == [9, 10] and theirs.sequence_bias == [[[5], -3.0], [[7, 8], 2.0]]


# --- the encoder-decoder ------------------------------------------------------------------------------------


def test_encoder_decoder_takes_the_knobs_on_its_decoder_ids():
    from tinyllm.models.encdec import EncoderDecoderConfig, EncoderDecoderTransformer

    model = EncoderDecoderTransformer(EncoderDecoderConfig(src_vocab_size=20, tgt_vocab_size=20, max_src_len=8,
                                                           max_tgt_len=10, d_model=16, n_head=2, d_ff=32,
                                                           n_encoder_layers=1, n_decoder_layers=1))
    src = np.array([[5, 6, 7, 8], [9, 10, 11, 12]])
    plain = model.generate(src, max_new_tokens=6, eos_token_id=19)  # an EOS it does not produce: 6 tokens a row
    assert plain.shape == (2, 7) and 19 not in plain
    forced = model.generate(src, max_new_tokens=6, forced_bos_token_id=13, forced_eos_token_id=14,
                            suppress_tokens=[int(plain[0, 2])])
    assert (forced[:, 1] == 13).all() and (forced[:, -1] == 14).all() and int(plain[0, 2]) not in forced[:, 2:-1]
    for num_beams, do_sample in ((1, False), (1, True), (3, False)):
        out = model.generate(src, max_new_tokens=6, num_beams=num_beams, do_sample=do_sample, seed=0,
                             bad_words_ids=[[int(t)] for t in np.unique(plain[:, 1:])], min_p=0.05)
        assert not np.isin(out[:, 1:], plain[:, 1:]).any()


def test_encoder_decoder_stops_at_stop_strings_of_its_decoder_text():
    from tinyllm.models.encdec import EncoderDecoderConfig, EncoderDecoderTransformer

    model = EncoderDecoderTransformer(EncoderDecoderConfig(src_vocab_size=20, tgt_vocab_size=20, max_src_len=8,
                                                           max_tgt_len=10, d_model=16, n_head=2, d_ff=32,
                                                           n_encoder_layers=1, n_decoder_layers=1), seed=1)
    letters = {chr(ord("a") + i): i for i in range(20)}  # token i spells one letter
    tokenizer = type("Letters", (), {"get_vocab": lambda self: dict(letters),
                                     "convert_tokens_to_string": lambda self, tokens: "".join(tokens)})()
    src = np.array([[5, 6, 7, 8], [9, 10, 11, 12]])
    plain = model.generate(src, max_new_tokens=8, eos_token_id=19)
    assert plain.shape == (2, 9) and 19 not in plain
    stop = "".join(chr(ord("a") + int(t)) for t in plain[0, 3:5])
    for num_beams in (1, 3):
        out = model.generate(src, max_new_tokens=8, eos_token_id=19, pad_token_id=0, num_beams=num_beams,
                             stop_strings=stop, tokenizer=tokenizer)
        text = "".join(chr(ord("a") + int(t)) for t in out[0])
        assert stop in text[:6] and out.shape[1] <= 9
        if num_beams == 1:
            assert (out[0, 5:] == 0).all() and 0 not in out[1, 1:]  # row 0 padded after the stop, row 1 went on


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_p=1.5), r"min_p must be a number in \[0, 1\], got 1.5"),
    (dict(typical_p=0.0), r"typical_p must be a number in \(0, 1\].*got 0.0"),
    (dict(epsilon_cutoff=1.0), r"epsilon_cutoff must be a number in \[0, 1\).*got 1.0"),
    (dict(eta_cutoff=-0.1), r"eta_cutoff .* got -0.1"),
    (dict(bad_words_ids=[[3], [40]]), "bad_words_ids holds 40, not a token id in 0..29"),
    (dict(bad_words_ids=[3, 4]), "bad_words_ids must be a list of token ids, got 3"),
    (dict(bad_words_ids=[[]]), "bad_words_ids holds an empty list"),
    (dict(suppress_tokens=[-1]), "suppress_tokens holds -1"),
    (dict(forced_bos_token_id=30), "forced_bos_token_id holds 30"),
    (dict(sequence_bias={(1, 2): "high"}), r"sequence_bias gives \(1, 2\) the bias 'high'"),
    (dict(sequence_bias={}), "sequence_bias must not be empty"),
    (dict(sequence_bias=[[1, 2]]), r"sequence_bias must be a list of token ids, got 1"),
    (dict(sequence_bias=[1, 2]), r"sequence_bias must be a dict"),
    (dict(exponential_decay_length_penalty=(2, 1.5)), "needs an eos_token_id"),
    (dict(exponential_decay_length_penalty=(-1, 1.5), eos_token_id=2), r"\(start_index >= 0, decay_factor > 0\)"),
    (dict(forced_eos_token_id=[4, 5], suppress_tokens=[5, 4, 6]), "forced_eos_token_id=.* also in suppress_tokens"),
    (dict(stop_strings=""), "stop_strings must be a non-empty string"),
    (dict(stop_strings="ab"), "pass tokenizer="),
    (dict(generation_config=dict(min_q=0.1)), r"generation_config sets \['min_q'\]"),
])
def test_bad_values_are_named(kwargs, match):
    model = small_model()
    with pytest.raises((ValueError, TypeError), match=match):
        model.generate(np.array([[1, 2, 3]]), max_new_tokens=3, **kwargs)
