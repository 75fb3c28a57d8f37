"""tinyllm.metrics: BLEU equal to sacrebleu, ROUGE equal to rouge-score, the Porter stemmer
equal to NLTK's, perplexity. The oracles are optional (``pip install sacrebleu rouge-score``);
hand-computed cases and the error checks run without them."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.metrics import (
    BLEUScore,
    RougeScore,
    corpus_bleu,
    perplexity,
    perplexity_from_sum,
    porter_stem,
    rouge,
    rouge_tokenize,
    sentence_bleu,
    sentence_rouge,
    tokenize_13a,
)

TOL = 1e-9

# Words that exercise 13a (punctuation, numbers with . , -, entities, <skipped>) and unicode.
BLEU_WORDS = ["the", "cat", "sat", "on", "mat", "The", "a", "dog", "3.14", "1,000", "1990-2000",
              "e.g.", "U.S.", "it's", "don't", "(x)", "[y]", "{z}", "$5", "50%", "&amp;", "&lt;b&gt;",
              "&quot;hi&quot;", "a-b", "--", "...", ",", ".", "!", "?", ";", ":", "/", "\\", "|",
              "<skipped>", "café", "naïve", "日本語", "Ελλάδα", "😀", "x\ny", "end-\nline", "\t", "7-"]


def bleu_segment(n_min=0, n_max=12):
    return st.lists(st.sampled_from(BLEU_WORDS), min_size=n_min, max_size=n_max).map(" ".join)


def assert_bleu_equal(ours, theirs):
    assert isinstance(ours, BLEUScore)
    assert math.isfinite(ours.score)
    assert abs(ours.score - theirs.score) <= TOL, (ours.score, theirs.score)
    assert len(ours.precisions) == len(theirs.precisions)
    for p, q in zip(ours.precisions, theirs.precisions):
        assert abs(p - q) <= TOL, (ours.precisions, theirs.precisions)
    assert list(ours.counts) == list(theirs.counts)
    assert list(ours.totals) == list(theirs.totals)
    assert abs(ours.bp - theirs.bp) <= TOL
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    assert str(ours) == theirs.format()  # "BLEU = 37.99 83.3/60.0/25.0/16.7 (BP = ...)"


def sacrebleu():
    return pytest.importorskip("sacrebleu")


# ------------------------------------------------------------------------------------------
# BLEU without the oracle
# ------------------------------------------------------------------------------------------
def test_bleu_hand_computed():
    # hyp "the cat sat on the mat" vs ref "the cat is on the mat": matches 5/6, 3/5, 1/4, 0/3;
    # exp smoothing turns the first zero into 1 / (2 * 3). Equal lengths: BP = 1.
    b = corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    assert b.counts == [5, 3, 1, 0] and b.totals == [6, 5, 4, 3]
    np.testing.assert_allclose(b.precisions, [500 / 6, 60.0, 25.0, 100 / 6], rtol=1e-15)
    assert b.bp == 1.0 and (b.sys_len, b.ref_len) == (6, 6)
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert abs(b.score - expected) <= 1e-12
    assert str(b) == "BLEU = 37.99 83.3/60.0/25.0/16.7 (BP = 1.000 ratio = 1.000 hyp_len = 6 ref_len = 6)"


def test_bleu_identical_is_100_and_brevity_penalty():
    refs = ["one two three four five", "six seven eight nine ten eleven"]
    assert corpus_bleu(refs, [refs]).score == pytest.approx(100.0, abs=1e-12)
    short = corpus_bleu(["one two three four"], [["one two three four five six"]])
    assert short.bp == pytest.approx(math.exp(1 - 6 / 4), rel=1e-15)
    assert short.score == pytest.approx(100 * math.exp(1 - 6 / 4), rel=1e-12)


def test_bleu_closest_reference_length_prefers_the_shorter_on_a_tie():
    # hyp of 4 tokens, references of 3 and 5: both 1 away, the shorter (3) is used.
    b = corpus_bleu(["a b c d"], [["a b c"], ["a b c d e"]])
    assert b.ref_len == 3 and b.bp == 1.0


def test_bleu_no_match_and_empty_hypothesis_are_zero():
    b = corpus_bleu(["x y z"], [["a b c"]])
    assert b.score == 0.0 and b.counts == [0, 0, 0, 0] and b.precisions == [0.0] * 4
    e = corpus_bleu([""], [["a b c"]])
    assert e.score == 0.0 and e.sys_len == 0 and e.bp == 0.0


def test_bleu_13a_splits_punctuation_but_not_numbers():
    assert tokenize_13a("Hello, world! It costs $3.50 (1,000 in 1990-2000).") == [
        "Hello", ",", "world", "!", "It", "costs", "$", "3.50", "(", "1,000", "in", "1990", "-",
        "2000", ")", "."]
    assert tokenize_13a("&lt;b&gt; &amp;amp; <skipped>x") == ["<", "b", ">", "&", "amp", ";", "x"]


@pytest.mark.parametrize("bad_refs, match", [
    ([["a", "b"]], "2 segments"),
    ([["a"], ["b", "c"]], "stream 1 has 2"),
    (["a"], "wrap it as"),
    ("a", "non-empty list"),
    ([], "non-empty list"),
    ([[1]], r"references\[0\]\[0\] must be a str"),
])
def test_bleu_bad_references_are_clear_errors(bad_refs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        corpus_bleu(["a"], bad_refs)


def test_bleu_other_bad_inputs():
    with pytest.raises(TypeError, match="hypotheses must be a list"):
        corpus_bleu("a b", [["a b"]])
    with pytest.raises(TypeError, match=r"hypotheses\[1\] must be a str"):
        corpus_bleu(["a", None], [["a", "b"]])
    with pytest.raises(ValueError, match="segment 0 has no reference"):
        corpus_bleu(["a"], [[None]])
    with pytest.raises(TypeError, match=r"pass \['a b'\]"):
        sentence_bleu("a b", "a b")
    with pytest.raises(ValueError, match="smooth_method"):
        corpus_bleu(["a"], [["a"]], smooth_method="floor")
    with pytest.raises(ValueError, match="tokenize"):
        corpus_bleu(["a"], [["a"]], tokenize="intl")


# ------------------------------------------------------------------------------------------
# BLEU against sacrebleu
# ------------------------------------------------------------------------------------------
@settings(max_examples=300)
@given(st.lists(st.sampled_from(list("ab1 .,-'\"&;<>()$%/\n\téü😀") + ["&amp;", "&lt;", "&quot;", "<skipped>"]),
                max_size=40).map("".join))
def test_tokenize_13a_matches_sacrebleu(line):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    assert tokenize_13a(line) == Tokenizer13a()(line).split()


@settings(max_examples=150)
@given(st.integers(1, 3).flatmap(lambda n_refs: st.integers(1, 6).flatmap(lambda n_seg: st.tuples(
    st.lists(bleu_segment(), min_size=n_seg, max_size=n_seg),
    st.lists(st.lists(st.one_of(bleu_segment(), st.none()) if n_refs > 1 else bleu_segment(),
                      min_size=n_seg, max_size=n_seg), min_size=n_refs, max_size=n_refs)))))
def test_corpus_bleu_matches_sacrebleu_generated(case):
    sb = sacrebleu()
    hyps, refs = case
    for i in range(len(hyps)):  # a segment needs at least one reference
        if all(stream[i] is None for stream in refs):
            refs[0][i] = "the cat"
    assert_bleu_equal(corpus_bleu(hyps, refs), sb.corpus_bleu(hyps, refs))


@pytest.mark.parametrize("seed", range(5))
def test_corpus_bleu_matches_sacrebleu_on_larger_corpora(seed):
    """Hundreds of segments drawn so that 1- to 4-gram matches are frequent (near-copies of the
    reference), as a trained system's output would be."""
    sb = sacrebleu()
    rng = np.random.default_rng(seed)
    vocab = BLEU_WORDS[:30]
    refs_a, refs_b, hyps = [], [], []
    for _ in range(300):
        ref = list(rng.choice(vocab, size=rng.integers(0, 20)))
        hyp = [w if rng.random() < 0.8 else rng.choice(vocab) for w in ref]
        if rng.random() < 0.3 and hyp:
            del hyp[rng.integers(len(hyp)):]
        refs_a.append(" ".join(ref))
        refs_b.append(" ".join(rng.permutation(ref)))
        hyps.append(" ".join(hyp))
    for refs in ([refs_a], [refs_a, refs_b]):
        assert_bleu_equal(corpus_bleu(hyps, refs), sb.corpus_bleu(hyps, refs))
    for opts in [dict(lowercase=True), dict(tokenize="none"), dict(smooth_method="none"),
                 dict(use_effective_order=True)]:
        assert_bleu_equal(corpus_bleu(hyps, [refs_a], **opts), sb.corpus_bleu(hyps, [refs_a], **opts))
    ours = corpus_bleu(hyps, [refs_a], max_ngram_order=2)
    theirs = sb.BLEU(max_ngram_order=2).corpus_score(hyps, [refs_a])
    assert_bleu_equal(ours, theirs)


