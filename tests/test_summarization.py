"""tinyllm.summarization (baselines, source truncation, functions of a file), the seq2seq batch
and evaluation adapters of tinyllm.datasets.pairs, and the summarization examples end to end on
generated sources (seconds)."""
import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tinyllm.code_data import CODE_SPLIT_PATTERN, extract_functions
from tinyllm.datasets import PairDataset, pair_batches, pair_evaluator
from tinyllm.metrics import rouge
from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer
from tinyllm.summarization import (baseline_summaries, first_body_line, functions_in_file, model_source, name_line,
                                   name_to_words, qualname_to_words, score_summaries, summarize, truncate_code)
from tinyllm.tokenizers import GPT2_SPLIT_PATTERN, Seq2SeqTokenizer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ---- baselines -------------------------------------------------------------------------------
@pytest.mark.parametrize("name, words", [
    ("get_user_name", "get user name"),
    ("getUserName", "get user name"),
    ("GetUserName", "get user name"),
    ("HTTPServer", "http server"),
    ("parseHTTPResponse", "parse http response"),
    ("toUTF8String", "to utf8 string"),
    ("to_utf8", "to utf8"),
    ("md5sum", "md5 sum"),
    ("__init__", "init"),
    ("_private_helper", "private helper"),
    ("MAX_SIZE", "max size"),
    ("x", "x"),
    ("__", ""),
    ("f2", "f2"),
    ("v2_parse", "v2 parse"),
    ("café_au_lait", "café au lait"),
    ("ÉcoleName", "école name"),
])
def test_name_to_words(name, words):
    assert name_to_words(name) == words


@pytest.mark.parametrize("code, line", [
    ("def f(a, b):\n    return a + b\n", "return a + b"),
    ("def f():\n", ""),                                          # the body was only the docstring
    ("def f(): return 2\n", "return 2"),                         # body on the def line
    ("@decorator\n@other(1)\ndef f(x):\n    x += 1\n    return x\n", "x += 1"),
    ("def f(a,\n      b):\n    if a:\n        return b\n", "if a:"),   # multi-line signature
    ("def f():\n    x = [1,\n         2]\n", "x = [1,"),          # first line of a long statement only
    ("def é(): return 'ü'\n", "return 'ü'"),                     # byte offsets past non-ASCII
    ("async def f():\n    # a comment\n    await g()\n", "await g()"),  # comments are not statements
])
def test_first_body_line(code, line):
    assert first_body_line(code) == line


def test_first_body_line_rejects_what_is_not_one_function():
    with pytest.raises(ValueError, match="one function"):
        first_body_line("x = 1\n")


def test_baselines_on_extracted_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(textwrap.dedent('''\
        class Account:
            def getUserName(self):
                """Return the user's name."""
                return self._name

            def only_doc(self):
                """Nothing else."""

        def parse_header(line): "Parse one header line."; return line.split(":", 1)
        '''), encoding="utf-8")
    functions, _ = extract_functions(path)
    assert baseline_summaries(functions) == {
        "name_words": ["get user name", "only doc", "parse header"],
        "first_line": ["return self._name", "", 'return line.split(":", 1)'],
    }
    scores = score_summaries(baseline_summaries(functions)["name_words"], [f.summary for f in functions])
    # "get user name" vs "return the user s name": 2 of 3 and of 5 tokens, F = 1/2 (LCS 2 too);
    # "only doc" vs "nothing else": 0; "parse header" vs "parse one header line": 2 of 2 and of 4, F = 2/3
    assert scores["rouge1"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3, abs=1e-12)
    assert scores["rougeL"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3, abs=1e-12)
    assert scores["rouge2"] == 0.0  # "user name" is not a bigram of "return the user s name"


def test_score_summaries_equals_the_reference_packages():
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    sacrebleu = pytest.importorskip("sacrebleu")
    preds = ["Return the user name", "", "parse one header", "Return the the value", "x"]
    refs = ["Return the user's name", "Nothing else", "Parse one header line", "Return the value", "y"]
    ours = score_summaries(preds, refs)
    scorer = rs.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for t in ("rouge1", "rouge2", "rougeL"):
        assert abs(ours[t] - np.mean([scorer.score(r, p)[t].fmeasure for p, r in zip(preds, refs)])) <= 1e-9
    assert abs(ours["bleu"] - sacrebleu.corpus_bleu(preds, [refs]).score) <= 1e-9


