"""Line-level code completion, scored as CodeXGLUE's code-completion (line) task does.

For sampled lines of held-out files, a model gets the text before the line and greedily
completes it until a newline; the prediction is compared with the true line:

* **exact match**: ``prediction.split() == truth.split()`` (the lines' whitespace-split tokens
  are equal, so indentation and spacing runs do not count);
* **edit similarity**: fuzzywuzzy's ``fuzz.ratio`` of the two stripped lines, that is
  ``round(100 * difflib.SequenceMatcher(None, a, b).ratio())`` per pair (100 if the strings are
  equal, 0 if exactly one is empty), averaged over the positions (:func:`edit_similarity`).

Beside the model, two baselines answer on the same positions: :func:`repeat_previous_line`
and a count-based n-gram model of the same tokens (:class:`NGramLM`, Witten-Bell interpolated,
greedy until a newline). :func:`token_metrics` and :meth:`NGramLM.token_metrics` give the
teacher-forced token accuracy and perplexity of both on the same held-out token stream.

Nothing here imports a model class: a "model" is anything with ``config.block_size``,
``new_kv_cache(B)`` and ``forward(idx, targets=None, kv_cache=None, last_only=False)``, as
:class:`tinyllm.models.GPT`.
"""
import difflib
import io
import tokenize
from dataclasses import asdict, dataclass

import numpy as np

from .code_data import split_lines
from .data import iter_eval_windows
from .beam_search import log_softmax
from .metrics import perplexity
from .tensor import no_grad

__all__ = [
    "CompletionPosition",
    "DEFAULT_PROMPT_RESERVE",
    "NGramLM",
    "beam_complete_lines",
    "beam_lines_model",
    "complete_code",
    "complete_lines",
    "edit_similarity",
    "encode_text",
    "exact_match",
    "LINE_KINDS",
    "LineEnds",
    "line_kinds",
    "line_prompts",
    "line_text",
    "model_line_predictions",
    "repeat_previous_line",
    "sample_positions",
    "score_lines",
    "stream_ids",
    "token_metrics",
]


# ------------------------------------------------------------------------------------------
# The two scores
# ------------------------------------------------------------------------------------------
def exact_match(prediction, truth):
    """CodeXGLUE's exact match: equal whitespace-split tokens."""
    return prediction.split() == truth.split()


def edit_similarity(prediction, truth):
    """fuzzywuzzy's ``fuzz.ratio(prediction, truth)`` (0..100, an int), as CodeXGLUE scores.

    ``difflib.SequenceMatcher(None, a, b).ratio()`` is 2 M / (len(a) + len(b)) with M the
    characters in the matching blocks difflib finds (its "autojunk" heuristic on, as in
    fuzzywuzzy); times 100, rounded per pair with Python's ``round`` (half to even) as
    ``fuzzywuzzy.utils.intr`` does. fuzzywuzzy returns 100 for equal strings and 0 when exactly
    one is empty, checked first, in that order. (With python-Levenshtein installed, fuzzywuzzy
    swaps in a Levenshtein-based ratio that can differ by a few points; this is the pure-Python
    definition, which needs no extra package.)
    """
    if prediction == truth:
        return 100
    if not prediction or not truth:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, prediction, truth).ratio()))


def score_lines(predictions, truths):
    """``{"exact_match": % of positions, "edit_similarity": mean fuzz.ratio, "n": count}``;
    both compared after stripping the lines, as CodeXGLUE's evaluator does."""
    if len(predictions) != len(truths):
        raise ValueError(f"score_lines: {len(predictions)} predictions for {len(truths)} lines")
    if not truths:
        raise ValueError("score_lines: no lines to score")
    em = [exact_match(p, t) for p, t in zip(predictions, truths)]
    es = [edit_similarity(p.strip(), t.strip()) for p, t in zip(predictions, truths)]
    return {"exact_match": 100.0 * float(np.mean(em)), "edit_similarity": float(np.mean(es)), "n": len(truths)}


# ------------------------------------------------------------------------------------------
# Positions
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompletionPosition:
    """The start of line ``line`` (0-based) of file ``path``; ``truth`` is that line without
    its newline, ``previous`` the last non-blank line before it ("" if none), ``kind`` what the
    line holds (see :func:`line_kinds`)."""

    path: str
    line: int
    truth: str
    previous: str
    kind: str = "code"

    def to_dict(self):
        return asdict(self)


