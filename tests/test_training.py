"""The training loop on a small generated corpus (never the real one): the loss falls, runs are
reproducible bit for bit, resuming equals not stopping, divergence leaves the last checkpoint
intact, and the example scripts work end to end.
"""
import csv
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from tinyllm import BPETokenizer, CharTokenizer, nn
from tinyllm import functional as F
from tinyllm.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tinyllm.models import GPT, GPTConfig
from tinyllm.training import TrainConfig, Trainer, TrainingDiverged, evaluate_split

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"{i % 7} the quick brown fox {'jumps' if i % 2 else 'leaps'} over the lazy dog.\n" for i in range(80))


@pytest.fixture(scope="module")
def corpus():
    tok = CharTokenizer.from_text(TEXT)
    ids = np.asarray(tok.encode(TEXT), dtype=np.int64)
    n = int(0.9 * len(ids))
    return tok, ids[:n], ids[n:]


def make_trainer(corpus, out_dir, max_iters, dropout=0.0, model_seed=0, **cfg):
    tok, train_ids, val_ids = corpus
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                          dropout=dropout), seed=model_seed)
    settings = dict(out_dir=str(out_dir), max_iters=max_iters, batch_size=4, learning_rate=1e-2, min_lr=1e-3,
                    warmup_iters=3, lr_decay_iters=20, eval_interval=5, eval_iters=2, sample_tokens=8,
                    progress=False, seed=0)
    settings.update(cfg)
    return Trainer(model, train_ids, val_ids, TrainConfig(**settings), tok)


def quiet(_msg):
    pass


def step_rows(path):
    with open(path, newline="") as f:
        return [(int(r["iter"]), r["loss"]) for r in csv.DictReader(f) if r["loss"]]


def all_rows(path):
    """Every row of log.csv without its timings: (iter, loss, lr, grad_norm, eval train, eval val)."""
    with open(path, newline="") as f:
        return [(int(r["iter"]), r["loss"], r["lr"], r["grad_norm"], r["eval_train_loss"], r["eval_val_loss"])
                for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------------------------
# learning


def test_loss_falls_from_log_vocab_to_below_half(corpus, tmp_path):
    tok = corpus[0]
    trainer = make_trainer(corpus, tmp_path, max_iters=150, learning_rate=1e-2, lr_decay_iters=150,
                           eval_interval=150, batch_size=8)
    result = trainer.train(log=quiet)
    losses = np.array([loss for _, loss in trainer.history])
    assert len(losses) == 150 and np.isfinite(losses).all()
    assert abs(losses[0] - math.log(tok.vocab_size)) < 0.3
    assert losses[-10:].mean() < 0.5 * math.log(tok.vocab_size)
    assert result["val_loss"] < 0.5 * math.log(tok.vocab_size)
    assert result["iter"] == 150 and result["tokens_per_sec"] > 0 and result["wall_s"] > 0


def test_same_seed_gives_bit_identical_losses_and_samples(corpus, tmp_path):
    a = make_trainer(corpus, tmp_path / "a", max_iters=12, dropout=0.1)
    b = make_trainer(corpus, tmp_path / "b", max_iters=12, dropout=0.1)
    ra, rb = a.train(log=quiet), b.train(log=quiet)
    la = np.array([loss for _, loss in a.history])
    lb = np.array([loss for _, loss in b.history])
    assert np.array_equal(la, lb)
    assert ra["val_loss"] == rb["val_loss"]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert np.array_equal(p.data, q.data)
    assert a.sample(max_new_tokens=30) == b.sample(max_new_tokens=30)
    c = make_trainer(corpus, tmp_path / "c", max_iters=12, dropout=0.1, seed=1)
    c.train(log=quiet)
    assert not np.array_equal(la, np.array([loss for _, loss in c.history]))


def test_resume_reproduces_the_uninterrupted_run_exactly(corpus, tmp_path):
    """Stop at 12 (not an eval point), resume to 20: weights and losses equal the straight 20-step
    run, with dropout on so the dropout generator's state must be restored too."""
    full = make_trainer(corpus, tmp_path / "full", max_iters=20, dropout=0.1)
    full.train(log=quiet)

    first = make_trainer(corpus, tmp_path / "split", max_iters=12, dropout=0.1)
    first.train(log=quiet)
    assert load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)[0]["iter"] == 12
    messages = []
    second = make_trainer(corpus, tmp_path / "split", max_iters=20, dropout=0.1, model_seed=99)  # other init
    second.train(resume=True, log=messages.append)
    assert any("resumed" in m and "12" in m for m in messages)

    assert second.iter_num == 20
    assert full.history == first.history + second.history
    for (name, p), (_, q) in zip(full.model.named_parameters(), second.model.named_parameters()):
        assert np.array_equal(p.data, q.data), name
    for (i, s), (j, t) in zip(full.optimizer.state_dict()["state"].items(),
                              second.optimizer.state_dict()["state"].items()):
        assert np.array_equal(s["exp_avg"], t["exp_avg"]) and s["step"] == t["step"] == 20


