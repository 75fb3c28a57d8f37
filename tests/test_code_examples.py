"""examples/train_code.py and examples/complete_code.py on a generated folder of code, through the
shared training harness (tinyllm.cli): train -> --resume -> --eval-only -> complete_code.py, and
bad input as clear errors that leave --out-dir untouched. Each run takes seconds."""
import contextlib
import csv
import io
import json
import shutil
import sys

import pytest
from code_helpers import TINY, load_example, make_repo, with_option


def run_main(module, args):
    """(return value, stdout) of ``module.main(args)``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = module.main(args)
    return result, out.getvalue()


def log_losses(out_dir):
    with open(out_dir / "log.csv", newline="") as f:
        return [(r["iter"], r["loss"], r["eval_val_loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def train_code():
    return load_example("train_code")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_code):
    """A finished tiny run: (repo, out_dir, metrics returned, stdout)."""
    root = tmp_path_factory.mktemp("code")
    repo, out = make_repo(root / "repo"), root / "out"
    metrics, printed = run_main(train_code, ["--data", str(repo), "--out-dir", str(out), *TINY])
    return repo, out, metrics, printed


def test_a_run_writes_the_harness_outputs_and_the_completion_scores(trained):
    repo, out, returned, printed = trained
    for name in ("ckpt.safetensors", "log.csv", "config.json", "model.safetensors", "tinyllm_tokenizer.json",
                 "manifest.json", "completions.jsonl", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(returned))  # what main returned is what it wrote
    # the harness's own entries ...
    assert metrics["iter"] == 6 and metrics["val_loss"] > 0 and metrics["n_params"] > 0
    assert metrics["config"]["block_size"] == 32
    # ... and the evaluation's, for the model and both baselines on the same lines
    n = metrics["eval"]["lines"]
    assert 5 <= n <= 12
    for name in ("model", "ngram", "repeat_previous_line"):
        assert metrics[name]["all_lines"]["n"] == n
        assert metrics[name]["code_lines"]["n"] == metrics["eval"]["code_lines"] < n  # docstrings are not code
        for subset in ("all_lines", "code_lines"):
            assert 0 <= metrics[name][subset]["exact_match"] <= 100
            assert 0 <= metrics[name][subset]["edit_similarity"] <= 100
    for name in ("model", "ngram"):
        assert metrics[name]["perplexity"] > 1 and 0 <= metrics[name]["token_accuracy"] <= 100
        assert metrics[name]["n_tokens"] == metrics["tokens"]["test"] - 1
    assert metrics["ngram"]["order"] == 3
    assert sum(s["files"] for s in metrics["splits"].values()) == 12  # tests/, binary and Latin-1 left out

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_digest"] == metrics["split_digest"]
    assert manifest["skipped"] == {"binary": ["blob.py"], "non_utf8": ["latin.py"], "empty": []}
    assert "skipped (binary, non-UTF-8, empty): 1 binary, 1 non_utf8" in printed
    assert not any(f["path"].startswith("tests/") for f in manifest["files"])
    test_files = {f["path"] for f in manifest["files"] if f["split"] == "test"}
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == n and {r["path"] for r in rows} <= test_files
    train_lines = {line.strip() for f in manifest["files"] if f["split"] == "train"
                   for line in (repo / f["path"]).read_text().splitlines()}
    for r in rows:
        truth = (repo / r["path"]).read_text().split("\n")[r["line"]]
        assert r["truth"] == truth and "\n" not in r["model"] + r["ngram"]
        assert r["seen_in_training"] == (truth.strip() in train_lines)
    seen = sum(r["seen_in_training"] for r in rows)
    assert metrics["eval"]["seen_in_training_lines"] == seen
    for name in ("model", "ngram", "repeat_previous_line"):  # the two parts of all lines, scored apart
        parts = [metrics[name].get(k, {"n": 0, "exact_match": 0.0}) for k in ("seen_in_training", "novel_lines")]
        assert parts[0]["n"] == seen and parts[0]["n"] + parts[1]["n"] == n
        hits = sum(p["exact_match"] * p["n"] for p in parts) / n
        assert hits == pytest.approx(metrics[name]["all_lines"]["exact_match"])
    assert "model" in printed and "n-gram (order 3)" in printed and "repeat_previous_line" in printed


def test_resume_continues_as_the_uninterrupted_run_and_refuses_a_changed_corpus(trained, train_code, tmp_path):
    repo, finished, _, _ = trained
    repo = shutil.copytree(repo, tmp_path / "repo")
    out = shutil.copytree(finished, tmp_path / "out")
    # the first run's schedule (its cosine ends at its --max-iters 6), continued to 9
    longer = [*with_option(TINY, "--max-iters", 9), "--lr-decay-iters", "6"]
    args = ["--data", str(repo), "--out-dir", str(out), *longer]

    with pytest.raises(SystemExit, match="already holds a training run.*--resume"):
        run_main(train_code, args)
    metrics, printed = run_main(train_code, [*args, "--resume"])
    assert "resumed from" in printed and "trained a BPE tokenizer" not in printed  # the checkpoint's tokenizer
    assert metrics["iter"] == 9

    straight = tmp_path / "straight"
    expected, _ = run_main(train_code, ["--data", str(repo), "--out-dir", str(straight), *longer])
    assert log_losses(out) == log_losses(straight)
    for key in ("val_loss", "model", "ngram", "repeat_previous_line"):
        assert metrics[key] == expected[key], key

    (repo / "pkg0" / "mod0.py").write_text("changed = 1\n")
    before = (out / "ckpt.safetensors").read_bytes()
    with pytest.raises(SystemExit, match=r"(?s)differs from the one this run started on.*1 edited: pkg0/mod0\.py"):
        run_main(train_code, [*with_option(args, "--max-iters", 12), "--resume"])
    with pytest.raises(SystemExit, match="differs from the one this run started on"):
        run_main(train_code, ["--data", str(repo), "--out-dir", str(out), "--eval-only"])
    assert (out / "ckpt.safetensors").read_bytes() == before


def test_eval_only_scores_the_saved_model_again(trained, train_code, tmp_path):
    repo, finished, first, _ = trained
    out = shutil.copytree(finished, tmp_path / "out")
    metrics, _ = run_main(train_code, ["--data", str(repo), "--out-dir", str(out), "--eval-only", "--eval-lines", "4",
                                       "--ngram-order", "2", "--max-line-tokens", "8", "--prompt-reserve", "8"])
    assert metrics["iter"] == first["iter"] and metrics["val_loss"] == first["val_loss"]  # training's, kept
    assert metrics["eval"]["lines"] == metrics["model"]["all_lines"]["n"] == 4 and metrics["ngram"]["order"] == 2
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert len((out / "completions.jsonl").read_text().splitlines()) == 4
    with pytest.raises(SystemExit, match="holds no finished run"):
        run_main(train_code, ["--data", str(repo), "--out-dir", str(tmp_path / "none"), "--eval-only"])


@pytest.mark.parametrize("files, message", [
    ({}, r"no usable \.py files under .*skipped: 0 binary, 0 non_utf8, 0 empty"),
    ({"a.py": b"\x00\x01", "b.py": b"\xff\xfe", "c.py": b""}, r"no usable .*1 binary, 1 non_utf8, 1 empty"),
    ({"one.py": b"x = 1\n"}, r"only 1 usable file.*one\.py.*nothing to hold out"),
    ({"one.py": b"x = 1\n", "two.py": b"\xff"}, r"only 1 usable file.*nothing to hold out"),
])
def test_bad_data_is_a_clear_error_and_touches_nothing(train_code, tmp_path, files, message):
    data = tmp_path / "data"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="^error: " + message):
        run_main(train_code, ["--data", str(data), "--out-dir", str(out), *TINY])
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == ["train.lock"]


@pytest.mark.parametrize("flag, value, message", [
    ("--eval-lines", 0, "--eval-lines must be at least 1, got 0"),
    ("--max-line-tokens", 0, "--max-line-tokens must be at least 1, got 0"),
    ("--ngram-order", 1, "--ngram-order must be at least 2, got 1"),
    ("--prompt-reserve", 32, "--prompt-reserve 32 must be below --block-size 32"),
])
def test_evaluation_options_are_checked_before_training(train_code, tmp_path, capsys, flag, value, message):
    """They are used only after training: a bad one used to fail there (or score NaN or 0), the run
    trained but not saved."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        run_main(train_code, ["--data", str(tmp_path), "--out-dir", str(out), *with_option(TINY, flag, value)])
    assert err.value.code == 2 and f"error: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_a_single_file_as_data_is_a_clear_error(train_code, tmp_path):
    (tmp_path / "one.py").write_text("x = 1\n")
    with pytest.raises(SystemExit, match="^error: .*one.py is a single file.*nothing to hold out"):
        run_main(train_code, ["--data", str(tmp_path / "one.py"), "--out-dir", str(tmp_path / "out"), *TINY])