LINE_KINDS = ("code", "comment", "string")


def line_kinds(text):
    """The kind of each line of Python source ``text`` (one per :func:`split_lines` line):
    "comment" (only a comment), "string" (inside a multi-line string, or a statement that is
    only a string: docstrings), "code" (the rest, blank lines included). CodeXGLUE's Python
    line completion has no comments and replaces string literals by a placeholder, so its lines
    are of the "code" kind. Text that Python's tokenizer cannot read (another language, a
    syntax error, a lone "\\r" line end) is all "code"."""
    lines = split_lines(text)
    kinds = ["code"] * len(lines)
    if "\r" in text.replace("\r\n", ""):
        return kinds  # tokenize would count lines differently from split_lines
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return kinds
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    first_on_row, statement = {}, []
    for tok in tokens:
        if tok.type in skip:
            if tok.type == tokenize.NEWLINE:
                if statement and all(t.type == tokenize.STRING for t in statement):
                    _mark(kinds, statement[0].start[0], statement[-1].end[0], "string")
                statement = []
            continue
        first_on_row.setdefault(tok.start[0], tok)
        if tok.type != tokenize.COMMENT:
            statement.append(tok)
        if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            _mark(kinds, tok.start[0] + 1, tok.end[0], "string")  # continuation lines
    for row, tok in first_on_row.items():
        if tok.type == tokenize.COMMENT and row <= len(kinds) and kinds[row - 1] == "code":
            kinds[row - 1] = "comment"
    return kinds


def _mark(kinds, first_row, last_row, kind):
    for row in range(first_row, min(last_row, len(kinds)) + 1):  # tokenize rows are 1-based
        kinds[row - 1] = kind


def sample_positions(files, n, rng, kinds=None):
    """``n`` line starts drawn uniformly without replacement from the non-blank lines of
    ``files`` (a list of ``(path, text)``), in (file, line) order; fewer when there are fewer.
    ``kinds``: keep only lines of these kinds (:func:`line_kinds`), e.g. ``("code",)``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"sample_positions: rng must be a np.random.Generator, got {type(rng).__name__}")
    if kinds is not None and not set(kinds) <= set(LINE_KINDS):
        raise ValueError(f"sample_positions: kinds must be among {LINE_KINDS}, got {kinds}")
    candidates = []  # (file index, line index, kind)
    for f, (_, text) in enumerate(files):
        candidates += [(f, i, k) for i, (line, k) in enumerate(zip(split_lines(text), line_kinds(text)))
                       if line.strip() and (kinds is None or k in kinds)]
    if not candidates:
        raise ValueError(f"sample_positions: the files hold no non-blank line{'' if kinds is None else f' of kind {kinds}'}")
    picks = np.sort(rng.choice(len(candidates), size=min(n, len(candidates)), replace=False))
    positions = []
    lines_of = {}
    for k in picks:
        f, i, kind = candidates[k]
        path, text = files[f]
        lines = lines_of.setdefault(f, split_lines(text))
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        positions.append(CompletionPosition(path, i, _strip_newline(lines[i]), _strip_newline(previous), kind))
    return positions


def _strip_newline(line):
    return line[:-1].rstrip("\r") if line.endswith("\n") else line.rstrip("\r")


def repeat_previous_line(position):
    """Baseline: the line is predicted to be the previous non-blank line again."""
    return position.previous


# ------------------------------------------------------------------------------------------
# Token streams and prompts
# ------------------------------------------------------------------------------------------
def encode_text(tokenizer, text):
    """``tokenizer.encode(text)`` with special tokens read as plain text (a source file that
    mentions "<|endoftext|>" must not end there), when the tokenizer has special tokens."""
    try:
        return tokenizer.encode(text, allowed_special="none")
    except TypeError:  # a tokenizer without special tokens (CharTokenizer)
        return tokenizer.encode(text)


def stream_ids(texts, tokenizer, sep_id):
    """The texts as one id stream, each preceded by ``sep_id`` (the end-of-text token): the
    layout the model trains on, so a file's first line is predicted right after a separator."""
    out = []
    for text in texts:
        out.append(sep_id)
        out.extend(encode_text(tokenizer, text))
    return np.asarray(out, dtype=np.int64)