def test_log_after_resume_reads_as_one_uninterrupted_run(corpus, tmp_path):
    """Every row, evaluations included, with the losses to the last bit. The first run stops at 12,
    between evaluations (every 5): its closing evaluation must neither stay in the log nor shift
    the evaluation batches of the resumed run."""
    full = make_trainer(corpus, tmp_path / "full", max_iters=20, dropout=0.1)
    full.train(log=quiet)
    make_trainer(corpus, tmp_path / "split", max_iters=12, dropout=0.1).train(log=quiet)
    assert 12 in [r[0] for r in all_rows(tmp_path / "split" / "log.csv") if r[5]]  # the closing evaluation
    make_trainer(corpus, tmp_path / "split", max_iters=20, dropout=0.1).train(resume=True, log=quiet)
    resumed, straight = all_rows(tmp_path / "split" / "log.csv"), all_rows(tmp_path / "full" / "log.csv")
    assert [r[0] for r in straight if r[5]] == [0, 5, 10, 15, 20]
    assert resumed == straight
    assert [float(r[1]) for r in straight if r[1]] == [loss for _, loss in full.history]  # exact, not rounded


def test_log_after_resume_from_a_kill_mid_interval_drops_the_lost_steps(corpus, tmp_path):
    """A run killed after step 13 left rows 11..13 behind a checkpoint of 10 (and half a row):
    the resumed log has them once, as the uninterrupted run."""
    full = make_trainer(corpus, tmp_path / "full", max_iters=15)
    full.train(log=quiet)
    killed = tmp_path / "killed"
    make_trainer(corpus, killed, max_iters=10).train(log=quiet)
    rows = (tmp_path / "full" / "log.csv").read_text().splitlines(keepends=True)
    lost = [r for r in rows[1:] if 10 < int(r.split(",")[0]) <= 13]
    with open(killed / "log.csv", "a") as f:
        f.writelines(lost)
        f.write("1")  # a row cut off by the kill, looking like iteration 1
    make_trainer(corpus, killed, max_iters=15).train(resume=True, log=quiet)
    assert all_rows(killed / "log.csv") == all_rows(tmp_path / "full" / "log.csv")


def test_log_csv_has_a_row_per_step_and_per_evaluation(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, max_iters=10)
    trainer.train(log=quiet)
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["iter", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed_s", "eval_train_loss",
                             "eval_val_loss"]
    steps = [r for r in rows if r["loss"]]
    evals = [r for r in rows if r["eval_val_loss"]]
    assert [int(r["iter"]) for r in steps] == list(range(1, 11))
    assert [int(r["iter"]) for r in evals] == [0, 5, 10]
    assert [float(r["loss"]) for r in steps] == pytest.approx([loss for _, loss in trainer.history], rel=1e-5)
    assert all(float(r["lr"]) > 0 and float(r["grad_norm"]) > 0 for r in steps)