def test_rouge_mean_over_the_edge_cases_equals_rouge_score():
    """rouge() over a whole list of the issue's edge cases (empty prediction, empty reference,
    no overlap, repeated words) at once, not pair by pair."""
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    preds = ["", "the cat", "", "a b c", "the the the the", "a a b b a a", "Running runs"]
    refs = ["the cat", "", "", "x y z", "the cat the", "a b a b a", "run running"]
    types = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    for stem in (False, True):
        scorer = rs.RougeScorer(list(types), use_stemmer=stem)
        per_pair = [scorer.score(r, p) for p, r in zip(preds, refs)]
        ours = rouge(preds, refs, types, use_stemmer=stem)
        for t in types:
            for k in range(3):
                theirs = np.mean([s[t][k] for s in per_pair])
                assert np.isfinite(ours[t][k]) and abs(ours[t][k] - theirs) <= 1e-9, (t, k, stem)


# ---- truncation ------------------------------------------------------------------------------
LONG_CODE = "def long_function(alpha, beta):\n" + "".join(
    f"    value_{i} = alpha * {i} + beta  # step {i}\n" for i in range(40)) + "    return value_39\n"


@pytest.fixture(scope="module", params=[CODE_SPLIT_PATTERN, GPT2_SPLIT_PATTERN], ids=["code", "gpt2"])
def tokenizer(request):
    return Seq2SeqTokenizer.train([LONG_CODE, "Return the sum of the values"], vocab_size=300,
                                  pattern=request.param)


def test_truncate_code_keeps_a_short_function_whole(tokenizer):
    code = "def f(x):\n    return x\n"
    assert truncate_code(code, tokenizer, 100) == (code, tokenizer.encode(code))


@pytest.mark.parametrize("max_tokens", [25, 57, 100, 200])
def test_truncate_code_keeps_whole_lines_from_the_top(tokenizer, max_tokens):
    text, ids = truncate_code(LONG_CODE, tokenizer, max_tokens)
    assert len(tokenizer.encode(LONG_CODE)) > max_tokens
    assert ids == tokenizer.encode(text) and len(ids) <= max_tokens and ids[-1] == tokenizer.eos_token_id
    assert LONG_CODE.startswith(text) and text.endswith("\n") and text.startswith("def long_function(")
    next_line = LONG_CODE[len(text):].split("\n")[0] + "\n"
    assert len(tokenizer.encode(text + next_line)) > max_tokens  # as many lines as fit


def test_truncate_code_cuts_a_first_line_too_long_alone(tokenizer):
    code = "def f(" + ", ".join(f"argument_{i}" for i in range(30)) + "):\n    pass\n"
    text, ids = truncate_code(code, tokenizer, 12)
    assert code.startswith(text) and "\n" not in text and len(ids) <= 12
    assert ids == tokenizer.encode(text)
    assert len(tokenizer.encode(code[:len(text) + 1])) > 12  # the longest beginning that fits
    with pytest.raises(ValueError, match="max_tokens must be >= 2"):
        truncate_code(code, tokenizer, 1)


# ---- what the encoder reads ----------------------------------------------------------------------
@pytest.mark.parametrize("qualname, words", [
    ("get_user_name", "get user name"),
    ("Chunk.getSize", "chunk get size"),
    ("ProcessPoolExecutor.__init__", "process pool executor init"),
    ("_make_relax_case.<locals>._relax_case", "make relax case relax case"),
    ("A.__", "a"),                      # an empty part leaves no double space
    ("HTTPServer.handle_GET", "http server handle get"),
])
def test_qualname_to_words(qualname, words):
    assert qualname_to_words(qualname) == words


@pytest.mark.parametrize("qualname, line", [
    ("get_user_name", "Get user name"),
    ("Chunk.get_size", "Get size chunk"),
    ("ProcessPoolExecutor.__init__", "Init process pool executor"),
    ("_make_relax_case.<locals>._relax_case", "Relax case make relax case"),
    ("Outer.Inner.isOpen", "Is open outer inner"),
    ("A.__", "a"),                      # no words of its own: only the class's
    ("é_x", "É x"),
])
def test_name_line(qualname, line):
    assert name_line(qualname) == line


def test_model_source_formats():
    code = "def get_size(self):\n    return self._size\n"
    assert model_source("Chunk.get_size", code) == "Get size chunk\n" + code  # "name+code" is the default
    assert model_source("Chunk.get_size", code, "name+code") == "Get size chunk\n" + code
    assert model_source("Chunk.get_size", code, "code") == code
    with pytest.raises(ValueError, match="unknown source_format 'words'"):
        model_source("f", code, "words")


