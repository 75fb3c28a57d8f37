"""Training checkpoints: everything needed to continue a run exactly where it stopped.

One file, ``ckpt.safetensors``: the arrays (model weights under ``model.``, AdamW moments under
``optim.<i>.``) in safetensors, and everything else (iteration, configs, optimizer settings and
step counts, random-generator states, the tokenizer) as JSON in the safetensors header's metadata.
It is written to a temporary file and renamed over the old one, so a crash or a full disk leaves
the previous checkpoint whole. Nothing is pickled: loading a stranger's checkpoint runs no code.
"""
import json
import os
from pathlib import Path

import numpy as np

from .models.io import unique_state_dict

CHECKPOINT_NAME = "ckpt.safetensors"
FORMAT_VERSION = 1


def save_checkpoint(path, model, optimizer, iter_num, rng_states, extra=None):
    """Write model, optimizer state, iteration and RNG states to ``path`` atomically."""
    from safetensors.numpy import save_file

    tensors = {f"model.{k}": np.ascontiguousarray(v) for k, v in unique_state_dict(model).items()}
    opt_state = optimizer.state_dict()
    steps = {}
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            if isinstance(v, np.ndarray):
                tensors[f"optim.{i}.{k}"] = np.ascontiguousarray(v)
            else:
                steps.setdefault(str(i), {})[k] = v
    meta = {
        "format_version": FORMAT_VERSION,
        "iter": int(iter_num),
        "model_config": model.config.to_dict(),
        "optimizer": {"param_groups": opt_state["param_groups"], "scalars": steps},
        "rng_states": rng_states,
        **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"tinyllm": json.dumps(meta)})
    os.replace(tmp, path)


def _open_checkpoint(path, with_arrays):
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: {path} not found")
    with safe_open(str(path), framework="numpy") as f:
        header = f.metadata() or {}
        if "tinyllm" not in header:
            raise ValueError(f"load_checkpoint: {path} is a safetensors file but not a tinyllm training checkpoint")
        meta = json.loads(header["tinyllm"])
        arrays = {k: f.get_tensor(k) for k in f.keys()} if with_arrays else {}
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"load_checkpoint: {path} has format_version {meta.get('format_version')}, "
                         f"this tinyllm reads {FORMAT_VERSION}")
    return meta, arrays


def read_checkpoint_meta(path):
    """The JSON part of a checkpoint (iteration, configs, RNG states, tokenizer), without the arrays."""
    return _open_checkpoint(path, with_arrays=False)[0]


def load_checkpoint(path):
    """-> (meta dict, model state dict, optimizer state dict in :meth:`Optimizer.state_dict` form)."""
    meta, arrays = _open_checkpoint(path, with_arrays=True)
    model_state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    opt = {"param_groups": meta["optimizer"]["param_groups"], "state": {}}
    for i, scalars in meta["optimizer"]["scalars"].items():
        opt["state"].setdefault(int(i), {}).update(scalars)
    for k, v in arrays.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            opt["state"].setdefault(int(i), {})[name] = v
    for g in opt["param_groups"]:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return meta, model_state, opt


def rng_state(rng):
    """A Generator's state as JSON-able data (PCG64's 128-bit integers are plain Python ints)."""
    return rng.bit_generator.state


def restore_rng(state):
    """A Generator continuing exactly from a state saved by :func:`rng_state`."""
    bit_gen = getattr(np.random, state["bit_generator"])()
    bit_gen.state = state
    return np.random.Generator(bit_gen)
