"""Scores for generated text: BLEU, ROUGE and perplexity.

* :func:`corpus_bleu` / :func:`sentence_bleu` -- BLEU (Papineni et al., 2002) exactly as
  sacrebleu computes it by default: the ``13a`` tokenizer of WMT's ``mteval-v13a.pl``, n-grams
  up to 4, the brevity penalty against the closest reference length, ``exp`` smoothing, any
  number of references. Scores are on sacrebleu's 0-100 scale.
* :func:`rouge` / :func:`sentence_rouge` -- ROUGE-N, ROUGE-L and ROUGE-Lsum (Lin, 2004) exactly
  as Google's ``rouge-score`` package computes them, with its tokenizer and (optionally) the
  Porter stemmer as NLTK applies it (:func:`porter_stem`).
* :func:`perplexity` / :func:`perplexity_from_sum` -- ``e ** (mean cross-entropy in nats)``.

Everything here is written from the definitions; neither sacrebleu nor rouge-score is needed at
run time. ``tests/test_metrics.py`` holds both equal to those packages to 1e-9.

BLEU in one formula. For each order n = 1..4, the *clipped* n-gram matches of the whole corpus
(a hypothesis n-gram counts at most as often as it occurs in the reference where it is most
frequent) over the hypothesis n-grams give a precision p_n; with the hypothesis length c and
the reference length r (per segment, the reference length closest to the hypothesis's)::

    BLEU = BP * exp(mean_n log p_n),    BP = 1 if c >= r else exp(1 - r / c)

A p_n of zero is smoothed (``exp``, NIST's method): the k-th order with no match gets
``1 / (2**k * total_n)`` instead.
"""
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import List, NamedTuple

__all__ = [
    "BLEUScore",
    "RougeScore",
    "corpus_bleu",
    "perplexity",
    "perplexity_from_sum",
    "porter_stem",
    "rouge",
    "rouge_tokenize",
    "sentence_bleu",
    "sentence_rouge",
    "tokenize_13a",
]

MAX_NGRAM_ORDER = 4
_SMOOTH_METHODS = ("exp", "none")
_TOKENIZERS = ("13a", "none")
# sacrebleu's stand-in for log(0): the mean of the logs then sends the score to exactly 0.
_LOG_ZERO = -9999999999


# ------------------------------------------------------------------------------------------
# BLEU
# ------------------------------------------------------------------------------------------
# mteval-v13a's tokenizer. (1) Every ASCII punctuation mark except ' , - . becomes its own
# token. (2, 3) A period or comma does too, unless it sits between digits ("3.14", "1,000").
# (4) A dash after a digit is split off ("1990-2000" -> "1990 - 2000").
_PUNCT_13A = "".join(c for c in map(chr, range(0x20, 0x7F)) if not c.isalnum() and c not in "',-.")
_RULES_13A = [
    (re.compile("([" + re.escape(_PUNCT_13A) + "])"), r" \1 "),
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]
# mteval's input is SGML: these entities stand for their characters (in this order, so that
# "&amp;lt;" becomes "&lt;" and then "<", as mteval does).
_ENTITIES_13A = [("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")]


def tokenize_13a(line):
    """Split ``line`` into tokens as WMT's ``mteval-v13a.pl`` (sacrebleu's default) does.

    >>> tokenize_13a("It costs $3.50, isn't it?")
    ['It', 'costs', '$', '3.50', ',', "isn't", 'it', '?']
    """
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _ENTITIES_13A:
        line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _RULES_13A:
        line = pattern.sub(replacement, line)
    return line.split()


