"""Adding tokens, transformers' fine-tuning idiom: ``tok.add_special_tokens({"pad_token": "[PAD]"})``,
``tok.add_tokens(["<user>", "<bot>"])``, then ``model.resize_token_embeddings(len(tok))``.

The oracle is transformers 5's GPT2Tokenizer (the ``tokenizers``-backed fast tokenizer: in
transformers 5 GPT2Tokenizer and GPT2TokenizerFast are one class) built from GPT-2's own files,
against tinyllm's BPETokenizer on the same files after the same calls; the CharTokenizer, the files
and the errors need no oracle.
"""
import json
import warnings

import numpy as np
import pytest

from tinyllm.models import GPT, GPTConfig
from tinyllm.tokenizers import AutoTokenizer, BPETokenizer, CharTokenizer, Seq2SeqTokenizer, Tokenizer

EOT = "<|endoftext|>"
TEXTS = ["a<user>b", "a <user> b", "Hi<bot>hello world", " <user>  <bot>[PAD]<x>", "<user><user>", "sayhello there",
         f"{EOT}x<sys> and <sys>", "x <sys> y", "<us<user>er>", "日本語<bot> 😀", "no added token here", "",
         "<user", "[PAD][PAD] <y>\n<bot>\n"]
# the same calls on both tokenizers: (method, args, kwargs); the idiom's order, then the corner cases
CALLS = [("add_special_tokens", ({"pad_token": "[PAD]"},), {}),
         ("add_tokens", (["<user>", "<bot>", "hello", "<user>"],), {}),  # "hello" is ordinary: counted, no new id
         ("add_tokens", ("<sys>",), dict(special_tokens=True)),
         ("add_special_tokens", ({"additional_special_tokens": ["<x>", "<y>"]},), {}),
         ("add_tokens", ([],), {}),
         ("add_tokens", ("",), {}),
         ("add_tokens", (["<user>", EOT, "[PAD]"],), dict(special_tokens=True)),  # <user> becomes special
         ("add_tokens", (["<bot>"],), {})]


