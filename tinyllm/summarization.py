"""Summarizing Python functions (CodeXGLUE's code-to-text): what the model reads, the two
baselines it must beat, and the scores.

* :func:`model_source`: the text the encoder reads. By default (``"name+code"``) the function's
  name in words on a first line, written as a summary starts (first word capitalized), then the
  words of the names around it (its class), then its code: ``Chunk.get_size`` ->
  ``"Get size chunk\ndef get_size(self): ..."``. Summaries are English words, and the name is
  the strongest hint of what they say, but the code spells it ``get_size`` (BPE pieces ``get``,
  ``_``, ``size``), which share no token with "Get" opening a sentence or `` size`` inside one;
  the words line hands the model the very tokens a summary uses, to copy. (CodeXGLUE's
  baselines split identifiers into subtokens for the same reason.) ``"code"`` is the code alone.
* :func:`truncate_code`: a function's code cut to at most ``max_tokens`` ids (EOS included) at a
  line boundary, so a long function keeps its signature and first lines (what names it and
  what it does first) and loses its tail. A single line too long alone is cut inside.
* :func:`name_to_words` / :func:`first_body_line`: the baselines. ``get_user_name`` -> "get
  user name", ``HTTPServerError`` -> "http server error"; and the first line of the body once
  the docstring is gone (``return a + b``).
* :func:`summarize` decodes many sources in batches of similar length; :func:`score_summaries`
  gives ROUGE-1/2/L F-measure (rouge-score's definition, :func:`tinyllm.metrics.rouge`) and
  corpus BLEU (sacrebleu's, :func:`tinyllm.metrics.corpus_bleu`) of some predictions.

The (code, summary) pairs themselves come from :func:`tinyllm.code_data.extract_functions`.
"""
import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex

from .code_data import _PY_LINE, _code_without_docstring, _functions, docstring_summary, split_lines
from .metrics import corpus_bleu, rouge

__all__ = ["BASELINES", "SOURCE_FORMATS", "FunctionSource", "baseline_summaries", "first_body_line",
           "functions_in_file", "model_source", "name_line", "name_to_words", "qualname_to_words", "score_summaries",
           "summarize", "truncate_code"]


# ---- every function of a file, documented or not ----------------------------------------------
@dataclass
class FunctionSource:
    """A function to summarize: its code as the model reads it (docstring removed) and its
    docstring's summary if it has one ("" otherwise)."""

    qualname: str
    name: str
    lineno: int
    code: str
    docstring_summary: str


