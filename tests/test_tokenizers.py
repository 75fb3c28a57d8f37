"""CharTokenizer and BPETokenizer on small generated texts (no corpus, no network)."""
import json
import os
from collections import Counter

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.tokenizers import (
    GPT2_SPLIT_PATTERN,
    TOKENIZER_FILE,
    AutoTokenizer,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    bytes_to_unicode,
)

EOT = "<|endoftext|>"


def make_text(n_words=3000, seed=0):
    """A reproducible text: made-up words (Zipf-like frequencies), digits, punctuation,
    contractions, newlines and non-ASCII."""
    rng = np.random.default_rng(seed)
    syllables = ["th", "e", "king", "qu", "een", "ou", "art", "to", "be", "or", "n", "ot", "s",
                 "ca", "fé", "ï", "Ελ", "λά", "日本", "語", "😀", "ing", "ed", "ly"]
    vocab = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(400)]
    vocab += ["I'll", "we're", "2024", "3.14", "--", "!", "?", "\n", "\n\n", "  "]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    picks = rng.choice(len(vocab), size=n_words, p=weights / weights.sum())
    return " ".join(vocab[i] for i in picks)


@pytest.fixture(scope="module")
def text():
    return make_text()


@pytest.fixture(scope="module")
def bpe(text):
    return BPETokenizer.train(text, 400, special_tokens=[EOT, "<|pad|>"])


# ------------------------------------------------------------------------------------------
# CharTokenizer
# ------------------------------------------------------------------------------------------
CHAR_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nÆ ü 日"


def test_char_vocab_is_sorted_set():
    tok = CharTokenizer.from_text(CHAR_TEXT)
    assert tok.chars == sorted(set(CHAR_TEXT))
    assert tok.vocab_size == len(tok) == len(set(CHAR_TEXT))
    assert tok.encode("\n") == [0]  # newline sorts first, as in nanoGPT's shakespeare_char


@settings(deadline=None, max_examples=50)
@given(st.text(alphabet=sorted(set(CHAR_TEXT))))
def test_char_round_trip(s):
    tok = CharTokenizer.from_text(CHAR_TEXT)
    ids = tok.encode(s)
    assert len(ids) == len(s)
    assert tok.decode(ids) == s
    assert tok.decode(np.array(ids, dtype=np.int64)) == s


def test_char_unknown_character_names_it_and_its_position():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' at position 3"):
        tok.encode("abcz")
    with pytest.raises(ValueError, match=r"'\\t' at position 0"):
        tok.encode("\tab")


def test_char_skips_an_unknown_id_and_names_a_negative_one():
    tok = CharTokenizer.from_text("abc")
    assert tok.decode([0, 7, 2]) == "ac"
    with pytest.raises(ValueError, match=r"id -1 "):
        tok.decode([-1])


def test_char_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="twice"):
        CharTokenizer(["a", "a"])
    with pytest.raises(TypeError, match="str"):
        CharTokenizer.from_text("ab").encode(b"ab")


def test_char_return_tensors_and_decode_of_a_row():
    tok = CharTokenizer.from_text("hello")
    for kind in ("np", "pt"):
        x = tok.encode("hell", return_tensors=kind)
        assert x.dtype == np.int64 and x.shape == (1, 4)
        assert tok.decode(x[0]) == "hell"
    assert tok.encode("", return_tensors="np").shape == (1, 0)
    assert tok.batch_decode(np.array([[0, 1], [1, 0]])) == ["eh", "he"]
    assert tok.decode(np.array([[0, 1], [1, 0]])) == ["eh", "he"]  # several rows: a list, as transformers
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        tok.decode(np.zeros((2, 2, 2), dtype=np.int64))  # rows of rows
    with pytest.raises(TypeError, match="float"):
        tok.decode(np.zeros(3))
    with pytest.raises(TypeError, match=r"1\.0 \(float\)"):
        tok.decode(iter([0, 1.0]))
    assert tok.decode(iter([np.int32(0), 1])) == "eh" and tok.decode(np.int64(1)) == "h"
    with pytest.raises(ValueError, match="return_tensors"):
        tok.encode("he", return_tensors="tf")