@dataclass
class BLEUScore:
    """A BLEU score with the statistics it came from (the fields of sacrebleu's ``BLEUScore``).

    ``score`` and ``precisions`` are percentages (0-100); ``counts[n-1]`` / ``totals[n-1]`` are
    the clipped matches / hypothesis n-grams of order n; ``bp`` the brevity penalty;
    ``sys_len`` / ``ref_len`` the hypothesis / (closest) reference lengths in tokens.
    """

    score: float
    counts: List[int]
    totals: List[int]
    precisions: List[float]
    bp: float
    sys_len: int
    ref_len: int
    ratio: float = field(init=False)

    def __post_init__(self):
        self.ratio = self.sys_len / self.ref_len if self.ref_len else 0

    def __str__(self):
        precisions = "/".join(f"{p:.1f}" for p in self.precisions)
        return (f"BLEU = {self.score:.2f} {precisions} (BP = {self.bp:.3f} ratio = {self.ratio:.3f} "
                f"hyp_len = {self.sys_len:d} ref_len = {self.ref_len:d})")

    def to_dict(self):
        """Plain JSON-able data (for ``metrics.json``)."""
        return {"score": self.score, "counts": list(self.counts), "totals": list(self.totals),
                "precisions": list(self.precisions), "bp": self.bp, "sys_len": self.sys_len,
                "ref_len": self.ref_len, "ratio": self.ratio}


def corpus_bleu(hypotheses, references, *, lowercase=False, tokenize="13a", smooth_method="exp",
                use_effective_order=False, max_ngram_order=MAX_NGRAM_ORDER):
    """Corpus BLEU of ``hypotheses`` against one or more reference streams, as sacrebleu's
    ``corpus_bleu`` (same arguments, same defaults).

    Args:
        hypotheses: list of str, one per segment.
        references: list of reference *streams*, each a list of str parallel to ``hypotheses``
            (one reference per segment: ``[refs]``; two: ``[refs_a, refs_b]``). A ``None`` in a
            stream means that segment has one reference fewer.
        lowercase: compare lowercased text.
        tokenize: ``"13a"`` (default) or ``"none"`` (split on whitespace only).
        smooth_method: ``"exp"`` (default) or ``"none"``.
        use_effective_order: average only over the n-gram orders the hypotheses have.
        max_ngram_order: highest n-gram order (4).

    Returns a :class:`BLEUScore`.
    """
    hypotheses = _check_strings(hypotheses, "corpus_bleu: hypotheses")
    if not hypotheses:  # BLEU of nothing is undefined (sacrebleu fails on it): not a score of 0
        raise ValueError("corpus_bleu: no hypotheses to score; pass at least one segment")
    streams = _check_streams(references, len(hypotheses))
    _check_options(tokenize, smooth_method, max_ngram_order)
    stats = [0] * (2 + 2 * max_ngram_order)  # sys_len, ref_len, counts..., totals...
    for i, hyp in enumerate(hypotheses):
        refs = [stream[i] for stream in streams if stream[i] is not None]
        if not refs:
            raise ValueError(f"corpus_bleu: segment {i} has no reference (every stream holds None there)")
        seg = _segment_stats(hyp, refs, lowercase, tokenize, max_ngram_order)
        stats = [a + b for a, b in zip(stats, seg)]
    return _bleu_from_stats(stats, smooth_method, use_effective_order, max_ngram_order)


def sentence_bleu(hypothesis, references, *, lowercase=False, tokenize="13a", smooth_method="exp",
                  use_effective_order=True, max_ngram_order=MAX_NGRAM_ORDER):
    """BLEU of one ``hypothesis`` (str) against its ``references`` (a list of str), as
    sacrebleu's ``sentence_bleu``: the same as :func:`corpus_bleu` on a one-segment corpus,
    except that ``use_effective_order`` defaults to True (a short sentence without 4-grams is
    not scored 0 for that alone)."""
    if not isinstance(hypothesis, str):
        raise TypeError(f"sentence_bleu: hypothesis must be a str, got {type(hypothesis).__name__}")
    if isinstance(references, str):
        raise TypeError("sentence_bleu: references must be a list of str (one per reference), "
                        f"got the str {references!r}; pass [{references!r}]")
    references = _check_strings(references, "sentence_bleu: references", allow_none=True)
    if all(ref is None for ref in references):
        raise ValueError(f"sentence_bleu: no reference to score against (references={references!r}); "
                         "pass at least one reference string")
    return corpus_bleu([hypothesis], [[ref] for ref in references], lowercase=lowercase,
                       tokenize=tokenize, smooth_method=smooth_method,
                       use_effective_order=use_effective_order, max_ngram_order=max_ngram_order)


