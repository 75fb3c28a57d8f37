"""The tokenizer calls transformers users make beyond padding and truncation, against transformers 5's
GPT-2 tokenizer (``AutoTokenizer`` on GPT-2's real files, the fixture ``hf_auto``): ids the vocabulary
lacks, ``model_max_length``, the ``return_*`` options of the call, pairs of texts, ``text_target``.
"""
import json
import shutil
import warnings

import numpy as np
import pytest

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