def test_model_source_gives_the_name_the_tokens_of_a_sentence():
    tok = Seq2SeqTokenizer.train(["Get the size of the chunk", "def get_size(self):\n    return 1\n"] * 3,
                                 vocab_size=300, pattern=CODE_SPLIT_PATTERN)
    code = "def get_size(self):\n    return 1\n"
    def contains(ids, part):
        return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))

    summary = tok.encode("Get the size of the chunk", add_special_tokens=False)
    source = tok.encode(model_source("Chunk.get_size", code), add_special_tokens=False)
    for word in ("Get", " size", " chunk"):  # the code alone spells them "get", "_size" and not at all
        ids = tok.encode(word, add_special_tokens=False)
        assert contains(summary, ids) and contains(source, ids) and not contains(tok.encode(code), ids), word


def test_truncate_code_keeps_the_name_line(tokenizer):
    text, ids = truncate_code(model_source("Long.long_function", LONG_CODE), tokenizer, 60)
    assert text.startswith("Long function long\ndef long_function(alpha, beta):\n") and len(ids) <= 60


# ---- every function of a file ------------------------------------------------------------------
def test_functions_in_file_documented_or_not(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(textwrap.dedent('''\
        def documented(a):
            """Add one.

            More.
            """
            return a + 1


        class C:
            @staticmethod
            def bare(x):
                return x * 2


        def outer():
            def inner():
                pass
            return inner
        '''), encoding="utf-8")
    functions = functions_in_file(path)
    assert [(f.qualname, f.lineno, f.docstring_summary) for f in functions] == [
        ("documented", 1, "Add one"), ("C.bare", 11, ""), ("outer", 15, ""), ("outer.<locals>.inner", 16, "")]
    assert functions[0].code == "def documented(a):\n    return a + 1\n"
    assert functions[1].code == "@staticmethod\ndef bare(x):\n    return x * 2\n"
    assert functions[3].code == "def inner():\n    pass\n"
    same, _ = extract_functions(path)  # the code a documented function is trained on
    assert same[0].code == functions[0].code


def test_functions_in_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\ndef f(:\n    pass\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.py, line 2"):
        functions_in_file(bad)
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"x = '\xff'\n")
    with pytest.raises(ValueError, match=r"latin\.py: not UTF-8"):
        functions_in_file(latin)


# ---- the seq2seq adapters for the shared training loop -----------------------------------------
def small_dataset():
    tok = Seq2SeqTokenizer.train(["abc def ghi jkl", "xyz"], vocab_size=270)
    rng = np.random.default_rng(0)
    pairs = [("a" * int(n), "x" * int(m)) for n, m in zip(rng.integers(1, 60, 40), rng.integers(1, 6, 40))]
    return PairDataset(pairs, tok), tok


def test_pair_batches_one_bucket_is_the_datasets_own_batch():
    ds, _ = small_dataset()
    (src, tgt_in), tgt_out = pair_batches()(ds, 5, np.random.default_rng(3))
    want = ds.get_batch(5, np.random.default_rng(3))
    for a, b in zip((src, tgt_in, tgt_out), want):
        np.testing.assert_array_equal(a, b)


def test_pair_batches_by_length_are_similar_reproducible_and_uniform():
    ds, _ = small_dataset()
    get_batch = pair_batches(length_buckets=4)
    a = get_batch(ds, 6, np.random.default_rng(7))
    b = get_batch(ds, 6, np.random.default_rng(7))
    for x, y in zip(a[0] + (a[1],), b[0] + (b[1],)):
        np.testing.assert_array_equal(x, y)
    # far less padding than uniform batches of the same size
    rng_b, rng_u = np.random.default_rng(1), np.random.default_rng(1)
    pad = ds.tokenizer.pad_token_id
    padded_b = np.mean([np.mean(get_batch(ds, 6, rng_b)[0][0] == pad) for _ in range(200)])
    padded_u = np.mean([np.mean(pair_batches()(ds, 6, rng_u)[0][0] == pad) for _ in range(200)])
    assert padded_b < 0.6 * padded_u
    # every pair is still drawn equally often: 4000 batches of 6 -> 600 draws expected per pair
    rng = np.random.default_rng(2)
    counts = np.zeros(len(ds))
    lengths = np.array([len(s) for s in ds.src_ids])
    for _ in range(4000):
        src = get_batch(ds, 6, rng)[0][0]
        real = (src != pad).sum(axis=1)
        for n in real:  # lengths are not unique: spread the count over the pairs of that length
            counts[lengths == n] += 1 / np.count_nonzero(lengths == n)
    chi2 = np.sum((counts - 600) ** 2 / 600)
    assert chi2 < 80, chi2  # 39 degrees of freedom: p < 1e-4 above 80; buckets that favour the middle fail


def test_pair_batches_rejects_a_bad_bucket_count():
    with pytest.raises(ValueError, match="length_buckets must be an integer >= 1"):
        pair_batches(0)


def test_pair_evaluator_equals_one_pass_over_the_padded_split():
    ds, tok = small_dataset()
    cfg = EncoderDecoderConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, max_src_len=64,
                               max_tgt_len=8, n_encoder_layers=1, n_decoder_layers=1, n_head=2, d_model=16,
                               d_ff=32, dropout=0.0, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id)
    model = EncoderDecoderTransformer(cfg, seed=0)
    ours = pair_evaluator(batch_size=7)(model, ds)
    src, tgt_in, tgt_out = ds.batch(range(len(ds)))
    whole = model.evaluate(src, tgt_in, tgt_out, batch_size=len(ds))
    assert ours["n_tokens"] == whole["n_tokens"] == ds.num_target_tokens()
    assert ours["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert ours["perplexity"] == pytest.approx(np.exp(ours["loss"]), rel=1e-12)
    # summarize: one str per source, in the order given, whatever the batching
    ids = [truncate_code(s, tok, 64)[1] for s, _ in ds.pairs[:9]]
    assert summarize(model, tok, ids, batch_size=4, max_new_tokens=3) == \
        [summarize(model, tok, [i], batch_size=1, max_new_tokens=3)[0] for i in ids]


# ---- the examples, end to end ------------------------------------------------------------------
NOUNS = ["name", "size", "color", "owner", "path", "mode", "count", "label", "value", "width", "height", "title"]


def write_sources(root, n_files=9):
    """Small modules of documented getters, setters and undocumented helpers."""
    for k in range(n_files):
        lines = [f'"""Module {k}."""\n\n']
        for noun in NOUNS[k % 4::2]:
            lines.append(f'def get_{noun}(obj):\n    """Return the {noun} of the object."""\n    return obj.{noun}\n\n\n')
            lines.append(f'def set_{noun}(obj, value):\n    """Set the {noun} of the object to value.\n\n'
                         f'    More words.\n    """\n    obj.{noun} = value\n\n\n')
            lines.append(f'def _check_{noun}(obj):\n    return obj.{noun} is not None\n\n\n')
        (root / f"mod_{k}.py").write_text("".join(lines), encoding="utf-8")


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--vocab-size", "300", "--n-encoder-layers", "1", "--n-decoder-layers", "1", "--n-head", "2",
        "--d-model", "16", "--d-ff", "32", "--batch-size", "8", "--eval-interval", "2", "--eval-iters", "1",
        "--warmup-iters", "1", "--num-beams", "2", "--max-src-len", "24", "--max-tgt-len", "12", "--no-progress",
        "--eval-batch-size", "16"]