def _check_options(tokenize, smooth_method, max_ngram_order):
    if tokenize not in _TOKENIZERS:
        raise ValueError(f"BLEU: tokenize={tokenize!r} is not supported; use one of {_TOKENIZERS}")
    if smooth_method not in _SMOOTH_METHODS:
        raise ValueError(f"BLEU: smooth_method={smooth_method!r} is not supported; use one of {_SMOOTH_METHODS}")
    if isinstance(max_ngram_order, bool) or not isinstance(max_ngram_order, int) or max_ngram_order < 1:
        raise ValueError(f"BLEU: max_ngram_order must be a positive int, got {max_ngram_order!r}")


def _check_strings(items, who, allow_none=False):
    if isinstance(items, str) or not hasattr(items, "__len__"):
        raise TypeError(f"{who} must be a list of str, got {type(items).__name__}")
    items = list(items)
    for i, s in enumerate(items):
        if not (isinstance(s, str) or (allow_none and s is None)):
            raise TypeError(f"{who}[{i}] must be a str, got {type(s).__name__} ({s!r})")
    return items


def _check_streams(references, n_hyp):
    """``references`` must be a list of streams, each a list of ``n_hyp`` str (or None)."""
    if isinstance(references, str) or not hasattr(references, "__len__") or not len(references):
        raise TypeError("corpus_bleu: references must be a non-empty list of reference streams "
                        "(lists of str parallel to the hypotheses), e.g. [refs]")
    if all(isinstance(r, str) for r in references):
        raise TypeError("corpus_bleu: references is a list of str; it must be a list of reference "
                        "streams (lists of str parallel to the hypotheses): wrap it as [references]")
    streams = []
    for k, stream in enumerate(references):
        stream = _check_strings(stream, f"corpus_bleu: references[{k}]", allow_none=True)
        if len(stream) != n_hyp:
            raise ValueError(f"corpus_bleu: {n_hyp} hypotheses but reference stream {k} has "
                             f"{len(stream)} segments; every stream must be parallel to the hypotheses")
        streams.append(stream)
    return streams


def _bleu_tokens(text, lowercase, tokenize):
    if lowercase:
        text = text.lower()
    text = text.rstrip()
    return tokenize_13a(text) if tokenize == "13a" else text.split()


def _ngram_counts(tokens, max_order):
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1)
                   for i in range(len(tokens) - n + 1))


def _segment_stats(hyp, refs, lowercase, tokenize, max_order):
    """``[sys_len, ref_len, counts (max_order), totals (max_order)]`` of one segment."""
    hyp_tokens = _bleu_tokens(hyp, lowercase, tokenize)
    max_ref_counts = Counter()  # each n-gram's count in the reference holding it most often
    ref_lens = []
    for ref in refs:
        ref_tokens = _bleu_tokens(ref, lowercase, tokenize)
        ref_lens.append(len(ref_tokens))
        max_ref_counts |= _ngram_counts(ref_tokens, max_order)  # | keeps the max count
    sys_len = len(hyp_tokens)
    # the closest reference length; on a tie, the shorter one
    ref_len = min(ref_lens, key=lambda r: (abs(sys_len - r), r))
    counts, totals = [0] * max_order, [0] * max_order
    for ngram, n_hyp in _ngram_counts(hyp_tokens, max_order).items():
        order = len(ngram) - 1
        totals[order] += n_hyp
        counts[order] += min(n_hyp, max_ref_counts[ngram])
    return [sys_len, ref_len] + counts + totals


