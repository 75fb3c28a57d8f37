"""BPETokenizer.train_naive (recount every pair after every merge) as the oracle of the fast
BPETokenizer.train (a heap of pair counts and an index of the chunks holding each pair)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.tokenizers import BPETokenizer

EOT = "<|endoftext|>"


def _assert_same_tokenizer(fast, naive, text):
    assert fast._merges == naive._merges
    assert fast.special_tokens == naive.special_tokens
    assert fast.vocab_size == naive.vocab_size
    assert [fast.id_to_token(i) for i in range(fast.vocab_size)] == [naive.id_to_token(i) for i in range(naive.vocab_size)]
    assert fast.encode(text) == naive.encode(text)


# words with shared prefixes and suffixes, multi-byte characters (é: 2 bytes, 🙂: 4), digits,
# newlines and a special token: many near-ties between pair counts
_WORDS = st.sampled_from(["the", "then", "there", "é", "éé", "café", "🙂", "a", "aa", "aaa", "ab", "ba",
                          "12", "123", " ", "  ", "\n", "'s", EOT])


@settings(deadline=None, max_examples=60)
@given(words=st.lists(_WORDS, max_size=80), extra=st.integers(0, 80), specials=st.booleans())
def test_train_matches_the_naive_trainer(words, extra, specials):
    text = "".join(words)
    special_tokens = [EOT, "<|pad|>"] if specials else None
    vocab_size = 256 + extra + (2 if specials else 0)
    fast = BPETokenizer.train(text, vocab_size, special_tokens=special_tokens)
    naive = BPETokenizer.train_naive(text, vocab_size, special_tokens=special_tokens)
    _assert_same_tokenizer(fast, naive, text)


@settings(deadline=None, max_examples=30)
@given(text=st.text(alphabet="ab c\n'sé", max_size=80), vocab_size=st.integers(256, 320))
def test_train_matches_the_naive_trainer_on_random_text(text, vocab_size):
    _assert_same_tokenizer(BPETokenizer.train(text, vocab_size), BPETokenizer.train_naive(text, vocab_size), text)


def test_train_matches_the_naive_trainer_on_a_page_of_generated_text():
    rng = np.random.default_rng(0)
    syllables = ["ka", "ri", "to", "ne", "sa", "mu", "é", "lo", "ver", "in", "an"]
    words = ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(200)]
    text = " ".join(rng.choice(words, 800)) + "\n"
    fast, naive = BPETokenizer.train(text, 400), BPETokenizer.train_naive(text, 400)
    assert len(naive._merges) == 400 - 256  # the vocabulary was filled: a long run of merges
    _assert_same_tokenizer(fast, naive, text)


def test_the_naive_trainer_states_the_rules():
    # the most frequent pair first; ties go to the smallest (id_a, id_b): "dcba" has three pairs
    # once each, and ("b", "a") = (98, 97) is the smallest
    assert BPETokenizer.train_naive("dcba", 257)._merges == [(98, 97, 256)]
    # each merge takes the pair most frequent at its turn: "ab" five times, then "ab"+"c" three
    # times (chunks split at spaces here, so no pair holds a space)
    tok = BPETokenizer.train_naive("ab ab abc abc abc", 258, pattern=r"\S+")
    assert tok._merges == [(97, 98, 256), (256, 99, 257)]
    # special tokens are cut out of the text and numbered after the merges
    tok = BPETokenizer.train_naive(f"xy{EOT}xy", 258, special_tokens=[EOT])
    assert tok._merges == [(ord("x"), ord("y"), 256)] and tok.special_tokens == {EOT: 257}


def test_the_naive_trainer_checks_its_arguments_as_train_does():
    with pytest.raises(ValueError, match="train_naive: vocab_size=257 leaves no room"):
        BPETokenizer.train_naive("abc", 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(TypeError, match="special_tokens is a list of strings"):
        BPETokenizer.train_naive("abc", 300, special_tokens={"<a>": 5})
