"""Number words in English and French (tinyllm.datasets.numbers): a hand-checked table, an
independent parser that reads every spelling back, the spelling rules, and the split."""
import re

import numpy as np
import pytest

from tinyllm.datasets.numbers import MAX_NUMBER, english_number, french_number, number_pairs, split_numbers

# Checked by hand against the traditional (pre-1990) French rules and US English usage.
TABLE = [
    (0, "zero", "zéro"),
    (1, "one", "un"),
    (7, "seven", "sept"),
    (11, "eleven", "onze"),
    (16, "sixteen", "seize"),
    (17, "seventeen", "dix-sept"),
    (20, "twenty", "vingt"),
    (21, "twenty-one", "vingt et un"),
    (22, "twenty-two", "vingt-deux"),
    (31, "thirty-one", "trente et un"),
    (41, "forty-one", "quarante et un"),
    (51, "fifty-one", "cinquante et un"),
    (61, "sixty-one", "soixante et un"),
    (70, "seventy", "soixante-dix"),
    (71, "seventy-one", "soixante et onze"),
    (72, "seventy-two", "soixante-douze"),
    (77, "seventy-seven", "soixante-dix-sept"),
    (80, "eighty", "quatre-vingts"),
    (81, "eighty-one", "quatre-vingt-un"),
    (85, "eighty-five", "quatre-vingt-cinq"),
    (90, "ninety", "quatre-vingt-dix"),
    (91, "ninety-one", "quatre-vingt-onze"),
    (99, "ninety-nine", "quatre-vingt-dix-neuf"),
    (100, "one hundred", "cent"),
    (101, "one hundred one", "cent un"),
    (121, "one hundred twenty-one", "cent vingt et un"),
    (180, "one hundred eighty", "cent quatre-vingts"),
    (200, "two hundred", "deux cents"),
    (201, "two hundred one", "deux cent un"),
    (280, "two hundred eighty", "deux cent quatre-vingts"),
    (305, "three hundred five", "trois cent cinq"),
    (1000, "one thousand", "mille"),
    (1001, "one thousand one", "mille un"),
    (1100, "one thousand one hundred", "mille cent"),
    (1234, "one thousand two hundred thirty-four", "mille deux cent trente-quatre"),
    (2000, "two thousand", "deux mille"),
    (2080, "two thousand eighty", "deux mille quatre-vingts"),
    (21000, "twenty-one thousand", "vingt et un mille"),
    (71000, "seventy-one thousand", "soixante et onze mille"),
    (80000, "eighty thousand", "quatre-vingt mille"),
    (80080, "eighty thousand eighty", "quatre-vingt mille quatre-vingts"),
    (81000, "eighty-one thousand", "quatre-vingt-un mille"),
    (100000, "one hundred thousand", "cent mille"),
    (101000, "one hundred one thousand", "cent un mille"),
    (200000, "two hundred thousand", "deux cent mille"),
    (200200, "two hundred thousand two hundred", "deux cent mille deux cents"),
    (280000, "two hundred eighty thousand", "deux cent quatre-vingt mille"),
    (999999, "nine hundred ninety-nine thousand nine hundred ninety-nine",
     "neuf cent quatre-vingt-dix-neuf mille neuf cent quatre-vingt-dix-neuf"),
]


@pytest.mark.parametrize("n, english, french", TABLE)
def test_table(n, english, french):
    assert english_number(n) == english
    assert french_number(n) == french
    assert number_pairs([n]) == [(english, french)]


# ---- independent readers: words -> int ------------------------------------------------------
EN_VALUES = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
EN_VALUES.update({w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)})
FR_VALUES = {w: i for i, w in enumerate(
    "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize".split())}
FR_VALUES.update({"vingt": 20, "trente": 30, "quarante": 40, "cinquante": 50, "soixante": 60})


def read_english(text):
    total, group = 0, 0
    for word in re.split(r"[ -]", text):
        if word == "hundred":
            group *= 100
        elif word == "thousand":
            total, group = group * 1000, 0
        else:
            group += EN_VALUES[word]
    return total + group


def read_french(text):
    total, group, prev = 0, 0, None
    for word in re.split(r"[ -]", text):
        if word in ("vingt", "vingts") and prev == "quatre":
            group += 80 - 4  # quatre-vingt(s): 4 x 20, the 4 was already added
        elif word in ("cent", "cents"):
            group = max(group, 1) * 100
        elif word == "mille":
            total, group = max(group, 1) * 1000, 0
        elif word != "et":
            group += FR_VALUES[word]
        prev = word
    return total + group