def _bleu_from_stats(stats, smooth_method, use_effective_order, max_order):
    sys_len, ref_len = stats[0], stats[1]
    counts, totals = stats[2:2 + max_order], stats[2 + max_order:]
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    else:
        bp = 1.0
    precisions = [0.0] * max_order
    if not any(counts):
        return BLEUScore(0.0, counts, totals, precisions, bp, sys_len, ref_len)

    smooth = 1.0
    orders = max_order  # how many precisions the mean of logs runs over
    for n in range(max_order):
        if totals[n] == 0:
            break  # no n-grams of this order (or higher) in the hypotheses
        if use_effective_order:
            orders = n + 1
        if counts[n]:
            precisions[n] = 100.0 * counts[n] / totals[n]
        elif smooth_method == "exp":
            smooth *= 2
            precisions[n] = 100.0 / (smooth * totals[n])
    log_sum = sum(math.log(p) if p else _LOG_ZERO for p in precisions[:orders])
    score = bp * math.exp(log_sum / orders)
    return BLEUScore(score, counts, totals, precisions, bp, sys_len, ref_len)


# ------------------------------------------------------------------------------------------
# ROUGE
# ------------------------------------------------------------------------------------------
class RougeScore(NamedTuple):
    """Precision, recall and F-measure (F1) of one ROUGE type, each in [0, 1]."""

    precision: float
    recall: float
    fmeasure: float


_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ROUGE_N = re.compile(r"rouge([1-9])")
DEFAULT_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_tokenize(text, use_stemmer=False):
    """rouge-score's tokenizer: lowercase, every run of characters other than ``a-z0-9`` becomes
    a space, split; with ``use_stemmer``, tokens longer than 3 characters are Porter-stemmed.

    >>> rouge_tokenize("The cats' naps, 2 of them!", use_stemmer=True)
    ['the', 'cat', 'nap', '2', 'of', 'them']
    """
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    if use_stemmer:
        tokens = [porter_stem(t) if len(t) > 3 else t for t in tokens]
    return tokens


def sentence_rouge(prediction, reference, rouge_types=DEFAULT_ROUGE_TYPES, use_stemmer=False):
    """ROUGE of one ``prediction`` against one ``reference`` (a str) or several (a list of str:
    for each type the reference with the highest F-measure counts, the first on a tie, as
    ``rouge_score.RougeScorer.score_multi``). Returns ``{rouge_type: RougeScore}``.

    Types: ``"rougeN"`` (N = 1..9: n-gram overlap), ``"rougeL"`` (longest common subsequence of
    the token sequences), ``"rougeLsum"`` (summary-level LCS, the texts split into sentences at
    newlines).
    """
    rouge_types = _check_rouge_types(rouge_types)
    if not isinstance(prediction, str):
        raise TypeError(f"sentence_rouge: prediction must be a str, got {type(prediction).__name__}")
    if isinstance(reference, str):
        return _rouge_pair(prediction, reference, rouge_types, use_stemmer)
    refs = _check_strings(reference, "sentence_rouge: reference")
    if not refs:
        raise ValueError("sentence_rouge: the list of references is empty")
    per_ref = [_rouge_pair(prediction, ref, rouge_types, use_stemmer) for ref in refs]
    return {t: max(per_ref, key=lambda s: s[t].fmeasure)[t] for t in rouge_types}


def rouge(predictions, references, rouge_types=DEFAULT_ROUGE_TYPES, use_stemmer=False):
    """Mean ROUGE over pairs: ``{rouge_type: RougeScore(mean precision, mean recall, mean F)}``.

    ``predictions``: list of str; ``references``: a parallel list whose items are a str or a
    list of str (several references; see :func:`sentence_rouge`). Each pair is scored exactly
    as ``rouge_score.rouge_scorer.RougeScorer(rouge_types, use_stemmer).score(reference,
    prediction)`` does (note its argument order: target first); the result is the plain mean
    over the pairs.
    """
    rouge_types = _check_rouge_types(rouge_types)
    predictions = _check_strings(predictions, "rouge: predictions")
    if isinstance(references, str) or not hasattr(references, "__len__"):
        raise TypeError(f"rouge: references must be a list, got {type(references).__name__}")
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(f"rouge: {len(predictions)} predictions but {len(references)} references; "
                         "they must be parallel")
    if not predictions:
        raise ValueError("rouge: no predictions to score")
    pair_scores = [sentence_rouge(p, r, rouge_types, use_stemmer) for p, r in zip(predictions, references)]
    n = len(pair_scores)
    return {t: RougeScore(*(sum(s[t][k] for s in pair_scores) / n for k in range(3))) for t in rouge_types}