def test_evaluate_split_is_the_mean_loss_over_every_token(corpus):
    tok, _, val = corpus
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    loss, ppl = evaluate_split(model, val, block_size=16, batch_size=3)
    total = 0.0
    for start in range(0, len(val) - 1, 16):  # every target exactly once
        x = val[None, start:min(start + 16, len(val) - 1)]
        y = val[None, start + 1:start + 1 + x.shape[1]]
        total += model(x, y)[1].item() * y.size
    assert loss == pytest.approx(total / (len(val) - 1), rel=1e-5)
    assert ppl == pytest.approx(math.exp(loss))
    assert model.training  # restored


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iters=-1), "max_iters must be an integer >= 0, got -1"),
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(eval_interval=2.5), "eval_interval.*2.5"),
    (dict(learning_rate=0.0), "learning_rate > 0"),
    (dict(weight_decay=-1.0), "weight_decay must be >= 0, got -1.0"),
    (dict(weight_decay=float("nan")), "weight_decay must be >= 0, got nan"),
])
def test_train_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_lr_decay_iters_defaults_to_max_iters():
    assert TrainConfig(max_iters=77).lr_decay_iters == 77


# ----------------------------------------------------------------------------------------------
# divergence


def test_nan_loss_stops_training_and_leaves_the_checkpoint_intact(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, max_iters=20)
    ckpt = tmp_path / CHECKPOINT_NAME
    saved = {}
    original_save = trainer.save_checkpoint

    def save_then_poison():
        original_save()
        saved["bytes"] = ckpt.read_bytes()
        saved["iter"] = trainer.iter_num
        trainer.model.transformer.h[0].mlp.c_fc.weight.data[0, 0] = np.nan  # the next loss is NaN

    trainer.save_checkpoint = save_then_poison
    with pytest.raises(TrainingDiverged) as err:
        trainer.train(log=quiet)
    message = str(err.value)
    assert "iter 5" in message and "nan" in message.lower()
    assert "last good checkpoint" in message and str(ckpt) in message and "untouched" in message
    assert saved["iter"] == 5 and ckpt.read_bytes() == saved["bytes"]
    meta, state, _ = load_checkpoint(ckpt)
    assert meta["iter"] == 5 and all(np.isfinite(v).all() for v in state.values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_learning_rate_after_resume_diverges_and_keeps_the_checkpoint(corpus, tmp_path):
    make_trainer(corpus, tmp_path, max_iters=5).train(log=quiet)
    ckpt = tmp_path / CHECKPOINT_NAME
    before = ckpt.read_bytes()
    trainer = make_trainer(corpus, tmp_path, max_iters=20, learning_rate=1e30, min_lr=1e30, warmup_iters=0)
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint.*untouched.*--resume"):
        trainer.train(resume=True, log=quiet)
    assert trainer.iter_num < 10  # stopped before the next evaluation
    assert ckpt.read_bytes() == before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_before_any_checkpoint_says_so(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, max_iters=20, learning_rate=1e30, min_lr=1e30, warmup_iters=0)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet"):
        trainer.train(log=quiet)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_nan_weights_at_an_eval_point_never_overwrite_the_good_checkpoint(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, max_iters=20)
    ckpt = tmp_path / CHECKPOINT_NAME
    original_step = trainer.optimizer.step
    saved = {}

    def step_then_poison():
        original_step()
        if trainer.iter_num == 9:  # this step leads to iter 10, an evaluation + checkpoint point
            saved["bytes"] = ckpt.read_bytes()
            trainer.model.transformer.h[0].mlp.c_fc.weight.data[0, 0] = np.nan

    trainer.optimizer.step = step_then_poison
    with pytest.raises(TrainingDiverged, match=r"iter 10.*nan.*last good checkpoint.*untouched"):
        trainer.train(log=quiet)
    assert ckpt.read_bytes() == saved["bytes"]
    assert load_checkpoint(ckpt)[0]["iter"] == 5


# ----------------------------------------------------------------------------------------------
# examples/train_shakespeare.py and examples/sample.py, in-process on a tiny generated text


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples():
    return _load_example("train_shakespeare"), _load_example("sample")


def _train_args(data, out_dir, max_iters=20):
    return ["--data", str(data), "--max-iters", str(max_iters), "--eval-interval", "10", "--eval-iters", "2",
            "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
            "--out-dir", str(out_dir), "--no-progress", "--sample-tokens", "20", "--warmup-iters", "2"]


def test_train_example_end_to_end_refuses_rerun_resumes_and_samples(examples, tmp_path, capsys):
    train, sample = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"

    train.main(_train_args(data, out))
    printed = capsys.readouterr().out
    assert "val loss" in printed
    # a sample at each evaluation (steps 0, 10, 20); the final report does not show the last one again
    assert printed.count("--- sample ---") == 3
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("iter", "train_loss", "val_loss", "val_perplexity", "tokens_per_sec", "wall_s"):
        assert key in metrics and metrics[key] is not None, key
    assert metrics["iter"] == 20
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert metrics["tokens_per_sec"] > 0 and metrics["wall_s"] > 0
    assert 0 < metrics["val_loss"] < 1.1 * math.log(len(set(TEXT)))
    for name in (CHECKPOINT_NAME, "log.csv", "config.json", "model.safetensors"):
        assert (out / name).is_file(), name

    # a second run into the same directory refuses, and touches nothing
    ckpt_bytes = (out / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(SystemExit) as refused:
        train.main(_train_args(data, out))
    assert refused.value.code not in (0, None)
    assert "already holds a training run" in str(refused.value.code) and "--resume" in str(refused.value.code)
    assert (out / CHECKPOINT_NAME).read_bytes() == ckpt_bytes

    # --resume continues to a higher max_iters (evaluating at step 30 only: step 20's was done)
    capsys.readouterr()
    train.main(_train_args(data, out, max_iters=30) + ["--resume"])
    assert json.loads((out / "metrics.json").read_text())["iter"] == 30
    assert load_checkpoint(out / CHECKPOINT_NAME)[0]["iter"] == 30
    assert capsys.readouterr().out.count("--- sample ---") == 1
    # resuming a finished run evaluates nothing; its report shows the final model's sample
    train.main(_train_args(data, out, max_iters=30) + ["--resume"])
    assert capsys.readouterr().out.count("--- sample ---") == 1

    # sample.py prints text made of the corpus' characters
    sample.main(["--model-dir", str(out), "--prompt", "the ", "--max-new-tokens", "25", "--seed", "1"])
    text = capsys.readouterr().out
    first = text.split("\n" + "-" * 40)[0]
    assert first.startswith("the ") and len(first) == 4 + 25  # one character per token
    assert set(first) <= set(TEXT)
    sample.main(["--model-dir", str(out), "--prompt", "the ", "--max-new-tokens", "10", "--temperature", "0"])
    greedy = capsys.readouterr().out
    sample.main(["--model-dir", str(out), "--prompt", "the ", "--max-new-tokens", "10", "--temperature", "0",
                 "--no-cache"])
    assert capsys.readouterr().out == greedy


def test_every_shared_option_states_its_default_once():
    import argparse

    from tinyllm import cli

    parser = argparse.ArgumentParser()
    cli.add_training_args(parser, out_dir="out-x")
    helps = {a.option_strings[0]: a.help % {"default": a.default}
             for a in parser._actions if a.help and a.option_strings}
    for flag in ("--max-iters", "--lr-decay-iters", "--sample-prompt", "--out-dir"):
        assert helps[flag].count("(default: ") == 1, (flag, helps[flag])
    assert helps["--out-dir"].endswith("(default: out-x)")


def test_train_example_runs_with_the_default_warmup_and_few_iters(examples, tmp_path, capsys):
    train, _ = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    args = _train_args(data, tmp_path / "run")[:-2]  # without --warmup-iters
    assert "--warmup-iters" not in args
    train.main(args)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["iter"] == 20
    capsys.readouterr()


def test_train_example_overwrite_starts_afresh(examples, tmp_path, capsys):
    train, _ = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    train.main(_train_args(data, out, max_iters=10))
    train.main(_train_args(data, out, max_iters=10) + ["--overwrite"])
    assert json.loads((out / "metrics.json").read_text())["iter"] == 10
    capsys.readouterr()


def test_train_example_missing_data_file_is_a_clear_error(examples, tmp_path):
    train, _ = examples
    missing = tmp_path / "nope.txt"
    with pytest.raises(SystemExit) as err:
        train.main(_train_args(missing, tmp_path / "run"))
    assert "nope.txt" in str(err.value.code) and "does not exist" in str(err.value.code)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_train_example_out_dir_that_cannot_be_a_directory_is_a_clear_error(examples, tmp_path):
    train, _ = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    for out in (data, data / "sub"):  # a file of that name; a path under a file
        with pytest.raises(SystemExit) as err:
            train.main(_train_args(data, out))
        message = str(err.value.code)
        assert message.startswith(f"error: cannot use {out} as the output directory (--out-dir): "), message
        assert message.endswith("choose another --out-dir")
    assert data.read_text(encoding="utf-8") == TEXT


def test_train_example_resume_without_a_checkpoint_starts_fresh_and_says_so(examples, tmp_path, capsys):
    """A preemptible job runs the same --resume command every time, the first time too."""
    train, _ = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    train.main(_train_args(data, tmp_path / "fresh", max_iters=10) + ["--resume"])
    printed = capsys.readouterr().out
    assert f"--resume: no checkpoint in {tmp_path / 'fresh'} yet" in printed and "starting a fresh run" in printed
    train.main(_train_args(data, tmp_path / "plain", max_iters=10))
    capsys.readouterr()
    assert all_rows(tmp_path / "fresh" / "log.csv") == all_rows(tmp_path / "plain" / "log.csv")
    assert (tmp_path / "fresh" / "model.safetensors").read_bytes() == (tmp_path / "plain" / "model.safetensors").read_bytes()


def test_train_example_resume_with_other_model_options_is_refused_and_changes_nothing(examples, tmp_path, capsys):
    train, _ = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    train.main(_train_args(data, out, max_iters=10))
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "train.lock"}
    args = _train_args(data, out, max_iters=20) + ["--resume"]
    args[args.index("--n-embd") + 1] = "32"
    with pytest.raises(SystemExit) as err:
        train.main(args)
    message = str(err.value.code)
    assert message.startswith("error: ") and "model config" in message and "n_embd: 16 there, 32 here" in message
    with pytest.raises(SystemExit) as err:
        train.main(_train_args(data, out, max_iters=20) + ["--resume", "--tokenizer", "bpe"])
    assert "was trained with a CharTokenizer, not --tokenizer bpe" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        train.main(_train_args(data, out, max_iters=20) + ["--resume", "--overwrite"])
    assert "contradict" in str(err.value.code)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "train.lock"} == before


