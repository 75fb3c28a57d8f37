"""examples/train_translation.py and examples/translate.py, end to end on tiny runs (seconds)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import tinyllm.models

if not hasattr(tinyllm.models, "EncoderDecoderTransformer"):
    pytest.skip("the encoder-decoder model is not in this tree yet", allow_module_level=True)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--n-encoder-layers", "1", "--n-decoder-layers", "1", "--n-head", "2", "--d-model", "16", "--d-ff", "32",
        "--batch-size", "8", "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--warmup-iters", "1",
        "--num-beams", "2", "--no-progress"]


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_number_task_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    load_example("train_translation").main(
        ["--out-dir", str(out), "--n-train", "300", "--n-val", "20", "--n-test", "30", *TINY])
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in ("bleu", "exact_match", "val_loss", "val_perplexity", "wall_s"):
        assert key in metrics
    assert set(metrics["bleu"]) >= {"greedy", "beam"} and 0 <= metrics["bleu"]["greedy"] <= 100
    assert metrics["test"]["n_test_sources"] == 30
    assert metrics["val_perplexity"] == pytest.approx(2.718281828459045 ** metrics["val_loss"])

    from tinyllm import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.encode("three hundred five", return_tensors="np")
    assert ids[0, -1] == tokenizer.eos_token_id
    output = model.generate(ids, max_new_tokens=5)
    assert output[0, 0] == tokenizer.bos_token_id
    assert isinstance(tokenizer.decode(output[0], skip_special_tokens=True), str)

    capsys.readouterr()
    load_example("translate").main(["--model-dir", str(out), "three hundred five", "seventy-one"])
    assert len(capsys.readouterr().out.strip("\n").split("\n")) == 2


def test_tsv_corpus_and_bad_line(tmp_path):
    rows = [f"{w} {i}\t{w.upper()} {i}\tCC-BY" for i in range(40) for w in ("cat", "dog")]
    data = tmp_path / "pairs.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    load_example("train_translation").main(
        ["--data", str(data), "--out-dir", str(out), "--vocab-size", "300", "--test-fraction", "0.1", *TINY])
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test"]["n_test_sources"] == 8

    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="bad.tsv:2: no tab"):
        load_example("train_translation").main(["--data", str(bad), "--out-dir", str(tmp_path / "o2"), *TINY])
    assert not (tmp_path / "o2").exists()