def _check_rouge_types(rouge_types):
    if isinstance(rouge_types, str):
        rouge_types = (rouge_types,)
    rouge_types = tuple(rouge_types)
    if not rouge_types:
        raise ValueError("rouge: rouge_types is empty")
    for t in rouge_types:
        if not (t in ("rougeL", "rougeLsum") or (isinstance(t, str) and _ROUGE_N.fullmatch(t))):
            raise ValueError(f"rouge: unknown rouge type {t!r}; use 'rouge1'..'rouge9', 'rougeL' or 'rougeLsum'")
    return rouge_types


def _rouge_pair(prediction, reference, rouge_types, use_stemmer):
    pred_tokens = rouge_tokenize(prediction, use_stemmer)
    ref_tokens = rouge_tokenize(reference, use_stemmer)
    scores = {}
    for t in rouge_types:
        if t == "rougeL":
            scores[t] = _rouge_lcs(ref_tokens, pred_tokens)
        elif t == "rougeLsum":
            scores[t] = _rouge_lsum(_sentences(reference, use_stemmer), _sentences(prediction, use_stemmer))
        else:
            scores[t] = _rouge_n(ref_tokens, pred_tokens, int(t[5:]))
    return scores


def _prf(hits, n_pred, n_ref):
    precision = hits / n_pred
    recall = hits / n_ref
    fmeasure = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return RougeScore(precision, recall, fmeasure)


def _rouge_n(ref_tokens, pred_tokens, n):
    """Clipped n-gram overlap; an empty side gives 0 (its count is taken as at least 1)."""
    ref_ngrams = Counter(tuple(ref_tokens[i:i + n]) for i in range(len(ref_tokens) - n + 1))
    pred_ngrams = Counter(tuple(pred_tokens[i:i + n]) for i in range(len(pred_tokens) - n + 1))
    hits = sum((ref_ngrams & pred_ngrams).values())
    return _prf(hits, max(sum(pred_ngrams.values()), 1), max(sum(ref_ngrams.values()), 1))


def _lcs_table(a, b):
    """``table[i][j]`` = length of the longest common subsequence of ``a[:i]`` and ``b[:j]``."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        row, prev = table[i], table[i - 1]
        for j, y in enumerate(b, 1):
            row[j] = prev[j - 1] + 1 if x == y else max(prev[j], row[j - 1])
    return table


def _rouge_lcs(ref_tokens, pred_tokens):
    if not ref_tokens or not pred_tokens:
        return RougeScore(0, 0, 0)
    lcs = _lcs_table(ref_tokens, pred_tokens)[-1][-1]
    return _prf(lcs, len(pred_tokens), len(ref_tokens))


def _sentences(text, use_stemmer):
    """rougeLsum's sentences: the non-empty lines of ``text``, each tokenized (maybe to [])."""
    return [rouge_tokenize(line, use_stemmer) for line in text.split("\n") if line]


def _lcs_positions(ref, cand):
    """Positions in ``ref`` of one longest common subsequence with ``cand``. Which one (of
    several) matters for the union in ROUGE-Lsum: walking back from the end, take a match,
    else step back in ``cand`` only when that keeps a strictly longer LCS, else in ``ref``."""
    table = _lcs_table(ref, cand)
    i, j = len(ref), len(cand)
    positions = []
    while i > 0 and j > 0:
        if ref[i - 1] == cand[j - 1]:
            positions.append(i - 1)
            i -= 1
            j -= 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions


