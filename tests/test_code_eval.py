"""Line-completion scoring, positions, prompts, the n-gram baseline, greedy and beam completion."""
import difflib
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyllm.code_data import CODE_SPLIT_PATTERN
from tinyllm.code_eval import (CompletionPosition, LineEnds, NGramLM, beam_complete_lines, beam_lines_model,
                               complete_lines, edit_similarity, exact_match, line_kinds, line_prompts, line_text,
                               model_line_predictions, repeat_previous_line, sample_positions, score_lines,
                               stream_ids, token_metrics)
from tinyllm.models import GPT, GPTConfig
from tinyllm.tokenizers import BPETokenizer, GPT2_SPLIT_PATTERN

SOURCE = '''import os


class Point:
    """A point."""

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm(self):
        return (self.x ** 2 + self.y ** 2) ** 0.5
'''


# ---- scores -----------------------------------------------------------------------------------
def test_exact_match_ignores_whitespace_runs_only():
    assert exact_match("  return x  +  1", "return x + 1")
    assert not exact_match("return x+1", "return x + 1")
    assert exact_match("", "   ")


def test_edit_similarity_fixed_values():
    assert edit_similarity("abc", "abc") == 100
    assert edit_similarity("", "") == 100  # equal first, as fuzzywuzzy checks
    assert edit_similarity("", "abc") == 0 and edit_similarity("abc", "") == 0
    assert edit_similarity("abcd", "abce") == 75  # 2 * 3 / 8
    # round half to even, as Python's round (fuzzywuzzy's intr): 2 * 1 / 8 = 0.25 -> 25; 1/80 -> 1.25 -> 1
    assert edit_similarity("a" + "x" * 39, "a" + "y" * 39) == round(100 * 2 / 80)


@given(st.text(alphabet="ab c()", max_size=30), st.text(alphabet="ab c()", max_size=30))
def test_edit_similarity_is_rounded_difflib_ratio(a, b):
    expected = 100 if a == b else 0 if not (a and b) else int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))
    assert edit_similarity(a, b) == expected


@given(st.text(alphabet="abc x=()_.", max_size=40), st.text(alphabet="abc x=()_.", max_size=40))
def test_edit_similarity_equals_fuzzywuzzy(a, b):
    fuzz = pytest.importorskip("fuzzywuzzy.fuzz")
    if fuzz.SequenceMatcher is not difflib.SequenceMatcher:
        pytest.skip("python-Levenshtein is installed: fuzzywuzzy then uses Levenshtein's ratio")
    assert edit_similarity(a, b) == fuzz.ratio(a, b)