def functions_in_file(path):
    """Every function and method of a Python file, documented or not, in source order (parsed
    with ``ast``, never run), as :class:`FunctionSource`. The code is prepared exactly as
    :func:`tinyllm.code_data.extract_functions` prepares training code. A file that is not
    UTF-8 or does not parse is a ``ValueError`` naming the file and the line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"{path}, line {e.lineno}: {e.msg}; the file must be valid Python") from None
    lines = _PY_LINE.findall(source)
    out = []
    for node, qualname in _functions(tree):
        doc = ast.get_docstring(node, clean=True)
        if doc is not None:
            code = _code_without_docstring(node, lines)
        else:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            code = textwrap.dedent("".join(lines[first - 1:node.end_lineno]))
        out.append(FunctionSource(qualname, node.name, node.lineno, code, docstring_summary(doc)))
    return out


# ---- what the model reads --------------------------------------------------------------------
SOURCE_FORMATS = {
    "name+code": "the function's name in words, as a sentence starts, then its class's, on a first line; then its code",
    "code": "the function's code alone",
}


def model_source(qualname, code, source_format="name+code"):
    """The text the encoder reads for a function (see the module docstring and
    :data:`SOURCE_FORMATS`). ``"name+code"``: ``name_line(qualname) + "\n" + code``;
    ``"code"``: ``code``. Training and summarizing must use the same format."""
    if source_format == "code":
        return code
    if source_format == "name+code":
        return f"{name_line(qualname)}\n{code}"
    raise ValueError(f"model_source: unknown source_format {source_format!r}; choose one of {sorted(SOURCE_FORMATS)}")


def name_line(qualname):
    """The words of a function's own name with the first one capitalized, as a summary opens
    ("Get size"), then those of the names it is defined in, outermost first and lowercase:
    ``Chunk.get_size`` -> "Get size chunk", ``outer.<locals>.inner`` -> "Inner outer",
    ``__init__`` -> "Init"."""
    parts = [part for part in qualname.split(".") if part != "<locals>"]
    own = name_to_words(parts[-1])
    return " ".join(w for w in (own[:1].upper() + own[1:], qualname_to_words(".".join(parts[:-1]))) if w)


def qualname_to_words(qualname):
    """A qualified name in words, outermost first, ``<locals>`` left out: ``Chunk.getSize`` ->
    "chunk get size", ``outer.<locals>._inner`` -> "outer inner"."""
    words = (name_to_words(part) for part in qualname.split(".") if part != "<locals>")
    return " ".join(w for w in words if w)


def truncate_code(code, tokenizer, max_tokens):
    """``(text, ids)``: ``code`` encoded by ``tokenizer`` (ids ending with EOS) in at most
    ``max_tokens`` ids. A code that fits is returned whole. Otherwise whole lines are kept from
    the top (signature first) while they fit; if even the first line does not fit, its longest
    beginning that fits is kept. ``text`` is what was kept: ``tokenizer.encode(text) == ids``."""
    if max_tokens < 2:
        raise ValueError(f"truncate_code: max_tokens must be >= 2 (one token and EOS), got {max_tokens}")
    ids = tokenizer.encode(code)
    if len(ids) <= max_tokens:
        return code, ids
    lines = split_lines(code)
    # Line by line, the counts add up exactly when the tokenizer's pre-tokenizer cuts at every
    # newline (tinyllm.code_data.CODE_SPLIT_PATTERN); for any other pattern the sum is a guess,
    # so the guess is then corrected on the real encoding of the prefix, up and down.
    budget, n_lines = max_tokens - 1, 0
    for line in lines:
        budget -= len(tokenizer.encode(line, add_special_tokens=False))
        if budget < 0:
            break
        n_lines += 1

    def fits(n):
        return len(tokenizer.encode("".join(lines[:n]))) <= max_tokens

    while n_lines < len(lines) and fits(n_lines + 1):
        n_lines += 1
    while n_lines > 0 and not fits(n_lines):
        n_lines -= 1
    if n_lines > 0:
        text = "".join(lines[:n_lines])
        return text, tokenizer.encode(text)
    # The first line alone is too long: its longest prefix (in characters) that fits, found by
    # bisection. Cutting characters, not ids, keeps text and ids in step (a cut inside a byte-level
    # token could leave half a character).
    line, lo, hi = lines[0], 0, len(lines[0])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode(line[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return line[:lo], tokenizer.encode(line[:lo])


# ---- the baselines ---------------------------------------------------------------------------
# A word of an identifier: an acronym (with its digits) not followed by a lowercase letter
# ("HTTP" in "HTTPServer", "UTF8" in "toUTF8"), a capitalized or lowercase word with its digits
# ("Server", "md5"), or bare digits. Underscores separate words and are dropped.
_IDENT_WORD = regex.compile(r"\p{Lu}+\p{N}*(?!\p{Ll})|\p{Lu}?\p{Ll}+\p{N}*|\p{N}+|[^\p{Lu}\p{Ll}\p{N}_]+")


def name_to_words(name):
    """The name-as-summary baseline: ``get_user_name`` -> "get user name", ``getUserName`` ->
    "get user name", ``HTTPServer`` -> "http server", ``__init__`` -> "init", ``md5sum`` ->
    "md5 sum", ``to_utf8`` -> "to utf8"; lowercase, words joined by one space."""
    return " ".join(w.lower() for part in name.split("_") for w in _IDENT_WORD.findall(part))


def first_body_line(code):
    """The first-line baseline: the first line of the function's body in ``code`` (a function's
    source with its docstring removed, as :func:`tinyllm.code_data.extract_functions` gives it),
    stripped; "" when the body was only the docstring. ``def f(): return 2`` -> "return 2"."""
    try:
        tree = ast.parse(code)
    except SyntaxError:  # `def f():` alone: the docstring was the whole body
        return ""
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(funcs) != 1:
        raise ValueError(f"first_body_line: expected the code of one function, got {_clip(code)!r}")
    stmt = funcs[0].body[0]
    line = code.split("\n")[stmt.lineno - 1]  # ast.parse of a str counts lines at \n
    # col_offset counts UTF-8 bytes
    return line.encode("utf-8")[stmt.col_offset:].decode("utf-8").strip()


BASELINES = {
    "name_words": "the function's name split into words (get_user_name -> 'get user name')",
    "first_line": "the first line of the function's body",
}


def baseline_summaries(functions):
    """``{baseline: [prediction per function]}`` for :class:`~tinyllm.code_data.FunctionDoc`
    objects (anything with ``.name`` and ``.code``)."""
    return {"name_words": [name_to_words(f.name) for f in functions],
            "first_line": [first_body_line(f.code) for f in functions]}


def _clip(text, n=60):
    return text if len(text) <= n else text[:n] + "..."


# ---- generating and scoring ------------------------------------------------------------------
def summarize(model, tokenizer, src_ids, batch_size=64, max_new_tokens=None, **generate_kwargs):
    """Decode each source (a list of id lists, EOS-terminated, each at most the model's
    ``max_src_len``) into a str; ``generate_kwargs`` go to ``model.generate`` (``num_beams``,
    ``length_penalty`` ...). Sources are batched by length so little padding is computed."""
    limit = model.config.max_tgt_len - 1
    max_new_tokens = limit if max_new_tokens is None else min(max_new_tokens, limit)
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    out = [None] * len(src_ids)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(src_ids[i]) for i in rows)
        batch = np.full((len(rows), width), tokenizer.pad_token_id, dtype=np.int64)  # (B, S)
        for r, i in enumerate(rows):
            batch[r, :len(src_ids[i])] = src_ids[i]
        generated = model.generate(batch, max_new_tokens=max_new_tokens, **generate_kwargs)
        for i, text in zip(rows, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            out[i] = text.strip()
    return out


def score_summaries(predictions, references):
    """``{"rouge1", "rouge2", "rougeL"}`` F-measures (mean over the functions, 0-1, no
    stemming) and ``"bleu"`` (corpus BLEU, 0-100, sacrebleu's 13a tokenization) of predictions
    against one reference summary each."""
    r = rouge(predictions, references, rouge_types=("rouge1", "rouge2", "rougeL"))
    return {"rouge1": r["rouge1"].fmeasure, "rouge2": r["rouge2"].fmeasure, "rougeL": r["rougeL"].fmeasure,
            "bleu": corpus_bleu(predictions, [references]).score}