def test_train_example_on_a_text_without_newlines_trains_and_samples(examples, tmp_path, capsys):
    """nanoGPT's sample prompt is a newline; a text without one used to crash at step 0."""
    train, sample = examples
    data = tmp_path / "flat.txt"
    flat = TEXT.replace("\n", " ")
    data.write_text(flat, encoding="utf-8")
    train.main(_train_args(data, tmp_path / "run", max_iters=10))
    printed = capsys.readouterr().out
    sample_text = printed.split("--- sample ---\n")[-1]
    assert sample_text.startswith(flat[0]) and len(sample_text.rstrip("\n")) >= 20  # starts from the first token
    sample.main(["--model-dir", str(tmp_path / "run"), "--max-new-tokens", "5"])
    assert len(capsys.readouterr().out.split("\n")[0]) == 6  # token 0 and five more


def test_sample_tokens_zero_skips_every_sample(examples, tmp_path, capsys, monkeypatch):
    train, _ = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")

    def no_generation(*args, **kwargs):
        raise AssertionError("generate() was called with --sample-tokens 0")

    monkeypatch.setattr(GPT, "generate", no_generation)
    args = _train_args(data, tmp_path / "run", max_iters=10)
    args[args.index("--sample-tokens") + 1] = "0"
    train.main(args)
    assert "--- sample ---" not in capsys.readouterr().out