def test_char_save_load_and_auto(tmp_path):
    tok = CharTokenizer.from_text(CHAR_TEXT)
    tok.save(tmp_path / "char.json")
    for loaded in (CharTokenizer.load(tmp_path / "char.json"), Tokenizer.load(tmp_path / "char.json"),
                   AutoTokenizer.from_pretrained(tmp_path / "char.json")):
        assert isinstance(loaded, CharTokenizer) and loaded.chars == tok.chars
    tok.save_pretrained(tmp_path / "dir")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "dir")
    assert isinstance(loaded, CharTokenizer)
    assert loaded.encode(CHAR_TEXT) == tok.encode(CHAR_TEXT)
    assert CharTokenizer.from_pretrained(tmp_path / "dir").chars == tok.chars
    with pytest.raises(ValueError, match="not a BPETokenizer"):
        BPETokenizer.load(tmp_path / "char.json")


def test_auto_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AutoTokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"other\.txt"):
        AutoTokenizer.from_pretrained(tmp_path)
    (tmp_path / "t.json").write_text(json.dumps({"type": "Nope"}))
    with pytest.raises(ValueError, match="Nope"):
        AutoTokenizer.from_pretrained(tmp_path / "t.json")


# ------------------------------------------------------------------------------------------
# BPETokenizer: training
# ------------------------------------------------------------------------------------------
def naive_train(text, vocab_size, pattern=GPT2_SPLIT_PATTERN):
    """Brute-force BPE: recount every pair after every merge. The spec train() must match."""
    words = [list(c.encode()) for c in regex.findall(pattern, text)]
    vocab = {i: bytes([i]) for i in range(256)}
    merges, next_id = [], 256
    while next_id < vocab_size:
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = max(counts.values())
        pair = min(p for p, n in counts.items() if n == best)
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = next((i for i, b in vocab.items() if b == merged), None)
        if new_id is None:
            new_id, next_id = next_id, next_id + 1
            vocab[new_id] = merged
        merges.append((*pair, new_id))
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges, words


@settings(deadline=None, max_examples=40)
@given(st.text(alphabet="ab c\n'sé", max_size=60), st.integers(256, 300))
def test_train_matches_brute_force_and_encode_matches_training(s, vocab_size):
    tok = BPETokenizer.train(s, vocab_size)
    merges, words = naive_train(s, vocab_size)
    assert tok._merges == merges
    # Encoding (lowest rank first) gives the same tokens as applying the merges in order.
    assert tok.encode(s) == [i for w in words for i in w]


def test_train_brute_force_on_a_larger_text(text):
    small = text[:3000]
    tok = BPETokenizer.train(small, 330)
    merges, words = naive_train(small, 330)
    assert tok._merges == merges
    assert tok.encode(small) == [i for w in words for i in w]


def test_train_is_deterministic_and_respects_vocab_size(text, bpe):
    again = BPETokenizer.train(text, 400, special_tokens=[EOT, "<|pad|>"])
    assert again._merges == bpe._merges
    assert again.special_tokens == bpe.special_tokens
    assert bpe.vocab_size == len(bpe) == 400
    assert bpe.special_tokens == {EOT: 398, "<|pad|>": 399}
    assert bpe.eos_token == EOT and bpe.eos_token_id == 398
    assert max(bpe.encode(text)) < 398


def test_train_ties_break_by_lowest_pair():
    tok = BPETokenizer.train("dcba", 257)
    assert tok.merges == [(b"b", b"a")]  # all pairs count 1: (98, 97) is the lowest


def test_train_stops_when_no_pair_is_left():
    tok = BPETokenizer.train("ab", 1000, special_tokens=[EOT])
    assert tok.vocab_size == len(tok) == 258  # 256 bytes + "ab" + EOT
    assert tok.special_tokens == {EOT: 257}