@settings(max_examples=150)
@given(bleu_segment(), st.lists(bleu_segment(), min_size=1, max_size=3))
def test_sentence_bleu_matches_sacrebleu_generated(hyp, refs):
    sb = sacrebleu()
    assert_bleu_equal(sentence_bleu(hyp, refs), sb.sentence_bleu(hyp, refs))
    assert_bleu_equal(sentence_bleu(hyp, refs, use_effective_order=False),
                      sb.sentence_bleu(hyp, refs, use_effective_order=False))


EDGE_CASES = [
    (["the cat sat on the mat"], [["the cat is on the mat"]]),
    ([""], [["a b c"]]),                                  # empty hypothesis
    ([""], [[""]]),                                       # both empty
    (["a b c"], [[""]]),                                  # empty reference
    (["x y z"], [["a b c"]]),                             # no match at all
    (["a b"], [["a b"]]),                                 # shorter than 4 tokens: no 3-, 4-grams
    (["a", "a b", "a b c"], [["a", "a b", "a b c"]]),     # a corpus of short segments
    (["a b c d e"], [["a b c d e f g"], ["a b c"], ["b c d e f"]]),  # several references
    (["the the the the the the the"], [["the cat is on the mat"], ["there is a cat on the mat"]]),
    (["It costs $3.50, doesn't it?"], [["It costs $ 3.50 , doesn't it ?"]]),
    (["1,000.5 items (1990-2000)."], [["1,000.5 items ( 1990 - 2000 ) ."]]),
    (["Ça coûte 5 €, naïve café 日本語 😀"], [["Ça coûte 5€ , naïve café 日本語😀"]]),
    (["&lt;b&gt; &amp; &quot;x&quot;"], [["<b> & \"x\""]]),
    (["trailing spaces   \n"], [["trailing spaces"]]),
    (["a b c d", "e f"], [["a b c d", None], [None, "e f g"]]),  # variable number of references
]