def line_prompts(positions, files, tokenizer, sep_id, max_len):
    """For each position, ``[sep_id] + ids of the file's text before the line``, the last
    ``max_len`` ids. Lines are encoded one by one and joined when that equals encoding the
    whole file (true for :data:`~tinyllm.code_data.CODE_SPLIT_PATTERN`, whose chunks never
    cross a newline); otherwise each prompt's text is encoded as a whole."""
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"line_prompts: max_len must be a positive integer, got {max_len!r}")
    text_of = dict(files)
    prefix_ids = {}  # path -> list of per-line id lists, or None when lines do not add up
    prompts = []
    for pos in positions:
        if pos.path not in prefix_ids:
            text = text_of[pos.path]
            per_line = [encode_text(tokenizer, line) for line in split_lines(text)]
            joined = [i for ids in per_line for i in ids]
            prefix_ids[pos.path] = per_line if joined == list(encode_text(tokenizer, text)) else None
        per_line = prefix_ids[pos.path]
        if per_line is not None:
            ids = [i for ids in per_line[:pos.line] for i in ids]
        else:
            ids = list(encode_text(tokenizer, "".join(split_lines(text_of[pos.path])[:pos.line])))
        prompts.append(([sep_id] + ids)[-max_len:])
    return prompts


@dataclass(frozen=True)
class LineEnds:
    """Which generated tokens end a line, as bool arrays over the vocabulary (V,):
    ``newline`` (the token's text holds "\\n"), ``content`` (it holds a non-space character) and
    ``end`` (it ends the text: the end-of-text token).

    A row is done at an ``end`` token, or at a ``newline`` token once its line has content. With
    ``skip_blank_lines`` (the evaluation's rule) a newline before any content does not end the
    row: a blank line is not a prediction of a line, and CodeXGLUE's token streams have none, so
    the model's (or n-gram's) line is the first non-blank one it writes.
    """

    newline: np.ndarray
    content: np.ndarray
    end: np.ndarray

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size, end_ids=()):
        newline = np.zeros(vocab_size, dtype=bool)
        content = np.zeros(vocab_size, dtype=bool)
        for i in range(vocab_size):
            try:
                text = tokenizer.decode([i])
            except ValueError:  # an id the tokenizer does not have (a padded vocabulary)
                continue
            newline[i], content[i] = "\n" in text, bool(text.strip())
        end = np.zeros(vocab_size, dtype=bool)
        end[list(end_ids)] = True
        return cls(newline, content & ~end, end)

    def done(self, tokens, has_content, skip_blank_lines=True):
        """Rows (given their new ``tokens`` and whether their line had content before) that are
        finished now."""
        ready = has_content | self.content[tokens] if skip_blank_lines else True
        return self.end[tokens] | (self.newline[tokens] & ready)


def line_text(tokenizer, ids, skip_blank_lines=True):
    """The generated line: decode ``ids``, drop leading blank lines (with ``skip_blank_lines``),
    keep the text before the next newline."""
    lines = tokenizer.decode(ids).split("\n")
    if skip_blank_lines:
        while len(lines) > 1 and not lines[0].strip():
            lines.pop(0)
    return lines[0].rstrip("\r")


# ------------------------------------------------------------------------------------------
# Greedy completion with a model
# ------------------------------------------------------------------------------------------
@no_grad()
def complete_lines(model, prompts, line_ends, max_new_tokens=64, batch_size=32, skip_blank_lines=True):
    """Greedy continuation of each prompt (a list of ids) until its line ends (see
    :class:`LineEnds`; the ending token is kept) or ``max_new_tokens``; returns the generated
    ids per prompt.

    Prompts of equal length run together in batches with a KV cache; once a sequence would
    outgrow ``block_size`` the last ``block_size`` ids are recomputed each step, as
    ``generate`` does, so the result is what one-at-a-time greedy decoding gives.
    """
    def run(batch):  # prompts of one length (list of lists) -> generated ids per prompt
        ids = np.asarray(batch, dtype=np.int64)  # (b, length)
        return _greedy_batch(model, ids, line_ends, max_new_tokens, skip_blank_lines)

    return _in_length_batches(model, prompts, batch_size, run)


