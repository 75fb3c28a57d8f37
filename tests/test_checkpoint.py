"""Training checkpoints: one safetensors file holding weights, AdamW moments, iteration, configs and
random-generator states; written atomically; read without pickle; clear errors for wrong files.
"""
import json

import numpy as np
import pytest

from tinyllm import CharTokenizer
from tinyllm.checkpoint import (CHECKPOINT_NAME, FORMAT_VERSION, load_checkpoint, restore_rng, rng_state,
                                save_checkpoint)
from tinyllm.models import GPT, GPTConfig
from tinyllm.training import TrainConfig, Trainer, configure_optimizer, load_tokenizer_from_meta

CONFIG = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


def trained_model_and_optimizer(steps=3, seed=0):
    model = GPT(GPTConfig(**CONFIG), seed=seed)
    opt = configure_optimizer(model, TrainConfig(learning_rate=1e-2))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.integers(0, 11, (2, 8))
        _, loss = model(x, (x + 1) % 11)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def test_round_trip_restores_weights_moments_steps_and_rngs(tmp_path):
    model, opt = trained_model_and_optimizer()
    batch_rng = np.random.default_rng(42)
    batch_rng.random(5)  # advance: the state saved is mid-stream
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, 3, {"batch": rng_state(batch_rng)}, extra={"note": "hello", "n": [1, 2]})

    meta, model_state, opt_state = load_checkpoint(path)
    assert meta["iter"] == 3 and meta["format_version"] == FORMAT_VERSION
    assert meta["model_config"] == model.config.to_dict()
    assert meta["note"] == "hello" and meta["n"] == [1, 2]

    # weights, under the model's names, tied weight once
    assert set(model_state) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert np.array_equal(model_state[name], p.data), name

    # AdamW: both moments and the step count of every parameter, in the optimizer's numbering
    live = opt.state_dict()
    assert set(opt_state["state"]) == set(live["state"]) == set(range(len(model.parameters())))
    for i, s in live["state"].items():
        assert opt_state["state"][i]["step"] == s["step"] == 3
        for k in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(opt_state["state"][i][k], s[k]) and s[k].any(), (i, k)
    assert opt_state["param_groups"] == live["param_groups"]
    assert isinstance(opt_state["param_groups"][0]["betas"], tuple)

    # the generator continues exactly where it was
    restored = restore_rng(meta["rng_states"]["batch"])
    np.testing.assert_array_equal(restored.random(10), batch_rng.random(10))


def test_loaded_checkpoint_continues_training_identically(tmp_path):
    model, opt = trained_model_and_optimizer(steps=2)
    save_checkpoint(tmp_path / "c.safetensors", model, opt, 2, {})
    _, model_state, opt_state = load_checkpoint(tmp_path / "c.safetensors")
    twin = GPT(GPTConfig(**CONFIG), seed=123)
    twin.load_state_dict(model_state)
    twin_opt = configure_optimizer(twin, TrainConfig(learning_rate=1e-2))
    twin_opt.load_state_dict(opt_state)
    x = np.random.default_rng(9).integers(0, 11, (2, 8))
    for m, o in ((model, opt), (twin, twin_opt)):
        _, loss = m(x, (x + 3) % 11)
        o.zero_grad()
        loss.backward()
        o.step()
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert np.array_equal(p.data, q.data), n


def test_rng_state_survives_json():
    rng = np.random.default_rng(7)
    rng.integers(0, 100, 3)
    state = json.loads(json.dumps(rng_state(rng)))
    np.testing.assert_array_equal(restore_rng(state).integers(0, 1000, 20), rng.integers(0, 1000, 20))


def test_checkpoint_is_plain_safetensors_with_json_metadata(tmp_path):
    from safetensors import safe_open

    model, opt = trained_model_and_optimizer(steps=1)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, 1, {})
    with safe_open(str(path), framework="numpy") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["tinyllm"])
    assert "model.transformer.wte.weight" in keys and "model.lm_head.weight" not in keys
    assert "optim.0.exp_avg" in keys and "optim.0.exp_avg_sq" in keys
    assert meta["optimizer"]["scalars"]["0"]["step"] == 1
    header_len = int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 length + JSON header
    json.loads(path.read_bytes()[8:8 + header_len])


def test_save_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.numpy

    model, opt = trained_model_and_optimizer(steps=1)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, 1, {})
    good = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary left behind

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, 2, {})
    assert path.read_bytes() == good
    assert load_checkpoint(path)[0]["iter"] == 1


def test_saved_files_get_the_permissions_of_any_new_file(tmp_path):
    """safetensors' save_file leaves a private 0o600 file; a model saved for a server's account or a
    shared directory must be readable as any other file the user writes (0o666 less the umask)."""
    import os

    (tmp_path / "plain").write_bytes(b"")
    expected = os.stat(tmp_path / "plain").st_mode & 0o777
    model, opt = trained_model_and_optimizer(steps=1)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, model, opt, 1, {})
    model.save_pretrained(tmp_path / "model")
    CharTokenizer.from_text("abc").save_pretrained(tmp_path / "model")
    files = [tmp_path / CHECKPOINT_NAME, *(tmp_path / "model").iterdir()]
    assert {"model.safetensors", "config.json"} <= {f.name for f in files}
    assert {f.name: oct(os.stat(f).st_mode & 0o777) for f in files} == {f.name: oct(expected) for f in files}


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-here\.safetensors not found"):
        load_checkpoint(tmp_path / "nothing-here.safetensors")