@pytest.mark.parametrize("hyps, refs", EDGE_CASES)
def test_bleu_edge_cases_match_sacrebleu(hyps, refs):
    sb = sacrebleu()
    assert_bleu_equal(corpus_bleu(hyps, refs), sb.corpus_bleu(hyps, refs))
    for i, hyp in enumerate(hyps):
        seg_refs = [s[i] for s in refs if s[i] is not None]
        assert_bleu_equal(sentence_bleu(hyp, seg_refs), sb.sentence_bleu(hyp, seg_refs))


# ------------------------------------------------------------------------------------------
# Porter stemmer against NLTK
# ------------------------------------------------------------------------------------------
# Every suffix the steps look at, so random stems + suffixes reach every rule.
SUFFIXES = ["", "s", "sses", "ies", "ss", "ied", "eed", "ed", "ing", "at", "bl", "iz", "y", "ational",
            "tional", "enci", "anci", "izer", "bli", "alli", "entli", "eli", "ousli", "ization",
            "ation", "ator", "alism", "iveness", "fulness", "ousness", "aliti", "iviti", "biliti",
            "fulli", "logi", "icate", "ative", "alize", "iciti", "ical", "ful", "ness", "al", "ance",
            "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "sion", "tion", "ion",
            "ou", "ism", "ate", "iti", "ous", "ive", "ize", "e", "ll", "lling", "ying", "ies", "y's"]
ENGLISH = ["caresses", "ponies", "ties", "caress", "cats", "feed", "agreed", "plastered", "bled",
           "motoring", "sing", "conflated", "troubled", "sized", "hopping", "tanned", "falling",
           "hissing", "fizzed", "failing", "filing", "happy", "sky", "skies", "dying", "lying", "news",
           "innings", "proceed", "exceed", "relational", "conditional", "rational", "valenci",
           "digitizer", "conformabli", "radicalli", "differentli", "vileli", "analogousli",
           "vietnamization", "predication", "operator", "feudalism", "decisiveness", "hopefulness",
           "callousness", "formaliti", "sensitiviti", "sensibiliti", "triplicate", "formative",
           "formalize", "electriciti", "electrical", "hopeful", "goodness", "revival", "allowance",
           "inference", "airliner", "gyroscopic", "adjustable", "defensible", "irritant",
           "replacement", "adjustment", "dependent", "adoption", "homologou", "communism",
           "activate", "angulariti", "homologous", "effective", "bowdlerize", "probate", "rate",
           "cease", "controll", "roll", "generously", "geology", "archaeology", "spied", "died",
           "flies", "dies", "enjoy", "by", "at", "a", "is", "yyyy", "syzygy", "toy", "ivy", "oats",
           "running", "summarization", "summaries", "functions", "returns", "returned", "python",
           "1234s", "2nd", "abc123ing", "fully", "really", "hopefully", "ally", "bally"]


