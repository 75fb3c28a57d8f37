"""Smoke tests of examples/train_code.py and examples/complete_code.py on a generated folder of code."""
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_repo(root, n_files=12):
    for i in range(n_files):
        body = "".join(f"    total = total + x * {j}\n" for j in range(i % 4 + 2))
        path = root / f"pkg{i % 3}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'"""Module {i}."""\n\n\ndef f{i}(x):\n    """Scale x."""\n    total = 0\n{body}'
                        f"    return total\n\n\nclass C{i}:\n    def get(self):\n        return {i}\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_all.py").write_text("def test():\n    assert True\n")
    (root / "blob.py").write_bytes(b"\x00\x01binary")
    return root


TINY = ["--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
        "--batch-size", "4", "--max-iters", "6", "--eval-interval", "3", "--eval-iters", "2", "--warmup-iters", "2",
        "--eval-lines", "12", "--max-line-tokens", "8", "--prompt-reserve", "8", "--ngram-order", "3",
        "--no-progress"]


def test_train_code_runs_end_to_end_resumes_and_refuses_a_changed_corpus(tmp_path, capsys):
    train_code = load_example("train_code")
    repo = make_repo(tmp_path / "repo")
    out = tmp_path / "out"
    train_code.main(["--data", str(repo), "--out-dir", str(out), *TINY])

    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("model", "ngram", "repeat_previous_line"):
        for subset in ("all_lines", "code_lines"):
            scores = metrics[name][subset]
            assert 0 <= scores["exact_match"] <= 100 and 0 <= scores["edit_similarity"] <= 100
        assert 5 <= metrics[name]["all_lines"]["n"] <= 12 and metrics[name]["all_lines"]["n"] == metrics["eval"]["lines"]
        assert metrics[name]["code_lines"]["n"] == metrics["eval"]["code_lines"] < metrics["eval"]["lines"]
    for name in ("model", "ngram"):
        assert metrics[name]["perplexity"] > 1 and 0 <= metrics[name]["token_accuracy"] <= 100
    assert metrics["ngram"]["order"] == 3 and metrics["iter"] == 6
    assert metrics["splits"]["train"]["files"] + metrics["splits"]["val"]["files"] + \
        metrics["splits"]["test"]["files"] == 12  # tests/ and the binary file left out
    manifest = json.loads(Path(metrics["manifest"]).read_text())
    assert manifest["skipped"]["binary"] == ["blob.py"]
    assert not any(f["path"].startswith("tests/") for f in manifest["files"])
    test_files = {f["path"] for f in manifest["files"] if f["split"] == "test"}
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["eval"]["lines"] and {r["path"] for r in rows} <= test_files
    assert all({"truth", "model", "ngram", "repeat_previous_line"} <= set(r) for r in rows)
    assert (out / "config.json").is_file() and (out / "tinyllm_tokenizer.json").is_file()

    with pytest.raises(SystemExit, match="already holds a training run"):
        train_code.main(["--data", str(repo), "--out-dir", str(out), *TINY])

    resumed = [a if a != "6" or TINY[TINY.index(a) - 1] != "--max-iters" else "9" for a in TINY]
    train_code.main(["--data", str(repo), "--out-dir", str(out), "--resume", *resumed])
    assert json.loads((out / "metrics.json").read_text())["iter"] == 9

    train_code.main(["--data", str(repo), "--out-dir", str(out), "--eval-only", "--eval-lines", "4",
                     "--ngram-order", "2", "--max-line-tokens", "8", "--prompt-reserve", "8"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iter"] == 9 and metrics["eval"]["lines"] == metrics["model"]["all_lines"]["n"] == 4
    assert metrics["ngram"]["order"] == 2

    (repo / "pkg0" / "mod0.py").write_text("changed = 1\n")
    with pytest.raises(SystemExit, match=r"(?s)differs from the one this run started on.*1 edited: pkg0/mod0\.py"):
        train_code.main(["--data", str(repo), "--out-dir", str(out), "--resume", *resumed])
    with pytest.raises(SystemExit, match=r"(?s)differs from the one this run started on"):
        train_code.main(["--data", str(repo), "--out-dir", str(out), "--eval-only"])


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "no usable .py files"),
    (lambda root: (root / "one.py").write_text("x = 1\n"), "nothing to hold out"),
])
def test_train_code_bad_data_is_a_clear_error(tmp_path, setup, message):
    train_code = load_example("train_code")
    data = tmp_path / "data"
    data.mkdir()
    setup(data)
    with pytest.raises(SystemExit, match=message):
        train_code.main(["--data", str(data), "--out-dir", str(tmp_path / "out"), *TINY])
    assert not (tmp_path / "out" / "ckpt.safetensors").exists()


def test_complete_code_from_a_file_line_and_from_stdin(tmp_path, capsys, monkeypatch):
    train_code = load_example("train_code")
    complete_code = load_example("complete_code")
    repo = make_repo(tmp_path / "repo")
    out = tmp_path / "out"
    train_code.main(["--data", str(repo), "--out-dir", str(out), *TINY])
    capsys.readouterr()

    src = repo / "pkg0" / "mod0.py"
    complete_code.main(["--model-dir", str(out), "--file", str(src), "--line", "6", "--compare",
                        "--max-line-tokens", "6"])
    printed = capsys.readouterr().out.split("\n")
    assert printed[1] == f"--- line 6 of {src} really is:" and printed[2] == "    total = 0"

    monkeypatch.setattr(sys, "stdin", io.StringIO("def f(x):\n"))
    complete_code.main(["--model-dir", str(out), "--max-lines", "2", "--max-line-tokens", "4"])
    assert len(capsys.readouterr().out.rstrip("\n").split("\n")) <= 2

    with pytest.raises(SystemExit, match="--line 99 is outside"):
        complete_code.main(["--model-dir", str(out), "--file", str(src), "--line", "99"])
    with pytest.raises(SystemExit, match="holds no saved model"):
        complete_code.main(["--model-dir", str(tmp_path), "--file", str(src), "--line", "2"])