def test_train_ignores_special_tokens_in_the_text():
    tok = BPETokenizer.train(f"x{EOT}y" * 50, 300, special_tokens=[EOT])
    assert all(b"endoftext" not in a + b for a, b in tok.merges)
    assert tok.encode(f"x{EOT}y") == [ord("x"), tok.eos_token_id, ord("y")]


def test_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size=257"):
        BPETokenizer.train("abc", 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(TypeError, match="list of strings"):
        BPETokenizer.train("abc", 300, special_tokens={"<a>": 5})


# ------------------------------------------------------------------------------------------
# BPETokenizer: encode / decode
# ------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=200)
@given(st.text())
def test_bpe_round_trip_any_unicode(bpe, s):
    ids = bpe.encode(s)
    assert bpe.decode(ids) == s


@settings(deadline=None, max_examples=50)
@given(st.lists(st.sampled_from(["ab", " ", "\n", EOT, "<|pad|>", "é", "😀", "<|", "|>"]),
                max_size=20).map("".join))
def test_bpe_round_trip_with_special_tokens(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s
    assert bpe.decode(bpe.encode(s, allowed_special="none")) == s


def test_special_tokens_encode_decode_and_skip(bpe):
    ids = bpe.encode(f"to be{EOT}or not<|pad|>")
    assert ids.count(bpe.eos_token_id) == 1 and ids.count(bpe.special_tokens["<|pad|>"]) == 1
    assert bpe.decode(ids) == f"to be{EOT}or not<|pad|>"
    assert bpe.decode(ids, skip_special_tokens=True) == "to beor not"
    plain = bpe.encode(EOT, allowed_special="none")
    assert bpe.eos_token_id not in plain and bpe.decode(plain) == EOT
    only_eot = bpe.encode(f"{EOT}<|pad|>", allowed_special={EOT})
    assert only_eot[0] == bpe.eos_token_id and bpe.special_tokens["<|pad|>"] not in only_eot
    with pytest.raises(ValueError, match="<|nope|>"):
        bpe.encode("x", allowed_special={"<|nope|>"})


def test_special_tokens_do_not_change_the_text_around_them(bpe):
    # The ordinary text between special tokens is encoded on its own.
    left, right = "the king ", " queen"
    assert bpe.encode(left + EOT + right) == bpe.encode(left) + [bpe.eos_token_id] + bpe.encode(right)


def test_decode_invalid_utf8_is_replaced_not_raised(bpe):
    euro = bpe.encode("€")  # 3 bytes, single-byte tokens in this small vocab
    assert bpe.decode(euro[:1]) == "\ufffd"
    assert bpe.decode([0xFF, ord("a")]) == "\ufffda"  # 0xFF never starts UTF-8
    assert bpe.decode(euro[:2] + bpe.encode("ok")).endswith("ok")


def test_decode_skips_an_id_the_vocabulary_lacks_and_names_an_impossible_one(bpe):
    assert bpe.decode([1, 400, 2]) == bpe.decode([1, 2])  # as transformers 5 (tests/test_tokenizer_call_options.py)
    with pytest.raises(ValueError, match=r"id -3 "):
        bpe.decode([-3])


def test_encode_rejects_lone_surrogates_clearly(bpe):
    with pytest.raises(ValueError, match=r"position 2"):
        bpe.encode("ab\ud800c")


def test_encode_return_tensors(bpe):
    x = bpe.encode("to be", return_tensors="pt")
    assert x.dtype == np.int64 and x.shape == (1, len(bpe.encode("to be")))
    assert bpe.decode(x[0]) == "to be"


def test_cache_is_bounded_and_does_not_change_results(text):
    tok = BPETokenizer.train(text, 300)
    tok._cache_size = 4
    assert tok.encode(text) == BPETokenizer.train(text, 300).encode(text)
    assert len(tok._cache) <= 4


def test_merges_are_applied_by_rank_within_a_chunk():
    # vocab: a, b, "ab", "aab" with merges (a,b) then (a,ab); "aab" -> [a, ab] -> [aab]
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256: b"ab", 257: b"aab"})
    tok = BPETokenizer(vocab, [(97, 98, 256), (97, 256, 257)])
    assert tok.encode("aab") == [257]
    assert tok.encode("aaa") == [97, 97, 97]
    double = BPETokenizer({**{i: bytes([i]) for i in range(256)}, 256: b"aa"}, [(97, 97, 256)])
    assert double.encode("aaa") == [256, 97]  # left to right, as GPT-2
    assert double.encode("aaaa") == [256, 256]