def _rouge_lsum(ref_sents, pred_sents):
    """Summary-level LCS (ROUGE paper, section 3.2): for each reference sentence, the union of
    its LCS positions with every predicted sentence; each token is a hit at most as often as
    it occurs on either side (ROUGE-1.5.5's guard against double counting)."""
    n_ref = sum(map(len, ref_sents))
    n_pred = sum(map(len, pred_sents))
    if not n_ref or not n_pred:
        return RougeScore(0, 0, 0)
    ref_left = Counter(t for s in ref_sents for t in s)
    pred_left = Counter(t for s in pred_sents for t in s)
    hits = 0
    for ref in ref_sents:
        union = sorted(set().union(*(_lcs_positions(ref, pred) for pred in pred_sents)))
        for token in (ref[i] for i in union):
            if ref_left[token] > 0 and pred_left[token] > 0:
                hits += 1
                ref_left[token] -= 1
                pred_left[token] -= 1
    return _prf(hits, n_pred, n_ref)


# ------------------------------------------------------------------------------------------
# Porter stemmer (as NLTK's PorterStemmer applies it, the one rouge-score uses)
# ------------------------------------------------------------------------------------------
# Porter, M. "An algorithm for suffix stripping", Program 14.3 (1980), with Martin Porter's
# later amendments and NLTK's extensions (its default mode): a table of irregular forms,
# "ies"/"ied" on 4-letter words, y -> i only after a consonant, "alli", "fulli", "logi".
_IRREGULAR = {
    "skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
    "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
    "cannings": "canning", "canning": "canning", "howe": "howe", "proceed": "proceed",
    "exceed": "exceed", "succeed": "succeed",
}
_VOWELS = frozenset("aeiou")


def _consonants(word):
    """Per letter: is it a consonant? (a, e, i, o, u are vowels; y is a vowel after a consonant)."""
    flags = []
    for i, ch in enumerate(word):
        if ch in _VOWELS:
            flags.append(False)
        elif ch == "y":
            flags.append(i == 0 or not flags[i - 1])
        else:
            flags.append(True)
    return flags


def _measure(stem):
    """m in [C](VC){m}[V]: how many vowel-run -> consonant-run transitions the stem has."""
    flags = _consonants(stem)
    return sum(1 for a, b in zip(flags, flags[1:]) if not a and b)


def _has_vowel(stem):
    return not all(_consonants(stem))


def _ends_double_consonant(word):
    return len(word) >= 2 and word[-1] == word[-2] and _consonants(word)[-1]


def _ends_cvc(word):
    """*o: consonant-vowel-consonant at the end, the last not w, x or y (NLTK: also a
    two-letter vowel-consonant word)."""
    flags = _consonants(word)
    if len(word) >= 3 and flags[-3] and not flags[-2] and flags[-1] and word[-1] not in "wxy":
        return True
    return len(word) == 2 and not flags[0] and flags[1]


def _positive_measure(stem):
    return _measure(stem) > 0


def _apply_first(word, rules):
    """Apply the rule of the first suffix in ``rules`` that ``word`` ends with, if its condition
    holds on the stem; either way no later rule is tried. Rules: (suffix, replacement, condition)."""
    for suffix, replacement, condition in rules:
        if word.endswith(suffix):
            stem = word[:len(word) - len(suffix)]
            return stem + replacement if condition is None or condition(stem) else word
    return word


def _step1a(word):
    if word.endswith("ies") and len(word) == 4:
        return word[:-3] + "ie"  # "dies" -> "die", while "flies" -> "fli"
    return _apply_first(word, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])


def _step1b(word):
    if word.endswith("ied"):
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        return word[:-1] if _measure(word[:-3]) > 0 else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix) and _has_vowel(word[:-len(suffix)]):
            stem = word[:-len(suffix)]
            break
    else:
        return word
    if stem.endswith(("at", "bl", "iz")):
        return stem + "e"  # put back the e of -ate, -ble, -ize so step 4 can see the suffix
    if _ends_double_consonant(stem):
        return stem[:-1] if stem[-1] not in "lsz" else stem  # hopp(ing) -> hop; fall(ing) stays
    if _measure(stem) == 1 and _ends_cvc(stem):
        return stem + "e"  # fil(ing) -> file
    return stem


