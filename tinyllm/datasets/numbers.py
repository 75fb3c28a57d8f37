"""English -> French number words: a translation task that needs no download.

The source is a cardinal number from 0 to 999,999 in English words, the target the same number
in French words::

    >>> english_number(71080), french_number(71080)
    ('seventy-one thousand eighty', 'soixante et onze mille quatre-vingts')

It is small enough to train in minutes on a CPU and still asks what translation asks: a
vocabulary to map, words to reorder and merge (seventy-one -> soixante et onze), agreement that
depends on context (quatre-vingts but quatre-vingt-un and quatre-vingt mille), and held-out
inputs the model has never seen.

Spelling
--------
English: US style, no "and", no commas, a hyphen between tens and units (21-99):
``1234`` -> "one thousand two hundred thirty-four".

French: the traditional (pre-1990) spelling. Hyphens only between tens and units below 100,
except where "et" joins them (vingt et un, ..., soixante et un, soixante et onze). 70-79 and
90-99 count on from soixante and quatre-vingt (soixante-douze, quatre-vingt-dix-sept).
"vingt" in 80 and "cent" take an s when multiplied and ending the number (quatre-vingts, deux
cents) but not when followed by another number or by "mille" (quatre-vingt-un, deux cent un,
quatre-vingt mille, deux cent mille). "mille" never takes "un" before it and never an s
(mille, deux mille, vingt et un mille).
"""
import numpy as np

__all__ = ["MAX_NUMBER", "english_number", "french_number", "number_pairs", "split_numbers"]

MAX_NUMBER = 999_999

_EN_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
             "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
             "eighteen", "nineteen"]
_EN_TENS = [None, None, "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

_FR_UNITS = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix",
             "onze", "douze", "treize", "quatorze", "quinze", "seize", "dix-sept", "dix-huit",
             "dix-neuf"]
_FR_TENS = [None, None, "vingt", "trente", "quarante", "cinquante", "soixante"]


def _check_number(n, who):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{who}: expected an int from 0 to {MAX_NUMBER:,}, got {type(n).__name__} {n!r}")
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"{who}: {n} is out of range; numbers from 0 to {MAX_NUMBER:,} are supported")
    return int(n)


# ---- English -----------------------------------------------------------------------------
def _english_below_100(n):
    if n < 20:
        return _EN_UNITS[n]
    tens, units = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_UNITS[units]}" if units else "")


def _english_below_1000(n):
    hundreds, rest = divmod(n, 100)
    words = [f"{_EN_UNITS[hundreds]} hundred"] if hundreds else []
    if rest:
        words.append(_english_below_100(rest))
    return " ".join(words)


def english_number(n):
    """``n`` (0..999,999) in US English words: ``305`` -> "three hundred five"."""
    n = _check_number(n, "english_number")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = [f"{_english_below_1000(thousands)} thousand"] if thousands else []
    if rest:
        words.append(_english_below_1000(rest))
    return " ".join(words)


# ---- French ------------------------------------------------------------------------------
def _french_below_100(n, final):
    """1..99; ``final``: nothing follows (so 80 is "quatre-vingts")."""
    if n < 20:
        return _FR_UNITS[n]
    tens, units = divmod(n, 10)
    if tens in (7, 9):  # soixante-dix..., quatre-vingt-dix...: count on from 60 / 80 with 10..19
        tens, units = tens - 1, units + 10
    if tens == 8:
        base = "quatre-vingts" if units == 0 and final else "quatre-vingt"
        return base if units == 0 else f"{base}-{_FR_UNITS[units]}"  # never "et" after 80
    base = _FR_TENS[tens]
    if units == 0:
        return base
    if units in (1, 11):
        return f"{base} et {_FR_UNITS[units]}"  # vingt et un, soixante et onze
    return f"{base}-{_FR_UNITS[units]}"


def _french_below_1000(n, final):
    """1..999; ``final``: nothing follows (not even "mille"), so plurals keep their s."""
    hundreds, rest = divmod(n, 100)
    words = []
    if hundreds == 1:
        words.append("cent")
    elif hundreds:
        words.append(f"{_FR_UNITS[hundreds]} {'cents' if rest == 0 and final else 'cent'}")
    if rest:
        words.append(_french_below_100(rest, final))
    return " ".join(words)


def french_number(n):
    """``n`` (0..999,999) in French words, traditional spelling: ``280`` -> "deux cent
    quatre-vingts", ``80000`` -> "quatre-vingt mille" (see the module docstring)."""
    n = _check_number(n, "french_number")
    if n == 0:
        return "zéro"
    thousands, rest = divmod(n, 1000)
    words = []
    if thousands == 1:
        words.append("mille")
    elif thousands:
        words.append(f"{_french_below_1000(thousands, final=False)} mille")
    if rest:
        words.append(_french_below_1000(rest, final=True))
    return " ".join(words)


# ---- the task ----------------------------------------------------------------------------
def number_pairs(numbers):
    """``[(english, french), ...]`` for the given numbers."""
    return [(english_number(int(n)), french_number(int(n))) for n in numbers]


def split_numbers(n_train=100_000, n_val=1_000, n_test=2_000, seed=0, min_held_out=100):
    """Disjoint train / val / test sets of numbers (sorted int64 arrays), drawn with ``seed``.

    Validation and test numbers are drawn uniformly from ``min_held_out``..999,999: a test
    number is a number the model never saw in training. The numbers below ``min_held_out``
    (default 100: every word of both languages occurs there) are always in training, as a
    learner is taught them by heart before composing larger ones.

    Training draws ``n_train`` of the remaining numbers, balanced over their digit counts
    (1 to 6): a uniform draw would be 90% six-digit numbers and would almost never show the
    model a bare "cent" or "quatre-vingts". The smaller digit counts, which hold fewer numbers
    than their share, are taken whole and the rest is shared among the larger ones.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"split_numbers: {name} must be a non-negative int, got {value!r}")
    if not 0 <= min_held_out <= MAX_NUMBER:
        raise ValueError(f"split_numbers: min_held_out must be in 0..{MAX_NUMBER}, got {min_held_out}")
    n_candidates = MAX_NUMBER + 1 - min_held_out
    if n_val + n_test > n_candidates:
        raise ValueError(f"split_numbers: n_val + n_test = {n_val + n_test} exceeds the "
                         f"{n_candidates} numbers from {min_held_out} to {MAX_NUMBER}")
    rng = np.random.default_rng(seed)
    held_out = min_held_out + rng.permutation(n_candidates)[:n_val + n_test]
    val, test = held_out[:n_val], held_out[n_val:]

    available = np.ones(MAX_NUMBER + 1, dtype=bool)
    available[held_out] = False
    pool = np.flatnonzero(available)
    if n_train > len(pool):
        raise ValueError(f"split_numbers: n_train = {n_train} exceeds the {len(pool)} numbers "
                         "left after the validation and test sets")
    train = _balanced_by_digits(pool, n_train, rng)
    return np.sort(train), np.sort(val), np.sort(test)


def _balanced_by_digits(pool, n, rng):
    """``n`` numbers of ``pool``, as evenly spread over digit counts as the counts allow."""
    digits = np.where(pool == 0, 1, np.floor(np.log10(np.maximum(pool, 1))).astype(np.int64) + 1)
    buckets = [pool[digits == d] for d in range(1, 7)]
    buckets.sort(key=len)  # the small ones first: they give their unused share to the others
    chosen, left = [], n
    for i, bucket in enumerate(buckets):
        take = min(len(bucket), left // (len(buckets) - i))
        chosen.append(rng.permutation(bucket)[:take])
        left -= take
    return np.concatenate(chosen)