def test_porter_stem_known_values():
    # From Porter's paper (and NLTK's extensions where they differ).
    cases = {"caresses": "caress", "ponies": "poni", "ties": "tie", "cats": "cat", "feed": "feed",
             "agreed": "agre", "plastered": "plaster", "motoring": "motor", "hopping": "hop",
             "falling": "fall", "filing": "file", "happy": "happi", "enjoy": "enjoy",
             "relational": "relat", "dying": "die", "skies": "sky", "generously": "gener",
             "controll": "control", "roll": "roll", "by": "by"}
    assert {w: porter_stem(w) for w in cases} == cases


def test_porter_stem_matches_nltk_on_words():
    porter = pytest.importorskip("nltk.stem.porter")
    stemmer = porter.PorterStemmer()
    for w in ENGLISH:
        assert porter_stem(w) == stemmer.stem(w), w


@settings(max_examples=400)
@given(st.text(alphabet="aeiouybcdlmnrstgzwx1", min_size=0, max_size=7), st.sampled_from(SUFFIXES))
def test_porter_stem_matches_nltk_generated(stem, suffix):
    porter = pytest.importorskip("nltk.stem.porter")
    word = stem + suffix
    assert porter_stem(word) == porter.PorterStemmer().stem(word)


# ------------------------------------------------------------------------------------------
# ROUGE
# ------------------------------------------------------------------------------------------
ROUGE_WORDS = ["the", "The", "cat", "cats", "sat", "sitting", "on", "mat", "mats", "a", "is",
               "running", "runs", "ran", "generously", "generous", "2", "x1", "it's", "don't",
               "e.g.", "café", "naïve", "日本語", "...", ",", "!", "\n", "\n\n", "-"]
ALL_TYPES = ("rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum")


def rouge_text(max_size=15):
    return st.lists(st.sampled_from(ROUGE_WORDS), max_size=max_size).map(" ".join)


def assert_rouge_equal(ours, theirs, types):
    assert set(ours) == set(types)
    for t in types:
        assert isinstance(ours[t], RougeScore)
        for a, b in zip(ours[t], theirs[t]):
            assert math.isfinite(a)
            assert abs(a - b) <= TOL, (t, ours[t], theirs[t])


def scorer(types, use_stemmer):
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    return rs.RougeScorer(list(types), use_stemmer=use_stemmer)


def test_rouge_hand_computed():
    s = sentence_rouge("the cat sat on the mat", "the cat is on the mat")
    # unigrams: the x2, cat, on, mat match -> 5/6 both ways; bigrams: "the cat", "on the",
    # "the mat" -> 3/5; LCS "the cat on the mat" = 5.
    assert s["rouge1"] == pytest.approx((5 / 6, 5 / 6, 5 / 6), abs=1e-15)
    assert s["rouge2"] == pytest.approx((3 / 5, 3 / 5, 3 / 5), abs=1e-15)
    assert s["rougeL"] == pytest.approx((5 / 6, 5 / 6, 5 / 6), abs=1e-15)
    e = sentence_rouge("", "the cat")
    assert all(v == (0, 0, 0) for v in e.values())
    r = rouge(["a b", "c d"], ["a b", "x y"], rouge_types=["rouge1"])
    assert r["rouge1"] == pytest.approx((0.5, 0.5, 0.5))


def test_rouge_tokenize_matches_rouge_score():
    tok = pytest.importorskip("rouge_score.tokenize")
    porter = pytest.importorskip("nltk.stem.porter").PorterStemmer()
    for text in ["The cats' naps, 2 of them!", "Ünïcödé café -- x_y 3.14 İstanbul K", "", "  \n ",
                 "generously running summarization"]:
        assert rouge_tokenize(text) == tok.tokenize(text, None)
        assert rouge_tokenize(text, use_stemmer=True) == tok.tokenize(text, porter)


