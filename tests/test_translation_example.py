"""examples/train_translation.py and examples/translate.py, end to end on tiny runs (seconds):
train -> refuse a rerun -> resume (the same model as an uninterrupted run) -> translate, and the
user's mistakes as clear errors."""
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

import tinyllm

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--n-encoder-layers", "1", "--n-decoder-layers", "1", "--n-head", "2", "--d-model", "16", "--d-ff", "32",
        "--batch-size", "8", "--eval-interval", "2", "--eval-iters", "1", "--warmup-iters", "1", "--num-beams", "2",
        "--no-progress"]
NUMBERS = ["--n-train", "300", "--n-val", "20", "--n-test", "30"]


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The examples run their kernels on one thread (--num-threads 1); other tests expect the default."""
    n = tinyllm.get_num_threads()
    yield
    tinyllm.set_num_threads(n)


def train(out, *args):
    return load_example("train_translation").main(["--out-dir", str(out), *NUMBERS, *TINY, *args])


def test_train_refuse_resume_translate(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    metrics = train(out, "--max-iters", "4", "--lr-decay-iters", "6")  # the schedule of a 6-step run, cut at 4
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["iter"] == 4 and saved["bleu"] == metrics["bleu"]
    for key in ("val_loss", "val_perplexity", "wall_s", "total_s"):
        assert np.isfinite(saved[key]) and saved[key] >= 0, key
    assert set(saved["bleu"]) == {"greedy", "beam", "num_beams"} and 0 <= saved["bleu"]["greedy"] <= 100
    assert set(saved["exact_match"]) == {"greedy", "beam"}
    assert saved["test"]["n_sources"] == 30 and saved["test"]["n_too_long"] == 0
    assert saved["val_perplexity"] == pytest.approx(np.exp(saved["val_loss"]))

    with pytest.raises(SystemExit, match="already holds a training run"):
        train(out, "--max-iters", "6")
    capsys.readouterr()
    resumed = train(out, "--max-iters", "6", "--lr-decay-iters", "6", "--resume")
    assert "resumed from" in capsys.readouterr().out and resumed["iter"] == 6
    straight = tmp_path / "straight"
    train(straight, "--max-iters", "6")
    # the data, the tokenizer (from the checkpoint) and the batches after the checkpoint are the same
    assert (out / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    assert resumed["val_loss"] == json.loads((straight / "metrics.json").read_text())["val_loss"]

    # the Hugging Face workflow of the issue, then translate.py, which must print the same
    from tinyllm import AutoModelForSeq2SeqLM, AutoTokenizer

    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    sources = ["three hundred five", "seventy-one"]
    expected = [tokenizer.decode(model.generate(np.array([tokenizer.encode(s)]))[0], skip_special_tokens=True)
                for s in sources]
    assert tokenizer.encode(sources[0])[-1] == tokenizer.eos_token_id
    capsys.readouterr()
    load_example("translate").main(["--model-dir", str(out), *sources])
    assert capsys.readouterr().out.splitlines() == expected
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{sources[1]}\n\n  {sources[0]}  \n"))
    load_example("translate").main(["--model-dir", str(out)])
    assert capsys.readouterr().out.splitlines() == expected[::-1]


def test_translate_refuses_a_source_longer_than_the_model_reads(tmp_path):
    out = tmp_path / "out"
    train(out, "--max-iters", "2")
    limit = json.loads((out / "config.json").read_text())["max_src_len"]
    long_source = " ".join(["seven hundred seventy-seven thousand"] * 4)
    with pytest.raises(SystemExit, match=rf"source 2 \('seven hundred.*'\) is \d+ tokens long .* at most {limit} "
                                         r"\(max_src_len in .*config.json\)"):
        load_example("translate").main(["--model-dir", str(out), "five", long_source])
    with pytest.raises(SystemExit, match="error: .*no-such-dir"):
        load_example("translate").main(["--model-dir", str(tmp_path / "no-such-dir"), "five"])


def test_bad_options_are_errors_naming_them(tmp_path):
    out = tmp_path / "out"
    train(out, "--max-iters", "1")
    translate = load_example("translate").main
    with pytest.raises(SystemExit, match=r"^error: --batch-size must be at least 1, got 0$"):
        translate(["--model-dir", str(out), "--batch-size", "0", "five"])
    too_many = tinyllm.get_num_threads() + 100  # beyond numba's pool
    with pytest.raises(SystemExit, match=rf"^error: set_num_threads: n={too_many} is outside"):
        translate(["--model-dir", str(out), "--num-threads", str(too_many), "five"])
    with pytest.raises(SystemExit, match=r"^error: generate: max_new_tokens must be an integer >= 1, got 0$"):
        translate(["--model-dir", str(out), "--max-new-tokens", "0", "five"])  # 0 is not "the default"
    with pytest.raises(SystemExit, match=rf"^error: set_num_threads: n={too_many} is outside"):
        train(tmp_path / "other", "--max-iters", "1", "--num-threads", str(too_many))
    assert not (tmp_path / "other").exists()


def test_tsv_corpus(tmp_path):
    rows = [f"{w} {i}\t{w.upper()} {i}\tCC-BY" for i in range(40) for w in ("cat", "dog")]
    rows += ["cat 0\tCHAT 0"]  # a second translation of a source: a second reference, in the same split
    data = tmp_path / "pairs.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    metrics = load_example("train_translation").main(
        ["--data", str(data), "--out-dir", str(out), "--vocab-size", "300", "--test-fraction", "0.1",
         "--max-iters", "2", *TINY])
    assert metrics["test"]["n_sources"] == 8 and metrics["task"] == str(data)
    assert (out / "model.safetensors").is_file() and (out / "tinyllm_tokenizer.json").is_file()


def test_malformed_tsv_line_is_named_and_nothing_is_written(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab here\n", encoding="utf-8")
    out = tmp_path / "o2"
    with pytest.raises(SystemExit, match=r"error: .*bad.tsv:2: no tab in 'no tab here'"):
        load_example("train_translation").main(["--data", str(bad), "--out-dir", str(out), "--max-iters", "2", *TINY])
    assert not any(p.name != "train.lock" for p in out.glob("*"))  # only the lock it took: no run, no model


@pytest.mark.parametrize("flag", ["--n-train", "--n-val", "--num-beams", "--eval-batch-size"])
def test_train_refuses_options_below_one_before_training(tmp_path, capsys, flag):
    """--num-beams and --eval-batch-size are used only after training; a 0 used to fail there, with the
    run trained but not saved (and --n-train 0 said 'no pair fits max_src_len=64')."""
    with pytest.raises(SystemExit) as err:
        train(tmp_path / "out", "--max-iters", "1", flag, "0")
    assert err.value.code == 2 and f"error: {flag} must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
