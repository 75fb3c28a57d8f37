"""The tokenizer calls transformers users make beyond padding and truncation, against transformers 5's
GPT-2 tokenizer (``AutoTokenizer`` on GPT-2's real files, the fixture ``hf_auto``): ids the vocabulary
lacks, ``model_max_length``, the ``return_*`` options of the call, pairs of texts, ``text_target``.
"""
import json
import shutil
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenizer_helpers import assert_same, call
from tinyllm.tokenizers import AutoTokenizer, BPETokenizer, CharTokenizer, Seq2SeqTokenizer

EOT = "<|endoftext|>"
TEXTS = ["Hello world", "café 日本語 🎉", "  lead and trail  ", "", " ", "a\u00e9\u0301b", f"x {EOT}y 😀",
         "don't stop\n\nme now!!", "1234 + 56 = 1290"]
VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit"


@pytest.fixture(scope="module")
def gpt2_dir(gpt2_files, tmp_path_factory):
    """GPT-2's files as a directory transformers' AutoTokenizer reads (config.json names the model)."""
    directory = tmp_path_factory.mktemp("gpt2")
    shutil.copy(gpt2_files[0], directory / "vocab.json")
    shutil.copy(gpt2_files[1], directory / "merges.txt")
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return directory


@pytest.fixture(scope="module")
def hf_auto(gpt2_dir):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(str(gpt2_dir))


# ---- ids the vocabulary lacks -------------------------------------------------------------------
@pytest.mark.parametrize("ids", [[15496, 50257], [50257], [15496, 60000, 995], [2 ** 31], [10545, 99999, 245, 98],
                                 [[15496, 60000], [50300, 995]], 60000])
def test_an_id_the_vocabulary_lacks_decodes_as_in_transformers(ours, hf_auto, ids):
    """transformers 5 drops it (a model whose embedding table was rounded up, as nanoGPT's 50304, can
    sample one); convert_ids_to_tokens gives None for it."""
    assert ours.decode(ids) == hf_auto.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == hf_auto.decode(ids, skip_special_tokens=True)
    if isinstance(ids, list) and not isinstance(ids[0], list):
        assert ours.batch_decode([ids, ids]) == hf_auto.batch_decode([ids, ids])
        assert ours.convert_ids_to_tokens(ids) == hf_auto.convert_ids_to_tokens(ids)
    assert ours.decode([15496, 60000]) == "Hello"  # not vacuous: the known id is kept


@pytest.mark.parametrize("bad", [-1, 2 ** 32, 2 ** 64])
def test_an_impossible_id_is_an_error_in_both(ours, hf_auto, bad):
    for function in ("decode", "convert_ids_to_tokens"):
        with pytest.raises(OverflowError):
            getattr(hf_auto, function)([15496, bad])
        with pytest.raises(ValueError, match=f"id {bad} is not a token id"):
            getattr(ours, function)([15496, bad])
    with pytest.raises(ValueError, match=f"id {bad} is not a token id"):
        ours.convert_ids_to_tokens(bad)


def test_every_tokenizer_skips_an_unknown_id():
    char = CharTokenizer.from_text("abc")
    assert char.decode([0, 3, 99, 2]) == "ac" and char.convert_ids_to_tokens([0, 99]) == ["a", None]
    s2s = Seq2SeqTokenizer.train(["hello there", "bonjour"], vocab_size=270)
    assert s2s.decode(s2s.encode("hello") + [s2s.vocab_size + 5]) == "hello</s>"
    with pytest.raises(ValueError, match="id -2 is not a token id"):
        s2s.decode([-2])