def _in_length_batches(model, prompts, batch_size, run):
    """``run(batch)`` over batches of at most ``batch_size`` prompts of equal length (so they
    share one KV cache), with the model in eval mode; the results back in the prompts' order."""
    was_training = model.training
    model.eval()
    out = [None] * len(prompts)
    try:
        by_len = {}
        for k, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(k)
        for length in sorted(by_len):
            rows = by_len[length]
            for s in range(0, len(rows), batch_size):
                chunk = rows[s:s + batch_size]
                for k, gen in zip(chunk, run([prompts[k] for k in chunk])):
                    out[k] = gen
    finally:
        model.train(was_training)
    return out


def _greedy_batch(model, idx, line_ends, max_new_tokens, skip_blank_lines):
    """Greedy decoding of the rows of ``idx`` (B, T); a row leaves the batch (and the KV cache)
    as soon as its line ends, so the cost follows the lines' real lengths."""
    if idx.shape[1] == 0:
        raise ValueError("complete_lines: a prompt is empty; start it with the end-of-text id")
    lm = _RowsModel(model, idx)
    generated = [[] for _ in range(idx.shape[0])]
    active = np.arange(idx.shape[0])  # batch row -> prompt
    has_content = np.zeros(idx.shape[0], dtype=bool)
    for _ in range(max_new_tokens):
        next_ids = lm.next_logits().argmax(axis=-1)  # (rows,)
        for row, token in zip(active, next_ids):
            generated[row].append(int(token))
        keep = np.flatnonzero(~line_ends.done(next_ids, has_content, skip_blank_lines))
        has_content |= line_ends.content[next_ids]
        if keep.size == 0:
            break
        active, has_content = active[keep], has_content[keep]
        lm.append(keep, next_ids[keep])
    return generated


class _RowsModel:
    """A model continuing rows of ids (prompts of one length), one token per row at a time: a KV
    cache whose rows follow :meth:`append`'s (rows may be dropped, or repeated as beams are);
    past ``block_size`` the last window is recomputed, as ``generate`` does, so each row gets
    what one-at-a-time decoding would give it."""

    def __init__(self, model, idx):
        self.model, self.block = model, model.config.block_size
        self.idx = np.asarray(idx, dtype=np.int64)[:, -self.block:]  # (rows, T)
        self.cache, self.fed = None, 0

    def next_logits(self):
        """The next token's logits (rows, V), feeding the model only what it has not seen."""
        if self.idx.shape[1] <= self.block:
            if self.cache is None:
                self.cache = self.model.new_kv_cache(self.idx.shape[0])
            logits, _ = self.model(self.idx[:, self.fed:], kv_cache=self.cache, last_only=True)
            self.fed = self.idx.shape[1]
        else:  # past block_size the positions shift every step: recompute the last window
            logits, _ = self.model(self.idx[:, -self.block:], last_only=True)
        return logits.data[:, -1, :]

    def append(self, rows, tokens):
        """Row i becomes row ``rows[i]`` (int array) followed by ``tokens[i]``."""
        same_rows = np.array_equal(rows, np.arange(len(self.idx)))
        self.idx = np.concatenate([self.idx[rows], tokens[:, None]], axis=1)
        if self.cache is not None and not same_rows:
            self.cache.k = np.ascontiguousarray(self.cache.k[:, rows])  # (n_layer, rows, n_head, max_len, hd)
            self.cache.v = np.ascontiguousarray(self.cache.v[:, rows])