def test_edit_similarity_equals_fuzzywuzzy_on_long_lines():
    """Lines over 200 characters switch on difflib's autojunk: both sides keep it on."""
    fuzz = pytest.importorskip("fuzzywuzzy.fuzz")
    if fuzz.SequenceMatcher is not difflib.SequenceMatcher:
        pytest.skip("python-Levenshtein is installed")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = "".join(rng.choice(list("ab ()=x_"), size=rng.integers(150, 400)))
        b = a[: len(a) // 2] + "".join(rng.choice(list("ab ()=x_"), size=rng.integers(50, 300)))
        assert edit_similarity(a, b) == fuzz.ratio(a, b)


def test_score_lines_means_and_errors():
    s = score_lines(["  return x", "foo", ""], ["return x", "bar", "baz"])
    assert s["n"] == 3
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["edit_similarity"] == pytest.approx((100 + 0 + 0) / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 lines"):
        score_lines(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no lines"):
        score_lines([], [])


# ---- positions --------------------------------------------------------------------------------
def test_sample_positions_are_seeded_non_blank_line_starts():
    files = [("a.py", SOURCE), ("b.py", "x = 1\n\n\ny = 2")]
    pos = sample_positions(files, 100, np.random.default_rng(0))
    assert len(pos) == sum(1 for _, t in files for line in t.split("\n") if line.strip())
    assert pos == sample_positions(files, 100, np.random.default_rng(0))
    assert pos == sorted(pos, key=lambda p: (p.path, p.line))
    by = {(p.path, p.line): p for p in pos}
    assert by[("b.py", 3)] == CompletionPosition("b.py", 3, "y = 2", "x = 1")
    assert by[("a.py", 0)].previous == "" and by[("a.py", 0)].truth == "import os"
    assert by[("a.py", 7)] == CompletionPosition("a.py", 7, "        self.x = x", "    def __init__(self, x, y):")
    few = sample_positions(files, 3, np.random.default_rng(1))
    assert len(few) == 3 and set(few) <= set(pos)
    assert repeat_previous_line(by[("b.py", 3)]) == "x = 1"


def test_sample_positions_bad_input():
    with pytest.raises(ValueError, match="no non-blank line"):
        sample_positions([("a.py", "\n\n  \n")], 5, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        sample_positions([("a.py", "x\n")], 5, 0)


# ---- prompts ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(SOURCE * 3, 300, pattern=CODE_SPLIT_PATTERN, special_tokens=["<|endoftext|>"])


def test_line_prompts_are_the_ids_of_the_text_before_the_line(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    files = [("a.py", SOURCE)]
    pos = sample_positions(files, 100, np.random.default_rng(0))
    prompts = line_prompts(pos, files, tok, eot, max_len=10_000)
    lines = SOURCE.split("\n")
    for p, ids in zip(pos, prompts):
        assert ids[0] == eot
        assert tok.decode(ids[1:]) == "".join(line + "\n" for line in lines[:p.line])
        assert ids[1:] == tok.encode("".join(line + "\n" for line in lines[:p.line]))
    short = line_prompts(pos, files, tok, eot, max_len=5)
    assert all(s == full[-5:] for s, full in zip(short, prompts))


def test_line_prompts_with_a_gpt2_pattern_tokenizer_encode_the_prefix_whole():
    """GPT-2's pattern glues "\\n" to the next indentation, so lines do not add up: the prompt is
    then the encoding of the prefix text itself."""
    tok = BPETokenizer.train(SOURCE * 3, 300, pattern=GPT2_SPLIT_PATTERN, special_tokens=["<|endoftext|>"])
    eot = tok.special_tokens["<|endoftext|>"]
    files = [("a.py", SOURCE)]
    pos = sample_positions(files, 100, np.random.default_rng(0))
    lines = SOURCE.split("\n")
    for p, ids in zip(pos, line_prompts(pos, files, tok, eot, 10_000)):
        assert ids == [eot] + tok.encode("".join(line + "\n" for line in lines[:p.line]))


def test_stream_ids_separates_files(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    ids = stream_ids(["a = 1\n", "b\n"], tok, eot)
    assert ids.dtype == np.int64 and ids[0] == eot
    assert tok.decode(ids) == "<|endoftext|>a = 1\n<|endoftext|>b\n"


def test_line_ends_of_a_tokenizer(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    ends = LineEnds.for_tokenizer(tok, tok.vocab_size, [eot])
    nl, x, indent = tok.encode("\n")[0], tok.encode("x")[0], tok.encode("    ")[0]
    assert ends.newline[nl] and not ends.content[nl] and not ends.end[nl]
    assert ends.content[x] and not ends.newline[x] and not ends.content[indent]
    assert ends.end[eot] and not ends.content[eot] and ends.end.sum() == 1
    assert ends.newline.sum() == sum("\n" in tok.decode([i]) for i in range(tok.vocab_size))
    # a newline ends a line that has content; before any content it is a skipped blank line
    done = ends.done(np.array([nl, nl, x, eot]), np.array([True, False, False, False]))
    assert done.tolist() == [True, False, False, True]
    assert ends.done(np.array([nl]), np.array([False]), skip_blank_lines=False).tolist() == [True]


def test_line_text():
    class Tok:
        def decode(self, ids):
            return "".join(ids)

    assert line_text(Tok(), ["\n", "  \n", "    x = 1", "\n", "y"]) == "    x = 1"
    assert line_text(Tok(), ["\n", "  \n", "    x = 1"], skip_blank_lines=False) == ""
    assert line_text(Tok(), ["a\r", "\n"]) == "a"
    assert line_text(Tok(), ["\n", "\n"]) == "" and line_text(Tok(), []) == ""


LINE_KIND_SOURCE = '''"""Module doc
second line."""
import os  # comment
# a comment

def f(x):
    """Doc."""
    s = """multi
line"""
    'bare' 'concatenated'
    return x
'''


def test_line_kinds():
    assert line_kinds(LINE_KIND_SOURCE) == ["string", "string", "code", "comment", "code", "code", "string", "code",
                                            "string", "string", "code"]
    assert line_kinds("def f(:\n    'x'\n") == ["code", "code"]  # a tokenize error: all code
    assert line_kinds("x = 1\r# c\r") == ["code"]  # lone \r line ends: not split alike
    assert line_kinds("") == []


def test_sample_positions_by_kind():
    files = [("a.py", LINE_KIND_SOURCE)]
    code = sample_positions(files, 100, np.random.default_rng(0), kinds=("code",))
    assert [p.line for p in code] == [2, 5, 7, 10] and all(p.kind == "code" for p in code)
    every = sample_positions(files, 100, np.random.default_rng(0))
    assert [p.kind for p in every] == ["string", "string", "code", "comment", "code", "string", "code", "string",
                                       "string", "code"]
    with pytest.raises(ValueError, match="kinds must be among"):
        sample_positions(files, 5, np.random.default_rng(0), kinds=("prose",))
    with pytest.raises(ValueError, match="no non-blank line of kind"):
        sample_positions([("b.py", "# only\n")], 5, np.random.default_rng(0), kinds=("code",))


# ---- the n-gram baseline ----------------------------------------------------------------------
def ngram_ref(train, V, order, history, w):
    """Witten-Bell by the formula, with plain Python counting: the oracle."""
    train = list(train)
    p = (train.count(w) + 1) / (len(train) + V)
    for k in range(2, order + 1):
        if len(history) < k - 1:
            break
        h = tuple(history[len(history) - (k - 1):])
        follow = [train[i + k - 1] for i in range(len(train) - k + 1) if tuple(train[i:i + k - 1]) == h]
        if follow:
            types = len(set(follow))
            p = (follow.count(w) + types * p) / (len(follow) + types)
    return p


@pytest.mark.parametrize("order", [2, 3, 5])
def test_ngram_matches_the_formula(order):
    rng = np.random.default_rng(order)
    V = 7
    train = rng.integers(0, V, 300)
    train[100:140] = np.tile([1, 2, 3, 4], 10)  # some repeated contexts
    lm = NGramLM(train, V, order)
    test = np.concatenate([[1, 2, 3], rng.integers(0, V, 40)])
    logp = lm.log_probs(test)
    for t in range(1, len(test)):
        history = list(test[max(0, t - order + 1):t])
        expected = ngram_ref(train, V, order, history, test[t])
        assert math.exp(logp[t - 1]) == pytest.approx(expected, rel=1e-12)
        padded = [-1] * (order - 1 - len(history)) + history
        dist = lm.distributions(np.asarray([padded]))[0]
        assert np.isfinite(dist).all() and dist.sum() == pytest.approx(1.0, abs=1e-12)
        assert dist[test[t]] == pytest.approx(expected, rel=1e-12)


def test_ngram_token_metrics_and_greedy_completion():
    V = 6
    train = np.tile([0, 1, 2, 3, 5], 50)  # 5 ends a "line"
    lm = NGramLM(train, V, 3)
    m = lm.token_metrics(np.tile([0, 1, 2, 3, 5], 4))
    assert m["token_accuracy"] > 90 and m["perplexity"] < 1.5 and m["n_tokens"] == 19
    ends = LineEnds(newline=np.arange(V) == 5, content=np.arange(V) < 5, end=np.zeros(V, dtype=bool))
    assert lm.complete([[0, 1], [5]], ends, max_new_tokens=10) == [[2, 3, 5], [0, 1, 2, 3, 5]]
    assert lm.complete([[0, 1]], ends, max_new_tokens=2) == [[2, 3]]
    # after "3" comes the newline 5: a blank line is skipped unless asked not to
    assert lm.complete([[2, 3]], ends, max_new_tokens=10) == [[5, 0, 1, 2, 3, 5]]
    assert lm.complete([[2, 3]], ends, max_new_tokens=10, skip_blank_lines=False) == [[5]]


def test_ngram_bad_input():
    with pytest.raises(ValueError, match="order must be an integer >= 2"):
        NGramLM([1, 2, 3], 4, 1)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        NGramLM([1, 2, 9], 4, 2)
    with pytest.raises(ValueError, match="at least order=3"):
        NGramLM([1, 2], 4, 3)


def test_ngram_long_orders_keep_exact_counts():
    """Orders where V ** order overflows int64 still work (the trie keys stay small)."""
    V = 5000
    rng = np.random.default_rng(0)
    train = rng.integers(0, V, 2000)
    lm = NGramLM(train, V, 8)
    t = 500
    history = train[t - 7:t]
    dist = lm.distributions(history[None, :])[0]
    assert dist.argmax() == train[t]
    assert math.exp(lm.log_probs(train[t - 7:t + 1])[-1]) == pytest.approx(dist[train[t]], rel=1e-12)


# ---- greedy completion with a model -----------------------------------------------------------
def tiny_model(V, block=16, seed=0):
    return GPT(GPTConfig(vocab_size=V, block_size=block, n_layer=1, n_head=2, n_embd=16), seed=seed)


def greedy_ref(model, prompt, ends, max_new, skip_blank_lines):
    """One prompt, no cache, the whole window recomputed each step: the oracle."""
    ids, out, has_content = list(prompt), [], False
    for _ in range(max_new):
        logits, _ = model(np.asarray([ids[-model.config.block_size:]]))
        nxt = int(logits.data[0, -1].argmax())
        out.append(nxt)
        ids.append(nxt)
        if ends.end[nxt] or (ends.newline[nxt] and (has_content or ends.content[nxt] or not skip_blank_lines)):
            break
        has_content |= bool(ends.content[nxt])
    return out


@pytest.mark.parametrize("skip_blank_lines", [True, False])
@pytest.mark.parametrize("block", [8, 32])  # 8: windows slide past block_size; 32: all in the KV cache
def test_complete_lines_equals_one_at_a_time_greedy_decoding(block, skip_blank_lines):
    V = 11
    model = tiny_model(V, block=block, seed=2)  # a seed whose rows end at different steps
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, V, n)) for n in (1, 3, 3, 3, 3, 3, 6, 8, 8)]
    ids = np.arange(V)
    ends = LineEnds(newline=np.isin(ids, [2, 7]), content=~np.isin(ids, [2, 7, 4, 9]), end=ids == 9)
    got = complete_lines(model, prompts, ends, max_new_tokens=12, batch_size=4, skip_blank_lines=skip_blank_lines)
    assert got == [greedy_ref(model, p, ends, 12, skip_blank_lines) for p in prompts]
    assert all(len(g) <= 12 for g in got)
    lengths = [len(g) for g in got[1:6]]  # one batch: rows leave it at different steps
    assert len(set(lengths)) > 1, lengths
    skipped_blank = [g for g in got if len(g) > 1 and ends.newline[g[0]]]
    assert len(skipped_blank) == (1 if skip_blank_lines else 0)
    assert model.training  # restored


def test_model_line_predictions_and_token_metrics(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    model = tiny_model(tok.vocab_size, block=32)
    ends = LineEnds.for_tokenizer(tok, tok.vocab_size, [eot])
    lines = model_line_predictions(model, tok, [[eot], tok.encode("import os\n")], ends, max_new_tokens=5)
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    ids = stream_ids([SOURCE, SOURCE], tok, eot)
    m = token_metrics(model, ids, batch_size=3)
    assert m["n_tokens"] == len(ids) - 1 and 0 <= m["token_accuracy"] <= 100
    assert math.isfinite(m["perplexity"]) and m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    # an untrained model is near uniform
    assert 0.3 * tok.vocab_size < m["perplexity"] < 3 * tok.vocab_size


def test_a_file_mentioning_the_end_of_text_token_does_not_end_there(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    text = 'EOT = "<|endoftext|>"\n'
    ids = stream_ids([text], tok, eot)
    assert list(ids).count(eot) == 1 and tok.decode(ids[1:]) == text
    pos = sample_positions([("a.py", text + "x = 1\n")], 5, np.random.default_rng(0))
    prompt = line_prompts(pos, [("a.py", text + "x = 1\n")], tok, eot, 100)[1]
    assert prompt.count(eot) == 1 and tok.decode(prompt[1:]) == text


def test_line_prompts_bad_max_len(tok):
    with pytest.raises(ValueError, match="max_len must be a positive integer, got 0"):
        line_prompts([], [], tok, 0, 0)


# ---- beam search per line (CodeXGLUE's decoder) --------------------------------------------
def line_done(ends, token, has_content, skip_blank_lines=True):
    return bool(ends.end[token] or (ends.newline[token] and (has_content or ends.content[token]
                                                             or not skip_blank_lines)))


def beam_ref(logp_of, ends, k, max_new, skip_blank_lines=True):
    """The textbook beam, one prompt, plain lists: ``logp_of(ids)`` gives the next token's
    log-probabilities after the generated ``ids``. Keep the k best extensions (each live line's k
    best tokens), move the finished ones out, stop once the best finished line is at least as
    likely as every live one."""
    beams, best = [(0.0, [], False)], None
    for _ in range(max_new):
        cands = []
        for score, ids, has_content in beams:
            lp = logp_of(ids)
            cands += [(score + lp[t], ids + [int(t)], has_content) for t in np.argsort(-lp, kind="stable")[:k]]
        cands = sorted(cands, key=lambda c: -c[0])[:k]  # a stable sort, as the library's
        beams = []
        for score, ids, has_content in cands:
            if line_done(ends, ids[-1], has_content, skip_blank_lines):
                best = (score, ids) if best is None or score > best[0] else best
            else:
                beams.append((score, ids, has_content or bool(ends.content[ids[-1]])))
        if not beams or (best is not None and best[0] >= max(b[0] for b in beams)):
            return best[1]
    return best[1] if best is not None else max(beams, key=lambda b: b[0])[1]


class MarkovScorer:
    """Log-probabilities that depend on the last token only (a fixed random table): a scorer
    small enough to enumerate every line."""

    def __init__(self, table, prompts):
        self.table, self.last = table, np.array([p[-1] for p in prompts])

    def start(self):
        return self.table[self.last]

    def advance(self, parents, tokens):
        self.last = np.asarray(tokens)
        return self.table[self.last]


def markov_table(V, seed):
    logits = np.random.default_rng(seed).normal(0, 2.0, (V, V))
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def markov_ends(V):
    ids = np.arange(V)
    return LineEnds(newline=ids == 1, content=ids >= 2, end=ids == 0)


@pytest.mark.parametrize("seed", range(6))
def test_a_beam_wide_enough_to_keep_every_line_finds_the_most_probable_one(seed):
    V, max_new = 4, 4
    table, ends = markov_table(V, seed), markov_ends(V)
    prompts = [[2], [3], [1]]
    got = beam_complete_lines(MarkovScorer(table, prompts), len(prompts), ends, num_beams=V ** max_new,
                              max_new_tokens=max_new)
    for prompt, line in zip(prompts, got):
        best, best_ids = -np.inf, None  # every sequence of up to max_new tokens that ends its line
        for n in range(1, max_new + 1):
            for ids in np.ndindex(*(V,) * n):
                has_content, ok = False, True
                for j, t in enumerate(ids):
                    if line_done(ends, t, has_content) != (j == n - 1):
                        ok = False
                        break
                    has_content |= bool(ends.content[t])
                if ok:
                    lp = sum(table[([prompt[-1]] + list(ids))[j], t] for j, t in enumerate(ids))
                    if lp > best:
                        best, best_ids = lp, list(ids)
        assert best_ids is not None and line == best_ids


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_beam_lines_equal_the_textbook_beam(k, seed):
    V = 7
    table, ends = markov_table(V, seed), markov_ends(V)
    prompts = [[t] for t in range(V)]
    got = beam_complete_lines(MarkovScorer(table, prompts), V, ends, num_beams=k, max_new_tokens=6)
    want = [beam_ref(lambda ids, p=p: table[(p + ids)[-1]], ends, k, 6) for p in prompts]
    assert got == want
    # one step: only the end token (0) finishes a line; the others return the best live one
    short = beam_complete_lines(MarkovScorer(table, prompts), V, ends, num_beams=k, max_new_tokens=1)
    assert short == [beam_ref(lambda ids, p=p: table[(p + ids)[-1]], ends, k, 1) for p in prompts]
    assert any(g != [0] for g in short)


@pytest.mark.parametrize("block", [8, 32])  # 8: windows slide past block_size; 32: all in the KV cache
def test_model_beam_lines_equal_the_textbook_beam_and_greedy_at_one_beam(block):
    from tinyllm.beam_search import log_softmax
    V = 11
    model = tiny_model(V, block=block, seed=2)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, V, n)) for n in (1, 3, 3, 3, 6, 8)]
    ids = np.arange(V)
    ends = LineEnds(newline=np.isin(ids, [2, 7]), content=~np.isin(ids, [2, 7, 4, 9]), end=ids == 9)

    def logp_of(prompt):
        def f(gen):
            window = (prompt + gen)[-block:]
            return log_softmax(model(np.asarray([window]))[0].data[:, -1, :])[0]
        return f

    got = beam_lines_model(model, prompts, ends, num_beams=3, max_new_tokens=10, batch_size=2)
    assert got == [beam_ref(logp_of(p), ends, 3, 10) for p in prompts]
    assert beam_lines_model(model, prompts, ends, num_beams=1, max_new_tokens=10, batch_size=2) == \
        complete_lines(model, prompts, ends, max_new_tokens=10, batch_size=4)
    assert model.training  # restored


def test_ngram_beam_lines():
    V = 6
    # after 0 the likelier token is 1 (a line 0 1 1 1 ... that rarely ends), but 0 2 5 ends at once
    train = np.array([0, 1, 1, 1, 1, 3, 5] * 2 + [0, 2, 5] * 3 + [0, 1, 4, 4, 4, 5] * 2 + [5])
    lm = NGramLM(train, V, 2)
    ends = LineEnds(newline=np.arange(V) == 5, content=np.arange(V) < 5, end=np.zeros(V, dtype=bool))
    tok = type("Tok", (), {"decode": lambda self, ids: "".join("abcde\n"[i] for i in ids)})()
    greedy = lm.line_predictions(tok, [[5, 0]], ends, max_new_tokens=8)
    beam = lm.line_predictions(tok, [[5, 0]], ends, max_new_tokens=8, num_beams=3)
    assert greedy != beam
    assert beam == [line_text(tok, beam_ref(lambda ids: np.log(lm.distributions([[([5, 0] + ids)[-1]]])[0]),
                                            ends, 3, 8))]
    assert lm.line_predictions(tok, [[5, 0], [2]], ends, 8, num_beams=1) == \
        [line_text(tok, g) for g in lm.complete([[5, 0], [2]], ends, 8)]


def test_beam_bad_num_beams():
    with pytest.raises(ValueError, match="num_beams must be >= 1, got 0"):
        beam_complete_lines(MarkovScorer(markov_table(3, 0), [[1]]), 1, markov_ends(3), num_beams=0)
