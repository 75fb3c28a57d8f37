"""An adversarial parity audit of tinyllm.metrics against sacrebleu, rouge-score and PyTorch.

tests/test_metrics.py holds the metrics equal to the reference packages on texts drawn from a
fixed list of words. This file draws raw characters instead, over an alphabet chosen to break
tokenizers (every kind of whitespace Python's ``str.split`` knows, SGML entities cut in half,
letters whose lowercase is longer than themselves, non-ASCII digits, combining marks), and pins
the two places where tinyllm disagreed with what a user of the reference tools gets:

* ``corpus_bleu`` of an empty corpus returned a score of 0 (sacrebleu fails on it: BLEU of
  nothing is undefined, and a silent 0 hides an evaluation that produced no output);
* ``perplexity(loss)`` refused the loss tensor ``model(x, y)`` returns (``float()`` of a
  one-element ``torch.Tensor`` works, so ``perplexity`` should take one).
"""
import math
import random

import numpy as np
import pytest

from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.metrics import corpus_bleu, perplexity, porter_stem, rouge, sentence_bleu, sentence_rouge

TOL = 1e-9

# Whitespace of every kind, 13a's punctuation and number rules, entities whole and cut, <skipped>
# and "-\n" (13a deletes both), letters that lowercase to two characters (İ) or change by
# position (Σ), digits outside 0-9 (٣), a ligature, a combining accent, an emoji.
ALPHABET = (list("aAbB1 2.,-'\"&;<>()$%/\n\r\t\x0b\x0c\x1c\x85\xa0\u2028\u3000éÉüİẞΣσςß😀日本٣ǅﬁ\u0301_`~^|{}[]@#*+=?!")
            + ["&amp;", "&lt;", "&gt;", "&quot;", "&am", "<skipped>", "-\n", "the ", "cat ", "THE ", "sat "])


def random_text(rng, max_len=30):
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len)))


def assert_bleu_equal(ours, theirs):
    assert math.isfinite(ours.score) and abs(ours.score - theirs.score) <= TOL, (ours, theirs.format())
    assert list(ours.counts) == list(theirs.counts) and list(ours.totals) == list(theirs.totals)
    assert all(abs(p - q) <= TOL for p, q in zip(ours.precisions, theirs.precisions))
    assert abs(ours.bp - theirs.bp) <= TOL and abs(ours.ratio - theirs.ratio) <= TOL
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    assert str(ours) == theirs.format()


@pytest.mark.parametrize("seed", range(3))
def test_bleu_on_raw_characters_matches_sacrebleu(seed):
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = random.Random(seed)
    for _ in range(150):
        hyps = [random_text(rng) for _ in range(rng.randint(1, 4))]
        refs = [[random_text(rng) for _ in hyps] for _ in range(rng.randint(1, 3))]
        for opts in ({}, {"lowercase": True}, {"tokenize": "none"}, {"smooth_method": "none"}):
            assert_bleu_equal(corpus_bleu(hyps, refs, **opts), sacrebleu.corpus_bleu(hyps, refs, **opts))
        seg_refs = [r[0] for r in refs]
        assert_bleu_equal(sentence_bleu(hyps[0], seg_refs), sacrebleu.sentence_bleu(hyps[0], seg_refs))


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_on_raw_characters_matches_rouge_score(use_stemmer):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    rng = random.Random(10 + use_stemmer)
    for _ in range(200):
        prediction, reference = random_text(rng, 60), random_text(rng, 60)
        theirs = scorer.score(reference, prediction)  # target first
        ours = sentence_rouge(prediction, reference, types, use_stemmer)
        for t in types:
            assert all(abs(a - b) <= TOL for a, b in zip(ours[t], theirs[t])), (t, prediction, reference)


def test_porter_stem_of_capitalised_irregular_forms_matches_nltk():
    porter = pytest.importorskip("nltk.stem.porter").PorterStemmer()
    for word in ["Skies", "SKIES", "Dying", "News", "Innings", "İstanbul", "Ab", "AB", "Hopping", "Sky"]:
        assert porter_stem(word) == porter.stem(word), word