@pytest.fixture
def pair(gpt2_files):
    """(tinyllm's BPETokenizer, transformers' GPT2Tokenizer), both fresh from GPT-2's files."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return (BPETokenizer.from_gpt2_files(*gpt2_files),
            transformers.GPT2Tokenizer(str(gpt2_files[0]), str(gpt2_files[1])))


def assert_same_behaviour(mine, theirs, context):
    assert len(mine) == len(theirs), context
    assert mine.get_added_vocab() == theirs.get_added_vocab(), context
    assert (mine.pad_token, mine.pad_token_id) == (theirs.pad_token, theirs.pad_token_id), context
    assert mine.special_tokens_map == theirs.special_tokens_map and mine.get_vocab() == theirs.get_vocab(), context
    added = list(theirs.get_added_vocab())
    assert mine.convert_tokens_to_ids(added) == theirs.convert_tokens_to_ids(added), context
    for text in TEXTS:
        ids = mine.encode(text)
        assert ids == theirs.encode(text), (context, text)
        assert mine.tokenize(text) == theirs.tokenize(text), (context, text)
        for skip in (False, True):
            assert mine.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), \
                (context, text, skip)


def test_adding_tokens_equals_transformers_call_by_call(pair):
    mine, theirs = pair
    for method, args, kwargs in CALLS:
        counts = getattr(mine, method)(*args, **kwargs), getattr(theirs, method)(*args, **kwargs)
        assert counts[0] == counts[1], (method, args, counts)
        assert_same_behaviour(mine, theirs, (method, args))
    assert len(mine) == 50263 and mine.pad_token_id == 50257 and mine.convert_tokens_to_ids("<y>") == 50262
    assert mine.decode(mine.encode("a <user> b<x>"), skip_special_tokens=True) == "a  b"  # <user> is special now


def test_the_call_pads_with_the_new_pad_token_as_transformers(pair):
    mine, theirs = pair
    for tok in pair:
        tok.add_special_tokens({"pad_token": "[PAD]"})
        tok.add_tokens(["<user>", "<bot>"])
        tok.padding_side = "left"
    batch = ["<user> hi<bot>", "<user> a longer text<bot> ok", "x"]
    mine_enc = mine(batch, padding=True, return_tensors="np")
    their_enc = theirs(batch, padding=True, return_tensors="np")
    np.testing.assert_array_equal(mine_enc["input_ids"], their_enc["input_ids"])
    np.testing.assert_array_equal(mine_enc["attention_mask"], their_enc["attention_mask"])
    assert mine_enc["input_ids"][2, 0] == 50257
    assert mine.batch_decode(mine_enc["input_ids"], skip_special_tokens=True) == \
        theirs.batch_decode(their_enc["input_ids"], skip_special_tokens=True) == batch


def test_a_new_eos_leaves_bos_and_unk_as_transformers(pair):
    mine, theirs = pair
    for tok in pair:
        assert tok.add_special_tokens({"eos_token": "<eos>"}) == 1
        assert tok.add_special_tokens({"eos_token": EOT}) == 0  # already a special token
        assert tok.add_special_tokens({"eos_token": "<eos>"}) == 0
    for name in ("bos_token", "eos_token", "unk_token", "bos_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(mine, name) == getattr(theirs, name), name
    assert mine.eos_token_id == 50257


def test_transformers_loads_the_saved_directory_and_tinyllm_loads_every_format(pair, tmp_path):
    mine, theirs = pair
    transformers = pytest.importorskip("transformers")
    for method, args, kwargs in CALLS:  # plain and special tokens interleaved
        getattr(mine, method)(*args, **kwargs)
    mine.save_pretrained(tmp_path / "mine")
    vocab = json.loads((tmp_path / "mine" / "vocab.json").read_text())
    assert len(vocab) == 50263 and vocab["<bot>"] == 50259  # every id: else transformers renumbers past a gap
    loaded = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "mine")
    assert_same_behaviour(mine, loaded, "transformers reading tinyllm's directory")
    for again in (AutoTokenizer.from_pretrained(tmp_path / "mine"),
                  Tokenizer.load(tmp_path / "mine" / "tinyllm_tokenizer.json")):
        assert_same_behaviour(again, loaded, "tinyllm reading its own JSON")
    (tmp_path / "mine" / "tinyllm_tokenizer.json").unlink()  # now vocab.json + merges.txt + tokenizer_config.json
    assert_same_behaviour(AutoTokenizer.from_pretrained(tmp_path / "mine"), loaded, "tinyllm reading the GPT-2 files")

    for method, args, kwargs in CALLS:  # through transformers' own files (tokenizer.json)
        getattr(theirs, method)(*args, **kwargs)
    theirs.save_pretrained(tmp_path / "theirs")
    assert_same_behaviour(AutoTokenizer.from_pretrained(tmp_path / "theirs"), theirs, "tinyllm reading transformers'")


def test_plain_added_tokens_are_matched_even_with_allowed_special_none(gpt2_files):
    tok = BPETokenizer.from_gpt2_files(*gpt2_files)
    tok.add_tokens(["<user>"])
    tok.add_tokens(["<sys>"], special_tokens=True)
    ids = tok.encode("<user><sys>", allowed_special="none")
    assert ids[0] == 50257 and 50258 not in ids and tok.decode(ids) == "<user><sys>"
    assert tok.encode("<user><sys>", allowed_special={"<sys>"}) == [50257, 50258]


def test_bad_arguments_name_the_value_and_change_nothing(gpt2_files):
    tok = BPETokenizer.from_gpt2_files(*gpt2_files)
    with pytest.raises(TypeError, match="got 5"):
        tok.add_tokens(5)
    with pytest.raises(TypeError, match=r"token 1 must be a str, got 3 \(int\)"):
        tok.add_tokens(["<a>", 3])
    with pytest.raises(ValueError, match="unknown key 'sep_token'"):
        tok.add_special_tokens({"pad_token": "[PAD]", "sep_token": "[SEP]"})
    with pytest.raises(ValueError, match="pad_token must be a non-empty str, got 0"):
        tok.add_special_tokens({"pad_token": 0})
    with pytest.raises(ValueError, match="additional_special_tokens must be a list of str, got '<a>'"):
        tok.add_special_tokens({"additional_special_tokens": "<a>"})
    with pytest.raises(TypeError, match="expected a dict"):
        tok.add_special_tokens(["[PAD]"])
    assert len(tok) == 50257 and tok.pad_token is None and tok.get_added_vocab() == {EOT: 50256}
    assert tok.add_special_tokens({}) == 0


def test_a_trained_bpe_numbers_added_tokens_after_its_largest_id(tmp_path):
    tok = BPETokenizer.train("the cat sat on the mat " * 20, 270, special_tokens=[EOT])
    n = tok.vocab_size
    assert tok.add_tokens(["<user>", "the"]) == 2 and tok.add_special_tokens({"pad_token": "<pad>"}) == 1
    assert tok.convert_tokens_to_ids(["<user>", "<pad>"]) == [n, n + 1] and tok.vocab_size == len(tok) == n + 2
    ids = tok.encode("<user>the cat<pad>")
    assert ids[0] == n and ids[-1] == n + 1 and tok.decode(ids, skip_special_tokens=True) == "<user>the cat"
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back.encode("<user>the cat<pad>") == ids and back.pad_token_id == n + 1


# ---- CharTokenizer: multi-character added tokens, matched whole -------------------------------
def test_char_tokenizer_adds_multi_character_tokens(tmp_path):
    tok = CharTokenizer.from_text("hello world")  # ' ', d, e, h, l, o, r, w
    assert tok.add_special_tokens({"pad_token": "[PAD]", "eos_token": "<eos>"}) == 2
    assert tok.add_tokens(["<user>", "o", "é"]) == 3  # "o" is a character already: no new id
    assert len(tok) == tok.vocab_size == 12 and tok.get_added_vocab() == {
        "o": 5, "[PAD]": 8, "<eos>": 9, "<user>": 10, "é": 11}
    assert (tok.pad_token_id, tok.eos_token_id) == (8, 9)
    text = "hello<user>é[PAD]<eos>"
    ids = tok.encode(text)
    assert ids == [3, 2, 4, 4, 5, 10, 11, 8, 9] and tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "hello<user>é"
    assert tok(["he", "hello"], padding=True)["input_ids"] == [[3, 2, 8, 8, 8], [3, 2, 4, 4, 5]]
    with pytest.raises(ValueError, match=r"character 'x' at position 7 "):
        tok.encode("<user>hx")  # the position counts the added token's characters
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back.encode(text) == ids and (back.pad_token_id, back.eos_token_id) == (8, 9)
    assert back.decode(ids, skip_special_tokens=True) == "hello<user>é"


def test_char_tokenizer_file_with_a_gap_in_the_added_ids_is_refused(tmp_path):
    tok = CharTokenizer.from_text("ab")
    tok.add_tokens(["<u>"])
    d = tok.to_dict()
    d["added_tokens"] = {"<u>": 5}
    with pytest.raises(ValueError, match=r"added token ids \[5\] do not follow the 2 characters"):
        Tokenizer.from_dict(d)


def test_seq2seq_tokenizer_refuses_to_add_tokens():
    tok = Seq2SeqTokenizer(CharTokenizer.from_text("ab"))
    with pytest.raises(NotImplementedError, match="Seq2SeqTokenizer does not support adding tokens"):
        tok.add_tokens(["<u>"])


# ---- the whole idiom, tokenizer and model ----------------------------------------------------
def test_the_idiom_with_a_model(tmp_path):
    tok = BPETokenizer.train("the cat sat on the mat " * 20, 300)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.add_tokens(["<user>", "<bot>"])
    emb = model.resize_token_embeddings(len(tok))
    assert emb.weight.shape == (len(tok), 16) and model.config.vocab_size == len(tok)
    batch = tok(["<user> the cat<bot>", "<user> mat"], padding=True, return_tensors="np")
    labels = np.where(batch["attention_mask"] == 1, batch["input_ids"], -100)
    out = model(**batch, labels=labels)
    out.loss.backward()
    assert np.isfinite(out.loss.data) and model.transformer.wte.weight.grad.shape == (len(tok), 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.save_pretrained(tmp_path)
        tok.save_pretrained(tmp_path)
    assert GPT.from_pretrained(tmp_path).config.vocab_size == len(AutoTokenizer.from_pretrained(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == len(tok)