@settings(max_examples=150)
@given(rouge_text(), rouge_text(), st.booleans())
def test_sentence_rouge_matches_rouge_score_generated(prediction, reference, use_stemmer):
    theirs = scorer(ALL_TYPES, use_stemmer).score(reference, prediction)  # target first
    assert_rouge_equal(sentence_rouge(prediction, reference, ALL_TYPES, use_stemmer), theirs, ALL_TYPES)


ROUGE_EDGE = [
    ("", "the cat"), ("the cat", ""), ("", ""), ("!!!", "..."),       # empty sides
    ("a b c", "x y z"),                                                # no overlap
    ("the the the the", "the cat the"), ("a a b b a a", "a b a b a"),  # repeated words
    ("Running runs ran generously", "run running generous runs"),     # stemming matters
    ("the cat sat.\nthe dog ran.", "the dog sat.\nthe cat ran.\n"),   # multi-line rougeLsum
    ("a b c\n\n\nd e f\n", "\nd e\na b x c\n \n"),                     # blank / space-only lines
    ("one line only", "first line\nsecond line one\nonly"),
]


@pytest.mark.parametrize("use_stemmer", [False, True])
@pytest.mark.parametrize("prediction, reference", ROUGE_EDGE)
def test_rouge_edge_cases_match_rouge_score(prediction, reference, use_stemmer):
    theirs = scorer(ALL_TYPES, use_stemmer).score(reference, prediction)
    assert_rouge_equal(sentence_rouge(prediction, reference, ALL_TYPES, use_stemmer), theirs, ALL_TYPES)


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_mean_matches_rouge_score(use_stemmer):
    rng = np.random.default_rng(0)
    preds, refs = [], []
    for _ in range(60):
        ref = list(rng.choice(ROUGE_WORDS, size=rng.integers(0, 25)))
        pred = [w if rng.random() < 0.6 else rng.choice(ROUGE_WORDS) for w in ref]
        preds.append(" ".join(pred))
        refs.append(" ".join(ref))
    sc = scorer(ALL_TYPES, use_stemmer)
    pair = [sc.score(r, p) for p, r in zip(preds, refs)]
    theirs = {t: [np.mean([s[t][k] for s in pair]) for k in range(3)] for t in ALL_TYPES}
    assert_rouge_equal(rouge(preds, refs, ALL_TYPES, use_stemmer), theirs, ALL_TYPES)


def test_rouge_several_references_match_score_multi():
    sc = scorer(ALL_TYPES, False)
    pred = "the cat sat on the mat"
    refs = ["a cat on a mat", "the cat sat", "the mat", "the cat sat"]
    assert_rouge_equal(sentence_rouge(pred, refs, ALL_TYPES), sc.score_multi(refs, pred), ALL_TYPES)
    mean = rouge([pred, "x"], [refs, ["x", "y"]], ALL_TYPES)
    a, b = sc.score_multi(refs, pred), sc.score_multi(["x", "y"], "x")
    assert_rouge_equal(mean, {t: [(a[t][k] + b[t][k]) / 2 for k in range(3)] for t in ALL_TYPES}, ALL_TYPES)


def test_rouge_bad_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown rouge type 'rougeX'"):
        rouge(["a"], ["a"], rouge_types=["rougeX"])
    with pytest.raises(ValueError, match="unknown rouge type 'rouge0'"):
        rouge(["a"], ["a"], rouge_types=["rouge0"])
    with pytest.raises(ValueError, match="no predictions"):
        rouge([], [])
    with pytest.raises(TypeError, match=r"predictions\[0\] must be a str"):
        rouge([3], ["a"])


# ------------------------------------------------------------------------------------------
# perplexity
# ------------------------------------------------------------------------------------------
def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(65)) == pytest.approx(65.0, rel=1e-15)
    assert perplexity(np.float32(2.0)) == pytest.approx(math.exp(2.0), rel=1e-7)
    assert perplexity(1e4) == math.inf
    assert math.isnan(perplexity(float("nan")))
    assert perplexity_from_sum(3 * math.log(4), 3) == pytest.approx(4.0, rel=1e-15)
    with pytest.raises(ValueError, match="never negative"):
        perplexity(-0.1)
    with pytest.raises(ValueError, match="n_tokens must be a positive integer, got 0"):
        perplexity_from_sum(1.0, 0)
