"""examples/plot_training.py and examples/show_attention.py on a tiny real run.

The run is examples/train_shakespeare.py itself, on a generated text with a tiny model (seconds).
The drawing tests need matplotlib (the [plot] extra; CI installs it with the [oracle] extra and
fails if they skip, see conftest.py); reading the log and computing the attention maps do not.
"""
import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyllm import functional as F
from tinyllm import Tensor, no_grad
from tinyllm.models import GPT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plot_training = _load("plot_training")
show_attention = _load("show_attention")
train_shakespeare = _load("train_shakespeare")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny training run: log.csv with step and evaluation rows, the model, its tokenizer."""
    root = tmp_path_factory.mktemp("tiny-run")
    words = np.random.default_rng(0).choice(["ROMEO:", "JULIET:", "the", "love", "night", "\n"], 1500)
    (root / "text.txt").write_text(" ".join(words), encoding="utf-8")
    out = root / "out"
    train_shakespeare.main(["--data", str(root / "text.txt"), "--out-dir", str(out), "--n-layer", "2",
                            "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                            "--max-iters", "12", "--eval-interval", "5", "--eval-iters", "2",
                            "--warmup-iters", "3", "--sample-tokens", "0", "--no-progress"])
    return out


def test_the_log_is_read_as_written(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    series = plot_training.read_log(run_dir / "log.csv")
    step, evals = series["step"], series["eval"]
    assert step["iter"] == [float(r["iter"]) for r in rows if r["loss"]] and len(step["iter"]) == 12
    assert step["loss"] == [float(r["loss"]) for r in rows if r["loss"]]
    assert step["lr"] == [float(r["lr"]) for r in rows if r["loss"]]
    assert evals["iter"] == [0.0, 5.0, 10.0, 12.0]  # every eval_interval and at the end
    assert evals["val"] == [float(r["eval_val_loss"]) for r in rows if r["eval_val_loss"]]
    assert max(step["lr"]) == pytest.approx(1e-3, rel=1e-5)  # the warmup reached the peak


def test_a_bad_log_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        plot_training.read_log(tmp_path / "log.csv")
    (tmp_path / "log.csv").write_text("")
    with pytest.raises(ValueError, match="the file is empty"):
        plot_training.read_log(tmp_path / "log.csv")
    (tmp_path / "log.csv").write_text("iter,loss\n1,2.0\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['lr', 'grad_norm'"):
        plot_training.read_log(tmp_path / "log.csv")
    header = "iter,loss,lr,grad_norm,tokens_per_sec,elapsed_s,eval_train_loss,eval_val_loss\n"
    (tmp_path / "log.csv").write_text(header + "1,oops,1e-3,1.0,100,1.0,,\n")
    with pytest.raises(ValueError, match="line 2"):
        plot_training.read_log(tmp_path / "log.csv")


def test_the_moving_average():
    assert plot_training.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_attention_maps_are_the_models_own(run_dir):
    model = GPT.from_pretrained(run_dir)
    model.eval()
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5]]) % model.config.vocab_size
    maps = show_attention.attention_maps(model, ids)
    L, H, T = model.config.n_layer, model.config.n_head, ids.shape[1]
    assert maps.shape == (L, H, T, T)
    assert np.isfinite(maps).all()
    assert np.allclose(maps.sum(axis=-1), 1.0)
    assert np.allclose(np.triu(maps, k=1), 0.0)  # causal: no query sees a later key
    # independently: layer 0's maps from the embeddings, with the model's own pieces
    with no_grad():
        tr = model.transformer
        x = tr.wte(ids) + tr.wpe(np.arange(T))
        qkv = tr.h[0].attn.c_attn(tr.h[0].ln_1(x))
        C = model.config.n_embd
        q = qkv.data[0, :, :C].reshape(T, H, C // H).transpose(1, 0, 2)
        k = qkv.data[0, :, C:2 * C].reshape(T, H, C // H).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(C // H) + np.triu(np.full((T, T), -np.inf), 1)
        expected = F.softmax(Tensor(scores), axis=-1).data  # tinyllm's softmax, not the script's
    np.testing.assert_allclose(maps[0], expected, rtol=1e-4, atol=1e-6)
    # the model's forward is untouched afterwards: no recording wrapper is left behind
    assert all("forward" not in vars(block.attn) for block in model.transformer.h)


def test_the_recomputation_check_can_fail(run_dir, monkeypatch):
    model = GPT.from_pretrained(run_dir)
    model.eval()
    monkeypatch.setattr(show_attention, "causal_mask", lambda tq, tk: np.ones((tq, tk), dtype=bool))
    with pytest.raises(RuntimeError, match="does not reproduce the model's output"):
        show_attention.attention_maps(model, np.array([[1, 2, 3, 4, 5]]))


def test_without_matplotlib_the_error_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    for module in (plot_training, show_attention):
        with pytest.raises(SystemExit, match=r'pip install "tinyllm\[plot\]"'):
            module.import_pyplot()


def _assert_png(path, min_size):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= min_size[0] and pixels.shape[1] >= min_size[1]
    assert pixels[..., :3].std() > 0.01  # something was drawn, not a blank canvas


def test_plot_training_writes_a_png(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_training.main(["--run-dir", str(run_dir), "--out", str(tmp_path / "curves.png")])
    assert out == tmp_path / "curves.png"
    _assert_png(out, (300, 300))
    default = plot_training.main(["--run-dir", str(run_dir)])
    assert default == run_dir / "training.png" and default.is_file()


def test_show_attention_writes_a_png(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = show_attention.main(["--model-dir", str(run_dir), "--prompt", "ROMEO:", "--out", str(tmp_path / "a.png")])
    _assert_png(out, (200, 200))
    # a prompt longer than block_size is cropped to its last block_size tokens
    long = show_attention.main(["--model-dir", str(run_dir), "--prompt", "ROMEO: the love night " * 3])
    assert long == run_dir / "attention.png" and long.is_file()


def test_show_attention_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(SystemExit, match="holds no saved model"):
        show_attention.main(["--model-dir", str(tmp_path)])


def test_an_out_path_that_cannot_be_written_is_a_clear_error(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "no-such-dir" / "x.png"
    with pytest.raises(SystemExit) as err:
        plot_training.main(["--run-dir", str(run_dir), "--out", str(out)])
    assert str(err.value.code) == f"error: cannot write {out}: No such file or directory"
    with pytest.raises(SystemExit) as err:
        show_attention.main(["--model-dir", str(run_dir), "--out", str(out)])
    assert str(err.value.code) == f"error: cannot write {out}: No such file or directory"