def test_complete_code_from_a_file_line_and_from_stdin(trained, monkeypatch, tmp_path):
    repo, out, _, _ = trained
    complete_code = load_example("complete_code")
    src = repo / "pkg0" / "mod0.py"
    _, printed = run_main(complete_code, ["--model-dir", str(out), "--file", str(src), "--line", "6", "--compare",
                                          "--max-line-tokens", "6"])
    lines = printed.split("\n")
    assert "\n" not in lines[0] and lines[1:3] == [f"--- line 6 of {src} really is:", "    total = 0"]

    monkeypatch.setattr(sys, "stdin", io.StringIO("def f(x):\n"))
    _, printed = run_main(complete_code, ["--model-dir", str(out), "--max-lines", "2", "--max-line-tokens", "4"])
    assert 1 <= len(printed.rstrip("\n").split("\n")) <= 2

    with pytest.raises(SystemExit, match="--line 99 is outside"):
        run_main(complete_code, ["--model-dir", str(out), "--file", str(src), "--line", "99"])
    with pytest.raises(SystemExit, match="holds no saved model"):
        run_main(complete_code, ["--model-dir", str(repo), "--file", str(src), "--line", "2"])
    (tmp_path / "config.json").write_text('{"model_type": "tinyllm-encoder-decoder"}')  # a model of another kind
    (tmp_path / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    with pytest.raises(SystemExit, match=r"^error: .*config.json: holds a model of type 'tinyllm-encoder-decoder'"):
        run_main(complete_code, ["--model-dir", str(tmp_path), "--file", str(src), "--line", "2"])