# ---- model_max_length ---------------------------------------------------------------------------
def test_model_max_length_of_a_directory_without_one_and_with_gpt2s(gpt2_dir, hf_auto, tmp_path):
    """No model_max_length in the files: transformers reports 1e30 and neither truncates nor pads to it;
    GPT-2's own tokenizer_config.json says 1024, which truncation=True then cuts to."""
    transformers = pytest.importorskip("transformers")
    mine = AutoTokenizer.from_pretrained(gpt2_dir)
    assert mine.model_max_length == hf_auto.model_max_length == VERY_LARGE_INTEGER
    long_texts = ["word " * 1500, "short"]
    for kwargs in (dict(truncation=True), dict(truncation="longest_first", return_tensors=None)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tinyllm says that nothing is truncated; transformers 5 is silent
            assert dict(mine(long_texts, **kwargs)) == dict(hf_auto(long_texts, **kwargs))
    directory = shutil.copytree(gpt2_dir, tmp_path / "gpt2_1024")
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    mine = AutoTokenizer.from_pretrained(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert mine.model_max_length == theirs.model_max_length == 1024
    enc = mine(long_texts, truncation=True)
    assert list(map(len, enc.input_ids)) == [1024, 1] and dict(enc) == dict(theirs(long_texts, truncation=True))
    assert min(mine.model_max_length, 512) == 512  # what Hugging Face scripts compute


def test_model_max_length_is_written_and_read_back(gpt2_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = BPETokenizer.from_gpt2_files(*gpt2_files)
    tok.save_pretrained(tmp_path / "none")
    assert "model_max_length" not in json.loads((tmp_path / "none" / "tokenizer_config.json").read_text())
    for load in (AutoTokenizer.from_pretrained, lambda d: transformers.GPT2Tokenizer.from_pretrained(str(d))):
        assert load(tmp_path / "none").model_max_length == VERY_LARGE_INTEGER
    tok.model_max_length = 1024
    tok.save_pretrained(tmp_path / "gpt2")
    assert json.loads((tmp_path / "gpt2" / "tokenizer_config.json").read_text())["model_max_length"] == 1024
    for load in (AutoTokenizer.from_pretrained, lambda d: transformers.GPT2Tokenizer.from_pretrained(str(d))):
        assert load(tmp_path / "gpt2").model_max_length == 1024
    (tmp_path / "gpt2" / "tinyllm_tokenizer.json").unlink()  # from GPT-2's files alone
    assert AutoTokenizer.from_pretrained(tmp_path / "gpt2").model_max_length == 1024
    tok.model_max_length = None  # unknown again
    assert tok.model_max_length == VERY_LARGE_INTEGER and "model_max_length" not in tok.to_dict()


# ---- the return_* options, pairs, text_target -----------------------------------------------------
OPTIONS = dict(return_offsets_mapping=True, return_length=True, return_special_tokens_mask=True,
               return_token_type_ids=True)


def _outcome(tok, text, kwargs):
    """call()'s outcome; the tokenizers library's own truncation error (a plain Exception) counts as a ValueError."""
    try:
        return call(tok, text, kwargs)
    except Exception as e:  # noqa: BLE001 -- only transformers' "Truncation error: ..." is expected here
        assert "Truncation error" in str(e), e
        return "error", ValueError


@pytest.fixture()
def padded(ours, hf_auto):
    for tok in (ours, hf_auto):
        tok.pad_token, tok.padding_side, tok.truncation_side = EOT, "right", "right"
    yield ours, hf_auto
    for tok in (ours, hf_auto):
        tok.pad_token = None


@pytest.mark.parametrize("kwargs", [OPTIONS, dict(OPTIONS, padding=True),
                                    dict(OPTIONS, padding=True, return_tensors="np"),
                                    dict(OPTIONS, padding="max_length", max_length=12, truncation=True,
                                         padding_side="left"),
                                    dict(OPTIONS, truncation=True, max_length=3, return_tensors="np", padding=True),
                                    dict(return_length=True, padding=True, pad_to_multiple_of=8),
                                    dict(return_offsets_mapping=True, return_attention_mask=False),
                                    dict(return_token_type_ids=False, return_special_tokens_mask=True, verbose=False)],
                         ids=["all", "padded", "np", "max_length-left", "truncated-np", "length", "offsets", "mask"])
def test_the_return_options_equal_transformers(padded, kwargs):
    """Offsets (a byte-level token inside "日" or "🎉" covers that character), lengths (after padding),
    the special tokens mask and token type ids, on each text alone and on the batch."""
    ours, hf_auto = padded
    for text in TEXTS + [TEXTS]:
        assert_same(call(ours, text, kwargs), call(hf_auto, text, kwargs), (text, kwargs))
    if kwargs.get("return_offsets_mapping") and "max_length" not in kwargs:
        offsets = ours("café 日本語 🎉", **kwargs)["offset_mapping"]
        offsets = offsets[0].tolist() if "return_tensors" in kwargs else offsets
        assert [tuple(o) for o in offsets[:6]] == [(0, 1), (1, 3), (3, 4), (4, 6), (5, 6), (5, 6)]  # not vacuous


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_first", "only_second"])
def test_pairs_of_texts_and_their_truncation_equal_transformers(padded, truncation):
    """GPT-2 encodes a pair as the two texts one after the other (token type 0, then 1); the strategies
    decide which loses tokens, and one too short to lose them is an error in both."""
    ours, hf_auto = padded
    compared = errors = 0
    for max_length in (None, 0, 1, 2, 3, 5, 8):
        for text, pair in ((TEXTS, TEXTS[::-1]), ("Hello world big dog", "café x y z"), ("a b c d e", "x y z")):
            kwargs = dict(OPTIONS, text_pair=pair, truncation=truncation, max_length=max_length, padding=True)
            mine = _outcome(ours, text, kwargs)
            assert_same(mine, _outcome(hf_auto, text, kwargs), (text, pair, kwargs))
            compared, errors = compared + 1, errors + (mine[0] == "error")
    assert (errors > 0) == str(truncation).startswith("only") and compared == 21
    assert ours("Hello", "world").input_ids == [15496, 6894] == hf_auto("Hello", "world")["input_ids"]


PIECES = list("ab é日🎉\n'!1") + [EOT, "\u0301", "  ", "you're"]


@given(text=st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_offsets_of_drawn_texts_equal_transformers(ours, hf_auto, text):
    kwargs = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
    assert_same(call(ours, text, kwargs), call(hf_auto, text, kwargs), text)


def test_pair_errors_equal_transformers(ours, hf_auto):
    for text, pair, kind in ((["a", "b"], ["c"], ValueError), ("a", ["c", "d"], TypeError),
                             (["a", "b"], "c", TypeError)):
        with pytest.raises(kind):
            hf_auto(text, pair)
        with pytest.raises(kind, match="text_pair"):
            ours(text, pair)
    with pytest.raises(ValueError, match="no text_pair was given"):
        ours("Hello world", truncation="only_second", max_length=1)
    with pytest.raises(ValueError, match="text_pair is not supported by Seq2SeqTokenizer"):
        Seq2SeqTokenizer.train(["ab ba"], vocab_size=262)("a", "b")


def test_text_target_gives_labels_as_transformers(padded):
    """labels: the targets' input_ids, with the same padding (pad id, not -100) and truncation."""
    ours, hf_auto = padded
    sources, targets = ["Hi", "Hello there you", "café"], ["Bye now friend", "x", " 日本語 🎉"]
    for kwargs in (dict(), dict(padding=True), dict(padding=True, return_tensors="np"),
                   dict(truncation=True, max_length=2),
                   dict(OPTIONS, padding="max_length", max_length=6), dict(text_pair_target=["a", "b", "c"])):
        for text, target in ((sources, targets), (sources[1], targets[0]), (None, targets)):
            kwargs = dict(kwargs, text_target=target)
            if "text_pair_target" in kwargs and isinstance(target, str):
                kwargs["text_pair_target"] = "a"
            assert_same(call(ours, text, kwargs), call(hf_auto, text, kwargs), (text, kwargs))
    labels = ours(sources, text_target=targets, padding=True)["labels"]
    assert labels[1][0] == 87 and set(labels[1][1:]) == {50256} and len(labels[1]) == len(labels[2]) > 2
    for tok in padded:
        with pytest.raises(ValueError):
            tok(text_pair="Hi")


def _marian_style_oracle(tok):
    """transformers' tokenizer for ``tok`` (a Seq2SeqTokenizer on a BPE): the same byte-level BPE in the
    tokenizers library, with ``</s>`` appended to each text as Marian's and T5's tokenizers do."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    merges = [tuple(m.split(" ")) for m in tok.base._gpt2_merges()]
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(tok.base._gpt2_vocab(), merges))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = tokenizers.decoders.ByteLevel()
    backend.add_special_tokens([tok.pad_token, tok.bos_token, tok.eos_token])
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"$A {tok.eos_token}", special_tokens=[(tok.eos_token, tok.eos_token_id)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=tok.pad_token,
                                                eos_token=tok.eos_token, bos_token=tok.bos_token)


def test_seq2seq_text_target_equals_a_marian_style_transformers_tokenizer():
    sources = ["the cat sat on the mat", "a dog", "", "le chat 日本"]
    targets = ["le chat est assis", "un chien", "x", ""]
    ours = Seq2SeqTokenizer.train(sources + targets + ["the quick brown fox jumps"], vocab_size=300)
    hf = _marian_style_oracle(ours)
    assert [hf.pad_token_id, hf.eos_token_id] == [ours.pad_token_id, ours.eos_token_id]
    for kwargs in (dict(), dict(padding=True), dict(padding=True, return_tensors="np"),
                   dict(truncation=True, max_length=4, padding="max_length"), dict(OPTIONS, padding=True),
                   dict(OPTIONS, truncation=True, max_length=3, padding=True, padding_side="left")):
        for text, target in ((sources, targets), (sources[0], targets[0]), (None, targets)):
            kwargs = dict(kwargs, text_target=target)
            assert_same(call(ours, text, kwargs), call(hf, text, kwargs), (text, kwargs))
    labels = ours(sources, text_target=targets, padding=True)["labels"]
    assert labels[2] == ours.encode("x") + [ours.pad_token_id] * (len(labels[0]) - 2)  # EOS, then pad


# ---- the offsets' own definition, and the rest of the call ---------------------------------------------
def _kinds():
    s2s = Seq2SeqTokenizer.train(["the cat sat, on the mat 日本", "un chien 🎉"], vocab_size=290)
    char = CharTokenizer.from_text("".join(OFFSET_TEXTS))
    char.add_tokens(["<u>"])
    return [s2s, char, s2s.base]


OFFSET_TEXTS = ["", "the cat sat", "ab<u>c 日🎉 d", "日本 🎉 chien, un\n\n", "  a  ", "</s>ok"]


@pytest.mark.parametrize("text", OFFSET_TEXTS)
def test_offsets_come_with_the_ids_encode_gives_and_span_the_text(text):
    for tok in _kinds():
        enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        assert enc.input_ids == tok(text).input_ids == tok.encode(text)
        spans = [(s, e) for (s, e), special in zip(enc.offset_mapping, enc.special_tokens_mask) if not special]
        assert all(0 <= s < e <= len(text) for s, e in spans) and (spans[0][0] if spans else 0) == 0
        assert all(b[0] >= a[0] and b[0] <= a[1] for a, b in zip(spans, spans[1:]))  # in order, no gap
        assert (spans[-1][1] if spans else 0) == len(text)
        if text.isascii():  # each token is then whole characters: its span spells it
            pieces = [text[s:e] for s, e in spans]
            assert "".join(pieces) == text and pieces == [tok.decode([i]) for i, m in
                                                          zip(enc.input_ids, enc.special_tokens_mask) if not m]


def test_verbose_false_silences_the_calls_warnings():
    tok = CharTokenizer.from_text("abc ")
    with pytest.warns(UserWarning):
        tok("abc", truncation=True)  # no model_max_length: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok("abc", truncation=True, verbose=False).input_ids == [1, 2, 3]
        assert tok("abc", max_length=2, verbose=False).input_ids == [1, 2]


def test_unknown_options_and_a_third_positional_are_type_errors_naming_them(ours):
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['is_split_into_words', 'stride'\]"):
        ours("Hi", stride=1, is_split_into_words=False)
    with pytest.raises(TypeError, match="positional"):
        ours("Hi", "there", True)  # transformers' third positional is text_target; tinyllm asks for a keyword


def test_transformers_5_has_no_encode_plus_nor_as_target_tokenizer(hf_auto, ours):
    """Removed in transformers 5, so tinyllm adds neither: the call does their work."""
    for name in ("encode_plus", "batch_encode_plus", "as_target_tokenizer"):
        assert not hasattr(hf_auto, name) and not hasattr(ours, name)


def test_pad_pads_token_type_ids_and_the_special_tokens_mask_as_transformers(padded):
    ours, hf_auto = padded
    options = dict(return_token_type_ids=True, return_special_tokens_mask=True)
    pairs = (("Hello world", "x"), ("a", None), ("", "日本"))
    for kwargs in (dict(), dict(padding_side="left"), dict(padding="max_length", max_length=20, return_tensors="np")):
        rows = [[tok(text, pair, **options) for text, pair in pairs] for tok in padded]
        mine, theirs = ours.pad(rows[0], **kwargs), hf_auto.pad(rows[1], **kwargs)
        assert_same(("ok", dict(mine)), ("ok", dict(theirs)), kwargs)
    assert mine["token_type_ids"][0].tolist() == [0, 0, 1] + [0] * 17  # not vacuous: padded with 0


def test_a_sequence_longer_than_model_max_length_warns_as_transformers(gpt2_files):
    tok = BPETokenizer.from_gpt2_files(*gpt2_files)
    tok.model_max_length = 4
    with pytest.warns(UserWarning, match=r"sequence length is longer than the specified maximum .* \(6 > 4\)"):
        assert len(tok(["a b c d e f", "a"]).input_ids[0]) == 6  # not truncated: only a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok("a b c d e f", verbose=False)
        tok("a b c d", truncation=True)
        tok("a b c d e f", max_length=5, truncation=False)  # a max_length given: no warning, as transformers