def test_constructor_validates():
    base = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="single bytes"):
        BPETokenizer({i: bytes([i]) for i in range(255)}, [])
    with pytest.raises(ValueError, match="merge 0"):
        BPETokenizer({**base, 256: b"xy"}, [(97, 98, 256)])
    with pytest.raises(ValueError, match="also the ordinary token"):
        BPETokenizer(base, [], special_tokens={EOT: 5})
    with pytest.raises(ValueError, match="eos_token"):
        BPETokenizer(base, [], special_tokens={EOT: 256}, eos_token="<|x|>")


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


# ------------------------------------------------------------------------------------------
# BPETokenizer: files
# ------------------------------------------------------------------------------------------
def test_bpe_save_load_round_trip(tmp_path, bpe, text):
    bpe.save(tmp_path / "bpe.json")
    loaded = Tokenizer.load(tmp_path / "bpe.json")
    assert isinstance(loaded, BPETokenizer)
    assert loaded._merges == bpe._merges and loaded.special_tokens == bpe.special_tokens
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.eos_token_id == bpe.eos_token_id
    from_dict = Tokenizer.from_dict(json.loads(json.dumps(bpe.to_dict())))
    assert from_dict.encode(text) == bpe.encode(text)
    with pytest.raises(ValueError, match="not a CharTokenizer"):
        CharTokenizer.from_dict(bpe.to_dict())


def test_bpe_custom_pattern_survives_save(tmp_path):
    tok = BPETokenizer.train("aa bb aa bb", 260, pattern=r"\S+|\s+")
    tok.save(tmp_path / "t.json")
    assert BPETokenizer.load(tmp_path / "t.json").pattern == r"\S+|\s+"


def test_bpe_save_pretrained_and_auto(tmp_path, bpe, text):
    paths = bpe.save_pretrained(tmp_path)
    names = {p.name for p in paths}
    assert names == {TOKENIZER_FILE, "vocab.json", "merges.txt", "tokenizer_config.json",
                     "special_tokens_map.json"}
    for source in (tmp_path, tmp_path / TOKENIZER_FILE):
        loaded = AutoTokenizer.from_pretrained(source)
        assert isinstance(loaded, BPETokenizer) and loaded.encode(text) == bpe.encode(text)
    # Without our JSON, the GPT-2 files alone give the same tokenizer.
    os.remove(tmp_path / TOKENIZER_FILE)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded._merges == bpe._merges
    assert loaded.special_tokens == bpe.special_tokens and loaded.eos_token == EOT
    assert loaded.encode(text + EOT) == bpe.encode(text + EOT)


def test_bpe_save_pretrained_loads_in_transformers(tmp_path, monkeypatch, bpe, text):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    bpe.save_pretrained(tmp_path)
    hf = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    sample = text[:2000] + EOT + " after"
    assert hf.encode(sample) == bpe.encode(sample)
    assert hf.eos_token_id == bpe.eos_token_id
    assert hf.decode(bpe.encode(sample)) == sample
    # ... and back: transformers 5 writes only tokenizer.json (+ tokenizer_config.json)
    hf.save_pretrained(str(tmp_path / "hf"))
    back = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert back._merges == bpe._merges and back.special_tokens == bpe.special_tokens
    assert back.eos_token == EOT and back.encode(sample) == bpe.encode(sample)


def test_hf_tokenizer_json_of_another_kind_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": {"type": "BertPreTokenizer"},
         "normalizer": {"type": "BertNormalizer"}}))
    with pytest.raises(ValueError, match="WordPiece.*BertPreTokenizer.*BertNormalizer"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_from_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        BPETokenizer.from_pretrained(tmp_path)
