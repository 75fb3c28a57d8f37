"""Saving and loading models: ``config.json`` + ``model.safetensors``, never pickle.

Two layouts are understood:

* tinyllm's own: our config fields, and weights under our (= nanoGPT's) names with ``Linear``
  weights stored (out, in) as in PyTorch;
* Hugging Face GPT-2 (``"model_type": "gpt2"``): GPT-2's config names (``n_positions``,
  ``activation_function``, ...) and GPT-2's ``Conv1D`` weights, stored transposed as (in, out).
"""
import json
import os
from pathlib import Path

import numpy as np

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# GPT-2's Conv1D layers keep their weight as (in, out): these are transposed on the way in and out.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


def _write_atomic(path, write):
    """Write a file through ``write(tmp_path)`` then rename: a crash never leaves half a file."""
    tmp = f"{path}.tmp"
    write(tmp)
    os.replace(tmp, path)


def _write_json(path, obj):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)

    _write_atomic(path, write)


def _save_safetensors(path, tensors, metadata=None):
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    _write_atomic(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))


def _load_safetensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def unique_state_dict(model):
    """The state dict without the second name of a tied weight (``lm_head.weight`` = ``wte``)."""
    names = {id(p): n for n, p in model.named_parameters()}  # first name of each parameter
    by_name = dict(model.named_parameters(remove_duplicate=False))
    return {k: v for k, v in model.state_dict().items() if k not in by_name or names[id(by_name[k])] == k}


# ----------------------------------------------------------------------------------------------
# save


def save_model(model, directory, format="tinyllm"):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if format == "tinyllm":
        config = {"model_type": getattr(model, "model_type", "tinyllm-gpt"), **model.config.to_dict()}
        tensors = unique_state_dict(model)
    elif format in ("huggingface", "hf"):
        config, tensors = _to_huggingface(model)
    else:
        raise ValueError(f"save_pretrained: format must be 'tinyllm' or 'huggingface', got {format!r}")
    _save_safetensors(directory / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
    _write_json(directory / CONFIG_NAME, config)


def _to_huggingface(model):
    c = model.config
    if not c.bias:
        raise ValueError("save_pretrained(format='huggingface'): GPT-2 always has biases; this model has bias=False")
    if c.pos_encoding != "learned":
        raise ValueError("save_pretrained(format='huggingface'): GPT-2 has learned positions; this model is sinusoidal")
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if c.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    tensors = {}
    for name, array in unique_state_dict(model).items():
        tensors[name] = array.T if name.endswith(_CONV1D_SUFFIXES) else array
    return config, tensors


# ----------------------------------------------------------------------------------------------
# load


def load_model(cls, directory):
    from .gpt import GPTConfig

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"from_pretrained: {path} not found; a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(written by save_pretrained, or a Hugging Face GPT-2 directory)"
            )
    with open(config_path, encoding="utf-8") as f:
        raw = json.load(f)
    expected, found = getattr(cls, "model_type", "tinyllm-gpt"), raw.get("model_type")
    if found is not None and found != expected and not (found == "gpt2" and expected == "tinyllm-gpt"):
        raise ValueError(f"from_pretrained: {config_path} holds a model of type {found!r}, but {cls.__name__} "
                         f"reads {expected!r} (AutoModelForCausalLM / AutoModelForSeq2SeqLM pick the class)")
    tensors = _load_safetensors(weights_path)
    if raw.get("model_type") == "gpt2":
        config, state = _from_huggingface(raw, tensors, GPTConfig)
    else:
        config, state = getattr(cls, "config_class", GPTConfig).from_dict(raw), tensors
    model = cls(config)
    model.load_state_dict(state, strict=True)
    if raw.get("model_type") == "gpt2":
        model.generation_config = _hf_generation_config(raw, directory)
    return model


def _hf_generation_config(raw, directory):
    """Hugging Face's generation defaults (greedy, max_length 20), then the model's own
    ``generation_config.json`` (or, failing that, the token ids in ``config.json``)."""
    gen = dict(max_length=20, do_sample=False, temperature=1.0, top_k=50, top_p=1.0,
               eos_token_id=raw.get("eos_token_id"), pad_token_id=raw.get("pad_token_id"))
    path = directory / "generation_config.json"
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        gen.update({k: v for k, v in saved.items() if k in gen})
    if isinstance(gen["eos_token_id"], list):  # transformers allows several; tinyllm stops on the first
        gen["eos_token_id"] = gen["eos_token_id"][0] if gen["eos_token_id"] else None
    return gen


def _from_huggingface(raw, tensors, GPTConfig):
    activation = raw.get("activation_function", "gelu_new")
    if activation not in _HF_ACTIVATIONS:
        raise ValueError(f"from_pretrained: GPT-2 activation_function {activation!r} is not supported "
                         f"(supported: {sorted(_HF_ACTIVATIONS)})")
    if raw.get("n_inner") not in (None, 4 * raw["n_embd"]):
        raise ValueError(f"from_pretrained: n_inner={raw['n_inner']} is not supported (the MLP is 4 * n_embd wide)")
    config = GPTConfig(
        vocab_size=raw["vocab_size"], block_size=raw.get("n_positions", raw.get("n_ctx")), n_layer=raw["n_layer"],
        n_head=raw["n_head"], n_embd=raw["n_embd"], dropout=0.0, bias=True,
        activation=_HF_ACTIVATIONS[activation], pos_encoding="learned",
        layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
    )
    state = {}
    for name, array in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old GPT-2 files store the causal mask as a buffer: we compute it
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        state[key] = array.T if key.endswith(_CONV1D_SUFFIXES) else array
    head = state.pop("lm_head.weight", None)
    if head is not None and not np.array_equal(head, state.get("transformer.wte.weight")):
        raise ValueError("from_pretrained: lm_head.weight differs from transformer.wte.weight, but GPT ties them")
    return config, state