def test_a_sample_prompt_the_tokenizer_cannot_encode_fails_before_training(examples, tmp_path, capsys):
    train, _ = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    with pytest.raises(SystemExit) as err:
        train.main(_train_args(data, tmp_path / "run", max_iters=10) + ["--sample-prompt", "ROMEO:"])
    message = str(err.value.code)
    assert "sample prompt 'ROMEO:' cannot be encoded" in message and "'R'" in message
    assert not (tmp_path / "run" / "log.csv").exists() and not (tmp_path / "run" / CHECKPOINT_NAME).exists()
    train.main(_train_args(data, tmp_path / "ok", max_iters=10) + ["--sample-prompt", "the "])
    assert "--- sample ---\nthe " in capsys.readouterr().out


def test_bpe_through_training_checkpoint_resume_and_sample(examples, tmp_path, capsys):
    """--tokenizer bpe: the tokenizer trained on the text rides in the checkpoint, --resume takes it
    from there (not trained again), the resumed run equals the straight one, and sample.py reads
    the saved directory."""
    train, sample = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    bpe = ["--tokenizer", "bpe", "--vocab-size", "300", "--lr-decay-iters", "20"]  # one schedule for all runs
    train.main(_train_args(data, tmp_path / "straight", max_iters=20) + bpe)
    train.main(_train_args(data, tmp_path / "split", max_iters=12) + bpe)
    meta = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)[0]
    assert meta["tokenizer"]["type"] == "BPETokenizer"
    assert meta["model_config"]["vocab_size"] == BPETokenizer.from_dict(meta["tokenizer"]).vocab_size > 256
    capsys.readouterr()
    train.main(_train_args(data, tmp_path / "split", max_iters=20) + bpe + ["--resume"])
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "trained a BPE tokenizer" not in printed
    assert all_rows(tmp_path / "split" / "log.csv") == all_rows(tmp_path / "straight" / "log.csv")
    for name in ("model.safetensors", "vocab.json", "merges.txt", "tinyllm_tokenizer.json"):
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    sample.main(["--model-dir", str(tmp_path / "split"), "--prompt", "the quick", "--max-new-tokens", "12",
                 "--temperature", "0"])
    text = capsys.readouterr().out.split("\n" + "-" * 40)[0]
    tok = BPETokenizer.from_pretrained(tmp_path / "split")
    assert text.startswith("the quick") and len(tok.encode(text)) >= len(tok.encode("the quick")) + 6


