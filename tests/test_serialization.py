"""tinyllm.save / tinyllm.load: torch.save's habit for state dicts and checkpoints, without pickle."""
import io
import math

import numpy as np
import pytest

import tinyllm
from tinyllm import GPT, GPTConfig, Tensor, optim


def _model_and_optimizer():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    x = np.arange(16).reshape(2, 8) % 11
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    return model, opt


def test_a_nanogpt_checkpoint_round_trips(tmp_path):
    model, opt = _model_and_optimizer()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "model_args": dict(n_layer=1, bias=True),
            "iter_num": 7, "best_val_loss": 2.5, "config": {"dataset": "shakespeare_char", "beta2": 0.99}}
    tinyllm.save(ckpt, tmp_path / "ckpt.pt")
    back = tinyllm.load(tmp_path / "ckpt.pt", map_location="cpu")
    assert back["iter_num"] == 7 and back["best_val_loss"] == 2.5 and back["config"] == ckpt["config"]
    assert back["model_args"] == {"n_layer": 1, "bias": True}
    assert list(back["model"]) == list(ckpt["model"])
    for k, v in ckpt["model"].items():
        assert back["model"][k].dtype == v.dtype
        np.testing.assert_array_equal(back["model"][k], v)
    # the tied weight is one array under both names, as it was saved
    assert back["model"]["lm_head.weight"] is back["model"]["transformer.wte.weight"]
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # the tuple stays a tuple
    assert 0 in back["optimizer"]["state"]  # int keys stay ints

    model2, opt2 = _model_and_optimizer()
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["optimizer"])
    x = np.arange(16).reshape(2, 8) % 11
    for m, o in ((model, opt), (model2, opt2)):  # one more step each: the same numbers
        _, loss = m(x, x)
        m.zero_grad()
        loss.backward()
        o.step()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[k], v)


def test_values_keep_their_types_and_bits():
    obj = {"nan": float("nan"), "tiny": 5e-324, "third": 1 / 3, None: [1, (2, "x"), None, True],
           3: Tensor(np.ones(2, np.float64), requires_grad=True), 1.5: np.arange(3, dtype=np.int32),
           "flags": np.array([True, False]), "empty": {}, "np_scalar": np.float32(0.1)}
    buf = io.BytesIO()
    tinyllm.save(obj, buf)
    back = tinyllm.load(io.BytesIO(buf.getvalue()))
    assert math.isnan(back["nan"]) and back["tiny"] == 5e-324 and back["third"] == 1 / 3
    assert back[None] == [1, (2, "x"), None, True]
    assert isinstance(back[3], Tensor) and back[3].requires_grad and back[3].dtype == np.float64
    assert back[1.5].dtype == np.int32 and back["flags"].dtype == bool and back["empty"] == {}
    assert back["np_scalar"] == float(np.float32(0.1))


def test_what_cannot_be_stored_without_pickle_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match=r"save: obj\['fn'\] is a function"):
        tinyllm.save({"fn": lambda: 0}, tmp_path / "x")
    with pytest.raises(TypeError, match=r"save: obj\['s'\] is an array of dtype object"):
        tinyllm.save({"s": np.array([{}], dtype=object)}, tmp_path / "x")
    with pytest.raises(TypeError, match="has a key of type tuple"):
        tinyllm.save({(1, 2): 3}, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_load_refuses_other_files_and_devices(tmp_path):
    model, _ = _model_and_optimizer()
    model.save_pretrained(tmp_path)  # a safetensors file, but not one tinyllm.save wrote
    with pytest.raises(ValueError, match="is not a file tinyllm.save wrote"):
        tinyllm.load(tmp_path / "model.safetensors")
    (tmp_path / "junk").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="junk is not a file tinyllm.save wrote"):
        tinyllm.load(tmp_path / "junk")
    tinyllm.save({"a": 1}, tmp_path / "ok")
    with pytest.raises(ValueError, match="CPU only, got map_location='cuda'"):
        tinyllm.load(tmp_path / "ok", map_location="cuda")
    with pytest.raises(ValueError, match="weights_only=False would mean unpickling"):
        tinyllm.load(tmp_path / "ok", weights_only=False)