def model_line_predictions(model, tokenizer, prompts, line_ends, max_new_tokens=64, batch_size=32, num_beams=1):
    """The predicted line (the first non-blank line generated) for each prompt: greedy, or the
    best line of a beam search with ``num_beams`` > 1 (:func:`beam_complete_lines`)."""
    if num_beams == 1:
        generated = complete_lines(model, prompts, line_ends, max_new_tokens, batch_size)
    else:
        generated = beam_lines_model(model, prompts, line_ends, num_beams, max_new_tokens,
                                     batch_size=max(1, batch_size // num_beams))
    return [line_text(tokenizer, g) for g in generated]


# ------------------------------------------------------------------------------------------
# Beam search per line, as CodeXGLUE's evaluation script decodes
# ------------------------------------------------------------------------------------------
def beam_complete_lines(scorer, n_prompts, line_ends, num_beams=5, max_new_tokens=64, skip_blank_lines=True):
    """The most probable line each prompt's beam search finds, as generated ids per prompt.

    CodeXGLUE's line-completion script decodes with a beam of 5: every step extends each live
    hypothesis of a prompt by its ``num_beams`` likeliest tokens and keeps the ``num_beams`` best
    of all of them by total log-probability (no length normalisation); a kept candidate whose
    token ends the line (:class:`LineEnds`) is finished and leaves the beam. Scores only fall as a
    hypothesis grows, so a prompt is done once its best finished line scores at least as high as
    every live one: that line is the answer (the best live one if none finished within
    ``max_new_tokens``). ``num_beams=1`` is greedy decoding.

    ``scorer`` gives log-probabilities (rows, V): ``scorer.start()`` one row per prompt, then
    ``scorer.advance(parents, tokens)`` for rows that extend row ``parents[i]`` of the previous
    call by ``tokens[i]`` (see :class:`_ModelScorer`, :class:`_NGramScorer`).
    """
    if num_beams < 1:
        raise ValueError(f"beam_complete_lines: num_beams must be >= 1, got {num_beams}")
    logp = scorer.start()                                   # (R, V), one row per prompt at first
    prompt = np.arange(n_prompts)                           # live row -> its prompt
    seqs = [[] for _ in range(n_prompts)]                   # live row -> its ids
    score = np.zeros(n_prompts)                             # live row -> sum of log-probs
    has_content = np.zeros(n_prompts, dtype=bool)           # live row -> its line has a character
    best = [None] * n_prompts                               # prompt -> (score, ids), best finished
    for _ in range(max_new_tokens):
        k = min(num_beams, logp.shape[1])
        top = np.argsort(-logp, axis=1, kind="stable")[:, :k]            # (R, k) each row's best
        cand = score[:, None] + np.take_along_axis(logp, top, axis=1)    # (R, k) their scores
        kept = []                                                        # (row, token, score)
        for p in np.unique(prompt):
            rows = np.flatnonzero(prompt == p)
            flat = np.argsort(-cand[rows].ravel(), kind="stable")[:num_beams]
            r, tok, s = rows[flat // k], top[rows].ravel()[flat], cand[rows].ravel()[flat]
            done = line_ends.done(tok, has_content[r], skip_blank_lines)
            for i in np.flatnonzero(done):
                if best[p] is None or s[i] > best[p][0]:
                    best[p] = (s[i], seqs[r[i]] + [int(tok[i])])
            if best[p] is not None and (done.all() or best[p][0] >= s[~done].max()):
                continue                                    # nothing live can beat it: p is done
            kept += [(r[i], tok[i], s[i]) for i in np.flatnonzero(~done)]
        if not kept:
            break
        parents = np.array([row for row, _, _ in kept], dtype=np.int64)
        tokens = np.array([t for _, t, _ in kept], dtype=np.int64)
        score = np.array([sc for _, _, sc in kept])
        seqs = [seqs[r] + [int(t)] for r, t in zip(parents, tokens)]
        has_content = has_content[parents] | line_ends.content[tokens]
        prompt = prompt[parents]
        logp = scorer.advance(parents, tokens)
    else:                                                   # out of steps: the best live row
        for r in np.argsort(-score, kind="stable"):
            if best[prompt[r]] is None:
                best[prompt[r]] = (score[r], seqs[r])
    return [b[1] for b in best]


class _ModelScorer:
    """Next-token log-probabilities of a model for beam search over prompts of one length."""

    def __init__(self, model, idx):
        self.lm = _RowsModel(model, idx)

    def start(self):
        return log_softmax(self.lm.next_logits())

    def advance(self, parents, tokens):
        self.lm.append(parents, tokens)
        return log_softmax(self.lm.next_logits())


class _NGramScorer:
    """Next-token log-probabilities of an :class:`NGramLM` for beam search."""

    def __init__(self, lm, prompts):
        self.lm, h = lm, lm.order - 1
        self.history = np.full((len(prompts), h), -1, dtype=np.int64)
        for r, p in enumerate(prompts):
            tail = list(p)[-h:] if h else []
            if tail:
                self.history[r, h - len(tail):] = tail

    def _logp(self):
        return np.log(self.lm.distributions(self.history))

    def start(self):
        return self._logp()

    def advance(self, parents, tokens):
        self.history = np.concatenate([self.history[parents, 1:], tokens[:, None]], axis=1)
        return self._logp()


@no_grad()
def beam_lines_model(model, prompts, line_ends, num_beams=5, max_new_tokens=64, batch_size=8):
    """:func:`beam_complete_lines` with ``model`` over ``prompts`` (lists of ids), grouped by
    length into batches of ``batch_size`` prompts (``batch_size * num_beams`` rows)."""
    def run(batch):
        return beam_complete_lines(_ModelScorer(model, batch), len(batch), line_ends, num_beams, max_new_tokens)

    return _in_length_batches(model, prompts, batch_size, run)


DEFAULT_PROMPT_RESERVE = 32  # block positions left out of a line completion's prompt (examples/train_code.py)


def complete_code(model, tokenizer, prefix, max_lines=1, max_line_tokens=64, prompt_reserve=None,
                  eos_token="<|endoftext|>"):
    """Greedy completion of ``prefix`` (the text before the cursor) for ``max_lines`` lines:
    returns the generated text, which ends just before the last line's newline. The prompt is
    ``[end-of-text] + the prefix's ids``, its last ``block_size - prompt_reserve`` ids, as in
    the evaluation; ``prompt_reserve`` None is the evaluation's default
    (``examples/train_code.py --prompt-reserve``, 32), or a quarter of a smaller model's block."""
    if max_lines < 1 or max_line_tokens < 1:
        raise ValueError(f"complete_code: max_lines and max_line_tokens must be >= 1, got {max_lines}, "
                         f"{max_line_tokens}")
    block = model.config.block_size
    if prompt_reserve is None:
        prompt_reserve = min(DEFAULT_PROMPT_RESERVE, block // 4)
    if not 0 <= prompt_reserve < block:
        raise ValueError(f"complete_code: prompt_reserve={prompt_reserve} must be in [0, block_size={block})")
    specials = getattr(tokenizer, "special_tokens", {})
    eot = specials.get(eos_token)
    line_ends = LineEnds.for_tokenizer(tokenizer, model.config.vocab_size, [] if eot is None else [eot])
    ids = ([] if eot is None else [eot]) + list(encode_text(tokenizer, prefix))
    if not ids:
        raise ValueError("complete_code: the prefix is empty and the tokenizer has no end-of-text token to start from")
    generated = []
    for k in range(max_lines):
        # the first line skips blank lines as the evaluation does; later ones keep the layout
        new = complete_lines(model, [ids[-(block - prompt_reserve):]], line_ends, max_line_tokens,
                             skip_blank_lines=k == 0)[0]
        generated += new
        ids += new
        if line_ends.end[new[-1]] or not line_ends.newline[new[-1]]:
            break  # the file ended, or the line ran past max_line_tokens
    ended_line = line_ends.newline[generated[-1]]
    text = tokenizer.decode([i for i in generated if i != eot])
    lines = text.split("\n")
    while len(lines) > 1 and not lines[0].strip():  # the blank lines skipped before the first line
        lines.pop(0)
    if ended_line and len(lines) > 1:
        lines.pop()  # what follows the last line's newline
    return "\n".join(line.rstrip("\r") for line in lines)


@no_grad()
def token_metrics(model, ids, batch_size=16):
    """Teacher-forced next-token accuracy (%) and perplexity of ``model`` over the id stream
    ``ids``, in non-overlapping ``block_size`` windows: every id after the first is predicted
    once (``tinyllm.data.iter_eval_windows``)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for x, y in iter_eval_windows(ids, model.config.block_size, batch_size):
            logits, loss = model(x, y)
            total_loss += loss.item() * y.size
            correct += int((logits.data.argmax(axis=-1) == y).sum())
            count += y.size
    finally:
        model.train(was_training)
    mean = total_loss / count
    return {"token_accuracy": 100.0 * correct / count, "perplexity": perplexity(mean), "loss": mean,
            "n_tokens": count}


# ------------------------------------------------------------------------------------------
# The n-gram baseline
# ------------------------------------------------------------------------------------------
class NGramLM:
    """A count-based n-gram model of token ids with Witten-Bell interpolation.

        P_1(w)     = (c(w) + 1) / (N + V)                                  add-one unigram
        P_k(w | h) = (c(h w) + t(h) P_{k-1}(w | h')) / (c(h) + t(h))        if c(h) > 0
                   = P_{k-1}(w | h')                                         otherwise

    with ``h`` the last k-1 ids, ``h'`` its last k-2, ``c`` counts in the training stream and
    ``t(h)`` the number of distinct ids seen after ``h``. Every id gets a probability > 0, so
    perplexity is finite.

    Storage is a trie in sorted arrays: a k-gram seen in training is the key ``g * V + w``,
    ``g`` the index of its first k-1 ids among the sorted (k-1)-gram keys (for k = 2, the id
    itself), so keys stay below (number of n-grams) * V for any order, and a lookup is one
    ``np.searchsorted`` per level. No Python dict per context.
    """

    def __init__(self, ids, vocab_size, order=4):
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 2:
            raise ValueError(f"NGramLM: order must be an integer >= 2 (2: bigrams), got {order!r}")
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) < order:
            raise ValueError(f"NGramLM: need a 1-D stream of at least order={order} ids, got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"NGramLM: ids must lie in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
        self.order, self.vocab_size = int(order), int(vocab_size)
        self.unigram = (np.bincount(ids, minlength=vocab_size) + 1.0) / (len(ids) + vocab_size)
        self.tables = [None, None]  # tables[k]: the k-grams, k >= 2
        gram = ids  # gram[s]: index of the (k-1)-gram starting at s
        for k in range(2, order + 1):
            n = len(ids) - k + 1
            table, gram = self._count(gram[:n] * vocab_size + ids[k - 1:k - 1 + n])
            self.tables.append(table)

    def _count(self, keys):
        keys, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        # keys are sorted, so the continuations of one context are contiguous
        ctx, start, types = np.unique(keys // self.vocab_size, return_index=True, return_counts=True)
        table = {"keys": keys, "counts": counts.astype(np.float64), "ctx": ctx, "start": start,
                 "types": types, "total": np.add.reduceat(counts, start).astype(np.float64)}
        return table, inverse.reshape(-1)

    @staticmethod
    def _find(sorted_keys, queries):
        """Index of each query in ``sorted_keys``, -1 where absent (queries < 0 stay absent)."""
        at = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
        return np.where((queries >= 0) & (sorted_keys[at] == queries), at, -1)

    def _gram_index(self, grams):
        """grams (N, m) ids -> index of each row among the m-grams seen (-1: unseen or padded)."""
        g = grams[:, 0].copy()
        for j in range(1, grams.shape[1]):
            w = grams[:, j]
            g = np.where((g >= 0) & (w >= 0), self._find(self.tables[j + 1]["keys"], g * self.vocab_size + w), -1)
        return g

    def distributions(self, history):
        """P(. | history) for each row: history (N, order-1) int, the last ids before the
        prediction (padded on the left with -1 where there are fewer) -> (N, V) float64."""
        history = np.asarray(history, dtype=np.int64).reshape(-1, self.order - 1)
        N, V = history.shape[0], self.vocab_size
        probs = np.broadcast_to(self.unigram, (N, V)).copy()
        for k in range(2, self.order + 1):
            t = self.tables[k]
            g = self._gram_index(history[:, history.shape[1] - (k - 1):])
            c = self._find(t["ctx"], g)
            rows = np.flatnonzero(c >= 0)
            if rows.size == 0:
                continue
            c = c[rows]
            n_cont = t["types"][c]
            # the continuations of each row's context, flattened: a ragged gather
            flat_row = np.repeat(np.arange(rows.size), n_cont)
            offset = np.arange(n_cont.sum()) - np.repeat(np.cumsum(n_cont) - n_cont, n_cont)
            flat = np.repeat(t["start"][c], n_cont) + offset
            counts = np.zeros((rows.size, V))
            counts[flat_row, t["keys"][flat] % V] = t["counts"][flat]
            types, total = n_cont.astype(np.float64)[:, None], t["total"][c][:, None]
            probs[rows] = (counts + types * probs[rows]) / (total + types)
        return probs

    def log_probs(self, ids):
        """log P(ids[t] | the up to order-1 ids before it) for t = 1 .. len(ids)-1."""
        ids = np.asarray(ids, dtype=np.int64)
        V = self.vocab_size
        targets = ids[1:]
        p = self.unigram[targets].copy()
        gram = ids.copy()  # gram[s]: index of the (k-1)-gram starting at s, -1 if unseen
        for k in range(2, self.order + 1):
            t = self.tables[k]
            if k > 2:  # extend the (k-2)-grams by one id to (k-1)-grams
                n = len(ids) - (k - 2)
                prev = gram[:n]
                gram = np.where(prev >= 0, self._find(self.tables[k - 1]["keys"], prev * V + ids[k - 2:k - 2 + n]), -1)
            # target ids[i] (i >= k-1) has the context gram starting at i-k+1
            ctx = np.full(len(targets), -1, dtype=np.int64)
            ctx[k - 2:] = gram[:len(targets) - (k - 2)]
            c = self._find(t["ctx"], ctx)
            hit = c >= 0
            cc = np.maximum(c, 0)
            key = self._find(t["keys"], np.where(hit, ctx * V + targets, -1))
            c_hw = np.where(key >= 0, t["counts"][np.maximum(key, 0)], 0.0)
            types, total = t["types"][cc].astype(np.float64), t["total"][cc]
            p = np.where(hit, (c_hw + types * p) / (total + types), p)
        return np.log(p)

    def token_metrics(self, ids, chunk=1024):
        """Next-token accuracy (%) of the argmax and perplexity over the stream ``ids`` (every id
        after the first predicted once, as :func:`token_metrics` does for a model)."""
        ids = np.asarray(ids, dtype=np.int64)
        logp = self.log_probs(ids)
        correct = 0
        padded = np.concatenate([np.full(self.order - 1, -1, dtype=np.int64), ids])
        for s in range(1, len(ids), chunk):
            t = np.arange(s, min(s + chunk, len(ids)))
            history = padded[t[:, None] + np.arange(self.order - 1)]  # ids[t-order+1 .. t-1]
            correct += int((self.distributions(history).argmax(axis=1) == ids[t]).sum())
        n = len(ids) - 1
        mean = -float(logp.mean())
        return {"token_accuracy": 100.0 * correct / n, "perplexity": perplexity(mean), "loss": mean, "n_tokens": n}

    def complete(self, prompts, line_ends, max_new_tokens=64, skip_blank_lines=True):
        """Greedy continuation of each prompt until its line ends (:class:`LineEnds`) or
        ``max_new_tokens``; returns the generated ids per prompt (as :func:`complete_lines`)."""
        h = self.order - 1
        history = np.full((len(prompts), h), -1, dtype=np.int64)
        for r, p in enumerate(prompts):
            tail = list(p)[-h:] if h else []
            if tail:
                history[r, h - len(tail):] = tail
        generated = [[] for _ in prompts]
        active = np.arange(len(prompts))
        has_content = np.zeros(len(prompts), dtype=bool)
        for _ in range(max_new_tokens):
            if active.size == 0:
                break
            nxt = self.distributions(history[active]).argmax(axis=1)
            for r, i in zip(active, nxt):
                generated[r].append(int(i))
            if h:
                history[active] = np.concatenate([history[active, 1:], nxt[:, None]], axis=1)
            keep = ~line_ends.done(nxt, has_content[active], skip_blank_lines)
            has_content[active] |= line_ends.content[nxt]
            active = active[keep]
        return generated

    def line_predictions(self, tokenizer, prompts, line_ends, max_new_tokens=64, num_beams=1):
        """The predicted line for each prompt: greedy, or the best of a beam search
        (:func:`beam_complete_lines`) with ``num_beams`` > 1."""
        if num_beams == 1:
            generated = self.complete(prompts, line_ends, max_new_tokens)
        else:
            generated = []
            for s in range(0, len(prompts), 64):
                chunk = prompts[s:s + 64]
                generated += beam_complete_lines(_NGramScorer(self, chunk), len(chunk), line_ends, num_beams,
                                                 max_new_tokens)
        return [line_text(tokenizer, g) for g in generated]