def test_train_resume_and_summarize_end_to_end(tmp_path, capsys):
    data = tmp_path / "src"
    data.mkdir()
    write_sources(data)
    out = tmp_path / "out"
    train = load_example("train_summarization")
    first = train.main(["--data", str(data), "--out-dir", str(out), "--max-iters", "2", *TINY])
    assert first["iter"] == 2 and (out / "ckpt.safetensors").exists()
    log_rows = (out / "log.csv").read_text().splitlines()

    with pytest.raises(SystemExit, match="already holds a training run"):  # never overwritten silently
        train.main(["--data", str(data), "--out-dir", str(out), "--max-iters", "4", *TINY])
    metrics = train.main(["--data", str(data), "--out-dir", str(out), "--max-iters", "4", "--resume", *TINY])
    assert "resumed from" in capsys.readouterr().out
    assert metrics["iter"] == 4
    assert (out / "log.csv").read_text().splitlines()[:len(log_rows)] == log_rows  # the first run's rows kept

    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    n_test = saved["functions"]["test"]
    assert n_test == saved["test"]["n_functions"] > 0
    for system in ("greedy", "beam", "name_words", "first_line"):
        s = saved["test"][system]
        assert set(s) == {"rouge1", "rouge2", "rougeL", "bleu"}
        assert all(0 <= s[k] <= 1 for k in ("rouge1", "rouge2", "rougeL")) and 0 <= s["bleu"] <= 100
    rows = [json.loads(line) for line in (out / "test_summaries.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == n_test
    refs = [r["summary"] for r in rows]
    assert saved["test"]["name_words"] == pytest.approx(score_summaries([r["name_words"] for r in rows], refs))
    assert saved["test"]["greedy"] == pytest.approx(score_summaries([r["greedy"] for r in rows], refs))
    test_files = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"] if f["split"] == "test"}
    assert {r["path"] for r in rows} <= test_files  # only held-out files are scored

    capsys.readouterr()
    target = data / "mod_0.py"
    printed = load_example("summarize").main(["--model-dir", str(out), "--file", str(target), "--docstrings"])
    lines = capsys.readouterr().out.strip("\n").split("\n")
    names = [f.qualname for f in functions_in_file(target)]
    assert [q for q, _ in printed] == names and len(lines) == 2 * len(names)
    assert lines[0].startswith("get_name: ") and lines[1] == "    docstring: Return the name of the object"
    assert lines[5] == "    docstring: (none)"  # _check_name has no docstring, and is summarized too
    assert json.loads((out / "summarization.json").read_text()) == {"source_format": "name+code"}


@pytest.mark.parametrize("fmt", ["name+code", "code", None])
def test_summarize_reads_a_function_as_training_did(tmp_path, monkeypatch, fmt):
    data = tmp_path / "src"
    data.mkdir()
    write_sources(data)
    out = tmp_path / "out"
    args = ["--data", str(data), "--out-dir", str(out), "--max-iters", "1", *TINY]
    load_example("train_summarization").main(args + (["--source-format", fmt] if fmt else []))
    if fmt is None:  # a model directory from before summarization.json: the code alone
        (out / "summarization.json").unlink()
    summarize_example = load_example("summarize")
    seen = {}
    monkeypatch.setattr(summarize_example, "summarize", lambda model, tok, src_ids, **kw: seen.setdefault(
        "src", src_ids) and ["x"] * len(src_ids))
    target = data / "mod_0.py"
    summarize_example.main(["--model-dir", str(out), "--file", str(target)])
    tok = Seq2SeqTokenizer.from_pretrained(out)
    expected = [truncate_code(model_source(f.qualname, f.code, fmt or "code"), tok, 24)[1]
                for f in functions_in_file(target)]
    assert seen["src"] == expected


def test_summarize_rejects_a_bad_summarization_json(tmp_path):
    data = tmp_path / "src"
    data.mkdir()
    write_sources(data)
    out = tmp_path / "out"
    load_example("train_summarization").main(["--data", str(data), "--out-dir", str(out), "--max-iters", "1", *TINY])
    (out / "summarization.json").write_text('{"source_format": "tokens"}')
    with pytest.raises(SystemExit, match="unknown source_format 'tokens'"):
        load_example("summarize").main(["--model-dir", str(out), "--file", str(data / "mod_0.py")])


def test_train_scores_the_validation_split_when_asked(tmp_path):
    data = tmp_path / "src"
    data.mkdir()
    write_sources(data)
    out = tmp_path / "out"
    metrics = load_example("train_summarization").main(
        ["--data", str(data), "--out-dir", str(out), "--max-iters", "1", "--eval-split", "val", *TINY])
    assert "test" not in metrics and metrics["val"]["n_functions"] == metrics["functions"]["val"] > 0
    rows = (out / "val_summaries.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == metrics["functions"]["val"] and not (out / "test_summaries.jsonl").exists()


def test_summarize_reports_a_file_that_does_not_parse(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad\.py, line 1"):
        load_example("summarize").main(["--model-dir", str(tmp_path), "--file", str(bad)])


def test_summarize_refuses_num_beams_below_one(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --num-beams must be at least 1 \(1: greedy\), got 0$"):
        load_example("summarize").main(["--model-dir", str(tmp_path), "--file", str(tmp_path / "a.py"),
                                        "--num-beams", "0"])


@pytest.mark.parametrize("flag", ["--num-beams", "--eval-batch-size"])
def test_train_refuses_evaluation_options_below_one_before_training(tmp_path, capsys, flag):
    """They are used only after training; a 0 used to fail there, with the run trained but not saved."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        load_example("train_summarization").main(["--data", str(tmp_path), "--out-dir", str(out), *TINY, flag, "0"])
    assert err.value.code == 2 and f"error: {flag} must be at least 1, got 0" in capsys.readouterr().err
    assert not out.exists()