def test_sample_example_without_a_model_is_a_clear_error(examples, tmp_path):
    _, sample = examples
    with pytest.raises(SystemExit) as err:
        sample.main(["--model-dir", str(tmp_path)])
    assert "holds no saved model" in str(err.value.code)


def test_sample_example_with_a_tokenizer_smaller_than_the_model_is_a_clear_error(examples, tmp_path):
    """A tokenizer that cannot decode every id the model emits (e.g. a hand-edited one)."""
    _, sample = examples
    GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=1, n_embd=8), seed=0).save_pretrained(tmp_path)
    CharTokenizer.from_text("ab\n").save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as err:
        sample.main(["--model-dir", str(tmp_path), "--max-new-tokens", "30", "--temperature", "1"])
    assert str(err.value.code).startswith("error: sample: the model emitted id ") and "vocab_size 3" in str(err.value.code)


def test_ctrl_c_in_sample_example_says_interrupted_not_resume(examples, tmp_path, monkeypatch):
    """exit_on_error's Ctrl-C message speaks of --out-dir and --resume; sample.py trains nothing."""
    from tinyllm import cli

    _, sample = examples
    GPT(GPTConfig(vocab_size=len(set(TEXT)), block_size=8, n_layer=1, n_head=1, n_embd=8), seed=0).save_pretrained(
        tmp_path)
    CharTokenizer.from_text(TEXT).save_pretrained(tmp_path)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(GPT, "generate", ctrl_c)
    with pytest.raises(SystemExit) as err:
        sample.main(["--model-dir", str(tmp_path)])
    assert err.value.code == "interrupted"
    with pytest.raises(SystemExit) as err, cli.exit_on_error():  # a training script's default
        raise KeyboardInterrupt
    assert err.value.code == cli.INTERRUPTED_TRAINING and "--resume" in err.value.code


def test_sample_example_refuses_num_samples_below_one(examples, tmp_path):
    _, sample = examples
    config = GPTConfig(vocab_size=len(set(TEXT)), block_size=8, n_layer=1, n_head=1, n_embd=8)
    GPT(config, seed=0).save_pretrained(tmp_path)
    CharTokenizer.from_text(TEXT).save_pretrained(tmp_path)
    for bad in ("0", "-2"):
        with pytest.raises(SystemExit) as err:
            sample.main(["--model-dir", str(tmp_path), "--num-samples", bad])
        assert str(err.value.code) == f"error: --num-samples must be at least 1, got {bad}"


