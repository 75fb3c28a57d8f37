"""The code BPE: decode(encode(x)) == x on every standard-library file, and line starts on token
boundaries."""
import numpy as np
import pytest

from tinyllm.code_data import CODE_SPLIT_PATTERN, split_lines, stdlib_corpus
from tinyllm.tokenizers import BPETokenizer


@pytest.fixture(scope="module")
def stdlib():
    return stdlib_corpus()


@pytest.fixture(scope="module")
def code_tok(stdlib):
    """A small BPE (512 tokens) trained on a seeded ~300 KB sample of the training files, so the
    test takes seconds; the round trip does not depend on the vocabulary's size, only on the
    pattern covering every character and merges concatenating bytes."""
    train = stdlib.split("train")
    picked, total = [], 0
    for i in np.random.default_rng(0).permutation(len(train)):
        picked.append(train[i].text)
        total += len(train[i].text)
        if total > 300_000:
            break
    return BPETokenizer.train("".join(picked), 512, pattern=CODE_SPLIT_PATTERN, special_tokens=["<|endoftext|>"])


def test_round_trip_on_every_stdlib_file(stdlib, code_tok):
    assert len(stdlib.files) > 300
    for f in stdlib.files:  # every split: the test files too, never seen by the tokenizer
        assert code_tok.decode(code_tok.encode(f.text)) == f.text, f.path


def test_lines_encode_independently(stdlib, code_tok):
    """With CODE_SPLIT_PATTERN a file's ids are its lines' ids joined, so a prompt cut at a line
    start is tokenized exactly as in training."""
    for f in stdlib.split("test"):
        ids = code_tok.encode(f.text)
        assert ids == [i for line in split_lines(f.text) for i in code_tok.encode(line)], f.path


def test_special_token_text_inside_code_round_trips(code_tok):
    """A source file that mentions "<|endoftext|>" (a tokenizer's own source, say) still decodes
    to itself, though the mention becomes the special id when encoded with the default
    allowed_special="all"; with allowed_special="none" it stays ordinary text."""
    text = 'EOT = "<|endoftext|>"\n'
    assert code_tok.decode(code_tok.encode(text)) == text
    ids = code_tok.encode(text, allowed_special="none")
    assert code_tok.special_tokens["<|endoftext|>"] not in ids and code_tok.decode(ids) == text