def _step1c(word):
    # y -> i after a consonant that is not the whole stem: happy -> happi, but enjoy, by stay.
    if word.endswith("y") and len(word) > 2 and _consonants(word[:-1])[-1]:
        return word[:-1] + "i"
    return word


_STEP2_RULES = [
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
    ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
    ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
    ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
    ("fulli", "ful"),
]


def _step2(word):
    if word.endswith("alli") and _positive_measure(word[:-4]):
        return _step2(word[:-4] + "al")
    rules = [(s, r, _positive_measure) for s, r in _STEP2_RULES]
    # "logi" -> "log" with the l counted in the stem, so that geo-logi behaves like philo-logi
    rules.append(("logi", "log", lambda stem: _positive_measure(word[:-3])))
    return _apply_first(word, rules)


def _step3(word):
    return _apply_first(word, [(s, r, _positive_measure) for s, r in [
        ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
        ("ful", ""), ("ness", "")]])


def _measure_gt_1(stem):
    return _measure(stem) > 1


def _step4(word):
    rules = [(s, "", _measure_gt_1) for s in ("al", "ance", "ence", "er", "ic", "able", "ible",
                                              "ant", "ement", "ment", "ent")]
    rules.append(("ion", "", lambda stem: _measure(stem) > 1 and stem[-1] in "st"))
    rules += [(s, "", _measure_gt_1) for s in ("ou", "ism", "ate", "iti", "ous", "ive", "ize")]
    return _apply_first(word, rules)


def _step5(word):
    if word.endswith("e"):
        m = _measure(word[:-1])
        if m > 1 or (m == 1 and not _ends_cvc(word[:-1])):
            word = word[:-1]  # probate -> probat, cease -> ceas; rate stays
    if word.endswith("ll") and _measure(word[:-1]) > 1:
        word = word[:-1]  # controll -> control
    return word


def porter_stem(word):
    """The Porter stem of ``word`` exactly as ``nltk.stem.porter.PorterStemmer().stem`` gives
    it (NLTK's default mode), which is what rouge-score's ``use_stemmer=True`` applies.

    >>> [porter_stem(w) for w in ["caresses", "ponies", "relational", "hopping", "generously"]]
    ['caress', 'poni', 'relat', 'hop', 'gener']
    """
    stem = word.lower()
    if stem in _IRREGULAR:
        return _IRREGULAR[stem]
    if len(word) <= 2:  # (NLTK measures the word before lowercasing)
        return stem
    for step in (_step1a, _step1b, _step1c, _step2, _step3, _step4, _step5):
        stem = step(stem)
    return stem


# ------------------------------------------------------------------------------------------
# Perplexity
# ------------------------------------------------------------------------------------------
def perplexity(mean_loss):
    """``e ** mean_loss``: the perplexity of a mean cross-entropy in nats per token. A loss
    too large for a float64 exponential gives ``inf``; a NaN loss gives NaN. ``mean_loss`` may
    be a number or a one-element tensor (the loss ``model(x, y)`` returns), as ``float()``
    takes a one-element ``torch.Tensor``."""
    mean_loss = float(mean_loss.item() if hasattr(mean_loss, "item") else mean_loss)
    if mean_loss < 0:
        raise ValueError(f"perplexity: a cross-entropy is never negative, got mean_loss={mean_loss}")
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def perplexity_from_sum(summed_loss, n_tokens):
    """Perplexity from a loss summed over ``n_tokens`` predicted tokens (e.g. accumulated over
    batches of different sizes): ``e ** (summed_loss / n_tokens)``."""
    if isinstance(n_tokens, bool) or not float(n_tokens).is_integer() or n_tokens < 1:
        raise ValueError(f"perplexity_from_sum: n_tokens must be a positive integer, got {n_tokens!r}")
    return perplexity(float(summed_loss) / n_tokens)