# ------------------------------------------------------------------------------------------
# the discrepancies
# ------------------------------------------------------------------------------------------
def test_bleu_of_an_empty_corpus_is_an_error_not_a_zero():
    sacrebleu = pytest.importorskip("sacrebleu")
    with pytest.raises(Exception):  # sacrebleu: IndexError deep inside
        sacrebleu.corpus_bleu([], [[]])
    with pytest.raises(ValueError, match="no hypotheses to score"):
        corpus_bleu([], [[]])
    # the ROUGE side already refused an empty list; both say so now
    with pytest.raises(ValueError, match="no predictions to score"):
        rouge([], [])


def test_sentence_bleu_without_references_says_so_in_its_own_terms():
    # sacrebleu fails with an IndexError; tinyllm's message named corpus_bleu's reference streams
    for refs in ([], [None]):
        with pytest.raises(ValueError, match=r"sentence_bleu: no reference to score against"):
            sentence_bleu("a b", refs)


def test_perplexity_takes_the_loss_tensor_a_model_returns():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    loss = F.cross_entropy(Tensor(logits), targets)
    assert perplexity(loss) == math.exp(loss.item())
    with pytest.raises((ValueError, TypeError)):  # a loss per position is not a mean: say so
        perplexity(Tensor(logits[0, 0]))


def test_perplexity_ignores_minus_100_targets_as_pytorch_does():
    """exp(mean NLL over the targets that are not -100), the mean PyTorch's cross_entropy (and
    Hugging Face's evaluation of a padded batch) takes; a row of padding changes nothing."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 6, 11)).astype(np.float32)
    targets = rng.integers(0, 11, size=(3, 6))
    targets[0, :4] = -100
    targets[2, :] = -100
    ours = perplexity(F.cross_entropy(Tensor(logits), targets).item())
    theirs = torch.exp(torch.nn.functional.cross_entropy(torch.tensor(logits).reshape(-1, 11),
                                                         torch.tensor(targets).reshape(-1))).item()
    assert math.isfinite(ours) and abs(ours - theirs) <= 1e-5 * theirs
    kept = targets.reshape(-1) != -100
    by_hand = F.cross_entropy(Tensor(logits.reshape(-1, 11)[kept]), targets.reshape(-1)[kept])
    assert perplexity(by_hand.item()) == pytest.approx(ours, rel=1e-6)


def test_evaluations_report_an_infinite_perplexity_instead_of_crashing():
    """A model whose mean loss is past log(max float64) ~ 709.8 nats (a diverging run) has perplexity
    inf, as torch.exp(loss) and metrics.perplexity give; math.exp raised OverflowError in the
    evaluation, before the training loop could report the divergence."""
    from tinyllm import GPT, GPTConfig
    from tinyllm.code_eval import token_metrics
    from tinyllm.datasets.pairs import pair_evaluator
    from tinyllm.training import evaluate_split

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8), seed=0)
    model.transformer.wte.weight.data *= 30000  # (tied to lm_head) logits of order 1e9
    data = np.random.default_rng(0).integers(0, 11, size=60)
    loss, ppl = evaluate_split(model, data)
    assert 709.8 < loss < math.inf and ppl == math.inf
    metrics = token_metrics(model, data)
    assert math.isfinite(metrics["loss"]) and metrics["perplexity"] == math.inf

    class Pairs:  # what pair_evaluator reads of a PairDataset
        src_ids = [[1], [2]]

        def __len__(self):
            return 2

        def batch(self, rows):
            return None, None, None

    class Huge:  # what it reads of an encoder-decoder
        def evaluate(self, src, tgt_in, tgt_out, batch_size):
            return {"loss": 1000.0, "n_tokens": 3}

    assert pair_evaluator()(Huge(), Pairs()) == {"loss": 1000.0, "perplexity": math.inf, "n_tokens": 3}