def test_a_safetensors_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(ValueError, match="not a tinyllm training checkpoint"):
        load_checkpoint(path)
    # a model directory's weights file is not a checkpoint either
    GPT(GPTConfig(**CONFIG)).save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="not a tinyllm training checkpoint"):
        load_checkpoint(tmp_path / "model" / "model.safetensors")


def test_an_unknown_format_version_is_named(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "ckpt.safetensors"
    save_file({"model.x": np.zeros(1, dtype=np.float32)}, str(path), metadata={"tinyllm": json.dumps({"format_version": 99})})
    with pytest.raises(ValueError, match=f"format_version 99, this tinyllm reads {FORMAT_VERSION}"):
        load_checkpoint(path)


def test_garbage_file_fails_without_running_anything(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(ValueError, match=f"{path}: its header says it is .* bytes long"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# what Trainer writes


TEXT = "abcabd abcabe abcabf\n" * 30


def _trainer(out_dir, max_iters, warmup_iters=1, **model_overrides):
    tok = CharTokenizer.from_text(TEXT)
    ids = np.asarray(tok.encode(TEXT))
    model = GPT(GPTConfig(**{**CONFIG, "vocab_size": tok.vocab_size, **model_overrides}), seed=0)
    cfg = TrainConfig(out_dir=str(out_dir), max_iters=max_iters, batch_size=2, warmup_iters=warmup_iters, eval_interval=3,
                      eval_iters=1, sample_tokens=4, progress=False, seed=5)
    return Trainer(model, ids[:500], ids[500:], cfg, tok)


def test_trainer_checkpoint_holds_moments_rng_states_tokenizer_and_config(tmp_path):
    trainer = _trainer(tmp_path, max_iters=4)
    trainer.train(log=lambda _: None)
    meta, model_state, opt_state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert meta["iter"] == 4
    n_params = len(trainer.model.parameters())
    assert len(opt_state["state"]) == n_params
    assert all(s["step"] == 4 and s["exp_avg"].shape == s["exp_avg_sq"].shape for s in opt_state["state"].values())
    assert [g["weight_decay"] for g in opt_state["param_groups"]] == [0.1, 0.0]
    assert set(meta["rng_states"]) == {"batch", "eval", "dropout"}
    np.testing.assert_array_equal(restore_rng(meta["rng_states"]["batch"]).random(4), trainer.batch_rng.random(4))
    np.testing.assert_array_equal(restore_rng(meta["rng_states"]["dropout"]).random(4),
                                  trainer.model.dropout_rng.random(4))
    assert meta["train_config"]["max_iters"] == 4 and meta["train_config"]["seed"] == 5
    assert set(meta["last_eval"]) == {"iter", "train_loss", "val_loss"} and meta["last_eval"]["iter"] == 4
    assert load_tokenizer_from_meta(meta).chars == trainer.tokenizer.chars
    for name, p in trainer.model.named_parameters():
        assert np.array_equal(model_state[name], p.data), name


def test_no_checkpoint_at_iteration_zero(tmp_path):
    _trainer(tmp_path, max_iters=0, warmup_iters=0).train(log=lambda _: None)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_resume_into_a_different_model_is_refused(tmp_path):
    _trainer(tmp_path, max_iters=3).train(log=lambda _: None)
    other = _trainer(tmp_path, max_iters=6, n_embd=12)
    with pytest.raises(ValueError, match="model config .* differs"):
        other.train(resume=True, log=lambda _: None)


def test_resume_without_a_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_NAME):
        _trainer(tmp_path, max_iters=3).train(resume=True, log=lambda _: None)


def test_resume_from_a_checkpoint_whose_tensors_disagree_with_its_config_names_the_file(tmp_path):
    """The header is consistent, the config matches, but a weight and a moment have another shape
    (a hand-edited or mixed-up file): one FileFormatError naming the checkpoint."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    from tinyllm.errors import FileFormatError

    _trainer(tmp_path, max_iters=3).train(log=lambda _: None)
    path = tmp_path / CHECKPOINT_NAME
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata()
    for key in ("model.transformer.wte.weight", "optim.0.exp_avg"):
        tensors = load_file(str(path))
        good = tensors[key]
        tensors[key] = np.zeros((good.shape[0] + 1,) + good.shape[1:], good.dtype)
        save_file(tensors, str(path), metadata=metadata)
        trainer = _trainer(tmp_path, max_iters=6)
        before = [p.data.copy() for p in trainer.model.parameters()]
        with pytest.raises(FileFormatError, match=f"{path}: cannot be resumed: .*shape"):
            trainer.train(resume=True, log=lambda _: None)
        tensors[key] = good
        save_file(tensors, str(path), metadata=metadata)
        if key.startswith("model."):
            assert all(np.array_equal(a, p.data) for a, p in zip(before, trainer.model.parameters()))
