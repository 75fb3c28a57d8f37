"""``AutoModelForCausalLM`` and ``AutoModelForSeq2SeqLM``: Hugging Face's entry points, for the
model directories tinyllm reads."""
import json
import os
from pathlib import Path

from .encdec import EncoderDecoderTransformer
from .gpt import GPT

__all__ = ["AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "resolve_pretrained"]


def resolve_pretrained(name_or_path):
    """The local directory for ``name_or_path``: the path itself, or a snapshot of that model
    name in the Hugging Face cache (``$HF_HOME/hub/models--<name>/snapshots/<rev>``).

    tinyllm never downloads a model: a name with no local copy is an error that says how to get one.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.is_absolute() or name.startswith(".") or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise FileNotFoundError(f"from_pretrained: the directory {name} does not exist")
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    repo = hub / ("models--" + name.replace("/", "--"))
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if repo.is_dir() else []
    if snapshots:
        return snapshots[-1]
    raise FileNotFoundError(
        f"from_pretrained: {name!r} is not a directory, and no copy of it is in the Hugging Face cache "
        f"({hub}). tinyllm does not download models: fetch one first, e.g. "
        f"`huggingface-cli download {name} --local-dir {path.name}` "
        "(or save_pretrained() it from transformers), then pass that directory"
    )


class AutoModelForCausalLM:
    """``AutoModelForCausalLM.from_pretrained(dir_or_name)`` -> a :class:`GPT` (tinyllm or GPT-2 files)."""

    def __init__(self):
        raise TypeError("AutoModelForCausalLM is not instantiated: use AutoModelForCausalLM.from_pretrained(dir)")

    @staticmethod
    def from_pretrained(name_or_path, **options):
        return GPT.from_pretrained(resolve_pretrained(name_or_path), **options)


class AutoModelForSeq2SeqLM:
    """``AutoModelForSeq2SeqLM.from_pretrained(dir)`` -> an :class:`EncoderDecoderTransformer`
    (a directory written by its ``save_pretrained``, ``"model_type": "tinyllm-encoder-decoder"``)."""

    def __init__(self):
        raise TypeError("AutoModelForSeq2SeqLM is not instantiated: use AutoModelForSeq2SeqLM.from_pretrained(dir)")

    @staticmethod
    def from_pretrained(name_or_path, **options):
        directory = resolve_pretrained(name_or_path)
        config_path = Path(directory) / "config.json"
        if config_path.is_file():
            with open(config_path, encoding="utf-8") as f:
                model_type = json.load(f).get("model_type")
            if model_type != EncoderDecoderTransformer.model_type:
                hint = " (a causal LM: load it with AutoModelForCausalLM)" if model_type in ("tinyllm-gpt", "gpt2") else ""
                raise ValueError(f"AutoModelForSeq2SeqLM: {config_path} has model_type {model_type!r}{hint}; "
                                 f"tinyllm's sequence-to-sequence model is {EncoderDecoderTransformer.model_type!r}")
        return EncoderDecoderTransformer.from_pretrained(directory, **options)