# ----------------------------------------------------------------------------------------------
# the shared harness with another kind of model and data: two inputs, pairs, its own metrics


class PairConfig:
    def __init__(self, vocab_size=7, n_embd=32):
        self.vocab_size, self.n_embd = vocab_size, n_embd

    def to_dict(self):
        return {"vocab_size": self.vocab_size, "n_embd": self.n_embd}


class PairModel(nn.Module):
    """Predicts (a + b) mod V at every position from two id sequences: a model whose call takes two
    inputs, as an encoder-decoder's does, with dropout."""

    def __init__(self, config, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.config = config
        self.emb_a = nn.Embedding(config.vocab_size, config.n_embd, rng=rng)
        self.emb_b = nn.Embedding(config.vocab_size, config.n_embd, rng=rng)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, rng=rng)
        self.head = nn.Linear(4 * config.n_embd, config.vocab_size, rng=rng)
        self.set_dropout_rng(np.random.default_rng([seed, 1]))

    def set_dropout_rng(self, rng):
        self.dropout_rng = self.drop.rng = rng

    def forward(self, a, b, targets=None):
        logits = self.head(self.drop(self.fc(self.emb_a(a) + self.emb_b(b)).relu()))
        return logits, (None if targets is None else F.cross_entropy(logits, targets))

    def save_pretrained(self, directory):
        np.savez(Path(directory) / "pair_model.npz", **self.state_dict())


def pair_data(n, seed, vocab_size=7, length=5):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, vocab_size, (2, n, length))
    return a, b, (a + b) % vocab_size


def pair_batch(data, batch_size, rng):
    a, b, y = data
    rows = rng.integers(0, len(a), batch_size)
    return (a[rows], b[rows]), y[rows]


def pair_evaluate(model, data):
    a, b, y = data
    logits, loss = model(a, b, targets=y)
    return {"loss": loss.item(), "accuracy": float((logits.data.argmax(-1) == y).mean())}


def pair_trainer(out_dir, max_iters, **cfg):
    settings = dict(out_dir=str(out_dir), max_iters=max_iters, batch_size=16, learning_rate=3e-2, min_lr=3e-3,
                    warmup_iters=2, lr_decay_iters=60, eval_interval=10, eval_iters=2, progress=False, seed=3,
                    weight_decay=0.0)
    settings.update(cfg)
    return Trainer(PairModel(PairConfig()), pair_data(256, 0), pair_data(64, 1), TrainConfig(**settings),
                   get_batch=pair_batch, evaluate=pair_evaluate)