def sample_numbers():
    rng = np.random.default_rng(0)
    return np.unique(np.concatenate([np.arange(2100), np.arange(0, MAX_NUMBER + 1, 1000),
                                     np.arange(0, MAX_NUMBER + 1, 1000) + 80, np.arange(0, MAX_NUMBER + 1, 1000) + 200,
                                     rng.integers(0, MAX_NUMBER + 1, 20000), [MAX_NUMBER]]))


def test_readers_recover_every_sampled_number():
    # (so no two sampled numbers share a spelling)
    for n in sample_numbers():
        assert read_english(english_number(n)) == n, (n, english_number(n))
        assert read_french(french_number(n)) == n, (n, french_number(n))


def test_english_spelling_rules():
    tens = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
    units = "one|two|three|four|five|six|seven|eight|nine"
    for n in sample_numbers():
        text = english_number(n)
        assert " and " not in text and "," not in text
        for hyphenated in re.findall(r"\S*-\S*", text):
            assert re.fullmatch(f"({tens})-({units})", hyphenated), text
        assert text == text.strip() and "  " not in text
        assert ("zero" in text) == (n == 0)


def test_french_spelling_rules():
    for n in sample_numbers():
        text = french_number(n)
        words = text.split(" ")
        assert ("zéro" in text) == (n == 0)
        assert text.startswith("mille") == (1000 <= n < 2000), text  # never "un mille"
        assert "milles" not in text
        # "cents" and "quatre-vingts" only end the number (not before another word, not before mille)
        for i, w in enumerate(words):
            if w == "cents" or w.endswith("vingts"):
                assert i == len(words) - 1, text
        assert (text.endswith("cents")) == (n % 100 == 0 and n % 1000 >= 200), text
        assert text.endswith("quatre-vingts") == (n % 100 == 80), text
        # "et" joins 20..60 to un / onze, nothing else
        for i, w in enumerate(words):
            if w == "et":
                assert words[i - 1] in ("vingt", "trente", "quarante", "cinquante", "soixante"), text
                assert words[i + 1] in ("un", "onze"), text
        assert "-et" not in text and "et-" not in text and "-cent" not in text and "-mille" not in text
        assert "quatre-vingt-et" not in text and "un cent" not in text


def test_bad_numbers():
    for fn in (english_number, french_number):
        with pytest.raises(ValueError, match="1000000 is out of range"):
            fn(1_000_000)
        with pytest.raises(ValueError, match="-1 is out of range"):
            fn(-1)
        with pytest.raises(TypeError, match="float"):
            fn(3.0)
    assert english_number(np.int64(42)) == "forty-two"


# ---- the split ----------------------------------------------------------------------------------
def test_split_numbers_is_disjoint_and_seeded():
    train, val, test = split_numbers(n_train=30_000, n_val=500, n_test=700, seed=3)
    assert (len(train), len(val), len(test)) == (30_000, 500, 700)
    assert not set(train) & set(test) and not set(train) & set(val) and not set(val) & set(test)
    assert test.min() >= 100 and val.min() >= 100 and test.max() <= MAX_NUMBER
    assert set(range(100)) <= set(train)  # the words themselves are always taught
    again = split_numbers(n_train=30_000, n_val=500, n_test=700, seed=3)
    for a, b in zip((train, val, test), again):
        np.testing.assert_array_equal(a, b)
    other = split_numbers(n_train=30_000, n_val=500, n_test=700, seed=4)
    assert not np.array_equal(test, other[2])


def test_split_numbers_balances_digit_counts():
    train, _, test = split_numbers(n_train=60_000, n_val=0, n_test=1_000, seed=0)
    digits = np.bincount([len(str(n)) for n in train], minlength=7)[1:]
    # 1- to 3-digit numbers are taken whole; 4 digits (9,000 numbers) too; the rest share evenly
    assert digits[0] == 10 and digits[1] == 90 and digits[2] + np.sum(test < 1000) == 900
    assert digits[3] + np.sum((test >= 1000) & (test < 10_000)) == 9000
    assert abs(int(digits[4]) - int(digits[5])) <= 1
    # test numbers are uniform over the range: mostly six digits
    assert np.mean(test >= 100_000) > 0.85


def test_split_numbers_errors():
    with pytest.raises(ValueError, match="n_train = 999000 exceeds"):
        split_numbers(n_train=999_000, n_val=1000, n_test=1000)
    with pytest.raises(ValueError, match="n_test must be a non-negative int"):
        split_numbers(n_test=-1)
    with pytest.raises(ValueError, match="exceeds the"):
        split_numbers(n_train=10, n_val=999_000, n_test=1000)
    assert len(split_numbers(n_train=998_000, n_val=1000, n_test=1000)[0]) == 998_000
