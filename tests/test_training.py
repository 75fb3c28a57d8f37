"""The training loop on a small generated corpus (never the real one): the loss falls, runs are
reproducible bit for bit, resuming equals not stopping, divergence leaves the last checkpoint
intact, and the example scripts work end to end.
"""
import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tinyllm import CharTokenizer
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
    full = make_trainer(corpus, tmp_path / "full", max_iters=20)
    full.train(log=quiet)
    make_trainer(corpus, tmp_path / "split", max_iters=12).train(log=quiet)
    make_trainer(corpus, tmp_path / "split", max_iters=20).train(resume=True, log=quiet)
    assert step_rows(tmp_path / "split" / "log.csv") == step_rows(tmp_path / "full" / "log.csv")


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
    (dict(max_iters=-1), "max_iters must be a positive integer, got -1"),
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(eval_interval=2.5), "eval_interval.*2.5"),
    (dict(learning_rate=0.0), "learning_rate > 0"),
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
    assert "val loss" in printed and "--- sample ---" in printed
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

    # --resume continues to a higher max_iters
    train.main(_train_args(data, out, max_iters=30) + ["--resume"])
    assert json.loads((out / "metrics.json").read_text())["iter"] == 30
    assert load_checkpoint(out / CHECKPOINT_NAME)[0]["iter"] == 30
    capsys.readouterr()

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


def test_train_example_resume_without_a_run_is_a_clear_error(examples, tmp_path):
    train, _ = examples
    data = tmp_path / "tiny.txt"
    data.write_text(TEXT, encoding="utf-8")
    with pytest.raises(SystemExit) as err:
        train.main(_train_args(data, tmp_path / "empty") + ["--resume"])
    assert "--resume" in str(err.value.code) and "does not exist" in str(err.value.code)


def test_sample_example_without_a_model_is_a_clear_error(examples, tmp_path):
    _, sample = examples
    with pytest.raises(SystemExit) as err:
        sample.main(["--model-dir", str(tmp_path)])
    assert "holds no saved model" in str(err.value.code)