def test_trainer_runs_any_model_and_batch_source_and_resumes_it_exactly(tmp_path):
    straight = pair_trainer(tmp_path / "straight", 60)
    result = straight.train(log=quiet)
    metrics = straight.evaluate_split()
    assert result["val_loss"] < 0.5 * math.log(7) and metrics["accuracy"] > 0.7  # it learned the sum
    assert metrics["loss"] == pytest.approx(result["val_loss"], rel=0.3)
    assert straight.sample() is None  # no tokenizer, no sampler: nothing to show

    pair_trainer(tmp_path / "split", 25).train(log=quiet)
    resumed = pair_trainer(tmp_path / "split", 60)
    resumed.train(resume=True, log=quiet)
    assert all_rows(tmp_path / "split" / "log.csv") == all_rows(tmp_path / "straight" / "log.csv")
    for (name, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert np.array_equal(p.data, q.data), name


def test_training_run_drives_any_model_through_the_shared_cli(tmp_path, capsys):
    import argparse

    from tinyllm import cli

    parser = argparse.ArgumentParser()
    cli.add_training_args(parser, out_dir=str(tmp_path / "run"), max_iters=30, eval_interval=10, batch_size=16,
                          lr=3e-2, seed=3)
    args = parser.parse_args(["--no-progress", "--eval-iters", "2"])
    assert (args.max_iters, args.lr, args.eval_iters, args.sample_tokens) == (30, 3e-2, 2, 200)
    cfg = cli.train_config_from_args(args)
    assert (cfg.learning_rate, cfg.out_dir, cfg.progress) == (3e-2, str(tmp_path / "run"), False)
    with pytest.raises(TypeError, match="unknown defaults.*'learning_rate'"):
        cli.add_training_args(argparse.ArgumentParser(), learning_rate=1.0)

    with cli.TrainingRun(args) as run:
        assert not run.resuming and run.saved_tokenizer() is None
        metrics = run.train(PairModel(PairConfig()), pair_data(256, 0), pair_data(64, 1), get_batch=pair_batch,
                            evaluate=pair_evaluate, extra_metrics={"task": "pairs"})
    assert metrics["iter"] == 30 and metrics["task"] == "pairs" and 0 <= metrics["val_accuracy"] <= 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_accuracy"] == metrics["val_accuracy"]
    assert (tmp_path / "run" / "pair_model.npz").is_file() and (tmp_path / "run" / CHECKPOINT_NAME).is_file()
    assert "val loss" in capsys.readouterr().out


def test_training_run_extra_metrics_may_be_computed_on_the_trained_model(tmp_path):
    """A callable extra_metrics (e.g. BLEU on a test split) runs once, after training, on the trained
    model in eval mode without gradients; what it returns lands in metrics.json."""
    import argparse

    from tinyllm import cli
    from tinyllm.tensor import is_grad_enabled

    parser = argparse.ArgumentParser()
    cli.add_training_args(parser, out_dir=str(tmp_path / "run"), max_iters=10, eval_interval=5, batch_size=16,
                          lr=3e-2, seed=3)
    args = parser.parse_args(["--no-progress", "--eval-iters", "1"])
    model, test = PairModel(PairConfig()), pair_data(32, 2)
    calls = []

    def test_accuracy(m):
        calls.append((m is model, m.training, is_grad_enabled()))
        return {"test_accuracy": pair_evaluate(m, test)["accuracy"]}

    with cli.TrainingRun(args) as run:
        metrics = run.train(model, pair_data(256, 0), pair_data(64, 1), get_batch=pair_batch, evaluate=pair_evaluate,
                            extra_metrics=test_accuracy)
    assert calls == [(True, False, False)] and model.training  # back in training mode afterwards
    model.eval()  # no dropout: what the callable saw
    assert metrics["test_accuracy"] == pair_evaluate(model, test)["accuracy"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]


def test_grad_hooks_run_after_backward_and_before_clipping(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, max_iters=4, eval_interval=100)
    seen = []

    def hook(params):
        assert params is trainer.params and all(p.grad is not None for p in params)
        seen.append(trainer.iter_num)

    trainer.grad_hooks.append(hook)
    trainer.train(log=quiet)
    assert seen == [0, 1, 2, 3]

    poisoned = make_trainer(corpus, tmp_path / "nan", max_iters=4, grad_clip=0.0)  # no clipping: still checked
    poisoned.grad_hooks.append(lambda params: params[0].grad.fill(np.nan))
    with pytest.raises(TrainingDiverged, match=r"iter 0: the gradient norm is nan"):
        poisoned.train(log=quiet)


def test_a_trainer_refuses_an_out_dir_another_process_trains_into(corpus, tmp_path):
    """The lock is flock on out_dir/train.lock: held here by a child process, it stops a Trainer;
    the child gone, it is free (nothing stale to clean up)."""
    import subprocess
    import sys

    from tinyllm.errors import OutDirLocked

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from tinyllm.checkpoint import lock_out_dir\n"
        f"with lock_out_dir({str(tmp_path)!r}):\n    print('held', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutDirLocked, match=f"in use by process {holder.pid}") as err:
            make_trainer(corpus, tmp_path, max_iters=2).train(log=quiet)
        assert err.value.pid == holder.pid and not (tmp_path / "log.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    make_trainer(corpus, tmp_path, max_iters=2).train(log=quiet)  # free again


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    from tinyllm.checkpoint import lock_out_dir

    with lock_out_dir(tmp_path):
        with lock_out_dir(tmp_path):
            pass
        with lock_out_dir(tmp_path):  # still held by the outer block
            pass
    assert (tmp_path / "train.lock").read_text().split()[0] == str(os.getpid())
